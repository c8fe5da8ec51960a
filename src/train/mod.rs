//! Training: AdamW over the flat buffer, the LR schedule, gradient clipping, checkpoints,
//! metrics, and the trainer loop.

pub mod adamw;
pub mod checkpoint;
pub mod config;
pub mod schedule;
pub mod trainer;

pub use config::{DataSpec, TrainConfig};
pub use trainer::{train, TrainOutcome};
