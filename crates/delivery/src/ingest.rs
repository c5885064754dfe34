//! Parsing at ingest: the envelope and body structure IMAP will serve, computed once with
//! mail-parser and stored beside the message.

use mail_parser::{
    Address as MpAddress, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};
use mailkeep_store::{BodyStructure, Envelope, EnvelopeAddress, MessageCache};

/// Deepest MIME nesting we describe; deeper parts are summarized as opaque (DoS bound).
const MAX_DEPTH: usize = 50;

/// Parses a message; a message mail-parser cannot read still gets a minimal cache (text/plain
/// of the whole size), so malformed mail is stored rather than lost.
pub fn parse_cache(raw: &[u8]) -> MessageCache {
    let header_size = header_len(raw) as u64;
    // A bug in the parser must never cost a message: a panic (mail-parser 0.11.9 has a
    // `debug_assert!` that peer input can reach, found by fuzz/ingest) falls back to the
    // minimal cache below.
    let parsed = std::panic::catch_unwind(|| {
        MessageParser::default().parse(raw).map(|msg| MessageCache {
            envelope: envelope(&msg),
            body: structure(&msg, 0, 0, raw),
            message_id: msg.message_id().map(|s| s.to_string()),
            header_size,
        })
    });
    match parsed {
        Ok(Some(cache)) => cache,
        Ok(None) | Err(_) => MessageCache {
            body: BodyStructure {
                media_type: "text".into(),
                subtype: "plain".into(),
                encoding: "7BIT".into(),
                size: raw.len() as u64 - header_size,
                ..Default::default()
            },
            header_size,
            ..Default::default()
        },
    }
}

/// Length of the header section including the blank line.
pub fn header_len(raw: &[u8]) -> usize {
    // memmem: a header search calls this for every message.
    if let Some(p) = memchr::memmem::find(raw, b"\r\n\r\n") {
        return p + 4;
    }
    if let Some(p) = memchr::memmem::find(raw, b"\n\n") {
        return p + 2;
    }
    raw.len()
}

fn addresses(a: Option<&MpAddress<'_>>) -> Vec<EnvelopeAddress> {
    let mut out = Vec::new();
    let split = |addr: Option<&str>| -> (Option<String>, Option<String>) {
        match addr {
            Some(a) => match a.rsplit_once('@') {
                Some((l, d)) => (Some(l.to_string()), Some(d.to_string())),
                None => (Some(a.to_string()), None),
            },
            None => (None, None),
        }
    };
    match a {
        Some(MpAddress::List(list)) => {
            for x in list {
                let (mailbox, host) = split(x.address.as_deref());
                out.push(EnvelopeAddress {
                    name: x.name.as_deref().map(String::from),
                    mailbox,
                    host,
                });
            }
        }
        Some(MpAddress::Group(groups)) => {
            for g in groups {
                // RFC 9051 7.5.2: a group is marked by a start (mailbox = name, host = NIL)
                // and an end (mailbox = NIL, host = NIL).
                let named = g.name.is_some();
                if named {
                    out.push(EnvelopeAddress {
                        name: None,
                        mailbox: g.name.as_deref().map(String::from),
                        host: None,
                    });
                }
                for x in &g.addresses {
                    let (mailbox, host) = split(x.address.as_deref());
                    out.push(EnvelopeAddress {
                        name: x.name.as_deref().map(String::from),
                        mailbox,
                        host,
                    });
                }
                if named {
                    out.push(EnvelopeAddress::default());
                }
            }
        }
        None => {}
    }
    out
}

fn raw_header(msg: &Message<'_>, name: &str) -> Option<String> {
    msg.header_raw(name).map(|v| v.trim().to_string())
}

fn envelope(msg: &Message<'_>) -> Envelope {
    let from = addresses(msg.from());
    // RFC 9051 7.5.2: Sender and Reply-To default to From.
    let sender = match addresses(msg.sender()) {
        v if v.is_empty() => from.clone(),
        v => v,
    };
    let reply_to = match addresses(msg.reply_to()) {
        v if v.is_empty() => from.clone(),
        v => v,
    };
    Envelope {
        date: raw_header(msg, "Date"),
        subject: msg.subject().map(String::from),
        from,
        sender,
        reply_to,
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        bcc: addresses(msg.bcc()),
        in_reply_to: raw_header(msg, "In-Reply-To"),
        message_id: raw_header(msg, "Message-ID"),
    }
}

