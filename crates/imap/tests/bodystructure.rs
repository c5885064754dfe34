//! Golden BODYSTRUCTURE tests: tricky messages under testdata/bodystructure, each with the
//! BODYSTRUCTURE Dovecot 2.3 returned for it (`.dovecot`, recorded once with
//! ../shared/peers) and ours (`.expected`). Where they differ, `.expected` is what RFC 9051
//! asks for and the difference is explained in testdata/bodystructure/README.md.
//! `MAILKEEP_BLESS=1 cargo test -p mailkeep-imap --test bodystructure` rewrites `.expected`.

use mailkeep_delivery::ingest::parse_cache;
use mailkeep_imap_proto::response::body_structure;
use mailkeep_imap_proto::section::extract;
use mailkeep_imap_proto::selected::Section;
use mailkeep_types::message::BodyStructure;

/// RFC 9051 7.5.2: a part's size is the length of what BODY[part] returns.
fn sizes_match_sections(raw: &[u8], b: &BodyStructure, path: Vec<u32>, errors: &mut Vec<String>) {
    if b.media_type == "multipart" {
        for (i, c) in b.parts.iter().enumerate() {
            let mut p = path.clone();
            p.push(i as u32 + 1);
            sizes_match_sections(raw, c, p, errors);
        }
        return;
    }
    if !path.is_empty() {
        let got = extract(
            raw,
            &Section {
                part: path.clone(),
                text: None,
            },
        )
        .map(|v| v.len() as u64);
        // The empty part shown for an empty multipart has no section to fetch.
        let synthesized = got.is_none() && b.size == 0;
        if got != Some(b.size) && !synthesized {
            errors.push(format!(
                "part {path:?}: BODYSTRUCTURE size {} but BODY[part] has {got:?}",
                b.size
            ));
        }
    }
    if b.media_type == "message" && b.subtype == "rfc822" {
        if let Some(inner) = b.parts.first() {
            if inner.media_type == "multipart" {
                sizes_match_sections(raw, inner, path, errors);
            }
        }
    }
}

fn ours(raw: &[u8]) -> String {
    let cache = parse_cache(raw);
    let mut out = Vec::new();
    body_structure(&mut out, &cache.body, true, false);
    String::from_utf8(out).expect("ASCII")
}

#[test]
fn bodystructure_matches_the_golden_files() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/bodystructure");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("testdata")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    names.sort();
    assert!(names.len() >= 8, "golden messages: {}", names.len());
    let mut failures = Vec::new();
    for eml in &names {
        let raw = std::fs::read(eml).expect("eml");
        let got = ours(&raw);
        sizes_match_sections(&raw, &parse_cache(&raw).body, vec![], &mut failures);
        let want_path = eml.with_extension("expected");
        if std::env::var_os("MAILKEEP_BLESS").is_some() {
            std::fs::write(&want_path, format!("{got}\n")).expect("bless");
        }
        let want = std::fs::read_to_string(&want_path).unwrap_or_default();
        if got != want.trim_end() {
            failures.push(format!(
                "{}:\n  got  {got}\n  want {}",
                eml.display(),
                want.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
