//! Spec §15 checklist, greeting, framing, pre-login dispatch, authentication and argument
//! parsing (items 1-66), against a master over real TCP. Test names carry the item number.

mod common;

use common::*;

const BANNER: &[u8] = b"* AUTH \"PLAIN\"\r\n* COMPRESS \"DEFLATE\"\r\n* PARTIAL-UPDATE\r\n* OK MUPDATE \"mupdate-master\" \"Cyrus IMAP\" \"3.6.1-test\" \"(master)\"\r\n";

/// Sends each request on a fresh connection (authenticated or not) and compares the answer.
async fn cases(authenticated: bool, cases: &[(&[u8], &[u8])]) {
    let server = TestServer::start("").await;
    for (request, expected) in cases {
        let mut client = if authenticated {
            server.admin().await
        } else {
            server.client().await
        };
        client.exchange(request, expected).await;
        if authenticated {
            client.expect_quiet().await;
        }
    }
}

#[tokio::test]
async fn c001_master_banner_is_byte_exact() {
    let server = TestServer::start("").await;
    let mut client = Client::connect(server.addr).await;
    client.expect(BANNER).await;
}

#[tokio::test]
async fn c001_banner_without_plaintext_offers_no_mechanism() {
    let dir = tempfile::tempdir().unwrap();
    // allowplaintext is set by the fixture; the later service override turns it off.
    let server = TestServer::start_in(dir, "mupdate_allowplaintext: no\n").await;
    let mut client = Client::connect(server.addr).await;
    client.expect(b"* AUTH\r\n* COMPRESS").await;
}

