//! Login defences shared by SMTP submission, IMAP and POP3 (and later the web): every login
//! goes through [`Guard::login`].
//!
//! Implementation notes:
//! - Failed logins are counted per client address (IPv6 per /64: one host usually owns a
//!   whole /64) over `bans.window`. Each failure waits `auth.failure_delay` doubled per
//!   earlier failure of that address (at most 16 times), across sessions.
//! - `bans.after` failures ban the address (IPv4 /32, IPv6 /64) for `bans.duration`: the
//!   ban is stored (it survives restarts), logged as `auth.ban` with its reason, and put in
//!   the [`BanList`] every listener checks when it accepts a connection.
//! - Credential stuffing: when one account fails from `bans.account_ips` distinct addresses
//!   within the window, it is locked for `bans.account_lock` against addresses that are
//!   neither allowed nor known (an address known is one that logged in to the account since
//!   the server started). Sessions already logged in are never touched; a locked login does
//!   not check the password (no hashing work for the attacker) and counts as a failure of
//!   its address.
//! - A login from a banned address is refused without checking the password, whichever
//!   session it comes on (sessions opened before the ban end too: `net::Shutdown::wait`).
//! - An address's logins take turns: one password check at a time per address (IPv6 /64),
//!   and a failure keeps the turn through its wait, so parallel connections add neither
//!   guesses nor speed; the count that leads to a ban is over all of them.
//! - Addresses in `bans.allow` are never banned or locked out and do not take turns (a
//!   webmail on the same host logs in for many people at once); their failures still wait.
//! - When the password checkers' queue is full (a login burst), the answer is a temporary
//!   failure (`Attempt::Busy`), not counted against the address.
//! - Counters live in memory (bounded); bans come from the store, refreshed by
//!   [`Guard::refresh`], so the CLI's `ban add|remove` reach a running server.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailkeep_config::{AuthConfig, BansConfig};
use mailkeep_net::bans::{Ban, BanList};
use mailkeep_store::directory::{Authenticator, Login};
use mailkeep_store::{BanRow, LogEvent, SharedStore, StoreError};
use mailkeep_types::ipnet::IpNet;

/// The wait after a failure doubles with each earlier failure of the address this many
/// times at most (2 s becomes at most 32 s: slow for a guesser, bearable for a phone with an
/// old password, and a connection is not held for minutes).
const MAX_DOUBLINGS: usize = 4;

/// Most addresses and accounts tracked at once; beyond it the oldest counts are dropped.
const MAX_TRACKED: usize = 100_000;

/// How a login attempt ended.
#[derive(Debug)]
pub enum Attempt {
    /// The right password (or app password).
    Success(Login),
    /// Wrong: wait `delay` before answering; `banned`: the address is banned now, close the
    /// connection after the answer.
    Failure {
        /// How long to wait before answering.
        delay: Duration,
        /// The address was banned by this failure.
        banned: bool,
    },
    /// The account is locked for logins from this address (credential stuffing); the
    /// password was not checked.
    Locked {
        /// How long to wait before answering.
        delay: Duration,
        /// The address was banned by this attempt.
        banned: bool,
    },
    /// The address is banned: the password was not checked.
    Banned,
    /// Too many password checks are waiting: try again shortly (not counted).
    Busy,
}

/// One login attempt as a listener sees it.
#[derive(Debug, Clone, Copy)]
pub struct LoginRequest<'a> {
    /// The listener's session id (the log event's).
    pub session: &'a str,
    /// The client.
    pub ip: IpAddr,
    /// The service, for the guard's counts and log (`smtp`, `imap`, `pop3`, `managesieve`).
    pub protocol: &'a str,
    /// The log event's kind (`imap.login`, `smtp.auth`, ...).
    pub kind: &'a str,
    /// The SASL mechanism or command (`PLAIN`, `LOGIN`, `USER`).
    pub mechanism: &'a str,
    /// Whether the connection is encrypted.
    pub tls: bool,
    /// The login name given.
    pub login: &'a str,
    /// The password given.
    pub password: &'a str,
}

