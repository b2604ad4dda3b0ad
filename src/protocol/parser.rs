//! Incremental, sans-I/O parser for MUPDATE client input, reproducing Cyrus 3.6.1's
//! `cmdloop` byte for byte (spec §2): the order of checks decides which BAD a client sees,
//! so the machine below follows that order rather than a grammar.
//!
//! The caller feeds whatever bytes it has; the parser consumes them and returns at most one
//! [`Event`] per call. Nothing is buffered beyond the configured word, quoted-string and
//! literal limits, and a line that is being discarded is never buffered at all.

use super::command::{Command, CommandKind};
use crate::mailbox::MailboxWrite;

/// Size limits of the parser (Cyrus `maxword`, `maxquoted`, `maxliteral`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest tag or command name.
    pub max_word: usize,
    /// Longest quoted string.
    pub max_quoted: usize,
    /// Longest literal.
    pub max_literal: usize,
}

/// Cyrus's default for `maxword`, `maxquoted` and `maxliteral`.
pub const DEFAULT_LIMIT: usize = 131_072;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_word: DEFAULT_LIMIT,
            max_quoted: DEFAULT_LIMIT,
            max_literal: DEFAULT_LIMIT,
        }
    }
}

/// Longest SASL response line Cyrus reads in one piece; the rest is read as a new command.
pub const MAX_SASL_LINE: usize = 21_847;

/// Session facts that change how a command is parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseContext {
    /// The session has logged in (commands other than AUTHENTICATE/LOGOUT/COMPRESS/STARTTLS allowed).
    pub authenticated: bool,
}

/// Why a line was refused before it was executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// `* BAD "Need command"`: no tag, or the tag was not followed by a space.
    NeedCommand,
    /// `tag BAD "Null command"`
    NullCommand,
    /// `tag BAD "Please login first"`
    PleaseLoginFirst,
    /// `tag BAD "Unrecognized command"`
    UnrecognizedCommand,
    /// `tag BAD "Missing arguments"`
    MissingArguments,
    /// `tag BAD "Extra arguments"`
    ExtraArguments,
    /// `tag BAD "Badly formed arguments"`
    BadlyFormedArguments,
}

/// A SASL client response line, read raw (spec §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslResponse {
    /// The client cancelled with a line starting with `*`.
    Cancel,
    /// The base64 text of the line, without its line end.
    Line(Vec<u8>),
}

/// What the parser found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete, syntactically valid command.
    Command(Command),
    /// A synchronising literal was announced: send `+ go ahead\r\n` and flush.
    Continue,
    /// The line was refused; `tag` is `None` for the untagged `* BAD`.
    Error {
        /// Tag to answer with, if one was read.
        tag: Option<Vec<u8>>,
        /// Which refusal.
        kind: ParseErrorKind,
    },
    /// An input exceeded a hard limit: answer `tag BAD "Extra arguments"` if there is a tag,
    /// then close this connection (spec D-6).
    Fatal {
        /// Tag to answer with, if one was read.
        tag: Option<Vec<u8>>,
    },
    /// A SASL response line (only after [`Parser::expect_sasl_response`]).
    Sasl(SaslResponse),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Authenticate,
    Activate,
    Reserve,
    Deactivate,
    Delete,
    Find,
    List,
    Update,
    Xupdate,
    Xack,
    Noop,
    Logout,
    Starttls,
    Compress,
}

impl Name {
    /// (required, optional) string arguments; UPDATE has its own rule.
    fn arity(self) -> (usize, usize) {
        match self {
            Name::Authenticate => (1, 1),
            Name::Activate => (3, 0),
            Name::Reserve | Name::Deactivate => (2, 0),
            Name::Delete | Name::Find | Name::Compress => (1, 0),
            Name::Xack => (1, 1),
            Name::List => (0, 1),
            Name::Update => (0, MAX_UPDATE_HOSTS),
            Name::Xupdate => (0, 3),
            Name::Noop | Name::Logout | Name::Starttls => (0, 0),
        }
    }
}

