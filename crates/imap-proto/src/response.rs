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
        out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
        out.extend_from_slice(s);
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
