//! `gdn eval`: validation loss and perplexity of a checkpoint at several context lengths.

use super::DeviceArg;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use gdn::cuda::{train::GpuScorer, Gpu};
use gdn::eval::{evaluate_shards, evaluate_tokens, CpuScorer, EvalOptions, Scorer};
use gdn::train::checkpoint;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Split {
    /// The whole file.
    All,
    /// The last 10% of the tokens: the split `gdn train --data` holds out.
    Valid,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Checkpoint folder (config.json + model.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A text file (read as raw bytes for byte-level models, else tokenized).
    #[arg(long, required_unless_present = "shards")]
    pub data: Option<PathBuf>,
    /// A folder of LITPKDS token shards (`gdn prepare` output) instead of a text file; the
    /// files `{shards}/{prefix}*` are read as the reference's validation loader does.
    #[arg(long, conflicts_with_all = ["data", "split", "tokenizer"])]
    pub shards: Option<PathBuf>,
    /// File-name prefix of the shards to evaluate.
    #[arg(long, default_value = "val", requires = "shards")]
    pub prefix: String,
    /// Context lengths, comma-separated; blocks of max + 1 tokens are scored once.
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024")]
    pub lengths: Vec<usize>,
    /// Score at most this many blocks.
    #[arg(long)]
    pub max_blocks: Option<usize>,
    /// Blocks per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Which part of the text file to score [default: all].
    #[arg(long, value_enum)]
    pub split: Option<Split>,
    /// A Hugging Face tokenizer.json (default: the checkpoint's own; none needed for a
    /// byte-level model, vocab 256).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where to run the model (the GPU in bf16 with fp32 losses; the CPU in fp32).
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let (model, params) = checkpoint::load_model(&a.checkpoint)?;
    let opts = EvalOptions {
        lengths: a.lengths.clone(),
        max_blocks: a.max_blocks,
        batch_blocks: a.batch,
    };
    opts.validate()?;
    let quiet = a.quiet;
    let mut scorer: Box<dyn Scorer + '_> = if a.device.use_gpu("evaluating on the CPU")? {
        let t = opts.block_len() - 1;
        Box::new(GpuScorer::new(Gpu::open(0)?, &model, &params, t, a.batch)?)
    } else {
        Box::new(CpuScorer {
            model: &model,
            params: &params,
        })
    };
    let mut progress = |done: usize| {
        if !quiet {
            eprint!("\reval: {done} blocks");
        }
    };
    let (report, source) = match (&a.shards, &a.data) {
        (Some(dir), _) => {
            let r = evaluate_shards(scorer.as_mut(), dir, &a.prefix, &opts, &mut progress)?;
            (r, ("shards", format!("{}/{}*", dir.display(), a.prefix)))
        }
        (None, Some(data)) => {
            let codec =
                super::generate::codec_for(&model.config, &a.checkpoint, a.tokenizer.as_deref())?;
            let bytes = std::fs::read(data)
                .with_context(|| format!("failed to read data file {}", data.display()))?;
            let mut tokens = codec
                .encode_bytes(&bytes)
                .with_context(|| format!("data file {}", data.display()))?;
            if a.split == Some(Split::Valid) {
                tokens.drain(..tokens.len() - tokens.len() / 10);
            }
            let r = evaluate_tokens(scorer.as_mut(), &tokens, &opts, &mut progress)
                .with_context(|| format!("data file {}", data.display()))?;
            (r, ("data", data.display().to_string()))
        }
        (None, None) => bail!("give --data FILE or --shards DIR"),
    };
    if !quiet {
        eprintln!();
    }
    print!("{}", report.table());
    if let Some(path) = &a.json {
        let mut j = serde_json::to_value(&report)?;
        let o = j.as_object_mut().expect("report is an object");
        o.insert(
            "checkpoint".into(),
            a.checkpoint.display().to_string().into(),
        );
        o.insert(source.0.into(), source.1.into());
        if let Some(split) = a.split {
            o.insert("split".into(), format!("{split:?}").to_lowercase().into());
        }
        std::fs::write(path, serde_json::to_string_pretty(&j)? + "\n")
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(())
}
