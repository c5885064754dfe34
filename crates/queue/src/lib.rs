//! The outbound queue: messages for other domains, sent to their MX hosts.
//!
//! Implementation notes:
//! - The queue lives in the store ([`mailkeep_store::QueueStore`]); a message is queued
//!   durably before the submitting client hears 250, and leaves the queue only when no
//!   recipient is pending. A crash between a remote 250 and its record means that recipient
//!   gets the message twice (never zero times).
//! - Recipients are grouped by domain; each domain's MX hosts are tried in preference order
//!   (equal preferences shuffled, RFC 5321 5.1), each host's addresses in turn; no MX means the
//!   domain itself (implicit MX), a null MX (RFC 7505) fails at once.
//! - A session is kept for `POOL_IDLE` (5 s) after a delivery and carries the next message to the
//!   same server (RFC 5321 4.1.4), at most `POOL_MAX_USES` (100) of them; a stale one is replaced
//!   by a new connection transparently.
//! - TLS, per destination (the strongest that applies):
//!   - DANE (RFC 7672, [`dane`]) when the domain's MX records and the host's TLSA records are
//!     DNSSEC-validated ([`dnssec`]): STARTTLS required, the certificate must match a TLSA
//!     record;
//!   - else MTA-STS (RFC 8461, [`sts`]) in enforce mode: only the policy's MX hosts, STARTTLS
//!     required, a certificate valid for the host name (web roots plus `queue.ca_file`);
//!   - else opportunistic STARTTLS whenever offered ([`client::Opportunistic`]).
//!   - REQUIRETLS (RFC 8689) messages go only over DANE or PKIX-checked TLS to servers that
//!     offer REQUIRETLS, else they bounce; `TLS-Required: No` (RFC 8689 5) makes a message
//!     skip DANE and MTA-STS.
//!
//!   The policy, version, cipher and whether the server was authenticated are logged for
//!   every attempt.
//! - 4xx and connection failures are retried with a doubling wait (`queue.retry_first` up to
//!   `queue.retry_max`) until `queue.lifetime`; 5xx and expiry produce a bounce (RFC 3464) to
//!   the sender, never for a null sender (no bounce loops). A delay warning goes out once after
//!   `queue.delay_warning`.
//! - Every attempt is in the delivery log (`queue.attempt`, one event per recipient, with the
//!   host, address, TLS details and the whole reply).
//! - Forwarded mail ([`Outbound::forward`]) is queued as it came, never DKIM-signed by us (a
//!   forgery of one of our domains must not leave signed); its sender is an SRS address
//!   ([`srs`]), and a bounce to such an address is sent to the original sender.
#![warn(missing_docs)]

pub mod client;
pub mod dane;
pub mod dkim;
pub mod dnssec;
pub mod dsn;
pub mod reports;
pub mod srs;
pub mod sts;
pub mod tlsrpt;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::TokioResolver;
use mailkeep_config::{QueueConfig, RelayTls};
use mailkeep_delivery::{now_micros, Delivery, Incoming};
use mailkeep_net::Shutdown;
use mailkeep_store::directory::Resolution;
use mailkeep_store::{
    Attempt, LogEvent, NewQueued, QueueRecipient, QueuedMessage, QueuedRcpt, SharedStore,
    StoreError,
};
use mailkeep_types::{Address, QueueId};

use client::{Client, ClientError, Reply};

/// Unix seconds now.
pub fn now_secs() -> i64 {
    now_micros() / 1_000_000
}

/// Errors setting the queue up.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// TLS client configuration.
    #[error("TLS: {0}")]
    Tls(String),
    /// A DKIM key could not be loaded.
    #[error(transparent)]
    Dkim(#[from] dkim::KeyError),
}

/// The outbound queue service.
pub struct Outbound {
    store: SharedStore,
    delivery: Delivery,
    resolver: TokioResolver,
    /// Asks the resolver whether answers are DNSSEC-validated (DANE, REQUIRETLS).
    dns: dnssec::SecureDns,
    hostname: String,
    config: QueueConfig,
    tls: Arc<rustls::ClientConfig>,
    /// TLS whose certificate is checked against the web's roots and `queue.ca_file`: MTA-STS
    /// hosts, the relay host.
    pkix: Arc<rustls::ClientConfig>,
    /// MTA-STS policies looked up lately (RFC 8461 5.1), with when.
    sts: Mutex<std::collections::HashMap<String, (Option<sts::Policy>, std::time::Instant)>>,
    /// Replaced whole on reload (SIGHUP after `mailkeep dkim rotate`).
    dkim: std::sync::RwLock<Arc<dkim::DkimKeys>>,
    /// DMARC aggregate reports to send, when set.
    reports: std::sync::RwLock<Option<mailkeep_config::ReportsConfig>>,
    /// The sender rewriting of forwarded mail (kept for reversing bounces while its secret
    /// exists, even with rewriting off), and whether new forwards are rewritten.
    srs: std::sync::RwLock<(Option<Arc<srs::Srs>>, bool)>,
    /// Told of bounces of accounts' mail (compromised-account detection).
    watch: std::sync::RwLock<Option<Arc<mailkeep_delivery::watch::Watch>>>,
    /// Domains' TLS-RPT addresses, with when they were looked up.
    tlsrpt: Mutex<std::collections::HashMap<String, (Vec<String>, std::time::Instant)>>,
    wake: tokio::sync::Notify,
    /// Messages being delivered now, so a message is never sent twice at once.
    busy: Mutex<HashSet<String>>,
    /// Deliveries under way per destination (domain, or the relay host).
    destinations: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Idle connections by server, with when they went idle and how many messages they took.
    pool: Mutex<std::collections::HashMap<PoolKey, Vec<Idle>>>,
}

/// Why a domain's mail exchangers could not be found.
enum MxError {
    /// RFC 7505: the domain says it takes no mail.
    NullMx,
    /// The domain does not exist.
    NoDomain,
    /// DNS failed for now.
    Temporary(String),
}

/// The server that answered for a recipient (host name and address), if one did.
type Server = Option<(String, IpAddr)>;

/// The result of talking to one server about some recipients.
struct ServerOutcome {
    results: Vec<(QueuedRcpt, Attempt)>,
    host: String,
    ip: IpAddr,
    tls: Option<client::TlsDetails>,
}

