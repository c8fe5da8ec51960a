//! The building blocks of the model, each a forward and a backward over row-major slices:
//! Linear, Embedding, RMSNorm, gated RMSNorm, SiLU, SwiGLU, per-head L2 norm, the GDN gates and
//! cross-entropy. Backward functions accumulate (+=) into parameter gradients and return or
//! write input gradients.

use crate::data::IGNORE;
use crate::tensor::{gemm, Elem};
use rayon::prelude::*;

/// Rows per rayon task: large enough that the split costs nothing next to the work.
const ROWS_PER_TASK: usize = 64;

/// y[n, out] = x[n, in] · Wᵀ with W [out, in] (PyTorch layout).
pub fn linear_fwd<F: Elem>(x: &[F], w: &[F], n: usize, din: usize, dout: usize) -> Vec<F> {
    let mut y = vec![F::zero(); n * dout];
    gemm(n, din, dout, x, false, w, true, &mut y, F::one(), F::zero());
    y
}

/// dW += dyᵀ x; returns dx = dy · W.
pub fn linear_bwd<F: Elem>(
    x: &[F],
    w: &[F],
    dy: &[F],
    n: usize,
    din: usize,
    dout: usize,
    dw: &mut [F],
) -> Vec<F> {
    gemm(dout, n, din, dy, true, x, false, dw, F::one(), F::one());
    let mut dx = vec![F::zero(); n * din];
    gemm(
        n,
        dout,
        din,
        dy,
        false,
        w,
        false,
        &mut dx,
        F::one(),
        F::zero(),
    );
    dx
}

/// Rows of `table` [vocab, d] for each token.
pub fn embedding_fwd<F: Elem>(table: &[F], tokens: &[u32], d: usize) -> Vec<F> {
    let mut y = vec![F::zero(); tokens.len() * d];
    y.par_chunks_mut(d)
        .zip(tokens.par_iter())
        .for_each(|(row, &t)| {
            let t = t as usize;
            row.copy_from_slice(&table[t * d..(t + 1) * d]);
        });
    y
}

/// d table[token] += dy[row], in token order (deterministic).
pub fn embedding_bwd<F: Elem>(tokens: &[u32], dy: &[F], d: usize, dtable: &mut [F]) {
    for (row, &t) in dy.chunks(d).zip(tokens) {
        let t = t as usize;
        for (g, &v) in dtable[t * d..(t + 1) * d].iter_mut().zip(row) {
            *g += v;
        }
    }
}

/// RMSNorm over rows of width `d`: y = x / √(mean(x²) + eps) · w. Returns (y, rstd per row).
pub fn rmsnorm_fwd<F: Elem>(x: &[F], w: &[F], d: usize, eps: f64) -> (Vec<F>, Vec<F>) {
    let rows = x.len() / d;
    let mut y = vec![F::zero(); x.len()];
    let mut rstd = vec![F::zero(); rows];
    y.par_chunks_mut(d)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(d))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|((yr, r), xr)| {
            let ms = xr.iter().map(|&v| v * v).sum::<F>() / F::of(d as f64);
            *r = F::one() / (ms + F::of(eps)).sqrt();
            for ((yv, &xv), &wv) in yr.iter_mut().zip(xr).zip(w.iter().cycle()) {
                *yv = xv * *r * wv;
            }
        });
    (y, rstd)
}

/// RMSNorm backward: returns dx, accumulates dw. The weight may be shared by several row
/// groups (the per-head gated norm), which is why `w.len()` may be smaller than `d`'s multiple.
pub fn rmsnorm_bwd<F: Elem>(
    x: &[F],
    w: &[F],
    rstd: &[F],
    dy: &[F],
    d: usize,
    dw: &mut [F],
) -> Vec<F> {
    let mut dx = vec![F::zero(); x.len()];
    dx.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(dy.par_chunks(d))
        .zip(rstd.par_iter())
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(((dxr, xr), dyr), &r)| {
            // m = mean(dy·w·x̂)
            let m = xr
                .iter()
                .zip(dyr)
                .zip(w)
                .map(|((&xv, &g), &wv)| g * wv * xv * r)
                .sum::<F>()
                / F::of(d as f64);
            for (((dxv, &xv), &g), &wv) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                *dxv = r * (g * wv - xv * r * m);
            }
        });
    for ((xr, dyr), &r) in x.chunks(d).zip(dy.chunks(d)).zip(rstd) {
        for ((g, &xv), &dyv) in dw.iter_mut().zip(xr).zip(dyr) {
            *g += dyv * xv * r;
        }
    }
    dx
}

