//! Transport shared by every listener: TLS configuration, connection limits, reverse DNS and
//! the shutdown signal. No protocol logic lives here.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
pub use hickory_resolver::TokioResolver;
use tokio::sync::watch;

pub mod accept;
pub mod bans;
pub mod pace;
pub mod sasl;
pub mod stream;

pub use accept::accept_loop;

/// Errors setting up transport.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Certificate or key unreadable or invalid.
    #[error("TLS: {0}")]
    Tls(String),
    /// Resolver setup failed.
    #[error("DNS: {0}")]
    Dns(String),
}

/// Loads a PEM certificate chain and private key into a rustls server config.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, NetError> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| NetError::Tls(format!("read {}: {e}", cert.display())))?;
    let key_pem =
        std::fs::read(key).map_err(|e| NetError::Tls(format!("read {}: {e}", key.display())))?;
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NetError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(NetError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| NetError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| NetError::Tls(format!("{}: no private key found", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| NetError::Tls(format!("{} / {}: {e}", cert.display(), key.display())))?;
    Ok(Arc::new(config))
}

/// Counts open connections, in total and per client address (per /64 for IPv6, since one
/// host usually owns a whole /64), and among them those that have not logged in yet.
#[derive(Clone)]
pub struct ConnLimiter {
    inner: Arc<Mutex<LimiterState>>,
    max_total: usize,
    max_per_ip: usize,
    max_unauthenticated_per_ip: usize,
    bans: bans::BanList,
}

struct LimiterState {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Connections per address key that have not logged in (listeners with a login only).
    unauthenticated: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// Too many connections in total.
    Total,
    /// Too many from this address.
    PerIp,
    /// Too many from this address that have not logged in yet.
    Unauthenticated,
    /// The address is banned (too many failed logins, or by an admin).
    Banned,
}

/// Held for the life of a connection; releases its slot when dropped.
pub struct ConnPermit {
    limiter: ConnLimiter,
    key: IpAddr,
    login: Arc<LoginMark>,
}

/// Whether a connection has logged in; shared by its permit and its [`Shutdown`].
struct LoginMark {
    limiter: ConnLimiter,
    key: IpAddr,
    ip: IpAddr,
    /// Counted among the unauthenticated connections of its address.
    counted: std::sync::atomic::AtomicBool,
}

impl LoginMark {
    /// Stops counting the connection as unauthenticated (once).
    fn release(&self) {
        if self
            .counted
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            if let Ok(mut st) = self.limiter.inner.lock() {
                decrement(&mut st.unauthenticated, self.key);
            }
        }
    }
}

fn decrement(map: &mut HashMap<IpAddr, usize>, key: IpAddr) {
    if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}

fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl ConnLimiter {
    /// A limiter.
    pub fn new(max_total: usize, max_per_ip: usize) -> ConnLimiter {
        ConnLimiter {
            inner: Arc::new(Mutex::new(LimiterState {
                total: 0,
                per_ip: HashMap::new(),
                unauthenticated: HashMap::new(),
            })),
            max_total,
            max_per_ip,
            max_unauthenticated_per_ip: usize::MAX,
            bans: bans::BanList::default(),
        }
    }

    /// Refuses connections from the networks in `bans` from now on.
    pub fn with_bans(mut self, bans: bans::BanList) -> ConnLimiter {
        self.bans = bans;
        self
    }

    /// For listeners with a login: at most `n` connections per address that have not logged
    /// in yet ([`Shutdown::logged_in`] moves a connection out of that count).
    pub fn with_unauthenticated_limit(mut self, n: usize) -> ConnLimiter {
        self.max_unauthenticated_per_ip = n;
        self
    }

    /// Takes a slot for a connection from `ip`.
    pub fn acquire(&self, ip: IpAddr) -> Result<ConnPermit, LimitExceeded> {
        if self.bans.find(ip, unix_now()).is_some() {
            return Err(LimitExceeded::Banned);
        }
        let key = limit_key(ip);
        let mut st = self.inner.lock().map_err(|_| LimitExceeded::Total)?;
        if st.total >= self.max_total {
            return Err(LimitExceeded::Total);
        }
        if st.per_ip.get(&key).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(LimitExceeded::PerIp);
        }
        let limited = self.max_unauthenticated_per_ip != usize::MAX;
        if limited
            && st.unauthenticated.get(&key).copied().unwrap_or(0) >= self.max_unauthenticated_per_ip
        {
            return Err(LimitExceeded::Unauthenticated);
        }
        *st.per_ip.entry(key).or_insert(0) += 1;
        if limited {
            *st.unauthenticated.entry(key).or_insert(0) += 1;
        }
        st.total += 1;
        Ok(ConnPermit {
            limiter: self.clone(),
            key,
            login: Arc::new(LoginMark {
                limiter: self.clone(),
                key,
                ip,
                counted: std::sync::atomic::AtomicBool::new(limited),
            }),
        })
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.inner.lock().map(|s| s.total).unwrap_or(0)
    }
}

