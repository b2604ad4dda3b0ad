//! Issue 13: Cyrus processes sharing the mailboxes.db our slave writes. Real Cyrus 3.6.1
//! `cyr_dbtool` lookups run in a loop through a 100,000-entry initial sync (a whole file
//! built aside and renamed in, as a Cyrus repack is) and then through 20,000 live changes
//! (bounded transactions), with a Cyrus repack in the middle of those: no lookup fails, the
//! writer follows the repacked file, and the end state is exactly the store.
//! And kill -9 at random points of write transactions and of whole-file rewrites (a copy
//! half built): Cyrus recovers and accepts the file every time, no copy is left behind,
//! and after a restart the file equals the store.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const CYR_DBTOOL: &str = "/usr/lib/cyrus/bin/cyr_dbtool";
const MAILBOXES: usize = 100_000;
/// Mailboxes created on the master once the slave's file holds the first ones.
const LIVE: usize = 20_000;
/// The last of them.
const LIVE_LAST: usize = MAILBOXES + LIVE - 1;
/// Kills of the writer in the crash test.
const ROUNDS: usize = 30;
/// Mailboxes the crash test's store starts with.
const SEEDED: usize = 30_000;

fn cyr_dbtool(conf: &Path, db: &Path, args: &[&[u8]]) -> Output {
    let mut command = Command::new("runuser");
    command
        .args(["-u", "cyrus", "--", CYR_DBTOOL, "-C"])
        .arg(conf)
        .arg(db)
        .arg("twoskip");
    for arg in args {
        command.arg(OsStr::from_bytes(arg));
    }
    command.output().expect("run cyr_dbtool")
}

fn chown_cyrus(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "cyrus"])
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success());
}

/// An imapd.conf for Cyrus's tools, with a configdirectory of their own inside `dir`.
fn cyrus_tools_conf(dir: &Path) -> PathBuf {
    let cyrus_conf = dir.join("cyrus.conf.d");
    std::fs::create_dir_all(cyrus_conf.join("p")).expect("mkdir");
    let conf = cyrus_conf.join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {0}\npartition-default: {0}/p\n",
            cyrus_conf.display()
        ),
    )
    .expect("imapd.conf");
    conf
}

fn name(i: usize) -> String {
    format!("user.m{i:06}")
}

/// The key Cyrus looks `user.mNNNNNN` up by.
fn key(i: usize) -> Vec<u8> {
    format!("Nuser\x1fm{i:06}").into_bytes()
}

/// Records of the file, read through Cyrus's own `show` on a copy that Cyrus finds consistent.
fn cyrus_records(conf: &Path, db: &Path, scratch: &Path) -> usize {
    let records = shown(conf, db, scratch).len();
    let consistent = cyr_dbtool(conf, &scratch.join("show-copy.db"), &[b"consistent"]);
    assert_eq!(
        String::from_utf8_lossy(&consistent.stdout).trim(),
        "Yes, consistent"
    );
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cyrus_lookups_through_a_100k_sync_and_a_cyrus_repack() {
    if !cyrus_available("cyrus_lookups_through_a_100k_sync", CYR_DBTOOL) {
        return;
    }
    let master = TestServer::start("").await;
    activate_range(&master, 0..MAILBOXES, 5_000).await;

    // The slave's directory belongs to cyrus, as a frontend's configdirectory does.
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = cyrus_tools_conf(dir.path());
    let db: PathBuf = dir.path().join("mailboxes.db");
    std::fs::write(&db, b"").expect("an empty mailboxes.db, as Cyrus leaves it");
    let slave_conf = write_process_config(
        dir.path(),
        &format!(
            "mupdate_server: {}\nmupdate_authname: mupdate\nmupdate_password: mupdatepass\n\
             mupdate_retry_delay: 1\nmupdate_mailboxes_db: on\nmboxlist_db_path: {}\n",
            master.addr,
            db.display()
        ),
    );
    chown_cyrus(dir.path());
    let status = Command::new("chmod")
        .arg("755")
        .arg(dir.path())
        .status()
        .expect("chmod");
    assert!(status.success());

    // Lookups of one early and one late mailbox, in a loop, from the slave's start on.
    let done = Arc::new(AtomicBool::new(false));
    let lookups = {
        let (conf, db, done) = (conf.clone(), db.clone(), done.clone());
        std::thread::spawn(move || {
            let mut count = 0usize;
            let mut failures = Vec::new();
            let mut found_last = false;
            while !done.load(Ordering::Acquire) || !found_last {
                for i in [7, MAILBOXES - 1, LIVE_LAST] {
                    let out = cyr_dbtool(&conf, &db, &[b"get", &key(i)]);
                    count += 1;
                    if !out.status.success() || !out.stderr.is_empty() {
                        failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                    }
                    if i == LIVE_LAST && !out.stdout.is_empty() {
                        found_last = true;
                    }
                }
                if failures.len() > 5 {
                    break;
                }
            }
            (count, failures)
        })
    };
    let slave = ServerProcess::spawn(
        &["-C".into(), slave_conf.display().to_string()],
        &[("RUST_LOG".into(), "info".into())],
    );

    // The first sync lands whole; then live changes, and a Cyrus repack amid them.
    wait_for_records(&db, MAILBOXES as u64, &slave);
    let live = tokio::spawn(async move {
        activate_range(&master, MAILBOXES..=LIVE_LAST, 500).await;
        master
    });
    wait_for_records(&db, (MAILBOXES + LIVE / 4) as u64, &slave);
    let repack = cyr_dbtool(&conf, &db, &[b"repack"]);
    assert!(
        repack.status.success(),
        "{}",
        String::from_utf8_lossy(&repack.stderr)
    );
    let _master = live.await.expect("live changes");
    wait_for_records(&db, (MAILBOXES + LIVE) as u64, &slave);

    slave.log_once_it_holds("mailboxes.db reconciled");
    done.store(true, Ordering::Release);
    let (count, failures) = lookups.join().expect("lookups");
    assert!(failures.is_empty(), "{count} lookups, failed: {failures:?}");
    assert!(count >= 2, "{count} lookups");

    assert_eq!(cyrus_records(&conf, &db, dir.path()), MAILBOXES + LIVE);
    let (status, metrics) = http_get(&sidecar_of(&slave), "/metrics");
    assert_eq!(status, 200);
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
            .trim()
            .parse()
            .expect("a number")
    };
    // The sync as one file renamed in (the lock held only for the rename), the live
    // changes in transactions of at most 512 records each.
    assert_eq!(metric("mupdate_mailboxes_db_rewrites_total"), 1.0);
    let holds = metric("mupdate_mailboxes_db_lock_held_seconds_count");
    assert!(
        holds >= (LIVE / 512) as f64,
        "{LIVE} live changes written in {holds} lock holds"
    );
    // Ready once the file is current.
    let sidecar = sidecar_of(&slave);
    eventually(Duration::from_millis(100), || {
        let (status, body) = http_get(&sidecar, "/readyz");
        (status != 200).then(|| format!("{body}{}", slave.stderr.lock().unwrap()))
    });
}

