//! Chunked form of the gated delta rule (spec §B), forward and backward.
//!
//! Every (sequence, head) pair is independent: it is gathered into contiguous row-major buffers,
//! processed on its own rayon task, and scattered back, so results do not depend on scheduling.
//! Each sequence is chunked from its own start into chunks of [`CHUNK`] rows; the last one may be
//! shorter and is handled with its actual length `l`.
//!
//! Notation for one chunk of `l` rows (all matrices row-major, a chunk-local l×l matrix has row
//! stride `l`), with S the state entering the chunk:
//!
//! ```text
//! G_i = Σ_{s≤i} g_s                     γ_i = e^{G_i}      δ_i = e^{G_{l-1} − G_i}
//! Γ_ij = e^{G_i − G_j} = Π_{j<s≤i} α_s (i ≥ j, else 0); only non-positive exponents are formed
//! M_ij = β_i (k_i·k_j) Γ_ij (i > j)      T = (I + M)^{-1}   (forward substitution)
//! W = T diag(βγ) K                       U = T diag(β) V
//! Ṽ = U − W S
//! O = s·[diag(γ) Q S + ((Q Kᵀ) ⊙ Γ) Ṽ]
//! S' = γ_{l-1} S + (diag(δ) K)ᵀ Ṽ
//! ```
//!
//! The backward recomputes S, T, W and Ṽ for every chunk in a forward sweep, then walks the
//! chunks in reverse carrying dS (the gradient of the state leaving the chunk) and differentiates
//! the formulas above line by line. Gradients with respect to the in-chunk cumulative decay G are
//! collected in `dG` and turned into gradients of g by a reverse cumsum within the chunk. Every
//! term of the form X_ij = Y_ij·e^{G_i − G_j} contributes dG_i += dX_ij X_ij and dG_j −= dX_ij X_ij.

use super::{Dims, Forward, Grads, Inputs, CHUNK};
use crate::tensor::{gemm, Elem};
use rayon::prelude::*;

/// One (sequence, head) slice copied into contiguous buffers ([len, K], [len, V], [len]).
struct Slice<F> {
    len: usize,
    q: Vec<F>,
    k: Vec<F>,
    v: Vec<F>,
    g: Vec<F>,
    beta: Vec<F>,
}

/// Copies rows `bos..bos+len` of head `h` out of a [T, H, d] tensor.
fn gather<F: Elem>(src: &[F], bos: usize, len: usize, h: usize, nh: usize, d: usize) -> Vec<F> {
    let mut out = Vec::with_capacity(len * d);
    for t in bos..bos + len {
        let o = ((t * nh) + h) * d;
        out.extend_from_slice(&src[o..o + d]);
    }
    out
}

/// Writes rows back into head `h` of a [T, H, d] tensor.
fn scatter<F: Elem>(dst: &mut [F], rows: &[F], bos: usize, h: usize, nh: usize, d: usize) {
    for (i, row) in rows.chunks_exact(d).enumerate() {
        let o = (((bos + i) * nh) + h) * d;
        dst[o..o + d].copy_from_slice(row);
    }
}

impl<F: Elem> Slice<F> {
    fn new(inp: &Inputs<F>, dims: Dims, n: usize, h: usize) -> Self {
        let (bos, eos) = (inp.cu_seqlens[n], inp.cu_seqlens[n + 1]);
        let len = eos - bos;
        let nh = dims.heads;
        Slice {
            len,
            q: gather(inp.q, bos, len, h, nh, dims.dk),
            k: gather(inp.k, bos, len, h, nh, dims.dk),
            v: gather(inp.v, bos, len, h, nh, dims.dv),
            g: gather(inp.g, bos, len, h, nh, 1),
            beta: gather(inp.beta, bos, len, h, nh, 1),
        }
    }
}

/// The (sequence, head) pairs in output order.
fn pairs(num_seqs: usize, heads: usize) -> Vec<(usize, usize)> {
    (0..num_seqs)
        .flat_map(|n| (0..heads).map(move |h| (n, h)))
        .collect()
}

fn dot<F: Elem>(a: &[F], b: &[F]) -> F {
    a.iter().zip(b).fold(F::zero(), |acc, (x, y)| acc + *x * *y)
}

/// dst row i = c_i · src row i.
fn scale_rows<F: Elem>(dst: &mut [F], src: &[F], c: &[F], d: usize) {
    for ((dr, sr), &ci) in dst.chunks_exact_mut(d).zip(src.chunks_exact(d)).zip(c) {
        for (x, y) in dr.iter_mut().zip(sr) {
            *x = ci * *y;
        }
    }
}

