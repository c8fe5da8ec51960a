//! The Gated DeltaNet language model: embedding, pre-norm blocks (RMSNorm → GDN mixer →
//! residual; RMSNorm → SwiGLU MLP → residual), final RMSNorm, LM head (tied or not), and
//! cross-entropy. Forward keeps what backward needs; backward runs the blocks in reverse.

use super::config::ModelConfig;
use super::mixer::{self, MixerCache, MixerDims, MixerParams};
use super::nn;
use super::params::{Kind, ParamLayout};
use crate::tensor::{Elem, Rng};
use anyhow::{ensure, Result};
use std::ops::Range;

#[derive(Clone, Debug)]
struct BlockParams {
    attn_norm: Range<usize>,
    mixer: MixerParams,
    mlp_norm: Range<usize>,
    gate_proj: Range<usize>,
    up_proj: Range<usize>,
    down_proj: Range<usize>,
}

/// A model: its config and where each parameter lives in the flat buffer.
#[derive(Clone, Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub layout: ParamLayout,
    dims: MixerDims,
    embeddings: Range<usize>,
    blocks: Vec<BlockParams>,
    norm: Range<usize>,
    /// `None` when tied to the embeddings.
    lm_head: Option<Range<usize>>,
}

struct BlockCache<F> {
    x_in: Vec<F>,
    rstd1: Vec<F>,
    mixer: MixerCache<F>,
    x_mid: Vec<F>,
    rstd2: Vec<F>,
    h2: Vec<F>,
    gate: Vec<F>,
    up: Vec<F>,
    act: Vec<F>,
}

/// Everything one forward pass keeps for its backward, and the logits.
pub struct Activations<F> {
    tokens: Vec<u32>,
    cu_seqlens: Vec<usize>,
    blocks: Vec<BlockCache<F>>,
    x_final: Vec<F>,
    rstd_final: Vec<F>,
    normed_final: Vec<F>,
    /// [tokens, vocab]
    pub logits: Vec<F>,
}

