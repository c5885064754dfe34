//! The delivery log as people and scripts read it (`mailkeep log search`): every field can
//! hold text a peer chose (a HELO name, a reply of another server, a login name, a header),
//! so output escapes what a terminal or a line-based reader would take for structure.
//!
//! - Text: control characters (C0, DEL, C1), line and paragraph separators and the bidi
//!   controls are written as `\n`, `\r`, `\t` or `\u{..}`, and a backslash as `\\`, so one
//!   event is one line and a peer cannot forge another or move the cursor.
//! - JSON: serde_json escapes C0, `"` and `\`; DEL, C1, U+2028/U+2029 and the bidi controls
//!   are escaped as `\uXXXX` too. The JSON still reads back as the same event.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::LogEvent;

/// Characters escaped on output besides C0: what can break a line or reorder a terminal's
/// text.
fn dangerous(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with control characters escaped (see the module notes).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| dangerous(c) || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if dangerous(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One event's fields as a line of text (`to=<...> outcome "reply" key=value ...`), escaped.
pub fn describe(e: &LogEvent) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &e.recipient {
        parts.push(format!("to=<{}>", escape(r)));
    } else if e.kind == "smtp.mail" {
        parts.push(format!(
            "from=<{}>",
            escape(e.sender.as_deref().unwrap_or(""))
        ));
    }
    if let Some(m) = &e.message_id {
        parts.push(format!("message-id=<{}>", escape(m)));
    }
    if let Some(o) = &e.outcome {
        parts.push(escape(o).into_owned());
    }
    if let Some(r) = &e.reply {
        parts.push(format!("\"{}\"", escape(r)));
    }
    if let serde_json::Value::Object(m) = &e.detail {
        for (k, v) in m {
            if v.is_null() {
                continue;
            }
            let v = match v {
                serde_json::Value::String(s) => escape(s).into_owned(),
                // Nested values as JSON, with the JSON escaping.
                other => json_escape(other.to_string()),
            };
            parts.push(format!("{}={v}", escape(k)));
        }
    }
    parts.join(" ")
}

/// One event as a line of JSON, escaped (see the module notes).
pub fn json(e: &LogEvent) -> Result<String, serde_json::Error> {
    serde_json::to_string(e).map(json_escape)
}

/// Serialized JSON with the characters serde_json leaves raw escaped as `\uXXXX` (they can
/// only be inside strings, where the escape means the same character).
fn json_escape(s: String) -> String {
    if !s.chars().any(dangerous) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if dangerous(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forged() -> LogEvent {
        LogEvent {
            ts: 1,
            session: "s\r\n2026-12-07 10:00:00.000Z smtp.rcpt".into(),
            kind: "smtp.rcpt".into(),
            recipient: Some("a\n@b".into()),
            reply: Some("250 ok\r\n\u{1b}[2Jwiped\u{85}\u{2028}\u{202e}".into()),
            detail: serde_json::json!({"helo": "x\ny", "nested": {"k": "v\u{9b}w"}}),
            ..Default::default()
        }
    }

    #[test]
    fn a_peer_cannot_forge_log_lines_or_terminal_codes() {
        let e = forged();
        let text = describe(&e);
        assert!(!text.chars().any(dangerous), "{text}");
        assert!(text.contains("to=<a\\n@b>"), "{text}");
        assert!(text.contains("\\u{1b}[2J"), "{text}");
        assert!(text.contains("helo=x\\ny"), "{text}");
        assert!(!escape(&e.session).contains('\n'));
        let j = json(&e).unwrap();
        assert!(!j.chars().any(dangerous), "{j}");
        assert!(
            j.contains("\\u0085") && j.contains("\\u2028") && j.contains("\\u009b"),
            "{j}"
        );
        // The JSON still says exactly what happened.
        let back: LogEvent = serde_json::from_str(&j).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        assert!(matches!(
            escape("250 2.0.0 OK: queued as x"),
            Cow::Borrowed(_)
        ));
        assert_eq!(escape("caf\u{e9} \u{4e2d}"), "caf\u{e9} \u{4e2d}");
        assert_eq!(escape("a\\b"), "a\\\\b");
    }
}
