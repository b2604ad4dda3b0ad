//! Incremental, sans-I/O parser of server responses, for our own client side (the slave's
//! link to its master). It reads what Cyrus masters send: `tag MAILBOX|RESERVE|DELETE`
//! with string arguments (literals or quoted), tagged `OK`/`NO`/`BAD` completions and
//! untagged `*` lines.

use crate::mailbox::MailboxWrite;

/// One server response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `tag MAILBOX name location acl` (an activation), `tag RESERVE name location` or
    /// `tag DELETE name`: what the master's list says of one mailbox.
    Record(MailboxWrite),
    /// A completion (`OK`, `NO`, `BAD`) or any other line, with its tag (`*` for untagged).
    Line {
        /// The tag.
        tag: Vec<u8>,
        /// The first word after the tag (`OK`, `NO`, `BAD`, `BYE`, `AUTH`…).
        word: Vec<u8>,
        /// The rest of the line.
        rest: Vec<u8>,
    },
}

/// Why a response could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A string argument was malformed.
    #[error("malformed server response")]
    Malformed,
    /// A literal or line exceeded the limit.
    #[error("server response too long")]
    TooLong,
}

/// Parses one response from the start of `input`: `Ok(None)` when more bytes are needed,
/// else the response and how many bytes it used. Responses longer than `limit` are refused.
pub fn parse_reply(input: &[u8], limit: usize) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut cursor = Cursor {
        input,
        pos: 0,
        limit,
    };
    let Some(tag) = cursor.word()? else {
        return Ok(None);
    };
    let Some(word) = cursor.word()? else {
        return Ok(None);
    };
    let reply = match word.as_slice() {
        b"MAILBOX" | b"RESERVE" | b"DELETE" if tag != b"*" => {
            let mut args = Vec::new();
            let wanted = match word.as_slice() {
                b"MAILBOX" => 3,
                b"RESERVE" => 2,
                _ => 1,
            };
            for _ in 0..wanted {
                match cursor.string()? {
                    Some(value) => args.push(value),
                    None => return Ok(None),
                }
            }
            match cursor.line_end()? {
                Some(()) => {}
                None => return Ok(None),
            }
            let mut args = args.into_iter();
            let mut next = || args.next().unwrap_or_default();
            match word.as_slice() {
                b"MAILBOX" => Reply::Record(MailboxWrite::Activate {
                    name: next(),
                    location: next(),
                    acl: next(),
                }),
                b"RESERVE" => Reply::Record(MailboxWrite::Reserve {
                    name: next(),
                    location: next(),
                }),
                _ => Reply::Record(MailboxWrite::Delete { name: next() }),
            }
        }
        _ => match cursor.rest_of_line()? {
            Some(rest) => Reply::Line { tag, word, rest },
            None => return Ok(None),
        },
    };
    Ok(Some((reply, cursor.pos)))
}

struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
    limit: usize,
}

