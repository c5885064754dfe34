//! Identifiers, addresses and domains shared by every mailkeep crate.
//!
//! Implementation notes:
//! - A [`Domain`] is always stored in its ASCII (A-label, lower case) form, so that
//!   `Bücher.example` and `xn--bcher-kva.example` compare equal (RFC 5890, UTS #46).
//! - An [`Address`] keeps the local part as the sender wrote it (it may be UTF-8 under SMTPUTF8,
//!   RFC 6531) and offers [`Address::key`], the case-folded form the directory looks up.
#![warn(missing_docs)]

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod acl;
pub mod ipnet;
pub mod message;

/// Errors from parsing addresses and domains.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    /// No `@` separates the local part from the domain.
    #[error("address has no @domain part")]
    MissingAt,
    /// The local part is empty or too long (RFC 5321 4.5.3.1.1: 64 octets).
    #[error("local part is empty or longer than 64 octets")]
    BadLocalPart,
    /// The local part has characters that are not allowed.
    #[error("local part contains a forbidden character")]
    ForbiddenCharacter,
    /// The domain is not a valid (internationalized) domain name.
    #[error("invalid domain: {0}")]
    BadDomain(String),
}

/// A domain name in its ASCII (A-label) lower-case form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

impl Domain {
    /// Parses a domain given in Unicode or ASCII form (RFC 5890 IDNA, UTS #46 mapping).
    pub fn parse(input: &str) -> Result<Domain, AddressError> {
        let trimmed = input.trim().trim_end_matches('.');
        if trimmed.is_empty() {
            return Err(AddressError::BadDomain("empty".into()));
        }
        // RFC 5321 4.1.3: address literals like [192.0.2.1] are not hosted domains.
        if trimmed.starts_with('[') {
            return Err(AddressError::BadDomain(format!(
                "{trimmed}: address literals are not accepted here"
            )));
        }
        let ascii = idna::domain_to_ascii(trimmed)
            .map_err(|_| AddressError::BadDomain(trimmed.to_string()))?;
        // RFC 1035 2.3.4: 255 octets per name, 63 per label; letters, digits, hyphen.
        if ascii.len() > 253 || ascii.is_empty() {
            return Err(AddressError::BadDomain(format!("{trimmed}: too long")));
        }
        for label in ascii.split('.') {
            if label.is_empty()
                || label.len() > 63
                || label.starts_with('-')
                || label.ends_with('-')
                || !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(AddressError::BadDomain(format!(
                    "{trimmed}: bad label {label:?}"
                )));
            }
        }
        Ok(Domain(ascii))
    }

    /// The ASCII (A-label) form, as used in DNS and in the store.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Unicode (U-label) form for display.
    pub fn to_unicode(&self) -> String {
        idna::domain_to_unicode(&self.0).0
    }

    /// True when the domain has a label in A-label form (`xn--`), i.e. it is internationalized.
    pub fn is_international(&self) -> bool {
        self.0.split('.').any(|l| l.starts_with("xn--"))
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Domain {
    type Error = AddressError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Domain::parse(&value)
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> String {
        d.0
    }
}

/// An email address: local part as written, domain normalized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    local: String,
    domain: Domain,
}

impl Address {
    /// Parses `local@domain`. Quotes around the local part are not expected here: the SMTP
    /// parser has already removed them.
    pub fn parse(input: &str) -> Result<Address, AddressError> {
        let input = input.trim();
        let at = input.rfind('@').ok_or(AddressError::MissingAt)?;
        let (local, domain) = (&input[..at], &input[at + 1..]);
        // RFC 5321 4.5.3.1.1: the local part is at most 64 octets.
        if local.is_empty() || local.len() > 64 {
            return Err(AddressError::BadLocalPart);
        }
        // Control characters, whitespace and angle brackets never belong in a stored address:
        // they would allow header injection when the address is copied into a header.
        if local
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | '\\'))
        {
            return Err(AddressError::ForbiddenCharacter);
        }
        Ok(Address {
            local: local.to_string(),
            domain: Domain::parse(domain)?,
        })
    }

    /// The local part as written.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// True when the local part is not ASCII (needs SMTPUTF8, RFC 6531).
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii()
    }

    /// The lookup key: local part case-folded (local parts are case-insensitive here, as in
    /// every widely deployed server, though RFC 5321 2.4 allows otherwise), `@`, ASCII domain.
    pub fn key(&self) -> String {
        format!("{}@{}", self.local.to_lowercase(), self.domain)
    }

    /// Splits a sub-address (`user+tag`): returns the base local part and the tag.
    pub fn split_plus(&self, separator: char) -> Option<(&str, &str)> {
        let (base, tag) = self.local.split_once(separator)?;
        if base.is_empty() {
            return None;
        }
        Some((base, tag))
    }

    /// A copy with a different local part, same domain.
    pub fn with_local(&self, local: &str) -> Address {
        Address {
            local: local.to_string(),
            domain: self.domain.clone(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Address::parse(&value)
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.to_string()
    }
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $inner:ty) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub $inner);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A user account.
    AccountId,
    i64
);
id_type!(
    /// A mailbox (folder) of an account.
    MailboxId,
    i64
);
id_type!(
    /// A message's IMAP UID within its mailbox (RFC 9051 2.3.1.1), never reused.
    Uid,
    u32
);
id_type!(
    /// A mailbox's UIDVALIDITY (RFC 9051 2.3.1.1).
    UidValidity,
    u32
);
id_type!(
    /// A per-mailbox modification sequence (RFC 7162 3.1), strictly increasing.
    ModSeq,
    u64
);

