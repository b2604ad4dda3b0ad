//! A mailbox record or a committed change as the lines a client is sent: the answers of
//! FIND, LIST and the dumps, and the notices of a stream (spec §7.2).

use crate::protocol::response::{self, Status, Text};
use crate::store::{Change, MailboxState, RecordRef};

/// `MAILBOX` or `RESERVE` for `record`, tagged `tag`.
pub(super) fn encode_record(out: &mut Vec<u8>, tag: &[u8], record: &RecordRef<'_>) {
    match record.state {
        MailboxState::Active => {
            response::mailbox(out, tag, record.name, record.location, record.acl)
        }
        MailboxState::Reserved => response::reserve(out, tag, record.name, record.location),
    }
}

/// The stream notice for a committed change, tagged with the UPDATE tag.
pub(super) fn encode_change(out: &mut Vec<u8>, tag: &[u8], change: &Change) {
    match &change.record {
        Some(record) => encode_record(out, tag, &record.as_ref()),
        None => response::delete(out, tag, &change.name),
    }
}

/// A tagged `OK` with quoted text.
pub(super) fn ok(out: &mut Vec<u8>, tag: &[u8], text: &str) {
    response::tagged(out, tag, Status::Ok, Text::Quoted(text));
}

/// A tagged `NO` with quoted text.
pub(super) fn no(out: &mut Vec<u8>, tag: &[u8], text: &str) {
    response::tagged(out, tag, Status::No, Text::Quoted(text));
}

/// A tagged `BAD` with quoted text.
pub(super) fn bad(out: &mut Vec<u8>, tag: &[u8], text: &str) {
    response::tagged(out, tag, Status::Bad, Text::Quoted(text));
}
