//! FETCH responses (RFC 9051 7.5.2): one `* n FETCH (...)` line from the message's stored
//! metadata, its cached structure and, only when a body section is asked for, its content.

use std::borrow::Cow;

use mailkeep_imap_proto::response::{body_structure, envelope, literal, nstring, string};
use mailkeep_imap_proto::section::{binary, extract, BinaryError};
use mailkeep_imap_proto::selected::{FetchItem, Section, SectionText};
use mailkeep_types::message::{BodyStructure, Envelope};

/// What FETCH knows about one message without reading it.
pub struct Meta<'a> {
    /// UID.
    pub uid: u32,
    /// Flags and keywords.
    pub flags: &'a [String],
    /// Whether the session shows it as \Recent (IMAP4rev1 only).
    pub recent: bool,
    /// Internal date, seconds since the epoch.
    pub internal_date: i64,
    /// RFC822.SIZE.
    pub size: u64,
    /// MODSEQ.
    pub modseq: u64,
    /// Cached envelope.
    pub envelope: &'a Envelope,
    /// Cached body structure.
    pub body: &'a BodyStructure,
}

/// Whether any item needs the message content.
pub fn needs_content(items: &[FetchItem]) -> bool {
    items.iter().any(|i| {
        matches!(
            i,
            FetchItem::Rfc822(_)
                | FetchItem::Section { .. }
                | FetchItem::Binary { .. }
                | FetchItem::BinarySize(_)
        )
    })
}

/// Whether the items set \Seen (a non-PEEK body section, RFC 9051 6.4.5).
pub fn sets_seen(items: &[FetchItem]) -> bool {
    items.iter().any(|i| match i {
        FetchItem::Section { peek, .. } | FetchItem::Binary { peek, .. } => !peek,
        FetchItem::Rfc822(None) | FetchItem::Rfc822(Some(SectionText::Text)) => true,
        _ => false,
    })
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// INTERNALDATE in the RFC 9051 `date-time` form, in UTC: `"17-Jul-1996 09:44:25 +0000"`.
pub fn date_time(secs: i64) -> String {
    let d = crate::search::utc_date(secs);
    let t = secs.rem_euclid(86_400);
    format!(
        "\"{:2}-{}-{:04} {:02}:{:02}:{:02} +0000\"",
        d.day,
        MONTHS[(d.month as usize).saturating_sub(1) % 12],
        d.year,
        t / 3600,
        (t % 3600) / 60,
        t % 60
    )
}

/// `1.2.3` for a part path.
fn part_name(part: &[u32]) -> String {
    part.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// A section's bytes; the whole message (`BODY[]`, `RFC822`) is the raw bytes themselves,
/// neither parsed nor copied.
fn whole_or_extract<'a>(raw: &'a [u8], section: &Section) -> Option<Cow<'a, [u8]>> {
    if section.part.is_empty() && section.text.is_none() {
        return Some(Cow::Borrowed(raw));
    }
    extract(raw, section).map(Cow::Owned)
}

fn section_name(s: &Section) -> String {
    let mut out = part_name(&s.part);
    if let Some(t) = &s.text {
        if !out.is_empty() {
            out.push('.');
        }
        match t {
            SectionText::Header => out.push_str("HEADER"),
            SectionText::Text => out.push_str("TEXT"),
            SectionText::Mime => out.push_str("MIME"),
            SectionText::HeaderFields { not, fields } => {
                out.push_str(if *not {
                    "HEADER.FIELDS.NOT ("
                } else {
                    "HEADER.FIELDS ("
                });
                out.push_str(
                    &fields
                        .iter()
                        .map(|f| f.to_ascii_uppercase())
                        .collect::<Vec<_>>()
                        .join(" "),
                );
                out.push(')');
            }
        }
    }
    out
}

