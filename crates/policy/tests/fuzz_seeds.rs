//! The committed spam fuzz seeds (fuzz/corpus/spam) go through the filter's readers with
//! the fuzz target's checks.

use mailkeep_policy::{score, spam};

#[test]
fn spam_seeds_hold_the_fuzz_targets_properties() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/spam");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        assert!(spam::tokens(&data).iter().all(|t| !t.is_empty()));
        let hits = score::content_rules(&data, Some(1_800_000_000));
        assert!(hits.iter().all(|h| h.weight.is_finite()));
        assert!((0.0..=1.0).contains(&score::combine(Some(0.5), &hits)));
        assert!(score::link_domains(&data, 20).len() <= 20);
        let once = spam::strip_field(&data, "X-Spam-Status");
        assert_eq!(spam::strip_field(&once, "X-Spam-Status"), once);
        n += 1;
    }
    assert!(n >= 3);
}
