//! Storage traits and data model of mailkeep.
//!
//! Implementation notes:
//! - Every backend implements [`Store`] (directory, mailboxes and messages, blobs, delivery
//!   log) and must pass [`conformance::run_all`]. Only the binary picks a backend.
//! - A message's content is a content-addressed blob (shared by every recipient of one
//!   transaction) plus a small per-recipient `prefix` (Return-Path, Delivered-To) kept with the
//!   message row; the message as IMAP serves it is `prefix ++ blob`.
//! - [`MailStore::deliver`] is atomic and durable when it returns: UIDs and MODSEQs are assigned
//!   in one transaction per batch and a change event is broadcast for each message afterwards.
//! - Address resolution (aliases, plus-addressing, catch-all) is backend independent and lives
//!   in [`directory`].
#![warn(missing_docs)]

use std::sync::Arc;

use async_trait::async_trait;
use mailkeep_types::{
    AccountId, Address, Domain, MailboxId, MailboxRole, ModSeq, Uid, UidValidity,
};
use serde::{Deserialize, Serialize};

pub mod conformance;
pub mod directory;
pub mod logtext;
pub mod password;

pub use mailkeep_types::acl::{effective_rights, AclEntry, Rights, ANYONE};
pub use mailkeep_types::message::{BodyStructure, Envelope, EnvelopeAddress, MessageCache};

/// Errors of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The thing already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// The request contradicts the stored state (e.g. a user in a domain that is not local).
    #[error("{0}")]
    Conflict(String),
    /// Storage failed (disk, database); the operation had no effect.
    #[error("storage error: {0}")]
    Backend(String),
    /// Too much work is queued (password checks in a login burst): try again shortly.
    #[error("busy: {0}")]
    Busy(String),
}

impl StoreError {
    /// True when the caller may retry later (server-side failure rather than a bad request).
    pub fn is_temporary(&self) -> bool {
        matches!(self, StoreError::Backend(_) | StoreError::Busy(_))
    }
}

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A hosted domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// The domain.
    pub name: Domain,
    /// Where mail to unknown local parts goes, if anywhere.
    pub catch_all: Option<Address>,
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The id.
    pub id: AccountId,
    /// The address, as created.
    pub address: Address,
    /// The argon2id PHC string.
    pub password_hash: String,
    /// Quota in bytes, 0 for none.
    pub quota: u64,
    /// Bytes used by stored messages.
    pub used: u64,
}

/// An app password: a generated password for one client, revocable on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPassword {
    /// What the user called it ("phone", "thunderbird").
    pub name: String,
    /// When it was made (unix seconds).
    pub created: i64,
    /// When it last logged in, if ever.
    pub last_used: Option<i64>,
}

/// An alias: one address delivering to one or more others, local or external.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The alias address.
    pub address: Address,
    /// Where it delivers.
    pub targets: Vec<Address>,
    /// Whether the local users it delivers to may send as it (submission's MAIL FROM and
    /// From: check).
    pub sendable: bool,
}

/// A mailbox (folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The id.
    pub id: MailboxId,
    /// The owner.
    pub account: AccountId,
    /// The full name, `/`-separated hierarchy.
    pub name: String,
    /// SPECIAL-USE role (RFC 6154).
    pub role: Option<MailboxRole>,
    /// UIDVALIDITY.
    pub uid_validity: UidValidity,
    /// The next UID to assign.
    pub uid_next: Uid,
    /// The highest MODSEQ of anything in the mailbox (RFC 7162).
    pub highest_modseq: ModSeq,
    /// Whether the user is subscribed (LSUB).
    pub subscribed: bool,
}

/// Stored message metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageMeta {
    /// The mailbox.
    pub mailbox: MailboxId,
    /// The UID.
    pub uid: Uid,
    /// The MODSEQ of its last change.
    pub modseq: ModSeq,
    /// System flags (`\Seen`...) and keywords.
    pub flags: Vec<String>,
    /// Internal date, seconds since the epoch (RFC 9051 2.3.3).
    pub internal_date: i64,
    /// RFC822.SIZE: `prefix` plus blob.
    pub size: u64,
    /// The content blob.
    pub blob: BlobId,
    /// Per-recipient header lines stored ahead of the blob.
    pub prefix: Vec<u8>,
    /// Parsed envelope and body structure, computed at ingest.
    pub cache: MessageCache,
    /// The queue id of the SMTP transaction that brought it, if any.
    pub queue_id: Option<String>,
}

/// The contents of several messages in one buffer, in UID order: a group of messages costs
/// one allocation, not one each (a batch FETCH spent a sixth of its CPU in the allocator).
#[derive(Debug, Default, Clone)]
pub struct Contents {
    data: Vec<u8>,
    /// Each message's UID and where its content starts and ends in `data`.
    spans: Vec<(Uid, usize, usize)>,
}

impl Contents {
    /// Room for `messages` messages of `bytes` octets in all.
    pub fn with_capacity(bytes: usize, messages: usize) -> Contents {
        Contents {
            data: Vec::with_capacity(bytes),
            spans: Vec::with_capacity(messages),
        }
    }

