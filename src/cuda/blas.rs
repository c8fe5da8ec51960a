//! Matrix products through cuBLASLt with the row-major semantics of `tensor::gemm`: bf16 inputs,
//! fp32 accumulation (CUBLAS_COMPUTE_32F), bf16 or fp32 output, plain or strided-batched; and FP8
//! inputs (E4M3/E5M2 codes with per-tensor scales, `matmul_fp8`) in the one layout Hopper takes.
//!
//! cuBLASLt is column-major; a row-major C = op(A)·op(B) is the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ,
//! so B is passed as cuBLASLt's first operand and A as its second, with their transposes kept.

use super::fp8::Fp8;
use super::Gpu;
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use half::bf16;
use std::collections::HashMap;
use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// cuBLASLt's workspace: 32 MiB, NVIDIA's recommendation for Hopper.
pub(crate) const WORKSPACE_BYTES: usize = 32 << 20;

/// How many of the heuristic's algorithms a tuned matmul times, and how many runs each.
const TUNE_CANDIDATES: usize = 16;
const TUNE_REPS: usize = 3;

/// An output element type of the matmuls.
pub trait MatmulOut: DeviceRepr {
    const DTYPE: sys::cudaDataType;
    const NAME: &'static str;
}

impl MatmulOut for bf16 {
    const DTYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
    const NAME: &'static str = "bf16";
}

impl MatmulOut for f32 {
    const DTYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_32F;
    const NAME: &'static str = "f32";
}

/// Strides (in elements) between consecutive matrices of a strided batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BatchStrides {
    pub a: i64,
    pub b: i64,
    pub c: i64,
}

/// A matmul's inputs as `run` takes them: our A and B (device pointers, transposes), their
/// element types, and for FP8 the device pointers of the f32 factors that scale each operand.
struct Operands {
    a: u64,
    ta: bool,
    b: u64,
    tb: bool,
    types: [sys::cudaDataType; 2],
    /// Bytes per element of A and B.
    elem: usize,
    scales: Option<(u64, u64)>,
    fast_accum: bool,
    name: &'static str,
}

impl Operands {
    fn bf16(a: u64, ta: bool, b: u64, tb: bool) -> Operands {
        let t = sys::cudaDataType::CUDA_R_16BF;
        Operands {
            a,
            ta,
            b,
            tb,
            types: [t, t],
            elem: 2,
            scales: None,
            fast_accum: false,
            name: "bf16",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct AlgoKey {
    out: u32,
    inputs: [u32; 2],
    fast_accum: bool,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    strides: Option<BatchStrides>,
    beta_zero: bool,
    align: [u32; 3],
}

/// A cuBLASLt handle with its workspace, bound to the stream `gpu.stream` holds when it is
/// created (create it after switching a `Gpu` to a capturable stream). Create once and reuse.
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    /// Heuristic choices by problem, so that a step pays for the search only once.
    algos: Mutex<HashMap<AlgoKey, sys::cublasLtMatmulAlgo_t>>,
    tuning: Tuning,
}

/// Which of cuBLASLt's heuristic candidates each matmul problem uses. With tuning on (the
/// default; `GDN_MATMUL_TUNE=0` turns it off), a problem met for the first time outside a graph
/// capture has the heuristic's first `TUNE_CANDIDATES` timed on the call's own operands, and the
/// fastest is kept. The winner's rank in the heuristic's list is saved in `matmul-tune.txt` in
/// gdn's cache folder, keyed by GPU, cuBLASLt version and problem. Later runs on that GPU then
/// pick the same algorithm without timing, so a resumed run computes bit for bit what the first
/// run did.
struct Tuning {
    on: bool,
    /// "<GPU name>|cuBLASLt <version>|", the start of every key in the file.
    prefix: String,
}

/// The tuning file's choices, one table for the process: two `Blas` (a trainer's model and its
/// evaluation, say) then never choose differently for one problem, nor drop each other's entries
/// when they rewrite the file.
static TUNED: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();

fn tune_path() -> Option<PathBuf> {
    super::compile::cache_dir().map(|d| d.join("matmul-tune.txt"))
}

fn tuned() -> &'static Mutex<HashMap<String, usize>> {
    TUNED.get_or_init(|| {
        let text = tune_path().and_then(|p| std::fs::read_to_string(p).ok());
        Mutex::new(text.map(|t| parse_ranks(&t)).unwrap_or_default())
    })
}

impl Tuning {
    fn new(gpu_name: &str) -> Tuning {
        // SAFETY: a plain query of the loaded library's version.
        let version = unsafe { sys::cublasLtGetVersion() };
        Tuning {
            on: std::env::var("GDN_MATMUL_TUNE").map_or(true, |v| v != "0"),
            prefix: format!("{gpu_name}|cuBLASLt {version}|"),
        }
    }

