//! The CUDA device (part of the tensor layer): a context, its stream (and a side stream for work
//! that runs beside it), kernels compiled from `.cu` sources by NVRTC for the device's
//! architecture and cached, and device buffers.
//!
//! Nothing CUDA is linked at build time (cudarc's dynamic loading): the same binary runs
//! everywhere and finds the driver, NVRTC and cuBLASLt at run time where they exist.

/// Launches `$kernel` of `$src` on the GPU's stream with `$cfg` and the arguments in order.
macro_rules! launch {
    ($gpu:expr, $src:expr, $kernel:literal, $cfg:expr; $($arg:ident),+ $(,)?) => {{
        let func = $gpu.function(&$src, $kernel)?;
        let mut builder = $gpu.stream.launch_builder(&func);
        $( builder.arg(&$arg); )+
        // SAFETY: the arguments match the kernel's parameter list in order and type, and every
        // buffer was checked against the sizes the kernel is given.
        unsafe { builder.launch($cfg) }
            .map_err(|e| anyhow::anyhow!("launching CUDA kernel `{}` failed: {e:?}", $kernel))?;
    }};
}

/// [`launch!`] with a kernel name computed at run time (the per-geometry kernels).
macro_rules! launch_named {
    ($gpu:expr, $src:expr, $kernel:expr, $cfg:expr; $($arg:ident),+ $(,)?) => {{
        let name: &str = &$kernel;
        let func = $gpu.function(&$src, name)?;
        let mut builder = $gpu.stream.launch_builder(&func);
        $( builder.arg(&$arg); )+
        // SAFETY: the arguments match the kernel's parameter list in order and type, and every
        // buffer was checked against the sizes the kernel is given.
        unsafe { builder.launch($cfg) }
            .map_err(|e| anyhow::anyhow!("launching CUDA kernel `{name}` failed: {e:?}"))?;
    }};
}

pub mod bench;
mod bench_matmul;
pub mod bench_train;
pub mod blas;
pub mod buffer;
mod compile;
pub mod decode;
pub mod decode_selftest;
pub mod delta_rule;
pub mod fp8;
pub mod graph;
pub mod model;
pub mod model_selftest;
pub mod ops;
pub mod ops_selftest;
pub mod profile;
pub mod selftest;
pub mod train;

pub use compile::{compile_ptx, cuda_include_dir, KernelSource};

use anyhow::{bail, Context, Result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, DevicePtr, DevicePtrMut,
    SyncOnDrop,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One GPU: its context, the stream all work goes on, a side stream for work that runs beside
/// it (see [`Gpu::fork`]), and the kernels loaded so far.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// Lower priority than `stream`: its blocks take only the SMs that `stream`'s leave idle.
    side: Arc<CudaStream>,
    fork_ev: CudaEvent,
    join_ev: CudaEvent,
    /// NVRTC target, e.g. `sm_90a` on an H200.
    pub arch: &'static str,
    pub name: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

/// Why CUDA cannot be used here, or `None` when the driver and NVRTC load and a device exists.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: these only try to dlopen the libraries; nothing is called through them.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("no CUDA driver found (libcuda.so could not be loaded)".into());
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Some("the CUDA driver is present but NVRTC (libnvrtc.so) is not: install the CUDA toolkit or the nvidia-cuda-nvrtc package and add its lib folder to LD_LIBRARY_PATH".into());
    }
    match CudaContext::device_count() {
        Ok(0) => Some("no CUDA device found".into()),
        Ok(_) => None,
        Err(e) => Some(format!("the CUDA driver failed to start: {e:?}")),
    }
}

