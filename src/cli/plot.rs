//! `gdn plot`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct PlotArgs {
    /// The run folder (as given to `gdn train --out`): its metrics.jsonl is plotted.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Where to write the PNG [default: DIR/loss.png].
    #[arg(long, value_name = "PNG")]
    pub out: Option<PathBuf>,
}

pub fn run(a: PlotArgs) -> Result<()> {
    let metrics = a.run.join(gdn::train::trainer::METRICS_FILE);
    let out = a.out.unwrap_or_else(|| a.run.join("loss.png"));
    gdn::plot::write_loss_curve(&metrics, &out)?;
    println!("{}", out.display());
    Ok(())
}
