//! A CPU mirror of the CUDA kernels' arithmetic (test only): the same decomposition into
//! prep / state / output and dvloc / reverse state / dqk / wy, with bf16 (and tf32) rounding at
//! the same points as the kernels, compared with the f64 oracle. It checks the formulas the
//! kernels implement (signs, scales, masks, the dG bookkeeping split over two kernels) and
//! predicts the error levels `selftest` will see; it cannot check the kernels' indexing.

use super::selftest::{random_case, Case};
use crate::ops::delta_rule::{naive, Dims, Inputs, CHUNK};
use crate::tensor::max_rel_err;

/// The kernels' rounding points (bf16 unless noted), each of which can be switched off (kept
/// in f32) to see what it costs: [`with_exact`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// T = (I + M)⁻¹ as the WY backward reads it (dVβ = Tᵀ dṼ, dKβγ = Tᵀ dW).
    T,
    /// T·diag(β e^G), the W product's T operand (bf16 T with [`Fold::None`], [`Fold::U`]).
    TBetaG,
    /// K·β·exp(G), the W product's K operand before beta-t ([`Fold::None`], [`Fold::U`]).
    KBetaG,
    /// W = T·diag(β e^G)·K.
    W,
    /// strictLower(T)·diag(β), the U product's T operand (the diagonal too with [`Fold::Plain`];
    /// bf16 T with [`Fold::None`]).
    TBeta,
    /// V·β, the U product's V operand before beta-t ([`Fold::None`] only).
    VBeta,
    /// U = T·diag(β)·V.
    U,
    /// The chunk-entry state h_c as the matmuls read it.
    H,
    /// Ṽ = U − W h (and its decayed copy for the state update).
    VNew,
    /// The intra-chunk attention s·(QKᵀ ⊙ Γ).
    P,
    /// q·s·exp(G) (the backward state pass; the forward output, fused or `fwd_o`, scales the f32
    /// rows of Q h_c instead).
    QScaled,
    /// The output o.
    O,
    /// dh_c as the dṼ and state-gradient matmuls read it.
    Dh,
    /// dṼ_loc = Pᵀ dO as kernel 4 stores it.
    DvLoc,
    /// k·exp(G_last − G) of the backward state step.
    KDecay,
    /// dṼ.
    DVNew,
    /// s·dP ⊙ Γ, read by dq and dk.
    DP,
    /// dW.
    DW,
    /// dM ⊙ β ⊙ Γ, read by dk.
    DM,
    /// The tf32 inputs of the T-inverse backward (dT and T).
    Tf32,
    /// dq, dv, and dk (its dq/dk part, stored for wy, and the sum), as the kernels store them
    /// (session 19 on; f32 before).
    Grad,
}

/// Where β (and β e^G) enter the `prep` products W = T·diag(βγ)·K and U = T·diag(β)·V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fold {
    /// Before branch beta-t: bf16(T)·bf16(K β γ) and bf16(T)·bf16(V β).
    None,
    /// β folded into all of T: bf16(T diag(βγ))·K and bf16(T diag β)·V, β_i rounded on the
    /// diagonal (not the kernels: kept to show what that rounding costs).
    Plain,
    /// U as the kernels, W as before beta-t.
    U,
    /// The kernels: W = bf16(T diag(βγ))·K and U = bf16(strictLower(T) diag β)·V + diag(β)·V,
    /// the diagonal term added in f32 before U is rounded (K, V exact bf16 inputs).
    Both,
}

/// How the reverse pass hands dh_c to dq/dk/dg, and where ⟨h_c, dh_c⟩ (the state term of
/// dG_last) comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DhStore {
    /// The kernels (session 11 on): dh_c stored in bf16, ⟨h_c, dh_c⟩ from bf16 h_c and the f32
    /// dh_c (the reverse pass reads h_c, the recompute run before it, and forms the dot before
    /// the rounding).
    Kernels,
    /// dh_c stored in f32; ⟨h_c, dh_c⟩ from the bf16 h_c (the kernels of sessions 7–10: kernel 6
    /// formed it from the tiles it loaded for its products).
    F32,
    /// dh_c stored in f32; ⟨h_c, dh_c⟩ from the f32 state (the kernels until session 7: the
    /// recompute read dh_c for it).
    F32Dot,
    /// dh_c stored in bf16 (read by dKi and by ⟨h_c, dh_c⟩), ⟨h_c, dh_c⟩ from the f32 state.
    Bf16,
    /// dh_c stored in bf16, ⟨h_c, dh_c⟩ from bf16 h_c (FLA: the dot in its dq/dk/dg kernel).
    Bf16HBf16,
}

thread_local! {
    /// How dh_c is stored (default: as the kernels do).
    static DH_STORE: std::cell::Cell<DhStore> = const { std::cell::Cell::new(DhStore::Kernels) };
    /// Bit `s as u32` set: stage `s` is kept exact (f32).
    static EXACT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// How `prep` applies β (default: as the kernels do).
    static FOLD: std::cell::Cell<Fold> = const { std::cell::Cell::new(Fold::Both) };
}

/// Runs `f` with `prep`'s β scaling as `fold` (the kernels' is [`Fold::Both`]).
pub(super) fn with_fold<R>(fold: Fold, f: impl FnOnce() -> R) -> R {
    let old = FOLD.with(|c| c.replace(fold));
    let r = f();
    FOLD.with(|c| c.set(old));
    r
}

/// Runs `f` with dh_c stored as `d` (the kernels': [`DhStore::Kernels`]).
pub(super) fn with_dh_store<R>(d: DhStore, f: impl FnOnce() -> R) -> R {
    let old = DH_STORE.with(|c| c.replace(d));
    let r = f();
    DH_STORE.with(|c| c.set(old));
    r
}

/// Runs `f` with the rounding points in `stages` kept in f32.
pub(super) fn with_exact<R>(stages: &[Stage], f: impl FnOnce() -> R) -> R {
    let mask = stages.iter().fold(0u32, |m, &s| m | 1 << s as u32);
    let old = EXACT.with(|e| e.replace(mask));
    let r = f();
    EXACT.with(|e| e.set(old));
    r
}

fn exact(s: Stage) -> bool {
    EXACT.with(|e| e.get() >> s as u32 & 1 == 1)
}

/// bf16 rounding at stage `s` (round to nearest even).
fn bf(s: Stage, x: f32) -> f32 {
    if exact(s) {
        x
    } else {
        bf16r(x)
    }
}

