//! Body sections of a message (RFC 9051 6.4.5): which bytes `BODY[1.2.MIME]`,
//! `BODY[HEADER.FIELDS (Subject)]` or `BINARY[3]` name, computed from the raw message.
//!
//! Implementation notes:
//! - Our own small MIME walker over the raw bytes, so that every section is an exact slice of
//!   what is stored: a header ends at its first empty line (which belongs to it); the CRLF
//!   before a boundary delimiter belongs to the delimiter (RFC 2046 5.1.1).
//! - A message/rfc822 part is entered: its sub-parts are numbered inside the encapsulated
//!   message, and the part itself (`[3]`) is that whole message. A non-multipart message has
//!   one part, `[1]`, its body.
//! - Nesting is bounded ([`MAX_DEPTH`]); a part number that does not exist gives None.

use crate::selected::{Section, SectionText};

/// Deepest part path followed.
pub const MAX_DEPTH: usize = 64;

/// Splits a header block from its body: the header includes the empty line.
fn split(raw: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    // An empty header: the message starts with the blank line.
    if raw.starts_with(b"\r\n") {
        return (&raw[..2], &raw[2..]);
    }
    if raw.starts_with(b"\n") {
        return (&raw[..1], &raw[1..]);
    }
    while let Some(p) = raw[i..].iter().position(|b| *b == b'\n') {
        let next = i + p + 1;
        if raw[next..].starts_with(b"\r\n") {
            return (&raw[..next + 2], &raw[next + 2..]);
        }
        if raw[next..].starts_with(b"\n") {
            return (&raw[..next + 1], &raw[next + 1..]);
        }
        i = next;
    }
    (raw, &[])
}

/// Header fields as (name, whole field bytes including folded lines and CRLF).
fn fields(header: &[u8]) -> Vec<(String, &[u8])> {
    let mut out: Vec<(String, &[u8])> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < header.len() {
        let end = header[i..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|p| i + p + 1)
            .unwrap_or(header.len());
        let line = &header[i..end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation && i > start {
            push_field(&mut out, &header[start..i]);
            start = i;
        }
        if line == b"\r\n" || line == b"\n" {
            // The empty line ends the header.
            start = end;
        }
        i = end;
    }
    if start < header.len() {
        push_field(&mut out, &header[start..]);
    }
    out
}

fn push_field<'a>(out: &mut Vec<(String, &'a [u8])>, field: &'a [u8]) {
    if let Some(colon) = field.iter().position(|b| *b == b':') {
        let name = String::from_utf8_lossy(&field[..colon])
            .trim()
            .to_ascii_lowercase();
        if !name.is_empty() {
            out.push((name, field));
        }
    }
}

/// The unfolded value of the first field named `name`.
fn field_value(header: &[u8], name: &str) -> Option<String> {
    let (_, f) = fields(header).into_iter().find(|(n, _)| n == name)?;
    let colon = f.iter().position(|b| *b == b':')?;
    let v = String::from_utf8_lossy(&f[colon + 1..]);
    Some(v.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Media type (lower case) and boundary of a part's header (RFC 2045 5.1; default
/// text/plain, or message/rfc822 inside multipart/digest).
fn content_type(header: &[u8], digest_child: bool) -> (String, Option<String>) {
    let Some(v) = field_value(header, "content-type") else {
        let t = if digest_child {
            "message/rfc822"
        } else {
            "text/plain"
        };
        return (t.into(), None);
    };
    let mut parts = v.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut boundary = None;
    for p in parts {
        if let Some((k, val)) = p.split_once('=') {
            if k.trim().eq_ignore_ascii_case("boundary") {
                let val = val.trim();
                let val = val
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(val);
                if !val.is_empty() && val.len() <= 70 {
                    boundary = Some(val.to_string());
                }
            }
        }
    }
    (media, boundary)
}

/// The children of a multipart body: each child's raw bytes (header and body).
fn children<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delim = format!("--{boundary}");
    let mut starts = Vec::new(); // (line start, after the delimiter line)
    let mut i = 0;
    while i <= body.len() {
        let end = body[i..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|p| i + p + 1)
            .unwrap_or(body.len());
        let line = &body[i..end];
        let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        if let Some(rest) = trimmed.strip_prefix(delim.as_bytes()) {
            let closing = rest.starts_with(b"--");
            if rest.iter().all(|b| *b == b' ' || *b == b'\t') || closing {
                starts.push((i, end, closing));
                if closing {
                    break;
                }
            }
        }
        if end == i {
            break;
        }
        i = end;
    }
    let mut out = Vec::new();
    for w in starts.windows(2) {
        let (_, content_start, closing) = w[0];
        if closing {
            break;
        }
        let mut content_end = w[1].0;
        // The CRLF before the next delimiter belongs to the delimiter.
        if content_end >= content_start + 2 && &body[content_end - 2..content_end] == b"\r\n" {
            content_end -= 2;
        } else if content_end > content_start && body[content_end - 1] == b'\n' {
            content_end -= 1;
        }
        out.push(&body[content_start..content_end.max(content_start)]);
    }
    out
}

/// One entity while walking: its raw bytes, and what kind it is.
struct Entity<'a> {
    raw: &'a [u8],
    media: String,
    boundary: Option<String>,
}

