//! Spec §15 checklist, connection-level behaviour (items 106-113): COMPRESS, STARTTLS
//! without TLS, the connection limit, broken clients, telemetry logs and idle timeouts.

mod common;

use std::time::Duration;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

transcripts!("session":
    c106_compress_refusals,
    c109_starttls_without_tls_discards_pipelined_input,
    c111_disconnect_mid_literal_disturbs_nobody,
    c113_c113a_idle_connections_get_bye,
);

struct Deflated {
    client: Client,
    out: Compress,
    inp: Decompress,
    plain: Vec<u8>,
}

impl Deflated {
    async fn send(&mut self, bytes: &[u8]) {
        let mut wire = Vec::with_capacity(bytes.len() + 64);
        self.out
            .compress_vec(bytes, &mut wire, FlushCompress::Sync)
            .unwrap();
        self.client.send(&wire).await;
    }

    async fn expect(&mut self, expected: &[u8]) {
        while self.plain.len() < expected.len() {
            let raw = self.client.read_exact(1).await;
            let mut more = raw;
            more.extend(std::mem::take(&mut self.client.pending));
            let mut out = Vec::with_capacity(65536);
            self.inp
                .decompress_vec(&more, &mut out, FlushDecompress::Sync)
                .unwrap();
            self.plain.extend(out);
        }
        let got: Vec<u8> = self.plain.drain(..expected.len()).collect();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }
}

#[tokio::test]
async fn c107_compress_deflate_both_ways() {
    let server = TestServer::start("").await;
    let mut c = server.client().await;
    c.exchange(b"C4 compress \"deflate\"\r\n", b"C4 OK deflate active\r\n")
        .await;
    let mut z = Deflated {
        client: c,
        out: Compress::new(Compression::default(), false),
        inp: Decompress::new(false),
        plain: Vec::new(),
    };
    z.send(b"N1 NOOP\r\n").await;
    z.expect(b"N1 BAD \"Please login first\"\r\n").await;
    z.send(b"C5 COMPRESS \"DEFLATE\"\r\n").await;
    z.expect(b"C5 BAD DEFLATE active via COMPRESS\r\n").await;
    z.send(AUTH).await;
    z.expect(b"A0 OK \"Authenticated\"\r\n").await;
    z.send(b"A1 ACTIVATE \"user.z\" \"be1!p\" \"z\tl\t\"\r\nF1 FIND \"user.z\"\r\n")
        .await;
    z.expect(b"A1 OK \"done\"\r\nF1 MAILBOX {6+}\r\nuser.z {5+}\r\nbe1!p {4+}\r\nz\tl\t\r\nF1 OK \"Search completed\"\r\n")
        .await;
}

#[tokio::test]
async fn c107_garbage_after_compress_ends_only_that_session() {
    let server = TestServer::start("").await;
    let mut c = server.client().await;
    c.exchange(b"C4 COMPRESS \"DEFLATE\"\r\n", b"C4 OK DEFLATE active\r\n")
        .await;
    c.send(b"\xff\xff\xff\xff not deflate at all").await;
    // The BYE is itself compressed; the connection then closes.
    let mut rest = Vec::new();
    loop {
        match tokio::time::timeout(
            PATIENCE,
            tokio::io::AsyncReadExt::read_buf(&mut c.stream, &mut rest),
        )
        .await
        {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => {}
            other => panic!("expected EOF, got {other:?}"),
        }
    }
    let mut plain = Vec::with_capacity(256);
    Decompress::new(false)
        .decompress_vec(&rest, &mut plain, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(plain, b"* BYE \"Error decompressing data\"\r\n");
    server.admin().await.expect_quiet().await;
}

#[tokio::test]
async fn c110_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir, "mupdate_connections_max: 2\n").await;
    let mut first = server.admin().await;
    let _second = server.client().await;
    let mut third = Client::connect(server.addr).await;
    third.expect_eof(b"* BYE \"Server Unable\"\r\n\0").await;
    // The clients already in are still served.
    first.expect_quiet().await;
    drop(first);
    // A slot frees up when a client leaves.
    let mut again = None;
    for _ in 0..100 {
        let mut c = Client::connect(server.addr).await;
        let first_bytes = c.read_exact(6).await;
        if first_bytes == b"* AUTH" {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "no slot after a client left");
}

fn only_file(dir: &std::path::Path) -> std::path::PathBuf {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

#[tokio::test]
async fn c112_telemetry_log_is_cyrus_format() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start("").await;
    let log_dir = server.path().join("log/mupdate");
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut c = server.admin().await;
    c.exchange(b"N1 NOOP\r\n", b"N1 OK \"Noop done\"\r\n").await;
    c.send(b"Q1 LOGOUT\r\n").await;
    c.expect_eof(b"Q1 OK \"bye-bye\"\r\n").await;
    let file = only_file(&log_dir);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let (prefix, stamp) = name.split_once('-').unwrap();
    assert_eq!(prefix, "mupdate");
    let (secs, usecs) = stamp.split_once('.').unwrap();
    assert!(
        secs.parse::<u64>().is_ok() && usecs.parse::<u32>().is_ok(),
        "{name}"
    );
    assert!(
        usecs == "0" || !usecs.starts_with('0'),
        "usec is not zero-padded: {name}"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read(&file).unwrap();
    let text = String::from_utf8(text).unwrap();
    let header_end = text.find("\n\n").unwrap();
    assert!(text.starts_with("---------- mupdate "), "{text:?}");
    // ctime: "Wed Nov 25 13:52:02 2026"
    assert_eq!(text[19..header_end].len(), 24, "{text:?}");
    let body = &text[header_end + 2..];
    let secs = secs.to_owned();
    let expected_body = format!(
        "<{secs}<N1 NOOP\r\n>{secs}>N1 OK \"Noop done\"\r\n<{secs}<Q1 LOGOUT\r\n>{secs}>Q1 OK \"bye-bye\"\r\n"
    );
    // Timestamps can tick over during the test: compare with them blanked out.
    let blank = |s: &str| {
        let mut out = String::new();
        let mut chars = s.chars().peekable();
        while let Some(ch) = chars.next() {
            out.push(ch);
            if ch == '<' || ch == '>' {
                while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                    chars.next();
                }
            }
        }
        out
    };
    assert_eq!(blank(body), blank(&expected_body));
    assert!(!text.contains("AUTHENTICATE") && !text.contains("Authenticated"));
}

