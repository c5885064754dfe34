//! `mailkeep check blocklists` against blocklist zones served by a DNS server the test starts:
//! a listed address is named with the list's code and reason (exit 1), a clean one passes,
//! and a list refusing to answer (127.255.255.x) is an error, not a listing.

mod common;

use common::outbound::point_dns;
use common::{cli, init_dir};
use mailkeep_testkit::{Rr, TestDns};

#[test]
fn our_addresses_are_looked_up_on_each_list() {
    let (_dir, config) = init_dir("lists = [\"bl.test\", \"clean.test\", \"picky.test\"]");
    let dns = TestDns::start(vec![
        // 192.0.2.44 is listed on bl.test (RFC 5782 2.1: reversed octets).
        ("44.2.0.192.bl.test.", Rr::A("127.0.0.2".parse().unwrap())),
        (
            "44.2.0.192.bl.test.",
            Rr::Txt("Listed for sending spam, see https://bl.test/192.0.2.44".into()),
        ),
        // picky.test refuses to answer this resolver.
        (
            "44.2.0.192.picky.test.",
            Rr::A("127.255.255.254".parse().unwrap()),
        ),
        (
            "45.2.0.192.picky.test.",
            Rr::A("127.255.255.254".parse().unwrap()),
        ),
    ])
    .unwrap();
    point_dns(&config, &dns);

    let (ok, out, err) = cli(&config, &["check", "blocklists", "--ip", "192.0.2.44"], "");
    assert!(!ok, "listed: exit 1\n{out}{err}");
    assert!(
        out.contains("LISTED  192.0.2.44")
            && out.contains("bl.test (127.0.0.2) Listed for sending spam"),
        "{out}"
    );
    assert!(
        out.contains("ok      192.0.2.44") && out.contains("clean.test"),
        "{out}"
    );
    assert!(
        out.contains("error   192.0.2.44") && out.contains("refused to answer"),
        "{out}"
    );

    // Another address: on no list (the refusal is not a listing).
    let (ok, out, err) = cli(&config, &["check", "blocklists", "--ip", "192.0.2.45"], "");
    assert!(ok, "{out}{err}");
    assert!(out.contains("not listed anywhere asked"), "{out}");
    assert!(!out.contains("LISTED"), "{out}");
}

/// A client on a configured inbound list is refused at MAIL (or, with `inbound_action =
/// "junk"`, its mail goes to Junk); others are not asked about twice and pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mx_refuses_or_junks_clients_on_its_lists() {
    use common::{code, Raw, Server};
    use std::net::IpAddr;
    let dns = TestDns::start(vec![
        ("66.0.0.127.bl.test.", Rr::A("127.0.0.2".parse().unwrap())),
        ("66.0.0.127.bl.test.", Rr::Txt("spam source".into())),
    ])
    .unwrap();
    let mut server = Server::start(&format!(
        "servers = [\"{}\"]\ninbound = [\"bl.test\"]",
        dns.addr()
    ));
    let listed: IpAddr = "127.0.0.66".parse().unwrap();
    let mut c = Raw::connect_from(listed, server.smtp).await;
    assert_eq!(code(&c.cmd("EHLO listed.test").await), "250");
    let r = c.cmd("MAIL FROM:<x@listed.test>").await;
    assert!(
        r.starts_with("554 5.7.1 Service unavailable; client [127.0.0.66] is listed on bl.test"),
        "{r}"
    );
    c.cmd("QUIT").await;
    let log = server.log_search_until(&["--kind", "smtp.dnsbl", "--json"], "spam source");
    assert!(log.contains("\"list\":\"bl.test\""), "{log}");
    // Another client passes.
    let r = server
        .send_to_alice("From: someone@remote.test\r\nSubject: fine\r\n\r\nx\r\n")
        .await;
    assert!(r.starts_with("250"), "{r}");

    // Junk instead of refusal.
    let text = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(
        &server.config,
        text.replace("inbound_action = \"reject\"", "inbound_action = \"junk\""),
    )
    .unwrap();
    server.restart();
    let mut c = Raw::connect_from(listed, server.smtp).await;
    c.envelope("x@listed.test", &["alice@example.test"]).await;
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(b"From: x@listed.test\r\nSubject: listed\r\n\r\nx\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts_with("250"));
    c.cmd("QUIT").await;
    let junk = server
        .mailbox_texts("alice@example.test", mailkeep_types::MailboxRole::Junk)
        .await;
    assert_eq!(junk.len(), 1);
    assert!(junk[0].contains("Subject: listed"));
}
