//! Arbitrary bytes as the etcd leader or sync key's value: parsing returns what the value
//! says or nothing, never panics, and what it returns is written back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mupdate::failover::{SyncSet, leader_value, parse_leader_value};

fuzz_target!(|data: &[u8]| {
    if let Some((term, address)) = parse_leader_value(data) {
        let written = leader_value(term, &address);
        assert_eq!(parse_leader_value(written.as_bytes()), Some((term, address)));
    }
    if let Some(set) = SyncSet::parse(data) {
        assert_eq!(SyncSet::parse(set.encode().as_bytes()), Some(set));
    }
});
