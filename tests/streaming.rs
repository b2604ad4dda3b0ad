//! Spec §15 checklist, the UPDATE stream (items 90-98): with live fan-out, each committed
//! change reaches listeners at once instead of in Cyrus's 5-second batches, so each change
//! is seen with its own state (Cyrus shows the state at flush time).

mod common;

use common::*;
use mupdate::mailbox::MailboxWrite;

#[tokio::test]
async fn c090_initial_dump_in_list_order() {
    let server = TestServer::start("").await;
    let mut w = server.admin().await;
    w.done(b"A1 ACTIVATE \"abc\" \"h!p1x\" \"\"\r\n").await;
    w.done(b"R1 RESERVE \"m1\" \"be9!p9\"\r\n").await;
    let mut a = server.admin().await;
    let mut expected = mailbox("U1", "abc", "h!p1x", "");
    expected.extend(reserve("U1", "m1", "be9!p9"));
    expected.extend_from_slice(b"U1 OK \"streaming starts\"\r\n");
    a.exchange(b"U1 UPDATE\r\n", &expected).await;
}

#[tokio::test]
async fn c091_c095_changes_arrive_without_asking() {
    let server = TestServer::start("").await;
    let mut a = server.admin().await;
    a.exchange(b"U1 UPDATE\r\n", b"U1 OK \"streaming starts\"\r\n")
        .await;
    let mut b = server.admin().await;
    b.done(b"R1 RESERVE \"user.zed\" \"be2!p\"\r\n").await;
    b.done(b"A1 ACTIVATE \"user.zed\" \"be2!p\" \"zed\tlrs\t\"\r\n")
        .await;
    // No NOOP from A: live fan-out delivers each change as committed.
    let mut expected = reserve("U1", "user.zed", "be2!p");
    expected.extend(mailbox("U1", "user.zed", "be2!p", "zed\tlrs\t"));
    a.expect(&expected).await;
}

#[tokio::test]
async fn c092_noop_is_a_barrier() {
    let server = TestServer::start("").await;
    let mut a = server.admin().await;
    a.exchange(b"U1 UPDATE\r\n", b"U1 OK \"streaming starts\"\r\n")
        .await;
    let mut b = server.admin().await;
    b.done(b"A1 ACTIVATE \"user.zed\" \"be2!p\" \"\"\r\n").await;
    b.done(b"X1 DELETE \"user.zed\"\r\n").await;
    let mut expected = mailbox("U1", "user.zed", "be2!p", "");
    expected.extend(delete("U1", "user.zed"));
    expected.extend_from_slice(b"N1 OK \"Noop done\"\r\n");
    a.exchange(b"N1 NOOP\r\n", &expected).await;
}

#[tokio::test]
async fn c093_c094_only_noop_and_logout_while_streaming() {
    let server = TestServer::start("").await;
    let mut a = server.admin().await;
    a.exchange(b"U1 UPDATE\r\n", b"U1 OK \"streaming starts\"\r\n")
        .await;
    for (request, tag) in [
        (&b"F1 FIND \"abc\"\r\n"[..], "F1"),
        (b"L1 LIST\r\n", "L1"),
        (b"U2 UPDATE\r\n", "U2"),
        (b"A1 ACTIVATE \"x\" \"y!z\" \"\"\r\n", "A1"),
        (b"R1 RESERVE \"x\" \"y!z\"\r\n", "R1"),
        (b"D1 DEACTIVATE \"x\" \"y!z\"\r\n", "D1"),
        (b"X1 DELETE \"x\"\r\n", "X1"),
    ] {
        a.exchange(
            request,
            format!("{tag} BAD \"not legal when streaming\"\r\n").as_bytes(),
        )
        .await;
    }
    a.exchange(
        format!("X10 AUTHENTICATE \"PLAIN\" \"{B64_ADMIN}\"\r\n").as_bytes(),
        b"X10 BAD \"already authenticated\"\r\n",
    )
    .await;
    a.send(b"Q1 LOGOUT\r\n").await;
    a.expect_eof(b"Q1 OK \"bye-bye\"\r\n").await;
}

#[tokio::test]
async fn c096_partial_update_host_limit() {
    let server = TestServer::start("").await;
    let mut a = server.admin().await;
    let hosts: String = (0..31).map(|i| format!(" \"h{i}\"")).collect();
    a.exchange(
        format!("U0 UPDATE{hosts}\r\n").as_bytes(),
        b"U0 BAD \"Extra arguments\"\r\n",
    )
    .await;
    let hosts: String = (0..30).map(|i| format!(" \"h{i}\"")).collect();
    a.exchange(
        format!("U0 UPDATE{hosts}\r\n").as_bytes(),
        b"U0 OK \"streaming starts\"\r\n",
    )
    .await;
}

#[tokio::test]
async fn c097_badly_formed_update_arguments() {
    let server = TestServer::start("").await;
    let mut a = server.admin().await;
    a.exchange(
        b"U1 UPDATE \"\"\r\n",
        b"U1 BAD \"Badly formed arguments\"\r\n",
    )
    .await;
    a.exchange(
        b"U2 UPDATE be9\r\n",
        b"U2 BAD \"Badly formed arguments\"\r\n",
    )
    .await;
    a.exchange(
        b"U3 UPDATE \"be9\" \r\n",
        b"U3 BAD \"Badly formed arguments\"\r\n",
    )
    .await;
    a.expect_quiet().await;
}

