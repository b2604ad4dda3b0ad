//! Shared test fixture: a master served in-process on 127.0.0.1:0 with its own temporary
//! configdirectory, and a raw MUPDATE client that compares bytes.
#![allow(dead_code)]

pub mod cluster;
pub mod cyrus;
pub mod etcd;
pub mod murder;
pub mod transcript;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use mupdate::server::{self, Role, ServerContext};
use mupdate::store::{Store, StoreOptions};

/// `\0mupdate\0mupdatepass` in base64.
pub const B64_ADMIN: &str = "AG11cGRhdGUAbXVwZGF0ZXBhc3M=";
/// `\0bob\0bobpass`
pub const B64_BOB: &str = "AGJvYgBib2JwYXNz";
/// `\0mupdate\0wrong`
pub const B64_BAD: &str = "AG11cGRhdGUAd3Jvbmc=";
/// The line that logs in as the admin.
pub const AUTH: &[u8] = b"A0 AUTHENTICATE \"PLAIN\" \"AG11cGRhdGUAbXVwZGF0ZXBhc3M=\"\r\n";

/// How long a test waits for any expected byte.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The fixture's base configuration (spec §15).
pub fn base_config(dir: &Path) -> String {
    format!(
        "configdirectory: {dir}\nservername: mupdate-master\nadmins: mupdate\nallowplaintext: yes\n\
         failedloginpause: 0\nmupdate_passwd_file: {dir}/passwd\nmupdate_banner_version: 3.6.1-test\n",
        dir = dir.display()
    )
}

/// Writes the fixture's passwd file (admin `mupdate`, non-admin `bob`).
pub fn write_passwd(dir: &Path) {
    std::fs::write(
        dir.join("passwd"),
        "mupdate:{PLAIN}mupdatepass\nbob:{PLAIN}bobpass\n",
    )
    .expect("write passwd");
}

