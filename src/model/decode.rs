//! Recurrent decoding (spec §A.4): a chunked prefill that returns each sequence's state, then one
//! token per sequence per step through the recurrence, and a generation loop on top.
//!
//! Per layer and sequence the state is what FLA's cache holds: the last W **raw** inputs of the
//! q, k and v short convolutions (before conv and SiLU, oldest first, zero-filled when the
//! sequence is shorter than W) and the recurrent state S ∈ R^{K×V} per head (key-first, as
//! everywhere in gdn). Layouts: conv caches [N, W, D_stream] (the layout `ops::conv::step`
//! takes per sequence), recurrent state [N, H, K, V].

use super::lm::Model;
use super::mixer;
use super::sample::Sampler;
use crate::tensor::{Elem, Rng};
use anyhow::{anyhow, bail, ensure, Result};

/// One layer's decode state for N sequences.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerState<F> {
    /// Last W raw q-conv inputs per sequence, [N, W, H·K], oldest first.
    pub conv_q: Vec<F>,
    /// Last W raw k-conv inputs per sequence, [N, W, H·K].
    pub conv_k: Vec<F>,
    /// Last W raw v-conv inputs per sequence, [N, W, H·V].
    pub conv_v: Vec<F>,
    /// Recurrent state per sequence and head, [N, H, K, V].
    pub state: Vec<F>,
}

/// The decode state of a batch of N sequences: one [`LayerState`] per layer.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeState<F> {
    pub layers: Vec<LayerState<F>>,
    /// Tokens consumed so far by each sequence (prompt plus decoded).
    pub positions: Vec<usize>,
}

impl<F> DecodeState<F> {
    /// Number of sequences N.
    pub fn num_seqs(&self) -> usize {
        self.positions.len()
    }
}

/// The conv cache after each sequence of `pre` ([T, ch] packed by `cu_seqlens`): its last
/// `width` rows, oldest first, zero rows in front when the sequence is shorter. [N, W, ch].
pub fn conv_tail<F: Elem>(pre: &[F], ch: usize, width: usize, cu_seqlens: &[usize]) -> Vec<F> {
    let ns = cu_seqlens.len().saturating_sub(1);
    let mut out = vec![F::zero(); ns * width * ch];
    for (n, seq) in cu_seqlens.windows(2).enumerate() {
        let (start, end) = (seq[0], seq[1]);
        let rows = (end - start).min(width);
        let dst = &mut out[(n * width + width - rows) * ch..(n + 1) * width * ch];
        dst.copy_from_slice(&pre[(end - rows) * ch..end * ch]);
    }
    out
}

/// One gated-delta-rule step for one head, in place (spec §A.2 step 8):
/// S ← αS; u = β(v − Sᵀk); S += k uᵀ; out = scale · Sᵀq. `s` is [K, V].
#[allow(clippy::too_many_arguments)]
pub fn recurrent_step<F: Elem>(
    s: &mut [F],
    q: &[F],
    k: &[F],
    v: &[F],
    alpha: F,
    beta: F,
    scale: F,
    out: &mut [F],
) {
    let dv = v.len();
    debug_assert_eq!(s.len(), k.len() * dv);
    s.iter_mut().for_each(|x| *x *= alpha);
    // u = β (v − Sᵀk)
    let mut u = v.to_vec();
    for (row, &ka) in s.chunks(dv).zip(k) {
        u.iter_mut().zip(row).for_each(|(ub, &sab)| *ub -= sab * ka);
    }
    u.iter_mut().for_each(|x| *x *= beta);
    out.iter_mut().for_each(|x| *x = F::zero());
    for ((row, &ka), &qa) in s.chunks_mut(dv).zip(k).zip(q) {
        for ((sab, &ub), o) in row.iter_mut().zip(&u).zip(out.iter_mut()) {
            *sab += ka * ub;
            *o += *sab * qa;
        }
    }
    out.iter_mut().for_each(|x| *x *= scale);
}

