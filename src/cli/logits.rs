//! `gdn logits`: the logits a checkpoint gives for token sequences, saved as safetensors, so
//! that a model can be compared with another implementation (FLA, transformers) on the same
//! weights. With `--grads`, also the next-token loss of the sequences and its gradient with
//! respect to every parameter, to compare the backward with PyTorch autograd.

use super::DeviceArg;
use anyhow::{ensure, Context, Result};
use clap::Args;
use gdn::data::IGNORE;
use gdn::model::lm::Model;
use gdn::model::safetensors_io;
use gdn::train::checkpoint;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct LogitsArgs {
    /// Checkpoint folder (config.json + model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Token ids, comma-separated; `;` separates sequences of a varlen batch.
    #[arg(long)]
    tokens: String,
    /// Output file: `logits` [tokens, vocab] (f32), `tokens` and `cu_seqlens` (as f32), and with
    /// `--grads` also `loss` [1] and `grad.NAME` for every parameter.
    #[arg(long)]
    out: PathBuf,
    /// Also the mean next-token cross-entropy over all positions that have a next token in their
    /// sequence (the last position of each sequence has none), and its gradient with respect to
    /// every parameter (`grad.` + the FLA name, the parameter's shape; a tied embedding's
    /// gradient includes the LM head's part).
    #[arg(long)]
    grads: bool,
    /// Where to run: the CPU model in f32 (the reference), or the GPU model (bf16 activations
    /// and logits, fp32 gradients).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

/// The logits [tokens, vocab] and, when targets are given, (loss, gradient in the flat layout).
type Outputs = (Vec<f32>, Option<(f64, Vec<f32>)>);

pub fn run(a: LogitsArgs) -> Result<()> {
    let (model, params) = checkpoint::load_model(&a.checkpoint)?;
    let (tokens, cu) = parse_tokens(&a.tokens)?;
    let targets = next_token_targets(&tokens, &cu);
    if a.grads {
        ensure!(
            targets.iter().any(|&t| t != IGNORE),
            "--grads: no position has a next token (every sequence is one token long)"
        );
    }
    let targets = a.grads.then_some(&targets[..]);
    let on_gpu = a.device.use_gpu("running on the CPU")?;
    let (logits, loss_grads) = if on_gpu {
        gpu(&model, &params, &tokens, &cu, targets)?
    } else {
        cpu(&model, &params, &tokens, &cu, targets)?
    };

    let vocab = model.config.vocab_size;
    let as_f32: Vec<f32> = tokens.iter().map(|&t| t as f32).collect();
    let cu_f32: Vec<f32> = cu.iter().map(|&c| c as f32).collect();
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = vec![
        ("logits".into(), vec![tokens.len(), vocab], &logits),
        ("tokens".into(), vec![tokens.len()], &as_f32),
        ("cu_seqlens".into(), vec![cu.len()], &cu_f32),
    ];
    let loss_f32;
    if let Some((loss, grads)) = &loss_grads {
        loss_f32 = [*loss as f32];
        tensors.push(("loss".into(), vec![1], &loss_f32));
        for p in &model.layout.params {
            tensors.push((
                format!("grad.{}", p.name),
                p.shape.clone(),
                &grads[p.range()],
            ));
        }
    }
    let named: Vec<(&str, &[usize], &[f32])> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), &s[..], *d))
        .collect();
    let device = if on_gpu { "cuda" } else { "cpu" };
    let meta = HashMap::from([("device".to_string(), device.to_string())]);
    let bytes = safetensors_io::to_bytes(&named, Some(meta))?;
    gdn::io::write_atomic(&a.out, &bytes)?;
    let loss_note = loss_grads
        .map(|(l, _)| format!(", loss {l:.6} and gradients"))
        .unwrap_or_default();
    println!(
        "{} tokens in {} sequences × vocab {} on the {device}{loss_note} → {}",
        tokens.len(),
        cu.len() - 1,
        vocab,
        a.out.display()
    );
    Ok(())
}

/// `1,2,3;4,5` → the tokens laid end to end and the sequence offsets (cu_seqlens).
fn parse_tokens(s: &str) -> Result<(Vec<u32>, Vec<usize>)> {
    let mut tokens = Vec::new();
    let mut cu = vec![0usize];
    for seq in s.split(';').filter(|s| !s.trim().is_empty()) {
        for t in seq.split(',') {
            let t = t.trim();
            tokens.push(
                t.parse::<u32>()
                    .with_context(|| format!("--tokens: `{t}` is not a token id"))?,
            );
        }
        cu.push(tokens.len());
    }
    ensure!(!tokens.is_empty(), "--tokens: no token ids given");
    Ok((tokens, cu))
}

/// Each position's target is the next token of its sequence; the last position of each
/// sequence has none (`IGNORE`).
fn next_token_targets(tokens: &[u32], cu: &[usize]) -> Vec<u32> {
    let mut targets = vec![IGNORE; tokens.len()];
    for w in cu.windows(2).filter(|w| w[1] > w[0]) {
        targets[w[0]..w[1] - 1].copy_from_slice(&tokens[w[0] + 1..w[1]]);
    }
    targets
}

/// The CPU model in f32.
fn cpu(
    model: &Model,
    params: &[f32],
    tokens: &[u32],
    cu: &[usize],
    targets: Option<&[u32]>,
) -> Result<Outputs> {
    let acts = model.forward(params, tokens, cu)?;
    let Some(targets) = targets else {
        return Ok((acts.logits, None));
    };
    let logits = acts.logits.clone();
    let (loss, count) = model.loss(&acts, targets);
    let mut grads = vec![0.0f32; params.len()];
    model.backward(params, acts, targets, count, 1.0, &mut grads);
    Ok((logits, Some((loss, grads))))
}

/// The GPU model (as `cuda::model_selftest` drives it).
fn gpu(
    model: &Model,
    params: &[f32],
    tokens: &[u32],
    cu: &[usize],
    targets: Option<&[u32]>,
) -> Result<Outputs> {
    use gdn::cuda::buffer::download_f32;
    let gpu = gdn::cuda::Gpu::open(0)?;
    let mut gm = gdn::cuda::model::GpuModel::new(&gpu, model, params, tokens.len(), cu.len() - 1)?;
    gm.zero_grads(&gpu)?;
    gm.forward(&gpu, tokens, cu)?;
    let logits = gm.download_logits(&gpu)?;
    let Some(targets) = targets else {
        return Ok((logits, None));
    };
    let loss = gm.loss_and_backward(&gpu, targets)?;
    let grads = download_f32(&gpu, &gm.grads)?;
    Ok((logits, Some((loss, grads))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_shift_within_each_sequence() {
        let (tokens, cu) = parse_tokens("5,6,7;8;9,10").unwrap();
        assert_eq!(cu, [0, 3, 4, 6]);
        assert_eq!(
            next_token_targets(&tokens, &cu),
            [6, 7, IGNORE, IGNORE, 10, IGNORE]
        );
    }
}
