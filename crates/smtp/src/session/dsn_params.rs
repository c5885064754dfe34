//! The DSN parameters of MAIL and RCPT as the client wrote them (RFC 3461 4), checked on the
//! raw command line before smtp-proto decodes them: its xtext decoder turns `+0D+0A` into a
//! line break and `+C3+A9` into two Latin-1 characters, and the decoded values go into
//! bounces (`Original-Envelope-Id`, `Original-Recipient`), the queue's MAIL/RCPT and the log.
//!
//! - ENVID (RFC 3461 4.4) and ORCPT's address (4.2) are xtext: `xchar`s (`!`..`~` but `+`
//!   and `=`) and `+HH` escapes. Every escape must decode to printable US-ASCII (RFC 3461 4:
//!   "xtext ... to encode ... printable US-ASCII"), so no CR, LF, NUL, other control or
//!   8-bit byte can be smuggled in; an escape must have two hex digits.
//! - ORCPT may carry raw UTF-8 (RFC 6533 3, utf-8-addr-xtext, for SMTPUTF8 addresses): kept;
//!   ENVID never (RFC 3461 4.4: printable US-ASCII only).

/// Checks ENVID= and ORCPT= in a MAIL or RCPT line; the reply text for a refusal.
pub(crate) fn check(raw: &[u8]) -> Result<(), String> {
    for param in params(raw) {
        let Some((name, value)) = split_param(param) else {
            continue;
        };
        if name.eq_ignore_ascii_case(b"ENVID") {
            xtext(value, false).map_err(|why| format!("501 5.5.4 Invalid ENVID: {why}"))?;
        } else if name.eq_ignore_ascii_case(b"ORCPT") {
            // RFC 3461 4.2: addr-type ";" xtext.
            let Some(semi) = value.iter().position(|b| *b == b';') else {
                return Err("501 5.5.4 Invalid ORCPT: no address type".into());
            };
            let (kind, addr) = (&value[..semi], &value[semi + 1..]);
            if kind.is_empty() || !kind.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-') {
                return Err("501 5.5.4 Invalid ORCPT: bad address type".into());
            }
            xtext(addr, true).map_err(|why| format!("501 5.5.4 Invalid ORCPT: {why}"))?;
        }
    }
    Ok(())
}

/// The parameters after the path (`FROM:<...>` or `TO:<...>`), split on spaces. The path
/// may hold quoted spaces and `>`, so its end is found with quotes in mind.
fn params(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let line = raw.strip_suffix(b"\r\n").unwrap_or(raw);
    let start = line
        .iter()
        .position(|b| *b == b':')
        .map_or(line.len(), |i| i + 1);
    let mut i = start;
    while i < line.len() && line[i] == b' ' {
        i += 1;
    }
    if i < line.len() && line[i] == b'<' {
        let (mut quoted, mut escaped) = (false, false);
        i += 1;
        while i < line.len() {
            let b = line[i];
            i += 1;
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b'>' if !quoted => break,
                _ => {}
            }
        }
    } else {
        // No angle brackets (a lenient client): the path is the first word.
        while i < line.len() && line[i] != b' ' {
            i += 1;
        }
    }
    line[i.min(line.len())..]
        .split(|b| *b == b' ')
        .filter(|p| !p.is_empty())
}

fn split_param(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = p.iter().position(|b| *b == b'=')?;
    Some((&p[..eq], &p[eq + 1..]))
}

/// Checks one xtext value; `utf8`: raw non-ASCII UTF-8 is allowed (ORCPT).
fn xtext(v: &[u8], utf8: bool) -> Result<(), &'static str> {
    if v.is_empty() {
        return Err("empty");
    }
    if std::str::from_utf8(v).is_err() {
        return Err("not UTF-8");
    }
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        match b {
            b'+' => {
                let hex = v.get(i + 1..i + 3).ok_or("a + without two hex digits")?;
                let s = std::str::from_utf8(hex).map_err(|_| "a + without two hex digits")?;
                let d = u8::from_str_radix(s, 16).map_err(|_| "a + without two hex digits")?;
                // RFC 3461 4: what xtext encodes is printable US-ASCII.
                if !(0x21..=0x7e).contains(&d) {
                    return Err("an encoded control, space or 8-bit character");
                }
                i += 3;
                continue;
            }
            b'=' => return Err("a bare ="),
            0x21..=0x7e => {}
            0x80.. if utf8 => {}
            _ => return Err("a control or 8-bit character"),
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn encoded_line_breaks_controls_and_8bit_bytes_are_refused() {
        for line in [
            "MAIL FROM:<a@x.test> ENVID=abc+0D+0AX-Injected:+20yes",
            "MAIL FROM:<a@x.test> ENVID=a+00b",
            "MAIL FROM:<a@x.test> ENVID=a+0Ab",
            "MAIL FROM:<a@x.test> ENVID=caf+C3+A9",
            "MAIL FROM:<a@x.test> ENVID=a+7F",
            "MAIL FROM:<a@x.test> ENVID=a+2",
            "MAIL FROM:<a@x.test> ENVID=a+zz",
            "MAIL FROM:<a@x.test> ENVID=caf\u{e9}",
            "MAIL FROM:<a@x.test> ENVID=",
            "MAIL FROM:<a@x.test> envid=a+0D",
            "RCPT TO:<b@y.test> ORCPT=rfc822;b+0D+0A@y.test",
            "RCPT TO:<b@y.test> ORCPT=rfc822;b+00@y.test",
            "RCPT TO:<b@y.test> ORCPT=rfc822;caf+C3+A9@y.test",
            "RCPT TO:<b@y.test> ORCPT=b@y.test",
            "RCPT TO:<b@y.test> NOTIFY=NEVER ORCPT=rfc822;a\tb@y.test",
        ] {
            let r = check(line.as_bytes());
            assert!(
                r.as_ref().is_err_and(|e| e.starts_with("501 5.5.4")),
                "{line}: {r:?}"
            );
        }
    }

    #[test]
    fn legitimate_parameters_pass() {
        for line in [
            "MAIL FROM:<a@x.test> ENVID=QQ314159 RET=HDRS",
            "MAIL FROM:<a@x.test> ENVID=a+2Bb+3Dc SIZE=100\r\n",
            "MAIL FROM:<> ENVID=x",
            "MAIL FROM:<\"x ENVID=+0D\"@x.test> BODY=8BITMIME",
            "RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Btag@y.test",
            "RCPT TO:<\u{4e2d}@y.test> ORCPT=rfc822;\u{4e2d}@y.test",
            "RCPT TO:<b@y.test>",
        ] {
            assert_eq!(check(line.as_bytes()), Ok(()), "{line}");
        }
    }
}