    fn id(&self, key: &AlgoKey) -> String {
        format!("{}{key:?}", self.prefix)
    }

    fn rank(&self, id: &str) -> Option<usize> {
        tuned().lock().ok()?.get(id).copied()
    }

    /// Records a winner and rewrites the file, with what other processes have added to it since.
    fn save(&self, id: String, rank: usize) {
        let Ok(mut ranks) = tuned().lock() else {
            return;
        };
        ranks.insert(id, rank);
        let Some(path) = tune_path() else {
            return;
        };
        let on_disk = std::fs::read_to_string(&path).ok();
        let text = merge_ranks(&mut ranks, on_disk.as_deref());
        super::compile::write_cache_file(&path, text.as_bytes());
    }
}

/// The tuning file's "key<TAB>rank" lines; others are skipped.
fn parse_ranks(text: &str) -> HashMap<String, usize> {
    text.lines()
        .filter_map(|l| {
            let (k, r) = l.rsplit_once('\t')?;
            Some((k.to_string(), r.trim().parse().ok()?))
        })
        .collect()
}

/// Adds to `ours` the entries of the file's `on_disk` text that it lacks (ours stand where both
/// have a problem: this process has used them) and renders the union as the file, sorted.
fn merge_ranks(ours: &mut HashMap<String, usize>, on_disk: Option<&str>) -> String {
    for (k, r) in on_disk.map(parse_ranks).unwrap_or_default() {
        ours.entry(k).or_insert(r);
    }
    let mut lines: Vec<String> = ours.iter().map(|(k, r)| format!("{k}\t{r}\n")).collect();
    lines.sort();
    lines.concat()
}

/// One matmul's descriptors and device pointers, in cuBLASLt's operand order.
struct Call<'a> {
    desc: &'a Desc,
    first: &'a Layout,
    second: &'a Layout,
    out: &'a Layout,
    first_ptr: u64,
    second_ptr: u64,
    out_ptr: u64,
    workspace: u64,
    alpha: f32,
    beta: f32,
}

/// Bytes of a (strided-batched) output: the last matrix's end.
fn out_bytes<O>(batch: usize, m: usize, n: usize, strides: Option<BatchStrides>) -> usize {
    let stride = strides.map_or(0, |s| s.c as usize);
    ((batch - 1) * stride + m * n) * std::mem::size_of::<O>()
}

// SAFETY: the handle is only used through &self methods that enqueue on one stream; cuBLASLt
// handles may be shared between threads.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

fn status(what: &str, s: sys::cublasStatus_t) -> Result<()> {
    if s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        bail!("cuBLASLt {what} failed: {s:?}")
    }
}