impl<'a> Entity<'a> {
    fn new(raw: &'a [u8], digest_child: bool) -> Entity<'a> {
        let (header, _) = split(raw);
        let (media, boundary) = content_type(header, digest_child);
        Entity {
            raw,
            media,
            boundary,
        }
    }

    fn body(&self) -> &'a [u8] {
        split(self.raw).1
    }

    fn is_message(&self) -> bool {
        self.media == "message/rfc822" || self.media == "message/global"
    }

    fn multipart_children(&self) -> Option<Vec<Entity<'a>>> {
        if !self.media.starts_with("multipart/") {
            return None;
        }
        let boundary = self.boundary.as_deref()?;
        let digest = self.media == "multipart/digest";
        Some(
            children(self.body(), boundary)
                .into_iter()
                .map(|c| Entity::new(c, digest))
                .collect(),
        )
    }

    /// Part `n` (1-based) of this entity seen as a message or a part.
    fn child(&self, n: u32) -> Option<Entity<'a>> {
        if let Some(kids) = self.multipart_children() {
            return kids.into_iter().nth(n as usize - 1);
        }
        // A non-multipart entity has one part, its body.
        if n == 1 {
            return Some(Entity {
                raw: self.raw,
                media: self.media.clone(),
                boundary: None,
            });
        }
        None
    }
}

/// The bytes a section names, or None when the part does not exist or the section does not
/// apply to it (e.g. HEADER of a text part).
pub fn extract(raw: &[u8], section: &Section) -> Option<Vec<u8>> {
    if section.part.len() > MAX_DEPTH {
        return None;
    }
    // The "message" whose HEADER/TEXT apply, and the current part.
    let mut message = Entity::new(raw, false);
    let mut part: Option<Entity<'_>> = None;
    for n in &section.part {
        // Inside a message/rfc822 part, numbering continues in the encapsulated message.
        let container = match &part {
            Some(p) if p.is_message() => {
                message = Entity::new(p.body(), false);
                &message
            }
            Some(p) => p,
            None => &message,
        };
        part = Some(container.child(*n)?);
    }
    let text = section.text.as_ref();
    match (part, text) {
        (None, None) => Some(raw.to_vec()),
        (None, Some(t)) => message_text(&message, t),
        // [n] is the part's body; for message/rfc822 that is the whole inner message.
        (Some(p), None) => Some(p.body().to_vec()),
        (Some(p), Some(SectionText::Mime)) => Some(split(p.raw).0.to_vec()),
        (Some(p), Some(t)) => {
            if !p.is_message() {
                return None;
            }
            message_text(&Entity::new(p.body(), false), t)
        }
    }
}

fn message_text(m: &Entity<'_>, t: &SectionText) -> Option<Vec<u8>> {
    let (header, body) = split(m.raw);
    Some(match t {
        SectionText::Header => header.to_vec(),
        SectionText::Text => body.to_vec(),
        SectionText::Mime => return None,
        SectionText::HeaderFields {
            not,
            fields: wanted,
        } => {
            let wanted: Vec<String> = wanted.iter().map(|w| w.to_ascii_lowercase()).collect();
            let mut out = Vec::new();
            for (name, f) in fields(header) {
                if wanted.contains(&name) != *not {
                    out.extend_from_slice(f);
                }
            }
            // RFC 9051 6.4.5: the subset ends with the blank line too.
            out.extend_from_slice(b"\r\n");
            out
        }
    })
}

