//! Naive per-token recurrence: the oracle for the chunked form. (to be written)
