//! A statistical spam classifier: Robinson's per-token probabilities combined with Fisher's
//! chi-square method (the method of SpamBayes and of SpamAssassin's Bayes rule).
//!
//! Implementation notes:
//! - Tokens come from the parts a person would read and a few header fields chosen because
//!   they carry signal and not the path the mail took: Subject, From (address, domain, name
//!   words), Reply-To's domain, the body's content type and the mailer. Received, Return-Path,
//!   Delivered-To, Message-ID and the like are left out: they describe the collector (the
//!   corpus is full of its host names), not the message.
//! - Text: the text parts (an HTML-only message's text as mail-parser converts it; links of
//!   HTML parts kept as `url:` tokens of their host; `html:yes`, `html:only`), lower-cased words of 3 to 20 letters, digits or `$!'-`; longer ones become a
//!   `skip:` token of their first letter and length bucket. Each token counts once per
//!   message.
//! - Probability of a token (Robinson): p = spam share of its relative frequencies, f =
//!   (s*x + n*p) / (s + n) with strength s = 1 and x = 0.5, n its message count. The 150 tokens
//!   farthest from 0.5 (at least 0.1 away) are combined: H = C⁻¹(-2 Σ ln f), S = C⁻¹(-2 Σ
//!   ln(1-f)) with 2n degrees of freedom, score = (1 + H - S) / 2, in 0..1.

use std::collections::{HashMap, HashSet};

/// Most tokens combined for one message.
const MAX_DISCRIMINATORS: usize = 150;
/// Tokens this close to 0.5 say nothing and are left out.
const MIN_DISTANCE: f64 = 0.1;
/// Robinson's s and x.
const STRENGTH: f64 = 1.0;
const UNKNOWN: f64 = 0.5;

/// Token counts learnt from ham and spam.
#[derive(Debug, Default, Clone)]
pub struct Model {
    /// token -> (ham messages, spam messages) that held it.
    tokens: HashMap<String, (u32, u32)>,
    ham: u32,
    spam: u32,
}

impl Model {
    /// Learns one message as spam or ham.
    pub fn train(&mut self, message: &[u8], is_spam: bool) {
        for t in tokens(message) {
            let e = self.tokens.entry(t).or_insert((0, 0));
            if is_spam {
                e.1 += 1;
            } else {
                e.0 += 1;
            }
        }
        if is_spam {
            self.spam += 1;
        } else {
            self.ham += 1;
        }
    }

    /// Messages learnt: (ham, spam).
    pub fn counts(&self) -> (u32, u32) {
        (self.ham, self.spam)
    }

    /// The spam probability of a message: 0 (ham) to 1 (spam), 0.5 when the model knows
    /// nothing; with the tokens that decided it, strongest first.
    pub fn score(&self, message: &[u8]) -> (f64, Vec<(String, f64)>) {
        score_tokens(
            tokens(message),
            |t| self.tokens.get(t).copied(),
            self.ham,
            self.spam,
        )
    }

    /// Every token learnt with its (ham, spam) message counts.
    pub fn token_counts(&self) -> impl Iterator<Item = (&str, u32, u32)> {
        self.tokens.iter().map(|(t, (h, s))| (t.as_str(), *h, *s))
    }
}

/// The score of a message's `tokens` given each token's (ham, spam) message counts
/// (`lookup`) and the model's message totals: 0 (ham) to 1 (spam), 0.5 when it knows
/// nothing; with the tokens that decided it, strongest first.
pub fn score_tokens(
    tokens: HashSet<String>,
    lookup: impl Fn(&str) -> Option<(u32, u32)>,
    ham: u32,
    spam: u32,
) -> (f64, Vec<(String, f64)>) {
    if ham == 0 || spam == 0 {
        return (UNKNOWN, Vec::new());
    }
    let mut clues: Vec<(String, f64)> = tokens
        .into_iter()
        .filter_map(|t| {
            let (h, s) = lookup(&t)?;
            let hf = f64::from(h) / f64::from(ham);
            let sf = f64::from(s) / f64::from(spam);
            if hf + sf <= 0.0 {
                return None;
            }
            let p = sf / (hf + sf);
            let n = f64::from(h + s);
            let f = (STRENGTH * UNKNOWN + n * p) / (STRENGTH + n);
            ((f - 0.5).abs() >= MIN_DISTANCE).then_some((t, f))
        })
        .collect();
    clues.sort_by(|a, b| {
        (b.1 - 0.5)
            .abs()
            .partial_cmp(&(a.1 - 0.5).abs())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.0.cmp(&b.0))
    });
    clues.truncate(MAX_DISCRIMINATORS);
    if clues.is_empty() {
        return (UNKNOWN, clues);
    }
    // Fisher's method: a message made of independent ham (or spam) evidence.
    let (mut ln_f, mut ln_1f) = (0.0f64, 0.0f64);
    for (_, f) in &clues {
        let f = f.clamp(1e-6, 1.0 - 1e-6);
        ln_f += f.ln();
        ln_1f += (1.0 - f).ln();
    }
    let n = clues.len();
    let h = chi2q(-2.0 * ln_f, 2 * n);
    let s = chi2q(-2.0 * ln_1f, 2 * n);
    ((1.0 + h - s) / 2.0, clues)
}

