//! Access rights on mailboxes (RFC 4314 2).

use std::fmt;

/// A set of RFC 4314 rights. The obsolete RFC 2086 rights `c` and `d` are not stored: they
/// are read as the groups they stand for and shown when any right of the group is present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Rights(u16);

/// The rights in the order RFC 4314 2.1 lists them (and responses show them).
const LETTERS: [char; 11] = ['l', 'r', 's', 'w', 'i', 'p', 'k', 'x', 't', 'e', 'a'];

impl Rights {
    /// No rights.
    pub const NONE: Rights = Rights(0);
    /// Every right.
    pub const ALL: Rights = Rights((1 << LETTERS.len()) - 1);
    /// `l`: the mailbox is visible to LIST and LSUB.
    pub const LOOKUP: Rights = Rights::bit('l');
    /// `r`: SELECT, EXAMINE, STATUS, FETCH, SEARCH, COPY from.
    pub const READ: Rights = Rights::bit('r');
    /// `s`: keep `\Seen` across sessions.
    pub const SEEN: Rights = Rights::bit('s');
    /// `w`: write flags other than `\Seen` and `\Deleted`.
    pub const WRITE: Rights = Rights::bit('w');
    /// `i`: APPEND, COPY and MOVE into.
    pub const INSERT: Rights = Rights::bit('i');
    /// `p`: send mail to the submission address of the mailbox (not used by mailkeep yet).
    pub const POST: Rights = Rights::bit('p');
    /// `k`: CREATE children, RENAME to a child of it.
    pub const CREATE: Rights = Rights::bit('k');
    /// `x`: DELETE the mailbox, RENAME it.
    pub const DELETE_MAILBOX: Rights = Rights::bit('x');
    /// `t`: set or clear `\Deleted`.
    pub const DELETE_MESSAGES: Rights = Rights::bit('t');
    /// `e`: EXPUNGE.
    pub const EXPUNGE: Rights = Rights::bit('e');
    /// `a`: administer (SETACL, DELETEACL, GETACL, LISTRIGHTS).
    pub const ADMIN: Rights = Rights::bit('a');
    /// RFC 4314 2.1.1: `c` stands for `k` and `x`.
    const C_GROUP: Rights = Rights(Rights::CREATE.0 | Rights::DELETE_MAILBOX.0);
    /// RFC 4314 2.1.1: `d` stands for `e` and `t` (`x` goes with `c` here).
    const D_GROUP: Rights = Rights(Rights::EXPUNGE.0 | Rights::DELETE_MESSAGES.0);

    const fn bit(c: char) -> Rights {
        let mut i = 0;
        while i < LETTERS.len() {
            if LETTERS[i] == c {
                return Rights(1 << i);
            }
            i += 1;
        }
        Rights(0)
    }

    /// Parses a rights string (RFC 4314 3.1 `rights`, without the `+`/`-` modifier);
    /// `c` and `d` expand to their groups (RFC 4314 2.1.1, as Dovecot: `c` = `kx`,
    /// `d` = `et`). An unknown letter is an error naming it.
    pub fn parse(s: &str) -> Result<Rights, char> {
        let mut r = Rights::NONE;
        for ch in s.chars() {
            r = r.union(match ch {
                'c' => Rights::C_GROUP,
                'd' => Rights::D_GROUP,
                _ => match Rights::bit(ch) {
                    Rights(0) => return Err(ch),
                    b => b,
                },
            });
        }
        Ok(r)
    }

    /// Both sets.
    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    /// These rights without `other`.
    pub const fn minus(self, other: Rights) -> Rights {
        Rights(self.0 & !other.0)
    }

    /// True when every right of `other` is here.
    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when any right of `other` is here.
    pub const fn intersects(self, other: Rights) -> bool {
        self.0 & other.0 != 0
    }

    /// True when there are no rights.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The rights as their letters without the virtual `c` and `d`: the form to store, which
    /// [`Rights::parse`] reads back unchanged.
    pub fn to_letters(self) -> String {
        self.letters().collect()
    }

    /// Whether these rights allow setting or clearing a flag: `\Seen` needs `s`, `\Deleted`
    /// needs `t`, the others `w` (RFC 4314 4, STORE and COPY/APPEND).
    pub fn allows_flag(self, flag: &str) -> bool {
        if flag.eq_ignore_ascii_case("\\Seen") {
            self.contains(Rights::SEEN)
        } else if flag.eq_ignore_ascii_case("\\Deleted") {
            self.contains(Rights::DELETE_MESSAGES)
        } else {
            self.contains(Rights::WRITE)
        }
    }

    /// The single rights, one letter each, in RFC order.
    pub fn letters(self) -> impl Iterator<Item = char> {
        LETTERS
            .into_iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, c)| c)
    }
}

impl fmt::Display for Rights {
    /// The letters in RFC order, followed by `c` and `d` when any right of their groups is
    /// present (RFC 4314 2.1.1: "the server MUST also include the "c" right").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.letters() {
            write!(f, "{c}")?;
        }
        if self.intersects(Rights::C_GROUP) {
            f.write_str("c")?;
        }
        if self.intersects(Rights::D_GROUP) {
            f.write_str("d")?;
        }
        Ok(())
    }
}

