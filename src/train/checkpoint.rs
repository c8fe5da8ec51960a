//! Checkpoints: a folder with `model.safetensors` (FLA / Hugging Face names), `config.json`
//! (FLA's `GatedDeltaNetConfig`), and the trainer's own files beside them: `optimizer.safetensors`
//! (AdamW moments under `exp_avg.<name>` / `exp_avg_sq.<name>`) and `trainer_state.json` (step,
//! RNG states, the run's config). The folder is written atomically: a crash leaves the previous
//! checkpoint whole.

use super::config::TrainConfig;
use crate::data::packed::PackedPosition;
use crate::io;
use crate::model::safetensors_io::{self, NamedTensor};
use crate::model::{Model, ModelConfig};
use crate::tensor::Rng;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";
/// The FP8 scales of a GPU run with `--fp8` (amax histories, scales; see
/// `cuda::model::linear`), so that a resumed run continues with them.
pub const FP8_FILE: &str = "fp8_scales.safetensors";

/// What a checkpoint holds besides the model: the trainer's state, the moments, and the FP8
/// scales of an FP8 run.
pub struct TrainerFiles<'a> {
    pub state: &'a TrainerState,
    pub m: &'a [f32],
    pub v: &'a [f32],
    pub fp8_scales: Option<&'a [NamedTensor]>,
}

/// Everything besides tensors that a resumed run needs to continue bit for bit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps completed.
    pub step: usize,
    pub tokens_seen: u64,
    /// The training-data generator (MQAR draws and byte windows both come from it).
    pub data_rng: Rng,
    /// Where the token-shard reader stands (shard data only).
    #[serde(default)]
    pub data_position: Option<PackedPosition>,
    pub config: TrainConfig,
}

/// Serialises one or more flat buffers laid out like the model's parameters, each under its
/// parameter names with a prefix (`""` for the model itself).
fn named_bytes(model: &Model, sets: &[(&str, &[f32])]) -> Result<Vec<u8>> {
    let names: Vec<Vec<String>> = sets
        .iter()
        .map(|(prefix, _)| {
            model
                .layout
                .params
                .iter()
                .map(|p| format!("{prefix}{}", p.name))
                .collect()
        })
        .collect();
    let mut views: Vec<(&str, &[usize], &[f32])> = Vec::new();
    for ((_, buf), names) in sets.iter().zip(&names) {
        for (p, n) in model.layout.params.iter().zip(names) {
            views.push((n.as_str(), p.shape.as_slice(), &buf[p.range()]));
        }
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors_io::to_bytes(&views, Some(meta))
}

/// Writes a model checkpoint (what FLA loads) plus, when given, the trainer's files
/// (state, first and second moments, FP8 scales).
pub fn save(
    dir: &Path,
    model: &Model,
    params: &[f32],
    trainer: Option<TrainerFiles>,
) -> Result<()> {
    let mut files = vec![
        (MODEL_FILE, named_bytes(model, &[("", params)])?),
        (CONFIG_FILE, model.config.to_hf_json().into_bytes()),
    ];
    if let Some(t) = trainer {
        files.push((
            OPTIMIZER_FILE,
            named_bytes(model, &[("exp_avg.", t.m), ("exp_avg_sq.", t.v)])?,
        ));
        files.push((STATE_FILE, serde_json::to_vec_pretty(t.state)?));
        if let Some(scales) = t.fp8_scales {
            let views: Vec<(&str, &[usize], &[f32])> = scales
                .iter()
                .map(|t| (t.name.as_str(), t.shape.as_slice(), t.data.as_slice()))
                .collect();
            files.push((FP8_FILE, safetensors_io::to_bytes(&views, None)?));
        }
    }
    io::write_dir_atomic(dir, &files)
        .with_context(|| format!("failed to write checkpoint {}", dir.display()))
}

/// Reads `config.json` of a checkpoint folder.
pub fn load_config(dir: &Path) -> Result<ModelConfig> {
    io::recover_dir(dir)?;
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read checkpoint config {}", path.display()))?;
    ModelConfig::from_hf_json(&text, &path.display().to_string())
}

/// Fills a flat buffer laid out for `model` from named tensors, checking every name and shape.
/// `prefix` selects a set in a file holding several; tensors FLA saves but gdn does not use
/// (the pre-2025 `attn.D`) are ignored.
fn fill(model: &Model, tensors: &[NamedTensor], prefix: &str, origin: &str) -> Result<Vec<f32>> {
    let by_name: HashMap<&str, &NamedTensor> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut out = vec![0.0f32; model.layout.total];
    for p in &model.layout.params {
        let name = format!("{prefix}{}", p.name);
        let Some(t) = by_name.get(name.as_str()) else {
            bail!(
                "{origin}: tensor `{name}` is missing (the checkpoint does not match config.json)"
            );
        };
        // Conv weights may be saved [D, W] or [D, 1, W]; only the element count and order matter.
        let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        ensure!(
            squeeze(&t.shape) == squeeze(&p.shape),
            "{origin}: tensor `{name}` has shape {:?}, the config needs {:?}",
            t.shape,
            p.shape
        );
        out[p.range()].copy_from_slice(&t.data);
    }
    let known: std::collections::HashSet<String> = model
        .layout
        .params
        .iter()
        .map(|p| format!("{prefix}{}", p.name))
        .collect();
    for t in tensors.iter().filter(|t| t.name.starts_with(prefix)) {
        let ignorable = t.name.ends_with(".attn.D")
            || (model.config.tie_word_embeddings && t.name == "lm_head.weight");
        ensure!(
            known.contains(&t.name) || ignorable,
            "{origin}: unexpected tensor `{}` (another architecture?)",
            t.name
        );
    }
    Ok(out)
}

/// Loads the model of a checkpoint folder: its config and parameters.
pub fn load_model(dir: &Path) -> Result<(Model, Vec<f32>)> {
    let config = load_config(dir)?;
    let model = Model::new(config)?;
    let path = dir.join(MODEL_FILE);
    let (tensors, _) = safetensors_io::read(&path)?;
    let params = fill(&model, &tensors, "", &path.display().to_string())?;
    Ok((model, params))
}

/// The FP8 scales a checkpoint holds (`None`: it has none, e.g. a run without `--fp8`).
pub fn load_fp8_scales(dir: &Path) -> Result<Option<Vec<NamedTensor>>> {
    let path = dir.join(FP8_FILE);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(safetensors_io::read(&path)?.0))
}

/// Loads the trainer's state and moments (m, v) of a checkpoint folder.
pub fn load_trainer(dir: &Path, model: &Model) -> Result<(TrainerState, Vec<f32>, Vec<f32>)> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read trainer state {}", path.display()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed trainer state", path.display()))?;
    ensure!(
        state.config.model == model.config,
        "{}: the run's model config differs from {}",
        path.display(),
        dir.join(CONFIG_FILE).display()
    );
    let opath = dir.join(OPTIMIZER_FILE);
    let (tensors, _) = safetensors_io::read(&opath)?;
    let origin = opath.display().to_string();
    let m = fill(model, &tensors, "exp_avg.", &origin)?;
    let v = fill(model, &tensors, "exp_avg_sq.", &origin)?;
    Ok((state, m, v))
}
