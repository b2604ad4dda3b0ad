//! Spec §15 checklist, records, state machine and LIST (items 67-89, 114), on a master.

mod common;

use common::*;

async fn admin() -> (TestServer, Client) {
    let server = TestServer::start("").await;
    let client = server.admin().await;
    (server, client)
}

const BOB_ACL: &[u8] = b"bob\tlrswipkxtecda\tanyone\tlrs\t";

#[tokio::test]
async fn c067_to_c071_reserve_activate_find() {
    let (_server, mut c) = admin().await;
    c.exchange(
        b"F1 FIND \"user.bob\"\r\n",
        b"F1 OK \"Search completed\"\r\n",
    )
    .await;
    c.done(b"R1 RESERVE \"user.bob\" \"be1!default\"\r\n").await;
    c.exchange(
        b"F2 FIND \"user.bob\"\r\n",
        b"F2 RESERVE {8+}\r\nuser.bob {11+}\r\nbe1!default\r\nF2 OK \"Search completed\"\r\n",
    )
    .await;
    c.done(
        b"A1 ACTIVATE \"user.bob\" \"be1!default\" \"bob\\tlrswipkxtecda\\tanyone\\tlrs\\t\"\r\n",
    )
    .await;
    // The quoted string above escapes `t`, which is just `t`: send real TABs instead.
    c.done(b"A1 ACTIVATE \"user.bob\" \"be1!default\" \"bob\tlrswipkxtecda\tanyone\tlrs\t\"\r\n")
        .await;
    let mut expected = b"F3 MAILBOX {8+}\r\nuser.bob {11+}\r\nbe1!default {29+}\r\n".to_vec();
    expected.extend_from_slice(BOB_ACL);
    expected.extend_from_slice(b"\r\nF3 OK \"Search completed\"\r\n");
    c.exchange(b"F3 FIND \"user.bob\"\r\n", &expected).await;
    c.done(b"R2 RESERVE \"user.bob\" \"be1!default\"\r\n").await;
    c.exchange(
        b"F4 FIND \"user.bob\"\r\n",
        b"F4 RESERVE {8+}\r\nuser.bob {11+}\r\nbe1!default\r\nF4 OK \"Search completed\"\r\n",
    )
    .await;
    c.exchange(
        b"R3 RESERVE \"user.bob\" \"be2!default\"\r\n",
        b"R3 NO \"mailbox already exists\"\r\n",
    )
    .await;
}

#[tokio::test]
async fn c072_to_c075_deactivate() {
    let (_server, mut c) = admin().await;
    c.done(b"A1 ACTIVATE \"m1\" \"be1!p1\" \"anyone\tlrs\t\"\r\n")
        .await;
    c.done(b"D1 DEACTIVATE \"m1\" \"be9!p9\"\r\n").await;
    c.exchange(
        b"F1 FIND \"m1\"\r\n",
        b"F1 RESERVE {2+}\r\nm1 {6+}\r\nbe9!p9\r\nF1 OK \"Search completed\"\r\n",
    )
    .await;
    c.exchange(
        b"D2 DEACTIVATE \"m1\" \"be1!p1\"\r\n",
        b"D2 NO \"mailbox not currently active\"\r\n",
    )
    .await;
    // D-2: Cyrus aborts here.
    c.exchange(
        b"D3 DEACTIVATE \"m1\" \"be9!p9\"\r\n",
        b"D3 NO \"mailbox not currently active\"\r\n",
    )
    .await;
    // D-3: Cyrus segfaults here.
    c.exchange(
        b"D4 DEACTIVATE \"nosuch\" \"a!b\"\r\n",
        b"D4 NO \"mailbox doesn't exist\"\r\n",
    )
    .await;
}