    /// Appends one message whose content `write` appends to the buffer; on an error the
    /// buffer is left as it was.
    pub fn push_with<E>(
        &mut self,
        uid: Uid,
        write: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let start = self.data.len();
        match write(&mut self.data) {
            Ok(()) => {
                self.spans.push((uid, start, self.data.len()));
                Ok(())
            }
            Err(e) => {
                self.data.truncate(start);
                Err(e)
            }
        }
    }

    /// Appends one message.
    pub fn push(&mut self, uid: Uid, content: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(content);
        self.spans.push((uid, start, self.data.len()));
    }

    /// How many messages.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The messages with their UIDs, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (Uid, &[u8])> + '_ {
        self.spans
            .iter()
            .map(|(uid, start, end)| (*uid, &self.data[*start..*end]))
    }
}

/// The id of a content-addressed blob (hex SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobId(pub String);

/// One message to store for one account.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The owner.
    pub account: AccountId,
    /// The mailbox to file into.
    pub target: Target,
    /// The content blob, already stored with [`BlobStore::put_blob`].
    pub blob: BlobId,
    /// Size of the blob.
    pub blob_size: u64,
    /// Per-recipient header lines prepended to the blob.
    pub prefix: Vec<u8>,
    /// The blob's header section (its first `cache.header_size` octets), kept beside the
    /// message so header searches need not read the content.
    pub headers: Vec<u8>,
    /// Flags to set.
    pub flags: Vec<String>,
    /// Internal date, seconds since the epoch.
    pub internal_date: i64,
    /// Parsed metadata.
    pub cache: MessageCache,
    /// The queue id, for the log.
    pub queue_id: Option<String>,
}

/// Which mailbox a new message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The account's mailbox with this role (INBOX for plain delivery).
    Role(MailboxRole),
    /// This mailbox of the account (IMAP APPEND).
    Mailbox(MailboxId),
}

/// What a session's view of a mailbox needs per message (no parsed structure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFlags {
    /// The UID.
    pub uid: Uid,
    /// The MODSEQ of its last change.
    pub modseq: ModSeq,
    /// System flags and keywords.
    pub flags: Vec<String>,
    /// Internal date, seconds since the epoch.
    pub internal_date: i64,
    /// RFC822.SIZE.
    pub size: u64,
}

/// Counts of a mailbox for IMAP STATUS (RFC 9051 6.3.11, RFC 8438 SIZE).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxCounts {
    /// Messages.
    pub messages: u64,
    /// Messages without `\Seen`.
    pub unseen: u64,
    /// Messages with `\Deleted`.
    pub deleted: u64,
    /// Total RFC822.SIZE.
    pub size: u64,
}

/// Where a message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The account.
    pub account: AccountId,
    /// The mailbox.
    pub mailbox: MailboxId,
    /// Its UID.
    pub uid: Uid,
    /// Its MODSEQ.
    pub modseq: ModSeq,
}

/// A typed change, broadcast to sessions (IMAP IDLE) after it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeEvent {
    /// A message was added to a mailbox.
    MessageAdded(Stored),
    /// A message's flags changed.
    FlagsChanged {
        /// The mailbox.
        mailbox: MailboxId,
        /// The message.
        uid: Uid,
        /// Its new MODSEQ.
        modseq: ModSeq,
    },
    /// A message was expunged.
    Expunged {
        /// The mailbox.
        mailbox: MailboxId,
        /// The message.
        uid: Uid,
        /// The MODSEQ of the expunge (RFC 7162 VANISHED).
        modseq: ModSeq,
    },
    /// An account's mailboxes were created, deleted or renamed.
    MailboxesChanged(AccountId),
}

/// A mailbox of another account with an access control list entry that applies to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMailbox {
    /// The mailbox.
    pub mailbox: Mailbox,
    /// Its owner's address.
    pub owner: Address,
    /// Its whole access control list.
    pub acl: Vec<AclEntry>,
}

/// How SETACL changes an entry (RFC 4314 3.1: `rights`, `+rights`, `-rights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclChange {
    /// These rights replace the entry's.
    Replace(Rights),
    /// These are added.
    Add(Rights),
    /// These are taken away.
    Remove(Rights),
}

/// How a flag update applies (IMAP STORE FLAGS / +FLAGS / -FLAGS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagMode {
    /// Replace the flags.
    Replace,
    /// Replace only the flags these rights allow changing ([`Rights::allows_flag`]); the
    /// others stay as they are (STORE FLAGS by a user with some flag rights, RFC 4314 4).
    ReplaceAllowed(Rights),
    /// Add these.
    Add,
    /// Remove these.
    Remove,
}

/// The result of a flag update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagUpdate {
    /// Messages whose flags changed: UID, new MODSEQ, new flags.
    pub changed: Vec<(Uid, ModSeq, Vec<String>)>,
    /// Messages left alone because they changed after UNCHANGEDSINCE (RFC 7162 3.1.3).
    pub modified: Vec<Uid>,
}

