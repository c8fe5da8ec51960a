//! FP8 operands for the FP8 matmuls (`Blas::matmul_fp8`): casts from bf16 with per-tensor
//! delayed scaling, optionally transposed, and the scale update, plus the host codec that the
//! selftest checks the casts against.
//!
//! Delayed scaling (as Transformer Engine does it): every cast multiplies by a scale chosen from
//! the amaxes (max |x|) of earlier steps and folds its own input's amax into a device counter;
//! `update_scales` then pushes the counters into a short history and sets scale = format max /
//! the history's max. So no kernel waits for the amax of its own input, and a training step of
//! these ops can be captured in a CUDA graph.

use super::{expect_len, Gpu, KernelSource};
use anyhow::{ensure, Result};
use cudarc::driver::{CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

pub static FP8: KernelSource = KernelSource {
    name: "fp8",
    code: concat!(
        include_str!("kernels/common.cuh"),
        include_str!("kernels/fp8_codes.cuh"),
        include_str!("kernels/fp8.cu")
    ),
};

/// An FP8 format: E4M3 (more precision; activations and weights) or E5M2 (more range; gradients).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fp8 {
    E4M3,
    E5M2,
}

impl Fp8 {
    /// The largest finite value (casts saturate to it).
    pub fn max(self) -> f32 {
        match self {
            Fp8::E4M3 => 448.0,
            Fp8::E5M2 => 57344.0,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Fp8::E4M3 => "e4m3",
            Fp8::E5M2 => "e5m2",
        }
    }

    /// (mantissa bits, exponent bias).
    fn bits(self) -> (i32, i32) {
        match self {
            Fp8::E4M3 => (3, 7),
            Fp8::E5M2 => (2, 15),
        }
    }

    /// The value of a code (NaN and infinity codes are never written by the saturating casts).
    pub fn decode(self, code: u8) -> f32 {
        let (mb, bias) = self.bits();
        let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
        let e = ((code & 0x7f) >> mb) as i32;
        let m = (code & ((1 << mb) - 1)) as f64;
        let mag = if e == 0 {
            m * 2f64.powi(1 - bias - mb)
        } else {
            (1.0 + m / (1 << mb) as f64) * 2f64.powi(e - bias)
        };
        (sign * mag) as f32
    }

    /// The code of `x` rounded to nearest (ties to even) and saturated to ±max: what the CUDA
    /// casts compute (`cvt.rn.satfinite`).
    pub fn encode(self, x: f32) -> u8 {
        let (mb, bias) = self.bits();
        let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
        let a = (x as f64).abs();
        let max = self.max() as f64;
        let emin = 1 - bias;
        // The spacing of representable values around a, subnormals included.
        let e = if a > 0.0 {
            (a.log2().floor() as i32).max(emin)
        } else {
            emin
        };
        let q = 2f64.powi(e - mb);
        let r = (a / q).round_ties_even() * q;
        if r >= max {
            return sign | self.encode_mag(max);
        }
        sign | self.encode_mag(r)
    }

    /// The code of a representable non-negative value.
    fn encode_mag(self, r: f64) -> u8 {
        let (mb, bias) = self.bits();
        let emin = 1 - bias;
        if r < 2f64.powi(emin) {
            return (r / 2f64.powi(emin - mb)) as u8;
        }
        let e = r.log2().floor() as i32;
        let m = ((r / 2f64.powi(e) - 1.0) * (1 << mb) as f64) as u8;
        (((e + bias) as u8) << mb) | m
    }
}

/// y = codes of x · scale (x bf16 [n], y [n]), and max |x| folded into `amax` (one u32 holding
/// an f32's bits). n must be a multiple of 8, x 16-byte and y 8-byte aligned.
pub fn cast(
    gpu: &Gpu,
    f: Fp8,
    x: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<u8>,
    scale: &impl DevicePtr<f32>,
    amax: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    let op = "fp8::cast";
    expect_len(op, "y", y.len(), x.len(), "same as x")?;
    expect_len(op, "scale", scale.len(), 1, "one per tensor")?;
    let s = &*gpu.stream;
    let (yp, _y) = y.device_ptr_mut(s);
    let (sp, _s) = scale.device_ptr(s);
    flat(gpu, op, f, x, yp, sp, amax)
}

/// max |x| folded into `amax` (the first scale of a tensor, before it has a history).
pub fn amax(gpu: &Gpu, x: &impl DevicePtr<bf16>, amax: &mut impl DevicePtrMut<u32>) -> Result<()> {
    // No codes written (y null), so neither the format nor a scale (null) matters.
    flat(gpu, "fp8::amax", Fp8::E4M3, x, 0, 0, amax)
}

