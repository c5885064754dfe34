//! The spam classifier from the command line and on the MX: `mailkeep spam test` on two
//! folders the test writes (mbox `From ` lines included, as in the shared corpus), and
//! `mailkeep spam train` teaching a running server, which then files spam to Junk (or
//! refuses it past `spam.reject`) with an X-Spam-Status field.

mod common;

use std::path::Path;
use std::process::Command;

use common::Server;
use mailkeep_types::MailboxRole;

/// Twenty ham and twenty spam messages in `dir/ham` and `dir/spam`.
fn write_corpus(dir: &Path) {
    let (ham, spam) = (dir.join("ham"), dir.join("spam"));
    std::fs::create_dir(&ham).unwrap();
    std::fs::create_dir(&spam).unwrap();
    for i in 0..20 {
        std::fs::write(
            ham.join(format!("h{i:02}")),
            format!(
                "From colleague@example.org Mon Jan  1 00:00:00 2001\nFrom: Colleague <colleague@example.org>\nSubject: minutes of meeting {i}\n\nThe quarterly report is attached; see you at the meeting on Monday.\n"
            ),
        )
        .unwrap();
        std::fs::write(
            spam.join(format!("s{i:02}")),
            format!(
                "From: Deals <deals@cheap.test>\nSubject: cheap pills {i}\nContent-Type: text/html\n\n<p>Buy cheap pills now! <a href=\"http://cheap.test/buy\">Click here</a></p>\n"
            ),
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trained_server_files_spam_to_junk_and_can_refuse_it() {
    let mut server = Server::start("min_learnt = 10\nfailure_delay = \"10ms\"");
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    // Before it has learnt enough, rules alone score (this one lacks Date, Message-ID, To).
    let r = server
        .send_to_alice("From: x@remote.test\r\nSubject: hello\r\n\r\nhi\r\n")
        .await;
    assert!(r.starts_with("250"), "{r}");
    let inbox = server
        .mailbox_texts("alice@example.test", MailboxRole::Inbox)
        .await;
    assert!(inbox[0].contains("X-Spam-Status: No"), "{}", inbox[0]);
    assert!(inbox[0].contains("MISSING_DATE(+0.5)"), "{}", inbox[0]);
    assert!(!inbox[0].contains("BAYES("), "{}", inbox[0]);

    let (ok, out, err) = server.cli(
        &[
            "spam",
            "train",
            "--ham",
            &dir.path().join("ham").display().to_string(),
            "--spam",
            &dir.path().join("spam").display().to_string(),
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(out.contains("learnt 20 ham and 20 spam"), "{out}");

    // Spam (with a forged verdict of its own) goes to Junk, scored by us.
    let r = server.send_to_alice(
        "X-Spam-Status: No, score=0.000\r\nFrom: Deals <deals@cheap.test>\r\nSubject: cheap pills again\r\nContent-Type: text/html\r\n\r\n<p>Buy cheap pills now! <a href=\"http://cheap.test/x\">Click here</a></p>\r\n",
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let junk = server
        .mailbox_texts("alice@example.test", MailboxRole::Junk)
        .await;
    assert_eq!(junk.len(), 1);
    assert!(
        junk[0].contains("X-Spam-Status: Yes, score="),
        "{}",
        junk[0]
    );
    assert_eq!(
        junk[0].matches("X-Spam-Status").count(),
        1,
        "the forged one is gone"
    );
    // Ham stays in the INBOX, marked No.
    let r = server.send_to_alice(
        "From: Colleague <colleague@example.org>\r\nSubject: minutes of the meeting\r\n\r\nThe quarterly report is attached.\r\n",
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let inbox = server
        .mailbox_texts("alice@example.test", MailboxRole::Inbox)
        .await;
    assert!(
        inbox[1].contains("X-Spam-Status: No, score="),
        "{}",
        inbox[1]
    );
    let log = server.log_search_until(&["--kind", "smtp.spam", "--json"], "\"junk\"");
    assert!(log.contains("\"clues\""), "{log}");

    // Spam our own user submits to another domain is queued held, not sent.
    use lettre::AsyncTransport;
    let spammy = lettre::Message::builder()
        .from("Alice <alice@example.test>".parse().unwrap())
        .to("victim@remote.test".parse().unwrap())
        .subject("cheap pills")
        .header(lettre::message::header::ContentType::TEXT_HTML)
        .body(
            "<p>Buy cheap pills now! <a href=\"http://cheap.test/buy\">Click here</a></p>"
                .to_string(),
        )
        .unwrap();
    common::outbound::submitter(&server)
        .send(spammy)
        .await
        .expect("submit");
    let (ok, out, err) = server.cli(&["queue", "list"], "");
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("(held)") && l.contains("victim@remote.test")),
        "{out}"
    );
    let log = server.log_search_until(&["--kind", "queue.spam_hold", "--json"], "\"held\"");
    assert!(log.contains("\"score\""), "{log}");

    // With a reject threshold, such spam is refused at the end of DATA.
    let text = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(&server.config, text.replace("reject = 0 ", "reject = 0.9 ")).unwrap();
    server.restart();
    let r = server.send_to_alice(
        "From: Deals <deals@cheap.test>\r\nSubject: cheap pills\r\nContent-Type: text/html\r\n\r\n<p>Buy cheap pills now! Click here</p>\r\n",
    )
    .await;
    assert!(r.starts_with("550 5.7.1 Message refused as spam"), "{r}");
}

#[test]
fn spam_test_cross_validates_two_folders() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let (ham, spam) = (dir.path().join("ham"), dir.path().join("spam"));
    let out = Command::new(common::BIN)
        .args(["spam", "test", "--ham"])
        .arg(&ham)
        .arg("--spam")
        .arg(&spam)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("5-fold cross-validation, spam from a score of 0.8: 20 ham, 20 spam"),
        "{text}"
    );
    assert!(
        text.contains("false positives: 0 of 20 ham (0.00%)"),
        "{text}"
    );
    assert!(
        text.contains("false negatives: 0 of 20 spam (0.00%)"),
        "{text}"
    );

    let out = Command::new(common::BIN)
        .args(["spam", "test", "--ham"])
        .arg(&ham)
        .args(["--spam", "/nonexistent", "--threshold", "0.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spam"));
}
