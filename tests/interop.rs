//! Interoperability with a real Cyrus 3.6.1 murder (issue 3), each scenario a story on the
//! shared Cyrus fixture (`tests/common/cyrus.rs`). Skipped with a message where Cyrus is not
//! installed or the test is not root; under `CI=true` that is a failure.

mod common;

use std::time::{Duration, Instant};

use common::cyrus::{self, Cyrus, Service};
use common::murder::*;
use common::*;

/// Sends every command in one go and waits for the answer of the last one.
async fn pipeline(client: &mut Client, commands: &[String]) -> Vec<u8> {
    let mut wire = Vec::new();
    for command in commands {
        wire.extend_from_slice(command.as_bytes());
    }
    client.send(&wire).await;
    let last_tag = commands
        .last()
        .and_then(|c| c.split(' ').next())
        .expect("a command");
    let mut answers = Vec::new();
    loop {
        let line = client.read_until(b"\r\n").await;
        let done = line.starts_with(format!("{last_tag} OK ").as_bytes())
            || line.starts_with(format!("{last_tag} NO ").as_bytes())
            || line.starts_with(format!("{last_tag} BAD ").as_bytes());
        answers.extend_from_slice(&line);
        if done {
            return answers;
        }
    }
}

/// Mailbox names of the kinds a murder holds: hierarchy, `-`, `_`, domains, shared.
fn murder_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i % 6 {
            0 => format!("user.u{i}"),
            1 => format!("user.u{}.Sent", i - 1),
            2 => format!("user.u-{i}"),
            3 => format!("user.u_{i}.Trash"),
            4 => format!("example.com!user.d{i}"),
            _ => format!("shared.folder-{i}.sub_{}", i % 7),
        })
        .collect()
}

