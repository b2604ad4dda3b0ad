//! Arbitrary bytes as what a master sends a slave: every reply parses, asks for more bytes
//! or is refused, never panics, and a parsed reply always uses bytes it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mupdate::protocol::reply::parse_reply;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((_, used))) = parse_reply(rest, 4096) {
        assert!(used > 0 && used <= rest.len(), "used {used} of {}", rest.len());
        rest = &rest[used..];
    }
});
