//! The SMTP client side of one connection to a remote server (RFC 5321 4, 3207 STARTTLS).
//!
//! Replies are read with bounded line length and line count, so a hostile server cannot make
//! the queue hold unbounded memory; every wait is bounded by the command timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest reply line accepted (RFC 5321 4.5.3.1.5 asks for 512; servers send more).
const MAX_LINE: usize = 4096;
/// Most lines of one reply.
const MAX_LINES: usize = 64;

/// What can go wrong talking to a server, before a reply says anything.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No reply in time.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The connection failed or closed.
    #[error("connection lost: {0}")]
    Io(String),
    /// The server sent something that is not an SMTP reply.
    #[error("malformed reply from the server: {0}")]
    Protocol(String),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

/// One SMTP reply: its code and text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// Each line's text after the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 5xx: a permanent refusal.
    pub fn permanent(&self) -> bool {
        self.code >= 500
    }

    /// The whole reply on one line, as the log and bounces show it.
    pub fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }
}

/// Anything a connection can be: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// TLS details of a connection, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsDetails {
    /// Protocol version.
    pub version: String,
    /// Cipher suite.
    pub cipher: String,
    /// What decided how the server was checked: `opportunistic`, `mta-sts`, `dane`,
    /// `requiretls`, `relay`.
    pub policy: &'static str,
    /// Whether the server's certificate was checked (DANE or PKIX).
    pub authenticated: bool,
}

/// One connection to a remote SMTP server.
pub struct Client {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    timeout: Duration,
    /// EHLO keywords (upper-case) with their parameters.
    pub extensions: Vec<(String, String)>,
    /// Set once STARTTLS succeeded.
    pub tls: Option<TlsDetails>,
    /// Messages sent over this connection.
    pub uses: u32,
}

impl Client {
    /// Wraps a connected stream; nothing is read yet.
    pub fn new(io: Box<dyn Io>, timeout: Duration) -> Client {
        Client {
            io,
            buf: Vec::with_capacity(1024),
            timeout,
            extensions: Vec::new(),
            tls: None,
            uses: 0,
        }
    }

    /// Whether the last EHLO advertised `keyword`.
    pub fn has(&self, keyword: &str) -> bool {
        self.extensions
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(keyword))
    }

    /// The parameter of an EHLO keyword (`SIZE 1000` gives `1000`).
    pub fn param(&self, keyword: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(keyword))
            .map(|(_, v)| v.as_str())
    }

    async fn fill(&mut self) -> Result<(), ClientError> {
        let mut tmp = [0u8; 4096];
        let n = tokio::time::timeout(self.timeout, self.io.read(&mut tmp))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| ClientError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ClientError::Io("closed by the server".into()));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    async fn line(&mut self) -> Result<String, ClientError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&raw);
                return Ok(text.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buf.len() > MAX_LINE {
                return Err(ClientError::Protocol("reply line too long".into()));
            }
            self.fill().await?;
        }
    }

    /// Reads one reply (RFC 5321 4.2: `code-text` lines, then `code text`).
    pub async fn reply(&mut self) -> Result<Reply, ClientError> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            let code = line
                .get(..3)
                .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| ClientError::Protocol(line.chars().take(100).collect()))?;
            let sep = line.as_bytes().get(3).copied();
            lines.push(line.get(4..).unwrap_or("").to_string());
            if sep != Some(b'-') {
                return Ok(Reply { code, lines });
            }
            if lines.len() >= MAX_LINES {
                return Err(ClientError::Protocol("reply has too many lines".into()));
            }
        }
    }

    /// Sends bytes as they are.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ClientError> {
        tokio::time::timeout(self.timeout, async {
            self.io.write_all(data).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| ClientError::Io(e.to_string()))
    }

    /// Sends a command line and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, ClientError> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// EHLO, falling back to HELO when the server does not know it (RFC 5321 3.2).
    pub async fn hello(&mut self, hostname: &str) -> Result<Reply, ClientError> {
        let r = self.command(&format!("EHLO {hostname}")).await?;
        if r.ok() {
            self.extensions = r
                .lines
                .iter()
                .skip(1)
                .map(|l| match l.split_once(' ') {
                    Some((k, v)) => (k.to_ascii_uppercase(), v.to_string()),
                    None => (l.to_ascii_uppercase(), String::new()),
                })
                .collect();
            return Ok(r);
        }
        self.extensions.clear();
        if r.code == 421 {
            return Ok(r);
        }
        self.command(&format!("HELO {hostname}")).await
    }

    /// A connection that starts with the TLS handshake (RFC 8314 implicit TLS).
    pub async fn tls_from_start(
        io: Box<dyn Io>,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let (io, details) = handshake(io, config, server_name, timeout).await?;
        Ok(Client {
            io,
            buf: Vec::new(),
            timeout,
            extensions: Vec::new(),
            tls: Some(details),
            uses: 0,
        })
    }

    /// STARTTLS (RFC 3207) with `config`; on success the session restarts with EHLO.
    pub async fn starttls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<(Client, Reply), (ClientError, Option<Reply>)> {
        let r = self.command("STARTTLS").await.map_err(|e| (e, None))?;
        if r.code != 220 {
            return Err((ClientError::Protocol("STARTTLS refused".into()), Some(r)));
        }
        // RFC 3207 5: nothing the server sent before the handshake counts.
        self.buf.clear();
        let (io, details) = handshake(self.io, config, server_name, self.timeout)
            .await
            .map_err(|e| (e, None))?;
        let client = Client {
            io,
            buf: Vec::new(),
            timeout: self.timeout,
            extensions: Vec::new(),
            tls: Some(details),
            uses: 0,
        };
        Ok((client, r))
    }

    /// Sends the message for DATA: dot-stuffed (RFC 5321 4.5.2), CRLF line ends, then
    /// `.` and the final reply.
    pub async fn data(&mut self, message: &[u8]) -> Result<Reply, ClientError> {
        let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
        let mut at_line_start = true;
        for &b in message {
            if at_line_start && b == b'.' {
                out.push(b'.');
            }
            // A bare LF becomes CRLF; a CR not before LF is kept as it is.
            if b == b'\n' && out.last() != Some(&b'\r') {
                out.push(b'\r');
            }
            out.push(b);
            at_line_start = b == b'\n';
        }
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        // A longer wait for the final reply: the server may be scanning the message.
        self.send(&out).await?;
        self.reply().await
    }

    /// QUIT, without caring about the answer.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.command("QUIT").await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

