//! The committed log printer fuzz seeds (fuzz/corpus/logtext) go through `logtext` with the
//! fuzz target's checks.

use mailkeep_store::{logtext, LogEvent};

fn check(data: &[u8]) {
    let mut parts = data.splitn(4, |b| *b == 0xff);
    let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (session, recipient, reply, helo) = (text(), text(), text(), text());
    let e = LogEvent {
        ts: 1,
        session,
        kind: "smtp.rcpt".into(),
        recipient: Some(recipient),
        reply: Some(reply),
        detail: serde_json::json!({ "helo": helo, "nested": [helo] }),
        ..Default::default()
    };
    let line = logtext::describe(&e);
    assert!(!line.chars().any(char::is_control), "{line:?}");
    let json = logtext::json(&e).expect("serializes");
    assert!(!json.chars().any(char::is_control), "{json:?}");
    let back: LogEvent = serde_json::from_str(&json).expect("reads back");
    assert_eq!(back, e);
}

#[test]
fn logtext_seeds_hold_the_fuzz_targets_properties() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/logtext");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        check(&std::fs::read(entry.expect("entry").path()).expect("seed"));
        n += 1;
    }
    assert!(n >= 3);
}
