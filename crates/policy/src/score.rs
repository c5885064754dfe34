//! The spam score of a message: the classifier's probability moved by rules, each a named
//! piece of evidence with a weight, and the `X-Spam-Status` field that shows them.
//!
//! Implementation notes:
//! - Weights are in log-odds: the score is `σ(logit(p) + Σ weights)`, where `p` is the
//!   classifier's probability (kept within 0.001..0.999 so that rules can still move it),
//!   or 0.1 while no model is ready. The score stays a probability, so the thresholds
//!   (`spam.junk`, `spam.reject`) keep their meaning with or without rules; a rule of +1.4
//!   moves 0.5 to 0.8.
//! - Content rules look at the message alone, as SpamAssassin's header and body tests do:
//!   missing or odd header fields, dates far from when the mail arrived, display names
//!   holding another address, HTML-only or image-only bodies, links whose text names
//!   another host. Their weights are small: each alone cannot make ham spam.
//! - Context rules come from what the SMTP session knows: SPF, DKIM, DMARC and iprev
//!   results, a From: of one of our own domains that is not authenticated, and listings
//!   on DNS blocklists of the client, the sender's domains and the message's links.
//! - A user's allowlist and blocklist weigh ±20: they decide.

use std::collections::BTreeSet;

/// A rule that matched, with its weight in log-odds (positive: spam).
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Upper-case name, e.g. `HTML_ONLY`.
    pub name: String,
    /// Log-odds added to the score.
    pub weight: f64,
}

impl Hit {
    /// A hit of `name` weighing `weight`.
    pub fn new(name: impl Into<String>, weight: f64) -> Hit {
        Hit {
            name: name.into(),
            weight,
        }
    }
}

/// The probability used when no classifier model is ready: mail is taken as ham unless
/// rules say otherwise.
pub const PRIOR: f64 = 0.1;

/// Weight of a user's allowlist (negative) and blocklist (positive) entries.
pub const USER_LIST_WEIGHT: f64 = 20.0;

/// Sender authentication as the MX checked it: `pass`, `fail`, `softfail`, `none`, ...
/// (RFC 8601 result words); None when not checked.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// SPF of MAIL FROM.
    pub spf: Option<String>,
    /// DKIM: `pass` when any signature passed, else `fail` when any failed, else `none`.
    pub dkim: Option<String>,
    /// DMARC, with the policy of the From: domain (`none`, `quarantine`, `reject`).
    pub dmarc: Option<(String, String)>,
    /// The DMARC policy was applied to the message already (Junk or refusal).
    pub dmarc_applied: bool,
    /// iprev.
    pub iprev: Option<String>,
}

/// What the SMTP session knows of a message besides its content.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Authentication results.
    pub auth: Auth,
    /// The From: domain is one of ours (or a subdomain) and did not pass DMARC.
    pub forged_own_domain: bool,
    /// Listings found: (rule name, what was listed and where), e.g. (`RHSBL`,
    /// `spam.test on dbl.example`).
    pub listings: Vec<(String, String)>,
}

/// The rules from the context, in a fixed order.
pub fn context_rules(ctx: &Context) -> Vec<Hit> {
    let mut out = Vec::new();
    let a = &ctx.auth;
    match a.spf.as_deref() {
        Some("pass") => out.push(Hit::new("SPF_PASS", -0.3)),
        Some("fail") => out.push(Hit::new("SPF_FAIL", 1.0)),
        Some("softfail") => out.push(Hit::new("SPF_SOFTFAIL", 0.5)),
        _ => {}
    }
    match a.dkim.as_deref() {
        Some("pass") => out.push(Hit::new("DKIM_PASS", -0.3)),
        // Mailing lists break signatures often: a weak sign.
        Some("fail") => out.push(Hit::new("DKIM_FAIL", 0.3)),
        _ => {}
    }
    match &a.dmarc {
        Some((r, _)) if r == "pass" => out.push(Hit::new("DMARC_PASS", -1.0)),
        // A policy applied (quarantine to Junk, reject) has acted already.
        Some((r, _)) if r == "fail" && !a.dmarc_applied => out.push(Hit::new("DMARC_FAIL", 1.0)),
        _ => {}
    }
    if a.iprev.as_deref() == Some("fail") {
        out.push(Hit::new("IPREV_FAIL", 0.5));
    }
    if ctx.forged_own_domain {
        out.push(Hit::new("FROM_OUR_DOMAIN_UNAUTH", 2.5));
    }
    let mut seen = BTreeSet::new();
    for (rule, _) in &ctx.listings {
        // One weight per kind of list, however many list it.
        if seen.insert(rule.clone()) {
            out.push(Hit::new(format!("{rule}_LISTED"), 3.0));
        }
    }
    out
}