#[tokio::test]
async fn c076_c077_delete() {
    let (_server, mut c) = admin().await;
    c.done(b"A1 ACTIVATE \"user.bob\" \"be1!d\" \"\"\r\n").await;
    c.done(b"X1 DELETE \"user.bob\"\r\n").await;
    c.exchange(
        b"F1 FIND \"user.bob\"\r\n",
        b"F1 OK \"Search completed\"\r\n",
    )
    .await;
    // D-1: Cyrus segfaults here.
    c.exchange(
        b"X2 DELETE \"nonexistent\"\r\n",
        b"X2 NO \"mailbox doesn't exist\"\r\n",
    )
    .await;
}

#[tokio::test]
async fn c078_replicated_master() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(
        dir,
        "mupdate_server: 127.0.0.1:1\nmupdate_config: replicated\n",
    )
    .await;
    let mut c = server.admin().await;
    c.done(b"X1 DELETE \"nosuch\"\r\n").await;
    c.done(b"A1 ACTIVATE \"m2\" \"h1!p\" \"a\tl\t\"\r\n").await;
    c.done(b"R1 RESERVE \"m2\" \"h2!q\"\r\n").await;
    c.exchange(
        b"F1 FIND \"m2\"\r\n",
        b"F1 RESERVE {2+}\r\nm2 {4+}\r\nh2!q\r\nF1 OK \"Search completed\"\r\n",
    )
    .await;
}

#[tokio::test]
async fn c078_mupdate_config_without_mupdate_server_is_standard() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir, "mupdate_config: replicated\n").await;
    let mut c = server.admin().await;
    c.exchange(
        b"X1 DELETE \"nosuch\"\r\n",
        b"X1 NO \"mailbox doesn't exist\"\r\n",
    )
    .await;
}

#[tokio::test]
async fn c079_to_c083_acl_and_location_normalisation() {
    let (_server, mut c) = admin().await;
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"A1 ACTIVATE \"t1\" \"be1\" \"anyone lrs\"\r\nF1 FIND \"t1\"\r\n",
            b"A1 OK \"done\"\r\nF1 MAILBOX {2+}\r\nt1 {3+}\r\nbe1 {0+}\r\n\r\nF1 OK \"Search completed\"\r\n",
        ),
        (
            b"A2 ACTIVATE \"t2\" \"!p\" \"x\tl\"\r\nF2 FIND \"t2\"\r\n",
            b"A2 OK \"done\"\r\nF2 MAILBOX {2+}\r\nt2 {2+}\r\n!p {4+}\r\nx\tl\t\r\nF2 OK \"Search completed\"\r\n",
        ),
        (
            b"A3 ACTIVATE \"t3\" \"a!b!c\" \"x\tl\ty\"\r\nF3 FIND \"t3\"\r\n",
            b"A3 OK \"done\"\r\nF3 MAILBOX {2+}\r\nt3 {5+}\r\na!b!c {4+}\r\nx\tl\t\r\nF3 OK \"Search completed\"\r\n",
        ),
        (
            b"A5 ACTIVATE \"t5\" \"h!p\" \"b\tlrs\ta\tlr\tb\tx\t\"\r\nF5 FIND \"t5\"\r\n",
            b"A5 OK \"done\"\r\nF5 MAILBOX {2+}\r\nt5 {3+}\r\nh!p {15+}\r\nb\tlrs\ta\tlr\tb\tx\t\r\nF5 OK \"Search completed\"\r\n",
        ),
        (
            b"A6 ACTIVATE \"t6\" \"\" \"\"\r\nF6 FIND \"t6\"\r\n",
            b"A6 OK \"done\"\r\nF6 MAILBOX {2+}\r\nt6 {0+}\r\n {0+}\r\n\r\nF6 OK \"Search completed\"\r\n",
        ),
        // D-7: Cyrus accepts the empty name and corrupts its database.
        (b"A7 ACTIVATE \"\" \"h!p\" \"\"\r\n", b"A7 NO \"invalid mailbox name\"\r\n"),
        (b"R7 RESERVE \"\" \"h!p\"\r\n", b"R7 NO \"invalid mailbox name\"\r\n"),
    ];
    for (request, expected) in cases {
        c.exchange(request, expected).await;
    }
}

