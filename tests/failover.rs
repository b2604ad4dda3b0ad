//! Issue 16: the election through a real etcd. One of several instances is master, the
//! others follow it; a master that resigns is succeeded at once; a master cut off from etcd
//! closes its write fence before any successor can open one.
#![cfg(feature = "ha")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Writers, check_history};
use common::cyrus::{self, Cyrus, Service};
use common::etcd::{Etcd, Severable};
use common::murder::{Imap, find_record, push_backend_list};
use common::{Client, converge, logged_in};
use mupdate::config::HaSettings;
use mupdate::failover::etcd::{Elector, SyncRecorder};
use mupdate::failover::{Fence, HaRole};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(2);

/// What an instance logs at the end of each resynchronization with its master.
const SYNCED: &str = "mailbox list synchronization complete";

/// What an instance logs when it takes back changes its master never received.
const REWINDING: &str = "rewinding changes the master never received";

fn settings(endpoint: &str, advertise: &str) -> HaSettings {
    HaSettings {
        etcd_endpoints: vec![endpoint.to_owned()],
        cluster: "test".into(),
        advertise: advertise.into(),
        lease_ttl: TTL,
    }
}

/// An elector running until its token is cancelled.
struct Instance {
    role: watch::Receiver<HaRole>,
    fence: Fence,
    /// What records its synchronous replicas while it is master.
    recorder: SyncRecorder,
    stop: CancellationToken,
}

async fn instance(endpoint: &str, advertise: &str) -> Instance {
    let elector = Elector::connect(&settings(endpoint, advertise))
        .await
        .expect("connect to etcd");
    let stop = CancellationToken::new();
    let instance = Instance {
        role: elector.role(),
        fence: elector.fence(),
        recorder: elector.sync_recorder(),
        stop: stop.clone(),
    };
    tokio::spawn(elector.run(stop));
    instance
}

