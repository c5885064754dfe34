//! Interop with a real peer: Postfix (Debian's package, started by the test with its own
//! configuration on loopback) receives the mail mailkeep sends, and sends mail that mailkeep
//! receives; the signatures mailkeep made verify with OpenDKIM's `opendkim-testmsg`.
//!
//! Needs root (Postfix's master), `postfix`, `opendkim-testmsg` and `unshare` (OpenDKIM reads
//! its DNS servers from /etc/resolv.conf only, so it runs in a mount namespace whose
//! resolv.conf names the test's DNS server). `.ci/run` installs them; elsewhere the test says
//! SKIPPED when one is missing, and fails in CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::outbound::{dkim_txt, free_port, message, start_a_with, wait_inbox};
use lettre::AsyncTransport;
use mailkeep_testkit::{Rr, TestDns};

/// Postfix's address in this test.
const PF_IP: &str = "127.0.0.31";
/// Where the DNS server for OpenDKIM listens (port 53: resolv.conf has no port).
const RESOLVER_IP: &str = "127.0.0.153";

/// Whether the tools are here; in CI they must be.
fn have_tools() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let missing: Vec<&str> = [
        "/usr/sbin/postfix",
        "/usr/sbin/opendkim-testmsg",
        "/usr/bin/unshare",
    ]
    .into_iter()
    .filter(|p| !Path::new(p).exists())
    .collect();
    if root && missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run as root with postfix, opendkim-tools and util-linux (.ci/run); missing: {missing:?}, root: {root}"
    );
    eprintln!("SKIPPED: needs root and {missing:?}");
    false
}

/// A Postfix instance in a temporary directory: it receives mail for pf.test into a Maildir,
/// and relays mail for example.test to mailkeep. Stopped when dropped.
struct Postfix {
    dir: tempfile::TempDir,
    port: u16,
}

