//! Sender authentication of inbound mail end to end: A (127.0.0.1) signs and sends to B, which
//! checks SPF, DKIM and DMARC against records served by a DNS server the test starts; forged
//! mail from another loopback address is refused or filed to Junk by the DMARC policy, and an
//! Authentication-Results header claiming to be B's is removed.

mod common;

use std::net::IpAddr;

use common::outbound::{dkim_txt, free_port, message, point_dns, start_a, start_b, submitter};
use common::{code, Raw, Server};
use lettre::AsyncTransport;
use mailkeep_testkit::{Rr, TestDns};
use mailkeep_types::MailboxRole;

/// The forger's address: not in example.test's SPF record.
const FORGER: &str = "127.0.0.66";

/// Records B asks: example.test's SPF (127.0.0.1 only), DMARC p=reject and A's DKIM keys;
/// q.test's DMARC p=quarantine; A's MX for b.test.
fn trust_dns(a: &Server, b_ip: &str) -> TestDns {
    let mut records: Vec<(String, Rr)> = vec![
        ("b.test.".into(), Rr::Mx(10, "mx.b.test.".into())),
        ("mx.b.test.".into(), Rr::A(b_ip.parse().unwrap())),
        (
            "example.test.".into(),
            Rr::Txt("v=spf1 ip4:127.0.0.1 -all".into()),
        ),
        (
            "_dmarc.example.test.".into(),
            Rr::Txt("v=DMARC1; p=reject; rua=mailto:dmarc@example.test".into()),
        ),
        ("q.test.".into(), Rr::Txt("v=spf1 -all".into())),
        (
            "_dmarc.q.test.".into(),
            Rr::Txt("v=DMARC1; p=quarantine".into()),
        ),
    ];
    records.extend(dkim_txt(a));
    TestDns::start(
        records
            .iter()
            .map(|(n, r)| (n.as_str(), r.clone()))
            .collect(),
    )
    .unwrap()
}

/// Sends `data` to B from the forger's address; returns the final reply.
async fn forge(b: &Server, from: &str, data: &str) -> String {
    let mut c = Raw::connect_from(FORGER.parse::<IpAddr>().unwrap(), b.smtp).await;
    c.envelope(from, &["carol@b.test"]).await;
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(data.as_bytes()).await;
    c.send(b".\r\n").await;
    let r = c.reply().await;
    c.cmd("QUIT").await;
    r
}

