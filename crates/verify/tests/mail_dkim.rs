//! The Mail::DKIM verifier corpus (fastmail/mail-dkim `t/corpus`, 79 messages in
//! `tests/suites/mail-dkim/`) through the DKIM check inbound SMTP makes
//! ([`Verifier::check_dkim`]), with `FAKE_DNS.dat` served by a DNS server on loopback.
//!
//! A message's result is its best signature's: pass, then fail (a bad signature or an altered
//! body), then invalid (anything that makes a signature unusable: syntax, unsupported
//! algorithm or version, a missing, revoked or unusable key, a DNS failure, expiry). The 17
//! DomainKeys-only messages carry no DKIM signature: the right answer is none (DomainKeys is
//! not DKIM), whatever Mail::DKIM's DomainKeys verifier says.
//!
//! Cases whose answer differs are listed in `KNOWN` with the reason; most are signatures that
//! RFC 8301 (2018) made unusable and Mail::DKIM still accepts.

mod common;

use std::collections::BTreeMap;

use mailkeep_testkit::Rr;

const SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/suites/mail-dkim");

/// RFC 8301 3.1: rsa-sha1 must not be accepted.
const SHA1: &str = "signed with rsa-sha1 (most with 512-bit keys too): RFC 8301 3.1 forbids accepting rsa-sha1, so the signature is unusable (invalid), not pass";
const SHA1_ALTERED: &str = "an altered message signed with rsa-sha1: refused as rsa-sha1 (invalid) before its signature is checked (fail); not pass either way";
/// RFC 8301 3.2: RSA keys under 1024 bits must not be accepted.
const KEY_512_INVALID: &str = "signed with a 512-bit RSA key, refused as such (fail) before the key record's own flaw that Mail::DKIM reports (invalid); not pass either way";
const DRAFT_768: &str = "a pre-RFC draft signature (no v= tag) with a 768-bit RSA key: RFC 8301 3.2 forbids accepting it, so not pass";
const DRAFT_00: &str = "an ietf-00 draft signature (no v=, 768-bit key): mail-auth does not take it as a DKIM signature at all (none); not pass either way";
const VERSION_05: &str = "v=0.5, a draft version: RFC 6376 3.5 requires v=1, so the signature is unusable (invalid), not pass";
const BODY_FIRST: &str = "the body no longer matches bh= and mail-auth checks the body hash before fetching the key, so it reports fail where Mail::DKIM reports the unusable key (invalid); not pass either way";

/// What we answer where Mail::DKIM answers otherwise, and why: none of them is a pass we
/// miss for a signature RFC 6376 and RFC 8301 accept.
const KNOWN: &[(&str, &str)] = &[
    ("bad_1878954.txt", SHA1_ALTERED),
    ("badkey1_ed25519.txt", BODY_FIRST),
    ("badkey4_ed25519.txt", BODY_FIRST),
    ("badkey5_ed25519.txt", BODY_FIRST),
    ("badkey_11.txt", KEY_512_INVALID),
    ("good_1878523.txt", SHA1),
    ("good_83176.txt", SHA1),
    ("good_ietf00_1.txt", DRAFT_00),
    ("good_ietf00_2.txt", DRAFT_00),
    ("good_ietf00_3.txt", DRAFT_00),
    ("good_ietf00_4.txt", DRAFT_00),
    ("good_ietf00_5.txt", DRAFT_00),
    ("good_ietf01_1.txt", DRAFT_768),
    ("good_ietf01_2.txt", SHA1),
    ("good_qp_1.txt", SHA1),
    ("good_qp_2.txt", SHA1),
    ("good_qp_3.txt", SHA1),
    ("good_rfc4871_3.txt", SHA1),
    ("good_rfc4871_4.txt", SHA1),
    ("goodkey_1.txt", SHA1),
    ("goodkey_2.txt", SHA1),
    ("goodkey_3.txt", SHA1),
    ("goodkey_4.txt", SHA1),
    ("mine_ietf01_1.txt", SHA1),
    ("mine_ietf01_2.txt", SHA1),
    ("mine_ietf05_1.txt", VERSION_05),
    ("multiple_1.txt", DRAFT_768),
    ("multiple_2.txt", SHA1),
    ("no_body_1.txt", VERSION_05),
    ("no_body_2.txt", VERSION_05),
    ("no_body_3.txt", VERSION_05),
];

fn fake_dns() -> Vec<(String, Rr)> {
    let text = std::fs::read_to_string(format!("{SUITE}/FAKE_DNS.dat")).expect("FAKE_DNS.dat");
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let name = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
        let value = value.trim();
        let rr = match value {
            "NXDOMAIN" => continue,
            "~~Query timed out~~" => Rr::Timeout,
            "~~SERVFAIL~~" => Rr::ServFail,
            "\"\"" => Rr::TxtBytes(vec![Vec::new()]),
            v => Rr::TxtBytes(v.as_bytes().chunks(255).map(|c| c.to_vec()).collect()),
        };
        out.push((name, rr));
    }
    out
}

/// pass, fail, invalid or none for a message, from its signatures' verdicts.
fn overall(verdicts: &[mailkeep_verify::DkimVerdict]) -> &'static str {
    let class = |v: &mailkeep_verify::DkimVerdict| match v.result {
        "pass" => 3,
        "fail" => 2,
        // mail-auth calls an altered body neutral; it is a failed signature.
        "neutral"
            if v.reason
                .as_deref()
                .is_some_and(|r| r.to_ascii_lowercase().contains("body hash")) =>
        {
            2
        }
        "none" => 0,
        _ => 1,
    };
    match verdicts.iter().map(class).max().unwrap_or(0) {
        3 => "pass",
        2 => "fail",
        1 => "invalid",
        _ => "none",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_dkim_corpus() {
    let records = fake_dns();
    let (_dns, verifier) = common::dns_and_verifier(&records, &["dkim"], "receiver.example");
    let expected = std::fs::read_to_string(format!("{SUITE}/expected.tsv")).expect("tsv");
    let mut total = 0;
    let mut domainkeys = 0;
    let mut differ: BTreeMap<String, String> = BTreeMap::new();
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let (file, want) = line.split_once('\t').expect("file<TAB>result");
        let message = std::fs::read(format!("{SUITE}/corpus/{file}")).expect("message");
        // Mail::DKIM's harness reads the files with CRLF line ends.
        let text = String::from_utf8_lossy(&message).replace("\r\n", "\n");
        let message = text.replace('\n', "\r\n").into_bytes();
        total += 1;
        let is_dkim = text
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"));
        let want = if is_dkim {
            want.trim()
        } else {
            domainkeys += 1;
            "none"
        };
        let verdicts = verifier.check_dkim(&message).await;
        let got = overall(&verdicts);
        if got != want {
            let reasons: Vec<String> = verdicts
                .iter()
                .map(|v| {
                    format!(
                        "{}{}",
                        v.result,
                        v.reason
                            .as_ref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            differ.insert(
                file.to_string(),
                format!("got {got}, Mail::DKIM {want}: {}", reasons.join("; ")),
            );
        }
    }
    common::check_known(
        &format!(
            "Mail::DKIM corpus: {} of {total} agree ({domainkeys} DomainKeys-only count as none)",
            total - differ.len()
        ),
        &differ,
        KNOWN,
    );
    assert_eq!(total, 79);
}
