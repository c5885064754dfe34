//! What receivers' filters think of the mail mailkeep sends: a message submitted to A and
//! received by B, as B stored it, scored by SpamAssassin (Debian's package, default rules,
//! local tests only: no network). It must score 0 or lower, not counting ALL_TRUSTED (the
//! test's relays are on loopback, which SpamAssassin always trusts; a real receiver would
//! not give that point).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::outbound::{dns, free_port, start_a, start_b, submitter, wait_inbox};
use lettre::message::header::ContentType;
use lettre::{AsyncTransport, Message};

/// SpamAssassin's score and rule breakdown for a message; None when it is not installed
/// (outside CI).
fn spamassassin(message: &str) -> Option<(f64, String)> {
    if !std::path::Path::new("/usr/bin/spamassassin").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install spamassassin (.ci/run)"
        );
        eprintln!("SKIPPED: spamassassin is not installed");
        return None;
    }
    let mut child = Command::new("spamassassin")
        .args(["-t", "-L"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spamassassin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let details = text
        .split("Content analysis details:")
        .nth(1)
        .unwrap_or_else(|| panic!("no report from spamassassin:\n{text}"))
        .to_string();
    let score: f64 = details
        .trim_start()
        .trim_start_matches('(')
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{details}"));
    let rules: String = details
        .lines()
        .skip_while(|l| !l.starts_with("----"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    Some((score, rules))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_we_send_scores_zero_or_lower_at_spamassassin() {
    let ip = "127.0.0.51";
    let port = free_port(ip);
    let b = start_b(ip, port);
    let dns = dns(ip);
    let a = start_a(&dns, port);
    let message = Message::builder()
        .from("Alice Example <alice@example.test>".parse().unwrap())
        .to("Carol <carol@b.test>".parse().unwrap())
        .subject("Minutes of Tuesday's planning meeting")
        .header(ContentType::TEXT_PLAIN)
        .body(
            "Hi Carol,\n\nhere are the minutes of Tuesday's meeting. We agreed to move the \
             release to the second week of December, and Bob will update the schedule.\n\n\
             Could you check the budget figures before Friday?\n\nThanks,\nAlice\n"
                .to_string(),
        )
        .unwrap();
    submitter(&a).send(message).await.expect("submit");
    let got = wait_inbox(&b, "carol@b.test", 1).await;
    let Some((score, rules)) = spamassassin(&got[0]) else {
        return;
    };
    let trusted: f64 = rules
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("ALL_TRUSTED"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .sum();
    let content = score - trusted;
    eprintln!(
        "SpamAssassin score of our outbound mail: {score} ({content} without ALL_TRUSTED)\n{rules}"
    );
    assert!(content <= 0.0, "score {content}:\n{rules}\n\n{}", got[0]);
}
