//! Arbitrary bytes as a client's COMPRESS stream: inflating them in pieces gives plain
//! bytes, within the per-call bound, or an error, never a panic or a hang; and whatever
//! we deflate inflates back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mupdate::server::compress::Deflate;

/// Inflates `wire` in `piece`-byte reads, at most `limit` plain bytes a call.
fn inflate_all(wire: &[u8], piece: usize, limit: usize) -> Option<Vec<u8>> {
    let mut stream = Deflate::default();
    let (mut plain, mut pending) = (Vec::new(), Vec::new());
    let mut pieces = wire.chunks(piece);
    loop {
        if pending.is_empty() && !stream.has_pending_output() {
            match pieces.next() {
                Some(next) => pending.extend_from_slice(next),
                None => return Some(plain),
            }
        }
        let before = plain.len();
        let taken = stream.inflate(&pending, &mut plain, limit).ok()?;
        assert!(plain.len() - before <= limit);
        assert!(taken > 0 || plain.len() > before || stream.has_pending_output() || pending.is_empty());
        pending.drain(..taken);
        // A bomb is followed only so far.
        if plain.len() > 1 << 24 {
            return Some(plain);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (piece, limit) = match data {
        [a, b, ..] => (usize::from(*a) + 1, usize::from(*b) * 64 + 1),
        _ => (1, 1),
    };
    let _ = inflate_all(data, piece, limit);
    let wire = Deflate::default().deflate(data);
    assert_eq!(inflate_all(&wire, piece, limit).as_deref(), Some(data));
});
