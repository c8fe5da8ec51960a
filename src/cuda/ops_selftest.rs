//! Every dense CUDA op (`cuda::ops`) and the cuBLASLt matmul (`cuda::blas`) against the CPU
//! reference, on fresh random inputs: inputs are rounded to bf16 where the CUDA op takes bf16,
//! the reference runs in f64 on those same values, every output (forward and backward) is
//! compared by max |gpu − cpu| / max |cpu|, output buffers are poisoned with NaN first (and
//! accumulators start from random values) so that unwritten or mis-accumulated elements fail.
//! Backward references consume the very tensors the GPU forward saved (downloaded), so each row
//! checks one kernel.

mod fp8_rows;
use fp8_rows::FakeCodes;

use super::blas::{BatchStrides, Blas};
use super::buffer::{
    download, download_bf16, download_f32, round_bf16, upload, upload_bf16, upload_f32,
};
use super::fp8::Fp8;
use super::selftest::Row;
use super::{ops, Gpu};
use crate::data::IGNORE;
use crate::model::params::{Kind, ParamLayout};
use crate::model::{mixer, nn};
use crate::ops::conv;
use crate::tensor::{gemm, max_rel_err, Rng};
use crate::train::adamw::{self, AdamW, AdamWConfig};
use anyhow::Result;
use cudarc::driver::CudaSlice;
use half::bf16;

/// fp32 outputs.
const TOL_F32: f64 = 1e-5;
/// fp32 outputs of reductions (weight gradients, losses, norms).
const TOL_RED: f64 = 1e-4;
/// bf16 outputs, and matmuls of bf16 inputs.
const TOL_BF16: f64 = 1e-2;

/// The op groups, in the order they run (`--filter` matches these names).
pub const GROUPS: &[&str] = &[
    "cast",
    "matmul",
    "fp8",
    "embedding",
    "silu",
    "swiglu",
    "rmsnorm",
    "gated_rmsnorm",
    "l2norm",
    "gates",
    "conv",
    "cross_entropy",
    "adamw",
    "grad_norm",
    "graph",
];

/// A seed that differs from run to run.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// All checks with a fresh seed.
pub fn run(gpu: &Gpu) -> Result<Vec<Row>> {
    run_with(gpu, clock_seed(), None)
}

/// The checks of the groups whose name contains `filter` (all when `None`), from `seed`.
pub fn run_with(gpu: &Gpu, seed: u64, filter: Option<&str>) -> Result<Vec<Row>> {
    let mut c = Ctx {
        gpu,
        rng: Rng::new(seed),
        rows: vec![],
    };
    let wanted = |g: &str| filter.is_none_or(|f| g.contains(f) || f.contains(g));
    if wanted("cast") {
        c.cast()?;
    }
    if wanted("matmul") {
        let blas = Blas::new(gpu)?;
        c.matmul(&blas)?;
    }
    if wanted("fp8") {
        let blas = Blas::new(gpu)?;
        c.fp8(&blas)?;
    }
    if wanted("embedding") {
        c.embedding()?;
    }
    if wanted("silu") {
        c.silu()?;
    }
    if wanted("swiglu") {
        c.swiglu()?;
    }
    if wanted("head_groups") {
        c.head_groups()?;
    }
    if wanted("rmsnorm") {
        c.rmsnorm()?;
    }
    if wanted("gated_rmsnorm") {
        c.gated_rmsnorm()?;
    }
    if wanted("l2norm") {
        c.l2norm()?;
    }
    if wanted("gates") {
        c.gates()?;
    }
    if wanted("conv") {
        c.conv()?;
    }
    if wanted("cross_entropy") {
        c.cross_entropy()?;
    }
    if wanted("adamw") {
        c.adamw()?;
    }
    if wanted("grad_norm") {
        c.grad_norm()?;
    }
    if wanted("graph") {
        c.graph()?;
    }
    Ok(c.rows)
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// max_rel_err of a GPU result against an f64 reference (∞ on a length mismatch or NaN).
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    max_rel_err(&f64s(got), want)
}

struct Ctx<'a> {
    gpu: &'a Gpu,
    rng: Rng,
    rows: Vec<Row>,
}