/// Most server names a PARTIAL-UPDATE may list.
pub const MAX_UPDATE_HOSTS: usize = 30;

/// The byte that ended a token, or the end of input (EOF or idle timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Term {
    Byte(u8),
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BraceScan {
    None,
    Digits { n: u64, any: bool },
    Plus { n: u64 },
    Close { n: u64 },
    CloseCr { n: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Tag,
    CommandName,
    ArgumentStart,
    Quoted {
        escaped: bool,
    },
    LiteralDigits {
        n: u64,
        any: bool,
    },
    LiteralClose {
        n: u64,
        sync: bool,
    },
    LiteralCr {
        n: u64,
        sync: bool,
    },
    LiteralLf {
        n: u64,
        sync: bool,
    },
    LiteralData {
        remaining: u64,
    },
    Terminator,
    EndOfLine,
    Discard {
        scan: BraceScan,
        skip: u64,
        extra_lines: u8,
    },
    SaslLine,
}

/// The incremental parser of one connection's input.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    state: State,
    tag: Vec<u8>,
    word: Vec<u8>,
    name: Option<Name>,
    args: Vec<Vec<u8>>,
    current: Vec<u8>,
    current_has_nul: bool,
    current_truncated: bool,
    quoted_len: usize,
}

fn is_word_end(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c | b'(' | b')' | b'"'
    )
}

/// Cyrus normalises a command name to `Xxxx` before comparing.
fn normalise(word: &[u8]) -> Vec<u8> {
    word.iter()
        .enumerate()
        .map(|(i, b)| {
            if i == 0 {
                b.to_ascii_uppercase()
            } else {
                b.to_ascii_lowercase()
            }
        })
        .collect()
}

fn lookup(normalised: &[u8]) -> Option<Name> {
    Some(match normalised {
        b"Activate" => Name::Activate,
        b"Authenticate" => Name::Authenticate,
        b"Compress" => Name::Compress,
        b"Deactivate" => Name::Deactivate,
        b"Delete" => Name::Delete,
        b"Find" => Name::Find,
        b"List" => Name::List,
        b"Logout" => Name::Logout,
        b"Noop" => Name::Noop,
        b"Reserve" => Name::Reserve,
        b"Starttls" => Name::Starttls,
        b"Update" => Name::Update,
        b"Xack" => Name::Xack,
        b"Xupdate" => Name::Xupdate,
        _ => return None,
    })
}

/// Cyrus dispatches on the first letter and checks the login before comparing the whole
/// name (spec §3.3), so unknown names answer differently before and after login.
fn dispatch(normalised: &[u8], ctx: &ParseContext) -> Result<Name, ParseErrorKind> {
    let known = lookup(normalised);
    if ctx.authenticated {
        return known.ok_or(ParseErrorKind::UnrecognizedCommand);
    }
    match (normalised.first(), known) {
        (Some(b'A'), Some(Name::Authenticate)) => Ok(Name::Authenticate),
        (Some(b'L'), Some(Name::Logout)) => Ok(Name::Logout),
        (Some(b'C'), Some(Name::Compress)) => Ok(Name::Compress),
        (Some(b'S'), Some(Name::Starttls)) => Ok(Name::Starttls),
        (Some(b'A' | b'D' | b'F' | b'L' | b'N' | b'R' | b'U'), _) => {
            Err(ParseErrorKind::PleaseLoginFirst)
        }
        _ => Err(ParseErrorKind::UnrecognizedCommand),
    }
}

impl Parser {
    /// A parser at the start of a line.
    pub fn new(limits: Limits) -> Self {
        Parser {
            limits,
            state: State::Tag,
            tag: Vec::new(),
            word: Vec::new(),
            name: None,
            args: Vec::new(),
            current: Vec::new(),
            current_has_nul: false,
            current_truncated: false,
            quoted_len: 0,
        }
    }

