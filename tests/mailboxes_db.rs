//! Issue 13: Cyrus processes sharing the mailboxes.db our slave writes. Real Cyrus 3.6.1
//! `cyr_dbtool` lookups run in a loop through a 100,000-entry initial sync, and a Cyrus
//! repack lands in the middle of it: no lookup fails, the writer follows the repacked file,
//! the sync is written in many bounded transactions, and the end state is exactly the store.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use mupdate::store::Mutation;

const CYR_DBTOOL: &str = "/usr/lib/cyrus/bin/cyr_dbtool";
const MAILBOXES: usize = 100_000;

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

fn name(i: usize) -> String {
    format!("user.m{i:06}")
}

/// The key Cyrus looks `user.mNNNNNN` up by.
fn key(i: usize) -> Vec<u8> {
    format!("Nuser\x1fm{i:06}").into_bytes()
}

/// Records of the file, read through Cyrus's own `show` on a copy.
fn cyrus_records(conf: &Path, db: &Path, scratch: &Path) -> usize {
    let copy = scratch.join("show-copy.db");
    std::fs::copy(db, &copy).expect("copy");
    chown_cyrus(&copy);
    let consistent = cyr_dbtool(conf, &copy, &[b"consistent"]);
    assert_eq!(
        String::from_utf8_lossy(&consistent.stdout).trim(),
        "Yes, consistent"
    );
    let shown = cyr_dbtool(conf, &copy, &[b"show"]);
    assert!(shown.status.success());
    shown
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cyrus_lookups_through_a_100k_sync_and_a_cyrus_repack() {
    if !cyrus_available("cyrus_lookups_through_a_100k_sync", CYR_DBTOOL) {
        return;
    }
    let master = TestServer::start("").await;
    for chunk in (0..MAILBOXES).collect::<Vec<_>>().chunks(5_000) {
        let mutations = chunk
            .iter()
            .map(|&i| Mutation::Activate {
                name: name(i).into_bytes(),
                location: format!("be{}!default", i % 3).into_bytes(),
                acl: b"admin\tlrswipkxtecda\t".to_vec(),
            })
            .collect();
        master.ctx.store.apply_many(mutations).await.expect("load");
    }

    // The slave's directory belongs to cyrus, as a frontend's configdirectory does.
    let dir = tempfile::tempdir().expect("tempdir");
    let cyrus_conf = dir.path().join("cyrus.conf.d");
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
                for i in [7, MAILBOXES - 1] {
                    let out = cyr_dbtool(&conf, &db, &[b"get", &key(i)]);
                    count += 1;
                    if !out.status.success() || !out.stderr.is_empty() {
                        failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                    }
                    if i == MAILBOXES - 1 && !out.stdout.is_empty() {
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

    // A Cyrus repack once the file is well under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let records = std::fs::read(&db)
            .ok()
            .and_then(|b| {
                b.get(32..40)
                    .map(|n| u64::from_be_bytes(n.try_into().unwrap()))
            })
            .unwrap_or(0);
        if records >= 20_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sync never got going: {}",
            slave.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let repack = cyr_dbtool(&conf, &db, &[b"repack"]);
    assert!(
        repack.status.success(),
        "{}",
        String::from_utf8_lossy(&repack.stderr)
    );

    slave.log_once_it_holds("listening on");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !slave
        .stderr
        .lock()
        .unwrap()
        .contains("mailboxes.db reconciled")
    {
        assert!(Instant::now() < deadline, "never reconciled");
        std::thread::sleep(Duration::from_millis(50));
    }
    done.store(true, Ordering::Release);
    let (count, failures) = lookups.join().expect("lookups");
    assert!(failures.is_empty(), "{count} lookups, failed: {failures:?}");
    assert!(count >= 2, "{count} lookups");

    assert_eq!(cyrus_records(&conf, &db, dir.path()), MAILBOXES);
    let (status, metrics) = http_get(&sidecar_of(&slave), "/metrics");
    assert_eq!(status, 200);
    let transactions: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mupdate_mailboxes_db_lock_held_seconds_count "))
        .expect("the lock-held histogram")
        .trim()
        .parse()
        .expect("a count");
    assert!(
        transactions >= (MAILBOXES / 512) as f64,
        "the sync was written in {transactions} transactions"
    );
    // Ready once the file is current (the first pass ends with a repack of the grown file).
    let sidecar = sidecar_of(&slave);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http_get(&sidecar, "/readyz");
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{body}{}",
            slave.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