/// Scratch buffers of one chunk, sized for a full chunk and reused across chunks and pairs.
struct Work<F> {
    /// In-chunk cumulative log decay G.
    gcum: Vec<F>,
    /// γ_i = e^{G_i}.
    gam: Vec<F>,
    /// δ_i = e^{G_last − G_i}.
    dec: Vec<F>,
    /// βγ per row.
    bg: Vec<F>,
    /// Γ, lower-triangular including the diagonal, zero above.
    gmat: Vec<F>,
    /// K Kᵀ.
    akk: Vec<F>,
    /// (Q Kᵀ) ⊙ Γ.
    p: Vec<F>,
    /// l×l scratch for the backward.
    m1: Vec<F>,
    m2: Vec<F>,
    m3: Vec<F>,
    /// l×K scratch.
    a1: Vec<F>,
    a2: Vec<F>,
    a3: Vec<F>,
    /// l×V scratch.
    b1: Vec<F>,
    b2: Vec<F>,
    b3: Vec<F>,
    /// dG of the chunk.
    dgc: Vec<F>,
}

impl<F: Elem> Work<F> {
    fn new(dk: usize, dv: usize) -> Self {
        let z = |n: usize| vec![F::zero(); n];
        let c = CHUNK;
        Work {
            gcum: z(c),
            gam: z(c),
            dec: z(c),
            bg: z(c),
            gmat: z(c * c),
            akk: z(c * c),
            p: z(c * c),
            m1: z(c * c),
            m2: z(c * c),
            m3: z(c * c),
            a1: z(c * dk),
            a2: z(c * dk),
            a3: z(c * dk),
            b1: z(c * dv),
            b2: z(c * dv),
            b3: z(c * dv),
            dgc: z(c),
        }
    }

    /// Fills G, γ, δ, βγ and Γ for a chunk with log decays `g` and strengths `beta` (l rows).
    fn decays(&mut self, g: &[F], beta: &[F]) {
        let l = g.len();
        let mut acc = F::zero();
        for (x, &gi) in self.gcum.iter_mut().zip(g) {
            acc += gi;
            *x = acc;
        }
        let last = acc;
        for (i, &b) in beta.iter().enumerate() {
            let gc = self.gcum[i];
            self.gam[i] = gc.exp();
            self.dec[i] = (last - gc).exp();
            self.bg[i] = b * self.gam[i];
        }
        // Γ_ij = Γ_{i-1,j}·α_i: one exp per row instead of one per entry; products of factors
        // in (0, 1] can only underflow to zero, never overflow.
        let gm = &mut self.gmat[..l * l];
        for i in 0..l {
            let (prev, rest) = gm.split_at_mut(i * l);
            let row = &mut rest[..l];
            if i > 0 {
                let a = g[i].exp();
                for (x, y) in row[..i].iter_mut().zip(&prev[(i - 1) * l..(i - 1) * l + i]) {
                    *x = a * *y;
                }
            }
            row[i] = F::one();
            row[i + 1..].fill(F::zero());
        }
    }
}

/// T = (I + M)^{-1} for the strictly lower M_ij = β_i akk_ij Γ_ij, by forward substitution:
/// row i of T is e_i − Σ_{j<i} M_ij T_j (T_j is zero past column j).
fn wy_inverse<F: Elem>(akk: &[F], gmat: &[F], beta: &[F], t: &mut [F]) {
    let l = beta.len();
    for i in 0..l {
        let (done, rest) = t.split_at_mut(i * l);
        let row = &mut rest[..l];
        row.fill(F::zero());
        row[i] = F::one();
        for j in 0..i {
            let m = beta[i] * akk[i * l + j] * gmat[i * l + j];
            if m != F::zero() {
                let tj = &done[j * l..j * l + j + 1];
                for (x, y) in row[..=j].iter_mut().zip(tj) {
                    *x -= m * *y;
                }
            }
        }
    }
}

/// Sizes shared by every chunk of a call.
#[derive(Clone, Copy)]
struct Shape<F> {
    dk: usize,
    dv: usize,
    scale: F,
}