/// The probability that a chi-square variable with `v` (even) degrees of freedom is at
/// least `x2`.
fn chi2q(x2: f64, v: usize) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..v / 2 {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

/// The tokens of a message, once each.
pub fn tokens(message: &[u8]) -> HashSet<String> {
    let mut out = HashSet::new();
    let Some(m) = mail_parser::MessageParser::default().parse(message) else {
        return out;
    };
    if let Some(s) = m.subject() {
        words(s, "subject:", &mut out);
    }
    if let Some(from) = m.from().and_then(|f| f.first()) {
        if let Some(a) = from.address() {
            let a = a.to_lowercase();
            if let Some((_, d)) = a.rsplit_once('@') {
                out.insert(format!("from-domain:{d}"));
            }
            out.insert(format!("from:{a}"));
        }
        if let Some(name) = from.name() {
            words(name, "from-name:", &mut out);
        } else {
            out.insert("from-name:none".into());
        }
    }
    if let Some(d) = m
        .reply_to()
        .and_then(|r| r.first())
        .and_then(|a| a.address())
        .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_lowercase()))
    {
        out.insert(format!("reply-to-domain:{d}"));
    }
    if let Some(ct) = mail_parser::MimeHeaders::content_type(m.root_part()) {
        out.insert(format!(
            "content-type:{}/{}",
            ct.ctype().to_lowercase(),
            ct.subtype().unwrap_or("").to_lowercase()
        ));
    }
    for name in ["X-Mailer", "User-Agent"] {
        if let Some(v) = m.header_raw(name) {
            let v = v.trim().to_lowercase();
            let product = v
                .split(|c: char| c == '/' || c.is_whitespace())
                .next()
                .unwrap_or("");
            out.insert(format!("mailer:{product}"));
        }
    }
    let attachments = m.attachment_count();
    if attachments > 0 {
        out.insert(format!("attachments:{}", attachments.min(5)));
    }
    // Text parts (mail-parser gives an HTML-only message's text converted), and the links
    // of the HTML ones.
    for i in 0..m.text_body_count() {
        if let Some(t) = m.body_text(i) {
            words(&t, "", &mut out);
        }
    }
    for i in 0..m.html_body_count() {
        if let Some(h) = m.body_html(i) {
            urls(&h, &mut out);
        }
    }
    let has = |html: bool| {
        m.parts.iter().any(|p| match p.body {
            mail_parser::PartType::Html(_) => html,
            mail_parser::PartType::Text(_) => !html,
            _ => false,
        })
    };
    if has(true) {
        out.insert("html:yes".into());
        if !has(false) {
            out.insert("html:only".into());
        }
    }
    out
}

/// Lower-cased words of `text` (3 to 20 characters), each behind `prefix`.
fn words(text: &str, prefix: &str, out: &mut HashSet<String>) {
    for raw in text.split(|c: char| !(c.is_alphanumeric() || "$!'-".contains(c))) {
        let w = raw.trim_matches(|c: char| c == '\'' || c == '-');
        let len = w.chars().count();
        if len < 3 {
            continue;
        }
        if len > 20 {
            let first = w.chars().next().unwrap_or('x').to_lowercase();
            out.insert(format!("{prefix}skip:{first} {}", len / 10 * 10));
            continue;
        }
        out.insert(format!("{prefix}{}", w.to_lowercase()));
        if let Some(host) = url_host(w) {
            out.insert(format!("url:{host}"));
        }
    }
    for host in text
        .split_whitespace()
        .filter_map(|w| {
            w.strip_prefix("http://")
                .or_else(|| w.strip_prefix("https://"))
        })
        .filter_map(|rest| rest.split(['/', '"', '>', '?']).next())
    {
        out.insert(format!("url:{}", host.to_lowercase()));
    }
}

fn url_host(w: &str) -> Option<String> {
    let rest = w.strip_prefix("www.")?;
    rest.contains('.')
        .then(|| format!("www.{}", rest.to_lowercase()))
}

/// The hosts of the links in an HTML body.
fn urls(html: &str, out: &mut HashSet<String>) {
    let lower = html.to_lowercase();
    for part in lower.split("href=").skip(1) {
        let link = part.trim_start_matches(['"', '\'', ' ']);
        let rest = link
            .strip_prefix("http://")
            .or_else(|| link.strip_prefix("https://"));
        match rest {
            Some(r) => {
                let host = r
                    .split(['/', '"', '\'', '>', '?', ' '])
                    .next()
                    .unwrap_or("");
                if !host.is_empty() {
                    out.insert(format!("url:{host}"));
                }
            }
            None if link.starts_with("mailto:") => {
                out.insert("url:mailto".into());
            }
            None => {}
        }
    }
}

