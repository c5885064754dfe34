//! The committed fuzz seeds (fuzz/corpus/smtp_data) run as regression tests on every
//! `cargo test`, with the invariants of the fuzz target.

use mailkeep_smtp::data::DataDecoder;

#[test]
fn smtp_data_seeds_keep_their_invariants() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/smtp_data");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        // Whole and byte by byte give the same result.
        let mut whole = DataDecoder::new(4096, 1000, 2048);
        let (used, done) = whole.feed(&data);
        let mut bytes = DataDecoder::new(4096, 1000, 2048);
        let mut pos = 0;
        let mut fin = false;
        while pos < data.len() && !fin {
            let (u, f) = bytes.feed(&data[pos..pos + 1]);
            pos += u;
            fin = f;
        }
        assert_eq!((used, done), (pos, fin));
        assert_eq!(whole.finish(), bytes.finish());
        n += 1;
    }
    assert!(n >= 3, "seeds found: {n}");
}