/// `raw` is the whole message: mail-parser gives every part's offsets into it, those of parts
/// inside an attached message/rfc822 too.
fn structure(msg: &Message<'_>, id: u32, depth: usize, raw: &[u8]) -> BodyStructure {
    let Some(part) = msg.part(id) else {
        return BodyStructure::default();
    };
    let mut b = describe(raw, part);
    if depth >= MAX_DEPTH {
        return b;
    }
    match &part.body {
        PartType::Multipart(children) => {
            b.parts = children
                .iter()
                .map(|c| structure(msg, *c, depth + 1, raw))
                .collect();
            if b.parts.is_empty() {
                // RFC 9051 9: a multipart has at least one part; as Dovecot does, an empty
                // one is shown with an empty text/plain part.
                b.parts.push(BodyStructure {
                    media_type: "text".into(),
                    subtype: "plain".into(),
                    params: vec![("charset".into(), "us-ascii".into())],
                    encoding: "7BIT".into(),
                    body_offset: b.body_offset,
                    header_offset: b.body_offset,
                    ..Default::default()
                });
            }
        }
        PartType::Message(inner) => {
            b.envelope = Some(Box::new(envelope(inner)));
            b.parts = vec![structure(inner, 0, depth + 1, raw)];
        }
        _ => {}
    }
    b
}

/// Parameters as IMAP shows them: mail-parser decodes RFC 2231 and RFC 2047 values, but
/// BODYSTRUCTURE carries them as written (RFC 9051 7.5.2, as Dovecot and Cyrus do), so a
/// value that is not plain ASCII goes back to the RFC 2231 form `name*=utf-8''%XX`.
fn imap_params<'a>(attrs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    attrs
        .map(|(name, value)| {
            if value.is_ascii() && !value.chars().any(|c| c.is_ascii_control()) {
                (name.to_string(), value.to_string())
            } else {
                let mut enc = String::from("utf-8''");
                for b in value.bytes() {
                    if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                        enc.push(b as char);
                    } else {
                        enc.push_str(&format!("%{b:02X}"));
                    }
                }
                (format!("{name}*"), enc)
            }
        })
        .collect()
}

fn describe(raw: &[u8], part: &MessagePart<'_>) -> BodyStructure {
    let (media_type, subtype, mut params) = match part.content_type() {
        Some(ct) => (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype()
                .map(|s| s.to_ascii_lowercase())
                .unwrap_or_else(|| "plain".into()),
            imap_params(
                ct.attributes()
                    .unwrap_or_default()
                    .iter()
                    .map(|a| (a.name.as_ref(), a.value.as_ref())),
            ),
        ),
        // RFC 2045 5.2: the default is text/plain; charset=us-ascii.
        None => match &part.body {
            PartType::Multipart(_) => ("multipart".into(), "mixed".into(), vec![]),
            PartType::Message(_) => ("message".into(), "rfc822".into(), vec![]),
            _ => ("text".into(), "plain".into(), vec![]),
        },
    };
    // RFC 2045 5.2 / RFC 2046 4.1.2: text without a charset is US-ASCII; shown, as Dovecot
    // does, so clients need not know the default.
    if media_type == "text"
        && !params
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("charset"))
    {
        params.insert(0, ("charset".into(), "us-ascii".into()));
    }
    let start = part.raw_body_offset() as usize;
    let end = (part.raw_end_offset() as usize).min(raw.len());
    let body = raw.get(start..end).unwrap_or_default();
    let lines = if media_type == "text" || (media_type == "message" && subtype == "rfc822") {
        // Line ends in the body, as Dovecot counts them; the CRLF before a boundary belongs
        // to the boundary (RFC 2046 5.1.1), not to the part.
        body.iter().filter(|b| **b == b'\n').count() as u64
    } else {
        0
    };
    BodyStructure {
        media_type,
        subtype,
        params,
        // RFC 9051 7.5.2: Content-ID and Content-Description as written (not decoded).
        id: raw_value(raw, part, "Content-ID"),
        description: raw_value(raw, part, "Content-Description"),
        encoding: part
            .content_transfer_encoding()
            .map(|e| e.to_ascii_uppercase())
            .unwrap_or_else(|| "7BIT".into()),
        size: body.len() as u64,
        lines,
        md5: raw_value(raw, part, "Content-MD5"),
        disposition: part.content_disposition().map(|d| {
            (
                d.ctype().to_ascii_lowercase(),
                imap_params(
                    d.attributes()
                        .unwrap_or_default()
                        .iter()
                        .map(|a| (a.name.as_ref(), a.value.as_ref())),
                ),
            )
        }),
        language: match part.content_language() {
            mail_parser::HeaderValue::Text(t) => vec![t.to_string()],
            mail_parser::HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
            _ => vec![],
        },
        location: part.content_location().map(String::from),
        parts: vec![],
        envelope: None,
        header_offset: part.raw_header_offset() as u64,
        body_offset: part.raw_body_offset() as u64,
    }
}

