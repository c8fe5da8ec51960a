//! `gdn prepare`: text documents to LITPKDS token shards, as the reference's
//! `prepare_slimpajama.py` does it.
//!
//! Inputs are files or folders (walked recursively, in name order) of
//! - `.txt` (and any other extension given as a text extension, e.g. `py` for source code): the
//!   whole file is one document (UTF-8);
//! - `.jsonl` and `.jsonl.zst`: one JSON object a line, the document in its string field
//!   `"text"` (blank lines are skipped). Zstandard files may hold several frames.
//!
//! Every document is encoded without BOS and gets the EOS id appended; documents are packed back
//! to back. Document `i` (counted over all inputs in order) goes to validation when
//! [`is_validation`]`(seed, i, val_fraction)`, a hash of the seed and the index, so the split
//! does not depend on batching or thread count. Each split is written through a
//! [`ShardWriter`] into `{out}/{split}_{name}_0_{counter:010}.bin` (`split` = `train` or
//! `validation`; the `0` is the process index of the reference's naming, always 0 here), u16
//! when the vocabulary has fewer than 65500 ids, else i32. The last partial chunk of each split
//! is dropped (reported). `{out}/prepare.json` records the settings and the counts.
//!
//! The reference's training glob is `train_slim*`: shards for the NVlabs code need
//! `--name slimpajama` (or a renamed glob); `gdn`'s own reader takes any `train*` file.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::shards::{Dtype, ShardWriter, WriterSummary};
use crate::data::tokenizer::Tokenizer;

/// Validation share of documents unless told otherwise.
pub const DEFAULT_VAL_FRACTION: f64 = 0.005;
/// Seed of the train/validation split unless told otherwise.
pub const DEFAULT_SEED: u64 = 3407;
/// Dataset name in file names unless told otherwise.
pub const DEFAULT_NAME: &str = "data";
/// Text read before a batch is tokenised (bytes).
const BATCH_BYTES: usize = 8 << 20;

/// The kinds of input file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Text,
    Jsonl,
    JsonlZst,
}

/// The text-file extensions read when none are given.
pub const DEFAULT_TEXT_EXTENSIONS: [&str; 1] = ["txt"];

/// An input file and how to read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    pub kind: InputKind,
}

/// The kind of `path` by its name (`text_exts`: extensions, without the dot, read as one text
/// document per file), or `None` for other files.
pub fn input_kind(path: &Path, text_exts: &[String]) -> Option<InputKind> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".jsonl.zst") {
        Some(InputKind::JsonlZst)
    } else if name.ends_with(".jsonl") {
        Some(InputKind::Jsonl)
    } else if text_exts
        .iter()
        .any(|e| name.len() > e.len() + 1 && name.ends_with(&format!(".{e}")))
    {
        Some(InputKind::Text)
    } else {
        None
    }
}

fn unsupported(path: &Path, text_exts: &[String]) -> anyhow::Error {
    anyhow!(
        "input {}: unsupported file type (expected .jsonl, .jsonl.zst or a text file: .{}; \
         name more text extensions with --text-ext)",
        path.display(),
        text_exts.join(", .")
    )
}

fn walk(dir: &Path, text_exts: &[String], out: &mut Vec<InputFile>) -> Result<()> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| anyhow!("failed to read input folder {}: {e}", dir.display()))?;
    let mut entries = Vec::new();
    for e in rd {
        let e = e.map_err(|e| anyhow!("failed to read input folder {}: {e}", dir.display()))?;
        entries.push(e.path());
    }
    entries.sort();
    for p in entries {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            walk(&p, text_exts, out)?;
        } else if let Some(kind) = input_kind(&p, text_exts) {
            out.push(InputFile { path: p, kind });
        }
    }
    Ok(())
}

/// The input files of `paths`: files as given (they must be `.jsonl`, `.jsonl.zst` or have one
/// of `text_exts`), folders walked recursively in name order keeping only those kinds (hidden
/// entries skipped). Errors when a path is missing or nothing is found.
pub fn find_inputs(paths: &[PathBuf], text_exts: &[String]) -> Result<Vec<InputFile>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| anyhow!("input {}: {e}", p.display()))?;
        if meta.is_dir() {
            walk(p, text_exts, &mut out)?;
        } else {
            let kind = input_kind(p, text_exts).ok_or_else(|| unsupported(p, text_exts))?;
            out.push(InputFile {
                path: p.clone(),
                kind,
            });
        }
    }
    if out.is_empty() {
        bail!(
            "no .jsonl, .jsonl.zst or .{} files in the inputs",
            text_exts.join(", .")
        );
    }
    Ok(out)
}

