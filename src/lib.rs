//! mupdate: a Cyrus-compatible MUPDATE (RFC 3656) server.
//!
//! Layout:
//! - [`protocol`]: sans-I/O parser and encoder of the wire protocol;
//! - [`mailbox`]: the mailbox write, as asked for, applied and streamed;
//! - [`store`]: the redb mailbox list, its single group-committing writer and change feed;
//! - [`server`]: the listener, per-connection sessions and command handlers;
//! - [`replication`]: the slave's link to its master;
//! - [`auth`]: SASL PLAIN and the password sources (passwd file, saslauthd);
//! - [`cyrusdb`]: Cyrus's twoskip format and the mailboxes.db records a frontend reads;
//! - [`projection`]: Cyrus's mailboxes.db kept in step with the store, for frontends;
//! - [`config`]: imapd.conf parsing (Cyrus rules) layered with the environment via figment;
//! - [`observability`]: logging set-up;
//! - [`cyrus_master`]: running as a service of Cyrus master(8) (fd handoff, status pipe);
//! - [`exit`]: exit codes and the start-up error that carries one;
//! - [`failover`]: master election through etcd, terms and the write fence;
//! - [`tls`]: rustls set-up for STARTTLS, server and client side;
//! - [`tools`]: operator tools (dump, restore, check);
//! - [`app`]: the composition root that wires them together.

#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod cyrus_master;
pub mod cyrusdb;
pub mod exit;
pub mod failover;
pub mod mailbox;
pub mod observability;
pub mod projection;
pub mod protocol;
pub mod replication;
pub mod server;
pub mod store;
pub mod tls;
pub mod tools;
