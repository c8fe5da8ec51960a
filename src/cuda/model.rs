//! The whole Gated DeltaNet language model on the GPU: forward (caching what backward needs) and
//! backward, mirroring `model::lm` / `model::mixer` op for op, built from `cuda::ops`,
//! `cuda::blas` and `cuda::delta_rule`. The same forward serves recurrent decoding
//! (`cuda::decode`), one token per sequence, with each block's conv and delta rule replaced by
//! `ops::conv_step` on cached inputs and the fused decode kernel.
//!
//! Storage: fp32 master parameters and a bf16 working copy (one flat buffer each, the CPU
//! layout), fp32 parameter gradients (accumulated, +=), bf16 activations except the residual
//! stream, which is fp32 (the RMSNorms read it in fp32, forward and backward), fp32 gates (g, β),
//! norm statistics and delta-rule gradients. The residual gradient is carried in fp32 and rounded
//! to bf16 where a matmul reads it; the RMSNorm backward takes its fp32 gradient, and the
//! delta-rule gradients go through the L2 norm and SiLU backward in fp32. Every buffer is
//! allocated once for up to `max_tokens` tokens in up to `max_seqs` sequences; a call uses the
//! leading part. The only host transfers of a step are the token / target uploads, `cu_seqlens`
//! (only when it changes) and the loss readback.

use super::blas::Blas;
use super::decode::LayerCache;
use super::delta_rule::{
    chunk_backward, chunk_forward, ChunkInputs, DecodeInputs, DecodeStep, DeltaRuleWorkspace,
    GradBuffers,
};
use super::profile::{mark, OpProfile};
use super::{ops, Gpu, KernelSource};
use crate::model::lm::Model;
use crate::ops::delta_rule::Dims;
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use half::bf16;
use std::ops::Range;

/// The helper kernels of this module.
pub static MODEL_EXTRA: KernelSource = KernelSource {
    name: "model_extra",
    code: concat!(
        include_str!("kernels/common.cuh"),
        include_str!("kernels/model_extra.cu")
    ),
};

/// This module's `.cu` sources, for [`super::all_sources`].
pub fn sources() -> Vec<&'static KernelSource> {
    vec![&MODEL_EXTRA]
}

fn ew_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// y[i, j] += bias[j] over rows of width bias.len().
pub fn add_bias_bf16(
    gpu: &Gpu,
    y: &mut impl DevicePtrMut<bf16>,
    bias: &impl DevicePtr<bf16>,
) -> Result<()> {
    let h = bias.len();
    ensure!(
        h > 0 && y.len() % h == 0,
        "add_bias_bf16: `y` ({}) is not whole rows of the bias width {h}",
        y.len()
    );
    let n = y.len() as i64;
    if n == 0 {
        return Ok(());
    }
    let h_ = h as i32;
    let s = &*gpu.stream;
    let (yp, _y) = y.device_ptr_mut(s);
    let (bp, _b) = bias.device_ptr(s);
    // arguments match `mx_add_bias_bf16(bf16*, const bf16*, i64, int)`; lengths checked.
    launch!(gpu, MODEL_EXTRA, "mx_add_bias_bf16", ew_cfg(n as usize); yp, bp, n, h_);
    Ok(())
}

