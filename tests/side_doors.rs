//! Side doors bounded (issue 14): floods of the HTTP sidecar and of the kick socket are shed
//! while MUPDATE and /readyz keep answering; a saslauthd that never answers costs one login.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Half-sent requests or silent kicks each flood opens.
const FLOOD: usize = 3000;

/// Descriptors the process `pid` holds.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// Waits until every stream of `flood` is closed by the server (EOF or reset), at most
/// `patience`; returns how many are still open then.
fn still_open_after(flood: &mut [impl Read + AsTimeout], patience: Duration) -> usize {
    let deadline = Instant::now() + patience;
    let mut open = 0;
    for stream in flood.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        stream.set_timeout(left.max(Duration::from_millis(1)));
        let mut byte = [0u8; 64];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            // Bytes (an answer to a half-sent request) or a timeout: not shed.
            _ => open += 1,
        }
    }
    open
}

/// Read timeouts on both kinds of stream a flood uses.
trait AsTimeout {
    fn set_timeout(&mut self, timeout: Duration);
}

impl AsTimeout for TcpStream {
    fn set_timeout(&mut self, timeout: Duration) {
        self.set_read_timeout(Some(timeout)).expect("read timeout");
    }
}

impl AsTimeout for std::os::unix::net::UnixStream {
    fn set_timeout(&mut self, timeout: Duration) {
        self.set_read_timeout(Some(timeout)).expect("read timeout");
    }
}

/// MUPDATE still serves: a fresh login and a FIND.
async fn mupdate_answers(addr: std::net::SocketAddr) {
    let mut client = logged_in(addr).await;
    client.finds_nothing("user.nobody").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_flood_is_shed_while_mupdate_and_readyz_answer() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(
        dir.path(),
        "mupdate_http_timeout: 2\nmupdate_http_connections_max: 32\n",
    );
    let server = ServerProcess::start(&conf, &["-m"], &[]);
    let http = sidecar_of(&server);
    let pid = server.child.id();
    let before = open_descriptors(pid);
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let mut stream = TcpStream::connect(&http).expect("connect to the sidecar");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: flood\r\n")
            .expect("half a request");
        flood.push(stream);
        if i % 500 == 499 {
            assert_eq!(http_get(&http, "/readyz").0, 200, "readyz during the flood");
            mupdate_answers(server.addr).await;
        }
    }
    let during = open_descriptors(pid);
    assert!(
        during <= before + 32 + 16,
        "the sidecar holds {during} descriptors during a flood of {FLOOD} (before: {before}, cap 32)"
    );
    assert_eq!(http_get(&http, "/readyz").0, 200);
    mupdate_answers(server.addr).await;
    // Every half-sent request is closed: the oldest by newer ones, the rest by the header
    // timeout (2 s).
    let open = still_open_after(&mut flood, Duration::from_secs(6));
    assert_eq!(open, 0, "{open} half-sent requests still held");
    // A complete request on a kept-alive connection is still answered.
    let (status, body) = http_get(&http, "/livez");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_flood_on_a_slave_is_answered_in_bounded_numbers() {
    let master = TestServer::start("").await;
    let slave_dir = tempfile::tempdir().unwrap();
    let conf = follow_config(slave_dir.path(), master.addr);
    std::fs::write(
        &conf,
        std::fs::read_to_string(&conf).unwrap() + "mupdate_kicks_max: 16\n",
    )
    .unwrap();
    let slave = ServerProcess::start(&conf, &[], &[]);
    let http = sidecar_of(&slave);
    let kick_path = slave_dir.path().join("socket/mupdate.target");
    let pid = slave.child.id();
    let before = open_descriptors(pid);
    let mut flood = Vec::with_capacity(FLOOD);
    let mut most = before;
    for i in 0..FLOOD {
        flood.push(std::os::unix::net::UnixStream::connect(&kick_path).expect("kick"));
        if i % 100 == 0 {
            most = most.max(open_descriptors(pid));
        }
        if i % 500 == 499 {
            assert_eq!(http_get(&http, "/readyz").0, 200, "readyz during the flood");
            mupdate_answers(slave.addr).await;
        }
    }
    assert!(
        most <= before + 16 + 16,
        "the slave held {most} descriptors during a kick flood (before: {before}, cap 16)"
    );
    // Every kick is answered `ok` and closed.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, kick) in flood.iter_mut().enumerate() {
        kick.set_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
        let mut answer = Vec::new();
        kick.read_to_end(&mut answer)
            .unwrap_or_else(|e| panic!("kick {i} not answered: {e}"));
        assert_eq!(answer, b"ok", "kick {i}");
    }
    mupdate_answers(slave.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_saslauthd_times_out_that_login_only() {
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("mux");
    // Takes every question and never answers.
    let stalled = tokio::net::UnixListener::bind(&socket).unwrap();
    let held = tokio::spawn(async move {
        let mut questions = Vec::new();
        while let Ok((stream, _)) = stalled.accept().await {
            questions.push(stream);
        }
    });
    let server = TestServer::start(&format!(
        "sasl_pwcheck_method: saslauthd\nsasl_saslauthd_path: {}\nmupdate_saslauthd_timeout: 2\n",
        socket.display()
    ))
    .await;
    // `carol`, unknown to the passwd file, goes to saslauthd.
    let mut carol = Client::connect(server.addr).await;
    carol.read_banner().await;
    let started = Instant::now();
    carol
        .send(b"C1 AUTHENTICATE \"PLAIN\" \"AGNhcm9sAHNlY3JldA==\"\r\n")
        .await;
    // Meanwhile the admin (passwd file) logs in and is served at once.
    let mut admin = server.admin().await;
    admin.finds_nothing("user.nobody").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the admin waited for carol's saslauthd"
    );
    let answer = carol.read_until(b"\r\n").await;
    let waited = started.elapsed();
    assert!(
        answer.starts_with(b"C1 NO "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(8),
        "carol's login answered after {waited:?}"
    );
    // Her connection still works: the admin's password is checked locally.
    carol.exchange(AUTH, b"A0 OK \"Authenticated\"\r\n").await;
    held.abort();
}
