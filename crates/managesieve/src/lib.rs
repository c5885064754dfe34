//! ManageSieve (RFC 5804): users upload, check, list, activate and delete their Sieve
//! scripts from their mail client, on port 4190 with STARTTLS and SASL PLAIN.
//!
//! Implementation notes:
//! - Commands are parsed from the buffer whole (quoted strings and literals, `{N+}` and
//!   `{N}` alike, RFC 5804 4); a literal larger than a script may be ends the session, since
//!   its bytes are already on the way.
//! - Logins go through the same guard as SMTP, IMAP and POP3 (counted failures, bans).
//! - Scripts are compiled with the delivery path's compiler and limits: an error names its
//!   line, and a script that does not compile is never stored.
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailkeep_config::{AuthConfig, Plaintext};
use mailkeep_delivery::sieve::{check, Limits};
use mailkeep_net::sasl::decode_plain;
use mailkeep_net::stream::{Conn, HANDSHAKE_TIMEOUT};
use mailkeep_net::{accept_loop, ConnLimiter, LimitExceeded, Shutdown};
use mailkeep_store::{SharedStore, StoreError, User};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// The longest command line without its literals.
const MAX_LINE: usize = 8 * 1024;
/// Errors in a row before the session is closed.
const MAX_ERRORS: u32 = 20;
/// How long a session may stay silent.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// Commands a session may send per second, after a burst of twice as many: far above what
/// a client managing its scripts sends, low enough that one connection cannot take a core.
const COMMANDS_PER_SECOND: u32 = 100;

/// The Sieve extensions we announce (RFC 5804 1.7 SIEVE): those our delivery path runs.
pub const EXTENSIONS: &str = "fileinto reject ereject envelope body variables imap4flags \
relational comparator-i;ascii-numeric subaddress date index mailbox special-use regex include \
duplicate vacation vacation-seconds copy editheader spamtest spamtestplus virustest \
encoded-character environment enotify";

/// What every ManageSieve session shares.
pub struct SieveServer {
    /// Our host name.
    pub hostname: String,
    /// The store.
    pub store: SharedStore,
    /// TLS for STARTTLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Login policy.
    pub auth: AuthConfig,
    /// Password checks, shared by every listener.
    pub logins: Arc<mailkeep_store::directory::Authenticator>,
    /// Failed-login counting and bans, shared by every listener.
    pub guard: Arc<mailkeep_auth::Guard>,
    /// Script limits (size, redirects), as delivery applies them.
    pub limits: Limits,
}

/// Accepts ManageSieve connections until shutdown.
pub async fn serve(
    listener: TcpListener,
    server: tokio::sync::watch::Receiver<Arc<SieveServer>>,
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
                        let text = match why {
                            LimitExceeded::Total => "BYE (TRYLATER) \"Too many connections\"\r\n",
                            LimitExceeded::PerIp => {
                                "BYE (TRYLATER) \"Too many connections from your address\"\r\n"
                            }
                            LimitExceeded::Unauthenticated => {
                                "BYE (TRYLATER) \"Too many connections from your address that have not logged in\"\r\n"
                            }
                            LimitExceeded::Banned => {
                                "BYE \"Your address is banned after too many failed logins\"\r\n"
                            }
                        };
                        let mut stream = stream;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            stream.write_all(text.as_bytes()),
                        )
                        .await;
                        return;
                    }
                };
                run_session(stream, peer, server, shutdown).await;
                drop(permit);
            }
        },
    )
    .await;
}

/// One argument of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Arg {
    Str(String),
    Num(u64),
}

/// What parsing the buffer gave.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Not a whole command yet.
    More,
    /// A command (its name upper-cased) and arguments, and the bytes it took.
    Command(String, Vec<Arg>, usize),
    /// A syntax error, and the bytes to skip (to the end of the line).
    Bad(String, usize),
    /// A literal too large to take: the session ends.
    TooLarge(u64),
}