pub fn sigmoid<F: Elem>(x: F) -> F {
    F::one() / (F::one() + (-x).exp())
}

pub fn silu<F: Elem>(x: F) -> F {
    x * sigmoid(x)
}

/// d silu(x) / dx.
pub fn silu_grad<F: Elem>(x: F) -> F {
    let s = sigmoid(x);
    s * (F::one() + x * (F::one() - s))
}

/// softplus(z) = ln(1 + eᶻ), returning z above 20 as FLA does.
pub fn softplus<F: Elem>(z: F) -> F {
    if z > F::of(20.0) {
        z
    } else {
        z.exp().ln_1p()
    }
}

pub fn silu_fwd<F: Elem>(x: &[F]) -> Vec<F> {
    x.par_iter().with_min_len(4096).map(|&v| silu(v)).collect()
}

pub fn silu_bwd<F: Elem>(x: &[F], dy: &[F]) -> Vec<F> {
    x.par_iter()
        .zip(dy)
        .with_min_len(4096)
        .map(|(&v, &g)| g * silu_grad(v))
        .collect()
}

/// Gated RMSNorm per head (FLA `FusedRMSNormGated`, swish): y = RMSNorm(o)·w ⊙ silu(gate), over
/// rows of width V with one weight [V] shared by all heads. Returns (y, rstd per row).
pub fn gated_rmsnorm_fwd<F: Elem>(o: &[F], gate: &[F], w: &[F], eps: f64) -> (Vec<F>, Vec<F>) {
    let (mut y, rstd) = rmsnorm_fwd(o, w, w.len(), eps);
    y.par_iter_mut()
        .zip(gate)
        .with_min_len(4096)
        .for_each(|(v, &g)| *v *= silu(g));
    (y, rstd)
}

/// Returns (d o, d gate) and accumulates dw.
pub fn gated_rmsnorm_bwd<F: Elem>(
    o: &[F],
    gate: &[F],
    w: &[F],
    rstd: &[F],
    dy: &[F],
    dw: &mut [F],
) -> (Vec<F>, Vec<F>) {
    let v = w.len();
    let mut dnorm = vec![F::zero(); o.len()];
    let mut dgate = vec![F::zero(); o.len()];
    dnorm
        .par_chunks_mut(v)
        .zip(dgate.par_chunks_mut(v))
        .zip(o.par_chunks(v).zip(gate.par_chunks(v)))
        .zip(dy.par_chunks(v).zip(rstd.par_iter()))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(((dn, dg), (orow, grow)), (dyr, &r))| {
            for i in 0..v {
                let normed = orow[i] * r * w[i];
                dn[i] = dyr[i] * silu(grow[i]);
                dg[i] = dyr[i] * normed * silu_grad(grow[i]);
            }
        });
    let dout = rmsnorm_bwd(o, w, rstd, &dnorm, v, dw);
    (dout, dgate)
}

/// L2 normalisation of rows of width `d`: y = x / √(Σx² + 1e-6). Returns (y, r per row).
pub fn l2norm_fwd<F: Elem>(x: &[F], d: usize) -> (Vec<F>, Vec<F>) {
    let rows = x.len() / d;
    let mut y = vec![F::zero(); x.len()];
    let mut r = vec![F::zero(); rows];
    y.par_chunks_mut(d)
        .zip(r.par_iter_mut())
        .zip(x.par_chunks(d))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|((yr, rr), xr)| {
            *rr = F::one() / (xr.iter().map(|&v| v * v).sum::<F>() + F::of(1e-6)).sqrt();
            yr.iter_mut().zip(xr).for_each(|(a, &b)| *a = b * *rr);
        });
    (y, r)
}

