//! Client commands (RFC 9051 6, and the extensions the server offers), parsed from a framed
//! command.
//!
//! Implementation notes:
//! - Parsing is separate from state: any command parses in any state; the session decides
//!   whether it is allowed now (BAD or NO per RFC 9051 6).
//! - Mailbox names stay raw bytes here: whether they are UTF-8 (IMAP4rev2, RFC 9051 5.1) or
//!   modified UTF-7 (IMAP4rev1) is a property of the session; see [`mailbox_name`].
//! - Selected-state commands with a grammar of their own (SEARCH, FETCH, STORE, COPY, MOVE,
//!   SORT, THREAD) are parsed in [`crate::selected`]. Not parsed yet: ACL (RFC 4314), NOTIFY
//!   (RFC 5465), SETQUOTA.

use crate::cursor::{Cursor, Next, SequenceSet, SyntaxError};
use crate::frame::Part;
use crate::mutf7;
use crate::selected::{
    self, FetchItem, FetchModifiers, SearchProgram, SearchReturn, SortKey, Store, ThreadAlgorithm,
};

fn err<T>(msg: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError(msg.into()))
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The tag.
    pub tag: String,
    /// What it asks.
    pub body: CommandBody,
}

/// SELECT/EXAMINE parameters (RFC 7162).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectParams {
    /// `(CONDSTORE)`.
    pub condstore: bool,
    /// `(QRESYNC (uidvalidity modseq [known-uids [seq-match]]))`.
    pub qresync: Option<QresyncParams>,
}

/// QRESYNC parameters of SELECT (RFC 7162 3.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QresyncParams {
    /// The UIDVALIDITY the client knows.
    pub uid_validity: u32,
    /// The MODSEQ it last saw.
    pub modseq: u64,
    /// UIDs it knows.
    pub known_uids: Option<SequenceSet>,
    /// Sequence numbers and the matching UIDs.
    pub seq_match: Option<(SequenceSet, SequenceSet)>,
}

/// LIST return options (RFC 5258, RFC 5819, RFC 6154).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListReturn {
    /// `SUBSCRIBED`.
    pub subscribed: bool,
    /// `CHILDREN`.
    pub children: bool,
    /// `SPECIAL-USE`.
    pub special_use: bool,
    /// `STATUS (...)` items (LIST-STATUS).
    pub status: Option<Vec<StatusItem>>,
}

/// STATUS items (RFC 9051 6.3.11, RFC 7162, RFC 8438, RFC 7889).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    /// MESSAGES.
    Messages,
    /// UIDNEXT.
    UidNext,
    /// UIDVALIDITY.
    UidValidity,
    /// UNSEEN.
    Unseen,
    /// DELETED.
    Deleted,
    /// SIZE (RFC 8438).
    Size,
    /// RECENT (IMAP4rev1 only).
    Recent,
    /// HIGHESTMODSEQ (RFC 7162).
    HighestModSeq,
    /// APPENDLIMIT (RFC 7889).
    AppendLimit,
}

/// One message of an APPEND (MULTIAPPEND, RFC 3502, allows several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendMessage {
    /// Flags to set.
    pub flags: Vec<String>,
    /// The internal date as written (`"dd-Mon-yyyy hh:mm:ss +zzzz"`).
    pub date: Option<String>,
    /// The message.
    pub data: Vec<u8>,
    /// Sent as `~{n}` (BINARY, RFC 3516).
    pub binary: bool,
}

/// Which mailboxes a NOTIFY event group watches (RFC 5465 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyFilter {
    /// The selected mailbox.
    Selected,
    /// The selected mailbox, expunges reported only when allowed (SELECTED-DELAYED).
    SelectedDelayed,
    /// Mailboxes that receive new mail (INBOXES).
    Inboxes,
    /// Every mailbox of the user (PERSONAL).
    Personal,
    /// Subscribed mailboxes.
    Subscribed,
    /// These mailboxes and everything below them (raw names).
    Subtree(Vec<Vec<u8>>),
    /// Exactly these mailboxes (raw names).
    Mailboxes(Vec<Vec<u8>>),
}

/// A NOTIFY event (RFC 5465 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyEvent {
    /// MessageNew, with the FETCH items to send for new messages of the selected mailbox.
    MessageNew(Vec<FetchItem>),
    /// MessageExpunge.
    MessageExpunge,
    /// FlagChange.
    FlagChange,
    /// MailboxName (created, deleted, renamed).
    MailboxName,
    /// SubscriptionChange.
    SubscriptionChange,
    /// An event this server does not offer (AnnotationChange, metadata events).
    Unsupported(String),
}

/// One `(filter events)` group of NOTIFY SET; no events means NONE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyGroup {
    /// Which mailboxes.
    pub filter: NotifyFilter,
    /// Which events.
    pub events: Vec<NotifyEvent>,
}

/// NOTIFY SET: the groups, and whether STATUS is wanted at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySet {
    /// `(STATUS)`.
    pub status: bool,
    /// The event groups.
    pub groups: Vec<NotifyGroup>,
}