fn writes(names: &[String], round: usize) -> Vec<String> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let backend = format!("be{}", i % 3 + 1);
            match (i + round) % 10 {
                0 => format!("R{i} RESERVE \"{name}\" \"{backend}!default\"\r\n"),
                1 => format!("D{i} DEACTIVATE \"{name}\" \"{backend}!moving\"\r\n"),
                2 if round > 0 => format!("X{i} DELETE \"{name}\"\r\n"),
                _ => format!(
                    "A{i} ACTIVATE \"{name}\" \"{backend}!default\" \"u{i}\tlrswipkxtecdan\tanyone\tlrs\t\"\r\n"
                ),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario1_cyrus_slave_follows_our_master() {
    if !cyrus::available("scenario1_cyrus_slave_follows_our_master") {
        return;
    }
    let master = TestServer::start("").await;
    let mut writer = master.admin().await;
    let names = murder_names(3_000);
    // Everything active first, then a second pass that reserves and deactivates some.
    let all_active: Vec<String> = writes(&names, 2);
    pipeline(&mut writer, &all_active).await;
    pipeline(&mut writer, &writes(&names, 1)).await;
    let ours = list(&mut writer).await;

    let started = Instant::now();
    let slave = cyrus_slave_of(master.addr).await;
    eprintln!("Cyrus slave synchronised in {:?}", started.elapsed());

    let mut reader = logged_in(slave.addr).await;
    let theirs = list(&mut reader).await;
    assert_eq!(
        theirs.len(),
        ours.len(),
        "the Cyrus slave's LIST differs in size from ours"
    );
    assert!(theirs == ours, "the Cyrus slave's LIST differs from ours");

    // Its mailboxes.db holds exactly our records, as Cyrus stores them.
    let dump = slave.tool("ctl_mboxlist", &["-d"]);
    let dumped: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&dump.stdout).expect("ctl_mboxlist -d prints JSON");
    let records = parse_records(&ours);
    assert_eq!(
        dumped.len(),
        records.len(),
        "ctl_mboxlist -d on the Cyrus slave"
    );
    for record in &records {
        let entry = &dumped[&record.name];
        let (server, partition) = record.location.split_once('!').expect("server!partition");
        assert_eq!(
            entry["mbtype"],
            if record.active { "er" } else { "erz" },
            "{record:?}"
        );
        assert_eq!(entry["server"], server, "{record:?}");
        assert_eq!(entry["partition"], partition, "{record:?}");
        assert_eq!(acl_of(entry), acl_pairs(&record.acl), "{record:?}");
    }

    // Our twoskip reader reads the file the Cyrus slave wrote as Cyrus's `show` does, and
    // our projection would write the very same keys and values (M, the write time, apart).
    let db = slave.path().join("conf/mailboxes.db");
    let shown = slave.mailboxes_db_tool("show").stdout;
    let ours_read = mupdate::cyrusdb::twoskip::entries(&std::fs::read(&db).expect("read"))
        .expect("our reader reads the Cyrus slave's file");
    let mut as_shown = Vec::new();
    for (key, value) in &ours_read {
        as_shown.extend_from_slice(key);
        as_shown.push(b'\t');
        as_shown.extend_from_slice(value);
        as_shown.push(b'\n');
    }
    assert!(as_shown == shown, "our reader and cyr_dbtool show differ");
    let naming = mupdate::cyrusdb::mboxlist::Naming::default();
    let by_key: std::collections::BTreeMap<&[u8], &[u8]> = ours_read
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    assert_eq!(by_key.len(), records.len());
    for record in &records {
        let key = naming.key(record.name.as_bytes()).expect("a key");
        let theirs = by_key.get(key.as_slice()).expect("Cyrus wrote this key");
        let mtime = mupdate::cyrusdb::mboxlist::parse_value(theirs)
            .expect("a value")
            .mtime
            .expect("an M field");
        let acl = mupdate::store::normalize_acl(record.acl.as_bytes());
        let mine = mupdate::cyrusdb::mboxlist::Entry {
            reserved: !record.active,
            location: record.location.as_bytes(),
            acl: &acl,
        }
        .value(mtime);
        assert_eq!(
            String::from_utf8_lossy(&mine),
            String::from_utf8_lossy(theirs),
            "{record:?}"
        );
    }

    // Changes made while the slave is connected reach it too, including deletes.
    pipeline(&mut writer, &writes(&names, 3)).await;
    let ours = list(&mut writer).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A NOOP on the slave makes it check with its master first (a barrier).
        reader.expect_quiet().await;
        let theirs = list(&mut reader).await;
        if theirs == ours {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Cyrus slave did not converge: {} bytes vs our {}",
            theirs.len(),
            ours.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in [
        "user.u0",
        "example.com!user.d4",
        "user.u-2",
        "shared.folder-5.sub_5",
    ] {
        let request = format!("F FIND \"{name}\"\r\n");
        writer.send(request.as_bytes()).await;
        let expected = writer.read_until(b"F OK \"Search completed\"\r\n").await;
        reader.exchange(request.as_bytes(), &expected).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario2_scenario3_cyrus_backend_pushes_to_our_master() {
    if !cyrus::available("scenario2_cyrus_backend_pushes_to_our_master") {
        return;
    }
    let master = TestServer::start("").await;
    let mut ours = master.admin().await;
    // A stale entry the backend does not have: ctl_mboxlist -m must remove it.
    ours.done(b"S1 ACTIVATE \"user.stale\" \"be1!default\" \"stale\tlrs\t\"\r\n")
        .await;
    let mupdate = master.addr.to_string();
    let backend = tokio::task::spawn_blocking(move || {
        Cyrus::start(Service::Backend { mupdate: &mupdate }, "be1", "")
    })
    .await
    .expect("start the Cyrus backend");
    let mut imap = Imap::login(backend.addr).await;

    // CREATE: the backend reserves, then activates, with its own location and ACL.
    for name in [
        "user.carol",
        "user.carol.sub",
        "user.carol-a",
        "user.carol.sub.deep",
        "user.carol.old",
    ] {
        imap.ok(&format!("CREATE {name}")).await;
    }
    let carol = find_record(&mut ours, "user.carol")
        .await
        .expect("user.carol on our master");
    assert!(carol.active);
    assert_eq!(carol.location, "be1!default");
    let theirs = backend_record(&backend, "user.carol");
    assert_eq!(acl_pairs(&carol.acl), acl_of(&theirs));

    // SETACL: a new ACTIVATE with the new ACL.
    imap.ok("SETACL user.carol anyone lrs").await;
    let carol = find_record(&mut ours, "user.carol")
        .await
        .expect("user.carol");
    assert!(carol.acl.contains("anyone\tlrs\t"), "{carol:?}");
    assert_eq!(
        acl_pairs(&carol.acl),
        acl_of(&backend_record(&backend, "user.carol"))
    );

    // RENAME: the old name goes, the new one arrives as Cyrus 3.6.1 sends it.
    imap.ok("RENAME user.carol.old user.carol.new").await;
    assert_eq!(find_record(&mut ours, "user.carol.old").await, None);
    let renamed = find_record(&mut ours, "user.carol.new")
        .await
        .expect("renamed mailbox");
    assert!(
        renamed.active && renamed.location.starts_with("be1!"),
        "{renamed:?}"
    );

    // DELETE (delayed, Cyrus's default): the name goes, a DELETED.… name arrives verbatim.
    // An admin must grant itself the right to delete a user's folder.
    imap.ok("SETACL user.carol.sub.deep admin lrswipkxtecda")
        .await;
    imap.ok("DELETE user.carol.sub.deep").await;
    assert_eq!(find_record(&mut ours, "user.carol.sub.deep").await, None);
    let listed = parse_records(&list(&mut ours).await);
    assert!(
        listed
            .iter()
            .any(|r| r.name.starts_with("DELETED.user.carol.sub.deep.")),
        "{listed:?}"
    );

    // Scenario 3: ctl_mboxlist -m pushes the backend's list and reconciles ours. Its walk
    // and our LIST must agree on Cyrus order (user.carol.sub before user.carol-a), or it
    // aborts with "mupdate said not us before it said us".
    push_backend_list(&backend).await;
    assert_eq!(
        find_record(&mut ours, "user.stale").await,
        None,
        "stale entry kept"
    );
    let ours_now: Vec<String> = parse_records(&list(&mut ours).await)
        .into_iter()
        .map(|r| r.name)
        .collect();
    let dump = backend.tool("ctl_mboxlist", &["-d"]);
    let dumped: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&dump.stdout).expect("JSON");
    // Cyrus 3.6 keeps tombstones of renamed and deleted mailboxes (type with `d`).
    let mut theirs: Vec<String> = dumped
        .iter()
        .filter(|(_, entry)| !entry["mbtype"].as_str().unwrap_or_default().contains('d'))
        .map(|(name, _)| name.clone())
        .collect();
    let mut sorted_ours = ours_now.clone();
    sorted_ours.sort();
    theirs.sort();
    assert_eq!(
        sorted_ours, theirs,
        "our master and the backend list the same mailboxes"
    );
}

/// Waits until master(8) has exactly one live child and returns it.
async fn only_child(cyrus: &Cyrus, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = cyrus.children();
        if let [child] = children[..]
            && Some(child) != not
        {
            return child;
        }
        assert!(Instant::now() < deadline, "master's children: {children:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario5_cyrus_master_runs_our_server() {
    if !cyrus::available("scenario5_cyrus_master_runs_our_server") {
        return;
    }
    let cyrus = tokio::task::spawn_blocking(|| Cyrus::start(Service::Ours, "mupdate-master", ""))
        .await
        .expect("start master(8) with our mupdate");
    let mut client = Client::connect(cyrus.addr).await;
    let banner = client.read_banner().await;
    assert!(
        banner.ends_with(b"\"(master)\"\r\n"),
        "{}",
        String::from_utf8_lossy(&banner)
    );
    client.exchange(AUTH, b"A0 OK \"Authenticated\"\r\n").await;
    client
        .done(b"A1 ACTIVATE \"user.m8\" \"be1!default\" \"m\tlrs\t\"\r\n")
        .await;
    drop(client);

    // One instance serves everyone: 20 connections in a row, then 20 at once.
    let child = only_child(&cyrus, None).await;
    for _ in 0..20 {
        let mut c = Client::connect(cyrus.addr).await;
        c.read_banner().await;
        c.send(b"Q LOGOUT\r\n").await;
        c.expect_eof(b"Q OK \"bye-bye\"\r\n").await;
    }
    let parallel: Vec<_> = (0..20)
        .map(|_| {
            let addr = cyrus.addr;
            tokio::spawn(async move {
                let mut c = logged_in(addr).await;
                c.exchange(
                    b"F FIND \"user.m8\"\r\n",
                    b"F MAILBOX {7+}\r\nuser.m8 {11+}\r\nbe1!default {6+}\r\nm\tlrs\t\r\nF OK \"Search completed\"\r\n",
                )
                .await;
            })
        })
        .collect();
    for task in parallel {
        task.await.expect("parallel client");
    }
    assert_eq!(
        cyrus.children(),
        vec![child],
        "one instance served every connection"
    );

    // SIGHUP recycles the instance: it exits 0 and a fresh one serves the same data.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cyrus.master_pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP master");
    let fresh = only_child(&cyrus, Some(child)).await;
    let mut c = logged_in(cyrus.addr).await;
    c.exchange(
        b"F FIND \"user.m8\"\r\n",
        b"F MAILBOX {7+}\r\nuser.m8 {11+}\r\nbe1!default {6+}\r\nm\tlrs\t\r\nF OK \"Search completed\"\r\n",
    )
    .await;
    assert_eq!(only_child(&cyrus, Some(child)).await, fresh);
    // Our stderr goes to master's -L file: the old instance shut down cleanly.
    let log = std::fs::read_to_string(cyrus.path().join("master.log")).unwrap_or_default();
    assert!(log.contains("shut down"), "master.log: {log}");

    // Stopping master(8) (SIGTERM, as the fixture does) stops our instance with it.
    let dir = cyrus.path();
    drop(cyrus);
    let pid = nix::unistd::Pid::from_raw(fresh as i32);
    let deadline = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::kill(pid, None).is_ok() {
        assert!(Instant::now() < deadline, "our instance outlived master(8)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario4_a_whole_murder_around_our_master() {
    if !cyrus::available("scenario4_a_whole_murder_around_our_master") {
        return;
    }
    let master = TestServer::start("").await;
    let mupdate = master.addr.to_string();
    let (be1, be2) = two_backends(mupdate.clone()).await;
    seed(&be1, &be2).await;
    let mut imap2 = Imap::login(be2.addr).await;
    // The frontend's local Cyrus slave replicates from our master; its imapd proxies.
    let backends = format!("{} {}", be1.addr, be2.addr);
    let frontend = frontend(mupdate, backends, cyrus::LocalMupdate::Cyrus).await;
    let mut fe = Imap::login(frontend.addr).await;

    both_backends_reachable(&mut fe, &mut imap2).await;

    // A CREATE through the frontend is proxied to the parent's backend, reaches our master,
    // and is visible on the frontend once its slave has it.
    fe.ok("CREATE user.bob.fromfe").await;
    let mut ours = master.admin().await;
    let created = find_record(&mut ours, "user.bob.fromfe")
        .await
        .expect("on our master");
    assert_eq!(created.location, format!("{}!default", be1.addr));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = fe.ok_with("LIST \"\" \"user.bob.*\"").await;
        if listed.contains("user.bob.fromfe") {
            break;
        }
        assert!(Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Our slave process, following `master`.
fn our_slave(dir: &std::path::Path, master: std::net::SocketAddr) -> ServerProcess {
    ServerProcess::start(&follow_config(dir, master), &[], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_slave_follows_a_cyrus_master() {
    if !cyrus::available("our_slave_follows_a_cyrus_master") {
        return;
    }
    let mut cyrus_master =
        tokio::task::spawn_blocking(|| Cyrus::start(Service::MupdateMaster, "mupdate-master", ""))
            .await
            .expect("start the Cyrus master");
    let mut writer = logged_in(cyrus_master.addr).await;
    let names = murder_names(600);
    // Every name active first: a DEACTIVATE or DELETE of what is not there kills Cyrus's
    // master (spec §14), so the mixed pass only meets active records.
    let activate: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                "A{i} ACTIVATE \"{name}\" \"be{}!default\" \"u\tlrs\t\"\r\n",
                i % 3 + 1
            )
        })
        .collect();
    pipeline(&mut writer, &activate).await;
    pipeline(&mut writer, &writes(&names, 1)).await;

    let dir = tempfile::tempdir().unwrap();
    let slave = tokio::task::spawn_blocking({
        let path = dir.path().to_owned();
        let addr = cyrus_master.addr;
        move || our_slave(&path, addr)
    })
    .await
    .expect("start our slave");
    let mut reader = logged_in(slave.addr).await;
    assert!(
        list(&mut reader).await == list(&mut writer).await,
        "first sync"
    );
    // Cyrus pushes in 5-second batches or at a NOOP; our keep-alive NOOP comes every second.
    let moves: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| format!("M{i} ACTIVATE \"{name}\" \"be9!moved\" \"m\tl\t\"\r\n"))
        .collect();
    pipeline(&mut writer, &moves).await;
    converge(&mut reader, &mut writer).await;

    // Cyrus's master restarts: our slave reconnects (a Cyrus master knows no XUPDATE, so a
    // full UPDATE) and takes in what changed.
    drop(writer);
    let cyrus_master = tokio::task::spawn_blocking(move || {
        cyrus_master.restart();
        cyrus_master
    })
    .await
    .expect("restart the Cyrus master");
    let mut writer = logged_in(cyrus_master.addr).await;
    pipeline(
        &mut writer,
        &["Z1 ACTIVATE \"user.after-restart\" \"be1!default\" \"\"\r\n".to_owned()],
    )
    .await;
    converge(&mut reader, &mut writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cyrus_slave_follows_our_slave() {
    if !cyrus::available("a_cyrus_slave_follows_our_slave") {
        return;
    }
    let master = TestServer::start("").await;
    let mut writer = master.admin().await;
    let names = murder_names(600);
    pipeline(&mut writer, &writes(&names, 2)).await;
    let dir = tempfile::tempdir().unwrap();
    let ours = tokio::task::spawn_blocking({
        let path = dir.path().to_owned();
        let addr = master.addr;
        move || our_slave(&path, addr)
    })
    .await
    .expect("start our slave");
    let cyrus_slave = cyrus_slave_of(ours.addr).await;
    let mut reader = logged_in(cyrus_slave.addr).await;
    converge(&mut reader, &mut writer).await;
    // A change on our master travels master -> our slave -> Cyrus slave.
    pipeline(&mut writer, &writes(&names, 3)).await;
    converge(&mut reader, &mut writer).await;
}

/// SCRAM-SHA-256 between Cyrus 3.6.1 (Cyrus SASL's SCRAM plugin) and us, both ways: a
/// Cyrus slave logs in to our master, which offers nothing else; our slave picks SCRAM when
/// a Cyrus master offers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_between_cyrus_and_us_both_ways() {
    if !cyrus::available("scram_sha_256_between_cyrus_and_us_both_ways") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "sasl_mech_list: SCRAM-SHA-256 PLAIN\n");
    std::fs::write(
        dir.path().join("passwd"),
        scram_passwd_line("mupdate", "mupdatepass"),
    )
    .expect("passwd");
    let ours = ServerProcess::start(&conf, &["-m"], &[("IMAPD_ALLOWPLAINTEXT", "no")]);
    // Cyrus's slave greets only after its first sync: starting it proves the login.
    let cyrus_slave = cyrus_slave_of(ours.addr).await;
    ours.log_once_it_holds("mupdate SCRAM-SHA-256 User logged in");
    drop(cyrus_slave);

    let cyrus_master = tokio::task::spawn_blocking(|| {
        Cyrus::start(
            Service::MupdateMaster,
            "mupdate-master",
            "sasl_mech_list: SCRAM-SHA-256 PLAIN\n",
        )
    })
    .await
    .expect("start the Cyrus master");
    let slave_dir = tempfile::tempdir().unwrap();
    let slave = tokio::task::spawn_blocking({
        let path = slave_dir.path().to_owned();
        let addr = cyrus_master.addr;
        move || our_slave(&path, addr)
    })
    .await
    .expect("start our slave");
    let log = slave.stderr.lock().map(|l| l.clone()).unwrap_or_default();
    assert_contains(
        &log,
        "successful mupdate connection to the master (SCRAM-SHA-256)",
    );
}

/// A Cyrus 3.6.1 mupdate slave of `master`, once it has synchronised (it greets only then).
async fn cyrus_slave_of(master: std::net::SocketAddr) -> Cyrus {
    let master = master.to_string();
    tokio::task::spawn_blocking(move || {
        Cyrus::start(
            Service::MupdateSlave {
                master: &master,
                retry_delay: 2,
            },
            "mupdate-slave",
            "",
        )
    })
    .await
    .expect("the Cyrus slave starts and synchronises")
}
