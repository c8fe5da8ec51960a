//! The gated delta rule on the GPU (kernels in `kernels/delta_rule.cu`): the chunked forward and
//! backward (chunk 64, WY/UT transform, bf16 tensor-core products with f32 accumulation), and a
//! fused recurrent decode step. The CPU reference is [`crate::ops::delta_rule`]; layouts are the
//! same: q,k [T,H,K], v,o [T,H,V] bf16; g (per-token log decay, not cumsummed) and beta [T,H] f32;
//! states [N,H,K,V] f32, key-first; sequences packed by `cu_seqlens`.
//!
//! Every entry point validates first and only then queues kernels on `gpu.stream`; none waits
//! for the device. The one exception is [`DeltaRuleWorkspace::set_seqlens`] (called by the
//! chunked entry points), which uploads the chunk table when `cu_seqlens` differs from the last
//! call's and then synchronises (pageable copy). Repeated calls with the same `cu_seqlens`
//! allocate and copy nothing, so they can be captured in a CUDA graph.
//!
//! Pipeline (spec §B), per call:
//! - forward: `prep` (per chunk, head: G, T = (I+M)^{-1}, W, U) → the state pass (per sequence,
//!   head, V tile: each chunk's entering state h_c, Ṽ = U − W h_c, the output O and the final
//!   state) on one of three paths ([`ForwardPath`], chosen by the cost model): `state_fwd` (O
//!   formed in the sequential loop), `state_split` then `fwd_o` (h_c and Ṽ through global
//!   memory, O per chunk), or `state_ws` (K ≤ 128: state warps hand h_c and Ṽ to output warps
//!   in the same CTA);
//! - backward: `wu` (W, U and G from the T the forward saved; without a saved T, `prep` again,
//!   storing T in the workspace) → `state_split` (recompute h_c, Ṽ into the workspace) →
//!   `dvloc` → `state_bwd` (reverse: dh_c in bf16, its partials of ⟨h_c, dh_c⟩ from the f32 dS,
//!   dṼ, dh0), or instead of those two `state_bwd_ws` (K ≤ 128: dṼ_loc warps hand dṼ_loc to the
//!   reverse pass's warps in the same CTA) → `dqkwy`, one kernel: per chunk and head `dqk` (dq,
//!   partial dk and dG), then `wy` (WY backward, dv, dβ, dk, dg).
//!
//! With sequences too few to fill the GPU, the forward's state pass, the recompute and the
//! reverse pass walk segments of the long sequences instead, after a transition pass and
//! `seg_combine` have formed each segment's start state (`SegPlan`).
//!
//! `prep` and `wu` also write G, the decay record (δ_t = exp(G_last − G_t), γ_last, γ_t per
//! chunk and head, `REC_WIDTH` f32) that the state passes read instead of forming exps, and W
//! negated (−W, the sign the state passes use).
//!
//! Saved T: T = (I+M)^{-1} per chunk and head, f32 [NC, H, 64, 64] (64 f32 per token and head,
//! plus the padding of partial chunks: [`saved_t_len`]). A caller that keeps it from
//! [`chunk_forward`] (`save_t`) to [`chunk_backward`] (`saved_t`) spares the backward the T
//! solve: `wu` (0.08 ms predicted at B4·T4096·H16·K128, FLA's recompute_w_u 0.079 ms) instead of
//! `prep` (0.203 ms). Both give the same W, U, G and T bit for bit (`wu` and `prep` share the
//! code of the products; scripts/cuda_emu checks it), so the gradients do not depend on the
//! choice. Where the warp-specialised passes serve (K <= 128), the buffer also holds the
//! forward's P behind T, and a flag saying whether that forward formed it (it does when its own
//! path or the reverse pass it expects is warp-specialised); the warp-specialised reverse pass
//! then reads P instead of forming Pᵀ from Q and K (the same bits).

#[cfg(test)]
mod mirror;
pub mod selftest;
pub use self::selftest::selftest;

use super::{Gpu, KernelSource};
use crate::ops::delta_rule::{Dims, CHUNK};
use anyhow::{ensure, Context, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaEvent, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut,
    LaunchConfig, PushKernelArg,
};
use half::bf16;

/// The kernels of this module, one NVRTC module per key head size K = 64, 128, 256 (the file's
/// `DR_ONLY_K`): a model compiles only its own variants. The whole file, with every state-pass
/// variant, took over 150 s of NVRTC at the first run on the GPU machine (session 5, call 5).
pub static SOURCES: [KernelSource; 3] = [
    KernelSource {
        name: "delta_rule_k64",
        code: concat!(
            "#define DR_ONLY_K 64\n",
            include_str!("kernels/delta_rule.cu")
        ),
    },
    KernelSource {
        name: "delta_rule_k128",
        code: concat!(
            "#define DR_ONLY_K 128\n",
            include_str!("kernels/delta_rule.cu")
        ),
    },
    KernelSource {
        name: "delta_rule_k256",
        code: concat!(
            "#define DR_ONLY_K 256\n",
            include_str!("kernels/delta_rule.cu")
        ),
    },
];

/// The module of key head size `dk`.
fn source(dk: usize) -> &'static KernelSource {
    &SOURCES[k_index(dk)]
}

/// This module's `.cu` sources, for [`super::all_sources`].
pub fn sources() -> Vec<&'static KernelSource> {
    SOURCES.iter().collect()
}

/// Checks the head sizes the kernels are built for: K ∈ {64, 128, 256}, V ∈ {K, 2K}.
pub fn check_dims(dims: Dims) -> Result<()> {
    ensure!(dims.heads > 0, "delta rule (CUDA): heads must be > 0");
    ensure!(
        matches!(dims.dk, 64 | 128 | 256),
        "delta rule (CUDA): unsupported key head dim K={} (supported: 64, 128, 256)",
        dims.dk
    );
    ensure!(
        dims.dv == dims.dk || dims.dv == 2 * dims.dk,
        "delta rule (CUDA): unsupported value head dim V={} for K={} (supported: V = K or V = 2K)",
        dims.dv,
        dims.dk
    );
    Ok(())
}

pub use crate::ops::delta_rule::check_cu_seqlens;

fn check_len(name: &str, len: usize, want: usize, what: &str) -> Result<()> {
    ensure!(
        len == want,
        "delta rule (CUDA): `{name}` has {len} elements, expected {want} ({what})"
    );
    Ok(())
}

/// One kernel argument.
#[derive(Clone, Copy)]
enum Arg {
    P(u64),
    I(i32),
    F(f32),
}

fn launch(
    gpu: &Gpu,
    f: &CudaFunction,
    name: &str,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    args: &[Arg],
) -> Result<()> {
    launch_on(&gpu.stream, f, name, grid, block, smem, args)
}

/// [`launch`] on a given stream: the GPU's, or its side stream between a fork and a join.
fn launch_on(
    stream: &CudaStream,
    f: &CudaFunction,
    name: &str,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    args: &[Arg],
) -> Result<()> {
    let mut b = stream.launch_builder(f);
    for a in args {
        match a {
            Arg::P(p) => b.arg(p),
            Arg::I(i) => b.arg(i),
            Arg::F(x) => b.arg(x),
        };
    }
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    };
    // SAFETY: argument lists match the `extern "C"` signatures in delta_rule.cu (checked by the
    // selftest); every pointer was length-checked against the shapes the kernel indexes.
    unsafe { b.launch(cfg) }
        .with_context(|| format!("launching {name} grid {grid:?} block {block} smem {smem}"))?;
    Ok(())
}

/// [`launch`] of a chunk kernel with its own name and shared-memory size.
fn launch_kern(gpu: &Gpu, k: &Kern, grid: (u32, u32, u32), block: u32, args: &[Arg]) -> Result<()> {
    launch_kern_on(&gpu.stream, k, grid, block, args)
}

fn launch_kern_on(
    stream: &CudaStream,
    k: &Kern,
    grid: (u32, u32, u32),
    block: u32,
    args: &[Arg],
) -> Result<()> {
    launch_on(stream, &k.f, &k.name, grid, block, k.smem, args)
}

fn ptr<T, S: DevicePtr<T>>(gpu: &Gpu, x: &S) -> u64 {
    x.device_ptr(&gpu.stream).0
}

fn ptr_mut<T, S: DevicePtrMut<T>>(gpu: &Gpu, x: &mut S) -> u64 {
    x.device_ptr_mut(&gpu.stream).0
}

fn device_attr(gpu: &Gpu, a: CUdevice_attribute) -> Result<usize> {
    Ok(gpu
        .ctx
        .attribute(a)
        .with_context(|| format!("reading device attribute {a:?}"))? as usize)
}

/// Order of the shared-memory table written by `dr_smem_sizes` (`SLOTS_PER_K` per K, K = 64,
/// 128, 256).
const SLOT_PREP: usize = 0;
const SLOT_FWD_O: usize = 1;
const SLOT_DVLOC: usize = 2;
const SLOT_DQK: usize = 3;
const SLOT_WY: usize = 4;
const SLOT_STATE_FWD: usize = 5; // + index into STATE_NWS
const SLOT_STATE_SPLIT: usize = 9; // + index into STATE_NWS
const SLOT_STATE_BWD: usize = 13; // + index into STATE_NWS
const SLOT_STATE_FWD_KS: usize = 17; // + index into STATE_KS
const SLOT_STATE_SPLIT_KS: usize = 21; // + index into STATE_KS
const SLOT_STATE_BWD_KS: usize = 25; // + index into STATE_KS
const SLOT_WU: usize = 29;
const SLOT_STATE_WS: usize = 30;
const SLOT_STATE_BWD_WS: usize = 31;
/// `prep` forming P: its shared memory with Q's rows (`SLOT_PREP` is without them).
const SLOT_PREP_P: usize = 32;
const SLOT_SEG_COMBINE: usize = 33;
const SLOTS_PER_K: usize = 34;
/// Column groups per CTA of the state passes (16 columns of V each, one warp each unsplit).
const STATE_NWS: [usize; 4] = [1, 2, 4, 8];
/// The K-split variants of the forward-type state passes, (column groups, K slices): a CTA has
/// column groups × slices warps (kernel names `…_nw{groups}_ks{slices}`).
const STATE_KS: [(usize, usize); 4] = [(1, 2), (1, 4), (2, 2), (2, 4)];

/// Shared-memory bytes of every chunk kernel, as the kernels compute them (one tiny launch).
fn smem_table(gpu: &Gpu, dk: usize) -> Result<Vec<u32>> {
    let f = gpu.function(source(dk), "dr_smem_sizes")?;
    let mut out = gpu
        .stream
        .alloc_zeros::<u32>(3 * SLOTS_PER_K)
        .context("allocating the shared-memory table")?;
    let p = ptr_mut(gpu, &mut out);
    launch(gpu, &f, "dr_smem_sizes", (1, 1, 1), 32, 0, &[Arg::P(p)])?;
    let v = gpu
        .stream
        .clone_dtoh(&out)
        .context("reading the shared-memory table")?;
    gpu.sync()?;
    Ok(v)
}

fn k_index(dk: usize) -> usize {
    match dk {
        64 => 0,
        128 => 1,
        _ => 2,
    }
}

/// A kernel with its dynamic shared-memory size (the opt-in limit already raised).
struct Kern {
    f: CudaFunction,
    name: String,
    smem: u32,
}

/// The kernel `name` needing `smem` bytes, its dynamic shared-memory limit raised to
/// `max_smem` (≥ `smem`: what it may be launched with); `None` where `smem` exceeds `limit`.
fn load_kern(
    gpu: &Gpu,
    dk: usize,
    name: String,
    (smem, max_smem): (u32, u32),
    limit: usize,
) -> Result<Option<Kern>> {
    if smem as usize > limit {
        return Ok(None);
    }
    let f = gpu.function(source(dk), &name)?;
    f.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        max_smem as i32,
    )
    .with_context(|| format!("raising the shared-memory limit of {name} to {max_smem} bytes"))?;
    Ok(Some(Kern { f, name, smem }))
}

/// A state-pass variant: the kernel, its column groups of 16 (`nw`), the K slices each group is
/// split into (`ks`, 1 = unsplit; `nw · ks` state warps per CTA), the output warps behind them
/// (`out_warps`: the warp-specialised forward's) and how many CTAs of it fit on one SM
/// (registers, shared memory and threads, as the driver computes it).
struct StateKern {
    k: Kern,
    nw: usize,
    ks: usize,
    out_warps: usize,
    per_sm: usize,
    /// Dynamic shared memory that keeps the CTA alone on its SM (see `launch_state`).
    spread_smem: u32,
}

fn load_state_kern(
    gpu: &Gpu,
    dk: usize,
    name: String,
    smem: u32,
    limit: usize,
    (nw, ks, out_warps): (usize, usize, usize),
) -> Result<Option<StateKern>> {
    // Just over half an SM's shared memory: no two such CTAs fit on one SM (`launch_state`).
    let spread_smem = ((limit / 2 + 1024) as u32).max(smem);
    let Some(k) = load_kern(gpu, dk, name, (smem, spread_smem), limit)? else {
        return Ok(None);
    };
    let mut sk = StateKern {
        k,
        nw,
        ks,
        out_warps,
        per_sm: 0,
        spread_smem,
    };
    sk.per_sm =
        sk.k.f
            .occupancy_max_active_blocks_per_multiprocessor(sk.threads(), smem as usize, None)
            .with_context(|| format!("occupancy of {}", sk.k.name))? as usize;
    Ok((sk.per_sm > 0).then_some(sk))
}

/// Queues a state pass over `grid`. When the grid has at most `spread_up_to` CTAs (the GPU's
/// SMs; 0 with `GDN_DR_SPREAD=0`, for experiments), it requests the kernel's `spread_smem` so
/// that no two CTAs share an SM: the block scheduler otherwise placed some on one SM and left
/// others idle (H200, session 7 call 5, B4·T4096, 128 CTAs: split pass 0.175 → 0.163 ms, reverse
/// pass 0.323 → 0.298). The cost model already assumes one CTA per SM in such a wave.
fn launch_state(
    gpu: &Gpu,
    sk: &StateKern,
    grid: (u32, u32, u32),
    spread_up_to: usize,
    args: &[Arg],
) -> Result<()> {
    let ctas = (grid.0 * grid.1 * grid.2) as usize;
    let smem = if ctas <= spread_up_to {
        sk.spread_smem
    } else {
        sk.k.smem
    };
    launch(gpu, &sk.k.f, &sk.k.name, grid, sk.threads(), smem, args)
}

impl StateKern {
    /// Warps per CTA as `state_plan` prints them: `nw`, `nw×ks` where K-split, `nw+out` with
    /// output warps.
    fn shape(&self) -> String {
        match (self.ks, self.out_warps) {
            (1, 0) => self.nw.to_string(),
            (ks, 0) => format!("{}×{ks}", self.nw),
            (_, out) => format!("{}+{out}", self.nw),
        }
    }

    fn threads(&self) -> u32 {
        ((self.nw * self.ks + self.out_warps) * 32) as u32
    }
}

fn need(k: Option<Kern>, what: &str, limit: usize) -> Result<Kern> {
    k.with_context(|| {
        format!("delta rule kernel {what} needs more shared memory than this GPU allows per block ({limit} bytes)")
    })
}

/// The chunk kernels for one key head size.
struct ChunkKernels {
    /// Launched with `smem` bytes, or `prep_p_smem` when it forms P.
    prep: Kern,
    prep_p_smem: u32,
    /// W, U and G from a saved T (the backward when the forward kept T).
    wu: Kern,
    fwd_o: Kern,
    /// fwd_o taking its (chunk, head) items by ticket as a split pass forms them ([`Follow`]).
    fwd_o_follow: Kern,
    dvloc: Kern,
    /// Kernels 6 and 7 as one (`dr_dqkwy`: dqk, then wy, per chunk and head).
    dqkwy: Kern,
    /// dqkwy taking its (chunk, head) items by ticket as the reverse pass forms them ([`Follow`]).
    dqkwy_follow: Kern,
    /// The state passes (see [`PassKind`]), for each of [`STATE_NWS`] (and, forward-type, of
    /// [`STATE_KS`]) that fits.
    state_fwd: Vec<StateKern>,
    state_split: Vec<StateKern>,
    state_bwd: Vec<StateKern>,
    /// The warp-specialised forward (4 state warps on 64 columns of V, 8 output warps), K <= 128.
    state_ws: Option<StateKern>,
    /// The warp-specialised reverse pass (4 state warps on 64 columns of V, [`bwd_ws_groups`]
    /// groups of 4 dṼ_loc warps), K <= 128.
    state_bwd_ws: Option<StateKern>,
    /// Threads of the dqkwy kernel (`DqkSm::NW` = `WySm::NW` warps, asserted in the .cu).
    bwd_threads: u32,
    /// A sequence-parallel plan's transition passes (`state_seg`: `state_split`'s layout, 4
    /// column groups, unsplit; `state_bwd_seg` the plain reverse pass's) and its segments' start
    /// states (`seg_combine`, 256 threads).
    state_seg: Option<StateKern>,
    state_bwd_seg: Option<StateKern>,
    seg_combine: Kern,
    /// Prep leading the warp-specialised forward and that forward led ([`Lead`]), K <= 128; the
    /// gate that holds the side stream until the led pass's CTAs have all started (one thread).
    prep_led: Option<Kern>,
    state_ws_led: Option<StateKern>,
    lead_gate: Kern,
}

impl ChunkKernels {
    fn load(gpu: &Gpu, dk: usize) -> Result<Self> {
        let table = smem_table(gpu, dk)?;
        let limit = device_attr(
            gpu,
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )?;
        let s = |slot: usize| table[k_index(dk) * SLOTS_PER_K + slot];
        let ld = |n: &str, slot: usize| {
            load_kern(gpu, dk, format!("dr_{n}_k{dk}"), (s(slot), s(slot)), limit)
        };
        let sf = |n: &str, base: usize, ks_base: Option<usize>| -> Result<Vec<StateKern>> {
            let mut v = vec![];
            for (i, &nw) in STATE_NWS.iter().enumerate() {
                let name = format!("dr_{n}_k{dk}_nw{nw}");
                v.extend(load_state_kern(
                    gpu,
                    dk,
                    name,
                    s(base + i),
                    limit,
                    (nw, 1, 0),
                )?);
            }
            if let Some(ks_base) = ks_base {
                for (i, &(nw, ks)) in STATE_KS.iter().enumerate() {
                    let name = format!("dr_{n}_k{dk}_nw{nw}_ks{ks}");
                    v.extend(load_state_kern(
                        gpu,
                        dk,
                        name,
                        s(ks_base + i),
                        limit,
                        (nw, ks, 0),
                    )?);
                }
            }
            ensure!(
                v.iter().any(|s| s.nw == 1 && s.ks == 1),
                "delta rule: the one-warp {n} kernel for K={dk} does not fit this GPU ({limit} bytes of shared memory per block)"
            );
            Ok(v)
        };
        // The warp-specialised passes: 4 state warps and `others` warps beside them, K <= 128 only.
        let ws = |n: &str, slot: usize, others: usize| -> Result<Option<StateKern>> {
            if dk > 128 {
                return Ok(None);
            }
            load_state_kern(
                gpu,
                dk,
                format!("dr_{n}_k{dk}"),
                s(slot),
                limit,
                (4, 1, others),
            )
        };
        // dqk and wy run in one kernel, one after the other on the same shared memory.
        let dqkwy = s(SLOT_DQK).max(s(SLOT_WY));
        // The transition passes take the layouts of the 4-column-group passes.
        let nw4 = STATE_NWS.iter().position(|&w| w == 4).unwrap_or(0);
        Ok(ChunkKernels {
            prep: need(
                load_kern(
                    gpu,
                    dk,
                    format!("dr_prep_k{dk}"),
                    (s(SLOT_PREP), s(SLOT_PREP_P)),
                    limit,
                )?,
                "prep",
                limit,
            )?,
            prep_p_smem: s(SLOT_PREP_P),
            wu: need(ld("wu", SLOT_WU)?, "wu", limit)?,
            fwd_o: need(ld("fwd_o", SLOT_FWD_O)?, "fwd_o", limit)?,
            fwd_o_follow: need(ld("fwd_o_follow", SLOT_FWD_O)?, "fwd_o_follow", limit)?,
            dvloc: need(ld("dvloc", SLOT_DVLOC)?, "dvloc", limit)?,
            dqkwy: need(
                load_kern(gpu, dk, format!("dr_dqkwy_k{dk}"), (dqkwy, dqkwy), limit)?,
                "dqkwy",
                limit,
            )?,
            dqkwy_follow: need(
                load_kern(
                    gpu,
                    dk,
                    format!("dr_dqkwy_follow_k{dk}"),
                    (dqkwy, dqkwy),
                    limit,
                )?,
                "dqkwy_follow",
                limit,
            )?,
            state_fwd: sf("state_fwd", SLOT_STATE_FWD, Some(SLOT_STATE_FWD_KS))?,
            state_split: sf("state_split", SLOT_STATE_SPLIT, Some(SLOT_STATE_SPLIT_KS))?,
            state_bwd: sf("state_bwd", SLOT_STATE_BWD, Some(SLOT_STATE_BWD_KS))?,
            state_ws: ws("state_ws", SLOT_STATE_WS, 8)?,
            state_bwd_ws: ws("state_bwd_ws", SLOT_STATE_BWD_WS, 4 * bwd_ws_groups(dk))?,
            bwd_threads: if dk >= 256 { 512 } else { 256 },
            state_seg: load_state_kern(
                gpu,
                dk,
                format!("dr_state_seg_k{dk}"),
                s(SLOT_STATE_SPLIT + nw4),
                limit,
                (4, 1, 0),
            )?,
            state_bwd_seg: load_state_kern(
                gpu,
                dk,
                format!("dr_state_bwd_seg_k{dk}"),
                s(SLOT_STATE_BWD + nw4),
                limit,
                (4, 1, 0),
            )?,
            seg_combine: need(ld("seg_combine", SLOT_SEG_COMBINE)?, "seg_combine", limit)?,
            prep_led: match dk {
                ..=128 => load_kern(
                    gpu,
                    dk,
                    format!("dr_prep_led_k{dk}"),
                    (s(SLOT_PREP_P), s(SLOT_PREP_P)),
                    limit,
                )?,
                _ => None,
            },
            state_ws_led: ws("state_ws_led", SLOT_STATE_WS, 8)?,
            lead_gate: need(
                load_kern(gpu, dk, "dr_lead_gate".into(), (0, 0), limit)?,
                "lead_gate",
                limit,
            )?,
        })
    }
}