/// What a command asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandBody {
    /// CAPABILITY.
    Capability,
    /// NOOP.
    Noop,
    /// LOGOUT.
    Logout,
    /// STARTTLS.
    StartTls,
    /// AUTHENTICATE mechanism [initial-response] (SASL-IR, RFC 4959: `=` is empty).
    Authenticate {
        /// The mechanism, upper case.
        mechanism: String,
        /// The base64 initial response, if given.
        initial: Option<String>,
    },
    /// LOGIN user password.
    Login {
        /// User name.
        user: Vec<u8>,
        /// Password.
        password: Vec<u8>,
    },
    /// ENABLE capabilities (RFC 5161).
    Enable(Vec<String>),
    /// ID (RFC 2971): NIL or field/value pairs.
    Id(IdParams),
    /// UNAUTHENTICATE (RFC 8437).
    Unauthenticate,
    /// COMPRESS mechanism (RFC 4978).
    Compress(String),
    /// SELECT or EXAMINE.
    Select {
        /// Raw mailbox name.
        mailbox: Vec<u8>,
        /// EXAMINE.
        read_only: bool,
        /// Parameters.
        params: SelectParams,
    },
    /// CREATE name [(USE (attrs))] (RFC 6154 3).
    Create {
        /// Raw mailbox name.
        mailbox: Vec<u8>,
        /// Special-use attributes asked for (`\Sent`...).
        special_use: Vec<String>,
    },
    /// DELETE.
    Delete(Vec<u8>),
    /// RENAME.
    Rename {
        /// From.
        from: Vec<u8>,
        /// To.
        to: Vec<u8>,
    },
    /// SUBSCRIBE.
    Subscribe(Vec<u8>),
    /// UNSUBSCRIBE.
    Unsubscribe(Vec<u8>),
    /// LIST, basic or extended (RFC 5258).
    List {
        /// Selection options, upper case (`SUBSCRIBED`, `REMOTE`, `RECURSIVEMATCH`, `SPECIAL-USE`).
        selection: Vec<String>,
        /// Reference name.
        reference: Vec<u8>,
        /// One or more patterns.
        patterns: Vec<Vec<u8>>,
        /// Return options.
        returns: ListReturn,
    },
    /// LSUB (IMAP4rev1).
    Lsub {
        /// Reference name.
        reference: Vec<u8>,
        /// Pattern.
        pattern: Vec<u8>,
    },
    /// NAMESPACE (RFC 2342).
    Namespace,
    /// STATUS.
    Status {
        /// Raw mailbox name.
        mailbox: Vec<u8>,
        /// Items.
        items: Vec<StatusItem>,
    },
    /// APPEND.
    Append {
        /// Raw mailbox name.
        mailbox: Vec<u8>,
        /// Messages.
        messages: Vec<AppendMessage>,
    },
    /// IDLE (RFC 2177).
    Idle,
    /// NOTIFY NONE (None) or NOTIFY SET (RFC 5465).
    Notify(Option<NotifySet>),
    /// CHECK (IMAP4rev1).
    Check,
    /// CLOSE.
    Close,
    /// UNSELECT (RFC 3691).
    Unselect,
    /// EXPUNGE, or UID EXPUNGE set (UIDPLUS).
    Expunge {
        /// `UID EXPUNGE` set.
        uids: Option<SequenceSet>,
    },
    /// GETQUOTA root (RFC 9208).
    GetQuota(Vec<u8>),
    /// GETQUOTAROOT mailbox.
    GetQuotaRoot(Vec<u8>),
    /// SETACL mailbox identifier rights (RFC 4314 3.1); `rights` may start with `+` or `-`.
    SetAcl {
        /// The mailbox.
        mailbox: Vec<u8>,
        /// Whose rights.
        identifier: Vec<u8>,
        /// The rights string, as sent.
        rights: Vec<u8>,
    },
    /// DELETEACL mailbox identifier (RFC 4314 3.2).
    DeleteAcl {
        /// The mailbox.
        mailbox: Vec<u8>,
        /// Whose entry.
        identifier: Vec<u8>,
    },
    /// GETACL mailbox (RFC 4314 3.3).
    GetAcl(Vec<u8>),
    /// LISTRIGHTS mailbox identifier (RFC 4314 3.4).
    ListRights {
        /// The mailbox.
        mailbox: Vec<u8>,
        /// Whose rights.
        identifier: Vec<u8>,
    },
    /// MYRIGHTS mailbox (RFC 4314 3.5).
    MyRights(Vec<u8>),
    /// SEARCH or UID SEARCH.
    Search {
        /// UID SEARCH.
        uid: bool,
        /// ESEARCH return options, if RETURN was given.
        returns: Option<SearchReturn>,
        /// The criteria.
        program: SearchProgram,
    },
    /// FETCH or UID FETCH.
    Fetch {
        /// UID FETCH.
        uid: bool,
        /// Messages.
        set: SequenceSet,
        /// Items.
        items: Vec<FetchItem>,
        /// CHANGEDSINCE/VANISHED.
        modifiers: FetchModifiers,
    },
    /// STORE or UID STORE.
    Store {
        /// UID STORE.
        uid: bool,
        /// What to change.
        store: Store,
    },
    /// COPY or MOVE, UID or not.
    Copy {
        /// UID COPY/MOVE.
        uid: bool,
        /// MOVE (RFC 6851).
        is_move: bool,
        /// Messages.
        set: SequenceSet,
        /// Raw destination name.
        mailbox: Vec<u8>,
    },
    /// SORT or UID SORT.
    Sort {
        /// UID SORT.
        uid: bool,
        /// Criteria with REVERSE flags.
        keys: Vec<(bool, SortKey)>,
        /// Which messages.
        program: SearchProgram,
    },
    /// THREAD or UID THREAD.
    Thread {
        /// UID THREAD.
        uid: bool,
        /// Algorithm.
        algorithm: ThreadAlgorithm,
        /// Which messages.
        program: SearchProgram,
    },
}

