//! Store tests: the state machine of spec §6, the change feed and persistence.

use std::future::Future;

use super::*;
use crate::mailbox::MailboxWrite;

fn open(dir: &tempfile::TempDir, policy: ConflictPolicy) -> Store {
    open_with(
        dir,
        StoreOptions {
            policy,
            ..StoreOptions::default()
        },
    )
}

fn open_with(dir: &tempfile::TempDir, options: StoreOptions) -> Store {
    Store::open(&dir.path().join("mailboxes.redb"), options).expect("open store")
}

/// Applies an activation of `name` as a replica does, checkpointed at `seq` of `epoch`.
async fn replicate(store: &Store, name: &str, epoch: u64, seq: u64) {
    let checkpoint = Checkpoint { epoch, seq };
    store
        .apply_replicated(
            vec![activate(name, "be1!p", "")],
            Some(checkpoint),
            Keeping::DURABLE,
        )
        .await
        .unwrap();
}

fn activate(name: &str, location: &str, acl: &str) -> Mutation {
    Mutation::Write(MailboxWrite::Activate {
        name: name.into(),
        location: location.into(),
        acl: acl.into(),
    })
}

fn reserve(name: &str, location: &str) -> Mutation {
    Mutation::Write(MailboxWrite::Reserve {
        name: name.into(),
        location: location.into(),
    })
}

fn deactivate(name: &str, location: &str) -> Mutation {
    Mutation::Write(MailboxWrite::Deactivate {
        name: name.into(),
        location: location.into(),
    })
}

fn delete(name: &str) -> Mutation {
    Mutation::Write(MailboxWrite::Delete { name: name.into() })
}

#[tokio::test]
async fn state_machine_standard() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, ConflictPolicy::Standard);
    assert_eq!(
        store.apply(deactivate("m", "a!b")).await.unwrap(),
        Outcome::DoesNotExist
    );
    assert_eq!(
        store.apply(delete("m")).await.unwrap(),
        Outcome::DoesNotExist
    );
    assert_eq!(
        store.apply(reserve("m", "be1!p")).await.unwrap(),
        Outcome::Done
    );
    assert_eq!(
        store.apply(reserve("m", "be2!p")).await.unwrap(),
        Outcome::AlreadyExists
    );
    assert_eq!(
        store.apply(deactivate("m", "be1!p")).await.unwrap(),
        Outcome::NotActive
    );
    assert_eq!(
        store.apply(activate("m", "be1!p", "a\tl")).await.unwrap(),
        Outcome::Done
    );
    let found = store.find(b"m").unwrap().unwrap();
    assert_eq!(found.state, MailboxState::Active);
    assert_eq!(found.acl, b"a\tl\t");
    // RESERVE by the same location downgrades an active mailbox.
    assert_eq!(
        store.apply(reserve("m", "be1!p")).await.unwrap(),
        Outcome::Done
    );
    let found = store.find(b"m").unwrap().unwrap();
    assert_eq!((found.state, found.acl.len()), (MailboxState::Reserved, 0));
    assert_eq!(
        store.apply(activate("m", "be1!p", "a\tl\t")).await.unwrap(),
        Outcome::Done
    );
    assert_eq!(
        store.apply(deactivate("m", "be9!x")).await.unwrap(),
        Outcome::Done
    );
    let found = store.find(b"m").unwrap().unwrap();
    assert_eq!(
        (found.state, found.location.as_slice()),
        (MailboxState::Reserved, &b"be9!x"[..])
    );
    assert_eq!(store.apply(delete("m")).await.unwrap(), Outcome::Done);
    assert_eq!(store.find(b"m").unwrap(), None);
    assert_eq!(store.last_seq(), 6);
}

#[tokio::test]
async fn state_machine_replicated() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, ConflictPolicy::Replicated);
    let mut feed = store.subscribe();
    assert_eq!(store.apply(delete("nosuch")).await.unwrap(), Outcome::Done);
    let change = feed.recv().await.unwrap();
    assert_eq!((change.seq, change.record.clone()), (1, None));
    assert_eq!(
        store.apply(activate("m2", "h1!p", "a\tl\t")).await.unwrap(),
        Outcome::Done
    );
    assert_eq!(
        store.apply(reserve("m2", "h2!q")).await.unwrap(),
        Outcome::Done
    );
    assert_eq!(store.find(b"m2").unwrap().unwrap().location, b"h2!q");
}

