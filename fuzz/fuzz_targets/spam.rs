//! The spam filter's readers of untrusted mail: tokens, content rules, link domains, the
//! removal of a forged X-Spam-Status, and the score they make.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailkeep_policy::{score, spam};

fuzz_target!(|data: &[u8]| {
    for t in spam::tokens(data) {
        assert!(!t.is_empty());
    }
    let hits = score::content_rules(data, Some(1_800_000_000));
    let hits_corpus = score::content_rules(data, None);
    for h in hits.iter().chain(&hits_corpus) {
        assert!(h.weight.is_finite() && !h.name.is_empty());
    }
    let s = score::combine(Some(0.5), &hits);
    assert!((0.0..=1.0).contains(&s));
    let links = score::link_domains(data, 20);
    assert!(links.len() <= 20 && links.iter().all(|d| !d.is_empty()));
    // Removing the field leaves no such field, and a second pass changes nothing.
    let once = spam::strip_field(data, "X-Spam-Status");
    assert!(once.len() <= data.len());
    assert_eq!(spam::strip_field(&once, "X-Spam-Status"), once);
});