fn selected_command(c: &mut Cursor<'_>, name: &str, uid: bool) -> Result<CommandBody, SyntaxError> {
    Ok(match name {
        "SEARCH" => {
            let (returns, program) = selected::search(c)?;
            CommandBody::Search {
                uid,
                returns,
                program,
            }
        }
        "FETCH" => {
            let (set, items, modifiers) = selected::fetch(c)?;
            // RFC 7162 3.2.6: VANISHED only with UID FETCH.
            if modifiers.vanished && !uid {
                return err("VANISHED needs UID FETCH");
            }
            CommandBody::Fetch {
                uid,
                set,
                items,
                modifiers,
            }
        }
        "STORE" => CommandBody::Store {
            uid,
            store: selected::store(c)?,
        },
        "COPY" | "MOVE" => {
            let (set, mailbox) = selected::copy(c)?;
            CommandBody::Copy {
                uid,
                is_move: name == "MOVE",
                set,
                mailbox,
            }
        }
        "SORT" => {
            let (keys, program) = selected::sort(c)?;
            CommandBody::Sort { uid, keys, program }
        }
        "THREAD" => {
            let (algorithm, program) = selected::thread(c)?;
            CommandBody::Thread {
                uid,
                algorithm,
                program,
            }
        }
        other => return err(format!("unknown command {other}")),
    })
}

/// Decodes a raw mailbox name: UTF-8 when the session speaks it (IMAP4rev2 or
/// UTF8=ACCEPT), modified UTF-7 otherwise; `INBOX` in any case is INBOX (RFC 9051 5.1).
pub fn mailbox_name(raw: &[u8], utf8: bool) -> Result<String, SyntaxError> {
    let name = if utf8 {
        String::from_utf8(raw.to_vec())
            .map_err(|_| SyntaxError("mailbox name is not UTF-8".into()))?
    } else {
        let s = std::str::from_utf8(raw)
            .map_err(|_| SyntaxError("8-bit mailbox name: use modified UTF-7".into()))?;
        mutf7::decode(s).map_err(|e| SyntaxError(format!("mailbox name: {e}")))?
    };
    if name.is_empty() {
        return err("empty mailbox name");
    }
    if name.chars().any(|c| c.is_control()) {
        return err("control character in mailbox name");
    }
    if name.eq_ignore_ascii_case("INBOX") {
        return Ok("INBOX".into());
    }
    Ok(name)
}

fn upper(s: &str) -> String {
    s.to_ascii_uppercase()
}

fn status_item(c: &mut Cursor<'_>) -> Result<StatusItem, SyntaxError> {
    let a = c.atom()?;
    Ok(match upper(a).as_str() {
        "MESSAGES" => StatusItem::Messages,
        "UIDNEXT" => StatusItem::UidNext,
        "UIDVALIDITY" => StatusItem::UidValidity,
        "UNSEEN" => StatusItem::Unseen,
        "DELETED" => StatusItem::Deleted,
        "SIZE" => StatusItem::Size,
        "RECENT" => StatusItem::Recent,
        "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
        "APPENDLIMIT" => StatusItem::AppendLimit,
        _ => return err(format!("unknown STATUS item {a}")),
    })
}

fn status_items(c: &mut Cursor<'_>) -> Result<Vec<StatusItem>, SyntaxError> {
    let mut items = Vec::new();
    c.list(false, |c| {
        items.push(status_item(c)?);
        Ok(())
    })?;
    Ok(items)
}

fn select_params(c: &mut Cursor<'_>) -> Result<SelectParams, SyntaxError> {
    let mut p = SelectParams::default();
    if !c.eat(b' ') {
        return Ok(p);
    }
    c.list(false, |c| {
        let name = upper(c.atom()?);
        match name.as_str() {
            "CONDSTORE" => p.condstore = true,
            "QRESYNC" => {
                c.sp()?;
                c.expect(b'(')?;
                let uid_validity = c.nz_number()?;
                c.sp()?;
                let modseq = c.number64()?;
                let mut known_uids = None;
                let mut seq_match = None;
                if c.eat(b' ') {
                    if c.peek() == Next::Byte(b'(') {
                        seq_match = Some(seq_match_data(c)?);
                    } else {
                        known_uids = Some(c.sequence_set()?);
                        if c.eat(b' ') {
                            seq_match = Some(seq_match_data(c)?);
                        }
                    }
                }
                c.expect(b')')?;
                p.qresync = Some(QresyncParams {
                    uid_validity,
                    modseq,
                    known_uids,
                    seq_match,
                });
            }
            other => return err(format!("unknown SELECT parameter {other}")),
        }
        Ok(())
    })?;
    Ok(p)
}

