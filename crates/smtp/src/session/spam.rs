//! Spam scoring on the MX (`[spam]`, `[dnsbl]`): the server's verdict, which may refuse the
//! message, and each local recipient's, with their own model (learnt from what they move
//! into and out of Junk) and their sender lists.
//!
//! Implementation notes:
//! - The message is tokenized and its content rules run once, off the async threads.
//! - The server's verdict uses model 0; a recipient's adds their own model's counts to it,
//!   so what they taught weighs in without a model of their own from scratch.
//! - The server's `X-Spam-Status` goes on forwarded copies; each local copy carries its
//!   owner's in its prefix (after Return-Path and Delivered-To).
//! - A user's allowlist counts only when the sender is authenticated: the From: address
//!   when DMARC passed, the envelope sender when SPF passed (either, when the MX checks no
//!   authentication). The blocklist needs no proof.

use std::collections::HashMap;

use mailkeep_delivery::{now_micros, Placement};
use mailkeep_policy::dnsbl::Listing;
use mailkeep_policy::score::{self, Hit, USER_LIST_WEIGHT};
use mailkeep_store::directory::LocalTarget;
use mailkeep_store::{LogEvent, SenderList};
use mailkeep_types::{AccountId, MailboxRole};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;

/// Most link domains asked of URI blocklists per message.
const MAX_LINK_DOMAINS: usize = 20;

/// What the spam check decided for one message.
pub(super) struct SpamVerdicts {
    /// The server's `X-Spam-Status` field, for copies that leave (forwarded).
    pub field: String,
    /// Refused with this reply.
    pub reject: Option<String>,
    /// The server's score.
    pub score: f64,
    /// The server's score is past `spam.junk`.
    pub is_spam: bool,
    /// Per local account: its mailbox and its own `X-Spam-Status`.
    pub placements: HashMap<AccountId, Placement>,
}

/// A model's score of a message and the tokens that decided it.
type Bayes = (f64, Vec<(String, f64)>);

