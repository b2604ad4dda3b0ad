//! STARTTLS and COMPRESS: the checks before a layer goes under the protocol, in Cyrus's
//! order and words; the session switches the connection once the OK is out.

use super::connection::ClientStream;
use super::notices::bad;
use super::session::{Flow, Session};
use crate::protocol::response::{self, Status, Text};

impl<IO: ClientStream> Session<IO> {
    /// STARTTLS (spec §5.10): whatever the client pipelined behind it is dropped in every
    /// case; then Cyrus's checks, in its order and words.
    pub(super) fn starttls(&mut self, tag: &[u8]) -> Flow {
        let refusal: Option<&[u8]> = if self.ctx.tls.is_none() {
            bad(&mut self.out, tag, "Unrecognized command");
            return Flow::DiscardInput;
        } else if self.identity.is_some() {
            Some(b"Can't Starttls after authentication")
        } else if self.conn.compressed() {
            Some(b"Can't Starttls after Compress")
        } else if self.conn.tls() {
            Some(b"Already did a successful Starttls")
        } else {
            None
        };
        match refusal {
            Some(text) => {
                response::tagged(&mut self.out, tag, Status::Bad, Text::Bare(text));
                Flow::DiscardInput
            }
            None => {
                response::tagged(
                    &mut self.out,
                    tag,
                    Status::Ok,
                    Text::Bare(b"Begin TLS negotiation now"),
                );
                Flow::StartTls
            }
        }
    }

    /// COMPRESS (RFC 4978 as Cyrus has it): DEFLATE only, once.
    pub(super) fn compress(&mut self, tag: &[u8], algorithm: &[u8]) -> Flow {
        if self.conn.compressed() {
            response::tagged(
                &mut self.out,
                tag,
                Status::Bad,
                Text::Bare(b"DEFLATE active via COMPRESS"),
            );
            return Flow::Continue;
        }
        if !algorithm.eq_ignore_ascii_case(b"DEFLATE") {
            let mut text = b"Unknown COMPRESS algorithm: ".to_vec();
            text.extend_from_slice(algorithm);
            response::tagged(&mut self.out, tag, Status::No, Text::Bare(&text));
            return Flow::Continue;
        }
        let mut text = algorithm.to_vec();
        text.extend_from_slice(b" active");
        response::tagged(&mut self.out, tag, Status::Ok, Text::Bare(&text));
        Flow::StartCompression
    }
}
