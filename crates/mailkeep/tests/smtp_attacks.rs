//! Each defence of the SMTP server, attacked by name.

mod common;

use common::{code, Raw, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_smuggling_sloppy_end_of_data_cannot_inject_a_message() {
    let server = Server::start("");
    for (i, sloppy) in [
        "\n.\n",
        "\n.\r\n",
        "\r\n.\n",
        "\r.\r",
        "\r\n.\r",
        "\r\n\x00.\r\n",
    ]
    .iter()
    .enumerate()
    {
        let mut c = Raw::connect(server.smtp).await;
        c.envelope("attacker@evil.test", &["alice@example.test"])
            .await;
        assert_eq!(code(&c.cmd("DATA").await), "354");
        let payload = format!(
            "Subject: innocent {i}\r\n\r\nhello{sloppy}MAIL FROM:<ceo@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled {i}\r\n\r\nforged\r\n.\r\n"
        );
        c.send(payload.as_bytes()).await;
        let r = c.reply().await;
        if sloppy.contains('\x00') {
            // Not a smuggling end marker at all: a NUL is plain data, the message is accepted
            // whole, with the "commands" inside its body.
            assert_eq!(code(&r), "250", "{r}");
        } else {
            assert!(r.starts_with("550 5.6.11"), "variant {sloppy:?}: {r}");
        }
        // Exactly one reply for the whole thing: the next reply is to our NOOP.
        let n = c.cmd("NOOP").await;
        assert!(
            n.starts_with("250 2.0.0"),
            "a smuggled command got a reply: {n}"
        );
    }
    let bob = server.inbox("bob@example.test").await;
    assert!(bob.is_empty(), "a smuggled message reached bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_command_injection_is_discarded() {
    let server = Server::start("");
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(code(&c.cmd("EHLO client.example").await), "250");
    // Commands pipelined behind STARTTLS in plaintext (CVE-2011-0411).
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@evil.test>\r\nRCPT TO:<alice@example.test>\r\n")
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("220"), "{r}");
    let Raw { r, w } = c;
    let stream = r.into_inner().reunite(w).expect("reunite");
    let mut tls = common::tls_connect(stream).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // If the injected MAIL had been kept, this MAIL would be "nested" (503).
    tls.write_all(b"EHLO client.example\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    while !got.contains("250 ") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        !got.contains("STARTTLS"),
        "STARTTLS is not offered twice: {got}"
    );
    tls.write_all(b"MAIL FROM:<good@client.example>\r\n")
        .await
        .unwrap();
    let n = tls.read(&mut buf).await.unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        reply.starts_with("250 2.1.0"),
        "injected MAIL survived the handshake: {reply}"
    );
    tls.write_all(b"DATA\r\n").await.unwrap();
    let n = tls.read(&mut buf).await.unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        reply.starts_with("554"),
        "injected RCPT survived the handshake: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_relay_is_refused() {
    let server = Server::start("");
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(code(&c.cmd("EHLO client.example").await), "250");
    assert_eq!(code(&c.cmd("MAIL FROM:<spammer@evil.test>").await), "250");
    for (rcpt, want) in [
        ("victim@gmail.test", "554 5.7.1"),
        // Source route (RFC 5321 C): the final address is what counts.
        ("@example.test:victim@gmail.test", "554 5.7.1"),
        // The "percent hack" and bang paths are local parts here, not routes.
        ("victim%gmail.test@example.test", "550 5.1.1"),
        ("gmail.test!victim@example.test", "550 5.1.1"),
        ("\"victim@gmail.test\"@example.test", "550 5.1.1"),
        // A look-alike domain.
        ("alice@example.test.evil.test", "554 5.7.1"),
    ] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert!(r.starts_with(want), "RCPT {rcpt}: {r} (wanted {want})");
    }
    assert!(
        c.cmd("DATA").await.starts_with("554"),
        "no recipient was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_gets_550_and_vrfy_does_not_enumerate() {
    let server = Server::start("");
    let mut c = Raw::connect(server.smtp).await;
    c.envelope("s@remote.test", &["alice@example.test"]).await;
    assert!(c
        .cmd("RCPT TO:<nobody@example.test>")
        .await
        .starts_with("550 5.1.1"));
    let known = c.cmd("VRFY alice").await;
    let unknown = c.cmd("VRFY nobody").await;
    assert!(known.starts_with("252"), "{known}");
    assert_eq!(
        known, unknown,
        "VRFY answers the same for users and non-users"
    );
    assert!(c.cmd("EXPN staff").await.starts_with("502"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_declared_and_actual() {
    let server = Server::start("max_message_size = \"2K\"");
    let mut c = Raw::connect(server.smtp).await;
    let ehlo = c.cmd("EHLO client.example").await;
    assert!(ehlo.contains("SIZE 2048"), "{ehlo}");
    let r = c.cmd("MAIL FROM:<s@remote.test> SIZE=999999").await;
    assert!(r.starts_with("552 5.3.4"), "declared size: {r}");
    assert_eq!(
        code(&c.cmd("MAIL FROM:<s@remote.test> SIZE=100").await),
        "250"
    );
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.test>").await), "250");
    assert_eq!(code(&c.cmd("DATA").await), "354");
    let body = "x".repeat(70);
    let mut msg = String::from("Subject: big\r\n\r\n");
    for _ in 0..100 {
        msg.push_str(&body);
        msg.push_str("\r\n");
    }
    msg.push_str(".\r\n");
    c.send(msg.as_bytes()).await;
    let r = c.reply().await;
    assert!(r.starts_with("552 5.3.4"), "actual size: {r}");
    // BDAT too.
    assert_eq!(code(&c.cmd("MAIL FROM:<s@remote.test>").await), "250");
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.test>").await), "250");
    c.send(format!("BDAT 3000 LAST\r\n{}", "y".repeat(3000)).as_bytes())
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("552 5.3.4"), "BDAT size: {r}");
    assert!(
        c.cmd("NOOP").await.starts_with("250"),
        "stream stays in sync after BDAT"
    );
    assert!(server.inbox("alice@example.test").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_addresses_get_syntax_replies() {
    let server = Server::start("max_errors = 50");
    let mut c = Raw::connect(server.smtp).await;
    assert!(
        c.cmd("MAIL FROM:<a@b.test>").await.starts_with("503"),
        "MAIL before EHLO"
    );
    assert_eq!(code(&c.cmd("EHLO client.example").await), "250");
    for (line, want) in [
        ("MAIL FROM:<no-at-sign>", "501"),
        ("MAIL FROM:<a@-bad-.test>", "553"),
        ("MAIL FROM:a@b.test", "501"),
        ("MAIL FROM:<ünï@b.test>", "553 5.6.7"),
        ("MAIL TO:<a@b.test>", "501"),
        // Parameters of extensions we do not advertise (RFC 5321 4.1.1.11).
        ("MAIL FROM:<a@b.test> REQUIRETLS", "555"),
        ("MAIL FROM:<a@b.test> BODY=BINARYMIME", "555"),
        ("MAIL FROM:<a@b.test> MT-PRIORITY=3", "555"),
        ("MAIL FROM:<a@b.test> X-UNKNOWN=1", "555"),
    ] {
        let r = c.cmd(line).await;
        assert!(r.starts_with(want), "{line}: {r} (wanted {want})");
    }
    assert_eq!(code(&c.cmd("MAIL FROM:<a@b.test>").await), "250");
    assert!(
        c.cmd("MAIL FROM:<a@b.test>").await.starts_with("503"),
        "nested MAIL"
    );
    for (line, want) in [
        ("RCPT TO:<@@example.test>", "501"),
        ("RCPT TO:<alice@[127.0.0.1]>", "501"),
        ("RCPT TO:<älice@example.test>", "553 5.6.7"),
        (&format!("RCPT TO:<{}@example.test>", "a".repeat(70)), "501"),
    ] {
        let r = c.cmd(line).await;
        assert!(r.starts_with(want), "{line}: {r} (wanted {want})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_header_lines_and_command_lines_are_refused() {
    let server = Server::start("max_data_line = 2000\nmax_header_size = \"8K\"");
    let mut c = Raw::connect(server.smtp).await;
    // A command line far over the limit: refused, connection still usable.
    let long = format!("EHLO {}", "a".repeat(100_000));
    let r = c.cmd(&long).await;
    assert!(r.starts_with("500 5.5.2"), "{}", &r[..r.len().min(80)]);
    c.envelope("s@remote.test", &["alice@example.test"]).await;
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(format!("Subject: {}\r\n\r\nbody\r\n.\r\n", "h".repeat(50_000)).as_bytes())
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("552 5.6.0"), "huge header line: {r}");
    // Many lines adding up to a huge header section.
    assert_eq!(code(&c.cmd("MAIL FROM:<s@remote.test>").await), "250");
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.test>").await), "250");
    assert_eq!(code(&c.cmd("DATA").await), "354");
    let mut m = String::new();
    for i in 0..400 {
        m.push_str(&format!(
            "X-Filler-{i}: some header text to fill the header section\r\n"
        ));
    }
    m.push_str("\r\nbody\r\n.\r\n");
    c.send(m.as_bytes()).await;
    let r = c.reply().await;
    assert!(r.starts_with("552 5.6.0"), "huge header section: {r}");
    assert!(server.inbox("alice@example.test").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_junk_gets_500_then_421() {
    let server = Server::start("max_errors = 5");
    let mut c = Raw::connect(server.smtp).await;
    let mut junk: Vec<u8> = (0u8..=255).collect();
    junk.retain(|b| *b != b'\n');
    for _ in 0..4 {
        c.send(&junk).await;
        c.send(b"\r\n").await;
        let r = c.reply().await;
        assert!(r.starts_with("500"), "{r}");
    }
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n")
        .await; // a TLS ClientHello on a plain port
    let r = c.reply().await;
    assert!(r.starts_with("500"), "{r}");
    let r = c.reply().await;
    assert!(r.starts_with("421 4.7.0"), "too many errors closes: {r}");
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_injection_through_envelope_and_ehlo_is_refused() {
    let server = Server::start("");
    let mut c = Raw::connect(server.smtp).await;
    // An EHLO name that would break the Received header.
    let r = c.cmd("EHLO evil.test (forged) by trusted.example").await;
    assert!(r.starts_with("501"), "{r}");
    assert_eq!(code(&c.cmd("EHLO client.example").await), "250");
    // A sender that would end the Return-Path header early and add its own.
    for sender in [
        "\"a>\\\\r\\\\nBcc: x\"@evil.test",
        "\"a> Bcc: x\"@evil.test",
        "\"a\tb\"@evil.test",
    ] {
        let r = c.cmd(&format!("MAIL FROM:<{sender}>")).await;
        assert!(r.starts_with('5'), "MAIL FROM:<{sender}>: {r}");
    }
    assert_eq!(code(&c.cmd("MAIL FROM:<ok@evil.test>").await), "250");
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.test>").await), "250");
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(code(&c.reply().await), "250");
    let texts = server.inbox_texts("alice@example.test").await;
    assert!(
        texts[0].starts_with(
            "Return-Path: <ok@evil.test>\r\nDelivered-To: alice@example.test\r\nX-Spam-Status: "
        ),
        "{}",
        texts[0]
    );
    assert!(
        texts[0].contains("\r\nAuthentication-Results: mail.example.test;"),
        "{}",
        texts[0]
    );
    assert!(
        texts[0].contains("\r\nReceived: from client.example (unknown [127.0.0.1])"),
        "{}",
        texts[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_recipients_and_quota() {
    let server = Server::start("max_recipients = 2");
    let (ok, _, err) = server.cli(&["user", "quota", "bob@example.test", "1K"], "");
    assert!(ok, "{err}");
    let mut c = Raw::connect(server.smtp).await;
    c.envelope(
        "s@remote.test",
        &["alice@example.test", "alice+x@example.test"],
    )
    .await;
    assert!(c
        .cmd("RCPT TO:<bob@example.test>")
        .await
        .starts_with("452 4.5.3"));
    assert_eq!(code(&c.cmd("RSET").await), "250");
    // Declared size over the remaining quota.
    assert_eq!(
        code(&c.cmd("MAIL FROM:<s@remote.test> SIZE=5000").await),
        "250"
    );
    assert!(c
        .cmd("RCPT TO:<bob@example.test>")
        .await
        .starts_with("452 4.2.2"));
    assert_eq!(code(&c.cmd("RSET").await), "250");
    // Fill bob's mailbox, then he is refused.
    c.envelope("s@remote.test", &["bob@example.test"]).await;
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(format!("Subject: fill\r\n\r\n{}\r\n.\r\n", "z".repeat(1500)).as_bytes())
        .await;
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(code(&c.cmd("MAIL FROM:<s@remote.test>").await), "250");
    assert!(c
        .cmd("RCPT TO:<bob@example.test>")
        .await
        .starts_with("452 4.2.2"));
    drop(c);
    let permanent = Server::start("quota_reply = \"permanent\"");
    permanent.cli(&["user", "quota", "bob@example.test", "10"], "");
    let mut c = Raw::connect(permanent.smtp).await;
    assert_eq!(code(&c.cmd("EHLO client.example").await), "250");
    assert_eq!(
        code(&c.cmd("MAIL FROM:<s@remote.test> SIZE=100").await),
        "250"
    );
    assert!(c
        .cmd("RCPT TO:<bob@example.test>")
        .await
        .starts_with("552 5.2.2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_parameters_carrying_crlf_nul_or_8bit_are_refused() {
    let server = Server::start("");
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(code(&c.cmd("EHLO client.test").await), "250");
    // RFC 3461 4: ENVID and ORCPT are xtext that decodes to printable US-ASCII only.
    for envid in [
        "a+0D+0AX-Injected:+20yes",
        "a+00b",
        "caf+C3+A9",
        "caf\u{e9}",
    ] {
        let r = c
            .cmd(&format!("MAIL FROM:<someone@remote.test> ENVID={envid}"))
            .await;
        assert!(r.starts_with("501 5.5.4"), "ENVID={envid}: {r}");
    }
    let r = c.cmd("MAIL FROM:<someone@remote.test> ENVID=ok+2B1").await;
    assert!(r.starts_with("250"), "{r}");
    for orcpt in [
        "rfc822;a+0D+0Ab@x.test",
        "rfc822;a+00b@x.test",
        "rfc822;a+FFb@x.test",
    ] {
        let r = c
            .cmd(&format!("RCPT TO:<alice@example.test> ORCPT={orcpt}"))
            .await;
        assert!(r.starts_with("501 5.5.4"), "ORCPT={orcpt}: {r}");
    }
    let r = c
        .cmd("RCPT TO:<alice@example.test> ORCPT=rfc822;alice+2Bx@example.test")
        .await;
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT").await;
    // Nothing the log prints carries a decoded or raw control character.
    let (ok, out, err) = server.cli(&["log", "search", "--json"], "");
    assert!(ok, "{err}");
    assert!(!out.is_empty());
    for line in out.lines() {
        assert!(!line.chars().any(|ch| ch.is_control()), "{line:?}");
    }
    let (ok, out, err) = server.cli(&["log", "search"], "");
    assert!(ok, "{err}");
    assert!(
        !out.lines().any(|l| l.starts_with("X-Injected")),
        "a forged log line: {out}"
    );
}
