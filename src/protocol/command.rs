//! Parsed MUPDATE client commands and their wire encoding (used by clients and round-trip tests).

/// A complete client command: its tag (echoed verbatim) and what it asks for.
use crate::mailbox::MailboxWrite;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The tag exactly as received.
    pub tag: Vec<u8>,
    /// The command and its arguments.
    pub kind: CommandKind,
}

/// Every command the server understands, with its string arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    /// `AUTHENTICATE mech [initial-response]`
    Authenticate {
        /// SASL mechanism name as sent.
        mechanism: Vec<u8>,
        /// Base64 initial response, if the client sent one.
        initial_response: Option<Vec<u8>>,
    },
    /// `ACTIVATE`, `RESERVE`, `DEACTIVATE` or `DELETE`.
    Write(MailboxWrite),
    /// `FIND name`
    Find {
        /// Mailbox name.
        name: Vec<u8>,
    },
    /// `LIST [location-prefix]`
    List {
        /// Byte prefix of the location, if given.
        prefix: Option<Vec<u8>>,
    },
    /// `UPDATE [host ...]`
    Update {
        /// Server names for a partial update; empty means everything.
        hosts: Vec<Vec<u8>>,
    },
    /// `XUPDATE ["epoch" "seq" ["term"]]` (extension, ignored by Cyrus): UPDATE that
    /// reports the sequence number of every change and can resume from a position.
    Xupdate {
        /// The master epoch the client last saw.
        epoch: Option<Vec<u8>>,
        /// The last sequence number the client applied.
        seq: Option<Vec<u8>>,
        /// Under failover, the term of the master the client means to follow: streamed
        /// only by that master, while it is master.
        term: Option<Vec<u8>>,
    },
    /// `XACK "seq" ["replica"]` (extension): a replica streaming by XUPDATE says it holds
    /// every change through `seq` durably. Not answered; a master with synchronous replicas
    /// acknowledges a write only once enough replicas have said so.
    Xack {
        /// The last sequence number the replica applied, as sent.
        seq: Vec<u8>,
        /// An elected replica's advertised address: what the master records in etcd as a
        /// synchronous replica that may succeed it.
        replica: Option<Vec<u8>>,
    },
    /// `NOOP`
    Noop,
    /// `LOGOUT`
    Logout,
    /// `STARTTLS`
    Starttls,
    /// `COMPRESS alg`
    Compress {
        /// The algorithm as the client spelled it.
        algorithm: Vec<u8>,
    },
}

/// Every command's name, as [`CommandKind::name`] gives it.
pub const COMMAND_NAMES: [&str; 14] = [
    "AUTHENTICATE",
    "ACTIVATE",
    "RESERVE",
    "DEACTIVATE",
    "DELETE",
    "FIND",
    "LIST",
    "UPDATE",
    "XUPDATE",
    "XACK",
    "NOOP",
    "LOGOUT",
    "STARTTLS",
    "COMPRESS",
];

impl CommandKind {
    /// The command name as Cyrus spells it on the wire (upper case).
    pub fn name(&self) -> &'static str {
        match self {
            CommandKind::Authenticate { .. } => "AUTHENTICATE",
            CommandKind::Write(write) => write.command_name(),
            CommandKind::Find { .. } => "FIND",
            CommandKind::List { .. } => "LIST",
            CommandKind::Update { .. } => "UPDATE",
            CommandKind::Xupdate { .. } => "XUPDATE",
            CommandKind::Xack { .. } => "XACK",
            CommandKind::Noop => "NOOP",
            CommandKind::Logout => "LOGOUT",
            CommandKind::Starttls => "STARTTLS",
            CommandKind::Compress { .. } => "COMPRESS",
        }
    }

    /// The mailbox a command names, if it names one.
    pub fn mailbox(&self) -> Option<&[u8]> {
        match self {
            CommandKind::Write(write) => Some(write.name()),
            CommandKind::Find { name } => Some(name),
            _ => None,
        }
    }

    /// True for the commands that change the mailbox list (refused on a slave).
    pub fn is_write(&self) -> bool {
        matches!(self, CommandKind::Write(_))
    }

    fn arguments(&self) -> Vec<&[u8]> {
        match self {
            CommandKind::Authenticate {
                mechanism,
                initial_response,
            } => {
                let mut args = vec![mechanism.as_slice()];
                if let Some(ir) = initial_response {
                    args.push(ir);
                }
                args
            }
            CommandKind::Write(write) => write.arguments(),
            CommandKind::Find { name } => vec![name],
            CommandKind::List { prefix } => prefix.iter().map(Vec::as_slice).collect(),
            CommandKind::Update { hosts } => hosts.iter().map(Vec::as_slice).collect(),
            CommandKind::Xupdate { epoch, seq, term } => epoch
                .iter()
                .chain(seq.iter())
                .chain(term.iter())
                .map(Vec::as_slice)
                .collect(),
            CommandKind::Compress { algorithm } => vec![algorithm],
            CommandKind::Xack { seq, replica } => std::iter::once(seq)
                .chain(replica)
                .map(Vec::as_slice)
                .collect(),
            CommandKind::Noop | CommandKind::Logout | CommandKind::Starttls => Vec::new(),
        }
    }
}

impl Command {
    /// Encodes the command as a client would send it: each argument a quoted string when it
    /// can be one, otherwise a non-synchronising literal (as Cyrus clients do).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.tag);
        out.push(b' ');
        out.extend_from_slice(self.kind.name().as_bytes());
        for arg in self.kind.arguments() {
            out.push(b' ');
            encode_string_argument(arg, out);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// `tag AUTHENTICATE "mech" {n+}` and the initial response in base64, as Cyrus's own
/// MUPDATE client sends it (a non-synchronising literal, whatever its bytes).
pub fn encode_authenticate(
    out: &mut Vec<u8>,
    tag: &[u8],
    mechanism: &str,
    initial_response: &[u8],
) {
    let mut response = Vec::new();
    super::sasl::encode_line(&mut response, initial_response);
    out.extend_from_slice(tag);
    out.extend_from_slice(b" AUTHENTICATE ");
    encode_string_argument(mechanism.as_bytes(), out);
    out.extend_from_slice(format!(" {{{}+}}\r\n", response.len() - 2).as_bytes());
    out.extend_from_slice(&response);
}

/// Writes `value` as a quoted string if it has no CR, LF or NUL, else as a `{n+}` literal.
pub fn encode_string_argument(value: &[u8], out: &mut Vec<u8>) {
    if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        out.extend_from_slice(format!("{{{}+}}\r\n", value.len()).as_bytes());
        out.extend_from_slice(value);
    } else {
        out.push(b'"');
        for &b in value {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    }
}