/// One delivery-log event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LogEvent {
    /// When, in microseconds since the epoch.
    pub ts: i64,
    /// The SMTP session id (or another origin id, e.g. `cli-...`).
    pub session: String,
    /// The transaction's queue id.
    pub queue_id: Option<String>,
    /// The stable event name (`smtp.connect`, `smtp.rcpt`, `delivery.stored`...).
    pub kind: String,
    /// The client IP.
    pub ip: Option<String>,
    /// The envelope sender.
    pub sender: Option<String>,
    /// The recipient this event concerns.
    pub recipient: Option<String>,
    /// The Message-ID.
    pub message_id: Option<String>,
    /// `accepted`, `rejected`, `tempfail`, `delivered`, `failed`.
    pub outcome: Option<String>,
    /// The SMTP reply given.
    pub reply: Option<String>,
    /// Anything else, as JSON.
    pub detail: serde_json::Value,
}

/// What [`LogStore::log_search`] looks for; empty fields match anything.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Envelope sender contains this (case-insensitive).
    pub sender: Option<String>,
    /// A recipient contains this.
    pub recipient: Option<String>,
    /// Message-ID equals this (angle brackets optional).
    pub message_id: Option<String>,
    /// Client IP equals this.
    pub ip: Option<String>,
    /// Queue id equals this.
    pub queue_id: Option<String>,
    /// Events at or after, microseconds.
    pub since: Option<i64>,
    /// Events before, microseconds.
    pub until: Option<i64>,
    /// Outcome equals this.
    pub outcome: Option<String>,
    /// The event kind starts with this (`queue.`, `smtp.auth`).
    pub kind: Option<String>,
    /// At most this many sessions.
    pub limit: usize,
}

/// Domains, users and aliases.
#[async_trait]
pub trait DirectoryStore: Send + Sync {
    /// Adds a domain.
    async fn domain_add(&self, domain: &Domain) -> Result<()>;
    /// Removes a domain; refused while users or aliases remain in it.
    async fn domain_remove(&self, domain: &Domain) -> Result<()>;
    /// The domain, if hosted.
    async fn domain_get(&self, domain: &Domain) -> Result<Option<DomainInfo>>;
    /// All hosted domains.
    async fn domains(&self) -> Result<Vec<DomainInfo>>;
    /// Sets or clears a domain's catch-all target.
    async fn domain_set_catch_all(&self, domain: &Domain, target: Option<&Address>) -> Result<()>;
    /// Adds a user with its default mailboxes; the domain must be hosted.
    async fn user_add(
        &self,
        address: &Address,
        password_hash: &str,
        quota: u64,
    ) -> Result<AccountId>;
    /// Looks a user up by [`Address::key`].
    async fn user_get(&self, key: &str) -> Result<Option<User>>;
    /// Looks a user up by account id.
    async fn user_by_id(&self, account: AccountId) -> Result<Option<User>>;
    /// Users, optionally of one domain.
    async fn users(&self, domain: Option<&Domain>) -> Result<Vec<User>>;
    /// Removes a user and their mailboxes.
    async fn user_remove(&self, address: &Address) -> Result<()>;
    /// Replaces a user's password hash.
    async fn user_set_password(&self, address: &Address, password_hash: &str) -> Result<()>;
    /// Sets a user's quota in bytes (0 for none).
    async fn user_set_quota(&self, address: &Address, quota: u64) -> Result<()>;
    /// Adds an app password to a user: `digest` is [`password::app_password_digest`] of it.
    /// A name is used once per user ([`StoreError::Exists`]).
    async fn app_password_add(
        &self,
        address: &Address,
        name: &str,
        digest: &str,
        now: i64,
    ) -> Result<()>;
    /// A user's app passwords (without their digests).
    async fn app_passwords(&self, address: &Address) -> Result<Vec<AppPassword>>;
    /// Revokes one of a user's app passwords.
    async fn app_password_remove(&self, address: &Address, name: &str) -> Result<()>;
    /// The name of the user's app password with this digest, if one has it; records the use.
    async fn app_password_check(
        &self,
        account: AccountId,
        digest: &str,
        now: i64,
    ) -> Result<Option<String>>;
    /// Adds an alias; its domain must be hosted and it must not shadow a user.
    async fn alias_add(&self, address: &Address, targets: &[Address]) -> Result<()>;
    /// Looks an alias up by [`Address::key`].
    async fn alias_get(&self, key: &str) -> Result<Option<Alias>>;
    /// Lets the users an alias delivers to send as it, or stops them.
    async fn alias_set_sendable(&self, address: &Address, sendable: bool) -> Result<()>;
    /// Aliases, optionally of one domain.
    async fn aliases(&self, domain: Option<&Domain>) -> Result<Vec<Alias>>;
    /// Removes an alias.
    async fn alias_remove(&self, address: &Address) -> Result<()>;
}

