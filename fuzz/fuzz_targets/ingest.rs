//! The ingest parser (mail-parser plus our envelope and body-structure code).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cache = mailkeep_delivery::ingest::parse_cache(data);
    assert!(cache.header_size as usize <= data.len());
});
