//! Row keys that sort mailboxes in Cyrus 3.6 `mailboxes.db` order (spec §5.7).
//!
//! `ctl_mboxlist -m` walks its own database in that order and aborts when LIST disagrees, so
//! the table is keyed by Cyrus's key form. The verbatim name follows after a NUL, which keeps
//! the order (names never contain NUL) and keeps two names with the same Cyrus key apart.

const DOMAIN_SEPARATOR: u8 = 0x1d;
const HIERARCHY_SEPARATOR: u8 = 0x1f;

/// The row key of a mailbox name.
pub fn row_key(name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() * 2 + 1);
    let rest = match name.iter().position(|&b| b == b'!') {
        Some(bang) => {
            key.extend_from_slice(&name[..bang]);
            key.push(DOMAIN_SEPARATOR);
            &name[bang + 1..]
        }
        None => name,
    };
    key.extend(
        rest.iter()
            .map(|&b| if b == b'.' { HIERARCHY_SEPARATOR } else { b }),
    );
    key.push(0);
    key.extend_from_slice(name);
    key
}

/// The mailbox name stored in a row key.
pub fn name_of(key: &[u8]) -> &[u8] {
    match key.iter().position(|&b| b == 0) {
        Some(nul) => &key[nul + 1..],
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cyrus_order() {
        let expected: [&[u8]; 8] = [
            b"User.bob",
            b"abc",
            b"example.com!user.bob",
            b"user",
            b"user.bob",
            b"user.bob.sub",
            b"user.bob-a",
            b"user-x",
        ];
        let mut shuffled = expected.to_vec();
        shuffled.reverse();
        shuffled.sort_by_key(|n| row_key(n));
        assert_eq!(shuffled, expected);
    }

    #[test]
    fn names_with_separator_bytes_stay_apart() {
        assert_ne!(row_key(b"a.b"), row_key(b"a\x1fb"));
        assert_eq!(name_of(&row_key(b"x!y.z")), b"x!y.z");
    }
}