/// Why BINARY cannot decode a part (RFC 3516 4.3: `[UNKNOWN-CTE]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    /// The part does not exist or is a multipart.
    #[error("no such leaf part")]
    NoPart,
    /// An encoding we cannot decode.
    #[error("unknown content transfer encoding {0}")]
    UnknownCte(String),
    /// The content is not valid for its encoding.
    #[error("malformed {0} content")]
    Malformed(String),
}

/// BINARY[part]: the part's body with its content transfer encoding removed. `BINARY[]` is
/// the whole message, unchanged (there is no single encoding to remove).
pub fn binary(raw: &[u8], part: &[u32]) -> Result<Vec<u8>, BinaryError> {
    if part.is_empty() {
        return Ok(raw.to_vec());
    }
    let section = Section {
        part: part.to_vec(),
        text: None,
    };
    let body = extract(raw, &section).ok_or(BinaryError::NoPart)?;
    let header = extract(
        raw,
        &Section {
            part: part.to_vec(),
            text: Some(SectionText::Mime),
        },
    )
    .unwrap_or_default();
    let cte = field_value(&header, "content-transfer-encoding")
        .unwrap_or_else(|| "7bit".into())
        .to_ascii_lowercase();
    match cte.as_str() {
        "7bit" | "8bit" | "binary" => Ok(body),
        "base64" => decode_base64(&body).ok_or_else(|| BinaryError::Malformed("base64".into())),
        "quoted-printable" => Ok(decode_qp(&body)),
        other => Err(BinaryError::UnknownCte(other.to_string())),
    }
}

