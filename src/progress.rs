//! Progress display: indicatif bars on a terminal, nothing (or periodic lines) elsewhere.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub fn is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

fn hidden_unless_terminal(bar: ProgressBar) -> ProgressBar {
    if !is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// A bar over `total` bytes showing throughput, a message and the ETA.
pub fn bytes_bar(total: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} | {msg} | ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    hidden_unless_terminal(bar)
}

/// A bar over `total` steps with a free-form message (loss, lr, tokens/s...).
pub fn steps_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("[{bar:25}] {pos}/{len} {msg} | ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    hidden_unless_terminal(bar)
}

/// 1234567 -> "1.23M".
pub fn human(x: f64) -> String {
    let (v, s) = if x >= 1e9 {
        (x / 1e9, "B")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        return format!("{x:.0}");
    };
    format!("{v:.2}{s}")
}

/// Seconds -> "1h02m", "3m05s", "12s".
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