/// A header's value exactly as written (unfolded and trimmed), not as mail-parser decoded it.
fn raw_value(raw: &[u8], part: &MessagePart<'_>, name: &str) -> Option<String> {
    let h = part
        .headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))?;
    let v = raw.get(h.offset_start as usize..h.offset_end as usize)?;
    let text = String::from_utf8_lossy(v);
    let unfolded: String = text.replace("\r\n", "").replace('\n', "");
    let t = unfolded.trim();
    (!t.is_empty()).then(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_and_structure_of_a_multipart() {
        let raw = b"From: =?UTF-8?Q?J=C3=BCrgen?= <j@example.com>\r\n\
To: a@example.com, Team: b@example.com, c@example.com;\r\n\
Subject: =?UTF-8?B?aMOpbGxv?=\r\n\
Date: Mon, 2 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <abc@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Language: de\r\n\
\r\n\
line one\r\n\
line two\r\n\
--b1\r\n\
Content-Type: application/pdf; name=x.pdf\r\n\
Content-Disposition: attachment; filename=x.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
AAAA\r\n\
--b1--\r\n";
        let c = parse_cache(raw);
        assert_eq!(c.message_id.as_deref(), Some("abc@example.com"));
        assert_eq!(c.envelope.subject.as_deref(), Some("héllo"));
        assert_eq!(c.envelope.from[0].name.as_deref(), Some("Jürgen"));
        assert_eq!(c.envelope.from[0].host.as_deref(), Some("example.com"));
        assert_eq!(c.envelope.sender, c.envelope.from);
        // a, group start, b, c, group end
        assert_eq!(c.envelope.to.len(), 5, "{:?}", c.envelope.to);
        assert_eq!(c.envelope.to[1].mailbox.as_deref(), Some("Team"));
        assert_eq!(c.body.media_type, "multipart");
        assert_eq!(c.body.parts.len(), 2);
        // "line one\r\nline two": the CRLF before the boundary belongs to the boundary.
        assert_eq!(c.body.parts[0].lines, 1);
        assert_eq!(c.body.parts[0].language, vec!["de".to_string()]);
        assert_eq!(c.body.parts[1].encoding, "BASE64");
        assert_eq!(
            c.body.parts[1].disposition.as_ref().map(|d| d.0.as_str()),
            Some("attachment")
        );
        assert!(c.header_size > 0);
    }

    #[test]
    fn nested_message_has_envelope() {
        let raw = b"Subject: outer\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: x@y.example\r\n\r\nhi\r\n";
        let c = parse_cache(raw);
        assert_eq!(c.body.subtype, "rfc822");
        let inner = c.body.envelope.as_ref().expect("inner envelope");
        assert_eq!(inner.subject.as_deref(), Some("inner"));
        assert_eq!(c.body.parts.len(), 1);
    }

    #[test]
    fn regression_mail_parser_invalid_part_id_does_not_panic() {
        let raw = include_bytes!("../testdata/mail-parser-0.11.9-invalid-part-id.eml");
        let c = parse_cache(raw);
        assert!(c.header_size > 0);
    }

    #[test]
    fn garbage_still_gets_a_cache() {
        let c = parse_cache(&[0xff, 0x00, b'\r', b'\n']);
        assert!(!c.body.media_type.is_empty());
    }
}