impl Ctx<'_> {
    fn randn(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.rng.normal() * scale) as f32).collect()
    }

    /// Normal values already rounded to bf16 (what a bf16 input holds).
    fn randn_bf(&mut self, n: usize, scale: f64) -> Vec<f32> {
        round_bf16(&self.randn(n, scale))
    }

    fn check(&mut self, op: &str, shape: &str, got: &[f32], want: &[f64], tol: f64) {
        self.rows.push(Row {
            op: op.to_string(),
            shape: shape.to_string(),
            max_rel_err: rel_err(got, want),
            tolerance: tol,
        });
    }

    fn nan_bf16(&self, n: usize) -> Result<CudaSlice<bf16>> {
        upload_bf16(self.gpu, &vec![f32::NAN; n])
    }

    fn nan_f32(&self, n: usize) -> Result<CudaSlice<f32>> {
        upload_f32(self.gpu, &vec![f32::NAN; n])
    }

    fn bf(&self, x: &[f32]) -> Result<CudaSlice<bf16>> {
        upload_bf16(self.gpu, x)
    }

    fn f32(&self, x: &[f32]) -> Result<CudaSlice<f32>> {
        upload_f32(self.gpu, x)
    }

    fn cast(&mut self) -> Result<()> {
        let gpu = self.gpu;
        for n in [1000usize, 4099] {
            let shape = format!("n={n}");
            let x = self.randn(n, 1.0);
            let xd = self.f32(&x)?;
            let mut y = self.nan_bf16(n)?;
            ops::cast_f32_to_bf16(gpu, &xd, &mut y)?;
            let got = download_bf16(gpu, &y)?;
            self.check("cast_f32_to_bf16", &shape, &got, &f64s(&x), TOL_BF16);
            // Round-to-nearest-even must agree with the host's conversion exactly.
            let exact = got == round_bf16(&x);
            self.rows.push(Row {
                op: "cast_f32_to_bf16 (bit-exact)".into(),
                shape: shape.clone(),
                max_rel_err: if exact { 0.0 } else { f64::INFINITY },
                tolerance: 0.0,
            });
            let xb = self.randn_bf(n, 1.0);
            let xbd = self.bf(&xb)?;
            let mut yf = self.nan_f32(n)?;
            ops::cast_bf16_to_f32(gpu, &xbd, &mut yf)?;
            let got = download_f32(gpu, &yf)?;
            self.check("cast_bf16_to_f32", &shape, &got, &f64s(&xb), TOL_F32);
        }
        Ok(())
    }

    fn matmul(&mut self, blas: &Blas) -> Result<()> {
        let gpu = self.gpu;
        // (m, k, n, ta, tb, alpha, beta): all transposes, odd sizes, accumulation.
        let cases: &[(usize, usize, usize, bool, bool, f32, f32)] = &[
            (64, 96, 80, false, false, 1.0, 0.0),
            (64, 96, 80, false, true, 1.0, 0.0),
            (64, 96, 80, true, false, 1.0, 0.0),
            (64, 96, 80, true, true, 1.0, 0.0),
            (33, 1000, 17, false, true, 1.0, 0.0),
            (96, 51, 200, true, false, 0.5, 1.0),
        ];
        for &(m, k, n, ta, tb, alpha, beta) in cases {
            let shape = format!(
                "m={m} k={k} n={n} ta={} tb={} a={alpha} b={beta}",
                ta as u8, tb as u8
            );
            let a = self.randn_bf(m * k, 1.0);
            let b = self.randn_bf(k * n, 1.0);
            let c0 = self.randn(m * n, 1.0);
            let mut want = f64s(&c0);
            gemm(
                m,
                k,
                n,
                &f64s(&a),
                ta,
                &f64s(&b),
                tb,
                &mut want,
                alpha as f64,
                beta as f64,
            );
            let (ad, bd) = (self.bf(&a)?, self.bf(&b)?);
            // fp32 output; with beta = 0 the output starts as NaN (cuBLASLt must not read it).
            let mut c = if beta == 0.0 {
                self.nan_f32(m * n)?
            } else {
                self.f32(&c0)?
            };
            blas.matmul(m, k, n, &ad, ta, &bd, tb, &mut c, alpha, beta)?;
            let got = download_f32(gpu, &c)?;
            self.check("matmul (bf16→f32)", &shape, &got, &want, TOL_BF16);
            if beta == 0.0 {
                let mut c16 = self.nan_bf16(m * n)?;
                blas.matmul(m, k, n, &ad, ta, &bd, tb, &mut c16, alpha, beta)?;
                let got = download_bf16(gpu, &c16)?;
                self.check("matmul (bf16→bf16)", &shape, &got, &want, TOL_BF16);
            }
        }
        // A view that starts 2 bytes into its buffer: the alignment the heuristic is told about.
        {
            let (m, k, n) = (31, 96, 40);
            let shape = format!("m={m} k={k} n={n} A at +2 bytes");
            let a = self.randn_bf(m * k + 1, 1.0);
            let b = self.randn_bf(n * k, 1.0);
            let mut want = vec![0.0; m * n];
            gemm(
                m,
                k,
                n,
                &f64s(&a[1..]),
                false,
                &f64s(&b),
                true,
                &mut want,
                1.0,
                0.0,
            );
            let (ad, bd) = (self.bf(&a)?, self.bf(&b)?);
            let mut c = self.nan_f32(m * n)?;
            blas.matmul(m, k, n, &ad.slice(1..), false, &bd, true, &mut c, 1.0, 0.0)?;
            let got = download_f32(gpu, &c)?;
            self.check("matmul (unaligned view)", &shape, &got, &want, TOL_BF16);
        }
        // Strided batches, one with B shared by every batch (stride 0).
        for share_b in [false, true] {
            let (batch, m, k, n) = (3usize, 20usize, 64usize, 24usize);
            let shape = format!(
                "batch={batch} m={m} k={k} n={n} tb=1{}",
                if share_b { " B shared" } else { "" }
            );
            let a = self.randn_bf(batch * m * k, 1.0);
            let nb = if share_b { 1 } else { batch };
            let b = self.randn_bf(nb * n * k, 1.0);
            let mut want = vec![0.0; batch * m * n];
            for i in 0..batch {
                let bi = if share_b { 0 } else { i };
                gemm(
                    m,
                    k,
                    n,
                    &f64s(&a[i * m * k..(i + 1) * m * k]),
                    false,
                    &f64s(&b[bi * n * k..(bi + 1) * n * k]),
                    true,
                    &mut want[i * m * n..(i + 1) * m * n],
                    1.0,
                    0.0,
                );
            }
            let (ad, bd) = (self.bf(&a)?, self.bf(&b)?);
            let strides = BatchStrides {
                a: (m * k) as i64,
                b: if share_b { 0 } else { (n * k) as i64 },
                c: (m * n) as i64,
            };
            let mut c = self.nan_bf16(batch * m * n)?;
            blas.matmul_strided_batched(
                batch, m, k, n, &ad, false, &bd, true, &mut c, strides, 1.0, 0.0,
            )?;
            let got = download_bf16(gpu, &c)?;
            self.check("matmul_strided_batched", &shape, &got, &want, TOL_BF16);
        }
        Ok(())
    }

    fn embedding(&mut self) -> Result<()> {
        let gpu = self.gpu;
        for (vocab, d, n) in [
            (50usize, 96usize, 200usize),
            (1000, 1000, 333),
            (7, 33, 3000),
        ] {
            let shape = format!("vocab={vocab} d={d} tokens={n}");
            let table = self.randn_bf(vocab * d, 1.0);
            let tokens: Vec<u32> = (0..n).map(|_| self.rng.below(vocab) as u32).collect();
            let want = nn::embedding_fwd(&f64s(&table), &tokens, d);
            let (td, kd) = (self.bf(&table)?, upload(gpu, &tokens)?);
            let mut out = self.nan_bf16(n * d)?;
            ops::embedding_fwd(gpu, &td, &kd, &mut out, d)?;
            let got = download_bf16(gpu, &out)?;
            self.check("embedding_fwd", &shape, &got, &want, TOL_BF16);

            let dy = self.randn_bf(n * d, 1.0);
            let dt0 = self.randn(vocab * d, 1.0);
            let mut want = f64s(&dt0);
            nn::embedding_bwd(&tokens, &f64s(&dy), d, &mut want);
            let dyd = self.bf(&dy)?;
            let mut dt = self.f32(&dt0)?;
            ops::embedding_bwd(gpu, &kd, &dyd, &mut dt, d)?;
            let got = download_f32(gpu, &dt)?;
            self.check("embedding_bwd dtable", &shape, &got, &want, TOL_RED);
        }
        Ok(())
    }

    /// GVA's sum of dq/dk over the value heads that share a q/k head, against `mixer`'s CPU form.
    fn head_groups(&mut self) -> Result<()> {
        let gpu = self.gpu;
        for (n, h, dk, g) in [
            (70usize, 2usize, 64usize, 2usize),
            (33, 3, 128, 4),
            (5, 1, 256, 3),
            // A head dim not a multiple of 8: the one-element-per-thread path.
            (9, 2, 12, 2),
        ] {
            let shape = format!("tokens={n} H={h} K={dk} group={g}");
            let dy = self.randn_bf(n * h * dk * g, 1.0);
            let dyd = self.bf(&dy)?;
            let mut dx = self.nan_bf16(n * h * dk)?;
            ops::sum_head_groups(gpu, &dyd, &mut dx, dk, g)?;
            let got = download_bf16(gpu, &dx)?;
            let want = mixer::sum_head_groups(&f64s(&dy), dk, g).into_owned();
            self.check("sum_head_groups", &shape, &got, &want, TOL_BF16);
        }
        Ok(())
    }

    fn silu(&mut self) -> Result<()> {
        let gpu = self.gpu;
        // 4097: a scalar tail after the 8-wide chunks.
        for n in [1000usize, 4097] {
            let shape = format!("n={n}");
            let x = self.randn_bf(n, 2.0);
            let dy = self.randn_bf(n, 1.0);
            let (xd, dyd) = (self.bf(&x)?, self.bf(&dy)?);
            let mut y = self.nan_bf16(n)?;
            ops::silu_fwd(gpu, &xd, &mut y)?;
            let got = download_bf16(gpu, &y)?;
            self.check("silu_fwd", &shape, &got, &nn::silu_fwd(&f64s(&x)), TOL_BF16);
            let mut dx = self.nan_bf16(n)?;
            ops::silu_bwd(gpu, &xd, &dyd, &mut dx)?;
            let got = download_bf16(gpu, &dx)?;
            self.check(
                "silu_bwd",
                &shape,
                &got,
                &nn::silu_bwd(&f64s(&x), &f64s(&dy)),
                TOL_BF16,
            );
        }
        // Views starting one element in: not 16-byte aligned, so the kernels' scalar fallback.
        let n = 1001;
        let x = self.randn_bf(n, 2.0);
        let xd = self.bf(&x)?;
        let mut y = self.nan_bf16(n)?;
        ops::silu_fwd(gpu, &xd.slice(1..), &mut y.slice_mut(1..))?;
        let got = download_bf16(gpu, &y)?;
        let want = nn::silu_fwd(&f64s(&x[1..]));
        self.check(
            "silu_fwd",
            "n=1000, unaligned views",
            &got[1..],
            &want,
            TOL_BF16,
        );
        Ok(())
    }

    fn swiglu(&mut self) -> Result<()> {
        let gpu = self.gpu;
        // gate ‖ up side by side, [rows, 2w]: the MLP width 5632 over 37 rows and a narrow one
        // (8 values at a time); odd widths take the scalar path.
        for (rows, w) in [(125usize, 8usize), (3, 1111), (40, 25), (37, 5632)] {
            let shape = format!("rows={rows} w={w}");
            let n = rows * w;
            let g = self.randn_bf(n, 2.0);
            let u = self.randn_bf(n, 1.0);
            let dy = self.randn_bf(n, 1.0);
            let (g64, u64_, dy64) = (f64s(&g), f64s(&u), f64s(&dy));
            let gu: Vec<f32> = (0..rows)
                .flat_map(|r| g[r * w..(r + 1) * w].iter().chain(&u[r * w..(r + 1) * w]))
                .copied()
                .collect();
            let (mut gud, dyd) = (self.bf(&gu)?, self.bf(&dy)?);
            let mut y = self.nan_bf16(n)?;
            ops::swiglu_fwd(gpu, &gud, &mut y, w)?;
            let want: Vec<f64> = (0..n).map(|i| nn::silu(g64[i]) * u64_[i]).collect();
            let got = download_bf16(gpu, &y)?;
            self.check("swiglu_fwd", &shape, &got, &want, TOL_BF16);
            ops::swiglu_bwd(gpu, &mut gud, &dyd, w)?;
            let got = download_bf16(gpu, &gud)?;
            let half = |hi: bool| -> Vec<f32> {
                (0..n)
                    .map(|i| got[(i / w) * 2 * w + usize::from(hi) * w + i % w])
                    .collect()
            };
            let want_dg: Vec<f64> = (0..n)
                .map(|i| dy64[i] * u64_[i] * nn::silu_grad(g64[i]))
                .collect();
            let want_du: Vec<f64> = (0..n).map(|i| dy64[i] * nn::silu(g64[i])).collect();
            self.check("swiglu_bwd dgate", &shape, &half(false), &want_dg, TOL_BF16);
            self.check("swiglu_bwd dup", &shape, &half(true), &want_du, TOL_BF16);
        }
        Ok(())
    }

    fn rmsnorm(&mut self) -> Result<()> {
        let gpu = self.gpu;
        let eps = 1e-5f32;
        // General kernels: d = 96, 1000, 200 (and the backward of 2048); fast ones: 64, 256 (several
        // rows per warp of a backward part), 1024, 2048 (forward).
        for (rows, d) in [
            (7usize, 96usize),
            (300, 1000),
            (600, 64),
            (77, 200),
            (9000, 256),
            (1000, 1024),
            (333, 2048),
        ] {
            let shape = format!("rows={rows} d={d}");
            let x = self.randn_bf(rows * d, 1.5);
            let w = self.randn_bf(d, 1.0);
            let (xd, wd) = (self.bf(&x)?, self.bf(&w)?);
            let (mut y, mut rstd) = (self.nan_bf16(rows * d)?, self.nan_f32(rows)?);
            ops::rmsnorm_fwd(gpu, &xd, &wd, &mut y, &mut rstd, d, eps)?;
            let (want_y, want_r) = nn::rmsnorm_fwd(&f64s(&x), &f64s(&w), d, eps as f64);
            let got = download_bf16(gpu, &y)?;
            self.check("rmsnorm_fwd y", &shape, &got, &want_y, TOL_BF16);
            let got_r = download_f32(gpu, &rstd)?;
            self.check("rmsnorm_fwd rstd", &shape, &got_r, &want_r, TOL_F32);

            let dy = self.randn_bf(rows * d, 1.0);
            let dw0 = self.randn(d, 1.0);
            let mut want_dw = f64s(&dw0);
            let want_dx = nn::rmsnorm_bwd(
                &f64s(&x),
                &f64s(&w),
                &f64s(&got_r),
                &f64s(&dy),
                d,
                &mut want_dw,
            );
            let dyd = self.bf(&dy)?;
            let mut dx = self.nan_bf16(rows * d)?;
            let mut dw = self.f32(&dw0)?;
            let mut scratch = self.nan_f32(ops::norm_bwd_scratch_len(d))?;
            ops::rmsnorm_bwd(
                gpu,
                &xd,
                &wd,
                &rstd,
                &dyd,
                &mut dx,
                &mut dw,
                &mut scratch,
                d,
            )?;
            let got = download_bf16(gpu, &dx)?;
            self.check("rmsnorm_bwd dx", &shape, &got, &want_dx, TOL_BF16);
            let got = download_f32(gpu, &dw)?;
            self.check("rmsnorm_bwd dw", &shape, &got, &want_dw, TOL_RED);
        }
        // The model's RMSNorm backward on the fp32 residual stream (written, then accumulated),
        // with its bf16 copy of dx: against the f64 composition, and bit for bit against
        // cast_f32_to_bf16 of the fp32 dx it replaces.
        // With `lowrank`, dy has the addend Σ_b c_b·v_b (two blocks of rank 3, as the mixer's a
        // and b projections); d = 98 takes the general path.
        for (rows, d) in [
            (7usize, 96usize),
            (300, 1000),
            (9000, 256),
            (333, 2048),
            (1001, 64),
            (50, 98),
        ] {
            // The forward on the fp32 stream, plain and with its residual add.
            for with_add in [false, true] {
                let shape = format!("rows={rows} d={d} residual_add={with_add}");
                let x = self.randn(rows * d, 1.5);
                let add = self.randn_bf(rows * d, 1.0);
                let w = self.randn_bf(d, 1.0);
                let mut want_sum = f64s(&x);
                if with_add {
                    for (o, &a) in want_sum.iter_mut().zip(&add) {
                        *o += a as f64;
                    }
                }
                let (want_y, want_r) = nn::rmsnorm_fwd(&want_sum, &f64s(&w), d, eps as f64);
                let (xd, ad, wd) = (self.f32(&x)?, self.bf(&add)?, self.bf(&w)?);
                let (mut y, mut rstd) = (self.nan_bf16(rows * d)?, self.nan_f32(rows)?);
                let mut sum = self.nan_f32(rows * d)?;
                let mut sum_view = sum.slice_mut(..);
                let residual = with_add.then(|| super::model::ResidualAdd {
                    add: ad.slice(..),
                    sum: &mut sum_view,
                });
                // Always with the FP8 codes of y beside it (they must not change y).
                let (f8, codes) = (Fp8::E4M3, FakeCodes::new(gpu, rows * d, 96.0)?);
                super::model::rmsnorm_fwd_f32x(
                    gpu,
                    &xd,
                    residual,
                    &wd,
                    &mut y,
                    &mut rstd,
                    d,
                    eps,
                    Some(codes.out(gpu)),
                )?;
                let got = download_bf16(gpu, &y)?;
                self.check("rmsnorm_fwd_f32x y", &shape, &got, &want_y, TOL_BF16);
                self.codes_exact("rmsnorm_fwd_f32x y's FP8 codes", &shape, f8, &codes, &got)?;
                let got = download_f32(gpu, &rstd)?;
                self.check("rmsnorm_fwd_f32x rstd", &shape, &got, &want_r, TOL_F32);
                if with_add {
                    let got = download_f32(gpu, &sum)?;
                    self.check("rmsnorm_fwd_f32x x + add", &shape, &got, &want_sum, TOL_F32);
                }
            }
            // The last: dx's FP8 codes in place of dx_bf.
            for (acc, lowrank, fp8) in [
                (false, false, false),
                (true, false, false),
                (true, true, false),
                (true, true, true),
            ] {
                let shape = format!("rows={rows} d={d} acc={acc} lowrank={lowrank} fp8={fp8}");
                let x = self.randn(rows * d, 1.5);
                let w = self.randn_bf(d, 1.0);
                let (_, r64) = nn::rmsnorm_fwd(&f64s(&x), &f64s(&w), d, eps as f64);
                let rstd: Vec<f32> = r64.iter().map(|&v| v as f32).collect();
                let dy = self.randn(rows * d, 1.0);
                let dx0 = self.randn(rows * d, 1.0);
                let dw0 = self.randn(d, 1.0);
                let (nb, r) = (2usize, 3usize);
                let lr_c = self.randn_bf(nb * rows * r, 1.0);
                let lr_v = self.randn_bf(nb * r * d, 0.5);
                let mut dy_eff = f64s(&dy);
                if lowrank {
                    for (row, dyr) in dy_eff.chunks_mut(d).enumerate() {
                        for b in 0..nb {
                            for i in 0..r {
                                let c = lr_c[(b * rows + row) * r + i] as f64;
                                let vr = &lr_v[(b * r + i) * d..(b * r + i + 1) * d];
                                for (o, &v) in dyr.iter_mut().zip(vr) {
                                    *o += c * v as f64;
                                }
                            }
                        }
                    }
                }
                let mut want_dw = f64s(&dw0);
                let mut want_dx =
                    nn::rmsnorm_bwd(&f64s(&x), &f64s(&w), &f64s(&rstd), &dy_eff, d, &mut want_dw);
                if acc {
                    for (o, &a) in want_dx.iter_mut().zip(&dx0) {
                        *o += a as f64;
                    }
                }
                let (xd, wd, rd, dyd) = (
                    self.f32(&x)?,
                    self.bf(&w)?,
                    self.f32(&rstd)?,
                    self.f32(&dy)?,
                );
                let mut dx = if acc {
                    self.f32(&dx0)?
                } else {
                    self.nan_f32(rows * d)?
                };
                let mut dxb = self.nan_bf16(rows * d)?;
                let mut dw = self.f32(&dw0)?;
                let mut scratch = self.nan_f32(ops::PARTS * d)?;
                let (cd, vd) = (self.bf(&lr_c)?, self.bf(&lr_v)?);
                let codes = FakeCodes::new(gpu, rows * d, 4096.0)?;
                let addend = lowrank.then(|| super::model::LowRank {
                    c: cd.slice(..),
                    v: vd.slice(..),
                    r,
                    nb,
                });
                super::model::rmsnorm_bwd_f32(
                    gpu,
                    &xd,
                    &wd,
                    &rd,
                    &dyd,
                    addend,
                    &mut dx,
                    Some(&mut dxb.slice_mut(..)),
                    fp8.then(|| codes.out(gpu)),
                    acc,
                    &mut dw,
                    &mut scratch,
                    d,
                )?;
                let got = download_f32(gpu, &dx)?;
                self.check("rmsnorm_bwd_f32 dx", &shape, &got, &want_dx, TOL_RED);
                let got_b = download_bf16(gpu, &dxb)?;
                if fp8 {
                    let kept = got_b.iter().all(|v| v.is_nan());
                    self.exact("rmsnorm_bwd_f32 codes: dx_bf untouched", &shape, kept);
                    self.codes_exact(
                        "rmsnorm_bwd_f32 dx's FP8 codes",
                        &shape,
                        Fp8::E5M2,
                        &codes,
                        &got,
                    )?;
                    let got = download_f32(gpu, &dw)?;
                    self.check("rmsnorm_bwd_f32 dw", &shape, &got, &want_dw, TOL_RED);
                    continue;
                }
                self.check("rmsnorm_bwd_f32 dx_bf", &shape, &got_b, &want_dx, TOL_BF16);
                let cast = f64s(&round_bf16(&got));
                self.check(
                    "rmsnorm_bwd_f32 dx_bf = cast (bits)",
                    &shape,
                    &got_b,
                    &cast,
                    0.0,
                );
                let got = download_f32(gpu, &dw)?;
                self.check("rmsnorm_bwd_f32 dw", &shape, &got, &want_dw, TOL_RED);
            }
        }
        Ok(())
    }

    fn gated_rmsnorm(&mut self) -> Result<()> {
        let gpu = self.gpu;
        let eps = 1e-6f32;
        // General: V = 96, 1000; fast: 64 (4 rows per warp), 128, 256, 512 (20 rows per part of
        // the backward), 1024 (forward fast, backward general).
        for (rows, v) in [
            (12usize, 96usize),
            (520, 128),
            (33, 1000),
            (3001, 64),
            (4100, 256),
            (20000, 512),
            (50, 1024),
        ] {
            let shape = format!("rows={rows} V={v}");
            let o = self.randn_bf(rows * v, 1.0);
            let gate = self.randn_bf(rows * v, 2.0);
            let w = self.randn_bf(v, 1.0);
            let (od, gd, wd) = (self.bf(&o)?, self.bf(&gate)?, self.bf(&w)?);
            let (mut y, mut rstd) = (self.nan_bf16(rows * v)?, self.nan_f32(rows)?);
            ops::gated_rmsnorm_fwd(gpu, &od, &gd, &wd, &mut y, &mut rstd, eps)?;
            let (want_y, want_r) =
                nn::gated_rmsnorm_fwd(&f64s(&o), &f64s(&gate), &f64s(&w), eps as f64);
            let got = download_bf16(gpu, &y)?;
            self.check("gated_rmsnorm_fwd y", &shape, &got, &want_y, TOL_BF16);
            let got_r = download_f32(gpu, &rstd)?;
            self.check("gated_rmsnorm_fwd rstd", &shape, &got_r, &want_r, TOL_F32);

            let dy = self.randn_bf(rows * v, 1.0);
            let dw0 = self.randn(v, 1.0);
            let mut want_dw = f64s(&dw0);
            let (want_do, want_dg) = nn::gated_rmsnorm_bwd(
                &f64s(&o),
                &f64s(&gate),
                &f64s(&w),
                &f64s(&got_r),
                &f64s(&dy),
                &mut want_dw,
            );
            let dyd = self.bf(&dy)?;
            let (mut d_o, mut dg) = (self.nan_bf16(rows * v)?, self.nan_bf16(rows * v)?);
            let mut dw = self.f32(&dw0)?;
            let mut scratch = self.nan_f32(ops::norm_bwd_scratch_len(v))?;
            ops::gated_rmsnorm_bwd(
                gpu,
                &od,
                &gd,
                &wd,
                &rstd,
                &dyd,
                &mut d_o,
                &mut dg,
                &mut dw,
                &mut scratch,
            )?;
            let got = download_bf16(gpu, &d_o)?;
            self.check("gated_rmsnorm_bwd do", &shape, &got, &want_do, TOL_BF16);
            let got = download_bf16(gpu, &dg)?;
            self.check("gated_rmsnorm_bwd dgate", &shape, &got, &want_dg, TOL_BF16);
            let got = download_f32(gpu, &dw)?;
            self.check("gated_rmsnorm_bwd dw", &shape, &got, &want_dw, TOL_RED);
        }
        Ok(())
    }

    fn l2norm(&mut self) -> Result<()> {
        let gpu = self.gpu;
        for (rows, d) in [
            (10usize, 96usize),
            (300, 128),
            (7, 1000),
            (1001, 64),
            (5000, 256),
            (10, 2048),
        ] {
            let shape = format!("rows={rows} d={d}");
            let x = self.randn_bf(rows * d, 1.0);
            let xd = self.bf(&x)?;
            let (mut y, mut r) = (self.nan_bf16(rows * d)?, self.nan_f32(rows)?);
            ops::l2norm_fwd(gpu, &xd, &mut y, &mut r, d)?;
            let (want_y, want_r) = nn::l2norm_fwd(&f64s(&x), d);
            let got_y = download_bf16(gpu, &y)?;
            self.check("l2norm_fwd y", &shape, &got_y, &want_y, TOL_BF16);
            let got_r = download_f32(gpu, &r)?;
            self.check("l2norm_fwd r", &shape, &got_r, &want_r, TOL_F32);

            let dy = self.randn_bf(rows * d, 1.0);
            let want = nn::l2norm_bwd(&f64s(&got_y), &f64s(&got_r), &f64s(&dy), d);
            let dyd = self.bf(&dy)?;
            let mut dx = self.nan_bf16(rows * d)?;
            ops::l2norm_bwd(gpu, &y, &r, &dyd, &mut dx, d)?;
            let got = download_bf16(gpu, &dx)?;
            self.check("l2norm_bwd dx", &shape, &got, &want, TOL_BF16);

            // The model's fused backward of l2norm(silu(c)) from the delta rule's bf16 gradient
            // (warp-per-row kernel for d = 64, 128, 256; block-per-row otherwise).
            let c64 = f64s(&x);
            let s = nn::silu_fwd(&c64);
            let (sy, sr) = nn::l2norm_fwd(&s, d);
            let ds = nn::l2norm_bwd(&sy, &sr, &f64s(&dy), d);
            let want = nn::silu_bwd(&c64, &ds);
            let mut dc = self.nan_bf16(rows * d)?;
            super::model::l2norm_silu_bwd(gpu, &xd, &dyd, &mut dc, d)?;
            let got = download_bf16(gpu, &dc)?;
            self.check("l2norm_silu_bwd dc", &shape, &got, &want, TOL_BF16);

            // The fused forward y = l2norm(silu(c)) against the f64 composition, and bit for bit
            // against the two kernels it replaces (silu_fwd into a bf16 buffer, l2norm_fwd). Like
            // them it rounds silu(c) to bf16 before the norm, so r's reference does too.
            let (want_y, _) = nn::l2norm_fwd(&s, d);
            let s_bf: Vec<f32> = round_bf16(&s.iter().map(|&v| v as f32).collect::<Vec<_>>());
            let (_, want_r) = nn::l2norm_fwd(&f64s(&s_bf), d);
            let (mut fy, mut fr) = (self.nan_bf16(rows * d)?, self.nan_f32(rows)?);
            ops::l2norm_silu_fwd(gpu, &xd, &mut fy, &mut fr, d)?;
            let got_fy = download_bf16(gpu, &fy)?;
            self.check("l2norm_silu_fwd y", &shape, &got_fy, &want_y, TOL_BF16);
            let got_fr = download_f32(gpu, &fr)?;
            self.check("l2norm_silu_fwd r", &shape, &got_fr, &want_r, TOL_F32);
            let mut tmp = self.nan_bf16(rows * d)?;
            ops::silu_fwd(gpu, &xd, &mut tmp)?;
            let (mut ty, mut tr) = (self.nan_bf16(rows * d)?, self.nan_f32(rows)?);
            ops::l2norm_fwd(gpu, &tmp, &mut ty, &mut tr, d)?;
            let two_y = f64s(&download_bf16(gpu, &ty)?);
            let two_r = f64s(&download_f32(gpu, &tr)?);
            self.check(
                "l2norm_silu_fwd y = two-step (bits)",
                &shape,
                &got_fy,
                &two_y,
                0.0,
            );
            self.check(
                "l2norm_silu_fwd r = two-step (bits)",
                &shape,
                &got_fr,
                &two_r,
                0.0,
            );
        }
        Ok(())
    }

    fn gates(&mut self) -> Result<()> {
        let gpu = self.gpu;
        // The last case also with β = 2·sigmoid(b) (allow_neg_eigval).
        for (n, h, neg) in [
            (300usize, 16usize, false),
            (77, 6, false),
            (1000, 3, false),
            (1000, 3, true),
        ] {
            let bs = nn::beta_scale(neg);
            let shape = if neg {
                format!("tokens={n} H={h} allow_neg_eigval")
            } else {
                format!("tokens={n} H={h}")
            };
            let len = n * h;
            let mut a = self.randn(len, 2.0);
            // Some entries in softplus's linear branch (a + dt_bias > 20).
            for i in (0..len).step_by(17) {
                a[i] = 25.0 + i as f32 % 3.0;
            }
            let a = round_bf16(&a);
            let b = self.randn_bf(len, 2.0);
            let a_log: Vec<f32> = (0..h)
                .map(|_| (self.rng.uniform() * 2.0 - 1.0) as f32)
                .collect();
            let dt_bias = self.randn(h, 1.0);
            let (ad, bd) = (self.bf(&a)?, self.bf(&b)?);
            let (ald, dtd) = (self.f32(&a_log)?, self.f32(&dt_bias)?);
            let (mut g, mut beta) = (self.nan_f32(len)?, self.nan_f32(len)?);
            ops::gates_fwd(gpu, &ad, &bd, &ald, &dtd, &mut g, &mut beta, bs)?;
            let (want_g, want_b) =
                nn::gates_fwd(&f64s(&a), &f64s(&b), &f64s(&a_log), &f64s(&dt_bias), bs);
            let got_g = download_f32(gpu, &g)?;
            self.check("gates_fwd g", &shape, &got_g, &want_g, TOL_F32);
            let got_b = download_f32(gpu, &beta)?;
            self.check("gates_fwd beta", &shape, &got_b, &want_b, TOL_F32);

            let dg = self.randn(len, 1.0);
            let dbeta = self.randn(len, 1.0);
            let dal0 = self.randn(h, 1.0);
            let ddt0 = self.randn(h, 1.0);
            let (mut want_dal, mut want_ddt) = (f64s(&dal0), f64s(&ddt0));
            let (want_da, want_db) = nn::gates_bwd(
                &f64s(&a),
                &f64s(&got_b),
                &f64s(&got_g),
                &f64s(&a_log),
                &f64s(&dt_bias),
                &f64s(&dg),
                &f64s(&dbeta),
                &mut want_dal,
                &mut want_ddt,
                bs,
            );
            let (dgd, dbd) = (self.f32(&dg)?, self.f32(&dbeta)?);
            let (mut da, mut db) = (self.nan_bf16(len)?, self.nan_bf16(len)?);
            let (mut dal, mut ddt) = (self.f32(&dal0)?, self.f32(&ddt0)?);
            let mut scratch = self.nan_f32(ops::gates_bwd_scratch_len(h))?;
            ops::gates_bwd(
                gpu,
                &ad,
                &beta,
                &g,
                &ald,
                &dtd,
                &dgd,
                &dbd,
                &mut da,
                &mut db,
                &mut dal,
                &mut ddt,
                &mut scratch,
                bs,
            )?;
            let got = download_bf16(gpu, &da)?;
            self.check("gates_bwd da", &shape, &got, &want_da, TOL_BF16);
            let got = download_bf16(gpu, &db)?;
            self.check("gates_bwd db", &shape, &got, &want_db, TOL_BF16);
            let got = download_f32(gpu, &dal)?;
            self.check("gates_bwd dA_log", &shape, &got, &want_dal, TOL_RED);
            let got = download_f32(gpu, &ddt)?;
            self.check("gates_bwd ddt_bias", &shape, &got, &want_ddt, TOL_RED);
        }
        Ok(())
    }

    fn conv(&mut self) -> Result<()> {
        let gpu = self.gpu;
        let cases: Vec<(usize, usize, Vec<usize>)> = vec![
            (96, 4, vec![0, 5, 6, 6, 20, 57]), // an empty and a one-token sequence
            (1000, 3, vec![0, 3, 130, 300]),
            (64, 4, vec![0, 1, 350, 700]), // several tokens per backward partition
            // A model's width, T = 2333 (not a multiple of the forward tile), sequence starts
            // inside a tile and a backward part.
            (6144, 4, vec![0, 1000, 1001, 2333]),
            (12, 2, vec![0, 7, 50]), // D % 8 = 4: general forward, 4-wide backward
        ];
        for (d, width, cu) in cases {
            let t = *cu.last().unwrap_or(&0);
            let shape = format!("D={d} W={width} cu_seqlens={cu:?}");
            let x = self.randn_bf(t * d, 1.0);
            let w = self.randn_bf(d * width, 0.5);
            let cu32: Vec<i32> = cu.iter().map(|&v| v as i32).collect();
            let (xd, wd, cud) = (self.bf(&x)?, self.bf(&w)?, upload(gpu, &cu32)?);
            let mut y = self.nan_bf16(t * d)?;
            ops::conv_fwd(gpu, &xd, &wd, &mut y, &cud, d, width)?;
            let want = conv::forward(&f64s(&x), &f64s(&w), d, width, &cu);
            let got = download_bf16(gpu, &y)?;
            self.check("conv_fwd", &shape, &got, &want, TOL_BF16);

            let dy = self.randn_bf(t * d, 1.0);
            let dw0 = self.randn(d * width, 1.0);
            let mut want_dw = f64s(&dw0);
            let want_dx = conv::backward(
                &f64s(&x),
                &f64s(&w),
                &f64s(&dy),
                d,
                width,
                &cu,
                &mut want_dw,
            );
            let dyd = self.bf(&dy)?;
            // dx dense, then with rows 2·D apart (the model's q and k side by side): the rows
            // must match and the gaps keep their NaN. Then (4-wide path) dx as FP8 codes in
            // columns D..2D of rows 3·D apart (the model's q‖k‖v gradient), dx itself untouched.
            let fp8_pass = (d % 4 == 0).then_some((3 * d, true));
            for (ld, fp8) in [(d, false), (2 * d, false)].into_iter().chain(fp8_pass) {
                let len = if t == 0 { 0 } else { (t - 1) * ld + d };
                let mut dx = self.nan_bf16(len)?;
                let mut dw = self.f32(&dw0)?;
                let mut scratch = self.nan_f32(ops::conv_bwd_scratch_len(d, width))?;
                let codes = FakeCodes::new(gpu, t * ld, 8.0)?;
                ops::conv_bwd(
                    gpu,
                    &xd,
                    &wd,
                    &dyd,
                    &mut dx,
                    ld,
                    &mut dw,
                    &mut scratch,
                    &cud,
                    d,
                    width,
                    fp8.then(|| codes.out(gpu).offset(d)),
                )?;
                let shape = format!("{shape} dx_ld={ld}");
                if fp8 {
                    let want: Vec<f32> = want_dx.iter().map(|&v| v as f32).collect();
                    let untouched = download_bf16(gpu, &dx)?.iter().all(|v| v.is_nan());
                    self.codes_in_columns(
                        "conv_bwd dx as FP8 codes",
                        &shape,
                        &codes,
                        (d, ld),
                        &want,
                        untouched,
                    )?;
                    let got = download_f32(gpu, &dw)?;
                    self.check("conv_bwd dw", &shape, &got, &want_dw, TOL_RED);
                    continue;
                }
                let all = download_bf16(gpu, &dx)?;
                let rows: Vec<f32> = (0..t)
                    .flat_map(|r| all[r * ld..r * ld + d].to_vec())
                    .collect();
                self.check("conv_bwd dx", &shape, &rows, &want_dx, TOL_BF16);
                let written_gaps = (0..t.saturating_sub(1))
                    .flat_map(|r| &all[r * ld + d..(r + 1) * ld])
                    .filter(|v| !v.is_nan())
                    .count();
                self.rows.push(Row {
                    op: "conv_bwd dx gaps untouched (count written)".into(),
                    shape: shape.clone(),
                    max_rel_err: written_gaps as f64,
                    tolerance: 0.0,
                });
                let got = download_f32(gpu, &dw)?;
                self.check("conv_bwd dw", &shape, &got, &want_dw, TOL_RED);
            }
        }
        // Decode steps for N sequences from a random cache: GPU [N, D, W], CPU [W, D] per sequence.
        for (nseq, d, width) in [(3usize, 96usize, 4usize), (2, 1000, 3)] {
            let shape = format!("N={nseq} D={d} W={width} x5 steps");
            let w = self.randn_bf(d * width, 0.5);
            let cache0 = self.randn_bf(nseq * d * width, 1.0);
            let mut cpu_cache: Vec<Vec<f64>> = (0..nseq)
                .map(|s| {
                    let mut c = vec![0.0; width * d];
                    for ch in 0..d {
                        for j in 0..width {
                            c[j * d + ch] = cache0[(s * d + ch) * width + j] as f64;
                        }
                    }
                    c
                })
                .collect();
            let wd = self.bf(&w)?;
            let mut cache = self.bf(&cache0)?;
            let (mut err_y, mut want_all, mut got_all) = (0.0f64, vec![], vec![]);
            for _ in 0..5 {
                let x = self.randn_bf(nseq * d, 1.0);
                let xd = self.bf(&x)?;
                let mut y = self.nan_bf16(nseq * d)?;
                ops::conv_step(gpu, &xd, &wd, &mut cache, &mut y, d, width)?;
                let got = download_bf16(gpu, &y)?;
                let mut want = vec![];
                for (s, c) in cpu_cache.iter_mut().enumerate() {
                    want.extend(conv::step(
                        &f64s(&x[s * d..(s + 1) * d]),
                        &f64s(&w),
                        width,
                        c,
                    ));
                }
                err_y = err_y.max(rel_err(&got, &want));
                want_all.extend(want);
                got_all.extend(got);
            }
            self.rows.push(Row {
                op: "conv_step y".into(),
                shape: shape.clone(),
                max_rel_err: err_y.max(rel_err(&got_all, &want_all)),
                tolerance: TOL_BF16,
            });
            let got_cache = download_bf16(gpu, &cache)?;
            let mut want_cache = vec![0.0; nseq * d * width];
            for (s, c) in cpu_cache.iter().enumerate() {
                for ch in 0..d {
                    for j in 0..width {
                        want_cache[(s * d + ch) * width + j] = c[j * d + ch];
                    }
                }
            }
            self.check("conv_step cache", &shape, &got_cache, &want_cache, TOL_BF16);
        }
        Ok(())
    }

    fn cross_entropy(&mut self) -> Result<()> {
        let gpu = self.gpu;
        let scale = 0.7f32;
        for (n, vocab, ignore_all) in [
            (37usize, 1000usize, false),
            (5, 50257, false),
            (64, 96, false),
            (4, 96, true),
        ] {
            let shape = format!(
                "rows={n} vocab={vocab}{}",
                if ignore_all { " all ignored" } else { "" }
            );
            let logits = self.randn_bf(n * vocab, 3.0);
            let targets: Vec<u32> = (0..n)
                .map(|i| {
                    if ignore_all || i % 5 == 3 {
                        IGNORE
                    } else {
                        self.rng.below(vocab) as u32
                    }
                })
                .collect();
            let l64 = f64s(&logits);
            let (want_loss, want_count) = nn::cross_entropy(&l64, &targets, vocab);
            let mut want_lse = vec![];
            let mut want_rows = vec![];
            for (row, &t) in l64.chunks(vocab).zip(&targets) {
                let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let lse = m + row.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
                want_lse.push(lse);
                want_rows.push(if t == IGNORE {
                    0.0
                } else {
                    lse - row[t as usize]
                });
            }
            let mut ld = self.bf(&logits)?;
            let td = upload(gpu, &targets)?;
            let (mut lse, mut losses) = (self.nan_f32(n)?, self.nan_f32(n)?);
            let mut stats = upload(gpu, &[f64::NAN, f64::NAN])?;
            ops::cross_entropy_fwd(gpu, &ld, &td, &mut lse, &mut losses, &mut stats, vocab)?;
            let got = download_f32(gpu, &lse)?;
            self.check("cross_entropy_fwd lse", &shape, &got, &want_lse, TOL_F32);
            let got = download_f32(gpu, &losses)?;
            self.check(
                "cross_entropy_fwd row losses",
                &shape,
                &got,
                &want_rows,
                TOL_RED,
            );
            let got_stats = download(gpu, &stats)?;
            self.check(
                "cross_entropy_fwd mean loss",
                &shape,
                &[got_stats[0] as f32],
                &[want_loss],
                TOL_RED,
            );
            self.check(
                "cross_entropy_fwd count",
                &shape,
                &[got_stats[1] as f32],
                &[want_count as f64],
                0.0,
            );
            // The count alone, before any loss exists (the blocked logits' backward).
            let mut count_only = upload(gpu, &[f64::NAN, f64::NAN])?;
            ops::cross_entropy_finalize::<CudaSlice<f32>>(gpu, None, &td, &mut count_only)?;
            let got = download(gpu, &count_only)?;
            self.check(
                "cross_entropy_finalize count only [0, count]",
                &shape,
                &[got[0] as f32, got[1] as f32],
                &[0.0, want_count as f64],
                0.0,
            );

            let mut want_d = l64.clone();
            nn::cross_entropy_bwd_inplace(&mut want_d, &targets, vocab, want_count, scale as f64);
            ops::cross_entropy_bwd_inplace(gpu, &mut ld, &td, &lse, &stats, vocab, scale)?;
            let got = download_bf16(gpu, &ld)?;
            self.check("cross_entropy_bwd dlogits", &shape, &got, &want_d, TOL_BF16);
        }
        Ok(())
    }

    fn adamw(&mut self) -> Result<()> {
        let gpu = self.gpu;
        let mut layout = ParamLayout::default();
        layout.push("emb".into(), vec![50, 13], Kind::Embedding);
        layout.push("w".into(), vec![30, 21], Kind::Linear);
        layout.push("norm".into(), vec![21], Kind::Norm);
        layout.push("bias".into(), vec![7], Kind::Bias);
        layout.push("a_log".into(), vec![4], Kind::ALog);
        layout.push("dt_bias".into(), vec![4], Kind::DtBias);
        layout.push("conv".into(), vec![33, 4], Kind::Conv);
        let n = layout.total;
        let shape = format!("n={n}, exempt norms/biases, 3 steps (2 clipped)");
        let config = AdamWConfig {
            exempt_norms_and_biases: true,
            ..Default::default()
        };
        let hyper = ops::AdamWHyper {
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.eps,
            weight_decay: config.weight_decay,
            max_grad_norm: 0.0,
        };
        let mut cpu = AdamW::new(config, &layout);
        let decay = cpu.decay().to_vec();
        let mut p_cpu = self.randn(n, 1.0);
        let mut p = self.f32(&p_cpu)?;
        let (mut m, mut v) = (self.f32(&vec![0.0; n])?, self.f32(&vec![0.0; n])?);
        let decay_d = self.f32(&decay)?;
        let mut p16 = self.nan_bf16(n)?;
        let mut scratch = upload(gpu, &vec![f64::NAN; ops::grad_norm_scratch_len()])?;
        let mut norm = upload(gpu, &[f64::NAN])?;
        let lrs = [1e-3, 3e-3, 2e-3];
        for (step, lr) in lrs.iter().enumerate() {
            let mut g_cpu = self.randn(n, 0.1);
            let g = self.f32(&g_cpu)?;
            ops::grad_norm(gpu, &g, &mut scratch, &mut norm)?;
            let true_norm = adamw::grad_norm(&g_cpu);
            // Step 1 unclipped, step 2 clipped to half the norm, step 3 with a limit above it.
            let max_norm = match step {
                0 => 0.0,
                1 => true_norm / 2.0,
                _ => true_norm * 2.0,
            };
            adamw::clip_grad_norm(&mut g_cpu, max_norm);
            cpu.update(&mut p_cpu, &g_cpu, *lr);
            let sched = upload(gpu, &[*lr, (step + 1) as f64])?;
            let h = ops::AdamWHyper {
                max_grad_norm: max_norm,
                ..hyper
            };
            let gn = (step > 0).then_some(&norm);
            ops::adamw(
                gpu, &mut p, &g, &mut m, &mut v, &decay_d, &mut p16, &sched, gn, &h,
            )?;
        }
        let got = download_f32(gpu, &p)?;
        self.check("adamw params", &shape, &got, &f64s(&p_cpu), TOL_F32);
        let got = download_f32(gpu, &m)?;
        self.check("adamw m", &shape, &got, &f64s(&cpu.m), TOL_F32);
        let got = download_f32(gpu, &v)?;
        self.check("adamw v", &shape, &got, &f64s(&cpu.v), TOL_F32);
        let got = download_bf16(gpu, &p16)?;
        self.check("adamw params_bf16", &shape, &got, &f64s(&p_cpu), TOL_BF16);
        Ok(())
    }

    fn grad_norm(&mut self) -> Result<()> {
        let gpu = self.gpu;
        for n in [1000usize, 100_007, 3_000_001] {
            let shape = format!("n={n}");
            let g = self.randn(n, 0.01);
            let gd = self.f32(&g)?;
            let mut scratch = upload(gpu, &vec![f64::NAN; ops::grad_norm_scratch_len()])?;
            let mut out = upload(gpu, &[f64::NAN])?;
            ops::grad_norm(gpu, &gd, &mut scratch, &mut out)?;
            let got = download(gpu, &out)?;
            self.check(
                "grad_norm",
                &shape,
                &[got[0] as f32],
                &[adamw::grad_norm(&g)],
                TOL_RED,
            );
        }
        Ok(())
    }
}

