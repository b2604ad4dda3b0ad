//! The Cyrus fixture: real Cyrus 3.6.1 processes (Debian's `cyrus-murder`) under Cyrus
//! master(8), each from a private directory on 127.0.0.1, stopped by pid. Every interop
//! scenario builds on this one module.

use std::net::SocketAddr;

use super::free_port;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs Cyrus's programs.
pub const CYRUS_BIN: &str = "/usr/lib/cyrus/bin";

/// A Cyrus master(8) running one service.
pub struct Cyrus {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    master_pid: u32,
    greeting: Vec<u8>,
}

/// What the instance runs.
pub enum Service<'a> {
    /// `mupdate -m`
    MupdateMaster,
    /// `mupdate` replicating from `master` (host:port)
    MupdateSlave { master: &'a str, retry_delay: u32 },
    /// A backend: `imapd` whose mailbox changes go to the MUPDATE master `mupdate`.
    Backend { mupdate: &'a str },
    /// Our `mupdate -m`, started by Cyrus master(8) as its mupdate service.
    Ours,
    /// A frontend: proxying `imapd` plus the local mupdate (`local`) that writes the
    /// mailboxes.db the frontend reads; `mupdate` is the master its imapd names; new
    /// mailboxes go to `backends`.
    Frontend {
        mupdate: &'a str,
        backends: &'a str,
        local: LocalMupdate,
    },
}

/// The mupdate a frontend's master(8) runs beside its imapd.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LocalMupdate {
    /// Cyrus's own mupdate, a slave of the frontend's `mupdate_server`.
    Cyrus,
    /// Our binary, a slave of the frontend's `mupdate_server`.
    OurSlave,
    /// Our binary as the murder's master (`-m`), on `port` (the frontend's
    /// `mupdate_server` then names 127.0.0.1:`port`).
    OurMaster { port: u16 },
}

/// Copies our binary where master(8), running as user cyrus, can start it, with a passwd
/// file for the murder's `mupdate` identity; returns the imapd.conf lines it needs.
fn install_ours(root: &Path) -> String {
    std::fs::copy(env!("CARGO_BIN_EXE_mupdate"), root.join("mupdate")).expect("copy binary");
    std::fs::write(root.join("passwd"), "mupdate:{PLAIN}mupdatepass\n").expect("passwd");
    format!(
        "mupdate_passwd_file: {}/passwd\nmupdate_http_listen: 127.0.0.1:0\n",
        root.display()
    )
}

/// Whether the Cyrus fixture can run here; without Cyrus (or root) the caller skips, and
/// under `CI=true` that is a failure.
pub fn available(test: &str) -> bool {
    if !super::cyrus_available(test, &format!("{CYRUS_BIN}/master")) {
        return false;
    }
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: Cyrus master(8) needs root under CI"
        );
        super::skipped(&format!(
            "{test}: Cyrus master(8) needs root (it drops to user cyrus)"
        ));
        return false;
    }
    true
}

/// Adds `user` with `password` in `realm` to the sasldb file `db` (Cyrus SASL's tool).
pub fn saslpasswd(db: &Path, realm: &str, user: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new("saslpasswd2")
        .args(["-p", "-c", "-f"])
        .arg(db)
        .args(["-u", realm, user])
        .stdin(Stdio::piped())
        .spawn()
        .expect("saslpasswd2");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("password");
    assert!(child.wait().expect("saslpasswd2").success());
}

