//! Test kit: boots the real `mailkeep` binary on 127.0.0.1:0 with a temporary data directory,
//! and gives raw SMTP access for the tests that attack the protocol.
#![allow(dead_code)]

pub mod outbound;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mailkeep_store::{MessageMeta, SharedStore};
use mailkeep_store_sqlite::SqliteStore;
use mailkeep_types::MailboxRole;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_mailkeep");
pub const DOMAIN: &str = "example.test";
pub const PASSWORD: &str = "correct horse battery";

pub struct Server {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub smtp: SocketAddr,
    /// Every listener by protocol name (`imap`, `imaps`...).
    pub listeners: std::collections::HashMap<String, SocketAddr>,
    pub stderr_log: PathBuf,
}

/// Runs `mailkeep ARGS --config CONFIG`, with `stdin` piped in; returns (status ok, stdout, stderr).
pub fn cli(config: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mailkeep");
    if let Some(mut i) = child.stdin.take() {
        // A command that fails before reading its input closes the pipe: that is its answer.
        let _ = i.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("wait for mailkeep");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mailkeep init` into a new temp dir, with settings tests want (no reverse DNS).
pub fn init_dir(extra_config: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args([
            "init",
            "--hostname",
            "mail.example.test",
            "--domain",
            DOMAIN,
            "--smtp-listen",
            "127.0.0.1:0",
            "--submission-listen",
            "127.0.0.1:0",
            "--submissions-listen",
            "127.0.0.1:0",
            "--imap-listen",
            "127.0.0.1:0",
            "--imaps-listen",
            "127.0.0.1:0",
            "--pop3-listen",
            "127.0.0.1:0",
            "--pop3s-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
            "--managesieve-listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path())
        .output()
        .expect("run init");
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.path().join("mailkeep.toml");
    let mut text = std::fs::read_to_string(&config).expect("config written");
    text = text.replace("reverse_dns = true", "reverse_dns = false");
    // Never the system's resolvers: a DNS server with no records (every name NXDOMAIN), so
    // sender authentication runs and ends at once; tests that publish records set servers.
    text = text.replace(
        "# servers = [\"127.0.0.1:53\"] # default: the system's resolvers",
        &format!("servers = [\"{}\"]", empty_dns()),
    );
    text = apply_overrides(&text, extra_config);
    std::fs::write(&config, text).expect("rewrite config");
    (dir, config)
}

/// Replaces `key = ...` lines (first match) or appends lines that match no key. A key
/// written `section.key` is looked for in `[section]` only (keys such as `enabled` are in
/// several sections).
fn apply_overrides(text: &str, extra: &str) -> String {
    let mut text = text.to_string();
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        let key = line.split('=').next().unwrap_or("").trim();
        if let Some((section, name)) = key.split_once('.') {
            let value = line.split_once('=').map(|x| x.1).unwrap_or("").trim();
            text = set_in_section(&text, section, name, value);
            continue;
        }
        let key_of = |l: &str| l.split('=').next().map(|k| k.trim().to_string());
        // A live `key = ...` line first, else the commented example `# key = ...`.
        let found = text
            .lines()
            .find(|l| !l.starts_with('#') && key_of(l).as_deref() == Some(key))
            .or_else(|| {
                text.lines()
                    .find(|l| l.strip_prefix("# ").and_then(key_of).as_deref() == Some(key))
            })
            .map(String::from);
        match found {
            Some(old) => text = text.replacen(&old, line, 1),
            None => {
                text.push('\n');
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

/// Sets `name = value` in `[section]`: its live line, else its commented example, else a
/// new line at the section's start. Panics when there is no such section.
fn set_in_section(text: &str, section: &str, name: &str, value: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == format!("[{section}]"))
        .unwrap_or_else(|| panic!("no [{section}] in the config"));
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with('['))
        .map(|i| start + 1 + i)
        .unwrap_or(lines.len());
    let key_of = |l: &str| l.split('=').next().map(|k| k.trim().to_string());
    let at = (start + 1..end)
        .find(|i| !lines[*i].starts_with('#') && key_of(lines[*i]).as_deref() == Some(name))
        .or_else(|| {
            (start + 1..end)
                .find(|i| lines[*i].strip_prefix("# ").and_then(key_of).as_deref() == Some(name))
        });
    let new = format!("{name} = {value}");
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match at {
        Some(i) => out[i] = new,
        None => out.insert(start + 1, new),
    }
    out.join("\n") + "\n"
}

/// One DNS server without records for the whole test process.
fn empty_dns() -> SocketAddr {
    static DNS: std::sync::OnceLock<mailkeep_testkit::TestDns> = std::sync::OnceLock::new();
    DNS.get_or_init(|| mailkeep_testkit::TestDns::start(vec![]).expect("DNS server"))
        .addr()
}

impl Server {
    /// A fresh server with users alice@ and bob@ and the config overrides given
    /// (`key = value` lines replacing those in the generated config).
    pub fn start(extra_config: &str) -> Server {
        let (dir, config) = init_dir(extra_config);
        for u in ["alice", "bob"] {
            let (ok, _, err) = cli(
                &config,
                &["user", "add", &format!("{u}@{DOMAIN}")],
                PASSWORD,
            );
            assert!(ok, "user add: {err}");
        }
        Server::boot(dir, config)
    }

    pub fn boot(dir: tempfile::TempDir, config: PathBuf) -> Server {
        let stderr_log = dir.path().join(format!("server-{}.log", rand_suffix()));
        let (child, listeners) = spawn(&config, &stderr_log);
        Server {
            dir,
            config,
            child: Some(child),
            smtp: listeners["smtp"],
            listeners,
            stderr_log,
        }
    }

    /// Starts the server again on the same data (after a crash or stop); a server still
    /// running is killed first, so no process outlives the test.
    pub fn restart(&mut self) {
        self.kill9();
        let (child, listeners) = spawn(&self.config, &self.stderr_log);
        let smtp = listeners["smtp"];
        self.listeners = listeners;
        self.child = Some(child);
        self.smtp = smtp;
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status()
                .expect("kill");
            assert!(ok.success());
        }
    }

    /// Waits for the process to exit; returns whether it exited successfully.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return status.success();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not exit within {timeout:?}");
    }

    pub fn cli(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        cli(&self.config, args, stdin)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Opens the store (read side) to check what was delivered.
    pub fn store(&self) -> SharedStore {
        Arc::new(SqliteStore::open(&self.dir.path().join("store")).expect("open store"))
    }

    /// The messages in a user's INBOX.
    pub async fn inbox(&self, user: &str) -> Vec<MessageMeta> {
        let store = self.store();
        let u = store
            .user_get(user)
            .await
            .expect("user_get")
            .expect("user exists");
        let boxes = store.mailboxes(u.id).await.expect("mailboxes");
        let inbox = boxes
            .iter()
            .find(|m| m.role == Some(MailboxRole::Inbox))
            .expect("inbox");
        store.messages(inbox.id).await.expect("messages")
    }

    /// The full texts of the messages in one of a user's mailboxes (by role).
    pub async fn mailbox_texts(&self, user: &str, role: MailboxRole) -> Vec<String> {
        let store = self.store();
        let u = store.user_get(user).await.unwrap().unwrap();
        let boxes = store.mailboxes(u.id).await.unwrap();
        let mb = boxes.iter().find(|m| m.role == Some(role)).unwrap();
        let mut out = Vec::new();
        for m in store.messages(mb.id).await.unwrap() {
            let c = store
                .message_content(m.mailbox, m.uid)
                .await
                .unwrap()
                .unwrap();
            out.push(String::from_utf8_lossy(&c).into_owned());
        }
        out
    }

    /// Sends `data` from someone@remote.test to alice over the MX port; the final reply.
    pub async fn send_to_alice(&self, data: &str) -> String {
        self.send_mail("someone@remote.test", &["alice@example.test"], data)
            .await
    }

    /// Sends `data` from `from` to every address of `to` over the MX port (every RCPT must
    /// be taken); the final reply.
    pub async fn send_mail(&self, from: &str, to: &[&str], data: &str) -> String {
        let mut c = Raw::connect(self.smtp).await;
        c.envelope(from, to).await;
        assert_eq!(code(&c.cmd("DATA").await), "354");
        c.send(data.as_bytes()).await;
        c.send(b".\r\n").await;
        let r = c.reply().await;
        c.cmd("QUIT").await;
        r
    }

    /// The full texts of a user's INBOX messages.
    pub async fn inbox_texts(&self, user: &str) -> Vec<String> {
        let store = self.store();
        let mut out = Vec::new();
        for m in self.inbox(user).await {
            let c = store
                .message_content(m.mailbox, m.uid)
                .await
                .expect("content")
                .expect("present");
            out.push(String::from_utf8_lossy(&c).into_owned());
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn spawn(
    config: &Path,
    stderr_log: &Path,
) -> (Child, std::collections::HashMap<String, SocketAddr>) {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr_log)
        .expect("log file");
    let mut child = Command::new(BIN)
        .args(["serve", "--grace-seconds", "20", "--config"])
        .arg(config)
        .env("MAILKEEP_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("spawn mailkeep serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut found = std::collections::HashMap::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some((proto, addr)) = line
                .strip_prefix("mailkeep: ")
                .and_then(|r| r.split_once(" listening on "))
            {
                if let Ok(a) = addr.trim().parse::<SocketAddr>() {
                    found.insert(proto.to_string(), a);
                }
            }
            if line == "mailkeep: ready" {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(std::mem::take(&mut found));
                }
            }
        }
    });
    let found = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "server did not report its ports; log: {}",
                std::fs::read_to_string(stderr_log).unwrap_or_default()
            )
        });
    assert!(found.contains_key("smtp"), "no smtp listener: {found:?}");
    (child, found)
}