impl Model {
    pub fn new(config: ModelConfig) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let (d, inter) = (c.hidden_size, c.intermediate_size);
        let dims = MixerDims::of(c);
        let mut layout = ParamLayout::default();
        let embeddings = layout.push(
            "model.embeddings.weight".into(),
            vec![c.vocab_size, d],
            Kind::Embedding,
        );
        let blocks = (0..c.num_hidden_layers)
            .map(|i| {
                let p = |s: &str| format!("model.layers.{i}.{s}");
                let attn_norm = layout.push(p("attn_norm.weight"), vec![d], Kind::Norm);
                let mixer = MixerParams::register(&mut layout, i, dims, c.b_proj_bias);
                BlockParams {
                    attn_norm,
                    mixer,
                    mlp_norm: layout.push(p("mlp_norm.weight"), vec![d], Kind::Norm),
                    gate_proj: layout.push(p("mlp.gate_proj.weight"), vec![inter, d], Kind::Linear),
                    up_proj: layout.push(p("mlp.up_proj.weight"), vec![inter, d], Kind::Linear),
                    down_proj: layout.push(
                        p("mlp.down_proj.weight"),
                        vec![d, inter],
                        Kind::LinearOut,
                    ),
                }
            })
            .collect();
        let norm = layout.push("model.norm.weight".into(), vec![d], Kind::Norm);
        let lm_head = (!c.tie_word_embeddings)
            .then(|| layout.push("lm_head.weight".into(), vec![c.vocab_size, d], Kind::Linear));
        Ok(Model {
            config,
            layout,
            dims,
            embeddings,
            blocks,
            norm,
            lm_head,
        })
    }

    pub fn num_params(&self) -> usize {
        self.layout.num_params()
    }

    pub fn init_params<F: Elem>(&self, rng: &mut Rng) -> Vec<F> {
        self.layout.init(&self.config, rng)
    }

    fn head(&self) -> &Range<usize> {
        self.lm_head.as_ref().unwrap_or(&self.embeddings)
    }

    /// Forward pass over `tokens` packed by `cu_seqlens`; computes the logits.
    pub fn forward<F: Elem>(
        &self,
        params: &[F],
        tokens: &[u32],
        cu_seqlens: &[usize],
    ) -> Result<Activations<F>> {
        let c = &self.config;
        let (d, inter, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        ensure!(
            params.len() == self.layout.total,
            "parameter buffer has {} values, the model needs {}",
            params.len(),
            self.layout.total
        );
        ensure!(
            cu_seqlens.first() == Some(&0)
                && cu_seqlens.last() == Some(&tokens.len())
                && cu_seqlens.windows(2).all(|w| w[0] <= w[1]),
            "cu_seqlens must increase from 0 to the number of tokens ({})",
            tokens.len()
        );
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            anyhow::bail!("token id {t} is outside the model's vocabulary of {vocab}");
        }
        let n = tokens.len();
        let p = |r: &Range<usize>| &params[r.clone()];
        let mut x = nn::embedding_fwd(p(&self.embeddings), tokens, d);
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let (h1, rstd1) = nn::rmsnorm_fwd(&x, p(&b.attn_norm), d, c.norm_eps);
            let (mix, mixer) = mixer::forward(&b.mixer, self.dims, params, &h1, cu_seqlens);
            let x_mid: Vec<F> = x.iter().zip(&mix).map(|(&a, &m)| a + m).collect();
            let (h2, rstd2) = nn::rmsnorm_fwd(&x_mid, p(&b.mlp_norm), d, c.norm_eps);
            let gate = nn::linear_fwd(&h2, p(&b.gate_proj), n, d, inter);
            let up = nn::linear_fwd(&h2, p(&b.up_proj), n, d, inter);
            let act: Vec<F> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| nn::silu(g) * u)
                .collect();
            let mlp = nn::linear_fwd(&act, p(&b.down_proj), n, inter, d);
            let x_out = x_mid.iter().zip(&mlp).map(|(&a, &m)| a + m).collect();
            blocks.push(BlockCache {
                x_in: std::mem::replace(&mut x, x_out),
                rstd1,
                mixer,
                x_mid,
                rstd2,
                h2,
                gate,
                up,
                act,
            });
        }
        let (normed_final, rstd_final) = nn::rmsnorm_fwd(&x, p(&self.norm), d, c.norm_eps);
        let logits = nn::linear_fwd(&normed_final, p(self.head()), n, d, vocab);
        Ok(Activations {
            tokens: tokens.to_vec(),
            cu_seqlens: cu_seqlens.to_vec(),
            blocks,
            x_final: x,
            rstd_final,
            normed_final,
            logits,
        })
    }

    /// Backward of `scale`·(mean cross-entropy over the `count` counted targets): accumulates into
    /// `grads` (same layout as the parameters). Consumes the activations (the logits buffer is
    /// reused for their gradient).
    pub fn backward<F: Elem>(
        &self,
        params: &[F],
        acts: Activations<F>,
        targets: &[u32],
        count: usize,
        scale: f64,
        grads: &mut [F],
    ) {
        let c = &self.config;
        let (d, inter, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let n = acts.tokens.len();
        let p = |r: &Range<usize>| &params[r.clone()];
        let mut dlogits = acts.logits;
        nn::cross_entropy_bwd_inplace(&mut dlogits, targets, vocab, count, scale);
        let dnormed = nn::linear_bwd(
            &acts.normed_final,
            p(self.head()),
            &dlogits,
            n,
            d,
            vocab,
            &mut grads[self.head().clone()],
        );
        drop(dlogits);
        let mut dx = nn::rmsnorm_bwd(
            &acts.x_final,
            p(&self.norm),
            &acts.rstd_final,
            &dnormed,
            d,
            &mut grads[self.norm.clone()],
        );
        for (b, bc) in self.blocks.iter().zip(acts.blocks).rev() {
            // MLP: x_out = x_mid + down(silu(gate) ⊙ up)
            let dact = nn::linear_bwd(
                &bc.act,
                p(&b.down_proj),
                &dx,
                n,
                inter,
                d,
                &mut grads[b.down_proj.clone()],
            );
            let dgate: Vec<F> = dact
                .iter()
                .zip(&bc.gate)
                .zip(&bc.up)
                .map(|((&da, &g), &u)| da * u * nn::silu_grad(g))
                .collect();
            let dup: Vec<F> = dact
                .iter()
                .zip(&bc.gate)
                .map(|(&da, &g)| da * nn::silu(g))
                .collect();
            let mut dh2 = nn::linear_bwd(
                &bc.h2,
                p(&b.gate_proj),
                &dgate,
                n,
                d,
                inter,
                &mut grads[b.gate_proj.clone()],
            );
            let dh2_up = nn::linear_bwd(
                &bc.h2,
                p(&b.up_proj),
                &dup,
                n,
                d,
                inter,
                &mut grads[b.up_proj.clone()],
            );
            dh2.iter_mut().zip(&dh2_up).for_each(|(a, &b)| *a += b);
            let dmid = nn::rmsnorm_bwd(
                &bc.x_mid,
                p(&b.mlp_norm),
                &bc.rstd2,
                &dh2,
                d,
                &mut grads[b.mlp_norm.clone()],
            );
            dx.iter_mut().zip(&dmid).for_each(|(a, &b)| *a += b);
            // Mixer: x_mid = x_in + mixer(norm(x_in))
            let dh1 = mixer::backward(
                &b.mixer,
                self.dims,
                params,
                &bc.mixer,
                &dx,
                &acts.cu_seqlens,
                grads,
            );
            let din = nn::rmsnorm_bwd(
                &bc.x_in,
                p(&b.attn_norm),
                &bc.rstd1,
                &dh1,
                d,
                &mut grads[b.attn_norm.clone()],
            );
            dx.iter_mut().zip(&din).for_each(|(a, &b)| *a += b);
        }
        nn::embedding_bwd(&acts.tokens, &dx, d, &mut grads[self.embeddings.clone()]);
    }

    /// Mean cross-entropy of a forward pass against `targets`: (loss, counted positions).
    pub fn loss<F: Elem>(&self, acts: &Activations<F>, targets: &[u32]) -> (f64, usize) {
        nn::cross_entropy(&acts.logits, targets, self.config.vocab_size)
    }
}

