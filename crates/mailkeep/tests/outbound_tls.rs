//! The outbound queue's TLS policies between two real servers: MTA-STS (RFC 8461) with its
//! policy served over HTTPS by the test, DANE (RFC 7672) with TLSA records in zones the test's
//! DNS server answers for as a validating resolver would (AD bit), REQUIRETLS (RFC 8689) and
//! `TLS-Required: No`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::outbound::{free_port, message, start_a_with, submitter, wait_inbox};
use common::{Server, PASSWORD};
use lettre::AsyncTransport;
use mailkeep_testkit::{Rr, TestDns};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A test CA and a server certificate it signed for the test's host names.
struct Pki {
    dir: tempfile::TempDir,
    leaf_der: Vec<u8>,
    leaf_key_der: Vec<u8>,
    ca_der: Vec<u8>,
    /// SHA-256 of the server key's SubjectPublicKeyInfo (a `3 1 1` TLSA record).
    spki_sha256: Vec<u8>,
}

impl Pki {
    fn new(names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.clone().self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(
            dir.path().join("cert.pem"),
            format!("{}{}", leaf.pem(), ca.pem()),
        )
        .unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        Pki {
            leaf_der: leaf.der().to_vec(),
            leaf_key_der: key.serialize_der(),
            ca_der: ca.der().to_vec(),
            spki_sha256: ring::digest::digest(&ring::digest::SHA256, &spki)
                .as_ref()
                .to_vec(),
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Config lines making a server use this certificate.
    fn server_config(&self) -> String {
        format!(
            "cert = \"{}\"\nkey = \"{}\"",
            self.path("cert.pem"),
            self.path("key.pem")
        )
    }
}

/// Requests (header and body) POSTed to /tlsrpt.
type Posts = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTPS server on `ip` serving `policy` at /.well-known/mta-sts.txt and taking TLS reports
/// POSTed to /tlsrpt; returns its port, how many policies it served, and the reports.
async fn policy_server(
    ip: &str,
    pki: &Pki,
    policy: &'static str,
) -> (u16, Arc<AtomicUsize>, Posts) {
    let certs = vec![
        rustls::pki_types::CertificateDer::from(pki.leaf_der.clone()),
        rustls::pki_types::CertificateDer::from(pki.ca_der.clone()),
    ];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pki.leaf_key_der.clone().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let posts: Posts = Arc::default();
    let posted = posts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let count = count.clone();
            let posted = posted.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).into_owned();
                let head_len = text.find("\r\n\r\n").map_or(0, |i| i + 4);
                let response = if text.starts_with("POST /tlsrpt HTTP/1.1\r\n") {
                    let length: usize = text
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    let mut body = request[head_len..].to_vec();
                    while body.len() < length {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => body.extend_from_slice(&buf[..n]),
                        }
                    }
                    posted
                        .lock()
                        .unwrap()
                        .push((text[..head_len].to_string(), body));
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                } else if text.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
                    && text
                        .to_ascii_lowercase()
                        .contains("\r\nhost: mta-sts.b.test\r\n")
                {
                    count.fetch_add(1, Ordering::SeqCst);
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{policy}",
                        policy.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, served, posts)
}

/// A plaintext SMTP server that does not offer STARTTLS (or an attacker who strips it);
/// counts the MAIL commands it gets.
async fn plaintext_mx(ip: &str, port: u16) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    let mails = Arc::new(AtomicUsize::new(0));
    let count = mails.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let (r, mut w) = tcp.into_split();
                let mut lines = tokio::io::BufReader::new(r);
                let _ = w.write_all(b"220 mx.b.test ESMTP\r\n").await;
                loop {
                    let mut line = String::new();
                    use tokio::io::AsyncBufReadExt;
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let up = line.to_ascii_uppercase();
                    let reply: &[u8] = if up.starts_with("EHLO") {
                        b"250-mx.b.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
                    } else if up.starts_with("MAIL") {
                        count.fetch_add(1, Ordering::SeqCst);
                        b"250 ok\r\n"
                    } else if up.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    let _ = w.write_all(reply).await;
                }
            });
        }
    });
    (task, mails)
}

