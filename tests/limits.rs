//! Limits of issue 6, each hit once with its answer while another client is still served:
//! connections awaiting login, the login deadline, a client that takes no output, and
//! failed logins per peer address. (The connection limit, idle timeout and word, quoted and
//! literal sizes are in tests/session.rs and tests/protocol.rs.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;

/// A logged-in client is served.
async fn still_serving(server: &TestServer) {
    let mut other = server.admin().await;
    other.expect_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_awaiting_login_are_capped() {
    let server = TestServer::start("mupdate_unauthenticated_max: 2\n").await;
    let mut first = server.client().await;
    let _second = server.client().await;
    let mut third = Client::connect(server.addr).await;
    third
        .expect_eof(b"* BYE \"too many connections awaiting login\"\r\n")
        .await;
    // Once one logs in, its place is free again.
    first.exchange(AUTH, b"A0 OK \"Authenticated\"\r\n").await;
    let mut fourth = server.client().await;
    fourth.exchange(AUTH, b"A0 OK \"Authenticated\"\r\n").await;
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_does_not_log_in_in_time_is_closed() {
    let server = TestServer::start("mupdate_login_timeout: 1\n").await;
    let started = Instant::now();
    let mut slow = server.client().await;
    // Half a command does not buy time.
    slow.send(b"A1 AUTHENTI").await;
    let mut quick = server.admin().await;
    slow.expect_eof(b"* BYE \"login timed out\"\r\n").await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    // A client that logged in in time is not affected.
    tokio::time::sleep(Duration::from_millis(200)).await;
    quick.expect_quiet().await;
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_no_output_is_dropped() {
    let server = TestServer::start("mupdate_write_timeout: 1\n").await;
    let mut writer = server.admin().await;
    let mut batch = Vec::new();
    for i in 0..3000 {
        batch.extend_from_slice(
            format!("A{i} ACTIVATE \"user.out{i:05}\" \"be1!p\" \"u\tlrswipkxtecda\t\"\r\n")
                .as_bytes(),
        );
    }
    writer.send(&batch).await;
    writer.read_until(b"A2999 OK \"done\"\r\n").await;

    // A reader with a tiny receive buffer asks for 200 LISTs and reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stalled = socket.connect(server.addr).await.expect("connect");
    let mut request = AUTH.to_vec();
    for i in 0..200 {
        request.extend_from_slice(format!("L{i} LIST\r\n").as_bytes());
    }
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &request)
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_secs(3)).await;
    still_serving(&server).await;
    // Now read: the server gave up on it long before the 200th LIST was answered.
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut received))
        .await
        .expect("the server closed the connection")
        .ok();
    assert!(
        find(&received, b"L199 OK \"list complete\"\r\n").is_none(),
        "all {} bytes were delivered",
        received.len()
    );
    assert!(find(&received, b"A0 OK \"Authenticated\"\r\n").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_too_many_failed_logins_is_refused_unchecked() {
    let server = TestServer::start("mupdate_failed_logins_max: 3\n").await;
    // base64 of "\0mupdate\0wrong" and of the right password.
    let wrong = b"AG11cGRhdGUAd3Jvbmc=";
    let mut client = server.client().await;
    for i in 0..3 {
        let request = [
            format!("B{i} AUTHENTICATE \"PLAIN\" \"").as_bytes(),
            wrong,
            b"\"\r\n",
        ]
        .concat();
        client
            .exchange(
                &request,
                format!("B{i} NO \"undefined error!\"\r\n").as_bytes(),
            )
            .await;
    }
    // The right password no longer helps from this address.
    client
        .exchange(AUTH, b"A0 NO \"too many failed logins\"\r\n")
        .await;
    let mut again = server.client().await;
    again
        .exchange(AUTH, b"A0 NO \"too many failed logins\"\r\n")
        .await;
    // Another address logs in.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().unwrap())
        .expect("bind 127.0.0.2");
    let stream = socket.connect(server.addr).await.expect("connect");
    let mut elsewhere = Client {
        stream,
        pending: Vec::new(),
    };
    elsewhere.read_banner().await;
    elsewhere
        .exchange(AUTH, b"A0 OK \"Authenticated\"\r\n")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_exchange_cut_off_by_the_deadline_is_answered() {
    let server = TestServer::start("mupdate_login_timeout: 1\n").await;
    let mut client = server.client().await;
    client
        .exchange(b"X1 AUTHENTICATE \"PLAIN\"\r\n", b"\r\n")
        .await;
    client
        .expect_eof(
            b"X1 NO Error reading client response: login timed out\r\n* BYE \"login timed out\"\r\n",
        )
        .await;
    still_serving(&server).await;
}
