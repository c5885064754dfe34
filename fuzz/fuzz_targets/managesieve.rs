//! The ManageSieve command parser (RFC 5804 4): quoted strings, literals, numbers, SASL
//! responses; every command read consumes bytes and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mailkeep_managesieve::fuzz_parse(data);
});