fn partial_slice(data: &[u8], partial: Option<(u32, u32)>) -> &[u8] {
    match partial {
        None => data,
        Some((offset, len)) => {
            let start = (offset as usize).min(data.len());
            let end = start.saturating_add(len as usize).min(data.len());
            &data[start..end]
        }
    }
}

/// A FETCH that cannot be answered for this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// BINARY on a part whose encoding we cannot undo (`NO [UNKNOWN-CTE]`, RFC 3516).
    #[error("{0}")]
    Binary(BinaryError),
    /// A body item was asked for but the content was not given.
    #[error("message content unavailable")]
    NoContent,
}

/// Writes `* seq FETCH (...)` with CRLF. `raw` must be given when [`needs_content`] is true.
/// `utf8`: the session accepts UTF-8 in quoted strings (IMAP4rev2).
pub fn fetch_line(
    seq: u32,
    items: &[FetchItem],
    meta: &Meta<'_>,
    raw: Option<&[u8]>,
    utf8: bool,
) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    fetch_line_into(&mut out, seq, items, meta, raw, utf8)?;
    Ok(out)
}

/// [`fetch_line`] appended to `out` (a group's buffer: no copy per message); on an error
/// nothing of this message is left in `out`.
pub fn fetch_line_into(
    out: &mut Vec<u8>,
    seq: u32,
    items: &[FetchItem],
    meta: &Meta<'_>,
    raw: Option<&[u8]>,
    utf8: bool,
) -> Result<(), FetchError> {
    let start = out.len();
    let r = render(out, seq, items, meta, raw, utf8);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

fn render(
    out: &mut Vec<u8>,
    seq: u32,
    items: &[FetchItem],
    meta: &Meta<'_>,
    raw: Option<&[u8]>,
    utf8: bool,
) -> Result<(), FetchError> {
    out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b' ');
        }
        first = false;
    };
    let content = || raw.ok_or(FetchError::NoContent);
    for item in items {
        sep(out);
        match item {
            FetchItem::Uid => out.extend_from_slice(format!("UID {}", meta.uid).as_bytes()),
            FetchItem::Flags => {
                out.extend_from_slice(b"FLAGS (");
                let mut flags: Vec<&str> = meta.flags.iter().map(String::as_str).collect();
                if meta.recent {
                    flags.push("\\Recent");
                }
                out.extend_from_slice(flags.join(" ").as_bytes());
                out.push(b')');
            }
            FetchItem::InternalDate => out.extend_from_slice(
                format!("INTERNALDATE {}", date_time(meta.internal_date)).as_bytes(),
            ),
            FetchItem::Rfc822Size => {
                out.extend_from_slice(format!("RFC822.SIZE {}", meta.size).as_bytes())
            }
            FetchItem::ModSeq => {
                out.extend_from_slice(format!("MODSEQ ({})", meta.modseq).as_bytes())
            }
            FetchItem::Envelope => {
                out.extend_from_slice(b"ENVELOPE ");
                envelope(out, meta.envelope, utf8);
            }
            FetchItem::Body => {
                out.extend_from_slice(b"BODY ");
                body_structure(out, meta.body, false, utf8);
            }
            FetchItem::BodyStructure => {
                out.extend_from_slice(b"BODYSTRUCTURE ");
                body_structure(out, meta.body, true, utf8);
            }
            FetchItem::Rfc822(text) => {
                let raw = content()?;
                let (name, section) = match text {
                    None => ("RFC822", Section::default()),
                    Some(SectionText::Header) => (
                        "RFC822.HEADER",
                        Section {
                            part: vec![],
                            text: Some(SectionText::Header),
                        },
                    ),
                    Some(_) => (
                        "RFC822.TEXT",
                        Section {
                            part: vec![],
                            text: Some(SectionText::Text),
                        },
                    ),
                };
                out.extend_from_slice(name.as_bytes());
                out.push(b' ');
                let data = whole_or_extract(raw, &section).unwrap_or_default();
                nstring(out, Some(&data), false);
            }
            FetchItem::Section {
                section, partial, ..
            } => {
                let raw = content()?;
                let data = whole_or_extract(raw, section);
                out.extend_from_slice(format!("BODY[{}]", section_name(section)).as_bytes());
                if let Some((o, _)) = partial {
                    out.extend_from_slice(format!("<{o}>").as_bytes());
                }
                out.push(b' ');
                // A part that does not exist is the empty string (RFC 9051 6.4.5 leaves it
                // open; Dovecot and Cyrus answer "" too).
                let data = data.unwrap_or_default();
                let slice = partial_slice(&data, *partial);
                literal_or_string(out, slice);
            }
            FetchItem::Binary { part, partial, .. } => {
                let raw = content()?;
                let data = binary(raw, part).map_err(FetchError::Binary)?;
                let name = part_name(part);
                out.extend_from_slice(format!("BINARY[{name}]").as_bytes());
                if let Some((o, _)) = partial {
                    out.extend_from_slice(format!("<{o}>").as_bytes());
                }
                out.push(b' ');
                let slice = partial_slice(&data, *partial);
                if slice.contains(&0) {
                    // RFC 3516 4.2: NUL needs a literal8.
                    out.extend_from_slice(format!("~{{{}}}\r\n", slice.len()).as_bytes());
                    out.extend_from_slice(slice);
                } else {
                    literal_or_string(out, slice);
                }
            }
            FetchItem::BinarySize(part) => {
                let raw = content()?;
                let data = binary(raw, part).map_err(FetchError::Binary)?;
                let name = part_name(part);
                out.extend_from_slice(format!("BINARY.SIZE[{name}] {}", data.len()).as_bytes());
            }
        }
    }
    out.extend_from_slice(b")\r\n");
    Ok(())
}

