//! The `gdn` command line: train, info.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use gdn::data::mqar::MqarConfig;
use gdn::model::{config::PRESETS, Model, ModelConfig};
use gdn::train::{trainer::RunOptions, DataSpec, TrainConfig};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "gdn",
    version,
    about = "Gated DeltaNet: train, evaluate and inspect GDN language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model. With no arguments: a small GDN on the MQAR recall task, on the CPU,
    /// until 99% held-out query accuracy.
    Train(Box<TrainArgs>),
    /// Print a model's configuration and parameter count.
    Info(InfoArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// A text file to train a byte-level language model on (instead of MQAR).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Model preset (tiny, mqar, small, fla-1.3b, nvlabs-0.4b, nvlabs-1.3b).
    #[arg(long)]
    preset: Option<String>,
    /// A model config.json (FLA's format) instead of a preset.
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// The run folder (config, metrics.jsonl, checkpoint/). Default: runs/mqar or runs/<file stem>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in --out exactly where its checkpoint left it.
    #[arg(long)]
    resume: bool,
    /// Optimiser steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches accumulated per optimiser step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Sequence length (byte-level data; MQAR: the task's length).
    #[arg(long)]
    seq_len: Option<usize>,
    /// MQAR key–value pairs per sequence.
    #[arg(long)]
    kv_pairs: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Final learning rate of the cosine (default lr/10).
    #[arg(long)]
    min_lr: Option<f64>,
    /// Linear warm-up steps.
    #[arg(long)]
    warmup: Option<usize>,
    /// AdamW weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Keep norms, biases, A_log and dt_bias out of weight decay.
    #[arg(long)]
    no_decay_norms: bool,
    /// Global gradient-norm clip (0: off).
    #[arg(long)]
    clip: Option<f64>,
    /// Seed of initialisation, data and evaluation draws.
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluate every N steps.
    #[arg(long)]
    eval_every: Option<usize>,
    /// Checkpoint every N steps.
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Stop after this many steps in total (checkpointed; continue with --resume).
    #[arg(long)]
    stop_after: Option<usize>,
    /// No progress bar or console lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct InfoArgs {
    /// Preset name.
    #[arg(long)]
    preset: Option<String>,
    /// A config.json or a checkpoint folder.
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train(*a),
        Command::Info(a) => info(a),
    }
}

fn read_model_config(path: &Path) -> Result<ModelConfig> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("failed to read model config {}", file.display()))?;
    ModelConfig::from_hf_json(&text, &file.display().to_string())
}

fn train(a: TrainArgs) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| match &a.data {
        Some(p) => PathBuf::from("runs").join(p.file_stem().unwrap_or_default()),
        None => PathBuf::from("runs/mqar"),
    });
    let opts = RunOptions {
        out,
        resume: a.resume,
        stop_after: a.stop_after,
        quiet: a.quiet,
    };
    let config = if a.resume {
        None
    } else {
        Some(train_config(&a)?)
    };
    let o = gdn::train::train(config, &opts)?;
    let eval = match &o.eval {
        Some(e) => match e.accuracy {
            Some(acc) => format!(
                "held-out query accuracy {:.2}%, eval loss {:.4}",
                100.0 * acc,
                e.loss
            ),
            None => format!(
                "eval loss {:.4} ({:.3} bits/byte)",
                e.loss,
                e.loss / std::f64::consts::LN_2
            ),
        },
        None => "no evaluation".into(),
    };
    println!(
        "done: {} steps in {:.0}s, last loss {:.4}, {eval}; checkpoint {}",
        o.steps,
        o.seconds,
        o.last_loss,
        o.checkpoint.display()
    );
    Ok(())
}

fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut c = TrainConfig::mqar_default();
    if let Some(path) = &a.data {
        c.model = ModelConfig::preset("small")?;
        c.data = DataSpec::Bytes {
            path: path.clone(),
            seq_len: a.seq_len.unwrap_or(256),
        };
        c.batch_size = 16;
        c.target_accuracy = None;
        c.eval_size = 8;
        c.steps = 1000;
        c.schedule.lr = 2e-3;
        c.schedule.warmup_steps = 50;
    }
    if let Some(p) = &a.preset {
        c.model = ModelConfig::preset(p)?;
    }
    if let Some(p) = &a.config {
        c.model = read_model_config(p)?;
    }
    if let DataSpec::Mqar(m) = &mut c.data {
        *m = MqarConfig {
            vocab: c.model.vocab_size,
            seq_len: a.seq_len.unwrap_or(m.seq_len),
            num_kv_pairs: a.kv_pairs.unwrap_or(m.num_kv_pairs),
            ..m.clone()
        };
    }
    let set = |dst: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *dst = v
        }
    };
    set(&mut c.steps, a.steps);
    set(&mut c.batch_size, a.batch_size);
    set(&mut c.grad_accum, a.grad_accum);
    set(&mut c.eval_every, a.eval_every);
    set(&mut c.checkpoint_every, a.checkpoint_every);
    set(&mut c.schedule.warmup_steps, a.warmup);
    c.schedule.total_steps = c.steps;
    if let Some(lr) = a.lr {
        c.schedule.lr = lr;
        c.schedule.min_lr = lr / 10.0;
    }
    if let Some(m) = a.min_lr {
        c.schedule.min_lr = m;
    }
    if let Some(w) = a.weight_decay {
        c.adamw.weight_decay = w;
    }
    c.adamw.exempt_norms_and_biases |= a.no_decay_norms;
    if let Some(clip) = a.clip {
        c.clip = clip;
    }
    if let Some(s) = a.seed {
        c.seed = s;
    }
    Ok(c)
}

fn info(a: InfoArgs) -> Result<()> {
    let (name, config) = match (&a.preset, &a.config) {
        (Some(p), _) => (p.clone(), ModelConfig::preset(p)?),
        (None, Some(path)) => (path.display().to_string(), read_model_config(path)?),
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
        "  layers {} | width {} | GDN heads {} × K {} / V {} | MLP {} | vocab {} | {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.num_heads,
        c.head_dim,
        c.head_v_dim(),
        c.intermediate_size,
        c.vocab_size,
        if c.tie_word_embeddings {
            "tied embeddings"
        } else {
            "untied embeddings"
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
