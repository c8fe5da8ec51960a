//! Naive per-token recurrence (spec §A.2 step 8): the oracle for the chunked form.
//!
//! For each sequence (by `cu_seqlens`) and head, with S ∈ R^{K×V} key-first:
//!
//! ```text
//! A = exp(g_t)·S          (decay)
//! r = Aᵀ k_t              (current read-out for k_t)
//! u = β_t (v_t − r)
//! S = A + k_t uᵀ
//! o_t = scale · Sᵀ q_t
//! ```
//!
//! The backward stores the state entering every token and walks the tokens in reverse. Both
//! directions are written for clarity, not speed.

use super::{Dims, Forward, Grads, Inputs};
use crate::tensor::Elem;

/// Offset of token `t`, head `h` in a [T, H, D] tensor.
#[inline]
fn at(t: usize, h: usize, heads: usize, d: usize) -> usize {
    (t * heads + h) * d
}

/// Per-token recurrence forward.
pub fn forward<F: Elem>(inp: &Inputs<F>, dims: Dims) -> Forward<F> {
    inp.validate(dims).expect("delta_rule::naive::forward");
    let Dims { heads: nh, dk, dv } = dims;
    let (nt, ns) = (inp.num_tokens(), inp.num_seqs());
    let mut o = vec![F::zero(); nt * nh * dv];
    let mut final_state = vec![F::zero(); ns * nh * dk * dv];
    let mut r = vec![F::zero(); dv];
    let mut u = vec![F::zero(); dv];
    for n in 0..ns {
        let (bos, eos) = (inp.cu_seqlens[n], inp.cu_seqlens[n + 1]);
        for h in 0..nh {
            let so = (n * nh + h) * dk * dv;
            let s = &mut final_state[so..so + dk * dv];
            if let Some(h0) = inp.initial_state {
                s.copy_from_slice(&h0[so..so + dk * dv]);
            }
            for t in bos..eos {
                let q = &inp.q[at(t, h, nh, dk)..][..dk];
                let k = &inp.k[at(t, h, nh, dk)..][..dk];
                let v = &inp.v[at(t, h, nh, dv)..][..dv];
                let alpha = inp.g[t * nh + h].exp();
                let beta = inp.beta[t * nh + h];
                step(s, k, v, alpha, beta, dk, dv, &mut r, &mut u);
                let out = &mut o[at(t, h, nh, dv)..][..dv];
                read(s, q, inp.scale, dk, dv, out);
            }
        }
    }
    Forward { o, final_state }
}

/// One token's state update, in place. Leaves r = Aᵀk and u in the scratch vectors.
#[allow(clippy::too_many_arguments)]
fn step<F: Elem>(
    s: &mut [F],
    k: &[F],
    v: &[F],
    alpha: F,
    beta: F,
    dk: usize,
    dv: usize,
    r: &mut [F],
    u: &mut [F],
) {
    s.iter_mut().for_each(|x| *x *= alpha);
    r.iter_mut().for_each(|x| *x = F::zero());
    for a in 0..dk {
        for b in 0..dv {
            r[b] += s[a * dv + b] * k[a];
        }
    }
    for b in 0..dv {
        u[b] = beta * (v[b] - r[b]);
    }
    for a in 0..dk {
        for b in 0..dv {
            s[a * dv + b] += k[a] * u[b];
        }
    }
}

/// out = scale · Sᵀ q.
fn read<F: Elem>(s: &[F], q: &[F], scale: F, dk: usize, dv: usize, out: &mut [F]) {
    for b in 0..dv {
        let mut acc = F::zero();
        for a in 0..dk {
            acc += s[a * dv + b] * q[a];
        }
        out[b] = scale * acc;
    }
}

