//! Sender authentication of inbound mail: SPF (RFC 7208) of HELO and MAIL FROM with our own
//! evaluator ([`spf`]), and with mail-auth: DKIM (RFC 6376, Ed25519 per RFC 8463), ARC (RFC 8617), DMARC (RFC 7489, with the
//! DMARCbis tree walk mail-auth implements) and iprev, summed up in one
//! Authentication-Results header (RFC 8601) with our host name as authserv-id.
//!
//! Implementation notes:
//! - DNS goes through mail-auth's own hickory resolver (0.26), asking the configured servers
//!   (the system's by default); its cache honours TTLs.
//! - At most `verify.max_dkim_signatures` signatures are checked; RSA keys under 1024 bits
//!   fail (ring's verifier refuses them).
//! - DMARC's verdict is applied by the caller through [`Action`]: `p=reject` refuses the
//!   message, `p=quarantine` files it to Junk, when `verify.dmarc_enforce` is on.
#![warn(missing_docs)]

pub mod arc;
pub mod keys;
pub mod seal;
pub mod spf;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{
    NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, IprevResult,
    MessageAuthenticator, SpfResult,
};
use mailkeep_config::VerifyConfig;

/// The longest an SPF check may take.
const SPF_TIME_LIMIT: Duration = Duration::from_secs(20);

/// Setting the verifier up failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The resolver could not be made.
    #[error("DNS resolver for sender authentication: {0}")]
    Resolver(String),
}

/// What to do with a message after its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Deliver to the inbox.
    Accept,
    /// Deliver to Junk; why.
    Junk(String),
    /// Refuse at the end of DATA with this reply.
    Reject(String),
}

/// The outcome of the checks on one message.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// `Authentication-Results: ...\r\n`, to prepend.
    pub header: String,
    /// What the sender's DMARC policy asks for, as configured.
    pub action: Action,
    /// Every result, for the delivery log.
    pub detail: serde_json::Value,
    /// For the domain's DMARC aggregate report, when its record asks for one (rua).
    pub report: Option<DmarcEntry>,
    /// The ARC set to prepend to the copy we forward, when a seal was asked for and made.
    pub arc_set: Option<String>,
    /// DMARC was checked and passed: SPF or DKIM aligned with the From: domain.
    pub dmarc_pass: bool,
    /// The results in brief, for the spam score.
    pub summary: Summary,
}

/// The results of the checks as RFC 8601 result words; None for a check not made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// SPF of MAIL FROM (of HELO for the null sender).
    pub spf: Option<&'static str>,
    /// DKIM: `pass` when any signature passed, else `fail` when any failed, else `none`.
    pub dkim: Option<&'static str>,
    /// DMARC's result and the From: domain's policy (`none`, `quarantine`, `reject`).
    pub dmarc: Option<(&'static str, String)>,
    /// The DMARC policy was applied (the verdict's action is Junk or Reject).
    pub dmarc_applied: bool,
    /// iprev.
    pub iprev: Option<&'static str>,
}

/// What a DMARC aggregate report (RFC 7489 7.2) says of one message.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DmarcEntry {
    /// The From: domain whose policy applied.
    pub domain: String,
    /// Where the domain wants its reports (the addresses of its mailto: URIs).
    pub rua: Vec<String>,
    /// The largest report (bytes) an address takes, when its URI says `!size` (RFC 7489
    /// 6.4). Rows kept by older versions have none.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rua_limits: std::collections::BTreeMap<String, u64>,
    /// The policy as published.
    pub policy: mail_auth::report::PolicyPublished,
    /// The message's row (count 1).
    pub record: mail_auth::report::Record,
}

/// One DKIM signature's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimVerdict {
    /// d=, when the signature could be read.
    pub domain: Option<String>,
    /// s=, when the signature could be read.
    pub selector: Option<String>,
    /// RFC 8601 result word: pass, fail, neutral, permerror, temperror, none.
    pub result: &'static str,
    /// Why it did not pass.
    pub reason: Option<String>,
}

/// The message's envelope and connection, as the SMTP session saw them.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// The name it gave in HELO/EHLO.
    pub helo: &'a str,
    /// MAIL FROM (empty for the null sender).
    pub mail_from: &'a str,
}