/// One chunk forward: rows `r` of the slice, state `s` (K×V) updated in place. Writes T (l×l),
/// W (l×K) and Ṽ (l×V) into the given slices and, when `o` is given, the outputs (l×V).
#[allow(clippy::too_many_arguments)]
fn chunk_forward<F: Elem>(
    sh: Shape<F>,
    sl: &Slice<F>,
    r: std::ops::Range<usize>,
    s: &mut [F],
    wk: &mut Work<F>,
    t: &mut [F],
    w: &mut [F],
    vn: &mut [F],
    o: Option<&mut [F]>,
) {
    let Shape { dk, dv, scale } = sh;
    let l = r.len();
    let q = &sl.q[r.start * dk..r.end * dk];
    let k = &sl.k[r.start * dk..r.end * dk];
    let v = &sl.v[r.start * dv..r.end * dv];
    let beta = &sl.beta[r.clone()];
    wk.decays(&sl.g[r.clone()], beta);

    // T = (I + M)^{-1}.
    let akk = &mut wk.akk[..l * l];
    gemm(l, dk, l, k, false, k, true, akk, F::one(), F::zero());
    wy_inverse(akk, &wk.gmat[..l * l], beta, t);

    // W = T diag(βγ) K, U = T diag(β) V, Ṽ = U − W S.
    let kb = &mut wk.a1[..l * dk];
    scale_rows(kb, k, &wk.bg[..l], dk);
    gemm(l, l, dk, t, false, kb, false, w, F::one(), F::zero());
    let vb = &mut wk.b1[..l * dv];
    scale_rows(vb, v, beta, dv);
    gemm(l, l, dv, t, false, vb, false, vn, F::one(), F::zero());
    gemm(l, dk, dv, w, false, s, false, vn, -F::one(), F::one());

    // O = s·[diag(γ) Q S + ((Q Kᵀ) ⊙ Γ) Ṽ].
    if let Some(o) = o {
        let qg = &mut wk.a1[..l * dk];
        scale_rows(qg, q, &wk.gam[..l], dk);
        gemm(l, dk, dv, qg, false, s, false, o, scale, F::zero());
        let p = &mut wk.p[..l * l];
        gemm(l, dk, l, q, false, k, true, p, F::one(), F::zero());
        for (x, y) in p.iter_mut().zip(&wk.gmat[..l * l]) {
            *x *= *y;
        }
        gemm(l, l, dv, p, false, vn, false, o, scale, F::one());
    }

    // S' = γ_last S + (diag(δ) K)ᵀ Ṽ.
    let gl = wk.gam[l - 1];
    s.iter_mut().for_each(|x| *x *= gl);
    let kd = &mut wk.a1[..l * dk];
    scale_rows(kd, k, &wk.dec[..l], dk);
    gemm(dk, l, dv, kd, true, vn, false, s, F::one(), F::one());
}

/// Row ranges of the chunks of a sequence of `len` tokens.
fn chunk_ranges(len: usize) -> impl DoubleEndedIterator<Item = (usize, std::ops::Range<usize>)> {
    (0..len.div_ceil(CHUNK)).map(move |c| (c, c * CHUNK..((c + 1) * CHUNK).min(len)))
}

/// Forward of one (sequence, head): returns (o [len×V], final state [K×V]).
fn forward_pair<F: Elem>(sh: Shape<F>, sl: &Slice<F>, h0: Option<&[F]>) -> (Vec<F>, Vec<F>) {
    let (dk, dv) = (sh.dk, sh.dv);
    let mut s = match h0 {
        Some(h0) => h0.to_vec(),
        None => vec![F::zero(); dk * dv],
    };
    let mut o = vec![F::zero(); sl.len * dv];
    let mut wk = Work::new(dk, dv);
    let mut t = [F::zero(); CHUNK * CHUNK];
    let mut w = vec![F::zero(); CHUNK * dk];
    let mut vn = vec![F::zero(); CHUNK * dv];
    for (_, r) in chunk_ranges(sl.len) {
        let l = r.len();
        let orows = &mut o[r.start * dv..r.end * dv];
        chunk_forward(
            sh,
            sl,
            r,
            &mut s,
            &mut wk,
            &mut t[..l * l],
            &mut w[..l * dk],
            &mut vn[..l * dv],
            Some(orows),
        );
    }
    (o, s)
}

/// Chunked forward (spec §B.1–B.3).
pub fn forward<F: Elem>(inp: &Inputs<F>, dims: Dims) -> Forward<F> {
    inp.validate(dims).expect("delta_rule::chunk::forward");
    let Dims { heads: nh, dk, dv } = dims;
    let (nt, ns) = (inp.num_tokens(), inp.num_seqs());
    let kv = dk * dv;
    let sh = Shape {
        dk,
        dv,
        scale: inp.scale,
    };
    let results: Vec<(Vec<F>, Vec<F>)> = pairs(ns, nh)
        .into_par_iter()
        .map(|(n, h)| {
            let sl = Slice::new(inp, dims, n, h);
            let so = (n * nh + h) * kv;
            forward_pair(sh, &sl, inp.initial_state.map(|x| &x[so..so + kv]))
        })
        .collect();
    let mut o = vec![F::zero(); nt * nh * dv];
    let mut final_state = vec![F::zero(); ns * nh * kv];
    for ((n, h), (po, ps)) in pairs(ns, nh).into_iter().zip(results) {
        scatter(&mut o, &po, inp.cu_seqlens[n], h, nh, dv);
        let so = (n * nh + h) * kv;
        final_state[so..so + kv].copy_from_slice(&ps);
    }
    Forward { o, final_state }
}

/// Gradients of one (sequence, head), rows in slice order.
struct PairGrads<F> {
    dq: Vec<F>,
    dk: Vec<F>,
    dv: Vec<F>,
    dg: Vec<F>,
    dbeta: Vec<F>,
    dh0: Vec<F>,
}