/// Parses one command line with its literals (RFC 5804 4). With `response`, the line is
/// a SASL response: one string, or `*` (the command name is then empty).
fn parse(buf: &[u8], max_literal: usize, response: bool) -> Parsed {
    if !buf.contains(&b'\n') {
        return Parsed::More;
    }
    // A syntax error skips to the end of the line it is on (not into a literal before it).
    let skip =
        |why: &str, at: usize| match buf[at.min(buf.len())..].iter().position(|b| *b == b'\n') {
            Some(p) => Parsed::Bad(why.to_string(), at + p + 1),
            None => Parsed::More,
        };
    let mut i = 0;
    let mut name = String::new();
    if !response {
        while i < buf.len() && buf[i].is_ascii_alphabetic() {
            i += 1;
        }
        if i == 0 {
            return skip("expected a command", i);
        }
        name = String::from_utf8_lossy(&buf[..i]).to_ascii_uppercase();
    } else if buf.first() == Some(&b'*') {
        return match buf.get(1..3) {
            Some(b"\r\n") => Parsed::Command("*".into(), Vec::new(), 3),
            _ => skip("expected a string", i),
        };
    }
    let mut args = Vec::new();
    loop {
        while i < buf.len() && buf[i] == b' ' {
            i += 1;
        }
        match buf.get(i) {
            None => return Parsed::More,
            Some(b'\r') => {
                return match buf.get(i + 1) {
                    None => Parsed::More,
                    Some(b'\n') => Parsed::Command(name, args, i + 2),
                    Some(_) => skip("bare CR", i),
                }
            }
            Some(b'\n') => return Parsed::Command(name, args, i + 1),
            Some(b'"') => {
                let mut s = Vec::new();
                i += 1;
                loop {
                    match buf.get(i) {
                        None => return Parsed::More,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => match buf.get(i + 1) {
                            None => return Parsed::More,
                            Some(c @ (b'"' | b'\\')) => {
                                s.push(*c);
                                i += 2;
                            }
                            Some(_) => return skip("bad escape in a quoted string", i),
                        },
                        Some(b'\r' | b'\n') => return skip("line end in a quoted string", i),
                        Some(c) => {
                            s.push(*c);
                            i += 1;
                        }
                    }
                }
                match String::from_utf8(s) {
                    Ok(s) => args.push(Arg::Str(s)),
                    Err(_) => return skip("a string is not UTF-8", i),
                }
            }
            Some(b'{') => {
                let start = i + 1;
                let mut j = start;
                while buf.get(j).is_some_and(|c| c.is_ascii_digit()) {
                    j += 1;
                }
                let Ok(n) = std::str::from_utf8(&buf[start..j])
                    .unwrap_or("")
                    .parse::<u64>()
                else {
                    return skip("bad literal length", i);
                };
                if buf.get(j) == Some(&b'+') {
                    j += 1;
                }
                match buf.get(j..j + 3) {
                    None => return Parsed::More,
                    Some(b"}\r\n") => {}
                    Some(_) => return skip("bad literal", i),
                }
                if n > max_literal as u64 {
                    return Parsed::TooLarge(n);
                }
                let data = j + 3;
                let end = data + n as usize;
                if buf.len() < end {
                    return Parsed::More;
                }
                match String::from_utf8(buf[data..end].to_vec()) {
                    Ok(s) => args.push(Arg::Str(s)),
                    Err(_) => {
                        // The literal is read whole; skip it and its line.
                        let eol = buf[end..]
                            .iter()
                            .position(|b| *b == b'\n')
                            .map(|p| end + p + 1);
                        return match eol {
                            Some(e) => Parsed::Bad("a string is not UTF-8".into(), e),
                            None => Parsed::More,
                        };
                    }
                }
                i = end;
            }
            Some(c) if c.is_ascii_digit() => {
                let start = i;
                while buf.get(i).is_some_and(|c| c.is_ascii_digit()) {
                    i += 1;
                }
                match std::str::from_utf8(&buf[start..i])
                    .unwrap_or("")
                    .parse::<u64>()
                {
                    Ok(n) => args.push(Arg::Num(n)),
                    Err(_) => return skip("bad number", i),
                }
            }
            Some(_) => return skip("unexpected character", i),
        }
    }
}

/// Parses `data` as a client's stream, command after command (and as SASL responses), for
/// the fuzzer: every command taken consumes bytes, nothing panics. Returns how many
/// commands were read.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) -> usize {
    let mut rest = data;
    let mut n = 0;
    for response in [false, true].into_iter().cycle().take(2 * data.len() + 2) {
        match parse(rest, 4096, response) {
            Parsed::Command(_, _, used) | Parsed::Bad(_, used) => {
                assert!(used > 0 && used <= rest.len());
                rest = &rest[used..];
                n += 1;
            }
            Parsed::More | Parsed::TooLarge(_) => break,
        }
    }
    n
}

