//! Forwarding end to end, between two mailkeep servers and a DNS server the test starts:
//! dave@sender.test (an outside server on 127.0.0.66, signing with dkimpy) writes to aliases of
//! A (example.test) that forward to B (b.test, sender.test).
//! - The forwarded copy reaches B with an SRS envelope sender of example.test and A's ARC
//!   seal: B finds spf=pass (A sends for example.test), dkim=pass for sender.test (the message
//!   is unchanged), arc=pass and dmarc=pass.
//! - A forward that B refuses bounces back to dave through the SRS address; a bounce sent to
//!   that address over SMTP is passed on to dave, and an altered one is refused.
//! - A forgery of A's own domain is not forwarded (SPF and DMARC would pass after us).
//! - Mail submitted to such an alias is sent like any other: from the user, signed by A.

mod common;

use std::net::IpAddr;

use common::outbound::{dkim_txt, free_port, point_dns, submitter, wait_inbox};
use common::{code, Raw, Server, PASSWORD};
use lettre::AsyncTransport;
use mailkeep_testkit::{Rr, TestDns};

const A_IP: &str = "127.0.0.45";
const B_IP: &str = "127.0.0.46";
/// dave@sender.test's own server: in sender.test's SPF record.
const SENDER_IP: &str = "127.0.0.66";
/// sender.test's Ed25519 DKIM key (a test seed).
const SEED: &str = "6b1f0e0c3d4a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4";

/// dave's server signs for sender.test.
const DAVE_KEY: common::Dkimpy = common::Dkimpy {
    seed: SEED,
    domain: "sender.test",
    selector: "s1",
};

/// Sends a message from dave's server to A; returns the RCPT replies and the final reply.
async fn from_dave(a: &Server, from: &str, rcpts: &[&str], data: &str) -> (Vec<String>, String) {
    let mut c = Raw::connect_from(SENDER_IP.parse::<IpAddr>().unwrap(), a.smtp).await;
    assert_eq!(code(&c.cmd("EHLO mail.sender.test").await), "250");
    assert_eq!(code(&c.cmd(&format!("MAIL FROM:<{from}>")).await), "250");
    let mut replies = Vec::new();
    for r in rcpts {
        replies.push(c.cmd(&format!("RCPT TO:<{r}>")).await);
    }
    if !replies.iter().any(|r| r.starts_with("250")) {
        c.cmd("QUIT").await;
        return (replies, String::new());
    }
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(data.as_bytes()).await;
    c.send(b".\r\n").await;
    let end = c.reply().await;
    c.cmd("QUIT").await;
    (replies, end)
}

/// The value of the first `name:` header field of a message (unfolded).
fn header(message: &str, name: &str) -> Option<String> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    let mut out: Option<String> = None;
    for line in head.split("\r\n") {
        match &mut out {
            Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
            Some(_) => break,
            None => {
                if let Some((n, v)) = line.split_once(':') {
                    if n.eq_ignore_ascii_case(name) {
                        out = Some(v.trim().to_string());
                    }
                }
            }
        }
    }
    out
}

fn cli_ok(server: &Server, args: &[&str], stdin: &str) {
    let (ok, _, err) = server.cli(args, stdin);
    assert!(ok, "{args:?}: {err}");
}