/// Mailboxes and messages.
#[async_trait]
pub trait MailStore: Send + Sync {
    /// An account's mailboxes.
    async fn mailboxes(&self, account: AccountId) -> Result<Vec<Mailbox>>;
    /// Stores messages durably in one transaction; per message, where it went or why not.
    async fn deliver(&self, messages: Vec<NewMessage>) -> Result<Vec<Result<Stored>>>;
    /// A mailbox's messages in UID order.
    async fn messages(&self, mailbox: MailboxId) -> Result<Vec<MessageMeta>>;
    /// The messages of a mailbox with these UIDs (sorted ascending), in UID order; unknown
    /// UIDs are left out.
    async fn messages_by_uid(&self, mailbox: MailboxId, uids: &[Uid]) -> Result<Vec<MessageMeta>>;
    /// The envelopes of the messages with these UIDs (sorted ascending), in UID order: FETCH
    /// ENVELOPE without the body structure decodes only this part of the cache.
    async fn message_envelopes(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> Result<Vec<(Uid, Envelope)>>;
    /// Message counts of a mailbox.
    async fn mailbox_counts(&self, mailbox: MailboxId) -> Result<MailboxCounts>;
    /// A mailbox by id, or None when it no longer exists.
    async fn mailbox_get(&self, mailbox: MailboxId) -> Result<Option<Mailbox>>;
    /// UID, MODSEQ and flags of the messages changed (or added) after `since`, in UID order;
    /// `since` 0 gives every message. This is what a session's view is built and refreshed
    /// from (RFC 7162 CHANGEDSINCE).
    async fn changed_since(&self, mailbox: MailboxId, since: ModSeq) -> Result<Vec<MessageFlags>>;
    /// The whole message as IMAP serves it (prefix then blob).
    async fn message_content(&self, mailbox: MailboxId, uid: Uid) -> Result<Option<Vec<u8>>>;
    /// The whole messages with these UIDs (sorted ascending), in UID order; missing ones
    /// are left out. One round trip for many messages (FETCH, SEARCH, SORT). `bytes` is
    /// what the caller expects them to take in all (the sum of their sizes), so the buffer
    /// is allocated once.
    async fn message_contents(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        bytes: u64,
    ) -> Result<Contents>;
    /// The header sections (prefix then the blob's header) of these messages (sorted
    /// ascending), in UID order, without reading their content.
    async fn message_headers(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> Result<Vec<(Uid, Vec<u8>)>>;
    /// Subscribes to change events.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ChangeEvent>;
    /// Creates a mailbox and any missing parents (`/` separates levels); a role may be given
    /// once per account (RFC 6154 CREATE-SPECIAL-USE). Each new mailbox starts with its
    /// parent's access control list (RFC 4314 4).
    async fn mailbox_create(
        &self,
        account: AccountId,
        name: &str,
        role: Option<MailboxRole>,
    ) -> Result<Mailbox>;
    /// Deletes a mailbox and its messages; INBOX and mailboxes with children are refused.
    async fn mailbox_delete(&self, account: AccountId, name: &str) -> Result<()>;
    /// Renames a mailbox and its children, keeping UIDs and UIDVALIDITY. Renaming INBOX moves
    /// its messages to a new mailbox and leaves INBOX empty (RFC 9051 6.3.6).
    async fn mailbox_rename(&self, account: AccountId, from: &str, to: &str) -> Result<()>;
    /// Subscribes or unsubscribes a name (which need not exist, RFC 9051 6.3.7).
    async fn subscription_set(
        &self,
        account: AccountId,
        name: &str,
        subscribed: bool,
    ) -> Result<()>;
    /// Subscribed names.
    async fn subscriptions(&self, account: AccountId) -> Result<Vec<String>>;
    /// Changes flags of the given messages with one new MODSEQ; `unchanged_since` skips
    /// messages changed after it (RFC 7162 3.1.3). Unknown UIDs are ignored.
    async fn flags_update(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        mode: FlagMode,
        flags: &[String],
        unchanged_since: Option<ModSeq>,
    ) -> Result<FlagUpdate>;
    /// Expunges messages; returns the UIDs removed, in order.
    async fn expunge(&self, mailbox: MailboxId, uids: &[Uid]) -> Result<Vec<Uid>>;
    /// UIDs expunged with a MODSEQ above `since` (RFC 7162 VANISHED).
    async fn expunged_since(&self, mailbox: MailboxId, since: ModSeq) -> Result<Vec<Uid>>;
    /// Copies (or moves) messages to another mailbox, of the same account or another one
    /// (shared mailboxes); returns (source UID, new UID) pairs (RFC 4315 COPYUID). Refused as
    /// a whole when it would take the destination's owner over quota. Moving between accounts
    /// moves the bytes used from one to the other. The copies keep only the flags `rights`
    /// allow setting ([`Rights::allows_flag`], RFC 4314 4; [`Rights::ALL`] keeps them all),
    /// decided in the same transaction from the stored flags.
    async fn copy(
        &self,
        from: MailboxId,
        uids: &[Uid],
        to: MailboxId,
        remove_source: bool,
        rights: Rights,
    ) -> Result<Vec<(Uid, Uid)>>;
    /// A mailbox's access control list (RFC 4314), in identifier order. The owner's own
    /// rights are implicit and not listed.
    async fn acl_get(&self, mailbox: MailboxId) -> Result<Vec<AclEntry>>;
    /// Changes the rights of one identifier (an address key or [`ANYONE`], with a leading `-`
    /// for negative rights) on a mailbox in one transaction; an entry left with no rights is
    /// removed. Returns the rights it now has.
    async fn acl_set(
        &self,
        mailbox: MailboxId,
        identifier: &str,
        change: AclChange,
    ) -> Result<Rights>;
    /// Mailboxes of other accounts whose ACL has a positive entry for `who` (an address key)
    /// or for [`ANYONE`], with their owners and whole ACLs, ordered by owner then name.
    async fn shared_mailboxes(&self, who: &str) -> Result<Vec<SharedMailbox>>;
}

/// Checks a mailbox name for the store: `/`-separated, no empty level, no control characters,
/// at most 255 characters per level and 1,024 in all.
pub fn check_mailbox_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(StoreError::Conflict(format!(
            "mailbox name {name:?}: {why}"
        )))
    };
    if name.is_empty() || name.chars().count() > 1024 {
        return bad("empty or too long");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("control characters are not allowed");
    }
    for level in name.split('/') {
        if level.is_empty() {
            return bad("empty level (leading, trailing or double /)");
        }
        if level.chars().count() > 255 {
            return bad("a level is longer than 255 characters");
        }
    }
    Ok(())
}