fn decode_base64(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &b in data {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b'\r' | b'\n' | b' ' | b'\t' => continue,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn decode_qp(data: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if b == b'=' {
            // Soft line break (RFC 2045 6.7 rule 5).
            if data[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if data[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            if let (Some(h), Some(l)) = (
                data.get(i + 1).and_then(|b| hex(*b)),
                data.get(i + 2).and_then(|b| hex(*b)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The structure of the RFC 9051 6.4.5 part-numbering example.
    fn rfc_example() -> Vec<u8> {
        let s = "From: a@example.com\r\nSubject: top\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n\
preamble\r\n\
--b0\r\nContent-Type: text/plain\r\n\r\npart 1\r\n\
--b0\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n\
--b0\r\nContent-Type: message/rfc822\r\n\r\n\
Subject: inner3\r\nContent-Type: multipart/mixed; boundary=b3\r\n\r\n\
--b3\r\nContent-Type: text/plain\r\n\r\npart 3.1\r\n\
--b3\r\nContent-Type: application/octet-stream\r\n\r\npart 3.2\r\n\
--b3--\r\n\
--b0\r\nContent-Type: multipart/mixed; boundary=b4\r\n\r\n\
--b4\r\nContent-Type: image/gif\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGIF=3D89a=\r\n!\r\n\
--b4\r\nContent-Type: message/rfc822\r\n\r\n\
Subject: inner42\r\nContent-Type: multipart/mixed; boundary=b42\r\n\r\n\
--b42\r\nContent-Type: text/plain\r\n\r\npart 4.2.1\r\n\
--b42\r\nContent-Type: multipart/alternative; boundary=b422\r\n\r\n\
--b422\r\nContent-Type: text/plain\r\n\r\npart 4.2.2.1\r\n\
--b422\r\nContent-Type: text/richtext\r\n\r\npart 4.2.2.2\r\n\
--b422--\r\n\
--b42--\r\n\
--b4--\r\n\
--b0--\r\nepilogue\r\n";
        s.as_bytes().to_vec()
    }

    fn get(raw: &[u8], path: &[u32], text: Option<SectionText>) -> Option<String> {
        extract(
            raw,
            &Section {
                part: path.to_vec(),
                text,
            },
        )
        .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn rfc9051_part_numbering() {
        let m = rfc_example();
        assert_eq!(get(&m, &[1], None).as_deref(), Some("part 1"));
        assert_eq!(get(&m, &[2], None).as_deref(), Some("aGVsbG8="));
        assert!(
            get(&m, &[3], None)
                .unwrap()
                .starts_with("Subject: inner3\r\n"),
            "[3] is the whole message"
        );
        assert_eq!(
            get(&m, &[3], Some(SectionText::Header)).as_deref(),
            Some("Subject: inner3\r\nContent-Type: multipart/mixed; boundary=b3\r\n\r\n")
        );
        assert!(get(&m, &[3], Some(SectionText::Text))
            .unwrap()
            .starts_with("--b3\r\n"));
        assert_eq!(get(&m, &[3, 1], None).as_deref(), Some("part 3.1"));
        assert_eq!(get(&m, &[3, 2], None).as_deref(), Some("part 3.2"));
        assert!(get(&m, &[4], None).unwrap().starts_with("--b4\r\n"));
        assert_eq!(
            get(&m, &[4, 1], Some(SectionText::Mime)).as_deref(),
            Some("Content-Type: image/gif\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n")
        );
        assert_eq!(
            get(&m, &[4, 2], Some(SectionText::Header)).as_deref(),
            Some("Subject: inner42\r\nContent-Type: multipart/mixed; boundary=b42\r\n\r\n")
        );
        assert_eq!(get(&m, &[4, 2, 1], None).as_deref(), Some("part 4.2.1"));
        assert_eq!(
            get(&m, &[4, 2, 2, 1], None).as_deref(),
            Some("part 4.2.2.1")
        );
        assert_eq!(
            get(&m, &[4, 2, 2, 2], None).as_deref(),
            Some("part 4.2.2.2")
        );
        assert_eq!(get(&m, &[5], None), None);
        assert_eq!(
            get(&m, &[1, 1], None).as_deref(),
            Some("part 1"),
            "a leaf's only part is itself"
        );
        assert_eq!(
            get(&m, &[1], Some(SectionText::Header)),
            None,
            "HEADER needs a message part"
        );
        assert!(get(&m, &[], Some(SectionText::Text))
            .unwrap()
            .starts_with("preamble\r\n--b0"));
        assert_eq!(get(&m, &[], None).unwrap().len(), m.len());
    }

    #[test]
    fn header_fields_and_not() {
        let m = b"From: a@example.com\r\nSubject: one\r\n two\r\nX-Other: z\r\n\r\nbody\r\n";
        let f = |not, names: &[&str]| {
            get(
                m,
                &[],
                Some(SectionText::HeaderFields {
                    not,
                    fields: names.iter().map(|s| s.to_string()).collect(),
                }),
            )
            .unwrap()
        };
        assert_eq!(f(false, &["SUBJECT"]), "Subject: one\r\n two\r\n\r\n");
        assert_eq!(
            f(true, &["subject"]),
            "From: a@example.com\r\nX-Other: z\r\n\r\n"
        );
        assert_eq!(f(false, &["Nope"]), "\r\n");
    }

    #[test]
    fn single_part_messages_and_binary() {
        let m = b"Subject: x\r\nContent-Transfer-Encoding: base64\r\n\r\naGVs\r\nbG8=\r\n";
        assert_eq!(get(m, &[1], None).as_deref(), Some("aGVs\r\nbG8=\r\n"));
        assert_eq!(binary(m, &[1]).unwrap(), b"hello");
        assert_eq!(binary(m, &[]).unwrap(), m.to_vec());
        let e = rfc_example();
        assert_eq!(binary(&e, &[2]).unwrap(), b"hello");
        assert_eq!(binary(&e, &[4, 1]).unwrap(), b"GIF=89a!");
        assert_eq!(binary(&e, &[9]), Err(BinaryError::NoPart));
        let u = b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n";
        assert_eq!(
            binary(u, &[1]),
            Err(BinaryError::UnknownCte("x-uuencode".into()))
        );
        let bad = b"Content-Transfer-Encoding: base64\r\n\r\n!!!!\r\n";
        assert!(matches!(binary(bad, &[1]), Err(BinaryError::Malformed(_))));
    }

    #[test]
    fn hostile_input_is_bounded() {
        // Deep nesting and missing boundaries never panic.
        let mut m = String::new();
        for i in 0..200 {
            m.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
            ));
        }
        let path = vec![1; 300];
        assert_eq!(
            extract(
                m.as_bytes(),
                &Section {
                    part: path,
                    text: None
                }
            ),
            None
        );
        let _ = extract(
            m.as_bytes(),
            &Section {
                part: vec![1; 60],
                text: Some(SectionText::Mime),
            },
        );
        assert_eq!(
            get(b"no header end", &[], Some(SectionText::Text)).as_deref(),
            Some("")
        );
        assert_eq!(
            get(b"\r\nbody only", &[], Some(SectionText::Header)).as_deref(),
            Some("\r\n")
        );
    }
}
