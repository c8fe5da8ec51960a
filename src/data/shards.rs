//! LITPKDS token shards: the packed format of the NVlabs GatedDeltaNet and Samba code
//! (`packed_dataset.py`), so shards written there read here unchanged and the other way round.
//!
//! A shard is one file:
//!
//! | bytes | content |
//! | --- | --- |
//! | 0..7 | magic `b"LITPKDS"` |
//! | 7..15 | version, u64 little-endian, = 1 |
//! | 15 | dtype code: 1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f32, 7 f64, 8 u16 |
//! | 16..24 | chunk_size, u64 little-endian: the number of tokens that follow |
//! | 24.. | chunk_size tokens, little-endian |
//!
//! [`ShardWriter`] writes u16 when the vocabulary has fewer than 65500 ids, else i32 (as the
//! reference's `prepare_slimpajama.py`), one shard every `chunk_size` tokens, each file written
//! atomically. As in the reference, the final partial chunk is **not** written (so no padding
//! token ever appears in a shard); [`ShardWriter::finish`] reports how many tokens that dropped.
//!
//! File names are `{prefix}_{counter:010}.bin`; the `gdn prepare` prefix is
//! `{split}_{name}_{proc}`, e.g. `train_slimpajama_0_0000000000.bin`, as the reference scripts.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use crate::data::IGNORE;

/// The 7 magic bytes at the start of every shard.
pub const MAGIC: &[u8; 7] = b"LITPKDS";
/// The only format version there is.
pub const VERSION: u64 = 1;
/// Header size in bytes: magic, version, dtype code, chunk_size.
pub const HEADER_LEN: usize = 24;
/// The reference's chunk size: 1024 blocks of 2049 tokens.
pub const DEFAULT_CHUNK_SIZE: usize = 2049 * 1024;
/// Vocabularies with fewer ids than this are stored as u16 (the reference's threshold).
pub const U16_VOCAB_LIMIT: usize = 65500;

/// Element type of a shard's tokens, with the reference's numeric codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Dtype {
    U8,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
    U16,
}

impl Dtype {
    /// The header's code for this type.
    pub fn code(self) -> u8 {
        match self {
            Dtype::U8 => 1,
            Dtype::I8 => 2,
            Dtype::I16 => 3,
            Dtype::I32 => 4,
            Dtype::I64 => 5,
            Dtype::F32 => 6,
            Dtype::F64 => 7,
            Dtype::U16 => 8,
        }
    }

    /// The type with header code `code`, or `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<Dtype> {
        Some(match code {
            1 => Dtype::U8,
            2 => Dtype::I8,
            3 => Dtype::I16,
            4 => Dtype::I32,
            5 => Dtype::I64,
            6 => Dtype::F32,
            7 => Dtype::F64,
            8 => Dtype::U16,
            _ => return None,
        })
    }

    /// Bytes per token.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::U16 => 2,
            Dtype::I32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::F64 => 8,
        }
    }

    /// The numpy name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "uint8",
            Dtype::I8 => "int8",
            Dtype::I16 => "int16",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::U16 => "uint16",
        }
    }

    /// The type the reference writes for a vocabulary of `vocab` ids: u16 below 65500, else i32.
    pub fn for_vocab(vocab: usize) -> Dtype {
        if vocab < U16_VOCAB_LIMIT {
            Dtype::U16
        } else {
            Dtype::I32
        }
    }

    /// The largest token id this type can store (capped below [`IGNORE`]).
    pub fn max_token(self) -> u64 {
        let m: u64 = match self {
            Dtype::U8 => u8::MAX as u64,
            Dtype::I8 => i8::MAX as u64,
            Dtype::I16 => i16::MAX as u64,
            Dtype::U16 => u16::MAX as u64,
            Dtype::I32 => i32::MAX as u64,
            // Exact integers in f32 end at 2^24.
            Dtype::F32 => 1 << 24,
            Dtype::I64 | Dtype::F64 => u64::MAX,
        };
        m.min(IGNORE as u64 - 1)
    }

    fn encode(self, tokens: &[u32], out: &mut Vec<u8>) {
        for &t in tokens {
            match self {
                Dtype::U8 => out.push(t as u8),
                Dtype::I8 => out.push(t as i8 as u8),
                Dtype::I16 => out.extend_from_slice(&(t as i16).to_le_bytes()),
                Dtype::U16 => out.extend_from_slice(&(t as u16).to_le_bytes()),
                Dtype::I32 => out.extend_from_slice(&(t as i32).to_le_bytes()),
                Dtype::I64 => out.extend_from_slice(&(t as i64).to_le_bytes()),
                Dtype::F32 => out.extend_from_slice(&(t as f32).to_le_bytes()),
                Dtype::F64 => out.extend_from_slice(&(t as f64).to_le_bytes()),
            }
        }
    }
}