/// A (example.test) and B (b.test, sender.test, with users carol and dave), each other's MX
/// through a DNS server the test runs (kept alive by the caller).
fn two_servers() -> (Server, Server, TestDns) {
    let port = free_port(A_IP);
    let queue = format!(
        "port = {port}\nretry_first = \"1s\"\nretry_max = \"2s\"\nfailure_delay = \"10ms\"\n"
    );
    let mut a = Server::start(&format!("address = \"{A_IP}:{port}\"\n{queue}"));
    let mut b = Server::start(&format!(
        "address = \"{B_IP}:{port}\"\nhostname = \"mx.b.test\"\n{queue}"
    ));
    assert_eq!(a.smtp.to_string(), format!("{A_IP}:{port}"));
    assert_eq!(b.smtp.to_string(), format!("{B_IP}:{port}"));

    // Both servers send from 127.0.0.1 (the loopback source address).
    let mut records: Vec<(String, Rr)> = vec![
        (
            "example.test.".into(),
            Rr::Mx(10, "mx.example.test.".into()),
        ),
        ("mx.example.test.".into(), Rr::A(A_IP.parse().unwrap())),
        // A's second domain (B hosts example.test too: every test server does).
        ("a.test.".into(), Rr::Mx(10, "mx.example.test.".into())),
        (
            "example.test.".into(),
            Rr::Txt("v=spf1 ip4:127.0.0.1 -all".into()),
        ),
        (
            "_dmarc.example.test.".into(),
            Rr::Txt("v=DMARC1; p=none".into()),
        ),
        ("b.test.".into(), Rr::Mx(10, "mx.b.test.".into())),
        ("sender.test.".into(), Rr::Mx(10, "mx.b.test.".into())),
        ("mx.b.test.".into(), Rr::A(B_IP.parse().unwrap())),
        (
            "sender.test.".into(),
            Rr::Txt(format!("v=spf1 ip4:{SENDER_IP} -all")),
        ),
        (
            "_dmarc.sender.test.".into(),
            Rr::Txt("v=DMARC1; p=reject".into()),
        ),
        (
            "s1._domainkey.sender.test.".into(),
            Rr::Txt(format!("v=DKIM1; k=ed25519; p={}", DAVE_KEY.public())),
        ),
    ];
    records.extend(dkim_txt(&a));
    let dns = TestDns::start(
        records
            .iter()
            .map(|(n, r)| (n.as_str(), r.clone()))
            .collect(),
    )
    .unwrap();
    for s in [&mut a, &mut b] {
        point_dns(&s.config, &dns);
        s.restart();
    }
    for d in ["b.test", "sender.test"] {
        cli_ok(&b, &["domain", "add", d], "");
    }
    cli_ok(&b, &["user", "add", "carol@b.test"], PASSWORD);
    cli_ok(&b, &["user", "add", "dave@sender.test"], PASSWORD);
    (a, b, dns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_mail_is_rewritten_sealed_and_bounces_come_back() {
    let (a, b, _dns) = two_servers();
    cli_ok(
        &a,
        &["alias", "add", "fwd@example.test", "carol@b.test"],
        "",
    );
    cli_ok(
        &a,
        &[
            "alias",
            "add",
            "both@example.test",
            "bob@example.test",
            "carol@b.test",
        ],
        "",
    );
    cli_ok(
        &a,
        &["alias", "add", "gone@example.test", "nobody@b.test"],
        "",
    );

    // 1. dave writes to two aliases of A that forward to carol: one copy goes to B, one to
    // bob at A.
    let signed = DAVE_KEY.sign(
        "From: Dave <dave@sender.test>\r\nTo: fwd@example.test\r\nSubject: forwarded\r\n\
Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <fw1@sender.test>\r\n\r\nhello carol\r\n",
    );
    let (rcpts, end) = from_dave(
        &a,
        "dave@sender.test",
        &["fwd@example.test", "both@example.test"],
        &signed,
    )
    .await;
    assert!(rcpts[0].contains("(forwarded)"), "{rcpts:?}");
    assert!(rcpts[1].starts_with("250"), "{rcpts:?}");
    assert!(end.starts_with("250"), "{end}");
    assert_eq!(wait_inbox(&a, "bob@example.test", 1).await.len(), 1);
    let got = wait_inbox(&b, "carol@b.test", 1).await;
    assert_eq!(got.len(), 1, "one forwarded copy for two aliases");
    let m = &got[0];
    let return_path = header(m, "Return-Path").expect("Return-Path");
    let srs = return_path.trim_matches(['<', '>']).to_string();
    assert!(
        srs.starts_with("SRS0=") && srs.ends_with("=sender.test=dave@example.test"),
        "{srs}"
    );
    let seal = header(m, "ARC-Seal").expect("ARC-Seal");
    for want in ["i=1", "cv=none", "d=example.test", "s=mk1r", "a=rsa-sha256"] {
        assert!(seal.contains(want), "{want} in {seal}");
    }
    let aar = header(m, "ARC-Authentication-Results").expect("AAR");
    assert!(aar.starts_with("i=1; mail.example.test;"), "{aar}");
    assert!(aar.contains("dmarc=pass"), "{aar}");
    let results = header(m, "Authentication-Results").expect("B's results");
    assert!(results.starts_with("mx.b.test;"), "{results}");
    for want in [
        "spf=pass",
        // Quoted: SRS addresses hold '=' (RFC 8601 2.2 pvalue).
        "smtp.mailfrom=\"SRS0=",
        "dkim=pass header.i=@sender.test",
        "arc=pass",
        "dmarc=pass header.from=sender.test",
    ] {
        assert!(results.contains(want), "{want} in {results}");
    }
    assert!(m.contains("\r\n\r\nhello carol\r\n"), "{m}");
    let log = a.log_search_until(
        &["--recipient", "carol@b.test", "--json"],
        "queue.forwarded",
    );
    assert!(log.contains("\"arc_sealed\":true"), "{log}");

    // 2. A forward B refuses: A's bounce goes to the SRS address, which stands for dave.
    let (_, end) = from_dave(
        &a,
        "dave@sender.test",
        &["gone@example.test"],
        "From: dave@sender.test\r\nTo: gone@example.test\r\nSubject: to nobody\r\n\r\nx\r\n",
    )
    .await;
    assert!(end.starts_with("250"), "{end}");
    let got = wait_inbox(&b, "dave@sender.test", 1).await;
    let bounce = &got[0];
    assert!(
        header(bounce, "Return-Path").as_deref() == Some("<>"),
        "{bounce}"
    );
    assert!(bounce.contains("nobody@b.test"), "{bounce}");
    assert!(
        bounce.contains("Original-Recipient: rfc822;gone@example.test"),
        "{bounce}"
    );

    // 3. A bounce sent to the SRS address over SMTP is passed on to dave; an altered address
    // is refused.
    let mut c = Raw::connect_from("127.0.0.77".parse::<IpAddr>().unwrap(), a.smtp).await;
    assert_eq!(code(&c.cmd("EHLO bouncer.test").await), "250");
    assert_eq!(code(&c.cmd("MAIL FROM:<>").await), "250");
    let (local, _) = srs.rsplit_once('@').unwrap();
    let hash = &local[5..9];
    let altered = srs.replacen(hash, if hash == "AAAA" { "BBBB" } else { "AAAA" }, 1);
    let r = c.cmd(&format!("RCPT TO:<{altered}>")).await;
    assert!(r.starts_with("550 5.1.1"), "{r}");
    let r = c.cmd(&format!("RCPT TO:<{srs}>")).await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(b"From: MAILER-DAEMON@b.test\r\nTo: dave@sender.test\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bounce1@b.test>\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\nlate bounce\r\n.\r\n")
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT").await;
    let got = wait_inbox(&b, "dave@sender.test", 2).await;
    assert!(got.iter().any(|m| m.contains("late bounce")), "{got:?}");

    // 4. A forgery of A's own domain (DMARC fails, p=none: delivered locally) is not
    // forwarded: from A's address, SPF and DMARC would pass at the next hop.
    let forged =
        "From: ceo@example.test\r\nTo: both@example.test\r\nSubject: wire the money\r\n\r\nnow\r\n";
    let (_, end) = from_dave(&a, "ceo@example.test", &["fwd@example.test"], forged).await;
    assert!(end.starts_with("550 5.7.1 Not forwarded"), "{end}");
    // A subdomain of ours aligns with our SRS address just as well.
    let (_, end) = from_dave(
        &a,
        "x@mail.example.test",
        &["fwd@example.test"],
        "From: x@mail.example.test\r\nTo: fwd@example.test\r\nSubject: sub\r\n\r\nx\r\n",
    )
    .await;
    assert!(end.starts_with("550 5.7.1 Not forwarded"), "{end}");
    let (_, end) = from_dave(&a, "ceo@example.test", &["both@example.test"], forged).await;
    assert!(end.starts_with("250"), "{end}");
    // Delivered locally, to Junk: an unauthenticated From: of our own domain weighs in the
    // spam score too.
    let junk = a
        .mailbox_texts("bob@example.test", mailkeep_types::MailboxRole::Junk)
        .await;
    let copy = junk
        .iter()
        .find(|m| m.contains("wire the money"))
        .expect("in Junk");
    assert!(copy.contains("FROM_OUR_DOMAIN_UNAUTH(+2.5)"), "{copy}");
    // Log events land a moment after the replies: wait for all three.
    let mut refused = String::new();
    for _ in 0..100 {
        refused = a.log_search_until(
            &["--kind", "smtp.forward_refused", "--json"],
            "carol@b.test",
        );
        if refused.matches("\"kind\":\"smtp.forward_refused\"").count() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        refused.matches("\"kind\":\"smtp.forward_refused\"").count(),
        3,
        "{refused}"
    );

    // 5. Submitted mail to the alias goes out as the user's, signed by A, no SRS.
    submitter(&a)
        .send(common::outbound::message(
            &["fwd@example.test"],
            "from alice",
        ))
        .await
        .expect("submit");
    let got = wait_inbox(&b, "carol@b.test", 2).await;
    let m = got
        .iter()
        .find(|m| m.contains("Subject: from alice"))
        .expect("alice's message");
    assert_eq!(
        header(m, "Return-Path").as_deref(),
        Some("<alice@example.test>")
    );
    assert!(header(m, "ARC-Seal").is_none(), "{m}");
    let results = header(m, "Authentication-Results").unwrap_or_default();
    assert!(
        results.contains("dkim=pass header.d=example.test"),
        "{results}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_forwarding_off_external_targets_are_refused_or_skipped() {
    // `[forwarding] enabled` (other sections have an `enabled` key too).
    let mut server = Server::start("");
    let text = std::fs::read_to_string(&server.config).unwrap();
    let off = text.replacen(
        "enabled = true               # aliases may forward",
        "enabled = false              # aliases may forward",
        1,
    );
    assert_ne!(off, text, "the forwarding switch is in the config");
    std::fs::write(&server.config, off).unwrap();
    server.restart();
    cli_ok(
        &server,
        &["alias", "add", "out@example.test", "x@elsewhere.test"],
        "",
    );
    cli_ok(
        &server,
        &[
            "alias",
            "add",
            "mixed@example.test",
            "bob@example.test",
            "x@elsewhere.test",
        ],
        "",
    );
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(code(&c.cmd("EHLO client.test").await), "250");
    assert_eq!(code(&c.cmd("MAIL FROM:<s@remote.test>").await), "250");
    let r = c.cmd("RCPT TO:<out@example.test>").await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    let r = c.cmd("RCPT TO:<mixed@example.test>").await;
    assert!(r.starts_with("250"), "{r}");
    // Still no relaying: an address elsewhere is refused as ever.
    let r = c.cmd("RCPT TO:<x@elsewhere.test>").await;
    assert!(r.starts_with("554 5.7.1"), "{r}");
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(b"From: s@remote.test\r\nSubject: mixed\r\n\r\nx\r\n.\r\n")
        .await;
    assert_eq!(code(&c.reply().await), "250");
    c.cmd("QUIT").await;
    assert_eq!(wait_inbox(&server, "bob@example.test", 1).await.len(), 1);
    let log = server.log_search_until(
        &["--kind", "smtp.forward_refused", "--json"],
        "forwarding is turned off",
    );
    assert!(log.contains("x@elsewhere.test"), "{log}");
    let (ok, out, err) = server.cli(&["queue", "list"], "");
    assert!(ok, "{err}");
    assert!(!out.contains("elsewhere.test"), "nothing queued: {out}");
}

/// A Sieve redirect to another domain goes like an alias's copy: SRS, A's ARC seal, the
/// user's Delivered-To; a forgery of A's domain is kept rather than sent on. Two aliases
/// forwarding to each other across the two servers end with one bounce to the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sieve_redirects_are_sealed_and_forwarding_loops_end_in_a_bounce() {
    let (a, b, _dns) = two_servers();
    let (ok, _, err) = a.cli(
        &["sieve", "put", "bob@example.test", "main", "--activate"],
        "redirect \"carol@b.test\";\n",
    );
    assert!(ok, "{err}");

    // 1. dave's signed message to bob reaches carol, sealed by A.
    let signed = DAVE_KEY.sign(
        "From: Dave <dave@sender.test>\r\nTo: bob@example.test\r\nSubject: redirected\r\n\
Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <rd1@sender.test>\r\n\r\nhello via bob\r\n",
    );
    let (_, end) = from_dave(&a, "dave@sender.test", &["bob@example.test"], &signed).await;
    assert!(end.starts_with("250"), "{end}");
    let got = wait_inbox(&b, "carol@b.test", 1).await;
    let m = &got[0];
    let srs = header(m, "Return-Path").expect("Return-Path");
    assert!(
        srs.starts_with("<SRS0=") && srs.ends_with("=sender.test=dave@example.test>"),
        "{srs}"
    );
    assert!(m.contains("\r\nDelivered-To: bob@example.test\r\n"), "{m}");
    let seal = header(m, "ARC-Seal").expect("ARC-Seal on the redirected copy");
    for want in ["i=1", "cv=none", "d=example.test", "a=rsa-sha256"] {
        assert!(seal.contains(want), "{want} in {seal}");
    }
    let results = header(m, "Authentication-Results").expect("B's results");
    for want in [
        "spf=pass",
        "dkim=pass header.i=@sender.test",
        "arc=pass",
        "dmarc=pass",
    ] {
        assert!(results.contains(want), "{want} in {results}");
    }
    assert!(a.inbox("bob@example.test").await.is_empty());

    // 2. A forgery of A's own domain is not redirected: bob keeps it, the log says why.
    let (_, end) = from_dave(
        &a,
        "ceo@example.test",
        &["bob@example.test"],
        "From: ceo@example.test\r\nTo: bob@example.test\r\nSubject: wire the money\r\n\r\nnow\r\n",
    )
    .await;
    assert!(end.starts_with("250"), "{end}");
    let log = a.log_search_until(
        &["--kind", "delivery.sieve", "--json"],
        "not sent to another domain",
    );
    assert!(
        log.contains("a domain of ours, must pass DMARC here"),
        "{log}"
    );
    let kept = a
        .mailbox_texts("bob@example.test", mailkeep_types::MailboxRole::Junk)
        .await;
    assert!(
        kept.iter().any(|m| m.contains("wire the money")),
        "{kept:?}"
    );

    // 3. loop@a.test forwards to loop@b.test, which forwards back: A refuses the message the
    // second time round (its Delivered-To names the alias), and B's bounce reaches dave
    // through both SRS addresses.
    cli_ok(&a, &["domain", "add", "a.test"], "");
    cli_ok(&a, &["alias", "add", "loop@a.test", "loop@b.test"], "");
    cli_ok(&b, &["alias", "add", "loop@b.test", "loop@a.test"], "");
    let signed = DAVE_KEY.sign(
        "From: Dave <dave@sender.test>\r\nTo: loop@a.test\r\nSubject: round and round\r\n\
Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <loop1@sender.test>\r\n\r\nx\r\n",
    );
    let (_, end) = from_dave(&a, "dave@sender.test", &["loop@a.test"], &signed).await;
    assert!(end.starts_with("250"), "{end}");
    let got = wait_inbox(&b, "dave@sender.test", 1).await;
    assert_eq!(got.len(), 1, "one bounce: {got:?}");
    let bounce = &got[0];
    assert_eq!(header(bounce, "Return-Path").as_deref(), Some("<>"));
    assert!(
        bounce.contains("Mail forwarding loop for <loop@a.test>"),
        "{bounce}"
    );
    assert!(bounce.contains("Subject: round and round"), "{bounce}");
    let log = a.log_search_until(&["--json"], "Mail forwarding loop");
    assert_eq!(
        log.matches("\"reply\":\"554 5.4.6 Mail forwarding loop")
            .count(),
        1,
        "refused once: {log}"
    );
    // Nothing is left going round.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for s in [&a, &b] {
        let (ok, out, err) = s.cli(&["queue", "list"], "");
        assert!(ok, "{err}");
        assert!(!out.contains("loop@"), "{out}");
    }
    assert_eq!(b.inbox("dave@sender.test").await.len(), 1, "no storm");
}
