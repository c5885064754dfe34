//! Outbound limits per account (`[limits]`), driven by Python's smtplib over submission:
//! past a limit, recipients in other domains get 451 4.7.1 naming the limit; local mail is
//! never limited; each account has its own counts.

mod common;

use common::{Server, PASSWORD};

/// Sends one message as `user` over submission (STARTTLS) to `rcpts`; prints `refused
/// ADDR CODE TEXT` per recipient refused and `sent` when any was taken, or `error ...`.
fn submit(server: &Server, user: &str, rcpts: &[&str]) -> Vec<String> {
    let script = r#"
import smtplib, ssl, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rcpts = sys.argv[4:]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", port)
s.starttls(context=ctx)
s.login(user, password)
msg = "From: %s\r\nTo: %s\r\nSubject: limits\r\n\r\nhello\r\n" % (user, ", ".join(rcpts))
try:
    refused = s.sendmail(user, rcpts, msg)
    for addr, (code, text) in sorted(refused.items()):
        print("refused", addr, code, text.decode())
    print("sent")
except smtplib.SMTPRecipientsRefused as e:
    for addr, (code, text) in sorted(e.recipients.items()):
        print("refused", addr, code, text.decode())
s.quit()
"#;
    let mut args = vec![
        "-c".to_string(),
        script.to_string(),
        server.listeners["submission"].port().to_string(),
        user.to_string(),
        PASSWORD.to_string(),
    ];
    args.extend(rcpts.iter().map(|r| r.to_string()));
    let out = std::process::Command::new("python3")
        .args(&args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn accounts_past_their_limits_are_deferred_with_the_limit_named() {
    let server = Server::start(
        "messages_per_hour = 2\nrecipients_per_message = 3\nnew_recipients_per_day = 4\nplaintext = \"never\"",
    );

    // Recipients per message: the 4th remote recipient is deferred; local ones do not count.
    let out = submit(
        &server,
        "alice@example.test",
        &[
            "a@remote.test",
            "b@remote.test",
            "bob@example.test",
            "c@remote.test",
            "d@remote.test",
        ],
    );
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        out[0].starts_with("refused d@remote.test 451 4.7.1 Limit reached: at most 3 recipients"),
        "{out:?}"
    );
    assert_eq!(out[1], "sent");

    // Messages per hour: the second message goes, the third is deferred...
    let out = submit(&server, "alice@example.test", &["a@remote.test"]);
    assert_eq!(out, vec!["sent"]);
    let out = submit(&server, "alice@example.test", &["a@remote.test"]);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].starts_with(
            "refused a@remote.test 451 4.7.1 Limit reached: 2 messages to other domains per hour"
        ),
        "{out:?}"
    );
    // ...while local mail still goes.
    assert_eq!(
        submit(&server, "alice@example.test", &["bob@example.test"]),
        vec!["sent"]
    );

    // New recipients per day (bob has his own counts): 3 new, then 1 known and 1 more new
    // (the 4th), and the 5th new one is deferred.
    let out = submit(
        &server,
        "bob@example.test",
        &["x1@remote.test", "x2@remote.test", "x3@remote.test"],
    );
    assert_eq!(out, vec!["sent"]);
    let out = submit(
        &server,
        "bob@example.test",
        &["x1@remote.test", "x4@remote.test", "x5@remote.test"],
    );
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        out[0].starts_with("refused x5@remote.test 451 4.7.1 Limit reached: 4 new recipients"),
        "{out:?}"
    );
    // The refusals are in the delivery log with their reply.
    let log = server.log_search_until(
        &["--sender", "bob@example.test", "--json"],
        "4 new recipients",
    );
    assert!(log.contains("\"outcome\":\"tempfail\""), "{log}");
}

/// `queue list`: (messages, held ones).
fn queue_counts(server: &Server) -> (usize, usize) {
    let (ok, out, err) = server.cli(&["queue", "list"], "");
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" ago ")).collect();
    (
        lines.len(),
        lines.iter().filter(|l| l.contains("(held)")).count(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_new_recipients_puts_the_account_on_hold_and_alerts_the_postmaster() {
    // Nothing leaves: the relay refuses connections, so queued mail waits for its retry.
    let server = Server::start(
        "hold_new_recipients_per_hour = 50\nnew_recipients_per_day = 0\nmessages_per_hour = 0\nplaintext = \"never\"\nrelay = \"127.0.0.1:9\"\nrelay_tls = \"none\"",
    );
    let (ok, _, err) = server.cli(
        &[
            "alias",
            "add",
            "postmaster@example.test",
            "bob@example.test",
        ],
        "",
    );
    assert!(ok, "{err}");
    let burst = |from: usize| -> Vec<String> {
        (from..from + 30)
            .map(|i| format!("victim{i}@remote.test"))
            .collect()
    };
    // 30 new recipients: under the threshold.
    let first = burst(0);
    let refs: Vec<&str> = first.iter().map(String::as_str).collect();
    assert_eq!(submit(&server, "alice@example.test", &refs), vec!["sent"]);
    assert_eq!(queue_counts(&server), (1, 0));
    // 60: the account is put on hold; both messages are held.
    let second = burst(30);
    let refs: Vec<&str> = second.iter().map(String::as_str).collect();
    assert_eq!(submit(&server, "alice@example.test", &refs), vec!["sent"]);
    assert_eq!(queue_counts(&server), (2, 2));
    // What it sends now is queued, and held.
    let third = burst(60);
    let refs: Vec<&str> = third.iter().map(String::as_str).collect();
    assert_eq!(submit(&server, "alice@example.test", &refs), vec!["sent"]);
    assert_eq!(queue_counts(&server), (3, 3));
    // The postmaster is told, and the log says so.
    let alert = common::outbound::wait_inbox(&server, "bob@example.test", 1).await;
    assert!(
        alert[0].contains("Subject: Outbound mail of alice@example.test is on hold"),
        "{}",
        alert[0]
    );
    assert!(
        alert[0].contains("60 new recipients within an hour"),
        "{}",
        alert[0]
    );
    assert!(
        alert[0].contains("mailkeep queue release --account alice@example.test"),
        "{}",
        alert[0]
    );
    let log = server.log_search_until(&["--kind", "account.hold", "--json"], "alice");
    assert!(log.contains("\"outcome\":\"held\""), "{log}");
    // Another account is not affected.
    assert_eq!(
        submit(&server, "bob@example.test", &["friend@remote.test"]),
        vec!["sent"]
    );
    assert_eq!(queue_counts(&server), (4, 3));

    // The admin releases it: everything it queued goes, and it may send again.
    let (ok, out, err) = server.cli(&["queue", "release", "--account", "alice@example.test"], "");
    assert!(ok, "{err}");
    assert!(out.contains("3 message(s) released"), "{out}");
    assert_eq!(queue_counts(&server).1, 0);
    let more = burst(90);
    let refs: Vec<&str> = more[..5].iter().map(String::as_str).collect();
    assert_eq!(submit(&server, "alice@example.test", &refs), vec!["sent"]);
    assert_eq!(queue_counts(&server).1, 0, "counted from the release on");
    let (ok, _, err) = server.cli(&["queue", "release", "--account", "alice@example.test"], "");
    assert!(!ok);
    assert!(err.contains("not on hold"), "{err}");
}
