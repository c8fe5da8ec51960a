//! `gdn bench matmul`: a model's linear layers at a training step's token count, each product
//! as the trainer runs it in bf16 (forward, dX, dW) beside the FP8 way (the FP8 casts of its
//! operands, then `Blas::matmul_fp8`), and the whole step's sum both ways. It measures what FP8
//! matmuls would give a training step before the trainer uses them (design-notes, "FP8").
//!
//! The FP8 side per product: forward X (E4M3, a flat cast) · W (E4M3); dX = dY (E5M2, cast with
//! its transpose in one pass) · Wᵀ (E4M3); dW += dYᵀ · Xᵀ (Xᵀ by a transposing cast). The
//! weights' two FP8 copies (W and Wᵀ, one transposing cast) are made once per step.

use super::bench::{time_eager, BenchArgs};
use super::blas::Blas;
use super::fp8::{self, Fp8};
use super::Gpu;
use crate::model::ModelConfig;
use anyhow::{Context, Result};
use cudarc::driver::CudaSlice;
use half::bf16;

/// One linear layer: x [tokens, inp] → y [tokens, out], `count` of them per step.
struct Product {
    name: &'static str,
    inp: usize,
    out: usize,
    count: usize,
}

#[derive(serde::Serialize, Default)]
struct Row {
    product: &'static str,
    inp: usize,
    out: usize,
    count: usize,
    bf16_fwd_ms: f64,
    bf16_dx_ms: f64,
    bf16_dw_ms: f64,
    fp8_fwd_ms: f64,
    fp8_fwd_fast_ms: f64,
    fp8_dx_ms: f64,
    fp8_dx_fast_ms: f64,
    fp8_dw_ms: f64,
    cast_x_ms: f64,
    cast_dy_ms: f64,
    cast_xt_ms: f64,
    cast_w_ms: f64,
}

impl Row {
    fn bf16_ms(&self) -> f64 {
        self.bf16_fwd_ms + self.bf16_dx_ms + self.bf16_dw_ms
    }
    fn fp8_gemm_ms(&self) -> f64 {
        self.fp8_fwd_fast_ms + self.fp8_dx_fast_ms + self.fp8_dw_ms
    }
    fn cast_ms(&self) -> f64 {
        self.cast_x_ms + self.cast_dy_ms + self.cast_xt_ms + self.cast_w_ms
    }
}

fn products(c: &ModelConfig) -> Vec<Product> {
    let (d, l) = (c.hidden_size, c.num_hidden_layers);
    vec![
        Product {
            name: "q‖k‖v‖gate",
            inp: d,
            out: 2 * c.key_dim() + 2 * c.value_dim(),
            count: l,
        },
        Product {
            name: "o proj",
            inp: c.value_dim(),
            out: d,
            count: l,
        },
        Product {
            name: "MLP gate‖up",
            inp: d,
            out: 2 * c.intermediate_size,
            count: l,
        },
        Product {
            name: "MLP down",
            inp: c.intermediate_size,
            out: d,
            count: l,
        },
        Product {
            name: "lm head",
            inp: d,
            out: c.vocab_size,
            count: 1,
        },
    ]
}