    /// True when no part of a command has been read (used to answer idle timeouts).
    pub fn is_idle(&self) -> bool {
        self.state == State::Tag && self.tag.is_empty()
    }

    /// The next input line is a raw SASL response, not a command.
    pub fn expect_sasl_response(&mut self) {
        self.reset();
        self.state = State::SaslLine;
    }

    fn reset(&mut self) {
        self.state = State::Tag;
        self.tag.clear();
        self.word.clear();
        self.name = None;
        self.args.clear();
        self.current.clear();
        self.current_has_nul = false;
        self.current_truncated = false;
        self.quoted_len = 0;
    }

    /// The input ended (EOF or idle timeout) in the middle of a command: the answer Cyrus
    /// gives as if the line had ended there, if any (spec §3.4). The parser is reset.
    pub fn interrupt(&mut self) -> Option<Event> {
        let event = match self.state {
            State::Tag | State::CommandName | State::Discard { .. } | State::SaslLine => None,
            State::ArgumentStart
            | State::Quoted { .. }
            | State::LiteralDigits { .. }
            | State::LiteralClose { .. }
            | State::LiteralCr { .. }
            | State::LiteralLf { .. }
            | State::LiteralData { .. } => Some(self.invalid_argument(Term::End)),
            State::Terminator => self.terminate_argument(Term::End),
            State::EndOfLine => Some(self.refuse(ParseErrorKind::ExtraArguments, Term::End)),
        };
        self.reset();
        event
    }