#[tokio::test]
async fn d011_deleted_names_are_stored_verbatim() {
    let (_server, mut c) = admin().await;
    c.exchange(
        b"A1 ACTIVATE \"DELETED.user.a.6b06d6a9\" \"be1!\" \"\"\r\nL1 LIST\r\n",
        b"A1 OK \"done\"\r\nL1 MAILBOX {23+}\r\nDELETED.user.a.6b06d6a9 {4+}\r\nbe1! {0+}\r\n\r\nL1 OK \"list complete\"\r\n",
    )
    .await;
}

#[tokio::test]
async fn c084_c085_c086_list_order_prefix_and_everything() {
    let (_server, mut c) = admin().await;
    let order = [
        "User.bob",
        "abc",
        "example.com!user.bob",
        "user",
        "user.bob",
        "user.bob.sub",
        "user.bob-a",
        "user-x",
    ];
    for (i, name) in order.iter().rev().enumerate() {
        c.exchange(
            format!("A{i} ACTIVATE \"{name}\" \"h!p\" \"\"\r\n").as_bytes(),
            format!("A{i} OK \"done\"\r\n").as_bytes(),
        )
        .await;
    }
    c.done(b"A9 ACTIVATE \"elsewhere\" \"be2!p\" \"\"\r\n")
        .await;
    let mut expected = Vec::new();
    for name in order {
        expected.extend(mailbox("L1", name, "h!p", ""));
    }
    expected.extend_from_slice(b"L1 OK \"list complete\"\r\n");
    c.exchange(b"L1 LIST \"h!p\"\r\n", &expected).await;
    // 85: nothing at be3.
    c.exchange(b"L3 LIST \"be3\"\r\n", b"L3 OK \"list complete\"\r\n")
        .await;
    // 86: everything.
    let mut everything = Vec::new();
    let mut all: Vec<(&str, &str)> = order.iter().map(|n| (*n, "h!p")).collect();
    all.insert(2, ("elsewhere", "be2!p"));
    for (name, location) in &all {
        everything.extend(mailbox("L2", name, location, ""));
    }
    everything.extend_from_slice(b"L2 OK \"list complete\"\r\n");
    c.exchange(b"L2 LIST \"\"\r\n", &everything).await;
    let no_argument: Vec<u8> = String::from_utf8(everything)
        .unwrap()
        .replace("L2 ", "L4 ")
        .into_bytes();
    c.exchange(b"L4 LIST\r\n", &no_argument).await;
}

#[tokio::test]
async fn c087_c088_list_argument_errors() {
    let (_server, mut c) = admin().await;
    c.exchange(b"L3 LIST h\r\n", b"L3 BAD \"Extra arguments\"\r\n")
        .await;
    c.exchange(
        b"L4 LIST \"h\" \"x\"\r\n",
        b"L4 BAD \"Extra arguments\"\r\n",
    )
    .await;
    c.exchange(b"L1 LIST \r\n", b"L1 BAD \"Extra arguments\"\r\n")
        .await;
}

#[tokio::test]
async fn c089_list_prefix_is_a_plain_byte_prefix() {
    let (_server, mut c) = admin().await;
    c.done(b"A1 ACTIVATE \"a\" \"be1!default\" \"\"\r\n").await;
    c.done(b"A2 ACTIVATE \"b\" \"be10!x\" \"\"\r\n").await;
    c.done(b"A3 ACTIVATE \"c\" \"be2!x\" \"\"\r\n").await;
    let mut expected = mailbox("L2", "a", "be1!default", "");
    expected.extend(mailbox("L2", "b", "be10!x", ""));
    expected.extend_from_slice(b"L2 OK \"list complete\"\r\n");
    c.exchange(b"L2 LIST \"be1\"\r\n", &expected).await;
}

