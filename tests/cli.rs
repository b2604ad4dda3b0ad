//! The `mupdate` binary: flags, configuration errors and exit codes, environment
//! overrides, signals, and the hash-password helper.

mod common;

use std::process::Command;

use common::*;
use nix::sys::signal::Signal;

fn mupdate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mupdate"))
}

#[test]
fn bad_config_value_exits_78_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {}\nmupdate_connections_max: lots\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = mupdate().arg("-C").arg(&conf).arg("-m").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2", conf.display()))
            && stderr.contains("mupdate_connections_max"),
        "{stderr}"
    );
}

#[test]
fn bad_config_syntax_and_missing_file_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("imapd.conf");
    std::fs::write(&conf, "configdirectory /x\n").unwrap();
    let out = mupdate().arg("-C").arg(&conf).arg("-m").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":1: invalid option name"));
    let out = mupdate()
        .arg("-C")
        .arg(dir.path().join("missing.conf"))
        .arg("-m")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn environment_overrides_the_file_and_reports_its_own_errors() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "");
    let mut server = ServerProcess::start(&conf, &["-m"], &[("IMAPD_SERVERNAME", "from-env")]);
    let banner = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket;s=socket.create_connection(('127.0.0.1',{}));import time;time.sleep(0.3);print(s.recv(4096).decode())",
                server.addr.port()
            ),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&banner.stdout).contains("\"from-env\""),
        "{}",
        String::from_utf8_lossy(&banner.stdout)
    );
    assert_eq!(server.signal_and_wait(Signal::SIGTERM).code(), Some(0));
    let out = mupdate()
        .arg("-C")
        .arg(&conf)
        .arg("-m")
        .env("IMAPD_FAILEDLOGINPAUSE", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_contains(&stderr, "environment variable IMAPD_FAILEDLOGINPAUSE");
}

#[test]
fn sigterm_and_sighup_exit_zero() {
    for signal in [Signal::SIGTERM, Signal::SIGHUP] {
        let dir = tempfile::tempdir().unwrap();
        let conf = write_process_config(dir.path(), "");
        let mut server = ServerProcess::start(&conf, &["-m"], &[]);
        assert_eq!(server.signal_and_wait(signal).code(), Some(0), "{signal}");
    }
}

#[test]
fn second_instance_on_the_same_database_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "");
    let mut first = ServerProcess::start(&conf, &["-m"], &[]);
    let out = mupdate().arg("-C").arg(&conf).arg("-m").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    assert_eq!(first.signal_and_wait(Signal::SIGTERM).code(), Some(0));
}

#[test]
fn slave_mode_without_mupdate_server_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "");
    let out = mupdate().arg("-C").arg(&conf).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mupdate_server"));
}

#[test]
fn unified_master_with_mupdate_server_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(
        dir.path(),
        "mupdate_server: 127.0.0.1:1\nmupdate_config: unified\n",
    );
    let out = mupdate().arg("-C").arg(&conf).arg("-m").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unified"));
}

#[test]
fn hash_password_lines_log_in() {
    for scheme in ["argon2id", "ssha256", "plain"] {
        let line = hash_password_line("mupdate", scheme, "mupdatepass\n");
        assert!(line.starts_with("mupdate:{"), "{line}");
        assert!(
            mupdate::auth::passwd_file::verify_in(&line, "mupdate", b"mupdatepass"),
            "{scheme}: {line}"
        );
        assert!(!line.contains("mupdatepass") || scheme == "plain");
    }
}

#[test]
fn under_master_without_its_descriptors_exits_71_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "");
    let out = mupdate()
        .arg("-C")
        .arg(&conf)
        .arg("-m")
        .env("CYRUS_SERVICE", "mupdate")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(71),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("fd 4"));
    let out = mupdate()
        .arg("-C")
        .arg(&conf)
        .arg("-m")
        .env("CYRUS_SERVICE", "mupdate")
        .env("CYRUS_ISDAEMON", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn config_prints_effective_options_with_origins_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "mupdate_password: hunter2\n");
    let out = mupdate()
        .args(["config", "-C"])
        .arg(&conf)
        .env("IMAPD_SERVERNAME", "from-env")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_contains(
        &text,
        "servername: from-env\t# environment variable IMAPD_SERVERNAME",
    );
    assert!(
        text.contains(&format!("admins: mupdate\t# {}:3", conf.display())),
        "{text}"
    );
    assert_contains(&text, "mupdate_password: ********");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "mupdate_log_format: json\n");
    let mut server = ServerProcess::start(&conf, &["-m"], &[]);
    assert_eq!(server.signal_and_wait(Signal::SIGTERM).code(), Some(0));
    let log = server.stderr.lock().map(|l| l.clone()).unwrap_or_default();
    let mut lines = 0;
    for line in log.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(
            value["level"].is_string() && value["fields"]["message"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 2, "{log}");
}

#[test]
fn the_command_line_overrides_the_environment_which_overrides_imapd_conf() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "maxword: 1000\nmaxquoted: 1000\n");
    let out = mupdate()
        .args(["config", "-C"])
        .arg(&conf)
        .args([
            "--set",
            "MAXQUOTED=3000",
            "--set",
            "mupdate_ready_max_lag=90",
        ])
        .env("IMAPD_MAXQUOTED", "2000")
        .env("IMAPD_MAXWORD", "2000")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_contains(&text, "maxquoted: 3000\t# command line --set maxquoted");
    assert_contains(&text, "maxword: 2000\t# environment variable IMAPD_MAXWORD");
    assert_contains(
        &text,
        "mupdate_ready_max_lag: 90\t# command line --set mupdate_ready_max_lag",
    );

    // A bad value on the command line is reported as coming from there, exit 78.
    let out = mupdate()
        .args(["-m", "-C"])
        .arg(&conf)
        .args(["--set", "mupdate_ready_max_lag=soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_contains(&stderr, "command line --set mupdate_ready_max_lag");
    let out = mupdate()
        .args(["-m", "-C"])
        .arg(&conf)
        .args(["--set", "no-equals-sign"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected KEY=VALUE"));
}

#[test]
fn a_mailboxes_db_we_cannot_keep_exits_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_process_config(dir.path(), "mupdate_mailboxes_db: on\nmboxlist_db: sql\n");
    let out = mupdate().arg("-C").arg(&conf).arg("-m").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("option 'mboxlist_db'") && stderr.contains("\"sql\""),
        "{stderr}"
    );
    let missing = dir.path().join("no-such-dir/mailboxes.db");
    let conf = write_process_config(
        dir.path(),
        &format!(
            "mupdate_mailboxes_db: on\nmboxlist_db_path: {}\n",
            missing.display()
        ),
    );
    let out = mupdate().arg("-C").arg(&conf).arg("-m").output().unwrap();
    assert_eq!(out.status.code(), Some(73));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}
