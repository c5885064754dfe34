//! Local delivery: the one path from an accepted message to the mailboxes, used by SMTP, by
//! `mailkeep deliver` and (later) by import and Sieve.
//!
//! Implementation notes:
//! - The message content is written once as a blob, whatever the number of recipients; each
//!   recipient gets a prefix with its own Return-Path and Delivered-To (RFC 5321 4.4, RFC 9228).
//! - [`Delivery::deliver`] returns only after the store has committed: a caller may answer 250.
//! - Every outcome becomes a `delivery.stored` log event under the caller's session and queue
//!   id; the caller writes them with its own events (the SMTP session does so after its reply
//!   is on the wire, so the log never delays a 250).
#![warn(missing_docs)]

pub mod ingest;
pub mod learn;
pub mod sieve;
pub mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mailkeep_store::directory::{resolve, LocalTarget, Resolution};
use mailkeep_store::{LogEvent, NewMessage, SharedStore, StoreError, Stored, Target};
use mailkeep_types::{AccountId, Address, MailboxRole};

/// Errors of a delivery as a whole.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The store failed; nothing was delivered and the sender should retry.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// A message to deliver.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The message as it will be stored (trace headers already added).
    pub data: Vec<u8>,
    /// The envelope sender (empty for the null sender).
    pub return_path: String,
    /// Local recipients, already resolved.
    pub recipients: Vec<LocalTarget>,
    /// The transaction's queue id.
    pub queue_id: String,
    /// The session (or origin) id for the log.
    pub session: String,
    /// Client IP, for the log.
    pub client_ip: Option<String>,
    /// Where it goes: INBOX, or Junk (INBOX when the account has no Junk mailbox).
    pub mailbox: MailboxRole,
    /// Per account, where it goes instead and header fields that account's copy gets on
    /// top (after Return-Path and Delivered-To): that user's spam verdict.
    pub placements: HashMap<AccountId, Placement>,
    /// The virus scanner found it clean (for Sieve's virustest).
    pub virus_clean: bool,
    /// The caller can still refuse the message (an SMTP session before its reply, `mailkeep
    /// deliver`): when every recipient's script rejects it, nothing is stored and
    /// [`Delivered::rejected`] says why. Otherwise each rejecting recipient's refusal goes
    /// to the sender as a bounce (RFC 5429 2.1).
    pub refusable: bool,
    /// What copies sent on to other domains (Sieve redirects) carry, and whether they may
    /// be sent at all.
    pub onward: Onward,
    /// What the sender asked of delivery status notifications, for the bounces delivery
    /// sends itself.
    pub dsn: DsnRequest,
}

/// What the sender asked of delivery status notifications (RFC 3461).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DsnRequest {
    /// ENVID (RFC 3461 4.4).
    pub envid: Option<String>,
    /// RET=HDRS (RFC 3461 4.3): a bounce returns only the header.
    pub headers_only: bool,
    /// Per local account: how the sender named it and what it asked.
    pub recipients: HashMap<AccountId, DsnRecipient>,
}

/// One recipient as the sender gave it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DsnRecipient {
    /// The address in RCPT TO (an alias, a sub-address), which a bounce names.
    pub address: String,
    /// ORCPT (`rfc822;` and xtext), if given.
    pub orcpt: Option<String>,
    /// NOTIFY (`NEVER`, or a list of SUCCESS, FAILURE, DELAY), if given.
    pub notify: Option<String>,
}

/// A recipient a bounce is about.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounced {
    /// The recipient as the sender named it.
    pub recipient: String,
    /// Its ORCPT.
    pub orcpt: Option<String>,
    /// Why (an SMTP reply: code, enhanced code, text).
    pub reply: String,
}

/// What the receiving side decided about sending the message on to other domains.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Onward {
    /// The ARC set (RFC 8617 5.1) to put on top of copies sent elsewhere, sealed by the
    /// forwarding domain over the message as it came.
    pub arc_set: Option<String>,
    /// Why no copy may go to another domain (it looks like spam; it claims one of our
    /// domains and failed DMARC): the same refusals as an alias's forwarding.
    pub refused: Option<String>,
    /// The message needs SMTPUTF8 (RFC 6531) onwards.
    pub smtputf8: bool,
    /// The sender asked for REQUIRETLS (RFC 8689): every hop must keep it.
    pub requiretls: bool,
}

/// Where one account's copy goes and what it gets besides the shared message.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// INBOX or Junk.
    pub mailbox: MailboxRole,
    /// Header fields (CRLF-terminated) for this copy alone.
    pub fields: String,
    /// The spam filter's score of this copy (for Sieve's spamtest).
    pub spam_score: Option<f64>,
}

/// What happened for one recipient.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The recipient.
    pub target: LocalTarget,
    /// Where it was stored (the first copy; None: discarded or rejected by the recipient's
    /// Sieve script), or why not.
    pub result: Result<Option<Stored>, String>,
}

/// The result of a delivery: per-recipient outcomes and the log events describing them.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// One per recipient.
    pub outcomes: Vec<Outcome>,
    /// `delivery.stored` events for the delivery log.
    pub events: Vec<LogEvent>,
    /// The Message-ID found at ingest, without angle brackets.
    pub message_id: Option<String>,
    /// Every recipient's Sieve script rejected the message (RFC 5429): nothing was stored;
    /// the reason.
    pub rejected: Option<String>,
}

