//! One IMAP connection: reading and framing, states, authentication, STARTTLS, IDLE, and the
//! commands of the not-authenticated and authenticated states (RFC 9051 6.1-6.3). The
//! selected-state commands are in [`crate::selected_cmds`].
//!
//! Implementation notes:
//! - Bytes go through [`Framer`]: every literal is announced to [`Session::literal`] before a
//!   byte of it is read, so its size is checked against the limit (smaller before login)
//!   before the continuation is sent (RFC 7888 4, literal-size DoS).
//! - Responses are collected in `out` and written when the session would otherwise wait for
//!   the client, or when they grow large (a big FETCH streams out).
//! - After each command the selected mailbox is synchronized ([`View::sync`]), except after
//!   FETCH, STORE and SEARCH by sequence number, when expunges must not be reported (RFC 9051
//!   7.5.1).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailkeep_config::Plaintext;
use mailkeep_imap_proto::command::{
    self, Command, CommandBody, ListReturn, NotifySet, SelectParams, StatusItem,
};
use mailkeep_imap_proto::frame::{Event, Framer, Limits, LiteralMode, Part};
use mailkeep_imap_proto::response::{self, status_line, ListEntry, Status};
use mailkeep_net::sasl::decode_plain;
use mailkeep_net::stream::{Conn, HANDSHAKE_TIMEOUT};
use mailkeep_net::Shutdown;
use mailkeep_store::{ChangeEvent, Mailbox, Rights, StoreError, User};
use mailkeep_types::{MailboxId, MailboxRole, ModSeq, Uid};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::acl::{writable, Place, SHARED};
use crate::util::list_matches;
use crate::view::{Report, Synced, View};
use crate::ImapServer;

/// Largest literal accepted before login: enough for any LOGIN, nothing to fill memory with.
const PRE_AUTH_LITERAL: u64 = 8 * 1024;
/// Invalid commands in a row before the session is closed.
const MAX_BAD: u32 = 20;
/// Responses are written out once this much is collected.
const FLUSH_AT: usize = 256 * 1024;

/// What the session does after a command.
pub(crate) enum Flow {
    /// Read the next command.
    Continue,
    /// Close the connection, for this reason (already answered).
    Close(String),
    /// Upgrade to TLS (the OK is written).
    StartTls,
    /// Enter IDLE for this tag.
    Idle(String),
    /// Start COMPRESS=DEFLATE (the OK is written, uncompressed).
    Compress,
}

/// A tagged or untagged reply and the session goes on.
pub(crate) type Res = Result<Flow, StoreError>;

pub(crate) struct Session<S> {
    pub(crate) conn: Conn<S>,
    pub(crate) tls: bool,
    pub(crate) framer: Framer,
    pub(crate) out: Vec<u8>,
    pub(crate) done: Vec<u8>,
    pub(crate) rbuf: Vec<u8>,
    pub(crate) server: Arc<ImapServer>,
    pub(crate) peer: SocketAddr,
    pub(crate) shutdown: Shutdown,
    pub(crate) id: String,
    pub(crate) user: Option<User>,
    /// The spam-model learning started by this session's last move into or out of Junk.
    pub(crate) learning: Option<tokio::task::JoinHandle<()>>,
    pub(crate) view: Option<View>,
    pub(crate) rev2: bool,
    pub(crate) condstore: bool,
    pub(crate) qresync: bool,
    failures: u32,
    bad: u32,
    sasl: Option<String>,
    /// `imap.commands_per_second`, after a burst of twice as many: high enough that a client
    /// syncing a big mailbox one message per command (mbsync pipelines a UID FETCH per
    /// message) is not slowed, low enough that one connection cannot take a core.
    rate: mailkeep_net::pace::Pacer,
    deflate: Option<Box<crate::compress::Deflate>>,
    notify: Option<Box<crate::notify::Notify>>,
}

fn new_session_id() -> String {
    format!("imap-{:016x}", rand::random::<u64>())
}

/// Runs a session until LOGOUT, error, timeout or shutdown. `tls`: the stream is already TLS
/// (port 993).
pub async fn run_session<S>(
    stream: S,
    peer: SocketAddr,
    server: Arc<ImapServer>,
    shutdown: Shutdown,
    tls: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let limits = Limits {
        max_line: server.imap.max_line,
        ..Limits::default()
    };
    let rate = mailkeep_net::pace::Pacer::with_burst(
        server.imap.commands_per_second,
        server.imap.commands_per_second.saturating_mul(2),
    );
    let mut s = Session {
        conn: Conn::Plain(stream),
        tls,
        framer: Framer::new(limits),
        out: Vec::new(),
        done: Vec::new(),
        rbuf: Vec::new(),
        server,
        peer,
        shutdown,
        id: new_session_id(),
        user: None,
        learning: None,
        view: None,
        rev2: false,
        condstore: false,
        qresync: false,
        failures: 0,
        bad: 0,
        sasl: None,
        rate,
        deflate: None,
        notify: None,
    };
    let reason = s.run().await;
    tracing::debug!(session = %s.id, peer = %s.peer, reason = %reason, "imap session closed");
    let _ = s.conn.shutdown().await;
}

/// Writes an untagged BYE and closes a connection over the limits.
pub async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, why: &str) {
    let mut out = Vec::new();
    status_line(&mut out, None, Status::Bye, Some("UNAVAILABLE"), why);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}

