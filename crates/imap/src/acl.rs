//! Shared mailboxes and access control lists (RFC 4314), in the Other Users' namespace
//! (RFC 2342 5): another user's mailbox `Projects` is `Shared/bob@example.org/Projects`.
//!
//! - A user's own mailboxes carry every right; a name the user owns always wins, so a personal
//!   folder that happens to be called `Shared` keeps working.
//! - Another user's mailbox exists for a user only while some right on it applies to them
//!   (RFC 4314 6: refusals never reveal a mailbox the user may not see).
//! - The store keeps the lists; [`effective_rights`] combines `anyone`, the user's own
//!   entry and negative entries.

use mailkeep_imap_proto::response;
use mailkeep_imap_proto::response::Status;
use mailkeep_store::{effective_rights, AclChange, AclEntry, Mailbox, Rights, StoreError};
use mailkeep_types::{AccountId, Address};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::session::{Flow, Res, Session};

/// The Other Users' namespace prefix, without its delimiter.
pub(crate) const SHARED: &str = "Shared";

/// A mailbox name resolved for the logged-in user.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// The mailbox.
    pub mailbox: Mailbox,
    /// The user's rights on it.
    pub rights: Rights,
    /// The name as the client spells it.
    pub name: String,
    /// The owner's address key when it belongs to someone else.
    pub owner: Option<String>,
}

/// Splits `Shared/owner/rest` into the owner and the rest (None for `Shared/owner` itself).
pub(crate) fn split_shared(name: &str) -> Option<(&str, Option<&str>)> {
    let rest = name.strip_prefix(SHARED)?.strip_prefix('/')?;
    match rest.split_once('/') {
        Some((owner, rest)) if !owner.is_empty() && !rest.is_empty() => Some((owner, Some(rest))),
        None if !rest.is_empty() => Some((rest, None)),
        _ => None,
    }
}

/// The flags of `flags` the rights allow to be set (RFC 4314 4).
pub(crate) fn permitted_flags(rights: Rights, flags: &[String]) -> Vec<String> {
    flags
        .iter()
        .filter(|f| rights.allows_flag(f))
        .cloned()
        .collect()
}

/// The rights of which MYRIGHTS needs one (RFC 4314 4: l, r, i, k, x, a): a mailbox where the
/// user has none of them is answered as one that does not exist.
pub(crate) fn visible_rights() -> Rights {
    Rights::LOOKUP
        .union(Rights::READ)
        .union(Rights::INSERT)
        .union(Rights::CREATE)
        .union(Rights::DELETE_MAILBOX)
        .union(Rights::ADMIN)
}

/// Whether SELECT opens the mailbox read-write: any of `i`, `e` or a flag right (RFC 4314
/// 5.1.1 and 5.2, as Dovecot).
pub(crate) fn writable(rights: Rights) -> bool {
    rights.intersects(
        Rights::INSERT
            .union(Rights::EXPUNGE)
            .union(Rights::WRITE)
            .union(Rights::SEEN)
            .union(Rights::DELETE_MESSAGES),
    )
}

/// Parses a SETACL rights argument; Err is the BAD text.
fn parse_mod_rights(raw: &[u8]) -> Result<(Option<char>, Rights), String> {
    let s = std::str::from_utf8(raw).map_err(|_| "rights must be ASCII letters".to_string())?;
    mailkeep_types::acl::parse_mod_rights(s)
}

/// Where a new name (CREATE, RENAME's target) that is not one of the user's mailboxes lands.
pub(crate) enum Place {
    /// A personal mailbox.
    Personal,
    /// In another user's part of the shared namespace.
    Shared(SharedPlace),
    /// In the shared namespace, but nowhere anyone may create: answered like a lack of rights,
    /// so that it does not tell which accounts exist.
    Refused,
}