#[tokio::test]
async fn changes_carry_filter_servers_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir, ConflictPolicy::Standard);
        let mut feed = store.subscribe();
        store.apply(activate("user.a", "be9!x", "")).await.unwrap();
        store.apply(activate("user.a", "be3!p", "")).await.unwrap();
        feed.recv().await.unwrap();
        let moved = feed.recv().await.unwrap();
        assert!(moved.concerns_any(&[b"be9".to_vec()]));
        assert!(moved.concerns_any(&[b"be3".to_vec()]));
        assert!(!moved.concerns_any(&[b"be1".to_vec()]));
        store.apply(activate("user.b", "be1!p", "")).await.unwrap();
    }
    // The database closes when its last handle goes.
    let store = reopen(&dir);
    assert_eq!(store.last_seq(), 3);
    let snapshot = store.snapshot().unwrap();
    assert_eq!(snapshot.seq(), 3);
    let mut names = Vec::new();
    snapshot
        .walk(|r| {
            names.push(String::from_utf8_lossy(r.name).into_owned());
            true
        })
        .unwrap();
    assert_eq!(names, ["user.a", "user.b"]);
}

#[tokio::test]
async fn concurrent_writers_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, ConflictPolicy::Standard);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .apply(activate(&format!("user.u{i}"), "be1!p", "u\tl\t"))
                .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), Outcome::Done);
    }
    let (commits, writes, _) = store.commit_stats().snapshot();
    assert_eq!(writes, 64);
    assert!(commits < 64, "the queued writes should share commits");
    assert_eq!(store.snapshot().unwrap().count_by_state().unwrap(), (64, 0));
}

#[tokio::test]
async fn a_cancelled_leader_still_commits_for_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, ConflictPolicy::Standard);
    let mut leader = Box::pin(store.apply(activate("first", "be1!p", "")));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // The first caller becomes the leader and yields, waiting for company.
    assert!(leader.as_mut().poll(&mut cx).is_pending());
    let follower = tokio::spawn({
        let store = store.clone();
        async move { store.apply(activate("second", "be1!p", "")).await }
    });
    tokio::task::yield_now().await;
    // Its caller gives up: the queued writes must still be committed and answered.
    drop(leader);
    assert_eq!(follower.await.unwrap().unwrap(), Outcome::Done);
    assert!(store.find(b"first").unwrap().is_some());
    assert!(store.find(b"second").unwrap().is_some());
}

#[tokio::test]
async fn change_log_stays_bounded_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("mailboxes.redb"),
        StoreOptions {
            changelog_max: 10,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let writes = 1_100;
    let tasks: Vec<_> = (0..writes)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.apply(activate(&format!("m{i}"), "h!p", "")).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let (first, last) = store.changelog_range().unwrap().unwrap();
    assert_eq!(last, writes);
    assert!(last - first < 10 + 1024, "log holds {first}..={last}");
    assert_eq!(store.snapshot().unwrap().seq(), writes);
}

#[tokio::test]
async fn change_log_forgets_changes_older_than_its_age_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("mailboxes.redb"),
        StoreOptions {
            changelog_max_age: Some(std::time::Duration::from_secs(1)),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    for i in 0..5 {
        store
            .apply(activate(&format!("old{i}"), "h!p", ""))
            .await
            .unwrap();
    }
    assert_eq!(store.changelog_range().unwrap(), Some((1, 5)));
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    store.apply(activate("new", "h!p", "")).await.unwrap();
    assert_eq!(store.changelog_range().unwrap(), Some((6, 6)));
}

#[tokio::test]
async fn a_replica_of_the_same_master_finds_where_to_resume_in_this_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, ConflictPolicy::Replicated);
    // Three batches of a master whose epoch is 7, checkpointed at its seqs 10, 20 and 30.
    for (n, upstream) in [(1, 10), (2, 20), (3, 30)] {
        replicate(&store, &format!("m{n}"), 7, upstream).await;
    }
    let snapshot = store.snapshot().unwrap();
    let asked = [(7, 20), (7, 25), (7, 30), (7, 31), (7, 5), (8, 20)];
    let found = asked.map(|(epoch, seq)| snapshot.local_position(epoch, seq).unwrap());
    // Between checkpoints, the earlier one; ahead of this store, before its first
    // checkpoint, or in another history: nowhere.
    assert_eq!(found, [Some(2), Some(2), Some(3), None, None, None]);
    let replayed = snapshot.changes_after(2).unwrap().unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].name, b"m3");
}

