//! The loss curve of a training run as a PNG: training loss per step (raw and smoothed) and the
//! held-out evaluation loss, read from the run's `metrics.jsonl`.
//!
//! Drawn with `plotters` (bitmap backend, ab_glyph text) and encoded with `png`, both pure Rust.
//! Text needs a TrueType font, found at run time and never shipped with the crate: `GDN_FONT`
//! (a .ttf path) first, then common system paths, then any `*.ttf` under the system font
//! folders. Without one the chart is drawn without any text (no title, tick labels or legend)
//! and a note says so on stderr.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;

/// The size of the image, in pixels.
pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 700;

/// The environment variable naming a .ttf font file to draw the text with.
pub const FONT_ENV: &str = "GDN_FONT";

/// Fonts tried, in order, after `GDN_FONT` and before the recursive search of [`FONT_DIRS`].
const SYSTEM_FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Searched recursively for any `*.ttf` when none of [`SYSTEM_FONTS`] is usable.
const FONT_DIRS: &[&str] = &["/usr/share/fonts", "/usr/local/share/fonts"];

/// Font files larger than this are not read (a wrong `GDN_FONT` should not load a huge file).
const MAX_FONT_BYTES: u64 = 64 << 20;

/// The points of one run: training loss and evaluation loss against the step, sorted by step,
/// one value per step (the last line for a step wins, as after a resumed run).
#[derive(Clone, Debug, Default, PartialEq)]
struct Series {
    train: Vec<(f64, f64)>,
    eval: Vec<(f64, f64)>,
    /// Non-empty lines that were not a JSON object with a numeric `step`.
    skipped: usize,
}

/// A finite number, or `None` (absent, `null`, a string, ...).
fn finite(v: Option<&serde_json::Value>) -> Option<f64> {
    v.and_then(serde_json::Value::as_f64)
        .filter(|x| x.is_finite())
}

fn parse_metrics(text: &str) -> Series {
    let mut s = Series::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let obj = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(o)) => o,
            _ => {
                s.skipped += 1;
                continue;
            }
        };
        let Some(step) = finite(obj.get("step")).filter(|&x| x >= 0.0) else {
            s.skipped += 1;
            continue;
        };
        // A non-finite loss is written as `null` by serde_json: no point, but not malformed.
        if let Some(loss) = finite(obj.get("loss")) {
            s.train.push((step, loss));
        }
        if let Some(loss) = finite(obj.get("eval_loss")) {
            s.eval.push((step, loss));
        }
    }
    dedup_last(&mut s.train);
    dedup_last(&mut s.eval);
    s
}

/// Sorts by step (stable) and keeps the last point of each step.
fn dedup_last(v: &mut Vec<(f64, f64)>) {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(v.len());
    for &p in v.iter() {
        match out.last_mut() {
            Some(last) if last.0 == p.0 => *last = p,
            _ => out.push(p),
        }
    }
    *v = out;
}

/// Whether the loss axis is logarithmic: when every value is positive (see [`render_png`]).
fn log_axis(s: &Series) -> bool {
    s.train.iter().chain(&s.eval).all(|&(_, y)| y > 0.0)
}

/// A bias-corrected exponential moving average (as TensorBoard's smoothing), with a time
/// constant of about 1% of the points (at least 1, so short runs are barely smoothed). With
/// `log`, the average is taken over ln(loss) (a geometric mean): on a log axis that follows the
/// middle of the noise band, where an arithmetic mean sits above it.
fn ema(points: &[(f64, f64)], log: bool) -> Vec<(f64, f64)> {
    let window = (points.len() as f64 / 100.0).max(1.0);
    let beta = 1.0 - 1.0 / window;
    let (mut acc, mut weight) = (0.0, 0.0);
    points
        .iter()
        .map(|&(x, y)| {
            acc = beta * acc + (1.0 - beta) * if log { y.ln() } else { y };
            weight = beta * weight + (1.0 - beta);
            let m = acc / weight;
            (x, if log { m.exp() } else { m })
        })
        .collect()
}

