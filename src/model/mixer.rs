//! The GatedDeltaNet token mixer (spec §A): projections, short convs + SiLU, L2 norm, gates,
//! the gated delta rule, gated RMSNorm and the output projection.

use super::config::ModelConfig;
use super::nn;
use super::params::{Kind, ParamLayout};
use crate::ops::{conv, delta_rule};
use crate::tensor::Elem;
use std::borrow::Cow;
use std::ops::Range;

/// Where one mixer's parameters live in the flat buffer.
#[derive(Clone, Debug)]
pub struct MixerParams {
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
}

/// Sizes of the mixer, from the config.
#[derive(Clone, Copy, Debug)]
pub struct MixerDims {
    pub d: usize,
    /// q/k heads H.
    pub heads: usize,
    /// Value heads HV, a multiple of H (GVA when larger): the delta rule, the gates and the state
    /// run per value head, value head i reading q/k head i / (HV / H).
    pub v_heads: usize,
    pub dk: usize,
    pub dv: usize,
    pub width: usize,
    pub eps: f64,
    /// β = beta_scale · sigmoid(b) (`nn::beta_scale` of the config's `allow_neg_eigval`).
    pub beta_scale: f64,
}

impl MixerDims {
    pub fn of(c: &ModelConfig) -> Self {
        MixerDims {
            d: c.hidden_size,
            heads: c.num_heads,
            v_heads: c.v_heads(),
            dk: c.head_dim,
            dv: c.head_v_dim(),
            width: c.conv_size,
            eps: c.norm_eps,
            beta_scale: nn::beta_scale(c.allow_neg_eigval),
        }
    }
    fn key_dim(&self) -> usize {
        self.heads * self.dk
    }
    fn value_dim(&self) -> usize {
        self.v_heads * self.dv
    }
    /// Value heads per q/k head (1 without GVA).
    pub fn group(&self) -> usize {
        self.v_heads / self.heads
    }
    /// The delta rule's sizes: it runs per value head.
    pub fn rule(&self) -> delta_rule::Dims {
        delta_rule::Dims {
            heads: self.v_heads,
            dk: self.dk,
            dv: self.dv,
        }
    }
}

impl MixerParams {
    /// Registers the parameters of layer `i` under FLA's names.
    pub fn register(layout: &mut ParamLayout, i: usize, dims: MixerDims, b_bias: bool) -> Self {
        let p = |s: &str| format!("model.layers.{i}.attn.{s}");
        let (d, kd, vd, h, w) = (
            dims.d,
            dims.key_dim(),
            dims.value_dim(),
            dims.v_heads,
            dims.width,
        );
        MixerParams {
            q_proj: layout.push(p("q_proj.weight"), vec![kd, d], Kind::Linear),
            k_proj: layout.push(p("k_proj.weight"), vec![kd, d], Kind::Linear),
            v_proj: layout.push(p("v_proj.weight"), vec![vd, d], Kind::Linear),
            a_proj: layout.push(p("a_proj.weight"), vec![h, d], Kind::Linear),
            b_proj: layout.push(p("b_proj.weight"), vec![h, d], Kind::Linear),
            b_bias: b_bias.then(|| layout.push(p("b_proj.bias"), vec![h], Kind::Bias)),
            a_log: layout.push(p("A_log"), vec![h], Kind::ALog),
            dt_bias: layout.push(p("dt_bias"), vec![h], Kind::DtBias),
            q_conv: layout.push(p("q_conv1d.weight"), vec![kd, 1, w], Kind::Conv),
            k_conv: layout.push(p("k_conv1d.weight"), vec![kd, 1, w], Kind::Conv),
            v_conv: layout.push(p("v_conv1d.weight"), vec![vd, 1, w], Kind::Conv),
            g_proj: layout.push(p("g_proj.weight"), vec![vd, d], Kind::Linear),
            o_norm: layout.push(p("o_norm.weight"), vec![dims.dv], Kind::Norm),
            o_proj: layout.push(p("o_proj.weight"), vec![d, vd], Kind::Linear),
        }
    }
}

