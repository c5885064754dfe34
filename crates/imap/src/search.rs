//! SEARCH evaluation (RFC 9051 6.4.4): does one message match the criteria?
//!
//! Implementation notes:
//! - String criteria match case-insensitively as substrings (Unicode lower case), against
//!   decoded text: RFC 2047 words in headers, transfer encodings and charsets in bodies (via
//!   mail-parser), and also against the raw header text, so an encoded form is found too.
//! - Date criteria compare calendar dates only: the internal date in UTC, the Date: header in
//!   its own time zone ("disregarding time and timezone").
//! - The caller parses a message only when [`needs_message`] says the criteria look inside it.

use mail_parser::{Address, HeaderValue, Message, MessagePart, PartType};
use mailkeep_imap_proto::cursor::SequenceSet;
use mailkeep_imap_proto::selected::{Date, SearchKey};

/// What SEARCH knows about one message.
pub struct Candidate<'a> {
    /// Message sequence number.
    pub seq: u32,
    /// UID.
    pub uid: u32,
    /// Flags and keywords.
    pub flags: &'a [String],
    /// Whether the session sees it as \Recent (IMAP4rev1).
    pub recent: bool,
    /// Internal date, seconds since the epoch (UTC).
    pub internal_date: i64,
    /// RFC822.SIZE.
    pub size: u64,
    /// MODSEQ.
    pub modseq: u64,
    /// The parsed message, when the criteria need it.
    pub message: Option<&'a Message<'a>>,
}

/// What SEARCH knows about the mailbox.
pub struct Context<'a> {
    /// The highest sequence number (`*`).
    pub max_seq: u32,
    /// The highest UID (`*` in UID sets).
    pub max_uid: u32,
    /// The saved result (`$`, RFC 5182), as UIDs.
    pub saved: &'a [u32],
    /// Now, seconds since the epoch (OLDER/YOUNGER).
    pub now: i64,
}

/// Whether any criterion looks at the message content (headers or body).
pub fn needs_message(keys: &[SearchKey]) -> bool {
    keys.iter().any(|k| match k {
        SearchKey::Header(..)
        | SearchKey::Body(_)
        | SearchKey::Text(_)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_) => true,
        SearchKey::Not(k) => needs_message(std::slice::from_ref(k)),
        SearchKey::Or(a, b) => {
            needs_message(std::slice::from_ref(a)) || needs_message(std::slice::from_ref(b))
        }
        SearchKey::And(ks) => needs_message(ks),
        _ => false,
    })
}

/// Whether any criterion looks at the body (BODY, TEXT); otherwise the header section is
/// enough for [`needs_message`] criteria.
pub fn needs_body(keys: &[SearchKey]) -> bool {
    keys.iter().any(|k| match k {
        SearchKey::Body(_) | SearchKey::Text(_) => true,
        SearchKey::Not(k) => needs_body(std::slice::from_ref(k)),
        SearchKey::Or(a, b) => {
            needs_body(std::slice::from_ref(a)) || needs_body(std::slice::from_ref(b))
        }
        SearchKey::And(ks) => needs_body(ks),
        _ => false,
    })
}

/// Whether a message whose header section is `raw_header` cannot match, judged from bytes
/// alone, so that it need not be parsed: some top-level key (they all must match) is a header
/// search for a plain ASCII word that the header section does not contain in any case.
/// Sound only when decoding cannot create the word: the section must be ASCII (Unicode case
/// folding maps a few non-ASCII letters to ASCII ones) with no encoded words (`=?`) and no
/// quoted pairs (`\`).
pub struct QuickReject {
    /// The lower-cased words, each with its own SIMD searcher.
    words: Vec<memchr::memmem::Finder<'static>>,
    /// `=?`, the start of an encoded word.
    encoded: memchr::memmem::Finder<'static>,
}