/// Offsets of `batch` sequences of `seq_len` tokens laid end to end.
pub fn uniform_cu_seqlens(batch: usize, seq_len: usize) -> Vec<usize> {
    (0..=batch).map(|i| i * seq_len).collect()
}

// ---------------------------------------------------------------------------------------------
// Inference-only passes (no backward cache), used by prefill / decode (model::decode) and by
// evaluation. The mixer is supplied by the caller, so one block loop serves the chunked prefill
// and the recurrent decode step.

/// A block's mixer as seen by an inference pass: (layer index, its parameters, its sizes,
/// the normed input [n, d]) → the mixer output [n, d].
pub(crate) type MixerFn<'a, F> = dyn FnMut(usize, &MixerParams, MixerDims, &[F]) -> Vec<F> + 'a;

impl Model {
    /// The mixer sizes of every layer.
    pub fn mixer_dims(&self) -> MixerDims {
        self.dims
    }

    /// Checks the parameter buffer and token ids as `forward` does.
    pub(crate) fn check_inputs<F>(&self, params: &[F], tokens: &[u32]) -> Result<()> {
        ensure!(
            params.len() == self.layout.total,
            "parameter buffer has {} values, the model needs {}",
            params.len(),
            self.layout.total
        );
        let vocab = self.config.vocab_size;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            anyhow::bail!("token id {t} is outside the model's vocabulary of {vocab}");
        }
        Ok(())
    }

    /// Embedding → blocks (with `mix` as each mixer) → final RMSNorm. Returns the normed final
    /// hidden states [tokens, d]; keeps nothing for a backward.
    pub(crate) fn hidden_with<F: Elem>(
        &self,
        params: &[F],
        tokens: &[u32],
        mix: &mut MixerFn<'_, F>,
    ) -> Result<Vec<F>> {
        self.check_inputs(params, tokens)?;
        let c = &self.config;
        let (d, inter) = (c.hidden_size, c.intermediate_size);
        let n = tokens.len();
        let p = |r: &Range<usize>| &params[r.clone()];
        let mut x = nn::embedding_fwd(p(&self.embeddings), tokens, d);
        for (i, b) in self.blocks.iter().enumerate() {
            let (h1, _) = nn::rmsnorm_fwd(&x, p(&b.attn_norm), d, c.norm_eps);
            let m = mix(i, &b.mixer, self.dims, &h1);
            x.iter_mut().zip(&m).for_each(|(a, &v)| *a += v);
            let (h2, _) = nn::rmsnorm_fwd(&x, p(&b.mlp_norm), d, c.norm_eps);
            let mut act = nn::linear_fwd(&h2, p(&b.gate_proj), n, d, inter);
            let up = nn::linear_fwd(&h2, p(&b.up_proj), n, d, inter);
            act.iter_mut()
                .zip(&up)
                .for_each(|(g, &u)| *g = nn::silu(*g) * u);
            let mlp = nn::linear_fwd(&act, p(&b.down_proj), n, inter, d);
            x.iter_mut().zip(&mlp).for_each(|(a, &v)| *a += v);
        }
        Ok(nn::rmsnorm_fwd(&x, p(&self.norm), d, c.norm_eps).0)
    }

    /// LM-head logits [rows, vocab] of final hidden states [rows, d] (from [`Model::infer_hidden`]
    /// or prefill), so that callers can bound the memory by projecting a few rows at a time.
    pub fn logits_of<F: Elem>(&self, params: &[F], hidden: &[F]) -> Vec<F> {
        let (d, vocab) = (self.config.hidden_size, self.config.vocab_size);
        nn::linear_fwd(
            hidden,
            &params[self.head().clone()],
            hidden.len() / d,
            d,
            vocab,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::IGNORE;
    use crate::model::nn::tests::fd;
    use crate::tensor::max_rel_err;

    /// The tiny preset as `edit` leaves it, parameters drawn from `seed`.
    fn fd_check(seed: u64, edit: impl Fn(&mut ModelConfig)) {
        let mut cfg = ModelConfig::preset("tiny").unwrap();
        edit(&mut cfg);
        let label = format!("{cfg:?}");
        let model = Model::new(cfg).unwrap();
        let mut rng = Rng::new(seed);
        let mut params: Vec<f64> = model.init_params(&mut rng);
        // Larger than the init scale so every path carries a visible gradient.
        params.iter_mut().for_each(|p| *p += 0.3 * rng.normal());
        let tokens = [3u32, 1, 16, 2, 7, 7, 0, 5, 9, 11];
        let targets = [1u32, 16, IGNORE, 7, 7, 0, 5, 9, 11, 3];
        let cu = [0, 4, 10];
        let loss = |p: &[f64]| {
            let a = model.forward(p, &tokens, &cu).unwrap();
            model.loss(&a, &targets).0
        };
        let acts = model.forward(&params, &tokens, &cu).unwrap();
        let (_, count) = model.loss(&acts, &targets);
        let mut grads = vec![0.0; params.len()];
        model.backward(&params, acts, &targets, count, 1.0, &mut grads);
        let numeric = fd(&params, &loss);
        let mut worst = 0.0f64;
        for info in &model.layout.params {
            let e = max_rel_err(&grads[info.range()], &numeric[info.range()]);
            assert!(e < 1e-6, "{}: rel err {e}", info.name);
            worst = worst.max(e);
        }
        eprintln!("whole model ({label}): worst per-tensor rel err {worst:.2e}");
        assert!(max_rel_err(&grads, &numeric) < 1e-6);
    }

    #[test]
    fn whole_model_gradient_matches_finite_differences_untied() {
        fd_check(21, |_| {});
    }

    #[test]
    fn whole_model_gradient_matches_finite_differences_tied_with_b_bias() {
        fd_check(21, |c| {
            c.tie_word_embeddings = true;
            c.b_proj_bias = true;
        });
    }

    /// β = 2·sigmoid(b) (FLA's allow_neg_eigval) through the whole model.
    #[test]
    fn whole_model_gradient_matches_finite_differences_with_neg_eigval() {
        fd_check(21, |c| {
            c.b_proj_bias = true;
            c.allow_neg_eigval = true;
        });
    }

    /// GVA: 2 q/k heads serving 6 value heads (3 each), so dq and dk sum over groups. (Seed 21
    /// draws a layer-0 q row of K = 4 with a near-zero norm, where the L2 norm's finite
    /// differences lose five digits; seed 22 does not.)
    #[test]
    fn whole_model_gradient_matches_finite_differences_with_gva() {
        fd_check(22, |c| c.num_v_heads = Some(6));
    }

    /// GVA is the plain model with each q/k head's weights repeated per value head: the same
    /// logits, and each q/k weight's gradient is the sum of its copies' gradients.
    #[test]
    fn gva_equals_the_model_with_repeated_qk_heads() {
        let mut gva_cfg = ModelConfig::preset("tiny").unwrap();
        gva_cfg.num_v_heads = Some(4);
        let gva = Model::new(gva_cfg.clone()).unwrap();
        let mut plain_cfg = gva_cfg;
        plain_cfg.num_heads = 4;
        plain_cfg.num_v_heads = None;
        let plain = Model::new(plain_cfg).unwrap();
        let mut rng = Rng::new(5);
        let mut p_gva: Vec<f64> = gva.init_params(&mut rng);
        p_gva.iter_mut().for_each(|p| *p += 0.3 * rng.normal());
        // The plain model's parameters: q/k rows (projections, convs) repeated per value head.
        let (dk, g) = (gva.config.head_dim, 2);
        let mut p_plain = vec![0.0; plain.layout.total];
        for info in &plain.layout.params {
            let src = gva.layout.get(&info.name).unwrap();
            let from = &p_gva[src.range()];
            let to = &mut p_plain[info.range()];
            if info.shape == src.shape {
                to.copy_from_slice(from);
            } else {
                // [H·dk, ...] → [H·g·dk, ...]: head blocks of dk rows, each repeated g times.
                let block = from.len() / gva.config.num_heads;
                for (i, dst) in to.chunks_mut(block).enumerate() {
                    dst.copy_from_slice(&from[(i / g) * block..(i / g + 1) * block]);
                }
                assert_eq!(block % dk, 0);
            }
        }
        let tokens = [3u32, 1, 16, 2, 7, 7, 0, 5, 9, 11];
        let targets = [1u32, 16, IGNORE, 7, 7, 0, 5, 9, 11, 3];
        let cu = [0, 4, 10];
        let run = |m: &Model, p: &[f64]| {
            let acts = m.forward(p, &tokens, &cu).unwrap();
            let logits = acts.logits.clone();
            let (_, count) = m.loss(&acts, &targets);
            let mut grads = vec![0.0; p.len()];
            m.backward(p, acts, &targets, count, 1.0, &mut grads);
            (logits, grads)
        };
        let (l_gva, g_gva) = run(&gva, &p_gva);
        let (l_plain, g_plain) = run(&plain, &p_plain);
        assert!(max_rel_err(&l_gva, &l_plain) < 1e-12);
        for info in &gva.layout.params {
            let dst = plain.layout.get(&info.name).unwrap();
            let want: Vec<f64> = if info.shape == dst.shape {
                g_plain[dst.range()].to_vec()
            } else {
                let block = info.range().len() / gva.config.num_heads;
                let copies: Vec<&[f64]> = g_plain[dst.range()].chunks(block).collect();
                (0..gva.config.num_heads)
                    .flat_map(|h| (0..block).map(move |e| (h, e)))
                    .map(|(h, e)| (0..g).map(|c| copies[h * g + c][e]).sum())
                    .collect()
            };
            let e = max_rel_err(&g_gva[info.range()], &want);
            assert!(e < 1e-10, "{}: rel err {e}", info.name);
        }
    }

    #[test]
    fn parameter_counts_match_the_spec() {
        let count = |name: &str| {
            Model::new(ModelConfig::preset(name).unwrap())
                .unwrap()
                .num_params() as f64
                / 1e6
        };
        assert_eq!(format!("{:.1}", count("fla-1.3b")), "1387.3");
        assert_eq!(format!("{:.1}", count("nvlabs-0.4b")), "516.8");
        assert_eq!(format!("{:.1}", count("nvlabs-1.3b")), "1309.3");
    }

    #[test]
    fn out_of_vocabulary_token_is_an_error() {
        let model = Model::new(ModelConfig::preset("tiny").unwrap()).unwrap();
        let params: Vec<f32> = model.init_params(&mut Rng::new(1));
        let err = model
            .forward(&params, &[1, 99], &[0, 2])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("99"), "{err}");
    }
}
