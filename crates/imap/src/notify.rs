//! NOTIFY (RFC 5465): unsolicited updates about the selected mailbox and about others, sent
//! as they happen, also between commands.
//!
//! Implementation notes:
//! - Events come from the store's change broadcast, as for IDLE. For the selected mailbox an
//!   event triggers the usual view sync (EXISTS, EXPUNGE/VANISHED, FETCH FLAGS); for other
//!   mailboxes matched by a filter, a STATUS response; for MailboxName, LIST responses for
//!   mailboxes created or deleted (a rename is both), found by comparing the account's
//!   mailbox list with the one seen before.
//! - MessageNew with a fetch-att list sends, after EXISTS, a FETCH of those items for each new
//!   message of the selected mailbox (RFC 5465 5.2).
//! - Other users' mailboxes the user may read are watched under their `Shared/...` names
//!   (SUBTREE, MAILBOXES, SUBSCRIBED); PERSONAL and INBOXES are the user's own.
//! - Not offered: AnnotationChange and the METADATA events (BADEVENT); SubscriptionChange is
//!   accepted, but the store does not report subscription changes yet.

use mailkeep_imap_proto::command::{NotifyEvent, NotifyFilter, NotifySet};
use mailkeep_imap_proto::selected::FetchItem;
use mailkeep_store::{ChangeEvent, Mailbox};
use mailkeep_types::{AccountId, MailboxId, MailboxRole};

/// Which mailboxes a group watches, with names decoded.
#[derive(Debug, Clone)]
pub enum Filter {
    /// INBOXES.
    Inboxes,
    /// PERSONAL.
    Personal,
    /// SUBSCRIBED.
    Subscribed,
    /// SUBTREE names.
    Subtree(Vec<String>),
    /// MAILBOXES names.
    Mailboxes(Vec<String>),
}

/// The kinds of events a group asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kinds {
    /// MessageNew.
    pub new: bool,
    /// MessageExpunge.
    pub expunge: bool,
    /// FlagChange.
    pub flags: bool,
    /// MailboxName.
    pub names: bool,
}

/// The session's NOTIFY state.
pub struct Notify {
    /// Events for the selected mailbox (SELECTED or SELECTED-DELAYED).
    pub selected: Kinds,
    /// SELECTED-DELAYED: expunges wait for a command that allows them.
    pub delayed: bool,
    /// FETCH items sent for each new message of the selected mailbox.
    pub new_items: Vec<FetchItem>,
    /// Groups for other mailboxes.
    pub others: Vec<(Filter, Kinds)>,
    /// The change events (taken by IDLE while it runs).
    pub events: Option<tokio::sync::broadcast::Receiver<ChangeEvent>>,
    /// The mailboxes as last seen (names by id): the account's own, and other users' it may
    /// read, under their `Shared/...` names.
    pub mailboxes: Vec<Mailbox>,
    /// Subscribed names as last seen.
    pub subscribed: Vec<String>,
    /// The user's account (PERSONAL is its mailboxes).
    pub me: AccountId,
}

/// Why a NOTIFY SET is refused.
pub enum Refusal {
    /// BAD: the request contradicts RFC 5465.
    Bad(String),
    /// NO [BADEVENT]: events this server does not offer.
    BadEvent,
}

/// The events offered, for NO [BADEVENT (...)].
pub const OFFERED: &str = "MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange";

/// What NOTIFY SET asks for.
pub struct Plan {
    /// Events of the selected mailbox.
    pub selected: Kinds,
    /// SELECTED-DELAYED.
    pub delayed: bool,
    /// FETCH items to send for new messages of the selected mailbox (MessageNew's list).
    pub new_items: Vec<FetchItem>,
    /// Groups for other mailboxes.
    pub others: Vec<(Filter, Kinds)>,
}

