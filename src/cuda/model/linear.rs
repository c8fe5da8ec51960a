//! The blocks' linear layers: bf16 matmuls (fp32 accumulation), or with `--fp8` FP8 ones, as
//! Transformer Engine's hybrid recipe does them: activations and weights in E4M3, output
//! gradients in E5M2, one scale per tensor by delayed scaling (`cuda::fp8`), fp32 accumulation
//! and outputs in bf16 or fp32 as in bf16 mode. The master weights, the optimizer, the norms,
//! the delta rule, the a/b projections and the lm head stay as they are.
//!
//! Per product of a block (forward y = x·Wᵀ; backward dx = dy·W, dW += dyᵀ·x):
//! - forward: x and W cast to E4M3 (x once for the products that share it), then the FP8 matmul
//!   with the tensor cores' fast accumulation (as TE's forward);
//! - backward: dy cast to E5M2 with its transpose in one pass, W transposed to E4M3 for dx, x
//!   transposed to E4M3 for dW. dx also takes the fast accumulation: its k (the layer's width,
//!   2–11k) is short enough that the accumulators' ~14 bits add less than E5M2's own rounding
//!   of dy (2 mantissa bits). dW sums over every token of the step (32k at FLA's 1.3B), so its
//!   partial sums are promoted to fp32 (TE does the same).
//!
//! Every tensor (site) keeps its own scale. `update_scales`, at the end of each backward, sets
//! them from the amaxes of the last `HISTORY` steps; a site's first use measures its amax first.
//! Products whose sizes are not multiples of 16 (FP8's requirement) run in bf16.

use super::super::blas::{Blas, MatmulOut};
use super::super::fp8::{self, CodesOut, Fp8, SCALE_STRIDE};
use super::super::Gpu;
use crate::model::safetensors_io::NamedTensor;
use anyhow::{ensure, Context, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use half::bf16;
use std::cell::RefCell;

/// Steps of amax history behind each scale.
pub const HISTORY: usize = 16;

/// An activation that enters products (E4M3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum XSite {
    /// The mixer's normed input (q, k, v and the output gate read it).
    H1,
    /// The gated norm's output (o_proj's input).
    Normed,
    /// The MLP's normed input.
    H2,
    /// SwiGLU's output (down's input).
    Act,
}

/// A weight (E4M3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WSite {
    Q,
    K,
    V,
    G,
    O,
    GateUp,
    Down,
    /// q‖k‖v as one product in the backward.
    Qkv,
}

/// An output gradient (E5M2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DySite {
    Qkv,
    G,
    O,
    GateUp,
    Down,
}

const X_SITES: usize = 4;
const W_SITES: usize = 8;
const E4M3_SITES: usize = X_SITES + W_SITES;
const E5M2_SITES: usize = 5;

/// The scales of one format's tensors (see `fp8::update_scales`).
struct Scales {
    f: Fp8,
    amax: CudaSlice<u32>,
    history: CudaSlice<f32>,
    scale: CudaSlice<f32>,
    scale_inv: CudaSlice<f32>,
    /// Host-side: whether each tensor has had its first amax measured.
    seen: Vec<bool>,
}

impl Scales {
    fn new(gpu: &Gpu, f: Fp8, n: usize) -> Result<Scales> {
        let s = &gpu.stream;
        Ok(Scales {
            f,
            amax: s.alloc_zeros(n)?,
            history: s.alloc_zeros(n * HISTORY)?,
            scale: s.clone_htod(&vec![1.0f32; n * SCALE_STRIDE])?,
            scale_inv: s.clone_htod(&vec![1.0f32; n * SCALE_STRIDE])?,
            seen: vec![false; n],
        })
    }