/// Parses a SETACL rights argument (RFC 4314 3.1 `mod-rights`): an optional `+` (add) or `-`
/// (remove), then lower-case right letters. Err says what is wrong.
pub fn parse_mod_rights(s: &str) -> Result<(Option<char>, Rights), String> {
    let (modifier, letters) = match s.chars().next() {
        Some(c @ ('+' | '-')) => (Some(c), &s[1..]),
        _ => (None, s),
    };
    if let Some(c) = letters.chars().find(|c| c.is_ascii_uppercase()) {
        // RFC 4314 3.1 example A035.
        return Err(format!("upper-case rights are not allowed ({c})"));
    }
    let rights = Rights::parse(letters).map_err(|c| format!("the {c:?} right is not supported"))?;
    Ok((modifier, rights))
}

/// The canonical form of an ACL identifier: `anyone` or an address key, with a leading `-`
/// (negative rights) kept. Err says what is wrong.
pub fn canonical_identifier(s: &str) -> Result<String, String> {
    let (neg, id) = match s.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", s),
    };
    if id.eq_ignore_ascii_case(ANYONE) {
        return Ok(format!("{neg}{ANYONE}"));
    }
    match crate::Address::parse(id) {
        Ok(addr) => Ok(format!("{neg}{}", addr.key())),
        Err(_) => Err(format!("{id:?} is neither \"anyone\" nor an address")),
    }
}

/// One access control list entry: an identifier (an address key, `anyone`, or either with a
/// leading `-` for negative rights, RFC 4314 2) and its rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    /// Who.
    pub identifier: String,
    /// What.
    pub rights: Rights,
}

/// The identifier every user matches (RFC 4314 2).
pub const ANYONE: &str = "anyone";

/// The rights `who` (an address key) has from an ACL: the union of the entries for `who`
/// and `anyone`, less the union of their negative entries (RFC 4314 2).
pub fn effective_rights(acl: &[AclEntry], who: &str) -> Rights {
    let mut plus = Rights::NONE;
    let mut minus = Rights::NONE;
    for e in acl {
        match e.identifier.strip_prefix('-') {
            Some(id) if id == who || id == ANYONE => minus = minus.union(e.rights),
            Some(_) => {}
            None if e.identifier == who || e.identifier == ANYONE => plus = plus.union(e.rights),
            None => {}
        }
    }
    plus.minus(minus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_parse_and_print_in_rfc_order() {
        let r = Rights::parse("alr").unwrap();
        assert_eq!(r.to_string(), "lra");
        assert_eq!(Rights::ALL.to_string(), "lrswipkxteacd");
        assert_eq!(Rights::parse("q"), Err('q'));
        assert_eq!(Rights::parse("").unwrap(), Rights::NONE);
        // The stored form reads back as itself; the shown form may not (c adds x).
        let k = Rights::parse("lrk").unwrap();
        assert_eq!(Rights::parse(&k.to_letters()).unwrap(), k);
        assert_ne!(Rights::parse(&k.to_string()).unwrap(), k);
    }

    #[test]
    fn obsolete_c_and_d_expand_to_their_groups() {
        // RFC 4314 2.1.1.
        let r = Rights::parse("lrc").unwrap();
        assert!(r.contains(Rights::CREATE) && r.contains(Rights::DELETE_MAILBOX));
        assert_eq!(r.to_string(), "lrkxc");
        let d = Rights::parse("d").unwrap();
        assert!(d.contains(Rights::EXPUNGE) && d.contains(Rights::DELETE_MESSAGES));
        assert_eq!(d.to_string(), "ted");
        // Any member of a group shows the obsolete letter.
        assert_eq!(Rights::parse("k").unwrap().to_string(), "kc");
        assert_eq!(Rights::parse("lrt").unwrap().to_string(), "lrtd");
    }

    #[test]
    fn setacl_arguments_are_checked() {
        assert_eq!(
            parse_mod_rights("+cda").unwrap(),
            (Some('+'), Rights::parse("kxeta").unwrap())
        );
        assert!(parse_mod_rights("lrQswicda")
            .unwrap_err()
            .contains("upper-case"));
        assert!(parse_mod_rights("lrqswicda").unwrap_err().contains("'q'"));
        assert_eq!(parse_mod_rights("").unwrap(), (None, Rights::NONE));
        assert_eq!(canonical_identifier("-Bob@X.test").unwrap(), "-bob@x.test");
        assert_eq!(canonical_identifier("ANYONE").unwrap(), "anyone");
        assert!(canonical_identifier("not an address").is_err());
    }

    #[test]
    fn negative_rights_subtract() {
        let acl = vec![
            AclEntry {
                identifier: "anyone".into(),
                rights: Rights::parse("lrs").unwrap(),
            },
            AclEntry {
                identifier: "bob@x.test".into(),
                rights: Rights::parse("w").unwrap(),
            },
            AclEntry {
                identifier: "-bob@x.test".into(),
                rights: Rights::parse("s").unwrap(),
            },
        ];
        assert_eq!(effective_rights(&acl, "bob@x.test").to_string(), "lrw");
        assert_eq!(effective_rights(&acl, "eve@x.test").to_string(), "lrs");
        assert!(effective_rights(&[], "eve@x.test").is_empty());
    }
}
