//! Greylisting on the MX (`[greylist]`, RFC 6647): the decision per recipient at RCPT, and
//! the sender domains that earn a pass by authenticating.

use mailkeep_delivery::now_micros;
use mailkeep_policy::greylist::{self as grey, Record, Times, Verdict};
use mailkeep_store::{GreyEntry, LogEvent};
use mailkeep_types::Address;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;

/// How old a passed record's last use may get before it is written again.
const STALE: i64 = 86_400;

fn times(c: &mailkeep_config::GreylistConfig) -> Times {
    Times {
        delay: c.delay.as_secs() as i64,
        retry_window: c.retry_window.as_secs() as i64,
        lifetime: c.lifetime.as_secs() as i64,
    }
}

fn record(e: GreyEntry) -> Record {
    Record {
        first: e.first,
        last: e.last,
        passed: e.passed,
    }
}

fn entry(r: Record) -> GreyEntry {
    GreyEntry {
        first: r.first,
        last: r.last,
        passed: r.passed,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Greylisting of one recipient of an MX session: None to go on, or the 451 reply.
    /// A store that cannot be read lets the mail through (and says so in the log):
    /// greylisting is a filter, not a gate worth losing mail over.
    pub(super) async fn greylist(&mut self, rcpt: &Address) -> Option<String> {
        let cfg = self.server.greylist.clone();
        if !cfg.enabled || self.user.is_some() {
            return None;
        }
        let ip = self.peer.ip();
        if cfg.allow.iter().any(|n| n.contains(ip)) {
            return None;
        }
        let t = times(&cfg);
        let net = grey::network(ip);
        let now = now_micros() / 1_000_000;
        let sender = self
            .tx
            .as_ref()
            .map(|tx| tx.sender.clone())
            .unwrap_or_default();
        let store = self.server.delivery.store().clone();
        let read = |r: mailkeep_store::Result<Option<GreyEntry>>| match r {
            Ok(e) => Ok(e.map(record)),
            Err(e) => Err(e),
        };
        let result: mailkeep_store::Result<Option<String>> = async {
            // RFC 6647 4.3: clients that retried before, and authenticated domains, pass.
            // An allowance in use is kept alive (written at most once a day).
            let touch = |key: String, r: Option<Record>| {
                let store = store.clone();
                async move {
                    match r {
                        Some(r) if now - r.last > STALE => {
                            store.grey_put(&key, entry(Record { last: now, ..r })).await
                        }
                        _ => Ok(()),
                    }
                }
            };
            let client_key = grey::client_key(&net);
            let client = read(store.grey_get(&client_key).await)?;
            if grey::client_allowed(client, now, t, cfg.auto_allow_clients) {
                touch(client_key, client).await?;
                return Ok(None);
            }
            if let Some((_, domain)) = sender.rsplit_once('@') {
                let key = grey::domain_key(domain, &net);
                let d = read(store.grey_get(&key).await)?;
                if grey::domain_allowed(d, now, t) {
                    touch(key, d).await?;
                    return Ok(None);
                }
            }
            let key = grey::triplet_key(&net, &sender, &rcpt.key());
            let before = read(store.grey_get(&key).await)?;
            let (verdict, after) = grey::check_triplet(before, now, t);
            // A passed triplet seen again within a day needs no write (each one is an fsync).
            let unchanged = verdict == Verdict::Pass
                && before.is_some_and(|b| b.passed > 0 && now - b.last <= STALE);
            if !unchanged {
                store.grey_put(&key, entry(after)).await?;
            }
            match verdict {
                Verdict::Pass => {
                    if before.is_some_and(|b| b.passed == 0) {
                        // A first pass: the client retried like a real server.
                        store
                            .grey_put(&client_key, entry(grey::passed_once_more(client, now)))
                            .await?;
                        self.log(
                            "smtp.greylist",
                            LogEvent {
                                recipient: Some(rcpt.to_string()),
                                outcome: Some("accepted".into()),
                                detail: serde_json::json!({
                                    "network": net,
                                    "waited": now - after.first,
                                }),
                                ..Default::default()
                            },
                        );
                    }
                    Ok(None)
                }
                Verdict::Defer { wait } => {
                    let reply = format!(
                        "451 4.7.1 Greylisted: a first attempt is deferred, try again in {wait} seconds"
                    );
                    self.log(
                        "smtp.greylist",
                        LogEvent {
                            recipient: Some(rcpt.to_string()),
                            outcome: Some("tempfail".into()),
                            reply: Some(reply.clone()),
                            detail: serde_json::json!({ "network": net, "wait": wait }),
                            ..Default::default()
                        },
                    );
                    Ok(Some(reply))
                }
            }
        }
        .await;
        match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(session = %self.id, error = %e, "greylisting store failed; letting the recipient through");
                None
            }
        }
    }

    /// After a message whose envelope sender passed SPF and whose From: passed DMARC, the
    /// sender's domain passes greylisting from this client's network.
    pub(super) async fn greylist_authenticated(&self) {
        let cfg = &self.server.greylist;
        if !cfg.enabled || self.user.is_some() {
            return;
        }
        let Some((_, domain)) = self.tx.as_ref().and_then(|t| t.sender.rsplit_once('@')) else {
            return;
        };
        let key = grey::domain_key(domain, &grey::network(self.peer.ip()));
        let store = self.server.delivery.store();
        let now = now_micros() / 1_000_000;
        let r = match store.grey_get(&key).await {
            Ok(e) => e.map(record),
            Err(e) => {
                tracing::warn!(session = %self.id, error = %e, "greylisting store failed");
                return;
            }
        };
        if let Err(e) = store
            .grey_put(&key, entry(grey::passed_once_more(r, now)))
            .await
        {
            tracing::warn!(session = %self.id, error = %e, "greylisting store failed");
        }
    }
}