/// Whether the warp-specialised passes (forward and reverse) serve these dimensions: K <= 128
/// (their kernels exist only there) and V a multiple of their 64 columns.
pub(crate) fn warp_specialised_serves(dims: Dims) -> bool {
    dims.dk <= 128 && dims.dv.is_multiple_of(64)
}

/// Elements of the workspace's P (`prep` writes it for the warp-specialised forward only).
pub(crate) fn p_len(dims: Dims, max_chunks: usize) -> usize {
    if warp_specialised_serves(dims) {
        max_chunks * dims.heads * CHUNK * CHUNK
    } else {
        0
    }
}

/// Achieved HBM bandwidth (bytes/s), the state-pass cost model's memory bound.
const HBM_BYTES_PER_S: f64 = 3.3e12;

/// The three state passes, for their kernel tables and the cost model.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PassKind {
    /// The forward fused with the output (`state_fwd`).
    Fused,
    /// h_c and Ṽ to global (`state_split`): the forward for `fwd_o`, and the backward's
    /// recompute.
    Split,
    /// The reverse pass: dh_c, dṼ, dh0 (`state_bwd`).
    Bwd,
}

impl PassKind {
    /// Bytes one CTA of `width` columns of V moves per chunk, and the part of them it loads by
    /// cp.async. Split: reads W and K (64 × K bf16 each, whatever the width) and U (64 × width
    /// bf16), writes Ṽ (64 × width) and h_c (K × width, bf16); Fused reads Q too and writes O
    /// (64 × width) instead of Ṽ and h_c. Bwd: reads Q, K and W (64 × K bf16 each), dO and
    /// dṼ_loc (64 × width bf16 each) and h_c (K × width bf16), writes dh_c (K × width bf16) and
    /// dṼ (64 × width bf16).
    fn chunk_bytes(self, k: usize, width: usize) -> (usize, usize) {
        let (loads, stores) = match self {
            PassKind::Split => (
                2 * 64 * k * 2 + 64 * width * 2,
                64 * width * 2 + k * width * 2,
            ),
            PassKind::Fused => (3 * 64 * k * 2 + 64 * width * 2, 64 * width * 2),
            PassKind::Bwd => (
                3 * 64 * k * 2 + 64 * width * (2 + 2) + k * width * 2,
                k * width * 2 + 64 * width * 2,
            ),
        };
        (loads + stores, loads)
    }

    /// (L, T) in µs at head size `k`: a CTA's chunk step takes L when each of its warps has an SM
    /// sub-partition to itself, and w × T when w warps share one. Split measured on H200
    /// (session 4, call 4), Fused in call 5, all with every warp
    /// count forced on the five bench shapes; Bwd taken as 1.5 × Split's L (its products per
    /// chunk), which picks the measured best of call 6 on every bench shape (its L measured
    /// 6.3 µs at K = 128 against the 5.1 assumed), and 1.4 × Split's T: with 1.5 the model put
    /// 4 warps on the reverse pass at B8·T4096·H6·K256, where 8 measured 10 % faster (session
    /// 19, call 9: 1.406 against 1.552–1.562 ms; 22 µs a step with two warps per
    /// sub-partition over two waves against 24.3 with one over three).
    fn step_us(self, k: usize) -> (f64, f64) {
        let kf = k as f64;
        let split = (1.2 + 0.0172 * kf, 0.7 + 0.0141 * kf);
        match self {
            PassKind::Split => split,
            PassKind::Fused => (5.6 + 0.027 * kf, 3.05 + 0.0148 * kf),
            PassKind::Bwd => (1.5 * split.0, 1.4 * split.1),
        }
    }

    /// The environment variable that forces a warp count, for experiments.
    fn nw_env(self) -> &'static str {
        match self {
            PassKind::Fused | PassKind::Split => "GDN_DR_SF_NW",
            PassKind::Bwd => "GDN_DR_SB_NW",
        }
    }

    /// The K split forced by `GDN_DR_KS` (forward-type passes) or `GDN_DR_SB_KS` (the reverse
    /// pass), 1, 2 or 4, for experiments; otherwise the cost model chooses.
    fn forced_ks(self) -> Option<usize> {
        let var = match self {
            PassKind::Fused | PassKind::Split => "GDN_DR_KS",
            PassKind::Bwd => "GDN_DR_SB_KS",
        };
        std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|ks| [1, 2, 4].contains(ks))
    }

    /// The step time of a K split relative to the unsplit pass with the same warps per SM
    /// sub-partition, measured on H200 at B1·T16384·H16·K128 (session 5, call 5: one 4-warp CTA
    /// per SM either way; split 0.891 / 0.798 / 0.670 ms for KS = 1, 2, 4, reverse 1.363 /
    /// 1.028 / 0.892). Fused K splits were not measured: `None`,
    /// so they run only when forced.
    fn ks_factor(self, ks: usize) -> Option<f64> {
        match (self, ks) {
            (_, 1) => Some(1.0),
            (PassKind::Fused, _) => None,
            (PassKind::Split, 2) => Some(0.90),
            (PassKind::Split, _) => Some(0.75),
            (PassKind::Bwd, 2) => Some(0.75),
            (PassKind::Bwd, _) => Some(0.65),
        }
    }
}

/// Estimated seconds per chunk step of a state pass with `nw` column groups per CTA (16 columns
/// of V each) of `ks` warps each (the K split) and `per_sm` CTAs per SM, for `cols` = N·H·V
/// columns in all, on `sms` SMs. Each wave of CTAs takes the longest of its latency L
/// ([`PassKind::step_us`], plus about 20 ns per cp.async piece a lane issues beyond a 4-warp
/// CTA's), w × T for w warps per SM sub-partition, and HBM bandwidth over the bytes of
/// [`PassKind::chunk_bytes`]. L and T are measured unsplit and scaled for a K split by
/// [`PassKind::ks_factor`] (a forced fused split, unmeasured, is costed as unsplit).
fn state_step_cost(
    (nw, ks): (usize, usize),
    per_sm: usize,
    cols: usize,
    k: usize,
    pass: PassKind,
    sms: usize,
) -> f64 {
    let width = 16 * nw;
    let ctas = cols.div_ceil(width);
    let (bytes, _) = pass.chunk_bytes(k, width);
    let pieces =
        |nw: usize, ks: usize| pass.chunk_bytes(k, 16 * nw).1 as f64 / 16.0 / (32 * nw * ks) as f64;
    let (l_us, t_us) = pass.step_us(k);
    let f = pass.ks_factor(ks).unwrap_or(1.0);
    let (l_us, t_us) = (l_us * f, t_us * f);
    let lat = (l_us + 0.02 * (pieces(nw, ks) - pieces(4, 1)).max(0.0)) * 1e-6;
    let slots = per_sm * sms;
    let (mut left, mut cost) = (ctas, 0.0);
    while left > 0 {
        let now = left.min(slots);
        let warps_per_subpartition = (now.div_ceil(sms) * nw * ks).div_ceil(4);
        let hbm = now as f64 * bytes as f64 / HBM_BYTES_PER_S;
        cost += hbm
            .max(lat)
            .max(warps_per_subpartition as f64 * t_us * 1e-6);
        left -= now;
    }
    cost
}

/// Estimated seconds of `fwd_o` (parallel over chunks and heads, so never short of CTAs): its
/// time tracks the products per token and head, K·V + 64·V + 64·K, at 1.5e-14 s each on H200
/// for v5 (session 6 call 8: 0.150 ms at 4·4096 × 16 heads, K = V = 128, 1.75e-14 each; 0.248
/// ms at 4·4096 × 6 heads, K = 256, V = 512, 1.40e-14 each; v4 took 2.6e-14).
fn fwd_o_cost(tokens: usize, h: usize, k: usize, v: usize) -> f64 {
    1.5e-14 * (tokens * h) as f64 * (k * v + 64 * v + 64 * k) as f64
}

/// Whether the warp-specialised forward (one CTA per SM on 64 columns of V, 4 state and 8 output
/// warps; `ctas` of them) beats the split pass and `fwd_o`. Its state warps set its pace, about
/// 2.1–2.2 µs a step at K = 128 and 1.4–1.5 at K = 64 (H200, session 21 call 2, with
/// setmaxnreg), and it has no K split: where its CTAs fill less than a quarter of the SMs, the
/// split pass's K splits run four times the CTAs at 1.5 µs a step, and `fwd_o` runs beside
/// nothing. Measured there (graph-replayed forwards, split / warp-specialised ms): B1·T16384·H16
/// (32 CTAs) 0.672 / 0.716 at K = 128, but 0.550 / 0.511 at K = 64, V = 128, whose steps are
/// short enough. Everywhere else it measured faster: B2·T8192 0.531 / 0.446, B16·T1024 0.401 /
/// 0.341, B32·T512 0.403 / 0.349, K64 V64 at B2·T8192 0.354 / 0.314 (and B8·T2048, B4·T4096,
/// K = 64 at B4 in session 15). (The split pass's cost model, fitted to the session-4 kernels,
/// overestimates today's split pass and `fwd_o` by 47 % at B1·T16384·K128 but 21 % at K = 64,
/// V = 128 (eager, same call), too unevenly to weigh the two.)
fn ws_fwd_pays(ctas: usize, k: usize, sms: usize) -> bool {
    k <= 64 || 4 * ctas > sms
}

/// The dṼ_loc groups of the warp-specialised reverse pass at head size `k` (`BWD_WS_GROUPS` in
/// delta_rule.cu, where the numbers behind it are).
fn bwd_ws_groups(k: usize) -> usize {
    if k <= 64 {
        2
    } else {
        1
    }
}

/// Whether the warp-specialised reverse pass beats `dvloc` and the plain reverse pass: where the
/// cost model runs the plain pass unsplit (`ks` = 1; its K splits win where CTAs are too few to
/// fill the SMs) and the warp-specialised pass's `ctas` (one per 64 columns of V, sequence and
/// head) fit in one wave of one per SM (with more, the plain pass runs two CTAs per SM). H200,
/// session 16 call 2, fwd+bwd graph ms, plain / warp-specialised: B4·T4096·H16·K128 1.551 /
/// 1.530 and K = 64, V = 64 0.965 / 0.942, V = 128 1.137 / 1.085; B8·T2048·K128 (256 CTAs)
/// 1.510 / 1.533; B2·T8192 (K split) 2.004 / 2.108.
fn bwd_ws_pays(ks: usize, ctas: usize, sms: usize) -> bool {
    ks == 1 && ctas <= sms
}

/// The variant of a state pass whose tile width divides V with the lowest [`state_step_cost`]
/// for `seq_heads` = N·H, and that cost, among the unsplit and K-split ones (fused K splits
/// only when forced); `force_ks` (else `GDN_DR_KS` / `GDN_DR_SB_KS`) forces the K split and
/// `GDN_DR_SF_NW` (forward passes) or `GDN_DR_SB_NW` (backward) the column groups, 1, 2, 4 or 8,
/// where such a variant fits, for experiments.
fn pick_state_nw(
    vars: &[StateKern],
    seq_heads: usize,
    (k, v): (usize, usize),
    pass: PassKind,
    sms: usize,
    force_ks: Option<usize>,
) -> (&StateKern, f64) {
    let divides = |s: &&StateKern| v % (16 * s.nw) == 0;
    let forced_ks = force_ks
        .or_else(|| pass.forced_ks())
        .filter(|&ks| vars.iter().filter(divides).any(|s| s.ks == ks));
    let fits = |s: &&StateKern| {
        divides(s)
            && match forced_ks {
                Some(ks) => s.ks == ks,
                None => pass.ks_factor(s.ks).is_some(),
            }
    };
    let cost = |s: &StateKern| state_step_cost((s.nw, s.ks), s.per_sm, seq_heads * v, k, pass, sms);
    let forced = std::env::var(pass.nw_env())
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|nw| vars.iter().filter(fits).find(|s| s.nw == nw));
    // Ties go to the wider, unsplit variant (fewer CTAs re-reading W and K; B8·T2048 fused: 8
    // warps 0.317 ms against 4 warps 0.331, both estimated at two warps per sub-partition).
    let best = forced.unwrap_or_else(|| {
        vars.iter()
            .filter(fits)
            .min_by(|a, b| {
                cost(a)
                    .total_cmp(&cost(b))
                    .then(a.ks.cmp(&b.ks))
                    .then(b.nw.cmp(&a.nw))
            })
            .expect("ChunkKernels::load keeps the one-warp variant, whose width divides every V")
    });
    (best, cost(best))
}

/// Per-launch timing for `gdn bench kernels --breakdown`: when installed in a workspace
/// ([`DeltaRuleWorkspace::set_probe`]), the chunked entry points record an event before their
/// first launch and after every launch, on `gpu.stream`. Never use it while capturing a graph.
pub struct StageProbe {
    events: Vec<CudaEvent>,
    names: std::cell::RefCell<Vec<&'static str>>,
}

impl StageProbe {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let events = (0..16)
            .map(|_| gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)))
            .collect::<Result<Vec<_>, _>>()
            .context("creating the stage-probe events")?;
        Ok(StageProbe {
            events,
            names: Default::default(),
        })
    }

    fn start(&self, gpu: &Gpu) -> Result<()> {
        self.names.borrow_mut().clear();
        self.events[0].record(&gpu.stream)?;
        Ok(())
    }

    fn mark(&self, gpu: &Gpu, name: &'static str) -> Result<()> {
        let mut names = self.names.borrow_mut();
        let i = names.len() + 1;
        ensure!(i < self.events.len(), "stage probe: too many stages");
        self.events[i].record(&gpu.stream)?;
        names.push(name);
        Ok(())
    }

    /// (stage, ms) of the last call, in launch order; waits for the last event.
    pub fn read(&self) -> Result<Vec<(&'static str, f64)>> {
        let names = self.names.borrow();
        let n = names.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        self.events[n].synchronize()?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push((
                names[i],
                self.events[i].elapsed_ms(&self.events[i + 1])? as f64,
            ));
        }
        Ok(out)
    }
}

fn probe_start(gpu: &Gpu, ws: &DeltaRuleWorkspace) -> Result<()> {
    match ws.probe.as_ref() {
        Some(p) => p.start(gpu),
        None => Ok(()),
    }
}

fn probe_mark(gpu: &Gpu, ws: &DeltaRuleWorkspace, name: &'static str) -> Result<()> {
    match ws.probe.as_ref() {
        Some(p) => p.mark(gpu, name),
        None => Ok(()),
    }
}

/// Buffers of the backward pass.
struct BwdBuffers {
    /// T per chunk and head, f32 [NC, H, 64, 64], for backward calls without a saved T
    /// ([`Backward::RecomputeT`]; `None` with [`Backward::SavedT`]).
    tmat: Option<CudaSlice<f32>>,
    /// dṼ_loc, bf16 [T, H, V].
    dvloc: CudaSlice<bf16>,
    /// dS leaving each chunk, bf16 [NC, H, K, V].
    dh: CudaSlice<bf16>,
    /// The reverse pass's partials of ⟨h_c, dh_c⟩ (from the f32 dS), f32 [NC, H, (V/16)·KS]
    /// (one per warp; at most 4 K splits).
    sdp: CudaSlice<f32>,
    /// dṼ, bf16 [T, H, V].
    dvnew: CudaSlice<bf16>,
}

/// What a [`DeltaRuleWorkspace`] holds for [`chunk_backward`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backward {
    /// Forward only.
    No,
    /// The backward's buffers, T among them: backward calls may come without a saved T (T is
    /// then recomputed by `prep`, as before the forward could save it).
    RecomputeT,
    /// The backward's buffers without T: every backward call passes the T its forward saved.
    SavedT,
}

/// Elements of a saved T for `tokens` tokens in `seqs` sequences, at most (every chunk of 64,
/// partial ones included, holds a 64 × 64 f32 block per head; a forward over fewer tokens or
/// sequences uses a prefix). Where the warp-specialised passes serve the dimensions, the buffer
/// also keeps the forward's P for the reverse pass ([`saved_p`]): bf16 64 × 64 per chunk and
/// head behind T, and one flag; where few sequences may make a sequence-parallel plan, room for
/// its segment states behind those ([`saved_seg_room`]).
pub fn saved_t_len(dims: Dims, tokens: usize, seqs: usize) -> usize {
    let chunks = tokens.div_ceil(CHUNK) + seqs;
    saved_t_elems(dims, chunks) + saved_seg_room(dims, chunks, seqs)
}

/// The most SMs a device is assumed to have where a saved-T buffer reserves room for a
/// sequence-parallel plan's segment states: a plan on a larger device may have more segments
/// than the room holds, and its backward then forms them again (slower, the same bits).
const SEG_SAVE_SMS: usize = 160;

/// f32 elements that a saved-T buffer for `chunks` chunks in `seqs` sequences reserves behind T
/// (and P) for the forward's segment states ([`SavedSeg`]): none where `seqs` sequences are too
/// many for a plan on a device of [`SEG_SAVE_SMS`] SMs (fewer sequences in a call may still make
/// one: its backward then forms the states again), else 4 (alignment) + A and X of as many
/// segments as [`seg_len`] can make there: its count for the device, and at most one per
/// [`SEG_MIN_CHUNKS`] chunks, plus one partial segment per sequence. (A plan forced shorter,
/// `force_segments`, saves its states only into a buffer made larger by the caller.)
fn saved_seg_room(dims: Dims, chunks: usize, seqs: usize) -> usize {
    seg_count(dims, seqs, SEG_SAVE_SMS).map_or(0, |segs| {
        let segs = segs.min(chunks / SEG_MIN_CHUNKS) + seqs;
        4 + segs.min(chunks) * dims.heads * dims.dk * (dims.dk + dims.dv)
    })
}

/// f32 elements of a saved-T buffer for `chunks` chunks: T, and where the warp-specialised
/// passes serve, P (bf16, half as many f32 words) and the flag behind it ([`saved_p`]).
fn saved_t_elems(dims: Dims, chunks: usize) -> usize {
    let t = chunks * dims.heads * CHUNK * CHUNK;
    t + if warp_specialised_serves(dims) {
        t / 2 + 1
    } else {
        0
    }
}

/// Where, in a saved-T buffer at `tmat` (a device address) for `chunks` chunks, the forward keeps
/// its P (bf16, behind T) and the flag that says whether it formed one (f32 1 or 0, behind P):
/// `None` where the warp-specialised passes do not serve `dims`.
fn saved_p(dims: Dims, chunks: usize, tmat: u64) -> Option<(u64, u64)> {
    let blocks = (chunks * dims.heads * CHUNK * CHUNK) as u64;
    warp_specialised_serves(dims).then_some((tmat + 4 * blocks, tmat + 6 * blocks))
}

/// Where a forward that saves T keeps its sequence-parallel plan's segment states (device
/// pointers): X_p, the state entering each segment (f32 [S, H, K, V]), and A_p, each segment's
/// transition (f32 [S, H, K, K]), behind T and P. Its backward then walks the segments from
/// them: no transition pass, no `seg_combine` for the recompute, and the reverse pass reads the
/// A_p transposed.
#[derive(Clone, Copy, Debug, PartialEq)]
struct SavedSeg {
    x: u64,
    a: u64,
}

/// f32 offsets in a saved-T buffer for `chunks` chunks of X (16-byte aligned, behind T and P)
/// and A for `segs` segments, and the end of A.
fn saved_seg_offsets(dims: Dims, chunks: usize, segs: usize) -> (usize, usize, usize) {
    let x0 = saved_t_elems(dims, chunks).next_multiple_of(4);
    let a0 = x0 + segs * dims.heads * dims.dk * dims.dv;
    (x0, a0, a0 + segs * dims.heads * dims.dk * dims.dk)
}

