//! The embedded store: SQLite in WAL mode for metadata, content-addressed files for blobs.
//!
//! Implementation notes:
//! - Durability: `synchronous = FULL`, so a commit returns only after the WAL is fsynced; blob
//!   files are written to a temporary name, fsynced, renamed and their directory fsynced before
//!   any row refers to them. A message is referenced only once both are on disk.
//! - Blobs of up to [`SMALL_BLOB_MAX`] (most messages) are rows of `blob_data`, committed before
//!   any message refers to them; bigger ones are files.
//! - All writes go through one writer thread that takes every job queued at the moment and runs
//!   them in one transaction (group commit): concurrent SMTP sessions share one fsync. Each job
//!   runs in its own savepoint, so one failing job does not undo the others.
//! - Reads use a small pool of separate connections (WAL lets them run beside the writer).
//! - Change events are broadcast only after the transaction that made them has committed.
#![warn(missing_docs)]

mod blobs;
mod readers;
mod schema;

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use mailkeep_store::{
    check_mailbox_name, AccountHold, AclChange, AclEntry, Alias, AppPassword, Attempt, BanRow,
    BanStore, BlobId, BlobStore, ChangeEvent, Contents, DirectoryStore, DomainInfo, Envelope,
    FlagMode, FlagUpdate, GreyEntry, GreylistStore, LogEvent, LogFilter, LogStore, MailStore,
    Mailbox, MailboxCounts, MessageCache, MessageFlags, MessageMeta, NewMessage, NewQueued,
    QueueRecipient, QueueStore, QueuedMessage, QueuedRcpt, RcptStatus, ReceivedReport, ReportEvent,
    ReportStore, Result, Rights, SenderList, SharedMailbox, SieveStore, Signal, SpamStore,
    StoreError, Stored, StsCached, Target, Usage, UsageStore, User,
};
use mailkeep_types::{
    AccountId, Address, Domain, MailboxId, MailboxRole, ModSeq, Uid, UidValidity,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, oneshot};

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;
/// Blobs up to this size are kept in the database (`blob_data`), bigger ones in files.
pub const SMALL_BLOB_MAX: usize = 64 * 1024;

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Readers map the database file instead of copying its pages in with a read call each
/// (a FETCH of 1,000 messages did ~1,000 preads), and keep more pages cached.
const READER_PRAGMAS: &str = "PRAGMA mmap_size = 1073741824; PRAGMA cache_size = -16384;";

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

trait WriteJob: Send {
    /// Runs inside the batch transaction; false means "roll my savepoint back".
    fn run(&mut self, conn: &Connection) -> bool;
    /// Called once the batch committed (or failed).
    fn finish(self: Box<Self>, commit: std::result::Result<(), String>);
}

type AfterCommit<T> = Box<dyn FnOnce(&T) + Send>;

struct Job<T, F> {
    f: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
    after: Option<AfterCommit<T>>,
}

impl<T: Send, F: FnOnce(&Connection) -> Result<T> + Send> WriteJob for Job<T, F> {
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else { return false };
        let r = f(conn);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, commit: std::result::Result<(), String>) {
        let this = *self;
        let out = match (commit, this.result) {
            (Ok(()), Some(r)) => {
                if let (Ok(v), Some(after)) = (&r, this.after) {
                    after(v);
                }
                r
            }
            (Err(e), _) => Err(StoreError::Backend(e)),
            (Ok(()), None) => Err(StoreError::Backend("write job did not run".into())),
        };
        let _ = this.reply.send(out);
    }
}

/// The embedded SQLite store.
pub struct SqliteStore {
    blobs: blobs::BlobDir,
    writer: Mutex<mpsc::Sender<Box<dyn WriteJob>>>,
    readers: Arc<readers::Readers>,
    /// At most [`readers::MAX_READERS`] reads at once: each holds a connection (with its page cache) and
    /// a blocking thread, so thousands of sessions reading at once queue here instead of
    /// opening thousands of connections.
    read_permits: Arc<tokio::sync::Semaphore>,
    events: broadcast::Sender<ChangeEvent>,
}

