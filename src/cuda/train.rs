//! Training and evaluation state on one GPU: the model ([`GpuModel`]: fp32 master weights, bf16
//! working copy, fp32 gradients), the AdamW moments (fp32) and the scratch of the clipped update,
//! all resident on the device. The host sees a loss and a gradient norm per step, and the weights
//! and moments only when a checkpoint is written.

use super::buffer::download_f32;
use super::model::memory::{Alloc, BufKind, CountAlloc, GpuAlloc, MemCategory, OnGpu};
use super::model::{GpuModel, MemoryAccount, SaveMode, SavePlan};
use super::{ops, Gpu};
use crate::data::Batch;
use crate::eval::{Packed, Scorer};
use crate::model::{uniform_cu_seqlens, Model};
use crate::train::adamw::AdamW;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::CudaSlice;
use std::collections::HashMap;
use std::ops::Range;

/// Advice appended to an out-of-memory error.
const OOM_ADVICE: &str = "the GPU ran out of memory: lower --batch-size (and raise --grad-accum \
                          to keep the tokens per step), shorten --seq-len, or add --recompute \
                          (or, with --save auto / all, save less)";

/// What `--save auto` leaves free of the device's memory when no `--memory-limit` is given.
pub const AUTO_RESERVE_BYTES: usize = 3_000_000_000;

/// `e` with [`OOM_ADVICE`] in front when it is a CUDA out-of-memory error.
pub fn explain_oom(e: anyhow::Error) -> anyhow::Error {
    if format!("{e:#}").contains("OUT_OF_MEMORY") {
        e.context(OOM_ADVICE)
    } else {
        e
    }
}

/// What a captured micro-batch step depends on besides the device buffers' contents: the
/// sequences (cu_seqlens, uniform here) and the loss scale (a kernel argument).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct StepShape {
    seqs: usize,
    seq_len: usize,
    scale_bits: u32,
}

/// `--graph`: one CUDA graph per micro-batch shape holding the device half of forward + loss +
/// backward (gradients accumulated), replayed after the step's tokens and targets are uploaded.
/// A shape's first micro-batch runs eagerly (kernels compiled, cuBLASLt algorithms picked, chunk
/// tables uploaded); its second is captured and replayed; later ones are replayed.
#[derive(Default)]
struct StepGraphs {
    warm: std::collections::HashSet<StepShape>,
    graphs: HashMap<StepShape, super::graph::CudaGraph>,
    /// Replays so far (tests and the bench: that the graphs are in use).
    replays: u64,
}

/// Device memory in use (total − free), in bytes. Everything is allocated up front, so after
/// the first step this is the run's peak (cuBLASLt workspaces included).
pub fn memory_in_use(gpu: &Gpu) -> Result<usize> {
    let (free, total) = gpu
        .ctx
        .mem_get_info()
        .map_err(|e| anyhow!("querying GPU memory failed: {e:?}"))?;
    Ok(total - free)
}

/// The weight-decay factors as runs of equal values: AdamW runs once per run and reads a
/// constant buffer of the run's factor (as long as the value's longest run), instead of a
/// per-parameter fp32 array as large as the parameters.
struct DecayRuns {
    /// (parameter range, index into `values`), covering the parameters in order.
    runs: Vec<(Range<usize>, usize)>,
    /// One buffer per distinct factor.
    values: Vec<CudaSlice<f32>>,
}

/// The runs of `decay` and, per distinct factor (by bits, in order of appearance), the factor
/// and its longest run.
struct Runs {
    runs: Vec<(Range<usize>, usize)>,
    values: Vec<(f32, usize)>,
}

/// Longest run (elements): one launch per 16 Mi parameters at most, and at most 64 MiB of
/// factors per distinct value.
const MAX_DECAY_RUN: usize = 1 << 24;

fn decay_runs(decay: &[f32]) -> Runs {
    decay_runs_max(decay, MAX_DECAY_RUN)
}

fn decay_runs_max(decay: &[f32], max_run: usize) -> Runs {
    let mut out = Runs {
        runs: Vec::new(),
        values: Vec::new(),
    };
    let mut start = 0;
    while start < decay.len() {
        let x = decay[start];
        let len = decay[start..]
            .iter()
            .take(max_run)
            .take_while(|y| y.to_bits() == x.to_bits())
            .count();
        let vi = match out
            .values
            .iter()
            .position(|(v, _)| v.to_bits() == x.to_bits())
        {
            Some(i) => i,
            None => {
                out.values.push((x, 0));
                out.values.len() - 1
            }
        };
        out.values[vi].1 = out.values[vi].1.max(len);
        out.runs.push((start..start + len, vi));
        start += len;
    }
    out
}

