//! A real etcd (Debian's etcd-server) on loopback ports of its own, and a TCP path to it
//! that a test can partition.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{cyrus_available, free_port};

/// Where Debian installs etcd.
pub const ETCD: &str = "/usr/bin/etcd";

/// A one-member etcd cluster in a temporary directory, stopped when dropped.
pub struct Etcd {
    child: Child,
    /// Its client endpoint, `127.0.0.1:port`.
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts it and waits until it answers, or `None` (SKIPPED; a failure under CI) when it
    /// is not installed. Its ports are picked free and then released, so another test may
    /// take one first: an etcd that exits before it answers is started again on new ports.
    pub fn start() -> Option<Etcd> {
        if !cyrus_available("etcd", ETCD) {
            return None;
        }
        let mut failures = Vec::new();
        for _attempt in 0..3 {
            match Etcd::start_once() {
                Ok(etcd) => return Some(etcd),
                Err(log) => failures.push(log),
            }
        }
        panic!(
            "etcd never became healthy; its logs:\n{}",
            failures.join("\n---\n")
        );
    }

    fn start_once() -> Result<Etcd, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let log_path = dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).expect("etcd.log");
        let child = Command::new(ETCD)
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let mut etcd = Etcd {
            child,
            endpoint: client.trim_start_matches("http://").to_owned(),
            _dir: dir,
        };
        if etcd.wait_until_healthy() {
            return Ok(etcd);
        }
        // Stopped first, so the log is complete.
        let _ = etcd.child.kill();
        let _ = etcd.child.wait();
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }

    /// Its process id (to stop and resume it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it answers healthy within 30 s; false at once if it exits.
    fn wait_until_healthy(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            if std::net::TcpStream::connect(&self.endpoint).is_ok()
                && super::http_get(&self.endpoint, "/health")
                    .1
                    .contains("\"health\":\"true\"")
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder to `target` that can be severed as by a network partition: no byte gets
/// through either way, yet no connection is closed (no reset tells either side), until it
/// is healed; the connections held silent meanwhile are closed then.
pub struct Severable {
    /// Where to connect instead of the target.
    pub addr: SocketAddr,
    severed: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Severable {
    /// Starts forwarding to `target`.
    pub async fn to(target: &str) -> Severable {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let severed = Arc::new(watch::Sender::new(false));
        let target = target.to_owned();
        let state = severed.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut partition = state.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    if !*partition.borrow() {
                        let Ok(mut server) = TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                            _ = partition.wait_for(|severed| *severed) => {}
                        }
                        // Both sockets stay open, silent, until the partition heals.
                        let _ = partition.wait_for(|severed| !*severed).await;
                        drop(server);
                    } else {
                        let _ = partition.wait_for(|severed| !*severed).await;
                    }
                    drop(client);
                });
            }
        });
        Severable {
            addr,
            severed,
            task,
        }
    }

    /// Stops every byte through it, on open connections and new ones alike.
    pub fn sever(&self) {
        self.severed.send_replace(true);
    }

    /// Ends the partition: the connections held silent close, new ones go through.
    pub fn heal(&self) {
        self.severed.send_replace(false);
    }
}

impl Drop for Severable {
    fn drop(&mut self) {
        self.task.abort();
    }
}
