//! Arbitrary bytes as the etcd leader key's value: parsing returns a term and an address or
//! nothing, never panics, and what it returns is written back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mupdate::failover::{leader_value, parse_leader_value};

fuzz_target!(|data: &[u8]| {
    if let Some((term, address)) = parse_leader_value(data) {
        let written = leader_value(term, &address);
        assert_eq!(parse_leader_value(written.as_bytes()), Some((term, address)));
    }
});
