//! SEARCH evaluation and SORT/THREAD over arbitrary messages: no panic, every message
//! appears exactly once in each thread result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mail_parser::MessageParser;
use mailkeep_imap::search::{matches_all, Candidate, Context};
use mailkeep_imap::sort::{ordered_subject, references, sort, Item, Thread};
use mailkeep_imap_proto::selected::{SearchKey, SortKey};

fn count(ts: &[Thread], seen: &mut Vec<u32>) {
    for t in ts {
        if let Some(id) = t.id {
            seen.push(id);
        }
        count(&t.children, seen);
    }
}

fuzz_target!(|data: &[u8]| {
    // Up to 8 messages separated by a NUL byte.
    let raws: Vec<&[u8]> = data.split(|b| *b == 0).take(8).collect();
    let parsed: Vec<_> = raws
        .iter()
        .map(|r| MessageParser::default().parse(*r))
        .collect();
    let items: Vec<Item<'_>> = parsed
        .iter()
        .enumerate()
        .map(|(i, m)| Item {
            id: i as u32 + 1,
            internal_date: i as i64,
            size: raws[i].len() as u64,
            message: m.as_ref(),
        })
        .collect();
    for algo in [references(&items), ordered_subject(&items)] {
        let mut seen = Vec::new();
        count(&algo, &mut seen);
        seen.sort();
        assert_eq!(
            seen,
            (1..=items.len() as u32).collect::<Vec<_>>(),
            "each message once"
        );
    }
    let _ = sort(
        &[
            (false, SortKey::Subject),
            (true, SortKey::DisplayFrom),
            (false, SortKey::Date),
        ],
        &items,
    );
    let keys = vec![
        SearchKey::Text(b"a".to_vec()),
        SearchKey::Header("subject".into(), b"re".to_vec()),
        SearchKey::Body(b"\xc3\xa9".to_vec()),
    ];
    for (i, m) in parsed.iter().enumerate() {
        let c = Candidate {
            seq: i as u32 + 1,
            uid: i as u32 + 1,
            flags: &[],
            recent: false,
            internal_date: 0,
            size: 0,
            modseq: 1,
            message: m.as_ref(),
        };
        let cx = Context {
            max_seq: 8,
            max_uid: 8,
            saved: &[],
            now: 0,
        };
        let _ = matches_all(&keys, &c, &cx);
    }
});
