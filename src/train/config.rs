//! What a training run is: the model, the data, the optimiser and schedule, the cadence of
//! evaluation and checkpoints. Saved in the run folder and in every checkpoint, so that
//! `--resume` needs nothing else.

use super::adamw::AdamWConfig;
use super::schedule::Schedule;
use crate::data::mqar::MqarConfig;
use crate::model::ModelConfig;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataSpec {
    /// Synthetic multi-query associative recall, generated from the run's seed.
    Mqar(MqarConfig),
    /// Byte-level language modelling on a text file (last 10% held out).
    Bytes { path: PathBuf, seq_len: usize },
    /// Token shards written by `gdn prepare` (or the NVlabs / Samba scripts): `train*` and
    /// `val*` LITPKDS files in one folder, read with the NVlabs sampling.
    Shards { dir: PathBuf, seq_len: usize },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub data: DataSpec,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Optimiser steps.
    pub steps: usize,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip (0 turns it off).
    pub clip: f64,
    pub seed: u64,
    /// Evaluate every this many steps (and at the end).
    pub eval_every: usize,
    /// Sequences (MQAR) or batches (bytes) held out for evaluation.
    pub eval_size: usize,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Stop early once the MQAR held-out query accuracy reaches this.
    pub target_accuracy: Option<f64>,
}

impl TrainConfig {
    /// The main job's default: a small GDN on MQAR (sequence 128, 8 key–value pairs).
    pub fn mqar_default() -> Self {
        let model = ModelConfig::preset("mqar").expect("mqar preset exists");
        let data = MqarConfig {
            vocab: model.vocab_size,
            seq_len: 128,
            num_kv_pairs: 8,
            power_a: 0.01,
            // Zeros between queries: with random filler, a filler token equal to a key would
            // overwrite that key's association before it is queried.
            random_non_queries: false,
        };
        let steps = 3000;
        TrainConfig {
            model,
            data: DataSpec::Mqar(data),
            batch_size: 64,
            grad_accum: 1,
            steps,
            schedule: Schedule {
                lr: 3e-3,
                min_lr: 3e-4,
                warmup_steps: 100,
                total_steps: steps,
            },
            adamw: AdamWConfig::default(),
            clip: 1.0,
            seed: 3407,
            eval_every: 50,
            eval_size: 512,
            checkpoint_every: 200,
            target_accuracy: Some(0.99),
        }
    }

    /// Sequence length of the training batches.
    pub fn seq_len(&self) -> usize {
        match &self.data {
            DataSpec::Mqar(m) => m.seq_len,
            DataSpec::Bytes { seq_len, .. } | DataSpec::Shards { seq_len, .. } => *seq_len,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        if let DataSpec::Mqar(m) = &self.data {
            m.validate()?;
            ensure!(
                m.vocab <= self.model.vocab_size,
                "MQAR vocab {} exceeds the model's vocab_size {}",
                m.vocab,
                self.model.vocab_size
            );
        }
        for (name, v) in [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("steps", self.steps),
            ("eval_every", self.eval_every),
            ("eval_size", self.eval_size),
            ("checkpoint_every", self.checkpoint_every),
            ("seq_len", self.seq_len()),
        ] {
            ensure!(v > 0, "training option `{name}` must be positive, got {v}");
        }
        let s = &self.schedule;
        ensure!(
            s.lr > 0.0 && s.lr.is_finite(),
            "training option `lr` must be positive, got {}",
            s.lr
        );
        ensure!(
            s.min_lr >= 0.0 && s.min_lr <= s.lr,
            "training option `min_lr` must lie in [0, lr], got {}",
            s.min_lr
        );
        Ok(())
    }
}