impl Gpu {
    /// Opens device `ordinal`, or explains why it cannot.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        if let Some(why) = unavailable_reason() {
            bail!("{why}");
        }
        let ctx = CudaContext::new(ordinal)
            .with_context(|| format!("cannot open CUDA device {ordinal}"))?;
        let (major, minor) = ctx
            .compute_capability()
            .context("cannot read the compute capability")?;
        let arch = arch_name(major, minor);
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        // Non-default streams: the legacy default stream cannot be captured into a CUDA graph.
        // cudarc's per-buffer event tracking only adds work (and breaks capture), so it is off.
        // SAFETY: work goes on `stream`, and on `side` only between `fork` and `join`, whose
        // events order it against `stream`.
        unsafe { ctx.disable_event_tracking() };
        ctx.bind_to_thread()
            .context("cannot bind the CUDA context")?;
        let (least, greatest) = cudarc::driver::result::stream::get_priority_range()
            .context("cannot read the stream priority range")?;
        let stream = ctx
            .new_stream_with_priority(greatest)
            .context("cannot create a CUDA stream")?;
        let side = ctx
            .new_stream_with_priority(least)
            .context("cannot create the side CUDA stream")?;
        let event = || ctx.new_event(None).context("cannot create a CUDA event");
        let (fork_ev, join_ev) = (event()?, event()?);
        Ok(Gpu {
            ctx,
            stream,
            side,
            fork_ev,
            join_ev,
            arch,
            name,
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// The kernel `func` of `source`, compiling and loading the module at first use.
    pub fn function(&self, source: &KernelSource, func: &str) -> Result<CudaFunction> {
        let mut modules = self.modules.lock().expect("module cache lock");
        let module = match modules.get(source.name) {
            Some(m) => m.clone(),
            None => {
                let ptx = compile_ptx(source, self.arch)?;
                let m = self
                    .ctx
                    .load_module(ptx)
                    .with_context(|| format!("cannot load CUDA module `{}`", source.name))?;
                modules.insert(source.name, m.clone());
                m
            }
        };
        module
            .load_function(func)
            .with_context(|| format!("kernel `{func}` not found in `{}`", source.name))
    }

    /// The side stream, after everything queued so far on `stream`: work queued on it runs
    /// beside what is queued on `stream` next, until [`Gpu::join`]. In a CUDA graph capture the
    /// two become parallel branches.
    pub fn fork(&self) -> Result<&Arc<CudaStream>> {
        self.fork_ev
            .record(&self.stream)
            .context("fork: event record")?;
        self.side.wait(&self.fork_ev).context("fork: stream wait")?;
        Ok(&self.side)
    }

    /// `stream` waits for everything queued on the side stream (every fork must be joined).
    pub fn join(&self) -> Result<()> {
        self.join_ev
            .record(&self.side)
            .context("join: event record")?;
        self.stream.wait(&self.join_ev).context("join: stream wait")
    }

    /// Waits for all queued work and surfaces any asynchronous error.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .context("CUDA stream synchronisation failed")
    }
}

/// The NVRTC architecture for a compute capability: the `a` variants unlock Hopper's wgmma and
/// TMA instructions.
fn arch_name(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (9, 0) => "sm_90a",
        (10, 0) => "sm_100a",
        (8, 9) => "sm_89",
        (8, 6) => "sm_86",
        (8, 0) => "sm_80",
        (12, _) => "sm_120",
        (10, _) => "sm_100",
        _ => "sm_80",
    }
}

/// Every `.cu` module of the project, so that all of them can be compile-checked at once
/// (`cargo test` does it where NVRTC is installed; CI installs it).
/// Compiles every module not yet in the kernel cache, in parallel (see [`compile::warm_cache`]):
/// for commands that use most of them (selftest, kernel bench).
pub fn warm_kernel_cache(gpu: &Gpu) {
    compile::warm_cache(&all_sources(), gpu.arch);
}

pub fn all_sources() -> Vec<&'static KernelSource> {
    let mut v = vec![];
    v.extend(ops::sources());
    v.extend(delta_rule::sources());
    v.extend(model::sources());
    v.push(&fp8::FP8);
    v
}

/// The device pointer of an optional input for a kernel argument: null where absent.
pub(crate) fn ptr_or_null<'a, T>(
    b: Option<&'a impl DevicePtr<T>>,
    s: &'a CudaStream,
) -> (CUdeviceptr, Option<SyncOnDrop<'a>>) {
    b.map_or((0, None), |b| {
        let (p, g) = b.device_ptr(s);
        (p, Some(g))
    })
}

/// As [`ptr_or_null`], for an optional output.
pub(crate) fn ptr_mut_or_null<'a, T>(
    b: Option<&'a mut impl DevicePtrMut<T>>,
    s: &'a CudaStream,
) -> (CUdeviceptr, Option<SyncOnDrop<'a>>) {
    b.map_or((0, None), |b| {
        let (p, g) = b.device_ptr_mut(s);
        (p, Some(g))
    })
}

/// `got == want` elements for buffer `name` of `op`, or an error saying what the size should be.
pub(crate) fn expect_len(op: &str, name: &str, got: usize, want: usize, how: &str) -> Result<()> {
    anyhow::ensure!(
        got == want,
        "{op}: `{name}` has {got} elements, expected {want} ({how})"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles every kernel for Hopper with NVRTC, which needs no GPU. Skipped (with a note)
    /// where NVRTC is not installed, unless GDN_REQUIRE_NVRTC=1 (as in CI).
    #[test]
    fn all_kernels_compile_for_sm_90a() {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            assert!(
                std::env::var_os("GDN_REQUIRE_NVRTC").is_none(),
                "GDN_REQUIRE_NVRTC is set but NVRTC is not loadable"
            );
            eprintln!("NVRTC not found: kernel compilation not checked");
            return;
        }
        let probe = KernelSource {
            name: "probe",
            code: "#include <cuda_bf16.h>\nextern \"C\" __global__ void probe(__nv_bfloat16* x) { x[threadIdx.x] = __float2bfloat16(1.0f); }",
        };
        for s in std::iter::once(&probe).chain(all_sources()) {
            if let Err(e) = compile_ptx(s, "sm_90a") {
                panic!("{e:#}");
            }
        }
    }
}
