//! Our slave following our master (issue 4, first part): initial sync, live stream,
//! read-only clients, and a full resync after the master comes back changed.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slave_follows_master_and_resyncs_after_master_restart() {
    let master = TestServer::start("").await;
    let port = master.addr.port();
    let mut writer = master.admin().await;
    for (i, name) in ["user.a", "user.a.Sent", "user.b-x", "example.com!user.c"]
        .iter()
        .enumerate()
    {
        writer
            .done(format!("A{i} ACTIVATE \"{name}\" \"be1!default\" \"u\tlrs\t\"\r\n").as_bytes())
            .await;
    }
    writer.done(b"R1 RESERVE \"user.r\" \"be2!p\"\r\n").await;

    let slave_dir = tempfile::tempdir().unwrap();
    let conf = follow_config(slave_dir.path(), master.addr);
    // The slave logs "listening on" only after its first sync.
    let slave = ServerProcess::start(&conf, &[], &[]);
    let mut reader = Client::connect(slave.addr).await;
    let banner = reader.read_banner().await;
    assert!(
        String::from_utf8_lossy(&banner).contains(&format!("\"mupdate://127.0.0.1:{port}\"")),
        "{}",
        String::from_utf8_lossy(&banner)
    );
    reader.exchange(AUTH, b"A0 OK \"Authenticated\"\r\n").await;
    assert_eq!(list(&mut reader).await, list(&mut writer).await);

    // Clients of the slave only read.
    reader
        .exchange(
            b"W1 ACTIVATE \"x\" \"y!z\" \"\"\r\n",
            b"W1 BAD \"read-only session\"\r\n",
        )
        .await;

    // Live changes reach the slave and the slave's own listeners.
    let mut listener = logged_in(slave.addr).await;
    listener.send(b"U1 UPDATE \"be3\"\r\n").await;
    listener.read_until(b"U1 OK \"streaming starts\"\r\n").await;
    writer
        .done(b"A9 ACTIVATE \"user.new\" \"be3!p\" \"n\tl\t\"\r\n")
        .await;
    writer.done(b"X1 DELETE \"user.b-x\"\r\n").await;
    listener
        .expect(&mailbox("U1", "user.new", "be3!p", "n\tl\t"))
        .await;
    converge(&mut reader, &mut writer).await;

    // The master goes away: the slave keeps serving its replica.
    drop(writer);
    let dir = master.stop().await;
    assert_eq!(
        parse_records(&list(&mut reader).await).len(),
        5,
        "the slave still answers from its replica"
    );
    // It comes back (same data, same port) and changes before the slave reconnects: the
    // slave's full resync picks up the new record and the deletion.
    let master = TestServer::start_at(dir, "", port).await;
    let mut writer = master.admin().await;
    writer.done(b"X2 DELETE \"user.a.Sent\"\r\n").await;
    writer
        .done(b"A3 ACTIVATE \"user.later\" \"be3!q\" \"\"\r\n")
        .await;
    converge(&mut reader, &mut writer).await;
    // The resync was announced to the slave's listener (D-9), which saw the link drop as
    // nothing but more changes.
    listener
        .read_until(&mailbox("U1", "user.later", "be3!q", ""))
        .await;
    drop(slave);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_of_a_slave_follows_too() {
    let master = TestServer::start("").await;
    let mut writer = master.admin().await;
    writer
        .done(b"A1 ACTIVATE \"user.tree\" \"be1!p\" \"t\tl\t\"\r\n")
        .await;
    let first_dir = tempfile::tempdir().unwrap();
    let first = ServerProcess::start(&follow_config(first_dir.path(), master.addr), &[], &[]);
    let second_dir = tempfile::tempdir().unwrap();
    let second = ServerProcess::start(&follow_config(second_dir.path(), first.addr), &[], &[]);
    let mut reader = logged_in(second.addr).await;
    writer
        .done(b"A2 ACTIVATE \"user.leaf\" \"be2!p\" \"\"\r\n")
        .await;
    converge(&mut reader, &mut writer).await;
}