/// A TLS client handshake over `io`.
async fn handshake(
    io: Box<dyn Io>,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    timeout: Duration,
) -> Result<(Box<dyn Io>, TlsDetails), ClientError> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = tokio::time::timeout(timeout, connector.connect(name, io))
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let (_, conn) = stream.get_ref();
    let details = TlsDetails {
        version: conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("TLS")
            .replace('_', "."),
        cipher: conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default(),
        policy: "opportunistic",
        authenticated: false,
    };
    Ok((Box::new(stream), details))
}

/// A client TLS configuration that checks certificates against the web's root authorities
/// (webpki-roots) and the certificates in `ca_file` (PEM), for MTA-STS and the relay host.
pub fn verified_config(
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{}: no PEM certificate in it", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opportunistic TLS (RFC 7435, as Postfix's `may` level): encrypt whenever the server offers
/// STARTTLS, whatever its certificate, since the alternative is plaintext. The handshake
/// signatures are still checked, so the server holds the key of the certificate it shows.
/// Where MTA-STS or DANE apply, [`verified_config`] or [`crate::dane::DaneVerifier`] is used
/// instead.
#[derive(Debug)]
pub struct Opportunistic(Arc<rustls::crypto::CryptoProvider>);

impl Opportunistic {
    /// A client TLS configuration for opportunistic STARTTLS.
    pub fn config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Opportunistic(provider)))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

impl rustls::client::danger::ServerCertVerifier for Opportunistic {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(server_says: &[u8]) -> (Client, tokio::io::DuplexStream) {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let said = server_says.to_vec();
        tokio::spawn(async move {
            let _ = b.write_all(&said).await;
            // Keep the other end open while the test reads.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let (_, keep) = tokio::io::duplex(8);
        (Client::new(Box::new(a), Duration::from_secs(2)), keep)
    }

    #[tokio::test]
    async fn multiline_replies_and_ehlo_keywords() {
        let (mut c, _k) = client(
            b"250-mx.example greets you\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 STARTTLS\r\n",
        );
        let r = c.reply().await.unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.lines.len(), 4);
        assert_eq!(
            r.text(),
            "250 mx.example greets you / SIZE 1000 / 8BITMIME / STARTTLS"
        );
    }

    #[tokio::test]
    async fn garbage_and_endless_replies_are_errors() {
        let (mut c, _k) = client(b"hello there\r\n");
        assert!(matches!(c.reply().await, Err(ClientError::Protocol(_))));
        let endless: Vec<u8> = b"250-x\r\n".repeat(MAX_LINES + 5);
        let (mut c, _k) = client(&endless);
        assert!(matches!(c.reply().await, Err(ClientError::Protocol(_))));
        let (mut c, _k) = client(&vec![b'2'; MAX_LINE + 10]);
        assert!(matches!(c.reply().await, Err(ClientError::Protocol(_))));
    }

    #[tokio::test]
    async fn data_is_dot_stuffed_with_crlf() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut c = Client::new(Box::new(a), Duration::from_secs(2));
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut tmp = [0u8; 1024];
            while !got.ends_with(b"\r\n.\r\n") {
                let n = b.read(&mut tmp).await.unwrap();
                got.extend_from_slice(&tmp[..n]);
            }
            b.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
            got
        });
        let r = c
            .data(b"Subject: x\r\n\r\n.leading dot\nbare lf\r\n..two")
            .await
            .unwrap();
        assert_eq!(r.code, 250);
        let got = server.await.unwrap();
        assert_eq!(
            got,
            b"Subject: x\r\n\r\n..leading dot\r\nbare lf\r\n...two\r\n.\r\n".to_vec()
        );
    }
}
