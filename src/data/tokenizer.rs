//! Hugging Face `tokenizer.json` tokenisers (the `tokenizers` crate, offline), and training a
//! byte-level BPE one.
//!
//! Encoding follows the reference's data preparation: no BOS and no post-processor template
//! (`add_special_tokens = false`); [`crate::data::prepare`] appends the EOS id to every
//! document. Special-token strings that occur *in the text* (say a literal `</s>`) are encoded
//! as ordinary text, so a document can never forge a document boundary.
//!
//! The EOS token is the one configured, else the first of [`EOS_CANDIDATES`] in the vocabulary.
//!
//! [`train_bpe`] builds a GPT-2-style byte-level BPE: the 256 byte symbols are always in the
//! vocabulary, so any text encodes without an unknown token, and decoding gives the text back
//! exactly (no prefix space is added). Its special tokens come first, so with the default
//! [`DEFAULT_SPECIAL_TOKENS`] `<unk>` = 0, `<s>` = 1, `</s>` = 2, the ids Llama's tokenizer (and
//! so the reference data) uses; `</s>` is the EOS.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// Tokens taken as EOS, in this order, when none is configured.
pub const EOS_CANDIDATES: [&str; 4] = ["</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>"];

/// Special tokens of a trained tokeniser unless others are given: ids 0, 1, 2 as in Llama.
pub const DEFAULT_SPECIAL_TOKENS: [&str; 3] = ["<unk>", "<s>", "</s>"];

/// The 256 byte symbols every byte-level BPE vocabulary holds.
pub const BYTE_SYMBOLS: usize = 256;

/// A loaded tokeniser with its EOS id.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    name: String,
    eos: u32,
    vocab: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("name", &self.name)
            .field("vocab", &self.vocab)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`. `eos` names the EOS token; `None` looks for
    /// [`EOS_CANDIDATES`]. Errors name the file.
    pub fn load(path: &Path, eos: Option<&str>) -> Result<Tokenizer> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow!("failed to read tokenizer {}: {e}", path.display()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            anyhow!(
                "tokenizer {}: not a Hugging Face tokenizer.json: {e}",
                path.display()
            )
        })?;
        Tokenizer::from_hf(inner, &path.display().to_string(), eos)
    }

    /// Wraps a `tokenizers` tokeniser; `name` is used in errors.
    pub fn from_hf(
        mut inner: tokenizers::Tokenizer,
        name: &str,
        eos: Option<&str>,
    ) -> Result<Tokenizer> {
        inner.set_encode_special_tokens(true);
        let eos_id = match eos {
            Some(t) => inner
                .token_to_id(t)
                .ok_or_else(|| anyhow!("tokenizer {name}: the EOS token {t:?} is not in its vocabulary"))?,
            None => EOS_CANDIDATES
                .iter()
                .find_map(|t| inner.token_to_id(t))
                .ok_or_else(|| {
                    anyhow!(
                        "tokenizer {name}: no EOS token ({}) in its vocabulary; name one with --eos",
                        EOS_CANDIDATES.join(", ")
                    )
                })?,
        };
        let vocab = inner
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0)
            .max(inner.get_vocab_size(true));
        Ok(Tokenizer {
            inner,
            name: name.to_string(),
            eos: eos_id,
            vocab,
        })
    }

    /// The file (or other name) the tokeniser came from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ids run from 0 to `vocab_size() - 1` (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The wrapped `tokenizers` tokeniser.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// One text's ids: no BOS, no EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizer {}: failed to encode: {e}", self.name))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Many texts' ids, encoded in parallel, in order.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// Text of `ids`; `skip_special` leaves special tokens (EOS...) out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab) {
            bail!(
                "tokenizer {}: cannot decode id {bad}, outside the vocabulary of {}",
                self.name,
                self.vocab
            );
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| anyhow!("tokenizer {}: failed to decode: {e}", self.name))
    }

    /// The tokeniser as `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| anyhow!("tokenizer {}: failed to serialise: {e}", self.name))
    }

    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, self.to_json()?.as_bytes())
    }
}

