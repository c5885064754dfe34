//! One SMTP session.
//!
//! Implementation notes:
//! - Input is read into our own buffer; a command line longer than the limit is discarded up to
//!   its LF and answered 500 (RFC 5321 4.5.3.1.4), so memory per session stays bounded.
//! - Replies are buffered and flushed only when no pipelined command is waiting (RFC 2920).
//! - STARTTLS discards every byte received before the handshake (RFC 3207 5; the STARTTLS
//!   command injection of CVE-2011-0411) and forgets EHLO (RFC 3207 4.2).
//! - Log events are collected per session and written at the end of each transaction and of
//!   the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mailkeep_config::QuotaReply;
use mailkeep_delivery::{now_micros, Incoming};
use mailkeep_net::{LimitExceeded, Shutdown};
use mailkeep_store::directory::{LocalTarget, Resolution};
use mailkeep_store::LogEvent;
use mailkeep_types::{Address, Domain, MailboxRole, QueueId};
use smtp_proto::{Error as ProtoError, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

mod dsn_params;
mod greylist;
mod spam;

use crate::data::{check_bdat, DataDecoder, DataProblem};
use crate::SmtpServer;
use mailkeep_net::stream::Conn;

/// Most received headers before a message is taken for a loop (RFC 5321 6.3).
const MAX_RECEIVED: usize = 100;

/// The addresses of a header section's Delivered-To fields, lower-cased.
fn delivered_to(head: &[u8]) -> Vec<String> {
    head.split(|b| *b == b'\n')
        .filter(|l| l.len() > 13 && l[..13].eq_ignore_ascii_case(b"delivered-to:"))
        .map(|l| {
            String::from_utf8_lossy(&l[13..])
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_ascii_lowercase()
        })
        .collect()
}

struct Rcpt {
    address: String,
    targets: Vec<LocalTarget>,
    notify: Option<String>,
    orcpt: Option<String>,
    /// In another domain: goes to the outbound queue (submission only).
    remote: bool,
    /// Addresses in other domains this recipient forwards to (an alias's external targets,
    /// or the original sender behind an SRS address of ours).
    forward: Vec<String>,
    /// Our domain that forwards (the alias's): the SRS address and the ARC seal are its.
    forward_as: Option<String>,
}

struct Transaction {
    queue_id: QueueId,
    sender: String,
    smtputf8: bool,
    /// RFC 8689: relay only over authenticated TLS.
    requiretls: bool,
    body: Option<&'static str>,
    declared_size: u64,
    dsn_ret: Option<&'static str>,
    dsn_envid: Option<String>,
    rcpts: Vec<Rcpt>,
    bdat: Option<Vec<u8>>,
    bdat_too_big: bool,
    started: Instant,
    /// Submission: what the account sent to other domains in the last hour and day, read at
    /// its first remote recipient.
    usage: Option<(mailkeep_store::Usage, mailkeep_store::Usage)>,
    /// Submission: remote recipients the account never wrote to before, in this message.
    new_recipients: Vec<String>,
}

struct TlsInfo {
    version: String,
    cipher: String,
}

enum Flow {
    Continue,
    /// Close the connection, for this reason (logged in `smtp.close`).
    Close(&'static str),
}

struct Session<S> {
    conn: Conn<S>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    server: Arc<SmtpServer>,
    shutdown: Shutdown,
    id: String,
    peer: SocketAddr,
    rdns: Option<String>,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    tx: Option<Transaction>,
    errors: u32,
    events: Vec<LogEvent>,
    started: Instant,
    messages: u32,
    /// Submission: the user who authenticated (RFC 4954).
    user: Option<mailkeep_store::User>,
    /// Submission: failed AUTH attempts in this session.
    auth_failures: u32,
    /// Commands that may still go without waiting (`smtp.commands_per_second`).
    pacer: mailkeep_net::pace::Pacer,
    /// Recipients accepted in this connection.
    rcpts_total: u32,
    /// Set by a command whose reply ends the connection (421), with why.
    closing: Option<&'static str>,
    /// The MX's DNSBL verdict on the client, once asked: the list that has it, if any.
    dnsbl: Option<Option<String>>,
    /// The current message was scanned and found clean (for Sieve's virustest).
    virus_clean: bool,
}

/// How a SASL exchange ended without credentials.
enum SaslEnd {
    /// The reply was sent; the session goes on.
    Replied,
    /// The connection is gone.
    Lost(ReadError),
}

/// The message's first From: address, lower case.
fn from_address(message: &[u8]) -> Option<String> {
    let end = mailkeep_delivery::ingest::header_len(message);
    let parsed = mail_parser::MessageParser::new().parse_headers(&message[..end])?;
    let from = parsed.from()?.first()?.address()?;
    Some(from.trim_end_matches('.').to_ascii_lowercase())
}

/// The domain of the message's first From: address, lower case.
fn from_domain(message: &[u8]) -> Option<String> {
    let a = from_address(message)?;
    Some(a.rsplit_once('@')?.1.to_string())
}

/// RFC 3461 4: an address as xtext (`+`, `=` and bytes outside `!`..`~` as `+HH`).
fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// The Message-ID of a message (without angle brackets), for the log.
fn header_message_id(data: &[u8]) -> Option<String> {
    let end = mailkeep_delivery::ingest::header_len(data);
    mail_parser::MessageParser::new()
        .parse_headers(&data[..end])
        .and_then(|m| m.message_id().map(String::from))
}

/// The recipient's ORCPT as the queue passes it on and DSNs name it (RFC 3461 4.2):
/// `rfc822;` and the address in xtext (smtp-proto hands over the address decoded).
fn rcpt_orcpt(to: &smtp_proto::RcptTo<String>) -> Option<String> {
    to.orcpt
        .as_ref()
        .map(|a| format!("rfc822;{}", mailkeep_queue::xtext(a)))
}

/// RCPT's NOTIFY parameter (RFC 3461 4.1) as a comma-separated list.
fn rcpt_notify(to: &smtp_proto::RcptTo<String>) -> Option<String> {
    let mut n = Vec::new();
    for (flag, name) in [
        (smtp_proto::RCPT_NOTIFY_NEVER, "NEVER"),
        (smtp_proto::RCPT_NOTIFY_SUCCESS, "SUCCESS"),
        (smtp_proto::RCPT_NOTIFY_FAILURE, "FAILURE"),
        (smtp_proto::RCPT_NOTIFY_DELAY, "DELAY"),
    ] {
        if to.flags & flag != 0 {
            n.push(name);
        }
    }
    (!n.is_empty()).then(|| n.join(","))
}

/// The TLS version and cipher suite of a connection, for Received and the log.
pub(crate) fn tls_info(conn: &rustls::ServerConnection) -> (String, String) {
    let version = conn
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS")
        .replace('_', ".");
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_default();
    (version, cipher)
}

fn new_session_id() -> String {
    QueueId::new(now_micros() as u64, rand::random()).0
}

/// Refuses a connection over the limits with 421 (RFC 5321 3.8), or a banned one with 554,
/// and logs it.
pub(crate) async fn refuse<S: AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    server: &SmtpServer,
    why: LimitExceeded,
) {
    let reply = match why {
        LimitExceeded::Total => "421 4.7.0 Too many connections, try again later\r\n",
        LimitExceeded::PerIp => "421 4.7.0 Too many connections from your address\r\n",
        LimitExceeded::Unauthenticated => {
            "421 4.7.0 Too many connections from your address that have not logged in\r\n"
        }
        // RFC 5321 3.1: 554 at the greeting; the ban ends on its own or by the postmaster.
        LimitExceeded::Banned => {
            "554 5.7.1 Your address is banned after too many failed logins; ask the postmaster\r\n"
        }
    };
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.write_all(reply.as_bytes()),
    )
    .await;
    let ev = LogEvent {
        ts: now_micros(),
        session: new_session_id(),
        kind: "smtp.connect".into(),
        ip: Some(peer.ip().to_string()),
        outcome: Some("rejected".into()),
        reply: Some(reply.trim_end().into()),
        ..Default::default()
    };
    server.delivery.store().log_submit(vec![ev]);
}

/// Runs a session on an accepted connection until QUIT, error, timeout or shutdown.
///
/// `implicit_tls`: the stream is already TLS (submissions, RFC 8314), with this version and
/// cipher suite.
pub async fn run_session<S>(
    stream: S,
    peer: SocketAddr,
    server: Arc<SmtpServer>,
    shutdown: Shutdown,
    implicit_tls: Option<(String, String)>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let rdns = if server.config.reverse_dns {
        server.rdns.lookup(peer.ip()).await
    } else {
        None
    };
    let server_commands_per_second = server.config.commands_per_second;
    let mut s = Session {
        conn: Conn::Plain(stream),
        rbuf: Vec::with_capacity(4096),
        wbuf: Vec::with_capacity(1024),
        server,
        shutdown,
        id: new_session_id(),
        peer,
        rdns,
        helo: None,
        esmtp: false,
        tls: implicit_tls.map(|(version, cipher)| TlsInfo { version, cipher }),
        tx: None,
        errors: 0,
        events: Vec::new(),
        started: Instant::now(),
        messages: 0,
        user: None,
        auth_failures: 0,
        pacer: mailkeep_net::pace::Pacer::new(server_commands_per_second),
        rcpts_total: 0,
        closing: None,
        dnsbl: None,
        virus_clean: false,
    };
    s.log(
        "smtp.connect",
        LogEvent {
            outcome: Some("accepted".into()),
            detail: serde_json::json!({ "rdns": s.rdns }),
            ..Default::default()
        },
    );
    let reason = s.run().await;
    if let Some(tx) = s.tx.take() {
        s.log_tx_abandoned(&tx, &reason);
    }
    let elapsed = s.started.elapsed().as_millis() as u64;
    s.log(
        "smtp.close",
        LogEvent {
            detail: serde_json::json!({ "reason": reason, "duration_ms": elapsed, "messages": s.messages }),
            ..Default::default()
        },
    );
    s.flush_log();
    let _ = s.conn.shutdown().await;
}

enum Line {
    Ok(Vec<u8>),
    TooLong,
}

enum ReadError {
    Timeout,
    Closed,
    Io(String),
    Shutdown,
    /// The client's address was banned while the session was open.
    Banned,
}