/// A new name in another user's part of the shared namespace.
pub(crate) struct SharedPlace {
    /// The owner's account.
    pub owner: AccountId,
    /// The name inside the owner's account.
    pub local: String,
    /// The user's rights on the nearest existing parent (none when there is none: only
    /// the owner creates top-level mailboxes).
    pub parent_rights: Rights,
    /// The owner has a mailbox of that name already (perhaps one the user may not see).
    pub exists: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Where a name that is not one of the user's own mailboxes lands. `Shared` and the names
    /// under it belong to the shared namespace, unless the user has a personal `Shared`
    /// mailbox from before (then its names stay personal where no other user's part is meant).
    pub(crate) async fn place(&self, name: &str) -> Result<Place, StoreError> {
        if name != SHARED && !name.starts_with(&format!("{SHARED}/")) {
            return Ok(Place::Personal);
        }
        let legacy = self.find_mailbox(SHARED).await?.is_some();
        let refused = if legacy {
            Place::Personal
        } else {
            Place::Refused
        };
        let Some((owner, Some(local))) = split_shared(name) else {
            return Ok(refused);
        };
        let (Some(me), Ok(owner)) = (&self.user, Address::parse(owner)) else {
            return Ok(refused);
        };
        if owner.key() == me.address.key() {
            return Ok(refused);
        }
        let store = &self.server.store;
        let Some(user) = store.user_get(&owner.key()).await? else {
            return Ok(refused);
        };
        let boxes = store.mailboxes(user.id).await?;
        let mut parent_rights = Rights::NONE;
        let mut level = local;
        while let Some((up, _)) = level.rsplit_once('/') {
            if let Some(mb) = boxes.iter().find(|m| m.name == up) {
                parent_rights = effective_rights(&store.acl_get(mb.id).await?, &me.address.key());
                break;
            }
            level = up;
        }
        Ok(Place::Shared(SharedPlace {
            owner: user.id,
            local: local.to_string(),
            parent_rights,
            exists: boxes.iter().any(|m| m.name == local),
        }))
    }

    /// Resolves a client's mailbox name: the user's own mailbox first, else another user's
    /// mailbox in the shared namespace on which some right applies to the user.
    pub(crate) async fn resolve(&self, name: &str) -> Result<Option<Resolved>, StoreError> {
        if let Some(mb) = self.find_mailbox(name).await? {
            return Ok(Some(Resolved {
                name: mb.name.clone(),
                mailbox: mb,
                rights: Rights::ALL,
                owner: None,
            }));
        }
        let Some((owner, Some(rest))) = split_shared(name) else {
            return Ok(None);
        };
        let Some(me) = &self.user else {
            return Ok(None);
        };
        let Ok(owner) = Address::parse(owner) else {
            return Ok(None);
        };
        let owner = owner.key();
        if owner == me.address.key() {
            return Ok(None);
        }
        let store = &self.server.store;
        let Some(user) = store.user_get(&owner).await? else {
            return Ok(None);
        };
        let boxes = store.mailboxes(user.id).await?;
        let Some(mb) = boxes
            .into_iter()
            .find(|m| m.name == rest || (rest.eq_ignore_ascii_case("INBOX") && m.name == "INBOX"))
        else {
            return Ok(None);
        };
        let rights = effective_rights(&store.acl_get(mb.id).await?, &me.address.key());
        if rights.is_empty() {
            return Ok(None);
        }
        Ok(Some(Resolved {
            name: format!("{SHARED}/{owner}/{}", mb.name),
            mailbox: mb,
            rights,
            owner: Some(owner),
        }))
    }

    /// True when the user has `needed` on the mailbox; else writes the tagged NO: as for a
    /// mailbox that does not exist when the user may not even list it (RFC 4314 6), NOPERM
    /// otherwise (RFC 5530).
    pub(crate) fn permit(&mut self, tag: &str, r: &Resolved, needed: Rights) -> bool {
        if r.rights.contains(needed) {
            return true;
        }
        if r.rights.contains(Rights::LOOKUP) {
            let text = format!("permission denied: this needs the {needed} right");
            self.tagged(tag, Status::No, Some("NOPERM"), &text);
        } else {
            self.tagged(tag, Status::No, Some("NONEXISTENT"), "no such mailbox");
        }
        false
    }

    /// The target of APPEND, COPY or MOVE: it needs "i" (RFC 4314 4). A missing one, or one
    /// the user may neither list nor fill, gets TRYCREATE (RFC 9051 6.4.7: the client may
    /// create it). None when the reply is written.
    pub(crate) async fn insert_target(
        &mut self,
        tag: &str,
        name: &str,
    ) -> Result<Option<Resolved>, StoreError> {
        let target = self
            .resolve(name)
            .await?
            .filter(|t| t.rights.intersects(Rights::LOOKUP.union(Rights::INSERT)));
        let Some(target) = target else {
            self.tagged(tag, Status::No, Some("TRYCREATE"), "no such mailbox");
            return Ok(None);
        };
        Ok(self.permit(tag, &target, Rights::INSERT).then_some(target))
    }

