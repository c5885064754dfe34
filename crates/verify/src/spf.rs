//! SPF (RFC 7208) `check_host()`, evaluated here rather than by mail-auth, whose evaluator
//! gives the OpenSPF suite's answer for only 139 of its 203 cases (it accepts malformed
//! records, turns invalid names into temperror, matches IPv4 clients against ip6, and
//! expands some macros wrongly). DNS still goes through mail-auth's hickory resolver; the
//! result is handed back as a [`mail_auth::SpfOutput`] for DMARC and Authentication-Results.
//!
//! Implementation notes:
//! - The whole record is parsed before anything is evaluated (RFC 7208 4.6: any syntax error
//!   is a permerror).
//! - At most 10 terms cause DNS lookups (include, a, mx, ptr, exists, redirect) and at most
//!   2 of those come back empty (void lookups); past either limit: permerror (4.6.4).
//! - An MX with more than 10 names is a permerror; PTR names past the 10th are ignored.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;

use mail_auth::hickory_resolver::proto::rr::{Name, RData, RecordType};
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::SpfResult;

/// Most DNS-querying terms (RFC 7208 4.6.4).
const MAX_LOOKUPS: u32 = 10;
/// Most lookups that find nothing (RFC 7208 4.6.4).
const MAX_VOID: u32 = 2;
/// Most names of an MX or PTR answer looked at (RFC 7208 4.6.4).
const MAX_NAMES: usize = 10;

/// A check's result and, for `fail`, the domain's explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The result.
    pub result: SpfResult,
    /// The explanation (RFC 7208 6.2), when the result is fail and the domain gave one.
    pub explanation: Option<String>,
}

/// Runs `check_host()` for the MAIL FROM identity (or `postmaster@HELO` for the null sender).
pub async fn check(
    resolver: &TokioResolver,
    ip: IpAddr,
    helo: &str,
    mail_from: &str,
    receiver: &str,
) -> (String, Outcome) {
    // RFC 7208 4.3: an IPv4-mapped IPv6 client is an IPv4 client.
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    };
    let sender = if mail_from.is_empty() {
        format!("postmaster@{helo}")
    } else {
        mail_from.to_string()
    };
    let (local, domain) = match sender.rsplit_once('@') {
        Some((l, d)) => (l.to_string(), d.to_string()),
        None => ("postmaster".to_string(), sender.clone()),
    };
    // RFC 7208 4.3: no local part means postmaster.
    let local = if local.is_empty() {
        "postmaster".to_string()
    } else {
        local
    };
    let mut ctx = Ctx {
        resolver,
        ip,
        sender: format!("{local}@{domain}"),
        local,
        sender_domain: domain.clone(),
        helo: helo.to_string(),
        receiver: receiver.to_string(),
        lookups: 0,
        voids: 0,
    };
    // RFC 7208 4.3: a domain that is not a valid FQDN gives none.
    if !valid_fqdn(&domain) {
        return (
            domain,
            Outcome {
                result: SpfResult::None,
                explanation: None,
            },
        );
    }
    let out = ctx.check_host(domain.clone(), 0).await;
    (domain, out)
}

