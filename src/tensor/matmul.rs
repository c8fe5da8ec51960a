//! Row-major matrix products on top of `matrixmultiply` (which threads internally).

use super::Elem;

/// C (m×n) = alpha · op(A) · op(B) + beta · C, all row-major and contiguous.
/// `op(A)` is m×k: A is stored m×k, or k×m when `ta` (then it is read transposed).
/// `op(B)` is k×n: B is stored k×n, or n×k when `tb`.
#[allow(clippy::too_many_arguments)]
pub fn gemm<F: Elem>(
    m: usize,
    k: usize,
    n: usize,
    a: &[F],
    ta: bool,
    b: &[F],
    tb: bool,
    c: &mut [F],
    alpha: F,
    beta: F,
) {
    assert!(
        a.len() >= m * k,
        "gemm: A has {} elements, needs {}",
        a.len(),
        m * k
    );
    assert!(
        b.len() >= k * n,
        "gemm: B has {} elements, needs {}",
        b.len(),
        k * n
    );
    assert!(
        c.len() >= m * n,
        "gemm: C has {} elements, needs {}",
        c.len(),
        m * n
    );
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the asserts above bound every index matrixmultiply touches, and `c` is a
    // unique borrow so it cannot overlap `a` or `b`.
    unsafe {
        F::gemm_raw(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: &[f64], ta: bool, b: &[f64], tb: bool) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    c[i * n + j] += av * bv;
                }
            }
        }
        c
    }

    #[test]
    fn gemm_matches_naive_for_every_transpose() {
        let mut rng = crate::tensor::Rng::new(7);
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|_| rng.normal()).collect();
        let b: Vec<f64> = (0..k * n).map(|_| rng.normal()).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let mut c = vec![1.0; m * n];
                gemm(m, k, n, &a, ta, &b, tb, &mut c, 2.0, 0.5);
                let want: Vec<f64> = naive(m, k, n, &a, ta, &b, tb)
                    .iter()
                    .map(|x| 2.0 * x + 0.5)
                    .collect();
                assert!(
                    crate::tensor::max_rel_err(&c, &want) < 1e-14,
                    "ta={ta} tb={tb}"
                );
            }
        }
    }
}
