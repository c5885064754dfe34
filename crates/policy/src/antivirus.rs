//! Virus scanning through clamd, ClamAV's daemon, with its INSTREAM command over TCP or a
//! Unix socket.
//!
//! Implementation notes:
//! - `zINSTREAM\0`, then the message in chunks of at most 64 KiB, each behind its length as
//!   four big-endian bytes, then a zero length; clamd answers one NUL-terminated line:
//!   `stream: OK`, `stream: NAME FOUND` or `... ERROR`. clamd decodes MIME itself, so
//!   attachments are scanned whatever their transfer encoding.
//! - The whole exchange is bounded by the timeout; the answer by 4 KiB.
//! - A message larger than clamd's `StreamMaxLength` is answered `INSTREAM size limit
//!   exceeded. ERROR`, which is an error here (the caller's fail-open or fail-closed policy
//!   decides), never a clean verdict.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddr {
    /// `host:port`.
    Tcp(SocketAddr),
    /// A Unix socket (Debian: `/run/clamav/clamd.ctl`).
    Unix(PathBuf),
}

impl std::str::FromStr for ClamdAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<ClamdAddr, String> {
        if s.starts_with('/') {
            return Ok(ClamdAddr::Unix(PathBuf::from(s)));
        }
        s.parse::<SocketAddr>()
            .map(ClamdAddr::Tcp)
            .map_err(|_| format!("{s:?} is neither IP:PORT nor an absolute socket path"))
    }
}

/// A scan's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing found.
    Clean,
    /// Infected, with the signature's name.
    Infected(String),
}

/// Why there is no verdict.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// clamd could not be reached or the connection failed.
    #[error("clamd at {0}: {1}")]
    Io(String, String),
    /// clamd answered with an error.
    #[error("clamd: {0}")]
    Clamd(String),
    /// No answer in time.
    #[error("clamd did not answer within {0:?}")]
    Timeout(Duration),
}

/// A clamd client.
#[derive(Debug, Clone)]
pub struct Clamd {
    addr: ClamdAddr,
    timeout: Duration,
}

/// Largest chunk sent at once.
const CHUNK: usize = 64 * 1024;
/// Longest answer read.
const MAX_ANSWER: usize = 4096;

impl Clamd {
    /// A client of clamd at `addr`, each scan bounded by `timeout`.
    pub fn new(addr: ClamdAddr, timeout: Duration) -> Clamd {
        Clamd { addr, timeout }
    }

    fn name(&self) -> String {
        match &self.addr {
            ClamdAddr::Tcp(a) => a.to_string(),
            ClamdAddr::Unix(p) => p.display().to_string(),
        }
    }

    /// Scans `data` (a whole message).
    pub async fn scan(&self, data: &[u8]) -> Result<Verdict, ScanError> {
        let io = |e: std::io::Error| ScanError::Io(self.name(), e.to_string());
        let run = async {
            match &self.addr {
                ClamdAddr::Tcp(a) => {
                    let s = tokio::net::TcpStream::connect(a).await.map_err(io)?;
                    instream(s, data).await.map_err(io)
                }
                ClamdAddr::Unix(p) => {
                    let s = tokio::net::UnixStream::connect(p).await.map_err(io)?;
                    instream(s, data).await.map_err(io)
                }
            }
        };
        let answer = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| ScanError::Timeout(self.timeout))??;
        parse_answer(&answer)
    }
}

async fn instream<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    data: &[u8],
) -> std::io::Result<String> {
    s.write_all(b"zINSTREAM\0").await?;
    for chunk in data.chunks(CHUNK) {
        s.write_all(&(chunk.len() as u32).to_be_bytes()).await?;
        s.write_all(chunk).await?;
    }
    s.write_all(&0u32.to_be_bytes()).await?;
    s.flush().await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.contains(&0) && answer.len() < MAX_ANSWER {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let end = answer.iter().position(|b| *b == 0).unwrap_or(answer.len());
    Ok(String::from_utf8_lossy(&answer[..end]).trim().to_string())
}

/// `stream: OK`, `stream: NAME FOUND`, or an error.
fn parse_answer(answer: &str) -> Result<Verdict, ScanError> {
    let text = answer.strip_prefix("stream:").unwrap_or(answer).trim();
    if text == "OK" {
        return Ok(Verdict::Clean);
    }
    if let Some(name) = text.strip_suffix(" FOUND") {
        return Ok(Verdict::Infected(name.trim().to_string()));
    }
    if answer.is_empty() {
        return Err(ScanError::Clamd("no answer".into()));
    }
    Err(ScanError::Clamd(answer.chars().take(200).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(parse_answer("stream: OK").unwrap(), Verdict::Clean);
        assert_eq!(
            parse_answer("stream: Eicar-Test-Signature FOUND").unwrap(),
            Verdict::Infected("Eicar-Test-Signature".into())
        );
        assert!(matches!(
            parse_answer("INSTREAM size limit exceeded. ERROR"),
            Err(ScanError::Clamd(_))
        ));
        assert!(parse_answer("").is_err());
        assert_eq!(
            "/run/clamav/clamd.ctl".parse::<ClamdAddr>().unwrap(),
            ClamdAddr::Unix("/run/clamav/clamd.ctl".into())
        );
        assert!("clamd".parse::<ClamdAddr>().is_err());
    }

    /// A fake clamd on a Unix socket: checks the framing, answers FOUND when the stream
    /// holds the marker.
    #[tokio::test]
    async fn instream_framing_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clamd.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut cmd = [0u8; 10];
                s.read_exact(&mut cmd).await.unwrap();
                assert_eq!(&cmd, b"zINSTREAM\0");
                let mut body = Vec::new();
                loop {
                    let mut len = [0u8; 4];
                    s.read_exact(&mut len).await.unwrap();
                    let n = u32::from_be_bytes(len) as usize;
                    if n == 0 {
                        break;
                    }
                    assert!(n <= CHUNK);
                    let mut chunk = vec![0u8; n];
                    s.read_exact(&mut chunk).await.unwrap();
                    body.extend_from_slice(&chunk);
                }
                let found = body.windows(6).any(|w| w == b"MARKER");
                let answer: &[u8] = if found {
                    b"stream: Fake-Marker FOUND\0"
                } else {
                    b"stream: OK\0"
                };
                s.write_all(answer).await.unwrap();
            }
        });
        let c = Clamd::new(ClamdAddr::Unix(path), Duration::from_secs(5));
        let mut big = vec![b'a'; 200_000];
        assert_eq!(c.scan(&big).await.unwrap(), Verdict::Clean);
        big.extend_from_slice(b"MARKER");
        assert_eq!(
            c.scan(&big).await.unwrap(),
            Verdict::Infected("Fake-Marker".into())
        );
        let gone = Clamd::new(
            ClamdAddr::Unix(dir.path().join("nothing")),
            Duration::from_secs(1),
        );
        assert!(matches!(gone.scan(b"x").await, Err(ScanError::Io(..))));
    }
}