/// The delivery attempts A logged for `rcpt`, as JSON lines, once one contains `want`.
fn attempts_until(a: &Server, rcpt: &str, want: &str) -> String {
    let out = a.log_search_until(&["--recipient", rcpt, "--json"], want);
    assert!(out.contains(want), "no attempt with {want:?}:\n{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mta_sts_enforce_needs_starttls_and_a_valid_certificate_from_a_listed_mx() {
    let ip = "127.0.0.21";
    let port = free_port(ip);
    let pki = Pki::new(&["mx.b.test", "mta-sts.b.test"]);
    let (https_port, served, posts) = policy_server(
        "127.0.0.1",
        &pki,
        "version: STSv1\r\nmode: enforce\r\nmx: mx.b.test\r\nmax_age: 86400\r\n",
    )
    .await;
    // rogue.b.test is the preferred MX but not in the policy: never used.
    let dns = TestDns::start(vec![
        ("b.test.", Rr::Mx(5, "rogue.b.test.".into())),
        ("b.test.", Rr::Mx(10, "mx.b.test.".into())),
        ("rogue.b.test.", Rr::A("127.0.0.24".parse().unwrap())),
        ("mx.b.test.", Rr::A(ip.parse().unwrap())),
        ("_mta-sts.b.test.", Rr::Txt("v=STSv1; id=20261129".into())),
        ("mta-sts.b.test.", Rr::A("127.0.0.1".parse().unwrap())),
        (
            "_smtp._tls.b.test.",
            Rr::Txt(format!(
                "v=TLSRPTv1; rua=mailto:postmaster@b.test,https://mta-sts.b.test:{https_port}/tlsrpt"
            )),
        ),
    ])
    .unwrap();
    let a = start_a_with(
        &dns,
        port,
        &format!(
            "mta_sts_port = {https_port}\nca_file = \"{}\"",
            pki.path("ca.pem")
        ),
    );

    // 1. The MX answers without STARTTLS: nothing is sent, and the reason is on record.
    let (fake, mails) = plaintext_mx(ip, port).await;
    submitter(&a)
        .send(message(&["carol@b.test"], "under mta-sts"))
        .await
        .expect("submit");
    let log = attempts_until(
        &a,
        "carol@b.test",
        "does not offer STARTTLS, which the domain's MTA-STS policy requires",
    );
    assert!(
        log.contains("rogue.b.test: not an mx of the MTA-STS policy of b.test: skipped"),
        "{log}"
    );
    assert!(log.contains("\"outcome\":\"tempfail\""), "{log}");
    assert_eq!(mails.load(Ordering::SeqCst), 0, "no MAIL without TLS");
    fake.abort();
    let _ = fake.await;
    let fetched = a.log_search_until(&["--kind", "queue.mta_sts", "--json"], "fetched");
    assert!(fetched.contains("\"mode\":\"enforce\""), "{fetched}");

    // 2. A real server whose certificate no trusted authority signed: refused too.
    let mut b = Server::start(&format!("address = \"{ip}:{port}\""));
    let (ok, _, err) = b.cli(&["domain", "add", "b.test"], "");
    assert!(ok, "{err}");
    for u in ["carol@b.test", "postmaster@b.test"] {
        let (ok, _, err) = b.cli(&["user", "add", u], PASSWORD);
        assert!(ok, "{err}");
    }
    attempts_until(&a, "carol@b.test", "invalid peer certificate");
    assert!(b.inbox("carol@b.test").await.is_empty());

    // 3. With a certificate for mx.b.test from a trusted authority: delivered, and the log
    // says how the server was checked.
    b.kill9();
    let text = std::fs::read_to_string(&b.config).unwrap();
    let text = text
        .replace("cert = \"tls/cert.pem\"", "")
        .replace("key = \"tls/key.pem\"", &pki.server_config());
    std::fs::write(&b.config, text).unwrap();
    b.restart();
    let got = wait_inbox(&b, "carol@b.test", 1).await;
    assert!(got[0].contains("Subject: under mta-sts"));
    let log = attempts_until(&a, "carol@b.test", "\"outcome\":\"delivered\"");
    let delivered = log
        .lines()
        .find(|l| l.contains("\"outcome\":\"delivered\""))
        .unwrap();
    assert!(
        delivered.contains("\"policy\":\"mta-sts\"")
            && delivered.contains("\"authenticated\":true"),
        "{delivered}"
    );
    // The policy was fetched once and then cached.
    assert_eq!(served.load(Ordering::SeqCst), 1);
    let cached = a.store().sts_get("b.test").await.unwrap().unwrap();
    assert_eq!(cached.id, "20261129");

    // 4. TLS reporting (RFC 8460): A reports its sessions to b.test's TLS-RPT address; B
    // keeps the report and sums it up.
    let (ok, out, err) = a.cli(&["tlsrpt", "send"], "");
    assert!(ok, "{err}");
    assert!(out.contains("1 TLS report(s) queued"), "{out}");
    let got = wait_inbox(&b, "postmaster@b.test", 1).await;
    assert!(got[0].contains("TLS-Report-Domain: b.test"), "{}", got[0]);
    // The same report was POSTed to the https: address (RFC 8460 6.4), gzipped JSON.
    let (head, body) = posts
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("a POSTed report");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/tlsrpt+gzip"),
        "{head}"
    );
    let mut json = String::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(body.as_slice())
        .read_to_string(&mut json)
        .expect("gzip");
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        report["policies"][0]["policy"]["policy-domain"], "b.test",
        "{json}"
    );
    assert_eq!(report["organization-name"], "mail.example.test", "{json}");
    assert!(got[0].contains("DKIM-Signature:"), "{}", got[0]);
    let mut summary = String::new();
    for _ in 0..50 {
        let (ok, out, err) = b.cli(&["tlsrpt", "summary"], "");
        assert!(ok, "{err}");
        summary = out;
        if summary.contains("b.test") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let line = summary
        .lines()
        .find(|l| l.starts_with("b.test"))
        .unwrap_or_else(|| panic!("{summary}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cols[..3], &["b.test", "sts", "1"], "{summary}");
    assert!(
        line.contains("starttls-not-supported=") && line.contains("certificate-not-trusted="),
        "{summary}"
    );
    assert!(line.ends_with("/ mail.example.test"), "{summary}");
}

/// Python's smtplib submits to A with `MAIL FROM ... REQUIRETLS` (RFC 8689).
fn submit_requiretls(a: &Server, to: &str, subject: &str) {
    let script = r#"
import smtplib, ssl, sys
port, to, subject, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", port, timeout=30)
s.starttls(context=ctx)
s.ehlo()
assert s.has_extn("requiretls"), s.esmtp_features
s.login("alice@example.test", password)
msg = f"From: alice@example.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nsecret\r\n"
s.sendmail("alice@example.test", [to], msg, mail_options=["REQUIRETLS"])
s.quit()
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &a.listeners["submission"].port().to_string(),
            to,
            subject,
            PASSWORD,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_requiretls_and_tls_required_no() {
    let ip = "127.0.0.22";
    let port = free_port(ip);
    let pki = Pki::new(&["mx.b.test"]);
    let tlsa = |good: bool| {
        let data = if good {
            pki.spki_sha256.clone()
        } else {
            vec![0xab; 32]
        };
        Rr::Tlsa(3, 1, 1, data)
    };
    let tlsa_name = |host: &str| format!("_{port}._tcp.{host}.");
    let (b_name, c_name) = (tlsa_name("mx.b.test"), tlsa_name("mx.c.test"));
    // b.test and c.test are signed; c.test's TLSA record names another key. d.test is not
    // signed and has no MTA-STS policy.
    let dns = TestDns::start_signed(
        vec![
            ("b.test.", Rr::Mx(10, "mx.b.test.".into())),
            ("mx.b.test.", Rr::A(ip.parse().unwrap())),
            (&b_name, tlsa(true)),
            ("c.test.", Rr::Mx(10, "mx.c.test.".into())),
            ("mx.c.test.", Rr::A(ip.parse().unwrap())),
            (&c_name, tlsa(false)),
            ("d.test.", Rr::Mx(10, "mx.d.test.".into())),
            ("mx.d.test.", Rr::A(ip.parse().unwrap())),
        ],
        &["b.test", "c.test"],
    )
    .unwrap();
    let b = Server::start(&format!(
        "address = \"{ip}:{port}\"\n{}",
        pki.server_config()
    ));
    for (d, u) in [
        ("b.test", "carol@b.test"),
        ("c.test", "dave@c.test"),
        ("d.test", "erin@d.test"),
    ] {
        let (ok, _, err) = b.cli(&["domain", "add", d], "");
        assert!(ok, "{err}");
        let (ok, _, err) = b.cli(&["user", "add", u], PASSWORD);
        assert!(ok, "{err}");
    }
    let a = start_a_with(&dns, port, "");

    // DANE-EE: the key matches b.test's TLSA record.
    submitter(&a)
        .send(message(&["carol@b.test"], "over dane"))
        .await
        .expect("submit");
    wait_inbox(&b, "carol@b.test", 1).await;
    let log = attempts_until(&a, "carol@b.test", "\"outcome\":\"delivered\"");
    assert!(
        log.contains("\"policy\":\"dane\"") && log.contains("\"authenticated\":true"),
        "{log}"
    );

    // c.test's record names another key: not sent, and why.
    submitter(&a)
        .send(message(&["dave@c.test"], "dane mismatch"))
        .await
        .expect("submit");
    attempts_until(
        &a,
        "dave@c.test",
        "no DANE TLSA record matches the server's certificate chain",
    );
    assert!(b.inbox("dave@c.test").await.is_empty());

    // The sender's `TLS-Required: No` (RFC 8689 5) sets DANE aside for that message only.
    let relaxed = lettre::Message::builder()
        .from("alice@example.test".parse().unwrap())
        .to("dave@c.test".parse().unwrap())
        .subject("tls optional")
        .header(TlsRequired)
        .body("not secret".to_string())
        .unwrap();
    submitter(&a).send(relaxed).await.expect("submit");
    let got = wait_inbox(&b, "dave@c.test", 1).await;
    assert!(got[0].contains("Subject: tls optional"), "{}", got[0]);

    // REQUIRETLS over DANE to a server that offers it: delivered with the parameter.
    submit_requiretls(&a, "carol@b.test", "must be tls");
    let got = wait_inbox(&b, "carol@b.test", 2).await;
    assert!(got.iter().any(|m| m.contains("Subject: must be tls")));
    let mail = b.log_search_until(&["--kind", "smtp.mail", "--json"], "\"requiretls\":true");
    assert!(mail.contains("\"requiretls\":true"), "{mail}");

    // REQUIRETLS to a domain that cannot be authenticated (no DNSSEC, no MTA-STS): bounced
    // at once with 5.7.10, never sent in a weaker way.
    submit_requiretls(&a, "erin@d.test", "no secure route");
    let bounce = wait_inbox(&a, "alice@example.test", 1).await;
    assert!(bounce[0].contains("5.7.10"), "{}", bounce[0]);
    assert!(
        !bounce[0].contains("secret"),
        "a report on a REQUIRETLS message carries only the header: {}",
        bounce[0]
    );
    assert!(b.inbox("erin@d.test").await.is_empty());
}

/// `TLS-Required: No` (RFC 8689 5).
#[derive(Clone)]
struct TlsRequired;

impl lettre::message::header::Header for TlsRequired {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("TLS-Required")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(TlsRequired)
    }
    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), "No".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mx_offers_requiretls_only_over_tls() {
    let dns = TestDns::start(vec![]).unwrap();
    let a = start_a_with(&dns, 25, "");
    let mut c = common::Raw::connect(a.smtp).await;
    let ehlo = c.cmd("EHLO client.example").await;
    assert!(!ehlo.contains("REQUIRETLS"), "{ehlo}");
    let r = c.cmd("MAIL FROM:<x@client.example> REQUIRETLS").await;
    assert!(r.starts_with("555 5.7.10"), "{r}");
}