    /// Resolves a mailbox argument for an ACL command; writes the reply and returns None when
    /// it does not exist for the user or lacks `needed`.
    async fn acl_target(
        &mut self,
        tag: &str,
        raw: &[u8],
        needed: Rights,
    ) -> Result<Option<Resolved>, Flow> {
        let name = match self.decode_name(raw) {
            Ok(n) => n,
            Err(e) => return Err(self.bad(Some(tag), &e)),
        };
        let r = match self.resolve(&name).await {
            Ok(r) => r,
            Err(e) => {
                self.store_error(tag, &e);
                return Ok(None);
            }
        };
        let Some(r) = r else {
            self.tagged(tag, Status::No, Some("NONEXISTENT"), "no such mailbox");
            return Ok(None);
        };
        if needed.is_empty() {
            // MYRIGHTS: any of l, r, i, k, x, a (RFC 4314 4).
            if !r.rights.intersects(visible_rights()) {
                self.tagged(tag, Status::No, Some("NONEXISTENT"), "no such mailbox");
                return Ok(None);
            }
        } else if !self.permit(tag, &r, needed) {
            return Ok(None);
        }
        Ok(Some(r))
    }

    /// Canonical form of an ACL identifier. Whether such a user exists is not checked (as
    /// Dovecot): the answer would tell any user which accounts exist. Err is the NO text.
    fn identifier(raw: &[u8]) -> Result<String, String> {
        let s = std::str::from_utf8(raw).map_err(|_| "the identifier is not UTF-8".to_string())?;
        mailkeep_types::acl::canonical_identifier(s)
    }

    /// The owner's address key and the list as GETACL shows it: the owner with every right,
    /// then the stored entries.
    async fn full_acl(&self, r: &Resolved) -> Result<Vec<AclEntry>, StoreError> {
        let owner = self.owner_key(r)?;
        let mut acl = vec![AclEntry {
            identifier: owner,
            rights: Rights::ALL,
        }];
        acl.extend(self.server.store.acl_get(r.mailbox.id).await?);
        Ok(acl)
    }

    /// The address key of the mailbox's owner.
    fn owner_key(&self, r: &Resolved) -> Result<String, StoreError> {
        match &r.owner {
            Some(o) => Ok(o.clone()),
            None => self.account_key(),
        }
    }

    fn account_key(&self) -> Result<String, StoreError> {
        self.user
            .as_ref()
            .map(|u| u.address.key())
            .ok_or_else(|| StoreError::Conflict("not logged in".into()))
    }

