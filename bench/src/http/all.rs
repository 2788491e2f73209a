//! `tombola-bench all`: every scenario, one after the other, each in its own process (this
//! binary again), so that one's memory, allocator counters and threads do not disturb the
//! next. `--quick` runs each at a small size (CI: proof that they still run, no thresholds).
//! The last stdout line holds every scenario's own last line, by name.

use std::process::{Command, Stdio};
use std::time::Instant;

use clap::Args as ClapArgs;
use serde_json::json;

use crate::report::{BenchResult, Report};

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Small sizes, about a second of load each: the whole suite in well under 3 minutes.
    #[arg(long)]
    pub quick: bool,
}

/// Each scenario's arguments, quick and full.
fn scenarios(quick: bool) -> Vec<(&'static str, Vec<&'static str>)> {
    if quick {
        vec![
            (
                "domain",
                vec![
                    "--tickets",
                    "30000",
                    "--buyers",
                    "1000",
                    "--repeats",
                    "1",
                    "--pick-profile-orders",
                    "1000",
                ],
            ),
            (
                "engine",
                vec![
                    "--tickets",
                    "10000",
                    "--concurrency",
                    "16",
                    "--seconds",
                    "1",
                ],
            ),
            (
                "webhooks",
                vec![
                    "--seconds",
                    "1",
                    "--warmup-seconds",
                    "0",
                    "--rate",
                    "100",
                    "--raffles",
                    "2",
                    "--concurrency",
                    "8",
                ],
            ),
            (
                "hot",
                vec![
                    "--tickets",
                    "100000",
                    "--concurrency",
                    "16",
                    "--seconds",
                    "1",
                    "--warmup-seconds",
                    "0",
                ],
            ),
            (
                "many",
                vec![
                    "--raffles",
                    "10",
                    "--tickets",
                    "1000",
                    "--hot-tickets",
                    "100000",
                    "--concurrency",
                    "16",
                    "--seconds",
                    "1",
                    "--warmup-seconds",
                    "0",
                ],
            ),
            (
                "expiry",
                vec![
                    "--holds",
                    "500",
                    "--tickets",
                    "10000",
                    "--due-in",
                    "12",
                    "--seconds",
                    "1",
                    "--concurrency",
                    "8",
                ],
            ),
            (
                "mega",
                vec!["--raffles", "2", "--tickets", "100000", "--seconds", "1"],
            ),
        ]
    } else {
        [
            "domain", "engine", "webhooks", "hot", "many", "expiry", "mega",
        ]
        .into_iter()
        .map(|name| (name, Vec::new()))
        .collect()
    }
}

pub fn run(args: &Args) -> BenchResult<Report> {
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut results = serde_json::Map::new();
    let mut failures = Vec::new();
    for (name, scenario_args) in scenarios(args.quick) {
        crate::report::phase(format!("all: {name} {}", scenario_args.join(" ")));
        let t = Instant::now();
        let output = Command::new(&exe)
            .arg(name)
            .args(&scenario_args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()?;
        let last = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        let figures: serde_json::Value = serde_json::from_str(&last).unwrap_or(json!(null));
        if !output.status.success() {
            failures.push(format!("{name} exited with {}", output.status));
        } else if !figures.is_object() {
            failures.push(format!("{name}: the last stdout line is no JSON object"));
        }
        results.insert(
            name.to_owned(),
            json!({
                "ok": output.status.success() && figures.is_object(),
                "seconds": crate::report::round3(t.elapsed().as_secs_f64()),
                "figures": figures,
            }),
        );
    }
    let figures = json!({
        "bench": "all",
        "quick": args.quick,
        "seconds": crate::report::round3(started.elapsed().as_secs_f64()),
        "load_average": crate::sys::load_average(),
        "scenarios": results,
    });
    Report::new(&figures, failures)
}
