//! Recurrent decoding on the GPU (spec §A.4): N sequences, one token each per step, through
//! [`GpuModel`]'s forward with each block's mixer core replaced by `ops::conv_step` on cached raw
//! conv inputs and the fused decode kernel (`delta_rule::DecodeStep`). bf16 weights and
//! activations, fp32 residual stream and recurrent state, bf16 logits (as the training forward).
//!
//! Per layer the state is what `model::decode::LayerState` holds, in the GPU kernels' layouts:
//! the last W raw q/k/v conv inputs as [N, channels, W] bf16 (oldest first; the CPU keeps
//! [N, W, channels]) and the recurrent state [N, H, K, V] f32. Everything is allocated once, in
//! [`GpuDecoder::new`], for exactly N sequences.

use super::buffer::{download_bf16, download_f32};
use super::delta_rule::DecodeStep;
use super::model::GpuModel;
use super::Gpu;
use crate::model::decode::{DecodeState, LayerState, Stepper};
use crate::model::lm::Model;
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::CudaSlice;
use half::bf16;

/// One layer's decode state for N sequences, on the device.
pub struct LayerCache {
    /// Last W raw q-conv inputs, [N, H·K, W] bf16, oldest first.
    pub(crate) conv_q: CudaSlice<bf16>,
    /// [N, H·K, W] bf16.
    pub(crate) conv_k: CudaSlice<bf16>,
    /// [N, H·V, W] bf16.
    pub(crate) conv_v: CudaSlice<bf16>,
    /// Recurrent state [N, H, K, V] f32.
    pub(crate) state: CudaSlice<f32>,
}

/// The model and the decode state of N sequences on one GPU.
pub struct GpuDecoder<'g> {
    gpu: &'g Gpu,
    model: GpuModel,
    step: DecodeStep,
    caches: Vec<LayerCache>,
    n_seqs: usize,
    /// (H·K, H·V, W) of the conv caches.
    conv_dims: (usize, usize, usize),
    positions: Vec<usize>,
}