impl Model {
    /// Inference forward without a backward cache: the final-normed hidden states [tokens, d]
    /// of `tokens` packed by `cu_seqlens`. [`Model::logits_of`] turns rows of it into logits.
    pub fn infer_hidden<F: Elem>(
        &self,
        params: &[F],
        tokens: &[u32],
        cu_seqlens: &[usize],
    ) -> Result<Vec<F>> {
        check_cu(cu_seqlens, tokens.len())?;
        self.hidden_with(params, tokens, &mut |_, mp, dims, h| {
            mixer::prefill(mp, dims, params, h, cu_seqlens).0
        })
    }

    /// Runs the prompts (`tokens` packed by `cu_seqlens`, each sequence non-empty) through the
    /// chunked forward and returns the logits of each sequence's last token [N, vocab] and the
    /// state to continue from with [`Model::decode_step`].
    pub fn prefill<F: Elem>(
        &self,
        params: &[F],
        tokens: &[u32],
        cu_seqlens: &[usize],
    ) -> Result<(Vec<F>, DecodeState<F>)> {
        check_cu(cu_seqlens, tokens.len())?;
        if let Some(i) = cu_seqlens.windows(2).position(|w| w[0] == w[1]) {
            bail!("prefill: sequence {i} is empty (every prompt needs at least one token)");
        }
        let mut layers = Vec::with_capacity(self.config.num_hidden_layers);
        let hidden = self.hidden_with(params, tokens, &mut |_, mp, dims, h| {
            let (out, st) = mixer::prefill(mp, dims, params, h, cu_seqlens);
            layers.push(st);
            out
        })?;
        let d = self.config.hidden_size;
        let last: Vec<F> = cu_seqlens[1..]
            .iter()
            .flat_map(|&end| hidden[(end - 1) * d..end * d].iter().copied())
            .collect();
        let positions = cu_seqlens.windows(2).map(|w| w[1] - w[0]).collect();
        Ok((
            self.logits_of(params, &last),
            DecodeState { layers, positions },
        ))
    }

    /// A state for N sequences that have seen nothing yet (zero conv caches and states).
    pub fn empty_state<F: Elem>(&self, num_seqs: usize) -> DecodeState<F> {
        let dims = self.mixer_dims();
        let (cq, ck, cv) = dims.conv_channels();
        let w = dims.width;
        let layer = LayerState {
            conv_q: vec![F::zero(); num_seqs * w * cq],
            conv_k: vec![F::zero(); num_seqs * w * ck],
            conv_v: vec![F::zero(); num_seqs * w * cv],
            state: vec![F::zero(); num_seqs * dims.v_heads * dims.dk * dims.dv],
        };
        DecodeState {
            layers: vec![layer; self.config.num_hidden_layers],
            positions: vec![0; num_seqs],
        }
    }

    /// Feeds one token per sequence (`tokens` [N]) through the recurrence, updating `state`;
    /// returns the next-token logits [N, vocab].
    pub fn decode_step<F: Elem>(
        &self,
        params: &[F],
        state: &mut DecodeState<F>,
        tokens: &[u32],
    ) -> Result<Vec<F>> {
        ensure!(
            tokens.len() == state.num_seqs(),
            "decode_step: {} tokens for a state of {} sequences",
            tokens.len(),
            state.num_seqs()
        );
        ensure!(
            state.layers.len() == self.config.num_hidden_layers,
            "decode_step: the state has {} layers, the model {}",
            state.layers.len(),
            self.config.num_hidden_layers
        );
        let layers = &mut state.layers;
        let hidden = self.hidden_with(params, tokens, &mut |i, mp, dims, h| {
            mixer::decode_step(mp, dims, params, h, &mut layers[i])
        })?;
        state.positions.iter_mut().for_each(|p| *p += 1);
        Ok(self.logits_of(params, &hidden))
    }
}

fn check_cu(cu: &[usize], n: usize) -> Result<()> {
    ensure!(
        cu.len() >= 2
            && cu.first() == Some(&0)
            && cu.last() == Some(&n)
            && cu.windows(2).all(|w| w[0] <= w[1]),
        "cu_seqlens must increase from 0 to the number of tokens ({n})"
    );
    Ok(())
}

/// How to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most new tokens to produce.
    pub max_tokens: usize,
    pub sampler: Sampler,
    /// Token ids that end generation (not emitted).
    pub stop_tokens: Vec<u32>,
    pub seed: u64,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    MaxTokens,
    StopToken(u32),
}