/// Runs the checks of inbound mail.
pub struct Verifier {
    auth: MessageAuthenticator,
    hostname: String,
    config: VerifyConfig,
    /// Keys to seal forwarded mail with (RFC 8617), when forwarding seals.
    sealers: Option<seal::ArcSealKeys>,
}

impl Verifier {
    /// A verifier asking `servers` (the system's resolvers when empty), as `hostname` (the
    /// authserv-id of its Authentication-Results).
    pub fn new(
        servers: &[SocketAddr],
        timeout: Duration,
        hostname: &str,
        config: VerifyConfig,
    ) -> Result<Verifier, VerifyError> {
        let auth = if servers.is_empty() {
            MessageAuthenticator::new_system_conf()
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in ns.connections.iter_mut() {
                        c.port = s.port();
                    }
                    ns
                })
                .collect();
            let mut opts = ResolverOpts::default();
            opts.timeout = timeout;
            opts.attempts = 1;
            // Configured servers are the whole truth (as for the queue's resolver).
            opts.use_hosts_file = ResolveHosts::Never;
            MessageAuthenticator::new(ResolverConfig::from_name_servers(name_servers), opts)
        }
        .map_err(|e| VerifyError::Resolver(e.to_string()))?;
        Ok(Verifier {
            auth,
            hostname: hostname.to_string(),
            config,
            sealers: None,
        })
    }

    /// Seals forwarded mail with these keys (see [`Verifier::verify`]'s `seal_as`).
    pub fn with_sealers(mut self, keys: seal::ArcSealKeys) -> Verifier {
        self.sealers = Some(keys);
        self
    }

    /// Our authserv-id.
    pub fn authserv_id(&self) -> &str {
        &self.hostname
    }

    /// SPF of the MAIL FROM identity (RFC 7208 2.4), or of `postmaster@HELO` for the null
    /// sender: the check inbound SMTP makes, also run by the OpenSPF suite.
    pub async fn check_spf(&self, ip: IpAddr, helo: &str, mail_from: &str) -> mail_auth::SpfOutput {
        // RFC 7208 4.6.4: the whole check is bounded in time (20 s, as the RFC suggests).
        let check = spf::check(&self.auth.0, ip, helo, mail_from, &self.hostname);
        let (domain, out) = match tokio::time::timeout(SPF_TIME_LIMIT, check).await {
            Ok(r) => r,
            Err(_) => {
                let domain = mail_from.rsplit_once('@').map(|(_, d)| d).unwrap_or(helo);
                return mail_auth::SpfOutput::new(domain.to_string())
                    .with_result(SpfResult::TempError);
            }
        };
        let o = mail_auth::SpfOutput::new(domain).with_result(out.result);
        match out.explanation {
            Some(e) => o.with_explanation(e),
            None => o,
        }
    }

    /// The DKIM signatures of a message checked as inbound SMTP checks them (at most
    /// `max_dkim_signatures`), one verdict each, in header order.
    pub async fn check_dkim(&self, message: &[u8]) -> Vec<DkimVerdict> {
        let Some(mut msg) = AuthenticatedMessage::parse(message) else {
            return Vec::new();
        };
        msg.dkim_headers.truncate(self.config.max_dkim_signatures);
        let refused = drop_sha1(&mut msg);
        let mut out: Vec<DkimVerdict> = refused
            .into_iter()
            .map(|(d, s)| DkimVerdict {
                domain: Some(d),
                selector: Some(s),
                result: "permerror",
                reason: Some(SHA1_REFUSED.into()),
            })
            .collect();
        out.extend(
            self.auth
                .verify_dkim(&msg)
                .await
                .iter()
                .map(|o| DkimVerdict {
                    domain: o.signature().map(|s| s.d.clone()),
                    selector: o.signature().map(|s| s.s.clone()),
                    result: dkim_word(o.result()),
                    reason: dkim_reason(o.result()),
                }),
        );
        out
    }

    /// The ARC chain of a message checked as inbound SMTP checks it (RFC 8617 5.2): the
    /// chain validation result, `pass`, `fail` or `none`, and why it is not pass.
    pub async fn check_arc(&self, message: &[u8]) -> (&'static str, Option<String>) {
        let Some(msg) = AuthenticatedMessage::parse(message) else {
            return ("none", None);
        };
        if let Some(why) = arc::strict_failure(message) {
            return ("fail", Some(why));
        }
        let out = self.auth.verify_arc(&msg).await;
        let word = match out.result() {
            DkimResult::Pass => "pass",
            DkimResult::None => "none",
            _ => "fail",
        };
        (word, dkim_reason(out.result()))
    }

    /// Checks a message as received (before our own trace fields). With `seal_as` (a domain
    /// of ours that forwards the message), the verdict also carries the ARC set for the
    /// forwarded copy, signed with that domain's key, the chain checked even when `verify.arc`
    /// is off.
    pub async fn verify(
        &self,
        message: &[u8],
        env: Envelope<'_>,
        seal_as: Option<&str>,
    ) -> Verdict {
        let c = &self.config;
        let helo_domain = env.helo.trim_start_matches('[').trim_end_matches(']');
        let mut ar = AuthenticationResults::new(&self.hostname);
        let mut detail = serde_json::Map::new();
        let mut summary = Summary::default();

        // SPF (RFC 7208 2.3, 2.4): HELO, then MAIL FROM (the HELO identity for the null
        // sender, RFC 7208 2.4).
        let spf_helo = if c.spf {
            // RFC 7208 2.3: the HELO identity is postmaster@HELO.
            let o = self.check_spf(env.ip, helo_domain, "").await;
            ar = ar.with_spf_ehlo_result(&o, env.ip, helo_domain);
            detail.insert("spf_helo".into(), spf_json(&o));
            Some(o)
        } else {
            None
        };
        let spf_from = if c.spf {
            let o = match &spf_helo {
                Some(h) if env.mail_from.is_empty() => h.clone(),
                _ => self.check_spf(env.ip, helo_domain, env.mail_from).await,
            };
            ar = ar.with_spf_mailfrom_result(&o, env.ip, env.mail_from, helo_domain);
            detail.insert("spf_mailfrom".into(), spf_json(&o));
            summary.spf = Some(spf_word(o.result()));
            Some(o)
        } else {
            None
        };

        let parsed = AuthenticatedMessage::parse(message);
        let Some(mut msg) = parsed else {
            // No header at all: nothing else can be checked.
            detail.insert("error".into(), "the message has no header".into());
            return Verdict {
                header: ar.to_header(),
                action: Action::Accept,
                detail: detail.into(),
                report: None,
                arc_set: None,
                dmarc_pass: false,
                summary: Summary {
                    spf: spf_from.as_ref().map(|o| spf_word(o.result())),
                    ..Default::default()
                },
            };
        };

        // DKIM (RFC 6376 6): every signature, up to the limit.
        let dkim = if c.dkim {
            let total = msg.dkim_headers.len();
            msg.dkim_headers.truncate(c.max_dkim_signatures);
            let refused = drop_sha1(&mut msg);
            let out = self.auth.verify_dkim(&msg).await;
            ar = ar.with_dkim_results(&out, msg.from());
            let mut rows: Vec<serde_json::Value> = refused
                .iter()
                .map(|(d, s)| {
                    serde_json::json!({
                        "d": d, "s": s, "result": "permerror", "reason": SHA1_REFUSED,
                    })
                })
                .collect();
            rows.extend(out.iter().map(|o| {
                serde_json::json!({
                    "d": o.signature().map(|s| s.d.clone()),
                    "s": o.signature().map(|s| s.s.clone()),
                    "result": dkim_word(o.result()),
                    "reason": dkim_reason(o.result()),
                })
            }));
            let words: Vec<&str> = out.iter().map(|o| dkim_word(o.result())).collect();
            summary.dkim = Some(if words.contains(&"pass") {
                "pass"
            } else if words.contains(&"fail") || !refused.is_empty() {
                "fail"
            } else {
                "none"
            });
            detail.insert("dkim".into(), rows.into());
            if total > c.max_dkim_signatures {
                detail.insert(
                    "dkim_ignored".into(),
                    (total - c.max_dkim_signatures).into(),
                );
            }
            out
        } else {
            Vec::new()
        };

        // ARC (RFC 8617 5.2), with the rules mail-auth leaves out checked first.
        let sealing = seal_as.is_some() && self.sealers.is_some();
        let mut arc_out = None;
        if c.arc || sealing {
            let mut arc = self.auth.verify_arc(&msg).await;
            let broken = arc::strict_failure(message);
            if broken.is_some() {
                arc = arc.with_result(DkimResult::Fail(mail_auth::Error::Arc(
                    mail_auth::arc::ArcError::BrokenChain,
                )));
            }
            // RFC 8617 4.1.1: our ARC-Authentication-Results carries the chain's result.
            ar = ar.with_arc_result(&arc, env.ip);
            if c.arc {
                detail.insert("arc".into(), dkim_word(arc.result()).into());
                if let Some(why) = &broken {
                    detail.insert("arc_reason".into(), why.clone().into());
                }
            }
            arc_out = Some(arc);
        }

        // DMARC (RFC 7489 6.6): alignment of SPF (MAIL FROM, or HELO for the null sender)
        // and DKIM with the From: domain.
        let mut action = Action::Accept;
        let mut report = None;
        let mut dmarc_pass = false;
        if c.dmarc {
            if let Some(spf) = &spf_from {
                let from_domain = match env.mail_from.rsplit_once('@') {
                    Some((_, d)) => d,
                    None => helo_domain,
                };
                let dmarc = self
                    .auth
                    .verify_dmarc(DmarcParameters::new(&msg, &dkim, from_domain, spf))
                    .await;
                ar = ar.with_dmarc_result(&dmarc);
                let policy = dmarc.policy();
                let failed = matches!(dmarc.result(), DmarcResult::Fail(_));
                dmarc_pass = matches!(dmarc.result(), DmarcResult::Pass);
                summary.dmarc = Some((
                    dmarc_word(&dmarc.result()),
                    format!("{policy:?}").to_ascii_lowercase(),
                ));
                detail.insert(
                    "dmarc".into(),
                    serde_json::json!({
                        "result": dmarc_word(&dmarc.result()),
                        "domain": dmarc.domain(),
                        "policy": format!("{policy:?}").to_ascii_lowercase(),
                        "spf_aligned": dmarc_word(dmarc.spf_result()),
                        "dkim_aligned": dmarc_word(dmarc.dkim_result()),
                    }),
                );
                // RFC 7489 7.2: the row of this message in the domain's aggregate report.
                // The domain is the peer's From: domain and goes into the report's Subject
                // (mail-auth builds it): only a host name gets a report.
                if let Some(record) = dmarc
                    .dmarc_record()
                    .filter(|_| mailkeep_types::Domain::parse(dmarc.domain()).is_ok())
                {
                    // mail-auth keeps the mailto: URIs as bare addresses.
                    let rua: Vec<String> = record
                        .rua()
                        .iter()
                        .map(|u| u.uri().to_string())
                        .filter(|u| u.contains('@'))
                        .collect();
                    let rua_limits = record
                        .rua()
                        .iter()
                        .filter(|u| u.uri().contains('@') && u.max_size() > 0)
                        .map(|u| (u.uri().to_string(), u.max_size() as u64))
                        .collect();
                    if !rua.is_empty() {
                        let mut row = mail_auth::report::Record::new()
                            .with_source_ip(env.ip)
                            .with_count(1)
                            .with_header_from(dmarc.domain())
                            .with_envelope_from(from_domain)
                            .with_dkim_output(&dkim)
                            .with_spf_output(spf, mail_auth::report::SPFDomainScope::MailFrom)
                            .with_dmarc_output(&dmarc);
                        if let Some(arc) = &arc_out {
                            row = row.with_arc_output(arc);
                        }
                        if failed && !c.dmarc_enforce {
                            // Not applied here: the disposition is what we did.
                            row = row.with_action_disposition(
                                mail_auth::report::ActionDisposition::None,
                            );
                        }
                        report = Some(DmarcEntry {
                            domain: dmarc.domain().to_string(),
                            rua,
                            rua_limits,
                            policy: mail_auth::report::PolicyPublished::from_record(
                                dmarc.domain(),
                                record,
                            ),
                            record: row,
                        });
                    }
                }
                // RFC 7489 6.7: the policy applies only when DMARC fails.
                if failed && c.dmarc_enforce {
                    // Into an SMTP reply: nothing that could end the reply line.
                    let domain: String =
                        dmarc.domain().chars().filter(|c| !c.is_control()).collect();
                    action = match policy {
                        mail_auth::dmarc::Policy::Reject => Action::Reject(format!(
                            "550 5.7.1 Rejected by the DMARC policy of {domain}: the message \
                             is not authenticated as coming from it"
                        )),
                        mail_auth::dmarc::Policy::Quarantine => {
                            Action::Junk(format!("the DMARC policy of {domain} (quarantine)"))
                        }
                        _ => Action::Accept,
                    };
                }
            }
        }

        // iprev (RFC 8601 3).
        if c.iprev {
            let o = self.auth.verify_iprev(env.ip).await;
            ar = ar.with_iprev_result(&o, env.ip);
            detail.insert("iprev".into(), iprev_word(o.result()).into());
            summary.iprev = Some(iprev_word(o.result()));
        }

        // RFC 8617 5.1: the forwarded copy gets our ARC set, over the message as it came.
        let mut arc_set = None;
        if let (Some(domain), Some(keys), Some(arc)) = (seal_as, &self.sealers, &arc_out) {
            let (result, set) = seal_message(keys, domain, &msg, &ar, arc);
            detail.insert("arc_seal".into(), result);
            arc_set = set;
        }

        summary.dmarc_applied = !matches!(action, Action::Accept);
        Verdict {
            header: ar.to_header(),
            action,
            detail: detail.into(),
            report,
            arc_set,
            dmarc_pass,
            summary,
        }
    }
}

