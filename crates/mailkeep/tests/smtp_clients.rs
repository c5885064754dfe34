//! Real clients against the real server: lettre, Python's smtplib, swaks.

mod common;

use std::process::Command;

use common::{code, Raw, Server};
use lettre::message::header::ContentType;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Interop peers are installed by .ci/run; locally a missing one is skipped, loudly.
fn require(program: &str) -> bool {
    if have(program) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{program} must be installed in CI (see .ci/run)"
    );
    eprintln!("SKIPPED: {program} is not installed");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_plain_and_starttls() {
    let server = Server::start("");
    let port = server.smtp.port();
    let plain = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .build();
    let msg = Message::builder()
        .from("Lettre <lettre@remote.test>".parse().unwrap())
        .to("alice@example.test".parse().unwrap())
        .subject("plain lettre")
        .message_id(Some("<lettre-1@remote.test>".into()))
        .header(ContentType::TEXT_PLAIN)
        .body("Hello over plain SMTP.\n".to_string())
        .unwrap();
    plain.send(msg).await.expect("plain send");

    let tls = TlsParameters::builder("mail.example.test".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .unwrap();
    let secure = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(tls))
        .build();
    let msg = Message::builder()
        .from("lettre@remote.test".parse().unwrap())
        .to("bob@example.test".parse().unwrap())
        .cc("alice+cc@example.test".parse().unwrap())
        .subject("tls lettre")
        .message_id(Some("<lettre-2@remote.test>".into()))
        .body("Hello over STARTTLS.\n".to_string())
        .unwrap();
    let resp = secure.send(msg).await.expect("starttls send");
    assert!(resp.is_positive());

    let alice = server.inbox_texts("alice@example.test").await;
    assert_eq!(alice.len(), 2);
    assert!(alice[0].contains("Subject: plain lettre"));
    assert!(alice[0].contains("with ESMTP id "), "{}", alice[0]);
    assert!(alice[1].contains("with ESMTPS id "), "{}", alice[1]);
    assert!(
        alice[1].contains("version=TLSv1.3 cipher=TLS13_"),
        "{}",
        alice[1]
    );
    let bob = server.inbox_texts("bob@example.test").await;
    assert_eq!(bob.len(), 1);
    assert!(bob[0]
        .starts_with("Return-Path: <lettre@remote.test>\r\nDelivered-To: bob@example.test\r\n"));
    // Both recipients are named only when there is one; here there were two.
    assert!(!bob[0].contains("\tfor <"), "{}", bob[0]);
    let meta = server.inbox("bob@example.test").await;
    assert_eq!(
        meta[0].cache.envelope.subject.as_deref(),
        Some("tls lettre")
    );
    assert_eq!(
        meta[0].cache.message_id.as_deref(),
        Some("lettre-2@remote.test")
    );
    assert_eq!(meta[0].size as usize, bob[0].len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib() {
    if !require("python3") {
        return;
    }
    let server = Server::start("");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/smtp_smtplib.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(server.smtp.port().to_string())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smtplib checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all smtplib checks passed"));
    let alice = server.inbox("alice@example.test").await;
    assert_eq!(alice.len(), 3, "smtplib, multi, utf8");
    let texts = server.inbox_texts("alice@example.test").await;
    assert!(
        texts[0].contains("\r\n.leading dot line\r\n"),
        "dot-unstuffing: {}",
        texts[0]
    );
    assert!(
        texts[2].contains("Return-Path: <jürgen@bücher.test>"),
        "{}",
        texts[2]
    );
    assert!(texts[2].contains("with UTF8SMTPS"), "{}", texts[2]);
    let bob = server.inbox_texts("bob@example.test").await;
    assert_eq!(bob.len(), 2);
    assert!(bob[1].starts_with("Return-Path: <>\r\n"));
    // DSN parameters were accepted and are on record.
    let log = server.log_search_until(
        &["--message-id", "smtplib-1@remote.test", "--json"],
        "py-envid-1",
    );
    assert!(
        log.contains("py-envid-1") && log.contains("HDRS") && log.contains("SUCCESS,FAILURE"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_plain_tls_pipelining_and_chunking() {
    if !require("swaks") {
        return;
    }
    let server = Server::start("");
    let port = server.smtp.port().to_string();
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("plain", vec![]),
        ("starttls", vec!["--tls"]),
        ("pipelining", vec!["--pipeline"]),
        ("pipelining over tls", vec!["--pipeline", "--tls"]),
    ];
    for (name, extra) in &runs {
        let out = Command::new("swaks")
            .args([
                "--server",
                "127.0.0.1",
                "--port",
                &port,
                "--to",
                "alice@example.test",
                "--from",
                "swaks@remote.test",
            ])
            .args([
                "--helo",
                "swaks.client.example",
                "--header",
                &format!("Subject: swaks {name}"),
                "--timeout",
                "30",
            ])
            .args(extra)
            .output()
            .expect("run swaks");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "swaks {name} failed:\n{stdout}");
        assert!(
            stdout.contains("<~  250 2.0.0 OK: queued as")
                || stdout.contains("<-  250 2.0.0 OK: queued as"),
            "{stdout}"
        );
    }
    // An unknown recipient: swaks reports the 550.
    let out = Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--to",
            "nobody@example.test",
            "--from",
            "swaks@remote.test",
            "--timeout",
            "30",
        ])
        .output()
        .expect("run swaks");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("550 5.1.1"), "{stdout}");
    let texts = server.inbox_texts("alice@example.test").await;
    assert_eq!(texts.len(), runs.len());
    for (t, (name, _)) in texts.iter().zip(&runs) {
        assert!(t.contains(&format!("Subject: swaks {name}")), "{t}");
        assert!(
            t.contains("Received: from swaks.client.example (unknown [127.0.0.1])"),
            "{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunks_and_pipelined_commands() {
    let server = Server::start("");
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(code(&c.cmd("EHLO client.example").await), "250");
    // Everything in one write (RFC 2920): replies come back in order.
    let part1 = "Subject: chunked\r\nMessage-ID: <bdat-1@remote.test>\r\n\r\nfirst ";
    let part2 = "second\r\n.not stuffed in BDAT\r\n";
    c.send(
        format!(
            "MAIL FROM:<c@remote.test> BODY=8BITMIME\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nBDAT {}\r\n{part1}BDAT {} LAST\r\n{part2}",
            part1.len(),
            part2.len()
        )
        .as_bytes(),
    )
    .await;
    for want in [
        "250 2.1.0",
        "250 2.1.5",
        "250 2.1.5",
        "250 2.0.0",
        "250 2.0.0 OK",
    ] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "{r} (wanted {want})");
    }
    // BDAT without a transaction: the chunk is still consumed.
    c.send(b"BDAT 6 LAST\r\nNOOP\r\n").await;
    assert!(c.reply().await.starts_with("503"));
    assert!(c.cmd("NOOP").await.starts_with("250"));
    // DATA after BDAT is refused.
    c.envelope("c@remote.test", &["alice@example.test"]).await;
    c.send(b"BDAT 3\r\nabc").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("503"));
    let texts = server.inbox_texts("alice@example.test").await;
    assert_eq!(texts.len(), 1);
    assert!(
        texts[0].ends_with("first second\r\n.not stuffed in BDAT\r\n"),
        "{}",
        texts[0]
    );
    assert_eq!(server.inbox("bob@example.test").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_routes_aliases_catch_all_postmaster_and_idn() {
    let server = Server::start("");
    for args in [
        vec![
            "alias",
            "add",
            "team@example.test",
            "alice@example.test",
            "bob@example.test",
        ],
        vec![
            "alias",
            "add",
            "postmaster@example.test",
            "alice@example.test",
        ],
        vec!["alias", "add", "fwd@example.test", "someone@external.test"],
        vec!["domain", "add", "bücher.test"],
    ] {
        let (ok, _, err) = server.cli(&args, "");
        assert!(ok, "{args:?}: {err}");
    }
    let (ok, _, err) = server.cli(&["user", "add", "jürgen@bücher.test"], common::PASSWORD);
    assert!(ok, "{err}");
    let mut c = Raw::connect(server.smtp).await;
    c.envelope(
        "s@remote.test",
        &[
            "TEAM@Example.Test",
            "postmaster",
            "Alice+Lists@EXAMPLE.TEST",
        ],
    )
    .await;
    // An alias to another domain forwards (tests/forwarding.rs follows the copy).
    assert!(c
        .cmd("RCPT TO:<fwd@example.test>")
        .await
        .starts_with("250 2.1.5 Recipient OK (forwarded)"));
    assert!(c
        .cmd("RCPT TO:<random@example.test>")
        .await
        .starts_with("550 5.1.1"));
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(b"Subject: routed\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(code(&c.reply().await), "250");
    // One copy per account, however many of its addresses were named.
    assert_eq!(server.inbox("alice@example.test").await.len(), 1);
    assert_eq!(server.inbox("bob@example.test").await.len(), 1);
    let (ok, _, err) = server.cli(
        &["domain", "catch-all", "example.test", "bob@example.test"],
        "",
    );
    assert!(ok, "{err}");
    c.envelope("s@remote.test", &["random@example.test"]).await;
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(b"Subject: catch\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(code(&c.reply().await), "250");
    // IDN: the U-label and A-label forms reach the same user; UTF-8 needs SMTPUTF8.
    assert_eq!(code(&c.cmd("MAIL FROM:<s@remote.test>").await), "250");
    assert!(c
        .cmd("RCPT TO:<jürgen@xn--bcher-kva.test>")
        .await
        .starts_with("553 5.6.7"));
    assert_eq!(code(&c.cmd("RSET").await), "250");
    assert_eq!(
        code(&c.cmd("MAIL FROM:<s@remote.test> SMTPUTF8").await),
        "250"
    );
    assert_eq!(
        code(&c.cmd("RCPT TO:<JÜRGEN@xn--bcher-kva.test>").await),
        "250"
    );
    assert_eq!(code(&c.cmd("RCPT TO:<jürgen@BÜCHER.test>").await), "250");
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send("Subject: idn\r\n\r\nGrüße\r\n.\r\n".as_bytes())
        .await;
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(server.inbox("jürgen@xn--bcher-kva.test").await.len(), 1);
    assert_eq!(server.inbox("bob@example.test").await.len(), 2, "catch-all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_dns_reaches_received_and_the_log_timeline() {
    use mailkeep_testkit::{reverse_name, Rr, TestDns};
    let dns = TestDns::start(vec![(
        &reverse_name("127.0.0.1".parse().unwrap()),
        Rr::Ptr("client.rdns.test.".into()),
    )])
    .unwrap();
    let server = Server::start(&format!(
        "reverse_dns = true\nservers = [\"{}\"]",
        dns.addr()
    ));
    let mut c = Raw::connect(server.smtp).await;
    c.envelope("s@remote.test", &["alice@example.test"]).await;
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(b"Subject: rdns\r\nMessage-ID: <rdns-1@remote.test>\r\n\r\nx\r\n.\r\n")
        .await;
    assert_eq!(code(&c.reply().await), "250");
    let texts = server.inbox_texts("alice@example.test").await;
    // RFC 6761 6.3: every 127/8 address is "localhost" without asking any server (the
    // resolver answers it itself); a non-loopback PTR through TestDns is tested in `net`.
    assert!(
        texts[0].contains("Received: from client.example (localhost [127.0.0.1])"),
        "{}",
        texts[0]
    );
    assert_eq!(code(&c.cmd("QUIT").await), "221");
    drop(c);
    let log = server.log_search_until(&["--message-id", "rdns-1@remote.test"], "smtp.close");
    assert!(log.contains("rdns=localhost"), "{log}");
    // The timeline has every step of the session.
    for kind in [
        "smtp.connect",
        "smtp.helo",
        "smtp.mail",
        "smtp.rcpt",
        "smtp.envelope",
        "delivery.stored",
        "smtp.data",
    ] {
        assert!(log.contains(kind), "{kind} missing from:\n{log}");
    }
    assert!(log.contains("250 2.0.0 OK: queued as"), "{log}");
}
