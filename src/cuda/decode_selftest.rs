//! The GPU decoder (`cuda::decode::GpuDecoder`) against the CPU recurrent decode
//! (`Model::prefill` / `Model::decode_step`, f64 on the same bf16-rounded parameters): for N = 3
//! sequences, the logits after a 20-token prompt and after each of 10 decoded tokens (the CPU's
//! greedy choices, fed to both), then the conv caches and recurrent states. The configurations
//! of `model_selftest` (`VARIANTS`: untied without b_proj bias, tied with it, untied with it
//! under allow_neg_eigval, and GVA).
//! `gdn selftest --device cuda --filter decode_model`.

use super::decode::GpuDecoder;
use super::model_selftest::{
    logits_noise, logits_row, test_config, test_params, ModelVariant, VARIANTS,
};
use super::selftest::Row;
use super::Gpu;
use crate::model::lm::Model;
use crate::model::sample::argmax;
use crate::tensor::{max_rel_err, Rng};
use anyhow::Result;

/// bf16 weights and activations through the whole model: a token's logits row allows the larger
/// of this and its noise probe's multiple (`model_selftest::logits_row`; session 23 call 1: 3.1e-2
/// at seed 104, where the flat 3e-2 failed).
const TOL_LOGITS: f64 = 3e-2;
/// The bf16 conv caches (raw projections).
const TOL_CONV: f64 = 3e-2;
/// The fp32 recurrent states: sums of outer products of the bf16 k and v, which carry the conv
/// caches' error (layer 1 also layer 0's output error), so the same tolerance (session 4 call 1:
/// 1.06e-2 in layer 1; a wrong gate or a lost token is O(1)).
const TOL_STATE: f64 = 3e-2;

const N: usize = 3;
const PROMPT: usize = 20;
const STEPS: usize = 10;

/// All rows from `seed`.
pub fn run_with(gpu: &Gpu, seed: u64) -> Result<Vec<Row>> {
    let mut rows = vec![];
    let mut rng = Rng::new(seed ^ 0xdec0de);
    for v in VARIANTS {
        rows.extend(check(gpu, &mut rng, v)?);
    }
    Ok(rows)
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn check(gpu: &Gpu, rng: &mut Rng, v: ModelVariant) -> Result<Vec<Row>> {
    let cfg = test_config(v)?;
    let model = Model::new(cfg.clone())?;
    let params = test_params(&model, rng);
    let p64 = f64s(&params);
    let vocab = cfg.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..N)
        .map(|_| (0..PROMPT).map(|_| rng.below(vocab) as u32).collect())
        .collect();
    let tag = format!(
        "N={N} T={PROMPT}+{STEPS} d={} L={} H={} K={} V={} {}",
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_heads,
        cfg.head_dim,
        cfg.head_v_dim(),
        v
    );

    // CPU reference (chunked prefill, then recurrent steps), f64.
    let packed: Vec<u32> = prompts.concat();
    let cu: Vec<usize> = (0..=N).map(|i| i * PROMPT).collect();
    let (ref_pre, mut ref_state) = model.prefill(&p64, &packed, &cu)?;
    let mut ref_steps = Vec::with_capacity(STEPS);
    let mut fed = Vec::with_capacity(STEPS);
    let mut last = ref_pre.clone();
    for _ in 0..STEPS {
        let toks: Vec<u32> = last.chunks(vocab).map(argmax).collect();
        last = model.decode_step(&p64, &mut ref_state, &toks)?;
        ref_steps.extend_from_slice(&last);
        fed.push(toks);
    }

    // Each logits row's noise as the reference itself sees it: the same prompts and fed tokens.
    let mut noise = logits_noise(
        &params,
        &[&ref_pre, &ref_steps],
        vocab,
        // A stream of its own (the problems drawn after this one stay those of earlier versions).
        &mut Rng::new(rng.clone().next_u64() ^ 0x10617),
        |p| {
            let (pre, mut state) = model.prefill(p, &packed, &cu)?;
            let mut steps = Vec::with_capacity(ref_steps.len());
            for toks in &fed {
                steps.extend(model.decode_step(p, &mut state, toks)?);
            }
            Ok(vec![pre, steps])
        },
    )?;
    let (noise_steps, noise_pre) = (noise.remove(1), noise.remove(0));

    // GPU: the prompt token by token, then the same tokens.
    let mut dec = GpuDecoder::new(gpu, &model, &params, N)?;
    let views: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let pre = f64s(&dec.prefill(&views)?);
    let mut steps = Vec::with_capacity(STEPS * N * vocab);
    for toks in &fed {
        dec.step(toks)?;
        steps.extend(f64s(&dec.logits()?));
    }
    let st = dec.state()?;

    let mut rows = vec![
        logits_row(
            "decode_model prefill logits",
            &tag,
            (&pre, &ref_pre),
            vocab,
            &noise_pre,
            TOL_LOGITS,
        ),
        logits_row(
            &format!("decode_model logits, {STEPS} steps"),
            &tag,
            (&steps, &ref_steps),
            vocab,
            &noise_steps,
            TOL_LOGITS,
        ),
    ];
    let positions_ok = st.positions == ref_state.positions;
    for (l, (g, r)) in st.layers.iter().zip(&ref_state.layers).enumerate() {
        for (name, got, want, tol) in [
            ("conv_q cache", &g.conv_q, &r.conv_q, TOL_CONV),
            ("conv_k cache", &g.conv_k, &r.conv_k, TOL_CONV),
            ("conv_v cache", &g.conv_v, &r.conv_v, TOL_CONV),
            ("state", &g.state, &r.state, TOL_STATE),
        ] {
            let err = if positions_ok {
                max_rel_err(&f64s(got), want)
            } else {
                f64::INFINITY
            };
            rows.push(Row {
                op: format!("decode_model layer {l} {name}"),
                shape: tag.clone(),
                max_rel_err: err,
                tolerance: tol,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::model::check_model;

    /// The self-test models fit the kernels; a head dim they are not built for is refused (the
    /// check `gdn generate --device auto` falls back to the CPU on).
    #[test]
    fn check_model_accepts_the_test_models_and_refuses_other_head_dims() {
        for v in VARIANTS {
            check_model(&Model::new(test_config(v).unwrap()).unwrap()).unwrap();
        }
        let mut c = test_config(ModelVariant::default()).unwrap();
        c.head_dim = 32;
        let err = check_model(&Model::new(c).unwrap()).err().unwrap();
        assert!(err.to_string().contains("K=32"), "{err}");
    }
}
