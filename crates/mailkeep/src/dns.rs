//! `mailkeep dns records DOMAIN` prints every record a mail domain needs; `mailkeep dns check
//! DOMAIN` asks DNS for each and says ok, missing or wrong with the fix, exiting non-zero when
//! a required one is not right.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use mailkeep_types::Domain;

#[derive(Subcommand)]
pub enum DnsCmd {
    /// Every record DOMAIN needs, as zone-file lines with what each is for.
    Records { domain: String },
    /// Query DNS for each record DOMAIN needs; exit 1 when one that is required is missing
    /// or wrong. --ip: the server's public addresses (default: the host name's A/AAAA).
    Check {
        domain: String,
        #[arg(long)]
        ip: Vec<IpAddr>,
    },
}

/// One record a domain needs.
struct Needed {
    /// Owner name, without the final dot.
    name: String,
    kind: &'static str,
    value: String,
    /// What it is for.
    why: &'static str,
    /// Without it mail is refused or lands in spam; recommended ones only warn.
    required: bool,
}

/// Where a policy or report goes, for the records that name an address.
fn reports_to(domain: &Domain) -> String {
    format!("postmaster@{domain}")
}

fn needed(hostname: &str, domain: &Domain, dkim: &[(String, String)], policy: &str) -> Vec<Needed> {
    let d = domain.to_string();
    let mut out = vec![
        Needed {
            name: d.clone(),
            kind: "MX",
            value: format!("10 {hostname}."),
            why: "where other servers deliver mail for the domain",
            required: true,
        },
        Needed {
            name: hostname.to_string(),
            kind: "A",
            value: "<this server's IPv4 address>".into(),
            why: "the mail server's address (AAAA too if it has IPv6)",
            required: true,
        },
        Needed {
            name: d.clone(),
            kind: "TXT",
            value: "v=spf1 mx -all".into(),
            why: "SPF (RFC 7208): only the MX hosts send the domain's mail",
            required: true,
        },
    ];
    for (name, value) in dkim {
        out.push(Needed {
            name: name.clone(),
            kind: "TXT",
            value: value.clone(),
            why: "a DKIM public key (RFC 6376) the server signs with",
            required: true,
        });
    }
    out.push(Needed {
        name: format!("_dmarc.{d}"),
        kind: "TXT",
        value: format!("v=DMARC1; p=quarantine; rua=mailto:{}", reports_to(domain)),
        why: "DMARC (RFC 7489): what receivers do with mail failing SPF and DKIM, and where aggregate reports go",
        required: true,
    });
    out.push(Needed {
        name: format!("_mta-sts.{d}"),
        kind: "TXT",
        // The id follows the policy's text: it changes exactly when the policy does.
        value: format!("v=STSv1; id={}", mailkeep_web::sts_policy_id(policy)),
        why: "MTA-STS (RFC 8461): senders must use TLS; change the id whenever the policy changes",
        required: false,
    });
    out.push(Needed {
        name: format!("mta-sts.{d}"),
        kind: "CNAME",
        value: format!("{hostname}."),
        why: "the HTTPS host serving the MTA-STS policy at /.well-known/mta-sts.txt",
        required: false,
    });
    out.push(Needed {
        name: format!("_smtp._tls.{d}"),
        kind: "TXT",
        value: format!("v=TLSRPTv1; rua=mailto:{}", reports_to(domain)),
        why: "TLS-RPT (RFC 8460): where senders report TLS failures",
        required: false,
    });
    out
}

fn zone_line(n: &Needed) -> String {
    let value = if n.kind == "TXT" {
        // One string holds at most 255 octets (RFC 1035 3.3.14): longer values are split.
        n.value
            .as_bytes()
            .chunks(250)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        n.value.clone()
    };
    format!("{}.\t3600\tIN\t{}\t{value}", n.name, n.kind)
}

/// The DKIM records of the domain's signing keys.
fn dkim_records(data_dir: &Path, domain: &Domain) -> Result<Vec<(String, String)>> {
    let dir = data_dir.join("dkim");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    let mut files: Vec<(String, std::path::PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".pem")?;
            let (rest, alg) = stem.rsplit_once('.')?;
            let (d, selector) = rest.rsplit_once('.')?;
            (d.eq_ignore_ascii_case(&domain.to_string()) && matches!(alg, "ed25519" | "rsa"))
                .then(|| (selector.to_string(), e.path()))
        })
        .collect();
    files.sort();
    for (selector, path) in files {
        out.push(crate::init::dkim_record(
            &path,
            &domain.to_string(),
            &selector,
        )?);
    }
    Ok(out)
}

