//! Training and validation batches from a folder of LITPKDS shards, sampled as the NVlabs
//! GatedDeltaNet code does (`packed_dataset.py` with `pretrain.py`):
//!
//! 1. The files `{dir}/{prefix}*` are sorted by name and shuffled with `Rng::new(seed)` (seed
//!    3407 by default). Train prefix `train`, validation prefix `val` (which also matches
//!    `validation`). Names starting with `.` (temporary files) are skipped.
//! 2. They are sharded to ranks as `files[rank::world]`, after cutting the list to a multiple of
//!    `world` so every rank has the same number of files.
//! 3. `n_chunks` files (8 in the reference) are loaded at a time, a *group*, and cut into blocks
//!    of `seq_len + 1` tokens; each file's remainder is dropped.
//! 4. The group's block order is shuffled with one generator, `Rng::new(seed + rank)`, that
//!    runs on from group to group and epoch to epoch. Validation does not shuffle.
//! 5. A block gives `inputs = blk[..seq_len]`, `targets = blk[1..]`.
//!
//! Training wraps around (a new epoch walks the same groups with fresh permutations) and never
//! ends; validation ends after one pass.
//!
//! One deliberate difference: when the number of a rank's files is not a multiple of
//! `n_chunks`, the reference never reads the last few (it wraps to the start instead); here they
//! form a smaller last group, so no file is ignored. `n_chunks` larger than the rank's file
//! count is cut to it (the reference would yield nothing).
//!
//! The reading position, [`PackedPosition`], is a small serialisable value: the epoch, the
//! group, the next index in the group's block order and the generator state from before the
//! group's permutation. Restoring it with [`PackedDataset::set_position`] continues the stream
//! exactly.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use crate::data::shards::{read_header, Shard};
use crate::data::Batch;
use crate::tensor::Rng;

/// The reference's seed for the file shuffle and (plus the rank) the block shuffles.
pub const DEFAULT_SEED: u64 = 3407;
/// The reference's number of files loaded at a time.
pub const DEFAULT_N_CHUNKS: usize = 8;
/// File-name prefix of training shards.
pub const TRAIN_PREFIX: &str = "train";
/// File-name prefix of validation shards (matches `val_*` and `validation_*`).
pub const VALID_PREFIX: &str = "val";

/// How a [`PackedDataset`] samples.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackedConfig {
    /// Tokens per sequence; blocks hold `seq_len + 1`.
    pub seq_len: usize,
    /// Files loaded (and shuffled together) at a time.
    pub n_chunks: usize,
    /// Seed of the file shuffle; the block shuffle uses `seed + rank`.
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    /// Shuffle the block order within each group (training).
    pub shuffle: bool,
    /// Start a new epoch after the last group (training) instead of ending (validation).
    pub wrap: bool,
    /// When set, every loaded token must be below this (the model's vocabulary).
    pub vocab: Option<usize>,
}

impl PackedConfig {
    /// The training sampler of the reference: 8 files at a time, shuffled, wrapping.
    pub fn train(seq_len: usize) -> PackedConfig {
        PackedConfig {
            seq_len,
            n_chunks: DEFAULT_N_CHUNKS,
            seed: DEFAULT_SEED,
            rank: 0,
            world: 1,
            shuffle: true,
            wrap: true,
            vocab: None,
        }
    }

    /// The validation sampler: in order, one pass.
    pub fn validation(seq_len: usize) -> PackedConfig {
        PackedConfig {
            shuffle: false,
            wrap: false,
            ..PackedConfig::train(seq_len)
        }
    }
}

/// Where a [`PackedDataset`] is in its stream; save it to resume exactly.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackedPosition {
    /// Completed passes over the rank's files.
    pub epoch: u64,
    /// The current group of files.
    pub group: usize,
    /// The next index into the group's block order.
    pub block: usize,
    /// The block-shuffle generator as it was before the group's permutation was drawn.
    pub rng: Rng,
    /// Identifies the file list and sampling settings the position belongs to.
    pub fingerprint: u64,
}

/// One loaded group: its files' tokens and the block order.
#[derive(Debug)]
struct Loaded {
    group: usize,
    tokens: Vec<Vec<u32>>,
    /// `cum[i]` = blocks in the group's files before file `i`; `cum.last()` = all.
    cum: Vec<usize>,
    order: Vec<usize>,
    rng_after: Rng,
}