enum Read {
    Data,
    Closed(String),
    /// A store change while NOTIFY is on.
    Event(Result<ChangeEvent, tokio::sync::broadcast::error::RecvError>),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) fn utf8(&self) -> bool {
        self.rev2
    }

    pub(crate) fn report(&self) -> Report {
        Report {
            condstore: self.condstore,
            qresync: self.qresync,
        }
    }

    /// Writes the tagged reply; it goes out after any untagged responses of the command.
    pub(crate) fn tagged(&mut self, tag: &str, status: Status, code: Option<&str>, text: &str) {
        status_line(&mut self.done, Some(tag), status, code, text);
    }

    pub(crate) fn untagged(&mut self, status: Status, code: Option<&str>, text: &str) {
        status_line(&mut self.out, None, status, code, text);
    }

    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            match self.deflate.as_mut() {
                Some(d) => {
                    let packed = d.compress(&out).map_err(std::io::Error::other)?;
                    self.conn.write_all(&packed).await?;
                }
                None => self.conn.write_all(&out).await?,
            }
            self.conn.flush().await?;
            // Keep a modest buffer, not the largest response ever written.
            if out.capacity() <= 16 * 1024 {
                self.out = out;
                self.out.clear();
            }
        }
        Ok(())
    }

    /// Writes out if a large response has piled up.
    pub(crate) async fn maybe_flush(&mut self) -> std::io::Result<()> {
        if self.out.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    fn plaintext_ok(&self) -> bool {
        self.tls
            || (self.server.auth.plaintext == Plaintext::Loopback && self.peer.ip().is_loopback())
    }

    pub(crate) fn capabilities(&self) -> String {
        let mut caps = vec!["IMAP4rev1", "IMAP4rev2"];
        if self.user.is_none() {
            if self.server.tls.is_some() && !self.tls {
                caps.push("STARTTLS");
            }
            if self.plaintext_ok() {
                caps.extend(["AUTH=PLAIN", "SASL-IR"]);
            } else {
                // RFC 9051 6.2.3: LOGIN is refused until TLS.
                caps.push("LOGINDISABLED");
            }
        }
        caps.extend([
            "LITERAL+",
            "ENABLE",
            "IDLE",
            "ID",
            "NAMESPACE",
            "UNSELECT",
            "UIDPLUS",
            "MOVE",
            "CHILDREN",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "SPECIAL-USE",
            "CREATE-SPECIAL-USE",
            "ESEARCH",
            "SEARCHRES",
            "SORT",
            "SORT=DISPLAY",
            "THREAD=ORDEREDSUBJECT",
            "THREAD=REFERENCES",
            "CONDSTORE",
            "QRESYNC",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "STATUS=SIZE",
            "BINARY",
            "MULTIAPPEND",
            "UNAUTHENTICATE",
            "COMPRESS=DEFLATE",
            "NOTIFY",
            "ACL",
            // RFC 4314 2.1: the rights beyond RFC 2086's.
            "RIGHTS=texk",
        ]);
        let mut s = caps.join(" ");
        s.push_str(&format!(" APPENDLIMIT={}", self.server.imap.max_literal));
        s
    }

    async fn run(&mut self) -> String {
        let greeting = format!("CAPABILITY {}", self.capabilities());
        self.untagged(Status::Ok, Some(&greeting), "mailkeep ready");
        loop {
            while let Some(ev) = self.framer.next_event() {
                let flow = match self.event(ev).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::error!(session = %self.id, error = %e, "imap session error");
                        Flow::Continue
                    }
                };
                self.take_done();
                match flow {
                    Flow::Continue => {}
                    Flow::Close(reason) => {
                        let _ = self.flush().await;
                        return reason;
                    }
                    Flow::StartTls => {
                        if let Err(r) = self.start_tls().await {
                            return r;
                        }
                    }
                    Flow::Idle(tag) => {
                        if let Err(r) = self.idle(tag).await {
                            return r;
                        }
                    }
                    Flow::Compress => {
                        // RFC 4978 3: the OK goes out uncompressed; everything after it, in
                        // both directions, is compressed, including bytes the client already
                        // sent behind the command.
                        if let Err(e) = self.flush().await {
                            return format!("i/o error: {e}");
                        }
                        let pending = self.framer.take_buffered();
                        self.deflate = Some(Box::default());
                        tracing::info!(session = %self.id, "imap: COMPRESS=DEFLATE active");
                        if let Err(e) = self.ingest(&pending) {
                            return e;
                        }
                    }
                }
                if let Err(e) = self.maybe_flush().await {
                    return format!("i/o error: {e}");
                }
            }
            if let Err(e) = self.flush().await {
                return format!("i/o error: {e}");
            }
            self.framer.shrink();
            match self.read().await {
                Read::Data => {}
                Read::Closed(r) => return r,
                Read::Event(first) => {
                    let rx = self.notify.as_mut().and_then(|n| n.events.as_mut());
                    let batch = event_batch(first, rx);
                    match self.notify_events(batch).await {
                        Ok(Some(Flow::Close(r))) => {
                            let _ = self.flush().await;
                            return r;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(session = %self.id, error = %e, "notify failed"),
                    }
                }
            }
        }
    }

    /// Reads more bytes into the framer (idle timeout and shutdown apply).
    async fn read(&mut self) -> Read {
        if self.rbuf.capacity() == 0 {
            self.rbuf.reserve(4096);
        }
        self.rbuf.clear();
        let timeout = self.server.imap.idle_timeout;
        let mut shutdown = self.shutdown.clone();
        let (conn, rbuf) = (&mut self.conn, &mut self.rbuf);
        let events = self.notify.as_mut().and_then(|n| n.events.as_mut());
        let n = tokio::select! {
            r = tokio::time::timeout(timeout, conn.read_buf(rbuf)) => r,
            // NOTIFY: changes are reported between commands too (RFC 5465 3).
            ev = async {
                match events {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => return Read::Event(ev),
            stop = shutdown.wait() => {
                if stop == mailkeep_net::Stop::Banned {
                    self.untagged(Status::Bye, None, "your address is banned");
                    let _ = self.flush().await;
                    return Read::Closed("address banned".into());
                }
                self.untagged(Status::Bye, None, "server shutting down");
                let _ = self.flush().await;
                return Read::Closed("server shutdown".into());
            }
        };
        match n {
            Err(_) => {
                self.untagged(Status::Bye, None, "autologout: idle for too long");
                let _ = self.flush().await;
                Read::Closed("timeout".into())
            }
            Ok(Ok(0)) => Read::Closed("client closed the connection".into()),
            Ok(Ok(_)) => {
                let data = std::mem::take(&mut self.rbuf);
                if let Err(e) = self.ingest(&data) {
                    self.untagged(Status::Bye, None, &e);
                    let _ = self.flush().await;
                    return Read::Closed(e);
                }
                self.rbuf = data;
                // An idle connection keeps no read buffer.
                if self.rbuf.capacity() > 4096 {
                    self.rbuf = Vec::new();
                }
                Read::Data
            }
            Ok(Err(e)) => Read::Closed(format!("i/o error: {e}")),
        }
    }

    /// Hands received bytes to the framer, inflating them first under COMPRESS.
    fn ingest(&mut self, data: &[u8]) -> Result<(), String> {
        match self.deflate.as_mut() {
            Some(d) => {
                let plain = d.decompress(data)?;
                self.framer.push(&plain);
            }
            None => self.framer.push(data),
        }
        Ok(())
    }

    fn tag_str(tag: &Option<Vec<u8>>) -> Option<String> {
        tag.as_ref()
            .map(|t| String::from_utf8_lossy(t).into_owned())
    }

    pub(crate) fn bad(&mut self, tag: Option<&str>, text: &str) -> Flow {
        status_line(&mut self.done, tag, Status::Bad, None, text);
        self.bad += 1;
        if self.bad >= MAX_BAD {
            self.untagged(Status::Bye, None, "too many invalid commands");
            return Flow::Close("too many invalid commands".into());
        }
        Flow::Continue
    }

    async fn event(&mut self, ev: Event) -> Res {
        match ev {
            Event::Literal {
                tag,
                length,
                mode,
                accepted_bytes,
                ..
            } => {
                let limit = if self.user.is_some() {
                    self.server.imap.max_literal
                } else {
                    PRE_AUTH_LITERAL
                };
                if accepted_bytes.saturating_add(length) > limit {
                    let tag = Self::tag_str(&tag);
                    if mode == LiteralMode::NonSync {
                        // RFC 7888 4: the bytes of a refused non-synchronizing literal are
                        // already on their way, and reading them all is what an attacker
                        // announcing {4294967295+} wants; answer and close instead.
                        self.untagged(Status::Bye, None, "literal too large, closing");
                        status_line(
                            &mut self.done,
                            tag.as_deref(),
                            Status::Bad,
                            Some("TOOBIG"),
                            &format!("literal too large, the limit is {limit} bytes"),
                        );
                        return Ok(Flow::Close("non-synchronizing literal too large".into()));
                    }
                    self.framer.reject();
                    // RFC 7888 4 / RFC 9051 7.1: refused before the client sends a byte.
                    status_line(
                        &mut self.out,
                        tag.as_deref(),
                        Status::No,
                        Some("TOOBIG"),
                        &format!("literal too large, the limit is {limit} bytes"),
                    );
                } else {
                    self.framer.accept();
                    if mode == LiteralMode::Sync {
                        self.out.extend_from_slice(b"+ Ready for literal data\r\n");
                        self.flush().await.map_err(io_err)?;
                    }
                }
                Ok(Flow::Continue)
            }
            Event::Discarded { tag } => {
                let tag = Self::tag_str(&tag);
                status_line(
                    &mut self.out,
                    tag.as_deref(),
                    Status::No,
                    Some("TOOBIG"),
                    "literal too large; command ignored",
                );
                Ok(Flow::Continue)
            }
            Event::LineTooLong { tag } => {
                let tag = Self::tag_str(&tag);
                Ok(self.bad(tag.as_deref(), "command line too long"))
            }
            Event::BadLiteral { tag } => {
                let tag = Self::tag_str(&tag);
                Ok(self.bad(tag.as_deref(), "invalid literal announcement"))
            }
            Event::Command(parts) => {
                if let Some(tag) = self.sasl.take() {
                    return self.sasl_response(&tag, &parts).await;
                }
                let wait = self.rate.take(Instant::now());
                if !wait.is_zero() {
                    // What is due goes out first.
                    let _ = self.flush().await;
                    tokio::time::sleep(wait).await;
                }
                match command::parse(&parts) {
                    Ok(cmd) => {
                        let tag = cmd.tag.clone();
                        match self.command(cmd).await {
                            Ok(flow) => {
                                self.bad = 0;
                                Ok(flow)
                            }
                            Err(e) => {
                                self.store_error(&tag, &e);
                                self.take_done();
                                Ok(Flow::Continue)
                            }
                        }
                    }
                    Err((tag, e)) => Ok(self.bad(tag.as_deref(), &e.0)),
                }
            }
        }
    }

    /// Answers a failed store operation: the user's mistake is NO with a response code, a
    /// server failure is NO [UNAVAILABLE] and a log line.
    pub(crate) fn store_error(&mut self, tag: &str, e: &StoreError) {
        let (code, text) = match e {
            StoreError::NotFound(what) => ("NONEXISTENT", format!("{what} does not exist")),
            StoreError::Exists(what) => ("ALREADYEXISTS", format!("{what} already exists")),
            StoreError::Conflict(why) if why.contains("quota") => ("OVERQUOTA", why.clone()),
            StoreError::Conflict(why) => ("CANNOT", why.clone()),
            StoreError::Backend(why) => {
                tracing::error!(session = %self.id, error = %why, "imap: storage error");
                (
                    "UNAVAILABLE",
                    "temporary storage failure, try again".to_string(),
                )
            }
            StoreError::Busy(why) => ("UNAVAILABLE", format!("{why}, try again shortly")),
        };
        self.tagged(tag, Status::No, Some(code), &text);
    }

    async fn command(&mut self, cmd: Command) -> Res {
        let Command { tag, body } = cmd;
        let authed = self.user.is_some();
        let selected = self.view.is_some();
        // Which state each command belongs to (RFC 9051 6.1-6.4).
        let allowed = match &body {
            CommandBody::Capability
            | CommandBody::Noop
            | CommandBody::Logout
            | CommandBody::Id(_) => true,
            CommandBody::StartTls
            | CommandBody::Authenticate { .. }
            | CommandBody::Login { .. } => !authed,
            CommandBody::Check
            | CommandBody::Close
            | CommandBody::Unselect
            | CommandBody::Expunge { .. }
            | CommandBody::Search { .. }
            | CommandBody::Fetch { .. }
            | CommandBody::Store { .. }
            | CommandBody::Copy { .. }
            | CommandBody::Sort { .. }
            | CommandBody::Thread { .. } => selected,
            // RFC 5161 3.1: only in the authenticated state.
            CommandBody::Enable(_) => authed && !selected,
            _ => authed,
        };
        if !allowed {
            let why = if !authed {
                "log in first"
            } else if matches!(body, CommandBody::Enable(_)) {
                "ENABLE must come before SELECT"
            } else if !selected
                && !matches!(
                    body,
                    CommandBody::StartTls
                        | CommandBody::Authenticate { .. }
                        | CommandBody::Login { .. }
                )
            {
                "no mailbox selected"
            } else {
                "already logged in"
            };
            return Ok(self.bad(Some(&tag), &format!("command not valid now: {why}")));
        }
        // Expunges are held back during FETCH, STORE, SEARCH by sequence number.
        let sync_after = !matches!(
            body,
            CommandBody::Fetch { uid: false, .. }
                | CommandBody::Store { uid: false, .. }
                | CommandBody::Search { uid: false, .. }
                | CommandBody::Sort { uid: false, .. }
                | CommandBody::Thread { uid: false, .. }
                | CommandBody::Logout
                | CommandBody::Idle
                | CommandBody::Select { .. }
                | CommandBody::Close
                | CommandBody::Unselect
                | CommandBody::Unauthenticate
        );
        let flow = self.dispatch(&tag, body).await;
        // Untagged updates of the selected mailbox go before the tagged reply.
        if sync_after && matches!(flow, Ok(Flow::Continue)) {
            match self.sync().await {
                Ok(Some(Flow::Close(r))) => {
                    self.take_done();
                    return Ok(Flow::Close(r));
                }
                Ok(_) => {}
                // The command itself succeeded and its reply stands; the updates come with
                // the next sync.
                Err(e) => {
                    tracing::warn!(session = %self.id, error = %e, "imap: sync failed");
                    if let Some(v) = self.view.as_mut() {
                        v.dirty = true;
                    }
                }
            }
        }
        self.take_done();
        flow
    }

    /// Moves the tagged reply after the untagged responses.
    pub(crate) fn take_done(&mut self) {
        if !self.done.is_empty() {
            let done = std::mem::take(&mut self.done);
            self.out.extend_from_slice(&done);
        }
    }

    /// Synchronizes the selected mailbox; Some(Close) when it was deleted under us.
    pub(crate) async fn sync(&mut self) -> Result<Option<Flow>, StoreError> {
        let report = self.report();
        let Some(view) = self.view.as_mut() else {
            return Ok(None);
        };
        if !view.has_news() {
            return Ok(None);
        }
        let store = self.server.store.clone();
        match view.sync(store.as_ref(), report, &mut self.out).await? {
            Synced::Ok => Ok(None),
            Synced::Gone => {
                self.view = None;
                self.untagged(Status::Bye, None, "the selected mailbox was deleted");
                Ok(Some(Flow::Close("selected mailbox deleted".into())))
            }
        }
    }

    async fn dispatch(&mut self, tag: &str, body: CommandBody) -> Res {
        match body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.out
                    .extend_from_slice(format!("* CAPABILITY {caps}\r\n").as_bytes());
                self.tagged(tag, Status::Ok, None, "CAPABILITY completed");
            }
            CommandBody::Noop | CommandBody::Check => {
                self.tagged(tag, Status::Ok, None, "NOOP completed");
            }
            CommandBody::Logout => {
                self.untagged(Status::Bye, None, "logging out");
                self.tagged(tag, Status::Ok, None, "LOGOUT completed");
                return Ok(Flow::Close("logout".into()));
            }
            CommandBody::Id(_) => {
                // RFC 2971 3.1: the server's own fields.
                self.out.extend_from_slice(
                    format!(
                        "* ID (\"name\" \"mailkeep\" \"version\" \"{}\")\r\n",
                        env!("CARGO_PKG_VERSION")
                    )
                    .as_bytes(),
                );
                self.tagged(tag, Status::Ok, None, "ID completed");
            }
            CommandBody::StartTls => {
                if self.tls {
                    return Ok(self.bad(Some(tag), "TLS is already active"));
                }
                if self.server.tls.is_none() {
                    self.tagged(tag, Status::No, None, "TLS is not configured");
                    return Ok(Flow::Continue);
                }
                self.tagged(tag, Status::Ok, None, "Begin TLS negotiation now");
                return Ok(Flow::StartTls);
            }
            CommandBody::Login { user, password } => {
                if !self.plaintext_ok() {
                    self.tagged(
                        tag,
                        Status::No,
                        Some("PRIVACYREQUIRED"),
                        "use STARTTLS (or port 993) first",
                    );
                    return Ok(Flow::Continue);
                }
                let user = String::from_utf8_lossy(&user).into_owned();
                let password = String::from_utf8_lossy(&password).into_owned();
                return self.login(tag, &user, &password, "LOGIN").await;
            }
            CommandBody::Authenticate { mechanism, initial } => {
                if mechanism != "PLAIN" {
                    self.tagged(
                        tag,
                        Status::No,
                        Some("CANNOT"),
                        "unsupported mechanism; use PLAIN",
                    );
                    return Ok(Flow::Continue);
                }
                if !self.plaintext_ok() {
                    self.tagged(
                        tag,
                        Status::No,
                        Some("PRIVACYREQUIRED"),
                        "use STARTTLS (or port 993) first",
                    );
                    return Ok(Flow::Continue);
                }
                match initial {
                    Some(resp) => return self.sasl_plain(tag, &resp).await,
                    None => {
                        // RFC 9051 6.2.2: an empty challenge, then the client's response line.
                        self.out.extend_from_slice(b"+ \r\n");
                        self.sasl = Some(tag.to_string());
                    }
                }
            }
            CommandBody::Enable(caps) => {
                let mut enabled = Vec::new();
                for c in caps {
                    match c.as_str() {
                        "IMAP4REV2" => {
                            self.rev2 = true;
                            enabled.push("IMAP4rev2");
                        }
                        "CONDSTORE" => {
                            self.condstore = true;
                            enabled.push("CONDSTORE");
                        }
                        "QRESYNC" => {
                            // RFC 7162 3.2.3: QRESYNC implies CONDSTORE.
                            self.qresync = true;
                            self.condstore = true;
                            enabled.push("QRESYNC");
                        }
                        _ => {}
                    }
                }
                enabled.dedup();
                self.out.extend_from_slice(
                    format!("* ENABLED {}\r\n", enabled.join(" "))
                        .trim_end()
                        .as_bytes(),
                );
                self.out.extend_from_slice(b"\r\n");
                self.tagged(tag, Status::Ok, None, "ENABLE completed");
            }
            CommandBody::Unauthenticate => {
                // RFC 8437: back to the not-authenticated state as if newly connected.
                self.user = None;
                self.view = None;
                self.rev2 = false;
                self.condstore = false;
                self.qresync = false;
                self.tagged(tag, Status::Ok, None, "UNAUTHENTICATE completed");
            }
            CommandBody::Compress(mechanism) => {
                if self.deflate.is_some() {
                    self.tagged(
                        tag,
                        Status::No,
                        Some("COMPRESSIONACTIVE"),
                        "already compressing",
                    );
                } else if mechanism != "DEFLATE" {
                    return Ok(self.bad(Some(tag), "the only mechanism is DEFLATE"));
                } else {
                    self.tagged(tag, Status::Ok, None, "DEFLATE active");
                    return Ok(Flow::Compress);
                }
            }
            CommandBody::Notify(set) => return self.notify_set(tag, set).await,
            CommandBody::Namespace => {
                // RFC 2342 5: personal, then other users' (RFC 4314 shared mailboxes).
                self.out.extend_from_slice(
                    format!("* NAMESPACE ((\"\" \"/\")) ((\"{SHARED}/\" \"/\")) NIL\r\n")
                        .as_bytes(),
                );
                self.tagged(tag, Status::Ok, None, "NAMESPACE completed");
            }
            CommandBody::Idle => {
                self.out.extend_from_slice(b"+ idling\r\n");
                return Ok(Flow::Idle(tag.to_string()));
            }
            CommandBody::Select {
                mailbox,
                read_only,
                params,
            } => return self.select(tag, &mailbox, read_only, params).await,
            CommandBody::Create {
                mailbox,
                special_use,
            } => return self.create(tag, &mailbox, &special_use).await,
            CommandBody::Delete(mailbox) => return self.delete(tag, &mailbox).await,
            CommandBody::Rename { from, to } => return self.rename(tag, &from, &to).await,
            CommandBody::Subscribe(m) => return self.subscribe(tag, &m, true).await,
            CommandBody::Unsubscribe(m) => return self.subscribe(tag, &m, false).await,
            CommandBody::List {
                selection,
                reference,
                patterns,
                returns,
            } => {
                return self
                    .list(tag, "LIST", &selection, &reference, &patterns, returns)
                    .await
            }
            CommandBody::Lsub { reference, pattern } => {
                let sel = vec!["SUBSCRIBED".to_string()];
                return self
                    .list(
                        tag,
                        "LSUB",
                        &sel,
                        &reference,
                        &[pattern],
                        ListReturn::default(),
                    )
                    .await;
            }
            CommandBody::Status { mailbox, items } => {
                return self.status(tag, &mailbox, &items).await
            }
            CommandBody::Append { mailbox, messages } => {
                return self.append(tag, &mailbox, messages).await
            }
            CommandBody::GetQuota(root) => return self.get_quota(tag, &root, None).await,
            CommandBody::GetAcl(m) => return self.getacl(tag, &m).await,
            CommandBody::MyRights(m) => return self.myrights(tag, &m).await,
            CommandBody::SetAcl {
                mailbox,
                identifier,
                rights,
            } => return self.setacl(tag, &mailbox, &identifier, Some(&rights)).await,
            CommandBody::DeleteAcl {
                mailbox,
                identifier,
            } => return self.setacl(tag, &mailbox, &identifier, None).await,
            CommandBody::ListRights {
                mailbox,
                identifier,
            } => return self.listrights(tag, &mailbox, &identifier).await,
            CommandBody::GetQuotaRoot(mailbox) => {
                return self.get_quota(tag, b"", Some(&mailbox)).await
            }
            CommandBody::Close => {
                if let Some(view) = self.view.take() {
                    // RFC 4314 4: without "e" CLOSE closes without expunging.
                    if !view.read_only && view.rights.contains(Rights::EXPUNGE) {
                        // RFC 9051 6.4.1: remove \Deleted messages silently.
                        let doomed: Vec<Uid> = view
                            .msgs
                            .iter()
                            .filter(|m| m.flags.iter().any(|f| f == "\\Deleted"))
                            .map(|m| Uid(m.uid))
                            .collect();
                        if !doomed.is_empty() {
                            self.server.store.expunge(view.mailbox, &doomed).await?;
                        }
                    }
                }
                self.tagged(tag, Status::Ok, None, "CLOSE completed");
            }
            CommandBody::Unselect => {
                self.view = None;
                self.tagged(tag, Status::Ok, None, "UNSELECT completed");
            }
            CommandBody::Expunge { uids } => return self.expunge(tag, uids).await,
            CommandBody::Search {
                uid,
                returns,
                program,
            } => return self.search(tag, uid, returns, program).await,
            CommandBody::Fetch {
                uid,
                set,
                items,
                modifiers,
            } => return self.fetch(tag, uid, set, items, modifiers).await,
            CommandBody::Store { uid, store } => return self.store(tag, uid, store).await,
            CommandBody::Copy {
                uid,
                is_move,
                set,
                mailbox,
            } => return self.copy(tag, uid, is_move, set, &mailbox).await,
            CommandBody::Sort { uid, keys, program } => {
                return self.sort(tag, uid, keys, program).await
            }
            CommandBody::Thread {
                uid,
                algorithm,
                program,
            } => return self.thread(tag, uid, algorithm, program).await,
        }
        Ok(Flow::Continue)
    }

    async fn sasl_response(&mut self, tag: &str, parts: &[Part]) -> Res {
        let line = match parts {
            [Part::Text(t)] => String::from_utf8_lossy(t).into_owned(),
            _ => String::new(),
        };
        if line.trim() == "*" {
            // RFC 9051 6.2.2: the client cancelled.
            self.tagged(tag, Status::Bad, None, "AUTHENTICATE cancelled");
            return Ok(Flow::Continue);
        }
        self.sasl_plain(tag, &line).await
    }

    async fn sasl_plain(&mut self, tag: &str, b64: &str) -> Res {
        match decode_plain(b64) {
            Ok(p) => {
                if !p.authzid.is_empty() && !p.authzid.eq_ignore_ascii_case(&p.authcid) {
                    self.tagged(
                        tag,
                        Status::No,
                        Some("AUTHORIZATIONFAILED"),
                        "acting as another user is not allowed",
                    );
                    return Ok(Flow::Continue);
                }
                self.login(tag, &p.authcid, &p.password, "PLAIN").await
            }
            Err(e) => Ok(self.bad(Some(tag), &e.to_string())),
        }
    }

    async fn login(&mut self, tag: &str, login: &str, password: &str, mechanism: &str) -> Res {
        let request = mailkeep_auth::LoginRequest {
            session: &self.id,
            ip: self.peer.ip(),
            protocol: "imap",
            kind: "imap.login",
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
        match user {
            Some(u) => {
                tracing::info!(session = %self.id, user = %u.address, "imap login");
                self.shutdown.logged_in();
                self.user = Some(u);
                let caps = self.capabilities();
                self.tagged(
                    tag,
                    Status::Ok,
                    Some(&format!("CAPABILITY {caps}")),
                    "logged in",
                );
                Ok(Flow::Continue)
            }
            None if busy => {
                // RFC 5530 3: UNAVAILABLE; nothing was checked or counted.
                self.tagged(
                    tag,
                    Status::No,
                    Some("UNAVAILABLE"),
                    "too many logins at once, try again shortly",
                );
                Ok(Flow::Continue)
            }
            None => {
                self.failures += 1;
                if locked {
                    // RFC 5530 3: UNAVAILABLE, a temporary failure.
                    self.tagged(
                        tag,
                        Status::No,
                        Some("UNAVAILABLE"),
                        "too many failed logins for this account, try again later",
                    );
                } else {
                    self.tagged(
                        tag,
                        Status::No,
                        Some("AUTHENTICATIONFAILED"),
                        "authentication failed",
                    );
                }
                if banned {
                    self.untagged(
                        Status::Bye,
                        None,
                        "too many failed logins: your address is banned",
                    );
                    return Ok(Flow::Close("address banned".into()));
                }
                if self.failures >= self.server.auth.max_failures {
                    self.untagged(Status::Bye, None, "too many failed logins");
                    return Ok(Flow::Close("too many failed logins".into()));
                }
                Ok(Flow::Continue)
            }
        }
    }

    async fn start_tls(&mut self) -> Result<(), String> {
        self.flush().await.map_err(|e| format!("i/o error: {e}"))?;
        // RFC 9051 6.2.1 / RFC 2595 3.1: anything pipelined after STARTTLS is discarded,
        // so plaintext cannot be injected into the TLS session.
        self.framer.clear();
        let Some(cfg) = self.server.tls.clone() else {
            return Err("no TLS".into());
        };
        self.conn.upgrade(cfg, HANDSHAKE_TIMEOUT).await?;
        self.tls = true;
        Ok(())
    }

    /// IDLE (RFC 2177): report changes as they happen until DONE.
    async fn idle(&mut self, tag: String) -> Result<(), String> {
        // Under NOTIFY, IDLE uses NOTIFY's receiver and reports what NOTIFY asks for.
        let notifying = self.notify.is_some();
        let mut events = match self.notify.as_mut().and_then(|n| n.events.take()) {
            Some(rx) => rx,
            None => self.server.store.subscribe(),
        };
        let io = |e: std::io::Error| format!("i/o error: {e}");
        // Anything that happened before we subscribed.
        if let Ok(Some(Flow::Close(r))) = self.sync().await {
            let _ = self.flush().await;
            return Err(r);
        }
        self.flush().await.map_err(io)?;
        // An idling connection holds no buffers while it waits.
        self.out = Vec::new();
        self.done = Vec::new();
        self.rbuf = Vec::new();
        self.framer.shrink();
        let timeout = self.server.imap.idle_timeout;
        let mut deadline = Box::pin(tokio::time::sleep(timeout));
        loop {
            if let Some(ev) = self.framer.next_event() {
                match ev {
                    Event::Command(parts) if matches!(parts.as_slice(), [Part::Text(t)] if t.eq_ignore_ascii_case(b"DONE")) =>
                    {
                        self.tagged(&tag, Status::Ok, None, "IDLE terminated");
                    }
                    _ => {
                        self.tagged(&tag, Status::Bad, None, "expected DONE");
                    }
                }
                let _ = self.sync().await;
                self.take_done();
                if let Some(n) = self.notify.as_mut() {
                    n.events = Some(events);
                }
                return Ok(());
            }
            let mut shutdown = self.shutdown.clone();
            if self.rbuf.capacity() == 0 {
                self.rbuf.reserve(64);
            }
            self.rbuf.clear();
            tokio::select! {
                r = self.conn.read_buf(&mut self.rbuf) => match r {
                    Ok(0) => return Err("client closed the connection".into()),
                    Ok(_) => {
                        let data = std::mem::take(&mut self.rbuf);
                        self.ingest(&data)?;
                        deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
                    }
                    Err(e) => return Err(io(e)),
                },
                ev = events.recv() => if notifying {
                    let batch = event_batch(ev, Some(&mut events));
                    match self.notify_events(batch).await {
                        Ok(Some(Flow::Close(r))) => {
                            let _ = self.flush().await;
                            return Err(r);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(session = %self.id, error = %e, "notify failed"),
                    }
                    self.flush().await.map_err(io)?;
                } else {
                    let relevant = match &ev {
                        Ok(e) => self.relevant(e),
                        // Lagged: we missed some; a sync finds them all.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => false,
                    };
                    if relevant {
                        // Take whatever else is already queued, then sync once.
                        while events.try_recv().is_ok() {}
                        if let Some(v) = self.view.as_mut() {
                            v.dirty = true;
                        }
                        match self.sync().await {
                            Ok(Some(Flow::Close(r))) => {
                                let _ = self.flush().await;
                                return Err(r);
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(session = %self.id, error = %e, "idle sync failed"),
                        }
                        self.flush().await.map_err(io)?;
                    }
                    if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        events = self.server.store.subscribe();
                    }
                },
                _ = &mut deadline => {
                    self.untagged(Status::Bye, None, "autologout: idle for too long");
                    let _ = self.flush().await;
                    return Err("timeout".into());
                }
                stop = shutdown.wait() => {
                    if stop == mailkeep_net::Stop::Banned {
                        self.untagged(Status::Bye, None, "your address is banned");
                        let _ = self.flush().await;
                        return Err("address banned".into());
                    }
                    self.untagged(Status::Bye, None, "server shutting down");
                    let _ = self.flush().await;
                    return Err("server shutdown".into());
                }
            }
        }
    }

    /// NOTIFY NONE / NOTIFY SET (RFC 5465 3).
    async fn notify_set(&mut self, tag: &str, set: Option<NotifySet>) -> Res {
        let Some(set) = set else {
            self.notify = None;
            self.tagged(tag, Status::Ok, None, "NOTIFY NONE completed");
            return Ok(Flow::Continue);
        };
        let utf8 = self.utf8();
        let planned = crate::notify::plan(&set, |raw| {
            command::mailbox_name(raw, utf8)
                .map(|n| n.trim_end_matches('/').to_string())
                .map_err(|e| e.0)
        });
        let plan = match planned {
            Ok(p) => p,
            Err(crate::notify::Refusal::Bad(why)) => return Ok(self.bad(Some(tag), &why)),
            Err(crate::notify::Refusal::BadEvent) => {
                self.tagged(
                    tag,
                    Status::No,
                    Some(&format!("BADEVENT ({})", crate::notify::OFFERED)),
                    "event not supported",
                );
                return Ok(Flow::Continue);
            }
        };
        let account = self.account()?.id;
        let store = self.server.store.clone();
        let events = store.subscribe();
        let n = crate::notify::Notify {
            selected: plan.selected,
            delayed: plan.delayed,
            new_items: plan.new_items,
            others: plan.others,
            events: Some(events),
            mailboxes: self.notify_mailboxes().await?,
            subscribed: store.subscriptions(account).await?,
            me: account,
        };
        if set.status {
            // RFC 5465 3: STATUS for every watched mailbox but the selected one, at once.
            let selected_id = self.view.as_ref().map(|v| v.mailbox);
            for mb in n.watched() {
                if Some(mb.id) != selected_id {
                    self.notify_status(&mb).await?;
                }
            }
        }
        self.notify = Some(Box::new(n));
        self.tagged(tag, Status::Ok, None, "NOTIFY completed");
        Ok(Flow::Continue)
    }

    async fn notify_status(&mut self, mb: &Mailbox) -> Result<(), StoreError> {
        let now = self
            .server
            .store
            .mailbox_get(mb.id)
            .await?
            .unwrap_or_else(|| mb.clone());
        let items = [
            StatusItem::Messages,
            StatusItem::UidNext,
            StatusItem::UidValidity,
            StatusItem::Unseen,
        ];
        let data = self.status_items(&now, &items).await?;
        let refs: Vec<(&str, u64)> = data.iter().map(|(k, v)| (*k, *v)).collect();
        let utf8 = self.utf8();
        // The name the client knows (a shared mailbox's is not its owner's).
        response::status_data(&mut self.out, &mb.name, &refs, utf8);
        Ok(())
    }

    /// The mailboxes NOTIFY may report on: the user's own, and other users' the user may
    /// read (RFC 4314 "r"), under their client names and without roles.
    async fn notify_mailboxes(&self) -> Result<Vec<Mailbox>, StoreError> {
        let mut all = self.server.store.mailboxes(self.account()?.id).await?;
        for (name, mut mb, rights) in self.shared_listing().await? {
            if rights.contains(Rights::READ) {
                mb.name = name;
                mb.role = None;
                all.push(mb);
            }
        }
        Ok(all)
    }

    /// Reports a batch of store changes as NOTIFY asked (RFC 5465 5).
    async fn notify_events(
        &mut self,
        batch: Vec<Result<ChangeEvent, tokio::sync::broadcast::error::RecvError>>,
    ) -> Result<Option<Flow>, StoreError> {
        use tokio::sync::broadcast::error::RecvError;
        let Some(me) = self.user.as_ref().map(|u| u.id) else {
            return Ok(None);
        };
        let selected_id = self.view.as_ref().map(|v| v.mailbox);
        let mut sync_selected = false;
        let mut others: Vec<MailboxId> = Vec::new();
        let mut names_changed = false;
        for ev in batch {
            let Some(n) = self.notify.as_ref() else {
                return Ok(None);
            };
            let (mailbox, new, expunge, flags) = match ev {
                Ok(ChangeEvent::MessageAdded(s)) => (s.mailbox, true, false, false),
                Ok(ChangeEvent::FlagsChanged { mailbox, .. }) => (mailbox, false, false, true),
                Ok(ChangeEvent::Expunged { mailbox, .. }) => (mailbox, false, true, false),
                // Another account's change may be a mailbox shared with this user (or no
                // longer shared): looked at too, as it is rare.
                Ok(ChangeEvent::MailboxesChanged(_)) => {
                    names_changed = true;
                    continue;
                }
                Err(RecvError::Lagged(_)) => {
                    sync_selected = true;
                    continue;
                }
                Err(RecvError::Closed) => {
                    if let Some(n) = self.notify.as_mut() {
                        n.events = Some(self.server.store.subscribe());
                    }
                    continue;
                }
            };
            if Some(mailbox) == selected_id {
                let k = n.selected;
                // SELECTED-DELAYED: expunges wait for a command that allows them.
                if (new && k.new) || (flags && k.flags) || (expunge && k.expunge && !n.delayed) {
                    sync_selected = true;
                }
            } else if let Some((_, k)) = n.kinds_for(mailbox) {
                if ((new && k.new) || (expunge && k.expunge) || (flags && k.flags))
                    && !others.contains(&mailbox)
                {
                    others.push(mailbox);
                }
            }
        }
        if names_changed {
            let store = self.server.store.clone();
            let now = self.notify_mailboxes().await?;
            let subs = store.subscriptions(me).await?;
            let utf8 = self.utf8();
            if let Some(n) = self.notify.as_mut() {
                if n.wants_names() {
                    // RFC 5465 5.4: LIST for created mailboxes, \NonExistent for deleted ones.
                    for mb in &now {
                        if !n.mailboxes.iter().any(|o| o.name == mb.name) {
                            response::list_line(
                                &mut self.out,
                                "LIST",
                                &ListEntry {
                                    attributes: &[],
                                    name: &mb.name,
                                    child_info: false,
                                    old_name: None,
                                },
                                utf8,
                            );
                        }
                    }
                    for old in &n.mailboxes {
                        if !now.iter().any(|m| m.name == old.name) {
                            response::list_line(
                                &mut self.out,
                                "LIST",
                                &ListEntry {
                                    attributes: &["\\NonExistent"],
                                    name: &old.name,
                                    child_info: false,
                                    old_name: None,
                                },
                                utf8,
                            );
                        }
                    }
                }
                n.mailboxes = now;
                n.subscribed = subs;
            }
            sync_selected = true;
        }
        for id in others {
            let mb = self
                .notify
                .as_ref()
                .and_then(|n| n.mailboxes.iter().find(|m| m.id == id).cloned());
            if let Some(mb) = mb {
                self.notify_status(&mb).await?;
            }
        }
        if sync_selected {
            let before = self.view.as_ref().map(|v| v.max_uid()).unwrap_or(0);
            if let Some(v) = self.view.as_mut() {
                v.dirty = true;
            }
            if let Some(close) = self.sync().await? {
                return Ok(Some(close));
            }
            let items = self
                .notify
                .as_ref()
                .map(|n| n.new_items.clone())
                .unwrap_or_default();
            let after = self.view.as_ref().map(|v| v.max_uid()).unwrap_or(0);
            if !items.is_empty() && after > before {
                // RFC 5465 5.2: the requested items of each new message, after EXISTS. The
                // FETCH machinery writes a tagged reply too; it is not for the client.
                use mailkeep_imap_proto::cursor::{SeqNo, SequenceSet};
                let set = SequenceSet::Ranges(vec![(SeqNo::Num(before + 1), SeqNo::Num(after))]);
                let done = std::mem::take(&mut self.done);
                let r = self
                    .fetch("notify", true, set, items, Default::default())
                    .await;
                self.done = done;
                r?;
            }
        }
        Ok(None)
    }

    fn relevant(&self, e: &ChangeEvent) -> bool {
        let Some(view) = &self.view else {
            return false;
        };
        match e {
            ChangeEvent::MessageAdded(s) => s.mailbox == view.mailbox,
            ChangeEvent::FlagsChanged { mailbox, .. } | ChangeEvent::Expunged { mailbox, .. } => {
                *mailbox == view.mailbox
            }
            ChangeEvent::MailboxesChanged(a) => {
                *a == view.owner || self.user.as_ref().is_some_and(|u| u.id == *a)
            }
        }
    }

    pub(crate) fn decode_name(&self, raw: &[u8]) -> Result<String, String> {
        let name = command::mailbox_name(raw, self.utf8()).map_err(|e| e.0)?;
        // A trailing delimiter names the same mailbox (RFC 9051 6.3.4).
        Ok(name.trim_end_matches('/').to_string())
    }

    pub(crate) async fn find_mailbox(&self, name: &str) -> Result<Option<Mailbox>, StoreError> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        let boxes = self.server.store.mailboxes(user.id).await?;
        Ok(boxes
            .into_iter()
            .find(|m| m.name == name || (name == "INBOX" && m.name.eq_ignore_ascii_case("INBOX"))))
    }

    fn account(&self) -> Result<&User, StoreError> {
        self.user
            .as_ref()
            .ok_or_else(|| StoreError::Conflict("not logged in".into()))
    }

    async fn select(
        &mut self,
        tag: &str,
        raw: &[u8],
        read_only: bool,
        params: SelectParams,
    ) -> Res {
        if self.view.take().is_some() {
            // RFC 9051 6.3.2 / RFC 7162 3.2.11: the previous mailbox is closed first.
            self.untagged(Status::Ok, Some("CLOSED"), "previous mailbox closed");
        }
        let name = match self.decode_name(raw) {
            Ok(n) => n,
            Err(e) => return Ok(self.bad(Some(tag), &e)),
        };
        if params.qresync.is_some() && !self.qresync {
            return Ok(self.bad(Some(tag), "QRESYNC parameter without ENABLE QRESYNC"));
        }
        if params.condstore {
            self.condstore = true;
        }
        // Subscribed before the mailbox (its HIGHESTMODSEQ and UIDNEXT) is read, so no change
        // falls between the two unseen.
        let events = self.server.store.subscribe();
        let Some(target) = self.resolve(&name).await? else {
            self.tagged(tag, Status::No, Some("NONEXISTENT"), "no such mailbox");
            return Ok(Flow::Continue);
        };
        // RFC 4314 4: SELECT and EXAMINE need "r"; without a right to change anything the
        // mailbox opens read-only (5.2).
        if !self.permit(tag, &target, Rights::READ) {
            return Ok(Flow::Continue);
        }
        let rights = target.rights;
        let read_only = read_only || !writable(rights);
        let shared = target.owner.is_some();
        // Another user's special-use roles are not ours (a client would file its sent mail).
        let role = if target.owner.is_none() {
            target.mailbox.role
        } else {
            None
        };
        let mb = target.mailbox;
        let store = self.server.store.clone();
        let msgs = self.server.snapshots.load(store.as_ref(), &mb).await?;
        let view = View {
            mailbox: mb.id,
            name: target.name,
            owner: mb.account,
            rights,
            read_only,
            uid_validity: mb.uid_validity.0,
            msgs,
            known_modseq: mb.highest_modseq.0,
            uid_next: mb.uid_next.0,
            saved: Vec::new(),
            events: Some(events),
            dirty: false,
        };
        let mut keywords: Vec<&str> = Vec::new();
        for m in &view.msgs {
            for f in m.flags.iter() {
                if !f.starts_with('\\') && !keywords.contains(&f.as_str()) && keywords.len() < 100 {
                    keywords.push(f);
                }
            }
        }
        let kw = if keywords.is_empty() {
            String::new()
        } else {
            format!(" {}", keywords.join(" "))
        };
        let mut o = String::new();
        o.push_str(&format!(
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft{kw})\r\n"
        ));
        if read_only {
            o.push_str("* OK [PERMANENTFLAGS ()] read-only mailbox\r\n");
        } else {
            // RFC 4314 5.1.1: PERMANENTFLAGS shows only what the rights allow.
            let mut perm: Vec<&str> = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]
                .into_iter()
                .chain(keywords.iter().copied())
                .filter(|f| rights.allows_flag(f))
                .collect();
            if rights.contains(Rights::WRITE) {
                perm.push("\\*");
            }
            o.push_str(&format!(
                "* OK [PERMANENTFLAGS ({})] flags permitted\r\n",
                perm.join(" ")
            ));
        }
        o.push_str(&format!("* {} EXISTS\r\n", view.msgs.len()));
        if !self.rev2 {
            // IMAP4rev1 requires RECENT; mailkeep does not track \Recent (RFC 9051 removed it).
            o.push_str("* 0 RECENT\r\n");
            if let Some(i) = view
                .msgs
                .iter()
                .position(|m| !m.flags.iter().any(|f| f == "\\Seen"))
            {
                o.push_str(&format!("* OK [UNSEEN {}] first unseen\r\n", i + 1));
            }
        }
        o.push_str(&format!(
            "* OK [UIDVALIDITY {}] UIDs valid\r\n",
            view.uid_validity
        ));
        o.push_str(&format!(
            "* OK [UIDNEXT {}] predicted next UID\r\n",
            view.uid_next
        ));
        // RFC 7162 3.1.2.1: every SELECT reports HIGHESTMODSEQ.
        o.push_str(&format!(
            "* OK [HIGHESTMODSEQ {}] highest\r\n",
            view.known_modseq
        ));
        self.out.extend_from_slice(o.as_bytes());
        if self.rev2 {
            // Children the user may list only: another user's hidden ones are not mentioned.
            let names: Vec<String> = if shared {
                self.shared_listing()
                    .await?
                    .into_iter()
                    .map(|(n, _, _)| n)
                    .collect()
            } else {
                store
                    .mailboxes(mb.account)
                    .await?
                    .into_iter()
                    .map(|m| m.name)
                    .collect()
            };
            let attrs = attributes(&view.name, role, &names);
            let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
            let name = view.name.clone();
            response::list_line(
                &mut self.out,
                "LIST",
                &ListEntry {
                    attributes: &attrs,
                    name: &name,
                    child_info: false,
                    old_name: None,
                },
                true,
            );
        }
        if let Some(q) = params.qresync {
            // RFC 7162 3.2.5: what changed since the client's state, if its UIDVALIDITY holds.
            if q.uid_validity == view.uid_validity {
                let gone: Vec<u32> = store
                    .expunged_since(mb.id, ModSeq(q.modseq))
                    .await?
                    .into_iter()
                    .map(|u| u.0)
                    .filter(|u| {
                        q.known_uids
                            .as_ref()
                            .is_none_or(|k| k.contains(*u, view.uid_next.saturating_sub(1)))
                    })
                    .collect();
                response::vanished(&mut self.out, &gone, true);
                for (i, m) in view.msgs.iter().enumerate() {
                    if m.modseq > q.modseq {
                        self.out.extend_from_slice(
                            format!(
                                "* {} FETCH (UID {} FLAGS ({}) MODSEQ ({}))\r\n",
                                i + 1,
                                m.uid,
                                m.flags.join(" "),
                                m.modseq
                            )
                            .as_bytes(),
                        );
                    }
                }
            }
        }
        self.view = Some(view);
        let code = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        self.tagged(
            tag,
            Status::Ok,
            Some(code),
            if read_only {
                "EXAMINE completed"
            } else {
                "SELECT completed"
            },
        );
        Ok(Flow::Continue)
    }

    async fn create(&mut self, tag: &str, raw: &[u8], special_use: &[String]) -> Res {
        let mut name = match self.decode_name(raw) {
            Ok(n) => n,
            Err(e) => return Ok(self.bad(Some(tag), &e)),
        };
        if name == "INBOX" {
            self.tagged(
                tag,
                Status::No,
                Some("ALREADYEXISTS"),
                "INBOX always exists",
            );
            return Ok(Flow::Continue);
        }
        let mut role = None;
        for su in special_use {
            match MailboxRole::ALL
                .into_iter()
                .find(|r| r.special_use().is_some_and(|s| s.eq_ignore_ascii_case(su)))
            {
                Some(r) if role.is_none() => role = Some(r),
                _ => {
                    // RFC 6154 3: an attribute we cannot give.
                    self.tagged(
                        tag,
                        Status::No,
                        Some("USEATTR"),
                        &format!("special use {su} is not supported here"),
                    );
                    return Ok(Flow::Continue);
                }
            }
        }
        let mut account = self.account()?.id;
        if self.find_mailbox(&name).await?.is_none() {
            match self.place(&name).await? {
                Place::Personal => {}
                Place::Refused => {
                    self.tagged(tag, Status::No, Some("NOPERM"), "permission denied");
                    return Ok(Flow::Continue);
                }
                Place::Shared(place) => {
                    if place.exists {
                        // Only a mailbox the user can see may be said to exist (RFC 4314 6).
                        if self.resolve(&name).await?.is_some() {
                            self.tagged(
                                tag,
                                Status::No,
                                Some("ALREADYEXISTS"),
                                "mailbox already exists",
                            );
                        } else {
                            self.tagged(tag, Status::No, Some("NOPERM"), "permission denied");
                        }
                        return Ok(Flow::Continue);
                    }
                    // RFC 4314 4: CREATE needs "k" on the nearest existing parent.
                    if !place.parent_rights.contains(Rights::CREATE) {
                        self.tagged(tag, Status::No, Some("NOPERM"), "permission denied");
                        return Ok(Flow::Continue);
                    }
                    if role.is_some() {
                        self.tagged(
                            tag,
                            Status::No,
                            Some("USEATTR"),
                            "special uses belong to the mailbox's owner",
                        );
                        return Ok(Flow::Continue);
                    }
                    account = place.owner;
                    name = place.local;
                }
            }
        }
        // The new mailbox takes its parent's access control list (RFC 4314 4, in the store).
        self.server
            .store
            .mailbox_create(account, &name, role)
            .await?;
        self.tagged(tag, Status::Ok, None, "CREATE completed");
        Ok(Flow::Continue)
    }

    async fn delete(&mut self, tag: &str, raw: &[u8]) -> Res {
        let name = match self.decode_name(raw) {
            Ok(n) => n,
            Err(e) => return Ok(self.bad(Some(tag), &e)),
        };
        if name == "INBOX" {
            self.tagged(tag, Status::No, Some("CANNOT"), "INBOX cannot be deleted");
            return Ok(Flow::Continue);
        }
        let Some(target) = self.resolve(&name).await? else {
            self.tagged(tag, Status::No, Some("NONEXISTENT"), "no such mailbox");
            return Ok(Flow::Continue);
        };
        // RFC 4314 4: DELETE needs "x" on the mailbox.
        if !self.permit(tag, &target, Rights::DELETE_MAILBOX) {
            return Ok(Flow::Continue);
        }
        let account = target.mailbox.account;
        let local = target.mailbox.name.clone();
        if local == "INBOX" {
            self.tagged(tag, Status::No, Some("CANNOT"), "INBOX cannot be deleted");
            return Ok(Flow::Continue);
        }
        let boxes = self.server.store.mailboxes(account).await?;
        let children: Vec<String> = boxes
            .iter()
            .filter(|m| m.name.starts_with(&format!("{local}/")))
            .map(|m| m.name.clone())
            .collect();
        if !children.is_empty() {
            // Another user's children the user may not list are not to be revealed.
            let hidden = match &target.owner {
                Some(owner) => {
                    let visible: Vec<String> = self
                        .shared_listing()
                        .await?
                        .into_iter()
                        .map(|(n, _, _)| n)
                        .collect();
                    children
                        .iter()
                        .any(|c| !visible.contains(&format!("{SHARED}/{owner}/{c}")))
                }
                None => false,
            };
            if hidden {
                self.tagged(tag, Status::No, Some("NOPERM"), "permission denied");
            } else {
                self.tagged(
                    tag,
                    Status::No,
                    Some("HASCHILDREN"),
                    "delete the mailboxes inside it first",
                );
            }
            return Ok(Flow::Continue);
        }
        if self
            .view
            .as_ref()
            .is_some_and(|v| v.mailbox == target.mailbox.id)
        {
            self.view = None;
        }
        self.server.store.mailbox_delete(account, &local).await?;
        self.tagged(tag, Status::Ok, None, "DELETE completed");
        Ok(Flow::Continue)
    }

    async fn rename(&mut self, tag: &str, from: &[u8], to: &[u8]) -> Res {
        let (from, to) = match (self.decode_name(from), self.decode_name(to)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return Ok(self.bad(Some(tag), &e)),
        };
        if to == "INBOX" {
            self.tagged(
                tag,
                Status::No,
                Some("ALREADYEXISTS"),
                "INBOX already exists",
            );
            return Ok(Flow::Continue);
        }
        let Some(src) = self.resolve(&from).await? else {
            self.tagged(tag, Status::No, Some("NONEXISTENT"), "no such mailbox");
            return Ok(Flow::Continue);
        };
        // RFC 4314 4: RENAME needs "x" on the mailbox and "k" on the new parent.
        if !self.permit(tag, &src, Rights::DELETE_MAILBOX) {
            return Ok(Flow::Continue);
        }
        let account = src.mailbox.account;
        let place = if self.find_mailbox(&to).await?.is_none() {
            self.place(&to).await?
        } else {
            Place::Personal
        };
        let local_to = match (&src.owner, place) {
            (None, Place::Personal) => to.clone(),
            (Some(_), Place::Shared(p)) if p.owner == account && !p.exists => {
                if !p.parent_rights.contains(Rights::CREATE) {
                    self.tagged(tag, Status::No, Some("NOPERM"), "permission denied");
                    return Ok(Flow::Continue);
                }
                p.local
            }
            // Across users, onto a hidden name, or nowhere: one answer for all (RFC 4314 6).
            _ => {
                self.tagged(tag, Status::No, Some("NOPERM"), "permission denied");
                return Ok(Flow::Continue);
            }
        };
        self.server
            .store
            .mailbox_rename(account, &src.mailbox.name, &local_to)
            .await?;
        if let Some(v) = self.view.as_mut() {
            if v.name == from {
                v.name = to.clone();
            } else if let Some(rest) = v.name.strip_prefix(&format!("{from}/")) {
                v.name = format!("{to}/{rest}");
            }
        }
        self.tagged(tag, Status::Ok, None, "RENAME completed");
        Ok(Flow::Continue)
    }

    async fn subscribe(&mut self, tag: &str, raw: &[u8], on: bool) -> Res {
        let name = match self.decode_name(raw) {
            Ok(n) => n,
            Err(e) => return Ok(self.bad(Some(tag), &e)),
        };
        let account = self.account()?.id;
        self.server
            .store
            .subscription_set(account, &name, on)
            .await?;
        self.tagged(
            tag,
            Status::Ok,
            None,
            if on {
                "SUBSCRIBE completed"
            } else {
                "UNSUBSCRIBE completed"
            },
        );
        Ok(Flow::Continue)
    }

    fn decode_pattern(&self, raw: &[u8]) -> Result<String, String> {
        if self.utf8() {
            String::from_utf8(raw.to_vec()).map_err(|_| "pattern is not UTF-8".to_string())
        } else {
            let s = std::str::from_utf8(raw)
                .map_err(|_| "8-bit pattern: use modified UTF-7".to_string())?;
            mailkeep_imap_proto::mutf7::decode(s).map_err(|e| format!("pattern: {e}"))
        }
    }

    async fn list(
        &mut self,
        tag: &str,
        verb: &str,
        selection: &[String],
        reference: &[u8],
        patterns: &[Vec<u8>],
        returns: ListReturn,
    ) -> Res {
        let reference = match self.decode_pattern(reference) {
            Ok(r) => r,
            Err(e) => return Ok(self.bad(Some(tag), &e)),
        };
        let mut pats = Vec::new();
        for p in patterns {
            match self.decode_pattern(p) {
                Ok(p) => pats.push(p),
                Err(e) => return Ok(self.bad(Some(tag), &e)),
            }
        }
        // RFC 9051 6.3.9: an empty pattern asks for the delimiter and root.
        if pats.len() == 1 && pats[0].is_empty() {
            self.out
                .extend_from_slice(format!("* {verb} (\\Noselect) \"/\" \"\"\r\n").as_bytes());
            self.tagged(tag, Status::Ok, None, &format!("{verb} completed"));
            return Ok(Flow::Continue);
        }
        let full: Vec<String> = pats
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| format!("{reference}{p}"))
            .collect();
        let account = self.account()?.id;
        let store = self.server.store.clone();
        let items = self.listable(store.mailboxes(account).await?).await?;
        let all_names: Vec<String> = items.iter().map(|i| i.name.clone()).collect();
        let subs = store.subscriptions(account).await?;
        let subscribed_sel = selection.iter().any(|s| s == "SUBSCRIBED");
        let recursive = selection.iter().any(|s| s == "RECURSIVEMATCH");
        let special_sel = selection.iter().any(|s| s == "SPECIAL-USE");
        let lsub = verb == "LSUB";
        let matches = |name: &str| full.iter().any(|p| list_matches(p, name));
        let show_subscribed = (returns.subscribed || subscribed_sel) && !lsub;
        let mut names: Vec<(String, Option<&Listable>, bool)> = Vec::new();
        if subscribed_sel {
            for s in &subs {
                let item = items.iter().find(|i| &i.name == s);
                if matches(s) {
                    names.push((s.clone(), item, false));
                }
            }
            if recursive {
                // RFC 5258 3.5: parents that match only through subscribed children.
                for item in &items {
                    if matches(&item.name)
                        && !subs.contains(&item.name)
                        && subs
                            .iter()
                            .any(|s| s.starts_with(&format!("{}/", item.name)))
                    {
                        names.push((item.name.clone(), Some(item), true));
                    }
                }
            }
        } else {
            for item in &items {
                if matches(&item.name)
                    && (!special_sel || item.role.and_then(MailboxRole::special_use).is_some())
                {
                    names.push((item.name.clone(), Some(item), false));
                }
            }
        }
        let utf8 = self.utf8();
        for (name, item, child_info) in names {
            let mut attrs: Vec<String> = match item {
                Some(i) if i.mailbox.is_none() => {
                    // RFC 4314 4: a level above shared mailboxes that cannot be opened.
                    vec!["\\Noselect".into(), "\\HasChildren".into()]
                }
                Some(i) if !lsub => attributes(&i.name, i.role, &all_names),
                Some(_) => Vec::new(),
                None if lsub => vec!["\\Noselect".into()],
                None => vec!["\\NonExistent".into()],
            };
            if show_subscribed && subs.contains(&name) {
                attrs.push("\\Subscribed".into());
            }
            let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
            response::list_line(
                &mut self.out,
                verb,
                &ListEntry {
                    attributes: &attrs,
                    name: &name,
                    child_info,
                    old_name: None,
                },
                utf8,
            );
            if let (
                Some(items),
                Some(Listable {
                    mailbox: Some(mb),
                    readable: true,
                    ..
                }),
            ) = (&returns.status, item)
            {
                // RFC 5819: STATUS after each selectable mailbox (RFC 4314: that may be read).
                let data = self.status_items(mb, items).await?;
                let refs: Vec<(&str, u64)> = data.iter().map(|(k, v)| (*k, *v)).collect();
                response::status_data(&mut self.out, &name, &refs, utf8);
            }
            self.maybe_flush().await.map_err(io_err)?;
        }
        self.tagged(tag, Status::Ok, None, &format!("{verb} completed"));
        Ok(Flow::Continue)
    }

    /// What LIST can show: the user's own mailboxes, then other users' that the user may list
    /// (RFC 4314 4, "l") under `Shared/owner/`, with the levels above them as containers.
    async fn listable(&self, own: Vec<Mailbox>) -> Result<Vec<Listable>, StoreError> {
        let mut items: Vec<Listable> = own
            .into_iter()
            .map(|mb| Listable {
                name: mb.name.clone(),
                role: mb.role,
                readable: true,
                mailbox: Some(mb),
            })
            .collect();
        let mut seen: std::collections::HashSet<String> =
            items.iter().map(|i| i.name.clone()).collect();
        for (name, mb, rights) in self.shared_listing().await? {
            // Each level above it, once: `Shared`, `Shared/owner`, and any level the user
            // may not list.
            let mut at = 0;
            while let Some(i) = name[at..].find('/') {
                let level = &name[..at + i];
                if seen.insert(level.to_string()) {
                    items.push(Listable {
                        name: level.to_string(),
                        mailbox: None,
                        role: None,
                        readable: false,
                    });
                }
                at += i + 1;
            }
            if seen.insert(name.clone()) {
                items.push(Listable {
                    name,
                    mailbox: Some(mb),
                    role: None,
                    readable: rights.contains(Rights::READ),
                });
            } else if let Some(c) = items
                .iter_mut()
                .find(|i| i.name == name && i.mailbox.is_none())
            {
                // A container that is itself a listable mailbox.
                c.mailbox = Some(mb);
                c.readable = rights.contains(Rights::READ);
            }
        }
        Ok(items)
    }

    async fn status_items(
        &mut self,
        mb: &Mailbox,
        items: &[StatusItem],
    ) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let needs_counts = items.iter().any(|i| {
            matches!(
                i,
                StatusItem::Messages | StatusItem::Unseen | StatusItem::Deleted | StatusItem::Size
            )
        });
        let counts = if needs_counts {
            self.server.store.mailbox_counts(mb.id).await?
        } else {
            Default::default()
        };
        let mut out = Vec::new();
        for i in items {
            out.push(match i {
                StatusItem::Messages => ("MESSAGES", counts.messages),
                StatusItem::UidNext => ("UIDNEXT", mb.uid_next.0 as u64),
                StatusItem::UidValidity => ("UIDVALIDITY", mb.uid_validity.0 as u64),
                StatusItem::Unseen => ("UNSEEN", counts.unseen),
                StatusItem::Deleted => ("DELETED", counts.deleted),
                StatusItem::Size => ("SIZE", counts.size),
                StatusItem::Recent => ("RECENT", 0),
                StatusItem::HighestModSeq => {
                    // RFC 7162 3.1: a CONDSTORE-enabling command.
                    self.condstore = true;
                    ("HIGHESTMODSEQ", mb.highest_modseq.0)
                }
                StatusItem::AppendLimit => ("APPENDLIMIT", self.server.imap.max_literal),
            });
        }
        Ok(out)
    }

    async fn status(&mut self, tag: &str, raw: &[u8], items: &[StatusItem]) -> Res {
        let name = match self.decode_name(raw) {
            Ok(n) => n,
            Err(e) => return Ok(self.bad(Some(tag), &e)),
        };
        let Some(target) = self.resolve(&name).await? else {
            self.tagged(tag, Status::No, Some("NONEXISTENT"), "no such mailbox");
            return Ok(Flow::Continue);
        };
        // RFC 4314 4: STATUS needs "r".
        if !self.permit(tag, &target, Rights::READ) {
            return Ok(Flow::Continue);
        }
        let data = self.status_items(&target.mailbox, items).await?;
        let refs: Vec<(&str, u64)> = data.iter().map(|(k, v)| (*k, *v)).collect();
        let utf8 = self.utf8();
        response::status_data(&mut self.out, &target.name, &refs, utf8);
        self.tagged(tag, Status::Ok, None, "STATUS completed");
        Ok(Flow::Continue)
    }

    async fn get_quota(&mut self, tag: &str, root: &[u8], mailbox: Option<&[u8]>) -> Res {
        let key = self.account()?.address.key();
        let Some(user) = self.server.store.user_get(&key).await? else {
            return Err(StoreError::NotFound("account".into()));
        };
        let mut shared_root = false;
        if let Some(raw) = mailbox {
            let name = match self.decode_name(raw) {
                Ok(n) => n,
                Err(e) => return Ok(self.bad(Some(tag), &e)),
            };
            // A shared mailbox exists here only for a user who may list or use it, as for
            // MYRIGHTS (RFC 4314 4, 6).
            let Some(target) = self
                .resolve(&name)
                .await?
                .filter(|t| t.rights.intersects(crate::acl::visible_rights()))
            else {
                self.tagged(tag, Status::No, Some("NONEXISTENT"), "no such mailbox");
                return Ok(Flow::Continue);
            };
            let mut line = b"* QUOTAROOT ".to_vec();
            response::mailbox(&mut line, &target.name, self.utf8());
            // Another user's mailbox counts against their quota, which is theirs to see.
            shared_root = target.owner.is_some();
            if user.quota > 0 && !shared_root {
                line.extend_from_slice(b" \"\"");
            }
            line.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&line);
        } else if !root.is_empty() {
            self.tagged(
                tag,
                Status::No,
                Some("NONEXISTENT"),
                "the only quota root is \"\"",
            );
            return Ok(Flow::Continue);
        }
        if user.quota > 0 && !shared_root {
            // RFC 9208 5.1: STORAGE in units of 1024 octets.
            response::quota(
                &mut self.out,
                "",
                &[("STORAGE", user.used.div_ceil(1024), user.quota / 1024)],
            );
        } else if mailbox.is_none() {
            self.tagged(
                tag,
                Status::No,
                Some("NONEXISTENT"),
                "no quota is set for this account",
            );
            return Ok(Flow::Continue);
        }
        self.tagged(tag, Status::Ok, None, "GETQUOTA completed");
        Ok(Flow::Continue)
    }
}

