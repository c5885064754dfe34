//! POP3 (RFC 1939) for mailkeep, with CAPA (RFC 2449), STLS (RFC 2595), SASL PLAIN (RFC
//! 5034), RESP-CODES and AUTH-RESP-CODE (RFC 3206).
//!
//! Implementation notes:
//! - The maildrop is the account's INBOX as it was at login: message numbers, sizes and UIDs
//!   do not change during the session, whatever else happens to the mailbox.
//! - UIDL is `UIDVALIDITY.UID`, which never changes for a message and is never reused.
//! - DELE only marks; messages are expunged at QUIT (the UPDATE state), never when the
//!   connection just drops (RFC 1939 6). Retrieved messages get `\Seen` then too, as Dovecot
//!   does, so IMAP clients see them as read.
//! - Message data goes out with CRLF line ends and dot-stuffing (RFC 1939 3).
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailkeep_config::{AuthConfig, Plaintext, Pop3Config};
use mailkeep_net::sasl::decode_plain;
use mailkeep_net::stream::{accept_tls, Conn, HANDSHAKE_TIMEOUT};
use mailkeep_net::{accept_loop, ConnLimiter, LimitExceeded, Shutdown};
use mailkeep_store::{FlagMode, SharedStore, StoreError, User};
use mailkeep_types::{MailboxId, MailboxRole, ModSeq, Uid};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// RFC 2449 4: a command line is at most 255 octets; we allow a little more for long SASL
/// responses (RFC 5034 4: clients may send up to that in one line).
const MAX_LINE: usize = 8 * 1024;
/// Errors in a row before the session is closed.
const MAX_ERRORS: u32 = 20;

/// What every POP3 session shares.
pub struct Pop3Server {
    /// Our host name.
    pub hostname: String,
    /// The store.
    pub store: SharedStore,
    /// TLS for STLS and port 995.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Timeouts.
    pub pop3: Pop3Config,
    /// Login policy.
    pub auth: AuthConfig,
    /// Password checks, shared by every listener (bounded, with a login cache).
    pub logins: Arc<mailkeep_store::directory::Authenticator>,
    /// Failed-login counting, bans and account locks (shared by every listener).
    pub guard: Arc<mailkeep_auth::Guard>,
}

/// Accepts POP3 connections until shutdown; `implicit_tls` for port 995 (RFC 8314).
pub async fn serve(
    listener: TcpListener,
    server: tokio::sync::watch::Receiver<Arc<Pop3Server>>,
    implicit_tls: bool,
    limiter: ConnLimiter,
    shutdown: Shutdown,
    grace: Duration,
) {
    let sessions_shutdown = shutdown.clone();
    accept_loop(
        listener,
        limiter,
        shutdown,
        grace,
        move |stream, peer, permit| {
            let server = server.borrow().clone();
            let shutdown = sessions_shutdown.clone();
            async move {
                let (permit, shutdown) = match permit {
                    // The session ends when its address is banned, too.
                    Ok(p) => {
                        let watched = p.watch(shutdown);
                        (p, watched)
                    }
                    Err(why) => {
                        if !implicit_tls {
                            let text = match why {
                                LimitExceeded::Total => "-ERR [SYS/TEMP] too many connections\r\n",
                                LimitExceeded::PerIp => {
                                    "-ERR [SYS/TEMP] too many connections from your address\r\n"
                                }
                                LimitExceeded::Unauthenticated => {
                                    "-ERR [SYS/TEMP] too many connections from your address that have not logged in\r\n"
                                }
                                LimitExceeded::Banned => {
                                    "-ERR [SYS/PERM] your address is banned after too many failed logins\r\n"
                                }
                            };
                            let mut stream = stream;
                            let _ = tokio::time::timeout(
                                Duration::from_secs(5),
                                stream.write_all(text.as_bytes()),
                            )
                            .await;
                        }
                        return;
                    }
                };
                if implicit_tls {
                    let Some(cfg) = server.tls.clone() else {
                        tracing::error!("pop3s listener without [tls]");
                        return;
                    };
                    match accept_tls(cfg, stream, HANDSHAKE_TIMEOUT).await {
                        Ok(tls) => run_session(tls, peer, server, shutdown, true).await,
                        Err(e) => tracing::debug!(%peer, error = %e, "pop3s: no session"),
                    }
                } else {
                    run_session(stream, peer, server, shutdown, false).await;
                }
                drop(permit);
            }
        },
    )
    .await;
}

