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