    /// Consumes bytes from `input` until one event is produced or the input is used up.
    /// Returns how many bytes were consumed and the event, if any.
    pub fn advance(&mut self, input: &[u8], ctx: &ParseContext) -> (usize, Option<Event>) {
        let mut pos = 0;
        while pos < input.len() {
            // Bulk paths first: literal data and discarded literals can be large.
            match self.state {
                State::LiteralData { remaining } => {
                    let take = remaining.min((input.len() - pos) as u64) as usize;
                    let chunk = &input[pos..pos + take];
                    if chunk.contains(&0) {
                        self.current_has_nul = true;
                    }
                    self.current.extend_from_slice(chunk);
                    pos += take;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        State::Terminator
                    } else {
                        State::LiteralData { remaining }
                    };
                    continue;
                }
                State::Discard {
                    scan,
                    skip,
                    extra_lines,
                } if skip > 0 => {
                    let take = skip.min((input.len() - pos) as u64);
                    pos += take as usize;
                    self.state = State::Discard {
                        scan,
                        skip: skip - take,
                        extra_lines,
                    };
                    continue;
                }
                _ => {}
            }
            let byte = input[pos];
            pos += 1;
            if let Some(event) = self.step(byte, ctx) {
                return (pos, Some(event));
            }
        }
        (pos, None)
    }

    fn step(&mut self, byte: u8, ctx: &ParseContext) -> Option<Event> {
        match self.state {
            State::Tag => {
                if is_word_end(byte) {
                    if byte == b' ' {
                        self.state = State::CommandName;
                        None
                    } else {
                        Some(self.refuse_untagged(Term::Byte(byte)))
                    }
                } else if self.tag.len() >= self.limits.max_word {
                    self.reset();
                    Some(Event::Fatal { tag: None })
                } else {
                    self.tag.push(byte);
                    None
                }
            }
            State::CommandName => {
                if is_word_end(byte) {
                    self.command_word_done(Term::Byte(byte), ctx)
                } else if self.word.len() >= self.limits.max_word {
                    let tag = self.echo_tag();
                    self.reset();
                    Some(Event::Fatal { tag: Some(tag) })
                } else {
                    self.word.push(byte);
                    None
                }
            }
            State::ArgumentStart => match byte {
                b'"' => {
                    self.state = State::Quoted { escaped: false };
                    None
                }
                b'{' => {
                    self.state = State::LiteralDigits { n: 0, any: false };
                    None
                }
                _ => Some(self.invalid_argument(Term::Byte(byte))),
            },
            State::Quoted { escaped } => {
                if !escaped {
                    match byte {
                        b'\\' => {
                            self.state = State::Quoted { escaped: true };
                            return None;
                        }
                        b'"' => {
                            self.state = State::Terminator;
                            return None;
                        }
                        b'\r' | b'\n' => return Some(self.invalid_argument(Term::Byte(byte))),
                        _ => {}
                    }
                }
                self.state = State::Quoted { escaped: false };
                // Bytes after a NUL still count, so the limit bounds what a client may send.
                if self.quoted_len >= self.limits.max_quoted {
                    let tag = self.echo_tag();
                    self.reset();
                    return Some(Event::Fatal { tag: Some(tag) });
                }
                self.quoted_len += 1;
                // Cyrus keeps quoted strings as C strings: a NUL ends the value.
                if byte == 0 {
                    self.current_truncated = true;
                } else if !self.current_truncated {
                    self.current.push(byte);
                }
                None
            }
            State::LiteralDigits { n, any } => match byte {
                b'0'..=b'9' => {
                    let n = n * 10 + u64::from(byte - b'0');
                    if n > i32::MAX as u64 {
                        let tag = self.echo_tag();
                        self.reset();
                        return Some(Event::Fatal { tag: Some(tag) });
                    }
                    self.state = State::LiteralDigits { n, any: true };
                    None
                }
                b'+' if any => {
                    self.state = State::LiteralClose { n, sync: false };
                    None
                }
                b'}' if any => self.literal_header_closed(n, true),
                _ => Some(self.invalid_argument(Term::Byte(byte))),
            },
            State::LiteralClose { n, sync } => {
                if byte == b'}' {
                    self.literal_header_closed(n, sync)
                } else {
                    Some(self.invalid_argument(Term::Byte(byte)))
                }
            }
            State::LiteralCr { n, sync } => {
                if byte == b'\r' {
                    self.state = State::LiteralLf { n, sync };
                    None
                } else {
                    Some(self.invalid_argument(Term::Byte(byte)))
                }
            }
            State::LiteralLf { n, sync } => {
                if byte != b'\n' {
                    return Some(self.invalid_argument(Term::Byte(byte)));
                }
                self.state = if n == 0 {
                    State::Terminator
                } else {
                    State::LiteralData { remaining: n }
                };
                sync.then_some(Event::Continue)
            }
            State::LiteralData { .. } => None,
            State::Terminator => self.terminate_argument(Term::Byte(byte)),
            State::EndOfLine => {
                if byte == b'\n' {
                    Some(self.complete())
                } else {
                    Some(self.refuse(ParseErrorKind::ExtraArguments, Term::Byte(byte)))
                }
            }
            State::Discard {
                scan,
                skip,
                extra_lines,
            } => {
                self.discard_byte(byte, scan, skip, extra_lines);
                None
            }
            State::SaslLine => {
                if byte == b'\n' {
                    if self.current.last() == Some(&b'\r') {
                        self.current.pop();
                    }
                    return Some(self.sasl_line_done());
                }
                self.current.push(byte);
                if self.current.len() >= MAX_SASL_LINE {
                    return Some(self.sasl_line_done());
                }
                None
            }
        }
    }

    fn sasl_line_done(&mut self) -> Event {
        let line = std::mem::take(&mut self.current);
        self.reset();
        if line.first() == Some(&b'*') {
            Event::Sasl(SaslResponse::Cancel)
        } else {
            Event::Sasl(SaslResponse::Line(line))
        }
    }

    fn discard_byte(&mut self, byte: u8, scan: BraceScan, skip: u64, extra_lines: u8) {
        debug_assert_eq!(skip, 0);
        if byte == b'\n' {
            // A non-synchronising literal announced at the end of a discarded line is
            // skipped too; a synchronising one is not (spec §2.6).
            if let BraceScan::CloseCr { n } = scan {
                self.state = State::Discard {
                    scan: BraceScan::None,
                    skip: n,
                    extra_lines,
                };
            } else if extra_lines > 0 {
                self.state = State::Discard {
                    scan: BraceScan::None,
                    skip: 0,
                    extra_lines: extra_lines - 1,
                };
            } else {
                self.reset();
            }
            return;
        }
        let scan = match (scan, byte) {
            (_, b'{') => BraceScan::Digits { n: 0, any: false },
            (BraceScan::Digits { n, .. }, b'0'..=b'9') => {
                let n = n * 10 + u64::from(byte - b'0');
                if n > i32::MAX as u64 {
                    BraceScan::None
                } else {
                    BraceScan::Digits { n, any: true }
                }
            }
            (BraceScan::Digits { n, any: true }, b'+') => BraceScan::Plus { n },
            (BraceScan::Plus { n }, b'}') => BraceScan::Close { n },
            (BraceScan::Close { n }, b'\r') => BraceScan::CloseCr { n },
            _ => BraceScan::None,
        };
        self.state = State::Discard {
            scan,
            skip: 0,
            extra_lines,
        };
    }

    fn literal_header_closed(&mut self, n: u64, sync: bool) -> Option<Event> {
        if n > self.limits.max_literal as u64 {
            if !sync {
                let tag = self.echo_tag();
                self.reset();
                return Some(Event::Fatal { tag: Some(tag) });
            }
            // Cyrus refuses an oversized synchronising literal without `+ go ahead` and
            // swallows the client's next line as part of the bad command (spec §2.4).
            let event = self.invalid_argument(Term::Byte(b'}'));
            if let State::Discard {
                scan,
                skip,
                extra_lines,
            } = self.state
            {
                self.state = State::Discard {
                    scan,
                    skip,
                    extra_lines: extra_lines + 1,
                };
            }
            return Some(event);
        }
        self.state = State::LiteralCr { n, sync };
        None
    }

    /// The tag as Cyrus echoes it: up to the first NUL.
    fn echo_tag(&self) -> Vec<u8> {
        match self.tag.iter().position(|&b| b == 0) {
            Some(end) => self.tag[..end].to_vec(),
            None => self.tag.clone(),
        }
    }

    fn command_word_done(&mut self, term: Term, ctx: &ParseContext) -> Option<Event> {
        if self.word.is_empty() {
            return Some(self.refuse(ParseErrorKind::NullCommand, term));
        }
        match dispatch(&normalise(&self.word), ctx) {
            Ok(name) => {
                self.name = Some(name);
                self.next_argument(term)
            }
            Err(kind) => Some(self.refuse(kind, term)),
        }
    }

    /// Decides what follows the byte that ended the command name or an argument.
    fn next_argument(&mut self, term: Term) -> Option<Event> {
        let Some(name) = self.name else {
            return Some(self.refuse(ParseErrorKind::NullCommand, term));
        };
        let (required, optional) = name.arity();
        let have = self.args.len();
        if name == Name::Update {
            if term == Term::Byte(b' ') {
                if have == MAX_UPDATE_HOSTS {
                    return Some(self.refuse(ParseErrorKind::ExtraArguments, term));
                }
                self.state = State::ArgumentStart;
                return None;
            }
            return self.end_of_line(term);
        }
        if have < required {
            if term == Term::Byte(b' ') {
                self.state = State::ArgumentStart;
                None
            } else {
                Some(self.refuse(ParseErrorKind::MissingArguments, term))
            }
        } else if have < required + optional && term == Term::Byte(b' ') {
            self.state = State::ArgumentStart;
            None
        } else {
            self.end_of_line(term)
        }
    }

    fn end_of_line(&mut self, term: Term) -> Option<Event> {
        match term {
            Term::Byte(b'\n') => Some(self.complete()),
            Term::Byte(b'\r') => {
                self.state = State::EndOfLine;
                None
            }
            _ => Some(self.refuse(ParseErrorKind::ExtraArguments, term)),
        }
    }

    /// The argument being read is not a valid string.
    fn invalid_argument(&mut self, term: Term) -> Event {
        let kind = match self.name {
            Some(Name::Update) => ParseErrorKind::BadlyFormedArguments,
            Some(name) if self.args.len() + 1 < name.arity().0 => ParseErrorKind::MissingArguments,
            _ => ParseErrorKind::ExtraArguments,
        };
        self.refuse(kind, term)
    }

    /// A string argument ended; `term` is the byte after it.
    fn terminate_argument(&mut self, term: Term) -> Option<Event> {
        let empty_host = self.name == Some(Name::Update) && self.current.is_empty();
        if self.current_has_nul || empty_host {
            return Some(self.invalid_argument(term));
        }
        let value = std::mem::take(&mut self.current);
        self.current_truncated = false;
        self.quoted_len = 0;
        self.args.push(value);
        self.next_argument(term)
    }

    /// Answers the line with `kind` and discards the rest of it (unless it already ended).
    fn refuse(&mut self, kind: ParseErrorKind, term: Term) -> Event {
        let tag = Some(self.echo_tag());
        self.reset();
        self.start_discard(term);
        Event::Error { tag, kind }
    }

    fn refuse_untagged(&mut self, term: Term) -> Event {
        self.reset();
        self.start_discard(term);
        Event::Error {
            tag: None,
            kind: ParseErrorKind::NeedCommand,
        }
    }

    fn start_discard(&mut self, term: Term) {
        if let Term::Byte(byte) = term
            && byte != b'\n'
        {
            self.state = State::Discard {
                scan: BraceScan::None,
                skip: 0,
                extra_lines: 0,
            };
            if byte == b'{' {
                self.discard_byte(byte, BraceScan::None, 0, 0);
            }
        }
    }

    fn complete(&mut self) -> Event {
        let tag = std::mem::take(&mut self.tag);
        let mut args: std::collections::VecDeque<Vec<u8>> = std::mem::take(&mut self.args).into();
        let kind = match self.name {
            Some(Name::Authenticate) => CommandKind::Authenticate {
                mechanism: take(&mut args),
                initial_response: args.pop_front(),
            },
            Some(Name::Activate) => CommandKind::Write(MailboxWrite::Activate {
                name: take(&mut args),
                location: take(&mut args),
                acl: take(&mut args),
            }),
            Some(Name::Reserve) => CommandKind::Write(MailboxWrite::Reserve {
                name: take(&mut args),
                location: take(&mut args),
            }),
            Some(Name::Deactivate) => CommandKind::Write(MailboxWrite::Deactivate {
                name: take(&mut args),
                location: take(&mut args),
            }),
            Some(Name::Delete) => CommandKind::Write(MailboxWrite::Delete {
                name: take(&mut args),
            }),
            Some(Name::Find) => CommandKind::Find {
                name: take(&mut args),
            },
            Some(Name::List) => CommandKind::List {
                prefix: args.pop_front(),
            },
            Some(Name::Update) => CommandKind::Update { hosts: args.into() },
            Some(Name::Xupdate) => CommandKind::Xupdate {
                epoch: args.pop_front(),
                seq: args.pop_front(),
                term: args.pop_front(),
            },
            Some(Name::Xack) => CommandKind::Xack {
                seq: take(&mut args),
                replica: args.pop_front(),
            },
            Some(Name::Noop) | None => CommandKind::Noop,
            Some(Name::Logout) => CommandKind::Logout,
            Some(Name::Starttls) => CommandKind::Starttls,
            Some(Name::Compress) => CommandKind::Compress {
                algorithm: take(&mut args),
            },
        };
        let echoed = match tag.iter().position(|&b| b == 0) {
            Some(end) => tag[..end].to_vec(),
            None => tag,
        };
        self.reset();
        Event::Command(Command { tag: echoed, kind })
    }
}

fn take(args: &mut std::collections::VecDeque<Vec<u8>>) -> Vec<u8> {
    args.pop_front().unwrap_or_default()
}
