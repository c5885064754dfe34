//! The accept loop every listener shares: take connections until shutdown, hand each to a
//! session task with its connection-limit permit, then wait (bounded) for sessions to end.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::{ConnLimiter, ConnPermit, LimitExceeded, Shutdown};

/// Accepts connections until `shutdown`; `session` runs each one (it gets the permit, or why
/// the limiter refused, so it can answer in its protocol). After shutdown the listener is
/// closed and open sessions get `grace` to finish before they are aborted.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limiter: ConnLimiter,
    mut shutdown: Shutdown,
    grace: Duration,
    mut session: F,
) where
    F: FnMut(TcpStream, SocketAddr, Result<ConnPermit, LimitExceeded>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let permit = limiter.acquire(peer.ip());
                        sessions.spawn(session(stream, peer, permit));
                    }
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
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