/// An attempt's outcome as sessions use it.
#[derive(Debug)]
pub struct Outcome {
    /// The user, when the login succeeded.
    pub user: Option<mailkeep_store::User>,
    /// The app password used, by name.
    pub app_password: Option<String>,
    /// For the log: `accepted`, `rejected` or `locked`.
    pub word: &'static str,
    /// The wait before answering a failure.
    pub delay: Duration,
    /// The address is banned now: close after answering.
    pub banned: bool,
    /// The account is locked for this address (a temporary failure).
    pub locked: bool,
    /// The server is too busy checking passwords (a temporary failure).
    pub busy: bool,
    /// The address's turn, held through the wait after a failure.
    turn: Option<Turn>,
}

impl Outcome {
    /// The wait before a failure's answer, which grows with the address's failures (in
    /// every session and listener); none after a success. The address's next login waits
    /// for it too.
    pub async fn pause(&mut self) {
        if self.user.is_none() {
            tokio::time::sleep(self.delay).await;
        }
        self.turn = None;
    }
}

/// One address's turn to log in (see the module notes); others from it wait.
struct Turn {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    key: IpAddr,
    turns: Turns,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Turn({})", self.key)
    }
}

type Turns = Arc<Mutex<HashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>>>;

impl Drop for Turn {
    fn drop(&mut self) {
        self.guard = None;
        if let Ok(mut t) = self.turns.lock() {
            // Nobody else holds or waits for it: forget the address.
            if t.get(&self.key).is_some_and(|m| Arc::strong_count(m) == 1) {
                t.remove(&self.key);
            }
        }
    }
}

impl Attempt {
    /// The attempt as sessions use it.
    pub fn outcome(self) -> Outcome {
        let failed = |word, delay, banned, locked| Outcome {
            user: None,
            app_password: None,
            word,
            delay,
            banned,
            locked,
            busy: false,
            turn: None,
        };
        match self {
            Attempt::Success(l) => Outcome {
                user: Some(l.user),
                app_password: l.app_password,
                word: "accepted",
                delay: Duration::ZERO,
                banned: false,
                locked: false,
                busy: false,
                turn: None,
            },
            Attempt::Failure { delay, banned } => failed("rejected", delay, banned, false),
            Attempt::Locked { delay, banned } => failed("locked", delay, banned, true),
            Attempt::Banned => failed("banned", Duration::ZERO, true, false),
            Attempt::Busy => Outcome {
                busy: true,
                ..failed("busy", Duration::ZERO, false, false)
            },
        }
    }
}

#[derive(Default)]
struct State {
    /// Failure times (unix seconds) per address key.
    by_ip: HashMap<IpAddr, Vec<i64>>,
    /// Failure times and address keys per account.
    by_account: HashMap<String, Vec<(i64, IpAddr)>>,
    /// Locked accounts, until when.
    locked: HashMap<String, i64>,
    /// (account, address key) that logged in.
    known: HashSet<(String, IpAddr)>,
}

/// Told of every successful login from an address outside `bans.allow` (compromised-
/// account detection watches for logins from many new networks).
pub trait LoginWatcher: Send + Sync {
    /// `user` logged in from `ip` over `protocol`.
    fn logged_in(&self, user: &mailkeep_store::User, ip: IpAddr, protocol: &str);
}

/// The login defences.
pub struct Guard {
    watcher: std::sync::RwLock<Option<Arc<dyn LoginWatcher>>>,
    bans: BanList,
    /// `[bans]` and `auth.failure_delay`, replaced on reload.
    settings: std::sync::RwLock<(BansConfig, Duration)>,
    store: SharedStore,
    state: Mutex<State>,
    turns: Turns,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The address a client is counted and banned under: itself for IPv4, its /64 for IPv6.
pub fn ban_network(ip: IpAddr) -> IpNet {
    let host = IpNet::host(ip);
    match host.addr() {
        IpAddr::V6(_) => IpNet::new(host.addr(), 64).unwrap_or(host),
        _ => host,
    }
}

impl Guard {
    /// A guard with these settings, putting its bans into `bans` (the list the listeners
    /// check).
    pub fn new(config: BansConfig, auth: &AuthConfig, bans: BanList, store: SharedStore) -> Guard {
        Guard {
            watcher: std::sync::RwLock::new(None),
            bans,
            settings: std::sync::RwLock::new((config, auth.failure_delay)),
            store,
            state: Mutex::new(State::default()),
            turns: Turns::default(),
        }
    }

