//! The README's main job: `gdn train` with no arguments trains the default GDN on MQAR on the
//! CPU to ≥ 99% held-out query accuracy, well inside 10 minutes, and leaves a checkpoint.

use std::process::Command;
use std::time::Instant;

#[test]
fn default_train_reaches_99_percent_mqar_accuracy_in_under_10_minutes() {
    let dir = std::env::temp_dir().join(format!("gdn-mainjob-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let t0 = Instant::now();
    // Run from an empty folder so the default run folder (runs/mqar) is used as a user would.
    let out = Command::new(env!("CARGO_BIN_EXE_gdn"))
        .arg("train")
        .current_dir(&dir)
        .output()
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("query accuracy"),
        "accuracy is printed as training goes: {stderr}"
    );
    let acc: f64 = stdout
        .split("held-out query accuracy ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in: {stdout}"));
    assert!(acc >= 99.0, "accuracy {acc}% after {secs:.0}s");
    assert!(secs < 600.0, "took {secs:.0}s");
    assert!(dir.join("runs/mqar/checkpoint/model.safetensors").exists());
    assert!(dir.join("runs/mqar/checkpoint/config.json").exists());
    eprintln!("main job: {acc}% in {secs:.0}s");
}
