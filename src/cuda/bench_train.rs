//! `gdn bench train`: whole training steps of a preset on one GPU (forward, backward, gradient
//! norm, clipped AdamW with fp32 master weights), on random tokens, as the peer's
//! `bench/fla_train.py` times FLA's model: tokens/s, step time, model TFLOP/s (6 · parameters ·
//! tokens/s) and the GPU memory in use.

use super::model::{MemoryAccount, SaveMode, SavePlan};
use super::train::{memory_in_use, GpuTrainer};
use super::Gpu;
use crate::data::Batch;
use crate::model::{Model, ModelConfig};
use crate::tensor::Rng;
use crate::train::adamw::{AdamW, AdamWConfig};
use anyhow::{ensure, Result};
use serde::Serialize;
use std::time::Instant;

/// What to time.
#[derive(Clone, Debug)]
pub struct TrainBench {
    /// The model's name in the results (the preset's, or the config file's stem).
    pub name: String,
    pub model: ModelConfig,
    pub seq_len: usize,
    pub batch_size: usize,
    pub steps: usize,
    pub warmup: usize,
    /// What each block keeps for its backward (`gdn train --save`, `--recompute`).
    pub save: SaveMode,
    /// Memory budget in GB of the account (`gdn train --memory-limit`).
    pub memory_limit_gb: Option<f64>,
    /// Replay each step's forward and backward from a CUDA graph (`gdn train --graph`).
    pub graph: bool,
    /// FP8 matmuls in the blocks' linear layers (`gdn train --fp8`).
    pub fp8: bool,
    /// Also time one more step op group by op group (events between groups).
    pub breakdown: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainBenchResult {
    pub name: String,
    pub params_m: f64,
    pub batch: usize,
    pub seq_len: usize,
    /// `save` is `recompute`.
    pub recompute: bool,
    /// The save mode (`lean`, `auto`, `all`, `recompute`) and what it resolved to.
    pub save: SaveMode,
    pub save_plan: SavePlan,
    /// Forward and backward replayed from a CUDA graph.
    pub graph: bool,
    /// FP8 matmuls in the blocks' linear layers.
    pub fp8: bool,
    /// Micro-batches replayed from the graph (timed steps, warm-up and breakdown).
    pub graph_replays: u64,
    pub step_s: f64,
    pub tokens_per_s: f64,
    pub model_tflops: f64,
    pub gpu_memory_gb: f64,
    /// Device memory in use before the trainer allocated anything (context, modules).
    pub gpu_memory_before_gb: f64,
    /// The memory account's total ([`GpuTrainer::memory_account`]): what the trainer
    /// allocates, computed from the sizes (`gpu_memory_gb` − `gpu_memory_before_gb` should be
    /// close to it).
    pub memory_account_gb: f64,
    pub memory_account: MemoryAccount,
    /// (op group, ms summed over the step), in order of first launch; empty without breakdown.
    pub breakdown: Vec<(String, f64)>,
}

pub fn bench_train(gpu: Gpu, b: &TrainBench) -> Result<TrainBenchResult> {
    ensure!(b.steps > 0, "bench train: --steps must be > 0");
    let model = Model::new(b.model.clone())?;
    let mut rng = Rng::new(0);
    let params: Vec<f32> = model.init_params(&mut rng);
    let opt = AdamW::new(AdamWConfig::default(), &model.layout);
    let n = b.batch_size * b.seq_len;
    let budget = match b.memory_limit_gb {
        Some(gb) => Some((gb * 1e9) as usize),
        None if b.save == SaveMode::Auto => Some(GpuTrainer::free_budget(&gpu)?),
        None => None,
    };
    let (plan, account) =
        GpuTrainer::save_plan(&model, &opt, n, b.batch_size, b.save, budget, b.fp8)?;
    println!(
        "memory account ({} × {} tokens, --save {}: {}{}):\n{}",
        b.batch_size,
        b.seq_len,
        b.save.name(),
        plan.describe(model.config.num_hidden_layers),
        match budget {
            Some(x) => format!("; budget {:.2} GB", x as f64 / 1e9),
            None => String::new(),
        },
        account.table()
    );
    let before = memory_in_use(&gpu)?;
    let mut t = GpuTrainer::new(gpu, &model, &params, &opt, 1.0, n, b.batch_size, plan)?;
    if b.fp8 {
        t.enable_fp8()?;
    }
    if b.graph {
        // A graph needs one eager micro-batch first; the second is captured: warm up both.
        ensure!(
            b.warmup >= 2,
            "bench train --graph: needs at least 2 warm-up steps"
        );
        t.enable_graphs()?;
    }
    let vocab = model.config.vocab_size;
    let batch = Batch {
        batch: b.batch_size,
        seq_len: b.seq_len,
        inputs: (0..n).map(|_| rng.below(vocab) as u32).collect(),
        targets: (0..n).map(|_| rng.below(vocab) as u32).collect(),
    };
    let mut step = 0u64;
    for _ in 0..b.warmup {
        step += 1;
        train_step(&mut t, &batch, step, b.graph)?;
    }
    let t0 = Instant::now();
    for _ in 0..b.steps {
        step += 1;
        train_step(&mut t, &batch, step, b.graph)?;
    }
    let step_s = t0.elapsed().as_secs_f64() / b.steps as f64;
    let mut breakdown = Vec::new();
    if b.breakdown {
        t.model.enable_profile();
        let p = t.model.profile().expect("profiling was just enabled");
        p.start(&t.gpu)?;
        train_step(&mut t, &batch, step + 1, b.graph)?;
        let p = t.model.profile().expect("profiling was just enabled");
        breakdown = p
            .totals()?
            .into_iter()
            .map(|(n, ms)| (n.to_string(), ms))
            .collect();
    }
    let tokens_per_s = n as f64 / step_s;
    let num = model.num_params() as f64;
    Ok(TrainBenchResult {
        name: format!("gdn_{}", b.name),
        params_m: num / 1e6,
        batch: b.batch_size,
        seq_len: b.seq_len,
        recompute: plan.recompute,
        save: b.save,
        save_plan: plan,
        graph: b.graph,
        fp8: b.fp8,
        graph_replays: t.graph_replays(),
        step_s,
        tokens_per_s,
        model_tflops: 6.0 * num * tokens_per_s / 1e12,
        gpu_memory_gb: memory_in_use(&t.gpu)? as f64 / 1e9,
        gpu_memory_before_gb: before as f64 / 1e9,
        memory_account_gb: account.total() as f64 / 1e9,
        memory_account: account,
        breakdown,
    })
}

/// One training step (update number `step`), with the optimiser's stages marked when the model
/// is profiling (`graph`: the forward and backward are a replay, which records no marks of its
/// own, so they are marked as one).
fn train_step(t: &mut GpuTrainer, batch: &Batch, step: u64, graph: bool) -> Result<()> {
    let mark = |t: &GpuTrainer, name| super::profile::mark(t.model.profile(), &t.gpu, name);
    t.zero_grads()?;
    mark(t, "zero grads")?;
    t.accumulate(batch, 1.0)?;
    if graph {
        mark(t, "forward + backward (graph replay)")?;
    }
    t.grad_norm()?;
    mark(t, "grad norm")?;
    t.update(4e-4, step)?;
    mark(t, "adamw")
}
