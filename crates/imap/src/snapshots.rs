//! Message lists of big mailboxes kept between SELECTs, so opening a mailbox that was opened
//! before reads only what changed since (the role Dovecot's index files play).
//!
//! - A snapshot is the list a session's view starts from, tagged with the mailbox's
//!   UIDVALIDITY, HIGHESTMODSEQ and UIDNEXT when it was read. SELECT uses it as is when those
//!   still match, or brings a copy up to date with `changed_since`/`expunged_since` (the
//!   same queries a session's sync uses), never trusting it beyond what the store confirms.
//! - Only mailboxes of at least [`MIN_MESSAGES`] are kept (small ones read fast anyway), at
//!   most [`MAX_MESSAGES`] messages in all; the least recently used go first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mailkeep_store::{MailStore, Mailbox, Result};
use mailkeep_types::{AccountId, MailboxId, ModSeq};

use crate::view::{apply_changes, Interner, Msg};

/// Smaller mailboxes are read from the store each time.
pub const MIN_MESSAGES: usize = 1000;
/// Messages kept in all (about 48 bytes each, flags shared).
pub const MAX_MESSAGES: usize = 500_000;

/// The shared snapshots of one server.
#[derive(Default)]
pub struct Snapshots {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<MailboxId, Entry>,
    total: usize,
    tick: u64,
}

struct Entry {
    account: AccountId,
    uid_validity: u32,
    modseq: u64,
    uid_next: u32,
    msgs: Arc<Vec<Msg>>,
    used: u64,
}

impl Snapshots {
    /// The messages of `mb` (as just read from the store), in UID order, current at least to
    /// its HIGHESTMODSEQ.
    pub(crate) async fn load<M: MailStore + ?Sized>(
        &self,
        store: &M,
        mb: &Mailbox,
    ) -> Result<Vec<Msg>> {
        let cached = self.get(mb);
        let msgs = match cached {
            Some((modseq, uid_next, msgs))
                if modseq == mb.highest_modseq.0 && uid_next == mb.uid_next.0 =>
            {
                return Ok((*msgs).clone());
            }
            // Both only grow in one mailbox; anything else is not this mailbox's past.
            Some((modseq, uid_next, msgs))
                if modseq <= mb.highest_modseq.0 && uid_next <= mb.uid_next.0 =>
            {
                let changed = store.changed_since(mb.id, ModSeq(modseq)).await?;
                let gone: Vec<u32> = store
                    .expunged_since(mb.id, ModSeq(modseq))
                    .await?
                    .into_iter()
                    .map(|u| u.0)
                    .collect();
                let mut msgs = (*msgs).clone();
                apply_changes(&mut msgs, changed, &gone);
                msgs
            }
            // Nothing kept, or not this mailbox's past: a full read.
            _ => {
                let mut interner = Interner::default();
                store
                    .changed_since(mb.id, ModSeq(0))
                    .await?
                    .into_iter()
                    .map(|m| interner.msg(m))
                    .collect()
            }
        };
        if msgs.len() >= MIN_MESSAGES {
            self.put(mb, Arc::new(msgs.clone()));
        }
        Ok(msgs)
    }

    fn get(&self, mb: &Mailbox) -> Option<(u64, u32, Arc<Vec<Msg>>)> {
        let mut inner = self.inner.lock().ok()?;
        inner.tick += 1;
        let tick = inner.tick;
        let e = inner.map.get_mut(&mb.id)?;
        // Ids of deleted mailboxes may be reused; UIDVALIDITY values are not (store-sqlite
        // schema 6), and the owner must be the same too.
        if e.uid_validity != mb.uid_validity.0 || e.account != mb.account {
            return None;
        }
        e.used = tick;
        Some((e.modseq, e.uid_next, e.msgs.clone()))
    }

