//! SMTP TLS reports we send (RFC 8460): for each domain that publishes
//! `_smtp._tls.DOMAIN` with a `rua=` (mailto: or https:), every new session to its MX hosts
//! is counted as a TLS success or failure (with the failure's type), under the policy that
//! applied (MTA-STS, DANE or none); once a day the counts go to the domain as gzipped JSON:
//! by mail, signed, to the mailto: addresses, and POSTed (`application/tlsrpt+gzip`, RFC
//! 8460 6.4) to the https: URLs, whose certificates are checked.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mail_auth::report::tlsrpt::{
    DateRange, FailureDetails, Policy, PolicyDetails, PolicyType, ResultType, Summary, TlsReport,
};
use mailkeep_store::StoreError;

use crate::{now_secs, Auth, Outbound};

/// How long a domain's TLS-RPT record is remembered.
const RUA_CACHE: Duration = Duration::from_secs(3600);
/// How long a report POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many https: URLs of one domain get a report (a record naming many cannot
/// keep the sender busy).
const MAX_POST_URLS: usize = 3;

/// One session's outcome, as kept until the report.
#[derive(serde::Serialize, serde::Deserialize)]
struct Session {
    policy_type: String,
    policy_string: Vec<String>,
    mx: String,
    ip: IpAddr,
    ok: bool,
    result: Option<String>,
    rua: Vec<String>,
}

/// Per policy: successful and failed sessions, failures by (type, MX host, address), and the
/// MX hosts seen.
type Counts = (
    u32,
    u32,
    BTreeMap<(String, String, IpAddr), u32>,
    Vec<String>,
);

/// RFC 8460 4.3 result types, from what a failed connection said.
fn result_type(error: &str) -> Option<&'static str> {
    if error.contains("does not offer STARTTLS") {
        return Some("starttls-not-supported");
    }
    if !error.contains("TLS handshake failed") {
        // Not a TLS failure (no connection, no greeting): not reported.
        return None;
    }
    let e = error.to_ascii_lowercase();
    Some(
        if e.contains("notvalidforname") || e.contains("not valid for name") {
            "certificate-host-mismatch"
        } else if e.contains("expired") {
            "certificate-expired"
        } else if e.contains("no dane tlsa record matches") {
            // RFC 8460 4.3.2: the TLSA records do not match the certificate.
            "validation-failure"
        } else if e.contains("invalid peer certificate") {
            // Not from an authority we trust (UnknownIssuer, a self-signed BadSignature...).
            "certificate-not-trusted"
        } else {
            "validation-failure"
        },
    )
}

fn to_result_type(s: &str) -> ResultType {
    match s {
        "starttls-not-supported" => ResultType::StartTlsNotSupported,
        "certificate-host-mismatch" => ResultType::CertificateHostMismatch,
        "certificate-expired" => ResultType::CertificateExpired,
        "certificate-not-trusted" => ResultType::CertificateNotTrusted,
        "validation-failure" => ResultType::ValidationFailure,
        _ => ResultType::Other,
    }
}