impl Cursor<'_> {
    fn check(&self) -> Result<(), ReplyError> {
        if self.pos > self.limit {
            Err(ReplyError::TooLong)
        } else {
            Ok(())
        }
    }

    /// A word ended by a space, CR or LF (the space is consumed).
    fn word(&mut self) -> Result<Option<Vec<u8>>, ReplyError> {
        let rest = &self.input[self.pos..];
        let Some(end) = rest
            .iter()
            .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        else {
            self.pos += rest.len();
            self.check()?;
            return Ok(None);
        };
        let word = rest[..end].to_vec();
        self.pos += end;
        if rest[end] == b' ' {
            self.pos += 1;
        }
        self.check()?;
        Ok(Some(word))
    }

    /// A literal `{n}`/`{n+}` or a quoted string, after at most one space.
    fn string(&mut self) -> Result<Option<Vec<u8>>, ReplyError> {
        if self.input.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
        let Some(&first) = self.input.get(self.pos) else {
            return Ok(None);
        };
        match first {
            b'{' => {
                let rest = &self.input[self.pos..];
                let Some(close) = rest.iter().position(|&b| b == b'}') else {
                    if rest.len() > 24 {
                        return Err(ReplyError::Malformed);
                    }
                    return Ok(None);
                };
                let digits = rest[1..close].strip_suffix(b"+").unwrap_or(&rest[1..close]);
                let len: usize = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .ok_or(ReplyError::Malformed)?;
                if len > self.limit {
                    return Err(ReplyError::TooLong);
                }
                let data_start = close + 1 + 2;
                if rest.len() < data_start {
                    return Ok(None);
                }
                if &rest[close + 1..data_start] != b"\r\n" {
                    return Err(ReplyError::Malformed);
                }
                if rest.len() < data_start + len {
                    return Ok(None);
                }
                let value = rest[data_start..data_start + len].to_vec();
                self.pos += data_start + len;
                Ok(Some(value))
            }
            b'"' => {
                let mut value = Vec::new();
                let mut i = self.pos + 1;
                while let Some(&b) = self.input.get(i) {
                    match b {
                        b'\\' => {
                            let Some(&escaped) = self.input.get(i + 1) else {
                                return Ok(None);
                            };
                            value.push(escaped);
                            i += 2;
                        }
                        b'"' => {
                            self.pos = i + 1;
                            self.check()?;
                            return Ok(Some(value));
                        }
                        b'\r' | b'\n' => return Err(ReplyError::Malformed),
                        _ => {
                            value.push(b);
                            i += 1;
                        }
                    }
                }
                if i - self.pos > self.limit {
                    return Err(ReplyError::TooLong);
                }
                Ok(None)
            }
            _ => Err(ReplyError::Malformed),
        }
    }

    fn line_end(&mut self) -> Result<Option<()>, ReplyError> {
        let rest = &self.input[self.pos..];
        if rest.starts_with(b"\r\n") {
            self.pos += 2;
            Ok(Some(()))
        } else if rest.starts_with(b"\n") {
            self.pos += 1;
            Ok(Some(()))
        } else if rest.is_empty() || rest == b"\r" {
            Ok(None)
        } else {
            Err(ReplyError::Malformed)
        }
    }

    fn rest_of_line(&mut self) -> Result<Option<Vec<u8>>, ReplyError> {
        let rest = &self.input[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let line = rest[..end]
                    .strip_suffix(b"\r")
                    .unwrap_or(&rest[..end])
                    .to_vec();
                self.pos += end + 1;
                Ok(Some(line))
            }
            None => {
                if rest.len() > self.limit {
                    return Err(ReplyError::TooLong);
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::response;

    #[test]
    fn parses_what_the_encoder_writes_in_any_pieces() {
        let mut wire = Vec::new();
        response::mailbox(
            &mut wire,
            b"U01",
            b"user.bob",
            b"be1!default",
            b"bob\tlrs\t",
        );
        response::reserve(&mut wire, b"U01", b"user.x", b"be2!p");
        response::delete(&mut wire, b"U01", b"user.y");
        response::tagged(
            &mut wire,
            b"U01",
            response::Status::Ok,
            response::Text::Quoted("streaming starts"),
        );
        let expected = vec![
            Reply::Record(MailboxWrite::Activate {
                name: b"user.bob".to_vec(),
                location: b"be1!default".to_vec(),
                acl: b"bob\tlrs\t".to_vec(),
            }),
            Reply::Record(MailboxWrite::Reserve {
                name: b"user.x".to_vec(),
                location: b"be2!p".to_vec(),
            }),
            Reply::Record(MailboxWrite::Delete {
                name: b"user.y".to_vec(),
            }),
            Reply::Line {
                tag: b"U01".to_vec(),
                word: b"OK".to_vec(),
                rest: b"\"streaming starts\"".to_vec(),
            },
        ];
        for cut in 1..wire.len() {
            let mut got = Vec::new();
            let mut buffer = wire[..cut].to_vec();
            let mut fed = cut;
            loop {
                match parse_reply(&buffer, 1 << 20).unwrap() {
                    Some((reply, used)) => {
                        got.push(reply);
                        buffer.drain(..used);
                    }
                    None if fed < wire.len() => {
                        buffer.extend_from_slice(&wire[fed..]);
                        fed = wire.len();
                    }
                    None => break,
                }
            }
            assert_eq!(got, expected, "cut at {cut}");
        }
    }

    #[test]
    fn quoted_strings_and_untagged_lines() {
        let (reply, used) = parse_reply(b"F1 MAILBOX \"a\\\"b\" \"h!p\" \"\"\r\nrest", 100)
            .unwrap()
            .unwrap();
        assert_eq!(
            reply,
            Reply::Record(MailboxWrite::Activate {
                name: b"a\"b".to_vec(),
                location: b"h!p".to_vec(),
                acl: vec![]
            })
        );
        assert_eq!(used, 28);
        let (reply, _) = parse_reply(b"* BYE \"idle\"\r\n", 100).unwrap().unwrap();
        assert!(matches!(reply, Reply::Line { word, .. } if word == b"BYE"));
        assert_eq!(
            parse_reply(b"U MAILBOX {99999+}\r\n", 100),
            Err(ReplyError::TooLong)
        );
        assert_eq!(
            parse_reply(b"U MAILBOX atom\r\n", 100),
            Err(ReplyError::Malformed)
        );
    }
}