fn seq_match_data(c: &mut Cursor<'_>) -> Result<(SequenceSet, SequenceSet), SyntaxError> {
    c.expect(b'(')?;
    let seqs = c.sequence_set()?;
    c.sp()?;
    let uids = c.sequence_set()?;
    c.expect(b')')?;
    Ok((seqs, uids))
}

fn list_command(c: &mut Cursor<'_>) -> Result<CommandBody, SyntaxError> {
    c.sp()?;
    let mut selection = Vec::new();
    // RFC 5258 3: LIST (selection-options) reference patterns [RETURN (options)].
    if c.peek() == Next::Byte(b'(') {
        c.list(true, |c| {
            selection.push(upper(c.atom()?));
            Ok(())
        })?;
        c.sp()?;
    }
    let reference = c.astring()?.into_owned();
    c.sp()?;
    let mut patterns = Vec::new();
    if c.peek() == Next::Byte(b'(') {
        c.list(false, |c| {
            patterns.push(c.list_mailbox()?.into_owned());
            Ok(())
        })?;
    } else {
        patterns.push(c.list_mailbox()?.into_owned());
    }
    let mut returns = ListReturn::default();
    if c.eat(b' ') {
        if !c.keyword("RETURN") {
            return err("expected RETURN");
        }
        c.sp()?;
        c.list(true, |c| {
            let opt = upper(c.atom()?);
            match opt.as_str() {
                "SUBSCRIBED" => returns.subscribed = true,
                "CHILDREN" => returns.children = true,
                "SPECIAL-USE" => returns.special_use = true,
                "STATUS" => {
                    c.sp()?;
                    returns.status = Some(status_items(c)?);
                }
                other => return err(format!("unknown LIST return option {other}")),
            }
            Ok(())
        })?;
    }
    for s in &selection {
        if !matches!(
            s.as_str(),
            "SUBSCRIBED" | "REMOTE" | "RECURSIVEMATCH" | "SPECIAL-USE"
        ) {
            return err(format!("unknown LIST selection option {s}"));
        }
    }
    // RFC 5258 3.1: RECURSIVEMATCH alone is an error.
    if selection.iter().any(|s| s == "RECURSIVEMATCH") && selection.len() == 1 {
        return err("RECURSIVEMATCH needs another selection option");
    }
    Ok(CommandBody::List {
        selection,
        reference,
        patterns,
        returns,
    })
}

fn append(c: &mut Cursor<'_>) -> Result<CommandBody, SyntaxError> {
    c.sp()?;
    let mailbox = c.astring()?.into_owned();
    let mut messages = Vec::new();
    // RFC 3502: one or more (flags? date? literal) groups.
    while c.eat(b' ') {
        let mut flags = Vec::new();
        if c.peek() == Next::Byte(b'(') {
            flags = c.flag_list()?;
            c.sp()?;
        }
        let mut date = None;
        if c.peek() == Next::Byte(b'"') {
            let d = c.string()?;
            date = Some(
                String::from_utf8(d.into_owned()).map_err(|_| SyntaxError("bad date".into()))?,
            );
            c.sp()?;
        }
        // RFC 3516: `~{n}` is a binary literal; RFC 4469 CATENATE is not offered.
        if c.peek() != Next::Literal {
            return err("expected the message as a literal");
        }
        let binary = c.literal_is_binary();
        let data = c.string()?.into_owned();
        messages.push(AppendMessage {
            flags,
            date,
            data,
            binary,
        });
    }
    if messages.is_empty() {
        return err("APPEND needs a message");
    }
    Ok(CommandBody::Append { mailbox, messages })
}

fn notify_mailboxes(c: &mut Cursor<'_>) -> Result<Vec<Vec<u8>>, SyntaxError> {
    c.sp()?;
    let mut out = Vec::new();
    if c.peek() == Next::Byte(b'(') {
        c.list(false, |c| {
            out.push(c.astring()?.into_owned());
            Ok(())
        })?;
    } else {
        out.push(c.astring()?.into_owned());
    }
    Ok(out)
}

