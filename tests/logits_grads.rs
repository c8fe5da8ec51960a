//! `gdn logits --grads`: the loss and the gradient of every parameter, as written for the
//! comparison with PyTorch autograd (scripts/grad_parity.py): every tensor present with its
//! shape and finite, the loss consistent with the written logits, and gradients that match
//! central finite differences of the loss through the binary.

use gdn::model::safetensors_io::{self, NamedTensor};
use gdn::model::{Model, ModelConfig};
use gdn::tensor::Rng;
use gdn::train::checkpoint;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// Two sequences of lengths 11 and 7 and a one-token sequence (which has no target).
const TOKENS: &str = "3,1,16,2,7,7,0,5,9,11,4;12,6,8,1,1,2,15;5";

/// A tiny checkpoint whose parameters are moved off their init, so that every gradient is
/// visible.
fn write_checkpoint(dir: &Path, tie: bool) -> (Model, Vec<f32>) {
    let mut cfg = ModelConfig::preset("tiny").unwrap();
    cfg.tie_word_embeddings = tie;
    cfg.b_proj_bias = tie;
    let model = Model::new(cfg).unwrap();
    let mut rng = Rng::new(7);
    let mut params: Vec<f32> = model.init_params(&mut rng);
    params
        .iter_mut()
        .for_each(|p| *p += (0.3 * rng.normal()) as f32);
    checkpoint::save(dir, &model, &params, None).unwrap();
    (model, params)
}

