//! The gated delta rule (spec §A.2 step 8 and §B): a naive per-token recurrence, the reference,
//! and the chunked (C = 64, WY/UT transform) form used for training, both forward and backward,
//! with initial/final state and variable-length packing through `cu_seqlens`.
//!
//! Layouts are token-major, as FLA's varlen path: the batch is flattened into T_total tokens and
//! `cu_seqlens` ([N+1], starting at 0, increasing, ending at T_total) marks the sequences. No state
//! crosses a sequence boundary. The state is key-first, S ∈ R^{K×V}, read out as o = Sᵀq.

pub mod chunk;
pub mod naive;

use crate::tensor::Elem;
use anyhow::{bail, ensure, Result};

/// Chunk length of the chunked form.
pub const CHUNK: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Number of heads H (q/k heads = value heads; GVA is not supported).
    pub heads: usize,
    /// Key (and query) head dimension K.
    pub dk: usize,
    /// Value head dimension V.
    pub dv: usize,
}

/// The inputs of one gated-delta-rule call.
pub struct Inputs<'a, F> {
    /// Queries [T, H, K], already L2-normalised (the scale is applied inside).
    pub q: &'a [F],
    /// Keys [T, H, K], already L2-normalised.
    pub k: &'a [F],
    /// Values [T, H, V].
    pub v: &'a [F],
    /// Log decay g = ln α ≤ 0, [T, H].
    pub g: &'a [F],
    /// Write strength β ∈ (0, 1), [T, H].
    pub beta: &'a [F],
    /// Read-out scale, K^{-1/2} in the model.
    pub scale: F,
    /// State entering each sequence [N, H, K, V]; zeros when `None`.
    pub initial_state: Option<&'a [F]>,
    /// Sequence offsets [N+1].
    pub cu_seqlens: &'a [usize],
}

/// Forward results.
#[derive(Clone, Debug)]
pub struct Forward<F> {
    /// Outputs [T, H, V].
    pub o: Vec<F>,
    /// State leaving each sequence [N, H, K, V].
    pub final_state: Vec<F>,
}

/// Gradients with respect to every input of [`Inputs`], in the same layouts.
#[derive(Clone, Debug)]
pub struct Grads<F> {
    pub dq: Vec<F>,
    pub dk: Vec<F>,
    pub dv: Vec<F>,
    pub dg: Vec<F>,
    pub dbeta: Vec<F>,
    /// Gradient of the initial state [N, H, K, V] (computed even when it was `None`).
    pub dh0: Vec<F>,
}

/// Checks `cu_seqlens` ([N+1], from 0, non-decreasing, ending at `t` tokens).
pub fn check_cu_seqlens(cu: &[usize], t: usize) -> Result<()> {
    ensure!(
        cu.len() >= 2,
        "cu_seqlens must hold at least 2 offsets, got {}",
        cu.len()
    );
    ensure!(
        cu[0] == 0,
        "cu_seqlens must start at 0, starts at {}",
        cu[0]
    );
    if let Some(i) = (1..cu.len()).find(|&i| cu[i] < cu[i - 1]) {
        bail!(
            "cu_seqlens is not increasing at index {i} ({} < {})",
            cu[i],
            cu[i - 1]
        );
    }
    ensure!(
        cu[cu.len() - 1] == t,
        "cu_seqlens ends at {} but the inputs hold T={t} tokens",
        cu[cu.len() - 1]
    );
    Ok(())
}

impl<F: Elem> Inputs<'_, F> {
    /// Number of sequences N.
    pub fn num_seqs(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }

    /// Total tokens T.
    pub fn num_tokens(&self) -> usize {
        self.cu_seqlens.last().copied().unwrap_or(0)
    }

    /// The preconditions of a backward call (inputs valid, `d_o` [T,H,V], `d_final` [N,H,K,V]);
    /// a violation is a caller bug, so it panics naming `who`.
    pub fn check_backward(&self, dims: Dims, d_o: &[F], d_final: Option<&[F]>, who: &str) {
        if let Err(e) = self.validate(dims) {
            panic!("{who}: {e:#}");
        }
        let (t, n) = (self.num_tokens(), self.num_seqs());
        assert_eq!(d_o.len(), t * dims.heads * dims.dv, "{who}: d_o length");
        if let Some(df) = d_final {
            assert_eq!(
                df.len(),
                n * dims.heads * dims.dk * dims.dv,
                "{who}: d_final length"
            );
        }
    }

    /// Checks every length against `dims` and `cu_seqlens`, naming the offending tensor.
    pub fn validate(&self, dims: Dims) -> Result<()> {
        check_cu_seqlens(self.cu_seqlens, self.num_tokens())?;
        ensure!(
            dims.heads > 0 && dims.dk > 0 && dims.dv > 0,
            "delta rule dims must be non-zero: {dims:?}"
        );
        let t = self.num_tokens();
        let n = self.num_seqs();
        let (h, k, v) = (dims.heads, dims.dk, dims.dv);
        let check = |name: &str, len: usize, want: usize| -> Result<()> {
            ensure!(len == want, "delta rule input `{name}` has {len} elements, expected {want} (T={t}, H={h}, K={k}, V={v}, N={n}; cu_seqlens must end at T)");
            Ok(())
        };
        check("q", self.q.len(), t * h * k)?;
        check("k", self.k.len(), t * h * k)?;
        check("v", self.v.len(), t * h * v)?;
        check("g", self.g.len(), t * h)?;
        check("beta", self.beta.len(), t * h)?;
        if let Some(s) = self.initial_state {
            check("initial_state", s.len(), n * h * k * v)?;
        }
        Ok(())
    }
}