/// The id of one accepted message (one SMTP transaction), used in logs and Received headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(pub String);

impl QueueId {
    /// A new id: 12 hex digits of the clock in microseconds (sortable by time) and 8 of a
    /// random number, so two ids made in the same microsecond still differ (1 in 2^32).
    pub fn new(now_micros: u64, random: u32) -> QueueId {
        QueueId(format!(
            "{:012x}{random:08x}",
            now_micros & 0xffff_ffff_ffff
        ))
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SPECIAL-USE role of a mailbox (RFC 6154).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MailboxRole {
    /// The INBOX.
    Inbox,
    /// `\Sent`.
    Sent,
    /// `\Drafts`.
    Drafts,
    /// `\Junk`.
    Junk,
    /// `\Trash`.
    Trash,
    /// `\Archive`.
    Archive,
}

impl MailboxRole {
    /// All roles, in the order the default mailboxes are created.
    pub const ALL: [MailboxRole; 6] = [
        MailboxRole::Inbox,
        MailboxRole::Sent,
        MailboxRole::Drafts,
        MailboxRole::Junk,
        MailboxRole::Trash,
        MailboxRole::Archive,
    ];

    /// The stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxRole::Inbox => "inbox",
            MailboxRole::Sent => "sent",
            MailboxRole::Drafts => "drafts",
            MailboxRole::Junk => "junk",
            MailboxRole::Trash => "trash",
            MailboxRole::Archive => "archive",
        }
    }

    /// Parses [`MailboxRole::as_str`].
    pub fn parse(s: &str) -> Option<MailboxRole> {
        MailboxRole::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The default mailbox name for this role.
    pub fn default_name(self) -> &'static str {
        match self {
            MailboxRole::Inbox => "INBOX",
            MailboxRole::Sent => "Sent",
            MailboxRole::Drafts => "Drafts",
            MailboxRole::Junk => "Junk",
            MailboxRole::Trash => "Trash",
            MailboxRole::Archive => "Archive",
        }
    }

    /// The RFC 6154 attribute (`\Sent`...); INBOX has none.
    pub fn special_use(self) -> Option<&'static str> {
        match self {
            MailboxRole::Inbox => None,
            MailboxRole::Sent => Some("\\Sent"),
            MailboxRole::Drafts => Some("\\Drafts"),
            MailboxRole::Junk => Some("\\Junk"),
            MailboxRole::Trash => Some("\\Trash"),
            MailboxRole::Archive => Some("\\Archive"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idna_domains_compare_equal() {
        let a = Domain::parse("Bücher.Example").unwrap();
        let b = Domain::parse("xn--bcher-kva.example").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "xn--bcher-kva.example");
        assert_eq!(a.to_unicode(), "bücher.example");
        assert!(a.is_international());
    }

    #[test]
    fn bad_domains_are_refused() {
        // A PTR or From: domain with a line break (DNS labels may hold any byte) never
        // passes, so none reaches a Received field or a report.
        for bad in [
            "",
            "-a.example",
            "a..example",
            "[127.0.0.1]",
            "a b.example",
            "evil.test\r\nX-Injected: 1",
            "a\\013b.test",
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Domain::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn address_key_is_case_insensitive_and_keeps_utf8() {
        let a = Address::parse("John.Doe@EXAMPLE.com").unwrap();
        assert_eq!(a.key(), "john.doe@example.com");
        assert_eq!(a.local(), "John.Doe");
        let u = Address::parse("Ñoño@Bücher.example").unwrap();
        assert!(u.needs_smtputf8());
        assert_eq!(u.key(), "ñoño@xn--bcher-kva.example");
    }

    #[test]
    fn address_rejects_injection_characters() {
        assert_eq!(
            Address::parse("a\r\nBcc: x@example.com").unwrap_err(),
            AddressError::ForbiddenCharacter
        );
        assert_eq!(
            Address::parse("nobody").unwrap_err(),
            AddressError::MissingAt
        );
        assert_eq!(
            Address::parse(&format!("{}@example.com", "a".repeat(65))).unwrap_err(),
            AddressError::BadLocalPart
        );
    }

    #[test]
    fn queue_ids_sort_by_time_and_differ_within_a_microsecond() {
        let a = QueueId::new(1_700_000_000_000_000, 0xffff_ffff);
        let b = QueueId::new(1_700_000_000_000_001, 0);
        assert!(a < b);
        assert_eq!(a.0.len(), 20);
        assert_ne!(QueueId::new(5, 1), QueueId::new(5, 2));
    }

    #[test]
    fn plus_addressing_splits() {
        let a = Address::parse("user+tag+more@example.com").unwrap();
        assert_eq!(a.split_plus('+'), Some(("user", "tag+more")));
        assert_eq!(
            Address::parse("+x@example.com").unwrap().split_plus('+'),
            None
        );
    }
}
