//! The HTTP sidecar (issue 5, first part): /livez, /readyz, /metrics over real HTTP.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Starts `mupdate -C conf args…` without waiting for clients to be served; returns it
/// with its sidecar's address.
fn start(conf: &std::path::Path, args: &[&str]) -> (ServerProcess, String) {
    let mut command_line = vec!["-C".to_owned(), conf.display().to_string()];
    command_line.extend(args.iter().map(|a| a.to_string()));
    let server = ServerProcess::spawn(&command_line, &[]);
    let http = sidecar_of(&server);
    (server, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "");
    let (server, http) = start(&conf, &["-m"]);
    assert_eq!(http_get(&http, "/livez").0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&http, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "master never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http_get(&http, "/nope").0, 404);
    let (_, metrics) = http_get(&http, "/metrics");
    assert_contains(&metrics, "mupdate_connections_open{role=\"master\"} 0");
    assert_contains(&metrics, "process_resident_memory_bytes");
    drop(server);
}

/// The value of the sample `name` (with its labels) in a `/metrics` text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_stream_and_telemetry_metrics_follow_what_happens() {
    let dir = tempfile::tempdir().unwrap();
    // Telemetry is logged for users whose directory exists.
    std::fs::create_dir_all(dir.path().join("log/mupdate")).unwrap();
    let conf = write_process_config(dir.path(), "");
    let server = ServerProcess::start(&conf, &["-m"], &[]);
    let http = sidecar_of(&server);
    let (_, metrics) = http_get(&http, "/metrics");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        metrics.contains(&format!(
            "mupdate_build_info{{role=\"master\",version=\"{version}\"}} 1"
        )),
        "{metrics}"
    );
    let mut listener = logged_in(server.addr).await;
    listener.send(b"U1 UPDATE\r\n").await;
    listener.read_until(b"U1 OK \"streaming starts\"\r\n").await;
    let mut writer = logged_in(server.addr).await;
    writer
        .done(b"A1 ACTIVATE \"shared.a\" \"be1!p\" \"anyone\tlrs\t\"\r\n")
        .await;
    writer.done(b"R1 RESERVE \"shared.b\" \"be1!p\"\r\n").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let (_, metrics) = http_get(&http, "/metrics");
        if sample(&metrics, "mupdate_mailboxes{state=\"reserved\"}") == Some(1.0) {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "mailboxes never counted: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let expect = |name: &str, wanted: f64| {
        assert_eq!(sample(&metrics, name), Some(wanted), "{name} in {metrics}");
    };
    expect("mupdate_mailboxes{state=\"active\"}", 1.0);
    expect("mupdate_store_commit_batch_size_count", 2.0);
    expect("mupdate_store_commit_batch_size_sum", 2.0);
    expect("mupdate_store_commit_duration_seconds_count", 2.0);
    expect("mupdate_store_last_sequence", 2.0);
    expect("mupdate_update_listeners", 1.0);
    expect(
        "mupdate_replication_slaves_connected{protocol=\"update\"}",
        1.0,
    );
    expect("mupdate_connections_open{role=\"master\"}", 2.0);
    expect("mupdate_connections_accepted_total{role=\"master\"}", 2.0);
    assert!(sample(&metrics, "mupdate_store_size_bytes").unwrap_or(0.0) > 0.0);
    // Each client's reads and writes after its login were logged.
    assert!(
        sample(&metrics, "mupdate_telemetry_log_writes_total").unwrap_or(0.0) >= 4.0,
        "{metrics}"
    );
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(
        &http_get(&http, "/metrics").1,
        "mupdate_replication_slaves_connected{protocol=\"update\"}",
    ) != Some(0.0)
    {
        assert!(
            Instant::now() < deadline,
            "a closed stream is still counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_counted_and_a_slave_is_ready_only_when_synchronised() {
    let master = TestServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    // A slave of a master that is not there yet is alive but not ready.
    let unused = common::free_port();
    let conf = follow_config(dir.path(), format!("127.0.0.1:{unused}").parse().unwrap());
    let (server, http) = start(&conf, &[]);
    assert_eq!(http_get(&http, "/livez").0, 200);
    assert_eq!(http_get(&http, "/readyz").0, 503);
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let conf = follow_config(dir.path(), master.addr);
    let slave = ServerProcess::start(&conf, &[], &[]);
    let http = sidecar_of(&slave);
    assert_eq!(http_get(&http, "/readyz").0, 200);
    let mut client = logged_in(slave.addr).await;
    client.finds_nothing("nothing").await;
    client
        .exchange(b"W1 DELETE \"x\"\r\n", b"W1 BAD \"read-only session\"\r\n")
        .await;
    let (_, metrics) = http_get(&http, "/metrics");
    assert_contains(
        &metrics,
        "mupdate_commands_total{command=\"FIND\",result=\"ok\"} 1",
    );
    assert_contains(
        &metrics,
        "mupdate_commands_total{command=\"DELETE\",result=\"bad\"} 1",
    );
    assert_contains(
        &metrics,
        "mupdate_commands_total{command=\"AUTHENTICATE\",result=\"ok\"} 1",
    );
    assert_contains(
        &metrics,
        "mupdate_replication_resyncs_total{kind=\"full\"} 1",
    );
    assert_contains(
        &metrics,
        "mupdate_command_duration_seconds_count{command=\"FIND\"} 1",
    );
    // The master goes away: the slave is no longer ready, but still alive.
    let port = master.addr.port();
    let dir = master.stop().await;
    wait_for_status(
        &http,
        "/readyz",
        503,
        "slave still ready without its master",
    );
    assert_eq!(http_get(&http, "/livez").0, 200);
    let (_, metrics) = http_get(&http, "/metrics");
    assert_contains(&metrics, "mupdate_replication_link_up 0");
    // It comes back where the slave looks for it: ready again once resynchronised.
    let master = TestServer::start_at(dir, "", port).await;
    wait_for_status(
        &http,
        "/readyz",
        200,
        "slave not ready after its master came back",
    );
    let (_, metrics) = http_get(&http, "/metrics");
    assert_contains(&metrics, "mupdate_replication_link_up 1");
    assert!(
        metrics.contains("mupdate_replication_resyncs_total{kind=\"full\"} 1")
            && metrics.contains("mupdate_replication_resyncs_total{kind=\"delta\"} 1"),
        "the first sync full, the one after the restart from the change log: {metrics}"
    );
    let _ = master.stop().await;
}

/// Polls `path` until it answers `status` (20 s at most).
fn wait_for_status(http: &str, path: &str, status: u16, failure: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(http, path).0 != status {
        assert!(Instant::now() < deadline, "{failure}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sends SIGTERM and checks the drain: not ready at once, alive, still answering an open
/// session until `mupdate_shutdown_delay` is over, then a clean exit.
async fn assert_drains(mut server: ServerProcess, client: &mut Client) {
    let http = sidecar_of(&server);
    assert_eq!(http_get(&http, "/readyz").0, 200);
    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    wait_for_status(&http, "/readyz", 503, "still ready after SIGTERM");
    assert_eq!(http_get(&http, "/livez").0, 200);
    client.expect_quiet().await;
    client.expect(b"* BYE \"server shutting down\"\r\n").await;
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_is_not_ready_while_it_shuts_down() {
    let drain = "mupdate_shutdown_delay: 2\n";
    let dir = tempfile::tempdir().unwrap();
    let master = ServerProcess::start(&write_process_config(dir.path(), drain), &["-m"], &[]);
    let slave_dir = tempfile::tempdir().unwrap();
    let conf = follow_config(slave_dir.path(), master.addr);
    std::fs::write(&conf, std::fs::read_to_string(&conf).unwrap() + drain).unwrap();
    let slave = ServerProcess::start(&conf, &[], &[]);
    let mut slave_client = logged_in(slave.addr).await;
    assert_drains(slave, &mut slave_client).await;
    let mut master_client = logged_in(master.addr).await;
    assert_drains(master, &mut master_client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_whose_master_stops_answering_is_not_ready_past_the_lag_bound() {
    let dir = tempfile::tempdir().unwrap();
    let master = ServerProcess::start(&write_process_config(dir.path(), ""), &["-m"], &[]);
    let slave_dir = tempfile::tempdir().unwrap();
    // Keep-alive NOOPs every 4 s of quiet, so a healthy quiet link stays under the 5 s
    // bound; a silent master is given up on only after 8 s, so the bound decides first.
    let conf = write_process_config(
        slave_dir.path(),
        &format!(
            "mupdate_server: {}\nmupdate_authname: mupdate\nmupdate_password: mupdatepass\n\
             mupdate_retry_delay: 4\nmupdate_ready_max_lag: 5\n",
            master.addr
        ),
    );
    let slave = ServerProcess::start(&conf, &[], &[]);
    let http = sidecar_of(&slave);
    assert_eq!(http_get(&http, "/readyz").0, 200);
    let master_pid = nix::unistd::Pid::from_raw(master.child.id() as i32);
    nix::sys::signal::kill(master_pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    wait_for_status(&http, "/readyz", 503, "ready although the master is silent");
    let (_, metrics) = http_get(&http, "/metrics");
    nix::sys::signal::kill(master_pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    assert!(
        metrics.contains("mupdate_replication_link_up 1"),
        "the lag bound, not a lost link, made it unready: {metrics}"
    );
    let lag: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mupdate_replication_lag_seconds "))
        .and_then(|v| v.parse().ok())
        .expect("a lag figure");
    assert!(lag > 5.0, "lag {lag}");
    // The master answers the keep-alive it was sent meanwhile: ready again.
    wait_for_status(&http, "/readyz", 200, "not ready after the master resumed");
    let (_, metrics) = http_get(&http, "/metrics");
    assert!(
        metrics.contains("mupdate_replication_resyncs_total{kind=\"full\"} 1"),
        "resumed on the same link, no resync: {metrics}"
    );
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
    let (server, http) = start(&conf, &["-m"]);
    let (status, metrics) = http_get(&http, "/metrics");
    assert_eq!(status, 200);
    let out = output_with_input(
        Command::new("/usr/bin/promtool").args(["check", "metrics"]),
        metrics.as_bytes(),
    );
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
}

/// A query answered by Prometheus's HTTP API, as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_master_and_a_slave() {
    // A master and a slave, each with its sidecar.
    let master_dir = tempfile::tempdir().unwrap();
    let master = ServerProcess::start(&write_process_config(master_dir.path(), ""), &["-m"], &[]);
    let slave_dir = tempfile::tempdir().unwrap();
    let slave = ServerProcess::start(&follow_config(slave_dir.path(), master.addr), &[], &[]);
    let Some(prometheus) = Prometheus::start(&[sidecar_of(&master), sidecar_of(&slave)]) else {
        return;
    };
    let mut writer = logged_in(master.addr).await;
    writer
        .done(b"A1 ACTIVATE \"user.scraped\" \"be1!p\" \"\"\r\n")
        .await;
    assert!(prometheus.wait_until_up(2), "both targets scraped");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The slave exports the same series at 0 from its start, so count over both.
        let seen =
            prometheus.query("sum(mupdate_commands_total{command=\"ACTIVATE\",result=\"ok\"})");
        if seen["data"]["result"][0]["value"][1].as_str() == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the ACTIVATE: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_master_exports_every_closed_label_set_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "");
    let server = ServerProcess::start(&conf, &["-m"], &[]);
    let (_, metrics) = http_get(&sidecar_of(&server), "/metrics");
    for series in [
        "mupdate_commands_total{command=\"ACTIVATE\",result=\"ok\"}",
        "mupdate_commands_total{command=\"FIND\",result=\"no\"}",
        "mupdate_commands_total{command=\"_OTHER\",result=\"bad\"}",
        "mupdate_replication_slaves_connected{protocol=\"update\"}",
        "mupdate_replication_slaves_connected{protocol=\"xupdate\"}",
        "mupdate_replication_resyncs_total{kind=\"full\"}",
        "mupdate_replication_resyncs_total{kind=\"delta\"}",
        "mupdate_mailboxes_db_writes_total{kind=\"set\"}",
        "mupdate_command_duration_seconds_count{command=\"DELETE\"}",
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(0.0),
            "{series} in\n{metrics}"
        );
    }
}