    /// New settings (SIGHUP); counts, locks and bans stay.
    pub fn reconfigure(&self, config: BansConfig, auth: &AuthConfig) {
        if let Ok(mut s) = self.settings.write() {
            *s = (config, auth.failure_delay);
        }
    }

    fn settings(&self) -> (BansConfig, Duration) {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The list of bans in force.
    pub fn ban_list(&self) -> &BanList {
        &self.bans
    }

    /// Whether `ip` is in `bans.allow`.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.settings().0.allow.iter().any(|n| n.contains(ip))
    }

    /// Reads the bans in force from the store into the list: at start, and every second so
    /// that `mailkeep ban add|remove` take effect (and end the sessions of a banned
    /// address).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let t = now();
        let rows = self.store.bans(t).await?;
        let list = rows
            .into_iter()
            .filter_map(|r| {
                let network = r.network.parse::<IpNet>().ok()?;
                Some(Ban {
                    network,
                    reason: r.reason,
                    expires: r.expires,
                })
            })
            .collect();
        self.bans.set(list);
        Ok(())
    }

    /// Deletes ended bans from the store (a write: hourly is enough, `refresh` ignores
    /// them).
    pub async fn expire(&self) -> Result<(), StoreError> {
        self.store.bans_expire(now()).await.map(|_| ())
    }

    /// Tells `watcher` of every successful login from then on.
    pub fn set_watcher(&self, watcher: Arc<dyn LoginWatcher>) {
        if let Ok(mut w) = self.watcher.write() {
            *w = Some(watcher);
        }
    }

