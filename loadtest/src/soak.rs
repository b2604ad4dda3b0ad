//! Crash-safety soak: runs our server, lets `writers` clients drive a mixed write load
//! (RESERVE, ACTIVATE, DEACTIVATE, DELETE) through their own mailboxes, stops the server with
//! a signal at a random moment, restarts it, and checks every mailbox: it must hold the last
//! acknowledged state, or exactly the state the one unanswered write would have made (that
//! write may or may not have become durable). Anything else is a lost or half-applied write.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mupdate::mailbox::MailboxWrite;
use mupdate::protocol::reply::Reply;
use mupdate::replication::client::{self, Credentials, Link, LinkError};

/// Mailboxes each writer owns.
const MAILBOXES_PER_WRITER: usize = 50;

/// How a round stops the server.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StopSignal {
    /// SIGKILL: no chance to finish anything.
    Kill,
    /// SIGTERM: graceful; commands in flight finish, clients are told BYE.
    Term,
}

/// The soak's settings.
pub struct Soak {
    pub bin: PathBuf,
    pub workdir: PathBuf,
    pub rounds: usize,
    pub writers: usize,
    pub signal: StopSignal,
    pub min_ms: u64,
    pub max_ms: u64,
}

/// A mailbox's state as the server should have it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Absent,
    Reserved { location: String },
    Active { location: String, acl: String },
}

/// What one writer knows after its connection ended.
#[derive(Default)]
struct WriterOutcome {
    /// Last acknowledged state of each of its mailboxes that changed this round.
    acked: BTreeMap<String, State>,
    /// The write sent but never answered: the mailbox and the state it would make.
    pending: Option<(String, State)>,
    acknowledged: u64,
    refused: Vec<String>,
}

fn mailbox_name(writer: usize, index: usize) -> String {
    format!("user.soak.w{writer}.m{index:03}")
}

fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A command valid in `current` (so the server must answer OK) and the state it makes.
fn next_write(current: &State, tag: &str, name: &str, unique: &str, dice: u64) -> (String, State) {
    let location = format!("be{}!p{unique}", dice % 7);
    let acl = format!("u{unique}\tlrswipkxtecda\t");
    let activate = || {
        (
            format!("{tag} ACTIVATE \"{name}\" \"{location}\" \"{acl}\"\r\n"),
            State::Active {
                location: location.clone(),
                acl: acl.clone(),
            },
        )
    };
    let delete = || (format!("{tag} DELETE \"{name}\"\r\n"), State::Absent);
    match (current, dice % 3) {
        (State::Absent, 0) => (
            format!("{tag} RESERVE \"{name}\" \"{location}\"\r\n"),
            State::Reserved {
                location: location.clone(),
            },
        ),
        (State::Absent, _) => activate(),
        (State::Reserved { .. }, 0) => delete(),
        (State::Reserved { .. }, _) => activate(),
        (State::Active { .. }, 0) => activate(),
        (State::Active { .. }, 1) => (
            format!("{tag} DEACTIVATE \"{name}\" \"{location}\"\r\n"),
            State::Reserved {
                location: location.clone(),
            },
        ),
        (State::Active { .. }, _) => delete(),
    }
}

fn credentials(addr: SocketAddr) -> Credentials {
    Credentials {
        server: addr.to_string(),
        authname: "mupdate".into(),
        username: String::new(),
        password: "mupdatepass".into(),
        timeout: Duration::from_secs(10),
        tls: None,
    }
}

/// Writes through the writer's mailboxes until the connection ends.
async fn write_until_stopped(
    addr: SocketAddr,
    writer: usize,
    round: usize,
    mut states: Vec<State>,
) -> WriterOutcome {
    let mut outcome = WriterOutcome::default();
    let Ok(mut link) = client::connect(&credentials(addr)).await else {
        return outcome;
    };
    let mut dice = 0x9E37_79B9_7F4A_7C15 ^ ((writer as u64 + 1) << 32) ^ round as u64;
    for i in 0u64.. {
        let index = (next_random(&mut dice) % MAILBOXES_PER_WRITER as u64) as usize;
        let name = mailbox_name(writer, index);
        let tag = format!("W{i}");
        let unique = format!("{round}x{writer}x{i}");
        let (request, after) =
            next_write(&states[index], &tag, &name, &unique, next_random(&mut dice));
        if link.send(request.as_bytes()).await.is_err() {
            outcome.pending = Some((name, after));
            return outcome;
        }
        match answer(&mut link, &tag).await {
            Some(word) if word == b"OK" => {
                states[index] = after.clone();
                outcome.acked.insert(name, after);
                outcome.acknowledged += 1;
            }
            Some(word) => {
                outcome.refused.push(format!(
                    "{} answered {}",
                    request.trim_end(),
                    String::from_utf8_lossy(&word)
                ));
                return outcome;
            }
            None => {
                outcome.pending = Some((name, after));
                return outcome;
            }
        }
    }
    outcome
}

/// The status word of `tag`'s answer, or none if the connection ended first (EOF, BYE).
async fn answer(link: &mut Link, tag: &str) -> Option<Vec<u8>> {
    loop {
        match link.next(Duration::from_secs(30)).await {
            Ok(Reply::Line { tag: t, word, .. }) if t == tag.as_bytes() => return Some(word),
            Ok(Reply::Line { tag: t, word, .. }) if t == b"*" && word == b"BYE" => return None,
            Ok(_) => {}
            Err(LinkError::Timeout) | Err(_) => return None,
        }
    }
}