/// Microseconds since the epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Mail that delivery itself sends on (a Sieve `redirect` to another domain): handed to
/// the outbound queue, which implements this.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync {
    /// Queues `data` to `recipients` as mail forwarded by `domain` (its envelope sender
    /// `sender` rewritten with SRS, never signed by us), durably.
    /// `account` is the user whose script sends it: its hold and usage apply.
    /// `onward` says which SMTP extensions the copy needs (its ARC set is already on top).
    async fn forward(
        &self,
        account: AccountId,
        sender: &str,
        domain: &str,
        recipients: &[String],
        data: &[u8],
        onward: &Onward,
    ) -> Result<(), String>;
    /// Queues an automatic reply of ours (a vacation reply) to `recipient` for `account`:
    /// from the null sender (RFC 3834 3.3), DKIM-signed for its From: domain like
    /// submitted mail.
    async fn reply(&self, account: AccountId, recipient: &str, data: &[u8]) -> Result<(), String>;
    /// Sends `sender` a delivery status notification (RFC 3464, from the null sender) that
    /// the message `original` (queue id `queue_id`) failed for good for `failed`: a Sieve
    /// `reject` the SMTP session could no longer refuse (RFC 5429 2.1), with what the
    /// sender asked (`dsn`). Durable once it returns Ok.
    async fn bounce(
        &self,
        queue_id: &str,
        sender: &str,
        failed: &[Bounced],
        original: &[u8],
        dsn: &DsnRequest,
        onward: &Onward,
    ) -> Result<(), String>;
}

/// The delivery service.
#[derive(Clone)]
pub struct Delivery {
    store: SharedStore,
    plus_separator: Option<char>,
    sieve: Arc<std::sync::RwLock<sieve::Settings>>,
    /// The outbound queue, once it exists (it is built on this service).
    outbox: Arc<std::sync::OnceLock<Arc<dyn Outbox>>>,
    /// Our host name (Message-IDs of Sieve's replies).
    hostname: Arc<std::sync::OnceLock<String>>,
}