pub(super) fn run(a: &BenchArgs) -> Result<()> {
    let gpu = Gpu::open(a.device)?;
    println!("device: {} ({})", gpu.name, gpu.arch);
    let model = match &a.config {
        Some(p) => ModelConfig::read(p)?,
        None => ModelConfig::preset(&a.preset)?,
    };
    let m = a.batch_size * a.seq_len;
    let reps = a.reps.max(5);
    let blas = Blas::new(&gpu)?;
    println!(
        "{} linear layers at {m} tokens ({}×{}), ms per product (median of {reps}); FP8 = casts + GEMMs",
        a.config
            .as_ref()
            .map_or(a.preset.clone(), |p| p.display().to_string()),
        a.batch_size,
        a.seq_len
    );
    println!("| product | in → out | ×/step | bf16 fwd / dX / dW | FP8 fwd / dX (each with fast acc.) / dW | casts X / dY(+ᵀ) / Xᵀ / W(+ᵀ) | bf16 sum | FP8 sum | ratio |");
    println!("|---|---|---:|---|---|---|---:|---:|---:|");
    let mut rows = Vec::new();
    for p in products(&model) {
        let r = time_product(&gpu, &blas, reps, m, &p)
            .with_context(|| format!("timing `{}` ({} → {})", p.name, p.inp, p.out))?;
        let fp8 = r.fp8_gemm_ms() + r.cast_ms();
        println!(
            "| {} | {} → {} | {} | {:.3} / {:.3} / {:.3} | {:.3} ({:.3}) / {:.3} ({:.3}) / {:.3} | {:.3} / {:.3} / {:.3} / {:.3} | {:.3} | {:.3} | {:.2}× |",
            r.product, r.inp, r.out, r.count, r.bf16_fwd_ms, r.bf16_dx_ms, r.bf16_dw_ms,
            r.fp8_fwd_ms, r.fp8_fwd_fast_ms, r.fp8_dx_ms, r.fp8_dx_fast_ms, r.fp8_dw_ms, r.cast_x_ms,
            r.cast_dy_ms, r.cast_xt_ms, r.cast_w_ms, r.bf16_ms(), fp8, r.bf16_ms() / fp8
        );
        rows.push(r);
    }
    let step = |f: &dyn Fn(&Row) -> f64| rows.iter().map(|r| r.count as f64 * f(r)).sum::<f64>();
    let (b, g, c) = (
        step(&Row::bf16_ms),
        step(&Row::fp8_gemm_ms),
        step(&Row::cast_ms),
    );
    println!(
        "per step: bf16 {b:.1} ms; FP8 {:.1} ms (GEMMs {g:.1} + casts {c:.1}); saved {:.1} ms",
        g + c,
        b - g - c
    );
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let doc = serde_json::json!({
            "device": gpu.name,
            "tokens": m,
            "products": rows,
            "step_ms": { "bf16": b, "fp8_gemms": g, "fp8_casts": c },
        });
        let path = dir.join("gdn_bench_matmul.json");
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn time_product(gpu: &Gpu, blas: &Blas, reps: usize, m: usize, p: &Product) -> Result<Row> {
    let s = &gpu.stream;
    let (i, o) = (p.inp, p.out);
    let alloc_bf = |n: usize| s.alloc_zeros::<bf16>(n);
    let x = filled(gpu, m * i, 1.0)?;
    let w = filled(gpu, o * i, 0.02)?;
    let dy = filled(gpu, m * o, 1e-3)?;
    let mut y = alloc_bf(m * o)?;
    let mut dx = alloc_bf(m * i)?;
    let mut dw = s.alloc_zeros::<f32>(o * i)?;
    let mut r = Row {
        product: p.name,
        inp: i,
        out: o,
        count: p.count,
        ..Row::default()
    };
    r.bf16_fwd_ms = time_eager(gpu, reps, &mut || {
        blas.matmul::<bf16>(m, i, o, &x, false, &w, true, &mut y, 1.0, 0.0)
    })?;
    r.bf16_dx_ms = time_eager(gpu, reps, &mut || {
        blas.matmul::<bf16>(m, o, i, &dy, false, &w, false, &mut dx, 1.0, 0.0)
    })?;
    r.bf16_dw_ms = time_eager(gpu, reps, &mut || {
        blas.matmul::<f32>(o, m, i, &dy, true, &x, false, &mut dw, 1.0, 1.0)
    })?;

    // FP8 copies, scales (1/scale = 1: the timing does not depend on the values) and amaxes.
    let ones = s.clone_htod(&[1.0f32])?;
    let mut amax = s.alloc_zeros::<u32>(1)?;
    let mut x8 = s.alloc_zeros::<u8>(m * i)?;
    let mut xt8 = s.alloc_zeros::<u8>(m * i)?;
    let mut w8 = s.alloc_zeros::<u8>(o * i)?;
    let mut wt8 = s.alloc_zeros::<u8>(o * i)?;
    let mut dy8 = s.alloc_zeros::<u8>(m * o)?;
    let mut dyt8 = s.alloc_zeros::<u8>(m * o)?;
    r.cast_x_ms = time_eager(gpu, reps, &mut || {
        fp8::cast(gpu, Fp8::E4M3, &x, &mut x8, &ones, &mut amax)
    })?;
    r.cast_dy_ms = time_eager(gpu, reps, &mut || {
        let mut v = dy8.slice_mut(..);
        fp8::cast_transposed(
            gpu,
            Fp8::E5M2,
            &dy,
            m,
            o,
            Some(&mut v),
            &mut dyt8,
            &ones,
            &mut amax,
        )
    })?;
    r.cast_xt_ms = time_eager(gpu, reps, &mut || {
        fp8::cast_transposed(gpu, Fp8::E4M3, &x, m, i, None, &mut xt8, &ones, &mut amax)
    })?;
    r.cast_w_ms = time_eager(gpu, reps, &mut || {
        let mut v = w8.slice_mut(..);
        fp8::cast_transposed(
            gpu,
            Fp8::E4M3,
            &w,
            o,
            i,
            Some(&mut v),
            &mut wt8,
            &ones,
            &mut amax,
        )
    })?;
    let e4 = |b| (b, Fp8::E4M3, &ones);
    let e5 = |b| (b, Fp8::E5M2, &ones);
    // (without, with) fast accumulation.
    let both = |f: &mut dyn FnMut(bool) -> Result<()>| -> Result<(f64, f64)> {
        Ok((
            time_eager(gpu, reps, &mut || f(false))?,
            time_eager(gpu, reps, &mut || f(true))?,
        ))
    };
    (r.fp8_fwd_ms, r.fp8_fwd_fast_ms) = both(&mut |fast| {
        blas.matmul_fp8::<bf16>(m, i, o, e4(&x8), e4(&w8), &mut y, 1.0, 0.0, fast)
    })?;
    (r.fp8_dx_ms, r.fp8_dx_fast_ms) = both(&mut |fast| {
        blas.matmul_fp8::<bf16>(m, o, i, e5(&dy8), e4(&wt8), &mut dx, 1.0, 0.0, fast)
    })?;
    r.fp8_dw_ms = time_eager(gpu, reps, &mut || {
        blas.matmul_fp8::<f32>(o, m, i, e5(&dyt8), e4(&xt8), &mut dw, 1.0, 1.0, false)
    })?;
    Ok(r)
}

/// `n` normal values of standard deviation `std`: 2^20 drawn on the host, repeated on the device
/// (drawing a billion on the host would take longer than the benchmark).
fn filled(gpu: &Gpu, n: usize, std: f64) -> Result<CudaSlice<bf16>> {
    let mut rng = crate::tensor::Rng::new(7);
    let pattern: Vec<bf16> = (0..n.min(1 << 20))
        .map(|_| bf16::from_f64(rng.normal() * std))
        .collect();
    let src = gpu.stream.clone_htod(&pattern)?;
    let mut buf = gpu.stream.alloc_zeros::<bf16>(n)?;
    for at in (0..n).step_by(pattern.len().max(1)) {
        let len = pattern.len().min(n - at);
        gpu.stream
            .memcpy_dtod(&src.slice(..len), &mut buf.slice_mut(at..at + len))?;
    }
    Ok(buf)
}
