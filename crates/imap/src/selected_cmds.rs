//! Selected-state commands (RFC 9051 6.4) and APPEND: FETCH, STORE, SEARCH, SORT, THREAD,
//! COPY, MOVE, EXPUNGE.
//!
//! Implementation notes:
//! - Sequence sets are resolved against the session's [`crate::view::View`], never against
//!   the store directly, so numbers mean what the client was told.
//! - FETCH reads only what the items need: flags and sizes come from the view, ENVELOPE and
//!   BODYSTRUCTURE from the cached structure (in chunks), content only for body sections.
//! - SEARCH evaluates every message with the same code ([`crate::search`]), so the result is
//!   a naive scan's; messages are parsed only when a criterion looks inside them.

use mail_parser::MessageParser;
use mailkeep_delivery::ingest::{header_len, parse_cache};
use mailkeep_imap_proto::command::AppendMessage;
use mailkeep_imap_proto::cursor::SequenceSet;
use mailkeep_imap_proto::response::{self, sequence_set, Status};
use mailkeep_imap_proto::selected::{
    FetchItem, FetchModifiers, SearchKey, SearchProgram, SearchReturn, SortKey, Store, StoreMode,
    ThreadAlgorithm,
};
use mailkeep_store::{FlagMode, MessageCache, NewMessage, Rights, StoreError, Target};
use mailkeep_types::{MailboxId, ModSeq, Uid};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::acl::permitted_flags;
use crate::fetch::{fetch_line_into, needs_content, sets_seen, FetchError, Meta};
use crate::search::{matches_all, needs_body, needs_message, Candidate, Context, QuickReject};
use crate::session::{io_err, now_micros, Flow, Res, Session};
use crate::sort;
use crate::util::{cores, parse_date_time};
use crate::view::Msg;

/// Messages whose structure is read from the store at once during FETCH.
const FETCH_CHUNK: usize = 500;
/// Messages in the first group of a FETCH; each next group doubles, up to the chunk size.
const FIRST_GROUP: usize = 16;
/// Messages read at once for FETCH of content (bounded in bytes too, see FETCH_CHUNK_BYTES).
const CONTENT_CHUNK: usize = 100;
/// Bytes of content read at once for FETCH.
const FETCH_CHUNK_BYTES: u64 = 8 << 20;
/// Messages loaded and evaluated per search task.
const SEARCH_CHUNK: usize = 500;

fn has_modseq_key(keys: &[SearchKey]) -> bool {
    keys.iter().any(|k| match k {
        SearchKey::ModSeq(_) => true,
        SearchKey::Not(k) => has_modseq_key(std::slice::from_ref(k)),
        SearchKey::Or(a, b) => {
            has_modseq_key(std::slice::from_ref(a)) || has_modseq_key(std::slice::from_ref(b))
        }
        SearchKey::And(ks) => has_modseq_key(ks),
        _ => false,
    })
}

