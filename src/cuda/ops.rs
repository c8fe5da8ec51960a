//! The dense CUDA ops of the model, the counterparts of `model::nn`, `ops::conv` and
//! `train::adamw`: casts, SiLU/SwiGLU, the embedding, RMSNorm and the gated per-head RMSNorm,
//! the per-head L2 norm, the GDN gates, the short convolution, cross-entropy, AdamW and the global
//! gradient norm.
//!
//! Every op takes device buffers (a `CudaSlice`, or a `CudaView`/`CudaViewMut` of a larger arena),
//! checks their lengths and names the one at fault, and queues its kernels on `gpu.stream`: no
//! allocation, no host synchronisation and no branching on device values, so a step made of these
//! ops can be captured in a CUDA graph. Parameter gradients are accumulated (+=) in fp32 through
//! fixed-size per-block partial sums and a second pass that adds them in a fixed order, so results
//! are bit-for-bit reproducible; those ops take a caller-owned `scratch` buffer sized by the
//! `*_scratch_len` functions.
//!
//! Storage: activations and weights bf16, gates (g, β), norms' saved statistics, parameter
//! gradients, master weights and moments fp32; all arithmetic in fp32 (fp64 for the loss mean and
//! the gradient norm).

use super::fp8::{CodesOut, NO_CODES};
use super::{Gpu, KernelSource};
use anyhow::{anyhow, bail, ensure, Result};
use cudarc::driver::{
    sys::CUdeviceptr, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use half::bf16;

macro_rules! kernel_source {
    ($name:literal, $($file:literal),+) => {
        KernelSource {
            name: $name,
            code: concat!(
                include_str!("kernels/common.cuh"),
                $(include_str!(concat!("kernels/", $file))),+
            ),
        }
    };
}

pub static ELEMENTWISE: KernelSource = kernel_source!("ops_elementwise", "elementwise.cu");
pub static NORMS: KernelSource = kernel_source!("ops_norms", "norms.cu");
pub static GATES: KernelSource = kernel_source!("ops_gates", "gates.cu");
// The backward can write its input gradient as FP8 codes.
pub static CONV: KernelSource = kernel_source!("ops_conv", "fp8_codes.cuh", "conv.cu");
pub static CROSS_ENTROPY: KernelSource = kernel_source!("ops_cross_entropy", "cross_entropy.cu");

/// The `.cu` modules of this file (for `cuda::all_sources`).
pub fn sources() -> Vec<&'static KernelSource> {
    vec![&ELEMENTWISE, &NORMS, &GATES, &CONV, &CROSS_ENTROPY]
}

/// Compiles and loads every module now, so that the first step (or a graph capture) does not.
pub fn preload(gpu: &Gpu) -> Result<()> {
    for s in sources() {
        gpu.function(s, "reduce_partials")?;
    }
    Ok(())
}

/// Blocks of per-block partial sums in the parameter-gradient reductions (norm weights in the
/// general path and in `model::rmsnorm_bwd_f32`, gates). Fixed, so that the summation order never
/// depends on the device.
pub const PARTS: usize = 256;
/// Parts of the rows in the fast norm backward kernels: enough blocks of 8 warps to fill an H200
/// several times over.
pub const NORM_PARTS: usize = 1024;
/// Parts of the tokens in the convolution backward (one thread per 4 channels and part).
pub const CONV_PARTS: usize = 512;
/// Partial sums of the global gradient norm.
pub const GRAD_NORM_PARTS: usize = 1024;
/// Widest row the norm backward kernels take (their per-block accumulator lives in 48 KiB of
/// shared memory).
pub const MAX_NORM_WIDTH: usize = 12_000;
/// Widest causal convolution.
pub const MAX_CONV_WIDTH: usize = 4;

/// Scratch (f32 elements) for [`rmsnorm_bwd`] and [`gated_rmsnorm_bwd`] over rows of width `d`.
pub fn norm_bwd_scratch_len(d: usize) -> usize {
    NORM_PARTS.max(PARTS) * d
}
/// Scratch (f32 elements) for [`gates_bwd`] with `heads` heads.
pub fn gates_bwd_scratch_len(heads: usize) -> usize {
    PARTS * 2 * heads
}
/// Scratch (f32 elements) for [`conv_bwd`].
pub fn conv_bwd_scratch_len(channels: usize, width: usize) -> usize {
    CONV_PARTS.max(PARTS) * channels * width
}
/// Scratch (f64 elements) for [`grad_norm`].
pub fn grad_norm_scratch_len() -> usize {
    GRAD_NORM_PARTS
}

use super::expect_len;

fn expect_at_least(op: &str, name: &str, got: usize, want: usize, how: &str) -> Result<()> {
    ensure!(
        got >= want,
        "{op}: `{name}` has {got} elements, needs at least {want} ({how})"
    );
    Ok(())
}

/// Rows of width `d` in a buffer of `len` elements.
fn rows_of(op: &str, name: &str, len: usize, d: usize) -> Result<usize> {
    ensure!(d > 0, "{op}: the row width must be positive");
    ensure!(
        len.is_multiple_of(d),
        "{op}: `{name}` has {len} elements, not a whole number of rows of width {d}"
    );
    Ok(len / d)
}

fn to_i32(op: &str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("{op}: {what} = {v} exceeds the kernel's 32-bit range"))
}

fn grid_1d(n: usize, block: u32, max_blocks: usize) -> LaunchConfig {
    let blocks = n.div_ceil(block as usize).clamp(1, max_blocks) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn elementwise_cfg(n: usize) -> LaunchConfig {
    grid_1d(n, 256, 1 << 16)
}

/// The 8-wide element-wise kernels (one thread per 8 elements on their vector path; the scalar
/// fallback grid-strides over the same grid).
fn vec8_cfg(n: usize) -> LaunchConfig {
    grid_1d(n.div_ceil(8), 256, 1 << 16)
}

/// Threads per block for a row of width `d`: a multiple of 32, at most 256.
fn row_threads(d: usize) -> u32 {
    (d.clamp(1, 256).div_ceil(32) * 32) as u32
}

fn row_cfg(rows: usize, d: usize, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (row_threads(d), 1, 1),
        shared_mem_bytes: smem,
    }
}

