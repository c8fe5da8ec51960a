//! gdn: Gated DeltaNet (arXiv 2412.06464) in Rust.
//!
//! Layers, top to bottom (arrows point down only): `train` → `data`, `model` → `ops` → `tensor`.
//! The `gdn` binary (src/main.rs, src/cli) sits on top.

pub mod cuda;
pub mod data;
pub mod eval;
pub mod io;
pub mod model;
pub mod ops;
pub mod plot;
pub mod tensor;
pub mod train;
