//! The lines of a SASL exchange after AUTHENTICATE (spec §4.2): each challenge and each
//! response is its data in base64 on a line of its own (Cyrus's MUPDATE sends no `+ `);
//! the exchange ends with the command's tagged answer.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A line that should have been base64 and is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a SASL line that is not base64")]
pub struct NotBase64;

/// The first whole line of `input`, without its CRLF, and how many bytes it took.
pub fn split_line(input: &[u8]) -> Option<(&[u8], usize)> {
    let end = input.windows(2).position(|w| w == b"\r\n")?;
    Some((&input[..end], end + 2))
}

/// Appends `data` as one SASL line: base64 and CRLF (an empty line for no data).
pub fn encode_line(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(STANDARD.encode(data).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The data of a SASL line (without its line end).
pub fn decode_line(line: &[u8]) -> Result<Vec<u8>, NotBase64> {
    STANDARD.decode(line).map_err(|_| NotBase64)
}

/// What a server sent a client in the middle of its AUTHENTICATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTurn {
    /// The next challenge, decoded.
    Challenge(Vec<u8>),
    /// The command's tagged answer instead (the exchange ended): the text after the tag.
    Answer(Vec<u8>),
}

/// Reads `line` (without its line end) of an exchange that `tag`'s AUTHENTICATE began.
pub fn parse_server_turn(line: &[u8], tag: &[u8]) -> Result<ServerTurn, NotBase64> {
    if let Some(rest) = line.strip_prefix(tag)
        && let Some(rest) = rest.strip_prefix(b" ")
    {
        return Ok(ServerTurn::Answer(rest.to_vec()));
    }
    decode_line(line).map(ServerTurn::Challenge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_line_is_split_at_its_crlf_only() {
        assert_eq!(split_line(b"abc\r\nrest"), Some((&b"abc"[..], 5)));
        assert_eq!(split_line(b"\r\n"), Some((&b""[..], 2)));
        assert_eq!(split_line(b"a\rb\nc"), None);
    }

    #[test]
    fn an_empty_challenge_is_a_bare_line_end() {
        let mut out = Vec::new();
        encode_line(&mut out, b"");
        assert_eq!(out, b"\r\n");
        assert_eq!(
            parse_server_turn(b"", b"A01"),
            Ok(ServerTurn::Challenge(Vec::new()))
        );
    }

    #[test]
    fn a_tagged_line_ends_the_exchange_and_garbage_is_refused() {
        assert_eq!(
            parse_server_turn(b"A01 NO \"authentication failed\"", b"A01"),
            Ok(ServerTurn::Answer(b"NO \"authentication failed\"".to_vec()))
        );
        assert_eq!(parse_server_turn(b"not base64!", b"A01"), Err(NotBase64));
    }

    proptest! {
        #[test]
        fn every_challenge_reads_back(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            encode_line(&mut out, &data);
            let line = out.strip_suffix(b"\r\n").unwrap();
            prop_assert_eq!(parse_server_turn(line, b"A01"), Ok(ServerTurn::Challenge(data.clone())));
            prop_assert_eq!(decode_line(line), Ok(data));
        }
    }
}