impl Outbound {
    /// The TLS-RPT addresses of a domain (RFC 8460 3: `v=TLSRPTv1; rua=mailto:...`), looked
    /// up at most once an hour.
    async fn tlsrpt_rua(&self, domain: &str) -> Vec<String> {
        let key = domain.to_ascii_lowercase();
        if let Ok(cache) = self.tlsrpt.lock() {
            if let Some((rua, at)) = cache.get(&key) {
                if at.elapsed() < RUA_CACHE {
                    return rua.clone();
                }
            }
        }
        let mut rua = Vec::new();
        if let Ok(t) = self.resolver.txt_lookup(format!("_smtp._tls.{key}.")).await {
            for r in t.iter() {
                let text: String = r
                    .txt_data()
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                if !text.trim_start().starts_with("v=TLSRPTv1") {
                    continue;
                }
                for field in text.split(';') {
                    if let Some(list) = field.trim().strip_prefix("rua=") {
                        // RFC 8460 3: mailto: addresses are kept bare, https: URLs whole.
                        rua.extend(list.split(',').filter_map(|u| {
                            let u = u.trim();
                            match u.strip_prefix("mailto:") {
                                Some(addr) => Some(addr.to_string()),
                                None => u.starts_with("https://").then(|| u.to_string()),
                            }
                        }));
                    }
                }
            }
        }
        if let Ok(mut cache) = self.tlsrpt.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(key, (rua.clone(), Instant::now()));
        }
        rua
    }

    /// Keeps a new session's TLS outcome (Ok(true): TLS; Ok(false): plaintext, not counted)
    /// when the domain asks for TLS reports.
    pub(crate) async fn record_tls(
        &self,
        domain: &str,
        auth: &Auth,
        host: &str,
        ip: IpAddr,
        outcome: Result<bool, &str>,
    ) {
        let (ok, result) = match outcome {
            Ok(true) => (true, None),
            Ok(false) => return,
            Err(e) => match result_type(e) {
                Some(r) => (false, Some(r.to_string())),
                None => return,
            },
        };
        let rua = self.tlsrpt_rua(domain).await;
        if rua.is_empty() {
            return;
        }
        let (policy_type, policy_string) = match auth {
            Auth::Dane(_, records) => ("tlsa", records.clone()),
            Auth::Pkix("mta-sts") => {
                let lines = self
                    .sts
                    .lock()
                    .ok()
                    .and_then(|m| {
                        m.get(&domain.to_ascii_lowercase())
                            .and_then(|(p, _)| p.clone())
                    })
                    .map(|p| {
                        let mut l = vec![
                            "version: STSv1".to_string(),
                            format!("mode: {}", p.mode.as_str()),
                        ];
                        l.extend(p.mx.iter().map(|m| format!("mx: {m}")));
                        l.push(format!("max_age: {}", p.max_age));
                        l
                    })
                    .unwrap_or_default();
                ("sts", lines)
            }
            _ => ("no-policy-found", Vec::new()),
        };
        let session = Session {
            policy_type: policy_type.into(),
            policy_string,
            mx: host.to_string(),
            ip,
            ok,
            result,
            rua,
        };
        let Ok(json) = serde_json::to_string(&session) else {
            return;
        };
        if let Err(e) = self
            .store
            .report_event_add("tlsrpt", domain, now_secs(), &json)
            .await
        {
            tracing::warn!(%domain, error = %e, "recording a TLS report row failed");
        }
    }

    /// Sends the TLS reports that are due (all of them with `force`); returns how many were
    /// queued.
    pub async fn send_tls_reports(&self, force: bool) -> Result<usize, StoreError> {
        let Some(cfg) = self.reports.read().ok().and_then(|r| r.clone()) else {
            return Ok(0);
        };
        if !cfg.tlsrpt {
            return Ok(0);
        }
        let now = now_secs();
        let rows = self.store.report_events("tlsrpt", now).await?;
        let Some(oldest) = rows.first() else {
            return Ok(0);
        };
        if !force && now - oldest.ts < cfg.interval.as_secs() as i64 {
            return Ok(0);
        }
        let mut by_domain: BTreeMap<String, Vec<(i64, i64, Session)>> = BTreeMap::new();
        let mut unreadable = Vec::new();
        for r in rows {
            match serde_json::from_str::<Session>(&r.data) {
                Ok(s) => by_domain.entry(r.domain).or_default().push((r.id, r.ts, s)),
                Err(_) => unreadable.push(r.id),
            }
        }
        if !unreadable.is_empty() {
            self.store
                .report_events_delete("tlsrpt", &unreadable)
                .await?;
        }
        let mut sent = 0;
        for (domain, sessions) in by_domain {
            let ids: Vec<i64> = sessions.iter().map(|(id, _, _)| *id).collect();
            let begin = sessions.iter().map(|(_, ts, _)| *ts).min().unwrap_or(now);
            let mut rua: Vec<String> = sessions
                .last()
                .map(|(_, _, s)| s.rua.clone())
                .unwrap_or_default();
            rua.sort();
            rua.dedup();
            // One policy entry per policy applied; failures counted by type, host, address.
            let mut policies: BTreeMap<(String, Vec<String>), Counts> = BTreeMap::new();
            for (_, _, s) in &sessions {
                let p = policies
                    .entry((s.policy_type.clone(), s.policy_string.clone()))
                    .or_default();
                if !p.3.contains(&s.mx) {
                    p.3.push(s.mx.clone());
                }
                if s.ok {
                    p.0 += 1;
                } else {
                    p.1 += 1;
                    let r = s
                        .result
                        .clone()
                        .unwrap_or_else(|| "validation-failure".into());
                    *p.2.entry((r, s.mx.clone(), s.ip)).or_default() += 1;
                }
            }
            let report_id = format!("{}.{domain}.{begin}.{now}", cfg.org);
            let report = TlsReport {
                organization_name: Some(cfg.org.clone()),
                date_range: DateRange::from_timestamps(begin, now),
                contact_info: Some(cfg.from.clone()),
                report_id: report_id.clone(),
                policies: policies
                    .into_iter()
                    .map(|((kind, strings), (ok, failed, failures, mx))| Policy {
                        policy: PolicyDetails {
                            policy_type: match kind.as_str() {
                                "sts" => PolicyType::Sts,
                                "tlsa" => PolicyType::Tlsa,
                                _ => PolicyType::NoPolicyFound,
                            },
                            policy_string: strings,
                            policy_domain: domain.clone(),
                            mx_host: mx,
                        },
                        summary: Summary {
                            total_success: ok,
                            total_failure: failed,
                        },
                        failure_details: failures
                            .into_iter()
                            .map(|((r, mx, ip), n)| {
                                let mut f = FailureDetails::new(to_result_type(&r))
                                    .with_receiving_mx_hostname(mx)
                                    .with_receiving_ip(ip);
                                f.failed_session_count = n;
                                f
                            })
                            .collect(),
                    })
                    .collect(),
            };
            let (urls, mail): (Vec<String>, Vec<String>) =
                rua.into_iter().partition(|u| u.starts_with("https://"));
            let posted = self.post_tls_report(&domain, &report, &urls).await;
            if mail.is_empty() {
                self.store.report_events_delete("tlsrpt", &ids).await?;
                if posted > 0 {
                    sent += 1;
                }
                continue;
            }
            let rua = mail;
            let mut message = Vec::new();
            if let Err(e) = report.write_rfc5322(
                &domain,
                &self.hostname,
                cfg.from.as_str(),
                rua.iter().map(String::as_str),
                &mut message,
            ) {
                tracing::warn!(%domain, error = %e, "building a TLS report failed");
                continue;
            }
            let sent_report = crate::reports::SentReport {
                kind: "tlsrpt",
                domain: &domain,
                report_id: &report_id,
                from: &cfg.from,
                to: &rua,
                rows: &ids,
                begin,
                end: now,
            };
            self.queue_report(sent_report, &message).await?;
            sent += 1;
        }
        Ok(sent)
    }
}

