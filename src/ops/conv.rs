//! Short causal depthwise convolution (spec §A.2 step 2), width W (4 in every preset).
//!
//! x, y: [T, D] token-major; w: [D, W] (PyTorch's Conv1d weight [D, 1, W]); tap j = W−1 multiplies
//! the current token, tap 0 the one W−1 steps back. Taps never reach across a sequence boundary
//! given by `cu_seqlens`; positions before a sequence start count as zeros.

use crate::tensor::Elem;

/// y_t[c] = Σ_j w[c, j] · x_{t−W+1+j}[c], within each sequence.
pub fn forward<F: Elem>(
    x: &[F],
    w: &[F],
    channels: usize,
    width: usize,
    cu_seqlens: &[usize],
) -> Vec<F> {
    let d = channels;
    let mut y = vec![F::zero(); x.len()];
    for seq in cu_seqlens.windows(2) {
        let (start, end) = (seq[0], seq[1]);
        for t in start..end {
            let yt = &mut y[t * d..(t + 1) * d];
            for j in 0..width {
                let back = width - 1 - j;
                if t < start + back {
                    continue;
                }
                let xs = &x[(t - back) * d..(t - back + 1) * d];
                for c in 0..d {
                    yt[c] += w[c * width + j] * xs[c];
                }
            }
        }
    }
    y
}

/// Returns dx and accumulates dw (+=) from dy.
pub fn backward<F: Elem>(
    x: &[F],
    w: &[F],
    dy: &[F],
    channels: usize,
    width: usize,
    cu_seqlens: &[usize],
    dw: &mut [F],
) -> Vec<F> {
    let d = channels;
    let mut dx = vec![F::zero(); x.len()];
    for seq in cu_seqlens.windows(2) {
        let (start, end) = (seq[0], seq[1]);
        for t in start..end {
            let dyt = &dy[t * d..(t + 1) * d];
            for j in 0..width {
                let back = width - 1 - j;
                if t < start + back {
                    continue;
                }
                let s = t - back;
                let xs = &x[s * d..(s + 1) * d];
                let dxs = &mut dx[s * d..(s + 1) * d];
                for c in 0..d {
                    dxs[c] += w[c * width + j] * dyt[c];
                    dw[c * width + j] += dyt[c] * xs[c];
                }
            }
        }
    }
    dx
}

/// One decode step with a cache of the last W raw inputs (oldest first), as FLA's
/// `ShortConvolution.step`: shift left, append x, y = Σ_j cache[j]·w[:, j].
pub fn step<F: Elem>(x: &[F], w: &[F], width: usize, cache: &mut [F]) -> Vec<F> {
    let d = x.len();
    debug_assert_eq!(cache.len(), d * width);
    cache.copy_within(d.., 0);
    cache[(width - 1) * d..].copy_from_slice(x);
    (0..d)
        .map(|c| {
            (0..width)
                .map(|j| cache[j * d + c] * w[c * width + j])
                .sum()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{max_rel_err, Rng};

    fn rand(rng: &mut Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.normal()).collect()
    }

    #[test]
    fn backward_matches_finite_differences_across_sequences() {
        let mut rng = Rng::new(11);
        let (d, width, cu) = (3, 4, vec![0, 5, 6, 9]);
        let t = *cu.last().unwrap();
        let x = rand(&mut rng, t * d);
        let w = rand(&mut rng, d * width);
        let r = rand(&mut rng, t * d);
        let loss = |x: &[f64], w: &[f64]| -> f64 {
            forward(x, w, d, width, &cu)
                .iter()
                .zip(&r)
                .map(|(a, b)| a * b)
                .sum()
        };
        let mut dw = vec![0.0; w.len()];
        let dx = backward(&x, &w, &r, d, width, &cu, &mut dw);
        let fd = |f: &dyn Fn(usize, f64) -> f64, n: usize| -> Vec<f64> {
            (0..n).map(|i| (f(i, 1e-6) - f(i, -1e-6)) / 2e-6).collect()
        };
        let fdx = fd(
            &|i, h| {
                let mut xx = x.clone();
                xx[i] += h;
                loss(&xx, &w)
            },
            x.len(),
        );
        let fdw = fd(
            &|i, h| {
                let mut ww = w.clone();
                ww[i] += h;
                loss(&x, &ww)
            },
            w.len(),
        );
        assert!(max_rel_err(&dx, &fdx) < 1e-8);
        assert!(max_rel_err(&dw, &fdw) < 1e-8);
    }

    #[test]
    fn no_tap_crosses_a_sequence_boundary_and_step_matches_forward() {
        let mut rng = Rng::new(12);
        let (d, width) = (2, 4);
        let x = rand(&mut rng, 7 * d);
        let w = rand(&mut rng, d * width);
        let joint = forward(&x, &w, d, width, &[0, 3, 7]);
        let second = forward(&x[3 * d..], &w, d, width, &[0, 4]);
        assert_eq!(&joint[3 * d..], &second[..]);
        let mut cache = vec![0.0; d * width];
        for t in 0..3 {
            let y = step(&x[t * d..(t + 1) * d], &w, width, &mut cache);
            assert!(max_rel_err(&y, &joint[t * d..(t + 1) * d]) < 1e-14);
        }
    }
}
