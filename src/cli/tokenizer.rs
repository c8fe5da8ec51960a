//! `gdn tokenizer`: train a byte-level BPE tokenizer.json.

use anyhow::Result;
use clap::{Args, Subcommand};
use gdn::data::prepare::DEFAULT_TEXT_EXTENSIONS;
use gdn::data::tokenizer::{train_bpe, DEFAULT_SPECIAL_TOKENS};
use std::path::PathBuf;

#[derive(Args)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    pub command: TokenizerCommand,
}

#[derive(Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE (every text encodes; decoding gives it back exactly) and write
    /// a Hugging Face tokenizer.json.
    Train(TrainTokenizerArgs),
}

#[derive(Args)]
pub struct TrainTokenizerArgs {
    /// Input files or folders (searched recursively) of .txt, .jsonl and .jsonl.zst, read as
    /// `gdn prepare` reads them.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Extensions of files read as one text document each, comma-separated (e.g. `txt,py,md`
    /// for a source-code corpus).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_TEXT_EXTENSIONS.map(String::from))]
    pub text_ext: Vec<String>,
    /// Vocabulary size, special tokens and the 256 byte symbols included.
    #[arg(long)]
    pub vocab_size: usize,
    /// Where to write the tokenizer.json.
    #[arg(long, default_value = "tokenizer.json")]
    pub out: PathBuf,
    /// Special tokens, comma-separated; they take the first ids. One must be an EOS (</s>,
    /// <|endoftext|>, <eos> or <|end_of_text|>). The default gives <unk>=0, <s>=1, </s>=2 as in
    /// Llama, with </s> the EOS.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_SPECIAL_TOKENS.map(String::from))]
    pub special_tokens: Vec<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: TokenizerArgs) -> Result<()> {
    match a.command {
        TokenizerCommand::Train(t) => train(t),
    }
}

fn train(a: TrainTokenizerArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let tok = train_bpe(
        &a.input,
        &a.text_ext,
        a.vocab_size,
        &a.special_tokens,
        a.quiet,
    )?;
    tok.save(&a.out)?;
    let eos = tok.eos_id();
    println!(
        "wrote {}: byte-level BPE, vocab {}, special tokens {}, EOS {:?} = {eos}, in {:.1}s",
        a.out.display(),
        tok.vocab_size(),
        a.special_tokens.join(" "),
        tok.id_to_token(eos).unwrap_or_default(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