/// Content-addressed blobs.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores bytes durably (fsync) and returns their id; storing the same bytes twice is cheap.
    async fn put_blob(&self, data: &[u8]) -> Result<BlobId>;
    /// Reads a blob.
    async fn get_blob(&self, id: &BlobId) -> Result<Option<Vec<u8>>>;
    /// Deletes blobs no message refers to and that were last stored more than `min_age`
    /// ago (younger ones may belong to a delivery still in progress); returns how many.
    async fn gc_blobs(&self, min_age: std::time::Duration) -> Result<u64>;
}

/// A message for the outbound queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewQueued {
    /// Its queue id (the SMTP transaction's).
    pub id: String,
    /// The envelope sender (empty: the null sender of a bounce).
    pub sender: String,
    /// The content, already stored with [`BlobStore::put_blob`].
    pub blob: BlobId,
    /// Its size in bytes.
    pub size: u64,
    /// The recipients, each with its DSN parameters.
    pub recipients: Vec<QueueRecipient>,
    /// DSN ENVID (RFC 3461 4.4).
    pub envid: Option<String>,
    /// DSN RET: `FULL` or `HDRS` (RFC 3461 4.3).
    pub ret: Option<String>,
    /// Whether the content needs SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// REQUIRETLS (RFC 8689): only over authenticated TLS to servers that carry it on.
    pub requiretls: bool,
    /// The account that submitted it (None: forwarded mail, bounces, reports). Queued while
    /// the account is on hold, it is held too.
    pub account: Option<AccountId>,
    /// Queue it held (not sent until released), e.g. outbound mail that scored as spam.
    pub held: bool,
}

/// One recipient of a queued message, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecipient {
    /// The address.
    pub address: String,
    /// DSN NOTIFY (RFC 3461 4.1), comma-separated.
    pub notify: Option<String>,
    /// DSN ORCPT (RFC 3461 4.2).
    pub orcpt: Option<String>,
}

/// Where a queued recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptStatus {
    /// Not delivered yet; tried again at `next_attempt`.
    Pending,
    /// Accepted by the remote server.
    Sent,
    /// Refused for good, or given up on.
    Failed,
}

/// A queued recipient with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRcpt {
    /// As given at submission.
    pub recipient: QueueRecipient,
    /// Its domain (ASCII), what deliveries are grouped by.
    pub domain: String,
    /// Where it stands.
    pub status: RcptStatus,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When it is due next (unix seconds).
    pub next_attempt: i64,
    /// The last reply or error.
    pub last_reply: Option<String>,
}

/// A message in the outbound queue, with its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Queue id.
    pub id: String,
    /// Envelope sender.
    pub sender: String,
    /// Content.
    pub blob: BlobId,
    /// Size in bytes.
    pub size: u64,
    /// When it was queued (unix seconds).
    pub created: i64,
    /// Held by an admin: not tried until released.
    pub held: bool,
    /// DSN ENVID.
    pub envid: Option<String>,
    /// DSN RET.
    pub ret: Option<String>,
    /// Needs SMTPUTF8.
    pub smtputf8: bool,
    /// Whether a delay warning was sent already.
    pub warned: bool,
    /// REQUIRETLS (RFC 8689).
    pub requiretls: bool,
    /// The account that submitted it (None: forwarded mail, bounces, reports).
    pub account: Option<AccountId>,
    /// Its recipients (all of them, or only the due ones from [`QueueStore::queue_due`]).
    pub recipients: Vec<QueuedRcpt>,
}

