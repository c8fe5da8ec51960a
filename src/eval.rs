//! Held-out evaluation: loss and perplexity at several context lengths in one pass (as NVlabs'
//! `val_loss@1x` / `@2x`, spec §D.2).
//!
//! The data comes as blocks of `max(lengths) + 1` tokens (input = block[..T], target =
//! block[1..]). Each block is run once at the longest length and its per-position losses kept;
//! since the model is causal, the loss at context length L is the mean of the first L positions.
//! Any token source works: [`blocks_of`] cuts a token stream (a byte file, one shard) into
//! consecutive blocks, [`evaluate_shards`] reads LITPKDS validation shards as the reference does,
//! and [`evaluate_blocks`] takes any iterator of blocks.

use crate::data::packed::{PackedConfig, PackedDataset};
use crate::model::Model;
use crate::tensor::Elem;
use anyhow::{bail, ensure, Result};
use rayon::prelude::*;
use serde::Serialize;

/// Rows of logits materialised at once (bounds memory to rows × vocab).
const LOGIT_ROWS: usize = 256;

/// What to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// Context lengths to report (each ≥ 1).
    pub lengths: Vec<usize>,
    /// Stop after this many blocks (None: all).
    pub max_blocks: Option<usize>,
    /// Blocks per forward pass.
    pub batch_blocks: usize,
}

impl EvalOptions {
    pub fn new(lengths: Vec<usize>) -> Self {
        EvalOptions {
            lengths,
            max_blocks: None,
            batch_blocks: 4,
        }
    }

    /// The longest length plus one: the tokens each block holds.
    pub fn block_len(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0) + 1
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(!self.lengths.is_empty(), "eval: no context lengths given");
        ensure!(
            self.lengths.iter().all(|&l| l > 0),
            "eval: context lengths must be positive, got {:?}",
            self.lengths
        );
        ensure!(self.batch_blocks > 0, "eval: batch_blocks must be positive");
        ensure!(
            self.max_blocks != Some(0),
            "eval: max_blocks must be positive"
        );
        Ok(())
    }
}

/// The loss at one context length.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LengthLoss {
    pub length: usize,
    /// Positions scored: blocks × length.
    pub tokens: usize,
    /// Mean cross-entropy (nats per token).
    pub loss: f64,
    /// exp(loss).
    pub ppl: f64,
    /// loss / ln 2 (bits per byte for byte-level models).
    pub bits_per_token: f64,
}

/// Results of one evaluation, lengths ascending.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    pub blocks: usize,
    pub block_len: usize,
    pub results: Vec<LengthLoss>,
}

impl EvalReport {
    /// A plain-text table, one row per length.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:>8} {:>12} {:>9} {:>11} {:>11}\n",
            "length", "tokens", "loss", "ppl", "bits/token"
        );
        for r in &self.results {
            s += &format!(
                "{:>8} {:>12} {:>9.4} {:>11.3} {:>11.4}\n",
                r.length, r.tokens, r.loss, r.ppl, r.bits_per_token
            );
        }
        s
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }
}

/// Consecutive, non-overlapping blocks of `block_len` tokens of a stream; a final partial block
/// is dropped (as NVlabs' packed dataset does).
pub fn blocks_of(tokens: &[u32], block_len: usize) -> impl Iterator<Item = Result<Vec<u32>>> + '_ {
    tokens
        .chunks_exact(block_len.max(1))
        .map(|c| Ok(c.to_vec()))
}

/// Blocks of `T + 1` tokens as one packed batch: inputs block[..T] and targets block[1..], each
/// [blocks, T] row-major.
pub struct Packed {
    pub t: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Packed {
    /// `None` for no blocks; an error for blocks shorter than 2 tokens or of unequal lengths.
    pub fn of(blocks: &[Vec<u32>]) -> Result<Option<Packed>> {
        let Some(first) = blocks.first() else {
            return Ok(None);
        };
        let t = first.len().saturating_sub(1);
        ensure!(t > 0, "eval: blocks need at least 2 tokens");
        ensure!(
            blocks.iter().all(|b| b.len() == t + 1),
            "eval: blocks of different lengths"
        );
        Ok(Some(Packed {
            t,
            inputs: blocks.iter().flat_map(|b| b[..t].to_vec()).collect(),
            targets: blocks.iter().flat_map(|b| b[1..].to_vec()).collect(),
        }))
    }
}

/// Per-position next-token losses of `blocks` (each `T + 1` tokens), run together as one packed
/// batch: [blocks, T], row-major.
pub fn position_losses<F: Elem>(
    model: &Model,
    params: &[F],
    blocks: &[Vec<u32>],
) -> Result<Vec<f64>> {
    let Some(Packed { t, inputs, targets }) = Packed::of(blocks)? else {
        return Ok(Vec::new());
    };
    model.check_inputs(params, &targets)?;
    let cu: Vec<usize> = (0..=blocks.len()).map(|i| i * t).collect();
    let hidden = model.infer_hidden(params, &inputs, &cu)?;
    let (d, vocab) = (model.config.hidden_size, model.config.vocab_size);
    let mut losses = Vec::with_capacity(targets.len());
    for (h, tg) in hidden
        .chunks(LOGIT_ROWS * d)
        .zip(targets.chunks(LOGIT_ROWS))
    {
        let logits = model.logits_of(params, h);
        let part: Vec<f64> = logits
            .par_chunks(vocab)
            .zip(tg.par_iter())
            .map(|(row, &y)| {
                let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b.f64()));
                let lse = m + row.iter().map(|&v| (v.f64() - m).exp()).sum::<f64>().ln();
                lse - row[y as usize].f64()
            })
            .collect();
        losses.extend(part);
    }
    Ok(losses)
}

