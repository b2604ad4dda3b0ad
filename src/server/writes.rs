//! RESERVE, ACTIVATE, DEACTIVATE and DELETE (spec §5.4-5.7): a write applied to the store,
//! its answer queued on the output once it is durable (and, with `mupdate_sync_replicas`,
//! held by that many replicas).

use super::Election;
use super::ServerContext;
use super::notices::{no, ok};
use crate::failover::HaRole;
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
    let fence = match ctx.election() {
        None => None,
        Some(election) => {
            let role = election.role.borrow().clone();
            match role {
                HaRole::Leader { .. } => Some(&election.fence),
                HaRole::Follower { leader, .. } => {
                    forward(ctx, election, &leader, tag, &write, out).await;
                    return;
                }
                HaRole::Candidate => {
                    no(out, tag, "no master elected now; try again");
                    return;
                }
            }
        }
    };
    // A master that may have lost its lease writes nothing it could not acknowledge.
    if fence.is_some_and(|fence| !fence.is_open()) {
        no(out, tag, "no longer master; try again");
        return;
    }
    let wanted = ctx.settings.sync_replicas;
    // Sync off (the usual case), a write takes no lock here.
    if wanted > 0 && !ctx.sync_replicas.enough(wanted) {
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
            if wanted > 0 && !ctx.sync_replicas.confirm(seq, wanted, patience).await {
                tracing::warn!(
                    seq,
                    wanted,
                    "a write was not confirmed by its synchronous replicas in time"
                );
                no(out, tag, "not confirmed by synchronous replicas");
                return;
            }
            // Checked after the replicas' wait too: a successor may be elected meanwhile.
            if fence.is_some_and(|fence| !fence.is_open()) {
                tracing::warn!(
                    seq,
                    "a write was committed as the lease ran out; not acknowledged"
                );
                no(out, tag, "no longer master; try again");
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

/// A follower's write: the master's answer, once this replica holds what the master
/// committed before answering (read your writes here).
async fn forward(
    ctx: &ServerContext,
    election: &Election,
    master: &str,
    tag: &[u8],
    write: &MailboxWrite,
    out: &mut Vec<u8>,
) {
    let counted = |outcome: &str| {
        ctx.metrics
            .forwarded_writes
            .with_label_values(&[outcome])
            .inc();
    };
    // A master replaced meanwhile (frozen, cut off) may never answer: the write is given
    // up on, its outcome unknown, as soon as the election names another.
    let mut role = election.role.clone();
    let replaced =
        role.wait_for(|now| !matches!(now, HaRole::Follower { leader, .. } if leader == master));
    let answer = tokio::select! {
        answer = election.forwarder.forward(master, write) => answer,
        _ = replaced => {
            counted("failed");
            tracing::warn!(%master, "the master was replaced while a write was forwarded to it");
            no(out, tag, "the master changed; try again");
            return;
        }
    };
    match answer {
        Ok(answer) => {
            if answer.ok {
                if let Some(upstream) = ctx.upstream() {
                    upstream.wait().await;
                }
                counted("ok");
                ok(out, tag, &answer.text);
            } else {
                counted("no");
                no(out, tag, &answer.text);
            }
        }
        Err(error) => {
            counted("failed");
            tracing::warn!(%master, %error, "cannot forward a write to the master");
            no(out, tag, "cannot reach the master; try again");
        }
    }
}
