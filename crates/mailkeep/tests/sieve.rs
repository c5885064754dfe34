//! Sieve at delivery (RFC 5228), end to end: a script stored and activated with `mailkeep
//! sieve`, mail sent over SMTP, every outcome read over IMAP with Python's imaplib: fileinto
//! with :create and :flags, discard, reject (550 when every recipient rejects, else a
//! bounce), a failing fileinto keeping the message, redirects and their loops, vacation,
//! the helpers, global scripts, editheader, and each action in the delivery log.

mod common;

use common::outbound::imap_fetch;
use common::{Server, PASSWORD};

const SCRIPT: &str = r#"require ["fileinto", "imap4flags", "mailbox", "reject", "envelope", "subaddress"];
# Mailing lists to their own folder, flagged.
if header :contains "List-Id" "team.corp.test" {
    fileinto :create :flags ["\\Flagged"] "Lists/Team";
    stop;
}
if envelope :detail "to" "junkmail" {
    discard;
    stop;
}
if header :is "Subject" "unwanted" {
    reject "I do not take such mail";
    stop;
}
if header :is "Subject" "to a missing folder" {
    fileinto "Nowhere";
}
"#;

async fn send(server: &Server, to: &[&str], data: &str) -> String {
    server.send_mail("boss@corp.test", to, data).await
}

