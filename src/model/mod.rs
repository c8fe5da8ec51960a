//! Modules with explicit forward/backward, configs and presets, checkpoint I/O.

pub mod config;
pub mod decode;
pub mod lm;
pub mod mixer;
pub mod nn;
pub mod params;
pub mod safetensors_io;
pub mod sample;

pub use config::ModelConfig;
pub use lm::{uniform_cu_seqlens, Activations, Model};
