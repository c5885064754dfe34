//! IMAP against the real server: Python's imaplib and IMAPClient, IDLE fed by SMTP delivery,
//! several sessions on one mailbox, and the attacks the issue names.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Raw, Server, DOMAIN, PASSWORD};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

fn have_python_module(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Interop peers are installed by .ci/run; locally a missing one is skipped, loudly.
fn require_python(module: &str) -> bool {
    if have_python_module(module) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "python3 with {module} must be installed in CI (see .ci/run)"
    );
    eprintln!("SKIPPED: python3 module {module} is not installed");
    false
}

fn script(name: &str) -> String {
    format!("{}/../../tests/python/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run_python(args: &[String]) {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{stdout}");
}

fn fast_failures() -> &'static str {
    "failure_delay = \"50ms\"\nmax_failures = 3"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_imaplib() {
    if !require_python("imaplib") {
        return;
    }
    let server = Server::start(fast_failures());
    let port = |p: &str| server.listeners[p].port().to_string();
    run_python(&[
        script("imap_imaplib.py"),
        "127.0.0.1".into(),
        port("imap"),
        port("imaps"),
        port("smtp"),
        format!("alice@{DOMAIN}"),
        PASSWORD.into(),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_imapclient() {
    if !require_python("imapclient") {
        return;
    }
    let server = Server::start(fast_failures());
    let port = |p: &str| server.listeners[p].port().to_string();
    run_python(&[
        script("imap_imapclient.py"),
        "127.0.0.1".into(),
        port("imap"),
        port("smtp"),
        format!("alice@{DOMAIN}"),
        PASSWORD.into(),
        format!("bob@{DOMAIN}"),
    ]);
}

/// Several clients change one mailbox while SMTP delivers to it: all end with the same view
/// and no UID ever names two messages (tests/python/imap_concurrency.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_agree() {
    if !require_python("imaplib") {
        return;
    }
    let server = Server::start("");
    let port = |p: &str| server.listeners[p].port().to_string();
    run_python(&[
        script("imap_concurrency.py"),
        "127.0.0.1".into(),
        port("imap"),
        port("smtp"),
        format!("alice@{DOMAIN}"),
        PASSWORD.into(),
    ]);
}

/// The same on a mailbox big enough (1,100 messages) that the server keeps its message list
/// between SELECTs: views built from the kept list while others change the mailbox must agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_agree_on_a_big_mailbox() {
    if !require_python("imaplib") {
        return;
    }
    // The preload sends 1,100 messages down one SMTP connection.
    let server = Server::start("max_messages_per_connection = 0");
    let port = |p: &str| server.listeners[p].port().to_string();
    run_python(&[
        script("imap_concurrency.py"),
        "127.0.0.1".into(),
        port("imap"),
        port("smtp"),
        format!("alice@{DOMAIN}"),
        PASSWORD.into(),
        "1100".into(),
    ]);
}

/// A minimal line-level IMAP client for protocol and attack tests.
struct Imap<S> {
    s: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Imap<S> {
    async fn line(&mut self) -> String {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.s.read_line(&mut l))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(n > 0, "connection closed");
        l
    }

    async fn send(&mut self, data: &[u8]) {
        self.s.get_mut().write_all(data).await.expect("write");
        self.s.get_mut().flush().await.expect("flush");
    }

    /// Sends `tag line` and returns every line up to and including the tagged reply.
    async fn cmd(&mut self, tag: &str, line: &str) -> Vec<String> {
        self.send(format!("{tag} {line}\r\n").as_bytes()).await;
        self.until_tagged(tag).await
    }

    async fn until_tagged(&mut self, tag: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self.line().await;
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                return out;
            }
        }
    }

    /// Like [`Imap::until_tagged`], for replies that are not UTF-8: the raw bytes.
    async fn raw_until_tagged(&mut self, tag: &str) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let start = out.len();
            let n =
                tokio::time::timeout(Duration::from_secs(10), self.s.read_until(b'\n', &mut out))
                    .await
                    .expect("reply in time")
                    .expect("read");
            assert!(n > 0, "connection closed");
            if out[start..].starts_with(format!("{tag} ").as_bytes()) {
                return out;
            }
        }
    }

    async fn closed(&mut self) -> bool {
        let mut l = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.s.read_line(&mut l)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

async fn connect(addr: SocketAddr) -> Imap<tokio::net::TcpStream> {
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut c = Imap {
        s: BufReader::new(s),
    };
    let greeting = c.line().await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    c
}

async fn login(addr: SocketAddr, user: &str) -> Imap<tokio::net::TcpStream> {
    let mut c = connect(addr).await;
    let r = c
        .cmd("L", &format!("LOGIN {user}@{DOMAIN} \"{PASSWORD}\""))
        .await;
    assert!(r.last().unwrap().starts_with("L OK"), "{r:?}");
    c
}

fn last(r: &[String]) -> &str {
    r.last().map(String::as_str).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reports_smtp_delivery() {
    let server = Server::start("");
    let imap = server.listeners["imap"];
    let mut c = login(imap, "alice").await;
    assert!(last(&c.cmd("S", "SELECT INBOX").await).starts_with("S OK"));
    c.send(b"I IDLE\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    let mut smtp = Raw::connect(server.smtp).await;
    smtp.cmd("EHLO client.example").await;
    smtp.envelope("x@example.org", &["alice@example.test"])
        .await;
    smtp.send(b"DATA\r\n").await;
    smtp.reply().await;
    smtp.send(b"Subject: idle\r\n\r\nwake up\r\n.\r\n").await;
    let reply = smtp.reply().await;
    // Measured from the 250: the message is durable, then IMAP learns of it.
    let t0 = Instant::now();
    assert!(reply.starts_with("250"), "{reply}");
    let l = c.line().await;
    let waited = t0.elapsed();
    assert_eq!(l, "* 1 EXISTS\r\n");
    eprintln!("IDLE: EXISTS {} us after the SMTP 250", waited.as_micros());
    c.send(b"DONE\r\n").await;
    assert!(c
        .until_tagged("I")
        .await
        .last()
        .unwrap()
        .starts_with("I OK"));
    // Another session's flag change and expunge arrive in IDLE too.
    let mut other = login(imap, "alice").await;
    other.cmd("S", "SELECT INBOX").await;
    c.send(b"J IDLE\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    other.cmd("T", "STORE 1 +FLAGS (\\Deleted)").await;
    let l = c.line().await;
    assert!(l.starts_with("* 1 FETCH (UID 1 FLAGS (\\Deleted))"), "{l}");
    other.cmd("U", "EXPUNGE").await;
    assert_eq!(c.line().await, "* 1 EXPUNGE\r\n");
    c.send(b"DONE\r\n").await;
    assert!(c
        .until_tagged("J")
        .await
        .last()
        .unwrap()
        .starts_with("J OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_literal_size_dos_is_refused_before_continuation() {
    let server = Server::start("max_literal = \"1M\"");
    let imap = server.listeners["imap"];
    // Before login, a literal bigger than any credential is refused.
    let mut c = connect(imap).await;
    c.send(b"a LOGIN {100000}\r\n").await;
    let l = c.line().await;
    assert!(
        l.starts_with("a NO [TOOBIG]"),
        "no continuation for a huge login: {l}"
    );
    // The session goes on.
    assert!(last(&c.cmd("b", "NOOP").await).starts_with("b OK"));
    // After login, APPEND beyond APPENDLIMIT is refused before a byte is sent.
    let mut c = login(imap, "alice").await;
    c.send(b"a APPEND INBOX {4294967295}\r\n").await;
    let l = c.line().await;
    assert!(l.starts_with("a NO [TOOBIG]"), "{l}");
    // A line longer than the limit is BAD, and the session goes on.
    let long = format!("d NOOP {}\r\n", "x".repeat(100_000));
    c.send(long.as_bytes()).await;
    assert!(c.line().await.starts_with("d BAD"));
    assert!(last(&c.cmd("e", "NOOP").await).starts_with("e OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_nonsync_literal_of_4_gib_is_answered_and_the_connection_closed() {
    let server = Server::start("max_literal = \"1M\"");
    let imap = server.listeners["imap"];
    // RFC 7888 4: the bytes are already on their way; the server answers and closes instead
    // of reading 4 GiB.
    let mut c = login(imap, "alice").await;
    // (Only a few bytes follow: a close with unread input would reset the connection and
    // could drop the answer before the client reads it.)
    c.send(b"b APPEND INBOX {4294967295+}\r\nxxxxxxxx").await;
    let r = c.until_tagged("b").await;
    assert!(r.iter().any(|l| l.starts_with("* BYE")), "{r:?}");
    assert!(last(&r).starts_with("b BAD [TOOBIG]"), "{r:?}");
    assert!(
        c.closed().await,
        "the connection is closed after the refusal"
    );
    // The same before login, with a literal just over the pre-login limit.
    let mut c = connect(imap).await;
    c.send(b"a LOGIN {100000+}\r\n").await;
    let r = c.until_tagged("a").await;
    assert!(last(&r).starts_with("a BAD [TOOBIG]"), "{r:?}");
    assert!(c.closed().await);
    // Nothing was stored.
    let mut c = login(imap, "alice").await;
    let r = c.cmd("c", "STATUS INBOX (MESSAGES)").await;
    assert!(r[0].contains("MESSAGES 0"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_nul_is_kept_exact_and_sent_as_0x80_outside_binary() {
    // Decision (docs/architecture.md): SMTP accepts NUL (BINARYMIME can carry it), the store
    // keeps the exact bytes, and IMAP sends NUL only in a BINARY literal8 (RFC 3501 4.3).
    let server = Server::start("");
    let mut c = Raw::connect(server.smtp).await;
    c.envelope("sender@remote.test", &[&format!("alice@{DOMAIN}")])
        .await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: nul\r\n\r\na\x00b\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("250"), "{r}");
    let mut i = login(server.listeners["imap"], "alice").await;
    i.cmd("s", "SELECT INBOX").await;
    i.send(b"f FETCH 1 (BODY.PEEK[TEXT])\r\n").await;
    let r = i.raw_until_tagged("f").await;
    assert!(
        r.windows(5).any(|w| w == b"a\x80b\r\n") && !r.contains(&0),
        "{r:?}"
    );
    i.send(b"g FETCH 1 (BINARY.PEEK[1])\r\n").await;
    let r = i.raw_until_tagged("g").await;
    assert!(r.windows(10).any(|w| w == b"~{5}\r\na\x00b\r"), "{r:?}");
    assert!(last(&i.cmd("h", "LOGOUT").await).starts_with("h OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_starttls_command_injection_is_discarded() {
    let server = Server::start("");
    let mut c = connect(server.listeners["imap"]).await;
    // A LOGIN pipelined behind STARTTLS in plaintext must not run inside TLS.
    c.send(format!("a STARTTLS\r\nb LOGIN alice@{DOMAIN} \"{PASSWORD}\"\r\n").as_bytes())
        .await;
    let l = c.line().await;
    assert!(l.starts_with("a OK"), "{l}");
    let stream = c.s.into_inner();
    let tls = common::tls_connect(stream).await;
    let mut t = Imap {
        s: BufReader::new(tls),
    };
    let r = t.cmd("c", "CAPABILITY").await;
    assert!(!r[0].contains("STARTTLS"), "STARTTLS offered twice: {r:?}");
    assert!(
        r.iter().all(|l| !l.starts_with("b ")),
        "the injected LOGIN was answered: {r:?}"
    );
    let r = t.cmd("d", "SELECT INBOX").await;
    assert!(last(&r).starts_with("d BAD"), "still not logged in: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_need_tls_when_configured_and_failures_slow_down() {
    let server =
        Server::start("plaintext = \"never\"\nfailure_delay = \"300ms\"\nmax_failures = 2");
    let mut c = connect(server.listeners["imap"]).await;
    let r = c.cmd("a", "CAPABILITY").await;
    assert!(
        r[0].contains("LOGINDISABLED") && !r[0].contains("AUTH=PLAIN"),
        "{r:?}"
    );
    let r = c
        .cmd("b", &format!("LOGIN alice@{DOMAIN} \"{PASSWORD}\""))
        .await;
    assert!(last(&r).starts_with("b NO [PRIVACYREQUIRED]"), "{r:?}");
    // Over TLS: a wrong password waits, and the second failure closes the session.
    c.cmd("c", "STARTTLS").await;
    let mut t = Imap {
        s: BufReader::new(common::tls_connect(c.s.into_inner()).await),
    };
    let t0 = Instant::now();
    let r = t.cmd("d", &format!("LOGIN alice@{DOMAIN} wrong")).await;
    assert!(last(&r).starts_with("d NO [AUTHENTICATIONFAILED]"), "{r:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "a failed login answers at once"
    );
    let r = t.cmd("e", &format!("LOGIN nobody@{DOMAIN} wrong")).await;
    assert!(last(&r).starts_with("e NO"), "{r:?}");
    assert!(t.closed().await, "closed after max_failures");
    // Failed logins are in the delivery log.
    let out = server.log_search_until(&["--ip", "127.0.0.1", "--json"], "imap.login");
    assert!(out.contains("rejected"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_bad_and_the_session_goes_on() {
    let server = Server::start("");
    let mut c = login(server.listeners["imap"], "alice").await;
    for (tag, line, want) in [
        ("a", "FROBNICATE", "a BAD"),
        ("b", "FETCH 1 (FLAGS)", "b BAD"),
        ("c", "SELECT", "c BAD"),
        ("d", "SELECT \"unterminated", "d BAD"),
        ("e", "SEARCH CHARSET KOI8-R ALL", "e BAD"),
        ("f", "SELECT Nope", "f NO [NONEXISTENT]"),
        ("g", "LIST \"\" \"\"", "g OK"),
        ("h", "CREATE \"a//b\"", "h NO"),
        ("i", "SELECT INBOX", "i OK"),
        ("j", "FETCH 5 (FLAGS)", "j BAD"),
        ("k", "SEARCH CHARSET KOI8-R ALL", "k NO [BADCHARSET"),
        ("l", "STORE 1:* +FLAGS (\\Bogus)", "l BAD"),
        ("m", "NOOP", "m OK"),
    ] {
        let r = c.cmd(tag, line).await;
        assert!(last(&r).starts_with(want), "{line}: {r:?}");
    }
    // Control characters in a client's tag or text cannot inject a response line.
    c.send(b"n\x01x NOOP\r\n").await;
    let l = c.line().await;
    assert!(l.starts_with("* BAD") || l.starts_with("n"), "{l:?}");
    assert!(last(&c.cmd("o", "NOOP").await).starts_with("o OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uids_and_uidvalidity_survive_a_restart() {
    let mut server = Server::start("");
    let mut c = login(server.listeners["imap"], "alice").await;
    for i in 0..3 {
        let msg = format!("Subject: {i}\r\n\r\nbody\r\n");
        c.send(format!("a{i} APPEND INBOX {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes())
            .await;
        let r = c.until_tagged(&format!("a{i}")).await;
        assert!(last(&r).contains("APPENDUID"), "{r:?}");
    }
    let before = c.cmd("s", "SELECT INBOX").await;
    c.cmd("e", "STORE 2 +FLAGS (\\Deleted)").await;
    c.cmd("x", "EXPUNGE").await;
    drop(c);
    server.restart();
    let mut c = login(server.listeners["imap"], "alice").await;
    let after = c.cmd("s", "SELECT INBOX").await;
    let uidvalidity = |r: &[String]| {
        r.iter()
            .find(|l| l.contains("UIDVALIDITY"))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(uidvalidity(&before), uidvalidity(&after));
    assert!(after.iter().any(|l| l.contains("[UIDNEXT 4]")), "{after:?}");
    let r = c.cmd("f", "UID FETCH 1:* (UID)").await;
    assert!(r[0].contains("UID 1") && r[1].contains("UID 3"), "{r:?}");
    // A new message never reuses the expunged UID 2.
    let msg = "Subject: new\r\n\r\nbody\r\n";
    c.send(format!("n APPEND INBOX {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes())
        .await;
    let r = c.until_tagged("n").await;
    assert!(
        last(&r).contains("APPENDUID") && last(&r).contains(" 4]"),
        "{r:?}"
    );
}

/// The committed fuzz seeds of imap_session and pop3_session, replayed against the real
/// server the way the fuzz targets build their input; the server must answer each with its
/// greeting and stay up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_fuzz_seeds_replay() {
    use tokio::io::AsyncReadExt;
    // Seeds log in wrongly again and again: no bans here.
    let server = Server::start("failure_delay = 0\nmax_failures = 100\nafter = 0");
    for (target, proto, login, greeting) in [
        (
            "imap_session",
            "imap",
            format!("a LOGIN alice@{DOMAIN} \"{PASSWORD}\"\r\nb SELECT INBOX\r\n"),
            "* OK",
        ),
        (
            "pop3_session",
            "pop3",
            format!("USER alice@{DOMAIN}\r\nPASS {PASSWORD}\r\n"),
            "+OK",
        ),
    ] {
        let dir = format!("{}/../../fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("seed corpus") {
            let seed = std::fs::read(entry.expect("entry").path()).expect("seed");
            let mut data = Vec::new();
            if seed.first().is_some_and(|b| b & 1 == 1) {
                data.extend_from_slice(login.as_bytes());
            }
            data.extend_from_slice(seed.get(1..).unwrap_or_default());
            let mut s = tokio::net::TcpStream::connect(server.listeners[proto])
                .await
                .expect("connect");
            s.write_all(&data).await.expect("write");
            s.shutdown().await.expect("shutdown");
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
            assert!(
                out.starts_with(greeting.as_bytes()),
                "{target}: {}",
                String::from_utf8_lossy(&out)
            );
            n += 1;
        }
        assert!(n >= 2, "{target}: seeds found: {n}");
    }
    // Still serving.
    let mut c = login(server.listeners["imap"], "alice").await;
    assert!(last(&c.cmd("z", "NOOP").await).starts_with("z OK"));
}

/// COMPRESS=DEFLATE (RFC 4978): after the uncompressed OK both directions are raw DEFLATE,
/// including a command the client pipelined right behind COMPRESS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_deflate() {
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    use tokio::io::AsyncReadExt;
    let server = Server::start("");
    let mut c = login(server.listeners["imap"], "alice").await;
    let caps = c.cmd("a", "CAPABILITY").await;
    assert!(caps[0].contains("COMPRESS=DEFLATE"), "{caps:?}");
    let mut tx = Compress::new(Compression::default(), false);
    let mut rx = Decompress::new(false);
    let deflate = |tx: &mut Compress, data: &[u8]| {
        let mut out = Vec::with_capacity(data.len() + 1024);
        tx.compress_vec(data, &mut out, FlushCompress::Sync)
            .unwrap();
        out
    };
    // The NOOP goes out compressed in the same write as the COMPRESS command.
    let mut first = b"z COMPRESS DEFLATE\r\n".to_vec();
    first.extend(deflate(&mut tx, b"y NOOP\r\nx SELECT INBOX\r\n"));
    c.send(&first).await;
    assert!(c.line().await.starts_with("z OK"));
    let mut stream = c.s;
    let mut plain = Vec::new();
    let mut buf = vec![0u8; 8192];
    while !String::from_utf8_lossy(&plain).contains("x OK") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("compressed reply in time")
            .expect("read");
        assert!(n > 0, "closed");
        let mut out = Vec::with_capacity(64 * 1024);
        rx.decompress_vec(&buf[..n], &mut out, FlushDecompress::None)
            .expect("valid DEFLATE from the server");
        plain.extend(out);
    }
    let text = String::from_utf8_lossy(&plain);
    assert!(text.contains("y OK") && text.contains("EXISTS"), "{text}");
    // A second COMPRESS is refused (compressed, of course).
    stream
        .get_mut()
        .write_all(&deflate(&mut tx, b"w COMPRESS DEFLATE\r\n"))
        .await
        .unwrap();
    plain.clear();
    while !String::from_utf8_lossy(&plain).contains("w NO") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed");
        let mut out = Vec::with_capacity(64 * 1024);
        rx.decompress_vec(&buf[..n], &mut out, FlushDecompress::None)
            .unwrap();
        plain.extend(out);
    }
    assert!(String::from_utf8_lossy(&plain).contains("COMPRESSIONACTIVE"));
}

/// NOTIFY (RFC 5465): changes reach the client between commands, as EXISTS for the selected
/// mailbox, STATUS for other watched ones and LIST for new mailboxes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_reports_between_commands() {
    let server = Server::start("");
    let imap = server.listeners["imap"];
    let mut c = login(imap, "alice").await;
    assert!(c.cmd("a", "CAPABILITY").await[0].contains(" NOTIFY"));
    c.cmd("s", "SELECT INBOX").await;
    let r = c
        .cmd("n", "NOTIFY SET STATUS (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)]) MessageExpunge FlagChange)) (personal (MessageNew MessageExpunge MailboxName))")
        .await;
    assert!(last(&r).starts_with("n OK"), "{r:?}");
    assert!(
        r.iter()
            .any(|l| l.starts_with("* STATUS Archive (MESSAGES 0 UIDNEXT 1 UIDVALIDITY")),
        "STATUS at once: {r:?}"
    );
    assert!(
        !r.iter().any(|l| l.starts_with("* STATUS INBOX")),
        "not for the selected one"
    );
    // SMTP delivery: EXISTS arrives without any command.
    let mut smtp = Raw::connect(server.smtp).await;
    smtp.cmd("EHLO client.example").await;
    smtp.envelope("x@example.org", &["alice@example.test"])
        .await;
    smtp.send(b"DATA\r\nSubject: notify\r\n\r\nhi\r\n.\r\n")
        .await;
    smtp.reply().await;
    assert!(smtp.reply().await.starts_with("250"));
    assert_eq!(c.line().await, "* 1 EXISTS\r\n");
    // MessageNew's FETCH items follow, for the new message.
    let l = c.line().await;
    assert!(
        l.starts_with("* 1 FETCH (UID 1 BODY[HEADER.FIELDS (SUBJECT)]"),
        "{l}"
    );
    let mut literal = String::new();
    loop {
        let l = c.line().await;
        if l == ")\r\n" {
            break;
        }
        literal.push_str(&l);
    }
    assert_eq!(literal, "Subject: notify\r\n\r\n");
    let r = c
        .cmd(
            "g",
            "NOTIFY SET (personal (MessageNew (UID) MessageExpunge))",
        )
        .await;
    assert!(
        last(&r).starts_with("g BAD"),
        "FETCH items only for the selected: {r:?}"
    );
    let r = c
        .cmd("h", "NOTIFY SET (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)]) MessageExpunge FlagChange)) (personal (MessageNew MessageExpunge MailboxName))")
        .await;
    assert!(last(&r).starts_with("h OK"), "{r:?}");
    // Another session appends to Archive and creates a mailbox.
    let mut other = login(imap, "alice").await;
    let msg = "Subject: archived\r\n\r\nx\r\n";
    other
        .send(format!("p APPEND Archive {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes())
        .await;
    other.until_tagged("p").await;
    let l = c.line().await;
    assert!(
        l.starts_with("* STATUS Archive (MESSAGES 1 UIDNEXT 2"),
        "{l}"
    );
    other.cmd("q", "CREATE Projects").await;
    assert_eq!(c.line().await, "* LIST () \"/\" Projects\r\n");
    // Unsupported events and invalid combinations are refused.
    let r = c
        .cmd(
            "b",
            "NOTIFY SET (inboxes (MessageNew MessageExpunge AnnotationChange))",
        )
        .await;
    assert!(last(&r).starts_with("b NO [BADEVENT"), "{r:?}");
    let r = c.cmd("d", "NOTIFY SET (selected (MessageNew))").await;
    assert!(last(&r).starts_with("d BAD"), "{r:?}");
    // NOTIFY NONE: nothing unsolicited any more; NOOP reports what happened.
    assert!(last(&c.cmd("e", "NOTIFY NONE").await).starts_with("e OK"));
    other.cmd("s", "SELECT INBOX").await;
    other.cmd("t", "STORE 1 +FLAGS (\\Flagged)").await;
    let r = c.cmd("f", "NOOP").await;
    assert!(
        r[0].starts_with("* 1 FETCH (UID 1 FLAGS (\\Flagged)"),
        "{r:?}"
    );
}

/// NOTIFY on a mailbox another user shares: its changes reach the grantee as STATUS under
/// its shared name, PERSONAL leaves it out, and unsharing it sends `\NonExistent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_reports_shared_mailboxes() {
    let server = Server::start("");
    let imap = server.listeners["imap"];
    let mut alice = login(imap, "alice").await;
    alice.cmd("c", "CREATE Team").await;
    let r = alice
        .cmd("a", &format!("SETACL Team bob@{DOMAIN} lr"))
        .await;
    assert!(last(&r).starts_with("a OK"), "{r:?}");
    let shared = format!("\"Shared/alice@{DOMAIN}/Team\"");
    let mut bob = login(imap, "bob").await;
    let r = bob
        .cmd(
            "n",
            "NOTIFY SET (subtree \"Shared\" (MessageNew MessageExpunge MailboxName)) (personal (MessageNew MessageExpunge))",
        )
        .await;
    assert!(last(&r).starts_with("n OK"), "{r:?}");
    let msg = "Subject: team news\r\n\r\nx\r\n";
    alice
        .send(format!("p APPEND Team {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes())
        .await;
    alice.until_tagged("p").await;
    let l = bob.line().await;
    let name = shared.trim_matches('"');
    assert!(
        l.starts_with(&format!("* STATUS {name} (MESSAGES 1 UIDNEXT 2"))
            || l.starts_with(&format!("* STATUS {shared} (MESSAGES 1 UIDNEXT 2")),
        "{l}"
    );
    // Unsharing: the mailbox is gone for bob.
    alice
        .cmd("d", &format!("DELETEACL Team bob@{DOMAIN}"))
        .await;
    let l = bob.line().await;
    assert!(
        l.starts_with("* LIST (\\NonExistent) \"/\" ") && l.contains("Team"),
        "{l}"
    );
    // And alice's further changes to it are not reported to bob.
    alice
        .send(format!("q APPEND Team {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes())
        .await;
    alice.until_tagged("q").await;
    let r = bob.cmd("z", "NOOP").await;
    assert!(
        !r.iter().any(|l| l.contains("Team")),
        "nothing about an unshared mailbox: {r:?}"
    );
    // Shared again, but PERSONAL is bob's own mailboxes only (RFC 5465 6).
    alice
        .cmd("e", &format!("SETACL Team bob@{DOMAIN} lr"))
        .await;
    let r = bob
        .cmd("m", "NOTIFY SET (personal (MessageNew MessageExpunge))")
        .await;
    assert!(last(&r).starts_with("m OK"), "{r:?}");
    alice
        .send(format!("s APPEND Team {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes())
        .await;
    alice.until_tagged("s").await;
    let r = bob.cmd("y", "NOOP").await;
    assert!(
        !r.iter().any(|l| l.contains("Team")),
        "PERSONAL leaves shared mailboxes out: {r:?}"
    );
}

/// Shared mailboxes between two users with every ACL command and the rights each command
/// needs (RFC 4314), driven by imaplib (tests/python/imap_acl.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_imaplib_acl() {
    if !require_python("imaplib") {
        return;
    }
    let server = Server::start(fast_failures());
    run_python(&[
        script("imap_acl.py"),
        "127.0.0.1".into(),
        server.listeners["imap"].port().to_string(),
        format!("alice@{DOMAIN}"),
        format!("bob@{DOMAIN}"),
        PASSWORD.into(),
    ]);
}