/// Flags and subjects of a mailbox of alice, over IMAP.
fn imap_listing(server: &Server, mailbox: &str) -> String {
    let script = r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice@example.test", sys.argv[2])
typ, data = m.select('"' + sys.argv[3] + '"', readonly=True)
if typ != "OK":
    print("no such mailbox")
else:
    typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    for item in data:
        if isinstance(item, tuple):
            print(item[0].decode(), item[1].decode().strip())
m.logout()
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &server.listeners["imap"].port().to_string(),
            PASSWORD,
            mailbox,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "imaplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mail(subject: &str, extra: &str) -> String {
    format!(
        "From: Boss <boss@corp.test>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\
         Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{}@corp.test>\r\n{extra}\r\nHello.\r\n",
        subject.replace(' ', ".")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_file_flag_discard_and_reject() {
    let server = Server::start("");
    // A script with an error is refused, naming the line.
    let (ok, _, err) = server.cli(
        &["sieve", "put", "alice@example.test", "broken"],
        "require \"fileinto\";\nkeep;\nfileinto \"x\"\nkeep;\n",
    );
    assert!(!ok && err.contains("at line 4"), "{err}");
    let (ok, out, err) = server.cli(
        &["sieve", "put", "alice@example.test", "main", "--activate"],
        SCRIPT,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("stored for alice@example.test and active"),
        "{out}"
    );
    let (ok, out, _) = server.cli(&["sieve", "list", "alice@example.test"], "");
    assert!(ok && out.contains("main\t(active)"), "{out}");

    // fileinto :create :flags.
    let r = send(
        &server,
        &["alice@example.test"],
        &mail("team news", "List-Id: Team <team.corp.test>\r\n"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let listing = imap_listing(&server, "Lists/Team");
    assert!(
        listing.contains("\\Flagged") && listing.contains("Subject: team news"),
        "{listing}"
    );

    // discard: accepted, stored nowhere.
    let r = send(
        &server,
        &["alice+junkmail@example.test"],
        &mail("noise", ""),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    assert!(imap_fetch(&server, "alice@example.test", "INBOX").is_empty());

    // reject: refused when alice is the only recipient...
    let r = send(&server, &["alice@example.test"], &mail("unwanted", "")).await;
    assert!(
        r.starts_with("550 5.7.1 Rejected by the recipient's filter: I do not take such mail"),
        "{r}"
    );
    assert!(imap_fetch(&server, "alice@example.test", "INBOX").is_empty());
    // ...and bounced to the sender (RFC 5429 2.1) when another recipient takes the message
    // (bob has no script). Carol sent it, and gets the bounce naming alice and the reason.
    let (ok, _, err) = server.cli(&["user", "add", "carol@example.test"], PASSWORD);
    assert!(ok, "{err}");
    let r = server
        .send_mail(
            "carol@example.test",
            &["alice@example.test", "bob@example.test"],
            &mail("unwanted", ""),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    assert!(imap_fetch(&server, "alice@example.test", "INBOX").is_empty());
    assert_eq!(imap_fetch(&server, "bob@example.test", "INBOX").len(), 1);
    let bounce = imap_fetch(&server, "carol@example.test", "INBOX");
    assert_eq!(bounce.len(), 1, "{bounce:?}");
    for want in [
        "Return-Path: <>",
        "Subject: Undelivered Mail Returned to Sender",
        "Final-Recipient: rfc822; alice@example.test",
        "Status: 5.7.1",
        "I do not take such mail",
        "Subject: unwanted",
    ] {
        assert!(bounce[0].contains(want), "{want} in {}", bounce[0]);
    }
    // The bounce keeps to what the sender asked (RFC 3461): the address it wrote to, its
    // ORCPT and ENVID, only the header with RET=HDRS; none at all with NOTIFY=NEVER.
    let mut c = common::Raw::connect(server.smtp).await;
    assert_eq!(common::code(&c.cmd("EHLO client.test").await), "250");
    let r = c
        .cmd("MAIL FROM:<carol@example.test> RET=HDRS ENVID=env+2B1")
        .await;
    assert!(r.starts_with("250"), "{r}");
    let r = c
        .cmd("RCPT TO:<alice+x@example.test> ORCPT=rfc822;al+2Bx@example.test")
        .await;
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("RCPT TO:<bob@example.test>").await.starts_with("250"));
    assert_eq!(common::code(&c.cmd("DATA").await), "354");
    c.send(
        mail("unwanted", "")
            .replace("Hello.", "the body stays home")
            .as_bytes(),
    )
    .await;
    c.send(b".\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    let bounces = imap_fetch(&server, "carol@example.test", "INBOX");
    assert_eq!(bounces.len(), 2, "{bounces:?}");
    let b = &bounces[1];
    for want in [
        "Final-Recipient: rfc822; alice+x@example.test",
        "Original-Recipient: rfc822;al+x@example.test",
        // Both decoded from xtext (RFC 3464 2.2.1, 2.3.1).
        "Original-Envelope-Id: env+1",
        "Content-Type: text/rfc822-headers",
    ] {
        assert!(b.contains(want), "{want} in {b}");
    }
    assert!(!b.contains("the body stays home"), "{b}");
    let r = c.cmd("MAIL FROM:<carol@example.test>").await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("RCPT TO:<alice@example.test> NOTIFY=NEVER").await;
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("RCPT TO:<bob@example.test>").await.starts_with("250"));
    assert_eq!(common::code(&c.cmd("DATA").await), "354");
    c.send(mail("unwanted", "").as_bytes()).await;
    c.send(b".\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    c.cmd("QUIT").await;
    assert_eq!(
        imap_fetch(&server, "carol@example.test", "INBOX").len(),
        2,
        "no bounce with NOTIFY=NEVER"
    );
    assert!(imap_fetch(&server, "alice@example.test", "INBOX").is_empty());
    assert_eq!(imap_fetch(&server, "bob@example.test", "INBOX").len(), 3);

    // fileinto a mailbox that does not exist: kept in INBOX, the error logged.
    let r = send(
        &server,
        &["alice@example.test"],
        &mail("to a missing folder", ""),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let inbox = imap_fetch(&server, "alice@example.test", "INBOX");
    assert!(
        inbox
            .iter()
            .any(|m| m.contains("Subject: to a missing folder")),
        "{inbox:?}"
    );

    // Every action is in the delivery log.
    let log = server.log_search_until(&["--kind", "delivery.sieve", "--json"], "no such mailbox");
    for want in [
        "fileinto \\\"Lists/Team\\\"",
        "\"discard\"",
        "\"reject\"",
        "rejected: bounce sent to carol@example.test",
        "rejected: the sender's NOTIFY asks for no bounce; dropped",
        "fileinto \\\"Nowhere\\\": no such mailbox",
    ] {
        assert!(log.contains(want), "{want} in {log}");
    }
    let log = server.log_search_until(&["--kind", "delivery.stored", "--json"], "discarded");
    assert!(log.contains("\"outcome\":\"discarded\""), "{log}");

    // get, deactivate, delete.
    let (ok, out, _) = server.cli(&["sieve", "get", "alice@example.test", "main"], "");
    assert!(ok && out == SCRIPT, "{out}");
    let (ok, _, err) = server.cli(&["sieve", "delete", "alice@example.test", "main"], "");
    assert!(!ok && err.contains("active"), "{err}");
    let (ok, _, err) = server.cli(&["sieve", "deactivate", "alice@example.test"], "");
    assert!(ok, "{err}");
    let r = send(&server, &["alice@example.test"], &mail("unwanted", "")).await;
    assert!(r.starts_with("250"), "no script runs now: {r}");
    let (ok, _, err) = server.cli(&["sieve", "delete", "alice@example.test", "main"], "");
    assert!(ok, "{err}");
    let (ok, out, _) = server.cli(&["sieve", "check"], "if true { keep; }\n");
    assert!(ok && out.contains("valid"), "{out}");
}

/// Sets `user`'s active script.
fn script(server: &Server, user: &str, text: &str) {
    let (ok, _, err) = server.cli(&["sieve", "put", user, "main", "--activate"], text);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_go_on_and_loops_stop() {
    // Nothing leaves: the relay refuses connections, so what is forwarded stays queued.
    let server = Server::start("relay = \"127.0.0.1:9\"\nrelay_tls = \"none\"");
    // 1. A local redirect: bob's mail goes to alice, marked as delivered to bob.
    script(
        &server,
        "bob@example.test",
        "redirect \"alice@example.test\";\n",
    );
    let r = send(&server, &["bob@example.test"], &mail("for bob", "")).await;
    assert!(r.starts_with("250"), "{r}");
    assert!(imap_fetch(&server, "bob@example.test", "INBOX").is_empty());
    let alice = imap_fetch(&server, "alice@example.test", "INBOX");
    assert_eq!(alice.len(), 1);
    assert!(
        alice[0].contains("Delivered-To: alice@example.test\r\n")
            && alice[0].contains("Delivered-To: bob@example.test\r\n"),
        "{}",
        alice[0]
    );

    // 2. A loop between two users ends at once: kept where it would go round again.
    script(
        &server,
        "alice@example.test",
        "redirect \"bob@example.test\";\n",
    );
    let r = send(
        &server,
        &["alice@example.test"],
        &mail("round and round", ""),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let bob = imap_fetch(&server, "bob@example.test", "INBOX");
    assert_eq!(bob.len(), 1, "{bob:?}");
    assert!(bob[0].contains("Subject: round and round"), "{}", bob[0]);
    assert_eq!(
        imap_fetch(&server, "alice@example.test", "INBOX").len(),
        1,
        "only the first message"
    );
    let log = server.log_search_until(&["--kind", "delivery.sieve", "--json"], "a loop");
    assert!(
        log.contains("delivered to alice@example.test before"),
        "{log}"
    );

    // 3. To another domain (with :copy): queued with an SRS sender, and a copy kept.
    script(
        &server,
        "alice@example.test",
        "require \"copy\";\nredirect :copy \"friend@elsewhere.test\";\n",
    );
    let r = send(&server, &["alice@example.test"], &mail("pass it on", "")).await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(imap_fetch(&server, "alice@example.test", "INBOX").len(), 2);
    let queued = server.store().queue_list().await.unwrap();
    let m = queued
        .iter()
        .find(|m| {
            m.recipients
                .iter()
                .any(|r| r.recipient.address == "friend@elsewhere.test")
        })
        .expect("queued");
    assert!(
        m.sender.starts_with("SRS0=") && m.sender.ends_with("=corp.test=boss@example.test"),
        "{}",
        m.sender
    );
}

async fn send_from(server: &Server, from: &str, data: &str) -> String {
    server.send_mail(from, &["alice@example.test"], data).await
}

fn from_to_alice(from: &str, id: u32, extra: &str) -> String {
    format!(
        "From: {from}\r\nTo: alice@example.test\r\nSubject: question {id}\r\n\
         Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <q{id}@example.test>\r\n{extra}\r\nAre you there?\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacation_replies_once_and_never_to_lists_or_robots() {
    let server = Server::start("relay = \"127.0.0.1:9\"\nrelay_tls = \"none\"");
    let (ok, _, err) = server.cli(&["user", "add", "carol@example.test"], PASSWORD);
    assert!(ok, "{err}");
    script(
        &server,
        "alice@example.test",
        "require \"vacation\";\nvacation :days 1 :subject \"Away\" \"I am away until Monday.\";\n",
    );
    // bob writes: one reply, from alice, marked auto-replied, from the null sender.
    let r = send_from(
        &server,
        "bob@example.test",
        &from_to_alice("bob@example.test", 1, ""),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let bob = imap_fetch(&server, "bob@example.test", "INBOX");
    assert_eq!(bob.len(), 1, "{bob:?}");
    for want in [
        "Return-Path: <>",
        "Subject: Away",
        "Auto-Submitted: auto-replied",
        "In-Reply-To: <q1@example.test>",
        "I am away until Monday.",
    ] {
        assert!(bob[0].contains(want), "{want} in {}", bob[0]);
    }
    assert!(
        bob[0].contains("From: alice@example.test") || bob[0].contains("<alice@example.test>"),
        "{}",
        bob[0]
    );
    // His second message within the period gets none.
    let r = send_from(
        &server,
        "bob@example.test",
        &from_to_alice("bob@example.test", 2, ""),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(imap_fetch(&server, "bob@example.test", "INBOX").len(), 1);
    // Nothing to automatic mail or lists (RFC 3834).
    for (id, extra) in [
        (3, "Auto-Submitted: auto-replied\r\n"),
        (4, "List-Id: <news.example.test>\r\n"),
        (5, "Precedence: bulk\r\n"),
    ] {
        let r = send_from(
            &server,
            "carol@example.test",
            &from_to_alice("carol@example.test", id, extra),
        )
        .await;
        assert!(r.starts_with("250"), "{r}");
    }
    let carol = imap_fetch(&server, "carol@example.test", "INBOX");
    assert!(carol.is_empty(), "{carol:?}");
    // A sender elsewhere: the reply is queued from the null sender.
    let r = send_from(
        &server,
        "x@remote.test",
        &from_to_alice("x@remote.test", 6, ""),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let queued = server.store().queue_list().await.unwrap();
    let m = queued
        .iter()
        .find(|m| {
            m.recipients
                .iter()
                .any(|r| r.recipient.address == "x@remote.test")
        })
        .expect("reply queued");
    assert_eq!(m.sender, "");
    // alice got every message.
    assert_eq!(imap_fetch(&server, "alice@example.test", "INBOX").len(), 6);
    let log = server.log_search_until(
        &["--kind", "delivery.sieve", "--json"],
        "vacation reply sent to x@remote.test",
    );
    assert!(
        log.contains("vacation reply sent to bob@example.test"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_and_vacation_helpers_write_the_script() {
    let server = Server::start("");
    let (ok, _, err) = server.cli(&["user", "add", "carol@example.test"], PASSWORD);
    assert!(ok, "{err}");
    let (ok, out, err) = server.cli(
        &[
            "vacation",
            "set",
            "alice@example.test",
            "--subject",
            "Away",
            "--body",
            "Back on \"Monday\".",
            "--until",
            "2099-12-31",
            "--days",
            "2",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("vacation reply \"Away\" until 2099-12-31"),
        "{out}"
    );
    let (ok, out, err) = server.cli(
        &[
            "forward",
            "set",
            "alice@example.test",
            "bob@example.test",
            "--keep",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("forwarded to bob@example.test (and kept)"),
        "{out}"
    );
    let (ok, out, _) = server.cli(&["sieve", "list", "alice@example.test"], "");
    assert!(ok && out.contains("mailkeep-helpers\t(active)"), "{out}");

    let r = send_from(
        &server,
        "carol@example.test",
        &from_to_alice("carol@example.test", 1, ""),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(
        imap_fetch(&server, "alice@example.test", "INBOX").len(),
        1,
        "kept"
    );
    assert_eq!(
        imap_fetch(&server, "bob@example.test", "INBOX").len(),
        1,
        "forwarded"
    );
    let carol = imap_fetch(&server, "carol@example.test", "INBOX");
    assert_eq!(carol.len(), 1);
    assert!(
        carol[0].contains("Subject: Away") && carol[0].contains("Back on \"Monday\"."),
        "{}",
        carol[0]
    );

    // A vacation that ended sends nothing.
    let (ok, _, err) = server.cli(
        &[
            "vacation",
            "set",
            "alice@example.test",
            "--subject",
            "Gone",
            "--body",
            "x",
            "--until",
            "2001-01-01",
        ],
        "",
    );
    assert!(ok, "{err}");
    let r = send_from(
        &server,
        "bob@example.test",
        &from_to_alice("bob@example.test", 2, ""),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(
        imap_fetch(&server, "bob@example.test", "INBOX").len(),
        2,
        "only the forwarded copy"
    );

    // Bad input is named; another active script is not replaced silently.
    let (ok, _, err) = server.cli(
        &[
            "vacation",
            "set",
            "alice@example.test",
            "--subject",
            "a\nBcc: x@y.test",
            "--body",
            "b",
        ],
        "",
    );
    assert!(!ok && err.contains("--subject"), "{err}");
    let (ok, _, err) = server.cli(
        &[
            "vacation",
            "set",
            "alice@example.test",
            "--subject",
            "s",
            "--body",
            "${hex:0d}",
        ],
        "",
    );
    assert!(!ok && err.contains("--body"), "{err}");
    let (ok, _, err) = server.cli(
        &[
            "vacation",
            "set",
            "alice@example.test",
            "--subject",
            "s",
            "--body",
            "b",
            "--until",
            "soon",
        ],
        "",
    );
    assert!(!ok && err.contains("--until"), "{err}");
    let (ok, _, err) = server.cli(
        &["sieve", "put", "bob@example.test", "mine", "--activate"],
        "keep;\n",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = server.cli(
        &["forward", "set", "bob@example.test", "alice@example.test"],
        "",
    );
    assert!(!ok && err.contains("\"mine\" active"), "{err}");

    // Cleared, no script runs.
    for cmd in [["forward", "clear"], ["vacation", "clear"]] {
        let (ok, _, err) = server.cli(&[cmd[0], cmd[1], "alice@example.test"], "");
        assert!(ok, "{err}");
    }
    let (ok, out, _) = server.cli(&["sieve", "list", "alice@example.test"], "");
    assert!(ok && out.trim().is_empty(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_scripts_run_around_the_users() {
    let server = Server::start("sieve.before = [\"tagged\"]");
    let global = server.dir.path().join("sieve");
    std::fs::create_dir_all(&global).unwrap();
    std::fs::write(
        global.join("tagged.sieve"),
        "require \"fileinto\";\nif header :contains \"Subject\" \"[SPAM]\" { fileinto \"Junk\"; stop; }\n",
    )
    .unwrap();
    // alice's own script includes one of her others.
    let (ok, _, err) = server.cli(
        &["sieve", "put", "alice@example.test", "work"],
        "require [\"fileinto\", \"mailbox\"];\nfileinto :create \"Work\";\n",
    );
    assert!(ok, "{err}");
    script(
        &server,
        "alice@example.test",
        "require \"include\";\ninclude :personal \"work\";\n",
    );

    let r = send(&server, &["alice@example.test"], &mail("[SPAM] cheap", "")).await;
    assert!(r.starts_with("250"), "{r}");
    let r = send(&server, &["alice@example.test"], &mail("budget", "")).await;
    assert!(r.starts_with("250"), "{r}");
    let junk = imap_fetch(&server, "alice@example.test", "Junk");
    assert_eq!(junk.len(), 1, "the global script filed it and stopped");
    assert!(junk[0].contains("[SPAM] cheap"));
    let work = imap_listing(&server, "Work");
    assert!(
        work.contains("Subject: budget") && !work.contains("SPAM"),
        "{work}"
    );
    // bob has no script: the global one runs for him too.
    let r = send(&server, &["bob@example.test"], &mail("[SPAM] more", "")).await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(imap_fetch(&server, "bob@example.test", "Junk").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editheader_changes_are_stored() {
    let server = Server::start("");
    script(
        &server,
        "alice@example.test",
        "require [\"editheader\", \"imap4flags\"];\naddheader \"X-Sorted\" \"by alice's rules\";\ndeleteheader \"X-Tracking\";\nkeep :flags \"\\\\Seen\";\n",
    );
    let r = send(
        &server,
        &["alice@example.test"],
        &mail("edited", "X-Tracking: 12345\r\n"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let inbox = imap_fetch(&server, "alice@example.test", "INBOX");
    assert_eq!(inbox.len(), 1);
    let m = &inbox[0];
    assert!(m.contains("X-Sorted: by alice's rules\r\n"), "{m}");
    assert!(!m.contains("X-Tracking"), "{m}");
    assert!(
        m.starts_with("X-Sorted") || m.contains("Return-Path: <boss@corp.test>\r\n"),
        "{m}"
    );
    assert!(
        m.contains("Delivered-To: alice@example.test\r\n") && m.contains("Hello."),
        "{m}"
    );
    let listing = imap_listing(&server, "INBOX");
    assert!(
        listing.contains("\\Seen") && listing.contains("Subject: edited"),
        "{listing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_back_to_oneself_or_through_aliases_end() {
    let server = Server::start("");
    let (ok, _, err) = server.cli(
        &[
            "alias",
            "add",
            "team@example.test",
            "alice@example.test",
            "bob@example.test",
        ],
        "",
    );
    assert!(ok, "{err}");
    // Sub-addresses of herself, and an alias that holds her: each account gets one copy.
    script(
        &server,
        "alice@example.test",
        "require \"copy\";\nredirect :copy \"alice+a@example.test\";\nredirect :copy \"alice+b@example.test\";\nredirect :copy \"team@example.test\";\n",
    );
    let r = send(&server, &["alice@example.test"], &mail("fan out", "")).await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(imap_fetch(&server, "alice@example.test", "INBOX").len(), 1);
    assert_eq!(imap_fetch(&server, "bob@example.test", "INBOX").len(), 1);
    let log = server.log_search_until(&["--kind", "delivery.sieve", "--json"], "leads back");
    assert!(log.contains("redirected to team@example.test"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_sends_a_mailto_notification() {
    let server = Server::start("");
    // alice asks to be told on bob's address of mail from the boss (RFC 5435, RFC 5436).
    script(
        &server,
        "alice@example.test",
        "require [\"enotify\", \"variables\"];\n\
         if header :matches \"Subject\" \"*\" { set \"subject\" \"${1}\"; }\n\
         if address :is \"from\" \"boss@corp.test\" {\n\
           notify :importance \"1\" :message \"Boss wrote: ${subject}\" \"mailto:bob@example.test\";\n\
         }\n",
    );
    let r = send(&server, &["alice@example.test"], &mail("budget", "")).await;
    assert!(r.starts_with("250"), "{r}");
    // alice keeps the message; bob gets the notification, from alice, from the null sender.
    assert_eq!(imap_fetch(&server, "alice@example.test", "INBOX").len(), 1);
    let bob = imap_fetch(&server, "bob@example.test", "INBOX");
    assert_eq!(bob.len(), 1, "{bob:?}");
    for want in [
        "Return-Path: <>",
        "Subject: Boss wrote: budget",
        "Auto-Submitted: auto-notified",
        "Importance: High",
    ] {
        assert!(bob[0].contains(want), "{want} in {}", bob[0]);
    }
    assert!(
        bob[0].contains("From: alice@example.test") || bob[0].contains("<alice@example.test>"),
        "{}",
        bob[0]
    );
    // None about an automatic message.
    let r = send(
        &server,
        &["alice@example.test"],
        &mail("auto budget", "Auto-Submitted: auto-generated\r\n"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(imap_fetch(&server, "bob@example.test", "INBOX").len(), 1);
    let log = server.log_search_until(&["--kind", "delivery.sieve", "--json"], "not sent");
    assert!(
        log.contains("notification sent to bob@example.test"),
        "{log}"
    );
    assert!(log.contains("the message is automatic"), "{log}");
}
