//! The subcommands of the `gdn` binary, one module each.

pub mod bench;
pub mod eval;
pub mod generate;
pub mod info;
pub mod logits;
pub mod plot;
pub mod prepare;
pub mod selftest;
pub mod tokenizer;
pub mod train;

use anyhow::{bail, Result};
use clap::ValueEnum;

/// `--device`, shared by every command that can run on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The GPU when one is usable, else the CPU (saying why).
    Auto,
    Cpu,
    Cuda,
}

impl DeviceArg {
    /// Whether to use the GPU. `--device cuda` without a usable GPU is an error giving the
    /// reason; `auto` falls back with one line saying why and what it does instead (`fallback`).
    pub fn use_gpu(self, fallback: &str) -> Result<bool> {
        let (gpu, why) = self.resolve()?;
        if let Some(why) = why {
            eprintln!("no usable GPU ({why}); {fallback}");
        }
        Ok(gpu)
    }

    /// As [`DeviceArg::use_gpu`], returning the reason for a fallback instead of printing it
    /// (for commands that print it with their own start-up lines).
    pub fn resolve(self) -> Result<(bool, Option<String>)> {
        Ok(match self {
            DeviceArg::Cpu => (false, None),
            DeviceArg::Cuda => {
                if let Some(why) = gdn::cuda::unavailable_reason() {
                    bail!("--device cuda: no usable GPU: {why}");
                }
                (true, None)
            }
            DeviceArg::Auto => match gdn::cuda::unavailable_reason() {
                None => (true, None),
                Some(why) => (false, Some(why)),
            },
        })
    }
}
