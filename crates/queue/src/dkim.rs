//! DKIM signing (RFC 6376, Ed25519 per RFC 8463) of outgoing mail with mail-auth, with the
//! keys `mailkeep init` writes: `DATA/dkim/<domain>.<selector>.ed25519.pem` and
//! `<domain>.<selector>.rsa.pem`. A message is signed for its From: domain with every key
//! that domain has (one Ed25519 and one RSA signature by default), relaxed/relaxed, over the
//! recommended header set, with From, To and Subject oversigned (listed once more than they
//! occur, RFC 6376 8.15) so nobody can add one later.

use std::collections::BTreeMap;
use std::path::Path;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

/// Headers signed when present (and, when absent, signed as absent: none can be added).
const SIGNED: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Message-ID",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    // Oversigned: a second From, To or Subject added in transit breaks the signature.
    "From",
    "To",
    "Subject",
];

/// A ready signer for one domain and selector.
enum Key {
    Ed25519(Box<DkimSigner<Ed25519Key, Done>>),
    Rsa(Box<DkimSigner<RsaKey<Sha256>, Done>>),
}

/// The signing keys of every domain that has some.
#[derive(Default)]
pub struct DkimKeys {
    /// Domain (lower case) -> (selector, key), Ed25519 first.
    keys: BTreeMap<String, Vec<(String, Key)>>,
}

pub use mailkeep_verify::keys::KeyError;
use mailkeep_verify::keys::{key_files, KeyKind};

impl DkimKeys {
    /// Loads every `<domain>.<selector>.<ed25519|rsa>.pem` in `dir` (none: nothing is signed).
    pub fn load(dir: &Path) -> Result<DkimKeys, KeyError> {
        let mut keys: BTreeMap<String, Vec<(String, Key)>> = BTreeMap::new();
        for file in key_files(dir)? {
            let key = match file.kind {
                KeyKind::Ed25519 => Key::Ed25519(Box::new(signer(
                    file.ed25519()?,
                    &file.domain,
                    &file.selector,
                ))),
                KeyKind::Rsa => {
                    Key::Rsa(Box::new(signer(file.rsa()?, &file.domain, &file.selector)))
                }
            };
            keys.entry(file.domain.clone())
                .or_default()
                .push((file.selector.clone(), key));
        }
        for list in keys.values_mut() {
            // Ed25519 first: the newer, shorter signature leads.
            list.sort_by_key(|(_, k)| matches!(k, Key::Rsa(_)));
        }
        Ok(DkimKeys { keys })
    }

    /// The domains with keys.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The DKIM-Signature headers for `message`, for the domain of its (first) From:
    /// address; empty when that domain has no key. Err: a key failed to sign.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let Some(domain) = from_domain(message) else {
            return Ok(Vec::new());
        };
        // The From: domain's keys, else a parent domain's (a bounce from
        // MAILER-DAEMON@mx.example.com signed by example.com aligns under DMARC's relaxed
        // alignment, RFC 7489 3.1.1).
        let mut name = domain.as_str();
        let keys = loop {
            if let Some(k) = self.keys.get(name) {
                break k;
            }
            match name.split_once('.') {
                Some((_, parent)) if parent.contains('.') => name = parent,
                _ => return Ok(Vec::new()),
            }
        };
        let domain = name.to_string();
        let mut out = Vec::new();
        for (selector, key) in keys {
            let header = match key {
                Key::Ed25519(s) => s.sign(message),
                Key::Rsa(s) => s.sign(message),
            }
            .map_err(|e| format!("{domain} {selector}: {e}"))?
            .to_header();
            out.extend_from_slice(header.as_bytes());
        }
        Ok(out)
    }
}

fn signer<T: mail_auth::common::crypto::SigningKey>(
    key: T,
    domain: &str,
    selector: &str,
) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(domain.to_ascii_lowercase())
        .selector(selector)
        .headers(SIGNED.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// The domain of the first From: address, lower case.
fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let from = parsed.from()?.first()?.address()?;
    let (_, domain) = from.rsplit_once('@')?;
    Some(domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn pem(der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
    }

    #[test]
    fn signs_for_the_from_domain_with_oversigned_headers() {
        let dir = tempfile::tempdir().unwrap();
        let der = Ed25519Key::generate_pkcs8().unwrap();
        std::fs::write(dir.path().join("example.org.s1.ed25519.pem"), pem(&der)).unwrap();
        std::fs::write(dir.path().join("README"), "not a key").unwrap();
        let keys = DkimKeys::load(dir.path()).unwrap();
        assert_eq!(keys.domains().collect::<Vec<_>>(), vec!["example.org"]);
        let msg = b"From: A <a@Example.ORG>\r\nTo: b@remote.test\r\nSubject: hi\r\n\r\nbody\r\n";
        let sig = String::from_utf8(keys.sign(msg).unwrap()).unwrap();
        assert!(sig.starts_with("DKIM-Signature: "), "{sig}");
        assert!(
            sig.contains("d=example.org") && sig.contains("s=s1"),
            "{sig}"
        );
        assert!(
            sig.contains("a=ed25519-sha256") && sig.contains("c=relaxed/relaxed"),
            "{sig}"
        );
        let unfolded: String = sig.split_whitespace().collect();
        let h = unfolded
            .split(';')
            .find_map(|t| t.strip_prefix("h="))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let names: Vec<&str> = h.split(':').collect();
        for oversigned in ["from", "to", "subject"] {
            assert_eq!(
                names.iter().filter(|n| **n == oversigned).count(),
                2,
                "{oversigned} signed once more than it occurs: {h}"
            );
        }
        // Another domain, or no From at all: nothing to sign with.
        assert!(keys
            .sign(b"From: x@other.test\r\n\r\nb\r\n")
            .unwrap()
            .is_empty());
        assert!(keys.sign(b"Subject: none\r\n\r\nb\r\n").unwrap().is_empty());
        // A subdomain (a bounce from MAILER-DAEMON@mx.example.org) takes its parent's keys;
        // a different domain that merely ends the same way does not.
        let sig = keys
            .sign(b"From: MAILER-DAEMON@mx.Example.org\r\n\r\nb\r\n")
            .unwrap();
        assert!(String::from_utf8(sig).unwrap().contains("d=example.org"));
        assert!(keys
            .sign(b"From: x@notexample.org\r\n\r\nb\r\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_broken_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("example.org.s1.rsa.pem"), "garbage").unwrap();
        let e = DkimKeys::load(dir.path()).err().expect("refused");
        assert!(e.file.ends_with("example.org.s1.rsa.pem"), "{e}");
        assert!(
            DkimKeys::load(&dir.path().join("missing")).is_ok(),
            "no directory: no keys"
        );
    }
}