/// Checks the arguments of a BPE training run.
fn check_train_args(vocab_size: usize, special_tokens: &[String]) -> Result<()> {
    let mut seen = HashSet::new();
    for t in special_tokens {
        if t.is_empty() {
            bail!("tokenizer training: empty special token");
        }
        if !seen.insert(t) {
            bail!("tokenizer training: special token {t:?} given twice");
        }
    }
    if !special_tokens
        .iter()
        .any(|t| EOS_CANDIDATES.contains(&t.as_str()))
    {
        bail!(
            "tokenizer training: the special tokens need an EOS token (one of {})",
            EOS_CANDIDATES.join(", ")
        );
    }
    let least = BYTE_SYMBOLS + special_tokens.len();
    if vocab_size < least {
        bail!("tokenizer training: vocab size {vocab_size} is smaller than the {BYTE_SYMBOLS} byte symbols plus {} special tokens ({least})", special_tokens.len());
    }
    Ok(())
}

/// Trains a byte-level BPE of `vocab_size` ids (special tokens and the 256 byte symbols
/// included) on `docs`. `special_tokens` get the first ids and must include an EOS
/// ([`EOS_CANDIDATES`]).
pub fn train_bpe_from_iter<I>(
    docs: I,
    vocab_size: usize,
    special_tokens: &[String],
) -> Result<Tokenizer>
where
    I: Iterator<Item = String> + Send,
{
    check_train_args(vocab_size, special_tokens)?;
    let mut tk = tokenizers::Tokenizer::new(BPE::default());
    // No prefix space, so decode(encode(text)) == text.
    tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tk.with_decoder(Some(ByteLevel::new(false, true, true)));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .show_progress(false)
        .special_tokens(
            special_tokens
                .iter()
                .map(|t| AddedToken::from(t.clone(), true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tk.train(&mut trainer, docs)
        .map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
    Tokenizer::from_hf(tk, "trained tokenizer", None)
}

const STOPPED: &str = "tokenizer training stopped";

/// Trains a byte-level BPE (see [`train_bpe_from_iter`]) on the documents of `inputs`: files or
/// folders of `.txt`, `.jsonl` and `.jsonl.zst`, read as `gdn prepare` reads them. Shows a
/// progress bar over the input bytes unless `quiet`.
pub fn train_bpe(
    inputs: &[PathBuf],
    text_exts: &[String],
    vocab_size: usize,
    special_tokens: &[String],
    quiet: bool,
) -> Result<Tokenizer> {
    use crate::data::prepare::{find_inputs, read_documents, total_bytes};
    check_train_args(vocab_size, special_tokens)?;
    let files = find_inputs(inputs, text_exts)?;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(total_bytes(&files)?);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} read | {msg} | {bytes_per_sec} | ETA {eta}",
            )
            .expect("valid template"),
        );
        b
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(1024);
    let result = std::thread::scope(|s| {
        let bar2 = bar.clone();
        let reader = s.spawn(move || -> Result<u64> {
            let mut n = 0u64;
            for f in &files {
                read_documents(f, &bar2, &mut |doc| {
                    n += 1;
                    if n.is_multiple_of(1024) {
                        bar2.set_message(format!("{n} documents"));
                    }
                    // A closed channel means training stopped; its error is reported.
                    tx.send(doc).map_err(|_| anyhow!(STOPPED))
                })?;
            }
            drop(tx);
            Ok(n)
        });
        let trained = train_bpe_from_iter(rx.into_iter(), vocab_size, special_tokens);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(anyhow!("tokenizer training: the reader thread panicked")));
        (read, trained)
    });
    let (read, trained) = result;
    bar.finish_and_clear();
    match (read, trained) {
        (Ok(0), _) => bail!("tokenizer training: the inputs hold no document"),
        (Ok(_), t) => t,
        // The reader only stopped because training had failed: report that.
        (Err(e), Err(t)) if e.to_string() == STOPPED => Err(t),
        (Err(e), _) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specials() -> Vec<String> {
        DEFAULT_SPECIAL_TOKENS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn corpus() -> Vec<String> {
        (0..200)
            .map(|i| {
                format!(
                    "the quick brown fox {i} jumps over the lazy dog. Ünïcode ✓ {}",
                    i * 7
                )
            })
            .collect()
    }

    #[test]
    fn trained_bpe_round_trips_any_text_and_has_llama_special_ids() {
        let tk = train_bpe_from_iter(corpus().into_iter(), 400, &specials()).unwrap();
        assert_eq!(tk.token_to_id("<unk>"), Some(0));
        assert_eq!(tk.token_to_id("<s>"), Some(1));
        assert_eq!(tk.token_to_id("</s>"), Some(2));
        assert_eq!(tk.eos_id(), 2);
        assert!(
            tk.vocab_size() <= 400 && tk.vocab_size() > 300,
            "{}",
            tk.vocab_size()
        );
        for text in [
            "the quick brown fox",
            "  leading spaces and\ttabs\nnewlines  ",
            "never seen: 漢字 🚀 \u{0}",
            "literal </s> in text",
            "",
        ] {
            let ids = tk.encode(text).unwrap();
            assert!(!ids.contains(&2), "{text:?} encoded a real EOS: {ids:?}");
            assert_eq!(tk.decode(&ids, false).unwrap(), text);
        }
        // Merges were learnt: a common phrase is shorter than its bytes.
        assert!(tk.encode("the quick brown fox").unwrap().len() < 10);
        let batch = tk.encode_batch(&["a b", "the lazy dog", ""]).unwrap();
        assert_eq!(batch[1], tk.encode("the lazy dog").unwrap());
        assert!(batch[2].is_empty());
        let e = tk.decode(&[100_000], false).unwrap_err().to_string();
        assert!(e.contains("100000"), "{e}");
    }

    #[test]
    fn save_load_and_eos_lookup() {
        let tk = train_bpe_from_iter(corpus().into_iter(), 300, &specials()).unwrap();
        let dir = std::env::temp_dir().join(format!("gdn-tok-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tokenizer.json");
        tk.save(&p).unwrap();
        let back = Tokenizer::load(&p, None).unwrap();
        assert_eq!(back.eos_id(), 2);
        assert_eq!(back.vocab_size(), tk.vocab_size());
        assert_eq!(back.encode("fox 12").unwrap(), tk.encode("fox 12").unwrap());
        assert_eq!(Tokenizer::load(&p, Some("<s>")).unwrap().eos_id(), 1);
        let e = Tokenizer::load(&p, Some("<nope>")).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && e.contains("<nope>"), "{e}");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let e = Tokenizer::load(&bad, None).unwrap_err().to_string();
        assert!(
            e.contains("bad.json") && e.contains("not a Hugging Face"),
            "{e}"
        );
        let e = Tokenizer::load(&dir.join("missing.json"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.json"), "{e}");
        // A tokenizer without any EOS candidate needs one named.
        let other =
            train_bpe_from_iter(corpus().into_iter(), 300, &["<|endoftext|>".to_string()]).unwrap();
        assert_eq!(other.eos_id(), 0);
        let e = Tokenizer::from_hf(
            tokenizers::Tokenizer::new(BPE::default()),
            "empty.json",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("empty.json") && e.contains("no EOS token"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_training_arguments() {
        let e = train_bpe_from_iter(corpus().into_iter(), 200, &specials())
            .unwrap_err()
            .to_string();
        assert!(e.contains("vocab size 200") && e.contains("259"), "{e}");
        let e = train_bpe_from_iter(corpus().into_iter(), 300, &["<s>".to_string()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("EOS"), "{e}");
        let e = train_bpe_from_iter(
            corpus().into_iter(),
            300,
            &["</s>".to_string(), "</s>".to_string()],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