/// The saved-T buffers (device addresses) whose forward left its segment states in them, each
/// with the plan it had ((segments, segment length)): a backward walks from them only under the
/// same plan (a forced length, `force_segments`, may have changed it since).
#[derive(Default)]
struct SegStatesSaved(Vec<(u64, (usize, usize))>);

impl SegStatesSaved {
    /// A forward saved T at `tmat` with its states under `plan`, or (`None`) without them.
    fn note(&mut self, tmat: u64, plan: Option<(usize, usize)>) {
        self.0.retain(|&(t, _)| t != tmat);
        if let Some(p) = plan {
            self.0.push((tmat, p));
        }
    }

    fn holds(&self, tmat: u64, plan: (usize, usize)) -> bool {
        self.0.contains(&(tmat, plan))
    }
}

/// f32 per chunk and head of the decay record that `prep`/`wu` write for the state passes
/// (δ_t = exp(G_last − G_t), γ_last and padding, γ_t = exp(G_t): `RECW` in delta_rule.cu).
pub(crate) const REC_WIDTH: usize = 2 * CHUNK + 4;

/// Elements of the reverse pass's ⟨h_c, dh_c⟩ partials for `max_chunks` chunks: one per warp,
/// (V / 16) column groups times the largest K split of [`STATE_KS`].
pub(crate) fn sdp_len(max_chunks: usize, h: usize, v: usize) -> usize {
    let max_ks = STATE_KS.iter().map(|&(_, ks)| ks).max().unwrap_or(1);
    max_chunks * h * (v / 16) * max_ks
}

/// Device scratch for the chunked kernels, sized once for up to `max_tokens` tokens in up to
/// `max_seqs` sequences; reused by every call (no allocation per call).
pub struct DeltaRuleWorkspace {
    dims: Dims,
    max_tokens: usize,
    max_seqs: usize,
    max_chunks: usize,
    num_sms: usize,
    /// State-pass grids of at most this many CTAs run one CTA per SM (`launch_state`).
    spread_up_to: usize,
    kern: ChunkKernels,
    /// (first token, length) per chunk, i32 [max_chunks, 2].
    ctab: CudaSlice<i32>,
    /// First chunk of each sequence, i32 [max_seqs + 1].
    seq_chunk: CudaSlice<i32>,
    /// The chunks in the order a forward state pass forms them ([`step_order`]), then in the
    /// order a reverse pass does ([`reverse_step_order`]), each group's chunks in place, i32
    /// [2 · max_chunks] (NC each).
    order: CudaSlice<i32>,
    /// Per (chunk, head) the pass's CTAs that have stored it, then the followers' ticket of
    /// each sequence group: u32 [max_chunks · H + MAX_GROUPS] ([`Follow`]).
    done: CudaSlice<u32>,
    cu_cached: Vec<usize>,
    n_chunks: usize,
    /// In-chunk cumulative log decay G, f32 [T, H].
    gc: CudaSlice<f32>,
    /// The decay record per chunk and head, f32 [max_chunks, H, REC_WIDTH].
    rec: CudaSlice<f32>,
    /// W, bf16 [T, H, K].
    w: CudaSlice<bf16>,
    /// U, bf16 [T, H, V].
    u: CudaSlice<bf16>,
    /// State entering each chunk, bf16 [NC, H, K, V].
    h: CudaSlice<bf16>,
    /// P = s (QKᵀ ⊙ Γ ⊙ L) per chunk and head, bf16 [NC, H, 64, 64]: `prep` writes it for the
    /// warp-specialised forward's output warps.
    p: CudaSlice<bf16>,
    /// Ṽ, bf16 [T, H, V].
    vnew: CudaSlice<bf16>,
    bwd: Option<BwdBuffers>,
    probe: Option<StageProbe>,
    /// The forward's path when forced ([`DeltaRuleWorkspace::force_forward`]).
    forward_forced: Option<ForwardPath>,
    /// The K split of the split and reverse passes when forced ([`DeltaRuleWorkspace::force_ks`]).
    ks_forced: Option<usize>,
    /// The reverse pass's path when forced ([`DeltaRuleWorkspace::force_backward`]).
    backward_forced: Option<BackwardPath>,
    /// The sequence-parallel plan of the uploaded `cu_seqlens`, where there is one.
    seg: Option<SegPlan>,
    /// The saved-T buffers that hold their forward's segment states.
    seg_saved: SegStatesSaved,
    /// The segment length in chunks when forced ([`DeltaRuleWorkspace::force_segments`]).
    seg_forced: Option<usize>,
    /// No kernel follows a state pass ([`Follow`]): `GDN_DR_FOLLOW=0`, or
    /// [`DeltaRuleWorkspace::force_no_follow`].
    no_follow: bool,
    /// State passes run with a kernel following them, since [`DeltaRuleWorkspace::take_follows`].
    follows: usize,
    /// The sequence groups of the uploaded `cu_seqlens` ([`SeqGroup`]).
    groups: Vec<SeqGroup>,
    /// Sequences a group when forced ([`DeltaRuleWorkspace::force_groups`]).
    groups_forced: Option<usize>,
    /// The uploaded chunk table's chunks per position in their sequence (row r: every sequence's
    /// r-th chunk), the rows a [`Lead`] counts in.
    rows: Vec<usize>,
    /// The [`Lead`]s' first launch when forced: the share of the rows it forms (0: no lead), by
    /// [`DeltaRuleWorkspace::force_lead`] or `GDN_DR_LEAD`.
    lead_forced: Option<f64>,
    /// State passes that ran led ([`Lead`]), since [`DeltaRuleWorkspace::take_leads`].
    leads: usize,
}

/// Sequence-parallel state passes (the forward's, the backward's recompute and its reverse pass)
/// for sequences too few to fill the GPU: each long sequence is cut into segments of `len`
/// chunks, and
/// - a transition pass (`state_seg`; the reverse pass's `state_bwd_seg`) runs over all segments
///   at once, from a zero state (→ B_p, the state after segment p) and, in CTAs of their own,
///   from S = I with U = 0 (→ A_p, its transition: the state is affine in the entering one,
///   S_out = A_p S_in + B_p; the reverse pass's A_p is the forward one's transpose);
/// - `seg_combine` chains them per sequence (X_0 = h0, X_{p+1} = A_p X_p + B_p, f32) into each
///   segment's start state X_p and the final state (backwards: dS, ending in dh0);
/// - the pass itself then walks the segments, each from its X_p, as if they were sequences.
///
/// About three passes of work instead of one, over a quarter of the steps or less, on CTAs that
/// would otherwise idle.
struct SegPlan {
    len: usize,
    n_segs: usize,
    /// First chunk of each segment, i32 [n_segs + 1] (the layout of `seq_chunk`).
    seg_chunk: CudaSlice<i32>,
    /// First segment of each sequence, i32 [N + 1].
    seq_seg: CudaSlice<i32>,
    /// A_p, f32 [n_segs, H, K, K]; B_p and X_p, f32 [n_segs, H, K, V].
    a: CudaSlice<f32>,
    b: CudaSlice<f32>,
    x: CudaSlice<f32>,
}

/// The shortest segment of a sequence-parallel plan, in chunks: its transition costs a pass of
/// its own, which shorter segments do not repay.
const SEG_MIN_CHUNKS: usize = 16;

/// The segments of a sequence-parallel plan for `seqs` sequences on `sms` SMs ([`seg_len`]), or
/// `None` where the warp-specialised forward's CTAs already fill a quarter of them.
fn seg_count(dims: Dims, seqs: usize, sms: usize) -> Option<usize> {
    let ctas = |cols: usize| dims.heads * cols.div_ceil(64);
    (4 * seqs * ctas(dims.dv) <= sms).then(|| {
        (2 * sms / ctas(dims.dv + dims.dk))
            .min(sms / ctas(dims.dv))
            .max(1)
    })
}

/// The segment length (chunks) of a sequence-parallel plan for sequences of `chunks` chunks
/// each, or `None` where none pays: the warp-specialised forward's CTAs (one per sequence, head
/// and 64 columns of V) already fill a quarter of the `sms`, or no sequence is longer than a
/// segment. The segments number at most what keeps the transition pass (a CTA per segment, head
/// and 64 columns of V + K) at two CTAs per SM and the forward over them (V's columns) at one.
fn seg_len(chunks: &[usize], dims: Dims, sms: usize) -> Option<usize> {
    let segs = seg_count(dims, chunks.len(), sms)?;
    let total: usize = chunks.iter().sum();
    let len = total.div_ceil(segs).max(SEG_MIN_CHUNKS);
    chunks.iter().any(|&c| c > len).then_some(len)
}

/// The segment tables of `seq_chunk` (first chunk of each sequence, [N + 1]) cut every `len`
/// chunks: (first chunk of each segment [S + 1], first segment of each sequence [N + 1]). An
/// empty sequence keeps one empty segment.
fn seg_tables(seq_chunk: &[i32], len: usize) -> (Vec<i32>, Vec<i32>) {
    let mut seg_chunk = Vec::new();
    let mut seq_seg = Vec::with_capacity(seq_chunk.len());
    for w in seq_chunk.windows(2) {
        seq_seg.push(seg_chunk.len() as i32);
        let mut c = w[0];
        loop {
            seg_chunk.push(c);
            c += len as i32;
            if c >= w[1] {
                break;
            }
        }
    }
    seq_seg.push(seg_chunk.len() as i32);
    seg_chunk.push(*seq_chunk.last().unwrap_or(&0));
    (seg_chunk, seq_seg)
}

/// What a state pass walks: the sequences (their chunk table and initial states), or the
/// segments of a [`SegPlan`] from their start states.
#[derive(Clone, Copy)]
struct Walk {
    n: usize,
    table: u64,
    h0: u64,
}

/// How the forward forms the output alongside the state pass.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ForwardPath {
    /// The output products inside the state pass's sequential loop (`state_fwd`).
    Fused,
    /// The state pass writes h_c and Ṽ (`state_split`), then `fwd_o` forms the output.
    Split,
    /// State warps and output warps in one kernel (`state_ws`): h_c and Ṽ pass through shared
    /// memory, and the output products run beside the sequential loop, not in it.
    WarpSpecialised,
}

impl ForwardPath {
    fn name(self) -> &'static str {
        match self {
            ForwardPath::Fused => "fused",
            ForwardPath::Split => "split",
            ForwardPath::WarpSpecialised => "warp-specialised",
        }
    }
}

/// How the backward's reverse pass gets dṼ_loc = Pᵀ dO.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BackwardPath {
    /// `dvloc` writes it to global memory, then `state_bwd` reads it.
    Plain,
    /// dṼ_loc warps in the reverse pass's CTA (`state_bwd_ws`) form it beside the sequential
    /// loop and hand it over through shared memory.
    WarpSpecialised,
}

impl BackwardPath {
    fn name(self) -> &'static str {
        match self {
            BackwardPath::Plain => "plain",
            BackwardPath::WarpSpecialised => "warp-specialised",
        }
    }
}

/// Inputs of the chunked forward and backward.
pub struct ChunkInputs<'a> {
    /// [T, H / group, K] bf16, L2-normalised by the caller.
    pub q: CudaView<'a, bf16>,
    /// [T, H / group, K] bf16, L2-normalised by the caller.
    pub k: CudaView<'a, bf16>,
    /// Value heads per q/k head: under GVA (FLA's `num_v_heads`) the workspace's H heads are
    /// value heads and head h reads q/k head h / group; 1 without GVA. The kernels index q and k
    /// by group, so nothing is repeated per value head.
    pub group: usize,
    /// [T, H, V] bf16.
    pub v: CudaView<'a, bf16>,
    /// Per-token log decay g = ln α, [T, H] f32 (not cumsummed).
    pub g: CudaView<'a, f32>,
    /// Write strength β, [T, H] f32.
    pub beta: CudaView<'a, f32>,
    /// Read-out scale (K^{-1/2} in the model).
    pub scale: f32,
    /// State entering each sequence, [N, H, K, V] f32; zeros when `None`.
    pub initial_state: Option<CudaView<'a, f32>>,
    /// Sequence offsets [N+1] on the host.
    pub cu_seqlens: &'a [usize],
}

/// Gradient outputs of [`chunk_backward`], every element written: dq, dk, dv in bf16 (as FLA's;
/// in f32 they were a third of the bytes of the dq/dk + WY kernel), the rest in f32.
pub struct ChunkGrads<'a> {
    /// [T, H, K], per value head: under GVA the caller sums each group's heads into dq of the
    /// q heads (`ops::sum_head_groups`).
    pub dq: CudaViewMut<'a, bf16>,
    /// [T, H, K], per value head as dq.
    pub dk: CudaViewMut<'a, bf16>,
    /// [T, H, V]
    pub dv: CudaViewMut<'a, bf16>,
    /// Gradient w.r.t. the per-token log decay g, [T, H].
    pub dg: CudaViewMut<'a, f32>,
    /// [T, H]
    pub dbeta: CudaViewMut<'a, f32>,
    /// Gradient w.r.t. the initial state, [N, H, K, V] (written even when there was none).
    pub dh0: CudaViewMut<'a, f32>,
}

/// Owned gradient buffers, for callers that do not have their own.
pub struct GradBuffers {
    pub dq: CudaSlice<bf16>,
    pub dk: CudaSlice<bf16>,
    pub dv: CudaSlice<bf16>,
    pub dg: CudaSlice<f32>,
    pub dbeta: CudaSlice<f32>,
    pub dh0: CudaSlice<f32>,
}

impl GradBuffers {
    pub fn new(gpu: &Gpu, dims: Dims, tokens: usize, seqs: usize) -> Result<Self> {
        let (h, k, v) = (dims.heads, dims.dk, dims.dv);
        Ok(GradBuffers {
            dq: alloc_ws(gpu, tokens * h * k, "dq")?,
            dk: alloc_ws(gpu, tokens * h * k, "dk")?,
            dv: alloc_ws(gpu, tokens * h * v, "dv")?,
            dg: alloc_ws(gpu, tokens * h, "dg")?,
            dbeta: alloc_ws(gpu, tokens * h, "dbeta")?,
            dh0: alloc_ws(gpu, seqs * h * k * v, "dh0")?,
        })
    }

    /// Views of the first `tokens` tokens and `seqs` sequences.
    pub fn views(&mut self, dims: Dims, tokens: usize, seqs: usize) -> ChunkGrads<'_> {
        let (h, k, v) = (dims.heads, dims.dk, dims.dv);
        ChunkGrads {
            dq: self.dq.slice_mut(..tokens * h * k),
            dk: self.dk.slice_mut(..tokens * h * k),
            dv: self.dv.slice_mut(..tokens * h * v),
            dg: self.dg.slice_mut(..tokens * h),
            dbeta: self.dbeta.slice_mut(..tokens * h),
            dh0: self.dh0.slice_mut(..seqs * h * k * v),
        }
    }
}

/// What [`chunk_forward_keep`] keeps of a forward for [`chunk_backward_kept`]: T, G, the decay
/// records, W, h_c and Ṽ, sized like the workspace it is used with (same dims, `max_tokens` and
/// `max_seqs`). The buffers trade places with the workspace's, so keeping costs no copy.
pub struct KeptForward {
    dims: Dims,
    max_tokens: usize,
    max_seqs: usize,
    /// T, f32 [max chunks, H, 64, 64].
    tmat: CudaSlice<f32>,
    gc: CudaSlice<f32>,
    rec: CudaSlice<f32>,
    w: CudaSlice<bf16>,
    h: CudaSlice<bf16>,
    vnew: CudaSlice<bf16>,
    /// The cu_seqlens of the forward whose intermediates these are; `None` before the first.
    filled: Option<Vec<usize>>,
}

impl KeptForward {
    /// Buffers for the forwards that `ws` can run (its dims, `max_tokens` and `max_seqs`), each
    /// the size of the workspace buffer it trades places with.
    pub fn new(gpu: &Gpu, ws: &DeltaRuleWorkspace) -> Result<Self> {
        Ok(KeptForward {
            dims: ws.dims,
            max_tokens: ws.max_tokens,
            max_seqs: ws.max_seqs,
            tmat: alloc_ws(
                gpu,
                saved_t_len(ws.dims, ws.max_tokens, ws.max_seqs),
                "kept T",
            )?,
            gc: alloc_ws(gpu, ws.gc.len(), "kept gc")?,
            rec: alloc_ws(gpu, ws.rec.len(), "kept rec")?,
            w: alloc_ws(gpu, ws.w.len(), "kept w")?,
            h: alloc_ws(gpu, ws.h.len(), "kept h")?,
            vnew: alloc_ws(gpu, ws.vnew.len(), "kept vnew")?,
            filled: None,
        })
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.tmat.len() + self.gc.len() + self.rec.len())
            + 2 * (self.w.len() + self.h.len() + self.vnew.len())
    }

    fn check_fits(&self, ws: &DeltaRuleWorkspace) -> Result<()> {
        ensure!(
            (self.dims, self.max_tokens, self.max_seqs) == (ws.dims, ws.max_tokens, ws.max_seqs),
            "delta rule: kept forward buffers for {:?}, {} tokens, {} sequences used with a \
             workspace for {:?}, {} tokens, {} sequences",
            self.dims,
            self.max_tokens,
            self.max_seqs,
            ws.dims,
            ws.max_tokens,
            ws.max_seqs
        );
        Ok(())
    }

    /// Trades the kept buffers with the workspace's (the same sizes: `new`, `check_fits`).
    fn exchange(&mut self, ws: &mut DeltaRuleWorkspace) {
        std::mem::swap(&mut self.gc, &mut ws.gc);
        std::mem::swap(&mut self.rec, &mut ws.rec);
        std::mem::swap(&mut self.w, &mut ws.w);
        std::mem::swap(&mut self.h, &mut ws.h);
        std::mem::swap(&mut self.vnew, &mut ws.vnew);
    }
}

/// A zeroed device buffer of `n` elements (at least one) for the workspace, the kept
/// intermediates or the gradients.
fn alloc_ws<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    gpu: &Gpu,
    n: usize,
    what: &str,
) -> Result<CudaSlice<T>> {
    gpu.stream
        .alloc_zeros::<T>(n.max(1))
        .with_context(|| format!("allocating delta rule buffer `{what}` ({n} elements)"))
}

impl DeltaRuleWorkspace {
    /// Allocates the scratch for calls of up to `max_tokens` tokens in up to `max_seqs`
    /// sequences; with `backward` other than [`Backward::No`], also what [`chunk_backward`]
    /// needs. Compiles/loads the kernels (first use) and synchronises once.
    pub fn new(
        gpu: &Gpu,
        dims: Dims,
        max_tokens: usize,
        max_seqs: usize,
        backward: Backward,
    ) -> Result<Self> {
        check_dims(dims)?;
        ensure!(max_seqs > 0, "delta rule workspace: max_seqs must be > 0");
        ensure!(
            max_tokens < (1 << 30),
            "delta rule workspace: max_tokens {max_tokens} too large"
        );
        let kern = ChunkKernels::load(gpu, dims.dk)?;
        let num_sms = device_attr(
            gpu,
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )?;
        let spread_up_to = if std::env::var("GDN_DR_SPREAD").is_ok_and(|v| v == "0") {
            0
        } else {
            num_sms
        };
        let (h, k, v) = (dims.heads, dims.dk, dims.dv);
        let max_chunks = max_tokens.div_ceil(CHUNK) + max_seqs;
        let t = max_tokens.max(1);
        let bwd = if backward != Backward::No {
            Some(BwdBuffers {
                tmat: if backward == Backward::RecomputeT {
                    Some(alloc_ws(gpu, max_chunks * h * CHUNK * CHUNK, "tmat")?)
                } else {
                    None
                },
                dvloc: alloc_ws(gpu, t * h * v, "dvloc")?,
                dh: alloc_ws(gpu, max_chunks * h * k * v, "dh")?,
                sdp: alloc_ws(gpu, sdp_len(max_chunks, h, v), "sdp")?,
                dvnew: alloc_ws(gpu, t * h * v, "dvnew")?,
            })
        } else {
            None
        };
        Ok(DeltaRuleWorkspace {
            dims,
            max_tokens,
            max_seqs,
            max_chunks,
            num_sms,
            spread_up_to,
            ctab: alloc_ws(gpu, 2 * max_chunks, "ctab")?,
            seq_chunk: alloc_ws(gpu, max_seqs + 1, "seq_chunk")?,
            order: alloc_ws(gpu, 2 * max_chunks, "order")?,
            done: alloc_ws(gpu, max_chunks * h + MAX_GROUPS, "done")?,
            cu_cached: Vec::new(),
            n_chunks: 0,
            gc: alloc_ws(gpu, t * h, "gc")?,
            rec: alloc_ws(gpu, max_chunks * h * REC_WIDTH, "rec")?,
            w: alloc_ws(gpu, t * h * k, "w")?,
            u: alloc_ws(gpu, t * h * v, "u")?,
            h: alloc_ws(gpu, max_chunks * h * k * v, "h")?,
            p: alloc_ws(gpu, p_len(dims, max_chunks), "p")?,
            vnew: alloc_ws(gpu, t * h * v, "vnew")?,
            bwd,
            kern,
            probe: None,
            forward_forced: None,
            ks_forced: None,
            backward_forced: None,
            seg: None,
            seg_saved: SegStatesSaved::default(),
            seg_forced: None,
            no_follow: std::env::var("GDN_DR_FOLLOW").is_ok_and(|v| v == "0"),
            follows: 0,
            groups: Vec::new(),
            groups_forced: None,
            rows: Vec::new(),
            lead_forced: std::env::var("GDN_DR_LEAD")
                .ok()
                .and_then(|v| v.parse::<f64>().ok()),
            leads: 0,
        })
    }

    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// Installs (or removes, with `None`) a per-launch timing probe; returns the old one.
    pub fn set_probe(&mut self, p: Option<StageProbe>) -> Option<StageProbe> {
        std::mem::replace(&mut self.probe, p)
    }

