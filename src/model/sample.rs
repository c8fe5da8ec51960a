//! Next-token sampling (greedy, temperature, top-k, top-p) and text codecs (text ↔ token ids,
//! with an incremental decoder that only emits complete UTF-8).

use crate::tensor::{Elem, Rng};
use anyhow::{ensure, Result};

/// Index of the largest logit (the first one on ties; NaNs never win).
pub fn argmax<F: Elem>(logits: &[F]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f64::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        let v = v.f64();
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// How to pick the next token from logits.
///
/// Order of operations (as Hugging Face's `generate`): logits / temperature → softmax →
/// keep the `top_k` most likely → of those, keep the smallest most-likely set whose mass is at
/// least `top_p` → renormalise → draw.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampler {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no nucleus cut; must lie in (0, 1].
    pub top_p: f64,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

impl Sampler {
    pub fn greedy() -> Self {
        Sampler {
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Rejects out-of-range settings, naming the option.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.temperature >= 0.0 && self.temperature.is_finite(),
            "`temperature` must be a finite number ≥ 0, got {}",
            self.temperature
        );
        ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "`top_p` must lie in (0, 1], got {}",
            self.top_p
        );
        Ok(())
    }

    /// The distribution a draw comes from: (token, probability) pairs, most likely first (ties
    /// by token id), probabilities summing to 1. Greedy gives the single argmax token.
    pub fn distribution<F: Elem>(&self, logits: &[F]) -> Vec<(u32, f64)> {
        if self.is_greedy() || logits.is_empty() {
            return vec![(argmax(logits), 1.0)];
        }
        let t = self.temperature;
        let scaled: Vec<f64> = logits
            .iter()
            .map(|&v| {
                let v = v.f64() / t;
                if v.is_nan() {
                    f64::NEG_INFINITY
                } else {
                    v
                }
            })
            .collect();
        let m = scaled.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        if !m.is_finite() {
            // All −∞ (or +∞ somewhere): nothing sensible to sample from but the argmax.
            return vec![(argmax(logits), 1.0)];
        }
        let mut probs: Vec<(u32, f64)> = scaled
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, (v - m).exp()))
            .filter(|&(_, p)| p > 0.0)
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.top_k > 0 {
            probs.truncate(self.top_k);
        }
        let z: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= z);
        if self.top_p < 1.0 {
            let mut mass = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                mass += p.1;
                // A tiny tolerance so that e.g. 0.5 + 0.3 counts as reaching 0.8.
                if mass >= self.top_p - 1e-12 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let z: f64 = probs.iter().map(|p| p.1).sum();
            probs.iter_mut().for_each(|p| p.1 /= z);
        }
        probs
    }

    /// Draws the next token.
    pub fn sample<F: Elem>(&self, logits: &[F], rng: &mut Rng) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        let dist = self.distribution(logits);
        let mut u = rng.uniform();
        for &(t, p) in &dist {
            if u < p {
                return t;
            }
            u -= p;
        }
        dist.last().map(|d| d.0).unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Text codecs

/// Text ↔ token ids. The byte codec is built in; a Hugging Face `tokenizer.json` codec can
/// implement the same trait.
pub trait TextCodec {
    /// Number of token ids the codec can produce.
    fn vocab_size(&self) -> usize;
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Encodes raw file contents: UTF-8 text by default; the byte codec takes any bytes.
    fn encode_bytes(&self, bytes: &[u8]) -> Result<Vec<u32>> {
        let text =
            std::str::from_utf8(bytes).map_err(|e| anyhow::anyhow!("not UTF-8 text ({e})"))?;
        self.encode(text)
    }
    /// Decodes ids to text; byte sequences that are not (yet) valid UTF-8 become U+FFFD.
    fn decode(&self, tokens: &[u32]) -> String;
    /// The end-of-sequence id, if the codec has one.
    fn eos(&self) -> Option<u32> {
        None
    }
}

/// Byte-level codec: token = UTF-8 byte (vocabulary 256, no EOS).
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteCodec;

