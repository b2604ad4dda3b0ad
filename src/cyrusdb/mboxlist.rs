//! The `N` records of Cyrus 3.6's `mailboxes.db` (spec §9): the key Cyrus derives from
//! an internal mailbox name (`mbname_from_intname` + `mbname_dbname`), and the dlist
//! value (`mboxlist_entry_dlist`) that mupdate writes for a remote mailbox.

use std::io::Write as _;

/// Byte between domain and the rest of a database name.
const DOMAIN_SEPARATOR: u8 = 0x1d;
/// Byte between hierarchy levels in a database name.
const HIERARCHY_SEPARATOR: u8 = 0x1f;
/// First byte of every mailbox-name key.
pub const NAME_KEY_PREFIX: u8 = b'N';

/// What decides how a name becomes a key: Cyrus's `defaultdomain` and `deletedprefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    /// `defaultdomain`: a domain equal to it is left out of keys.
    pub default_domain: Option<Vec<u8>>,
    /// `deletedprefix` (default `DELETED`).
    pub deleted_prefix: Vec<u8>,
}

impl Default for Naming {
    fn default() -> Naming {
        Naming {
            default_domain: None,
            deleted_prefix: b"DELETED".to_vec(),
        }
    }
}

impl Naming {
    /// The `mailboxes.db` key of an internal mailbox name, as a Cyrus 3.6 imapd computes
    /// it for its lookup; `None` for a name Cyrus maps to nothing (empty or only dots).
    pub fn key(&self, name: &[u8]) -> Option<Vec<u8>> {
        let (domain, rest) = match name.iter().position(|&b| b == b'!') {
            Some(bang) => (Some(&name[..bang]), &name[bang + 1..]),
            None => (None, name),
        };
        let domain = domain.filter(|d| self.default_domain.as_deref() != Some(*d));
        // Cyrus splits with strtok: empty levels vanish.
        let mut levels: Vec<&[u8]> = rest
            .split(|&b| b == b'.')
            .filter(|l| !l.is_empty())
            .collect();
        let mut deleted_at = 0u64;
        if levels.len() > 2 && levels[0] == self.deleted_prefix.as_slice() {
            levels.remove(0);
            deleted_at = levels.pop().map(leading_hex).unwrap_or(0);
        }
        if levels.is_empty() && deleted_at == 0 && domain.is_none() {
            return None;
        }
        let mut key = Vec::with_capacity(name.len() + 16);
        key.push(NAME_KEY_PREFIX);
        if let Some(domain) = domain {
            key.extend_from_slice(domain);
            key.push(DOMAIN_SEPARATOR);
        }
        if deleted_at != 0 {
            key.extend_from_slice(&self.deleted_prefix);
        }
        for (i, level) in levels.iter().enumerate() {
            if i > 0 || deleted_at != 0 {
                key.push(HIERARCHY_SEPARATOR);
            }
            // A level's `^` stands for a dot inside it.
            key.extend(level.iter().map(|&b| if b == b'^' { b'.' } else { b }));
        }
        if deleted_at != 0 {
            key.push(HIERARCHY_SEPARATOR);
            key.extend_from_slice(format!("{:X}", deleted_at as u32).as_bytes());
        }
        Some(key)
    }
}

/// `strtoul(s, NULL, 16)` as Cyrus reads a deletion stamp: the leading hex digits.
fn leading_hex(text: &[u8]) -> u64 {
    let mut value: u64 = 0;
    for &b in text.iter().skip_while(|b| b.is_ascii_whitespace()) {
        let Some(digit) = (b as char).to_digit(16) else {
            break;
        };
        value = value.saturating_mul(16).saturating_add(u64::from(digit));
    }
    value
}

/// A mailbox as mupdate records it in `mailboxes.db`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// A reservation (`T erz`) rather than an active mailbox (`T er`).
    pub reserved: bool,
    /// `server!partition`, verbatim.
    pub location: &'a [u8],
    /// Normalised ACL: `identifier TAB rights TAB` pairs.
    pub acl: &'a [u8],
}

impl Entry<'_> {
    /// The dlist value Cyrus's mupdate writes, with `M` = `mtime`.
    pub fn value(&self, mtime: u64) -> Vec<u8> {
        let (server, partition) = match self.location.iter().position(|&b| b == b'!') {
            Some(bang) => (&self.location[..bang], Some(&self.location[bang + 1..])),
            None => (self.location, None),
        };
        let mut out = Vec::with_capacity(64 + self.location.len() + self.acl.len());
        out.extend_from_slice(if self.reserved { b"%(T erz" } else { b"%(T er" });
        if let Some(partition) = partition {
            out.extend_from_slice(b" P ");
            push_astring(&mut out, partition);
        }
        out.extend_from_slice(b" S ");
        push_astring(&mut out, server);
        out.extend_from_slice(b" M ");
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{mtime}");
        out.extend_from_slice(b" A %(");
        let mut first = true;
        for (identifier, rights) in acl_pairs(self.acl) {
            if !first {
                out.push(b' ');
            }
            first = false;
            push_astring(&mut out, identifier);
            out.push(b' ');
            push_astring(&mut out, rights);
        }
        out.extend_from_slice(b"))");
        out
    }
}

