//! Training data: synthetic tasks and datasets that yield token batches.

pub mod bytes;
pub mod mqar;
pub mod packed;
pub mod prepare;
pub mod shards;
pub mod tokenizer;

/// Target value meaning "no loss at this position".
pub const IGNORE: u32 = u32::MAX;

/// A batch of `batch` sequences of `seq_len` tokens, row-major [batch, seq_len].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub batch: usize,
    pub seq_len: usize,
    /// Input token ids.
    pub inputs: Vec<u32>,
    /// Next-token targets, `IGNORE` where no loss is taken.
    pub targets: Vec<u32>,
}
