//! The Sender Rewriting Scheme (SRS, as libsrs2 and postsrsd implement it): when mail is
//! forwarded, the envelope sender becomes an address in the forwarding domain, so SPF at the
//! next hop checks our servers (RFC 7208 1.2.3, "forwarding"), and a bounce to it comes back
//! to us and is passed on to the original sender.
//!
//! - `SRS0=HHHH=TT=domain=local@forwarder`: HHHH is the first four characters of the base64
//!   HMAC-SHA1 (keyed with our secret) of TT, the domain and the local part, in lower case; TT
//!   is the day (days since 1970, modulo 1024) in two base32 characters.
//! - Forwarding an `SRS0` address of another forwarder (`SRS0...@first`) gives
//!   `SRS1=HHHH=first==HHHH=TT=domain=local@us`: a bounce goes back to the first forwarder,
//!   not through every hop; forwarding an `SRS1` address only replaces our hash and domain.
//! - Reversal accepts `=`, `+` or `-` after the tag, compares hashes and timestamps without
//!   regard to case (some servers lower-case local parts), and refuses an address older than
//!   the configured age.

use std::path::Path;

use base64::Engine;

/// Base32 (RFC 4648) letters of the timestamp.
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Characters of the hash kept (libsrs2's default).
const HASH_LEN: usize = 4;
/// Days the timestamp wraps around at (two base32 characters).
const STAMP_CYCLE: i64 = 1024;

/// Why an address could not be reversed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrsError {
    /// Not an SRS address at all.
    #[error("not an SRS address")]
    NotSrs,
    /// An SRS address that does not parse.
    #[error("malformed SRS address")]
    Malformed,
    /// The hash does not match: not made by us, or altered.
    #[error("SRS address with a wrong hash")]
    BadHash,
    /// Made by us, but longer ago than we accept.
    #[error("SRS address has expired")]
    Expired,
    /// The secret file could not be read or written.
    #[error("SRS secret {file}: {reason}")]
    Secret {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
}

/// Rewrites and reverses envelope senders with one secret.
pub struct Srs {
    secret: Vec<u8>,
    max_age_days: i64,
}

impl Srs {
    /// A rewriter keyed with `secret`, accepting addresses up to `max_age_days` old.
    pub fn new(secret: Vec<u8>, max_age_days: u32) -> Srs {
        Srs {
            secret,
            max_age_days: i64::from(max_age_days).clamp(1, STAMP_CYCLE - 1),
        }
    }

    /// The secret in `path`, made (32 random bytes, hex, mode 0600) when the file does not
    /// exist yet. It must stay the same across restarts: bounces come back days later.
    pub fn load_or_create(path: &Path, max_age_days: u32) -> Result<Srs, SrsError> {
        let err = |reason: String| SrsError::Secret {
            file: path.display().to_string(),
            reason,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = rand::random();
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                write_private(path, &hex).map_err(|e| err(e.to_string()))?;
                hex
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let secret = text.trim();
        if secret.len() < 16 {
            return Err(err("the secret is shorter than 16 characters".into()));
        }
        Ok(Srs::new(secret.as_bytes().to_vec(), max_age_days))
    }

    /// The envelope sender to use when forwarding mail from `sender` through `domain` (one
    /// of ours) on day `today` (days since 1970). The null sender stays null.
    pub fn forward(&self, sender: &str, domain: &str, today: i64) -> String {
        let Some((local, sender_domain)) = sender.rsplit_once('@') else {
            return sender.to_string();
        };
        if let Some(rest) = strip_tag(local, "SRS0") {
            // SRS1=HHHH=first==HHHH=TT=domain=local: the hash covers the first forwarder and
            // the old SRS0 address after its tag (libsrs2).
            let inner = format!("{}{}", &local[4..5], rest);
            let hash = self.hash(&[sender_domain, &inner]);
            return format!("SRS1={hash}={sender_domain}={inner}@{domain}");
        }
        if let Some(rest) = strip_tag(local, "SRS1") {
            // Already SRS1: keep the first forwarder and the inner address, new hash.
            let mut parts = rest.splitn(3, '=');
            if let (Some(_old), Some(first), Some(inner)) =
                (parts.next(), parts.next(), parts.next())
            {
                let hash = self.hash(&[first, inner]);
                return format!("SRS1={hash}={first}={inner}@{domain}");
            }
        }
        let stamp = stamp(today);
        let hash = self.hash(&[&stamp, sender_domain, local]);
        format!("SRS0={hash}={stamp}={sender_domain}={local}@{domain}")
    }

    /// Where mail to the SRS local part `local` (of one of our domains) goes on day `today`:
    /// the original sender for `SRS0`, the first forwarder's `SRS0` address for `SRS1`.
    pub fn reverse(&self, local: &str, today: i64) -> Result<String, SrsError> {
        if let Some(rest) = strip_tag(local, "SRS0") {
            let mut parts = rest.splitn(4, '=');
            let (Some(hash), Some(stamp), Some(domain), Some(user)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(SrsError::Malformed);
            };
            if domain.is_empty() || user.is_empty() || stamp.len() != 2 {
                return Err(SrsError::Malformed);
            }
            if !self.hash(&[stamp, domain, user]).eq_ignore_ascii_case(hash) {
                return Err(SrsError::BadHash);
            }
            let then = unstamp(stamp).ok_or(SrsError::Malformed)?;
            let age = (today - then).rem_euclid(STAMP_CYCLE);
            if age > self.max_age_days {
                return Err(SrsError::Expired);
            }
            return Ok(format!("{user}@{domain}"));
        }
        if let Some(rest) = strip_tag(local, "SRS1") {
            let mut parts = rest.splitn(3, '=');
            let (Some(hash), Some(first), Some(inner)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(SrsError::Malformed);
            };
            if first.is_empty() || inner.len() < 2 {
                return Err(SrsError::Malformed);
            }
            if !self.hash(&[first, inner]).eq_ignore_ascii_case(hash) {
                return Err(SrsError::BadHash);
            }
            // The first forwarder checks its own hash and age.
            return Ok(format!("SRS0{inner}@{first}"));
        }
        Err(SrsError::NotSrs)
    }

    fn hash(&self, parts: &[&str]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.secret);
        let mut ctx = ring::hmac::Context::with_key(&key);
        for p in parts {
            ctx.update(p.to_ascii_lowercase().as_bytes());
        }
        let tag = ctx.sign();
        let mut b64 = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        b64.truncate(HASH_LEN);
        b64
    }
}

/// Whether `local` is an SRS local part (`SRS0` or `SRS1` followed by `=`, `+` or `-`).
pub fn is_srs(local: &str) -> bool {
    strip_tag(local, "SRS0").is_some() || strip_tag(local, "SRS1").is_some()
}

/// The rest after `SRS0=`/`SRS0+`/`SRS0-` (any case), starting after the separator.
fn strip_tag<'a>(local: &'a str, tag: &str) -> Option<&'a str> {
    let head = local.get(..4)?;
    let sep = local.as_bytes().get(4)?;
    if head.eq_ignore_ascii_case(tag) && matches!(sep, b'=' | b'+' | b'-') {
        local.get(5..)
    } else {
        None
    }
}

