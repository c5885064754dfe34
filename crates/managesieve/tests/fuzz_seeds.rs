//! The committed ManageSieve fuzz seeds (fuzz/corpus/managesieve) parse command by command.

#[test]
fn managesieve_seeds_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/managesieve");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        assert!(mailkeep_managesieve::fuzz_parse(&data) >= 3);
        n += 1;
    }
    assert!(n >= 2);
}