impl TextCodec for ByteCodec {
    fn vocab_size(&self) -> usize {
        256
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn encode_bytes(&self, bytes: &[u8]) -> Result<Vec<u32>> {
        Ok(bytes.iter().map(|&b| u32::from(b)).collect())
    }
    fn decode(&self, tokens: &[u32]) -> String {
        let bytes: Vec<u8> = tokens.iter().map(|&t| t.min(255) as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// A Hugging Face `tokenizer.json` tokeniser: encodes without BOS/EOS, decodes without special
/// tokens; ids it cannot decode come out as U+FFFD.
impl TextCodec for crate::data::tokenizer::Tokenizer {
    fn vocab_size(&self) -> usize {
        crate::data::tokenizer::Tokenizer::vocab_size(self)
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        crate::data::tokenizer::Tokenizer::encode(self, text)
    }
    fn decode(&self, tokens: &[u32]) -> String {
        crate::data::tokenizer::Tokenizer::decode(self, tokens, true)
            .unwrap_or_else(|_| "\u{FFFD}".to_string())
    }
    fn eos(&self) -> Option<u32> {
        Some(self.eos_id())
    }
}

/// Incremental detokenisation: feed ids one at a time and get back only text that is
/// complete (no trailing partial UTF-8 sequence). Decodes a short window of recent ids so that
/// tokenizers whose output depends on the preceding id (leading-space rules) decode right.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    tokens: Vec<u32>,
    /// Start of the window decoded for context.
    prefix: usize,
    /// End of what has been emitted.
    read: usize,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one id; returns the newly completed text (possibly empty).
    pub fn push(&mut self, codec: &dyn TextCodec, token: u32) -> String {
        self.tokens.push(token);
        let before = codec.decode(&self.tokens[self.prefix..self.read]);
        let now = codec.decode(&self.tokens[self.prefix..]);
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            let out = match now.strip_prefix(before.as_str()) {
                Some(rest) => rest.to_string(),
                None => now,
            };
            self.prefix = self.read;
            self.read = self.tokens.len();
            out
        } else {
            String::new()
        }
    }

    /// Whatever is still held back (an incomplete sequence at the very end), lossily.
    pub fn finish(&mut self, codec: &dyn TextCodec) -> String {
        let before = codec.decode(&self.tokens[self.prefix..self.read]);
        let now = codec.decode(&self.tokens[self.prefix..]);
        self.prefix = self.tokens.len();
        self.read = self.tokens.len();
        match now.strip_prefix(before.as_str()) {
            Some(rest) => rest.to_string(),
            None => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f64> {
        // probabilities ∝ exp: 0.5, 0.25, 0.125, 0.125 in some order
        [0.125f64, 0.5, 0.125, 0.25]
            .iter()
            .map(|p| p.ln() + 3.0)
            .collect()
    }

    fn s(temperature: f64, top_k: usize, top_p: f64) -> Sampler {
        Sampler {
            temperature,
            top_k,
            top_p,
        }
    }

    #[test]
    fn greedy_picks_the_argmax_and_top_k_one_is_greedy() {
        let l = logits();
        assert_eq!(argmax(&l), 1);
        assert_eq!(argmax(&[1.0f32, f32::NAN, 3.0, 3.0]), 2);
        let mut rng = Rng::new(1);
        assert_eq!(Sampler::greedy().sample(&l, &mut rng), 1);
        for seed in 0..50 {
            let mut rng = Rng::new(seed);
            assert_eq!(s(1.7, 1, 1.0).sample(&l, &mut rng), 1);
        }
    }

    #[test]
    fn temperature_one_draws_with_the_softmax_frequencies() {
        let l = logits();
        let d = Sampler::default().distribution(&l);
        let want = [(1u32, 0.5), (3, 0.25), (0, 0.125), (2, 0.125)];
        for ((t, p), (wt, wp)) in d.iter().zip(want) {
            assert_eq!(*t, wt);
            assert!((p - wp).abs() < 1e-12);
        }
        let mut rng = Rng::new(42);
        let mut counts = [0usize; 4];
        let n = 40000;
        for _ in 0..n {
            counts[Sampler::default().sample(&l, &mut rng) as usize] += 1;
        }
        for (t, p) in [(0, 0.125), (1, 0.5), (2, 0.125), (3, 0.25)] {
            let f = counts[t] as f64 / n as f64;
            assert!((f - p).abs() < 0.01, "token {t}: {f} vs {p}");
        }
        // Higher temperature flattens, lower sharpens.
        let hot = s(4.0, 0, 1.0).distribution(&l);
        let cold = s(0.25, 0, 1.0).distribution(&l);
        assert!(hot[0].1 < 0.5 && cold[0].1 > 0.9);
        // Same seed, same draws.
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..20)
                .map(|_| Sampler::default().sample(&l, &mut r))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
    }

    #[test]
    fn top_k_keeps_the_k_most_likely_renormalised() {
        let d = s(1.0, 2, 1.0).distribution(&logits());
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].0, d[1].0), (1, 3));
        assert!((d[0].1 - 2.0 / 3.0).abs() < 1e-12 && (d[1].1 - 1.0 / 3.0).abs() < 1e-12);
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let t = s(1.0, 2, 1.0).sample(&logits(), &mut rng);
            assert!(t == 1 || t == 3);
        }
        // k larger than the vocabulary keeps everything.
        assert_eq!(s(1.0, 99, 1.0).distribution(&logits()).len(), 4);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_whose_mass_reaches_p() {
        let l = logits();
        let kept = |p| {
            s(1.0, 0, p)
                .distribution(&l)
                .iter()
                .map(|d| d.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(0.3), vec![1]); // 0.5 ≥ 0.3
        assert_eq!(kept(0.5), vec![1]); // exactly reaches
        assert_eq!(kept(0.6), vec![1, 3]); // 0.75
        assert_eq!(kept(0.75), vec![1, 3]);
        assert_eq!(kept(0.8), vec![1, 3, 0]); // 0.875
        assert_eq!(kept(1.0), vec![1, 3, 0, 2]);
        let d = s(1.0, 0, 0.6).distribution(&l);
        assert!((d[0].1 - 2.0 / 3.0).abs() < 1e-12);
        // top-k first, then top-p on the renormalised rest: among {0.5, 0.25} → {2/3, 1/3}.
        assert_eq!(
            s(1.0, 2, 0.7)
                .distribution(&l)
                .iter()
                .map(|d| d.0)
                .collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(s(1.0, 2, 0.6).distribution(&l).len(), 1);
    }

    #[test]
    fn bad_settings_and_degenerate_logits() {
        assert!(s(-1.0, 0, 1.0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
        assert!(s(1.0, 0, 0.0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("top_p"));
        let l = [f64::NEG_INFINITY, 0.0, f64::NEG_INFINITY];
        let mut rng = Rng::new(0);
        assert_eq!(Sampler::default().sample(&l, &mut rng), 1);
        let all_inf = [f64::NEG_INFINITY; 3];
        assert_eq!(Sampler::default().sample(&all_inf, &mut rng), 0);
    }

    #[test]
    fn byte_codec_round_trips_and_streams_only_complete_utf8() {
        let c = ByteCodec;
        let text = "héllo € 😀!";
        let ids = c.encode(text).unwrap();
        assert_eq!(ids.len(), text.len());
        assert_eq!(c.decode(&ids), text);
        let mut dec = StreamDecoder::new();
        let mut pieces = Vec::new();
        for &t in &ids {
            let p = dec.push(&c, t);
            assert!(!p.contains('\u{FFFD}'), "partial character emitted: {p:?}");
            pieces.push(p);
        }
        assert_eq!(pieces.concat(), text);
        // "😀" is 4 bytes: nothing is emitted until the last one.
        let emoji_start = text.find('😀').unwrap();
        assert!(pieces[emoji_start..emoji_start + 3]
            .iter()
            .all(|p| p.is_empty()));
        assert_eq!(pieces[emoji_start + 3], "😀");
        assert_eq!(dec.finish(&c), "");
        // An invalid byte is emitted (as U+FFFD) once valid text follows; a trailing partial
        // sequence comes out at finish.
        let mut dec = StreamDecoder::new();
        let mut out = String::new();
        for t in [b'a' as u32, 0xFF, b'b' as u32, 0xE2, 0x82] {
            out += &dec.push(&c, t);
        }
        assert_eq!(out, "a\u{FFFD}b");
        assert_eq!(dec.finish(&c), "\u{FFFD}");
    }
}