/// The generated tokens (stop token excluded) and why generation ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
}

/// What generation steps: one sequence's recurrent decoder on some device. Sampling, stop
/// tokens and streaming stay in [`generate_with`].
pub trait Stepper<F> {
    /// Starts from the empty state, consumes `prompt` (non-empty) and returns the next-token
    /// logits [vocab].
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<F>>;
    /// Consumes one token and returns the next-token logits [vocab].
    fn step(&mut self, token: u32) -> Result<Vec<F>>;
}

/// The CPU model as a [`Stepper`]: the chunked [`Model::prefill`], then [`Model::decode_step`].
pub struct CpuStepper<'a, F> {
    model: &'a Model,
    params: &'a [F],
    state: Option<DecodeState<F>>,
}

impl<'a, F> CpuStepper<'a, F> {
    pub fn new(model: &'a Model, params: &'a [F]) -> Self {
        CpuStepper {
            model,
            params,
            state: None,
        }
    }

    /// The decode state after the last call (None before the prefill).
    pub fn state(&self) -> Option<&DecodeState<F>> {
        self.state.as_ref()
    }
}

impl<F: Elem> Stepper<F> for CpuStepper<'_, F> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<F>> {
        ensure!(!prompt.is_empty(), "the prompt is empty");
        let (logits, state) = self
            .model
            .prefill(self.params, prompt, &[0, prompt.len()])?;
        self.state = Some(state);
        Ok(logits)
    }

    fn step(&mut self, token: u32) -> Result<Vec<F>> {
        let state = self
            .state
            .as_mut()
            .ok_or_else(|| anyhow!("CpuStepper::step before prefill"))?;
        self.model.decode_step(self.params, state, &[token])
    }
}

/// Generates a continuation of `prompt` (non-empty) with the CPU model; see [`generate_with`].
pub fn generate<F: Elem>(
    model: &Model,
    params: &[F],
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    generate_with(&mut CpuStepper::new(model, params), prompt, opts, on_token)
}