struct Msg {
    uid: Uid,
    size: u64,
    deleted: bool,
    retrieved: bool,
}

struct Maildrop {
    mailbox: MailboxId,
    uid_validity: u32,
    msgs: Vec<Msg>,
}

struct Session<S> {
    conn: Conn<S>,
    tls: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
    server: Arc<Pop3Server>,
    peer: SocketAddr,
    shutdown: Shutdown,
    id: String,
    user_name: Option<String>,
    user: Option<User>,
    drop: Option<Maildrop>,
    failures: u32,
    errors: u32,
    /// The rest of an over-long line is being dropped up to its LF; it was answered once.
    skipping: bool,
    /// `pop3.commands_per_second`, after a burst of twice as many.
    pacer: mailkeep_net::pace::Pacer,
}

enum Flow {
    Continue,
    Close(String),
    StartTls,
}

/// Runs a session until QUIT, error, timeout or shutdown.
pub async fn run_session<S>(
    stream: S,
    peer: SocketAddr,
    server: Arc<Pop3Server>,
    shutdown: Shutdown,
    tls: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let pacer = mailkeep_net::pace::Pacer::with_burst(
        server.pop3.commands_per_second,
        server.pop3.commands_per_second.saturating_mul(2),
    );
    let mut s = Session {
        pacer,
        conn: Conn::Plain(stream),
        tls,
        buf: Vec::new(),
        out: Vec::new(),
        server,
        peer,
        shutdown,
        id: format!("pop3-{:016x}", rand::random::<u64>()),
        user_name: None,
        user: None,
        drop: None,
        failures: 0,
        errors: 0,
        skipping: false,
    };
    let reason = s.run().await;
    tracing::debug!(session = %s.id, peer = %s.peer, reason = %reason, "pop3 session closed");
    let _ = s.conn.shutdown().await;
}

