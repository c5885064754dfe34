//! Address and domain parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailkeep_types::{Address, Domain};

fuzz_target!(|s: &str| {
    if let Ok(a) = Address::parse(s) {
        // What we accept never carries characters that could break a header.
        let text = a.to_string();
        assert!(!text.contains(['\r', '\n', '<', '>']));
        // Parsing our own output gives the same address.
        assert_eq!(Address::parse(&text).map(|b| b.key()), Ok(a.key()));
    }
    if let Ok(d) = Domain::parse(s) {
        assert!(d.as_str().is_ascii());
        assert_eq!(Domain::parse(d.as_str()).as_ref(), Ok(&d));
    }
});
