//! Arbitrary text as an imapd.conf: parsing returns a value or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = mupdate::config::ImapdConf::parse_str(&text, std::path::Path::new("fuzz.conf"));
});