impl Blas {
    pub fn new(gpu: &Gpu) -> Result<Blas> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { sys::is_culib_present() } {
            bail!("cuBLASLt (libcublasLt.so) could not be loaded: install the CUDA toolkit or the nvidia-cublas package and add its lib folder to LD_LIBRARY_PATH");
        }
        gpu.ctx
            .bind_to_thread()
            .context("binding the CUDA context")?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: cublasLtCreate writes a fresh handle.
        status("cublasLtCreate", unsafe {
            sys::cublasLtCreate(&mut handle)
        })?;
        let workspace = gpu
            .stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .context("allocating the cuBLASLt workspace")?;
        Ok(Blas {
            handle,
            workspace,
            stream: gpu.stream.clone(),
            algos: Mutex::new(HashMap::new()),
            tuning: Tuning::new(&gpu.name),
        })
    }

    /// C [m×n] = alpha·op(A)·op(B) + beta·C, row-major (as `tensor::gemm`): A is stored m×k, or
    /// k×m when `ta`; B is stored k×n, or n×k when `tb`. With beta = 0, C is not read.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul<O: MatmulOut>(
        &self,
        m: usize,
        k: usize,
        n: usize,
        a: &impl DevicePtr<bf16>,
        ta: bool,
        b: &impl DevicePtr<bf16>,
        tb: bool,
        c: &mut impl DevicePtrMut<O>,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        self.check("matmul", "A", a.len(), 1, 0, m * k)?;
        self.check("matmul", "B", b.len(), 1, 0, k * n)?;
        self.check("matmul", "C", c.len(), 1, 0, m * n)?;
        let s = &*self.stream;
        let ((ap, _ga), (bp, _gb)) = (a.device_ptr(s), b.device_ptr(s));
        let ops = Operands::bf16(ap, ta, bp, tb);
        self.run(1, m, k, n, &ops, c, None, alpha, beta)
    }

    /// C [m×n] = alpha·(sa·A)·(sb·B)ᵀ + beta·C, row-major, from FP8 codes: A stored m×k and B
    /// n×k (the one layout Hopper's FP8 tensor cores take: both operands k-major), `sa` and `sb`
    /// device pointers to one f32 each (the inverse of the scales the casts applied). E5M2 times
    /// E5M2 is not supported. `fast_accum` keeps the products' partial sums in the tensor cores'
    /// own accumulators (faster, less precise over long k); without it they are promoted to
    /// fp32 along the way. m, k and n must be multiples of 16, and every matrix start 16-byte
    /// aligned.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_fp8<O: MatmulOut>(
        &self,
        m: usize,
        k: usize,
        n: usize,
        (a, fa, sa): (&impl DevicePtr<u8>, Fp8, &impl DevicePtr<f32>),
        (b, fb, sb): (&impl DevicePtr<u8>, Fp8, &impl DevicePtr<f32>),
        c: &mut impl DevicePtrMut<O>,
        alpha: f32,
        beta: f32,
        fast_accum: bool,
    ) -> Result<()> {
        let op = "matmul_fp8";
        ensure!(
            [m, k, n].iter().all(|v| v.is_multiple_of(16)),
            "{op}: m={m} k={k} n={n}: FP8 matmuls need multiples of 16"
        );
        ensure!(
            !(fa == Fp8::E5M2 && fb == Fp8::E5M2),
            "{op}: E5M2 × E5M2 is not supported by cuBLASLt (make one operand E4M3)"
        );
        self.check(op, "A", a.len(), 1, 0, m * k)?;
        self.check(op, "B", b.len(), 1, 0, k * n)?;
        self.check(op, "C", c.len(), 1, 0, m * n)?;
        self.check(op, "A's scale", sa.len(), 1, 0, 1)?;
        self.check(op, "B's scale", sb.len(), 1, 0, 1)?;
        let s = &*self.stream;
        let ((ap, _ga), (bp, _gb)) = (a.device_ptr(s), b.device_ptr(s));
        let ((sap, _gsa), (sbp, _gsb)) = (sa.device_ptr(s), sb.device_ptr(s));
        let ty = |f: Fp8| match f {
            Fp8::E4M3 => sys::cudaDataType::CUDA_R_8F_E4M3,
            Fp8::E5M2 => sys::cudaDataType::CUDA_R_8F_E5M2,
        };
        let ops = Operands {
            a: ap,
            ta: false,
            b: bp,
            tb: true,
            types: [ty(fa), ty(fb)],
            elem: 1,
            scales: Some((sap, sbp)),
            fast_accum,
            name: match (fa, fb) {
                (Fp8::E4M3, Fp8::E4M3) => "e4m3×e4m3",
                (Fp8::E5M2, _) => "e5m2×e4m3",
                _ => "e4m3×e5m2",
            },
        };
        self.run(1, m, k, n, &ops, c, None, alpha, beta)
    }

    /// `batch` independent products; matrix i of A, B, C starts `strides.{a,b,c}·i` elements
    /// after the first (a stride may be 0 to reuse one matrix).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_strided_batched<O: MatmulOut>(
        &self,
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        a: &impl DevicePtr<bf16>,
        ta: bool,
        b: &impl DevicePtr<bf16>,
        tb: bool,
        c: &mut impl DevicePtrMut<O>,
        strides: BatchStrides,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let op = "matmul_strided_batched";
        ensure!(
            strides.a >= 0 && strides.b >= 0 && strides.c >= 0,
            "{op}: negative batch strides {strides:?}"
        );
        ensure!(
            batch <= 1 || strides.c as usize >= m * n,
            "{op}: the C stride {} is smaller than one {m}×{n} matrix, so the outputs would overlap",
            strides.c
        );
        self.check(op, "A", a.len(), batch, strides.a as usize, m * k)?;
        self.check(op, "B", b.len(), batch, strides.b as usize, k * n)?;
        self.check(op, "C", c.len(), batch, strides.c as usize, m * n)?;
        let s = &*self.stream;
        let ((ap, _ga), (bp, _gb)) = (a.device_ptr(s), b.device_ptr(s));
        let ops = Operands::bf16(ap, ta, bp, tb);
        self.run(batch, m, k, n, &ops, c, Some(strides), alpha, beta)
    }

    fn check(
        &self,
        op: &str,
        name: &str,
        len: usize,
        batch: usize,
        stride: usize,
        one: usize,
    ) -> Result<()> {
        let need = if batch == 0 {
            0
        } else {
            (batch - 1) * stride + one
        };
        ensure!(
            len >= need,
            "{op}: `{name}` has {len} elements, needs at least {need} ({batch} matrices of {one}, stride {stride})"
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn run<O: MatmulOut>(
        &self,
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        ops: &Operands,
        c: &mut impl DevicePtrMut<O>,
        strides: Option<BatchStrides>,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        if batch == 0 || m == 0 || n == 0 {
            return Ok(());
        }
        let (ap, ta, bp, tb) = (ops.a, ops.ta, ops.b, ops.tb);
        let what = || {
            format!(
                "matmul m={m} k={k} n={n} ta={ta} tb={tb} batch={batch} in={} out={}",
                ops.name,
                O::NAME
            )
        };
        ensure!(k > 0, "{}: k must be positive", what());
        let s = &*self.stream;
        let (cp, _gc) = c.device_ptr_mut(s);
        let (wp, _gw) = self.workspace.device_ptr(s);

        // cuBLASLt's operands: first = our B (n×k after op), second = our A (k×m after op).
        let (m_, n_, k_) = (n as u64, m as u64, k as u64);
        let (first_rows, first_cols, first_ld) = if tb {
            (k_, m_, k as i64)
        } else {
            (m_, k_, n as i64)
        };
        let (second_rows, second_cols, second_ld) = if ta {
            (n_, k_, m as i64)
        } else {
            (k_, n_, k as i64)
        };
        let first = Layout::new(ops.types[1], first_rows, first_cols, first_ld)?;
        let second = Layout::new(ops.types[0], second_rows, second_cols, second_ld)?;
        let out = Layout::new(O::DTYPE, m_, n_, n as i64)?;
        if let Some(st) = strides {
            first.set_batch(batch, st.b)?;
            second.set_batch(batch, st.a)?;
            out.set_batch(batch, st.c)?;
        }
        let desc = Desc::new()?;
        desc.set_op(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            tb,
        )?;
        desc.set_op(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            ta,
        )?;
        if let Some((sa, sb)) = ops.scales {
            use sys::cublasLtMatmulDescAttributes_t as D;
            // cuBLASLt's A is our B and its B our A.
            desc.set(D::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sb)?;
            desc.set(D::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sa)?;
            desc.set(D::CUBLASLT_MATMUL_DESC_FAST_ACCUM, &(ops.fast_accum as i8))?;
        }

        let st = strides.map(|s| (s.b, s.a, s.c));
        let align = [
            alignment(bp, ops.elem, st.map(|s| s.0)),
            alignment(ap, ops.elem, st.map(|s| s.1)),
            alignment(cp, std::mem::size_of::<O>(), st.map(|s| s.2)),
        ];
        let key = AlgoKey {
            out: O::DTYPE as u32,
            inputs: [ops.types[0] as u32, ops.types[1] as u32],
            fast_accum: ops.fast_accum,
            batch,
            m,
            k,
            n,
            ta,
            tb,
            strides,
            beta_zero: beta == 0.0,
            align,
        };
        let call = Call {
            desc: &desc,
            first: &first,
            second: &second,
            out: &out,
            first_ptr: bp,
            second_ptr: ap,
            out_ptr: cp,
            workspace: wp,
            alpha,
            beta,
        };
        let cached = self
            .algos
            .lock()
            .map_err(|_| anyhow!("cuBLASLt algorithm cache poisoned"))?
            .get(&key)
            .copied();
        let algo = match cached {
            Some(a) => a,
            None => {
                let bytes = out_bytes::<O>(batch, m, n, strides);
                let a = self.choose(&key, &call, align, what, bytes)?;
                self.algos
                    .lock()
                    .map_err(|_| anyhow!("cuBLASLt algorithm cache poisoned"))?
                    .insert(key, a);
                a
            }
        };
        self.launch(&call, &algo).with_context(what)
    }

    /// The algorithm for a new problem: with tuning off the heuristic's first; else the one the
    /// tuning file names, else (the stream not capturing a graph) the fastest of the heuristic's
    /// first `TUNE_CANDIDATES`. With beta ≠ 0 the output is an input too,
    /// so it is copied aside before the timing runs and put back after; where that copy cannot be
    /// allocated the heuristic's first choice stands.
    fn choose(
        &self,
        key: &AlgoKey,
        call: &Call,
        align: [u32; 3],
        what: impl Fn() -> String,
        out_bytes: usize,
    ) -> Result<sys::cublasLtMatmulAlgo_t> {
        if !self.tuning.on {
            return Ok(self.heuristic(call, align, 1).with_context(&what)?[0]);
        }
        let id = self.tuning.id(key);
        if let Some(rank) = self.tuning.rank(&id) {
            let cands = self.heuristic(call, align, rank + 1).with_context(&what)?;
            return Ok(*cands.get(rank).unwrap_or(&cands[0]));
        }
        let cands = self
            .heuristic(call, align, TUNE_CANDIDATES)
            .with_context(&what)?;
        if cands.len() == 1 || self.capturing()? {
            return Ok(cands[0]);
        }
        let s = &*self.stream;
        let saved = if call.beta != 0.0 {
            // SAFETY: filled by the copy below before it is read.
            match unsafe { self.stream.alloc::<u8>(out_bytes) } {
                Ok(buf) => Some(buf),
                Err(_) => return Ok(cands[0]),
            }
        } else {
            None
        };
        let copy = |dst: u64, src: u64| -> Result<()> {
            // SAFETY: both ranges are `out_bytes` long: the call's output and `saved`.
            unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, out_bytes, s.cu_stream()) }
                .map_err(|e| anyhow!("copying a matmul output aside for tuning: {e:?}"))
        };
        if let Some(buf) = &saved {
            let (sp, _g) = buf.device_ptr(s);
            copy(sp, call.out_ptr)?;
        }
        let ctx = s.context();
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (e0, e1) = (ctx.new_event(flags)?, ctx.new_event(flags)?);
        let mut times = Vec::with_capacity(cands.len());
        for algo in &cands {
            // An algorithm the heuristic offers may still refuse this problem: skip it.
            if self.launch(call, algo).is_err() {
                times.push(f32::INFINITY);
                continue;
            }
            e0.record(s)?;
            for _ in 0..TUNE_REPS {
                self.launch(call, algo)?;
            }
            e1.record(s)?;
            e1.synchronize()?;
            times.push(e0.elapsed_ms(&e1)? / TUNE_REPS as f32);
        }
        if let Some(buf) = &saved {
            let (sp, _g) = buf.device_ptr(s);
            copy(call.out_ptr, sp)?;
        }
        let best = (0..cands.len())
            .min_by(|&i, &j| times[i].total_cmp(&times[j]))
            .unwrap_or(0);
        if std::env::var_os("GDN_MATMUL_TUNE_LOG").is_some() {
            eprintln!(
                "tuned {}: heuristic's first {:.4} ms, its #{best} of {} {:.4} ms",
                what(),
                times[0],
                cands.len(),
                times[best]
            );
        }
        self.tuning.save(id, best);
        Ok(cands[best])
    }

    fn capturing(&self) -> Result<bool> {
        let st = self
            .stream
            .capture_status()
            .map_err(|e| anyhow!("querying the stream's capture status: {e:?}"))?;
        Ok(st != cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }

    fn launch(&self, call: &Call, algo: &sys::cublasLtMatmulAlgo_t) -> Result<()> {
        // SAFETY: every pointer is a live device buffer checked against the layouts (see `run`);
        // alpha and beta are host fp32 scalars (the default pointer mode), read during the call.
        let st = unsafe {
            sys::cublasLtMatmul(
                self.handle,
                call.desc.0,
                &call.alpha as *const f32 as *const c_void,
                call.first_ptr as *const c_void,
                call.first.0,
                call.second_ptr as *const c_void,
                call.second.0,
                &call.beta as *const f32 as *const c_void,
                call.out_ptr as *const c_void,
                call.out.0,
                call.out_ptr as *mut c_void,
                call.out.0,
                algo,
                call.workspace as *mut c_void,
                WORKSPACE_BYTES,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        };
        status("cublasLtMatmul", st)
    }

    /// Up to `want` algorithms, in the heuristic's order of preference.
    fn heuristic(
        &self,
        call: &Call,
        align: [u32; 3],
        want: usize,
    ) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
        let mut pref = std::ptr::null_mut();
        // SAFETY: creates a fresh preference descriptor, destroyed below.
        status("cublasLtMatmulPreferenceCreate", unsafe {
            sys::cublasLtMatmulPreferenceCreate(&mut pref)
        })?;
        let pref = Pref(pref);
        let ws = WORKSPACE_BYTES as u64;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        pref.set(P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws)?;
        // The real alignments of our pointers (views into arenas need not be 256-byte aligned).
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align[0])?;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align[1])?;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align[2])?;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align[2])?;
        // SAFETY: zeroed plain-data output structs, filled by the call.
        let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> =
            (0..want).map(|_| unsafe { std::mem::zeroed() }).collect();
        let mut count = 0i32;
        status("cublasLtMatmulAlgoGetHeuristic", unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                call.desc.0,
                call.first.0,
                call.second.0,
                call.out.0,
                call.out.0,
                pref.0,
                want as i32,
                results.as_mut_ptr(),
                &mut count,
            )
        })?;
        ensure!(count > 0, "cuBLASLt found no algorithm for this problem");
        status("the heuristic's algorithm", results[0].state)?;
        Ok(results[..count as usize]
            .iter()
            .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .map(|r| r.algo)
            .collect())
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: the handle came from cublasLtCreate and is destroyed once.
            unsafe {
                let _ = sys::cublasLtDestroy(self.handle);
            }
        }
    }
}