/// The buffers of [`Ctx::graph`]'s step.
struct StepBufs {
    x: CudaSlice<bf16>,
    w: CudaSlice<bf16>,
    dy: CudaSlice<bf16>,
    y: CudaSlice<bf16>,
    rstd: CudaSlice<f32>,
    dx: CudaSlice<bf16>,
    dw: CudaSlice<f32>,
    norm_scratch: CudaSlice<f32>,
    c: CudaSlice<f32>,
    logits: CudaSlice<bf16>,
    targets: CudaSlice<u32>,
    lse: CudaSlice<f32>,
    losses: CudaSlice<f32>,
    stats: CudaSlice<f64>,
    params: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    decay: CudaSlice<f32>,
    p16: CudaSlice<bf16>,
    sched: CudaSlice<f64>,
    gn_scratch: CudaSlice<f64>,
    norm: CudaSlice<f64>,
}

const STEP_ROWS: usize = 96;
const STEP_D: usize = 160;
const STEP_VOCAB: usize = 1000;

/// A training-step-like sequence of ops: norm forward and backward, a matmul accumulating into
/// fp32, the fused cross-entropy, the gradient norm and AdamW reading it (dw is the gradient).
fn graph_step(gpu: &Gpu, blas: &Blas, b: &mut StepBufs) -> Result<()> {
    let d = STEP_D;
    ops::rmsnorm_fwd(gpu, &b.x, &b.w, &mut b.y, &mut b.rstd, d, 1e-5)?;
    blas.matmul(
        d, STEP_ROWS, d, &b.dy, true, &b.y, false, &mut b.c, 1.0, 1.0,
    )?;
    ops::rmsnorm_bwd(
        gpu,
        &b.x,
        &b.w,
        &b.rstd,
        &b.dy,
        &mut b.dx,
        &mut b.dw,
        &mut b.norm_scratch,
        d,
    )?;
    ops::cross_entropy_fwd(
        gpu,
        &b.logits,
        &b.targets,
        &mut b.lse,
        &mut b.losses,
        &mut b.stats,
        STEP_VOCAB,
    )?;
    ops::cross_entropy_bwd_inplace(
        gpu,
        &mut b.logits,
        &b.targets,
        &b.lse,
        &b.stats,
        STEP_VOCAB,
        1.0,
    )?;
    ops::grad_norm(gpu, &b.dw, &mut b.gn_scratch, &mut b.norm)?;
    let hyper = ops::AdamWHyper {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        max_grad_norm: 1.0,
    };
    ops::adamw(
        gpu,
        &mut b.params,
        &b.dw,
        &mut b.m,
        &mut b.v,
        &b.decay,
        &mut b.p16,
        &b.sched,
        Some(&b.norm),
        &hyper,
    )
}