    /// Before tensor i's first cast: its own amax and a scale from it, so that the first step
    /// does not cast at scale 1 (E5M2 would flush most gradients to zero).
    fn first_use(&mut self, gpu: &Gpu, i: usize, x: &impl DevicePtr<bf16>) -> Result<()> {
        if self.seen[i] {
            return Ok(());
        }
        self.seen[i] = true;
        fp8::amax(gpu, x, &mut self.amax.slice_mut(i..i + 1))?;
        fp8::update_scales(
            gpu,
            self.f,
            &mut self.amax.slice_mut(i..i + 1),
            &mut self.history.slice_mut(i * HISTORY..(i + 1) * HISTORY),
            &mut self
                .scale
                .slice_mut(i * SCALE_STRIDE..(i + 1) * SCALE_STRIDE),
            &mut self
                .scale_inv
                .slice_mut(i * SCALE_STRIDE..(i + 1) * SCALE_STRIDE),
        )
    }

    /// y = tensor i's codes of x (flat).
    fn cast(
        &mut self,
        gpu: &Gpu,
        i: usize,
        x: &impl DevicePtr<bf16>,
        y: &mut CudaViewMut<u8>,
    ) -> Result<()> {
        self.first_use(gpu, i, x)?;
        let amax = &mut self.amax.slice_mut(i..i + 1);
        fp8::cast(gpu, self.f, x, y, &at(&self.scale, i), amax)
    }

    /// yt = tensor i's codes of xᵀ (x [rows, cols]), and y those of x when given.
    #[allow(clippy::too_many_arguments)]
    fn cast_transposed(
        &mut self,
        gpu: &Gpu,
        i: usize,
        x: &impl DevicePtr<bf16>,
        rows: usize,
        cols: usize,
        y: Option<&mut CudaViewMut<u8>>,
        yt: &mut CudaViewMut<u8>,
    ) -> Result<()> {
        self.first_use(gpu, i, x)?;
        let amax = &mut self.amax.slice_mut(i..i + 1);
        let scale = &at(&self.scale, i);
        fp8::cast_transposed(gpu, self.f, x, rows, cols, y, yt, scale, amax)
    }

    /// Tensor i's codes written into `buf` by a producer kernel (bare addresses).
    fn codes(&self, gpu: &Gpu, i: usize, buf: &CudaSlice<u8>) -> CodesOut {
        let s = &*gpu.stream;
        CodesOut {
            y: buf.device_ptr(s).0,
            scale: at(&self.scale, i).device_ptr(s).0,
            amax: self.amax.slice(i..i + 1).device_ptr(s).0,
        }
    }

    /// Everything a resumed run needs to continue with the same scales, as f32 tensors named
    /// `{prefix}{part}`: the amax counters (their bits), the histories, the scales, their
    /// inverses, and which tensors have had their first amax (1 or 0).
    fn export(&self, gpu: &Gpu, prefix: &str) -> Result<Vec<NamedTensor>> {
        let s = &gpu.stream;
        let amax: Vec<f32> = s
            .clone_dtoh(&self.amax)?
            .into_iter()
            .map(f32::from_bits)
            .collect();
        let seen = self.seen.iter().map(|&b| f32::from(u8::from(b))).collect();
        let n = self.seen.len();
        Ok(vec![
            scale_tensor(prefix, "amax", vec![n], amax),
            scale_tensor(
                prefix,
                "history",
                vec![n, HISTORY],
                s.clone_dtoh(&self.history)?,
            ),
            scale_tensor(
                prefix,
                "scale",
                vec![n, SCALE_STRIDE],
                s.clone_dtoh(&self.scale)?,
            ),
            scale_tensor(
                prefix,
                "scale_inv",
                vec![n, SCALE_STRIDE],
                s.clone_dtoh(&self.scale_inv)?,
            ),
            scale_tensor(prefix, "seen", vec![n], seen),
        ])
    }