impl Outbound {
    /// A queue service; `resolver` answers MX and address queries; outgoing mail is signed
    /// with the keys in `dkim` (see [`dkim::DkimKeys::load`]).
    pub fn new(
        store: SharedStore,
        delivery: Delivery,
        resolver: TokioResolver,
        dns: dnssec::SecureDns,
        hostname: String,
        config: QueueConfig,
        dkim: dkim::DkimKeys,
    ) -> Result<Outbound, QueueError> {
        let tls = client::Opportunistic::config().map_err(|e| QueueError::Tls(e.to_string()))?;
        let pkix = client::verified_config(config.ca_file.as_deref()).map_err(QueueError::Tls)?;
        Ok(Outbound {
            pkix,
            sts: Mutex::new(std::collections::HashMap::new()),
            store,
            delivery,
            resolver,
            dns,
            hostname,
            config,
            tls,
            dkim: std::sync::RwLock::new(Arc::new(dkim)),
            reports: std::sync::RwLock::new(None),
            srs: std::sync::RwLock::new((None, false)),
            watch: std::sync::RwLock::new(None),
            tlsrpt: Mutex::new(std::collections::HashMap::new()),
            wake: tokio::sync::Notify::new(),
            busy: Mutex::new(HashSet::new()),
            pool: Mutex::new(std::collections::HashMap::new()),
            destinations: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Queues a submitted message for other domains: signed with DKIM for its From: domain
    /// when that domain has keys, stored, queued durably. `message.blob` is set here.
    pub async fn submit(&self, mut message: NewQueued, data: &[u8]) -> Result<(), StoreError> {
        let keys = self
            .dkim
            .read()
            .map(|k| k.clone())
            .map_err(|_| StoreError::Backend("DKIM keys lock poisoned".into()))?;
        let signatures = keys
            .sign(data)
            .map_err(|e| StoreError::Backend(format!("DKIM signing failed: {e}")))?;
        let blob = if signatures.is_empty() {
            self.store.put_blob(data).await?
        } else {
            let mut signed = signatures;
            signed.extend_from_slice(data);
            message.size = signed.len() as u64;
            self.store.put_blob(&signed).await?
        };
        message.blob = blob;
        self.enqueue(message).await
    }

    /// Sends the reports this configuration asks for (checked every few minutes by `run`).
    pub fn set_reports(&self, config: mailkeep_config::ReportsConfig) {
        if let Ok(mut r) = self.reports.write() {
            *r = Some(config);
        }
    }

    /// The compromised-account watcher, once set.
    pub fn watch(&self) -> Option<Arc<mailkeep_delivery::watch::Watch>> {
        self.watch.read().ok().and_then(|w| w.clone())
    }

    /// Tells `watch` of each recipient of an account's mail that fails for good.
    pub fn set_watch(&self, watch: Arc<mailkeep_delivery::watch::Watch>) {
        if let Ok(mut w) = self.watch.write() {
            *w = Some(watch);
        }
    }

    /// Reverses SRS addresses with this; with `rewrite`, forwarded senders are rewritten
    /// with it too.
    pub fn set_srs(&self, srs: Option<srs::Srs>, rewrite: bool) {
        if let Ok(mut s) = self.srs.write() {
            *s = (srs.map(Arc::new), rewrite);
        }
    }

    /// The SRS secret's reverser (bounces to SRS addresses of ours), if there is a secret.
    pub fn srs(&self) -> Option<Arc<srs::Srs>> {
        self.srs.read().ok().and_then(|s| s.0.clone())
    }

    /// The rewriter of forwarded senders, when rewriting is on.
    pub fn srs_rewriter(&self) -> Option<Arc<srs::Srs>> {
        self.srs
            .read()
            .ok()
            .and_then(|s| if s.1 { s.0.clone() } else { None })
    }

    /// Queues a message the MX forwards (an alias with external targets, a bounce to an SRS
    /// address): stored as it is, never signed by us, queued durably. `message.blob` is set
    /// here.
    pub async fn forward(&self, mut message: NewQueued, data: &[u8]) -> Result<(), StoreError> {
        message.blob = self.store.put_blob(data).await?;
        message.size = data.len() as u64;
        self.enqueue(message).await
    }

    /// Signs with these keys from now on.
    pub fn set_dkim(&self, keys: dkim::DkimKeys) {
        if let Ok(mut k) = self.dkim.write() {
            *k = Arc::new(keys);
        }
    }

    /// Queues a message durably and wakes the sender.
    pub async fn enqueue(&self, message: NewQueued) -> Result<(), StoreError> {
        self.store.queue_insert(message, now_secs()).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Sends what is due until shutdown: at once when something is queued or a delivery ends,
    /// else every second. At most `queue.concurrency` messages at a time.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        let permits = Arc::new(tokio::sync::Semaphore::new(self.config.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        let mut reports_checked = std::time::Instant::now();
        let mut reports: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            // Reports due are made in a task of their own (HTTPS posts of TLS reports must not
            // hold up deliveries), one run at a time; they go through the queue like any
            // message.
            if reports_checked.elapsed() >= REPORTS_CHECK
                && reports.as_ref().is_none_or(|t| t.is_finished())
            {
                reports_checked = std::time::Instant::now();
                let me = self.clone();
                reports = Some(tokio::spawn(async move {
                    if let Err(e) = me.send_dmarc_reports(false).await {
                        tracing::warn!(error = %e, "sending DMARC reports failed");
                    }
                    if let Err(e) = me.send_tls_reports(false).await {
                        tracing::warn!(error = %e, "sending TLS reports failed");
                    }
                }));
            }
            // A short list: a delivery ending wakes this loop, which asks again.
            let limit = self.config.concurrency * 2;
            match self.store.queue_due_ids(now_secs(), limit).await {
                Ok(due) => {
                    for id in due {
                        let fresh = self
                            .busy
                            .lock()
                            .map(|mut b| b.insert(id.clone()))
                            .unwrap_or(false);
                        if !fresh {
                            continue;
                        }
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            return;
                        };
                        let me = self.clone();
                        tasks.spawn(async move {
                            me.deliver_message(&id).await;
                            if let Ok(mut b) = me.busy.lock() {
                                b.remove(&id);
                            }
                            drop(permit);
                            // More may be due: look again now rather than at the next tick.
                            me.wake.notify_one();
                        });
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading the outbound queue failed"),
            }
            while tasks.try_join_next().is_some() {}
            self.pool_prune().await;
            tokio::select! {
                _ = self.wake.notified() => {}
                // Changes made by the CLI (`queue retry`) are seen within a second.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait() => break,
            }
        }
        // Deliveries under way get a while to finish, so that their outcome is recorded and
        // nothing is sent twice after a restart; one stuck on a slow server is abandoned
        // (it is tried again after the restart: at worst a duplicate, never a loss).
        let finish = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_WAIT, finish).await.is_err() {
            tracing::warn!("deliveries still under way at shutdown were abandoned");
        }
        // Reports under way are made again after the restart (rows go only once queued).
        if let Some(t) = reports {
            t.abort();
        }
        self.pool_prune_all().await;
    }

    /// Gives up on every pending recipient of a message now (an admin's decision) and sends
    /// the sender a bounce saying so. Returns how many recipients it bounced.
    pub async fn bounce_now(&self, id: &str, reason: &str) -> Result<usize, StoreError> {
        let m = self
            .store
            .queue_get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("queued message {id}")))?;
        let pending: Vec<QueuedRcpt> = m
            .recipients
            .iter()
            .filter(|r| r.status == mailkeep_store::RcptStatus::Pending)
            .cloned()
            .collect();
        let why = format!("550 5.0.0 {reason}");
        let record: Vec<(String, Attempt)> = pending
            .iter()
            .map(|r| (r.recipient.address.clone(), Attempt::Failed(why.clone())))
            .collect();
        let content = self.store.get_blob(&m.blob).await?.unwrap_or_default();
        self.store.queue_record(id, &record).await?;
        let reports: Vec<dsn::RcptReport> = pending
            .iter()
            .filter(|r| wants(r, "FAILURE"))
            .map(|r| report(r, &Attempt::Failed(why.clone()), &None))
            .collect();
        if !reports.is_empty() {
            let _ = self
                .notify_sender(&m, &content, dsn::Kind::Failed, &reports)
                .await;
        }
        Ok(pending.len())
    }

    /// The wait before the next attempt after `attempts` failed ones.
    fn backoff(&self, attempts: u32) -> i64 {
        let first = self.config.retry_first.as_secs().max(1);
        let wait = first.saturating_mul(1u64 << attempts.min(20));
        wait.min(self.config.retry_max.as_secs().max(first)) as i64
    }

