//! Multi-query associative recall (MQAR), the synthetic task of Zoology (Arora et al., 2023,
//! `multiquery_ar`).
//!
//! Each sequence opens with `num_kv_pairs` key–value pairs `k1 v1 k2 v2 …`; every key is then
//! queried exactly once, later in the sequence, and the model must emit the paired value at the
//! position where the query key is its input. Keys come from the lower half of the vocabulary
//! (`[1, vocab/2)`, token 0 is the filler) and values from the upper half (`[vocab/2, vocab)`),
//! both drawn without replacement within a sequence.
//!
//! Layout, before the next-token shift, of a sequence of `seq_len + 1` tokens with `kv` pairs:
//!
//! ```text
//! [k1 v1 … k_kv v_kv | query region of seq_len + 1 − 2·kv tokens]
//! ```
//!
//! The query region has `(seq_len − 2·kv)/2` slots; slot `i` starts at query-region offset `2·i`.
//! Each key picks a distinct slot, drawn without replacement from the power law
//! `p(i) ∝ a·(i+1)^(a−1)` (`a = power_a`; small `a` favours early slots, i.e. short gaps), and is
//! placed at the slot start; its value is the label of the token right after. Then
//! `inputs = examples[..seq_len]` and `targets = labels[1..]`, so the target at the query key's
//! input position is its value and every other target is `IGNORE`. Unfilled input positions are
//! 0, or uniform tokens in `[0, vocab)` when `random_non_queries` is set.

use anyhow::{bail, Result};

use crate::data::{Batch, IGNORE};
use crate::tensor::Rng;

/// The MQAR task's parameters (Zoology's names: `vocab_size`, `input_seq_len`, `num_kv_pairs`,
/// `power_a`, `random_non_queries`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct MqarConfig {
    /// Vocabulary size; keys use `[1, vocab/2)`, values `[vocab/2, vocab)`.
    pub vocab: usize,
    /// Input length of each sequence (even).
    pub seq_len: usize,
    /// Key–value pairs per sequence; each is queried once, so this is also the number of
    /// answer positions per sequence.
    pub num_kv_pairs: usize,
    /// Exponent `a` of the power law over query slots (Zoology's default: 0.01).
    pub power_a: f64,
    /// Fill non-query input positions with random tokens instead of 0.
    pub random_non_queries: bool,
}

impl Default for MqarConfig {
    fn default() -> Self {
        MqarConfig {
            vocab: 8192,
            seq_len: 256,
            num_kv_pairs: 16,
            power_a: 0.01,
            random_non_queries: true,
        }
    }
}

impl MqarConfig {
    /// Checks the constraints of the generator; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        let Self {
            vocab,
            seq_len,
            num_kv_pairs: kv,
            power_a,
            ..
        } = *self;
        if kv == 0 {
            bail!("mqar config: num_kv_pairs must be at least 1");
        }
        if seq_len == 0 || seq_len % 2 != 0 {
            bail!("mqar config: seq_len must be even and positive, got {seq_len}");
        }
        if vocab <= seq_len {
            bail!("mqar config: vocab ({vocab}) must be larger than seq_len ({seq_len})");
        }
        if vocab >= IGNORE as usize {
            bail!("mqar config: vocab ({vocab}) must be below {IGNORE}");
        }
        if kv.checked_mul(4).is_none_or(|x| x > seq_len) {
            bail!("mqar config: num_kv_pairs ({kv}) must satisfy 4*num_kv_pairs <= seq_len ({seq_len})");
        }
        if kv > vocab / 2 - 1 {
            bail!(
                "mqar config: num_kv_pairs ({kv}) exceeds the {} distinct keys that vocab ({vocab}) allows (vocab/2 - 1)",
                vocab / 2 - 1
            );
        }
        if !power_a.is_finite() || power_a <= 0.0 {
            bail!("mqar config: power_a must be a positive finite number, got {power_a}");
        }
        Ok(())
    }
}

/// Draws `k` distinct elements of `pool` into `out` by a partial Fisher–Yates shuffle. `pool` is
/// left permuted, which keeps it a valid pool for the next call.
fn sample_distinct(rng: &mut Rng, pool: &mut [u32], k: usize, out: &mut Vec<u32>) {
    out.clear();
    let n = pool.len();
    for i in 0..k {
        let j = i + rng.below(n - i);
        pool.swap(i, j);
        out.push(pool[i]);
    }
}

/// Draws `k` distinct slot indices from the weights `w` (sequentially, renormalising after each
/// draw, as numpy's `choice(replace=False, p=…)`). `scratch` is overwritten.
fn sample_weighted_distinct(
    rng: &mut Rng,
    w: &[f64],
    k: usize,
    scratch: &mut Vec<f64>,
    out: &mut Vec<usize>,
) {
    scratch.clear();
    scratch.extend_from_slice(w);
    out.clear();
    for _ in 0..k {
        let total: f64 = scratch.iter().sum();
        let mut r = rng.uniform() * total;
        // Fallback for rounding at the very end of the scan: the last slot still available.
        let mut pick = scratch.iter().rposition(|&x| x > 0.0).unwrap_or(0);
        for (i, &x) in scratch.iter().enumerate() {
            if x <= 0.0 {
                continue;
            }
            if r < x {
                pick = i;
                break;
            }
            r -= x;
        }
        scratch[pick] = 0.0;
        out.push(pick);
    }
}

