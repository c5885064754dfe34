//! The config parser and validator: any text gives a config or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let _ = mailkeep_config::Config::parse(s, std::path::Path::new("/fuzz/mailkeep.toml"));
    let _ = mailkeep_config::parse_listen_arg(s);
});
