//! Operator tools: `dump` a server's mailbox list, `restore` a stopped store from a dump
//! (with a new epoch), and `check` a slave against its master. A dump is MUPDATE's own
//! response format (`D MAILBOX {n+}…`, `D RESERVE …`), so it is byte-exact for any name,
//! location or ACL, and any MUPDATE server, Cyrus's included, can be dumped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::config::{self, Settings};
use crate::exit::{EXIT_CONFIG, EXIT_OS, EXIT_SOFTWARE, Fatal, fatal};
use crate::mailbox::MailboxWrite;
use crate::protocol::reply::{Reply, parse_reply};
use crate::protocol::response;
use crate::replication::client::{self, Credentials};
use crate::replication::slave::{OnEmpty, reconcile, replicate};
use crate::store::{Mutation, Store, StoreError, StoreOptions};

const PATIENCE: Duration = Duration::from_secs(60);

fn settings(path: &Path) -> Result<Settings, Fatal> {
    let environment: config::Environment = std::env::vars().collect();
    config::load(path, &environment).map_err(|e| fatal(EXIT_CONFIG, e.to_string()))
}

fn credentials(settings: &Settings, server: String) -> Result<Credentials, Fatal> {
    let password = std::env::var("MUPDATE_PASSWORD")
        .ok()
        .or_else(|| settings.mupdate_password.clone())
        .ok_or_else(|| {
            fatal(
                EXIT_CONFIG,
                "no password: set MUPDATE_PASSWORD or mupdate_password",
            )
        })?;
    let authname = settings
        .mupdate_authname
        .clone()
        .or_else(|| settings.admins.first().cloned())
        .unwrap_or_else(|| "mupdate".into());
    let tls =
        crate::tls::client_for(settings, &server).map_err(|e| fatal(EXIT_CONFIG, e.to_string()))?;
    Ok(Credentials {
        tls,
        server,
        authname,
        username: settings.mupdate_username.clone().unwrap_or_default(),
        password,
        timeout: settings.client_timeout,
    })
}

async fn fetch(credentials: &Credentials) -> Result<Vec<Reply>, Fatal> {
    let mut link = client::connect(credentials)
        .await
        .map_err(|e| fatal(EXIT_OS, format!("{}: {e}", credentials.server)))?;
    client::list(&mut link, "", PATIENCE)
        .await
        .map_err(|e| fatal(EXIT_OS, format!("{}: {e}", credentials.server)))
}

fn runtime() -> Result<tokio::runtime::Runtime, Fatal> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fatal(EXIT_OS, e.to_string()))
}

fn encode(records: &[Reply], out: &mut Vec<u8>) {
    for record in records {
        match record {
            Reply::Record(MailboxWrite::Activate {
                name,
                location,
                acl,
            }) => response::mailbox(out, b"D", name, location, acl),
            Reply::Record(
                MailboxWrite::Reserve { name, location }
                | MailboxWrite::Deactivate { name, location },
            ) => response::reserve(out, b"D", name, location),
            Reply::Record(MailboxWrite::Delete { .. }) | Reply::Line { .. } => {}
        }
    }
}

/// `mupdate dump`.
pub fn dump(config: &Path, server: Option<String>, output: Option<&Path>) -> Result<(), Fatal> {
    let settings = settings(config)?;
    let server = server
        .or_else(|| settings.mupdate_server.clone())
        .unwrap_or_else(|| settings.listen.replace("0.0.0.0", "127.0.0.1"));
    let credentials = credentials(&settings, server)?;
    let records = runtime()?.block_on(fetch(&credentials))?;
    let mut bytes = Vec::new();
    encode(&records, &mut bytes);
    match output {
        Some(path) => std::fs::write(path, &bytes)
            .map_err(|e| fatal(EXIT_OS, format!("{}: {e}", path.display())))?,
        None => std::io::stdout()
            .write_all(&bytes)
            .map_err(|e| fatal(EXIT_OS, e.to_string()))?,
    }
    eprintln!(
        "mupdate: dumped {} mailboxes from {}",
        records.len(),
        credentials.server
    );
    Ok(())
}

