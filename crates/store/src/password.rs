//! Password hashing: argon2id (RFC 9106) in PHC string form.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

/// Hashes a password with argon2id and a random salt (the crate's defaults: 19 MiB, 2 passes,
/// the OWASP recommendation).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks a password against a PHC string; false on any mismatch or unreadable hash.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// The letters of app passwords: lower case and digits without look-alikes (0/o, 1/l).
const APP_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// Characters in an app password (5 bits each: 120 bits).
const APP_LEN: usize = 24;

/// A new app password: 24 random characters in groups of four (`abcd-efgh-...`).
pub fn app_password_generate() -> String {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    let chars: Vec<char> = (0..APP_LEN)
        .map(|_| APP_ALPHABET[rng.gen_range(0..APP_ALPHABET.len())] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// An app password as typed, without group separators, lower case; None when it cannot be
/// one (so ordinary passwords never cost a lookup).
fn app_password_normal(password: &str) -> Option<String> {
    let p: String = password
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (p.len() == APP_LEN && p.bytes().all(|b| APP_ALPHABET.contains(&b))).then_some(p)
}

/// The stored form of an app password: hex SHA-256 of its normal form. None when the text
/// cannot be an app password.
pub fn app_password_digest(password: &str) -> Option<String> {
    use sha2::Digest;
    let p = app_password_normal(password)?;
    let d = sha2::Sha256::digest(p.as_bytes());
    Some(d.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_passwords_are_random_and_typed_loosely() {
        let p = app_password_generate();
        assert_eq!(p.len(), 29, "{p}");
        assert_ne!(p, app_password_generate());
        let d = app_password_digest(&p).unwrap();
        assert_eq!(d.len(), 64);
        // Without dashes, with spaces, in capitals: the same password.
        assert_eq!(app_password_digest(&p.replace('-', "")), Some(d.clone()));
        assert_eq!(
            app_password_digest(&p.replace('-', " ").to_uppercase()),
            Some(d)
        );
        assert_eq!(app_password_digest("correct horse battery"), None);
        assert_eq!(app_password_digest(&"0".repeat(24)), None, "0 is not used");
    }

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
