//! Arbitrary bytes as the store's write-ahead log: reading frames and their payloads gives
//! what they hold or stops, never panics, and what is read is written back to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mupdate::store::wal::{decode_payload, encode_frame, encode_payload, frames};

fuzz_target!(|data: &[u8]| {
    let found = frames(data);
    let mut again = Vec::new();
    for (id, lsn, payload) in &found {
        again.extend(encode_frame(*id, *lsn, payload).expect("a frame read fits in one"));
    }
    assert_eq!(frames(&again), found);
    for payload in found.iter().map(|(_, _, p)| p.as_slice()).chain([data]) {
        if let Some(requests) = decode_payload(payload) {
            assert_eq!(decode_payload(&encode_payload(&requests)), Some(requests));
        }
    }
});
