//! SCRAM-SHA-256 over MUPDATE's SASL framing (spec §4.2: bare base64 challenge lines; the
//! server's final message is one more challenge, answered by an empty line, as Cyrus does).

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use mupdate::auth::scram;

/// A passwd file whose `mupdate` entry is a SCRAM verifier made by `mupdate hash-password`.
fn scram_passwd(server: &TestServer, password: &str) {
    let line = scram_passwd_line("mupdate", password);
    assert!(line.starts_with("mupdate:{SCRAM-SHA-256}4096$"), "{line}");
    std::fs::write(
        server.dir.path().join("passwd"),
        format!("{line}bob:{{PLAIN}}bobpass\n"),
    )
    .expect("passwd");
}

const OFFER_SCRAM: &str = "sasl_mech_list: SCRAM-SHA-256 PLAIN\n";

/// Runs a SCRAM exchange as `user` with `password`, the first message as an initial
/// response or after an empty challenge. Returns the server's answer to the final message
/// (its signature line, or the tagged failure) and the signature expected.
async fn scram_login(
    client: &mut Client,
    user: &str,
    password: &str,
    initial_response: bool,
) -> (Vec<u8>, String) {
    let nonce = STANDARD.encode(rand_bytes());
    let bare = format!("n={user},r={nonce}");
    let first = STANDARD.encode(format!("n,,{bare}"));
    if initial_response {
        client
            .send(format!("S1 AUTHENTICATE \"SCRAM-SHA-256\" \"{first}\"\r\n").as_bytes())
            .await;
    } else {
        client
            .exchange(b"S1 AUTHENTICATE \"SCRAM-SHA-256\"\r\n", b"\r\n")
            .await;
        client.send(format!("{first}\r\n").as_bytes()).await;
    }
    let line = client.read_until(b"\r\n").await;
    let server_first = STANDARD
        .decode(line.strip_suffix(b"\r\n").expect("a line"))
        .expect("the server's first message is base64");
    let server_first = String::from_utf8(server_first).expect("UTF-8");
    assert!(
        server_first.starts_with(&format!("r={nonce}")),
        "{server_first}"
    );
    let (client_final, signature) =
        scram::client_final(&bare, "n,,", &server_first, password.as_bytes()).expect("client");
    client
        .send(format!("{}\r\n", STANDARD.encode(client_final)).as_bytes())
        .await;
    (client.read_until(b"\r\n").await, signature)
}

/// The server's final message proves it knows the verifier: it is the expected signature.
fn assert_proven(answer: &[u8], signature: &str) {
    assert_eq!(
        String::from_utf8_lossy(answer),
        format!("{}\r\n", STANDARD.encode(signature))
    );
}

fn rand_bytes() -> [u8; 18] {
    let mut bytes = [0u8; 18];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (std::process::id() as u8)
            .wrapping_mul(31)
            .wrapping_add(i as u8 * 7);
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_logs_in_without_the_password_on_the_wire() {
    let server = TestServer::start(OFFER_SCRAM).await;
    scram_passwd(&server, "s3cret pass");
    for initial_response in [true, false] {
        let mut client = Client::connect(server.addr).await;
        let banner = client.read_until(b"* OK MUPDATE").await;
        assert!(
            find(&banner, b"* AUTH \"SCRAM-SHA-256\" \"PLAIN\"\r\n").is_some(),
            "{}",
            String::from_utf8_lossy(&banner)
        );
        client.read_until(b"\r\n").await;
        let (answer, signature) =
            scram_login(&mut client, "mupdate", "s3cret pass", initial_response).await;
        assert_proven(&answer, &signature);
        client
            .exchange(b"\r\n", b"S1 OK \"Authenticated\"\r\n")
            .await;
        client.finds_nothing("x").await;
    }
    // The same verifier serves a PLAIN login too.
    let mut plain = server.client().await;
    let token = STANDARD.encode(b"\0mupdate\0s3cret pass");
    plain
        .exchange(
            format!("P1 AUTHENTICATE \"PLAIN\" \"{token}\"\r\n").as_bytes(),
            b"P1 OK \"Authenticated\"\r\n",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_proof_an_unknown_user_and_a_cancel_fail() {
    let server = TestServer::start(OFFER_SCRAM).await;
    scram_passwd(&server, "right");
    let mut client = server.client().await;
    let (answer, _) = scram_login(&mut client, "mupdate", "wrong", true).await;
    assert_eq!(answer, b"S1 NO \"undefined error!\"\r\n");
    // An unknown user gets a server-first message too, then fails the same way.
    let (answer, _) = scram_login(&mut client, "nobody", "right", true).await;
    assert_eq!(answer, b"S1 NO \"undefined error!\"\r\n");
    // A non-admin with the right verifier would pass the proof; bob has only PLAIN.
    let (answer, _) = scram_login(&mut client, "bob", "bobpass", true).await;
    assert_eq!(answer, b"S1 NO \"undefined error!\"\r\n");
    client
        .exchange(b"S2 AUTHENTICATE \"SCRAM-SHA-256\"\r\n", b"\r\n")
        .await;
    client
        .exchange(b"*\r\n", b"S2 NO Client canceled authentication\r\n")
        .await;
    client
        .exchange(
            b"S3 AUTHENTICATE \"SCRAM-SHA-256\" \"bm90IHNjcmFt\"\r\n",
            b"S3 NO \"undefined error!\"\r\n",
        )
        .await;
    let (answer, signature) = scram_login(&mut client, "mupdate", "right", true).await;
    assert_proven(&answer, &signature);
    // Anything but an empty line after the server's final message fails.
    client
        .exchange(b"Zm9v\r\n", b"S1 NO \"undefined error!\"\r\n")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_is_offered_only_when_sasl_mech_list_names_it() {
    let server = TestServer::start("").await;
    scram_passwd(&server, "right");
    let mut client = Client::connect(server.addr).await;
    let banner = client.read_until(b"* OK MUPDATE").await;
    assert!(find(&banner, b"* AUTH \"PLAIN\"\r\n").is_some());
    client.read_until(b"\r\n").await;
    client
        .exchange(
            b"S1 AUTHENTICATE \"SCRAM-SHA-256\" \"bj0sbj1tdXBkYXRlLHI9YWJj\"\r\n",
            b"S1 NO \"undefined error!\"\r\n",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_slave_logs_in_to_its_master_with_scram() {
    let dir = tempfile::tempdir().unwrap();
    // A master that offers SCRAM-SHA-256 only (no plaintext logins without TLS).
    let conf = write_process_config(dir.path(), OFFER_SCRAM);
    std::fs::write(
        dir.path().join("passwd"),
        scram_passwd_line("mupdate", "mupdatepass"),
    )
    .expect("passwd");
    let master = ServerProcess::start(&conf, &["-m"], &[("IMAPD_ALLOWPLAINTEXT", "no")]);
    let slave_dir = tempfile::tempdir().unwrap();
    let slave = ServerProcess::start(&follow_config(slave_dir.path(), master.addr), &[], &[]);
    master.log_once_it_holds("mupdate SCRAM-SHA-256 User logged in");
    let mut reader = logged_in(slave.addr).await;
    reader.expect_quiet().await;
}
