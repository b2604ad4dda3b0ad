//! Spec §15 checklist, greeting, framing, pre-login dispatch, authentication and argument
//! parsing (items 1-66), against a master over real TCP. Test names carry the item number.

mod common;

use common::*;

transcripts!("protocol":
    c004_to_c013_framing,
    c014_pipelined_lines_answered_in_order,
    c015_to_c017_line_ends_and_case,
    c018_to_c024_before_authentication,
    c023_logout_closes,
    c025_to_c029_c032_c038_failed_logins,
    c025_failed_login_leaves_session_unauthenticated,
    c030_c031_sasl_exchange_cancel_and_garbage,
    c033_c034_continuation_login_then_second_authenticate,
    c035_synchronising_literals_in_authenticate,
    c035_cyrus_client_form_non_synchronising_literal,
    c036_literal_as_continuation_fails_like_cyrus,
    c037_admin_may_act_as_another_user,
    c040_c041_c052_c053_literals_escapes_and_case,
    c042_to_c058_c066_argument_errors,
    c059_nul_in_quoted_string_truncates,
    c061_oversized_synchronising_literal_swallows_next_line,
    c062_oversized_non_synchronising_literal_closes_only_this_connection,
    c062_literal_length_overflow_closes_only_this_connection,
    c060_largest_literal_accepted,
    c063_oversized_tag_closes_only_this_connection,
    c063_tag_of_exactly_the_limit_is_answered,
    c063_oversized_quoted_string_closes_only_this_connection,
    c064_c065_long_invalid_arguments_keep_the_connection,
);

const BANNER: &[u8] = b"* AUTH \"PLAIN\"\r\n* COMPRESS \"DEFLATE\"\r\n* PARTIAL-UPDATE\r\n* OK MUPDATE \"mupdate-master\" \"Cyrus IMAP\" \"3.6.1-test\" \"(master)\"\r\n";

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
        bad.login_refused("X1", B64_BAD).await;
    }
}
