//! A session's view of its selected mailbox: the message sequence numbers it has announced,
//! and the changes it has not reported yet (RFC 9051 7.5.1, RFC 7162 3.2.10).
//!
//! Implementation notes:
//! - The view is built from the store at SELECT and refreshed from
//!   [`MailStore::changed_since`] and [`MailStore::expunged_since`] with the MODSEQ it last
//!   synchronized to, so every change (SMTP delivery, another session, this one) is found the
//!   same way, and nothing depends on change events arriving (they only wake IDLE).
//! - A change the session made itself is already in the view with its MODSEQ and is not
//!   reported twice.
//! - Expunges are not applied while a FETCH, STORE or SEARCH is answered (RFC 9051 7.5.1): the
//!   caller skips [`View::sync`] after those commands.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mailkeep_imap_proto::cursor::SequenceSet;
use mailkeep_imap_proto::response::vanished;
use mailkeep_store::{ChangeEvent, MailStore, MessageFlags, Result, Rights};
use mailkeep_types::{AccountId, MailboxId, ModSeq, Uid};

/// One message as the session sees it.
#[derive(Debug, Clone)]
pub struct Msg {
    /// UID.
    pub uid: u32,
    /// MODSEQ the session last reported (or learned).
    pub modseq: u64,
    /// Flags and keywords; messages with the same flags may share one slice.
    pub flags: Arc<[String]>,
    /// Internal date.
    pub internal_date: i64,
    /// RFC822.SIZE.
    pub size: u64,
}

impl From<MessageFlags> for Msg {
    fn from(m: MessageFlags) -> Msg {
        Msg {
            uid: m.uid.0,
            modseq: m.modseq.0,
            flags: m.flags.into(),
            internal_date: m.internal_date,
            size: m.size,
        }
    }
}

/// Builds [`Msg`]s from the store's rows, sharing one flag slice among messages with the same
/// flags (most of a mailbox has one of a few combinations).
#[derive(Default)]
pub struct Interner(HashMap<Vec<String>, Arc<[String]>>);

impl Interner {
    /// The message, its flags shared with earlier ones where equal.
    pub fn msg(&mut self, m: MessageFlags) -> Msg {
        let flags = match self.0.get(&m.flags) {
            Some(f) => f.clone(),
            None => {
                let f: Arc<[String]> = m.flags.clone().into();
                if self.0.len() < 1024 {
                    self.0.insert(m.flags, f.clone());
                }
                f
            }
        };
        Msg {
            uid: m.uid.0,
            modseq: m.modseq.0,
            flags,
            internal_date: m.internal_date,
            size: m.size,
        }
    }
}

/// Applies what changed since a list was read (rows from `changed_since`, UIDs from
/// `expunged_since`) to that list, silently.
pub fn apply_changes(msgs: &mut Vec<Msg>, changed: Vec<MessageFlags>, expunged: &[u32]) {
    let gone: HashSet<u32> = expunged.iter().copied().collect();
    if !gone.is_empty() {
        msgs.retain(|m| !gone.contains(&m.uid));
    }
    let mut interner = Interner::default();
    for m in changed {
        if gone.contains(&m.uid.0) {
            continue;
        }
        match msgs.binary_search_by_key(&m.uid.0, |x| x.uid) {
            Ok(i) => msgs[i] = interner.msg(m),
            Err(i) => msgs.insert(i, interner.msg(m)),
        }
    }
}

/// What [`View::sync`] found.
pub enum Synced {
    /// The view is current (responses may have been written).
    Ok,
    /// The mailbox no longer exists.
    Gone,
}