/// Exact reverse-mode gradient of [`forward`] for the loss whose gradients are `d_o` ([T,H,V])
/// with respect to the outputs and `d_final` ([N,H,K,V]) with respect to the final states.
pub fn backward<F: Elem>(
    inp: &Inputs<F>,
    dims: Dims,
    d_o: &[F],
    d_final: Option<&[F]>,
) -> Grads<F> {
    inp.check_backward(dims, d_o, d_final, "delta_rule::naive::backward");
    let Dims { heads: nh, dk, dv } = dims;
    let (nt, ns) = (inp.num_tokens(), inp.num_seqs());
    let kv = dk * dv;
    let mut g = Grads {
        dq: vec![F::zero(); nt * nh * dk],
        dk: vec![F::zero(); nt * nh * dk],
        dv: vec![F::zero(); nt * nh * dv],
        dg: vec![F::zero(); nt * nh],
        dbeta: vec![F::zero(); nt * nh],
        dh0: vec![F::zero(); ns * nh * kv],
    };
    let mut r = vec![F::zero(); dv];
    let mut u = vec![F::zero(); dv];
    let mut du = vec![F::zero(); dv];
    let mut dr = vec![F::zero(); dv];
    for n in 0..ns {
        let (bos, eos) = (inp.cu_seqlens[n], inp.cu_seqlens[n + 1]);
        let len = eos - bos;
        for h in 0..nh {
            let so = (n * nh + h) * kv;
            // prev[i] = state entering token bos+i; prev[len] = final state.
            let mut prev = vec![F::zero(); (len + 1) * kv];
            if let Some(h0) = inp.initial_state {
                prev[..kv].copy_from_slice(&h0[so..so + kv]);
            }
            for i in 0..len {
                let t = bos + i;
                let (done, rest) = prev.split_at_mut((i + 1) * kv);
                let s = &mut rest[..kv];
                s.copy_from_slice(&done[i * kv..]);
                let k = &inp.k[at(t, h, nh, dk)..][..dk];
                let v = &inp.v[at(t, h, nh, dv)..][..dv];
                step(
                    s,
                    k,
                    v,
                    inp.g[t * nh + h].exp(),
                    inp.beta[t * nh + h],
                    dk,
                    dv,
                    &mut r,
                    &mut u,
                );
            }
            // ds: gradient of the state leaving the current token.
            let mut ds = match d_final {
                Some(df) => df[so..so + kv].to_vec(),
                None => vec![F::zero(); kv],
            };
            let mut a = vec![F::zero(); kv];
            for i in (0..len).rev() {
                let t = bos + i;
                let q = &inp.q[at(t, h, nh, dk)..][..dk];
                let k = &inp.k[at(t, h, nh, dk)..][..dk];
                let v = &inp.v[at(t, h, nh, dv)..][..dv];
                let dout = &d_o[at(t, h, nh, dv)..][..dv];
                let alpha = inp.g[t * nh + h].exp();
                let beta = inp.beta[t * nh + h];
                let s_new = &prev[(i + 1) * kv..][..kv];
                let s_old = &prev[i * kv..][..kv];
                // Recompute the decayed state A, r and u of this token.
                for (x, y) in a.iter_mut().zip(s_old) {
                    *x = alpha * *y;
                }
                for b in 0..dv {
                    let mut acc = F::zero();
                    for c in 0..dk {
                        acc += a[c * dv + b] * k[c];
                    }
                    r[b] = acc;
                    u[b] = beta * (v[b] - acc);
                }
                // o = scale·Sᵀq.
                let dq = &mut g.dq[at(t, h, nh, dk)..][..dk];
                for c in 0..dk {
                    let mut acc = F::zero();
                    for b in 0..dv {
                        acc += s_new[c * dv + b] * dout[b];
                        ds[c * dv + b] += inp.scale * q[c] * dout[b];
                    }
                    dq[c] = inp.scale * acc;
                }
                // S = A + k uᵀ  (dA = ds).
                let dkk = &mut g.dk[at(t, h, nh, dk)..][..dk];
                for c in 0..dk {
                    let mut acc = F::zero();
                    for b in 0..dv {
                        acc += ds[c * dv + b] * u[b];
                    }
                    dkk[c] = acc;
                }
                for b in 0..dv {
                    let mut acc = F::zero();
                    for c in 0..dk {
                        acc += ds[c * dv + b] * k[c];
                    }
                    du[b] = acc;
                }
                // u = β(v − r).
                let dvv = &mut g.dv[at(t, h, nh, dv)..][..dv];
                let mut db = F::zero();
                for b in 0..dv {
                    db += du[b] * (v[b] - r[b]);
                    dvv[b] = beta * du[b];
                    dr[b] = -beta * du[b];
                }
                g.dbeta[t * nh + h] = db;
                // r = Aᵀk: dA += k drᵀ, dk += A dr.
                for c in 0..dk {
                    let mut acc = F::zero();
                    for b in 0..dv {
                        acc += a[c * dv + b] * dr[b];
                        ds[c * dv + b] += k[c] * dr[b];
                    }
                    dkk[c] += acc;
                }
                // A = α S_old: dg = ⟨dA, A⟩, dS_old = α dA.
                let mut dgt = F::zero();
                for (x, y) in ds.iter_mut().zip(&a) {
                    dgt += *x * *y;
                    *x *= alpha;
                }
                g.dg[t * nh + h] = dgt;
            }
            g.dh0[so..so + kv].copy_from_slice(&ds);
        }
    }
    g
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tensor::{max_rel_err, Rng};

    /// Owned random inputs for the delta-rule tests.
    pub(crate) struct Case<F> {
        pub q: Vec<F>,
        pub k: Vec<F>,
        pub v: Vec<F>,
        pub g: Vec<F>,
        pub beta: Vec<F>,
        pub h0: Option<Vec<F>>,
        pub cu: Vec<usize>,
        pub scale: F,
        pub dims: Dims,
    }

    impl<F: Elem> Case<F> {
        pub fn inputs(&self) -> Inputs<'_, F> {
            Inputs {
                q: &self.q,
                k: &self.k,
                v: &self.v,
                g: &self.g,
                beta: &self.beta,
                scale: self.scale,
                initial_state: self.h0.as_deref(),
                cu_seqlens: &self.cu,
            }
        }

        pub fn cast<G: Elem>(&self) -> Case<G> {
            let c = |x: &Vec<F>| x.iter().map(|y| G::of(y.f64())).collect::<Vec<G>>();
            Case {
                q: c(&self.q),
                k: c(&self.k),
                v: c(&self.v),
                g: c(&self.g),
                beta: c(&self.beta),
                h0: self.h0.as_ref().map(c),
                cu: self.cu.clone(),
                scale: G::of(self.scale.f64()),
                dims: self.dims,
            }
        }
    }

    /// Random case: q, k L2-normalised per head, g = −U[0.01, 1] with about one token in ten
    /// decaying strongly (g ≈ −5), β = sigmoid(normal).
    pub(crate) fn random_case(seed: u64, lens: &[usize], dims: Dims, with_h0: bool) -> Case<f64> {
        let mut rng = Rng::new(seed);
        let Dims { heads: nh, dk, dv } = dims;
        let mut cu = vec![0usize];
        for &l in lens {
            cu.push(cu.last().unwrap() + l);
        }
        let nt = *cu.last().unwrap();
        let unit = |n: usize, rng: &mut Rng| {
            let mut x: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
            for row in x.chunks_mut(dk) {
                let nrm = row.iter().map(|y| y * y).sum::<f64>().sqrt();
                row.iter_mut().for_each(|y| *y /= nrm);
            }
            x
        };
        let q = unit(nt * nh * dk, &mut rng);
        let k = unit(nt * nh * dk, &mut rng);
        let v: Vec<f64> = (0..nt * nh * dv).map(|_| rng.normal()).collect();
        let g: Vec<f64> = (0..nt * nh)
            .map(|_| {
                if rng.uniform() < 0.1 {
                    -(3.0 + 4.0 * rng.uniform())
                } else {
                    -(0.01 + 0.99 * rng.uniform())
                }
            })
            .collect();
        let beta: Vec<f64> = (0..nt * nh)
            .map(|_| 1.0 / (1.0 + (-rng.normal()).exp()))
            .collect();
        let h0 = with_h0.then(|| {
            (0..lens.len() * nh * dk * dv)
                .map(|_| rng.normal())
                .collect()
        });
        Case {
            q,
            k,
            v,
            g,
            beta,
            h0,
            cu,
            scale: 1.0 / (dk as f64).sqrt(),
            dims,
        }
    }

    pub(crate) fn randn(seed: u64, n: usize) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.normal()).collect()
    }

    fn loss(c: &Case<f64>, ro: &[f64], rs: &[f64]) -> f64 {
        let f = forward(&c.inputs(), c.dims);
        f.o.iter().zip(ro).map(|(a, b)| a * b).sum::<f64>()
            + f.final_state
                .iter()
                .zip(rs)
                .map(|(a, b)| a * b)
                .sum::<f64>()
    }

    #[test]
    fn naive_forward_single_token_matches_closed_form() {
        // One token from h0: S = α(I − βkkᵀ)h0 + βkvᵀ, o = s·Sᵀq.
        let dims = Dims {
            heads: 1,
            dk: 3,
            dv: 2,
        };
        let c = random_case(11, &[1], dims, true);
        let f = forward(&c.inputs(), dims);
        let (a, b) = (c.g[0].exp(), c.beta[0]);
        let h0 = c.h0.as_ref().unwrap();
        let mut s = vec![0.0; 6];
        for i in 0..3 {
            for j in 0..2 {
                let mut proj = 0.0;
                for l in 0..3 {
                    proj += c.k[i] * c.k[l] * h0[l * 2 + j];
                }
                s[i * 2 + j] = a * (h0[i * 2 + j] - b * proj) + b * c.k[i] * c.v[j];
            }
        }
        assert!(max_rel_err(&f.final_state, &s) < 1e-14);
        for j in 0..2 {
            let want: f64 = (0..3).map(|i| s[i * 2 + j] * c.q[i]).sum::<f64>() * c.scale;
            assert!((f.o[j] - want).abs() < 1e-14);
        }
    }

    #[test]
    fn naive_backward_matches_finite_differences() {
        let dims = Dims {
            heads: 2,
            dk: 3,
            dv: 2,
        };
        let c = random_case(5, &[5, 3, 0], dims, true);
        let nt = c.cu[c.cu.len() - 1];
        let ns = c.cu.len() - 1;
        let ro = randn(6, nt * 2 * 2);
        let rs = randn(7, ns * 2 * 6);
        let gr = backward(&c.inputs(), dims, &ro, Some(&rs));
        type Pick = fn(&mut Case<f64>) -> &mut Vec<f64>;
        let fields: [(&str, Pick, &Vec<f64>); 6] = [
            ("q", |c| &mut c.q, &gr.dq),
            ("k", |c| &mut c.k, &gr.dk),
            ("v", |c| &mut c.v, &gr.dv),
            ("g", |c| &mut c.g, &gr.dg),
            ("beta", |c| &mut c.beta, &gr.dbeta),
            ("h0", |c| c.h0.as_mut().unwrap(), &gr.dh0),
        ];
        let mut worst = 0.0f64;
        for (name, pick, analytic) in fields {
            let mut cc = c.cast::<f64>();
            let len = pick(&mut cc).len();
            let mut num = vec![0.0; len];
            for (i, numi) in num.iter_mut().enumerate() {
                let x0 = pick(&mut cc)[i];
                let eps = 1e-6 * x0.abs().max(1.0);
                pick(&mut cc)[i] = x0 + eps;
                let lp = loss(&cc, &ro, &rs);
                pick(&mut cc)[i] = x0 - eps;
                let lm = loss(&cc, &ro, &rs);
                pick(&mut cc)[i] = x0;
                *numi = (lp - lm) / (2.0 * eps);
            }
            let e = max_rel_err(analytic, &num);
            eprintln!("naive backward vs finite differences: d{name} max_rel_err {e:.3e}");
            assert!(e < 1e-6, "d{name}: {e}");
            worst = worst.max(e);
        }
        eprintln!("naive backward vs finite differences: worst {worst:.3e}");
    }

    #[test]
    fn naive_empty_sequence_passes_state_through() {
        let dims = Dims {
            heads: 2,
            dk: 3,
            dv: 2,
        };
        let c = random_case(9, &[0, 2], dims, true);
        let f = forward(&c.inputs(), dims);
        assert_eq!(&f.final_state[..12], &c.h0.as_ref().unwrap()[..12]);
        let d_fin = randn(3, 24);
        let gr = backward(&c.inputs(), dims, &[0.0; 2 * 2 * 2], Some(&d_fin));
        assert_eq!(&gr.dh0[..12], &d_fin[..12]);
    }
}