    /// The installed probe, if any.
    pub fn probe(&self) -> Option<&StageProbe> {
        self.probe.as_ref()
    }

    /// Builds and uploads the chunk table for `cu_seqlens` (validated against `tokens`), unless
    /// it is the one already uploaded. Synchronises the stream when it uploads.
    pub fn set_seqlens(&mut self, gpu: &Gpu, cu: &[usize], tokens: usize) -> Result<()> {
        check_cu_seqlens(cu, tokens)?;
        let n = cu.len() - 1;
        ensure!(
            tokens <= self.max_tokens,
            "delta rule: T={tokens} exceeds the workspace's max_tokens {}",
            self.max_tokens
        );
        ensure!(
            n <= self.max_seqs,
            "delta rule: N={n} sequences exceed the workspace's max_seqs {}",
            self.max_seqs
        );
        if self.cu_cached == cu {
            return Ok(());
        }
        let (ctab, seq_chunk) = chunk_table(cu);
        let nc = ctab.len() / 2;
        ensure!(nc <= self.max_chunks, "delta rule: chunk table overflow");
        if !ctab.is_empty() {
            gpu.stream
                .memcpy_htod(&ctab, &mut self.ctab.slice_mut(..ctab.len()))
                .context("uploading the delta rule chunk table")?;
        }
        gpu.stream
            .memcpy_htod(&seq_chunk, &mut self.seq_chunk.slice_mut(..n + 1))
            .context("uploading the delta rule sequence table")?;
        self.plan_segments(gpu, &seq_chunk)?;
        self.groups = self.plan_groups(&seq_chunk);
        if nc > 0 {
            // Each group's chunks in the order its passes form them.
            let orders = |f: fn(&[i32]) -> Vec<i32>| -> Vec<i32> {
                let g = self.groups.iter();
                g.flat_map(|g| f(&seq_chunk[g.s0..=g.s1])).collect()
            };
            let mut order = orders(step_order);
            order.extend(orders(reverse_step_order));
            gpu.stream
                .memcpy_htod(&order, &mut self.order.slice_mut(..2 * nc))
                .context("uploading the delta rule chunk orders")?;
        }
        gpu.sync()?;
        self.rows = chunks_per_row(&seq_chunk);
        self.cu_cached = cu.to_vec();
        self.n_chunks = nc;
        Ok(())
    }

    /// The sequence-parallel plan for `seq_chunk` ([`seg_len`], or the forced length; only where
    /// the transition pass's kernel fits): its tables uploaded, its buffers (re)allocated where
    /// too small.
    fn plan_segments(&mut self, gpu: &Gpu, seq_chunk: &[i32]) -> Result<()> {
        let chunks: Vec<usize> = seq_chunk
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .collect();
        let forced = self.seg_forced.or_else(|| {
            std::env::var("GDN_DR_SEG")
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
        });
        let len = match forced {
            Some(0) => None,
            Some(l) => chunks.iter().any(|&c| c > l).then_some(l),
            None => seg_len(&chunks, self.dims, self.num_sms),
        };
        let Some(len) = len.filter(|_| self.seg_kern().is_some()) else {
            self.seg = None;
            return Ok(());
        };
        let (seg_chunk, seq_seg) = seg_tables(seq_chunk, len);
        let n_segs = seg_chunk.len() - 1;
        let Dims {
            heads: h,
            dk: k,
            dv: v,
        } = self.dims;
        let mut plan = match self.seg.take() {
            Some(p) if p.seg_chunk.len() >= seg_chunk.len() && p.seq_seg.len() >= seq_seg.len() => {
                p
            }
            _ => SegPlan {
                len,
                n_segs,
                seg_chunk: alloc_ws(gpu, seg_chunk.len(), "seg_chunk")?,
                seq_seg: alloc_ws(gpu, seq_seg.len(), "seq_seg")?,
                a: alloc_ws(gpu, n_segs * h * k * k, "seg_a")?,
                b: alloc_ws(gpu, n_segs * h * k * v, "seg_b")?,
                x: alloc_ws(gpu, n_segs * h * k * v, "seg_x")?,
            },
        };
        if plan.a.len() < n_segs * h * k * k {
            plan.a = alloc_ws(gpu, n_segs * h * k * k, "seg_a")?;
            plan.b = alloc_ws(gpu, n_segs * h * k * v, "seg_b")?;
            plan.x = alloc_ws(gpu, n_segs * h * k * v, "seg_x")?;
        }
        plan.len = len;
        plan.n_segs = n_segs;
        gpu.stream
            .memcpy_htod(&seg_chunk, &mut plan.seg_chunk.slice_mut(..seg_chunk.len()))
            .context("uploading the delta rule segment table")?;
        gpu.stream
            .memcpy_htod(&seq_seg, &mut plan.seq_seg.slice_mut(..seq_seg.len()))
            .context("uploading the delta rule segment table")?;
        self.seg = Some(plan);
        Ok(())
    }

    /// The transition pass's kernel (64 columns, which divide both K and V), where it fits.
    fn seg_kern(&self) -> Option<&StateKern> {
        self.kern.state_seg.as_ref()
    }

    /// Whether the reverse pass walks the segments of the plan too (its transition kernel fits;
    /// `GDN_DR_SEG_BWD=0` keeps it on the sequences, for experiments).
    fn seg_reverse(&self) -> bool {
        self.kern.state_bwd_seg.is_some()
            && std::env::var("GDN_DR_SEG_BWD").map_or(true, |v| v != "0")
    }

    /// Forces the sequence-parallel plan of the calls that follow: segments of `len` chunks
    /// (`Some(0)`: none; `None`: `seg_len`'s choice, or `GDN_DR_SEG` for experiments).
    pub fn force_segments(&mut self, len: Option<usize>) {
        self.seg_forced = len;
        // The plan is made with the chunk table: the next call rebuilds both.
        self.cu_cached.clear();
    }

    /// The segments the state passes walk instead of the `n` sequences, if any: (count, length
    /// in chunks).
    pub fn segments(&self) -> Option<(usize, usize)> {
        self.seg.as_ref().map(|p| (p.n_segs, p.len))
    }

    /// Where this call's segment states go in the saved-T buffer at `tmat` (`len` elements):
    /// behind T and P, where the room ([`saved_seg_room`]) holds this plan's A and X.
    fn saved_seg_at(&self, tmat: u64, len: usize) -> Option<SavedSeg> {
        let p = self.seg.as_ref()?;
        let (x0, a0, end) = saved_seg_offsets(self.dims, self.n_chunks, p.n_segs);
        (end <= len).then_some(SavedSeg {
            x: tmat + 4 * x0 as u64,
            a: tmat + 4 * a0 as u64,
        })
    }

    /// The segment states that the forward which saved T at `tmat` (`len` elements) left there
    /// for this call's plan, if it did.
    fn saved_seg(&self, tmat: u64, len: usize) -> Option<SavedSeg> {
        let plan = self.segments()?;
        self.seg_saved
            .holds(tmat, plan)
            .then(|| self.saved_seg_at(tmat, len))
            .flatten()
    }

    /// The state passes' plan for `n` sequences of `tokens` in all (as `bench kernels` prints
    /// it): the forward (fused with the output, or split: state pass then `fwd_o`) and the warps
    /// per CTA of each pass (column groups × K slices where split).
    pub fn state_plan(&self, n: usize, tokens: usize) -> String {
        // The forward and the recompute (and the reverse pass, `seg_reverse`) walk the segments
        // of a sequence-parallel plan.
        let (walked, segs) = match self.segments() {
            Some((s, len)) => (
                s,
                format!(
                    "; {s} segments of {len} chunks (forward, recompute{})",
                    if self.seg_reverse() { ", reverse" } else { "" }
                ),
            ),
            None => (n, String::new()),
        };
        let (fwd, f) = self.forward_pass(walked, tokens);
        let (bwd, b) = self.reverse_pass(n);
        let groups = match self.groups.len() {
            1 => String::new(),
            g => format!(", in {g} groups of sequences"),
        };
        let split = |ws: &Self, len| ws.state_kern(len, PassKind::Split).0.nw;
        let reverse = |ws: &Self, len| ws.reverse_pass(len).1.nw;
        let followers = [
            (
                fwd == ForwardPath::Split && self.group_follows(split).is_some(),
                "fwd_o",
            ),
            (
                bwd == BackwardPath::Plain && self.group_follows(reverse).is_some(),
                "dqk + wy",
            ),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| format!("; {name} follows its pass{groups}"))
        .collect::<String>();
        let lead = match self.forward_lead(fwd, walked) {
            Some(l) => format!(
                "; prep leads the forward ({} of {} items before it)",
                l.first, l.items
            ),
            None => String::new(),
        };
        format!(
            "forward {} {} warps, recompute {}, backward {} {}{segs}{followers}{lead}",
            fwd.name(),
            f.shape(),
            self.state_kern(walked, PassKind::Split).0.shape(),
            bwd.name(),
            b.shape()
        )
    }

    fn state_kern(&self, n: usize, pass: PassKind) -> (&StateKern, f64) {
        let d = self.dims;
        let vars = match pass {
            PassKind::Fused => &self.kern.state_fwd,
            PassKind::Split => &self.kern.state_split,
            PassKind::Bwd => &self.kern.state_bwd,
        };
        let force_ks = self.ks_forced.filter(|_| pass != PassKind::Fused);
        pick_state_nw(
            vars,
            n * d.heads,
            (d.dk, d.dv),
            pass,
            self.num_sms,
            force_ks,
        )
    }

    /// Forces the K split of the split pass (forward and recompute) and of the reverse pass in
    /// the calls that follow (`None`: the cost model's choice). The selftest runs them unsplit
    /// to compare the warp-specialised passes with them bit for bit.
    pub fn force_ks(&mut self, ks: Option<usize>) {
        self.ks_forced = ks;
    }

    /// Forces the forward's path of the calls that follow (`None`: the cost model's choice). The
    /// selftest runs every case through each path, whichever the model would pick at its shapes.
    /// A warp-specialised path where this head size has none falls back to the model's choice.
    pub fn force_forward(&mut self, path: Option<ForwardPath>) {
        self.forward_forced = path;
    }

    /// A warp-specialised kernel (forward or reverse pass), where it serves these dimensions:
    /// loaded (K <= 128) and V a multiple of its 64 columns.
    fn ws_serving<'a>(&self, kern: &'a Option<StateKern>) -> Option<&'a StateKern> {
        kern.as_ref().filter(|_| warp_specialised_serves(self.dims))
    }

    /// The warp-specialised forward, where it serves these dimensions.
    fn ws_kern(&self) -> Option<&StateKern> {
        self.ws_serving(&self.kern.state_ws)
    }

    /// Forces the reverse pass's path of the calls that follow (`None`: the cost model's choice),
    /// as [`DeltaRuleWorkspace::force_forward`] does the forward's.
    pub fn force_backward(&mut self, path: Option<BackwardPath>) {
        self.backward_forced = path;
    }

    /// The warp-specialised reverse pass, where it serves these dimensions.
    fn bwd_ws_kern(&self) -> Option<&StateKern> {
        self.ws_serving(&self.kern.state_bwd_ws)
    }

    /// The reverse pass's path for `n` sequences and its kernel: warp-specialised where it serves
    /// and [`bwd_ws_pays`], else `dvloc` and the model's reverse pass.
    /// [`DeltaRuleWorkspace::force_backward`] or, for experiments, `GDN_DR_BWD=plain|ws` forces
    /// one.
    fn reverse_pass(&self, n: usize) -> (BackwardPath, &StateKern) {
        // Over a sequence-parallel plan's segments: the plain pass (its transition pass reads
        // dṼ_loc from `dvloc`).
        if let Some(p) = self.seg.as_ref().filter(|_| self.seg_reverse()) {
            return (
                BackwardPath::Plain,
                self.state_kern(p.n_segs, PassKind::Bwd).0,
            );
        }
        let d = self.dims;
        let (sb, _) = self.state_kern(n, PassKind::Bwd);
        let forced = self
            .backward_forced
            .or(match std::env::var("GDN_DR_BWD").as_deref() {
                Ok("plain") => Some(BackwardPath::Plain),
                Ok("ws") => Some(BackwardPath::WarpSpecialised),
                _ => None,
            });
        match (forced, self.bwd_ws_kern()) {
            (Some(BackwardPath::WarpSpecialised), Some(wk)) => (BackwardPath::WarpSpecialised, wk),
            (None, Some(wk)) if bwd_ws_pays(sb.ks, n * d.heads * d.dv / 64, self.num_sms) => {
                (BackwardPath::WarpSpecialised, wk)
            }
            _ => (BackwardPath::Plain, sb),
        }
    }

    /// Whether [`BackwardPath::WarpSpecialised`] serves these dimensions.
    pub fn has_bwd_warp_specialised(&self) -> bool {
        self.bwd_ws_kern().is_some()
    }

    /// Whether [`ForwardPath::WarpSpecialised`] serves these dimensions.
    pub fn has_warp_specialised(&self) -> bool {
        self.ws_kern().is_some()
    }

    /// The forward's path for `n` sequences of `tokens` in all, and its state kernel: fused with
    /// the output, split (state pass, then `fwd_o`) or warp-specialised: the last where it serves
    /// and [`ws_fwd_pays`] (it runs the output products beside the sequential loop), else the
    /// faster of the other two by the cost model (the fused pass does the output products inside
    /// the sequential pass, which pays when its CTAs fill the GPU; `fwd_o` is parallel over
    /// chunks). [`DeltaRuleWorkspace::force_forward`] or, for experiments,
    /// `GDN_DR_FWD=fused|split|ws` forces one.
    fn forward_pass(&self, n: usize, tokens: usize) -> (ForwardPath, &StateKern) {
        let d = self.dims;
        let steps = tokens.div_ceil(CHUNK).div_ceil(n.max(1)) as f64;
        let (fk, fc) = self.state_kern(n, PassKind::Fused);
        let (sk, sc) = self.state_kern(n, PassKind::Split);
        let split_s = sc * steps + fwd_o_cost(tokens, d.heads, d.dk, d.dv);
        let ws_pays = ws_fwd_pays(n * d.heads * d.dv.div_ceil(64), d.dk, self.num_sms);
        let forced = self
            .forward_forced
            .or(match std::env::var("GDN_DR_FWD").as_deref() {
                Ok("fused") => Some(ForwardPath::Fused),
                Ok("split") => Some(ForwardPath::Split),
                Ok("ws") => Some(ForwardPath::WarpSpecialised),
                _ => None,
            });
        match (forced, self.ws_kern()) {
            (Some(ForwardPath::WarpSpecialised), Some(wk)) => (ForwardPath::WarpSpecialised, wk),
            (Some(ForwardPath::Fused), _) => (ForwardPath::Fused, fk),
            (Some(ForwardPath::Split), _) => (ForwardPath::Split, sk),
            (None, Some(wk)) if ws_pays => (ForwardPath::WarpSpecialised, wk),
            _ if fc * steps <= split_s => (ForwardPath::Fused, fk),
            _ => (ForwardPath::Split, sk),
        }
    }
}

/// The chunk table of `cu_seqlens`: (first token, length) per chunk, i32 pairs, each sequence cut
/// into chunks of 64 from its first token (the last one partial), and the first chunk of each
/// sequence ([N + 1], the last entry the number of chunks). The state passes rely on that layout
/// (`SeqChunks` in delta_rule.cu forms a chunk's row from its sequence's first and last).
fn chunk_table(cu: &[usize]) -> (Vec<i32>, Vec<i32>) {
    let mut ctab = Vec::new();
    let mut seq_chunk = Vec::with_capacity(cu.len());
    for s in cu.windows(2) {
        seq_chunk.push((ctab.len() / 2) as i32);
        let (bos, eos) = (s[0], s[1]);
        let mut t = bos;
        while t < eos {
            let l = (eos - t).min(CHUNK);
            ctab.push(t as i32);
            ctab.push(l as i32);
            t += l;
        }
    }
    seq_chunk.push((ctab.len() / 2) as i32);
    (ctab, seq_chunk)
}

/// The chunks in the order a state pass over whole sequences forms them: every sequence's first
/// chunk, then every second one, and so on.
fn step_order(seq_chunk: &[i32]) -> Vec<i32> {
    let spans: Vec<(i32, i32)> = seq_chunk.windows(2).map(|w| (w[0], w[1])).collect();
    let longest = spans.iter().map(|(a, b)| b - a).max().unwrap_or(0);
    (0..longest)
        .flat_map(|step| {
            spans
                .iter()
                .filter(move |(a, b)| a + step < *b)
                .map(move |(a, _)| a + step)
        })
        .collect()
}

/// The chunks in the order a reverse pass over whole sequences forms them: every sequence's last
/// chunk, then every last but one, and so on.
fn reverse_step_order(seq_chunk: &[i32]) -> Vec<i32> {
    let last = |c: i32| {
        let s = seq_chunk.partition_point(|&first| first <= c) - 1;
        seq_chunk[s] + seq_chunk[s + 1] - 1 - c
    };
    step_order(seq_chunk).into_iter().map(last).collect()
}

/// Validates the inputs against the workspace; returns (T, N).
fn check_inputs(ws: &DeltaRuleWorkspace, inp: &ChunkInputs) -> Result<(usize, usize)> {
    let Dims {
        heads: h,
        dk: k,
        dv: v,
    } = ws.dims;
    let g = inp.group;
    ensure!(
        g >= 1 && h % g == 0,
        "delta rule (CUDA): group {g} does not divide the {h} value heads"
    );
    let hq = h / g;
    ensure!(
        inp.q.len() % (hq * k) == 0,
        "delta rule (CUDA): `q` has {} elements, not a multiple of (H / group)·K = {}",
        inp.q.len(),
        hq * k
    );
    let t = inp.q.len() / (hq * k);
    check_cu_seqlens(inp.cu_seqlens, t)?;
    let n = inp.cu_seqlens.len() - 1;
    let what = format!("T={t}, H={h}, q/k heads {hq}, K={k}, V={v}, N={n}");
    check_len("k", inp.k.len(), t * hq * k, &what)?;
    check_len("v", inp.v.len(), t * h * v, &what)?;
    check_len("g", inp.g.len(), t * h, &what)?;
    check_len("beta", inp.beta.len(), t * h, &what)?;
    if let Some(s) = &inp.initial_state {
        check_len("initial_state", s.len(), n * h * k * v, &what)?;
    }
    ensure!(
        inp.scale.is_finite(),
        "delta rule (CUDA): scale must be finite"
    );
    Ok((t, n))
}

/// Where `run_w_u` gets T.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TSource {
    /// `prep` solves it (and writes it to `tmat` unless that is null); with `pm` not null, it
    /// also writes P there (the warp-specialised passes read it); with `pflag` not null, it
    /// writes there whether it did.
    Solve { tmat: u64, pm: u64, pflag: u64 },
    /// `wu` reads the forward's T from `tmat`.
    Saved { tmat: u64 },
}

/// Queues G, W and U for the state passes, by `prep` or `wu` as `src` says, for every chunk.
fn run_w_u(gpu: &Gpu, ws: &mut DeltaRuleWorkspace, inp: &ChunkInputs, src: TSource) -> Result<()> {
    let items = WuItems::All(ws.n_chunks);
    run_w_u_on(&gpu.stream, gpu, ws, inp, src, items)
}

/// Which (chunk, head) items a `prep` or `wu` launch forms.
#[derive(Clone, Copy)]
enum WuItems {
    /// Every one of the chunks, as a (chunk, head) grid.
    All(usize),
    /// Items `base..base + count` of the forward pass's chunk order, counted in `done`: prep
    /// leading the warp-specialised forward ([`Lead`], `dr_prep_led`).
    Led {
        base: usize,
        count: usize,
        done: u64,
    },
}

