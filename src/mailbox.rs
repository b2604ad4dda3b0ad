//! A mailbox write, declared once: what a backend asks for (RESERVE, ACTIVATE, DEACTIVATE,
//! DELETE, spec §5.2-§5.5), what the store applies, and what a master's stream tells a
//! slave (a `MAILBOX` line is an activation, `RESERVE` and `DELETE` themselves).

/// One write to the mailbox list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxWrite {
    /// ACTIVATE (a `MAILBOX` line in a stream or dump).
    Activate {
        /// Mailbox name.
        name: Vec<u8>,
        /// Location (`server!partition`).
        location: Vec<u8>,
        /// ACL as sent (normalised when stored).
        acl: Vec<u8>,
    },
    /// RESERVE
    Reserve {
        /// Mailbox name.
        name: Vec<u8>,
        /// Location.
        location: Vec<u8>,
    },
    /// DEACTIVATE
    Deactivate {
        /// Mailbox name.
        name: Vec<u8>,
        /// Location.
        location: Vec<u8>,
    },
    /// DELETE
    Delete {
        /// Mailbox name.
        name: Vec<u8>,
    },
}

impl MailboxWrite {
    /// The mailbox written.
    pub fn name(&self) -> &[u8] {
        match self {
            MailboxWrite::Activate { name, .. }
            | MailboxWrite::Reserve { name, .. }
            | MailboxWrite::Deactivate { name, .. }
            | MailboxWrite::Delete { name } => name,
        }
    }

    /// The location given, if the write gives one.
    pub fn location(&self) -> Option<&[u8]> {
        match self {
            MailboxWrite::Activate { location, .. }
            | MailboxWrite::Reserve { location, .. }
            | MailboxWrite::Deactivate { location, .. } => Some(location),
            MailboxWrite::Delete { .. } => None,
        }
    }

    /// The command that asks for it.
    pub fn command_name(&self) -> &'static str {
        match self {
            MailboxWrite::Activate { .. } => "ACTIVATE",
            MailboxWrite::Reserve { .. } => "RESERVE",
            MailboxWrite::Deactivate { .. } => "DEACTIVATE",
            MailboxWrite::Delete { .. } => "DELETE",
        }
    }

    /// Its arguments in wire order.
    pub fn arguments(&self) -> Vec<&[u8]> {
        match self {
            MailboxWrite::Activate {
                name,
                location,
                acl,
            } => vec![name, location, acl],
            MailboxWrite::Reserve { name, location }
            | MailboxWrite::Deactivate { name, location } => vec![name, location],
            MailboxWrite::Delete { name } => vec![name],
        }
    }
}
