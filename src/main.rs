//! The `gdn` command line.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    Train(Box<cli::train::TrainArgs>),
    /// Tokenise text (.txt, .jsonl, .jsonl.zst) into LITPKDS token shards.
    Prepare(cli::prepare::PrepareArgs),
    /// Train a byte-level BPE tokenizer.json.
    Tokenizer(cli::tokenizer::TokenizerArgs),
    /// Validation loss and perplexity at several context lengths.
    Eval(cli::eval::EvalArgs),
    /// Continue a prompt with a checkpoint, streaming the text.
    Generate(cli::generate::GenerateArgs),
    /// Check every CUDA op and kernel against the CPU reference (or, without a GPU, the CPU kernels).
    Selftest(cli::selftest::SelftestArgs),
    /// Time the CUDA kernels (delta rule) at the peer FLA benchmark's shapes, or whole GPU
    /// training steps (`gdn bench train`).
    Bench(cli::bench::BenchArgs),
    /// Print a model's configuration and parameter count.
    Info(cli::info::InfoArgs),
    /// Save the logits a checkpoint gives for token sequences (to compare implementations).
    Logits(cli::logits::LogitsArgs),
    /// Draw a run's loss curve (training and held-out loss against the step) as a PNG.
    Plot(cli::plot::PlotArgs),
}

fn main() {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`gdn info | head -1`) panicked with
    // a backtrace; with the default action the process just ends, as other tools do.
    #[cfg(unix)]
    // SAFETY: sets a signal's action to the default before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => cli::train::run(*a),
        Command::Prepare(a) => cli::prepare::run(a),
        Command::Tokenizer(a) => cli::tokenizer::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Generate(a) => cli::generate::run(a),
        Command::Selftest(a) => cli::selftest::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Logits(a) => cli::logits::run(a),
        Command::Plot(a) => cli::plot::run(a),
    }
}
