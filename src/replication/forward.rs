//! A follower's writes, forwarded to the elected master (issue 16): RESERVE, ACTIVATE,
//! DEACTIVATE and DELETE sent over a logged-in connection, and the master's answer brought
//! back. Connections are kept for the next write to the same master.

use std::sync::Mutex;
use std::time::Duration;

use super::client::{self, Credentials, Link, LinkError};
use crate::mailbox::MailboxWrite;
use crate::protocol::reply::Reply;
use crate::protocol::{Command, CommandKind};
use crate::tls::ClientTls;

/// Idle connections kept per forwarder: as many writes can be forwarded at once without
/// connecting; more connect and are then let go.
const POOL_MAX: usize = 16;

/// TLS towards a master (`mupdate_tls`), given its address; `None`: plain; an error when
/// TLS is required but cannot be set up (the write is then not sent in clear).
pub type TlsFor = Box<dyn Fn(&str) -> Result<Option<ClientTls>, String> + Send + Sync>;

/// The master's answer to a forwarded write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Whether it said OK.
    pub ok: bool,
    /// Its text (`done`, `mailbox already exists`, ...).
    pub text: String,
}

/// Forwards writes to whichever master it is given, as one logged-in user.
pub struct Forwarder {
    credentials: Credentials,
    /// TLS towards each master (`mupdate_tls`), by its address.
    tls_for: TlsFor,
    /// How long the master may take to answer a write (it may wait for its replicas).
    patience: Duration,
    /// Logged-in connections not in use, with the master each reaches.
    idle: Mutex<Vec<(String, Link)>>,
}

impl Forwarder {
    /// Logs in as `credentials` (its `server` is replaced by the master of each write);
    /// waits `patience` at most for each answer.
    pub fn new(credentials: Credentials, tls_for: TlsFor, patience: Duration) -> Forwarder {
        Forwarder {
            credentials,
            tls_for,
            patience,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `write` to `master` and returns its answer. A connection that fails is
    /// dropped; the write is not sent twice, since whether the master applied it is unknown.
    pub async fn forward(&self, master: &str, write: &MailboxWrite) -> Result<Answer, LinkError> {
        let mut link = match self.take_idle(master).await {
            Some(link) => link,
            None => {
                let credentials = Credentials {
                    server: master.to_owned(),
                    tls: (self.tls_for)(master).map_err(LinkError::Tls)?,
                    ..self.credentials.clone()
                };
                client::connect(&credentials).await?
            }
        };
        let answer = exchange(&mut link, write, self.patience).await?;
        let mut idle = self.pool();
        if idle.len() < POOL_MAX {
            idle.push((master.to_owned(), link));
        }
        Ok(answer)
    }

    /// An idle connection to `master` that the master has not closed meanwhile.
    async fn take_idle(&self, master: &str) -> Option<Link> {
        loop {
            let mut link = {
                let mut idle = self.pool();
                let at = idle.iter().position(|(to, _)| to == master)?;
                idle.swap_remove(at).1
            };
            // A master says nothing unasked: any bytes or EOF here mean the connection is
            // ending (a BYE, an idle timeout), and waiting for none costs one poll.
            if matches!(link.next(Duration::ZERO).await, Err(LinkError::Timeout)) {
                return Some(link);
            }
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Vec<(String, Link)>> {
        // A panic while holding this lock cannot leave the list half-changed.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sends `write` tagged `F` and reads until the master's tagged answer.
async fn exchange(
    link: &mut Link,
    write: &MailboxWrite,
    patience: Duration,
) -> Result<Answer, LinkError> {
    let mut bytes = Vec::new();
    Command {
        tag: b"F".to_vec(),
        kind: CommandKind::Write(write.clone()),
    }
    .encode(&mut bytes);
    link.send(&bytes).await?;
    loop {
        match link.next(patience).await? {
            Reply::Line { tag, word, rest } if tag == b"F" => {
                let text = String::from_utf8_lossy(&rest);
                return Ok(Answer {
                    ok: word == b"OK",
                    text: text.trim().trim_matches('"').to_owned(),
                });
            }
            Reply::Line { tag, word, rest } if tag == b"*" && word == b"BYE" => {
                return Err(LinkError::Protocol(format!(
                    "the master said goodbye: {}",
                    String::from_utf8_lossy(&rest).trim()
                )));
            }
            _ => {}
        }
    }
}
