//! Rate limits: SMTP commands per second (they wait), messages and recipients per
//! connection, and messages per sender domain per hour on the MX; IMAP, POP3 and ManageSieve
//! commands per second.

mod common;

use std::time::{Duration, Instant};

use common::{code, Raw, Server};

/// One message from `from` to alice over a connection `c` already greeted; returns the final
/// reply (or the MAIL reply when MAIL was refused).
async fn send(c: &mut Raw, from: &str) -> String {
    let r = c.cmd(&format!("MAIL FROM:<{from}>")).await;
    if code(&r) != "250" {
        return r;
    }
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.test>").await), "250");
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(b"Subject: rate\r\n\r\nx\r\n.\r\n").await;
    c.reply().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_messages_and_recipients_are_limited() {
    let server = Server::start(
        "commands_per_second = 5\nmax_messages_per_connection = 2\nmax_recipients_per_connection = 3\nmax_messages_per_sender_domain = 3",
    );

    // 1. Fifteen NOOPs pipelined at 5 a second (a burst of 5): the last ten wait for their
    // turn, two seconds at least.
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(code(&c.cmd("EHLO client.test").await), "250");
    // The allowance spent on EHLO comes back first.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = Instant::now();
    c.send("NOOP\r\n".repeat(15).as_bytes()).await;
    for _ in 0..15 {
        assert_eq!(code(&c.reply().await), "250");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "paced: {:?}",
        started.elapsed()
    );

    // 2. Two messages per connection, then 421 and the connection ends.
    assert!(send(&mut c, "a@one.test").await.starts_with("250"));
    assert!(send(&mut c, "b@two.test").await.starts_with("250"));
    let r = c.cmd("MAIL FROM:<c@three.test>").await;
    assert!(r.starts_with("421 4.7.0 Too many messages"), "{r}");
    assert!(c.closed().await);

    // 3. Three recipients per connection, across its transactions.
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(code(&c.cmd("EHLO client.test").await), "250");
    assert_eq!(code(&c.cmd("MAIL FROM:<x@four.test>").await), "250");
    for rcpt in ["alice", "bob", "alice+tag"] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}@example.test>")).await;
        assert_eq!(code(&r), "250", "{r}");
    }
    let r = c.cmd("RCPT TO:<bob+x@example.test>").await;
    assert!(
        r.starts_with("452 4.5.3 Too many recipients in this connection"),
        "{r}"
    );
    c.cmd("QUIT").await;

    // 4. Three messages an hour from one sender domain, whatever the connection; the fourth
    // waits, other domains do not.
    for n in 0..2 {
        let mut c = Raw::connect(server.smtp).await;
        assert_eq!(code(&c.cmd("EHLO client.test").await), "250");
        let r = send(&mut c, &format!("n{n}@busy.test")).await;
        assert!(r.starts_with("250"), "{r}");
        c.cmd("QUIT").await;
    }
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(code(&c.cmd("EHLO client.test").await), "250");
    // (one.test and two.test above sent one each; busy.test has two so far)
    assert!(send(&mut c, "n2@BUSY.test").await.starts_with("250"));
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(code(&c.cmd("EHLO client.test").await), "250");
    let r = send(&mut c, "n3@busy.test").await;
    assert!(
        r.starts_with("451 4.7.1 Too many messages from busy.test"),
        "{r}"
    );
    assert!(send(&mut c, "someone@quiet.test").await.starts_with("250"));
}

/// The submission listeners have their own limits (`[submission]`): one message per
/// connection there, while the MX keeps `[smtp]`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_has_limits_of_its_own() {
    let server = Server::start(
        "submission.max_messages_per_connection = 1\nsubmission.max_connections_per_ip = 1\nplaintext = \"never\"",
    );
    let script = r#"
import smtplib, ssl, sys
port, password = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", port)
s.starttls(context=ctx)
s.login("alice@example.test", password)
msg = "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: one\r\n\r\nx\r\n"
s.sendmail("alice@example.test", ["bob@example.test"], msg)
print("first sent")
# A second connection from the same address is refused while this one is open.
try:
    t = smtplib.SMTP("127.0.0.1", port)
    print("second connection", t.noop()[0])
except (smtplib.SMTPException, OSError) as e:
    print("second connection refused")
try:
    s.sendmail("alice@example.test", ["bob@example.test"], msg)
    print("second sent")
except smtplib.SMTPException as e:
    print("second refused", str(e)[:80])
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &server.listeners["submission"].port().to_string(),
            common::PASSWORD,
        ])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("first sent"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("second connection refused") || stdout.contains("second connection 421"),
        "{stdout}"
    );
    assert!(
        stdout.contains("second refused") && stdout.contains("421"),
        "{stdout}"
    );
    // The MX is not held to those: two messages over one connection.
    let mut c = Raw::connect(server.smtp).await;
    assert_eq!(code(&c.cmd("EHLO client.test").await), "250");
    let mut c2 = Raw::connect(server.smtp).await;
    assert_eq!(code(&c2.cmd("EHLO other.test").await), "250");
    assert!(send(&mut c, "a@one.test").await.starts_with("250"));
    assert!(send(&mut c, "b@two.test").await.starts_with("250"));
}

/// Sends `n` pipelined lines made by `line(i)` to a line-based server after its greeting and
/// reads `n` replies, each the first line starting with `done(i)`; returns how long that took.
async fn pipelined(
    addr: std::net::SocketAddr,
    n: usize,
    line: impl Fn(usize) -> String,
    done: impl Fn(usize) -> String,
) -> Duration {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut greeting = String::new();
    r.read_line(&mut greeting).await.expect("greeting");
    let started = Instant::now();
    let all: String = (0..n).map(&line).collect();
    w.write_all(all.as_bytes()).await.expect("write");
    for i in 0..n {
        let want = done(i);
        loop {
            let mut l = String::new();
            let got = tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut l))
                .await
                .expect("a reply in time")
                .expect("read");
            assert!(got > 0, "closed after {i} replies");
            if l.starts_with(&want) {
                break;
            }
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_pop3_and_managesieve_commands_are_paced() {
    let server = Server::start("imap.commands_per_second = 10\npop3.commands_per_second = 10");
    // A burst of twice the rate passes; the ten commands after it wait a tenth of a second
    // each: a second at least.
    let imap = pipelined(
        server.listeners["imap"],
        30,
        |i| format!("a{i} NOOP\r\n"),
        |i| format!("a{i} OK"),
    )
    .await;
    assert!(imap >= Duration::from_millis(900), "IMAP paced: {imap:?}");
    // POP3 after a login (NOOP is a TRANSACTION command; errors would end the session).
    let pop3 = pipelined(
        server.listeners["pop3"],
        32,
        |i| match i {
            0 => "USER alice@example.test\r\n".to_string(),
            1 => format!("PASS {}\r\n", common::PASSWORD),
            _ => "NOOP\r\n".to_string(),
        },
        |_| "+OK".to_string(),
    )
    .await;
    assert!(pop3 >= Duration::from_millis(900), "POP3 paced: {pop3:?}");
    // ManageSieve: 100 a second after a burst of 200; NOOP's tag tells the replies apart
    // from the greeting (RFC 5804 2.15).
    let sieve = pipelined(
        server.listeners["managesieve"],
        300,
        |i| format!("NOOP \"n{i}\"\r\n"),
        |i| format!("OK (TAG \"n{i}\")"),
    )
    .await;
    assert!(
        sieve >= Duration::from_millis(900),
        "ManageSieve paced: {sieve:?}"
    );
}
