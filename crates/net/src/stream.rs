//! A connection that may be upgraded to TLS in place: SMTP STARTTLS (RFC 3207), IMAP
//! STARTTLS (RFC 9051 6.2.1), POP3 STLS (RFC 2595). Shared here so that no session crate
//! depends on another.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

/// Plain or TLS.
pub enum Conn<S> {
    /// Before STARTTLS.
    Plain(S),
    /// After the handshake.
    Tls(Box<TlsStream<S>>),
    /// Only during the upgrade.
    Upgrading,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection is being upgraded")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Upgrading => Poll::Ready(Err(gone())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Upgrading => Poll::Ready(Err(gone())),
        }
    }
}

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The server side of a TLS handshake on `stream`, bounded by `timeout` (implicit TLS on
/// 993/995, and STARTTLS through [`Conn::upgrade`]).
pub async fn accept_tls<S: AsyncRead + AsyncWrite + Unpin>(
    config: std::sync::Arc<rustls::ServerConfig>,
    stream: S,
    timeout: std::time::Duration,
) -> Result<TlsStream<S>, String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err("TLS handshake timed out".into()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// STARTTLS: runs the handshake on the plain stream and continues on TLS. The caller must
    /// first drop whatever the client pipelined in plaintext (command injection).
    pub async fn upgrade(
        &mut self,
        config: std::sync::Arc<rustls::ServerConfig>,
        timeout: std::time::Duration,
    ) -> Result<(), String> {
        let Conn::Plain(stream) = std::mem::replace(self, Conn::Upgrading) else {
            return Err("STARTTLS on a connection that is not plain".into());
        };
        *self = Conn::Tls(Box::new(accept_tls(config, stream, timeout).await?));
        Ok(())
    }
}