/// The summed size of `files` in bytes (compressed size for `.zst`).
pub fn total_bytes(files: &[InputFile]) -> Result<u64> {
    let mut n = 0;
    for f in files {
        n += std::fs::metadata(&f.path)
            .map_err(|e| anyhow!("input {}: {e}", f.path.display()))?
            .len();
    }
    Ok(n)
}

/// Counts the bytes read on a progress bar.
struct Counting<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// A Zstandard stream of any number of frames (skippable frames skipped).
struct ZstdReader<R: BufRead> {
    src: R,
    dec: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdReader<R> {
    fn new(src: R) -> Self {
        ZstdReader {
            src,
            dec: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        use ruzstd::decoding::BlockDecodingStrategy;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                while self.dec.can_collect() == 0 && !self.dec.is_finished() {
                    self.dec
                        .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBlocks(1))
                        .map_err(std::io::Error::other)?;
                }
                let n = self.dec.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                if self.dec.is_finished() && self.dec.can_collect() == 0 {
                    self.in_frame = false;
                }
                continue;
            }
            if self.src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.dec.init(&mut self.src) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    std::io::copy(
                        &mut (&mut self.src).take(length as u64),
                        &mut std::io::sink(),
                    )?;
                }
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct JsonLine {
    /// `None` only when the field is absent (a JSON null is `Some(Null)`).
    #[serde(default, deserialize_with = "present")]
    text: Option<serde_json::Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    <serde_json::Value as serde::Deserialize>::deserialize(d).map(Some)
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn read_jsonl<R: BufRead>(
    mut r: R,
    path: &Path,
    f: &mut dyn FnMut(String) -> Result<()>,
) -> Result<()> {
    let mut line = String::new();
    let mut no = 0u64;
    loop {
        line.clear();
        no += 1;
        let n = r
            .read_line(&mut line)
            .map_err(|e| anyhow!("input {} line {no}: failed to read: {e}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let parsed: JsonLine = serde_json::from_str(&line)
            .map_err(|e| anyhow!("input {} line {no}: not a JSON object: {e}", path.display()))?;
        match parsed.text {
            Some(serde_json::Value::String(s)) => f(s)?,
            Some(v) => bail!(
                "input {} line {no}: field \"text\" is {}, not a string",
                path.display(),
                json_type(&v)
            ),
            None => bail!("input {} line {no}: no \"text\" field", path.display()),
        }
    }
}

/// Calls `f` with each document of the input file `path` in order (see the module docs for the
/// formats), counting the bytes read on `bar`. Errors name the file and, for JSON lines, the
/// line.
pub fn read_documents(
    input: &InputFile,
    bar: &ProgressBar,
    f: &mut dyn FnMut(String) -> Result<()>,
) -> Result<()> {
    let (path, kind) = (input.path.as_path(), input.kind);
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow!("failed to open input {}: {e}", path.display()))?;
    let counted = Counting {
        inner: file,
        bar: bar.clone(),
    };
    match kind {
        InputKind::Text => {
            let mut bytes = Vec::new();
            BufReader::new(counted)
                .read_to_end(&mut bytes)
                .map_err(|e| anyhow!("failed to read input {}: {e}", path.display()))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                anyhow!(
                    "input {}: not UTF-8 text (invalid byte at offset {})",
                    path.display(),
                    e.utf8_error().valid_up_to()
                )
            })?;
            f(text)
        }
        InputKind::Jsonl => read_jsonl(BufReader::with_capacity(1 << 20, counted), path, f),
        InputKind::JsonlZst => {
            let z = ZstdReader::new(BufReader::with_capacity(1 << 20, counted));
            read_jsonl(BufReader::with_capacity(1 << 20, z), path, f).map_err(|e| {
                // Decoder errors arrive as read errors of a line; say it is the compression.
                let s = e.to_string();
                if s.contains("failed to read") {
                    anyhow!("{s} (bad Zstandard data?)")
                } else {
                    e
                }
            })
        }
    }
}

/// Whether document `index` goes to validation: a SplitMix64 hash of `seed` and `index`,
/// mapped to [0, 1), is below `fraction`.
pub fn is_validation(seed: u64, index: u64, fraction: f64) -> bool {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let h = mix(seed ^ mix(index));
    ((h >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

/// Settings of a `gdn prepare` run.
#[derive(Clone, Debug)]
pub struct PrepareConfig {
    /// Files or folders of `.jsonl`, `.jsonl.zst` and text files.
    pub inputs: Vec<PathBuf>,
    /// Extensions (without the dot) of files read as one text document each.
    pub text_extensions: Vec<String>,
    /// Output folder (created; must not already hold shards of this name).
    pub out: PathBuf,
    /// Share of documents for validation, in [0, 1).
    pub val_fraction: f64,
    /// Tokens per shard.
    pub chunk_size: usize,
    /// Dataset name in the file names.
    pub name: String,
    /// Seed of the train/validation split.
    pub seed: u64,
    /// No progress bar.
    pub quiet: bool,
}

impl PrepareConfig {
    /// The defaults for `inputs` into `out`.
    pub fn new(inputs: Vec<PathBuf>, out: PathBuf) -> PrepareConfig {
        PrepareConfig {
            inputs,
            out,
            text_extensions: DEFAULT_TEXT_EXTENSIONS.map(String::from).to_vec(),
            val_fraction: DEFAULT_VAL_FRACTION,
            chunk_size: crate::data::shards::DEFAULT_CHUNK_SIZE,
            name: DEFAULT_NAME.to_string(),
            seed: DEFAULT_SEED,
            quiet: false,
        }
    }
}

/// Counts of one split.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SplitSummary {
    pub documents: u64,
    /// Tokens of the split's documents, EOS included.
    pub tokens: u64,
    /// Tokens in written shards.
    pub tokens_written: u64,
    /// Tokens of the last partial chunk, not written.
    pub tokens_dropped: u64,
    pub shards: usize,
    pub files: Vec<PathBuf>,
}

impl SplitSummary {
    fn from_writer(documents: u64, w: WriterSummary) -> SplitSummary {
        SplitSummary {
            documents,
            tokens: w.tokens_in,
            tokens_written: w.tokens_written,
            tokens_dropped: w.tokens_dropped,
            shards: w.files.len(),
            files: w.files,
        }
    }
}

/// What a `gdn prepare` run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PrepareSummary {
    pub tokenizer: String,
    pub vocab_size: usize,
    pub eos_id: u32,
    pub dtype: &'static str,
    pub chunk_size: usize,
    pub val_fraction: f64,
    pub seed: u64,
    pub input_files: usize,
    pub input_bytes: u64,
    pub train: SplitSummary,
    pub validation: SplitSummary,
}

impl std::fmt::Display for PrepareSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} input files ({} bytes), tokenizer {} (vocab {}, EOS {}), {} shards of {} tokens",
            self.input_files,
            self.input_bytes,
            self.tokenizer,
            self.vocab_size,
            self.eos_id,
            self.dtype,
            self.chunk_size
        )?;
        for (name, s) in [("train", &self.train), ("validation", &self.validation)] {
            writeln!(
                f,
                "{name:>10}: {} documents, {} tokens, {} shards ({} tokens), {} tokens dropped in the partial last chunk",
                s.documents, s.tokens, s.shards, s.tokens_written, s.tokens_dropped
            )?;
        }
        Ok(())
    }
}

