//! Three elected `mupdate` processes on one real etcd (issue 16), writers spread over all of
//! them, and a checker of the whole history of what was acknowledged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mupdate::mailbox::MailboxWrite;
use mupdate::replication::client::Credentials;
use mupdate::replication::forward::Forwarder;
use tokio_util::sync::CancellationToken;

use super::etcd::{Etcd, Severable};
use super::{
    Client, ServerProcess, base_config, free_port, list, logged_in, parse_records, write_passwd,
};

/// What an instance logs when its port is held by another process.
const PORT_TAKEN: &str = "Address already in use";

/// One elected instance: its directory, configuration and port survive a restart. The
/// other instances and etcd are reached only through paths a test can sever (its own
/// writers reach it directly, as clients on its side of a partition would).
pub struct Member {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub port: u16,
    pub process: Option<ServerProcess>,
    /// Its way to etcd.
    pub to_etcd: Severable,
    /// The others' way to it: what it advertises.
    pub from_others: Severable,
    /// The size of the tmpfs its directory is when it runs on a small disk.
    pub small_disk: Option<&'static str>,
}

impl Member {
    /// `127.0.0.1:port`, where it listens.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What it advertises: the others' path to it.
    pub fn advertised(&self) -> String {
        self.from_others.addr.to_string()
    }

    /// Cuts it off from etcd and the other instances.
    pub fn cut_off(&self) {
        self.to_etcd.sever();
        self.from_others.sever();
    }

    /// Ends its partition.
    pub fn reconnect(&self) {
        self.to_etcd.heal();
        self.from_others.heal();
    }

    /// Sends `signal` to its process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let process = self.process.as_ref().expect("running");
        let pid = nix::unistd::Pid::from_raw(process.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("kill");
    }

    /// The value of the sample `series` (name and labels as exposed) on its `/metrics`.
    pub fn metric(&self, series: &str) -> f64 {
        let process = self.process.as_ref().expect("running");
        let (status, body) = super::http_get(&super::sidecar_of(process), "/metrics");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
    }