/// ACTIVATEs `user.mNNNNNN` for every N of `range` on `master`, `per_commit` at a time.
async fn activate_range(
    master: &TestServer,
    range: impl Iterator<Item = usize>,
    per_commit: usize,
) {
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(per_commit) {
        let mutations = chunk
            .iter()
            .map(|&i| {
                activation(
                    name(i),
                    &format!("be{}!default", i % 3),
                    "admin\tlrswipkxtecda\t",
                )
            })
            .collect();
        master.ctx.store.apply_many(mutations).await.expect("load");
    }
}

/// Waits until the file's header counts at least `records`.
fn wait_for_records(db: &Path, records: u64, slave: &ServerProcess) {
    eventually(Duration::from_millis(20), || {
        let held = std::fs::read(db)
            .ok()
            .and_then(|b| {
                b.get(32..40)
                    .map(|n| u64::from_be_bytes(n.try_into().unwrap()))
            })
            .unwrap_or(0);
        (held < records).then(|| {
            format!(
                "the file holds {held} records, not {records}: {}",
                slave.stderr.lock().unwrap()
            )
        })
    });
}

/// Calls `pending` every `every` until it has no complaint; fails with its last one after
/// two minutes.
fn eventually(every: Duration, mut pending: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Some(complaint) = pending() {
        assert!(Instant::now() < deadline, "{complaint}");
        std::thread::sleep(every);
    }
}

