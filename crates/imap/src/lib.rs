//! IMAP4rev2 and IMAP4rev1 sessions for mailkeep, over [`mailkeep_imap_proto`].
//!
//! - [`serve`]: the listener loop (port 143 with STARTTLS, 993 with implicit TLS).
//! - `session`: one connection (states, login, STARTTLS, IDLE, mailbox commands) and
//!   `selected_cmds` (FETCH, STORE, SEARCH, SORT, THREAD, COPY, MOVE, EXPUNGE, APPEND).
//! - `view`: the selected mailbox as the session has announced it, synchronized from the
//!   store after each command and on change events during IDLE.
//! - [`fetch`]: FETCH response lines from stored metadata, the cached structure and, for body
//!   sections only, the content.
//! - [`search`]: SEARCH criteria evaluated against one message (RFC 9051 6.4.4), the same
//!   code for every message so that results equal a naive scan.
//! - [`sort`]: SORT, base subjects, THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256).
//! - `acl`: shared mailboxes (`Shared/<owner>/<name>`) and the RFC 4314 rights checks and
//!   commands.
//! - [`Snapshots`]: big mailboxes' message lists kept between SELECTs, checked against the
//!   store each time.
#![warn(missing_docs)]

mod acl;
mod compress;
pub mod fetch;
mod notify;
pub mod search;
mod selected_cmds;
mod session;
mod snapshots;
pub mod sort;
mod util;
mod view;

use std::sync::Arc;
use std::time::Duration;

use mailkeep_config::{AuthConfig, ImapConfig};
use mailkeep_net::stream::{accept_tls, HANDSHAKE_TIMEOUT};
use mailkeep_net::{accept_loop, ConnLimiter, LimitExceeded, Shutdown};
use mailkeep_store::SharedStore;
use tokio::net::TcpListener;

pub use session::run_session;
pub use snapshots::Snapshots;

/// What every IMAP session shares.
pub struct ImapServer {
    /// Our host name.
    pub hostname: String,
    /// The store.
    pub store: SharedStore,
    /// TLS for STARTTLS and port 993.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Limits.
    pub imap: ImapConfig,
    /// Login policy.
    pub auth: AuthConfig,
    /// Password checks, shared by every listener (bounded, with a login cache).
    pub logins: Arc<mailkeep_store::directory::Authenticator>,
    /// Failed-login counting, bans and account locks (shared by every listener).
    pub guard: Arc<mailkeep_auth::Guard>,
    /// Message lists of big mailboxes kept between SELECTs (kept across reloads).
    pub snapshots: Arc<Snapshots>,
}

/// Accepts IMAP connections until shutdown. `implicit_tls`: port 993, TLS before the greeting
/// (RFC 8314). Each new session takes the newest settings from `server` (SIGHUP reload).
pub async fn serve(
    listener: TcpListener,
    server: tokio::sync::watch::Receiver<Arc<ImapServer>>,
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
                        let text = match why {
                            LimitExceeded::Total => "too many connections, try again later",
                            LimitExceeded::PerIp => "too many connections from your address",
                            LimitExceeded::Unauthenticated => {
                                "too many connections from your address that have not logged in"
                            }
                            LimitExceeded::Banned => {
                                "your address is banned after too many failed logins"
                            }
                        };
                        if implicit_tls {
                            // Without a handshake the client could not read a BYE anyway.
                            drop(stream);
                        } else {
                            session::refuse(stream, text).await;
                        }
                        return;
                    }
                };
                if implicit_tls {
                    let Some(cfg) = server.tls.clone() else {
                        tracing::error!("imaps listener without [tls]");
                        return;
                    };
                    match accept_tls(cfg, stream, HANDSHAKE_TIMEOUT).await {
                        Ok(tls) => run_session(tls, peer, server, shutdown, true).await,
                        Err(e) => tracing::debug!(%peer, error = %e, "imaps: no session"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection holds its whole session future, so the future's size is memory per
    /// connection (the target: 10,000 idle connections at 32 KiB or less each).
    #[tokio::test]
    async fn session_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore =
            Arc::new(mailkeep_store_sqlite::SqliteStore::open(dir.path()).unwrap());
        let config = mailkeep_config::Config::parse(
            "hostname = \"mail.example.test\"\n",
            std::path::Path::new("/test/mailkeep.toml"),
        )
        .unwrap();
        let guard = Arc::new(mailkeep_auth::Guard::new(
            config.bans.clone(),
            &config.auth,
            mailkeep_net::bans::BanList::default(),
            store.clone(),
        ));
        let server = Arc::new(ImapServer {
            hostname: config.hostname.clone(),
            store,
            tls: None,
            guard,
            imap: config.imap.clone(),
            auth: config.auth.clone(),
            logins: Arc::new(mailkeep_store::directory::Authenticator::new(
                1,
                Duration::from_secs(60),
            )),
            snapshots: Arc::new(Snapshots::default()),
        });
        let (_client, stream) = tokio::io::duplex(64);
        let (_trigger, shutdown) = mailkeep_net::shutdown_pair();
        let fut = run_session(
            stream,
            "127.0.0.1:1".parse().unwrap(),
            server,
            shutdown,
            false,
        );
        let size = std::mem::size_of_val(&fut);
        eprintln!("session future: {size} bytes");
        assert!(size < 16 * 1024, "session future is {size} bytes");
    }
}