fn notify(c: &mut Cursor<'_>) -> Result<CommandBody, SyntaxError> {
    c.sp()?;
    if c.keyword("NONE") {
        return Ok(CommandBody::Notify(None));
    }
    if !c.keyword("SET") {
        return err("expected NOTIFY NONE or NOTIFY SET");
    }
    let mut set = NotifySet {
        status: false,
        groups: Vec::new(),
    };
    // RFC 5465 8 (with erratum 1804): "NOTIFY SET" [SP "STATUS"] SP event-group
    // *(SP event-group), event-group = "(" filter SP ("(" event *(SP event) ")" / "NONE") ")".
    c.sp()?;
    if c.keyword("STATUS") {
        set.status = true;
        c.sp()?;
    }
    loop {
        c.expect(b'(')?;
        let word = upper(c.atom()?);
        let filter = match word.as_str() {
            "SELECTED" => NotifyFilter::Selected,
            "SELECTED-DELAYED" => NotifyFilter::SelectedDelayed,
            "INBOXES" => NotifyFilter::Inboxes,
            "PERSONAL" => NotifyFilter::Personal,
            "SUBSCRIBED" => NotifyFilter::Subscribed,
            "SUBTREE" => NotifyFilter::Subtree(notify_mailboxes(c)?),
            "MAILBOXES" => NotifyFilter::Mailboxes(notify_mailboxes(c)?),
            other => return err(format!("unknown NOTIFY filter {other}")),
        };
        c.sp()?;
        let mut events = Vec::new();
        if !c.keyword("NONE") {
            c.list(false, |c| {
                let name = c.atom()?.to_string();
                events.push(match upper(&name).as_str() {
                    "MESSAGENEW" => {
                        let mut items = Vec::new();
                        // Optional fetch-att list: look past the space, go back if no "(".
                        let before = c.clone();
                        if c.eat(b' ') && c.peek() == Next::Byte(b'(') {
                            c.list(false, |c| {
                                items.extend(selected::fetch_item(c)?);
                                Ok(())
                            })?;
                        } else {
                            *c = before;
                        }
                        NotifyEvent::MessageNew(items)
                    }
                    "MESSAGEEXPUNGE" => NotifyEvent::MessageExpunge,
                    "FLAGCHANGE" => NotifyEvent::FlagChange,
                    "MAILBOXNAME" => NotifyEvent::MailboxName,
                    "SUBSCRIPTIONCHANGE" => NotifyEvent::SubscriptionChange,
                    _ => NotifyEvent::Unsupported(name),
                });
                Ok(())
            })?;
        }
        c.expect(b')')?;
        set.groups.push(NotifyGroup { filter, events });
        if !c.eat(b' ') {
            break;
        }
    }
    Ok(CommandBody::Notify(Some(set)))
}

/// ID parameters: NIL, or field/value pairs (RFC 2971).
pub type IdParams = Option<Vec<(String, Option<String>)>>;

fn id_params(c: &mut Cursor<'_>) -> Result<IdParams, SyntaxError> {
    if c.keyword("NIL") {
        return Ok(None);
    }
    let mut fields = Vec::new();
    let mut key: Option<String> = None;
    c.list(true, |c| {
        match key.take() {
            None => {
                let k = c.string()?;
                key = Some(String::from_utf8_lossy(&k).into_owned());
            }
            Some(k) => {
                let v = c
                    .nstring()?
                    .map(|v| String::from_utf8_lossy(&v).into_owned());
                // RFC 2971 3.3: at most 30 pairs, field names up to 30 octets.
                if fields.len() >= 30 || k.len() > 30 {
                    return err("too many or too long ID fields");
                }
                fields.push((k, v));
            }
        }
        Ok(())
    })?;
    if key.is_some() {
        return err("ID field without a value");
    }
    Ok(Some(fields))
}

/// Parses a framed command.
pub fn parse(parts: &[Part]) -> Result<Command, (Option<String>, SyntaxError)> {
    let mut c = Cursor::new(parts);
    let tag = match c.astring_tag() {
        Ok(t) => t,
        Err(e) => return Err((None, e)),
    };
    let body = parse_body(&mut c).and_then(|b| c.end().map(|()| b));
    match body {
        Ok(body) => Ok(Command { tag, body }),
        Err(e) => Err((Some(tag), e)),
    }
}

