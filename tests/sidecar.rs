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
                let addr = line[at + 18..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned();
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
    let http = log[at + 18..].split_whitespace().next().unwrap().to_owned();
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