/// A DKIM signature for example.test made with a key that is not example.test's (dkimpy).
fn signed_with_another_key(message: &str) -> String {
    common::Dkimpy {
        seed: "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
        domain: "example.test",
        selector: "mk1e",
    }
    .sign(message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_mail_passes_and_forged_mail_is_refused() {
    let ip = "127.0.0.41";
    let port = free_port(ip);
    // A's DNS only routes (MX); A's keys exist once A is made, then B's DNS publishes them.
    let route = common::outbound::dns(ip);
    let a = start_a(&route, port);
    let dns = trust_dns(&a, ip);
    let mut b = start_b(ip, port);
    point_dns(&b.config, &dns);
    b.restart();
    let (ok, _, err) = b.cli(&["domain", "add", "q.test"], "");
    assert!(ok, "{err}");

    // 1. Signed by A, from A's address: every check passes.
    submitter(&a)
        .send(message(&["carol@b.test"], "authentic"))
        .await
        .expect("submit");
    let got = common::outbound::wait_inbox(&b, "carol@b.test", 1).await;
    let m = &got[0];
    for want in [
        "Authentication-Results: mail.example.test;",
        "dkim=pass header.d=example.test header.s=mk1e",
        "dkim=pass header.d=example.test header.s=mk1r",
        "spf=pass",
        "smtp.mailfrom=alice@example.test",
        "dmarc=pass header.from=example.test",
    ] {
        assert!(m.contains(want), "{want:?} in:\n{m}");
    }
    let log = b.log_search_until(&["--recipient", "carol@b.test", "--json"], "smtp.verify");
    assert!(log.contains("\"kind\":\"smtp.verify\""), "{log}");
    assert!(log.contains("\"dkim_aligned\":\"pass\""), "{log}");

    // 2. Forged From: alice@example.test from another address, signed with a wrong key:
    // SPF fails, DKIM fails, DMARC fails, p=reject: refused at the end of DATA.
    let forged = signed_with_another_key(
        "From: alice@example.test\r\nTo: carol@b.test\r\nSubject: pay this invoice\r\n\r\nplease\r\n",
    );
    let r = forge(&b, "alice@example.test", &forged).await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert!(r.contains("DMARC policy of example.test"), "{r}");
    let log = b.log_search_until(&["--ip", FORGER, "--json"], "\"outcome\":\"rejected\"");
    assert!(log.contains("\"dmarc\":{"), "{log}");
    assert!(log.contains("\"result\":\"fail\""), "{log}");
    assert_eq!(
        b.inbox("carol@b.test").await.len(),
        1,
        "nothing more stored"
    );

    // 3. p=quarantine: filed to Junk, not refused.
    let r = forge(
        &b,
        "boss@q.test",
        "From: boss@q.test\r\nTo: carol@b.test\r\nSubject: quarantined\r\n\r\nhi\r\n",
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let junk = b.mailbox_texts("carol@b.test", MailboxRole::Junk).await;
    assert_eq!(junk.len(), 1);
    assert!(junk[0].contains("Subject: quarantined"));
    assert!(junk[0].contains("dmarc=fail"), "{}", junk[0]);

    // 4. An Authentication-Results claiming B's name is removed; another server's stays.
    let r = forge(
        &b,
        "someone@other.test",
        "Authentication-Results: mail.example.test; dkim=pass; spf=pass; dmarc=pass\r\n\
Authentication-Results: elsewhere.test; spf=fail\r\n\
From: someone@other.test\r\nTo: carol@b.test\r\nSubject: trust me\r\n\r\nhi\r\n",
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let got = common::outbound::wait_inbox(&b, "carol@b.test", 2).await;
    let m = got
        .iter()
        .find(|m| m.contains("Subject: trust me"))
        .unwrap();
    assert_eq!(
        m.matches("Authentication-Results: mail.example.test;")
            .count(),
        1,
        "{m}"
    );
    assert!(
        !m.contains("dkim=pass; spf=pass"),
        "the forged one is gone: {m}"
    );
    assert!(
        m.contains("Authentication-Results: elsewhere.test; spf=fail"),
        "{m}"
    );
    assert!(m.contains("spf=none"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_aggregate_reports_reach_the_domain_and_are_summed_up() {
    // A (example.test) sends to B; B's DMARC rows for example.test go, as a signed report, to
    // example.test's rua (postmaster@example.test, at A), where `dmarc summary` shows them.
    let ip = "127.0.0.42";
    let port = free_port(ip);
    let route = common::outbound::dns(ip);
    let a = start_a(&route, port);
    let (ok, _, err) = a.cli(
        &["user", "add", "postmaster@example.test"],
        common::PASSWORD,
    );
    assert!(ok, "{err}");
    let mut records = vec![
        (
            "example.test.".to_string(),
            Rr::Txt("v=spf1 ip4:127.0.0.1 -all".into()),
        ),
        (
            "_dmarc.example.test.".to_string(),
            // tiny@ takes reports of at most 1 KiB (RFC 7489 6.4 `!size`): this one is larger.
            Rr::Txt(
                "v=DMARC1; p=reject; rua=mailto:postmaster@example.test,mailto:tiny@example.test!1k"
                    .into(),
            ),
        ),
        // B's queue reaches example.test's MX: A, on its SMTP port.
        (
            "example.test.".to_string(),
            Rr::Mx(10, "a-mx.example.test.".into()),
        ),
        (
            "a-mx.example.test.".to_string(),
            Rr::A("127.0.0.1".parse().unwrap()),
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
    let mut b = start_b(ip, port);
    let config = std::fs::read_to_string(&b.config).unwrap();
    let config = config
        .lines()
        .map(|l| {
            if l.starts_with("servers = ") {
                format!("servers = [\"{}\"]", dns.addr())
            } else if l.starts_with("# port = 25") {
                format!("port = {}", a.smtp.port())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&b.config, config).unwrap();
    b.restart();
    // Two messages from A (pass), one forgery (fail, rejected): all in the report.
    for n in 0..2 {
        submitter(&a)
            .send(message(&["carol@b.test"], &format!("report me {n}")))
            .await
            .expect("submit");
    }
    common::outbound::wait_inbox(&b, "carol@b.test", 2).await;
    let r = forge(
        &b,
        "alice@example.test",
        "From: alice@example.test\r\nTo: carol@b.test\r\nSubject: forged\r\n\r\nx\r\n",
    )
    .await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    // B sends its reports now (instead of after a day); its queue delivers them to A.
    let (ok, out, err) = b.cli(&["dmarc", "send"], "");
    assert!(ok, "{err}");
    assert!(out.contains("1 DMARC report(s) queued"), "{out}");
    let got = common::outbound::wait_inbox(&a, "postmaster@example.test", 1).await;
    // RFC 7489 7.2.1.1: "Report Domain: example.test Submitter: ..." (RFC 2047-encoded).
    assert!(got[0].contains("Report_Domain:_example.test"), "{}", got[0]);
    assert!(got[0].contains("application/gzip"), "{}", got[0]);
    assert!(got[0].contains("DKIM-Signature:"), "signed: {}", got[0]);
    assert!(got[0].len() > 1024, "the report is over tiny@'s limit");
    assert!(
        !got[0].contains("tiny@example.test"),
        "not sent to an address whose limit it exceeds: {}",
        got[0]
    );
    // A kept the report; the summary shows who sends as example.test.
    let mut summary = String::new();
    for _ in 0..50 {
        let (ok, out, err) = a.cli(&["dmarc", "summary"], "");
        assert!(ok, "{err}");
        summary = out;
        if summary.contains("127.0.0.66") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let line = |source: &str| {
        summary
            .lines()
            .find(|l| l.starts_with("example.test") && l.contains(source))
            .unwrap_or_else(|| panic!("{source} in:\n{summary}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        line("127.0.0.1 "),
        "example.test 127.0.0.1 2 2 0 mail.example.test"
    );
    assert_eq!(
        line("127.0.0.66"),
        "example.test 127.0.0.66 1 0 1 mail.example.test"
    );
    // Nothing is left to report at B.
    let (_, out, _) = b.cli(&["dmarc", "send"], "");
    assert!(out.contains("0 DMARC report(s) queued"), "{out}");
}