/// The selected mailbox.
pub struct View {
    /// Its id.
    pub mailbox: MailboxId,
    /// Its name, as the client spells it (`Shared/...` for another user's).
    pub name: String,
    /// The owning account (another user's for a shared mailbox).
    pub owner: AccountId,
    /// The user's rights on it (RFC 4314), as of SELECT.
    pub rights: Rights,
    /// EXAMINE, or no right to change anything.
    pub read_only: bool,
    /// UIDVALIDITY.
    pub uid_validity: u32,
    /// Messages in sequence order (ascending UID).
    pub msgs: Vec<Msg>,
    /// The highest MODSEQ the view has synchronized to.
    pub known_modseq: u64,
    /// UIDNEXT as last seen.
    pub uid_next: u32,
    /// The saved search result (RFC 5182 SEARCHRES), as UIDs.
    pub saved: Vec<u32>,
    /// The store's change events since SELECT: a sync asks the store only when one of them
    /// concerns this mailbox (None: always ask).
    pub events: Option<tokio::sync::broadcast::Receiver<ChangeEvent>>,
    /// A change is known to be pending (seen by IDLE's own receiver).
    pub dirty: bool,
}

/// How changes are written.
#[derive(Clone, Copy)]
pub struct Report {
    /// CONDSTORE is on: FETCH responses carry MODSEQ.
    pub condstore: bool,
    /// QRESYNC is on: expunges are VANISHED, not EXPUNGE.
    pub qresync: bool,
}

impl View {
    /// Whether the store may have changes for this view: a relevant change event arrived
    /// (or events were lost) since the last sync. Drains the events.
    pub fn has_news(&mut self) -> bool {
        use tokio::sync::broadcast::error::TryRecvError;
        let mut news = std::mem::take(&mut self.dirty);
        let Some(rx) = self.events.as_mut() else {
            return true;
        };
        loop {
            match rx.try_recv() {
                Ok(e) => {
                    news |= match e {
                        ChangeEvent::MessageAdded(s) => s.mailbox == self.mailbox,
                        ChangeEvent::FlagsChanged { mailbox, .. }
                        | ChangeEvent::Expunged { mailbox, .. } => mailbox == self.mailbox,
                        ChangeEvent::MailboxesChanged(a) => a == self.owner,
                    }
                }
                Err(TryRecvError::Empty) => return news,
                Err(TryRecvError::Lagged(_)) => news = true,
                Err(TryRecvError::Closed) => {
                    self.events = None;
                    return true;
                }
            }
        }
    }

