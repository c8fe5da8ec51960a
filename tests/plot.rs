//! `gdn::plot::write_loss_curve` and `gdn plot`: a PNG of the expected size with something
//! drawn on it, clear errors for missing metrics, malformed lines skipped, no panic without a
//! font.

use std::path::Path;
use std::process::Command;

use gdn::io::scratch_dir;
use gdn::plot::{write_loss_curve, HEIGHT, WIDTH};

fn synthetic_metrics(n: usize) -> String {
    let mut s = String::new();
    for step in 1..=n {
        let loss = 4.0 * (-(step as f64) / 40.0).exp() + 0.2 + 0.05 * ((step * 13) % 7) as f64;
        s.push_str(&format!(
            "{{\"step\":{step},\"loss\":{loss},\"lr\":0.0003,\"grad_norm\":0.9,\"tokens_per_s\":5000.0"
        ));
        if step % 20 == 0 {
            s.push_str(&format!(
                ",\"eval_loss\":{},\"eval_accuracy\":null",
                loss + 0.1
            ));
        }
        s.push_str("}\n");
    }
    s
}

/// Checks the PNG signature and the IHDR size, decodes it, and returns the RGB(A) pixels.
fn check_png(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (WIDTH, HEIGHT));
    let mut r = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
    buf.truncate(info.buffer_size());
    buf
}

/// Not a blank image: a good share of pixels differ from the (white) background, and a good
/// share are background.
fn assert_drawn(rgb: &[u8]) {
    let px = rgb.len() / 3;
    let white = rgb.chunks(3).filter(|p| p == &[255, 255, 255]).count();
    assert!(white > px / 4, "background: {white} of {px}");
    assert!(px - white > 2000, "drawn pixels: {} of {px}", px - white);
}

fn no_tmp_left(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp-"), "temporary file left: {name}");
    }
}

#[test]
fn plot_writes_a_png_of_the_loss_curve() {
    let d = scratch_dir("plot");
    let metrics = d.join("metrics.jsonl");
    std::fs::write(&metrics, synthetic_metrics(200)).unwrap();
    let png = d.join("loss.png");
    write_loss_curve(&metrics, &png).unwrap();
    assert_drawn(&check_png(&png));
    // Overwrites in place.
    write_loss_curve(&metrics, &png).unwrap();
    check_png(&png);
    no_tmp_left(&d);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn plot_skips_malformed_lines() {
    let d = scratch_dir("plot-malformed");
    let metrics = d.join("metrics.jsonl");
    let mut text = String::from("garbage\n{\"step\":\n[]\n{\"loss\":1.0}\n");
    text.push_str(&synthetic_metrics(50));
    text.push_str("{\"step\":51,\"loss\":null}\n{\"step\":52,\"lo"); // a torn last line
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(b"\n{\"step\":53,\"loss\":\xff\xfe}\n"); // not UTF-8
    std::fs::write(&metrics, bytes).unwrap();
    let png = d.join("out.png");
    write_loss_curve(&metrics, &png).unwrap();
    assert_drawn(&check_png(&png));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn plot_errors_name_the_metrics_file() {
    let d = scratch_dir("plot-missing");
    let png = d.join("loss.png");
    let missing = d.join("metrics.jsonl");
    let e = format!("{:#}", write_loss_curve(&missing, &png).unwrap_err());
    assert!(
        e.contains("no metrics in") && e.contains(&*missing.to_string_lossy()),
        "{e}"
    );
    for text in ["", "\n\n", "not json\n{\"lr\":1}\n"] {
        std::fs::write(&missing, text).unwrap();
        let e = format!("{:#}", write_loss_curve(&missing, &png).unwrap_err());
        assert!(
            e.contains("no metrics in") && e.contains("metrics.jsonl"),
            "{e}"
        );
    }
    assert!(!png.exists());
    no_tmp_left(&d);
    std::fs::remove_dir_all(&d).unwrap();
}

fn gdn(args: &[&str], font: Option<&str>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gdn"));
    c.args(args);
    if let Some(f) = font {
        c.env("GDN_FONT", f);
    }
    c.output().unwrap()
}

#[test]
fn plot_command_writes_run_loss_png_and_survives_a_bad_font() {
    let d = scratch_dir("plot-cli");
    std::fs::write(d.join("metrics.jsonl"), synthetic_metrics(120)).unwrap();
    let run = d.to_str().unwrap();

    // GDN_FONT names a file that does not exist: a note, then a system font or no text.
    let bad = d.join("no-such-font.ttf");
    let out = gdn(&["plot", "--run", run], Some(bad.to_str().unwrap()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("GDN_FONT") && stderr.contains("no-such-font.ttf"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let default_png = d.join("loss.png");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        default_png.to_str().unwrap()
    );
    assert_drawn(&check_png(&default_png));

    // GDN_FONT names a file that is not a font.
    let not_font = d.join("metrics.jsonl");
    let other = d.join("other.png");
    let out = gdn(
        &["plot", "--run", run, "--out", other.to_str().unwrap()],
        Some(not_font.to_str().unwrap()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("not a TrueType"), "{stderr}");
    assert_drawn(&check_png(&other));

    // A run folder without metrics: exit 1 and the file named.
    let empty = scratch_dir("plot-cli-empty");
    let out = gdn(&["plot", "--run", empty.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no metrics in") && stderr.contains("metrics.jsonl"),
        "{stderr}"
    );

    let help = gdn(&["plot", "--help"], None);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--run") && help.contains("--out") && help.contains("loss"),
        "{help}"
    );
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}
