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
    chunk_backward, chunk_forward, saved_t_len, Backward, ChunkGrads, ChunkInputs, DecodeInputs,
    DecodeStep, DeltaRuleWorkspace,
};
use super::fp8::{CodesOut, NO_CODES};
use super::profile::{mark, OpProfile};
use super::{ops, ptr_mut_or_null, ptr_or_null, Gpu, KernelSource};
use crate::model::lm::Model;
use crate::model::safetensors_io::NamedTensor;
use crate::ops::delta_rule::Dims;
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use half::bf16;
use std::ops::Range;

pub mod linear;
pub mod memory;
pub mod save;
use linear::{dw_bf16, dx_bf16, fwd_bf16, Act, DySite, Linears, WSite, XSite};
use memory::{Alloc, BufKind, CountAlloc, GpuAlloc, MemCategory, OnGpu};
pub use memory::{MemEntry, MemoryAccount};
pub use save::{SaveMode, SavePlan};

/// The helper kernels of this module.
pub static MODEL_EXTRA: KernelSource = KernelSource {
    name: "model_extra",
    code: concat!(
        include_str!("kernels/common.cuh"),
        include_str!("kernels/fp8_codes.cuh"),
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

/// The backward of y = l2norm(silu(c)) over rows of width `d`, from the gradient `dy` (the delta
/// rule's, bf16): dc = silu'(c)·r(dy − y(y·dy)), with silu and the norm recomputed in fp32 from
/// `c` (no bf16 rounding of silu(c) or y before the cancelling projection).
pub fn l2norm_silu_bwd(
    gpu: &Gpu,
    c: &impl DevicePtr<bf16>,
    dy: &impl DevicePtr<bf16>,
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
    if d.is_multiple_of(32) && d <= 256 {
        // One warp per row, eight rows per block.
        let e = d_ / 32;
        let cfg = LaunchConfig {
            grid_dim: ((rows as u32).div_ceil(8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // arguments match `mx_l2norm_silu_bwd_warp(const bf16*, const bf16*, bf16*, int, int)`;
        // lengths checked; rows of 32·e elements, e ≤ 8.
        launch!(gpu, MODEL_EXTRA, "mx_l2norm_silu_bwd_warp", cfg; cp, yp, op, rows, e);
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: ((d.clamp(1, 256).div_ceil(32) * 32) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // arguments match `mx_l2norm_silu_bwd(const bf16*, const bf16*, bf16*, int, int)`;
    // lengths checked; one block of at most 256 threads per row.
    launch!(gpu, MODEL_EXTRA, "mx_l2norm_silu_bwd", cfg; cp, yp, op, rows, d_);
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

/// A residual add done by [`rmsnorm_fwd_f32x`]: `sum` = x + `add`, which is then normalised.
pub struct ResidualAdd<'a, 'b> {
    pub add: CudaView<'a, bf16>,
    pub sum: &'b mut CudaViewMut<'a, f32>,
}

/// RMSNorm of the fp32 residual stream (as `ops::rmsnorm_fwd`, x fp32): y = x·rstd·w (bf16).
/// With `residual`, the row normalised is x + add, also written to its `sum` (the same fp32
/// values `add_f32_bf16` gives, without its pass over the stream).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_fwd_f32x(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    residual: Option<ResidualAdd>,
    w: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    rstd: &mut impl DevicePtrMut<f32>,
    d: usize,
    eps: f32,
    codes: Option<CodesOut>,
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
    if let Some(r) = &residual {
        ensure!(
            r.add.len() == x.len() && r.sum.len() == x.len(),
            "rmsnorm_fwd_f32x: the residual add's lengths (add {}, sum {}) differ from x's {}",
            r.add.len(),
            r.sum.len(),
            x.len()
        );
    }
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
    // Null pointers: no residual add.
    let (add, sum) = residual.map(|r| (r.add, r.sum)).unzip();
    let (ap, _a) = ptr_or_null(add.as_ref(), s);
    let (sp, _s) = ptr_mut_or_null(sum, s);
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: ((d.clamp(1, 256).div_ceil(32) * 32) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (y8, s8, a8) = codes_args("rmsnorm_fwd_f32x", codes)?;
    // arguments match `mx_rmsnorm_fwd_f32x(const float*, const bf16*, float*, const bf16*,
    // bf16*, float*, int, int, float, u8*, const float*, unsigned*)`; lengths checked (the
    // codes, as y, by the caller: `Linears::x_codes`); one block of at most 256 threads per row.
    launch!(gpu, MODEL_EXTRA, "mx_rmsnorm_fwd_f32x", cfg;
        xp, ap, sp, wp, yp, rp, rows, d_, eps, y8, s8, a8);
    Ok(())
}

/// The (codes, scale, amax) kernel arguments of an RMSNorm that may write FP8 codes (null
/// without), the codes written 4 at a time.
fn codes_args(op: &str, codes: Option<CodesOut>) -> Result<(u64, u64, u64)> {
    let c = codes.unwrap_or(NO_CODES);
    ensure!(
        c.y.is_multiple_of(4),
        "{op}: the FP8 codes must start 4-byte aligned"
    );
    Ok((c.y, c.scale, c.amax))
}

/// The low-rank addend of [`rmsnorm_bwd_f32`]'s dy: Σ over `nb` blocks b of c_b · v_b, with `c`
/// bf16 [nb, rows, r] (the blocks one after the other) and `v` bf16 [nb·r, d]. The mixer's a and
/// b projections (r = heads) add their share of the input gradient this way: as matmuls, each
/// would read and write the fp32 gradient once more.
pub struct LowRank<'a> {
    pub c: CudaView<'a, bf16>,
    pub v: CudaView<'a, bf16>,
    pub r: usize,
    pub nb: usize,
}

/// RMSNorm backward on the fp32 residual stream (as `ops::rmsnorm_bwd`, with x, dy and dx fp32):
/// dx is written (`accumulate` false) or added (true) into the fp32 residual gradient, and
/// dw += Σ_rows dy·x·rstd (deterministic: per-block partials in `scratch`, then reduced in order).
/// With `dx_bf`, the kernel also writes bf16(dx) there (the value `ops::cast_f32_to_bf16` of the
/// finished dx gives, without the second pass over dx); with `codes`, dx's E5M2 codes instead
/// (`Linears::dy_codes`). With `addend`, the gradient is dy plus that low-rank term (in dx and
/// in dw).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd_f32(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    w: &impl DevicePtr<bf16>,
    rstd: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    addend: Option<LowRank>,
    dx: &mut impl DevicePtrMut<f32>,
    dx_bf: Option<&mut CudaViewMut<bf16>>,
    codes: Option<CodesOut>,
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
            && dx.len() == x.len()
            && dx_bf.as_ref().is_none_or(|b| b.len() == x.len()),
        "rmsnorm_bwd_f32: lengths (x {}, w {}, rstd {}, dy {}, dx {}, dx_bf {:?}, dw {}) do not fit \
         rows of width {d}",
        x.len(),
        w.len(),
        rstd.len(),
        dy.len(),
        dx.len(),
        dx_bf.as_ref().map(|b| b.len()),
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
    if let Some(a) = &addend {
        let rows = x.len() / d;
        ensure!(
            a.c.len() == a.nb * rows * a.r && a.v.len() == a.nb * a.r * d,
            "rmsnorm_bwd_f32: the low-rank addend's c has {} elements and v {}; blocks {}, rank \
             {}, rows {rows} and width {d} need {} and {}",
            a.c.len(),
            a.v.len(),
            a.nb,
            a.r,
            a.nb * rows * a.r,
            a.nb * a.r * d
        );
    }
    let lr_r =
        i32::try_from(addend.as_ref().map_or(0, |a| a.r)).context("rmsnorm_bwd_f32: rank")?;
    let lr_nb =
        i32::try_from(addend.as_ref().map_or(0, |a| a.nb)).context("rmsnorm_bwd_f32: blocks")?;
    let acc = i32::from(accumulate);
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (wp, _w) = w.device_ptr(s);
    let (rp, _r) = rstd.device_ptr(s);
    let (yp, _y) = dy.device_ptr(s);
    let (dxp, _dx) = dx.device_ptr_mut(s);
    // A null pointer: no bf16 copy.
    let (dbp, _db) = ptr_mut_or_null(dx_bf, s);
    let (dwp, _dw) = dw.device_ptr_mut(s);
    let (sp, _s) = scratch.device_ptr_mut(s);
    // Null pointers with nb = 0: no addend.
    let (cp, _c) = ptr_or_null(addend.as_ref().map(|a| &a.c), s);
    let (vp, _v) = ptr_or_null(addend.as_ref().map(|a| &a.v), s);
    // The general path's column sums (d floats), or the vector path's staged addend
    // coefficients (MX_BWD_ROWS = 4 rows of nb · r).
    let smem_floats = d.max(4 * (lr_nb * lr_r) as usize);
    ensure!(
        smem_floats <= ops::MAX_NORM_WIDTH,
        "rmsnorm_bwd_f32: the low-rank addend's {lr_nb} blocks of rank {lr_r} are too many"
    );
    let cfg = LaunchConfig {
        grid_dim: (parts as u32, 1, 1),
        block_dim: ((d.clamp(1, 256).div_ceil(32) * 32) as u32, 1, 1),
        shared_mem_bytes: (smem_floats * 4) as u32,
    };
    let (dx8, s8, a8) = codes_args("rmsnorm_bwd_f32", codes)?;
    // arguments match `mx_rmsnorm_bwd_f32(const float*, const bf16*, const float*,
    // const float*, float*, bf16*, float*, int, int, int, const bf16*, const bf16*, int, int, u8*,
    // const float*, unsigned*)`; lengths checked (dx_bf null or as long as dx, the codes as dx by
    // the caller: `Linears::dy_codes`, the addend's c and v as its rank and blocks say); at
    // most MAX_NORM_WIDTH floats of dynamic shared memory (fits 48 KiB); scratch holds PARTS
    // rows of d.
    launch!(gpu, MODEL_EXTRA, "mx_rmsnorm_bwd_f32", cfg;
        xp, wp, rp, yp, dxp, dbp, sp, rows, d_, acc, cp, vp, lr_r, lr_nb, dx8, s8, a8);
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

/// The first `n` bf16 of an f32 buffer's bytes: the backward borrows f32 buffers that are dead
/// at that point for the delta rule's bf16 dq and dk. Panics if the buffer holds fewer than
/// `n` bf16 (the callers size both from the same tokens and widths).
fn bf16_in_f32_mut(buf: &mut CudaSlice<f32>, n: usize) -> CudaViewMut<'_, bf16> {
    // SAFETY: every bit pattern is a valid bf16, and the view stays within the buffer.
    unsafe { buf.transmute_mut::<bf16>(n) }.expect("a bf16 view within its f32 buffer")
}

/// The read-only view of [`bf16_in_f32_mut`].
fn bf16_in_f32(buf: &CudaSlice<f32>, n: usize) -> CudaView<'_, bf16> {
    // SAFETY: as in bf16_in_f32_mut.
    unsafe { buf.transmute::<bf16>(n) }.expect("a bf16 view within its f32 buffer")
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
    /// The block's number.
    index: usize,
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
    /// Value heads HV: the gates, β, the delta rule and the gated norm run per value head.
    h: usize,
    /// q/k heads H (HV / H value heads each: GVA when more than one).
    hq: usize,
    dk: usize,
    dv: usize,
    /// q/k width H·K (projections, convs, L2 norm).
    kd: usize,
    /// The delta rule's q/k width HV·K: kd, or under GVA q and k repeated per value head.
    kx: usize,
    /// Value width HV·V.
    vd: usize,
    w: usize,
    eps: f32,
    /// β = beta_scale · sigmoid(b) (2 under allow_neg_eigval).
    beta_scale: f64,
}

impl Sz {
    fn of(model: &Model) -> Sz {
        let c = &model.config;
        let md = model.mixer_dims();
        Sz {
            d: c.hidden_size,
            inter: c.intermediate_size,
            vocab: c.vocab_size,
            h: md.v_heads,
            hq: md.heads,
            dk: md.dk,
            dv: md.dv,
            kd: md.heads * md.dk,
            kx: md.v_heads * md.dk,
            vd: md.v_heads * md.dv,
            w: md.width,
            eps: md.eps as f32,
            beta_scale: md.beta_scale,
        }
    }

    fn rule(&self) -> Dims {
        Dims {
            heads: self.h,
            dk: self.dk,
            dv: self.dv,
        }
    }

    /// Value heads per q/k head (1 without GVA).
    fn group(&self) -> usize {
        self.h / self.hq
    }

    /// Elements of the buffer that holds the delta rule's dq and dk per value head: 2·T·kx under
    /// GVA, else none (the mixer's own buffers receive them).
    fn rule_dqk_len(&self, t: usize) -> usize {
        if self.group() > 1 {
            2 * t * self.kx
        } else {
            0
        }
    }

    /// Width of `dact`, which the mixer's backward reuses (see [`BwdTemps`]): max(intermediate,
    /// value dim, 2 × key dim).
    fn slot(&self) -> usize {
        self.inter.max(self.vd).max(2 * self.kd)
    }

    /// Width of the gate‖up buffer: the MLP's 2 × intermediate, or what the mixer's backward keeps
    /// there (d_gate, then dq_pre‖dk_pre‖dv_pre), whichever is wider.
    fn gate_up_width(&self) -> usize {
        (2 * self.inter).max(2 * (self.kd + self.vd))
    }
}

/// What one block's forward keeps for its backward, [max_tokens, ·] (bf16 unless noted): one set
/// per block (one in all with `recompute`). Everything else the backward reads is recomputed
/// into [`Work`] from these and the residual stream, by the same kernels on the same inputs
/// (bit for bit the values the forward computed).
struct Saved<K: BufKind = OnGpu> {
    /// q/k/v projections: the short convs' inputs (conv backward; conv, SiLU, L2 norm redone).
    q_pre: K::Buf<bf16>,
    k_pre: K::Buf<bf16>,
    v_pre: K::Buf<bf16>,
    /// a_proj output [T, H] (gates backward).
    a: K::Buf<bf16>,
    /// Output gate g_proj (gated-norm backward; `normed` redone).
    gate: K::Buf<bf16>,
    /// Log decay and β, f32 [T, H].
    g: K::Buf<f32>,
    beta: K::Buf<f32>,
    /// Delta-rule output (gated-norm backward; `normed` redone).
    o: K::Buf<bf16>,
    /// The delta rule's T = (I+M)^{-1}, f32 [chunks, H, 64, 64] (`saved_t_len`: 64 f32 per token
    /// and head, plus partial chunks; at K <= 128 also the forward's P for the reverse pass): its
    /// backward then recomputes W and U only, not the T solve. Kept where the delta rule's
    /// forward output is (every block; with `recompute`, the one set, written by the block's
    /// re-run forward just before its backward).
    t: K::Buf<f32>,
    /// o_proj output [T, D]: x_mid = x_in + mix redone (then h2, the MLP's gate/up, SwiGLU).
    mix: K::Buf<bf16>,
}

impl<K: BufKind> Saved<K> {
    fn new_in<A: Alloc<K = K>>(al: &mut A, sz: Sz, t: usize, seqs: usize) -> Result<Self> {
        let c = MemCategory::SavedPerBlock;
        let (th, tk, tv) = (t * sz.h, t * sz.kd, t * sz.vd);
        Ok(Saved {
            q_pre: al.buf(c, "q_pre", tk)?,
            k_pre: al.buf(c, "k_pre", tk)?,
            v_pre: al.buf(c, "v_pre", tv)?,
            a: al.buf(c, "a (a_proj)", th)?,
            gate: al.buf(c, "gate (g_proj)", tv)?,
            g: al.buf(c, "g (f32)", th)?,
            beta: al.buf(c, "beta (f32)", th)?,
            o: al.buf(c, "o (delta rule)", tv)?,
            t: al.buf(
                c,
                "T (delta rule, f32 [chunks, H, 64, 64]; P behind it at K <= 128)",
                saved_t_len(sz.rule(), t, seqs),
            )?,
            mix: al.buf(c, "mix (o_proj)", t * sz.d)?,
        })
    }
}

/// One block's activations that its backward reads besides [`Saved`] (bf16 unless noted), in
/// three groups, each held in `sets` copies chosen by the [`SavePlan`]: blocks `0..sets − 1` own
/// one copy each (kept from their forward to their backward: nothing to recompute), the other
/// blocks share the last copy. A block that shares a copy rewrites it in its backward from
/// [`Saved`] and the residual stream, by the forward's kernels on the forward's inputs (bit for
/// bit the values its forward computed), except the last block, whose forward wrote the shared
/// copy last (and, with `recompute`, every block, whose forward was just re-run).
///
/// The mixer's backward reuses the block's MLP buffers once the MLP backward is done: gate‖up
/// holds d_gate ([T, vd] from its start) and dq_pre‖dk_pre‖dv_pre ([T, 2·kd + vd] after that),
/// and `x_mid` the delta rule's bf16 dq (a block's own copies are dead by then too).
///
/// The mixer group: the convs, SiLU / L2 norm, gated norm and attention norm outputs.
struct MixWork<K: BufKind = OnGpu> {
    rstd1: K::Buf<f32>,
    h1: K::Buf<bf16>,
    q_conv: K::Buf<bf16>,
    k_conv: K::Buf<bf16>,
    v_conv: K::Buf<bf16>,
    q: K::Buf<bf16>,
    k: K::Buf<bf16>,
    qr: K::Buf<f32>,
    kr: K::Buf<f32>,
    v: K::Buf<bf16>,
    o_rstd: K::Buf<f32>,
    /// The gated norm's output [T, vd].
    normed: K::Buf<bf16>,
}

/// The MLP group without its gate/up outputs: x_mid, the MLP norm and the SwiGLU product.
struct MlpWork<K: BufKind = OnGpu> {
    /// fp32 [T, max(d, kd)] (residual stream).
    x_mid: K::Buf<f32>,
    rstd2: K::Buf<f32>,
    h2: K::Buf<bf16>,
    /// The SwiGLU product [T, intermediate].
    act: K::Buf<bf16>,
}

/// The MLP's gate and up projections, side by side ([n, 2·intermediate]: one matmul, and one
/// back to the MLP's input), in a buffer of [T, `Sz::gate_up_width`]: the one recomputation with
/// matmuls. Its backward turns them in place into d gate ‖ d up. The mixer's backward then
/// borrows the buffer (see [`MixWork`]).
struct GateUp<K: BufKind = OnGpu> {
    buf: K::Buf<bf16>,
}

/// The category of copy `i` of `sets`: the last is the shared work copy, the others are kept
/// per block by the save plan.
fn set_category(i: usize, sets: usize) -> MemCategory {
    if i + 1 == sets {
        MemCategory::BlockWork
    } else {
        MemCategory::KeptPerBlock
    }
}

impl<K: BufKind> MixWork<K> {
    fn new_in<A: Alloc<K = K>>(al: &mut A, c: MemCategory, sz: Sz, t: usize) -> Result<Self> {
        let (th, tk, tv, td) = (t * sz.h, t * sz.kd, t * sz.vd, t * sz.d);
        Ok(MixWork {
            rstd1: al.buf(c, "rstd1 (f32)", t)?,
            h1: al.buf(c, "h1", td)?,
            q_conv: al.buf(c, "q_conv", tk)?,
            k_conv: al.buf(c, "k_conv", tk)?,
            v_conv: al.buf(c, "v_conv", tv)?,
            q: al.buf(c, "q", tk)?,
            k: al.buf(c, "k", tk)?,
            qr: al.buf(c, "qr (f32)", t * sz.hq)?,
            kr: al.buf(c, "kr (f32)", t * sz.hq)?,
            v: al.buf(c, "v", tv)?,
            o_rstd: al.buf(c, "o_rstd (f32)", th)?,
            normed: al.buf(c, "normed", t * sz.vd)?,
        })
    }
}

impl<K: BufKind> MlpWork<K> {
    fn new_in<A: Alloc<K = K>>(al: &mut A, c: MemCategory, sz: Sz, t: usize) -> Result<Self> {
        Ok(MlpWork {
            x_mid: al.buf(c, "x_mid (f32) / rule dq (bf16)", t * sz.d.max(sz.kd))?,
            rstd2: al.buf(c, "rstd2 (f32)", t)?,
            h2: al.buf(c, "h2", t * sz.d)?,
            act: al.buf(c, "mlp act", t * sz.inter)?,
        })
    }
}

impl<K: BufKind> GateUp<K> {
    fn new_in<A: Alloc<K = K>>(al: &mut A, c: MemCategory, sz: Sz, t: usize) -> Result<Self> {
        Ok(GateUp {
            buf: al.buf(
                c,
                "mlp gate‖up / d_gate, dq_pre‖dk_pre‖dv_pre",
                t * sz.gate_up_width(),
            )?,
        })
    }
}

/// Every copy of the three groups (see [`MixWork`]), and the b_proj output (read by the
/// forward's gates only: one buffer for all blocks).
struct Acts<K: BufKind = OnGpu> {
    plan: SavePlan,
    mix: Vec<MixWork<K>>,
    mlp: Vec<MlpWork<K>>,
    gu: Vec<GateUp<K>>,
    /// b_proj output [T, H] (gates forward only).
    b: K::Buf<bf16>,
}

impl<K: BufKind> Acts<K> {
    fn new_in<A: Alloc<K = K>>(al: &mut A, plan: SavePlan, sz: Sz, t: usize) -> Result<Self> {
        let mix = (0..plan.mixer)
            .map(|i| MixWork::new_in(al, set_category(i, plan.mixer), sz, t))
            .collect::<Result<Vec<_>>>()?;
        let mlp = (0..plan.mlp)
            .map(|i| MlpWork::new_in(al, set_category(i, plan.mlp), sz, t))
            .collect::<Result<Vec<_>>>()?;
        let gu = (0..plan.gate_up)
            .map(|i| GateUp::new_in(al, set_category(i, plan.gate_up), sz, t))
            .collect::<Result<Vec<_>>>()?;
        Ok(Acts {
            plan,
            mix,
            mlp,
            gu,
            b: al.buf(MemCategory::BlockWork, "b (b_proj)", t * sz.h)?,
        })
    }
}

impl Acts {
    /// Block `l`'s copies of the three groups.
    fn block(&mut self, l: usize) -> Work<'_> {
        let p = self.plan;
        Work {
            mix: &mut self.mix[SavePlan::set_of(p.mixer, l)],
            mlp: &mut self.mlp[SavePlan::set_of(p.mlp, l)],
            gu: &mut self.gu[SavePlan::set_of(p.gate_up, l)],
            b: &mut self.b,
        }
    }
}

/// One block's view of [`Acts`].
struct Work<'a> {
    mix: &'a mut MixWork,
    mlp: &'a mut MlpWork,
    gu: &'a mut GateUp,
    b: &'a mut CudaSlice<bf16>,
}

/// Backward temporaries (shared by all layers; see [`Work`] for the buffers the mixer's backward
/// borrows from the MLP's).
struct BwdTemps<K: BufKind = OnGpu> {
    dres: K::Buf<f32>,
    dres_bf: K::Buf<bf16>,
    /// fp32 [T, max(d, kd)]: also the delta rule's dk (bf16).
    dacc: K::Buf<f32>,
    /// [T, slot]: the MLP's dact; in the mixer d_normed, then dq_conv‖dk_conv.
    dact: K::Buf<bf16>,
    /// [T, vd]: the mixer's d_o, then dv_conv.
    d_o: K::Buf<bf16>,
    /// Under GVA, the delta rule's dq‖dk per value head ([T, kx] each; `Sz::rule_dqk_len`), summed
    /// per q/k head into the buffers that otherwise receive them (x_mid, dacc).
    rule_dqk: K::Buf<bf16>,
    /// The delta rule's other gradients (dv bf16, the rest f32).
    rule_dv: K::Buf<bf16>,
    rule_dg: K::Buf<f32>,
    rule_dbeta: K::Buf<f32>,
    rule_dh0: K::Buf<f32>,
    /// da‖db: [T, H] each, one after the other (the attention norm's low-rank addend).
    dab: K::Buf<bf16>,
    scratch: K::Buf<f32>,
}

impl<K: BufKind> BwdTemps<K> {
    fn new_in<A: Alloc<K = K>>(al: &mut A, sz: Sz, t: usize, seqs: usize) -> Result<Self> {
        let c = MemCategory::Backward;
        let Sz {
            d,
            h,
            dk,
            dv,
            kd,
            vd,
            w,
            ..
        } = sz;
        let scratch_len = [
            ops::norm_bwd_scratch_len(d),
            ops::norm_bwd_scratch_len(dv),
            ops::gates_bwd_scratch_len(h),
            ops::conv_bwd_scratch_len(kd.max(vd), w),
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let ts = t * sz.slot();
        Ok(BwdTemps {
            dres: al.buf(c, "dres (f32)", t * d)?,
            dres_bf: al.buf(c, "dres_bf", t * d)?,
            dacc: al.buf(c, "dacc (f32) / rule dk (bf16)", t * d.max(kd))?,
            dact: al.buf(c, "dact / d_normed, dq_conv, dk_conv", ts)?,
            d_o: al.buf(c, "d_o / dv_conv", t * vd)?,
            rule_dqk: al.buf(c, "rule dq, dk per value head (GVA)", sz.rule_dqk_len(t))?,
            rule_dv: al.buf(c, "rule dv", t * vd)?,
            rule_dg: al.buf(c, "rule dg (f32)", t * h)?,
            rule_dbeta: al.buf(c, "rule dbeta (f32)", t * h)?,
            rule_dh0: al.buf(c, "rule dh0 (f32)", seqs * h * dk * dv)?,
            dab: al.buf(c, "da, db", 2 * t * h)?,
            scratch: al.buf(c, "reduction scratch (f32)", scratch_len)?,
        })
    }
}

/// Every buffer of [`GpuModel`] except the delta-rule and cuBLASLt workspaces, built by one
/// function for the GPU and for the memory account.
struct Buffers<K: BufKind = OnGpu> {
    params: K::Buf<f32>,
    params_bf16: K::Buf<bf16>,
    grads: K::Buf<f32>,
    tokens: K::Buf<u32>,
    targets: K::Buf<u32>,
    cu_dev: K::Buf<i32>,
    xs: Vec<K::Buf<f32>>,
    saved: Vec<Saved<K>>,
    acts: Acts<K>,
    tmp_d: K::Buf<bf16>,
    rstd_f: K::Buf<f32>,
    normed_f: K::Buf<bf16>,
    logits: K::Buf<bf16>,
    lse: K::Buf<f32>,
    losses: K::Buf<f32>,
    stats: K::Buf<f64>,
    bwd: BwdTemps<K>,
}

#[allow(clippy::too_many_arguments)]
fn buffers<A: Alloc>(
    al: &mut A,
    sz: Sz,
    n_params: usize,
    n_layers: usize,
    t: usize,
    seqs: usize,
    plan: SavePlan,
) -> Result<Buffers<A::K>> {
    use MemCategory as C;
    plan.check(n_layers)?;
    let d = sz.d;
    let stored = if plan.recompute { 1 } else { n_layers };
    Ok(Buffers {
        params: al.buf(C::Parameters, "master weights (f32)", n_params)?,
        params_bf16: al.buf(C::Parameters, "working weights (bf16)", n_params)?,
        grads: al.buf(C::Gradients, "gradients (f32)", n_params)?,
        tokens: al.buf(C::Misc, "tokens (u32)", t)?,
        targets: al.buf(C::Misc, "targets (u32)", t)?,
        cu_dev: al.buf(C::Misc, "cu_seqlens (i32)", seqs + 1)?,
        xs: (0..=n_layers)
            .map(|_| al.buf(C::Residual, "residual (f32)", t * d))
            .collect::<Result<Vec<_>>>()?,
        saved: (0..stored)
            .map(|_| Saved::new_in(al, sz, t, seqs))
            .collect::<Result<Vec<_>>>()?,
        acts: Acts::new_in(al, plan, sz, t)?,
        tmp_d: al.buf(C::BlockWork, "embedding / mlp down output", t * d)?,
        rstd_f: al.buf(C::Logits, "final rstd (f32)", t)?,
        normed_f: al.buf(C::Logits, "final normed", t * d)?,
        logits: al.buf(
            C::Logits,
            "logits / dlogits",
            logit_rows(t, sz.vocab) * sz.vocab,
        )?,
        lse: al.buf(C::Logits, "lse (f32)", t)?,
        losses: al.buf(C::Logits, "losses (f32)", t)?,
        stats: al.buf(C::Logits, "loss stats (f64)", 2)?,
        bwd: BwdTemps::new_in(al, sz, t, seqs)?,
    })
}

/// The most logits (elements) the logits buffer holds: 256 Mi, 512 MiB of bf16. A forward over
/// more tokens than `logit_rows` forms them a block of rows at a time where they are consumed
/// (the cross-entropy and its backward, evaluation, downloads); at the 1.3B preset's 32,768
/// tokens × 32,000 that is 4 blocks, 1.6 GB less than the whole [tokens, vocab].
const LOGITS_BUDGET: usize = 1 << 28;

/// Rows of the logits buffer for forwards of up to `max_tokens` tokens: all of them when they fit
/// [`LOGITS_BUDGET`], else the fewest equal blocks (a multiple of 64 rows) that do.
fn logit_rows(max_tokens: usize, vocab: usize) -> usize {
    let per = (LOGITS_BUDGET / vocab.max(1)).max(1);
    if max_tokens <= per {
        return max_tokens;
    }
    let blocks = max_tokens.div_ceil(per);
    max_tokens.div_ceil(blocks).next_multiple_of(64).min(per)
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
    /// What each block keeps for its backward (see [`SavePlan`]); with `recompute`, one
    /// block's activations and each block's forward re-run before its backward.
    plan: SavePlan,
    /// Named timings of the launches of a step (`enable_profile`).
    profile: Option<OpProfile>,
    /// fp32 master parameters (the CPU layout).
    pub params: CudaSlice<f32>,
    /// bf16 working copy of `params`.
    pub params_bf16: CudaSlice<bf16>,
    /// fp32 parameter gradients, accumulated by [`GpuModel::loss_and_backward`].
    pub grads: CudaSlice<f32>,
    lin: Linears,
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
    saved: Vec<Saved>,
    acts: Acts,
    tmp_d: CudaSlice<bf16>,
    rstd_f: CudaSlice<f32>,
    normed_f: CudaSlice<bf16>,
    /// [logit_rows, vocab] bf16: the logits of a forward over at most `logit_rows` tokens, else
    /// of one block of rows at a time; after the backward, the logits' gradient.
    logits: CudaSlice<bf16>,
    logit_rows: usize,
    lse: CudaSlice<f32>,
    losses: CudaSlice<f32>,
    stats: CudaSlice<f64>,
    bwd: BwdTemps,
}

fn lookup(model: &Model, name: &str) -> Result<Range<usize>> {
    model
        .layout
        .get(name)
        .map(|p| p.range())
        .ok_or_else(|| anyhow!("GpuModel: the model has no parameter `{name}`"))
}

/// What every block's forward reads besides its own buffers.
struct BlockCtx<'a> {
    gpu: &'a Gpu,
    prof: Option<&'a OpProfile>,
    lin: &'a Linears,
    p16: &'a CudaSlice<bf16>,
    p32: &'a CudaSlice<f32>,
    sz: Sz,
    n: usize,
    /// The packing of the n tokens (unused, empty, by [`Core::Decode`]).
    cu: CudaView<'a, i32>,
    cu_seqlens: &'a [usize],
    /// Whether the chunked delta rule saves T for the backward ([`Saved::t`]): not in the
    /// forward of a `recompute` step, whose backward re-runs each block's forward.
    save_t: bool,
}

impl<'a> BlockCtx<'a> {
    /// The bf16 parameters in `r`.
    fn pv(&self, r: &Range<usize>) -> CudaView<'a, bf16> {
        self.p16.slice(r.clone())
    }

    /// A profile mark when `fwd` (the forward's own launches; the backward's recomputation is
    /// marked as a whole by its caller).
    fn mark(&self, fwd: bool, name: &'static str) -> Result<()> {
        if fwd {
            mark(self.prof, self.gpu, name)
        } else {
            Ok(())
        }
    }
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

// The pieces of a block's forward that its backward runs again (same kernels, same inputs, so
// the same values): each writes [`Work`] only.

/// h1, rstd1 = RMSNorm(x_in); with FP8, h1's codes beside it where `products` (h1's products
/// run next: not in the backward's recomputation, which only needs h1 for dW).
fn attn_norm(
    ctx: &BlockCtx,
    lr: &LayerRanges,
    x_in: &CudaView<f32>,
    wk: &mut Work,
    products: bool,
) -> Result<()> {
    let (n, d) = (ctx.n, ctx.sz.d);
    let h1 = wk.mix.h1.slice(..n * d);
    let codes = products
        .then(|| ctx.lin.x_codes(ctx.gpu, lr.index, XSite::H1, &h1, n, d))
        .flatten();
    rmsnorm_fwd_f32x(
        ctx.gpu,
        x_in,
        None,
        &ctx.pv(&lr.attn_norm),
        &mut wk.mix.h1.slice_mut(..n * d),
        &mut wk.mix.rstd1.slice_mut(..n),
        d,
        ctx.sz.eps,
        codes,
    )
}

/// The causal short convs of the packed q/k/v projections.
fn mixer_convs(
    ctx: &BlockCtx,
    lr: &LayerRanges,
    s: &Saved,
    wk: &mut Work,
    fwd: bool,
) -> Result<()> {
    let BlockCtx {
        gpu, sz, n, ref cu, ..
    } = *ctx;
    let Sz { kd, vd, w, .. } = sz;
    for (pre, wr, conv, ch) in [
        (&s.q_pre, &lr.q_conv, &mut wk.mix.q_conv, kd),
        (&s.k_pre, &lr.k_conv, &mut wk.mix.k_conv, kd),
        (&s.v_pre, &lr.v_conv, &mut wk.mix.v_conv, vd),
    ] {
        ops::conv_fwd(
            gpu,
            &pre.slice(..n * ch),
            &ctx.pv(wr),
            &mut conv.slice_mut(..n * ch),
            cu,
            ch,
            w,
        )?;
    }
    ctx.mark(fwd, "fwd short conv")
}

/// q, k = L2norm(SiLU(conv)) (one fused kernel each), v = SiLU(conv).
fn mixer_silu_norm(ctx: &BlockCtx, wk: &mut Work, fwd: bool) -> Result<()> {
    let BlockCtx { gpu, sz, n, .. } = *ctx;
    let Sz { dk, kd, vd, .. } = sz;
    for (conv, y, r) in [
        (&wk.mix.q_conv, &mut wk.mix.q, &mut wk.mix.qr),
        (&wk.mix.k_conv, &mut wk.mix.k, &mut wk.mix.kr),
    ] {
        ops::l2norm_silu_fwd(
            gpu,
            &conv.slice(..n * kd),
            &mut y.slice_mut(..n * kd),
            &mut r.slice_mut(..n * sz.hq),
            dk,
        )?;
    }
    ops::silu_fwd(
        gpu,
        &wk.mix.v_conv.slice(..n * vd),
        &mut wk.mix.v.slice_mut(..n * vd),
    )?;
    ctx.mark(fwd, "fwd silu, l2norm")
}

/// normed, o_rstd = gated RMSNorm(o, gate).
fn out_norm(ctx: &BlockCtx, lr: &LayerRanges, s: &Saved, wk: &mut Work, fwd: bool) -> Result<()> {
    let BlockCtx { gpu, sz, n, .. } = *ctx;
    let nv = n * sz.vd;
    ops::gated_rmsnorm_fwd(
        gpu,
        &s.o.slice(..nv),
        &s.gate.slice(..nv),
        &ctx.pv(&lr.o_norm),
        &mut wk.mix.normed.slice_mut(..nv),
        &mut wk.mix.o_rstd.slice_mut(..n * sz.h),
        sz.eps,
    )?;
    ctx.mark(fwd, "fwd gated rmsnorm")
}

/// x_mid = x_in + mix; h2, rstd2 = RMSNorm(x_mid) (one kernel); with FP8, h2's codes beside h2
/// where `products` (the gate/up product runs next).
fn mlp_norm(
    ctx: &BlockCtx,
    lr: &LayerRanges,
    x_in: &CudaView<f32>,
    s: &Saved,
    wk: &mut Work,
    (fwd, products): (bool, bool),
) -> Result<()> {
    let Sz { d, eps, .. } = ctx.sz;
    let nd = ctx.n * d;
    let h2 = wk.mlp.h2.slice(..nd);
    let codes = products
        .then(|| ctx.lin.x_codes(ctx.gpu, lr.index, XSite::H2, &h2, ctx.n, d))
        .flatten();
    rmsnorm_fwd_f32x(
        ctx.gpu,
        x_in,
        Some(ResidualAdd {
            add: s.mix.slice(..nd),
            sum: &mut wk.mlp.x_mid.slice_mut(..nd),
        }),
        &ctx.pv(&lr.mlp_norm),
        &mut wk.mlp.h2.slice_mut(..nd),
        &mut wk.mlp.rstd2.slice_mut(..ctx.n),
        d,
        eps,
        codes,
    )?;
    ctx.mark(fwd, "fwd rmsnorm")
}

/// gate‖up = h2 · [gate; up]ᵀ: one matmul (the two weights are adjacent in the layout).
fn mlp_gate_up(ctx: &BlockCtx, lr: &LayerRanges, wk: &mut Work, fwd: bool) -> Result<()> {
    let BlockCtx {
        gpu, lin, sz, n, ..
    } = *ctx;
    let Sz { d, inter, .. } = sz;
    lin.fwd(
        gpu,
        Some((lr.index, XSite::H2, WSite::GateUp)),
        &wk.mlp.h2.slice(..n * d),
        &ctx.pv(&(lr.gate_proj.start..lr.up_proj.end)),
        &mut wk.gu.buf.slice_mut(..2 * n * inter),
        n,
        d,
        2 * inter,
    )?;
    ctx.mark(fwd, "fwd mlp gate/up")
}

/// act = SiLU(gate)·up (with FP8, its codes for the down product in the same kernel).
fn mlp_swiglu(ctx: &BlockCtx, lr: &LayerRanges, wk: &mut Work, fwd: bool) -> Result<()> {
    let Sz { d, inter, .. } = ctx.sz;
    let n = ctx.n;
    let gu = wk.gu.buf.slice(..2 * n * inter);
    let act = &mut wk.mlp.act.slice_mut(..n * inter);
    if !ctx
        .lin
        .swiglu_codes(ctx.gpu, lr.index, &gu, Act::Written(act), n, inter, d)?
    {
        ops::swiglu_fwd(ctx.gpu, &gu, act, inter)?;
    }
    ctx.mark(fwd, "fwd swiglu")
}

/// One block's forward, x_out = block(x_in), keeping in `s` what its backward needs and leaving
/// the block's other activations in `wk` (run again before the backward of the block when
/// activations are recomputed).
#[allow(clippy::too_many_arguments)]
fn block_forward(
    ctx: &BlockCtx,
    lr: &LayerRanges,
    x_in: &CudaView<f32>,
    x_out: &mut CudaViewMut<f32>,
    s: &mut Saved,
    wk: &mut Work,
    core: Core,
    tmp_d: &mut CudaSlice<bf16>,
) -> Result<()> {
    let BlockCtx {
        gpu, lin, sz, n, ..
    } = *ctx;
    let Sz {
        d,
        inter,
        h,
        kd,
        vd,
        ..
    } = sz;
    attn_norm(ctx, lr, x_in, wk, true)?;
    mark(ctx.prof, gpu, "fwd rmsnorm")?;
    // Mixer projections.
    let h1 = wk.mix.h1.slice(..n * d);
    let at = |w| Some((lr.index, XSite::H1, w));
    for (wr, site, y, out) in [
        (&lr.q_proj, at(WSite::Q), &mut s.q_pre, kd),
        (&lr.k_proj, at(WSite::K), &mut s.k_pre, kd),
        (&lr.v_proj, at(WSite::V), &mut s.v_pre, vd),
        // Rank H: bf16 always.
        (&lr.a_proj, None, &mut s.a, h),
        (&lr.b_proj, None, &mut *wk.b, h),
    ] {
        lin.fwd(
            gpu,
            site,
            &h1,
            &ctx.pv(wr),
            &mut y.slice_mut(..n * out),
            n,
            d,
            out,
        )?;
    }
    if let Some(bias) = &lr.b_bias {
        add_bias_bf16(gpu, &mut wk.b.slice_mut(..n * h), &ctx.pv(bias))?;
    }
    lin.fwd(
        gpu,
        at(WSite::G),
        &h1,
        &ctx.pv(&lr.g_proj),
        &mut s.gate.slice_mut(..n * vd),
        n,
        d,
        vd,
    )?;
    mark(ctx.prof, gpu, "fwd mixer projections")?;
    match core {
        Core::Chunk(ws) => chunk_mixer(ctx, lr, s, wk, ws)?,
        Core::Decode(step, cache) => decode_mixer(ctx, lr, s, wk, step, cache)?,
    }
    out_norm(ctx, lr, s, wk, true)?;
    lin.fwd(
        gpu,
        Some((lr.index, XSite::Normed, WSite::O)),
        &wk.mix.normed.slice(..n * vd),
        &ctx.pv(&lr.o_proj),
        &mut s.mix.slice_mut(..n * d),
        n,
        vd,
        d,
    )?;
    mark(ctx.prof, gpu, "fwd o_proj")?;
    // MLP.
    mlp_norm(ctx, lr, x_in, s, wk, (true, true))?;
    mlp_gate_up(ctx, lr, wk, true)?;
    mlp_swiglu(ctx, lr, wk, true)?;
    let mut down = tmp_d.slice_mut(..n * d);
    lin.fwd(
        gpu,
        Some((lr.index, XSite::Act, WSite::Down)),
        &wk.mlp.act.slice(..n * inter),
        &ctx.pv(&lr.down_proj),
        &mut down,
        n,
        inter,
        d,
    )?;
    add_f32_bf16(gpu, &wk.mlp.x_mid.slice(..n * d), &down, x_out)?;
    mark(ctx.prof, gpu, "fwd mlp down, residual")?;
    Ok(())
}

/// The packed-sequence mixer core of [`block_forward`]: q/k/v convs, SiLU, L2 norm, gates, and
/// the chunked delta rule into `s.o`.
fn chunk_mixer(
    ctx: &BlockCtx,
    lr: &LayerRanges,
    s: &mut Saved,
    wk: &mut Work,
    ws: &mut DeltaRuleWorkspace,
) -> Result<()> {
    let BlockCtx {
        gpu,
        p32,
        sz,
        n,
        cu_seqlens,
        ..
    } = *ctx;
    let Sz { h, dk, vd, .. } = sz;
    mixer_convs(ctx, lr, s, wk, true)?;
    mixer_silu_norm(ctx, wk, true)?;
    ops::gates_fwd(
        gpu,
        &s.a.slice(..n * h),
        &wk.b.slice(..n * h),
        &p32.slice(lr.a_log.clone()),
        &p32.slice(lr.dt_bias.clone()),
        &mut s.g.slice_mut(..n * h),
        &mut s.beta.slice_mut(..n * h),
        sz.beta_scale,
    )?;
    mark(ctx.prof, gpu, "fwd gates")?;
    let nk = n * sz.kd;
    let inp = ChunkInputs {
        q: wk.mix.q.slice(..nk),
        k: wk.mix.k.slice(..nk),
        group: sz.group(),
        v: wk.mix.v.slice(..n * vd),
        g: s.g.slice(..n * h),
        beta: s.beta.slice(..n * h),
        scale: 1.0 / (dk as f32).sqrt(),
        initial_state: None,
        cu_seqlens,
    };
    // T for the backward (see `Saved::t`), unless this forward is not the one the backward
    // follows (`recompute`: the backward re-runs it).
    let mut t = s.t.as_view_mut();
    let save_t = ctx.save_t.then_some(&mut t);
    chunk_forward(gpu, ws, &inp, &mut s.o.slice_mut(..n * vd), None, save_t)?;
    mark(ctx.prof, gpu, "fwd delta rule")?;
    Ok(())
}

/// The decode mixer core of [`block_forward`] (one token per sequence, n = N): each conv steps
/// on its cache of raw inputs ([N, channels, W], oldest first) and is followed by SiLU; a and b
/// are widened to f32 (into the `g` / `beta` buffers, which the decode path does not otherwise
/// use); the fused kernel then L2-normalises q and k (eps 1e-6), takes β = σ(b),
/// g = −exp(A_log)·softplus(a + dt_bias), advances the state and writes `s.o` — the same math
/// as `model::mixer::decode_step`, with the read-out scale K^{-1/2}.
fn decode_mixer(
    ctx: &BlockCtx,
    lr: &LayerRanges,
    s: &mut Saved,
    wk: &mut Work,
    step: &DecodeStep,
    cache: &mut LayerCache,
) -> Result<()> {
    let BlockCtx {
        gpu, p32, sz, n, ..
    } = *ctx;
    let Sz {
        h, dk, kd, vd, w, ..
    } = sz;
    for (pre, wr, conv, c, ch) in [
        (
            &s.q_pre,
            &lr.q_conv,
            &mut wk.mix.q_conv,
            &mut cache.conv_q,
            kd,
        ),
        (
            &s.k_pre,
            &lr.k_conv,
            &mut wk.mix.k_conv,
            &mut cache.conv_k,
            kd,
        ),
        (
            &s.v_pre,
            &lr.v_conv,
            &mut wk.mix.v_conv,
            &mut cache.conv_v,
            vd,
        ),
    ] {
        ops::conv_step(
            gpu,
            &pre.slice(..n * ch),
            &ctx.pv(wr),
            &mut c.slice_mut(..n * ch * w),
            &mut conv.slice_mut(..n * ch),
            ch,
            w,
        )?;
    }
    mark(ctx.prof, gpu, "decode short conv")?;
    // SiLU only: the decode kernel normalises q and k itself.
    for (conv, y, ch) in [
        (&wk.mix.q_conv, &mut wk.mix.q, kd),
        (&wk.mix.k_conv, &mut wk.mix.k, kd),
        (&wk.mix.v_conv, &mut wk.mix.v, vd),
    ] {
        ops::silu_fwd(gpu, &conv.slice(..n * ch), &mut y.slice_mut(..n * ch))?;
    }
    ops::cast_bf16_to_f32(gpu, &s.a.slice(..n * h), &mut s.g.slice_mut(..n * h))?;
    ops::cast_bf16_to_f32(gpu, &wk.b.slice(..n * h), &mut s.beta.slice_mut(..n * h))?;
    mark(ctx.prof, gpu, "decode silu, casts")?;
    let inp = DecodeInputs {
        q: wk.mix.q.slice(..n * kd),
        k: wk.mix.k.slice(..n * kd),
        v: wk.mix.v.slice(..n * vd),
        a: s.g.slice(..n * h),
        b: s.beta.slice(..n * h),
        a_log: p32.slice(lr.a_log.clone()),
        dt_bias: p32.slice(lr.dt_bias.clone()),
        scale: 1.0 / (dk as f32).sqrt(),
        beta_scale: sz.beta_scale as f32,
        group: sz.group(),
    };
    let nn = cache.state.len();
    step.run(
        gpu,
        &inp,
        &mut cache.state.slice_mut(..nn),
        &mut s.o.slice_mut(..n * vd),
    )?;
    mark(ctx.prof, gpu, "decode delta rule")?;
    Ok(())
}

/// Whether the CUDA kernels support the model's sizes (head dims, conv width, norm widths,
/// heads); the error says which does not fit.
pub fn check_model(model: &Model) -> Result<()> {
    let md = model.mixer_dims();
    super::delta_rule::check_dims(md.rule())?;
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
        md.v_heads <= 1024,
        "GpuModel: {} value heads exceed the gates kernel's limit of 1024",
        md.v_heads
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
        Self::new_with(gpu, model, params, max_tokens, max_seqs, SavePlan::lean())
    }

    /// The device memory [`GpuModel::new_with`] allocates for these arguments, buffer by buffer
    /// (computed by the same code that sizes the allocations; no GPU needed).
    pub fn memory_account(
        model: &Model,
        max_tokens: usize,
        max_seqs: usize,
        plan: SavePlan,
    ) -> Result<MemoryAccount> {
        model.config.validate()?;
        let sz = Sz::of(model);
        let mut al = CountAlloc::default();
        buffers(
            &mut al,
            sz,
            model.layout.total,
            model.config.num_hidden_layers,
            max_tokens,
            max_seqs,
            plan,
        )?;
        let mut acc = al.account;
        memory::delta_rule_workspace(&mut acc, sz.rule(), max_tokens, max_seqs, Backward::SavedT);
        acc.add(
            MemCategory::Misc,
            "cuBLASLt workspace",
            1,
            super::blas::WORKSPACE_BYTES,
            1,
        );
        Ok(acc)
    }

    /// As [`GpuModel::new`], keeping for the backward what `plan` says (with `plan.recompute`,
    /// activations are kept for one block at a time and each block's forward is run again
    /// before its backward).
    pub fn new_with(
        gpu: &Gpu,
        model: &Model,
        params: &[f32],
        max_tokens: usize,
        max_seqs: usize,
        plan: SavePlan,
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
        let sz = Sz::of(model);
        check_model(model)?;
        if let Some((i, v)) = params.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            bail!("GpuModel: parameter {i} is not finite ({v})");
        }
        let layers = (0..c.num_hidden_layers)
            .map(|i| -> Result<LayerRanges> {
                let a = |s: &str| lookup(model, &format!("model.layers.{i}.attn.{s}"));
                let m = |s: &str| lookup(model, &format!("model.layers.{i}.{s}"));
                let r = LayerRanges {
                    index: i,
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
                // q‖k‖v, a‖b and gate‖up are taken as one weight matrix each.
                ensure!(
                    r.q_proj.end == r.k_proj.start
                        && r.k_proj.end == r.v_proj.start
                        && r.a_proj.end == r.b_proj.start
                        && r.gate_proj.end == r.up_proj.start,
                    "GpuModel: layer {i}: k_proj must follow q_proj, v_proj k_proj, b_proj \
                     a_proj and up_proj gate_proj in the layout"
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

        let Buffers {
            params: mut master,
            mut params_bf16,
            grads,
            tokens,
            targets,
            cu_dev,
            xs,
            saved,
            acts,
            tmp_d,
            rstd_f,
            normed_f,
            logits,
            lse,
            losses,
            stats,
            bwd,
        } = buffers(
            &mut GpuAlloc { gpu },
            sz,
            params.len(),
            layers.len(),
            max_tokens,
            max_seqs,
            plan,
        )?;
        gpu.stream
            .memcpy_htod(params, &mut master)
            .context("uploading the parameters")?;
        ops::cast_f32_to_bf16(gpu, &master, &mut params_bf16.slice_mut(..params.len()))?;
        // Every backward gets the T its forward saved (`Saved::t`): no T in the workspace.
        let ws = DeltaRuleWorkspace::new(gpu, sz.rule(), max_tokens, max_seqs, Backward::SavedT)?;
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
            plan,
            profile: None,
            params: master,
            params_bf16,
            grads,
            lin: Linears::new(blas),
            ws,
            tokens,
            targets,
            cu_dev,
            cu_host: Vec::new(),
            n: 0,
            xs,
            saved,
            acts,
            tmp_d,
            rstd_f,
            normed_f,
            logits,
            logit_rows: logit_rows(max_tokens, sz.vocab),
            lse,
            losses,
            stats,
            bwd,
        };
        // Also keeps `params` alive until the copy above has run.
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

    /// The logits of the pending forward, [tokens, vocab] (bf16 values, widened), downloaded a
    /// block of rows at a time (see [`LOGITS_BUDGET`]). The forward stays pending.
    pub fn download_logits(&mut self, gpu: &Gpu) -> Result<Vec<f32>> {
        let (n, vocab) = (self.n, self.sz.vocab);
        ensure!(n > 0, "GpuModel::download_logits: no forward pending");
        let mut out = Vec::with_capacity(n * vocab);
        for (r0, m) in self.logit_blocks(n) {
            self.head_block(r0, m, n)?;
            out.extend(super::buffer::download_bf16(
                gpu,
                &self.logits.slice(..m * vocab),
            )?);
        }
        Ok(out)
    }

    /// Forms the logits in blocks of at most `rows` rows even where the buffer holds more (the
    /// self-test's check of the blocked path at small sizes).
    pub fn limit_logit_rows(&mut self, rows: usize) {
        self.logit_rows = self.logit_rows.min(rows.max(1));
    }

    /// The blocks of rows (start, rows) in which the logits of an `n`-token forward are formed:
    /// one when they fit the buffer.
    fn logit_blocks(&self, n: usize) -> impl Iterator<Item = (usize, usize)> {
        let rows = self.logit_rows;
        (0..n).step_by(rows).map(move |r0| (r0, rows.min(n - r0)))
    }

    /// Forms the logits of rows [r0, r0 + m) of an `n`-token forward in the logits buffer. A
    /// forward that fits the buffer formed them all already.
    fn head_block(&mut self, r0: usize, m: usize, n: usize) -> Result<()> {
        if n <= self.logit_rows {
            return Ok(());
        }
        self.head_rows(r0, m)
    }

    /// The logits of rows [r0, r0 + m) into the start of the logits buffer.
    fn head_rows(&mut self, r0: usize, m: usize) -> Result<()> {
        let Sz { d, vocab, .. } = self.sz;
        fwd_bf16(
            &self.lin.blas,
            &self.normed_f.slice(r0 * d..(r0 + m) * d),
            &self.params_bf16.slice(self.head.clone()),
            &mut self.logits.slice_mut(..m * vocab),
            m,
            d,
            vocab,
        )
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
        for s in &mut self.saved {
            for b in [
                &mut s.q_pre,
                &mut s.k_pre,
                &mut s.v_pre,
                &mut s.a,
                &mut s.gate,
                &mut s.o,
                &mut s.mix,
            ] {
                poison(gpu, b)?;
            }
            poison(gpu, &mut s.g)?;
            poison(gpu, &mut s.beta)?;
        }
        let a = &mut self.acts;
        poison(gpu, &mut a.b)?;
        for m in &mut a.mix {
            for x in [
                &mut m.h1,
                &mut m.q_conv,
                &mut m.k_conv,
                &mut m.v_conv,
                &mut m.q,
                &mut m.k,
                &mut m.v,
                &mut m.normed,
            ] {
                poison(gpu, x)?;
            }
            for x in [&mut m.rstd1, &mut m.qr, &mut m.kr, &mut m.o_rstd] {
                poison(gpu, x)?;
            }
        }
        for m in &mut a.mlp {
            poison(gpu, &mut m.h2)?;
            poison(gpu, &mut m.act)?;
            poison(gpu, &mut m.x_mid)?;
            poison(gpu, &mut m.rstd2)?;
        }
        for g in &mut a.gu {
            poison(gpu, &mut g.buf)?;
        }
        for b in [&mut self.tmp_d, &mut self.normed_f, &mut self.logits] {
            poison(gpu, b)?;
        }
        for b in [&mut self.rstd_f, &mut self.lse, &mut self.losses] {
            poison(gpu, b)?;
        }
        let b = &mut self.bwd;
        for x in [
            &mut b.dres_bf,
            &mut b.dact,
            &mut b.d_o,
            &mut b.rule_dv,
            &mut b.dab,
        ] {
            poison(gpu, x)?;
        }
        for x in [
            &mut b.dres,
            &mut b.dacc,
            &mut b.rule_dg,
            &mut b.rule_dbeta,
            &mut b.rule_dh0,
        ] {
            poison(gpu, x)?;
        }
        Ok(())
    }

    /// Forward over `tokens` packed by `cu_seqlens`: computes the logits (bf16, see
    /// [`GpuModel::download_logits`]; a block of rows at a time where they exceed the logits
    /// buffer) and keeps what [`GpuModel::loss_and_backward`] needs.
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
    /// (advancing the caches). The logits [N, vocab] are then [`GpuModel::download_logits`]. No
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
        let Sz { d, eps, .. } = sz;
        let cu_seqlens: &[usize] = if decode.is_some() { &[] } else { &self.cu_host };
        let p16 = &self.params_bf16;
        let pv = |r: &Range<usize>| p16.slice(r.clone());
        let lin = &self.lin;
        lin.new_pass();
        let ctx = BlockCtx {
            gpu,
            prof: self.profile.as_ref(),
            lin,
            p16,
            p32: &self.params,
            sz,
            n,
            cu: self.cu_dev.slice(..cu_seqlens.len()),
            cu_seqlens,
            save_t: !self.plan.recompute,
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
            let s = &mut self.saved[if self.plan.recompute { 0 } else { l }];
            let core = match &mut decode {
                Some((step, caches)) => Core::Decode(step, &mut caches[l]),
                None => Core::Chunk(&mut self.ws),
            };
            block_forward(
                &ctx,
                lr,
                &x_in,
                &mut x_out,
                s,
                &mut self.acts.block(l),
                core,
                &mut self.tmp_d,
            )?;
        }
        let x_final = self.xs[self.layers.len()].slice(..n * d);
        rmsnorm_fwd_f32x(
            gpu,
            &x_final,
            None,
            &pv(&self.norm),
            &mut self.normed_f.slice_mut(..n * d),
            &mut self.rstd_f.slice_mut(..n),
            d,
            eps,
            None,
        )?;
        // The logits now when they fit the buffer, else a block at a time where they are read.
        if n <= self.logit_rows {
            self.head_rows(0, n)?;
        }
        mark(self.profile.as_ref(), gpu, "fwd final norm, lm head")?;
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
        for (r0, m) in self.logit_blocks(n) {
            self.head_block(r0, m, n)?;
            self.ce_rows(gpu, r0, m)?;
        }
        self.ce_finalize(gpu, n, true)?;
        Ok(n)
    }

    /// Per-token losses and lse of rows [r0, r0 + m) (whose logits are in the buffer) against
    /// the uploaded targets.
    fn ce_rows(&mut self, gpu: &Gpu, r0: usize, m: usize) -> Result<()> {
        let vocab = self.sz.vocab;
        let r = r0..r0 + m;
        ops::cross_entropy_rows(
            gpu,
            &self.logits.slice(..m * vocab),
            &self.targets.slice(r.clone()),
            &mut self.lse.slice_mut(r.clone()),
            &mut self.losses.slice_mut(r),
            vocab,
        )
    }

    /// `stats` of the `n` rows: [mean loss, count] when `mean` (every row's loss formed), else
    /// [0, count].
    fn ce_finalize(&mut self, gpu: &Gpu, n: usize, mean: bool) -> Result<()> {
        let tg = self.targets.slice(..n);
        let losses = self.losses.slice(..n);
        ops::cross_entropy_finalize(gpu, mean.then_some(&losses), &tg, &mut self.stats)
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
            dv,
            kd,
            vd,
            w,
            ..
        } = sz;
        self.n = 0;
        // Where dq_pre‖dk_pre‖dv_pre go in the gate‖up buffer: behind d_gate (see `MixWork`).
        let dpre_at = self.max_tokens * vd;
        // Cross-entropy and the LM head's backward, a block of logit rows at a time: with more
        // than one block, the count of the mean first (from the targets alone) and the mean
        // after the last block.
        let blocks: Vec<_> = self.logit_blocks(n).collect();
        let one_block = blocks.len() == 1;
        if !one_block {
            self.ce_finalize(gpu, n, false)?;
        }
        for (r0, m) in blocks {
            self.head_block(r0, m, n)?;
            mark(self.profile.as_ref(), gpu, "fwd final norm, lm head")?;
            self.ce_rows(gpu, r0, m)?;
            if one_block {
                self.ce_finalize(gpu, n, true)?;
            }
            let r = r0..r0 + m;
            ops::cross_entropy_bwd_inplace(
                gpu,
                &mut self.logits.slice_mut(..m * vocab),
                &self.targets.slice(r.clone()),
                &self.lse.slice(r),
                &self.stats,
                vocab,
                scale,
            )?;
            mark(self.profile.as_ref(), gpu, "cross-entropy")?;
            let dl = self.logits.slice(..m * vocab);
            let head = self.params_bf16.slice(self.head.clone());
            dx_bf16::<f32>(
                &self.lin.blas,
                &dl,
                &head,
                &mut self.bwd.dacc.slice_mut(r0 * d..(r0 + m) * d),
                m,
                d,
                vocab,
                0.0,
            )?;
            dw_bf16(
                &self.lin.blas,
                &dl,
                &self.normed_f.slice(r0 * d..(r0 + m) * d),
                &mut self.grads.slice_mut(self.head.clone()),
                m,
                d,
                vocab,
            )?;
            mark(self.profile.as_ref(), gpu, "bwd lm head, final norm")?;
        }
        if !one_block {
            self.ce_finalize(gpu, n, true)?;
        }
        let p16 = &self.params_bf16;
        let p32 = &self.params;
        let pv = |r: &Range<usize>| p16.slice(r.clone());
        let grads = &mut self.grads;
        let lin = &self.lin;
        let b = &mut self.bwd;
        let nd = n * d;
        let cu = self.cu_dev.slice(..self.cu_host.len());
        let cu_seqlens = &self.cu_host[..];
        let nseq = cu_seqlens.len() - 1;

        // The final norm. Its input gradient is the last down projection's output gradient:
        // with FP8, its codes (`Linears::dy_codes`) instead of dres_bf.
        let down_codes = |b: &BwdTemps, layer: Option<&LayerRanges>| {
            layer.and_then(|lr| {
                let dres_bf = b.dres_bf.slice(..nd);
                lin.dy_codes(gpu, lr.index, DySite::Down, &dres_bf, n, sz.inter, d)
            })
        };
        let codes = down_codes(b, self.layers.last());
        rmsnorm_bwd_f32(
            gpu,
            &self.xs[self.layers.len()].slice(..nd),
            &pv(&self.norm),
            &self.rstd_f.slice(..n),
            &b.dacc.slice(..nd),
            None,
            &mut b.dres.slice_mut(..nd),
            Some(&mut b.dres_bf.slice_mut(..nd)),
            codes,
            false,
            &mut grads.slice_mut(self.norm.clone()),
            &mut b.scratch,
            d,
        )?;
        mark(self.profile.as_ref(), gpu, "bwd lm head, final norm")?;

        let ctx = BlockCtx {
            gpu,
            prof: self.profile.as_ref(),
            lin,
            p16,
            p32,
            sz,
            n,
            cu: self.cu_dev.slice(..cu_seqlens.len()),
            cu_seqlens,
            // The re-run forward of `recompute` saves the T that the block's backward reads.
            save_t: true,
        };
        let n_layers = self.layers.len();
        for (l, lr) in self.layers.iter().enumerate().rev() {
            let plan = self.plan;
            if plan.recompute {
                let (before, after) = self.xs.split_at_mut(l + 1);
                block_forward(
                    &ctx,
                    lr,
                    &before[l].slice(..nd),
                    &mut after[0].slice_mut(..nd),
                    &mut self.saved[0],
                    &mut self.acts.block(l),
                    Core::Chunk(&mut self.ws),
                    &mut self.tmp_d,
                )?;
            }
            // The block's copies of its activations (see `MixWork`) hold its forward's values
            // when the block owns them, when its forward ran last (the last block) or was just
            // re-run (`recompute`); otherwise its backward rewrites them from `saved` and the
            // residual stream, phase by phase, with the forward's kernels.
            let redo_gu = plan.recomputes(plan.gate_up, l, n_layers);
            let redo_mlp = plan.recomputes(plan.mlp, l, n_layers);
            let redo_mix = plan.recomputes(plan.mixer, l, n_layers);
            let s = &self.saved[if plan.recompute { 0 } else { l }];
            let wk = &mut self.acts.block(l);
            let x_in = self.xs[l].slice(..nd);
            let ni = n * inter;
            if redo_mlp {
                mlp_norm(&ctx, lr, &x_in, s, wk, (false, redo_gu))?;
            }
            if redo_gu {
                mlp_gate_up(&ctx, lr, wk, false)?;
            }
            // With FP8, act serves only down's weight gradient: its codes are enough.
            if redo_mlp
                && !lin.swiglu_codes(
                    gpu,
                    lr.index,
                    &wk.gu.buf.slice(..2 * ni),
                    Act::CodesOnly(&wk.mlp.act.slice(..ni)),
                    n,
                    inter,
                    d,
                )?
            {
                mlp_swiglu(&ctx, lr, wk, false)?;
            }
            if redo_mlp || redo_gu {
                mark(ctx.prof, gpu, "bwd recompute mlp")?;
            }
            // MLP: x_out = x_mid + down(silu(gate) ⊙ up).
            let dy = b.dres_bf.slice(..nd);
            lin.bwd::<bf16>(
                gpu,
                (lr.index, DySite::Down, WSite::Down, XSite::Act),
                &dy,
                &pv(&lr.down_proj),
                &wk.mlp.act.slice(..ni),
                (&mut b.dact.slice_mut(..ni), 0.0),
                &mut grads.slice_mut(lr.down_proj.clone()),
                n,
                inter,
                d,
            )?;
            mark(ctx.prof, gpu, "bwd mlp down")?;
            // d gate ‖ d up over gate ‖ up, then one matmul each for dx and dW.
            let ngu = 2 * ni;
            let fused = lin.swiglu_bwd_codes(
                gpu,
                lr.index,
                &wk.gu.buf.slice(..ngu),
                &b.dact.slice(..ni),
                n,
                d,
                inter,
            )?;
            if !fused {
                ops::swiglu_bwd(
                    gpu,
                    &mut wk.gu.buf.slice_mut(..ngu),
                    &b.dact.slice(..ni),
                    inter,
                )?;
            }
            mark(ctx.prof, gpu, "bwd swiglu")?;
            let dgu = wk.gu.buf.slice(..ngu);
            let gate_up = lr.gate_proj.start..lr.up_proj.end;
            lin.bwd::<f32>(
                gpu,
                (lr.index, DySite::GateUp, WSite::GateUp, XSite::H2),
                &dgu,
                &pv(&gate_up),
                &wk.mlp.h2.slice(..nd),
                (&mut b.dacc.slice_mut(..nd), 0.0),
                &mut grads.slice_mut(gate_up),
                n,
                d,
                2 * inter,
            )?;
            mark(ctx.prof, gpu, "bwd mlp gate/up")?;
            // The MLP norm's input gradient is o_proj's output gradient (its FP8 codes, as
            // above).
            let dres_bf = b.dres_bf.slice(..nd);
            let codes = lin.dy_codes(gpu, lr.index, DySite::O, &dres_bf, n, vd, d);
            rmsnorm_bwd_f32(
                gpu,
                &wk.mlp.x_mid.slice(..nd),
                &pv(&lr.mlp_norm),
                &wk.mlp.rstd2.slice(..n),
                &b.dacc.slice(..nd),
                None,
                &mut b.dres.slice_mut(..nd),
                Some(&mut b.dres_bf.slice_mut(..nd)),
                codes,
                true,
                &mut grads.slice_mut(lr.mlp_norm.clone()),
                &mut b.scratch,
                d,
            )?;
            mark(ctx.prof, gpu, "bwd rmsnorm")?;

            // Mixer: x_mid = x_in + o_proj(gated_norm(delta_rule(...))). From here on the MLP's
            // buffers are free: gate‖up, act, x_mid (work) and dact (temporary) hold the mixer's
            // gradients (see `Work`).
            if redo_mix {
                mixer_convs(&ctx, lr, s, wk, false)?;
                mixer_silu_norm(&ctx, wk, false)?;
                out_norm(&ctx, lr, s, wk, false)?;
                attn_norm(&ctx, lr, &x_in, wk, false)?;
                mark(ctx.prof, gpu, "bwd recompute mixer")?;
            }
            let dy = b.dres_bf.slice(..nd);
            let nv = n * vd;
            let nk = n * kd;
            // d_normed in dact.
            lin.bwd::<bf16>(
                gpu,
                (lr.index, DySite::O, WSite::O, XSite::Normed),
                &dy,
                &pv(&lr.o_proj),
                &wk.mix.normed.slice(..nv),
                (&mut b.dact.slice_mut(..nv), 0.0),
                &mut grads.slice_mut(lr.o_proj.clone()),
                n,
                vd,
                d,
            )?;
            mark(ctx.prof, gpu, "bwd o_proj")?;
            // d_o, and d_gate in the first half of gate‖up.
            ops::gated_rmsnorm_bwd(
                gpu,
                &s.o.slice(..nv),
                &s.gate.slice(..nv),
                &pv(&lr.o_norm),
                &wk.mix.o_rstd.slice(..n * h),
                &b.dact.slice(..nv),
                &mut b.d_o.slice_mut(..nv),
                &mut wk.gu.buf.slice_mut(..nv),
                &mut grads.slice_mut(lr.o_norm.clone()),
                &mut b.scratch,
            )?;
            mark(ctx.prof, gpu, "bwd gated rmsnorm")?;
            let inp = ChunkInputs {
                q: wk.mix.q.slice(..nk),
                k: wk.mix.k.slice(..nk),
                group: sz.group(),
                v: wk.mix.v.slice(..nv),
                g: s.g.slice(..n * h),
                beta: s.beta.slice(..n * h),
                scale: 1.0 / (dk as f32).sqrt(),
                initial_state: None,
                cu_seqlens,
            };
            let (nx, gva) = (n * sz.kx, sz.group() > 1);
            {
                // dq in x_mid, dk in dacc (bf16 in f32 buffers); under GVA per value head in
                // rule_dqk, summed into those below.
                // (Split at 0 without GVA, where rule_dqk is a one-element placeholder.)
                let (dq_x, mut dk_x) = b.rule_dqk.split_at_mut(if gva { nx } else { 0 });
                let (dq_out, dk_out) = if gva {
                    (dq_x, dk_x.slice_mut(..nx))
                } else {
                    (
                        bf16_in_f32_mut(&mut wk.mlp.x_mid, nk),
                        bf16_in_f32_mut(&mut b.dacc, nk),
                    )
                };
                let mut rg = ChunkGrads {
                    dq: dq_out,
                    dk: dk_out,
                    dv: b.rule_dv.slice_mut(..nv),
                    dg: b.rule_dg.slice_mut(..n * h),
                    dbeta: b.rule_dbeta.slice_mut(..n * h),
                    dh0: b.rule_dh0.slice_mut(..nseq * h * dk * dv),
                };
                let st = s.t.as_view();
                chunk_backward(
                    gpu,
                    &mut self.ws,
                    &inp,
                    &b.d_o.slice(..nv),
                    None,
                    Some(&st),
                    &mut rg,
                )?;
            }
            if gva {
                // GVA: the value heads that share a q/k head add their dq, dk (spec §B item 10).
                let g = sz.group();
                let mut dq = bf16_in_f32_mut(&mut wk.mlp.x_mid, nk);
                ops::sum_head_groups(gpu, &b.rule_dqk.slice(..nx), &mut dq, dk, g)?;
                let mut dkv = bf16_in_f32_mut(&mut b.dacc, nk);
                ops::sum_head_groups(gpu, &b.rule_dqk.slice(nx..2 * nx), &mut dkv, dk, g)?;
            }
            mark(ctx.prof, gpu, "bwd delta rule")?;
            {
                let (mut lo, mut hi) = grads.split_at_mut(lr.dt_bias.start);
                let mut d_a_log = lo.slice_mut(lr.a_log.clone());
                let mut d_dt = hi.slice_mut(..lr.dt_bias.len());
                let (mut da, mut rest) = b.dab.split_at_mut(n * h);
                let mut db = rest.slice_mut(..n * h);
                ops::gates_bwd(
                    gpu,
                    &s.a.slice(..n * h),
                    &s.beta.slice(..n * h),
                    &s.g.slice(..n * h),
                    &p32.slice(lr.a_log.clone()),
                    &p32.slice(lr.dt_bias.clone()),
                    &b.rule_dg.slice(..n * h),
                    &b.rule_dbeta.slice(..n * h),
                    &mut da,
                    &mut db,
                    &mut d_a_log,
                    &mut d_dt,
                    &mut b.scratch,
                    sz.beta_scale,
                )?;
            }
            if let Some(bias) = &lr.b_bias {
                colsum_acc(
                    gpu,
                    &b.dab.slice(n * h..2 * n * h),
                    &mut grads.slice_mut(bias.clone()),
                )?;
            }
            mark(ctx.prof, gpu, "bwd gates")?;
            // dq, dk through L2 norm and SiLU; dv through SiLU (the delta rule's gradients, bf16).
            // dq_conv‖dk_conv in dact (d_normed is dead), dv_conv in d_o (d_o is dead).
            {
                let (mut dq_conv, mut rest) = b.dact.split_at_mut(nk);
                let mut dk_conv = rest.slice_mut(..nk);
                l2norm_silu_bwd(
                    gpu,
                    &wk.mix.q_conv.slice(..nk),
                    &bf16_in_f32(&wk.mlp.x_mid, nk),
                    &mut dq_conv,
                    dk,
                )?;
                l2norm_silu_bwd(
                    gpu,
                    &wk.mix.k_conv.slice(..nk),
                    &bf16_in_f32(&b.dacc, nk),
                    &mut dk_conv,
                    dk,
                )?;
            }
            ops::silu_bwd(
                gpu,
                &wk.mix.v_conv.slice(..nv),
                &b.rule_dv.slice(..nv),
                &mut b.d_o.slice_mut(..nv),
            )?;
            mark(ctx.prof, gpu, "bwd silu, l2norm")?;
            // dq_pre‖dk_pre‖dv_pre side by side ([n, 2·kd + vd]: the q, k and v projections as
            // one matmul, their weights being adjacent), behind d_gate in gate‖up.
            let nqkv = 2 * nk + nv;
            let ld = 2 * kd + vd;
            {
                let (dq_conv, rest) = b.dact.split_at(nk);
                let dk_conv = rest.slice(..nk);
                let dv_conv = b.d_o.slice(..nv);
                // With FP8, the convs write the projections' gradient as its E5M2 codes.
                let dpre = wk.gu.buf.slice(dpre_at..dpre_at + nqkv);
                let codes = lin.dy_codes(gpu, lr.index, DySite::Qkv, &dpre, n, d, ld);
                for (pre, wr, dconv, ch, col) in [
                    (&s.q_pre, &lr.q_conv, &dq_conv, kd, 0),
                    (&s.k_pre, &lr.k_conv, &dk_conv, kd, kd),
                    (&s.v_pre, &lr.v_conv, &dv_conv, vd, 2 * kd),
                ] {
                    // Rows `ld` apart from column `col` (the views overlap, so each is taken in
                    // turn).
                    let at = dpre_at + col;
                    let strided = if n == 0 { 0 } else { (n - 1) * ld + ch };
                    ops::conv_bwd(
                        gpu,
                        &pre.slice(..n * ch),
                        &pv(wr),
                        &dconv.slice(..n * ch),
                        &mut wk.gu.buf.slice_mut(at..at + strided),
                        ld,
                        &mut grads.slice_mut(wr.clone()),
                        &mut b.scratch,
                        &cu,
                        ch,
                        w,
                        codes.map(|c| c.offset(col)),
                    )?;
                }
            }
            mark(ctx.prof, gpu, "bwd short conv")?;
            // Projections: dh1 = Σ dproj · W (fp32), dW += dprojᵀ · h1, q‖k‖v as one; a and b
            // (rank H each) join the norm's backward below.
            let h1 = wk.mix.h1.slice(..nd);
            let qkv = lr.q_proj.start..lr.v_proj.end;
            let ab = lr.a_proj.start..lr.b_proj.end;
            for (wr, ds, ws, dpv, out, beta) in [
                (
                    &qkv,
                    DySite::Qkv,
                    WSite::Qkv,
                    wk.gu.buf.slice(dpre_at..dpre_at + nqkv),
                    ld,
                    0.0,
                ),
                (
                    &lr.g_proj,
                    DySite::G,
                    WSite::G,
                    wk.gu.buf.slice(..nv),
                    vd,
                    1.0,
                ),
            ] {
                lin.bwd::<f32>(
                    gpu,
                    (lr.index, ds, ws, XSite::H1),
                    &dpv,
                    &pv(wr),
                    &h1,
                    (&mut b.dacc.slice_mut(..nd), beta),
                    &mut grads.slice_mut(wr.clone()),
                    n,
                    d,
                    out,
                )?;
            }
            for (wr, dpv) in [
                (&lr.a_proj, b.dab.slice(..n * h)),
                (&lr.b_proj, b.dab.slice(n * h..2 * n * h)),
            ] {
                let dw = &mut grads.slice_mut(wr.clone());
                dw_bf16(&lin.blas, &dpv, &h1, dw, n, d, h)?;
            }
            mark(ctx.prof, gpu, "bwd mixer projections")?;
            // The block below's down projection reads the input gradient (the embedding's
            // backward, in bf16, below the first block).
            let codes = down_codes(b, l.checked_sub(1).map(|i| &self.layers[i]));
            rmsnorm_bwd_f32(
                gpu,
                &x_in,
                &pv(&lr.attn_norm),
                &wk.mix.rstd1.slice(..n),
                &b.dacc.slice(..nd),
                Some(LowRank {
                    c: b.dab.slice(..2 * n * h),
                    v: pv(&ab),
                    r: h,
                    nb: 2,
                }),
                &mut b.dres.slice_mut(..nd),
                Some(&mut b.dres_bf.slice_mut(..nd)),
                codes,
                true,
                &mut grads.slice_mut(lr.attn_norm.clone()),
                &mut b.scratch,
                d,
            )?;
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
        lin.update_scales(gpu)?;
        Ok(())
    }

    /// The blocks' linear layers in FP8 from now on (`gdn train --fp8`; see `linear`).
    pub fn enable_fp8(&mut self, gpu: &Gpu) -> Result<()> {
        let z = fp8_sizes(self.sz, self.layers.len(), self.max_tokens);
        self.lin.enable_fp8(gpu, z)
    }

    /// The FP8 scales for a checkpoint ([`Linears::fp8_scales`]).
    pub fn fp8_scales(&self, gpu: &Gpu) -> Result<Option<Vec<NamedTensor>>> {
        self.lin.fp8_scales(gpu)
    }

    /// Restores saved FP8 scales ([`Linears::load_fp8_scales`]).
    pub fn load_fp8_scales(&mut self, gpu: &Gpu, tensors: &[NamedTensor]) -> Result<()> {
        self.lin.load_fp8_scales(gpu, tensors)
    }

    /// FP8 matmuls queued so far (see [`Linears::fp8_products`]).
    pub fn fp8_products(&self) -> u64 {
        self.lin.fp8_products()
    }

    /// The bytes [`GpuModel::enable_fp8`] allocates (for the memory account).
    pub fn fp8_bytes(model: &Model, max_tokens: usize) -> usize {
        let sz = Sz::of(model);
        Linears::fp8_bytes(&fp8_sizes(sz, model.config.num_hidden_layers, max_tokens))
    }
}

/// The largest FP8 operands of the blocks' products, for up to `t` tokens.
fn fp8_sizes(sz: Sz, layers: usize, t: usize) -> linear::Fp8Sizes {
    let Sz {
        d, kd, vd, inter, ..
    } = sz;
    linear::Fp8Sizes {
        layers,
        max_x: t * d.max(vd).max(inter),
        max_w: d * (2 * kd + vd).max(2 * inter),
        max_dy: t * (2 * kd + vd).max(2 * inter).max(d),
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemCategory as C;
    use super::*;

    /// The account of the small test configuration (d 64, 2 layers, 2 heads, K = V = 64,
    /// intermediate 128, vocab 64, conv 4, untied head) for 100 tokens in 3 sequences, against
    /// sizes worked out by hand from the buffers' shapes.
    #[test]
    fn memory_account_matches_hand_computed_sizes() {
        let model =
            Model::new(super::super::model_selftest::test_config(Default::default()).unwrap())
                .unwrap();
        // Embeddings 64·64 + head 64·64 + final norm 64 + 2 blocks of: norms 3·64, q/k/v/g/o
        // projections 5·128·64, a/b 2·2·64, A_log and dt_bias 2·2, convs 3·128·4, MLP 3·128·64.
        let per_block = 3 * 64 + 5 * 128 * 64 + 2 * 2 * 64 + 2 * 2 + 3 * 128 * 4 + 3 * 128 * 64;
        assert_eq!(model.layout.num_params(), 2 * 64 * 64 + 64 + 2 * per_block);
        // The flat buffers also hold the alignment gaps between parameters.
        let p = model.layout.total;
        let (t, seqs) = (100, 3);
        let acc = GpuModel::memory_account(&model, t, seqs, SavePlan::lean()).unwrap();
        assert_eq!(acc.category(C::Parameters), 6 * p);
        assert_eq!(acc.category(C::Gradients), 4 * p);
        // fp32 residual at the 3 block boundaries.
        assert_eq!(acc.category(C::Residual), 3 * t * 64 * 4);
        // q_pre, k_pre, v_pre, gate, o (bf16 [t, 128]), a (bf16 [t, 2]), g, β (f32 [t, 2]),
        // mix (bf16 [t, 64]), the delta rule's T (f32 [⌈100/64⌉ + 3 = 5 chunks, 2, 64, 64]) and
        // behind it the forward's P (bf16, the same shape), its flag (one f32) and room for the
        // segment states of a plan (4 f32 + A and X of 5 / 16 + 3 = 3 segments: f32 [3, 2, 64,
        // 64 + 64]), per block.
        let saved = 5 * t * 128 * 2
            + t * 2 * 2
            + 2 * t * 2 * 4
            + t * 64 * 2
            + 5 * 2 * 4096 * 4
            + 5 * 2 * 4096 * 2
            + 4
            + (4 + 3 * 2 * 64 * 128) * 4;
        assert_eq!(acc.category(C::SavedPerBlock), 2 * saved);
        // rstd1, rstd2 (f32 [t]); h1, h2, tmp_d (bf16 [t, 64]); b (bf16 [t, 2]); q/k/v conv and
        // q, k, v, normed (bf16 [t, 128]); qr, kr, o_rstd (f32 [t, 2]); x_mid (f32 [t, 128] =
        // max(d, kd)); gate‖up (bf16 [t, 512] = max(2 inter, 2 (kd + vd))), act (bf16 [t, 128]).
        let work = 2 * t * 4
            + 3 * t * 64 * 2
            + t * 2 * 2
            + 7 * t * 128 * 2
            + 3 * t * 2 * 4
            + t * 128 * 4
            + t * 512 * 2
            + t * 128 * 2;
        assert_eq!(acc.category(C::BlockWork), work);
        // dres (f32 [t, 64]), dres_bf (bf16 [t, 64]), dacc (f32 [t, 128]), dact (bf16 [t, 256]),
        // d_o (bf16 [t, 128]), rule dv (bf16 [t, 128]), dg, dβ (f32 [t, 2]), dh0 (f32 [3, 2, 64,
        // 64]), da, db (bf16 [t, 2]), scratch (f32: the conv backward's partial sums, the largest);
        // the GVA dq‖dk buffer's placeholder (2 bytes).
        let bwd = 2
            + t * 64 * 4
            + t * 64 * 2
            + t * 128 * 4
            + t * 256 * 2
            + t * 128 * 2
            + t * 128 * 2
            + 2 * t * 2 * 4
            + seqs * 2 * 64 * 64 * 4
            + 2 * t * 2 * 2
            + ops::conv_bwd_scratch_len(128, 4) * 4;
        assert_eq!(acc.category(C::Backward), bwd);
        // Final rstd, lse, losses (f32 [t]), normed (bf16 [t, 64]), logits (bf16 [t, 64]),
        // stats (2 f64).
        assert_eq!(
            acc.category(C::Logits),
            3 * t * 4 + t * 64 * 2 + t * 64 * 2 + 16
        );
        // Chunks: ⌈100/64⌉ + 3 = 5. Backward (T is saved per block, not here): dvloc bf16
        // [t, 2, 64], dh bf16 [5, 2, 64, 64], the ⟨h, dh⟩ partials f32 [5, 2, 64/16 · 4],
        // dvnew bf16 [t, 2, 64]; forward: ctab i32 [10], seq_chunk i32 [4], gc f32 [t, 2], the
        // decay record f32 [5, 2, 132], w, u, vnew bf16 [t, 2, 64], h bf16 [5, 2, 64, 64], and
        // (the warp-specialised forward serves K = V = 64) P bf16 [5, 2, 64, 64].
        let rule = 5 * 2 * 4096 * 2
            + 5 * 2 * 16 * 4
            + t * 128 * 2
            + t * 128 * 2
            + 10 * 4
            + 4 * 4
            + t * 2 * 4
            + 5 * 2 * 132 * 4
            + 3 * t * 128 * 2
            + 5 * 2 * 4096 * 2
            + 5 * 2 * 4096 * 2;
        assert_eq!(acc.category(C::DeltaRule), rule);
        // tokens, targets (u32 [t]), cu_seqlens (i32 [4]), cuBLASLt's 32 MiB.
        assert_eq!(acc.category(C::Misc), 2 * t * 4 + 4 * 4 + (32 << 20));
        let total: usize = acc.by_category().iter().map(|(_, b)| b).sum();
        assert_eq!(acc.total(), total);
        assert!(acc.table().contains("| **total** |"));

        // With `recompute`, one block's saved set.
        let rc = GpuModel::memory_account(&model, t, seqs, SavePlan::recompute()).unwrap();
        assert_eq!(rc.category(C::SavedPerBlock), saved);
        assert_eq!(rc.total(), acc.total() - saved);
        assert_eq!(acc.category(C::KeptPerBlock), 0);
        assert_eq!(rc.category(C::KeptPerBlock), 0);

        // The three groups of `Work`, one copy each: the mixer's rstd1 (f32 [t]), h1 (bf16
        // [t, 64]), q/k/v conv, q, k, v, normed (bf16 [t, 128]), qr, kr, o_rstd (f32 [t, 2]);
        // the MLP's x_mid (f32 [t, 128]), rstd2 (f32 [t]), h2 (bf16 [t, 64]), act (bf16
        // [t, 128]); gate‖up (bf16 [t, 512]). With b (bf16 [t, 2]) and tmp_d (bf16 [t, 64]) they
        // are the block work above.
        let mix = t * 4 + t * 64 * 2 + 7 * t * 128 * 2 + 3 * t * 2 * 4;
        let mlp = t * 128 * 4 + t * 4 + t * 64 * 2 + t * 128 * 2;
        let gu = t * 512 * 2;
        assert_eq!(mix + mlp + gu + t * 2 * 2 + t * 64 * 2, work);

        // `auto` with both blocks' gate/up kept: one more gate/up copy (block 0's), the rest as
        // lean.
        let au = GpuModel::memory_account(&model, t, seqs, SavePlan::gate_up(2)).unwrap();
        assert_eq!(au.category(C::KeptPerBlock), gu);
        assert_eq!(au.category(C::BlockWork), work);
        assert_eq!(au.total(), acc.total() + gu);
        assert!(au
            .table()
            .contains("| KeptPerBlock | mlp gate‖up / d_gate, dq_pre‖dk_pre‖dv_pre | 1 |"));

        // `all`: block 0 owns a copy of every group, block 1 the shared one.
        let all = GpuModel::memory_account(&model, t, seqs, SavePlan::all(2)).unwrap();
        assert_eq!(all.category(C::KeptPerBlock), mix + mlp + gu);
        assert_eq!(all.category(C::BlockWork), work);
        assert_eq!(all.category(C::SavedPerBlock), 2 * saved);
        assert_eq!(all.total(), acc.total() + mix + mlp + gu);

        // Plans the two blocks cannot hold.
        for bad in [
            SavePlan::gate_up(3),
            SavePlan {
                mlp: 2,
                ..SavePlan::lean()
            },
            SavePlan {
                gate_up: 2,
                ..SavePlan::recompute()
            },
        ] {
            assert!(
                GpuModel::memory_account(&model, t, seqs, bad).is_err(),
                "{bad:?}"
            );
        }
    }

    /// Which blocks recompute which group: with `sets` copies, blocks `sets − 1 ..` share the
    /// last one and recompute it, except the last block.
    #[test]
    fn save_plans_recompute_the_blocks_that_share_a_copy() {
        let n = 21;
        let redo = |p: SavePlan, sets: usize| -> Vec<usize> {
            (0..n).filter(|&l| p.recomputes(sets, l, n)).collect()
        };
        let lean = SavePlan::lean();
        assert_eq!(redo(lean, lean.gate_up), (0..20).collect::<Vec<_>>());
        let au = SavePlan::gate_up(5);
        assert_eq!(redo(au, au.gate_up), (4..20).collect::<Vec<_>>());
        assert_eq!(redo(au, au.mlp), (0..20).collect::<Vec<_>>());
        assert_eq!(SavePlan::set_of(au.gate_up, 3), 3);
        assert_eq!(SavePlan::set_of(au.gate_up, 4), 4);
        assert_eq!(SavePlan::set_of(au.gate_up, 20), 4);
        let all = SavePlan::all(n);
        for sets in [all.gate_up, all.mlp, all.mixer] {
            assert!(redo(all, sets).is_empty());
        }
        let rc = SavePlan::recompute();
        assert!(redo(rc, 1).is_empty());
        // `sets` copies spare `sets` blocks.
        for sets in 1..=n {
            let p = SavePlan::gate_up(sets);
            assert_eq!(redo(p, p.gate_up).len(), n - sets);
        }
    }

    /// `--save auto` takes the most gate/up copies that fit the budget; the fixed modes check it.
    #[test]
    fn auto_save_plan_fits_the_budget() {
        use crate::cuda::train::GpuTrainer;
        let model =
            Model::new(super::super::model_selftest::test_config(Default::default()).unwrap())
                .unwrap();
        let opt = crate::train::adamw::AdamW::new(
            crate::train::adamw::AdamWConfig::default(),
            &model.layout,
        );
        let (t, seqs) = (100, 3);
        let plan = |mode, budget| GpuTrainer::save_plan(&model, &opt, t, seqs, mode, budget, false);
        let lean = GpuTrainer::memory_account(&model, &opt, t, seqs, SavePlan::lean())
            .unwrap()
            .total();
        let gu = 2 * t * 256 * 2;
        let (p, acc) = plan(SaveMode::Auto, Some(lean + gu)).unwrap();
        assert_eq!(p, SavePlan::gate_up(2));
        assert_eq!(acc.total(), lean + gu);
        let (p, acc) = plan(SaveMode::Auto, Some(lean + gu - 1)).unwrap();
        assert_eq!(p, SavePlan::lean());
        assert_eq!(acc.total(), lean);
        assert!(plan(SaveMode::Auto, Some(lean - 1)).is_err());
        // Without a budget (on the GPU, the free memory stands in): lean.
        assert_eq!(plan(SaveMode::Auto, None).unwrap().0, SavePlan::lean());
        let (p, all) = plan(SaveMode::All, None).unwrap();
        assert_eq!(p, SavePlan::all(2));
        assert!(plan(SaveMode::All, Some(all.total() - 1)).is_err());
        assert!(plan(SaveMode::All, Some(all.total())).is_ok());
        let (p, rc) = plan(SaveMode::Recompute, Some(lean)).unwrap();
        assert_eq!(p, SavePlan::recompute());
        assert!(rc.total() < lean);
    }

    /// The 1.3B account at batch 8 × 4096 in every mode (the figures quoted in docs/perf.md).
    /// `--fp8`'s scratch holds the largest product's codes: at FLA's 1.3B and 8 × 4096 tokens
    /// the MLP's (X 5632 wide in the down projection, dY 11264 wide in gate‖up, W 11264 × 2048),
    /// twice each for the transposed copies, and the scales of 21 × 17 tensors.
    #[test]
    fn fp8_scratch_is_sized_by_the_largest_product() {
        let model = Model::new(crate::model::ModelConfig::preset("fla-1.3b").unwrap()).unwrap();
        let t = 8 * 4096;
        let scales = 21 * 17 * 4 * (1 + 2 * crate::cuda::fp8::SCALE_STRIDE + linear::HISTORY);
        let want = 2 * t * 5632 + 2048 * 11264 + 2 * t * 11264 + scales;
        assert_eq!(GpuModel::fp8_bytes(&model, t), want);
        assert!((1.1e9..1.2e9).contains(&(want as f64)));
        // The trainer's account carries it with --fp8.
        let opt = crate::train::adamw::AdamW::new(Default::default(), &model.layout);
        let total = |fp8| {
            let plan = crate::cuda::train::GpuTrainer::save_plan(
                &model,
                &opt,
                t,
                8,
                SaveMode::Lean,
                None,
                fp8,
            );
            plan.unwrap().1.total()
        };
        assert_eq!(total(true), total(false) + want);
    }

    #[test]
    fn fla_1_3b_account_fits_the_target() {
        use crate::cuda::train::GpuTrainer;
        let model = Model::new(crate::model::ModelConfig::preset("fla-1.3b").unwrap()).unwrap();
        let opt = crate::train::adamw::AdamW::new(
            crate::train::adamw::AdamWConfig::default(),
            &model.layout,
        );
        let n = model.config.num_hidden_layers;
        let acc = |p| GpuTrainer::memory_account(&model, &opt, 8 * 4096, 8, p).unwrap();
        let lean = acc(SavePlan::lean());
        let rc = acc(SavePlan::recompute());
        let all = acc(SavePlan::all(n));
        let gb = |a: &MemoryAccount| a.total() as f64 / 1e9;
        if std::env::var_os("GDN_PRINT_ACCOUNT").is_some() {
            println!("{}", lean.table());
            println!("{}", all.table());
            println!("recompute: {:.2} GB", gb(&rc));
            println!("lean: {:.2} GB", gb(&lean));
            for sets in [2, 3, 5, 8, 9, 10, 11, 12, 16, n] {
                println!(
                    "auto, {sets} gate/up copies: {:.2} GB",
                    gb(&acc(SavePlan::gate_up(sets)))
                );
            }
            println!("all: {:.2} GB", gb(&all));
            for limit in [65.0, 69.5, 80.0, 100.0, 135.0] {
                let (p, a) = GpuTrainer::save_plan(
                    &model,
                    &opt,
                    8 * 4096,
                    8,
                    SaveMode::Auto,
                    Some((limit * 1e9) as usize),
                    false,
                )
                .unwrap();
                println!("auto at {limit} GB: {} copies, {:.2} GB", p.gate_up, gb(&a));
            }
        }
        assert!(gb(&rc) < gb(&lean) && gb(&lean) < gb(&all));
        assert!(gb(&lean) < 64.0, "{:.2} GB", gb(&lean));
        // One gate/up copy: 2 × 32768 × 5632 bf16.
        let step = acc(SavePlan::gate_up(2)).total() - lean.total();
        assert_eq!(step, 2 * 32768 * 5632 * 2);
        // `all` fits the H200's 139 GiB.
        assert!(gb(&all) < 140.0, "{:.2} GB", gb(&all));
    }
}