    /// Puts back what [`Scales::export`] gave, each tensor checked against this model's shape.
    fn import(&mut self, gpu: &Gpu, prefix: &str, tensors: &[NamedTensor]) -> Result<()> {
        let n = self.seen.len();
        let get = |part: &str, shape: &[usize]| -> Result<&[f32]> {
            let name = format!("{prefix}{part}");
            let t = tensors
                .iter()
                .find(|t| t.name == name)
                .with_context(|| format!("FP8 scales: tensor `{name}` is missing"))?;
            ensure!(
                t.shape == shape,
                "FP8 scales: tensor `{name}` has shape {:?}, this model's is {shape:?} (a \
                 checkpoint of another model?)",
                t.shape
            );
            Ok(&t.data)
        };
        let s = &gpu.stream;
        let amax: Vec<u32> = get("amax", &[n])?.iter().map(|x| x.to_bits()).collect();
        s.memcpy_htod(&amax, &mut self.amax)?;
        s.memcpy_htod(get("history", &[n, HISTORY])?, &mut self.history)?;
        s.memcpy_htod(get("scale", &[n, SCALE_STRIDE])?, &mut self.scale)?;
        s.memcpy_htod(get("scale_inv", &[n, SCALE_STRIDE])?, &mut self.scale_inv)?;
        self.seen = get("seen", &[n])?.iter().map(|&x| x != 0.0).collect();
        Ok(())
    }

    fn update(&mut self, gpu: &Gpu) -> Result<()> {
        fp8::update_scales(
            gpu,
            self.f,
            &mut self.amax,
            &mut self.history,
            &mut self.scale,
            &mut self.scale_inv,
        )
    }
}

/// One tensor of the FP8 scales as a checkpoint holds it (`fp8_scales.safetensors`).
fn scale_tensor(prefix: &str, part: &str, shape: Vec<usize>, data: Vec<f32>) -> NamedTensor {
    NamedTensor {
        name: format!("{prefix}{part}"),
        shape,
        data,
    }
}

/// The FP8 state: scales and the codes' scratch buffers (sized for the largest product).
struct Fp8State {
    e4m3: Scales,
    e5m2: Scales,
    x8: CudaSlice<u8>,
    xt8: CudaSlice<u8>,
    w8: CudaSlice<u8>,
    dy8: CudaSlice<u8>,
    dyt8: CudaSlice<u8>,
    /// (site index, device address) of the activation `x8` now holds: the products that read
    /// one activation in a row (q, k, v, gate) cast it once.
    x8_holds: Option<(usize, u64)>,
    /// The same for `xt8` in the backward (q‖k‖v and the output gate read h1ᵀ), or set by a
    /// kernel that wrote those codes itself (`swiglu_codes`, `Act::CodesOnly`).
    xt8_holds: Option<(usize, u64)>,
    /// What a producer kernel wrote itself for the next `bwd`: (site index, address of the bf16
    /// gradient the codes stand for, whether `dyt8` holds their transpose too); `dy8` holds the
    /// codes (`swiglu_bwd_codes`, `dy_codes`).
    dy8_holds: Option<(usize, u64, bool)>,
    /// FP8 matmuls queued so far (a check that FP8 is in use).
    products: u64,
}

/// What `Linears::swiglu_codes` writes of act.
pub enum Act<'a, 'b> {
    /// act in bf16, and its codes for down's forward product.
    Written(&'a mut CudaViewMut<'b, bf16>),
    /// Only actᵀ's codes, for down's weight gradient (act recomputed in the backward): this
    /// buffer is not written, its address marks the codes.
    CodesOnly(&'a CudaView<'b, bf16>),
}

/// The largest sizes the FP8 scratch must hold, in elements.
pub struct Fp8Sizes {
    pub layers: usize,
    pub max_x: usize,
    pub max_w: usize,
    pub max_dy: usize,
}

/// The blocks' matmuls (see the module doc).
pub struct Linears {
    pub blas: Blas,
    fp8: Option<RefCell<Fp8State>>,
}

fn fits_fp8(n: usize, inp: usize, out: usize) -> bool {
    [n, inp, out].iter().all(|v| v.is_multiple_of(16))
}