fn run(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Cyrus {
    /// Starts master(8) with `service` named `servername`, and waits for its banner.
    pub fn start(service: Service<'_>, servername: &str, extra: &str) -> Cyrus {
        let dir = tempfile::Builder::new()
            .prefix("cyrus-fixture")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_owned();
        let port = free_port();
        // A backend is reached as `<servername>!<partition>`; Cyrus connects to `host:port`.
        let servername = if servername.is_empty() {
            format!("127.0.0.1:{port}")
        } else {
            servername.to_owned()
        };
        let servername = servername.as_str();
        for sub in ["conf/socket", "conf/proc", "conf/lock", "conf/log", "spool"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        let r = root.display();
        let (entry, program, greeting, service_conf) = match &service {
            Service::MupdateMaster => {
                ("mupdate", "mupdate -m", &b"* OK MUPDATE"[..], String::new())
            }
            Service::MupdateSlave {
                master,
                retry_delay,
            } => (
                "mupdate",
                "mupdate",
                &b"* OK MUPDATE"[..],
                format!(
                    "mupdate_server: {master}\nmupdate_authname: mupdate\nmupdate_password: mupdatepass\nmupdate_retry_delay: {retry_delay}\n"
                ),
            ),
            Service::Ours => (
                "mupdate",
                "__OURS__ -m",
                &b"* OK MUPDATE"[..],
                install_ours(&root),
            ),
            Service::Frontend {
                mupdate,
                backends,
                local,
            } => (
                "imap",
                "imapd",
                &b"* OK "[..],
                format!(
                    "mupdate_server: {mupdate}\nmupdate_authname: mupdate\nmupdate_password: mupdatepass\n\
                     mupdate_retry_delay: 2\nserverlist: {backends}\nproxy_authname: proxy\nproxy_password: proxypass\n\
                     unixhierarchysep: no\naltnamespace: no\n{}",
                    if *local == LocalMupdate::Cyrus {
                        String::new()
                    } else {
                        install_ours(&root)
                    }
                ),
            ),
            Service::Backend { mupdate } => (
                "imap",
                "imapd",
                &b"* OK "[..],
                format!(
                    "mupdate_server: {mupdate}\nmupdate_authname: mupdate\nmupdate_password: mupdatepass\n\
                     proxyservers: proxy\nunixhierarchysep: no\naltnamespace: no\n"
                ),
            ),
        };
        // PLAIN unless the test chooses (Cyrus refuses an option given twice).
        let mech_list = if extra.contains("sasl_mech_list:") {
            ""
        } else {
            "sasl_mech_list: PLAIN\n"
        };
        std::fs::write(
            root.join("imapd.conf"),
            format!(
                "configdirectory: {r}/conf\nproc_path: {r}/conf/proc\nmboxname_lockpath: {r}/conf/lock\n\
                 defaultpartition: default\npartition-default: {r}/spool\nservername: {servername}\n\
                 admins: mupdate admin\nallowplaintext: yes\nsasl_pwcheck_method: auxprop\nsasl_auxprop_plugin: sasldb\n\
                 sasl_sasldb_path: {r}/sasldb2\n{mech_list}sasl_auto_transition: no\nfailedloginpause: 0\n\
                 {service_conf}{extra}"
            ),
        )
        .expect("imapd.conf");
        let program = program.replace("__OURS__", &format!("{r}/mupdate"));
        // A frontend also runs its local mupdate, on a port of its own.
        let slave = match service {
            Service::Frontend { local, .. } => {
                let (command, port) = match local {
                    LocalMupdate::Cyrus => ("mupdate".to_owned(), free_port()),
                    LocalMupdate::OurSlave => (format!("{r}/mupdate"), free_port()),
                    LocalMupdate::OurMaster { port } => (format!("{r}/mupdate -m"), port),
                };
                format!(
                    "  mupdate cmd=\"{command} -C {r}/imapd.conf\" listen=\"127.0.0.1:{port}\" prefork=1\n"
                )
            }
            _ => String::new(),
        };
        std::fs::write(
            root.join("cyrus.conf"),
            format!(
                "START {{\n}}\nSERVICES {{\n{slave}  {entry} cmd=\"{program} -C {r}/imapd.conf\" listen=\"127.0.0.1:{port}\" prefork=1\n}}\nEVENTS {{\n}}\n"
            ),
        )
        .expect("cyrus.conf");
        for (user, password) in [
            ("mupdate", "mupdatepass"),
            ("bob", "bobpass"),
            ("admin", "adminpass"),
            ("proxy", "proxypass"),
        ] {
            saslpasswd(&root.join("sasldb2"), servername, user, password);
        }
        // master(8) drops to user cyrus: it must reach and own the instance directory.
        run(Command::new("chmod").arg("755").arg(&root));
        run(Command::new("chown").args(["-R", "cyrus"]).arg(&root));
        run(Command::new("chmod").arg("640").arg(root.join("sasldb2")));
        let mut cyrus = Cyrus {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            master_pid: 0,
            greeting: greeting.to_vec(),
        };
        cyrus.launch();
        cyrus
    }

    /// Starts master(8) on this instance and waits for the service's greeting.
    fn launch(&mut self) {
        let root = self.path();
        let _ = std::fs::remove_file(root.join("master.pid"));
        run(Command::new(format!("{CYRUS_BIN}/master"))
            .arg("-d")
            .arg("-C")
            .arg(root.join("imapd.conf"))
            .arg("-M")
            .arg(root.join("cyrus.conf"))
            .arg("-p")
            .arg(root.join("master.pid"))
            .arg("-L")
            .arg(root.join("master.log")));
        let deadline = Instant::now() + Duration::from_secs(60);
        self.master_pid = loop {
            if let Ok(text) = std::fs::read_to_string(root.join("master.pid"))
                && let Ok(pid) = text.trim().parse::<u32>()
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "master(8) wrote no pid file");
            std::thread::sleep(Duration::from_millis(50));
        };
        let greeting = self.greeting.clone();
        self.wait_for_greeting(&greeting, Duration::from_secs(60));
    }

    /// Stops master(8) and starts it again on the same directory and port.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let master = Pid::from_raw(self.master_pid as i32);
        let _ = kill(master, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while kill(master, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if kill(master, None).is_ok() {
            let _ = kill(master, Signal::SIGKILL);
        }
    }

    /// Waits until the service greets (a slave greets only after its first sync).
    pub fn wait_for_greeting(&self, greeting: &[u8], patience: Duration) {
        use std::io::Read;
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(mut stream) = std::net::TcpStream::connect(self.addr) {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if super::find(&seen, greeting).is_some() {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "Cyrus on {} did not greet; master.log: {}",
            self.addr,
            std::fs::read_to_string(self.path().join("master.log")).unwrap_or_default()
        );
    }

    /// master(8)'s pid.
    pub fn master_pid(&self) -> u32 {
        self.master_pid
    }

    /// The processes master(8) has forked and not yet reaped.
    pub fn children(&self) -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.master_pid))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Runs `cyr_dbtool <copy> twoskip <action>` on a copy of this instance's
    /// mailboxes.db (opening a file may recover it: the original stays untouched).
    pub fn mailboxes_db_tool(&self, action: &str) -> Output {
        let db = self.path().join("conf/mailboxes.db");
        let copy = self.path().join(format!("conf/{action}-copy.db"));
        std::fs::copy(&db, &copy).expect("copy mailboxes.db");
        run(Command::new("chown").arg("cyrus").arg(&copy));
        self.tool(
            "cyr_dbtool",
            &[copy.to_str().expect("path"), "twoskip", action],
        )
    }

    /// Runs a Cyrus tool as user cyrus with this instance's configuration.
    pub fn tool(&self, name: &str, args: &[&str]) -> Output {
        run(Command::new("runuser")
            .args(["-u", "cyrus", "--"])
            .arg(Path::new(CYRUS_BIN).join(name))
            .arg("-C")
            .arg(self.path().join("imapd.conf"))
            .args(args))
    }
}

impl Drop for Cyrus {
    fn drop(&mut self) {
        self.stop();
    }
}
