//! `gdn bench kernels`: times the CUDA delta rule kernels at the shapes of the peer FLA benchmark
//! (`bench/fla_ops.py`), eager and replayed from a CUDA graph, and reports each against its floor
//! (FLOPs at 790 TFLOP/s bf16 dense, bytes at 4.3 TB/s; docs/perf.md gives the formulas).
//!
//! Eager: each repetition is bracketed by two events and waited for (launch overhead included,
//! as `triton.testing.do_bench` includes Python's). Graph: the same calls captured once on a
//! non-default stream and replayed; only the kernels and their gaps remain. Median of `reps`.

use super::delta_rule::{
    chunk_backward, chunk_backward_kept, chunk_forward, chunk_forward_keep, decode_configs,
    saved_t_len, Backward, ChunkInputs, DecodeInputs, DecodeStep, DeltaRuleWorkspace, GradBuffers,
    KeptForward, StageProbe,
};
use super::Gpu;
use crate::model::ModelConfig;
use crate::ops::delta_rule::{Dims, CHUNK};
use anyhow::{bail, Context, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, DeviceRepr};
use half::bf16;
use std::path::PathBuf;

/// Peak rates used for the floors: H200 dense bf16 tensor-core rate and a measured copy rate.
pub const PEAK_FLOPS: f64 = 790e12;
pub const PEAK_BYTES: f64 = 4.3e12;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to time: `kernels` (the delta rule kernels at FLA's benchmark shapes), `train`
    /// (whole training steps of `--preset` on random tokens, as the peer's fla_train.py) or
    /// `matmul` (the linear layers of `--preset` at batch × seq-len tokens, bf16 against FP8).
    #[arg(default_value = "kernels")]
    pub kind: String,
    /// train, matmul: the model preset.
    #[arg(long, default_value = "fla-1.3b")]
    pub preset: String,
    /// train, matmul: a model config.json (FLA's format, or a checkpoint folder) instead of
    /// --preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// train, matmul: tokens per sequence.
    #[arg(long, default_value_t = 4096)]
    pub seq_len: usize,
    /// train, matmul: sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// train: timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// train: recompute each block's forward in the backward (see `gdn train --recompute`).
    #[arg(long)]
    pub recompute: bool,
    /// train: what each block keeps for its backward (see `gdn train --save`); the JSON goes to
    /// gdn_train_<mode>[_graph].json for modes other than lean.
    #[arg(long, value_enum, default_value_t = super::model::SaveMode::Lean)]
    pub save: super::model::SaveMode,
    /// train: memory budget in GB of the account (see `gdn train --memory-limit`).
    #[arg(long)]
    pub memory_limit: Option<f64>,
    /// train: replay each step's forward and backward from a CUDA graph (see `gdn train
    /// --graph`); the JSON goes to gdn_train[_recompute]_graph.json.
    #[arg(long)]
    pub graph: bool,
    /// train: the blocks' linear layers as FP8 matmuls (see `gdn train --fp8`).
    #[arg(long)]
    pub fp8: bool,
    /// Folder for gdn_bench.json (gdn_bench_matmul.json for `matmul`), created if missing.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Timed repetitions per measurement (median reported).
    #[arg(long, default_value_t = 50)]
    pub reps: usize,
    /// `all` (the five FLA shapes and three decode shapes), `quick` (one of each), `decode`
    /// (the three decode shapes only), or chunked shapes of your own as a comma-separated list of
    /// BxTxHxKxV, e.g. `8x4096x6x256x512` (the 1.3B training shape; no decode shapes then), or
    /// BxTxHxKxVxHV for GVA (HV value heads sharing the H q/k heads, e.g.
    /// `4x4096x16x128x128x32`; fwd+bwd then includes summing dq, dk per q/k head).
    #[arg(long, default_value = "all")]
    pub shapes: String,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Also time every launch of the forward and the backward separately (events around each
    /// launch, eager, median over `reps`), printed per shape and saved in the JSON; `train`: one
    /// more step timed op group by op group.
    #[arg(long)]
    pub breakdown: bool,
    /// Time every decode kernel variant built for each decode shape, not only the default pick.
    #[arg(long)]
    pub decode_sweep: bool,
}

/// Matmul FLOPs of the chunked forward as implemented (full 64×64 products, no triangular
/// savings), per (token, head): [6CK + 4CV + 6KV] with C = 64.
pub fn fwd_flops(tokens: usize, h: usize, k: usize, v: usize) -> f64 {
    let (c, k, v) = (CHUNK as f64, k as f64, v as f64);
    (tokens * h) as f64 * (6.0 * c * k + 4.0 * c * v + 6.0 * k * v)
}

/// … of the backward (recompute + dvloc + reverse state + dqk + wy), per (token, head):
/// [22CK + 10CV + 16KV + 4C²].
pub fn bwd_flops(tokens: usize, h: usize, k: usize, v: usize) -> f64 {
    let (c, k, v) = (CHUNK as f64, k as f64, v as f64);
    (tokens * h) as f64 * (22.0 * c * k + 10.0 * c * v + 16.0 * k * v + 4.0 * c * c)
}

/// Fewest bytes of the forward: q, k (at `hq` heads), v, g, β (at `h`) read once, o written
/// once.
pub fn fwd_bytes(tokens: usize, hq: usize, h: usize, k: usize, v: usize) -> f64 {
    let (t, k, v) = (tokens as f64, k as f64, v as f64);
    t * hq as f64 * 2.0 * k * 2.0 + t * h as f64 * (v * 2.0 * 2.0 + 8.0)
}

/// Fewest bytes of forward + backward: q, k, v, g, β, dO read once; o written (bf16); dq, dk
/// (bf16, at `hq` heads), dv (bf16), dg, dβ (f32) written, as this implementation returns them.
pub fn fwdbwd_bytes(tokens: usize, hq: usize, h: usize, k: usize, v: usize) -> f64 {
    let (t, k, v) = (tokens as f64, k as f64, v as f64);
    t * hq as f64 * 2.0 * (2.0 * k * 2.0)
        + t * h as f64 * ((v * 2.0 + 8.0 + v * 2.0) + v * 2.0 + v * 2.0 + 8.0)
}

fn floor_ms(flops: f64, bytes: f64) -> f64 {
    (flops / PEAK_FLOPS).max(bytes / PEAK_BYTES) * 1e3
}

/// A fast deterministic generator for large inputs (xorshift64*), uniform in [-1, 1).
struct Fast(u64);
impl Fast {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 40) as f32) * (2.0 / (1u64 << 24) as f32) - 1.0
    }
}