/// Runs `gdn logits` and returns its tensors by name.
fn run_logits(ckpt: &Path, extra: &[&str]) -> HashMap<String, NamedTensor> {
    let out = ckpt.with_extension("logits.safetensors");
    let res = Command::new(env!("CARGO_BIN_EXE_gdn"))
        .args(["logits", "--checkpoint", ckpt.to_str().unwrap()])
        .args(["--tokens", TOKENS, "--out", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let (tensors, _) = safetensors_io::read(&out).unwrap();
    tensors.into_iter().map(|t| (t.name.clone(), t)).collect()
}

fn loss_of(ckpt: &Path) -> f64 {
    run_logits(ckpt, &["--grads"])["loss"].data[0] as f64
}

#[test]
fn grads_are_written_for_every_parameter_and_the_loss_matches_the_logits() {
    for tie in [false, true] {
        let dir = gdn::io::scratch_dir(&format!("logits-grads-{tie}"));
        let ckpt = dir.join("ckpt");
        let (model, _) = write_checkpoint(&ckpt, tie);
        let out = run_logits(&ckpt, &["--grads"]);

        // One gradient per parameter, with its shape, finite and not all zero.
        for p in &model.layout.params {
            let g = &out
                .get(&format!("grad.{}", p.name))
                .unwrap_or_else(|| panic!("no grad.{}", p.name));
            assert_eq!(g.shape, p.shape, "{}", p.name);
            assert!(g.data.iter().all(|v| v.is_finite()), "{}", p.name);
            assert!(g.data.iter().any(|&v| v != 0.0), "{}: all zero", p.name);
        }
        let n_grads = out.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(n_grads, model.layout.params.len());
        assert_eq!(out.contains_key("grad.lm_head.weight"), !tie);

        // The loss: the mean over the positions that have a next token in their sequence,
        // recomputed in f64 from the written logits.
        let vocab = model.config.vocab_size;
        let tokens: Vec<usize> = out["tokens"].data.iter().map(|&t| t as usize).collect();
        let cu: Vec<usize> = out["cu_seqlens"].data.iter().map(|&c| c as usize).collect();
        assert_eq!(cu, [0, 11, 18, 19]);
        let logits = &out["logits"];
        assert_eq!(logits.shape, [tokens.len(), vocab]);
        let (mut sum, mut count) = (0.0f64, 0usize);
        for w in cu.windows(2) {
            for i in w[0]..w[1] - 1 {
                let row: Vec<f64> = logits.data[i * vocab..(i + 1) * vocab]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                sum += lse - row[tokens[i + 1]];
                count += 1;
            }
        }
        assert_eq!(count, 16);
        let want = sum / count as f64;
        let loss = out["loss"].data[0] as f64;
        assert_eq!(out["loss"].shape, [1]);
        assert!(
            (loss - want).abs() <= 1e-5 * want.abs(),
            "loss {loss} vs {want} from the logits"
        );

        // Without --grads: the logits alone, identical.
        let plain = run_logits(&ckpt, &[]);
        assert!(!plain.contains_key("loss") && !plain.keys().any(|k| k.starts_with("grad.")));
        assert_eq!(plain["logits"].data, logits.data);
    }
}

#[test]
fn gradients_match_finite_differences_of_the_loss() {
    // Tied (the embedding's gradient includes the head's part) with the b_proj bias.
    let dir = gdn::io::scratch_dir("logits-grads-fd");
    let ckpt = dir.join("ckpt");
    let (model, params) = write_checkpoint(&ckpt, true);
    let out = run_logits(&ckpt, &["--grads"]);
    for name in [
        "model.embeddings.weight",
        "model.layers.0.attn.A_log",
        "model.layers.1.attn.g_proj.weight",
        "model.layers.0.attn.b_proj.bias",
        "model.layers.1.attn.k_conv1d.weight",
        "model.layers.0.attn.o_norm.weight",
        "model.layers.1.mlp.down_proj.weight",
    ] {
        let info = model.layout.get(name).unwrap();
        let g = &out[&format!("grad.{name}")].data;
        // The element with the largest gradient.
        let (j, &gj) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let loss_at = |delta: f32| {
            let mut p = params.clone();
            p[info.offset + j] += delta;
            let d = dir.join(format!("fd-{name}-{delta}"));
            checkpoint::save(&d, &model, &p, None).unwrap();
            (loss_of(&d), p[info.offset + j] as f64)
        };
        let central = |h: f32| {
            let ((lp, xp), (lm, xm)) = (loss_at(h), loss_at(-h));
            (lp - lm) / (xp - xm)
        };
        // The loss is written in f32 (rounding ~2e-7), so the step moves it by ~2e-3 where it can;
        // Richardson extrapolation of two steps removes the O(h²) error.
        let h = (1e-3 / gj.abs()).clamp(1e-3, 2e-2);
        let fd = (4.0 * central(h / 2.0) - central(h)) / 3.0;
        let err = (fd - gj as f64).abs() / (gj as f64).abs();
        eprintln!("{name}[{j}]: grad {gj:.6e}, finite difference {fd:.6e}, rel err {err:.1e}");
        assert!(
            err < 1e-2,
            "{name}[{j}]: grad {gj} vs finite difference {fd}"
        );
    }
}

#[test]
fn device_cuda_without_a_gpu_is_a_one_line_error() {
    if gdn::cuda::unavailable_reason().is_none() {
        return; // a GPU is here: scripts/grad_parity.sh checks that path against PyTorch
    }
    let dir = gdn::io::scratch_dir("logits-grads-cuda");
    let ckpt = dir.join("ckpt");
    write_checkpoint(&ckpt, false);
    let res = Command::new(env!("CARGO_BIN_EXE_gdn"))
        .args(["logits", "--checkpoint", ckpt.to_str().unwrap(), "--tokens"])
        .args([TOKENS, "--grads", "--device", "cuda", "--out"])
        .arg(dir.join("out.safetensors"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no usable GPU"), "{err}");
    assert!(!dir.join("out.safetensors").exists());
}

#[test]
fn grads_need_a_sequence_with_a_next_token() {
    let dir = gdn::io::scratch_dir("logits-grads-none");
    let ckpt = dir.join("ckpt");
    write_checkpoint(&ckpt, false);
    let res = Command::new(env!("CARGO_BIN_EXE_gdn"))
        .args(["logits", "--checkpoint", ckpt.to_str().unwrap()])
        .args(["--tokens", "3;4", "--grads", "--out"])
        .arg(dir.join("out.safetensors"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success() && err.contains("next token"), "{err}");
}
