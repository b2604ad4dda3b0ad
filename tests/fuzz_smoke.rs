//! Every fuzz target builds and runs briefly from its seed corpus (the long runs are in the
//! README). Needs cargo-fuzz (scripts/install-test-deps.sh installs it); the targets build
//! on the stable toolchain with RUSTC_BOOTSTRAP=1 for cargo-fuzz's -Z flags. New inputs go
//! to a temporary corpus, so the committed seeds stay as they are.

mod common;

use std::path::Path;
use std::process::Command;

const TARGETS: [&str; 8] = [
    "parse_command",
    "imapd_conf",
    "sasl",
    "twoskip",
    "parse_reply",
    "inflate",
    "leader_value",
    "write_ahead_log",
];

fn cargo_fuzz_available() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn every_fuzz_target_builds_and_runs_from_its_seeds() {
    if !cargo_fuzz_available() {
        assert!(
            std::env::var("CI").is_err(),
            "cargo-fuzz is missing: scripts/install-test-deps.sh installs it"
        );
        common::skipped(
            "fuzz smoke run: cargo-fuzz not installed (run scripts/install-test-deps.sh)",
        );
        return;
    }
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for target in TARGETS {
        let corpus = tempfile::tempdir().unwrap();
        let artifacts = tempfile::tempdir().unwrap();
        let out = Command::new("cargo")
            .current_dir(&fuzz)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target])
            .arg(corpus.path())
            .arg(fuzz.join("seeds").join(target))
            .arg("--")
            .arg("-max_total_time=10")
            .arg("-seed=1")
            .arg(format!("-artifact_prefix={}/", artifacts.path().display()))
            .output()
            .expect("cargo fuzz runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{target}:\n{stderr}");
        assert!(
            stderr.contains("Done"),
            "{target} did not finish its run:\n{stderr}"
        );
    }
}