/// bf16 rounding (round to nearest even), at no switchable stage.
fn bf16r(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// cvt.rna.tf32.f32: nearest, ties away from zero, 10 mantissa bits.
fn tf(x: f32) -> f32 {
    if exact(Stage::Tf32) {
        return x;
    }
    let b = x.to_bits();
    f32::from_bits((b.wrapping_add(0x1000)) & !0x1FFF)
}

/// C[m×n] = op(A)·op(B), f32 result (f64 accumulation). A is m×k (or k×m if ta), B is k×n (or
/// n×k if tb), row-major.
#[allow(clippy::too_many_arguments)]
fn mm(a: &[f32], ta: bool, b: &[f32], tb: bool, m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let x = if ta { a[p * m + i] } else { a[i * k + p] };
                let y = if tb { b[j * k + p] } else { b[p * n + j] };
                s += x as f64 * y as f64;
            }
            c[i * n + j] = s as f32;
        }
    }
    c
}

fn rowdot(x: &[f32], y: &[f32], rows: usize, d: usize) -> Vec<f32> {
    (0..rows)
        .map(|i| {
            (0..d)
                .map(|c| x[i * d + c] as f64 * y[i * d + c] as f64)
                .sum::<f64>() as f32
        })
        .collect()
}

struct ChunkFwd {
    g: Vec<f32>,    // G
    t: Vec<f32>,    // T f32 (l×l)
    w: Vec<f32>,    // bf16 values
    hb: Vec<f32>,   // h_c bf16 (K×V)
    hf: Vec<f32>,   // h_c f32
    vnew: Vec<f32>, // Ṽ bf16 (l×V)
}

/// Kernel `prep` for one chunk: (G, T, W, U).
fn prep(
    k: &[f32],
    v: &[f32],
    g: &[f32],
    beta: &[f32],
    dk: usize,
    dv: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let l = g.len();
    let mut gc = vec![0f32; l];
    let mut acc = 0f32;
    for i in 0..l {
        acc += g[i];
        gc[i] = acc;
    }
    let a = mm(k, false, k, true, l, dk, l);
    let mut m = vec![0f32; l * l];
    for i in 0..l {
        for j in 0..i {
            m[i * l + j] = beta[i] * a[i * l + j] * (gc[i] - gc[j]).exp();
        }
    }
    let mut t = vec![0f32; l * l];
    for c in 0..l {
        for i in 0..l {
            let mut s = if i == c { 1f32 } else { 0f32 };
            for j in 0..i {
                s -= m[i * l + j] * t[j * l + c];
            }
            t[i * l + c] = s;
        }
    }
    // T with its columns scaled in f32 (T_ic·f_c, as the kernel's T pass), then rounded at `s`.
    let tcols = |f: &dyn Fn(usize) -> f32, s: Stage| -> Vec<f32> {
        (0..l * l).map(|e| bf(s, t[e] * f(e % l))).collect()
    };
    let fold = FOLD.with(|c| c.get());
    let w = if matches!(fold, Fold::Both | Fold::Plain) {
        let tw = tcols(&|c| beta[c] * gc[c].exp(), Stage::TBetaG);
        mm(&tw, false, k, false, l, l, dk)
    } else {
        let tb: Vec<f32> = t.iter().map(|&x| bf(Stage::TBetaG, x)).collect();
        let kbg: Vec<f32> = (0..l * dk)
            .map(|e| {
                let i = e / dk;
                bf(Stage::KBetaG, k[e] * beta[i] * gc[i].exp())
            })
            .collect();
        mm(&tb, false, &kbg, false, l, l, dk)
    };
    let w: Vec<f32> = w.into_iter().map(|x| bf(Stage::W, x)).collect();
    let u = match fold {
        Fold::None => {
            let tb: Vec<f32> = t.iter().map(|&x| bf(Stage::TBeta, x)).collect();
            let vb: Vec<f32> = (0..l * dv)
                .map(|e| bf(Stage::VBeta, v[e] * beta[e / dv]))
                .collect();
            mm(&tb, false, &vb, false, l, l, dv)
        }
        Fold::Plain => {
            let tv = tcols(&|c| beta[c], Stage::TBeta);
            mm(&tv, false, v, false, l, l, dv)
        }
        Fold::U | Fold::Both => {
            // tb has a zero diagonal; the epilogue adds β_i v_i to the f32 accumulator.
            let mut tv = tcols(&|c| beta[c], Stage::TBeta);
            for i in 0..l {
                tv[i * l + i] = 0.0;
            }
            let mut u = mm(&tv, false, v, false, l, l, dv);
            for (e, x) in u.iter_mut().enumerate() {
                *x += beta[e / dv] * v[e];
            }
            u
        }
    };
    let u: Vec<f32> = u.into_iter().map(|x| bf(Stage::U, x)).collect();
    (gc, t, w, u)
}

/// pb = bf16(s·(QKᵀ ⊙ Γ) on j ≤ i), as `intra_attn`.
fn attn(q: &[f32], k: &[f32], gc: &[f32], scale: f32, dk: usize) -> Vec<f32> {
    let l = gc.len();
    let p = mm(q, false, k, true, l, dk, l);
    let mut pb = vec![0f32; l * l];
    for i in 0..l {
        for j in 0..=i {
            pb[i * l + j] = bf(Stage::P, scale * p[i * l + j] * (gc[i] - gc[j]).exp());
        }
    }
    pb
}

/// Forward of one (sequence, head) slice: per-chunk intermediates, o, final state.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn forward_pair(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    beta: &[f32],
    h0: Option<&[f32]>,
    scale: f32,
    dk: usize,
    dv: usize,
) -> (Vec<ChunkFwd>, Vec<f32>, Vec<f32>) {
    let len = g.len();
    let mut s: Vec<f32> = h0.map_or(vec![0f32; dk * dv], |x| x.to_vec());
    let mut o = vec![0f32; len * dv];
    let mut out = Vec::new();
    let mut r0 = 0;
    while r0 < len {
        let l = (len - r0).min(CHUNK);
        let (qc, kc, vc) = (
            &q[r0 * dk..(r0 + l) * dk],
            &k[r0 * dk..(r0 + l) * dk],
            &v[r0 * dv..(r0 + l) * dv],
        );
        let (gcn, bc) = (&g[r0..r0 + l], &beta[r0..r0 + l]);
        let (gc, t, w, u) = prep(kc, vc, gcn, bc, dk, dv);
        // state_fwd
        let hf = s.clone();
        let hb: Vec<f32> = s.iter().map(|&x| bf(Stage::H, x)).collect();
        let ws = mm(&w, false, &hb, false, l, dk, dv);
        let glast = gc[l - 1];
        let mut vnew = vec![0f32; l * dv];
        let mut vnb = vec![0f32; l * dv];
        for i in 0..l {
            let d = (glast - gc[i]).exp();
            for c in 0..dv {
                let x = u[i * dv + c] - ws[i * dv + c];
                vnew[i * dv + c] = bf(Stage::VNew, x);
                vnb[i * dv + c] = bf(Stage::VNew, d * x);
            }
        }
        let upd = mm(kc, true, &vnb, false, dk, l, dv);
        let gl = glast.exp();
        for (x, y) in s.iter_mut().zip(&upd) {
            *x = gl * *x + y;
        }
        // The output (state_fwd v5 and fwd_o v5): Q h_c with bf16 Q and h_c, each row then
        // scaled by s γ_i in f32, plus P Ṽ.
        let pb = attn(qc, kc, &gc, scale, dk);
        let o1 = mm(qc, false, &hb, false, l, dk, dv);
        let o2 = mm(&pb, false, &vnew, false, l, l, dv);
        for e in 0..l * dv {
            let f = scale * gc[e / dv].exp();
            o[r0 * dv + e] = bf(Stage::O, o1[e] * f + o2[e]);
        }
        out.push(ChunkFwd {
            g: gc,
            t,
            w,
            hb,
            hf,
            vnew,
        });
        r0 += l;
    }
    (out, o, s)
}