    async fn deliver_message(&self, id: &str) {
        let now = now_secs();
        // The list this came from may be older than a delivery of it that just ended (its
        // task finished between the query and now): take the recipients that are still due
        // from the store, so nothing is sent twice.
        let m = match self.store.queue_get(id).await {
            Ok(Some(mut fresh)) if !fresh.held => {
                fresh.recipients.retain(|r| {
                    r.status == mailkeep_store::RcptStatus::Pending && r.next_attempt <= now
                });
                if fresh.recipients.is_empty() {
                    return;
                }
                fresh
            }
            Ok(_) => return,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "reading a queued message failed");
                return;
            }
        };
        let content = match self.store.get_blob(&m.blob).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                tracing::error!(queue_id = %m.id, "queued message content is missing");
                let results: Vec<(String, Attempt)> = m
                    .recipients
                    .iter()
                    .map(|r| {
                        let why = "the queued message content is missing".to_string();
                        (r.recipient.address.clone(), Attempt::Failed(why))
                    })
                    .collect();
                let _ = self.store.queue_record(&m.id, &results).await;
                return;
            }
            Err(e) => {
                tracing::error!(queue_id = %m.id, error = %e, "reading queued content failed");
                return;
            }
        };
        let mut by_domain: BTreeMap<String, Vec<QueuedRcpt>> = BTreeMap::new();
        for r in &m.recipients {
            by_domain
                .entry(r.domain.clone())
                .or_default()
                .push(r.clone());
        }
        let mut results: Vec<(QueuedRcpt, Attempt, Server)> = Vec::new();
        // Per result: the host asked, its address, the TLS used and the hosts tried before.
        let mut seen: Vec<(String, IpAddr, Option<client::TlsDetails>, Vec<String>)> = Vec::new();
        for (domain, rcpts) in by_domain {
            let (outcome, trail) = self.deliver_domain(&m, &domain, rcpts, &content).await;
            for (r, a) in outcome.results {
                let server = if outcome.ip.is_unspecified() {
                    None
                } else {
                    Some((outcome.host.clone(), outcome.ip))
                };
                seen.push((
                    outcome.host.clone(),
                    outcome.ip,
                    outcome.tls.clone(),
                    trail.clone(),
                ));
                results.push((r, a, server));
            }
        }
        // Past the queue's lifetime, a temporary failure is final (RFC 5321 4.5.4.1).
        let expired = now - m.created >= self.config.lifetime.as_secs() as i64;
        for (r, a, _) in results.iter_mut() {
            if let Attempt::Retry(reply, _) = a {
                if expired {
                    *a = Attempt::Failed(format!(
                        "gave up after {}; last error: {reply}",
                        human(self.config.lifetime)
                    ));
                } else {
                    *a = Attempt::Retry(reply.clone(), now + self.backoff(r.attempts));
                }
            }
        }
        let events: Vec<LogEvent> = results
            .iter()
            .zip(&seen)
            .map(|((r, a, _), (host, ip, tls, trail))| {
                self.attempt_event(&m, r, a, host, *ip, tls, trail)
            })
            .collect();
        let record: Vec<(String, Attempt)> = results
            .iter()
            .map(|(r, a, _)| (r.recipient.address.clone(), a.clone()))
            .collect();
        self.store.log_submit(events);
        if let Err(e) = self.store.queue_record(&m.id, &record).await {
            tracing::error!(queue_id = %m.id, error = %e, "recording delivery attempts failed");
            return;
        }
        // A submitting account's bounces count towards its bounce rate.
        let bounced = results
            .iter()
            .filter(|(_, a, _)| matches!(a, Attempt::Failed(_)))
            .count() as u32;
        let watch = self.watch.read().ok().and_then(|w| w.clone());
        if let (Some(account), Some(watch), true) = (m.account, watch, bounced > 0) {
            watch
                .signal(
                    account,
                    mailkeep_store::Signal::Bounce,
                    bounced,
                    &format!("queue-{}", m.id),
                    m.created,
                    now,
                )
                .await;
        }
        // Bounces and warnings.
        let failed: Vec<dsn::RcptReport> = results
            .iter()
            .filter(|(r, a, _)| matches!(a, Attempt::Failed(_)) && wants(r, "FAILURE"))
            .map(|(r, a, server)| report(r, a, server))
            .collect();
        if !failed.is_empty() {
            let _ = self
                .notify_sender(&m, &content, dsn::Kind::Failed, &failed)
                .await;
        }
        let waited = now - m.created;
        if !m.warned && !expired && waited >= self.config.delay_warning.as_secs() as i64 {
            let delayed: Vec<dsn::RcptReport> = results
                .iter()
                .filter(|(r, a, _)| matches!(a, Attempt::Retry(..)) && wants(r, "DELAY"))
                .map(|(r, a, server)| report(r, a, server))
                .collect();
            if !delayed.is_empty() {
                let _ = self
                    .notify_sender(&m, &content, dsn::Kind::Delayed, &delayed)
                    .await;
                let _ = self.store.queue_set_warned(&m.id).await;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attempt_event(
        &self,
        m: &QueuedMessage,
        r: &QueuedRcpt,
        a: &Attempt,
        host: &str,
        ip: IpAddr,
        tls: &Option<client::TlsDetails>,
        trail: &[String],
    ) -> LogEvent {
        let (outcome, reply) = match a {
            Attempt::Sent(t) => ("delivered", t),
            Attempt::Retry(t, _) => ("tempfail", t),
            Attempt::Failed(t) => ("failed", t),
        };
        LogEvent {
            ts: now_micros(),
            session: format!("queue-{}", m.id),
            queue_id: Some(m.id.clone()),
            kind: "queue.attempt".into(),
            ip: (!ip.is_unspecified()).then(|| ip.to_string()),
            sender: Some(m.sender.clone()),
            recipient: Some(r.recipient.address.clone()),
            outcome: Some(outcome.into()),
            reply: Some(reply.clone()),
            detail: serde_json::json!({
                "host": host,
                "attempt": r.attempts + 1,
                "next_attempt": match a { Attempt::Retry(_, at) => Some(*at), _ => None },
                "tls": tls.as_ref().map(|t| serde_json::json!({
                    "version": t.version, "cipher": t.cipher,
                    "policy": t.policy, "authenticated": t.authenticated,
                })),
                "tried": trail,
            }),
            ..Default::default()
        }
    }

    /// Sends a report to the original sender: locally when the sender is ours, else through
    /// the queue with a null sender (RFC 5321 4.5.5), never for a null sender. Err: it
    /// could not be delivered or queued (logged).
    async fn notify_sender(
        &self,
        m: &QueuedMessage,
        content: &[u8],
        kind: dsn::Kind,
        recipients: &[dsn::RcptReport],
    ) -> Result<(), String> {
        if m.sender.is_empty() {
            return Ok(());
        }
        let what = match kind {
            dsn::Kind::Failed => "bounce",
            dsn::Kind::Delayed => "delay warning",
        };
        // A forwarded message's sender is our SRS address: the report goes to the original
        // sender (or the first forwarder's SRS address) it stands for.
        let reversed = self.srs_original(&m.sender);
        let to = reversed.clone().unwrap_or_else(|| m.sender.clone());
        let report = dsn::Report {
            hostname: &self.hostname,
            to: &to,
            queue_id: &m.id,
            envid: m.envid.as_deref(),
            arrival: m.created,
            kind,
            recipients,
            original: content,
            // RFC 8689 5: a report on a REQUIRETLS message carries only its header.
            headers_only: m.ret.as_deref() == Some("HDRS")
                || kind == dsn::Kind::Delayed
                || m.requiretls,
        };
        let data = dsn::build(&report, now_secs());
        let id = QueueId::new(now_micros() as u64, rand::random()).0;
        let resolved = match Address::parse(&to) {
            Ok(a) => self.delivery.resolve(&a).await,
            // Another forwarder's SRS address may exceed 64 octets; it is theirs to check.
            Err(_) if reversed.is_some() => Ok(Resolution::NotLocal),
            Err(e) => {
                tracing::warn!(queue_id = %m.id, error = %e, "no {what}: the sender address is invalid");
                return Err(format!("the sender address is invalid: {e}"));
            }
        };
        let sent = match resolved {
            Ok(Resolution::Targets { local, .. }) if !local.is_empty() => {
                let incoming = Incoming {
                    data,
                    return_path: String::new(),
                    recipients: local,
                    queue_id: id.clone(),
                    session: format!("queue-{}", m.id),
                    client_ip: None,
                    mailbox: mailkeep_types::MailboxRole::Inbox,
                    placements: Default::default(),
                    virus_clean: false,
                    refusable: false,
                    onward: Default::default(),
                    dsn: Default::default(),
                };
                match self.delivery.deliver(incoming).await {
                    Ok(d) => {
                        self.store.log_submit(d.events);
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Ok(Resolution::NotLocal) => {
                // Signed like any outgoing message (with the keys of the hostname's domain).
                let bounce = NewQueued {
                    id: id.clone(),
                    sender: String::new(),
                    blob: mailkeep_store::BlobId(String::new()),
                    size: data.len() as u64,
                    recipients: vec![QueueRecipient {
                        address: to.clone(),
                        notify: None,
                        orcpt: None,
                    }],
                    envid: None,
                    ret: None,
                    smtputf8: !to.is_ascii(),
                    // RFC 8689 5: the report on a REQUIRETLS message is as protected.
                    requiretls: m.requiretls,
                    account: None,
                    held: false,
                };
                self.submit(bounce, &data).await.map_err(|e| e.to_string())
            }
            Ok(_) => Err("the sender is a local address that no longer exists".into()),
            Err(e) => Err(e.to_string()),
        };
        let ev = LogEvent {
            ts: now_micros(),
            session: format!("queue-{}", m.id),
            queue_id: Some(m.id.clone()),
            kind: "queue.dsn".into(),
            recipient: Some(to.clone()),
            outcome: Some(if sent.is_ok() { "accepted" } else { "failed" }.into()),
            detail: serde_json::json!({ "kind": what, "dsn_queue_id": id, "error": sent.as_ref().err() }),
            ..Default::default()
        };
        self.store.log_submit(vec![ev]);
        if let Err(e) = &sent {
            tracing::warn!(queue_id = %m.id, error = %e, "sending the {what} failed");
        }
        sent
    }

    /// The address an SRS sender of ours stands for (None: not SRS, no secret, or a bad hash
    /// or an expired address: the report then goes to the SRS address itself, which resolves
    /// to no user here, so it is logged as failed and sent nowhere).
    fn srs_original(&self, sender: &str) -> Option<String> {
        let srs = self.srs()?;
        let (local, _) = sender.rsplit_once('@')?;
        if !srs::is_srs(local) {
            return None;
        }
        match srs.reverse(local, srs::day(now_secs())) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(sender, error = %e, "a report to an SRS address that does not reverse");
                None
            }
        }
    }

    /// Mail exchangers of a domain in the order to try them.
    async fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, MxError> {
        let name = format!("{}.", domain.trim_end_matches('.'));
        match self.resolver.mx_lookup(name.as_str()).await {
            Ok(mx) => {
                let mut records: Vec<(u16, u32, String)> = mx
                    .iter()
                    .map(|r| {
                        let host = r.exchange().to_ascii();
                        (
                            r.preference(),
                            rand::random(),
                            host.trim_end_matches('.').to_string(),
                        )
                    })
                    .collect();
                // RFC 7505 3: a single MX with the root as exchange means no mail.
                if records.len() == 1 && records[0].2.is_empty() {
                    return Err(MxError::NullMx);
                }
                records.retain(|r| !r.2.is_empty());
                // RFC 5321 5.1: lowest preference first, equal ones in random order.
                records.sort();
                Ok(records.into_iter().map(|r| r.2).collect())
            }
            Err(e) if e.is_nx_domain() => Err(MxError::NoDomain),
            // RFC 5321 5.1: no MX, the domain itself is the implicit MX.
            Err(e) if e.is_no_records_found() => Ok(vec![domain.to_string()]),
            Err(e) => Err(MxError::Temporary(e.to_string())),
        }
    }

    /// Addresses of a host: IPv6 and IPv4, as the resolver gives them.
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = format!("{}.", host.trim_end_matches('.'));
        match self.resolver.lookup_ip(name.as_str()).await {
            Ok(ips) => Ok(ips.iter().collect()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Delivers one message to the recipients of one domain: each MX host and address in
    /// turn until one server answers. Also returns the hosts tried before.
    async fn deliver_domain(
        &self,
        m: &QueuedMessage,
        domain: &str,
        rcpts: Vec<QueuedRcpt>,
        content: &[u8],
    ) -> (ServerOutcome, Vec<String>) {
        let none = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        let all = |a: Attempt| ServerOutcome {
            results: rcpts.iter().map(|r| (r.clone(), a.clone())).collect(),
            host: domain.to_string(),
            ip: none,
            tls: None,
        };
        // At most `queue.destination_concurrency` deliveries to one destination at once.
        let dest = match &self.config.relay {
            Some(r) => format!("[{}]:{}", r.host, r.port),
            None => domain.to_string(),
        };
        let gate = self.destinations.lock().ok().map(|mut d| {
            d.entry(dest)
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(
                        self.config.destination_concurrency,
                    ))
                })
                .clone()
        });
        let _slot = match &gate {
            Some(g) => g.clone().acquire_owned().await.ok(),
            None => None,
        };
        let hosts = match &self.config.relay {
            // A relay host takes everything (no MX lookup).
            Some(r) => Ok(vec![r.host.clone()]),
            None => self.mx_hosts(domain).await,
        };
        let hosts = match hosts {
            Ok(h) => h,
            Err(MxError::NullMx) => {
                let why = format!("556 5.1.10 {domain} accepts no mail (null MX, RFC 7505)");
                return (all(Attempt::Failed(why)), Vec::new());
            }
            Err(MxError::NoDomain) => {
                let why = format!("550 5.1.2 the domain {domain} does not exist");
                return (all(Attempt::Failed(why)), Vec::new());
            }
            Err(MxError::Temporary(e)) => {
                let why = format!("451 4.4.3 DNS lookup of {domain} failed: {e}");
                return (all(Attempt::Retry(why, 0)), Vec::new());
            }
        };
        let mut trail = Vec::new();
        let relayed = self.config.relay.is_some();
        // RFC 8689 5: `TLS-Required: No` asks that DANE and MTA-STS be ignored (REQUIRETLS,
        // when also given, wins).
        let tls_optional = !m.requiretls && tls_required_no(content);
        let policy = if relayed || tls_optional || !self.config.mta_sts {
            None
        } else {
            self.sts_policy(domain).await
        };
        let enforce = policy
            .as_ref()
            .is_some_and(|p| p.mode == sts::Mode::Enforce);
        // RFC 7672 2.2.1: DANE applies only where the MX records are DNSSEC-validated.
        let mx_secure = if !relayed && ((self.config.dane && !tls_optional) || m.requiretls) {
            match self.dns.query(domain, RecordType::MX).await {
                Ok(a) => a.authentic,
                Err(e) => {
                    trail.push(format!(
                        "{domain}: DNSSEC status of the MX records unknown: {e}"
                    ));
                    false
                }
            }
        } else {
            false
        };
        // RFC 8689 4.1: REQUIRETLS mail goes only to MX hosts found securely (DNSSEC or an
        // MTA-STS policy); a relay host must be checked by certificate.
        if m.requiretls && !relayed && !mx_secure && !enforce {
            let why = format!(
                "550 5.7.10 REQUIRETLS: {domain} has neither DNSSEC-signed MX records nor an \
                 MTA-STS policy in enforce mode, so its servers cannot be authenticated"
            );
            return (all(Attempt::Failed(why)), trail);
        }
        for host in &hosts {
            if let Some(p) = policy.as_ref().filter(|p| p.mode != sts::Mode::None) {
                // RFC 8461 4.1: only the policy's MX hosts (enforce); testing only notes it.
                if !p.allows(host) {
                    if enforce {
                        trail.push(format!(
                            "{host}: not an mx of the MTA-STS policy of {domain}: skipped"
                        ));
                        continue;
                    }
                    trail.push(format!(
                        "{host}: not an mx of the MTA-STS policy of {domain} (testing mode: tried anyway)"
                    ));
                }
            }
            let auth = if relayed {
                Auth::Opportunistic
            } else {
                match self.host_auth(m, domain, host, mx_secure, enforce).await {
                    Ok(a) => a,
                    Err(e) => {
                        trail.push(format!("{host}: {e}"));
                        continue;
                    }
                }
            };
            let ips = match self.addresses(host).await {
                Ok(ips) if !ips.is_empty() => ips,
                Ok(_) | Err(_) => {
                    trail.push(format!("{host}: no address"));
                    continue;
                }
            };
            for ip in ips {
                match self
                    .try_server(m, domain, host, ip, &rcpts, content, &auth)
                    .await
                {
                    Ok(outcome) => return (outcome, trail),
                    Err(e) => trail.push(format!("{host} [{ip}]: {e}")),
                }
            }
        }
        let why = match trail.last() {
            Some(t) => format!("451 4.4.1 no mail exchanger of {domain} answered ({t})"),
            None => format!("451 4.4.4 no mail exchanger of {domain} has an address"),
        };
        (all(Attempt::Retry(why, 0)), trail)
    }

    /// How a host must be checked: DANE from its TLSA records when its domain's MX records are
    /// DNSSEC-validated, else PKIX under MTA-STS enforce or REQUIRETLS, else opportunistic.
    /// Err: the host cannot be used now (its TLSA lookup failed).
    async fn host_auth(
        &self,
        m: &QueuedMessage,
        domain: &str,
        host: &str,
        mx_secure: bool,
        enforce: bool,
    ) -> Result<Auth, String> {
        if mx_secure && self.config.dane {
            // RFC 7672 2.2.2: the TLSA records of the MX host, at its port.
            let name = format!("_{}._tcp.{host}", self.config.port);
            match self.dns.query(&name, RecordType::TLSA).await {
                Ok(a) if a.authentic && !a.records.is_empty() => {
                    let usable = dane::Tlsa::usable(&a.records);
                    if usable.is_empty() {
                        // RFC 7672 2.2: only unusable records: TLS without authentication,
                        // unless something else asks for authentication.
                        if !enforce && !m.requiretls {
                            return Ok(Auth::Encrypted("DANE (unusable TLSA records)"));
                        }
                    } else {
                        let names = vec![host.to_string(), domain.to_string()];
                        // RFC 8460 4.4: the policy as TLS-RPT reports it.
                        let strings: Vec<String> = usable
                            .iter()
                            .map(|t| {
                                let hex: String =
                                    t.data.iter().map(|b| format!("{b:02x}")).collect();
                                format!("{} {} {} {hex}", t.usage, t.selector, t.matching)
                            })
                            .collect();
                        let config = dane::DaneVerifier::config(usable, names)
                            .map_err(|e| format!("DANE: {e}"))?;
                        return Ok(Auth::Dane(config, strings));
                    }
                }
                Ok(_) => {}
                // RFC 7672 2.2: a failed lookup in a signed zone defers; it is not "no TLSA".
                Err(e) => return Err(format!("TLSA lookup of {name} failed: {e}")),
            }
        }
        if enforce {
            Ok(Auth::Pkix("mta-sts"))
        } else if m.requiretls {
            Ok(Auth::Pkix("requiretls"))
        } else {
            Ok(Auth::Opportunistic)
        }
    }

    /// The MTA-STS policy of a domain (RFC 8461 5.1): the cached one while the DNS record's
    /// id is unchanged, else a fresh fetch; a cached one when DNS or the fetch fails. Looked
    /// up at most once a minute per domain.
    async fn sts_policy(&self, domain: &str) -> Option<sts::Policy> {
        let key = domain.to_ascii_lowercase();
        if let Ok(mem) = self.sts.lock() {
            if let Some((p, at)) = mem.get(&key) {
                if at.elapsed() < STS_RECHECK {
                    return p.clone().filter(|p| p.mode != sts::Mode::None);
                }
            }
        }
        let policy = self.sts_discover(&key).await;
        if let Ok(mut mem) = self.sts.lock() {
            if mem.len() > 10_000 {
                mem.clear();
            }
            mem.insert(key, (policy.clone(), std::time::Instant::now()));
        }
        policy.filter(|p| p.mode != sts::Mode::None)
    }

    async fn sts_discover(&self, domain: &str) -> Option<sts::Policy> {
        let now = now_secs();
        let cached = match self.store.sts_get(domain).await {
            Ok(c) => c.filter(|c| c.expires > now),
            Err(e) => {
                tracing::warn!(%domain, error = %e, "reading the cached MTA-STS policy failed");
                None
            }
        };
        let parsed = |c: &mailkeep_store::StsCached| sts::Policy::parse(&c.policy).ok();
        let txt = self
            .resolver
            .txt_lookup(format!("_mta-sts.{domain}."))
            .await;
        // RFC 8461 3.1: exactly one STS record; several or none mean no (new) policy.
        let ids: Vec<String> = match &txt {
            Ok(t) => t
                .iter()
                .filter_map(|r| {
                    let text: String = r
                        .txt_data()
                        .iter()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect();
                    sts::record_id(&text)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let id = match ids.as_slice() {
            [one] => one.clone(),
            _ => return cached.as_ref().and_then(parsed),
        };
        if let Some(c) = cached.as_ref().filter(|c| c.id == id) {
            return parsed(c);
        }
        let host = format!("mta-sts.{domain}");
        let fetched = async {
            let ip = self
                .addresses(&host)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| format!("{host} has no address"))?;
            let addr = SocketAddr::new(ip, self.config.mta_sts_port);
            let text =
                sts::fetch(domain, addr, self.pkix.clone(), self.config.connect_timeout).await?;
            let policy = sts::Policy::parse(&text)?;
            Ok::<_, String>((text, policy))
        }
        .await;
        match fetched {
            Ok((text, policy)) => {
                let entry = mailkeep_store::StsCached {
                    domain: domain.to_string(),
                    id: id.clone(),
                    policy: text,
                    fetched: now,
                    expires: now.saturating_add(policy.max_age as i64),
                };
                if let Err(e) = self.store.sts_put(entry).await {
                    tracing::warn!(%domain, error = %e, "caching the MTA-STS policy failed");
                }
                self.store.log_submit(vec![LogEvent {
                    ts: now_micros(),
                    session: "queue".into(),
                    kind: "queue.mta_sts".into(),
                    outcome: Some("fetched".into()),
                    detail: serde_json::json!({
                        "domain": domain, "id": id, "mode": policy.mode.as_str(),
                        "mx": policy.mx, "max_age": policy.max_age,
                    }),
                    ..Default::default()
                }]);
                Some(policy)
            }
            Err(e) => {
                tracing::warn!(%domain, error = %e, "fetching the MTA-STS policy failed");
                self.store.log_submit(vec![LogEvent {
                    ts: now_micros(),
                    session: "queue".into(),
                    kind: "queue.mta_sts".into(),
                    outcome: Some("failed".into()),
                    reply: Some(e),
                    detail: serde_json::json!({ "domain": domain, "id": id,
                        "cached": cached.is_some() }),
                    ..Default::default()
                }]);
                // RFC 8461 5.1: a valid cached policy still applies.
                cached.as_ref().and_then(parsed)
            }
        }
    }

    /// One delivery to one server: over a connection left open by an earlier delivery when
    /// one is (RFC 5321 4.1.4: after a transaction the session takes the next MAIL), else a
    /// new one. Err: the server never took responsibility for any recipient (no connection,
    /// no greeting, a failed handshake): the next one is tried.
    #[allow(clippy::too_many_arguments)]
    async fn try_server(
        &self,
        m: &QueuedMessage,
        domain: &str,
        host: &str,
        ip: IpAddr,
        rcpts: &[QueuedRcpt],
        content: &[u8],
        auth: &Auth,
    ) -> Result<ServerOutcome, String> {
        let port = self
            .config
            .relay
            .as_ref()
            .map(|r| r.port)
            .unwrap_or(self.config.port);
        // A connection is reused only for mail that asks no more of it than it gave.
        let key = (host.to_ascii_lowercase(), ip, port, auth.level());
        let outcome = |results, tls| ServerOutcome {
            results,
            host: host.to_string(),
            ip,
            tls,
        };
        if let Some(mut c) = self.pool_take(&key) {
            // Err: it had gone stale (closed by the server while idle): a new one below.
            if let Ok((results, reusable)) = self.transaction(&mut c, m, host, rcpts, content).await
            {
                let tls = c.tls.clone();
                self.pool_return(key, c, reusable).await;
                return Ok(outcome(results, tls));
            }
        }
        let connected = self.connect(host, ip, port, auth).await;
        // RFC 8460: every new session's TLS outcome, for the domain's TLS report.
        if self.config.relay.is_none() {
            let tls = connected.as_ref().map(|c| c.tls.is_some());
            self.record_tls(domain, auth, host, ip, tls.map_err(|e| e.as_str()))
                .await;
        }
        let mut c = connected?;
        match self.transaction(&mut c, m, host, rcpts, content).await {
            Ok((results, reusable)) => {
                let tls = c.tls.clone();
                self.pool_return(key, c, reusable).await;
                Ok(outcome(results, tls))
            }
            Err(e) => {
                c.quit().await;
                Err(e)
            }
        }
    }

    /// An idle connection to this server, younger than the idle limit.
    fn pool_take(&self, key: &PoolKey) -> Option<Client> {
        let mut pool = self.pool.lock().ok()?;
        let idle = pool.get_mut(key)?;
        while let Some((c, since, uses)) = idle.pop() {
            if since.elapsed() < POOL_IDLE && uses < POOL_MAX_USES {
                let mut c = c;
                c.uses = uses;
                return Some(c);
            }
            // Too old: closed without waiting (the server times it out anyway).
            drop(c);
        }
        None
    }

    /// Keeps a connection for the next delivery to the same server, or says goodbye.
    async fn pool_return(&self, key: PoolKey, mut c: Client, reusable: bool) {
        c.uses += 1;
        if reusable && c.uses < POOL_MAX_USES {
            if let Ok(mut pool) = self.pool.lock() {
                let idle = pool.entry(key).or_default();
                if idle.len() < self.config.concurrency {
                    let uses = c.uses;
                    idle.push((c, std::time::Instant::now(), uses));
                    return;
                }
            }
        }
        c.quit().await;
    }

    /// Closes every idle connection (at shutdown).
    async fn pool_prune_all(&self) {
        let all: Vec<Client> = match self.pool.lock() {
            Ok(mut pool) => pool
                .drain()
                .flat_map(|(_, idle)| idle.into_iter().map(|(c, _, _)| c))
                .collect(),
            Err(_) => Vec::new(),
        };
        for c in all {
            c.quit().await;
        }
    }

    /// Closes connections idle for longer than the limit.
    async fn pool_prune(&self) {
        let old: Vec<Client> = match self.pool.lock() {
            Ok(mut pool) => {
                let mut old = Vec::new();
                for idle in pool.values_mut() {
                    let (keep, stale): (Vec<_>, Vec<_>) = idle
                        .drain(..)
                        .partition(|(_, since, _)| since.elapsed() < POOL_IDLE);
                    *idle = keep;
                    old.extend(stale.into_iter().map(|(c, _, _)| c));
                }
                pool.retain(|_, idle| !idle.is_empty());
                old
            }
            Err(_) => Vec::new(),
        };
        for c in old {
            c.quit().await;
        }
    }

    /// A new session with a server, ready for MAIL: greeting, EHLO, STARTTLS (and EHLO
    /// again), the relay's login.
    async fn connect(
        &self,
        host: &str,
        ip: IpAddr,
        port: u16,
        auth: &Auth,
    ) -> Result<Client, String> {
        let relay = self.config.relay.as_ref();
        let addr = SocketAddr::new(ip, port);
        let tcp = tokio::time::timeout(
            self.config.connect_timeout,
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
        let err = |e: ClientError| e.to_string();
        let tls_config = match (relay, auth) {
            (Some(r), _) if r.verify_certificate => self.pkix.clone(),
            (Some(_), _) => self.tls.clone(),
            (None, Auth::Opportunistic) | (None, Auth::Encrypted(_)) => self.tls.clone(),
            (None, Auth::Pkix(_)) => self.pkix.clone(),
            (None, Auth::Dane(config, _)) => config.clone(),
        };
        let mut c = if relay.is_some_and(|r| r.tls == RelayTls::Implicit) {
            // RFC 8314 3.3: TLS from the first byte.
            let mut c = Client::tls_from_start(
                Box::new(tcp),
                tls_config.clone(),
                host,
                self.config.command_timeout,
            )
            .await
            .map_err(err)?;
            if let Some(t) = c.tls.as_mut() {
                t.policy = "relay";
                t.authenticated = relay.is_some_and(|r| r.verify_certificate);
            }
            c
        } else {
            Client::new(Box::new(tcp), self.config.command_timeout)
        };
        let greeting = c.reply().await.map_err(err)?;
        if !greeting.ok() {
            // RFC 5321 3.1: a server that will not talk; the next one may.
            c.quit().await;
            return Err(format!("greeting {}", greeting.text()));
        }
        let hello = c.hello(&self.hostname).await.map_err(err)?;
        if !hello.ok() {
            c.quit().await;
            return Err(format!("EHLO {}", hello.text()));
        }
        let want_tls = match relay.map(|r| r.tls) {
            None => {
                if let Some(why) = auth.required_by() {
                    if !c.has("STARTTLS") {
                        c.quit().await;
                        return Err(format!(
                            "{host} does not offer STARTTLS, which {why} requires"
                        ));
                    }
                }
                c.has("STARTTLS")
            }
            Some(RelayTls::Opportunistic) => c.has("STARTTLS"),
            Some(RelayTls::StartTls) => {
                if !c.has("STARTTLS") {
                    c.quit().await;
                    return Err("the relay host does not offer STARTTLS (queue.relay_tls)".into());
                }
                true
            }
            Some(RelayTls::Implicit) | Some(RelayTls::None) => false,
        };
        if want_tls {
            let (tls_client, _) = c
                .starttls(tls_config, host)
                .await
                .map_err(|(e, r)| match r {
                    Some(r) => format!("STARTTLS {}", r.text()),
                    None => e.to_string(),
                })?;
            c = tls_client;
            if let Some(t) = c.tls.as_mut() {
                match relay {
                    Some(r) => {
                        t.policy = "relay";
                        t.authenticated = r.verify_certificate;
                    }
                    None => {
                        t.policy = auth.name();
                        t.authenticated = matches!(auth, Auth::Pkix(_) | Auth::Dane(..));
                    }
                }
            }
            let hello = c.hello(&self.hostname).await.map_err(err)?;
            if !hello.ok() {
                c.quit().await;
                return Err(format!("EHLO after STARTTLS {}", hello.text()));
            }
        }
        // The relay's login (RFC 4954), never in the clear unless the admin said no TLS.
        if let Some((user, password)) = relay.and_then(|r| r.credentials.as_ref()) {
            if c.tls.is_none() && relay.is_some_and(|r| r.tls != RelayTls::None) {
                c.quit().await;
                return Err(
                    "the relay host offered no TLS: its password is not sent in the clear".into(),
                );
            }
            use base64::Engine;
            let plain =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            let r = c
                .command(&format!("AUTH PLAIN {plain}"))
                .await
                .map_err(err)?;
            if !r.ok() {
                c.quit().await;
                // A refused login is the admin's to fix: retried, never bounced.
                return Err(format!("relay login refused: {}", r.text()));
            }
        }
        Ok(c)
    }

    /// One mail transaction on a ready session: the outcome for each recipient, and whether
    /// the session can take another message. Err: the connection failed before MAIL was
    /// answered (nothing was decided).
    async fn transaction(
        &self,
        c: &mut Client,
        m: &QueuedMessage,
        host: &str,
        rcpts: &[QueuedRcpt],
        content: &[u8],
    ) -> Result<(Vec<(QueuedRcpt, Attempt)>, bool), String> {
        let every = |a: Attempt| rcpts.iter().map(|r| (r.clone(), a.clone())).collect();
        // RFC 6531 3.4: a message that needs SMTPUTF8 cannot go to a server without it.
        if m.smtputf8 && !c.has("SMTPUTF8") {
            let why = format!(
                "553 5.6.7 the message needs SMTPUTF8 (non-ASCII addresses), which {host} does not support"
            );
            return Ok((every(Attempt::Failed(why)), true));
        }
        // RFC 1870 6: a declared limit we exceed is a permanent failure.
        if let Some(limit) = c.param("SIZE").and_then(|v| v.trim().parse::<u64>().ok()) {
            if limit > 0 && m.size > limit {
                let why = format!(
                    "552 5.3.4 the message ({} bytes) is over {host}'s limit of {limit}",
                    m.size
                );
                return Ok((every(Attempt::Failed(why)), true));
            }
        }
        // RFC 8689 4.1: the next hop must carry REQUIRETLS on, over authenticated TLS.
        if m.requiretls {
            if !c.tls.as_ref().is_some_and(|t| t.authenticated) {
                let why = format!(
                    "451 4.7.10 REQUIRETLS: the connection to {host} is not authenticated TLS"
                );
                return Ok((every(Attempt::Retry(why, 0)), true));
            }
            if !c.has("REQUIRETLS") {
                let why = format!(
                    "550 5.7.10 REQUIRETLS: {host} does not support REQUIRETLS, which the sender asked for"
                );
                return Ok((every(Attempt::Failed(why)), true));
            }
        }
        let mut mail = format!("MAIL FROM:<{}>", m.sender);
        if c.has("SIZE") {
            mail.push_str(&format!(" SIZE={}", m.size));
        }
        if !content.is_ascii() && c.has("8BITMIME") {
            mail.push_str(" BODY=8BITMIME");
        }
        if m.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if m.requiretls {
            mail.push_str(" REQUIRETLS");
        }
        let dsn = c.has("DSN");
        if dsn {
            if let Some(ret) = &m.ret {
                mail.push_str(&format!(" RET={ret}"));
            }
            // Kept decoded (as smtp-proto hands it over); sent as xtext (RFC 3461 4.4).
            if let Some(envid) = &m.envid {
                mail.push_str(&format!(" ENVID={}", xtext(envid)));
            }
        }
        let lines: Vec<String> = rcpts
            .iter()
            .map(|rc| {
                let mut line = format!("RCPT TO:<{}>", rc.recipient.address);
                if dsn {
                    if let Some(n) = &rc.recipient.notify {
                        line.push_str(&format!(" NOTIFY={n}"));
                    }
                    if let Some(o) = &rc.recipient.orcpt {
                        line.push_str(&format!(" ORCPT={o}"));
                    }
                }
                line
            })
            .collect();
        let mut accepted = Vec::new();
        let mut results = Vec::new();
        let lost = |e: ClientError| {
            // Lost mid-way: nothing was taken, all is retried.
            let why = format!("451 4.4.2 {host}: {e}");
            Ok((every(Attempt::Retry(why, 0)), false))
        };
        let r = if c.has("PIPELINING") {
            // RFC 2920 3.1: MAIL, every RCPT and DATA in one go, then the replies in order.
            let mut batch = format!("{mail}\r\n");
            for l in &lines {
                batch.push_str(l);
                batch.push_str("\r\n");
            }
            batch.push_str("DATA\r\n");
            c.send(batch.as_bytes()).await.map_err(|e| e.to_string())?;
            let r = c.reply().await.map_err(|e| e.to_string())?;
            let mail_ok = r.ok();
            let mail_reply = r;
            for rc in rcpts {
                match c.reply().await {
                    Ok(r) if r.ok() && mail_ok => accepted.push(rc.clone()),
                    Ok(r) if mail_ok => results.push((rc.clone(), verdict(&r))),
                    Ok(_) => {}
                    Err(e) => return lost(e),
                }
            }
            let data = match c.reply().await {
                Ok(r) => r,
                Err(e) => return lost(e),
            };
            if !mail_ok {
                if data.code == 354 {
                    // A server that took DATA anyway: end it empty, and drop the session.
                    let _ = c.send(b".\r\n").await;
                    let _ = c.reply().await;
                }
                return Ok((every(verdict(&mail_reply)), false));
            }
            if accepted.is_empty() {
                if data.code == 354 {
                    let _ = c.send(b".\r\n").await;
                    let _ = c.reply().await;
                }
                return Ok((results, false));
            }
            data
        } else {
            let r = c.command(&mail).await.map_err(|e| e.to_string())?;
            if !r.ok() {
                return Ok((every(verdict(&r)), false));
            }
            for (rc, line) in rcpts.iter().zip(&lines) {
                match c.command(line).await {
                    Ok(r) if r.ok() => accepted.push(rc.clone()),
                    Ok(r) => results.push((rc.clone(), verdict(&r))),
                    Err(e) => return lost(e),
                }
            }
            if accepted.is_empty() {
                return Ok((results, false));
            }
            match c.command("DATA").await {
                Ok(r) => r,
                Err(e) => return lost(e),
            }
        };
        if r.code != 354 {
            results.extend(accepted.into_iter().map(|rc| (rc, verdict(&r))));
            return Ok((results, false));
        }
        let final_reply = match c.data(content).await {
            Ok(r) => r,
            Err(e) => {
                // No final reply: the server may or may not have the message; retrying may
                // duplicate it, giving up may lose it. RFC 5321 6.1: duplicate, not lose.
                let why = format!("451 4.4.2 {host}: no reply to the end of data: {e}");
                results.extend(
                    accepted
                        .into_iter()
                        .map(|rc| (rc, Attempt::Retry(why.clone(), 0))),
                );
                return Ok((results, false));
            }
        };
        let v = if final_reply.ok() {
            Attempt::Sent(final_reply.text())
        } else {
            verdict(&final_reply)
        };
        results.extend(accepted.into_iter().map(|rc| (rc, v.clone())));
        // 421: the server is closing the session.
        Ok((results, final_reply.code != 421))
    }
}

/// An idle connection's server: host, address, port, and how it was authenticated
/// ([`Auth::level`]).
type PoolKey = (String, IpAddr, u16, u8);

/// How a server is checked.
#[derive(Clone)]
enum Auth {
    /// STARTTLS when offered, any certificate.
    Opportunistic,
    /// STARTTLS required, any certificate; for this reason.
    Encrypted(&'static str),
    /// STARTTLS required, a certificate valid for the host name; for this reason
    /// (`mta-sts`, `requiretls`).
    Pkix(&'static str),
    /// STARTTLS required, a certificate matching the host's TLSA records (given as text,
    /// for TLS-RPT).
    Dane(Arc<rustls::ClientConfig>, Vec<String>),
}

impl Auth {
    /// Connections are pooled per level: 0 opportunistic, 1 encrypted, 2 PKIX, 3 DANE.
    fn level(&self) -> u8 {
        match self {
            Auth::Opportunistic => 0,
            Auth::Encrypted(_) => 1,
            Auth::Pkix(_) => 2,
            Auth::Dane(..) => 3,
        }
    }

    /// As the log shows it.
    fn name(&self) -> &'static str {
        match self {
            Auth::Opportunistic => "opportunistic",
            Auth::Encrypted(_) => "dane-unusable",
            Auth::Pkix(why) => why,
            Auth::Dane(..) => "dane",
        }
    }

    /// What requires TLS, if anything.
    fn required_by(&self) -> Option<String> {
        match self {
            Auth::Opportunistic => None,
            Auth::Encrypted(why) => Some((*why).to_string()),
            Auth::Pkix("mta-sts") => Some("the domain's MTA-STS policy".into()),
            Auth::Pkix(_) => Some("the message's REQUIRETLS".into()),
            Auth::Dane(..) => Some("DANE (the host's TLSA records)".into()),
        }
    }
}

/// Whether a message says `TLS-Required: No` (RFC 8689 5) in its header.
fn tls_required_no(content: &[u8]) -> bool {
    let end = memchr_header_end(content);
    let header = String::from_utf8_lossy(&content[..end]);
    let mut lines = header.split('\n').peekable();
    while let Some(line) = lines.next() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("TLS-Required") {
            continue;
        }
        // Unfold (RFC 5322 2.2.3).
        let mut value = value.trim().to_string();
        while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
            value.push_str(next.trim());
            lines.next();
        }
        return value.trim().eq_ignore_ascii_case("no");
    }
    false
}

/// Where the header section ends (after the blank line), or the whole message.
fn memchr_header_end(content: &[u8]) -> usize {
    content
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| content.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
        .unwrap_or(content.len())
}
/// An idle connection, since when, and how many messages it carried.
type Idle = (Client, std::time::Instant, u32);

/// How long a connection is kept idle for the next message to the same server (Postfix
/// keeps them 2 s by default; servers time idle sessions out after minutes).
const POOL_IDLE: Duration = Duration::from_secs(5);
/// How long deliveries under way may take to finish at shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);
/// Messages over one connection before it is closed (spreads load across MX addresses).
const POOL_MAX_USES: u32 = 100;
/// How often reports are looked at to see whether some are due.
const REPORTS_CHECK: Duration = Duration::from_secs(600);
/// How often a domain's MTA-STS record is checked again (the policy itself is cached for its
/// max_age).
const STS_RECHECK: Duration = Duration::from_secs(60);

/// A duration as people say it: `5 days`, `4 hours`, `30 minutes`, `4 seconds`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = match s {
        0..=119 => (s, "second"),
        120..=7199 => (s / 60, "minute"),
        7200..=172_799 => (s / 3600, "hour"),
        _ => (s / 86400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// A refusal: permanent for 5xx, else to be retried.
fn verdict(r: &Reply) -> Attempt {
    if r.permanent() {
        Attempt::Failed(r.text())
    } else {
        Attempt::Retry(r.text(), 0)
    }
}

/// Whether a recipient's NOTIFY asks for this kind of report (RFC 3461 4.1: without NOTIFY,
/// failures are reported and delays may be).
fn wants(r: &QueuedRcpt, what: &str) -> bool {
    match &r.recipient.notify {
        None => true,
        Some(n) => n.split(',').any(|x| x.trim().eq_ignore_ascii_case(what)),
    }
}

fn report(r: &QueuedRcpt, a: &Attempt, server: &Server) -> dsn::RcptReport {
    let diagnostic = match a {
        Attempt::Sent(t) | Attempt::Retry(t, _) | Attempt::Failed(t) => t.clone(),
    };
    dsn::RcptReport {
        recipient: r.recipient.address.clone(),
        orcpt: r.recipient.orcpt.clone(),
        remote_mta: server.as_ref().map(|(h, _)| h.clone()),
        diagnostic,
    }
}

/// RFC 3461 4: a DSN parameter (ENVID, ORCPT's address) smtp-proto decoded, as xtext again.
/// A character up to U+00FF is the byte it was decoded from (smtp-proto turns `+HH` into
/// U+00HH); others go as their UTF-8 bytes.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(b) if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' => out.push(c),
            Ok(b) => out.push_str(&format!("+{b:02X}")),
            Err(_) => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("+{b:02X}"));
                }
            }
        }
    }
    out
}

