//! The device-memory account of a training run: every buffer [`super::GpuModel`] (and the
//! trainer's optimiser state) allocates, by category, with its bytes.
//!
//! Single source of truth: the model's buffers are built by one generic function over an
//! [`Alloc`]ator; on the GPU it allocates ([`GpuAlloc`]), for the account it only records sizes
//! ([`CountAlloc`], no GPU needed). The two exceptions are the delta-rule workspace, which
//! `cuda::delta_rule` allocates itself ([`delta_rule_workspace`] mirrors its sizes), and the
//! cuBLASLt workspace (a constant of `cuda::blas`).

use super::super::delta_rule::{p_len, sdp_len, Backward, REC_WIDTH};
use super::super::Gpu;
use crate::ops::delta_rule::{Dims, CHUNK};
use anyhow::{Context, Result};
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use serde::Serialize;
use std::fmt::Write as _;

/// What a buffer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum MemCategory {
    /// fp32 master weights and their bf16 working copy.
    Parameters,
    /// fp32 parameter gradients.
    Gradients,
    /// AdamW moments and the weight-decay factors.
    Optimizer,
    /// The fp32 residual stream at every block boundary (kept for the backward).
    Residual,
    /// What each block's forward keeps for its backward (one set per block; one in all with
    /// `--recompute`).
    SavedPerBlock,
    /// Activations the save plan keeps per block instead of recomputing them in the backward
    /// (`--save auto`: the MLP's gate/up of some blocks; `--save all`: every group of every
    /// block but the last, whose copy is the shared one under `BlockWork`).
    KeptPerBlock,
    /// Activations of one block at a time: written by each block's forward, recomputed by its
    /// backward from the saved tensors (shared by all blocks).
    BlockWork,
    /// Gradient temporaries of the backward (shared by all blocks).
    Backward,
    /// The chunked delta rule's workspace (shared by all blocks).
    DeltaRule,
    /// Final norm, logits (and their gradient, in place) and the cross-entropy.
    Logits,
    /// Tokens, targets, sequence offsets, the cuBLASLt workspace.
    Misc,
}

impl MemCategory {
    pub fn label(self) -> &'static str {
        match self {
            MemCategory::Parameters => "parameters (fp32 master + bf16 copy)",
            MemCategory::Gradients => "gradients (fp32)",
            MemCategory::Optimizer => "optimizer (AdamW m, v; decay factors)",
            MemCategory::Residual => "residual stream (fp32, every block boundary)",
            MemCategory::SavedPerBlock => "saved for the backward (per block)",
            MemCategory::KeptPerBlock => "kept instead of recomputed (per block, --save)",
            MemCategory::BlockWork => "block work (one block, recomputed in the backward)",
            MemCategory::Backward => "backward temporaries",
            MemCategory::DeltaRule => "delta-rule workspace",
            MemCategory::Logits => "final norm, logits, cross-entropy",
            MemCategory::Misc => "tokens, targets, offsets, cuBLASLt",
        }
    }
}

/// One buffer (or `copies` identical ones, e.g. one per block).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemEntry {
    pub category: MemCategory,
    pub name: String,
    pub copies: usize,
    pub elems: usize,
    pub elem_bytes: usize,
}

impl MemEntry {
    pub fn bytes(&self) -> usize {
        self.copies * self.elems * self.elem_bytes
    }
}

/// The buffers of a run with their sizes (see the module documentation).
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryAccount {
    pub entries: Vec<MemEntry>,
}

impl MemoryAccount {
    /// Adds `copies` buffers of `elems` elements of `elem_bytes` (merged with an entry of the
    /// same category, name and size).
    pub fn add(
        &mut self,
        category: MemCategory,
        name: &str,
        copies: usize,
        elems: usize,
        elem_bytes: usize,
    ) {
        if let Some(e) = self.entries.iter_mut().find(|e| {
            e.category == category
                && e.name == name
                && e.elems == elems
                && e.elem_bytes == elem_bytes
        }) {
            e.copies += copies;
            return;
        }
        self.entries.push(MemEntry {
            category,
            name: name.to_string(),
            copies,
            elems,
            elem_bytes,
        });
    }

    pub fn total(&self) -> usize {
        self.entries.iter().map(MemEntry::bytes).sum()
    }

    /// Bytes per category, in category order (categories without buffers left out).
    pub fn by_category(&self) -> Vec<(MemCategory, usize)> {
        let mut out: Vec<(MemCategory, usize)> = Vec::new();
        for e in &self.entries {
            match out.iter_mut().find(|(c, _)| *c == e.category) {
                Some((_, b)) => *b += e.bytes(),
                None => out.push((e.category, e.bytes())),
            }
        }
        out.sort_by_key(|(c, _)| *c);
        out
    }