/// The largest power of two (≤ 256) dividing the address, and every batch offset when batched.
fn alignment(ptr: u64, elem: usize, stride: Option<i64>) -> u32 {
    let mut a = ptr | 256;
    if let Some(s) = stride {
        let bytes = s as u64 * elem as u64;
        if bytes != 0 {
            a |= bytes;
        }
    }
    1u32 << a.trailing_zeros().min(8)
}

struct Layout(sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new(dtype: sys::cudaDataType, rows: u64, cols: u64, ld: i64) -> Result<Layout> {
        let mut h = std::ptr::null_mut();
        // SAFETY: creates a fresh layout descriptor, destroyed on drop.
        status("cublasLtMatrixLayoutCreate", unsafe {
            sys::cublasLtMatrixLayoutCreate(&mut h, dtype, rows, cols, ld)
        })?;
        Ok(Layout(h))
    }

    fn set_batch(&self, batch: usize, stride: i64) -> Result<()> {
        let count = i32::try_from(batch).map_err(|_| anyhow!("batch count {batch} too large"))?;
        use sys::cublasLtMatrixLayoutAttribute_t as L;
        // SAFETY: the attribute types are int32 (count) and int64 (offset), as documented.
        unsafe {
            status(
                "setting the batch count",
                sys::cublasLtMatrixLayoutSetAttribute(
                    self.0,
                    L::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    &count as *const i32 as *const c_void,
                    std::mem::size_of::<i32>(),
                ),
            )?;
            status(
                "setting the batch stride",
                sys::cublasLtMatrixLayoutSetAttribute(
                    self.0,
                    L::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    &stride as *const i64 as *const c_void,
                    std::mem::size_of::<i64>(),
                ),
            )
        }
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatrixLayoutCreate, destroyed once.
        unsafe {
            let _ = sys::cublasLtMatrixLayoutDestroy(self.0);
        }
    }
}