/// A master running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub ctx: Arc<ServerContext>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Starts a master with the base configuration plus `extra` imapd.conf lines.
    pub async fn start(extra: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra).await
    }

    /// Starts a master on an existing directory (to restart on the same database).
    pub async fn start_in(dir: tempfile::TempDir, extra: &str) -> TestServer {
        Self::start_at(dir, extra, 0).await
    }

    /// Starts a master on `port` (0: any), e.g. to come back where a slave expects it.
    pub async fn start_at(dir: tempfile::TempDir, extra: &str, port: u16) -> TestServer {
        write_passwd(dir.path());
        let conf = dir.path().join("imapd.conf");
        std::fs::write(&conf, format!("{}{extra}", base_config(dir.path()))).expect("write conf");
        let settings =
            mupdate::config::load(&conf, &mupdate::config::Environment::default()).expect("config");
        let store = open_store(&settings.db_path, mupdate::app::store_options(&settings)).await;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ctx = Arc::new(ServerContext::new(
            settings,
            store,
            Role::Master,
            CancellationToken::new(),
        ));
        let task = tokio::spawn(server::run(listener, ctx.clone()));
        TestServer {
            addr,
            dir,
            ctx,
            task,
        }
    }

    /// Connects and reads the banner.
    pub async fn client(&self) -> Client {
        let mut client = Client::connect(self.addr).await;
        client.read_banner().await;
        client
    }

    /// Connects and logs in as the admin.
    pub async fn admin(&self) -> Client {
        let mut client = self.client().await;
        client.exchange(AUTH, b"A0 OK \"Authenticated\"\r\n").await;
        client
    }

    /// Stops the server and waits until its sessions are gone; returns the directory.
    pub async fn stop(self) -> tempfile::TempDir {
        self.ctx.shutdown.cancel();
        let _ = tokio::time::timeout(PATIENCE, self.task).await;
        self.dir
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

/// Opens the store, waiting while a previous instance in this process releases it.
pub async fn open_store(path: &Path, options: StoreOptions) -> Store {
    for _ in 0..250 {
        match Store::open(path, options.clone()) {
            Ok(store) => return store,
            Err(mupdate::store::StoreError::InUse) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(other) => panic!("open store: {other}"),
        }
    }
    panic!("store still in use")
}

/// A raw MUPDATE client.
pub struct Client {
    pub stream: TcpStream,
    pub pending: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            pending: Vec::new(),
        }
    }

    pub async fn read_banner(&mut self) -> Vec<u8> {
        self.read_until(b"* OK MUPDATE").await;
        self.read_until(b"\r\n").await
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Sends `bytes`; whether the connection took them (a server that stopped may not).
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// The next line, `\r\n` included, or `None` once the server has closed the
    /// connection without completing one.
    pub async fn read_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = find(&self.pending, b"\r\n") {
                return Some(self.pending.drain(..at + 2).collect());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn fill(&mut self) -> bool {
        self.pending.reserve(64 * 1024);
        match tokio::time::timeout(PATIENCE, self.stream.read_buf(&mut self.pending)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(_)) => true,
            Err(_) => panic!(
                "timed out waiting for the server; have {:?}",
                String::from_utf8_lossy(&self.pending)
            ),
        }
    }

    /// Reads exactly `n` bytes.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            if !self.fill().await {
                panic!(
                    "EOF after {:?}, wanted {n} bytes",
                    String::from_utf8_lossy(&self.pending)
                );
            }
        }
        self.pending.drain(..n).collect()
    }

    /// Reads up to and including `needle`.
    pub async fn read_until(&mut self, needle: &[u8]) -> Vec<u8> {
        // Only the bytes that arrived since the last look can complete the needle; a
        // rescan from the start would make a long LIST quadratic.
        let mut scanned = 0;
        loop {
            if let Some(at) = find(&self.pending[scanned..], needle) {
                let end = scanned + at + needle.len();
                return self.pending.drain(..end).collect();
            }
            scanned = self
                .pending
                .len()
                .saturating_sub(needle.len().saturating_sub(1));
            if !self.fill().await {
                panic!(
                    "EOF before {:?}; have {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&self.pending)
                );
            }
        }
    }

    /// Sends `request` and asserts the next bytes are exactly `expected`.
    pub async fn exchange(&mut self, request: &[u8], expected: &[u8]) {
        self.send(request).await;
        self.expect(expected).await;
    }

    /// Sends a write and asserts it is answered `OK "done"` under its tag.
    pub async fn done(&mut self, request: &[u8]) {
        let tag = request.split(|&b| b == b' ').next().unwrap_or_default();
        let mut expected = tag.to_vec();
        expected.extend_from_slice(b" OK \"done\"\r\n");
        self.exchange(request, &expected).await;
    }

    /// Sends `F1 FIND "<name>"` and asserts that no such mailbox is found.
    pub async fn finds_nothing(&mut self, name: &str) {
        self.exchange(
            format!("F1 FIND \"{name}\"\r\n").as_bytes(),
            b"F1 OK \"Search completed\"\r\n",
        )
        .await;
    }

    /// Sends `tag AUTHENTICATE "PLAIN" "<token>"` and asserts Cyrus's refusal.
    pub async fn login_refused(&mut self, tag: &str, token: &str) {
        self.exchange(
            format!("{tag} AUTHENTICATE \"PLAIN\" \"{token}\"\r\n").as_bytes(),
            format!("{tag} NO \"undefined error!\"\r\n").as_bytes(),
        )
        .await;
    }

    /// Asserts the next bytes are exactly `expected`.
    pub async fn expect(&mut self, expected: &[u8]) {
        let got = self.read_exact(expected.len()).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "server bytes differ"
        );
    }

    /// Asserts nothing more was sent before a NOOP's answer (the connection must be
    /// authenticated), proving no stray responses.
    pub async fn expect_quiet(&mut self) {
        self.exchange(b"QUIET NOOP\r\n", b"QUIET OK \"Noop done\"\r\n")
            .await;
    }

    /// Asserts the server closes the connection (after any bytes in `before`).
    pub async fn expect_eof(&mut self, before: &[u8]) {
        self.expect(before).await;
        loop {
            if !self.fill().await {
                assert!(
                    self.pending.is_empty(),
                    "unexpected bytes before EOF: {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
                return;
            }
        }
    }
}

impl Client {
    /// Spec D-6: the server answers exactly `answer` (nothing, when empty) and closes
    /// the connection. The server drains what the client sent before it closes, so no
    /// reset may eat the answer: silence where an answer is due fails.
    pub async fn expect_close_after(&mut self, answer: &[u8]) {
        while self.fill().await {}
        let got = std::mem::take(&mut self.pending);
        assert!(
            got == answer,
            "expected {:?} and then the close, got {:?}",
            String::from_utf8_lossy(answer),
            String::from_utf8_lossy(&got)
        );
    }
}

