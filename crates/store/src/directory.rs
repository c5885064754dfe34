//! Address resolution: from an envelope recipient to the accounts and external addresses that
//! receive the message. The same for every backend.
//!
//! Order (as in Postfix's virtual(5) and Dovecot): exact user, exact alias, then the address
//! without its `+tag` (RFC 5233 sub-addressing) as user or alias, then the domain's catch-all.
//! Aliases may point at aliases; loops and fan-out are bounded.

use std::collections::BTreeSet;

use mailkeep_types::{AccountId, Address};

use crate::password::{hash_password, verify_password};
use crate::{DirectoryStore, Result, User};

/// Most alias hops followed before giving up (a loop or a runaway expansion).
pub const MAX_ALIAS_DEPTH: usize = 10;
/// Most final targets one address may expand to.
pub const MAX_TARGETS: usize = 1000;

/// A local account that receives the message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalTarget {
    /// The account.
    pub account: AccountId,
    /// The account's own address (for Delivered-To).
    pub address: String,
    /// The sub-address tag, if the recipient used one.
    pub tag: Option<String>,
    /// The account's quota in bytes (0 = none) when it was looked up.
    pub quota: u64,
    /// Bytes the account used when it was looked up.
    pub used: u64,
}

impl LocalTarget {
    /// True when the account cannot take `incoming` more bytes (RFC 3463 4.2.2).
    pub fn over_quota(&self, incoming: u64) -> bool {
        self.quota > 0
            && (self.used >= self.quota || self.used.saturating_add(incoming) > self.quota)
    }
}

/// The result of resolving one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The domain is not hosted here.
    NotLocal,
    /// The domain is hosted but nobody has this address.
    Unknown,
    /// Where the message goes.
    Targets {
        /// Local accounts (each at most once).
        local: Vec<LocalTarget>,
        /// External addresses reached through aliases.
        external: Vec<Address>,
    },
    /// Alias expansion loops or fans out too far.
    TooDeep,
}

/// Resolves a recipient address.
pub async fn resolve(
    store: &dyn DirectoryStore,
    address: &Address,
    plus_separator: Option<char>,
) -> Result<Resolution> {
    if store.domain_get(address.domain()).await?.is_none() {
        return Ok(Resolution::NotLocal);
    }
    let mut local = BTreeSet::new();
    let mut external = Vec::new();
    let mut seen = BTreeSet::new();
    let mut work: Vec<(Address, Option<String>, usize)> = vec![(address.clone(), None, 0)];
    let mut found_any = false;
    while let Some((addr, inherited_tag, depth)) = work.pop() {
        if depth > MAX_ALIAS_DEPTH || local.len() + external.len() > MAX_TARGETS {
            return Ok(Resolution::TooDeep);
        }
        if !seen.insert(addr.key()) {
            continue;
        }
        // The first address's domain was checked above.
        if depth > 0 && store.domain_get(addr.domain()).await?.is_none() {
            // Only reachable through an alias.
            if !external.contains(&addr) {
                external.push(addr);
            }
            found_any = true;
            continue;
        }
        match lookup(store, &addr, plus_separator).await? {
            Some((Found::User(user), tag)) => {
                found_any = true;
                local.insert(LocalTarget {
                    account: user.id,
                    address: user.address.to_string(),
                    tag: tag.or(inherited_tag),
                    quota: user.quota,
                    used: user.used,
                });
            }
            Some((Found::Alias(targets), tag)) => {
                found_any = true;
                for t in targets {
                    work.push((t, tag.clone().or(inherited_tag.clone()), depth + 1));
                }
            }
            None => {
                // Catch-all applies to the address first asked for, not to alias targets,
                // so that a broken alias does not silently land in the catch-all.
                if depth == 0 {
                    if let Some(info) = store.domain_get(addr.domain()).await? {
                        if let Some(target) = info.catch_all {
                            work.push((target, None, depth + 1));
                            continue;
                        }
                    }
                }
            }
        }
    }
    if !found_any || (local.is_empty() && external.is_empty()) {
        return Ok(Resolution::Unknown);
    }
    Ok(Resolution::Targets {
        local: local.into_iter().collect(),
        external,
    })
}

