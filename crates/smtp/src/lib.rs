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
//! - There is no way to relay: a recipient outside the hosted domains is refused at RCPT.
#![warn(missing_docs)]

pub mod data;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailkeep_config::SmtpConfig;
use mailkeep_delivery::Delivery;
use mailkeep_net::{ConnLimiter, ReverseDns, Shutdown};
use mailkeep_types::Domain;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

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
    serve_reloadable(listener, rx, limiter, shutdown, grace).await;
}

fn spawn_session(
    sessions: &mut JoinSet<()>,
    stream: TcpStream,
    peer: SocketAddr,
    server: &Arc<SmtpServer>,
    limiter: &ConnLimiter,
    shutdown: &Shutdown,
) {
    let permit = limiter.acquire(peer.ip());
    let server = server.clone();
    let shutdown = shutdown.clone();
    sessions.spawn(async move {
        match permit {
            Ok(permit) => {
                run_session(stream, peer, server, shutdown).await;
                drop(permit);
            }
            Err(why) => session::refuse(stream, peer, &server, why).await,
        }
    });
}

/// Like [`serve`], but each new session takes the newest settings from `server` (SIGHUP
/// reload); sessions already open keep the settings they started with.
pub async fn serve_reloadable(
    listener: TcpListener,
    server: tokio::sync::watch::Receiver<Arc<SmtpServer>>,
    limiter: ConnLimiter,
    mut shutdown: Shutdown,
    grace: Duration,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let current = server.borrow().clone();
                        spawn_session(&mut sessions, stream, peer, &current, &limiter, &shutdown);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drain(listener, sessions, grace).await;
}

async fn drain(listener: TcpListener, mut sessions: JoinSet<()>, grace: Duration) {
    drop(listener);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = sessions.join_next() => if next.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!(open = sessions.len(), "grace period over, closing sessions");
                sessions.abort_all();
                break;
            }
        }
    }
}
