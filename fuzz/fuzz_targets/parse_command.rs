//! Feeds arbitrary client bytes to the MUPDATE parser, cut into arbitrary pieces, in both
//! login states, with small limits so the limit paths are reached too. The parser must never
//! panic, must always make progress, and must agree with itself however the input is cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mupdate::protocol::{Event, Limits, ParseContext, Parser};

fn run(input: &[u8], cuts: &[u8], authenticated: bool, limits: Limits) -> Vec<Event> {
    let ctx = ParseContext { authenticated };
    let mut parser = Parser::new(limits);
    let mut events = Vec::new();
    let mut rest = input;
    let mut cut = cuts.iter().cycle();
    while !rest.is_empty() {
        let size = usize::from(*cut.next().unwrap_or(&255)).max(1).min(rest.len());
        let mut piece = &rest[..size];
        while !piece.is_empty() {
            let (used, event) = parser.advance(piece, &ctx);
            assert!(used > 0 || event.is_some(), "no progress");
            piece = &piece[used..];
            match event {
                Some(Event::Fatal { .. }) => {
                    events.push(Event::Fatal { tag: None });
                    return events;
                }
                Some(Event::Sasl(_)) => unreachable!("no SASL exchange was started"),
                Some(e) => events.push(e),
                None => {}
            }
        }
        rest = &rest[size..];
    }
    events.extend(parser.interrupt());
    events
}

fuzz_target!(|data: &[u8]| {
    let (cuts, input) = data.split_at(data.len().min(4));
    let limits = Limits { max_word: 64, max_quoted: 64, max_literal: 64 };
    for authenticated in [false, true] {
        let whole = run(input, &[255], authenticated, limits);
        let pieces = run(input, if cuts.is_empty() { &[1] } else { cuts }, authenticated, limits);
        // Fatal carries no tag in the comparison; everything else must match exactly.
        assert_eq!(whole, pieces);
    }
});
