//! The HTTP sidecar (issue 5, first part): /livez, /readyz, /metrics over real HTTP.

mod common;

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `GET path` on the sidecar: (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the sidecar");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("response");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Starts `mupdate` and returns it with its sidecar's address (from its log).
fn start(conf: &std::path::Path, args: &[&str]) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mupdate"))
        .arg("-C")
        .arg(conf)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mupdate");
    let stderr = child.stderr.take().expect("stderr");
    let (found, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(at) = line.find("sidecar on http://") {
                let addr = address_at(&line[at + 18..]);
                let _ = found.send(addr);
            }
        }
    });
    let addr = wait.recv_timeout(PATIENCE).expect("the sidecar's address");
    (child, addr)
}

fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "");
    let (child, http) = start(&conf, &["-m"]);
    assert_eq!(get(&http, "/livez").0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&http, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "master never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(&http, "/nope").0, 404);
    let (_, metrics) = get(&http, "/metrics");
    assert!(metrics.contains("mupdate_connections_open"), "{metrics}");
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "{metrics}"
    );
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_counted_and_a_slave_is_ready_only_when_synchronised() {
    let master = TestServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    // A slave of a master that is not there yet is alive but not ready.
    let unused = common::cyrus::free_port();
    let conf = follow_config(dir.path(), format!("127.0.0.1:{unused}").parse().unwrap());
    let (child, http) = start(&conf, &[]);
    assert_eq!(get(&http, "/livez").0, 200);
    assert_eq!(get(&http, "/readyz").0, 503);
    stop(child);

    let dir = tempfile::tempdir().unwrap();
    let conf = follow_config(dir.path(), master.addr);
    let slave = ServerProcess::start(&conf, &[], &[]);
    let log = slave.stderr.lock().map(|l| l.clone()).unwrap_or_default();
    let at = log.find("sidecar on http://").expect("sidecar line");
    let http = address_at(&log[at + 18..]);
    assert_eq!(get(&http, "/readyz").0, 200);
    let mut client = logged_in(slave.addr).await;
    client
        .exchange(
            b"F1 FIND \"nothing\"\r\n",
            b"F1 OK \"Search completed\"\r\n",
        )
        .await;
    client
        .exchange(b"W1 DELETE \"x\"\r\n", b"W1 BAD \"read-only session\"\r\n")
        .await;
    let (_, metrics) = get(&http, "/metrics");
    assert!(
        metrics.contains("mupdate_commands_total{command=\"FIND\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mupdate_commands_total{command=\"DELETE\",result=\"bad\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mupdate_commands_total{command=\"AUTHENTICATE\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mupdate_replication_resyncs_total{kind=\"full\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mupdate_command_duration_seconds_count{command=\"FIND\"} 1"),
        "{metrics}"
    );
    // The master goes away: the slave is no longer ready, but still alive.
    let _dir = master.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&http, "/readyz").0 != 503 {
        assert!(
            Instant::now() < deadline,
            "slave still ready without its master"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&http, "/livez").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_our_metrics() {
    if !cyrus_available(
        "promtool_accepts_our_metrics (Prometheus)",
        "/usr/bin/promtool",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "");
    let (child, http) = start(&conf, &["-m"]);
    let (status, metrics) = get(&http, "/metrics");
    assert_eq!(status, 200);
    let mut promtool = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("metrics to promtool");
    let out = promtool.wait_with_output().expect("promtool result");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    stop(child);
}

/// A query answered by Prometheus's HTTP API, as JSON.
fn prometheus_query(addr: &str, query: &str) -> serde_json::Value {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (_, body) = get(addr, &format!("/api/v1/query?query={encoded}"));
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_master_and_a_slave() {
    if !cyrus_available(
        "a_real_prometheus_scrapes (Prometheus)",
        "/usr/bin/prometheus",
    ) {
        return;
    }
    // A master and a slave, each with its sidecar.
    let master_dir = tempfile::tempdir().unwrap();
    let master = ServerProcess::start(&write_process_config(master_dir.path(), ""), &["-m"], &[]);
    let sidecar_of = |process: &ServerProcess| {
        let log = process.stderr.lock().map(|l| l.clone()).unwrap_or_default();
        let at = log.find("sidecar on http://").expect("sidecar line");
        address_at(&log[at + 18..])
    };
    let slave_dir = tempfile::tempdir().unwrap();
    let slave = ServerProcess::start(&follow_config(slave_dir.path(), master.addr), &[], &[]);
    let (master_http, slave_http) = (sidecar_of(&master), sidecar_of(&slave));

    let prom_dir = tempfile::tempdir().unwrap();
    let config = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mupdate\n    static_configs:\n      - targets: [\"{master_http}\", \"{slave_http}\"]\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", common::cyrus::free_port());
    let mut prometheus = Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");

    let mut writer = logged_in(master.addr).await;
    writer
        .exchange(
            b"A1 ACTIVATE \"user.scraped\" \"be1!p\" \"\"\r\n",
            b"A1 OK \"done\"\r\n",
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = serde_json::Value::Null;
    let found = loop {
        if std::net::TcpStream::connect(&web).is_ok() {
            seen = prometheus_query(
                &web,
                "mupdate_commands_total{command=\"ACTIVATE\",result=\"ok\"}",
            );
            let value = seen["data"]["result"][0]["value"][1].as_str().unwrap_or("");
            let up = prometheus_query(&web, "sum(up{job=\"mupdate\"})");
            let targets_up = up["data"]["result"][0]["value"][1].as_str().unwrap_or("");
            if value == "1" && targets_up == "2" {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert!(
        found,
        "Prometheus never saw the ACTIVATE on both targets: {seen}"
    );
}