/// The ARC set for a message we forward as `domain`, and what happened, for the log.
fn seal_message(
    keys: &seal::ArcSealKeys,
    domain: &str,
    msg: &AuthenticatedMessage<'_>,
    results: &AuthenticationResults<'_>,
    arc: &mail_auth::ArcOutput<'_>,
) -> (serde_json::Value, Option<String>) {
    let Some((signer, selector, sealer)) = keys.for_domain(domain) else {
        return (
            serde_json::json!({ "error": format!("no RSA key for {domain}") }),
            None,
        );
    };
    // RFC 8617 5.1.1: a chain that already has 50 sets is not sealed again.
    if msg.as_headers.len() >= seal::MAX_SETS as usize {
        return (
            serde_json::json!({ "error": "the chain has 50 ARC sets already" }),
            None,
        );
    }
    // ARC fields that cannot be read or do not form whole sets: there is no instance to
    // follow, and a set i=1 beside them would make the chain unreadable.
    let (ams, seals, aar) = (
        msg.ams_headers.len(),
        msg.as_headers.len(),
        msg.aar_headers.len(),
    );
    if msg.has_arc_errors || ams != seals || ams != aar {
        return (
            serde_json::json!({ "error": "the ARC fields present do not form a chain" }),
            None,
        );
    }
    // RFC 8617 5.1.2: a chain whose last set says cv=fail gets no more sets.
    if !arc.can_be_sealed() {
        return (
            serde_json::json!({ "error": "the chain's last set says cv=fail" }),
            None,
        );
    }
    match sealer.seal(msg, results, arc) {
        Ok(set) => (
            serde_json::json!({
                "d": signer, "s": selector, "i": set.seal.i,
                "cv": format!("{:?}", set.seal.cv).to_ascii_lowercase(),
            }),
            Some(set.to_header()),
        ),
        Err(e) => (serde_json::json!({ "error": e.to_string() }), None),
    }
}