/// The outcome of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Accepted by the remote server, with its reply.
    Sent(String),
    /// Try again at the given time (unix seconds), after this reply or error.
    Retry(String, i64),
    /// Refused for good (or the queue lifetime is over), with the reply or reason.
    Failed(String),
}

/// A domain's MTA-STS policy as fetched (RFC 8461 5.1), kept until `expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsCached {
    /// The policy domain (lower case).
    pub domain: String,
    /// The `id` of the DNS record it was fetched for.
    pub id: String,
    /// The policy text as served.
    pub policy: String,
    /// When it was fetched (unix seconds).
    pub fetched: i64,
    /// When it expires: fetched + its max_age.
    pub expires: i64,
}

/// The outbound queue: messages waiting to be sent to other servers. Durable: a message is
/// in the queue once [`QueueStore::queue_insert`] returned.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Queues a message (its blob gains a reference until the message leaves the queue).
    async fn queue_insert(&self, message: NewQueued, now: i64) -> Result<()>;
    /// Messages not held with recipients due at `now` (only those recipients), oldest
    /// first, at most `limit`.
    async fn queue_due(&self, now: i64, limit: usize) -> Result<Vec<QueuedMessage>>;
    /// Ids of messages not held with a recipient due at `now`, soonest due first, at most
    /// `limit` (cheap: what the sender asks every time a delivery ends).
    async fn queue_due_ids(&self, now: i64, limit: usize) -> Result<Vec<String>>;
    /// One message with all its recipients.
    async fn queue_get(&self, id: &str) -> Result<Option<QueuedMessage>>;
    /// Every queued message with all its recipients, oldest first.
    async fn queue_list(&self) -> Result<Vec<QueuedMessage>>;
    /// Records attempts; a message with no pending recipient left leaves the queue.
    /// Returns whether it left.
    async fn queue_record(&self, id: &str, results: &[(String, Attempt)]) -> Result<bool>;
    /// Holds or releases a message.
    async fn queue_set_held(&self, id: &str, held: bool) -> Result<()>;
    /// Holds or releases every queued message; returns how many changed.
    async fn queue_set_held_all(&self, held: bool) -> Result<u64>;
    /// Makes every pending recipient of every message due now; returns how many messages.
    async fn queue_retry_all(&self, now: i64) -> Result<u64>;
    /// Makes every pending recipient of a message due now.
    async fn queue_retry_now(&self, id: &str, now: i64) -> Result<()>;
    /// Notes that the delay warning of a message was sent.
    async fn queue_set_warned(&self, id: &str) -> Result<()>;
    /// Removes a message from the queue without sending it.
    async fn queue_delete(&self, id: &str) -> Result<()>;
    /// The cached MTA-STS policy of a domain, expired or not.
    async fn sts_get(&self, domain: &str) -> Result<Option<StsCached>>;
    /// Caches a domain's MTA-STS policy, replacing the one before.
    async fn sts_put(&self, policy: StsCached) -> Result<()>;
}

/// The delivery log.
#[async_trait]
pub trait LogStore: Send + Sync {
    /// Appends events and waits until they are stored.
    async fn log_append(&self, events: Vec<LogEvent>) -> Result<()>;
    /// Queues events to be appended without waiting, in submission order; a failure is logged
    /// by the backend. Sessions use this so that logging never delays a reply.
    fn log_submit(&self, events: Vec<LogEvent>);
    /// Waits until every event submitted before this call is stored (used at shutdown).
    async fn log_flush(&self) -> Result<()>;
    /// Every event of each session that has an event matching the filter, in time order,
    /// newest sessions first (at most `filter.limit` sessions).
    async fn log_search(&self, filter: &LogFilter) -> Result<Vec<LogEvent>>;
    /// Deletes events older than `before` (microseconds); returns how many.
    async fn log_expire(&self, before: i64) -> Result<u64>;
}

/// A complete storage backend.
pub trait Store:
    DirectoryStore
    + MailStore
    + BlobStore
    + LogStore
    + QueueStore
    + ReportStore
    + BanStore
    + UsageStore
    + SpamStore
    + GreylistStore
    + SieveStore
{
}

impl<T> Store for T where
    T: DirectoryStore
        + MailStore
        + BlobStore
        + LogStore
        + QueueStore
        + ReportStore
        + BanStore
        + UsageStore
        + SpamStore
        + GreylistStore
        + SieveStore
{
}