/// (identifier, rights) pairs of an ACL as `mailbox_acl_to_dlist` splits it.
fn acl_pairs(acl: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = acl;
    std::iter::from_fn(move || {
        let tab = rest.iter().position(|&b| b == b'\t')?;
        let identifier = &rest[..tab];
        let after = &rest[tab + 1..];
        let (rights, next) = match after.iter().position(|&b| b == b'\t') {
            Some(end) => (&after[..end], &after[end + 1..]),
            None => (after, &[][..]),
        };
        rest = next;
        Some((identifier, rights))
    })
}

/// `imparse_isnatom` and not `NIL`: printed bare.
fn is_atom(s: &[u8]) -> bool {
    !s.is_empty()
        && s.len() < 1024
        && s != b"NIL"
        && s.iter().all(|&b| {
            !(b & 0x80 != 0
                || b < 0x1f
                || b == 0x7f
                || matches!(b, b' ' | b'{' | b'(' | b')' | b'"' | b'%' | b'*' | b'\\'))
        })
}

/// Printed as a quoted string (`isQCHAR`, shorter than 1024, no NUL).
fn is_quotable(s: &[u8]) -> bool {
    s.len() < 1024
        && s.iter().all(|&b| {
            !(b == 0 || b & 0x80 != 0 || matches!(b, b'\r' | b'\n' | b'"' | b'%' | b'\\'))
        })
}

/// Cyrus's `prot_printamap`: atom, quoted string or `{n+}` literal.
fn push_astring(out: &mut Vec<u8>, s: &[u8]) {
    if s.is_empty() {
        out.extend_from_slice(b"\"\"");
    } else if is_atom(s) {
        out.extend_from_slice(s);
    } else if is_quotable(s) {
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else {
        out.extend_from_slice(format!("{{{}+}}\r\n", s.len()).as_bytes());
        out.extend_from_slice(s);
    }
}

/// The fields of a `mailboxes.db` value that mupdate needs to read back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedValue {
    /// The `T` type string (`er`, `erz`, `e`, ...).
    pub kind: Vec<u8>,
    /// The `M` field, if present.
    pub mtime: Option<u64>,
}

impl ParsedValue {
    /// Whether the entry names a mailbox on another server (`r`): only those are mupdate's.
    pub fn is_remote(&self) -> bool {
        self.kind.contains(&b'r')
    }
}

