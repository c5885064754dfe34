//! HTTP(S) for mailkeep. For now one thing: the MTA-STS policy (RFC 8461 3.3) of every domain
//! we host, at `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`. The admin UI, webmail and
//! autoconfig will join it here.
//!
//! Implementation notes:
//! - HTTPS only (RFC 8461 3.3: the policy must come over HTTPS with a valid certificate for
//!   `mta-sts.DOMAIN`; the `[tls]` certificate must name it). HTTP/1.1 (hyper).
//! - A connection gets `HANDSHAKE_TIMEOUT` for TLS and `CONNECTION_TIME` in all; headers must
//!   arrive within `HEADER_TIMEOUT` (slow clients cannot hold connections open).
//! - The answer depends only on the Host header and the path: GET or HEAD of the policy path
//!   for `mta-sts.` plus a hosted domain gives the policy (`text/plain`, RFC 8461 3.2);
//!   anything else 404, other methods 405.
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use mailkeep_config::{MtaStsConfig, MtaStsMode};
use mailkeep_net::{accept_loop, ConnLimiter, Shutdown};
use mailkeep_store::SharedStore;
use mailkeep_types::Domain;
use tokio::net::TcpListener;

/// The policy's path (RFC 8461 3.3).
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_TIME: Duration = Duration::from_secs(60);

/// What the web listener needs.
pub struct WebServer {
    /// Our host name: the policy's `mx`.
    pub hostname: String,
    /// The certificate (the listener refuses to start without one).
    pub tls: Arc<rustls::ServerConfig>,
    /// Which domains are ours.
    pub store: SharedStore,
    /// The policy's mode and max_age.
    pub mta_sts: MtaStsConfig,
}

/// The MTA-STS policy text of our domains (RFC 8461 3.2): our host name as the one MX.
pub fn sts_policy(hostname: &str, config: &MtaStsConfig) -> String {
    let mode = match config.mode {
        MtaStsMode::Enforce => "enforce",
        MtaStsMode::Testing => "testing",
        MtaStsMode::None => "none",
    };
    format!(
        "version: STSv1\r\nmode: {mode}\r\nmx: {hostname}\r\nmax_age: {}\r\n",
        config.max_age.as_secs()
    )
}

/// The `id=` of the `_mta-sts` TXT record for a policy (RFC 8461 3.1: 1 to 32 letters and
/// digits): derived from the text, so it changes exactly when the policy does.
pub fn sts_policy_id(policy: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, policy.as_bytes());
    digest.as_ref()[..10]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Accepts HTTPS connections until shutdown.
pub async fn serve(
    listener: TcpListener,
    server: tokio::sync::watch::Receiver<Arc<WebServer>>,
    limiter: ConnLimiter,
    shutdown: Shutdown,
    grace: Duration,
) {
    accept_loop(
        listener,
        limiter,
        shutdown,
        grace,
        move |stream, peer, permit| {
            let server = server.borrow().clone();
            async move {
                // Over the limits: closed at once (HTTP has no greeting to refuse with).
                let Ok(_permit) = permit else { return };
                let connection = connection(stream, peer, server);
                if tokio::time::timeout(CONNECTION_TIME, connection)
                    .await
                    .is_err()
                {
                    tracing::debug!(%peer, "HTTPS connection closed after its time");
                }
            }
        },
    )
    .await;
}

async fn connection(stream: tokio::net::TcpStream, peer: SocketAddr, server: Arc<WebServer>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(server.tls.clone());
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let service = hyper::service::service_fn(move |req| {
        let server = server.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(&server, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    if let Err(e) = builder
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// The hosted domain a Host header names as `mta-sts.DOMAIN` (port and final dot ignored).
fn policy_domain(host: &str) -> Option<Domain> {
    let host = host.trim();
    // A port after the name (not inside an IPv6 literal, which is no policy host anyway).
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = name.strip_prefix("mta-sts.")?;
    Domain::parse(domain).ok()
}

async fn respond<B>(server: &WebServer, req: Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    // RFC 9112 3.2.2: a request target in absolute form names the host; else Host does.
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default();
    if req.uri().path() != POLICY_PATH {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let Some(domain) = policy_domain(&host) else {
        return text(StatusCode::NOT_FOUND, "no MTA-STS policy for this host\n");
    };
    match server.store.domain_get(&domain).await {
        Ok(Some(_)) => {
            let mut r = text(
                StatusCode::OK,
                &sts_policy(&server.hostname, &server.mta_sts),
            );
            // Senders cache by max_age (RFC 8461 3.3 says HTTP caching is not used for it).
            r.headers_mut().insert(
                hyper::header::CACHE_CONTROL,
                hyper::header::HeaderValue::from_static("no-store"),
            );
            // HEAD: hyper sends the headers of this answer (its Content-Length) without the body.
            r
        }
        Ok(None) => text(StatusCode::NOT_FOUND, "no MTA-STS policy for this host\n"),
        Err(e) => {
            tracing::error!(error = %e, "reading the domains failed");
            text(StatusCode::SERVICE_UNAVAILABLE, "try again later\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_and_its_id() {
        let c = MtaStsConfig {
            mode: MtaStsMode::Enforce,
            max_age: Duration::from_secs(604_800),
        };
        let p = sts_policy("mail.example.com", &c);
        assert_eq!(
            p,
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmax_age: 604800\r\n"
        );
        let id = sts_policy_id(&p);
        assert_eq!(id.len(), 20);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        let testing = MtaStsConfig {
            mode: MtaStsMode::Testing,
            ..c
        };
        assert_ne!(sts_policy_id(&sts_policy("mail.example.com", &testing)), id);
    }

    #[test]
    fn policy_hosts() {
        assert_eq!(
            policy_domain("MTA-STS.Example.COM.:443").map(|d| d.to_string()),
            Some("example.com".into())
        );
        assert!(policy_domain("example.com").is_none());
        assert!(policy_domain("mta-sts.").is_none());
        assert!(policy_domain("[::1]:443").is_none());
    }
}