#[tokio::test]
async fn c112a_telemetry_goes_to_the_authorisation_identity() {
    let server = TestServer::start("").await;
    let bob_dir = server.path().join("log/bob");
    let admin_dir = server.path().join("log/mupdate");
    std::fs::create_dir_all(&bob_dir).unwrap();
    std::fs::create_dir_all(&admin_dir).unwrap();
    let mut failed = server.client().await;
    failed.login_refused("X1", B64_BAD).await;
    let mut c = server.client().await;
    c.exchange(
        b"A1 AUTHENTICATE \"PLAIN\" \"Ym9iAG11cGRhdGUAbXVwZGF0ZXBhc3M=\"\r\n",
        b"A1 OK \"Authenticated\"\r\n",
    )
    .await;
    c.expect_quiet().await;
    let text = std::fs::read_to_string(only_file(&bob_dir)).unwrap();
    assert!(text.starts_with("---------- bob "), "{text:?}");
    assert_eq!(std::fs::read_dir(&admin_dir).unwrap().count(), 0);
}

#[tokio::test]
async fn c112b_long_answers_are_logged_in_4096_byte_records() {
    let server = TestServer::start("").await;
    let log_dir = server.path().join("log/mupdate");
    let mut c = server.admin().await;
    for i in 0..100 {
        c.done(format!("A{i} ACTIVATE \"user.long{i:03}\" \"backend1!default\" \"owner\tlrswipkxtecda\t\"\r\n").as_bytes()).await;
    }
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut c = server.admin().await;
    c.send(b"L1 LIST\r\n").await;
    c.read_until(b"L1 OK \"list complete\"\r\n").await;
    c.expect_quiet().await;
    let text = std::fs::read(only_file(&log_dir)).unwrap();
    // Records: split at '>' + digits + '>' markers.
    let marker = |i: usize| {
        text[i] == b'>' && {
            let digits = text[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            digits > 0 && text.get(i + 1 + digits) == Some(&b'>')
        }
    };
    let starts: Vec<usize> = (0..text.len()).filter(|&i| marker(i)).collect();
    let sizes: Vec<usize> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        sizes.iter().any(|&s| s > 4096),
        "LIST should need more than one record"
    );
    // Each '>' record carries at most 4096 bytes of payload (plus its 12-byte marker).
    assert!(sizes.iter().all(|&s| s <= 4096 + 12 + 24), "{sizes:?}");
}

#[tokio::test]
async fn c113_activity_keeps_a_connection_open() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir, "mupdate_idle_timeout: 2s\n").await;
    let mut c = server.admin().await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        c.expect_quiet().await;
    }
}

/// A command that cannot finish (a LIST far larger than the socket buffers, to a client
/// that reads nothing, under a long write timeout) is cut after its grace at shutdown,
/// instead of keeping its connection open past the drain.
#[tokio::test]
async fn shutdown_cuts_a_command_that_cannot_finish() {
    let server = TestServer::start("mupdate_write_timeout: 10m\n").await;
    let many = (0..200_000)
        .map(|i| {
            activation(
                format!("user.a.long.mailbox.name.to.fill.buffers{i:07}"),
                "backend1!default",
                "owner\tlrswipkxtecda\tanyone\tlrs\t",
            )
        })
        .collect();
    server.ctx.store.apply_many(many).await.expect("apply");
    let mut lister = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    lister.write_all(AUTH).await.unwrap();
    lister.write_all(b"L1 LIST\r\n").await.unwrap();
    // Let the LIST fill both socket buffers and block on its write.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopping = tokio::spawn(server.stop());
    // Still reading nothing, well past the grace (5 s): a LIST allowed to wait for the
    // client would finish once it reads.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), lister.read_to_end(&mut got))
        .await
        .expect("the connection closes after the grace")
        .expect("read");
    assert!(got.starts_with(b"* "), "the banner came first");
    assert!(
        find(&got, b"L1 OK").is_none(),
        "the LIST could not have finished"
    );
    assert!(
        got.len() > 1 << 20,
        "the LIST had started: {} bytes",
        got.len()
    );
    stopping.await.unwrap();
}

#[tokio::test]
async fn shutdown_says_bye_to_everyone() {
    let server = TestServer::start("").await;
    let mut streaming = server.admin().await;
    streaming
        .exchange(b"U1 UPDATE\r\n", b"U1 OK \"streaming starts\"\r\n")
        .await;
    let mut idle = server.admin().await;
    let addr = server.addr;
    let _dir = server.stop().await;
    streaming
        .expect_eof(b"* BYE \"server shutting down\"\r\n")
        .await;
    idle.expect_eof(b"* BYE \"server shutting down\"\r\n").await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
