//! Message submission (RFC 6409) on the submission (STARTTLS) and submissions (implicit TLS,
//! RFC 8314) ports: real clients (lettre, Python's smtplib) and the defences, raw.

mod common;

use std::process::Command;

use common::{code, Raw, Server, PASSWORD};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

fn port(server: &Server, proto: &str) -> u16 {
    server.listeners[proto].port()
}

fn tls_params() -> TlsParameters {
    TlsParameters::builder("mail.example.test".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .unwrap()
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_submits_with_starttls_and_with_implicit_tls() {
    let server = Server::start("");
    let creds = Credentials::new("alice@example.test".into(), PASSWORD.into());
    let starttls = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port(&server, "submission"))
        .tls(Tls::Required(tls_params()))
        .credentials(creds.clone())
        .authentication(vec![Mechanism::Plain])
        .build();
    let msg = |subject: &str| {
        Message::builder()
            .from("Alice <alice@example.test>".parse().unwrap())
            .to("bob@example.test".parse().unwrap())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body("Hello from submission.\n".to_string())
            .unwrap()
    };
    starttls
        .send(msg("over STARTTLS"))
        .await
        .expect("submit on 587");
    let implicit = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port(&server, "submissions"))
        .tls(Tls::Wrapper(tls_params()))
        .credentials(creds)
        .authentication(vec![Mechanism::Login])
        .build();
    implicit
        .send(msg("over implicit TLS"))
        .await
        .expect("submit on 465");
    let texts = server.inbox_texts("bob@example.test").await;
    assert_eq!(texts.len(), 2);
    assert!(texts[0].contains("Subject: over STARTTLS"), "{}", texts[0]);
    assert!(
        texts[1].contains("Subject: over implicit TLS"),
        "{}",
        texts[1]
    );
    // RFC 3848: an authenticated TLS submission is "ESMTPSA".
    assert!(texts[0].contains("with ESMTPSA"), "{}", texts[0]);
    assert!(
        texts[0].contains("Return-Path: <alice@example.test>"),
        "{}",
        texts[0]
    );
    // A wrong password does not send.
    let wrong = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port(&server, "submission"))
        .tls(Tls::Required(tls_params()))
        .credentials(Credentials::new("alice@example.test".into(), "nope".into()))
        .build();
    assert!(wrong.send(msg("never")).await.is_err());
    assert_eq!(server.inbox("bob@example.test").await.len(), 2);
    // Every login attempt is on record, the failed one too.
    let log = server.log_search_until(
        &["--recipient", "alice@example.test", "--outcome", "rejected"],
        "smtp.auth",
    );
    assert!(log.contains("smtp.auth"), "{log}");
}

#[test]
fn python_smtplib_submission() {
    if Command::new("python3").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 must be installed in CI"
        );
        eprintln!("SKIPPED: python3 is not installed");
        return;
    }
    let server = Server::start("failure_delay = \"10ms\"");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/submission_smtplib.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(port(&server, "submission").to_string())
        .arg(port(&server, "submissions").to_string())
        .arg("alice@example.test")
        .arg(PASSWORD)
        .arg("bob@example.test")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "submission checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all submission checks passed"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let texts = rt.block_on(server.inbox_texts("bob@example.test"));
    assert_eq!(texts.len(), 2, "the forged From: was not delivered");
    // RFC 6409 8.2 and 8.3: Date and Message-ID added when missing, kept when present.
    let headers = |t: &str| t.split("\r\n\r\n").next().unwrap_or("").to_string();
    let first = headers(&texts[0]);
    assert!(
        first.contains("\r\nDate: ") || first.starts_with("Date: "),
        "{first}"
    );
    assert!(first.contains("Message-ID: <"), "{first}");
    assert!(first.contains("@mail.example.test>"), "{first}");
    let second = headers(&texts[1]);
    assert!(
        second.contains("Message-ID: <kept@python.client.example>"),
        "{second}"
    );
    assert_eq!(second.matches("Message-ID:").count(), 1, "{second}");
    assert!(
        second.contains("Date: Mon, 02 Jan 2023 03:04:05 +0000"),
        "{second}"
    );
    assert_eq!(second.matches("\r\nDate:").count(), 1, "{second}");
}