fn parse_body(c: &mut Cursor<'_>) -> Result<CommandBody, SyntaxError> {
    c.sp()?;
    let name = upper(c.atom()?);
    Ok(match name.as_str() {
        "CAPABILITY" => CommandBody::Capability,
        "NOOP" => CommandBody::Noop,
        "LOGOUT" => CommandBody::Logout,
        "STARTTLS" => CommandBody::StartTls,
        "UNAUTHENTICATE" => CommandBody::Unauthenticate,
        "NAMESPACE" => CommandBody::Namespace,
        "IDLE" => CommandBody::Idle,
        "CHECK" => CommandBody::Check,
        "CLOSE" => CommandBody::Close,
        "UNSELECT" => CommandBody::Unselect,
        "EXPUNGE" => CommandBody::Expunge { uids: None },
        "AUTHENTICATE" => {
            c.sp()?;
            let mechanism = upper(c.atom()?);
            let initial = if c.eat(b' ') {
                if c.eat(b'=') {
                    Some(String::new())
                } else {
                    Some(c.atom()?.to_string())
                }
            } else {
                None
            };
            CommandBody::Authenticate { mechanism, initial }
        }
        "LOGIN" => {
            c.sp()?;
            let user = c.astring()?.into_owned();
            c.sp()?;
            let password = c.astring()?.into_owned();
            CommandBody::Login { user, password }
        }
        "ENABLE" => {
            let mut caps = Vec::new();
            while c.eat(b' ') {
                caps.push(upper(c.atom()?));
            }
            if caps.is_empty() {
                return err("ENABLE needs a capability");
            }
            CommandBody::Enable(caps)
        }
        "ID" => {
            c.sp()?;
            CommandBody::Id(id_params(c)?)
        }
        "COMPRESS" => {
            c.sp()?;
            CommandBody::Compress(upper(c.atom()?))
        }
        "SELECT" | "EXAMINE" => {
            c.sp()?;
            let mailbox = c.astring()?.into_owned();
            let params = select_params(c)?;
            CommandBody::Select {
                mailbox,
                read_only: name == "EXAMINE",
                params,
            }
        }
        "CREATE" => {
            c.sp()?;
            let mailbox = c.astring()?.into_owned();
            let mut special_use = Vec::new();
            if c.eat(b' ') {
                c.list(false, |c| {
                    if !c.keyword("USE") {
                        return err("unknown CREATE parameter");
                    }
                    c.sp()?;
                    c.list(false, |c| {
                        special_use.push(c.flag()?);
                        Ok(())
                    })
                })?;
            }
            CommandBody::Create {
                mailbox,
                special_use,
            }
        }
        "DELETE" | "SUBSCRIBE" | "UNSUBSCRIBE" | "GETQUOTA" | "GETQUOTAROOT" | "GETACL"
        | "MYRIGHTS" => {
            c.sp()?;
            let m = c.astring()?.into_owned();
            match name.as_str() {
                "DELETE" => CommandBody::Delete(m),
                "SUBSCRIBE" => CommandBody::Subscribe(m),
                "UNSUBSCRIBE" => CommandBody::Unsubscribe(m),
                "GETQUOTA" => CommandBody::GetQuota(m),
                "GETACL" => CommandBody::GetAcl(m),
                "MYRIGHTS" => CommandBody::MyRights(m),
                _ => CommandBody::GetQuotaRoot(m),
            }
        }
        // RFC 4314 6: setacl = "SETACL" SP mailbox SP identifier SP mod-rights, where
        // identifier and mod-rights are astrings.
        "SETACL" | "DELETEACL" | "LISTRIGHTS" => {
            c.sp()?;
            let mailbox = c.astring()?.into_owned();
            c.sp()?;
            let identifier = c.astring()?.into_owned();
            match name.as_str() {
                "SETACL" => {
                    c.sp()?;
                    let rights = c.astring()?.into_owned();
                    CommandBody::SetAcl {
                        mailbox,
                        identifier,
                        rights,
                    }
                }
                "DELETEACL" => CommandBody::DeleteAcl {
                    mailbox,
                    identifier,
                },
                _ => CommandBody::ListRights {
                    mailbox,
                    identifier,
                },
            }
        }
        "RENAME" => {
            c.sp()?;
            let from = c.astring()?.into_owned();
            c.sp()?;
            let to = c.astring()?.into_owned();
            CommandBody::Rename { from, to }
        }
        "LIST" => list_command(c)?,
        "LSUB" => {
            c.sp()?;
            let reference = c.astring()?.into_owned();
            c.sp()?;
            let pattern = c.list_mailbox()?.into_owned();
            CommandBody::Lsub { reference, pattern }
        }
        "STATUS" => {
            c.sp()?;
            let mailbox = c.astring()?.into_owned();
            c.sp()?;
            CommandBody::Status {
                mailbox,
                items: status_items(c)?,
            }
        }
        "APPEND" => append(c)?,
        "NOTIFY" => notify(c)?,
        "UID" => {
            c.sp()?;
            let sub = upper(c.atom()?);
            match sub.as_str() {
                "EXPUNGE" => {
                    c.sp()?;
                    CommandBody::Expunge {
                        uids: Some(c.sequence_set()?),
                    }
                }
                "SEARCH" | "FETCH" | "STORE" | "COPY" | "MOVE" | "SORT" | "THREAD" => {
                    selected_command(c, &sub, true)?
                }
                other => return err(format!("unknown UID command {other}")),
            }
        }
        "SEARCH" | "FETCH" | "STORE" | "COPY" | "MOVE" | "SORT" | "THREAD" => {
            selected_command(c, &name, false)?
        }
        other => return err(format!("unknown command {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Event, Framer, Limits};

    fn cmd(input: &[u8]) -> Result<Command, (Option<String>, SyntaxError)> {
        let mut f = Framer::new(Limits::default());
        f.push(input);
        loop {
            match f.next_event() {
                Some(Event::Command(parts)) => return parse(&parts),
                Some(Event::Literal { .. }) => f.accept(),
                other => panic!("framing: {other:?}"),
            }
        }
    }

    fn body(input: &str) -> CommandBody {
        cmd(input.as_bytes())
            .unwrap_or_else(|e| panic!("{input:?}: {e:?}"))
            .body
    }

    #[test]
    fn any_state_commands() {
        assert_eq!(body("a CAPABILITY\r\n"), CommandBody::Capability);
        assert_eq!(body("a noop\r\n"), CommandBody::Noop);
        assert_eq!(body("a UNAUTHENTICATE\r\n"), CommandBody::Unauthenticate);
        assert_eq!(
            body("a AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n"),
            CommandBody::Authenticate {
                mechanism: "PLAIN".into(),
                initial: Some("AGFsaWNlAHB3".into())
            }
        );
        assert_eq!(
            body("a AUTHENTICATE plain =\r\n"),
            CommandBody::Authenticate {
                mechanism: "PLAIN".into(),
                initial: Some(String::new())
            }
        );
        assert_eq!(
            body("a LOGIN {5}\r\nalice \"p w\"\r\n"),
            CommandBody::Login {
                user: b"alice".to_vec(),
                password: b"p w".to_vec()
            }
        );
        assert_eq!(
            body("a ENABLE IMAP4rev2 CONDSTORE\r\n"),
            CommandBody::Enable(vec!["IMAP4REV2".into(), "CONDSTORE".into()])
        );
        assert_eq!(
            body("a ID (\"name\" \"mutt\" \"version\" NIL)\r\n"),
            CommandBody::Id(Some(vec![
                ("name".into(), Some("mutt".into())),
                ("version".into(), None)
            ]))
        );
        assert_eq!(body("a ID NIL\r\n"), CommandBody::Id(None));
        assert_eq!(
            body("a COMPRESS DEFLATE\r\n"),
            CommandBody::Compress("DEFLATE".into())
        );
    }

    #[test]
    fn acl_commands() {
        // RFC 4314 3: the examples' forms.
        assert_eq!(
            body("A002 SETACL INBOX/Drafts Byron lrswikda\r\n"),
            CommandBody::SetAcl {
                mailbox: b"INBOX/Drafts".to_vec(),
                identifier: b"Byron".to_vec(),
                rights: b"lrswikda".to_vec()
            }
        );
        assert_eq!(
            body("A1 SETACL \"Shared/bob@x.test/Projects\" anyone -w\r\n"),
            CommandBody::SetAcl {
                mailbox: b"Shared/bob@x.test/Projects".to_vec(),
                identifier: b"anyone".to_vec(),
                rights: b"-w".to_vec()
            }
        );
        assert_eq!(
            body("A3 DELETEACL INBOX Byron\r\n"),
            CommandBody::DeleteAcl {
                mailbox: b"INBOX".to_vec(),
                identifier: b"Byron".to_vec()
            }
        );
        assert_eq!(
            body("a GETACL INBOX\r\n"),
            CommandBody::GetAcl(b"INBOX".to_vec())
        );
        assert_eq!(
            body("a LISTRIGHTS ~/Mail/saved smith\r\n"),
            CommandBody::ListRights {
                mailbox: b"~/Mail/saved".to_vec(),
                identifier: b"smith".to_vec()
            }
        );
        assert_eq!(
            body("a MYRIGHTS INBOX\r\n"),
            CommandBody::MyRights(b"INBOX".to_vec())
        );
        // SETACL needs its rights argument.
        assert!(cmd(b"a SETACL INBOX smith\r\n").is_err());
    }

    #[test]
    fn select_with_condstore_and_qresync() {
        assert_eq!(
            body("a SELECT INBOX (CONDSTORE)\r\n"),
            CommandBody::Select {
                mailbox: b"INBOX".to_vec(),
                read_only: false,
                params: SelectParams {
                    condstore: true,
                    qresync: None
                }
            }
        );
        // RFC 7162 3.2.5.2 example.
        match body("A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))\r\n")
        {
            CommandBody::Select {
                params: SelectParams {
                    qresync: Some(q), ..
                },
                ..
            } => {
                assert_eq!((q.uid_validity, q.modseq), (67890007, 20050715194045000));
                assert!(q.known_uids.is_some() && q.seq_match.is_none());
            }
            other => panic!("{other:?}"),
        }
        match body("B EXAMINE \"Sent Items\" (QRESYNC (1 2 1:100 (1:10 5:50)))\r\n") {
            CommandBody::Select {
                read_only: true,
                mailbox,
                params: SelectParams {
                    qresync: Some(q), ..
                },
            } => {
                assert_eq!(mailbox, b"Sent Items");
                assert!(q.seq_match.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn list_extended_status_and_special_use() {
        // The forms imap-codec could not parse (docs/imap-codec-evaluation.md).
        assert_eq!(
            body("a LIST (SUBSCRIBED) \"\" *\r\n"),
            CommandBody::List {
                selection: vec!["SUBSCRIBED".into()],
                reference: vec![],
                patterns: vec![b"*".to_vec()],
                returns: ListReturn::default()
            }
        );
        assert_eq!(
            body("a LIST \"\" % RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN SIZE))\r\n"),
            CommandBody::List {
                selection: vec![],
                reference: vec![],
                patterns: vec![b"%".to_vec()],
                returns: ListReturn {
                    special_use: true,
                    status: Some(vec![
                        StatusItem::Messages,
                        StatusItem::Unseen,
                        StatusItem::Size
                    ]),
                    ..Default::default()
                }
            }
        );
        match body(
            "a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (\"INBOX\" \"Lists/%\") RETURN (CHILDREN)\r\n",
        ) {
            CommandBody::List {
                patterns, returns, ..
            } => {
                assert_eq!(patterns.len(), 2);
                assert!(returns.children);
            }
            other => panic!("{other:?}"),
        }
        assert!(cmd(b"a LIST (RECURSIVEMATCH) \"\" *\r\n").is_err());
        assert!(cmd(b"a LIST (BOGUS) \"\" *\r\n").is_err());
    }

    #[test]
    fn create_status_append_and_uid_expunge() {
        assert_eq!(
            body("a CREATE MySent (USE (\\Sent))\r\n"),
            CommandBody::Create {
                mailbox: b"MySent".to_vec(),
                special_use: vec!["\\Sent".into()]
            }
        );
        assert_eq!(
            body("a STATUS blurdybloop (UIDNEXT MESSAGES HIGHESTMODSEQ APPENDLIMIT)\r\n"),
            CommandBody::Status {
                mailbox: b"blurdybloop".to_vec(),
                items: vec![
                    StatusItem::UidNext,
                    StatusItem::Messages,
                    StatusItem::HighestModSeq,
                    StatusItem::AppendLimit
                ]
            }
        );
        match body("a APPEND saved-messages (\\Seen) \"7-Feb-1994 21:52:25 -0800\" {5}\r\nhello {3+}\r\nbye\r\n") {
            CommandBody::Append { mailbox, messages } => {
                assert_eq!(mailbox, b"saved-messages");
                assert_eq!(messages.len(), 2, "MULTIAPPEND");
                assert_eq!(messages[0].flags, vec!["\\Seen".to_string()]);
                assert_eq!(messages[0].date.as_deref(), Some("7-Feb-1994 21:52:25 -0800"));
                assert_eq!(messages[1].data, b"bye");
            }
            other => panic!("{other:?}"),
        }
        match body("a APPEND INBOX ~{3}\r\na\0b\r\n") {
            CommandBody::Append { messages, .. } => assert!(messages[0].binary),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            body("a UID EXPUNGE 3000:3002\r\n"),
            CommandBody::Expunge { uids: Some(_) }
        ));
    }

    #[test]
    fn selected_state_commands_with_uid_prefix() {
        assert!(matches!(
            body("a UID SEARCH RETURN (ALL) UNSEEN\r\n"),
            CommandBody::Search {
                uid: true,
                returns: Some(_),
                ..
            }
        ));
        assert!(
            cmd(b"a SEARCH {3}\r\nfoo\r\n").is_err(),
            "a literal is not a search key"
        );
        assert!(matches!(
            body("a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 5 VANISHED)\r\n"),
            CommandBody::Fetch { uid: true, .. }
        ));
        assert!(
            cmd(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 5 VANISHED)\r\n").is_err(),
            "VANISHED needs UID"
        );
        assert!(matches!(
            body("a UID MOVE 42:69 foo\r\n"),
            CommandBody::Copy {
                uid: true,
                is_move: true,
                ..
            }
        ));
        assert!(matches!(
            body("a STORE $ +FLAGS (\\Seen)\r\n"),
            CommandBody::Store { uid: false, .. }
        ));
        assert!(matches!(
            body("a UID SORT (ARRIVAL) US-ASCII ALL\r\n"),
            CommandBody::Sort { uid: true, .. }
        ));
        assert!(matches!(
            body("a THREAD ORDEREDSUBJECT UTF-8 ALL\r\n"),
            CommandBody::Thread { uid: false, .. }
        ));
        // A literal as a search string.
        match body("a SEARCH SUBJECT {5}\r\nhello\r\n") {
            CommandBody::Search { program, .. } => {
                assert_eq!(
                    program.keys[0],
                    selected::SearchKey::Header("Subject".into(), b"hello".to_vec())
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn notify_set_and_none() {
        assert_eq!(body("a NOTIFY NONE\r\n"), CommandBody::Notify(None));
        // RFC 5465 7 example.
        // RFC 5465 3.1 example, as corrected by erratum 1804.
        match body("a NOTIFY SET STATUS (selected (MessageNew (uid body.peek[header.fields (from to subject)]) MessageExpunge)) (subtree Lists (MessageNew)) (mailboxes (\"a b\" c) (MailboxName FlagChange)) (personal NONE)\r\n") {
            CommandBody::Notify(Some(set)) => {
                assert!(set.status);
                assert_eq!(set.groups.len(), 4);
                assert_eq!(set.groups[0].filter, NotifyFilter::Selected);
                assert!(matches!(&set.groups[0].events[0], NotifyEvent::MessageNew(items) if items.len() == 2));
                assert_eq!(set.groups[1].filter, NotifyFilter::Subtree(vec![b"Lists".to_vec()]));
                assert_eq!(set.groups[2].filter, NotifyFilter::Mailboxes(vec![b"a b".to_vec(), b"c".to_vec()]));
                assert!(set.groups[3].events.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            body("a NOTIFY SET (inboxes (MessageNew AnnotationChange))\r\n"),
            CommandBody::Notify(Some(s)) if s.groups[0].events[1] == NotifyEvent::Unsupported("AnnotationChange".into())
        ));
        assert!(cmd(b"a NOTIFY SET\r\n").is_err());
        assert!(cmd(b"a NOTIFY SET (bogus MessageNew)\r\n").is_err());
    }

    #[test]
    fn errors_carry_the_tag() {
        let (tag, e) = cmd(b"x7 FROB\r\n").unwrap_err();
        assert_eq!(tag.as_deref(), Some("x7"));
        assert!(e.0.contains("FROB"));
        let (tag, _) = cmd(b"x8 SELECT\r\n").unwrap_err();
        assert_eq!(tag.as_deref(), Some("x8"));
        assert!(cmd(b"x9 NOOP extra\r\n").is_err());
        let (tag, _) = cmd(b"+bad NOOP\r\n").unwrap_err();
        assert_eq!(tag, None);
    }

    #[test]
    fn mailbox_names_by_session_kind() {
        assert_eq!(mailbox_name(b"inbox", false).unwrap(), "INBOX");
        assert_eq!(mailbox_name(b"&ZeVnLIqe-", false).unwrap(), "日本語");
        assert_eq!(mailbox_name("日本語".as_bytes(), true).unwrap(), "日本語");
        assert!(mailbox_name("日本語".as_bytes(), false).is_err());
        assert!(mailbox_name(b"a\x01b", true).is_err());
    }
}
