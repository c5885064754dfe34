//! IMAP body sections and BINARY decoding over arbitrary messages and part paths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailkeep_imap_proto::section::{binary, extract};
use mailkeep_imap_proto::selected::{Section, SectionText};

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (raw, path) = input;
    let part: Vec<u32> = path.iter().take(8).map(|b| 1 + (*b % 4) as u32).collect();
    for text in [
        None,
        Some(SectionText::Header),
        Some(SectionText::Text),
        Some(SectionText::Mime),
        Some(SectionText::HeaderFields {
            not: false,
            fields: vec!["subject".into()],
        }),
        Some(SectionText::HeaderFields {
            not: true,
            fields: vec!["received".into()],
        }),
    ] {
        if let Some(bytes) = extract(
            &raw,
            &Section {
                part: part.clone(),
                text,
            },
        ) {
            // Every section but HEADER.FIELDS is a slice of the message: never larger.
            assert!(bytes.len() <= raw.len() + 2);
        }
    }
    let _ = binary(&raw, &part);
});