/// The optimiser's device buffers (zeroed; the moments and factors are uploaded after).
struct OptBuffers<K: BufKind = OnGpu> {
    m: K::Buf<f32>,
    v: K::Buf<f32>,
    decay_values: Vec<K::Buf<f32>>,
    norm_scratch: K::Buf<f64>,
    /// [lr, step] of the update in flight.
    sched: K::Buf<f64>,
    norm: K::Buf<f64>,
}

fn opt_buffers<A: Alloc>(al: &mut A, opt: &AdamW) -> Result<OptBuffers<A::K>> {
    use MemCategory::Optimizer as C;
    let n = opt.m.len();
    Ok(OptBuffers {
        m: al.buf(C, "AdamW m (f32)", n)?,
        v: al.buf(C, "AdamW v (f32)", n)?,
        decay_values: decay_runs(opt.decay())
            .values
            .iter()
            .map(|&(_, len)| al.buf(C, "decay factor (one run's worth)", len))
            .collect::<Result<Vec<_>>>()?,
        norm_scratch: al.buf(
            MemCategory::Misc,
            "grad-norm scratch (f64)",
            ops::grad_norm_scratch_len(),
        )?,
        sched: al.buf(MemCategory::Misc, "lr, step (f64)", 2)?,
        norm: al.buf(MemCategory::Misc, "grad norm (f64)", 1)?,
    })
}

pub struct GpuTrainer {
    /// `--graph`: the captured micro-batch steps (first field: dropped before the buffers their
    /// kernels address).
    graphs: Option<StepGraphs>,
    pub gpu: Gpu,
    pub model: GpuModel,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    decay: DecayRuns,
    /// [lr, step] of the update in flight.
    sched: CudaSlice<f64>,
    norm: CudaSlice<f64>,
    norm_scratch: CudaSlice<f64>,
    hyper: ops::AdamWHyper,
}

impl GpuTrainer {
    /// The device memory [`GpuTrainer::new`] allocates for these arguments, buffer by buffer
    /// (the model's account plus the optimiser's; no GPU needed).
    pub fn memory_account(
        model: &Model,
        opt: &AdamW,
        max_tokens: usize,
        max_seqs: usize,
        plan: SavePlan,
    ) -> Result<MemoryAccount> {
        let mut acc = GpuModel::memory_account(model, max_tokens, max_seqs, plan)?;
        let mut al = CountAlloc::default();
        opt_buffers(&mut al, opt)?;
        acc.entries.extend(al.account.entries);
        Ok(acc)
    }

    /// The plan of `mode` for these arguments, and its account (with `fp8`, the FP8 state of
    /// [`GpuTrainer::enable_fp8`] too). `budget` (bytes of the account, i.e. what the trainer
    /// allocates; the CUDA context and modules come on top) bounds `auto`, which keeps the MLP's
    /// gate/up outputs for as many blocks as fit it (at least lean), and is checked for the
    /// other modes; an account over the budget is an error that names the sizes.
    #[allow(clippy::too_many_arguments)]
    pub fn save_plan(
        model: &Model,
        opt: &AdamW,
        max_tokens: usize,
        max_seqs: usize,
        mode: SaveMode,
        budget: Option<usize>,
        fp8: bool,
    ) -> Result<(SavePlan, MemoryAccount)> {
        let n_layers = model.config.num_hidden_layers;
        let account = |p: SavePlan| -> Result<MemoryAccount> {
            let mut acc = Self::memory_account(model, opt, max_tokens, max_seqs, p)?;
            if fp8 {
                let bytes = GpuModel::fp8_bytes(model, max_tokens);
                acc.add(MemCategory::Misc, "FP8 codes and scales", 1, bytes, 1);
            }
            Ok(acc)
        };
        let gb = |b: usize| b as f64 / 1e9;
        if mode == SaveMode::Auto {
            if let Some(budget) = budget {
                // The account grows with each copy by the same bytes: take the most that fit.
                for copies in (2..=n_layers).rev() {
                    let p = SavePlan::gate_up(copies);
                    let acc = account(p)?;
                    if acc.total() <= budget {
                        return Ok((p, acc));
                    }
                }
            }
        }
        let p = SavePlan::fixed(mode, n_layers);
        let acc = account(p)?;
        if let Some(budget) = budget {
            ensure!(
                acc.total() <= budget,
                "--save {}: the step needs {:.2} GB, over the memory budget of {:.2} GB; {}",
                mode.name(),
                gb(acc.total()),
                gb(budget),
                match mode {
                    SaveMode::Recompute => "lower --batch-size or --seq-len",
                    SaveMode::Lean | SaveMode::Auto => "add --recompute or lower --batch-size",
                    SaveMode::All => "use --save auto or lean",
                }
            );
        }
        Ok((p, acc))
    }