impl QuickReject {
    /// The words to look for, or None when no top-level key allows a quick rejection.
    pub fn new(keys: &[SearchKey]) -> Option<QuickReject> {
        let plain = |n: &[u8]| {
            !n.is_empty()
                && n.iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(b))
        };
        let words: Vec<_> = keys
            .iter()
            .filter_map(|k| match k {
                SearchKey::Header(_, needle) if plain(needle) => {
                    Some(memchr::memmem::Finder::new(&needle.to_ascii_lowercase()).into_owned())
                }
                _ => None,
            })
            .collect();
        (!words.is_empty()).then(|| QuickReject {
            words,
            encoded: memchr::memmem::Finder::new(b"=?").into_owned(),
        })
    }

    /// True when the header section cannot match; `scratch` is reused between calls.
    pub fn rejects(&self, raw_header: &[u8], scratch: &mut Vec<u8>) -> bool {
        if !raw_header.is_ascii()
            || memchr::memchr(b'\\', raw_header).is_some()
            || self.encoded.find(raw_header).is_some()
        {
            return false;
        }
        scratch.clear();
        scratch.extend_from_slice(raw_header);
        scratch.make_ascii_lowercase();
        self.words.iter().any(|w| w.find(scratch).is_none())
    }
}

/// [`QuickReject`] for one header section (tests and single messages).
pub fn header_quick_reject(keys: &[SearchKey], raw_header: &[u8]) -> bool {
    QuickReject::new(keys).is_some_and(|q| q.rejects(raw_header, &mut Vec::new()))
}

/// True when the message matches every key.
pub fn matches_all(keys: &[SearchKey], c: &Candidate<'_>, cx: &Context<'_>) -> bool {
    keys.iter().all(|k| matches(k, c, cx))
}

fn has_flag(c: &Candidate<'_>, flag: &str) -> bool {
    if flag.eq_ignore_ascii_case("\\Recent") {
        return c.recent;
    }
    c.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

fn in_set(set: &SequenceSet, n: u32, max: u32, saved: &[u32], uid: u32) -> bool {
    match set {
        SequenceSet::Saved => saved.contains(&uid),
        other => other.contains(n, max),
    }
}

/// Civil date (UTC) of a Unix time (H. Hinnant's days-to-civil).
pub fn utc_date(secs: i64) -> Date {
    let days = secs.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    Date { year, month, day }
}

fn sent_date(m: &Message<'_>) -> Option<Date> {
    let d = m.date()?;
    Some(Date {
        year: d.year,
        month: d.month,
        day: d.day,
    })
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_lowercase()
}

fn address_text(a: &Address<'_>, out: &mut String) {
    for addr in a.iter() {
        if let Some(n) = &addr.name {
            out.push_str(n);
            out.push(' ');
        }
        if let Some(e) = &addr.address {
            out.push('<');
            out.push_str(e);
            out.push_str("> ");
        }
    }
}

fn value_text(v: &HeaderValue<'_>, out: &mut String) {
    match v {
        HeaderValue::Text(t) => out.push_str(t),
        HeaderValue::TextList(l) => {
            for t in l {
                out.push_str(t);
                out.push(' ');
            }
        }
        HeaderValue::Address(a) => address_text(a, out),
        _ => {}
    }
}

/// The decoded and raw text of every `field` header of the top-level message.
fn header_text(m: &Message<'_>, field: &str) -> Vec<String> {
    let raw = m.raw_message.as_ref();
    m.root_part()
        .headers
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case(field))
        .map(|h| {
            let mut s = String::new();
            value_text(&h.value, &mut s);
            s.push(' ');
            let start = (h.offset_start as usize).min(raw.len());
            let end = (h.offset_end as usize).min(raw.len()).max(start);
            s.push_str(&String::from_utf8_lossy(&raw[start..end]));
            s.to_lowercase()
        })
        .collect()
}