fn valid_flag(f: &str) -> bool {
    // RFC 9051 2.3.2: the system flags, or a keyword atom.
    if let Some(sys) = f.strip_prefix('\\') {
        return ["Answered", "Flagged", "Deleted", "Seen", "Draft"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(sys));
    }
    !f.is_empty()
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    fn check_set(&mut self, tag: &str, set: &SequenceSet, uid: bool) -> Option<Flow> {
        let view = self.view.as_ref()?;
        if !uid && view.seq_out_of_range(set) {
            // RFC 9051 6.4.5: a message number that does not exist is an error.
            return Some(self.bad(Some(tag), "invalid message sequence number"));
        }
        None
    }

    pub(crate) async fn fetch(
        &mut self,
        tag: &str,
        uid: bool,
        set: SequenceSet,
        mut items: Vec<FetchItem>,
        modifiers: FetchModifiers,
    ) -> Res {
        if let Some(f) = self.check_set(tag, &set, uid) {
            return Ok(f);
        }
        // RFC 9051 6.4.9: UID FETCH always reports UIDs.
        if uid && !items.contains(&FetchItem::Uid) {
            items.insert(0, FetchItem::Uid);
        }
        if modifiers.changed_since.is_some() || items.contains(&FetchItem::ModSeq) {
            // RFC 7162 3.1: CONDSTORE-enabling; CHANGEDSINCE implies MODSEQ.
            self.condstore = true;
            if !items.contains(&FetchItem::ModSeq) {
                items.push(FetchItem::ModSeq);
            }
        }
        let store = self.server.store.clone();
        let utf8 = self.utf8();
        let Some(view) = self.view.as_mut() else {
            return Ok(Flow::Continue);
        };
        let mailbox = view.mailbox;
        let mut idx = view.resolve(&set, uid);
        if let Some(since) = modifiers.changed_since {
            idx.retain(|i| view.msgs[*i].modseq > since);
            if modifiers.vanished {
                // RFC 7162 3.2.6: expunged UIDs of the set, as VANISHED (EARLIER).
                let max = view.uid_next.saturating_sub(1);
                let gone: Vec<u32> = store
                    .expunged_since(mailbox, ModSeq(since))
                    .await?
                    .into_iter()
                    .map(|u| u.0)
                    .filter(|u| set.contains(*u, max))
                    .collect();
                response::vanished(&mut self.out, &gone, true);
            }
        }
        // Setting \Seen (a non-PEEK body fetch) happens first, so FLAGS shows it.
        let mut seen_now: Vec<u32> = Vec::new();
        // RFC 4314 4: a FETCH that implies \Seen sets it only with the "s" right.
        if sets_seen(&items) && !view.read_only && view.rights.contains(Rights::SEEN) {
            let unseen: Vec<Uid> = idx
                .iter()
                .map(|i| &view.msgs[*i])
                .filter(|m| !m.flags.iter().any(|f| f == "\\Seen"))
                .map(|m| Uid(m.uid))
                .collect();
            if !unseen.is_empty() {
                let up = store
                    .flags_update(mailbox, &unseen, FlagMode::Add, &["\\Seen".into()], None)
                    .await?;
                for (u, modseq, flags) in up.changed {
                    if let Ok(i) = view.msgs.binary_search_by_key(&u.0, |m| m.uid) {
                        view.msgs[i].modseq = modseq.0;
                        view.msgs[i].flags = flags.into();
                        seen_now.push(u.0);
                    }
                }
            }
        }
        let needs_structure = items
            .iter()
            .any(|i| matches!(i, FetchItem::Body | FetchItem::BodyStructure));
        let needs_cache = needs_structure || items.contains(&FetchItem::Envelope);
        let content = needs_content(&items);
        let mut with_flags = items.clone();
        if !items.contains(&FetchItem::Flags) {
            with_flags.push(FetchItem::Flags);
        }
        let mut failed: Option<FetchError> = None;
        // Groups of messages read together: bounded in count, and in bytes when content is
        // read, so memory stays bounded whatever the set.
        // With their sizes: content groups in flight together stay within FETCH_CHUNK_BYTES.
        let mut groups: Vec<(&[usize], u64)> = Vec::new();
        if let Some(view) = self.view.as_ref() {
            let mut start = 0;
            let mut bytes = 0u64;
            for (k, i) in idx.iter().enumerate() {
                // The first groups are small, so the client has responses to parse while the
                // later ones are read.
                let full = if content { CONTENT_CHUNK } else { FETCH_CHUNK };
                let limit = full.min(FIRST_GROUP << groups.len().min(16));
                if k > start && (k - start >= limit || (content && bytes >= FETCH_CHUNK_BYTES)) {
                    groups.push((&idx[start..k], bytes));
                    start = k;
                    bytes = 0;
                }
                bytes += view.msgs[*i].size;
            }
            if start < idx.len() {
                groups.push((&idx[start..], bytes));
            }
        }
        // Each group is read and rendered by a task of its own, a few at once (one per
        // core), and written out in order: the session only copies finished responses.
        let job = FetchJob {
            mailbox,
            items: std::sync::Arc::new(items),
            with_flags: std::sync::Arc::new(with_flags),
            seen_now: std::sync::Arc::new(seen_now),
            needs_structure,
            needs_cache,
            content,
            utf8,
        };
        let in_flight = cores().clamp(2, 4);
        let mut pending = std::collections::VecDeque::new();
        let mut pending_bytes = 0u64;
        let single = groups.len() == 1;
        let mut groups = groups.into_iter().peekable();
        if single {
            // One group (a client reading one message): no task hop.
            let msgs = self.group(groups.next().map(|(g, _)| g).unwrap_or_default());
            let (lines, err) = job.clone().run(store.clone(), msgs).await?;
            failed = err;
            self.out.extend_from_slice(&lines);
        }
        loop {
            while pending.len() < in_flight {
                let Some((_, bytes)) = groups.peek() else {
                    break;
                };
                // Memory: the content read at once stays bounded whatever the parallelism.
                if content && !pending.is_empty() && pending_bytes + bytes > FETCH_CHUNK_BYTES {
                    break;
                }
                let Some((chunk, bytes)) = groups.next() else {
                    break;
                };
                let msgs = self.group(chunk);
                pending_bytes += bytes;
                pending.push_back((tokio::spawn(job.clone().run(store.clone(), msgs)), bytes));
            }
            let Some((task, bytes)) = pending.pop_front() else {
                break;
            };
            pending_bytes -= bytes;
            let (lines, err) = task
                .await
                .map_err(|e| StoreError::Backend(format!("fetch task: {e}")))??;
            if err.is_some() {
                failed = err;
            }
            if self.out.is_empty() {
                // Most of a big FETCH: the group's bytes go out as they are, not copied.
                self.out = lines;
            } else {
                self.out.extend_from_slice(&lines);
            }
            // Each group goes out as soon as it is ready: the client parses while the
            // next ones are read.
            self.flush().await.map_err(io_err)?;
        }
        match failed {
            // RFC 3516 4.2: a content transfer encoding we cannot undo.
            Some(FetchError::Binary(e)) => {
                self.tagged(tag, Status::No, Some("UNKNOWN-CTE"), &e.to_string())
            }
            Some(e) => self.tagged(tag, Status::No, None, &e.to_string()),
            None => self.tagged(tag, Status::Ok, None, "FETCH completed"),
        }
        Ok(Flow::Continue)
    }

    /// The view's messages at these indexes, with their sequence numbers.
    fn group(&self, chunk: &[usize]) -> Vec<(Msg, u32)> {
        match self.view.as_ref() {
            Some(view) => chunk
                .iter()
                .map(|i| (view.msgs[*i].clone(), *i as u32 + 1))
                .collect(),
            None => Vec::new(),
        }
    }

    pub(crate) async fn store(&mut self, tag: &str, uid: bool, st: Store) -> Res {
        if let Some(f) = self.check_set(tag, &st.set, uid) {
            return Ok(f);
        }
        if let Some(bad) = st.flags.iter().find(|f| !valid_flag(f)) {
            if !bad.eq_ignore_ascii_case("\\Recent") {
                return Ok(self.bad(
                    Some(tag),
                    &format!("{bad} is not a flag that can be stored"),
                ));
            }
        }
        if st.unchanged_since.is_some() {
            self.condstore = true;
        }
        let condstore = self.condstore;
        let store = self.server.store.clone();
        let Some(view) = self.view.as_mut() else {
            return Ok(Flow::Continue);
        };
        if view.read_only {
            self.tagged(
                tag,
                Status::No,
                Some("READ-ONLY"),
                "the mailbox is read-only",
            );
            return Ok(Flow::Continue);
        }
        let idx = view.resolve(&st.set, uid);
        let uids: Vec<Uid> = idx.iter().map(|i| Uid(view.msgs[*i].uid)).collect();
        let mut mode = match st.mode {
            StoreMode::Replace => FlagMode::Replace,
            StoreMode::Add => FlagMode::Add,
            StoreMode::Remove => FlagMode::Remove,
        };
        let mut flags = st.flags.clone();
        // RFC 4314 4: "s" for \Seen, "t" for \Deleted, "w" for the others; flags without
        // their right are left alone, and only when none may change is it refused.
        let all_flag_rights = Rights::SEEN
            .union(Rights::WRITE)
            .union(Rights::DELETE_MESSAGES);
        if !view.rights.contains(all_flag_rights) {
            flags = permitted_flags(view.rights, &st.flags);
            if flags.is_empty() && !st.flags.is_empty() {
                self.tagged(
                    tag,
                    Status::No,
                    Some("NOPERM"),
                    "permission denied: no right to change these flags",
                );
                return Ok(Flow::Continue);
            }
            if mode == FlagMode::Replace {
                // Replacing touches only the flags the user may change, in one update.
                mode = FlagMode::ReplaceAllowed(view.rights);
            }
        }
        let up = store
            .flags_update(
                view.mailbox,
                &uids,
                mode,
                &flags,
                st.unchanged_since.map(ModSeq),
            )
            .await?;
        let mut changed = Vec::new();
        for (u, modseq, flags) in up.changed {
            if let Ok(i) = view.msgs.binary_search_by_key(&u.0, |m| m.uid) {
                view.msgs[i].modseq = modseq.0;
                view.msgs[i].flags = flags.into();
                changed.push(i);
            }
        }
        let modified: Vec<u32> = up.modified.iter().map(|u| u.0).collect();
        let mut o = String::new();
        for i in &idx {
            let m = &view.msgs[*i];
            if modified.contains(&m.uid) {
                continue;
            }
            // .SILENT suppresses FLAGS; with CONDSTORE the new MODSEQ is still reported
            // (RFC 7162 3.1.3).
            if st.silent && !(condstore && changed.contains(i)) {
                continue;
            }
            let mut parts = Vec::new();
            if uid {
                parts.push(format!("UID {}", m.uid));
            }
            if !st.silent {
                parts.push(format!("FLAGS ({})", m.flags.join(" ")));
            }
            if condstore {
                parts.push(format!("MODSEQ ({})", m.modseq));
            }
            o.push_str(&format!("* {} FETCH ({})\r\n", i + 1, parts.join(" ")));
        }
        self.out.extend_from_slice(o.as_bytes());
        if !modified.is_empty() {
            // RFC 7162 3.1.3: MODIFIED lists what UNCHANGEDSINCE left alone.
            let view = self.view.as_ref();
            let numbers: Vec<u32> = if uid {
                modified
            } else {
                modified
                    .iter()
                    .filter_map(|u| view.and_then(|v| v.seq_of(*u)))
                    .collect()
            };
            let set = sequence_set(&numbers).unwrap_or_default();
            self.tagged(
                tag,
                Status::Ok,
                Some(&format!("MODIFIED {set}")),
                "conditional STORE failed for some",
            );
        } else {
            self.tagged(tag, Status::Ok, None, "STORE completed");
        }
        Ok(Flow::Continue)
    }

    /// Evaluates a search program; the matching indexes into the view. Criteria on flags,
    /// dates and sizes use the view; header criteria read only the stored header sections;
    /// BODY and TEXT read the content. Messages are loaded in chunks and evaluated on the
    /// blocking pool, a few chunks at a time, so a search uses every core.
    async fn run_search(
        &mut self,
        program: &SearchProgram,
    ) -> Result<Result<Vec<usize>, String>, StoreError> {
        if let Some(cs) = &program.charset {
            if !matches!(cs.as_str(), "US-ASCII" | "UTF-8") {
                return Ok(Err(cs.clone()));
            }
        }
        let store = self.server.store.clone();
        let Some(view) = self.view.as_ref() else {
            return Ok(Ok(Vec::new()));
        };
        let deep = needs_message(&program.keys);
        let body = needs_body(&program.keys);
        let now = now_micros() / 1_000_000;
        let (max_seq, max_uid) = (view.msgs.len() as u32, view.max_uid());
        if !deep {
            let cx = Context {
                max_seq,
                max_uid,
                saved: &view.saved,
                now,
            };
            let hits = view
                .msgs
                .iter()
                .enumerate()
                .filter(|(i, m)| {
                    let c = Candidate {
                        seq: *i as u32 + 1,
                        uid: m.uid,
                        flags: &m.flags,
                        recent: false,
                        internal_date: m.internal_date,
                        size: m.size,
                        modseq: m.modseq,
                        message: None,
                    };
                    matches_all(&program.keys, &c, &cx)
                })
                .map(|(i, _)| i)
                .collect();
            return Ok(Ok(hits));
        }
        let keys = std::sync::Arc::new(program.keys.clone());
        let saved = std::sync::Arc::new(view.saved.clone());
        let mailbox = view.mailbox;
        let parallel = cores();
        let mut tasks = tokio::task::JoinSet::new();
        let mut hits = Vec::new();
        for (c, chunk) in view.msgs.chunks(SEARCH_CHUNK).enumerate() {
            let first = c * SEARCH_CHUNK;
            let msgs: Vec<Msg> = chunk.to_vec();
            let (store, keys, saved) = (store.clone(), keys.clone(), saved.clone());
            tasks.spawn(async move {
                let uids: Vec<Uid> = msgs.iter().map(|m| Uid(m.uid)).collect();
                let data = if body {
                    let bytes = msgs.iter().map(|m| m.size).sum();
                    Loaded::Contents(store.message_contents(mailbox, &uids, bytes).await?)
                } else {
                    Loaded::Headers(store.message_headers(mailbox, &uids).await?)
                };
                let found = tokio::task::spawn_blocking(move || {
                    let cx = Context {
                        max_seq,
                        max_uid,
                        saved: &saved,
                        now,
                    };
                    let parser = MessageParser::default();
                    let quick = QuickReject::new(&keys);
                    let mut scratch = Vec::new();
                    let mut found = Vec::new();
                    let data = data.messages();
                    let mut di = 0;
                    for (k, m) in msgs.iter().enumerate() {
                        while di < data.len() && data[di].0 .0 < m.uid {
                            di += 1;
                        }
                        let Some(&(_, raw)) = data.get(di).filter(|d| d.0 .0 == m.uid) else {
                            continue;
                        };
                        let header = &raw[..header_len(raw)];
                        if quick
                            .as_ref()
                            .is_some_and(|q| q.rejects(header, &mut scratch))
                        {
                            continue;
                        }
                        let parsed = parser.parse(raw);
                        let c = Candidate {
                            seq: (first + k) as u32 + 1,
                            uid: m.uid,
                            flags: &m.flags,
                            recent: false,
                            internal_date: m.internal_date,
                            size: m.size,
                            modseq: m.modseq,
                            message: parsed.as_ref(),
                        };
                        if matches_all(&keys, &c, &cx) {
                            found.push(first + k);
                        }
                    }
                    found
                })
                .await
                .map_err(|e| StoreError::Backend(format!("search task: {e}")))?;
                Ok::<_, StoreError>(found)
            });
            while tasks.len() >= parallel {
                if let Some(r) = tasks.join_next().await {
                    hits.extend(r.map_err(|e| StoreError::Backend(format!("search task: {e}")))??);
                }
            }
        }
        while let Some(r) = tasks.join_next().await {
            hits.extend(r.map_err(|e| StoreError::Backend(format!("search task: {e}")))??);
        }
        hits.sort_unstable();
        Ok(Ok(hits))
    }

    pub(crate) async fn search(
        &mut self,
        tag: &str,
        uid: bool,
        returns: Option<SearchReturn>,
        program: SearchProgram,
    ) -> Res {
        let hits = match self.run_search(&program).await? {
            Ok(h) => h,
            Err(cs) => {
                self.tagged(
                    tag,
                    Status::No,
                    Some("BADCHARSET (US-ASCII UTF-8)"),
                    &format!("charset {cs} is not supported"),
                );
                return Ok(Flow::Continue);
            }
        };
        let modseq_key = has_modseq_key(&program.keys);
        if modseq_key {
            self.condstore = true;
        }
        let rev2 = self.rev2;
        let Some(view) = self.view.as_mut() else {
            return Ok(Flow::Continue);
        };
        let numbers: Vec<u32> = hits
            .iter()
            .map(|i| {
                if uid {
                    view.msgs[*i].uid
                } else {
                    *i as u32 + 1
                }
            })
            .collect();
        let highest = modseq_key
            .then(|| hits.iter().map(|i| view.msgs[*i].modseq).max())
            .flatten();
        match returns {
            None if !rev2 => response::search_line(&mut self.out, &numbers, highest),
            returns => {
                let mut r = returns.unwrap_or_default();
                // RFC 4731 3.1: RETURN () means ALL.
                if !(r.min || r.max || r.all || r.count || r.save) {
                    r.all = true;
                }
                if r.save {
                    // RFC 5182 2.1: with only MIN and/or MAX, only those are saved.
                    let uids: Vec<u32> = hits.iter().map(|i| view.msgs[*i].uid).collect();
                    view.saved = if (r.min || r.max) && !r.all && !r.count {
                        let mut s = Vec::new();
                        if r.min {
                            s.extend(uids.first());
                        }
                        if r.max {
                            s.extend(uids.last());
                        }
                        s.dedup();
                        s
                    } else {
                        uids
                    };
                }
                let only_save = r.save && !(r.min || r.max || r.all || r.count);
                if !only_save {
                    response::esearch(
                        &mut self.out,
                        &response::ESearch {
                            tag,
                            uid,
                            min: r.min.then(|| numbers.first().copied()).flatten(),
                            max: r.max.then(|| numbers.last().copied()).flatten(),
                            count: r.count.then_some(numbers.len()),
                            all: r.all.then_some(numbers.as_slice()),
                            modseq: highest,
                        },
                    );
                }
            }
        }
        self.tagged(tag, Status::Ok, None, "SEARCH completed");
        Ok(Flow::Continue)
    }

    /// The header sections of these view indexes (SORT and THREAD look only at headers).
    async fn load_raw(&self, hits: &[usize]) -> Result<Vec<(usize, Vec<u8>)>, StoreError> {
        let Some(view) = self.view.as_ref() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(hits.len());
        for chunk in hits.chunks(FETCH_CHUNK) {
            let uids: Vec<Uid> = chunk.iter().map(|i| Uid(view.msgs[*i].uid)).collect();
            let headers = self
                .server
                .store
                .message_headers(view.mailbox, &uids)
                .await?;
            let mut it = headers.into_iter().peekable();
            for i in chunk {
                let uid = view.msgs[*i].uid;
                while it.peek().is_some_and(|(u, _)| u.0 < uid) {
                    it.next();
                }
                if let Some((_, h)) = it.next_if(|(u, _)| u.0 == uid) {
                    out.push((*i, h));
                }
            }
        }
        Ok(out)
    }

    /// Answers a SORT or THREAD: searches, reads the header sections of the hits, and writes
    /// the untagged line `answer` makes of them (in mailbox order).
    async fn sort_or_thread(
        &mut self,
        tag: &str,
        uid: bool,
        program: &SearchProgram,
        verb: &str,
        answer: impl FnOnce(&[sort::Item<'_>]) -> String,
    ) -> Res {
        let hits = match self.run_search(program).await? {
            Ok(h) => h,
            Err(cs) => {
                self.tagged(
                    tag,
                    Status::No,
                    Some("BADCHARSET (US-ASCII UTF-8)"),
                    &format!("charset {cs} is not supported"),
                );
                return Ok(Flow::Continue);
            }
        };
        let raws = self.load_raw(&hits).await?;
        let Some(view) = self.view.as_ref() else {
            return Ok(Flow::Continue);
        };
        let parser = MessageParser::default();
        let parsed: Vec<_> = raws.iter().map(|(_, r)| parser.parse(r)).collect();
        let items: Vec<sort::Item<'_>> = raws
            .iter()
            .zip(&parsed)
            .map(|((i, _), p)| {
                let m = &view.msgs[*i];
                sort::Item {
                    id: if uid { m.uid } else { *i as u32 + 1 },
                    internal_date: m.internal_date,
                    size: m.size,
                    message: p.as_ref(),
                }
            })
            .collect();
        let line = format!("* {verb}{}\r\n", answer(&items));
        self.out.extend_from_slice(line.as_bytes());
        self.tagged(tag, Status::Ok, None, &format!("{verb} completed"));
        Ok(Flow::Continue)
    }

    pub(crate) async fn sort(
        &mut self,
        tag: &str,
        uid: bool,
        keys: Vec<(bool, SortKey)>,
        program: SearchProgram,
    ) -> Res {
        self.sort_or_thread(tag, uid, &program, "SORT", |items| {
            sort::sort(&keys, items)
                .iter()
                .map(|n| format!(" {n}"))
                .collect()
        })
        .await
    }

    pub(crate) async fn thread(
        &mut self,
        tag: &str,
        uid: bool,
        algorithm: ThreadAlgorithm,
        program: SearchProgram,
    ) -> Res {
        self.sort_or_thread(tag, uid, &program, "THREAD", |items| {
            let threads = match algorithm {
                ThreadAlgorithm::OrderedSubject => sort::ordered_subject(items),
                ThreadAlgorithm::References => sort::references(items),
            };
            format!(" {}", sort::thread_response(&threads))
        })
        .await
    }

    pub(crate) async fn copy(
        &mut self,
        tag: &str,
        uid: bool,
        is_move: bool,
        set: SequenceSet,
        raw: &[u8],
    ) -> Res {
        if let Some(f) = self.check_set(tag, &set, uid) {
            return Ok(f);
        }
        let name = match self.decode_name(raw) {
            Ok(n) => n,
            Err(e) => return Ok(self.bad(Some(tag), &e)),
        };
        let Some(target) = self.insert_target(tag, &name).await? else {
            return Ok(Flow::Continue);
        };
        let dest = target.mailbox;
        let report = self.report();
        let store = self.server.store.clone();
        let Some(view) = self.view.as_mut() else {
            return Ok(Flow::Continue);
        };
        if is_move && view.read_only {
            self.tagged(
                tag,
                Status::No,
                Some("READ-ONLY"),
                "the mailbox is read-only",
            );
            return Ok(Flow::Continue);
        }
        // RFC 6851 4.2: MOVE needs the rights of UID STORE \Deleted ("t") and UID EXPUNGE
        // ("e") on the source, besides COPY's.
        if is_move
            && !view
                .rights
                .contains(Rights::EXPUNGE.union(Rights::DELETE_MESSAGES))
        {
            self.tagged(
                tag,
                Status::No,
                Some("NOPERM"),
                "permission denied: moving out needs the t and e rights",
            );
            return Ok(Flow::Continue);
        }
        let uids: Vec<Uid> = view
            .resolve(&set, uid)
            .iter()
            .map(|i| Uid(view.msgs[*i].uid))
            .collect();
        if uids.is_empty() {
            self.tagged(
                tag,
                Status::Ok,
                None,
                if is_move {
                    "MOVE completed"
                } else {
                    "COPY completed"
                },
            );
            return Ok(Flow::Continue);
        }
        // RFC 4314 4: the copies keep only the flags the user may set in the target.
        let pairs = store
            .copy(view.mailbox, &uids, dest.id, is_move, target.rights)
            .await?;
        let src: Vec<u32> = pairs.iter().map(|(s, _)| s.0).collect();
        let dst: Vec<u32> = pairs.iter().map(|(_, d)| d.0).collect();
        // Filing into or out of Junk teaches the owner's spam model, in the background.
        let from_role = match store.mailbox_get(view.mailbox).await {
            Ok(m) => m.and_then(|m| m.role),
            Err(_) => None,
        };
        let me = self.user.as_ref().map(|u| u.id);
        let lesson = mailkeep_delivery::learn::lesson(from_role, dest.role);
        let model = lesson.map(|is_spam| if is_spam { dest.account } else { view.owner });
        // Only a user's own filing teaches their model: someone with rights on another's
        // shared Junk must not.
        if let (Some(is_spam), Some(model), true) = (lesson, model, model == me) {
            // One learning task per session at a time: a client moving mail back and forth
            // waits for the last one instead of piling up work.
            if let Some(previous) = self.learning.take() {
                let _ = previous.await;
            }
            let (store, mailbox, uids) = (
                store.clone(),
                dest.id,
                pairs.iter().map(|p| p.1).collect::<Vec<_>>(),
            );
            self.learning = Some(tokio::spawn(async move {
                match mailkeep_delivery::learn::learn(&store, mailbox, &uids, model.0, is_spam)
                    .await
                {
                    Ok(n) => tracing::info!(
                        account = model.0,
                        learnt = n,
                        spam = is_spam,
                        "spam model taught by a move"
                    ),
                    Err(e) => {
                        tracing::warn!(account = model.0, error = %e, "teaching the spam model failed")
                    }
                }
            }));
        }
        // RFC 4315 3: COPYUID uidvalidity source-set dest-set, in the same order.
        let code = match (sequence_set(&src), sequence_set(&dst)) {
            (Some(s), Some(d)) => Some(format!("COPYUID {} {s} {d}", dest.uid_validity.0)),
            _ => None,
        };
        if is_move {
            // RFC 6851 3.3: COPYUID untagged, then the expunges, then the tagged OK.
            if let Some(c) = &code {
                response::status_line(&mut self.out, None, Status::Ok, Some(c), "moved");
            }
            view.remove(&src, report, &mut self.out);
            self.tagged(tag, Status::Ok, None, "MOVE completed");
        } else {
            self.tagged(tag, Status::Ok, code.as_deref(), "COPY completed");
        }
        Ok(Flow::Continue)
    }

    pub(crate) async fn expunge(&mut self, tag: &str, uids: Option<SequenceSet>) -> Res {
        let report = self.report();
        let store = self.server.store.clone();
        let Some(view) = self.view.as_mut() else {
            return Ok(Flow::Continue);
        };
        if view.read_only {
            self.tagged(
                tag,
                Status::No,
                Some("READ-ONLY"),
                "the mailbox is read-only",
            );
            return Ok(Flow::Continue);
        }
        if !view.rights.contains(Rights::EXPUNGE) {
            // RFC 4314 4: EXPUNGE needs "e".
            self.tagged(
                tag,
                Status::No,
                Some("NOPERM"),
                "permission denied: expunging needs the e right",
            );
            return Ok(Flow::Continue);
        }
        let max = view.max_uid();
        let doomed: Vec<Uid> = view
            .msgs
            .iter()
            .filter(|m| m.flags.iter().any(|f| f == "\\Deleted"))
            .filter(|m| match &uids {
                // RFC 4315 2.1: UID EXPUNGE removes only these.
                Some(SequenceSet::Saved) => view.saved.contains(&m.uid),
                Some(set) => set.contains(m.uid, max),
                None => true,
            })
            .map(|m| Uid(m.uid))
            .collect();
        let gone = if doomed.is_empty() {
            Vec::new()
        } else {
            store.expunge(view.mailbox, &doomed).await?
        };
        let gone: Vec<u32> = gone.into_iter().map(|u| u.0).collect();
        view.remove(&gone, report, &mut self.out);
        self.tagged(tag, Status::Ok, None, "EXPUNGE completed");
        Ok(Flow::Continue)
    }

    pub(crate) async fn append(
        &mut self,
        tag: &str,
        raw: &[u8],
        messages: Vec<AppendMessage>,
    ) -> Res {
        let name = match self.decode_name(raw) {
            Ok(n) => n,
            Err(e) => return Ok(self.bad(Some(tag), &e)),
        };
        // Flags without their right are dropped (RFC 4314 4).
        let Some(target) = self.insert_target(tag, &name).await? else {
            return Ok(Flow::Continue);
        };
        let rights = target.rights;
        let mb = target.mailbox;
        // The message belongs to, and counts against, the mailbox's owner.
        let owner_key = match (&target.owner, &self.user) {
            (Some(o), _) => o.clone(),
            (None, Some(u)) => u.address.key(),
            (None, None) => return Ok(Flow::Continue),
        };
        let mut total = 0u64;
        let mut dates = Vec::with_capacity(messages.len());
        for m in &messages {
            if m.data.is_empty() {
                return Ok(self.bad(Some(tag), "empty message"));
            }
            if !m.binary && m.data.contains(&0) {
                // RFC 9051 4.3: NUL only in a literal8 (RFC 3516).
                self.tagged(
                    tag,
                    Status::No,
                    None,
                    "the message contains NUL; send it as ~{n} (BINARY)",
                );
                return Ok(Flow::Continue);
            }
            if let Some(bad) = m
                .flags
                .iter()
                .find(|f| !valid_flag(f) && !f.eq_ignore_ascii_case("\\Recent"))
            {
                return Ok(self.bad(
                    Some(tag),
                    &format!("{bad} is not a flag that can be stored"),
                ));
            }
            let date = match &m.date {
                Some(d) => match parse_date_time(d) {
                    Some(t) => t,
                    None => return Ok(self.bad(Some(tag), &format!("invalid date-time {d:?}"))),
                },
                None => now_micros() / 1_000_000,
            };
            dates.push(date);
            total += m.data.len() as u64;
        }
        let store = self.server.store.clone();
        if let Some(now) = store.user_get(&owner_key).await? {
            if now.quota > 0 && now.used.saturating_add(total) > now.quota {
                // RFC 9208 4.3.
                self.tagged(tag, Status::No, Some("OVERQUOTA"), "the mailbox is full");
                return Ok(Flow::Continue);
            }
        }
        let mut new = Vec::with_capacity(messages.len());
        for (m, date) in messages.into_iter().zip(dates) {
            let blob = store.put_blob(&m.data).await?;
            let blob_size = m.data.len() as u64;
            let data = m.data;
            let (cache, data) = tokio::task::spawn_blocking(move || (parse_cache(&data), data))
                .await
                .map_err(|e| StoreError::Backend(format!("parse task: {e}")))?;
            let headers = data[..(cache.header_size as usize).min(data.len())].to_vec();
            new.push(NewMessage {
                account: mb.account,
                target: Target::Mailbox(mb.id),
                blob_size,
                blob,
                prefix: Vec::new(),
                headers,
                flags: m
                    .flags
                    .into_iter()
                    .filter(|f| !f.eq_ignore_ascii_case("\\Recent") && rights.allows_flag(f))
                    .collect(),
                internal_date: date,
                cache,
                queue_id: None,
            });
        }
        let results = store.deliver(new).await?;
        let mut uids = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Ok(s) => uids.push(s.uid),
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            // MULTIAPPEND is all or nothing (RFC 3502 6.3.11): undo what was stored.
            if !uids.is_empty() {
                store.expunge(mb.id, &uids).await?;
            }
            return Err(e);
        }
        let set = sequence_set(&uids.iter().map(|u| u.0).collect::<Vec<_>>()).unwrap_or_default();
        // RFC 4315 3: APPENDUID uidvalidity uid-set.
        self.tagged(
            tag,
            Status::Ok,
            Some(&format!("APPENDUID {} {set}", mb.uid_validity.0)),
            "APPEND completed",
        );
        Ok(Flow::Continue)
    }
}

/// The messages a search task read: whole contents, or header sections only.
enum Loaded {
    Contents(mailkeep_store::Contents),
    Headers(Vec<(Uid, Vec<u8>)>),
}

impl Loaded {
    /// Each message with its UID, in UID order.
    fn messages(&self) -> Vec<(Uid, &[u8])> {
        match self {
            Loaded::Contents(c) => c.iter().collect(),
            Loaded::Headers(h) => h.iter().map(|(u, d)| (*u, d.as_slice())).collect(),
        }
    }
}

/// What every group of one FETCH needs, shared by its tasks.
#[derive(Clone)]
struct FetchJob {
    mailbox: MailboxId,
    items: std::sync::Arc<Vec<FetchItem>>,
    /// The items plus FLAGS, for messages whose `\Seen` this FETCH set.
    with_flags: std::sync::Arc<Vec<FetchItem>>,
    seen_now: std::sync::Arc<Vec<u32>>,
    needs_structure: bool,
    needs_cache: bool,
    content: bool,
    utf8: bool,
}

impl FetchJob {
    /// Reads one group (messages with their sequence numbers) and renders its FETCH
    /// responses; messages expunged meanwhile are left out (nothing to report).
    async fn run(
        self,
        store: mailkeep_store::SharedStore,
        msgs: Vec<(Msg, u32)>,
    ) -> Result<(Vec<u8>, Option<FetchError>), StoreError> {
        let uids: Vec<Uid> = msgs.iter().map(|(m, _)| Uid(m.uid)).collect();
        let caches: Vec<(u32, MessageCache)> = if self.needs_structure {
            store
                .messages_by_uid(self.mailbox, &uids)
                .await?
                .into_iter()
                .map(|m| (m.uid.0, m.cache))
                .collect()
        } else if self.needs_cache {
            // ENVELOPE alone: the body structure is not decoded.
            store
                .message_envelopes(self.mailbox, &uids)
                .await?
                .into_iter()
                .map(|(u, envelope)| {
                    (
                        u.0,
                        MessageCache {
                            envelope,
                            ..Default::default()
                        },
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let contents = if self.content {
            let bytes = msgs.iter().map(|(m, _)| m.size).sum();
            store.message_contents(self.mailbox, &uids, bytes).await?
        } else {
            mailkeep_store::Contents::default()
        };
        let render = move || {
            let empty = MessageCache::default();
            // Room for the content and a line of metadata each, so the buffer is not copied
            // as it grows.
            let content_bytes: usize = contents.iter().map(|(_, c)| c.len()).sum();
            let mut out = Vec::with_capacity(content_bytes + 128 * msgs.len());
            let mut failed = None;
            let mut contents = contents.iter().peekable();
            let mut ci = 0;
            for (m, seq) in &msgs {
                let cache = if self.needs_cache {
                    while ci < caches.len() && caches[ci].0 < m.uid {
                        ci += 1;
                    }
                    match caches.get(ci) {
                        Some((u, cache)) if *u == m.uid => cache,
                        _ => continue,
                    }
                } else {
                    &empty
                };
                let raw = if self.content {
                    while contents.peek().is_some_and(|(u, _)| u.0 < m.uid) {
                        contents.next();
                    }
                    match contents.next_if(|(u, _)| u.0 == m.uid) {
                        Some((_, r)) => Some(r),
                        None => continue,
                    }
                } else {
                    None
                };
                let meta = Meta {
                    uid: m.uid,
                    flags: &m.flags,
                    recent: false,
                    internal_date: m.internal_date,
                    size: m.size,
                    modseq: m.modseq,
                    envelope: &cache.envelope,
                    body: &cache.body,
                };
                let items = if self.seen_now.contains(&m.uid) {
                    &self.with_flags
                } else {
                    &self.items
                };
                if let Err(e) = fetch_line_into(&mut out, *seq, items, &meta, raw, self.utf8) {
                    failed = Some(e);
                }
            }
            (out, failed)
        };
        // Rendered on this task's worker: groups are small (FETCH_CHUNK), and the groups in
        // flight render on different workers at once.
        Ok(render())
    }
}
