//! The delivery log printer (`store::logtext`) over arbitrary field text (the input split at
//! 0xFF into session, recipient, reply and a detail value): one event is one line with no
//! control character, in text and in JSON, and the JSON reads back as the same event.
//! (`crates/store/tests/fuzz_seeds.rs` replays the seeds with these checks.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailkeep_store::{logtext, LogEvent};

fuzz_target!(|data: &[u8]| {
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
});