#[tokio::test]
async fn checkpoints_older_than_the_change_log_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        policy: ConflictPolicy::Replicated,
        changelog_max: 4,
        ..StoreOptions::default()
    };
    let store = open_with(&dir, options);
    let batches = 4 + 1024 + 2;
    for n in 1..=batches {
        replicate(&store, &format!("m{n}"), 7, n).await;
    }
    let snapshot = store.snapshot().unwrap();
    // The first checkpoints' deltas are gone from the log, and so are they.
    assert_eq!(snapshot.local_position(7, 1).unwrap(), None);
    let newest = snapshot.local_position(7, batches).unwrap();
    assert_eq!(newest, Some(batches));
    assert!(snapshot.changes_after(batches - 1).unwrap().is_some());
}

/// Every record, and every change the log holds: what a replay must bring back exactly.
fn contents(store: &Store) -> (Vec<MailboxRecord>, Vec<(u64, Vec<u8>)>) {
    let snapshot = store.snapshot().unwrap();
    let mut records = Vec::new();
    snapshot
        .walk(|r| {
            records.push(MailboxRecord {
                name: r.name.to_vec(),
                state: r.state,
                location: r.location.to_vec(),
                acl: r.acl.to_vec(),
            });
            true
        })
        .unwrap();
    let changes = snapshot.changes_after(0).unwrap().unwrap_or_default();
    let changes = changes.into_iter().map(|c| (c.seq, c.name)).collect();
    (records, changes)
}

#[tokio::test]
async fn commits_in_the_write_ahead_log_are_replayed_after_a_crash() {
    let (dir, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let db = dir.path().join("mailboxes.redb");
    let store = open(&dir, ConflictPolicy::Standard);
    // A crash leaves redb's file as its last synced commit (the one that opened it) and
    // the write-ahead log as written.
    std::fs::copy(&db, crashed.path().join("mailboxes.redb")).unwrap();
    store
        .apply(activate("user.a", "be1!p", "a\tlrs\t"))
        .await
        .unwrap();
    store.apply(reserve("user.b", "be2!p")).await.unwrap();
    replicate(&store, "user.c", 7, 10).await;
    store.apply(delete("user.a")).await.unwrap();
    // Same record again: still a change, which a replay must not skip.
    store.apply(activate("user.c", "be1!p", "")).await.unwrap();
    let wal = wal::wal_path(&db);
    std::fs::copy(&wal, wal::wal_path(&crashed.path().join("mailboxes.redb"))).unwrap();
    let expected = contents(&store);
    assert_eq!(store.last_seq(), 5);
    drop(store);

    let recovered = open(&crashed, ConflictPolicy::Standard);
    assert_eq!(contents(&recovered), expected);
    assert_eq!(recovered.last_seq(), 5);
    assert_eq!(recovered.upstream_position().unwrap(), Some((7, 10)));
    assert_eq!(
        recovered.snapshot().unwrap().local_position(7, 10).unwrap(),
        Some(3)
    );
    // It goes on from there, and a second open replays nothing twice.
    recovered
        .apply(activate("user.d", "be1!p", ""))
        .await
        .unwrap();
    assert_eq!(recovered.last_seq(), 6);
    let expected = contents(&recovered);
    drop(recovered);
    let reopened = reopen(&crashed);
    assert_eq!(contents(&reopened), expected);
    assert_eq!(reopened.last_seq(), 6);
}

#[tokio::test]
async fn a_full_write_ahead_log_starts_over_once_redb_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        wal_bytes: 4096,
        ..StoreOptions::default()
    };
    let store = open_with(&dir, options.clone());
    // Some 80 bytes a frame: the log starts over several times.
    for n in 0..200 {
        store
            .apply(activate(&format!("user.u{n}"), "be1!p", ""))
            .await
            .unwrap();
    }
    let expected = contents(&store);
    drop(store);
    let reopened = reopen(&dir);
    assert_eq!(contents(&reopened), expected);
    assert_eq!(reopened.last_seq(), 200);
}