#[tokio::test]
async fn c004_to_c013_framing() {
    cases(
        false,
        &[
            (b"\r\n", b"* BAD \"Need command\"\r\n"),
            (b"A01\r\n", b"* BAD \"Need command\"\r\n"),
            (b"A01 \r\n", b"A01 BAD \"Null command\"\r\n"),
            (b"A1  NOOP\r\n", b"A1 BAD \"Null command\"\r\n"),
            (b"A1\tNOOP\r\n", b"* BAD \"Need command\"\r\n"),
            (b"a\"b NOOP\r\n", b"* BAD \"Need command\"\r\n"),
            (b" NOOP\r\n", b" BAD \"Please login first\"\r\n"),
            (b"* NOOP\r\n", b"* BAD \"Please login first\"\r\n"),
            (
                b"\xff\xfe NOOP\r\n",
                b"\xff\xfe BAD \"Please login first\"\r\n",
            ),
            (b"\x00\x01\x02\r\n", b"* BAD \"Need command\"\r\n"),
            (b"a\x00b NOOP\r\n", b"a BAD \"Please login first\"\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn c014_pipelined_lines_answered_in_order() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .exchange(
            b"A1 NOOP\r\nA2 NOOP\r\nA3 LIST\r\n",
            b"A1 BAD \"Please login first\"\r\nA2 BAD \"Please login first\"\r\nA3 BAD \"Please login first\"\r\n",
        )
        .await;
}

#[tokio::test]
async fn c015_to_c017_line_ends_and_case() {
    cases(
        true,
        &[
            (b"N2 NOOP\n", b"N2 OK \"Noop done\"\r\n"),
            (b"N3 NOOP\r\r\n", b"N3 BAD \"Extra arguments\"\r\n"),
            (b"A4 noop\r\n", b"A4 OK \"Noop done\"\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn c018_to_c024_before_authentication() {
    cases(
        false,
        &[
            (b"A01 FOO\r\n", b"A01 BAD \"Please login first\"\r\n"),
            (b"A02 XYZZY\r\n", b"A02 BAD \"Unrecognized command\"\r\n"),
            (b"A03 FIND \"x\"\r\n", b"A03 BAD \"Please login first\"\r\n"),
            (b"A03 LIST\r\n", b"A03 BAD \"Please login first\"\r\n"),
            (b"A03 NOOP\r\n", b"A03 BAD \"Please login first\"\r\n"),
            (b"A03 UPDATE\r\n", b"A03 BAD \"Please login first\"\r\n"),
            (
                b"A03 ACTIVATE \"a\" \"b\" \"c\"\r\n",
                b"A03 BAD \"Please login first\"\r\n",
            ),
            (
                b"A03 RESERVE \"a\" \"b\"\r\n",
                b"A03 BAD \"Please login first\"\r\n",
            ),
            (
                b"A03 DELETE \"a\"\r\n",
                b"A03 BAD \"Please login first\"\r\n",
            ),
            (
                b"A03 DEACTIVATE \"a\" \"b\"\r\n",
                b"A03 BAD \"Please login first\"\r\n",
            ),
            (b"A11 STARTTLS\r\n", b"A11 BAD \"Unrecognized command\"\r\n"),
            (
                b"A12 logout extra\r\nA13 XYZZY\r\n",
                b"A12 BAD \"Extra arguments\"\r\nA13 BAD \"Unrecognized command\"\r\n",
            ),
            (
                b"F1 FIND {5}\r\nA2 XYZZY\r\n",
                b"F1 BAD \"Please login first\"\r\nA2 BAD \"Unrecognized command\"\r\n",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn c023_logout_closes() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client.send(b"A13 LOGOUT\r\n").await;
    client.expect_eof(b"A13 OK \"bye-bye\"\r\n").await;
}

#[tokio::test]
async fn c025_to_c029_c032_c038_failed_logins() {
    cases(
        false,
        &[
            (
                format!("X1 AUTHENTICATE \"PLAIN\" \"{B64_BAD}\"\r\n").as_bytes(),
                b"X1 NO \"undefined error!\"\r\n",
            ),
            (
                format!("X2 AUTHENTICATE \"PLAIN\" \"{B64_BOB}\"\r\n").as_bytes(),
                b"X2 NO \"undefined error!\"\r\n",
            ),
            (
                b"X3 AUTHENTICATE \"FOO\"\r\n",
                b"X3 NO \"undefined error!\"\r\n",
            ),
            (
                b"X4 AUTHENTICATE PLAIN\r\n",
                b"X4 BAD \"Extra arguments\"\r\n",
            ),
            (b"X5 AUTHENTICATE\r\n", b"X5 BAD \"Missing arguments\"\r\n"),
            (
                b"X8 AUTHENTICATE \"PLAIN\" \"=\"\r\n",
                b"X8 NO \"undefined error!\"\r\n",
            ),
            (
                b"A3 AUTHENTICATE \"PLAIN\" \r\n",
                b"A3 BAD \"Extra arguments\"\r\n",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn c025_failed_login_leaves_session_unauthenticated() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .exchange(
            format!("X1 AUTHENTICATE \"PLAIN\" \"{B64_BOB}\"\r\nA2 ACTIVATE \"user.bob\" \"b!d\" \"\"\r\n").as_bytes(),
            b"X1 NO \"undefined error!\"\r\nA2 BAD \"Please login first\"\r\n",
        )
        .await;
    // The state is reset, so a retry works.
    client.exchange(AUTH, b"A0 OK \"Authenticated\"\r\n").await;
}

#[tokio::test]
async fn c030_c031_sasl_exchange_cancel_and_garbage() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .exchange(b"X6 AUTHENTICATE \"PLAIN\"\r\n", b"\r\n")
        .await;
    client
        .exchange(b"*\r\n", b"X6 NO Client canceled authentication\r\n")
        .await;
    client
        .exchange(b"X7 AUTHENTICATE \"PLAIN\"\r\n", b"\r\n")
        .await;
    client
        .exchange(b"!!!notbase64\r\n", b"X7 NO \"undefined error!\"\r\n")
        .await;
}

#[tokio::test]
async fn c033_c034_continuation_login_then_second_authenticate() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .exchange(b"X9 authenticate \"plain\"\r\n", b"\r\n")
        .await;
    client
        .exchange(
            format!("{B64_ADMIN}\r\n").as_bytes(),
            b"X9 OK \"Authenticated\"\r\n",
        )
        .await;
    client
        .exchange(
            format!("X10 AUTHENTICATE \"PLAIN\" \"{B64_ADMIN}\"\r\n").as_bytes(),
            b"X10 BAD \"already authenticated\"\r\n",
        )
        .await;
}

#[tokio::test]
async fn c035_synchronising_literals_in_authenticate() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .exchange(b"A2 AUTHENTICATE {5}\r\n", b"+ go ahead\r\n")
        .await;
    client.exchange(b"PLAIN {28}\r\n", b"+ go ahead\r\n").await;
    client
        .exchange(
            format!("{B64_ADMIN}\r\n").as_bytes(),
            b"A2 OK \"Authenticated\"\r\n",
        )
        .await;
}

#[tokio::test]
async fn c035_cyrus_client_form_non_synchronising_literal() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .exchange(
            format!("A01 AUTHENTICATE \"PLAIN\" {{28+}}\r\n{B64_ADMIN}\r\n").as_bytes(),
            b"A01 OK \"Authenticated\"\r\n",
        )
        .await;
}

#[tokio::test]
async fn c036_literal_as_continuation_fails_like_cyrus() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .exchange(b"A1 AUTHENTICATE \"PLAIN\"\r\n", b"\r\n")
        .await;
    client
        .exchange(
            format!("{{28+}}\r\n{B64_ADMIN}\r\n").as_bytes(),
            b"A1 NO \"undefined error!\"\r\n* BAD \"Need command\"\r\n",
        )
        .await;
}

#[tokio::test]
async fn c037_admin_may_act_as_another_user() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .exchange(
            b"A1 AUTHENTICATE \"PLAIN\" \"Ym9iAG11cGRhdGUAbXVwZGF0ZXBhc3M=\"\r\n",
            b"A1 OK \"Authenticated\"\r\n",
        )
        .await;
    client.expect_quiet().await;
}

#[tokio::test]
async fn c039_failed_login_pause_does_not_block_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir, "mupdate_failedloginpause: 2\n").await;
    let mut slow = server.client().await;
    let started = std::time::Instant::now();
    slow.send(format!("X1 AUTHENTICATE \"PLAIN\" \"{B64_BAD}\"\r\n").as_bytes())
        .await;
    // Another client logs in and works while the first one waits out its pause.
    let mut other = server.admin().await;
    other.expect_quiet().await;
    slow.expect(b"X1 NO \"undefined error!\"\r\n").await;
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn c040_c041_c052_c053_literals_escapes_and_case() {
    let server = TestServer::start("").await;
    let mut client = server.admin().await;
    client
        .exchange(b"A1 ACTIVATE {3}\r\n", b"+ go ahead\r\n")
        .await;
    client.exchange(b"abc {5}\r\n", b"+ go ahead\r\n").await;
    client.exchange(b"h!p1x {0}\r\n", b"+ go ahead\r\n").await;
    client.exchange(b"\r\n", b"A1 OK \"done\"\r\n").await;
    client
        .exchange(
            b"F1 FIND {3+}\r\nabc\r\n",
            b"F1 MAILBOX {3+}\r\nabc {5+}\r\nh!p1x {0+}\r\n\r\nF1 OK \"Search completed\"\r\n",
        )
        .await;
    // 52: a backslash escapes any byte.
    client
        .exchange(
            b"F5 FIND \"ab\\c\"\r\n",
            b"F5 MAILBOX {3+}\r\nabc {5+}\r\nh!p1x {0+}\r\n\r\nF5 OK \"Search completed\"\r\n",
        )
        .await;
    // 53: names are case-sensitive.
    client
        .exchange(b"F6 FIND \"ABC\"\r\n", b"F6 OK \"Search completed\"\r\n")
        .await;
}

#[tokio::test]
async fn c042_to_c058_c066_argument_errors() {
    cases(
        true,
        &[
            (
                b"A2 ACTIVATE abc \"h!p\" \"\"\r\n",
                b"A2 BAD \"Missing arguments\"\r\n",
            ),
            (
                b"A3 ACTIVATE \"abc\" \"h!p\"\r\n",
                b"A3 BAD \"Missing arguments\"\r\n",
            ),
            (b"A5 ACTIVATE\r\n", b"A5 BAD \"Missing arguments\"\r\n"),
            (
                b"A1 ACTIVATE \"a\" \"b\" \r\n",
                b"A1 BAD \"Extra arguments\"\r\n",
            ),
            (
                b"A4 ACTIVATE \"a\"  \"b\" \"c\"\r\n",
                b"A4 BAD \"Missing arguments\"\r\n",
            ),
            (
                b"A6 ACTIVATE \"t6\" \"h!p\" \"\" \"extra\"\r\n",
                b"A6 BAD \"Extra arguments\"\r\n",
            ),
            (b"F2 FIND\r\n", b"F2 BAD \"Missing arguments\"\r\n"),
            (b"F1 FIND \r\n", b"F1 BAD \"Extra arguments\"\r\n"),
            (b"F3 FIND abc\r\n", b"F3 BAD \"Extra arguments\"\r\n"),
            (
                b"F4 FIND \"abc\" \"x\"\r\n",
                b"F4 BAD \"Extra arguments\"\r\n",
            ),
            (
                b"F7 FIND {3+}\r\na\x00c\r\n",
                b"F7 BAD \"Extra arguments\"\r\n",
            ),
            (b"F8 FIND {x}\r\n", b"F8 BAD \"Extra arguments\"\r\n"),
            (
                b"F9 FIND {3+ }\r\nabc\r\n",
                b"F9 BAD \"Extra arguments\"\r\n* BAD \"Need command\"\r\n",
            ),
            (b"F10 FIND \"abc\r\n", b"F10 BAD \"Extra arguments\"\r\n"),
            (
                b"F11 FIND {3+}\nabc\r\n",
                b"F11 BAD \"Extra arguments\"\r\n* BAD \"Need command\"\r\n",
            ),
            (b"F12 FIND(\"x\"\r\n", b"F12 BAD \"Missing arguments\"\r\n"),
            (b"N1 NOOP(\r\n", b"N1 BAD \"Extra arguments\"\r\n"),
            (b"L1 LIST(\"x\"\r\n", b"L1 BAD \"Extra arguments\"\r\n"),
            (b"B06 NOOP extra\r\n", b"B06 BAD \"Extra arguments\"\r\n"),
            (b"B01 FOOBAR\r\n", b"B01 BAD \"Unrecognized command\"\r\n"),
            (b"A1 NO\x00OP\r\n", b"A1 BAD \"Unrecognized command\"\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn c059_nul_in_quoted_string_truncates() {
    let server = TestServer::start("").await;
    let mut client = server.admin().await;
    client.done(b"A1 ACTIVATE \"a\" \"h!p\" \"\"\r\n").await;
    client
        .exchange(
            b"F2 FIND \"a\x00b\"\r\n",
            b"F2 MAILBOX {1+}\r\na {3+}\r\nh!p {0+}\r\n\r\nF2 OK \"Search completed\"\r\n",
        )
        .await;
}

#[tokio::test]
async fn c060_largest_literal_accepted() {
    let server = TestServer::start("").await;
    let mut client = server.admin().await;
    let mut request = b"F1 FIND {131072+}\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'z', 131_072));
    request.extend_from_slice(b"\r\n");
    client
        .exchange(&request, b"F1 OK \"Search completed\"\r\n")
        .await;
}

#[tokio::test]
async fn c061_oversized_synchronising_literal_swallows_next_line() {
    let server = TestServer::start("").await;
    let mut client = server.admin().await;
    client
        .exchange(
            b"F1 FIND {200000}\r\nN1 NOOP\r\nN2 NOOP\r\n",
            b"F1 BAD \"Extra arguments\"\r\nN2 OK \"Noop done\"\r\n",
        )
        .await;
}

/// D-6: where Cyrus's whole process exits, only this connection closes.
async fn closes_only_this_connection(request: Vec<u8>, answer: &[u8]) {
    let server = TestServer::start("").await;
    let mut bystander = server.admin().await;
    bystander
        .exchange(b"U1 UPDATE\r\n", b"U1 OK \"streaming starts\"\r\n")
        .await;
    let mut client = server.admin().await;
    client.send(&request).await;
    client.expect_close_after(answer).await;
    let mut writer = server.admin().await;
    writer.done(b"A1 ACTIVATE \"x\" \"h!p\" \"\"\r\n").await;
    bystander
        .expect(b"U1 MAILBOX {1+}\r\nx {3+}\r\nh!p {0+}\r\n\r\n")
        .await;
}

#[tokio::test]
async fn c062_oversized_non_synchronising_literal_closes_only_this_connection() {
    closes_only_this_connection(
        b"F1 FIND {200000+}\r\n".to_vec(),
        b"F1 BAD \"Extra arguments\"\r\n",
    )
    .await;
}

#[tokio::test]
async fn c062_literal_length_overflow_closes_only_this_connection() {
    closes_only_this_connection(
        b"F1 FIND {99999999999+}\r\n".to_vec(),
        b"F1 BAD \"Extra arguments\"\r\n",
    )
    .await;
}

#[tokio::test]
async fn c063_oversized_tag_closes_only_this_connection() {
    let mut tag = vec![b'T'; 131_073];
    tag.extend_from_slice(b" NOOP\r\n");
    closes_only_this_connection(tag, b"").await;
}

#[tokio::test]
async fn c063_tag_of_exactly_the_limit_is_answered() {
    let server = TestServer::start("").await;
    let mut client = server.admin().await;
    let tag = vec![b'T'; 131_072];
    let mut request = tag.clone();
    request.extend_from_slice(b" NOOP\r\n");
    let mut expected = tag;
    expected.extend_from_slice(b" OK \"Noop done\"\r\n");
    client.exchange(&request, &expected).await;
}

#[tokio::test]
async fn c063_oversized_quoted_string_closes_only_this_connection() {
    let mut request = b"X4 FIND \"".to_vec();
    request.extend(std::iter::repeat_n(b'q', 140_000));
    request.extend_from_slice(b"\"\r\n");
    closes_only_this_connection(request, b"X4 BAD \"Extra arguments\"\r\n").await;
}

#[tokio::test]
async fn c064_c065_long_invalid_arguments_keep_the_connection() {
    let server = TestServer::start("").await;
    let mut client = server.admin().await;
    let mut atom = b"F3 FIND ".to_vec();
    atom.extend(std::iter::repeat_n(b'a', 200_000));
    atom.extend_from_slice(b"\r\n");
    client
        .exchange(&atom, b"F3 BAD \"Extra arguments\"\r\n")
        .await;
    let mut spaces = b"F5 NOOP".to_vec();
    spaces.extend(std::iter::repeat_n(b' ', 300_000));
    spaces.extend_from_slice(b"\r\n");
    client
        .exchange(&spaces, b"F5 BAD \"Extra arguments\"\r\n")
        .await;
    client.expect_quiet().await;
}

#[tokio::test]
async fn passwd_file_login_with_every_scheme() {
    use mupdate::auth::passwd_file::{Scheme, hash};
    for scheme in [Scheme::Argon2id, Scheme::Ssha256, Scheme::Plain] {
        let server = TestServer::start("").await;
        let line = hash(scheme, b"mupdatepass").unwrap();
        // The file is read at each login, so it can be replaced under a running server.
        std::fs::write(server.path().join("passwd"), format!("mupdate:{line}\n")).unwrap();
        let mut good = server.client().await;
        good.exchange(AUTH, b"A0 OK \"Authenticated\"\r\n").await;
        let mut bad = server.client().await;
        bad.exchange(
            format!("X1 AUTHENTICATE \"PLAIN\" \"{B64_BAD}\"\r\n").as_bytes(),
            b"X1 NO \"undefined error!\"\r\n",
        )
        .await;
    }
}
