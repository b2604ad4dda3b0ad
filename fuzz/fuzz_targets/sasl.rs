//! The SASL exchange: what a client sends after `AUTHENTICATE` without an initial response
//! (a response line, `*` to cancel, or anything else), cut into arbitrary pieces, through
//! the parser's SASL mode and on into command mode; every response line and the raw input
//! are decoded as PLAIN responses and as SCRAM-SHA-256 client messages. Nothing may panic, the parser must always make
//! progress, and a decoded response must hold what the decoder promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mupdate::auth::decode_plain_response;
use mupdate::auth::scram::{Pending, Verifier, parse_client_first};
use mupdate::protocol::{Event, Limits, ParseContext, Parser, SaslResponse};

fn check_plain(response: &[u8]) {
    if let Ok(credentials) = decode_plain_response(response) {
        assert!(!credentials.authcid.is_empty());
        assert!(!credentials.authcid.contains('\0') && !credentials.authzid.contains('\0'));
    }
    if let Ok(client) = parse_client_first(response) {
        assert!(!client.authcid.is_empty());
        // One iteration: the fuzzer is after the parsing, not PBKDF2.
        let (pending, _) = Pending::start(client, "srv", Verifier::from_password(b"pw", b"salt", 1));
        // A forged proof must never pass.
        assert!(pending.finish(response).is_err());
    }
}

fuzz_target!(|data: &[u8]| {
    let (cut, input) = data.split_first().map_or((1, data), |(c, rest)| (*c, rest));
    check_plain(input);
    let limits = Limits { max_word: 64, max_quoted: 64, max_literal: 64 };
    let ctx = ParseContext { authenticated: false };
    let mut parser = Parser::new(limits);
    parser.expect_sasl_response();
    for piece in input.chunks(usize::from(cut).max(1)) {
        let mut piece = piece;
        while !piece.is_empty() {
            let (used, event) = parser.advance(piece, &ctx);
            assert!(used > 0 || event.is_some(), "no progress");
            piece = &piece[used..];
            match event {
                Some(Event::Sasl(SaslResponse::Line(line))) => check_plain(&line),
                Some(Event::Fatal { .. }) => return,
                _ => {}
            }
        }
    }
    let _ = parser.interrupt();
});