/// Reads a dump file into replicate mutations.
fn read_dump(path: &Path) -> Result<Vec<Mutation>, Fatal> {
    let bytes =
        std::fs::read(path).map_err(|e| fatal(EXIT_OS, format!("{}: {e}", path.display())))?;
    let mut rest = bytes.as_slice();
    let mut mutations = Vec::new();
    while !rest.is_empty() {
        let (reply, used) = parse_reply(rest, 1 << 20)
            .map_err(|e| fatal(EXIT_CONFIG, format!("{}: {e}", path.display())))?
            .ok_or_else(|| fatal(EXIT_CONFIG, format!("{}: truncated dump", path.display())))?;
        rest = &rest[used..];
        match reply {
            Reply::Record(MailboxWrite::Activate { .. })
            | Reply::Record(MailboxWrite::Reserve { .. }) => mutations.extend(replicate(reply)),
            other => {
                return Err(fatal(
                    EXIT_CONFIG,
                    format!("{}: not a dump record: {other:?}", path.display()),
                ));
            }
        }
    }
    Ok(mutations)
}

/// `mupdate restore`: the store becomes exactly the dump, under a new epoch.
pub fn restore(config: &Path, file: &Path) -> Result<(), Fatal> {
    let settings = settings(config)?;
    let wanted = read_dump(file)?;
    let store = Store::open(&settings.db_path, StoreOptions::default()).map_err(|e| match e {
        StoreError::InUse => fatal(
            EXIT_CONFIG,
            format!(
                "{} is in use: stop the server first",
                settings.db_path.display()
            ),
        ),
        other => fatal(EXIT_SOFTWARE, other.to_string()),
    })?;
    let count = wanted.len();
    runtime()?.block_on(async {
        reconcile(&store, wanted, None, OnEmpty::Follow)
            .await
            .map_err(|e| fatal(EXIT_SOFTWARE, e.to_string()))?;
        store
            .renew_epoch()
            .map_err(|e| fatal(EXIT_SOFTWARE, e.to_string()))
    })?;
    eprintln!(
        "mupdate: restored {count} mailboxes into {} (new epoch {:x})",
        settings.db_path.display(),
        store.epoch_now().unwrap_or_default()
    );
    Ok(())
}

/// `mupdate check`: returns whether the two lists are equal, after printing differences.
pub fn check(config: &Path, master: String, slave: String) -> Result<bool, Fatal> {
    let settings = settings(config)?;
    let runtime = runtime()?;
    let ours = runtime.block_on(fetch(&credentials(&settings, master)?))?;
    let theirs = runtime.block_on(fetch(&credentials(&settings, slave)?))?;
    let index = |records: Vec<Reply>| -> BTreeMap<Vec<u8>, Reply> {
        records
            .into_iter()
            .filter_map(|r| match &r {
                Reply::Record(MailboxWrite::Activate { name, .. })
                | Reply::Record(MailboxWrite::Reserve { name, .. }) => Some((name.clone(), r)),
                _ => None,
            })
            .collect()
    };
    let (ours, theirs) = (index(ours), index(theirs));
    let mut differences = 0;
    let mut report = std::io::stdout().lock();
    for (name, record) in &ours {
        match theirs.get(name) {
            None => {
                differences += 1;
                let _ = writeln!(
                    report,
                    "missing on slave: {}",
                    String::from_utf8_lossy(name)
                );
            }
            Some(other) if other != record => {
                differences += 1;
                let _ = writeln!(
                    report,
                    "differs: {}: master {record:?}, slave {other:?}",
                    String::from_utf8_lossy(name)
                );
            }
            Some(_) => {}
        }
    }
    for name in theirs.keys().filter(|n| !ours.contains_key(*n)) {
        differences += 1;
        let _ = writeln!(report, "only on slave: {}", String::from_utf8_lossy(name));
    }
    let _ = writeln!(
        report,
        "{differences} differences ({} mailboxes on the master)",
        ours.len()
    );
    Ok(differences == 0)
}
