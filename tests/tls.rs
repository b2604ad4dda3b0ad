//! STARTTLS (spec §5.10) with a test CA: the banner, the handshake, the banner again under
//! TLS, Cyrus's refusals, and failed handshakes that close only their own connection.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A CA and a server certificate it signed for 127.0.0.1.
struct TestPki {
    ca: CertificateDer<'static>,
}

impl TestPki {
    /// Writes `cert.pem`, `key.pem` (for 127.0.0.1 and localhost) and `ca.pem` into `dir`.
    fn create(dir: &Path) -> TestPki {
        let pki = Pki::new(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("cert.pem"), &pki.cert_pem).expect("cert");
        std::fs::write(dir.join("ca.pem"), &pki.ca_pem).expect("CA");
        std::fs::write(dir.join("key.pem"), &pki.key_pem).expect("key");
        TestPki { ca: pki.ca_der }
    }

    fn config_lines(dir: &Path) -> String {
        format!(
            "tls_server_cert: {}\ntls_server_key: {}\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        )
    }

    fn connector(&self) -> TlsConnector {
        connector_trusting(self.ca.clone())
    }
}

fn connector_trusting(ca: CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(ca).expect("root");
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Reads until `needle` has arrived; returns everything read.
async fn read_until<S: AsyncRead + Unpin>(stream: &mut S, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&seen, needle).is_none() {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(
            n > 0,
            "EOF before {:?} in {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    seen
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    answer: &[u8],
) {
    stream.write_all(request).await.expect("write");
    let got = read_until(stream, answer).await;
    assert!(got.ends_with(answer), "{:?}", String::from_utf8_lossy(&got));
}

const BANNER_END: &[u8] = b"\"(master)\"\r\n";

/// A master offering STARTTLS, with `env` (e.g. plaintext logins off).
fn tls_master(dir: &Path, env: &[(&str, &str)]) -> (ServerProcess, TestPki) {
    let pki = TestPki::create(dir);
    let conf = write_process_config(dir, &TestPki::config_lines(dir));
    (ServerProcess::start(&conf, &["-m"], env), pki)
}

/// Connects, reads the banner and sends STARTTLS; returns the socket, ready for a handshake.
async fn begin_starttls(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    read_until(&mut tcp, BANNER_END).await;
    exchange(
        &mut tcp,
        b"S1 STARTTLS\r\n",
        b"S1 OK Begin TLS negotiation now\r\n",
    )
    .await;
    tcp
}

/// Connects, reads the banner and starts TLS; returns the TLS stream and the new banner.
async fn start_tls(
    server: &ServerProcess,
    pki: &TestPki,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    let tcp = begin_starttls(server.addr).await;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = pki.connector().connect(name, tcp).await.expect("handshake");
    let banner = read_until(&mut tls, BANNER_END).await;
    (tls, banner)
}

/// Another client is still served: banner, login, NOOP.
async fn still_serving(server: &ServerProcess) {
    let mut other = logged_in(server.addr).await;
    other.expect_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_offered_negotiated_and_greets_again() {
    let dir = tempfile::tempdir().unwrap();
    // Without allowplaintext, PLAIN is offered only under TLS (as Cyrus decides).
    let (server, pki) = tls_master(dir.path(), &[("IMAPD_ALLOWPLAINTEXT", "no")]);
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let banner = read_until(&mut tcp, BANNER_END).await;
    assert_eq!(
        String::from_utf8_lossy(&banner),
        "* AUTH\r\n* STARTTLS\r\n* COMPRESS \"DEFLATE\"\r\n* PARTIAL-UPDATE\r\n\
         * OK MUPDATE \"mupdate-master\" \"Cyrus IMAP\" \"3.6.1-test\" \"(master)\"\r\n"
    );
    drop(tcp);

    let (mut tls, banner) = start_tls(&server, &pki).await;
    assert_eq!(
        String::from_utf8_lossy(&banner),
        "* AUTH \"PLAIN\"\r\n* COMPRESS \"DEFLATE\"\r\n* PARTIAL-UPDATE\r\n\
         * OK MUPDATE \"mupdate-master\" \"Cyrus IMAP\" \"3.6.1-test\" \"(master)\"\r\n"
    );
    exchange(
        &mut tls,
        b"S2 STARTTLS\r\n",
        b"S2 BAD Already did a successful Starttls\r\n",
    )
    .await;
    exchange(&mut tls, AUTH, b"A0 OK \"Authenticated\"\r\n").await;
    exchange(
        &mut tls,
        b"A1 ACTIVATE \"user.tls\" \"be1!p\" \"\"\r\nF1 FIND \"user.tls\"\r\n",
        b"F1 OK \"Search completed\"\r\n",
    )
    .await;
    tls.shutdown().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_refusals_and_pipelined_input() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _pki) = tls_master(dir.path(), &[]);
    let mut client = logged_in(server.addr).await;
    client
        .exchange(
            b"S1 STARTTLS\r\nN1 NOOP\r\n",
            b"S1 BAD Can't Starttls after authentication\r\n",
        )
        .await;
    // The pipelined NOOP was dropped: the next answer is N2's.
    client.expect_quiet().await;
    client
        .exchange(b"S3 STARTTLS extra\r\n", b"S3 BAD \"Extra arguments\"\r\n")
        .await;

    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    read_until(&mut tcp, BANNER_END).await;
    exchange(
        &mut tcp,
        b"C1 COMPRESS \"DEFLATE\"\r\n",
        b"C1 OK DEFLATE active\r\n",
    )
    .await;
    let mut deflate = flate2::Compress::new(flate2::Compression::default(), false);
    let mut wire = Vec::with_capacity(256);
    deflate
        .compress_vec(b"S1 STARTTLS\r\n", &mut wire, flate2::FlushCompress::Sync)
        .expect("deflate");
    tcp.write_all(&wire).await.expect("write");
    let mut inflate = flate2::Decompress::new(false);
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while find(&answer, b"\r\n").is_none() {
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0);
        inflate
            .decompress_vec(&buf[..n], &mut answer, flate2::FlushDecompress::Sync)
            .expect("inflate");
    }
    assert_eq!(answer, b"S1 BAD Can't Starttls after Compress\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handshake_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _pki) = tls_master(dir.path(), &[]);

    // A client that trusts another CA gives up on the handshake.
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = TestPki::create(other_dir.path());
    let tcp = begin_starttls(server.addr).await;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let refused = stranger.connector().connect(name, tcp).await;
    assert!(
        refused.is_err(),
        "a certificate from an unknown CA was accepted"
    );
    still_serving(&server).await;

    // Garbage instead of a ClientHello: the server closes that connection.
    let mut tcp = begin_starttls(server.addr).await;
    tcp.write_all(b"this is not a TLS ClientHello at all\r\n\x16\x03\x01\x00\x05hello")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the server kept a broken handshake open");
    still_serving(&server).await;

    // A client that stops in the middle of its handshake holds only its own connection.
    let mut stalled = begin_starttls(server.addr).await;
    stalled.write_all(b"\x16\x03\x01").await.expect("write");
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let conf = write_process_config(dir.path(), &TestPki::config_lines(dir.path()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mupdate"))
        .arg("-C")
        .arg(&conf)
        .arg("-m")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_contains(&stderr, "cert.pem");

    // A slave asked to use TLS with nothing to verify its master against.
    let slave_dir = tempfile::tempdir().unwrap();
    let conf = follow_config(slave_dir.path(), "127.0.0.1:1".parse().unwrap());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mupdate"))
        .arg("-C")
        .arg(&conf)
        .args(["--set", "mupdate_tls=yes"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_contains(&stderr, "mupdate_tls_ca_file");
}

/// Runs the Python client (Python's ssl and zlib) against `server`; with `ca`, over STARTTLS.
fn python_compress_client(server: &ServerProcess, ca: Option<&Path>) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/compress_client.py"
    );
    let mut command = std::process::Command::new("python3");
    command
        .arg(script)
        .arg("127.0.0.1")
        .arg(server.addr.port().to_string());
    if let Some(ca) = ca {
        command.arg(ca);
    }
    let out = command.output().expect("python3 runs");
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "python client: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_in_both_directions_against_python_zlib_in_clear_and_after_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _pki) = tls_master(dir.path(), &[]);
    python_compress_client(&server, None);
    python_compress_client(&server, Some(&dir.path().join("ca.pem")));
    still_serving(&server).await;
}

/// A slave configuration following `master` over STARTTLS, trusting `ca`.
fn tls_slave_config(dir: &Path, master: std::net::SocketAddr, ca: &Path) -> std::path::PathBuf {
    let conf = follow_config(dir, master);
    let text = std::fs::read_to_string(&conf).expect("conf")
        + &format!("mupdate_tls: yes\nmupdate_tls_ca_file: {}\n", ca.display());
    std::fs::write(&conf, text).expect("conf");
    conf
}

/// Starts a slave that cannot synchronise and returns the first log line containing
/// `expected` (it keeps retrying and never greets), then stops it.
fn slave_fails_with(conf: &Path, expected: &str) -> String {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mupdate"))
        .arg("-C")
        .arg(conf)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mupdate");
    let stderr = child.stderr.take().expect("stderr");
    let (found, wait) = std::sync::mpsc::channel();
    let expected = expected.to_owned();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            assert!(!line.contains("listening on"), "it synchronised: {line}");
            if line.contains(&expected) {
                let _ = found.send(line);
            }
        }
    });
    let line = wait.recv_timeout(std::time::Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    line.expect("the expected failure in the slave's log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_follows_its_master_over_starttls_and_refuses_what_it_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (master, _pki) = tls_master(dir.path(), &[]);
    let mut writer = logged_in(master.addr).await;
    writer
        .done(b"A1 ACTIVATE \"user.secure\" \"be1!p\" \"\"\r\n")
        .await;
    let slave_dir = tempfile::tempdir().unwrap();
    let slave = ServerProcess::start(
        &tls_slave_config(slave_dir.path(), master.addr, &dir.path().join("ca.pem")),
        &[],
        &[],
    );
    let mut reader = logged_in(slave.addr).await;
    writer
        .done(b"A2 ACTIVATE \"user.secure2\" \"be1!p\" \"\"\r\n")
        .await;
    converge(&mut reader, &mut writer).await;

    // A slave that trusts another CA does not synchronise.
    let stranger_dir = tempfile::tempdir().unwrap();
    TestPki::create(stranger_dir.path());
    let wary_dir = tempfile::tempdir().unwrap();
    let line = slave_fails_with(
        &tls_slave_config(
            wary_dir.path(),
            master.addr,
            &stranger_dir.path().join("ca.pem"),
        ),
        "TLS with the master",
    );
    assert_contains(&line, "retrying");

    // Nor one whose master does not offer STARTTLS (no silent downgrade).
    let plain_master = TestServer::start("").await;
    let plain_dir = tempfile::tempdir().unwrap();
    slave_fails_with(
        &tls_slave_config(
            plain_dir.path(),
            plain_master.addr,
            &dir.path().join("ca.pem"),
        ),
        "does not offer STARTTLS",
    );
    let _ = plain_master.stop().await;
    still_serving(&master).await;
}