fn spf_json(o: &mail_auth::SpfOutput) -> serde_json::Value {
    serde_json::json!({
        "result": spf_word(o.result()),
        "domain": o.domain(),
        "explanation": o.explanation(),
    })
}

/// A report someone sent us, parsed: a DMARC aggregate report (RFC 7489 7.2) or an SMTP TLS
/// report (RFC 8460).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedReport {
    /// `dmarc` or `tlsrpt`.
    pub kind: &'static str,
    /// The policy domain it is about.
    pub domain: String,
    /// Who reports.
    pub org: String,
    /// Their id of the report.
    pub report_id: String,
    /// The period covered (unix seconds).
    pub begin: i64,
    /// End of the period.
    pub end: i64,
    /// The whole report, as JSON.
    pub json: String,
}

/// Largest decompressed report read.
const MAX_REPORT: usize = 20 * 1024 * 1024;

/// What a spam complaint (an ARF feedback report, RFC 5965) says of the message complained
/// of. The report's sender wrote all of it: check it against what we really sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complaint {
    /// Who sent it: the report's Original-Mail-From, else the From: of the message or
    /// header it includes; lower case.
    pub sender: String,
    /// Its Message-ID (without angle brackets), from the included message or header.
    pub message_id: Option<String>,
}

/// The complaint a message carries, if it is a feedback report (RFC 5965) of type `abuse`
/// or `fraud`.
pub fn parse_complaint(message: &[u8]) -> Option<Complaint> {
    // RFC 5965 2: multipart/report with report-type=feedback-report.
    let head_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len().min(64 * 1024));
    let head = String::from_utf8_lossy(&message[..head_end]).to_ascii_lowercase();
    if !head.contains("feedback-report") {
        return None;
    }
    let f = mail_auth::report::Feedback::parse_rfc5322(message).ok()?;
    use mail_auth::report::FeedbackType;
    if !matches!(f.feedback_type(), FeedbackType::Abuse | FeedbackType::Fraud) {
        return None;
    }
    let bare = |a: &str| {
        a.trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_ascii_lowercase()
    };
    // RFC 5965 2 (d): the third part is the message, or its header (text/rfc822-headers).
    let parsed = f
        .message()
        .or(f.headers())
        .and_then(|o| mail_parser::MessageParser::new().parse_headers(o.as_bytes()));
    let message_id = parsed
        .as_ref()
        .and_then(|p| p.message_id())
        .map(|id| id.to_string());
    let sender = match f.original_mail_from().map(bare).filter(|a| a.contains('@')) {
        Some(a) => a,
        None => parsed
            .as_ref()?
            .from()?
            .first()?
            .address()?
            .to_ascii_lowercase(),
    };
    Some(Complaint { sender, message_id })
}

