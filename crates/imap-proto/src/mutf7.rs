//! Modified UTF-7 for mailbox names (RFC 3501 5.1.3), used with IMAP4rev1 clients.
//!
//! Printable ASCII except `&` stands for itself; `&` is written `&-`; anything else is UTF-16,
//! base64-encoded with `,` instead of `/` and no padding, between `&` and `-`.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn b64_value(c: u8) -> Option<u32> {
    B64.iter().position(|b| *b == c).map(|p| p as u32)
}

/// Errors decoding modified UTF-7.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mutf7Error {
    /// A `&` section is not terminated by `-`.
    #[error("unterminated &...- section")]
    Unterminated,
    /// A character outside the modified base64 alphabet, or leftover bits.
    #[error("invalid modified base64")]
    BadBase64,
    /// The UTF-16 inside does not form valid characters.
    #[error("invalid UTF-16 in modified UTF-7")]
    BadUtf16,
    /// A character that must be encoded appears raw (non-printable or non-ASCII).
    #[error("character must be encoded in modified UTF-7")]
    Unencoded,
    /// A `&...-` section encodes only printable ASCII, or two sections are adjacent: not the
    /// canonical form, which RFC 3501 requires (two spellings of one name are refused).
    #[error("non-canonical modified UTF-7")]
    NotCanonical,
}

fn flush(units: &mut Vec<u16>, out: &mut String) {
    if units.is_empty() {
        return;
    }
    out.push('&');
    let mut bytes = Vec::with_capacity(units.len() * 2);
    for u in units.drain(..) {
        bytes.extend_from_slice(&u.to_be_bytes());
    }
    let mut bits = 0u32;
    let mut nbits = 0;
    for b in bytes {
        bits = (bits << 8) | b as u32;
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(B64[((bits >> nbits) & 63) as usize] as char);
        }
    }
    if nbits > 0 {
        out.push(B64[((bits << (6 - nbits)) & 63) as usize] as char);
    }
    out.push('-');
}

/// Encodes a UTF-8 mailbox name in modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Decodes a modified UTF-7 mailbox name to UTF-8, refusing non-canonical spellings.
pub fn decode(name: &str) -> Result<String, Mutf7Error> {
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    let mut last_section_end = None;
    while i < bytes.len() {
        let c = bytes[i];
        if c != b'&' {
            if !(0x20..=0x7e).contains(&c) {
                return Err(Mutf7Error::Unencoded);
            }
            out.push(c as char);
            i += 1;
            continue;
        }
        let start = i + 1;
        let end = bytes[start..]
            .iter()
            .position(|b| *b == b'-')
            .map(|p| start + p)
            .ok_or(Mutf7Error::Unterminated)?;
        if end == start {
            out.push('&');
            i = end + 1;
            continue;
        }
        if last_section_end == Some(i) {
            return Err(Mutf7Error::NotCanonical);
        }
        let mut bits = 0u32;
        let mut nbits = 0;
        let mut units = Vec::new();
        for &b in &bytes[start..end] {
            bits = (bits << 6) | b64_value(b).ok_or(Mutf7Error::BadBase64)?;
            nbits += 6;
            if nbits >= 16 {
                nbits -= 16;
                units.push(((bits >> nbits) & 0xffff) as u16);
            }
        }
        // Leftover bits must be fewer than 6 and all zero.
        if nbits >= 6 || (bits & ((1 << nbits) - 1)) != 0 {
            return Err(Mutf7Error::BadBase64);
        }
        let decoded = String::from_utf16(&units).map_err(|_| Mutf7Error::BadUtf16)?;
        if decoded.is_empty() || decoded.chars().any(|c| (' '..='~').contains(&c)) {
            return Err(Mutf7Error::NotCanonical);
        }
        out.push_str(&decoded);
        i = end + 1;
        last_section_end = Some(i);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3501_example() {
        // RFC 3501 5.1.3.
        let name = "~peter/mail/台北/日本語";
        let encoded = "~peter/mail/&U,BTFw-/&ZeVnLIqe-";
        assert_eq!(encode(name), encoded);
        assert_eq!(decode(encoded).unwrap(), name);
    }

    #[test]
    fn ampersand_and_astral_characters() {
        assert_eq!(encode("A&B"), "A&-B");
        assert_eq!(decode("A&-B").unwrap(), "A&B");
        let s = "Entwürfe 📬";
        assert_eq!(decode(&encode(s)).unwrap(), s);
    }

    #[test]
    fn non_canonical_and_broken_forms_are_refused() {
        assert_eq!(decode("&AGE-"), Err(Mutf7Error::NotCanonical)); // "a" encoded
        assert_eq!(decode("&U,BTFw-&ZeVnLIqe-"), Err(Mutf7Error::NotCanonical)); // adjacent
        assert_eq!(decode("&U,BTFw"), Err(Mutf7Error::Unterminated));
        assert_eq!(decode("&U/BTFw-"), Err(Mutf7Error::BadBase64));
        assert_eq!(decode("caf\u{e9}"), Err(Mutf7Error::Unencoded));
        assert_eq!(decode("&2D0-"), Err(Mutf7Error::BadUtf16)); // a lone surrogate
        assert_eq!(decode("&U,BTFx-"), Err(Mutf7Error::BadBase64)); // non-zero leftover bits
    }
}