impl ConnPermit {
    /// The signal this connection's session watches: `shutdown`, and a ban of its address
    /// (by the login guard or `mailkeep ban add`), which ends it within a second.
    pub fn watch(&self, shutdown: Shutdown) -> Shutdown {
        Shutdown {
            rx: shutdown.rx,
            conn: Some(ConnWatch {
                bans: self.limiter.bans.clone(),
                changes: self.limiter.bans.subscribe(),
                login: self.login.clone(),
            }),
        }
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.login.release();
        if let Ok(mut st) = self.limiter.inner.lock() {
            st.total = st.total.saturating_sub(1);
            decrement(&mut st.per_ip, self.key);
        }
    }
}

/// What a session watches: the server's shutdown and, for a connection, a ban of its
/// address. It also tells the connection limiter when the session logged in.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    conn: Option<ConnWatch>,
}

#[derive(Clone)]
struct ConnWatch {
    bans: bans::BanList,
    changes: watch::Receiver<u64>,
    login: Arc<LoginMark>,
}

/// Why a session must end now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The server is shutting down.
    Shutdown,
    /// The client's address was banned.
    Banned,
}

/// Triggers [`Shutdown`].
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A new signal pair.
pub fn shutdown_pair() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx, conn: None })
}

impl ShutdownTrigger {
    /// Signals every holder of a [`Shutdown`].
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// A receiver.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
            conn: None,
        }
    }
}

async fn server_stopping(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            // The trigger is gone: nothing will ever stop us, so wait forever.
            std::future::pending::<()>().await;
        }
    }
}

impl Shutdown {
    /// True once shutdown started.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Whether the connection's address is banned now.
    pub fn banned(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.bans.find(c.login.ip, unix_now()).is_some())
    }

    /// The session logged in: it no longer counts against the limit of unauthenticated
    /// connections of its address.
    pub fn logged_in(&self) {
        if let Some(c) = &self.conn {
            c.login.release();
        }
    }

    /// Resolves when the session must end: the server is shutting down, or (for a
    /// connection) its address was banned.
    pub async fn wait(&mut self) -> Stop {
        let Some(c) = self.conn.as_mut() else {
            server_stopping(&mut self.rx).await;
            return Stop::Shutdown;
        };
        loop {
            if c.bans.find(c.login.ip, unix_now()).is_some() {
                return Stop::Banned;
            }
            tokio::select! {
                _ = server_stopping(&mut self.rx) => return Stop::Shutdown,
                changed = c.changes.changed() => if changed.is_err() {
                    // The ban list is gone (never while serving): only shutdown remains.
                    server_stopping(&mut self.rx).await;
                    return Stop::Shutdown;
                },
            }
        }
    }
}