/// Backward of one (sequence, head). `d_o` is [len×V], `d_fin` [K×V].
fn backward_pair<F: Elem>(
    sh: Shape<F>,
    sl: &Slice<F>,
    h0: Option<&[F]>,
    d_o: &[F],
    d_fin: Option<&[F]>,
) -> PairGrads<F> {
    let Shape { dk, dv, scale } = sh;
    let (len, kv) = (sl.len, dk * dv);
    let nc = len.div_ceil(CHUNK);
    let mut wk = Work::new(dk, dv);

    // Forward sweep: the state entering every chunk, and T, W, Ṽ of every chunk.
    let mut states = vec![F::zero(); nc * kv];
    let mut t_all = vec![F::zero(); nc * CHUNK * CHUNK];
    let mut w_all = vec![F::zero(); len * dk];
    let mut vn_all = vec![F::zero(); len * dv];
    let mut s = match h0 {
        Some(h0) => h0.to_vec(),
        None => vec![F::zero(); kv],
    };
    for (c, r) in chunk_ranges(len) {
        let l = r.len();
        states[c * kv..(c + 1) * kv].copy_from_slice(&s);
        chunk_forward(
            sh,
            sl,
            r.clone(),
            &mut s,
            &mut wk,
            &mut t_all[c * CHUNK * CHUNK..][..l * l],
            &mut w_all[r.start * dk..r.end * dk],
            &mut vn_all[r.start * dv..r.end * dv],
            None,
        );
    }

    let mut gr = PairGrads {
        dq: vec![F::zero(); len * dk],
        dk: vec![F::zero(); len * dk],
        dv: vec![F::zero(); len * dv],
        dg: vec![F::zero(); len],
        dbeta: vec![F::zero(); len],
        dh0: vec![F::zero(); kv],
    };
    // ds: gradient of the state leaving the current chunk.
    let mut ds = match d_fin {
        Some(d) => d.to_vec(),
        None => vec![F::zero(); kv],
    };

    for (c, r) in chunk_ranges(len).rev() {
        let l = r.len();
        let q = &sl.q[r.start * dk..r.end * dk];
        let k = &sl.k[r.start * dk..r.end * dk];
        let v = &sl.v[r.start * dv..r.end * dv];
        let beta = &sl.beta[r.clone()];
        let dout = &d_o[r.start * dv..r.end * dv];
        let s = &states[c * kv..(c + 1) * kv];
        let t = &t_all[c * CHUNK * CHUNK..][..l * l];
        let w = &w_all[r.start * dk..r.end * dk];
        let vn = &vn_all[r.start * dv..r.end * dv];
        let dq = &mut gr.dq[r.start * dk..r.end * dk];
        let dkk = &mut gr.dk[r.start * dk..r.end * dk];
        let dvv = &mut gr.dv[r.start * dv..r.end * dv];
        let dbeta = &mut gr.dbeta[r.clone()];

        wk.decays(&sl.g[r.clone()], beta);
        let Work {
            gam,
            dec,
            bg,
            gmat,
            akk,
            p,
            m1,
            m2,
            m3,
            a1,
            a2,
            a3,
            b1,
            b2,
            b3,
            dgc,
            ..
        } = &mut wk;
        let gmat = &gmat[..l * l];
        let (gam, dec, bg) = (&gam[..l], &dec[..l], &bg[..l]);
        let dgc = &mut dgc[..l];
        dgc.fill(F::zero());
        dbeta.fill(F::zero());

        // P = (Q Kᵀ) ⊙ Γ.
        let p = &mut p[..l * l];
        gemm(l, dk, l, q, false, k, true, p, F::one(), F::zero());
        for (x, y) in p.iter_mut().zip(gmat) {
            *x *= *y;
        }

        // dṼ = s·Pᵀ dO + diag(δ) K dS'.
        let kd = &mut a1[..l * dk];
        scale_rows(kd, k, dec, dk);
        let dvn = &mut b1[..l * dv];
        gemm(l, l, dv, p, true, dout, false, dvn, scale, F::zero());
        gemm(l, dk, dv, kd, false, &ds, false, dvn, F::one(), F::one());

        // dP = s·dO Ṽᵀ on i ≥ j; its Γ part goes to dG, the rest is d(QKᵀ) (kept in m1).
        let dp = &mut m1[..l * l];
        gemm(l, dv, l, dout, false, vn, true, dp, scale, F::zero());
        for i in 0..l {
            for j in 0..l {
                let ij = i * l + j;
                if j > i {
                    dp[ij] = F::zero();
                } else {
                    let x = dp[ij] * p[ij];
                    dgc[i] += x;
                    dgc[j] -= x;
                    dp[ij] *= gmat[ij];
                }
            }
        }

        // dQ = s·diag(γ) dO Sᵀ + d(QKᵀ) K; the first term also feeds dG_i += q_i·dQ_i.
        let dog = &mut b2[..l * dv];
        scale_rows(dog, dout, gam, dv);
        gemm(l, dv, dk, dog, false, s, true, dq, scale, F::zero());
        for i in 0..l {
            dgc[i] += dot(&q[i * dk..(i + 1) * dk], &dq[i * dk..(i + 1) * dk]);
        }
        gemm(l, l, dk, dp, false, k, false, dq, F::one(), F::one());

        // dK = d(QKᵀ)ᵀ Q + diag(δ) Ṽ dS'ᵀ; the decay δ feeds dG.
        gemm(l, l, dk, dp, true, q, false, dkk, F::one(), F::zero());
        let dkd = &mut a2[..l * dk];
        gemm(l, dv, dk, vn, false, &ds, true, dkd, F::one(), F::zero());
        for i in 0..l {
            let (ki, dki) = (&k[i * dk..(i + 1) * dk], &dkd[i * dk..(i + 1) * dk]);
            let y = dec[i] * dot(ki, dki);
            dgc[l - 1] += y;
            dgc[i] -= y;
            for (x, z) in dkk[i * dk..(i + 1) * dk].iter_mut().zip(dki) {
                *x += dec[i] * *z;
            }
        }
        // S' = γ_last S + …: dG_last += γ_last ⟨S, dS'⟩.
        let gl = gam[l - 1];
        dgc[l - 1] += gl * dot(s, &ds);

        // dS = γ_last dS' + s·(diag(γ) Q)ᵀ dO − Wᵀ dṼ.
        let qg = &mut a1[..l * dk];
        scale_rows(qg, q, gam, dk);
        ds.iter_mut().for_each(|x| *x *= gl);
        gemm(dk, l, dv, qg, true, dout, false, &mut ds, scale, F::one());
        gemm(dk, l, dv, w, true, dvn, false, &mut ds, -F::one(), F::one());

        // Ṽ = U − W S: dU = dṼ, dW = −dṼ Sᵀ.
        let dw = &mut a2[..l * dk];
        gemm(l, dv, dk, dvn, false, s, true, dw, -F::one(), F::zero());

        // W = T Kb, U = T Vb with Kb = diag(βγ) K, Vb = diag(β) V.
        let kb = &mut a1[..l * dk];
        scale_rows(kb, k, bg, dk);
        let vb = &mut b2[..l * dv];
        scale_rows(vb, v, beta, dv);
        let dt = &mut m2[..l * l];
        gemm(l, dk, l, dw, false, kb, true, dt, F::one(), F::zero());
        gemm(l, dv, l, dvn, false, vb, true, dt, F::one(), F::one());
        let dkb = &mut a3[..l * dk];
        gemm(l, l, dk, t, true, dw, false, dkb, F::one(), F::zero());
        let dvb = &mut b3[..l * dv];
        gemm(l, l, dv, t, true, dvn, false, dvb, F::one(), F::zero());
        for i in 0..l {
            let ki = &k[i * dk..(i + 1) * dk];
            let dkbi = &dkb[i * dk..(i + 1) * dk];
            let z = dot(ki, dkbi);
            dbeta[i] += gam[i] * z;
            dgc[i] += bg[i] * z;
            for (x, y) in dkk[i * dk..(i + 1) * dk].iter_mut().zip(dkbi) {
                *x += bg[i] * *y;
            }
            let vi = &v[i * dv..(i + 1) * dv];
            let dvbi = &dvb[i * dv..(i + 1) * dv];
            dbeta[i] += dot(vi, dvbi);
            for (x, y) in dvv[i * dv..(i + 1) * dv].iter_mut().zip(dvbi) {
                *x = beta[i] * *y;
            }
        }

        // T = (I + M)^{-1}: dM = −Tᵀ dT Tᵀ on the strictly lower part (T is unit lower, so only
        // the strictly lower part of dT matters).
        for i in 0..l {
            dt[i * l + i..(i + 1) * l].fill(F::zero());
        }
        let tmp = &mut m3[..l * l];
        gemm(l, l, l, dt, false, t, true, tmp, F::one(), F::zero());
        let dm = &mut m1[..l * l];
        gemm(l, l, l, t, true, tmp, false, dm, -F::one(), F::zero());

        // M_ij = β_i akk_ij Γ_ij: dβ, dG, and d(KKᵀ) (kept in dm, strictly lower).
        let akk = &mut akk[..l * l];
        gemm(l, dk, l, k, false, k, true, akk, F::one(), F::zero());
        for i in 0..l {
            for j in 0..l {
                let ij = i * l + j;
                if j >= i {
                    dm[ij] = F::zero();
                } else {
                    let ag = akk[ij] * gmat[ij];
                    let x = dm[ij] * beta[i] * ag;
                    dgc[i] += x;
                    dgc[j] -= x;
                    dbeta[i] += dm[ij] * ag;
                    dm[ij] *= beta[i] * gmat[ij];
                }
            }
        }
        gemm(l, l, dk, dm, false, k, false, dkk, F::one(), F::one());
        gemm(l, l, dk, dm, true, k, false, dkk, F::one(), F::one());

        // G = cumsum(g) within the chunk: dg = reverse cumsum of dG.
        let dg = &mut gr.dg[r.clone()];
        let mut acc = F::zero();
        for i in (0..l).rev() {
            acc += dgc[i];
            dg[i] = acc;
        }
    }
    gr.dh0.copy_from_slice(&ds);
    gr
}