/// Waits (20 s at most) until `instance`'s role satisfies `wanted`.
async fn role_becomes(instance: &mut Instance, wanted: impl Fn(&HaRole) -> bool) -> HaRole {
    let last = instance.role.clone();
    let seen = tokio::time::timeout(
        Duration::from_secs(20),
        instance.role.wait_for(|r| wanted(r)),
    )
    .await
    .unwrap_or_else(|_| panic!("role stayed {:?}", *last.borrow()));
    seen.expect("the elector is running").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_master_the_others_follow_and_a_resignation_hands_over_at_once() {
    let Some(etcd) = Etcd::start() else { return };
    let mut first = instance(&etcd.endpoint, "10.0.0.1:3905").await;
    let led = role_becomes(&mut first, |r| matches!(r, HaRole::Leader { .. })).await;
    assert_eq!(led, HaRole::Leader { term: 1 });
    assert!(first.fence.is_open(), "a master's fence is open");
    let mut second = instance(&etcd.endpoint, "10.0.0.2:3905").await;
    let mut third = instance(&etcd.endpoint, "10.0.0.3:3905").await;
    for follower in [&mut second, &mut third] {
        let followed = role_becomes(follower, |r| matches!(r, HaRole::Follower { .. })).await;
        assert_eq!(
            followed,
            HaRole::Follower {
                term: 1,
                leader: "10.0.0.1:3905".into()
            }
        );
        assert!(!follower.fence.is_open(), "a follower's fence is closed");
    }

    // The master resigns (its lease revoked): a successor well within one lease.
    let resigned = Instant::now();
    first.stop.cancel();
    let successor = tokio::select! {
        role = role_becomes(&mut second, |r| matches!(r, HaRole::Leader { .. })) => role,
        role = role_becomes(&mut third, |r| matches!(r, HaRole::Leader { .. })) => role,
    };
    assert_eq!(successor, HaRole::Leader { term: 2 });
    assert!(
        resigned.elapsed() < TTL,
        "took {:?} after a resignation",
        resigned.elapsed()
    );
    assert!(!first.fence.is_open());
    // The other one follows the successor.
    for other in [&mut second, &mut third] {
        let role = role_becomes(other, |r| r.term() == 2).await;
        assert!(
            matches!(&role, HaRole::Leader { term: 2 })
                || matches!(&role, HaRole::Follower { term: 2, .. }),
            "{role:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_cut_off_from_etcd_closes_its_fence_before_a_successor_opens_one() {
    let Some(etcd) = Etcd::start() else { return };
    let path = Severable::to(&etcd.endpoint).await;
    let mut cut_off = instance(&path.addr.to_string(), "10.0.0.1:3905").await;
    role_becomes(&mut cut_off, |r| matches!(r, HaRole::Leader { term: 1 })).await;
    let mut other = instance(&etcd.endpoint, "10.0.0.2:3905").await;
    role_becomes(&mut other, |r| {
        matches!(r, HaRole::Follower { term: 1, .. })
    })
    .await;

    // Both fences are watched every millisecond from here on: never open together.
    let overlap = Arc::new(AtomicBool::new(false));
    let watching = CancellationToken::new();
    let watcher = {
        let (a, b) = (cut_off.fence.clone(), other.fence.clone());
        let (overlap, watching) = (overlap.clone(), watching.clone());
        tokio::spawn(async move {
            while !watching.is_cancelled() {
                if a.is_open() && b.is_open() {
                    overlap.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let severed = Instant::now();
    path.sever();
    role_becomes(&mut other, |r| matches!(r, HaRole::Leader { term: 2 })).await;
    let took = severed.elapsed();
    assert!(other.fence.is_open());
    assert!(!cut_off.fence.is_open(), "the old master's fence is closed");
    assert!(
        took < TTL * 3,
        "a successor {took:?} after the master was cut off"
    );
    watching.cancel();
    watcher.await.expect("the watcher");
    assert!(
        !overlap.load(Ordering::Relaxed),
        "both fences were open at once"
    );

    // Healed, the old master follows its successor.
    path.heal();
    let rejoined = role_becomes(&mut cut_off, |r| matches!(r, HaRole::Follower { .. })).await;
    assert_eq!(
        rejoined,
        HaRole::Follower {
            term: 2,
            leader: "10.0.0.2:3905".into()
        }
    );
}

/// What befalls the master in a failover test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, then started again.
    Killed,
    /// SIGSTOP past its lease, then SIGCONT.
    Frozen,
    /// Cut off from etcd and the other instances (its own clients still reach it), then
    /// reconnected.
    CutOff,
}

/// Writers on all three instances of an elected cluster; `fault` befalls the master; a
/// recorded synchronous replica is master within seconds; the old master rejoins as a
/// follower; every instance ends with a list the whole history of acknowledged writes
/// allows (a write acknowledged by a replaced master and lost would fail it).
async fn survives(fault: Fault) {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let first = cluster.master(Duration::from_secs(20)).await;
    let addresses: Vec<String> = cluster.members.iter().map(|m| m.address()).collect();
    let writers = Writers::start(&addresses);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let master_log = cluster.members[first].log();
    let recorded = master_log
        .lines()
        .rfind(|line| line.contains("synchronous replicas recorded"))
        .expect("the master recorded its synchronous replica")
        .to_owned();
    assert_eq!(
        cluster.members[first].metric("mupdate_ha_sync_members"),
        1.0
    );
    assert_eq!(cluster.members[first].metric("mupdate_ha_leader"), 1.0);

    let struck = Instant::now();
    match fault {
        Fault::Killed => {
            let mut killed = cluster.members[first].process.take().expect("running");
            killed.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
        }
        Fault::Frozen => cluster.members[first].signal(nix::sys::signal::Signal::SIGSTOP),
        Fault::CutOff => cluster.members[first].cut_off(),
    }
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let second = cluster.master_among(&others, Duration::from_secs(20)).await;
    let elected_after = struck.elapsed();
    assert!(
        recorded.contains(&cluster.members[second].advertised()),
        "the successor is the synchronous replica: {recorded}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The old master comes back and follows the new one.
    let before = match fault {
        Fault::Killed => 0,
        _ => cluster.members[first].log_count(SYNCED),
    };
    match fault {
        Fault::Killed => cluster.members[first].start(),
        Fault::Frozen => cluster.members[first].signal(nix::sys::signal::Signal::SIGCONT),
        Fault::CutOff => cluster.members[first].reconnect(),
    }
    // By delta, even when it had committed writes its replicas never received (struck
    // while they waited for them): it rewinds those, taking the new master's records.
    let rejoined = cluster.members[first]
        .log_grows(SYNCED, before, Duration::from_secs(20))
        .await;
    assert!(rejoined.contains("(delta resync)"), "{rejoined}");
    let rewound = cluster.members[first].log_count(REWINDING);
    assert_eq!(cluster.master(Duration::from_secs(20)).await, second);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let history = writers.stop().await;

    // Every instance converges on the master's list, which the history allows.
    let mut master = cluster.client(second).await;
    for index in others.iter().chain([&first]) {
        if *index != second {
            converge(&mut cluster.client(*index).await, &mut master).await;
        }
    }
    let acknowledged = check_history(&cluster, &history).await;
    let after = history
        .iter()
        .filter(|a| a.acknowledged == Some(true) && a.answered_at > struck + elected_after)
        .count();
    eprintln!(
        "{fault:?}: {acknowledged} of {} writes acknowledged, {after} after the new master; it was master {elected_after:?} after the fault; the old master rejoined by delta, rewinding {rewound} times",
        history.len()
    );
    assert!(after > 0, "writes were acknowledged after the failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_when_the_master_is_killed() {
    survives(Fault::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_when_the_master_is_frozen_past_its_lease() {
    survives(Fault::Frozen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_when_the_master_is_cut_off() {
    survives(Fault::CutOff).await;
}

/// A master whose disk fills up stops (exit 75) rather than refuse every write from then
/// on, resigning as it stops: its synchronous replica is master at once, and no write
/// either master acknowledged is lost. The old master, its disk replaced (an empty
/// directory), rejoins as a follower and takes the whole list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_disk_fills_up_hands_over_to_its_synchronous_replica() {
    if !common::may_mount("a master's full disk") {
        return;
    }
    let Some(mut cluster) = Cluster::start_with_small_disk(3, "11m").await else {
        return;
    };
    assert_eq!(cluster.master(Duration::from_secs(20)).await, 0);
    let addresses: Vec<String> = cluster.members.iter().map(|m| m.address()).collect();
    let writers = Writers::start(&addresses);
    let recorded = cluster.members[0]
        .log_grows("synchronous replicas recorded", 0, Duration::from_secs(20))
        .await;
    // Big records fill the disk in a few thousand writes.
    let acl = format!("{}\tlrs\t", "a".repeat(2000));
    let mut filler = cluster.client(0).await;
    let mut filled = Vec::new();
    // The refusal: a NO, the goodbye, or the connection closed.
    let refused = loop {
        let name = format!("user.fill{}", filled.len());
        let request = format!("F1 ACTIVATE \"{name}\" \"be!p\" \"{acl}\"\r\n");
        let answer = match filler.try_send(request.as_bytes()).await {
            true => filler.read_line().await,
            false => None,
        };
        match answer {
            Some(line) if line == b"F1 OK \"done\"\r\n" => filled.push(name),
            other => break other.map(|line| String::from_utf8_lossy(&line).into_owned()),
        }
    };
    let struck = Instant::now();
    assert!(
        refused
            .as_ref()
            .is_none_or(|line| line.starts_with("F1 NO") || line.starts_with("* BYE")),
        "refused, or the connection closed: {refused:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let process = cluster.members[0].process.as_mut().expect("started");
        if let Some(status) = process.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "it never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let log = cluster.members[0].log();
    assert_eq!(status.code(), Some(75), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
    let second = cluster.master_among(&[1, 2], Duration::from_secs(20)).await;
    let elected_after = struck.elapsed();
    assert!(
        recorded.contains(&cluster.members[second].advertised()),
        "the successor is the synchronous replica: {recorded}"
    );

    // The old master, on an empty disk now, follows the new one.
    cluster.members[0].small_disk = None;
    cluster.members[0].start();
    cluster.members[0]
        .log_grows(SYNCED, 0, Duration::from_secs(20))
        .await;
    assert_eq!(cluster.master(Duration::from_secs(20)).await, second);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let history = writers.stop().await;
    let mut master = cluster.client(second).await;
    for index in [0, 1, 2] {
        if index != second {
            converge(&mut cluster.client(index).await, &mut master).await;
        }
    }
    let acknowledged = check_history(&cluster, &history).await;
    for index in [0, 1, 2] {
        let listed = common::list(&mut cluster.client(index).await).await;
        let listed: std::collections::HashSet<String> = common::parse_records(&listed)
            .into_iter()
            .map(|record| record.name)
            .collect();
        let lost: Vec<&String> = filled
            .iter()
            .filter(|name| !listed.contains(*name))
            .collect();
        assert!(lost.is_empty(), "member {index} lost {lost:?}");
    }
    eprintln!(
        "{} big writes filled the disk; {acknowledged} of {} writers' writes acknowledged; the replica was master {elected_after:?} after the refusal",
        filled.len(),
        history.len()
    );
}

/// Patroni's synchronous mode: once a master has recorded its synchronous replicas, only
/// they (or it) may succeed it; another instance waits rather than take over without
/// the writes it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_recorded_synchronous_replica_succeeds_the_master() {
    let Some(etcd) = Etcd::start() else { return };
    let mut first = instance(&etcd.endpoint, "10.0.0.1:3905").await;
    role_becomes(&mut first, |r| matches!(r, HaRole::Leader { term: 1 })).await;
    let recorder = first.recorder.clone();
    let replicas = ["10.0.0.2:3905".to_owned()];
    assert!(recorder.record(1, &replicas).await.expect("record"));
    // A master that is not (or no longer) the leader of that term records nothing.
    assert!(!recorder.record(2, &replicas).await.expect("record"));

    let mut outsider = instance(&etcd.endpoint, "10.0.0.3:3905").await;
    role_becomes(&mut outsider, |r| {
        matches!(r, HaRole::Follower { term: 1, .. })
    })
    .await;
    first.stop.cancel();
    role_becomes(&mut outsider, |r| *r == HaRole::Candidate).await;
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(
        *outsider.role.borrow(),
        HaRole::Candidate,
        "an instance outside the sync set stays a candidate"
    );
    let mut replica = instance(&etcd.endpoint, "10.0.0.2:3905").await;
    role_becomes(&mut replica, |r| matches!(r, HaRole::Leader { term: 2 })).await;
    let followed = role_becomes(&mut outsider, |r| r.term() == 2).await;
    assert_eq!(
        followed,
        HaRole::Follower {
            term: 2,
            leader: "10.0.0.2:3905".into()
        }
    );
}

/// A replica asks for the term it means to follow: only that term's master streams it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_master_of_the_term_asked_for_streams_it() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let master = cluster.master(Duration::from_secs(20)).await;
    let follower = (master + 1) % 3;
    let mut client = cluster.client(master).await;
    client
        .exchange(
            b"X XUPDATE \"0\" \"0\" \"7\"\r\n",
            b"X NO \"not the master of term 7 (this instance knows term 1)\"\r\n",
        )
        .await;
    let mut client = cluster.client(follower).await;
    client
        .exchange(
            b"X XUPDATE \"0\" \"0\" \"1\"\r\n",
            b"X NO \"not the master of term 1 (this instance knows term 1)\"\r\n",
        )
        .await;
    let mut client = cluster.client(master).await;
    client.send(b"X XUPDATE \"0\" \"0\" \"1\"\r\n").await;
    client.read_until(b"X OK \"streaming starts\"\r\n").await;
}

/// A real Cyrus 3.6.1 backend writes through a follower while the master is killed
/// (CREATE before and after, then `ctl_mboxlist -m`), and a Cyrus mupdate slave streaming
/// from that follower keeps its stream: no second dump, every change delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cyrus_backend_and_a_cyrus_slave_ride_through_a_failover() {
    if !cyrus::available("a_cyrus_backend_and_a_cyrus_slave_ride_through_a_failover") {
        return;
    }
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let first = cluster.master(Duration::from_secs(20)).await;
    // Through the follower that is not the synchronous replica: it stays a follower.
    let recorded = cluster.members[first]
        .log_grows("synchronous replicas recorded", 0, Duration::from_secs(20))
        .await;
    let via = (0..3)
        .find(|&i| i != first && !recorded.contains(&cluster.members[i].advertised()))
        .expect("a follower outside the sync set");
    let via_address = cluster.members[via].address();
    let (backend, cyrus_slave) = {
        let mupdate = via_address.clone();
        tokio::task::spawn_blocking(move || {
            let backend = Cyrus::start(Service::Backend { mupdate: &mupdate }, "", "");
            let slave = Cyrus::start(
                Service::MupdateSlave {
                    master: &mupdate,
                    retry_delay: 2,
                },
                "mupdate-slave",
                "",
            );
            (backend, slave)
        })
        .await
        .expect("start Cyrus")
    };
    let full = "mupdate_dumps_sent_total{kind=\"full\"}";
    let dumps = cluster.members[via].metric(full);
    assert!(
        dumps >= 1.0,
        "the Cyrus slave's first sync was a full dump from {via_address}"
    );
    let mut imap = Imap::login(backend.addr).await;
    imap.ok("CREATE user.before").await;

    let mut killed = cluster.members[first].process.take().expect("running");
    killed.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let second = cluster.master_among(&others, Duration::from_secs(20)).await;
    assert_ne!(
        second, via,
        "the follower outside the sync set stays a follower"
    );
    // The backend's first try may meet the follower between masters.
    imap.ok_eventually("CREATE user.after").await;
    push_backend_list(&backend).await;

    let mut master = cluster.client(second).await;
    for name in ["user.before", "user.after"] {
        let record = find_record(&mut master, name).await;
        let location = record.map(|r| r.location).unwrap_or_default();
        assert!(
            location.starts_with(&backend.addr.to_string()),
            "{name}: {location:?}"
        );
    }
    let mut from_cyrus = logged_in(cyrus_slave.addr).await;
    converge(&mut from_cyrus, &mut master).await;
    assert_eq!(
        cluster.members[via].metric(full),
        dumps,
        "the Cyrus slave kept its stream: no second dump"
    );
}

/// Without synchronous replicas a master cut off from the others acknowledges writes until
/// its lease runs out, writes its successor never receives (the price of
/// `mupdate_sync_replicas: 0`). Back, it rewinds them by delta: the successor's records of
/// the names it touched, no whole list, and every instance agrees again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_master_rewinds_the_writes_its_successor_never_received() {
    let Some(cluster) = Cluster::start_with(3, "mupdate_sync_replicas: 0\n").await else {
        return;
    };
    let first = cluster.master(Duration::from_secs(20)).await;
    let mut old = cluster.client(first).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    write_the_agreed_list(&cluster, &mut old, &others).await;

    cluster.members[first].cut_off();
    // Acknowledged while its lease lasts, by nobody else received.
    write_what_the_successor_misses(&mut old).await;
    let second = cluster.master_among(&others, Duration::from_secs(20)).await;
    let mut new = cluster.client(second).await;
    new.done(b"B1 ACTIVATE \"user.new\" \"be2!p\" \"\"\r\n")
        .await;

    let before = cluster.members[first].log_count(SYNCED);
    cluster.members[first].reconnect();
    rewound_to_the_successor(&cluster, first, before, &mut new).await;
}

/// A master without synchronous replicas clears the sync set an earlier one recorded, so
/// that any instance may take over (the choice `mupdate_sync_replicas: 0` makes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleared_sync_set_lets_any_instance_take_over() {
    let Some(etcd) = Etcd::start() else { return };
    let mut first = instance(&etcd.endpoint, "10.0.0.1:3905").await;
    role_becomes(&mut first, |r| matches!(r, HaRole::Leader { term: 1 })).await;
    let recorder = first.recorder.clone();
    assert!(
        recorder
            .record(1, &["10.0.0.2:3905".to_owned()])
            .await
            .expect("record")
    );
    assert!(
        !recorder.clear(2).await.expect("clear"),
        "not the master of term 2"
    );
    assert!(recorder.clear(1).await.expect("clear"));
    let mut outsider = instance(&etcd.endpoint, "10.0.0.3:3905").await;
    role_becomes(&mut outsider, |r| {
        matches!(r, HaRole::Follower { term: 1, .. })
    })
    .await;
    first.stop.cancel();
    role_becomes(&mut outsider, |r| matches!(r, HaRole::Leader { term: 2 })).await;
}

/// A follower that received more of a master's writes than the instance elected after it
/// (`mupdate_sync_replicas: 0`, the successor was down meanwhile) rewinds them by delta
/// when it follows the successor: the successor's records of the names they touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_ahead_of_the_new_master_rewinds_by_delta() {
    let Some(mut cluster) = Cluster::start_with(3, "mupdate_sync_replicas: 0\n").await else {
        return;
    };
    let first = cluster.master(Duration::from_secs(20)).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let (behind, ahead) = (others[0], others[1]);
    let mut old = cluster.client(first).await;
    write_the_agreed_list(&cluster, &mut old, &others).await;

    // `behind` stops; the master's next writes reach `ahead` only.
    let mut stopped = cluster.members[behind].process.take().expect("running");
    stopped.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    write_what_the_successor_misses(&mut old).await;
    converge(&mut cluster.client(ahead).await, &mut old).await;
    let before = cluster.members[ahead].log_count(SYNCED);

    // `ahead` cannot campaign, the master dies: `behind`, back, is the only candidate.
    cluster.members[ahead].cut_off();
    let mut killed = cluster.members[first].process.take().expect("running");
    killed.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    cluster.members[behind].start();
    let second = cluster
        .master_among(&[behind], Duration::from_secs(20))
        .await;
    assert_eq!(second, behind);
    let mut new = cluster.client(second).await;
    new.done(b"B1 ACTIVATE \"user.new\" \"be2!p\" \"\"\r\n")
        .await;

    cluster.members[ahead].reconnect();
    rewound_to_the_successor(&cluster, ahead, before, &mut new).await;
}

/// A master streams a commit while its own disk syncs it, so its replicas sync along: a
/// crash of its machine can lose changes its replicas hold. Re-elected, it never gives
/// their numbers to other changes, and the replicas rewind them by delta. The crash is a
/// copy of its files from before those changes, put back once it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_crash_lost_what_its_replicas_hold_rewinds_them() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let first = cluster.master(Duration::from_secs(20)).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let mut old = cluster.client(first).await;
    write_the_agreed_list(&cluster, &mut old, &others).await;
    let dir = cluster.members[first].dir.path().to_owned();
    let files = ["mailboxes.redb", "mailboxes.redb.wal"];
    let image = tempfile::tempdir().expect("tempdir");
    for file in files {
        std::fs::copy(dir.join(file), image.path().join(file)).expect("copy");
    }
    write_what_the_successor_misses(&mut old).await;
    for &index in &others {
        converge(&mut cluster.client(index).await, &mut old).await;
    }
    let before: Vec<usize> = others
        .iter()
        .map(|&index| cluster.members[index].log_count(SYNCED))
        .collect();

    // The others cannot campaign; the master's machine crashes and it comes back alone.
    for &index in &others {
        cluster.members[index].cut_off();
    }
    let mut killed = cluster.members[first].process.take().expect("running");
    killed.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    for file in files {
        std::fs::copy(image.path().join(file), dir.join(file)).expect("put back");
    }
    cluster.members[first].start();
    assert_eq!(
        cluster
            .master_among(&[first], Duration::from_secs(20))
            .await,
        first
    );
    for &index in &others {
        cluster.members[index].reconnect();
    }
    for (&index, &before) in others.iter().zip(&before) {
        cluster.members[index]
            .log_grows(SYNCED, before, Duration::from_secs(20))
            .await;
    }
    // It takes writes once it has recorded a synchronous replica for its term.
    cluster.members[first]
        .log_grows("synchronous replicas recorded", 0, Duration::from_secs(20))
        .await;
    let mut new = cluster.client(first).await;
    new.done(b"B1 ACTIVATE \"user.new\" \"be2!p\" \"\"\r\n")
        .await;
    for (&index, &before) in others.iter().zip(&before) {
        rewound_to_the_successor(&cluster, index, before, &mut new).await;
    }
}

/// Two mailboxes written through the master `old`, on every other instance (`others`).
async fn write_the_agreed_list(cluster: &Cluster, old: &mut Client, others: &[usize]) {
    old.done(b"A1 ACTIVATE \"user.kept\" \"be1!p\" \"\"\r\n")
        .await;
    old.done(b"A2 ACTIVATE \"user.changed\" \"be1!p\" \"\"\r\n")
        .await;
    for &index in others {
        converge(&mut cluster.client(index).await, old).await;
    }
}

/// Writes through the master `old` that its successor will not have: a new name, a moved
/// one, a deleted one.
async fn write_what_the_successor_misses(old: &mut Client) {
    old.done(b"A3 ACTIVATE \"user.lost\" \"be1!p\" \"\"\r\n")
        .await;
    old.done(b"A4 ACTIVATE \"user.changed\" \"be9!lost\" \"\"\r\n")
        .await;
    old.done(b"A5 DELETE \"user.kept\"\r\n").await;
}

/// Member `index` resynchronizes (past `before` such lines of its log) by delta with a
/// rewind and lists what the successor `new` lists: the agreed list and `user.new`.
async fn rewound_to_the_successor(
    cluster: &Cluster,
    index: usize,
    before: usize,
    new: &mut Client,
) {
    let rejoined = cluster.members[index]
        .log_grows(SYNCED, before, Duration::from_secs(20))
        .await;
    assert!(rejoined.contains("(delta resync)"), "{rejoined}");
    common::assert_contains(&cluster.members[index].log(), REWINDING);
    let mut rewound = cluster.client(index).await;
    converge(&mut rewound, new).await;
    let listed = common::list(&mut rewound).await;
    let names: Vec<(String, String)> = common::parse_records(&listed)
        .into_iter()
        .map(|r| (r.name, r.location))
        .collect();
    assert_eq!(
        names,
        [
            ("user.changed".to_owned(), "be1!p".to_owned()),
            ("user.kept".to_owned(), "be1!p".to_owned()),
            ("user.new".to_owned(), "be2!p".to_owned()),
        ]
    );
}
