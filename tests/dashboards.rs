//! The Grafana dashboard and the alert rules (issue 7) against a running master and slave:
//! every metric they name is exported, every expression is accepted by a real Prometheus
//! scraping the two, and `promtool check rules` accepts the rules file.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(repository().join("dashboards/mupdate.json"))
        .expect("dashboards/mupdate.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every `expr` in the dashboard, and every variable's query.
fn dashboard_expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => dashboard_expressions(child, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                dashboard_expressions(item, out);
            }
        }
        _ => {}
    }
}

fn rule_expressions() -> Vec<String> {
    std::fs::read_to_string(repository().join("dashboards/mupdate-alerts.yaml"))
        .expect("alert rules")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .map(|expr| expr.trim().to_owned())
        .collect()
}

/// The metric names an expression uses (ours and the process collector's).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|token| token.starts_with("mupdate_") || token.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// Metric families in a `/metrics` text, with the series names of histograms.
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The expression as Grafana sends it, with its variables filled in.
fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".+")
        .replace("$role", ".+")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_use_exported_metrics_and_valid_promql() {
    let board = dashboard();
    let mut panel_exprs = Vec::new();
    dashboard_expressions(&board["panels"], &mut panel_exprs);
    assert!(panel_exprs.len() >= 20, "{panel_exprs:?}");
    // No hard-coded data source: every panel and target uses the variable.
    let text = serde_json::to_string(&board["panels"]).unwrap();
    for uid in text.split("\"uid\":\"").skip(1) {
        assert!(
            uid.starts_with("${datasource}"),
            "hard-coded datasource {uid}"
        );
    }
    let variables: Vec<&str> = board["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "role", "instance"]);
    let mut variable_queries = Vec::new();
    dashboard_expressions(&board["templating"], &mut variable_queries);
    let rules = rule_expressions();
    assert!(rules.len() >= 6, "{rules:?}");

    // A master with traffic and a slave following it.
    let master_dir = tempfile::tempdir().unwrap();
    let master = ServerProcess::start(&write_process_config(master_dir.path(), ""), &["-m"], &[]);
    let slave_dir = tempfile::tempdir().unwrap();
    let slave = ServerProcess::start(&follow_config(slave_dir.path(), master.addr), &[], &[]);
    let mut writer = logged_in(master.addr).await;
    writer
        .send(b"A1 ACTIVATE \"user.dash\" \"be1!p\" \"\"\r\nF1 FIND \"user.dash\"\r\n")
        .await;
    writer.read_until(b"F1 OK \"Search completed\"\r\n").await;
    let (master_http, slave_http) = (sidecar_of(&master), sidecar_of(&slave));
    let mut names = exported(&http_get(&master_http, "/metrics").1);
    names.extend(exported(&http_get(&slave_http, "/metrics").1));
    let mut used = BTreeSet::new();
    for expr in panel_exprs.iter().chain(&rules).chain(&variable_queries) {
        used.extend(metric_names(expr));
    }
    let missing: Vec<_> = used.difference(&names).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");

    // promtool accepts the rules file.
    if cyrus_available("promtool check rules", "/usr/bin/promtool") {
        let out = std::process::Command::new("/usr/bin/promtool")
            .args(["check", "rules"])
            .arg(repository().join("dashboards/mupdate-alerts.yaml"))
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A real Prometheus scraping both evaluates every expression.
    let Some(prometheus) = Prometheus::start(&[master_http, slave_http]) else {
        return;
    };
    assert!(prometheus.wait_until_up(2), "both targets scraped");
    for expr in panel_exprs.iter().chain(&rules) {
        let answer = prometheus.query(&as_sent(expr));
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
    }
}
