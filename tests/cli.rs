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
