//! Cyrus's on-disk formats: the twoskip database and the `mailboxes.db` records a
//! frontend's imapd, lmtpd and pop3d read from it. A leaf: no tokio, no redb.

pub mod mboxlist;
pub mod twoskip;
