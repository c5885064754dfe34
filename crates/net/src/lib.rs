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
/// host usually owns a whole /64).
#[derive(Clone)]
pub struct ConnLimiter {
    inner: Arc<Mutex<LimiterState>>,
    max_total: usize,
    max_per_ip: usize,
    bans: bans::BanList,
}

struct LimiterState {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// Too many connections in total.
    Total,
    /// Too many from this address.
    PerIp,
    /// The address is banned (too many failed logins, or by an admin).
    Banned,
}

/// Held for the life of a connection; releases its slot when dropped.
pub struct ConnPermit {
    limiter: ConnLimiter,
    key: IpAddr,
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

impl ConnLimiter {
    /// A limiter.
    pub fn new(max_total: usize, max_per_ip: usize) -> ConnLimiter {
        ConnLimiter {
            inner: Arc::new(Mutex::new(LimiterState {
                total: 0,
                per_ip: HashMap::new(),
            })),
            max_total,
            max_per_ip,
            bans: bans::BanList::default(),
        }
    }

    /// Refuses connections from the networks in `bans` from now on.
    pub fn with_bans(mut self, bans: bans::BanList) -> ConnLimiter {
        self.bans = bans;
        self
    }

    /// Takes a slot for a connection from `ip`.
    pub fn acquire(&self, ip: IpAddr) -> Result<ConnPermit, LimitExceeded> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if self.bans.find(ip, now).is_some() {
            return Err(LimitExceeded::Banned);
        }
        let key = limit_key(ip);
        let mut st = self.inner.lock().map_err(|_| LimitExceeded::Total)?;
        if st.total >= self.max_total {
            return Err(LimitExceeded::Total);
        }
        let n = st.per_ip.entry(key).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(LimitExceeded::PerIp);
        }
        *n += 1;
        st.total += 1;
        Ok(ConnPermit {
            limiter: self.clone(),
            key,
        })
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.inner.lock().map(|s| s.total).unwrap_or(0)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if let Ok(mut st) = self.limiter.inner.lock() {
            st.total = st.total.saturating_sub(1);
            if let Some(n) = st.per_ip.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    st.per_ip.remove(&self.key);
                }
            }
        }
    }
}

/// The shutdown signal: `true` once the server is stopping.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Triggers [`Shutdown`].
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A new signal pair.
pub fn shutdown_pair() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
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
        }
    }
}

impl Shutdown {
    /// True once shutdown started.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when shutdown starts.
    pub async fn wait(&mut self) {
        while !*self.rx.borrow_and_update() {
            if self.rx.changed().await.is_err() {
                // The trigger is gone: nothing will ever stop us, so wait forever.
                std::future::pending::<()>().await;
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

    /// The PTR name of `ip`, without the trailing dot; None when absent or slow.
    pub async fn lookup(&self, ip: IpAddr) -> Option<String> {
        let resolver = self.resolver.as_ref()?;
        let fut = resolver.reverse_lookup(ip);
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(names)) => names
                .iter()
                .next()
                .map(|n| n.to_utf8().trim_end_matches('.').to_string()),
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
    fn ipv6_counts_per_64() {
        let l = ConnLimiter::new(10, 1);
        let _p = l.acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert!(l.acquire("2001:db8::2".parse().unwrap()).is_err());
        assert!(l.acquire("2001:db8:0:1::2".parse().unwrap()).is_ok());
    }
}