/// A raw SMTP client for protocol and attack tests.
pub struct Raw {
    pub r: TokioBufReader<tokio::net::tcp::OwnedReadHalf>,
    pub w: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.expect("connect");
        let (r, w) = s.into_split();
        let mut raw = Raw {
            r: TokioBufReader::new(r),
            w,
        };
        let greeting = raw.reply().await;
        assert!(greeting.starts_with("220 "), "greeting: {greeting}");
        raw
    }

    /// Connects from a given loopback address (to be another client IP for SPF).
    pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> Raw {
        let (raw, greeting) = Raw::greeted_from(local, addr).await;
        assert!(greeting.starts_with("220 "), "greeting: {greeting}");
        raw
    }

    /// Connects from a given loopback address; returns the client and whatever greeting
    /// came (a refusal too).
    pub async fn greeted_from(local: std::net::IpAddr, addr: SocketAddr) -> (Raw, String) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(local, 0)).expect("bind");
        let s = socket.connect(addr).await.expect("connect");
        let (r, w) = s.into_split();
        let mut raw = Raw {
            r: TokioBufReader::new(r),
            w,
        };
        let greeting = raw.reply().await;
        (raw, greeting)
    }

    pub async fn send(&mut self, data: &[u8]) {
        self.w.write_all(data).await.expect("send");
    }

    /// Reads one (possibly multi-line) reply; returns it with lines joined by '\n'.
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), self.r.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap_or(0); // a reset counts as closed
            if n == 0 {
                all.push_str("<closed>");
                return all;
            }
            all.push_str(line.trim_end());
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
            all.push('\n');
        }
    }

    /// Sends a command line and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// True when the server closed the connection.
    pub async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut line)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// EHLO, MAIL, RCPTs (each must be accepted) and returns after the last RCPT.
    pub async fn envelope(&mut self, from: &str, to: &[&str]) {
        let r = self.cmd("EHLO client.example").await;
        assert!(r.starts_with("250"), "EHLO: {r}");
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert!(r.starts_with("250"), "MAIL: {r}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>")).await;
            assert!(r.starts_with("250"), "RCPT {t}: {r}");
        }
    }
}

