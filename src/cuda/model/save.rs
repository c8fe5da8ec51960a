//! What a training step keeps between a block's forward and its backward (`--save`), and the
//! plan that mode resolves to for a model (how many copies of each recomputable group exist).

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// `gdn train --save`: how much of each block's forward the step keeps for the backward.
/// Every mode computes the same values with the same kernels on the same inputs, so the loss
/// curve is bit for bit the same whatever the mode (only memory and time change).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SaveMode {
    /// One block's activations in all: each block's forward is re-run before its backward
    /// (`--recompute`; the least memory, about a fifth more time).
    Recompute,
    /// Per block the projections, gates and outputs only; the backward recomputes the MLP's
    /// norm, gate/up and SwiGLU and the mixer's convs, SiLU / L2 norm and norms (the default).
    #[default]
    Lean,
    /// As `lean`, but the MLP's gate/up outputs are kept for as many blocks as fit the memory
    /// budget (`--memory-limit`, or the GPU's free memory less a reserve).
    Auto,
    /// Every block keeps everything its backward reads: nothing is recomputed.
    All,
}

impl SaveMode {
    pub fn name(self) -> &'static str {
        match self {
            SaveMode::Recompute => "recompute",
            SaveMode::Lean => "lean",
            SaveMode::Auto => "auto",
            SaveMode::All => "all",
        }
    }
}

/// How many copies of each recomputable group of activations a model holds (see
/// `cuda::model::MixWork`): with `sets` copies of a group, blocks `0..sets − 1` own one each
/// and keep it from their forward to their backward, the other blocks share the last copy and
/// their backward recomputes it — all but the last block, whose forward wrote the shared copy
/// last. So `sets` copies spare the recomputation of `sets` blocks (of `n_layers`), and
/// `n_layers` copies all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SavePlan {
    /// Re-run each block's forward before its backward (one `Saved` set; every group one copy).
    pub recompute: bool,
    /// Copies of the MLP's gate/up outputs.
    pub gate_up: usize,
    /// Copies of x_mid, the MLP norm's output and rstd, the SwiGLU product.
    pub mlp: usize,
    /// Copies of the mixer's conv, SiLU / L2-norm, gated-norm and attention-norm outputs.
    pub mixer: usize,
}

impl SavePlan {
    /// `--recompute`.
    pub fn recompute() -> SavePlan {
        SavePlan {
            recompute: true,
            gate_up: 1,
            mlp: 1,
            mixer: 1,
        }
    }

    /// `--save lean` (the default).
    pub fn lean() -> SavePlan {
        SavePlan {
            recompute: false,
            gate_up: 1,
            mlp: 1,
            mixer: 1,
        }
    }

    /// `--save auto` with `gate_up` copies of the MLP's gate/up outputs (1 = lean).
    pub fn gate_up(gate_up: usize) -> SavePlan {
        SavePlan {
            gate_up,
            ..SavePlan::lean()
        }
    }

    /// `--save all` for `n_layers` blocks.
    pub fn all(n_layers: usize) -> SavePlan {
        SavePlan {
            recompute: false,
            gate_up: n_layers,
            mlp: n_layers,
            mixer: n_layers,
        }
    }

    /// The plan of the fixed modes (`auto` depends on a budget: see
    /// `cuda::train::GpuTrainer::save_plan`, which resolves it; here it is `lean`).
    pub fn fixed(mode: SaveMode, n_layers: usize) -> SavePlan {
        match mode {
            SaveMode::Recompute => SavePlan::recompute(),
            SaveMode::Lean | SaveMode::Auto => SavePlan::lean(),
            SaveMode::All => SavePlan::all(n_layers),
        }
    }

    pub fn check(&self, n_layers: usize) -> Result<()> {
        let ok = |s: usize| (1..=n_layers.max(1)).contains(&s);
        ensure!(
            ok(self.gate_up) && ok(self.mlp) && ok(self.mixer),
            "save plan {self:?}: each group needs 1 to {n_layers} copies"
        );
        ensure!(
            self.mlp <= self.gate_up,
            "save plan {self:?}: a block that keeps x_mid, h2 and SwiGLU must keep its gate/up"
        );
        ensure!(
            !self.recompute || (self.gate_up, self.mlp, self.mixer) == (1, 1, 1),
            "save plan {self:?}: recompute holds one copy of each group"
        );
        Ok(())
    }

    /// The copy of a group with `sets` copies that block `l` uses.
    pub fn set_of(sets: usize, l: usize) -> usize {
        l.min(sets - 1)
    }

    /// Whether block `l` of `n_layers` recomputes a group with `sets` copies in its backward.
    pub fn recomputes(&self, sets: usize, l: usize, n_layers: usize) -> bool {
        !self.recompute && l + 1 >= sets && l + 1 != n_layers
    }

    /// A short description for banners and the bench's JSON.
    pub fn describe(&self, n_layers: usize) -> String {
        if self.recompute {
            return "recompute (one block's activations; each block's forward re-run)".into();
        }
        if *self == SavePlan::all(n_layers) {
            return "all (every block keeps its activations; nothing recomputed)".into();
        }
        format!(
            "gate/up kept by {} of {n_layers} blocks, x_mid/h2/SwiGLU by {}, mixer by {} (the rest \
             recomputed)",
            self.gate_up, self.mlp, self.mixer
        )
    }
}
