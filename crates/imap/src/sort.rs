//! SORT and THREAD=ORDEREDSUBJECT (RFC 5256), with DISPLAYFROM/DISPLAYTO (RFC 5957).

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
    // (1) decoded (the caller passes the RFC 2047-decoded subject), whitespace normalized.
    let mut s = squash(subject);
    loop {
        // (2) trailing "(fwd)" and spaces.
        loop {
            let t = s.trim_end();
            let lower = t.to_lowercase();
            if lower.ends_with("(fwd)") {
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
            s = s[5..s.len() - 1].trim().to_string();
            continue;
        }
        break;
    }
    s.to_lowercase()
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

/// A thread: a message and its replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    /// The message.
    pub id: u32,
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
                id: first,
                children: ids[1..]
                    .iter()
                    .map(|&id| Thread {
                        id,
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

/// Writes threads in the THREAD response syntax: `(1 2 3)(4 (5)(6))`.
pub fn thread_response(threads: &[Thread]) -> String {
    fn one(t: &Thread, out: &mut String) {
        out.push_str(&t.id.to_string());
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
    fn thread_syntax() {
        let t = vec![Thread {
            id: 1,
            children: vec![
                Thread {
                    id: 2,
                    children: vec![],
                },
                Thread {
                    id: 3,
                    children: vec![Thread {
                        id: 4,
                        children: vec![],
                    }],
                },
            ],
        }];
        assert_eq!(thread_response(&t), "(1 (2)(3 4))");
    }
}
