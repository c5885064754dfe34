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
pub mod watch;

use std::collections::HashMap;
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
}

/// Where one account's copy goes and what it gets besides the shared message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// INBOX or Junk.
    pub mailbox: MailboxRole,
    /// Header fields (CRLF-terminated) for this copy alone.
    pub fields: String,
}

/// What happened for one recipient.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The recipient.
    pub target: LocalTarget,
    /// Where it was stored, or why not.
    pub result: Result<Stored, String>,
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
}

/// Microseconds since the epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The delivery service.
#[derive(Clone)]
pub struct Delivery {
    store: SharedStore,
    plus_separator: Option<char>,
}

impl Delivery {
    /// A delivery service over a store.
    pub fn new(store: SharedStore, plus_separator: Option<char>) -> Delivery {
        Delivery {
            store,
            plus_separator,
        }
    }

    /// The store.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The sub-address separator (`user+tag@`), if plus-addressing is on.
    pub fn plus_separator(&self) -> Option<char> {
        self.plus_separator
    }

    /// Resolves a recipient through the directory.
    pub async fn resolve(&self, address: &Address) -> Result<Resolution, DeliveryError> {
        Ok(resolve(self.store.as_ref(), address, self.plus_separator).await?)
    }

    /// Stores the message for every recipient; returns once it is durable.
    pub async fn deliver(&self, msg: Incoming) -> Result<Delivered, DeliveryError> {
        let cache = ingest::parse_cache(&msg.data);
        let blob = self.store.put_blob(&msg.data).await?;
        let internal_date = now_micros() / 1_000_000;
        let mut batch = Vec::with_capacity(msg.recipients.len());
        for t in &msg.recipients {
            // RFC 5321 4.4: Return-Path; RFC 9228: Delivered-To names the final mailbox.
            let placement = msg.placements.get(&t.account);
            let prefix = format!(
                "Return-Path: <{}>\r\nDelivered-To: {}\r\n{}",
                msg.return_path,
                t.address,
                placement.map(|p| p.fields.as_str()).unwrap_or("")
            );
            batch.push(NewMessage {
                account: t.account,
                target: Target::Role(placement.map(|p| p.mailbox).unwrap_or(msg.mailbox)),
                blob: blob.clone(),
                blob_size: msg.data.len() as u64,
                prefix: prefix.into_bytes(),
                headers: msg.data[..(cache.header_size as usize).min(msg.data.len())].to_vec(),
                flags: vec![],
                internal_date,
                cache: cache.clone(),
                queue_id: Some(msg.queue_id.clone()),
            });
        }
        let results = self.store.deliver(batch).await?;
        let mut outcomes = Vec::with_capacity(results.len());
        let mut events = Vec::with_capacity(results.len());
        for (t, r) in msg.recipients.iter().zip(results) {
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
            events.push(LogEvent {
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
            });
            outcomes.push(Outcome {
                target: t.clone(),
                result: r.map_err(|e| e.to_string()),
            });
        }
        Ok(Delivered {
            outcomes,
            events,
            message_id: cache.message_id,
        })
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
            })
            .await
            .unwrap();
        let out = &delivered.outcomes;
        assert_eq!(out.len(), 2);
        assert_eq!(delivered.events.len(), 2);
        store.log_append(delivered.events.clone()).await.unwrap();
        let st = out[0].result.as_ref().unwrap();
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