/// A string as the server sends it: quoted when short and plain, else a literal.
fn string(s: &str) -> String {
    if s.len() <= 1024 && !s.contains(['"', '\\', '\r', '\n']) {
        format!("\"{s}\"")
    } else {
        format!("{{{}}}\r\n{s}", s.len())
    }
}

/// A script name as stored (NFC), or None when it is not a valid one (RFC 5804 1.6). The
/// CLI names scripts the same way.
pub fn script_name(name: &str) -> Option<String> {
    good_name(name).then(|| nfc(name))
}

/// RFC 5804 1.6: a script name has no control characters (U+0000-001F, U+007F-009F) and
/// no line or paragraph separator (U+2028, U+2029).
fn good_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 512
        && !name
            .chars()
            .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

/// RFC 5804 1.6: names are Net-Unicode (RFC 5198 3), so normalised to NFC: two spellings of
/// "Café" are one script.
fn nfc(name: &str) -> String {
    icu_normalizer::ComposingNormalizerBorrowed::new_nfc()
        .normalize(name)
        .into_owned()
}

enum Flow {
    Continue,
    Close(String),
    StartTls,
}

struct Session<S> {
    conn: Conn<S>,
    tls: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
    server: Arc<SieveServer>,
    peer: SocketAddr,
    shutdown: Shutdown,
    id: String,
    user: Option<User>,
    /// An AUTHENTICATE PLAIN waiting for its response.
    sasl: bool,
    failures: u32,
    errors: u32,
    /// [`COMMANDS_PER_SECOND`].
    pacer: mailkeep_net::pace::Pacer,
}