/// The message without any `name:` header field (with its continuation lines): a field
/// the sender put there to look scored by us.
pub fn strip_field(message: &[u8], name: &str) -> Vec<u8> {
    // The header ends at the first empty line (CRLF or, leniently, LF alone).
    let mut end = 0;
    for line in message.split_inclusive(|b| *b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        end += line.len();
    }
    let (head, body) = message.split_at(end);
    let mut out = Vec::with_capacity(message.len());
    let mut dropping = false;
    for line in head.split_inclusive(|b| *b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            dropping = line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && line[name.len()] == b':';
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    out
}

/// The outcome of k-fold cross-validation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evaluation {
    /// Ham messages tested.
    pub ham: usize,
    /// Spam messages tested.
    pub spam: usize,
    /// Ham scored at or above the spam threshold.
    pub false_positives: usize,
    /// Spam scored below it.
    pub false_negatives: usize,
}

/// k-fold cross-validation: message `i` of each list is in fold `i % k`; each fold is scored
/// by a model trained on the others, through the score the MX uses (the classifier and the
/// content rules, [`crate::score`]); spam is a score of at least `threshold`.
pub fn cross_validate(ham: &[Vec<u8>], spam: &[Vec<u8>], k: usize, threshold: f64) -> Evaluation {
    let k = k.max(2);
    let mut e = Evaluation::default();
    for fold in 0..k {
        let mut model = Model::default();
        for (_, m) in ham.iter().enumerate().filter(|(i, _)| i % k != fold) {
            model.train(m, false);
        }
        for (_, m) in spam.iter().enumerate().filter(|(i, _)| i % k != fold) {
            model.train(m, true);
        }
        for (_, m) in ham.iter().enumerate().filter(|(i, _)| i % k == fold) {
            e.ham += 1;
            if full_score(&model, m) >= threshold {
                e.false_positives += 1;
            }
        }
        for (_, m) in spam.iter().enumerate().filter(|(i, _)| i % k == fold) {
            e.spam += 1;
            if full_score(&model, m) < threshold {
                e.false_negatives += 1;
            }
        }
    }
    e
}

/// The score of a stored message as the MX would give it, less what only the SMTP session
/// knows (authentication, blocklists): the classifier and the content rules, dates compared
/// with the message's newest Received field.
pub fn full_score(model: &Model, message: &[u8]) -> f64 {
    let bayes = model.score(message).0;
    crate::score::combine(Some(bayes), &crate::score::content_rules(message, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(subject: &str, body: &str) -> Vec<u8> {
        format!("From: Someone <a@b.test>\r\nSubject: {subject}\r\n\r\n{body}\r\n").into_bytes()
    }

    #[test]
    fn learns_what_spam_and_ham_look_like() {
        let mut m = Model::default();
        assert_eq!(m.score(&msg("x", "y")).0, 0.5, "knows nothing yet");
        for i in 0..20 {
            m.train(
                &msg(
                    &format!("cheap pills {i}"),
                    "buy viagra now, cheap pills, click here",
                ),
                true,
            );
            m.train(
                &msg(
                    &format!("meeting notes {i}"),
                    "the quarterly report is attached, see you at the meeting",
                ),
                false,
            );
        }
        let (spam, clues) = m.score(&msg("cheap", "click here for viagra"));
        assert!(spam > 0.9, "{spam} {clues:?}");
        let (ham, _) = m.score(&msg("notes", "the report for the meeting"));
        assert!(ham < 0.1, "{ham}");
        let e = cross_validate(
            &(0..10)
                .map(|i| msg(&format!("meeting {i}"), "quarterly report attached"))
                .collect::<Vec<_>>(),
            &(0..10)
                .map(|i| msg(&format!("pills {i}"), "buy cheap viagra now"))
                .collect::<Vec<_>>(),
            5,
            0.5,
        );
        assert_eq!(
            (e.ham, e.spam, e.false_positives, e.false_negatives),
            (10, 10, 0, 0)
        );
    }

    #[test]
    fn a_forged_status_field_is_dropped() {
        let m = b"X-Spam-Status: No,\r\n\tscore=0\r\nSubject: hi\r\nx-spam-status: No\r\n\r\nX-Spam-Status: body\r\n";
        assert_eq!(
            strip_field(m, "X-Spam-Status"),
            b"Subject: hi\r\n\r\nX-Spam-Status: body\r\n".to_vec()
        );
    }

    #[test]
    fn tokens_skip_the_path_and_keep_links() {
        let t = tokens(
            b"Received: from relay.collector.test\r\nFrom: \"Big Sale\" <deals@shop.test>\r\n\
Subject: Huge savings\r\nContent-Type: text/html\r\n\r\n<p>Click <a href=\"http://shop.test/x\">here</a></p>\r\n",
        );
        assert!(t.contains("from-domain:shop.test"), "{t:?}");
        assert!(t.contains("subject:savings"));
        assert!(t.contains("url:shop.test"));
        assert!(t.contains("html:only"));
        assert!(t.contains("click"));
        assert!(!t.iter().any(|x| x.contains("collector")), "{t:?}");
        assert_eq!(chi2q(0.0, 4), 1.0);
    }
}
