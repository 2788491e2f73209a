//! `deploy/` against the code: the Grafana dashboard and the Prometheus alert rules parse
//! and name only metrics the code exports, docs/OPERATIONS.md describes every metric the
//! code exports, and (where the tools are installed, as in `.ci/run`) `promtool` accepts the
//! rules and `nginx -t` the balancer example.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Metrics that alerts or panels use before the code exporting them is merged (none now:
/// the outbound webhooks worker exports `tombola_webhook_attempts_total`).
const NOT_YET_EXPORTED: &[&str] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every metric name the code records (`metrics::counter!("…"` and the like).
fn exported() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("projections/src"), &mut files);
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source");
        for macro_name in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
            for (at, _) in text.match_indices(macro_name) {
                let rest = &text[at + macro_name.len()..];
                let name = &rest[..rest.find('"').expect("a closing quote")];
                names.insert(name.to_owned());
            }
        }
    }
    assert!(
        names.len() >= 10,
        "the scan found too few metrics: {names:?}"
    );
    names
}

/// The `tombola_*` metric names in a PromQL expression, without the series suffixes a
/// histogram is exposed with.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in expr.match_indices("tombola_") {
        let name: String = expr[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        names.insert(base.to_owned());
    }
    names
}

fn assert_known(what: &str, used: &BTreeSet<String>, exported: &BTreeSet<String>) {
    for name in used {
        assert!(
            exported.contains(name) || NOT_YET_EXPORTED.contains(&name.as_str()),
            "{what} uses {name}, which the code does not export"
        );
    }
}

#[test]
fn the_dashboard_shows_only_metrics_the_code_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana-dashboard.json")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut used = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for target in targets {
            used.extend(metrics_in(target["expr"].as_str().expect("an expr")));
        }
    }
    assert_known("the dashboard", &used, &exported());
    for topic in [
        "tombola_engine_commit_seconds",
        "tombola_engine_batch_commands",
        "tombola_engine_queue_depth",
        "tombola_engine_overloaded_total",
        "tombola_payment_inbox_pending",
        "tombola_projection_lag_events",
        "tombola_http_requests_total",
    ] {
        assert!(used.contains(topic), "the dashboard lacks {topic}");
    }
}

#[test]
fn the_alert_rules_cover_what_operators_must_hear_about() {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/prometheus-alerts.yml")).expect("rules YAML");
    let mut alerts = Vec::new();
    let mut used = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert name");
            let expr = rule["expr"].as_str().expect("an expr");
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{name} has no summary"
            );
            used.extend(metrics_in(expr));
            alerts.push((name.to_owned(), expr.to_owned()));
        }
    }
    assert_known("the alert rules", &used, &exported());
    let alerted = |metric: &str| alerts.iter().any(|(_, expr)| expr.contains(metric));
    for (topic, metric) in [
        ("commit latency", "tombola_engine_commit_seconds"),
        ("batch sizes", "tombola_engine_batch_commands"),
        ("writer queue depth", "tombola_engine_queue_depth"),
        ("overload rejections", "tombola_engine_overloaded_total"),
        (
            "inbox backlog",
            "tombola_payment_inbox_oldest_pending_seconds",
        ),
        ("inbox failures", "tombola_payment_inbox_failed"),
        ("projection lag", "tombola_projection_lag_events"),
        (
            "webhook endpoint failures",
            "tombola_webhook_attempts_total",
        ),
        ("rate-limit rejections", "status=\"429\""),
    ] {
        assert!(alerted(metric), "no alert on {topic} ({metric})");
    }
}

#[test]
fn operations_md_describes_every_metric_the_code_exports() {
    let docs = read("docs/OPERATIONS.md");
    let exported = exported();
    for name in &exported {
        assert!(
            docs.contains(&format!("`{name}`")),
            "docs/OPERATIONS.md does not describe {name}"
        );
    }
    let documented = metrics_in(&docs);
    assert_known("docs/OPERATIONS.md", &documented, &exported);
}

/// Runs `program` if it is installed; `None` if it is not.
fn run(program: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(program).args(args).output() {
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{program} is not installed: skipped (.ci/run installs it)");
            None
        }
        Err(e) => panic!("{program}: {e}"),
    }
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let rules = root().join("deploy/prometheus-alerts.yml");
    if let Some(output) = run(
        "promtool",
        &["check", "rules", rules.to_str().expect("UTF-8")],
    ) {
        assert!(
            output.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn nginx_accepts_the_balancer_example() {
    let config = root().join("deploy/nginx.conf");
    let prefix = std::env::temp_dir().join(format!("tombola-nginx-{}", std::process::id()));
    std::fs::create_dir_all(prefix.join("logs")).expect("a prefix directory");
    let globals = format!(
        "pid {0}/nginx.pid; error_log {0}/error.log;",
        prefix.display()
    );
    let output = run(
        "nginx",
        &[
            "-t",
            "-p",
            prefix.to_str().expect("UTF-8"),
            "-c",
            config.to_str().expect("UTF-8"),
            "-g",
            &globals,
        ],
    );
    let _ = std::fs::remove_dir_all(&prefix);
    if let Some(output) = output {
        assert!(
            output.status.success(),
            "nginx -t: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