/// Chunked backward (spec §B.4): gradients of every input for output gradient `d_o` ([T,H,V])
/// and final-state gradient `d_final` ([N,H,K,V]).
pub fn backward<F: Elem>(
    inp: &Inputs<F>,
    dims: Dims,
    d_o: &[F],
    d_final: Option<&[F]>,
) -> Grads<F> {
    inp.check_backward(dims, d_o, d_final, "delta_rule::chunk::backward");
    let Dims { heads: nh, dk, dv } = dims;
    let (nt, ns) = (inp.num_tokens(), inp.num_seqs());
    let kv = dk * dv;
    let sh = Shape {
        dk,
        dv,
        scale: inp.scale,
    };
    let results: Vec<PairGrads<F>> = pairs(ns, nh)
        .into_par_iter()
        .map(|(n, h)| {
            let sl = Slice::new(inp, dims, n, h);
            let so = (n * nh + h) * kv;
            let dout = gather(d_o, inp.cu_seqlens[n], sl.len, h, nh, dv);
            backward_pair(
                sh,
                &sl,
                inp.initial_state.map(|x| &x[so..so + kv]),
                &dout,
                d_final.map(|x| &x[so..so + kv]),
            )
        })
        .collect();
    let mut g = Grads {
        dq: vec![F::zero(); nt * nh * dk],
        dk: vec![F::zero(); nt * nh * dk],
        dv: vec![F::zero(); nt * nh * dv],
        dg: vec![F::zero(); nt * nh],
        dbeta: vec![F::zero(); nt * nh],
        dh0: vec![F::zero(); ns * nh * kv],
    };
    for ((n, h), pg) in pairs(ns, nh).into_iter().zip(results) {
        let bos = inp.cu_seqlens[n];
        scatter(&mut g.dq, &pg.dq, bos, h, nh, dk);
        scatter(&mut g.dk, &pg.dk, bos, h, nh, dk);
        scatter(&mut g.dv, &pg.dv, bos, h, nh, dv);
        scatter(&mut g.dg, &pg.dg, bos, h, nh, 1);
        scatter(&mut g.dbeta, &pg.dbeta, bos, h, nh, 1);
        let so = (n * nh + h) * kv;
        g.dh0[so..so + kv].copy_from_slice(&pg.dh0);
    }
    g
}