fn open_conn(path: &Path, write: bool) -> std::result::Result<Connection, String> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )
    .map_err(|e| e.to_string())?;
    if !write {
        conn.execute_batch(READER_PRAGMAS)
            .map_err(|e| e.to_string())?;
    }
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir` and runs pending migrations.
    pub fn open(dir: &Path) -> Result<SqliteStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| backend(format!("create {}: {e}", dir.display())))?;
        let db_path = dir.join("mailkeep.db");
        let mut conn = open_conn(&db_path, true).map_err(backend)?;
        schema::migrate(&mut conn).map_err(backend)?;
        let blobs = blobs::BlobDir::open(&dir.join("blobs")).map_err(backend)?;
        let (tx, rx) = mpsc::channel::<Box<dyn WriteJob>>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(backend)?;
        let (events, _) = broadcast::channel(4096);
        Ok(SqliteStore {
            readers: Arc::new(readers::Readers::new(&db_path)),
            blobs,
            writer: Mutex::new(tx),
            read_permits: Arc::new(tokio::sync::Semaphore::new(readers::MAX_READERS)),
            events,
        })
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.write_then(f, None).await
    }

    async fn write_then<T, F>(&self, f: F, after: Option<AfterCommit<T>>) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(Job {
            f: Some(f),
            result: None,
            reply,
            after,
        });
        {
            let sender = self
                .writer
                .lock()
                .map_err(|_| backend("writer lock poisoned"))?;
            sender
                .send(job)
                .map_err(|_| backend("store writer has stopped"))?;
        }
        rx.await
            .map_err(|_| backend("store writer dropped a job"))?
    }

    /// Queues a write without waiting for it; errors are logged.
    fn submit<F>(&self, what: &'static str, f: F)
    where
        F: FnOnce(&Connection) -> Result<()> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(Job {
            f: Some(f),
            result: None,
            reply,
            after: None,
        });
        let sent = self
            .writer
            .lock()
            .map(|sender| sender.send(job).is_ok())
            .unwrap_or(false);
        if !sent {
            tracing::error!(what, "store writer has stopped; write dropped");
            return;
        }
        // Only to report failures: the job runs whether or not anyone waits.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Ok(Err(e)) = rx.await {
                    tracing::error!(what, error = %e, "queued store write failed");
                }
            });
        }
    }

    /// Runs a read of one or a few rows on the calling thread instead of the blocking pool:
    /// a single-message FETCH then costs no thread hand-off (two context switches, more than
    /// the read itself when the pages are cached). Only for reads that touch a handful of
    /// rows and at most one blob.
    async fn read_inline<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T>,
    {
        let _permit = self.read_permits.acquire().await.map_err(backend)?;
        let conn = self.readers.take().map_err(backend)?;
        let r = in_read_txn(&conn, f);
        self.readers.give_back(conn);
        r
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let permit = self
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(backend)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = readers.take().map_err(backend)?;
            let r = in_read_txn(&conn, f);
            readers.give_back(conn);
            r
        })
        .await
        .map_err(backend)?
    }
}

/// Runs a read in one transaction: one snapshot for all its statements, and the file lock
/// taken once instead of around every statement (4 fcntl calls each).
fn in_read_txn<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut st| st.execute([]));
    run("BEGIN").map_err(backend)?;
    let r = f(conn);
    // A read-only transaction: COMMIT only ends it.
    if let Err(e) = run("COMMIT") {
        let _ = run("ROLLBACK");
        if r.is_ok() {
            return Err(backend(e));
        }
    }
    r
}

/// Ok when a statement touched a row; else NotFound naming `what`.
fn found(rows: usize, what: String) -> Result<()> {
    if rows == 0 {
        return Err(StoreError::NotFound(what));
    }
    Ok(())
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Box<dyn WriteJob>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let outcome = run_batch(&mut conn, &mut batch);
        if let Err(e) = &outcome {
            tracing::error!(error = %e, jobs = batch.len(), "store commit failed");
        }
        for job in batch {
            job.finish(outcome.clone());
        }
    }
}

fn run_batch(
    conn: &mut Connection,
    batch: &mut [Box<dyn WriteJob>],
) -> std::result::Result<(), String> {
    let mut tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    for job in batch.iter_mut() {
        let sp = tx.savepoint().map_err(|e| e.to_string())?;
        if job.run(&sp) {
            sp.commit().map_err(|e| e.to_string())?;
        } else {
            drop(sp); // rolls back this job only
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

fn parse_addr(s: String) -> rusqlite::Result<Address> {
    Address::parse(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn row_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: AccountId(r.get(0)?),
        address: parse_addr(r.get(1)?)?,
        password_hash: r.get(2)?,
        quota: r.get::<_, i64>(3)? as u64,
        used: r.get::<_, i64>(4)? as u64,
    })
}

fn row_alias(r: &rusqlite::Row<'_>) -> rusqlite::Result<Alias> {
    let targets: String = r.get(1)?;
    let targets: Vec<Address> = serde_json::from_str(&targets).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Alias {
        address: parse_addr(r.get(0)?)?,
        targets,
        sendable: r.get::<_, i64>(2)? != 0,
    })
}

fn row_domain(r: &rusqlite::Row<'_>) -> rusqlite::Result<DomainInfo> {
    let name: String = r.get(0)?;
    let catch_all: Option<String> = r.get(1)?;
    Ok(DomainInfo {
        name: Domain::parse(&name).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })?,
        catch_all: catch_all.map(parse_addr).transpose()?,
    })
}

/// A new user or alias needs a hosted domain and an address nobody has yet.
fn check_new_address(c: &Connection, key: &str, addr: &str, dom: &str) -> Result<()> {
    let hosted: i64 = c
        .query_row("SELECT count(*) FROM domains WHERE name = ?1", [dom], |r| {
            r.get(0)
        })
        .map_err(backend)?;
    if hosted == 0 {
        return Err(StoreError::Conflict(format!(
            "domain {dom} is not hosted here: add it first with `mailkeep domain add {dom}`"
        )));
    }
    let taken: i64 = c
        .query_row(
            "SELECT (SELECT count(*) FROM accounts WHERE address_key = ?1) + \
             (SELECT count(*) FROM aliases WHERE address_key = ?1)",
            [key],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if taken > 0 {
        return Err(StoreError::Exists(format!("address {addr}")));
    }
    Ok(())
}

const USER_COLS: &str = "id, address, password, quota, used";

/// A UIDVALIDITY never given before: the clock, or one more than the last one given (kept in
/// `counters`, so deleted mailboxes' values are not given again).
fn next_uid_validity(conn: &Connection) -> Result<u32> {
    let last: i64 = conn
        .query_row(
            "SELECT max(coalesce((SELECT value FROM counters WHERE name = 'uid_validity'), 0), \
             coalesce((SELECT max(uid_validity) FROM mailboxes), 0))",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    let now = now_secs() as u32 as i64;
    let v = now.max(last + 1);
    conn.execute(
        "INSERT INTO counters (name, value) VALUES ('uid_validity', ?1) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [v],
    )
    .map_err(backend)?;
    Ok(v as u32)
}

#[async_trait]
impl DirectoryStore for SqliteStore {
    async fn domain_add(&self, domain: &Domain) -> Result<()> {
        let d = domain.to_string();
        self.write(move |c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO domains (name, created) VALUES (?1, ?2)",
                    params![d, now_secs()],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::Exists(format!("domain {d}")));
            }
            Ok(())
        })
        .await
    }

    async fn domain_remove(&self, domain: &Domain) -> Result<()> {
        let d = domain.to_string();
        self.write(move |c| {
            let users: i64 = c
                .query_row("SELECT count(*) FROM accounts WHERE domain = ?1", [&d], |r| r.get(0))
                .map_err(backend)?;
            let aliases: i64 = c
                .query_row("SELECT count(*) FROM aliases WHERE domain = ?1", [&d], |r| r.get(0))
                .map_err(backend)?;
            if users + aliases > 0 {
                return Err(StoreError::Conflict(format!(
                    "domain {d} still has {users} user(s) and {aliases} alias(es): remove them first"
                )));
            }
            let n = c
                .execute("DELETE FROM domains WHERE name = ?1", [&d])
                .map_err(backend)?;
            found(n, format!("domain {d}"))
        })
        .await
    }

    async fn domain_get(&self, domain: &Domain) -> Result<Option<DomainInfo>> {
        let d = domain.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT name, catch_all FROM domains WHERE name = ?1",
                [d],
                row_domain,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn domains(&self) -> Result<Vec<DomainInfo>> {
        self.read(|c| {
            let mut st = c
                .prepare("SELECT name, catch_all FROM domains ORDER BY name")
                .map_err(backend)?;
            let rows = st.query_map([], row_domain).map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn domain_set_catch_all(&self, domain: &Domain, target: Option<&Address>) -> Result<()> {
        let d = domain.to_string();
        let t = target.map(|a| a.to_string());
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE domains SET catch_all = ?2 WHERE name = ?1",
                    params![d, t],
                )
                .map_err(backend)?;
            found(n, format!("domain {d}"))
        })
        .await
    }

    async fn user_add(
        &self,
        address: &Address,
        password_hash: &str,
        quota: u64,
    ) -> Result<AccountId> {
        let (key, addr, dom) = (
            address.key(),
            address.to_string(),
            address.domain().to_string(),
        );
        let hash = password_hash.to_string();
        self.write(move |c| {
            check_new_address(c, &key, &addr, &dom)?;
            c.execute(
                "INSERT INTO accounts (address_key, address, domain, password, quota, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![key, addr, dom, hash, quota as i64, now_secs()],
            )
            .map_err(backend)?;
            let id = c.last_insert_rowid();
            for role in MailboxRole::ALL {
                let v = next_uid_validity(c)?;
                c.execute(
                    "INSERT INTO mailboxes (account, name, role, uid_validity) VALUES (?1, ?2, ?3, ?4)",
                    params![id, role.default_name(), role.as_str(), v],
                )
                .map_err(backend)?;
                c.execute(
                    "INSERT INTO subscriptions (account, name) VALUES (?1, ?2)",
                    params![id, role.default_name()],
                )
                .map_err(backend)?;
            }
            Ok(AccountId(id))
        })
        .await
    }

    async fn user_get(&self, key: &str) -> Result<Option<User>> {
        let key = key.to_string();
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {USER_COLS} FROM accounts WHERE address_key = ?1"),
                [key],
                row_user,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn user_by_id(&self, account: AccountId) -> Result<Option<User>> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {USER_COLS} FROM accounts WHERE id = ?1"),
                [account.0],
                row_user,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn users(&self, domain: Option<&Domain>) -> Result<Vec<User>> {
        let d = domain.map(|d| d.to_string());
        self.read(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {USER_COLS} FROM accounts WHERE ?1 IS NULL OR domain = ?1 ORDER BY address_key"
                ))
                .map_err(backend)?;
            let rows = st.query_map([d], row_user).map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn user_remove(&self, address: &Address) -> Result<()> {
        let key = address.key();
        self.write(move |c| {
            let id: Option<i64> = c
                .query_row(
                    "SELECT id FROM accounts WHERE address_key = ?1",
                    [&key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            let id = id.ok_or_else(|| StoreError::NotFound(format!("user {key}")))?;
            // Blob files are kept until a later garbage collection; only their counts drop.
            c.execute(
                "UPDATE blobs SET refs = refs - (SELECT count(*) FROM messages m \
                 JOIN mailboxes b ON b.id = m.mailbox WHERE b.account = ?1 AND m.blob = blobs.id) \
                 WHERE id IN (SELECT m.blob FROM messages m JOIN mailboxes b ON b.id = m.mailbox \
                 WHERE b.account = ?1)",
                [id],
            )
            .map_err(backend)?;
            c.execute("DELETE FROM accounts WHERE id = ?1", [id])
                .map_err(backend)?;
            // Its queued mail still goes out, but as no one's: SQLite may give the id to the
            // next account, which must not inherit its bounces (the other per-account
            // tables cascade).
            c.execute("UPDATE queue SET account = NULL WHERE account = ?1", [id])
                .map_err(backend)?;
            // The account's spam model (its id): a later account that gets the same id must
            // not start with it.
            for table in ["spam_tokens", "spam_totals", "spam_learnt"] {
                c.execute(&format!("DELETE FROM {table} WHERE model = ?1"), [id])
                    .map_err(backend)?;
            }
            // A later account with the same address must not inherit what was shared.
            c.execute(
                "DELETE FROM acl WHERE identifier IN (?1, '-' || ?1)",
                [&key],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn user_set_password(&self, address: &Address, password_hash: &str) -> Result<()> {
        let (key, hash) = (address.key(), password_hash.to_string());
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE accounts SET password = ?2 WHERE address_key = ?1",
                    params![key, hash],
                )
                .map_err(backend)?;
            found(n, format!("user {key}"))
        })
        .await
    }

    async fn app_password_add(
        &self,
        address: &Address,
        name: &str,
        digest: &str,
        now: i64,
    ) -> Result<()> {
        let (key, name, digest) = (address.key(), name.to_string(), digest.to_string());
        self.write(move |c| {
            let id: i64 = c
                .query_row(
                    "SELECT id FROM accounts WHERE address_key = ?1",
                    [&key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?
                .ok_or_else(|| StoreError::NotFound(format!("user {key}")))?;
            c.execute(
                "INSERT INTO app_passwords (account, name, digest, created) VALUES (?1, ?2, ?3, ?4)",
                params![id, name, digest, now],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Exists(format!("app password {name} of {key}"))
                }
                e => backend(e),
            })?;
            Ok(())
        })
        .await
    }

    async fn app_passwords(&self, address: &Address) -> Result<Vec<AppPassword>> {
        let key = address.key();
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT p.name, p.created, p.last_used FROM app_passwords p \
                     JOIN accounts a ON a.id = p.account WHERE a.address_key = ?1 ORDER BY p.name",
                )
                .map_err(backend)?;
            let rows = st
                .query_map([&key], |r| {
                    Ok(AppPassword {
                        name: r.get(0)?,
                        created: r.get(1)?,
                        last_used: r.get(2)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn app_password_remove(&self, address: &Address, name: &str) -> Result<()> {
        let (key, name) = (address.key(), name.to_string());
        self.write(move |c| {
            let n = c
                .execute(
                    "DELETE FROM app_passwords WHERE name = ?2 AND account = \
                     (SELECT id FROM accounts WHERE address_key = ?1)",
                    params![key, name],
                )
                .map_err(backend)?;
            found(n, format!("app password {name} of {key}"))
        })
        .await
    }

    async fn app_password_check(
        &self,
        account: AccountId,
        digest: &str,
        now: i64,
    ) -> Result<Option<String>> {
        let digest = digest.to_string();
        let name: Option<String> = self
            .read({
                let digest = digest.clone();
                move |c| {
                    c.prepare_cached(
                        "SELECT name FROM app_passwords WHERE account = ?1 AND digest = ?2",
                    )
                    .map_err(backend)?
                    .query_row(params![account.0, digest], |r| r.get(0))
                    .optional()
                    .map_err(backend)
                }
            })
            .await?;
        if let Some(n) = &name {
            // When it was last used, for `app-password list` (not waited for).
            let n = n.clone();
            self.submit("app password use", move |c| {
                c.execute(
                    "UPDATE app_passwords SET last_used = ?3 WHERE account = ?1 AND name = ?2",
                    params![account.0, n, now],
                )
                .map_err(backend)?;
                Ok(())
            });
        }
        Ok(name)
    }

    async fn user_set_quota(&self, address: &Address, quota: u64) -> Result<()> {
        let key = address.key();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE accounts SET quota = ?2 WHERE address_key = ?1",
                    params![key, quota as i64],
                )
                .map_err(backend)?;
            found(n, format!("user {key}"))
        })
        .await
    }

    async fn alias_add(&self, address: &Address, targets: &[Address]) -> Result<()> {
        let (key, addr, dom) = (
            address.key(),
            address.to_string(),
            address.domain().to_string(),
        );
        let targets = serde_json::to_string(targets).map_err(backend)?;
        self.write(move |c| {
            check_new_address(c, &key, &addr, &dom)?;
            c.execute(
                "INSERT INTO aliases (address_key, address, domain, targets, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key, addr, dom, targets, now_secs()],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn alias_get(&self, key: &str) -> Result<Option<Alias>> {
        let key = key.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT address, targets, sendable FROM aliases WHERE address_key = ?1",
                [key],
                row_alias,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn aliases(&self, domain: Option<&Domain>) -> Result<Vec<Alias>> {
        let d = domain.map(|d| d.to_string());
        self.read(move |c| {
            let mut st = c
                .prepare(
                    "SELECT address, targets, sendable FROM aliases WHERE ?1 IS NULL OR domain = ?1 \
                     ORDER BY address_key",
                )
                .map_err(backend)?;
            let rows = st.query_map([d], row_alias).map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn alias_set_sendable(&self, address: &Address, sendable: bool) -> Result<()> {
        let key = address.key();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE aliases SET sendable = ?2 WHERE address_key = ?1",
                    params![key, sendable as i64],
                )
                .map_err(backend)?;
            found(n, format!("alias {key}"))
        })
        .await
    }

    async fn alias_remove(&self, address: &Address) -> Result<()> {
        let key = address.key();
        self.write(move |c| {
            let n = c
                .execute("DELETE FROM aliases WHERE address_key = ?1", [&key])
                .map_err(backend)?;
            found(n, format!("alias {key}"))
        })
        .await
    }
}

fn row_mailbox(r: &rusqlite::Row<'_>) -> rusqlite::Result<Mailbox> {
    let role: Option<String> = r.get(3)?;
    Ok(Mailbox {
        id: MailboxId(r.get(0)?),
        account: AccountId(r.get(1)?),
        name: r.get(2)?,
        role: role.as_deref().and_then(MailboxRole::parse),
        uid_validity: UidValidity(r.get::<_, i64>(4)? as u32),
        uid_next: Uid(r.get::<_, i64>(5)? as u32),
        highest_modseq: ModSeq(r.get::<_, i64>(6)? as u64),
        subscribed: r.get(7)?,
    })
}

fn insert_message(c: &Connection, m: &NewMessage) -> Result<Stored> {
    let row = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?));
    let found: Option<(i64, i64, i64)> = match m.target {
        // A role the account has no mailbox for (Junk deleted by the user) falls back to
        // INBOX: the message is never lost for want of a folder.
        Target::Role(role) => c
            .prepare_cached(
                "SELECT id, uid_next, highest_modseq + 1 FROM mailboxes \
                 WHERE account = ?1 AND role IN (?2, 'inbox') \
                 ORDER BY role = 'inbox' LIMIT 1",
            )
            .map_err(backend)?
            .query_row(params![m.account.0, role.as_str()], row)
            .optional()
            .map_err(backend)?,
        Target::Mailbox(id) => c
            .prepare_cached(
                "SELECT id, uid_next, highest_modseq + 1 FROM mailboxes \
                 WHERE account = ?1 AND id = ?2",
            )
            .map_err(backend)?
            .query_row(params![m.account.0, id.0], row)
            .optional()
            .map_err(backend)?,
    };
    let (mailbox, uid, modseq) = found.ok_or_else(|| {
        StoreError::NotFound(match m.target {
            Target::Role(role) => format!("{} mailbox of account {}", role.as_str(), m.account),
            Target::Mailbox(id) => format!("mailbox {id} of account {}", m.account),
        })
    })?;
    // RFC 9051 2.3.1.1: UIDs strictly ascend; RFC 7162 3.1: MODSEQ strictly increases.
    c.prepare_cached("UPDATE mailboxes SET uid_next = ?2, highest_modseq = ?3 WHERE id = ?1")
        .map_err(backend)?
        .execute(params![mailbox, uid + 1, modseq])
        .map_err(backend)?;
    let size = m.blob_size + m.prefix.len() as u64;
    let cache = encode_cache(&m.cache)?;
    c.prepare_cached(
        "INSERT INTO messages (mailbox, uid, modseq, flags, internal_date, size, blob, prefix, \
         message_id, queue_id, cache) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .map_err(backend)?
    .execute(params![
        mailbox,
        uid,
        modseq,
        normalize_flags(&m.flags).join(" "),
        m.internal_date,
        size as i64,
        m.blob.0,
        m.prefix,
        m.cache.message_id,
        m.queue_id,
        cache
    ])
    .map_err(backend)?;
    let mut headers = m.prefix.clone();
    headers.extend_from_slice(&m.headers);
    c.prepare_cached("INSERT INTO message_headers (mailbox, uid, data) VALUES (?1, ?2, ?3)")
        .map_err(backend)?
        .execute(params![mailbox, uid, headers])
        .map_err(backend)?;
    c.prepare_cached(
        "INSERT INTO blobs (id, size, refs) VALUES (?1, ?2, 1) \
         ON CONFLICT (id) DO UPDATE SET refs = refs + 1",
    )
    .map_err(backend)?
    .execute(params![m.blob.0, m.blob_size as i64])
    .map_err(backend)?;
    c.prepare_cached("UPDATE accounts SET used = used + ?2 WHERE id = ?1")
        .map_err(backend)?
        .execute(params![m.account.0, size as i64])
        .map_err(backend)?;
    Ok(Stored {
        account: m.account,
        mailbox: MailboxId(mailbox),
        uid: Uid(uid as u32),
        modseq: ModSeq(modseq as u64),
    })
}

/// The cached envelope and structure are stored in postcard's compact binary form (about 40%
/// of the JSON and twice as fast to decode, which FETCH ENVELOPE and BODYSTRUCTURE of a large
/// mailbox feel). Rows written before are JSON text and still read.
fn encode_cache(cache: &MessageCache) -> Result<Vec<u8>> {
    postcard::to_stdvec(cache).map_err(backend)
}

fn decode_cache(v: rusqlite::types::ValueRef<'_>) -> std::result::Result<MessageCache, String> {
    match v {
        rusqlite::types::ValueRef::Blob(b) => postcard::from_bytes(b).map_err(|e| e.to_string()),
        rusqlite::types::ValueRef::Text(t) => serde_json::from_slice(t).map_err(|e| e.to_string()),
        _ => Err("cache is neither binary nor JSON".into()),
    }
}

/// The envelope alone: in the binary form it is the cache's first field, so postcard decodes
/// it and leaves the body structure unread.
fn decode_envelope(v: rusqlite::types::ValueRef<'_>) -> std::result::Result<Envelope, String> {
    match v {
        rusqlite::types::ValueRef::Blob(b) => postcard::take_from_bytes::<Envelope>(b)
            .map(|(e, _)| e)
            .map_err(|e| e.to_string()),
        other => decode_cache(other).map(|c| c.envelope),
    }
}

const META_COLS: &str = "uid, modseq, flags, internal_date, size, blob, prefix, cache, queue_id";

fn row_meta(mailbox: MailboxId, r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageMeta> {
    let flags: String = r.get(2)?;
    let cache = decode_cache(r.get_ref(7)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Blob, e.into())
    })?;
    Ok(MessageMeta {
        mailbox,
        uid: Uid(r.get::<_, i64>(0)? as u32),
        modseq: ModSeq(r.get::<_, i64>(1)? as u64),
        flags: flags.split_whitespace().map(String::from).collect(),
        internal_date: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        blob: BlobId(r.get(5)?),
        prefix: r.get(6)?,
        cache,
        queue_id: r.get(8)?,
    })
}

/// The most UIDs written into one `IN (...)` list.
const IN_LIST_MAX: usize = 500;

/// Calls `f` with the row of each message of `wanted` (sorted UIDs) that exists, in UID order:
/// one range scan when the UIDs are dense, point lookups when they are spread out (1,000
/// random UIDs of a 20,000-message mailbox must not scan all 20,000 rows).
fn for_each_uid(
    c: &Connection,
    table: &str,
    cols: &str,
    mailbox: MailboxId,
    wanted: &[Uid],
    mut f: impl FnMut(&rusqlite::Row<'_>) -> Result<()>,
) -> Result<()> {
    let (Some(first), Some(last)) = (wanted.first(), wanted.last()) else {
        return Ok(());
    };
    let span = (last.0 as u64).saturating_sub(first.0 as u64) + 1;
    if span > wanted.len() as u64 * 4 + 64 {
        // Scattered UIDs: one statement per few hundred, its list written out (numbers only),
        // rather than a statement run (bound, stepped, reset) for each message.
        for part in wanted.chunks(IN_LIST_MAX) {
            let mut sql = format!("SELECT {cols} FROM {table} WHERE mailbox = ?1 AND uid IN (");
            for (i, uid) in part.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&uid.0.to_string());
            }
            sql.push_str(") ORDER BY uid");
            let mut st = c.prepare(&sql).map_err(backend)?;
            let mut rows = st.query(params![mailbox.0]).map_err(backend)?;
            while let Some(r) = rows.next().map_err(backend)? {
                f(r)?;
            }
        }
        return Ok(());
    }
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {cols} FROM {table} WHERE mailbox = ?1 AND uid BETWEEN ?2 AND ?3 ORDER BY uid"
        ))
        .map_err(backend)?;
    let mut rows = st
        .query(params![mailbox.0, first.0 as i64, last.0 as i64])
        .map_err(backend)?;
    while let Some(r) = rows.next().map_err(backend)? {
        let uid = Uid(r.get::<_, i64>(0).map_err(backend)? as u32);
        if wanted.binary_search(&uid).is_ok() {
            f(r)?;
        }
    }
    Ok(())
}

/// Length of a message's header section including the blank line.
fn header_end(raw: &[u8]) -> usize {
    if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        return p + 4;
    }
    if let Some(p) = raw.windows(2).position(|w| w == b"\n\n") {
        return p + 2;
    }
    raw.len()
}

fn is_inbox(name: &str) -> bool {
    name.eq_ignore_ascii_case("INBOX")
}

const MAILBOX_COLS: &str = "id, account, name, role, uid_validity, uid_next, highest_modseq, \
     EXISTS (SELECT 1 FROM subscriptions s WHERE s.account = m.account AND s.name = m.name)";

fn mailbox_by_name(c: &Connection, account: AccountId, name: &str) -> Result<Option<Mailbox>> {
    let name = if is_inbox(name) { "INBOX" } else { name };
    c.query_row(
        &format!("SELECT {MAILBOX_COLS} FROM mailboxes m WHERE account = ?1 AND name = ?2"),
        params![account.0, name],
        row_mailbox,
    )
    .optional()
    .map_err(backend)
}

/// Inserts a mailbox row (no parents); returns its id.
fn insert_mailbox(
    c: &Connection,
    account: AccountId,
    name: &str,
    role: Option<MailboxRole>,
) -> Result<i64> {
    let v = next_uid_validity(c)?;
    c.execute(
        "INSERT INTO mailboxes (account, name, role, uid_validity) VALUES (?1, ?2, ?3, ?4)",
        params![account.0, name, role.map(|r| r.as_str()), v],
    )
    .map_err(backend)?;
    let id = c.last_insert_rowid();
    if let Some((parent, _)) = name.rsplit_once('/') {
        // RFC 4314 4: a new mailbox "SHOULD inherit the ACL from the parent mailbox".
        c.prepare_cached(
            "INSERT INTO acl (mailbox, identifier, rights) SELECT ?1, identifier, rights \
             FROM acl WHERE mailbox = (SELECT id FROM mailboxes WHERE account = ?2 AND name = ?3)",
        )
        .map_err(backend)?
        .execute(params![id, account.0, parent])
        .map_err(backend)?;
    }
    Ok(id)
}

/// Creates the missing superiors of `name` (RFC 9051 6.3.4).
fn create_parents(c: &Connection, account: AccountId, name: &str) -> Result<()> {
    let mut prefix = String::new();
    let levels: Vec<&str> = name.split('/').collect();
    for level in &levels[..levels.len().saturating_sub(1)] {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(level);
        if mailbox_by_name(c, account, &prefix)?.is_none() {
            insert_mailbox(c, account, &prefix, None)?;
        }
    }
    Ok(())
}

fn mailbox_account(c: &Connection, mailbox: MailboxId) -> Result<(i64, i64)> {
    c.prepare_cached("SELECT account, highest_modseq FROM mailboxes WHERE id = ?1")
        .map_err(backend)?
        .query_row([mailbox.0], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(backend)?
        .ok_or_else(|| StoreError::NotFound(format!("mailbox {mailbox}")))
}

/// Canonical spelling of system flags (RFC 9051 2.3.2); keywords as given. `\Recent` cannot
/// be stored by a client.
fn normalize_flags(flags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in flags {
        let canonical = match f.to_ascii_lowercase().as_str() {
            "\\seen" => "\\Seen".to_string(),
            "\\answered" => "\\Answered".to_string(),
            "\\flagged" => "\\Flagged".to_string(),
            "\\deleted" => "\\Deleted".to_string(),
            "\\draft" => "\\Draft".to_string(),
            "\\recent" => continue,
            _ => f.clone(),
        };
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&canonical)) {
            out.push(canonical);
        }
    }
    out
}

/// Messages up to this size are read on the calling thread when read alone.
const INLINE_READ_MAX: u64 = 256 * 1024;

/// What a message's content is read from: its row joined with its blob's row, if the blob
/// is kept in the database.
const CONTENT_TABLES: &str = "messages LEFT JOIN blob_data ON blob_data.id = messages.blob";
const CONTENT_COLUMNS: &str = "uid, blob, prefix, size, blob_data.data";
/// [`CONTENT_COLUMNS`] of one message (`?1` mailbox, `?2` UID).
const CONTENT_OF_UID: &str = "SELECT uid, blob, prefix, size, blob_data.data FROM messages \
     LEFT JOIN blob_data ON blob_data.id = messages.blob WHERE mailbox = ?1 AND uid = ?2";

/// A row of [`CONTENT_COLUMNS`], borrowed from the statement (no copy).
struct ContentRow<'a> {
    uid: Uid,
    blob: &'a str,
    prefix: &'a [u8],
    size: i64,
    /// The blob's bytes when the database keeps them.
    data: Option<&'a [u8]>,
}

impl<'a> ContentRow<'a> {
    fn of(r: &'a rusqlite::Row<'a>) -> Result<ContentRow<'a>> {
        let text = |i| r.get_ref(i).and_then(|v| v.as_str().map_err(Into::into));
        let bytes = |i| r.get_ref(i).and_then(|v| v.as_blob().map_err(Into::into));
        let data = r
            .get_ref(4)
            .and_then(|v| v.as_blob_or_null().map_err(Into::into));
        Ok(ContentRow {
            uid: Uid(r.get::<_, i64>(0).map_err(backend)? as u32),
            blob: text(1).map_err(backend)?,
            prefix: bytes(2).map_err(backend)?,
            size: r.get(3).map_err(backend)?,
            data: data.map_err(backend)?,
        })
    }
}

/// Appends a message as IMAP serves it to `out`: its prefix, then its blob (RFC822.SIZE
/// `size` is both, so a blob file is read in one call straight into place).
fn read_content(blobs: &blobs::BlobDir, row: &ContentRow<'_>, out: &mut Vec<u8>) -> Result<()> {
    let len = (row.size.max(0) as usize).saturating_sub(row.prefix.len());
    out.reserve(row.prefix.len() + len);
    out.extend_from_slice(row.prefix);
    if let Some(data) = row.data {
        out.extend_from_slice(data);
        return Ok(());
    }
    if !blobs.append_to(row.blob, len, out).map_err(backend)? {
        return Err(backend(format!(
            "blob {} referenced by a message is missing",
            row.blob
        )));
    }
    Ok(())
}

/// A blob's bytes: its `blob_data` row, else its file.
fn load_blob(c: &Connection, blobs: &blobs::BlobDir, id: &str) -> Result<Option<Vec<u8>>> {
    let row: Option<Vec<u8>> = c
        .prepare_cached("SELECT data FROM blob_data WHERE id = ?1")
        .map_err(backend)?
        .query_row([id], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    match row {
        Some(d) => Ok(Some(d)),
        None => blobs.get(&BlobId(id.to_string())).map_err(backend),
    }
}

/// The stored (space-separated) flags the rights allow setting on a copy.
fn keep_flags(flags: &str, rights: Rights) -> String {
    if rights == Rights::ALL {
        return flags.to_string();
    }
    flags
        .split_whitespace()
        .filter(|f| rights.allows_flag(f))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Removes one message row, recording the expunge; returns its size.
fn remove_message(
    c: &Connection,
    mailbox: MailboxId,
    uid: Uid,
    modseq: i64,
) -> Result<Option<(i64, String)>> {
    let row: Option<(i64, String)> = c
        .prepare_cached("SELECT size, blob FROM messages WHERE mailbox = ?1 AND uid = ?2")
        .map_err(backend)?
        .query_row(params![mailbox.0, uid.0 as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(backend)?;
    if row.is_some() {
        c.prepare_cached("DELETE FROM messages WHERE mailbox = ?1 AND uid = ?2")
            .map_err(backend)?
            .execute(params![mailbox.0, uid.0 as i64])
            .map_err(backend)?;
        c.prepare_cached("DELETE FROM message_headers WHERE mailbox = ?1 AND uid = ?2")
            .map_err(backend)?
            .execute(params![mailbox.0, uid.0 as i64])
            .map_err(backend)?;
        c.prepare_cached(
            "INSERT OR REPLACE INTO expunged (mailbox, uid, modseq) VALUES (?1, ?2, ?3)",
        )
        .map_err(backend)?
        .execute(params![mailbox.0, uid.0 as i64, modseq])
        .map_err(backend)?;
    }
    Ok(row)
}

#[async_trait]
impl MailStore for SqliteStore {
    async fn mailboxes(&self, account: AccountId) -> Result<Vec<Mailbox>> {
        self.read(move |c| {
            let mut st = c
                .prepare(
                    "SELECT id, account, name, role, uid_validity, uid_next, highest_modseq, \
                     EXISTS (SELECT 1 FROM subscriptions s WHERE s.account = m.account \
                     AND s.name = m.name) FROM mailboxes m WHERE account = ?1 ORDER BY id",
                )
                .map_err(backend)?;
            let rows = st.query_map([account.0], row_mailbox).map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn deliver(&self, messages: Vec<NewMessage>) -> Result<Vec<Result<Stored>>> {
        let events = self.events.clone();
        let after: AfterCommit<Vec<Result<Stored>>> = Box::new(move |results| {
            for s in results.iter().flatten() {
                let _ = events.send(ChangeEvent::MessageAdded(*s));
            }
        });
        self.write_then(
            move |c| {
                let mut out = Vec::with_capacity(messages.len());
                for m in &messages {
                    // A savepoint per message: one missing mailbox does not undo the others.
                    c.execute_batch("SAVEPOINT msg").map_err(backend)?;
                    match insert_message(c, m) {
                        Ok(s) => {
                            c.execute_batch("RELEASE msg").map_err(backend)?;
                            out.push(Ok(s));
                        }
                        Err(e) => {
                            c.execute_batch("ROLLBACK TO msg; RELEASE msg")
                                .map_err(backend)?;
                            out.push(Err(e));
                        }
                    }
                }
                Ok(out)
            },
            Some(after),
        )
        .await
    }

    async fn messages(&self, mailbox: MailboxId) -> Result<Vec<MessageMeta>> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {META_COLS} FROM messages WHERE mailbox = ?1 ORDER BY uid"
                ))
                .map_err(backend)?;
            let rows = st
                .query_map([mailbox.0], |r| row_meta(mailbox, r))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn messages_by_uid(&self, mailbox: MailboxId, uids: &[Uid]) -> Result<Vec<MessageMeta>> {
        let wanted = uids.to_vec();
        self.read(move |c| {
            let mut out = Vec::with_capacity(wanted.len());
            for_each_uid(c, "messages", META_COLS, mailbox, &wanted, |r| {
                out.push(row_meta(mailbox, r).map_err(backend)?);
                Ok(())
            })?;
            Ok(out)
        })
        .await
    }

    async fn message_envelopes(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> Result<Vec<(Uid, Envelope)>> {
        let wanted = uids.to_vec();
        self.read(move |c| {
            let mut out = Vec::with_capacity(wanted.len());
            for_each_uid(c, "messages", "uid, cache", mailbox, &wanted, |r| {
                let uid = Uid(r.get::<_, i64>(0).map_err(backend)? as u32);
                let envelope = decode_envelope(r.get_ref(1).map_err(backend)?)
                    .map_err(|e| StoreError::Backend(format!("cache of {mailbox}/{uid}: {e}")))?;
                out.push((uid, envelope));
                Ok(())
            })?;
            Ok(out)
        })
        .await
    }

    async fn mailbox_counts(&self, mailbox: MailboxId) -> Result<MailboxCounts> {
        self.read(move |c| {
            // Flags are stored space-separated with canonical system flags (normalize_flags).
            c.prepare_cached(
                "SELECT count(*), \
                 coalesce(sum(instr(' ' || flags || ' ', ' \\Seen ') = 0), 0), \
                 coalesce(sum(instr(' ' || flags || ' ', ' \\Deleted ') > 0), 0), \
                 coalesce(sum(size), 0) FROM messages WHERE mailbox = ?1",
            )
            .map_err(backend)?
            .query_row([mailbox.0], |r| {
                Ok(MailboxCounts {
                    messages: r.get::<_, i64>(0)? as u64,
                    unseen: r.get::<_, i64>(1)? as u64,
                    deleted: r.get::<_, i64>(2)? as u64,
                    size: r.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(backend)
        })
        .await
    }

    async fn mailbox_get(&self, mailbox: MailboxId) -> Result<Option<Mailbox>> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {MAILBOX_COLS} FROM mailboxes m WHERE id = ?1"
            ))
            .map_err(backend)?
            .query_row([mailbox.0], row_mailbox)
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn changed_since(&self, mailbox: MailboxId, since: ModSeq) -> Result<Vec<MessageFlags>> {
        self.read(move |c| {
            let sql = if since.0 == 0 {
                "SELECT uid, modseq, flags, internal_date, size FROM messages \
                 WHERE mailbox = ?1 AND ?2 = 0 ORDER BY uid"
            } else {
                "SELECT uid, modseq, flags, internal_date, size FROM messages \
                 WHERE mailbox = ?1 AND modseq > ?2 ORDER BY uid"
            };
            let mut st = c.prepare_cached(sql).map_err(backend)?;
            let rows = st
                .query_map(params![mailbox.0, since.0 as i64], |r| {
                    let flags: String = r.get(2)?;
                    Ok(MessageFlags {
                        uid: Uid(r.get::<_, i64>(0)? as u32),
                        modseq: ModSeq(r.get::<_, i64>(1)? as u64),
                        flags: flags.split_whitespace().map(String::from).collect(),
                        internal_date: r.get(3)?,
                        size: r.get::<_, i64>(4)? as u64,
                    })
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn message_content(&self, mailbox: MailboxId, uid: Uid) -> Result<Option<Vec<u8>>> {
        Ok(self
            .message_contents(mailbox, &[uid], 0)
            .await?
            .iter()
            .next()
            .map(|(_, d)| d.to_vec()))
    }

    async fn message_contents(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        bytes: u64,
    ) -> Result<Contents> {
        let blobs = self.blobs.clone();
        if let [uid] = uids {
            // One message: its row on this thread, and its content too when small (a
            // blocking-pool hand-off costs more than reading a few KiB); a big one is read on
            // the blocking pool so no worker thread waits on it.
            let uid = *uid;
            let row = self
                .read_inline(move |c| {
                    let mut st = c.prepare_cached(CONTENT_OF_UID).map_err(backend)?;
                    let mut rows = st
                        .query(params![mailbox.0, uid.0 as i64])
                        .map_err(backend)?;
                    let Some(r) = rows.next().map_err(backend)? else {
                        return Ok(None);
                    };
                    let row = ContentRow::of(r)?;
                    // In the database: read with the row. A file is read below.
                    let mut out = Contents::with_capacity(row.size.max(0) as usize, 1);
                    if row.data.is_some() {
                        out.push_with(uid, |buf| read_content(&blobs, &row, buf))?;
                        return Ok(Some(Ok(out)));
                    }
                    Ok(Some(Err((
                        row.blob.to_string(),
                        row.prefix.to_vec(),
                        row.size,
                    ))))
                })
                .await?;
            let (blob, prefix, size) = match row {
                None => return Ok(Contents::default()),
                Some(Ok(done)) => return Ok(done),
                Some(Err(file)) => file,
            };
            let blobs = self.blobs.clone();
            let read = move || {
                let row = ContentRow {
                    uid,
                    blob: &blob,
                    prefix: &prefix,
                    size,
                    data: None,
                };
                let mut out = Contents::with_capacity(size.max(0) as usize, 1);
                out.push_with(uid, |buf| read_content(&blobs, &row, buf))?;
                Ok(out)
            };
            return if size as u64 <= INLINE_READ_MAX {
                read()
            } else {
                tokio::task::spawn_blocking(read).await.map_err(backend)?
            };
        }
        let wanted = uids.to_vec();
        self.read(move |c| {
            // The caller's estimate, within reason: it only sizes the first allocation.
            let room = usize::try_from(bytes.min(1 << 30)).unwrap_or(0);
            let mut out = Contents::with_capacity(room, wanted.len());
            for_each_uid(c, CONTENT_TABLES, CONTENT_COLUMNS, mailbox, &wanted, |r| {
                let row = ContentRow::of(r)?;
                out.push_with(row.uid, |buf| read_content(&blobs, &row, buf))
            })?;
            Ok(out)
        })
        .await
    }

    async fn message_headers(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> Result<Vec<(Uid, Vec<u8>)>> {
        let wanted = uids.to_vec();
        let blobs = self.blobs.clone();
        self.read(move |c| {
            let mut out: Vec<(Uid, Vec<u8>)> = Vec::with_capacity(wanted.len());
            for_each_uid(c, "message_headers", "uid, data", mailbox, &wanted, |r| {
                let uid = Uid(r.get::<_, i64>(0).map_err(backend)? as u32);
                out.push((uid, r.get(1).map_err(backend)?));
                Ok(())
            })?;
            if out.len() < wanted.len() {
                // Messages stored before schema 3 have no header row: cut the header off
                // their content.
                let have: Vec<Uid> = out.iter().map(|(u, _)| *u).collect();
                let missing: Vec<Uid> = wanted
                    .iter()
                    .filter(|u| have.binary_search(u).is_err())
                    .copied()
                    .collect();
                for_each_uid(c, "messages", "uid, blob, prefix", mailbox, &missing, |r| {
                    let uid = Uid(r.get::<_, i64>(0).map_err(backend)? as u32);
                    let blob: String = r.get(1).map_err(backend)?;
                    let mut data: Vec<u8> = r.get(2).map_err(backend)?;
                    if let Some(body) = load_blob(c, &blobs, &blob)? {
                        let end = header_end(&body);
                        data.extend_from_slice(&body[..end]);
                    }
                    out.push((uid, data));
                    Ok(())
                })?;
                out.sort_by_key(|(u, _)| *u);
            }
            Ok(out)
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.events.subscribe()
    }

    async fn mailbox_create(
        &self,
        account: AccountId,
        name: &str,
        role: Option<MailboxRole>,
    ) -> Result<Mailbox> {
        check_mailbox_name(name)?;
        if is_inbox(name) {
            return Err(StoreError::Exists("mailbox INBOX".into()));
        }
        let name = name.to_string();
        let events = self.events.clone();
        self.write_then(
            move |c| {
                if mailbox_by_name(c, account, &name)?.is_some() {
                    return Err(StoreError::Exists(format!("mailbox {name}")));
                }
                if let Some(r) = role {
                    let taken: i64 = c
                        .query_row(
                            "SELECT count(*) FROM mailboxes WHERE account = ?1 AND role = ?2",
                            params![account.0, r.as_str()],
                            |row| row.get(0),
                        )
                        .map_err(backend)?;
                    if taken > 0 {
                        return Err(StoreError::Conflict(format!(
                            "another mailbox already has the {} role",
                            r.as_str()
                        )));
                    }
                }
                create_parents(c, account, &name)?;
                insert_mailbox(c, account, &name, role)?;
                mailbox_by_name(c, account, &name)?
                    .ok_or_else(|| backend("mailbox vanished after insert"))
            },
            Some(Box::new(move |_| {
                let _ = events.send(ChangeEvent::MailboxesChanged(account));
            })),
        )
        .await
    }

    async fn mailbox_delete(&self, account: AccountId, name: &str) -> Result<()> {
        if is_inbox(name) {
            return Err(StoreError::Conflict("INBOX cannot be deleted".into()));
        }
        let name = name.to_string();
        let events = self.events.clone();
        self.write_then(
            move |c| {
                let mb = mailbox_by_name(c, account, &name)?
                    .ok_or_else(|| StoreError::NotFound(format!("mailbox {name}")))?;
                let children: i64 = c
                    .query_row(
                        "SELECT count(*) FROM mailboxes WHERE account = ?1 AND substr(name, 1, ?3) = ?2",
                        params![account.0, format!("{name}/"), name.chars().count() as i64 + 1],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                if children > 0 {
                    return Err(StoreError::Conflict(format!(
                        "mailbox {name} has children: delete them first"
                    )));
                }
                c.execute(
                    "UPDATE accounts SET used = used - (SELECT coalesce(sum(size), 0) FROM messages \
                     WHERE mailbox = ?2) WHERE id = ?1",
                    params![account.0, mb.id.0],
                )
                .map_err(backend)?;
                c.execute(
                    "UPDATE blobs SET refs = refs - (SELECT count(*) FROM messages m \
                     WHERE m.mailbox = ?1 AND m.blob = blobs.id) \
                     WHERE id IN (SELECT blob FROM messages WHERE mailbox = ?1)",
                    [mb.id.0],
                )
                .map_err(backend)?;
                c.execute("DELETE FROM mailboxes WHERE id = ?1", [mb.id.0])
                    .map_err(backend)?;
                Ok(())
            },
            Some(Box::new(move |_| {
                let _ = events.send(ChangeEvent::MailboxesChanged(account));
            })),
        )
        .await
    }

    async fn mailbox_rename(&self, account: AccountId, from: &str, to: &str) -> Result<()> {
        check_mailbox_name(to)?;
        if is_inbox(to) {
            return Err(StoreError::Exists("mailbox INBOX".into()));
        }
        let (from, to) = (from.to_string(), to.to_string());
        let events = self.events.clone();
        self.write_then(
            move |c| {
                let src = mailbox_by_name(c, account, &from)?
                    .ok_or_else(|| StoreError::NotFound(format!("mailbox {from}")))?;
                if mailbox_by_name(c, account, &to)?.is_some() {
                    return Err(StoreError::Exists(format!("mailbox {to}")));
                }
                if is_inbox(&from) {
                    // RFC 9051 6.3.6: the messages move to a new mailbox; INBOX stays, empty.
                    // The new mailbox continues INBOX's UID and MODSEQ counters, so the UIDs
                    // it takes over stay below its UIDNEXT.
                    create_parents(c, account, &to)?;
                    let id = insert_mailbox(c, account, &to, None)?;
                    c.execute(
                        "UPDATE mailboxes SET uid_next = ?2, highest_modseq = ?3 WHERE id = ?1",
                        params![id, src.uid_next.0 as i64, src.highest_modseq.0 as i64],
                    )
                    .map_err(backend)?;
                    c.execute(
                        "UPDATE messages SET mailbox = ?2 WHERE mailbox = ?1",
                        params![src.id.0, id],
                    )
                    .map_err(backend)?;
                    c.execute(
                        "UPDATE message_headers SET mailbox = ?2 WHERE mailbox = ?1",
                        params![src.id.0, id],
                    )
                    .map_err(backend)?;
                    // For INBOX the messages are gone: record them as expunged with a new
                    // MODSEQ, so sessions that have INBOX selected see them leave (EXPUNGE or
                    // VANISHED) like any other removal.
                    let modseq = src.highest_modseq.0 as i64 + 1;
                    c.execute(
                        "INSERT OR REPLACE INTO expunged (mailbox, uid, modseq) \
                         SELECT ?1, uid, ?3 FROM messages WHERE mailbox = ?2",
                        params![src.id.0, id, modseq],
                    )
                    .map_err(backend)?;
                    c.execute(
                        "UPDATE mailboxes SET highest_modseq = ?2 WHERE id = ?1",
                        params![src.id.0, modseq],
                    )
                    .map_err(backend)?;
                    return Ok(());
                }
                if to.starts_with(&format!("{}/", src.name)) {
                    return Err(StoreError::Conflict(format!(
                        "cannot rename {from} into its own child {to}"
                    )));
                }
                let prefix = format!("{}/", src.name);
                let prefix_len = src.name.chars().count() as i64 + 1;
                let clash: i64 = c
                    .query_row(
                        "SELECT count(*) FROM mailboxes WHERE account = ?1 AND substr(name, 1, ?3) = ?2",
                        params![account.0, format!("{to}/"), to.chars().count() as i64 + 1],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                if clash > 0 {
                    return Err(StoreError::Exists(format!("mailboxes under {to}")));
                }
                create_parents(c, account, &to)?;
                for table in ["mailboxes", "subscriptions"] {
                    c.execute(
                        &format!(
                            "UPDATE {table} SET name = ?3 || substr(name, ?5) \
                             WHERE account = ?1 AND (name = ?2 OR substr(name, 1, ?6) = ?4)"
                        ),
                        params![
                            account.0,
                            src.name,
                            to,
                            prefix,
                            src.name.chars().count() as i64 + 1,
                            prefix_len
                        ],
                    )
                    .map_err(backend)?;
                }
                Ok(())
            },
            Some(Box::new(move |_| {
                let _ = events.send(ChangeEvent::MailboxesChanged(account));
            })),
        )
        .await
    }

    async fn subscription_set(
        &self,
        account: AccountId,
        name: &str,
        subscribed: bool,
    ) -> Result<()> {
        check_mailbox_name(name)?;
        let name = if is_inbox(name) {
            "INBOX".to_string()
        } else {
            name.to_string()
        };
        self.write(move |c| {
            let sql = if subscribed {
                "INSERT OR IGNORE INTO subscriptions (account, name) VALUES (?1, ?2)"
            } else {
                "DELETE FROM subscriptions WHERE account = ?1 AND name = ?2"
            };
            c.execute(sql, params![account.0, name]).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn subscriptions(&self, account: AccountId) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut st = c
                .prepare("SELECT name FROM subscriptions WHERE account = ?1 ORDER BY name")
                .map_err(backend)?;
            let rows = st.query_map([account.0], |r| r.get(0)).map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
                .map_err(backend)
        })
        .await
    }

    async fn flags_update(
        &self,
        mailbox: MailboxId,
        uids: &[Uid],
        mode: FlagMode,
        flags: &[String],
        unchanged_since: Option<ModSeq>,
    ) -> Result<FlagUpdate> {
        let uids = uids.to_vec();
        let flags = normalize_flags(flags);
        let events = self.events.clone();
        self.write_then(
            move |c| {
                let (_, highest) = mailbox_account(c, mailbox)?;
                let modseq = highest + 1;
                let mut out = FlagUpdate::default();
                for uid in uids {
                    let row: Option<(String, i64)> = c
                        .prepare_cached("SELECT flags, modseq FROM messages WHERE mailbox = ?1 AND uid = ?2")
                        .map_err(backend)?
                        .query_row(params![mailbox.0, uid.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                        .map_err(backend)?;
                    let Some((old, old_modseq)) = row else { continue };
                    if let Some(u) = unchanged_since {
                        if old_modseq as u64 > u.0 {
                            out.modified.push(uid);
                            continue;
                        }
                    }
                    let old: Vec<String> = old.split_whitespace().map(String::from).collect();
                    let new: Vec<String> = match mode {
                        FlagMode::Replace => flags.clone(),
                        FlagMode::ReplaceAllowed(rights) => old
                            .iter()
                            .filter(|o| !rights.allows_flag(o))
                            .chain(flags.iter().filter(|f| rights.allows_flag(f)))
                            .cloned()
                            .collect(),
                        FlagMode::Add => {
                            let mut v = old.clone();
                            for f in &flags {
                                if !v.iter().any(|o| o.eq_ignore_ascii_case(f)) {
                                    v.push(f.clone());
                                }
                            }
                            v
                        }
                        FlagMode::Remove => old
                            .iter()
                            .filter(|o| !flags.iter().any(|f| f.eq_ignore_ascii_case(o)))
                            .cloned()
                            .collect(),
                    };
                    let same = new.len() == old.len()
                        && new.iter().all(|n| old.iter().any(|o| o.eq_ignore_ascii_case(n)));
                    if same {
                        continue;
                    }
                    c.prepare_cached("UPDATE messages SET flags = ?3, modseq = ?4 WHERE mailbox = ?1 AND uid = ?2")
                        .map_err(backend)?
                        .execute(params![mailbox.0, uid.0 as i64, new.join(" "), modseq])
                        .map_err(backend)?;
                    out.changed.push((uid, ModSeq(modseq as u64), new));
                }
                if !out.changed.is_empty() {
                    c.execute(
                        "UPDATE mailboxes SET highest_modseq = ?2 WHERE id = ?1",
                        params![mailbox.0, modseq],
                    )
                    .map_err(backend)?;
                }
                Ok(out)
            },
            Some(Box::new(move |out: &FlagUpdate| {
                for (uid, modseq, _) in &out.changed {
                    let _ = events.send(ChangeEvent::FlagsChanged { mailbox, uid: *uid, modseq: *modseq });
                }
            })),
        )
        .await
    }

    async fn expunge(&self, mailbox: MailboxId, uids: &[Uid]) -> Result<Vec<Uid>> {
        let mut uids = uids.to_vec();
        uids.sort();
        uids.dedup();
        let events = self.events.clone();
        let modseq_cell = Arc::new(Mutex::new(0i64));
        let cell = modseq_cell.clone();
        self.write_then(
            move |c| {
                let (account, highest) = mailbox_account(c, mailbox)?;
                let modseq = highest + 1;
                let mut gone = Vec::new();
                let mut freed = 0i64;
                for uid in uids {
                    if let Some((size, blob)) = remove_message(c, mailbox, uid, modseq)? {
                        freed += size;
                        c.prepare_cached("UPDATE blobs SET refs = refs - 1 WHERE id = ?1")
                            .map_err(backend)?
                            .execute([blob])
                            .map_err(backend)?;
                        gone.push(uid);
                    }
                }
                if !gone.is_empty() {
                    c.execute(
                        "UPDATE mailboxes SET highest_modseq = ?2 WHERE id = ?1",
                        params![mailbox.0, modseq],
                    )
                    .map_err(backend)?;
                    c.execute(
                        "UPDATE accounts SET used = max(0, used - ?2) WHERE id = ?1",
                        params![account, freed],
                    )
                    .map_err(backend)?;
                }
                if let Ok(mut m) = cell.lock() {
                    *m = modseq;
                }
                Ok(gone)
            },
            Some(Box::new(move |gone: &Vec<Uid>| {
                let modseq = modseq_cell.lock().map(|m| *m).unwrap_or(0);
                for uid in gone {
                    let _ = events.send(ChangeEvent::Expunged {
                        mailbox,
                        uid: *uid,
                        modseq: ModSeq(modseq as u64),
                    });
                }
            })),
        )
        .await
    }

    async fn expunged_since(&self, mailbox: MailboxId, since: ModSeq) -> Result<Vec<Uid>> {
        self.read(move |c| {
            let mut st = c
                .prepare("SELECT uid FROM expunged WHERE mailbox = ?1 AND modseq > ?2 ORDER BY uid")
                .map_err(backend)?;
            let rows = st
                .query_map(params![mailbox.0, since.0 as i64], |r| {
                    Ok(Uid(r.get::<_, i64>(0)? as u32))
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn copy(
        &self,
        from: MailboxId,
        uids: &[Uid],
        to: MailboxId,
        remove_source: bool,
        rights: Rights,
    ) -> Result<Vec<(Uid, Uid)>> {
        let mut uids = uids.to_vec();
        uids.sort();
        uids.dedup();
        let events = self.events.clone();
        self.write_then(
            move |c| {
                let (account, src_highest) = mailbox_account(c, from)?;
                let (to_account, _) = mailbox_account(c, to)?;
                let (dest_next, dest_highest): (i64, i64) = c
                    .query_row("SELECT uid_next, highest_modseq FROM mailboxes WHERE id = ?1", [to.0], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(backend)?;
                let mut rows = Vec::new();
                for uid in &uids {
                    let row = c
                        .prepare_cached(
                            "SELECT flags, internal_date, size, blob, prefix, message_id, queue_id, cache \
                             FROM messages WHERE mailbox = ?1 AND uid = ?2",
                        )
                        .map_err(backend)?
                        .query_row(params![from.0, uid.0 as i64], |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, i64>(1)?,
                                r.get::<_, i64>(2)?,
                                r.get::<_, String>(3)?,
                                r.get::<_, Vec<u8>>(4)?,
                                r.get::<_, Option<String>>(5)?,
                                r.get::<_, Option<String>>(6)?,
                                r.get::<_, rusqlite::types::Value>(7)?,
                            ))
                        })
                        .optional()
                        .map_err(backend)?;
                    if let Some(row) = row {
                        rows.push((*uid, row));
                    }
                }
                // A move within one account changes no usage; anything else adds to the
                // destination's owner (and a move between accounts takes from the source's).
                if !remove_source || account != to_account {
                    // RFC 9208: a COPY that would exceed the quota is refused as a whole.
                    let total: i64 = rows.iter().map(|(_, r)| r.2).sum();
                    let (quota, used): (i64, i64) = c
                        .query_row("SELECT quota, used FROM accounts WHERE id = ?1", [to_account], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .map_err(backend)?;
                    if quota > 0 && used + total > quota {
                        return Err(StoreError::Conflict("over quota".into()));
                    }
                    c.execute("UPDATE accounts SET used = used + ?2 WHERE id = ?1", params![to_account, total])
                        .map_err(backend)?;
                    if remove_source {
                        c.execute("UPDATE accounts SET used = max(0, used - ?2) WHERE id = ?1", params![account, total])
                            .map_err(backend)?;
                    }
                }
                let dest_modseq = dest_highest + 1;
                let src_modseq = src_highest + 1;
                let mut pairs = Vec::new();
                for (i, (uid, r)) in rows.into_iter().enumerate() {
                    let new_uid = dest_next + i as i64;
                    c.prepare_cached(
                        "INSERT INTO messages (mailbox, uid, modseq, flags, internal_date, size, blob, prefix, \
                         message_id, queue_id, cache) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    )
                    .map_err(backend)?
                    .execute(params![to.0, new_uid, dest_modseq, keep_flags(&r.0, rights), r.1, r.2, r.3, r.4, r.5, r.6, r.7])
                    .map_err(backend)?;
                    c.prepare_cached(
                        "INSERT INTO message_headers (mailbox, uid, data) \
                         SELECT ?1, ?2, data FROM message_headers WHERE mailbox = ?3 AND uid = ?4",
                    )
                    .map_err(backend)?
                    .execute(params![to.0, new_uid, from.0, uid.0 as i64])
                    .map_err(backend)?;
                    if remove_source {
                        remove_message(c, from, uid, src_modseq)?;
                    } else {
                        c.prepare_cached("UPDATE blobs SET refs = refs + 1 WHERE id = ?1")
                            .map_err(backend)?
                            .execute([&r.3])
                            .map_err(backend)?;
                    }
                    pairs.push((uid, Uid(new_uid as u32)));
                }
                if !pairs.is_empty() {
                    c.execute(
                        "UPDATE mailboxes SET uid_next = ?2, highest_modseq = ?3 WHERE id = ?1",
                        params![to.0, dest_next + pairs.len() as i64, dest_modseq],
                    )
                    .map_err(backend)?;
                    if remove_source {
                        c.execute("UPDATE mailboxes SET highest_modseq = ?2 WHERE id = ?1", params![from.0, src_modseq])
                            .map_err(backend)?;
                    }
                }
                Ok((pairs, AccountId(to_account), ModSeq(dest_modseq as u64), ModSeq(src_modseq as u64)))
            },
            Some(Box::new(move |(pairs, account, dest_modseq, src_modseq): &(Vec<(Uid, Uid)>, AccountId, ModSeq, ModSeq)| {
                for (old, new) in pairs {
                    let _ = events.send(ChangeEvent::MessageAdded(Stored {
                        account: *account,
                        mailbox: to,
                        uid: *new,
                        modseq: *dest_modseq,
                    }));
                    if remove_source {
                        let _ = events.send(ChangeEvent::Expunged { mailbox: from, uid: *old, modseq: *src_modseq });
                    }
                }
            })),
        )
        .await
        .map(|(pairs, _, _, _)| pairs)
    }

    async fn acl_get(&self, mailbox: MailboxId) -> Result<Vec<AclEntry>> {
        self.read(move |c| acl_of(c, mailbox)).await
    }

    async fn acl_set(
        &self,
        mailbox: MailboxId,
        identifier: &str,
        change: AclChange,
    ) -> Result<Rights> {
        let identifier = identifier.to_string();
        let events = self.events.clone();
        self.write_then(
            move |c| {
                let (account, _) = mailbox_account(c, mailbox)?;
                let now = acl_of(c, mailbox)?
                    .into_iter()
                    .find(|e| e.identifier == identifier)
                    .map(|e| e.rights)
                    .unwrap_or_default();
                let rights = match change {
                    AclChange::Replace(r) => r,
                    AclChange::Add(r) => now.union(r),
                    AclChange::Remove(r) => now.minus(r),
                };
                if rights.is_empty() {
                    c.execute(
                        "DELETE FROM acl WHERE mailbox = ?1 AND identifier = ?2",
                        params![mailbox.0, identifier],
                    )
                    .map_err(backend)?;
                } else {
                    c.execute(
                        "INSERT OR REPLACE INTO acl (mailbox, identifier, rights) VALUES (?1, ?2, ?3)",
                        params![mailbox.0, identifier, rights.to_letters()],
                    )
                    .map_err(backend)?;
                }
                Ok((AccountId(account), rights))
            },
            Some(Box::new(move |(account, _): &(AccountId, Rights)| {
                let _ = events.send(ChangeEvent::MailboxesChanged(*account));
            })),
        )
        .await
        .map(|(_, r)| r)
    }

    async fn shared_mailboxes(&self, who: &str) -> Result<Vec<SharedMailbox>> {
        let who = who.to_string();
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT m.id, m.account, m.name, m.role, m.uid_validity, m.uid_next, \
                     m.highest_modseq, 0, a.address FROM mailboxes m \
                     JOIN accounts a ON a.id = m.account \
                     WHERE a.address_key != ?1 AND m.id IN \
                     (SELECT mailbox FROM acl WHERE identifier IN (?1, 'anyone')) \
                     ORDER BY a.address_key, m.name",
                )
                .map_err(backend)?;
            let rows = st
                .query_map([&who], |r| Ok((row_mailbox(r)?, r.get::<_, String>(8)?)))
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)?;
            let mut out = Vec::with_capacity(rows.len());
            for (mailbox, owner) in rows {
                let owner = Address::parse(&owner)
                    .map_err(|e| StoreError::Backend(format!("stored address {owner:?}: {e}")))?;
                let acl = acl_of(c, mailbox.id)?;
                out.push(SharedMailbox {
                    mailbox,
                    owner,
                    acl,
                });
            }
            Ok(out)
        })
        .await
    }
}

fn acl_of(c: &Connection, mailbox: MailboxId) -> Result<Vec<AclEntry>> {
    let mut st = c
        .prepare_cached("SELECT identifier, rights FROM acl WHERE mailbox = ?1 ORDER BY identifier")
        .map_err(backend)?;
    let rows = st
        .query_map([mailbox.0], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (identifier, rights) = row.map_err(backend)?;
        let rights = Rights::parse(&rights)
            .map_err(|ch| StoreError::Backend(format!("stored right {ch:?} of {identifier}")))?;
        out.push(AclEntry { identifier, rights });
    }
    Ok(out)
}

#[async_trait]
impl BlobStore for SqliteStore {
    async fn put_blob(&self, data: &[u8]) -> Result<BlobId> {
        let data = data.to_vec();
        if data.len() <= SMALL_BLOB_MAX {
            // Committed (and fsynced) by the writer with whatever else is queued.
            let id = BlobId(hex::encode(Sha256::digest(&data)));
            let key = id.0.clone();
            self.write(move |c| {
                c.prepare_cached(
                    "INSERT INTO blob_data (id, data, stored) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (id) DO UPDATE SET stored = excluded.stored",
                )
                .map_err(backend)?
                .execute(params![key, data, now_millis()])
                .map_err(backend)?;
                Ok(())
            })
            .await?;
            return Ok(id);
        }
        let dir = self.blobs.clone();
        tokio::task::spawn_blocking(move || dir.put(&data))
            .await
            .map_err(backend)?
            .map_err(backend)
    }

    async fn gc_blobs(&self, min_age: std::time::Duration) -> Result<u64> {
        let dir = self.blobs.clone();
        let files = tokio::task::spawn_blocking(move || dir.list())
            .await
            .map_err(backend)?
            .map_err(backend)?;
        let now = std::time::SystemTime::now();
        let old: Vec<String> = files
            .into_iter()
            .filter(|(_, m)| {
                now.duration_since(*m)
                    .map(|age| age >= min_age)
                    .unwrap_or(false)
            })
            .map(|(id, _)| id)
            .collect();
        // Blobs kept in the database: the unreferenced old ones go in one statement, with
        // their reference rows.
        let cutoff = now_millis().saturating_sub(min_age.as_millis().min(i64::MAX as u128) as i64);
        let rows = self
            .write(move |c| {
                let gone: Vec<String> = c
                    .prepare_cached(
                        "DELETE FROM blob_data WHERE stored <= ?1 AND NOT EXISTS \
                         (SELECT 1 FROM blobs WHERE blobs.id = blob_data.id AND blobs.refs > 0) \
                         RETURNING id",
                    )
                    .map_err(backend)?
                    .query_map([cutoff], |r| r.get(0))
                    .map_err(backend)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(backend)?;
                let mut del = c
                    .prepare_cached("DELETE FROM blobs WHERE id = ?1 AND refs <= 0")
                    .map_err(backend)?;
                for id in &gone {
                    del.execute([id]).map_err(backend)?;
                }
                Ok(gone.len() as u64)
            })
            .await?;
        if old.is_empty() {
            return Ok(rows);
        }
        // Decide and forget in the writer, so no delivery can add a reference in between; the
        // files are removed after that commit (a crash in between only leaves files behind).
        let unreferenced = self
            .write(move |c| {
                let mut st = c
                    .prepare_cached("SELECT refs FROM blobs WHERE id = ?1")
                    .map_err(backend)?;
                let mut gone = Vec::new();
                for id in old {
                    let refs: Option<i64> = st
                        .query_row([&id], |r| r.get(0))
                        .optional()
                        .map_err(backend)?;
                    if refs.unwrap_or(0) <= 0 {
                        gone.push(id);
                    }
                }
                let mut del = c
                    .prepare_cached("DELETE FROM blobs WHERE id = ?1")
                    .map_err(backend)?;
                for id in &gone {
                    del.execute([id]).map_err(backend)?;
                }
                Ok(gone)
            })
            .await?;
        let dir = self.blobs.clone();
        tokio::task::spawn_blocking(move || {
            let mut n = 0;
            for id in unreferenced {
                if dir.remove_if_older(&id, min_age)? {
                    n += 1;
                }
            }
            Ok::<u64, String>(n)
        })
        .await
        .map_err(backend)?
        .map_err(backend)
        .map(|files| files + rows)
    }

    async fn get_blob(&self, id: &BlobId) -> Result<Option<Vec<u8>>> {
        let dir = self.blobs.clone();
        let id = id.0.clone();
        self.read(move |c| load_blob(c, &dir, &id)).await
    }
}

const QUEUE_COLS: &str =
    "id, sender, blob, size, created, held, envid, ret, smtputf8, warned, requiretls, account";
const RCPT_COLS: &str =
    "recipient, domain, status, attempts, next_attempt, last_reply, notify, orcpt";

fn row_queued(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedMessage> {
    Ok(QueuedMessage {
        id: r.get(0)?,
        sender: r.get(1)?,
        blob: BlobId(r.get(2)?),
        size: r.get::<_, i64>(3)? as u64,
        created: r.get(4)?,
        held: r.get::<_, i64>(5)? != 0,
        envid: r.get(6)?,
        ret: r.get(7)?,
        smtputf8: r.get::<_, i64>(8)? != 0,
        warned: r.get::<_, i64>(9)? != 0,
        requiretls: r.get::<_, i64>(10)? != 0,
        account: r.get::<_, Option<i64>>(11)?.map(AccountId),
        recipients: Vec::new(),
    })
}

fn row_rcpt(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedRcpt> {
    let status: String = r.get(2)?;
    Ok(QueuedRcpt {
        recipient: QueueRecipient {
            address: r.get(0)?,
            notify: r.get(6)?,
            orcpt: r.get(7)?,
        },
        domain: r.get(1)?,
        status: match status.as_str() {
            "sent" => RcptStatus::Sent,
            "failed" => RcptStatus::Failed,
            _ => RcptStatus::Pending,
        },
        attempts: r.get::<_, i64>(3)? as u32,
        next_attempt: r.get(4)?,
        last_reply: r.get(5)?,
    })
}

/// Messages by id (in the order given) with their recipients; `due`: only pending recipients
/// due at that time.
fn queued_with_rcpts(
    c: &Connection,
    ids: &[String],
    due: Option<i64>,
) -> Result<Vec<QueuedMessage>> {
    let mut out = Vec::with_capacity(ids.len());
    let mut msg = c
        .prepare_cached(&format!("SELECT {QUEUE_COLS} FROM queue WHERE id = ?1"))
        .map_err(backend)?;
    let mut rc = c
        .prepare_cached(&format!(
            "SELECT {RCPT_COLS} FROM queue_rcpt WHERE queue_id = ?1 \
             AND (?2 IS NULL OR (status = 'pending' AND next_attempt <= ?2)) ORDER BY recipient"
        ))
        .map_err(backend)?;
    for id in ids {
        let Some(mut m) = msg
            .query_row([id], row_queued)
            .optional()
            .map_err(backend)?
        else {
            continue;
        };
        m.recipients = rc
            .query_map(params![id, due], row_rcpt)
            .map_err(backend)?
            .collect::<rusqlite::Result<_>>()
            .map_err(backend)?;
        out.push(m);
    }
    Ok(out)
}

/// Removes a message that has no pending recipient left; its blob loses a reference.
fn queue_remove(c: &Connection, id: &str) -> Result<bool> {
    let blob: Option<String> = c
        .query_row("SELECT blob FROM queue WHERE id = ?1", [id], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    let Some(blob) = blob else {
        return Ok(false);
    };
    c.execute("DELETE FROM queue WHERE id = ?1", [id])
        .map_err(backend)?;
    c.execute("UPDATE blobs SET refs = refs - 1 WHERE id = ?1", [&blob])
        .map_err(backend)?;
    Ok(true)
}

#[async_trait]
impl QueueStore for SqliteStore {
    async fn queue_insert(&self, m: NewQueued, now: i64) -> Result<()> {
        self.write(move |c| {
            // Mail an account queues while it is on hold is held from the start.
            c.execute(
                "INSERT INTO queue (id, sender, blob, size, created, envid, ret, smtputf8, \
                 requiretls, account, held) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
                 ?11 OR EXISTS (SELECT 1 FROM account_holds WHERE account = ?10 \
                 AND released IS NULL))",
                params![
                    m.id,
                    m.sender,
                    m.blob.0,
                    m.size as i64,
                    now,
                    m.envid,
                    m.ret,
                    m.smtputf8 as i64,
                    m.requiretls as i64,
                    m.account.map(|a| a.0),
                    m.held as i64
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Exists(format!("queued message {}", m.id))
                }
                e => backend(e),
            })?;
            let mut ins = c
                .prepare_cached(
                    "INSERT OR IGNORE INTO queue_rcpt (queue_id, recipient, domain, status, \
                     next_attempt, notify, orcpt) VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6)",
                )
                .map_err(backend)?;
            for r in &m.recipients {
                let domain = r
                    .address
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_ascii_lowercase())
                    .unwrap_or_default();
                ins.execute(params![m.id, r.address, domain, now, r.notify, r.orcpt])
                    .map_err(backend)?;
            }
            c.prepare_cached(
                "INSERT INTO blobs (id, size, refs) VALUES (?1, ?2, 1) \
                 ON CONFLICT (id) DO UPDATE SET refs = refs + 1",
            )
            .map_err(backend)?
            .execute(params![m.blob.0, m.size as i64])
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn queue_due(&self, now: i64, limit: usize) -> Result<Vec<QueuedMessage>> {
        self.read(move |c| {
            let ids: Vec<String> = c
                .prepare_cached(
                    "SELECT q.id FROM queue q WHERE q.held = 0 AND EXISTS (SELECT 1 FROM \
                     queue_rcpt r WHERE r.queue_id = q.id AND r.status = 'pending' \
                     AND r.next_attempt <= ?1) ORDER BY q.created, q.id LIMIT ?2",
                )
                .map_err(backend)?
                .query_map(params![now, limit as i64], |r| r.get(0))
                .map_err(backend)?
                .collect::<rusqlite::Result<_>>()
                .map_err(backend)?;
            queued_with_rcpts(c, &ids, Some(now))
        })
        .await
    }

    async fn queue_due_ids(&self, now: i64, limit: usize) -> Result<Vec<String>> {
        self.read(move |c| {
            // The (status, next_attempt) index gives due recipients in order and stops at
            // the limit, however long the queue.
            let rows: Vec<String> = c
                .prepare_cached(
                    "SELECT r.queue_id FROM queue_rcpt r JOIN queue q ON q.id = r.queue_id \
                     WHERE r.status = 'pending' AND r.next_attempt <= ?1 AND q.held = 0 \
                     ORDER BY r.next_attempt LIMIT ?2",
                )
                .map_err(backend)?
                .query_map(params![now, limit as i64], |r| r.get(0))
                .map_err(backend)?
                .collect::<rusqlite::Result<_>>()
                .map_err(backend)?;
            let mut seen = std::collections::HashSet::new();
            Ok(rows
                .into_iter()
                .filter(|id| seen.insert(id.clone()))
                .collect())
        })
        .await
    }

    async fn queue_get(&self, id: &str) -> Result<Option<QueuedMessage>> {
        let id = id.to_string();
        self.read(move |c| Ok(queued_with_rcpts(c, &[id], None)?.pop()))
            .await
    }

    async fn queue_list(&self) -> Result<Vec<QueuedMessage>> {
        self.read(move |c| {
            let ids: Vec<String> = c
                .prepare_cached("SELECT id FROM queue ORDER BY created, id")
                .map_err(backend)?
                .query_map([], |r| r.get(0))
                .map_err(backend)?
                .collect::<rusqlite::Result<_>>()
                .map_err(backend)?;
            queued_with_rcpts(c, &ids, None)
        })
        .await
    }

    async fn queue_record(&self, id: &str, results: &[(String, Attempt)]) -> Result<bool> {
        let id = id.to_string();
        let results = results.to_vec();
        self.write(move |c| {
            let mut up = c
                .prepare_cached(
                    "UPDATE queue_rcpt SET status = ?3, attempts = attempts + 1, \
                     next_attempt = ?4, last_reply = ?5 \
                     WHERE queue_id = ?1 AND recipient = ?2 AND status = 'pending'",
                )
                .map_err(backend)?;
            for (rcpt, a) in &results {
                let (status, next, reply) = match a {
                    Attempt::Sent(r) => ("sent", 0, r),
                    Attempt::Retry(r, at) => ("pending", *at, r),
                    Attempt::Failed(r) => ("failed", 0, r),
                };
                up.execute(params![id, rcpt, status, next, reply])
                    .map_err(backend)?;
            }
            // `+status`: by the primary key, not the (status, next_attempt) index, which would
            // walk every pending recipient of the queue.
            let pending: i64 = c
                .query_row(
                    "SELECT count(*) FROM queue_rcpt WHERE queue_id = ?1 AND +status = 'pending'",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if pending > 0 {
                return Ok(false);
            }
            queue_remove(c, &id)
        })
        .await
    }

    async fn queue_set_held(&self, id: &str, held: bool) -> Result<()> {
        let id = id.to_string();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE queue SET held = ?2 WHERE id = ?1",
                    params![id, held as i64],
                )
                .map_err(backend)?;
            found(n, format!("queued message {id}"))
        })
        .await
    }

    async fn queue_set_held_all(&self, held: bool) -> Result<u64> {
        self.write(move |c| {
            c.execute("UPDATE queue SET held = ?1 WHERE held != ?1", [held as i64])
                .map(|n| n as u64)
                .map_err(backend)
        })
        .await
    }

    async fn queue_retry_all(&self, now: i64) -> Result<u64> {
        self.write(move |c| {
            c.execute(
                "UPDATE queue_rcpt SET next_attempt = ?1 WHERE status = 'pending' AND next_attempt > ?1",
                [now],
            )
            .map_err(backend)?;
            c.query_row("SELECT count(*) FROM queue", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(backend)
        })
        .await
    }

    async fn queue_retry_now(&self, id: &str, now: i64) -> Result<()> {
        let id = id.to_string();
        self.write(move |c| {
            let n: usize = c
                .query_row("SELECT count(*) FROM queue WHERE id = ?1", [&id], |r| r.get(0))
                .map_err(backend)?;
            found(n, format!("queued message {id}"))?;
            c.execute(
                "UPDATE queue_rcpt SET next_attempt = ?2 WHERE queue_id = ?1 AND +status = 'pending'",
                params![id, now],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn queue_set_warned(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.write(move |c| {
            c.execute("UPDATE queue SET warned = 1 WHERE id = ?1", [&id])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn queue_delete(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.write(move |c| {
            if !queue_remove(c, &id)? {
                return Err(StoreError::NotFound(format!("queued message {id}")));
            }
            Ok(())
        })
        .await
    }

    async fn sts_get(&self, domain: &str) -> Result<Option<StsCached>> {
        let domain = domain.to_ascii_lowercase();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT domain, id, policy, fetched, expires FROM mta_sts WHERE domain = ?1",
            )
            .map_err(backend)?
            .query_row([&domain], |r| {
                Ok(StsCached {
                    domain: r.get(0)?,
                    id: r.get(1)?,
                    policy: r.get(2)?,
                    fetched: r.get(3)?,
                    expires: r.get(4)?,
                })
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn sts_put(&self, p: StsCached) -> Result<()> {
        self.write(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO mta_sts (domain, id, policy, fetched, expires) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    p.domain.to_ascii_lowercase(),
                    p.id,
                    p.policy,
                    p.fetched,
                    p.expires
                ],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }
}

fn row_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogEvent> {
    let detail: Option<String> = r.get(10)?;
    Ok(LogEvent {
        ts: r.get(0)?,
        session: r.get(1)?,
        queue_id: r.get(2)?,
        kind: r.get(3)?,
        ip: r.get(4)?,
        sender: r.get(5)?,
        recipient: r.get(6)?,
        message_id: r.get(7)?,
        outcome: r.get(8)?,
        reply: r.get(9)?,
        detail: detail
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or(serde_json::Value::Null),
    })
}

#[async_trait]
impl LogStore for SqliteStore {
    async fn log_append(&self, events: Vec<LogEvent>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.write(move |c| insert_events(c, &events)).await
    }

    fn log_submit(&self, events: Vec<LogEvent>) {
        if !events.is_empty() {
            self.submit("delivery log", move |c| insert_events(c, &events));
        }
    }

    async fn log_flush(&self) -> Result<()> {
        // The writer runs jobs in order: once this no-op commits, everything before it has.
        self.write(|_| Ok(())).await
    }

    async fn log_search(&self, filter: &LogFilter) -> Result<Vec<LogEvent>> {
        let f = filter.clone();
        self.read(move |c| {
            let mut conds = Vec::new();
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            let mut push = |cond: &str, v: rusqlite::types::Value| {
                args.push(v);
                conds.push(cond.replace('?', &format!("?{}", args.len())));
            };
            if let Some(s) = &f.sender {
                push("sender LIKE ? ESCAPE '\\'", like(s).into());
            }
            if let Some(s) = &f.recipient {
                push("recipient LIKE ? ESCAPE '\\'", like(s).into());
            }
            if let Some(s) = &f.message_id {
                let id = s.trim().trim_start_matches('<').trim_end_matches('>');
                push("message_id = ?", id.to_string().into());
            }
            if let Some(s) = &f.ip {
                push("ip = ?", s.clone().into());
            }
            if let Some(s) = &f.queue_id {
                push("queue_id = ?", s.clone().into());
            }
            if let Some(s) = &f.outcome {
                push("outcome = ?", s.clone().into());
            }
            if let Some(s) = &f.kind {
                // The LIKE pattern of `like` without its leading %: a prefix match.
                let prefix = like(s)[1..].to_string();
                push("kind LIKE ? ESCAPE '\\'", prefix.into());
            }
            if let Some(t) = f.since {
                push("ts >= ?", t.into());
            }
            if let Some(t) = f.until {
                push("ts < ?", t.into());
            }
            let limit = if f.limit == 0 { 100 } else { f.limit };
            let cond = if conds.is_empty() {
                "1".to_string()
            } else {
                conds.join(" AND ")
            };
            let sql = format!(
                "WITH hit AS (SELECT session, max(ts) AS last FROM log_events WHERE {cond} \
                 GROUP BY session ORDER BY last DESC LIMIT {limit}) \
                 SELECT e.ts, e.session, e.queue_id, e.kind, e.ip, e.sender, e.recipient, \
                 e.message_id, e.outcome, e.reply, e.detail FROM log_events e \
                 JOIN hit ON hit.session = e.session \
                 WHERE (?{a} IS NULL OR e.ts >= ?{a}) AND (?{b} IS NULL OR e.ts < ?{b}) \
                 ORDER BY hit.last DESC, e.session, e.ts, e.id",
                a = args.len() + 1,
                b = args.len() + 2,
            );
            args.push(f.since.into());
            args.push(f.until.into());
            let mut st = c.prepare(&sql).map_err(backend)?;
            let rows = st
                .query_map(rusqlite::params_from_iter(args), row_event)
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn log_expire(&self, before: i64) -> Result<u64> {
        self.write(move |c| {
            c.execute("DELETE FROM log_events WHERE ts < ?1", [before])
                .map(|n| n as u64)
                .map_err(backend)
        })
        .await
    }
}

fn insert_events(c: &Connection, events: &[LogEvent]) -> Result<()> {
    let mut st = c
        .prepare_cached(
            "INSERT INTO log_events (ts, session, queue_id, kind, ip, sender, recipient, \
             message_id, outcome, reply, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .map_err(backend)?;
    for e in events {
        let detail = if e.detail.is_null() {
            None
        } else {
            Some(e.detail.to_string())
        };
        st.execute(params![
            e.ts,
            e.session,
            e.queue_id,
            e.kind,
            e.ip,
            e.sender,
            e.recipient,
            e.message_id,
            e.outcome,
            e.reply,
            detail
        ])
        .map_err(backend)?;
    }
    Ok(())
}

fn like(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

#[async_trait]
impl SpamStore for SqliteStore {
    async fn spam_learn(
        &self,
        model: i64,
        tokens: Vec<(String, u32, u32)>,
        ham: u32,
        spam: u32,
    ) -> Result<()> {
        self.write(move |c| {
            let mut st = c
                .prepare_cached(
                    "INSERT INTO spam_tokens (model, token, ham, spam) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (model, token) DO UPDATE SET ham = ham + excluded.ham, \
                     spam = spam + excluded.spam",
                )
                .map_err(backend)?;
            for (t, h, s) in &tokens {
                st.execute(params![model, t, h, s]).map_err(backend)?;
            }
            c.prepare_cached(
                "INSERT INTO spam_totals (model, ham, spam) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (model) DO UPDATE SET ham = ham + excluded.ham, \
                 spam = spam + excluded.spam",
            )
            .map_err(backend)?
            .execute(params![model, ham, spam])
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn spam_counts(
        &self,
        model: i64,
        tokens: &[String],
    ) -> Result<((u32, u32), Vec<(String, u32, u32)>)> {
        let tokens = tokens.to_vec();
        self.read(move |c| {
            let totals = c
                .prepare_cached("SELECT ham, spam FROM spam_totals WHERE model = ?1")
                .map_err(backend)?
                .query_row(params![model], |r| {
                    Ok((r.get::<_, u32>(0)?, r.get::<_, u32>(1)?))
                })
                .optional()
                .map_err(backend)?
                .unwrap_or((0, 0));
            let mut st = c
                .prepare_cached("SELECT ham, spam FROM spam_tokens WHERE model = ?1 AND token = ?2")
                .map_err(backend)?;
            let mut out = Vec::new();
            for t in tokens {
                if let Some((h, s)) = st
                    .query_row(params![model, t], |r| {
                        Ok((r.get::<_, u32>(0)?, r.get::<_, u32>(1)?))
                    })
                    .optional()
                    .map_err(backend)?
                {
                    out.push((t, h, s));
                }
            }
            Ok((totals, out))
        })
        .await
    }

    async fn spam_train(
        &self,
        model: i64,
        key: &str,
        tokens: &[String],
        is_spam: bool,
    ) -> Result<bool> {
        let key = key.to_string();
        let tokens = tokens.to_vec();
        self.write(move |c| {
            let before: Option<bool> = c
                .prepare_cached("SELECT spam FROM spam_learnt WHERE model = ?1 AND key = ?2")
                .map_err(backend)?
                .query_row(params![model, key], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            if before == Some(is_spam) {
                return Ok(false);
            }
            // (ham, spam) deltas: off the side it was learnt on, onto the new one.
            let undo = before.is_some();
            let (dh, ds): (i64, i64) = match (is_spam, undo) {
                (true, true) => (-1, 1),
                (true, false) => (0, 1),
                (false, true) => (1, -1),
                (false, false) => (1, 0),
            };
            let mut st = c
                .prepare_cached(
                    "INSERT INTO spam_tokens (model, token, ham, spam)                      VALUES (?1, ?2, max(?3, 0), max(?4, 0))                      ON CONFLICT (model, token) DO UPDATE SET ham = max(ham + ?3, 0),                      spam = max(spam + ?4, 0)",
                )
                .map_err(backend)?;
            for t in &tokens {
                st.execute(params![model, t, dh, ds]).map_err(backend)?;
            }
            c.prepare_cached(
                "INSERT INTO spam_totals (model, ham, spam) VALUES (?1, max(?2, 0), max(?3, 0))                  ON CONFLICT (model) DO UPDATE SET ham = max(ham + ?2, 0),                  spam = max(spam + ?3, 0)",
            )
            .map_err(backend)?
            .execute(params![model, dh, ds])
            .map_err(backend)?;
            c.prepare_cached(
                "INSERT INTO spam_learnt (model, key, spam) VALUES (?1, ?2, ?3)                  ON CONFLICT (model, key) DO UPDATE SET spam = excluded.spam",
            )
            .map_err(backend)?
            .execute(params![model, key, is_spam])
            .map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn sender_list_set(
        &self,
        account: AccountId,
        entry: &str,
        list: Option<SenderList>,
    ) -> Result<()> {
        let entry = entry.to_string();
        self.write(move |c| {
            match list {
                Some(l) => c
                    .execute(
                        "INSERT INTO sender_lists (account, entry, list) VALUES (?1, ?2, ?3)                          ON CONFLICT (account, entry) DO UPDATE SET list = excluded.list",
                        params![account.0, entry, l.as_str()],
                    )
                    .map_err(backend)?,
                None => c
                    .execute(
                        "DELETE FROM sender_lists WHERE account = ?1 AND entry = ?2",
                        params![account.0, entry],
                    )
                    .map_err(backend)?,
            };
            Ok(())
        })
        .await
    }

    async fn sender_lists(&self, account: AccountId) -> Result<Vec<(String, SenderList)>> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT entry, list FROM sender_lists WHERE account = ?1 ORDER BY entry",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![account.0], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (entry, list) = row.map_err(backend)?;
                let list = match list.as_str() {
                    "allow" => SenderList::Allow,
                    "block" => SenderList::Block,
                    other => {
                        return Err(StoreError::Backend(format!(
                            "sender_lists: unknown list {other:?}"
                        )))
                    }
                };
                out.push((entry, list));
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn usage_record(
        &self,
        account: AccountId,
        ts: i64,
        recipients: &[String],
    ) -> Result<u32> {
        let recipients = recipients.to_vec();
        self.write(move |c| {
            let mut known = c
                .prepare_cached(
                    "INSERT OR IGNORE INTO known_recipients (account, address, first) \
                     VALUES (?1, ?2, ?3)",
                )
                .map_err(backend)?;
            let mut new = 0u32;
            for r in &recipients {
                new += known.execute(params![account.0, r, ts]).map_err(backend)? as u32;
            }
            c.prepare_cached(
                "INSERT INTO outbound_usage (account, ts, recipients, new_recipients) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(backend)?
            .execute(params![account.0, ts, recipients.len() as i64, new])
            .map_err(backend)?;
            Ok(new)
        })
        .await
    }

    async fn usage_since(&self, account: AccountId, since: i64) -> Result<Usage> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(recipients), 0), COALESCE(SUM(new_recipients), 0) \
                 FROM outbound_usage WHERE account = ?1 AND ts > ?2",
            )
            .map_err(backend)?
            .query_row(params![account.0, since], |r| {
                Ok(Usage {
                    messages: r.get::<_, i64>(0)? as u32,
                    recipients: r.get::<_, i64>(1)? as u32,
                    new_recipients: r.get::<_, i64>(2)? as u32,
                })
            })
            .map_err(backend)
        })
        .await
    }

    async fn recipients_known(
        &self,
        account: AccountId,
        recipients: &[String],
    ) -> Result<Vec<bool>> {
        let recipients = recipients.to_vec();
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT 1 FROM known_recipients WHERE account = ?1 AND address = ?2",
                )
                .map_err(backend)?;
            recipients
                .iter()
                .map(|r| {
                    st.query_row(params![account.0, r], |_| Ok(()))
                        .optional()
                        .map(|o| o.is_some())
                        .map_err(backend)
                })
                .collect()
        })
        .await
    }

    async fn account_hold(&self, account: AccountId, reason: &str, now: i64) -> Result<u64> {
        let reason = reason.to_string();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO account_holds (account, reason, since, released) \
                 VALUES (?1, ?2, ?3, NULL) ON CONFLICT (account) DO UPDATE SET \
                 reason = excluded.reason, since = excluded.since, released = NULL",
            )
            .map_err(backend)?
            .execute(params![account.0, reason, now])
            .map_err(backend)?;
            let n = c
                .prepare_cached("UPDATE queue SET held = 1 WHERE account = ?1 AND held = 0")
                .map_err(backend)?
                .execute(params![account.0])
                .map_err(backend)?;
            Ok(n as u64)
        })
        .await
    }

    async fn account_release(&self, account: AccountId, now: i64) -> Result<Option<u64>> {
        self.write(move |c| {
            let was = c
                .prepare_cached(
                    "UPDATE account_holds SET released = ?2 WHERE account = ?1 AND released IS NULL",
                )
                .map_err(backend)?
                .execute(params![account.0, now])
                .map_err(backend)?;
            if was == 0 {
                return Ok(None);
            }
            c.prepare_cached(
                "UPDATE queue_rcpt SET next_attempt = ?2 WHERE status = 'pending' AND \
                 queue_id IN (SELECT id FROM queue WHERE account = ?1 AND held = 1)",
            )
            .map_err(backend)?
            .execute(params![account.0, now])
            .map_err(backend)?;
            let n = c
                .prepare_cached("UPDATE queue SET held = 0 WHERE account = ?1 AND held = 1")
                .map_err(backend)?
                .execute(params![account.0])
                .map_err(backend)?;
            Ok(Some(n as u64))
        })
        .await
    }

    async fn account_hold_state(&self, account: AccountId) -> Result<Option<AccountHold>> {
        self.read(move |c| {
            c.prepare_cached("SELECT reason, since, released FROM account_holds WHERE account = ?1")
                .map_err(backend)?
                .query_row(params![account.0], |r| {
                    Ok(AccountHold {
                        reason: r.get(0)?,
                        since: r.get(1)?,
                        released: r.get(2)?,
                    })
                })
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn signal_record(&self, account: AccountId, ts: i64, signal: Signal) -> Result<()> {
        self.write(move |c| {
            c.prepare_cached("INSERT INTO account_signals (account, ts, kind) VALUES (?1, ?2, ?3)")
                .map_err(backend)?
                .execute(params![account.0, ts, signal.as_str()])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn signals_since(&self, account: AccountId, since: i64) -> Result<(u32, u32)> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT coalesce(sum(kind = 'bounce'), 0), coalesce(sum(kind = 'complaint'), 0) \
                 FROM account_signals WHERE account = ?1 AND ts >= ?2",
            )
            .map_err(backend)?
            .query_row(params![account.0, since], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)
        })
        .await
    }

    async fn login_record(&self, account: AccountId, network: &str, ts: i64) -> Result<bool> {
        let network = network.to_string();
        self.write(move |c| {
            let updated = c
                .prepare_cached(
                    "UPDATE account_logins SET last = max(last, ?3) WHERE account = ?1 AND network = ?2",
                )
                .map_err(backend)?
                .execute(params![account.0, network, ts])
                .map_err(backend)?;
            if updated > 0 {
                return Ok(false);
            }
            c.prepare_cached(
                "INSERT INTO account_logins (account, network, first, last) VALUES (?1, ?2, ?3, ?3)",
            )
            .map_err(backend)?
            .execute(params![account.0, network, ts])
            .map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn new_login_networks_since(&self, account: AccountId, since: i64) -> Result<u32> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT count(*) FROM account_logins WHERE account = ?1 AND first >= ?2",
            )
            .map_err(backend)?
            .query_row(params![account.0, since], |r| r.get(0))
            .map_err(backend)
        })
        .await
    }

    async fn signals_expire(&self, signals_before: i64, logins_before: i64) -> Result<u64> {
        self.write(move |c| {
            let a = c
                .prepare_cached("DELETE FROM account_signals WHERE ts < ?1")
                .map_err(backend)?
                .execute(params![signals_before])
                .map_err(backend)?;
            let b = c
                .prepare_cached("DELETE FROM account_logins WHERE last < ?1")
                .map_err(backend)?
                .execute(params![logins_before])
                .map_err(backend)?;
            Ok((a + b) as u64)
        })
        .await
    }

    async fn usage_expire(&self, before: i64) -> Result<u64> {
        self.write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM outbound_usage WHERE ts < ?1")
                .map_err(backend)?
                .execute(params![before])
                .map_err(backend)?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl SieveStore for SqliteStore {
    async fn sieve_put(&self, account: AccountId, name: &str, script: &str) -> Result<()> {
        let (name, script) = (name.to_string(), script.to_string());
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO sieve_scripts (account, name, script) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (account, name) DO UPDATE SET script = excluded.script",
            )
            .map_err(backend)?
            .execute(params![account.0, name, script])
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn sieve_get(&self, account: AccountId, name: &str) -> Result<Option<String>> {
        let name = name.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT script FROM sieve_scripts WHERE account = ?1 AND name = ?2")
                .map_err(backend)?
                .query_row(params![account.0, name], |r| r.get(0))
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn sieve_list(&self, account: AccountId) -> Result<Vec<(String, bool)>> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT name, active FROM sieve_scripts WHERE account = ?1 ORDER BY name",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![account.0], |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)? != 0))
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn sieve_activate(&self, account: AccountId, name: Option<&str>) -> Result<()> {
        let name = name.map(String::from);
        self.write(move |c| {
            if let Some(n) = &name {
                let exists: Option<i64> = c
                    .query_row(
                        "SELECT 1 FROM sieve_scripts WHERE account = ?1 AND name = ?2",
                        params![account.0, n],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                if exists.is_none() {
                    return Err(StoreError::NotFound(format!("sieve script {n:?}")));
                }
            }
            c.execute(
                "UPDATE sieve_scripts SET active = (name IS ?2) WHERE account = ?1",
                params![account.0, name],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn sieve_delete(&self, account: AccountId, name: &str) -> Result<()> {
        let name = name.to_string();
        self.write(move |c| {
            let active: Option<i64> = c
                .query_row(
                    "SELECT active FROM sieve_scripts WHERE account = ?1 AND name = ?2",
                    params![account.0, name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            match active {
                None => Err(StoreError::NotFound(format!("sieve script {name:?}"))),
                Some(1) => Err(StoreError::Conflict(format!(
                    "sieve script {name:?} is active"
                ))),
                Some(_) => {
                    c.execute(
                        "DELETE FROM sieve_scripts WHERE account = ?1 AND name = ?2",
                        params![account.0, name],
                    )
                    .map_err(backend)?;
                    Ok(())
                }
            }
        })
        .await
    }

    async fn sieve_seen(
        &self,
        account: AccountId,
        id: &str,
        now: i64,
        expiry: i64,
    ) -> Result<bool> {
        let id = id.to_string();
        self.write(move |c| {
            let expires: Option<i64> = c
                .prepare_cached("SELECT expires FROM sieve_seen WHERE account = ?1 AND id = ?2")
                .map_err(backend)?
                .query_row(params![account.0, id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            if expires.is_some_and(|e| e > now) {
                return Ok(true);
            }
            c.prepare_cached(
                "INSERT OR REPLACE INTO sieve_seen (account, id, expires) VALUES (?1, ?2, ?3)",
            )
            .map_err(backend)?
            .execute(params![account.0, id, now.saturating_add(expiry)])
            .map_err(backend)?;
            // Forget the account's expired entries while here.
            c.prepare_cached("DELETE FROM sieve_seen WHERE account = ?1 AND expires <= ?2")
                .map_err(backend)?
                .execute(params![account.0, now])
                .map_err(backend)?;
            Ok(false)
        })
        .await
    }

    async fn sieve_unsee(&self, account: AccountId, ids: &[String]) -> Result<()> {
        let ids = ids.to_vec();
        self.write(move |c| {
            let mut st = c
                .prepare_cached("DELETE FROM sieve_seen WHERE account = ?1 AND id = ?2")
                .map_err(backend)?;
            for id in &ids {
                st.execute(params![account.0, id]).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn sieve_active(&self, account: AccountId) -> Result<Option<(String, String)>> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT name, script FROM sieve_scripts WHERE account = ?1 AND active = 1",
            )
            .map_err(backend)?
            .query_row(params![account.0], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(backend)
        })
        .await
    }
}

#[async_trait]
impl GreylistStore for SqliteStore {
    async fn grey_get(&self, key: &str) -> Result<Option<GreyEntry>> {
        let key = key.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT first, last, passed FROM greylist WHERE key = ?1")
                .map_err(backend)?
                .query_row(params![key], |r| {
                    Ok(GreyEntry {
                        first: r.get(0)?,
                        last: r.get(1)?,
                        passed: r.get(2)?,
                    })
                })
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn grey_put(&self, key: &str, e: GreyEntry) -> Result<()> {
        let key = key.to_string();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO greylist (key, first, last, passed) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(backend)?
            .execute(params![key, e.first, e.last, e.passed])
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn grey_expire(&self, passed_before: i64, waiting_before: i64) -> Result<u64> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "DELETE FROM greylist WHERE (passed > 0 AND last < ?1) \
                     OR (passed = 0 AND first < ?2)",
                )
                .map_err(backend)?
                .execute(params![passed_before, waiting_before])
                .map_err(backend)?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl BanStore for SqliteStore {
    async fn ban_put(&self, b: BanRow) -> Result<()> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO bans (network, reason, created, expires) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(backend)?
            .execute(params![b.network, b.reason, b.created, b.expires])
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn ban_remove(&self, network: &str) -> Result<bool> {
        let network = network.to_string();
        self.write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM bans WHERE network = ?1")
                .map_err(backend)?
                .execute(params![network])
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn bans(&self, now: i64) -> Result<Vec<BanRow>> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT network, reason, created, expires FROM bans \
                     WHERE expires IS NULL OR expires > ?1 ORDER BY created, network",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![now], |r| {
                    Ok(BanRow {
                        network: r.get(0)?,
                        reason: r.get(1)?,
                        created: r.get(2)?,
                        expires: r.get(3)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn bans_expire(&self, now: i64) -> Result<u64> {
        self.write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM bans WHERE expires IS NOT NULL AND expires <= ?1")
                .map_err(backend)?
                .execute(params![now])
                .map_err(backend)?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl ReportStore for SqliteStore {
    async fn report_event_add(&self, kind: &str, domain: &str, ts: i64, data: &str) -> Result<()> {
        let (kind, domain, data) = (
            kind.to_string(),
            domain.to_ascii_lowercase(),
            data.to_string(),
        );
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO report_events (kind, domain, ts, data) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(backend)?
            .execute(params![kind, domain, ts, data])
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn report_events(&self, kind: &str, until: i64) -> Result<Vec<ReportEvent>> {
        let kind = kind.to_string();
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id, kind, domain, ts, data FROM report_events \
                     WHERE kind = ?1 AND ts <= ?2 ORDER BY ts, id",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![kind, until], |r| {
                    Ok(ReportEvent {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        domain: r.get(2)?,
                        ts: r.get(3)?,
                        data: r.get(4)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn report_events_delete(&self, kind: &str, ids: &[i64]) -> Result<u64> {
        let (kind, ids) = (kind.to_string(), ids.to_vec());
        self.write(move |c| {
            let mut st = c
                .prepare_cached("DELETE FROM report_events WHERE kind = ?1 AND id = ?2")
                .map_err(backend)?;
            let mut n = 0;
            for id in ids {
                n += st.execute(params![kind, id]).map_err(backend)? as u64;
            }
            Ok(n)
        })
        .await
    }

    async fn received_report_add(&self, r: ReceivedReport) -> Result<bool> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT OR IGNORE INTO received_reports (kind, org, report_id, domain, \
                     begin_ts, end_ts, received, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(backend)?
                .execute(params![
                    r.kind,
                    r.org,
                    r.report_id,
                    r.domain.to_ascii_lowercase(),
                    r.begin,
                    r.end,
                    r.received,
                    r.data
                ])
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn received_reports(
        &self,
        kind: &str,
        domain: Option<&str>,
        since: i64,
    ) -> Result<Vec<ReceivedReport>> {
        let (kind, domain) = (kind.to_string(), domain.map(|d| d.to_ascii_lowercase()));
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT kind, domain, org, report_id, begin_ts, end_ts, received, data \
                     FROM received_reports WHERE kind = ?1 AND (?2 IS NULL OR domain = ?2) \
                     AND end_ts >= ?3 ORDER BY end_ts DESC, org",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![kind, domain, since], |r| {
                    Ok(ReceivedReport {
                        kind: r.get(0)?,
                        domain: r.get(1)?,
                        org: r.get(2)?,
                        report_id: r.get(3)?,
                        begin: r.get(4)?,
                        end: r.get(5)?,
                        received: r.get(6)?,
                        data: r.get(7)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        mailkeep_store::conformance::run_all(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_data_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store
                .domain_add(&Domain::parse("a.test").unwrap())
                .await
                .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.domains().await.unwrap().len(), 1);
        let v: i64 = store
            .read(|c| {
                c.query_row("PRAGMA user_version", [], |r| r.get(0))
                    .map_err(backend)
            })
            .await
            .unwrap();
        assert_eq!(v, schema::CURRENT);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_caches_written_before_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = MessageCache {
            message_id: Some("old@example.test".into()),
            header_size: 42,
            ..Default::default()
        };
        let mailbox = {
            let store = SqliteStore::open(dir.path()).unwrap();
            store
                .domain_add(&Domain::parse("a.test").unwrap())
                .await
                .unwrap();
            let id = store
                .user_add(&Address::parse("u@a.test").unwrap(), "h", 0)
                .await
                .unwrap();
            let blob = store.put_blob(b"x").await.unwrap();
            let stored = store
                .deliver(vec![NewMessage {
                    account: id,
                    target: Target::Role(MailboxRole::Inbox),
                    blob,
                    blob_size: 1,
                    prefix: vec![],
                    headers: vec![],
                    flags: vec![],
                    internal_date: 0,
                    cache: MessageCache::default(),
                    queue_id: None,
                }])
                .await
                .unwrap()
                .remove(0)
                .unwrap();
            stored.mailbox
        };
        // As an older mailkeep wrote it: JSON text.
        let c = Connection::open(dir.path().join("mailkeep.db")).unwrap();
        c.execute(
            "UPDATE messages SET cache = ?1",
            [serde_json::to_string(&cache).unwrap()],
        )
        .unwrap();
        drop(c);
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.messages(mailbox).await.unwrap()[0].cache, cache);
        let envelopes = store.message_envelopes(mailbox, &[Uid(1)]).await.unwrap();
        assert_eq!(envelopes, vec![(Uid(1), cache.envelope.clone())]);
    }

    /// A user and an INBOX message for each content (in order: UIDs 1, 2, ...).
    async fn deliver_all(store: &SqliteStore, blobs: &[(BlobId, usize)]) -> MailboxId {
        store
            .domain_add(&Domain::parse("a.test").unwrap())
            .await
            .unwrap();
        let id = store
            .user_add(&Address::parse("u@a.test").unwrap(), "h", 0)
            .await
            .unwrap();
        let mut mailbox = None;
        for (blob, size) in blobs {
            let stored = store
                .deliver(vec![NewMessage {
                    account: id,
                    target: Target::Role(MailboxRole::Inbox),
                    blob: blob.clone(),
                    blob_size: *size as u64,
                    prefix: b"X-Prefix: 1\r\n".to_vec(),
                    headers: vec![],
                    flags: vec![],
                    internal_date: 0,
                    cache: MessageCache::default(),
                    queue_id: None,
                }])
                .await
                .unwrap()
                .remove(0)
                .unwrap();
            mailbox = Some(stored.mailbox);
        }
        mailbox.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_blobs_are_rows_and_big_ones_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let small = b"Subject: small\r\n\r\nbody\r\n".to_vec();
        let limit = vec![b'a'; SMALL_BLOB_MAX];
        let big = vec![b'b'; SMALL_BLOB_MAX + 1];
        let mut ids = Vec::new();
        for data in [&small, &limit, &big] {
            ids.push((store.put_blob(data).await.unwrap(), data.len()));
        }
        let is_file = |id: &BlobId| {
            dir.path()
                .join("blobs")
                .join(&id.0[..2])
                .join(&id.0)
                .exists()
        };
        assert!(
            !is_file(&ids[0].0) && !is_file(&ids[1].0),
            "small blobs have no file"
        );
        assert!(is_file(&ids[2].0), "a blob over SMALL_BLOB_MAX is a file");
        let mailbox = deliver_all(&store, &ids).await;
        // One batch read mixes both kinds, each with its prefix, in UID order.
        let all = store
            .message_contents(mailbox, &[Uid(1), Uid(2), Uid(3)], 0)
            .await
            .unwrap();
        let got: Vec<(Uid, Vec<u8>)> = all.iter().map(|(u, d)| (u, d.to_vec())).collect();
        for (i, data) in [&small, &limit, &big].into_iter().enumerate() {
            let mut want = b"X-Prefix: 1\r\n".to_vec();
            want.extend_from_slice(data);
            assert_eq!(got[i], (Uid(i as u32 + 1), want.clone()));
            // And one at a time (the single-message path).
            assert_eq!(
                store
                    .message_content(mailbox, Uid(i as u32 + 1))
                    .await
                    .unwrap(),
                Some(want)
            );
        }
        assert_eq!(store.get_blob(&ids[0].0).await.unwrap(), Some(small));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_blobs_stored_as_files_before_schema_7_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        // As mailkeep wrote every blob before: a file.
        let data = b"Subject: old\r\n\r\nkept in a file\r\n".to_vec();
        let id = store.blobs.put(&data).unwrap();
        let mailbox = deliver_all(&store, &[(id.clone(), data.len())]).await;
        let mut want = b"X-Prefix: 1\r\n".to_vec();
        want.extend_from_slice(&data);
        assert_eq!(
            store.message_content(mailbox, Uid(1)).await.unwrap(),
            Some(want.clone())
        );
        let both = store
            .message_contents(mailbox, &[Uid(1), Uid(9)], 0)
            .await
            .unwrap();
        assert_eq!(both.iter().collect::<Vec<_>>(), vec![(Uid(1), &want[..])]);
        assert_eq!(store.get_blob(&id).await.unwrap(), Some(data.clone()));
        // Referenced: collection keeps it.
        store.gc_blobs(std::time::Duration::ZERO).await.unwrap();
        assert_eq!(store.get_blob(&id).await.unwrap(), Some(data));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scattered_uids_are_read_in_lists() {
        // More scattered UIDs than one IN list holds, some missing.
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let id = store.put_blob(b"x").await.unwrap();
        let n = 6 * IN_LIST_MAX as u32;
        let blobs = vec![(id, 1); n as usize];
        let mailbox = deliver_all(&store, &blobs).await;
        // Every fifth message (sparse enough not to be read as a range), then a few that
        // do not exist.
        let wanted: Vec<Uid> = (1..=n)
            .step_by(5)
            .chain((n + 3..n + 100).step_by(13))
            .map(Uid)
            .collect();
        let got: Vec<Uid> = store
            .message_contents(mailbox, &wanted, 0)
            .await
            .unwrap()
            .iter()
            .map(|(u, _)| u)
            .collect();
        let exist: Vec<Uid> = wanted.iter().copied().filter(|u| u.0 <= n).collect();
        assert!(exist.len() > IN_LIST_MAX && exist.len() < wanted.len());
        assert_eq!(got, exist);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("x.db")).unwrap();
        c.pragma_update(None, "user_version", 999).unwrap();
        let e = schema::migrate(&mut c).unwrap_err();
        assert!(e.contains("newer"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_deliveries_get_distinct_uids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        store
            .domain_add(&Domain::parse("a.test").unwrap())
            .await
            .unwrap();
        let id = store
            .user_add(&Address::parse("u@a.test").unwrap(), "h", 0)
            .await
            .unwrap();
        let blob = store.put_blob(b"x").await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (store, blob) = (store.clone(), blob.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .deliver(vec![NewMessage {
                        account: id,
                        target: Target::Role(MailboxRole::Inbox),
                        blob,
                        blob_size: 1,
                        prefix: vec![],
                        headers: vec![],
                        flags: vec![],
                        internal_date: 0,
                        cache: Default::default(),
                        queue_id: None,
                    }])
                    .await
                    .unwrap()
                    .remove(0)
                    .unwrap()
            }));
        }
        let mut uids = std::collections::BTreeSet::new();
        for t in tasks {
            uids.insert(t.await.unwrap().uid);
        }
        assert_eq!(uids.len(), 50);
        assert_eq!(uids.iter().next_back(), Some(&Uid(50)));
    }
}