/// Generates `batch` MQAR sequences. Deterministic given the state of `rng`.
///
/// `cfg` should have passed [`MqarConfig::validate`]; an invalid config yields an empty batch
/// (`batch = 0`) instead of panicking.
pub fn generate(cfg: &MqarConfig, rng: &mut Rng, batch: usize) -> Batch {
    let t = cfg.seq_len;
    if cfg.validate().is_err() {
        return Batch {
            batch: 0,
            seq_len: t,
            inputs: Vec::new(),
            targets: Vec::new(),
        };
    }
    let kv = cfg.num_kv_pairs;
    let half = cfg.vocab / 2;
    let ctx = 2 * kv;
    let slots = (t - ctx) / 2;
    let weights: Vec<f64> = (1..=slots)
        .map(|i| cfg.power_a * (i as f64).powf(cfg.power_a - 1.0))
        .collect();

    let mut key_pool: Vec<u32> = (1..half as u32).collect();
    let mut value_pool: Vec<u32> = (half as u32..cfg.vocab as u32).collect();
    let (mut keys, mut values, mut gaps, mut scratch) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());

    let mut filled: Vec<bool> = Vec::with_capacity(t);
    let mut inputs = vec![0u32; batch * t];
    let mut targets = vec![IGNORE; batch * t];
    for b in 0..batch {
        sample_distinct(rng, &mut key_pool, kv, &mut keys);
        sample_distinct(rng, &mut value_pool, kv, &mut values);
        sample_weighted_distinct(rng, &weights, kv, &mut scratch, &mut gaps);

        let inp = &mut inputs[b * t..(b + 1) * t];
        let tgt = &mut targets[b * t..(b + 1) * t];
        for j in 0..kv {
            inp[2 * j] = keys[j];
            inp[2 * j + 1] = values[j];
        }
        filled.clear();
        filled.resize(t, false);
        filled[..ctx].fill(true);
        for j in 0..kv {
            // Unshifted: key at ctx + 2·gap, its label at ctx + 2·gap + 1. After the shift the
            // key stays at input position ctx + 2·gap (< seq_len since gap < slots) and the
            // label moves to target position ctx + 2·gap.
            let pos = ctx + 2 * gaps[j];
            inp[pos] = keys[j];
            tgt[pos] = values[j];
            filled[pos] = true;
        }
        if cfg.random_non_queries {
            for (x, &f) in inp.iter_mut().zip(&filled) {
                if !f {
                    *x = rng.below(cfg.vocab) as u32;
                }
            }
        }
    }
    Batch {
        batch,
        seq_len: t,
        inputs,
        targets,
    }
}