/// Our server, running on `conf`.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(bin: &Path, conf: &Path) -> Result<Server> {
        let mut child = Command::new(bin)
            .arg("-C")
            .arg(conf)
            .arg("-m")
            .env("RUST_LOG", "warn,mupdate::app=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("server stderr")?;
        let (found, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(at) = line.find("listening on ") {
                    let addr: String = line[at + 13..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    let _ = found.send(addr);
                }
            }
        });
        let addr = match wait.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().context("listening address")?,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not start");
            }
        };
        Ok(Server { child, addr })
    }

    fn stop(mut self, signal: StopSignal) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let signal = match signal {
            StopSignal::Kill => nix::sys::signal::Signal::SIGKILL,
            StopSignal::Term => nix::sys::signal::Signal::SIGTERM,
        };
        nix::sys::signal::kill(pid, signal).context("signalling the server")?;
        self.child.wait().context("waiting for the server")?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The server's whole list, as states by name.
async fn list(addr: SocketAddr) -> Result<BTreeMap<String, State>> {
    let mut link = client::connect(&credentials(addr)).await?;
    let mut states = BTreeMap::new();
    for reply in client::list(&mut link, "", Duration::from_secs(60)).await? {
        let (name, state) = match reply {
            Reply::Record(MailboxWrite::Activate {
                name,
                location,
                acl,
            }) => (
                name,
                State::Active {
                    location: String::from_utf8_lossy(&location).into(),
                    acl: String::from_utf8_lossy(&acl).into(),
                },
            ),
            Reply::Record(MailboxWrite::Reserve { name, location }) => (
                name,
                State::Reserved {
                    location: String::from_utf8_lossy(&location).into(),
                },
            ),
            _ => continue,
        };
        states.insert(String::from_utf8_lossy(&name).into(), state);
    }
    Ok(states)
}

fn write_config(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("passwd"), "mupdate:{PLAIN}mupdatepass\n")?;
    let conf = dir.join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {dir}\nservername: soak\nadmins: mupdate\nallowplaintext: yes\n\
             failedloginpause: 0\nmupdate_passwd_file: {dir}/passwd\nmupdate_listen: 127.0.0.1:0\n\
             mupdate_http_listen: off\n",
            dir = dir.display()
        ),
    )?;
    Ok(conf)
}

/// Runs the soak; prints one JSON line; fails on the first lost or half-applied write.
pub async fn run(soak: &Soak) -> Result<()> {
    let conf = write_config(&soak.workdir)?;
    let started = Instant::now();
    let mut model: Vec<Vec<State>> = vec![vec![State::Absent; MAILBOXES_PER_WRITER]; soak.writers];
    let (mut acknowledged, mut unanswered, mut unanswered_applied) = (0u64, 0u64, 0u64);
    let mut dice = 0xD1B5_4A32_D192_ED03u64;
    for round in 0..soak.rounds {
        let server = Server::start(&soak.bin, &conf)?;
        let addr = server.addr;
        let writers: Vec<_> = (0..soak.writers)
            .map(|w| tokio::spawn(write_until_stopped(addr, w, round, model[w].clone())))
            .collect();
        let span = soak.max_ms.saturating_sub(soak.min_ms).max(1);
        let delay = soak.min_ms + next_random(&mut dice) % span;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.stop(soak.signal)?;
        let mut pending = Vec::new();
        for (w, writer) in writers.into_iter().enumerate() {
            let outcome = writer.await.context("writer task")?;
            if let Some(refusal) = outcome.refused.first() {
                bail!("round {round}: a valid write was refused: {refusal}");
            }
            acknowledged += outcome.acknowledged;
            for (name, state) in outcome.acked {
                let index = index_of(&name)?;
                model[w][index] = state;
            }
            pending.extend(outcome.pending.map(|p| (w, p)));
        }
        let server = Server::start(&soak.bin, &conf)?;
        let present = list(server.addr).await?;
        for (name, _) in present.iter() {
            if !name.starts_with("user.soak.w") {
                bail!("round {round}: a mailbox nobody wrote: {name}");
            }
        }
        for (w, states) in model.iter_mut().enumerate() {
            for (index, expected) in states.iter_mut().enumerate() {
                let name = mailbox_name(w, index);
                let actual = present.get(&name).cloned().unwrap_or(State::Absent);
                if actual == *expected {
                    continue;
                }
                let unanswered_write = pending
                    .iter()
                    .find(|(pw, (pname, _))| *pw == w && *pname == name)
                    .map(|(_, (_, state))| state);
                match unanswered_write {
                    Some(state) if *state == actual => {
                        unanswered_applied += 1;
                        *expected = actual;
                    }
                    _ => bail!(
                        "round {round}: {name} is {actual:?}; acknowledged {expected:?}, \
                         unanswered write would make {unanswered_write:?}"
                    ),
                }
            }
        }
        unanswered += pending.len() as u64;
        drop(server);
    }
    println!(
        "{{\"rounds\":{},\"writers\":{},\"signal\":\"{:?}\",\"acknowledged_writes\":{acknowledged},\
         \"lost\":0,\"half_applied\":0,\"unanswered_at_stop\":{unanswered},\
         \"unanswered_found_applied\":{unanswered_applied},\"seconds\":{:.1}}}",
        soak.rounds,
        soak.writers,
        soak.signal,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn index_of(name: &str) -> Result<usize> {
    name.rsplit_once(".m")
        .and_then(|(_, n)| n.parse().ok())
        .with_context(|| format!("mailbox index in {name}"))
}