/// out[j] += Σ_i x[i, j] over rows of width out.len() (deterministic).
pub fn colsum_acc(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    out: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let cols = out.len();
    ensure!(
        cols > 0 && x.len() % cols == 0,
        "colsum_acc: `x` ({}) is not whole rows of width {cols}",
        x.len()
    );
    let rows = i32::try_from(x.len() / cols).context("colsum_acc: too many rows")?;
    let cols_ = cols as i32;
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (op, _o) = out.device_ptr_mut(s);
    let cfg = LaunchConfig {
        grid_dim: (cols.div_ceil(128) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    // arguments match `mx_colsum_acc(const bf16*, float*, int, int)`; lengths checked.
    launch!(gpu, MODEL_EXTRA, "mx_colsum_acc", cfg; xp, op, rows, cols_);
    Ok(())
}

/// The backward of y = l2norm(silu(c)) over rows of width `d`, from the fp32 gradient `dy`:
/// dc = silu'(c)·r(dy − y(y·dy)), with silu and the norm recomputed in fp32 from `c` (no bf16
/// rounding of dy, silu(c) or y before the cancelling projection).
pub fn l2norm_silu_bwd(
    gpu: &Gpu,
    c: &impl DevicePtr<bf16>,
    dy: &impl DevicePtr<f32>,
    dc: &mut impl DevicePtrMut<bf16>,
    d: usize,
) -> Result<()> {
    ensure!(
        d > 0 && c.len() % d == 0 && dy.len() == c.len() && dc.len() == c.len(),
        "l2norm_silu_bwd: lengths (c {}, dy {}, dc {}) are not the same whole rows of width {d}",
        c.len(),
        dy.len(),
        dc.len()
    );
    let rows = i32::try_from(c.len() / d).context("l2norm_silu_bwd: too many rows")?;
    if rows == 0 {
        return Ok(());
    }
    let d_ = i32::try_from(d).context("l2norm_silu_bwd: row too wide")?;
    let s = &*gpu.stream;
    let (cp, _c) = c.device_ptr(s);
    let (yp, _y) = dy.device_ptr(s);
    let (op, _o) = dc.device_ptr_mut(s);
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: ((d.clamp(1, 256).div_ceil(32) * 32) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // arguments match `mx_l2norm_silu_bwd(const bf16*, const float*, bf16*, int, int)`;
    // lengths checked; one block of at most 256 threads per row.
    launch!(gpu, MODEL_EXTRA, "mx_l2norm_silu_bwd", cfg; cp, yp, op, rows, d_);
    Ok(())
}

/// dx = dy·silu'(x), dy fp32.
pub fn silu_bwd_f32dy(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    dy: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    ensure!(
        dy.len() == x.len() && dx.len() == x.len(),
        "silu_bwd_f32dy: lengths differ (x {}, dy {}, dx {})",
        x.len(),
        dy.len(),
        dx.len()
    );
    let n = x.len() as i64;
    if n == 0 {
        return Ok(());
    }
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (yp, _y) = dy.device_ptr(s);
    let (op, _o) = dx.device_ptr_mut(s);
    // arguments match `mx_silu_bwd_f32dy(const bf16*, const float*, bf16*, i64)`;
    // lengths checked.
    launch!(gpu, MODEL_EXTRA, "mx_silu_bwd_f32dy", ew_cfg(n as usize); xp, yp, op, n);
    Ok(())
}

/// y = a + b (a, y the fp32 residual stream, b bf16).
pub fn add_f32_bf16(
    gpu: &Gpu,
    a: &impl DevicePtr<f32>,
    b: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    ensure!(
        a.len() == b.len() && y.len() == a.len(),
        "add_f32_bf16: lengths differ (a {}, b {}, y {})",
        a.len(),
        b.len(),
        y.len()
    );
    let n = a.len() as i64;
    if n == 0 {
        return Ok(());
    }
    let s = &*gpu.stream;
    let (ap, _a) = a.device_ptr(s);
    let (bp, _b) = b.device_ptr(s);
    let (yp, _y) = y.device_ptr_mut(s);
    // arguments match `mx_add_f32_bf16(const float*, const bf16*, float*, i64)`; lengths
    // checked.
    launch!(gpu, MODEL_EXTRA, "mx_add_f32_bf16", ew_cfg(n as usize); ap, bp, yp, n);
    Ok(())
}

/// RMSNorm of the fp32 residual stream (as `ops::rmsnorm_fwd`, x fp32): y = x·rstd·w (bf16).
pub fn rmsnorm_fwd_f32x(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    w: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    rstd: &mut impl DevicePtrMut<f32>,
    d: usize,
    eps: f32,
) -> Result<()> {
    ensure!(
        d > 0
            && w.len() == d
            && x.len() % d == 0
            && y.len() == x.len()
            && rstd.len() == x.len() / d,
        "rmsnorm_fwd_f32x: lengths (x {}, w {}, y {}, rstd {}) do not fit rows of width {d}",
        x.len(),
        w.len(),
        y.len(),
        rstd.len()
    );
    let rows = i32::try_from(x.len() / d).context("rmsnorm_fwd_f32x: too many rows")?;
    if rows == 0 {
        return Ok(());
    }
    let d_ = i32::try_from(d).context("rmsnorm_fwd_f32x: row too wide")?;
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (wp, _w) = w.device_ptr(s);
    let (yp, _y) = y.device_ptr_mut(s);
    let (rp, _r) = rstd.device_ptr_mut(s);
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: ((d.clamp(1, 256).div_ceil(32) * 32) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // arguments match `mx_rmsnorm_fwd_f32x(const float*, const bf16*, bf16*, float*, int,
    // int, float)`; lengths checked; one block of at most 256 threads per row.
    launch!(gpu, MODEL_EXTRA, "mx_rmsnorm_fwd_f32x", cfg; xp, wp, yp, rp, rows, d_, eps);
    Ok(())
}

/// RMSNorm backward on the fp32 residual stream (as `ops::rmsnorm_bwd`, with x, dy and dx fp32):
/// dx is written (`accumulate` false) or added (true) into the fp32 residual gradient, and
/// dw += Σ_rows dy·x·rstd (deterministic: per-block partials in `scratch`, then reduced in order).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd_f32(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    w: &impl DevicePtr<bf16>,
    rstd: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<f32>,
    accumulate: bool,
    dw: &mut impl DevicePtrMut<f32>,
    scratch: &mut impl DevicePtrMut<f32>,
    d: usize,
) -> Result<()> {
    ensure!(
        d > 0
            && d <= ops::MAX_NORM_WIDTH
            && w.len() == d
            && dw.len() == d
            && x.len() % d == 0
            && rstd.len() == x.len() / d
            && dy.len() == x.len()
            && dx.len() == x.len(),
        "rmsnorm_bwd_f32: lengths (x {}, w {}, rstd {}, dy {}, dx {}, dw {}) do not fit rows of \
         width {d}",
        x.len(),
        w.len(),
        rstd.len(),
        dy.len(),
        dx.len(),
        dw.len()
    );
    let parts = ops::PARTS;
    ensure!(
        scratch.len() >= parts * d,
        "rmsnorm_bwd_f32: scratch has {} elements, needs {}",
        scratch.len(),
        parts * d
    );
    let rows = i32::try_from(x.len() / d).context("rmsnorm_bwd_f32: too many rows")?;
    let d_ = i32::try_from(d).context("rmsnorm_bwd_f32: row too wide")?;
    let acc = i32::from(accumulate);
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (wp, _w) = w.device_ptr(s);
    let (rp, _r) = rstd.device_ptr(s);
    let (yp, _y) = dy.device_ptr(s);
    let (dxp, _dx) = dx.device_ptr_mut(s);
    let (dwp, _dw) = dw.device_ptr_mut(s);
    let (sp, _s) = scratch.device_ptr_mut(s);
    let cfg = LaunchConfig {
        grid_dim: (parts as u32, 1, 1),
        block_dim: ((d.clamp(1, 256).div_ceil(32) * 32) as u32, 1, 1),
        shared_mem_bytes: (d * 4) as u32,
    };
    // arguments match `mx_rmsnorm_bwd_f32(const float*, const bf16*, const float*,
    // const float*, float*, float*, int, int, int)`; lengths checked; d floats of dynamic shared
    // memory (d ≤ MAX_NORM_WIDTH fits 48 KiB); scratch holds PARTS rows of d.
    launch!(gpu, MODEL_EXTRA, "mx_rmsnorm_bwd_f32", cfg; xp, wp, rp, yp, dxp, sp, rows, d_, acc);
    let np = parts as i32;
    let cfg = LaunchConfig {
        grid_dim: (d.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // arguments match `reduce_partials(const float*, int, int, int, float*)`: PARTS rows
    // of stride d in scratch, d outputs in dw.
    launch!(gpu, MODEL_EXTRA, "reduce_partials", cfg; sp, np, d_, d_, dwp);
    Ok(())
}

/// Fills a buffer with all-ones bytes: NaN as bf16 and as f32 (for poisoning in tests).
pub fn poison<T>(gpu: &Gpu, buf: &mut CudaSlice<T>) -> Result<()> {
    let bytes = buf.num_bytes();
    let s = &*gpu.stream;
    let (p, _g) = buf.device_ptr_mut(s);
    // SAFETY: writes exactly the bytes of a live buffer, queued on its stream.
    unsafe { cudarc::driver::result::memset_d8_async(p, 0xFF, bytes, s.cu_stream()) }
        .map_err(|e| anyhow!("poisoning a buffer failed: {e:?}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// Where one block's parameters live in the flat buffer (looked up by name in the layout).
#[derive(Clone, Debug)]
struct LayerRanges {
    attn_norm: Range<usize>,
    q_proj: Range<usize>,
    k_proj: Range<usize>,
    v_proj: Range<usize>,
    a_proj: Range<usize>,
    b_proj: Range<usize>,
    b_bias: Option<Range<usize>>,
    a_log: Range<usize>,
    dt_bias: Range<usize>,
    q_conv: Range<usize>,
    k_conv: Range<usize>,
    v_conv: Range<usize>,
    g_proj: Range<usize>,
    o_norm: Range<usize>,
    o_proj: Range<usize>,
    mlp_norm: Range<usize>,
    gate_proj: Range<usize>,
    up_proj: Range<usize>,
    down_proj: Range<usize>,
}

/// Sizes of the model.
#[derive(Clone, Copy, Debug)]
struct Sz {
    d: usize,
    inter: usize,
    vocab: usize,
    h: usize,
    dk: usize,
    dv: usize,
    kd: usize,
    vd: usize,
    w: usize,
    eps: f32,
}

/// What one block's forward keeps for its backward (bf16 unless noted), [max_tokens, ·].
struct LayerActs {
    rstd1: CudaSlice<f32>,
    h1: CudaSlice<bf16>,
    q_pre: CudaSlice<bf16>,
    k_pre: CudaSlice<bf16>,
    v_pre: CudaSlice<bf16>,
    a: CudaSlice<bf16>,
    b: CudaSlice<bf16>,
    gate: CudaSlice<bf16>,
    q_conv: CudaSlice<bf16>,
    k_conv: CudaSlice<bf16>,
    v_conv: CudaSlice<bf16>,
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    qr: CudaSlice<f32>,
    kr: CudaSlice<f32>,
    v: CudaSlice<bf16>,
    g: CudaSlice<f32>,
    beta: CudaSlice<f32>,
    o: CudaSlice<bf16>,
    o_rstd: CudaSlice<f32>,
    normed: CudaSlice<bf16>,
    /// fp32 (residual stream).
    x_mid: CudaSlice<f32>,
    rstd2: CudaSlice<f32>,
    h2: CudaSlice<bf16>,
    mg: CudaSlice<bf16>,
    mu: CudaSlice<bf16>,
    act: CudaSlice<bf16>,
}

/// Backward temporaries (shared by all layers).
struct BwdTemps {
    dres: CudaSlice<f32>,
    dres_bf: CudaSlice<bf16>,
    dacc: CudaSlice<f32>,
    dact: CudaSlice<bf16>,
    dmg: CudaSlice<bf16>,
    dmu: CudaSlice<bf16>,
    d_normed: CudaSlice<bf16>,
    d_o: CudaSlice<bf16>,
    d_gate: CudaSlice<bf16>,
    rule: GradBuffers,
    dq_conv: CudaSlice<bf16>,
    dk_conv: CudaSlice<bf16>,
    dv_conv: CudaSlice<bf16>,
    dq_pre: CudaSlice<bf16>,
    dk_pre: CudaSlice<bf16>,
    dv_pre: CudaSlice<bf16>,
    da: CudaSlice<bf16>,
    db: CudaSlice<bf16>,
    scratch: CudaSlice<f32>,
}

/// The model on one GPU, with its parameters, gradients and every activation buffer.
pub struct GpuModel {
    sz: Sz,
    max_tokens: usize,
    max_seqs: usize,
    embeddings: Range<usize>,
    norm: Range<usize>,
    head: Range<usize>,
    layers: Vec<LayerRanges>,
    /// Keep one block's activations and recompute each block's forward before its backward
    /// (memory: the residual stream per block instead of every activation).
    recompute: bool,
    /// Named timings of the launches of a step (`enable_profile`).
    profile: Option<OpProfile>,
    /// fp32 master parameters (the CPU layout).
    pub params: CudaSlice<f32>,
    /// bf16 working copy of `params`.
    pub params_bf16: CudaSlice<bf16>,
    /// fp32 parameter gradients, accumulated by [`GpuModel::loss_and_backward`].
    pub grads: CudaSlice<f32>,
    blas: Blas,
    ws: DeltaRuleWorkspace,
    tokens: CudaSlice<u32>,
    targets: CudaSlice<u32>,
    cu_dev: CudaSlice<i32>,
    cu_host: Vec<usize>,
    /// Tokens of the last forward (0: none pending for a backward).
    n: usize,
    /// Residual stream: xs[0] the embeddings, xs[l + 1] the output of block l.
    /// fp32, so that the stream is not re-rounded to bf16 at every block.
    xs: Vec<CudaSlice<f32>>,
    acts: Vec<LayerActs>,
    tmp_d: CudaSlice<bf16>,
    tmp_silu: CudaSlice<bf16>,
    rstd_f: CudaSlice<f32>,
    normed_f: CudaSlice<bf16>,
    /// [max_tokens, vocab] bf16; after the backward, the logits' gradient.
    pub logits: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
    losses: CudaSlice<f32>,
    stats: CudaSlice<f64>,
    bwd: BwdTemps,
}

fn alloc<T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, n: usize, what: &str) -> Result<CudaSlice<T>> {
    gpu.stream
        .alloc_zeros::<T>(n.max(1))
        .with_context(|| format!("GpuModel: allocating `{what}` ({n} elements)"))
}

fn lookup(model: &Model, name: &str) -> Result<Range<usize>> {
    model
        .layout
        .get(name)
        .map(|p| p.range())
        .ok_or_else(|| anyhow!("GpuModel: the model has no parameter `{name}`"))
}

/// y [n, out] = x [n, in] · Wᵀ (W [out, in]).
#[allow(clippy::too_many_arguments)]
fn lin_fwd(
    blas: &Blas,
    x: &impl DevicePtr<bf16>,
    w: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    n: usize,
    inp: usize,
    out: usize,
) -> Result<()> {
    blas.matmul::<bf16>(n, inp, out, x, false, w, true, y, 1.0, 0.0)
}

/// dx [n, in] (= or +=, by `beta`) dy [n, out] · W [out, in].
#[allow(clippy::too_many_arguments)]
fn lin_dx<O: super::blas::MatmulOut>(
    blas: &Blas,
    dy: &impl DevicePtr<bf16>,
    w: &impl DevicePtr<bf16>,
    dx: &mut impl DevicePtrMut<O>,
    n: usize,
    inp: usize,
    out: usize,
    beta: f32,
) -> Result<()> {
    blas.matmul::<O>(n, out, inp, dy, false, w, false, dx, 1.0, beta)
}

/// dW [out, in] += dyᵀ · x.
fn lin_dw(
    blas: &Blas,
    dy: &impl DevicePtr<bf16>,
    x: &impl DevicePtr<bf16>,
    dw: &mut impl DevicePtrMut<f32>,
    n: usize,
    inp: usize,
    out: usize,
) -> Result<()> {
    blas.matmul::<f32>(out, n, inp, dy, true, x, false, dw, 1.0, 1.0)
}

/// What every block's forward reads besides its own buffers.
struct BlockCtx<'a> {
    gpu: &'a Gpu,
    prof: Option<&'a OpProfile>,
    blas: &'a Blas,
    p16: &'a CudaSlice<bf16>,
    p32: &'a CudaSlice<f32>,
    sz: Sz,
    n: usize,
    /// The packing of the n tokens (unused, empty, by [`Core::Decode`]).
    cu: CudaView<'a, i32>,
    cu_seqlens: &'a [usize],
}

/// How a block's mixer runs its short convs and the delta rule.
enum Core<'a> {
    /// Sequences packed by the context's `cu_seqlens`: the causal conv over each sequence and
    /// the chunked delta rule from a zero state (training, evaluation).
    Chunk(&'a mut DeltaRuleWorkspace),
    /// One token per sequence (n = N): `conv_step` on the layer's conv caches, then the fused
    /// decode kernel, which L2-normalises q and k and computes β and g itself (spec §A.4).
    Decode(&'a DecodeStep, &'a mut LayerCache),
}

/// One block's forward, x_out = block(x_in), keeping in `a` what its backward needs (run again
/// before the backward of the block when activations are recomputed).
#[allow(clippy::too_many_arguments)]
fn block_forward(
    ctx: &BlockCtx,
    lr: &LayerRanges,
    x_in: &CudaView<f32>,
    x_out: &mut CudaViewMut<f32>,
    a: &mut LayerActs,
    core: Core,
    tmp_d: &mut CudaSlice<bf16>,
    tmp_silu: &mut CudaSlice<bf16>,
) -> Result<()> {
    let BlockCtx {
        gpu,
        blas,
        p16,
        sz,
        n,
        ..
    } = *ctx;
    let Sz {
        d,
        inter,
        h,
        kd,
        vd,
        eps,
        ..
    } = sz;
    let pv = |r: &Range<usize>| p16.slice(r.clone());
    rmsnorm_fwd_f32x(
        gpu,
        x_in,
        &pv(&lr.attn_norm),
        &mut a.h1.slice_mut(..n * d),
        &mut a.rstd1.slice_mut(..n),
        d,
        eps,
    )?;
    mark(ctx.prof, gpu, "fwd rmsnorm")?;
    // Mixer projections.
    let h1 = a.h1.slice(..n * d);
    lin_fwd(
        blas,
        &h1,
        &pv(&lr.q_proj),
        &mut a.q_pre.slice_mut(..n * kd),
        n,
        d,
        kd,
    )?;
    lin_fwd(
        blas,
        &h1,
        &pv(&lr.k_proj),
        &mut a.k_pre.slice_mut(..n * kd),
        n,
        d,
        kd,
    )?;
    lin_fwd(
        blas,
        &h1,
        &pv(&lr.v_proj),
        &mut a.v_pre.slice_mut(..n * vd),
        n,
        d,
        vd,
    )?;
    lin_fwd(
        blas,
        &h1,
        &pv(&lr.a_proj),
        &mut a.a.slice_mut(..n * h),
        n,
        d,
        h,
    )?;
    lin_fwd(
        blas,
        &h1,
        &pv(&lr.b_proj),
        &mut a.b.slice_mut(..n * h),
        n,
        d,
        h,
    )?;
    if let Some(bias) = &lr.b_bias {
        add_bias_bf16(gpu, &mut a.b.slice_mut(..n * h), &pv(bias))?;
    }
    lin_fwd(
        blas,
        &h1,
        &pv(&lr.g_proj),
        &mut a.gate.slice_mut(..n * vd),
        n,
        d,
        vd,
    )?;
    mark(ctx.prof, gpu, "fwd mixer projections")?;
    match core {
        Core::Chunk(ws) => chunk_mixer(ctx, lr, a, ws, tmp_silu)?,
        Core::Decode(step, cache) => decode_mixer(ctx, lr, a, step, cache)?,
    }
    ops::gated_rmsnorm_fwd(
        gpu,
        &a.o.slice(..n * vd),
        &a.gate.slice(..n * vd),
        &pv(&lr.o_norm),
        &mut a.normed.slice_mut(..n * vd),
        &mut a.o_rstd.slice_mut(..n * h),
        eps,
    )?;
    mark(ctx.prof, gpu, "fwd gated rmsnorm")?;
    let mut mix = tmp_d.slice_mut(..n * d);
    lin_fwd(
        blas,
        &a.normed.slice(..n * vd),
        &pv(&lr.o_proj),
        &mut mix,
        n,
        vd,
        d,
    )?;
    add_f32_bf16(gpu, x_in, &mix, &mut a.x_mid.slice_mut(..n * d))?;
    mark(ctx.prof, gpu, "fwd o_proj, residual")?;
    // MLP.
    rmsnorm_fwd_f32x(
        gpu,
        &a.x_mid.slice(..n * d),
        &pv(&lr.mlp_norm),
        &mut a.h2.slice_mut(..n * d),
        &mut a.rstd2.slice_mut(..n),
        d,
        eps,
    )?;
    mark(ctx.prof, gpu, "fwd rmsnorm")?;
    let h2 = a.h2.slice(..n * d);
    let ni = n * inter;
    lin_fwd(
        blas,
        &h2,
        &pv(&lr.gate_proj),
        &mut a.mg.slice_mut(..ni),
        n,
        d,
        inter,
    )?;
    lin_fwd(
        blas,
        &h2,
        &pv(&lr.up_proj),
        &mut a.mu.slice_mut(..ni),
        n,
        d,
        inter,
    )?;
    mark(ctx.prof, gpu, "fwd mlp gate/up")?;
    ops::swiglu_fwd(
        gpu,
        &a.mg.slice(..ni),
        &a.mu.slice(..ni),
        &mut a.act.slice_mut(..ni),
    )?;
    mark(ctx.prof, gpu, "fwd swiglu")?;
    lin_fwd(
        blas,
        &a.act.slice(..ni),
        &pv(&lr.down_proj),
        &mut mix,
        n,
        inter,
        d,
    )?;
    add_f32_bf16(gpu, &a.x_mid.slice(..n * d), &mix, x_out)?;
    mark(ctx.prof, gpu, "fwd mlp down, residual")?;
    Ok(())
}

/// The packed-sequence mixer core of [`block_forward`]: q/k/v convs, SiLU, L2 norm, gates, and
/// the chunked delta rule into `a.o`.
fn chunk_mixer(
    ctx: &BlockCtx,
    lr: &LayerRanges,
    a: &mut LayerActs,
    ws: &mut DeltaRuleWorkspace,
    tmp_silu: &mut CudaSlice<bf16>,
) -> Result<()> {
    let BlockCtx {
        gpu,
        p16,
        p32,
        sz,
        n,
        ref cu,
        cu_seqlens,
        ..
    } = *ctx;
    let Sz {
        h, dk, kd, vd, w, ..
    } = sz;
    let pv = |r: &Range<usize>| p16.slice(r.clone());
    // Convs, SiLU, L2 norm.
    for (pre, wr, conv, ch) in [
        (&a.q_pre, &lr.q_conv, &mut a.q_conv, kd),
        (&a.k_pre, &lr.k_conv, &mut a.k_conv, kd),
        (&a.v_pre, &lr.v_conv, &mut a.v_conv, vd),
    ] {
        ops::conv_fwd(
            gpu,
            &pre.slice(..n * ch),
            &pv(wr),
            &mut conv.slice_mut(..n * ch),
            cu,
            ch,
            w,
        )?;
    }
    mark(ctx.prof, gpu, "fwd short conv")?;
    for (conv, y, r) in [
        (&a.q_conv, &mut a.q, &mut a.qr),
        (&a.k_conv, &mut a.k, &mut a.kr),
    ] {
        let mut s = tmp_silu.slice_mut(..n * kd);
        ops::silu_fwd(gpu, &conv.slice(..n * kd), &mut s)?;
        ops::l2norm_fwd(
            gpu,
            &s,
            &mut y.slice_mut(..n * kd),
            &mut r.slice_mut(..n * h),
            dk,
        )?;
    }
    ops::silu_fwd(gpu, &a.v_conv.slice(..n * vd), &mut a.v.slice_mut(..n * vd))?;
    mark(ctx.prof, gpu, "fwd silu, l2norm")?;
    ops::gates_fwd(
        gpu,
        &a.a.slice(..n * h),
        &a.b.slice(..n * h),
        &p32.slice(lr.a_log.clone()),
        &p32.slice(lr.dt_bias.clone()),
        &mut a.g.slice_mut(..n * h),
        &mut a.beta.slice_mut(..n * h),
    )?;
    mark(ctx.prof, gpu, "fwd gates")?;
    let inp = ChunkInputs {
        q: a.q.slice(..n * kd),
        k: a.k.slice(..n * kd),
        v: a.v.slice(..n * vd),
        g: a.g.slice(..n * h),
        beta: a.beta.slice(..n * h),
        scale: 1.0 / (dk as f32).sqrt(),
        initial_state: None,
        cu_seqlens,
    };
    chunk_forward(gpu, ws, &inp, &mut a.o.slice_mut(..n * vd), None)?;
    mark(ctx.prof, gpu, "fwd delta rule")?;
    Ok(())
}

/// The decode mixer core of [`block_forward`] (one token per sequence, n = N): each conv steps
/// on its cache of raw inputs ([N, channels, W], oldest first) and is followed by SiLU; a and b
/// are widened to f32 (into the `g` / `beta` buffers, which the decode path does not otherwise
/// use); the fused kernel then L2-normalises q and k (eps 1e-6), takes β = σ(b),
/// g = −exp(A_log)·softplus(a + dt_bias), advances the state and writes `a.o` — the same math
/// as `model::mixer::decode_step`, with the read-out scale K^{-1/2}.
fn decode_mixer(
    ctx: &BlockCtx,
    lr: &LayerRanges,
    a: &mut LayerActs,
    step: &DecodeStep,
    cache: &mut LayerCache,
) -> Result<()> {
    let BlockCtx {
        gpu,
        p16,
        p32,
        sz,
        n,
        ..
    } = *ctx;
    let Sz {
        h, dk, kd, vd, w, ..
    } = sz;
    let pv = |r: &Range<usize>| p16.slice(r.clone());
    for (pre, wr, conv, c, ch) in [
        (&a.q_pre, &lr.q_conv, &mut a.q_conv, &mut cache.conv_q, kd),
        (&a.k_pre, &lr.k_conv, &mut a.k_conv, &mut cache.conv_k, kd),
        (&a.v_pre, &lr.v_conv, &mut a.v_conv, &mut cache.conv_v, vd),
    ] {
        ops::conv_step(
            gpu,
            &pre.slice(..n * ch),
            &pv(wr),
            &mut c.slice_mut(..n * ch * w),
            &mut conv.slice_mut(..n * ch),
            ch,
            w,
        )?;
    }
    mark(ctx.prof, gpu, "decode short conv")?;
    // SiLU only: the decode kernel normalises q and k itself.
    for (conv, y, ch) in [
        (&a.q_conv, &mut a.q, kd),
        (&a.k_conv, &mut a.k, kd),
        (&a.v_conv, &mut a.v, vd),
    ] {
        ops::silu_fwd(gpu, &conv.slice(..n * ch), &mut y.slice_mut(..n * ch))?;
    }
    ops::cast_bf16_to_f32(gpu, &a.a.slice(..n * h), &mut a.g.slice_mut(..n * h))?;
    ops::cast_bf16_to_f32(gpu, &a.b.slice(..n * h), &mut a.beta.slice_mut(..n * h))?;
    mark(ctx.prof, gpu, "decode silu, casts")?;
    let inp = DecodeInputs {
        q: a.q.slice(..n * kd),
        k: a.k.slice(..n * kd),
        v: a.v.slice(..n * vd),
        a: a.g.slice(..n * h),
        b: a.beta.slice(..n * h),
        a_log: p32.slice(lr.a_log.clone()),
        dt_bias: p32.slice(lr.dt_bias.clone()),
        scale: 1.0 / (dk as f32).sqrt(),
    };
    let nn = cache.state.len();
    step.run(
        gpu,
        &inp,
        &mut cache.state.slice_mut(..nn),
        &mut a.o.slice_mut(..n * vd),
    )?;
    mark(ctx.prof, gpu, "decode delta rule")?;
    Ok(())
}

/// Whether the CUDA kernels support the model's sizes (head dims, conv width, norm widths,
/// heads); the error says which does not fit.
pub fn check_model(model: &Model) -> Result<()> {
    let md = model.mixer_dims();
    super::delta_rule::check_dims(Dims {
        heads: md.heads,
        dk: md.dk,
        dv: md.dv,
    })?;
    ensure!(
        (1..=ops::MAX_CONV_WIDTH).contains(&md.width),
        "GpuModel: conv width {} is outside 1..={}",
        md.width,
        ops::MAX_CONV_WIDTH
    );
    ensure!(
        md.d <= ops::MAX_NORM_WIDTH && md.dv <= ops::MAX_NORM_WIDTH,
        "GpuModel: hidden size {} / value head dim {} exceed the norm kernels' limit {}",
        md.d,
        md.dv,
        ops::MAX_NORM_WIDTH
    );
    ensure!(
        md.heads <= 1024,
        "GpuModel: {} heads exceed the gates kernel's limit of 1024",
        md.heads
    );
    Ok(())
}

impl GpuModel {
    /// Uploads `params` (host f32, the model's layout) and allocates everything for calls of up
    /// to `max_tokens` tokens in up to `max_seqs` sequences.
    pub fn new(
        gpu: &Gpu,
        model: &Model,
        params: &[f32],
        max_tokens: usize,
        max_seqs: usize,
    ) -> Result<Self> {
        Self::new_with(gpu, model, params, max_tokens, max_seqs, false)
    }

    /// As [`GpuModel::new`]; with `recompute`, activations are kept for one block at a time and
    /// each block's forward is run again before its backward.
    pub fn new_with(
        gpu: &Gpu,
        model: &Model,
        params: &[f32],
        max_tokens: usize,
        max_seqs: usize,
        recompute: bool,
    ) -> Result<Self> {
        let c = &model.config;
        c.validate()?;
        ensure!(
            params.len() == model.layout.total,
            "GpuModel: parameter buffer has {} values, the model needs {}",
            params.len(),
            model.layout.total
        );
        ensure!(max_tokens > 0, "GpuModel: max_tokens must be > 0");
        ensure!(max_seqs > 0, "GpuModel: max_seqs must be > 0");
        ensure!(
            max_tokens < (1 << 30),
            "GpuModel: max_tokens {max_tokens} too large"
        );
        let md = model.mixer_dims();
        let sz = Sz {
            d: c.hidden_size,
            inter: c.intermediate_size,
            vocab: c.vocab_size,
            h: md.heads,
            dk: md.dk,
            dv: md.dv,
            kd: md.heads * md.dk,
            vd: md.heads * md.dv,
            w: md.width,
            eps: md.eps as f32,
        };
        let rule = Dims {
            heads: sz.h,
            dk: sz.dk,
            dv: sz.dv,
        };
        check_model(model)?;
        if let Some((i, v)) = params.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            bail!("GpuModel: parameter {i} is not finite ({v})");
        }
        let layers = (0..c.num_hidden_layers)
            .map(|i| -> Result<LayerRanges> {
                let a = |s: &str| lookup(model, &format!("model.layers.{i}.attn.{s}"));
                let m = |s: &str| lookup(model, &format!("model.layers.{i}.{s}"));
                let r = LayerRanges {
                    attn_norm: m("attn_norm.weight")?,
                    q_proj: a("q_proj.weight")?,
                    k_proj: a("k_proj.weight")?,
                    v_proj: a("v_proj.weight")?,
                    a_proj: a("a_proj.weight")?,
                    b_proj: a("b_proj.weight")?,
                    b_bias: if c.b_proj_bias {
                        Some(a("b_proj.bias")?)
                    } else {
                        None
                    },
                    a_log: a("A_log")?,
                    dt_bias: a("dt_bias")?,
                    q_conv: a("q_conv1d.weight")?,
                    k_conv: a("k_conv1d.weight")?,
                    v_conv: a("v_conv1d.weight")?,
                    g_proj: a("g_proj.weight")?,
                    o_norm: a("o_norm.weight")?,
                    o_proj: a("o_proj.weight")?,
                    mlp_norm: m("mlp_norm.weight")?,
                    gate_proj: m("mlp.gate_proj.weight")?,
                    up_proj: m("mlp.up_proj.weight")?,
                    down_proj: m("mlp.down_proj.weight")?,
                };
                ensure!(
                    r.a_log.end <= r.dt_bias.start,
                    "GpuModel: layer {i}: A_log must precede dt_bias in the layout"
                );
                Ok(r)
            })
            .collect::<Result<Vec<_>>>()?;
        let embeddings = lookup(model, "model.embeddings.weight")?;
        let norm = lookup(model, "model.norm.weight")?;
        let head = if c.tie_word_embeddings {
            embeddings.clone()
        } else {
            lookup(model, "lm_head.weight")?
        };

        let master = super::buffer::upload_f32(gpu, params)?;
        let mut params_bf16 = alloc::<bf16>(gpu, params.len(), "params_bf16")?;
        ops::cast_f32_to_bf16(gpu, &master, &mut params_bf16.slice_mut(..params.len()))?;
        let grads = alloc::<f32>(gpu, params.len(), "grads")?;

        let t = max_tokens;
        let Sz {
            d,
            inter,
            vocab,
            h,
            kd,
            vd,
            w,
            dv,
            ..
        } = sz;
        let th = t * h;
        let stored = if recompute { 1 } else { layers.len() };
        let acts = (0..stored)
            .map(|_| -> Result<LayerActs> {
                Ok(LayerActs {
                    rstd1: alloc(gpu, t, "rstd1")?,
                    h1: alloc(gpu, t * d, "h1")?,
                    q_pre: alloc(gpu, t * kd, "q_pre")?,
                    k_pre: alloc(gpu, t * kd, "k_pre")?,
                    v_pre: alloc(gpu, t * vd, "v_pre")?,
                    a: alloc(gpu, th, "a")?,
                    b: alloc(gpu, th, "b")?,
                    gate: alloc(gpu, t * vd, "gate")?,
                    q_conv: alloc(gpu, t * kd, "q_conv")?,
                    k_conv: alloc(gpu, t * kd, "k_conv")?,
                    v_conv: alloc(gpu, t * vd, "v_conv")?,
                    q: alloc(gpu, t * kd, "q")?,
                    k: alloc(gpu, t * kd, "k")?,
                    qr: alloc(gpu, th, "qr")?,
                    kr: alloc(gpu, th, "kr")?,
                    v: alloc(gpu, t * vd, "v")?,
                    g: alloc(gpu, th, "g")?,
                    beta: alloc(gpu, th, "beta")?,
                    o: alloc(gpu, t * vd, "o")?,
                    o_rstd: alloc(gpu, th, "o_rstd")?,
                    normed: alloc(gpu, t * vd, "normed")?,
                    x_mid: alloc(gpu, t * d, "x_mid")?,
                    rstd2: alloc(gpu, t, "rstd2")?,
                    h2: alloc(gpu, t * d, "h2")?,
                    mg: alloc(gpu, t * inter, "mlp gate")?,
                    mu: alloc(gpu, t * inter, "mlp up")?,
                    act: alloc(gpu, t * inter, "mlp act")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let xs = (0..=layers.len())
            .map(|_| alloc(gpu, t * d, "residual"))
            .collect::<Result<Vec<_>>>()?;
        let scratch_len = [
            ops::norm_bwd_scratch_len(d),
            ops::norm_bwd_scratch_len(dv),
            ops::gates_bwd_scratch_len(h),
            ops::conv_bwd_scratch_len(kd.max(vd), w),
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let bwd = BwdTemps {
            dres: alloc(gpu, t * d, "dres")?,
            dres_bf: alloc(gpu, t * d, "dres_bf")?,
            dacc: alloc(gpu, t * d, "dacc")?,
            dact: alloc(gpu, t * inter, "dact")?,
            dmg: alloc(gpu, t * inter, "dmg")?,
            dmu: alloc(gpu, t * inter, "dmu")?,
            d_normed: alloc(gpu, t * vd, "d_normed")?,
            d_o: alloc(gpu, t * vd, "d_o")?,
            d_gate: alloc(gpu, t * vd, "d_gate")?,
            rule: GradBuffers::new(gpu, rule, t, max_seqs)?,
            dq_conv: alloc(gpu, t * kd, "dq_conv")?,
            dk_conv: alloc(gpu, t * kd, "dk_conv")?,
            dv_conv: alloc(gpu, t * vd, "dv_conv")?,
            dq_pre: alloc(gpu, t * kd, "dq_pre")?,
            dk_pre: alloc(gpu, t * kd, "dk_pre")?,
            dv_pre: alloc(gpu, t * vd, "dv_pre")?,
            da: alloc(gpu, th, "da")?,
            db: alloc(gpu, th, "db")?,
            scratch: alloc(gpu, scratch_len, "scratch")?,
        };
        let ws = DeltaRuleWorkspace::new(gpu, rule, max_tokens, max_seqs, true)?;
        let blas = Blas::new(gpu)?;
        // Compile the helper kernels now rather than in the first step.
        gpu.function(&MODEL_EXTRA, "mx_add_f32_bf16")?;
        ops::preload(gpu)?;
        let m = GpuModel {
            sz,
            max_tokens,
            max_seqs,
            embeddings,
            norm,
            head,
            layers,
            recompute,
            profile: None,
            params: master,
            params_bf16,
            grads,
            blas,
            ws,
            tokens: alloc(gpu, t, "tokens")?,
            targets: alloc(gpu, t, "targets")?,
            cu_dev: alloc(gpu, max_seqs + 1, "cu_seqlens")?,
            cu_host: Vec::new(),
            n: 0,
            xs,
            acts,
            tmp_d: alloc(gpu, t * d, "tmp_d")?,
            tmp_silu: alloc(gpu, t * kd.max(vd), "tmp_silu")?,
            rstd_f: alloc(gpu, t, "rstd_f")?,
            normed_f: alloc(gpu, t * d, "normed_f")?,
            logits: alloc(gpu, t * vocab, "logits")?,
            lse: alloc(gpu, t, "lse")?,
            losses: alloc(gpu, t, "losses")?,
            stats: alloc(gpu, 2, "stats")?,
            bwd,
        };
        gpu.sync()?;
        Ok(m)
    }

    /// Records named timings of the forward's and backward's launches from now on (see
    /// [`OpProfile`]; start each step with `profile().start`).
    pub fn enable_profile(&mut self) {
        self.profile = Some(OpProfile::default());
    }

    pub fn profile(&self) -> Option<&OpProfile> {
        self.profile.as_ref()
    }

    /// Tokens of the last forward.
    pub fn tokens_in_flight(&self) -> usize {
        self.n
    }

    /// The logits of the last forward, [tokens, vocab] bf16 (valid until the backward).
    pub fn logits_view(&self) -> CudaView<'_, bf16> {
        self.logits.slice(..self.n * self.sz.vocab)
    }

    /// Zeroes the gradient buffer.
    pub fn zero_grads(&mut self, gpu: &Gpu) -> Result<()> {
        gpu.stream
            .memset_zeros(&mut self.grads)
            .map_err(|e| anyhow!("zeroing the gradients failed: {e:?}"))
    }

    /// Re-derives the bf16 working copy from the fp32 master parameters (after an update made
    /// outside `ops::adamw`, which writes both).
    pub fn refresh_bf16(&mut self, gpu: &Gpu) -> Result<()> {
        let n = self.params.len();
        ops::cast_f32_to_bf16(gpu, &self.params, &mut self.params_bf16.slice_mut(..n))
    }

    /// Fills every activation and temporary buffer with NaN (tests: unwritten elements show).
    pub fn poison_activations(&mut self, gpu: &Gpu) -> Result<()> {
        for x in &mut self.xs {
            poison(gpu, x)?;
        }
        for a in &mut self.acts {
            for b in [
                &mut a.h1,
                &mut a.q_pre,
                &mut a.k_pre,
                &mut a.v_pre,
                &mut a.a,
                &mut a.b,
                &mut a.gate,
                &mut a.q_conv,
                &mut a.k_conv,
                &mut a.v_conv,
                &mut a.q,
                &mut a.k,
                &mut a.v,
                &mut a.o,
                &mut a.normed,
                &mut a.h2,
                &mut a.mg,
                &mut a.mu,
                &mut a.act,
            ] {
                poison(gpu, b)?;
            }
            poison(gpu, &mut a.x_mid)?;
            for b in [
                &mut a.rstd1,
                &mut a.qr,
                &mut a.kr,
                &mut a.g,
                &mut a.beta,
                &mut a.o_rstd,
                &mut a.rstd2,
            ] {
                poison(gpu, b)?;
            }
        }
        poison(gpu, &mut self.tmp_d)?;
        poison(gpu, &mut self.tmp_silu)?;
        poison(gpu, &mut self.rstd_f)?;
        poison(gpu, &mut self.normed_f)?;
        poison(gpu, &mut self.logits)?;
        poison(gpu, &mut self.lse)?;
        poison(gpu, &mut self.losses)?;
        let b = &mut self.bwd;
        for x in [
            &mut b.dres_bf,
            &mut b.dact,
            &mut b.dmg,
            &mut b.dmu,
            &mut b.d_normed,
            &mut b.d_o,
            &mut b.d_gate,
            &mut b.dq_conv,
            &mut b.dk_conv,
            &mut b.dv_conv,
            &mut b.dq_pre,
            &mut b.dk_pre,
            &mut b.dv_pre,
            &mut b.da,
            &mut b.db,
        ] {
            poison(gpu, x)?;
        }
        for x in [
            &mut b.dres,
            &mut b.dacc,
            &mut b.rule.dq,
            &mut b.rule.dk,
            &mut b.rule.dv,
            &mut b.rule.dg,
            &mut b.rule.dbeta,
            &mut b.rule.dh0,
        ] {
            poison(gpu, x)?;
        }
        Ok(())
    }

    /// Forward over `tokens` packed by `cu_seqlens`: computes the logits (bf16, see
    /// [`GpuModel::logits_view`]) and keeps what [`GpuModel::loss_and_backward`] needs.
    /// [`GpuModel::upload_inputs`] then [`GpuModel::forward_device`].
    pub fn forward(&mut self, gpu: &Gpu, tokens: &[u32], cu_seqlens: &[usize]) -> Result<()> {
        let n = self.upload_inputs(gpu, tokens, cu_seqlens)?;
        self.forward_device(gpu, n)
    }

    /// The host half of [`GpuModel::forward`]: validates `tokens` and `cu_seqlens`, uploads the
    /// tokens, and `cu_seqlens` with the delta rule's chunk tables when they differ from the
    /// last call's (then it synchronises). Ends any pending forward; returns the token count for
    /// [`GpuModel::forward_device`].
    pub fn upload_inputs(
        &mut self,
        gpu: &Gpu,
        tokens: &[u32],
        cu_seqlens: &[usize],
    ) -> Result<usize> {
        let n = tokens.len();
        self.check_tokens("forward", tokens)?;
        super::delta_rule::check_cu_seqlens(cu_seqlens, n)?;
        ensure!(
            cu_seqlens.len() - 1 <= self.max_seqs,
            "GpuModel::forward: {} sequences exceed max_seqs {}",
            cu_seqlens.len() - 1,
            self.max_seqs
        );
        self.n = 0;
        if self.cu_host != cu_seqlens {
            let cu32: Vec<i32> = cu_seqlens.iter().map(|&v| v as i32).collect();
            gpu.stream
                .memcpy_htod(&cu32, &mut self.cu_dev.slice_mut(..cu32.len()))
                .context("uploading cu_seqlens")?;
            // The host vector must outlive the asynchronous copy.
            gpu.sync()?;
            self.cu_host = cu_seqlens.to_vec();
        }
        gpu.stream
            .memcpy_htod(tokens, &mut self.tokens.slice_mut(..n))
            .context("uploading the tokens")?;
        // The chunk tables too (the delta rule calls of the forward then find them in place
        // and neither copy nor synchronise: the device half can be captured).
        self.ws.set_seqlens(gpu, cu_seqlens, n)?;
        Ok(n)
    }

    /// The device half of [`GpuModel::forward`] over the `n` tokens and the `cu_seqlens` that
    /// [`GpuModel::upload_inputs`] left in the device buffers: kernels and matmuls only (no copy,
    /// no synchronisation, no allocation once warm), so it can be captured in a CUDA graph.
    pub fn forward_device(&mut self, gpu: &Gpu, n: usize) -> Result<()> {
        ensure!(
            n > 0 && n <= self.max_tokens && self.cu_host.last() == Some(&n),
            "GpuModel::forward_device: {n} tokens do not match the uploaded cu_seqlens {:?}",
            self.cu_host.last()
        );
        self.n = 0;
        self.forward_tokens(gpu, n, None)
    }

    /// One decode step for N = `tokens.len()` sequences, one token each: the forward with each
    /// block's mixer core replaced by `conv_step` on `caches[layer]` and the fused decode kernel
    /// (advancing the caches). The logits [N, vocab] are then in [`GpuModel::logits_view`]. No
    /// backward may follow (crate-internal: `cuda::decode::GpuDecoder` owns its model).
    pub(crate) fn decode_forward(
        &mut self,
        gpu: &Gpu,
        tokens: &[u32],
        step: &DecodeStep,
        caches: &mut [LayerCache],
    ) -> Result<()> {
        self.check_tokens("decode_forward", tokens)?;
        ensure!(
            caches.len() == self.layers.len(),
            "GpuModel::decode_forward: {} layer caches for {} layers",
            caches.len(),
            self.layers.len()
        );
        self.n = 0;
        let n = tokens.len();
        gpu.stream
            .memcpy_htod(tokens, &mut self.tokens.slice_mut(..n))
            .context("uploading the tokens")?;
        self.forward_tokens(gpu, n, Some((step, caches)))
    }

    fn check_tokens(&self, op: &str, tokens: &[u32]) -> Result<()> {
        let (n, vocab) = (tokens.len(), self.sz.vocab);
        ensure!(n > 0, "GpuModel::{op}: no tokens");
        ensure!(
            n <= self.max_tokens,
            "GpuModel::{op}: {n} tokens exceed max_tokens {}",
            self.max_tokens
        );
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            bail!("GpuModel::{op}: token id {t} is outside the vocabulary of {vocab}");
        }
        Ok(())
    }

    /// The device work shared by [`GpuModel::forward_device`] (chunked, over the packing in
    /// `cu_host`) and [`GpuModel::decode_forward`] (`decode`: the step kernel and the per-layer
    /// caches), over the `n` tokens already uploaded.
    fn forward_tokens(
        &mut self,
        gpu: &Gpu,
        n: usize,
        mut decode: Option<(&DecodeStep, &mut [LayerCache])>,
    ) -> Result<()> {
        let sz = self.sz;
        let Sz { d, vocab, eps, .. } = sz;
        let cu_seqlens: &[usize] = if decode.is_some() { &[] } else { &self.cu_host };
        let p16 = &self.params_bf16;
        let pv = |r: &Range<usize>| p16.slice(r.clone());
        let blas = &self.blas;
        let ctx = BlockCtx {
            gpu,
            prof: self.profile.as_ref(),
            blas,
            p16,
            p32: &self.params,
            sz,
            n,
            cu: self.cu_dev.slice(..cu_seqlens.len()),
            cu_seqlens,
        };

        ops::embedding_fwd(
            gpu,
            &pv(&self.embeddings),
            &self.tokens.slice(..n),
            &mut self.tmp_d.slice_mut(..n * d),
            d,
        )?;
        ops::cast_bf16_to_f32(
            gpu,
            &self.tmp_d.slice(..n * d),
            &mut self.xs[0].slice_mut(..n * d),
        )?;
        mark(ctx.prof, gpu, "fwd embedding")?;
        for (l, lr) in self.layers.iter().enumerate() {
            let (before, after) = self.xs.split_at_mut(l + 1);
            let x_in = before[l].slice(..n * d);
            let mut x_out = after[0].slice_mut(..n * d);
            let a = &mut self.acts[if self.recompute { 0 } else { l }];
            let core = match &mut decode {
                Some((step, caches)) => Core::Decode(step, &mut caches[l]),
                None => Core::Chunk(&mut self.ws),
            };
            block_forward(
                &ctx,
                lr,
                &x_in,
                &mut x_out,
                a,
                core,
                &mut self.tmp_d,
                &mut self.tmp_silu,
            )?;
        }
        let x_final = self.xs[self.layers.len()].slice(..n * d);
        rmsnorm_fwd_f32x(
            gpu,
            &x_final,
            &pv(&self.norm),
            &mut self.normed_f.slice_mut(..n * d),
            &mut self.rstd_f.slice_mut(..n),
            d,
            eps,
        )?;
        lin_fwd(
            blas,
            &self.normed_f.slice(..n * d),
            &pv(&self.head),
            &mut self.logits.slice_mut(..n * vocab),
            n,
            d,
            vocab,
        )?;
        mark(ctx.prof, gpu, "fwd final norm, lm head")?;
        self.n = n;
        Ok(())
    }

    /// Per-token cross-entropy of the last forward against `targets` (0 where IGNORE), with no
    /// backward (evaluation). Ends the pending forward.
    pub fn position_losses(&mut self, gpu: &Gpu, targets: &[u32]) -> Result<Vec<f32>> {
        let n = self.cross_entropy(gpu, targets, "position_losses")?;
        super::buffer::download_f32(gpu, &self.losses.slice(..n))
    }

    /// Checks `targets` against the pending forward, ends it, uploads them and computes the
    /// per-token losses, their lse and the mean in `stats`. Returns the token count.
    fn cross_entropy(&mut self, gpu: &Gpu, targets: &[u32], op: &str) -> Result<usize> {
        let n = self.n;
        ensure!(
            n > 0,
            "GpuModel::{op}: no forward pending (run forward first; each forward allows one \
             backward)"
        );
        self.upload_targets(gpu, targets, n)?;
        self.n = 0;
        self.ce_forward(gpu, n)?;
        Ok(n)
    }

    /// Per-token losses, lse and `stats` of the pending forward against the uploaded targets.
    fn ce_forward(&mut self, gpu: &Gpu, n: usize) -> Result<()> {
        let vocab = self.sz.vocab;
        ops::cross_entropy_fwd(
            gpu,
            &self.logits.slice(..n * vocab),
            &self.targets.slice(..n),
            &mut self.lse.slice_mut(..n),
            &mut self.losses.slice_mut(..n),
            &mut self.stats,
            vocab,
        )
    }

    /// Mean cross-entropy of the last forward against `targets` (IGNORE skipped), and its
    /// backward through the whole model, accumulating (+=) into [`GpuModel::grads`]. Returns the
    /// loss (the one readback of the step). The logits buffer is overwritten by its gradient.
    pub fn loss_and_backward(&mut self, gpu: &Gpu, targets: &[u32]) -> Result<f64> {
        self.loss_and_backward_scaled(gpu, targets, 1.0)
    }

    /// As [`GpuModel::loss_and_backward`], for `scale`·(mean loss) (e.g. 1/accumulation steps).
    /// [`GpuModel::upload_targets`], [`GpuModel::loss_and_backward_device`], then
    /// [`GpuModel::read_loss`].
    pub fn loss_and_backward_scaled(
        &mut self,
        gpu: &Gpu,
        targets: &[u32],
        scale: f32,
    ) -> Result<f64> {
        let n = self.n;
        ensure!(
            n > 0,
            "GpuModel::loss_and_backward: no forward pending (run forward first; each forward \
             allows one backward)"
        );
        self.upload_targets(gpu, targets, n)?;
        self.loss_and_backward_device(gpu, scale)?;
        self.read_loss(gpu)
    }

    /// Validates `targets` (one per token of a forward of `n` tokens) and uploads them.
    pub fn upload_targets(&mut self, gpu: &Gpu, targets: &[u32], n: usize) -> Result<()> {
        ensure!(
            targets.len() == n,
            "GpuModel::loss_and_backward: {} targets for {n} tokens",
            targets.len()
        );
        let vocab = self.sz.vocab;
        if let Some(&t) = targets
            .iter()
            .find(|&&t| t != crate::data::IGNORE && t as usize >= vocab)
        {
            bail!("GpuModel::loss_and_backward: target {t} is outside the vocabulary of {vocab}");
        }
        gpu.stream
            .memcpy_htod(targets, &mut self.targets.slice_mut(..n))
            .context("uploading the targets")
    }

    /// The mean loss of the last [`GpuModel::loss_and_backward_device`] (or replay of it), read
    /// back from the device (one synchronisation).
    pub fn read_loss(&self, gpu: &Gpu) -> Result<f64> {
        Ok(super::buffer::download(gpu, &self.stats)?[0])
    }

    /// The device half of [`GpuModel::loss_and_backward_scaled`] for the pending forward,
    /// against the targets [`GpuModel::upload_targets`] left on the device: the loss stays in the
    /// device's statistics ([`GpuModel::read_loss`]); kernels and matmuls only, so a forward and
    /// this can be captured in one CUDA graph.
    pub fn loss_and_backward_device(&mut self, gpu: &Gpu, scale: f32) -> Result<()> {
        let n = self.n;
        ensure!(
            n > 0,
            "GpuModel::loss_and_backward: no forward pending (run forward first; each forward \
             allows one backward)"
        );
        let sz = self.sz;
        let Sz {
            d,
            inter,
            vocab,
            h,
            dk,
            kd,
            vd,
            w,
            ..
        } = sz;
        self.n = 0;
        self.ce_forward(gpu, n)?;
        let tg = self.targets.slice(..n);
        ops::cross_entropy_bwd_inplace(
            gpu,
            &mut self.logits.slice_mut(..n * vocab),
            &tg,
            &self.lse.slice(..n),
            &self.stats,
            vocab,
            scale,
        )?;
        mark(self.profile.as_ref(), gpu, "cross-entropy")?;
        let p16 = &self.params_bf16;
        let p32 = &self.params;
        let pv = |r: &Range<usize>| p16.slice(r.clone());
        let grads = &mut self.grads;
        let blas = &self.blas;
        let b = &mut self.bwd;
        let nd = n * d;
        let cu = self.cu_dev.slice(..self.cu_host.len());
        let cu_seqlens = &self.cu_host[..];
        let nseq = cu_seqlens.len() - 1;

        // LM head and final norm.
        let dl = self.logits.slice(..n * vocab);
        lin_dx::<f32>(
            blas,
            &dl,
            &pv(&self.head),
            &mut b.dacc.slice_mut(..nd),
            n,
            d,
            vocab,
            0.0,
        )?;
        lin_dw(
            blas,
            &dl,
            &self.normed_f.slice(..nd),
            &mut grads.slice_mut(self.head.clone()),
            n,
            d,
            vocab,
        )?;
        rmsnorm_bwd_f32(
            gpu,
            &self.xs[self.layers.len()].slice(..nd),
            &pv(&self.norm),
            &self.rstd_f.slice(..n),
            &b.dacc.slice(..nd),
            &mut b.dres.slice_mut(..nd),
            false,
            &mut grads.slice_mut(self.norm.clone()),
            &mut b.scratch,
            d,
        )?;
        ops::cast_f32_to_bf16(gpu, &b.dres.slice(..nd), &mut b.dres_bf.slice_mut(..nd))?;
        mark(self.profile.as_ref(), gpu, "bwd lm head, final norm")?;

        let ctx = BlockCtx {
            gpu,
            prof: self.profile.as_ref(),
            blas,
            p16,
            p32,
            sz,
            n,
            cu: self.cu_dev.slice(..cu_seqlens.len()),
            cu_seqlens,
        };
        for (l, lr) in self.layers.iter().enumerate().rev() {
            if self.recompute {
                let (before, after) = self.xs.split_at_mut(l + 1);
                block_forward(
                    &ctx,
                    lr,
                    &before[l].slice(..nd),
                    &mut after[0].slice_mut(..nd),
                    &mut self.acts[0],
                    Core::Chunk(&mut self.ws),
                    &mut self.tmp_d,
                    &mut self.tmp_silu,
                )?;
            }
            let a = &self.acts[if self.recompute { 0 } else { l }];
            let ni = n * inter;
            // MLP: x_out = x_mid + down(silu(gate) ⊙ up).
            let dy = b.dres_bf.slice(..nd);
            lin_dx::<bf16>(
                blas,
                &dy,
                &pv(&lr.down_proj),
                &mut b.dact.slice_mut(..ni),
                n,
                inter,
                d,
                0.0,
            )?;
            lin_dw(
                blas,
                &dy,
                &a.act.slice(..ni),
                &mut grads.slice_mut(lr.down_proj.clone()),
                n,
                inter,
                d,
            )?;
            mark(ctx.prof, gpu, "bwd mlp down")?;
            ops::swiglu_bwd(
                gpu,
                &a.mg.slice(..ni),
                &a.mu.slice(..ni),
                &b.dact.slice(..ni),
                &mut b.dmg.slice_mut(..ni),
                &mut b.dmu.slice_mut(..ni),
            )?;
            mark(ctx.prof, gpu, "bwd swiglu")?;
            let h2 = a.h2.slice(..nd);
            let (dmg, dmu) = (b.dmg.slice(..ni), b.dmu.slice(..ni));
            lin_dx::<f32>(
                blas,
                &dmg,
                &pv(&lr.gate_proj),
                &mut b.dacc.slice_mut(..nd),
                n,
                d,
                inter,
                0.0,
            )?;
            lin_dx::<f32>(
                blas,
                &dmu,
                &pv(&lr.up_proj),
                &mut b.dacc.slice_mut(..nd),
                n,
                d,
                inter,
                1.0,
            )?;
            lin_dw(
                blas,
                &dmg,
                &h2,
                &mut grads.slice_mut(lr.gate_proj.clone()),
                n,
                d,
                inter,
            )?;
            lin_dw(
                blas,
                &dmu,
                &h2,
                &mut grads.slice_mut(lr.up_proj.clone()),
                n,
                d,
                inter,
            )?;
            mark(ctx.prof, gpu, "bwd mlp gate/up")?;
            rmsnorm_bwd_f32(
                gpu,
                &a.x_mid.slice(..nd),
                &pv(&lr.mlp_norm),
                &a.rstd2.slice(..n),
                &b.dacc.slice(..nd),
                &mut b.dres.slice_mut(..nd),
                true,
                &mut grads.slice_mut(lr.mlp_norm.clone()),
                &mut b.scratch,
                d,
            )?;
            ops::cast_f32_to_bf16(gpu, &b.dres.slice(..nd), &mut b.dres_bf.slice_mut(..nd))?;
            mark(ctx.prof, gpu, "bwd rmsnorm")?;

            // Mixer: x_mid = x_in + o_proj(gated_norm(delta_rule(...))).
            let dy = b.dres_bf.slice(..nd);
            let nv = n * vd;
            lin_dx::<bf16>(
                blas,
                &dy,
                &pv(&lr.o_proj),
                &mut b.d_normed.slice_mut(..nv),
                n,
                vd,
                d,
                0.0,
            )?;
            lin_dw(
                blas,
                &dy,
                &a.normed.slice(..nv),
                &mut grads.slice_mut(lr.o_proj.clone()),
                n,
                vd,
                d,
            )?;
            mark(ctx.prof, gpu, "bwd o_proj")?;
            ops::gated_rmsnorm_bwd(
                gpu,
                &a.o.slice(..nv),
                &a.gate.slice(..nv),
                &pv(&lr.o_norm),
                &a.o_rstd.slice(..n * h),
                &b.d_normed.slice(..nv),
                &mut b.d_o.slice_mut(..nv),
                &mut b.d_gate.slice_mut(..nv),
                &mut grads.slice_mut(lr.o_norm.clone()),
                &mut b.scratch,
            )?;
            mark(ctx.prof, gpu, "bwd gated rmsnorm")?;
            let inp = ChunkInputs {
                q: a.q.slice(..n * kd),
                k: a.k.slice(..n * kd),
                v: a.v.slice(..nv),
                g: a.g.slice(..n * h),
                beta: a.beta.slice(..n * h),
                scale: 1.0 / (dk as f32).sqrt(),
                initial_state: None,
                cu_seqlens,
            };
            let rule = Dims {
                heads: h,
                dk,
                dv: sz.dv,
            };
            {
                let mut rg = b.rule.views(rule, n, nseq);
                chunk_backward(gpu, &mut self.ws, &inp, &b.d_o.slice(..nv), None, &mut rg)?;
            }
            mark(ctx.prof, gpu, "bwd delta rule")?;
            {
                let (mut lo, mut hi) = grads.split_at_mut(lr.dt_bias.start);
                let mut d_a_log = lo.slice_mut(lr.a_log.clone());
                let mut d_dt = hi.slice_mut(..lr.dt_bias.len());
                ops::gates_bwd(
                    gpu,
                    &a.a.slice(..n * h),
                    &a.beta.slice(..n * h),
                    &a.g.slice(..n * h),
                    &p32.slice(lr.a_log.clone()),
                    &p32.slice(lr.dt_bias.clone()),
                    &b.rule.dg.slice(..n * h),
                    &b.rule.dbeta.slice(..n * h),
                    &mut b.da.slice_mut(..n * h),
                    &mut b.db.slice_mut(..n * h),
                    &mut d_a_log,
                    &mut d_dt,
                    &mut b.scratch,
                )?;
            }
            if let Some(bias) = &lr.b_bias {
                colsum_acc(
                    gpu,
                    &b.db.slice(..n * h),
                    &mut grads.slice_mut(bias.clone()),
                )?;
            }
            mark(ctx.prof, gpu, "bwd gates")?;
            // dq, dk through L2 norm and SiLU; dv through SiLU; all from the fp32 delta-rule
            // gradients (one bf16 rounding, after the cancelling l2norm projection).
            l2norm_silu_bwd(
                gpu,
                &a.q_conv.slice(..n * kd),
                &b.rule.dq.slice(..n * kd),
                &mut b.dq_conv.slice_mut(..n * kd),
                dk,
            )?;
            l2norm_silu_bwd(
                gpu,
                &a.k_conv.slice(..n * kd),
                &b.rule.dk.slice(..n * kd),
                &mut b.dk_conv.slice_mut(..n * kd),
                dk,
            )?;
            silu_bwd_f32dy(
                gpu,
                &a.v_conv.slice(..nv),
                &b.rule.dv.slice(..nv),
                &mut b.dv_conv.slice_mut(..nv),
            )?;
            mark(ctx.prof, gpu, "bwd silu, l2norm")?;
            for (pre, wr, dconv, dpre, ch) in [
                (&a.q_pre, &lr.q_conv, &b.dq_conv, &mut b.dq_pre, kd),
                (&a.k_pre, &lr.k_conv, &b.dk_conv, &mut b.dk_pre, kd),
                (&a.v_pre, &lr.v_conv, &b.dv_conv, &mut b.dv_pre, vd),
            ] {
                ops::conv_bwd(
                    gpu,
                    &pre.slice(..n * ch),
                    &pv(wr),
                    &dconv.slice(..n * ch),
                    &mut dpre.slice_mut(..n * ch),
                    &mut grads.slice_mut(wr.clone()),
                    &mut b.scratch,
                    &cu,
                    ch,
                    w,
                )?;
            }
            mark(ctx.prof, gpu, "bwd short conv")?;
            // Projections: dh1 = Σ dproj · W (fp32), dW += dprojᵀ · h1.
            let h1 = a.h1.slice(..nd);
            let mut first = true;
            for (wr, dp, out) in [
                (&lr.q_proj, &b.dq_pre, kd),
                (&lr.k_proj, &b.dk_pre, kd),
                (&lr.v_proj, &b.dv_pre, vd),
                (&lr.a_proj, &b.da, h),
                (&lr.b_proj, &b.db, h),
                (&lr.g_proj, &b.d_gate, vd),
            ] {
                let dpv = dp.slice(..n * out);
                let beta = if first { 0.0 } else { 1.0 };
                first = false;
                lin_dx::<f32>(
                    blas,
                    &dpv,
                    &pv(wr),
                    &mut b.dacc.slice_mut(..nd),
                    n,
                    d,
                    out,
                    beta,
                )?;
                lin_dw(blas, &dpv, &h1, &mut grads.slice_mut(wr.clone()), n, d, out)?;
            }
            mark(ctx.prof, gpu, "bwd mixer projections")?;
            rmsnorm_bwd_f32(
                gpu,
                &self.xs[l].slice(..nd),
                &pv(&lr.attn_norm),
                &a.rstd1.slice(..n),
                &b.dacc.slice(..nd),
                &mut b.dres.slice_mut(..nd),
                true,
                &mut grads.slice_mut(lr.attn_norm.clone()),
                &mut b.scratch,
                d,
            )?;
            ops::cast_f32_to_bf16(gpu, &b.dres.slice(..nd), &mut b.dres_bf.slice_mut(..nd))?;
            mark(ctx.prof, gpu, "bwd rmsnorm")?;
        }
        ops::embedding_bwd(
            gpu,
            &self.tokens.slice(..n),
            &b.dres_bf.slice(..nd),
            &mut grads.slice_mut(self.embeddings.clone()),
            d,
        )?;
        mark(ctx.prof, gpu, "bwd embedding")?;
        Ok(())
    }
}
