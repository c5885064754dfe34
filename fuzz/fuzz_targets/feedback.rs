//! Feedback reports (RFC 5965) as the MX reads them for spam complaints: any input gives a
//! sender address or nothing, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(c) = mailkeep_verify::parse_complaint(data) {
        assert!(!c.sender.is_empty());
    }
});