/// Runs a session until LOGOUT, error, timeout or shutdown.
pub async fn run_session<S>(
    stream: S,
    peer: SocketAddr,
    server: Arc<SieveServer>,
    shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut s = Session {
        pacer: mailkeep_net::pace::Pacer::with_burst(COMMANDS_PER_SECOND, COMMANDS_PER_SECOND * 2),
        conn: Conn::Plain(stream),
        tls: false,
        buf: Vec::new(),
        out: Vec::new(),
        server,
        peer,
        shutdown,
        id: format!("sieve-{:016x}", rand::random::<u64>()),
        user: None,
        sasl: false,
        failures: 0,
        errors: 0,
    };
    let reason = s.run().await;
    tracing::debug!(session = %s.id, peer = %s.peer, reason = %reason, "managesieve session closed");
    let _ = s.conn.shutdown().await;
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    fn plaintext_ok(&self) -> bool {
        self.tls
            || (self.server.auth.plaintext == Plaintext::Loopback && self.peer.ip().is_loopback())
    }

    fn line(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// `OK|NO|BYE [(CODE)] "text"`.
    fn respond(&mut self, word: &str, code: Option<&str>, text: &str) {
        let clean: String = text.chars().filter(|c| !c.is_control()).collect();
        let code = code.map(|c| format!(" ({c})")).unwrap_or_default();
        self.line(&format!("{word}{code} {}", string(&clean)));
    }

    fn no(&mut self, code: Option<&str>, text: &str) -> Flow {
        self.respond("NO", code, text);
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.respond("BYE", None, "Too many errors");
            return Flow::Close("too many errors".into());
        }
        Flow::Continue
    }

    fn capabilities(&mut self) {
        self.line("\"IMPLEMENTATION\" \"mailkeep\"");
        // RFC 5804 1.7: an empty list when no mechanism may be used now.
        let sasl = if self.plaintext_ok() { "PLAIN" } else { "" };
        self.line(&format!("\"SASL\" \"{sasl}\""));
        self.line(&format!("\"SIEVE\" \"{EXTENSIONS}\""));
        // RFC 5804 1.7: the notification methods enotify supports (RFC 5436).
        self.line("\"NOTIFY\" \"mailto\"");
        if self.server.tls.is_some() && !self.tls {
            self.line("\"STARTTLS\"");
        }
        self.line(&format!(
            "\"MAXREDIRECTS\" \"{}\"",
            self.server.limits.max_redirects
        ));
        if let Some(u) = &self.user {
            self.line(&format!("\"OWNER\" {}", string(&u.address.to_string())));
        }
        self.line("\"VERSION\" \"1.0\"");
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.conn.write_all(&self.out).await?;
            self.conn.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn run(&mut self) -> String {
        // RFC 5804 1.8: the greeting is the capability list and OK.
        self.capabilities();
        self.respond(
            "OK",
            None,
            &format!("{} ManageSieve ready", self.server.hostname),
        );
        let max_literal = self.server.limits.max_script_size + 1024;
        loop {
            loop {
                let flow = match parse(&self.buf, max_literal, self.sasl) {
                    Parsed::More => break,
                    Parsed::TooLarge(n) => {
                        self.respond(
                            "BYE",
                            Some("QUOTA/MAXSIZE"),
                            &format!("A string of {n} bytes is too large"),
                        );
                        let _ = self.flush().await;
                        return "literal too large".into();
                    }
                    Parsed::Bad(why, n) => {
                        self.buf.drain(..n.min(self.buf.len()));
                        self.sasl = false;
                        self.no(None, &format!("Syntax error: {why}"))
                    }
                    Parsed::Command(name, args, n) => {
                        self.buf.drain(..n.min(self.buf.len()));
                        let wait = self.pacer.take(std::time::Instant::now());
                        if !wait.is_zero() {
                            // What is due goes out first.
                            if self.flush().await.is_err() {
                                return "i/o error".into();
                            }
                            tokio::time::sleep(wait).await;
                        }
                        match self.command(&name, args).await {
                            Ok(f) => f,
                            Err(e) => {
                                tracing::error!(session = %self.id, error = %e, "managesieve: storage error");
                                self.respond("NO", Some("TRYLATER"), "Temporary storage failure");
                                Flow::Continue
                            }
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
                        if let Err(e) = self.flush().await {
                            return format!("i/o error: {e}");
                        }
                        // RFC 5804 2.2: nothing pipelined before the handshake is kept.
                        self.buf.clear();
                        let Some(cfg) = self.server.tls.clone() else {
                            return "no TLS".into();
                        };
                        if let Err(e) = self.conn.upgrade(cfg, HANDSHAKE_TIMEOUT).await {
                            return e;
                        }
                        self.tls = true;
                        // RFC 5804 2.2: the capabilities again, then OK.
                        self.capabilities();
                        self.respond("OK", None, "TLS is on");
                    }
                }
            }
            // One command (its literals included) may not grow without end.
            if self.buf.len() > max_literal + MAX_LINE
                || (self.buf.len() > MAX_LINE && !self.buf.contains(&b'\n'))
            {
                self.respond("BYE", None, "Line too long");
                let _ = self.flush().await;
                return "line too long".into();
            }
            if let Err(e) = self.flush().await {
                return format!("i/o error: {e}");
            }
            let mut chunk = [0u8; 8192];
            let mut shutdown = self.shutdown.clone();
            let n = tokio::select! {
                r = tokio::time::timeout(IDLE, self.conn.read(&mut chunk)) => r,
                stop = shutdown.wait() => {
                    if stop == mailkeep_net::Stop::Banned {
                        self.respond("BYE", None, "Your address is banned");
                        let _ = self.flush().await;
                        return "address banned".into();
                    }
                    self.respond("BYE", Some("TRYLATER"), "Server shutting down");
                    let _ = self.flush().await;
                    return "server shutdown".into();
                }
            };
            match n {
                Err(_) => {
                    self.respond("BYE", None, "Idle for too long");
                    let _ = self.flush().await;
                    return "timeout".into();
                }
                Ok(Ok(0)) => return "client closed the connection".into(),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return format!("i/o error: {e}"),
            }
        }
    }

    async fn command(&mut self, name: &str, args: Vec<Arg>) -> Result<Flow, StoreError> {
        // A SASL response line (RFC 5804 2.1).
        if self.sasl {
            self.sasl = false;
            return match args.first() {
                Some(Arg::Str(b64)) if name.is_empty() => self.plain(b64).await,
                _ => Ok(self.no(None, "Authentication cancelled")),
            };
        }
        let strs: Vec<&str> = args
            .iter()
            .filter_map(|a| match a {
                Arg::Str(s) => Some(s.as_str()),
                Arg::Num(_) => None,
            })
            .collect();
        let authed = self.user.is_some();
        let flow = match (name, authed) {
            ("CAPABILITY", _) => {
                self.capabilities();
                self.respond("OK", None, "Capability completed");
                Flow::Continue
            }
            ("NOOP", _) => {
                match strs.first() {
                    // RFC 5804 2.15: the tag comes back.
                    Some(tag) => {
                        let t = string(tag);
                        self.line(&format!("OK (TAG {t}) \"Done\""));
                    }
                    None => self.respond("OK", None, "Done"),
                }
                Flow::Continue
            }
            ("LOGOUT", _) => {
                self.respond("OK", None, "Logout completed");
                Flow::Close("logout".into())
            }
            ("STARTTLS", false) => {
                if self.tls || self.server.tls.is_none() {
                    return Ok(self.no(None, "TLS is not available"));
                }
                self.respond("OK", None, "Begin TLS negotiation");
                Flow::StartTls
            }
            ("AUTHENTICATE", false) => {
                let mech = strs.first().map(|m| m.to_ascii_uppercase());
                if mech.as_deref() != Some("PLAIN") {
                    return Ok(self.no(None, "Only PLAIN is supported"));
                }
                if !self.plaintext_ok() {
                    return Ok(self.no(Some("ENCRYPT-NEEDED"), "Use STARTTLS first"));
                }
                match strs.get(1) {
                    Some(initial) => {
                        let initial = initial.to_string();
                        return self.plain(&initial).await;
                    }
                    None => {
                        // RFC 5804 2.1: an empty challenge; the response comes next.
                        self.line("\"\"");
                        self.sasl = true;
                        Flow::Continue
                    }
                }
            }
            (
                "HAVESPACE" | "PUTSCRIPT" | "LISTSCRIPTS" | "SETACTIVE" | "GETSCRIPT"
                | "DELETESCRIPT" | "RENAMESCRIPT" | "CHECKSCRIPT" | "UNAUTHENTICATE",
                false,
            ) => self.no(None, "Log in first"),
            ("AUTHENTICATE" | "STARTTLS", true) => self.no(None, "Already logged in"),
            (_, true) => self.scripts(name, &args, &strs).await?,
            _ => self.no(None, &format!("Unknown command {name}")),
        };
        Ok(flow)
    }

    /// The commands on scripts, logged in.
    async fn scripts(
        &mut self,
        name: &str,
        args: &[Arg],
        strs: &[&str],
    ) -> Result<Flow, StoreError> {
        let Some(user) = self.user.clone() else {
            return Ok(self.no(None, "Log in first"));
        };
        // The arguments that are script names, in NFC; a name stored as given before names
        // were normalised is still found as it is.
        let existing: Vec<String> = match name {
            "CHECKSCRIPT" | "LISTSCRIPTS" | "NOOP" => Vec::new(),
            _ => self
                .server
                .store
                .sieve_list(user.id)
                .await?
                .into_iter()
                .map(|(n, _)| n)
                .collect(),
        };
        let normalised: Vec<String> = strs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let is_name = match name {
                    "RENAMESCRIPT" => true,
                    "CHECKSCRIPT" => false,
                    _ => i == 0,
                };
                let new_name = name == "RENAMESCRIPT" && i == 1;
                if !is_name || (!new_name && existing.iter().any(|n| n == s)) {
                    s.to_string()
                } else {
                    nfc(s)
                }
            })
            .collect();
        let strs: Vec<&str> = normalised.iter().map(String::as_str).collect();
        let store = self.server.store.clone();
        let limits = self.server.limits;
        // RFC 5804 2.3: a new script beyond the account's allowance is refused up front.
        let too_many = |list: &[(String, bool)], script: &str| {
            list.len() >= limits.max_scripts && !list.iter().any(|(n, _)| n == script)
        };
        let flow = match (name, strs.as_slice()) {
            ("HAVESPACE", [script]) => {
                let size = args.iter().find_map(|a| match a {
                    Arg::Num(n) => Some(*n),
                    Arg::Str(_) => None,
                });
                match size {
                    None => self.no(None, "HAVESPACE needs a name and a size"),
                    Some(_) if !good_name(script) => self.no(None, "Bad script name"),
                    Some(n) if n > limits.max_script_size as u64 => self.no(
                        Some("QUOTA/MAXSIZE"),
                        &format!("Scripts may have at most {} bytes", limits.max_script_size),
                    ),
                    Some(_) if too_many(&store.sieve_list(user.id).await?, script) => self.no(
                        Some("QUOTA/MAXSCRIPTS"),
                        &format!("At most {} scripts", limits.max_scripts),
                    ),
                    Some(_) => {
                        self.respond("OK", None, "Putscript would succeed");
                        Flow::Continue
                    }
                }
            }
            ("PUTSCRIPT", [script, text]) => {
                if !good_name(script) {
                    return Ok(self.no(None, "Bad script name"));
                }
                if text.len() > limits.max_script_size {
                    return Ok(self.no(
                        Some("QUOTA/MAXSIZE"),
                        &format!("Scripts may have at most {} bytes", limits.max_script_size),
                    ));
                }
                if too_many(&store.sieve_list(user.id).await?, script) {
                    return Ok(self.no(
                        Some("QUOTA/MAXSCRIPTS"),
                        &format!("At most {} scripts", limits.max_scripts),
                    ));
                }
                match check(text, &limits) {
                    Err(e) => self.no(None, &e),
                    Ok(()) => {
                        store.sieve_put(user.id, script, text).await?;
                        self.respond("OK", None, "Putscript completed");
                        Flow::Continue
                    }
                }
            }
            ("CHECKSCRIPT", [text]) => match check(text, &limits) {
                Err(e) => self.no(None, &e),
                Ok(()) => {
                    self.respond("OK", None, "Script is valid");
                    Flow::Continue
                }
            },
            ("LISTSCRIPTS", []) => {
                for (n, active) in store.sieve_list(user.id).await? {
                    let line = format!("{}{}", string(&n), if active { " ACTIVE" } else { "" });
                    self.line(&line);
                }
                self.respond("OK", None, "Listscripts completed");
                Flow::Continue
            }
            ("SETACTIVE", [script]) => {
                let which = (!script.is_empty()).then_some(*script);
                match store.sieve_activate(user.id, which).await {
                    Ok(()) => {
                        self.respond("OK", None, "Setactive completed");
                        Flow::Continue
                    }
                    Err(StoreError::NotFound(_)) => self.no(Some("NONEXISTENT"), "No such script"),
                    Err(e) => return Err(e),
                }
            }
            ("GETSCRIPT", [script]) => match store.sieve_get(user.id, script).await? {
                Some(text) => {
                    self.out
                        .extend_from_slice(format!("{{{}}}\r\n", text.len()).as_bytes());
                    self.out.extend_from_slice(text.as_bytes());
                    self.out.extend_from_slice(b"\r\n");
                    self.respond("OK", None, "Getscript completed");
                    Flow::Continue
                }
                None => self.no(Some("NONEXISTENT"), "No such script"),
            },
            ("DELETESCRIPT", [script]) => match store.sieve_delete(user.id, script).await {
                Ok(()) => {
                    self.respond("OK", None, "Deletescript completed");
                    Flow::Continue
                }
                Err(StoreError::NotFound(_)) => self.no(Some("NONEXISTENT"), "No such script"),
                Err(StoreError::Conflict(_)) => {
                    self.no(Some("ACTIVE"), "The active script cannot be deleted")
                }
                Err(e) => return Err(e),
            },
            ("RENAMESCRIPT", [old, new]) => {
                if !good_name(new) {
                    return Ok(self.no(None, "Bad script name"));
                }
                let Some(text) = store.sieve_get(user.id, old).await? else {
                    return Ok(self.no(Some("NONEXISTENT"), "No such script"));
                };
                if store.sieve_get(user.id, new).await?.is_some() {
                    return Ok(self.no(Some("ALREADYEXISTS"), "A script has that name"));
                }
                let active = store
                    .sieve_list(user.id)
                    .await?
                    .into_iter()
                    .any(|(n, a)| a && n == *old);
                // The new name first: a failure half-way leaves both, never neither.
                store.sieve_put(user.id, new, &text).await?;
                if active {
                    store.sieve_activate(user.id, Some(new)).await?;
                }
                store.sieve_delete(user.id, old).await?;
                self.respond("OK", None, "Renamescript completed");
                Flow::Continue
            }
            ("UNAUTHENTICATE", []) => {
                self.user = None;
                self.respond("OK", None, "Unauthenticate completed");
                Flow::Continue
            }
            (
                "HAVESPACE" | "PUTSCRIPT" | "CHECKSCRIPT" | "LISTSCRIPTS" | "SETACTIVE"
                | "GETSCRIPT" | "DELETESCRIPT" | "RENAMESCRIPT" | "UNAUTHENTICATE",
                _,
            ) => self.no(None, &format!("Wrong arguments for {name}")),
            _ => self.no(None, &format!("Unknown command {name}")),
        };
        Ok(flow)
    }

    /// SASL PLAIN with the base64 response (RFC 4616).
    async fn plain(&mut self, b64: &str) -> Result<Flow, StoreError> {
        let plain = match decode_plain(b64) {
            Ok(p) => p,
            Err(e) => return Ok(self.no(None, &format!("Bad PLAIN response: {e}"))),
        };
        if !plain.authzid.is_empty() && !plain.authzid.eq_ignore_ascii_case(&plain.authcid) {
            return Ok(self.no(None, "Acting as another user is not allowed"));
        }
        let request = mailkeep_auth::LoginRequest {
            session: &self.id,
            ip: self.peer.ip(),
            protocol: "managesieve",
            kind: "managesieve.login",
            mechanism: "PLAIN",
            tls: self.tls,
            login: &plain.authcid,
            password: &plain.password,
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
                self.shutdown.logged_in();
                self.user = Some(u);
                self.respond("OK", None, "Logged in");
                Ok(Flow::Continue)
            }
            None if busy => {
                // RFC 5804 1.3: TRYLATER; nothing was checked or counted.
                self.respond(
                    "NO",
                    Some("TRYLATER"),
                    "Too many logins at once, try again shortly",
                );
                Ok(Flow::Continue)
            }
            None => {
                self.failures += 1;
                if locked {
                    self.respond(
                        "NO",
                        Some("TRYLATER"),
                        "Too many failed logins for this account, try again later",
                    );
                } else {
                    self.respond("NO", None, "Authentication failed");
                }
                if banned {
                    self.respond(
                        "BYE",
                        None,
                        "Too many failed logins: your address is banned",
                    );
                    return Ok(Flow::Close("address banned".into()));
                }
                if self.failures >= self.server.auth.max_failures {
                    self.respond("BYE", None, "Too many failed logins");
                    return Ok(Flow::Close("too many failed logins".into()));
                }
                Ok(Flow::Continue)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(input: &str) -> Parsed {
        parse(input.as_bytes(), 100, false)
    }

    #[test]
    fn commands_strings_and_literals() {
        assert_eq!(
            cmd("putscript \"a \\\"b\\\"\" {5+}\r\nkeep;\r\n"),
            Parsed::Command(
                "PUTSCRIPT".into(),
                vec![Arg::Str("a \"b\"".into()), Arg::Str("keep;".into())],
                33
            )
        );
        assert_eq!(
            cmd("HAVESPACE \"x\" 42\r\n"),
            Parsed::Command(
                "HAVESPACE".into(),
                vec![Arg::Str("x".into()), Arg::Num(42)],
                18
            )
        );
        // Synchronizing literals are taken the same way.
        assert!(matches!(
            cmd("CHECKSCRIPT {5}\r\nkeep;\r\n"),
            Parsed::Command(_, _, 24)
        ));
        assert_eq!(cmd("PUTSCRIPT \"a\" {10+}\r\nkeep;"), Parsed::More);
        assert_eq!(cmd("LOGOUT"), Parsed::More);
        assert_eq!(cmd("CHECKSCRIPT {500+}\r\n"), Parsed::TooLarge(500));
        assert!(matches!(cmd("?? x\r\nNOOP\r\n"), Parsed::Bad(_, 6)));
        assert!(matches!(cmd("NOOP \"a\r\n"), Parsed::Bad(_, 9)));
        // An error after a literal skips to the end of that line, not into the literal.
        assert!(matches!(
            cmd("PUTSCRIPT {6+}\r\nLOGOUT ?\r\nNOOP\r\n"),
            Parsed::Bad(_, 26)
        ));
        assert_eq!(
            parse(b"\"AGEAYg==\"\r\n", 100, true),
            Parsed::Command(String::new(), vec![Arg::Str("AGEAYg==".into())], 12)
        );
        assert_eq!(
            parse(b"*\r\n", 100, true),
            Parsed::Command("*".into(), vec![], 3)
        );
    }

    #[test]
    fn strings_go_out_quoted_or_as_literals() {
        assert_eq!(string("abc"), "\"abc\"");
        assert_eq!(string("a\"b"), "{3}\r\na\"b");
        assert!(good_name("vacation") && !good_name("") && !good_name("a\nb"));
        assert!(!good_name("a\u{2028}b") && !good_name("a\u{85}b"));
        // "Café" with a combining accent is the precomposed one.
        assert_eq!(nfc("Cafe\u{301}"), "Caf\u{e9}");
    }
}