/// Sieve redirects to other domains (`Delivery::set_outbox`): forwarded like an alias's copy.
#[async_trait::async_trait]
impl mailkeep_delivery::Outbox for Outbound {
    async fn forward(
        &self,
        account: mailkeep_types::AccountId,
        sender: &str,
        domain: &str,
        recipients: &[String],
        data: &[u8],
        onward: &mailkeep_delivery::Onward,
    ) -> Result<(), String> {
        let now = now_secs();
        // RFC 5228 4.2: the envelope sender stays the original one; SRS keeps SPF passing.
        let sender = match self.srs_rewriter() {
            Some(srs) if !sender.is_empty() => srs.forward(sender, domain, srs::day(now)),
            _ => sender.to_string(),
        };
        let sender_ascii = sender.is_ascii();
        let queued = NewQueued {
            id: QueueId::new(now_micros() as u64, rand::random()).0,
            sender,
            blob: mailkeep_store::BlobId(String::new()),
            size: data.len() as u64,
            recipients: recipients
                .iter()
                .map(|a| QueueRecipient {
                    address: a.clone(),
                    notify: None,
                    orcpt: None,
                })
                .collect(),
            envid: None,
            ret: None,
            // RFC 6531: needed for non-ASCII addresses (an 8-bit body needs only 8BITMIME),
            // or for a message that came with SMTPUTF8.
            smtputf8: onward.smtputf8 || !sender_ascii || recipients.iter().any(|a| !a.is_ascii()),
            // RFC 8689 4.2.1: REQUIRETLS stays with the message at every hop.
            requiretls: onward.requiretls,
            // The user's script sends it: their hold applies, and it counts as theirs.
            account: Some(account),
            held: false,
        };
        Outbound::forward(self, queued, data)
            .await
            .map_err(|e| e.to_string())?;
        self.count(account, recipients).await;
        Ok(())
    }

