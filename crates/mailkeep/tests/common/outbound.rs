//! Helpers for the outbound tests: A (127.0.0.1, submission) sends to B (another loopback
//! address, the MX of b.test), with records served by a DNS server the test starts.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, Message, Tokio1Executor};
use mailkeep_testkit::{Rr, TestDns};

use super::{Server, PASSWORD};

/// A port free on `ip` now (B is restarted on the same one).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// B: the MX of b.test on `ip:port`, with the user carol@b.test.
pub fn start_b(ip: &str, port: u16) -> Server {
    let b = Server::start(&format!("address = \"{ip}:{port}\""));
    assert_eq!(b.smtp.to_string(), format!("{ip}:{port}"));
    let (ok, _, err) = b.cli(&["domain", "add", "b.test"], "");
    assert!(ok, "{err}");
    let (ok, _, err) = b.cli(&["user", "add", "carol@b.test"], PASSWORD);
    assert!(ok, "{err}");
    b
}

/// DNS for b.test (MX on `ip`), a domain with a null MX, and nothing else.
pub fn dns(ip: &str) -> TestDns {
    TestDns::start(vec![
        ("b.test.", Rr::Mx(10, "mx.b.test.".into())),
        ("mx.b.test.", Rr::A(ip.parse().unwrap())),
        ("nomail.test.", Rr::Mx(0, ".".into())),
    ])
    .unwrap()
}

/// A: the sending server, asking `dns`, delivering to port `port`.
pub fn start_a(dns: &TestDns, port: u16) -> Server {
    start_a_with(dns, port, "")
}

/// A with more config lines.
pub fn start_a_with(dns: &TestDns, port: u16, extra: &str) -> Server {
    Server::start(&format!(
        "servers = [\"{}\"]\nport = {port}\nretry_first = \"1s\"\nretry_max = \"2s\"\nfailure_delay = \"10ms\"\n{extra}",
        dns.addr()
    ))
}

pub fn submitter(a: &Server) -> AsyncSmtpTransport<Tokio1Executor> {
    let tls = TlsParameters::builder("mail.example.test".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .unwrap();
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(a.listeners["submission"].port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(
            "alice@example.test".into(),
            PASSWORD.into(),
        ))
        .build()
}

pub fn message(to: &[&str], subject: &str) -> Message {
    let mut b = Message::builder()
        .from("Alice <alice@example.test>".parse().unwrap())
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for t in to {
        b = b.to(t.parse().unwrap());
    }
    b.body(format!("{subject}\n.a line with a leading dot\n"))
        .unwrap()
}

/// B's SMTP sessions and messages from A (127.0.0.1), once `messages` have been logged (log
/// events land a moment after the replies): (connects, messages).
pub async fn sessions_from_a(b: &Server, messages: usize) -> (usize, usize) {
    let count = || {
        let (ok, out, err) = b.cli(&["log", "search", "--ip", "127.0.0.1", "--json"], "");
        assert!(ok, "{err}");
        (
            out.matches("\"kind\":\"smtp.connect\"").count(),
            out.matches("\"kind\":\"smtp.data\"").count(),
        )
    };
    let mut seen = count();
    for _ in 0..100 {
        if seen.1 >= messages {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = count();
    }
    seen
}

/// Waits (up to 30 s) until `user` on `server` has `n` messages; returns their texts.
pub async fn wait_inbox(server: &Server, user: &str, n: usize) -> Vec<String> {
    for _ in 0..300 {
        if server.inbox(user).await.len() >= n {
            return server.inbox_texts(user).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{user} has {} messages, not {n}; log:\n{}",
        server.inbox(user).await.len(),
        server.log()
    );
}

/// NAME=VALUE records of A's first keys (mk1e, mk1r).
pub fn dkim_records(a: &Server) -> Vec<String> {
    dkim_records_of(a, 1, "")
}

/// NAME=VALUE records of A's keys mk<n>e and mk<n>r (`suffix` `.pending` before the switch).
pub fn dkim_records_of(a: &Server, n: u32, suffix: &str) -> Vec<String> {
    use base64::Engine;
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
    let b64 = base64::engine::general_purpose::STANDARD;
    let dir = a.dir.path().join("dkim");
    let ed = std::fs::read_to_string(dir.join(format!("example.test.mk{n}e.ed25519.pem{suffix}")))
        .unwrap();
    let der = b64
        .decode(
            ed.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).unwrap();
    use ring::signature::KeyPair;
    let rsa_pem =
        std::fs::read_to_string(dir.join(format!("example.test.mk{n}r.rsa.pem{suffix}"))).unwrap();
    let rsa_key = rsa::RsaPrivateKey::from_pkcs8_pem(&rsa_pem).unwrap();
    let rsa_pub = rsa_key.to_public_key().to_public_key_der().unwrap();
    vec![
        format!(
            "mk{n}e._domainkey.example.test=v=DKIM1; k=ed25519; p={}",
            b64.encode(pair.public_key().as_ref())
        ),
        format!(
            "mk{n}r._domainkey.example.test=v=DKIM1; k=rsa; p={}",
            b64.encode(rsa_pub.as_bytes())
        ),
    ]
}

/// A user's INBOX, every message whole, fetched over IMAPS with Python's imaplib.
pub fn imap_fetch_all(server: &Server, user: &str) -> Vec<String> {
    imap_fetch(server, user, "INBOX")
}

/// A mailbox of a user, every message whole, fetched over IMAPS with Python's imaplib.
pub fn imap_fetch(server: &Server, user: &str, mailbox: &str) -> Vec<String> {
    let script = r#"
import imaplib, ssl, sys
port, user, password, mailbox = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx)
m.login(user, password)
typ, data = m.select('"' + mailbox + '"', readonly=True)
assert typ == "OK", data
typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
assert typ == "OK", data
for item in data:
    if isinstance(item, tuple):
        sys.stdout.buffer.write(item[1] + b"\0")
m.logout()
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &server.listeners["imaps"].port().to_string(),
            user,
            PASSWORD,
            mailbox,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "imaplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter(|m| !m.is_empty())
        .map(String::from)
        .collect()
}

/// A's DKIM keys as TXT records to serve (long values in several strings).
pub fn dkim_txt(a: &Server) -> Vec<(String, Rr)> {
    dkim_records(a)
        .into_iter()
        .map(|r| {
            let (name, value) = r.split_once('=').expect("NAME=VALUE");
            let parts: Vec<String> = value
                .as_bytes()
                .chunks(250)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            (format!("{name}."), Rr::TxtParts(parts))
        })
        .collect()
}

/// Points a server's config at `dns` (takes effect at its next start or CLI run).
pub fn point_dns(config: &std::path::Path, dns: &TestDns) {
    let text = std::fs::read_to_string(config).expect("config");
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("servers = ") {
                format!("servers = [\"{}\"]", dns.addr())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(config, text).expect("config");
}