/// Message text goes as a literal unless it is short and plain (clients handle both).
///
/// A stored message keeps its exact bytes, NUL included (SMTP BINARYMIME and IMAP `~{n}`
/// APPEND can carry it); outside BINARY, [`literal`] sends each NUL as 0x80.
fn literal_or_string(out: &mut Vec<u8>, data: &[u8]) {
    if data.len() < 64 && data.is_ascii() && !data.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        string(out, data, false);
    } else {
        literal(out, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailkeep_imap_proto::cursor::Cursor;
    use mailkeep_imap_proto::frame::Part;
    use mailkeep_imap_proto::selected::fetch;

    fn items(s: &str) -> Vec<FetchItem> {
        let parts = vec![Part::Text(format!(" 1 {s}").into_bytes())];
        fetch(&mut Cursor::new(&parts)).unwrap().1
    }

    const RAW: &[u8] = b"Subject: hi\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello world\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b--\r\n";

    fn run(s: &str) -> String {
        let env = Envelope {
            subject: Some("hi".into()),
            ..Default::default()
        };
        let body = BodyStructure {
            media_type: "text".into(),
            subtype: "plain".into(),
            encoding: "7BIT".into(),
            size: 5,
            lines: 1,
            ..Default::default()
        };
        let flags = vec!["\\Seen".to_string()];
        let meta = Meta {
            uid: 42,
            flags: &flags,
            recent: true,
            internal_date: 837_596_665,
            size: RAW.len() as u64,
            modseq: 9,
            envelope: &env,
            body: &body,
        };
        let it = items(s);
        let raw = if needs_content(&it) { Some(RAW) } else { None };
        String::from_utf8_lossy(&fetch_line(7, &it, &meta, raw, false).unwrap()).into_owned()
    }

    #[test]
    fn metadata_items() {
        assert_eq!(
            run("(UID FLAGS RFC822.SIZE MODSEQ INTERNALDATE)"),
            format!("* 7 FETCH (UID 42 FLAGS (\\Seen \\Recent) RFC822.SIZE {} MODSEQ (9) INTERNALDATE \"17-Jul-1996 09:44:25 +0000\")\r\n", RAW.len())
        );
        assert!(run("ENVELOPE").starts_with("* 7 FETCH (ENVELOPE (NIL \"hi\" NIL"));
        assert_eq!(
            run("BODY"),
            "* 7 FETCH (BODY (\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 5 1))\r\n"
        );
        assert!(!needs_content(&items("(FLAGS BODYSTRUCTURE)")));
    }

    #[test]
    fn body_sections_partials_and_binary() {
        assert_eq!(
            run("BODY.PEEK[1]"),
            "* 7 FETCH (BODY[1] \"hello world\")\r\n"
        );
        assert_eq!(
            run("BODY[1]<6.100>"),
            "* 7 FETCH (BODY[1]<6> \"world\")\r\n"
        );
        assert_eq!(
            run("BODY[HEADER.FIELDS (subject)]"),
            "* 7 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {15}\r\nSubject: hi\r\n\r\n)\r\n"
        );
        assert_eq!(run("BODY[9]"), "* 7 FETCH (BODY[9] \"\")\r\n");
        assert_eq!(
            run("BINARY.PEEK[2]"),
            "* 7 FETCH (BINARY[2] ~{3}\r\n\x00\x01\x02)\r\n"
        );
        assert_eq!(run("BINARY.SIZE[2]"), "* 7 FETCH (BINARY.SIZE[2] 3)\r\n");
        assert!(run("RFC822").starts_with(&format!(
            "* 7 FETCH (RFC822 {{{}}}\r\nSubject: hi",
            RAW.len()
        )));
        assert!(
            sets_seen(&items("BODY[1]"))
                && !sets_seen(&items("BODY.PEEK[1]"))
                && sets_seen(&items("RFC822"))
        );
        assert!(!sets_seen(&items("RFC822.HEADER")));
    }

    #[test]
    fn nul_goes_out_as_0x80_except_in_binary() {
        let env = Envelope::default();
        let body = BodyStructure::default();
        let raw = b"Subject: z\r\n\r\na\x00b\r\n";
        let meta = Meta {
            uid: 1,
            flags: &[],
            recent: false,
            internal_date: 0,
            size: raw.len() as u64,
            modseq: 1,
            envelope: &env,
            body: &body,
        };
        let line = |s: &str| fetch_line(1, &items(s), &meta, Some(raw), false).unwrap();
        // RFC 3501 4.3: no NUL in a literal; same length, so RFC822.SIZE still holds.
        assert_eq!(
            line("BODY.PEEK[]"),
            b"* 1 FETCH (BODY[] {19}\r\nSubject: z\r\n\r\na\x80b\r\n)\r\n".to_vec()
        );
        assert_eq!(
            line("BODY.PEEK[TEXT]"),
            b"* 1 FETCH (BODY[TEXT] {5}\r\na\x80b\r\n)\r\n".to_vec()
        );
        // BINARY sends the exact bytes in a literal8 (RFC 3516 4.2).
        assert_eq!(
            line("BINARY.PEEK[1]"),
            b"* 1 FETCH (BINARY[1] ~{5}\r\na\x00b\r\n)\r\n".to_vec()
        );
    }

    #[test]
    fn content_must_be_given_and_unknown_encodings_fail() {
        let env = Envelope::default();
        let body = BodyStructure::default();
        let meta = Meta {
            uid: 1,
            flags: &[],
            recent: false,
            internal_date: 0,
            size: 0,
            modseq: 1,
            envelope: &env,
            body: &body,
        };
        assert_eq!(
            fetch_line(1, &items("BODY[]"), &meta, None, false),
            Err(FetchError::NoContent)
        );
        let raw = b"Content-Transfer-Encoding: x-weird\r\n\r\nzz\r\n";
        assert!(matches!(
            fetch_line(1, &items("BINARY[1]"), &meta, Some(raw), false),
            Err(FetchError::Binary(BinaryError::UnknownCte(_)))
        ));
        assert_eq!(date_time(0), "\" 1-Jan-1970 00:00:00 +0000\"");
    }
}
