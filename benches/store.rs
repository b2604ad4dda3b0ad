//! Store micro-benchmark: sequential durable ACTIVATEs through `Store::apply` (no network),
//! FIND lookups, and a new replica taking in a 100,000-record list (`slave::Resync`),
//! to separate storage cost from protocol and scheduling cost.
//! Run with `cargo bench --bench store` (`STORE_BENCH=resync` runs only the replica part).

use std::time::Instant;

use mupdate::mailbox::MailboxWrite;
use mupdate::replication::slave::{OnEmpty, Resync};
use mupdate::store::{MailboxState, Mutation, ReplicaRecord, Store, StoreOptions};

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("bench.redb"), StoreOptions::default()).expect("open");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var("STORE_BENCH").as_deref() != Ok("resync") {
        writes_and_lookups(&runtime, &store);
    }
    resyncs(&runtime, dir.path());
}

fn writes_and_lookups(runtime: &tokio::runtime::Runtime, store: &Store) {
    let n = 5_000;
    let started = Instant::now();
    runtime.block_on(async {
        for i in 0..n {
            store
                .apply(Mutation::Write(MailboxWrite::Activate {
                    name: format!("user.b{i:09}").into_bytes(),
                    location: b"backend1!default".to_vec(),
                    acl: b"owner\tlrswipkxtecda\t".to_vec(),
                }))
                .await
                .expect("apply");
        }
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sequential durable ACTIVATE: {:.0}/s ({:.1} us each)",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
    let started = Instant::now();
    let lookups = 200_000;
    for i in 0..lookups {
        let name = format!("user.b{:09}", (i * 7919) % n);
        assert!(store.find(name.as_bytes()).expect("find").is_some());
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "FIND lookups: {:.0}/s ({:.2} us each)",
        lookups as f64 / secs,
        secs * 1e6 / lookups as f64
    );
}

fn resyncs(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) {
    for (unseen, what) in [
        (false, "every chunk synced"),
        (true, "unseen, as a slave's first sync"),
    ] {
        let path = dir.join(format!("replica-{unseen}.redb"));
        let replica = Store::open(&path, StoreOptions::default()).expect("open the replica");
        let dump: Vec<Mutation> = (0..100_000)
            .map(|i| Mutation::Replicate {
                name: format!("user.r{i:09}").into_bytes(),
                record: Some(ReplicaRecord {
                    state: MailboxState::Active,
                    location: b"backend1!default".to_vec(),
                    acl: b"owner\tlrswipkxtecda\t".to_vec(),
                }),
            })
            .collect();
        let records = dump.len();
        let started = Instant::now();
        runtime
            .block_on(async {
                let mut resync = Resync::start(&replica, unseen)?;
                for mutation in dump {
                    resync.push(mutation).await?;
                }
                resync.finish(true, None, OnEmpty::Keep).await
            })
            .expect("resync");
        let secs = started.elapsed().as_secs_f64();
        println!(
            "a new replica takes in a list of {records} ({what}): {:.3} s ({:.1} us each)",
            secs,
            secs * 1e6 / records as f64
        );
    }
}
