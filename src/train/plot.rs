//! The loss curve (and reinforcement learning's reward curve) as a PNG (the training curve as a
//! line, the held-out one as dots), drawn directly into a pixel buffer with a built-in 5x7 font so that no system fonts are needed.

use crate::error::{Error, Result};
use std::path::Path;

const W: usize = 900;
const H: usize = 540;
const LEFT: usize = 70;
const RIGHT: usize = 20;
const TOP: usize = 30;
const BOTTOM: usize = 50;

type Rgb = [u8; 3];
const INK: Rgb = [40, 40, 40];
const GRID: Rgb = [225, 225, 225];
const TRAIN: Rgb = [31, 119, 180];
const VAL: Rgb = [230, 85, 13];

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = 3 * (y as usize * W + x as usize);
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb, thick: i64) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (
                (x0 + (x1 - x0) * t).round() as i64,
                (y0 + (y1 - y0) * t).round() as i64,
            );
            for dx in 0..thick {
                for dy in 0..thick {
                    self.set(x + dx - thick / 2, y + dy - thick / 2, c);
                }
            }
        }
    }

    /// The legend, right-aligned: a line for the training curve, a dot for the held-out one.
    fn legend(&mut self, labels: [&str; 2]) {
        let val_x = (W - RIGHT - 6 * labels[1].len()) as f64;
        let train_x = val_x - 40.0 - 6.0 * labels[0].len() as f64;
        self.line((train_x - 26.0, 14.0), (train_x - 6.0, 14.0), TRAIN, 2);
        self.text(train_x as i64, 11, labels[0], INK);
        self.line((val_x - 13.0, 14.0), (val_x - 8.0, 14.0), VAL, 5);
        self.text(val_x as i64, 11, labels[1], INK);
    }

    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0b10000 >> col) != 0 {
                        self.set(x + 6 * i as i64 + col, y + r as i64, c);
                    }
                }
            }
        }
    }
}

/// 5x7 glyphs, one row per byte (high bit = left column), for the characters the plot writes.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        'k' => [16, 16, 18, 20, 24, 20, 18],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'a' => [0, 0, 14, 1, 15, 17, 15],
        'e' => [0, 0, 14, 17, 31, 16, 14],
        'i' => [4, 0, 12, 4, 4, 4, 14],
        'l' => [12, 4, 4, 4, 4, 4, 14],
        'n' => [0, 0, 22, 25, 17, 17, 17],
        'o' => [0, 0, 14, 17, 17, 17, 14],
        'p' => [0, 0, 30, 17, 30, 16, 16],
        'r' => [0, 0, 22, 25, 16, 16, 16],
        's' => [0, 0, 15, 16, 14, 1, 30],
        't' => [8, 8, 28, 8, 8, 9, 6],
        'v' => [0, 0, 17, 17, 17, 10, 4],
        'd' => [1, 1, 13, 19, 17, 17, 15],
        'h' => [16, 16, 22, 25, 17, 17, 17],
        'u' => [0, 0, 17, 17, 17, 19, 13],
        'w' => [0, 0, 17, 17, 21, 21, 10],
        '@' => [14, 17, 23, 21, 23, 16, 15],
        _ => [0; 7],
    }
}

fn tick_label(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-12);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

/// The axes' ranges of the curves: steps from 0 (or below), values with a margin, from 0 unless a
/// value is negative (a GRPO loss).
fn axis_ranges(train: &[(f64, f64)], val: &[(f64, f64)]) -> (f64, f64, f64, f64) {
    let all = train.iter().chain(val).filter(|p| p.1.is_finite());
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymin = ymin.min(y);
        ymax = ymax.max(y);
    }
    if xmin > xmax {
        (xmin, xmax, ymin, ymax) = (0.0, 1.0, 0.0, 1.0);
    }
    xmin = xmin.min(0.0);
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    let pad = ((ymax - ymin) * 0.05).max(1e-3);
    let low = match ymin >= 0.0 {
        true => (ymin - pad).max(0.0),
        false => ymin - pad,
    };
    (xmin, xmax, low, ymax + pad)
}

/// Draws train (step, loss) as a line and validation (step, loss) as dots into a PNG at `path`.
pub fn plot_loss(path: &Path, train: &[(f64, f64)], val: &[(f64, f64)]) -> Result<()> {
    plot_curves(path, "loss", ["train", "val"], train, val)
}

/// Draws a training curve (step, value) as a line and a held-out one as dots, named by
/// `labels`, under the y axis title `ylabel`, into a PNG at `path` (reinforcement learning's
/// reward and pass@1).
pub fn plot_curves(
    path: &Path,
    ylabel: &str,
    labels: [&str; 2],
    train: &[(f64, f64)],
    val: &[(f64, f64)],
) -> Result<()> {
    let mut cv = Canvas {
        px: vec![255; W * H * 3],
    };
    let (xmin, xmax, ymin, ymax) = axis_ranges(train, val);
    let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
    let sx = |x: f64| LEFT as f64 + (x - xmin) / (xmax - xmin) * pw;
    let sy = |y: f64| TOP as f64 + (1.0 - (y - ymin) / (ymax - ymin)) * ph;

    let ystep = nice_step(ymax - ymin, 6.0);
    let mut y = (ymin / ystep).ceil() * ystep;
    while y <= ymax {
        cv.line((LEFT as f64, sy(y)), ((W - RIGHT) as f64, sy(y)), GRID, 1);
        let label = tick_label((y * 100.0).round() / 100.0);
        cv.text(
            LEFT as i64 - 8 - 6 * label.len() as i64,
            sy(y) as i64 - 3,
            &label,
            INK,
        );
        y += ystep;
    }
    let xstep = nice_step(xmax - xmin, 8.0);
    let mut x = (xmin / xstep).ceil() * xstep;
    while x <= xmax {
        cv.line((sx(x), TOP as f64), (sx(x), (H - BOTTOM) as f64), GRID, 1);
        let label = tick_label(x);
        cv.text(
            sx(x) as i64 - 3 * label.len() as i64,
            (H - BOTTOM) as i64 + 8,
            &label,
            INK,
        );
        x += xstep;
    }
    cv.line(
        (LEFT as f64, TOP as f64),
        (LEFT as f64, (H - BOTTOM) as f64),
        INK,
        1,
    );
    cv.line(
        (LEFT as f64, (H - BOTTOM) as f64),
        ((W - RIGHT) as f64, (H - BOTTOM) as f64),
        INK,
        1,
    );
    cv.text((W / 2) as i64 - 12, (H - 20) as i64, "step", INK);
    cv.text(8, 10, ylabel, INK);
    cv.legend(labels);

    for w in train.windows(2) {
        if w[0].1.is_finite() && w[1].1.is_finite() {
            cv.line((sx(w[0].0), sy(w[0].1)), (sx(w[1].0), sy(w[1].1)), TRAIN, 2);
        }
    }
    for w in val.windows(2) {
        cv.line((sx(w[0].0), sy(w[0].1)), (sx(w[1].0), sy(w[1].1)), VAL, 1);
    }
    for &(x, y) in val {
        cv.line((sx(x), sy(y)), (sx(x), sy(y)), VAL, 6);
    }

    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| Error::bad_file(path, e))?;
        writer
            .write_image_data(&cv.px)
            .map_err(|e| Error::bad_file(path, e))?;
    }
    crate::fsutil::write_atomic(path, &bytes)
}