pub fn dns(config: &Path, cmd: DnsCmd) -> Result<()> {
    let cfg = mailkeep_config::Config::load(config)?;
    match cmd {
        DnsCmd::Records { domain } => {
            let domain = Domain::parse(&domain).map_err(|e| anyhow::anyhow!("DOMAIN: {e}"))?;
            let dkim = dkim_records(&cfg.data_dir, &domain)?;
            println!("; the records {domain} needs (zone-file lines; TTLs are suggestions)");
            let policy = mailkeep_web::sts_policy(&cfg.hostname, &cfg.mta_sts);
            for n in needed(&cfg.hostname, &domain, &dkim, &policy) {
                println!(
                    "; {}{}",
                    n.why,
                    if n.required { "" } else { " (recommended)" }
                );
                println!("{}", zone_line(&n));
            }
            println!(
                "; reverse DNS: ask your hosting provider to point the PTR of each of this server's addresses to {}",
                cfg.hostname
            );
            println!(
                "; the MTA-STS policy the https listener serves at https://mta-sts.{domain}/.well-known/mta-sts.txt:"
            );
            for l in policy.lines() {
                println!(";   {l}");
            }
            Ok(())
        }
        DnsCmd::Check { domain, ip } => {
            let domain = Domain::parse(&domain).map_err(|e| anyhow::anyhow!("DOMAIN: {e}"))?;
            let dkim = dkim_records(&cfg.data_dir, &domain)?;
            let resolver = mailkeep_net::resolver(&cfg.dns.servers, cfg.dns.timeout)?;
            let verifier = mailkeep_verify::Verifier::new(
                &cfg.dns.servers,
                cfg.dns.timeout,
                &cfg.hostname,
                cfg.verify.clone(),
            )?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?;
            let sts = StsCheck {
                policy: mailkeep_web::sts_policy(&cfg.hostname, &cfg.mta_sts),
                tls: mailkeep_queue::client::verified_config(cfg.queue.ca_file.as_deref())
                    .map_err(|e| anyhow::anyhow!("queue.ca_file: {e}"))?,
                port: cfg.queue.mta_sts_port,
                timeout: cfg.dns.timeout.max(Duration::from_secs(10)),
            };
            let bad = rt.block_on(check(
                &resolver,
                &verifier,
                &cfg.hostname,
                &domain,
                &dkim,
                ip,
                &sts,
            ));
            if bad > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// What DNS said for a name and type.
enum Answer {
    Records(Vec<RData>),
    Nothing,
    Failed(String),
}

async fn ask(resolver: &TokioResolver, name: &str, kind: RecordType) -> Answer {
    match resolver.lookup(format!("{name}."), kind).await {
        Ok(l) => {
            let r: Vec<RData> = l
                .record_iter()
                .filter(|r| r.record_type() == kind)
                .map(|r| r.data().clone())
                .collect();
            if r.is_empty() {
                Answer::Nothing
            } else {
                Answer::Records(r)
            }
        }
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Answer::Nothing,
        Err(e) => Answer::Failed(e.to_string()),
    }
}

fn txts(a: &Answer) -> Vec<String> {
    match a {
        Answer::Records(r) => r
            .iter()
            .filter_map(|d| match d {
                RData::TXT(t) => Some(
                    t.txt_data()
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Prints one line per record; returns how many required ones are not right.
/// How `dns check` fetches the MTA-STS policy, and what it should say.
struct StsCheck {
    policy: String,
    tls: std::sync::Arc<rustls::ClientConfig>,
    port: u16,
    timeout: Duration,
}

async fn check(
    resolver: &TokioResolver,
    verifier: &mailkeep_verify::Verifier,
    hostname: &str,
    domain: &Domain,
    dkim: &[(String, String)],
    ips: Vec<IpAddr>,
    sts: &StsCheck,
) -> usize {
    let mut bad = 0;
    let mut report = |state: &str, n: &Needed, detail: String| {
        let fix = if state == "ok" {
            String::new()
        } else {
            format!("\n      fix: {}", zone_line(n))
        };
        let tag = if state != "ok" && !n.required {
            format!("{state} (recommended)")
        } else {
            state.to_string()
        };
        println!("{tag:<22} {} {} — {detail}{fix}", n.kind, n.name);
        if state != "ok" && n.required {
            bad += 1;
        }
    };
    let d = domain.to_string();
    // The server's addresses: given, or its host name's.
    let mut addrs = ips.clone();
    if addrs.is_empty() {
        for kind in [RecordType::A, RecordType::AAAA] {
            if let Answer::Records(r) = ask(resolver, hostname, kind).await {
                addrs.extend(r.iter().filter_map(|d| match d {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                }));
            }
        }
    }
    for n in needed(hostname, domain, dkim, &sts.policy) {
        match (n.kind, n.name.as_str()) {
            ("MX", _) => match ask(resolver, &n.name, RecordType::MX).await {
                Answer::Records(r) => {
                    let hosts: Vec<String> = r
                        .iter()
                        .filter_map(|d| match d {
                            RData::MX(m) => Some(
                                m.exchange()
                                    .to_ascii()
                                    .trim_end_matches('.')
                                    .to_ascii_lowercase(),
                            ),
                            _ => None,
                        })
                        .collect();
                    if hosts.iter().any(|h| h == &hostname.to_ascii_lowercase()) {
                        report("ok", &n, format!("MX hosts: {}", hosts.join(", ")));
                    } else {
                        report(
                            "wrong",
                            &n,
                            format!("MX hosts are {}, not {hostname}", hosts.join(", ")),
                        );
                    }
                }
                Answer::Nothing => report("missing", &n, "no MX record".into()),
                Answer::Failed(e) => report("missing", &n, format!("DNS failed: {e}")),
            },
            ("A", _) => {
                if addrs.is_empty() {
                    report("missing", &n, format!("{hostname} has no address"));
                } else if !ips.is_empty() {
                    let mut published = Vec::new();
                    for kind in [RecordType::A, RecordType::AAAA] {
                        if let Answer::Records(r) = ask(resolver, hostname, kind).await {
                            published.extend(r.iter().filter_map(|d| match d {
                                RData::A(a) => Some(IpAddr::V4(a.0)),
                                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                                _ => None,
                            }));
                        }
                    }
                    let missing: Vec<String> = ips
                        .iter()
                        .filter(|i| !published.contains(i))
                        .map(|i| i.to_string())
                        .collect();
                    if missing.is_empty() {
                        report("ok", &n, format!("{hostname} has {}", list(&published)));
                    } else {
                        report(
                            "wrong",
                            &n,
                            format!("{hostname} lacks {}", missing.join(", ")),
                        );
                    }
                } else {
                    report("ok", &n, format!("{hostname} has {}", list(&addrs)));
                }
            }
            ("TXT", name) if name == d => {
                let records: Vec<String> = txts(&ask(resolver, name, RecordType::TXT).await)
                    .into_iter()
                    .filter(|t| t.to_ascii_lowercase().starts_with("v=spf1"))
                    .collect();
                match records.as_slice() {
                    [] => report("missing", &n, "no SPF record".into()),
                    [_] => {
                        // The record must let this server send (as receivers will check it).
                        let mut failing = Vec::new();
                        for ip in &addrs {
                            let o = verifier
                                .check_spf(*ip, hostname, &format!("postmaster@{d}"))
                                .await;
                            if o.result() != mail_auth::SpfResult::Pass {
                                failing.push(format!(
                                    "{ip}: {}",
                                    mailkeep_verify::spf_word(o.result())
                                ));
                            }
                        }
                        if failing.is_empty() {
                            report("ok", &n, format!("\"{}\"", records[0]));
                        } else {
                            report(
                                "wrong",
                                &n,
                                format!(
                                    "\"{}\" does not pass for {}",
                                    records[0],
                                    failing.join(", ")
                                ),
                            );
                        }
                    }
                    _ => report(
                        "wrong",
                        &n,
                        "several SPF records (a permerror, RFC 7208 4.5)".into(),
                    ),
                }
            }
            ("TXT", name) if name.contains("._domainkey.") => {
                let got = txts(&ask(resolver, name, RecordType::TXT).await);
                let key = |v: &str| {
                    v.split(';')
                        .find_map(|t| t.trim().strip_prefix("p="))
                        .map(|p| p.split_whitespace().collect::<String>())
                };
                match got.first() {
                    None => report("missing", &n, "no DKIM key record".into()),
                    Some(g) if key(g).is_some() && key(g) == key(&n.value) => {
                        report("ok", &n, "the public key matches".into())
                    }
                    Some(_) => report("wrong", &n, "the published key is not this server's".into()),
                }
            }
            ("TXT", name) if name.starts_with("_dmarc.") => {
                let got: Vec<String> = txts(&ask(resolver, name, RecordType::TXT).await)
                    .into_iter()
                    .filter(|t| t.starts_with("v=DMARC1"))
                    .collect();
                match got.as_slice() {
                    [] => report("missing", &n, "no DMARC record".into()),
                    [one] if one.contains("p=") => report("ok", &n, format!("\"{one}\"")),
                    [one] => report("wrong", &n, format!("\"{one}\" has no p= policy")),
                    _ => report("wrong", &n, "several DMARC records".into()),
                }
            }
            ("TXT", name) if name.starts_with("_mta-sts.") => {
                let got: Vec<String> = txts(&ask(resolver, name, RecordType::TXT).await)
                    .into_iter()
                    .filter(|t| t.starts_with("v=STSv1"))
                    .collect();
                match got.as_slice() {
                    [] => report("missing", &n, "no MTA-STS record".into()),
                    [one] if mailkeep_queue::sts::record_id(one).is_some() => {
                        report("ok", &n, format!("\"{one}\""))
                    }
                    [one] => report("wrong", &n, format!("\"{one}\" has no valid id")),
                    _ => report("wrong", &n, "several MTA-STS records".into()),
                }
            }
            ("TXT", name) if name.starts_with("_smtp._tls.") => {
                let got: Vec<String> = txts(&ask(resolver, name, RecordType::TXT).await)
                    .into_iter()
                    .filter(|t| t.starts_with("v=TLSRPTv1"))
                    .collect();
                match got.as_slice() {
                    [] => report("missing", &n, "no TLS-RPT record".into()),
                    [one] if one.contains("rua=") => report("ok", &n, format!("\"{one}\"")),
                    [one] => report("wrong", &n, format!("\"{one}\" has no rua=")),
                    _ => report("wrong", &n, "several TLS-RPT records".into()),
                }
            }
            ("CNAME", name) => {
                // Any address for the policy host will do (a CNAME or its own A); the policy
                // fetched from it (RFC 8461 3.3, with a checked certificate) must be ours.
                let addr = match ask(resolver, name, RecordType::A).await {
                    Answer::Records(r) => r.iter().find_map(|d| match d {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        _ => None,
                    }),
                    _ => None,
                };
                let Some(addr) = addr else {
                    report(
                        "missing",
                        &n,
                        "the MTA-STS policy host does not resolve".into(),
                    );
                    continue;
                };
                let at = std::net::SocketAddr::new(addr, sts.port);
                match mailkeep_queue::sts::fetch(
                    &domain.to_string(),
                    at,
                    sts.tls.clone(),
                    sts.timeout,
                )
                .await
                {
                    Ok(text) => {
                        let ours = mailkeep_queue::sts::Policy::parse(&sts.policy);
                        match mailkeep_queue::sts::Policy::parse(&text) {
                            Ok(p) if Ok(&p) == ours.as_ref() => {
                                report("ok", &n, format!("serves our policy ({})", p.mode.as_str()))
                            }
                            Ok(p) if p.allows(hostname) => report(
                                "ok",
                                &n,
                                format!(
                                    "serves a policy naming {hostname} ({}), not the one configured here",
                                    p.mode.as_str()
                                ),
                            ),
                            Ok(_) => report(
                                "wrong",
                                &n,
                                format!("the policy it serves does not name {hostname}"),
                            ),
                            Err(e) => report("wrong", &n, format!("the policy it serves: {e}")),
                        }
                    }
                    Err(e) => report("wrong", &n, format!("the policy could not be fetched: {e}")),
                }
            }
            _ => {}
        }
    }
    // Reverse DNS: receivers distrust a server without it.
    for ip in &addrs {
        let rev = match ip {
            IpAddr::V4(_) => format!("{}.in-addr.arpa", crate::check::reversed(*ip)),
            IpAddr::V6(_) => format!("{}.ip6.arpa", crate::check::reversed(*ip)),
        };
        let ptr = Needed {
            name: rev.clone(),
            kind: "PTR",
            value: format!("{hostname}."),
            why: "reverse DNS of the server's address, set by the hosting provider",
            required: false,
        };
        let names: Vec<String> = match ask(resolver, &rev, RecordType::PTR).await {
            Answer::Records(r) => r
                .iter()
                .filter_map(|d| match d {
                    RData::PTR(p) => {
                        Some(p.0.to_ascii().trim_end_matches('.').to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if names.iter().any(|n| n == &hostname.to_ascii_lowercase()) {
            report("ok", &ptr, format!("{ip} points back to {hostname}"));
        } else if names.is_empty() {
            report(
                "missing",
                &ptr,
                format!("{ip} has no PTR; ask the hosting provider for {hostname}"),
            );
        } else {
            report(
                "wrong",
                &ptr,
                format!(
                    "{ip} points to {}; ask the hosting provider for {hostname}",
                    names.join(", ")
                ),
            );
        }
    }
    if bad == 0 {
        println!("{domain}: every required record is in place");
    } else {
        println!("{domain}: {bad} required record(s) missing or wrong");
    }
    bad
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