/// The flat cast kernel: codes to `yp` unless null, scaled by `*sp` (1 where null).
fn flat(
    gpu: &Gpu,
    op: &str,
    f: Fp8,
    x: &impl DevicePtr<bf16>,
    yp: u64,
    sp: u64,
    amax: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    ensure!(
        x.len().is_multiple_of(8),
        "{op}: `x` has {} elements, not a multiple of 8",
        x.len()
    );
    expect_len(op, "amax", amax.len(), 1, "one per tensor")?;
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    let (ap, _a) = amax.device_ptr_mut(s);
    ensure!(
        xp.is_multiple_of(16) && yp.is_multiple_of(8),
        "{op}: `x` must start 16-byte and `y` 8-byte aligned"
    );
    let n8 = (x.len() / 8) as i64;
    if n8 == 0 {
        return Ok(());
    }
    let name = format!("fp8_cast_{}", f.suffix());
    launch_named!(gpu, FP8, name, flat_cfg(n8); xp, yp, sp, ap, n8);
    Ok(())
}

/// FP8 codes that a producer kernel writes in place of its bf16 output, where that output only
/// feeds an FP8 product: the codes' device address (laid out as the bf16 output would be), the
/// scale to multiply by, and the amax counter to fold max |output| into. Bare addresses, as the
/// kernels take them (the context tracks no events).
#[derive(Clone, Copy, Debug)]
pub struct CodesOut {
    pub y: u64,
    pub scale: u64,
    pub amax: u64,
}

/// No codes: the null addresses a producer kernel reads as "write bf16 only".
pub const NO_CODES: CodesOut = CodesOut {
    y: 0,
    scale: 0,
    amax: 0,
};

impl CodesOut {
    /// The same codes from element `elems` on (a producer of some of the columns).
    pub fn offset(self, elems: usize) -> CodesOut {
        CodesOut {
            y: self.y + elems as u64,
            ..self
        }
    }
}

/// yt [cols, rows] = y [rows, cols] for codes a producer wrote row-major (`CodesOut`). rows must
/// be a multiple of 16 and cols of 8; y 8-byte and yt 16-byte aligned.
pub fn transpose(
    gpu: &Gpu,
    y: &impl DevicePtr<u8>,
    rows: usize,
    cols: usize,
    yt: &mut impl DevicePtrMut<u8>,
) -> Result<()> {
    let op = "fp8::transpose";
    transposed_shape(op, rows, cols, 1)?;
    expect_len(op, "y", y.len(), rows * cols, "rows × cols")?;
    expect_len(op, "yt", yt.len(), rows * cols, "rows × cols")?;
    if rows * cols == 0 {
        return Ok(());
    }
    let s = &*gpu.stream;
    let (yp, _y) = y.device_ptr(s);
    let (ytp, _yt) = yt.device_ptr_mut(s);
    ensure!(
        yp.is_multiple_of(8) && ytp.is_multiple_of(16),
        "{op}: `y` must start 8-byte and `yt` 16-byte aligned"
    );
    let (r, c) = (rows as i32, cols as i32);
    launch!(gpu, FP8, "fp8_transpose", transposed_cfg(r, c); yp, ytp, r, c);
    Ok(())
}

/// SwiGLU's forward with its output's E4M3 codes: act = silu(gate)·up [rows, w] from gu (gate ‖
/// up, [rows, 2w]) into `act` (bf16) and `y` (codes · scale), act's max |·| folded into `amax`.
/// w must be a multiple of 8; gu and act 16-byte, y 8-byte aligned.
#[allow(clippy::too_many_arguments)]
pub fn swiglu_fwd(
    gpu: &Gpu,
    gu: &impl DevicePtr<bf16>,
    act: &mut impl DevicePtrMut<bf16>,
    w: usize,
    y: &mut impl DevicePtrMut<u8>,
    scale: &impl DevicePtr<f32>,
    amax: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    let op = "fp8::swiglu_fwd";
    ensure!(
        w > 0 && w.is_multiple_of(8) && w <= i32::MAX as usize,
        "{op}: width {w} is not supported (a multiple of 8)"
    );
    let n = act.len();
    expect_len(op, "gu", gu.len(), 2 * n, "2 × act's")?;
    expect_len(op, "y", y.len(), n, "act's")?;
    ensure!(
        n.is_multiple_of(w),
        "{op}: act's {n} elements are not rows of {w}"
    );
    expect_len(op, "scale", scale.len(), 1, "one per tensor")?;
    expect_len(op, "amax", amax.len(), 1, "one per tensor")?;
    let s = &*gpu.stream;
    let (gp, _g) = gu.device_ptr(s);
    let (actp, _act) = act.device_ptr_mut(s);
    let (yp, _y) = y.device_ptr_mut(s);
    let (sp, _s) = scale.device_ptr(s);
    let (ap, _a) = amax.device_ptr_mut(s);
    ensure!(
        gp.is_multiple_of(16) && actp.is_multiple_of(16) && yp.is_multiple_of(8),
        "{op}: `gu` and `act` must start 16-byte and `y` 8-byte aligned"
    );
    let n8 = (n / 8) as i64;
    if n8 == 0 {
        return Ok(());
    }
    let w_ = w as i32;
    launch!(gpu, FP8, "fp8_swiglu_fwd", flat_cfg(n8); gp, actp, yp, sp, ap, n8, w_);
    Ok(())
}