/// dx = r·(dy − y (y·dy)).
pub fn l2norm_bwd<F: Elem>(y: &[F], r: &[F], dy: &[F], d: usize) -> Vec<F> {
    let mut dx = vec![F::zero(); y.len()];
    dx.par_chunks_mut(d)
        .zip(y.par_chunks(d).zip(dy.par_chunks(d)))
        .zip(r.par_iter())
        .with_min_len(ROWS_PER_TASK)
        .for_each(|((dxr, (yr, dyr)), &rr)| {
            let dot = yr.iter().zip(dyr).map(|(&a, &b)| a * b).sum::<F>();
            for ((o, &yv), &g) in dxr.iter_mut().zip(yr).zip(dyr) {
                *o = rr * (g - yv * dot);
            }
        });
    dx
}

/// β's range: sigmoid(b) times this (2 under FLA's `allow_neg_eigval`, else 1).
pub fn beta_scale(allow_neg_eigval: bool) -> f64 {
    if allow_neg_eigval {
        2.0
    } else {
        1.0
    }
}

/// The GDN gates over [n, H]: β = bs·sigmoid(b) (bs from [`beta_scale`]),
/// g = −exp(A_log)·softplus(a + dt_bias).
pub fn gates_fwd<F: Elem>(
    a: &[F],
    b: &[F],
    a_log: &[F],
    dt_bias: &[F],
    bs: f64,
) -> (Vec<F>, Vec<F>) {
    let h = a_log.len();
    let bs = F::of(bs);
    let beta = b.iter().map(|&v| bs * sigmoid(v)).collect();
    let g = a
        .iter()
        .enumerate()
        .map(|(i, &v)| -a_log[i % h].exp() * softplus(v + dt_bias[i % h]))
        .collect();
    (g, beta)
}

/// Returns (d a, d b); accumulates d A_log and d dt_bias. `bs` is the forward's β scale: with
/// s = β / bs = sigmoid(b), d b = d β · bs · s(1 − s).
#[allow(clippy::too_many_arguments)]
pub fn gates_bwd<F: Elem>(
    a: &[F],
    beta: &[F],
    g: &[F],
    a_log: &[F],
    dt_bias: &[F],
    dg: &[F],
    dbeta: &[F],
    d_a_log: &mut [F],
    d_dt_bias: &mut [F],
    bs: f64,
) -> (Vec<F>, Vec<F>) {
    let h = a_log.len();
    let mut da = vec![F::zero(); a.len()];
    for i in 0..a.len() {
        let j = i % h;
        let z = a[i] + dt_bias[j];
        // softplus'(z) = sigmoid(z), and exactly 1 in the linear branch above 20.
        let dsp = if z > F::of(20.0) {
            F::one()
        } else {
            sigmoid(z)
        };
        da[i] = dg[i] * -a_log[j].exp() * dsp;
        d_a_log[j] += dg[i] * g[i];
        d_dt_bias[j] += da[i];
    }
    let bs = F::of(bs);
    let db = beta
        .iter()
        .zip(dbeta)
        .map(|(&b, &d)| {
            let s = b / bs;
            d * bs * s * (F::one() - s)
        })
        .collect();
    (da, db)
}

