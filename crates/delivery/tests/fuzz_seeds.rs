//! The committed ingest fuzz seeds (fuzz/corpus/ingest) parse without panicking.

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