/// The rules on the message's content. `now` is when it arrived (Unix seconds); None
/// takes the date of its newest Received field (for stored corpora).
pub fn content_rules(message: &[u8], now: Option<i64>) -> Vec<Hit> {
    let mut out = Vec::new();
    let Some(m) = mail_parser::MessageParser::default().parse(message) else {
        out.push(Hit::new("MISSING_HEADERS", 1.5));
        return out;
    };
    let from = m.from().and_then(|f| f.first());
    match from.and_then(|f| f.address()) {
        Some(_) => {}
        None => out.push(Hit::new("MISSING_FROM", 1.5)),
    }
    if m.message_id().is_none() {
        out.push(Hit::new("MISSING_MESSAGE_ID", 0.5));
    }
    if m.subject().is_none_or(|s| s.trim().is_empty()) {
        out.push(Hit::new("MISSING_SUBJECT", 0.3));
    }
    if m.to().is_none() && m.cc().is_none() {
        out.push(Hit::new("MISSING_TO", 0.3));
    }
    // Dates (SpamAssassin's DATE_IN_FUTURE / DATE_IN_PAST): against the arrival time.
    let arrived = now.or_else(|| {
        m.received()
            .and_then(|r| r.date())
            .map(|d| d.to_timestamp())
    });
    match (m.date().map(|d| d.to_timestamp()), arrived) {
        (None, _) => out.push(Hit::new("MISSING_DATE", 0.5)),
        (Some(d), Some(now)) if d > now + 12 * 3600 => out.push(Hit::new("DATE_IN_FUTURE", 1.0)),
        (Some(d), Some(now)) if d < now - 4 * 86400 => out.push(Hit::new("DATE_IN_PAST", 0.5)),
        _ => {}
    }
    // A display name that is an address other than the sender's: "paypal.com <x@y>".
    if let (Some(name), Some(addr)) = (from.and_then(|f| f.name()), from.and_then(|f| f.address()))
    {
        let domain = addr.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
        let named = name
            .split(|c: char| c.is_whitespace() || "<>()\"',;".contains(c))
            .filter_map(|w| w.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
            .find(|d| d.contains('.'));
        if let (Some(n), Some(d)) = (named, domain) {
            if registered(&n) != registered(&d) {
                out.push(Hit::new("FROM_NAME_OTHER_ADDRESS", 1.5));
            }
        }
    }
    if let Some(s) = m.subject() {
        let letters: Vec<char> = s.chars().filter(|c| c.is_alphabetic()).collect();
        if letters.len() >= 10 && letters.iter().all(|c| c.is_uppercase()) {
            out.push(Hit::new("SUBJECT_ALL_CAPS", 0.5));
        }
    }
    // Bodies.
    let has = |html: bool| {
        m.parts.iter().any(|p| match p.body {
            mail_parser::PartType::Html(_) => html,
            mail_parser::PartType::Text(_) => !html,
            _ => false,
        })
    };
    if has(true) && !has(false) {
        out.push(Hit::new("HTML_ONLY", 0.5));
    }
    let mut mismatch = false;
    let mut image_only = false;
    for p in &m.parts {
        if let mail_parser::PartType::Html(h) = &p.body {
            let lower = h.to_lowercase();
            mismatch |= link_text_mismatch(&lower);
            if lower.contains("<img") && visible_text(&lower).chars().count() < 200 {
                image_only = true;
            }
        }
    }
    if mismatch {
        out.push(Hit::new("HTML_LINK_MISMATCH", 1.5));
    }
    if image_only && !has(false) {
        out.push(Hit::new("HTML_IMAGE_ONLY", 1.0));
    }
    out
}

/// The text of an HTML document outside its tags (entities left as they are).
fn visible_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag && !c.is_whitespace() => out.push(c),
            _ => {}
        }
    }
    out
}

/// A link whose text is an address of another host than the one it leads to, the phishing
/// pattern `<a href="http://evil.test/">https://bank.test/</a>`. `html` is lower-cased.
fn link_text_mismatch(html: &str) -> bool {
    for part in html.split("<a ").skip(1) {
        let Some(href) = attr(part, "href") else {
            continue;
        };
        let Some(target) = host_of(href) else {
            continue;
        };
        let Some(text) = part
            .split_once('>')
            .and_then(|(_, rest)| rest.split_once("</a").map(|(t, _)| t))
        else {
            continue;
        };
        let text = visible_text(text);
        if let Some(shown) = host_of(&text) {
            let (a, b) = (registered(&shown), registered(&target));
            if a != b {
                return true;
            }
        }
    }
    false
}

/// The value of attribute `name` in the inside of a tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let end = tag.find('>').unwrap_or(tag.len());
    let tag = &tag[..end];
    let i = tag.find(&format!("{name}="))?;
    let v = &tag[i + name.len() + 1..];
    let v = v.trim_start();
    match v.chars().next()? {
        q @ ('"' | '\'') => v[1..].split(q).next(),
        _ => v.split(|c: char| c.is_whitespace()).next(),
    }
}