/// Counts answer positions (targets other than `IGNORE`) and how many of them `predictions`
/// (one token per position, laid out like `batch.targets`) gets right. A prediction missing
/// because `predictions` is too short counts as wrong.
pub fn query_accuracy(batch: &Batch, predictions: &[u32]) -> (usize, usize) {
    let mut correct = 0;
    let mut total = 0;
    for (i, &t) in batch.targets.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        total += 1;
        if predictions.get(i) == Some(&t) {
            correct += 1;
        }
    }
    (correct, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vocab: usize, seq_len: usize, kv: usize, random: bool) -> MqarConfig {
        MqarConfig {
            vocab,
            seq_len,
            num_kv_pairs: kv,
            power_a: 0.01,
            random_non_queries: random,
        }
    }

    #[test]
    fn shapes_and_answer_count() {
        for random in [false, true] {
            let c = cfg(256, 64, 8, random);
            let b = generate(&c, &mut Rng::new(1), 5);
            assert_eq!((b.batch, b.seq_len), (5, 64));
            assert_eq!(b.inputs.len(), 5 * 64);
            assert_eq!(b.targets.len(), 5 * 64);
            for row in b.targets.chunks(64) {
                assert_eq!(row.iter().filter(|&&t| t != IGNORE).count(), 8);
            }
            assert!(b.inputs.iter().all(|&x| (x as usize) < 256));
        }
    }

    #[test]
    fn targets_are_the_values_paired_with_the_query_keys() {
        for (random, kv, t) in [(false, 8, 64), (true, 8, 64), (true, 16, 64), (false, 1, 4)] {
            let c = cfg(128, t, kv, random);
            let b = generate(&c, &mut Rng::new(7), 20);
            let half = 64u32;
            for (inp, tgt) in b.inputs.chunks(t).zip(b.targets.chunks(t)) {
                // The context: keys in the lower half (never 0), values in the upper half,
                // keys distinct and values distinct.
                let keys: Vec<u32> = (0..kv).map(|j| inp[2 * j]).collect();
                let vals: Vec<u32> = (0..kv).map(|j| inp[2 * j + 1]).collect();
                assert!(keys.iter().all(|&k| k >= 1 && k < half));
                assert!(vals.iter().all(|&v| v >= half && v < 128));
                let mut ks = keys.clone();
                ks.sort();
                ks.dedup();
                assert_eq!(ks.len(), kv);
                let mut vs = vals.clone();
                vs.sort();
                vs.dedup();
                assert_eq!(vs.len(), kv);
                // No answers inside the context.
                assert!(tgt[..2 * kv].iter().all(|&x| x == IGNORE));
                let mut queried = Vec::new();
                for (p, &target) in tgt.iter().enumerate() {
                    if target == IGNORE {
                        continue;
                    }
                    assert!(p >= 2 * kv && (p - 2 * kv) % 2 == 0);
                    let j = keys
                        .iter()
                        .position(|&k| k == inp[p])
                        .expect("query is a key");
                    assert_eq!(target, vals[j]);
                    queried.push(j);
                }
                queried.sort();
                assert_eq!(
                    queried,
                    (0..kv).collect::<Vec<_>>(),
                    "each key queried once"
                );
                if !random {
                    let answers: Vec<usize> = (0..t).filter(|&p| tgt[p] != IGNORE).collect();
                    for (p, &x) in inp.iter().enumerate().skip(2 * kv) {
                        assert_eq!(x == 0, !answers.contains(&p));
                    }
                }
            }
        }
    }

    #[test]
    fn deterministic_given_seed() {
        let c = cfg(512, 128, 16, true);
        let a = generate(&c, &mut Rng::new(42), 8);
        let b = generate(&c, &mut Rng::new(42), 8);
        let d = generate(&c, &mut Rng::new(43), 8);
        assert_eq!(a, b);
        assert_ne!(a, d);
        // Consecutive draws from one generator differ.
        let mut r = Rng::new(42);
        let x = generate(&c, &mut r, 8);
        let y = generate(&c, &mut r, 8);
        assert_eq!(x, a);
        assert_ne!(x, y);
    }

    #[test]
    fn small_power_a_favours_short_gaps() {
        let c = cfg(1024, 512, 4, false);
        let b = generate(&c, &mut Rng::new(3), 200);
        let slots = (512 - 8) / 2;
        let mut early = 0;
        let mut n = 0;
        for tgt in b.targets.chunks(512) {
            for (p, &x) in tgt.iter().enumerate() {
                if x != IGNORE {
                    n += 1;
                    if (p - 8) / 2 < slots / 4 {
                        early += 1;
                    }
                }
            }
        }
        // p(i) ∝ i^-0.99 puts well over a quarter of the mass on the first quarter of slots.
        assert!(early * 2 > n, "early {early} of {n}");
    }

    #[test]
    fn query_accuracy_counts() {
        let c = cfg(128, 32, 4, true);
        let b = generate(&c, &mut Rng::new(5), 3);
        let perfect = b
            .targets
            .iter()
            .map(|&t| if t == IGNORE { 0 } else { t })
            .collect::<Vec<_>>();
        assert_eq!(query_accuracy(&b, &perfect), (12, 12));
        assert_eq!(query_accuracy(&b, &vec![0; 96]), (0, 12));
        let mut one_wrong = perfect.clone();
        let p = b.targets.iter().position(|&t| t != IGNORE).unwrap();
        one_wrong[p] = 1;
        assert_eq!(query_accuracy(&b, &one_wrong), (11, 12));
        assert_eq!(query_accuracy(&b, &[]), (0, 12));
    }

    #[test]
    fn validate_names_the_field() {
        assert!(cfg(8192, 256, 16, true).validate().is_ok());
        assert!(MqarConfig::default().validate().is_ok());
        let cases = [
            (cfg(256, 63, 4, true), "seq_len"),
            (cfg(256, 0, 4, true), "seq_len"),
            (cfg(64, 64, 4, true), "vocab"),
            (cfg(256, 64, 17, true), "num_kv_pairs"),
            (cfg(256, 64, 0, true), "num_kv_pairs"),
            (
                MqarConfig {
                    power_a: 0.0,
                    ..cfg(256, 64, 4, true)
                },
                "power_a",
            ),
            (
                MqarConfig {
                    power_a: f64::NAN,
                    ..cfg(256, 64, 4, true)
                },
                "power_a",
            ),
        ];
        for (c, field) in cases {
            let e = c.validate().expect_err(field).to_string();
            assert!(e.contains(field), "{e}");
            // An invalid config never panics the generator.
            assert_eq!(generate(&c, &mut Rng::new(0), 2).batch, 0);
        }
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = cfg(300, 64, 5, false);
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<MqarConfig>(&s).unwrap(), c);
    }
}