#[cfg(test)]
mod tests {
    use super::super::naive;
    use super::super::naive::tests::{randn, random_case, Case};
    use super::*;
    use crate::tensor::max_rel_err;

    fn fwd_err(c: &Case<f64>) -> (f64, f64) {
        let a = forward(&c.inputs(), c.dims);
        let b = naive::forward(&c.inputs(), c.dims);
        (
            max_rel_err(&a.o, &b.o),
            max_rel_err(&a.final_state, &b.final_state),
        )
    }

    fn bwd_errs(c: &Case<f64>, seed: u64, with_dfinal: bool) -> [(&'static str, f64); 6] {
        let nt = *c.cu.last().unwrap();
        let ns = c.cu.len() - 1;
        let Dims { heads: nh, dk, dv } = c.dims;
        let d_o = randn(seed, nt * nh * dv);
        let d_fin = randn(seed + 1, ns * nh * dk * dv);
        let d_fin = with_dfinal.then_some(&d_fin[..]);
        let a = backward(&c.inputs(), c.dims, &d_o, d_fin);
        let b = naive::backward(&c.inputs(), c.dims, &d_o, d_fin);
        [
            ("dq", max_rel_err(&a.dq, &b.dq)),
            ("dk", max_rel_err(&a.dk, &b.dk)),
            ("dv", max_rel_err(&a.dv, &b.dv)),
            ("dg", max_rel_err(&a.dg, &b.dg)),
            ("dbeta", max_rel_err(&a.dbeta, &b.dbeta)),
            ("dh0", max_rel_err(&a.dh0, &b.dh0)),
        ]
    }

    fn check_bwd(name: &str, c: &Case<f64>, seed: u64, with_dfinal: bool, tol: f64) {
        for (g, e) in bwd_errs(c, seed, with_dfinal) {
            eprintln!("{name}: {g} max_rel_err {e:.3e}");
            assert!(e < tol, "{name}: {g} max_rel_err {e}");
        }
    }

    const DIMS: Dims = Dims {
        heads: 2,
        dk: 8,
        dv: 6,
    };

    #[test]
    fn chunk_forward_matches_naive_single_sequence() {
        let c = random_case(1, &[150], DIMS, true);
        let (eo, es) = fwd_err(&c);
        eprintln!("single T=150: o {eo:.3e}, final_state {es:.3e}");
        assert!(eo < 1e-10 && es < 1e-10, "o {eo}, final {es}");
        let c = random_case(2, &[150], DIMS, false);
        let (eo, es) = fwd_err(&c);
        eprintln!("single T=150, no h0: o {eo:.3e}, final_state {es:.3e}");
        assert!(eo < 1e-10 && es < 1e-10, "o {eo}, final {es}");
    }

    #[test]
    fn chunk_forward_matches_naive_varlen() {
        let c = random_case(3, &[1, 64, 65, 130, 7, 0, 128], DIMS, true);
        let (eo, es) = fwd_err(&c);
        eprintln!("varlen: o {eo:.3e}, final_state {es:.3e}");
        assert!(eo < 1e-10 && es < 1e-10, "o {eo}, final {es}");
    }

    #[test]
    fn chunk_backward_matches_naive_single_sequence() {
        let c = random_case(4, &[150], DIMS, true);
        check_bwd("single T=150 + d_final", &c, 40, true, 1e-10);
        let c = random_case(5, &[100], DIMS, false);
        check_bwd("single T=100, no h0/d_final", &c, 50, false, 1e-10);
    }

    #[test]
    fn chunk_backward_matches_naive_varlen() {
        let c = random_case(6, &[1, 64, 65, 130, 7, 0, 128], DIMS, true);
        check_bwd("varlen + d_final", &c, 60, true, 1e-10);
    }

    #[test]
    fn chunk_handles_extreme_decays() {
        // Per-token decays down to −80 make in-chunk cumulative G reach the thousands: Γ, γ and δ
        // underflow to zero but nothing may overflow or produce NaN. g = 0 (α = 1) rows too.
        let mut c = random_case(11, &[150, 40], DIMS, true);
        let mut rng = crate::tensor::Rng::new(12);
        for x in c.g.iter_mut() {
            let u = rng.uniform();
            if u < 0.15 {
                *x = -80.0 * rng.uniform();
            } else if u < 0.25 {
                *x = 0.0;
            }
        }
        let (eo, es) = fwd_err(&c);
        eprintln!("extreme decays f64: o {eo:.3e}, final_state {es:.3e}");
        assert!(eo < 1e-10 && es < 1e-10, "o {eo}, final {es}");
        check_bwd("extreme decays f64", &c, 110, true, 1e-10);
        let c32: Case<f32> = c.cast();
        let nt = *c.cu.last().unwrap();
        let d_o: Vec<f32> = randn(111, nt * 2 * 6).iter().map(|&x| x as f32).collect();
        let f = forward(&c32.inputs(), DIMS);
        let g = backward(&c32.inputs(), DIMS, &d_o, Some(&f.final_state));
        for x in [
            &f.o,
            &f.final_state,
            &g.dq,
            &g.dk,
            &g.dv,
            &g.dg,
            &g.dbeta,
            &g.dh0,
        ] {
            assert!(x.iter().all(|y| y.is_finite()));
        }
    }

    #[test]
    fn chunk_f32_agrees_with_f64_naive() {
        let dims = Dims {
            heads: 2,
            dk: 32,
            dv: 32,
        };
        let c = random_case(7, &[300, 77, 129], dims, true);
        let c32: Case<f32> = c.cast();
        let nt = *c.cu.last().unwrap();
        let ns = c.cu.len() - 1;
        let d_o = randn(70, nt * 2 * 32);
        let d_fin = randn(71, ns * 2 * 32 * 32);
        let d_o32: Vec<f32> = d_o.iter().map(|&x| x as f32).collect();
        let d_fin32: Vec<f32> = d_fin.iter().map(|&x| x as f32).collect();
        let a = forward(&c32.inputs(), dims);
        let b = naive::forward(&c.inputs(), dims);
        let up = |x: &[f32]| x.iter().map(|&y| y as f64).collect::<Vec<f64>>();
        let eo = max_rel_err(&up(&a.o), &b.o);
        let es = max_rel_err(&up(&a.final_state), &b.final_state);
        eprintln!("f32 forward: o {eo:.3e}, final_state {es:.3e}");
        assert!(eo < 1e-4 && es < 1e-4);
        let ga = backward(&c32.inputs(), dims, &d_o32, Some(&d_fin32));
        let gb = naive::backward(&c.inputs(), dims, &d_o, Some(&d_fin));
        for (name, x, y) in [
            ("dq", &ga.dq, &gb.dq),
            ("dk", &ga.dk, &gb.dk),
            ("dv", &ga.dv, &gb.dv),
            ("dg", &ga.dg, &gb.dg),
            ("dbeta", &ga.dbeta, &gb.dbeta),
            ("dh0", &ga.dh0, &gb.dh0),
        ] {
            let e = max_rel_err(&up(x), y);
            eprintln!("f32 backward: {name} {e:.3e}");
            assert!(e < 1e-4, "{name}: {e}");
        }
    }

    #[test]
    fn chunk_sequences_are_independent() {
        let c = random_case(8, &[70, 90, 5], DIMS, true);
        let mut c2 = c.cast::<f64>();
        let Dims { heads: nh, dk, dv } = DIMS;
        let (b1, e1) = (c.cu[1], c.cu[2]);
        for (x, d) in [(&mut c2.q, dk), (&mut c2.k, dk), (&mut c2.v, dv)] {
            for y in &mut x[b1 * nh * d..e1 * nh * d] {
                *y = -*y * 0.5 + 0.1;
            }
        }
        for y in &mut c2.g[b1 * nh..e1 * nh] {
            *y *= 2.0;
        }
        for y in &mut c2.beta[b1 * nh..e1 * nh] {
            *y = 1.0 - *y;
        }
        let (f1, f2) = (forward(&c.inputs(), DIMS), forward(&c2.inputs(), DIMS));
        let kv = dk * dv;
        assert_eq!(f1.o[..b1 * nh * dv], f2.o[..b1 * nh * dv]);
        assert_eq!(f1.o[e1 * nh * dv..], f2.o[e1 * nh * dv..]);
        assert_ne!(
            f1.o[b1 * nh * dv..e1 * nh * dv],
            f2.o[b1 * nh * dv..e1 * nh * dv]
        );
        assert_eq!(f1.final_state[..nh * kv], f2.final_state[..nh * kv]);
        assert_eq!(f1.final_state[2 * nh * kv..], f2.final_state[2 * nh * kv..]);
        let nt = *c.cu.last().unwrap();
        let d_o = randn(80, nt * nh * dv);
        let (g1, g2) = (
            backward(&c.inputs(), DIMS, &d_o, None),
            backward(&c2.inputs(), DIMS, &d_o, None),
        );
        assert_eq!(g1.dq[..b1 * nh * dk], g2.dq[..b1 * nh * dk]);
        assert_eq!(g1.dk[..b1 * nh * dk], g2.dk[..b1 * nh * dk]);
        assert_eq!(g1.dg[..b1 * nh], g2.dg[..b1 * nh]);
        assert_eq!(g1.dh0[..nh * kv], g2.dh0[..nh * kv]);
        assert_eq!(g1.dv[e1 * nh * dv..], g2.dv[e1 * nh * dv..]);
    }

    #[test]
    fn chunk_is_deterministic() {
        let c = random_case(9, &[200, 3, 64, 90], DIMS, true).cast::<f32>();
        let nt = *c.cu.last().unwrap();
        let d_o: Vec<f32> = randn(90, nt * 2 * 6).iter().map(|&x| x as f32).collect();
        let a = backward(&c.inputs(), DIMS, &d_o, None);
        let b = backward(&c.inputs(), DIMS, &d_o, None);
        assert_eq!(a.dq, b.dq);
        assert_eq!(a.dg, b.dg);
        assert_eq!(forward(&c.inputs(), DIMS).o, forward(&c.inputs(), DIMS).o);
    }

    /// Timing: `cargo test --release --lib chunk_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn chunk_timing() {
        let dims = Dims {
            heads: 2,
            dk: 32,
            dv: 32,
        };
        let c = random_case(10, &[128; 64], dims, true).cast::<f32>();
        let nt = *c.cu.last().unwrap();
        let d_o: Vec<f32> = randn(100, nt * 2 * 32).iter().map(|&x| x as f32).collect();
        for _ in 0..2 {
            let _ = forward(&c.inputs(), dims);
            let _ = backward(&c.inputs(), dims, &d_o, None);
        }
        // Best of several runs: the machine may be shared.
        let best = |f: &dyn Fn()| {
            (0..10)
                .map(|_| {
                    let t0 = std::time::Instant::now();
                    f();
                    t0.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let tf = best(&|| {
            std::hint::black_box(forward(&c.inputs(), dims));
        });
        let tb = best(&|| {
            std::hint::black_box(backward(&c.inputs(), dims, &d_o, None));
        });
        eprintln!(
            "chunk f32 T=8192 (64×128), H=2, K=V=32, {} threads: forward {:.2} ms, backward {:.2} ms",
            rayon::current_num_threads(),
            tf * 1e3,
            tb * 1e3
        );
    }
}
