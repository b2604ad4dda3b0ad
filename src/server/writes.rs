//! RESERVE, ACTIVATE, DEACTIVATE and DELETE (spec §5.4-5.7): a write applied to the store,
//! its answer queued on the output once it is durable (and, with `mupdate_sync_replicas`,
//! held by that many replicas).

use super::ServerContext;
use super::notices::{no, ok};
use crate::mailbox::MailboxWrite;
use crate::store::{Mutation, Outcome};

/// Applies `write`, tagged `tag`, with `ctx`'s store and queues its answer in `out`.
pub(super) async fn apply(ctx: &ServerContext, tag: &[u8], write: MailboxWrite, out: &mut Vec<u8>) {
    let creates = matches!(
        write,
        MailboxWrite::Activate { .. } | MailboxWrite::Reserve { .. }
    );
    if creates && write.name().is_empty() {
        // D-7: Cyrus accepts the empty name and corrupts its database.
        no(out, tag, "invalid mailbox name");
        return;
    }
    let wanted = ctx.settings.sync_replicas;
    // Sync off (the usual case), a write takes no lock here.
    if wanted > 0 && wanted > ctx.sync_replicas.connected() {
        // Refused before anything is written: the safe answer when the write could not be
        // held anywhere but here.
        no(out, tag, "not enough synchronous replicas connected");
        return;
    }
    match ctx.store.apply(Mutation::from(write)).await {
        Ok(Outcome::Done) => {
            // The commit that took this write is at or before the store's seq now.
            let seq = ctx.store.last_seq();
            let patience = ctx.settings.sync_timeout;
            if wanted > 0
                && !ctx
                    .sync_replicas
                    .wait_until_held(seq, wanted, patience)
                    .await
            {
                tracing::warn!(
                    seq,
                    wanted,
                    "a write was not confirmed by its synchronous replicas in time"
                );
                no(out, tag, "not confirmed by synchronous replicas");
                return;
            }
            ok(out, tag, "done")
        }
        Ok(Outcome::AlreadyExists) => no(out, tag, "mailbox already exists"),
        Ok(Outcome::NotActive) => no(out, tag, "mailbox not currently active"),
        Ok(Outcome::DoesNotExist) => no(out, tag, "mailbox doesn't exist"),
        Err(error) => {
            tracing::error!(%error, "write failed");
            no(out, tag, "database error");
        }
    }
}