impl<'g> GpuDecoder<'g> {
    /// Uploads `params` (host f32, the model's layout) and allocates the model's buffers for N
    /// tokens and the zero decode state of N = `n_seqs` sequences.
    pub fn new(gpu: &'g Gpu, model: &Model, params: &[f32], n_seqs: usize) -> Result<Self> {
        ensure!(n_seqs > 0, "GpuDecoder: n_seqs must be > 0");
        // (GpuModel also allocates its training buffers; fine at decode batch sizes.)
        let gm = GpuModel::new(gpu, model, params, n_seqs, n_seqs)?;
        let md = model.mixer_dims();
        let step = DecodeStep::new(gpu, md.rule(), n_seqs)?;
        let (kd, vd, w) = (md.heads * md.dk, md.v_heads * md.dv, md.width);
        let zeros = |n: usize, what: &str| -> Result<CudaSlice<bf16>> {
            gpu.stream
                .alloc_zeros::<bf16>(n)
                .with_context(|| format!("GpuDecoder: allocating `{what}` ({n} elements)"))
        };
        let caches = (0..model.config.num_hidden_layers)
            .map(|_| -> Result<LayerCache> {
                Ok(LayerCache {
                    conv_q: zeros(n_seqs * kd * w, "conv_q")?,
                    conv_k: zeros(n_seqs * kd * w, "conv_k")?,
                    conv_v: zeros(n_seqs * vd * w, "conv_v")?,
                    state: gpu
                        .stream
                        .alloc_zeros::<f32>(n_seqs * md.v_heads * md.dk * md.dv)
                        .context("GpuDecoder: allocating the recurrent state")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        gpu.sync()?;
        Ok(GpuDecoder {
            gpu,
            model: gm,
            step,
            caches,
            n_seqs,
            conv_dims: (kd, vd, w),
            positions: vec![0; n_seqs],
        })
    }

    /// Number of sequences N.
    pub fn num_seqs(&self) -> usize {
        self.n_seqs
    }

    /// Tokens consumed so far by each sequence.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// Back to the empty state (zero conv caches and recurrent states).
    pub fn reset(&mut self) -> Result<()> {
        let s = &self.gpu.stream;
        for c in &mut self.caches {
            for b in [&mut c.conv_q, &mut c.conv_k, &mut c.conv_v] {
                s.memset_zeros(b)
                    .map_err(|e| anyhow!("GpuDecoder: zeroing a conv cache failed: {e:?}"))?;
            }
            s.memset_zeros(&mut c.state)
                .map_err(|e| anyhow!("GpuDecoder: zeroing a state failed: {e:?}"))?;
        }
        self.positions.iter_mut().for_each(|p| *p = 0);
        Ok(())
    }

    /// Feeds one token per sequence (`tokens` [N]) and advances the state; the next-token
    /// logits are then in [`GpuDecoder::logits`].
    pub fn step(&mut self, tokens: &[u32]) -> Result<()> {
        ensure!(
            tokens.len() == self.n_seqs,
            "GpuDecoder::step: {} tokens for {} sequences",
            tokens.len(),
            self.n_seqs
        );
        self.model
            .decode_forward(self.gpu, tokens, &self.step, &mut self.caches)?;
        self.positions.iter_mut().for_each(|p| *p += 1);
        Ok(())
    }

    /// The logits of the last step, [N, vocab] (bf16 values, widened).
    pub fn logits(&mut self) -> Result<Vec<f32>> {
        ensure!(
            self.model.tokens_in_flight() == self.n_seqs,
            "GpuDecoder::logits: no step has run"
        );
        self.model.download_logits(self.gpu)
    }

    /// Resets, then runs the prompts (one per sequence, all of the same non-zero length)
    /// through [`GpuDecoder::step`] token by token, and returns the logits after the last
    /// prompt token [N, vocab]. Stepping the prompt is simple and exactly the decode math; a
    /// chunked prefill that returns the final state is a later optimisation.
    pub fn prefill(&mut self, prompts: &[&[u32]]) -> Result<Vec<f32>> {
        ensure!(
            prompts.len() == self.n_seqs,
            "GpuDecoder::prefill: {} prompts for {} sequences",
            prompts.len(),
            self.n_seqs
        );
        let len = prompts[0].len();
        ensure!(len > 0, "GpuDecoder::prefill: empty prompt");
        ensure!(
            prompts.iter().all(|p| p.len() == len),
            "GpuDecoder::prefill: the prompts must have the same length (lock-step decoding)"
        );
        self.reset()?;
        let mut col = vec![0u32; self.n_seqs];
        for t in 0..len {
            col.iter_mut().zip(prompts).for_each(|(c, p)| *c = p[t]);
            self.step(&col)?;
        }
        self.logits()
    }

    /// The decode state, downloaded into the CPU's [`DecodeState`] layout (conv caches
    /// [N, W, channels]), for comparisons.
    pub fn state(&self) -> Result<DecodeState<f32>> {
        let (kd, vd, w) = self.conv_dims;
        let n = self.n_seqs;
        // [N, ch, W] → [N, W, ch].
        let conv = |b: &CudaSlice<bf16>, ch: usize| -> Result<Vec<f32>> {
            let x = download_bf16(self.gpu, b)?;
            let mut y = vec![0.0f32; x.len()];
            for s in 0..n {
                for c in 0..ch {
                    for j in 0..w {
                        y[(s * w + j) * ch + c] = x[(s * ch + c) * w + j];
                    }
                }
            }
            Ok(y)
        };
        let layers = self
            .caches
            .iter()
            .map(|c| -> Result<LayerState<f32>> {
                Ok(LayerState {
                    conv_q: conv(&c.conv_q, kd)?,
                    conv_k: conv(&c.conv_k, kd)?,
                    conv_v: conv(&c.conv_v, vd)?,
                    state: download_f32(self.gpu, &c.state)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecodeState {
            layers,
            positions: self.positions.clone(),
        })
    }
}

/// One sequence (N = 1) for `model::decode::generate_with`.
impl Stepper<f32> for GpuDecoder<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        ensure!(
            self.n_seqs == 1,
            "a GpuDecoder stepper decodes one sequence"
        );
        GpuDecoder::prefill(self, &[prompt])
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        GpuDecoder::step(self, &[token])?;
        self.logits()
    }
}
