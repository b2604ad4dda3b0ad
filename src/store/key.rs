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

/// A byte string `m` with `low <= m <= high` (for `low <= high`), about halfway between
/// them when both are read as base-256 fractions.
pub fn midpoint(low: &[u8], high: &[u8]) -> Vec<u8> {
    let width = low.len().max(high.len()) + 1;
    let digit = |s: &[u8], i: usize| u32::from(s.get(i).copied().unwrap_or(0));
    // The sum, most significant digit first, with its carry out in front.
    let mut sum = vec![0u32; width];
    let mut carry = 0;
    for i in (0..width).rev() {
        let total = digit(low, i) + digit(high, i) + carry;
        sum[i] = total & 0xff;
        carry = total >> 8;
    }
    // Halved: the carry comes down as the top bit of the first digit.
    let mut remainder = carry;
    let mut middle: Vec<u8> = sum
        .into_iter()
        .map(|d| {
            let value = (remainder << 8) | d;
            remainder = value & 1;
            (value >> 1) as u8
        })
        .collect();
    while middle.last() == Some(&0) {
        middle.pop();
    }
    // Trailing zeros change the order but not the value: an end the value equals is the
    // answer then.
    if middle.as_slice() < low {
        low.to_vec()
    } else if middle.as_slice() > high {
        high.to_vec()
    } else {
        middle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midpoints_lie_between_their_ends() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a", b"c"),
            (b"a", b"b"),
            (b"user\x1fa", b"user\x1fz"),
            (b"", b"\xff\xff"),
            (b"abc", b"abd"),
            (b"x", b"x"),
            (
                b"user\x1fm000000001\0user.m000000001",
                b"user\x1fm000099999\0user.m000099999",
            ),
        ];
        for &(low, high) in cases {
            let middle = midpoint(low, high);
            assert!(
                low <= middle.as_slice() && middle.as_slice() <= high,
                "{low:?} {middle:?} {high:?}"
            );
        }
        assert_eq!(midpoint(b"a", b"c"), b"b");
        let wide = midpoint(b"user\x1fm000000001", b"user\x1fm000099999");
        assert_eq!(&wide[..10], b"user\x1fm0000");
    }

    proptest::proptest! {
        #[test]
        fn any_midpoint_lies_between(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12),
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12),
        ) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            let middle = midpoint(&low, &high);
            proptest::prop_assert!(low <= middle && middle <= high);
        }
    }

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