    fn put(&self, mb: &Mailbox, msgs: Arc<Vec<Msg>>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.tick += 1;
        let entry = Entry {
            account: mb.account,
            uid_validity: mb.uid_validity.0,
            modseq: mb.highest_modseq.0,
            uid_next: mb.uid_next.0,
            used: inner.tick,
            msgs,
        };
        let added = entry.msgs.len();
        if let Some(old) = inner.map.insert(mb.id, entry) {
            inner.total -= old.msgs.len();
        }
        inner.total += added;
        while inner.total > MAX_MESSAGES {
            let Some(oldest) = inner
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(id, _)| *id)
            else {
                break;
            };
            if let Some(e) = inner.map.remove(&oldest) {
                inner.total -= e.msgs.len();
            }
        }
    }

    /// How many mailboxes and messages are kept (for tests).
    #[cfg(test)]
    fn size(&self) -> (usize, usize) {
        self.inner
            .lock()
            .map(|i| (i.map.len(), i.total))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailkeep_types::{Uid, UidValidity};

    fn mailbox(id: i64, n: u32, modseq: u64) -> Mailbox {
        Mailbox {
            id: MailboxId(id),
            account: AccountId(1),
            name: format!("m{id}"),
            role: None,
            uid_validity: UidValidity(7),
            uid_next: Uid(n + 1),
            highest_modseq: ModSeq(modseq),
            subscribed: false,
        }
    }

    fn msgs(n: u32) -> Arc<Vec<Msg>> {
        Arc::new(
            (1..=n)
                .map(|u| Msg {
                    uid: u,
                    modseq: 1,
                    flags: Arc::from(Vec::new()),
                    internal_date: 0,
                    size: 1,
                })
                .collect(),
        )
    }

    #[test]
    fn least_recently_used_go_first() {
        let s = Snapshots::default();
        let big = (MAX_MESSAGES / 2) as u32;
        s.put(&mailbox(1, big, 5), msgs(big));
        s.put(&mailbox(2, big, 5), msgs(big));
        assert_eq!(s.size(), (2, 2 * big as usize));
        assert!(s.get(&mailbox(1, big, 5)).is_some(), "1 is used again");
        s.put(&mailbox(3, 10, 5), msgs(10));
        assert_eq!(s.size(), (2, big as usize + 10));
        assert!(s.get(&mailbox(2, big, 5)).is_none(), "2 was the oldest");
        // Replacing an entry does not count it twice.
        s.put(&mailbox(3, 20, 6), msgs(20));
        assert_eq!(s.size(), (2, big as usize + 20));
    }

    #[test]
    fn another_uidvalidity_is_another_mailbox() {
        let s = Snapshots::default();
        s.put(&mailbox(1, 10, 5), msgs(10));
        let mut other = mailbox(1, 10, 5);
        other.uid_validity = UidValidity(8);
        assert!(s.get(&other).is_none());
        let mut stranger = mailbox(1, 10, 5);
        stranger.account = AccountId(2);
        assert!(s.get(&stranger).is_none(), "another owner");
    }

    /// A snapshot ahead of the mailbox (not its past) is read afresh.
    #[tokio::test]
    async fn a_snapshot_from_the_future_is_not_used() {
        let s = Snapshots::default();
        s.put(&mailbox(1, 2000, 9), msgs(2000));
        // The store below has no messages at all: a full read gives none.
        let dir = tempfile::tempdir().unwrap();
        let store = mailkeep_store_sqlite::SqliteStore::open(dir.path()).unwrap();
        let got = s.load(&store, &mailbox(1, 10, 5)).await.unwrap();
        assert!(got.is_empty(), "modseq 5 < 9: not this mailbox's past");
    }

    /// A snapshot brought up to date equals a fresh read, whatever changed in between.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn updated_snapshot_equals_a_fresh_read() {
        use mailkeep_store::{
            BlobStore, DirectoryStore, FlagMode, MessageCache, NewMessage, Target,
        };
        use mailkeep_types::{Address, Domain, MailboxRole};
        let dir = tempfile::tempdir().unwrap();
        let store = mailkeep_store_sqlite::SqliteStore::open(dir.path()).unwrap();
        store
            .domain_add(&Domain::parse("a.test").unwrap())
            .await
            .unwrap();
        let account = store
            .user_add(&Address::parse("u@a.test").unwrap(), "h", 0)
            .await
            .unwrap();
        let blob = store.put_blob(b"Subject: x\r\n\r\nx\r\n").await.unwrap();
        let deliver = |n: usize| {
            let blob = blob.clone();
            let store = &store;
            async move {
                let new = (0..n)
                    .map(|_| NewMessage {
                        account,
                        target: Target::Role(MailboxRole::Inbox),
                        blob: blob.clone(),
                        blob_size: 17,
                        prefix: Vec::new(),
                        headers: b"Subject: x\r\n\r\n".to_vec(),
                        flags: vec![],
                        internal_date: 0,
                        cache: MessageCache::default(),
                        queue_id: None,
                    })
                    .collect();
                store.deliver(new).await.unwrap();
            }
        };
        deliver(MIN_MESSAGES + 200).await;
        let inbox = || {
            let store = &store;
            async move {
                store
                    .mailboxes(account)
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|m| m.role == Some(MailboxRole::Inbox))
                    .unwrap()
            }
        };
        let fresh = |mb: Mailbox| {
            let store = &store;
            async move {
                let mut i = Interner::default();
                let v: Vec<(u32, u64, Vec<String>)> = store
                    .changed_since(mb.id, ModSeq(0))
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|m| {
                        let m = i.msg(m);
                        (m.uid, m.modseq, m.flags.to_vec())
                    })
                    .collect();
                v
            }
        };
        let plain = |v: &[Msg]| -> Vec<(u32, u64, Vec<String>)> {
            v.iter()
                .map(|m| (m.uid, m.modseq, m.flags.to_vec()))
                .collect()
        };
        let snaps = Snapshots::default();
        let mb = inbox().await;
        let first = snaps.load(&store, &mb).await.unwrap();
        assert_eq!(plain(&first), fresh(mb.clone()).await);
        assert_eq!(snaps.size().0, 1, "a big mailbox is kept");
        // Unchanged: the kept list as is.
        let again = snaps.load(&store, &inbox().await).await.unwrap();
        assert_eq!(plain(&again), plain(&first));
        // Flags, expunges and new messages since: brought up to date.
        let some: Vec<Uid> = (1..=50).map(Uid).collect();
        store
            .flags_update(mb.id, &some, FlagMode::Add, &["\\Seen".into()], None)
            .await
            .unwrap();
        store.expunge(mb.id, &[Uid(3), Uid(700)]).await.unwrap();
        deliver(5).await;
        let mb = inbox().await;
        let updated = snaps.load(&store, &mb).await.unwrap();
        assert_eq!(plain(&updated), fresh(mb.clone()).await);
        assert_eq!(updated.len(), MIN_MESSAGES + 200 - 2 + 5);
        assert!(updated[0].flags.iter().any(|f| f == "\\Seen"));
        // Messages with the same flags share one slice.
        assert!(Arc::ptr_eq(&updated[0].flags, &updated[1].flags));
    }
}
