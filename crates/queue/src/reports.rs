//! DMARC aggregate reports we send (RFC 7489 7.2): the rows the MX recorded for each domain
//! (`ReportStore::report_event_add`), merged into one report per domain and period, sent as
//! a signed message to the addresses the domain's `rua=` names.
//!
//! - A period closes once its oldest row is `reports.interval` old (a day by default); the
//!   report covers from that row to now, and its rows are then forgotten.
//! - An address outside the policy domain receives reports only if its domain says so with
//!   `<policy domain>._report._dmarc.<its domain>` (RFC 7489 7.1).

use std::collections::BTreeMap;

use mail_auth::report::{Record, Report};
use mailkeep_store::{LogEvent, NewQueued, QueueRecipient, StoreError};
use mailkeep_types::QueueId;
use mailkeep_verify::DmarcEntry;

use crate::{now_secs, Outbound};
use mailkeep_delivery::now_micros;

/// A report about to be queued.
pub(crate) struct SentReport<'a> {
    /// `dmarc` or `tlsrpt`.
    pub kind: &'static str,
    /// The domain it is about.
    pub domain: &'a str,
    /// Its id.
    pub report_id: &'a str,
    /// Its sender.
    pub from: &'a str,
    /// Its recipients.
    pub to: &'a [String],
    /// The rows it covers (forgotten once queued).
    pub rows: &'a [i64],
    /// The period covered.
    pub begin: i64,
    /// End of the period.
    pub end: i64,
}

