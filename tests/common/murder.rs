//! Driving a Cyrus murder from tests: a tiny IMAP client, and reading what a Cyrus host and
//! our master hold for a mailbox.

use std::time::{Duration, Instant};

use super::cyrus::{Cyrus, LocalMupdate, Service};
use super::{Client, Listed, parse_records};

/// `id TAB rights TAB` pairs of a Cyrus ACL, sorted (mailboxes.db keeps them as a map).
pub fn acl_pairs(acl: &str) -> Vec<(String, String)> {
    let fields: Vec<&str> = acl.split('\t').collect();
    let mut pairs: Vec<(String, String)> = fields
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
        .collect();
    pairs.sort();
    pairs
}

/// A tiny IMAP client: enough to drive a backend as an administrator would.
pub struct Imap {
    pub client: Client,
    next: usize,
}

impl Imap {
    pub async fn login(addr: std::net::SocketAddr) -> Imap {
        let mut client = Client::connect(addr).await;
        client.read_until(b"\r\n").await;
        let mut imap = Imap { client, next: 0 };
        imap.ok("LOGIN admin adminpass").await;
        imap
    }

    /// Runs `command`, asserting a tagged OK.
    pub async fn ok(&mut self, command: &str) {
        self.ok_with(command).await;
    }
}

impl Imap {
    /// Runs `command` and returns everything up to its tagged OK.
    pub async fn ok_with(&mut self, command: &str) -> String {
        match self.run(command).await {
            Ok(text) => text,
            Err(text) => panic!("IMAP {command}: {text}"),
        }
    }

    /// Runs `command` until it succeeds (a frontend's slave may still be catching up).
    pub async fn ok_eventually(&mut self, command: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.run(command).await {
                Ok(text) => return text,
                Err(text) if Instant::now() > deadline => panic!("IMAP {command}: {text}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Runs `command`: the whole answer, `Ok` if tagged OK.
    pub async fn run(&mut self, command: &str) -> Result<String, String> {
        self.next += 1;
        let tag = format!("i{}", self.next);
        self.client
            .send(format!("{tag} {command}\r\n").as_bytes())
            .await;
        let mut answer = Vec::new();
        loop {
            let line = self.client.read_until(b"\r\n").await;
            let done = line.starts_with(format!("{tag} ").as_bytes());
            answer.extend_from_slice(&line);
            if done {
                let text = String::from_utf8_lossy(&answer).into_owned();
                return if line.starts_with(format!("{tag} OK").as_bytes()) {
                    Ok(text)
                } else {
                    Err(text)
                };
            }
        }
    }

    /// APPENDs `message` to `mailbox` with a synchronising literal.
    pub async fn append(&mut self, mailbox: &str, message: &str) {
        self.next += 1;
        let tag = format!("i{}", self.next);
        self.client
            .send(format!("{tag} APPEND {mailbox} {{{}}}\r\n", message.len()).as_bytes())
            .await;
        let go_ahead = self.client.read_until(b"\r\n").await;
        assert!(
            go_ahead.starts_with(b"+"),
            "{}",
            String::from_utf8_lossy(&go_ahead)
        );
        self.client.send(format!("{message}\r\n").as_bytes()).await;
        let done = self.client.read_until(format!("{tag} ").as_bytes()).await;
        let status = self.client.read_until(b"\r\n").await;
        assert!(
            status.starts_with(b"OK"),
            "APPEND: {}{}",
            String::from_utf8_lossy(&done),
            String::from_utf8_lossy(&status)
        );
    }
}

/// What our master holds for `name`, if anything.
pub async fn find_record(client: &mut Client, name: &str) -> Option<Listed> {
    client
        .send(format!("F FIND \"{name}\"\r\n").as_bytes())
        .await;
    let answer = client.read_until(b"F OK \"Search completed\"\r\n").await;
    parse_records(&answer).into_iter().next()
}

/// The backend's own record of `name`, from its mailboxes.db.
pub fn backend_record(backend: &Cyrus, name: &str) -> serde_json::Value {
    let dump = backend.tool("ctl_mboxlist", &["-d"]);
    let dumped: serde_json::Value =
        serde_json::from_slice(&dump.stdout).expect("ctl_mboxlist -d prints JSON");
    dumped[name].clone()
}

pub fn acl_of(entry: &serde_json::Value) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = entry["acl"]
        .as_object()
        .map(|acl| {
            acl.iter()
                .map(|(id, rights)| (id.clone(), rights.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    pairs.sort();
    pairs
}

/// Runs Cyrus's `ctl_mboxlist -m` on a backend: it pushes its list to the master, which
/// drops the backend's entries the backend does not have.
pub async fn push_backend_list(backend: &Cyrus) {
    let path = backend.path();
    let push = tokio::task::spawn_blocking(move || {
        std::process::Command::new("runuser")
            .args(["-u", "cyrus", "--", "/usr/lib/cyrus/bin/ctl_mboxlist", "-C"])
            .arg(path.join("imapd.conf"))
            .arg("-m")
            .output()
            .expect("ctl_mboxlist -m")
    })
    .await
    .expect("ctl_mboxlist");
    assert!(
        push.status.success(),
        "ctl_mboxlist -m failed: {}{}",
        String::from_utf8_lossy(&push.stdout),
        String::from_utf8_lossy(&push.stderr)
    );
}

/// Through the frontend `fe`, user.bob (on the first backend) can be selected, and an
/// APPEND to user.carol lands on the second backend, as `be2` sees it. The frontend greets
/// before its local slave has synchronised, so the first SELECT is retried.
pub async fn both_backends_reachable(fe: &mut Imap, be2: &mut Imap) {
    let selected = fe.ok_eventually("SELECT user.bob").await;
    assert!(selected.contains("EXISTS"), "{selected}");
    fe.append("user.carol", "Subject: through the murder\r\n\r\nhello")
        .await;
    let on_be2 = be2.ok_with("SELECT user.carol").await;
    assert!(on_be2.contains("* 1 EXISTS"), "APPEND not on be2: {on_be2}");
}

/// Backends named by their address (so the frontend can reach them), pushing to `mupdate`;
/// each may move users to the other (XFER), logging in there as an administrator.
pub async fn two_backends(mupdate: String) -> (Cyrus, Cyrus) {
    const XFER: &str = "allowusermoves: yes\nproxy_authname: admin\nproxy_password: adminpass\n";
    tokio::task::spawn_blocking(move || {
        (
            Cyrus::start(Service::Backend { mupdate: &mupdate }, "", XFER),
            Cyrus::start(Service::Backend { mupdate: &mupdate }, "", XFER),
        )
    })
    .await
    .expect("start the backends")
}

/// A Cyrus frontend of `backends`, following `mupdate` through `local`.
pub async fn frontend(mupdate: String, backends: String, local: LocalMupdate) -> Cyrus {
    tokio::task::spawn_blocking(move || {
        Cyrus::start(
            Service::Frontend {
                mupdate: &mupdate,
                backends: &backends,
                local,
            },
            "fe",
            "",
        )
    })
    .await
    .expect("start the frontend")
}

/// Creates user.bob on be1 and user.carol on be2, each administrable by `admin`.
pub async fn seed(be1: &Cyrus, be2: &Cyrus) {
    let mut imap1 = Imap::login(be1.addr).await;
    imap1.ok("CREATE user.bob").await;
    imap1.ok("SETACL user.bob admin lrswipkxtecda").await;
    let mut imap2 = Imap::login(be2.addr).await;
    imap2.ok("CREATE user.carol").await;
    imap2.ok("SETACL user.carol admin lrswipkxtecda").await;
}