struct Desc(sys::cublasLtMatmulDesc_t);

impl Desc {
    fn new() -> Result<Desc> {
        let mut h = std::ptr::null_mut();
        // SAFETY: creates a fresh matmul descriptor (fp32 compute and scale), destroyed on drop.
        status("cublasLtMatmulDescCreate", unsafe {
            sys::cublasLtMatmulDescCreate(
                &mut h,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType::CUDA_R_32F,
            )
        })?;
        Ok(Desc(h))
    }

    fn set_op(&self, attr: sys::cublasLtMatmulDescAttributes_t, transpose: bool) -> Result<()> {
        // CUBLAS_OP_T / CUBLAS_OP_N, a cublasOperation_t (int32).
        self.set(attr, &(transpose as i32))
    }

    /// Sets `attr` to `value`, which must have the attribute's C type (int32 for a transpose,
    /// int8 for FAST_ACCUM, a device pointer for the scales).
    fn set<T>(&self, attr: sys::cublasLtMatmulDescAttributes_t, value: &T) -> Result<()> {
        // SAFETY: `value` is a live T of size_of::<T>() bytes, read during the call.
        status("setting a matmul attribute", unsafe {
            sys::cublasLtMatmulDescSetAttribute(
                self.0,
                attr,
                value as *const T as *const c_void,
                std::mem::size_of::<T>(),
            )
        })
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulDescCreate, destroyed once.
        unsafe {
            let _ = sys::cublasLtMatmulDescDestroy(self.0);
        }
    }
}

