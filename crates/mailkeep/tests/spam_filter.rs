//! Spam filtering on the MX beyond the server's classifier: rules, sender authentication and
//! domain blocklists (served by a DNS server the test starts) in `X-Spam-Status`; users'
//! allowlists and blocklists deciding for each recipient of one message; and users teaching
//! their own model by moving mail into and out of Junk with Python's imaplib.

mod common;

use common::Server;
use mailkeep_testkit::{Rr, TestDns};
use mailkeep_types::MailboxRole;

/// Sends `data` from `from` to every address of `to` over the MX port; the final reply.
async fn send(server: &Server, from: &str, to: &[&str], data: &str) -> String {
    server.send_mail(from, to, data).await
}

/// A well-formed message (Date, Message-ID, To): no header rule fires on it.
fn message(from: &str, id: u32, subject: &str, body: &str) -> String {
    let date = chrono_like_now();
    format!(
        "From: {from}\r\nTo: alice@example.test\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{id}@remote.test>\r\n\r\n{body}\r\n"
    )
}

/// The current time as an RFC 5322 date, from `date` (the test machine's).
fn chrono_like_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-R"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocklisted_domains_rules_and_user_lists_decide_per_recipient() {
    let dns = TestDns::start(vec![
        // The sender's domain is on the RHSBL, with SPF that passes for loopback.
        (
            "badsender.test.dbl.test.",
            Rr::A("127.0.1.2".parse().unwrap()),
        ),
        (
            "badsender.test.",
            Rr::Txt("v=spf1 ip4:127.0.0.0/8 -all".into()),
        ),
        // A link domain on the URI blocklist; another the list refuses to answer about.
        ("evil.test.uri.test.", Rr::A("127.0.0.2".parse().unwrap())),
        (
            "refused.test.uri.test.",
            Rr::A("127.0.0.1".parse().unwrap()),
        ),
    ])
    .unwrap();
    let server = Server::start(&format!(
        "servers = [\"{}\"]\nrhsbl = [\"dbl.test\"]\nuribl = [\"uri.test\"]",
        dns.addr()
    ));

    // Listed sender domain and link: Junk for both, the reasons in each copy's field.
    let body = "Offer at http://www.evil.test/buy and https://refused.test/x";
    let r = send(
        &server,
        "x@badsender.test",
        &[ALICE, BOB],
        &message("x@badsender.test", 1, "offer", body),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    for user in [ALICE, BOB] {
        let junk = server.mailbox_texts(user, MailboxRole::Junk).await;
        assert_eq!(junk.len(), 1, "{user}");
        let field = junk[0]
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .replace("\r\n\t", " ");
        assert!(field.contains("X-Spam-Status: Yes, score="), "{field}");
        for test in ["SPF_PASS(-0.3)", "RHSBL_LISTED(+3.0)", "URIBL_LISTED(+3.0)"] {
            assert!(field.contains(test), "{test} in {field}");
        }
        assert_eq!(junk[0].matches("X-Spam-Status").count(), 1);
    }
    let log = server.log_search_until(&["--kind", "smtp.spam", "--json"], "evil.test on uri.test");
    assert!(log.contains("badsender.test on dbl.test"), "{log}");
    assert!(
        !log.contains("refused.test on"),
        "a refusal is no listing: {log}"
    );

    // Bob allows the (SPF-authenticated) sender: the same message now reaches his INBOX,
    // while it still goes to alice's Junk.
    let (ok, out, err) = server.cli(&["spam", "allow", BOB, "X@BadSender.test"], "");
    assert!(ok, "{err}");
    assert!(
        out.contains("x@badsender.test is on bob@example.test's allowlist"),
        "{out}"
    );
    let r = send(
        &server,
        "x@badsender.test",
        &[ALICE, BOB],
        &message("x@badsender.test", 2, "offer again", body),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(
        server.mailbox_texts(ALICE, MailboxRole::Junk).await.len(),
        2
    );
    let bob_inbox = server.mailbox_texts(BOB, MailboxRole::Inbox).await;
    assert_eq!(bob_inbox.len(), 1);
    assert!(
        bob_inbox[0].contains("USER_ALLOWLIST(-20.0)"),
        "{}",
        bob_inbox[0]
    );
    assert!(
        bob_inbox[0].contains("X-Spam-Status: No"),
        "{}",
        bob_inbox[0]
    );

    // Alice blocks a domain: its otherwise clean mail goes to her Junk, not to bob's.
    let (ok, _, err) = server.cli(&["spam", "block", ALICE, "@pushy.test"], "");
    assert!(ok, "{err}");
    let (ok, out, _) = server.cli(&["spam", "lists", ALICE], "");
    assert!(ok && out.contains("block\t@pushy.test"), "{out}");
    let r = send(
        &server,
        "news@mail.pushy.test",
        &[ALICE, BOB],
        &message(
            "News <news@mail.pushy.test>",
            3,
            "our news",
            "Hello, our news.",
        ),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let junk = server.mailbox_texts(ALICE, MailboxRole::Junk).await;
    assert_eq!(junk.len(), 3);
    assert!(junk[2].contains("USER_BLOCKLIST(+20.0)"), "{}", junk[2]);
    let bob_inbox = server.mailbox_texts(BOB, MailboxRole::Inbox).await;
    assert_eq!(bob_inbox.len(), 2);
    assert!(
        bob_inbox[1].contains("X-Spam-Status: No"),
        "{}",
        bob_inbox[1]
    );
    assert!(!bob_inbox[1].contains("USER_"), "{}", bob_inbox[1]);

    // Spam is not forwarded to other domains: an external-only alias refuses it, a mixed
    // one keeps its local copy (in Junk) and skips the forward.
    for (alias, targets) in [
        ("out@example.test", vec!["x@elsewhere.test"]),
        ("both@example.test", vec![BOB, "y@elsewhere.test"]),
    ] {
        let mut args = vec!["alias", "add", alias];
        args.extend(targets);
        let (ok, _, err) = server.cli(&args, "");
        assert!(ok, "{err}");
    }
    let r = send(
        &server,
        "x@badsender.test",
        &["out@example.test"],
        &message("x@badsender.test", 4, "offer", body),
    )
    .await;
    assert!(
        r.starts_with("550 5.7.1 Not forwarded: the message looks like spam"),
        "{r}"
    );
    let r = send(
        &server,
        "x@badsender.test",
        &["both@example.test"],
        &message("x@badsender.test", 5, "offer", body),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let log = server.log_search_until(
        &["--kind", "smtp.forward_refused", "--json"],
        "y@elsewhere.test",
    );
    assert!(log.contains("\"spam_score\""), "{log}");
    let (ok, out, _) = server.cli(&["queue", "list"], "");
    assert!(
        ok && !out.contains("elsewhere.test"),
        "nothing queued: {out}"
    );

    // Bad entries and users are named.
    let (ok, _, err) = server.cli(&["spam", "block", ALICE, "not an address"], "");
    assert!(!ok && err.contains("ENTRY"), "{err}");
    let (ok, _, err) = server.cli(&["spam", "block", "nobody@example.test", "@x.test"], "");
    assert!(!ok && err.contains("no such user"), "{err}");
    let (ok, out, _) = server.cli(&["spam", "unlist", ALICE, "@pushy.test"], "");
    assert!(ok && out.contains("none of"), "{out}");
}

/// Runs imaplib as alice: `steps` are (mailbox to select, UIDs, destination) MOVEs.
fn imap_moves(server: &Server, steps: &[(&str, &str, &str)]) {
    let script = r#"
import imaplib, sys
imaplib.Commands.setdefault("MOVE", ("SELECTED",))
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice@example.test", sys.argv[2])
for step in sys.argv[3:]:
    box, uids, dest = step.split(" ")
    typ, _ = m.select(box)
    assert typ == "OK", box
    typ, data = m.uid("MOVE", uids, dest)
    assert typ == "OK", (step, data)
m.logout()
"#;
    let mut args = vec![
        "-c".to_string(),
        script.to_string(),
        server.listeners["imap"].port().to_string(),
        common::PASSWORD.to_string(),
    ];
    args.extend(steps.iter().map(|(b, u, d)| format!("{b} {u} {d}")));
    let out = std::process::Command::new("python3")
        .args(&args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "imaplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `spam status alice` until it says `want` (learning runs after the MOVE's reply).
fn status_until(server: &Server, want: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let (ok, out, err) = server.cli(&["spam", "status", ALICE], "");
        assert!(ok, "{err}");
        if out.contains(want) || start.elapsed() > std::time::Duration::from_secs(10) {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_mail_into_and_out_of_junk_teaches_the_users_model() {
    let server = Server::start("min_learnt = 3");
    let spam_body = "Cheap replica watches, casino bonus, pills without prescription. Order now!";
    let ham_body = "The quarterly budget review moved to Thursday; agenda and minutes attached.";
    for i in 0..3 {
        let m = message("deals@shop.test", 10 + i, "watches casino pills", spam_body);
        assert!(send(&server, "deals@shop.test", &[ALICE], &m)
            .await
            .starts_with("250"));
        let m = message("carol@partner.test", 20 + i, "budget review", ham_body);
        assert!(send(&server, "carol@partner.test", &[ALICE], &m)
            .await
            .starts_with("250"));
    }
    // INBOX UIDs 1..6: spam at odd, ham at even. Alice files all six as spam, then takes
    // the ham back out: those are learnt again as ham, not counted twice.
    imap_moves(&server, &[("INBOX", "1:6", "Junk")]);
    let out = status_until(&server, "0 ham, 6 spam");
    assert!(out.contains("alice@example.test: 0 ham, 6 spam"), "{out}");
    // In Junk the ham now has UIDs 2, 4, 6 (the move kept their order).
    imap_moves(&server, &[("Junk", "2,4,6", "INBOX")]);
    let out = status_until(&server, "3 ham, 3 spam");
    assert!(out.contains("alice@example.test: 3 ham, 3 spam"), "{out}");
    assert!(out.contains("server model: 0 ham, 0 spam"), "{out}");
    // Moving spam to Trash teaches nothing.
    imap_moves(&server, &[("Junk", "1", "Trash")]);

    // New spam: alice's model files it to her Junk; bob has no model (rules alone).
    let m = message("deals@shop.test", 30, "watches casino pills", spam_body);
    let r = send(&server, "deals@shop.test", &[ALICE, BOB], &m).await;
    assert!(r.starts_with("250"), "{r}");
    let junk = server.mailbox_texts(ALICE, MailboxRole::Junk).await;
    let last = junk.last().expect("in Junk");
    assert!(last.contains("Message-ID: <30@remote.test>"), "{last}");
    assert!(
        last.contains("X-Spam-Status: Yes") && last.contains("BAYES("),
        "{last}"
    );
    let bob = server.mailbox_texts(BOB, MailboxRole::Inbox).await;
    assert_eq!(bob.len(), 1);
    assert!(
        bob[0].contains("X-Spam-Status: No") && !bob[0].contains("BAYES("),
        "{}",
        bob[0]
    );
    // And ham stays in alice's INBOX.
    let m = message("carol@partner.test", 31, "budget review", ham_body);
    assert!(send(&server, "carol@partner.test", &[ALICE], &m)
        .await
        .starts_with("250"));
    let inbox = server.mailbox_texts(ALICE, MailboxRole::Inbox).await;
    let last = inbox.last().expect("in INBOX");
    assert!(
        last.contains("<31@remote.test>") && last.contains("X-Spam-Status: No"),
        "{last}"
    );
    let (ok, out, _) = server.cli(&["spam", "status", ALICE], "");
    assert!(ok && out.contains("3 ham, 3 spam"), "{out}");
}
