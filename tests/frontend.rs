//! Issue 13: a real Cyrus 3.6.1 frontend whose master(8) runs our binary, as its local
//! slave or as the murder's master. The frontend's imapd never speaks MUPDATE: it routes
//! by the mailboxes.db our process keeps, and kicks it after a CREATE.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cyrus::{self, Cyrus, LocalMupdate};
use common::murder::*;
use common::*;
use mupdate::cyrusdb::twoskip::Header;

/// One mailbox as both sides list it: name, type, `server!partition`, sorted ACL pairs.
type Row = (String, String, String, Vec<(String, String)>);

/// The frontend's mailboxes.db as Cyrus's own `ctl_mboxlist -d` reads it: name →
/// (type, server!partition, sorted ACL pairs).
fn frontend_list(fe: &Cyrus) -> Vec<Row> {
    let dump = fe.tool("ctl_mboxlist", &["-d"]);
    let dumped: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&dump.stdout).expect("ctl_mboxlist -d prints JSON");
    dumped
        .iter()
        .map(|(name, entry)| {
            let text = |field: &str| entry[field].as_str().unwrap_or_default().to_owned();
            (
                name.clone(),
                text("mbtype"),
                format!("{}!{}", text("server"), text("partition")),
                acl_of(entry),
            )
        })
        .collect()
}