/// Opens the store in `dir` again once its last handle has let it go.
fn reopen(dir: &tempfile::TempDir) -> Store {
    for _ in 0..100 {
        match Store::open(&dir.path().join("mailboxes.redb"), StoreOptions::default()) {
            Ok(store) => return store,
            Err(StoreError::InUse) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(other) => panic!("reopen: {other}"),
        }
    }
    panic!("the database was never released");
}

#[tokio::test]
async fn a_write_ahead_log_beside_another_database_is_not_replayed_into_it() {
    let (dir, fresh) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = open(&dir, ConflictPolicy::Standard);
    store.apply(activate("user.a", "be1!p", "")).await.unwrap();
    let db = dir.path().join("mailboxes.redb");
    let beside = fresh.path().join("mailboxes.redb");
    std::fs::copy(wal::wal_path(&db), wal::wal_path(&beside)).unwrap();
    // The database was deleted and is made anew: same lsns, another log.
    let made_anew = open(&fresh, ConflictPolicy::Standard);
    assert_eq!(made_anew.last_seq(), 0);
    assert_eq!(contents(&made_anew), (Vec::new(), Vec::new()));
}

#[tokio::test]
async fn a_store_publishing_before_its_syncs_never_reuses_a_number_it_published() {
    let (dir, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let db = dir.path().join("mailboxes.redb");
    let early = StoreOptions {
        stream_before_sync: true,
        ..StoreOptions::default()
    };
    let store = open_with(&dir, early.clone());
    // A crash image from before the writes: as if a crash lost every one of them after
    // they were published.
    std::fs::copy(&db, crashed.path().join("mailboxes.redb")).unwrap();
    let mut feed = store.subscribe();
    store.apply(activate("user.a", "be1!p", "")).await.unwrap();
    store.apply(activate("user.b", "be1!p", "")).await.unwrap();
    let published: Vec<u64> = [feed.recv().await.unwrap(), feed.recv().await.unwrap()]
        .iter()
        .map(|change| change.seq)
        .collect();
    assert_eq!(published, [SEQ_GAP + 1, SEQ_GAP + 2]);
    // Published and synced: what a crash after the syncs keeps.
    let wal = wal::wal_path(&db);
    let kept = tempfile::tempdir().unwrap();
    std::fs::copy(&db, kept.path().join("mailboxes.redb")).unwrap();
    std::fs::copy(&wal, wal::wal_path(&kept.path().join("mailboxes.redb"))).unwrap();
    let expected = contents(&store);
    drop(store);
    let replayed = open_with(&kept, early.clone());
    assert_eq!(contents(&replayed), expected);

    let lost = open_with(&crashed, early.clone());
    assert_eq!(contents(&lost), (Vec::new(), Vec::new()));
    let snapshot = lost.snapshot().unwrap();
    for seq in published {
        assert_eq!(snapshot.skipped_after(seq).unwrap(), Some(0), "{seq}");
    }
    // The first run skipped before the crash is part of this one.
    assert_eq!(snapshot.skipped_after(2 * SEQ_GAP).unwrap(), Some(0));
    assert_eq!(snapshot.skipped_after(2 * SEQ_GAP + 1).unwrap(), None);
    drop(snapshot);
    lost.apply(activate("user.c", "be1!p", "")).await.unwrap();
    assert_eq!(lost.last_seq(), 2 * SEQ_GAP + 1);
    let snapshot = lost.snapshot().unwrap();
    assert_eq!(snapshot.skipped_after(2 * SEQ_GAP + 1).unwrap(), None);
    drop((snapshot, lost));

    // Opened without the option, it still skips: its last run may have published early.
    let reopened = reopen(&crashed);
    let snapshot = reopened.snapshot().unwrap();
    assert_eq!(
        snapshot.skipped_after(2 * SEQ_GAP + 2).unwrap(),
        Some(2 * SEQ_GAP + 1)
    );
    assert_eq!(snapshot.skipped_after(SEQ_GAP).unwrap(), Some(0));
    drop(snapshot);
    reopened
        .apply(activate("user.d", "be1!p", ""))
        .await
        .unwrap();
    assert_eq!(reopened.last_seq(), 3 * SEQ_GAP + 2);
}

#[tokio::test]
async fn a_store_that_never_published_early_skips_no_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, ConflictPolicy::Standard);
    store.apply(activate("user.a", "be1!p", "")).await.unwrap();
    drop(store);
    let reopened = reopen(&dir);
    reopened
        .apply(activate("user.b", "be1!p", ""))
        .await
        .unwrap();
    assert_eq!(reopened.last_seq(), 2);
    assert_eq!(reopened.snapshot().unwrap().skipped_after(2).unwrap(), None);
}