/// A loss for the title: 4 decimals, or scientific notation below 0.01.
fn fmt_loss(v: f64) -> String {
    if v.abs() >= 0.01 || v == 0.0 {
        format!("{v:.4}")
    } else {
        format!("{v:.2e}")
    }
}

/// A y tick label: short, and readable over several decades on a log axis.
fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if (0.01..1e5).contains(&a) {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// A "nice" step (1, 2 or 5 × 10^k) near `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    p * if m < 1.5 {
        1.0
    } else if m < 3.5 {
        2.0
    } else if m < 7.5 {
        5.0
    } else {
        10.0
    }
}

/// Tick values for a log axis over `[lo, hi]` (0 < lo < hi): labelled ticks and light grid
/// lines. plotters' own log ticks are the powers of ten only, which leaves a typical language
/// model curve (say 11 → 3) with one label; here the labelled ticks are the powers of ten,
/// else 1-2-5 of each decade, else 1-2-3-4-5-6-8, else evenly spaced values, whichever first
/// gives at least 4 ticks.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let in_range = |mantissas: &[f64]| -> Vec<f64> {
        let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        let mut v = Vec::new();
        for k in k0..=k1 {
            for &m in mantissas {
                let x = m * 10f64.powi(k);
                if x >= lo * (1.0 - 1e-9) && x <= hi * (1.0 + 1e-9) {
                    v.push(x);
                }
            }
        }
        v
    };
    let all: Vec<f64> = (1..=9).map(f64::from).collect();
    let decades = in_range(&[1.0]);
    if decades.len() >= 4 {
        // Many decades: thin the labels to at most ~12.
        let every = decades.len().div_ceil(12);
        let bold = decades.iter().copied().step_by(every).collect();
        let light = if decades.len() <= 12 {
            in_range(&all)
        } else {
            decades
        };
        return (bold, light);
    }
    for mantissas in [&[1.0, 2.0, 5.0][..], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]] {
        let bold = in_range(mantissas);
        if bold.len() >= 4 {
            return (bold, in_range(&all));
        }
    }
    let step = nice_step((hi - lo) / 6.0);
    let first = (lo / step).ceil();
    let bold = (0..)
        .map(|i| (first + f64::from(i)) * step)
        .take_while(|&x| x <= hi * (1.0 + 1e-12))
        .take(20)
        .collect();
    (bold, Vec::new())
}

fn title(run: Option<&str>, s: &Series) -> String {
    let mut parts = Vec::new();
    if let (Some(&(step, last)), Some(&(_, smooth))) =
        (s.train.last(), ema(&s.train, log_axis(s)).last())
    {
        parts.push(format!(
            "final train loss {} (smoothed {}) at step {step}",
            fmt_loss(last),
            fmt_loss(smooth)
        ));
    }
    if let Some(&(step, loss)) = s.eval.last() {
        parts.push(format!("eval loss {} at step {step}", fmt_loss(loss)));
    }
    let body = parts.join(", ");
    match run {
        Some(r) => format!("{r}: {body}"),
        None => body,
    }
}

/// Reads a font file once per process and keeps its bytes for the life of the process (plotters'
/// font table wants `&'static` bytes), so repeated plots with the same font leak nothing more.
fn font_bytes(path: &Path) -> Result<&'static [u8], String> {
    static CACHE: Mutex<BTreeMap<PathBuf, &'static [u8]>> = Mutex::new(BTreeMap::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = cache.get(path) {
        return Ok(b);
    }
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a file".into());
    }
    if meta.len() > MAX_FONT_BYTES {
        return Err(format!("larger than {} MiB", MAX_FONT_BYTES >> 20));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    cache.insert(path.to_path_buf(), bytes);
    Ok(bytes)
}