/// Users' Sieve scripts (RFC 5228), by name; at most one active per account.
#[async_trait]
pub trait SieveStore: Send + Sync {
    /// Stores (or replaces) a script.
    async fn sieve_put(&self, account: AccountId, name: &str, script: &str) -> Result<()>;
    /// A script's text.
    async fn sieve_get(&self, account: AccountId, name: &str) -> Result<Option<String>>;
    /// The account's scripts, by name, with whether each is the active one.
    async fn sieve_list(&self, account: AccountId) -> Result<Vec<(String, bool)>>;
    /// Makes `name` the active script (None: no script active); NotFound when it does not
    /// exist.
    async fn sieve_activate(&self, account: AccountId, name: Option<&str>) -> Result<()>;
    /// Deletes a script; the active one is refused (Conflict), RFC 5804 2.10.
    async fn sieve_delete(&self, account: AccountId, name: &str) -> Result<()>;
    /// The active script: (name, text).
    async fn sieve_active(&self, account: AccountId) -> Result<Option<(String, String)>>;
    /// Whether `id` (a vacation reply's sender and handle, a duplicate test's id) was
    /// recorded for the account and has not expired at `now`; when not, records it until
    /// `now + expiry`. One transaction.
    async fn sieve_seen(&self, account: AccountId, id: &str, now: i64, expiry: i64)
        -> Result<bool>;
    /// Forgets ids [`SieveStore::sieve_seen`] recorded for a delivery that then failed (the
    /// sender retries, and the retry must not count as seen).
    async fn sieve_unsee(&self, account: AccountId, ids: &[String]) -> Result<()>;
}

/// One greylisting record (RFC 6647): of a triplet, a client network or a sender domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GreyEntry {
    /// When it was first seen (Unix seconds; a triplet that waited too long starts over).
    pub first: i64,
    /// When it was last seen.
    pub last: i64,
    /// How many times it passed (0: still waiting).
    pub passed: u32,
}

/// Greylisting records, by key (the MX's policy decides what keys mean).
#[async_trait]
pub trait GreylistStore: Send + Sync {
    /// The record of `key`, if any.
    async fn grey_get(&self, key: &str) -> Result<Option<GreyEntry>>;
    /// Writes the record of `key`.
    async fn grey_put(&self, key: &str, entry: GreyEntry) -> Result<()>;
    /// Removes records that passed and were last seen before `passed_before`, and records
    /// still waiting that were first seen before `waiting_before`; returns how many.
    async fn grey_expire(&self, passed_before: i64, waiting_before: i64) -> Result<u64>;
}

/// The spam classifier's learnt counts (model 0 is the server's).
#[async_trait]
pub trait SpamStore: Send + Sync {
    /// Adds learnt counts to a model: per token (ham, spam) message counts, and the number
    /// of ham and spam messages they came from.
    async fn spam_learn(
        &self,
        model: i64,
        tokens: Vec<(String, u32, u32)>,
        ham: u32,
        spam: u32,
    ) -> Result<()>;
    /// A model's message totals (ham, spam) and the counts of those of `tokens` it knows.
    async fn spam_counts(
        &self,
        model: i64,
        tokens: &[String],
    ) -> Result<((u32, u32), Vec<(String, u32, u32)>)>;
    /// Learns one message (`key`: its blob id) with its `tokens` for `model` as spam or
    /// ham, once, in one transaction: a message learnt the other way before is taken off
    /// that side first; learning it again the same way changes nothing. Returns whether the
    /// model changed.
    async fn spam_train(
        &self,
        model: i64,
        key: &str,
        tokens: &[String],
        is_spam: bool,
    ) -> Result<bool>;
    /// Adds (`Some`) or removes (`None`) an entry of an account's sender lists: an address
    /// key or a domain (`@example.com`). Adding an entry already on the other list moves it.
    async fn sender_list_set(
        &self,
        account: AccountId,
        entry: &str,
        list: Option<SenderList>,
    ) -> Result<()>;
    /// An account's sender list entries, in entry order.
    async fn sender_lists(&self, account: AccountId) -> Result<Vec<(String, SenderList)>>;
}

/// Which of a user's sender lists an entry is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SenderList {
    /// Mail from it is never junk for the user (when it is authenticated).
    Allow,
    /// Mail from it always goes to the user's Junk.
    Block,
}

impl SenderList {
    /// `allow` or `block`.
    pub fn as_str(self) -> &'static str {
        match self {
            SenderList::Allow => "allow",
            SenderList::Block => "block",
        }
    }
}

/// What an account sent to other domains over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Messages.
    pub messages: u32,
    /// Recipients, all told.
    pub recipients: u32,
    /// Recipients written to for the first time.
    pub new_recipients: u32,
}