impl Ctx<'_> {
    /// The same step run eagerly and replayed from a CUDA graph captured on a non-default stream
    /// (event tracking off, as the trainer will do) from the same starting state: the results
    /// must agree bit for bit, which checks both that the ops are capturable and deterministic.
    fn graph(&mut self) -> Result<()> {
        let g = Gpu::open(self.gpu.ctx.ordinal())?;
        let gpu = &g;
        let blas = Blas::new(gpu)?;
        let (rows, d, vocab) = (STEP_ROWS, STEP_D, STEP_VOCAB);
        let np = d * d;
        let x = self.randn_bf(rows * d, 1.0);
        let w = self.randn_bf(d, 1.0);
        let dy = self.randn_bf(rows * d, 1.0);
        let dw0 = self.randn(d, 0.1);
        let c0 = self.randn(np, 1.0);
        let logits0 = self.randn_bf(rows * vocab, 2.0);
        let targets: Vec<u32> = (0..rows)
            .map(|i| {
                if i % 7 == 0 {
                    IGNORE
                } else {
                    self.rng.below(vocab) as u32
                }
            })
            .collect();
        let p0 = self.randn(d, 1.0);
        let mut b = StepBufs {
            x: upload_bf16(gpu, &x)?,
            w: upload_bf16(gpu, &w)?,
            dy: upload_bf16(gpu, &dy)?,
            y: upload_bf16(gpu, &vec![f32::NAN; rows * d])?,
            rstd: upload_f32(gpu, &vec![f32::NAN; rows])?,
            dx: upload_bf16(gpu, &vec![f32::NAN; rows * d])?,
            dw: upload_f32(gpu, &dw0)?,
            norm_scratch: upload_f32(gpu, &vec![f32::NAN; ops::norm_bwd_scratch_len(d)])?,
            c: upload_f32(gpu, &c0)?,
            logits: upload_bf16(gpu, &logits0)?,
            targets: upload(gpu, &targets)?,
            lse: upload_f32(gpu, &vec![f32::NAN; rows])?,
            losses: upload_f32(gpu, &vec![f32::NAN; rows])?,
            stats: upload(gpu, &[f64::NAN; 2])?,
            params: upload_f32(gpu, &p0)?,
            m: upload_f32(gpu, &vec![0.0; d])?,
            v: upload_f32(gpu, &vec![0.0; d])?,
            decay: upload_f32(gpu, &vec![1.0; d])?,
            p16: upload_bf16(gpu, &vec![f32::NAN; d])?,
            sched: upload(gpu, &[1e-3, 1.0])?,
            gn_scratch: upload(gpu, &vec![f64::NAN; ops::grad_norm_scratch_len()])?,
            norm: upload(gpu, &[f64::NAN])?,
        };
        let reset = |b: &mut StepBufs| -> Result<()> {
            let s = &gpu.stream;
            let e = |e| anyhow::anyhow!("resetting the step's state: {e:?}");
            s.memcpy_htod(&dw0, &mut b.dw).map_err(e)?;
            s.memcpy_htod(&c0, &mut b.c).map_err(e)?;
            s.memcpy_htod(&super::buffer::to_bf16(&logits0), &mut b.logits)
                .map_err(e)?;
            s.memcpy_htod(&p0, &mut b.params).map_err(e)?;
            s.memcpy_htod(&vec![0.0f32; d], &mut b.m).map_err(e)?;
            s.memcpy_htod(&vec![0.0f32; d], &mut b.v).map_err(e)?;
            gpu.sync()
        };
        type Snapshot = Vec<(&'static str, Vec<f64>)>;
        let snapshot = |b: &StepBufs| -> Result<Snapshot> {
            let f = |v: Vec<f32>| f64s(&v);
            Ok(vec![
                ("y", f(download_bf16(gpu, &b.y)?)),
                ("rstd", f(download_f32(gpu, &b.rstd)?)),
                ("dx", f(download_bf16(gpu, &b.dx)?)),
                ("dw", f(download_f32(gpu, &b.dw)?)),
                ("matmul C", f(download_f32(gpu, &b.c)?)),
                ("dlogits", f(download_bf16(gpu, &b.logits)?)),
                ("loss stats", download(gpu, &b.stats)?),
                ("grad norm", download(gpu, &b.norm)?),
                ("params", f(download_f32(gpu, &b.params)?)),
                ("m", f(download_f32(gpu, &b.m)?)),
                ("v", f(download_f32(gpu, &b.v)?)),
                ("params_bf16", f(download_bf16(gpu, &b.p16)?)),
            ])
        };
        reset(&mut b)?;
        graph_step(gpu, &blas, &mut b)?;
        gpu.sync()?;
        let eager = snapshot(&b)?;
        reset(&mut b)?;
        let (graph, ()) = super::graph::capture(gpu, || graph_step(gpu, &blas, &mut b))?;
        super::graph::launch(&graph)?;
        gpu.sync()?;
        let replay = snapshot(&b)?;
        let shape = format!("rows={rows} d={d} vocab={vocab}, eager vs graph replay");
        for ((name, e), (_, r)) in eager.iter().zip(&replay) {
            let bitwise = e.len() == r.len()
                && e.iter()
                    .zip(r)
                    .all(|(a, b)| a.to_bits() == b.to_bits() && a.is_finite());
            self.rows.push(Row {
                op: format!("graph step {name} (bit-exact)"),
                shape: shape.clone(),
                max_rel_err: if bitwise { 0.0 } else { f64::INFINITY },
                tolerance: 0.0,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table on a GPU machine (skipped where there is none):
    /// `cargo test --release --lib cuda::ops_selftest -- --nocapture`; GDN_SELFTEST_FILTER picks
    /// groups, GDN_SELFTEST_SEED replays a seed.
    #[test]
    fn every_op_matches_the_cpu_reference_on_the_gpu() {
        if let Some(why) = super::super::unavailable_reason() {
            eprintln!("no GPU ({why}): CUDA op checks skipped");
            return;
        }
        let gpu = Gpu::open(0).expect("open GPU 0");
        let seed = std::env::var("GDN_SELFTEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(clock_seed);
        let filter = std::env::var("GDN_SELFTEST_FILTER").ok();
        let rows = run_with(&gpu, seed, filter.as_deref()).expect("selftest");
        println!("device: {} ({}), seed {seed}", gpu.name, gpu.arch);
        println!("{}", super::super::selftest::format_table(&rows));
        let failed: Vec<_> = rows
            .iter()
            .filter(|r| !r.pass())
            .map(|r| format!("{} [{}]", r.op, r.shape))
            .collect();
        assert!(failed.is_empty(), "failed: {failed:?}");
    }
}
