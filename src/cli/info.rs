//! `gdn info`.

use anyhow::Result;
use clap::Args;
use gdn::model::{config::PRESETS, Model, ModelConfig};
use std::path::PathBuf;

#[derive(Args)]
pub struct InfoArgs {
    /// Preset name.
    #[arg(long)]
    pub preset: Option<String>,
    /// A config.json or a checkpoint folder.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let (name, config) = match (&a.preset, &a.config) {
        (Some(p), _) => (p.clone(), ModelConfig::preset(p)?),
        (None, Some(path)) => (path.display().to_string(), ModelConfig::read(path)?),
        (None, None) => anyhow::bail!(
            "give --preset NAME (one of: {}) or --config FILE",
            PRESETS.join(", ")
        ),
    };
    let model = Model::new(config)?;
    let c = &model.config;
    let total = model.num_params();
    let emb = c.vocab_size * c.hidden_size;
    let heads = if c.tie_word_embeddings { 0 } else { emb };
    println!("{name}");
    println!(
        "  layers {} | width {} | GDN heads {} | MLP {} | vocab {} | {}{}",
        c.num_hidden_layers,
        c.hidden_size,
        if c.v_heads() == c.num_heads {
            format!("{} × K {} / V {}", c.num_heads, c.head_dim, c.head_v_dim())
        } else {
            format!(
                "{} q/k × K {}, {} value × V {} (GVA)",
                c.num_heads,
                c.head_dim,
                c.v_heads(),
                c.head_v_dim()
            )
        },
        c.intermediate_size,
        c.vocab_size,
        if c.tie_word_embeddings {
            "tied embeddings"
        } else {
            "untied embeddings"
        },
        if c.allow_neg_eigval {
            " | β = 2·sigmoid(b) (allow_neg_eigval)"
        } else {
            ""
        }
    );
    println!(
        "  parameters {:.1}M (blocks {:.1}M, embeddings {:.1}M, lm_head {:.1}M)",
        total as f64 / 1e6,
        (total - emb - heads - c.hidden_size) as f64 / 1e6,
        emb as f64 / 1e6,
        heads as f64 / 1e6
    );
    Ok(())
}