impl Linears {
    pub fn new(blas: Blas) -> Linears {
        Linears { blas, fp8: None }
    }

    /// Turns FP8 on, allocating its scales and scratch.
    pub fn enable_fp8(&mut self, gpu: &Gpu, z: Fp8Sizes) -> Result<()> {
        let s = &gpu.stream;
        let st = Fp8State {
            e4m3: Scales::new(gpu, Fp8::E4M3, z.layers * E4M3_SITES)?,
            e5m2: Scales::new(gpu, Fp8::E5M2, z.layers * E5M2_SITES)?,
            x8: s.alloc_zeros(z.max_x)?,
            xt8: s.alloc_zeros(z.max_x)?,
            w8: s.alloc_zeros(z.max_w)?,
            dy8: s.alloc_zeros(z.max_dy)?,
            dyt8: s.alloc_zeros(z.max_dy)?,
            x8_holds: None,
            xt8_holds: None,
            dy8_holds: None,
            products: 0,
        };
        self.fp8 = Some(RefCell::new(st));
        Ok(())
    }

    /// The FP8 scales (both formats' [`Scales`]) for a checkpoint; `None` without FP8. Waits
    /// for the queued work.
    pub fn fp8_scales(&self, gpu: &Gpu) -> Result<Option<Vec<NamedTensor>>> {
        let Some(st) = &self.fp8 else {
            return Ok(None);
        };
        let st = st.borrow();
        let mut out = st.e4m3.export(gpu, "e4m3.")?;
        out.extend(st.e5m2.export(gpu, "e5m2.")?);
        Ok(Some(out))
    }

    /// Restores the scales that [`Linears::fp8_scales`] saved (FP8 must be on).
    pub fn load_fp8_scales(&mut self, gpu: &Gpu, tensors: &[NamedTensor]) -> Result<()> {
        let st = self
            .fp8
            .as_mut()
            .context("FP8 scales given to a model without FP8")?;
        let st = st.get_mut();
        st.e4m3.import(gpu, "e4m3.", tensors)?;
        st.e5m2.import(gpu, "e5m2.", tensors)
    }

    /// FP8 matmuls queued so far (0 without FP8, or when every product fell back to bf16).
    pub fn fp8_products(&self) -> u64 {
        self.fp8.as_ref().map_or(0, |st| st.borrow().products)
    }

    /// Bytes of FP8 state for these sizes (the memory account).
    pub fn fp8_bytes(z: &Fp8Sizes) -> usize {
        let scales = z.layers * (E4M3_SITES + E5M2_SITES) * 4 * (1 + 2 * SCALE_STRIDE + HISTORY);
        2 * z.max_x + z.max_w + 2 * z.max_dy + scales
    }

    /// y [n, out] = x [n, in] · Wᵀ (W [out, in]); FP8 at `site` (layer, activation, weight)
    /// when enabled and the sizes allow, bf16 otherwise (and always for `site` None).
    #[allow(clippy::too_many_arguments)]
    pub fn fwd(
        &self,
        gpu: &Gpu,
        site: Option<(usize, XSite, WSite)>,
        x: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
        y: &mut impl DevicePtrMut<bf16>,
        n: usize,
        inp: usize,
        out: usize,
    ) -> Result<()> {
        let fp8 = self.fp8.as_ref().filter(|_| fits_fp8(n, inp, out));
        let (Some(st), Some((layer, xs, ws))) = (fp8, site) else {
            return fwd_bf16(&self.blas, x, w, y, n, inp, out);
        };
        let st = &mut *st.borrow_mut();
        let (xi, wi) = (x_index(layer, xs), w_index(layer, ws));
        let xp = x.device_ptr(&gpu.stream).0;
        if st.x8_holds != Some((xi, xp)) {
            st.e4m3.cast(gpu, xi, x, &mut st.x8.slice_mut(..n * inp))?;
            st.x8_holds = Some((xi, xp));
        }
        st.products += 1;
        st.e4m3
            .cast(gpu, wi, w, &mut st.w8.slice_mut(..out * inp))?;
        let e = &st.e4m3;
        self.blas.matmul_fp8::<bf16>(
            n,
            inp,
            out,
            (&st.x8.slice(..n * inp), Fp8::E4M3, &at(&e.scale_inv, xi)),
            (&st.w8.slice(..out * inp), Fp8::E4M3, &at(&e.scale_inv, wi)),
            y,
            1.0,
            0.0,
            true,
        )
    }