/// A parsed shard header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub dtype: Dtype,
    pub chunk_size: usize,
}

impl ShardHeader {
    /// The 24 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..7].copy_from_slice(MAGIC);
        h[7..15].copy_from_slice(&VERSION.to_le_bytes());
        h[15] = self.dtype.code();
        h[16..24].copy_from_slice(&(self.chunk_size as u64).to_le_bytes());
        h
    }

    /// Parses and checks the first bytes of a shard. `what` names the file in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<ShardHeader> {
        if bytes.len() < HEADER_LEN {
            bail!(
                "shard {what}: truncated header: {} bytes, a LITPKDS header has {HEADER_LEN}",
                bytes.len()
            );
        }
        if &bytes[..7] != MAGIC {
            bail!(
                "shard {what}: wrong magic {:?}, expected \"LITPKDS\" (not a packed-dataset shard)",
                String::from_utf8_lossy(&bytes[..7])
            );
        }
        let version = u64::from_le_bytes(bytes[7..15].try_into().unwrap());
        if version != VERSION {
            bail!("shard {what}: unsupported version {version}, expected {VERSION}");
        }
        let code = bytes[15];
        let dtype = Dtype::from_code(code).ok_or_else(|| {
            anyhow!("shard {what}: unknown dtype code {code} (known: 1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f32, 7 f64, 8 u16)")
        })?;
        let chunk = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        let chunk_size = usize::try_from(chunk)
            .ok()
            .filter(|c| c.checked_mul(dtype.size()).is_some())
            .ok_or_else(|| anyhow!("shard {what}: chunk_size {chunk} is too large"))?;
        Ok(ShardHeader { dtype, chunk_size })
    }
}

/// Reads only the header of the shard at `path`.
pub fn read_header(path: &Path) -> Result<ShardHeader> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| anyhow!("failed to open shard {}: {e}", path.display()))?;
    let mut buf = Vec::with_capacity(HEADER_LEN);
    (&mut f)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut buf)
        .map_err(|e| anyhow!("failed to read shard {}: {e}", path.display()))?;
    let h = ShardHeader::parse(&buf, &path.display().to_string())?;
    let len = f
        .metadata()
        .map_err(|e| anyhow!("failed to read shard {}: {e}", path.display()))?
        .len();
    check_len(h, len, &path.display().to_string())?;
    Ok(h)
}

fn check_len(h: ShardHeader, len: u64, what: &str) -> Result<()> {
    let want = HEADER_LEN as u64 + (h.chunk_size * h.dtype.size()) as u64;
    if len < want {
        bail!(
            "shard {what}: truncated: {len} bytes, the header promises {} {} tokens ({want} bytes)",
            h.chunk_size,
            h.dtype.name()
        );
    }
    if len > want {
        bail!(
            "shard {what}: {} trailing bytes after the {} {} tokens the header announces",
            len - want,
            h.chunk_size,
            h.dtype.name()
        );
    }
    Ok(())
}

/// One shard, read whole, with its tokens widened to u32.
#[derive(Clone, Debug)]
pub struct Shard {
    pub path: PathBuf,
    pub header: ShardHeader,
    pub tokens: Vec<u32>,
}

impl Shard {
    /// Reads and checks the shard at `path`: header, length and token values (non-negative
    /// integers below `u32::MAX`). Errors name the file and what is wrong.
    pub fn open(path: &Path) -> Result<Shard> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow!("failed to read shard {}: {e}", path.display()))?;
        let (header, tokens) = parse_shard(&bytes, &path.display().to_string())?;
        Ok(Shard {
            path: path.to_path_buf(),
            header,
            tokens,
        })
    }

    /// Errors (naming the file and position) if any token id is `>= vocab`.
    pub fn validate_vocab(&self, vocab: usize) -> Result<()> {
        validate_vocab(&self.tokens, vocab, &self.path.display().to_string())
    }
}

/// Errors if any of `tokens` is `>= vocab`; `what` names the source.
pub fn validate_vocab(tokens: &[u32], vocab: usize, what: &str) -> Result<()> {
    if let Some(i) = tokens.iter().position(|&t| t as usize >= vocab) {
        bail!(
            "shard {what}: token {} at position {i} is outside the vocabulary of {vocab} ids",
            tokens[i]
        );
    }
    Ok(())
}