impl ReadError {
    fn reason(&self) -> String {
        match self {
            ReadError::Timeout => "timeout".into(),
            ReadError::Closed => "client closed the connection".into(),
            ReadError::Io(e) => format!("i/o error: {e}"),
            ReadError::Shutdown => "server shutdown".into(),
            ReadError::Banned => "address banned".into(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    fn log(&mut self, kind: &str, mut ev: LogEvent) {
        // An event made elsewhere (a login's, by the guard) keeps its time.
        if ev.ts == 0 {
            ev.ts = now_micros();
        }
        ev.session = self.id.clone();
        ev.kind = kind.into();
        ev.ip = Some(self.peer.ip().to_string());
        if ev.queue_id.is_none() {
            ev.queue_id = self.tx.as_ref().map(|t| t.queue_id.0.clone());
        }
        if ev.sender.is_none() {
            ev.sender = self.tx.as_ref().map(|t| t.sender.clone());
        }
        self.events.push(ev);
    }

    /// Hands the collected events to the store's writer (in order, without waiting).
    fn flush_log(&mut self) {
        let events = std::mem::take(&mut self.events);
        self.server.delivery.store().log_submit(events);
    }

    fn log_tx_abandoned(&mut self, tx: &Transaction, reason: &str) {
        self.events.push(LogEvent {
            ts: now_micros(),
            session: self.id.clone(),
            queue_id: Some(tx.queue_id.0.clone()),
            kind: "smtp.abandoned".into(),
            ip: Some(self.peer.ip().to_string()),
            sender: Some(tx.sender.clone()),
            outcome: Some("abandoned".into()),
            detail: serde_json::json!({ "reason": reason }),
            ..Default::default()
        });
    }

    fn reply(&mut self, text: &str) {
        self.wbuf.extend_from_slice(text.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
    }

    /// RFC 5321 3.8: a 421 may end a session at any point, inside a message too.
    async fn told_banned(&mut self, e: &ReadError) {
        if matches!(e, ReadError::Banned) {
            self.reply("421 4.7.0 Your address is banned, closing connection");
            let _ = self.flush().await;
        }
    }

    async fn flush(&mut self) -> Result<(), ReadError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.wbuf);
        let t = self.server.config.command_timeout;
        match tokio::time::timeout(t, async {
            self.conn.write_all(&out).await?;
            self.conn.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ReadError::Io(e.to_string())),
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// Reads more input, flushing pending replies first. `interruptible`: a shutdown aborts
    /// the wait (only between commands, never inside a message). A ban of the client's
    /// address aborts it anywhere.
    async fn fill(
        &mut self,
        timeout: std::time::Duration,
        interruptible: bool,
    ) -> Result<(), ReadError> {
        self.flush().await?;
        let mut tmp = [0u8; 16384];
        let mut shutdown = self.shutdown.clone();
        let read = tokio::time::timeout(timeout, self.conn.read(&mut tmp));
        tokio::pin!(read);
        let n = tokio::select! {
            r = &mut read => r,
            stop = shutdown.wait() => match stop {
                mailkeep_net::Stop::Banned => return Err(ReadError::Banned),
                mailkeep_net::Stop::Shutdown if interruptible => return Err(ReadError::Shutdown),
                mailkeep_net::Stop::Shutdown => read.await,
            },
        };
        match n {
            Err(_) => Err(ReadError::Timeout),
            Ok(Err(e)) => Err(ReadError::Io(e.to_string())),
            Ok(Ok(0)) => Err(ReadError::Closed),
            Ok(Ok(n)) => {
                self.rbuf.extend_from_slice(&tmp[..n]);
                Ok(())
            }
        }
    }

    async fn read_line(&mut self) -> Result<Line, ReadError> {
        let max = self.server.config.max_command_line;
        let mut discarding = false;
        loop {
            if let Some(i) = self.rbuf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.rbuf.drain(..=i).collect();
                return Ok(if discarding || line.len() > max {
                    Line::TooLong
                } else {
                    Line::Ok(line)
                });
            }
            if self.rbuf.len() > max {
                // RFC 5321 4.5.3.1.4: over-long command; drop it up to its end.
                self.rbuf.clear();
                discarding = true;
            }
            if self.shutdown.is_triggered() && self.rbuf.is_empty() && !discarding {
                return Err(ReadError::Shutdown);
            }
            self.fill(self.server.config.command_timeout, true).await?;
        }
    }

    async fn run(&mut self) -> String {
        let greeting = format!("220 {} ESMTP mailkeep", self.server.hostname);
        self.reply(&greeting);
        if let Some(t) = &self.tls {
            let detail =
                serde_json::json!({ "version": t.version, "cipher": t.cipher, "implicit": true });
            self.log(
                "smtp.tls",
                LogEvent {
                    outcome: Some("accepted".into()),
                    detail,
                    ..Default::default()
                },
            );
        }
        loop {
            let line = match self.read_line().await {
                Ok(l) => l,
                Err(ReadError::Shutdown) => {
                    // RFC 5321 3.8: 421 when the service is shutting down.
                    self.reply("421 4.3.2 Server shutting down, try again later");
                    let _ = self.flush().await;
                    return "server shutdown".into();
                }
                Err(ReadError::Banned) => {
                    self.reply("421 4.7.0 Your address is banned, closing connection");
                    let _ = self.flush().await;
                    return "address banned".into();
                }
                Err(ReadError::Timeout) => {
                    self.reply("421 4.4.2 Idle timeout, closing connection");
                    let _ = self.flush().await;
                    return "timeout".into();
                }
                Err(e) => return e.reason(),
            };
            let flow = match line {
                Line::TooLong => {
                    self.error("500 5.5.2 Line too long");
                    Flow::Continue
                }
                Line::Ok(line) => {
                    self.pace().await;
                    self.command(line).await
                }
            };
            if let Flow::Close(reason) = flow {
                let _ = self.flush().await;
                return reason.into();
            }
            if let Some(reason) = self.closing {
                let _ = self.flush().await;
                return reason.into();
            }
            if self.errors >= self.server.config.max_errors {
                self.reply("421 4.7.0 Too many errors, closing connection");
                let _ = self.flush().await;
                return "too many errors".into();
            }
        }
    }

    fn error(&mut self, reply: &str) {
        self.errors += 1;
        self.reply(reply);
    }

    /// `smtp.commands_per_second`: a token bucket as deep as the rate; a command finding it
    /// empty waits for its token (replies already due are sent first).
    async fn pace(&mut self) {
        let wait = self.pacer.take(Instant::now());
        if !wait.is_zero() {
            let _ = self.flush().await;
            tokio::time::sleep(wait).await;
        }
    }

    async fn command(&mut self, line: Vec<u8>) -> Flow {
        // A CR anywhere but before the final LF is not a valid command line.
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.contains(&b'\r') || body.contains(&0) {
            self.error("500 5.5.2 Syntax error: bare CR or NUL in command");
            return Flow::Continue;
        }
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            self.error("500 5.5.2 Syntax error: empty command");
            return Flow::Continue;
        }
        let parsed = Request::parse(&mut line.iter()).map(|r| r.into_owned());
        match parsed {
            Ok(req) => self.handle(req, body).await,
            Err(e) => {
                let reply = match e {
                    ProtoError::UnknownCommand => "500 5.5.2 Command unrecognized".to_string(),
                    ProtoError::InvalidSenderAddress => {
                        "501 5.1.7 Bad sender address syntax".to_string()
                    }
                    ProtoError::InvalidRecipientAddress => {
                        "501 5.1.3 Bad recipient address syntax".to_string()
                    }
                    ProtoError::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}"),
                    ProtoError::InvalidParameter { param } => {
                        format!("501 5.5.4 Invalid parameter {param:?}")
                    }
                    ProtoError::UnsupportedParameter { param } => {
                        let p: String =
                            param.chars().filter(|c| !c.is_control()).take(64).collect();
                        format!("555 5.5.4 Unsupported parameter {p:?}")
                    }
                    _ => "500 5.5.2 Syntax error".to_string(),
                };
                self.error(&reply);
                Flow::Continue
            }
        }
    }

    async fn handle(&mut self, req: Request<String>, raw: &[u8]) -> Flow {
        match req {
            // RFC 5321 4.1.1.1: exactly one argument, a domain or an address literal.
            Request::Ehlo { .. } | Request::Helo { .. }
                if raw
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|t| !t.is_empty())
                    .count()
                    != 2 =>
            {
                self.error("501 5.5.4 Syntax: EHLO domain-or-address-literal")
            }
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::Lhlo { .. } => self.error("500 5.5.1 LHLO is for LMTP"),
            Request::StartTls => return self.starttls(raw).await,
            // RFC 3461 4: ENVID and ORCPT decode to printable US-ASCII, or the decoded bytes
            // would reach bounces, the queue and the log.
            Request::Mail { from } => match dsn_params::check(raw) {
                Ok(()) => self.mail(from).await,
                Err(reply) => self.error(&reply),
            },
            Request::Rcpt { to } => match dsn_params::check(raw) {
                Ok(()) => self.rcpt(to).await,
                Err(reply) => self.error(&reply),
            },
            Request::Data => return self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => return self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                if let Some(tx) = self.tx.take() {
                    self.log_tx_abandoned(&tx, "RSET");
                }
                self.reply("250 2.0.0 Reset");
            }
            Request::Noop { .. } => self.reply("250 2.0.0 OK"),
            Request::Quit => {
                let bye = format!("221 2.0.0 {} closing connection", self.server.hostname);
                self.reply(&bye);
                return Flow::Close("quit");
            }
            // RFC 5321 3.5.3: 252 without confirming anything (no user enumeration).
            Request::Vrfy { .. } => self
                .reply("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
            Request::Expn { .. } => self.reply("502 5.5.1 EXPN not available"),
            Request::Help { .. } => {
                self.reply("214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS");
                self.reply("214 2.0.0 See RFC 5321");
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response).await,
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.error("502 5.5.1 Command not implemented")
            }
        }
        Flow::Continue
    }

    /// Whether a password may be sent here now (RFC 4954 4: not in the clear, except from
    /// loopback when the config allows it).
    fn auth_allowed(&self) -> bool {
        self.tls.is_some()
            || self.server.submission.as_ref().is_some_and(|s| {
                s.auth.plaintext == mailkeep_config::Plaintext::Loopback
                    && self.peer.ip().is_loopback()
            })
    }

    /// Submission: why the authenticated user may not send as `address`, as a reply, or
    /// None when they may (and always None on the MX).
    async fn not_sendable(&mut self, address: &Address, what: &str) -> Option<String> {
        self.server.submission.as_ref()?;
        let user = self.user.as_ref()?;
        let store = self.server.delivery.store();
        match mailkeep_store::directory::may_send_as(
            store.as_ref(),
            user,
            address,
            self.server.delivery.plus_separator(),
        )
        .await
        {
            Ok(true) => None,
            Ok(false) => Some(format!(
                "553 5.7.1 {what} {address} is not one {} may send as",
                user.address
            )),
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "directory lookup failed");
                Some("451 4.3.0 Temporary lookup failure, try again later".into())
            }
        }
    }

    /// Reads one line of a SASL exchange (RFC 4954 4): its decoded bytes, or how it ended.
    async fn sasl_line(&mut self) -> Result<Vec<u8>, SaslEnd> {
        let line = match self.read_line().await {
            Ok(Line::Ok(l)) => l,
            Ok(Line::TooLong) => {
                self.error("500 5.5.6 Authentication exchange line is too long");
                return Err(SaslEnd::Replied);
            }
            Err(e) => return Err(SaslEnd::Lost(e)),
        };
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text == "*" {
            self.error("501 5.0.0 Authentication cancelled");
            return Err(SaslEnd::Replied);
        }
        self.decode_b64(text).ok_or(SaslEnd::Replied)
    }

    fn decode_b64(&mut self, text: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
            Ok(d) => Some(d),
            Err(_) => {
                self.error("501 5.5.2 Cannot decode the base64 response");
                None
            }
        }
    }

    /// AUTH (RFC 4954) with PLAIN (RFC 4616) or LOGIN, on submission only.
    async fn auth(&mut self, mechanism: u64, initial: String) -> Flow {
        let Some(sub) = self.server.submission.clone() else {
            self.error("503 5.5.1 AUTH is not available on this port: use submission");
            return Flow::Continue;
        };
        if self.user.is_some() {
            // RFC 4954 4: at most one successful AUTH per session.
            self.error("503 5.5.1 Already authenticated");
            return Flow::Continue;
        }
        if self.tx.is_some() {
            self.error("503 5.5.1 AUTH is not allowed during a mail transaction");
            return Flow::Continue;
        }
        if !self.esmtp {
            self.error("503 5.5.1 Send EHLO first");
            return Flow::Continue;
        }
        if !self.auth_allowed() {
            self.error("538 5.7.11 Encryption required for requested authentication mechanism");
            return Flow::Continue;
        }
        let initial = match initial.as_str() {
            "" => None,
            // RFC 4954 4: "=" is an empty initial response.
            "=" => Some(Vec::new()),
            text => match self.decode_b64(text) {
                Some(d) => Some(d),
                None => return Flow::Continue,
            },
        };
        let (mech, credentials) = match mechanism {
            smtp_proto::AUTH_PLAIN => ("PLAIN", self.auth_plain(initial).await),
            smtp_proto::AUTH_LOGIN => ("LOGIN", self.auth_login(initial).await),
            _ => {
                self.error("504 5.5.4 Unrecognized authentication type: use PLAIN or LOGIN");
                return Flow::Continue;
            }
        };
        let (login, password) = match credentials {
            Ok(c) => c,
            Err(SaslEnd::Replied) => return Flow::Continue,
            Err(SaslEnd::Lost(e)) => {
                return Flow::Close(match e {
                    ReadError::Timeout => "timeout",
                    _ => "client closed the connection",
                })
            }
        };
        let request = mailkeep_auth::LoginRequest {
            session: &self.id,
            ip: self.peer.ip(),
            protocol: "smtp",
            kind: "smtp.auth",
            mechanism: mech,
            tls: self.tls.is_some(),
            login: &login,
            password: &password,
        };
        let (mut outcome, event) = match sub.guard.check(&sub.logins, request).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "login check failed");
                self.reply("454 4.7.0 Temporary authentication failure");
                return Flow::Continue;
            }
        };
        self.log("smtp.auth", event);
        outcome.pause().await;
        let mailkeep_auth::Outcome {
            user,
            banned,
            locked,
            busy,
            ..
        } = outcome;
        match user {
            Some(u) => {
                tracing::info!(session = %self.id, user = %u.address, "submission login");
                self.shutdown.logged_in();
                self.user = Some(u);
                self.reply("235 2.7.0 Authentication successful");
                Flow::Continue
            }
            None => {
                if busy {
                    // RFC 4954 6: a temporary failure; nothing was checked or counted.
                    self.reply("454 4.7.0 Too many logins at once, try again shortly");
                    return Flow::Continue;
                }
                self.auth_failures += 1;
                if locked {
                    // RFC 4954 6: a temporary failure; the account is under attack.
                    self.error(
                        "454 4.7.0 Too many failed logins for this account, try again later",
                    );
                } else {
                    self.error("535 5.7.8 Authentication credentials invalid");
                }
                if banned {
                    self.reply("421 4.7.0 Too many failed logins: your address is banned");
                    return Flow::Close("address banned");
                }
                if self.auth_failures >= sub.auth.max_failures {
                    self.reply("421 4.7.0 Too many failed logins, closing connection");
                    return Flow::Close("too many failed logins");
                }
                Flow::Continue
            }
        }
    }

    /// PLAIN: `authzid NUL authcid NUL passwd`; acting as someone else is refused.
    async fn auth_plain(&mut self, initial: Option<Vec<u8>>) -> Result<(String, String), SaslEnd> {
        let raw = match initial {
            Some(r) => r,
            None => {
                self.reply("334 ");
                self.sasl_line().await?
            }
        };
        match mailkeep_net::sasl::parse_plain(raw) {
            Ok(p) if p.authzid.is_empty() || p.authzid == p.authcid => Ok((p.authcid, p.password)),
            Ok(_) => {
                self.error("535 5.7.8 Acting as another user is not allowed");
                Err(SaslEnd::Replied)
            }
            Err(e) => {
                self.error(&format!("501 5.5.2 {e}"));
                Err(SaslEnd::Replied)
            }
        }
    }

    /// LOGIN (draft-murchison-sasl-login): the user name, then the password, each asked for.
    async fn auth_login(&mut self, initial: Option<Vec<u8>>) -> Result<(String, String), SaslEnd> {
        let user = match initial {
            Some(u) => u,
            None => {
                self.reply("334 VXNlcm5hbWU6"); // "Username:"
                self.sasl_line().await?
            }
        };
        self.reply("334 UGFzc3dvcmQ6"); // "Password:"
        let password = self.sasl_line().await?;
        match (String::from_utf8(user), String::from_utf8(password)) {
            (Ok(u), Ok(p)) => Ok((u, p)),
            _ => {
                self.error("501 5.5.2 The user name and password must be UTF-8");
                Err(SaslEnd::Replied)
            }
        }
    }

    fn hello(&mut self, host: String, esmtp: bool) {
        // RFC 5321 4.1.1.1: a domain or an address literal.
        let valid = !host.is_empty()
            && host.len() <= 255
            && host
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'));
        if !valid {
            self.error("501 5.5.4 Invalid EHLO/HELO domain");
            return;
        }
        if let Some(tx) = self.tx.take() {
            // RFC 5321 4.1.4: EHLO resets the transaction.
            self.log_tx_abandoned(&tx, "EHLO");
        }
        self.helo = Some(host.clone());
        self.esmtp = esmtp;
        self.log(
            "smtp.helo",
            LogEvent {
                detail: serde_json::json!({ "helo": host, "esmtp": esmtp }),
                ..Default::default()
            },
        );
        let hostname = self.server.hostname.clone();
        if !esmtp {
            self.reply(&format!("250 {hostname}"));
            return;
        }
        let mut lines = vec![
            format!("{hostname} greets {host}"),
            "PIPELINING".into(),
            format!("SIZE {}", self.server.config.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.server.tls.is_some() && self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        // RFC 8689 3: REQUIRETLS is offered on TLS sessions only.
        if self.tls.is_some() {
            lines.push("REQUIRETLS".into());
        }
        // RFC 4954 3: submission only, and only where a password may be sent.
        if self.server.submission.is_some() && self.auth_allowed() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.wbuf
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
    }

    async fn starttls(&mut self, raw: &[u8]) -> Flow {
        let Some(tls) = self.server.tls.clone() else {
            self.error("502 5.5.1 STARTTLS not available");
            return Flow::Continue;
        };
        if self.tls.is_some() {
            self.error("503 5.5.1 TLS already active");
            return Flow::Continue;
        }
        if raw.len() > "STARTTLS".len() {
            self.error("501 5.5.4 STARTTLS takes no parameters");
            return Flow::Continue;
        }
        self.reply("220 2.0.0 Ready to start TLS");
        if self.flush().await.is_err() {
            return Flow::Close("client closed the connection");
        }
        // RFC 3207 5 / CVE-2011-0411: anything pipelined after STARTTLS arrived in plaintext
        // and must not be executed inside the TLS session.
        if !self.rbuf.is_empty() {
            self.log(
                "smtp.starttls_injection",
                LogEvent {
                    outcome: Some("discarded".into()),
                    detail: serde_json::json!({ "bytes": self.rbuf.len() }),
                    ..Default::default()
                },
            );
        }
        self.rbuf.clear();
        let Conn::Plain(stream) = std::mem::replace(&mut self.conn, Conn::Upgrading) else {
            return Flow::Close("STARTTLS on a TLS connection");
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let hs =
            tokio::time::timeout(self.server.config.command_timeout, acceptor.accept(stream)).await;
        match hs {
            Ok(Ok(stream)) => {
                let (version, cipher) = tls_info(stream.get_ref().1);
                self.log(
                    "smtp.tls",
                    LogEvent {
                        outcome: Some("accepted".into()),
                        detail: serde_json::json!({ "version": version, "cipher": cipher }),
                        ..Default::default()
                    },
                );
                self.tls = Some(TlsInfo { version, cipher });
                self.conn = Conn::Tls(Box::new(stream));
                // RFC 3207 4.2: forget everything learned before TLS.
                self.helo = None;
                self.esmtp = false;
                if let Some(tx) = self.tx.take() {
                    self.log_tx_abandoned(&tx, "STARTTLS");
                }
                Flow::Continue
            }
            Ok(Err(e)) => {
                self.log(
                    "smtp.tls",
                    LogEvent {
                        outcome: Some("failed".into()),
                        detail: serde_json::json!({ "error": e.to_string() }),
                        ..Default::default()
                    },
                );
                Flow::Close("TLS handshake failed")
            }
            Err(_) => Flow::Close("TLS handshake timed out"),
        }
    }

    async fn mail(&mut self, from: smtp_proto::MailFrom<String>) {
        if self.helo.is_none() {
            self.error("503 5.5.1 Send EHLO or HELO first");
            return;
        }
        // RFC 6409 4.3 / RFC 4954 6: submission takes mail from authenticated users only.
        if self.server.submission.is_some() && self.user.is_none() {
            self.error("530 5.7.0 Authentication required");
            return;
        }
        if self.tx.is_some() {
            self.error("503 5.5.1 Nested MAIL command");
            return;
        }
        // The MX asks its DNS blocklists about the client once per session.
        if let Some(zone) = self.dnsbl_listing().await {
            if !self.server.dnsbl.as_ref().is_some_and(|d| d.junk) {
                let r = format!(
                    "554 5.7.1 Service unavailable; client [{}] is listed on {zone}",
                    self.peer.ip()
                );
                self.error(&r);
                return;
            }
        }
        let per_connection = self.server.config.max_messages_per_connection;
        if per_connection > 0 && self.messages >= per_connection {
            self.reply("421 4.7.0 Too many messages in one connection; reconnect to send more");
            self.closing = Some("too many messages in one connection");
            return;
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        let eightbit = from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0;
        if !self.esmtp && (smtputf8 || eightbit || from.size > 0 || from.env_id.is_some()) {
            self.error("555 5.5.4 Parameters need EHLO");
            return;
        }
        // RFC 5321 4.1.1.11: parameters of extensions we did not advertise are refused.
        let requiretls = from.flags & smtp_proto::MAIL_REQUIRETLS != 0;
        if requiretls && self.tls.is_none() {
            // RFC 5321 4.1.1.11: not advertised without TLS (RFC 8689 3), so refused as an
            // unknown parameter, saying why.
            self.error("555 5.7.10 REQUIRETLS is offered only over TLS");
            return;
        }
        let unadvertised = smtp_proto::MAIL_BODY_BINARYMIME
            | smtp_proto::MAIL_CONPERM
            | smtp_proto::MAIL_BY_NOTIFY
            | smtp_proto::MAIL_BY_RETURN
            | smtp_proto::MAIL_BY_TRACE;
        if from.flags & unadvertised != 0
            || from.trans_id.is_some()
            || from.solicit.is_some()
            || from.mtrk.is_some()
            || (from.auth.is_some() && self.server.submission.is_none())
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mt_priority != 0
        {
            self.error("555 5.5.4 MAIL parameter not supported");
            return;
        }
        let max = self.server.config.max_message_size;
        // RFC 1870 6.2: a declared size over the limit is refused at MAIL.
        if from.size as u64 > max {
            let r = format!("552 5.3.4 Message size exceeds fixed maximum message size ({max})");
            self.reply(&r);
            self.log(
                "smtp.mail",
                LogEvent {
                    sender: Some(from.address.clone()),
                    outcome: Some("rejected".into()),
                    reply: Some(r),
                    ..Default::default()
                },
            );
            return;
        }
        let sender = from.address.clone();
        // The MX takes at most `smtp.max_messages_per_sender_domain` messages an hour from
        // one MAIL FROM domain, from all clients together.
        let domain_limit = self.server.config.max_messages_per_sender_domain;
        if let (true, Some((_, domain))) = (
            self.server.submission.is_none() && domain_limit > 0,
            sender.rsplit_once('@'),
        ) {
            let now = now_micros() / 1_000_000;
            if !self.server.rates.within(domain, now, domain_limit) {
                let r = format!(
                    "451 4.7.1 Too many messages from {} this hour; try again later",
                    domain.chars().take(255).collect::<String>()
                );
                self.reply(&r);
                self.log(
                    "smtp.mail",
                    LogEvent {
                        sender: Some(sender.clone()),
                        outcome: Some("tempfail".into()),
                        reply: Some(r),
                        ..Default::default()
                    },
                );
                return;
            }
        }
        if !sender.is_empty() {
            // RFC 6531 3.5: a UTF-8 address without SMTPUTF8 is refused with 553 5.6.7.
            if !sender.is_ascii() && !smtputf8 {
                self.error("553 5.6.7 Non-ASCII address requires SMTPUTF8");
                return;
            }
            let parsed = match Address::parse(&sender) {
                Ok(a) => a,
                Err(e) => {
                    self.error(&format!("553 5.1.7 Bad sender address: {e}"));
                    return;
                }
            };
            // RFC 6409 6.1: the submission server checks the sender it is given.
            if let Some(reply) = self.not_sendable(&parsed, "Sender address").await {
                self.error(&reply);
                self.log(
                    "smtp.mail",
                    LogEvent {
                        sender: Some(sender.clone()),
                        outcome: Some("rejected".into()),
                        reply: Some(reply),
                        ..Default::default()
                    },
                );
                return;
            }
        }
        let queue_id = QueueId::new(now_micros() as u64, rand::random());
        self.tx = Some(Transaction {
            queue_id,
            sender: sender.clone(),
            smtputf8,
            requiretls,
            body: eightbit.then_some("8BITMIME"),
            declared_size: from.size as u64,
            dsn_ret: if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
                Some("FULL")
            } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
                Some("HDRS")
            } else {
                None
            },
            dsn_envid: from.env_id.clone(),
            rcpts: Vec::new(),
            bdat: None,
            bdat_too_big: false,
            started: Instant::now(),
            usage: None,
            new_recipients: Vec::new(),
        });
        let r = "250 2.1.0 Sender OK";
        self.reply(r);
        self.log(
            "smtp.mail",
            LogEvent {
                outcome: Some("accepted".into()),
                reply: Some(r.into()),
                detail: serde_json::json!({
                    "size": from.size, "smtputf8": smtputf8, "requiretls": requiretls, "body": eightbit.then_some("8BITMIME"),
                    "ret": self.tx.as_ref().and_then(|t| t.dsn_ret), "envid": from.env_id,
                }),
                ..Default::default()
            },
        );
    }

    fn rcpt_reply(&mut self, address: &str, reply: String, outcome: &str, error: bool) {
        if error {
            self.errors += 1;
        }
        self.reply(&reply);
        self.log(
            "smtp.rcpt",
            LogEvent {
                recipient: Some(address.to_string()),
                outcome: Some(outcome.into()),
                reply: Some(reply),
                ..Default::default()
            },
        );
    }

    async fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) {
        let Some(tx) = self.tx.as_ref() else {
            self.error("503 5.5.1 Need MAIL before RCPT");
            return;
        };
        // RFC 5321 4.1.1.11: RRVS (RFC 7293) and CONNEG were not advertised.
        let unadvertised =
            smtp_proto::RCPT_RRVS_REJECT | smtp_proto::RCPT_RRVS_CONTINUE | smtp_proto::RCPT_CONNEG;
        if to.flags & unadvertised != 0 || to.rrvs != 0 {
            self.error("555 5.5.4 RCPT parameter not supported");
            return;
        }
        let smtputf8 = tx.smtputf8;
        let declared = tx.declared_size;
        let count = tx.rcpts.len();
        let mut raw = to.address.clone();
        if raw.is_empty() {
            // RFC 5321 4.5.1: <postmaster> without a domain must be accepted.
            match &self.server.primary_domain {
                Some(d) => raw = format!("postmaster@{d}"),
                None => {
                    self.rcpt_reply(
                        "postmaster",
                        "550 5.1.1 No postmaster here".into(),
                        "rejected",
                        true,
                    );
                    return;
                }
            }
        }
        let per_connection = self.server.config.max_recipients_per_connection;
        if per_connection > 0 && self.rcpts_total >= per_connection {
            self.rcpt_reply(
                &raw,
                "452 4.5.3 Too many recipients in this connection; reconnect to send more".into(),
                "tempfail",
                false,
            );
            return;
        }
        // RFC 5321 4.5.3.1.10: too many recipients is a temporary 452.
        if count >= self.server.config.max_recipients {
            self.rcpt_reply(
                &raw,
                "452 4.5.3 Too many recipients".into(),
                "tempfail",
                false,
            );
            return;
        }
        if !raw.is_ascii() && !smtputf8 {
            self.rcpt_reply(
                &raw,
                "553 5.6.7 Non-ASCII address requires SMTPUTF8".into(),
                "rejected",
                true,
            );
            return;
        }
        // A bounce to an SRS address of ours (which may exceed the 64 octets of a local
        // part) goes back to the sender it stands for.
        if self.srs_recipient(&raw, &to).await.is_some() {
            return;
        }
        let address = match Address::parse(&raw) {
            Ok(a) => a,
            Err(e) => {
                self.rcpt_reply(
                    &raw,
                    format!("501 5.1.3 Bad recipient address: {e}"),
                    "rejected",
                    true,
                );
                return;
            }
        };
        let resolution = match self.server.delivery.resolve(&address).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "directory lookup failed");
                self.rcpt_reply(
                    &raw,
                    "451 4.3.0 Temporary lookup failure, try again later".into(),
                    "tempfail",
                    false,
                );
                return;
            }
        };
        let (local, external) = match resolution {
            // Submission sends anywhere: other domains go to the outbound queue.
            Resolution::NotLocal if self.user.is_some() => {
                if let Some(reply) = self.outbound_limit(&address).await {
                    self.rcpt_reply(&raw, reply, "tempfail", false);
                    return;
                }
                if self.server.outbound.is_none() {
                    self.rcpt_reply(
                        &raw,
                        "451 4.3.2 Delivery to other domains is not available here".into(),
                        "tempfail",
                        false,
                    );
                    return;
                }
                let rcpt = Rcpt {
                    address: address.to_string(),
                    targets: Vec::new(),
                    notify: rcpt_notify(&to),
                    orcpt: rcpt_orcpt(&to),
                    remote: true,
                    forward: Vec::new(),
                    forward_as: None,
                };
                if let Some(tx) = self.tx.as_mut() {
                    tx.rcpts.push(rcpt);
                    self.rcpts_total += 1;
                }
                let reply = "250 2.1.5 Recipient OK (relayed for you)".to_string();
                self.rcpt_reply(&raw, reply, "accepted", false);
                return;
            }
            // No relaying without authentication, ever: the MX only takes mail for its domains.
            Resolution::NotLocal => {
                self.rcpt_reply(
                    &raw,
                    "554 5.7.1 Relay access denied".into(),
                    "rejected",
                    true,
                );
                return;
            }
            Resolution::Unknown => {
                self.rcpt_reply(&raw, "550 5.1.1 No such user here".into(), "rejected", true);
                return;
            }
            Resolution::TooDeep => {
                self.rcpt_reply(
                    &raw,
                    "550 5.4.6 Alias expansion loop or too many targets".into(),
                    "rejected",
                    true,
                );
                return;
            }
            Resolution::Targets { local, external } => (local, external),
        };
        // Greylisting (the MX, RFC 6647): a triplet's first attempt is deferred.
        if let Some(reply) = self.greylist(&address).await {
            self.rcpt_reply(&raw, reply, "tempfail", false);
            return;
        }
        // Aliases with targets elsewhere: submitted mail goes there like any mail to other
        // domains; on the MX the message is forwarded (SRS, ARC seal) when forwarding is on.
        let can_forward = self.server.outbound.is_some()
            && (self.user.is_some() || self.server.forwarding.enabled);
        let forward: Vec<String> = if external.is_empty() {
            Vec::new()
        } else if can_forward {
            external.iter().map(|a| a.to_string()).collect()
        } else if local.is_empty() {
            self.rcpt_reply(
                &raw,
                "550 5.7.1 Forwarding to other domains is turned off here".into(),
                "rejected",
                true,
            );
            return;
        } else {
            // A mixed alias keeps its local copies; the skipped targets are on record.
            self.log(
                "smtp.forward_refused",
                LogEvent {
                    recipient: Some(address.to_string()),
                    outcome: Some("rejected".into()),
                    detail: serde_json::json!({
                        "reason": "forwarding is turned off",
                        "targets": external.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    }),
                    ..Default::default()
                },
            );
            Vec::new()
        };
        if !forward.is_empty() && local.is_empty() {
            self.accept_forward(&raw, &to, forward, address.domain().to_string());
            return;
        }
        // Quota (RFC 3463 4.2.2 mailbox full): refuse when every target is full.
        let room: Vec<LocalTarget> = local
            .into_iter()
            .filter(|t| !t.over_quota(declared))
            .collect();
        if room.is_empty() && !forward.is_empty() {
            // Every local copy is over quota; the forwarded ones still go.
            self.accept_forward(&raw, &to, forward, address.domain().to_string());
            return;
        }
        if room.is_empty() {
            let reply = match self.server.config.quota_reply {
                QuotaReply::Temporary => "452 4.2.2 Mailbox full",
                QuotaReply::Permanent => "552 5.2.2 Mailbox full",
            };
            let outcome = match self.server.config.quota_reply {
                QuotaReply::Temporary => "tempfail",
                QuotaReply::Permanent => "rejected",
            };
            self.rcpt_reply(&raw, reply.into(), outcome, false);
            return;
        }
        let notify = rcpt_notify(&to);
        let forward_as = (!forward.is_empty()).then(|| address.domain().to_string());
        let rcpt = Rcpt {
            address: address.to_string(),
            targets: room,
            notify: notify.clone(),
            orcpt: rcpt_orcpt(&to),
            remote: false,
            forward,
            forward_as,
        };
        if let Some(tx) = self.tx.as_mut() {
            tx.rcpts.push(rcpt);
            self.rcpts_total += 1;
        }
        let reply = "250 2.1.5 Recipient OK".to_string();
        self.reply(&reply);
        self.log(
            "smtp.rcpt",
            LogEvent {
                recipient: Some(address.to_string()),
                outcome: Some("accepted".into()),
                reply: Some(reply),
                detail: serde_json::json!({
                    "notify": notify, "orcpt": to.orcpt,
                    "forward": self.tx.as_ref().and_then(|t| t.rcpts.last()).map(|r| r.forward.clone()),
                }),
                ..Default::default()
            },
        );
    }

    /// Submission: the reply refusing one more recipient in another domain when it would
    /// pass one of the account's outbound limits (`[limits]`), None when it is within them.
    async fn outbound_limit(&mut self, address: &Address) -> Option<String> {
        let limits = self.server.limits.clone();
        let account = self.user.as_ref()?.id;
        let store = self.server.delivery.store().clone();
        let tx = self.tx.as_ref()?;
        let remote = tx.rcpts.iter().filter(|r| r.remote).count() as u32;
        if limits.recipients_per_message > 0 && remote >= limits.recipients_per_message {
            return Some(format!(
                "451 4.7.1 Limit reached: at most {} recipients in other domains per message; \
                 send to the others in another message",
                limits.recipients_per_message
            ));
        }
        let usage = match tx.usage {
            Some(u) => u,
            None => {
                let now = now_micros() / 1_000_000;
                let read = async {
                    let hour = store.usage_since(account, now - 3600).await?;
                    let day = store.usage_since(account, now - 86_400).await?;
                    Ok::<_, mailkeep_store::StoreError>((hour, day))
                };
                match read.await {
                    Ok(u) => {
                        if let Some(tx) = self.tx.as_mut() {
                            tx.usage = Some(u);
                        }
                        u
                    }
                    Err(e) => {
                        tracing::error!(session = %self.id, error = %e, "reading the outbound usage failed");
                        return Some("451 4.3.0 Temporary failure, try again later".into());
                    }
                }
            }
        };
        let (hour, day) = usage;
        if limits.messages_per_hour > 0 && hour.messages >= limits.messages_per_hour {
            return Some(format!(
                "451 4.7.1 Limit reached: {} messages to other domains per hour; try again later",
                limits.messages_per_hour
            ));
        }
        if limits.messages_per_day > 0 && day.messages >= limits.messages_per_day {
            return Some(format!(
                "451 4.7.1 Limit reached: {} messages to other domains per day; try again later",
                limits.messages_per_day
            ));
        }
        if limits.new_recipients_per_day > 0 {
            let key = address.key();
            let in_message = self
                .tx
                .as_ref()
                .is_some_and(|t| t.new_recipients.contains(&key));
            let known = in_message
                || match store
                    .recipients_known(account, std::slice::from_ref(&key))
                    .await
                {
                    Ok(k) => k.first().copied().unwrap_or(false),
                    Err(e) => {
                        tracing::error!(session = %self.id, error = %e, "reading known recipients failed");
                        return Some("451 4.3.0 Temporary failure, try again later".into());
                    }
                };
            if !known {
                let pending = self.tx.as_ref().map_or(0, |t| t.new_recipients.len()) as u32;
                if day.new_recipients + pending >= limits.new_recipients_per_day {
                    return Some(format!(
                        "451 4.7.1 Limit reached: {} new recipients (never written to before) per day; \
                         try again later",
                        limits.new_recipients_per_day
                    ));
                }
                if let Some(tx) = self.tx.as_mut() {
                    tx.new_recipients.push(key);
                }
            }
        }
        None
    }

    /// A complaint about a message: it counts towards the sender's complaint rate
    /// (`limits.hold_complaint_rate`) only when the sender is one of our users, the
    /// delivery log shows that user submitting a message with that Message-ID (the report's
    /// author wrote every field of it, so anything less would let anyone put any account on
    /// hold), and that message was not complained of before.
    async fn count_complaint(&mut self, c: mailkeep_verify::Complaint) {
        let Ok(address) = Address::parse(&c.sender) else {
            return;
        };
        let store = self.server.delivery.store().clone();
        let user = match store.user_get(&address.key()).await {
            Ok(Some(u)) => u,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(session = %self.id, error = %e, "looking up a complained-of sender failed");
                return;
            }
        };
        let login = user.address.key();
        let sent_at = match &c.message_id {
            Some(id) => self.submitted_at(&store, id, &login).await,
            None => None,
        };
        let repeated = match (&c.message_id, sent_at) {
            (Some(id), Some(_)) => {
                let filter = mailkeep_store::LogFilter {
                    message_id: Some(id.clone()),
                    kind: Some("smtp.complaint".into()),
                    outcome: Some("accepted".into()),
                    limit: 1,
                    ..Default::default()
                };
                matches!(store.log_search(&filter).await, Ok(e) if !e.is_empty())
            }
            _ => false,
        };
        let (outcome, why) = match (sent_at, repeated) {
            (None, _) => ("ignored", "no such message submitted by the account"),
            (Some(_), true) => ("ignored", "the message was complained of before"),
            (Some(_), false) => ("accepted", "counted"),
        };
        self.log(
            "smtp.complaint",
            LogEvent {
                sender: Some(login.clone()),
                message_id: c.message_id.clone(),
                outcome: Some(outcome.into()),
                detail: serde_json::json!({ "account": login, "result": why }),
                ..Default::default()
            },
        );
        // The complaint counts at the time the message was sent, against what the account
        // sent then.
        if let (Some(at), false, Some(watch)) = (sent_at, repeated, self.server.watch.clone()) {
            watch
                .signal(
                    user.id,
                    mailkeep_store::Signal::Complaint,
                    1,
                    &self.id,
                    at,
                    now_micros() / 1_000_000,
                )
                .await;
        }
    }

    /// When (Unix seconds) the user with login `login` submitted the message `message_id`,
    /// by the delivery log: a submission session where they logged in and a message with
    /// that id was accepted.
    async fn submitted_at(
        &self,
        store: &mailkeep_store::SharedStore,
        message_id: &str,
        login: &str,
    ) -> Option<i64> {
        let filter = mailkeep_store::LogFilter {
            message_id: Some(message_id.to_string()),
            kind: Some("smtp.data".into()),
            outcome: Some("accepted".into()),
            limit: 20,
            ..Default::default()
        };
        let events = store.log_search(&filter).await.ok()?;
        let mut sessions = std::collections::HashMap::<&str, (bool, Option<i64>)>::new();
        for e in &events {
            let s = sessions.entry(e.session.as_str()).or_default();
            if e.kind == "smtp.auth"
                && e.outcome.as_deref() == Some("accepted")
                && e.recipient
                    .as_deref()
                    .is_some_and(|r| r.eq_ignore_ascii_case(login))
            {
                s.0 = true;
            }
            if e.kind == "smtp.data"
                && e.outcome.as_deref() == Some("accepted")
                && e.message_id.as_deref() == Some(message_id)
            {
                s.1 = Some(e.ts / 1_000_000);
            }
        }
        sessions
            .values()
            .filter_map(|(authed, at)| if *authed { *at } else { None })
            .min()
    }

    /// Scans the message with clamd when configured: the reply refusing it (554 infected,
    /// 451 when clamd gives no verdict and the policy is to fail closed), None to go on.
    async fn virus_check(&mut self, msg: &[u8]) -> Option<String> {
        let av = self.server.antivirus.clone()?;
        match av.clamd.scan(msg).await {
            Ok(mailkeep_policy::antivirus::Verdict::Clean) => {
                self.virus_clean = true;
                self.log(
                    "smtp.antivirus",
                    LogEvent {
                        outcome: Some("accepted".into()),
                        detail: serde_json::json!({ "result": "clean" }),
                        ..Default::default()
                    },
                );
                None
            }
            Ok(mailkeep_policy::antivirus::Verdict::Infected(name)) => {
                let name: String = name.chars().filter(|c| !c.is_control()).take(200).collect();
                tracing::info!(session = %self.id, virus = %name, "infected message refused");
                self.log(
                    "smtp.antivirus",
                    LogEvent {
                        outcome: Some("rejected".into()),
                        detail: serde_json::json!({ "result": "infected", "virus": name }),
                        ..Default::default()
                    },
                );
                Some(format!(
                    "554 5.7.1 Message refused: it contains a virus ({name})"
                ))
            }
            Err(e) => {
                tracing::warn!(session = %self.id, error = %e, "virus scan failed");
                self.log(
                    "smtp.antivirus",
                    LogEvent {
                        outcome: Some(if av.fail_open { "accepted" } else { "tempfail" }.into()),
                        detail: serde_json::json!({
                            "result": "error", "error": e.to_string(), "fail_open": av.fail_open,
                        }),
                        ..Default::default()
                    },
                );
                (!av.fail_open).then(|| {
                    "451 4.3.0 The virus scanner is unavailable, try again later".to_string()
                })
            }
        }
    }

    /// The first of the MX's DNS blocklists that lists the client (asked once a session),
    /// or None. A list that gives no answer counts as not listing it.
    async fn dnsbl_listing(&mut self) -> Option<String> {
        if self.server.submission.is_some() {
            return None;
        }
        if let Some(v) = &self.dnsbl {
            return v.clone();
        }
        let lists = self.server.dnsbl.clone()?;
        let ip = self.peer.ip();
        let mut found = None;
        for zone in &lists.zones {
            match mailkeep_policy::dnsbl::lookup(&lists.resolver, ip, zone).await {
                mailkeep_policy::dnsbl::Listing::Clean => {}
                mailkeep_policy::dnsbl::Listing::Listed { code, why } => {
                    self.log(
                        "smtp.dnsbl",
                        LogEvent {
                            outcome: Some(if lists.junk { "junk" } else { "rejected" }.into()),
                            detail: serde_json::json!({
                                "list": zone, "code": code,
                                "reason": why.chars().take(300).collect::<String>(),
                            }),
                            ..Default::default()
                        },
                    );
                    found = Some(zone.clone());
                    break;
                }
                mailkeep_policy::dnsbl::Listing::Error(e) => {
                    tracing::debug!(session = %self.id, list = %zone, error = %e, "DNSBL gave no answer");
                }
            }
        }
        self.dnsbl = Some(found.clone());
        found
    }

    /// Whether `domain` or one of its parents is one of ours.
    async fn hosted_or_parent(&self, domain: &str) -> bool {
        let mut name = domain;
        loop {
            if let Ok(d) = Domain::parse(name) {
                if matches!(
                    self.server.delivery.store().domain_get(&d).await,
                    Ok(Some(_))
                ) {
                    return true;
                }
            }
            match name.split_once('.') {
                Some((_, parent)) if parent.contains('.') => name = parent,
                _ => return false,
            }
        }
    }

    /// Accepts a recipient whose mail is only forwarded to `targets` (by our domain
    /// `forward_as`).
    fn accept_forward(
        &mut self,
        raw: &str,
        to: &smtp_proto::RcptTo<String>,
        targets: Vec<String>,
        forward_as: String,
    ) {
        let notify = rcpt_notify(to);
        let reply = "250 2.1.5 Recipient OK (forwarded)".to_string();
        self.reply(&reply);
        self.log(
            "smtp.rcpt",
            LogEvent {
                recipient: Some(raw.to_string()),
                outcome: Some("accepted".into()),
                reply: Some(reply),
                detail: serde_json::json!({
                    "notify": notify, "orcpt": to.orcpt, "forward": targets, "forward_as": forward_as,
                }),
                ..Default::default()
            },
        );
        let rcpt = Rcpt {
            address: raw.to_string(),
            targets: Vec::new(),
            notify,
            orcpt: rcpt_orcpt(to),
            remote: false,
            forward: targets,
            forward_as: Some(forward_as),
        };
        if let Some(tx) = self.tx.as_mut() {
            tx.rcpts.push(rcpt);
            self.rcpts_total += 1;
        }
    }

    /// A recipient that is an SRS address of one of our domains (a bounce or reply to mail
    /// we forwarded) is answered here: Some. None when `raw` is not such an address (or
    /// forwarding or SRS is off), so normal resolution goes on.
    async fn srs_recipient(&mut self, raw: &str, to: &smtp_proto::RcptTo<String>) -> Option<()> {
        let outbound = self.server.outbound.as_ref()?;
        let srs = outbound.srs()?;
        let (local, domain) = raw.rsplit_once('@')?;
        if !mailkeep_queue::srs::is_srs(local) {
            return None;
        }
        let domain = Domain::parse(domain).ok()?;
        let hosted = matches!(
            self.server.delivery.store().domain_get(&domain).await,
            Ok(Some(_))
        );
        if !hosted {
            return None;
        }
        let today = mailkeep_queue::srs::day(now_micros() / 1_000_000);
        match srs.reverse(local, today) {
            Ok(original) => {
                self.accept_forward(raw, to, vec![original], domain.to_string());
            }
            // Not SRS after all (a local part like `srs0-team`): the directory decides.
            Err(
                mailkeep_queue::srs::SrsError::Malformed | mailkeep_queue::srs::SrsError::NotSrs,
            ) => {
                return None;
            }
            // One answer for a wrong hash and an old address, so guesses learn nothing; the
            // log says which.
            Err(e) => {
                self.rcpt_reply(raw, "550 5.1.1 No such user here".into(), "rejected", true);
                self.log(
                    "smtp.srs",
                    LogEvent {
                        recipient: Some(raw.to_string()),
                        outcome: Some("rejected".into()),
                        detail: serde_json::json!({ "error": e.to_string() }),
                        ..Default::default()
                    },
                );
            }
        }
        Some(())
    }

    async fn data(&mut self) -> Flow {
        match &self.tx {
            None => {
                self.error("503 5.5.1 Need MAIL command");
                return Flow::Continue;
            }
            Some(tx) if tx.bdat.is_some() => {
                self.error("503 5.5.1 DATA is not allowed after BDAT");
                return Flow::Continue;
            }
            // RFC 5321 3.3: DATA without a valid recipient gets 554 (or 503).
            Some(tx) if tx.rcpts.is_empty() => {
                self.error("554 5.5.1 No valid recipients");
                return Flow::Continue;
            }
            Some(_) => {}
        }
        self.reply("354 Start mail input; end with <CRLF>.<CRLF>");
        let cfg = &self.server.config;
        let mut dec = DataDecoder::new(
            cfg.max_message_size as usize,
            cfg.max_data_line,
            cfg.max_header_size,
        );
        loop {
            let (used, done) = dec.feed(&self.rbuf);
            self.rbuf.drain(..used);
            if done {
                break;
            }
            // Inside a message a shutdown does not interrupt: the transaction is finished.
            if let Err(e) = self.fill(self.server.config.data_timeout, false).await {
                if let Some(tx) = self.tx.take() {
                    self.log_tx_abandoned(&tx, &format!("during DATA: {}", e.reason()));
                }
                self.told_banned(&e).await;
                self.flush_log();
                return Flow::Close("connection lost during DATA");
            }
        }
        match dec.finish() {
            Ok(msg) => self.finish_message(msg, "DATA").await,
            Err(p) => self.refuse_message(p),
        }
        Flow::Continue
    }

    async fn bdat(&mut self, size: usize, last: bool) -> Flow {
        // RFC 3030 2: the chunk is read whatever happens, so the stream stays in sync.
        let max = self.server.config.max_message_size as usize;
        let ok_state = matches!(&self.tx, Some(tx) if !tx.rcpts.is_empty());
        let mut remaining = size;
        let mut chunk = Vec::new();
        let keep = ok_state && !self.tx.as_ref().is_some_and(|t| t.bdat_too_big);
        let current = self
            .tx
            .as_ref()
            .and_then(|t| t.bdat.as_ref().map(|b| b.len()))
            .unwrap_or(0);
        let fits = current.saturating_add(size) <= max;
        while remaining > 0 {
            if self.rbuf.is_empty() {
                if let Err(e) = self.fill(self.server.config.data_timeout, false).await {
                    if let Some(tx) = self.tx.take() {
                        self.log_tx_abandoned(&tx, &format!("during BDAT: {}", e.reason()));
                    }
                    self.told_banned(&e).await;
                    return Flow::Close("connection lost during BDAT");
                }
            }
            let n = remaining.min(self.rbuf.len());
            if keep && fits {
                chunk.extend_from_slice(&self.rbuf[..n]);
            }
            self.rbuf.drain(..n);
            remaining -= n;
        }
        if !ok_state {
            let r = if self.tx.is_none() {
                "503 5.5.1 Need MAIL command"
            } else {
                "554 5.5.1 No valid recipients"
            };
            self.error(r);
            return Flow::Continue;
        }
        let Some(tx) = self.tx.as_mut() else {
            return Flow::Continue;
        };
        let buf = tx.bdat.get_or_insert_with(Vec::new);
        if fits && !tx.bdat_too_big {
            buf.extend_from_slice(&chunk);
        } else {
            tx.bdat_too_big = true;
            buf.clear();
        }
        if !last {
            self.reply(&format!("250 2.0.0 {size} octets received"));
            return Flow::Continue;
        }
        if tx.bdat_too_big {
            self.refuse_message(DataProblem::TooBig);
            return Flow::Continue;
        }
        let data = tx.bdat.take().unwrap_or_default();
        let cfg = &self.server.config;
        match check_bdat(data, cfg.max_data_line, cfg.max_header_size) {
            Ok(msg) => self.finish_message(msg, "BDAT").await,
            Err(p) => self.refuse_message(p),
        }
        Flow::Continue
    }

    fn refuse_message(&mut self, p: DataProblem) {
        let cfg = &self.server.config;
        let reply = match p {
            DataProblem::TooBig => format!(
                "552 5.3.4 Message size exceeds fixed maximum message size ({})",
                cfg.max_message_size
            ),
            // Smuggling defence: see crate::data.
            DataProblem::BareLineBreak => {
                "550 5.6.11 Message refused: bare CR or LF in message data (only CRLF line endings are allowed)".into()
            }
            DataProblem::LineTooLong => format!(
                "552 5.6.0 Message refused: a line is longer than {} bytes",
                cfg.max_data_line
            ),
            DataProblem::HeaderTooBig => format!(
                "552 5.6.0 Message refused: header section larger than {} bytes",
                cfg.max_header_size
            ),
        };
        self.errors += 1;
        self.end_transaction(reply, "rejected", None, 0);
    }

    fn end_transaction(
        &mut self,
        reply: String,
        outcome: &str,
        message_id: Option<String>,
        size: usize,
    ) {
        self.reply(&reply);
        // A message taken counts against its sender domain's hourly allowance (the MX).
        if outcome == "accepted" && self.server.submission.is_none() {
            if let Some((_, domain)) = self.tx.as_ref().and_then(|t| t.sender.rsplit_once('@')) {
                self.server.rates.count(domain, now_micros() / 1_000_000);
            }
        }
        let duration = self
            .tx
            .as_ref()
            .map(|t| t.started.elapsed().as_millis() as u64);
        self.log(
            "smtp.data",
            LogEvent {
                outcome: Some(outcome.into()),
                reply: Some(reply),
                message_id,
                detail: serde_json::json!({ "size": size, "duration_ms": duration }),
                ..Default::default()
            },
        );
        self.tx = None;
    }

    fn received_header(&self, tx: &Transaction) -> String {
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let ip = self.peer.ip();
        let rdns = self.rdns.as_deref().unwrap_or("unknown");
        // RFC 3848 / RFC 6531: the "with" protocol.
        let mut with = if self.esmtp {
            "ESMTP".to_string()
        } else {
            "SMTP".to_string()
        };
        if tx.smtputf8 {
            with = "UTF8SMTP".into();
        }
        if self.tls.is_some() {
            with.push('S');
        }
        // RFC 3848 2: ESMTPA / ESMTPSA when the client authenticated.
        if self.user.is_some() {
            with.push('A');
        }
        let tls = match &self.tls {
            Some(t) => format!("\r\n\t(version={} cipher={})", t.version, t.cipher),
            None => String::new(),
        };
        // Naming the recipient only when there is one keeps Bcc recipients private.
        let for_clause = if tx.rcpts.len() == 1 {
            format!("\r\n\tfor <{}>", tx.rcpts[0].address)
        } else {
            String::new()
        };
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        format!(
            "Received: from {helo} ({rdns} [{ip}])\r\n\tby {} (mailkeep) with {with} id {}{tls}{for_clause};\r\n\t{date}\r\n",
            self.server.hostname, tx.queue_id
        )
    }

    /// Submission (RFC 6409 8): the From: and Sender: addresses must be the user's, and a
    /// missing Date or Message-ID is added. Unchanged on the MX. Err: the reply.
    async fn submitted(&mut self, msg: Vec<u8>) -> Result<Vec<u8>, String> {
        if self.server.submission.is_none() || self.user.is_none() {
            return Ok(msg);
        }
        let end = mailkeep_delivery::ingest::header_len(&msg);
        let header = &msg[..end];
        let parsed = mail_parser::MessageParser::new().parse_headers(header);
        let mut authors = Vec::new();
        if let Some(m) = &parsed {
            for list in [m.from(), m.sender()].into_iter().flatten() {
                authors.extend(list.iter().map(|a| a.address().unwrap_or("").to_string()));
            }
        }
        if authors.is_empty() {
            return Err("550 5.6.0 The message has no From: address (RFC 5322 3.6.2)".into());
        }
        for author in authors {
            let Ok(address) = Address::parse(&author) else {
                return Err(format!(
                    "553 5.7.1 From: address {:?} is not one you may send as",
                    author.chars().take(100).collect::<String>()
                ));
            };
            if let Some(reply) = self.not_sendable(&address, "From: address").await {
                return Err(reply);
            }
        }
        let has = |name: &[u8]| {
            header.split(|b| *b == b'\n').any(|l| {
                l.len() > name.len()
                    && l[..name.len()].eq_ignore_ascii_case(name)
                    && l[name.len()] == b':'
            })
        };
        let mut added = Vec::new();
        if !has(b"date") {
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc2822)
                .unwrap_or_default();
            added.extend_from_slice(format!("Date: {now}\r\n").as_bytes());
        }
        if !has(b"message-id") {
            let id = self
                .tx
                .as_ref()
                .map(|t| t.queue_id.0.clone())
                .unwrap_or_default();
            let nonce: u64 = rand::random();
            let host = &self.server.hostname;
            added.extend_from_slice(
                format!("Message-ID: <{id}.{nonce:016x}@{host}>\r\n").as_bytes(),
            );
        }
        if added.is_empty() {
            return Ok(msg);
        }
        added.extend_from_slice(&msg);
        Ok(added)
    }

    /// Keeps a DMARC or TLS report about a domain we host.
    async fn keep_report(&mut self, r: mailkeep_verify::ReceivedReport) {
        let store = self.server.delivery.store();
        let hosted = match Domain::parse(&r.domain) {
            Ok(d) => matches!(store.domain_get(&d).await, Ok(Some(_))),
            Err(_) => false,
        };
        if !hosted {
            return;
        }
        let received = mailkeep_store::ReceivedReport {
            kind: r.kind.into(),
            domain: r.domain.clone(),
            org: r.org.clone(),
            report_id: r.report_id.clone(),
            begin: r.begin,
            end: r.end,
            received: now_micros() / 1_000_000,
            data: r.json,
        };
        match store.received_report_add(received).await {
            Ok(new) => self.log(
                "report.received",
                LogEvent {
                    outcome: Some(if new { "accepted" } else { "duplicate" }.into()),
                    detail: serde_json::json!({
                        "kind": r.kind, "domain": r.domain, "org": r.org, "report_id": r.report_id,
                    }),
                    ..Default::default()
                },
            ),
            Err(e) => {
                tracing::warn!(session = %self.id, error = %e, "keeping a report failed")
            }
        }
    }

    /// Queues a submitted message for its recipients in other domains, durably. Err: the
    /// reply (the client keeps the message and retries).
    async fn enqueue(
        &mut self,
        queued: mailkeep_store::NewQueued,
        data: &[u8],
    ) -> Result<(), String> {
        let Some(outbound) = self.server.outbound.clone() else {
            return Err("451 4.3.2 Delivery to other domains is not available here".into());
        };
        let stored = outbound.submit(queued.clone(), data).await;
        if let Err(e) = stored {
            tracing::error!(session = %self.id, error = %e, "queueing a message failed");
            return Err("451 4.3.0 Could not queue the message, try again later".into());
        }
        for r in &queued.recipients {
            self.log(
                "queue.queued",
                LogEvent {
                    recipient: Some(r.address.clone()),
                    outcome: Some("accepted".into()),
                    detail: serde_json::json!({ "size": queued.size, "notify": r.notify }),
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    /// Queues the copy the MX forwards, durably: the envelope sender rewritten with SRS (by
    /// the forwarding domain; the null sender stays null), our ARC set on top, never signed
    /// by us. Err: the reply (the client keeps the message and retries).
    async fn forward(
        &mut self,
        recipients: Vec<mailkeep_store::QueueRecipient>,
        arc_set: Option<String>,
        data: &[u8],
    ) -> Result<(), String> {
        let Some(outbound) = self.server.outbound.clone() else {
            return Err("451 4.3.2 Forwarding is not available here".into());
        };
        let Some(tx) = self.tx.as_ref() else {
            return Err("503 5.5.1 No transaction".into());
        };
        let forward_as = tx
            .rcpts
            .iter()
            .find_map(|r| r.forward_as.clone())
            .unwrap_or_default();
        let sender = match outbound.srs_rewriter() {
            Some(srs) if !tx.sender.is_empty() => srs.forward(
                &tx.sender,
                &forward_as,
                mailkeep_queue::srs::day(now_micros() / 1_000_000),
            ),
            _ => tx.sender.clone(),
        };
        // Our ARC set on top; below it each forwarding alias named in a Delivered-To (RFC
        // 9228), by which a loop back to it is caught (see `finish_message`).
        let sealed = arc_set.is_some();
        let mut content = arc_set.unwrap_or_default().into_bytes();
        let mut named: Vec<String> = Vec::new();
        for r in tx.rcpts.iter().filter(|r| !r.forward.is_empty()) {
            let key = r.address.to_ascii_lowercase();
            if !named.contains(&key) {
                content.extend_from_slice(format!("Delivered-To: {}\r\n", r.address).as_bytes());
                named.push(key);
            }
        }
        content.extend_from_slice(data);
        let queued = mailkeep_store::NewQueued {
            id: tx.queue_id.0.clone(),
            sender: sender.clone(),
            blob: mailkeep_store::BlobId(String::new()),
            size: content.len() as u64,
            recipients,
            envid: tx.dsn_envid.clone(),
            ret: tx.dsn_ret.map(String::from),
            smtputf8: tx.smtputf8,
            requiretls: tx.requiretls,
            account: None,
            held: false,
        };
        if let Err(e) = outbound.forward(queued.clone(), &content).await {
            tracing::error!(session = %self.id, error = %e, "queueing a forwarded message failed");
            return Err("451 4.3.0 Could not queue the message, try again later".into());
        }
        for r in &queued.recipients {
            self.log(
                "queue.forwarded",
                LogEvent {
                    recipient: Some(r.address.clone()),
                    outcome: Some("accepted".into()),
                    detail: serde_json::json!({
                        "size": queued.size, "sender": sender, "orcpt": r.orcpt,
                        "forward_as": forward_as, "arc_sealed": sealed,
                    }),
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    async fn finish_message(&mut self, msg: Vec<u8>, via: &str) {
        // RFC 5321 6.3: too many Received headers means a mail loop.
        let header_end = mailkeep_delivery::ingest::header_len(&msg);
        let received = msg[..header_end]
            .split(|b| *b == b'\n')
            .filter(|l| l.len() >= 9 && l[..9].eq_ignore_ascii_case(b"received:"))
            .count();
        if received > MAX_RECEIVED {
            self.errors += 1;
            self.end_transaction(
                "554 5.4.6 Too many Received headers: mail loop".into(),
                "rejected",
                None,
                msg.len(),
            );
            return;
        }
        // A message an alias of ours forwarded already (its Delivered-To names the alias,
        // as Postfix's local(8) checks) has come back round a forwarding loop.
        // Refused when every recipient loops; otherwise only the looping aliases'
        // forwarding is dropped (their local targets and the other recipients get it).
        let delivered_to = delivered_to(&msg[..header_end]);
        let looped: Vec<usize> = self
            .tx
            .as_ref()
            .map(|tx| {
                tx.rcpts
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| {
                        !r.forward.is_empty()
                            && delivered_to.contains(&r.address.to_ascii_lowercase())
                    })
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
        let all = self.tx.as_ref().map_or(0, |tx| tx.rcpts.len());
        if !looped.is_empty() && looped.len() == all {
            let address = self
                .tx
                .as_ref()
                .and_then(|tx| tx.rcpts.get(looped[0]))
                .map(|r| r.address.clone())
                .unwrap_or_default();
            self.errors += 1;
            self.end_transaction(
                format!("554 5.4.6 Mail forwarding loop for <{address}>"),
                "rejected",
                None,
                msg.len(),
            );
            return;
        }
        for i in looped {
            let dropped = self
                .tx
                .as_mut()
                .and_then(|tx| tx.rcpts.get_mut(i))
                .map(|r| (r.address.clone(), std::mem::take(&mut r.forward)));
            if let Some((address, targets)) = dropped {
                self.log(
                    "smtp.forward_refused",
                    LogEvent {
                        recipient: Some(address.clone()),
                        outcome: Some("rejected".into()),
                        reply: Some(format!("554 5.4.6 Mail forwarding loop for <{address}>")),
                        detail: serde_json::json!({ "targets": targets, "loop": true }),
                        ..Default::default()
                    },
                );
            }
        }
        let size = msg.len();
        let msg = match self.submitted(msg).await {
            Ok(m) => m,
            Err(reply) => {
                self.errors += 1;
                self.end_transaction(reply, "rejected", None, size);
                return;
            }
        };
        // Viruses (clamd): refused before anything is stored or forwarded.
        self.virus_clean = false;
        if let Some(reply) = self.virus_check(&msg).await {
            let outcome = if reply.starts_with('4') {
                "tempfail"
            } else {
                "rejected"
            };
            self.end_transaction(reply, outcome, None, size);
            self.flush_log();
            return;
        }
        // Sender authentication (the MX only): checked on the message as it came, then any
        // Authentication-Results claiming our name is dropped and ours goes on top.
        let mut mailbox = MailboxRole::Inbox;
        // A client on a DNSBL whose mail is to go to Junk (`dnsbl.inbound_action`).
        if self.user.is_none() && matches!(&self.dnsbl, Some(Some(_))) {
            mailbox = MailboxRole::Junk;
        }
        let mut results_header = String::new();
        let mut arc_set: Option<String> = None;
        let mut dmarc_pass = false;
        let mut auth_summary: Option<mailkeep_verify::Summary> = None;
        let msg = match (self.server.verifier.clone(), self.tx.as_ref()) {
            (Some(verifier), Some(tx)) => {
                let env = mailkeep_verify::Envelope {
                    ip: self.peer.ip(),
                    helo: self.helo.as_deref().unwrap_or(""),
                    mail_from: &tx.sender,
                };
                // The domain forwarding this message seals it (RFC 8617 5.1), when told to:
                // an alias's, else that of a recipient whose Sieve script may redirect it.
                let seal_as = if self.server.forwarding.arc_seal && self.user.is_none() {
                    match tx.rcpts.iter().find_map(|r| r.forward_as.clone()) {
                        Some(d) => Some(d),
                        None => {
                            let targets: Vec<&LocalTarget> =
                                tx.rcpts.iter().flat_map(|r| r.targets.iter()).collect();
                            let accounts: Vec<_> = targets.iter().map(|t| t.account).collect();
                            match self.server.delivery.may_redirect(&accounts).await {
                                Some(i) => targets
                                    .get(i)
                                    .and_then(|t| t.address.rsplit_once('@'))
                                    .map(|(_, d)| d.to_string()),
                                None => None,
                            }
                        }
                    }
                } else {
                    None
                };
                let verdict = verifier.verify(&msg, env, seal_as.as_deref()).await;
                arc_set = verdict.arc_set.clone();
                dmarc_pass = verdict.dmarc_pass;
                auth_summary = Some(verdict.summary.clone());
                if verdict.dmarc_pass && verdict.summary.spf == Some("pass") {
                    self.greylist_authenticated().await;
                }
                let outcome = match &verdict.action {
                    mailkeep_verify::Action::Accept => "accepted",
                    mailkeep_verify::Action::Junk(_) => "junk",
                    mailkeep_verify::Action::Reject(_) => "rejected",
                };
                self.log(
                    "smtp.verify",
                    LogEvent {
                        outcome: Some(outcome.into()),
                        detail: verdict.detail.clone(),
                        ..Default::default()
                    },
                );
                // This message's row in the sender domain's DMARC aggregate report (RFC 7489
                // 7.2), rejected ones included.
                if let Some(entry) = &verdict.report {
                    if let Ok(json) = serde_json::to_string(entry) {
                        let store = self.server.delivery.store();
                        let now = now_micros() / 1_000_000;
                        if let Err(e) = store
                            .report_event_add("dmarc", &entry.domain, now, &json)
                            .await
                        {
                            tracing::warn!(session = %self.id, error = %e, "recording a DMARC report row failed");
                        }
                    }
                }
                match verdict.action {
                    mailkeep_verify::Action::Reject(reply) => {
                        self.end_transaction(reply, "rejected", None, size);
                        self.flush_log();
                        return;
                    }
                    mailkeep_verify::Action::Junk(_) => mailbox = MailboxRole::Junk,
                    mailkeep_verify::Action::Accept => {}
                }
                results_header = verdict.header;
                mailkeep_verify::strip_own_results(&msg, verifier.authserv_id())
            }
            _ => msg,
        };
        // Forwarded from our servers, a forgery of one of our own domains would pass SPF, and
        // so DMARC, at the next hop: mail from our domains (or their subdomains) is forwarded
        // only when it passed DMARC here. Checked for aliases' forwarding and for what Sieve
        // scripts may redirect (`Onward::refused`).
        // Why forwarded copies are not sent: the reply (when nothing else is delivered) and
        // the log's detail.
        let mut forward_refused: Option<(String, serde_json::Value)> = None;
        if self.user.is_none() && !dmarc_pass {
            if let Some(d) = from_domain(&msg) {
                if self.hosted_or_parent(&d).await {
                    forward_refused = Some((
                        format!(
                            "550 5.7.1 Not forwarded: mail from {d}, a domain of ours, must pass DMARC here"
                        ),
                        serde_json::json!({ "domain": d }),
                    ));
                }
            }
        }
        let Some(tx) = self.tx.as_ref() else { return };
        // One account reached through several recipients gets one copy.
        let mut targets: Vec<LocalTarget> = tx
            .rcpts
            .iter()
            .flat_map(|r| r.targets.iter().cloned())
            .collect();
        targets.sort_by_key(|t| t.account);
        targets.dedup_by_key(|t| t.account);
        // Spam (the MX): the server's score may refuse the message; each recipient's own
        // decides Junk or not and goes on their copy. Any X-Spam-Status the message came
        // with is dropped.
        let mut placements = std::collections::HashMap::new();
        let mut spam_field = String::new();
        let msg = if self.user.is_none() && self.server.spam.enabled {
            let msg = mailkeep_policy::spam::strip_field(&msg, "X-Spam-Status");
            let v = self
                .spam_verdicts(&msg, auth_summary.as_ref(), dmarc_pass, mailbox, &targets)
                .await;
            if let Some(reply) = v.reject {
                self.end_transaction(reply, "rejected", None, size);
                self.flush_log();
                return;
            }
            placements = v.placements;
            spam_field = v.field;
            // What we take for spam is not passed on to other servers: forwarding it would
            // be our domain sending spam. Local copies still go to Junk.
            if forward_refused.is_none() && v.is_spam {
                forward_refused = Some((
                    format!(
                        "550 5.7.1 Not forwarded: the message looks like spam (score {:.2})",
                        v.score
                    ),
                    serde_json::json!({ "spam_score": (v.score * 1000.0).round() / 1000.0 }),
                ));
            }
            msg
        } else {
            msg
        };
        let Some(tx) = self.tx.as_ref() else { return };
        let mut data = results_header.into_bytes();
        data.extend_from_slice(self.received_header(tx).as_bytes());
        data.extend_from_slice(&msg);
        let size = data.len();
        // Forwarded recipients (RFC 3461 4.2: each keeps its original recipient as ORCPT).
        let mut forwards: Vec<mailkeep_store::QueueRecipient> = Vec::new();
        for r in &tx.rcpts {
            for target in &r.forward {
                if forwards
                    .iter()
                    .any(|f| f.address.eq_ignore_ascii_case(target))
                {
                    continue;
                }
                forwards.push(mailkeep_store::QueueRecipient {
                    address: target.clone(),
                    notify: r.notify.clone(),
                    orcpt: Some(
                        r.orcpt
                            .clone()
                            .unwrap_or_else(|| format!("rfc822;{}", xtext(&r.address))),
                    ),
                });
            }
        }
        let mut remote: Vec<mailkeep_store::QueueRecipient> = tx
            .rcpts
            .iter()
            .filter(|r| r.remote)
            .map(|r| mailkeep_store::QueueRecipient {
                address: r.address.clone(),
                notify: r.notify.clone(),
                orcpt: r.orcpt.clone(),
            })
            .collect();
        // Submitted mail reaches an alias's targets elsewhere as it reaches any other domain:
        // signed by us, from the user's own address.
        if self.user.is_some() {
            remote.append(&mut forwards);
        }
        let had_remote = !remote.is_empty();
        if had_remote {
            let queued = mailkeep_store::NewQueued {
                id: tx.queue_id.0.clone(),
                sender: tx.sender.clone(),
                blob: mailkeep_store::BlobId(String::new()),
                size: size as u64,
                recipients: remote,
                envid: tx.dsn_envid.clone(),
                ret: tx.dsn_ret.map(String::from),
                smtputf8: tx.smtputf8,
                requiretls: tx.requiretls,
                account: self.user.as_ref().map(|u| u.id),
                held: false,
            };
            // Submitted mail that scores as spam is queued held (`spam.outbound_hold`): one
            // account must not get the domain blocklisted.
            let mut queued = queued;
            if let (Some(hold), true) = (self.server.spam.outbound_hold, self.server.spam.enabled) {
                if let Some((score, hits, bayes)) = self.outbound_score(&data).await {
                    if score >= hold {
                        queued.held = true;
                        self.log(
                            "queue.spam_hold",
                            LogEvent {
                                outcome: Some("held".into()),
                                detail: serde_json::json!({
                                    "score": (score * 1000.0).round() / 1000.0,
                                    "hold": hold,
                                    "bayes": (bayes.0 * 1000.0).round() / 1000.0,
                                    "tests": hits.iter().map(|h| serde_json::json!([h.name, h.weight])).collect::<Vec<_>>(),
                                    "clues": spam::clues_json(&bayes.1),
                                }),
                                ..Default::default()
                            },
                        );
                    }
                }
            }
            let counted: Vec<String> = queued
                .recipients
                .iter()
                .filter_map(|r| Address::parse(&r.address).ok().map(|a| a.key()))
                .collect();
            if let Err(reply) = self.enqueue(queued, &data).await {
                self.end_transaction(reply, "tempfail", None, size);
                self.flush_log();
                return;
            }
            // What the account sent, for its outbound limits (`[limits]`), and whether it now
            // looks compromised.
            if let Some(account) = self.user.as_ref().map(|u| u.id) {
                let store = self.server.delivery.store();
                let now = now_micros() / 1_000_000;
                if let Err(e) = store.usage_record(account, now, &counted).await {
                    tracing::warn!(session = %self.id, error = %e, "recording the outbound usage failed");
                }
                if let Some(watch) = self.server.watch.clone() {
                    watch
                        .sent(account, &self.id, Some(self.peer.ip()), now)
                        .await;
                }
            }
        }
        // What Sieve redirects to other domains carry, or why they may not be sent.
        let onward = mailkeep_delivery::Onward {
            arc_set: arc_set.clone(),
            refused: forward_refused.as_ref().map(|(reply, _)| {
                reply
                    .trim_start_matches("550 5.7.1 Not forwarded: ")
                    .to_string()
            }),
            smtputf8: self.tx.as_ref().is_some_and(|t| t.smtputf8),
            requiretls: self.tx.as_ref().is_some_and(|t| t.requiretls),
        };
        if let (Some((reply, why)), false) = (forward_refused, forwards.is_empty()) {
            let mut detail = why;
            if let Some(d) = detail.as_object_mut() {
                d.insert(
                    "targets".into(),
                    forwards
                        .iter()
                        .map(|f| f.address.clone())
                        .collect::<Vec<_>>()
                        .into(),
                );
            }
            self.log(
                "smtp.forward_refused",
                LogEvent {
                    outcome: Some("rejected".into()),
                    reply: Some(reply.clone()),
                    detail,
                    ..Default::default()
                },
            );
            forwards.clear();
            if targets.is_empty() && !had_remote {
                self.errors += 1;
                self.end_transaction(reply, "rejected", None, size);
                self.flush_log();
                return;
            }
        }
        let queued_elsewhere = had_remote || !forwards.is_empty();
        if !forwards.is_empty() {
            // The forwarded copy carries the server's spam verdict.
            let mut copy = spam_field.clone().into_bytes();
            copy.extend_from_slice(&data);
            if let Err(reply) = self.forward(forwards, arc_set, &copy).await {
                self.end_transaction(reply, "tempfail", None, size);
                self.flush_log();
                return;
            }
        }
        if targets.is_empty() {
            let message_id = header_message_id(&data);
            self.messages += 1;
            let queue_id = self.tx.as_ref().map(|t| t.queue_id.clone());
            self.end_transaction(
                format!(
                    "250 2.0.0 OK: queued as {}",
                    queue_id.map(|q| q.0).unwrap_or_default()
                ),
                "accepted",
                message_id,
                size,
            );
            self.flush_log();
            return;
        }
        let Some(tx) = self.tx.as_ref() else { return };
        // What the sender asked of bounces, per account (the first recipient reaching it).
        let mut dsn = mailkeep_delivery::DsnRequest {
            envid: tx.dsn_envid.clone(),
            headers_only: tx.dsn_ret == Some("HDRS"),
            recipients: std::collections::HashMap::new(),
        };
        for r in &tx.rcpts {
            for t in &r.targets {
                dsn.recipients.entry(t.account).or_insert_with(|| {
                    mailkeep_delivery::DsnRecipient {
                        address: r.address.clone(),
                        orcpt: r.orcpt.clone(),
                        notify: r.notify.clone(),
                    }
                });
            }
        }
        let incoming = Incoming {
            data,
            return_path: tx.sender.clone(),
            recipients: targets,
            queue_id: tx.queue_id.0.clone(),
            session: self.id.clone(),
            client_ip: Some(self.peer.ip().to_string()),
            mailbox,
            placements,
            virus_clean: self.virus_clean,
            // Copies queued for other domains already: the sender must not hear of a
            // failure (a resend would duplicate them); a rejection is a bounce instead.
            refusable: !queued_elsewhere,
            onward,
            dsn,
        };
        let queue_id = tx.queue_id.clone();
        let envelope_detail = serde_json::json!({
            "via": via,
            "envid": tx.dsn_envid,
            "ret": tx.dsn_ret,
            "body": tx.body,
            "rcpts": tx.rcpts.iter().map(|r| serde_json::json!({"to": r.address, "notify": r.notify, "orcpt": r.orcpt})).collect::<Vec<_>>(),
        });
        // A storage failure fails the whole batch (Err: 451, the sender retries). A single
        // recipient can only fail alone when its account vanished after RCPT (removed by an
        // admin); the others keep their copy, that recipient's `delivery.stored` event says
        // `failed`, and a 451 would only duplicate the mail of the rest on retry.
        // A DMARC aggregate report (RFC 7489 7.2) or TLS report (RFC 8460) about one of our
        // domains is kept for `mailkeep dmarc|tlsrpt summary` once delivered (on the MX, with
        // or without sender authentication).
        let report = if self.user.is_none() {
            mailkeep_verify::parse_report(&incoming.data)
        } else {
            None
        };
        // A spam complaint (RFC 5965) about mail of one of our accounts counts towards its
        // complaint rate when the report passed DMARC and names a message the account did
        // send (checked in `count_complaint`).
        let complaint = if self.user.is_none() && dmarc_pass {
            mailkeep_verify::parse_complaint(&incoming.data)
        } else {
            None
        };
        match self.server.delivery.deliver(incoming).await {
            // Every recipient's Sieve script rejected it (RFC 5429 2.1: at the SMTP level).
            Ok(delivered) if delivered.rejected.is_some() => {
                let reason: String = delivered
                    .rejected
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
                self.events.extend(delivered.events);
                self.end_transaction(
                    format!("550 5.7.1 Rejected by the recipient's filter: {reason}"),
                    "rejected",
                    delivered.message_id,
                    size,
                );
            }
            Ok(delivered) if delivered.outcomes.iter().any(|o| o.result.is_ok()) => {
                if let Some(r) = report {
                    self.keep_report(r).await;
                }
                if let Some(c) = complaint {
                    self.count_complaint(c).await;
                }
                let message_id = delivered.message_id.clone();
                self.events.extend(delivered.events);
                self.messages += 1;
                self.log(
                    "smtp.envelope",
                    LogEvent {
                        detail: envelope_detail,
                        message_id: message_id.clone(),
                        ..Default::default()
                    },
                );
                self.end_transaction(
                    format!("250 2.0.0 OK: queued as {queue_id}"),
                    "accepted",
                    message_id,
                    size,
                );
            }
            Ok(delivered) => {
                let message_id = delivered.message_id.clone();
                self.events.extend(delivered.events);
                tracing::error!(session = %self.id, %queue_id, "no recipient could be stored");
                self.end_transaction(
                    "451 4.3.0 Could not store the message, try again later".into(),
                    "tempfail",
                    message_id,
                    size,
                );
            }
            Err(e) => {
                tracing::error!(session = %self.id, %queue_id, error = %e, "delivery failed");
                self.end_transaction(
                    "451 4.3.0 Could not store the message, try again later".into(),
                    "tempfail",
                    None,
                    size,
                );
            }
        }
        self.flush_log();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orcpt_is_passed_on_as_it_must_be_sent() {
        // smtp-proto decodes `ORCPT=rfc822;a+2Bb@x.test`; what goes on is the parameter again.
        let to = smtp_proto::RcptTo {
            address: "a+b@x.test".to_string(),
            orcpt: Some("a+b@x.test".to_string()),
            ..Default::default()
        };
        assert_eq!(rcpt_orcpt(&to).as_deref(), Some("rfc822;a+2Bb@x.test"));
        // `+C3+A9` came as two characters U+00C3 U+00A9: they go back as those two bytes.
        let to = smtp_proto::RcptTo {
            orcpt: Some("caf\u{c3}\u{a9}@x.test".to_string()),
            ..Default::default()
        };
        assert_eq!(rcpt_orcpt(&to).as_deref(), Some("rfc822;caf+C3+A9@x.test"));
        // UTF-8 sent as is (RFC 6533 utf-8-addr-xtext) goes as its bytes.
        let to = smtp_proto::RcptTo {
            orcpt: Some("\u{4e2d}@x.test".to_string()),
            ..Default::default()
        };
        assert_eq!(rcpt_orcpt(&to).as_deref(), Some("rfc822;+E4+B8+AD@x.test"));
    }

    #[test]
    fn delivered_to_fields_are_read_whatever_their_case() {
        let head = b"Received: x\r\nDELIVERED-TO: <Loop@A.test>\r\ndelivered-to: b@c.test\r\n\r\n";
        assert_eq!(delivered_to(head), vec!["loop@a.test", "b@c.test"]);
    }
}
