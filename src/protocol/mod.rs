//! The MUPDATE wire protocol, sans I/O: an incremental parser for client input and an
//! encoder for server responses. Nothing here knows about sockets, tokio or the store.

pub mod command;
pub mod parser;
pub mod response;

pub use command::{Command, CommandKind};
pub use parser::{Event, Limits, ParseContext, ParseErrorKind, Parser, SaslResponse};

#[cfg(test)]
mod tests;
