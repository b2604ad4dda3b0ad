//! Command line, as `mupdate(8)`: `-C config`, `-m` (master), `-a` (autoselect), plus the
//! `hash-password` helper for `mupdate_passwd_file`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::auth::passwd_file::Scheme;

/// mupdate: the Cyrus murder mailbox-list server.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Configuration file (imapd.conf syntax).
    #[arg(short = 'C', value_name = "CONFIG", default_value = "/etc/imapd.conf")]
    pub config: PathBuf,
    /// Run as the master (default: slave).
    #[arg(short = 'm')]
    pub master: bool,
    /// Master if `mupdate_server` names this host, slave otherwise.
    #[arg(short = 'a')]
    pub autoselect: bool,
    /// Set an option, overriding imapd.conf and IMAPD_* variables (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Accepted for Cyrus compatibility (Cyrus runs its debug_command); ignored.
    #[arg(short = 'D', hide = true)]
    pub debug: bool,
    /// A helper instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Helpers.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read a password on stdin and print a `user:{SCHEME}hash` line for mupdate_passwd_file.
    HashPassword {
        /// User name to put in front of the hash.
        #[arg(long, default_value = "mupdate")]
        user: String,
        /// Hashing scheme.
        #[arg(long, value_enum, default_value = "argon2id")]
        scheme: Scheme,
    },
    /// Print the effective configuration (imapd.conf layered with IMAPD_* variables), each
    /// option with where it was set; passwords and secrets masked.
    Config {
        /// Configuration file.
        #[arg(short = 'C', default_value = "/etc/imapd.conf")]
        config: PathBuf,
        /// Options set on the command line, as the server would be given them.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Write a server's whole mailbox list to a portable dump (MUPDATE's own response format).
    Dump {
        /// Configuration (credentials: mupdate_authname, mupdate_password or $MUPDATE_PASSWORD).
        #[arg(short = 'C', default_value = "/etc/imapd.conf")]
        config: PathBuf,
        /// Server to dump (default: this configuration's mupdate_server, else mupdate_listen).
        #[arg(long)]
        server: Option<String>,
        /// Output file (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Replace this configuration's (stopped) store with a dump; slaves resync in full.
    Restore {
        /// Configuration naming the store.
        #[arg(short = 'C', default_value = "/etc/imapd.conf")]
        config: PathBuf,
        /// A file written by `dump`.
        file: PathBuf,
    },
    /// Compare a slave with its master and report every difference (exit 1 if any).
    Check {
        /// Configuration (credentials as for `dump`).
        #[arg(short = 'C', default_value = "/etc/imapd.conf")]
        config: PathBuf,
        /// The master, host:port.
        #[arg(long)]
        master: String,
        /// The slave, host:port.
        #[arg(long)]
        slave: String,
    },
}