/// [`run_w_u`] of `items` on `stream` (the GPU's, or its side stream; the buffers are the
/// workspace's, addressed through `gpu`).
fn run_w_u_on(
    stream: &CudaStream,
    gpu: &Gpu,
    ws: &mut DeltaRuleWorkspace,
    inp: &ChunkInputs,
    src: TSource,
    items: WuItems,
) -> Result<()> {
    let Dims {
        heads: h,
        dk: _,
        dv: v,
    } = ws.dims;
    let (grid, lead) = match items {
        WuItems::All(0) | WuItems::Led { count: 0, .. } => return Ok(()),
        WuItems::All(nc) => ((nc as u32, h as u32, 1), None),
        WuItems::Led { base, count, done } => (
            (count as u32, 1, 1),
            Some([
                Arg::P(ptr(gpu, &ws.order)),
                Arg::I(base as i32),
                Arg::P(done),
            ]),
        ),
    };
    let ctab = ptr(gpu, &ws.ctab);
    let gc = ptr_mut(gpu, &mut ws.gc);
    let rec = ptr_mut(gpu, &mut ws.rec);
    let w = ptr_mut(gpu, &mut ws.w);
    let u = ptr_mut(gpu, &mut ws.u);
    let (k, vv, g, beta) = (
        Arg::P(ptr(gpu, &inp.k)),
        Arg::P(ptr(gpu, &inp.v)),
        Arg::P(ptr(gpu, &inp.g)),
        Arg::P(ptr(gpu, &inp.beta)),
    );
    let (hi, vi) = (Arg::I(h as i32), Arg::I(v as i32));
    match src {
        TSource::Saved { tmat } => {
            ensure!(
                lead.is_none(),
                "delta rule: wu is never led (internal error)"
            );
            let args = [
                k,
                vv,
                g,
                beta,
                Arg::P(tmat),
                Arg::P(ctab),
                hi,
                Arg::I(inp.group as i32),
                vi,
                Arg::P(gc),
                Arg::P(rec),
                Arg::P(w),
                Arg::P(u),
            ];
            launch_kern_on(stream, &ws.kern.wu, grid, 256, &args)
        }
        TSource::Solve { tmat, pm, pflag } => {
            let q = if pm != 0 { ptr(gpu, &inp.q) } else { 0 };
            // Forming P, prep needs Q's rows in shared memory too.
            let smem = if pm != 0 {
                ws.kern.prep_p_smem
            } else {
                ws.kern.prep.smem
            };
            let mut args = vec![
                k,
                vv,
                g,
                beta,
                Arg::P(q),
                Arg::P(ctab),
                hi,
                Arg::I(inp.group as i32),
                vi,
                Arg::F(inp.scale),
                Arg::P(gc),
                Arg::P(rec),
                Arg::P(w),
                Arg::P(u),
                Arg::P(tmat),
                Arg::P(pm),
                Arg::P(pflag),
            ];
            let kp = match lead {
                None => &ws.kern.prep,
                Some(l) => {
                    args.extend(l);
                    ws.kern
                        .prep_led
                        .as_ref()
                        .context("delta rule: no led prep for these dimensions")?
                }
            };
            launch_on(stream, &kp.f, &kp.name, grid, 256, smem, &args)
        }
    }
}

/// dṼ_loc, the within-chunk part of dṼ (from Q, K, the gates and dO), on `stream`.
fn run_dvloc(
    stream: &CudaStream,
    ws: &DeltaRuleWorkspace,
    inp: &ChunkInputs,
    (d_o, dvloc): (u64, u64),
) -> Result<()> {
    let nc = ws.n_chunks;
    if nc == 0 {
        return Ok(());
    }
    let Dims {
        heads: h, dv: v, ..
    } = ws.dims;
    launch_kern_on(
        stream,
        &ws.kern.dvloc,
        (nc as u32, h as u32, 1),
        256,
        &[
            Arg::P(inp.q.device_ptr(stream).0),
            Arg::P(inp.k.device_ptr(stream).0),
            Arg::P(ws.gc.device_ptr(stream).0),
            Arg::P(d_o),
            Arg::P(ws.ctab.device_ptr(stream).0),
            Arg::I(h as i32),
            Arg::I(inp.group as i32),
            Arg::I(v as i32),
            Arg::F(inp.scale),
            Arg::P(dvloc),
        ],
    )
}

/// Checks a saved T's length against the chunks of the current call: at least NC·H·64·64, and
/// where the warp-specialised passes serve, the P and flag behind it ([`saved_p`]).
fn check_saved_t(ws: &DeltaRuleWorkspace, name: &str, len: usize) -> Result<()> {
    let want = saved_t_elems(ws.dims, ws.n_chunks);
    ensure!(
        len >= want,
        "delta rule (CUDA): `{name}` has {len} elements; T of {} chunks × {} heads needs {want} \
         (size it with saved_t_len)",
        ws.n_chunks,
        ws.dims.heads
    );
    Ok(())
}

/// What a state pass writes besides advancing the state (device pointers; 0 = none).
enum StateOut {
    /// The forward: the output `o` by `path` (the warp-specialised one reads the P that `prep`
    /// wrote at `pm`) and, when `ht` is non-null, the final state.
    Forward {
        o: u64,
        ht: u64,
        path: ForwardPath,
        pm: u64,
        /// The counts of the prep that leads the pass, and where its CTAs count themselves as
        /// they start ([`Lead`]; 0: none).
        lead: (u64, u64),
    },
    /// The backward's recompute: h_c and Ṽ into the workspace.
    Recompute,
}

/// Queues a state pass (kernel 2: `state_fwd`, or `state_split` then `fwd_o` or, recomputing,
/// alone),
/// with the stage marks of `bench kernels --breakdown` for the forward.
fn run_state_pass(
    gpu: &Gpu,
    ws: &mut DeltaRuleWorkspace,
    inp: &ChunkInputs,
    walk: Walk,
    out: StateOut,
) -> Result<()> {
    let Dims {
        heads: h,
        dk: _,
        dv: v,
    } = ws.dims;
    let Walk {
        n,
        table: seq_chunk,
        h0,
    } = walk;
    let ctab = ptr(gpu, &ws.ctab);
    let gc = ptr(gpu, &ws.gc);
    let rec = ptr(gpu, &ws.rec);
    let w = ptr(gpu, &ws.w);
    let u = ptr(gpu, &ws.u);
    let (hs, vnew) = (ptr_mut(gpu, &mut ws.h), ptr_mut(gpu, &mut ws.vnew));
    let path = match out {
        StateOut::Forward { path, .. } => path,
        StateOut::Recompute => ForwardPath::Split,
    };
    // The fused and warp-specialised passes write O themselves and keep h_c and Ṽ on chip.
    let writes_o = path != ForwardPath::Split;
    let (q, o, ht) = match out {
        StateOut::Forward { o, ht, .. } if writes_o => (ptr(gpu, &inp.q), o, ht),
        StateOut::Forward { ht, .. } => (0, 0, ht),
        StateOut::Recompute => (0, 0, 0),
    };
    let (hs, vnew) = if writes_o { (0, 0) } else { (hs, vnew) };
    let pm = match out {
        StateOut::Forward { pm, .. } if path == ForwardPath::WarpSpecialised => pm,
        _ => 0,
    };
    let (lead, started) = match out {
        StateOut::Forward { lead, .. } => lead,
        StateOut::Recompute => (0, 0),
    };
    let follow = match out {
        StateOut::Forward { o, .. } if path == ForwardPath::Split => ws
            .follow_groups(|ws, len| ws.state_kern(len, PassKind::Split).0.nw)
            .map(|f| (o, f)),
        _ => None,
    };
    // The pass over sequences s0..s0 + len (a group's, or all), counting into `done` where given.
    let dims = ws.dims;
    let at = |p: u64, s0: usize| seq_state(dims, p, s0);
    let pass = |ws: &DeltaRuleWorkspace, sk: &StateKern, s0: usize, len: usize, done: u64| {
        launch_state(
            gpu,
            sk,
            ws.pass_grid(len, sk.nw),
            ws.spread_up_to,
            &[
                Arg::P(w),
                Arg::P(u),
                Arg::P(ptr(gpu, &inp.k)),
                Arg::P(q),
                Arg::P(pm),
                Arg::P(gc),
                Arg::P(rec),
                Arg::P(ctab),
                Arg::P(seq_chunk + 4 * s0 as u64),
                Arg::P(at(h0, s0)),
                Arg::I(h as i32),
                Arg::I(inp.group as i32),
                Arg::I(v as i32),
                Arg::F(inp.scale),
                Arg::P(hs),
                Arg::P(vnew),
                Arg::P(o),
                Arg::P(at(ht, s0)),
                Arg::P(0),
                Arg::P(done),
                Arg::P(lead),
                Arg::P(started),
            ],
        )
    };
    if let Some((o, plan)) = &follow {
        let done = zero_counts(gpu, ws)?;
        let ws = &*ws;
        return run_followed(
            gpu,
            ws,
            plan,
            |stream, f, ctas| run_fwd_o_follow(stream, ws, inp, (*o, f), ctas),
            |g| {
                let len = g.seqs();
                pass(ws, ws.state_kern(len, PassKind::Split).0, g.s0, len, done)
            },
        );
    }
    let kern = match (path, lead) {
        (ForwardPath::WarpSpecialised, l) if l != 0 => ws
            .kern
            .state_ws_led
            .as_ref()
            .context("delta rule: no led warp-specialised forward for these dimensions")?,
        _ => ws.pass_kern(path, n)?,
    };
    pass(ws, kern, 0, n, 0)?;
    match (out, path) {
        (StateOut::Forward { .. }, ForwardPath::Fused) => {
            probe_mark(gpu, ws, "fwd: state_fwd (+ output)")
        }
        (StateOut::Forward { .. }, ForwardPath::WarpSpecialised) => {
            probe_mark(gpu, ws, "fwd: state_ws (+ output)")
        }
        (StateOut::Forward { o, .. }, _) => {
            probe_mark(gpu, ws, "fwd: state_split")?;
            run_fwd_o(gpu, ws, inp, o)?;
            probe_mark(gpu, ws, "fwd: fwd_o")
        }
        (StateOut::Recompute, _) => Ok(()),
    }
}

/// The walk of the state pass that follows for the `n` sequences of the uploaded table: without a
/// [`SegPlan`] the sequences from their initial states; with one the segments from their start
/// states, which this queues first (the transition pass, then `seg_combine`, which also writes
/// the final states to `ht` when given: the pass over the segments is then given none). The
/// segments' A and start states go to `dst` when given (a saved-T buffer), else to the plan.
fn segment_walk(
    gpu: &Gpu,
    ws: &mut DeltaRuleWorkspace,
    inp: &ChunkInputs,
    n: usize,
    ht: u64,
    (trans_stage, combine_stage): (&'static str, &'static str),
    dst: Option<SavedSeg>,
) -> Result<(Walk, u64)> {
    let h0 = inp.initial_state.as_ref().map_or(0, |s| ptr(gpu, s));
    let Some(plan) = ws.seg.as_ref() else {
        let table = ptr(gpu, &ws.seq_chunk);
        return Ok((Walk { n, table, h0 }, ht));
    };
    let Dims {
        heads: h,
        dk: k,
        dv: v,
    } = ws.dims;
    let n_segs = plan.n_segs;
    let seg_chunk = ptr(gpu, &plan.seg_chunk);
    let SavedSeg { a, x } = dst.unwrap_or(SavedSeg {
        a: ptr(gpu, &plan.a),
        x: ptr(gpu, &plan.x),
    });
    let b = ptr(gpu, &plan.b);
    let sk = ws
        .seg_kern()
        .context("delta rule: a segment plan without its transition kernel")?;
    let (hi, vi) = (h as i32, v as i32);
    launch_state(
        gpu,
        sk,
        (n_segs as u32, h as u32, ((v + k) / (16 * sk.nw)) as u32),
        ws.spread_up_to,
        &[
            Arg::P(ptr(gpu, &ws.w)),
            Arg::P(ptr(gpu, &ws.u)),
            Arg::P(ptr(gpu, &inp.k)),
            Arg::P(0),
            Arg::P(0),
            Arg::P(ptr(gpu, &ws.gc)),
            Arg::P(ptr(gpu, &ws.rec)),
            Arg::P(ptr(gpu, &ws.ctab)),
            Arg::P(seg_chunk),
            Arg::P(0),
            Arg::I(hi),
            Arg::I(inp.group as i32),
            Arg::I(vi),
            Arg::F(inp.scale),
            Arg::P(0),
            Arg::P(0),
            Arg::P(0),
            Arg::P(b),
            Arg::P(a),
            Arg::P(0),
            Arg::P(0),
            Arg::P(0),
        ],
    )?;
    probe_mark(gpu, ws, trans_stage)?;
    launch_combine(gpu, ws, plan, n, (a, x), (h0, ht), false)?;
    probe_mark(gpu, ws, combine_stage)?;
    Ok((
        Walk {
            n: n_segs,
            table: seg_chunk,
            h0: x,
        },
        0,
    ))
}

/// The reverse pass's walk, as [`segment_walk`] the forward's: without a [`SegPlan`] (or with
/// the reverse pass on the sequences) the sequences from `dht` (the dS leaving them) with dh0 to
/// `dh0`; with one the segments from the dS leaving each, which this queues first (the reverse
/// transition pass, which reads dṼ_loc from `dvl`, then `seg_combine` backwards, which also
/// writes dh0), the pass's own dh0 going to scratch. A segment's reverse transition is its
/// forward one transposed: where the forward's are at hand (`forward_a`: the recompute's in the
/// plan, or the ones the forward saved), the transition pass forms only the segments' dS from
/// zero (V's columns, not V + K). Returns the walk and where its dh0 goes.
#[allow(clippy::too_many_arguments)]
fn reverse_walk(
    gpu: &Gpu,
    ws: &DeltaRuleWorkspace,
    inp: &ChunkInputs,
    n: usize,
    (d_o, dvl): (u64, u64),
    dht: u64,
    dh0: u64,
    forward_a: Option<u64>,
) -> Result<(Walk, u64)> {
    let plan = match ws.seg.as_ref() {
        Some(p) if ws.seg_reverse() => p,
        _ => {
            let table = ptr(gpu, &ws.seq_chunk);
            return Ok((Walk { n, table, h0: dht }, dh0));
        }
    };
    let Dims {
        heads: h,
        dk: k,
        dv: v,
    } = ws.dims;
    let seg_chunk = ptr(gpu, &plan.seg_chunk);
    let a = forward_a.unwrap_or(ptr(gpu, &plan.a));
    let (b, x) = (ptr(gpu, &plan.b), ptr(gpu, &plan.x));
    let sk = ws
        .kern
        .state_bwd_seg
        .as_ref()
        .context("delta rule: a segment plan without its reverse transition kernel")?;
    let (hi, vi) = (h as i32, v as i32);
    let cols = if forward_a.is_some() { v } else { v + k };
    launch_state(
        gpu,
        sk,
        (plan.n_segs as u32, h as u32, (cols / (16 * sk.nw)) as u32),
        ws.spread_up_to,
        &[
            Arg::P(ptr(gpu, &inp.q)),
            Arg::P(ptr(gpu, &inp.k)),
            Arg::P(ptr(gpu, &ws.w)),
            Arg::P(ptr(gpu, &ws.gc)),
            Arg::P(ptr(gpu, &ws.rec)),
            Arg::P(d_o),
            Arg::P(dvl),
            Arg::P(0),
            Arg::P(ptr(gpu, &ws.ctab)),
            Arg::P(seg_chunk),
            Arg::P(0),
            Arg::I(hi),
            Arg::I(inp.group as i32),
            Arg::I(vi),
            Arg::F(inp.scale),
            Arg::P(0),
            Arg::P(0),
            Arg::P(0),
            Arg::P(b),
            Arg::P(0),
            Arg::P(0),
            Arg::P(a),
        ],
    )?;
    probe_mark(gpu, ws, "bwd: reverse segment transitions")?;
    launch_combine(gpu, ws, plan, n, (a, x), (dht, dh0), true)?;
    probe_mark(gpu, ws, "bwd: reverse segment starts")?;
    Ok((
        Walk {
            n: plan.n_segs,
            table: seg_chunk,
            h0: x,
        },
        b,
    ))
}

/// Queues `seg_combine` for the `n` sequences of `plan` (A at `a` and the plan's B in, each
/// segment's start into `x`): from `first` (h0, or with `reverse` the dS leaving each
/// sequence; 0 for none), the state after the last segment to `last` (when given).
fn launch_combine(
    gpu: &Gpu,
    ws: &DeltaRuleWorkspace,
    plan: &SegPlan,
    n: usize,
    (a, x): (u64, u64),
    (first, last): (u64, u64),
    reverse: bool,
) -> Result<()> {
    let Dims {
        heads: h, dv: v, ..
    } = ws.dims;
    launch_kern(
        gpu,
        &ws.kern.seg_combine,
        (n as u32, h as u32, (v / 16) as u32),
        256,
        &[
            Arg::P(a),
            Arg::P(ptr(gpu, &plan.b)),
            Arg::P(ptr(gpu, &plan.seq_seg)),
            Arg::P(first),
            Arg::I(h as i32),
            Arg::I(v as i32),
            Arg::I(reverse as i32),
            Arg::P(x),
            Arg::P(last),
        ],
    )
}

/// Queues `fwd_o` (kernel 3: O from h_c and Ṽ in the workspace, per chunk and head).
fn run_fwd_o(gpu: &Gpu, ws: &DeltaRuleWorkspace, inp: &ChunkInputs, o: u64) -> Result<()> {
    let nc = ws.n_chunks;
    if nc == 0 {
        return Ok(());
    }
    let Dims {
        heads: h,
        dk: _,
        dv: v,
    } = ws.dims;
    let ko = &ws.kern.fwd_o;
    launch_kern(
        gpu,
        ko,
        (nc as u32, h as u32, 1),
        256,
        &[
            Arg::P(ptr(gpu, &inp.q)),
            Arg::P(ptr(gpu, &inp.k)),
            Arg::P(ptr(gpu, &ws.gc)),
            Arg::P(ptr(gpu, &ws.h)),
            Arg::P(ptr(gpu, &ws.vnew)),
            Arg::P(ptr(gpu, &ws.ctab)),
            Arg::I(h as i32),
            Arg::I(inp.group as i32),
            Arg::I(v as i32),
            Arg::F(inp.scale),
            Arg::P(o),
        ],
    )
}

/// A chunk-parallel kernel beside the state pass that feeds it (fwd_o after the forward's split
/// pass, dqkwy after the plain reverse pass): `followers` CTAs on the side stream take the
/// (chunk, head) items by ticket, in the order the pass stores them, each once the pass's `need`
/// CTAs of that head have stored it (the pass counts them in `done`). They run on the SMs the
/// pass's grid leaves idle; after the pass a grid on the main stream takes the items left.
///
/// Only where the pass runs one CTA per SM and leaves `followers` SMs idle: even if every
/// follower took an SM first, the pass's CTAs would all still be resident, so a follower never
/// waits on a CTA that cannot run (`wait_count` traps rather than hangs if one ever did).
struct Follow {
    followers: usize,
    need: usize,
    /// The group's sequences and chunks, and its ticket (the group's index).
    group: SeqGroup,
    ticket: usize,
}

/// Consecutive sequences `s0..s1` (their chunks `c0..c1`) whose state passes run as one grid.
/// One group holds every sequence unless its grids would leave no SMs for followers and equal
/// groups of fewer sequences would, in no more rounds of the GPU ([`DeltaRuleWorkspace::plan_groups`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SeqGroup {
    s0: usize,
    s1: usize,
    c0: usize,
    c1: usize,
}

impl SeqGroup {
    fn seqs(&self) -> usize {
        self.s1 - self.s0
    }

    fn chunks(&self) -> usize {
        self.c1 - self.c0
    }
}

/// The most groups a pass is cut into.
const MAX_GROUPS: usize = 4;

/// Fewer idle SMs than this and the followers are not worth their barrier and counts.
const MIN_FOLLOWERS: usize = 8;

impl DeltaRuleWorkspace {
    /// The forward state pass's kernel on `path` for a walk of `n` sequences.
    fn pass_kern(&self, path: ForwardPath, n: usize) -> Result<&StateKern> {
        Ok(match path {
            ForwardPath::WarpSpecialised => self.ws_kern().with_context(|| {
                format!(
                    "delta rule: no warp-specialised forward for {:?}",
                    self.dims
                )
            })?,
            ForwardPath::Fused => self.state_kern(n, PassKind::Fused).0,
            ForwardPath::Split => self.state_kern(n, PassKind::Split).0,
        })
    }

    /// Whether a kernel can follow a state pass of `grid` (see [`Follow`]): not over segments
    /// (their chunks come in another order), not when turned off. The followers, and the count
    /// that makes a chunk ready.
    fn follow_for(&self, grid: (u32, u32, u32)) -> Option<(usize, usize)> {
        let ctas = (grid.0 * grid.1 * grid.2) as usize;
        let free = self.num_sms.saturating_sub(ctas);
        (!self.no_follow
            && self.seg.is_none()
            && self.n_chunks > 0
            && ctas <= self.spread_up_to
            && free >= MIN_FOLLOWERS)
            .then_some((free, grid.2 as usize))
    }

    /// The pass's grid for `n` sequences with `nw` warps a CTA (16 columns of V each).
    fn pass_grid(&self, n: usize, nw: usize) -> (u32, u32, u32) {
        let Dims {
            heads: h, dv: v, ..
        } = self.dims;
        (n as u32, h as u32, (v / (16 * nw)) as u32)
    }