impl Outbound {
    /// Sends the DMARC aggregate reports that are due (all of them with `force`); returns how
    /// many were queued.
    pub async fn send_dmarc_reports(&self, force: bool) -> Result<usize, StoreError> {
        let Some(cfg) = self.reports.read().ok().and_then(|r| r.clone()) else {
            return Ok(0);
        };
        if !cfg.dmarc {
            return Ok(0);
        }
        let now = now_secs();
        let rows = self.store.report_events("dmarc", now).await?;
        let Some(oldest) = rows.first() else {
            return Ok(0);
        };
        if !force && now - oldest.ts < cfg.interval.as_secs() as i64 {
            return Ok(0);
        }
        let mut by_domain: BTreeMap<String, Vec<(i64, i64, DmarcEntry)>> = BTreeMap::new();
        let mut unreadable = Vec::new();
        for r in rows {
            match serde_json::from_str::<DmarcEntry>(&r.data) {
                Ok(e) => by_domain
                    .entry(e.domain.to_ascii_lowercase())
                    .or_default()
                    .push((r.id, r.ts, e)),
                Err(_) => unreadable.push(r.id),
            }
        }
        if !unreadable.is_empty() {
            self.store
                .report_events_delete("dmarc", &unreadable)
                .await?;
        }
        let mut sent = 0;
        for (domain, entries) in by_domain {
            let ids: Vec<i64> = entries.iter().map(|(id, _, _)| *id).collect();
            let begin = entries.iter().map(|(_, ts, _)| *ts).min().unwrap_or(now);
            let Some((_, _, last)) = entries.last() else {
                continue;
            };
            let policy = last.policy.clone();
            let mut rua = last.rua.clone();
            rua.sort();
            rua.dedup();
            // Identical rows are one row with a count (RFC 7489 7.2.1.1).
            let mut merged: BTreeMap<String, (Record, u32)> = BTreeMap::new();
            for (_, _, e) in &entries {
                let key = serde_json::to_string(&e.record).unwrap_or_default();
                merged.entry(key).or_insert_with(|| (e.record.clone(), 0)).1 += 1;
            }
            let report_id = format!("{}.{domain}.{begin}.{now}", cfg.org);
            let mut report = Report::new()
                .with_org_name(cfg.org.clone())
                .with_email(cfg.from.clone())
                .with_report_id(report_id.clone())
                .with_date_range_begin(begin as u64)
                .with_date_range_end(now as u64)
                .with_policy_published(policy);
            for (_, (record, count)) in merged {
                report.add_record(record.with_count(count));
            }
            let mut to = Vec::new();
            for uri in &rua {
                if let Some(addr) = self.report_address(&domain, uri).await {
                    to.push(addr);
                }
            }
            if to.is_empty() {
                tracing::info!(%domain, "no DMARC report address may receive reports");
                self.store.report_events_delete("dmarc", &ids).await?;
                continue;
            }
            let build = |to: &[String]| {
                report.to_rfc5322(
                    &self.hostname,
                    cfg.from.as_str(),
                    to.iter().map(String::as_str),
                )
            };
            let mut message = match build(&to) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "building a DMARC report failed");
                    continue;
                }
            };
            // RFC 7489 7.1: no report larger than an address's `!size` goes to it.
            let fits = |a: &String| {
                last.rua_limits
                    .get(a)
                    .is_none_or(|limit| message.len() as u64 <= *limit)
            };
            let too_big: Vec<String> = to.iter().filter(|a| !fits(a)).cloned().collect();
            if !too_big.is_empty() {
                tracing::info!(%domain, ?too_big, size = message.len(), "the DMARC report is larger than these addresses take");
                to.retain(|a| !too_big.contains(a));
                if to.is_empty() {
                    self.store.report_events_delete("dmarc", &ids).await?;
                    continue;
                }
                message = match build(&to) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(%domain, error = %e, "building a DMARC report failed");
                        continue;
                    }
                };
            }
            let sent_report = SentReport {
                kind: "dmarc",
                domain: &domain,
                report_id: &report_id,
                from: &cfg.from,
                to: &to,
                rows: &ids,
                begin,
                end: now,
            };
            self.queue_report(sent_report, message.as_bytes()).await?;
            sent += 1;
        }
        Ok(sent)
    }

    /// Queues a report (signed like any outgoing message, NOTIFY=NEVER), forgets the rows it
    /// covers, and logs `report.sent`.
    pub(crate) async fn queue_report(
        &self,
        r: SentReport<'_>,
        message: &[u8],
    ) -> Result<(), StoreError> {
        let queued = NewQueued {
            id: QueueId::new(now_micros() as u64, rand::random()).0,
            sender: r.from.to_string(),
            blob: mailkeep_store::BlobId(String::new()),
            size: message.len() as u64,
            recipients: r
                .to
                .iter()
                .map(|a| QueueRecipient {
                    address: a.clone(),
                    notify: Some("NEVER".into()),
                    orcpt: None,
                })
                .collect(),
            envid: None,
            ret: Some("HDRS".into()),
            smtputf8: false,
            requiretls: false,
            account: None,
            held: false,
        };
        let qid = queued.id.clone();
        self.submit(queued, message).await?;
        self.store.report_events_delete(r.kind, r.rows).await?;
        self.store.log_submit(vec![LogEvent {
            ts: now_micros(),
            session: "reports".into(),
            queue_id: Some(qid),
            kind: "report.sent".into(),
            sender: Some(r.from.to_string()),
            recipient: Some(r.to.join(", ")),
            outcome: Some("accepted".into()),
            detail: serde_json::json!({
                "kind": r.kind, "domain": r.domain, "report_id": r.report_id,
                "rows": r.rows.len(), "begin": r.begin, "end": r.end,
            }),
            ..Default::default()
        }]);
        Ok(())
    }

    /// The address of a `rua=` URI if it may receive reports about `domain` (RFC 7489 7.1).
    async fn report_address(&self, domain: &str, uri: &str) -> Option<String> {
        let uri = uri.strip_prefix("mailto:").unwrap_or(uri);
        let addr = uri.split('!').next()?.trim().to_string();
        let (_, rua_domain) = addr.rsplit_once('@')?;
        let rua_domain = rua_domain.to_ascii_lowercase();
        let same_org = rua_domain == domain
            || rua_domain.ends_with(&format!(".{domain}"))
            || domain.ends_with(&format!(".{rua_domain}"));
        if same_org {
            return Some(addr);
        }
        let name = format!("{domain}._report._dmarc.{rua_domain}.");
        let authorized = self.resolver.txt_lookup(name).await.ok().is_some_and(|t| {
            t.iter().any(|r| {
                let text: String = r
                    .txt_data()
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                text.trim_start().starts_with("v=DMARC1")
            })
        });
        authorized.then_some(addr)
    }
}
