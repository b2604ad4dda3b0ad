//! A session run over an in-memory pipe (`tokio::io::duplex`): the same code the listener
//! runs over TCP, driven byte by byte without a socket.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::{Role, ServerContext, admit};
use crate::config::{self, Environment};
use crate::store::{Store, StoreOptions};

const PATIENCE: Duration = Duration::from_secs(10);

/// A master's context on a fresh database in `dir`, with `extra` imapd.conf lines.
fn master(dir: &std::path::Path, extra: &str) -> Arc<ServerContext> {
    let conf = dir.join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {dir}\nservername: m1\nadmins: mupdate\nallowplaintext: yes\n\
             failedloginpause: 0\nmupdate_passwd_file: {dir}/passwd\n\
             mupdate_banner_version: 3.6.1-test\n{extra}",
            dir = dir.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("passwd"), "mupdate:{PLAIN}mupdatepass\n").unwrap();
    let settings = config::load(&conf, &Environment::default()).unwrap();
    let store = Store::open(&settings.db_path, StoreOptions::default()).unwrap();
    Arc::new(ServerContext::new(
        settings,
        store,
        Role::Master,
        CancellationToken::new(),
    ))
}

/// Reads from `client` until the input ends with `end`.
async fn read_until(client: &mut DuplexStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        while !got.ends_with(end) {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "EOF after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {end:?} in {:?}", String::from_utf8_lossy(&got)));
    got
}

#[tokio::test]
async fn a_session_over_an_in_memory_pipe_logs_in_writes_and_finds() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = master(dir.path(), "");
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(admit(&ctx, server, None));
    let banner = read_until(&mut client, b"\"(master)\"\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&banner),
        "* AUTH \"PLAIN\"\r\n* COMPRESS \"DEFLATE\"\r\n* PARTIAL-UPDATE\r\n\
         * OK MUPDATE \"m1\" \"Cyrus IMAP\" \"3.6.1-test\" \"(master)\"\r\n"
    );
    client
        .write_all(
            b"A0 AUTHENTICATE \"PLAIN\" \"AG11cGRhdGUAbXVwZGF0ZXBhc3M=\"\r\n\
              A1 ACTIVATE \"user.pipe\" \"b1!p1\" \"pipe\tlrswipkxtecda\t\"\r\n\
              F1 FIND \"user.pipe\"\r\nL1 LOGOUT\r\n",
        )
        .await
        .unwrap();
    let answers = read_until(&mut client, b"L1 OK \"bye-bye\"\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&answers),
        "A0 OK \"Authenticated\"\r\nA1 OK \"done\"\r\n\
         F1 MAILBOX {9+}\r\nuser.pipe {5+}\r\nb1!p1 {19+}\r\npipe\tlrswipkxtecda\t\r\n\
         F1 OK \"Search completed\"\r\nL1 OK \"bye-bye\"\r\n"
    );
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    tokio::time::timeout(PATIENCE, served)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ctx.open_connections(), 0);
}

#[tokio::test]
async fn a_pipe_beyond_the_connection_limit_is_refused_in_cyrus_words() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = master(dir.path(), "mupdate_connections_max: 1\n");
    let (mut first, first_end) = tokio::io::duplex(4096);
    let _first = tokio::spawn(admit(&ctx, first_end, None));
    read_until(&mut first, b"\"(master)\"\r\n").await;
    let (mut second, second_end) = tokio::io::duplex(4096);
    tokio::spawn(admit(&ctx, second_end, None));
    let mut refusal = Vec::new();
    tokio::time::timeout(PATIENCE, second.read_to_end(&mut refusal))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refusal, b"* BYE \"Server Unable\"\r\n\0");
}