/// Parses a whole shard held in memory. `what` names it in errors.
pub fn parse_shard(bytes: &[u8], what: &str) -> Result<(ShardHeader, Vec<u32>)> {
    let h = ShardHeader::parse(bytes, what)?;
    check_len(h, bytes.len() as u64, what)?;
    let body = &bytes[HEADER_LEN..];
    let bad = |i: usize, v: String| {
        anyhow!(
            "shard {what}: token {i} is {v}, not a token id (a non-negative integer below {IGNORE})"
        )
    };
    let mut out = Vec::with_capacity(h.chunk_size);
    match h.dtype {
        Dtype::U8 => out.extend(body.iter().map(|&b| b as u32)),
        Dtype::U16 => out.extend(
            body.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
        ),
        Dtype::I8 => {
            for (i, &b) in body.iter().enumerate() {
                let v = b as i8;
                if v < 0 {
                    return Err(bad(i, v.to_string()));
                }
                out.push(v as u32);
            }
        }
        Dtype::I16 => {
            for (i, c) in body.chunks_exact(2).enumerate() {
                let v = i16::from_le_bytes([c[0], c[1]]);
                if v < 0 {
                    return Err(bad(i, v.to_string()));
                }
                out.push(v as u32);
            }
        }
        Dtype::I32 => {
            for (i, c) in body.chunks_exact(4).enumerate() {
                let v = i32::from_le_bytes(c.try_into().unwrap());
                if v < 0 {
                    return Err(bad(i, v.to_string()));
                }
                out.push(v as u32);
            }
        }
        Dtype::I64 => {
            for (i, c) in body.chunks_exact(8).enumerate() {
                let v = i64::from_le_bytes(c.try_into().unwrap());
                if v < 0 || v >= IGNORE as i64 {
                    return Err(bad(i, v.to_string()));
                }
                out.push(v as u32);
            }
        }
        Dtype::F32 => {
            for (i, c) in body.chunks_exact(4).enumerate() {
                let v = f32::from_le_bytes(c.try_into().unwrap()) as f64;
                out.push(float_token(v).ok_or_else(|| bad(i, v.to_string()))?);
            }
        }
        Dtype::F64 => {
            for (i, c) in body.chunks_exact(8).enumerate() {
                let v = f64::from_le_bytes(c.try_into().unwrap());
                out.push(float_token(v).ok_or_else(|| bad(i, v.to_string()))?);
            }
        }
    }
    Ok((h, out))
}

fn float_token(v: f64) -> Option<u32> {
    (v >= 0.0 && v < IGNORE as f64 && v.fract() == 0.0).then_some(v as u32)
}

/// The bytes of a shard holding exactly `tokens` (its chunk_size is `tokens.len()`). Errors if
/// a token does not fit `dtype`.
pub fn encode_shard(tokens: &[u32], dtype: Dtype) -> Result<Vec<u8>> {
    let max = dtype.max_token();
    if let Some(&t) = tokens.iter().find(|&&t| t as u64 > max) {
        bail!(
            "token id {t} does not fit a {} shard (largest {max})",
            dtype.name()
        );
    }
    let header = ShardHeader {
        dtype,
        chunk_size: tokens.len(),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + tokens.len() * dtype.size());
    out.extend_from_slice(&header.to_bytes());
    dtype.encode(tokens, &mut out);
    Ok(out)
}

/// What a [`ShardWriter`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriterSummary {
    /// The shard files, in order.
    pub files: Vec<PathBuf>,
    /// Tokens pushed in all.
    pub tokens_in: u64,
    /// Tokens written to shards (`files.len() * chunk_size`).
    pub tokens_written: u64,
    /// Tokens of the final partial chunk, not written.
    pub tokens_dropped: u64,
}

/// Buffers tokens and writes a full shard of `chunk_size` tokens, atomically, each time the
/// buffer fills. Files are `{dir}/{prefix}_{counter:010}.bin`, counting from 0.
#[derive(Debug)]
pub struct ShardWriter {
    dir: PathBuf,
    prefix: String,
    chunk_size: usize,
    dtype: Dtype,
    buf: Vec<u32>,
    summary: WriterSummary,
}