impl Postfix {
    fn start_on(mailkeep_smtp: std::net::SocketAddr, port: u16) -> Postfix {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // Postfix's daemons run as the postfix user and must reach their directories.
        run("chmod", &["755", &d.display().to_string()]);
        for sub in ["spool", "log", "mail"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::fs::create_dir(d.join("data")).unwrap();
        run(
            "chown",
            &["postfix:postfix", &d.join("data").display().to_string()],
        );
        run(
            "chown",
            &["65534:65534", &d.join("mail").display().to_string()],
        );
        // A certificate for STARTTLS (self-signed: mailkeep's opportunistic TLS takes it).
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.pf.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(d.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();
        let p = d.display();
        let main = format!(
            "compatibility_level = 3.6
queue_directory = {p}/spool
data_directory = {p}/data
syslog_name = postfix-mailkeep-test
maillog_file = {p}/log/postfix.log
maillog_file_prefixes = {p}/log
myhostname = mx.pf.test
mydomain = pf.test
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
biff = no
alias_maps =
alias_database =
relayhost =
relay_domains = example.test
transport_maps = inline:{{ example.test=smtp:[{ip}]:{mport} }}
smtp_dns_support_level = disabled
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_security_level = may
smtpd_tls_cert_file = {p}/cert.pem
smtpd_tls_key_file = {p}/key.pem
smtpd_tls_received_header = yes
smtp_tls_security_level = may
smtp_tls_loglevel = 1
virtual_mailbox_domains = pf.test
virtual_mailbox_base = {p}/mail
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 1
",
            ip = mailkeep_smtp.ip(),
            mport = mailkeep_smtp.port(),
        );
        std::fs::write(d.join("main.cf"), main).unwrap();
        let master = format!(
            "{PF_IP}:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
lmtp unix - - n - - lmtp
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"
        );
        std::fs::write(d.join("master.cf"), master).unwrap();
        let out = Command::new("postfix")
            .args(["-c", &d.display().to_string(), "start"])
            .output()
            .expect("postfix start");
        assert!(
            out.status.success(),
            "postfix start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(d.join("log/postfix.log")).unwrap_or_default()
        );
        let pf = Postfix { dir, port };
        // Wait for smtpd to listen.
        for _ in 0..100 {
            if std::net::TcpStream::connect((PF_IP, port)).is_ok() {
                return pf;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("postfix is not listening:\n{}", pf.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/postfix.log")).unwrap_or_default()
    }

    /// The messages Postfix delivered to the pf.test Maildir, waiting up to 30 s for `n`.
    fn delivered(&self, n: usize) -> Vec<(PathBuf, String)> {
        let new = self.dir.path().join("mail/inbox/new");
        for _ in 0..300 {
            let files: Vec<PathBuf> = std::fs::read_dir(&new)
                .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            if files.len() >= n {
                return files
                    .into_iter()
                    .map(|f| {
                        let text = std::fs::read_to_string(&f).unwrap();
                        (f, text)
                    })
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Postfix delivered fewer than {n} messages:\n{}", self.log());
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .args(["-c", &self.dir.path().display().to_string(), "stop"])
            .output();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let ok = Command::new(cmd).args(args).status().expect(cmd).success();
    assert!(ok, "{cmd} {args:?} failed");
}

/// OpenDKIM's verdict on a message: Ok when every signature verifies, else its complaint.
/// It asks DNS through /etc/resolv.conf, here replaced (in a private mount namespace) by one
/// naming `resolver`.
fn opendkim_verify(dir: &Path, message: &Path, resolver: &str) -> Result<(), String> {
    let conf = dir.join("resolv.conf");
    std::fs::write(
        &conf,
        format!("nameserver {resolver}\noptions attempts:1 timeout:2\n"),
    )
    .unwrap();
    let script = format!(
        "mount --bind '{}' /etc/resolv.conf && exec opendkim-testmsg < '{}'",
        conf.display(),
        message.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("exit {:?}: {said}", out.status.code()))
    }
}

/// The message with every DKIM-Signature field removed except the one containing `keep`.
fn without_signatures_but(message: &str, keep: &str) -> String {
    let (head, body) = message.split_once("\n\n").expect("a header and a body");
    let mut fields: Vec<String> = Vec::new();
    for line in head.split('\n') {
        match fields.last_mut() {
            Some(f) if line.starts_with([' ', '\t']) => {
                f.push('\n');
                f.push_str(line);
            }
            _ => fields.push(line.to_string()),
        }
    }
    let kept: Vec<String> = fields
        .into_iter()
        .filter(|f| {
            !f.to_ascii_lowercase().starts_with("dkim-signature:")
                || f.split_whitespace().collect::<String>().contains(keep)
        })
        .collect();
    assert!(
        kept.iter().any(|f| f.starts_with("DKIM-Signature:")),
        "no {keep} signature"
    );
    format!("{}\n\n{body}", kept.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_receives_what_mailkeep_sends_and_sends_what_mailkeep_receives() {
    if !have_tools() {
        return;
    }
    let dns = TestDns::start(vec![
        ("pf.test.", Rr::Mx(10, "mx.pf.test.".into())),
        ("mx.pf.test.", Rr::A(PF_IP.parse().unwrap())),
    ])
    .unwrap();
    // A's queue sends to Postfix's port; Postfix relays example.test to A's MX listener.
    let pf_port = free_port(PF_IP);
    let a = start_a_with(&dns, pf_port, "");
    let pf = Postfix::start_on(a.smtp, pf_port);

    // mailkeep -> Postfix: over STARTTLS, signed, delivered to the Maildir.
    common::outbound::submitter(&a)
        .send(message(&["pat@pf.test"], "to postfix"))
        .await
        .expect("submit");
    let got = pf.delivered(1);
    let (file, text) = &got[0];
    assert!(text.contains("Subject: to postfix"), "{text}");
    assert!(
        text.contains("(using TLSv1.3") || text.contains("(using TLSv1.2"),
        "Postfix's Received line records TLS: {text}"
    );
    assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
    let log = a.log_search_until(&["--recipient", "pat@pf.test"], "delivered");
    assert!(log.contains("delivered"), "{log}");

    // OpenDKIM verifies both signatures with the keys' records in DNS, and refuses a changed
    // message.
    let records = dkim_txt(&a);
    let resolver = TestDns::start_on(
        format!("{RESOLVER_IP}:53").parse().unwrap(),
        records
            .iter()
            .map(|(n, r)| (n.as_str(), r.clone()))
            .collect(),
        &[],
    )
    .expect("a DNS server on port 53 (root)");
    assert_eq!(
        opendkim_verify(pf.dir.path(), file, RESOLVER_IP),
        Ok(()),
        "opendkim-testmsg verifies what mailkeep signed"
    );
    // Each signature on its own (OpenDKIM's verdict is for the message as a whole).
    for keep in ["a=ed25519-sha256", "a=rsa-sha256"] {
        let only = pf.dir.path().join("one-signature.eml");
        std::fs::write(&only, without_signatures_but(text, keep)).unwrap();
        assert_eq!(
            opendkim_verify(pf.dir.path(), &only, RESOLVER_IP),
            Ok(()),
            "opendkim-testmsg verifies the {keep} signature alone"
        );
    }
    let tampered = pf.dir.path().join("tampered.eml");
    std::fs::write(
        &tampered,
        text.replacen("Subject: to postfix", "Subject: to someone else", 1),
    )
    .unwrap();
    assert!(
        opendkim_verify(pf.dir.path(), &tampered, RESOLVER_IP).is_err(),
        "a changed Subject fails"
    );
    drop(resolver);

    // Postfix -> mailkeep: a message handed to Postfix for example.test arrives in bob's
    // INBOX over STARTTLS.
    // (Raw::connect reads the greeting.)
    let mut c = common::Raw::connect(format!("{PF_IP}:{}", pf.port).parse().unwrap()).await;
    for (line, want) in [
        ("EHLO client.pf.test", "250"),
        ("MAIL FROM:<pat@pf.test>", "250"),
        ("RCPT TO:<bob@example.test>", "250"),
        ("DATA", "354"),
    ] {
        let r = c.cmd(line).await;
        assert!(r.starts_with(want), "{line}: {r}");
    }
    c.send(b"From: pat@pf.test\r\nTo: bob@example.test\r\nSubject: from postfix\r\nMessage-ID: <pf-1@pf.test>\r\n\r\nrelayed by Postfix\r\n.\r\n")
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT").await;
    let inbox = wait_inbox(&a, "bob@example.test", 1).await;
    assert!(inbox[0].contains("Subject: from postfix"), "{}", inbox[0]);
    assert!(
        inbox[0].contains("from mx.pf.test") && inbox[0].contains("with ESMTPS"),
        "mailkeep's Received line: Postfix's EHLO name, over TLS: {}",
        inbox[0]
    );
    assert!(
        pf.log().contains("status=sent"),
        "Postfix logged the relay as sent: {}",
        pf.log()
    );
}