/// The report a message carries, if it is one: an SMTP TLS report (a TLS-Report-Domain
/// field, RFC 8460 5.3), or a DMARC aggregate report (its Subject says "Report Domain:", RFC
/// 7489 7.2.1.1, or it has a zip or gzip attachment).
pub fn parse_report(message: &[u8]) -> Option<ReceivedReport> {
    let head_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len().min(64 * 1024));
    let head = String::from_utf8_lossy(&message[..head_end]).to_ascii_lowercase();
    let body = &message[head_end.min(message.len())..];
    if head.contains("\ntls-report-domain:") {
        let r = mail_auth::report::tlsrpt::TlsReport::parse_rfc5322(message, MAX_REPORT).ok()?;
        let json = serde_json::to_string(&r).ok()?;
        let domain = r
            .policies
            .first()?
            .policy
            .policy_domain
            .to_ascii_lowercase();
        return Some(ReceivedReport {
            kind: "tlsrpt",
            domain,
            org: r.organization_name.clone().unwrap_or_default(),
            report_id: r.report_id.clone(),
            begin: r.date_range.start_datetime.to_timestamp(),
            end: r.date_range.end_datetime.to_timestamp(),
            json,
        });
    }
    let looks = head.contains("report domain:")
        || head.contains("report-domain:")
        || body.windows(15).take(1 << 20).any(|w| {
            w.eq_ignore_ascii_case(b"application/gzi") || w.eq_ignore_ascii_case(b"application/zip")
        });
    if !looks {
        return None;
    }
    let r = mail_auth::report::Report::parse_rfc5322(message, MAX_REPORT).ok()?;
    let json = serde_json::to_string(&r).ok()?;
    Some(ReceivedReport {
        kind: "dmarc",
        domain: r.policy_published.domain.to_ascii_lowercase(),
        org: r.report_metadata.org_name.clone(),
        report_id: r.report_metadata.report_id.clone(),
        begin: r.report_metadata.date_range.begin as i64,
        end: r.report_metadata.date_range.end as i64,
        json,
    })
}