/// What the backward needs from one mixer forward.
pub struct MixerCache<F> {
    x: Vec<F>,
    q_pre: Vec<F>,
    k_pre: Vec<F>,
    v_pre: Vec<F>,
    q_conv: Vec<F>,
    k_conv: Vec<F>,
    v_conv: Vec<F>,
    q: Vec<F>,
    k: Vec<F>,
    q_r: Vec<F>,
    k_r: Vec<F>,
    v: Vec<F>,
    a: Vec<F>,
    beta: Vec<F>,
    g: Vec<F>,
    o: Vec<F>,
    gate: Vec<F>,
    o_rstd: Vec<F>,
    normed: Vec<F>,
    /// The recurrent state leaving each sequence (what decoding continues from).
    final_state: Vec<F>,
}

/// The per-token projections q, k, v after conv and SiLU, before the L2 norm, plus a, b, gate.
struct Streams<F> {
    q_pre: Vec<F>,
    k_pre: Vec<F>,
    v_pre: Vec<F>,
    a: Vec<F>,
    b: Vec<F>,
    gate: Vec<F>,
}

fn project<F: Elem>(
    mp: &MixerParams,
    dims: MixerDims,
    params: &[F],
    x: &[F],
    n: usize,
) -> Streams<F> {
    let (d, kd, vd, h) = (dims.d, dims.key_dim(), dims.value_dim(), dims.v_heads);
    let lin = |r: &Range<usize>, out| nn::linear_fwd(x, &params[r.clone()], n, d, out);
    let mut b = lin(&mp.b_proj, h);
    if let Some(bias) = &mp.b_bias {
        b.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += params[bias.start + i % h]);
    }
    Streams {
        q_pre: lin(&mp.q_proj, kd),
        k_pre: lin(&mp.k_proj, kd),
        v_pre: lin(&mp.v_proj, vd),
        a: lin(&mp.a_proj, h),
        b,
        gate: lin(&mp.g_proj, vd),
    }
}

/// Mixer forward over `x` [n, d] packed by `cu_seqlens`. Returns (output [n, d], cache).
pub fn forward<F: Elem>(
    mp: &MixerParams,
    dims: MixerDims,
    params: &[F],
    x: &[F],
    cu_seqlens: &[usize],
) -> (Vec<F>, MixerCache<F>) {
    let n = x.len() / dims.d;
    let (kd, vd, w) = (dims.key_dim(), dims.value_dim(), dims.width);
    let s = project(mp, dims, params, x, n);
    let q_conv = conv::forward(&s.q_pre, &params[mp.q_conv.clone()], kd, w, cu_seqlens);
    let k_conv = conv::forward(&s.k_pre, &params[mp.k_conv.clone()], kd, w, cu_seqlens);
    let v_conv = conv::forward(&s.v_pre, &params[mp.v_conv.clone()], vd, w, cu_seqlens);
    let (q, q_r) = nn::l2norm_fwd(&nn::silu_fwd(&q_conv), dims.dk);
    let (k, k_r) = nn::l2norm_fwd(&nn::silu_fwd(&k_conv), dims.dk);
    let v = nn::silu_fwd(&v_conv);
    let (g, beta) = nn::gates_fwd(
        &s.a,
        &s.b,
        &params[mp.a_log.clone()],
        &params[mp.dt_bias.clone()],
        dims.beta_scale,
    );
    let (qr, kr) = (
        repeat_heads(&q, dims.dk, dims.group()),
        repeat_heads(&k, dims.dk, dims.group()),
    );
    let inputs = delta_rule::Inputs {
        q: &qr,
        k: &kr,
        v: &v,
        g: &g,
        beta: &beta,
        scale: F::of(1.0 / (dims.dk as f64).sqrt()),
        initial_state: None,
        cu_seqlens,
    };
    let delta_rule::Forward { o, final_state } = delta_rule::chunk::forward(&inputs, dims.rule());
    let (normed, o_rstd) = nn::gated_rmsnorm_fwd(&o, &s.gate, &params[mp.o_norm.clone()], dims.eps);
    let out = nn::linear_fwd(&normed, &params[mp.o_proj.clone()], n, vd, dims.d);
    let cache = MixerCache {
        x: x.to_vec(),
        q_pre: s.q_pre,
        k_pre: s.k_pre,
        v_pre: s.v_pre,
        q_conv,
        k_conv,
        v_conv,
        q,
        k,
        q_r,
        k_r,
        v,
        a: s.a,
        beta,
        g,
        o,
        gate: s.gate,
        o_rstd,
        normed,
        final_state,
    };
    (out, cache)
}