fn up<T: DeviceRepr>(gpu: &Gpu, x: &[T]) -> Result<CudaSlice<T>> {
    gpu.stream
        .clone_htod(x)
        .with_context(|| format!("uploading {} elements", x.len()))
}

fn rows_unit_bf16(r: &mut Fast, rows: usize, d: usize) -> Vec<bf16> {
    let mut out = Vec::with_capacity(rows * d);
    let mut buf = vec![0f32; d];
    for _ in 0..rows {
        let mut s = 0f32;
        for x in buf.iter_mut() {
            *x = r.next();
            s += *x * *x;
        }
        let inv = 1.0 / s.sqrt().max(1e-6);
        out.extend(buf.iter().map(|&x| bf16::from_f32(x * inv)));
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median ms of `f` run eagerly, each repetition bracketed by events and waited for.
pub(super) fn time_eager(gpu: &Gpu, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    gpu.sync()?;
    let a = gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let b = gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps {
        a.record(&gpu.stream)?;
        f()?;
        b.record(&gpu.stream)?;
        b.synchronize()?;
        ts.push(a.elapsed_ms(&b)? as f64);
    }
    Ok(median(ts))
}

/// Median ms of one replay of `f` captured into a CUDA graph.
fn time_graph(gpu: &Gpu, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    f()?; // tables uploaded, everything warm: the captured call queues kernels only
    gpu.sync()?;
    let (g, ()) = super::graph::capture_uploaded(gpu, &mut *f)?;
    for _ in 0..5 {
        super::graph::launch(&g)?;
    }
    gpu.sync()?;
    let a = gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let b = gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps {
        a.record(&gpu.stream)?;
        super::graph::launch(&g)?;
        b.record(&gpu.stream)?;
        b.synchronize()?;
        ts.push(a.elapsed_ms(&b)? as f64);
    }
    Ok(median(ts))
}

fn or_nan(what: &str, r: Result<f64>) -> f64 {
    match r {
        Ok(x) => x,
        Err(e) => {
            eprintln!("  {what} failed: {e:#}");
            f64::NAN
        }
    }
}

#[derive(serde::Serialize)]
struct ChunkRow {
    #[serde(rename = "B")]
    b: usize,
    #[serde(rename = "T")]
    t: usize,
    /// q/k heads (FLA's H).
    #[serde(rename = "H")]
    h: usize,
    /// Value heads (FLA's HV; H without GVA).
    #[serde(rename = "HV")]
    hv: usize,
    #[serde(rename = "K")]
    k: usize,
    #[serde(rename = "V")]
    v: usize,
    fwd_ms: f64,
    fwd_graph_ms: f64,
    fwdbwd_ms: f64,
    fwdbwd_graph_ms: f64,
    /// fwd+bwd with the forward's intermediates kept for the backward (`chunk_forward_keep`,
    /// `chunk_backward_kept`: no `wu`, no recompute state pass), and the device bytes kept.
    fwdbwd_kept_ms: f64,
    fwdbwd_kept_graph_ms: f64,
    kept_bytes: usize,
    fwd_flops: f64,
    fwdbwd_flops: f64,
    fwd_bytes: f64,
    fwdbwd_bytes: f64,
    fwd_floor_ms: f64,
    fwdbwd_floor_ms: f64,
    fwd_graph_tflops: f64,
    fwdbwd_graph_tflops: f64,
    fwd_graph_gbps: f64,
    fwdbwd_graph_gbps: f64,
    /// floor / measured (graph): 1.0 would be at the floor.
    fwd_graph_frac_of_floor: f64,
    fwdbwd_graph_frac_of_floor: f64,
    /// The state passes' plan: fused or split forward, and warps per CTA (16 columns of V each)
    /// of each pass.
    state_plan: String,
    /// Per-launch medians (`--breakdown`): forward stages then backward stages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    breakdown: Vec<StageRow>,
}

#[derive(serde::Serialize, Clone)]
struct StageRow {
    stage: String,
    ms: f64,
    /// Share of the pass (forward or backward) this stage belongs to.
    share: f64,
}

/// Median per-stage ms of `reps` eager forward and backward calls with a probe installed.
fn stage_breakdown(
    gpu: &Gpu,
    reps: usize,
    ws: &mut DeltaRuleWorkspace,
    fwd: &mut dyn FnMut(&mut DeltaRuleWorkspace) -> Result<()>,
    bwd: &mut dyn FnMut(&mut DeltaRuleWorkspace) -> Result<()>,
) -> Result<Vec<StageRow>> {
    ws.set_probe(Some(StageProbe::new(gpu)?));
    let mut run = || -> Result<Vec<Vec<(&'static str, f64)>>> {
        let mut per_rep = Vec::with_capacity(reps);
        for i in 0..reps + 3 {
            fwd(ws)?;
            let mut r = ws.probe().unwrap().read()?;
            bwd(ws)?;
            r.extend(ws.probe().unwrap().read()?);
            if i >= 3 {
                per_rep.push(r);
            }
        }
        Ok(per_rep)
    };
    let res = run();
    ws.set_probe(None);
    let per_rep = res?;
    let names: Vec<&'static str> = per_rep[0].iter().map(|x| x.0).collect();
    let mut rows: Vec<StageRow> = names
        .iter()
        .enumerate()
        .map(|(i, n)| StageRow {
            stage: n.to_string(),
            ms: median(per_rep.iter().map(|r| r[i].1).collect()),
            share: 0.0,
        })
        .collect();
    let tot = |p: &str, rows: &[StageRow]| -> f64 {
        rows.iter()
            .filter(|r| r.stage.starts_with(p))
            .map(|r| r.ms)
            .sum()
    };
    let (tf, tb) = (tot("fwd", &rows), tot("bwd", &rows));
    for r in rows.iter_mut() {
        r.share = r.ms / if r.stage.starts_with("fwd") { tf } else { tb };
    }
    rows.push(StageRow {
        stage: "fwd: sum".into(),
        ms: tf,
        share: 1.0,
    });
    rows.push(StageRow {
        stage: "bwd: sum".into(),
        ms: tb,
        share: 1.0,
    });
    Ok(rows)
}

#[allow(non_snake_case)]
#[derive(serde::Serialize)]
struct DecodeRow {
    decode_B: usize,
    kernel: String,
    #[serde(rename = "H")]
    h: usize,
    #[serde(rename = "K")]
    k: usize,
    #[serde(rename = "V")]
    v: usize,
    step_ms: f64,
    step_graph_ms: f64,
    state_bytes: f64,
    state_TBps: f64,
    state_TBps_graph: f64,
    floor_ms: f64,
    graph_frac_of_floor: f64,
}

fn bench_chunk(gpu: &Gpu, reps: usize, shape: ChunkShape, breakdown: bool) -> Result<ChunkRow> {
    let ChunkShape { b, t, dims, group } = shape;
    let Dims {
        heads: h,
        dk: k,
        dv: v,
    } = dims;
    let (nt, hq) = (b * t, h / group);
    let mut r = Fast(0x9E37_79B9_7F4A_7C15 ^ (nt * h * k) as u64);
    let q = up(gpu, &rows_unit_bf16(&mut r, nt * hq, k))?;
    let kk = up(gpu, &rows_unit_bf16(&mut r, nt * hq, k))?;
    let vv: Vec<bf16> = (0..nt * h * v).map(|_| bf16::from_f32(r.next())).collect();
    let vv = up(gpu, &vv)?;
    // g = logsigmoid(x), β = sigmoid(x), x roughly N(0,1) (sum of 3 uniforms).
    let mut x = || r.next() + r.next() + r.next();
    let g: Vec<f32> = (0..nt * h).map(|_| -(1.0 + (-x()).exp()).ln()).collect();
    let beta: Vec<f32> = (0..nt * h).map(|_| 1.0 / (1.0 + (-x()).exp())).collect();
    let (g, beta) = (up(gpu, &g)?, up(gpu, &beta)?);
    let d_o: Vec<bf16> = (0..nt * h * v).map(|_| bf16::from_f32(r.next())).collect();
    let d_o = up(gpu, &d_o)?;
    let mut o = gpu.stream.alloc_zeros::<bf16>(nt * h * v)?;
    let mut grads = GradBuffers::new(gpu, dims, nt, b)?;
    let mut ws = DeltaRuleWorkspace::new(gpu, dims, nt, b, Backward::RecomputeT)?;
    // T kept from the forward for the backward, as in training (FLA keeps its A the same way);
    // GDN_DR_SAVED_T=0 times the backward that recomputes T instead (`prep` again).
    let keep_t = std::env::var("GDN_DR_SAVED_T").as_deref() != Ok("0");
    let mut saved_t = gpu
        .stream
        .alloc_zeros::<f32>(saved_t_len(dims, nt, b))
        .context("allocating the saved T")?;
    let cu: Vec<usize> = (0..=b).map(|i| i * t).collect();
    let scale = (k as f32).powf(-0.5);
    let inp = ChunkInputs {
        q: q.as_view(),
        k: kk.as_view(),
        group,
        v: vv.as_view(),
        g: g.as_view(),
        beta: beta.as_view(),
        scale,
        initial_state: None,
        cu_seqlens: &cu,
    };
    let dov = d_o.as_view();
    // The forward (saving T when kept) and the backward (from the saved T when kept).
    let fwd_call = |ws: &mut DeltaRuleWorkspace,
                    o: &mut CudaSlice<bf16>,
                    st: &mut CudaSlice<f32>|
     -> Result<()> {
        let mut stv = st.as_view_mut();
        let save = if keep_t { Some(&mut stv) } else { None };
        chunk_forward(gpu, ws, &inp, &mut o.as_view_mut(), None, save)
    };
    // Under GVA dq and dk come per value head; the timed backwards sum each group into the q/k
    // heads' (as the model does, and as FLA's backward returns them), into `out` (dq‖dk).
    let sum_groups = |grads: &GradBuffers, out: &mut CudaSlice<bf16>| -> Result<()> {
        if group == 1 {
            return Ok(());
        }
        let (mut sq, mut sk) = out.split_at_mut(nt * hq * k);
        super::ops::sum_head_groups(gpu, &grads.dq.slice(..nt * h * k), &mut sq, k, group)?;
        super::ops::sum_head_groups(gpu, &grads.dk.slice(..nt * h * k), &mut sk, k, group)
    };
    let sum_len = if group == 1 { 1 } else { nt * hq * k * 2 };
    let (mut dqk_sum, mut dqk_sum_kept) = (
        gpu.stream.alloc_zeros::<bf16>(sum_len)?,
        gpu.stream.alloc_zeros::<bf16>(sum_len)?,
    );
    let mut bwd_call =
        |ws: &mut DeltaRuleWorkspace, grads: &mut GradBuffers, st: &CudaSlice<f32>| -> Result<()> {
            {
                let mut gv = grads.views(dims, nt, b);
                let stv = st.as_view();
                let saved = keep_t.then_some(&stv);
                chunk_backward(gpu, ws, &inp, &dov, None, saved, &mut gv)?;
            }
            sum_groups(grads, &mut dqk_sum)
        };
    let mut fwd = || -> Result<()> { fwd_call(&mut ws, &mut o, &mut saved_t) };
    let fwd_ms = or_nan("fwd eager", time_eager(gpu, reps, &mut fwd));
    let fwd_graph_ms = or_nan("fwd graph", time_graph(gpu, reps, &mut fwd));
    let mut fb = || -> Result<()> {
        fwd_call(&mut ws, &mut o, &mut saved_t)?;
        bwd_call(&mut ws, &mut grads, &saved_t)
    };
    let fwdbwd_ms = or_nan("fwd+bwd eager", time_eager(gpu, reps, &mut fb));
    let fwdbwd_graph_ms = or_nan("fwd+bwd graph", time_graph(gpu, reps, &mut fb));
    // The same with the forward's intermediates kept (T, G, W, h_c, Ṽ): what that memory buys.
    let mut kept = KeptForward::new(gpu, &ws)?;
    let kept_bytes = kept.bytes();
    let mut fbk = || -> Result<()> {
        chunk_forward_keep(gpu, &mut ws, &inp, &mut o.as_view_mut(), None, &mut kept)?;
        {
            let mut gv = grads.views(dims, nt, b);
            chunk_backward_kept(gpu, &mut ws, &inp, &dov, None, &mut kept, &mut gv)?;
        }
        sum_groups(&grads, &mut dqk_sum_kept)
    };
    let fwdbwd_kept_ms = or_nan("fwd+bwd kept eager", time_eager(gpu, reps, &mut fbk));
    let fwdbwd_kept_graph_ms = or_nan("fwd+bwd kept graph", time_graph(gpu, reps, &mut fbk));
    drop(kept);
    gpu.sync()?;
    let state_plan = ws.state_plan(b, b * t);
    let breakdown = if breakdown {
        let st = std::cell::RefCell::new(&mut saved_t);
        let mut f1 = |ws: &mut DeltaRuleWorkspace| -> Result<()> {
            fwd_call(ws, &mut o, &mut st.borrow_mut())
        };
        let mut f2 =
            |ws: &mut DeltaRuleWorkspace| -> Result<()> { bwd_call(ws, &mut grads, &st.borrow()) };
        match stage_breakdown(gpu, reps, &mut ws, &mut f1, &mut f2) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("  breakdown failed: {e:#}");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let ff = fwd_flops(nt, h, k, v);
    let fbf = ff + bwd_flops(nt, h, k, v);
    let fby = fwd_bytes(nt, hq, h, k, v);
    let fbby = fwdbwd_bytes(nt, hq, h, k, v);
    let (f1, f2) = (floor_ms(ff, fby), floor_ms(fbf, fbby));
    Ok(ChunkRow {
        b,
        t,
        h: hq,
        hv: h,
        k,
        v,
        fwd_ms,
        fwd_graph_ms,
        fwdbwd_ms,
        fwdbwd_graph_ms,
        fwdbwd_kept_ms,
        fwdbwd_kept_graph_ms,
        kept_bytes,
        fwd_flops: ff,
        fwdbwd_flops: fbf,
        fwd_bytes: fby,
        fwdbwd_bytes: fbby,
        fwd_floor_ms: f1,
        fwdbwd_floor_ms: f2,
        fwd_graph_tflops: ff / (fwd_graph_ms * 1e-3) / 1e12,
        fwdbwd_graph_tflops: fbf / (fwdbwd_graph_ms * 1e-3) / 1e12,
        fwd_graph_gbps: fby / (fwd_graph_ms * 1e-3) / 1e9,
        fwdbwd_graph_gbps: fbby / (fwdbwd_graph_ms * 1e-3) / 1e9,
        fwd_graph_frac_of_floor: f1 / fwd_graph_ms,
        fwdbwd_graph_frac_of_floor: f2 / fwdbwd_graph_ms,
        state_plan,
        breakdown,
    })
}

fn bench_decode(
    gpu: &Gpu,
    reps: usize,
    n: usize,
    dims: Dims,
    cfg: Option<(usize, usize)>,
) -> Result<DecodeRow> {
    let Dims {
        heads: h,
        dk: k,
        dv: v,
    } = dims;
    let mut r = Fast(0xD1B5_4A32_D192_ED03 ^ (n * h * k * v) as u64);
    let mut bf = |len: usize| -> Vec<bf16> { (0..len).map(|_| bf16::from_f32(r.next())).collect() };
    let q = up(gpu, &bf(n * h * k))?;
    let kk = up(gpu, &bf(n * h * k))?;
    let vv = up(gpu, &bf(n * h * v))?;
    let mut f = |len: usize| -> Vec<f32> { (0..len).map(|_| r.next()).collect() };
    let a = up(gpu, &f(n * h))?;
    let b = up(gpu, &f(n * h))?;
    let a_log = up(gpu, &vec![1.0f32; h])?;
    let dt_bias = up(gpu, &vec![-3.0f32; h])?;
    let mut state = up(gpu, &f(n * h * k * v))?;
    let mut o = gpu.stream.alloc_zeros::<bf16>(n * h * v)?;
    let step = match cfg {
        Some((bv, threads)) => DecodeStep::with_config(gpu, dims, n, bv, threads)?,
        None => DecodeStep::new(gpu, dims, n)?,
    };
    let inp = DecodeInputs {
        q: q.as_view(),
        k: kk.as_view(),
        v: vv.as_view(),
        a: a.as_view(),
        b: b.as_view(),
        a_log: a_log.as_view(),
        dt_bias: dt_bias.as_view(),
        scale: (k as f32).powf(-0.5),
        beta_scale: 1.0,
        group: 1,
    };
    let mut run =
        || -> Result<()> { step.run(gpu, &inp, &mut state.as_view_mut(), &mut o.as_view_mut()) };
    let step_ms = or_nan("decode eager", time_eager(gpu, reps.max(100), &mut run));
    let step_graph_ms = or_nan("decode graph", time_graph(gpu, reps.max(100), &mut run));
    let state_bytes = (n * h * k * v * 4 * 2) as f64;
    let fl = state_bytes / PEAK_BYTES * 1e3;
    Ok(DecodeRow {
        decode_B: n,
        kernel: step.kernel_name().to_string(),
        h,
        k,
        v,
        step_ms,
        step_graph_ms,
        state_bytes,
        state_TBps: state_bytes / (step_ms * 1e-3) / 1e12,
        state_TBps_graph: state_bytes / (step_graph_ms * 1e-3) / 1e12,
        floor_ms: fl,
        graph_frac_of_floor: fl / step_graph_ms,
    })
}

/// One chunked shape: sequences, tokens per sequence, the delta rule's dims (value heads) and
/// value heads per q/k head (GVA; 1 without).
#[derive(Clone, Copy, Debug)]
struct ChunkShape {
    b: usize,
    t: usize,
    dims: Dims,
    group: usize,
}

impl ChunkShape {
    fn new(b: usize, t: usize, heads: usize, dk: usize, dv: usize) -> Self {
        ChunkShape {
            b,
            t,
            dims: Dims { heads, dk, dv },
            group: 1,
        }
    }

    fn heads(&self) -> String {
        heads_label(self.dims.heads / self.group, self.dims.heads)
    }
}

/// The tables' H column: "H", or under GVA "H/HV" (q/k heads / value heads).
fn heads_label(h: usize, hv: usize) -> String {
    if h == hv {
        h.to_string()
    } else {
        format!("{h}/{hv}")
    }
}

/// One chunked shape of `--shapes`, `BxTxHxKxV` (sequences, tokens per sequence, heads, key and
/// value head sizes) or `BxTxHxKxVxHV` (GVA: HV value heads, a multiple of the H q/k heads).
fn parse_chunk_shape(s: &str) -> Result<ChunkShape> {
    let bad = || {
        format!(
            "--shapes: `{s}` is not `all`, `quick`, `decode` or a shape BxTxHxKxV or BxTxHxKxVxHV \
             of positive integers, HV a multiple of H (e.g. 8x4096x6x256x512)"
        )
    };
    let f: Vec<usize> = s
        .trim()
        .split('x')
        .map(|x| x.parse::<usize>().ok().filter(|&v| v > 0))
        .collect::<Option<_>>()
        .with_context(bad)?;
    let (b, t, h, dk, dv, hv) = match f[..] {
        [b, t, h, dk, dv] => (b, t, h, dk, dv, h),
        [b, t, h, dk, dv, hv] if hv % h == 0 => (b, t, h, dk, dv, hv),
        _ => bail!(bad()),
    };
    Ok(ChunkShape {
        group: hv / h,
        ..ChunkShape::new(b, t, hv, dk, dv)
    })
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.kind.as_str() {
        "kernels" => {}
        "train" => return run_train(&a),
        "matmul" => return super::bench_matmul::run(&a),
        k => bail!("unknown bench kind `{k}` (known: kernels, train, matmul)"),
    }
    let d = |heads, dk, dv| Dims { heads, dk, dv };
    let mut chunk_shapes = vec![
        ChunkShape::new(8, 2048, 16, 128, 128),
        ChunkShape::new(4, 4096, 16, 128, 128),
        ChunkShape::new(2, 8192, 16, 128, 128),
        ChunkShape::new(1, 16384, 16, 128, 128),
        ChunkShape::new(4, 4096, 6, 256, 512),
    ];
    let mut decode_shapes = vec![
        (64, d(16, 128, 128)),
        (64, d(6, 256, 512)),
        (1, d(16, 128, 128)),
    ];
    match a.shapes.as_str() {
        "all" => {}
        "quick" => {
            chunk_shapes.truncate(1);
            decode_shapes.truncate(1);
        }
        "decode" => chunk_shapes.clear(),
        list => {
            chunk_shapes = list
                .split(',')
                .map(parse_chunk_shape)
                .collect::<Result<_>>()?;
            decode_shapes.clear();
        }
    }
    // `Gpu::open` gives the non-default streams, without cudarc's event bookkeeping, that
    // graph capture needs.
    let gpu = Gpu::open(a.device)?;
    super::warm_kernel_cache(&gpu);
    println!("device: {} ({})", gpu.name, gpu.arch);
    let reps = a.reps.max(5);
    let mut chunk_rows = Vec::new();
    if !chunk_shapes.is_empty() {
        println!("| B | T | H | K | V | fwd ms (graph/eager) | fwd+bwd ms (graph/eager) | fwd TFLOP/s | fwd GB/s | fwd floor ms | fwd frac | fwd+bwd floor ms | fwd+bwd frac |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for shape in chunk_shapes {
        let heads = shape.heads();
        match bench_chunk(&gpu, reps, shape, a.breakdown) {
            Ok(r) => {
                println!(
                    "| {} | {} | {} | {} | {} | {:.3} / {:.3} | {:.3} / {:.3} | {:.1} | {:.0} | {:.3} | {:.2} | {:.3} | {:.2} |",
                    r.b, r.t, heads, r.k, r.v, r.fwd_graph_ms, r.fwd_ms, r.fwdbwd_graph_ms, r.fwdbwd_ms,
                    r.fwd_graph_tflops, r.fwd_graph_gbps, r.fwd_floor_ms, r.fwd_graph_frac_of_floor,
                    r.fwdbwd_floor_ms, r.fwdbwd_graph_frac_of_floor
                );
                chunk_rows.push(r);
            }
            Err(e) => {
                let ChunkShape { b, t, dims, .. } = shape;
                println!(
                    "| {b} | {t} | {heads} | {} | {} | failed: {e:#} |",
                    dims.dk, dims.dv
                )
            }
        }
    }
    if !chunk_rows.is_empty() {
        println!();
        println!("fwd+bwd with the forward's intermediates kept for the backward (T, G, W, h_c, Ṽ; no wu, no recompute state pass):");
        println!(
            "| B | T | H | K | V | fwd+bwd kept ms (graph/eager) | recompute / kept | kept MB |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for r in &chunk_rows {
            println!(
                "| {} | {} | {} | {} | {} | {:.3} / {:.3} | {:.2} | {:.0} |",
                r.b,
                r.t,
                heads_label(r.h, r.hv),
                r.k,
                r.v,
                r.fwdbwd_kept_graph_ms,
                r.fwdbwd_kept_ms,
                r.fwdbwd_graph_ms / r.fwdbwd_kept_graph_ms,
                r.kept_bytes as f64 / 1e6
            );
        }
    }
    if a.breakdown {
        for r in &chunk_rows {
            println!();
            println!(
                "breakdown B={} T={} H={} K={} V={} (state passes: {}; eager, median of {reps}, each stage alone: nothing beside or following a pass; graph fwd {:.3} ms, fwd+bwd {:.3} ms)",
                r.b, r.t, heads_label(r.h, r.hv), r.k, r.v, r.state_plan,
                r.fwd_graph_ms, r.fwdbwd_graph_ms
            );
            println!("| stage | ms | share |");
            println!("|---|---|---|");
            for s in &r.breakdown {
                println!("| {} | {:.4} | {:.1} % |", s.stage, s.ms, 100.0 * s.share);
            }
        }
    }
    let mut decode_rows = Vec::new();
    if !decode_shapes.is_empty() {
        println!();
        println!("| decode B | H | K | V | step ms (graph/eager) | state TB/s (graph/eager) | floor ms | frac | kernel |");
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    let mut decode_runs = Vec::new();
    for (n, dims) in decode_shapes {
        decode_runs.push((n, dims, None));
        if a.decode_sweep {
            for c in decode_configs(dims.dk, dims.dv) {
                decode_runs.push((n, dims, Some(c)));
            }
        }
    }
    for (n, dims, cfg) in decode_runs {
        match bench_decode(&gpu, reps, n, dims, cfg) {
            Ok(r) => {
                println!(
                    "| {} | {} | {} | {} | {:.4} / {:.4} | {:.2} / {:.2} | {:.4} | {:.2} | {} |",
                    r.decode_B,
                    r.h,
                    r.k,
                    r.v,
                    r.step_graph_ms,
                    r.step_ms,
                    r.state_TBps_graph,
                    r.state_TBps,
                    r.floor_ms,
                    r.graph_frac_of_floor,
                    r.kernel
                );
                decode_rows.push(r);
            }
            Err(e) => println!(
                "| {n} | {} | {} | {} | failed: {e:#} |",
                dims.heads, dims.dk, dims.dv
            ),
        }
    }
    if let Some(dir) = a.out {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut all: Vec<serde_json::Value> = Vec::new();
        for r in &chunk_rows {
            all.push(serde_json::to_value(r)?);
        }
        for r in &decode_rows {
            all.push(serde_json::to_value(r)?);
        }
        let doc = serde_json::json!({
            "device": gpu.name,
            "reps": reps,
            "peak_flops": PEAK_FLOPS,
            "peak_bytes_per_s": PEAK_BYTES,
            "rows": all,
        });
        let path = dir.join("gdn_bench.json");
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn run_train(a: &BenchArgs) -> Result<()> {
    use super::model::SaveMode;
    let gpu = Gpu::open(a.device)?;
    println!("device: {} ({})", gpu.name, gpu.arch);
    let (name, model) = match &a.config {
        Some(p) => (
            p.file_stem()
                .map_or("config".into(), |s| s.to_string_lossy().into_owned()),
            ModelConfig::read(p)?,
        ),
        None => (a.preset.clone(), ModelConfig::preset(&a.preset)?),
    };
    let b = super::bench_train::TrainBench {
        name,
        model,
        seq_len: a.seq_len,
        batch_size: a.batch_size,
        steps: a.steps,
        warmup: 2,
        save: match (a.recompute, a.save) {
            (false, s) => s,
            (true, SaveMode::Lean | SaveMode::Recompute) => SaveMode::Recompute,
            (true, s) => anyhow::bail!("--recompute cannot go with --save {}", s.name()),
        },
        memory_limit_gb: a.memory_limit,
        graph: a.graph,
        fp8: a.fp8,
        breakdown: a.breakdown,
    };
    let r = super::bench_train::bench_train(gpu, &b)?;
    let mode = format!(
        "{}{}{}",
        match r.save {
            SaveMode::Lean => String::new(),
            s => format!(", save {}", s.name()),
        },
        if r.graph { ", CUDA graph" } else { "" },
        if r.fp8 { ", FP8 matmuls" } else { "" }
    );
    println!(
        "{}: {:.1}M parameters, {}×{} tokens{mode}: {:.3} s/step, {:.0} tokens/s, {:.0} model \
         TFLOP/s, GPU memory in use {:.1} GB",
        r.name,
        r.params_m,
        r.batch,
        r.seq_len,
        r.step_s,
        r.tokens_per_s,
        r.model_tflops,
        r.gpu_memory_gb
    );
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let name = format!(
            "gdn_train{}{}{}.json",
            match r.save {
                SaveMode::Lean => String::new(),
                s => format!("_{}", s.name()),
            },
            if r.graph { "_graph" } else { "" },
            if r.fp8 { "_fp8" } else { "" }
        );
        crate::io::write_atomic(
            &dir.join(name),
            serde_json::to_string_pretty(&r)?.as_bytes(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_chunk_shape;

    #[test]
    fn chunk_shapes_parse_and_bad_ones_are_named() {
        let s = parse_chunk_shape(" 8x4096x6x256x512").unwrap();
        let d = s.dims;
        assert_eq!(
            (s.b, s.t, d.heads, d.dk, d.dv, s.group),
            (8, 4096, 6, 256, 512, 1)
        );
        // GVA: the sixth field is the value heads.
        let s = parse_chunk_shape("4x4096x16x128x128x32").unwrap();
        assert_eq!(
            (s.dims.heads, s.group, s.heads()),
            (32, 2, "16/32".to_string())
        );
        for bad in [
            "8x4096x6x256",
            "8x4096x6x256x512x9",
            "8x4096x6x256x512x12x1",
            "8x0x6x256x512",
            "8xTx6x256x512",
            "",
        ] {
            let e = parse_chunk_shape(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{}`", bad.trim())), "{e}");
        }
    }
}