    async fn reply(
        &self,
        account: mailkeep_types::AccountId,
        recipient: &str,
        data: &[u8],
    ) -> Result<(), String> {
        let queued = NewQueued {
            id: QueueId::new(now_micros() as u64, rand::random()).0,
            // RFC 3834 3.3: automatic responses go from the null sender.
            sender: String::new(),
            blob: mailkeep_store::BlobId(String::new()),
            size: data.len() as u64,
            recipients: vec![QueueRecipient {
                address: recipient.to_string(),
                notify: None,
                orcpt: None,
            }],
            envid: None,
            ret: None,
            smtputf8: !recipient.is_ascii(),
            requiretls: false,
            account: Some(account),
            held: false,
        };
        self.submit(queued, data).await.map_err(|e| e.to_string())?;
        self.count(account, &[recipient.to_string()]).await;
        Ok(())
    }

    async fn bounce(
        &self,
        queue_id: &str,
        sender: &str,
        failed: &[mailkeep_delivery::Bounced],
        original: &[u8],
        dsn: &mailkeep_delivery::DsnRequest,
        onward: &mailkeep_delivery::Onward,
    ) -> Result<(), String> {
        // The message as the report describes it: never queued here itself.
        let m = QueuedMessage {
            id: queue_id.to_string(),
            sender: sender.to_string(),
            blob: mailkeep_store::BlobId(String::new()),
            size: original.len() as u64,
            created: now_secs(),
            held: false,
            envid: dsn.envid.clone(),
            ret: dsn.headers_only.then(|| "HDRS".to_string()),
            smtputf8: onward.smtputf8,
            warned: false,
            requiretls: onward.requiretls,
            account: None,
            recipients: Vec::new(),
        };
        let reports: Vec<dsn::RcptReport> = failed
            .iter()
            .map(|b| dsn::RcptReport {
                recipient: b.recipient.clone(),
                orcpt: b.orcpt.clone(),
                remote_mta: None,
                diagnostic: b.reply.clone(),
            })
            .collect();
        self.notify_sender(&m, original, dsn::Kind::Failed, &reports)
            .await
    }
}

