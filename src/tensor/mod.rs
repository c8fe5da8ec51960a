//! The dense numeric layer: the element trait that lets every CPU op run in f32 (training) and
//! f64 (gradient and equivalence tests), matmul through `matrixmultiply`, and a seeded RNG.

mod matmul;
mod rng;

pub use matmul::gemm;
pub use rng::Rng;

/// A CPU floating-point element. f32 is what training runs in; f64 is what the tests use to
/// check chunked kernels and backward passes to 1e-10 and against finite differences.
pub trait Elem:
    num_traits::Float
    + num_traits::FromPrimitive
    + num_traits::NumAssign
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + std::fmt::Display
    + std::iter::Sum
    + 'static
{
    /// Converts a literal or an f64 quantity into this element type.
    fn of(x: f64) -> Self;
    /// Widens to f64 (for reductions that must not lose precision and for I/O).
    fn f64(self) -> f64;

    /// Raw strided GEMM: C = alpha·A·B + beta·C with A m×k, B k×n, C m×n, each given by a
    /// pointer and (row stride, column stride) in elements.
    ///
    /// # Safety
    /// The pointers and strides must describe valid, non-overlapping (for C) memory.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

impl Elem for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        beta: f32,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
}

impl Elem for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
}

/// Largest relative error max|a−b| / max(max|b|, tiny): the measure the equivalence tests use.
pub fn max_rel_err<F: Elem>(a: &[F], b: &[F]) -> f64 {
    assert_eq!(a.len(), b.len(), "max_rel_err: length mismatch");
    let scale = b
        .iter()
        .fold(0.0f64, |m, x| m.max(x.f64().abs()))
        .max(1e-300);
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x.f64() - y.f64()).abs()));
    if diff.is_nan() || a.iter().any(|x| !x.f64().is_finite()) {
        return f64::INFINITY;
    }
    diff / scale
}
