//! What every subcommand shares: progress on stderr, and the closing JSON line on stdout.

use std::error::Error;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

pub type BenchResult<T> = Result<T, Box<dyn Error>>;

/// A finished run: the figures to print (one line of JSON, keys in declaration order), and
/// the correctness checks that failed.
pub struct Report {
    pub figures: String,
    pub failures: Vec<String>,
}

impl Report {
    pub fn new(figures: &impl Serialize, failures: Vec<String>) -> BenchResult<Self> {
        Ok(Self {
            figures: serde_json::to_string(figures)?,
            failures,
        })
    }
}

/// Prints the figures as the last stdout line; exit code 1 if a check failed, 2 if the run
/// could not finish.
pub fn finish(outcome: BenchResult<Report>) -> ExitCode {
    match outcome {
        Ok(report) => {
            for failure in &report.failures {
                eprintln!("CHECK FAILED: {failure}");
            }
            let mut stdout = std::io::stdout().lock();
            let printed = writeln!(stdout, "{}", report.figures).and_then(|()| stdout.flush());
            if printed.is_err() || !report.failures.is_empty() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    bar.set_message(what.to_owned());
    bar
}

/// One phase line on stderr, so logs show progress even without a terminal.
pub fn phase(message: impl std::fmt::Display) {
    eprintln!("[tombola-bench] {message}");
}

pub fn ms(duration: Duration) -> f64 {
    round3(duration.as_secs_f64() * 1e3)
}

pub fn per_sec(count: u64, duration: Duration) -> f64 {
    let secs = duration.as_secs_f64();
    if secs > 0.0 {
        (count as f64 / secs).round()
    } else {
        0.0
    }
}

pub fn round3(value: f64) -> f64 {
    (value * 1e3).round() / 1e3
}

/// `value / baseline`, rounded, or 0 when there is no baseline.
pub fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        round3(value / baseline)
    } else {
        0.0
    }
}