struct PairGrads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dg: Vec<f32>,
    dbeta: Vec<f32>,
    dh0: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn backward_pair(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    beta: &[f32],
    h0: Option<&[f32]>,
    d_o: &[f32],
    d_fin: Option<&[f32]>,
    scale: f32,
    dk: usize,
    dv: usize,
) -> PairGrads {
    let len = g.len();
    let (ch, _, _) = forward_pair(q, k, v, g, beta, h0, scale, dk, dv);
    let nc = ch.len();
    let mut gr = PairGrads {
        dq: vec![0.0; len * dk],
        dk: vec![0.0; len * dk],
        dv: vec![0.0; len * dv],
        dg: vec![0.0; len],
        dbeta: vec![0.0; len],
        dh0: vec![],
    };
    let mut ds: Vec<f32> = d_fin.map_or(vec![0f32; dk * dv], |x| x.to_vec());
    let mut dh_all = vec![Vec::new(); nc];
    // The f32 dh_c, for the ⟨h_c, dh_c⟩ of `DhStore::Kernels`.
    let mut dhf_all = vec![Vec::new(); nc];
    let mut dvn_all = vec![Vec::new(); nc];
    // state_bwd (with dvloc)
    for c in (0..nc).rev() {
        let r0 = c * CHUNK;
        let l = ch[c].g.len();
        let (qc, kc) = (&q[r0 * dk..(r0 + l) * dk], &k[r0 * dk..(r0 + l) * dk]);
        let doc = &d_o[r0 * dv..(r0 + l) * dv];
        let gc = &ch[c].g;
        let dsb: Vec<f32> = ds.iter().map(|&x| bf(Stage::Dh, x)).collect();
        let dsf = ds.clone();
        let pb = attn(qc, kc, gc, scale, dk);
        let dvl: Vec<f32> = mm(&pb, true, doc, false, l, l, dv)
            .iter()
            .map(|&x| bf(Stage::DvLoc, x))
            .collect();
        let glast = gc[l - 1];
        let qsc: Vec<f32> = (0..l * dk)
            .map(|e| bf(Stage::QScaled, qc[e] * (scale * gc[e / dk].exp())))
            .collect();
        let wneg: Vec<f32> = ch[c].w.iter().map(|&x| -x).collect();
        let kd: Vec<f32> = (0..l * dk)
            .map(|e| bf(Stage::KDecay, kc[e] * (glast - gc[e / dk]).exp()))
            .collect();
        let t1 = mm(&kd, false, &dsb, false, l, dk, dv);
        let dvb: Vec<f32> = dvl
            .iter()
            .zip(&t1)
            .map(|(a, b)| bf(Stage::DVNew, a + b))
            .collect();
        let gl = glast.exp();
        let a1 = mm(&qsc, true, doc, false, dk, l, dv);
        let a2 = mm(&wneg, true, &dvb, false, dk, l, dv);
        for e in 0..dk * dv {
            ds[e] = gl * ds[e] + a1[e] + a2[e];
        }
        // dh_c = dS leaving the chunk, as the reverse pass stores it.
        dh_all[c] = match DH_STORE.with(|d| d.get()) {
            DhStore::F32 | DhStore::F32Dot => dsf.clone(),
            DhStore::Kernels | DhStore::Bf16 | DhStore::Bf16HBf16 => {
                dsf.iter().map(|&x| bf16r(x)).collect()
            }
        };
        dhf_all[c] = dsf;
        dvn_all[c] = dvb;
    }
    gr.dh0 = ds;
    for c in 0..nc {
        let r0 = c * CHUNK;
        let l = ch[c].g.len();
        let (qc, kc, vc) = (
            &q[r0 * dk..(r0 + l) * dk],
            &k[r0 * dk..(r0 + l) * dk],
            &v[r0 * dv..(r0 + l) * dv],
        );
        let bc = &beta[r0..r0 + l];
        let doc = &d_o[r0 * dv..(r0 + l) * dv];
        let gc = &ch[c].g;
        let (hb, dh, vn, dvb) = (&ch[c].hb, &dh_all[c], &ch[c].vnew, &dvn_all[c]);
        let gam: Vec<f32> = gc.iter().map(|x| x.exp()).collect();
        let dec: Vec<f32> = gc.iter().map(|x| (gc[l - 1] - x).exp()).collect();
        let gmat = |i: usize, j: usize| (gc[i] - gc[j]).exp();
        // dqk
        let p0 = mm(qc, false, kc, true, l, dk, l);
        let mut pm = vec![0f32; l * l];
        for i in 0..l {
            for j in 0..=i {
                pm[i * l + j] = p0[i * l + j] * gmat(i, j);
            }
        }
        let dp = mm(doc, false, vn, true, l, dv, l);
        let dq1 = mm(doc, false, hb, true, l, dv, dk);
        let dki = mm(vn, false, dh, true, l, dv, dk);
        // ⟨h_c, dh_c⟩: the kernels' from bf16 h_c and the f32 dh_c (in the reverse pass).
        let (hdot, dhdot) = match DH_STORE.with(|d| d.get()) {
            DhStore::F32 | DhStore::Bf16HBf16 => (hb, dh),
            DhStore::F32Dot | DhStore::Bf16 => (&ch[c].hf, dh),
            DhStore::Kernels => (hb, &dhf_all[c]),
        };
        let sdot: f32 = hdot
            .iter()
            .zip(dhdot)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>() as f32;
        let mut pb2 = vec![0f32; l * l];
        let mut rsum = vec![0f32; l];
        let mut csum = vec![0f32; l];
        for i in 0..l {
            for j in 0..=i {
                let x = scale * dp[i * l + j];
                pb2[i * l + j] = bf(Stage::DP, x * gmat(i, j));
                rsum[i] += x * pm[i * l + j];
                csum[j] += x * pm[i * l + j];
            }
        }
        let x: Vec<f32> = (0..l * dk).map(|e| dq1[e] * scale * gam[e / dk]).collect();
        let qdot = rowdot(&x, qc, l, dk);
        let t = mm(&pb2, false, kc, false, l, l, dk);
        for e in 0..l * dk {
            gr.dq[r0 * dk + e] = bf(Stage::Grad, x[e] + t[e]);
        }
        let x2: Vec<f32> = (0..l * dk).map(|e| dki[e] * dec[e / dk]).collect();
        let kdot = rowdot(&x2, kc, l, dk);
        let t = mm(&pb2, true, qc, false, l, l, dk);
        let dkp: Vec<f32> = (0..l * dk).map(|e| bf(Stage::Grad, x2[e] + t[e])).collect();
        let mut dgp: Vec<f32> = (0..l)
            .map(|i| rsum[i] - csum[i] + qdot[i] - kdot[i])
            .collect();
        dgp[l - 1] += kdot.iter().sum::<f32>() + gam[l - 1] * sdot;
        // wy
        let tf_ = &ch[c].t;
        let tb: Vec<f32> = tf_.iter().map(|&x| bf(Stage::T, x)).collect();
        let bg: Vec<f32> = (0..l).map(|i| bc[i] * gam[i]).collect();
        let dwp = mm(dvb, false, hb, true, l, dv, dk);
        let dtv = mm(dvb, false, vc, true, l, dv, l);
        let dvbeta = mm(&tb, true, dvb, false, l, l, dv);
        for e in 0..l * dv {
            gr.dv[r0 * dv + e] = bf(Stage::Grad, bc[e / dv] * dvbeta[e]);
        }
        let dbv = rowdot(&dvbeta, vc, l, dv);
        let dwb: Vec<f32> = dwp.iter().map(|&x| bf(Stage::DW, -x)).collect();
        let t2 = mm(&dwb, false, kc, true, l, dk, l);
        let mut dt = vec![0f32; l * l];
        for i in 0..l {
            for j in 0..i {
                dt[i * l + j] = dtv[i * l + j] * bc[j] + t2[i * l + j] * bg[j];
            }
        }
        let dkbg = mm(&tb, true, &dwb, false, l, l, dk);
        let z = rowdot(&dkbg, kc, l, dk);
        let xk: Vec<f32> = (0..l * dk).map(|e| dkp[e] + bg[e / dk] * dkbg[e]).collect();
        let dtt: Vec<f32> = dt.iter().map(|&x| tf(x)).collect();
        let tt: Vec<f32> = tf_.iter().map(|&x| tf(x)).collect();
        let tmp = mm(&dtt, false, &tt, true, l, l, l);
        let tmpt: Vec<f32> = tmp.iter().map(|&x| tf(x)).collect();
        let dt2 = mm(&tt, true, &tmpt, false, l, l, l);
        let akk = mm(kc, false, kc, true, l, dk, l);
        let mut pbm = vec![0f32; l * l];
        let mut rs = vec![0f32; l];
        let mut cs = vec![0f32; l];
        let mut dbm = vec![0f32; l];
        for i in 0..l {
            for j in 0..i {
                let dm = -dt2[i * l + j];
                let ag = akk[i * l + j] * gmat(i, j);
                let xx = dm * bc[i] * ag;
                rs[i] += xx;
                cs[j] += xx;
                dbm[i] += dm * ag;
                pbm[i * l + j] = bf(Stage::DM, dm * bc[i] * gmat(i, j));
            }
        }
        let a1 = mm(&pbm, false, kc, false, l, l, dk);
        let a2 = mm(&pbm, true, kc, false, l, l, dk);
        for e in 0..l * dk {
            gr.dk[r0 * dk + e] = bf(Stage::Grad, xk[e] + a1[e] + a2[e]);
        }
        let mut acc = 0f32;
        for i in (0..l).rev() {
            gr.dbeta[r0 + i] = dbv[i] + gam[i] * z[i] + dbm[i];
            acc += dgp[i] + bg[i] * z[i] + rs[i] - cs[i];
            gr.dg[r0 + i] = acc;
        }
    }
    gr
}