/// Mean cross-entropy over the positions whose target is not `IGNORE`.
/// Returns (loss, number of counted positions); loss is 0 when none count.
pub fn cross_entropy<F: Elem>(logits: &[F], targets: &[u32], vocab: usize) -> (f64, usize) {
    let (sum, count) = logits
        .par_chunks(vocab)
        .zip(targets.par_iter())
        .with_min_len(16)
        .map(|(row, &t)| {
            if t == IGNORE {
                return (0.0, 0);
            }
            let m = row.iter().fold(F::neg_infinity(), |a, &b| a.max(b));
            let lse = m.f64() + row.iter().map(|&v| (v - m).exp().f64()).sum::<f64>().ln();
            (lse - row[t as usize].f64(), 1usize)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold((0.0, 0), |(s, c), (l, n)| (s + l, c + n));
    (if count > 0 { sum / count as f64 } else { 0.0 }, count)
}

/// d loss / d logits for `scale`·(mean cross-entropy), overwriting `logits` with the gradient
/// (the logits are not needed afterwards, as llm.c's fused classifier).
pub fn cross_entropy_bwd_inplace<F: Elem>(
    logits: &mut [F],
    targets: &[u32],
    vocab: usize,
    count: usize,
    scale: f64,
) {
    let k = if count > 0 {
        F::of(scale / count as f64)
    } else {
        F::zero()
    };
    logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .with_min_len(16)
        .for_each(|(row, &t)| {
            if t == IGNORE {
                row.iter_mut().for_each(|v| *v = F::zero());
                return;
            }
            let m = row.iter().fold(F::neg_infinity(), |a, &b| a.max(b));
            let mut z = F::zero();
            row.iter_mut().for_each(|v| {
                *v = (*v - m).exp();
                z += *v;
            });
            row.iter_mut().for_each(|v| *v = *v / z * k);
            row[t as usize] -= k;
        });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tensor::{max_rel_err, Rng};

    pub fn randn(rng: &mut Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.normal()).collect()
    }

    /// Central finite differences of `f` at `x`: the five-point stencil
    /// (f(x−2h) − 8f(x−h) + 8f(x+h) − f(x+2h)) / 12h, whose O(h⁴) truncation error lets h be
    /// large enough (2.5e-5) that f64 round-off stays near 1e-11. At 1e-4 the truncation error
    /// reached 1e-4 relative on the whole-model check at some random points (gradients ≈ 17 on
    /// the perturbed tiny model); with 2.5e-5 the same points pass the 1e-6 check.
    pub fn fd(x: &[f64], f: &dyn Fn(&[f64]) -> f64) -> Vec<f64> {
        let h = 2.5e-5;
        (0..x.len())
            .map(|i| {
                let mut p = x.to_vec();
                let mut at = |d: f64| {
                    p[i] = x[i] + d;
                    f(&p)
                };
                (at(-2.0 * h) - 8.0 * at(-h) + 8.0 * at(h) - at(2.0 * h)) / (12.0 * h)
            })
            .collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    const TOL: f64 = 1e-6;

    #[test]
    fn linear_backward_matches_fd() {
        let mut rng = Rng::new(1);
        let (n, di, dout) = (3, 4, 5);
        let x = randn(&mut rng, n * di);
        let w = randn(&mut rng, dout * di);
        let r = randn(&mut rng, n * dout);
        let mut dw = vec![0.0; w.len()];
        let dx = linear_bwd(&x, &w, &r, n, di, dout, &mut dw);
        assert!(max_rel_err(&dx, &fd(&x, &|x| dot(&linear_fwd(x, &w, n, di, dout), &r))) < TOL);
        assert!(max_rel_err(&dw, &fd(&w, &|w| dot(&linear_fwd(&x, w, n, di, dout), &r))) < TOL);
    }

    #[test]
    fn embedding_backward_matches_fd() {
        let mut rng = Rng::new(2);
        let (vocab, d) = (5, 3);
        let table = randn(&mut rng, vocab * d);
        let tokens = [1u32, 4, 1, 0];
        let r = randn(&mut rng, tokens.len() * d);
        let mut dt = vec![0.0; table.len()];
        embedding_bwd(&tokens, &r, d, &mut dt);
        assert!(
            max_rel_err(
                &dt,
                &fd(&table, &|t| dot(&embedding_fwd(t, &tokens, d), &r))
            ) < TOL
        );
    }

    #[test]
    fn rmsnorm_backward_matches_fd() {
        let mut rng = Rng::new(3);
        let (rows, d) = (3, 6);
        let x = randn(&mut rng, rows * d);
        let w = randn(&mut rng, d);
        let r = randn(&mut rng, rows * d);
        let (_, rstd) = rmsnorm_fwd(&x, &w, d, 1e-5);
        let mut dw = vec![0.0; d];
        let dx = rmsnorm_bwd(&x, &w, &rstd, &r, d, &mut dw);
        assert!(max_rel_err(&dx, &fd(&x, &|x| dot(&rmsnorm_fwd(x, &w, d, 1e-5).0, &r))) < TOL);
        assert!(max_rel_err(&dw, &fd(&w, &|w| dot(&rmsnorm_fwd(&x, w, d, 1e-5).0, &r))) < TOL);
    }

    #[test]
    fn gated_rmsnorm_backward_matches_fd() {
        let mut rng = Rng::new(4);
        let (rows, v) = (4, 3);
        let o = randn(&mut rng, rows * v);
        let gate = randn(&mut rng, rows * v);
        let w = randn(&mut rng, v);
        let r = randn(&mut rng, rows * v);
        let (_, rstd) = gated_rmsnorm_fwd(&o, &gate, &w, 1e-6);
        let mut dw = vec![0.0; v];
        let (d_o, dg) = gated_rmsnorm_bwd(&o, &gate, &w, &rstd, &r, &mut dw);
        let f = |o: &[f64], g: &[f64], w: &[f64]| dot(&gated_rmsnorm_fwd(o, g, w, 1e-6).0, &r);
        assert!(max_rel_err(&d_o, &fd(&o, &|o| f(o, &gate, &w))) < TOL);
        assert!(max_rel_err(&dg, &fd(&gate, &|g| f(&o, g, &w))) < TOL);
        assert!(max_rel_err(&dw, &fd(&w, &|w| f(&o, &gate, w))) < TOL);
    }

    #[test]
    fn silu_and_l2norm_backward_match_fd() {
        let mut rng = Rng::new(5);
        let x = randn(&mut rng, 12);
        let r = randn(&mut rng, 12);
        assert!(max_rel_err(&silu_bwd(&x, &r), &fd(&x, &|x| dot(&silu_fwd(x), &r))) < TOL);
        let (y, rr) = l2norm_fwd(&x, 4);
        let dx = l2norm_bwd(&y, &rr, &r, 4);
        assert!(max_rel_err(&dx, &fd(&x, &|x| dot(&l2norm_fwd(x, 4).0, &r))) < TOL);
    }

    #[test]
    fn gates_backward_matches_fd_in_both_softplus_branches() {
        let mut rng = Rng::new(6);
        let h = 2;
        let mut a = randn(&mut rng, 6);
        a[3] = 25.0; // the linear branch of softplus
        let b = randn(&mut rng, 6);
        let a_log = vec![0.3, -0.7];
        let dt_bias = vec![-2.0, 0.5];
        let (rg, rb) = (randn(&mut rng, 6), randn(&mut rng, 6));
        for neg in [false, true] {
            let bs = beta_scale(neg);
            let f = |a: &[f64], b: &[f64], al: &[f64], dt: &[f64]| {
                let (g, beta) = gates_fwd(a, b, al, dt, bs);
                dot(&g, &rg) + dot(&beta, &rb)
            };
            let (g, beta) = gates_fwd(&a, &b, &a_log, &dt_bias, bs);
            // β = bs·sigmoid(b): in (0, 2) with allow_neg_eigval, else in (0, 1).
            assert!(beta.iter().zip(&b).all(|(&x, &v)| x == bs * sigmoid(v)));
            let (mut dal, mut ddt) = (vec![0.0; h], vec![0.0; h]);
            let (da, db) = gates_bwd(
                &a, &beta, &g, &a_log, &dt_bias, &rg, &rb, &mut dal, &mut ddt, bs,
            );
            assert!(max_rel_err(&da, &fd(&a, &|a| f(a, &b, &a_log, &dt_bias))) < TOL);
            assert!(max_rel_err(&db, &fd(&b, &|b| f(&a, b, &a_log, &dt_bias))) < TOL);
            assert!(max_rel_err(&dal, &fd(&a_log, &|al| f(&a, &b, al, &dt_bias))) < TOL);
            assert!(max_rel_err(&ddt, &fd(&dt_bias, &|dt| f(&a, &b, &a_log, dt))) < TOL);
        }
    }

    #[test]
    fn cross_entropy_backward_matches_fd_and_skips_ignored() {
        let mut rng = Rng::new(7);
        let vocab = 5;
        let logits = randn(&mut rng, 3 * vocab);
        let targets = [2u32, IGNORE, 4];
        let (loss, count) = cross_entropy(&logits, &targets, vocab);
        assert_eq!(count, 2);
        assert!(loss > 0.0);
        let mut g = logits.clone();
        cross_entropy_bwd_inplace(&mut g, &targets, vocab, count, 1.0);
        assert!(g[vocab..2 * vocab].iter().all(|&v| v == 0.0));
        assert!(max_rel_err(&g, &fd(&logits, &|l| cross_entropy(l, &targets, vocab).0)) < TOL);
    }
}