/// Whether `user` may send as `address` (submission's MAIL FROM and From: check): their own
/// address, or an alias marked sendable that delivers to them directly; either with a
/// sub-address tag (`user+tag@`) when plus-addressing is on. Case-insensitive, as lookups are.
pub async fn may_send_as(
    store: &dyn DirectoryStore,
    user: &User,
    address: &Address,
    plus_separator: Option<char>,
) -> Result<bool> {
    let own = user.address.key();
    let mut keys = vec![address.key()];
    if let Some((base, _)) = plus_separator.and_then(|sep| address.split_plus(sep)) {
        keys.push(address.with_local(base).key());
    }
    for key in keys {
        if key == own {
            return Ok(true);
        }
        if let Some(alias) = store.alias_get(&key).await? {
            if alias.sendable && alias.targets.iter().any(|t| t.key() == own) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

enum Found {
    User(Box<User>),
    Alias(Vec<Address>),
}

async fn lookup(
    store: &dyn DirectoryStore,
    addr: &Address,
    plus_separator: Option<char>,
) -> Result<Option<(Found, Option<String>)>> {
    if let Some(found) = lookup_exact(store, &addr.key()).await? {
        return Ok(Some((found, None)));
    }
    // RFC 5233: `user+tag@domain` reaches `user@domain`.
    if let Some(sep) = plus_separator {
        if let Some((base, tag)) = addr.split_plus(sep) {
            let base = addr.with_local(base);
            if let Some(found) = lookup_exact(store, &base.key()).await? {
                return Ok(Some((found, Some(tag.to_string()))));
            }
        }
    }
    Ok(None)
}

async fn lookup_exact(store: &dyn DirectoryStore, key: &str) -> Result<Option<Found>> {
    if let Some(user) = store.user_get(key).await? {
        return Ok(Some(Found::User(Box::new(user))));
    }
    if let Some(alias) = store.alias_get(key).await? {
        return Ok(Some(Found::Alias(alias.targets)));
    }
    Ok(None)
}

/// Checks logins: the account's address (any case) and its password.
///
/// - Argon2 runs on the blocking pool, at most `parallel` at once: each run takes 19 MiB, so a
///   burst of logins cannot take the machine's memory.
/// - An unknown login costs as much as a wrong password, so timing does not tell which
///   addresses exist.
/// - A successful login is remembered for a while (as Dovecot's auth cache does) as a keyed
///   SHA-256 of the password, with a key that exists only in this process, and only for the
///   password hash it was checked against: changing the password ends it. Failures are never
///   remembered, so every wrong guess pays the full price.
pub struct Authenticator {
    jobs: std::sync::mpsc::SyncSender<CheckJob>,
    key: [u8; 32],
    ttl: std::time::Duration,
    cache: std::sync::Mutex<std::collections::HashMap<String, CachedLogin>>,
}

struct CachedLogin {
    phc: String,
    digest: [u8; 32],
    expires: std::time::Instant,
}

/// Password checks waiting at most (a few seconds of work for two cores); beyond it a login
/// is answered with a temporary failure.
const MAX_QUEUED: usize = 512;

/// Most remembered logins.
const MAX_CACHED: usize = 10_000;

/// One password check for the worker threads: the password, the stored hash (None: an
/// unknown login, which costs a hash anyway), and where the answer goes.
type CheckJob = (String, Option<String>, tokio::sync::oneshot::Sender<bool>);

impl Authenticator {
    /// At most `parallel` password checks at once; successes remembered for `ttl`
    /// (zero: never).
    pub fn new(parallel: usize, ttl: std::time::Duration) -> Authenticator {
        // Checks run on a few long-lived threads rather than the blocking pool: argon2's
        // 19 MiB is then reused by the same threads' allocator instead of being left behind
        // in every thread that ever ran one.
        let (jobs, rx) = std::sync::mpsc::sync_channel::<CheckJob>(MAX_QUEUED);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..parallel.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("auth-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok((password, hash, reply)) = job else {
                        return;
                    };
                    let ok = match hash {
                        Some(h) => verify_password(&password, &h),
                        None => {
                            let _ = hash_password(&password);
                            false
                        }
                    };
                    let _ = reply.send(ok);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-check thread");
            }
        }
        Authenticator {
            jobs,
            key: rand::random(),
            ttl,
            cache: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn digest(&self, password: &str) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.key);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Ok(Some(user)) when the credentials are right, Ok(None) for any failure of them.
    pub async fn authenticate<D: DirectoryStore + ?Sized>(
        &self,
        store: &D,
        login: &str,
        password: &str,
    ) -> Result<Option<User>> {
        Ok(self.login(store, login, password).await?.map(|l| l.user))
    }

    /// As [`Authenticator::authenticate`], saying which credential matched: the account's
    /// password, or one of its app passwords (tried first: a digest lookup, no argon2).
    pub async fn login<D: DirectoryStore + ?Sized>(
        &self,
        store: &D,
        login: &str,
        password: &str,
    ) -> Result<Option<Login>> {
        let user = match Address::parse(login) {
            Ok(a) => store.user_get(&a.key()).await?,
            Err(_) => None,
        };
        if let (Some(u), Some(digest)) = (&user, crate::password::app_password_digest(password)) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            if let Some(name) = store.app_password_check(u.id, &digest, now).await? {
                return Ok(Some(Login {
                    user: u.clone(),
                    app_password: Some(name),
                }));
            }
        }
        Ok(self
            .password_login(user, password)
            .await?
            .map(|user| Login {
                user,
                app_password: None,
            }))
    }

    async fn password_login(&self, user: Option<User>, password: &str) -> Result<Option<User>> {
        let digest = self.digest(password);
        if let Some(u) = &user {
            let now = std::time::Instant::now();
            if let Ok(cache) = self.cache.lock() {
                if let Some(c) = cache.get(&u.address.key()) {
                    if c.expires > now && c.phc == u.password_hash && c.digest == digest {
                        return Ok(user);
                    }
                }
            }
        }
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = (password.to_string(), hash, tx);
        // A full queue (MAX_QUEUED checks waiting) is a temporary failure, not a wrong
        // password: a login flood costs queue slots and CPU time, never memory or a ban.
        let ok = match self.jobs.try_send(job) {
            Ok(()) => rx.await.unwrap_or(false),
            Err(_) => {
                tracing::warn!("password checks are queued too deep; refusing a login for now");
                return Err(crate::StoreError::Busy("too many logins at once".into()));
            }
        };
        if !ok {
            return Ok(None);
        }
        if let (Some(u), false) = (&user, self.ttl.is_zero()) {
            if let Ok(mut cache) = self.cache.lock() {
                let now = std::time::Instant::now();
                if cache.len() >= MAX_CACHED {
                    cache.retain(|_, c| c.expires > now);
                    if cache.len() >= MAX_CACHED {
                        cache.clear();
                    }
                }
                cache.insert(
                    u.address.key(),
                    CachedLogin {
                        phc: u.password_hash.clone(),
                        digest,
                        expires: now + self.ttl,
                    },
                );
            }
        }
        Ok(user)
    }
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Login {
    /// Whose.
    pub user: User,
    /// The app password used, by name; None for the account's password.
    pub app_password: Option<String>,
}

/// One login check without a cache (the CLI, tests); sessions use an [`Authenticator`].
pub async fn authenticate<D: DirectoryStore + ?Sized>(
    store: &D,
    login: &str,
    password: &str,
) -> Result<Option<User>> {
    Authenticator::new(1, std::time::Duration::ZERO)
        .authenticate(store, login, password)
        .await
}
