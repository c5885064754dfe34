//! SMTP inbound (MX): the server loop and sessions, over smtp-proto's command parser.
//!
//! Implementation notes:
//! - Per-connection state ([`session`]'s `Session`) is kept apart from per-message state
//!   (`Transaction`), which is dropped after every message, RSET, EHLO and STARTTLS.
//! - Every command is handled as: check state and syntax, then policy (recipient exists, relay,
//!   quota, limits), then change the transaction. Replies follow RFC 5321 4.2 and RFC 3463
//!   enhanced codes; syntax errors are 500/501, user errors 5xx, server errors 4xx plus a log
//!   line.
//! - A message is answered 250 only after [`mailkeep_delivery::Delivery::deliver`] returned,
//!   i.e. after the store committed it durably.
//! - The MX never relays: a recipient outside the hosted domains is refused at RCPT. A server
//!   with [`Submission`] set serves message submission (RFC 6409) instead: AUTH first, then
//!   the user's own addresses only, in MAIL FROM and in From:.
#![warn(missing_docs)]

pub mod data;
mod session;

use std::sync::Arc;
use std::time::Duration;

use mailkeep_config::{AuthConfig, SmtpConfig};
use mailkeep_delivery::Delivery;
use mailkeep_net::{accept_loop, ConnLimiter, ReverseDns, Shutdown};
use mailkeep_store::directory::Authenticator;
use mailkeep_types::Domain;
use tokio::net::TcpListener;

pub use session::run_session;

/// What every SMTP session shares.
pub struct SmtpServer {
    /// Our host name (greeting, Received).
    pub hostname: String,
    /// Limits.
    pub config: SmtpConfig,
    /// Local delivery and directory.
    pub delivery: Delivery,
    /// TLS for STARTTLS, if configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Reverse DNS.
    pub rdns: ReverseDns,
    /// The domain `postmaster` without a domain refers to (RFC 5321 4.5.1).
    pub primary_domain: Option<Domain>,
    /// Set on the submission ports (587, 465): what AUTH needs.
    pub submission: Option<Submission>,
    /// The outbound queue: submitted mail to other domains, and on the MX forwarded copies
    /// and bounces to our SRS addresses (the MX never relays: RCPT needs a local domain).
    pub outbound: Option<Arc<mailkeep_queue::Outbound>>,
    /// Sender authentication of inbound mail (the MX; never on the submission ports).
    pub verifier: Option<Arc<mailkeep_verify::Verifier>>,
    /// How the MX forwards mail to aliases' external targets (through `outbound`; with
    /// `enabled` off it forwards only bounces to SRS addresses it made before).
    pub forwarding: mailkeep_config::ForwardingConfig,
    /// What each account may send to other domains (submission).
    pub limits: mailkeep_config::LimitsConfig,
    /// Compromised-account detection, shared with the queue and the login guard.
    pub watch: Option<Arc<mailkeep_delivery::watch::Watch>>,
    /// Messages per sender domain this hour (the MX), shared by every session and kept
    /// across reloads.
    pub rates: Arc<SenderRates>,
    /// Virus scanning of every message, when configured.
    pub antivirus: Option<Antivirus>,
    /// Spam scoring on the MX.
    pub spam: mailkeep_config::SpamConfig,
    /// Greylisting on the MX.
    pub greylist: mailkeep_config::GreylistConfig,
    /// DNS blocklists the MX asks about clients, senders' domains and links, when
    /// configured.
    pub dnsbl: Option<Dnsbl>,
}

/// The DNS blocklists the MX asks about each client (RFC 5782).
#[derive(Clone)]
pub struct Dnsbl {
    /// The resolver (it caches answers for their TTL).
    pub resolver: mailkeep_net::TokioResolver,
    /// The lists' zones.
    pub zones: Vec<String>,
    /// File a listed client's mail to Junk instead of refusing it.
    pub junk: bool,
    /// Domain lists asked about the MAIL FROM and From: domains (RHSBL).
    pub rhsbl: Vec<String>,
    /// Domain lists asked about the domains of the message's links (URI blocklists).
    pub uribl: Vec<String>,
}

/// clamd and what to do when it gives no verdict.
#[derive(Clone)]
pub struct Antivirus {
    /// The scanner.
    pub clamd: mailkeep_policy::antivirus::Clamd,
    /// Accept mail when clamd fails (else 451, the sender retries).
    pub fail_open: bool,
}

/// Messages the MX took per MAIL FROM domain in the current hour (a fixed window per
/// domain), for `smtp.max_messages_per_sender_domain`.
#[derive(Default)]
pub struct SenderRates {
    counts: std::sync::Mutex<std::collections::HashMap<String, (i64, u32)>>,
}

/// Domains tracked at once; beyond it, the ones not seen this hour are forgotten.
const MAX_RATE_DOMAINS: usize = 100_000;

impl SenderRates {
    /// Whether `domain` is still under `limit` messages this hour at unix time `now`.
    pub fn within(&self, domain: &str, now: i64, limit: u32) -> bool {
        let hour = now.div_euclid(3600);
        let Ok(c) = self.counts.lock() else {
            return true;
        };
        match c.get(&domain.to_ascii_lowercase()) {
            Some((h, n)) if *h == hour => *n < limit,
            _ => true,
        }
    }