    /// [`Guard::login`] as every listener uses it: the outcome and the log event describing
    /// the attempt (the login as its recipient, the mechanism, TLS, the app password used)
    /// for the caller to record with its own events, before it waits ([`Outcome::pause`])
    /// and answers.
    pub async fn check(
        &self,
        logins: &Authenticator,
        r: LoginRequest<'_>,
    ) -> Result<(Outcome, LogEvent), StoreError> {
        let (attempt, turn) = self
            .login_turn(logins, r.ip, r.login, r.password, r.protocol)
            .await?;
        let mut outcome = attempt.outcome();
        if outcome.user.is_none() {
            outcome.turn = turn;
        }
        let event = LogEvent {
            ts: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0),
            session: r.session.to_string(),
            kind: r.kind.to_string(),
            ip: Some(r.ip.to_string()),
            recipient: Some(r.login.chars().take(200).collect()),
            outcome: Some(outcome.word.into()),
            detail: serde_json::json!({
                "mechanism": r.mechanism, "tls": r.tls, "app_password": outcome.app_password,
            }),
            ..Default::default()
        };
        Ok((outcome, event))
    }

    /// Checks a login from `ip` through `logins`, counting failures and banning or locking
    /// as configured. `protocol` names the service in the log (`smtp`, `imap`, `pop3`).
    pub async fn login(
        &self,
        logins: &Authenticator,
        ip: IpAddr,
        login: &str,
        password: &str,
        protocol: &str,
    ) -> Result<Attempt, StoreError> {
        Ok(self
            .login_turn(logins, ip, login, password, protocol)
            .await?
            .0)
    }

    /// Waits for the address's turn (callers skip it for allowed addresses).
    async fn turn(&self, key: IpAddr) -> Option<Turn> {
        let lock = {
            let mut t = self.turns.lock().ok()?;
            t.entry(key).or_default().clone()
        };
        Some(Turn {
            guard: Some(lock.lock_owned().await),
            key,
            turns: self.turns.clone(),
        })
    }

    /// [`Guard::login`], with the address's turn for the caller to hold through the wait
    /// after a failure.
    async fn login_turn(
        &self,
        logins: &Authenticator,
        ip: IpAddr,
        login: &str,
        password: &str,
        protocol: &str,
    ) -> Result<(Attempt, Option<Turn>), StoreError> {
        if self.bans.find(ip, now()).is_some() {
            return Ok((Attempt::Banned, None));
        }
        let key = ban_network(ip).addr();
        let turn = if self.allowed(ip) {
            None
        } else {
            self.turn(key).await
        };
        // Banned while it waited for its turn: the password is never checked.
        if self.bans.find(ip, now()).is_some() {
            return Ok((Attempt::Banned, None));
        }
        let account = login.trim().to_lowercase();
        let t = now();
        if self.locked_out(&account, key, ip, t) {
            let (delay, banned) = self.failure(ip, &account, protocol, t).await;
            return Ok((Attempt::Locked { delay, banned }, turn));
        }
        let found = match logins.login(self.store.as_ref(), login, password).await {
            Ok(found) => found,
            Err(StoreError::Busy(_)) => return Ok((Attempt::Busy, None)),
            Err(e) => return Err(e),
        };
        let attempt = match found {
            Some(found) => {
                if !self.allowed(ip) {
                    let watcher = self.watcher.read().ok().and_then(|w| w.clone());
                    if let Some(w) = watcher {
                        w.logged_in(&found.user, ip, protocol);
                    }
                }
                if let Ok(mut st) = self.state.lock() {
                    if st.known.len() >= MAX_TRACKED {
                        st.known.clear();
                    }
                    st.known.insert((account, key));
                }
                Attempt::Success(found)
            }
            None => {
                let (delay, banned) = self.failure(ip, &account, protocol, t).await;
                Attempt::Failure { delay, banned }
            }
        };
        Ok((attempt, turn))
    }

    /// Whether `account` is locked against this address.
    fn locked_out(&self, account: &str, key: IpAddr, ip: IpAddr, t: i64) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        match st.locked.get(account) {
            Some(until) if *until > t => {
                !self.allowed(ip) && !st.known.contains(&(account.to_string(), key))
            }
            Some(_) => {
                st.locked.remove(account);
                false
            }
            None => false,
        }
    }

    /// Counts a failure; returns the wait before answering and whether the address is
    /// banned now.
    async fn failure(&self, ip: IpAddr, account: &str, protocol: &str, t: i64) -> (Duration, bool) {
        let (config, failure_delay) = self.settings();
        let window = config.window.as_secs() as i64;
        let key = ban_network(ip).addr();
        let allowed = self.allowed(ip);
        let (count, lock) = {
            let Ok(mut st) = self.state.lock() else {
                return (failure_delay, false);
            };
            if st.by_ip.len() >= MAX_TRACKED || st.by_account.len() >= MAX_TRACKED {
                st.by_ip
                    .retain(|_, v| v.last().is_some_and(|l| t - l < window));
                st.by_account
                    .retain(|_, v| v.last().is_some_and(|l| t - l.0 < window));
            }
            let times = st.by_ip.entry(key).or_default();
            times.retain(|x| t - x < window);
            times.push(t);
            let count = times.len();
            let tries = st.by_account.entry(account.to_string()).or_default();
            tries.retain(|x| t - x.0 < window);
            tries.push((t, key));
            let ips: HashSet<IpAddr> = tries.iter().map(|x| x.1).collect();
            let lock = config.account_ips > 0
                && ips.len() >= config.account_ips as usize
                && !st.locked.contains_key(account);
            if lock {
                let until = t + config.account_lock.as_secs() as i64;
                st.locked.insert(account.to_string(), until);
            }
            (count, lock.then_some(ips.len()))
        };
        if let Some(ips) = lock {
            tracing::warn!(
                account,
                ips,
                "account locked after failed logins from many addresses"
            );
            self.store.log_submit(vec![LogEvent {
                ts: t * 1_000_000,
                session: "auth".into(),
                kind: "auth.lock".into(),
                ip: Some(ip.to_string()),
                recipient: Some(account.chars().take(200).collect()),
                outcome: Some("locked".into()),
                detail: serde_json::json!({
                    "addresses": ips,
                    "window_secs": window,
                    "lock_secs": config.account_lock.as_secs(),
                }),
                ..Default::default()
            }]);
        }
        // Each earlier failure of the address doubles the wait, up to 16 times the first.
        let delay = failure_delay.saturating_mul(1 << (count.saturating_sub(1)).min(MAX_DOUBLINGS));
        let ban_now = !allowed && config.after > 0 && count >= config.after as usize;
        if !ban_now {
            return (delay, false);
        }
        let network = ban_network(ip);
        let reason = format!(
            "{count} failed logins in {} (last: {protocol} as {})",
            human(config.window),
            account.chars().take(100).collect::<String>()
        );
        let expires = t + config.duration.as_secs() as i64;
        self.bans.add(Ban {
            network,
            reason: reason.clone(),
            expires: Some(expires),
        });
        if let Ok(mut st) = self.state.lock() {
            st.by_ip.remove(&key);
        }
        let stored = self
            .store
            .ban_put(BanRow {
                network: network.to_string(),
                reason: reason.clone(),
                created: t,
                expires: Some(expires),
            })
            .await;
        if let Err(e) = &stored {
            tracing::error!(%network, error = %e, "storing a ban failed (it holds until a restart)");
        }
        tracing::warn!(%network, %reason, "address banned");
        self.store.log_submit(vec![LogEvent {
            ts: t * 1_000_000,
            session: "auth".into(),
            kind: "auth.ban".into(),
            ip: Some(ip.to_string()),
            recipient: Some(account.chars().take(200).collect()),
            outcome: Some("banned".into()),
            detail: serde_json::json!({
                "network": network.to_string(), "reason": reason, "expires": expires,
                "protocol": protocol, "stored": stored.is_ok(),
            }),
            ..Default::default()
        }]);
        (delay, true)
    }
}

