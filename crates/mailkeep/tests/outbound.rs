//! The outbound queue between two real servers: A (127.0.0.1, submission) sends to B
//! (127.0.0.x, the MX of b.test), with MX and address records served by a DNS server the
//! test starts on loopback. Each test uses its own loopback address for B.

mod common;

use std::time::Duration;

use common::outbound::{
    dkim_records, dkim_records_of, dns, free_port, imap_fetch_all, message, sessions_from_a,
    start_a, start_b, submitter, wait_inbox,
};
use common::{code, Raw, Server, PASSWORD};
use lettre::AsyncTransport;
use mailkeep_testkit::{Rr, TestDns};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_mail_goes_to_the_mx_of_another_domain_over_starttls() {
    let ip = "127.0.0.3";
    let port = free_port(ip);
    let b = start_b(ip, port);
    let dns = dns(ip);
    let a = start_a(&dns, port);
    // One message for a remote and a local recipient.
    submitter(&a)
        .send(message(
            &["carol@b.test", "bob@example.test"],
            "to two domains",
        ))
        .await
        .expect("submit");
    let at_b = wait_inbox(&b, "carol@b.test", 1).await;
    assert!(at_b[0].contains("Subject: to two domains"), "{}", at_b[0]);
    // Carol reads it over IMAP, byte for byte as stored.
    assert_eq!(imap_fetch_all(&b, "carol@b.test"), at_b);
    // Dot-stuffing went both ways: the line is whole at B.
    assert!(
        at_b[0].contains("\r\n.a line with a leading dot\r\n"),
        "{}",
        at_b[0]
    );
    // B's Received names the TLS it got; A's own Received (ESMTPSA) came along.
    assert!(at_b[0].contains("with ESMTPS"), "{}", at_b[0]);
    assert!(at_b[0].contains("with ESMTPSA"), "{}", at_b[0]);
    assert!(
        at_b[0].contains("Return-Path: <alice@example.test>"),
        "{}",
        at_b[0]
    );
    // Bcc privacy of the local copy aside, bob got his copy locally.
    assert_eq!(wait_inbox(&a, "bob@example.test", 1).await.len(), 1);
    // The attempt is on record at A, with the host, the TLS version and B's reply.
    let log = a.log_search_until(&["--recipient", "carol@b.test"], "queue.attempt");
    assert!(log.contains("queue.attempt"), "{log}");
    assert!(log.contains("mx.b.test"), "{log}");
    assert!(log.contains("TLSv1.3") || log.contains("TLSv1.2"), "{log}");
    assert!(log.contains("250 2.0.0"), "{log}");
    // Nothing is left in A's queue.
    assert!(a.store().queue_list().await.unwrap().is_empty());
    // Signed for example.test with both keys init made (Ed25519 first), and both signatures
    // verify with dkimpy against the public keys init would publish.
    let sigs: Vec<&str> = at_b[0]
        .split("\r\n")
        .filter(|l| l.starts_with("DKIM-Signature:"))
        .collect();
    assert_eq!(sigs.len(), 2, "{}", at_b[0]);
    assert!(at_b[0].contains("a=ed25519-sha256"), "{}", at_b[0]);
    assert!(at_b[0].contains("a=rsa-sha256"), "{}", at_b[0]);
    assert!(at_b[0].contains("d=example.test"), "{}", at_b[0]);
    dkim_verifies(&a, &at_b[0]);
}

