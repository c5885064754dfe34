//! Sieve scripts as users upload them (ManageSieve PUTSCRIPT, `mailkeep sieve put`): our
//! declaration hoisting (`hoist_variables`) and sieve-rs's compiler, through `check`, never
//! panic; the result is Ok or an error with a message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(script) = std::str::from_utf8(data) else {
        return;
    };
    let limits = mailkeep_delivery::sieve::Limits::default();
    if let Err(e) = mailkeep_delivery::sieve::check(script, &limits) {
        assert!(!e.is_empty());
    }
});
