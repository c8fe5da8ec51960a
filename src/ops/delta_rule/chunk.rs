//! Chunked form (spec §B). (to be written)