    /// Bytes of one category.
    pub fn category(&self, c: MemCategory) -> usize {
        self.entries
            .iter()
            .filter(|e| e.category == c)
            .map(MemEntry::bytes)
            .sum()
    }

    /// Markdown tables: the categories, then every buffer (GB = 1e9 bytes).
    pub fn table(&self) -> String {
        let gb = |b: usize| b as f64 / 1e9;
        let mut s = String::new();
        let _ = writeln!(s, "| category | GB |");
        let _ = writeln!(s, "|---|---:|");
        for (c, b) in self.by_category() {
            let _ = writeln!(s, "| {} | {:.2} |", c.label(), gb(b));
        }
        let _ = writeln!(s, "| **total** | **{:.2}** |", gb(self.total()));
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| category | buffer | copies | elements | bytes/elem | GB |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
        let mut entries: Vec<&MemEntry> = self.entries.iter().collect();
        entries.sort_by_key(|e| e.category);
        for e in entries {
            let _ = writeln!(
                s,
                "| {:?} | {} | {} | {} | {} | {:.3} |",
                e.category,
                e.name,
                e.copies,
                e.elems,
                e.elem_bytes,
                gb(e.bytes())
            );
        }
        s
    }
}

/// What a buffer is in one build of the model's buffers: a device buffer, or nothing (counting).
pub trait BufKind {
    type Buf<T>;
}

/// Device buffers.
pub struct OnGpu;
impl BufKind for OnGpu {
    type Buf<T> = CudaSlice<T>;
}

/// Sizes only (the account).
pub struct Counted;
impl BufKind for Counted {
    type Buf<T> = ();
}

/// Where the model's buffers come from.
pub trait Alloc {
    type K: BufKind;
    /// A zeroed buffer of `n` elements (at least one: the GPU allocator rounds 0 up to 1).
    fn buf<T: DeviceRepr + ValidAsZeroBits>(
        &mut self,
        category: MemCategory,
        what: &str,
        n: usize,
    ) -> Result<<Self::K as BufKind>::Buf<T>>;
}

/// Allocates on the GPU.
pub struct GpuAlloc<'g> {
    pub gpu: &'g Gpu,
}

impl Alloc for GpuAlloc<'_> {
    type K = OnGpu;
    fn buf<T: DeviceRepr + ValidAsZeroBits>(
        &mut self,
        _category: MemCategory,
        what: &str,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.gpu
            .stream
            .alloc_zeros::<T>(n.max(1))
            .with_context(|| format!("GpuModel: allocating `{what}` ({n} elements)"))
    }
}

/// Records sizes (no GPU).
#[derive(Default)]
pub struct CountAlloc {
    pub account: MemoryAccount,
}

impl Alloc for CountAlloc {
    type K = Counted;
    fn buf<T: DeviceRepr + ValidAsZeroBits>(
        &mut self,
        category: MemCategory,
        what: &str,
        n: usize,
    ) -> Result<()> {
        self.account
            .add(category, what, 1, n.max(1), std::mem::size_of::<T>());
        Ok(())
    }
}

/// The buffers `DeltaRuleWorkspace::new(gpu, dims, max_tokens, max_seqs, backward)` allocates
/// (mirrors `cuda::delta_rule`, which allocates its own workspace).
pub fn delta_rule_workspace(
    acc: &mut MemoryAccount,
    dims: Dims,
    max_tokens: usize,
    max_seqs: usize,
    backward: Backward,
) {
    let (h, k, v) = (dims.heads, dims.dk, dims.dv);
    let max_chunks = max_tokens.div_ceil(CHUNK) + max_seqs;
    let t = max_tokens.max(1);
    let c = MemCategory::DeltaRule;
    let mut add = |name: &str, n: usize, b: usize| acc.add(c, name, 1, n.max(1), b);
    if backward == Backward::RecomputeT {
        add("rule tmat (f32)", max_chunks * h * CHUNK * CHUNK, 4);
    }
    if backward != Backward::No {
        add("rule dvloc", t * h * v, 2);
        add("rule dh (bf16 states)", max_chunks * h * k * v, 2);
        add("rule <h, dh> partials (f32)", sdp_len(max_chunks, h, v), 4);
        add("rule dvnew", t * h * v, 2);
    }
    add("rule ctab (i32)", 2 * max_chunks, 4);
    add("rule seq_chunk (i32)", max_seqs + 1, 4);
    add("rule gc (f32)", t * h, 4);
    add("rule decay record (f32)", max_chunks * h * REC_WIDTH, 4);
    add("rule w", t * h * k, 2);
    add("rule u", t * h * v, 2);
    add("rule h (chunk states)", max_chunks * h * k * v, 2);
    if p_len(dims, max_chunks) > 0 {
        add("rule p (chunk P)", p_len(dims, max_chunks), 2);
    }
    add("rule vnew", t * h * v, 2);
}
