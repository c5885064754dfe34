//! SORT and THREAD (ORDEREDSUBJECT, REFERENCES) per RFC 5256, with DISPLAYFROM/DISPLAYTO
//! (RFC 5957).

use std::cmp::Ordering;

use mail_parser::{Address, Message};
use mailkeep_imap_proto::selected::SortKey;

/// Normalizes whitespace: tabs and line breaks to spaces, runs to one space, trimmed.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Strips one `subj-blob` (`[...]` plus spaces) from the start, if present.
fn strip_blob(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let end = rest.find(['[', ']'])?;
    if !rest[end..].starts_with(']') {
        return None;
    }
    Some(rest[end + 1..].trim_start())
}

/// Strips one `subj-refwd` ("re", "fw", "fwd", optional blob, ":") from the start.
fn strip_refwd(s: &str) -> Option<&str> {
    let lower = s.to_lowercase();
    let n = if lower.starts_with("fwd") {
        3
    } else if lower.starts_with("re") || lower.starts_with("fw") {
        2
    } else {
        return None;
    };
    let mut rest = s[n..].trim_start();
    if let Some(r) = strip_blob(rest) {
        rest = r;
    }
    rest.strip_prefix(':')
}

/// The base subject (RFC 5256 2.1), lower-cased for comparison (i;unicode-casemap).
pub fn base_subject(subject: &str) -> String {
    base_subject_and_reply(subject).0
}

/// The base subject, and whether the subject marked a reply or forward (RFC 5256 2.1: text
/// was removed by steps 2, 3 or 6).
pub fn base_subject_and_reply(subject: &str) -> (String, bool) {
    // (1) decoded (the caller passes the RFC 2047-decoded subject), whitespace normalized.
    let mut s = squash(subject);
    let mut reply = false;
    loop {
        // (2) trailing "(fwd)" and spaces.
        loop {
            let t = s.trim_end();
            let lower = t.to_lowercase();
            if lower.ends_with("(fwd)") {
                reply = true;
                s = t[..t.len() - 5].to_string();
            } else {
                s = t.to_string();
                break;
            }
        }
        // (3)-(5) leaders: "re:", "fwd:", "[blob] re:" and a lone leading blob.
        loop {
            let before = s.clone();
            let mut cur = s.trim_start();
            // (3) *subj-blob subj-refwd
            let mut probe = cur;
            while let Some(r) = strip_blob(probe) {
                probe = r;
            }
            if let Some(r) = strip_refwd(probe) {
                reply = true;
                cur = r.trim_start();
            }
            // (4) a leading blob, unless nothing would be left.
            if let Some(r) = strip_blob(cur) {
                if !r.is_empty() {
                    cur = r;
                }
            }
            s = cur.to_string();
            if s == before {
                break;
            }
        }
        // (6) "[fwd: ... ]" wrappers.
        let lower = s.to_lowercase();
        if lower.starts_with("[fwd:") && s.ends_with(']') {
            reply = true;
            s = s[5..s.len() - 1].trim().to_string();
            continue;
        }
        break;
    }
    (s.to_lowercase(), reply)
}

/// What SORT and THREAD know about one message.
pub struct Item<'a> {
    /// The number reported (sequence number or UID).
    pub id: u32,
    /// Internal date, seconds since the epoch.
    pub internal_date: i64,
    /// RFC822.SIZE.
    pub size: u64,
    /// The parsed message.
    pub message: Option<&'a Message<'a>>,
}

fn first_mailbox(a: Option<&Address<'_>>) -> String {
    a.and_then(|a| a.first())
        .and_then(|x| x.address.as_deref())
        .map(|e| e.split('@').next().unwrap_or("").to_lowercase())
        .unwrap_or_default()
}

fn display(a: Option<&Address<'_>>) -> String {
    a.and_then(|a| a.first())
        .map(|x| match (&x.name, &x.address) {
            (Some(n), _) if !n.trim().is_empty() => n.to_lowercase(),
            (_, Some(e)) => e.to_lowercase(),
            _ => String::new(),
        })
        .unwrap_or_default()
}

/// The sent date in UTC seconds; the internal date when Date: is missing or unreadable
/// (RFC 5256 2.2).
pub fn sent_time(item: &Item<'_>) -> i64 {
    item.message
        .and_then(|m| m.date())
        .map(|d| d.to_timestamp())
        .unwrap_or(item.internal_date)
}

