//! RESERVE, ACTIVATE, DEACTIVATE and DELETE (spec §5.4-5.7): a write applied to the store,
//! its answer queued on the output once it is durable.

use super::notices::{no, ok};
use crate::protocol::CommandKind;
use crate::store::{Mutation, Outcome, Store};

/// Applies the write `kind`, tagged `tag`, to `store` and queues its answer in `out`;
/// any other command is left alone.
pub(super) async fn apply(store: &Store, tag: &[u8], kind: CommandKind, out: &mut Vec<u8>) {
    let mutation = match kind {
        CommandKind::Activate {
            name,
            location,
            acl,
        } => Mutation::Activate {
            name,
            location,
            acl,
        },
        CommandKind::Reserve { name, location } => Mutation::Reserve { name, location },
        CommandKind::Deactivate { name, location } => Mutation::Deactivate { name, location },
        CommandKind::Delete { name } => Mutation::Delete { name },
        _ => return,
    };
    let creates = matches!(
        mutation,
        Mutation::Activate { .. } | Mutation::Reserve { .. }
    );
    if creates && mutation.name().is_empty() {
        // D-7: Cyrus accepts the empty name and corrupts its database.
        no(out, tag, "invalid mailbox name");
        return;
    }
    match store.apply(mutation).await {
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