/// Message data for RETR/TOP: CRLF line ends and dot-stuffing (RFC 1939 3), ending with the
/// terminating `.` line. `lines`: for TOP, how many body lines after the header.
fn multiline(raw: &[u8], lines: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 50 + 8);
    let mut in_body = false;
    let mut body_lines = 0usize;
    for line in raw.split_inclusive(|b| *b == b'\n') {
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if in_body {
            if let Some(max) = lines {
                if body_lines >= max {
                    break;
                }
            }
            body_lines += 1;
        }
        if content.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
        if !in_body && content.is_empty() {
            in_body = true;
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    fn plaintext_ok(&self) -> bool {
        self.tls
            || (self.server.auth.plaintext == Plaintext::Loopback && self.peer.ip().is_loopback())
    }

    fn ok(&mut self, text: &str) {
        self.out
            .extend_from_slice(format!("+OK {text}\r\n").as_bytes());
    }

    fn err(&mut self, text: &str) {
        let clean: String = text.chars().filter(|c| !c.is_control()).collect();
        self.out
            .extend_from_slice(format!("-ERR {clean}\r\n").as_bytes());
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.conn.write_all(&self.out).await?;
            self.conn.flush().await?;
            self.out.clear();
            if self.out.capacity() > 64 * 1024 {
                self.out = Vec::new();
            }
        }
        Ok(())
    }

    async fn run(&mut self) -> String {
        self.ok(&format!("{} POP3 server ready", self.server.hostname));
        loop {
            // Every complete line buffered is a command (RFC 2449 6.6 PIPELINING).
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if std::mem::take(&mut self.skipping) {
                    // The end of a line already answered with "line too long".
                    continue;
                }
                let wait = self.pacer.take(std::time::Instant::now());
                if !wait.is_zero() {
                    // What is due goes out first.
                    if let Err(e) = self.flush().await {
                        return format!("i/o error: {e}");
                    }
                    tokio::time::sleep(wait).await;
                }
                let flow = if line.len() > MAX_LINE {
                    self.err("line too long");
                    Flow::Continue
                } else {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\r', '\n']).to_string();
                    match self.command(&text).await {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::error!(session = %self.id, error = %e, "pop3: storage error");
                            self.err("[SYS/TEMP] temporary storage failure, try again");
                            Flow::Continue
                        }
                    }
                };
                match flow {
                    Flow::Continue => {}
                    Flow::Close(r) => {
                        let _ = self.flush().await;
                        return r;
                    }
                    Flow::StartTls => {
                        if let Err(r) = self.start_tls().await {
                            return r;
                        }
                    }
                }
                if self.out.len() > 256 * 1024 {
                    if let Err(e) = self.flush().await {
                        return format!("i/o error: {e}");
                    }
                }
            }
            if self.buf.len() > MAX_LINE {
                // A line with no end in sight: drop it up to its LF, answering once for the
                // whole line, not once per piece read.
                self.buf.clear();
                if !self.skipping {
                    self.skipping = true;
                    if let Flow::Close(r) = self.error("line too long") {
                        let _ = self.flush().await;
                        return r;
                    }
                }
            }
            if let Err(e) = self.flush().await {
                return format!("i/o error: {e}");
            }
            let mut chunk = [0u8; 1024];
            let mut shutdown = self.shutdown.clone();
            let n = tokio::select! {
                r = tokio::time::timeout(self.server.pop3.idle_timeout, self.conn.read(&mut chunk)) => r,
                stop = shutdown.wait() => {
                    if stop == mailkeep_net::Stop::Banned {
                        self.err("[SYS/PERM] your address is banned");
                        let _ = self.flush().await;
                        return "address banned".into();
                    }
                    self.err("[SYS/TEMP] server shutting down");
                    let _ = self.flush().await;
                    return "server shutdown".into();
                }
            };
            match n {
                Err(_) => {
                    // RFC 1939 3: an idle session is closed without entering UPDATE.
                    self.err("autologout: idle for too long");
                    let _ = self.flush().await;
                    return "timeout".into();
                }
                Ok(Ok(0)) => return "client closed the connection".into(),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return format!("i/o error: {e}"),
            }
        }
    }

    async fn start_tls(&mut self) -> Result<(), String> {
        self.flush().await.map_err(|e| format!("i/o error: {e}"))?;
        // RFC 2595 4: nothing pipelined before the handshake is kept.
        self.buf.clear();
        let Some(cfg) = self.server.tls.clone() else {
            return Err("no TLS".into());
        };
        self.conn.upgrade(cfg, HANDSHAKE_TIMEOUT).await?;
        self.tls = true;
        Ok(())
    }

    fn capa(&mut self) {
        let mut lines = vec![
            "CAPA",
            "TOP",
            "UIDL",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
        ];
        if self.user.is_none() {
            if self.server.tls.is_some() && !self.tls {
                lines.push("STLS");
            }
            if self.plaintext_ok() {
                lines.extend(["USER", "SASL PLAIN"]);
            }
        }
        lines.push("EXPIRE NEVER");
        lines.push("IMPLEMENTATION mailkeep");
        self.ok("capability list follows");
        for l in lines {
            self.out.extend_from_slice(l.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b".\r\n");
    }

    fn error(&mut self, text: &str) -> Flow {
        self.err(text);
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.err("too many errors, closing");
            return Flow::Close("too many errors".into());
        }
        Flow::Continue
    }

    async fn command(&mut self, line: &str) -> Result<Flow, StoreError> {
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a),
            None => (line.to_ascii_uppercase(), ""),
        };
        let authed = self.user.is_some();
        let errors_before = self.errors;
        let flow = match (verb.as_str(), authed) {
            ("CAPA", _) => {
                self.capa();
                Flow::Continue
            }
            ("NOOP", true) => {
                self.ok("");
                Flow::Continue
            }
            ("QUIT", false) => {
                self.ok("bye");
                Flow::Close("quit".into())
            }
            ("QUIT", true) => return self.update().await,
            ("STLS", false) => {
                if self.tls {
                    return Ok(self.error("TLS is already active"));
                }
                if self.server.tls.is_none() {
                    return Ok(self.error("TLS is not configured"));
                }
                self.ok("begin TLS negotiation");
                Flow::StartTls
            }
            ("USER", false) => {
                if !self.plaintext_ok() {
                    return Ok(self.error("[AUTH] use STLS (or port 995) first"));
                }
                if args.is_empty() {
                    return Ok(self.error("USER needs a name"));
                }
                self.user_name = Some(args.to_string());
                self.ok("send PASS");
                Flow::Continue
            }
            ("PASS", false) => {
                let Some(name) = self.user_name.take() else {
                    return Ok(self.error("USER first"));
                };
                self.login(&name, args, "USER").await?
            }
            ("AUTH", false) => {
                let mut parts = args.splitn(2, ' ');
                let mech = parts.next().unwrap_or("").to_ascii_uppercase();
                if mech.is_empty() {
                    // RFC 5034 4: AUTH without a mechanism lists them (as CAPA SASL).
                    self.ok("");
                    if self.plaintext_ok() {
                        self.out.extend_from_slice(b"PLAIN\r\n");
                    }
                    self.out.extend_from_slice(b".\r\n");
                    return Ok(Flow::Continue);
                }
                if mech != "PLAIN" {
                    return Ok(self.error("unsupported mechanism; use PLAIN"));
                }
                if !self.plaintext_ok() {
                    return Ok(self.error("[AUTH] use STLS (or port 995) first"));
                }
                let initial = match parts.next() {
                    Some("=") => String::new(),
                    Some(r) => r.to_string(),
                    None => {
                        // RFC 5034 4: an empty challenge, then the response line.
                        self.out.extend_from_slice(b"+ \r\n");
                        if self.flush().await.is_err() {
                            return Ok(Flow::Close("i/o error".into()));
                        }
                        match self.read_line().await {
                            Some(l) => l,
                            None => return Ok(Flow::Close("closed during AUTH".into())),
                        }
                    }
                };
                if initial.trim() == "*" {
                    return Ok(self.error("AUTH cancelled"));
                }
                match decode_plain(&initial) {
                    Ok(p) if p.authzid.is_empty() || p.authzid.eq_ignore_ascii_case(&p.authcid) => {
                        self.login(&p.authcid, &p.password, "PLAIN").await?
                    }
                    Ok(_) => self.error("[AUTH] acting as another user is not allowed"),
                    Err(e) => self.error(&e.to_string()),
                }
            }
            ("STAT", true) => {
                let (n, size) = self
                    .live()
                    .fold((0, 0), |(n, s), (_, m)| (n + 1, s + m.size));
                self.ok(&format!("{n} {size}"));
                Flow::Continue
            }
            ("LIST", true) | ("UIDL", true) => {
                let uidl = verb == "UIDL";
                let validity = self.drop.as_ref().map(|d| d.uid_validity).unwrap_or(0);
                let show = |n: usize, m: &Msg| {
                    if uidl {
                        format!("{n} {validity}.{}", m.uid.0)
                    } else {
                        format!("{n} {}", m.size)
                    }
                };
                if args.is_empty() {
                    let lines: Vec<String> = self.live().map(|(n, m)| show(n, m)).collect();
                    self.ok(&format!("{} messages", lines.len()));
                    for l in lines {
                        self.out.extend_from_slice(l.as_bytes());
                        self.out.extend_from_slice(b"\r\n");
                    }
                    self.out.extend_from_slice(b".\r\n");
                } else {
                    match self.msg(args) {
                        Ok(n) => {
                            let line = self
                                .drop
                                .as_ref()
                                .map(|d| show(n, &d.msgs[n - 1]))
                                .unwrap_or_default();
                            self.ok(&line);
                        }
                        Err(e) => return Ok(self.error(&e)),
                    }
                }
                Flow::Continue
            }
            ("RETR", true) | ("TOP", true) => {
                let (num, lines) = if verb == "TOP" {
                    let mut p = args.split_whitespace();
                    let num = p.next().unwrap_or("");
                    match p.next().and_then(|l| l.parse::<usize>().ok()) {
                        Some(l) if p.next().is_none() => (num.to_string(), Some(l)),
                        _ => return Ok(self.error("usage: TOP msg lines")),
                    }
                } else {
                    (args.to_string(), None)
                };
                let n = match self.msg(&num) {
                    Ok(n) => n,
                    Err(e) => return Ok(self.error(&e)),
                };
                let Some(d) = self.drop.as_ref() else {
                    return Ok(Flow::Continue);
                };
                let (mailbox, uid, size) = (d.mailbox, d.msgs[n - 1].uid, d.msgs[n - 1].size);
                match self.server.store.message_content(mailbox, uid).await? {
                    Some(raw) => {
                        self.ok(&format!("{size} octets"));
                        self.out.extend_from_slice(&multiline(&raw, lines));
                        if lines.is_none() {
                            if let Some(d) = self.drop.as_mut() {
                                d.msgs[n - 1].retrieved = true;
                            }
                        }
                    }
                    None => self.err("[SYS/PERM] the message was deleted by another session"),
                }
                Flow::Continue
            }
            ("DELE", true) => match self.msg(args) {
                Ok(n) => {
                    if let Some(d) = self.drop.as_mut() {
                        d.msgs[n - 1].deleted = true;
                    }
                    self.ok(&format!("message {n} deleted"));
                    Flow::Continue
                }
                Err(e) => self.error(&e),
            },
            ("RSET", true) => {
                if let Some(d) = self.drop.as_mut() {
                    for m in &mut d.msgs {
                        m.deleted = false;
                    }
                }
                self.ok("");
                Flow::Continue
            }
            ("APOP", false) => {
                self.error("APOP is not supported; use USER/PASS or AUTH PLAIN over TLS")
            }
            (v, _)
                if [
                    "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP",
                ]
                .contains(&v) =>
            {
                self.error("log in first")
            }
            (v, true) if ["USER", "PASS", "AUTH", "STLS", "APOP"].contains(&v) => {
                self.error("already logged in")
            }
            _ => self.error("unknown command"),
        };
        if self.errors == errors_before {
            self.errors = 0;
        }
        Ok(flow)
    }

    /// Reads one line (for the SASL response), honouring the idle timeout.
    async fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(
                    String::from_utf8_lossy(&line)
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                );
            }
            if self.buf.len() > MAX_LINE {
                return None;
            }
            let mut chunk = [0u8; 1024];
            match tokio::time::timeout(self.server.pop3.idle_timeout, self.conn.read(&mut chunk))
                .await
            {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Messages not marked deleted, with their numbers.
    fn live(&self) -> impl Iterator<Item = (usize, &Msg)> {
        self.drop
            .iter()
            .flat_map(|d| d.msgs.iter().enumerate())
            .filter(|(_, m)| !m.deleted)
            .map(|(i, m)| (i + 1, m))
    }

    /// A message number argument that names a message not marked deleted.
    fn msg(&self, arg: &str) -> Result<usize, String> {
        let n: usize = arg
            .trim()
            .parse()
            .map_err(|_| "expected a message number".to_string())?;
        let d = self.drop.as_ref().ok_or("no maildrop")?;
        match d.msgs.get(n.wrapping_sub(1)) {
            Some(m) if !m.deleted => Ok(n),
            Some(_) => Err(format!("message {n} is deleted")),
            None => Err(format!("no message {n}")),
        }
    }

    async fn login(
        &mut self,
        login: &str,
        password: &str,
        mechanism: &str,
    ) -> Result<Flow, StoreError> {
        let request = mailkeep_auth::LoginRequest {
            session: &self.id,
            ip: self.peer.ip(),
            protocol: "pop3",
            kind: "pop3.login",
            mechanism,
            tls: self.tls,
            login,
            password,
        };
        let (mut outcome, event) = self
            .server
            .guard
            .check(&self.server.logins, request)
            .await?;
        self.server.store.log_submit(vec![event]);
        outcome.pause().await;
        let mailkeep_auth::Outcome {
            user,
            banned,
            locked,
            busy,
            ..
        } = outcome;
        if busy {
            // RFC 3206 4: [SYS/TEMP]; nothing was checked or counted.
            self.err("[SYS/TEMP] too many logins at once, try again shortly");
            return Ok(Flow::Continue);
        }
        let Some(user) = user else {
            self.failures += 1;
            if banned {
                // RFC 3206 4: [AUTH], and the reason the connection ends.
                self.err(
                    "[AUTH] authentication failed: too many failed logins, your address is banned",
                );
            } else if locked {
                // RFC 3206 4: [SYS/TEMP], a temporary failure.
                self.err("[SYS/TEMP] too many failed logins for this account, try again later");
            } else {
                // RFC 3206 4: [AUTH] says the credentials were wrong.
                self.err("[AUTH] authentication failed");
            }
            if banned {
                return Ok(Flow::Close("address banned".into()));
            }
            if self.failures >= self.server.auth.max_failures {
                return Ok(Flow::Close("too many failed logins".into()));
            }
            return Ok(Flow::Continue);
        };
        let boxes = self.server.store.mailboxes(user.id).await?;
        let Some(inbox) = boxes
            .into_iter()
            .find(|m| m.role == Some(MailboxRole::Inbox))
        else {
            self.err("[SYS/PERM] the account has no INBOX");
            return Ok(Flow::Close("no inbox".into()));
        };
        let msgs = self
            .server
            .store
            .changed_since(inbox.id, ModSeq(0))
            .await?
            .into_iter()
            .map(|m| Msg {
                uid: m.uid,
                size: m.size,
                deleted: false,
                retrieved: false,
            })
            .collect::<Vec<_>>();
        let total: u64 = msgs.iter().map(|m| m.size).sum();
        self.ok(&format!("{} messages ({total} octets)", msgs.len()));
        self.drop = Some(Maildrop {
            mailbox: inbox.id,
            uid_validity: inbox.uid_validity.0,
            msgs,
        });
        tracing::info!(session = %self.id, user = %user.address, "pop3 login");
        self.user = Some(user);
        Ok(Flow::Continue)
    }

    /// QUIT in the TRANSACTION state: the UPDATE state (RFC 1939 6).
    async fn update(&mut self) -> Result<Flow, StoreError> {
        let Some(d) = self.drop.take() else {
            self.ok("bye");
            return Ok(Flow::Close("quit".into()));
        };
        let deleted: Vec<Uid> = d.msgs.iter().filter(|m| m.deleted).map(|m| m.uid).collect();
        let seen: Vec<Uid> = d
            .msgs
            .iter()
            .filter(|m| m.retrieved && !m.deleted)
            .map(|m| m.uid)
            .collect();
        let store = self.server.store.clone();
        let result = async {
            if !seen.is_empty() {
                store
                    .flags_update(d.mailbox, &seen, FlagMode::Add, &["\\Seen".into()], None)
                    .await?;
            }
            if !deleted.is_empty() {
                store.expunge(d.mailbox, &deleted).await?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        match result {
            Ok(()) => self.ok(&format!("bye, {} messages deleted", deleted.len())),
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "pop3: update failed");
                // RFC 2449 8.1.2: SYS/TEMP, the deletes may be retried.
                self.err("[SYS/TEMP] some deleted messages were not removed");
            }
        }
        Ok(Flow::Close("quit".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_and_top() {
        let raw = b"Subject: x\r\n\r\n.hidden\nline 2\r\n..two\r\nlast";
        assert_eq!(
            multiline(raw, None),
            b"Subject: x\r\n\r\n..hidden\r\nline 2\r\n...two\r\nlast\r\n.\r\n".to_vec()
        );
        assert_eq!(
            multiline(raw, Some(1)),
            b"Subject: x\r\n\r\n..hidden\r\n.\r\n".to_vec()
        );
        assert_eq!(multiline(raw, Some(0)), b"Subject: x\r\n\r\n.\r\n".to_vec());
    }
}