fn check_config(cfg: &PrepareConfig) -> Result<()> {
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        bail!("--val-fraction {} must be in [0, 1)", cfg.val_fraction);
    }
    if cfg.chunk_size == 0 {
        bail!("--chunk-size must be positive");
    }
    let ok = !cfg.name.is_empty()
        && cfg
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !ok {
        bail!(
            "--name {:?}: use letters, digits, '-', '_' or '.'",
            cfg.name
        );
    }
    Ok(())
}

/// The shard-name prefixes of a run named `name`.
pub fn split_prefixes(name: &str) -> [String; 2] {
    [format!("train_{name}_0"), format!("validation_{name}_0")]
}

/// Tokenises the inputs and writes the shards (see the module docs).
pub fn prepare(tok: &Tokenizer, cfg: &PrepareConfig) -> Result<PrepareSummary> {
    check_config(cfg)?;
    let files = find_inputs(&cfg.inputs, &cfg.text_extensions)?;
    let input_bytes = total_bytes(&files)?;
    std::fs::create_dir_all(&cfg.out)
        .map_err(|e| anyhow!("failed to create output folder {}: {e}", cfg.out.display()))?;
    let prefixes = split_prefixes(&cfg.name);
    for p in &prefixes {
        if let Some(f) = crate::data::packed::list_shards(&cfg.out, &format!("{p}_"))?.first() {
            bail!(
                "output folder {} already holds shards of this name ({}); remove them or choose another --out or --name",
                cfg.out.display(),
                f.display()
            );
        }
    }
    let dtype = Dtype::for_vocab(tok.vocab_size());
    let eos = tok.eos_id();
    let mut train = ShardWriter::new(&cfg.out, &prefixes[0], cfg.chunk_size, dtype)?;
    let mut valid = ShardWriter::new(&cfg.out, &prefixes[1], cfg.chunk_size, dtype)?;
    let bar = if cfg.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(input_bytes);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} | {msg} | {bytes_per_sec} | ETA {eta}",
            )
            .expect("valid template"),
        );
        b
    };
    let (mut n_train, mut n_valid) = (0u64, 0u64);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<String>>(2);
    const STOPPED: &str = "preparation stopped";
    let (read, written) = std::thread::scope(|s| {
        let bar2 = bar.clone();
        let files = &files;
        let reader = s.spawn(move || -> Result<()> {
            let mut batch = Vec::new();
            let mut bytes = 0;
            for f in files {
                read_documents(f, &bar2, &mut |doc| {
                    bytes += doc.len();
                    batch.push(doc);
                    if bytes >= BATCH_BYTES {
                        bytes = 0;
                        tx.send(std::mem::take(&mut batch))
                            .map_err(|_| anyhow!(STOPPED))?;
                    }
                    Ok(())
                })?;
            }
            if !batch.is_empty() {
                tx.send(batch).map_err(|_| anyhow!(STOPPED))?;
            }
            Ok(())
        });
        let write = || -> Result<()> {
            let mut index = 0u64;
            for docs in rx {
                let encoded = tok.encode_batch(&docs)?;
                for mut ids in encoded {
                    ids.push(eos);
                    if is_validation(cfg.seed, index, cfg.val_fraction) {
                        valid.push(&ids)?;
                        n_valid += 1;
                    } else {
                        train.push(&ids)?;
                        n_train += 1;
                    }
                    index += 1;
                }
                bar.set_message(format!(
                    "{index} documents, {} + {} shards",
                    train.shards_written(),
                    valid.shards_written()
                ));
            }
            Ok(())
        };
        let written = write();
        // Stop the reader if writing failed (it sees a closed channel).
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(anyhow!("prepare: the reader thread panicked")));
        (read, written)
    });
    bar.finish_and_clear();
    match (read, written) {
        (Ok(()), w) => w?,
        (Err(e), Err(w)) if e.to_string() == STOPPED => return Err(w),
        (Err(e), _) => return Err(e),
    }
    let summary = PrepareSummary {
        tokenizer: tok.name().to_string(),
        vocab_size: tok.vocab_size(),
        eos_id: eos,
        dtype: dtype.name(),
        chunk_size: cfg.chunk_size,
        val_fraction: cfg.val_fraction,
        seed: cfg.seed,
        input_files: files.len(),
        input_bytes,
        train: SplitSummary::from_writer(n_train, train.finish()),
        validation: SplitSummary::from_writer(n_valid, valid.finish()),
    };
    let json = serde_json::to_string_pretty(&summary)
        .map_err(|e| anyhow!("failed to serialise the prepare summary: {e}"))?;
    crate::io::write_atomic(&cfg.out.join("prepare.json"), json.as_bytes())?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt() -> Vec<String> {
        DEFAULT_TEXT_EXTENSIONS.map(String::from).to_vec()
    }

    fn docs(path: &Path) -> Result<Vec<String>> {
        docs_in(path, &txt())
    }

    /// The documents of `path`, read as `gdn prepare` does with text extensions `exts`.
    fn docs_in(path: &Path, exts: &[String]) -> Result<Vec<String>> {
        let input = InputFile {
            path: path.to_path_buf(),
            kind: input_kind(path, exts).expect("a known kind"),
        };
        let mut out = Vec::new();
        read_documents(&input, &ProgressBar::hidden(), &mut |d| {
            out.push(d);
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn reads_txt_jsonl_and_multi_frame_zst() {
        let d = crate::io::scratch_dir("read");
        std::fs::write(d.join("a.txt"), "one doc\nwith lines\n").unwrap();
        std::fs::write(
            d.join("b.jsonl"),
            "{\"text\": \"first\", \"meta\": {\"x\": 1}}\n\n{\"text\": \"sec\\nond\"}\n",
        )
        .unwrap();
        let l1 = b"{\"text\": \"z1\"}\n";
        let l2 = b"{\"text\": \"z2\"}\n";
        let mut zst =
            ruzstd::encoding::compress_to_vec(&l1[..], ruzstd::encoding::CompressionLevel::Fastest);
        // A skippable frame between two frames.
        zst.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        zst.extend_from_slice(&3u32.to_le_bytes());
        zst.extend_from_slice(b"abc");
        zst.extend(ruzstd::encoding::compress_to_vec(
            &l2[..],
            ruzstd::encoding::CompressionLevel::Uncompressed,
        ));
        std::fs::write(d.join("c.jsonl.zst"), &zst).unwrap();
        assert_eq!(docs(&d.join("a.txt")).unwrap(), ["one doc\nwith lines\n"]);
        assert_eq!(docs(&d.join("b.jsonl")).unwrap(), ["first", "sec\nond"]);
        assert_eq!(docs(&d.join("c.jsonl.zst")).unwrap(), ["z1", "z2"]);
        std::fs::create_dir_all(d.join("sub/.hidden")).unwrap();
        std::fs::write(d.join("sub/x.txt"), "x").unwrap();
        std::fs::write(d.join("sub/.hidden/y.txt"), "y").unwrap();
        std::fs::write(d.join("sub/notes.md"), "skip").unwrap();
        std::fs::write(d.join("sub/mod.py"), "import os\n").unwrap();
        let names = |exts: &[String]| -> Vec<String> {
            find_inputs(std::slice::from_ref(&d), exts)
                .unwrap()
                .iter()
                .map(|f| {
                    f.path
                        .strip_prefix(&d)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(
            names(&txt()),
            ["a.txt", "b.jsonl", "c.jsonl.zst", "sub/x.txt"]
        );
        // Source files read as text documents when their extension is named.
        let with_py = ["txt".to_string(), "py".to_string()];
        assert_eq!(
            names(&with_py),
            ["a.txt", "b.jsonl", "c.jsonl.zst", "sub/mod.py", "sub/x.txt"]
        );
        assert_eq!(
            docs_in(&d.join("sub/mod.py"), &with_py).unwrap(),
            ["import os\n"]
        );
        let e = find_inputs(&[d.join("sub/notes.md")], &txt())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("notes.md") && e.contains("unsupported") && e.contains("--text-ext"),
            "{e}"
        );
        let e = find_inputs(&[d.join("nope")], &txt())
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_inputs_name_file_and_line() {
        let d = crate::io::scratch_dir("bad");
        let cases = [
            (
                "missing.jsonl",
                "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n",
                "line 2: no \"text\" field",
            ),
            (
                "number.jsonl",
                "{\"text\": 5}\n",
                "line 1: field \"text\" is a number",
            ),
            (
                "null.jsonl",
                "\n{\"text\": null}\n",
                "line 2: field \"text\" is null",
            ),
            (
                "broken.jsonl",
                "{\"text\": \"a\"\n",
                "line 1: not a JSON object",
            ),
            ("array.jsonl", "[1, 2]\n", "line 1: not a JSON object"),
        ];
        for (name, body, want) in cases {
            let p = d.join(name);
            std::fs::write(&p, body).unwrap();
            let e = docs(&p).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(want), "{name}: {e}");
        }
        let p = d.join("latin1.txt");
        std::fs::write(&p, b"caf\xe9").unwrap();
        let e = docs(&p).unwrap_err().to_string();
        assert!(e.contains("latin1.txt") && e.contains("not UTF-8"), "{e}");
        let p = d.join("garbage.jsonl.zst");
        std::fs::write(&p, b"definitely not zstd").unwrap();
        let e = docs(&p).unwrap_err().to_string();
        assert!(e.contains("garbage.jsonl.zst"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn split_is_deterministic_and_near_the_fraction() {
        let n = 20_000;
        let v: Vec<bool> = (0..n).map(|i| is_validation(3407, i, 0.1)).collect();
        let share = v.iter().filter(|&&x| x).count() as f64 / n as f64;
        assert!((share - 0.1).abs() < 0.01, "{share}");
        assert_eq!(
            v,
            (0..n)
                .map(|i| is_validation(3407, i, 0.1))
                .collect::<Vec<_>>()
        );
        assert_ne!(
            v,
            (0..n).map(|i| is_validation(1, i, 0.1)).collect::<Vec<_>>()
        );
        assert!((0..n).all(|i| !is_validation(3407, i, 0.0)));
    }
}
