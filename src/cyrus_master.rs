//! Running as a service of Cyrus master(8) (spec §16): master hands over the listening
//! socket as fd 4 and a status pipe as fd 3, sets `CYRUS_SERVICE`, and expects the service
//! to accept on fd 4 itself, exit 0 on SIGTERM or SIGHUP, and stop when master is gone.
//!
//! The status pipe is checked but never written: its messages are optional for a
//! multi-threaded service (master uses CONNECTION_MULTI only for a counter), and after
//! master drops privileges the pipe can no longer be reopened through /proc.

use std::net::TcpListener;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;

use crate::exit::{EXIT_CONFIG, EXIT_OS, Fatal, fatal};

/// The listening socket master hands over.
const LISTEN_FD: usize = 4;

/// How the process was started.
pub enum Launch {
    /// Bind `mupdate_listen` ourselves.
    Standalone,
    /// Accept on master's socket and report to master.
    UnderMaster(MasterLink),
}

/// What master(8) handed over.
pub struct MasterLink {
    /// The listening socket (fd 4).
    pub listener: TcpListener,
    /// master's pid: once we are re-parented, master is gone.
    pub parent: u32,
}

/// Works out how we were started. Under master, the first start re-executes this program
/// with `LISTEN_FDS`/`LISTEN_PID` describing fds 3 and 4 (same pid, same descriptors), so
/// that they can be adopted through the `listenfd` crate rather than by raw descriptor.
pub fn detect() -> Result<Launch, Fatal> {
    if std::env::var_os("CYRUS_SERVICE").is_none() {
        return Ok(Launch::Standalone);
    }
    if std::env::var("CYRUS_ISDAEMON").as_deref() == Ok("1") {
        return Err(fatal(
            EXIT_CONFIG,
            "mupdate cannot run as a cyrus.conf DAEMON entry; list it under SERVICES",
        ));
    }
    let pid = std::process::id().to_string();
    if std::env::var("LISTEN_PID").ok().as_deref() != Some(pid.as_str()) {
        let exe = std::env::current_exe()
            .map_err(|e| fatal(EXIT_OS, format!("cannot find our own executable: {e}")))?;
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
        let error = std::process::Command::new(&exe)
            .arg0(argv0)
            .args(args)
            .env("LISTEN_FDS", "2")
            .env("LISTEN_PID", &pid)
            .exec();
        return Err(fatal(
            EXIT_OS,
            format!("cannot re-execute {}: {error}", exe.display()),
        ));
    }
    let mut fds = listenfd::ListenFd::from_env();
    let listener = fds
        .take_tcp_listener(LISTEN_FD - 3)
        .map_err(|e| {
            fatal(
                EXIT_OS,
                format!("fd {LISTEN_FD} is not master's listening socket: {e}"),
            )
        })?
        .ok_or_else(|| fatal(EXIT_OS, format!("fd {LISTEN_FD} was not handed over")))?;
    if !socket2::SockRef::from(&listener)
        .is_listener()
        .unwrap_or(false)
    {
        return Err(fatal(
            EXIT_OS,
            format!("fd {LISTEN_FD} is not a listening socket"),
        ));
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| fatal(EXIT_OS, format!("fd {LISTEN_FD}: {e}")))?;
    if !status_pipe_is_writable() {
        return Err(fatal(
            EXIT_OS,
            "fd 3 is not master's status pipe open for writing",
        ));
    }
    Ok(Launch::UnderMaster(MasterLink {
        listener,
        parent: std::os::unix::process::parent_id(),
    }))
}

/// fd 3 is a pipe (stat through /proc needs no permission on it) opened for writing
/// (the access mode in /proc/self/fdinfo/3 is O_WRONLY or O_RDWR).
fn status_pipe_is_writable() -> bool {
    let is_pipe = std::fs::metadata("/proc/self/fd/3").is_ok_and(|m| m.file_type().is_fifo());
    let flags = std::fs::read_to_string("/proc/self/fdinfo/3")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        });
    is_pipe && flags.is_some_and(|f| f & 0o3 != 0)
}
