//! `gdn logits`: the logits a checkpoint gives for token sequences, saved as safetensors, so
//! that a model can be compared with another implementation (FLA, transformers) on the same
//! weights.

use anyhow::{Context, Result};
use clap::Args;
use gdn::model::safetensors_io;
use gdn::train::checkpoint;
use std::path::PathBuf;

#[derive(Args)]
pub struct LogitsArgs {
    /// Checkpoint folder (config.json + model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Token ids, comma-separated; `;` separates sequences of a varlen batch.
    #[arg(long)]
    tokens: String,
    /// Output file: `logits` [tokens, vocab] (f32) and `tokens` (as f32).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: LogitsArgs) -> Result<()> {
    let (model, params) = checkpoint::load_model(&a.checkpoint)?;
    let mut tokens = Vec::new();
    let mut cu = vec![0usize];
    for seq in a.tokens.split(';').filter(|s| !s.trim().is_empty()) {
        for t in seq.split(',') {
            let t = t.trim();
            tokens.push(
                t.parse::<u32>()
                    .with_context(|| format!("--tokens: `{t}` is not a token id"))?,
            );
        }
        cu.push(tokens.len());
    }
    anyhow::ensure!(!tokens.is_empty(), "--tokens: no token ids given");
    let acts = model.forward(&params, &tokens, &cu)?;
    let vocab = model.config.vocab_size;
    let as_f32: Vec<f32> = tokens.iter().map(|&t| t as f32).collect();
    let cu_f32: Vec<f32> = cu.iter().map(|&c| c as f32).collect();
    let bytes = safetensors_io::to_bytes(
        &[
            ("logits", &[tokens.len(), vocab], &acts.logits),
            ("tokens", &[tokens.len()], &as_f32),
            ("cu_seqlens", &[cu.len()], &cu_f32),
        ],
        None,
    )?;
    gdn::io::write_atomic(&a.out, &bytes)?;
    println!(
        "{} tokens in {} sequences × vocab {} → {}",
        tokens.len(),
        cu.len() - 1,
        vocab,
        a.out.display()
    );
    Ok(())
}