#[tokio::test]
async fn c098_partial_update_filter_uses_old_and_given_servers() {
    let server = TestServer::start("").await;
    let mut w = server.admin().await;
    w.done(b"A0 ACTIVATE \"seen\" \"be9!q\" \"\"\r\n").await;
    w.done(b"A0 ACTIVATE \"unseen\" \"be2!q\" \"\"\r\n").await;
    let mut a = server.admin().await;
    let mut dump = mailbox("U1", "seen", "be9!q", "");
    dump.extend_from_slice(b"U1 OK \"streaming starts\"\r\n");
    a.exchange(b"U1 UPDATE \"be9\" \"h\"\r\n", &dump).await;
    for line in [
        &b"A1 ACTIVATE \"user.a\" \"be2!p\" \"\"\r\n"[..],
        b"A2 ACTIVATE \"user.b\" \"be9!p\" \"\"\r\n",
        b"A3 ACTIVATE \"user.a\" \"be9!x\" \"\"\r\n",
        b"A4 ACTIVATE \"user.b\" \"be3!p\" \"\"\r\n",
        b"X1 DELETE \"user.a\"\r\n",
        b"X2 DELETE \"user.b\"\r\n",
    ] {
        w.send(line).await;
        w.read_until(b" OK \"done\"\r\n").await;
    }
    // user.a at be2: neither server subscribed; user.b moves to be3: reported (old server
    // be9); its later DELETE at be3 is not (spec §7.3 applied to each change as it commits).
    let mut expected = mailbox("U1", "user.b", "be9!p", "");
    expected.extend(mailbox("U1", "user.a", "be9!x", ""));
    expected.extend(mailbox("U1", "user.b", "be3!p", ""));
    expected.extend(delete("U1", "user.a"));
    expected.extend_from_slice(b"N1 OK \"Noop done\"\r\n");
    a.exchange(b"N1 NOOP\r\n", &expected).await;
}

#[tokio::test]
async fn c112c_commands_pipelined_behind_login_run() {
    let server = TestServer::start("").await;
    let mut c = server.client().await;
    let mut request = AUTH.to_vec();
    request.extend_from_slice(b"N1 NOOP\r\n");
    c.exchange(
        &request,
        b"A0 OK \"Authenticated\"\r\nN1 OK \"Noop done\"\r\n",
    )
    .await;
}

#[tokio::test]
async fn streaming_many_listeners_all_get_every_change() {
    let server = TestServer::start("").await;
    let mut listeners = Vec::new();
    for i in 0..50 {
        let mut l = server.admin().await;
        l.exchange(
            format!("U{i} UPDATE\r\n").as_bytes(),
            format!("U{i} OK \"streaming starts\"\r\n").as_bytes(),
        )
        .await;
        listeners.push((i, l));
    }
    let mut w = server.admin().await;
    for n in 0..20 {
        w.exchange(
            format!("A{n} ACTIVATE \"user.n{n}\" \"be1!p\" \"\"\r\n").as_bytes(),
            format!("A{n} OK \"done\"\r\n").as_bytes(),
        )
        .await;
    }
    for (i, l) in listeners.iter_mut() {
        let mut expected = Vec::new();
        for n in 0..20 {
            expected.extend(mailbox(
                &format!("U{i}"),
                &format!("user.n{n}"),
                "be1!p",
                "",
            ));
        }
        l.expect(&expected).await;
    }
}

#[tokio::test]
async fn slow_listeners_catch_up_coalesced_or_are_dropped() {
    use mupdate::store::Mutation;
    let server = TestServer::start("mupdate_listener_queue: 4\n").await;
    let mut resumable = server.admin().await;
    resumable.send(b"U1 XUPDATE\r\n").await;
    resumable
        .read_until(b"U1 OK \"streaming starts\"\r\n")
        .await;
    let mut plain = server.admin().await;
    plain
        .exchange(b"U2 UPDATE\r\n", b"U2 OK \"streaming starts\"\r\n")
        .await;
    // One commit publishes more changes than a listener may lag behind, before either
    // session runs again: this test's runtime has a single thread, which waits, blocked,
    // while another thread commits (the store commits on a blocking thread, so an await
    // here would let the sessions take the changes one by one as they are published).
    let mut burst: Vec<Mutation> = (0..20)
        .map(|i| {
            Mutation::Write(MailboxWrite::Activate {
                name: format!("user.s{i:02}").into_bytes(),
                location: b"be1!p".to_vec(),
                acl: Vec::new(),
            })
        })
        .collect();
    burst.push(Mutation::Write(MailboxWrite::Activate {
        name: b"user.s00".to_vec(),
        location: b"be2!q".to_vec(),
        acl: b"x\tl\t".to_vec(),
    }));
    let store = server.ctx.store.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the burst")
            .block_on(store.apply_many(burst))
    })
    .join()
    .expect("the burst's thread")
    .expect("the burst");
    // The resumable listener gets each mailbox once, in its latest state, then its position.
    let mut expected = Vec::new();
    for i in 1..20 {
        expected.extend(mailbox("U1", &format!("user.s{i:02}"), "be1!p", ""));
    }
    expected.extend(mailbox("U1", "user.s00", "be2!q", "x\tl\t"));
    resumable.expect(&expected).await;
    let position = resumable.read_until(b"\r\n").await;
    assert!(
        position.starts_with(b"* XSEQ \""),
        "{}",
        String::from_utf8_lossy(&position)
    );
    assert!(
        position.ends_with(b"\" \"21\"\r\n"),
        "{}",
        String::from_utf8_lossy(&position)
    );
    resumable.expect_quiet().await;
    // A plain listener is told to reconnect.
    plain
        .expect_eof(b"* BYE \"too far behind, reconnect\"\r\n")
        .await;
}
