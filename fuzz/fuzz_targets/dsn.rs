//! The DSN writer (`queue::dsn::build`) over arbitrary peer text: the input is split at 0xFF
//! into envelope id, recipient, ORCPT, remote MTA, diagnostic and the original message. Up to
//! the returned original, no line has a control character, every line of the
//! delivery-status part is a field the writer writes, and the boundary starts exactly the
//! three parts. (`crates/queue/tests/fuzz_seeds.rs` replays the seeds with these checks.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailkeep_queue::dsn::{build, Kind, RcptReport, Report};

const FIELDS: &[&str] = &[
    "Reporting-MTA: ",
    "Original-Envelope-Id: ",
    "Arrival-Date: ",
    "Original-Recipient: ",
    "Final-Recipient: ",
    "Action: ",
    "Status: ",
    "Remote-MTA: ",
    "Diagnostic-Code: ",
    "Last-Attempt-Date: ",
];

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(6, |b| *b == 0xff);
    let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (envid, recipient, orcpt, mta, diagnostic) = (text(), text(), text(), text(), text());
    let original = parts.next().unwrap_or_default();
    let rcpts = [RcptReport {
        recipient,
        orcpt: Some(orcpt),
        remote_mta: Some(mta),
        diagnostic,
    }];
    let report = Report {
        hostname: "mail.example.test",
        to: "a@example.test",
        queue_id: "Q1",
        envid: Some(&envid),
        arrival: 1_700_000_000,
        kind: Kind::Failed,
        recipients: &rcpts,
        original,
        headers_only: false,
    };
    let out = build(&report, 1_700_000_100);
    let marker = b"Content-Type: message/rfc822\r\n\r\n";
    let end = out
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the original's part");
    let head = std::str::from_utf8(&out[..end]).expect("UTF-8 up to the original");
    let boundary = head
        .split("boundary=\"")
        .nth(1)
        .and_then(|b| b.split('"').next())
        .expect("a boundary");
    let lines: Vec<&str> = head.split("\r\n").collect();
    assert!(lines
        .iter()
        .all(|l| !l.trim_start_matches('\t').chars().any(char::is_control)));
    let starts = format!("--{boundary}");
    assert_eq!(lines.iter().filter(|l| l.starts_with(&starts)).count(), 3);
    let status = head
        .split("Content-Type: message/delivery-status\r\n\r\n")
        .nth(1)
        .and_then(|s| s.split(&starts).next())
        .expect("the status part");
    for line in status.split("\r\n") {
        assert!(line.is_empty() || FIELDS.iter().any(|f| line.starts_with(f)), "{line:?}");
    }
});
