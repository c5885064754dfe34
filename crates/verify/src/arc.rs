//! Rules of RFC 8617 that mail-auth's ARC verifier does not apply, checked on the header
//! fields before its result is taken: tag lists well formed (RFC 6376 3.2: no duplicate tags,
//! tag names of letters, digits and underscores, the required tags present), an algorithm
//! that is allowed (RFC 8301 3.1:
//! never rsa-sha1), no ARC-Seal in an ARC-Message-Signature's h= (RFC 8617 4.1.2), no h= in an
//! ARC-Seal (RFC 8617 4.1.3), and every instance a complete set of three fields (RFC 8617
//! 4.2.1).

use std::collections::{BTreeMap, HashSet};

/// Why the message's ARC chain fails, when one of those rules is broken; None otherwise
/// (including when there is no ARC field at all).
pub fn strict_failure(message: &[u8]) -> Option<String> {
    let fields = header_fields(message);
    // instance -> (seals, signatures, results)
    let mut sets: BTreeMap<u32, (u32, u32, u32)> = BTreeMap::new();
    let mut any = false;
    for (name, value) in &fields {
        let kind = match name.to_ascii_lowercase().as_str() {
            "arc-seal" => 0,
            "arc-message-signature" => 1,
            "arc-authentication-results" => 2,
            _ => continue,
        };
        any = true;
        if kind == 2 {
            // ARC-Authentication-Results: i=N; authserv-id; ...
            let i = value
                .trim()
                .strip_prefix("i=")
                .and_then(|r| r.split(';').next())
                .and_then(|n| n.trim().parse::<u32>().ok());
            let Some(i) = i else {
                return Some("an ARC-Authentication-Results field without i=".into());
            };
            sets.entry(i).or_default().2 += 1;
            continue;
        }
        let tags = match tag_list(value) {
            Ok(t) => t,
            Err(e) => return Some(e),
        };
        let field = if kind == 0 {
            "ARC-Seal"
        } else {
            "ARC-Message-Signature"
        };
        // RFC 8617 4.1.2 and 4.1.3: the tags each field must carry (names are
        // case-sensitive, RFC 6376 3.2).
        let required: &[&str] = if kind == 0 {
            &["a", "b", "cv", "d", "i", "s"]
        } else {
            &["a", "b", "bh", "d", "h", "i", "s"]
        };
        if let Some(missing) = required.iter().find(|t| !tags.contains_key(**t)) {
            return Some(format!(
                "{} has no {missing}= tag",
                if kind == 0 {
                    "ARC-Seal"
                } else {
                    "ARC-Message-Signature"
                }
            ));
        }
        match tags.get("a").map(String::as_str) {
            Some("rsa-sha256") | Some("ed25519-sha256") => {}
            Some(a) => return Some(format!("{field} uses a={a}, not allowed (RFC 8301 3.1)")),
            None => return Some(format!("{field} has no a= tag")),
        }
        if kind == 0 && tags.contains_key("h") {
            return Some("an ARC-Seal with an h= tag (RFC 8617 4.1.3)".into());
        }
        if kind == 1 {
            let signs_seal = tags.get("h").is_some_and(|h| {
                h.split(':')
                    .any(|n| n.trim().eq_ignore_ascii_case("arc-seal"))
            });
            if signs_seal {
                return Some("an ARC-Message-Signature signing ARC-Seal (RFC 8617 4.1.2)".into());
            }
        }
        let Some(i) = tags.get("i").and_then(|i| i.parse::<u32>().ok()) else {
            return Some(format!("{field} without a valid i= tag"));
        };
        let e = sets.entry(i).or_default();
        if kind == 0 {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    if !any {
        return None;
    }
    // RFC 8617 4.2.1: instances 1..N, each exactly one of each field.
    for (n, (i, counts)) in sets.iter().enumerate() {
        if *i != n as u32 + 1 || *counts != (1, 1, 1) {
            return Some(format!("ARC set {i} is incomplete or repeated"));
        }
    }
    None
}

/// A DKIM-style tag list (RFC 6376 3.2): `name=value` separated by semicolons, names of a
/// letter then letters, digits and underscores, each name once.
fn tag_list(value: &str) -> Result<BTreeMap<String, String>, String> {
    let mut tags = BTreeMap::new();
    let mut seen = HashSet::new();
    let parts: Vec<&str> = value.split(';').collect();
    for (n, part) in parts.iter().enumerate() {
        let part = part.trim();
        if part.is_empty() {
            // Only the last may be empty (a trailing semicolon).
            if n + 1 == parts.len() {
                continue;
            }
            return Err("an empty tag in an ARC field".into());
        }
        let Some((name, v)) = part.split_once('=') else {
            return Err(format!("an ARC tag without '=': {part:.40}"));
        };
        let name = name.trim();
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("an invalid ARC tag name {name:.40}"));
        }
        if !seen.insert(name.to_string()) {
            return Err(format!("the ARC tag {name} appears twice"));
        }
        let v: String = v.split_whitespace().collect();
        tags.insert(name.to_string(), v);
    }
    Ok(tags)
}

/// The header fields, unfolded: (name, value).
fn header_fields(message: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(message);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists_are_strict() {
        assert!(tag_list("a=rsa-sha256; b=x y; i=1;").is_ok());
        assert!(tag_list("a=1; a=2").is_err());
        assert!(tag_list("a=1;; b=2").is_err());
        assert!(tag_list("1a=1").is_err());
        assert!(tag_list("a").is_err());
    }
}
