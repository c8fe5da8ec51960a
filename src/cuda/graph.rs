//! CUDA graphs: work queued on `gpu.stream` captured once and replayed with one launch.
//!
//! What can be captured (design point 5): kernels, cuBLASLt matmuls (their workspace is
//! preallocated) and device memsets, on the non-default stream [`Gpu::open`] creates with
//! cudarc's event tracking off. Not inside a capture: host↔device copies from pageable memory,
//! synchronisation, allocation, and host branching on device values. The first call of a shape
//! must run eagerly (NVRTC compiles the modules, cuBLASLt picks its algorithms, the delta rule
//! uploads its chunk table); the captured call then queues kernels only. A replay reads and
//! writes the same device addresses as the captured call, with the same scalar arguments.

use super::Gpu;
use anyhow::{anyhow, Context, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
pub use cudarc::driver::CudaGraph;

/// Captures what `f` queues on `gpu.stream` (nothing runs) and instantiates it; returns the graph
/// and `f`'s value. The capture is always ended, also when `f` fails (then its error is returned).
pub fn capture<R>(gpu: &Gpu, f: impl FnOnce() -> Result<R>) -> Result<(CudaGraph, R)> {
    gpu.stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| anyhow!("begin_capture: {e:?}"))?;
    let r = f();
    let g = gpu
        .stream
        .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY)
        .map_err(|e| anyhow!("end_capture: {e:?}"));
    let r = r.context("the captured call failed")?;
    let g = g?.ok_or_else(|| anyhow!("the capture produced no graph"))?;
    Ok((g, r))
}

/// Captures `f` and uploads the graph's resources, so that the first [`launch`] costs no setup.
pub fn capture_uploaded<R>(gpu: &Gpu, f: impl FnOnce() -> Result<R>) -> Result<(CudaGraph, R)> {
    let (g, r) = capture(gpu, f)?;
    g.upload().map_err(|e| anyhow!("graph upload: {e:?}"))?;
    Ok((g, r))
}

/// Queues one replay of `g` on the stream it was captured on.
pub fn launch(g: &CudaGraph) -> Result<()> {
    g.launch().map_err(|e| anyhow!("graph launch: {e:?}"))
}
