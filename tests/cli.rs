//! The `gdn` binary as a user meets it: help, info, and one-line errors for bad input.

use std::process::Command;

fn gdn(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gdn"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A failure prints exactly one line, `error: …`, containing `needle`.
fn assert_one_line_error(args: &[&str], needle: &str) {
    let (ok, _, err) = gdn(args);
    assert!(!ok, "{args:?} should fail");
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "{args:?}: {err}"
    );
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["train", "--help"],
        vec!["info", "--help"],
    ] {
        let (ok, out, _) = gdn(&cmd);
        assert!(ok && out.contains("Usage"), "{cmd:?}");
    }
}

#[test]
fn info_prints_the_spec_parameter_counts() {
    let (ok, out, _) = gdn(&["info", "--preset", "fla-1.3b"]);
    assert!(ok && out.contains("1387.3M"), "{out}");
    let (ok, out, _) = gdn(&["info", "--preset", "nvlabs-0.4b"]);
    assert!(
        ok && out.contains("516.8M") && out.contains("tied"),
        "{out}"
    );
}

#[test]
fn bad_input_gives_one_line_errors_and_no_checkpoint() {
    let dir = gdn::io::scratch_dir("bad");
    let missing = dir.join("missing.txt");
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    assert_one_line_error(
        &["train", "--data", missing.to_str().unwrap(), "--out", out_s],
        "missing.txt",
    );
    assert!(!out.join("checkpoint").exists());
    assert_one_line_error(&["info", "--preset", "gpt-9"], "unknown preset `gpt-9`");
    assert_one_line_error(
        &["train", "--preset", "gpt-9", "--out", out_s],
        "unknown preset",
    );

    let cfg = dir.join("config.json");
    let mut c = gdn::model::ModelConfig::preset("tiny").unwrap();
    c.head_dim = 3;
    c.expand_v = 1.5; // V = 4.5: not a whole head dimension
    std::fs::write(&cfg, c.to_hf_json()).unwrap();
    assert_one_line_error(
        &["train", "--config", cfg.to_str().unwrap(), "--out", out_s],
        "expand_v",
    );
    assert_one_line_error(
        &["info", "--config", dir.join("nope.json").to_str().unwrap()],
        "nope.json",
    );
    std::fs::write(&cfg, "{ not json").unwrap();
    assert_one_line_error(
        &["info", "--config", cfg.to_str().unwrap()],
        "not valid JSON",
    );
    assert!(!out.join("checkpoint").exists());
}

#[test]
fn resume_without_a_checkpoint_names_the_folder() {
    let dir = gdn::io::scratch_dir("resume");
    assert_one_line_error(
        &["train", "--resume", "--out", dir.to_str().unwrap()],
        "config.json",
    );
}

/// `gdn generate --device`: a byte-level model whose head dim (4) the CUDA kernels are not built
/// for decodes on the CPU under `auto` (with one line saying why) exactly as under `cpu`, and
/// `--device cuda` is a one-line error, whether or not this machine has a GPU.
#[test]
fn generate_falls_back_to_the_cpu_for_models_the_kernels_do_not_support() {
    use gdn::model::{Model, ModelConfig};
    use gdn::tensor::Rng;
    let mut cfg = ModelConfig::preset("tiny").unwrap();
    cfg.vocab_size = 256;
    let model = Model::new(cfg).unwrap();
    let mut rng = Rng::new(3);
    let mut params: Vec<f32> = model.init_params(&mut rng);
    params
        .iter_mut()
        .for_each(|p| *p += (0.3 * rng.normal()) as f32);
    let dir = gdn::io::scratch_dir("cli-generate-device").join("ckpt");
    gdn::train::checkpoint::save(&dir, &model, &params, None).unwrap();
    let ckpt = dir.to_str().unwrap();
    let args = |device: &'static str| {
        vec![
            "generate",
            "--checkpoint",
            ckpt,
            "--prompt",
            "hello",
            "--max-tokens",
            "12",
            "--temperature",
            "0",
            "--device",
            device,
        ]
    };
    let (ok, cpu_out, _) = gdn(&args("cpu"));
    assert!(ok);
    let (ok, auto_out, auto_err) = gdn(&args("auto"));
    assert!(ok, "{auto_err}");
    assert_eq!(auto_out, cpu_out);
    assert!(auto_err.contains("decoding on the CPU"), "{auto_err}");
    let (ok, _, err) = gdn(&args("cuda"));
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("no usable GPU") || err.contains("do not support this model"),
        "{err}"
    );
}
