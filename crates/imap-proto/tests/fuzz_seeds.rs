//! The committed fuzz seeds (fuzz/corpus/imap_frame) run as regression tests on every
//! `cargo test`: framed in one piece and byte by byte, with the same commands parsed.

use mailkeep_imap_proto::command;
use mailkeep_imap_proto::frame::{Event, Framer, Limits};

fn frame(data: &[u8], step: usize) -> Vec<Event> {
    let mut f = Framer::new(Limits {
        max_line: 256,
        max_literals: 8,
    });
    let mut out = Vec::new();
    for chunk in data.chunks(step.max(1)) {
        f.push(chunk);
        while let Some(ev) = f.next_event() {
            match &ev {
                Event::Literal { length, .. } if *length <= 512 => f.accept(),
                Event::Literal { .. } => f.reject(),
                _ => {}
            }
            out.push(ev);
        }
    }
    out
}

#[test]
fn imap_frame_seeds_parse_the_same_whatever_the_read_size() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/imap_frame");
    let mut commands = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        let whole = frame(&data, data.len());
        assert_eq!(whole, frame(&data, 1), "byte by byte");
        assert_eq!(whole, frame(&data, 7), "odd chunks");
        for ev in &whole {
            if let Event::Command(parts) = ev {
                // Every seed command is valid IMAP.
                let parsed = command::parse(parts);
                assert!(parsed.is_ok(), "{parts:?}: {parsed:?}");
                commands += 1;
            }
        }
    }
    assert!(commands >= 8, "commands in seeds: {commands}");
}