/// The same view of the master's LIST.
fn master_list(listed: &[u8]) -> Vec<Row> {
    let mut rows: Vec<_> = parse_records(listed)
        .into_iter()
        .map(|r| {
            (
                r.name,
                if r.active { "er" } else { "erz" }.to_owned(),
                r.location,
                acl_pairs(&r.acl),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Waits until the frontend's mailboxes.db lists exactly what the master lists.
async fn frontend_matches_master(fe: &Cyrus, master: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let want = master_list(&list(master).await);
        let mut have = frontend_list(fe);
        have.sort();
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ctl_mboxlist -d on the frontend:\n{have:#?}\nthe master's LIST:\n{want:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The story both layouts must tell: every routed command through the frontend lands on
/// the right backend, a CREATE is SELECTable at once, a master-side change and a
/// `ctl_mboxlist -m` reconciliation reach the frontend's file.
async fn routed_through_the_frontend(
    fe_host: &Cyrus,
    be1: &Cyrus,
    be2: &Cyrus,
    master: SocketAddr,
) {
    let mut ours = logged_in(master).await;
    let mut imap1 = Imap::login(be1.addr).await;
    let mut imap2 = Imap::login(be2.addr).await;
    let mut fe = Imap::login(fe_host.addr).await;

    both_backends_reachable(&mut fe, &mut imap2).await;

    // CREATE then SELECT at once: the frontend kicks its local mupdate, whose answer means
    // the new mailbox is in mailboxes.db.
    fe.ok("CREATE user.bob.fromfe").await;
    let selected = fe.ok_with("SELECT user.bob.fromfe").await;
    assert_contains(&selected, "EXISTS");
    let created = find_record(&mut ours, "user.bob.fromfe")
        .await
        .expect("on the master");
    assert_eq!(created.location, format!("{}!default", be1.addr));

    // SETACL through the frontend reaches the backend and comes back into the file.
    fe.ok("SETACL user.bob.fromfe anyone lrs").await;
    let entry = backend_record(be1, "user.bob.fromfe");
    assert!(
        acl_of(&entry).contains(&("anyone".into(), "lrs".into())),
        "{entry}"
    );
    frontend_matches_master(fe_host, &mut ours).await;

    // RENAME and DELETE through the frontend.
    fe.ok("RENAME user.bob.fromfe user.bob.renamed").await;
    fe.ok_eventually("SELECT user.bob.renamed").await;
    assert!(fe.run("SELECT user.bob.fromfe").await.is_err());
    fe.ok("SETACL user.bob.renamed admin lrswipkxtecda").await;
    fe.ok("DELETE user.bob.renamed").await;
    assert_eq!(find_record(&mut ours, "user.bob.renamed").await, None);
    frontend_matches_master(fe_host, &mut ours).await;

    // XFER (an administrator's command on the source backend): be2 moves user carol, and
    // her message, to be1; the frontend follows the move and routes to be1.
    imap2.ok("UNSELECT").await;
    let moved = imap2
        .run(&format!("XFER user.carol \"{}\"", be1.addr))
        .await;
    let on_be1 = format!("{}!default", be1.addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let carol = find_record(&mut ours, "user.carol").await;
        if carol
            .as_ref()
            .is_some_and(|c| c.active && c.location == on_be1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after XFER the master holds {carol:?}; {moved:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    frontend_matches_master(fe_host, &mut ours).await;
    let selected = fe.ok_with("SELECT user.carol").await;
    assert_contains(&selected, "* 1 EXISTS");
    let there = imap1.ok_with("SELECT user.carol").await;
    assert!(there.contains("* 1 EXISTS"), "not moved to be1: {there}");

    // ctl_mboxlist -m: a stale entry of be1 on the master goes, and from the frontend too.
    let stale = format!(
        "S1 ACTIVATE \"user.stale\" \"{}!default\" \"stale\tlrs\t\"\r\n",
        be1.addr
    );
    ours.exchange(stale.as_bytes(), b"S1 OK \"done\"\r\n").await;
    frontend_matches_master(fe_host, &mut ours).await;
    assert!(
        frontend_list(fe_host)
            .iter()
            .any(|row| row.0 == "user.stale")
    );
    push_backend_list(be1).await;
    assert_eq!(find_record(&mut ours, "user.stale").await, None);
    frontend_matches_master(fe_host, &mut ours).await;

    // Cyrus's own checker agrees the file is sound.
    let check = fe_host.mailboxes_db_tool("consistent");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "Yes, consistent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cyrus_frontend_routes_by_what_our_slave_writes() {
    if !cyrus::available("a_cyrus_frontend_routes_by_what_our_slave_writes") {
        return;
    }
    let master = TestServer::start("").await;
    let (be1, be2) = two_backends(master.addr.to_string()).await;
    seed(&be1, &be2).await;
    let fe = frontend(
        master.addr.to_string(),
        format!("{} {}", be1.addr, be2.addr),
        LocalMupdate::OurSlave,
    )
    .await;
    routed_through_the_frontend(&fe, &be1, &be2, master.addr).await;

    // A whole new file renamed in under a running imapd (our repack: the same rename-over
    // as a first sync's rewrite): the imapd that opened the old file routes by the new one.
    let db = fe.path().join("conf/mailboxes.db");
    let generation = || {
        Header::parse(&std::fs::read(&db).expect("read mailboxes.db"))
            .expect("a twoskip header")
            .generation
    };
    let mut session = Imap::login(fe.addr).await;
    session.ok_with("SELECT user.bob").await;
    let before = generation();
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0.. {
        if generation() > before {
            break;
        }
        assert!(Instant::now() < deadline, "no repack after {round} rounds");
        // New ACLs on mailboxes of a server nobody asks for grow the file until it repacks.
        let grow = (0..200)
            .map(|i| {
                activation(
                    format!("user.bulk{i}"),
                    "elsewhere!default",
                    &format!("bulk{round}\tlrs\t"),
                )
            })
            .collect();
        master.ctx.store.apply_many(grow).await.expect("apply");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let selected = session.ok_with("SELECT user.carol").await;
    assert_contains(&selected, "* 1 EXISTS");
    session.ok("CREATE user.bob.afterrepack").await;
    session.ok_with("SELECT user.bob.afterrepack").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cyrus_frontend_routes_by_what_our_master_writes() {
    if !cyrus::available("a_cyrus_frontend_routes_by_what_our_master_writes") {
        return;
    }
    // The murder's master runs in the frontend's master(8); the backends push to it.
    let port = free_port();
    let mupdate = format!("127.0.0.1:{port}");
    let (be1, be2) = two_backends(mupdate.clone()).await;
    let fe = frontend(
        mupdate,
        format!("{} {}", be1.addr, be2.addr),
        LocalMupdate::OurMaster { port },
    )
    .await;
    seed(&be1, &be2).await;
    routed_through_the_frontend(&fe, &be1, &be2, SocketAddr::from(([127, 0, 0, 1], port))).await;
}