/// Why a value is not a dlist key/value list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mailboxes.db value: {0}")]
pub struct ValueError(&'static str);

/// Reads the top-level `T` and `M` fields of a dlist value `%(K V K V ...)`; nested lists
/// are skipped. Anything else (the pre-3.0 text form, trailing bytes) is an error.
pub fn parse_value(value: &[u8]) -> Result<ParsedValue, ValueError> {
    let mut cursor = Cursor {
        bytes: value,
        at: 0,
    };
    cursor.expect(b"%(")?;
    let mut parsed = ParsedValue::default();
    if cursor.peek() == Some(b')') {
        cursor.at += 1;
    } else {
        loop {
            let key = cursor.string()?;
            cursor.expect(b" ")?;
            match key.as_slice() {
                b"T" => parsed.kind = cursor.string()?,
                b"M" => {
                    let digits = cursor.string()?;
                    parsed.mtime = std::str::from_utf8(&digits)
                        .ok()
                        .and_then(|d| d.parse().ok());
                }
                _ => cursor.skip_value(0)?,
            }
            match cursor.next() {
                Some(b' ') => {}
                Some(b')') => break,
                _ => return Err(ValueError("expected a space or the end of the list")),
            }
        }
    }
    if cursor.at != value.len() {
        return Err(ValueError("bytes after the closing parenthesis"));
    }
    Ok(parsed)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// Deepest nesting of lists a value may have.
const MAX_DEPTH: usize = 8;

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, what: &[u8]) -> Result<(), ValueError> {
        if self.bytes[self.at..].starts_with(what) {
            self.at += what.len();
            Ok(())
        } else {
            Err(ValueError("unexpected byte"))
        }
    }

    /// An atom, quoted string or literal.
    fn string(&mut self) -> Result<Vec<u8>, ValueError> {
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                let start = self.at;
                let len = self.bytes[start..]
                    .iter()
                    .position(|&b| b == b'"')
                    .ok_or(ValueError("unterminated quoted string"))?;
                self.at = start + len + 1;
                Ok(self.bytes[start..start + len].to_vec())
            }
            Some(b'{') => {
                let close = self.bytes[self.at..]
                    .iter()
                    .position(|&b| b == b'}')
                    .ok_or(ValueError("unterminated literal length"))?;
                let digits = &self.bytes[self.at + 1..self.at + close];
                let digits = digits.strip_suffix(b"+").unwrap_or(digits);
                let len: usize = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .ok_or(ValueError("bad literal length"))?;
                self.at += close + 1;
                self.expect(b"\r\n")?;
                let end = self
                    .at
                    .checked_add(len)
                    .filter(|&end| end <= self.bytes.len())
                    .ok_or(ValueError("literal beyond the end of the value"))?;
                let out = self.bytes[self.at..end].to_vec();
                self.at = end;
                Ok(out)
            }
            _ => {
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|b| !matches!(b, b' ' | b')' | b'('))
                {
                    self.at += 1;
                }
                if self.at == start {
                    return Err(ValueError("empty atom"));
                }
                Ok(self.bytes[start..self.at].to_vec())
            }
        }
    }

    /// A value: a string or a (key/value) list.
    fn skip_value(&mut self, depth: usize) -> Result<(), ValueError> {
        if depth > MAX_DEPTH {
            return Err(ValueError("lists nested too deep"));
        }
        let keyed = self.bytes[self.at..].starts_with(b"%(");
        if !keyed && self.peek() != Some(b'(') {
            return self.string().map(drop);
        }
        self.at += if keyed { 2 } else { 1 };
        if self.peek() == Some(b')') {
            self.at += 1;
            return Ok(());
        }
        loop {
            if keyed {
                self.string()?;
                self.expect(b" ")?;
            }
            self.skip_value(depth + 1)?;
            match self.next() {
                Some(b' ') => {}
                Some(b')') => return Ok(()),
                _ => return Err(ValueError("expected a space or the end of the list")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &[u8]) -> Option<Vec<u8>> {
        Naming::default().key(name)
    }

    #[test]
    fn keys_as_cyrus_writes_them() {
        // Observed keys (cyrus-twoskip-and-frontend.md §4, spec §9).
        assert_eq!(key(b"user.dot.a^b").unwrap(), b"Nuser\x1fdot\x1fa.b");
        assert_eq!(
            key(b"example.com!user.x.y").unwrap(),
            b"Nexample.com\x1duser\x1fx\x1fy"
        );
        assert_eq!(
            key(b"DELETED.user.bob.sub.5f3b2a1c").unwrap(),
            b"NDELETED\x1fuser\x1fbob\x1fsub\x1f5F3B2A1C"
        );
        assert_eq!(
            key(b"user.bob.Sent Items").unwrap(),
            b"Nuser\x1fbob\x1fSent Items"
        );
        assert_eq!(key(b"DELETED.user.b.ZZZ").unwrap(), b"Nuser\x1fb");
        assert_eq!(key(b"DELETED.user.qq4").unwrap(), b"Nuser");
        assert_eq!(key(b"shared folder").unwrap(), b"Nshared folder");
        assert_eq!(key(b"a..b.").unwrap(), b"Na\x1fb");
        assert_eq!(key(b""), None);
        assert_eq!(key(b"..."), None);
        let naming = Naming {
            default_domain: Some(b"example.com".to_vec()),
            ..Naming::default()
        };
        assert_eq!(naming.key(b"example.com!user.x").unwrap(), b"Nuser\x1fx");
    }

    #[test]
    fn values_as_cyrus_prints_them() {
        let active = Entry {
            reserved: false,
            location: b"backend1!default",
            acl: b"bob\tlrswipkxtecda\tanyone\tlr\t",
        };
        assert_eq!(
            active.value(1796189286),
            b"%(T er P default S backend1 M 1796189286 A %(bob lrswipkxtecda anyone lr))"
        );
        let reserved = Entry {
            reserved: true,
            location: b"backend2!default",
            acl: b"",
        };
        assert_eq!(
            reserved.value(1796189287),
            b"%(T erz P default S backend2 M 1796189287 A %())"
        );
        let odd = |location: &'static [u8]| {
            Entry {
                reserved: true,
                location,
                acl: b"",
            }
            .value(1)
        };
        let locations: [&'static [u8]; 6] =
            [b"be1!", b"be3", b"", b"a!b!c", b"x!pa%rt", b"be(1)!NIL"];
        let values = locations.map(|location| String::from_utf8(odd(location)).unwrap());
        assert_eq!(
            values,
            [
                "%(T erz P \"\" S be1 M 1 A %())",
                "%(T erz S be3 M 1 A %())",
                "%(T erz S \"\" M 1 A %())",
                "%(T erz P b!c S a M 1 A %())",
                "%(T erz P {5+}\r\npa%rt S x M 1 A %())",
                "%(T erz P \"NIL\" S \"be(1)\" M 1 A %())",
            ]
        );
    }

    #[test]
    fn values_parse_back() {
        let value = Entry {
            reserved: false,
            location: b"x!pa%rt",
            acl: b"first last\tlr\t",
        }
        .value(42);
        let parsed = parse_value(&value).unwrap();
        assert_eq!(parsed.kind, b"er");
        assert_eq!(parsed.mtime, Some(42));
        assert!(parsed.is_remote());
        assert!(parse_value(b"%(T e P default)").is_ok_and(|p| !p.is_remote()));
        assert!(parse_value(b"%(T er) x").is_err());
        assert!(parse_value(b"").is_err());
        assert!(parse_value(b"%(T {99+}\r\nab)").is_err());
        assert!(parse_value(b"(uniqueid) 0 be!p acl").is_err());
    }
}