/// Generates a continuation of `prompt` (non-empty): prefill, then sample and decode one token
/// at a time. `on_token` sees each new token as soon as it is sampled (for streaming).
pub fn generate_with<F: Elem>(
    stepper: &mut dyn Stepper<F>,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    opts.sampler.validate()?;
    ensure!(!prompt.is_empty(), "the prompt is empty");
    let mut rng = Rng::new(opts.seed);
    let mut logits = stepper.prefill(prompt)?;
    let mut tokens = Vec::new();
    loop {
        if tokens.len() == opts.max_tokens {
            return Ok(Generation {
                tokens,
                stop: StopReason::MaxTokens,
            });
        }
        let t = opts.sampler.sample(&logits, &mut rng);
        if opts.stop_tokens.contains(&t) {
            return Ok(Generation {
                tokens,
                stop: StopReason::StopToken(t),
            });
        }
        on_token(t)?;
        tokens.push(t);
        if tokens.len() < opts.max_tokens {
            logits = stepper.step(t)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use crate::tensor::max_rel_err;

    fn tiny_model(width: usize) -> (Model, Vec<f64>) {
        tiny_model_gva(width, None)
    }

    /// `v_heads`: the config's num_v_heads (GVA when more than the 2 q/k heads).
    fn tiny_model_gva(width: usize, v_heads: Option<usize>) -> (Model, Vec<f64>) {
        let mut cfg = ModelConfig::preset("tiny").unwrap();
        cfg.conv_size = width;
        cfg.b_proj_bias = true;
        cfg.num_v_heads = v_heads;
        let model = Model::new(cfg).unwrap();
        let mut rng = Rng::new(77);
        let mut params: Vec<f64> = model.init_params(&mut rng);
        // Larger than the init scale so every path (conv, gates, state) matters.
        params.iter_mut().for_each(|p| *p += 0.3 * rng.normal());
        (model, params)
    }

    fn random_tokens(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
        (0..n).map(|_| rng.below(vocab) as u32).collect()
    }

    /// Prefill of a prefix of each sequence, then decode steps over the rest, reproduces the
    /// full-sequence forward logits at every position, for sequences of different lengths at
    /// once (the longest crosses a chunk boundary; the shortest prefix is shorter than W); also
    /// under GVA (2 q/k heads, 4 value heads).
    #[test]
    fn prefill_then_decode_matches_the_full_forward() {
        for v_heads in [None, Some(4)] {
            prefill_then_decode(v_heads);
        }
    }

    fn prefill_then_decode(v_heads: Option<usize>) {
        let (model, params) = tiny_model_gva(4, v_heads);
        let vocab = model.config.vocab_size;
        let mut rng = Rng::new(5);
        let lens = [70usize, 9, 13];
        let prefix = [66usize, 2, 1];
        let seqs: Vec<Vec<u32>> = lens
            .iter()
            .map(|&l| random_tokens(&mut rng, l, vocab))
            .collect();
        // Reference: each sequence's full forward on its own.
        let full: Vec<Vec<f64>> = seqs
            .iter()
            .map(|s| model.forward(&params, s, &[0, s.len()]).unwrap().logits)
            .collect();
        let packed: Vec<u32> = seqs
            .iter()
            .zip(&prefix)
            .flat_map(|(s, &p)| s[..p].to_vec())
            .collect();
        let mut cu = vec![0];
        prefix.iter().for_each(|&p| cu.push(cu.last().unwrap() + p));
        let (logits, mut state) = model.prefill(&params, &packed, &cu).unwrap();
        let mut worst = 0.0f64;
        for (i, s) in seqs.iter().enumerate() {
            let at = prefix[i] - 1;
            let e = max_rel_err(
                &logits[i * vocab..(i + 1) * vocab],
                &full[i][at * vocab..(at + 1) * vocab],
            );
            worst = worst.max(e);
            assert_eq!(state.positions[i], prefix[i]);
            assert!(s.len() > prefix[i]);
        }
        // Decode in lock step; sequences that have run out are fed a dummy token whose
        // output is ignored.
        let steps = (0..lens.len()).map(|i| lens[i] - prefix[i]).max().unwrap();
        for step in 0..steps {
            let toks: Vec<u32> = (0..lens.len())
                .map(|i| seqs[i].get(prefix[i] + step).copied().unwrap_or(0))
                .collect();
            let logits = model.decode_step(&params, &mut state, &toks).unwrap();
            for i in 0..lens.len() {
                let t = prefix[i] + step;
                if t < lens[i] {
                    let e = max_rel_err(
                        &logits[i * vocab..(i + 1) * vocab],
                        &full[i][t * vocab..(t + 1) * vocab],
                    );
                    assert!(e < 1e-10, "seq {i} position {t}: rel err {e}");
                    worst = worst.max(e);
                }
            }
        }
        assert!(worst < 1e-10, "worst rel err {worst}");
        eprintln!("prefill + decode vs forward: worst rel err {worst:.2e}");
    }

    /// Decoding from the empty state token by token equals the forward too (prefill of nothing).
    #[test]
    fn decoding_from_the_empty_state_matches_the_forward() {
        let (model, params) = tiny_model(3);
        let vocab = model.config.vocab_size;
        let seq = random_tokens(&mut Rng::new(9), 12, vocab);
        let full = model
            .forward(&params, &seq, &[0, seq.len()])
            .unwrap()
            .logits;
        let mut state = model.empty_state::<f64>(1);
        for (t, &tok) in seq.iter().enumerate() {
            let l = model.decode_step(&params, &mut state, &[tok]).unwrap();
            assert!(max_rel_err(&l, &full[t * vocab..(t + 1) * vocab]) < 1e-10);
        }
        // The prefill state of the whole sequence equals the stepped one.
        let (_, pre) = model.prefill(&params, &seq, &[0, seq.len()]).unwrap();
        for (a, b) in pre.layers.iter().zip(&state.layers) {
            // Equal up to round-off: the projections run as GEMMs of different heights.
            for (x, y) in [
                (&a.conv_q, &b.conv_q),
                (&a.conv_k, &b.conv_k),
                (&a.conv_v, &b.conv_v),
                (&a.state, &b.state),
            ] {
                assert!(max_rel_err(x, y) < 1e-10);
            }
        }
    }

    /// The CPU stepper: prefill, then steps, give the full forward's logits at each position.
    #[test]
    fn cpu_stepper_matches_the_forward() {
        let (model, params) = tiny_model(4);
        let vocab = model.config.vocab_size;
        let seq = random_tokens(&mut Rng::new(21), 30, vocab);
        let full = model
            .forward(&params, &seq, &[0, seq.len()])
            .unwrap()
            .logits;
        let at = |t: usize| &full[t * vocab..(t + 1) * vocab];
        let mut st = CpuStepper::new(&model, &params);
        assert!(st.step(1).is_err(), "a step before the prefill is an error");
        let p = 17;
        let l = st.prefill(&seq[..p]).unwrap();
        assert!(max_rel_err(&l, at(p - 1)) < 1e-10);
        for (t, &tok) in seq.iter().enumerate().skip(p) {
            let l = st.step(tok).unwrap();
            assert!(max_rel_err(&l, at(t)) < 1e-10, "position {t}");
        }
        assert_eq!(st.state().unwrap().positions, vec![seq.len()]);
        // A second prefill starts over.
        let l = st.prefill(&seq[..3]).unwrap();
        assert!(max_rel_err(&l, at(2)) < 1e-10);
    }

    #[test]
    fn infer_hidden_matches_forward_logits() {
        let (model, params) = tiny_model(4);
        let toks = random_tokens(&mut Rng::new(3), 20, model.config.vocab_size);
        let cu = [0, 7, 20];
        let a = model.forward(&params, &toks, &cu).unwrap().logits;
        let h = model.infer_hidden(&params, &toks, &cu).unwrap();
        assert!(max_rel_err(&model.logits_of(&params, &h), &a) < 1e-12);
    }

    #[test]
    fn bad_decode_inputs_are_errors() {
        let (model, params) = tiny_model(4);
        let err = model.prefill(&params, &[1, 2], &[0, 0, 2]).err().unwrap();
        assert!(err.to_string().contains("empty"), "{err}");
        let mut st = model.empty_state::<f64>(2);
        let err = model.decode_step(&params, &mut st, &[1]).err().unwrap();
        assert!(err.to_string().contains("2 sequences"), "{err}");
        let err = model
            .decode_step(&params, &mut st, &[1, 999])
            .err()
            .unwrap();
        assert!(err.to_string().contains("999"), "{err}");
    }

    #[test]
    fn generation_stops_at_max_tokens_or_a_stop_token_and_is_seeded() {
        let (model, params) = tiny_model(4);
        let mut opts = GenerateOptions {
            max_tokens: 6,
            sampler: Sampler {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
            },
            stop_tokens: vec![],
            seed: 11,
        };
        let mut seen = Vec::new();
        let g = generate(&model, &params, &[1, 2, 3], &opts, &mut |t| {
            seen.push(t);
            Ok(())
        })
        .unwrap();
        assert_eq!(g.tokens.len(), 6);
        assert_eq!(g.stop, StopReason::MaxTokens);
        assert_eq!(seen, g.tokens);
        let again = generate(&model, &params, &[1, 2, 3], &opts, &mut |_| Ok(())).unwrap();
        assert_eq!(again, g);
        // Greedy generation equals argmax of the full forward, position by position.
        opts.sampler = Sampler::greedy();
        let g = generate(&model, &params, &[1, 2, 3], &opts, &mut |_| Ok(())).unwrap();
        let mut seq = vec![1u32, 2, 3];
        for &t in &g.tokens {
            let l = model
                .forward(&params, &seq, &[0, seq.len()])
                .unwrap()
                .logits;
            let v = model.config.vocab_size;
            assert_eq!(t, super::super::sample::argmax(&l[l.len() - v..]));
            seq.push(t);
        }
        // Stopping at the second generated token.
        opts.stop_tokens = vec![g.tokens[1]];
        let s = generate(&model, &params, &[1, 2, 3], &opts, &mut |_| Ok(())).unwrap();
        assert_eq!(s.stop, StopReason::StopToken(g.tokens[1]));
        assert!(s.tokens.len() <= 1);
    }
}