pub fn code(reply: &str) -> &str {
    reply.get(..3).unwrap_or(reply)
}

impl Server {
    /// `log search ARGS`, repeated for up to 10 s until the output contains `want`: sessions
    /// queue their log events without waiting, so they land a moment after the reply.
    pub fn log_search_until(&self, args: &[&str], want: &str) -> String {
        let mut full = vec!["log", "search"];
        full.extend_from_slice(args);
        let start = std::time::Instant::now();
        loop {
            let (ok, out, err) = self.cli(&full, "");
            assert!(ok, "log search failed: {err}");
            if out.contains(want) || start.elapsed() > Duration::from_secs(10) {
                return out;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A TLS client handshake over `stream` that accepts any certificate (tests use the
/// self-signed one `init` makes).
pub async fn tls_connect<S>(stream: S) -> tokio_rustls::client::TlsStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The outbound queue's opportunistic verifier: any certificate, signatures checked.
    let config = mailkeep_queue::client::Opportunistic::config().expect("TLS config");
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = rustls::pki_types::ServerName::try_from("mail.example.test").expect("name");
    connector
        .connect(name, stream)
        .await
        .expect("TLS handshake")
}

/// dkimpy (Python) with the Ed25519 key of `seed` (64 hex digits): `Dkimpy::public` is the
/// key's DNS `p=` value, `sign` prepends a DKIM-Signature for `domain`/`selector` over From,
/// To, Subject, Date and Message-ID (CRLF line ends).
#[allow(dead_code)]
pub struct Dkimpy<'a> {
    pub seed: &'a str,
    pub domain: &'a str,
    pub selector: &'a str,
}

#[allow(dead_code)]
impl Dkimpy<'_> {
    fn run(&self, mode: &str, input: &str) -> String {
        let script = r#"
import dkim, nacl.signing, base64, sys
seed, mode, domain, selector = sys.argv[1:5]
k = nacl.signing.SigningKey(bytes.fromhex(seed))
if mode == "pub":
    sys.stdout.write(base64.b64encode(bytes(k.verify_key)).decode())
else:
    msg = sys.stdin.buffer.read()
    sig = dkim.sign(msg, selector.encode(), domain.encode(), base64.b64encode(bytes(k)),
                    signature_algorithm=b"ed25519-sha256",
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    sys.stdout.buffer.write(sig.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + msg)
"#;
        let mut child = Command::new("python3")
            .args(["-c", script, self.seed, mode, self.domain, self.selector])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("dkimpy");
        assert!(out.status.success(), "dkimpy {mode} failed");
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    /// The public key, base64 (the `p=` of the DKIM record).
    pub fn public(&self) -> String {
        self.run("pub", "")
    }

    /// `message` with a signature on top.
    pub fn sign(&self, message: &str) -> String {
        self.run("sign", message)
    }
}