/// out[j] += Σ_p partial[p·stride + j] over the `parts` parts in order, j < c (pointers already
/// offset).
fn reduce_partials(
    gpu: &Gpu,
    src: &'static KernelSource,
    parts: usize,
    partial: u64,
    stride: usize,
    c: usize,
    out: u64,
) -> Result<()> {
    let np = parts as i32;
    let stride = stride as i32;
    let c_ = c as i32;
    let cfg = LaunchConfig {
        grid_dim: (c.div_ceil(32).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(gpu, *src, "reduce_partials_wide", cfg; partial, np, stride, c_, out);
    Ok(())
}

/// 16-byte chunks per lane the fast norm kernels go up to (norms.cu instantiates these).
const NORM_FWD_MAX_CHUNKS: usize = 8;
const RMSNORM_BWD_MAX_CHUNKS: usize = 4;
const GATED_BWD_MAX_CHUNKS: usize = 2;

/// Lanes per row and 16-byte chunks per lane of the fast norm kernels (`<name>_<lanes>_<chunks>`
/// in norms.cu) for rows of width `d`, or `None` where only the general kernels apply.
fn norm_geometry(d: usize, max_chunks: usize) -> Option<(usize, usize)> {
    match d {
        64 => Some((8, 1)),
        128 => Some((16, 1)),
        _ if d.is_multiple_of(256) && (1..=max_chunks).contains(&(d / 256)) => Some((32, d / 256)),
        _ => None,
    }
}

/// Whether every device address is 16-byte aligned (the vector kernels' requirement; a view
/// into an arena can start anywhere).
fn aligned16(ptrs: &[u64]) -> bool {
    ptrs.iter().all(|p| p % 16 == 0)
}

/// One row per group of `lanes` lanes, 256 threads per block.
fn norm_fast_cfg(rows: usize, lanes: usize) -> LaunchConfig {
    let rows_per_block = 8 * (32 / lanes);
    LaunchConfig {
        grid_dim: (rows.div_ceil(rows_per_block) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn norm_parts_cfg() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (NORM_PARTS as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Casts and element-wise activations

/// y = bf16(x).
pub fn cast_f32_to_bf16(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    y: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    let op = "cast_f32_to_bf16";
    expect_len(op, "y", y.len(), x.len(), "same as x")?;
    let n = x.len() as i64;
    if n == 0 {
        return Ok(());
    }
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (yp, _y) = y.device_ptr_mut(s);
    launch!(gpu, ELEMENTWISE, "cast_f32_bf16", vec8_cfg(n as usize); xp, yp, n);
    Ok(())
}

/// y = f32(x) (exact).
pub fn cast_bf16_to_f32(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let op = "cast_bf16_to_f32";
    expect_len(op, "y", y.len(), x.len(), "same as x")?;
    let n = x.len() as i64;
    if n == 0 {
        return Ok(());
    }
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (yp, _y) = y.device_ptr_mut(s);
    launch!(gpu, ELEMENTWISE, "cast_bf16_f32", vec8_cfg(n as usize); xp, yp, n);
    Ok(())
}

/// y = silu(x) (`nn::silu_fwd`).
pub fn silu_fwd(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    expect_len("silu_fwd", "y", y.len(), x.len(), "same as x")?;
    let n = x.len() as i64;
    if n == 0 {
        return Ok(());
    }
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (yp, _y) = y.device_ptr_mut(s);
    launch!(gpu, ELEMENTWISE, "silu_fwd", vec8_cfg(n as usize); xp, yp, n);
    Ok(())
}

/// dx = dy · silu'(x) (`nn::silu_bwd`).
pub fn silu_bwd(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    dy: &impl DevicePtr<bf16>,
    dx: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    let op = "silu_bwd";
    expect_len(op, "dy", dy.len(), x.len(), "same as x")?;
    expect_len(op, "dx", dx.len(), x.len(), "same as x")?;
    let n = x.len() as i64;
    if n == 0 {
        return Ok(());
    }
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (dyp, _dy) = dy.device_ptr(s);
    let (dxp, _dx) = dx.device_ptr_mut(s);
    launch!(gpu, ELEMENTWISE, "silu_bwd", vec8_cfg(n as usize); xp, dyp, dxp, n);
    Ok(())
}

/// y [rows, w] = silu(gate) ⊙ up (the MLP's SwiGLU), from `gu` [rows, 2w]: the gate and up
/// projections side by side (one matmul), gate in columns [0, w).
pub fn swiglu_fwd(
    gpu: &Gpu,
    gu: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    w: usize,
) -> Result<()> {
    let op = "swiglu_fwd";
    let rows = rows_of(op, "gu", gu.len(), 2 * w)?;
    expect_len(op, "y", y.len(), rows * w, "rows × w")?;
    if rows == 0 {
        return Ok(());
    }
    let (rows_, w_) = (rows as i64, to_i32(op, "w", w)?);
    let s = &*gpu.stream;
    let (gp, _g) = gu.device_ptr(s);
    let (yp, _y) = y.device_ptr_mut(s);
    launch!(gpu, ELEMENTWISE, "swiglu_fwd", vec8_cfg(rows * w); gp, yp, rows_, w_);
    Ok(())
}

/// The backward of [`swiglu_fwd`] in place: `gu` (gate ‖ up, [rows, 2w]) becomes d gate ‖ d up,
/// d gate = dy · up · silu'(gate), d up = dy · silu(gate), with dy [rows, w] (the layout one
/// matmul then takes back to the MLP's input).
pub fn swiglu_bwd(
    gpu: &Gpu,
    gu: &mut impl DevicePtrMut<bf16>,
    dy: &impl DevicePtr<bf16>,
    w: usize,
) -> Result<()> {
    let op = "swiglu_bwd";
    let rows = rows_of(op, "gu", gu.len(), 2 * w)?;
    expect_len(op, "dy", dy.len(), rows * w, "rows × w")?;
    if rows == 0 {
        return Ok(());
    }
    let (rows_, w_) = (rows as i64, to_i32(op, "w", w)?);
    let s = &*gpu.stream;
    let (gp, _g) = gu.device_ptr_mut(s);
    let (dyp, _dy) = dy.device_ptr(s);
    launch!(gpu, ELEMENTWISE, "swiglu_bwd", vec8_cfg(rows * w); gp, dyp, rows_, w_);
    Ok(())
}

/// GVA's dq/dk (`mixer::sum_head_groups`): dx [n, H·dk] = the sum of dy's g copies
/// [n, H·g·dk] of each q/k head, one per value head that reads it (f32 sums in copy order,
/// rounded once).
pub fn sum_head_groups(
    gpu: &Gpu,
    dy: &impl DevicePtr<bf16>,
    dx: &mut impl DevicePtrMut<bf16>,
    dk: usize,
    g: usize,
) -> Result<()> {
    let op = "sum_head_groups";
    expect_len(op, "dy", dy.len(), dx.len() * g, "dx.len() × g")?;
    ensure!(
        g >= 1 && dk >= 1,
        "{op}: group {g} and head dim {dk} must be positive"
    );
    ensure!(
        dx.len().is_multiple_of(dk),
        "{op}: {} elements are not whole heads of {dk}",
        dx.len()
    );
    let n = dx.len();
    if n == 0 {
        return Ok(());
    }
    let (n_, dk_, g_) = (n as i64, to_i32(op, "dk", dk)?, to_i32(op, "g", g)?);
    let s = &*gpu.stream;
    let (sp, _s) = dy.device_ptr(s);
    let (dp, _d) = dx.device_ptr_mut(s);
    let cfg = if dk.is_multiple_of(8) {
        vec8_cfg(n)
    } else {
        elementwise_cfg(n)
    };
    launch!(gpu, ELEMENTWISE, "sum_head_groups", cfg; sp, dp, n_, dk_, g_);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Embedding

/// out[i] = table[tokens[i]] with table [vocab, d] (`nn::embedding_fwd`). A token ≥ vocab gives
/// a NaN row (the loss then turns NaN) rather than an out-of-bounds read.
pub fn embedding_fwd(
    gpu: &Gpu,
    table: &impl DevicePtr<bf16>,
    tokens: &impl DevicePtr<u32>,
    out: &mut impl DevicePtrMut<bf16>,
    d: usize,
) -> Result<()> {
    let op = "embedding_fwd";
    let vocab = rows_of(op, "table", table.len(), d)?;
    let n = tokens.len();
    expect_len(op, "out", out.len(), n * d, "tokens × d")?;
    if n == 0 {
        return Ok(());
    }
    let n_tok = n as i64;
    let d_ = to_i32(op, "d", d)?;
    let vocab_ = u32::try_from(vocab).map_err(|_| anyhow!("{op}: vocabulary too large"))?;
    let s = &*gpu.stream;
    let (tp, _t) = table.device_ptr(s);
    let (kp, _k) = tokens.device_ptr(s);
    let (op_, _o) = out.device_ptr_mut(s);
    launch!(gpu, ELEMENTWISE, "embedding_fwd", elementwise_cfg(n * d); tp, kp, op_, n_tok, d_, vocab_);
    Ok(())
}

/// dtable[tokens[i]] += dy[i] in token order (`nn::embedding_bwd`), deterministic; tokens ≥ vocab
/// are skipped.
pub fn embedding_bwd(
    gpu: &Gpu,
    tokens: &impl DevicePtr<u32>,
    dy: &impl DevicePtr<bf16>,
    dtable: &mut impl DevicePtrMut<f32>,
    d: usize,
) -> Result<()> {
    let op = "embedding_bwd";
    let vocab = rows_of(op, "dtable", dtable.len(), d)?;
    let n = tokens.len();
    expect_len(op, "dy", dy.len(), n * d, "tokens × d")?;
    if n == 0 {
        return Ok(());
    }
    let n_tok = to_i32(op, "tokens", n)?;
    let d_ = to_i32(op, "d", d)?;
    let vocab_ = u32::try_from(vocab).map_err(|_| anyhow!("{op}: vocabulary too large"))?;
    let cfg = LaunchConfig {
        grid_dim: (d.div_ceil(128) as u32, 64, 1), // 64 = EMB_PARTS in elementwise.cu
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let s = &*gpu.stream;
    let (kp, _k) = tokens.device_ptr(s);
    let (dyp, _dy) = dy.device_ptr(s);
    let (dtp, _dt) = dtable.device_ptr_mut(s);
    launch!(gpu, ELEMENTWISE, "embedding_bwd", cfg; kp, dyp, dtp, n_tok, d_, vocab_);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Norms

/// RMSNorm over rows of width `d` (`nn::rmsnorm_fwd`): y = x·rstd·w, rstd [rows] saved in fp32.
pub fn rmsnorm_fwd(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    w: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    rstd: &mut impl DevicePtrMut<f32>,
    d: usize,
    eps: f32,
) -> Result<()> {
    let op = "rmsnorm_fwd";
    let rows = rows_of(op, "x", x.len(), d)?;
    expect_len(op, "w", w.len(), d, "d")?;
    expect_len(op, "y", y.len(), x.len(), "same as x")?;
    expect_len(op, "rstd", rstd.len(), rows, "rows")?;
    if rows == 0 {
        return Ok(());
    }
    let rows_ = to_i32(op, "rows", rows)?;
    let d_ = to_i32(op, "d", d)?;
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (wp, _w) = w.device_ptr(s);
    let (yp, _y) = y.device_ptr_mut(s);
    let (rp, _r) = rstd.device_ptr_mut(s);
    match norm_geometry(d, NORM_FWD_MAX_CHUNKS).filter(|_| aligned16(&[xp, wp, yp])) {
        Some((l, n)) => {
            launch_named!(gpu, NORMS, format!("rmsnorm_fwd_{l}_{n}"), norm_fast_cfg(rows, l);
            xp, wp, yp, rp, rows_, eps)
        }
        None => {
            launch!(gpu, NORMS, "rmsnorm_fwd", row_cfg(rows, d, 0); xp, wp, yp, rp, rows_, d_, eps)
        }
    }
    Ok(())
}

fn norm_bwd_checks(op: &str, d: usize, scratch: usize) -> Result<u32> {
    ensure!(
        d <= MAX_NORM_WIDTH,
        "{op}: rows of width {d} exceed the kernel's limit of {MAX_NORM_WIDTH}"
    );
    expect_at_least(
        op,
        "scratch",
        scratch,
        norm_bwd_scratch_len(d),
        "norm_bwd_scratch_len(d)",
    )?;
    Ok((d * 4) as u32)
}

/// RMSNorm backward (`nn::rmsnorm_bwd`): writes dx, accumulates dw += Σ_rows dy·x·rstd.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    w: &impl DevicePtr<bf16>,
    rstd: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<bf16>,
    dx: &mut impl DevicePtrMut<bf16>,
    dw: &mut impl DevicePtrMut<f32>,
    scratch: &mut impl DevicePtrMut<f32>,
    d: usize,
) -> Result<()> {
    let op = "rmsnorm_bwd";
    let rows = rows_of(op, "x", x.len(), d)?;
    expect_len(op, "w", w.len(), d, "d")?;
    expect_len(op, "rstd", rstd.len(), rows, "rows")?;
    expect_len(op, "dy", dy.len(), x.len(), "same as x")?;
    expect_len(op, "dx", dx.len(), x.len(), "same as x")?;
    expect_len(op, "dw", dw.len(), d, "d")?;
    let smem = norm_bwd_checks(op, d, scratch.len())?;
    let rows_ = to_i32(op, "rows", rows)?;
    let d_ = to_i32(op, "d", d)?;
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (wp, _w) = w.device_ptr(s);
    let (rp, _r) = rstd.device_ptr(s);
    let (dyp, _dy) = dy.device_ptr(s);
    let (dxp, _dx) = dx.device_ptr_mut(s);
    let (dwp, _dw) = dw.device_ptr_mut(s);
    let (sp, _s) = scratch.device_ptr_mut(s);
    let parts =
        match norm_geometry(d, RMSNORM_BWD_MAX_CHUNKS).filter(|_| aligned16(&[xp, wp, dyp, dxp])) {
            Some((l, n)) => {
                launch_named!(gpu, NORMS, format!("rmsnorm_bwd_{l}_{n}"), norm_parts_cfg();
                xp, wp, rp, dyp, dxp, sp, rows_);
                NORM_PARTS
            }
            None => {
                launch!(gpu, NORMS, "rmsnorm_bwd", row_cfg(PARTS, d, smem);
                xp, wp, rp, dyp, dxp, sp, rows_, d_);
                PARTS
            }
        };
    reduce_partials(gpu, &NORMS, parts, sp, d, d, dwp)
}

/// Gated RMSNorm per head (`nn::gated_rmsnorm_fwd`): rows of width V = w.len(), one weight shared
/// by all heads; y = (o·rstd·w) ⊙ silu(gate).
pub fn gated_rmsnorm_fwd(
    gpu: &Gpu,
    o: &impl DevicePtr<bf16>,
    gate: &impl DevicePtr<bf16>,
    w: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    rstd: &mut impl DevicePtrMut<f32>,
    eps: f32,
) -> Result<()> {
    let op = "gated_rmsnorm_fwd";
    let d = w.len();
    let rows = rows_of(op, "o", o.len(), d)?;
    expect_len(op, "gate", gate.len(), o.len(), "same as o")?;
    expect_len(op, "y", y.len(), o.len(), "same as o")?;
    expect_len(op, "rstd", rstd.len(), rows, "rows = o.len() / w.len()")?;
    if rows == 0 {
        return Ok(());
    }
    let rows_ = to_i32(op, "rows", rows)?;
    let d_ = to_i32(op, "d", d)?;
    let s = &*gpu.stream;
    let (op_, _o) = o.device_ptr(s);
    let (gp, _g) = gate.device_ptr(s);
    let (wp, _w) = w.device_ptr(s);
    let (yp, _y) = y.device_ptr_mut(s);
    let (rp, _r) = rstd.device_ptr_mut(s);
    match norm_geometry(d, NORM_FWD_MAX_CHUNKS).filter(|_| aligned16(&[op_, gp, wp, yp])) {
        Some((l, n)) => launch_named!(gpu, NORMS, format!("gated_rmsnorm_fwd_{l}_{n}"),
            norm_fast_cfg(rows, l); op_, gp, wp, yp, rp, rows_, eps),
        None => launch!(gpu, NORMS, "gated_rmsnorm_fwd", row_cfg(rows, d, 0);
            op_, gp, wp, yp, rp, rows_, d_, eps),
    }
    Ok(())
}

/// Gated RMSNorm backward (`nn::gated_rmsnorm_bwd`): writes d o and d gate, accumulates dw.
#[allow(clippy::too_many_arguments)]
pub fn gated_rmsnorm_bwd(
    gpu: &Gpu,
    o: &impl DevicePtr<bf16>,
    gate: &impl DevicePtr<bf16>,
    w: &impl DevicePtr<bf16>,
    rstd: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<bf16>,
    d_o: &mut impl DevicePtrMut<bf16>,
    dgate: &mut impl DevicePtrMut<bf16>,
    dw: &mut impl DevicePtrMut<f32>,
    scratch: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let op = "gated_rmsnorm_bwd";
    let d = w.len();
    let rows = rows_of(op, "o", o.len(), d)?;
    expect_len(op, "gate", gate.len(), o.len(), "same as o")?;
    expect_len(op, "rstd", rstd.len(), rows, "rows = o.len() / w.len()")?;
    expect_len(op, "dy", dy.len(), o.len(), "same as o")?;
    expect_len(op, "d_o", d_o.len(), o.len(), "same as o")?;
    expect_len(op, "dgate", dgate.len(), o.len(), "same as o")?;
    expect_len(op, "dw", dw.len(), d, "same as w")?;
    let smem = norm_bwd_checks(op, d, scratch.len())?;
    let rows_ = to_i32(op, "rows", rows)?;
    let d_ = to_i32(op, "d", d)?;
    let s = &*gpu.stream;
    let (op_, _o) = o.device_ptr(s);
    let (gp, _g) = gate.device_ptr(s);
    let (wp, _w) = w.device_ptr(s);
    let (rp, _r) = rstd.device_ptr(s);
    let (dyp, _dy) = dy.device_ptr(s);
    let (dop, _do) = d_o.device_ptr_mut(s);
    let (dgp, _dg) = dgate.device_ptr_mut(s);
    let (dwp, _dw) = dw.device_ptr_mut(s);
    let (sp, _s) = scratch.device_ptr_mut(s);
    let fast =
        norm_geometry(d, GATED_BWD_MAX_CHUNKS).filter(|_| aligned16(&[op_, gp, wp, dyp, dop, dgp]));
    let parts = match fast {
        Some((l, n)) => {
            launch_named!(gpu, NORMS, format!("gated_rmsnorm_bwd_{l}_{n}"), norm_parts_cfg();
                op_, gp, wp, rp, dyp, dop, dgp, sp, rows_);
            NORM_PARTS
        }
        None => {
            launch!(gpu, NORMS, "gated_rmsnorm_bwd", row_cfg(PARTS, d, smem);
                op_, gp, wp, rp, dyp, dop, dgp, sp, rows_, d_);
            PARTS
        }
    };
    reduce_partials(gpu, &NORMS, parts, sp, d, d, dwp)
}

/// L2 norm of rows of width `d` (`nn::l2norm_fwd`): y = x·r, r = 1/√(Σx² + 1e-6) saved in fp32.
pub fn l2norm_fwd(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    r: &mut impl DevicePtrMut<f32>,
    d: usize,
) -> Result<()> {
    row_l2norm_fwd(gpu, "l2norm_fwd", x, y, r, d)
}

/// y = l2norm(silu(x)) with r per row (`nn::l2norm_fwd` of `nn::silu_fwd`): bit for bit
/// [`silu_fwd`] into a bf16 buffer then [`l2norm_fwd`] of it (the SiLU output is rounded to bf16
/// in the kernel; same geometry choice and sum order), in one pass and without the buffer.
pub fn l2norm_silu_fwd(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    r: &mut impl DevicePtrMut<f32>,
    d: usize,
) -> Result<()> {
    row_l2norm_fwd(gpu, "l2norm_silu_fwd", x, y, r, d)
}

/// The launcher of [`l2norm_fwd`] and [`l2norm_silu_fwd`] (kernels `{op}` and the fast
/// `{op}_{L}_{N}`): the fast geometry when x and y are aligned (the two-step SiLU path checks
/// its scratch buffer and y: the same choice wherever the scratch is aligned as x, as the
/// model's buffers are).
fn row_l2norm_fwd(
    gpu: &Gpu,
    op: &'static str,
    x: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    r: &mut impl DevicePtrMut<f32>,
    d: usize,
) -> Result<()> {
    let rows = rows_of(op, "x", x.len(), d)?;
    expect_len(op, "y", y.len(), x.len(), "same as x")?;
    expect_len(op, "r", r.len(), rows, "rows")?;
    if rows == 0 {
        return Ok(());
    }
    let rows_ = to_i32(op, "rows", rows)?;
    let d_ = to_i32(op, "d", d)?;
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (yp, _y) = y.device_ptr_mut(s);
    let (rp, _r) = r.device_ptr_mut(s);
    match norm_geometry(d, NORM_FWD_MAX_CHUNKS).filter(|_| aligned16(&[xp, yp])) {
        Some((l, n)) => {
            launch_named!(gpu, NORMS, format!("{op}_{l}_{n}"), norm_fast_cfg(rows, l);
            xp, yp, rp, rows_)
        }
        None => launch_named!(gpu, NORMS, op, row_cfg(rows, d, 0); xp, yp, rp, rows_, d_),
    }
    Ok(())
}

/// dx = r·(dy − y (y·dy)) (`nn::l2norm_bwd`).
pub fn l2norm_bwd(
    gpu: &Gpu,
    y: &impl DevicePtr<bf16>,
    r: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<bf16>,
    dx: &mut impl DevicePtrMut<bf16>,
    d: usize,
) -> Result<()> {
    let op = "l2norm_bwd";
    let rows = rows_of(op, "y", y.len(), d)?;
    expect_len(op, "r", r.len(), rows, "rows")?;
    expect_len(op, "dy", dy.len(), y.len(), "same as y")?;
    expect_len(op, "dx", dx.len(), y.len(), "same as y")?;
    if rows == 0 {
        return Ok(());
    }
    let rows_ = to_i32(op, "rows", rows)?;
    let d_ = to_i32(op, "d", d)?;
    let s = &*gpu.stream;
    let (yp, _y) = y.device_ptr(s);
    let (rp, _r) = r.device_ptr(s);
    let (dyp, _dy) = dy.device_ptr(s);
    let (dxp, _dx) = dx.device_ptr_mut(s);
    match norm_geometry(d, NORM_FWD_MAX_CHUNKS).filter(|_| aligned16(&[yp, dyp, dxp])) {
        Some((l, n)) => {
            launch_named!(gpu, NORMS, format!("l2norm_bwd_{l}_{n}"), norm_fast_cfg(rows, l);
            yp, rp, dyp, dxp, rows_)
        }
        None => launch!(gpu, NORMS, "l2norm_bwd", row_cfg(rows, d, 0); yp, rp, dyp, dxp, rows_, d_),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// GDN gates

/// The gates over [n, H] (`nn::gates_fwd`): β = beta_scale·sigmoid(b) (`nn::beta_scale`),
/// g = −exp(A_log)·softplus(a + dt_bias), with H = a_log.len(). a, b bf16 (projection outputs);
/// A_log, dt_bias, g, β fp32.
#[allow(clippy::too_many_arguments)]
pub fn gates_fwd(
    gpu: &Gpu,
    a: &impl DevicePtr<bf16>,
    b: &impl DevicePtr<bf16>,
    a_log: &impl DevicePtr<f32>,
    dt_bias: &impl DevicePtr<f32>,
    g: &mut impl DevicePtrMut<f32>,
    beta: &mut impl DevicePtrMut<f32>,
    beta_scale: f64,
) -> Result<()> {
    let op = "gates_fwd";
    check_beta_scale(op, beta_scale)?;
    let h = a_log.len();
    rows_of(op, "a", a.len(), h)?;
    expect_len(op, "dt_bias", dt_bias.len(), h, "heads = a_log.len()")?;
    expect_len(op, "b", b.len(), a.len(), "same as a")?;
    expect_len(op, "g", g.len(), a.len(), "same as a")?;
    expect_len(op, "beta", beta.len(), a.len(), "same as a")?;
    let n = a.len();
    if n == 0 {
        return Ok(());
    }
    let n_ = n as i64;
    let h_ = to_i32(op, "heads", h)?;
    let s = &*gpu.stream;
    let (ap, _a) = a.device_ptr(s);
    let (bp, _b) = b.device_ptr(s);
    let (alp, _al) = a_log.device_ptr(s);
    let (dtp, _dt) = dt_bias.device_ptr(s);
    let (gp, _g) = g.device_ptr_mut(s);
    let (betap, _be) = beta.device_ptr_mut(s);
    let bs = beta_scale as f32;
    launch!(gpu, GATES, "gates_fwd", elementwise_cfg(n); ap, bp, alp, dtp, gp, betap, n_, h_, bs);
    Ok(())
}

/// β's scale is 1 or 2 (`nn::beta_scale`): the backward divides β by it, exactly only for those.
fn check_beta_scale(op: &str, beta_scale: f64) -> Result<()> {
    ensure!(
        beta_scale == 1.0 || beta_scale == 2.0,
        "{op}: beta_scale {beta_scale} (1, or 2 under allow_neg_eigval)"
    );
    Ok(())
}

/// Gates backward (`nn::gates_bwd`): writes da, db (bf16, the projections' input gradients) and
/// accumulates d A_log, d dt_bias (fp32, deterministic). `beta_scale` is the forward's.
#[allow(clippy::too_many_arguments)]
pub fn gates_bwd(
    gpu: &Gpu,
    a: &impl DevicePtr<bf16>,
    beta: &impl DevicePtr<f32>,
    g: &impl DevicePtr<f32>,
    a_log: &impl DevicePtr<f32>,
    dt_bias: &impl DevicePtr<f32>,
    dg: &impl DevicePtr<f32>,
    dbeta: &impl DevicePtr<f32>,
    da: &mut impl DevicePtrMut<bf16>,
    db: &mut impl DevicePtrMut<bf16>,
    d_a_log: &mut impl DevicePtrMut<f32>,
    d_dt_bias: &mut impl DevicePtrMut<f32>,
    scratch: &mut impl DevicePtrMut<f32>,
    beta_scale: f64,
) -> Result<()> {
    let op = "gates_bwd";
    check_beta_scale(op, beta_scale)?;
    let h = a_log.len();
    ensure!(
        (1..=1024).contains(&h),
        "{op}: {h} heads (a_log.len()); the kernel takes 1 to 1024"
    );
    let rows = rows_of(op, "a", a.len(), h)?;
    let n = a.len();
    expect_len(op, "dt_bias", dt_bias.len(), h, "heads = a_log.len()")?;
    for (name, len) in [
        ("beta", beta.len()),
        ("g", g.len()),
        ("dg", dg.len()),
        ("dbeta", dbeta.len()),
    ] {
        expect_len(op, name, len, n, "same as a")?;
    }
    expect_len(op, "da", da.len(), n, "same as a")?;
    expect_len(op, "db", db.len(), n, "same as a")?;
    expect_len(op, "d_a_log", d_a_log.len(), h, "heads")?;
    expect_len(op, "d_dt_bias", d_dt_bias.len(), h, "heads")?;
    expect_at_least(
        op,
        "scratch",
        scratch.len(),
        gates_bwd_scratch_len(h),
        "gates_bwd_scratch_len(heads)",
    )?;
    let rows_ = to_i32(op, "rows", rows)?;
    let h_ = h as i32;
    let threads = if h <= 256 { h * (256 / h) } else { h } as u32;
    let cfg = LaunchConfig {
        grid_dim: (PARTS as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let s = &*gpu.stream;
    let (ap, _a) = a.device_ptr(s);
    let (bep, _be) = beta.device_ptr(s);
    let (gp, _g) = g.device_ptr(s);
    let (alp, _al) = a_log.device_ptr(s);
    let (dtp, _dt) = dt_bias.device_ptr(s);
    let (dgp, _dg) = dg.device_ptr(s);
    let (dbep, _dbe) = dbeta.device_ptr(s);
    let (dap, _da) = da.device_ptr_mut(s);
    let (dbp, _db) = db.device_ptr_mut(s);
    let (dalp, _dal) = d_a_log.device_ptr_mut(s);
    let (ddtp, _ddt) = d_dt_bias.device_ptr_mut(s);
    let (sp, _s) = scratch.device_ptr_mut(s);
    let bs = beta_scale as f32;
    launch!(gpu, GATES, "gates_bwd", cfg; ap, bep, gp, alp, dtp, dgp, dbep, dap, dbp, sp, rows_, h_, bs);
    reduce_partials(gpu, &GATES, PARTS, sp, 2 * h, h, dalp)?;
    reduce_partials(gpu, &GATES, PARTS, sp + (h * 4) as u64, 2 * h, h, ddtp)
}

// ---------------------------------------------------------------------------------------------
// Short causal convolution

fn conv_checks(op: &str, channels: usize, width: usize, w_len: usize) -> Result<()> {
    ensure!(channels > 0, "{op}: channels must be positive");
    ensure!(
        (1..=MAX_CONV_WIDTH).contains(&width),
        "{op}: convolution width {width} is outside 1..={MAX_CONV_WIDTH}"
    );
    expect_len(op, "w", w_len, channels * width, "channels × width")
}

/// Causal depthwise convolution within each sequence (`ops::conv::forward`): x, y [T, D], w [D, W],
/// `cu_seqlens` [N+1] int32 on the device (starting at 0, non-decreasing, ending at T: the caller
/// guarantees it, since checking would need a host synchronisation).
pub fn conv_fwd(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    w: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    cu_seqlens: &impl DevicePtr<i32>,
    channels: usize,
    width: usize,
) -> Result<()> {
    let op = "conv_fwd";
    conv_checks(op, channels, width, w.len())?;
    let t = rows_of(op, "x", x.len(), channels)?;
    expect_len(op, "y", y.len(), x.len(), "same as x")?;
    ensure!(
        cu_seqlens.len() >= 2,
        "{op}: `cu_seqlens` needs at least 2 offsets, has {}",
        cu_seqlens.len()
    );
    if t == 0 {
        return Ok(());
    }
    let nseq = to_i32(op, "sequences", cu_seqlens.len() - 1)?;
    let t_ = to_i32(op, "tokens", t)?;
    let d_ = to_i32(op, "channels", channels)?;
    let w_ = width as i32;
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (wp, _w) = w.device_ptr(s);
    let (yp, _y) = y.device_ptr_mut(s);
    let (cp, _c) = cu_seqlens.device_ptr(s);
    if channels.is_multiple_of(8) && aligned16(&[xp, yp]) {
        // One thread per 8 channels and CONV_TILE (8) tokens.
        let threads = channels / 8 * t.div_ceil(8);
        launch!(gpu, CONV, "conv_fwd_v8", grid_1d(threads, 256, usize::MAX); xp, wp, yp, cp, nseq, t_, d_, w_);
    } else {
        let cfg = LaunchConfig {
            grid_dim: (t as u32, channels.div_ceil(128) as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(gpu, CONV, "conv_fwd", cfg; xp, wp, yp, cp, nseq, t_, d_, w_);
    }
    Ok(())
}

/// Convolution backward (`ops::conv::backward`): writes dx, accumulates dw [D, W] (fp32). Row t
/// of dx starts at element t · `dx_ld` (≥ D; D for a dense [T, D] dx), so that the model can
/// place the q and k gradients side by side in one [T, 2D] matrix for one projection matmul.
/// With `codes`, dx is written there instead, as E5M2 codes in dx's layout (its input gradient
/// then feeds only an FP8 product); the fast path's conditions must hold.
#[allow(clippy::too_many_arguments)]
pub fn conv_bwd(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    w: &impl DevicePtr<bf16>,
    dy: &impl DevicePtr<bf16>,
    dx: &mut impl DevicePtrMut<bf16>,
    dx_ld: usize,
    dw: &mut impl DevicePtrMut<f32>,
    scratch: &mut impl DevicePtrMut<f32>,
    cu_seqlens: &impl DevicePtr<i32>,
    channels: usize,
    width: usize,
    codes: Option<CodesOut>,
) -> Result<()> {
    let op = "conv_bwd";
    conv_checks(op, channels, width, w.len())?;
    let t = rows_of(op, "x", x.len(), channels)?;
    expect_len(op, "dy", dy.len(), x.len(), "same as x")?;
    ensure!(
        dx_ld >= channels,
        "{op}: the row stride of dx ({dx_ld}) is below the channels ({channels})"
    );
    expect_len(
        op,
        "dx",
        dx.len(),
        if t == 0 {
            0
        } else {
            (t - 1) * dx_ld + channels
        },
        "(tokens − 1) × dx_ld + channels",
    )?;
    expect_len(op, "dw", dw.len(), channels * width, "channels × width")?;
    expect_at_least(
        op,
        "scratch",
        scratch.len(),
        conv_bwd_scratch_len(channels, width),
        "conv_bwd_scratch_len(channels, width)",
    )?;
    ensure!(
        cu_seqlens.len() >= 2,
        "{op}: `cu_seqlens` needs at least 2 offsets, has {}",
        cu_seqlens.len()
    );
    let nseq = to_i32(op, "sequences", cu_seqlens.len() - 1)?;
    let t_ = to_i32(op, "tokens", t)?;
    let d_ = to_i32(op, "channels", channels)?;
    let ld_ = to_i32(op, "dx row stride", dx_ld)?;
    let w_ = width as i32;
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (wp, _w) = w.device_ptr(s);
    let (dyp, _dy) = dy.device_ptr(s);
    let (dxp, _dx) = dx.device_ptr_mut(s);
    let (dwp, _dw) = dw.device_ptr_mut(s);
    let (sp, _s) = scratch.device_ptr_mut(s);
    let (cp, _c) = cu_seqlens.device_ptr(s);
    let aligned8 = [xp, dyp, dxp].iter().all(|p| p % 8 == 0);
    let v4 = channels.is_multiple_of(4) && dx_ld.is_multiple_of(4) && aligned8;
    ensure!(
        codes.is_none() || v4 && codes.is_some_and(|c| c.y.is_multiple_of(4)),
        "{op}: FP8 codes need channels and the row stride multiples of 4 and aligned tensors"
    );
    let parts = if v4 {
        // One thread per 4 channels and part.
        let np = CONV_PARTS as i32;
        let threads = channels / 4 * CONV_PARTS;
        let c = codes.unwrap_or(NO_CODES);
        let (y8, s8, a8) = (c.y, c.scale, c.amax);
        launch!(gpu, CONV, "conv_bwd_v4", grid_1d(threads, 256, usize::MAX);
            xp, wp, dyp, dxp, y8, s8, a8, ld_, sp, cp, nseq, t_, d_, w_, np);
        CONV_PARTS
    } else {
        let cfg = LaunchConfig {
            grid_dim: (channels.div_ceil(128) as u32, PARTS as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(gpu, CONV, "conv_bwd", cfg; xp, wp, dyp, dxp, ld_, sp, cp, nseq, t_, d_, w_);
        PARTS
    };
    reduce_partials(
        gpu,
        &CONV,
        parts,
        sp,
        channels * width,
        channels * width,
        dwp,
    )
}

/// One decode step for N sequences (`ops::conv::step`, FLA's `conv_state` layout): x, y [N, D],
/// cache [N, D, W] holding the last W inputs oldest first (the CPU step keeps [W, D] per sequence).
pub fn conv_step(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    w: &impl DevicePtr<bf16>,
    cache: &mut impl DevicePtrMut<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    channels: usize,
    width: usize,
) -> Result<()> {
    let op = "conv_step";
    conv_checks(op, channels, width, w.len())?;
    let n = rows_of(op, "x", x.len(), channels)?;
    expect_len(
        op,
        "cache",
        cache.len(),
        x.len() * width,
        "sequences × channels × width",
    )?;
    expect_len(op, "y", y.len(), x.len(), "same as x")?;
    if n == 0 {
        return Ok(());
    }
    let n_ = to_i32(op, "sequences", n)?;
    let d_ = to_i32(op, "channels", channels)?;
    let w_ = width as i32;
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (wp, _w) = w.device_ptr(s);
    let (cp, _c) = cache.device_ptr_mut(s);
    let (yp, _y) = y.device_ptr_mut(s);
    launch!(gpu, CONV, "conv_step", grid_1d(n * channels, 256, usize::MAX); xp, wp, cp, yp, n_, d_, w_);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// Cross-entropy over bf16 logits [n, vocab] (`nn::cross_entropy`): per row lse and loss (fp32,
/// loss 0 where the target is IGNORE, NaN where it is ≥ vocab), and `stats` = [mean loss over the
/// counted rows (0 when none), count] in fp64 on the device. [`cross_entropy_rows`], then
/// [`cross_entropy_finalize`].
pub fn cross_entropy_fwd(
    gpu: &Gpu,
    logits: &impl DevicePtr<bf16>,
    targets: &impl DevicePtr<u32>,
    lse: &mut impl DevicePtrMut<f32>,
    losses: &mut (impl DevicePtr<f32> + DevicePtrMut<f32>),
    stats: &mut impl DevicePtrMut<f64>,
    vocab: usize,
) -> Result<()> {
    cross_entropy_rows(gpu, logits, targets, lse, losses, vocab)?;
    cross_entropy_finalize(gpu, Some(&*losses), targets, stats)
}

/// The per-row half of [`cross_entropy_fwd`]: lse and loss of each row (rows are independent, so
/// a block of rows may be done at a time).
pub fn cross_entropy_rows(
    gpu: &Gpu,
    logits: &impl DevicePtr<bf16>,
    targets: &impl DevicePtr<u32>,
    lse: &mut impl DevicePtrMut<f32>,
    losses: &mut impl DevicePtrMut<f32>,
    vocab: usize,
) -> Result<()> {
    let op = "cross_entropy_rows";
    let n = rows_of(op, "logits", logits.len(), vocab)?;
    expect_len(
        op,
        "targets",
        targets.len(),
        n,
        "rows = logits.len() / vocab",
    )?;
    expect_len(op, "lse", lse.len(), n, "rows")?;
    expect_len(op, "losses", losses.len(), n, "rows")?;
    if n == 0 {
        return Ok(());
    }
    let n_ = to_i32(op, "rows", n)?;
    let v_ = to_i32(op, "vocab", vocab)?;
    let s = &*gpu.stream;
    let (lp, _l) = logits.device_ptr(s);
    let (tp, _t) = targets.device_ptr(s);
    let (lsep, _lse) = lse.device_ptr_mut(s);
    let (lossp, _loss) = losses.device_ptr_mut(s);
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (512, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(gpu, CROSS_ENTROPY, "ce_fwd", cfg; lp, tp, lsep, lossp, n_, v_);
    Ok(())
}

/// `stats` = [mean of `losses` over the rows whose target is not IGNORE (0 when none), their
/// count]; with `losses` None, [0, count] (the count is all that
/// [`cross_entropy_bwd_inplace`] reads, and it depends on the targets alone).
pub fn cross_entropy_finalize<L: DevicePtr<f32>>(
    gpu: &Gpu,
    losses: Option<&L>,
    targets: &impl DevicePtr<u32>,
    stats: &mut impl DevicePtrMut<f64>,
) -> Result<()> {
    let op = "cross_entropy_finalize";
    let n = targets.len();
    if let Some(l) = losses {
        expect_len(op, "losses", l.len(), n, "targets.len()")?;
    }
    expect_len(op, "stats", stats.len(), 2, "[mean loss, count]")?;
    let n_ = to_i32(op, "rows", n)?;
    let s = &*gpu.stream;
    let (tp, _t) = targets.device_ptr(s);
    let (sp, _s) = stats.device_ptr_mut(s);
    let lp = losses.map(|l| l.device_ptr(s));
    let lossp: CUdeviceptr = lp.as_ref().map_or(0, |(p, _)| *p);
    let one = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(gpu, CROSS_ENTROPY, "ce_finalize", one; lossp, tp, n_, sp);
    Ok(())
}

/// d(scale · mean loss)/d logits, written over the logits (`nn::cross_entropy_bwd_inplace`);
/// the count comes from `stats` as written by [`cross_entropy_fwd`].
pub fn cross_entropy_bwd_inplace(
    gpu: &Gpu,
    logits: &mut impl DevicePtrMut<bf16>,
    targets: &impl DevicePtr<u32>,
    lse: &impl DevicePtr<f32>,
    stats: &impl DevicePtr<f64>,
    vocab: usize,
    scale: f32,
) -> Result<()> {
    let op = "cross_entropy_bwd_inplace";
    let n = rows_of(op, "logits", logits.len(), vocab)?;
    expect_len(
        op,
        "targets",
        targets.len(),
        n,
        "rows = logits.len() / vocab",
    )?;
    expect_len(op, "lse", lse.len(), n, "rows")?;
    expect_len(op, "stats", stats.len(), 2, "[mean loss, count]")?;
    if n == 0 {
        return Ok(());
    }
    let n_ = to_i32(op, "rows", n)?;
    let v_ = to_i32(op, "vocab", vocab)?;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (512, 1, 1),
        shared_mem_bytes: 0,
    };
    let s = &*gpu.stream;
    let (lp, _l) = logits.device_ptr_mut(s);
    let (tp, _t) = targets.device_ptr(s);
    let (lsep, _lse) = lse.device_ptr(s);
    let (sp, _s) = stats.device_ptr(s);
    launch!(gpu, CROSS_ENTROPY, "ce_bwd", cfg; lp, tp, lsep, sp, n_, v_, scale);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Optimiser

/// AdamW hyper-parameters that stay fixed over a run (lr and step live on the device).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWHyper {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
}

/// One AdamW update over flat fp32 buffers (`train::adamw::AdamW::update`, with the per-element
/// decay factor `decay` (1 or 0)), writing the bf16 working copy `params_bf16`. `sched` = [lr,
/// step] (fp64, step counted from 1) on the device, so that a captured step reads each step's
/// values. With `grad_norm` (as written by [`grad_norm`]) and `max_grad_norm` > 0 the gradients
/// are scaled as `clip_grad_norm` would, without modifying `grads`.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    gpu: &Gpu,
    params: &mut impl DevicePtrMut<f32>,
    grads: &impl DevicePtr<f32>,
    m: &mut impl DevicePtrMut<f32>,
    v: &mut impl DevicePtrMut<f32>,
    decay: &impl DevicePtr<f32>,
    params_bf16: &mut impl DevicePtrMut<bf16>,
    sched: &impl DevicePtr<f64>,
    grad_norm: Option<&CudaSlice<f64>>,
    hyper: &AdamWHyper,
) -> Result<()> {
    let op = "adamw";
    let n = params.len();
    for (name, len) in [
        ("grads", grads.len()),
        ("m", m.len()),
        ("v", v.len()),
        ("decay", decay.len()),
    ] {
        expect_len(op, name, len, n, "same as params")?;
    }
    expect_len(op, "params_bf16", params_bf16.len(), n, "same as params")?;
    expect_len(op, "sched", sched.len(), 2, "[lr, step]")?;
    if let Some(g) = grad_norm {
        ensure!(!g.is_empty(), "{op}: `grad_norm` is empty");
    }
    if n == 0 {
        return Ok(());
    }
    let n_ = n as i64;
    let (max_norm, b1, b2, eps, wd) = (
        hyper.max_grad_norm,
        hyper.beta1,
        hyper.beta2,
        hyper.eps,
        hyper.weight_decay,
    );
    let s = &*gpu.stream;
    let (pp, _p) = params.device_ptr_mut(s);
    let (gp, _g) = grads.device_ptr(s);
    let (mp, _m) = m.device_ptr_mut(s);
    let (vp, _v) = v.device_ptr_mut(s);
    let (dp, _d) = decay.device_ptr(s);
    let (p16, _p16) = params_bf16.device_ptr_mut(s);
    let (schp, _sch) = sched.device_ptr(s);
    let (np, _np) = super::ptr_or_null(grad_norm, s);
    launch!(gpu, ELEMENTWISE, "adamw", grid_1d(n, 256, 2048);
        pp, gp, mp, vp, dp, p16, n_, schp, np, max_norm, b1, b2, eps, wd);
    Ok(())
}

/// The global L2 norm of fp32 gradients into `out[0]` (fp64), deterministically
/// (`train::adamw::grad_norm`).
pub fn grad_norm(
    gpu: &Gpu,
    grads: &impl DevicePtr<f32>,
    scratch: &mut impl DevicePtrMut<f64>,
    out: &mut impl DevicePtrMut<f64>,
) -> Result<()> {
    let op = "grad_norm";
    expect_at_least(
        op,
        "scratch",
        scratch.len(),
        GRAD_NORM_PARTS,
        "grad_norm_scratch_len()",
    )?;
    if out.is_empty() {
        bail!("{op}: `out` is empty");
    }
    let n_ = grads.len() as i64;
    let np = GRAD_NORM_PARTS as i32;
    let s = &*gpu.stream;
    let (gp, _g) = grads.device_ptr(s);
    let (sp, _s) = scratch.device_ptr_mut(s);
    let (op_, _o) = out.device_ptr_mut(s);
    let parts = LaunchConfig {
        grid_dim: (GRAD_NORM_PARTS as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(gpu, ELEMENTWISE, "sumsq_partial", parts; gp, n_, sp);
    let one = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(gpu, ELEMENTWISE, "sqrt_of_sum", one; sp, np, op_);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every geometry `norm_geometry` can pick names kernels that norms.cu instantiates (a
    /// mismatch would only show at launch time, on a GPU).
    #[test]
    fn norm_geometries_have_kernels() {
        let src = NORMS.code;
        let macros = [
            ("\nNORM_FWD_KERNELS", NORM_FWD_MAX_CHUNKS),
            ("\nRMSNORM_BWD_KERNEL", RMSNORM_BWD_MAX_CHUNKS),
            ("\nGATED_RMSNORM_BWD_KERNEL", GATED_BWD_MAX_CHUNKS),
        ];
        for d in (8..=4096).step_by(8) {
            for (mac, max) in macros {
                if let Some((l, n)) = norm_geometry(d, max) {
                    assert_eq!(8 * l * n, d);
                    let want = format!("{mac}({l}, {n}");
                    assert!(src.contains(&want), "d = {d}: `{want}` not in norms.cu");
                }
            }
        }
        for d in [64, 128, 256, 512, 1024, 2048] {
            assert!(norm_geometry(d, NORM_FWD_MAX_CHUNKS).is_some(), "d = {d}");
        }
        assert!(norm_geometry(512, GATED_BWD_MAX_CHUNKS).is_some());
        assert!(norm_geometry(200, NORM_FWD_MAX_CHUNKS).is_none());
    }
}