impl Outbound {
    /// Counts mail a user's Sieve script sent towards their outbound usage.
    async fn count(&self, account: mailkeep_types::AccountId, recipients: &[String]) {
        let keys: Vec<String> = recipients
            .iter()
            .filter_map(|r| Address::parse(r).ok().map(|a| a.key()))
            .collect();
        if let Err(e) = self.store.usage_record(account, now_secs(), &keys).await {
            tracing::warn!(error = %e, "recording a Sieve message's usage failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailkeep_config::Relay;
    use mailkeep_store::RcptStatus;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    /// A minimal SMTP server without PIPELINING, SMTPUTF8 or STARTTLS, SIZE 1000: takes
    /// `ok@` recipients, refuses the others with 550; records every command line.
    async fn fake_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let cmd = line.trim_end().to_string();
                        log.lock().unwrap().push(cmd.clone());
                        let up = cmd.to_ascii_uppercase();
                        let reply: &[u8] = if up.starts_with("EHLO") {
                            b"250-fake\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"
                        } else if up.starts_with("MAIL") || up.starts_with("RSET") {
                            b"250 2.1.0 ok\r\n"
                        } else if up.starts_with("RCPT TO:<OK@") {
                            b"250 2.1.5 ok\r\n"
                        } else if up.starts_with("RCPT") {
                            b"550 5.1.1 no such user\r\n"
                        } else if up == "DATA" {
                            w.write_all(b"354 go\r\n").await.unwrap();
                            let mut data = Vec::new();
                            while !data.ends_with(b"\r\n.\r\n") {
                                let mut b = [0u8; 1];
                                if r.read_exact(&mut b).await.is_err() {
                                    return;
                                }
                                data.push(b[0]);
                            }
                            b"250 2.0.0 queued\r\n"
                        } else if up == "QUIT" {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"500 what\r\n"
                        };
                        w.write_all(reply).await.unwrap();
                    }
                });
            }
        });
        (addr, seen)
    }

    async fn outbound(relay: SocketAddr) -> (Arc<Outbound>, SharedStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore =
            Arc::new(mailkeep_store_sqlite::SqliteStore::open(dir.path()).unwrap());
        let config = QueueConfig {
            lifetime: Duration::from_secs(3600),
            retry_first: Duration::from_secs(60),
            retry_max: Duration::from_secs(600),
            delay_warning: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            concurrency: 4,
            destination_concurrency: 4,
            port: 25,
            relay: Some(Relay {
                host: relay.ip().to_string(),
                port: relay.port(),
                tls: RelayTls::None,
                verify_certificate: false,
                credentials: None,
            }),
            dane: true,
            mta_sts: true,
            mta_sts_port: 443,
            ca_file: None,
        };
        let out = Outbound::new(
            store.clone(),
            Delivery::new(store.clone(), Some('+')),
            mailkeep_net::resolver(&[], Duration::from_secs(1)).unwrap(),
            dnssec::SecureDns::new(&[], Duration::from_secs(1)),
            "mail.example.test".into(),
            config,
            dkim::DkimKeys::default(),
        )
        .unwrap();
        (Arc::new(out), store, dir)
    }

    async fn queue(store: &SharedStore, id: &str, body: &[u8], to: &[&str], utf8: bool) {
        let blob = store.put_blob(body).await.unwrap();
        let recipients = to
            .iter()
            .map(|a| QueueRecipient {
                address: a.to_string(),
                notify: None,
                orcpt: None,
            })
            .collect();
        let m = NewQueued {
            id: id.into(),
            sender: "a@example.test".into(),
            blob,
            size: body.len() as u64,
            recipients,
            envid: None,
            ret: None,
            smtputf8: utf8,
            requiretls: false,
            account: None,
            held: false,
        };
        store.queue_insert(m, now_secs()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_command_at_a_time_without_pipelining_and_refusals_before_mail() {
        let (addr, seen) = fake_server().await;
        let (out, store, _dir) = outbound(addr).await;
        let body = b"From: a@example.test\r\nSubject: x\r\n\r\n.dot\r\n";
        queue(&store, "Q1", body, &["ok@x.test", "bad@x.test"], false).await;
        out.deliver_message("Q1").await;
        // One sent, one refused for good: the message left the queue, a bounce took its place
        // (with a null sender, for the sender's remote domain).
        assert!(store.queue_get("Q1").await.unwrap().is_none());
        let left = store.queue_list().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].sender, "");
        assert_eq!(left[0].recipients[0].recipient.address, "a@example.test");
        let cmds = seen.lock().unwrap().clone();
        let verbs: Vec<&str> = cmds
            .iter()
            .map(|c| c.split([' ', ':']).next().unwrap_or(""))
            .filter(|v| matches!(*v, "MAIL" | "RCPT" | "DATA"))
            .collect();
        assert_eq!(verbs, vec!["MAIL", "RCPT", "RCPT", "DATA"], "{cmds:?}");
        assert!(cmds
            .iter()
            .any(|c| c.starts_with("MAIL FROM:<a@example.test> SIZE=")));

        // Over the server's SIZE: refused before MAIL, for good.
        let big = vec![b'x'; 2000];
        queue(&store, "Q2", &big, &["ok@x.test"], false).await;
        let before = seen.lock().unwrap().len();
        out.deliver_message("Q2").await;
        assert!(
            store.queue_get("Q2").await.unwrap().is_none(),
            "failed: gone"
        );
        // Needs SMTPUTF8, which the server lacks: refused the same way.
        queue(&store, "Q3", body, &["ok@x.test"], true).await;
        out.deliver_message("Q3").await;
        assert!(store.queue_get("Q3").await.unwrap().is_none());
        let after: Vec<String> = seen.lock().unwrap()[before..].to_vec();
        assert!(!after.iter().any(|c| c.starts_with("MAIL")), "{after:?}");
        // Their bounces say why.
        let bounces: Vec<String> = {
            let mut v = Vec::new();
            for m in store.queue_list().await.unwrap() {
                let data = store.get_blob(&m.blob).await.unwrap().unwrap();
                v.push(String::from_utf8_lossy(&data).into_owned());
            }
            v
        };
        assert!(
            bounces.iter().any(|b| b.contains("552 5.3.4")),
            "{bounces:?}"
        );
        assert!(
            bounces.iter().any(|b| b.contains("553 5.6.7")),
            "{bounces:?}"
        );
        let statuses: Vec<RcptStatus> = store
            .queue_list()
            .await
            .unwrap()
            .iter()
            .map(|m| m.recipients[0].status)
            .collect();
        assert!(statuses.iter().all(|s| *s == RcptStatus::Pending));
    }
}
