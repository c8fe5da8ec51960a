//! The flat parameter buffer: every parameter of a model lives in one `Vec`, addressed by named
//! views (name → offset, shape) that use FLA / Hugging Face names (spec §F). Gradients use a
//! second buffer with the same layout.

use super::config::{Init, ModelConfig};
use crate::tensor::{Elem, Rng};
use std::ops::Range;

/// What a parameter is, which decides its initialisation and weight decay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Embedding,
    Linear,
    /// The MLP down projection, which NVlabs rescales by 1/√(2L).
    LinearOut,
    Conv,
    Norm,
    Bias,
    ALog,
    DtBias,
}

impl Kind {
    /// Parameters that the "exempt norms, biases, A_log and dt_bias" switch keeps out of decay.
    pub fn is_exempt_from_decay(self) -> bool {
        matches!(self, Kind::Norm | Kind::Bias | Kind::ALog | Kind::DtBias)
    }
}

#[derive(Clone, Debug)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub kind: Kind,
}

impl ParamInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Every parameter starts at a multiple of this many elements (256 bytes in bf16). Packed
/// without gaps, the small tensors (A_log, dt_bias: one value per head) left every later weight
/// only 4-byte aligned, and cuBLASLt then runs its slow unvectorised kernels on them: measured on
/// the H200, the 1.3B step's matmuls ran at ~380 TFLOP/s against PyTorch's ~700 on the same shapes.
pub const PARAM_ALIGN: usize = 128;

/// Ordered named views into the flat buffer; the gaps between them (fewer than [`PARAM_ALIGN`]
/// elements each) hold zeros, which AdamW and the gradient norm leave at zero.
#[derive(Clone, Debug, Default)]
pub struct ParamLayout {
    pub params: Vec<ParamInfo>,
    /// Length of the flat buffer, gaps included.
    pub total: usize,
}

impl ParamLayout {
    /// Appends a parameter (at the next multiple of [`PARAM_ALIGN`]) and returns its range in
    /// the flat buffer.
    pub fn push(&mut self, name: String, shape: Vec<usize>, kind: Kind) -> Range<usize> {
        let info = ParamInfo {
            name,
            shape,
            offset: self.total.next_multiple_of(PARAM_ALIGN),
            kind,
        };
        self.total = info.offset + info.len();
        let r = info.range();
        self.params.push(info);
        r
    }

    /// Number of parameters (the gaps not counted).
    pub fn num_params(&self) -> usize {
        self.params.iter().map(ParamInfo::len).sum()
    }

    pub fn get(&self, name: &str) -> Option<&ParamInfo> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Fresh parameters per spec §A.3. Each block of [`INIT_BLOCK`] values of a parameter draws
    /// from its own stream, seeded by one draw of `rng`, the parameter's index and the block's,
    /// so that the blocks fill in parallel (a 1.3B model is 1.4e9 draws, most of a minute on one
    /// core) and the values do not depend on the number of threads.
    pub fn init<F: Elem>(&self, config: &ModelConfig, rng: &mut Rng) -> Vec<F> {
        let mut data = vec![F::zero(); self.total];
        let base = rng.next_u64();
        let mut blocks = Vec::new();
        let (mut rest, mut at) = (&mut data[..], 0);
        for (i, p) in self.params.iter().enumerate() {
            let (_gap, tail) = rest.split_at_mut(p.offset - at);
            let (mine, tail) = tail.split_at_mut(p.len());
            (rest, at) = (tail, p.offset + p.len());
            blocks.extend(
                mine.chunks_mut(INIT_BLOCK)
                    .enumerate()
                    .map(|(j, out)| (p, block_seed(base, i, j), out)),
            );
        }
        let queue = std::sync::Mutex::new(blocks.into_iter());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::thread::scope(|sc| {
            for _ in 0..threads {
                // The guard is consumed by `map_or`, so no thread holds the lock while it fills.
                sc.spawn(|| {
                    while let Some((p, seed, out)) = queue.lock().map_or(None, |mut q| q.next()) {
                        Sampler::of(p, config).fill(out, &mut Rng::new(seed));
                    }
                });
            }
        });
        data
    }
}

/// Values per stream in [`ParamLayout::init`].
const INIT_BLOCK: usize = 1 << 20;