fn subject(item: &Item<'_>) -> String {
    base_subject(item.message.and_then(|m| m.subject()).unwrap_or(""))
}

fn compare<'a>(key: SortKey, a: &Item<'a>, b: &Item<'a>) -> Ordering {
    fn m<'a>(i: &Item<'a>) -> Option<&'a Message<'a>> {
        i.message
    }
    match key {
        SortKey::Arrival => a.internal_date.cmp(&b.internal_date),
        SortKey::Date => sent_time(a).cmp(&sent_time(b)),
        SortKey::Size => a.size.cmp(&b.size),
        SortKey::Subject => subject(a).cmp(&subject(b)),
        SortKey::From => first_mailbox(m(a).and_then(|m| m.from()))
            .cmp(&first_mailbox(m(b).and_then(|m| m.from()))),
        SortKey::To => {
            first_mailbox(m(a).and_then(|m| m.to())).cmp(&first_mailbox(m(b).and_then(|m| m.to())))
        }
        SortKey::Cc => {
            first_mailbox(m(a).and_then(|m| m.cc())).cmp(&first_mailbox(m(b).and_then(|m| m.cc())))
        }
        SortKey::DisplayFrom => {
            display(m(a).and_then(|m| m.from())).cmp(&display(m(b).and_then(|m| m.from())))
        }
        SortKey::DisplayTo => {
            display(m(a).and_then(|m| m.to())).cmp(&display(m(b).and_then(|m| m.to())))
        }
    }
}

/// Sorts by the criteria; ties keep sequence order (the order of `items`, RFC 5256 3).
pub fn sort(keys: &[(bool, SortKey)], items: &[Item<'_>]) -> Vec<u32> {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    idx.sort_by(|&x, &y| {
        for (reverse, key) in keys {
            let o = compare(*key, &items[x], &items[y]);
            let o = if *reverse { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        x.cmp(&y)
    });
    idx.into_iter().map(|i| items[i].id).collect()
}

/// A thread: a message (or a placeholder for a missing one) and its replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    /// The message; None for a placeholder that only groups its children.
    pub id: Option<u32>,
    /// Its children.
    pub children: Vec<Thread>,
}

/// THREAD=ORDEREDSUBJECT (RFC 5256 3): messages grouped by base subject, each group in sent
/// order with the first as parent of the rest, groups ordered by their first message.
pub fn ordered_subject(items: &[Item<'_>]) -> Vec<Thread> {
    let order = sort(&[(false, SortKey::Subject), (false, SortKey::Date)], items);
    let by_id = |id: u32| items.iter().find(|i| i.id == id);
    let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
    for id in order {
        let s = by_id(id).map(subject).unwrap_or_default();
        match groups.last_mut() {
            Some((subj, ids)) if *subj == s => ids.push(id),
            _ => groups.push((s, vec![id])),
        }
    }
    let mut threads: Vec<(i64, u32, Thread)> = groups
        .into_iter()
        .map(|(_, ids)| {
            let first = ids[0];
            let t = Thread {
                id: Some(first),
                children: ids[1..]
                    .iter()
                    .map(|&id| Thread {
                        id: Some(id),
                        children: vec![],
                    })
                    .collect(),
            };
            (by_id(first).map(sent_time).unwrap_or(0), first, t)
        })
        .collect();
    threads.sort_by_key(|(time, id, _)| (*time, *id));
    threads.into_iter().map(|(_, _, t)| t).collect()
}

/// Message-IDs in a header value, in order (`<...>` tokens).
fn message_ids(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = v;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        let id = rest[start + 1..start + len].trim();
        if !id.is_empty() && id.contains('@') {
            out.push(id.to_string());
        }
        rest = &rest[start + len + 1..];
    }
    out
}