/// What scores blocks: the per-position next-token losses of a batch of blocks (each `T + 1`
/// tokens) as [blocks, T] row-major, and the vocabulary the tokens must fit.
pub trait Scorer {
    fn position_losses(&mut self, blocks: &[Vec<u32>]) -> Result<Vec<f64>>;
    fn vocab_size(&self) -> usize;
}

/// The CPU model as a [`Scorer`] (in the parameters' precision).
pub struct CpuScorer<'a, F: Elem> {
    pub model: &'a Model,
    pub params: &'a [F],
}

impl<F: Elem> Scorer for CpuScorer<'_, F> {
    fn position_losses(&mut self, blocks: &[Vec<u32>]) -> Result<Vec<f64>> {
        position_losses(self.model, self.params, blocks)
    }
    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }
}

/// Evaluates with `scorer` on blocks of `opts.block_len()` tokens (a block of another length is
/// an error). `progress` is called with the number of blocks done after each batch.
pub fn evaluate_blocks<I>(
    scorer: &mut dyn Scorer,
    blocks: I,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<EvalReport>
where
    I: IntoIterator<Item = Result<Vec<u32>>>,
{
    opts.validate()?;
    let block_len = opts.block_len();
    let t = block_len - 1;
    let limit = opts.max_blocks.unwrap_or(usize::MAX);
    // Σ over blocks of the loss at each position.
    let mut sums = vec![0.0f64; t];
    let mut done = 0usize;
    let mut batch: Vec<Vec<u32>> = Vec::with_capacity(opts.batch_blocks);
    let mut iter = blocks.into_iter();
    loop {
        let next = if done + batch.len() < limit {
            iter.next().transpose()?
        } else {
            None
        };
        if let Some(b) = &next {
            ensure!(
                b.len() == block_len,
                "eval: block {} has {} tokens, expected max(lengths) + 1 = {block_len}",
                done + batch.len(),
                b.len()
            );
        }
        let end = next.is_none();
        batch.extend(next);
        if batch.len() == opts.batch_blocks || (end && !batch.is_empty()) {
            let losses = scorer.position_losses(&batch)?;
            for row in losses.chunks(t) {
                sums.iter_mut().zip(row).for_each(|(s, &l)| *s += l);
            }
            done += batch.len();
            batch.clear();
            progress(done);
        }
        if end {
            break;
        }
    }
    if done == 0 {
        bail!("eval: the data holds no complete block of max(lengths) + 1 = {block_len} tokens");
    }
    let mut lengths = opts.lengths.clone();
    lengths.sort_unstable();
    lengths.dedup();
    let results = lengths
        .into_iter()
        .map(|l| {
            let loss = sums[..l].iter().sum::<f64>() / (done * l) as f64;
            LengthLoss {
                length: l,
                tokens: done * l,
                loss,
                ppl: loss.exp(),
                bits_per_token: loss / std::f64::consts::LN_2,
            }
        })
        .collect();
    Ok(EvalReport {
        blocks: done,
        block_len,
        results,
    })
}

/// Evaluates on a token stream cut into consecutive blocks (see [`blocks_of`]).
pub fn evaluate_tokens(
    scorer: &mut dyn Scorer,
    tokens: &[u32],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<EvalReport> {
    opts.validate()?;
    let bl = opts.block_len();
    ensure!(
        tokens.len() >= bl,
        "eval: the data has {} tokens, fewer than one block of max(lengths) + 1 = {bl}",
        tokens.len()
    );
    evaluate_blocks(scorer, blocks_of(tokens, bl), opts, progress)
}

/// Evaluates on the LITPKDS shards `{dir}/{prefix}*` (e.g. prefix `val`), read as the
/// reference's validation loader: files in the seeded shuffle order, each cut into blocks of
/// `max(lengths) + 1` tokens (remainders dropped), in order, one pass.
pub fn evaluate_shards(
    scorer: &mut dyn Scorer,
    dir: &std::path::Path,
    prefix: &str,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<EvalReport> {
    opts.validate()?;
    let cfg = PackedConfig {
        vocab: Some(scorer.vocab_size()),
        ..PackedConfig::validation(opts.block_len() - 1)
    };
    let mut data = PackedDataset::open(dir, prefix, cfg)?;
    let blocks = std::iter::from_fn(move || data.next_block().transpose());
    evaluate_blocks(scorer, blocks, opts, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use crate::tensor::Rng;

    #[test]
    fn one_pass_equals_separate_forward_passes_at_each_length() {
        let model = Model::new(ModelConfig::preset("tiny").unwrap()).unwrap();
        let mut rng = Rng::new(4);
        let mut params: Vec<f64> = model.init_params(&mut rng);
        params.iter_mut().for_each(|p| *p += 0.3 * rng.normal());
        let vocab = model.config.vocab_size;
        let stream: Vec<u32> = (0..500).map(|_| rng.below(vocab) as u32).collect();
        let mut opts = EvalOptions::new(vec![70, 5, 33]);
        opts.max_blocks = Some(5);
        opts.batch_blocks = 2;
        let mut seen = Vec::new();
        let r = evaluate_tokens(
            &mut CpuScorer {
                model: &model,
                params: &params,
            },
            &stream,
            &opts,
            &mut |n| seen.push(n),
        )
        .unwrap();
        assert_eq!(seen, vec![2, 4, 5]);
        assert_eq!((r.blocks, r.block_len), (5, 71));
        assert_eq!(
            r.results.iter().map(|x| x.length).collect::<Vec<_>>(),
            vec![5, 33, 70]
        );
        for res in &r.results {
            let l = res.length;
            // Separate forward passes of the first l + 1 tokens of each block.
            let mut inputs = Vec::new();
            let mut targets = Vec::new();
            for b in stream.chunks_exact(71).take(5) {
                inputs.extend_from_slice(&b[..l]);
                targets.extend_from_slice(&b[1..l + 1]);
            }
            let cu: Vec<usize> = (0..=5).map(|i| i * l).collect();
            let acts = model.forward(&params, &inputs, &cu).unwrap();
            let (loss, count) = model.loss(&acts, &targets);
            assert_eq!(count, res.tokens);
            let e = (loss - res.loss).abs() / loss;
            assert!(e < 1e-12, "length {l}: {} vs {loss} (rel {e})", res.loss);
            assert!((res.ppl - loss.exp()).abs() < 1e-9 * res.ppl);
        }
        let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(j["results"][2]["length"], 70);
        assert_eq!(r.table().lines().count(), 4);
    }

    #[test]
    fn shards_feed_the_same_evaluation() {
        use crate::data::shards::{encode_shard, Dtype};
        let model = Model::new(ModelConfig::preset("tiny").unwrap()).unwrap();
        let params: Vec<f64> = model.init_params(&mut Rng::new(8));
        let mut rng = Rng::new(9);
        let vocab = model.config.vocab_size;
        let dir = std::env::temp_dir().join(format!("gdn-eval-shards-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // One validation shard of 3 blocks of 17 tokens plus a remainder, and a training shard
        // that must be ignored.
        let toks: Vec<u32> = (0..60).map(|_| rng.below(vocab) as u32).collect();
        std::fs::write(
            dir.join("val_x_0000000000.bin"),
            encode_shard(&toks, Dtype::U16).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("train_x_0000000000.bin"),
            encode_shard(&[1; 40], Dtype::U16).unwrap(),
        )
        .unwrap();
        let opts = EvalOptions::new(vec![16, 4]);
        let a = evaluate_shards(
            &mut CpuScorer {
                model: &model,
                params: &params,
            },
            &dir,
            "val",
            &opts,
            &mut |_| {},
        )
        .unwrap();
        let b = evaluate_tokens(
            &mut CpuScorer {
                model: &model,
                params: &params,
            },
            &toks,
            &opts,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(a.blocks, 3);
        assert_eq!(a, b);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn too_little_data_and_bad_options_are_errors() {
        let model = Model::new(ModelConfig::preset("tiny").unwrap()).unwrap();
        let params: Vec<f32> = model.init_params(&mut Rng::new(1));
        let opts = EvalOptions::new(vec![16]);
        let err = evaluate_tokens(
            &mut CpuScorer {
                model: &model,
                params: &params,
            },
            &[1; 10],
            &opts,
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("17"), "{err}");
        let err = evaluate_tokens(
            &mut CpuScorer {
                model: &model,
                params: &params,
            },
            &[1; 40],
            &EvalOptions::new(vec![]),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("lengths"), "{err}");
        let blocks = vec![Ok(vec![1u32; 17]), Ok(vec![1u32; 9])];
        let err = evaluate_blocks(
            &mut CpuScorer {
                model: &model,
                params: &params,
            },
            blocks,
            &opts,
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("block 1"), "{err}");
    }
}