/// Mixer backward: accumulates parameter gradients into `grads`, returns dx [n, d].
pub fn backward<F: Elem>(
    mp: &MixerParams,
    dims: MixerDims,
    params: &[F],
    c: &MixerCache<F>,
    dy: &[F],
    cu_seqlens: &[usize],
    grads: &mut [F],
) -> Vec<F> {
    let (d, kd, vd, h, w) = (
        dims.d,
        dims.key_dim(),
        dims.value_dim(),
        dims.v_heads,
        dims.width,
    );
    let n = c.x.len() / d;
    let p = |r: &Range<usize>| &params[r.clone()];
    let d_normed = nn::linear_bwd(
        &c.normed,
        p(&mp.o_proj),
        dy,
        n,
        vd,
        d,
        &mut grads[mp.o_proj.clone()],
    );
    let (d_o, d_gate) = nn::gated_rmsnorm_bwd(
        &c.o,
        &c.gate,
        p(&mp.o_norm),
        &c.o_rstd,
        &d_normed,
        &mut grads[mp.o_norm.clone()],
    );
    let (qr, kr) = (
        repeat_heads(&c.q, dims.dk, dims.group()),
        repeat_heads(&c.k, dims.dk, dims.group()),
    );
    let inputs = delta_rule::Inputs {
        q: &qr,
        k: &kr,
        v: &c.v,
        g: &c.g,
        beta: &c.beta,
        scale: F::of(1.0 / (dims.dk as f64).sqrt()),
        initial_state: None,
        cu_seqlens,
    };
    #[cfg(test)]
    capture::record(&inputs, &d_o, &c.a, p(&mp.a_log), p(&mp.dt_bias));
    let rg = delta_rule::chunk::backward(&inputs, dims.rule(), &d_o, None);
    let (d_a_log, rest) = split_two(grads, &mp.a_log, &mp.dt_bias);
    let (da, db) = nn::gates_bwd(
        &c.a,
        &c.beta,
        &c.g,
        p(&mp.a_log),
        p(&mp.dt_bias),
        &rg.dg,
        &rg.dbeta,
        d_a_log,
        rest,
        dims.beta_scale,
    );
    if let Some(bias) = &mp.b_bias {
        for (i, &v) in db.iter().enumerate() {
            grads[bias.start + i % h] += v;
        }
    }
    // GVA: the value heads that share a q/k head add their dq, dk (spec §B, item 10).
    let (dq, dk) = (
        sum_head_groups(&rg.dq, dims.dk, dims.group()),
        sum_head_groups(&rg.dk, dims.dk, dims.group()),
    );
    let dq_conv = nn::silu_bwd(&c.q_conv, &nn::l2norm_bwd(&c.q, &c.q_r, &dq, dims.dk));
    let dk_conv = nn::silu_bwd(&c.k_conv, &nn::l2norm_bwd(&c.k, &c.k_r, &dk, dims.dk));
    let dv_conv = nn::silu_bwd(&c.v_conv, &rg.dv);
    let [dq_pre, dk_pre, dv_pre] = [
        (&c.q_pre, &mp.q_conv, dq_conv, kd),
        (&c.k_pre, &mp.k_conv, dk_conv, kd),
        (&c.v_pre, &mp.v_conv, dv_conv, vd),
    ]
    .map(|(pre, r, dconv, channels)| {
        conv::backward(
            pre,
            p(r),
            &dconv,
            channels,
            w,
            cu_seqlens,
            &mut grads[r.clone()],
        )
    });
    let mut dx = vec![F::zero(); n * d];
    for (r, dy_, out) in [
        (&mp.q_proj, &dq_pre, kd),
        (&mp.k_proj, &dk_pre, kd),
        (&mp.v_proj, &dv_pre, vd),
        (&mp.a_proj, &da, h),
        (&mp.b_proj, &db, h),
        (&mp.g_proj, &d_gate, vd),
    ] {
        let part = nn::linear_bwd(&c.x, p(r), dy_, n, d, out, &mut grads[r.clone()]);
        dx.iter_mut().zip(&part).for_each(|(a, &b)| *a += b);
    }
    dx
}

