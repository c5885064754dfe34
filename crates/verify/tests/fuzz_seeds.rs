//! The committed feedback-report fuzz seeds (fuzz/corpus/feedback): each names the sender
//! complained of.

#[test]
fn feedback_seeds_name_the_sender() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/feedback");
    let mut senders = Vec::new();
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        senders.push(mailkeep_verify::parse_complaint(&data).map(|c| c.sender));
    }
    senders.sort();
    assert_eq!(
        senders,
        vec![
            Some("alice@example.test".to_string()),
            Some("x@example.test".to_string())
        ]
    );
}