/// Why an rsa-sha1 signature is not checked.
const SHA1_REFUSED: &str = "rsa-sha1 signatures are not accepted (RFC 8301 3.1)";

/// Takes rsa-sha1 signatures out of the message's list (RFC 8301 3.1: verifiers must not
/// accept them), so that they count for nothing, DMARC included; returns their d= and s=.
fn drop_sha1(msg: &mut AuthenticatedMessage<'_>) -> Vec<(String, String)> {
    let mut refused = Vec::new();
    msg.dkim_headers.retain(|h| {
        let sha1 = h.header.a == mail_auth::common::crypto::Algorithm::RsaSha1;
        if sha1 {
            refused.push((h.header.d.clone(), h.header.s.clone()));
        }
        !sha1
    });
    refused
}

/// RFC 8601 2.7.2 result words.
pub fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// RFC 8601 2.7.1 result words.
pub fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dkim_reason(r: &DkimResult) -> Option<String> {
    match r {
        DkimResult::Neutral(e)
        | DkimResult::Fail(e)
        | DkimResult::PermError(e)
        | DkimResult::TempError(e) => Some(e.to_string()),
        _ => None,
    }
}

fn dmarc_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

fn iprev_word(r: &IprevResult) -> &'static str {
    match r {
        IprevResult::Pass => "pass",
        IprevResult::Fail(_) => "fail",
        IprevResult::TempError(_) => "temperror",
        IprevResult::PermError(_) => "permerror",
        IprevResult::None => "none",
    }
}