/// The host of an http(s) URL, lower-cased.
fn host_of(url: &str) -> Option<String> {
    let url = url.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let host = rest
        .split(['/', '?', '#', ':', '"', '\'', '>', ' '])
        .next()?;
    let host = host.rsplit('@').next()?.trim_end_matches('.');
    (host.contains('.') && !host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Second-level labels under which country domains register names (`example.co.uk`,
/// `example.com.au`, `example.ne.jp`).
const SECOND_LEVEL: &[&str] = &[
    "ac", "co", "com", "edu", "go", "gob", "gov", "govt", "ltd", "mil", "ne", "net", "nic", "nom",
    "or", "org", "plc", "sch",
];

/// The registered domain of a host name: its last two labels, three under a country code's
/// second level (`example.co.uk`). Close enough for comparing hosts and asking URI
/// blocklists without a public suffix list. An IPv4 address is returned as it is.
pub fn registered(host: &str) -> String {
    let host = host.trim_end_matches('.');
    let labels: Vec<&str> = host.split('.').collect();
    if labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return host.to_string();
    }
    let n = labels.len();
    let keep = if n >= 3 && labels[n - 1].len() == 2 && SECOND_LEVEL.contains(&labels[n - 2]) {
        3
    } else {
        2
    };
    labels[n.saturating_sub(keep)..].join(".")
}

/// The name a domain list (RHSBL, URI blocklist) is asked about for `domain`: the domain,
/// or an IPv4 address's octets reversed (as URI blocklists list addresses in links).
pub fn list_query(domain: &str) -> String {
    match domain.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => {
            let o = ip.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        Err(_) => domain.to_string(),
    }
}

/// The registered domains that the message's links lead to, at most `max`, in the order
/// found: for URI blocklists.
pub fn link_domains(message: &[u8], max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Some(m) = mail_parser::MessageParser::default().parse(message) else {
        return out;
    };
    let mut add = |host: String| {
        let d = registered(&host);
        if !d.is_empty() && !out.contains(&d) && out.len() < max {
            out.push(d);
        }
    };
    for p in &m.parts {
        match &p.body {
            mail_parser::PartType::Html(h) => {
                let lower = h.to_lowercase();
                for part in lower.split("href=").skip(1) {
                    let v = part.trim_start_matches(['"', '\'']);
                    if let Some(h) = host_of(v) {
                        add(h);
                    }
                }
            }
            mail_parser::PartType::Text(t) => {
                for w in t.split(|c: char| c.is_whitespace() || "<>\"'()".contains(c)) {
                    if let Some(h) = host_of(w) {
                        add(h);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The score: the classifier's probability (`bayes`, None while no model is ready) moved
/// by the rules' weights; 0 (ham) to 1 (spam).
pub fn combine(bayes: Option<f64>, hits: &[Hit]) -> f64 {
    let p = bayes.unwrap_or(PRIOR).clamp(0.001, 0.999);
    let logit = (p / (1.0 - p)).ln() + hits.iter().map(|h| h.weight).sum::<f64>();
    1.0 / (1.0 + (-logit).exp())
}

/// The `X-Spam-Status` field (SpamAssassin's form, CRLF-terminated): the verdict, the
/// score against the junk threshold, and every test with its weight.
pub fn status_field(score: f64, required: f64, bayes: Option<f64>, hits: &[Hit]) -> String {
    let mut tests: Vec<String> = Vec::new();
    if let Some(p) = bayes {
        tests.push(format!("BAYES({p:.3})"));
    }
    tests.extend(hits.iter().map(|h| format!("{}({:+.1})", h.name, h.weight)));
    let tests = if tests.is_empty() {
        "none".to_string()
    } else {
        tests.join(",")
    };
    format!(
        "X-Spam-Status: {}, score={score:.3} required={required:.2}\r\n\ttests={tests}\r\n",
        if score >= required { "Yes" } else { "No" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(h: &[Hit]) -> Vec<&str> {
        h.iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn a_plain_message_hits_nothing() {
        let m = b"From: A <a@b.test>\r\nTo: c@d.test\r\nSubject: lunch\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@b.test>\r\n\r\nSee you at noon.\r\n";
        assert!(content_rules(m, Some(1_795_860_000)).is_empty());
    }

    #[test]
    fn anomalies_are_named() {
        let m = b"From: \"service@bank.test\" <x@evil.test>\r\nSubject: URGENT ACCOUNT NOTICE\r\nContent-Type: text/html\r\n\r\n<p>Log in at <a href=\"http://evil.test/login\">https://www.bank.test/</a></p>\r\n";
        let h = content_rules(m, Some(1_795_860_000));
        assert_eq!(
            names(&h),
            [
                "MISSING_MESSAGE_ID",
                "MISSING_TO",
                "MISSING_DATE",
                "FROM_NAME_OTHER_ADDRESS",
                "SUBJECT_ALL_CAPS",
                "HTML_ONLY",
                "HTML_LINK_MISMATCH"
            ]
        );
    }

    #[test]
    fn dates_are_compared_with_arrival_or_the_newest_received() {
        let m = b"Received: from x by y; Sat, 28 Nov 2026 10:00:00 +0000\r\nFrom: a@b.test\r\nTo: c@d.test\r\nSubject: s\r\nMessage-ID: <1@b>\r\nDate: Sat, 5 Dec 2026 10:00:00 +0000\r\n\r\nx\r\n";
        assert_eq!(names(&content_rules(m, None)), ["DATE_IN_FUTURE"]);
        // A week later it is merely old.
        let later = 1_795_860_000 + 14 * 86400;
        assert_eq!(names(&content_rules(m, Some(later))), ["DATE_IN_PAST"]);
    }

    #[test]
    fn image_only_html_and_link_domains() {
        let m = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: s\r\nContent-Type: text/html\r\n\r\n<a href=\"https://Click.Spam.co.uk/x?y\"><img src=\"http://img.test/a.png\"></a> http://ignored.test\r\n";
        let h = content_rules(m, None);
        assert!(names(&h).contains(&"HTML_IMAGE_ONLY"), "{h:?}");
        assert_eq!(link_domains(m, 10), ["spam.co.uk"]);
        let t = b"From: a@b.test\r\n\r\nGo to https://a.b.example.test/x, (http://1.2.3.4/y) or https://b.example.test\r\n";
        assert_eq!(link_domains(t, 10), ["example.test", "1.2.3.4"]);
        assert_eq!(registered("x.abc.io"), "abc.io");
        assert_eq!(registered("www.shop.com.au"), "shop.com.au");
        assert_eq!(list_query("1.2.3.4"), "4.3.2.1");
        assert_eq!(list_query("spam.test"), "spam.test");
        assert_eq!(link_domains(t, 1), ["example.test"]);
    }

    #[test]
    fn context_rules_weigh_authentication_and_listings() {
        let ctx = Context {
            auth: Auth {
                spf: Some("fail".into()),
                dkim: Some("none".into()),
                dmarc: Some(("fail".into(), "reject".into())),
                dmarc_applied: false,
                iprev: Some("fail".into()),
            },
            forged_own_domain: true,
            listings: vec![
                ("URIBL".into(), "a.test on uribl.test".into()),
                ("URIBL".into(), "b.test on uribl.test".into()),
            ],
        };
        assert_eq!(
            names(&context_rules(&ctx)),
            [
                "SPF_FAIL",
                "DMARC_FAIL",
                "IPREV_FAIL",
                "FROM_OUR_DOMAIN_UNAUTH",
                "URIBL_LISTED"
            ]
        );
        let good = Context {
            auth: Auth {
                spf: Some("pass".into()),
                dkim: Some("pass".into()),
                dmarc: Some(("pass".into(), "reject".into())),
                dmarc_applied: false,
                iprev: Some("pass".into()),
            },
            ..Default::default()
        };
        let hits = context_rules(&good);
        assert_eq!(names(&hits), ["SPF_PASS", "DKIM_PASS", "DMARC_PASS"]);
        assert!(combine(None, &hits) < PRIOR);
    }

    #[test]
    fn rules_move_the_probability_in_log_odds() {
        assert!((combine(Some(0.5), &[]) - 0.5).abs() < 1e-9);
        let up = combine(Some(0.5), &[Hit::new("X", 1.386)]);
        assert!((up - 0.8).abs() < 1e-3, "{up}");
        // A confident classifier is not overturned by small rules...
        assert!(combine(Some(0.9999), &[Hit::new("DMARC_PASS", -1.0)]) > 0.99);
        // ...but a user's lists decide.
        assert!(
            combine(
                Some(0.9999),
                &[Hit::new("USER_ALLOWLIST", -USER_LIST_WEIGHT)]
            ) < 0.01
        );
        assert!(combine(None, &[Hit::new("USER_BLOCKLIST", USER_LIST_WEIGHT)]) > 0.99);
    }

    #[test]
    fn the_status_field_lists_the_tests() {
        let f = status_field(0.95, 0.8, Some(0.97), &[Hit::new("HTML_ONLY", 0.5)]);
        assert_eq!(
            f,
            "X-Spam-Status: Yes, score=0.950 required=0.80\r\n\ttests=BAYES(0.970),HTML_ONLY(+0.5)\r\n"
        );
        assert!(status_field(0.1, 0.8, None, &[]).contains("No, score=0.100"));
    }
}