/// Blocks of `seq_len + 1` tokens from LITPKDS shards, NVlabs-style (see the module docs).
#[derive(Debug)]
pub struct PackedDataset {
    cfg: PackedConfig,
    /// This rank's files, in reading order.
    files: Vec<PathBuf>,
    blocks_per_file: Vec<usize>,
    groups: Vec<Range<usize>>,
    pos: PackedPosition,
    loaded: Option<Loaded>,
}

/// The files `{dir}/{prefix}*`, sorted by name (hidden files skipped).
pub fn list_shards(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| anyhow!("failed to read shard folder {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry =
            entry.map_err(|e| anyhow!("failed to read shard folder {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.starts_with(prefix) {
            continue;
        }
        if entry.path().is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// FNV-1a, for the position fingerprint.
fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

impl PackedDataset {
    /// Opens the shards `{dir}/{prefix}*` for `cfg.rank` of `cfg.world`, reading only their
    /// headers. Errors (naming the folder or file) when there is no file, fewer files than
    /// ranks, a malformed header, or no file long enough for one block.
    pub fn open(dir: &Path, prefix: &str, cfg: PackedConfig) -> Result<PackedDataset> {
        if cfg.seq_len == 0 || cfg.n_chunks == 0 {
            bail!(
                "packed data: seq_len ({}) and n_chunks ({}) must be positive",
                cfg.seq_len,
                cfg.n_chunks
            );
        }
        if cfg.world == 0 || cfg.rank >= cfg.world {
            bail!(
                "packed data: rank {} is not below world size {}",
                cfg.rank,
                cfg.world
            );
        }
        let mut all = list_shards(dir, prefix)?;
        if all.is_empty() {
            bail!(
                "no shard files {}/{prefix}* (run `gdn prepare` first)",
                dir.display()
            );
        }
        Rng::new(cfg.seed).shuffle(&mut all);
        let per_rank = all.len() / cfg.world;
        if per_rank == 0 {
            bail!(
                "{} shard files {}/{prefix}* for {} ranks: every rank needs at least one",
                all.len(),
                dir.display(),
                cfg.world
            );
        }
        let files: Vec<PathBuf> = all[..per_rank * cfg.world]
            .iter()
            .skip(cfg.rank)
            .step_by(cfg.world)
            .cloned()
            .collect();
        let block = cfg.seq_len + 1;
        let mut blocks_per_file = Vec::with_capacity(files.len());
        for f in &files {
            blocks_per_file.push(read_header(f)?.chunk_size / block);
        }
        if blocks_per_file.iter().all(|&b| b == 0) {
            bail!(
                "shard files {}/{prefix}*: no file holds one block of seq_len + 1 = {block} tokens",
                dir.display()
            );
        }
        let n = cfg.n_chunks.min(files.len());
        let groups: Vec<Range<usize>> = (0..files.len())
            .step_by(n)
            .map(|s| s..(s + n).min(files.len()))
            .collect();
        let mut fp = 0xcbf2_9ce4_8422_2325u64;
        for f in &files {
            fnv(
                &mut fp,
                f.file_name().unwrap_or_default().as_encoded_bytes(),
            );
            fnv(&mut fp, &[0]);
        }
        for x in [
            cfg.seq_len as u64,
            n as u64,
            cfg.seed,
            cfg.rank as u64,
            cfg.world as u64,
            cfg.shuffle as u64,
        ] {
            fnv(&mut fp, &x.to_le_bytes());
        }
        let pos = PackedPosition {
            epoch: 0,
            group: 0,
            block: 0,
            rng: Rng::new(cfg.seed.wrapping_add(cfg.rank as u64)),
            fingerprint: fp,
        };
        Ok(PackedDataset {
            cfg,
            files,
            blocks_per_file,
            groups,
            pos,
            loaded: None,
        })
    }

    pub fn config(&self) -> &PackedConfig {
        &self.cfg
    }

    /// This rank's files, in reading order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Blocks in one pass over this rank's files.
    pub fn blocks_per_epoch(&self) -> usize {
        self.blocks_per_file.iter().sum()
    }

    /// The current position (save it to resume).
    pub fn position(&self) -> PackedPosition {
        self.pos.clone()
    }

    /// Continues from a saved position. Errors if it was saved for other files or settings.
    pub fn set_position(&mut self, pos: PackedPosition) -> Result<()> {
        if pos.fingerprint != self.pos.fingerprint {
            bail!("packed data: the saved data position belongs to another set of shard files or sampling settings (seq_len, n_chunks, seed, rank, world)");
        }
        if pos.group > self.groups.len() {
            bail!(
                "packed data: the saved data position's group {} is past the last of {}",
                pos.group,
                self.groups.len()
            );
        }
        self.pos = pos;
        self.loaded = None;
        Ok(())
    }

    /// Back to the start (epoch 0, first block, fresh generator).
    pub fn rewind(&mut self) {
        self.pos.epoch = 0;
        self.pos.group = 0;
        self.pos.block = 0;
        self.pos.rng = Rng::new(self.cfg.seed.wrapping_add(self.cfg.rank as u64));
        self.loaded = None;
    }

    fn load(&mut self, group: usize) -> Result<()> {
        let range = self.groups[group].clone();
        let mut tokens = Vec::with_capacity(range.len());
        let mut cum = vec![0];
        for i in range {
            let shard = Shard::open(&self.files[i])?;
            let nb = shard.header.chunk_size / (self.cfg.seq_len + 1);
            if nb != self.blocks_per_file[i] {
                bail!(
                    "shard {}: changed since the dataset was opened",
                    self.files[i].display()
                );
            }
            if let Some(v) = self.cfg.vocab {
                shard.validate_vocab(v)?;
            }
            cum.push(cum.last().unwrap() + nb);
            tokens.push(shard.tokens);
        }
        let mut order: Vec<usize> = (0..*cum.last().unwrap()).collect();
        let mut rng = self.pos.rng.clone();
        if self.cfg.shuffle {
            rng.shuffle(&mut order);
        }
        self.loaded = Some(Loaded {
            group,
            tokens,
            cum,
            order,
            rng_after: rng,
        });
        Ok(())
    }

    /// The next block of `seq_len + 1` tokens; `None` at the end of validation data (never for
    /// wrapping data).
    pub fn next_block(&mut self) -> Result<Option<Vec<u32>>> {
        loop {
            if self.pos.group >= self.groups.len() {
                if !self.cfg.wrap {
                    return Ok(None);
                }
                self.pos.epoch += 1;
                self.pos.group = 0;
                self.pos.block = 0;
                self.loaded = None;
            }
            if self.loaded.as_ref().map(|l| l.group) != Some(self.pos.group) {
                self.load(self.pos.group)?;
            }
            let l = self.loaded.as_ref().unwrap();
            if self.pos.block < l.order.len() {
                let b = l.order[self.pos.block];
                // The file holding block b: the last i with cum[i] <= b.
                let f = l.cum.partition_point(|&c| c <= b) - 1;
                let len = self.cfg.seq_len + 1;
                let start = (b - l.cum[f]) * len;
                let blk = l.tokens[f][start..start + len].to_vec();
                self.pos.block += 1;
                return Ok(Some(blk));
            }
            self.pos.rng = l.rng_after.clone();
            self.pos.group += 1;
            self.pos.block = 0;
            self.loaded = None;
        }
    }

    /// Up to `batch` blocks as a [`Batch`] of `seq_len` inputs and shifted targets. Training
    /// batches are always full; the last validation batch may be smaller; `None` when no block
    /// is left.
    pub fn next_batch(&mut self, batch: usize) -> Result<Option<Batch>> {
        if batch == 0 {
            bail!("packed data: batch size must be positive");
        }
        let t = self.cfg.seq_len;
        let mut inputs = Vec::with_capacity(batch * t);
        let mut targets = Vec::with_capacity(batch * t);
        let mut rows = 0;
        while rows < batch {
            let Some(blk) = self.next_block()? else { break };
            inputs.extend_from_slice(&blk[..t]);
            targets.extend_from_slice(&blk[1..]);
            rows += 1;
        }
        Ok((rows > 0).then_some(Batch {
            batch: rows,
            seq_len: t,
            inputs,
            targets,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shards::{encode_shard, Dtype};
    use std::collections::HashSet;

    /// `n` shards of `chunk` tokens with globally unique ids (file f holds f*1000 + i), plus a
    /// validation shard and a stray file that must not be picked up.
    fn make_shards(name: &str, n: usize, chunk: usize) -> PathBuf {
        let d = crate::io::scratch_dir(name);
        for f in 0..n {
            let toks: Vec<u32> = (0..chunk as u32).map(|i| f as u32 * 1000 + i).collect();
            let p = d.join(format!("train_test_0_{f:010}.bin"));
            std::fs::write(p, encode_shard(&toks, Dtype::I32).unwrap()).unwrap();
        }
        let v: Vec<u32> = (0..chunk as u32).map(|i| 900_000 + i).collect();
        std::fs::write(
            d.join("validation_test_0_0000000000.bin"),
            encode_shard(&v, Dtype::I32).unwrap(),
        )
        .unwrap();
        std::fs::write(d.join(".train_tmp"), b"junk").unwrap();
        d
    }

    fn take(ds: &mut PackedDataset, n: usize) -> Vec<Vec<u32>> {
        (0..n).map(|_| ds.next_block().unwrap().unwrap()).collect()
    }

    fn cfg(seq_len: usize, n_chunks: usize) -> PackedConfig {
        PackedConfig {
            n_chunks,
            ..PackedConfig::train(seq_len)
        }
    }

    #[test]
    fn blocks_are_aligned_file_slices_and_remainders_drop() {
        // chunk 50, block 8: 6 blocks per file, 2 tokens dropped.
        let d = make_shards("aligned", 5, 50);
        let mut ds = PackedDataset::open(&d, TRAIN_PREFIX, cfg(7, 2)).unwrap();
        assert_eq!(ds.files().len(), 5);
        assert_eq!(ds.blocks_per_epoch(), 30);
        let blocks = take(&mut ds, 30);
        let mut seen = HashSet::new();
        for b in &blocks {
            assert_eq!(b.len(), 8);
            let (f, i) = (b[0] / 1000, b[0] % 1000);
            assert!(f < 5 && i % 8 == 0 && i + 8 <= 48, "{b:?}");
            assert!(b.windows(2).all(|w| w[1] == w[0] + 1));
            assert!(seen.insert(b[0]));
        }
        assert_eq!(seen.len(), 30);
        assert_eq!(ds.position().epoch, 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn deterministic_and_groups_are_read_in_turn() {
        let d = make_shards("det", 6, 40);
        let mut a = PackedDataset::open(&d, TRAIN_PREFIX, cfg(9, 3)).unwrap();
        let mut b = PackedDataset::open(&d, TRAIN_PREFIX, cfg(9, 3)).unwrap();
        assert_eq!(a.files(), b.files());
        let xa = take(&mut a, 40);
        assert_eq!(xa, take(&mut b, 40));
        // The first 12 blocks come from the first group's 3 files, shuffled.
        let first: HashSet<u32> = xa[..12].iter().map(|b| b[0] / 1000).collect();
        let group0: HashSet<u32> = a.files()[..3]
            .iter()
            .map(|p| {
                let s = p.file_name().unwrap().to_str().unwrap();
                s[s.len() - 14..s.len() - 4].parse::<u32>().unwrap()
            })
            .collect();
        assert_eq!(first, group0);
        let starts: Vec<u32> = xa[..12].iter().map(|b| b[0]).collect();
        let mut sorted = starts.clone();
        sorted.sort();
        assert_ne!(starts, sorted, "block order is shuffled");
        // Another seed: another file order or block order.
        let mut c = PackedDataset::open(
            &d,
            TRAIN_PREFIX,
            PackedConfig {
                seed: 1,
                ..cfg(9, 3)
            },
        )
        .unwrap();
        assert_ne!(take(&mut c, 40), xa);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn ranks_get_disjoint_equal_file_sets() {
        let d = make_shards("ranks", 7, 30);
        let world = 3;
        let mut all_files = HashSet::new();
        let mut all_blocks = HashSet::new();
        for rank in 0..world {
            let mut ds = PackedDataset::open(
                &d,
                TRAIN_PREFIX,
                PackedConfig {
                    rank,
                    world,
                    ..cfg(4, 8)
                },
            )
            .unwrap();
            // 7 files cut to 6: two per rank.
            assert_eq!(ds.files().len(), 2);
            for f in ds.files() {
                assert!(all_files.insert(f.clone()), "file on two ranks");
            }
            let n = ds.blocks_per_epoch();
            assert_eq!(n, 12);
            for b in take(&mut ds, n) {
                assert!(all_blocks.insert(b[0]), "block on two ranks");
            }
        }
        assert_eq!(all_files.len(), 6);
        assert_eq!(all_blocks.len(), 36);
        let e = PackedDataset::open(
            &d,
            TRAIN_PREFIX,
            PackedConfig {
                rank: 0,
                world: 8,
                ..cfg(4, 8)
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("7 shard files") && e.contains("8 ranks"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn resume_equals_uninterrupted() {
        let d = make_shards("resume", 5, 33);
        let c = cfg(5, 2); // 5 blocks per file, groups of 2, 2, 1 files: 25 blocks an epoch
        let mut whole = PackedDataset::open(&d, TRAIN_PREFIX, c.clone()).unwrap();
        let reference = take(&mut whole, 80);
        for cut in [0, 1, 9, 10, 11, 24, 25, 26, 49, 50, 63] {
            let mut a = PackedDataset::open(&d, TRAIN_PREFIX, c.clone()).unwrap();
            assert_eq!(take(&mut a, cut), reference[..cut]);
            let saved = serde_json::to_string(&a.position()).unwrap();
            drop(a);
            let mut b = PackedDataset::open(&d, TRAIN_PREFIX, c.clone()).unwrap();
            b.set_position(serde_json::from_str(&saved).unwrap())
                .unwrap();
            assert_eq!(take(&mut b, 80 - cut), reference[cut..], "cut {cut}");
        }
        // A position from other settings is refused.
        let a = PackedDataset::open(&d, TRAIN_PREFIX, c.clone()).unwrap();
        let mut other = PackedDataset::open(&d, TRAIN_PREFIX, cfg(6, 2)).unwrap();
        let e = other.set_position(a.position()).unwrap_err().to_string();
        assert!(e.contains("another set of shard files"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn training_wraps_into_new_epochs() {
        let d = make_shards("wrap", 3, 20);
        let mut ds = PackedDataset::open(&d, TRAIN_PREFIX, cfg(4, 2)).unwrap();
        let n = ds.blocks_per_epoch();
        assert_eq!(n, 12);
        let e0 = take(&mut ds, n);
        let e1 = take(&mut ds, n);
        assert_eq!(ds.position().epoch, 1);
        let s0: HashSet<_> = e0.iter().map(|b| b[0]).collect();
        let s1: HashSet<_> = e1.iter().map(|b| b[0]).collect();
        assert_eq!(s0.len(), n);
        assert_eq!(s0, s1, "each epoch covers every block once");
        assert_ne!(e0, e1, "a new epoch draws new permutations");
        take(&mut ds, 1);
        assert_eq!(ds.position().epoch, 2);
        let b = ds.next_batch(5).unwrap().unwrap();
        assert_eq!((b.batch, b.seq_len), (5, 4));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn validation_is_ordered_and_finite() {
        let d = make_shards("valid", 2, 20);
        let mut ds = PackedDataset::open(&d, VALID_PREFIX, PackedConfig::validation(5)).unwrap();
        assert_eq!(ds.files().len(), 1);
        let b = ds.next_batch(2).unwrap().unwrap();
        assert_eq!(b.batch, 2);
        assert_eq!(
            &b.inputs[..5],
            &[900_000, 900_001, 900_002, 900_003, 900_004]
        );
        assert_eq!(
            &b.targets[..5],
            &[900_001, 900_002, 900_003, 900_004, 900_005]
        );
        assert_eq!(b.inputs[5], 900_006);
        let last = ds.next_batch(2).unwrap().unwrap();
        assert_eq!(last.batch, 1, "3 blocks of 6 in 20 tokens");
        assert!(ds.next_batch(2).unwrap().is_none());
        assert!(ds.next_block().unwrap().is_none());
        ds.rewind();
        assert_eq!(ds.next_batch(2).unwrap().unwrap(), b);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_folders_and_vocab_are_named_errors() {
        let d = make_shards("bad", 2, 20);
        let e = PackedDataset::open(&d, "nothing", PackedConfig::train(4))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no shard files") && e.contains("nothing*"),
            "{e}"
        );
        let e = PackedDataset::open(&d, TRAIN_PREFIX, PackedConfig::train(20))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no file holds one block"), "{e}");
        let mut ds = PackedDataset::open(
            &d,
            TRAIN_PREFIX,
            PackedConfig {
                vocab: Some(1005),
                ..PackedConfig::train(4)
            },
        )
        .unwrap();
        let e = ds.next_block().unwrap_err().to_string();
        assert!(
            e.contains("train_test_0_") && e.contains("outside the vocabulary"),
            "{e}"
        );
        std::fs::write(d.join("train_zz.bin"), b"LITPKDX").unwrap();
        let e = PackedDataset::open(&d, TRAIN_PREFIX, PackedConfig::train(4))
            .unwrap_err()
            .to_string();
        assert!(e.contains("train_zz.bin"), "{e}");
        let e = PackedDataset::open(&d.join("missing"), TRAIN_PREFIX, PackedConfig::train(4))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
