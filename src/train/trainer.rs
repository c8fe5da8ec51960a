//! The training loop: batches → forward → backward (gradient accumulation) → clip → AdamW,
//! with held-out evaluation, JSON-lines metrics, a progress bar, periodic atomic checkpoints and
//! exact resumption.

use super::adamw::{clip_grad_norm, AdamW};
use super::checkpoint::{self, TrainerState};
use super::config::{DataSpec, TrainConfig};
use crate::cuda::model::SaveMode;
use crate::cuda::train::{memory_in_use, GpuTrainer};
use crate::cuda::Gpu;
use crate::data::bytes::{ByteDataset, BYTE_VOCAB};
use crate::data::mqar::{self, MqarConfig};
use crate::data::packed::{
    PackedConfig, PackedDataset, PackedPosition, TRAIN_PREFIX, VALID_PREFIX,
};
use crate::data::{Batch, IGNORE};
use crate::model::safetensors_io::NamedTensor;
use crate::model::{uniform_cu_seqlens, Model};
use crate::tensor::Rng;
use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Stream tags: the init, data and evaluation draws never share a generator.
const INIT_STREAM: u64 = 1;
const DATA_STREAM: u64 = 2;
const EVAL_STREAM: u64 = 3;

pub const RUN_CONFIG_FILE: &str = "train_config.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const LOSS_PNG: &str = "loss.png";

/// How to run (not part of what is trained).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The run folder: config, metrics and checkpoint go here.
    pub out: PathBuf,
    /// Continue the run saved in `out` instead of starting a new one.
    pub resume: bool,
    /// Stop (after checkpointing) once this many steps are done in total, though the schedule
    /// runs to `steps`: for time-sliced jobs, and for testing resumption.
    pub stop_after: Option<usize>,
    /// No progress bar or console lines.
    pub quiet: bool,
    /// Train on this GPU (ordinal) instead of the CPU.
    pub gpu: Option<usize>,
    /// With `gpu`: a model the CUDA kernels do not support (e.g. head dim 32) trains on the CPU
    /// instead of failing (`--device auto`).
    pub gpu_optional: bool,
    /// A line printed with the start-up banner (e.g. why the GPU is not used).
    pub notice: Option<String>,
    /// On the GPU: what each block keeps for its backward (`--save`, `--recompute`; see
    /// [`SaveMode`]). The losses are the same bit for bit whatever the mode.
    pub save: SaveMode,
    /// On the GPU: the memory budget in GB (1e9 bytes) of what the trainer allocates: bounds
    /// `--save auto` (default there: the free memory less a reserve) and is checked for the
    /// other modes.
    pub memory_limit_gb: Option<f64>,
    /// On the GPU: replay each micro-batch's forward and backward from a CUDA graph captured
    /// once per shape (bit for bit the eager results, fewer launches).
    pub graph: bool,
    /// On the GPU: the blocks' linear layers in FP8 (`--fp8`; see `cuda::model::linear`).
    pub fp8: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub loss: f64,
    /// MQAR query accuracy (None for language-model data).
    pub accuracy: Option<f64>,
    /// Byte-level data: the loss is per byte (reported in bits per byte).
    pub per_byte: bool,
}

