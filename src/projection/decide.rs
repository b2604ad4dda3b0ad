//! What one mailboxes.db record should become, given what the store says and what the
//! file holds: the one rule shared by live changes and reconciliation.

use crate::cyrusdb::mboxlist::{self, Entry, Naming};
use crate::store::{MailboxState, RecordRef, server_of};

/// The store's record for one `N` key, as mailboxes.db should hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// A reservation (`T erz`).
    pub reserved: bool,
    /// `server!partition`.
    pub location: Vec<u8>,
    /// Normalised ACL.
    pub acl: Vec<u8>,
}

impl Desired {
    /// The record as mailboxes.db holds it, written at `mtime`.
    pub fn value(&self, mtime: u64) -> Vec<u8> {
        Entry {
            reserved: self.reserved,
            location: &self.location,
            acl: &self.acl,
        }
        .value(mtime)
    }
}

/// What to do with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Store this value.
    Write(Vec<u8>),
    /// Remove the record.
    Delete,
    /// The file already says what the store says.
    Unchanged,
    /// The record is a local mailbox (no `r`, or not a value we read): not ours to touch.
    KeepLocal,
}

/// How store names map onto the file: Cyrus's naming and, on a unified host, the server
/// whose mailboxes the local imapd records itself.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// `defaultdomain` and `deletedprefix`.
    pub naming: Naming,
    /// `servername` when `mupdate_config: unified`: entries on it are the local imapd's.
    pub local_server: Option<Vec<u8>>,
}

impl Mapping {
    /// The key and desired record for a store record; `None` when mailboxes.db should not
    /// carry it from us (a name Cyrus maps to no key, or a mailbox of this unified host).
    pub fn desired(&self, record: RecordRef<'_>) -> Option<(Vec<u8>, Desired)> {
        if self
            .local_server
            .as_deref()
            .is_some_and(|local| server_of(record.location).eq_ignore_ascii_case(local))
        {
            return None;
        }
        let key = self.naming.key(record.name)?;
        Some((
            key,
            Desired {
                reserved: record.state == MailboxState::Reserved,
                location: record.location.to_vec(),
                acl: record.acl.to_vec(),
            },
        ))
    }
}

/// Decides one record: `existing` is what the file holds, `desired` what the store says
/// (`None`: no such mailbox), `now` the `M` stamp for a new value. A value that differs
/// only in `M` is left as it is, so a reconciliation rewrites nothing that is current.
pub fn decide(existing: Option<&[u8]>, desired: Option<&Desired>, now: u64) -> Decision {
    let existing_stamp = match existing {
        None => None,
        Some(value) => match mboxlist::parse_value(value) {
            Ok(parsed) if parsed.is_remote() => Some(parsed.mtime.unwrap_or(0)),
            _ => return Decision::KeepLocal,
        },
    };
    match (existing, existing_stamp, desired) {
        (None, _, None) => Decision::Unchanged,
        (Some(_), _, None) => Decision::Delete,
        (Some(value), Some(stamp), Some(desired)) if desired.value(stamp) == value => {
            Decision::Unchanged
        }
        (_, _, Some(desired)) => Decision::Write(desired.value(now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(location: &str) -> Desired {
        Desired {
            reserved: false,
            location: location.as_bytes().to_vec(),
            acl: b"bob\tlrswipkxtecda\t".to_vec(),
        }
    }

    #[test]
    fn writes_new_and_changed_records_and_deletes_only_remote_ones() {
        let want = desired("backend1!default");
        let current = want.value(100);
        assert_eq!(decide(None, Some(&want), 7), Decision::Write(want.value(7)));
        assert_eq!(decide(Some(&current), Some(&want), 7), Decision::Unchanged);
        let moved = desired("backend2!default");
        assert_eq!(
            decide(Some(&current), Some(&moved), 7),
            Decision::Write(moved.value(7))
        );
        assert_eq!(decide(Some(&current), None, 7), Decision::Delete);
        assert_eq!(decide(None, None, 7), Decision::Unchanged);
        let local = b"%(T e P default M 5 A %(bob lrs))";
        assert_eq!(decide(Some(local), None, 7), Decision::KeepLocal);
        assert_eq!(decide(Some(local), Some(&want), 7), Decision::KeepLocal);
        assert_eq!(decide(Some(b"garbage"), None, 7), Decision::KeepLocal);
    }

    #[test]
    fn a_unified_host_leaves_its_own_mailboxes_to_its_imapd() {
        let mapping = Mapping {
            naming: Naming::default(),
            local_server: Some(b"FE1".to_vec()),
        };
        let record = |location: &'static [u8]| RecordRef {
            name: b"user.bob",
            state: MailboxState::Reserved,
            location,
            acl: b"",
        };
        assert_eq!(mapping.desired(record(b"fe1!default")), None);
        let (key, want) = mapping.desired(record(b"backend1!p")).unwrap();
        assert_eq!(key, b"Nuser\x1fbob");
        assert!(want.reserved);
    }
}