/// Registers font bytes with plotters under a family name of their own (one per distinct
/// buffer, so concurrent plots with different fonts do not race) and returns that name, or
/// `None` when the bytes are not a font ab_glyph can read.
fn register(bytes: &'static [u8]) -> Option<String> {
    /// (address, length) of the bytes → the family name, or `None` if they are not a font.
    type Families = BTreeMap<(usize, usize), Option<String>>;
    static FAMILIES: Mutex<Families> = Mutex::new(BTreeMap::new());
    let mut families = FAMILIES.lock().unwrap_or_else(|e| e.into_inner());
    let key = (bytes.as_ptr() as usize, bytes.len());
    let n = families.len();
    families
        .entry(key)
        .or_insert_with(|| {
            let name = format!("gdn-font-{n}");
            plotters::style::register_font(&name, FontStyle::Normal, bytes)
                .ok()
                .map(|()| name)
        })
        .clone()
}

/// A usable font file: read and accepted by plotters.
fn try_font(path: &Path) -> Result<&'static [u8], String> {
    let bytes = font_bytes(path)?;
    match register(bytes) {
        Some(_) => Ok(bytes),
        None => Err("not a TrueType/OpenType font".into()),
    }
}

/// `*.ttf` files under `dir` (depth-limited), regular sans faces first.
fn ttf_files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() && depth < 8 {
                walk(&p, depth + 1, out);
            } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ttf")) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, 0, &mut out);
    let rank = |p: &PathBuf| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let styled = [
            "bold",
            "italic",
            "oblique",
            "mono",
            "condensed",
            "light",
            "black",
        ]
        .iter()
        .any(|w| name.contains(w));
        (styled, !name.contains("sans"))
    };
    out.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    out
}

