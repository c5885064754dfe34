//! IMAP framing and primitives under arbitrary bytes and read boundaries: no panic, memory
//! bounded by the line limit plus accepted literals.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailkeep_imap_proto::cursor::Cursor;
use mailkeep_imap_proto::frame::{Event, Framer, Limits, Part};

const MAX_LINE: usize = 256;
const MAX_LITERAL: u64 = 512;

fn exercise(parts: &[Part]) {
    let mut c = Cursor::new(parts);
    if c.atom().is_err() || c.sp().is_err() {
        return;
    }
    let _ = c.atom();
    // Read whatever follows as a mix of primitives until an error or the end.
    for _ in 0..64 {
        if c.at_end() || c.sp().is_err() {
            break;
        }
        let ok = match c.peek() {
            mailkeep_imap_proto::cursor::Next::Byte(b'(') => {
                c.list(true, |c| c.astring().map(|_| ())).is_ok()
            }
            mailkeep_imap_proto::cursor::Next::Byte(b'0'..=b'9' | b'*' | b'$') => {
                c.sequence_set().is_ok()
            }
            _ => c.astring().is_ok(),
        };
        if !ok {
            break;
        }
    }
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, cuts) = input;
    let mut f = Framer::new(Limits {
        max_line: MAX_LINE,
        max_literals: 8,
    });
    let mut pos = 0;
    let mut cut = cuts.iter().cycle();
    while pos < data.len() {
        let step = 1 + *cut.next().unwrap_or(&255) as usize;
        let end = (pos + step).min(data.len());
        f.push(&data[pos..end]);
        pos = end;
        while let Some(ev) = f.next_event() {
            match ev {
                Event::Literal { length, .. } => {
                    if length <= MAX_LITERAL {
                        f.accept()
                    } else {
                        f.reject()
                    }
                }
                Event::Command(parts) => {
                    exercise(&parts);
                    let _ = mailkeep_imap_proto::command::parse(&parts);
                }
                _ => {}
            }
        }
        assert!(
            f.buffered() <= MAX_LINE + 256 + MAX_LITERAL as usize + 2,
            "unbounded buffer"
        );
    }
    let _ = mailkeep_imap_proto::mutf7::decode(&String::from_utf8_lossy(&data));
});