/// Days since 1970 for unix seconds.
pub fn day(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(86_400)
}

fn stamp(today: i64) -> String {
    let t = today.rem_euclid(STAMP_CYCLE) as usize;
    let hi = BASE32[(t >> 5) & 31] as char;
    let lo = BASE32[t & 31] as char;
    format!("{hi}{lo}")
}

fn unstamp(s: &str) -> Option<i64> {
    let val = |c: u8| {
        BASE32
            .iter()
            .position(|b| *b == c.to_ascii_uppercase())
            .map(|p| p as i64)
    };
    let b = s.as_bytes();
    Some(val(*b.first()?)? << 5 | val(*b.get(1)?)?)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: i64 = 20_000;

    fn srs() -> Srs {
        Srs::new(b"a secret of some length".to_vec(), 21)
    }

    #[test]
    fn srs0_round_trip() {
        let s = srs();
        let a = s.forward("Dave.Smith@Sender.test", "fwd.test", TODAY);
        let (local, domain) = a.rsplit_once('@').unwrap();
        assert_eq!(domain, "fwd.test");
        assert!(local.starts_with("SRS0="), "{a}");
        assert!(local.ends_with("=Sender.test=Dave.Smith"), "{a}");
        assert_eq!(
            s.reverse(local, TODAY + 3).unwrap(),
            "Dave.Smith@Sender.test"
        );
        // A server that lower-cases local parts still gets the bounce through.
        assert_eq!(
            s.reverse(&local.to_ascii_lowercase(), TODAY).unwrap(),
            "dave.smith@sender.test"
        );
        // libsrs2's other separators.
        let plus = local.replacen("SRS0=", "SRS0+", 1);
        assert!(s.reverse(&plus, TODAY).is_ok());
        // A local part with '=' in it survives.
        let a = s.forward("a=b@x.test", "fwd.test", TODAY);
        let local = a.rsplit_once('@').unwrap().0;
        assert_eq!(s.reverse(local, TODAY).unwrap(), "a=b@x.test");
    }

    #[test]
    fn altered_foreign_and_old_addresses_are_refused() {
        let s = srs();
        let a = s.forward("dave@sender.test", "fwd.test", TODAY);
        let local = a.rsplit_once('@').unwrap().0;
        // Another recipient slipped in: the hash no longer matches.
        let altered = local.replace("=dave", "=mallory");
        assert_eq!(s.reverse(&altered, TODAY), Err(SrsError::BadHash));
        // Made with another secret.
        let other = Srs::new(b"another secret entirely".to_vec(), 21);
        assert_eq!(other.reverse(local, TODAY), Err(SrsError::BadHash));
        // Too old, also across the 1024-day wrap.
        assert_eq!(s.reverse(local, TODAY + 22), Err(SrsError::Expired));
        assert!(s.reverse(local, TODAY + 21).is_ok());
        let near_wrap = s.forward("dave@sender.test", "fwd.test", 1023);
        let l = near_wrap.rsplit_once('@').unwrap().0;
        assert!(s.reverse(l, 1030).is_ok());
        assert_eq!(s.reverse(l, 1023 + 40), Err(SrsError::Expired));
        // Not SRS, or broken.
        assert_eq!(s.reverse("dave", TODAY), Err(SrsError::NotSrs));
        assert_eq!(s.reverse("SRS0=abcd=AA", TODAY), Err(SrsError::Malformed));
        assert_eq!(s.reverse("SRS1=abcd", TODAY), Err(SrsError::Malformed));
        assert!(is_srs("srs0-x") && is_srs("SRS1=x") && !is_srs("SRS2=x") && !is_srs("SRS"));
    }

    #[test]
    fn forwarding_an_srs_address_makes_srs1_back_to_the_first_forwarder() {
        let first = Srs::new(b"first forwarder secret".to_vec(), 21);
        let second = srs();
        let a = first.forward("dave@sender.test", "first.test", TODAY);
        let b = second.forward(&a, "second.test", TODAY);
        let (local, domain) = b.rsplit_once('@').unwrap();
        assert_eq!(domain, "second.test");
        assert!(local.starts_with("SRS1="), "{b}");
        assert!(local.contains("=first.test=="), "{b}");
        // Forwarded once more: still SRS1 to the first forwarder.
        let c = second.forward(&b, "third.test", TODAY);
        assert!(c.starts_with("SRS1=") && c.contains("=first.test=="), "{c}");
        // The bounce: second reverses to first's SRS0 address, first to dave.
        let back = second.reverse(local, TODAY).unwrap();
        assert_eq!(back, a);
        let back_local = back.rsplit_once('@').unwrap().0;
        assert_eq!(
            first.reverse(back_local, TODAY).unwrap(),
            "dave@sender.test"
        );
        let c_local = c.rsplit_once('@').unwrap().0;
        assert_eq!(second.reverse(c_local, TODAY).unwrap(), a);
        // The null sender is never rewritten.
        assert_eq!(second.forward("", "x.test", TODAY), "");
    }

    #[test]
    fn the_secret_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("srs.secret");
        let a = Srs::load_or_create(&path, 21).unwrap();
        let b = Srs::load_or_create(&path, 21).unwrap();
        let addr = a.forward("dave@sender.test", "fwd.test", TODAY);
        assert!(b.reverse(addr.rsplit_once('@').unwrap().0, TODAY).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            Srs::load_or_create(&path, 21),
            Err(SrsError::Secret { .. })
        ));
    }
}