impl Delivery {
    /// A delivery service over a store.
    pub fn new(store: SharedStore, plus_separator: Option<char>) -> Delivery {
        Delivery {
            store,
            plus_separator,
            sieve: Arc::new(std::sync::RwLock::new(sieve::Settings::default())),
            outbox: Arc::new(std::sync::OnceLock::new()),
            hostname: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Where redirects to other domains go (every clone of this service shares it).
    pub fn set_outbox(&self, outbox: Arc<dyn Outbox>) {
        let _ = self.outbox.set(outbox);
    }

    /// Sieve's limits and global scripts (every clone shares them; a reload may change
    /// them).
    pub fn set_sieve(&self, settings: sieve::Settings) {
        if let Ok(mut s) = self.sieve.write() {
            *s = settings;
        }
    }

    /// Our host name, for what delivery writes (every clone shares it).
    pub fn set_hostname(&self, hostname: String) {
        let _ = self.hostname.set(hostname);
    }

    /// The store.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The sub-address separator (`user+tag@`), if plus-addressing is on.
    pub fn plus_separator(&self) -> Option<char> {
        self.plus_separator
    }

    /// Which of these accounts (an index) has Sieve scripts that might send a message on:
    /// the admin's global scripts or the account's active one name `redirect` (or include
    /// another script, which might). The SMTP session then has the message ARC-sealed for
    /// the copies a redirect sends elsewhere; a false positive costs one signature. A global
    /// script that cannot be read counts as not redirecting (its include fails at delivery
    /// and keeps the message).
    pub async fn may_redirect(&self, accounts: &[AccountId]) -> Option<usize> {
        if accounts.is_empty() {
            return None;
        }
        let names = |text: &str| {
            let t = text.to_ascii_lowercase();
            t.contains("redirect") || t.contains("include")
        };
        let global: Vec<std::path::PathBuf> = match self.sieve.read() {
            Ok(s) => s
                .before
                .iter()
                .chain(&s.after)
                .map(|n| s.global_dir.join(format!("{n}.sieve")))
                .collect(),
            Err(_) => Vec::new(),
        };
        for path in global {
            if tokio::fs::read_to_string(path)
                .await
                .is_ok_and(|t| names(&t))
            {
                return Some(0);
            }
        }
        for (i, account) in accounts.iter().enumerate() {
            match self.store.sieve_active(*account).await {
                Ok(Some((_, script))) if names(&script) => return Some(i),
                Ok(_) => {}
                Err(_) => return Some(i),
            }
        }
        None
    }

    /// Resolves a recipient through the directory.
    pub async fn resolve(&self, address: &Address) -> Result<Resolution, DeliveryError> {
        Ok(resolve(self.store.as_ref(), address, self.plus_separator).await?)
    }

    /// Stores the message for every recipient; returns once it is durable. Each
    /// recipient's active Sieve script decides where their copy goes ([`sieve`]); when
    /// every recipient's script rejects the message, nothing is stored and
    /// [`Delivered::rejected`] says why.
    pub async fn deliver(&self, msg: Incoming) -> Result<Delivered, DeliveryError> {
        let budget = Arc::new(std::sync::atomic::AtomicUsize::new(MAX_REDIRECTS));
        self.deliver_with(msg, budget).await
    }

    /// [`Delivery::deliver`], with what is left of the message's redirect budget (shared
    /// by every delivery a redirect of it leads to).
    async fn deliver_with(
        &self,
        msg: Incoming,
        budget: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Result<Delivered, DeliveryError> {
        let cache = ingest::parse_cache(&msg.data);
        let internal_date = now_micros() / 1_000_000;
        // Each recipient's plan: the copies to store and what Sieve did.
        let mut plans = Vec::with_capacity(msg.recipients.len());
        for t in &msg.recipients {
            // RFC 5321 4.4: Return-Path; RFC 9228: Delivered-To names the final mailbox.
            let placement = msg.placements.get(&t.account);
            let prefix = format!(
                "Return-Path: <{}>\r\nDelivered-To: {}\r\n{}",
                msg.return_path,
                t.address,
                placement.map(|p| p.fields.as_str()).unwrap_or("")
            );
            let default = placement.map(|p| p.mailbox).unwrap_or(msg.mailbox);
            let plan = self.plan(t, &prefix, &msg, default).await;
            plans.push((prefix, plan));
        }
        // RFC 5429 2.1: a refusal at the SMTP level when every recipient refuses and the
        // caller can still refuse.
        let all_reject = !plans.is_empty() && plans.iter().all(|(_, p)| p.reject.is_some());
        if all_reject && msg.refusable {
            let reason = plans
                .iter()
                .find_map(|(_, p)| p.reject.clone())
                .unwrap_or_default();
            let mut events = Vec::new();
            let mut outcomes = Vec::new();
            for (t, (_, plan)) in msg.recipients.iter().zip(&plans) {
                events.push(self.sieve_event(&msg, t, &cache, plan, "rejected"));
                outcomes.push(Outcome {
                    target: t.clone(),
                    result: Ok(None),
                });
            }
            return Ok(Delivered {
                outcomes,
                events,
                message_id: cache.message_id,
                rejected: Some(reason),
            });
        }
        // Otherwise (RFC 5429 2.1.2) each rejecting recipient's refusal reaches the sender
        // as a bounce, once the other copies are stored. None to the null sender (RFC 5429
        // 2.1, RFC 3834 2), to a sender whose NOTIFY leaves failures out (RFC 3461 4.1), or
        // for mail we would not send on (spam, a forgery of our domains): no backscatter to
        // forged senders. Those are dropped for that recipient, as Pigeonhole does.
        let mut bounces: Vec<(usize, Bounced)> = Vec::new();
        for (i, (t, (_, plan))) in msg.recipients.iter().zip(plans.iter_mut()).enumerate() {
            let Some(reason) = plan.reject.take() else {
                continue;
            };
            plan.bounced = true;
            let reason: String = reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(200)
                .collect();
            let asked = msg.dsn.recipients.get(&t.account);
            let wants = asked
                .and_then(|r| r.notify.as_deref())
                .is_none_or(|n| n.to_ascii_uppercase().contains("FAILURE"));
            let silent = if msg.return_path.is_empty() {
                Some("the null sender".to_string())
            } else if !wants {
                Some("the sender's NOTIFY asks for no bounce".to_string())
            } else {
                msg.onward
                    .refused
                    .as_ref()
                    .map(|why| format!("no bounce for such mail ({why})"))
            };
            match silent {
                Some(why) => plan.actions.push(format!("rejected: {why}; dropped")),
                None => bounces.push((
                    i,
                    Bounced {
                        recipient: asked
                            .map(|r| r.address.clone())
                            .unwrap_or_else(|| t.address.clone()),
                        orcpt: asked.and_then(|r| r.orcpt.clone()),
                        reply: format!("550 5.7.1 Rejected by the recipient's filter: {reason}"),
                    },
                )),
            }
        }
        let results = match self.store_copies(&msg, &plans, &cache, internal_date).await {
            Ok(r) => r,
            Err(e) => {
                // Nothing stored: the sender retries, and what the scripts' vacation and
                // duplicate recorded for this delivery must not make the retry "seen".
                for (t, (_, plan)) in msg.recipients.iter().zip(&plans) {
                    if !plan.recorded.is_empty() {
                        if let Err(e) = self.store.sieve_unsee(t.account, &plan.recorded).await {
                            tracing::warn!(account = t.account.0, error = %e, "forgetting Sieve ids failed");
                        }
                    }
                }
                return Err(e.into());
            }
        };
        let owner: Vec<usize> = msg
            .recipients
            .iter()
            .zip(&plans)
            .enumerate()
            .flat_map(|(i, (_, (_, p)))| std::iter::repeat_n(i, p.copies.len()))
            .collect();
        let mut per: Vec<Vec<Result<Stored, StoreError>>> =
            (0..msg.recipients.len()).map(|_| Vec::new()).collect();
        for (i, r) in owner.into_iter().zip(results) {
            if let Some(v) = per.get_mut(i) {
                v.push(r);
            }
        }
        // Then what goes elsewhere, so that a retry after a failed store does not send it
        // twice: redirects (RFC 5228 4.2) and the bounce. What cannot be done keeps the
        // message instead, in a second batch.
        let mut keep = vec![false; msg.recipients.len()];
        let mut events = Vec::new();
        for (i, (t, (_, plan))) in msg.recipients.iter().zip(plans.iter_mut()).enumerate() {
            for to in std::mem::take(&mut plan.redirects) {
                match self.redirect(t, &msg, &to, &budget).await {
                    Ok(more) => {
                        plan.actions.push(format!("redirected to {to}"));
                        events.extend(more);
                    }
                    Err(e) => {
                        plan.actions
                            .push(format!("redirect {to:?} failed: {e}; kept"));
                        keep[i] = true;
                    }
                }
            }
        }
        if !bounces.is_empty() {
            let failed: Vec<Bounced> = bounces.iter().map(|(_, b)| b.clone()).collect();
            let sent = match self.outbox.get() {
                None => Err("no outbound queue here".to_string()),
                Some(outbox) => {
                    outbox
                        .bounce(
                            &msg.queue_id,
                            &msg.return_path,
                            &failed,
                            &msg.data,
                            &msg.dsn,
                            &msg.onward,
                        )
                        .await
                }
            };
            for (i, _) in &bounces {
                let Some((_, plan)) = plans.get_mut(*i) else {
                    continue;
                };
                match &sent {
                    Ok(()) => plan
                        .actions
                        .push(format!("rejected: bounce sent to {}", msg.return_path)),
                    Err(e) => {
                        plan.actions.push(format!(
                            "reject failed: the bounce could not be sent ({e}); kept"
                        ));
                        plan.bounced = false;
                        if let Some(k) = keep.get_mut(*i) {
                            *k = true;
                        }
                    }
                }
            }
        }
        // The kept copies: one in the recipient's default mailbox, unless one is there.
        let mut second: Vec<(String, Plan)> = Vec::new();
        for (i, (prefix, plan)) in plans.iter().enumerate() {
            let default = Target::Role(plan.default);
            let needed = keep.get(i).copied().unwrap_or(false)
                && !plan
                    .copies
                    .iter()
                    .any(|(x, _, e)| *x == default && e.is_none());
            second.push((
                prefix.clone(),
                Plan {
                    copies: if needed {
                        vec![(default, Vec::new(), None)]
                    } else {
                        Vec::new()
                    },
                    ..Plan::keep(plan.default)
                },
            ));
        }
        if second.iter().any(|(_, p)| !p.copies.is_empty()) {
            // A failure now must not lose these copies: the sender is told to retry, and
            // the copies stored already come again (a duplicate, not a loss).
            let results = self
                .store_copies(&msg, &second, &cache, internal_date)
                .await?;
            let owner = second
                .iter()
                .enumerate()
                .flat_map(|(i, (_, p))| std::iter::repeat_n(i, p.copies.len()));
            for (i, r) in owner.zip(results) {
                if let Some(v) = per.get_mut(i) {
                    v.push(r);
                }
            }
        }
        let mut outcomes = Vec::with_capacity(msg.recipients.len());
        for ((t, (_, plan)), rs) in msg.recipients.iter().zip(&plans).zip(per) {
            if plan.scripted {
                events.push(self.sieve_event(&msg, t, &cache, plan, "accepted"));
            }
            if rs.is_empty() {
                // Discarded or rejected by the recipient's script.
                let outcome = if plan.bounced {
                    "rejected"
                } else {
                    "discarded"
                };
                events.push(self.stored_event(&msg, t, &cache, outcome, serde_json::json!({})));
                outcomes.push(Outcome {
                    target: t.clone(),
                    result: Ok(None),
                });
                continue;
            }
            let mut first: Option<Result<Stored, String>> = None;
            for r in rs {
                let (outcome, detail) = match &r {
                    Ok(s) => (
                        "delivered",
                        serde_json_detail(&[
                            ("mailbox", s.mailbox.0.to_string()),
                            ("uid", s.uid.0.to_string()),
                            ("modseq", s.modseq.0.to_string()),
                            ("size", (msg.data.len()).to_string()),
                        ]),
                    ),
                    Err(e) => ("failed", serde_json_detail(&[("error", e.to_string())])),
                };
                events.push(self.stored_event(&msg, t, &cache, outcome, detail));
                let r = r.map_err(|e| e.to_string());
                if first.as_ref().is_none_or(|f| f.is_err() && r.is_ok()) {
                    first = Some(r);
                }
            }
            outcomes.push(Outcome {
                target: t.clone(),
                result: first
                    .unwrap_or_else(|| Err("nothing stored".into()))
                    .map(Some),
            });
        }
        // Vacation replies, once the message is stored (their fate does not change it).
        for (t, (_, plan)) in msg.recipients.iter().zip(plans.iter_mut()) {
            for (to, reply, what) in std::mem::take(&mut plan.replies) {
                let note = match self.send_reply(t.account, &to, reply, &msg).await {
                    Ok(more) => {
                        events.extend(more);
                        format!("{what} sent to {to}")
                    }
                    Err(e) => format!("{what} to {to} failed: {e}"),
                };
                let mut ev = self.sieve_event(&msg, t, &cache, plan, "accepted");
                ev.detail = serde_json::json!({ "script": plan.script, "actions": [note] });
                events.push(ev);
            }
        }
        Ok(Delivered {
            outcomes,
            events,
            message_id: cache.message_id,
            rejected: None,
        })
    }

    /// Stores every planned copy (one blob for the message, one per edited copy) in one
    /// batch: per copy, in plan order, where it went or why not.
    async fn store_copies(
        &self,
        msg: &Incoming,
        plans: &[(String, Plan)],
        cache: &mailkeep_store::MessageCache,
        internal_date: i64,
    ) -> Result<Vec<Result<Stored, StoreError>>, StoreError> {
        let blob = self.store.put_blob(&msg.data).await?;
        let mut batch = Vec::new();
        for (t, (prefix, plan)) in msg.recipients.iter().zip(plans) {
            for (target, flags, edited) in &plan.copies {
                match edited {
                    // Changed by editheader: the whole copy as the script left it (its
                    // prefix included), a blob of its own.
                    Some(data) => {
                        let own = ingest::parse_cache(data);
                        batch.push(NewMessage {
                            account: t.account,
                            target: *target,
                            blob: self.store.put_blob(data).await?,
                            blob_size: data.len() as u64,
                            prefix: Vec::new(),
                            headers: data[..(own.header_size as usize).min(data.len())].to_vec(),
                            flags: flags.clone(),
                            internal_date,
                            cache: own,
                            queue_id: Some(msg.queue_id.clone()),
                        });
                    }
                    None => batch.push(NewMessage {
                        account: t.account,
                        target: *target,
                        blob: blob.clone(),
                        blob_size: msg.data.len() as u64,
                        prefix: prefix.clone().into_bytes(),
                        headers: msg.data[..(cache.header_size as usize).min(msg.data.len())]
                            .to_vec(),
                        flags: flags.clone(),
                        internal_date,
                        cache: cache.clone(),
                        queue_id: Some(msg.queue_id.clone()),
                    }),
                }
            }
        }
        self.store.deliver(batch).await
    }

    /// Sends a reply a script made: delivered here when `to` is one of our users, else
    /// through the queue (null sender, signed). The log events of a local delivery.
    fn send_reply<'a>(
        &'a self,
        account: AccountId,
        to: &'a str,
        data: Vec<u8>,
        msg: &'a Incoming,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<LogEvent>, String>> + Send + 'a>,
    > {
        Box::pin(async move {
            let address = Address::parse(to).map_err(|e| format!("bad address: {e}"))?;
            match self.resolve(&address).await.map_err(|e| e.to_string())? {
                Resolution::Targets { local, .. } if !local.is_empty() => {
                    let delivered = self
                        .deliver(Incoming {
                            data,
                            return_path: String::new(),
                            recipients: local,
                            queue_id: msg.queue_id.clone(),
                            session: msg.session.clone(),
                            client_ip: None,
                            mailbox: MailboxRole::Inbox,
                            placements: HashMap::new(),
                            virus_clean: msg.virus_clean,
                            refusable: false,
                            onward: Onward::default(),
                            dsn: DsnRequest::default(),
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(delivered.events)
                }
                Resolution::NotLocal => {
                    let outbox = self
                        .outbox
                        .get()
                        .ok_or_else(|| "no outbound queue here".to_string())?;
                    outbox.reply(account, to, &data).await?;
                    Ok(Vec::new())
                }
                _ => Err("no such recipient".into()),
            }
        })
    }

    /// Sends the message on to `to` for the recipient `t` (a Sieve redirect): delivered
    /// here when `to` is one of ours, else forwarded through the queue with an SRS sender
    /// of `t`'s domain. The copy carries `t`'s Delivered-To, by which loops are caught
    /// (as Postfix and Dovecot do): a message already delivered to `to` is not sent there
    /// again. Returns the local delivery's log events.
    fn redirect<'a>(
        &'a self,
        t: &'a LocalTarget,
        msg: &'a Incoming,
        to: &'a str,
        budget: &'a Arc<std::sync::atomic::AtomicUsize>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<LogEvent>, String>> + Send + 'a>,
    > {
        Box::pin(async move {
            let address = Address::parse(to).map_err(|e| format!("bad address: {e}"))?;
            let head = &msg.data[..ingest::header_len(&msg.data).min(msg.data.len())];
            let head = String::from_utf8_lossy(head).to_ascii_lowercase();
            let seen = |who: &str| {
                head.contains(&format!("\ndelivered-to: {}\r\n", who.to_ascii_lowercase()))
                    || head.starts_with(&format!("delivered-to: {}\r\n", who.to_ascii_lowercase()))
            };
            if seen(&address.key()) || seen(to) {
                return Err(format!("a loop: the message was delivered to {to} before"));
            }
            if head.matches("delivered-to:").count() >= MAX_HOPS {
                return Err(format!("more than {MAX_HOPS} deliveries: a loop"));
            }
            // However scripts fan out, one message makes at most MAX_REDIRECTS redirects.
            let left = budget.fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            );
            if left.is_err() {
                return Err(format!(
                    "more than {MAX_REDIRECTS} redirects for one message"
                ));
            }
            let mut data = format!("Delivered-To: {}\r\n", t.address).into_bytes();
            data.extend_from_slice(&msg.data);
            let resolution = self.resolve(&address).await.map_err(|e| e.to_string())?;
            match resolution {
                Resolution::Targets { local, external }
                    if external.is_empty() && !local.is_empty() =>
                {
                    // Accounts the message reached already (by any address of theirs: a
                    // sub-address, an alias) do not get it again.
                    let local: Vec<LocalTarget> = local
                        .into_iter()
                        .filter(|l| {
                            !l.address.eq_ignore_ascii_case(&t.address) && !seen(&l.address)
                        })
                        .collect();
                    if local.is_empty() {
                        return Err(format!("a loop: {to} leads back to where the message was"));
                    }
                    // RFC 3463 4.2.2: a full mailbox does not take it (as at RCPT).
                    let size = data.len() as u64;
                    let local: Vec<LocalTarget> =
                        local.into_iter().filter(|l| !l.over_quota(size)).collect();
                    if local.is_empty() {
                        return Err(format!("{to}: the mailbox is full"));
                    }
                    let delivered = self
                        .deliver_with(
                            Incoming {
                                data,
                                return_path: msg.return_path.clone(),
                                recipients: local,
                                queue_id: msg.queue_id.clone(),
                                session: msg.session.clone(),
                                client_ip: msg.client_ip.clone(),
                                // Where the redirecting user's copy went (Junk for spam, a
                                // DMARC quarantine, a listed client) goes along.
                                mailbox: msg
                                    .placements
                                    .get(&t.account)
                                    .map(|p| p.mailbox)
                                    .unwrap_or(msg.mailbox),
                                placements: HashMap::new(),
                                virus_clean: msg.virus_clean,
                                refusable: true,
                                onward: msg.onward.clone(),
                                dsn: DsnRequest::default(),
                            },
                            budget.clone(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    if let Some(r) = delivered.rejected {
                        return Err(format!("rejected there: {r}"));
                    }
                    if !delivered.outcomes.iter().any(|o| o.result.is_ok()) {
                        return Err("it could not be stored there".into());
                    }
                    Ok(delivered.events)
                }
                Resolution::NotLocal => {
                    // What an alias would not forward, a script does not either.
                    if let Some(why) = &msg.onward.refused {
                        return Err(format!("not sent to another domain: {why}"));
                    }
                    let outbox = self
                        .outbox
                        .get()
                        .ok_or_else(|| "no outbound queue here".to_string())?;
                    let domain = t.address.rsplit_once('@').map(|x| x.1).unwrap_or("");
                    // RFC 8617 5.1: our ARC set goes on top (its signatures cover neither
                    // the trace fields we added nor the Delivered-To).
                    let data = match &msg.onward.arc_set {
                        Some(set) => {
                            let mut sealed = set.clone().into_bytes();
                            sealed.extend_from_slice(&data);
                            sealed
                        }
                        None => data,
                    };
                    outbox
                        .forward(
                            t.account,
                            &msg.return_path,
                            domain,
                            &[address.to_string()],
                            &data,
                            &msg.onward,
                        )
                        .await?;
                    Ok(Vec::new())
                }
                Resolution::Targets { .. } => {
                    Err("an alias with targets elsewhere: redirect to them directly".into())
                }
                Resolution::Unknown => Err("no such user here".into()),
                Resolution::TooDeep => Err("alias expansion too deep".into()),
            }
        })
    }

    /// Where one recipient's copy goes: by their active Sieve script, else `default`.
    async fn plan(
        &self,
        t: &LocalTarget,
        prefix: &str,
        msg: &Incoming,
        default: MailboxRole,
    ) -> Plan {
        let keep = Plan::keep(default);
        let settings = match self.sieve.read() {
            Ok(s) => s.clone(),
            Err(_) => return keep,
        };
        let active = match self.store.sieve_active(t.account).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(account = t.account.0, error = %e, "reading the Sieve script failed; keeping the message");
                return keep;
            }
        };
        // The admin's global scripts wrap the user's (or run alone).
        let user_name = active.as_ref().map(|a| a.0.clone()).unwrap_or_default();
        let (name, script) = match sieve::wrapper(&user_name, &settings.before, &settings.after) {
            Some(w) => (format!("global + {user_name}"), w),
            None => match active {
                Some(a) => a,
                None => return keep,
            },
        };
        let boxes = match self.store.mailboxes(t.account).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(account = t.account.0, error = %e, "reading mailboxes failed; keeping the message");
                return keep;
            }
        };
        let names: Vec<String> = boxes.iter().map(|b| b.name.clone()).collect();
        // The script sees the copy as the recipient will (their trace and spam fields).
        let mut full = prefix.as_bytes().to_vec();
        full.extend_from_slice(&msg.data);
        // The envelope recipient as sent: with its sub-address (RFC 5233 `:detail`).
        let to = match (&t.tag, self.plus_separator, t.address.rsplit_once('@')) {
            (Some(tag), Some(sep), Some((local, domain))) => format!("{local}{sep}{tag}@{domain}"),
            _ => t.address.clone(),
        };
        let (from, limits) = (msg.return_path.clone(), settings.limits);
        let spam_score = msg.placements.get(&t.account).and_then(|p| p.spam_score);
        let virus_clean = msg.virus_clean;
        let global_dir = settings.global_dir.clone();
        let (store, account, user) = (self.store.clone(), t.account, t.address.clone());
        let hostname = self
            .hostname
            .get()
            .cloned()
            .unwrap_or_else(|| "localhost".into());
        let handle = tokio::runtime::Handle::current();
        let decided = tokio::task::spawn_blocking(move || {
            // Vacation's and duplicate's memory (a store failure counts as seen: better no
            // reply than one every time). What this run records is noted, to be forgotten
            // if the delivery fails.
            let recorded = std::sync::Mutex::new(Vec::new());
            let seen = |id: &str, expiry: u64| {
                let now = now_micros() / 1_000_000;
                let expiry = i64::try_from(expiry).unwrap_or(i64::MAX);
                // RFC 5230 4.1: a period of at least an hour for vacation.
                let expiry = if id.starts_with("_v") {
                    expiry.max(3600)
                } else {
                    expiry
                };
                match handle.block_on(store.sieve_seen(account, id, now, expiry)) {
                    Ok(true) => true,
                    Ok(false) => {
                        if let Ok(mut r) = recorded.lock() {
                            r.push(id.to_string());
                        }
                        false
                    }
                    // Unknown: no vacation reply (no storm), but no duplicate either (a
                    // `duplicate` test must not discard mail over a store error).
                    Err(_) => id.starts_with("_v"),
                }
            };
            // RFC 6609: the user's own scripts by name, the admin's from the global directory.
            let include = |s: &::sieve::Script| match s {
                ::sieve::Script::Personal(n) => {
                    handle.block_on(store.sieve_get(account, n)).ok().flatten()
                }
                ::sieve::Script::Global(n) => {
                    let safe = !n.is_empty() && !n.contains(['/', '\\']) && !n.starts_with('.');
                    safe.then(|| {
                        std::fs::read_to_string(global_dir.join(format!("{n}.sieve"))).ok()
                    })
                    .flatten()
                }
            };
            let env = sieve::Env {
                from: &from,
                to: &to,
                user: &user,
                mailboxes: &names,
                hostname: &hostname,
                seen: &seen,
                include: &include,
                spam_score,
                virus_clean,
            };
            let decision = sieve::evaluate(&script, &full, &env, &limits);
            (decision, recorded.into_inner().unwrap_or_default())
        })
        .await;
        let (decision, recorded) = match decided {
            Ok(d) => d,
            Err(e) => (
                sieve::Decision {
                    error: Some(format!("the script's run failed: {e}")),
                    ..Default::default()
                },
                Vec::new(),
            ),
        };
        let mut plan = Plan {
            scripted: true,
            script: name,
            default,
            actions: decision.actions,
            error: decision.error,
            reject: decision.reject,
            redirects: decision.redirects,
            replies: decision.replies,
            copies: Vec::new(),
            bounced: false,
            recorded,
        };
        for c in decision.copies {
            let target = self.copy_target(t, &boxes, &c, default, &mut plan).await;
            // The same mailbox twice: one copy of the message as it came (an edited one, or
            // a vacation :fcc, is a copy of its own).
            let twice = c.edited.is_none()
                && plan
                    .copies
                    .iter()
                    .any(|(x, _, e)| *x == target && e.is_none());
            if !twice {
                plan.copies.push((target, c.flags, c.edited));
            }
        }
        // A failed script never loses the message.
        if plan.error.is_some() && plan.copies.is_empty() && plan.reject.is_none() {
            plan.copies.push((Target::Role(default), Vec::new(), None));
        }
        plan
    }

    /// The mailbox a Sieve copy goes to: INBOX (or the spam filter's choice) for keep; the
    /// named mailbox, its special-use one (RFC 8579), or one created (`:create`, RFC 5490);
    /// `default` when it does not exist (RFC 5228 4.1: the error keeps the message).
    async fn copy_target(
        &self,
        t: &LocalTarget,
        boxes: &[mailkeep_store::Mailbox],
        c: &sieve::Copy,
        default: MailboxRole,
        plan: &mut Plan,
    ) -> Target {
        let Some(name) = &c.mailbox else {
            return Target::Role(default);
        };
        if let Some(role) = c.special_use.as_deref().and_then(|u| {
            MailboxRole::ALL
                .into_iter()
                .find(|r| r.special_use().is_some_and(|x| x.eq_ignore_ascii_case(u)))
        }) {
            if boxes.iter().any(|b| b.role == Some(role)) {
                return Target::Role(role);
            }
        }
        if name.eq_ignore_ascii_case("INBOX") {
            return Target::Role(MailboxRole::Inbox);
        }
        if let Some(b) = boxes.iter().find(|b| b.name == *name) {
            return Target::Mailbox(b.id);
        }
        if c.create {
            match self.store.mailbox_create(t.account, name, None).await {
                Ok(b) => return Target::Mailbox(b.id),
                Err(e) => plan.error = Some(format!("fileinto :create {name:?}: {e}")),
            }
        } else {
            plan.error = Some(format!("fileinto {name:?}: no such mailbox"));
        }
        Target::Role(default)
    }

    fn stored_event(
        &self,
        msg: &Incoming,
        t: &LocalTarget,
        cache: &mailkeep_store::MessageCache,
        outcome: &str,
        detail: serde_json::Value,
    ) -> LogEvent {
        LogEvent {
            ts: now_micros(),
            session: msg.session.clone(),
            queue_id: Some(msg.queue_id.clone()),
            kind: "delivery.stored".into(),
            ip: msg.client_ip.clone(),
            sender: Some(msg.return_path.clone()),
            recipient: Some(t.address.clone()),
            message_id: cache.message_id.clone(),
            outcome: Some(outcome.into()),
            reply: None,
            detail,
        }
    }

    /// `delivery.sieve`: what a recipient's script did.
    fn sieve_event(
        &self,
        msg: &Incoming,
        t: &LocalTarget,
        cache: &mailkeep_store::MessageCache,
        plan: &Plan,
        outcome: &str,
    ) -> LogEvent {
        LogEvent {
            kind: "delivery.sieve".into(),
            detail: serde_json::json!({
                "script": plan.script, "actions": plan.actions, "error": plan.error,
            }),
            ..self.stored_event(msg, t, cache, outcome, serde_json::Value::Null)
        }
    }
}

/// Most Delivered-To fields a redirected message may carry.
const MAX_HOPS: usize = 20;
/// Most redirects one message leads to, over every delivery its redirects make.
const MAX_REDIRECTS: usize = 20;

/// One recipient's copies and what their Sieve script did.
#[derive(Debug)]
struct Plan {
    /// (where, flags, the message as the script changed it) per copy; none: discarded.
    copies: Vec<(Target, Vec<String>, Option<Vec<u8>>)>,
    /// Where a kept copy goes.
    default: MailboxRole,
    /// A script ran.
    scripted: bool,
    /// Its name.
    script: String,
    /// Its actions, for the log.
    actions: Vec<String>,
    /// Why it failed, if it did.
    error: Option<String>,
    /// Its rejection reason.
    reject: Option<String>,
    /// Where it redirects the message.
    redirects: Vec<String>,
    /// Messages it made to send: (recipient, message, what it is).
    replies: Vec<(String, Vec<u8>, &'static str)>,
    /// Its rejection went to the sender as a bounce.
    bounced: bool,
    /// Ids its vacation and duplicate tests recorded in this run (forgotten when the
    /// delivery fails).
    recorded: Vec<String>,
}

impl Plan {
    /// No script: one copy in `default`.
    fn keep(default: MailboxRole) -> Plan {
        Plan {
            copies: vec![(Target::Role(default), Vec::new(), None)],
            default,
            scripted: false,
            script: String::new(),
            actions: Vec::new(),
            error: None,
            reject: None,
            redirects: Vec::new(),
            replies: Vec::new(),
            bounced: false,
            recorded: Vec::new(),
        }
    }
}

fn serde_json_detail(pairs: &[(&str, String)]) -> serde_json::Value {
    serde_json::Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailkeep_store_sqlite::SqliteStore;
    use mailkeep_types::Domain;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_blob_many_recipients() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(SqliteStore::open(dir.path()).unwrap());
        store
            .domain_add(&Domain::parse("a.test").unwrap())
            .await
            .unwrap();
        for u in ["x@a.test", "y@a.test"] {
            store
                .user_add(&Address::parse(u).unwrap(), "h", 0)
                .await
                .unwrap();
        }
        let d = Delivery::new(store.clone(), Some('+'));
        let mut recipients = Vec::new();
        for u in ["x+tag@a.test", "y@a.test"] {
            match d.resolve(&Address::parse(u).unwrap()).await.unwrap() {
                Resolution::Targets { local, .. } => recipients.extend(local),
                other => panic!("{other:?}"),
            }
        }
        let delivered = d
            .deliver(Incoming {
                data: b"Subject: t\r\nMessage-ID: <m@a.test>\r\n\r\nhi\r\n".to_vec(),
                return_path: "s@b.test".into(),
                recipients,
                queue_id: "q".into(),
                session: "s".into(),
                client_ip: None,
                mailbox: mailkeep_types::MailboxRole::Inbox,
                placements: Default::default(),
                virus_clean: false,
                refusable: true,
                onward: Default::default(),
                dsn: Default::default(),
            })
            .await
            .unwrap();
        let out = &delivered.outcomes;
        assert_eq!(out.len(), 2);
        assert_eq!(delivered.events.len(), 2);
        store.log_append(delivered.events.clone()).await.unwrap();
        let st = out[0].result.as_ref().unwrap().as_ref().unwrap();
        let content = store
            .message_content(st.mailbox, st.uid)
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(content).unwrap();
        assert!(
            text.starts_with("Return-Path: <s@b.test>\r\nDelivered-To: x@a.test\r\nSubject: t"),
            "{text}"
        );
        let log = store
            .log_search(&mailkeep_store::LogFilter {
                message_id: Some("m@a.test".into()),
                limit: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(log.len(), 2);
        assert!(log
            .iter()
            .all(|e| e.outcome.as_deref() == Some("delivered")));
    }
}
