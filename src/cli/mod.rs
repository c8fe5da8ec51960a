//! The subcommands of the `gdn` binary, one module each.

pub mod bench;
pub mod eval;
pub mod generate;
pub mod info;
pub mod logits;
pub mod prepare;
pub mod selftest;
pub mod tokenizer;
pub mod train;

use anyhow::{Context, Result};
use gdn::model::ModelConfig;
use std::path::Path;

/// Reads a model `config.json`, given as the file or as the checkpoint folder holding it.
pub fn read_model_config(path: &Path) -> Result<ModelConfig> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("failed to read model config {}", file.display()))?;
    ModelConfig::from_hf_json(&text, &file.display().to_string())
}