/// A model's learnt message totals and the counts of the tokens it knows.
type Counts = ((u32, u32), HashMap<String, (u32, u32)>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Scores a message that reached the MX. `auth` is the sender authentication's
    /// summary (None when it is off); `default` is where it goes when not spam.
    pub(super) async fn spam_verdicts(
        &mut self,
        msg: &[u8],
        auth: Option<&mailkeep_verify::Summary>,
        dmarc_pass: bool,
        default: MailboxRole,
        targets: &[LocalTarget],
    ) -> SpamVerdicts {
        let cfg = self.server.spam.clone();
        let now = now_micros() / 1_000_000;
        let copy = msg.to_vec();
        let analysed = tokio::task::spawn_blocking(move || {
            let tokens: Vec<String> = mailkeep_policy::spam::tokens(&copy).into_iter().collect();
            let hits = score::content_rules(&copy, Some(now));
            let links = score::link_domains(&copy, MAX_LINK_DOMAINS);
            (tokens, hits, links, super::from_address(&copy))
        })
        .await;
        let (tokens, mut hits, links, from) = match analysed {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(session = %self.id, error = %e, "analysing the message for spam failed");
                (Vec::new(), Vec::new(), Vec::new(), None)
            }
        };
        let envelope = self
            .tx
            .as_ref()
            .map(|t| t.sender.to_ascii_lowercase())
            .unwrap_or_default();
        let from_domain = from
            .as_deref()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(_, d)| d.to_string());

        // What the session knows besides the content.
        // Only a DMARC failure counts: no record, a check turned off or a DNS error say
        // nothing of a forgery.
        let dmarc_failed = auth.is_some_and(|a| matches!(&a.dmarc, Some((r, _)) if *r == "fail"));
        let forged = match &from_domain {
            Some(d) if dmarc_failed => self.hosted_or_parent(d).await,
            _ => false,
        };
        let mut listings = Vec::new();
        if let Some(Some(zone)) = &self.dnsbl {
            listings.push(("DNSBL".to_string(), format!("{} on {zone}", self.peer.ip())));
        }
        let env_domain = envelope.rsplit_once('@').map(|(_, d)| d.to_string());
        listings.extend(
            self.domain_listings(&[env_domain, from_domain.clone()], &links)
                .await,
        );
        let ctx = score::Context {
            auth: auth.map(policy_auth).unwrap_or_default(),
            forged_own_domain: forged,
            listings,
        };
        hits.extend(score::context_rules(&ctx));

        // The server's verdict.
        let global = self.model_counts(0, &tokens).await;
        let bayes = global.as_ref().and_then(|g| self.bayes(&tokens, g, None));
        let p = bayes.as_ref().map(|b| b.0);
        let total = score::combine(p, &hits);
        let field = score::status_field(total, cfg.junk, p, &hits);

        // Each recipient's.
        let mut placements = HashMap::new();
        let mut rows = Vec::new();
        let mut allowed_by_someone = false;
        let mut seen = std::collections::HashSet::new();
        let spf_pass = auth.is_some_and(|a| a.spf == Some("pass"));
        for t in targets {
            if !seen.insert(t.account) {
                continue;
            }
            let store = self.server.delivery.store().clone();
            let lists = match store.sender_lists(t.account).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(session = %self.id, error = %e, "reading sender lists failed");
                    Vec::new()
                }
            };
            // Without sender authentication nothing is proven: the allowlist then does not
            // apply (a forger would pass it).
            let proven = |on: &str| {
                (Some(on) == from.as_deref() && dmarc_pass) || (on == envelope && spf_pass)
            };
            let list_hit = list_hit(&lists, from.as_deref(), &envelope, proven);
            let own = match &global {
                Some(g) => match self.model_counts(t.account.0, &tokens).await {
                    Some(u) if u.0 != (0, 0) => self.bayes(&tokens, g, Some(&u)),
                    _ => bayes.clone(),
                },
                None => None,
            };
            let mut own_hits = hits.clone();
            if let Some(h) = &list_hit {
                allowed_by_someone |= h.weight < 0.0;
                own_hits.push(h.clone());
            }
            let op = own.as_ref().map(|b| b.0);
            let s = score::combine(op, &own_hits);
            let junk = s >= cfg.junk;
            rows.push(serde_json::json!({
                "to": t.address, "score": round3(s), "junk": junk,
                "bayes": op.map(round3), "list": list_hit.as_ref().map(|h| h.name.clone()),
            }));
            placements.insert(
                t.account,
                Placement {
                    mailbox: if junk { MailboxRole::Junk } else { default },
                    fields: score::status_field(s, cfg.junk, op, &own_hits),
                    spam_score: Some(s),
                },
            );
        }

        let rejected = cfg.reject.is_some_and(|r| total >= r) && !allowed_by_someone;
        let is_spam = total >= cfg.junk;
        self.log(
            "smtp.spam",
            LogEvent {
                outcome: Some(
                    if rejected {
                        "rejected"
                    } else if is_spam {
                        "junk"
                    } else {
                        "accepted"
                    }
                    .into(),
                ),
                detail: serde_json::json!({
                    "score": round3(total),
                    "bayes": p.map(round3),
                    "junk": cfg.junk, "reject": cfg.reject,
                    "tests": hits.iter().map(|h| serde_json::json!([h.name, h.weight])).collect::<Vec<_>>(),
                    "listings": ctx.listings.iter().map(|(_, what)| what.clone()).collect::<Vec<_>>(),
                    "clues": bayes.as_ref().map(|b| clues_json(&b.1)).unwrap_or_default(),
                    "recipients": rows,
                }),
                ..Default::default()
            },
        );
        SpamVerdicts {
            field,
            reject: rejected
                .then(|| format!("550 5.7.1 Message refused as spam (score {total:.2})")),
            score: total,
            is_spam,
            placements,
        }
    }

    /// The score of mail a user submits to other domains, once the server's model is
    /// ready: the model and the content rules. None before.
    pub(super) async fn outbound_score(&self, msg: &[u8]) -> Option<(f64, Vec<Hit>, Bayes)> {
        let copy = msg.to_vec();
        let now = now_micros() / 1_000_000;
        let (tokens, hits) = tokio::task::spawn_blocking(move || {
            let tokens: Vec<String> = mailkeep_policy::spam::tokens(&copy).into_iter().collect();
            (tokens, score::content_rules(&copy, Some(now)))
        })
        .await
        .ok()?;
        let global = self.model_counts(0, &tokens).await?;
        let bayes = self.bayes(&tokens, &global, None)?;
        Some((score::combine(Some(bayes.0), &hits), hits, bayes))
    }

    /// A model's counts of `tokens`; None when it cannot be read.
    async fn model_counts(&self, model: i64, tokens: &[String]) -> Option<Counts> {
        let store = self.server.delivery.store().clone();
        match store.spam_counts(model, tokens).await {
            Ok((totals, counts)) => Some((
                totals,
                counts.into_iter().map(|(t, h, s)| (t, (h, s))).collect(),
            )),
            Err(e) => {
                tracing::warn!(session = %self.id, error = %e, "reading a spam model failed");
                None
            }
        }
    }

    /// The classifier's score from the server's counts plus a user's; None while together
    /// they have not learnt `spam.min_learnt` of each.
    fn bayes(&self, tokens: &[String], global: &Counts, user: Option<&Counts>) -> Option<Bayes> {
        let min = self.server.spam.min_learnt;
        let ((mut ham, mut spam), g) = (global.0, &global.1);
        if let Some(u) = user {
            ham += u.0 .0;
            spam += u.0 .1;
        }
        if ham < min || spam < min {
            return None;
        }
        let lookup = |t: &str| {
            let a = g.get(t).copied();
            let b = user.and_then(|u| u.1.get(t).copied());
            match (a, b) {
                (None, None) => None,
                (a, b) => {
                    let (a, b) = (a.unwrap_or((0, 0)), b.unwrap_or((0, 0)));
                    Some((a.0 + b.0, a.1 + b.1))
                }
            }
        };
        Some(mailkeep_policy::spam::score_tokens(
            tokens.iter().cloned().collect(),
            lookup,
            ham,
            spam,
        ))
    }

    /// Listings of the sender's domains on the RHSBLs and of the link domains on the URI
    /// blocklists: (rule, what and where). Lists that give no answer list nothing.
    async fn domain_listings(
        &self,
        senders: &[Option<String>],
        links: &[String],
    ) -> Vec<(String, String)> {
        let Some(lists) = self.server.dnsbl.clone() else {
            return Vec::new();
        };
        let mut asks: Vec<(&'static str, String, String)> = Vec::new();
        // The sender domains as written and their registered domains (a listing of
        // spammer.test covers bounce.spammer.test).
        let mut domains: Vec<String> = Vec::new();
        for d in senders.iter().flatten() {
            for name in [d.clone(), score::registered(d)] {
                if !domains.contains(&name) {
                    domains.push(name);
                }
            }
        }
        for zone in &lists.rhsbl {
            for d in &domains {
                asks.push(("RHSBL", d.clone(), zone.clone()));
            }
        }
        for zone in &lists.uribl {
            for d in links {
                asks.push(("URIBL", d.clone(), zone.clone()));
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for (rule, domain, zone) in asks {
            let resolver = lists.resolver.clone();
            set.spawn(async move {
                let name = score::list_query(&domain);
                let l = mailkeep_policy::dnsbl::lookup_domain(&resolver, &name, &zone).await;
                (rule, domain, zone, l)
            });
        }
        let mut out = Vec::new();
        while let Some(done) = set.join_next().await {
            let Ok((rule, domain, zone, listing)) = done else {
                continue;
            };
            match listing {
                Listing::Listed { .. } => {
                    out.push((rule.to_string(), format!("{domain} on {zone}")))
                }
                Listing::Clean => {}
                Listing::Error(e) => {
                    tracing::debug!(session = %self.id, list = %zone, %domain, error = %e, "domain list gave no answer");
                }
            }
        }
        // Answers arrive in any order; the log and the field should not.
        out.sort();
        out
    }
}

/// The verify crate's summary in the score's terms.
fn policy_auth(s: &mailkeep_verify::Summary) -> score::Auth {
    score::Auth {
        spf: s.spf.map(String::from),
        dkim: s.dkim.map(String::from),
        dmarc: s.dmarc.as_ref().map(|(r, p)| (r.to_string(), p.clone())),
        dmarc_applied: s.dmarc_applied,
        iprev: s.iprev.map(String::from),
    }
}

/// A user's sender lists applied to a message from `from` (the From: address) sent by
/// `envelope`: the blocklist on either; the allowlist on one that is `proven`.
fn list_hit(
    lists: &[(String, SenderList)],
    from: Option<&str>,
    envelope: &str,
    proven: impl Fn(&str) -> bool,
) -> Option<Hit> {
    let senders: Vec<&str> = from
        .into_iter()
        .chain((!envelope.is_empty()).then_some(envelope))
        .collect();
    let on = |list: SenderList, need_proof: bool| {
        lists.iter().any(|(entry, l)| {
            *l == list
                && senders
                    .iter()
                    .any(|s| entry_matches(entry, s) && (!need_proof || proven(s)))
        })
    };
    if on(SenderList::Block, false) {
        Some(Hit::new("USER_BLOCKLIST", USER_LIST_WEIGHT))
    } else if on(SenderList::Allow, true) {
        Some(Hit::new("USER_ALLOWLIST", -USER_LIST_WEIGHT))
    } else {
        None
    }
}

/// Whether a list entry (an address, or `@domain` for the domain and its subdomains)
/// covers `address` (lower case).
pub(crate) fn entry_matches(entry: &str, address: &str) -> bool {
    match entry.strip_prefix('@') {
        Some(d) => address
            .rsplit_once('@')
            .is_some_and(|(_, ad)| ad == d || ad.strip_suffix(d).is_some_and(|p| p.ends_with('.'))),
        None => entry == address,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The deciding tokens for the log: the ten strongest, cut to 60 characters.
pub(super) fn clues_json(clues: &[(String, f64)]) -> Vec<serde_json::Value> {
    clues
        .iter()
        .take(10)
        .map(|(t, f)| serde_json::json!([t.chars().take(60).collect::<String>(), round3(*f)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_addresses_and_domains() {
        assert!(entry_matches("a@b.test", "a@b.test"));
        assert!(!entry_matches("a@b.test", "x@b.test"));
        assert!(entry_matches("@b.test", "x@b.test"));
        assert!(entry_matches("@b.test", "x@mail.b.test"));
        assert!(!entry_matches("@b.test", "x@notb.test"));
    }

    #[test]
    fn the_blocklist_wins_and_the_allowlist_needs_proof() {
        let lists = vec![
            ("boss@corp.test".to_string(), SenderList::Allow),
            ("@spam.test".to_string(), SenderList::Block),
        ];
        let name = |h: Option<Hit>| h.map(|h| h.name);
        assert_eq!(
            name(list_hit(&lists, Some("boss@corp.test"), "", |_| true)),
            Some("USER_ALLOWLIST".into())
        );
        assert_eq!(
            name(list_hit(&lists, Some("boss@corp.test"), "", |_| false)),
            None,
            "a forged From: is not allowed"
        );
        assert_eq!(
            name(list_hit(
                &lists,
                Some("boss@corp.test"),
                "x@spam.test",
                |_| true
            )),
            Some("USER_BLOCKLIST".into())
        );
    }
}
