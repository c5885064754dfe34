//! The pool of read connections: at most [`MAX_READERS`] kept, the most recently used taken
//! first, and those left idle for [`READER_IDLE`] closed, so that a burst of reads (500
//! logins at once) leaves the one or two connections the steady load needs, not every
//! connection it opened with its schema and page cache.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// Most idle reader connections kept.
pub const MAX_READERS: usize = 8;
/// An idle reader connection unused this long is closed (one is always kept).
pub const READER_IDLE: Duration = Duration::from_secs(15);

/// Idle read connections, the most recently returned last.
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<(Connection, Instant)>>,
}

impl Readers {
    pub fn new(path: &Path) -> Readers {
        Readers {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The most recently used idle connection, or a new one.
    pub fn take(&self) -> Result<Connection, String> {
        let conn = self
            .idle
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .map(|(c, _)| c);
        match conn {
            Some(c) => Ok(c),
            None => crate::open_conn(&self.path, false),
        }
    }

    /// Returns a connection to the pool; closes the ones idle too long (the oldest are
    /// first in the list, since `take` pops from the end).
    pub fn give_back(&self, conn: Connection) {
        self.give_back_at(conn, Instant::now());
    }

    fn give_back_at(&self, conn: Connection, now: Instant) {
        let closed: Vec<(Connection, Instant)> = match self.idle.lock() {
            Ok(mut v) => {
                if v.len() >= MAX_READERS {
                    return drop(v);
                }
                v.push((conn, now));
                let stale = v
                    .iter()
                    .take(v.len().saturating_sub(1))
                    .take_while(|(_, t)| now.saturating_duration_since(*t) >= READER_IDLE)
                    .count();
                v.drain(..stale).collect()
            }
            Err(_) => Vec::new(),
        };
        // Closed outside the lock.
        drop(closed);
    }

    /// How many connections are idle (tests).
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_connections_shrinks_back_to_one_once_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(crate::open_conn(&path, true).unwrap());
        let readers = Readers::new(&path);
        let t0 = Instant::now();
        let burst: Vec<Connection> = (0..MAX_READERS + 2)
            .map(|_| readers.take().unwrap())
            .collect();
        for c in burst {
            readers.give_back_at(c, t0);
        }
        assert_eq!(readers.idle(), MAX_READERS, "no more than MAX_READERS kept");
        // Steady load afterwards: one read at a time, later than READER_IDLE.
        let later = t0 + READER_IDLE + Duration::from_secs(1);
        let c = readers.take().unwrap();
        readers.give_back_at(c, later);
        assert_eq!(
            readers.idle(),
            1,
            "the idle ones are closed, the one in use kept"
        );
        // One is always kept, however long idle.
        let c = readers.take().unwrap();
        readers.give_back_at(c, later + READER_IDLE * 10);
        assert_eq!(readers.idle(), 1);
    }
}
