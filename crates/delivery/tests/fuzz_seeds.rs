//! The committed ingest fuzz seeds (fuzz/corpus/ingest) parse without panicking, and the
//! Sieve script seeds (fuzz/corpus/sieve_script) compile or fail with a message.

#[test]
fn ingest_seeds_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/ingest");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        let cache = mailkeep_delivery::ingest::parse_cache(&data);
        assert!(cache.header_size as usize <= data.len());
        n += 1;
    }
    assert!(n >= 2);
}

#[test]
fn sieve_script_seeds_check() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/sieve_script"
    );
    let limits = mailkeep_delivery::sieve::Limits::default();
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("seed");
        let Ok(script) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Err(e) = mailkeep_delivery::sieve::check(script, &limits) {
            assert!(!e.is_empty(), "{}", path.display());
        }
        n += 1;
    }
    assert!(n >= 3);
}