fn collect_bodies(parts: &[MessagePart<'_>], out: &mut String, depth: usize) {
    if depth > 16 {
        return;
    }
    for p in parts {
        match &p.body {
            PartType::Text(t) | PartType::Html(t) => {
                out.push_str(&t.to_lowercase());
                out.push('\n');
            }
            PartType::Message(inner) => {
                out.push_str(&lower(inner.raw_message()));
                out.push('\n');
                collect_bodies(&inner.parts, out, depth + 1);
            }
            _ => {}
        }
    }
}

fn body_text(m: &Message<'_>) -> String {
    let mut out = String::new();
    collect_bodies(&m.parts, &mut out, 0);
    out
}

fn all_headers_text(m: &Message<'_>) -> String {
    let mut s = String::new();
    for h in &m.root_part().headers {
        s.push_str(h.name.as_str());
        s.push_str(": ");
        value_text(&h.value, &mut s);
        s.push('\n');
    }
    let raw = m.raw_message.as_ref();
    let end = (m.root_part().offset_body as usize).min(raw.len());
    s.push_str(&String::from_utf8_lossy(&raw[..end]));
    s.to_lowercase()
}

/// True when one key matches.
pub fn matches(key: &SearchKey, c: &Candidate<'_>, cx: &Context<'_>) -> bool {
    match key {
        SearchKey::All => true,
        SearchKey::Flag(f) => has_flag(c, f),
        SearchKey::NoFlag(f) => !has_flag(c, f),
        SearchKey::New => c.recent && !has_flag(c, "\\Seen"),
        SearchKey::Old => !c.recent,
        SearchKey::Larger(n) => c.size > *n,
        SearchKey::Smaller(n) => c.size < *n,
        SearchKey::Uid(set) => in_set(set, c.uid, cx.max_uid, cx.saved, c.uid),
        SearchKey::Seq(set) => in_set(set, c.seq, cx.max_seq, cx.saved, c.uid),
        SearchKey::ModSeq(m) => c.modseq >= *m,
        SearchKey::Before(d) => utc_date(c.internal_date) < *d,
        SearchKey::On(d) => utc_date(c.internal_date) == *d,
        SearchKey::Since(d) => utc_date(c.internal_date) >= *d,
        SearchKey::Older(s) => c.internal_date <= cx.now - i64::from(*s),
        SearchKey::Younger(s) => c.internal_date > cx.now - i64::from(*s),
        SearchKey::Not(k) => !matches(k, c, cx),
        SearchKey::Or(a, b) => matches(a, c, cx) || matches(b, c, cx),
        SearchKey::And(ks) => matches_all(ks, c, cx),
        SearchKey::SentBefore(d) | SearchKey::SentOn(d) | SearchKey::SentSince(d) => {
            let Some(sent) = c.message.and_then(sent_date) else {
                return false;
            };
            match key {
                SearchKey::SentBefore(_) => sent < *d,
                SearchKey::SentOn(_) => sent == *d,
                _ => sent >= *d,
            }
        }
        SearchKey::Header(field, needle) => {
            let Some(m) = c.message else { return false };
            let needle = lower(needle);
            // RFC 9051 6.4.4: an empty string matches any message with the field.
            header_text(m, field)
                .iter()
                .any(|v| needle.is_empty() || v.contains(&needle))
        }
        SearchKey::Body(needle) => {
            let Some(m) = c.message else { return false };
            body_text(m).contains(&lower(needle))
        }
        SearchKey::Text(needle) => {
            let Some(m) = c.message else { return false };
            let needle = lower(needle);
            all_headers_text(m).contains(&needle) || body_text(m).contains(&needle)
        }
    }
}

#[cfg(test)]
mod quick_reject_tests {
    use super::*;

    #[test]
    fn header_quick_reject_is_sound() {
        let k = |n: &str| vec![SearchKey::Header("Subject".into(), n.as_bytes().to_vec())];
        let h = b"Subject: Quarterly report\r\nFrom: a@example.org\r\n\r\n";
        assert!(
            !header_quick_reject(&k("quarterly"), h),
            "present in another case"
        );
        assert!(header_quick_reject(&k("xylophone"), h));
        assert!(!header_quick_reject(&k("two words"), h), "only plain words");
        let encoded = b"Subject: =?utf-8?q?xylophone?=\r\n\r\n";
        assert!(
            !header_quick_reject(&k("xylophone"), encoded),
            "encoded words may hide it"
        );
        let quoted = b"From: \"xylo\\phone\" <a@b>\r\n\r\n";
        assert!(
            !header_quick_reject(&k("xylophone"), quoted),
            "quoted pairs may hide it"
        );
        let utf8 = "Subject: \u{212A}elvin\r\n\r\n".as_bytes();
        assert!(
            !header_quick_reject(&k("kelvin"), utf8),
            "non-ASCII case folding"
        );
        // Under NOT or OR a missing word proves nothing.
        let not = vec![SearchKey::Not(Box::new(k("xylophone").remove(0)))];
        assert!(!header_quick_reject(&not, h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;
    use mailkeep_imap_proto::cursor::Cursor;
    use mailkeep_imap_proto::frame::Part;
    use mailkeep_imap_proto::selected::search;

    fn keys(s: &str) -> Vec<SearchKey> {
        let parts = vec![Part::Text(format!(" {s}").into_bytes())];
        search(&mut Cursor::new(&parts)).unwrap().1.keys
    }

    const RAW: &[u8] = b"From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <jm@example.com>\r\n\
To: team@example.org\r\n\
Subject: =?UTF-8?B?UXVhcnRlcmx5IHLDqXN1bHRz?=\r\n\
Date: Tue, 3 Nov 2026 23:30:00 -0800\r\n\
X-Priority: 1\r\n\
Content-Type: multipart/alternative; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nDie Ergebnisse sind gro=DFartig, xylophone.\r\n\
--b\r\nContent-Type: text/html\r\n\r\n<p>Results</p>\r\n--b--\r\n";

    fn check(expr: &str, msg: &Message<'_>, flags: &[String]) -> bool {
        let c = Candidate {
            seq: 3,
            uid: 30,
            flags,
            recent: false,
            internal_date: 1_793_000_000, // 2026-10-26 UTC
            size: 2000,
            modseq: 7,
            message: Some(msg),
        };
        let cx = Context {
            max_seq: 10,
            max_uid: 99,
            saved: &[30],
            now: 1_793_000_000 + 3600,
        };
        matches_all(&keys(expr), &c, &cx)
    }

    #[test]
    fn criteria_against_one_message() {
        let msg = MessageParser::default().parse(RAW).unwrap();
        let flags = vec!["\\Seen".to_string(), "$Work".to_string()];
        for (expr, want) in [
            ("ALL", true),
            ("SEEN KEYWORD $work", true),
            ("UNSEEN", false),
            ("FLAGGED", false),
            ("FROM \"müller\"", true),
            ("FROM jm@example.com", true),
            ("SUBJECT \"résults\"", true),
            ("SUBJECT =?UTF-8?B?UXVhcnRlcmx5", true),
            ("HEADER X-Priority 1", true),
            ("HEADER X-Priority \"\"", true),
            ("HEADER X-Missing \"\"", false),
            ("BODY \"großartig\"", true),
            ("BODY XYLOPHONE", true),
            ("BODY results", true),
            ("TEXT team@example.org", true),
            ("TEXT quarterly", true),
            ("BODY quarterly", false),
            ("SENTON 3-Nov-2026", true),
            ("SENTBEFORE 3-Nov-2026", false),
            ("SENTSINCE 1-Nov-2026", true),
            ("ON 26-Oct-2026", true),
            ("BEFORE 26-Oct-2026", false),
            ("SINCE 26-Oct-2026", true),
            ("LARGER 1999 SMALLER 2001", true),
            ("UID 30", true),
            ("UID 31:*", false),
            ("3", true),
            ("4:*", false),
            ("UID $", true),
            ("MODSEQ 7", true),
            ("MODSEQ 8", false),
            ("YOUNGER 7200", true),
            ("OLDER 7200", false),
            ("OR FLAGGED (FROM \"müller\" NOT DELETED)", true),
            ("NOT OR SEEN FLAGGED", false),
        ] {
            assert_eq!(check(expr, &msg, &flags), want, "{expr}");
        }
    }

    #[test]
    fn needs_message_only_for_content_keys() {
        assert!(!needs_message(&keys("SEEN UID 1:* NOT LARGER 5")));
        assert!(needs_message(&keys("SEEN NOT (OR FLAGGED SUBJECT x)")));
        assert!(needs_message(&keys("SENTON 1-Jan-2020")));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(
            utc_date(0),
            Date {
                year: 1970,
                month: 1,
                day: 1
            }
        );
        assert_eq!(
            utc_date(951_782_400),
            Date {
                year: 2000,
                month: 2,
                day: 29
            }
        );
        assert_eq!(
            utc_date(-1),
            Date {
                year: 1969,
                month: 12,
                day: 31
            }
        );
    }
}
