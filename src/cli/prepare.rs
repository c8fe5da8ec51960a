//! `gdn prepare`: tokenise text into LITPKDS shards (see `gdn::data::prepare`).

use anyhow::Result;
use clap::Args;
use gdn::data::prepare::{
    prepare, PrepareConfig, DEFAULT_NAME, DEFAULT_SEED, DEFAULT_TEXT_EXTENSIONS,
    DEFAULT_VAL_FRACTION,
};
use gdn::data::shards::DEFAULT_CHUNK_SIZE;
use gdn::data::tokenizer::Tokenizer;
use std::path::PathBuf;

#[derive(Args)]
pub struct PrepareArgs {
    /// A Hugging Face tokenizer.json.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// The EOS token appended to every document (default: the first of </s>, <|endoftext|>,
    /// <eos>, <|end_of_text|> in the vocabulary).
    #[arg(long)]
    pub eos: Option<String>,
    /// Input files or folders (searched recursively) of .txt (one document per file), .jsonl
    /// and .jsonl.zst (one JSON object per line, the document in "text").
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Extensions of files read as one text document each, comma-separated (e.g. `txt,py,md`
    /// for a source-code corpus).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_TEXT_EXTENSIONS.map(String::from))]
    pub text_ext: Vec<String>,
    /// Output folder for {train,validation}_{name}_0_{counter:010}.bin and prepare.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Share of documents for validation, chosen by a seeded hash of the document index.
    #[arg(long, default_value_t = DEFAULT_VAL_FRACTION)]
    pub val_fraction: f64,
    /// Tokens per shard (the reference: 2049 x 1024). The last partial shard is dropped.
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    pub chunk_size: usize,
    /// Dataset name in the shard file names (the NVlabs training glob expects "slimpajama").
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// Seed of the train/validation split.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: PrepareArgs) -> Result<()> {
    let tok = Tokenizer::load(&a.tokenizer, a.eos.as_deref())?;
    let cfg = PrepareConfig {
        inputs: a.input,
        text_extensions: a.text_ext,
        out: a.out,
        val_fraction: a.val_fraction,
        chunk_size: a.chunk_size,
        name: a.name,
        seed: a.seed,
        quiet: a.quiet,
    };
    let t0 = std::time::Instant::now();
    let s = prepare(&tok, &cfg)?;
    print!("{s}");
    println!(
        "wrote {} in {:.1}s",
        cfg.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