/// The DNS TXT records of A's DKIM keys, computed from the key files init wrote.
/// Runs dkimpy over a message with the given NAME=VALUE key records; whether all verify.
fn dkimpy(dir: &std::path::Path, message: &str, records: &[String]) -> Option<bool> {
    let have = std::process::Command::new("python3")
        .args(["-c", "import dkim, nacl"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "dkimpy must be installed in CI (.ci/run)"
        );
        eprintln!("SKIPPED: dkimpy is not installed");
        return None;
    }
    let file = dir.join("check.eml");
    std::fs::write(&file, message).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/dkim_verify.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&file)
        .args(records)
        .output()
        .unwrap();
    Some(out.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_rotation_switches_after_the_records_are_published() {
    let ip = "127.0.0.9";
    let port = free_port(ip);
    let b = start_b(ip, port);
    let dns1 = dns(ip);
    let a = start_a(&dns1, port);
    let (ok, out, err) = a.cli(&["dkim", "list"], "");
    assert!(ok, "{err}");
    assert!(
        out.contains("example.test  mk1e  ed25519  signing"),
        "{out}"
    );
    assert!(out.contains("mk1r._domainkey.example.test."), "{out}");
    // Step 1: new keys, not used yet, and their records to publish.
    let (ok, out, err) = a.cli(&["dkim", "rotate", "example.test"], "");
    assert!(ok, "{err}");
    assert!(
        out.contains("mk2e._domainkey.example.test.") && out.contains("mk2r._domainkey"),
        "{out}"
    );
    let (ok, _, err) = a.cli(&["dkim", "rotate", "example.test"], "");
    assert!(!ok && err.contains("already pending"), "{err}");
    // Step 2 refuses while DNS does not have them.
    let (ok, _, err) = a.cli(&["dkim", "rotate", "example.test", "--confirm"], "");
    assert!(
        !ok && err.contains("mk2e._domainkey.example.test is not published"),
        "{err}"
    );
    // Published (the RSA record in two strings, as zone files split it): the switch happens.
    let new = dkim_records_of(&a, 2, ".pending");
    let txt = |r: &String| r.split_once('=').map(|(_, v)| v.to_string()).unwrap();
    let rsa = txt(&new[1]);
    let dns2 = TestDns::start(vec![
        ("mk2e._domainkey.example.test.", Rr::Txt(txt(&new[0]))),
        (
            "mk2r._domainkey.example.test.",
            Rr::TxtParts(vec![rsa[..200].to_string(), rsa[200..].to_string()]),
        ),
    ])
    .unwrap();
    let config = std::fs::read_to_string(&a.config).unwrap();
    let config = config.replace(&dns1.addr().to_string(), &dns2.addr().to_string());
    std::fs::write(&a.config, config).unwrap();
    let (ok, out, err) = a.cli(&["dkim", "rotate", "example.test", "--confirm"], "");
    assert!(ok, "{err}");
    assert!(out.contains("now signs with mk2e and mk2r"), "{out}");
    assert!(
        out.contains("Keep the old records (mk1e._domainkey.example.test"),
        "{out}"
    );
    assert!(a
        .dir
        .path()
        .join("dkim/retired/example.test.mk1e.ed25519.pem")
        .exists());
    // The running server takes the new keys on SIGHUP; its DNS stays what it started with.
    let config = std::fs::read_to_string(&a.config).unwrap();
    let config = config.replace(&dns2.addr().to_string(), &dns1.addr().to_string());
    std::fs::write(&a.config, config).unwrap();
    a.signal("HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        if std::fs::read_to_string(&a.stderr_log)
            .unwrap_or_default()
            .contains("SIGHUP: DKIM keys reloaded")
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "{}", a.log());
    submitter(&a)
        .send(message(&["carol@b.test"], "after rotation"))
        .await
        .expect("submit");
    let at_b = wait_inbox(&b, "carol@b.test", 1).await;
    assert!(
        at_b[0].contains("s=mk2e") && at_b[0].contains("s=mk2r"),
        "{}",
        at_b[0]
    );
    assert!(!at_b[0].contains("s=mk1e"), "{}", at_b[0]);
    let records = dkim_records_of(&a, 2, "");
    if let Some(ok) = dkimpy(a.dir.path(), &at_b[0], &records) {
        assert!(ok, "the new signatures verify with the new records");
    }
}

/// Runs dkimpy over a message as received (B's Return-Path/Delivered-To and Received lines
/// are above the signatures, as on any receiving server): both signatures verify, and a
/// changed Subject fails them.
fn dkim_verifies(a: &Server, received: &str) {
    let records = dkim_records(a);
    let Some(ok) = dkimpy(a.dir.path(), received, &records) else {
        return;
    };
    assert!(ok, "dkimpy: both signatures verify");
    let tampered = received.replacen("Subject: to two domains", "Subject: to three domains", 1);
    assert_ne!(tampered, received);
    assert_eq!(
        dkimpy(a.dir.path(), &tampered, &records),
        Some(false),
        "tampered must fail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_recipients_and_null_mx_bounce_to_the_sender() {
    let ip = "127.0.0.4";
    let port = free_port(ip);
    let b = start_b(ip, port);
    let dns = dns(ip);
    let a = start_a(&dns, port);
    submitter(&a)
        .send(message(&["nobody@b.test", "carol@b.test"], "one unknown"))
        .await
        .expect("submit");
    submitter(&a)
        .send(message(&["someone@nomail.test"], "null mx"))
        .await
        .expect("submit");
    wait_inbox(&b, "carol@b.test", 1).await;
    let bounces = wait_inbox(&a, "alice@example.test", 2).await;
    let unknown = bounces
        .iter()
        .find(|t| t.contains("nobody@b.test"))
        .expect("a bounce for nobody@b.test");
    assert!(unknown.contains("Return-Path: <>"), "{unknown}");
    assert!(unknown.contains("report-type=delivery-status"), "{unknown}");
    assert!(unknown.contains("Action: failed"), "{unknown}");
    assert!(unknown.contains("Status: 5.1.1"), "{unknown}");
    assert!(unknown.contains("Remote-MTA: dns; mx.b.test"), "{unknown}");
    // B's whole reply is in it, and the original (its header at least).
    assert!(unknown.contains("550 5.1.1"), "{unknown}");
    assert!(unknown.contains("Subject: one unknown"), "{unknown}");
    assert!(
        !unknown.contains("carol@b.test>: "),
        "only the failed recipient: {unknown}"
    );
    let null = bounces
        .iter()
        .find(|t| t.contains("someone@nomail.test"))
        .expect("a bounce for the null MX domain");
    assert!(null.contains("Status: 5.1.10"), "{null}");
    assert!(a.store().queue_list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waits_while_the_mx_is_down_and_goes_when_it_is_back() {
    let ip = "127.0.0.5";
    let port = free_port(ip);
    let mut b = start_b(ip, port);
    b.kill9();
    let dns = dns(ip);
    let a = start_a(&dns, port);
    submitter(&a)
        .send(message(&["carol@b.test"], "while down"))
        .await
        .expect("submit: queued even though B is down");
    // Tried at once and failed: still queued, with the reason.
    let mut tried = false;
    for _ in 0..100 {
        let q = a.store().queue_list().await.unwrap();
        assert_eq!(q.len(), 1);
        if q[0].recipients[0].attempts >= 1 {
            let why = q[0].recipients[0].last_reply.clone().unwrap_or_default();
            assert!(why.starts_with("451 4.4.1"), "{why}");
            assert!(why.contains("mx.b.test"), "{why}");
            tried = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tried, "the first attempt is made at once");
    // The queue survives a restart of A too.
    let mut a = a;
    a.restart();
    b.restart();
    let at_b = wait_inbox(&b, "carol@b.test", 1).await;
    assert!(at_b[0].contains("Subject: while down"));
    for _ in 0..100 {
        if a.store().queue_list().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.store().queue_list().await.unwrap().is_empty());
    // No bounce for a message that was delivered.
    assert!(a.inbox("alice@example.test").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mx_never_relays_even_with_a_queue() {
    let dns = dns("127.0.0.6");
    let a = start_a(&dns, 25);
    let mut c = Raw::connect(a.smtp).await;
    c.cmd("EHLO client.example").await;
    c.cmd("MAIL FROM:<alice@example.test>").await;
    let r = c.cmd("RCPT TO:<carol@b.test>").await;
    assert!(r.starts_with("554 5.7.1"), "{r}");
    assert_eq!(code(&c.cmd("QUIT").await), "221");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_cli_lists_shows_holds_releases_bounces_and_deletes() {
    // Nobody listens on B's address: every attempt fails, the messages stay queued.
    let ip = "127.0.0.7";
    let port = free_port(ip);
    let dns = dns(ip);
    let a = start_a(&dns, port);
    for subject in ["first", "second"] {
        submitter(&a)
            .send(message(&["carol@b.test"], subject))
            .await
            .expect("submit");
    }
    let mut ids = Vec::new();
    for _ in 0..100 {
        let q = a.store().queue_list().await.unwrap();
        if q.len() == 2 && q.iter().all(|m| m.recipients[0].attempts >= 1) {
            ids = q.iter().map(|m| m.id.clone()).collect();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ids.len(), 2, "both tried once");
    let (ok, out, err) = a.cli(&["queue", "list"], "");
    assert!(ok, "{err}");
    assert!(
        out.contains(&ids[0]) && out.contains("2 message(s) queued"),
        "{out}"
    );
    assert!(
        out.contains("from alice@example.test  to carol@b.test"),
        "{out}"
    );
    let (ok, out, _) = a.cli(&["queue", "show", &ids[0]], "");
    assert!(ok);
    assert!(out.contains("carol@b.test: pending"), "{out}");
    assert!(out.contains("451 4.4.1"), "{out}");
    let (ok, out, _) = a.cli(&["queue", "hold", &ids[0]], "");
    assert!(ok && out.contains("held"), "{out}");
    assert!(a.store().queue_get(&ids[0]).await.unwrap().unwrap().held);
    let (ok, _, _) = a.cli(&["queue", "release", &ids[0]], "");
    assert!(ok);
    assert!(!a.store().queue_get(&ids[0]).await.unwrap().unwrap().held);
    let (ok, out, err) = a.cli(&["queue", "bounce", &ids[0]], "");
    assert!(ok, "{err}");
    assert!(out.contains("1 recipient(s) bounced"), "{out}");
    let bounce = wait_inbox(&a, "alice@example.test", 1).await;
    assert!(
        bounce[0].contains("cancelled by the administrator"),
        "{}",
        bounce[0]
    );
    assert!(bounce[0].contains("Action: failed"), "{}", bounce[0]);
    let (ok, out, _) = a.cli(&["queue", "hold", "all"], "");
    assert!(ok && out.contains("1 message(s) held"), "{out}");
    let (ok, out, _) = a.cli(&["queue", "release", "all"], "");
    assert!(ok && out.contains("1 message(s) released"), "{out}");
    let (ok, out, _) = a.cli(&["queue", "retry", "all"], "");
    assert!(ok && out.contains("1 message(s) due now"), "{out}");
    let (ok, _, _) = a.cli(&["queue", "delete", &ids[1]], "");
    assert!(ok);
    assert!(a.store().queue_list().await.unwrap().is_empty());
    // An unknown id is a clear error, naming it.
    let (ok, _, err) = a.cli(&["queue", "show", "NOPE"], "");
    assert!(!ok && err.contains("no queued message \"NOPE\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_queue_run_loses_nothing() {
    use mailkeep_store::{NewQueued, QueueRecipient};
    const N: usize = 2000;
    let ip = "127.0.0.8";
    let port = free_port(ip);
    let b = start_b(ip, port);
    let dns = dns(ip);
    let mut a = start_a(&dns, port);
    // Fill A's queue while it is stopped: N distinct messages for carol@b.test.
    a.kill9();
    {
        let store = a.store();
        for i in 0..N {
            let body = format!(
                "From: alice@example.test\r\nTo: carol@b.test\r\nSubject: crash {i}\r\nMessage-ID: <crash-{i}@example.test>\r\n\r\nmessage {i}\r\n"
            );
            let blob = store.put_blob(body.as_bytes()).await.unwrap();
            store
                .queue_insert(
                    NewQueued {
                        id: format!("CRASH{i:05}"),
                        sender: "alice@example.test".into(),
                        blob,
                        size: body.len() as u64,
                        recipients: vec![QueueRecipient {
                            address: "carol@b.test".into(),
                            notify: None,
                            orcpt: None,
                        }],
                        envid: None,
                        ret: None,
                        smtputf8: false,
                        requiretls: false,
                        account: None,
                        held: false,
                    },
                    mailkeep_queue::now_secs(),
                )
                .await
                .unwrap();
        }
    }
    a.restart();
    // Let it deliver some, then kill it in the middle of the run.
    let mut at_kill = 0;
    for _ in 0..600 {
        at_kill = b.inbox("carol@b.test").await.len();
        if at_kill >= N / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill9();
    assert!(
        at_kill > 0 && at_kill < N,
        "killed mid-run ({at_kill} of {N} delivered)"
    );
    a.restart();
    // Everything arrives; nothing is lost.
    for _ in 0..1200 {
        if a.store().queue_list().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        a.store().queue_list().await.unwrap().is_empty(),
        "the queue drained"
    );
    let texts = b.inbox_texts("carol@b.test").await;
    let mut seen = std::collections::HashMap::new();
    for t in &texts {
        let id = t
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Message-ID: <crash-"))
            .and_then(|l| l.split('@').next())
            .unwrap_or("?")
            .to_string();
        *seen.entry(id).or_insert(0usize) += 1;
    }
    assert!(!seen.contains_key("?"));
    assert_eq!(seen.len(), N, "every message arrived");
    let duplicates = texts.len() - N;
    eprintln!("kill -9 at {at_kill} of {N} delivered: {duplicates} duplicate(s) after restart");
    // Only messages whose 250 came in between the remote answer and our record can come
    // twice: at most those in flight (queue.concurrency, 20).
    assert!(duplicates <= 20, "{duplicates} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_host_takes_everything_with_starttls_and_a_login() {
    // B hosts b.test (carol) and, like A, example.test with alice: A relays through B's
    // submission port, logged in as alice, with no DNS at all.
    let ip = "127.0.0.11";
    let b = start_b(ip, free_port(ip));
    let relay = b.listeners["submission"];
    let a = Server::start(&format!(
        "relay = \"{relay}\"\nrelay_tls = \"starttls\"\nrelay_verify_certificate = false\nrelay_username = \"alice@example.test\"\nrelay_password = \"{PASSWORD}\"\nretry_first = \"1s\"\nfailure_delay = \"10ms\""
    ));
    submitter(&a)
        .send(message(&["carol@b.test"], "through the relay"))
        .await
        .expect("submit");
    let at_b = wait_inbox(&b, "carol@b.test", 1).await;
    assert!(
        at_b[0].contains("Subject: through the relay"),
        "{}",
        at_b[0]
    );
    // B took it on its submission port, from an authenticated client, over TLS.
    assert!(at_b[0].matches("with ESMTPSA").count() >= 2, "{}", at_b[0]);
    let log = a.log_search_until(&["--recipient", "carol@b.test"], "queue.attempt");
    assert!(log.contains(&relay.ip().to_string()), "{log}");
    assert!(a.store().queue_list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_refuses_the_login_keeps_the_mail_queued() {
    let ip = "127.0.0.12";
    let b = start_b(ip, free_port(ip));
    let relay = b.listeners["submission"];
    let a = Server::start(&format!(
        "relay = \"{relay}\"\nrelay_verify_certificate = false\nrelay_username = \"alice@example.test\"\nrelay_password = \"wrong\"\nretry_first = \"1s\"\nfailure_delay = \"10ms\""
    ));
    submitter(&a)
        .send(message(&["carol@b.test"], "bad relay login"))
        .await
        .expect("submit");
    let mut why = String::new();
    for _ in 0..100 {
        let q = a.store().queue_list().await.unwrap();
        if let Some(r) = q.first().and_then(|m| m.recipients.first()) {
            if r.attempts >= 1 {
                why = r.last_reply.clone().unwrap_or_default();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(why.contains("relay login refused: 535"), "{why}");
    assert!(b.inbox("carol@b.test").await.is_empty());
    // Retried, never bounced: a wrong password is the admin's to fix.
    assert!(a.inbox("alice@example.test").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_messages_to_one_server_share_a_connection() {
    let ip = "127.0.0.13";
    let port = free_port(ip);
    let b = start_b(ip, port);
    let dns = dns(ip);
    let a = start_a(&dns, port);
    for i in 1..=3 {
        submitter(&a)
            .send(message(&["carol@b.test"], &format!("reuse {i}")))
            .await
            .expect("submit");
        wait_inbox(&b, "carol@b.test", i).await;
    }
    // B saw one SMTP session carrying all three (RFC 5321 4.1.4: MAIL after a finished
    // transaction), over one STARTTLS.
    assert_eq!(sessions_from_a(&b, 3).await, (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_hears_once_when_mail_is_delayed_and_when_it_expires() {
    // Nobody answers for b.test; the warning comes after 1 s, the bounce after 4 s.
    let ip = "127.0.0.14";
    let port = free_port(ip);
    let dns = dns(ip);
    let a = Server::start(&format!(
        "servers = [\"{}\"]\nport = {port}\nretry_first = \"1s\"\nretry_max = \"1s\"\ndelay_warning = \"1s\"\nlifetime = \"4s\"\nfailure_delay = \"10ms\"",
        dns.addr()
    ));
    submitter(&a)
        .send(message(&["carol@b.test"], "never arrives"))
        .await
        .expect("submit");
    let reports = wait_inbox(&a, "alice@example.test", 2).await;
    let delayed: Vec<&String> = reports
        .iter()
        .filter(|t| t.contains("Action: delayed"))
        .collect();
    let failed: Vec<&String> = reports
        .iter()
        .filter(|t| t.contains("Action: failed"))
        .collect();
    assert_eq!((delayed.len(), failed.len()), (1, 1), "{reports:?}");
    assert!(
        delayed[0].contains("Subject: Delayed Mail (still being retried)"),
        "{}",
        delayed[0]
    );
    assert!(delayed[0].contains("Status: 4.4.1"), "{}", delayed[0]);
    assert!(
        failed[0].contains("gave up after 4 seconds"),
        "{}",
        failed[0]
    );
    assert!(a.store().queue_list().await.unwrap().is_empty());
    // No more than those two: one warning, one bounce.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.inbox("alice@example.test").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_concurrency_limits_connections_to_one_domain() {
    let ip = "127.0.0.15";
    let port = free_port(ip);
    let b = start_b(ip, port);
    let dns = dns(ip);
    let a = Server::start(&format!(
        "servers = [\"{}\"]\nport = {port}\ndestination_concurrency = 1\nfailure_delay = \"10ms\"",
        dns.addr()
    ));
    // Four messages queued at once: one at a time to b.test, so over one connection.
    let t = submitter(&a);
    let (r1, r2, r3, r4) = tokio::join!(
        t.send(message(&["carol@b.test"], "c1")),
        t.send(message(&["carol@b.test"], "c2")),
        t.send(message(&["carol@b.test"], "c3")),
        t.send(message(&["carol@b.test"], "c4")),
    );
    for r in [r1, r2, r3, r4] {
        r.expect("submit");
    }
    wait_inbox(&b, "carol@b.test", 4).await;
    assert_eq!(sessions_from_a(&b, 4).await, (1, 4));
}