struct Ctx<'a> {
    resolver: &'a TokioResolver,
    ip: IpAddr,
    sender: String,
    local: String,
    sender_domain: String,
    helo: String,
    receiver: String,
    lookups: u32,
    voids: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mechanism {
    All,
    Include(String),
    A(Option<String>, u8, u8),
    Mx(Option<String>, u8, u8),
    Ptr(Option<String>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Record {
    directives: Vec<(Qualifier, Mechanism)>,
    redirect: Option<String>,
    exp: Option<String>,
}

/// What a DNS question gave.
enum Dns<T> {
    Found(Vec<T>),
    /// NXDOMAIN or no record of the type.
    Void,
    /// A timeout or server failure.
    Error,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn outcome(result: SpfResult) -> Outcome {
    Outcome {
        result,
        explanation: None,
    }
}

impl<'a> Ctx<'a> {
    fn check_host(&mut self, domain: String, depth: u32) -> BoxFut<'_, Outcome> {
        Box::pin(async move {
            if depth > 20 {
                return outcome(SpfResult::PermError);
            }
            // RFC 7208 4.4 and 4.5: the TXT records starting "v=spf1".
            let texts = match self.txt(&domain).await {
                Dns::Found(t) => t,
                Dns::Void => return outcome(SpfResult::None),
                Dns::Error => return outcome(SpfResult::TempError),
            };
            let records: Vec<&Vec<u8>> = texts.iter().filter(|t| is_spf(t)).collect();
            let text = match records.as_slice() {
                [] => return outcome(SpfResult::None),
                [one] => *one,
                _ => return outcome(SpfResult::PermError),
            };
            let Some(record) = parse(text) else {
                return outcome(SpfResult::PermError);
            };
            self.evaluate(&domain, &record, depth).await
        })
    }

    async fn evaluate(&mut self, domain: &str, record: &Record, depth: u32) -> Outcome {
        for (q, m) in &record.directives {
            match self.matches(domain, m, depth).await {
                Ok(true) => {
                    let result = match q {
                        Qualifier::Pass => SpfResult::Pass,
                        Qualifier::Fail => SpfResult::Fail,
                        Qualifier::SoftFail => SpfResult::SoftFail,
                        Qualifier::Neutral => SpfResult::Neutral,
                    };
                    let explanation = if result == SpfResult::Fail {
                        self.explain(domain, record).await
                    } else {
                        None
                    };
                    return Outcome {
                        result,
                        explanation,
                    };
                }
                Ok(false) => {}
                Err(r) => return outcome(r),
            }
        }
        // RFC 7208 6.1: no match: redirect, else neutral.
        if let Some(spec) = &record.redirect {
            if let Err(r) = self.count_lookup() {
                return outcome(r);
            }
            let Some(target) = self.target(spec, domain).await else {
                return outcome(SpfResult::PermError);
            };
            let out = self.check_host(target, depth + 1).await;
            if out.result == SpfResult::None {
                return outcome(SpfResult::PermError);
            }
            return out;
        }
        outcome(SpfResult::Neutral)
    }

    fn count_lookup(&mut self) -> Result<(), SpfResult> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            Err(SpfResult::PermError)
        } else {
            Ok(())
        }
    }

    fn count_void(&mut self) -> Result<(), SpfResult> {
        self.voids += 1;
        if self.voids > MAX_VOID {
            Err(SpfResult::PermError)
        } else {
            Ok(())
        }
    }

    /// A domain-spec expanded for `domain`; None when it does not give a valid name.
    async fn target(&mut self, spec: &str, domain: &str) -> Option<String> {
        let p = if spec.to_ascii_lowercase().contains("%{p") {
            self.validated_name_for(domain).await
        } else {
            "unknown".to_string()
        };
        let expanded = self.expand_with(spec, domain, false, &p)?;
        let name = truncate(&expanded);
        valid_domain(&name).then_some(name)
    }

    fn matches<'s>(
        &'s mut self,
        domain: &'s str,
        m: &'s Mechanism,
        depth: u32,
    ) -> BoxFut<'s, Result<bool, SpfResult>> {
        Box::pin(async move {
            match m {
                Mechanism::All => Ok(true),
                Mechanism::Ip4(net, len) => Ok(match self.ip {
                    IpAddr::V4(ip) => in_v4(ip, *net, *len),
                    IpAddr::V6(_) => false,
                }),
                Mechanism::Ip6(net, len) => Ok(match self.ip {
                    IpAddr::V6(ip) => in_v6(ip, *net, *len),
                    IpAddr::V4(_) => false,
                }),
                Mechanism::Include(spec) => {
                    self.count_lookup()?;
                    let target = self
                        .target(spec, domain)
                        .await
                        .ok_or(SpfResult::PermError)?;
                    // RFC 7208 5.2: the included domain's result decides whether it matches.
                    match self.check_host(target, depth + 1).await.result {
                        SpfResult::Pass => Ok(true),
                        SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                        SpfResult::TempError => Err(SpfResult::TempError),
                        SpfResult::PermError | SpfResult::None => Err(SpfResult::PermError),
                    }
                }
                Mechanism::A(spec, c4, c6) => {
                    self.count_lookup()?;
                    let target = match spec {
                        Some(s) => self.target(s, domain).await.ok_or(SpfResult::PermError)?,
                        None => domain.to_string(),
                    };
                    match self.addresses(&target, self.ip.is_ipv6()).await {
                        Dns::Found(ips) => Ok(ips.iter().any(|a| self.in_net(*a, *c4, *c6))),
                        Dns::Void => self.count_void().map(|_| false),
                        Dns::Error => Err(SpfResult::TempError),
                    }
                }
                Mechanism::Mx(spec, c4, c6) => {
                    self.count_lookup()?;
                    let target = match spec {
                        Some(s) => self.target(s, domain).await.ok_or(SpfResult::PermError)?,
                        None => domain.to_string(),
                    };
                    let hosts = match self.mx(&target).await {
                        Dns::Found(h) => h,
                        Dns::Void => return self.count_void().map(|_| false),
                        Dns::Error => return Err(SpfResult::TempError),
                    };
                    if hosts.len() > MAX_NAMES {
                        return Err(SpfResult::PermError);
                    }
                    for host in hosts {
                        if host.is_empty() || host == "." {
                            continue;
                        }
                        match self.addresses(&host, self.ip.is_ipv6()).await {
                            Dns::Found(ips) => {
                                if ips.iter().any(|a| self.in_net(*a, *c4, *c6)) {
                                    return Ok(true);
                                }
                            }
                            Dns::Void => self.count_void()?,
                            Dns::Error => return Err(SpfResult::TempError),
                        }
                    }
                    Ok(false)
                }
                Mechanism::Ptr(spec) => {
                    self.count_lookup()?;
                    let target = match spec {
                        Some(s) => self.target(s, domain).await.ok_or(SpfResult::PermError)?,
                        None => domain.to_string(),
                    };
                    let target = target.trim_end_matches('.').to_ascii_lowercase();
                    // RFC 7208 5.5: a DNS error makes ptr not match.
                    let names = self.validated_names().await?;
                    Ok(names.iter().any(|n| {
                        let n = n.trim_end_matches('.').to_ascii_lowercase();
                        n == target || n.ends_with(&format!(".{target}"))
                    }))
                }
                Mechanism::Exists(spec) => {
                    self.count_lookup()?;
                    let target = self
                        .target(spec, domain)
                        .await
                        .ok_or(SpfResult::PermError)?;
                    // RFC 7208 5.7: an A query, whatever the client's address family.
                    match self.addresses(&target, false).await {
                        Dns::Found(ips) => Ok(!ips.is_empty()),
                        Dns::Void => self.count_void().map(|_| false),
                        Dns::Error => Err(SpfResult::TempError),
                    }
                }
            }
        })
    }

    fn in_net(&self, addr: IpAddr, c4: u8, c6: u8) -> bool {
        match (self.ip, addr) {
            (IpAddr::V4(ip), IpAddr::V4(a)) => in_v4(ip, a, c4),
            (IpAddr::V6(ip), IpAddr::V6(a)) => in_v6(ip, a, c6),
            _ => false,
        }
    }

    /// The client's PTR names whose addresses include the client (RFC 7208 5.5), at most 10
    /// asked. A failed PTR lookup gives none.
    async fn validated_names(&mut self) -> Result<Vec<String>, SpfResult> {
        let names = match self.ptr().await {
            Dns::Found(n) => n,
            Dns::Void => {
                self.count_void()?;
                return Ok(Vec::new());
            }
            Dns::Error => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for name in names.into_iter().take(MAX_NAMES) {
            if let Dns::Found(ips) = self.addresses(&name, self.ip.is_ipv6()).await {
                if ips.contains(&self.ip) {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }

    /// The explanation of a fail (RFC 7208 6.2): the exp= domain's one TXT record, expanded;
    /// None on any problem.
    async fn explain(&mut self, domain: &str, record: &Record) -> Option<String> {
        let spec = record.exp.as_ref()?;
        let target = self.target(spec, domain).await?;
        let texts = match self.txt(&target).await {
            Dns::Found(t) => t,
            _ => return None,
        };
        let [text] = texts.as_slice() else {
            return None;
        };
        // RFC 7208 6.2: US-ASCII only.
        if !text.is_ascii() {
            return None;
        }
        let text = String::from_utf8_lossy(text).into_owned();
        let expanded = self.expand_exp(&text, domain).await?;
        Some(expanded)
    }

    /// An explanation string: macro-strings and spaces; %{p} is looked up here.
    async fn expand_exp(&mut self, text: &str, domain: &str) -> Option<String> {
        if text.to_ascii_lowercase().contains("%{p") {
            let p = self.validated_name_for(domain).await;
            return self.expand_with(text, domain, true, &p);
        }
        self.expand_with(text, domain, true, "unknown")
    }

    /// The name %{p} stands for: a validated name in `domain` (or under it), else any
    /// validated name, else "unknown" (RFC 7208 7.3).
    async fn validated_name_for(&mut self, domain: &str) -> String {
        let names = self.validated_names().await.unwrap_or_default();
        let domain = domain.to_ascii_lowercase();
        names
            .iter()
            .find(|n| {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                n == domain || n.ends_with(&format!(".{domain}"))
            })
            .or(names.first())
            .map(|n| n.trim_end_matches('.').to_string())
            .unwrap_or_else(|| "unknown".into())
    }

    /// RFC 7208 7: macro expansion. None: a syntax error (or c/r/t outside an explanation).
    fn expand_with(&self, spec: &str, domain: &str, exp: bool, p: &str) -> Option<String> {
        let mut out = String::new();
        let b = spec.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c != b'%' {
                out.push(c as char);
                i += 1;
                continue;
            }
            match b.get(i + 1) {
                Some(b'%') => out.push('%'),
                Some(b'_') => out.push(' '),
                Some(b'-') => out.push_str("%20"),
                Some(b'{') => {
                    let end = spec[i + 2..].find('}')? + i + 2;
                    let body = &spec[i + 2..end];
                    out.push_str(&self.macro_value(body, domain, exp, p)?);
                    i = end + 1;
                    continue;
                }
                _ => return None,
            }
            i += 2;
        }
        Some(out)
    }

    fn macro_value(&self, body: &str, domain: &str, exp: bool, p: &str) -> Option<String> {
        let mut chars = body.chars();
        let letter = chars.next()?;
        let rest: String = chars.collect();
        let value = match letter.to_ascii_lowercase() {
            's' => self.sender.clone(),
            'l' => self.local.clone(),
            'o' => self.sender_domain.clone(),
            'd' => domain.to_string(),
            'i' => dotted(self.ip),
            'p' => p.to_string(),
            'v' => if self.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
            'h' => self.helo.clone(),
            'c' if exp => self.ip.to_string(),
            'r' if exp => self.receiver.clone(),
            't' if exp => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .to_string(),
            _ => return None,
        };
        // transformers = *DIGIT [ "r" ]; then delimiters.
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let mut tail = &rest[digits.len()..];
        let reverse = tail.starts_with(['r', 'R']);
        if reverse {
            tail = &tail[1..];
        }
        if !tail.chars().all(|c| ".-+,/_=".contains(c)) {
            return None;
        }
        let keep: Option<usize> = if digits.is_empty() {
            None
        } else {
            match digits.parse::<usize>() {
                Ok(0) | Err(_) => return None,
                Ok(n) => Some(n),
            }
        };
        let delims: Vec<char> = if tail.is_empty() {
            vec!['.']
        } else {
            tail.chars().collect()
        };
        let mut parts: Vec<&str> = value.split(|c| delims.contains(&c)).collect();
        if reverse {
            parts.reverse();
        }
        if let Some(n) = keep {
            if parts.len() > n {
                parts = parts[parts.len() - n..].to_vec();
            }
        }
        let joined = parts.join(".");
        // RFC 7208 7.3: an upper-case macro letter is URL-escaped.
        Some(if letter.is_ascii_uppercase() {
            url_escape(&joined)
        } else {
            joined
        })
    }

    async fn lookup(&self, name: &str, kind: RecordType) -> Dns<RData> {
        // Labels as they are (a macro can put any character in a name, RFC 7208 7.3).
        let labels: Vec<&[u8]> = name
            .trim_end_matches('.')
            .split('.')
            .map(|l| l.as_bytes())
            .collect();
        let Ok(mut fqdn) = Name::from_labels(labels) else {
            return Dns::Void;
        };
        fqdn.set_fqdn(true);
        match self.resolver.lookup(fqdn, kind).await {
            Ok(l) => {
                let found: Vec<RData> = l
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == kind)
                    .map(|r| r.data.clone())
                    .collect();
                if found.is_empty() {
                    Dns::Void
                } else {
                    Dns::Found(found)
                }
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Dns::Void,
            Err(_) => Dns::Error,
        }
    }

    async fn txt(&self, name: &str) -> Dns<Vec<u8>> {
        match self.lookup(name, RecordType::TXT).await {
            Dns::Found(r) => Dns::Found(
                r.into_iter()
                    .filter_map(|d| match d {
                        RData::TXT(t) => Some(t.txt_data.iter().flat_map(|s| s.to_vec()).collect()),
                        _ => None,
                    })
                    .collect(),
            ),
            Dns::Void => Dns::Void,
            Dns::Error => Dns::Error,
        }
    }

    async fn addresses(&self, name: &str, v6: bool) -> Dns<IpAddr> {
        let kind = if v6 { RecordType::AAAA } else { RecordType::A };
        match self.lookup(name, kind).await {
            Dns::Found(r) => Dns::Found(
                r.into_iter()
                    .filter_map(|d| match d {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect(),
            ),
            Dns::Void => Dns::Void,
            Dns::Error => Dns::Error,
        }
    }

    async fn mx(&self, name: &str) -> Dns<String> {
        match self.lookup(name, RecordType::MX).await {
            Dns::Found(r) => Dns::Found(
                r.into_iter()
                    .filter_map(|d| match d {
                        RData::MX(m) => Some(name_text(&m.exchange)),
                        _ => None,
                    })
                    .collect(),
            ),
            Dns::Void => Dns::Void,
            Dns::Error => Dns::Error,
        }
    }

    async fn ptr(&self) -> Dns<String> {
        let name = reverse_name(self.ip);
        match self.lookup(&name, RecordType::PTR).await {
            Dns::Found(r) => Dns::Found(
                r.into_iter()
                    .filter_map(|d| match d {
                        RData::PTR(p) => Some(name_text(&p.0)),
                        _ => None,
                    })
                    .collect(),
            ),
            Dns::Void => Dns::Void,
            Dns::Error => Dns::Error,
        }
    }
}

/// A name's labels as they are, joined by dots (no escaping).
fn name_text(name: &Name) -> String {
    name.iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

/// RFC 7208 4.5: "v=spf1" followed by a space or nothing (case-insensitive).
fn is_spf(t: &[u8]) -> bool {
    t.len() >= 6 && t[..6].eq_ignore_ascii_case(b"v=spf1") && (t.len() == 6 || t[6] == b' ')
}

/// RFC 7208 4.6: the record's terms; None on any syntax error.
fn parse(text: &[u8]) -> Option<Record> {
    // Only printable ASCII and spaces (RFC 7208 12: the record is US-ASCII).
    if !text.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?;
    let mut record = Record::default();
    for term in text[6..].split(' ').filter(|t| !t.is_empty()) {
        let (qualifier, body) = match term.as_bytes()[0] {
            b'+' => (Some(Qualifier::Pass), &term[1..]),
            b'-' => (Some(Qualifier::Fail), &term[1..]),
            b'~' => (Some(Qualifier::SoftFail), &term[1..]),
            b'?' => (Some(Qualifier::Neutral), &term[1..]),
            _ => (None, term),
        };
        // A modifier: name "=" macro-string, with no qualifier.
        let name_end = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
            .unwrap_or(body.len());
        if qualifier.is_none() && body[name_end..].starts_with('=') {
            let name = &body[..name_end];
            let value = &body[name_end + 1..];
            if name.is_empty() || !name.as_bytes()[0].is_ascii_alphabetic() {
                return None;
            }
            match name.to_ascii_lowercase().as_str() {
                "redirect" => {
                    if record.redirect.is_some() || !valid_domain_spec(value) {
                        return None;
                    }
                    record.redirect = Some(value.to_string());
                }
                "exp" => {
                    if record.exp.is_some() || !valid_domain_spec(value) {
                        return None;
                    }
                    record.exp = Some(value.to_string());
                }
                // Unknown modifiers are ignored, but their value must be a macro-string.
                _ => {
                    if !valid_macro_string(value) {
                        return None;
                    }
                }
            }
            continue;
        }
        let mechanism = parse_mechanism(body)?;
        record
            .directives
            .push((qualifier.unwrap_or(Qualifier::Pass), mechanism));
    }
    Some(record)
}

fn parse_mechanism(body: &str) -> Option<Mechanism> {
    let name_end = body.find([':', '/']).unwrap_or(body.len());
    let name = body[..name_end].to_ascii_lowercase();
    let rest = &body[name_end..];
    let arg = rest.strip_prefix(':');
    match name.as_str() {
        "all" if rest.is_empty() => Some(Mechanism::All),
        "include" => {
            let spec = arg.filter(|s| valid_domain_spec(s))?;
            Some(Mechanism::Include(spec.to_string()))
        }
        "exists" => {
            let spec = arg.filter(|s| valid_domain_spec(s))?;
            Some(Mechanism::Exists(spec.to_string()))
        }
        "a" | "mx" => {
            let (spec, c4, c6) = if let Some(a) = arg {
                let (spec, c4, c6) = split_cidr(a)?;
                if !valid_domain_spec(spec) {
                    return None;
                }
                (Some(spec.to_string()), c4, c6)
            } else {
                let (spec, c4, c6) = split_cidr(rest)?;
                if !spec.is_empty() {
                    return None;
                }
                (None, c4, c6)
            };
            Some(if name == "a" {
                Mechanism::A(spec, c4, c6)
            } else {
                Mechanism::Mx(spec, c4, c6)
            })
        }
        "ptr" => match arg {
            Some(s) if valid_domain_spec(s) => Some(Mechanism::Ptr(Some(s.to_string()))),
            Some(_) => None,
            None if rest.is_empty() => Some(Mechanism::Ptr(None)),
            None => None,
        },
        "ip4" => {
            let a = arg?;
            let (addr, len) = match a.split_once('/') {
                Some((addr, len)) => (addr, cidr(len, 32)?),
                None => (a, 32),
            };
            Some(Mechanism::Ip4(addr.parse().ok()?, len))
        }
        "ip6" => {
            let a = arg?;
            let (addr, len) = match a.split_once('/') {
                Some((addr, len)) => (addr, cidr(len, 128)?),
                None => (a, 128),
            };
            Some(Mechanism::Ip6(addr.parse().ok()?, len))
        }
        _ => None,
    }
}

/// A CIDR length: digits without a leading zero (but "0"), at most `max`.
fn cidr(s: &str, max: u8) -> Option<u8> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    let n: u8 = s.parse().ok()?;
    (n <= max).then_some(n)
}

/// Splits `domain-spec/4//6`, `/4`, `//6` (RFC 7208 5.6 dual-cidr-length) off the end.
fn split_cidr(s: &str) -> Option<(&str, u8, u8)> {
    let mut spec = s;
    let mut c6 = 128;
    let mut c4 = 32;
    // Only digits after the slash make a CIDR length (a slash can be part of a macro).
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if let Some(pos) = spec.rfind("//") {
        let len = &spec[pos + 2..];
        if digits(len) {
            c6 = cidr(len, 128)?;
            spec = &spec[..pos];
        }
    }
    if let Some(pos) = spec.rfind('/') {
        let len = &spec[pos + 1..];
        if digits(len) {
            c4 = cidr(len, 32)?;
            spec = &spec[..pos];
        }
    }
    Some((spec, c4, c6))
}

/// macro-string (RFC 7208 7.1): literal visible characters and valid macros.
fn valid_macro_string(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match b.get(i + 1) {
                Some(b'%') | Some(b'_') | Some(b'-') => i += 2,
                Some(b'{') => {
                    let Some(end) = s[i + 2..].find('}') else {
                        return false;
                    };
                    let body = &s[i + 2..i + 2 + end];
                    if !valid_macro_body(body) {
                        return false;
                    }
                    i += 3 + end;
                }
                _ => return false,
            },
            0x21..=0x7e => i += 1,
            _ => return false,
        }
    }
    true
}

fn valid_macro_body(body: &str) -> bool {
    let mut chars = body.chars();
    let Some(letter) = chars.next() else {
        return false;
    };
    if !"slodiphcrtv".contains(letter.to_ascii_lowercase()) {
        return false;
    }
    let rest: String = chars.collect();
    let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
    let mut tail = &rest[digits..];
    if tail.starts_with(['r', 'R']) {
        tail = &tail[1..];
    }
    tail.chars().all(|c| ".-+,/_=".contains(c))
}

/// domain-spec (RFC 7208 7.1): a macro-string ending in a macro or in "." toplabel ["."];
/// the letters c, r and t belong to explanations only (RFC 7208 7.3).
fn valid_domain_spec(s: &str) -> bool {
    if !valid_macro_string(s) {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    if lower.contains("%{c") || lower.contains("%{r") || lower.contains("%{t") {
        return false;
    }
    if s.ends_with('}') {
        return true;
    }
    let t = s.strip_suffix('.').unwrap_or(s);
    let Some((_, top)) = t.rsplit_once('.') else {
        return false;
    };
    valid_toplabel(top)
}

/// toplabel: letters, digits and inner hyphens, not all digits (RFC 7208 7.1).
fn valid_toplabel(top: &str) -> bool {
    !top.is_empty()
        && top.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !top.starts_with('-')
        && !top.ends_with('-')
        && !top.bytes().all(|b| b.is_ascii_digit())
}

/// A mail domain (RFC 7208 4.3): several labels of letters, digits, hyphens and underscores,
/// the last not all digits.
fn valid_fqdn(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    valid_domain(n)
        && n.contains('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && n.rsplit('.')
            .next()
            .is_some_and(|t| !t.bytes().all(|b| b.is_ascii_digit()))
}

/// A name that can be asked of DNS: labels of 1 to 63 octets, 253 in all.
fn valid_domain(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && n.is_ascii()
        && !n.bytes().any(|b| b.is_ascii_control())
}

/// RFC 7208 7.3: an expanded name over 253 characters loses labels on the left.
fn truncate(name: &str) -> String {
    let mut n = name.trim_end_matches('.');
    while n.len() > 253 {
        match n.split_once('.') {
            Some((_, rest)) => n = rest,
            None => break,
        }
    }
    n.to_string()
}

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(len.min(32)));
    (u32::from(ip) & mask) == (u32::from(net) & mask)
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(len.min(128)));
    (u128::from(ip) & mask) == (u128::from(net) & mask)
}

/// %{i}: dotted IPv4, or IPv6 as dot-separated nibbles (RFC 7208 7.3).
fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .flat_map(|b| [b >> 4, b & 0xf])
            .map(|n| format!("{n:X}"))
            .collect::<Vec<_>>()
            .join("."),
    }
}

fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut nibbles: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .map(|n| format!("{n:x}"))
                .collect();
            nibbles.reverse();
            format!("{}.ip6.arpa", nibbles.join("."))
        }
    }
}

/// RFC 3986 escaping of everything but the unreserved characters.
fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_strictly() {
        assert!(
            parse(b"v=spf1 ip4:192.0.2.0/24 a mx/24//64 include:_spf.example.com ~all").is_some()
        );
        for bad in [
            "v=spf1 ip4:1.2.3.4/033",
            "v=spf1 ip4:1.2.3.4/33",
            "v=spf1 a:example.123",
            "v=spf1 a:example",
            "v=spf1 foo",
            "v=spf1 =x",
            "v=spf1 redirect=a.example redirect=b.example",
            "v=spf1 exists:%{q}.example.com",
            "v=spf1 all:x",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
        }
        assert!(parse(b"v=spf1 unknown-mod=%{d}.x -all").is_some());
        assert!(is_spf(b"v=spf1") && is_spf(b"V=SPF1 -all") && !is_spf(b"v=spf10"));
    }

    #[test]
    fn cidr_matching_and_names() {
        assert!(in_v4(
            "192.0.2.200".parse().unwrap(),
            "192.0.2.0".parse().unwrap(),
            24
        ));
        assert!(!in_v4(
            "192.0.3.1".parse().unwrap(),
            "192.0.2.0".parse().unwrap(),
            24
        ));
        assert!(in_v6(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::".parse().unwrap(),
            32
        ));
        assert_eq!(
            reverse_name("2001:db8::cb01".parse().unwrap()),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
        assert_eq!(url_escape("a&b=c d"), "a%26b%3Dc%20d");
        let t = truncate(&format!("{}example.com", "x.".repeat(200)));
        assert!(
            t.len() <= 253 && t.len() > 250 && t.ends_with(".example.com"),
            "{t}"
        );
    }
}
