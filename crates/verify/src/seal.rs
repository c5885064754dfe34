//! ARC sealing (RFC 8617 5.1) of mail we forward: one ARC set (ARC-Seal,
//! ARC-Message-Signature, ARC-Authentication-Results) signed with the RSA key of the domain
//! that forwards it (rsa-sha256, the one algorithm RFC 8617 defines; receivers ignore
//! Ed25519 ARC signatures).

use std::collections::BTreeMap;
use std::path::Path;

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::dkim::{Canonicalization, Done};

use crate::keys::{key_files, KeyError, KeyKind};

/// Headers the ARC-Message-Signature covers (when present).
const SEALED: &[&str] = &[
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
    "In-Reply-To",
    "References",
    "List-Id",
    "DKIM-Signature",
];

/// RFC 8617 4.2.1: at most 50 ARC sets.
pub const MAX_SETS: u32 = 50;

/// A ready sealer.
pub type Sealer = ArcSealer<RsaKey<Sha256>, Done>;

/// The sealers of every domain with an RSA key.
#[derive(Default)]
pub struct ArcSealKeys {
    /// Domain (lower case) -> (selector, sealer).
    keys: BTreeMap<String, (String, Sealer)>,
}

impl ArcSealKeys {
    /// The first RSA key of each domain in `dir` (see [`crate::keys`]).
    pub fn load(dir: &Path) -> Result<ArcSealKeys, KeyError> {
        let mut keys = BTreeMap::new();
        for file in key_files(dir)? {
            if file.kind != KeyKind::Rsa || keys.contains_key(&file.domain) {
                continue;
            }
            let sealer = ArcSealer::from_key(file.rsa()?)
                .domain(file.domain.clone())
                .selector(file.selector.clone())
                .headers(SEALED.iter().copied())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed);
            keys.insert(file.domain.clone(), (file.selector.clone(), sealer));
        }
        Ok(ArcSealKeys { keys })
    }

    /// The domains that can seal.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The sealer for `domain`, else for its closest parent with a key, with the domain it
    /// signs as.
    pub fn for_domain(&self, domain: &str) -> Option<(&str, &str, &Sealer)> {
        let lower = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut name = lower.as_str();
        loop {
            if let Some((d, (selector, sealer))) = self.keys.get_key_value(name) {
                return Some((d.as_str(), selector.as_str(), sealer));
            }
            match name.split_once('.') {
                Some((_, parent)) if parent.contains('.') => name = parent,
                _ => return None,
            }
        }
    }
}
