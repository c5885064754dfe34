//! Compromised-account detection beyond bursts of new recipients (`tests/limits.rs`): a high
//! bounce rate (B refuses most recipients of alice's message), authenticated spam complaints
//! (RFC 5965 feedback reports; a forged one does not count), and logins from many new
//! networks (Python's imaplib from several loopback networks) each put the account's
//! outbound mail on hold and alert the postmaster.

mod common;

use common::outbound::{dns, free_port, start_a_with, start_b, submitter, wait_inbox};
use common::{Server, PASSWORD};
use lettre::AsyncTransport;
use mailkeep_testkit::{Rr, TestDns};

/// Makes bob the postmaster of example.test, where alerts go.
fn postmaster_is_bob(server: &Server) {
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
}

/// alice's hold as the log tells it (waits for it up to 10 s).
fn hold_event(server: &Server) -> String {
    server.log_search_until(&["--kind", "account.hold", "--json"], "alice@example.test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_bounce_rate_puts_the_sender_on_hold() {
    let ip = "127.0.0.71";
    let port = free_port(ip);
    let dns = dns(ip);
    let _b = start_b(ip, port);
    let a = start_a_with(
        &dns,
        port,
        "hold_min_recipients = 10\nnew_recipients_per_day = 0\nmessages_per_hour = 0",
    );
    postmaster_is_bob(&a);
    // One real recipient and nine B does not know: 90% bounce.
    let mut to = vec!["carol@b.test".to_string()];
    to.extend((1..10).map(|i| format!("nobody{i}@b.test")));
    let refs: Vec<&str> = to.iter().map(String::as_str).collect();
    submitter(&a)
        .send(common::outbound::message(&refs, "hello all"))
        .await
        .expect("submit");
    let alert = wait_inbox(&a, "bob@example.test", 1).await;
    assert!(
        alert[0].contains("Subject: Outbound mail of alice@example.test is on hold"),
        "{}",
        alert[0]
    );
    assert!(
        alert[0].contains("9 of its 10 recipients in the last 24 hours bounced"),
        "{}",
        alert[0]
    );
    let log = hold_event(&a);
    assert!(log.contains("\"signal\":\"bounce\""), "{log}");
    // What alice sends now waits.
    submitter(&a)
        .send(common::outbound::message(&["carol@b.test"], "again"))
        .await
        .expect("submit");
    let (ok, out, err) = a.cli(&["queue", "list"], "");
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("(held)") && l.contains("carol@b.test")),
        "{out}"
    );
}

/// A feedback report (RFC 5965) from `from` about the message `message_id` from alice.
fn feedback_report(from: &str, id: u32, message_id: &str) -> String {
    format!(
        "From: {from}\r\nTo: postmaster@example.test\r\nSubject: complaint\r\n\
         Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <fbl{id}@fbl.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\
         --b1\r\nContent-Type: message/feedback-report\r\n\r\n\
         Feedback-Type: abuse\r\nUser-Agent: fbl/1.0\r\nVersion: 1\r\n\r\n\
         --b1\r\nContent-Type: message/rfc822\r\n\r\n\
         From: Alice <alice@example.test>\r\nTo: someone@fbl.test\r\nSubject: buy now\r\n\
         Message-ID: <{message_id}>\r\n\r\nspam\r\n\
         --b1--\r\n"
    )
}

async fn report_from(server: &Server, sender: &str, data: &str) {
    let r = server
        .send_mail(sender, &["postmaster@example.test"], data)
        .await;
    assert!(r.starts_with("250"), "{r}");
}