struct Node {
    item: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

fn is_ancestor(nodes: &[Node], maybe_ancestor: usize, mut of: usize) -> bool {
    let mut steps = 0;
    while let Some(p) = nodes[of].parent {
        if p == maybe_ancestor {
            return true;
        }
        of = p;
        steps += 1;
        if steps > nodes.len() {
            return true; // a cycle: refuse anyway
        }
    }
    false
}

fn link(nodes: &mut [Node], parent: usize, child: usize) {
    if parent == child || is_ancestor(nodes, child, parent) {
        return; // would loop
    }
    if let Some(old) = nodes[child].parent.take() {
        nodes[old].children.retain(|c| *c != child);
    }
    nodes[child].parent = Some(parent);
    nodes[parent].children.push(child);
}

/// THREAD=REFERENCES (RFC 5256 3).
pub fn references(items: &[Item<'_>]) -> Vec<Thread> {
    use std::collections::HashMap;
    let mut nodes: Vec<Node> = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut node_for = |nodes: &mut Vec<Node>, id: &str| -> usize {
        *ids.entry(id.to_string()).or_insert_with(|| {
            nodes.push(Node {
                item: None,
                parent: None,
                children: vec![],
            });
            nodes.len() - 1
        })
    };
    for (i, item) in items.iter().enumerate() {
        let m = item.message;
        // (1) the message's own container; a missing or duplicate Message-ID gets a fresh one.
        let own_id = m.and_then(|m| m.message_id()).map(str::to_string);
        let me = match own_id {
            Some(id) => {
                let n = node_for(&mut nodes, &id);
                if nodes[n].item.is_some() {
                    nodes.push(Node {
                        item: Some(i),
                        parent: None,
                        children: vec![],
                    });
                    nodes.len() - 1
                } else {
                    nodes[n].item = Some(i);
                    n
                }
            }
            None => {
                nodes.push(Node {
                    item: Some(i),
                    parent: None,
                    children: vec![],
                });
                nodes.len() - 1
            }
        };
        // (1A) References, or the first Message-ID of In-Reply-To.
        let refs = m
            .and_then(|m| m.header_raw("References"))
            .map(message_ids)
            .filter(|r| !r.is_empty())
            .or_else(|| {
                m.and_then(|m| m.header_raw("In-Reply-To"))
                    .map(message_ids)
                    .map(|r| r.into_iter().take(1).collect())
            })
            .unwrap_or_default();
        let mut prev: Option<usize> = None;
        for r in &refs {
            let n = node_for(&mut nodes, r);
            if let Some(p) = prev {
                // Existing links stay.
                if nodes[n].parent.is_none() {
                    link(&mut nodes, p, n);
                }
            }
            prev = Some(n);
        }
        // (1B) the last reference is the parent, replacing any earlier guess.
        match prev {
            Some(p) if p != me => link(&mut nodes, p, me),
            _ => {
                if let Some(old) = nodes[me].parent.take() {
                    nodes[old].children.retain(|c| *c != me);
                }
            }
        }
    }
    // (2) the root set.
    let roots: Vec<usize> = (0..nodes.len())
        .filter(|&n| nodes[n].parent.is_none())
        .collect();
    // (4) prune placeholders.
    fn prune(nodes: &[Node], n: usize, at_root: bool) -> Vec<Thread> {
        let mut kids = Vec::new();
        for &c in &nodes[n].children {
            kids.extend(prune(nodes, c, false));
        }
        match nodes[n].item {
            Some(i) => vec![Thread {
                id: Some(i as u32),
                children: kids,
            }],
            None if kids.is_empty() => vec![],
            None if !at_root || kids.len() == 1 => kids,
            None => vec![Thread {
                id: None,
                children: kids,
            }],
        }
    }
    let mut root: Vec<Thread> = roots.iter().flat_map(|&r| prune(&nodes, r, true)).collect();
    // (5) sort siblings by sent date (a placeholder by its first child), ties by sequence.
    fn date_of(t: &Thread, items: &[Item<'_>]) -> (i64, u32) {
        match t.id {
            Some(i) => (sent_time(&items[i as usize]), i),
            None => t
                .children
                .first()
                .map(|c| date_of(c, items))
                .unwrap_or((0, 0)),
        }
    }
    fn sort_all(ts: &mut [Thread], items: &[Item<'_>]) {
        for t in ts.iter_mut() {
            sort_all(&mut t.children, items);
        }
        ts.sort_by_key(|t| date_of(t, items));
    }
    sort_all(&mut root, items);
    // (6) group the root set by base subject.
    let subject_of = |t: &Thread| -> (String, bool) {
        let first = match t.id {
            Some(i) => Some(i),
            None => t.children.first().and_then(|c| c.id),
        };
        first
            .and_then(|i| items[i as usize].message)
            .and_then(|m| m.subject())
            .map(base_subject_and_reply)
            .unwrap_or_default()
    };
    let mut table: HashMap<String, usize> = HashMap::new();
    for (idx, t) in root.iter().enumerate() {
        let (subj, reply) = subject_of(t);
        if subj.is_empty() {
            continue;
        }
        match table.get(&subj) {
            None => {
                table.insert(subj, idx);
            }
            Some(&other) => {
                let o = &root[other];
                let (_, other_reply) = subject_of(o);
                if (t.id.is_none() && o.id.is_some()) || (other_reply && !reply) {
                    table.insert(subj, idx);
                }
            }
        }
    }
    let mut merged: Vec<Option<Thread>> = root.into_iter().map(Some).collect();
    for idx in 0..merged.len() {
        let Some(t) = merged[idx].as_ref() else {
            continue;
        };
        let (subj, reply) = subject_of(t);
        let Some(&target) = table.get(&subj) else {
            continue;
        };
        if target == idx || subj.is_empty() {
            continue;
        }
        let Some(this) = merged[idx].take() else {
            continue;
        };
        let Some(mut keep) = merged[target].take() else {
            merged[idx] = Some(this);
            continue;
        };
        let (_, keep_reply) = subject_of(&keep);
        keep = match (keep.id.is_none(), this.id.is_none()) {
            (true, true) => {
                keep.children.extend(this.children);
                keep
            }
            (true, false) => {
                keep.children.push(this);
                keep
            }
            _ if !keep_reply && reply => {
                keep.children.push(this);
                keep
            }
            _ => Thread {
                id: None,
                children: vec![keep, this],
            },
        };
        merged[target] = Some(keep);
    }
    let mut root: Vec<Thread> = merged.into_iter().flatten().collect();
    // (7) sort again now that groups changed.
    sort_all(&mut root, items);
    // Report the caller's ids (sequence numbers or UIDs), not positions.
    fn renumber(t: &mut Thread, items: &[Item<'_>]) {
        if let Some(i) = t.id {
            t.id = Some(items[i as usize].id);
        }
        for c in &mut t.children {
            renumber(c, items);
        }
    }
    for t in &mut root {
        renumber(t, items);
    }
    root
}

/// Writes threads in the THREAD response syntax: `(1 2 3)(4 (5)(6))`.
pub fn thread_response(threads: &[Thread]) -> String {
    fn one(t: &Thread, out: &mut String) {
        let Some(id) = t.id else {
            // A placeholder: its children as parenthesized siblings.
            for c in &t.children {
                out.push('(');
                one(c, out);
                out.push(')');
            }
            return;
        };
        out.push_str(&id.to_string());
        match t.children.len() {
            0 => {}
            1 => {
                out.push(' ');
                one(&t.children[0], out);
            }
            _ => {
                // RFC 5256 4: siblings are parenthesized, with no space between them.
                out.push(' ');
                for c in &t.children {
                    out.push('(');
                    one(c, out);
                    out.push(')');
                }
            }
        }
    }
    let mut out = String::new();
    for t in threads {
        out.push('(');
        one(t, &mut out);
        out.push(')');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    #[test]
    fn base_subjects_rfc5256() {
        for (subject, base) in [
            ("Re: hello", "hello"),
            ("RE: Re: re:  Hello  World", "hello world"),
            ("Fwd: hello (fwd)", "hello"),
            ("[list] Re: hello", "hello"),
            ("Re[2]: hello", "hello"),
            ("[Fwd: Re: hello]", "hello"),
            ("[PATCH] fix it", "fix it"),
            ("[only blob]", "[only blob]"),
            ("Fw: [blob] Re: x (fwd) (FWD)", "x"),
            ("Réponse", "réponse"),
            ("", ""),
            ("re:", ""),
        ] {
            assert_eq!(base_subject(subject), base, "{subject:?}");
        }
    }

    fn msg(raw: &'static str) -> Message<'static> {
        MessageParser::default().parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn sort_and_ordered_subject() {
        let m1 = msg(
            "From: Zed <b@x>\r\nSubject: Lunch\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n\r\n.",
        );
        let m2 = msg("From: alice <c@x>\r\nSubject: Re: lunch\r\nDate: Mon, 2 Nov 2026 09:00:00 -0200\r\n\r\n.");
        let m3 =
            msg("From: <a@x>\r\nSubject: Budget\r\nDate: Sun, 1 Nov 2026 12:00:00 +0000\r\n\r\n.");
        let items = vec![
            Item {
                id: 1,
                internal_date: 300,
                size: 10,
                message: Some(&m1),
            },
            Item {
                id: 2,
                internal_date: 100,
                size: 30,
                message: Some(&m2),
            },
            Item {
                id: 3,
                internal_date: 200,
                size: 20,
                message: Some(&m3),
            },
        ];
        assert_eq!(sort(&[(false, SortKey::Arrival)], &items), vec![2, 3, 1]);
        assert_eq!(sort(&[(true, SortKey::Size)], &items), vec![2, 3, 1]);
        assert_eq!(
            sort(&[(false, SortKey::Date)], &items),
            vec![3, 1, 2],
            "10:00Z < 11:00Z"
        );
        assert_eq!(
            sort(&[(false, SortKey::From)], &items),
            vec![3, 1, 2],
            "by mailbox a, b, c"
        );
        assert_eq!(
            sort(&[(false, SortKey::DisplayFrom)], &items),
            vec![3, 2, 1],
            "a@x, alice, zed"
        );
        assert_eq!(
            sort(
                &[(false, SortKey::Subject), (true, SortKey::Arrival)],
                &items
            ),
            vec![3, 1, 2]
        );
        let threads = ordered_subject(&items);
        assert_eq!(thread_response(&threads), "(3)(1 2)");
    }

    #[test]
    fn references_threading() {
        let m1 = msg(
            "Message-ID: <1@x>\r\nSubject: Plan\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n\r\n.",
        );
        let m2 = msg("Message-ID: <2@x>\r\nIn-Reply-To: <1@x>\r\nSubject: Re: Plan\r\nDate: Mon, 2 Nov 2026 11:00:00 +0000\r\n\r\n.");
        let m3 = msg("Message-ID: <3@x>\r\nReferences: <1@x> <2@x>\r\nSubject: Re: Plan\r\nDate: Mon, 2 Nov 2026 12:00:00 +0000\r\n\r\n.");
        let m4 = msg("Message-ID: <4@x>\r\nReferences: <1@x>\r\nSubject: Re: Plan\r\nDate: Mon, 2 Nov 2026 13:00:00 +0000\r\n\r\n.");
        // Two replies to a message we do not have: a placeholder groups them.
        let m5 = msg("Message-ID: <5@x>\r\nReferences: <gone@x>\r\nSubject: Re: Lost\r\nDate: Sun, 1 Nov 2026 10:00:00 +0000\r\n\r\n.");
        let m6 = msg("Message-ID: <6@x>\r\nReferences: <gone@x>\r\nSubject: Re: Lost\r\nDate: Sun, 1 Nov 2026 11:00:00 +0000\r\n\r\n.");
        // Same subject, no references: grouped by subject with the original.
        let m7 = msg("Message-ID: <7@x>\r\nSubject: Re: Plan\r\nDate: Tue, 3 Nov 2026 10:00:00 +0000\r\n\r\n.");
        let ms = [m1, m2, m3, m4, m5, m6, m7];
        let items: Vec<Item<'_>> = ms
            .iter()
            .enumerate()
            .map(|(i, m)| Item {
                id: i as u32 + 1,
                internal_date: 0,
                size: 0,
                message: Some(m),
            })
            .collect();
        assert_eq!(
            thread_response(&references(&items)),
            "((5)(6))(1 (2 3)(4)(7))"
        );
    }

    #[test]
    fn references_survive_loops() {
        let a = msg("Message-ID: <a@x>\r\nReferences: <b@x>\r\nSubject: x\r\n\r\n.");
        let b = msg("Message-ID: <b@x>\r\nReferences: <a@x>\r\nSubject: y\r\n\r\n.");
        let c = msg("Message-ID: <a@x>\r\nSubject: duplicate id\r\n\r\n.");
        let ms = [a, b, c];
        let items: Vec<Item<'_>> = ms
            .iter()
            .enumerate()
            .map(|(i, m)| Item {
                id: i as u32 + 1,
                internal_date: i as i64,
                size: 0,
                message: Some(m),
            })
            .collect();
        let out = thread_response(&references(&items));
        for id in ["1", "2", "3"] {
            assert!(out.contains(id), "{out}");
        }
    }

    #[test]
    fn thread_syntax() {
        let leaf = |id| Thread {
            id: Some(id),
            children: vec![],
        };
        let t = vec![Thread {
            id: Some(1),
            children: vec![
                leaf(2),
                Thread {
                    id: Some(3),
                    children: vec![leaf(4)],
                },
            ],
        }];
        assert_eq!(thread_response(&t), "(1 (2)(3 4))");
        let dummy = vec![Thread {
            id: None,
            children: vec![leaf(3), leaf(5)],
        }];
        assert_eq!(thread_response(&dummy), "((3)(5))");
    }
}