/// The seed of block `j` of parameter `i`'s initial values.
fn block_seed(base: u64, i: usize, j: usize) -> u64 {
    base ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (j as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// The distribution of a parameter's initial values (spec §A.3).
enum Sampler {
    Normal(f64),
    /// U(−bound, bound).
    Uniform(f64),
    Const(f64),
    /// A ~ U(0, 16], A_log = ln A.
    ALog,
    /// dt log-uniform in [1e-3, 0.1], clamped ≥ 1e-4, stored as softplus⁻¹(dt).
    DtBias,
}

impl Sampler {
    fn of(p: &ParamInfo, config: &ModelConfig) -> Sampler {
        let fan_in = *p.shape.last().unwrap_or(&1) as f64;
        match (p.kind, config.init) {
            (Kind::Embedding, _) | (Kind::Linear | Kind::LinearOut | Kind::Conv, Init::Fla) => {
                Sampler::Normal(config.initializer_range)
            }
            // PyTorch's default: kaiming-uniform(a=√5) gives U(±1/√fan_in); the conv weight
            // [D, 1, W] has fan_in W.
            (Kind::Linear, Init::Nvlabs) | (Kind::Conv, Init::Nvlabs) => {
                Sampler::Uniform(1.0 / fan_in.sqrt())
            }
            (Kind::LinearOut, Init::Nvlabs) => {
                let layers = config.num_hidden_layers as f64;
                Sampler::Uniform(1.0 / fan_in.sqrt() / (2.0 * layers).sqrt())
            }
            (Kind::Norm, _) => Sampler::Const(1.0),
            (Kind::Bias, _) => Sampler::Const(0.0),
            (Kind::ALog, _) => Sampler::ALog,
            (Kind::DtBias, _) => Sampler::DtBias,
        }
    }

    fn fill<F: Elem>(&self, out: &mut [F], r: &mut Rng) {
        let mut each = |f: &mut dyn FnMut(&mut Rng) -> f64| {
            out.iter_mut().for_each(|x| *x = F::of(f(r)));
        };
        match *self {
            // Both values of each Box–Muller pair: normals are most of the draws.
            Sampler::Normal(std) => {
                for pair in out.chunks_mut(2) {
                    let (a, b) = r.normal_pair();
                    pair[0] = F::of(std * a);
                    if let Some(x) = pair.get_mut(1) {
                        *x = F::of(std * b);
                    }
                }
            }
            Sampler::Uniform(bound) => each(&mut |r| bound * (2.0 * r.uniform() - 1.0)),
            Sampler::Const(c) => each(&mut |_| c),
            Sampler::ALog => each(&mut |r| (16.0 * (1.0 - r.uniform())).ln()),
            Sampler::DtBias => each(&mut |r| {
                let (lo, hi) = (0.001f64.ln(), 0.1f64.ln());
                let dt = (r.uniform() * (hi - lo) + lo).exp().max(1e-4);
                dt + (-(-dt).exp_m1()).ln()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(x: &[f32]) -> (f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    #[test]
    fn init_is_seeded_blockwise_and_follows_each_kind() {
        let mut config = ModelConfig::preset("tiny").unwrap();
        let mut layout = ParamLayout::default();
        // Wider than two blocks, so that blocks after the first are drawn too.
        let big = layout.push("w".into(), vec![2100, 1024], Kind::Linear);
        let norm = layout.push("norm".into(), vec![3], Kind::Norm);
        let a_log = layout.push("a_log".into(), vec![1000], Kind::ALog);
        let dt = layout.push("dt".into(), vec![1000], Kind::DtBias);
        let out = layout.push("down".into(), vec![64, 4096], Kind::LinearOut);
        let p: Vec<f32> = layout.init(&config, &mut Rng::new(3));
        assert_eq!(p, layout.init::<f32>(&config, &mut Rng::new(3)));
        assert_ne!(p, layout.init::<f32>(&config, &mut Rng::new(4)));
        // The blocks of one parameter are different draws, not copies.
        assert_ne!(
            p[big.start..big.start + 8],
            p[big.start + INIT_BLOCK..][..8]
        );
        let (mean, std) = moments(&p[big.clone()]);
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!(
            (std / config.initializer_range - 1.0).abs() < 0.01,
            "std {std}"
        );
        assert!(p[norm.clone()].iter().all(|&v| v == 1.0));
        assert!(p[a_log.clone()]
            .iter()
            .all(|&v| v <= 16f32.ln() && v > -30.0));
        let softplus = |x: f32| (x as f64).exp().ln_1p();
        assert!(p[dt]
            .iter()
            .all(|&v| (0.99e-3..=0.101).contains(&softplus(v))));
        // The gap after the 3-value norm stays zero.
        assert_eq!(a_log.start - norm.end, PARAM_ALIGN - 3);
        assert!(p[norm.end..a_log.start].iter().all(|&v| v == 0.0));
        // NVlabs: LinearOut ~ U(±1/√fan_in/√(2L)).
        config.init = Init::Nvlabs;
        let p: Vec<f32> = layout.init(&config, &mut Rng::new(3));
        let bound = 1.0 / 4096f64.sqrt() / (2.0 * config.num_hidden_layers as f64).sqrt();
        let (_, std) = moments(&p[out.clone()]);
        assert!(p[out].iter().all(|&v| (v as f64).abs() <= bound));
        assert!(
            (std / (bound / 3f64.sqrt()) - 1.0).abs() < 0.02,
            "std {std}"
        );
    }
}
