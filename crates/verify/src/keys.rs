//! The signing key files `mailkeep init` and `mailkeep dkim rotate` write:
//! `DATA/dkim/<domain>.<selector>.ed25519.pem` and `<domain>.<selector>.rsa.pem` (PKCS#8).
//! DKIM signing (the queue) and ARC sealing ([`crate::seal`]) read them through here.

use std::path::{Path, PathBuf};

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use rustls::pki_types::PrivateKeyDer;

/// A key file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("DKIM key {file}: {reason}")]
pub struct KeyError {
    /// The file.
    pub file: String,
    /// Why.
    pub reason: String,
}

/// The algorithm of a key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Ed25519 (RFC 8463).
    Ed25519,
    /// RSA.
    Rsa,
}

/// One key file, read.
pub struct KeyFile {
    /// Where it was read.
    pub path: PathBuf,
    /// Its domain, lower case.
    pub domain: String,
    /// Its selector.
    pub selector: String,
    /// Its algorithm.
    pub kind: KeyKind,
    der: PrivateKeyDer<'static>,
}

impl KeyFile {
    fn error(&self, reason: impl ToString) -> KeyError {
        KeyError {
            file: self.path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// The key, for an Ed25519 file.
    pub fn ed25519(&self) -> Result<Ed25519Key, KeyError> {
        Ed25519Key::from_pkcs8_maybe_unchecked_der(self.der.secret_der()).map_err(|e| self.error(e))
    }

    /// The key, for an RSA file.
    pub fn rsa(&self) -> Result<RsaKey<Sha256>, KeyError> {
        RsaKey::<Sha256>::from_key_der(self.der.clone_key()).map_err(|e| self.error(e))
    }
}

/// Every `<domain>.<selector>.<ed25519|rsa>.pem` in `dir`, in file name order (no
/// directory: none). Other files are skipped.
pub fn key_files(dir: &Path) -> Result<Vec<KeyFile>, KeyError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(KeyError {
                file: dir.display().to_string(),
                reason: e.to_string(),
            })
        }
    };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(stem) = name.strip_suffix(".pem") else {
            continue;
        };
        let Some((rest, kind)) = stem.rsplit_once('.') else {
            continue;
        };
        let Some((domain, selector)) = rest.rsplit_once('.') else {
            continue;
        };
        let kind = match kind {
            "ed25519" => KeyKind::Ed25519,
            "rsa" => KeyKind::Rsa,
            _ => continue,
        };
        let err = |reason: String| KeyError {
            file: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
        let der = rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|e| err(e.to_string()))?
            .ok_or_else(|| err("no private key in it".into()))?;
        out.push(KeyFile {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_string(),
            kind,
            der,
            path,
        });
    }
    Ok(out)
}
