//! The FP8 rows: the casts and the scale update bit for bit against the host codec
//! (`Fp8::encode`), and the FP8 matmuls against an f64 product of the decoded operands.

use super::{f64s, Ctx, TOL_BF16};
use crate::cuda::blas::Blas;
use crate::cuda::buffer::{download, download_bf16, download_f32, upload};
use crate::cuda::fp8::{self, Fp8, SCALE_STRIDE};
use crate::cuda::selftest::Row;
use crate::cuda::Gpu;
use crate::tensor::gemm;
use anyhow::Result;
use cudarc::driver::{CudaSlice, DevicePtr};
use half::bf16;

/// FP8 products into fp32. Hopper's FP8 tensor cores keep fewer bits than fp32 in their partial
/// sums (about 14, as DeepSeek-V3 §3.3.2 measured), and without `fast_accum` cuBLASLt only
/// promotes them to fp32 every few k-steps: the H200 gave 1.6–3.6e-4 of max |C| with and without
/// it at these k (session 29, call 1), where an fp32 sum would give ~1e-7.
const TOL_FP8_ACCUM: f64 = 1e-3;
/// The same with `fast_accum` (never promoted; not worse at these k, looser for long k).
const TOL_FAST_ACCUM: f64 = 5e-3;

/// A buffer of FP8 codes (filled with a NaN code), its scale and amax, for a producer kernel
/// that writes codes (`fp8::CodesOut`).
pub(super) struct FakeCodes {
    y: CudaSlice<u8>,
    scale: CudaSlice<f32>,
    amax: CudaSlice<u32>,
    s: f32,
}

impl FakeCodes {
    pub(super) fn new(gpu: &Gpu, n: usize, scale: f32) -> Result<FakeCodes> {
        Ok(FakeCodes {
            y: upload(gpu, &vec![0x7fu8; n])?,
            scale: upload(gpu, &[scale])?,
            amax: upload(gpu, &[0u32])?,
            s: scale,
        })
    }

    pub(super) fn out(&self, gpu: &Gpu) -> fp8::CodesOut {
        let s = &*gpu.stream;
        fp8::CodesOut {
            y: self.y.device_ptr(s).0,
            scale: self.scale.device_ptr(s).0,
            amax: self.amax.device_ptr(s).0,
        }
    }
}