/// GVA: rows [n, H·dk] → [n, H·g·dk], each head repeated `g` times in place (value head i reads
/// q/k head i / g). Borrowed as is when g = 1.
pub fn repeat_heads<F: Elem>(x: &[F], dk: usize, g: usize) -> Cow<'_, [F]> {
    if g == 1 {
        return Cow::Borrowed(x);
    }
    let mut y = Vec::with_capacity(x.len() * g);
    for head in x.chunks(dk) {
        for _ in 0..g {
            y.extend_from_slice(head);
        }
    }
    Cow::Owned(y)
}

/// The backward of [`repeat_heads`]: [n, H·g·dk] → [n, H·dk], each head's g copies summed (in
/// order).
pub fn sum_head_groups<F: Elem>(dx: &[F], dk: usize, g: usize) -> Cow<'_, [F]> {
    if g == 1 {
        return Cow::Borrowed(dx);
    }
    let mut y = Vec::with_capacity(dx.len() / g);
    for group in dx.chunks(g * dk) {
        let mut acc = group[..dk].to_vec();
        for copy in group[dk..].chunks(dk) {
            acc.iter_mut().zip(copy).for_each(|(a, &b)| *a += b);
        }
        y.extend(acc);
    }
    Cow::Owned(y)
}

/// Two disjoint mutable views of the gradient buffer (`a` must come before `b`).
fn split_two<'g, F>(
    g: &'g mut [F],
    a: &Range<usize>,
    b: &Range<usize>,
) -> (&'g mut [F], &'g mut [F]) {
    assert!(a.end <= b.start, "split_two: ranges out of order");
    let (lo, hi) = g.split_at_mut(b.start);
    (&mut lo[a.clone()], &mut hi[..b.len()])
}

// ---------------------------------------------------------------------------------------------
// Inference (spec §A.4): a prefill that keeps no backward cache but returns the decode state,
// and a one-token decode step per sequence.

use super::decode::{self as dec, LayerState};

impl MixerDims {
    /// Raw conv input widths (q, k, v).
    pub fn conv_channels(&self) -> (usize, usize, usize) {
        (self.key_dim(), self.key_dim(), self.value_dim())
    }
}

/// Inference forward over `x` [n, d] packed by `cu_seqlens` (every sequence from a zero state).
/// Returns the output [n, d] and each sequence's decode state: the last W raw conv inputs of
/// q, k, v (oldest first, zero-filled) and the final recurrent state [N, HV, K, V].
pub fn prefill<F: Elem>(
    mp: &MixerParams,
    dims: MixerDims,
    params: &[F],
    x: &[F],
    cu_seqlens: &[usize],
) -> (Vec<F>, LayerState<F>) {
    let (kd, vd, w) = (dims.key_dim(), dims.value_dim(), dims.width);
    let (out, c) = forward(mp, dims, params, x, cu_seqlens);
    let state = LayerState {
        conv_q: dec::conv_tail(&c.q_pre, kd, w, cu_seqlens),
        conv_k: dec::conv_tail(&c.k_pre, kd, w, cu_seqlens),
        conv_v: dec::conv_tail(&c.v_pre, vd, w, cu_seqlens),
        state: c.final_state,
    };
    (out, state)
}

