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

    /// Fresh parameters per spec §A.3.
    pub fn init<F: Elem>(&self, config: &ModelConfig, rng: &mut Rng) -> Vec<F> {
        let mut data = vec![F::zero(); self.total];
        let std = config.initializer_range;
        let layers = config.num_hidden_layers as f64;
        for p in &self.params {
            let out = &mut data[p.range()];
            let fan_in = *p.shape.last().unwrap_or(&1) as f64;
            let mut fill = |f: &mut dyn FnMut(&mut Rng) -> f64| {
                out.iter_mut().for_each(|x| *x = F::of(f(rng)));
            };
            match (p.kind, config.init) {
                (Kind::Embedding, _) => fill(&mut |r| std * r.normal()),
                (Kind::Linear | Kind::LinearOut | Kind::Conv, Init::Fla) => {
                    fill(&mut |r| std * r.normal())
                }
                (Kind::Linear, Init::Nvlabs) | (Kind::Conv, Init::Nvlabs) => {
                    // PyTorch's default: kaiming-uniform(a=√5) gives U(±1/√fan_in); the conv
                    // weight [D, 1, W] has fan_in W.
                    let bound = 1.0 / fan_in.sqrt();
                    fill(&mut |r| bound * (2.0 * r.uniform() - 1.0))
                }
                (Kind::LinearOut, Init::Nvlabs) => {
                    let bound = 1.0 / fan_in.sqrt() / (2.0 * layers).sqrt();
                    fill(&mut |r| bound * (2.0 * r.uniform() - 1.0))
                }
                (Kind::Norm, _) => fill(&mut |_| 1.0),
                (Kind::Bias, _) => fill(&mut |_| 0.0),
                // A ~ U(0, 16], A_log = ln A.
                (Kind::ALog, _) => fill(&mut |r| (16.0 * (1.0 - r.uniform())).ln()),
                // dt log-uniform in [1e-3, 0.1], clamped ≥ 1e-4, stored as softplus⁻¹(dt).
                (Kind::DtBias, _) => fill(&mut |r| {
                    let (lo, hi) = (0.001f64.ln(), 0.1f64.ln());
                    let dt = (r.uniform() * (hi - lo) + lo).exp().max(1e-4);
                    dt + (-(-dt).exp_m1()).ln()
                }),
            }
        }
        data
    }
}