fn gather(src: &[f32], bos: usize, len: usize, h: usize, nh: usize, d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(len * d);
    for t in bos..bos + len {
        let o = (t * nh + h) * d;
        out.extend_from_slice(&src[o..o + d]);
    }
    out
}

fn scatter(dst: &mut [f32], rows: &[f32], bos: usize, h: usize, nh: usize, d: usize) {
    for (i, row) in rows.chunks_exact(d).enumerate() {
        let o = ((bos + i) * nh + h) * d;
        dst[o..o + d].copy_from_slice(row);
    }
}

fn up(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Every output of the mirror on a case, in the oracle's layouts.
struct MirrorOut {
    o: Vec<f32>,
    final_state: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dg: Vec<f32>,
    dbeta: Vec<f32>,
    dh0: Vec<f32>,
}

/// The mirror's forward and backward over every (sequence, head) slice of a case.
fn run_mirror(c: &Case) -> MirrorOut {
    let Dims { heads: nh, dk, dv } = c.dims;
    let (t, n) = (*c.cu.last().unwrap(), c.cu.len() - 1);
    let kv = dk * dv;
    let mut m = MirrorOut {
        o: vec![0f32; t * nh * dv],
        final_state: vec![0f32; n * nh * kv],
        dq: vec![0f32; t * nh * dk],
        dk: vec![0f32; t * nh * dk],
        dv: vec![0f32; t * nh * dv],
        dg: vec![0f32; t * nh],
        dbeta: vec![0f32; t * nh],
        dh0: vec![0f32; n * nh * kv],
    };
    for s in 0..n {
        let (bos, len) = (c.cu[s], c.cu[s + 1] - c.cu[s]);
        for h in 0..nh {
            let q = gather(&c.q, bos, len, h, nh, dk);
            let k = gather(&c.k, bos, len, h, nh, dk);
            let v = gather(&c.v, bos, len, h, nh, dv);
            let g = gather(&c.g, bos, len, h, nh, 1);
            let b = gather(&c.beta, bos, len, h, nh, 1);
            let d_o = gather(&c.d_o, bos, len, h, nh, dv);
            let so = (s * nh + h) * kv;
            let h0 = c.h0.as_ref().map(|x| &x[so..so + kv]);
            let dfin = c.d_final.as_ref().map(|x| &x[so..so + kv]);
            let (_, po, ps) = forward_pair(&q, &k, &v, &g, &b, h0, c.scale, dk, dv);
            scatter(&mut m.o, &po, bos, h, nh, dv);
            m.final_state[so..so + kv].copy_from_slice(&ps);
            let gr = backward_pair(&q, &k, &v, &g, &b, h0, &d_o, dfin, c.scale, dk, dv);
            scatter(&mut m.dq, &gr.dq, bos, h, nh, dk);
            scatter(&mut m.dk, &gr.dk, bos, h, nh, dk);
            scatter(&mut m.dv, &gr.dv, bos, h, nh, dv);
            scatter(&mut m.dg, &gr.dg, bos, h, nh, 1);
            scatter(&mut m.dbeta, &gr.dbeta, bos, h, nh, 1);
            m.dh0[so..so + kv].copy_from_slice(&gr.dh0);
        }
    }
    m
}

/// (name, mirror error vs f64 oracle) for every output of a case.
fn errors(c: &Case) -> Vec<(&'static str, f64)> {
    let MirrorOut {
        o,
        final_state: fs,
        dq,
        dk: dk_,
        dv: dv_,
        dg,
        dbeta: db,
        dh0,
    } = run_mirror(c);
    let (q, k, v, g, beta) = (up(&c.q), up(&c.k), up(&c.v), up(&c.g), up(&c.beta));
    let h0 = c.h0.as_ref().map(|x| up(x));
    let inp = Inputs {
        q: &q,
        k: &k,
        v: &v,
        g: &g,
        beta: &beta,
        scale: c.scale as f64,
        initial_state: h0.as_deref(),
        cu_seqlens: &c.cu,
    };
    let fref = naive::forward(&inp, c.dims);
    let d_o = up(&c.d_o);
    let d_fin = c.d_final.as_ref().map(|x| up(x));
    let gref = naive::backward(&inp, c.dims, &d_o, d_fin.as_deref());
    vec![
        ("o", max_rel_err(&up(&o), &fref.o)),
        ("final_state", max_rel_err(&up(&fs), &fref.final_state)),
        ("dq", max_rel_err(&up(&dq), &gref.dq)),
        ("dk", max_rel_err(&up(&dk_), &gref.dk)),
        ("dv", max_rel_err(&up(&dv_), &gref.dv)),
        ("dg", max_rel_err(&up(&dg), &gref.dg)),
        ("dbeta", max_rel_err(&up(&db), &gref.dbeta)),
        ("dh0", max_rel_err(&up(&dh0), &gref.dh0)),
    ]
}

/// Selftest-like cases: (sequence lengths, dims, with h0, with d_final).
fn selftest_like_cases() -> Vec<(Vec<usize>, Dims, bool, bool)> {
    let d = |heads, dk, dv| Dims { heads, dk, dv };
    vec![
        (vec![150], d(2, 64, 64), true, true),
        (vec![1, 63, 64, 65, 200, 130], d(1, 128, 128), true, true),
        (vec![100, 37], d(1, 64, 128), true, true),
        (vec![100, 37], d(1, 128, 128), false, false),
        (vec![100, 37], d(1, 256, 512), true, true),
        (vec![300], d(2, 128, 128), false, false),
    ]
}

/// GDN_MIRROR_SEEDS, or `default`: the seeds each case runs with.
fn mirror_seeds(default: u64) -> u64 {
    std::env::var("GDN_MIRROR_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn mirror_of_cuda_kernels_matches_oracle_within_selftest_tolerances() {
    let mut worst: f64 = 0.0;
    let seeds = mirror_seeds(2);
    for (i, (lens, dims, h0, dfin)) in selftest_like_cases().into_iter().enumerate() {
        for sd in 0..seeds {
            let c = random_case(1000 + i as u64 + 7919 * sd, &lens, dims, h0, dfin);
            for (name, e) in errors(&c) {
                let tol = super::selftest::tolerance(name);
                eprintln!("mirror {:<40} {name:<12} {e:.3e} (tol {tol:.0e})", c.label);
                worst = worst.max(e / tol);
                assert!(e < tol, "{}: {name} {e}", c.label);
            }
        }
    }
    eprintln!("worst error / tolerance: {worst:.3}");
}

/// The selftest-shaped cases' worst error per output over `seeds` seeds, each case run by `run`.
fn worst_errors(seeds: u64, run: impl Fn(&Case) -> Vec<(&'static str, f64)>) -> String {
    let mut worst: Vec<(&str, f64)> = vec![];
    for (i, (lens, dims, h0, dfin)) in selftest_like_cases().iter().enumerate() {
        for sd in 0..seeds {
            let c = random_case(1000 + i as u64 + 7919 * sd, lens, *dims, *h0, *dfin);
            for (j, (name, e)) in run(&c).into_iter().enumerate() {
                if worst.len() <= j {
                    worst.push((name, 0.0));
                }
                worst[j].1 = worst[j].1.max(e);
            }
        }
    }
    let row: Vec<String> = worst.iter().map(|(n, e)| format!("{n} {e:.2e}")).collect();
    row.join(", ")
}

/// The selftest-shaped cases' worst error per output (over GDN_MIRROR_SEEDS seeds, default 8)
/// with dh_c stored as each [`DhStore`] says: what a bf16 dh would cost.
/// Run: `cargo test --release dh_store_precision -- --ignored --nocapture`.
#[test]
#[ignore]
fn dh_store_precision() {
    let seeds = mirror_seeds(8);
    for mode in [
        DhStore::Kernels,
        DhStore::F32,
        DhStore::F32Dot,
        DhStore::Bf16,
        DhStore::Bf16HBf16,
    ] {
        let row = worst_errors(seeds, |c| with_dh_store(mode, || errors(c)));
        eprintln!("{mode:?}: {row}");
    }
}

/// What storing dq, dk (and dq/dk's part of dk) and dv in bf16 costs: the selftest-shaped
/// cases' worst error per output (over GDN_MIRROR_SEEDS seeds, default 8), as the kernels store
/// them and with them kept in f32 (the kernels before session 19).
/// Run: `cargo test --release grad_store_precision -- --ignored --nocapture`.
#[test]
#[ignore]
fn grad_store_precision() {
    let seeds = mirror_seeds(8);
    eprintln!("bf16 (kernels): {}", worst_errors(seeds, errors));
    let row = worst_errors(seeds, |c| with_exact(&[Stage::Grad], || errors(c)));
    eprintln!("f32: {row}");
}

// ---------------------------------------------------------------------------------------------
// Model-level precision of dg, the gradient of the log decay (and of A_log, dt_bias through it):
// the delta-rule calls of `cuda::model_selftest`'s CPU reference, replayed with the inputs
// rounded as the GPU model holds them and with the kernels' rounding points switched on and off.

use crate::cuda::model_selftest::{grad_noise, test_batch, ModelVariant};
use crate::model::mixer::capture::{self, RuleIo};
use crate::tensor::Rng;

/// Which delta-rule inputs are rounded to bf16, as the GPU model stores them (q, k, v, d_o are
/// bf16 activations; g and β are computed in f32 from the bf16 projections a and b).
#[derive(Clone, Copy)]
struct InputRounding {
    q: bool,
    k: bool,
    v: bool,
    d_o: bool,
    gates: bool,
}

const ALL_INPUTS: InputRounding = InputRounding {
    q: true,
    k: true,
    v: true,
    d_o: true,
    gates: true,
};
const NO_INPUTS: InputRounding = InputRounding {
    q: false,
    k: false,
    v: false,
    d_o: false,
    gates: false,
};

/// The model self-test's delta-rule calls for `seed` (both configurations, 2 layers each),
/// from its f64 CPU reference, each with the self-test's probe of the bf16 noise
/// ([`grad_noise`]) of its layer's (A_log, dt_bias) gradients.
fn selftest_rule_calls(seed: u64) -> Vec<(RuleIo, [f64; 2])> {
    let mut rng = Rng::new(seed);
    let mut calls = vec![];
    for (tie, b_bias) in [(false, false), (true, true)] {
        let v = ModelVariant {
            tie,
            b_bias,
            ..Default::default()
        };
        let b = test_batch(&mut rng, v).unwrap();
        let model = &b.model;
        let p64: Vec<f64> = b.params.iter().map(|&v| v as f64).collect();
        let acts = model.forward(&p64, &b.tokens, &b.cu).unwrap();
        let (_, count) = model.loss(&acts, &b.targets);
        let mut grads = vec![0.0; p64.len()];
        capture::start();
        model.backward(&p64, acts, &b.targets, count, 1.0, &mut grads);
        let layer_calls = capture::take();
        let noise = grad_noise(&b, &grads, &mut Rng::new(seed ^ 0x9e37)).unwrap();
        let of = |name: String| {
            let i = model.layout.params.iter().position(|p| p.name == name);
            noise[i.unwrap()]
        };
        let layers = layer_calls.len();
        for (j, io) in layer_calls.into_iter().enumerate() {
            // Backward order: the last layer first.
            let l = layers - 1 - j;
            let n = [
                of(format!("model.layers.{l}.attn.A_log")),
                of(format!("model.layers.{l}.attn.dt_bias")),
            ];
            calls.push((io, n));
        }
    }
    calls
}

/// A call as the kernels receive it: (case, the gate input a and the log decay g it implies).
fn case_of(io: &RuleIo, r: InputRounding) -> (Case, Vec<f64>, Vec<f64>) {
    let h = io.a_log.len();
    let dk = io.q.len() / io.g.len();
    let dv = io.v.len() / io.g.len();
    let cast = |x: &[f64], round: bool| -> Vec<f32> {
        x.iter()
            .map(|&v| {
                if round {
                    half::bf16::from_f64(v).to_f32()
                } else {
                    v as f32
                }
            })
            .collect()
    };
    let bf = |v: f64| {
        if r.gates {
            half::bf16::from_f64(v).to_f64()
        } else {
            v
        }
    };
    let a: Vec<f64> = io.a.iter().map(|&v| bf(v)).collect();
    let g: Vec<f64> = a
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let z = x + io.dt_bias[i % h];
            let sp = if z > 20.0 { z } else { z.exp().ln_1p() };
            (-io.a_log[i % h].exp() * sp) as f32 as f64
        })
        .collect();
    // b = logit(β), rounded as the b_proj output, then β = σ(b) in f32.
    let beta: Vec<f32> = io
        .beta
        .iter()
        .map(|&p| (1.0 / (1.0 + (-bf((p / (1.0 - p)).ln())).exp())) as f32)
        .collect();
    let case = Case {
        dims: Dims { heads: h, dk, dv },
        group: 1,
        cu: io.cu_seqlens.clone(),
        q: cast(&io.q, r.q),
        k: cast(&io.k, r.k),
        v: cast(&io.v, r.v),
        g: g.iter().map(|&x| x as f32).collect(),
        beta,
        scale: io.scale as f32,
        h0: None,
        d_o: cast(&io.d_o, r.d_o),
        d_final: None,
        label: String::new(),
    };
    (case, a, g)
}

/// (dA_log, ddt_bias) [H] from dg, as `nn::gates_bwd` accumulates them: ∂g/∂A_log = g,
/// ∂g/∂dt_bias = −e^{A_log}·σ(a + dt_bias).
fn gate_param_grads(io: &RuleIo, a: &[f64], g: &[f64], dg: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let h = io.a_log.len();
    let (mut da, mut ddt) = (vec![0.0; h], vec![0.0; h]);
    for i in 0..dg.len() {
        let j = i % h;
        let sig = 1.0 / (1.0 + (-(a[i] + io.dt_bias[j])).exp());
        da[j] += dg[i] * g[i];
        ddt[j] -= dg[i] * io.a_log[j].exp() * sig;
    }
    (da, ddt)
}

/// One way of computing a call's dg: the exact-arithmetic oracle on `inputs` when
/// `exact_arith`, else the mirror on `inputs` with `prep`'s β applied as `fold` and `stages` kept
/// in f32; compared with the oracle on `reference` inputs (NO_INPUTS: the whole error against
/// the unrounded problem; the same as `inputs`: the kernels' own arithmetic only).
#[derive(Clone)]
struct Variant {
    name: String,
    inputs: InputRounding,
    exact_arith: bool,
    fold: Fold,
    dh: DhStore,
    stages: Vec<Stage>,
    reference: InputRounding,
}

impl Variant {
    fn new(name: &str, inputs: InputRounding, exact_arith: bool) -> Self {
        Variant {
            name: name.into(),
            inputs,
            exact_arith,
            fold: Fold::Both,
            dh: DhStore::Kernels,
            stages: vec![],
            reference: NO_INPUTS,
        }
    }
    fn fold(mut self, f: Fold) -> Self {
        self.fold = f;
        self
    }
    fn dh(mut self, d: DhStore) -> Self {
        self.dh = d;
        self
    }
    fn exact(mut self, stages: Vec<Stage>) -> Self {
        self.stages = stages;
        self
    }
    fn against(mut self, r: InputRounding) -> Self {
        self.reference = r;
        self
    }
}

/// max_rel_err of (dg, dA_log, ddt_bias) for one call, computed as `v` says.
fn dg_errors(io: &RuleIo, v: &Variant) -> [f64; 3] {
    let oracle = |c: &Case| {
        let (q, k, v, g, beta) = (up(&c.q), up(&c.k), up(&c.v), up(&c.g), up(&c.beta));
        let inp = Inputs {
            q: &q,
            k: &k,
            v: &v,
            g: &g,
            beta: &beta,
            scale: c.scale as f64,
            initial_state: None,
            cu_seqlens: &c.cu,
        };
        naive::backward(&inp, c.dims, &up(&c.d_o), None).dg
    };
    let (c0, a0, g0) = case_of(io, v.reference);
    let dg_ref = oracle(&c0);
    let (c, a, g) = case_of(io, v.inputs);
    let dg = if v.exact_arith {
        oracle(&c)
    } else {
        let run = || with_exact(&v.stages, || run_mirror(&c));
        up(&with_dh_store(v.dh, || with_fold(v.fold, run)).dg)
    };
    let (da_ref, ddt_ref) = gate_param_grads(io, &a0, &g0, &dg_ref);
    let (da, ddt) = gate_param_grads(io, &a, &g, &dg);
    [
        max_rel_err(&dg, &dg_ref),
        max_rel_err(&da, &da_ref),
        max_rel_err(&ddt, &ddt_ref),
    ]
}

/// [max, mean, median] of a non-empty list.
fn stats(x: impl Iterator<Item = f64>) -> [f64; 3] {
    let mut v: Vec<f64> = x.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    };
    [v[n - 1], v.iter().sum::<f64>() / n as f64, med]
}

