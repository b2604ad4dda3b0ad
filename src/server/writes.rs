//! RESERVE, ACTIVATE, DEACTIVATE and DELETE (spec §5.4-5.7): a write applied to the store,
//! its answer queued on the output once it is durable.

use super::notices::{no, ok};
use crate::mailbox::MailboxWrite;
use crate::store::{Mutation, Outcome, Store};

/// Applies `write`, tagged `tag`, to `store` and queues its answer in `out`.
pub(super) async fn apply(store: &Store, tag: &[u8], write: MailboxWrite, out: &mut Vec<u8>) {
    let creates = matches!(
        write,
        MailboxWrite::Activate { .. } | MailboxWrite::Reserve { .. }
    );
    if creates && write.name().is_empty() {
        // D-7: Cyrus accepts the empty name and corrupts its database.
        no(out, tag, "invalid mailbox name");
        return;
    }
    match store.apply(Mutation::from(write)).await {
        Ok(Outcome::Done) => ok(out, tag, "done"),
        Ok(Outcome::AlreadyExists) => no(out, tag, "mailbox already exists"),
        Ok(Outcome::NotActive) => no(out, tag, "mailbox not currently active"),
        Ok(Outcome::DoesNotExist) => no(out, tag, "mailbox doesn't exist"),
        Err(error) => {
            tracing::error!(%error, "write failed");
            no(out, tag, "database error");
        }
    }
}