/// Few enough blocks that their amax atomics are negligible; each thread loops.
fn flat_cfg(n8: i64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n8 as usize).div_ceil(256).clamp(1, 2048) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The transposing cast: x bf16 [rows, cols] → yt = codes of xᵀ · scale [cols, rows], and y the
/// same codes untransposed [rows, cols] when given; max |x| folded into `amax`. rows must be a
/// multiple of 16 and cols of 8; x 16-byte, y 8-byte and yt 16-byte aligned.
#[allow(clippy::too_many_arguments)]
pub fn cast_transposed(
    gpu: &Gpu,
    f: Fp8,
    x: &impl DevicePtr<bf16>,
    rows: usize,
    cols: usize,
    y: Option<&mut CudaViewMut<u8>>,
    yt: &mut impl DevicePtrMut<u8>,
    scale: &impl DevicePtr<f32>,
    amax: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    let op = "fp8::cast_transposed";
    let name = format!("fp8_cast_t_{}", f.suffix());
    let t = Transposed::check(gpu, op, rows, cols, 1, y, yt, scale, amax)?;
    expect_len(op, "x", x.len(), rows * cols, "rows × cols")?;
    if t.empty {
        return Ok(());
    }
    let s = &*gpu.stream;
    let (xp, _x) = x.device_ptr(s);
    t.aligned(op, &[xp])?;
    let (yp, ytp, sp, ap, r, c) = (t.y, t.yt, t.scale, t.amax, t.rows, t.cols);
    launch_named!(gpu, FP8, name, t.cfg(); xp, yp, ytp, sp, ap, r, c);
    Ok(())
}

/// act = silu(gate)·up over gu (gate ‖ up, [rows, 2w]) as E4M3 codes of actᵀ [w, rows], scaled
/// by `scale`, act's max |·| folded into `amax`; act itself is not written. For a backward that
/// recomputes act only for the weight gradient of the product reading it. rows must be a
/// multiple of 16 and w of 8.
pub fn swiglu_fwd_t(
    gpu: &Gpu,
    gu: &impl DevicePtr<bf16>,
    rows: usize,
    w: usize,
    yt: &mut impl DevicePtrMut<u8>,
    scale: &impl DevicePtr<f32>,
    amax: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    let op = "fp8::swiglu_fwd_t";
    let t = Transposed::check(gpu, op, rows, w, 1, None, yt, scale, amax)?;
    expect_len(op, "gu", gu.len(), 2 * rows * w, "rows × 2w")?;
    if t.empty {
        return Ok(());
    }
    let (gp, _g) = gu.device_ptr(&gpu.stream);
    t.aligned(op, &[gp])?;
    let (ytp, sp, ap, r, c) = (t.yt, t.scale, t.amax, t.rows, t.cols);
    launch!(gpu, FP8, "fp8_swiglu_fwd_t", t.cfg(); gp, ytp, sp, ap, r, c);
    Ok(())
}