    /// The backward of `fwd`: dx [n, in] (= or +=, by `beta`) dy · W, and dW [out, in] +=
    /// dyᵀ · x. FP8 at `site` (layer, output gradient, weight, activation) as `fwd` decides.
    #[allow(clippy::too_many_arguments)]
    pub fn bwd<O: MatmulOut>(
        &self,
        gpu: &Gpu,
        site: (usize, DySite, WSite, XSite),
        dy: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
        x: &impl DevicePtr<bf16>,
        (dx, beta): (&mut impl DevicePtrMut<O>, f32),
        dw: &mut impl DevicePtrMut<f32>,
        n: usize,
        inp: usize,
        out: usize,
    ) -> Result<()> {
        let Some(st) = self.fp8.as_ref().filter(|_| fits_fp8(n, inp, out)) else {
            dx_bf16(&self.blas, dy, w, dx, n, inp, out, beta)?;
            return dw_bf16(&self.blas, dy, x, dw, n, inp, out);
        };
        let st = &mut *st.borrow_mut();
        let (layer, ds, ws, xs) = site;
        let (di, wi, xi) = (dy_index(layer, ds), w_index(layer, ws), x_index(layer, xs));
        st.x8_holds = None;
        st.products += 2;
        let dyp = dy.device_ptr(&gpu.stream).0;
        let (mut dy8, mut dyt8) = (st.dy8.slice_mut(..n * out), st.dyt8.slice_mut(..n * out));
        // Codes a producer wrote for this product: only the transpose may be left to do.
        match st.dy8_holds {
            Some((i, p, both)) if (i, p) == (di, dyp) => {
                st.dy8_holds = None;
                if !both {
                    fp8::transpose(gpu, &dy8, n, out, &mut dyt8)?;
                }
            }
            pending => {
                // Codes written for another product, in place of its bf16 gradient, would be
                // lost: a wrong gradient, not a slow one.
                ensure!(
                    pending.is_none(),
                    "FP8: the gradient codes a kernel wrote for tensor {pending:?} were not used \
                     before the next product's (internal error)"
                );
                st.e5m2
                    .cast_transposed(gpu, di, dy, n, out, Some(&mut dy8), &mut dyt8)?
            }
        }
        let dinv = at(&st.e5m2.scale_inv, di);
        // Wᵀ [in, out], k-major over `out` as the product needs.
        let mut wt8 = st.w8.slice_mut(..out * inp);
        st.e4m3
            .cast_transposed(gpu, wi, w, out, inp, None, &mut wt8)?;
        let e = &st.e4m3;
        self.blas.matmul_fp8::<O>(
            n,
            out,
            inp,
            (&st.dy8.slice(..n * out), Fp8::E5M2, &dinv),
            (&st.w8.slice(..out * inp), Fp8::E4M3, &at(&e.scale_inv, wi)),
            dx,
            1.0,
            beta,
            true,
        )?;
        let xp = x.device_ptr(&gpu.stream).0;
        if st.xt8_holds != Some((xi, xp)) {
            let mut xt8 = st.xt8.slice_mut(..n * inp);
            st.e4m3
                .cast_transposed(gpu, xi, x, n, inp, None, &mut xt8)?;
            st.xt8_holds = Some((xi, xp));
        }
        let e = &st.e4m3;
        self.blas.matmul_fp8::<f32>(
            out,
            n,
            inp,
            (&st.dyt8.slice(..n * out), Fp8::E5M2, &dinv),
            (&st.xt8.slice(..n * inp), Fp8::E4M3, &at(&e.scale_inv, xi)),
            dw,
            1.0,
            1.0,
            false,
        )
    }