    /// Each group's pass with the kernel that follows it ([`Follow`]), where every group's can
    /// be followed (its kernel has `nw_of(len)` warps a CTA), and not under a stage probe (each
    /// stage is then timed alone); counted in `follows`.
    fn follow_groups(&mut self, nw_of: impl Fn(&Self, usize) -> usize) -> Option<Vec<Follow>> {
        let plan = self.group_follows(nw_of).filter(|_| self.probe.is_none());
        self.follows += usize::from(plan.is_some());
        plan
    }

    /// [`Self::follow_groups`] whatever the probe, uncounted; none before a chunk table.
    fn group_follows(&self, nw_of: impl Fn(&Self, usize) -> usize) -> Option<Vec<Follow>> {
        if self.groups.is_empty() {
            return None;
        }
        self.groups
            .iter()
            .enumerate()
            .map(|(ticket, &group)| {
                let len = group.seqs();
                let (followers, need) = self.follow_for(self.pass_grid(len, nw_of(self, len)))?;
                Some(Follow {
                    followers,
                    need,
                    group,
                    ticket,
                })
            })
            .collect()
    }

    /// The sequence groups of the chunk table `seq_chunk` ([`SeqGroup`]): one, unless (K = 256:
    /// the passes with no warp-specialised form, one CTA per SM) the split and reverse passes over
    /// every sequence leave fewer than [`MIN_FOLLOWERS`] SMs, and the fewest equal groups whose
    /// passes leave them take no more rounds of the GPU than one grid over all (B8·H6·K256: two
    /// groups of 96 CTAs where one grid of 192 takes two rounds).
    fn plan_groups(&self, seq_chunk: &[i32]) -> Vec<SeqGroup> {
        let n = seq_chunk.len() - 1;
        let group = |s0: usize, s1: usize| SeqGroup {
            s0,
            s1,
            c0: seq_chunk[s0] as usize,
            c1: seq_chunk[s1] as usize,
        };
        let ctas = |g: usize| -> [usize; 2] {
            let nws = [
                self.state_kern(g, PassKind::Split).0.nw,
                self.reverse_pass(g).1.nw,
            ];
            nws.map(|nw| {
                let (x, y, z) = self.pass_grid(g, nw);
                (x * y * z) as usize
            })
        };
        let fits = |c: usize| c <= self.spread_up_to && c + MIN_FOLLOWERS <= self.num_sms;
        let planned = || {
            let all = ctas(n);
            let rounds = |c: usize| c.div_ceil(self.num_sms);
            let grouped = self.dims.dk >= 256 && n > 1 && !all.into_iter().all(fits);
            (2..=MAX_GROUPS)
                .map(|k| n.div_ceil(k))
                .filter(|_| grouped)
                .find(|&g| {
                    ctas(g).into_iter().all(fits)
                        && all.into_iter().all(|c| n.div_ceil(g) <= rounds(c))
                })
        };
        let size = match self.groups_forced {
            _ if self.seg.is_some() => None,
            Some(g) => Some(g.max(1)),
            None => planned(),
        };
        match size {
            Some(g) => (0..n)
                .step_by(g)
                .map(|s| group(s, (s + g).min(n)))
                .collect(),
            None => vec![group(0, n)],
        }
    }

    /// Cuts the sequences into groups of `seqs` ([`SeqGroup`]; `None`: as planned), from the
    /// next call on.
    pub fn force_groups(&mut self, seqs: Option<usize>) {
        self.groups_forced = seqs;
        self.cu_cached.clear();
    }

    /// Turns the kernels that follow state passes ([`Follow`]) off, or back on.
    pub fn force_no_follow(&mut self, off: bool) {
        self.no_follow = off;
    }

    /// How many state passes ran with a kernel following them since the last call.
    pub fn take_follows(&mut self) -> usize {
        std::mem::take(&mut self.follows)
    }

    /// Forces the share of the rows that a [`Lead`]'s first launch forms, rounded down (`Some(0.0)`:
    /// no lead; `None`: the plan's choice, or `GDN_DR_LEAD`).
    pub fn force_lead(&mut self, share: Option<f64>) {
        self.lead_forced = share;
    }

    /// How many state passes ran led by their producer ([`Lead`]) since the last call.
    pub fn take_leads(&mut self) -> usize {
        std::mem::take(&mut self.leads)
    }

    /// `lead` where no stage probe is installed (each stage is then timed alone), counted in
    /// `leads`.
    fn take_lead(&mut self, lead: Option<Lead>) -> Option<Lead> {
        let lead = lead.filter(|_| self.probe.is_none());
        self.leads += usize::from(lead.is_some());
        lead
    }

    /// The [`Lead`] of a warp-specialised forward of `ctas` CTAs: where the pass leaves at least
    /// [`MIN_LEAD_SMS`] SMs idle and walks the sequences in one group (the order prep follows),
    /// and prep's first launch would not form every item.
    fn lead_plan(&self, ctas: usize) -> Option<Lead> {
        let free = self.num_sms.saturating_sub(ctas);
        let eligible = self.seg.is_none()
            && self.groups.len() == 1
            && self.n_chunks > 0
            && ctas <= self.spread_up_to
            && free >= MIN_LEAD_SMS;
        if !eligible {
            return None;
        }
        let rows = &self.rows;
        let first_rows = match self.lead_forced {
            Some(share) if share <= 0.0 => return None,
            Some(share) => (share.min(1.0) * rows.len() as f64).floor() as usize,
            None => lead_rows(rows, self.dims.heads, free, PREP_PER_WS_STEP),
        };
        let h = self.dims.heads;
        let lead = Lead {
            first: rows[..first_rows].iter().sum::<usize>() * h,
            items: self.n_chunks * h,
            ctas,
        };
        (lead.first < lead.items).then_some(lead)
    }

    /// The forward's [`Lead`] on `path` over `walked` sequences (the warp-specialised pass's only).
    fn forward_lead(&self, path: ForwardPath, walked: usize) -> Option<Lead> {
        let led = self.kern.prep_led.is_some() && self.kern.state_ws_led.is_some();
        let wk = self
            .ws_kern()
            .filter(|_| led && path == ForwardPath::WarpSpecialised)?;
        let (x, y, z) = self.pass_grid(walked, wk.nw);
        self.lead_plan((x * y * z) as usize)
    }
}

/// `prep` leading the warp-specialised forward where that pass's grid leaves SMs idle. Prep's
/// items are (chunk, head) pairs in the pass's chunk order (every sequence's first chunk, then
/// every second, ...). The first `first` run on every SM before the pass; the rest run on the side
/// stream beside it, on the SMs it leaves, and every prep CTA counts its item once stored. The
/// pass waits for a chunk's count before it loads the chunk (`lead_wait` in delta_rule.cu), a
/// batch of chunks at a time. Unled, prep on every SM and then the pass take the sum of their
/// times; led, the pass starts once the first launch is done and the rest of prep hides beside
/// it. The same kernels and the same bits.
///
/// The rest is queued behind `dr_lead_gate`, which waits until the pass's CTAs have all started:
/// queued at once, prep's CTAs could take every SM first, and the pass, one CTA a whole SM,
/// would then start only after them (H200, session 31, calls 1–2: B2·T8192·H16·K128 forward
/// 0.422 → 0.435 ms without the gate; with it 0.487 → 0.434, in another call).
///
/// Nothing waits on a CTA that cannot run: the pass's `ctas` CTAs (one a SM, at most the SMs
/// less [`MIN_LEAD_SMS`]) start beside the one-thread gate, the gate waits only for them, and
/// prep waits for nothing (`wait_count` traps rather than hangs if a wait were ever not met).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lead {
    first: usize,
    items: usize,
    /// The pass's CTAs.
    ctas: usize,
}

/// Fewer idle SMs than this beside the pass and the rest of the producer would run too slowly
/// to be worth leading.
const MIN_LEAD_SMS: usize = 16;

/// One prep item (a chunk and head) in the warp-specialised forward's pass steps of one SM, at
/// K = 128 (H200, session 28: prep 0.174 ms for 4,096 items on 132 SMs, 5.6 SM·µs each; a state
/// step 2.06 µs).
const PREP_PER_WS_STEP: f64 = 2.7;

/// The rows that a [`Lead`]'s first launch forms, for `rows` (chunks per row), `h` heads and
/// `free` SMs beside the pass, an item costing `ratio` pass steps of one SM: the fewest for
/// which the rest, formed in order on the free SMs as the pass starts, keeps ahead of it. A pass
/// warp waits for LEAD_BATCH chunks at once, chunks c..c + LEAD_BATCH − 1 as it issues c's loads
/// one step before chunk c, at c = 0, LEAD_BATCH, ...
fn lead_rows(rows: &[usize], h: usize, free: usize, ratio: f64) -> usize {
    let n = rows.len();
    let per_row = |r: usize| (rows[r] * h) as f64 * ratio / free.max(1) as f64;
    (0..n)
        .find(|&first| {
            let mut done_at = 0.0;
            let mut r = first;
            (0..n).step_by(LEAD_BATCH).all(|c| {
                let last = (c + LEAD_BATCH).min(n);
                while r < last {
                    done_at += per_row(r);
                    r += 1;
                }
                done_at <= c.saturating_sub(1) as f64
            })
        })
        .unwrap_or(n)
}

/// Chunks a pass waits for together in `lead_wait` (delta_rule.cu's LEAD_BATCH).
const LEAD_BATCH: usize = 8;

/// Per position r in a sequence, the chunks at it (the sequences with more than r chunks).
fn chunks_per_row(seq_chunk: &[i32]) -> Vec<usize> {
    let lens: Vec<usize> = seq_chunk
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .collect();
    let n = lens.iter().copied().max().unwrap_or(0);
    (0..n)
        .map(|r| lens.iter().filter(|&&l| l > r).count())
        .collect()
}

/// The arguments a following kernel takes after its own: the chunk order (forward, or reverse
/// from NC on), the item count, the ticket, the counts, and how many make a chunk ready.
fn follow_args(
    stream: &CudaStream,
    ws: &DeltaRuleWorkspace,
    f: &Follow,
    reverse: bool,
) -> [Arg; 5] {
    let (nc, h) = (ws.n_chunks, ws.dims.heads);
    let items = f.group.chunks() * h;
    let done = ws.done.device_ptr(stream).0;
    let first = f.group.c0 + if reverse { nc } else { 0 };
    let order = ws.order.device_ptr(stream).0 + 4 * first as u64;
    [
        Arg::P(order),
        Arg::I(items as i32),
        Arg::P(done + 4 * (nc * h + f.ticket) as u64),
        Arg::P(done),
        Arg::I(f.need as i32),
    ]
}

/// Queues each group's followers (`follower` on the side stream, after the previous group's) and
/// its pass (`pass`, on the main stream); then, on the main stream, every group's items left, on
/// every SM the passes have left; then the join ([`Follow`]).
fn run_followed(
    gpu: &Gpu,
    ws: &DeltaRuleWorkspace,
    plan: &[Follow],
    follower: impl Fn(&CudaStream, &Follow, usize) -> Result<()>,
    pass: impl Fn(&SeqGroup) -> Result<()>,
) -> Result<()> {
    for f in plan {
        follower(gpu.fork()?, f, f.followers)?;
        pass(&f.group)?;
    }
    for f in plan {
        let ctas = f.group.chunks() * ws.dims.heads;
        follower(&gpu.stream, f, ctas.clamp(1, 2 * ws.num_sms))?;
    }
    gpu.join()
}

/// The address of sequence `s0`'s f32 state in the [N, H, K, V] buffer at `p` (null stays null).
fn seq_state(dims: Dims, p: u64, s0: usize) -> u64 {
    let bytes = (dims.heads * dims.dk * dims.dv * 4) as u64;
    if p == 0 {
        0
    } else {
        p + s0 as u64 * bytes
    }
}

/// Zeroes the counts and the ticket that a [`Follow`] starts from, on the main stream; returns
/// the counts' address for the state pass.
fn zero_counts(gpu: &Gpu, ws: &mut DeltaRuleWorkspace) -> Result<u64> {
    let len = ws.n_chunks * ws.dims.heads + ws.groups.len();
    gpu.stream
        .memset_zeros(&mut ws.done.slice_mut(..len))
        .context("delta rule: zeroing the chunk counts")?;
    Ok(ptr(gpu, &ws.done))
}

/// [`Follow`]'s fwd_o (output `o`), `ctas` CTAs on `stream`.
fn run_fwd_o_follow(
    stream: &CudaStream,
    ws: &DeltaRuleWorkspace,
    inp: &ChunkInputs,
    (o, f): (u64, &Follow),
    ctas: usize,
) -> Result<()> {
    let Dims {
        heads: h, dv: v, ..
    } = ws.dims;
    let mut args = vec![
        Arg::P(inp.q.device_ptr(stream).0),
        Arg::P(inp.k.device_ptr(stream).0),
        Arg::P(ws.gc.device_ptr(stream).0),
        Arg::P(ws.h.device_ptr(stream).0),
        Arg::P(ws.vnew.device_ptr(stream).0),
        Arg::P(ws.ctab.device_ptr(stream).0),
        Arg::I(h as i32),
        Arg::I(inp.group as i32),
        Arg::I(v as i32),
        Arg::F(inp.scale),
        Arg::P(o),
    ];
    args.extend(follow_args(stream, ws, f, false));
    launch_kern_on(
        stream,
        &ws.kern.fwd_o_follow,
        (ctas as u32, 1, 1),
        256,
        &args,
    )
}

/// Chunked forward: writes `o` ([T,H,V] bf16) and, when given, `final_state` ([N,H,K,V] f32)
/// and `save_t`: T per chunk and head, f32 [NC,H,64,64] (at least NC·H·4096 elements; sized by
/// [`saved_t_len`]), for a [`chunk_backward`] on the same inputs (its `saved_t`).
pub fn chunk_forward(
    gpu: &Gpu,
    ws: &mut DeltaRuleWorkspace,
    inp: &ChunkInputs,
    o: &mut CudaViewMut<bf16>,
    final_state: Option<&mut CudaViewMut<f32>>,
    save_t: Option<&mut CudaViewMut<f32>>,
) -> Result<()> {
    let tmat = match save_t {
        Some(st) => {
            let len = st.len();
            Some((ptr_mut(gpu, st), len))
        }
        None => None,
    };
    forward_impl(gpu, ws, inp, o, final_state, tmat, false)
}

/// [`chunk_forward`] that also keeps what its backward would recompute: T, G, the decay records,
/// W, h_c and Ṽ move into `kept` (the workspace takes `kept`'s buffers in exchange, no copy), for
/// a [`chunk_backward_kept`] on the same inputs, which then skips `wu` and the recompute state
/// pass. The forward runs split (the state pass writes h_c and Ṽ; the fused pass keeps them on
/// chip). Costs `kept`'s memory ([`KeptForward::bytes`]) for as long as it is held.
pub fn chunk_forward_keep(
    gpu: &Gpu,
    ws: &mut DeltaRuleWorkspace,
    inp: &ChunkInputs,
    o: &mut CudaViewMut<bf16>,
    final_state: Option<&mut CudaViewMut<f32>>,
    kept: &mut KeptForward,
) -> Result<()> {
    kept.check_fits(ws)?;
    kept.filled = None;
    let len = kept.tmat.len();
    let tmat = ptr_mut(gpu, &mut kept.tmat);
    forward_impl(gpu, ws, inp, o, final_state, Some((tmat, len)), true)?;
    kept.exchange(ws);
    kept.filled = Some(inp.cu_seqlens.to_vec());
    Ok(())
}

/// The forward, T to `tmat` (device pointer and length) when given; `split` forces the split
/// pass.
fn forward_impl(
    gpu: &Gpu,
    ws: &mut DeltaRuleWorkspace,
    inp: &ChunkInputs,
    o: &mut CudaViewMut<bf16>,
    final_state: Option<&mut CudaViewMut<f32>>,
    tmat: Option<(u64, usize)>,
    split: bool,
) -> Result<()> {
    let (t, n) = check_inputs(ws, inp)?;
    let Dims {
        heads: h,
        dk: k,
        dv: v,
    } = ws.dims;
    let what = format!("T={t}, H={h}, K={k}, V={v}, N={n}");
    check_len("o", o.len(), t * h * v, &what)?;
    if let Some(f) = &final_state {
        check_len("final_state", f.len(), n * h * k * v, &what)?;
    }
    ws.set_seqlens(gpu, inp.cu_seqlens, t)?;
    if let Some((_, len)) = tmat {
        check_saved_t(ws, "save_t", len)?;
    }
    let ht = final_state.map_or(0, |f| ptr_mut(gpu, f));
    let o = ptr_mut(gpu, o);
    probe_start(gpu, ws)?;
    // The pass walks the segments of a sequence-parallel plan where there is one.
    let walked = ws.seg.as_ref().map_or(n, |p| p.n_segs);
    let path = if split {
        ForwardPath::Split
    } else {
        ws.forward_pass(walked, t).0
    };
    // P: formed for the warp-specialised forward, and, with the T this forward saves, for a
    // warp-specialised reverse pass, into the saved buffer behind T with its flag; else into
    // the workspace.
    let fwd_ws = path == ForwardPath::WarpSpecialised;
    let saved = tmat;
    let (tmat, (pm, pflag)) = match tmat {
        Some((t, _)) => match saved_p(ws.dims, ws.n_chunks, t) {
            Some((pm, pflag)) => {
                let bwd_ws = ws.reverse_pass(n).0 == BackwardPath::WarpSpecialised;
                (t, (if fwd_ws || bwd_ws { pm } else { 0 }, pflag))
            }
            None => (t, (0, 0)),
        },
        None if fwd_ws => (0, (ptr(gpu, &ws.p), 0)),
        None => (0, (0, 0)),
    };
    let src = TSource::Solve { tmat, pm, pflag };
    let lead = ws.take_lead(ws.forward_lead(path, walked));
    if lead.is_none() {
        run_w_u(gpu, ws, inp, src)?;
        probe_mark(gpu, ws, "fwd: prep")?;
    }
    // With T saved, the segment states go behind it for the backward, where there is room.
    let seg_dst = saved.and_then(|(t, len)| ws.saved_seg_at(t, len));
    if let Some((t, _)) = saved {
        let plan = ws.segments().filter(|_| seg_dst.is_some());
        ws.seg_saved.note(t, plan);
    }
    let (walk, ht) = segment_walk(
        gpu,
        ws,
        inp,
        n,
        ht,
        ("fwd: segment transitions", "fwd: segment starts"),
        seg_dst,
    )?;
    if let Some(lead) = lead {
        return led_pass(gpu, ws, inp, src, lead, walk, (o, ht, pm));
    }
    let out = StateOut::Forward {
        o,
        ht,
        path,
        pm,
        lead: (0, 0),
    };
    run_state_pass(gpu, ws, inp, walk, out)
}

/// The warp-specialised forward led by prep ([`Lead`]): prep's first items, then the pass on the
/// main stream and, on the side stream, once the pass's CTAs have all started (`dr_lead_gate`),
/// prep's other items.
fn led_pass(
    gpu: &Gpu,
    ws: &mut DeltaRuleWorkspace,
    inp: &ChunkInputs,
    src: TSource,
    lead: Lead,
    walk: Walk,
    (o, ht, pm): (u64, u64, u64),
) -> Result<()> {
    let done = zero_counts(gpu, ws)?;
    // The pass's CTAs count themselves in the ticket of the one sequence group (no kernel
    // follows a led pass).
    let started = done + 4 * (ws.n_chunks * ws.dims.heads) as u64;
    let items = |base: usize, count: usize| WuItems::Led { base, count, done };
    run_w_u_on(&gpu.stream, gpu, ws, inp, src, items(0, lead.first))?;
    let side = gpu.fork()?;
    let out = StateOut::Forward {
        o,
        ht,
        path: ForwardPath::WarpSpecialised,
        pm,
        lead: (done, started),
    };
    run_state_pass(gpu, ws, inp, walk, out)?;
    let gate = &ws.kern.lead_gate;
    let need = Arg::I(lead.ctas as i32);
    launch_kern_on(side, gate, (1, 1, 1), 32, &[Arg::P(started), need])?;
    run_w_u_on(
        side,
        gpu,
        ws,
        inp,
        src,
        items(lead.first, lead.items - lead.first),
    )?;
    gpu.join()
}

/// Chunked backward for output gradient `d_o` ([T,H,V] bf16) and final-state gradient `d_final`
/// ([N,H,K,V] f32, zeros when `None`). Recomputes the forward intermediates: from `saved_t`, the
/// T that [`chunk_forward`] saved for these inputs (`save_t`), W, U and G only (`wu`); without
/// it, T too (`prep`, into the workspace, which must then be [`Backward::RecomputeT`]). The
/// workspace must have been created with backward buffers. Both ways give the same bits.
pub fn chunk_backward(
    gpu: &Gpu,
    ws: &mut DeltaRuleWorkspace,
    inp: &ChunkInputs,
    d_o: &CudaView<bf16>,
    d_final: Option<&CudaView<f32>>,
    saved_t: Option<&CudaView<f32>>,
    grads: &mut ChunkGrads,
) -> Result<()> {
    let src = match saved_t {
        Some(st) => Intermediates::SavedT(ptr(gpu, st), st.len()),
        None => Intermediates::RecomputeT,
    };
    backward_impl(gpu, ws, inp, d_o, d_final, src, grads)
}

