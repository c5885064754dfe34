//! Greylisting on the MX (RFC 6647) with a one-second delay: a first attempt is deferred at
//! RCPT with 451 4.7.1, an early retry too, a retry after the delay from the same /24 passes;
//! a network that passed enough triplets passes everything, and a sender domain that passed
//! SPF and DMARC (records served by a DNS server the test starts) passes from its network.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{code, Raw, Server};
use mailkeep_testkit::{Rr, TestDns};

/// MAIL FROM `from` and RCPT TO each of `to` from `source`: the RCPT replies. With
/// `data`, sends it when every recipient was taken and returns its reply last.
async fn attempt(
    server: &Server,
    source: &str,
    from: &str,
    to: &[&str],
    data: Option<&str>,
) -> Vec<String> {
    let ip: IpAddr = source.parse().unwrap();
    let mut c = Raw::connect_from(ip, server.smtp).await;
    assert_eq!(code(&c.cmd("EHLO client.test").await), "250");
    assert_eq!(code(&c.cmd(&format!("MAIL FROM:<{from}>")).await), "250");
    let mut out = Vec::new();
    for t in to {
        out.push(c.cmd(&format!("RCPT TO:<{t}>")).await);
    }
    if let (Some(d), true) = (data, out.iter().all(|r| r.starts_with("250"))) {
        assert_eq!(code(&c.cmd("DATA").await), "354");
        c.send(d.as_bytes()).await;
        c.send(b".\r\n").await;
        out.push(c.reply().await);
    }
    c.cmd("QUIT").await;
    out
}

fn greylisted(replies: &[String]) -> bool {
    replies
        .iter()
        .all(|r| r.starts_with("451 4.7.1 Greylisted"))
}

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_attempts_wait_and_retries_pass() {
    let dns = TestDns::start(vec![
        (
            "sender.test.",
            Rr::Txt("v=spf1 ip4:127.0.0.0/8 -all".into()),
        ),
        ("_dmarc.sender.test.", Rr::Txt("v=DMARC1; p=none".into())),
    ])
    .unwrap();
    let mut server = Server::start(&format!(
        "servers = [\"{}\"]\ngreylist.enabled = true\ngreylist.delay = \"1s\"\n\
         greylist.auto_allow_clients = 2",
        dns.addr()
    ));

    let mail = "From: x@first.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nhello\r\n";
    // 1. First attempt: each triplet deferred, nothing taken.
    let r = attempt(&server, "127.0.5.1", "x@first.test", &[ALICE, BOB], None).await;
    assert!(greylisted(&r), "{r:?}");
    assert!(r[0].contains("try again in 1 seconds"), "{r:?}");
    // 2. An early retry (another address of the same /24) is deferred again.
    let r = attempt(&server, "127.0.5.2", "x@first.test", &[ALICE], None).await;
    assert!(greylisted(&r), "{r:?}");
    // 3. After the delay, both pass and the message is delivered.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = attempt(
        &server,
        "127.0.5.3",
        "X@First.test",
        &[ALICE, BOB],
        Some(mail),
    )
    .await;
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    assert_eq!(server.inbox(ALICE).await.len(), 1);
    // 4. The network passed two triplets: it is allowlisted, new senders included.
    let r = attempt(&server, "127.0.5.4", "y@other.test", &[ALICE], None).await;
    assert!(r[0].starts_with("250"), "{r:?}");
    // ...but another network is not.
    let r = attempt(&server, "127.0.6.1", "y@other.test", &[ALICE], None).await;
    assert!(greylisted(&r), "{r:?}");

    // 5. A domain that passes SPF and DMARC passes from its network after one message.
    let signed = "From: dave@sender.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nhello\r\n";
    let r = attempt(&server, "127.0.7.1", "dave@sender.test", &[ALICE], None).await;
    assert!(greylisted(&r), "{r:?}");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = attempt(
        &server,
        "127.0.7.1",
        "dave@sender.test",
        &[ALICE],
        Some(signed),
    )
    .await;
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    let r = attempt(&server, "127.0.7.9", "erin@sender.test", &[BOB], None).await;
    assert!(
        r[0].starts_with("250"),
        "a new triplet of the domain passes: {r:?}"
    );
    // Not from elsewhere, and not another domain from there.
    let r = attempt(&server, "127.0.8.1", "erin@sender.test", &[BOB], None).await;
    assert!(greylisted(&r), "{r:?}");
    let r = attempt(&server, "127.0.7.9", "z@first.test", &[BOB], None).await;
    assert!(greylisted(&r), "{r:?}");

    // The log tells what happened.
    let log = server.log_search_until(&["--kind", "smtp.greylist", "--json"], "\"waited\"");
    assert!(log.contains("\"outcome\":\"tempfail\""), "{log}");
    assert!(log.contains("\"network\":\"127.0.5.0/24\""), "{log}");

    // Turned off, nothing is greylisted.
    let text = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(
        &server.config,
        text.replace(
            "enabled = true\ndelay = \"1s\"",
            "enabled = false\ndelay = \"1s\"",
        ),
    )
    .unwrap();
    server.restart();
    let r = attempt(&server, "127.0.9.1", "new@new.test", &[ALICE], None).await;
    assert!(r[0].starts_with("250"), "{r:?}");
}