/// A duration as people say it: the largest unit that divides it (`1 hour`, `90 minutes`).
fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = [(86_400, "day"), (3600, "hour"), (60, "minute")]
        .into_iter()
        .find(|(u, _)| s >= *u && s.is_multiple_of(*u))
        .map(|(u, name)| (s / u, name))
        .unwrap_or((s, "second"));
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn setup(config: BansConfig) -> (tempfile::TempDir, SharedStore, Guard, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore =
            Arc::new(mailkeep_store_sqlite::SqliteStore::open(&dir.path().join("store")).unwrap());
        let d = mailkeep_types::Domain::parse("example.test").unwrap();
        store.domain_add(&d).await.unwrap();
        let hash = mailkeep_store::password::hash_password("right password").unwrap();
        store
            .user_add(
                &mailkeep_types::Address::parse("alice@example.test").unwrap(),
                &hash,
                0,
            )
            .await
            .unwrap();
        let auth = AuthConfig {
            plaintext: mailkeep_config::Plaintext::Loopback,
            failure_delay: Duration::from_millis(1),
            max_failures: 3,
            max_unauthenticated_per_ip: 20,
        };
        let guard = Guard::new(config, &auth, BanList::default(), store.clone());
        (dir, store, guard, Authenticator::new(1, Duration::ZERO))
    }

    fn config() -> BansConfig {
        BansConfig {
            after: 5,
            window: Duration::from_secs(3600),
            duration: Duration::from_secs(600),
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            account_ips: 3,
            account_lock: Duration::from_secs(900),
        }
    }

    #[tokio::test]
    async fn failures_ban_the_address_but_never_an_allowed_one() {
        let (_dir, store, guard, logins) = setup(config()).await;
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        for n in 1..=5 {
            let a = guard
                .login(&logins, attacker, "alice@example.test", "wrong", "imap")
                .await
                .unwrap();
            match a {
                Attempt::Failure { delay, banned } => {
                    assert_eq!(banned, n == 5, "banned at the 5th failure");
                    assert_eq!(delay, Duration::from_millis(1 << (n - 1)));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(guard.ban_list().find(attacker, now()).is_some());
        let stored = store.bans(now()).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].network, "198.51.100.7");
        assert!(
            stored[0].reason.contains("5 failed logins"),
            "{}",
            stored[0].reason
        );
        // A restart: the ban comes back from the store.
        let fresh = Guard::new(
            config(),
            &AuthConfig {
                plaintext: mailkeep_config::Plaintext::Loopback,
                failure_delay: Duration::ZERO,
                max_failures: 3,
                max_unauthenticated_per_ip: 20,
            },
            BanList::default(),
            store.clone(),
        );
        fresh.refresh().await.unwrap();
        assert!(fresh.ban_list().find(attacker, now()).is_some());
        // The allowed network is never banned.
        let admin: IpAddr = "192.0.2.10".parse().unwrap();
        for _ in 0..20 {
            let a = guard
                .login(&logins, admin, "alice@example.test", "wrong", "smtp")
                .await
                .unwrap();
            assert!(matches!(a, Attempt::Failure { banned: false, .. }), "{a:?}");
        }
        assert!(guard.ban_list().find(admin, now()).is_none());
        // IPv6 clients are counted and banned per /64.
        for i in 0..5 {
            let ip: IpAddr = format!("2001:db8:1:2::{}", i + 1).parse().unwrap();
            guard
                .login(&logins, ip, "bob@example.test", "wrong", "pop3")
                .await
                .unwrap();
        }
        assert!(guard
            .ban_list()
            .find("2001:db8:1:2:ffff::9".parse().unwrap(), now())
            .is_some());
        assert!(guard
            .ban_list()
            .find("2001:db8:1:3::1".parse().unwrap(), now())
            .is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_guesses_from_one_address_count_once_each_and_stop_at_the_ban() {
        let (_dir, _store, guard, logins) = setup(config()).await;
        let guard = Arc::new(guard);
        let logins = Arc::new(logins);
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        // 50 sessions guess at once; only 5 (bans.after) passwords are ever checked.
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (guard, logins) = (guard.clone(), logins.clone());
            tasks.push(tokio::spawn(async move {
                let r = LoginRequest {
                    session: "s",
                    ip: attacker,
                    protocol: "imap",
                    kind: "imap.login",
                    mechanism: "PLAIN",
                    tls: false,
                    login: "alice@example.test",
                    password: "wrong",
                };
                let (mut outcome, _) = guard.check(&logins, r).await.unwrap();
                outcome.pause().await;
                outcome.word
            }));
        }
        let mut words = Vec::new();
        for t in tasks {
            words.push(t.await.unwrap());
        }
        let count = |w: &str| words.iter().filter(|x| **x == w).count();
        assert_eq!(count("rejected"), 5, "{words:?}");
        assert_eq!(count("banned"), 45, "{words:?}");
        assert_eq!(count("accepted"), 0, "{words:?}");
        // The right password after the ban is not even checked.
        let a = guard
            .login(
                &logins,
                attacker,
                "alice@example.test",
                "right password",
                "imap",
            )
            .await
            .unwrap();
        assert!(matches!(a, Attempt::Banned), "{a:?}");
        assert!(
            guard.turns.lock().unwrap().is_empty(),
            "turns are forgotten"
        );
    }

    #[tokio::test]
    async fn credential_stuffing_locks_the_account_for_new_addresses_only() {
        let (_dir, _store, guard, logins) = setup(config()).await;
        let known: IpAddr = "203.0.113.50".parse().unwrap();
        let a = guard
            .login(
                &logins,
                known,
                "alice@example.test",
                "right password",
                "imap",
            )
            .await
            .unwrap();
        assert!(matches!(a, Attempt::Success(_)));
        // Three addresses fail once each: the account locks.
        for i in 1..=3 {
            let ip: IpAddr = format!("198.51.100.{i}").parse().unwrap();
            let a = guard
                .login(&logins, ip, "Alice@example.test", "guess", "smtp")
                .await
                .unwrap();
            assert!(matches!(a, Attempt::Failure { .. }), "{a:?}");
        }
        // A new address gets nowhere, even with the right password.
        let a = guard
            .login(
                &logins,
                "198.51.100.99".parse().unwrap(),
                "alice@example.test",
                "right password",
                "imap",
            )
            .await
            .unwrap();
        assert!(matches!(a, Attempt::Locked { .. }), "{a:?}");
        // The address that logged in before, and an allowed one, still get in.
        for ip in ["203.0.113.50", "192.0.2.1"] {
            let a = guard
                .login(
                    &logins,
                    ip.parse().unwrap(),
                    "alice@example.test",
                    "right password",
                    "imap",
                )
                .await
                .unwrap();
            assert!(matches!(a, Attempt::Success(_)), "{ip}: {a:?}");
        }
    }
}