    /// GETACL (RFC 4314 3.3).
    pub(crate) async fn getacl(&mut self, tag: &str, raw: &[u8]) -> Res {
        let r = match self.acl_target(tag, raw, Rights::ADMIN).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Flow::Continue),
            Err(f) => return Ok(f),
        };
        let acl = self.full_acl(&r).await?;
        let utf8 = self.utf8();
        let mut line = b"* ACL ".to_vec();
        response::mailbox(&mut line, &r.name, utf8);
        for e in &acl {
            line.push(b' ');
            response::astring(&mut line, e.identifier.as_bytes(), utf8);
            line.push(b' ');
            response::astring(&mut line, e.rights.to_string().as_bytes(), utf8);
        }
        line.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&line);
        self.tagged(tag, Status::Ok, None, "GETACL completed");
        Ok(Flow::Continue)
    }

    /// SETACL (RFC 4314 3.1) and DELETEACL (3.2, `rights` None).
    pub(crate) async fn setacl(
        &mut self,
        tag: &str,
        raw: &[u8],
        identifier: &[u8],
        rights: Option<&[u8]>,
    ) -> Res {
        // Syntax first: an unknown right is BAD whatever the mailbox (RFC 4314 3.1).
        let change = match rights.map(parse_mod_rights) {
            Some(Err(e)) => return Ok(self.bad(Some(tag), &e)),
            Some(Ok(c)) => Some(c),
            None => None,
        };
        let verb = if rights.is_some() {
            "SETACL"
        } else {
            "DELETEACL"
        };
        let r = match self.acl_target(tag, raw, Rights::ADMIN).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Flow::Continue),
            Err(f) => return Ok(f),
        };
        let id = match Self::identifier(identifier) {
            Ok(id) => id,
            Err(why) => {
                self.tagged(tag, Status::No, Some("CANNOT"), &why);
                return Ok(Flow::Continue);
            }
        };
        let owner = self.owner_key(&r)?;
        if id.trim_start_matches('-') == owner {
            self.tagged(
                tag,
                Status::No,
                Some("CANNOT"),
                "the owner always has every right on their mailboxes",
            );
            return Ok(Flow::Continue);
        }
        let change = match change {
            None => AclChange::Replace(Rights::NONE),
            Some((None, rights)) => AclChange::Replace(rights),
            Some((Some('+'), rights)) => AclChange::Add(rights),
            Some((_, rights)) => AclChange::Remove(rights),
        };
        self.server.store.acl_set(r.mailbox.id, &id, change).await?;
        self.tagged(tag, Status::Ok, None, &format!("{verb} completed"));
        Ok(Flow::Continue)
    }

    /// LISTRIGHTS (RFC 4314 3.4): nothing is tied, so each right stands alone; the owner is
    /// always granted everything.
    pub(crate) async fn listrights(&mut self, tag: &str, raw: &[u8], identifier: &[u8]) -> Res {
        let r = match self.acl_target(tag, raw, Rights::ADMIN).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Flow::Continue),
            Err(f) => return Ok(f),
        };
        let owner = self.owner_key(&r)?;
        let is_owner = Self::identifier(identifier).is_ok_and(|id| id == owner);
        let utf8 = self.utf8();
        let mut line = b"* LISTRIGHTS ".to_vec();
        response::mailbox(&mut line, &r.name, utf8);
        line.push(b' ');
        // RFC 4314 3.4: "the same form of an identifier as specified by the client".
        response::astring(&mut line, identifier, utf8);
        if is_owner {
            line.extend_from_slice(format!(" {}", Rights::ALL).as_bytes());
        } else {
            line.extend_from_slice(b" \"\"");
            for c in Rights::ALL.letters() {
                line.extend_from_slice(format!(" {c}").as_bytes());
            }
            // RFC 4314 2.1.1: the virtual rights, untied.
            line.extend_from_slice(b" c d");
        }
        line.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&line);
        self.tagged(tag, Status::Ok, None, "LISTRIGHTS completed");
        Ok(Flow::Continue)
    }

    /// MYRIGHTS (RFC 4314 3.5).
    pub(crate) async fn myrights(&mut self, tag: &str, raw: &[u8]) -> Res {
        let r = match self.acl_target(tag, raw, Rights::NONE).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Flow::Continue),
            Err(f) => return Ok(f),
        };
        let utf8 = self.utf8();
        let mut line = b"* MYRIGHTS ".to_vec();
        response::mailbox(&mut line, &r.name, utf8);
        line.push(b' ');
        response::astring(&mut line, r.rights.to_string().as_bytes(), utf8);
        line.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&line);
        self.tagged(tag, Status::Ok, None, "MYRIGHTS completed");
        Ok(Flow::Continue)
    }

    /// Other users' mailboxes the user may list (`l`), with their client names and rights,
    /// in name order.
    pub(crate) async fn shared_listing(
        &self,
    ) -> Result<Vec<(String, Mailbox, Rights)>, StoreError> {
        let me = self.account_key()?;
        let shared = self.server.store.shared_mailboxes(&me).await?;
        Ok(shared
            .into_iter()
            .filter_map(|s| {
                let rights = effective_rights(&s.acl, &me);
                rights.contains(Rights::LOOKUP).then(|| {
                    (
                        format!("{SHARED}/{}/{}", s.owner.key(), s.mailbox.name),
                        s.mailbox,
                        rights,
                    )
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_names_split_into_owner_and_mailbox() {
        assert_eq!(
            split_shared("Shared/bob@x.test/Projects/2026"),
            Some(("bob@x.test", Some("Projects/2026")))
        );
        assert_eq!(
            split_shared("Shared/bob@x.test"),
            Some(("bob@x.test", None))
        );
        assert_eq!(split_shared("Shared"), None);
        assert_eq!(split_shared("Shared/"), None);
        assert_eq!(split_shared("Sharedx/bob@x.test/A"), None);
        assert_eq!(split_shared("INBOX"), None);
    }

    #[test]
    fn flags_need_their_rights() {
        // RFC 4314 4, the COPY example: "rwis" keeps \Answered, $Forwarded and \Seen.
        let rwis = Rights::parse("rwis").unwrap();
        let flags: Vec<String> = ["\\Draft", "\\Deleted", "\\Answered", "$Forwarded", "\\Seen"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            permitted_flags(rwis, &flags),
            vec!["\\Draft", "\\Answered", "$Forwarded", "\\Seen"]
        );
        let rsti = Rights::parse("rsti").unwrap();
        assert_eq!(permitted_flags(rsti, &flags), vec!["\\Deleted", "\\Seen"]);
        assert!(!writable(Rights::parse("lr").unwrap()));
        assert!(writable(Rights::parse("lrs").unwrap()));
    }

    #[test]
    fn setacl_rights_must_be_ascii() {
        assert!(parse_mod_rights("lr\u{e9}".as_bytes()).is_err());
        assert!(parse_mod_rights(&[b'l', 0xff]).is_err());
    }
}
