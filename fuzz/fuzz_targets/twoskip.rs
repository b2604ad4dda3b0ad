//! Arbitrary bytes as a twoskip mailboxes.db: reading, checking, recovering and parsing
//! the values give records or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mupdate::cyrusdb::{mboxlist, twoskip};

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = twoskip::entries(data) {
        for (_, value) in entries {
            let _ = mboxlist::parse_value(&value);
        }
    }
    let _ = twoskip::check_consistent(data);
    if let Ok(mut image) = twoskip::Image::from_bytes(data.to_vec()) {
        if image.recover().is_ok() {
            let _ = image.entries();
            let _ = image.get(b"Nuser\x1fbob");
        }
    }
    let _ = mboxlist::parse_value(data);
});
