//! `gdn train`.

use super::DeviceArg;
use anyhow::{bail, Result};
use clap::Args;
use gdn::cuda::model::SaveMode;
use gdn::data::mqar::MqarConfig;
use gdn::model::ModelConfig;
use gdn::train::{trainer::RunOptions, DataSpec, TrainConfig};
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainArgs {
    /// Training data instead of MQAR: a text file (byte-level model), or a folder of token
    /// shards from `gdn prepare` (train*/val* LITPKDS files).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The tokenizer.json the shards were made with: sets the model's vocabulary size.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Model preset (tiny, mqar, small, fla-1.3b, nvlabs-0.4b, nvlabs-1.3b).
    #[arg(long)]
    pub preset: Option<String>,
    /// A model config.json (FLA's format) instead of a preset.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// Model width (resizes the preset: keys 0.75·width over the heads, MLP (8/3)·width).
    #[arg(long)]
    pub hidden_size: Option<usize>,
    /// Number of blocks.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Number of GDN heads.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Value heads (FLA's num_v_heads), a multiple of the heads: GVA, each q/k head serving
    /// v-heads / heads value heads.
    #[arg(long)]
    pub v_heads: Option<usize>,
    /// β = 2·sigmoid(b) instead of sigmoid(b) (FLA's allow_neg_eigval).
    #[arg(long)]
    pub allow_neg_eigval: bool,
    /// The run folder (config, metrics.jsonl, checkpoint/). Default: runs/mqar or runs/<file stem>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in --out exactly where its checkpoint left it (its saved
    /// configuration decides the model, data and steps; those options are not read again).
    #[arg(long)]
    pub resume: bool,
    /// Optimiser steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches accumulated per optimiser step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Sequence length (byte-level data; MQAR: the task's length).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// MQAR key–value pairs per sequence.
    #[arg(long)]
    pub kv_pairs: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Final learning rate of the cosine (default lr/10).
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Linear warm-up steps.
    #[arg(long)]
    pub warmup: Option<usize>,
    /// AdamW weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Keep norms, biases, A_log and dt_bias out of weight decay.
    #[arg(long)]
    pub no_decay_norms: bool,
    /// Global gradient-norm clip (0: off).
    #[arg(long)]
    pub clip: Option<f64>,
    /// Seed of initialisation, data and evaluation draws.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluate every N steps.
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Stop after this many steps in total (checkpointed; continue with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// No progress bar or console lines.
    #[arg(long)]
    pub quiet: bool,
    /// Where to train: the GPU (bf16 weights and activations, fp32 master weights and moments)
    /// or the CPU (fp32). `auto` takes the GPU when one is usable.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// GPU: keep one block's activations and recompute each block's forward during the
    /// backward (much less memory, about a fifth more time). The same as `--save recompute`.
    #[arg(long)]
    pub recompute: bool,
    /// GPU: what each block keeps for its backward. `lean` (default): projections, gates and
    /// outputs, the rest recomputed (about 8 % of the step at FLA's 1.3B); `auto`: also the
    /// MLP's gate/up outputs of as many blocks as fit --memory-limit (default: the free GPU
    /// memory less 3 GB); `all`: everything, nothing recomputed (the most memory);
    /// `recompute`: as --recompute. The losses are bit for bit the same in every mode. Not
    /// saved with the run: pass it again with --resume.
    #[arg(long, value_enum, default_value_t = SaveMode::Lean)]
    pub save: SaveMode,
    /// GPU: memory budget in GB (1e9 bytes) of what the trainer allocates (the memory account;
    /// the CUDA context adds about 0.6 GB): bounds --save auto, and is checked at start for
    /// the other modes.
    #[arg(long)]
    pub memory_limit: Option<f64>,
    /// GPU: capture each micro-batch's forward and backward in a CUDA graph (once per shape,
    /// after one eager micro-batch) and replay it instead of launching every kernel. The
    /// results are bit for bit those of the eager run. Not saved with the run: pass it again
    /// with --resume.
    #[arg(long)]
    pub graph: bool,
    /// GPU: the blocks' linear layers (q, k, v, gate, o, MLP) as FP8 matmuls, as Transformer
    /// Engine's hybrid recipe does them: activations and weights in E4M3, gradients in E5M2,
    /// per-tensor scales from the amaxes of the last 16 steps, fp32 outputs (the weight
    /// gradients' partial sums promoted to fp32, the others in the tensor cores' accumulators).
    /// Faster on Hopper; the losses differ from bf16 (compare the curves on your data before
    /// relying on it). The master weights, optimizer, norms, delta rule and lm head are unchanged. Not
    /// saved with the run: pass it again with --resume (the scales then start afresh).
    #[arg(long)]
    pub fp8: bool,
}

/// `--recompute` and `--save` together (`--recompute` is `--save recompute`).
pub fn save_mode(recompute: bool, save: SaveMode) -> Result<SaveMode> {
    match (recompute, save) {
        (false, s) => Ok(s),
        (true, SaveMode::Lean | SaveMode::Recompute) => Ok(SaveMode::Recompute),
        (true, s) => bail!(
            "--recompute is --save recompute: it cannot go with --save {}",
            s.name()
        ),
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| match &a.data {
        Some(p) => PathBuf::from("runs").join(p.file_stem().unwrap_or_default()),
        None => PathBuf::from("runs/mqar"),
    });
    let (gpu, no_gpu) = a.device.resolve()?;
    let opts = RunOptions {
        out,
        resume: a.resume,
        stop_after: a.stop_after,
        quiet: a.quiet,
        gpu: gpu.then_some(0),
        notice: no_gpu.map(|why| format!("no usable GPU ({why}); training on the CPU")),
        save: save_mode(a.recompute, a.save)?,
        memory_limit_gb: a.memory_limit,
        graph: a.graph,
        fp8: a.fp8,
        gpu_optional: a.device == DeviceArg::Auto,
    };
    let config = if a.resume {
        None
    } else {
        Some(train_config(&a)?)
    };
    let out = opts.out.clone();
    let o = gdn::train::train(config, &opts)?;
    let Some(last_loss) = o.last_loss else {
        // The saved run had already reached its last step (its saved config decides the steps;
        // the options given beside --resume do not change it).
        println!(
            "nothing to resume: the run in {} had already finished its {} steps; checkpoint {}",
            out.display(),
            o.steps,
            o.checkpoint.display()
        );
        return Ok(());
    };
    let eval = o.eval.as_ref().map_or("no evaluation".into(), |e| {
        format!("held-out {}", e.summary())
    });
    println!(
        "done: {} steps in {:.0}s, last loss {:.4}, {eval}; checkpoint {}",
        o.steps,
        o.seconds,
        last_loss,
        o.checkpoint.display()
    );
    Ok(())
}

fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut c = TrainConfig::mqar_default();
    if let Some(path) = &a.data {
        c.model = ModelConfig::preset("small")?;
        let seq_len = a.seq_len.unwrap_or(256);
        c.data = if path.is_dir() {
            DataSpec::Shards {
                dir: path.clone(),
                seq_len,
            }
        } else {
            DataSpec::Bytes {
                path: path.clone(),
                seq_len,
            }
        };
        c.batch_size = 16;
        c.target_accuracy = None;
        c.eval_size = 8;
        c.steps = 1000;
        c.schedule.lr = 2e-3;
        c.schedule.warmup_steps = 50;
    }
    if let Some(p) = &a.preset {
        c.model = ModelConfig::preset(p)?;
    }
    if let Some(p) = &a.config {
        c.model = ModelConfig::read(p)?;
    }
    c.model = c.model.clone().resized(a.hidden_size, a.layers, a.heads)?;
    if a.v_heads.is_some() {
        c.model.num_v_heads = a.v_heads;
    }
    c.model.allow_neg_eigval |= a.allow_neg_eigval;
    c.model.validate()?;
    if let Some(t) = &a.tokenizer {
        anyhow::ensure!(
            matches!(c.data, DataSpec::Shards { .. }),
            "--tokenizer goes with --data DIR (token shards)"
        );
        c.model.vocab_size = gdn::data::tokenizer::Tokenizer::load(t, None)?.vocab_size();
    }
    if let DataSpec::Mqar(m) = &mut c.data {
        *m = MqarConfig {
            vocab: c.model.vocab_size,
            seq_len: a.seq_len.unwrap_or(m.seq_len),
            num_kv_pairs: a.kv_pairs.unwrap_or(m.num_kv_pairs),
            ..m.clone()
        };
    }
    let set = |dst: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *dst = v
        }
    };
    set(&mut c.steps, a.steps);
    set(&mut c.batch_size, a.batch_size);
    set(&mut c.grad_accum, a.grad_accum);
    set(&mut c.eval_every, a.eval_every);
    set(&mut c.checkpoint_every, a.checkpoint_every);
    set(&mut c.schedule.warmup_steps, a.warmup);
    c.schedule.total_steps = c.steps;
    if let Some(lr) = a.lr {
        c.schedule.lr = lr;
        c.schedule.min_lr = lr / 10.0;
    }
    if let Some(m) = a.min_lr {
        c.schedule.min_lr = m;
    }
    if let Some(w) = a.weight_decay {
        c.adamw.weight_decay = w;
    }
    c.adamw.exempt_norms_and_biases |= a.no_decay_norms;
    if let Some(clip) = a.clip {
        c.clip = clip;
    }
    if let Some(s) = a.seed {
        c.seed = s;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        a: TrainArgs,
    }

    fn config_of(args: &[&str]) -> Result<TrainConfig> {
        let cmd = Cmd::try_parse_from(std::iter::once("gdn").chain(args.iter().copied()))?;
        train_config(&cmd.a)
    }

    #[test]
    fn gva_and_neg_eigval_options_reach_the_model() {
        let c = config_of(&["--preset", "small", "--v-heads", "4", "--allow-neg-eigval"]).unwrap();
        assert_eq!(
            (c.model.num_v_heads, c.model.allow_neg_eigval),
            (Some(4), true)
        );
        let c = config_of(&["--preset", "small"]).unwrap();
        assert_eq!(
            (c.model.num_v_heads, c.model.allow_neg_eigval),
            (None, false)
        );
        // 3 value heads do not split over the preset's 2 q/k heads: the field is named.
        let err = config_of(&["--preset", "small", "--v-heads", "3"]).unwrap_err();
        assert!(format!("{err:#}").contains("num_v_heads"), "{err:#}");
    }
}
