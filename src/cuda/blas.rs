//! Matrix products through cuBLASLt with the row-major semantics of `tensor::gemm`: bf16 inputs,
//! fp32 accumulation (CUBLAS_COMPUTE_32F), bf16 or fp32 output, plain or strided-batched.
//!
//! cuBLASLt is column-major; a row-major C = op(A)·op(B) is the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ,
//! so B is passed as cuBLASLt's first operand and A as its second, with their transposes kept.

use super::Gpu;
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use half::bf16;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// cuBLASLt's workspace: 32 MiB, NVIDIA's recommendation for Hopper.
pub(crate) const WORKSPACE_BYTES: usize = 32 << 20;

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

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct AlgoKey {
    out: u32,
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
        self.run(1, m, k, n, a, ta, b, tb, c, None, alpha, beta)
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
        self.run(batch, m, k, n, a, ta, b, tb, c, Some(strides), alpha, beta)
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
        a: &impl DevicePtr<bf16>,
        ta: bool,
        b: &impl DevicePtr<bf16>,
        tb: bool,
        c: &mut impl DevicePtrMut<O>,
        strides: Option<BatchStrides>,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        if batch == 0 || m == 0 || n == 0 {
            return Ok(());
        }
        let what = || {
            format!(
                "matmul m={m} k={k} n={n} ta={ta} tb={tb} batch={batch} out={}",
                O::NAME
            )
        };
        ensure!(k > 0, "{}: k must be positive", what());
        let s = &*self.stream;
        let (ap, _ga) = a.device_ptr(s);
        let (bp, _gb) = b.device_ptr(s);
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
        let bf = sys::cudaDataType::CUDA_R_16BF;
        let first = Layout::new(bf, first_rows, first_cols, first_ld)?;
        let second = Layout::new(bf, second_rows, second_cols, second_ld)?;
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

        let st = strides.map(|s| (s.b, s.a, s.c));
        let align = [
            alignment(bp, 2, st.map(|s| s.0)),
            alignment(ap, 2, st.map(|s| s.1)),
            alignment(cp, std::mem::size_of::<O>(), st.map(|s| s.2)),
        ];
        let key = AlgoKey {
            out: O::DTYPE as u32,
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
        let cached = self
            .algos
            .lock()
            .map_err(|_| anyhow!("cuBLASLt algorithm cache poisoned"))?
            .get(&key)
            .copied();
        let algo = match cached {
            Some(a) => a,
            None => {
                let a = self
                    .heuristic(&desc, &first, &second, &out, align)
                    .with_context(what)?;
                self.algos
                    .lock()
                    .map_err(|_| anyhow!("cuBLASLt algorithm cache poisoned"))?
                    .insert(key, a);
                a
            }
        };
        // SAFETY: every pointer is a live device buffer checked against the layouts above; alpha
        // and beta are host fp32 scalars (the default pointer mode), read during the call.
        let st = unsafe {
            sys::cublasLtMatmul(
                self.handle,
                desc.0,
                &alpha as *const f32 as *const c_void,
                bp as *const c_void,
                first.0,
                ap as *const c_void,
                second.0,
                &beta as *const f32 as *const c_void,
                cp as *const c_void,
                out.0,
                cp as *mut c_void,
                out.0,
                &algo,
                wp as *mut c_void,
                WORKSPACE_BYTES,
                s.cu_stream() as sys::cudaStream_t,
            )
        };
        status("cublasLtMatmul", st).with_context(what)
    }

    fn heuristic(
        &self,
        desc: &Desc,
        first: &Layout,
        second: &Layout,
        out: &Layout,
        align: [u32; 3],
    ) -> Result<sys::cublasLtMatmulAlgo_t> {
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
        let mut result: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
        let mut count = 0i32;
        status("cublasLtMatmulAlgoGetHeuristic", unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                desc.0,
                first.0,
                second.0,
                out.0,
                out.0,
                pref.0,
                1,
                &mut result,
                &mut count,
            )
        })?;
        ensure!(count > 0, "cuBLASLt found no algorithm for this problem");
        status("the heuristic's algorithm", result.state)?;
        Ok(result.algo)
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
        let op: i32 = if transpose { 1 } else { 0 }; // CUBLAS_OP_T / CUBLAS_OP_N
                                                     // SAFETY: TRANSA/TRANSB hold a cublasOperation_t (int32).
        status("setting a transpose", unsafe {
            sys::cublasLtMatmulDescSetAttribute(
                self.0,
                attr,
                &op as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
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
    use super::alignment;

    #[test]
    fn alignment_is_the_largest_power_of_two_dividing_every_matrix_start() {
        assert_eq!(alignment(0x1000, 2, None), 256);
        assert_eq!(alignment(0x1002, 2, None), 2);
        assert_eq!(alignment(0x1010, 2, None), 16);
        assert_eq!(alignment(0x1000, 2, Some(4)), 8);
        assert_eq!(alignment(0x1000, 4, Some(0)), 256);
    }
}