#[tokio::test]
async fn c114_committed_changes_survive_a_restart() {
    let server = TestServer::start("").await;
    let mut c = server.admin().await;
    c.done(b"A1 ACTIVATE \"user.keep\" \"be1!p\" \"k\tl\t\"\r\n")
        .await;
    let mut other = server.admin().await;
    other
        .exchange(
            b"F1 FIND \"user.keep\"\r\n",
            &[
                mailbox("F1", "user.keep", "be1!p", "k\tl\t"),
                b"F1 OK \"Search completed\"\r\n".to_vec(),
            ]
            .concat(),
        )
        .await;
    drop(c);
    drop(other);
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, "").await;
    let mut c = server.admin().await;
    c.exchange(
        b"F2 FIND \"user.keep\"\r\n",
        &[
            mailbox("F2", "user.keep", "be1!p", "k\tl\t"),
            b"F2 OK \"Search completed\"\r\n".to_vec(),
        ]
        .concat(),
    )
    .await;
}

/// Transcripts §22: every input that kills Cyrus 3.6.1's whole process is answered per
/// spec §14 while an UPDATE listener and another client keep working throughout.
#[tokio::test]
async fn transcripts_22_crash_inputs_leave_everyone_else_working() {
    let server = TestServer::start("").await;
    let mut listener = server.admin().await;
    listener
        .exchange(b"U1 UPDATE\r\n", b"U1 OK \"streaming starts\"\r\n")
        .await;
    let mut c = server.admin().await;
    // 22a, 22b, 22c: answered on the same connection, which stays usable.
    c.exchange(
        b"X01 DELETE \"user.never-existed\"\r\n",
        b"X01 NO \"mailbox doesn't exist\"\r\n",
    )
    .await;
    c.exchange(
        b"X02 DEACTIVATE \"user.never-existed\" \"backend1!default\"\r\n",
        b"X02 NO \"mailbox doesn't exist\"\r\n",
    )
    .await;
    c.done(b"X03a RESERVE \"user.resv\" \"backend1!default\"\r\n")
        .await;
    c.exchange(
        b"X03 DEACTIVATE \"user.resv\" \"backend1!default\"\r\n",
        b"X03 NO \"mailbox not currently active\"\r\n",
    )
    .await;
    listener
        .expect(b"U1 RESERVE {9+}\r\nuser.resv {16+}\r\nbackend1!default\r\n")
        .await;
    // 22g: a 253-byte name is an ordinary name here.
    let long = format!("user.{}", "x".repeat(248));
    c.exchange(
        format!("X06 ACTIVATE \"{long}\" \"backend1!default\" \"bob\tlr\t\"\r\n").as_bytes(),
        b"X06 OK \"done\"\r\n",
    )
    .await;
    listener
        .expect(
            format!(
                "U1 MAILBOX {{253+}}\r\n{long} {{16+}}\r\nbackend1!default {{7+}}\r\nbob\tlr\t\r\n"
            )
            .as_bytes(),
        )
        .await;
    // 22d, 22e, 22f: over-long inputs close only the offending connection.
    let mut quoted = b"X04 FIND \"".to_vec();
    quoted.extend(std::iter::repeat_n(b'q', 140_000));
    quoted.extend_from_slice(b"\"\r\n");
    let mut word = vec![b'T'; 140_000];
    word.extend_from_slice(b" NOOP\r\n");
    let mut literal = b"X05 FIND {131073+}\r\n".to_vec();
    literal.extend(std::iter::repeat_n(b'z', 131_073));
    literal.extend_from_slice(b"\r\n");
    for (input, answer) in [
        (quoted, &b"X04 BAD \"Extra arguments\"\r\n"[..]),
        (word, b""),
        (literal, b"X05 BAD \"Extra arguments\"\r\n"),
    ] {
        let mut victim = server.admin().await;
        victim.send(&input).await;
        victim.expect_close_after(answer).await;
    }
    c.done(b"A1 ACTIVATE \"user.after\" \"backend1!default\" \"z\tl\t\"\r\n")
        .await;
    listener
        .expect(b"U1 MAILBOX {10+}\r\nuser.after {16+}\r\nbackend1!default {4+}\r\nz\tl\t\r\n")
        .await;
}