type EventResult = Result<ChangeEvent, tokio::sync::broadcast::error::RecvError>;

/// An event and those already waiting behind it (at most 10,000), reported together.
fn event_batch(
    first: EventResult,
    rx: Option<&mut tokio::sync::broadcast::Receiver<ChangeEvent>>,
) -> Vec<EventResult> {
    let mut batch = vec![first];
    if let Some(rx) = rx {
        while let Ok(e) = rx.try_recv() {
            batch.push(Ok(e));
            if batch.len() >= 10_000 {
                break;
            }
        }
    }
    batch
}

/// One name LIST may show.
struct Listable {
    /// The client's name.
    name: String,
    /// The mailbox, None for a level that only holds shared mailboxes.
    mailbox: Option<Mailbox>,
    /// Its SPECIAL-USE role (own mailboxes only).
    role: Option<MailboxRole>,
    /// Whether the user may read it (STATUS).
    readable: bool,
}

/// LIST attributes of a mailbox named `name` among `all` (names in the same namespace).
fn attributes(name: &str, role: Option<MailboxRole>, all: &[String]) -> Vec<String> {
    let prefix = format!("{name}/");
    let children = all.iter().any(|m| m.starts_with(&prefix));
    let mut a = vec![if children {
        "\\HasChildren"
    } else {
        "\\HasNoChildren"
    }
    .to_string()];
    if let Some(su) = role.and_then(MailboxRole::special_use) {
        a.push(su.to_string());
    }
    a
}

pub(crate) fn io_err(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("i/o: {e}"))
}

pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
