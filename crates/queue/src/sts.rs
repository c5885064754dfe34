//! MTA-STS (RFC 8461): a domain publishes, over HTTPS, which MX hosts may take its mail and
//! whether they must be reached over TLS with a valid certificate.
//!
//! - The DNS record `_mta-sts.DOMAIN` (TXT, `v=STSv1; id=...`) says a policy exists and which
//!   version it is (RFC 8461 3.1).
//! - The policy is `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (3.3): fetched with a
//!   certificate valid for that name, no redirects, status 200, at most 64 KiB.
//! - It is cached for its `max_age` and refreshed when the DNS id changes (5.1); a cached,
//!   unexpired policy is used when the DNS record or the fetch fails, which is what defeats an
//!   attacker who strips the record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};

/// Largest policy accepted (RFC 8461 3.3: at most 64 KiB).
pub const MAX_POLICY: usize = 64 * 1024;
/// Longest max_age honoured (RFC 8461 3.2: 31557600, about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// What a policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to listed MX hosts over authenticated TLS.
    Enforce,
    /// Report failures, deliver anyway.
    Testing,
    /// No policy (a domain withdrawing one).
    None,
}

impl Mode {
    /// As the policy spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Its mode.
    pub mode: Mode,
    /// MX patterns: host names, or `*.` and a domain for one label more.
    pub mx: Vec<String>,
    /// Seconds it may be cached.
    pub max_age: u64,
}

impl Policy {
    /// Parses a policy body (RFC 8461 3.2: `key: value` lines, CRLF or LF).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                return Err(format!("not a `key: value` line: {line:.80}"));
            };
            let v = v.trim();
            // RFC 8461 3.2: unknown keys are ignored; a repeated key keeps its first value
            // (except mx, which repeats).
            match k.trim() {
                "version" if version.is_none() => version = Some(v.to_string()),
                "mode" if mode.is_none() => {
                    mode = Some(match v {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(format!("unknown mode {other:.40}")),
                    })
                }
                "max_age" if max_age.is_none() => {
                    let n: u64 = v
                        .parse()
                        .map_err(|_| format!("max_age is not a number: {v:.40}"))?;
                    max_age = Some(n.min(MAX_AGE_LIMIT));
                }
                "mx" => mx.push(v.trim_end_matches('.').to_ascii_lowercase()),
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("the policy does not say `version: STSv1`".into());
        }
        let mode = mode.ok_or("the policy has no mode")?;
        let max_age = max_age.ok_or("the policy has no max_age")?;
        if mode != Mode::None && mx.is_empty() {
            return Err("the policy lists no mx".into());
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// Whether `host` may take the domain's mail (RFC 8461 4.1: a pattern `*.example.com`
    /// matches exactly one more label on the left).
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(base) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == base),
            None => *p == host,
        })
    }
}

/// The policy id in a `_mta-sts` TXT record (RFC 8461 3.1: `v=STSv1` first, then `id`, 1 to
/// 32 letters and digits); None when the record is not an STS record.
pub fn record_id(txt: &str) -> Option<String> {
    let mut fields = txt.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next()? != "v=STSv1" {
        return None;
    }
    fields
        .filter_map(|f| f.split_once('='))
        .find(|(k, _)| k.trim() == "id")
        .map(|(_, v)| v.trim().to_string())
        .filter(|id| (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Fetches `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` from `addr` (the policy host's
/// address, resolved by the caller), checking the certificate with `tls`.
pub async fn fetch(
    domain: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<String, String> {
    let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
    tokio::time::timeout(timeout, fetch_inner(&host, addr, tls))
        .await
        .map_err(|_| format!("fetching https://{host}/ timed out"))?
}

/// An HTTP/1.1 session over TLS with `host` at `addr`, the certificate checked for `host`.
async fn https_session<B>(
    host: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<B>,
        tokio::task::JoinHandle<Result<(), hyper::Error>>,
    ),
    String,
>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {host} [{addr}]: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"))?;
    Ok((sender, tokio::spawn(conn)))
}

/// POSTs `body` to the https URL `url` (its host reached at `ip`, the certificate checked);
/// Ok when the answer is 2xx.
pub async fn post(
    url: &str,
    ip: std::net::IpAddr,
    body: Vec<u8>,
    content_type: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url}: not an https URL"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .to_string();
    let addr = SocketAddr::new(ip, uri.port_u16().unwrap_or(443));
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| host.clone());
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    let run = async {
        let (mut sender, conn) =
            https_session::<http_body_util::Full<Bytes>>(&host, addr, tls).await?;
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "mailkeep")
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::CONNECTION, "close")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let result = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"));
        conn.abort();
        let status = result?.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{url} answered {status}"))
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("posting to {url} timed out"))?
}

async fn fetch_inner(
    host: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    // RFC 8461 3.3: the policy host's certificate must be valid for its name.
    let (mut sender, conn) = https_session::<Empty<Bytes>>(host, addr, tls).await?;
    let request = hyper::Request::get("/.well-known/mta-sts.txt")
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "mailkeep")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"))?;
        // RFC 8461 3.3: only 200 counts; redirects are not followed.
        if response.status() != hyper::StatusCode::OK {
            return Err(format!(
                "https://{host}/.well-known/mta-sts.txt answered {}",
                response.status()
            ));
        }
        // RFC 8461 3.2: the policy is text/plain.
        let ctype = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ctype.to_ascii_lowercase().starts_with("text/plain") {
            return Err(format!(
                "the policy's Content-Type is {ctype:.60}, not text/plain"
            ));
        }
        let body = Limited::new(response.into_body(), MAX_POLICY)
            .collect()
            .await
            .map_err(|e| format!("reading the policy from {host}: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "the policy is not UTF-8".to_string())
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_the_rfc_shows() {
        let p = Policy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604800);
        assert!(p.allows("mail.example.com"));
        assert!(p.allows("MAIL.example.com."));
        assert!(p.allows("mx1.example.net"));
        assert!(!p.allows("example.net"), "the wildcard needs one label");
        assert!(!p.allows("a.b.example.net"), "and only one");
        assert!(!p.allows("evil.example.com"));
        // LF line ends, unknown keys, max_age capped.
        let p = Policy::parse(
            "version: STSv1\nmode: testing\nmx: mx.test\nmax_age: 99999999999\nfoo: bar\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Testing);
        assert_eq!(p.max_age, MAX_AGE_LIMIT);
        assert!(Policy::parse("version: STSv1\nmode: none\nmax_age: 1\n").is_ok());
    }

    #[test]
    fn bad_policies_say_why() {
        for (text, why) in [
            ("mode: enforce\nmx: a\nmax_age: 1\n", "STSv1"),
            (
                "version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
                "STSv1",
            ),
            (
                "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
                "unknown mode",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            ("version: STSv1\nmode: enforce\nmx: a\n", "no max_age"),
            (
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: soon\n",
                "not a number",
            ),
            ("<html>hello</html>", "key: value"),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn dns_records_give_their_id() {
        assert_eq!(
            record_id("v=STSv1; id=20160831085700Z;").as_deref(),
            Some("20160831085700Z")
        );
        assert_eq!(record_id("v=STSv1;id=abc").as_deref(), Some("abc"));
        assert_eq!(record_id("id=abc; v=STSv1"), None, "v comes first");
        assert_eq!(record_id("v=spf1 -all"), None);
        assert_eq!(record_id("v=STSv1; id=not-alnum"), None);
        assert_eq!(record_id("v=STSv1;"), None);
    }
}
