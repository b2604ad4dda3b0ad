//! Mailbox records as MUPDATE sees them, their normalisation and their on-disk encoding.

/// State of a mailbox record (spec §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxState {
    /// Usable mailbox: `MAILBOX` on the wire.
    Active,
    /// Placeholder while a mailbox is created or moved: `RESERVE` on the wire.
    Reserved,
}

/// One entry of the mailbox list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxRecord {
    /// Mailbox name, verbatim (spec D-11).
    pub name: Vec<u8>,
    /// Active or reserved.
    pub state: MailboxState,
    /// `server!partition`, verbatim.
    pub location: Vec<u8>,
    /// Normalised ACL; always empty for reserved records.
    pub acl: Vec<u8>,
}

/// The server part of a location: the text before the first `!`.
pub fn server_of(location: &[u8]) -> &[u8] {
    match location.iter().position(|&b| b == b'!') {
        Some(end) => &location[..end],
        None => location,
    }
}

/// Cyrus's ACL normalisation (spec §5.1): keep `identifier TAB rights` pairs split at TABs
/// from the left, each written back with a trailing TAB; a trailing identifier is dropped.
pub fn normalize_acl(acl: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(acl.len() + 1);
    let mut rest = acl;
    while let Some(tab) = rest.iter().position(|&b| b == b'\t') {
        let identifier = &rest[..tab];
        let after = &rest[tab + 1..];
        let (rights, next) = match after.iter().position(|&b| b == b'\t') {
            Some(end) => (&after[..end], &after[end + 1..]),
            None => (after, &after[after.len()..]),
        };
        out.extend_from_slice(identifier);
        out.push(b'\t');
        out.extend_from_slice(rights);
        out.push(b'\t');
        rest = next;
    }
    out
}

const TAG_ACTIVE: u8 = 1;
const TAG_RESERVED: u8 = 2;

/// Encodes state, location and ACL as the value of a mailbox row.
pub(crate) fn encode_value(state: MailboxState, location: &[u8], acl: &[u8], out: &mut Vec<u8>) {
    out.push(match state {
        MailboxState::Active => TAG_ACTIVE,
        MailboxState::Reserved => TAG_RESERVED,
    });
    out.extend_from_slice(&(location.len() as u32).to_be_bytes());
    out.extend_from_slice(location);
    out.extend_from_slice(acl);
}

/// Decodes a mailbox row value; `None` if the bytes are not one.
pub(crate) fn decode_value(value: &[u8]) -> Option<(MailboxState, &[u8], &[u8])> {
    let (&tag, rest) = value.split_first()?;
    let state = match tag {
        TAG_ACTIVE => MailboxState::Active,
        TAG_RESERVED => MailboxState::Reserved,
        _ => return None,
    };
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let location = rest.get(4..4 + len)?;
    let acl = rest.get(4 + len..)?;
    Some((state, location, acl))
}

impl MailboxRecord {
    /// The row value of this record.
    pub(crate) fn encode_value(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.location.len() + self.acl.len());
        encode_value(self.state, &self.location, &self.acl, &mut out);
        out
    }

    /// Rebuilds a record from its name and row value.
    pub(crate) fn decode(name: &[u8], value: &[u8]) -> Option<MailboxRecord> {
        let (state, location, acl) = decode_value(value)?;
        Some(MailboxRecord {
            name: name.to_vec(),
            state,
            location: location.to_vec(),
            acl: acl.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_normalisation_matches_cyrus() {
        let acls: [&[u8]; 6] = [
            b"x\tl",
            b"x\tl\ty",
            b"anyone lrs",
            b"",
            b"b\tlrs\ta\tlr\tb\tx\t",
            b"bob\tlrs",
        ];
        let normal: [&[u8]; 6] = [
            b"x\tl\t",
            b"x\tl\t",
            b"",
            b"",
            b"b\tlrs\ta\tlr\tb\tx\t",
            b"bob\tlrs\t",
        ];
        assert_eq!(acls.map(normalize_acl), normal);
    }

    #[test]
    fn server_part() {
        let servers = [b"be1!default", &b"a!b!c"[..], b"!p", b"be3"].map(server_of);
        assert_eq!(servers, [&b"be1"[..], b"a", b"", b"be3"]);
    }

    #[test]
    fn value_round_trip() {
        let record = MailboxRecord {
            name: b"user.bob".to_vec(),
            state: MailboxState::Active,
            location: b"be1!default".to_vec(),
            acl: b"bob\tlrs\t".to_vec(),
        };
        assert_eq!(
            MailboxRecord::decode(b"user.bob", &record.encode_value()),
            Some(record)
        );
        assert_eq!(decode_value(b"\x07"), None);
        assert_eq!(decode_value(b"\x01\0\0\0\x09ab"), None);
    }
}
