//! `gdn generate`: continue a prompt with a checkpoint, streaming the text as it comes.

use super::DeviceArg;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use gdn::cuda::{self, decode::GpuDecoder, Gpu};
use gdn::data::tokenizer::Tokenizer;
use gdn::model::decode::{generate_with, CpuStepper, GenerateOptions, Stepper, StopReason};
use gdn::model::sample::{ByteCodec, Sampler, StreamDecoder, TextCodec};
use gdn::model::ModelConfig;
use gdn::train::checkpoint;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct GenerateArgs {
    /// Checkpoint folder (config.json + model.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The text to continue.
    #[arg(long)]
    pub prompt: String,
    /// Most new tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Sample only among the K most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: the smallest set of most likely tokens with mass ≥ P (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A Hugging Face tokenizer.json (default: the checkpoint's own; none needed for a
    /// byte-level model, vocab 256).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// An extra token id that ends generation (besides the tokenizer's EOS).
    #[arg(long)]
    pub eos: Option<u32>,
    /// Print the prompt before the continuation.
    #[arg(long)]
    pub echo: bool,
    /// Where to decode: the GPU (bf16 weights, fp32 state) when usable, else the CPU (f32).
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
}

/// The text codec for a model: the given tokenizer.json, else the checkpoint's own
/// tokenizer.json if it has one, else byte-level when the vocabulary is 256.
pub fn codec_for(
    config: &ModelConfig,
    checkpoint: &Path,
    tokenizer: Option<&Path>,
) -> Result<Box<dyn TextCodec>> {
    let config_file = checkpoint.join(checkpoint::CONFIG_FILE);
    let own = checkpoint.join("tokenizer.json");
    let file = tokenizer
        .map(Path::to_path_buf)
        .or_else(|| own.is_file().then_some(own));
    let codec: Box<dyn TextCodec> = match file {
        Some(path) => Box::new(Tokenizer::load(&path, None)?),
        None if config.vocab_size == 256 => Box::new(ByteCodec),
        None => bail!(
            "{}: vocab_size is {}, not 256 (byte-level), and the checkpoint has no tokenizer.json; pass --tokenizer tokenizer.json",
            config_file.display(),
            config.vocab_size
        ),
    };
    // Models pad the vocabulary up to a multiple of 64 (NVlabs, FLA): anything else means the
    // tokenizer is not the one the model was trained with.
    let (ids, vocab) = (codec.vocab_size(), config.vocab_size);
    ensure!(
        ids <= vocab && vocab <= ids.div_ceil(64) * 64,
        "the tokenizer has {ids} ids but vocab_size is {vocab} in {} (expected {ids}, or {ids} padded to a multiple of 64): it is not this model's tokenizer",
        config_file.display()
    );
    Ok(codec)
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let sampler = Sampler {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
    };
    sampler.validate()?;
    let (model, params) = checkpoint::load_model(&a.checkpoint)?;
    let codec = codec_for(&model.config, &a.checkpoint, a.tokenizer.as_deref())?;
    let prompt = codec.encode(&a.prompt)?;
    ensure!(!prompt.is_empty(), "--prompt is empty");
    // The GPU when asked for (or usable, under auto) and its kernels support the model's sizes.
    let mut use_gpu = a.device.use_gpu("decoding on the CPU")?;
    if use_gpu {
        if let Err(e) = cuda::model::check_model(&model) {
            if a.device == DeviceArg::Cuda {
                bail!("--device cuda: the CUDA kernels do not support this model: {e:#}");
            }
            eprintln!("the CUDA kernels do not support this model ({e:#}); decoding on the CPU");
            use_gpu = false;
        }
    }
    let gpu = if use_gpu { Some(Gpu::open(0)?) } else { None };
    let mut stepper: Box<dyn Stepper<f32> + '_> = match &gpu {
        Some(g) => {
            eprintln!("[decoding on {} ({})]", g.name, g.arch);
            Box::new(GpuDecoder::new(g, &model, &params, 1)?)
        }
        None => Box::new(CpuStepper::new(&model, &params)),
    };
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampler,
        stop_tokens: codec.eos().into_iter().chain(a.eos).collect(),
        seed: a.seed,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.echo {
        write!(out, "{}", a.prompt)
            .and_then(|_| out.flush())
            .context("writing to stdout")?;
    }
    let mut dec = StreamDecoder::new();
    let start = Instant::now();
    let g = generate_with(stepper.as_mut(), &prompt, &opts, &mut |t| {
        let text = dec.push(codec.as_ref(), t);
        if !text.is_empty() {
            write!(out, "{text}")
                .and_then(|_| out.flush())
                .context("writing to stdout")?;
        }
        Ok(())
    })?;
    let rest = dec.finish(codec.as_ref());
    writeln!(out, "{rest}")
        .and_then(|_| out.flush())
        .context("writing to stdout")?;
    let secs = start.elapsed().as_secs_f64();
    let why = match g.stop {
        StopReason::MaxTokens => "max tokens".to_string(),
        StopReason::StopToken(t) => format!("stop token {t}"),
    };
    eprintln!(
        "[{} prompt + {} new tokens in {secs:.2}s ({:.1} tokens/s); stopped at {why}]",
        prompt.len(),
        g.tokens.len(),
        g.tokens.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}