/// The store mutation that activates `name` at `location` with `acl`.
pub fn activation(name: impl Into<Vec<u8>>, location: &str, acl: &str) -> mupdate::store::Mutation {
    mupdate::store::Mutation::Write(mupdate::mailbox::MailboxWrite::Activate {
        name: name.into(),
        location: location.as_bytes().to_vec(),
        acl: acl.as_bytes().to_vec(),
    })
}

/// The expected `MAILBOX` response bytes.
pub fn mailbox(tag: &str, name: &str, location: &str, acl: &str) -> Vec<u8> {
    format!(
        "{tag} MAILBOX {{{}+}}\r\n{name} {{{}+}}\r\n{location} {{{}+}}\r\n{acl}\r\n",
        name.len(),
        location.len(),
        acl.len()
    )
    .into_bytes()
}

/// The expected `RESERVE` response bytes.
pub fn reserve(tag: &str, name: &str, location: &str) -> Vec<u8> {
    format!(
        "{tag} RESERVE {{{}+}}\r\n{name} {{{}+}}\r\n{location}\r\n",
        name.len(),
        location.len()
    )
    .into_bytes()
}

/// The expected `DELETE` response bytes.
pub fn delete(tag: &str, name: &str) -> Vec<u8> {
    format!("{tag} DELETE {{{}+}}\r\n{name}\r\n", name.len()).into_bytes()
}

/// One record of a LIST, UPDATE or FIND answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub active: bool,
    pub name: String,
    pub location: String,
    pub acl: String,
}

/// Parses the `MAILBOX` and `RESERVE` responses (literal form) of a server answer, in one
/// pass; other lines are skipped.
pub fn parse_records(answer: &[u8]) -> Vec<Listed> {
    fn literal(rest: &mut &[u8]) -> String {
        let open = find(rest, b"{").expect("literal");
        let close = open + find(&rest[open..], b"+}\r\n").expect("literal end");
        let len: usize = std::str::from_utf8(&rest[open + 1..close])
            .expect("digits")
            .parse()
            .expect("length");
        let value = String::from_utf8_lossy(&rest[close + 4..close + 4 + len]).into_owned();
        *rest = &rest[close + 4 + len..];
        value
    }
    let mut records = Vec::new();
    let mut rest = answer;
    while let Some(space) = rest.iter().position(|&b| b == b' ') {
        let after_tag = &rest[space + 1..];
        let active = after_tag.starts_with(b"MAILBOX {");
        if active || after_tag.starts_with(b"RESERVE {") {
            rest = &after_tag[8..];
            let name = literal(&mut rest);
            let location = literal(&mut rest);
            let acl = if active {
                literal(&mut rest)
            } else {
                String::new()
            };
            rest = rest.strip_prefix(b"\r\n").unwrap_or(rest);
            records.push(Listed {
                active,
                name,
                location,
                acl,
            });
        } else {
            match find(rest, b"\r\n") {
                Some(end) => rest = &rest[end + 2..],
                None => break,
            }
        }
    }
    records
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether real Cyrus programs are installed; under CI their absence is a failure.
pub fn cyrus_available(what: &str, path: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what}: {path} is missing under CI=true; .ci/run should have installed it");
    }
    skipped(&format!(
        "{what}: {path} not installed (run scripts/install-test-deps.sh as root)"
    ));
    false
}

/// Says plainly that a test did not run and why. Written to stderr directly, not through
/// `eprintln!`, so that the test harness shows it even when the test passes.
pub fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {why}");
}

/// Whether this test may mount filesystems (root, for a private mount namespace): when not,
/// says SKIPPED and returns false, or fails under CI, where the suite runs as root.
pub fn may_mount(what: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} needs root under CI"
    );
    skipped(&format!("{what}: needs root (a private mount namespace)"));
    false
}

