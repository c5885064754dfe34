//! Encoding server responses (RFC 9051 7): strings in the cheapest safe form, mailbox names
//! for the session's dialect, and the ENVELOPE and BODYSTRUCTURE of a message from the
//! structure cached at ingest.

use mailkeep_types::message::{BodyStructure, Envelope, EnvelopeAddress};

use crate::mutf7;

/// Longest string sent quoted; longer ones go as literals (easier on clients' line limits).
const MAX_QUOTED: usize = 1024;

fn is_astring_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\')
}

/// Writes a string: quoted when it can be (no CR, LF or NUL; 8-bit only when the client
/// accepts UTF-8 and it is valid UTF-8), a literal otherwise.
pub fn string(out: &mut Vec<u8>, s: &[u8], utf8: bool) {
    let quotable = s.len() <= MAX_QUOTED
        && !s.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))
        && (s.is_ascii() || (utf8 && std::str::from_utf8(s).is_ok()));
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// Writes a literal. RFC 3501 4.3 / RFC 9051 4.3: a literal carries no NUL (only a
/// literal8, RFC 3516, does), so each NUL goes out as 0x80, as Dovecot does; the length
/// stays the same, and so do RFC822.SIZE and partial offsets.
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    let start = out.len();
    out.extend_from_slice(s);
    for b in &mut out[start..] {
        if *b == 0 {
            *b = 0x80;
        }
    }
}

/// Writes an nstring: NIL or a string.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>, utf8: bool) {
    match s {
        Some(s) => string(out, s, utf8),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Writes an astring: an atom when it is one (and not NIL), a string otherwise.
pub fn astring(out: &mut Vec<u8>, s: &[u8], utf8: bool) {
    if !s.is_empty() && s.iter().all(|b| is_astring_char(*b)) && !s.eq_ignore_ascii_case(b"NIL") {
        out.extend_from_slice(s);
    } else {
        string(out, s, utf8);
    }
}

/// Writes a mailbox name: UTF-8 for IMAP4rev2/UTF8=ACCEPT sessions, modified UTF-7 for
/// IMAP4rev1 (RFC 9051 5.1, RFC 3501 5.1.3).
pub fn mailbox(out: &mut Vec<u8>, name: &str, utf8: bool) {
    if utf8 {
        astring(out, name.as_bytes(), true);
    } else {
        astring(out, mutf7::encode(name).as_bytes(), false);
    }
}

fn addresses(out: &mut Vec<u8>, list: &[EnvelopeAddress], utf8: bool) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in list {
        // RFC 9051 7.5.2: (name adl mailbox host); adl (source route) is always NIL.
        out.push(b'(');
        nstring(out, a.name.as_deref().map(str::as_bytes), utf8);
        out.extend_from_slice(b" NIL ");
        nstring(out, a.mailbox.as_deref().map(str::as_bytes), utf8);
        out.push(b' ');
        nstring(out, a.host.as_deref().map(str::as_bytes), utf8);
        out.push(b')');
    }
    out.push(b')');
}

/// Writes an ENVELOPE (RFC 9051 7.5.2).
pub fn envelope(out: &mut Vec<u8>, e: &Envelope, utf8: bool) {
    out.push(b'(');
    nstring(out, e.date.as_deref().map(str::as_bytes), utf8);
    out.push(b' ');
    nstring(out, e.subject.as_deref().map(str::as_bytes), utf8);
    for list in [&e.from, &e.sender, &e.reply_to, &e.to, &e.cc, &e.bcc] {
        out.push(b' ');
        addresses(out, list, utf8);
    }
    out.push(b' ');
    nstring(out, e.in_reply_to.as_deref().map(str::as_bytes), utf8);
    out.push(b' ');
    nstring(out, e.message_id.as_deref().map(str::as_bytes), utf8);
    out.push(b')');
}

fn params(out: &mut Vec<u8>, p: &[(String, String)], utf8: bool) {
    if p.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (k, v)) in p.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, k.to_ascii_uppercase().as_bytes(), utf8);
        out.push(b' ');
        string(out, v.as_bytes(), utf8);
    }
    out.push(b')');
}

fn extension_data(out: &mut Vec<u8>, b: &BodyStructure, utf8: bool) {
    // body-fld-dsp, body-fld-lang, body-fld-loc (RFC 9051 9).
    out.push(b' ');
    match &b.disposition {
        Some((kind, p)) => {
            out.push(b'(');
            string(out, kind.to_ascii_uppercase().as_bytes(), utf8);
            out.push(b' ');
            params(out, p, utf8);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    match b.language.as_slice() {
        [] => out.extend_from_slice(b"NIL"),
        [one] => string(out, one.as_bytes(), utf8),
        many => {
            out.push(b'(');
            for (i, l) in many.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, l.as_bytes(), utf8);
            }
            out.push(b')');
        }
    }
    out.push(b' ');
    nstring(out, b.location.as_deref().map(str::as_bytes), utf8);
}