/// [`chunk_backward`] from the intermediates that [`chunk_forward_keep`] kept for these inputs:
/// no `wu` and no recompute state pass; the same bits as the other two ways. `kept` is left as it
/// was (another backward from it may follow).
pub fn chunk_backward_kept(
    gpu: &Gpu,
    ws: &mut DeltaRuleWorkspace,
    inp: &ChunkInputs,
    d_o: &CudaView<bf16>,
    d_final: Option<&CudaView<f32>>,
    kept: &mut KeptForward,
    grads: &mut ChunkGrads,
) -> Result<()> {
    kept.check_fits(ws)?;
    ensure!(
        kept.filled.as_deref() == Some(inp.cu_seqlens),
        "delta rule: the kept forward intermediates are not those of these inputs ({})",
        match &kept.filled {
            None => "nothing was kept: run chunk_forward_keep first".to_string(),
            Some(cu) => format!(
                "their cu_seqlens differ: kept for {} sequences of {} tokens in all, called \
                 with {} of {}",
                cu.len() - 1,
                cu.last().unwrap_or(&0),
                inp.cu_seqlens.len().saturating_sub(1),
                inp.cu_seqlens.last().unwrap_or(&0)
            ),
        }
    );
    let src = Intermediates::Kept(ptr(gpu, &kept.tmat), kept.tmat.len());
    kept.exchange(ws);
    let r = backward_impl(gpu, ws, inp, d_o, d_final, src, grads);
    kept.exchange(ws);
    r
}

/// Where the backward finds the forward's intermediates.
#[derive(Clone, Copy)]
enum Intermediates {
    /// T at this device pointer (the forward's), of this many elements; W, U, G by `wu`, h_c
    /// and Ṽ recomputed.
    SavedT(u64, usize),
    /// Nothing: T, W, U, G by `prep` into the workspace, h_c and Ṽ recomputed.
    RecomputeT,
    /// T at this device pointer, of this many elements; G, the records, W, h_c and Ṽ already in
    /// the workspace.
    Kept(u64, usize),
}

fn backward_impl(
    gpu: &Gpu,
    ws: &mut DeltaRuleWorkspace,
    inp: &ChunkInputs,
    d_o: &CudaView<bf16>,
    d_final: Option<&CudaView<f32>>,
    src: Intermediates,
    grads: &mut ChunkGrads,
) -> Result<()> {
    let (t, n) = check_inputs(ws, inp)?;
    let Dims {
        heads: h,
        dk: k,
        dv: v,
    } = ws.dims;
    let what = format!("T={t}, H={h}, K={k}, V={v}, N={n}");
    check_len("d_o", d_o.len(), t * h * v, &what)?;
    if let Some(d) = d_final {
        check_len("d_final", d.len(), n * h * k * v, &what)?;
    }
    check_len("dq", grads.dq.len(), t * h * k, &what)?;
    check_len("dk", grads.dk.len(), t * h * k, &what)?;
    check_len("dv", grads.dv.len(), t * h * v, &what)?;
    check_len("dg", grads.dg.len(), t * h, &what)?;
    check_len("dbeta", grads.dbeta.len(), t * h, &what)?;
    check_len("dh0", grads.dh0.len(), n * h * k * v, &what)?;
    ensure!(
        ws.bwd.is_some(),
        "delta rule: the workspace was created without backward buffers"
    );
    ws.set_seqlens(gpu, inp.cu_seqlens, t)?;
    // Order: wu from the saved T, or prep (with T), or nothing (kept) → forward state recompute
    // (h, Ṽ; not when kept) → dṼ_loc → reverse state pass (dh bf16, its ⟨h_c, dh_c⟩ partials,
    // dṼ, dh0; it reads h) → dqk → wy.
    match src {
        Intermediates::SavedT(_, len) => check_saved_t(ws, "saved_t", len)?,
        Intermediates::RecomputeT => ensure!(
            ws.bwd.as_ref().is_some_and(|b| b.tmat.is_some()),
            "delta rule: a backward without the forward's T needs a workspace created with \
             Backward::RecomputeT"
        ),
        Intermediates::Kept(..) => {}
    }
    probe_start(gpu, ws)?;
    // The forward's P for a warp-specialised reverse pass: behind the saved (or kept) T, with
    // the flag that says whether that forward formed it; recomputing T, prep forms it here.
    let rev_ws = ws.reverse_pass(n).0 == BackwardPath::WarpSpecialised;
    let (tmat, pm, pflag) = match src {
        Intermediates::SavedT(tmat, _) => {
            run_w_u(gpu, ws, inp, TSource::Saved { tmat })?;
            probe_mark(gpu, ws, "bwd: wu (saved T)")?;
            let (pm, pflag) = saved_p(ws.dims, ws.n_chunks, tmat).unwrap_or((0, 0));
            (tmat, pm, pflag)
        }
        Intermediates::RecomputeT => {
            let tmat = ptr_mut(gpu, ws.bwd.as_mut().unwrap().tmat.as_mut().unwrap());
            let pm = if rev_ws { ptr(gpu, &ws.p) } else { 0 };
            run_w_u(gpu, ws, inp, TSource::Solve { tmat, pm, pflag: 0 })?;
            probe_mark(gpu, ws, "bwd: prep (+T)")?;
            (tmat, pm, 0)
        }
        Intermediates::Kept(tmat, _) => {
            let (pm, pflag) = saved_p(ws.dims, ws.n_chunks, tmat).unwrap_or((0, 0));
            (tmat, pm, pflag)
        }
    };
    let (pm, pflag) = if rev_ws { (pm, pflag) } else { (0, 0) };
    let nc = ws.n_chunks;
    let (hi, vi) = (h as i32, v as i32);
    let (pq, pk, pv, pb) = (
        ptr(gpu, &inp.q),
        ptr(gpu, &inp.k),
        ptr(gpu, &inp.v),
        ptr(gpu, &inp.beta),
    );
    let pdo = ptr(gpu, d_o);
    let ctab = ptr(gpu, &ws.ctab);
    let gc = ptr(gpu, &ws.gc);
    let rec = ptr(gpu, &ws.rec);
    let w = ptr(gpu, &ws.w);
    let hs = ptr(gpu, &ws.h);
    let vnew = ptr(gpu, &ws.vnew);
    let bwd = ws.bwd.as_mut().unwrap();
    let dvloc = ptr_mut(gpu, &mut bwd.dvloc);
    let dh = ptr_mut(gpu, &mut bwd.dh);
    let sdp = ptr_mut(gpu, &mut bwd.sdp);
    let dvnew = ptr_mut(gpu, &mut bwd.dvnew);
    let dht = d_final.map_or(0, |d| ptr(gpu, d));
    let (dq, dk, dv, dg, dbeta, dh0) = (
        ptr_mut(gpu, &mut grads.dq),
        ptr_mut(gpu, &mut grads.dk),
        ptr_mut(gpu, &mut grads.dv),
        ptr_mut(gpu, &mut grads.dg),
        ptr_mut(gpu, &mut grads.dbeta),
        ptr_mut(gpu, &mut grads.dh0),
    );
    // dṼ_loc needs only Q, K, the gates (wu or prep formed them) and dO. Beside the recompute,
    // on the side stream, its blocks take the SMs the state pass leaves idle (at B4·H6·K256 the
    // pass has 96 CTAs for 132 SMs). With a stage probe it runs alone, after the recompute, so
    // that each stage is timed by itself; it is then still in L2 (mostly its last chunks, which
    // the reverse pass reads first).
    let beside = !rev_ws && ws.probe().is_none() && !matches!(src, Intermediates::Kept(..));
    if beside {
        run_dvloc(gpu.fork()?, ws, inp, (pdo, dvloc))?;
    }
    // The segment states the forward saved behind T, if it did: the recompute walks the
    // segments from them, and the reverse pass reads their A transposed.
    let saved_seg = match src {
        Intermediates::SavedT(t, len) | Intermediates::Kept(t, len) => ws.saved_seg(t, len),
        Intermediates::RecomputeT => None,
    };
    if !matches!(src, Intermediates::Kept(..)) {
        let walk = match (saved_seg, ws.seg.as_ref()) {
            (Some(sv), Some(plan)) => Walk {
                n: plan.n_segs,
                table: ptr(gpu, &plan.seg_chunk),
                h0: sv.x,
            },
            _ => {
                segment_walk(
                    gpu,
                    ws,
                    inp,
                    n,
                    0,
                    ("bwd: segment transitions", "bwd: segment starts"),
                    None,
                )?
                .0
            }
        };
        run_state_pass(gpu, ws, inp, walk, StateOut::Recompute)?;
        probe_mark(gpu, ws, "bwd: state_fwd (recompute)")?;
    }
    let (path, sb) = ws.reverse_pass(n);
    if beside {
        gpu.join()?;
    } else if path == BackwardPath::Plain {
        run_dvloc(&gpu.stream, ws, inp, (pdo, dvloc))?;
        probe_mark(gpu, ws, "bwd: dvloc")?;
    }
    // The forward's transitions: saved behind T, or left in the plan by the recompute over
    // segments (not from kept intermediates).
    let forward_a = match (saved_seg, &ws.seg) {
        (Some(sv), _) => Some(sv.a),
        (None, Some(plan)) if !matches!(src, Intermediates::Kept(..)) => Some(ptr(gpu, &plan.a)),
        _ => None,
    };
    let (walk, dh0) = reverse_walk(gpu, ws, inp, n, (pdo, dvloc), dht, dh0, forward_a)?;
    // One partial per warp: (V / 16) column groups × its K split; followed in groups, every
    // group's kernel must split K alike (dqk + wy reads one layout).
    let npart = (v / 16 * sb.ks) as i32;
    let ks = sb.ks;
    let follow = match path {
        BackwardPath::Plain => ws
            .follow_groups(|ws, len| ws.reverse_pass(len).1.nw)
            .filter(|plan| {
                plan.iter()
                    .all(|f| ws.reverse_pass(f.group.seqs()).1.ks == ks)
            }),
        BackwardPath::WarpSpecialised => None,
    };
    // dqk + wy's own arguments (a following launch adds `follow_args`).
    let dqkwy = [
        Arg::P(pq),
        Arg::P(pk),
        Arg::P(pv),
        Arg::P(pb),
        Arg::P(gc),
        Arg::P(tmat),
        Arg::P(pdo),
        Arg::P(vnew),
        Arg::P(dvnew),
        Arg::P(hs),
        Arg::P(dh),
        Arg::P(sdp),
        Arg::I(npart),
        Arg::P(ctab),
        Arg::I(hi),
        Arg::I(inp.group as i32),
        Arg::I(vi),
        Arg::F(inp.scale),
        Arg::P(dq),
        Arg::P(dk),
        Arg::P(dv),
        Arg::P(dg),
        Arg::P(dbeta),
    ];
    // The reverse pass over sequences s0..s0 + len (a group's, or all), counting into `done`
    // where given.
    let dims = ws.dims;
    let at = |p: u64, s0: usize| seq_state(dims, p, s0);
    let pass = |ws: &DeltaRuleWorkspace, sb: &StateKern, s0: usize, len: usize, done: u64| {
        launch_state(
            gpu,
            sb,
            ws.pass_grid(len, sb.nw),
            ws.spread_up_to,
            &[
                Arg::P(pq),
                Arg::P(pk),
                Arg::P(w),
                Arg::P(gc),
                Arg::P(rec),
                Arg::P(pdo),
                Arg::P(dvloc),
                Arg::P(hs),
                Arg::P(ctab),
                Arg::P(walk.table + 4 * s0 as u64),
                Arg::P(at(walk.h0, s0)),
                Arg::I(hi),
                Arg::I(inp.group as i32),
                Arg::I(vi),
                Arg::F(inp.scale),
                Arg::P(dh),
                Arg::P(sdp),
                Arg::P(dvnew),
                Arg::P(at(dh0, s0)),
                Arg::P(pm),
                Arg::P(pflag),
                Arg::P(done),
            ],
        )
    };
    if let Some(plan) = follow {
        let done = zero_counts(gpu, ws)?;
        let ws = &*ws;
        return run_followed(
            gpu,
            ws,
            &plan,
            |stream, f, ctas| run_dqkwy_follow(stream, ws, &dqkwy, f, ctas),
            |g| {
                let len = g.seqs();
                pass(ws, ws.reverse_pass(len).1, g.s0, len, done)
            },
        );
    }
    pass(ws, ws.reverse_pass(n).1, 0, walk.n, 0)?;
    probe_mark(
        gpu,
        ws,
        match path {
            BackwardPath::Plain => "bwd: state_bwd",
            BackwardPath::WarpSpecialised => "bwd: state_bwd_ws (+ dvloc)",
        },
    )?;
    if nc == 0 {
        return Ok(());
    }
    let kern = &ws.kern;
    launch_kern(
        gpu,
        &kern.dqkwy,
        (nc as u32, h as u32, 1),
        kern.bwd_threads,
        &dqkwy,
    )?;
    probe_mark(gpu, ws, "bwd: dqk + wy")
}

/// [`Follow`]'s dqk + wy (its own arguments `own`), `ctas` CTAs on `stream`.
fn run_dqkwy_follow(
    stream: &CudaStream,
    ws: &DeltaRuleWorkspace,
    own: &[Arg],
    f: &Follow,
    ctas: usize,
) -> Result<()> {
    let mut args = own.to_vec();
    args.extend(follow_args(stream, ws, f, true));
    let k = &ws.kern;
    launch_kern_on(
        stream,
        &k.dqkwy_follow,
        (ctas as u32, 1, 1),
        k.bwd_threads,
        &args,
    )
}

/// Inputs of one decode step (one token per sequence), all raw: the kernel L2-normalises q and k
/// (eps 1e-6), computes β = beta_scale·sigmoid(b) and g = −exp(A_log)·softplus(a + dt_bias).
pub struct DecodeInputs<'a> {
    /// [N, H / group, K] bf16, not normalised.
    pub q: CudaView<'a, bf16>,
    /// [N, H / group, K] bf16, not normalised.
    pub k: CudaView<'a, bf16>,
    /// [N, H, V] bf16.
    pub v: CudaView<'a, bf16>,
    /// Raw decay input a, [N, H] f32.
    pub a: CudaView<'a, f32>,
    /// Raw write-strength logit b, [N, H] f32.
    pub b: CudaView<'a, f32>,
    /// [H] f32.
    pub a_log: CudaView<'a, f32>,
    /// [H] f32.
    pub dt_bias: CudaView<'a, f32>,
    /// Read-out scale (K^{-1/2} in the model).
    pub scale: f32,
    /// β's scale: 1, or 2 under allow_neg_eigval (`nn::beta_scale`).
    pub beta_scale: f32,
    /// Value heads per q/k head (GVA: value head h reads q/k head h / group); 1 without GVA.
    pub group: usize,
}

/// The decode kernels built in `delta_rule.cu`: (K, V, BV, threads), each `dr_decode_k{K}_v{V}_bv{BV}_t{threads}`.
/// Per (K, V) they are listed in the default order of preference (see [`DecodeStep::new`]).
pub const DECODE_CFGS: &[(usize, usize, usize, usize)] = &[
    (64, 64, 64, 128),
    (64, 64, 16, 64),
    (64, 128, 64, 128),
    (64, 128, 128, 256),
    (64, 128, 16, 64),
    (128, 128, 64, 256),
    (128, 128, 128, 512),
    (128, 128, 128, 256),
    (128, 128, 64, 128),
    (128, 128, 32, 128),
    (128, 128, 16, 128),
    (128, 256, 64, 256),
    (128, 256, 16, 128),
    (256, 256, 64, 512),
    (256, 256, 64, 256),
    (256, 256, 16, 128),
    (256, 512, 64, 512),
    (256, 512, 64, 256),
    (256, 512, 128, 512),
    (256, 512, 32, 256),
    (256, 512, 16, 128),
];

/// The decode kernel variants built for (K, V), as (BV, threads), in order of preference.
pub fn decode_configs(dk: usize, dv: usize) -> Vec<(usize, usize)> {
    DECODE_CFGS
        .iter()
        .filter(|c| c.0 == dk && c.1 == dv)
        .map(|c| (c.2, c.3))
        .collect()
}

/// The decode kernel for one (dims, batch): one block per (V-slice of BV columns, head,
/// sequence). By default the first variant of [`DECODE_CFGS`] (for this K, V) whose grid has at
/// least two blocks per SM, else the last (narrowest) one; `GDN_DECODE_CFG=BVxTHREADS` (e.g.
/// `64x256`) picks one explicitly, for experiments.
pub struct DecodeStep {
    dims: Dims,
    n_seqs: usize,
    bv: usize,
    threads: usize,
    f: CudaFunction,
    name: String,
}

impl DecodeStep {
    pub fn new(gpu: &Gpu, dims: Dims, n_seqs: usize) -> Result<Self> {
        check_dims(dims)?;
        ensure!(n_seqs > 0, "delta rule decode: n_seqs must be > 0");
        let cfgs = decode_configs(dims.dk, dims.dv);
        ensure!(
            !cfgs.is_empty(),
            "delta rule decode: no kernel built for K={}, V={}",
            dims.dk,
            dims.dv
        );
        if let Ok(want) = std::env::var("GDN_DECODE_CFG") {
            let parsed = want
                .split_once('x')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
            let (bv, threads) = parsed.with_context(|| {
                format!("GDN_DECODE_CFG={want:?}: expected BVxTHREADS, e.g. 64x256")
            })?;
            return Self::with_config(gpu, dims, n_seqs, bv, threads);
        }
        let sms = device_attr(
            gpu,
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )?;
        let blocks = |bv: usize| n_seqs * dims.heads * dims.dv / bv;
        let (bv, threads) = cfgs
            .iter()
            .copied()
            .find(|&(bv, _)| blocks(bv) >= 2 * sms)
            .unwrap_or(cfgs[cfgs.len() - 1]);
        Self::with_config(gpu, dims, n_seqs, bv, threads)
    }