impl Ctx<'_> {
    /// E5M2 codes a producer wrote into `cols` columns from `cols` of rows `ld` apart (a column
    /// slice, as the model's q‖k‖v gradient), against the host codec of `want` (`codes_row`:
    /// misses of one step allowed), the other columns untouched (and `bf16_untouched`: the
    /// producer's bf16 output, which the codes replace), and its amax.
    pub(super) fn codes_in_columns(
        &mut self,
        op: &str,
        shape: &str,
        c: &FakeCodes,
        (cols, ld): (usize, usize),
        want: &[f32],
        bf16_untouched: bool,
    ) -> Result<()> {
        let all = download(self.gpu, &c.y)?;
        let rows = want.len() / cols.max(1);
        let got: Vec<u8> = (0..rows)
            .flat_map(|r| all[r * ld + cols..r * ld + 2 * cols].to_vec())
            .collect();
        self.codes_row(&format!("{op} (misses)"), shape, Fp8::E5M2, c.s, &got, want);
        let others = (0..all.len())
            .filter(|i| !(cols..2 * cols).contains(&(i % ld)))
            .all(|i| all[i] == 0x7f);
        self.exact(
            &format!("{op}: other columns and bf16 untouched"),
            shape,
            others && bf16_untouched,
        );
        let amax = download(self.gpu, &c.amax)?[0];
        self.amax_row(&format!("{op}: amax"), shape, amax, want);
        Ok(())
    }

    /// A producer's codes bit for bit against the host codec of the values it wrote beside them
    /// (`vals`, as downloaded), and its amax exactly.
    pub(super) fn codes_exact(
        &mut self,
        op: &str,
        shape: &str,
        f: Fp8,
        c: &FakeCodes,
        vals: &[f32],
    ) -> Result<()> {
        let want: Vec<u8> = vals.iter().map(|&v| f.encode(v * c.s)).collect();
        self.exact(
            &format!("{op} (bit-exact)"),
            shape,
            download(self.gpu, &c.y)? == want,
        );
        let amax = f32::from_bits(download(self.gpu, &c.amax)?[0]);
        let want = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
        self.exact(&format!("{op}: amax (exact)"), shape, amax == want);
        Ok(())
    }

    pub(super) fn exact(&mut self, op: &str, shape: &str, same: bool) {
        self.rows.push(Row {
            op: op.to_string(),
            shape: shape.to_string(),
            max_rel_err: if same { 0.0 } else { f64::INFINITY },
            tolerance: 0.0,
        });
    }

    /// bf16 values spanning FP8's range at `scale`: most normal, some past the format's max
    /// (saturated), some below its smallest normal (subnormal codes or zero).
    fn fp8_inputs(&mut self, n: usize, f: Fp8, scale: f32) -> Vec<f32> {
        let top = f.max() / scale;
        let x: Vec<f32> = (0..n)
            .map(|i| {
                let v = self.rng.normal() as f32;
                match i % 16 {
                    0 => v * 2.0 * top,
                    1 => v * top * 2f32.powi(-14),
                    _ => v * top / 8.0,
                }
            })
            .collect();
        crate::cuda::buffer::round_bf16(&x)
    }

    pub(super) fn fp8(&mut self, blas: &Blas) -> Result<()> {
        self.fp8_casts()?;
        self.fp8_swiglu()?;
        self.fp8_transpose()?;
        self.fp8_scale_update()?;
        self.fp8_matmuls(blas)
    }

    fn fp8_casts(&mut self) -> Result<()> {
        let gpu = self.gpu;
        for f in [Fp8::E4M3, Fp8::E5M2] {
            let scale = 0.75f32;
            let codes = |x: &[f32]| x.iter().map(|&v| f.encode(v * scale)).collect::<Vec<u8>>();
            let amax_of = |x: &[f32]| x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let sd = upload(gpu, &[scale])?;

            let n = 8 * 1031;
            let shape = format!("{f:?} n={n}");
            let x = self.fp8_inputs(n, f, scale);
            let xd = self.bf(&x)?;
            let mut y = upload(gpu, &vec![0x7fu8; n])?;
            let mut amax = upload(gpu, &[0u32])?;
            fp8::cast(gpu, f, &xd, &mut y, &sd, &mut amax)?;
            self.exact(
                "fp8 cast (bit-exact)",
                &shape,
                download(gpu, &y)? == codes(&x),
            );
            let got = f32::from_bits(download(gpu, &amax)?[0]);
            self.exact("fp8 cast amax (exact)", &shape, got == amax_of(&x));

            // Edges of the 64 × 256 blocks: a partial column strip and a partial row tile.
            for (rows, cols) in [(48usize, 200usize), (272, 128)] {
                let shape = format!("{f:?} {rows}×{cols}");
                let x = self.fp8_inputs(rows * cols, f, scale);
                let xd = self.bf(&x)?;
                let mut y = upload(gpu, &vec![0x7fu8; rows * cols])?;
                let mut yt = upload(gpu, &vec![0x7fu8; rows * cols])?;
                let mut amax = upload(gpu, &[0u32])?;
                let mut yv = y.slice_mut(..);
                fp8::cast_transposed(
                    gpu,
                    f,
                    &xd,
                    rows,
                    cols,
                    Some(&mut yv),
                    &mut yt,
                    &sd,
                    &mut amax,
                )?;
                let want = codes(&x);
                let want_t: Vec<u8> = (0..rows * cols)
                    .map(|i| want[(i % rows) * cols + i / rows])
                    .collect();
                self.exact("fp8 cast_transposed y (bit-exact)", &shape, {
                    download(gpu, &y)? == want
                });
                self.exact("fp8 cast_transposed yᵀ (bit-exact)", &shape, {
                    download(gpu, &yt)? == want_t
                });
                let got = f32::from_bits(download(gpu, &amax)?[0]);
                self.exact("fp8 cast_transposed amax", &shape, got == amax_of(&x));
            }
        }
        Ok(())
    }

    /// The SwiGLU kernels that write codes instead of bf16 (forward: actᵀ in E4M3; backward:
    /// d gate ‖ d up in E5M2, both layouts) against the host's f32 formulas and codec. The
    /// device's expf may differ from the host's in the last bit, which can move a value across a
    /// rounding boundary: a code one step from the host's counts as such a miss, and the row
    /// reports the fraction of misses (any larger difference fails it).
    fn fp8_swiglu(&mut self) -> Result<()> {
        let gpu = self.gpu;
        let silu = |x: f32| x * (1.0 / (1.0 + (-x).exp()));
        for (rows, w) in [(48usize, 200usize), (272, 64)] {
            let shape = format!("{rows}×{w}");
            let gu = self.randn_bf(2 * rows * w, 3.0);
            let dy = self.randn_bf(rows * w, 1e-3);
            let (gud, dyd) = (self.bf(&gu)?, self.bf(&dy)?);
            let mut act = vec![0f32; rows * w];
            let mut dgu = vec![0f32; 2 * rows * w];
            for r in 0..rows {
                for c in 0..w {
                    let (g, u, d) = (gu[r * 2 * w + c], gu[r * 2 * w + w + c], dy[r * w + c]);
                    let s = 1.0 / (1.0 + (-g).exp());
                    act[r * w + c] = silu(g) * u;
                    dgu[r * 2 * w + c] = d * u * (s * (1.0 + g * (1.0 - s)));
                    dgu[r * 2 * w + w + c] = d * silu(g);
                }
            }
            let transpose = |v: &[f32], cols: usize| -> Vec<f32> {
                (0..v.len())
                    .map(|i| v[(i % rows) * cols + i / rows])
                    .collect()
            };

            let (f, scale) = (Fp8::E4M3, 4.0f32);
            let sd = upload(gpu, &[scale])?;
            let mut actd = self.nan_bf16(rows * w)?;
            let mut y = upload(gpu, &vec![0x7fu8; rows * w])?;
            let mut amax = upload(gpu, &[0u32])?;
            fp8::swiglu_fwd(gpu, &gud, &mut actd, w, &mut y, &sd, &mut amax)?;
            let got = download_bf16(gpu, &actd)?;
            self.check("fp8 swiglu_fwd act", &shape, &got, &f64s(&act), TOL_BF16);
            self.codes_row(
                "fp8 swiglu_fwd codes (misses)",
                &shape,
                f,
                scale,
                &download(gpu, &y)?,
                &act,
            );
            self.amax_row(
                "fp8 swiglu_fwd amax",
                &shape,
                download(gpu, &amax)?[0],
                &act,
            );
            let mut yt = upload(gpu, &vec![0x7fu8; rows * w])?;
            let mut amax = upload(gpu, &[0u32])?;
            fp8::swiglu_fwd_t(gpu, &gud, rows, w, &mut yt, &sd, &mut amax)?;
            let want = transpose(&act, w);
            self.codes_row(
                "fp8 swiglu_fwd_t actᵀ (misses)",
                &shape,
                f,
                scale,
                &download(gpu, &yt)?,
                &want,
            );
            self.amax_row(
                "fp8 swiglu_fwd_t amax",
                &shape,
                download(gpu, &amax)?[0],
                &act,
            );

            let (f, scale) = (Fp8::E5M2, 4096.0f32);
            let sd = upload(gpu, &[scale])?;
            let mut y = upload(gpu, &vec![0x7fu8; 2 * rows * w])?;
            let mut yt = upload(gpu, &vec![0x7fu8; 2 * rows * w])?;
            let mut amax = upload(gpu, &[0u32])?;
            fp8::swiglu_bwd_t(
                gpu,
                &gud,
                &dyd,
                rows,
                w,
                &mut y.slice_mut(..),
                &mut yt,
                &sd,
                &mut amax,
            )?;
            let got = download(gpu, &y)?;
            self.codes_row(
                "fp8 swiglu_bwd_t d gate‖up (misses)",
                &shape,
                f,
                scale,
                &got,
                &dgu,
            );
            let want = transpose(&dgu, 2 * w);
            let got = download(gpu, &yt)?;
            self.codes_row(
                "fp8 swiglu_bwd_t (d gate‖up)ᵀ (misses)",
                &shape,
                f,
                scale,
                &got,
                &want,
            );
            self.amax_row(
                "fp8 swiglu_bwd_t amax",
                &shape,
                download(gpu, &amax)?[0],
                &dgu,
            );
        }
        Ok(())
    }

    /// `fp8::transpose` of codes as a producer leaves them ([rows, cols]), bit for bit.
    fn fp8_transpose(&mut self) -> Result<()> {
        let gpu = self.gpu;
        for (rows, cols) in [(160usize, 288usize), (48, 200)] {
            let codes: Vec<u8> = (0..rows * cols)
                .map(|_| (self.rng.uniform() * 256.0) as u8)
                .collect();
            let y = upload(gpu, &codes)?;
            let mut yt = upload(gpu, &vec![0u8; rows * cols])?;
            fp8::transpose(gpu, &y, rows, cols, &mut yt)?;
            let want: Vec<u8> = (0..rows * cols)
                .map(|i| codes[(i % rows) * cols + i / rows])
                .collect();
            let same = download(gpu, &yt)? == want;
            self.exact("fp8 transpose (bit-exact)", &format!("{rows}×{cols}"), same);
        }
        Ok(())
    }

    /// `got` against the codes of `want` · scale: the fraction of codes one step away (a bad
    /// row where any is further), tolerance 1e-3.
    pub(super) fn codes_row(
        &mut self,
        op: &str,
        shape: &str,
        f: Fp8,
        scale: f32,
        got: &[u8],
        want: &[f32],
    ) {
        let min_sub = f.decode(1);
        let mut misses = 0usize;
        let mut far = got.len() != want.len();
        for (&g, &w) in got.iter().zip(want) {
            let e = f.encode(w * scale);
            if g == e {
                continue;
            }
            let neighbours = (g ^ e) & 0x80 == 0 && (g as i32 - e as i32).abs() == 1;
            let near_zero = f.decode(g).abs() + f.decode(e).abs() <= 2.0 * min_sub;
            if neighbours || near_zero {
                misses += 1;
            } else {
                far = true;
            }
        }
        self.rows.push(Row {
            op: op.to_string(),
            shape: shape.to_string(),
            max_rel_err: if far {
                f64::INFINITY
            } else {
                misses as f64 / got.len().max(1) as f64
            },
            tolerance: 1e-3,
        });
    }

    /// A fused kernel's amax (f32 bits) against the host's max |want|.
    pub(super) fn amax_row(&mut self, op: &str, shape: &str, got: u32, want: &[f32]) {
        let want = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let err = (f32::from_bits(got) as f64 - want).abs() / want.max(f64::MIN_POSITIVE);
        self.rows.push(Row {
            op: op.to_string(),
            shape: shape.to_string(),
            max_rel_err: err,
            tolerance: 1e-5,
        });
    }

    fn fp8_scale_update(&mut self) -> Result<()> {
        let gpu = self.gpu;
        let (n, hist) = (3usize, 4usize);
        let f = Fp8::E4M3;
        // Tensor 2 has seen only zeros: it keeps its scale.
        let amax = [3.5f32, 0.25, 0.0];
        let mut history: Vec<f32> = (0..n * hist)
            .map(|_| self.rng.uniform() as f32 * 4.0)
            .collect();
        history[2 * hist..].fill(0.0);
        // Scales SCALE_STRIDE apart; the floats between them must stay as they are.
        let strided = |v: [f32; 3]| -> Vec<f32> {
            (0..n * SCALE_STRIDE)
                .map(|j| {
                    if j % SCALE_STRIDE == 0 {
                        v[j / SCALE_STRIDE]
                    } else {
                        -7.0
                    }
                })
                .collect()
        };
        let (mut scale, mut inv) = (strided([1.0, 2.0, 8.0]), strided([1.0, 0.5, 0.125]));
        let mut ad = upload(gpu, &amax.map(f32::to_bits))?;
        let mut hd = upload(gpu, &history)?;
        let mut sd = upload(gpu, &scale)?;
        let mut id = upload(gpu, &inv)?;
        fp8::update_scales(gpu, f, &mut ad, &mut hd, &mut sd, &mut id)?;
        for i in 0..n {
            let h = &mut history[i * hist..(i + 1) * hist];
            h.rotate_right(1);
            h[0] = amax[i];
            let top = h.iter().fold(0f32, |m, &v| m.max(v));
            if top > 0.0 {
                let j = i * SCALE_STRIDE;
                scale[j] = f.max() / top;
                inv[j] = 1.0 / scale[j];
            }
        }
        let same = download(gpu, &ad)? == [0u32; 3]
            && download_f32(gpu, &hd)? == history
            && download_f32(gpu, &sd)? == scale
            && download_f32(gpu, &id)? == inv;
        self.exact("fp8 update_scales (exact)", "3 tensors, history 4", same);
        Ok(())
    }

    fn fp8_matmuls(&mut self, blas: &Blas) -> Result<()> {
        let gpu = self.gpu;
        type Case = (usize, usize, usize, Fp8, Fp8, bool, f32, f32);
        let cases: &[Case] = &[
            (64, 96, 80, Fp8::E4M3, Fp8::E4M3, false, 1.0, 0.0),
            (64, 96, 80, Fp8::E4M3, Fp8::E4M3, true, 1.0, 0.0),
            (128, 512, 48, Fp8::E5M2, Fp8::E4M3, false, 0.5, 1.0),
            (48, 256, 160, Fp8::E4M3, Fp8::E5M2, false, 1.0, 1.0),
        ];
        for &(m, k, n, fa, fb, fast, alpha, beta) in cases {
            let shape = format!(
                "m={m} k={k} n={n} {fa:?}×{fb:?}{} a={alpha} b={beta}",
                if fast { " fast" } else { "" }
            );
            let (sa, sb) = (0.37f32, 1.9f32);
            let mut codes = |len: usize, f: Fp8| -> Vec<u8> {
                (0..len)
                    .map(|_| f.encode((self.rng.normal() * f.max() as f64 / 8.0) as f32))
                    .collect()
            };
            let (a, b) = (codes(m * k, fa), codes(n * k, fb));
            let dec = |c: &[u8], f: Fp8, s: f32| -> Vec<f64> {
                c.iter().map(|&v| f.decode(v) as f64 * s as f64).collect()
            };
            let c0 = self.randn(m * n, 100.0);
            let mut want = f64s(&c0);
            let (ad, bd) = (dec(&a, fa, sa), dec(&b, fb, sb));
            gemm(
                m,
                k,
                n,
                &ad,
                false,
                &bd,
                true,
                &mut want,
                alpha as f64,
                beta as f64,
            );
            let (a_d, b_d) = (upload(gpu, &a)?, upload(gpu, &b)?);
            // Both scales in one buffer, SCALE_STRIDE apart, as the model keeps them.
            let mut scales = vec![0.0f32; 2 * SCALE_STRIDE];
            (scales[0], scales[SCALE_STRIDE]) = (sa, sb);
            let scales = upload(gpu, &scales)?;
            let (sa_d, sb_d) = (
                scales.slice(..1),
                scales.slice(SCALE_STRIDE..SCALE_STRIDE + 1),
            );
            let tol = if fast { TOL_FAST_ACCUM } else { TOL_FP8_ACCUM };
            let mut c = if beta == 0.0 {
                self.nan_f32(m * n)?
            } else {
                self.f32(&c0)?
            };
            blas.matmul_fp8(
                m,
                k,
                n,
                (&a_d, fa, &sa_d),
                (&b_d, fb, &sb_d),
                &mut c,
                alpha,
                beta,
                fast,
            )?;
            let got = download_f32(gpu, &c)?;
            self.check("matmul_fp8 (→f32)", &shape, &got, &want, tol);
            if beta == 0.0 {
                let mut c16 = self.nan_bf16(m * n)?;
                blas.matmul_fp8::<bf16>(
                    m,
                    k,
                    n,
                    (&a_d, fa, &sa_d),
                    (&b_d, fb, &sb_d),
                    &mut c16,
                    alpha,
                    beta,
                    fast,
                )?;
                let got = download_bf16(gpu, &c16)?;
                self.check("matmul_fp8 (→bf16)", &shape, &got, &want, TOL_BF16);
            }
        }
        Ok(())
    }
}