/// Writes ACTIVATEs and DELETEs of `user.kN` to `addr` as fast as answers come, until the
/// connection dies (the server is killed under it).
fn write_until_killed(addr: std::net::SocketAddr, round: usize) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 65536];
    let _ = stream.write_all(AUTH);
    for batch in 0.. {
        let mut wire = Vec::new();
        for j in 0..100 {
            let i = (round * 7919 + batch * 100 + j) % 3000;
            if (i + batch).is_multiple_of(5) {
                wire.extend_from_slice(format!("D{j} DELETE \"user.k{i}\"\r\n").as_bytes());
            } else {
                wire.extend_from_slice(
                    format!(
                        "A{j} ACTIVATE \"user.k{i}\" \"be{}!default\" \"k{i}\tlrs\t\"\r\n",
                        batch % 3
                    )
                    .as_bytes(),
                );
            }
        }
        if stream.write_all(&wire).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// `key TAB value` lines of Cyrus's `show`, as (key, value) pairs.
fn shown(conf: &Path, db: &Path, scratch: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let copy = scratch.join("show-copy.db");
    std::fs::copy(db, &copy).expect("copy");
    chown_cyrus(&copy);
    let shown = cyr_dbtool(conf, &copy, &[b"show"]);
    assert!(shown.status.success());
    shown
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let tab = line
                .iter()
                .position(|&b| b == b'\t')
                .expect("key TAB value");
            (line[..tab].to_vec(), line[tab + 1..].to_vec())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_and_resyncs_leaves_a_file_cyrus_recovers() {
    if !cyrus_available("kill_9_during_writes_and_resyncs", CYR_DBTOOL) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = cyrus_tools_conf(dir.path());
    let db = dir.path().join("mailboxes.db");
    let master_conf = write_process_config(
        dir.path(),
        &format!(
            "mupdate_mailboxes_db: on\nmboxlist_db_path: {}\n",
            db.display()
        ),
    );
    // Enough mailboxes that a restart's rewrite of an emptied file takes a while, so that
    // some kills land while the new copy is being built.
    {
        let store = mupdate::store::Store::open(
            &dir.path().join("mailboxes.redb"),
            mupdate::store::StoreOptions::default(),
        )
        .expect("seed the store");
        let seed = (0..SEEDED)
            .map(|i| activation(format!("user.s{i:06}"), "be9!default", "admin\tlrs\t"))
            .collect();
        store.apply_many(seed).await.expect("seed");
    }
    chown_cyrus(dir.path());
    let args = [
        "-C".to_owned(),
        master_conf.display().to_string(),
        "-m".to_owned(),
    ];
    let env = [("RUST_LOG".to_owned(), "info".to_owned())];
    let mut left_mid_write = 0;
    // A whole new file being built aside (a reconciliation of many changes) when killed.
    let aside = dir.path().join(".mailboxes.db.mupdate-repack");
    let mut left_building = 0;
    for round in 0..ROUNDS {
        // Every third round starts from an emptied file, so the restart's reconciliation
        // rewrites everything and the kill may land in the middle of it.
        if round % 3 == 2 {
            std::fs::write(&db, b"").expect("empty the file");
        }
        let server = ServerProcess::start_with(&args, &env);
        let addr = server.addr;
        let writer = std::thread::spawn(move || write_until_killed(addr, round));
        if round % 3 == 2 {
            // Into the rewrite of the emptied file, when it can be caught being built.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !aside.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(Duration::from_millis((round % 7) as u64));
        } else {
            // Into the transactions of the writes, once the start's reconciliation is done.
            server.log_once_it_holds("mailboxes.db reconciled");
            let pause = 5 + (round * 37) % 200;
            std::thread::sleep(Duration::from_millis(pause as u64));
        }
        let mut server = server;
        server.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
        writer.join().expect("writer");
        // Cyrus opens the file (recovering it if it was left mid-write) and checks it.
        let copy = dir.path().join("check-copy.db");
        std::fs::copy(&db, &copy).expect("copy");
        let bytes = std::fs::read(&copy).expect("read");
        let mid_write = bytes.len() >= 64
            && (bytes[59] & 1 == 1
                || u64::from_be_bytes(bytes[48..56].try_into().unwrap()) != bytes.len() as u64);
        left_mid_write += usize::from(mid_write);
        left_building += usize::from(aside.exists());
        chown_cyrus(&copy);
        let check = cyr_dbtool(&conf, &copy, &[b"consistent"]);
        assert_eq!(
            String::from_utf8_lossy(&check.stdout).trim(),
            "Yes, consistent",
            "round {round}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    eprintln!(
        "{left_mid_write} of {ROUNDS} kills left mailboxes.db mid-write, \
         {left_building} a new copy half built beside it"
    );
    // After a restart the file equals the store.
    let mut server = ServerProcess::start_with(&args, &env);
    server.log_once_it_holds_within("mailboxes.db reconciled", Duration::from_secs(60));
    let mut client = logged_in(server.addr).await;
    let listed = parse_records(&list(&mut client).await);
    // The kick socket answers once the file holds everything committed.
    let kick = dir.path().join("socket").join("mupdate.target");
    let mut kicked = tokio::net::UnixStream::connect(&kick).await.expect("kick");
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut kicked, &mut answer)
        .await
        .expect("kick answer");
    assert_eq!(answer, b"ok");
    let want: Vec<(Vec<u8>, String)> = listed
        .iter()
        .map(|r| {
            let (server, partition) = r.location.split_once('!').expect("server!partition");
            (
                format!("N{}", r.name.replace('.', "\x1f")).into_bytes(),
                format!(" P {partition} S {server} "),
            )
        })
        .collect();
    let have = shown(&conf, &db, dir.path());
    assert_eq!(have.len(), want.len(), "records in the file vs the store");
    let mut want = want;
    want.sort();
    for ((key, value), (want_key, location)) in have.iter().zip(&want) {
        assert_eq!(key, want_key);
        let value = String::from_utf8_lossy(value);
        assert!(
            value.contains(location.as_str()),
            "{value} lacks {location}"
        );
    }
    assert!(!listed.is_empty(), "the writers wrote nothing");
    assert!(!aside.exists(), "a half-built copy was left behind");
    server.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
}
