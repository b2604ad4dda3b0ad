//! Spec §15 checklist, the UPDATE stream (items 90-98): with live fan-out, each committed
//! change reaches listeners at once instead of in Cyrus's 5-second batches, so each change
//! is seen with its own state (Cyrus shows the state at flush time).

mod common;

use common::*;

transcripts!("streaming":
    c090_initial_dump_in_list_order,
    c091_c095_changes_arrive_without_asking,
    c092_noop_is_a_barrier,
    c093_c094_only_noop_and_logout_while_streaming,
    c096_partial_update_host_limit,
    c097_badly_formed_update_arguments,
    c098_partial_update_filter_uses_old_and_given_servers,
    c112c_commands_pipelined_behind_login_run,
);

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
        w.done(format!("A{n} ACTIVATE \"user.n{n}\" \"be1!p\" \"\"\r\n").as_bytes())
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
        .map(|i| activation(format!("user.s{i:02}"), "be1!p", ""))
        .collect();
    burst.push(activation("user.s00", "be2!q", "x\tl\t"));
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