    /// Counts one message taken from `domain` at `now`.
    pub fn count(&self, domain: &str, now: i64) {
        let hour = now.div_euclid(3600);
        let Ok(mut c) = self.counts.lock() else {
            return;
        };
        if c.len() >= MAX_RATE_DOMAINS {
            c.retain(|_, (h, _)| *h == hour);
        }
        let e = c.entry(domain.to_ascii_lowercase()).or_insert((hour, 0));
        if e.0 != hour {
            *e = (hour, 0);
        }
        e.1 += 1;
    }
}

/// An address as RCPT TO would take it (smtp-proto's RFC 5321 4.1.2 syntax, RFC 6531's UTF-8
/// local parts, then our [`mailkeep_types::Address`] rules): `mailkeep user add` and `alias
/// add` create only addresses that mail can be sent to. The error says what is wrong.
pub fn recipient_address(input: &str) -> Result<mailkeep_types::Address, String> {
    if input
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>')
    {
        return Err("control characters and angle brackets are not allowed".into());
    }
    let line = format!("RCPT TO:<{input}>\r\n");
    match smtp_proto::Request::parse(&mut line.as_bytes().iter()) {
        Ok(smtp_proto::Request::Rcpt { to }) if to.address == input => {
            mailkeep_types::Address::parse(&to.address).map_err(|e| e.to_string())
        }
        Ok(_) => Err("not an address SMTP accepts (RFC 5321 4.1.2)".into()),
        Err(_) => Err(
            "not an address SMTP accepts (RFC 5321 4.1.2: dot-separated atoms, or a quoted string, before the @)"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_addresses_are_those_rcpt_takes() {
        for ok in [
            "alice@example.test",
            "a.b+tag@example.test",
            "\u{4e2d}@example.test",
            "x_y-z@sub.example.test",
        ] {
            assert!(recipient_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a..b@example.test",
            ".a@example.test",
            "a b@example.test",
            "a@",
            "@example.test",
            "a@b@example.test",
            "a\r\n@example.test",
            "<a>@example.test",
        ] {
            assert!(recipient_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sender_rates_count_per_domain_and_hour() {
        let r = SenderRates::default();
        let t = 7200 * 100;
        for _ in 0..3 {
            assert!(r.within("Big.Example", t, 3));
            r.count("big.example", t);
        }
        assert!(
            !r.within("big.example", t + 10, 3),
            "the 4th in the hour waits"
        );
        assert!(r.within("other.example", t, 3), "per domain");
        assert!(r.within("big.example", t + 3600, 3), "a new hour");
    }
}

/// What message submission (RFC 6409) adds to an SMTP server.
#[derive(Clone)]
pub struct Submission {
    /// The password checker shared with IMAP and POP3.
    pub logins: Arc<Authenticator>,
    /// Failed-login counting, bans and account locks, shared with IMAP and POP3.
    pub guard: Arc<mailkeep_auth::Guard>,
    /// When passwords may be sent, and how failures are slowed down.
    pub auth: AuthConfig,
}

/// Accepts connections until shutdown; then waits (bounded by `grace`) for open sessions to
/// finish their current transaction.
pub async fn serve(
    listener: TcpListener,
    server: Arc<SmtpServer>,
    limiter: ConnLimiter,
    shutdown: Shutdown,
    grace: Duration,
) {
    let (_tx, rx) = tokio::sync::watch::channel(server);
    serve_reloadable(listener, rx, limiter, shutdown, grace, false).await;
}

/// How long a client has for the TLS handshake of an implicit-TLS connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Like [`serve`], but each new session takes the newest settings from `server` (SIGHUP
/// reload); sessions already open keep the settings they started with. `implicit_tls`:
/// every connection starts with a TLS handshake (submissions on 465, RFC 8314 3.3).
pub async fn serve_reloadable(
    listener: TcpListener,
    server: tokio::sync::watch::Receiver<Arc<SmtpServer>>,
    limiter: ConnLimiter,
    shutdown: Shutdown,
    grace: Duration,
    implicit_tls: bool,
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
                // The session ends when its address is banned, too.
                let (permit, shutdown) = match permit {
                    Ok(p) => {
                        let watched = p.watch(shutdown);
                        (Ok(p), watched)
                    }
                    Err(why) => (Err(why), shutdown),
                };
                match permit {
                    Ok(permit) if implicit_tls => {
                        let Some(cfg) = server.tls.clone() else {
                            tracing::error!("submissions listener without [tls]");
                            return;
                        };
                        match mailkeep_net::stream::accept_tls(cfg, stream, HANDSHAKE_TIMEOUT).await
                        {
                            Ok(tls) => {
                                let info = session::tls_info(tls.get_ref().1);
                                run_session(tls, peer, server, shutdown, Some(info)).await;
                            }
                            Err(e) => tracing::debug!(%peer, error = %e, "submissions: no session"),
                        }
                        drop(permit);
                    }
                    Ok(permit) => {
                        run_session(stream, peer, server, shutdown, None).await;
                        drop(permit);
                    }
                    // Without a handshake the client could not read a 421 anyway.
                    Err(_) if implicit_tls => drop(stream),
                    Err(why) => session::refuse(stream, peer, &server, why).await,
                }
            }
        },
    )
    .await;
}