/// The kernels' rounding points ([`Fold::Both`]; KBetaG and VBeta exist only before beta-t).
const STAGES: [Stage; 19] = [
    Stage::T,
    Stage::TBetaG,
    Stage::W,
    Stage::TBeta,
    Stage::U,
    Stage::H,
    Stage::VNew,
    Stage::P,
    Stage::QScaled,
    Stage::O,
    Stage::Dh,
    Stage::DvLoc,
    Stage::KDecay,
    Stage::DVNew,
    Stage::DP,
    Stage::DW,
    Stage::DM,
    Stage::Tf32,
    Stage::Grad,
];

/// Where the dg error of the model self-test comes from. For the self-test's problem (both
/// configurations, every layer, GDN_DG_SEEDS seeds, default 4) it prints the max and mean over
/// calls of max_rel_err(dg), (dA_log), (dt_bias) against the f64 oracle on unrounded inputs, for:
/// exact arithmetic on bf16-rounded inputs (all, or one input at a time: what any bf16
/// implementation sees), the mirror of the kernels (f32 or bf16 inputs), the mirror with one
/// rounding point kept in f32, and the mirror with only one rounding point on (f32 inputs);
/// the mirror on bf16 inputs also as the kernels were before branch beta-t (β not folded into T:
/// V·β and K·β·e^G rounded), with β folded into U's T only, and with β folded into T's
/// diagonal too; and the mirror's own error (against the oracle on the same bf16 inputs).
/// Run: `cargo test --release dg_precision_breakdown -- --ignored --nocapture`.
#[test]
#[ignore]
fn dg_precision_breakdown() {
    let seeds: u64 = std::env::var("GDN_DG_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let calls: Vec<RuleIo> = (0..seeds)
        .flat_map(selftest_rule_calls)
        .map(|(io, _)| io)
        .collect();
    let only = |q, k, v, d_o, gates| InputRounding {
        q,
        k,
        v,
        d_o,
        gates,
    };
    let ex = |name: &str, r| Variant::new(name, r, true);
    let mi = |name: &str, r, fold| Variant::new(name, r, false).fold(fold);
    let own = |name: &str, fold| mi(name, ALL_INPUTS, fold).against(ALL_INPUTS);
    let mut rows = vec![
        ex("exact, bf16 inputs (all)", ALL_INPUTS),
        ex("exact, bf16 q", only(true, false, false, false, false)),
        ex("exact, bf16 k", only(false, true, false, false, false)),
        ex("exact, bf16 v", only(false, false, true, false, false)),
        ex("exact, bf16 d_o", only(false, false, false, true, false)),
        ex(
            "exact, bf16 a, b (gates)",
            only(false, false, false, false, true),
        ),
        mi("mirror, f32 inputs", NO_INPUTS, Fold::Both),
        mi("mirror, f32 inputs, before beta-t", NO_INPUTS, Fold::None),
        mi("mirror, bf16 inputs (GPU)", ALL_INPUTS, Fold::Both),
        mi("mirror, bf16 inputs, before beta-t", ALL_INPUTS, Fold::None),
        mi(
            "mirror, bf16 inputs, β folded into U only",
            ALL_INPUTS,
            Fold::U,
        ),
        mi(
            "mirror, bf16 inputs, β also on T's diagonal",
            ALL_INPUTS,
            Fold::Plain,
        ),
        own("own error (vs oracle on the same bf16 inputs)", Fold::Both),
        own("own error, before beta-t", Fold::None),
        own("own error, β folded into U only", Fold::U),
        own("own error, β also on T's diagonal", Fold::Plain),
        mi(
            "mirror, bf16 inputs, dh_c stored f32",
            ALL_INPUTS,
            Fold::Both,
        )
        .dh(DhStore::F32),
        mi(
            "mirror, bf16 inputs, dh_c f32, <h,dh> from f32 h",
            ALL_INPUTS,
            Fold::Both,
        )
        .dh(DhStore::F32Dot),
        mi(
            "mirror, bf16 inputs, dh_c stored bf16",
            ALL_INPUTS,
            Fold::Both,
        )
        .dh(DhStore::Bf16),
        mi(
            "mirror, bf16 inputs, dh_c bf16, <h,dh> bf16 h",
            ALL_INPUTS,
            Fold::Both,
        )
        .dh(DhStore::Bf16HBf16),
        own("own error, dh_c stored f32", Fold::Both).dh(DhStore::F32),
        own("own error, dh_c stored bf16", Fold::Both).dh(DhStore::Bf16),
        own("own error, dh_c bf16, <h,dh> from bf16 h", Fold::Both).dh(DhStore::Bf16HBf16),
        mi(
            "mirror, bf16 inputs, no internal rounding",
            ALL_INPUTS,
            Fold::Both,
        )
        .exact(STAGES.to_vec()),
    ];
    for s in STAGES {
        let name = format!("mirror, bf16 inputs, {s:?} in f32");
        rows.push(mi(&name, ALL_INPUTS, Fold::Both).exact(vec![s]));
    }
    for s in STAGES {
        let rest: Vec<Stage> = STAGES.iter().copied().filter(|&x| x != s).collect();
        let name = format!("mirror, f32 inputs, only {s:?} rounded");
        rows.push(mi(&name, NO_INPUTS, Fold::Both).exact(rest));
    }
    eprintln!(
        "{} calls ({seeds} seeds x 2 configs x 2 layers); max / mean / median of max_rel_err",
        calls.len()
    );
    eprintln!(
        "{:<48} {:>26} {:>26} {:>26}",
        "variant", "dg", "dA_log", "dt_bias"
    );
    for v in rows {
        let errs: Vec<[f64; 3]> = calls.iter().map(|io| dg_errors(io, &v)).collect();
        let col = |i: usize| {
            let [mx, mean, med] = stats(errs.iter().map(|e| e[i]));
            format!("{mx:>8.2e}/{mean:>8.2e}/{med:>8.2e}")
        };
        eprintln!("{:<48} {} {} {}", v.name, col(0), col(1), col(2));
    }
}

/// How the delta rule's share of the GPU's (A_log, dt_bias) gradient error compares with the
/// model self-test's noise probe ([`grad_noise`]) of the same tensors: per call the mirror's
/// error on bf16 inputs (what the kernels add to the f64 reference, before any upstream bf16
/// noise) and the probe, for the kernels and (in brackets) for the kernels before branch beta-t
/// ([`Fold::None`]); prints the largest ratios, which the self-test's `NOISE_FACTOR` must cover.
/// Also the summary (max / mean / median over calls) of both, and of the mirror's own error
/// (against the oracle on the same bf16 inputs).
/// Run: `cargo test --release gate_grad_error_vs_noise_probe -- --ignored --nocapture`
/// (GDN_DG_SEEDS seeds, default 8).
#[test]
#[ignore]
fn gate_grad_error_vs_noise_probe() {
    let seeds: u64 = std::env::var("GDN_DG_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let now = Variant::new("", ALL_INPUTS, false);
    let before = Variant::new("", ALL_INPUTS, false).fold(Fold::None);
    let (mut worst, mut worst0): (f64, f64) = (0.0, 0.0);
    let (mut errs, mut errs0, mut ratios, mut ratios0) = (vec![], vec![], vec![], vec![]);
    let (mut own, mut own0) = (vec![], vec![]);
    for seed in 0..seeds {
        for (io, noise) in selftest_rule_calls(seed) {
            let [_, da, ddt] = dg_errors(&io, &now);
            let [_, da0, ddt0] = dg_errors(&io, &before);
            // The kernels' own share: against the oracle on the same bf16 inputs.
            let [_, oa, ot] = dg_errors(&io, &now.clone().against(ALL_INPUTS));
            let [_, oa0, ot0] = dg_errors(&io, &before.clone().against(ALL_INPUTS));
            own.push(oa.max(ot));
            own0.push(oa0.max(ot0));
            let r = (da / noise[0]).max(ddt / noise[1]);
            let r0 = (da0 / noise[0]).max(ddt0 / noise[1]);
            worst = worst.max(r);
            worst0 = worst0.max(r0);
            errs.push(da.max(ddt));
            errs0.push(da0.max(ddt0));
            ratios.push(r);
            ratios0.push(r0);
            eprintln!(
                "seed {seed}: A_log {da:.2e} [{da0:.2e}] (probe {:.2e}), dt_bias {ddt:.2e} \
                 [{ddt0:.2e}] (probe {:.2e}), ratio {r:.2} [{r0:.2}], own {:.2e} [{:.2e}]",
                noise[0],
                noise[1],
                own[own.len() - 1],
                own0[own0.len() - 1]
            );
        }
    }
    let fewer = errs.iter().zip(&errs0).filter(|(a, b)| a < b).count();
    let fewer_own = own.iter().zip(&own0).filter(|(a, b)| a < b).count();
    let [omx, omean, omed] = stats(own.iter().copied());
    let [omx0, omean0, omed0] = stats(own0.iter().copied());
    let [mx, mean, med] = stats(errs.iter().copied());
    let [mx0, mean0, med0] = stats(errs0.iter().copied());
    let [_, rmean, rmed] = stats(ratios.iter().copied());
    let [_, rmean0, rmed0] = stats(ratios0.iter().copied());
    eprintln!(
        "max(A_log, dt_bias) error over {} calls, max / mean / median: {mx:.2e} / {mean:.2e} / \
         {med:.2e} [before beta-t: {mx0:.2e} / {mean0:.2e} / {med0:.2e}]; smaller than before \
         beta-t in {fewer} calls",
        errs.len()
    );
    eprintln!(
        "own error (vs the oracle on the same bf16 inputs), max / mean / median: {omx:.2e} / \
         {omean:.2e} / {omed:.2e} [before beta-t: {omx0:.2e} / {omean0:.2e} / {omed0:.2e}]; \
         smaller than before beta-t in {fewer_own} calls"
    );
    eprintln!(
        "error / probe, mean / median: {rmean:.2} / {rmed:.2} [before beta-t: {rmean0:.2} / \
         {rmed0:.2}]"
    );
    eprintln!("largest error / probe: {worst:.2} [before beta-t: {worst0:.2}]");
}

/// The tail of the selftest's dg error, from the mirror (which reproduces the GPU's figures to
/// four digits): session 17's failing seed (GPU and mirror 2.427e-2 at lens [150], K = V = 64,
/// over the 2e-2 tolerance of the time) and the distribution over 400 seeds of that case.
/// Run: `cargo test --release selftest_dg_tail -- --ignored --nocapture`.
#[test]
#[ignore]
fn selftest_dg_tail() {
    let d = |heads, dk, dv| Dims { heads, dk, dv };
    let dg_of = |c: &Case| errors(c).into_iter().find(|x| x.0 == "dg").unwrap().1;
    let c = super::selftest::random_case(1796018012852173318, &[150], d(2, 64, 64), true, true);
    eprintln!("seed 1796018012852173318: dg {:.3e}", dg_of(&c));
    let mut v: Vec<f64> = (0..400u64)
        .map(|s| {
            dg_of(&super::selftest::random_case(
                77 + s,
                &[150],
                d(2, 64, 64),
                true,
                true,
            ))
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "dg over 400 seeds: p50 {:.2e}, p90 {:.2e}, p99 {:.2e}, max {:.2e}",
        v[200], v[360], v[396], v[399]
    );
    assert!(v[399] < super::selftest::TOL_DG_DBETA);
}