impl EvalResult {
    /// "query accuracy 99.20% (loss 0.05)", "loss 1.23, 1.774 bits/byte" or "loss 3.21, ppl 24.8".
    pub fn summary(&self) -> String {
        match (self.accuracy, self.per_byte) {
            (Some(a), _) => format!("query accuracy {:.2}% (loss {:.4})", 100.0 * a, self.loss),
            (None, true) => format!(
                "loss {:.4}, {:.3} bits/byte",
                self.loss,
                self.loss / std::f64::consts::LN_2
            ),
            (None, false) => format!("loss {:.4}, ppl {:.2}", self.loss, self.loss.exp()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub steps: usize,
    /// The last step's loss; None when no step ran (a resumed run that had already finished).
    pub last_loss: Option<f64>,
    pub eval: Option<EvalResult>,
    pub checkpoint: PathBuf,
    pub seconds: f64,
}

#[derive(Serialize)]
struct MetricsLine {
    step: usize,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    tokens_per_s: f64,
    /// GPU memory in use, bytes (GPU runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_memory: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_accuracy: Option<f64>,
}

enum Source {
    Mqar(MqarConfig),
    Bytes(ByteDataset, usize),
    Shards(Box<PackedDataset>),
}

impl Source {
    fn open(c: &TrainConfig, position: Option<PackedPosition>) -> Result<Source> {
        Ok(match &c.data {
            DataSpec::Mqar(m) => Source::Mqar(m.clone()),
            DataSpec::Bytes { path, seq_len } => Source::Bytes(ByteDataset::open(path)?, *seq_len),
            DataSpec::Shards { dir, seq_len } => {
                let cfg = PackedConfig {
                    seed: c.seed,
                    vocab: Some(c.model.vocab_size),
                    ..PackedConfig::train(*seq_len)
                };
                let mut d = PackedDataset::open(dir, TRAIN_PREFIX, cfg)?;
                if let Some(p) = position {
                    d.set_position(p)?;
                }
                Source::Shards(Box::new(d))
            }
        })
    }

    fn next(&mut self, rng: &mut Rng, batch: usize) -> Result<Batch> {
        match self {
            Source::Mqar(m) => Ok(mqar::generate(m, rng, batch)),
            Source::Bytes(d, t) => d.sample_train(rng, batch, *t),
            Source::Shards(d) => d
                .next_batch(batch)?
                .context("the training shards yielded no batch"),
        }
    }

    fn position(&self) -> Option<PackedPosition> {
        match self {
            Source::Shards(d) => Some(d.position()),
            _ => None,
        }
    }

    /// The held-out set, fixed for the whole run.
    fn eval_set(&self, c: &TrainConfig) -> Result<Vec<Batch>> {
        Ok(match self {
            Source::Mqar(m) => {
                let mut rng = Rng::new(c.seed).fork(EVAL_STREAM);
                let mut left = c.eval_size;
                let mut out = Vec::new();
                while left > 0 {
                    let b = left.min(c.batch_size);
                    out.push(mqar::generate(m, &mut rng, b));
                    left -= b;
                }
                out
            }
            Source::Bytes(d, t) => {
                let v = d.valid_batches(c.batch_size, *t, c.eval_size);
                ensure!(
                    !v.is_empty(),
                    "the validation split ({} bytes) is shorter than one sequence of {} bytes",
                    d.valid_len(),
                    t + 1
                );
                v
            }
            Source::Shards(_) => {
                let DataSpec::Shards { dir, seq_len } = &c.data else {
                    unreachable!("the source was opened from this spec")
                };
                let cfg = PackedConfig {
                    vocab: Some(c.model.vocab_size),
                    ..PackedConfig::validation(*seq_len)
                };
                let mut d = PackedDataset::open(dir, VALID_PREFIX, cfg)?;
                let mut out = Vec::new();
                while out.len() < c.eval_size {
                    match d.next_batch(c.batch_size)? {
                        Some(b) => out.push(b),
                        None => break,
                    }
                }
                ensure!(
                    !out.is_empty(),
                    "the validation shards in {} hold less than one sequence of {} tokens",
                    dir.display(),
                    seq_len + 1
                );
                out
            }
        })
    }
}

/// Loss summed over the counted targets of one held-out batch on the CPU, their count, and the
/// greedy predictions (MQAR accuracy) when asked for.
fn cpu_eval_batch(
    model: &Model,
    params: &[f32],
    b: &Batch,
    predictions: bool,
) -> Result<(f64, usize, Option<Vec<u32>>)> {
    let acts = model.forward(params, &b.inputs, &uniform_cu_seqlens(b.batch, b.seq_len))?;
    let (loss, count) = model.loss(&acts, &b.targets);
    let preds =
        predictions.then(|| argmax_at_targets(&acts.logits, &b.targets, model.config.vocab_size));
    Ok((loss * count as f64, count, preds))
}

/// Greedy predictions where a target is set (0 elsewhere, unused).
pub(crate) fn argmax_at_targets(logits: &[f32], targets: &[u32], vocab: usize) -> Vec<u32> {
    logits
        .chunks(vocab)
        .zip(targets)
        .map(|(row, &t)| {
            if t == IGNORE {
                return 0;
            }
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

/// Where the step runs. The CPU engine keeps the gradients on the host; the GPU engine keeps
/// parameters, gradients and moments on the device and refreshes the host copies (`params`,
/// `opt`) only for checkpoints.
enum Engine {
    Cpu { grads: Vec<f32> },
    Gpu(Box<GpuTrainer>),
}

impl Engine {
    fn zero_grads(&mut self) -> Result<()> {
        match self {
            Engine::Cpu { grads } => grads.iter_mut().for_each(|g| *g = 0.0),
            Engine::Gpu(t) => t.zero_grads()?,
        }
        Ok(())
    }

    /// Forward and backward of one micro-batch (gradients += `scale`·∇ mean loss); its loss.
    fn accumulate(
        &mut self,
        model: &Model,
        params: &[f32],
        batch: &Batch,
        scale: f64,
    ) -> Result<f64> {
        match self {
            Engine::Cpu { grads } => {
                let cu = uniform_cu_seqlens(batch.batch, batch.seq_len);
                let acts = model.forward(params, &batch.inputs, &cu)?;
                let (loss, count) = model.loss(&acts, &batch.targets);
                if loss.is_finite() {
                    model.backward(params, acts, &batch.targets, count, scale, grads);
                }
                Ok(loss)
            }
            Engine::Gpu(t) => t.accumulate(batch, scale),
        }
    }

    /// The gradients' global norm; the CPU engine also clips them to `clip` here (the GPU
    /// engine clips inside its update).
    fn grad_norm(&mut self, clip: f64) -> Result<f64> {
        Ok(match self {
            Engine::Cpu { grads } => clip_grad_norm(grads, clip),
            Engine::Gpu(t) => t.grad_norm()?,
        })
    }

    fn update(&mut self, params: &mut [f32], opt: &mut AdamW, lr: f64) -> Result<()> {
        match self {
            Engine::Cpu { grads } => opt.update(params, grads, lr),
            Engine::Gpu(t) => {
                opt.step += 1;
                t.update(lr, opt.step)?;
            }
        }
        Ok(())
    }

    /// Brings the host copies of the parameters and moments up to date.
    /// The FP8 scales for a checkpoint (GPU runs with `--fp8` only).
    fn fp8_scales(&self) -> Result<Option<Vec<NamedTensor>>> {
        match self {
            Engine::Cpu { .. } => Ok(None),
            Engine::Gpu(t) => t.model.fp8_scales(&t.gpu),
        }
    }

    fn sync_host(&mut self, params: &mut [f32], opt: &mut AdamW) -> Result<()> {
        match self {
            Engine::Cpu { .. } => Ok(()),
            Engine::Gpu(t) => t.download_into(params, opt),
        }
    }

    /// Loss (and MQAR accuracy) over the held-out set of the run's data.
    fn evaluate(
        &mut self,
        model: &Model,
        params: &[f32],
        set: &[Batch],
        data: &DataSpec,
    ) -> Result<EvalResult> {
        let with_accuracy = matches!(data, DataSpec::Mqar(_));
        let (mut loss_sum, mut counted, mut correct, mut total) = (0.0, 0usize, 0usize, 0usize);
        for b in set {
            let (sum, count, preds) = match self {
                Engine::Cpu { .. } => cpu_eval_batch(model, params, b, with_accuracy)?,
                Engine::Gpu(t) => t.eval_batch(b, with_accuracy)?,
            };
            loss_sum += sum;
            counted += count;
            if let Some(p) = preds {
                let (c, n) = mqar::query_accuracy(b, &p);
                correct += c;
                total += n;
            }
        }
        Ok(EvalResult {
            loss: loss_sum / counted.max(1) as f64,
            accuracy: with_accuracy.then(|| correct as f64 / total.max(1) as f64),
            per_byte: matches!(data, DataSpec::Bytes { .. }),
        })
    }

    /// Device memory in use (GPU engine).
    fn memory(&self) -> Option<usize> {
        match self {
            Engine::Cpu { .. } => None,
            Engine::Gpu(t) => memory_in_use(&t.gpu).ok(),
        }
    }
}

/// Trains per `config` in `opts.out` (or resumes the run there), returning where it ended.
pub fn train(config: Option<TrainConfig>, opts: &RunOptions) -> Result<TrainOutcome> {
    let ckpt_dir = opts.out.join(CHECKPOINT_DIR);
    let (model, mut params, mut opt, mut state) = if opts.resume {
        let (model, params) = checkpoint::load_model(&ckpt_dir)?;
        let (state, m, v) = checkpoint::load_trainer(&ckpt_dir, &model)?;
        let mut opt = AdamW::new(state.config.adamw, &model.layout);
        (opt.m, opt.v, opt.step) = (m, v, state.step as u64);
        truncate_metrics(&opts.out.join(METRICS_FILE), state.step)?;
        (model, params, opt, state)
    } else {
        let mut config = config.context("no training config given")?;
        if let DataSpec::Bytes { .. } = config.data {
            config.model.vocab_size = BYTE_VOCAB;
        }
        config.validate()?;
        if ckpt_dir.exists() {
            bail!("{} already holds a checkpoint: pass --resume to continue it, or choose another --out", opts.out.display());
        }
        std::fs::create_dir_all(&opts.out)
            .with_context(|| format!("cannot create run folder {}", opts.out.display()))?;
        crate::io::write_atomic(
            &opts.out.join(RUN_CONFIG_FILE),
            &serde_json::to_vec_pretty(&config)?,
        )?;
        let _ = std::fs::remove_file(opts.out.join(METRICS_FILE));
        let model = Model::new(config.model.clone())?;
        let mut root = Rng::new(config.seed);
        let params = model.init_params(&mut root.clone().fork(INIT_STREAM));
        let opt = AdamW::new(config.adamw, &model.layout);
        let state = TrainerState {
            step: 0,
            tokens_seen: 0,
            data_rng: root.fork(DATA_STREAM),
            data_position: None,
            config,
        };
        (model, params, opt, state)
    };
    let c = state.config.clone();
    let mut source = Source::open(&c, state.data_position.clone())?;
    let eval_set = source.eval_set(&c)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(opts.out.join(METRICS_FILE))
        .with_context(|| format!("cannot open {}", opts.out.join(METRICS_FILE).display()))?;

    let md = model.mixer_dims();
    let unsupported = crate::cuda::delta_rule::check_dims(md.rule()).err();
    let gpu = match (opts.gpu, unsupported) {
        (Some(_), Some(why)) if opts.gpu_optional => {
            if !opts.quiet {
                eprintln!("this model cannot run on the GPU ({why}); training on the CPU");
            }
            None
        }
        (Some(_), Some(why)) => bail!("cannot train this model on the GPU: {why}"),
        (None, _) => None,
        (g, None) => g,
    };
    // The GPU trainer's memory account (reported at the start).
    let mut gpu_memory = None;
    let mut save_plan = None;
    let mut engine = match gpu {
        None => Engine::Cpu {
            grads: vec![0.0f32; params.len()],
        },
        Some(ordinal) => {
            let gpu = Gpu::open(ordinal)?;
            let max_seqs = eval_set
                .iter()
                .map(|b| b.batch)
                .chain([c.batch_size])
                .max()
                .unwrap_or(1);
            let max_tokens = eval_set
                .iter()
                .map(|b| b.inputs.len())
                .chain([c.batch_size * c.seq_len()])
                .max()
                .unwrap_or(1);
            let budget = match opts.memory_limit_gb {
                Some(gb) => Some((gb * 1e9) as usize),
                None if opts.save == SaveMode::Auto => Some(GpuTrainer::free_budget(&gpu)?),
                None => None,
            };
            let (plan, account) = GpuTrainer::save_plan(
                &model, &opt, max_tokens, max_seqs, opts.save, budget, opts.fp8,
            )?;
            save_plan = Some(plan.describe(model.config.num_hidden_layers));
            gpu_memory = Some(account);
            let mut t = GpuTrainer::new(
                gpu, &model, &params, &opt, c.clip, max_tokens, max_seqs, plan,
            )?;
            if opts.fp8 {
                t.enable_fp8()?;
            }
            if opts.graph {
                t.enable_graphs()?;
            }
            Engine::Gpu(Box::new(t))
        }
    };
    let end = opts.stop_after.map_or(c.steps, |s| s.min(c.steps));
    let bar = progress_bar(opts.quiet, c.steps, state.step);
    let say = |line: String| {
        // Through `suspend`, not `println`: the latter prints nothing when stderr is not a
        // terminal (CI, logs), where these lines matter most.
        if !opts.quiet {
            bar.suspend(|| eprintln!("{line}"));
        }
    };
    if let Some(n) = &opts.notice {
        say(n.clone());
    }
    if opts.save != SaveMode::Lean && matches!(engine, Engine::Cpu { .. }) {
        say(format!(
            "--save {} applies to GPU training; the CPU keeps every activation",
            opts.save.name()
        ));
    }
    if opts.graph && matches!(engine, Engine::Cpu { .. }) {
        say("--graph applies to GPU training; the CPU runs eagerly".into());
    }
    if opts.fp8 && matches!(engine, Engine::Cpu { .. }) {
        say("--fp8 applies to GPU training; the CPU computes in fp32".into());
    }
    // A resumed FP8 run continues with the scales it saved (amax histories included).
    if opts.resume {
        let saved = checkpoint::load_fp8_scales(&ckpt_dir)?;
        match (&mut engine, saved) {
            (Engine::Gpu(t), Some(scales)) if opts.fp8 => {
                let gpu = &t.gpu;
                t.model
                    .load_fp8_scales(gpu, &scales)
                    .with_context(|| format!("{}", ckpt_dir.join(checkpoint::FP8_FILE).display()))?
            }
            (_, Some(_)) => say(
                "the checkpoint holds the FP8 scales of a --fp8 GPU run; this run does not \
                 compute in FP8 (pass --fp8 on the GPU to continue in FP8)"
                    .into(),
            ),
            (Engine::Gpu(_), None) if opts.fp8 => say(
                "the checkpoint holds no FP8 scales (its run was not --fp8): they start afresh"
                    .into(),
            ),
            _ => {}
        }
    }
    if !opts.quiet {
        say(format!(
            "gdn train: {} parameters on {}, {} sequences × {} tokens × {} accumulation per step, {} steps → {}",
            model.num_params(),
            match &engine {
                Engine::Cpu { .. } => "the CPU".to_string(),
                Engine::Gpu(t) => format!(
                    "{}{}{}{}",
                    t.gpu.name,
                    if opts.save == SaveMode::Recompute {
                        " (recompute)"
                    } else {
                        ""
                    },
                    if opts.graph { " (CUDA graph)" } else { "" },
                    if opts.fp8 { " (FP8 matmuls)" } else { "" }
                ),
            },
            c.batch_size,
            c.seq_len(),
            c.grad_accum,
            c.steps,
            opts.out.display()
        ));
        if let Some(p) = &save_plan {
            say(format!("GPU save plan ({}): {p}", opts.save.name()));
        }
        if let Some(acc) = &gpu_memory {
            let parts: Vec<String> = acc
                .by_category()
                .into_iter()
                .map(|(cat, b)| format!("{} {:.2}", cat.label(), b as f64 / 1e9))
                .collect();
            say(format!(
                "GPU memory account: {:.2} GB ({}; GB)",
                acc.total() as f64 / 1e9,
                parts.join(", ")
            ));
        }
    }
    let started = Instant::now();
    let mut last_loss = None;
    let mut last_eval = None;
    let mut saved_step = state.step;
    let first_step = state.step;
    while state.step < end {
        let t0 = Instant::now();
        engine.zero_grads()?;
        let mut loss_sum = 0.0;
        let mut tokens = 0u64;
        for _ in 0..c.grad_accum {
            let batch = source.next(&mut state.data_rng, c.batch_size)?;
            let loss = engine.accumulate(&model, &params, &batch, 1.0 / c.grad_accum as f64)?;
            if !loss.is_finite() {
                bail!(non_finite(
                    "loss",
                    loss,
                    state.step + 1,
                    &ckpt_dir,
                    saved_step
                ));
            }
            loss_sum += loss;
            tokens += batch.inputs.len() as u64;
        }
        let loss = loss_sum / c.grad_accum as f64;
        let norm = engine.grad_norm(c.clip)?;
        if !norm.is_finite() {
            bail!(non_finite(
                "gradient norm",
                norm,
                state.step + 1,
                &ckpt_dir,
                saved_step
            ));
        }
        let lr = c.schedule.lr_at(state.step);
        engine.update(&mut params, &mut opt, lr)?;
        // After this invocation's first step, whether FP8 ran at all.
        if opts.fp8
            && state.step == first_step
            && matches!(&engine, Engine::Gpu(t) if t.model.fp8_products() == 0)
        {
            say(
                "--fp8: no linear layer ran in FP8 (it needs the tokens per micro-batch and the \
                 layers' widths to be multiples of 16), so this run is bf16"
                    .into(),
            );
        }
        state.step += 1;
        state.tokens_seen += tokens;
        last_loss = Some(loss);
        let tokens_per_s = tokens as f64 / t0.elapsed().as_secs_f64();
        let memory = engine.memory();

        let done = state.step == end;
        let eval = if state.step % c.eval_every == 0 || done {
            let e = engine.evaluate(&model, &params, &eval_set, &c.data)?;
            say(eval_line(state.step, &e, started.elapsed().as_secs_f64()));
            Some(e)
        } else {
            None
        };
        let line = MetricsLine {
            step: state.step,
            loss,
            lr,
            grad_norm: norm,
            tokens_per_s,
            gpu_memory: memory,
            eval_loss: eval.as_ref().map(|e| e.loss),
            eval_accuracy: eval.as_ref().and_then(|e| e.accuracy),
        };
        writeln!(metrics, "{}", serde_json::to_string(&line)?)
            .context("cannot append to metrics.jsonl")?;
        let reached = matches!((&eval, c.target_accuracy), (Some(EvalResult { accuracy: Some(a), .. }), Some(t)) if *a >= t);
        if eval.is_some() {
            last_eval = eval;
        }
        if state.step % c.checkpoint_every == 0 || done || reached {
            engine.sync_host(&mut params, &mut opt)?;
            if let Some(i) = params.iter().position(|p| !p.is_finite()) {
                let name = model
                    .layout
                    .params
                    .iter()
                    .find(|p| p.range().contains(&i))
                    .map_or("?", |p| &p.name);
                bail!(non_finite(
                    &format!("parameter `{name}`"),
                    params[i] as f64,
                    state.step,
                    &ckpt_dir,
                    saved_step
                ));
            }
            state.data_position = source.position();
            let fp8_scales = engine.fp8_scales()?;
            let files = checkpoint::TrainerFiles {
                state: &state,
                m: &opt.m,
                v: &opt.v,
                fp8_scales: fp8_scales.as_deref(),
            };
            checkpoint::save(&ckpt_dir, &model, &params, Some(files))?;
            saved_step = state.step;
            // The loss curve goes with each checkpoint; a failure to draw it costs the run nothing.
            metrics.flush().context("cannot flush metrics.jsonl")?;
            if let Err(e) = crate::plot::write_loss_curve(
                &opts.out.join(METRICS_FILE),
                &opts.out.join(LOSS_PNG),
            ) {
                say(format!("could not draw {LOSS_PNG}: {e:#}"));
            }
        }
        bar.set_position(state.step as u64);
        bar.set_message(match memory {
            Some(bytes) => format!(
                "loss {loss:.4} | {tokens_per_s:.0} tokens/s | GPU memory {:.1} GB",
                bytes as f64 / 1e9
            ),
            None => format!("loss {loss:.4} | {tokens_per_s:.0} tokens/s"),
        });
        if reached {
            say(format!(
                "reached the target accuracy at step {}",
                state.step
            ));
            break;
        }
    }
    bar.finish_and_clear();
    Ok(TrainOutcome {
        steps: state.step,
        last_loss,
        eval: last_eval,
        checkpoint: ckpt_dir,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn non_finite(what: &str, value: f64, step: usize, ckpt: &Path, saved_step: usize) -> String {
    let kept = if saved_step > 0 {
        format!(
            "the last good checkpoint ({}, step {saved_step}) is kept",
            ckpt.display()
        )
    } else {
        "no checkpoint had been written yet".to_string()
    };
    format!("training stopped: the {what} became {value} at step {step}; {kept}. Try a lower --lr.")
}

fn eval_line(step: usize, e: &EvalResult, secs: f64) -> String {
    format!("step {step:>6} | eval {} | {secs:.0}s", e.summary())
}

fn progress_bar(quiet: bool, total: usize, pos: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps | {msg} | {per_sec} | ETA {eta}")
            .expect("valid template"),
    );
    bar.set_position(pos as u64);
    bar
}

/// Drops metric lines past the checkpoint being resumed, so the file reads as one run.
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::io::write_atomic(path, kept.as_bytes())
}