/// Finds a font: `GDN_FONT`, then [`SYSTEM_FONTS`], then any `*.ttf` under [`FONT_DIRS`].
/// Returns the font (path and bytes, already registered) and notes worth telling the user
/// (a `GDN_FONT` that could not be used).
fn find_font() -> (Option<(PathBuf, &'static [u8])>, Vec<String>) {
    let mut notes = Vec::new();
    if let Some(p) = std::env::var_os(FONT_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        match try_font(&p) {
            Ok(b) => return (Some((p, b)), notes),
            Err(e) => notes.push(format!(
                "{FONT_ENV}={}: {e}; looking for a system font instead",
                p.display()
            )),
        }
    }
    for p in SYSTEM_FONTS.iter().map(PathBuf::from) {
        if let Ok(b) = try_font(&p) {
            return (Some((p, b)), notes);
        }
    }
    for dir in FONT_DIRS {
        for p in ttf_files_under(Path::new(dir)).into_iter().take(50) {
            if let Ok(b) = try_font(&p) {
                return (Some((p, b)), notes);
            }
        }
    }
    (None, notes)
}

/// The colours of the chart.
const RAW: RGBColor = RGBColor(160, 190, 230);
const SMOOTH: RGBColor = RGBColor(31, 90, 180);
const EVAL: RGBColor = RGBColor(220, 100, 20);

/// Draws the chart on `root`. `y` is the y axis (log or linear); `family` is a registered font
/// family, or `None` to draw no text at all (every text element of plotters needs a font).
fn draw_chart<DB, Y>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    s: &Series,
    x: std::ops::Range<f64>,
    y: Y,
    title: &str,
    family: Option<&str>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if let Some(f) = family {
        builder
            .caption(title, (f, 22).into_font())
            .x_label_area_size(50)
            .y_label_area_size(75);
    }
    let mut chart = builder.build_cartesian_2d(x, y)?;

    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(BLACK.mix(0.05))
        .bold_line_style(BLACK.mix(0.15));
    let x_fmt = |v: &f64| format!("{}", v.round() as i64);
    let y_fmt = |v: &f64| fmt_tick(*v);
    if let Some(f) = family {
        mesh.x_desc("step")
            .y_desc("loss")
            .axis_desc_style((f, 18).into_font())
            .label_style((f, 14).into_font())
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt);
    }
    mesh.draw()?;

    let raw = chart.draw_series(LineSeries::new(
        s.train.iter().copied(),
        RAW.stroke_width(1),
    ))?;
    if family.is_some() {
        raw.label("train loss")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RAW.stroke_width(2)));
    }
    if s.train.len() > 1 {
        let smooth = chart.draw_series(LineSeries::new(
            ema(&s.train, log_axis(s)),
            SMOOTH.stroke_width(2),
        ))?;
        if family.is_some() {
            smooth
                .label("train loss (smoothed)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], SMOOTH.stroke_width(2)));
        }
    } else {
        chart.draw_series(s.train.iter().map(|&p| Circle::new(p, 3, SMOOTH.filled())))?;
    }
    if !s.eval.is_empty() {
        chart.draw_series(LineSeries::new(
            s.eval.iter().copied(),
            EVAL.stroke_width(2),
        ))?;
        let points = chart.draw_series(s.eval.iter().map(|&p| Circle::new(p, 4, EVAL.filled())))?;
        if family.is_some() {
            points
                .label("eval loss (held out)")
                .legend(|(x, y)| Circle::new((x + 10, y), 4, EVAL.filled()));
        }
    }
    if let Some(f) = family {
        chart
            .configure_series_labels()
            .label_font((f, 15).into_font())
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()
}

/// Renders the chart into an RGB buffer of [`WIDTH`] × [`HEIGHT`] and encodes it as PNG bytes.
/// `font`: the bytes of a TrueType font for the text, or `None` for a chart without text.
/// Returns the PNG and whether text was drawn (a font plotters cannot use gives no text).
fn render_png(s: &Series, title: &str, font: Option<&'static [u8]>) -> Result<(Vec<u8>, bool)> {
    let family = font.and_then(register);
    let points = s.train.iter().chain(&s.eval);
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        (x0, x1) = (x0.min(x), x1.max(x));
        (y0, y1) = (y0.min(y), y1.max(y));
    }
    if !(x0.is_finite() && y0.is_finite()) {
        bail!("nothing to plot");
    }
    if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    } else {
        x1 += (x1 - x0) * 0.01; // room for the last eval marker
    }

    let mut rgb = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    let draw = |rgb: &mut [u8], family: Option<&str>| {
        let root = BitMapBackend::with_buffer(rgb, (WIDTH, HEIGHT)).into_drawing_area();
        // Log y when every loss is positive: a loss curve falls fastest at the start and keeps
        // improving by ever smaller amounts (MQAR goes from ln(vocab) to ~1e-3), which a linear
        // axis flattens into a line on the floor; equal ratios read as equal distances on a log
        // axis. Zero or negative values (not a cross-entropy) fall back to a linear axis.
        if log_axis(s) {
            // 5% of the span (in log space) above and below; a flat curve gets ×/÷ 1.5.
            let pad = if y1 > y0 * 1.001 {
                0.05 * (y1 / y0).ln()
            } else {
                1.5f64.ln()
            };
            let (lo, hi) = (y0 * (-pad).exp(), y1 * pad.exp());
            let (bold, light) = log_ticks(lo, hi);
            let y = (lo..hi)
                .log_scale()
                .with_key_points(bold)
                .with_light_points(light);
            draw_chart(&root, s, x0..x1, y, title, family)
        } else {
            let pad = ((y1 - y0) * 0.05).max(1e-3);
            draw_chart(&root, s, x0..x1, (y0 - pad)..(y1 + pad), title, family)
        }
        .map_err(|e| anyhow!("{e}"))
    };
    let mut text = family.is_some();
    if let Err(e) = draw(&mut rgb, family.as_deref()) {
        if !text {
            return Err(e.context("failed to draw the loss curve"));
        }
        // A font that loads but fails to draw some text: the chart without text beats no chart.
        draw(&mut rgb, None).context("failed to draw the loss curve")?;
        text = false;
    }

    let mut png_bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut png_bytes, WIDTH, HEIGHT);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().context("PNG encoding")?;
    w.write_image_data(&rgb).context("PNG encoding")?;
    w.finish().context("PNG encoding")?;
    Ok((png_bytes, text))
}