/// `smtp.complaint` events: (counted, ignored), once `n` are logged.
fn complaints(server: &Server, n: usize) -> (usize, usize, String) {
    let mut log = String::new();
    for _ in 0..100 {
        let (ok, out, err) =
            server.cli(&["log", "search", "--kind", "smtp.complaint", "--json"], "");
        assert!(ok, "{err}");
        log = out;
        if log.matches("\"kind\":\"smtp.complaint\"").count() >= n {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let counted = log.matches("\"result\":\"counted\"").count();
    let all = log.matches("\"kind\":\"smtp.complaint\"").count();
    (counted, all - counted, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_spam_complaints_put_the_sender_on_hold() {
    let dns = TestDns::start(vec![
        ("fbl.test.", Rr::Txt("v=spf1 ip4:127.0.0.0/8 -all".into())),
        ("_dmarc.fbl.test.", Rr::Txt("v=DMARC1; p=none".into())),
    ])
    .unwrap();
    // Nothing leaves: the relay refuses connections. Two recipients make the share.
    let server = Server::start(&format!(
        "servers = [\"{}\"]\nhold_min_recipients = 2\nhold_complaint_rate = 0.5\n\
         plaintext = \"never\"\nrelay = \"127.0.0.1:9\"\nrelay_tls = \"none\"",
        dns.addr()
    ));
    postmaster_is_bob(&server);
    let newsletter = lettre::Message::builder()
        .from("Alice <alice@example.test>".parse().unwrap())
        .to("x@remote.test".parse().unwrap())
        .to("y@remote.test".parse().unwrap())
        .subject("newsletter")
        .message_id(Some("<news1@example.test>".into()))
        .body("news".to_string())
        .unwrap();
    submitter(&server).send(newsletter).await.expect("submit");
    // A forged report (its sender's domain does not authenticate) is not even read.
    report_from(
        &server,
        "fbl@forged.test",
        &feedback_report("fbl@forged.test", 1, "news1@example.test"),
    )
    .await;
    // An authentic report about a message alice never sent is ignored.
    report_from(
        &server,
        "fbl@fbl.test",
        &feedback_report("fbl@fbl.test", 2, "made-up@example.test"),
    )
    .await;
    let (counted, ignored, log) = complaints(&server, 1);
    assert_eq!((counted, ignored), (0, 1), "{log}");
    assert!(
        log.contains("no such message submitted by the account"),
        "{log}"
    );
    // One about her newsletter counts: 1 complaint of 2 recipients.
    report_from(
        &server,
        "fbl@fbl.test",
        &feedback_report("fbl@fbl.test", 3, "news1@example.test"),
    )
    .await;
    let log = hold_event(&server);
    assert!(log.contains("\"signal\":\"complaint\""), "{log}");
    assert!(log.contains("\"count\":1"), "{log}");
    // The same message complained of again counts once.
    report_from(
        &server,
        "fbl@fbl.test",
        &feedback_report("fbl@fbl.test", 4, "news1@example.test"),
    )
    .await;
    let (counted, ignored, log) = complaints(&server, 3);
    assert_eq!((counted, ignored), (1, 2), "{log}");
    assert!(log.contains("complained of before"), "{log}");
    // The reports themselves reached the postmaster, with the alert.
    let inbox = wait_inbox(&server, "bob@example.test", 5).await;
    assert!(
        inbox.iter().any(|m| m.contains("complained of spam")),
        "{inbox:?}"
    );
}

/// Logs in to IMAP as alice from each source address in turn.
fn imap_logins(server: &Server, sources: &[&str]) {
    let script = r#"
import imaplib, socket, sys
port, password = int(sys.argv[1]), sys.argv[2]
for src in sys.argv[3:]:
    class Src(imaplib.IMAP4):
        def _create_socket(self, timeout):
            return socket.create_connection((self.host, self.port), 10, source_address=(src, 0))
    m = Src("127.0.0.1", port)
    m.login("alice@example.test", password)
    m.logout()
"#;
    let mut args = vec![
        "-c".to_string(),
        script.to_string(),
        server.listeners["imap"].port().to_string(),
        PASSWORD.to_string(),
    ];
    args.extend(sources.iter().map(|s| s.to_string()));
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

#[test]
fn logins_from_many_new_networks_put_the_account_on_hold() {
    let server = Server::start("hold_new_login_networks = 3");
    postmaster_is_bob(&server);
    // Two addresses of one /24, then a second network: not yet.
    imap_logins(&server, &["127.0.1.1", "127.0.1.2", "127.0.2.1"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (ok, out, _) = server.cli(&["log", "search", "--kind", "account.hold"], "");
    assert!(ok && !out.contains("alice"), "{out}");
    // A third new network within the day: on hold.
    imap_logins(&server, &["127.0.3.1"]);
    let log = hold_event(&server);
    assert!(log.contains("logins from 3 networks"), "{log}");
    assert!(log.contains("127.0.3.0/24"), "{log}");
}