    /// The sequence number of a UID.
    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        self.msgs
            .binary_search_by_key(&uid, |m| m.uid)
            .ok()
            .map(|i| i as u32 + 1)
    }

    /// The largest UID (what `*` stands for in a UID set), 0 when empty.
    pub fn max_uid(&self) -> u32 {
        self.msgs.last().map(|m| m.uid).unwrap_or(0)
    }

    /// Indexes into `msgs` of a sequence set (`uid`: of UIDs); `$` is the saved result.
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<usize> {
        if let SequenceSet::Saved = set {
            return self
                .saved
                .iter()
                .filter_map(|u| self.seq_of(*u).map(|s| s as usize - 1))
                .collect();
        }
        let SequenceSet::Ranges(ranges) = set else {
            return Vec::new();
        };
        use mailkeep_imap_proto::cursor::SeqNo;
        let n = self.msgs.len();
        let star = if uid { self.max_uid() } else { n as u32 };
        let v = |s: &SeqNo| match s {
            SeqNo::Num(x) => *x,
            SeqNo::Star => star,
        };
        // Index intervals, merged before they are expanded: overlapping ranges (`1:*,1:*,...`)
        // cost nothing extra.
        let mut spans: Vec<(usize, usize)> = ranges
            .iter()
            .map(|(a, b)| {
                // RFC 9051 9: a range may be written in either order.
                let (lo, hi) = (v(a).min(v(b)), v(a).max(v(b)));
                if uid {
                    (
                        self.msgs.partition_point(|m| m.uid < lo),
                        self.msgs.partition_point(|m| m.uid <= hi),
                    )
                } else {
                    ((lo as usize).saturating_sub(1).min(n), (hi as usize).min(n))
                }
            })
            .filter(|(from, to)| from < to)
            .collect();
        spans.sort_unstable();
        let mut out: Vec<usize> = Vec::new();
        let mut next = 0;
        for (from, to) in spans {
            let from = from.max(next);
            if from < to {
                out.extend(from..to);
                next = to;
            }
        }
        out
    }

    /// Whether a sequence set names a message number that does not exist (RFC 9051 6.4.5:
    /// BAD for non-UID commands).
    pub fn seq_out_of_range(&self, set: &SequenceSet) -> bool {
        let n = self.msgs.len() as u32;
        match set {
            SequenceSet::Saved => false,
            SequenceSet::Ranges(r) => r.iter().any(|(a, b)| {
                use mailkeep_imap_proto::cursor::SeqNo;
                let v = |s: &SeqNo| match s {
                    SeqNo::Num(x) => *x,
                    SeqNo::Star => n,
                };
                // A range with `*` names what exists (nothing in an empty mailbox); only
                // explicit numbers can be missing.
                let explicit = |s: &SeqNo| matches!(s, SeqNo::Num(_));
                explicit(a) && explicit(b) && v(a).max(v(b)) > n
            }),
        }
    }

    /// Removes expunged UIDs from the view, writing EXPUNGE (or VANISHED) responses.
    pub fn remove(&mut self, uids: &[u32], report: Report, out: &mut Vec<u8>) {
        if uids.is_empty() {
            return;
        }
        let doomed: HashSet<u32> = uids.iter().copied().collect();
        let mut gone = Vec::new();
        let (mut index, mut removed) = (0usize, 0usize);
        // One pass, in ascending order, so the cost does not grow with messages x expunges.
        self.msgs.retain(|m| {
            index += 1;
            if !doomed.contains(&m.uid) {
                return true;
            }
            if report.qresync {
                gone.push(m.uid);
            } else {
                // RFC 9051 7.5.1: each EXPUNGE renumbers the messages after it, so the
                // message's number is its place less those expunged before it.
                let seq = index - removed;
                out.extend_from_slice(format!("* {seq} EXPUNGE\r\n").as_bytes());
            }
            removed += 1;
            false
        });
        self.saved.retain(|u| !doomed.contains(u));
        vanished(out, &gone, false);
    }

    /// Brings the view up to date with the store, writing EXPUNGE/VANISHED, EXISTS and FETCH
    /// FLAGS responses for what changed since the last sync.
    pub async fn sync<M: MailStore + ?Sized>(
        &mut self,
        store: &M,
        report: Report,
        out: &mut Vec<u8>,
    ) -> Result<Synced> {
        let Some(mb) = store.mailbox_get(self.mailbox).await? else {
            return Ok(Synced::Gone);
        };
        if mb.highest_modseq.0 == self.known_modseq && mb.uid_next.0 == self.uid_next {
            return Ok(Synced::Ok);
        }
        let since = ModSeq(self.known_modseq);
        let changed = store.changed_since(self.mailbox, since).await?;
        let expunged: Vec<u32> = store
            .expunged_since(self.mailbox, since)
            .await?
            .into_iter()
            .map(|u: Uid| u.0)
            .collect();
        self.remove(&expunged, report, out);
        let expunged: HashSet<u32> = expunged.into_iter().collect();
        let before = self.msgs.len();
        for m in changed {
            if expunged.contains(&m.uid.0) {
                continue;
            }
            match self.msgs.binary_search_by_key(&m.uid.0, |x| x.uid) {
                Ok(i) => {
                    let v = &mut self.msgs[i];
                    if m.modseq.0 > v.modseq {
                        v.modseq = m.modseq.0;
                        if *v.flags != *m.flags {
                            v.flags = m.flags.into();
                            let mut line = format!(
                                "* {} FETCH (UID {} FLAGS ({})",
                                i + 1,
                                v.uid,
                                v.flags.join(" ")
                            );
                            if report.condstore {
                                line.push_str(&format!(" MODSEQ ({})", v.modseq));
                            }
                            line.push_str(")\r\n");
                            out.extend_from_slice(line.as_bytes());
                        }
                    }
                }
                // New messages have higher UIDs than any in the view (UIDs only ascend).
                Err(i) if i == self.msgs.len() => self.msgs.push(m.into()),
                Err(i) => self.msgs.insert(i, m.into()),
            }
        }
        if self.msgs.len() > before {
            out.extend_from_slice(format!("* {} EXISTS\r\n", self.msgs.len()).as_bytes());
        }
        self.known_modseq = mb.highest_modseq.0;
        self.uid_next = mb.uid_next.0;
        Ok(Synced::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailkeep_imap_proto::cursor::SeqNo;

    fn view(uids: &[u32]) -> View {
        View {
            owner: AccountId(1),
            rights: Rights::ALL,
            mailbox: MailboxId(1),
            name: "INBOX".into(),
            read_only: false,
            uid_validity: 1,
            msgs: uids
                .iter()
                .map(|u| Msg {
                    uid: *u,
                    modseq: 1,
                    flags: Arc::from(Vec::new()),
                    internal_date: 0,
                    size: 1,
                })
                .collect(),
            known_modseq: 1,
            uid_next: uids.last().map(|u| u + 1).unwrap_or(1),
            saved: vec![],
            events: None,
            dirty: false,
        }
    }

    #[test]
    fn expunges_are_numbered_as_each_renumbers() {
        let mut v = view(&[1, 2, 3, 4, 5]);
        let mut out = Vec::new();
        let report = Report {
            condstore: false,
            qresync: false,
        };
        v.remove(&[4, 2, 9], report, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "* 2 EXPUNGE\r\n* 3 EXPUNGE\r\n"
        );
        assert_eq!(
            v.msgs.iter().map(|m| m.uid).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        let mut out = Vec::new();
        v.remove(
            &[5, 1],
            Report {
                condstore: true,
                qresync: true,
            },
            &mut out,
        );
        assert_eq!(String::from_utf8(out).unwrap(), "* VANISHED 1,5\r\n");
    }

    fn set(r: &[(SeqNo, SeqNo)]) -> SequenceSet {
        SequenceSet::Ranges(r.to_vec())
    }

    #[test]
    fn sets_resolve_by_number_and_by_uid() {
        use SeqNo::{Num, Star};
        let v = view(&[3, 5, 9, 10, 20]);
        assert_eq!(v.resolve(&set(&[(Num(2), Num(3))]), false), vec![1, 2]);
        assert_eq!(v.resolve(&set(&[(Star, Num(4))]), false), vec![3, 4]);
        assert_eq!(v.resolve(&set(&[(Num(4), Num(10))]), true), vec![1, 2, 3]);
        assert_eq!(
            v.resolve(&set(&[(Num(21), Star)]), true),
            vec![4],
            "* is the largest UID"
        );
        assert_eq!(
            v.resolve(&set(&[(Num(6), Num(8))]), true),
            Vec::<usize>::new()
        );
        // Overlapping and repeated ranges cost nothing extra and give each message once.
        let many: Vec<_> = (0..10_000).map(|_| (Num(1), Star)).collect();
        assert_eq!(v.resolve(&set(&many), false), vec![0, 1, 2, 3, 4]);
        assert_eq!(
            v.resolve(
                &set(&[(Num(5), Num(5)), (Num(1), Num(2)), (Num(2), Num(3))]),
                false
            ),
            vec![0, 1, 2, 4]
        );
        let mut v = v;
        v.saved = vec![9, 20, 99];
        assert_eq!(v.resolve(&SequenceSet::Saved, true), vec![2, 4]);
        assert!(v.seq_out_of_range(&set(&[(Num(6), Num(6))])));
        assert!(!v.seq_out_of_range(&set(&[(Num(1), Star)])));
        assert!(
            !view(&[]).seq_out_of_range(&set(&[(Num(1), Star)])),
            "* in an empty mailbox"
        );
    }
}