/// Reads a run's `metrics.jsonl` and writes its loss curve to `png` (atomically: a temporary
/// file in the same folder, then a rename): training loss against the step (raw and smoothed),
/// the held-out evaluation loss where present, and the final values in the title. Lines that
/// are not JSON objects with a numeric `step` are skipped; unknown fields are ignored.
///
/// Without a usable font (see the module docs) the chart is drawn without text and a note says
/// so on stderr. A missing file or one without a single loss is an error naming the file.
pub fn write_loss_curve(metrics_jsonl: &Path, png: &Path) -> Result<()> {
    let bytes = std::fs::read(metrics_jsonl)
        .with_context(|| format!("no metrics in {}", metrics_jsonl.display()))?;
    // Lossy: a torn or corrupt line spoils only itself (it is skipped as malformed).
    let series = parse_metrics(&String::from_utf8_lossy(&bytes));
    if series.train.is_empty() && series.eval.is_empty() {
        bail!(
            "no metrics in {} ({} lines, none with a step and a loss)",
            metrics_jsonl.display(),
            series.skipped
        );
    }
    let run = metrics_jsonl
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned());
    let (font, notes) = find_font();
    for n in &notes {
        eprintln!("note: {n}");
    }
    let (bytes, text) = render_png(
        &series,
        &title(run.as_deref(), &series),
        font.map(|(_, b)| b),
    )?;
    if !text {
        eprintln!(
            "note: no usable TrueType font found (set {FONT_ENV} to a .ttf file); \
             {} has the curves without title, labels or legend",
            png.display()
        );
    }
    crate::io::write_atomic(png, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(n: usize, eval_every: usize) -> String {
        let mut s = String::new();
        for step in 1..=n {
            let loss = 5.0 * (-(step as f64) / 60.0).exp() + 0.05 + 0.1 * ((step * 7) % 5) as f64;
            s.push_str(&format!(
                "{{\"step\":{step},\"loss\":{loss},\"lr\":0.001,\"grad_norm\":1.0,\"tokens_per_s\":1000.0"
            ));
            if step % eval_every == 0 {
                s.push_str(&format!(
                    ",\"eval_loss\":{},\"eval_accuracy\":0.5",
                    loss * 1.1
                ));
            }
            s.push_str("}\n");
        }
        s
    }

    /// Decodes a PNG; returns (width, height, RGB pixels).
    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut r = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn count_colour(rgb: &[u8], c: RGBColor) -> usize {
        rgb.chunks(3).filter(|p| p == &[c.0, c.1, c.2]).count()
    }

    #[test]
    fn parses_skips_malformed_and_keeps_the_last_line_of_a_step() {
        let text = "{\"step\":1,\"loss\":3.0,\"new_field\":[1,2]}\n\
                    not json\n\
                    [1,2,3]\n\
                    {\"loss\":1.0}\n\
                    {\"step\":\"x\",\"loss\":1.0}\n\
                    \n\
                    {\"step\":2,\"loss\":null,\"eval_loss\":2.5}\n\
                    {\"step\":3,\"loss\":2.0}\n\
                    {\"step\":3,\"loss\":1.5}\n\
                    {\"step\":4,\"loss\":1.0,\"eval_loss\":1.2";
        let s = parse_metrics(text);
        assert_eq!(s.train, vec![(1.0, 3.0), (3.0, 1.5)]);
        assert_eq!(s.eval, vec![(2.0, 2.5)]);
        assert_eq!(s.skipped, 5);
    }

    #[test]
    fn ema_is_bias_corrected_and_smooths() {
        let pts: Vec<(f64, f64)> = (0..400)
            .map(|i| (i as f64, if i % 2 == 0 { 1.0 } else { 3.0 }))
            .collect();
        let e = ema(&pts, false);
        assert_eq!(e.len(), 400);
        assert!(
            (e[0].1 - 1.0).abs() < 1e-12,
            "first point is the first value"
        );
        assert!((e[399].1 - 2.0).abs() < 0.3, "{}", e[399].1);
        let g = ema(&pts, true);
        assert!((g[0].1 - 1.0).abs() < 1e-12);
        assert!(
            (g[399].1 - 3f64.sqrt()).abs() < 0.3,
            "geometric: {}",
            g[399].1
        );
        assert_eq!(ema(&[(5.0, 2.0)], true), vec![(5.0, 2.0)]);
    }

    #[test]
    fn title_has_the_final_losses() {
        let s = parse_metrics(&synthetic(100, 25));
        let t = title(Some("run1"), &s);
        assert!(t.starts_with("run1: final train loss "), "{t}");
        assert!(t.contains("eval loss") && t.contains("at step 100"), "{t}");
        assert_eq!(fmt_loss(0.001234), "1.23e-3");
        assert_eq!(fmt_loss(2.0), "2.0000");
        assert_eq!(fmt_tick(2.5), "2.5");
        assert_eq!(fmt_tick(0.001), "1e-3");
    }

    #[test]
    fn log_ticks_label_every_range() {
        let (b, l) = log_ticks(2.8, 11.9);
        assert_eq!(b.len(), 6, "{b:?}"); // 3 4 5 6 8 10
        assert!(
            (b[0] - 3.0).abs() < 1e-9 && (b[5] - 10.0).abs() < 1e-9,
            "{b:?}"
        );
        assert!(!l.is_empty());
        let (b, _) = log_ticks(0.0015, 5.0);
        assert_eq!(b.len(), 11, "{b:?}"); // 3 decades: 1-2-5 from 2e-3 to 5
        let (b, _) = log_ticks(3.0, 3.5);
        assert!(b.len() >= 4 && b.len() <= 12, "{b:?}");
        assert!(b.iter().all(|&x| (3.0..=3.5).contains(&x)), "{b:?}");
        let (b, _) = log_ticks(1e-31, 1e31);
        assert!(b.len() <= 12 && b.len() >= 4, "{b:?}");
    }

    #[test]
    fn renders_without_a_font() {
        let s = parse_metrics(&synthetic(300, 50));
        let (bytes, text) = render_png(&s, "ignored", None).unwrap();
        assert!(!text);
        let (w, h, rgb) = decode(&bytes);
        assert_eq!((w, h), (WIDTH, HEIGHT));
        assert!(count_colour(&rgb, SMOOTH) > 100, "smoothed line drawn");
        assert!(count_colour(&rgb, EVAL) > 20, "eval points drawn");
        assert!(
            count_colour(&rgb, WHITE) > rgb.len() / 6,
            "mostly background"
        );
    }

    #[test]
    fn not_a_font_draws_without_text() {
        let junk: &'static [u8] = b"definitely not a font";
        assert!(register(junk).is_none());
        let s = parse_metrics(&synthetic(20, 5));
        let (bytes, text) = render_png(&s, "t", Some(junk)).unwrap();
        assert!(!text);
        assert_eq!(decode(&bytes).0, WIDTH);
    }

    #[test]
    fn renders_with_a_system_font_when_there_is_one() {
        let (font, _) = find_font();
        let Some((path, bytes)) = font else {
            eprintln!("no system font here: text rendering not checked");
            return;
        };
        let s = parse_metrics(&synthetic(300, 50));
        let (with_text, text) = render_png(&s, "a title", Some(bytes)).unwrap();
        assert!(text, "font {} registered but no text", path.display());
        let (without, _) = render_png(&s, "a title", None).unwrap();
        let (_, _, a) = decode(&with_text);
        let (_, _, b) = decode(&without);
        // Text is black-ish; the no-text chart has no dark pixels beyond the axes.
        let dark = |rgb: &[u8]| rgb.chunks(3).filter(|p| p.iter().all(|&c| c < 80)).count();
        assert!(dark(&a) > dark(&b) + 500, "{} vs {}", dark(&a), dark(&b));
    }

    #[test]
    fn degenerate_series_still_render() {
        for text in [
            "{\"step\":7,\"loss\":2.0}",
            "{\"step\":1,\"loss\":0.0}\n{\"step\":2,\"loss\":0.0}",
            "{\"step\":1,\"loss\":-1.0}\n{\"step\":2,\"loss\":1.0}",
            "{\"step\":3,\"eval_loss\":1.0}",
            "{\"step\":1,\"loss\":1e-30}\n{\"step\":2,\"loss\":1e30}",
        ] {
            let s = parse_metrics(text);
            let (bytes, _) = render_png(&s, "t", None).unwrap();
            assert_eq!(decode(&bytes).1, HEIGHT, "{text}");
        }
    }
}