    /// The budget of `--save auto` without `--memory-limit`: the device's free memory now, less
    /// [`AUTO_RESERVE_BYTES`] (modules loaded later, cuBLASLt's and NVRTC's own allocations, CUDA
    /// graphs).
    pub fn free_budget(gpu: &Gpu) -> Result<usize> {
        let (free, _) = gpu
            .ctx
            .mem_get_info()
            .map_err(|e| anyhow!("querying GPU memory failed: {e:?}"))?;
        Ok(free.saturating_sub(AUTO_RESERVE_BYTES))
    }

    /// Uploads the parameters and the optimiser state `opt` (moments and decay mask), with room
    /// for micro-batches of up to `max_tokens` tokens in `max_seqs` sequences.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: Gpu,
        model: &Model,
        params: &[f32],
        opt: &AdamW,
        clip: f64,
        max_tokens: usize,
        max_seqs: usize,
        plan: SavePlan,
    ) -> Result<Self> {
        let build = |gpu: &Gpu| -> Result<_> {
            let model = GpuModel::new_with(gpu, model, params, max_tokens, max_seqs, plan)?;
            let OptBuffers {
                mut m,
                mut v,
                mut decay_values,
                norm_scratch,
                sched,
                norm,
            } = opt_buffers(&mut GpuAlloc { gpu }, opt)?;
            gpu.stream
                .memcpy_htod(&opt.m, &mut m)
                .map_err(|e| anyhow!("uploading the first moments failed: {e:?}"))?;
            gpu.stream
                .memcpy_htod(&opt.v, &mut v)
                .map_err(|e| anyhow!("uploading the second moments failed: {e:?}"))?;
            let runs = decay_runs(opt.decay());
            for (buf, &(value, len)) in decay_values.iter_mut().zip(&runs.values) {
                let host = vec![value; len];
                gpu.stream
                    .memcpy_htod(&host, &mut buf.slice_mut(..len))
                    .map_err(|e| anyhow!("uploading the decay factors failed: {e:?}"))?;
                // `host` must outlive the copy.
                gpu.sync()?;
            }
            // The moments' host arrays (`opt`) outlive this; wait for their copies anyway.
            gpu.sync()?;
            let decay = DecayRuns {
                runs: runs.runs,
                values: decay_values,
            };
            Ok((model, (m, v), decay, norm_scratch, sched, norm))
        };
        let (model, (m, v), decay, norm_scratch, sched, norm) = build(&gpu).map_err(explain_oom)?;
        let c = opt.config;
        Ok(GpuTrainer {
            graphs: None,
            sched,
            norm,
            gpu,
            model,
            m,
            v,
            decay,
            norm_scratch,
            hyper: ops::AdamWHyper {
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: c.weight_decay,
                max_grad_norm: clip,
            },
        })
    }

    pub fn zero_grads(&mut self) -> Result<()> {
        self.model.zero_grads(&self.gpu)
    }

    /// Forward and backward of one micro-batch, the gradient of `scale`·(mean loss) added to the
    /// accumulated gradients. Returns the micro-batch's mean loss. With graphs enabled
    /// ([`GpuTrainer::enable_graphs`]) the device work is replayed from a CUDA graph.
    pub fn accumulate(&mut self, batch: &Batch, scale: f64) -> Result<f64> {
        if self.graphs.is_some() {
            return self.accumulate_graph(batch, scale).map_err(explain_oom);
        }
        let cu = uniform_cu_seqlens(batch.batch, batch.seq_len);
        self.model
            .forward(&self.gpu, &batch.inputs, &cu)
            .map_err(explain_oom)?;
        self.model
            .loss_and_backward_scaled(&self.gpu, &batch.targets, scale as f32)
            .map_err(explain_oom)
    }

    /// Replays [`GpuTrainer::accumulate`]'s device work from one CUDA graph per micro-batch
    /// shape from the shape's second micro-batch on (`gdn train --graph`). Evaluation, the
    /// gradient norm and the update stay eager. Results are bit for bit those of the eager path:
    /// the same kernels with the same arguments on the same buffers.
    /// The blocks' linear layers in FP8 from now on (`--fp8`; see `cuda::model::linear`). Call
    /// it before `enable_graphs`.
    pub fn enable_fp8(&mut self) -> Result<()> {
        self.model.enable_fp8(&self.gpu).map_err(explain_oom)
    }

    pub fn enable_graphs(&mut self) -> Result<()> {
        ensure!(
            self.model.profile().is_none(),
            "CUDA graphs and the per-op profile exclude each other (the profile synchronises)"
        );
        self.graphs.get_or_insert_with(StepGraphs::default);
        Ok(())
    }

    /// Micro-batches replayed from a CUDA graph so far (0 without graphs).
    pub fn graph_replays(&self) -> u64 {
        self.graphs.as_ref().map_or(0, |g| g.replays)
    }

    fn accumulate_graph(&mut self, batch: &Batch, scale: f64) -> Result<f64> {
        let cu = uniform_cu_seqlens(batch.batch, batch.seq_len);
        let scale = scale as f32;
        let shape = StepShape {
            seqs: batch.batch,
            seq_len: batch.seq_len,
            scale_bits: scale.to_bits(),
        };
        let gpu = &self.gpu;
        let model = &mut self.model;
        let graphs = self.graphs.as_mut().expect("graphs enabled");
        // Host half: validation and the uploads (tokens, targets; cu_seqlens and the chunk
        // tables only when they changed, e.g. after an evaluation, and always to the values the
        // graph of this shape was captured with). Stream-ordered before the replay.
        let n = model.upload_inputs(gpu, &batch.inputs, &cu)?;
        model.upload_targets(gpu, &batch.targets, n)?;
        if let Some(g) = graphs.graphs.get(&shape) {
            super::graph::launch(g)?;
            graphs.replays += 1;
        } else if graphs.warm.insert(shape) {
            // First micro-batch of this shape: eager, so that nothing is compiled, chosen or
            // uploaded inside the capture.
            model.forward_device(gpu, n)?;
            model.loss_and_backward_device(gpu, scale)?;
        } else {
            // The capture queues nothing: the step runs in the first replay.
            ensure!(
                model.profile().is_none(),
                "a CUDA graph cannot be captured with the per-op profile on"
            );
            gpu.sync()?;
            let (g, ()) = super::graph::capture_uploaded(gpu, || {
                model.forward_device(gpu, n)?;
                model.loss_and_backward_device(gpu, scale)
            })?;
            super::graph::launch(&g)?;
            graphs.graphs.insert(shape, g);
            graphs.replays += 1;
        }
        // The loss the graph left on the device (one synchronisation, as the eager path).
        model.read_loss(gpu)
    }

    /// The global norm of the accumulated gradients (read back: one synchronisation).
    pub fn grad_norm(&mut self) -> Result<f64> {
        ops::grad_norm(
            &self.gpu,
            &self.model.grads,
            &mut self.norm_scratch,
            &mut self.norm,
        )?;
        Ok(super::buffer::download(&self.gpu, &self.norm)?[0])
    }

    /// One AdamW update (update number `step`, from 1) at learning rate `lr`, the gradients
    /// clipped to the configured norm using the norm of the last [`GpuTrainer::grad_norm`].
    pub fn update(&mut self, lr: f64, step: u64) -> Result<()> {
        let gpu = &self.gpu;
        gpu.stream
            .memcpy_htod(&[lr, step as f64], &mut self.sched)
            .map_err(|e| anyhow!("uploading the learning rate failed: {e:?}"))?;
        // One launch per run of parameters with the same decay factor (elementwise: the same
        // values as one launch over a per-parameter factor array).
        let model = &mut self.model;
        for (r, vi) in &self.decay.runs {
            ops::adamw(
                gpu,
                &mut model.params.slice_mut(r.clone()),
                &model.grads.slice(r.clone()),
                &mut self.m.slice_mut(r.clone()),
                &mut self.v.slice_mut(r.clone()),
                &self.decay.values[*vi].slice(..r.len()),
                &mut model.params_bf16.slice_mut(r.clone()),
                &self.sched,
                (self.hyper.max_grad_norm > 0.0).then_some(&self.norm),
                &self.hyper,
            )?;
        }
        // The host array of the copy above lives on this frame: wait for it.
        gpu.sync()
    }

    /// Copies the parameters and moments back into `params` and `opt` (for a checkpoint).
    pub fn download_into(&self, params: &mut [f32], opt: &mut AdamW) -> Result<()> {
        let gpu = &self.gpu;
        let n = params.len();
        params.copy_from_slice(&download_f32(gpu, &self.model.params.slice(..n))?);
        opt.m.copy_from_slice(&download_f32(gpu, &self.m)?);
        opt.v.copy_from_slice(&download_f32(gpu, &self.v)?);
        Ok(())
    }

    /// Loss summed over the counted targets of `batch`, their count, and the greedy predictions
    /// at the counted positions when `predictions` is set (0 elsewhere).
    pub fn eval_batch(
        &mut self,
        batch: &Batch,
        predictions: bool,
    ) -> Result<(f64, usize, Option<Vec<u32>>)> {
        let cu = uniform_cu_seqlens(batch.batch, batch.seq_len);
        self.model.forward(&self.gpu, &batch.inputs, &cu)?;
        let preds = if predictions {
            let logits = self.model.download_logits(&self.gpu)?;
            let vocab = logits.len() / batch.targets.len();
            Some(crate::train::trainer::argmax_at_targets(
                &logits,
                &batch.targets,
                vocab,
            ))
        } else {
            None
        };
        let losses = self.model.position_losses(&self.gpu, &batch.targets)?;
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (l, &t) in losses.iter().zip(&batch.targets) {
            if t != crate::data::IGNORE {
                sum += *l as f64;
                count += 1;
            }
        }
        Ok((sum, count, preds))
    }
}