/// The message without Authentication-Results fields that claim to be ours (RFC 8601 5:
/// a receiver removes them, since anyone can write one before the message reaches us).
/// Fields of other authserv-ids stay.
pub fn strip_own_results(message: &[u8], authserv_id: &str) -> Vec<u8> {
    let end = header_end(message);
    let (head, body) = message.split_at(end);
    let mut out = Vec::with_capacity(message.len());
    let mut dropping = false;
    for line in head.split_inclusive(|b| *b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ') | Some(b'\t'));
        if continuation {
            if !dropping {
                out.extend_from_slice(line);
            }
            continue;
        }
        dropping = is_own_result(line, head, authserv_id);
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    out
}

/// Whether the field starting with `line` is an Authentication-Results for `authserv_id`
/// (its value, unfolded, starts with the id, case-insensitively, RFC 8601 2.5).
fn is_own_result(line: &[u8], head: &[u8], authserv_id: &str) -> bool {
    const NAME: &[u8] = b"authentication-results:";
    if line.len() < NAME.len() || !line[..NAME.len()].eq_ignore_ascii_case(NAME) {
        return false;
    }
    // The field's whole value: this line and its continuations.
    let start = line.as_ptr() as usize - head.as_ptr() as usize;
    let mut value = Vec::new();
    for (i, l) in head[start..].split_inclusive(|b| *b == b'\n').enumerate() {
        if i > 0 && !matches!(l.first(), Some(b' ') | Some(b'\t')) {
            break;
        }
        value.extend_from_slice(if i == 0 { &l[NAME.len()..] } else { l });
    }
    let text = String::from_utf8_lossy(&value);
    // Comments before the id are allowed (RFC 8601 2.2 CFWS); take the first word.
    let mut rest = text.trim_start();
    while let Some(after) = rest.strip_prefix('(') {
        rest = after
            .split_once(')')
            .map(|(_, r)| r)
            .unwrap_or("")
            .trim_start();
    }
    let id: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ';' && *c != '(')
        .collect();
    id.eq_ignore_ascii_case(authserv_id)
}

fn header_end(message: &[u8]) -> usize {
    let mut i = 0;
    let mut at_line_start = true;
    while i < message.len() {
        if at_line_start {
            if message[i..].starts_with(b"\r\n") {
                return i;
            }
            if message[i] == b'\n' {
                return i;
            }
        }
        at_line_start = message[i] == b'\n';
        i += 1;
    }
    message.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_authentication_results_are_removed() {
        let msg = b"Authentication-Results: mx.example.org; dkim=pass\r\n\
Received: from x\r\n\
Authentication-Results: (forged) MX.EXAMPLE.ORG;\r\n\tspf=pass smtp.mailfrom=a@b\r\n\
Authentication-Results: other.example; dmarc=pass\r\n\
Authentication-Results:\r\n mx.example.org; arc=pass\r\n\
Subject: hi\r\n\
\r\n\
Authentication-Results: mx.example.org; in the body stays\r\n";
        let out = String::from_utf8(strip_own_results(msg, "mx.example.org")).unwrap();
        assert_eq!(
            out,
            "Received: from x\r\n\
Authentication-Results: other.example; dmarc=pass\r\n\
Subject: hi\r\n\
\r\n\
Authentication-Results: mx.example.org; in the body stays\r\n"
        );
        // A name that merely starts with ours is someone else's.
        let msg = b"Authentication-Results: mx.example.org.evil; x=y\r\n\r\n";
        assert_eq!(strip_own_results(msg, "mx.example.org"), msg.to_vec());
    }
}