/// A resolver asking `servers`, or the system's (`/etc/resolv.conf`) when empty.
pub fn resolver(servers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, NetError> {
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.attempts = 1;
    let builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| NetError::Dns(e.to_string()))?
    } else {
        // Configured servers are the whole truth: /etc/hosts is not consulted, so tests and
        // split-horizon setups see exactly what those servers publish.
        opts.use_hosts_file = ResolveHosts::Never;
        let mut cfg = ResolverConfig::new();
        for s in servers {
            cfg.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
            cfg.add_name_server(NameServerConfig::new(*s, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(cfg, TokioConnectionProvider::default())
    };
    Ok(builder.with_options(opts).build())
}

/// Reverse DNS (PTR) lookups with a bounded wait.
#[derive(Clone)]
pub struct ReverseDns {
    resolver: Option<Arc<TokioResolver>>,
    timeout: Duration,
}

impl ReverseDns {
    /// A resolver asking `servers`, or the system's when empty. `enabled = false` never asks.
    pub fn new(
        servers: &[SocketAddr],
        timeout: Duration,
        enabled: bool,
    ) -> Result<ReverseDns, NetError> {
        if !enabled {
            return Ok(ReverseDns {
                resolver: None,
                timeout,
            });
        }
        Ok(ReverseDns {
            resolver: Some(Arc::new(resolver(servers, timeout)?)),
            timeout,
        })
    }

    /// The PTR name of `ip`, without the trailing dot; None when absent, slow, or not a
    /// host name. The name goes into Received fields and the log, and whoever owns the
    /// address's reverse zone chooses it: a label may hold any byte (RFC 2181 11), CR and
    /// LF too, so only letters, digits, `-` and `_` pass (IDNs in their ASCII form).
    pub async fn lookup(&self, ip: IpAddr) -> Option<String> {
        let resolver = self.resolver.as_ref()?;
        let fut = resolver.reverse_lookup(ip);
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(names)) => names
                .iter()
                .next()
                .map(|n| n.to_ascii().trim_end_matches('.').to_string())
                .filter(|n| mailkeep_types::Domain::parse(n).is_ok()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_per_ip_and_total() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = l.acquire(a).unwrap();
        let _p2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(LimitExceeded::PerIp));
        let _p3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err(), Some(LimitExceeded::Total));
        drop(p1);
        assert!(l.acquire(a).is_ok());
    }

    #[tokio::test]
    async fn reverse_dns_asks_the_configured_server() {
        use mailkeep_testkit::{reverse_name, Rr, TestDns};
        let ip: std::net::Ipv4Addr = "192.0.2.1".parse().unwrap();
        let dns = TestDns::start(vec![(
            &reverse_name(ip),
            Rr::Ptr("client.rdns.test.".into()),
        )])
        .unwrap();
        let r = ReverseDns::new(&[dns.addr()], Duration::from_secs(2), true).unwrap();
        assert_eq!(
            r.lookup(IpAddr::V4(ip)).await.as_deref(),
            Some("client.rdns.test")
        );
        assert_eq!(
            r.lookup("192.0.2.2".parse().unwrap()).await,
            None,
            "NXDOMAIN"
        );
        let off = ReverseDns::new(&[dns.addr()], Duration::from_secs(2), false).unwrap();
        assert_eq!(off.lookup(IpAddr::V4(ip)).await, None);
    }

    #[test]
    fn unauthenticated_connections_are_limited_until_they_log_in() {
        let (_t, shutdown) = shutdown_pair();
        let l = ConnLimiter::new(100, 50).with_unauthenticated_limit(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let p1 = l.acquire(a).unwrap();
        let p2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(LimitExceeded::Unauthenticated));
        assert!(
            l.acquire("192.0.2.2".parse().unwrap()).is_ok(),
            "per address"
        );
        let s1 = p1.watch(shutdown.clone());
        s1.logged_in();
        s1.logged_in();
        let p3 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(LimitExceeded::Unauthenticated));
        drop(p2);
        let _p4 = l.acquire(a).unwrap();
        drop(p3);
        drop(p1);
        assert_eq!(
            l.open(),
            1,
            "the logged-in connection's slot went with its permit"
        );
    }

    #[tokio::test]
    async fn a_ban_stops_the_sessions_of_its_address_only() {
        let (trigger, shutdown) = shutdown_pair();
        let bans = bans::BanList::default();
        let l = ConnLimiter::new(100, 50).with_bans(bans.clone());
        let attacker = l.acquire("192.0.2.7".parse().unwrap()).unwrap();
        let other = l.acquire("198.51.100.1".parse().unwrap()).unwrap();
        let mut a = attacker.watch(shutdown.clone());
        let mut b = other.watch(shutdown.clone());
        let waiting = tokio::spawn(async move { a.wait().await });
        tokio::task::yield_now().await;
        bans.add(bans::Ban {
            network: "192.0.2.0/24".parse().unwrap(),
            reason: "test".into(),
            expires: None,
        });
        let stop = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stop, Stop::Banned);
        assert!(tokio::time::timeout(Duration::from_millis(50), b.wait())
            .await
            .is_err());
        trigger.trigger();
        assert_eq!(b.wait().await, Stop::Shutdown);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = ConnLimiter::new(10, 1);
        let _p = l.acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert!(l.acquire("2001:db8::2".parse().unwrap()).is_err());
        assert!(l.acquire("2001:db8:0:1::2".parse().unwrap()).is_ok());
    }
}