/// The GPU model as a [`Scorer`] for `eval::evaluate_*` (bf16 activations, fp32 losses).
pub struct GpuScorer {
    gpu: Gpu,
    model: GpuModel,
    vocab: usize,
}

impl GpuScorer {
    /// Uploads `params` with room for `max_blocks` blocks of `t` scored positions per pass.
    pub fn new(
        gpu: Gpu,
        model: &Model,
        params: &[f32],
        t: usize,
        max_blocks: usize,
    ) -> Result<Self> {
        let gm =
            GpuModel::new(&gpu, model, params, max_blocks * t, max_blocks).map_err(explain_oom)?;
        Ok(GpuScorer {
            gpu,
            model: gm,
            vocab: model.config.vocab_size,
        })
    }
}

impl Scorer for GpuScorer {
    fn position_losses(&mut self, blocks: &[Vec<u32>]) -> Result<Vec<f64>> {
        let Some(Packed { t, inputs, targets }) = Packed::of(blocks)? else {
            return Ok(Vec::new());
        };
        let cu = uniform_cu_seqlens(blocks.len(), t);
        self.model.forward(&self.gpu, &inputs, &cu)?;
        let l = self.model.position_losses(&self.gpu, &targets)?;
        Ok(l.into_iter().map(f64::from).collect())
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_errors_carry_advice_and_others_do_not() {
        let oom = anyhow!("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")")
            .context("GpuModel: allocating `mlp up` (184549376 elements)");
        let msg = format!("{:#}", explain_oom(oom));
        assert!(
            msg.starts_with("the GPU ran out of memory")
                && msg.contains("--batch-size")
                && msg.contains("--recompute")
                && msg.contains("mlp up"),
            "{msg}"
        );
        let other = format!(
            "{:#}",
            explain_oom(anyhow!("launching CUDA kernel `x` failed"))
        );
        assert_eq!(other, "launching CUDA kernel `x` failed");
    }

    #[test]
    fn decay_runs_cover_the_factors_in_order() {
        let r = decay_runs(&[0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
        assert_eq!(
            r.runs,
            vec![(0..1, 0), (1..4, 1), (4..6, 0), (6..7, 1)],
            "runs"
        );
        assert_eq!(r.values, vec![(0.0, 2), (1.0, 3)]);
        assert!(decay_runs(&[]).runs.is_empty());
        let r = decay_runs_max(&[1.0; 7], 3);
        assert_eq!(r.runs, vec![(0..3, 0), (3..6, 0), (6..7, 0)]);
        assert_eq!(r.values, vec![(1.0, 3)]);
    }

    /// The trainer's account (no GPU): the model's plus m, v, one run's worth of each decay
    /// factor and the small scalars; the per-parameter factor array is gone.
    #[test]
    fn trainer_memory_account_adds_the_optimizer() {
        let model =
            Model::new(crate::cuda::model_selftest::test_config(Default::default()).unwrap())
                .unwrap();
        let opt = AdamW::new(crate::train::adamw::AdamWConfig::default(), &model.layout);
        let acc = GpuTrainer::memory_account(&model, &opt, 100, 3, SavePlan::lean()).unwrap();
        let base = GpuModel::memory_account(&model, 100, 3, SavePlan::lean()).unwrap();
        let p = model.layout.total;
        // Every parameter decays by default: one run, one factor buffer as long as it.
        let runs = decay_runs(opt.decay());
        let longest: usize = runs.values.iter().map(|v| v.1).sum();
        assert_eq!((runs.runs.len(), longest), (1, p));
        assert_eq!(acc.category(MemCategory::Optimizer), 8 * p + 4 * longest);
        assert_eq!(
            acc.total(),
            base.total() + 8 * p + 4 * longest + 8 * (ops::grad_norm_scratch_len() + 3)
        );
    }
}

/// On a GPU machine (skipped elsewhere): `cargo test --release --lib cuda::train::gpu`.
#[cfg(test)]
mod gpu_tests {
    use super::*;
    use crate::model::ModelConfig;
    use crate::tensor::Rng;
    use crate::train::adamw::AdamWConfig;

    fn batch(rng: &mut Rng, seqs: usize, len: usize, vocab: usize) -> Batch {
        let n = seqs * len;
        Batch {
            batch: seqs,
            seq_len: len,
            inputs: (0..n).map(|_| rng.below(vocab) as u32).collect(),
            targets: (0..n).map(|_| rng.below(vocab) as u32).collect(),
        }
    }

    /// Losses, norms and final parameters and moments (as bits) of 4 steps of 2 micro-batches
    /// with an evaluation of another shape between steps 2 and 3.
    fn run(graph: bool) -> Result<(Vec<u64>, Vec<u32>, u64)> {
        let model = Model::new(ModelConfig::preset("small")?)?;
        let mut rng = Rng::new(5);
        let mut params = model.init_params(&mut rng);
        let mut opt = AdamW::new(AdamWConfig::default(), &model.layout);
        let vocab = model.config.vocab_size;
        let mut t = GpuTrainer::new(
            Gpu::open(0)?,
            &model,
            &params,
            &opt,
            1.0,
            4 * 96,
            4,
            SavePlan::lean(),
        )?;
        if graph {
            t.enable_graphs()?;
        }
        let mut data = Rng::new(9);
        let mut out = Vec::new();
        for step in 1..=4u64 {
            t.zero_grads()?;
            for _ in 0..2 {
                let b = batch(&mut data, 2, 96, vocab);
                out.push(t.accumulate(&b, 0.5)?.to_bits());
            }
            out.push(t.grad_norm()?.to_bits());
            t.update(1e-3, step)?;
            if step == 2 {
                let e = batch(&mut data, 4, 64, vocab);
                out.push(t.eval_batch(&e, false)?.0.to_bits());
            }
        }
        t.download_into(&mut params, &mut opt)?;
        let bits = params.iter().chain(&opt.m).chain(&opt.v);
        Ok((out, bits.map(|x| x.to_bits()).collect(), t.graph_replays()))
    }

    #[test]
    fn gpu_graph_replayed_steps_equal_eager_steps_bit_for_bit() {
        if let Some(why) = super::super::unavailable_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let (l0, p0, r0) = run(false).unwrap();
        let (l1, p1, r1) = run(true).unwrap();
        assert_eq!(r0, 0);
        // 8 micro-batches of one shape: one eager, one captured (and replayed), 6 replayed.
        assert_eq!(r1, 7);
        assert_eq!(l0, l1, "losses / norms / eval loss differ");
        assert!(p0 == p1, "parameters or moments differ");
    }
}