/// SwiGLU's backward as E5M2 codes: d gate ‖ d up from gu (gate ‖ up, [rows, 2w]) and dy
/// [rows, w], scaled by `scale`, into y [rows, 2w] and its transpose yt [2w, rows]; the
/// gradient's max |·| folded into `amax`, the bf16 gradient not written. rows must be a multiple
/// of 16 and w of 8.
#[allow(clippy::too_many_arguments)]
pub fn swiglu_bwd_t(
    gpu: &Gpu,
    gu: &impl DevicePtr<bf16>,
    dy: &impl DevicePtr<bf16>,
    rows: usize,
    w: usize,
    y: &mut CudaViewMut<u8>,
    yt: &mut impl DevicePtrMut<u8>,
    scale: &impl DevicePtr<f32>,
    amax: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    let op = "fp8::swiglu_bwd_t";
    let t = Transposed::check(gpu, op, rows, w, 2, Some(y), yt, scale, amax)?;
    expect_len(op, "gu", gu.len(), 2 * rows * w, "rows × 2w")?;
    expect_len(op, "dy", dy.len(), rows * w, "rows × w")?;
    if t.empty {
        return Ok(());
    }
    let s = &*gpu.stream;
    let (gp, _g) = gu.device_ptr(s);
    let (dp, _d) = dy.device_ptr(s);
    t.aligned(op, &[gp, dp])?;
    let (yp, ytp, sp, ap, r, c) = (t.y, t.yt, t.scale, t.amax, t.rows, t.cols);
    launch!(gpu, FP8, "fp8_swiglu_bwd_t", t.cfg(); gp, dp, yp, ytp, sp, ap, r, c);
    Ok(())
}

/// The outputs and sizes of a transposing kernel (`codes_t` in fp8.cu: `parts` outputs of
/// [rows, cols] side by side), checked, as device addresses.
struct Transposed {
    rows: i32,
    cols: i32,
    empty: bool,
    y: u64,
    yt: u64,
    scale: u64,
    amax: u64,
}

impl Transposed {
    #[allow(clippy::too_many_arguments)]
    fn check(
        gpu: &Gpu,
        op: &str,
        rows: usize,
        cols: usize,
        parts: usize,
        y: Option<&mut CudaViewMut<u8>>,
        yt: &mut impl DevicePtrMut<u8>,
        scale: &impl DevicePtr<f32>,
        amax: &mut impl DevicePtrMut<u32>,
    ) -> Result<Transposed> {
        transposed_shape(op, rows, cols, parts)?;
        let n = parts * rows * cols;
        expect_len(op, "yt", yt.len(), n, "the outputs' elements")?;
        if let Some(y) = &y {
            expect_len(op, "y", y.len(), n, "the outputs' elements")?;
        }
        expect_len(op, "scale", scale.len(), 1, "one per tensor")?;
        expect_len(op, "amax", amax.len(), 1, "one per tensor")?;
        // Bare addresses: the context tracks no events (`Gpu::new`), so the guards that
        // `device_ptr` returns hold nothing the launch needs.
        let s = &*gpu.stream;
        let y = y.map_or(0, |y| y.device_ptr_mut(s).0);
        let t = Transposed {
            rows: rows as i32,
            cols: cols as i32,
            empty: n == 0,
            y,
            yt: yt.device_ptr_mut(s).0,
            scale: scale.device_ptr(s).0,
            amax: amax.device_ptr_mut(s).0,
        };
        ensure!(
            t.y.is_multiple_of(8) && t.yt.is_multiple_of(16),
            "{op}: `yt` must start 16-byte and `y` 8-byte aligned"
        );
        Ok(t)
    }

    /// The bf16 inputs' addresses must be 16-byte aligned (8-wide loads).
    fn aligned(&self, op: &str, inputs: &[u64]) -> Result<()> {
        ensure!(
            inputs.iter().all(|p| p.is_multiple_of(16)),
            "{op}: the bf16 inputs must start 16-byte aligned"
        );
        Ok(())
    }

    fn cfg(&self) -> LaunchConfig {
        transposed_cfg(self.rows, self.cols)
    }
}

/// The sizes the transposing kernels take: `parts` outputs of [rows, cols] with rows a multiple
/// of 16 and cols of 8 (whole 8-wide loads and 16-byte transposed stores), in 32-bit indices.
fn transposed_shape(op: &str, rows: usize, cols: usize, parts: usize) -> Result<()> {
    ensure!(
        rows.is_multiple_of(16) && cols.is_multiple_of(8),
        "{op}: {rows}×{cols} is not supported (rows must be a multiple of 16, cols of 8)"
    );
    ensure!(
        rows <= i32::MAX as usize && parts * cols <= i32::MAX as usize,
        "{op}: {rows}×{cols} is too large"
    );
    Ok(())
}