impl Outbound {
    /// POSTs a report to each https: URL (RFC 8460 3, 6.4); logs each as `report.sent` and
    /// returns how many were taken (2xx).
    async fn post_tls_report(&self, domain: &str, report: &TlsReport, urls: &[String]) -> usize {
        if urls.is_empty() {
            return 0;
        }
        let body = match serde_json::to_vec(report).map(|json| gzip(&json)) {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::warn!(%domain, error = %e, "compressing a TLS report failed");
                return 0;
            }
            Err(e) => {
                tracing::warn!(%domain, error = %e, "writing a TLS report failed");
                return 0;
            }
        };
        let mut taken = 0;
        if urls.len() > MAX_POST_URLS {
            tracing::info!(%domain, urls = urls.len(), "TLS report posted to the first {MAX_POST_URLS} https: addresses only");
        }
        for url in urls.iter().take(MAX_POST_URLS) {
            let result = match self.url_address(url).await {
                Ok(ip) => {
                    crate::sts::post(
                        url,
                        ip,
                        body.clone(),
                        "application/tlsrpt+gzip",
                        self.pkix.clone(),
                        POST_TIMEOUT,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            if result.is_ok() {
                taken += 1;
            } else if let Err(e) = &result {
                tracing::warn!(%domain, %url, error = %e, "posting a TLS report failed");
            }
            self.store.log_submit(vec![mailkeep_store::LogEvent {
                ts: mailkeep_delivery::now_micros(),
                session: "reports".into(),
                kind: "report.sent".into(),
                recipient: Some(url.clone()),
                outcome: Some(if result.is_ok() { "accepted" } else { "failed" }.into()),
                detail: serde_json::json!({
                    "kind": "tlsrpt", "domain": domain, "report_id": report.report_id,
                    "error": result.err(),
                }),
                ..Default::default()
            }]);
        }
        taken
    }

    /// An address of an https: URL's host.
    async fn url_address(&self, url: &str) -> Result<IpAddr, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(ip);
        }
        let name = format!("{}.", host.trim_end_matches('.'));
        self.resolver
            .lookup_ip(name.as_str())
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .iter()
            .next()
            .ok_or_else(|| format!("{host}: no address"))
    }
}

/// gzip (RFC 1952) of `data`.
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_rfc_8460_result_types() {
        assert_eq!(
            result_type(
                "mx.b.test does not offer STARTTLS, which the domain's MTA-STS policy requires"
            ),
            Some("starttls-not-supported")
        );
        assert_eq!(
            result_type("TLS handshake failed: invalid peer certificate: UnknownIssuer"),
            Some("certificate-not-trusted")
        );
        assert_eq!(
            result_type("TLS handshake failed: invalid peer certificate: NotValidForName"),
            Some("certificate-host-mismatch")
        );
        assert_eq!(
            result_type("TLS handshake failed: invalid peer certificate: BadSignature"),
            Some("certificate-not-trusted")
        );
        assert_eq!(
            result_type(
                "TLS handshake failed: no DANE TLSA record matches the server's certificate chain"
            ),
            Some("validation-failure")
        );
        assert_eq!(result_type("connect: Connection refused"), None);
    }
}