struct Pref(sys::cublasLtMatmulPreference_t);

impl Pref {
    fn set<T>(&self, attr: sys::cublasLtMatmulPreferenceAttributes_t, value: &T) -> Result<()> {
        // SAFETY: `value` has the attribute's documented type (uint64 workspace, uint32 alignments).
        status("setting a matmul preference", unsafe {
            sys::cublasLtMatmulPreferenceSetAttribute(
                self.0,
                attr,
                value as *const T as *const c_void,
                std::mem::size_of::<T>(),
            )
        })
    }
}

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulPreferenceCreate, destroyed once.
        unsafe {
            let _ = sys::cublasLtMatmulPreferenceDestroy(self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{alignment, merge_ranks, parse_ranks};

    #[test]
    fn tuning_file_lines_parse_and_bad_ones_are_skipped() {
        let key = "NVIDIA H200|cuBLASLt 130000|AlgoKey { m: 8, k: 4 }";
        let text = format!("{key}\t3\nno tab\n{key}x\tthree\n\n");
        let ranks = parse_ranks(&text);
        assert_eq!(ranks.len(), 1);
        assert_eq!(ranks[key], 3);
    }

    #[test]
    fn tuning_file_merges_keep_both_and_ours_where_both_have_a_problem() {
        let mut ours = parse_ranks("a\t1\nc\t2\n");
        let text = merge_ranks(&mut ours, Some("b\t5\nc\t7\n"));
        assert_eq!(text, "a\t1\nb\t5\nc\t2\n");
        assert_eq!(ours["b"], 5);
        assert_eq!(merge_ranks(&mut parse_ranks("x\t0\n"), None), "x\t0\n");
    }

    #[test]
    fn alignment_is_the_largest_power_of_two_dividing_every_matrix_start() {
        assert_eq!(alignment(0x1000, 2, None), 256);
        assert_eq!(alignment(0x1002, 2, None), 2);
        assert_eq!(alignment(0x1010, 2, None), 16);
        assert_eq!(alignment(0x1000, 2, Some(4)), 8);
        assert_eq!(alignment(0x1000, 4, Some(0)), 256);
    }
}
