//! Encoding of server responses, byte-exact to Cyrus 3.6.1 (spec §2.5, §3.1, §5.12).

use super::parser::ParseErrorKind;

/// Completion status of a tagged response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `OK`
    Ok,
    /// `NO`
    No,
    /// `BAD`
    Bad,
}

impl Status {
    /// The status of the last response line in `out` (`None`: no OK, NO or BAD there).
    pub fn of_last_line(out: &[u8]) -> Option<Status> {
        let body = out.strip_suffix(b"\r\n").unwrap_or(out);
        let line = match body.iter().rposition(|&b| b == b'\n') {
            Some(at) => &body[at + 1..],
            None => body,
        };
        match line.split(|&b| b == b' ').nth(1) {
            Some(b"OK") => Some(Status::Ok),
            Some(b"NO") => Some(Status::No),
            Some(b"BAD") => Some(Status::Bad),
            _ => None,
        }
    }

    fn word(self) -> &'static [u8] {
        match self {
            Status::Ok => b"OK",
            Status::No => b"NO",
            Status::Bad => b"BAD",
        }
    }
}

/// Human-readable text of a response: Cyrus quotes almost all of them (spec §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text<'a> {
    /// Sent inside double quotes.
    Quoted(&'a str),
    /// Sent bare; only the few texts Cyrus sends that way.
    Bare(&'a [u8]),
}

/// What the banner announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    /// SASL mechanisms offered, in order.
    pub mechanisms: Vec<String>,
    /// Offer STARTTLS.
    pub starttls: bool,
    /// Offer COMPRESS DEFLATE.
    pub compress: bool,
    /// `servername`.
    pub server_name: String,
    /// Implementation name (Cyrus: `Cyrus IMAP`).
    pub implementation: String,
    /// Version string.
    pub version: String,
    /// `(master)` or `mupdate://<mupdate_server>`.
    pub role: String,
}

impl Banner {
    /// The capability lines and the `* OK MUPDATE` greeting.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"* AUTH");
        for mechanism in &self.mechanisms {
            out.extend_from_slice(b" \"");
            out.extend_from_slice(mechanism.as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b"\r\n");
        if self.starttls {
            out.extend_from_slice(b"* STARTTLS\r\n");
        }
        if self.compress {
            out.extend_from_slice(b"* COMPRESS \"DEFLATE\"\r\n");
        }
        out.extend_from_slice(b"* PARTIAL-UPDATE\r\n");
        out.extend_from_slice(
            format!(
                "* OK MUPDATE \"{}\" \"{}\" \"{}\" \"{}\"\r\n",
                self.server_name, self.implementation, self.version, self.role
            )
            .as_bytes(),
        );
    }
}

/// `tag STATUS text\r\n`
pub fn tagged(out: &mut Vec<u8>, tag: &[u8], status: Status, text: Text<'_>) {
    out.extend_from_slice(tag);
    out.push(b' ');
    out.extend_from_slice(status.word());
    out.push(b' ');
    match text {
        Text::Quoted(s) => {
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
        Text::Bare(s) => out.extend_from_slice(s),
    }
    out.extend_from_slice(b"\r\n");
}

/// `* BYE "text"\r\n`
pub fn bye(out: &mut Vec<u8>, text: &str) {
    tagged_untagged(out, b"BYE", text);
}

fn tagged_untagged(out: &mut Vec<u8>, word: &[u8], text: &str) {
    out.extend_from_slice(b"* ");
    out.extend_from_slice(word);
    out.extend_from_slice(b" \"");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\"\r\n");
}

/// The answer to a line the parser refused.
pub fn parse_error(out: &mut Vec<u8>, tag: Option<&[u8]>, kind: ParseErrorKind) {
    let text = match kind {
        ParseErrorKind::NeedCommand => "Need command",
        ParseErrorKind::NullCommand => "Null command",
        ParseErrorKind::PleaseLoginFirst => "Please login first",
        ParseErrorKind::UnrecognizedCommand => "Unrecognized command",
        ParseErrorKind::MissingArguments => "Missing arguments",
        ParseErrorKind::ExtraArguments => "Extra arguments",
        ParseErrorKind::BadlyFormedArguments => "Badly formed arguments",
    };
    match tag {
        Some(tag) if kind != ParseErrorKind::NeedCommand => {
            tagged(out, tag, Status::Bad, Text::Quoted(text))
        }
        _ => tagged_untagged(out, b"BAD", text),
    }
}

/// `tag KIND {n+}\r\nfield {n+}\r\nfield...\r\n`: every field a non-synchronising literal.
fn record(out: &mut Vec<u8>, tag: &[u8], kind: &[u8], fields: &[&[u8]]) {
    out.extend_from_slice(tag);
    out.push(b' ');
    out.extend_from_slice(kind);
    for field in fields {
        out.push(b' ');
        out.push(b'{');
        out.extend_from_slice(field.len().to_string().as_bytes());
        out.extend_from_slice(b"+}\r\n");
        out.extend_from_slice(field);
    }
    out.extend_from_slice(b"\r\n");
}

/// `tag MAILBOX {n+}\r\nname {n+}\r\nlocation {n+}\r\nacl\r\n`
pub fn mailbox(out: &mut Vec<u8>, tag: &[u8], name: &[u8], location: &[u8], acl: &[u8]) {
    record(out, tag, b"MAILBOX", &[name, location, acl]);
}

/// `tag RESERVE {n+}\r\nname {n+}\r\nlocation\r\n`
pub fn reserve(out: &mut Vec<u8>, tag: &[u8], name: &[u8], location: &[u8]) {
    record(out, tag, b"RESERVE", &[name, location]);
}

/// `tag DELETE {n+}\r\nname\r\n`
pub fn delete(out: &mut Vec<u8>, tag: &[u8], name: &[u8]) {
    record(out, tag, b"DELETE", &[name]);
}

/// The continuation a synchronising literal asks for.
pub const GO_AHEAD: &[u8] = b"+ go ahead\r\n";

/// What a full connection table answers, NUL included (spec §3.5).
pub const SERVER_UNABLE: &[u8] = b"* BYE \"Server Unable\"\r\n\0";