    /// How many lines of its log so far hold `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Waits (`patience` at most) until more than `before` lines of its log hold `needle`;
    /// returns the last of them.
    pub async fn log_grows(&self, needle: &str, before: usize, patience: Duration) -> String {
        let deadline = Instant::now() + patience;
        loop {
            let log = self.log();
            let lines: Vec<&str> = log.lines().filter(|line| line.contains(needle)).collect();
            if lines.len() > before {
                return lines[lines.len() - 1].to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the log never said {needle:?} again:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts (or restarts) the process; returns once it accepts clients.
    pub fn start(&mut self) {
        // Its port, free when picked and again whenever its process stops, may be taken a
        // moment by another test's connection meanwhile: it is tried again then.
        let deadline = Instant::now() + super::PATIENCE;
        loop {
            let mut process = self.spawn();
            let log = loop {
                let log = process.stderr.lock().map(|l| l.clone()).unwrap_or_default();
                if log.contains("listening on ") || log.contains(PORT_TAKEN) {
                    break log;
                }
                assert!(Instant::now() < deadline, "it never listened:\n{log}");
                std::thread::sleep(Duration::from_millis(10));
            };
            if log.contains(PORT_TAKEN) && Instant::now() < deadline {
                let _ = process.child.wait();
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            process.addr = process
                .address_after("listening on ")
                .parse()
                .expect("listening address");
            self.process = Some(process);
            return;
        }
    }

    /// Its process, started.
    fn spawn(&self) -> ServerProcess {
        let args = vec!["-C".to_owned(), self.conf.display().to_string()];
        match self.small_disk {
            None => ServerProcess::spawn(&args, &[]),
            Some(size) => {
                let script = format!(
                    "exec '{}' -C '{}'",
                    env!("CARGO_BIN_EXE_mupdate"),
                    self.conf.display()
                );
                ServerProcess::spawn_command(super::on_small_tmpfs(self.dir.path(), size, &script))
            }
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .and_then(|p| p.stderr.lock().ok().map(|l| l.clone()))
            .unwrap_or_default()
    }

    /// The banner it greets a client with now, or `None` when it does not answer.
    pub async fn banner(&self) -> Option<String> {
        let connect = tokio::net::TcpStream::connect(self.address());
        let mut stream = tokio::time::timeout(Duration::from_secs(1), connect)
            .await
            .ok()?
            .ok()?;
        let mut banner = Vec::new();
        let read = async {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 1024];
            // The banner ends with its `* OK MUPDATE ...` line.
            while super::find(&banner, b"* OK")
                .is_none_or(|ok| super::find(&banner[ok..], b"\r\n").is_none())
            {
                let n = stream.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                banner.extend_from_slice(&buf[..n]);
            }
            Some(())
        };
        tokio::time::timeout(Duration::from_secs(1), read)
            .await
            .ok()??;
        Some(String::from_utf8_lossy(&banner).into_owned())
    }
}

/// Three elected instances of cluster `test` on `etcd`.
pub struct Cluster {
    pub etcd: Etcd,
    pub members: Vec<Member>,
}

impl Cluster {
    /// Starts etcd and three instances with a lease of `ttl_secs`; `None` without etcd.
    pub async fn start(ttl_secs: u64) -> Option<Cluster> {
        Cluster::start_with(ttl_secs, "").await
    }

    /// [`Cluster::start`] with `extra` imapd.conf lines on every instance.
    pub async fn start_with(ttl_secs: u64, extra: &str) -> Option<Cluster> {
        Cluster::start_on(ttl_secs, extra, None).await
    }

    /// [`Cluster::start`] with the first instance (the one elected) on a small disk
    /// ([`super::on_small_tmpfs`] of `size`).
    pub async fn start_with_small_disk(ttl_secs: u64, size: &'static str) -> Option<Cluster> {
        Cluster::start_on(ttl_secs, "", Some(size)).await
    }

    async fn start_on(
        ttl_secs: u64,
        extra: &str,
        first_disk: Option<&'static str>,
    ) -> Option<Cluster> {
        let etcd = Etcd::start()?;
        let mut members = Vec::new();
        for index in 0..3 {
            let port = free_port();
            let to_etcd = Severable::to(&etcd.endpoint).await;
            let from_others = Severable::to(&format!("127.0.0.1:{port}")).await;
            members.push({
                let dir = tempfile::tempdir().expect("tempdir");
                write_passwd(dir.path());
                let conf = dir.path().join("imapd.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "{base}mupdate_listen: 127.0.0.1:{port}\nmupdate_http_listen: 127.0.0.1:0\n\
                         mupdate_authname: mupdate\nmupdate_password: mupdatepass\n\
                         mupdate_retry_delay: 1\nmupdate_shutdown_delay: 0\n\
                         mupdate_ha_etcd_endpoints: {endpoint}\nmupdate_ha_cluster: test\n\
                         mupdate_ha_advertise: {advertised}\nmupdate_ha_lease_ttl: {ttl_secs}\n{extra}",
                        base = base_config(dir.path()),
                        endpoint = to_etcd.addr,
                        advertised = from_others.addr,
                    ),
                )
                .expect("write conf");
                Member {
                    dir,
                    conf,
                    port,
                    process: None,
                    to_etcd,
                    from_others,
                    small_disk: first_disk.filter(|_| index == 0),
                }
            });
        }
        // The first one started is elected; the others follow it once they have synced.
        for member in &mut members {
            member.start();
        }
        Some(Cluster { etcd, members })
    }

    /// The index of the member whose banner says `(master)` while every other live one
    /// names it, waiting up to `patience`; panics with the banners seen otherwise.
    pub async fn master(&self, patience: Duration) -> usize {
        self.master_among(&[0, 1, 2], patience).await
    }

    /// [`Cluster::master`] among the members `among` (the others may be frozen or cut off).
    pub async fn master_among(&self, among: &[usize], patience: Duration) -> usize {
        let deadline = Instant::now() + patience;
        loop {
            let mut banners = Vec::new();
            for (index, member) in self.members.iter().enumerate() {
                let banner = match member.process {
                    Some(_) if among.contains(&index) => member.banner().await,
                    _ => None,
                };
                banners.push(banner);
            }
            let masters: Vec<usize> = (0..banners.len())
                .filter(|&i| {
                    banners[i]
                        .as_deref()
                        .is_some_and(|b| b.contains("\"(master)\""))
                })
                .collect();
            if let [master] = masters[..] {
                let named = format!("\"mupdate://{}\"", self.members[master].advertised());
                let agreed = banners.iter().enumerate().all(|(i, banner)| {
                    i == master || banner.as_deref().is_none_or(|b| b.contains(&named))
                });
                if agreed {
                    return master;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no single master named by all: {banners:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A logged-in admin client of member `index`.
    pub async fn client(&self, index: usize) -> Client {
        logged_in(self.members[index].address().parse().expect("address")).await
    }
}

/// One write a writer sent and what came of it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub write: MailboxWrite,
    /// Some(true): OK; Some(false): NO (not applied); None: no answer (outcome unknown).
    pub acknowledged: Option<bool>,
    pub answered_at: Instant,
}

/// Writers, one per member, each on names of its own: activations of fresh names and,
/// every third write, the deletion of one it had activated.
pub struct Writers {
    pub history: Arc<Mutex<Vec<Attempt>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// Starts one writer per member address.
    pub fn start(addresses: &[String]) -> Writers {
        let history = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let tasks = addresses
            .iter()
            .enumerate()
            .map(|(writer, address)| {
                tokio::spawn(write_until(
                    writer,
                    address.clone(),
                    history.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Writers {
            history,
            stop,
            tasks,
        }
    }

    /// Stops them; returns the whole history.
    pub async fn stop(self) -> Vec<Attempt> {
        self.stop.cancel();
        for task in self.tasks {
            task.await.expect("writer");
        }
        self.history.lock().expect("history").clone()
    }
}

async fn write_until(
    writer: usize,
    address: String,
    history: Arc<Mutex<Vec<Attempt>>>,
    stop: CancellationToken,
) {
    let forwarder = Forwarder::new(
        Credentials {
            server: address.clone(),
            authname: "mupdate".into(),
            username: String::new(),
            password: "mupdatepass".into(),
            timeout: Duration::from_secs(2),
            tls: None,
        },
        Box::new(|_| Ok(None)),
        Duration::from_secs(15),
    );
    let mut active: Vec<Vec<u8>> = Vec::new();
    let mut count = 0u64;
    while !stop.is_cancelled() {
        count += 1;
        let write = match active.first() {
            Some(name) if count.is_multiple_of(3) => MailboxWrite::Delete { name: name.clone() },
            _ => MailboxWrite::Activate {
                name: format!("user.w{writer}n{count}").into_bytes(),
                location: format!("be{writer}!p").into_bytes(),
                acl: b"anyone\tlr\t".to_vec(),
            },
        };
        let answer = forwarder.forward(&address, &write).await;
        let acknowledged = match &answer {
            Ok(answer) => Some(answer.ok),
            Err(_) => None,
        };
        if acknowledged == Some(true) {
            match &write {
                MailboxWrite::Activate { name, .. } => active.push(name.clone()),
                _ => {
                    active.remove(0);
                }
            }
        }
        history.lock().expect("history").push(Attempt {
            write,
            acknowledged,
            answered_at: Instant::now(),
        });
        if answer.is_err() || acknowledged == Some(false) {
            // An instance down or between masters: try again a little later.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a name's history allows its final state to be: each acknowledged write fixes it;
/// a write after the last acknowledged one that was unanswered or refused may or may not
/// have happened (a master refuses a write its replicas did not confirm in time after
/// committing it, as a database that cannot reach its synchronous standby does).
fn allowed_states(attempts: &[&Attempt]) -> Vec<Option<String>> {
    let effect = |write: &MailboxWrite| match write {
        MailboxWrite::Activate { location, .. } => {
            Some(String::from_utf8_lossy(location).into_owned())
        }
        _ => None,
    };
    let mut allowed = vec![None];
    for attempt in attempts {
        match attempt.acknowledged {
            Some(true) => allowed = vec![effect(&attempt.write)],
            Some(false) | None => allowed.push(effect(&attempt.write)),
        }
    }
    allowed
}

/// Checks that every member's list agrees with the history: for every name, its state
/// there is one its acknowledged writes (and the unanswered ones after them) allow.
/// Returns how many writes were acknowledged.
pub async fn check_history(cluster: &Cluster, history: &[Attempt]) -> usize {
    let mut by_name: HashMap<Vec<u8>, Vec<&Attempt>> = HashMap::new();
    for attempt in history {
        by_name
            .entry(attempt.write.name().to_vec())
            .or_default()
            .push(attempt);
    }
    for index in 0..cluster.members.len() {
        let mut client = cluster.client(index).await;
        let listed: HashMap<String, String> = parse_records(&list(&mut client).await)
            .into_iter()
            .filter(|r| r.active)
            .map(|r| (r.name, r.location))
            .collect();
        for (name, attempts) in &by_name {
            let name = String::from_utf8_lossy(name).into_owned();
            let state = listed.get(&name).cloned();
            let allowed = allowed_states(attempts);
            assert!(
                allowed.contains(&state),
                "member {index}: {name} is {state:?}, but its history allows only {allowed:?}: {attempts:#?}"
            );
        }
    }
    history
        .iter()
        .filter(|a| a.acknowledged == Some(true))
        .count()
}