/// A record as a master sends it to its replicas (`None`: removed).
fn sent(name: &str, record: Option<(MailboxState, &str, &str)>) -> Mutation {
    Mutation::Replicate {
        name: name.into(),
        record: record.map(|(state, location, acl)| ReplicaRecord {
            state,
            location: location.into(),
            acl: acl.into(),
        }),
    }
}

#[tokio::test]
async fn a_replicas_batches_logged_before_they_are_applied_replay_alike() {
    let (dir, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let db = dir.path().join("mailboxes.redb");
    let store = open(&dir, ConflictPolicy::Replicated);
    std::fs::copy(&db, crashed.path().join("mailboxes.redb")).unwrap();
    let active = Some((MailboxState::Active, "be1!p", "a\tlrs\t"));
    let batches = [
        (
            vec![
                sent("user.a", active),
                sent("user.b", Some((MailboxState::Reserved, "be2!p", ""))),
            ],
            2,
        ),
        // A record already so, and the removal of one never held, change nothing (and take
        // no number, live or replayed); a reserved record's ACL is not kept.
        (
            vec![
                sent("user.a", active),
                sent("user.never", None),
                sent("user.b", Some((MailboxState::Reserved, "be3!p", "x\tl\t"))),
            ],
            5,
        ),
        (vec![sent("user.a", None)], 6),
        // A checkpoint alone.
        (vec![], 9),
    ];
    for (mutations, seq) in batches {
        let checkpoint = Some(Checkpoint { epoch: 7, seq });
        store
            .apply_replicated(mutations, checkpoint, Keeping::DURABLE)
            .await
            .unwrap();
    }
    assert_eq!(store.last_seq(), 4);
    assert_eq!(store.find(b"user.b").unwrap().unwrap().acl, b"");
    std::fs::copy(
        wal::wal_path(&db),
        wal::wal_path(&crashed.path().join("mailboxes.redb")),
    )
    .unwrap();
    let expected = contents(&store);
    drop(store);

    let recovered = open(&crashed, ConflictPolicy::Replicated);
    assert_eq!(contents(&recovered), expected);
    assert_eq!(recovered.last_seq(), 4);
    assert_eq!(recovered.upstream_position().unwrap(), Some((7, 9)));
    let snapshot = recovered.snapshot().unwrap();
    assert_eq!(snapshot.local_position(7, 5).unwrap(), Some(3));
    assert_eq!(snapshot.local_position(7, 9).unwrap(), Some(4));
}

#[tokio::test]
async fn a_replica_commits_on_its_own_thread_and_is_told_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, ConflictPolicy::Replicated);
    let record = Some((MailboxState::Active, "be1!p", ""));
    let checkpoint = Some(Checkpoint { epoch: 3, seq: 1 });
    let mut told = 0;
    let outcomes = store
        .apply_replicated_here(
            vec![sent("user.a", record)],
            checkpoint,
            Keeping::DURABLE,
            &mut || told += 1,
        )
        .map_err(|_| "a commit was under way")
        .unwrap()
        .unwrap();
    assert_eq!((outcomes, told), (vec![Outcome::Done], 1));
    assert_eq!(store.find(b"user.a").unwrap().unwrap().location, b"be1!p");
    assert_eq!(store.upstream_position().unwrap(), Some((3, 1)));

    // With a commit under way the batch comes back untouched, for the caller to queue.
    store.queue.lock().leader = true;
    let batch = vec![sent("user.b", record)];
    let returned = store.apply_replicated_here(batch.clone(), None, Keeping::DURABLE, &mut || {
        told += 1;
    });
    assert_eq!(returned.map(|_| ()), Err(batch));
    assert_eq!(told, 1);
    assert_eq!(store.find(b"user.b").unwrap(), None);
    store.queue.lock().leader = false;
}