/// Turns NOTIFY SET into the session's state; `decode` turns raw mailbox names into ours.
pub fn plan(
    set: &NotifySet,
    decode: impl Fn(&[u8]) -> Result<String, String>,
) -> Result<Plan, Refusal> {
    let mut selected = Kinds::default();
    let mut delayed = false;
    let mut new_items = Vec::new();
    let mut others = Vec::new();
    for g in &set.groups {
        let mut k = Kinds::default();
        let mut items: &[FetchItem] = &[];
        for e in &g.events {
            match e {
                NotifyEvent::MessageNew(i) => {
                    k.new = true;
                    items = i;
                }
                NotifyEvent::MessageExpunge => k.expunge = true,
                NotifyEvent::FlagChange => k.flags = true,
                NotifyEvent::MailboxName => k.names = true,
                NotifyEvent::SubscriptionChange => {}
                NotifyEvent::Unsupported(_) => return Err(Refusal::BadEvent),
            }
        }
        // RFC 5465 5: MessageNew and MessageExpunge come together; FlagChange needs both.
        if k.new != k.expunge || (k.flags && !k.new) {
            return Err(Refusal::Bad(
                "MessageNew and MessageExpunge go together, and FlagChange needs them".into(),
            ));
        }
        let names = |list: &[Vec<u8>]| -> Result<Vec<String>, Refusal> {
            list.iter()
                .map(|n| decode(n).map_err(Refusal::Bad))
                .collect()
        };
        match &g.filter {
            NotifyFilter::Selected | NotifyFilter::SelectedDelayed => {
                if k.names {
                    return Err(Refusal::Bad(
                        "only message events apply to the selected mailbox".into(),
                    ));
                }
                delayed = g.filter == NotifyFilter::SelectedDelayed;
                selected = k;
                new_items = items.to_vec();
            }
            // RFC 5465 5.1: fetch-att only with the selected mailbox.
            _ if !items.is_empty() => {
                return Err(Refusal::Bad(
                    "MessageNew FETCH items apply only to the selected mailbox".into(),
                ))
            }
            NotifyFilter::Inboxes => others.push((Filter::Inboxes, k)),
            NotifyFilter::Personal => others.push((Filter::Personal, k)),
            NotifyFilter::Subscribed => others.push((Filter::Subscribed, k)),
            NotifyFilter::Subtree(n) => others.push((Filter::Subtree(names(n)?), k)),
            NotifyFilter::Mailboxes(n) => others.push((Filter::Mailboxes(names(n)?), k)),
        }
    }
    Ok(Plan {
        selected,
        delayed,
        new_items,
        others,
    })
}

impl Notify {
    fn matches(&self, f: &Filter, mb: &Mailbox) -> bool {
        match f {
            Filter::Inboxes => mb.role == Some(MailboxRole::Inbox),
            // RFC 5465 6: the personal namespace only.
            Filter::Personal => mb.account == self.me,
            Filter::Subscribed => self.subscribed.contains(&mb.name),
            Filter::Subtree(names) => names
                .iter()
                .any(|n| mb.name == *n || mb.name.starts_with(&format!("{n}/"))),
            Filter::Mailboxes(names) => names.contains(&mb.name),
        }
    }

    /// The kinds wanted for a (non-selected) mailbox.
    pub fn kinds_for(&self, id: MailboxId) -> Option<(Mailbox, Kinds)> {
        let mb = self.mailboxes.iter().find(|m| m.id == id)?;
        let mut k = Kinds::default();
        let mut any = false;
        for (f, kinds) in &self.others {
            if self.matches(f, mb) {
                any = true;
                k.new |= kinds.new;
                k.expunge |= kinds.expunge;
                k.flags |= kinds.flags;
            }
        }
        any.then(|| (mb.clone(), k))
    }

    /// Whether any group wants MailboxName.
    pub fn wants_names(&self) -> bool {
        self.others.iter().any(|(_, k)| k.names)
    }

    /// Mailboxes whose STATUS NOTIFY SET STATUS asks for at once.
    pub fn watched(&self) -> Vec<Mailbox> {
        self.mailboxes
            .iter()
            .filter(|mb| {
                self.others
                    .iter()
                    .any(|(f, k)| (k.new || k.expunge || k.flags) && self.matches(f, mb))
            })
            .cloned()
            .collect()
    }
}