/// Raw SMTP on the submission port, from loopback (where the default config lets passwords
/// through without TLS, as Dovecot does for localhost).
async fn logged_in(server: &Server, user: &str) -> Raw {
    let mut c = Raw::connect(server.listeners["submission"]).await;
    let r = c.cmd("EHLO client.example").await;
    assert!(r.contains("AUTH PLAIN LOGIN"), "{r}");
    let r = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            b64(&format!("\0{user}\0{PASSWORD}"))
        ))
        .await;
    assert_eq!(code(&r), "235", "{r}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_requires_auth_and_own_addresses() {
    let server = Server::start("failure_delay = \"10ms\"");
    // Nothing without AUTH: no open relay, and no local delivery either.
    let mut c = Raw::connect(server.listeners["submission"]).await;
    c.cmd("EHLO client.example").await;
    let r = c.cmd("MAIL FROM:<alice@example.test>").await;
    assert!(r.starts_with("530 5.7.0"), "{r}");
    // AUTH PLAIN in two steps, cancelled, then with someone else's authzid.
    let r = c.cmd("AUTH PLAIN").await;
    assert_eq!(code(&r), "334", "{r}");
    let r = c.cmd("*").await;
    assert!(r.starts_with("501 5.0.0"), "{r}");
    let r = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            b64(&format!("bob@example.test\0alice@example.test\0{PASSWORD}"))
        ))
        .await;
    assert!(r.starts_with("535"), "{r}");
    let r = c.cmd("AUTH CRAM-MD5").await;
    assert!(r.starts_with("504") || r.starts_with("501"), "{r}");
    let r = c.cmd("AUTH PLAIN !!!notbase64").await;
    assert!(r.starts_with("501"), "{r}");
    // LOGIN, step by step.
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64("alice@example.test")).await, "334 UGFzc3dvcmQ6");
    let r = c.cmd(&b64(PASSWORD)).await;
    assert_eq!(code(&r), "235", "{r}");
    let r = c.cmd("AUTH PLAIN").await;
    assert!(r.starts_with("503"), "only one AUTH per session: {r}");
    // Own address, a sub-address of it, and the null sender: fine. Others: 553 5.7.1.
    for ok in ["alice@example.test", "ALICE+news@example.test", ""] {
        let r = c.cmd(&format!("MAIL FROM:<{ok}>")).await;
        assert_eq!(code(&r), "250", "{ok}: {r}");
        c.cmd("RSET").await;
    }
    for bad in ["bob@example.test", "team@example.test", "alice@other.test"] {
        let r = c.cmd(&format!("MAIL FROM:<{bad}>")).await;
        assert!(r.starts_with("553 5.7.1"), "{bad}: {r}");
    }
    // A sendable alias that delivers to alice becomes hers to send as.
    let (ok, _, err) = server.cli(
        &["alias", "add", "team@example.test", "alice@example.test"],
        "",
    );
    assert!(ok, "{err}");
    let r = c.cmd("MAIL FROM:<team@example.test>").await;
    assert!(r.starts_with("553 5.7.1"), "not sendable yet: {r}");
    let (ok, _, err) = server.cli(&["alias", "sendable", "team@example.test", "yes"], "");
    assert!(ok, "{err}");
    let r = c.cmd("MAIL FROM:<team@example.test>").await;
    assert_eq!(code(&r), "250", "{r}");
    // Other domains are relayed for an authenticated user (through the outbound queue).
    let r = c.cmd("RCPT TO:<someone@remote.test>").await;
    assert_eq!(code(&r), "250", "{r}");
    let r = c.cmd("RCPT TO:<bob@example.test>").await;
    assert_eq!(code(&r), "250", "{r}");
    c.send(b"DATA\r\n").await;
    assert!(c.reply().await.starts_with("354"));
    // No From: at all.
    c.send(b"Subject: anonymous\r\n\r\nbody\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("550 5.6.0"), "{r}");
    // From: the alias (sendable) is accepted, as is a Sender: of her own.
    c.cmd("MAIL FROM:<alice@example.test>").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    c.send(b"DATA\r\n").await;
    assert!(c.reply().await.starts_with("354"));
    c.send(b"From: The Team <team@example.test>\r\nSender: alice@example.test\r\nSubject: from the team\r\n\r\nhi\r\n.\r\n")
        .await;
    let r = c.reply().await;
    assert_eq!(code(&r), "250", "{r}");
    // A From: group with one foreign address is refused whole.
    c.cmd("MAIL FROM:<alice@example.test>").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    c.send(b"DATA\r\n").await;
    assert!(c.reply().await.starts_with("354"));
    c.send(b"From: alice@example.test, ceo@example.test\r\nSubject: both of us\r\n\r\nhi\r\n.\r\n")
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("553 5.7.1"), "{r}");
    assert_eq!(server.inbox("bob@example.test").await.len(), 1);
    let log = server.log_search_until(&["--recipient", "alice@example.test"], "smtp.auth");
    assert!(log.contains("smtp.auth"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_auth_needs_tls_when_plaintext_is_never() {
    let server = Server::start("plaintext = \"never\"\nfailure_delay = \"10ms\"");
    let mut c = Raw::connect(server.listeners["submission"]).await;
    let r = c.cmd("EHLO client.example").await;
    assert!(!r.contains("AUTH"), "AUTH is not offered before TLS: {r}");
    assert!(r.contains("STARTTLS"), "{r}");
    let r = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            b64(&format!("\0alice@example.test\0{PASSWORD}"))
        ))
        .await;
    assert!(r.starts_with("538 5.7.11"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_closes_after_repeated_failed_logins() {
    let server = Server::start("failure_delay = \"10ms\"\nmax_failures = 3");
    let mut c = Raw::connect(server.listeners["submission"]).await;
    c.cmd("EHLO client.example").await;
    let bad = format!("AUTH PLAIN {}", b64("\0alice@example.test\0guess"));
    for _ in 0..2 {
        let r = c.cmd(&bad).await;
        assert!(r.starts_with("535 5.7.8"), "{r}");
    }
    let r = c.cmd(&bad).await;
    assert!(r.starts_with("535 5.7.8"), "{r}");
    let r = c.reply().await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(c.closed().await);
    // The MX port never offers AUTH.
    let mut mx = Raw::connect(server.smtp).await;
    let r = mx.cmd("EHLO client.example").await;
    assert!(!r.contains("AUTH"), "{r}");
    let r = mx.cmd("AUTH PLAIN AGFsaWNlAHB3").await;
    assert!(r.starts_with("503"), "{r}");
    // And a logged-in submission client still cannot relay through the MX: separate ports.
    let mut sub = logged_in(&server, "alice@example.test").await;
    let r = sub.cmd("MAIL FROM:<alice@example.test>").await;
    assert_eq!(code(&r), "250", "{r}");
}

/// Python's imaplib and poplib log in with `password` over TLS; Ok(()) or the error text.
fn python_logins(server: &Server, password: &str) -> Result<(), String> {
    let script = r#"
import imaplib, poplib, ssl, sys
imaps, pop3s, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
m = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=ctx)
m.login("alice@example.test", password)
m.select("INBOX")
m.logout()
p = poplib.POP3_SSL("127.0.0.1", pop3s, context=ctx)
p.user("alice@example.test")
p.pass_(password)
p.quit()
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &port(server, "imaps").to_string(),
            &port(server, "pop3s").to_string(),
            password,
        ])
        .output()
        .expect("python3");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_passwords_work_wherever_passwords_do_until_revoked() {
    let server = Server::start("");
    let (ok, out, err) = server.cli(
        &["user", "app-password", "add", "alice@example.test", "phone"],
        "",
    );
    assert!(ok, "{err}");
    let app = out.lines().last().unwrap().trim().to_string();
    assert_eq!(app.len(), 29, "{out}");
    let submit = |password: &str| {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(port(&server, "submission"))
            .tls(Tls::Required(tls_params()))
            .credentials(Credentials::new(
                "alice@example.test".into(),
                password.into(),
            ))
            .build()
    };
    let msg = Message::builder()
        .from("alice@example.test".parse().unwrap())
        .to("bob@example.test".parse().unwrap())
        .subject("from the phone")
        .body("sent with an app password\n".to_string())
        .unwrap();
    submit(&app)
        .send(msg.clone())
        .await
        .expect("submission with the app password");
    python_logins(&server, &app).expect("IMAP and POP3 with the app password");
    // Typed without its dashes, it is the same password.
    python_logins(&server, &app.replace('-', "")).expect("without dashes");
    // The account's own password still works.
    python_logins(&server, PASSWORD).expect("the account password");
    let log = server.log_search_until(
        &["--recipient", "alice@example.test", "--json"],
        "\"app_password\":\"phone\"",
    );
    for kind in ["smtp.auth", "imap.login", "pop3.login"] {
        assert!(
            log.lines()
                .any(|l| l.contains(kind) && l.contains("\"app_password\":\"phone\"")),
            "{kind} names the app password: {log}"
        );
    }
    let (ok, list, err) = server.cli(&["user", "app-password", "list", "alice@example.test"], "");
    assert!(ok, "{err}");
    assert!(list.contains("phone"), "{list}");
    assert!(!list.contains("never"), "its use is recorded: {list}");
    assert!(
        !list.contains(&app),
        "the list never shows the password: {list}"
    );
    // Revoked: refused everywhere.
    let (ok, _, err) = server.cli(
        &[
            "user",
            "app-password",
            "remove",
            "alice@example.test",
            "phone",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(submit(&app).send(msg).await.is_err());
    let e = python_logins(&server, &app).expect_err("revoked");
    assert!(
        e.contains("AUTHENTICATIONFAILED") || e.contains("authentication failed"),
        "{e}"
    );
    // Bad input names the field.
    let (ok, _, err) = server.cli(
        &[
            "user",
            "app-password",
            "remove",
            "alice@example.test",
            "phone",
        ],
        "",
    );
    assert!(!ok && err.contains("name:"), "{err}");
    let (ok, _, err) = server.cli(
        &["user", "app-password", "add", "nobody@example.test", "x"],
        "",
    );
    assert!(!ok, "{err}");
}