/// One decode step: `x` [N, d] holds one token's mixer input per sequence; updates `st` in
/// place (conv step, SiLU, L2 norm, gates, one gated-delta-rule step) and returns [N, d].
pub fn decode_step<F: Elem>(
    mp: &MixerParams,
    dims: MixerDims,
    params: &[F],
    x: &[F],
    st: &mut LayerState<F>,
) -> Vec<F> {
    let nseq = x.len() / dims.d;
    let (kd, vd, w, hv, dk, dv) = (
        dims.key_dim(),
        dims.value_dim(),
        dims.width,
        dims.v_heads,
        dims.dk,
        dims.dv,
    );
    let s = project(mp, dims, params, x, nseq);
    let conv_step = |pre: &[F], r: &Range<usize>, ch: usize, cache: &mut [F]| -> Vec<F> {
        let wt = &params[r.clone()];
        let mut y = Vec::with_capacity(nseq * ch);
        for (row, c) in pre.chunks(ch).zip(cache.chunks_mut(w * ch)) {
            y.extend(conv::step(row, wt, w, c));
        }
        nn::silu_fwd(&y)
    };
    let (q, _) = nn::l2norm_fwd(&conv_step(&s.q_pre, &mp.q_conv, kd, &mut st.conv_q), dk);
    let (k, _) = nn::l2norm_fwd(&conv_step(&s.k_pre, &mp.k_conv, kd, &mut st.conv_k), dk);
    let v = conv_step(&s.v_pre, &mp.v_conv, vd, &mut st.conv_v);
    let (g, beta) = nn::gates_fwd(
        &s.a,
        &s.b,
        &params[mp.a_log.clone()],
        &params[mp.dt_bias.clone()],
        dims.beta_scale,
    );
    let scale = F::of(1.0 / (dk as f64).sqrt());
    let mut o = vec![F::zero(); nseq * vd];
    for (i, s_h) in st.state.chunks_mut(dk * dv).enumerate() {
        // i = sequence · HV + value head; v, g, β are [N, HV, ·] so the same index works, and
        // q, k [N, H, K] are read at q/k head i / group (GVA; the same row without it).
        let j = i / dims.group();
        dec::recurrent_step(
            s_h,
            &q[j * dk..(j + 1) * dk],
            &k[j * dk..(j + 1) * dk],
            &v[i * dv..(i + 1) * dv],
            g[i].exp(),
            beta[i],
            scale,
            &mut o[i * dv..(i + 1) * dv],
        );
    }
    debug_assert_eq!(st.state.len(), nseq * hv * dk * dv);
    let (normed, _) = nn::gated_rmsnorm_fwd(&o, &s.gate, &params[mp.o_norm.clone()], dims.eps);
    nn::linear_fwd(&normed, &params[mp.o_proj.clone()], nseq, vd, dims.d)
}

/// Test-only capture of what each mixer backward hands the delta rule (f64 copies): the model
/// level gradient-precision diagnostic (`cuda::delta_rule::mirror`) replays these calls with the
/// GPU kernels' rounding. Per thread, off unless [`capture::start`] was called.
#[cfg(test)]
pub(crate) mod capture {
    use super::*;
    use std::cell::RefCell;

    /// One delta-rule call of a mixer backward.
    pub(crate) struct RuleIo {
        pub(crate) q: Vec<f64>,
        pub(crate) k: Vec<f64>,
        pub(crate) v: Vec<f64>,
        pub(crate) g: Vec<f64>,
        pub(crate) beta: Vec<f64>,
        /// ∂L/∂o, [T, H, V].
        pub(crate) d_o: Vec<f64>,
        /// The gate input a (a_proj output), [T, H].
        pub(crate) a: Vec<f64>,
        pub(crate) a_log: Vec<f64>,
        pub(crate) dt_bias: Vec<f64>,
        pub(crate) scale: f64,
        pub(crate) cu_seqlens: Vec<usize>,
    }

    thread_local! {
        static CALLS: RefCell<Option<Vec<RuleIo>>> = const { RefCell::new(None) };
    }

    /// Starts recording on this thread (dropping anything recorded before).
    pub(crate) fn start() {
        CALLS.with(|c| *c.borrow_mut() = Some(vec![]));
    }

    /// Stops recording; the calls in backward order (last layer first).
    pub(crate) fn take() -> Vec<RuleIo> {
        CALLS.with(|c| c.borrow_mut().take().unwrap_or_default())
    }

    pub(super) fn record<F: Elem>(
        inp: &delta_rule::Inputs<F>,
        d_o: &[F],
        a: &[F],
        a_log: &[F],
        dt_bias: &[F],
    ) {
        let up = |x: &[F]| x.iter().map(|v| v.f64()).collect::<Vec<f64>>();
        CALLS.with(|c| {
            if let Some(calls) = c.borrow_mut().as_mut() {
                calls.push(RuleIo {
                    q: up(inp.q),
                    k: up(inp.k),
                    v: up(inp.v),
                    g: up(inp.g),
                    beta: up(inp.beta),
                    d_o: up(d_o),
                    a: up(a),
                    a_log: up(a_log),
                    dt_bias: up(dt_bias),
                    scale: inp.scale.f64(),
                    cu_seqlens: inp.cu_seqlens.to_vec(),
                });
            }
        });
    }
}