/// `sh -c script` in a private mount namespace where `dir` is a tmpfs of `size` (`11m`)
/// that starts with a copy of what `dir` holds: a disk that fills up, seen by that process
/// tree alone. Needs [`may_mount`].
pub fn on_small_tmpfs(dir: &Path, size: &str, script: &str) -> std::process::Command {
    let dir = dir.display();
    let whole = format!(
        "stash=$(mktemp -d) && cp -a '{dir}/.' \"$stash\" && \
         mount -t tmpfs -o size={size} tmpfs '{dir}' && cp -a \"$stash/.\" '{dir}' && \
         rm -rf \"$stash\" && {script}"
    );
    let mut command = std::process::Command::new("unshare");
    command
        .args(["-m", "--propagation", "private", "sh", "-c", &whole])
        .env("RUST_LOG", "info");
    command
}

/// The `mupdate` binary running as a child process.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ServerProcess {
    /// Starts `mupdate -C conf args…` and waits for its "listening on" line.
    pub fn start(conf: &Path, args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut command_line = vec!["-C".to_owned(), conf.display().to_string()];
        command_line.extend(args.iter().map(|a| a.to_string()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServerProcess::start_with(&command_line, &env)
    }

    /// Starts `mupdate args…` with `env` added and waits for its "listening on" line.
    pub fn start_with(args: &[String], env: &[(String, String)]) -> ServerProcess {
        let mut server = ServerProcess::spawn(args, env);
        server.addr = server
            .address_after("listening on ")
            .parse()
            .expect("listening address");
        server
    }

    /// Starts `mupdate args…` with `env` added without waiting for it to accept clients
    /// (a slave does only after its first sync): `addr` stays 0.0.0.0:0.
    pub fn spawn(args: &[String], env: &[(String, String)]) -> ServerProcess {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mupdate"));
        command.args(args).env("RUST_LOG", "info");
        for (k, v) in env {
            command.env(k, v);
        }
        ServerProcess::spawn_command(command)
    }

    /// Starts `command` (one that runs `mupdate`, maybe through a wrapper) with its log
    /// collected, without waiting for it: `addr` stays 0.0.0.0:0.
    pub fn spawn_command(mut command: std::process::Command) -> ServerProcess {
        use std::io::BufRead;
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("spawn mupdate");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        ServerProcess {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stderr: log,
        }
    }

    /// The `host:port` its log gives right after `marker`, once the log has it.
    pub fn address_after(&self, marker: &str) -> String {
        let log = self.log_once_it_holds(marker);
        let at = log.find(marker).unwrap_or_default() + marker.len();
        address_at(&log[at..])
    }

    /// The log so far, once it holds `needle` (another process's doing may reach this
    /// log a moment after that process answered); panics after `PATIENCE`.
    pub fn log_once_it_holds(&self, needle: &str) -> String {
        self.log_once_it_holds_within(needle, PATIENCE)
    }

    /// [`ServerProcess::log_once_it_holds`] with a patience of its own (a long sync).
    pub fn log_once_it_holds_within(&self, needle: &str, patience: Duration) -> String {
        let deadline = std::time::Instant::now() + patience;
        loop {
            let log = self.stderr.lock().map(|l| l.clone()).unwrap_or_default();
            if log.contains(needle) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the log never said {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` and waits for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("kill");
        self.child.wait().expect("wait")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A test CA and a server certificate it signed, in PEM.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    /// A new CA, and a certificate for `names` (DNS names or IP addresses).
    pub fn new(names: &[&str]) -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mupdate test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server_params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        Pki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            cert_pem: server_cert.pem(),
            key_pem: server_key.serialize_pem(),
        }
    }
}

/// A port the OS just gave out on 127.0.0.1 and took back, for a server whose own
/// configuration must name its port before it starts (`-a`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Writes a configuration for a child-process master in `dir`, listening on port 0.
pub fn write_process_config(dir: &Path, extra: &str) -> PathBuf {
    write_passwd(dir);
    let conf = dir.join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "{}mupdate_listen: 127.0.0.1:0\nmupdate_http_listen: 127.0.0.1:0\n{extra}",
            base_config(dir)
        ),
    )
    .expect("write conf");
    conf
}

/// A client that has read the banner and logged in as the admin.
pub async fn logged_in(addr: SocketAddr) -> Client {
    let mut client = Client::connect(addr).await;
    client.read_banner().await;
    client.exchange(AUTH, b"A0 OK \"Authenticated\"\r\n").await;
    client
}

/// The whole LIST answer of a server (tag `L`).
pub async fn list(client: &mut Client) -> Vec<u8> {
    client.send(b"L LIST\r\n").await;
    client.read_until(b"L OK \"list complete\"\r\n").await
}

/// Polls `slave`'s LIST until it equals `master`'s; a NOOP first makes the slave check with
/// its master (a barrier on Cyrus slaves and ours alike).
pub async fn converge(slave: &mut Client, master: &mut Client) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ours = list(master).await;
        slave
            .exchange(b"N NOOP\r\n", b"N OK \"Noop done\"\r\n")
            .await;
        let theirs = list(slave).await;
        if theirs == ours {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no convergence:\n{}\nvs master\n{}",
            String::from_utf8_lossy(&theirs),
            String::from_utf8_lossy(&ours)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The configuration of one of our slaves following `master`, in `dir`.
pub fn follow_config(dir: &Path, master: SocketAddr) -> PathBuf {
    write_process_config(
        dir,
        &format!(
            "mupdate_server: {master}\nmupdate_authname: mupdate\nmupdate_password: mupdatepass\n\
             mupdate_retry_delay: 1\n"
        ),
    )
}

/// The `host:port` address at the start of `text` (plain or JSON log lines).
pub fn address_at(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect()
}

/// Runs `command` with `input` on its stdin; its output once it has exited.
pub fn output_with_input(
    command: &mut std::process::Command,
    input: &[u8],
) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("output")
}

/// A passwd-file line for `user` made by `mupdate hash-password` with `scheme`.
pub fn hash_password_line(user: &str, scheme: &str, password: &str) -> String {
    let out = output_with_input(
        std::process::Command::new(env!("CARGO_BIN_EXE_mupdate")).args([
            "hash-password",
            "--user",
            user,
            "--scheme",
            scheme,
        ]),
        password.as_bytes(),
    );
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// A passwd-file line for `user` holding a SCRAM-SHA-256 verifier of `password`, made by
/// `mupdate hash-password`.
pub fn scram_passwd_line(user: &str, password: &str) -> String {
    hash_password_line(user, "scram-sha256", password)
}

/// `GET path` over HTTP/1.1 on `addr`: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect over HTTP");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("response");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let chunked = head
        .lines()
        .any(|line| line.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

/// A chunked body's content: Go's servers (Prometheus) chunk any answer past 2 KiB.
fn dechunk(mut body: &str) -> String {
    let mut content = String::new();
    while let Some((size_line, rest)) = body.split_once("\r\n") {
        let size = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).expect("chunk size");
        if size == 0 {
            break;
        }
        content.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").expect("chunk end");
    }
    content
}

/// Asserts that `text` (a metrics page, a log) contains `needle`, showing it when not.
pub fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "no {needle:?} in:\n{text}");
}

/// The sidecar address a server process logged.
pub fn sidecar_of(server: &ServerProcess) -> String {
    server.address_after("sidecar on http://")
}

/// Debian's Prometheus scraping `targets` every second, stopped when dropped.
pub struct Prometheus {
    child: std::process::Child,
    /// Its HTTP API, `host:port`.
    pub web: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts it, or `None` (SKIPPED; a failure under CI) when it is not installed.
    pub fn start(targets: &[String]) -> Option<Prometheus> {
        if !cyrus_available("Prometheus", "/usr/bin/prometheus") {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mupdate\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("prometheus.yml");
        let web = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("its log"))
            .spawn()
            .expect("start prometheus");
        Some(Prometheus { child, web, dir })
    }

    /// The API's answer to an instant query (JSON). When Prometheus gives none (not listening,
    /// or not JSON) after three tries, an object saying what it gave, with the tail of its log.
    pub fn query(&self, query: &str) -> serde_json::Value {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let mut failure = serde_json::Value::Null;
        for _ in 0..3 {
            if std::net::TcpStream::connect(&self.web).is_err() {
                failure = serde_json::json!({"status": "not listening"});
            } else {
                let (code, body) = http_get(&self.web, &format!("/api/v1/query?query={encoded}"));
                match serde_json::from_str(&body) {
                    Ok(answer) => return answer,
                    Err(_) => failure = serde_json::json!({"status": code, "body": body}),
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let log =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        failure["log"] = serde_json::json!(tail);
        failure
    }

    /// Waits (60 s at most) until every target is scraped and up.
    pub fn wait_until_up(&self, targets: usize) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let up = self.query("sum(up{job=\"mupdate\"})");
            if up["data"]["result"][0]["value"][1].as_str() == Some(&targets.to_string()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