    /// SwiGLU's backward (d gate ‖ d up from gu = gate ‖ up [n, 2·inter] and dact [n, inter])
    /// written straight as the E5M2 codes that the gate/up product's `bwd` at `layer` reads, when
    /// that product runs in FP8 and its gradient already has a scale; `bwd` must then be given
    /// `gu` as dy (its address marks the codes). False where nothing was done: the caller runs
    /// the bf16 kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn swiglu_bwd_codes(
        &self,
        gpu: &Gpu,
        layer: usize,
        gu: &CudaView<bf16>,
        dact: &CudaView<bf16>,
        n: usize,
        d: usize,
        inter: usize,
    ) -> Result<bool> {
        let di = dy_index(layer, DySite::GateUp);
        let ready = |st: &Fp8State| st.e5m2.seen[di] && st.dy8_holds.is_none();
        let Some(mut st) = self.fused(n, d, 2 * inter, ready) else {
            return Ok(false);
        };
        let st = &mut *st;
        let m = 2 * n * inter;
        let (mut y, mut yt) = (st.dy8.slice_mut(..m), st.dyt8.slice_mut(..m));
        let e = &mut st.e5m2;
        let amax = &mut e.amax.slice_mut(di..di + 1);
        fp8::swiglu_bwd_t(
            gpu,
            gu,
            dact,
            n,
            inter,
            &mut y,
            &mut yt,
            &at(&e.scale, di),
            amax,
        )?;
        st.dy8_holds = Some((di, gu.device_ptr(&gpu.stream).0, true));
        Ok(true)
    }

    /// The E4M3 codes of the activation at (`layer`, `site`), for the kernel that writes it
    /// (`x` [n, inp], in bf16 still) to write beside it, when products of that input can run in
    /// FP8 and it already has a scale; `fwd` given `x` then casts nothing. None: the producer
    /// writes x alone.
    pub fn x_codes(
        &self,
        gpu: &Gpu,
        layer: usize,
        site: XSite,
        x: &CudaView<bf16>,
        n: usize,
        inp: usize,
    ) -> Option<CodesOut> {
        let xi = x_index(layer, site);
        // The products' widths are multiples of 16 in every preset; one that is not runs in
        // bf16 from x itself.
        let mut st = self.fused(n, inp, 16, |st| st.e4m3.seen[xi])?;
        let codes = st.e4m3.codes(gpu, xi, &st.x8);
        st.x8_holds = Some((xi, x.device_ptr(&gpu.stream).0));
        Some(codes)
    }

    /// The E5M2 codes of the output gradient at (`layer`, `site`), for a kernel that would write
    /// that gradient (`dy` [n, out]) to write instead, in dy's layout, when the product (n, inp,
    /// out) runs in FP8 and the gradient already has a scale; `bwd` must then be given `dy`,
    /// and only transposes the codes. None: the producer writes dy in bf16.
    #[allow(clippy::too_many_arguments)]
    pub fn dy_codes(
        &self,
        gpu: &Gpu,
        layer: usize,
        site: DySite,
        dy: &CudaView<bf16>,
        n: usize,
        inp: usize,
        out: usize,
    ) -> Option<CodesOut> {
        let di = dy_index(layer, site);
        // (Where codes are pending for another product, this one's producer writes bf16.)
        let ready = |st: &Fp8State| st.e5m2.seen[di] && st.dy8_holds.is_none();
        let mut st = self.fused(n, inp, out, ready)?;
        let codes = st.e5m2.codes(gpu, di, &st.dy8);
        st.dy8_holds = Some((di, dy.device_ptr(&gpu.stream).0, false));
        Some(codes)
    }

    /// SwiGLU's forward (act = silu(gate)·up over gu [n, 2·inter]) with the codes of act that
    /// down at `layer` reads, when down runs in FP8 and act has a scale (see `Act`): `fwd` or
    /// `bwd` given `act` then casts nothing. False where nothing was done: the caller runs the
    /// bf16 kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn swiglu_codes(
        &self,
        gpu: &Gpu,
        layer: usize,
        gu: &CudaView<bf16>,
        act: Act,
        n: usize,
        inter: usize,
        d: usize,
    ) -> Result<bool> {
        let xi = x_index(layer, XSite::Act);
        let Some(mut st) = self.fused(n, inter, d, |st| st.e4m3.seen[xi]) else {
            return Ok(false);
        };
        let st = &mut *st;
        let e = &mut st.e4m3;
        let (scale, amax) = (&at(&e.scale, xi), &mut e.amax.slice_mut(xi..xi + 1));
        let s = &*gpu.stream;
        match act {
            Act::Written(act) => {
                let mut y = st.x8.slice_mut(..n * inter);
                fp8::swiglu_fwd(gpu, gu, act, inter, &mut y, scale, amax)?;
                st.x8_holds = Some((xi, act.device_ptr(s).0));
            }
            Act::CodesOnly(act) => {
                let mut yt = st.xt8.slice_mut(..n * inter);
                fp8::swiglu_fwd_t(gpu, gu, n, inter, &mut yt, scale, amax)?;
                st.xt8_holds = Some((xi, act.device_ptr(s).0));
            }
        }
        Ok(true)
    }

    /// The FP8 state, for a kernel that writes a product's codes itself: when FP8 is on, the
    /// product's sizes allow it and `ready` (the site has a scale).
    fn fused(
        &self,
        n: usize,
        inp: usize,
        out: usize,
        ready: impl Fn(&Fp8State) -> bool,
    ) -> Option<std::cell::RefMut<'_, Fp8State>> {
        let st = self.fp8.as_ref().filter(|_| fits_fp8(n, inp, out))?;
        let st = st.borrow_mut();
        ready(&st).then_some(st)
    }

    /// The end of a backward: every scale from its history and the amaxes gathered since.
    pub fn update_scales(&self, gpu: &Gpu) -> Result<()> {
        if let Some(st) = &self.fp8 {
            let st = &mut *st.borrow_mut();
            (st.x8_holds, st.xt8_holds, st.dy8_holds) = (None, None, None);
            st.e4m3.update(gpu)?;
            st.e5m2.update(gpu)?;
        }
        Ok(())
    }

    /// Forgets which activations the scratch holds (a forward's activations are rewritten in
    /// place by the next one).
    pub fn new_pass(&self) {
        if let Some(st) = &self.fp8 {
            let st = &mut *st.borrow_mut();
            (st.x8_holds, st.xt8_holds, st.dy8_holds) = (None, None, None);
        }
    }
}

/// y [n, out] = x [n, in] · Wᵀ (W [out, in]) in bf16.
#[allow(clippy::too_many_arguments)]
pub fn fwd_bf16(
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

/// dx [n, in] (= or +=, by `beta`) dy [n, out] · W [out, in] in bf16.
#[allow(clippy::too_many_arguments)]
pub fn dx_bf16<O: MatmulOut>(
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

/// dW [out, in] += dyᵀ · x in bf16.
pub fn dw_bf16(
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

/// Tensor i's entry of a scale or scale_inv buffer (`SCALE_STRIDE` apart).
fn at(buf: &CudaSlice<f32>, i: usize) -> CudaView<'_, f32> {
    buf.slice(i * SCALE_STRIDE..i * SCALE_STRIDE + 1)
}

fn x_index(layer: usize, s: XSite) -> usize {
    layer * E4M3_SITES + s as usize
}

fn dy_index(layer: usize, s: DySite) -> usize {
    layer * E5M2_SITES + s as usize
}

fn w_index(layer: usize, s: WSite) -> usize {
    layer * E4M3_SITES + X_SITES + s as usize
}