    /// A given variant (BV columns of V per block, threads per block): one of
    /// [`decode_configs`]`(K, V)`, else an error that lists them.
    pub fn with_config(
        gpu: &Gpu,
        dims: Dims,
        n_seqs: usize,
        bv: usize,
        threads: usize,
    ) -> Result<Self> {
        check_dims(dims)?;
        ensure!(n_seqs > 0, "delta rule decode: n_seqs must be > 0");
        ensure!(
            n_seqs <= 65535 && dims.heads <= 65535,
            "delta rule decode: at most 65535 sequences and 65535 heads per call (got {n_seqs}, {})",
            dims.heads
        );
        let cfgs = decode_configs(dims.dk, dims.dv);
        ensure!(
            cfgs.contains(&(bv, threads)),
            "delta rule decode: no kernel with BV={bv}, {threads} threads for K={}, V={} (built: {})",
            dims.dk,
            dims.dv,
            cfgs.iter()
                .map(|(b, t)| format!("{b}x{t}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let name = format!("dr_decode_k{}_v{}_bv{bv}_t{threads}", dims.dk, dims.dv);
        let f = gpu.function(source(dims.dk), &name)?;
        Ok(DecodeStep {
            dims,
            n_seqs,
            bv,
            threads,
            f,
            name,
        })
    }

    /// The kernel's name (it encodes K, V, BV and the block size).
    pub fn kernel_name(&self) -> &str {
        &self.name
    }

    /// Advances `state` ([N,H,K,V] f32, in place) by one token and writes `o` ([N,H,V] bf16).
    /// The kernel reads q, k and the state with 16-byte accesses and v, o with 8-byte ones:
    /// their device addresses must be aligned to that (views at odd offsets are refused).
    pub fn run(
        &self,
        gpu: &Gpu,
        inp: &DecodeInputs,
        state: &mut CudaViewMut<f32>,
        o: &mut CudaViewMut<bf16>,
    ) -> Result<()> {
        let Dims {
            heads: h,
            dk: k,
            dv: v,
        } = self.dims;
        let n = self.n_seqs;
        let g = inp.group;
        let what = format!("decode N={n}, H={h}, K={k}, V={v}, group={g}");
        ensure!(
            g >= 1 && h.is_multiple_of(g),
            "delta rule decode: group {g} must divide the {h} value heads ({what})"
        );
        check_len("q", inp.q.len(), n * (h / g) * k, &what)?;
        check_len("k", inp.k.len(), n * (h / g) * k, &what)?;
        check_len("v", inp.v.len(), n * h * v, &what)?;
        check_len("a", inp.a.len(), n * h, &what)?;
        check_len("b", inp.b.len(), n * h, &what)?;
        check_len("a_log", inp.a_log.len(), h, &what)?;
        check_len("dt_bias", inp.dt_bias.len(), h, &what)?;
        check_len("state", state.len(), n * h * k * v, &what)?;
        check_len("o", o.len(), n * h * v, &what)?;
        let (pq, pk, pv) = (ptr(gpu, &inp.q), ptr(gpu, &inp.k), ptr(gpu, &inp.v));
        let ps = ptr_mut(gpu, state);
        let po = ptr_mut(gpu, o);
        for (name, p, align) in [
            ("q", pq, 16),
            ("k", pk, 16),
            ("state", ps, 16),
            ("v", pv, 8),
            ("o", po, 8),
        ] {
            ensure!(
                p % align == 0,
                "delta rule decode: `{name}` must start at a {align}-byte aligned device address \
                 (got {p:#x}; {what})"
            );
        }
        launch(
            gpu,
            &self.f,
            &self.name,
            ((v / self.bv) as u32, h as u32, n as u32),
            self.threads as u32,
            0,
            &[
                Arg::P(pq),
                Arg::P(pk),
                Arg::P(pv),
                Arg::P(ptr(gpu, &inp.a)),
                Arg::P(ptr(gpu, &inp.b)),
                Arg::P(ptr(gpu, &inp.a_log)),
                Arg::P(ptr(gpu, &inp.dt_bias)),
                Arg::P(ps),
                Arg::P(po),
                Arg::I(h as i32),
                Arg::F(inp.scale),
                Arg::F(inp.beta_scale),
                Arg::I(g as i32),
            ],
        )
    }
}

/// One decode step without a cached [`DecodeStep`] (looks the kernel up each call).
pub fn decode_step(
    gpu: &Gpu,
    dims: Dims,
    n_seqs: usize,
    inp: &DecodeInputs,
    state: &mut CudaViewMut<f32>,
    o: &mut CudaViewMut<bf16>,
) -> Result<()> {
    DecodeStep::new(gpu, dims, n_seqs)?.run(gpu, inp, state, o)
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    /// The host's table of decode variants and the kernels `delta_rule.cu` instantiates agree,
    /// and every supported (K, V) has at least one.
    #[test]
    fn decode_table_matches_the_source() {
        let code = SOURCES[0].code;
        let built = code
            .lines()
            .filter(|l| l.starts_with("DR_DECODE_KERNEL("))
            .count();
        assert_eq!(built, DECODE_CFGS.len());
        for &(k, v, bv, t) in DECODE_CFGS {
            let line = format!("DR_DECODE_KERNEL({k}, {v}, {bv}, {t},");
            assert!(code.contains(&line), "{line} missing from delta_rule.cu");
            assert!(v % bv == 0 && (16..=128).contains(&bv), "{line}");
            // RPT = K·BV / (4·threads) rows per thread: even and at least 2 (the kernel's
            // static_assert), so a bad entry fails here before NVRTC.
            let rpt = k * bv / (4 * t);
            assert!(rpt >= 2 && rpt % 2 == 0 && rpt * 4 * t == k * bv, "{line}");
        }
        for k in [64, 128, 256] {
            for v in [k, 2 * k] {
                assert!(
                    !decode_configs(k, v).is_empty(),
                    "no decode kernel for K={k} V={v}"
                );
            }
        }
    }
}

#[cfg(test)]
mod chunk_table_tests {
    use super::{chunk_table, chunks_per_row, lead_rows, reverse_step_order, step_order, CHUNK};

    #[test]
    fn chunks_per_row_counts_the_sequences_that_reach_each_position() {
        assert_eq!(chunks_per_row(&[0, 3, 3, 4, 6]), vec![3, 2, 1]);
        assert_eq!(chunks_per_row(&[0, 0]), Vec::<usize>::new());
    }

    #[test]
    fn a_lead_forms_first_what_the_rest_cannot_keep_ahead_of() {
        // One chunk a row, a row costing `ratio` steps: the pass waits for rows 0..8 before its
        // first step and for 8..16 before step 7, so the first launch takes 0..8 and whatever
        // the rest cannot form in 7 steps.
        assert_eq!(lead_rows(&[1; 16], 1, 1, 1.0), 9);
        assert_eq!(lead_rows(&[1; 16], 1, 1, 0.5), 8);
        assert_eq!(lead_rows(&[1; 16], 1, 1, 10.0), 16);
        // More SMs beside the pass make the rows cheaper: 4 SMs at 2 steps an item, 2 items a
        // row, is one step a row.
        assert_eq!(lead_rows(&[2; 16], 1, 4, 2.0), 9);
    }

    #[test]
    fn chunks_in_the_order_the_pass_forms_them() {
        // Sequences of 3, 0, 1 and 2 chunks: first chunks, then second ones, then the third.
        assert_eq!(step_order(&[0, 3, 3, 4, 6]), vec![0, 3, 4, 1, 5, 2]);
        assert_eq!(step_order(&[0, 0]), Vec::<i32>::new());
        // The reverse pass: last chunks first.
        assert_eq!(reverse_step_order(&[0, 3, 3, 4, 6]), vec![2, 3, 5, 1, 4, 0]);
    }

    /// Every chunk's row is what `SeqChunks` (delta_rule.cu) forms from its sequence's first and
    /// last rows: start = bos + 64 (c − cs), len = min(64, eos − start); empty sequences have no
    /// chunks.
    #[test]
    fn rows_follow_from_each_sequences_bounds() {
        let cus: [&[usize]; 4] = [
            &[0, 150],
            &[0, 1, 64, 128, 193, 393, 393, 523],
            &[0, 0, 0],
            &[0, 4096, 8192],
        ];
        for cu in cus {
            let (ctab, seq_chunk) = chunk_table(cu);
            assert_eq!(seq_chunk.len(), cu.len());
            assert_eq!(*seq_chunk.last().unwrap() as usize * 2, ctab.len());
            for (s, w) in cu.windows(2).enumerate() {
                let (cs, ce) = (seq_chunk[s] as usize, seq_chunk[s + 1] as usize);
                assert_eq!(
                    ce - cs,
                    (w[1] - w[0]).div_ceil(CHUNK),
                    "{cu:?} sequence {s}"
                );
                if cs == ce {
                    continue;
                }
                let bos = ctab[2 * cs] as usize;
                let eos = (ctab[2 * (ce - 1)] + ctab[2 * (ce - 1) + 1]) as usize;
                assert_eq!((bos, eos), (w[0], w[1]));
                for c in cs..ce {
                    let start = bos + CHUNK * (c - cs);
                    let len = CHUNK.min(eos - start);
                    assert_eq!(
                        (ctab[2 * c] as usize, ctab[2 * c + 1] as usize),
                        (start, len),
                        "{cu:?} chunk {c}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod state_cost_tests {
    use super::{
        bwd_ws_pays, fwd_o_cost, saved_seg_room, seg_len, seg_tables, state_step_cost, ws_fwd_pays,
        PassKind, CHUNK, SEG_SAVE_SMS,
    };
    use super::{saved_seg_offsets, saved_t_len, SegStatesSaved};
    use crate::ops::delta_rule::Dims;

    /// The cheapest (warps, cost per step) among (warps, CTAs per SM) for the cost model, ties
    /// to the wider, as `pick_state_nw`.
    fn best(
        vars: &[(usize, usize)],
        seq_heads: usize,
        (k, v): (usize, usize),
        pass: PassKind,
    ) -> (usize, f64) {
        vars.iter()
            .rev()
            .filter(|&&(nw, _)| v % (16 * nw) == 0)
            .map(|&(nw, per_sm)| {
                let cost = state_step_cost((nw, 1), per_sm, seq_heads * v, k, pass, 132);
                (nw, cost)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap()
    }

    /// CTAs per SM of each warp count as the driver reports them on H200 for the shared memory
    /// and registers of each variant.
    const SPLIT_K128: [(usize, usize); 4] = [(1, 2), (2, 2), (4, 2), (8, 1)];
    const FUSED_K128: [(usize, usize); 4] = [(1, 2), (2, 2), (4, 2), (8, 1)];
    const ONE_PER_SM: [(usize, usize); 4] = [(1, 1), (2, 1), (4, 1), (8, 1)];

    /// The model picks the variant that measured fastest on H200 (session 4, calls 4 and 5:
    /// every variant forced with GDN_DR_SF_NW on the bench shapes).
    #[test]
    fn state_pass_cost_model_picks_the_measured_best() {
        // Split, B8·T2048·H16: nw 8 0.161 ms, 4 0.169, 2 0.264, 1 0.515.
        assert_eq!(best(&SPLIT_K128, 128, (128, 128), PassKind::Split).0, 8);
        // B4·T4096: 4 0.223, 2 0.262, 8 0.313. B2·T8192: 4 0.442, 2 0.495, 8 0.635.
        // B1·T16384: 4 0.880, 2 0.988, 1 1.285, 8 1.297.
        for nh in [64, 32, 16] {
            assert_eq!(
                best(&SPLIT_K128, nh, (128, 128), PassKind::Split).0,
                4,
                "N·H = {nh}"
            );
        }
        // B4·T4096·H6·K256·V512: 8 0.552, 4 0.713, 2 1.285.
        assert_eq!(best(&ONE_PER_SM, 24, (256, 512), PassKind::Split).0, 8);
        // Fused: B8·T2048 8 0.317, 4 0.330; K256: 8 0.876, 4 1.595.
        assert_eq!(best(&FUSED_K128, 128, (128, 128), PassKind::Fused).0, 8);
        assert_eq!(best(&ONE_PER_SM, 24, (256, 512), PassKind::Fused).0, 8);
        // Backward (call 6): B8·T2048 8 0.233, 4 0.266; B4·T4096 4 0.408, 8 0.450; B2·T8192
        // 4 0.805, 8 0.894; B1·T16384 4 1.601, 8 1.771; K256 8 0.753, 4 1.339.
        let bwd_k128 = [(1, 3), (2, 3), (4, 2), (8, 2)];
        assert_eq!(best(&bwd_k128, 128, (128, 128), PassKind::Bwd).0, 8);
        for nh in [64, 32, 16] {
            assert_eq!(
                best(&bwd_k128, nh, (128, 128), PassKind::Bwd).0,
                4,
                "N·H = {nh}"
            );
        }
        let bwd_k256 = [(1, 2), (2, 1), (4, 1), (8, 1)];
        assert_eq!(best(&bwd_k256, 24, (256, 512), PassKind::Bwd).0, 8);
        // B8·T4096·H6·K256 (session 19, call 9): 8 1.406, 4 1.552–1.562.
        assert_eq!(best(&bwd_k256, 48, (256, 512), PassKind::Bwd).0, 8);
    }

    /// The cheapest (nw, ks) among (nw, ks, CTAs per SM), ties as `pick_state_nw`.
    fn best_ks(
        vars: &[(usize, usize, usize)],
        seq_heads: usize,
        (k, v): (usize, usize),
        pass: PassKind,
    ) -> (usize, usize) {
        let cost = |&(nw, ks, per_sm): &(usize, usize, usize)| {
            state_step_cost((nw, ks), per_sm, seq_heads * v, k, pass, 132)
        };
        let b = vars
            .iter()
            .filter(|&&(nw, ks, _)| v % (16 * nw) == 0 && pass.ks_factor(ks).is_some())
            .min_by(|a, b| {
                cost(a)
                    .total_cmp(&cost(b))
                    .then(a.1.cmp(&b.1))
                    .then(b.0.cmp(&a.0))
            })
            .unwrap();
        (b.0, b.1)
    }

    /// (column groups, K split, CTAs per SM on H200 from the ptxas registers and the shared
    /// memory of each variant, docs/perf.md "K-split state pass") at K = 128.
    const SPLIT_KS_K128: [(usize, usize, usize); 8] = [
        (1, 1, 2),
        (2, 1, 2),
        (4, 1, 2),
        (8, 1, 1),
        (1, 2, 2),
        (1, 4, 2),
        (2, 2, 2),
        (2, 4, 2),
    ];
    const BWD_KS_K128: [(usize, usize, usize); 8] = [
        (1, 1, 3),
        (2, 1, 3),
        (4, 1, 2),
        (8, 1, 2),
        (1, 2, 3),
        (1, 4, 2),
        (2, 2, 2),
        (2, 4, 1),
    ];

    /// Session 5, call 5 (every pass with KS = 1, 2, 4 on the bench shapes): the K split wins
    /// where the unsplit passes leave SMs idle — B1·T16384 (split 0.891 / 0.798 / 0.670 ms,
    /// reverse 1.363 / 1.028 / 0.892) and B2·T8192 (split 0.445 / 0.397 / 0.398, reverse 0.671 /
    /// 0.508 / 0.505) —
    /// and loses at B4·T4096 (split 0.225 / 0.264 / 0.323, reverse 0.340 / 0.356 / 0.503) and
    /// B8·T2048.
    #[test]
    fn k_split_where_the_grid_leaves_sms_idle() {
        for (vars, pass) in [
            (&SPLIT_KS_K128, PassKind::Split),
            (&BWD_KS_K128, PassKind::Bwd),
        ] {
            assert_eq!(best_ks(vars, 16, (128, 128), pass).1, 4, "{pass:?} B1");
            assert!(best_ks(vars, 32, (128, 128), pass).1 > 1, "{pass:?} B2");
            assert_eq!(best_ks(vars, 64, (128, 128), pass).1, 1, "{pass:?} B4");
            assert_eq!(best_ks(vars, 128, (128, 128), pass).1, 1, "{pass:?} B8");
        }
    }

    /// The warp-specialised reverse pass where it measured faster (see [`bwd_ws_pays`]): at K = 128
    /// B4·T4096, not B8·T2048 (two waves) nor B2·T8192 and B1·T16384 (the model splits K).
    #[test]
    fn warp_specialised_reverse_pass_where_it_measured_faster() {
        let ws = |b: usize, h: usize, v: usize| {
            let (_, ks) = best_ks(&BWD_KS_K128, b * h, (128, v), PassKind::Bwd);
            bwd_ws_pays(ks, b * h * v / 64, 132)
        };
        assert!(ws(4, 16, 128));
        assert!(!ws(8, 16, 128));
        assert!(!ws(2, 16, 128));
        assert!(!ws(1, 16, 128));
    }

    /// Fused or split forward as measured. With fwd_o v4 (session 4, call 5 against call 4,
    /// whole forward) the fused pass won at B8·T2048 and K256/V512; with fwd_o v5 (session 6,
    /// call 8, graph-replayed forward, split against fused) split wins everywhere: B8·T2048
    /// 0.489 against 0.507 ms, K256/V512 0.859 against 1.026, and B4·T4096 (0.713 against 0.852
    /// with v4), B2·T8192 (0.931 against 1.430), B1·T16384 (1.372 against 2.659) by more.
    #[test]
    fn forward_pass_is_the_one_measured_faster() {
        let fused = |b: usize, t: usize, h: usize, (k, v): (usize, usize)| {
            let steps = t.div_ceil(64) as f64;
            let (fv, sv) = if k == 128 {
                (&FUSED_K128[..], &SPLIT_K128[..])
            } else {
                (&ONE_PER_SM[..], &ONE_PER_SM[..])
            };
            let f = best(fv, b * h, (k, v), PassKind::Fused).1 * steps;
            let s = best(sv, b * h, (k, v), PassKind::Split).1 * steps + fwd_o_cost(b * t, h, k, v);
            f <= s
        };
        assert!(!fused(8, 2048, 16, (128, 128)));
        assert!(!fused(4, 4096, 6, (256, 512)));
        assert!(!fused(4, 4096, 16, (128, 128)));
        assert!(!fused(2, 8192, 16, (128, 128)));
        assert!(!fused(1, 16384, 16, (128, 128)));
    }

    #[test]
    fn segment_tables_cut_each_sequence() {
        // Sequences of 5, 0, 1 and 7 chunks, cut every 2 (the empty one keeps an empty segment).
        let (seg_chunk, seq_seg) = seg_tables(&[0, 5, 5, 6, 13], 2);
        assert_eq!(seg_chunk, vec![0, 2, 4, 5, 5, 6, 8, 10, 12, 13]);
        assert_eq!(seq_seg, vec![0, 3, 4, 5, 9]);
    }

    #[test]
    fn sequence_parallel_only_for_few_long_sequences() {
        let d = |heads, dk, dv| Dims { heads, dk, dv };
        // B1·T16384·H16·K128: 32 CTAs of the warp-specialised forward, 256 chunks → 4 segments
        // (128 such CTAs; 256 of the transition pass).
        assert_eq!(seg_len(&[256], d(16, 128, 128), 132), Some(64));
        // B2·T8192 has 64 CTAs already: none.
        assert_eq!(seg_len(&[128, 128], d(16, 128, 128), 132), None);
        // K64·V64: 16 CTAs → 8 segments.
        assert_eq!(seg_len(&[256], d(16, 64, 64), 132), Some(32));
        // Short sequences: no segment shorter than SEG_MIN_CHUNKS.
        assert_eq!(seg_len(&[20], d(2, 64, 64), 132), Some(16));
        assert_eq!(seg_len(&[16, 3], d(2, 64, 64), 132), None);
    }

    /// X and A sit behind T and P, 16-byte aligned, without overlap, and the room `saved_t_len`
    /// reserves for a plan ends at or after their end.
    #[test]
    fn segment_states_sit_behind_t_and_p() {
        let dims = Dims {
            heads: 16,
            dk: 128,
            dv: 128,
        };
        // B1·T16384: 257 chunks, 4 segments.
        let (x0, a0, end) = saved_seg_offsets(dims, 257, 4);
        let t_and_p = 257 * 16 * 4096 * 3 / 2 + 1;
        assert!(x0 >= t_and_p && x0 % 4 == 0 && x0 - t_and_p < 4);
        assert_eq!(a0 - x0, 4 * 16 * 128 * 128);
        assert_eq!(end - a0, 4 * 16 * 128 * 128);
        assert!(end <= saved_t_len(dims, 16384, 1));
    }

    /// A backward finds the states only in the buffer a forward noted, under that forward's plan;
    /// a later forward into the same buffer without them (or under another plan) replaces the
    /// note.
    #[test]
    fn segment_states_are_found_only_under_their_plan() {
        let mut saved = SegStatesSaved::default();
        saved.note(0x1000, Some((4, 64)));
        saved.note(0x2000, Some((4, 64)));
        assert!(saved.holds(0x1000, (4, 64)));
        assert!(!saved.holds(0x1000, (8, 32)));
        assert!(!saved.holds(0x3000, (4, 64)));
        saved.note(0x1000, None);
        assert!(!saved.holds(0x1000, (4, 64)));
        assert!(saved.holds(0x2000, (4, 64)));
        saved.note(0x2000, Some((257, 1)));
        assert!(!saved.holds(0x2000, (4, 64)));
        assert!(saved.holds(0x2000, (257, 1)));
    }

    /// The room a saved-T buffer reserves holds the segment states of every plan `seg_len` makes
    /// on devices of up to SEG_SAVE_SMS SMs for at most the sequences it was sized for, and is
    /// none where those are too many for any plan (FLA's 1.3B shape).
    #[test]
    fn saved_room_holds_every_plan_it_serves() {
        let d = |heads, dk, dv| Dims { heads, dk, dv };
        assert_eq!(saved_seg_room(d(6, 256, 512), 512 + 8, 8), 0);
        assert!(saved_seg_room(d(16, 128, 128), 256 + 1, 1) > 0);
        assert_eq!(saved_seg_room(d(16, 128, 128), 256 + 2, 2), 0);
        for dims in [
            d(16, 128, 128),
            d(16, 64, 64),
            d(2, 64, 64),
            d(4, 128, 256),
            d(1, 256, 512),
        ] {
            for seqs in 1..=4 {
                for tokens in [1000usize, 4096, 16384, 65536] {
                    let chunks = tokens.div_ceil(CHUNK) + seqs;
                    let room = saved_seg_room(dims, chunks, seqs);
                    // Sized for more sequences than a plan allows: none kept (a call with fewer
                    // forms its segment states again).
                    if room == 0 {
                        continue;
                    }
                    for sms in [78, 108, 132, 148, SEG_SAVE_SMS] {
                        for n in 1..=seqs {
                            // n sequences: one long, the rest short (the most segments).
                            let mut lens = vec![1; n];
                            lens[0] = tokens.div_ceil(CHUNK) - (n - 1);
                            let Some(len) = seg_len(&lens, dims, sms) else {
                                continue;
                            };
                            let segs: usize = lens.iter().map(|&c| c.div_ceil(len).max(1)).sum();
                            let need = 4 + segs * dims.heads * dims.dk * (dims.dk + dims.dv);
                            assert!(
                                need <= room,
                                "{dims:?} seqs {seqs} tokens {tokens} sms {sms} n {n}: \
                                 {segs} segments need {need}, room {room}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The warp-specialised forward where it measured faster than the split pass and `fwd_o`
    /// (`ws_fwd_pays` has the figures), and the split one where that did.
    #[test]
    fn warp_specialised_where_it_measured_faster() {
        let ws = |b: usize, h: usize, (k, v): (usize, usize)| ws_fwd_pays(b * h * v / 64, k, 132);
        assert!(ws(8, 16, (128, 128)));
        assert!(ws(4, 16, (128, 128)));
        assert!(ws(2, 16, (128, 128)));
        assert!(ws(16, 16, (128, 128)));
        assert!(ws(32, 16, (128, 128)));
        assert!(ws(4, 16, (64, 64)));
        assert!(ws(4, 16, (64, 128)));
        assert!(ws(2, 16, (64, 64)));
        assert!(ws(1, 16, (64, 128)));
        assert!(!ws(1, 16, (128, 128)));
    }
}