impl ShardWriter {
    /// A writer into the existing folder `dir`. Errors if `chunk_size` is 0 or `prefix` is not
    /// a plain file-name part.
    pub fn new(dir: &Path, prefix: &str, chunk_size: usize, dtype: Dtype) -> Result<ShardWriter> {
        if chunk_size == 0 {
            bail!("shard writer: chunk_size must be positive");
        }
        if prefix.is_empty() || prefix.contains(['/', '\\', '\0']) || prefix.starts_with('.') {
            bail!("shard writer: invalid file prefix {prefix:?}");
        }
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            chunk_size,
            dtype,
            buf: Vec::with_capacity(chunk_size),
            summary: WriterSummary::default(),
        })
    }

    /// The path of shard number `counter`.
    pub fn shard_path(&self, counter: usize) -> PathBuf {
        self.dir.join(format!("{}_{counter:010}.bin", self.prefix))
    }

    /// Shards written so far.
    pub fn shards_written(&self) -> usize {
        self.summary.files.len()
    }

    /// Appends `tokens`, writing every shard that fills. Errors if a token does not fit the
    /// dtype or a file cannot be written (naming it).
    pub fn push(&mut self, mut tokens: &[u32]) -> Result<()> {
        let max = self.dtype.max_token();
        if let Some(&t) = tokens.iter().find(|&&t| t as u64 > max) {
            bail!(
                "shard writer {}: token id {t} does not fit {} (largest {max})",
                self.prefix,
                self.dtype.name()
            );
        }
        self.summary.tokens_in += tokens.len() as u64;
        while !tokens.is_empty() {
            let take = (self.chunk_size - self.buf.len()).min(tokens.len());
            self.buf.extend_from_slice(&tokens[..take]);
            tokens = &tokens[take..];
            if self.buf.len() == self.chunk_size {
                self.flush_full()?;
            }
        }
        Ok(())
    }

    fn flush_full(&mut self) -> Result<()> {
        let path = self.shard_path(self.summary.files.len());
        let bytes = encode_shard(&self.buf, self.dtype)?;
        crate::io::write_atomic(&path, &bytes)?;
        self.summary.tokens_written += self.buf.len() as u64;
        self.summary.files.push(path);
        self.buf.clear();
        Ok(())
    }

    /// Ends writing. The buffered partial chunk is dropped (as the reference); the summary
    /// says how many tokens that was.
    pub fn finish(mut self) -> WriterSummary {
        self.summary.tokens_dropped = self.buf.len() as u64;
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard built byte by byte as numpy/struct would write it.
    fn handmade(code: u8, chunk: u64, body: &[u8]) -> Vec<u8> {
        let mut b = b"LITPKDS".to_vec();
        b.extend_from_slice(&1u64.to_le_bytes()); // struct.pack("<Q", 1)
        b.push(code); // struct.pack("<B", code)
        b.extend_from_slice(&chunk.to_le_bytes()); // struct.pack("<Q", chunk)
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn reads_a_reference_u16_shard_unchanged() {
        let toks: Vec<u16> = vec![1, 2, 65535, 0, 32000, 7];
        let body: Vec<u8> = toks.iter().flat_map(|t| t.to_le_bytes()).collect();
        let bytes = handmade(8, toks.len() as u64, &body);
        assert_eq!(&bytes[..HEADER_LEN], &{
            let mut h = [0u8; 24];
            h[..7].copy_from_slice(b"LITPKDS");
            h[7] = 1;
            h[15] = 8;
            h[16] = 6;
            h
        });
        let d = crate::io::scratch_dir("ref");
        let p = d.join("train_slimpajama_0_0000000000.bin");
        std::fs::write(&p, &bytes).unwrap();
        let s = Shard::open(&p).unwrap();
        assert_eq!(s.header.dtype, Dtype::U16);
        assert_eq!(s.header.chunk_size, 6);
        assert_eq!(s.tokens, vec![1, 2, 65535, 0, 32000, 7]);
        assert_eq!(read_header(&p).unwrap(), s.header);
        // Our encoder writes the same bytes.
        assert_eq!(encode_shard(&s.tokens, Dtype::U16).unwrap(), bytes);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn every_dtype_round_trips() {
        let toks: Vec<u32> = vec![0, 1, 5, 100, 127];
        for code in 1..=8u8 {
            let dt = Dtype::from_code(code).unwrap();
            assert_eq!(dt.code(), code);
            let bytes = encode_shard(&toks, dt).unwrap();
            assert_eq!(bytes.len(), HEADER_LEN + toks.len() * dt.size());
            let (h, back) = parse_shard(&bytes, "mem").unwrap();
            assert_eq!(h.dtype, dt);
            assert_eq!(back, toks, "{dt:?}");
        }
        let big = vec![70000u32, 3];
        for dt in [Dtype::I32, Dtype::I64, Dtype::F64] {
            let (_, back) = parse_shard(&encode_shard(&big, dt).unwrap(), "mem").unwrap();
            assert_eq!(back, big);
        }
        let e = encode_shard(&big, Dtype::U16).unwrap_err().to_string();
        assert!(e.contains("70000") && e.contains("uint16"), "{e}");
    }

    #[test]
    fn dtype_for_vocab_follows_reference() {
        assert_eq!(Dtype::for_vocab(32000), Dtype::U16);
        assert_eq!(Dtype::for_vocab(65499), Dtype::U16);
        assert_eq!(Dtype::for_vocab(65500), Dtype::I32);
        assert_eq!(Dtype::for_vocab(128256), Dtype::I32);
    }

    #[test]
    fn malformed_shards_are_named_errors() {
        let d = crate::io::scratch_dir("bad");
        let body: Vec<u8> = [1u16, 2, 3].iter().flat_map(|t| t.to_le_bytes()).collect();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "short_header.bin",
                b"LITPKDS\x01\x00".to_vec(),
                "truncated header",
            ),
            (
                "magic.bin",
                {
                    let mut b = handmade(8, 3, &body);
                    b[0] = b'X';
                    b
                },
                "wrong magic",
            ),
            ("dtype.bin", handmade(9, 3, &body), "unknown dtype code 9"),
            (
                "version.bin",
                {
                    let mut b = handmade(8, 3, &body);
                    b[7] = 2;
                    b
                },
                "unsupported version 2",
            ),
            (
                "truncated.bin",
                handmade(8, 4, &body),
                "truncated: 30 bytes",
            ),
            ("trailing.bin", handmade(8, 2, &body), "2 trailing bytes"),
            (
                "negative.bin",
                handmade(3, 1, &(-5i16).to_le_bytes()),
                "token 0 is -5",
            ),
            (
                "fraction.bin",
                handmade(6, 1, &1.5f32.to_le_bytes()),
                "token 0 is 1.5",
            ),
            ("empty.bin", Vec::new(), "truncated header: 0 bytes"),
        ];
        for (name, bytes, want) in cases {
            let p = d.join(name);
            std::fs::write(&p, &bytes).unwrap();
            let e = Shard::open(&p).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(want), "{name}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = Shard::open(&d.join("missing.bin")).unwrap_err().to_string();
        assert!(e.contains("missing.bin"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn validate_vocab_names_file_and_position() {
        let d = crate::io::scratch_dir("vocab");
        let p = d.join("s.bin");
        std::fs::write(&p, encode_shard(&[3, 9, 10, 2], Dtype::U16).unwrap()).unwrap();
        let s = Shard::open(&p).unwrap();
        s.validate_vocab(11).unwrap();
        let e = s.validate_vocab(10).unwrap_err().to_string();
        assert!(
            e.contains("s.bin") && e.contains("token 10 at position 2"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn writer_writes_full_chunks_and_drops_the_rest() {
        let d = crate::io::scratch_dir("writer");
        let mut w = ShardWriter::new(&d, "train_test_0", 5, Dtype::U16).unwrap();
        let toks: Vec<u32> = (0..23).collect();
        w.push(&toks[..3]).unwrap();
        w.push(&toks[3..14]).unwrap();
        w.push(&toks[14..]).unwrap();
        assert_eq!(w.shards_written(), 4);
        let s = w.finish();
        assert_eq!(s.tokens_in, 23);
        assert_eq!(s.tokens_written, 20);
        assert_eq!(s.tokens_dropped, 3);
        let names: Vec<String> = s
            .files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "train_test_0_0000000000.bin");
        assert_eq!(names[3], "train_test_0_0000000003.bin");
        let mut back = Vec::new();
        for p in &s.files {
            let sh = Shard::open(p).unwrap();
            assert_eq!(sh.header.chunk_size, 5);
            back.extend(sh.tokens);
        }
        assert_eq!(back, toks[..20]);
        // Only the shards are in the folder: no temporary files left behind.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 4);
        let mut w = ShardWriter::new(&d, "x", 4, Dtype::U8).unwrap();
        assert!(w.push(&[300]).unwrap_err().to_string().contains("300"));
        assert!(ShardWriter::new(&d, "x", 0, Dtype::U8).is_err());
        assert!(ShardWriter::new(&d, "a/b", 4, Dtype::U8).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