/// Writes BODYSTRUCTURE (`extended`) or BODY (RFC 9051 7.5.2).
pub fn body_structure(out: &mut Vec<u8>, b: &BodyStructure, extended: bool, utf8: bool) {
    out.push(b'(');
    if b.media_type.eq_ignore_ascii_case("multipart") && !b.parts.is_empty() {
        for p in &b.parts {
            body_structure(out, p, extended, utf8);
        }
        out.push(b' ');
        string(out, b.subtype.to_ascii_uppercase().as_bytes(), utf8);
        if extended {
            out.push(b' ');
            params(out, &b.params, utf8);
            extension_data(out, b, utf8);
        }
        out.push(b')');
        return;
    }
    string(out, b.media_type.to_ascii_uppercase().as_bytes(), utf8);
    out.push(b' ');
    string(out, b.subtype.to_ascii_uppercase().as_bytes(), utf8);
    out.push(b' ');
    params(out, &b.params, utf8);
    out.push(b' ');
    nstring(out, b.id.as_deref().map(str::as_bytes), utf8);
    out.push(b' ');
    nstring(out, b.description.as_deref().map(str::as_bytes), utf8);
    out.push(b' ');
    string(out, b.encoding.as_bytes(), utf8);
    out.extend_from_slice(format!(" {}", b.size).as_bytes());
    let is_message = b.media_type.eq_ignore_ascii_case("message")
        && (b.subtype.eq_ignore_ascii_case("rfc822") || b.subtype.eq_ignore_ascii_case("global"));
    if is_message {
        // RFC 9051 9 body-type-msg: envelope, body, lines.
        out.push(b' ');
        match &b.envelope {
            Some(e) => envelope(out, e, utf8),
            None => envelope(out, &Envelope::default(), utf8),
        }
        out.push(b' ');
        match b.parts.first() {
            Some(inner) => body_structure(out, inner, extended, utf8),
            None => out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)"),
        }
        out.extend_from_slice(format!(" {}", b.lines).as_bytes());
    } else if b.media_type.eq_ignore_ascii_case("text") {
        out.extend_from_slice(format!(" {}", b.lines).as_bytes());
    }
    if extended {
        out.push(b' ');
        nstring(out, b.md5.as_deref().map(str::as_bytes), utf8);
        extension_data(out, b, utf8);
    }
    out.push(b')');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::Cursor;
    use crate::frame::Part;

    fn s(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_choose_the_safe_form() {
        assert_eq!(s(|o| string(o, b"hello", false)), "\"hello\"");
        assert_eq!(s(|o| string(o, b"a\"b\\c", false)), r#""a\"b\\c""#);
        assert_eq!(
            s(|o| string(o, b"two\r\nlines", false)),
            "{10}\r\ntwo\r\nlines"
        );
        assert_eq!(s(|o| string(o, "Grüße".as_bytes(), false)), "{7}\r\nGrüße");
        assert_eq!(s(|o| string(o, "Grüße".as_bytes(), true)), "\"Grüße\"");
        assert_eq!(s(|o| astring(o, b"INBOX", false)), "INBOX");
        assert_eq!(s(|o| astring(o, b"nil", false)), "\"nil\"");
        assert_eq!(s(|o| astring(o, b"", false)), "\"\"");
        assert_eq!(s(|o| mailbox(o, "日本語", false)), "&ZeVnLIqe-");
        assert_eq!(s(|o| mailbox(o, "Sent Items", true)), "\"Sent Items\"");
    }

    #[test]
    fn what_we_write_reads_back() {
        for v in [
            &b"plain"[..],
            b"with \"quotes\"",
            b"cr\rlf\n",
            b"",
            "ünï".as_bytes(),
        ] {
            for utf8 in [false, true] {
                let mut out = Vec::new();
                astring(&mut out, v, utf8);
                // Frame it like a client command would be, then read it back.
                let text = String::from_utf8_lossy(&out).into_owned();
                let parts = if let Some(rest) = text.strip_prefix('{') {
                    let (_, body) = rest.split_once("}\r\n").unwrap();
                    vec![
                        Part::Text(vec![]),
                        Part::Literal {
                            data: body.as_bytes().to_vec(),
                            binary: false,
                        },
                        Part::Text(vec![]),
                    ]
                } else {
                    vec![Part::Text(out.clone())]
                };
                let mut c = Cursor::new(&parts);
                assert_eq!(&*c.astring().unwrap(), v, "{text:?}");
            }
        }
    }

    #[test]
    fn envelope_encoding_rfc_example_shape() {
        let e = Envelope {
            date: Some("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)".into()),
            subject: Some("IMAP4rev1 WG mtg summary and minutes".into()),
            from: vec![EnvelopeAddress {
                name: Some("Terry Gray".into()),
                mailbox: Some("gray".into()),
                host: Some("cac.washington.edu".into()),
            }],
            to: vec![EnvelopeAddress {
                name: None,
                mailbox: Some("imap".into()),
                host: Some("cac.washington.edu".into()),
            }],
            message_id: Some("<B27397-0100000@cac.washington.edu>".into()),
            ..Default::default()
        };
        let mut e2 = e.clone();
        e2.sender = e.from.clone();
        e2.reply_to = e.from.clone();
        // RFC 9051 7.5.2 FETCH example (without the Cc and Bcc of the original).
        assert_eq!(
            s(|o| envelope(o, &e2, false)),
            "(\"Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\" \"IMAP4rev1 WG mtg summary and minutes\" \
((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) ((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) \
((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) ((NIL NIL \"imap\" \"cac.washington.edu\")) NIL NIL NIL \
\"<B27397-0100000@cac.washington.edu>\")"
        );
    }

    #[test]
    fn body_structure_of_text_multipart_and_message() {
        let text = BodyStructure {
            media_type: "text".into(),
            subtype: "plain".into(),
            params: vec![("charset".into(), "us-ascii".into())],
            encoding: "7BIT".into(),
            size: 3028,
            lines: 92,
            ..Default::default()
        };
        // RFC 9051 7.5.2 example for a simple text part.
        assert_eq!(
            s(|o| body_structure(o, &text, false, false)),
            "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 3028 92)"
        );
        assert_eq!(
            s(|o| body_structure(o, &text, true, false)),
            "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 3028 92 NIL NIL NIL NIL)"
        );
        let multi = BodyStructure {
            media_type: "multipart".into(),
            subtype: "mixed".into(),
            params: vec![("boundary".into(), "b1".into())],
            parts: vec![
                text.clone(),
                BodyStructure {
                    media_type: "message".into(),
                    subtype: "rfc822".into(),
                    encoding: "7BIT".into(),
                    size: 10,
                    lines: 1,
                    parts: vec![text.clone()],
                    envelope: Some(Box::new(Envelope::default())),
                    disposition: Some((
                        "attachment".into(),
                        vec![("filename".into(), "fwd.eml".into())],
                    )),
                    language: vec!["en".into(), "de".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let got = s(|o| body_structure(o, &multi, true, false));
        assert!(got.starts_with("((\"TEXT\" \"PLAIN\""), "{got}");
        assert!(got.contains("\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 10 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) (\"TEXT\""), "{got}");
        assert!(
            got.contains("(\"ATTACHMENT\" (\"FILENAME\" \"fwd.eml\")) (\"en\" \"de\") NIL)"),
            "{got}"
        );
        assert!(
            got.ends_with(" \"MIXED\" (\"BOUNDARY\" \"b1\") NIL NIL NIL)"),
            "{got}"
        );
        // Parentheses balance (outside quoted strings).
        let mut depth = 0i32;
        let mut quoted = false;
        let mut prev = 0u8;
        for b in got.bytes() {
            match b {
                b'"' if prev != b'\\' => quoted = !quoted,
                b'(' if !quoted => depth += 1,
                b')' if !quoted => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0);
            prev = b;
        }
        assert_eq!(depth, 0);
    }
}

/// The kind of a status response (RFC 9051 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// OK.
    Ok,
    /// NO: the command failed (user or server error).
    No,
    /// BAD: a protocol or syntax error.
    Bad,
    /// PREAUTH greeting.
    PreAuth,
    /// BYE: the server closes the connection.
    Bye,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
            Status::PreAuth => "PREAUTH",
            Status::Bye => "BYE",
        }
    }
}

/// A status line: `TAG OK [CODE] text` (or `*` untagged). The text is made safe: no CR or
/// LF can end the line early, so nothing a client sent can inject a response.
pub fn status_line(
    out: &mut Vec<u8>,
    tag: Option<&str>,
    status: Status,
    code: Option<&str>,
    text: &str,
) {
    out.extend_from_slice(tag.unwrap_or("*").as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.word().as_bytes());
    if let Some(c) = code {
        out.extend_from_slice(b" [");
        out.extend_from_slice(c.as_bytes());
        out.push(b']');
    }
    out.push(b' ');
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    out.extend_from_slice(if clean.is_empty() { "done" } else { &clean }.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// One mailbox of a LIST response (RFC 9051 7.3.1, RFC 5258 extended data).
pub struct ListEntry<'a> {
    /// Attributes (`\HasNoChildren`, `\Subscribed`, `\Sent`...).
    pub attributes: &'a [&'a str],
    /// The name.
    pub name: &'a str,
    /// CHILDINFO ("SUBSCRIBED") for RECURSIVEMATCH (RFC 5258 3.5).
    pub child_info: bool,
    /// OLDNAME (RFC 9051 6.3.6 for rev2 clients after RENAME).
    pub old_name: Option<&'a str>,
}

/// `* LIST (attrs) "/" name [extended data]`.
pub fn list_line(out: &mut Vec<u8>, verb: &str, e: &ListEntry<'_>, utf8: bool) {
    out.extend_from_slice(format!("* {verb} (").as_bytes());
    out.extend_from_slice(e.attributes.join(" ").as_bytes());
    out.extend_from_slice(b") \"/\" ");
    mailbox(out, e.name, utf8);
    let mut ext = Vec::new();
    if e.child_info {
        ext.push("\"CHILDINFO\" (\"SUBSCRIBED\")".to_string());
    }
    if let Some(old) = e.old_name {
        let mut b = b"\"OLDNAME\" (".to_vec();
        mailbox(&mut b, old, utf8);
        b.push(b')');
        ext.push(String::from_utf8_lossy(&b).into_owned());
    }
    if !ext.is_empty() {
        out.extend_from_slice(format!(" ({})", ext.join(" ")).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `* STATUS name (ITEM n ...)`.
pub fn status_data(out: &mut Vec<u8>, name: &str, items: &[(&str, u64)], utf8: bool) {
    out.extend_from_slice(b"* STATUS ");
    mailbox(out, name, utf8);
    out.extend_from_slice(b" (");
    let parts: Vec<String> = items.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.extend_from_slice(parts.join(" ").as_bytes());
    out.extend_from_slice(b")\r\n");
}

/// A set of numbers in the shortest sequence-set form (`1:3,7,9:10`); `None` when empty.
pub fn sequence_set(numbers: &[u32]) -> Option<String> {
    let mut v = numbers.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    (!out.is_empty()).then(|| out.join(","))
}

/// What an ESEARCH response reports (RFC 4731).
#[derive(Debug, Default)]
pub struct ESearch<'a> {
    /// The command's tag.
    pub tag: &'a str,
    /// UID SEARCH.
    pub uid: bool,
    /// MIN.
    pub min: Option<u32>,
    /// MAX.
    pub max: Option<u32>,
    /// COUNT.
    pub count: Option<usize>,
    /// ALL.
    pub all: Option<&'a [u32]>,
    /// The highest MODSEQ of the matches (RFC 7162 3.1.5).
    pub modseq: Option<u64>,
}

/// `* ESEARCH (TAG "a1") UID MIN 1 COUNT 3 ALL 1:3`.
pub fn esearch(out: &mut Vec<u8>, e: &ESearch<'_>) {
    out.extend_from_slice(b"* ESEARCH (TAG ");
    string(out, e.tag.as_bytes(), false);
    out.push(b')');
    if e.uid {
        out.extend_from_slice(b" UID");
    }
    if let Some(v) = e.min {
        out.extend_from_slice(format!(" MIN {v}").as_bytes());
    }
    if let Some(v) = e.max {
        out.extend_from_slice(format!(" MAX {v}").as_bytes());
    }
    if let Some(v) = e.count {
        out.extend_from_slice(format!(" COUNT {v}").as_bytes());
    }
    // RFC 4731 3.1: ALL is omitted when nothing matched.
    if let Some(set) = e.all.and_then(sequence_set) {
        out.extend_from_slice(format!(" ALL {set}").as_bytes());
    }
    if let Some(m) = e.modseq {
        out.extend_from_slice(format!(" MODSEQ {m}").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `* SEARCH 2 3 5 [(MODSEQ n)]` (IMAP4rev1 form).
pub fn search_line(out: &mut Vec<u8>, numbers: &[u32], modseq: Option<u64>) {
    out.extend_from_slice(b"* SEARCH");
    for n in numbers {
        out.extend_from_slice(format!(" {n}").as_bytes());
    }
    if let (Some(m), false) = (modseq, numbers.is_empty()) {
        out.extend_from_slice(format!(" (MODSEQ {m})").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `* VANISHED [(EARLIER)] uids` (RFC 7162 3.2.10); nothing when there are none.
pub fn vanished(out: &mut Vec<u8>, uids: &[u32], earlier: bool) {
    if let Some(set) = sequence_set(uids) {
        out.extend_from_slice(if earlier {
            b"* VANISHED (EARLIER) ".as_slice()
        } else {
            b"* VANISHED ".as_slice()
        });
        out.extend_from_slice(set.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// `* QUOTA "root" (STORAGE used limit MESSAGE n limit)` (RFC 9208); sizes in KiB for STORAGE.
pub fn quota(out: &mut Vec<u8>, root: &str, resources: &[(&str, u64, u64)]) {
    out.extend_from_slice(b"* QUOTA ");
    astring(out, root.as_bytes(), true);
    out.extend_from_slice(b" (");
    let parts: Vec<String> = resources
        .iter()
        .map(|(r, used, limit)| format!("{r} {used} {limit}"))
        .collect();
    out.extend_from_slice(parts.join(" ").as_bytes());
    out.extend_from_slice(b")\r\n");
}

#[cfg(test)]
mod more_tests {
    use super::*;

    fn s(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn status_lines_cannot_be_injected() {
        assert_eq!(
            s(|o| status_line(
                o,
                Some("a1"),
                Status::Ok,
                Some("READ-WRITE"),
                "SELECT completed"
            )),
            "a1 OK [READ-WRITE] SELECT completed\r\n"
        );
        assert_eq!(
            s(|o| status_line(o, None, Status::Bye, None, "bye\r\n* OK forged")),
            "* BYE bye  * OK forged\r\n"
        );
    }

    #[test]
    fn list_status_and_search_responses() {
        let e = ListEntry {
            attributes: &["\\HasNoChildren", "\\Sent"],
            name: "Sent Items",
            child_info: false,
            old_name: None,
        };
        assert_eq!(
            s(|o| list_line(o, "LIST", &e, true)),
            "* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent Items\"\r\n"
        );
        let e = ListEntry {
            attributes: &[],
            name: "日本語",
            child_info: true,
            old_name: Some("Old"),
        };
        assert_eq!(
            s(|o| list_line(o, "LIST", &e, false)),
            "* LIST () \"/\" &ZeVnLIqe- (\"CHILDINFO\" (\"SUBSCRIBED\") \"OLDNAME\" (Old))\r\n"
        );
        assert_eq!(
            s(|o| status_data(o, "INBOX", &[("MESSAGES", 3), ("UIDNEXT", 9)], true)),
            "* STATUS INBOX (MESSAGES 3 UIDNEXT 9)\r\n"
        );
        assert_eq!(
            sequence_set(&[7, 1, 2, 3, 9, 10, 3]).as_deref(),
            Some("1:3,7,9:10")
        );
        assert_eq!(sequence_set(&[]), None);
        let all = [4, 5, 6, 10];
        assert_eq!(
            s(|o| esearch(
                o,
                &ESearch {
                    tag: "a5",
                    uid: true,
                    min: Some(4),
                    count: Some(4),
                    all: Some(&all),
                    ..Default::default()
                }
            )),
            "* ESEARCH (TAG \"a5\") UID MIN 4 COUNT 4 ALL 4:6,10\r\n"
        );
        assert_eq!(
            s(|o| esearch(
                o,
                &ESearch {
                    tag: "a6",
                    count: Some(0),
                    all: Some(&[]),
                    ..Default::default()
                }
            )),
            "* ESEARCH (TAG \"a6\") COUNT 0\r\n"
        );
        assert_eq!(
            s(|o| search_line(o, &[2, 5], Some(917162500))),
            "* SEARCH 2 5 (MODSEQ 917162500)\r\n"
        );
        assert_eq!(s(|o| search_line(o, &[], Some(1))), "* SEARCH\r\n");
        assert_eq!(
            s(|o| vanished(o, &[41, 43, 44, 45], true)),
            "* VANISHED (EARLIER) 41,43:45\r\n"
        );
        assert_eq!(s(|o| vanished(o, &[], false)), "");
        assert_eq!(
            s(|o| quota(o, "", &[("STORAGE", 10, 512)])),
            "* QUOTA \"\" (STORAGE 10 512)\r\n"
        );
    }
}
