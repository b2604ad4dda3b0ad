//! An OK to a write means the write is durable: SIGKILL (20 rounds) or SIGTERM (5) the server
//! while 8 clients write, restart it, and find every mailbox that was acknowledged. The long
//! soak with a mixed write load is `loadtest/soak.sh`.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const WRITERS: usize = 8;
const ROUNDS: usize = 20;

/// Writes until the connection breaks; records each name the server acknowledged.
async fn writer(
    addr: std::net::SocketAddr,
    round: usize,
    id: usize,
    acked: Arc<Mutex<BTreeSet<String>>>,
) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return;
    };
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.starts_with("* OK MUPDATE") => break,
            Ok(Some(_)) => {}
            _ => return,
        }
    }
    if write.write_all(AUTH).await.is_err() {
        return;
    }
    match lines.next_line().await {
        Ok(Some(line)) if line == "A0 OK \"Authenticated\"" => {}
        _ => return,
    }
    for i in 0.. {
        let name = format!("user.r{round:02}.w{id}.{i:05}");
        let request = format!("A{i} ACTIVATE \"{name}\" \"be{id}!p\" \"u\tlrs\t\"\r\n");
        if write.write_all(request.as_bytes()).await.is_err() {
            return;
        }
        match lines.next_line().await {
            Ok(Some(line)) if line == format!("A{i} OK \"done\"") => {
                acked.lock().unwrap().insert(name);
            }
            _ => return,
        }
    }
}

/// Names in a LIST answer.
fn listed_names(answer: &[u8]) -> BTreeSet<String> {
    parse_records(answer).into_iter().map(|r| r.name).collect()
}

/// Runs `rounds` rounds of 8 writers stopped by `signal`; after each restart every
/// acknowledged write must be listed. Returns how many were acknowledged.
async fn acknowledged_writes_survive(signal: nix::sys::signal::Signal, rounds: usize) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "");
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut total_acked = 0;
    for round in 0..rounds {
        let mut server = ServerProcess::start(&conf, &["-m"], &[]);
        let tasks: Vec<_> = (0..WRITERS)
            .map(|id| tokio::spawn(writer(server.addr, round, id, acked.clone())))
            .collect();
        // Stop at a different point of the write stream each round.
        tokio::time::sleep(Duration::from_millis(60 + (round as u64 * 37) % 250)).await;
        let status = server.signal_and_wait(signal);
        if signal == nix::sys::signal::Signal::SIGTERM {
            assert!(status.success(), "round {round}: {status:?}");
        }
        for task in tasks {
            task.await.unwrap();
        }
        let server = ServerProcess::start(&conf, &["-m"], &[]);
        let mut client = logged_in(server.addr).await;
        client.send(b"L1 LIST\r\n").await;
        let answer = client.read_until(b"L1 OK \"list complete\"\r\n").await;
        let present = listed_names(&answer);
        let acked = acked.lock().unwrap().clone();
        let lost: Vec<_> = acked.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged but lost: {lost:?}"
        );
        assert!(
            acked.len() > total_acked,
            "round {round}: no write was acknowledged"
        );
        total_acked = acked.len();
        drop(server);
    }
    total_acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_sigkill() {
    let total = acknowledged_writes_survive(nix::sys::signal::Signal::SIGKILL, ROUNDS).await;
    eprintln!("{total} acknowledged writes over {ROUNDS} SIGKILL rounds, none lost");
}

/// Graceful: commands in flight finish; no client is told OK for a write that is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_sigterm() {
    let total = acknowledged_writes_survive(nix::sys::signal::Signal::SIGTERM, 5).await;
    eprintln!("{total} acknowledged writes over 5 SIGTERM rounds, none lost");
}

/// Kills the process group it names when dropped: a shell and every `mupdate` it started.
struct ProcessGroup(nix::unistd::Pid);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

/// A disk that fills up: the commit that finds no space halts the store, the server stops
/// (exit 75, EX_TEMPFAIL, for its supervisor to start it again) instead of refusing every
/// write from then on, and once there is room the restart replays its log: every write it
/// acknowledged is there, and it takes writes again. The database is on a small tmpfs in a
/// private mount namespace; the shell that mounted it restarts the server after growing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_server_and_its_restart_loses_no_acknowledged_write() {
    use std::os::unix::process::CommandExt;
    if !may_mount("full disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "mupdate_shutdown_delay: 0\n");
    // 11 MiB: the 8 MiB write-ahead log, and room for redb to fill.
    let script = format!(
        "'{bin}' -C '{conf}' -m; echo \"exited $?\" >&2; \
         mount -o remount,size=64m '{dir}' && exec '{bin}' -C '{conf}' -m",
        dir = dir.path().display(),
        bin = env!("CARGO_BIN_EXE_mupdate"),
        conf = conf.display(),
    );
    let mut command = on_small_tmpfs(dir.path(), "11m", &script);
    command.process_group(0);
    let server = ServerProcess::spawn_command(command);
    let _group = ProcessGroup(nix::unistd::Pid::from_raw(server.child.id() as i32));
    let first: std::net::SocketAddr = server.address_after("listening on ").parse().unwrap();

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| tokio::spawn(writer(first, 0, id, acked.clone())))
        .collect();
    let log = server.log_once_it_holds_within("exited ", Duration::from_secs(120));
    for task in writers {
        task.await.unwrap();
    }
    assert!(log.contains("exited 75"), "{log}");
    assert!(
        log.contains("a restart replays its write-ahead log"),
        "it says why it stopped: {log}"
    );
    assert!(
        log.contains("No space left on device"),
        "it says what failed: {log}"
    );

    // The restart, on the grown tmpfs, replays a log of thousands of commits (seconds in
    // a debug build).
    let after = "exited 75";
    let replaying = Duration::from_secs(60);
    let log = server.log_once_it_holds_within("replayed commits", replaying);
    let deadline = std::time::Instant::now() + replaying;
    let restarted = loop {
        let log = server.stderr.lock().unwrap().clone();
        let tail = &log[log.find(after).unwrap()..];
        if let Some(at) = tail.find("listening on ") {
            break address_at(&tail[at + "listening on ".len()..]);
        }
        assert!(std::time::Instant::now() < deadline, "no restart: {log}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut client = logged_in(restarted.parse().unwrap()).await;
    client.send(b"L1 LIST\r\n").await;
    let answer = client.read_until(b"L1 OK \"list complete\"\r\n").await;
    let present = listed_names(&answer);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 1000,
        "the disk filled after {} writes",
        acked.len()
    );
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}\n{log}");
    client
        .exchange(
            b"A1 ACTIVATE \"user.after\" \"be1!p\" \"u\tlrs\t\"\r\n",
            b"A1 OK \"done\"\r\n",
        )
        .await;
}
