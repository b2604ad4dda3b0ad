//! The MUPDATE wire protocol, sans I/O: an incremental parser for client input and an
//! encoder for server responses. Nothing here knows about sockets, tokio or the store.
//!
//! ```
//! use mupdate::protocol::{CommandKind, Event, Limits, ParseContext, Parser};
//!
//! let mut parser = Parser::new(Limits::default());
//! let ctx = ParseContext { authenticated: true };
//! // Input may arrive in any pieces; a literal's data follows its `{n+}` header.
//! let (used, event) = parser.advance(b"F1 FIND {8+}\r\nuser", &ctx);
//! assert_eq!((used, event), (18, None));
//! let (_, event) = parser.advance(b".bob\r\n", &ctx);
//! match event {
//!     Some(Event::Command(command)) => {
//!         assert_eq!(command.tag, b"F1");
//!         assert_eq!(command.kind, CommandKind::Find { name: b"user.bob".to_vec() });
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

pub mod command;
pub mod parser;
pub mod reply;
pub mod response;
pub mod sasl;
pub mod xupdate;

pub use command::{Command, CommandKind};
pub use parser::{
    DEFAULT_LIMIT, Event, Limits, ParseContext, ParseErrorKind, Parser, SaslResponse,
};

#[cfg(test)]
mod tests;