/// Connects to a kick socket and reads its answer.
async fn kick(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::UnixStream::connect(path).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("kick answered")?;
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c101_c105_kicks_and_streaming_noops_wait_for_the_master() {
    let master = TestServer::start("").await;
    let slave_dir = tempfile::tempdir().unwrap();
    let conf = follow_config(slave_dir.path(), master.addr);
    let slave = ServerProcess::start(&conf, &[], &[]);
    let slave_kick = slave_dir.path().join("socket/mupdate.target");
    let mut writer = master.admin().await;
    let mut reader = logged_in(slave.addr).await;

    // A change committed on the master, then a kick on the slave: once `ok` arrives, the
    // slave has the change.
    writer
        .done(b"A1 ACTIVATE \"user.kicked\" \"be1!p\" \"k\tl\t\"\r\n")
        .await;
    assert_eq!(kick(&slave_kick).await.expect("slave kick"), b"ok");
    reader
        .exchange(
            b"F FIND \"user.kicked\"\r\n",
            &[
                mailbox("F", "user.kicked", "be1!p", "k\tl\t"),
                b"F OK \"Search completed\"\r\n".to_vec(),
            ]
            .concat(),
        )
        .await;

    // 101: a streaming client's NOOP on the slave sees every change the master committed.
    let mut listener = logged_in(slave.addr).await;
    listener.send(b"U1 UPDATE \"be7\"\r\n").await;
    listener.read_until(b"U1 OK \"streaming starts\"\r\n").await;
    writer
        .done(b"A2 ACTIVATE \"user.seven\" \"be7!p\" \"\"\r\n")
        .await;
    listener
        .exchange(
            b"N1 NOOP\r\n",
            &[
                mailbox("U1", "user.seven", "be7!p", ""),
                b"N1 OK \"Noop done\"\r\n".to_vec(),
            ]
            .concat(),
        )
        .await;

    // Cut off from its master, the slave refuses kicks but answers a streaming NOOP at once.
    drop(writer);
    let _dir = master.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while kick(&slave_kick).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "kicks still answered without a master"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    listener.expect_quiet().await;
    drop(slave);
}

#[tokio::test]
async fn c105_a_master_answers_kicks_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "");
    let _master = ServerProcess::start(&conf, &["-m"], &[]);
    let path = dir.path().join("socket/mupdate.target");
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&path).expect("kick socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o777);
    for _ in 0..3 {
        assert_eq!(kick(&path).await.expect("kick"), b"ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoselect_picks_master_only_where_mupdate_server_points() {
    let port = free_port();
    let master_at = format!("127.0.0.1:{port}");
    let master_dir = tempfile::tempdir().unwrap();
    let master_conf =
        write_process_config(master_dir.path(), &format!("mupdate_server: {master_at}\n"));
    let master = ServerProcess::start(
        &master_conf,
        &["-a"],
        &[("IMAPD_MUPDATE_LISTEN", &master_at)],
    );
    let mut client = Client::connect(master.addr).await;
    let banner = client.read_banner().await;
    assert!(
        banner.ends_with(b"\"(master)\"\r\n"),
        "{}",
        String::from_utf8_lossy(&banner)
    );

    // The same mupdate_server, read by an instance on another port of the same address,
    // and by one on the same port of another loopback address: both follow the master.
    for listen in ["127.0.0.1:0".to_owned(), format!("127.0.0.2:{port}")] {
        let slave_dir = tempfile::tempdir().unwrap();
        let slave_conf = follow_config(slave_dir.path(), master.addr);
        let slave =
            ServerProcess::start(&slave_conf, &["-a"], &[("IMAPD_MUPDATE_LISTEN", &listen)]);
        let mut client = Client::connect(slave.addr).await;
        let banner = client.read_banner().await;
        assert!(
            banner.ends_with(format!("\"mupdate://{master_at}\"\r\n").as_bytes()),
            "{listen}: {}",
            String::from_utf8_lossy(&banner)
        );
    }
}

fn tool(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mupdate"))
        .args(args)
        .env("MUPDATE_PASSWORD", "mupdatepass")
        .output()
        .expect("run a mupdate tool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_restore_and_check() {
    let source_dir = tempfile::tempdir().unwrap();
    let source_conf = write_process_config(source_dir.path(), "");
    let source = ServerProcess::start(&source_conf, &["-m"], &[]);
    let mut writer = logged_in(source.addr).await;
    for (i, command) in [
        "ACTIVATE \"user.a\" \"be1!p\" \"a\tlrs\tanyone\tl\t\"",
        "ACTIVATE \"example.com!user.b.x y\" \"be2!\" \"\"",
        "RESERVE \"user.c\" \"be3!q\"",
    ]
    .iter()
    .enumerate()
    {
        writer.done(format!("W{i} {command}\r\n").as_bytes()).await;
    }
    let dump = source_dir.path().join("list.dump");
    let out = tool(&[
        "dump",
        "-C",
        source_conf.to_str().unwrap(),
        "--server",
        &source.addr.to_string(),
        "--output",
        dump.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Restore into a fresh, stopped store; a master started on it lists the same.
    let target_dir = tempfile::tempdir().unwrap();
    let target_conf = write_process_config(target_dir.path(), "");
    let out = tool(&[
        "restore",
        "-C",
        target_conf.to_str().unwrap(),
        dump.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = ServerProcess::start(&target_conf, &["-m"], &[]);
    let mut reader = logged_in(target.addr).await;
    assert_eq!(list(&mut reader).await, list(&mut writer).await);

    // check: equal lists pass; a planted difference is reported.
    let check = |a: std::net::SocketAddr, b: std::net::SocketAddr| {
        tool(&[
            "check",
            "-C",
            source_conf.to_str().unwrap(),
            "--master",
            &a.to_string(),
            "--slave",
            &b.to_string(),
        ])
    };
    let out = check(source.addr, target.addr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    writer
        .done(b"P1 ACTIVATE \"user.planted\" \"be1!p\" \"\"\r\n")
        .await;
    writer
        .done(b"P2 ACTIVATE \"user.a\" \"be9!p\" \"\"\r\n")
        .await;
    let out = check(source.addr, target.addr);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_contains(&report, "missing on slave: user.planted");
    assert_contains(&report, "differs: user.a");
    assert_contains(&report, "2 differences");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_master_restart_the_slave_resumes_by_delta() {
    let master = TestServer::start("").await;
    let port = master.addr.port();
    let mut writer = master.admin().await;
    writer
        .done(b"A1 ACTIVATE \"user.one\" \"be1!p\" \"\"\r\n")
        .await;
    let slave_dir = tempfile::tempdir().unwrap();
    let slave = ServerProcess::start(&follow_config(slave_dir.path(), master.addr), &[], &[]);
    let mut reader = logged_in(slave.addr).await;
    writer
        .done(b"A2 ACTIVATE \"user.two\" \"be1!p\" \"\"\r\n")
        .await;
    converge(&mut reader, &mut writer).await;
    assert_eq!(dumps_sent(&master, "full"), 1, "the first sync is full");

    drop(writer);
    let dir = master.stop().await;
    let master = TestServer::start_at(dir, "", port).await;
    let mut writer = master.admin().await;
    writer.done(b"X1 DELETE \"user.one\"\r\n").await;
    writer
        .done(b"A3 ACTIVATE \"user.three\" \"be2!p\" \"t\tl\t\"\r\n")
        .await;
    converge(&mut reader, &mut writer).await;
    assert_eq!(
        dumps_sent(&master, "full"),
        0,
        "no full dump after the restart"
    );
    assert_eq!(
        dumps_sent(&master, "delta"),
        1,
        "resumed from the change log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_behind_the_trimmed_log_falls_back_to_a_full_dump() {
    let master = TestServer::start("mupdate_changelog_max: 10\n").await;
    let mut writer = master.admin().await;
    writer
        .done(b"A1 ACTIVATE \"user.gone\" \"be1!p\" \"\"\r\n")
        .await;
    let slave_dir = tempfile::tempdir().unwrap();
    let conf = follow_config(slave_dir.path(), master.addr);
    let slave = ServerProcess::start(&conf, &[], &[]);
    drop(slave);
    // While the slave is away, more than the log keeps.
    writer.done(b"X1 DELETE \"user.gone\"\r\n").await;
    let mut burst = Vec::new();
    for i in 0..1_100 {
        burst.extend_from_slice(
            format!("B{i} ACTIVATE \"user.b{i}\" \"be2!p\" \"\"\r\n").as_bytes(),
        );
    }
    writer.send(&burst).await;
    writer.read_until(b"B1099 OK \"done\"\r\n").await;
    let slave = ServerProcess::start(&conf, &[], &[]);
    let mut reader = logged_in(slave.addr).await;
    converge(&mut reader, &mut writer).await;
    assert_eq!(dumps_sent(&master, "delta"), 0);
    assert_eq!(dumps_sent(&master, "full"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_master_never_wipes_a_replica_and_a_restore_costs_one_full_resync() {
    let master = TestServer::start("").await;
    let port = master.addr.port();
    let mut writer = master.admin().await;
    writer
        .done(b"A1 ACTIVATE \"user.kept\" \"be1!p\" \"\"\r\n")
        .await;
    let slave_dir = tempfile::tempdir().unwrap();
    let slave = ServerProcess::start(&follow_config(slave_dir.path(), master.addr), &[], &[]);
    let mut reader = logged_in(slave.addr).await;
    converge(&mut reader, &mut writer).await;
    let before = list(&mut reader).await;
    drop(writer);
    let master_dir = master.stop().await;

    // A wiped master (a new, empty database) comes up where the old one was.
    let empty = TestServer::start_at(tempfile::tempdir().unwrap(), "", port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while dumps_sent(&empty, "full") == 0 {
        assert!(Instant::now() < deadline, "the slave did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.expect_quiet().await;
    assert_eq!(list(&mut reader).await, before, "the replica was kept");
    let _ = empty.stop().await;

    // The real master, restored from a dump (a new epoch): one full resync, then deltas.
    let dump = master_dir.path().join("list.dump");
    std::fs::write(
        &dump,
        [
            mailbox("D", "user.kept", "be1!p", ""),
            mailbox("D", "user.restored", "be2!p", ""),
        ]
        .concat(),
    )
    .unwrap();
    let conf = master_dir.path().join("imapd.conf");
    let out = tool(&[
        "restore",
        "-C",
        conf.to_str().unwrap(),
        dump.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let master = TestServer::start_at(master_dir, "", port).await;
    let mut writer = master.admin().await;
    converge(&mut reader, &mut writer).await;
    assert_eq!(
        dumps_sent(&master, "full"),
        1,
        "one full resync after the restore"
    );
    drop(writer);
    let master_dir = master.stop().await;
    let master = TestServer::start_at(master_dir, "", port).await;
    let mut writer = master.admin().await;
    writer
        .done(b"A2 ACTIVATE \"user.after\" \"be1!p\" \"\"\r\n")
        .await;
    converge(&mut reader, &mut writer).await;
    assert_eq!(dumps_sent(&master, "full"), 0);
    assert_eq!(dumps_sent(&master, "delta"), 1, "then deltas again");
    drop(slave);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkilled_master_comes_back_the_slave_resumes_by_delta() {
    let port = common::free_port();
    let master_dir = tempfile::tempdir().unwrap();
    // The environment overrides the fixture's port-0 listener: the master must come back
    // where the slave looks for it.
    let listen = format!("127.0.0.1:{port}");
    let master_conf = write_process_config(master_dir.path(), "");
    let mut master =
        ServerProcess::start(&master_conf, &["-m"], &[("IMAPD_MUPDATE_LISTEN", &listen)]);
    let mut writer = logged_in(master.addr).await;
    writer
        .done(b"A1 ACTIVATE \"user.before\" \"be1!p\" \"\"\r\n")
        .await;
    let slave_dir = tempfile::tempdir().unwrap();
    let slave = ServerProcess::start(&follow_config(slave_dir.path(), master.addr), &[], &[]);
    let mut reader = logged_in(slave.addr).await;
    converge(&mut reader, &mut writer).await;

    master.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    let master = ServerProcess::start(&master_conf, &["-m"], &[("IMAPD_MUPDATE_LISTEN", &listen)]);
    let mut writer = logged_in(master.addr).await;
    writer
        .done(b"A2 ACTIVATE \"user.after\" \"be1!p\" \"\"\r\n")
        .await;
    converge(&mut reader, &mut writer).await;
    let log = slave.log_once_it_holds("mailbox list synchronization complete (delta resync)");
    assert_eq!(
        log.matches("(full resync)").count(),
        1,
        "only the first sync was full:\n{log}"
    );
}

/// Issue 16's groundwork: when a replica of a master (B) takes its place, another replica of
/// that master (C) resumes from B by delta, B translating C's position in the master's
/// history into its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_resumes_by_delta_from_another_replica_of_its_master() {
    let master = TestServer::start("").await;
    let mut writer = master.admin().await;
    for n in 0..5 {
        writer
            .done(format!("A{n} ACTIVATE \"user.u{n}\" \"be1!p\" \"\"\r\n").as_bytes())
            .await;
    }
    let b_dir = tempfile::tempdir().unwrap();
    let b = ServerProcess::start(&follow_config(b_dir.path(), master.addr), &[], &[]);
    let c_dir = tempfile::tempdir().unwrap();
    let c_conf = follow_config(c_dir.path(), master.addr);
    let c = ServerProcess::start(&c_conf, &[], &[]);
    writer
        .done(b"A5 ACTIVATE \"user.u5\" \"be2!p\" \"\"\r\n")
        .await;
    for replica in [&b, &c] {
        let mut reader = logged_in(replica.addr).await;
        converge(&mut reader, &mut writer).await;
    }
    drop(c);

    // C now follows B, from where it was in the master's history.
    let c = ServerProcess::start(&follow_config(c_dir.path(), b.addr), &[], &[]);
    let log = c.log_once_it_holds("mailbox list synchronization complete");
    assert_contains(&log, "(delta resync)");
    assert!(!log.contains("(full resync)"), "{log}");
    // And it goes on following: a change on the master reaches C through B.
    writer.done(b"X1 DELETE \"user.u0\"\r\n").await;
    let mut reader = logged_in(c.addr).await;
    converge(&mut reader, &mut writer).await;
}

/// Issue 16's groundwork, `mupdate_sync_replicas`: a master answers a write OK only once a
/// replica holds it durably, and refuses writes (writing nothing) while no replica is there
/// to hold them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_answers_a_write_once_its_synchronous_replica_holds_it() {
    let master = TestServer::start("mupdate_sync_replicas: 1\nmupdate_sync_timeout: 5\n").await;
    let mut writer = master.admin().await;
    let refused = b"A0 NO \"not enough synchronous replicas connected\"\r\n";
    writer
        .exchange(b"A0 ACTIVATE \"user.early\" \"be1!p\" \"\"\r\n", refused)
        .await;
    writer.finds_nothing("user.early").await;

    let slave_dir = tempfile::tempdir().unwrap();
    let mut slave = ServerProcess::start(&follow_config(slave_dir.path(), master.addr), &[], &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while master.ctx.sync_replicas.connected() == 0 {
        assert!(Instant::now() < deadline, "the replica never acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = master.ctx.metrics.render();
    assert_contains(&metrics, "mupdate_replication_sync_replicas 1");
    for n in 1..=20 {
        writer
            .done(format!("A{n} ACTIVATE \"user.s{n}\" \"be1!p\" \"\"\r\n").as_bytes())
            .await;
    }
    // Answered OK: the replica holds each on disk. Killed at once, with no barrier asked
    // for, it has every one when its store is opened (its write-ahead log replays them).
    slave.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    let replica = open_store(
        &slave_dir.path().join("mailboxes.redb"),
        mupdate::store::StoreOptions::default(),
    )
    .await;
    for n in 1..=20 {
        let name = format!("user.s{n}");
        let record = replica.find(name.as_bytes()).unwrap();
        assert_eq!(
            record.map(|r| r.location),
            Some(b"be1!p".to_vec()),
            "{name} acknowledged but not on the replica's disk"
        );
    }
    drop(replica);

    // The replica gone, writes are refused again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while master.ctx.sync_replicas.connected() > 0 {
        assert!(Instant::now() < deadline, "the replica is still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer
        .exchange(b"A0 ACTIVATE \"user.late\" \"be1!p\" \"\"\r\n", refused)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_one_process_a_slave_on_port_0_follows_its_master() {
    let master = TestServer::start("").await;
    let mut writer = master.admin().await;
    writer
        .done(b"A1 ACTIVATE \"user.here\" \"be1!p\" \"h\tl\t\"\r\n")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let settings = mupdate::config::load(
        &follow_config(dir.path(), master.addr),
        &mupdate::config::Environment::default(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let slave = tokio::spawn(mupdate::app::run(
        settings,
        mupdate::server::Role::Slave {
            master: master.addr.to_string(),
        },
        listener,
        shutdown.clone(),
    ));
    let mut reader = logged_in(addr).await;
    let mut listener = logged_in(addr).await;
    listener
        .exchange(
            b"U1 UPDATE\r\n",
            &[
                mailbox("U1", "user.here", "be1!p", "h\tl\t"),
                b"U1 OK \"streaming starts\"\r\n".to_vec(),
            ]
            .concat(),
        )
        .await;
    writer
        .done(b"A2 ACTIVATE \"user.there\" \"be2!p\" \"\"\r\n")
        .await;
    listener
        .expect(&mailbox("U1", "user.there", "be2!p", ""))
        .await;
    converge(&mut reader, &mut writer).await;
    shutdown.cancel();
    assert!(slave.await.expect("slave task").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_a_difference_planted_in_a_slave() {
    let master = TestServer::start("").await;
    let mut writer = master.admin().await;
    writer
        .done(b"A1 ACTIVATE \"user.real\" \"be1!p\" \"\"\r\n")
        .await;
    let slave_dir = tempfile::tempdir().unwrap();
    let slave_conf = follow_config(slave_dir.path(), master.addr);
    let slave = ServerProcess::start(&slave_conf, &[], &[]);
    drop(slave);
    // Plant a mailbox in the stopped slave's store that the master never had; the slave's
    // position stays, so its next start resumes by delta and keeps the drift.
    let planted = slave_dir.path().join("planted.dump");
    std::fs::write(
        &planted,
        [
            mailbox("D", "user.real", "be1!p", ""),
            mailbox("D", "user.drift", "be9!x", ""),
        ]
        .concat(),
    )
    .unwrap();
    let out = tool(&[
        "restore",
        "-C",
        slave_conf.to_str().unwrap(),
        planted.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slave = ServerProcess::start(&slave_conf, &[], &[]);
    let out = tool(&[
        "check",
        "-C",
        slave_conf.to_str().unwrap(),
        "--master",
        &master.addr.to_string(),
        "--slave",
        &slave.addr.to_string(),
    ]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_contains(&report, "only on slave: user.drift");
    assert_contains(&report, "1 differences");
}

/// Before its first sync a slave serves nobody, so it commits the master's list without
/// waiting for the disk: killed in the middle, it must come back, start over and end with
/// the whole list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_killed_in_its_first_sync_starts_over_and_ends_complete() {
    const MAILBOXES: usize = 60_000;
    let master = TestServer::start("").await;
    let names: Vec<usize> = (0..MAILBOXES).collect();
    for chunk in names.chunks(10_000) {
        let mutations = chunk
            .iter()
            .map(|i| activation(format!("user.f{i:06}"), "be1!p", "f\tlrs\t"))
            .collect();
        master.ctx.store.apply_many(mutations).await.expect("load");
    }
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "-C".to_owned(),
        follow_config(dir.path(), master.addr).display().to_string(),
    ];
    let env = [("RUST_LOG".to_owned(), "info".to_owned())];
    let mut first = ServerProcess::spawn(&args, &env);
    first.log_once_it_holds("synchronizing mailbox list");
    let redb = dir.path().join("mailboxes.redb");
    let started = std::fs::metadata(&redb).map(|m| m.len()).unwrap_or(0);
    // Once part of the list is committed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&redb).map(|m| m.len()).unwrap_or(0) <= started {
        assert!(Instant::now() < deadline, "nothing committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    let log = first.stderr.lock().unwrap().clone();
    assert!(
        !log.contains("synchronization complete"),
        "killed too late:\n{log}"
    );

    let second = ServerProcess::start_with(&args, &env);
    let log = second.log_once_it_holds("synchronization complete");
    assert_contains(&log, "(full resync)");
    let mut reader = logged_in(second.addr).await;
    let mut writer = master.admin().await;
    assert_eq!(list(&mut reader).await, list(&mut writer).await);
    assert_eq!(parse_records(&list(&mut reader).await).len(), MAILBOXES);
}

/// Catch-ups of `kind` (`full`, `delta`) `server` has sent to streaming clients.
fn dumps_sent(server: &TestServer, kind: &str) -> u64 {
    server
        .ctx
        .metrics
        .dumps_sent
        .with_label_values(&[kind])
        .get()
}
