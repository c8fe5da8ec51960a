//! Byte-level language-model data from any file: every byte is a token (vocabulary 256).
//!
//! Split rule: the last `len / 10` bytes (rounded down) are the validation split and the rest is
//! the training split, so the two never share a byte. Files shorter than [`MIN_BYTES`] are
//! rejected. Whether a split is long enough for a given `seq_len` (it needs `seq_len + 1` bytes
//! for one window) is checked where windows are cut: [`ByteDataset::sample_train`] returns an
//! error and [`ByteDataset::valid_batches`] returns no batches; see
//! [`ByteDataset::valid_windows`].

use std::path::Path;

use anyhow::{anyhow, bail, Result};

use crate::data::Batch;
use crate::tensor::Rng;

/// Number of distinct tokens: one per byte value.
pub const BYTE_VOCAB: usize = 256;

/// Smallest accepted input, in bytes (gives a validation split of at least 3 bytes).
pub const MIN_BYTES: usize = 32;

/// A text (or any) file split into training and validation bytes.
#[derive(Clone, Debug)]
pub struct ByteDataset {
    train: Vec<u8>,
    valid: Vec<u8>,
}

impl ByteDataset {
    /// Reads the whole file at `path`; errors name the file.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| anyhow!("failed to read data file {path:?}: {e}"))?;
        Self::from_bytes(bytes).map_err(|e| anyhow!("data file {path:?}: {e}"))
    }

    /// Splits `bytes`: the last `len / 10` bytes are validation, the rest training.
    pub fn from_bytes(mut bytes: Vec<u8>) -> Result<Self> {
        let n = bytes.len();
        if n == 0 {
            bail!("the data is empty");
        }
        if n < MIN_BYTES {
            bail!("the data is too short: {n} bytes, need at least {MIN_BYTES}");
        }
        let valid = bytes.split_off(n - n / 10);
        Ok(ByteDataset {
            train: bytes,
            valid,
        })
    }

    pub fn train_len(&self) -> usize {
        self.train.len()
    }

    pub fn valid_len(&self) -> usize {
        self.valid.len()
    }

    /// `batch` windows of `seq_len + 1` bytes at uniform random offsets of the training split:
    /// `inputs = w[..seq_len]`, `targets = w[1..]`. Errors if `batch` or `seq_len` is 0 or the
    /// training split is shorter than `seq_len + 1` bytes.
    pub fn sample_train(&self, rng: &mut Rng, batch: usize, seq_len: usize) -> Result<Batch> {
        if batch == 0 || seq_len == 0 {
            bail!("byte data: batch ({batch}) and seq_len ({seq_len}) must be positive");
        }
        let n = self.train.len();
        if n <= seq_len {
            bail!(
                "byte data: the training split has {n} bytes, fewer than seq_len + 1 = {}; use a longer file or a shorter seq_len",
                seq_len as u128 + 1
            );
        }
        let mut inputs = Vec::with_capacity(batch * seq_len);
        let mut targets = Vec::with_capacity(batch * seq_len);
        for _ in 0..batch {
            let start = rng.below(n - seq_len);
            let w = &self.train[start..start + seq_len + 1];
            inputs.extend(w[..seq_len].iter().map(|&b| b as u32));
            targets.extend(w[1..].iter().map(|&b| b as u32));
        }
        Ok(Batch {
            batch,
            seq_len,
            inputs,
            targets,
        })
    }

    /// How many validation windows of `seq_len + 1` bytes [`Self::valid_batches`] cuts: they
    /// start every `seq_len` bytes, so each validation byte after the first is a target exactly
    /// once (the last window shares its first byte, as input, with the previous one's last
    /// target). 0 when the split is shorter than `seq_len + 1` or `seq_len` is 0.
    pub fn valid_windows(&self, seq_len: usize) -> usize {
        if seq_len == 0 {
            return 0;
        }
        self.valid.len().saturating_sub(1) / seq_len
    }

    /// The validation split as consecutive windows (see [`Self::valid_windows`]), in order,
    /// grouped `batch` per batch; the last batch holds the remainder and may be smaller. At most
    /// `max_batches` batches. Deterministic. Empty when `batch`, `seq_len` or `max_batches` is
    /// 0 or the split is shorter than `seq_len + 1` bytes.
    pub fn valid_batches(&self, batch: usize, seq_len: usize, max_batches: usize) -> Vec<Batch> {
        let windows = self.valid_windows(seq_len);
        if batch == 0 || windows == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut next = 0;
        while next < windows && out.len() < max_batches {
            let rows = batch.min(windows - next);
            let mut inputs = Vec::with_capacity(rows * seq_len);
            let mut targets = Vec::with_capacity(rows * seq_len);
            for r in 0..rows {
                let start = (next + r) * seq_len;
                let w = &self.valid[start..start + seq_len + 1];
                inputs.extend(w[..seq_len].iter().map(|&b| b as u32));
                targets.extend(w[1..].iter().map(|&b| b as u32));
            }
            out.push(Batch {
                batch: rows,
                seq_len,
                inputs,
                targets,
            });
            next += rows;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!(
            "gdn-bytes-test-{}-{nanos}-{name}",
            std::process::id()
        ))
    }

    #[test]
    fn split_is_last_tenth() {
        let d = ByteDataset::from_bytes(ramp(1000)).unwrap();
        assert_eq!((d.train_len(), d.valid_len()), (900, 100));
        let d = ByteDataset::from_bytes(ramp(1009)).unwrap();
        assert_eq!((d.train_len(), d.valid_len()), (909, 100));
        let d = ByteDataset::from_bytes(ramp(MIN_BYTES)).unwrap();
        assert_eq!(d.train_len() + d.valid_len(), MIN_BYTES);
        assert_eq!(d.valid_len(), MIN_BYTES / 10);
    }

    #[test]
    fn from_bytes_rejects_empty_and_short() {
        let e = ByteDataset::from_bytes(Vec::new()).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = ByteDataset::from_bytes(ramp(MIN_BYTES - 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short") && e.contains("31 bytes"), "{e}");
    }

    #[test]
    fn open_reads_file_and_names_it_in_errors() {
        let p = temp_path("ok.txt");
        std::fs::write(&p, ramp(500)).unwrap();
        let d = ByteDataset::open(&p).unwrap();
        assert_eq!((d.train_len(), d.valid_len()), (450, 50));
        std::fs::remove_file(&p).unwrap();

        let missing = temp_path("missing.txt");
        let e = ByteDataset::open(&missing).unwrap_err().to_string();
        assert!(e.starts_with("failed to read data file"), "{e}");
        assert!(e.contains("missing.txt"), "{e}");

        let empty = temp_path("empty.txt");
        std::fs::write(&empty, b"").unwrap();
        let e = ByteDataset::open(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.txt") && e.contains("empty"), "{e}");
        std::fs::remove_file(&empty).unwrap();
    }

    #[test]
    fn sample_train_windows_are_shifted_training_bytes() {
        // Distinct byte values would be ambiguous past 251, so check windows by content: each
        // window must be a contiguous run of the ramp inside the training split.
        let data = ramp(2000);
        let d = ByteDataset::from_bytes(data.clone()).unwrap();
        let mut rng = Rng::new(9);
        let b = d.sample_train(&mut rng, 16, 33).unwrap();
        assert_eq!((b.batch, b.seq_len), (16, 33));
        assert_eq!(b.inputs.len(), 16 * 33);
        assert_eq!(b.targets.len(), 16 * 33);
        for (inp, tgt) in b.inputs.chunks(33).zip(b.targets.chunks(33)) {
            assert_eq!(&inp[1..], &tgt[..32]);
            assert!(inp.iter().chain(tgt).all(|&x| (x as usize) < BYTE_VOCAB));
            let w: Vec<u8> = inp.iter().chain(&tgt[32..]).map(|&x| x as u8).collect();
            let found = (0..=d.train_len() - 34).any(|s| data[s..s + 34] == w[..]);
            assert!(found, "window not in the training split");
        }
        // Same seed, same batch; the stream advances.
        let again = d.sample_train(&mut Rng::new(9), 16, 33).unwrap();
        assert_eq!(again, b);
        assert_ne!(d.sample_train(&mut rng, 16, 33).unwrap(), b);
    }

    #[test]
    fn sample_train_covers_the_whole_split_including_its_end() {
        let d = ByteDataset::from_bytes((0..40).collect()).unwrap();
        assert_eq!(d.train_len(), 36);
        // seq_len 35 leaves exactly one window: the whole training split.
        let b = d.sample_train(&mut Rng::new(1), 3, 35).unwrap();
        for row in b.targets.chunks(35) {
            assert_eq!(row.last(), Some(&35));
        }
        let e = d
            .sample_train(&mut Rng::new(1), 3, 36)
            .unwrap_err()
            .to_string();
        assert!(e.contains("36 bytes") && e.contains("37"), "{e}");
        assert!(d.sample_train(&mut Rng::new(1), 0, 4).is_err());
        assert!(d.sample_train(&mut Rng::new(1), 2, 0).is_err());
    }

    #[test]
    fn valid_batches_are_consecutive_and_deterministic() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let d = ByteDataset::from_bytes(data.clone()).unwrap();
        let valid = &data[900..];
        assert_eq!(d.valid_windows(8), 12); // (100 - 1) / 8
        let bs = d.valid_batches(5, 8, usize::MAX);
        assert_eq!(
            bs.iter().map(|b| b.batch).collect::<Vec<_>>(),
            vec![5, 5, 2]
        );
        let mut w = 0;
        for b in &bs {
            assert_eq!(b.seq_len, 8);
            for (inp, tgt) in b.inputs.chunks(8).zip(b.targets.chunks(8)) {
                let exp_in: Vec<u32> = valid[w * 8..w * 8 + 8].iter().map(|&x| x as u32).collect();
                let exp_t: Vec<u32> = valid[w * 8 + 1..w * 8 + 9]
                    .iter()
                    .map(|&x| x as u32)
                    .collect();
                assert_eq!(inp, &exp_in[..]);
                assert_eq!(tgt, &exp_t[..]);
                w += 1;
            }
        }
        assert_eq!(w, 12);
        assert_eq!(d.valid_batches(5, 8, usize::MAX), bs);
        assert_eq!(d.valid_batches(5, 8, 2), bs[..2].to_vec());
    }

    #[test]
    fn valid_batches_empty_when_split_too_short() {
        let d = ByteDataset::from_bytes(ramp(100)).unwrap();
        assert_eq!(d.valid_len(), 10);
        assert_eq!(d.valid_batches(4, 9, 10).len(), 1);
        assert!(d.valid_batches(4, 10, 10).is_empty());
        assert!(d.valid_batches(0, 4, 10).is_empty());
        assert!(d.valid_batches(4, 0, 10).is_empty());
        assert!(d.valid_batches(4, 4, 0).is_empty());
        assert_eq!(d.valid_windows(10), 0);
    }
}