/// The transposing kernels' grid: 64-column strips, 4 tiles of 64 rows per block (their
/// constants).
fn transposed_cfg(rows: i32, cols: i32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((cols as u32).div_ceil(64), (rows as u32).div_ceil(256), 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Floats between consecutive tensors' scales in `update_scales`' outputs: 256 bytes, so that
/// each scale_inv can be handed to cuBLASLt as a pointer of its own (it refuses FP8 products
/// whose scale pointers sit 16 bytes apart in one buffer: CUBLAS_STATUS_NOT_SUPPORTED on the H200,
/// session 29, call 2).
pub const SCALE_STRIDE: usize = 64;

/// Delayed scaling of `n` tensors of format `f`: each amax gathered since the last update is
/// pushed into its history ([n, hist], newest first) and reset to 0; scale = f's max / the
/// history's max and scale_inv = 1 / scale (a tensor whose history is all zeros keeps both).
/// Tensor i's scale and scale_inv are at i · `SCALE_STRIDE` (n · `SCALE_STRIDE` floats each).
pub fn update_scales(
    gpu: &Gpu,
    f: Fp8,
    amax: &mut impl DevicePtrMut<u32>,
    history: &mut impl DevicePtrMut<f32>,
    scale: &mut impl DevicePtrMut<f32>,
    scale_inv: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let op = "fp8::update_scales";
    let n = amax.len();
    ensure!(
        n > 0 && history.len().is_multiple_of(n) && history.len() > 0,
        "{op}: `history` has {} elements, not a whole number of histories for {n} tensors",
        history.len()
    );
    let strided = n * SCALE_STRIDE;
    expect_len(op, "scale", scale.len(), strided, "SCALE_STRIDE per tensor")?;
    expect_len(
        op,
        "scale_inv",
        scale_inv.len(),
        strided,
        "SCALE_STRIDE per tensor",
    )?;
    let hist = (history.len() / n) as i32;
    let s = &*gpu.stream;
    let (ap, _a) = amax.device_ptr_mut(s);
    let (hp, _h) = history.device_ptr_mut(s);
    let (sp, _s) = scale.device_ptr_mut(s);
    let (ip, _i) = scale_inv.device_ptr_mut(s);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(128) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let (n, stride, fmax) = (n as i32, SCALE_STRIDE as i32, f.max());
    launch!(gpu, FP8, "fp8_scale_update", cfg; ap, hp, sp, ip, n, hist, stride, fmax);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_decode_to_their_values() {
        assert_eq!(Fp8::E4M3.decode(0x38), 1.0);
        assert_eq!(Fp8::E4M3.decode(0x7e), 448.0);
        assert_eq!(Fp8::E4M3.decode(0x01), 2f32.powi(-9));
        assert_eq!(Fp8::E4M3.decode(0xb8), -1.0);
        assert_eq!(Fp8::E5M2.decode(0x3c), 1.0);
        assert_eq!(Fp8::E5M2.decode(0x7b), 57344.0);
        assert_eq!(Fp8::E5M2.decode(0x01), 2f32.powi(-16));
    }

    #[test]
    fn every_finite_code_round_trips() {
        for f in [Fp8::E4M3, Fp8::E5M2] {
            for c in 0..=255u8 {
                let v = f.decode(c);
                // E4M3's 0x7f/0xff are NaN; E5M2's exponent 31 is infinity or NaN.
                let special = match f {
                    Fp8::E4M3 => c & 0x7f == 0x7f,
                    Fp8::E5M2 => c & 0x7c == 0x7c,
                };
                if special || (v == 0.0 && c == 0x80) {
                    continue;
                }
                assert_eq!(f.encode(v), c, "{f:?} code {c:#04x} = {v}");
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_and_saturates() {
        let f = Fp8::E4M3;
        // Between 1 (0x38) and 1.125 (0x39): 1.0625 is a tie, to the even code 0x38.
        assert_eq!(f.encode(1.0625), 0x38);
        assert_eq!(f.encode(1.07), 0x39);
        // 1.1875 ties between 1.125 (0x39) and 1.25 (0x3a): to 0x3a.
        assert_eq!(f.encode(1.1875), 0x3a);
        assert_eq!(f.encode(1e6), 0x7e);
        assert_eq!(f.encode(-1e6), 0xfe);
        assert_eq!(f.encode(460.0), 0x7e);
        // Half the smallest subnormal ties to zero; a little more rounds up to it.
        assert_eq!(f.encode(2f32.powi(-10)), 0x00);
        assert_eq!(f.encode(2f32.powi(-10) * 1.01), 0x01);
        assert_eq!(Fp8::E5M2.encode(1e9), 0x7b);
    }
}
