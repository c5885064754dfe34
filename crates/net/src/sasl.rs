//! SASL mechanisms shared by IMAP, POP3 and submission.

use base64::Engine;

/// A SASL exchange that cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Not base64.
    #[error("the response is not valid base64")]
    Base64,
    /// Not `authzid NUL authcid NUL passwd` in UTF-8.
    #[error("malformed PLAIN response")]
    Malformed,
}

/// The credentials of a PLAIN response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plain {
    /// The identity to act as (empty: the same as `authcid`).
    pub authzid: String,
    /// The login.
    pub authcid: String,
    /// The password.
    pub password: String,
}

/// Decodes a base64 PLAIN response (RFC 4616 2: `[authzid] NUL authcid NUL passwd`).
pub fn decode_plain(b64: &str) -> Result<Plain, SaslError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| SaslError::Base64)?;
    parse_plain(raw)
}

/// Parses a PLAIN response already decoded from base64.
pub fn parse_plain(raw: Vec<u8>) -> Result<Plain, SaslError> {
    let text = String::from_utf8(raw).map_err(|_| SaslError::Malformed)?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authcid.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(Plain {
        authzid: authzid.into(),
        authcid: authcid.into(),
        password: password.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn plain_responses() {
        let p = decode_plain(&b64("\0alice@example.com\0s3cret")).unwrap();
        assert_eq!(
            (p.authzid.as_str(), p.authcid.as_str(), p.password.as_str()),
            ("", "alice@example.com", "s3cret")
        );
        let p = decode_plain(&b64("admin\0alice\0pw")).unwrap();
        assert_eq!(p.authzid, "admin");
        assert_eq!(decode_plain("!!!"), Err(SaslError::Base64));
        assert_eq!(decode_plain(&b64("alice\0pw")), Err(SaslError::Malformed));
        assert_eq!(decode_plain(&b64("\0\0pw")), Err(SaslError::Malformed));
        assert_eq!(decode_plain(&b64("a\0b\0c\0d")), Err(SaslError::Malformed));
    }
}