/// What accounts send to other domains, for the outbound limits.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Records one message from `account` to `recipients` (address keys) at `ts`; returns
    /// how many of them it never wrote to before.
    async fn usage_record(&self, account: AccountId, ts: i64, recipients: &[String])
        -> Result<u32>;
    /// What `account` sent since `since`.
    async fn usage_since(&self, account: AccountId, since: i64) -> Result<Usage>;
    /// Which of `recipients` (address keys) `account` wrote to before, in order.
    async fn recipients_known(
        &self,
        account: AccountId,
        recipients: &[String],
    ) -> Result<Vec<bool>>;
    /// Forgets message rows older than `before` (the recipients stay known); returns how many.
    async fn usage_expire(&self, before: i64) -> Result<u64>;
    /// Puts `account`'s outbound mail on hold (its queued messages, and those it queues until
    /// released); returns how many queued messages were held.
    async fn account_hold(&self, account: AccountId, reason: &str, now: i64) -> Result<u64>;
    /// Ends the hold and releases the account's held messages; None when it was not on hold.
    async fn account_release(&self, account: AccountId, now: i64) -> Result<Option<u64>>;
    /// The account's hold, current (`released` None) or the last one.
    async fn account_hold_state(&self, account: AccountId) -> Result<Option<AccountHold>>;
    /// Records something said about the account's outbound mail at `ts`.
    async fn signal_record(&self, account: AccountId, ts: i64, signal: Signal) -> Result<()>;
    /// How many of each signal the account got since `since`: (bounces, complaints).
    async fn signals_since(&self, account: AccountId, since: i64) -> Result<(u32, u32)>;
    /// Records a login of `account` from `network` at `ts`; returns whether the account
    /// never logged in from it before.
    async fn login_record(&self, account: AccountId, network: &str, ts: i64) -> Result<bool>;
    /// How many networks the account logged in from for the first time since `since`.
    async fn new_login_networks_since(&self, account: AccountId, since: i64) -> Result<u32>;
    /// Forgets signals older than `signals_before` and login networks last used before
    /// `logins_before`; returns how many rows went.
    async fn signals_expire(&self, signals_before: i64, logins_before: i64) -> Result<u64>;
}

/// Something said about an account's outbound mail, for compromise detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A recipient's mail failed for good (a bounce).
    Bounce,
    /// A recipient complained (a feedback report, RFC 5965).
    Complaint,
}

impl Signal {
    /// `bounce` or `complaint`.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Bounce => "bounce",
            Signal::Complaint => "complaint",
        }
    }
}

/// An account whose outbound mail was put on hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountHold {
    /// Why.
    pub reason: String,
    /// Since when (unix seconds).
    pub since: i64,
    /// When it was released; None while it holds.
    pub released: Option<i64>,
}

/// A banned network, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRow {
    /// The network (`192.0.2.7`, `2001:db8::/64`).
    pub network: String,
    /// Why.
    pub reason: String,
    /// Since when (unix seconds).
    pub created: i64,
    /// Until when; None: until removed.
    pub expires: Option<i64>,
}

/// Bans that outlive restarts.
#[async_trait]
pub trait BanStore: Send + Sync {
    /// Bans a network (replacing an earlier ban of the same network).
    async fn ban_put(&self, ban: BanRow) -> Result<()>;
    /// Lifts a ban; false when there was none.
    async fn ban_remove(&self, network: &str) -> Result<bool>;
    /// The bans in force at `now`, oldest first.
    async fn bans(&self, now: i64) -> Result<Vec<BanRow>>;
    /// Forgets bans that ended before `now`; returns how many.
    async fn bans_expire(&self, now: i64) -> Result<u64>;
}

/// One message's part in a report we will send (DMARC aggregate, TLS-RPT), kept until the
/// report goes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportEvent {
    /// Its id.
    pub id: i64,
    /// `dmarc` or `tlsrpt`.
    pub kind: String,
    /// The domain the report is about.
    pub domain: String,
    /// When (unix seconds).
    pub ts: i64,
    /// What the report needs, as JSON.
    pub data: String,
}

/// A report someone sent us about one of our domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedReport {
    /// `dmarc` or `tlsrpt`.
    pub kind: String,
    /// Our domain it is about.
    pub domain: String,
    /// Who sent it.
    pub org: String,
    /// Their id for it.
    pub report_id: String,
    /// The period covered (unix seconds).
    pub begin: i64,
    /// End of the period.
    pub end: i64,
    /// When we got it.
    pub received: i64,
    /// The report, as JSON.
    pub data: String,
}

/// Reports: what we will send, and what others sent us.
#[async_trait]
pub trait ReportStore: Send + Sync {
    /// Keeps one message's part of a future report.
    async fn report_event_add(&self, kind: &str, domain: &str, ts: i64, data: &str) -> Result<()>;
    /// Everything of `kind` kept up to `until` (inclusive), oldest first.
    async fn report_events(&self, kind: &str, until: i64) -> Result<Vec<ReportEvent>>;
    /// Forgets what a sent report covered; returns how many.
    async fn report_events_delete(&self, kind: &str, ids: &[i64]) -> Result<u64>;
    /// Keeps a report someone sent; the same (kind, org, report_id) again is ignored.
    async fn received_report_add(&self, report: ReceivedReport) -> Result<bool>;
    /// Reports received about `domain` (or all) covering time since `since`, newest first.
    async fn received_reports(
        &self,
        kind: &str,
        domain: Option<&str>,
        since: i64,
    ) -> Result<Vec<ReceivedReport>>;
}

/// A shared handle to a backend.
pub type SharedStore = Arc<dyn Store>;
