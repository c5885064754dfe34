//! Compromised-account detection (`[limits] hold_*`): signs that someone else is using an
//! account put its outbound mail on hold (queued, not sent) and tell the postmaster by mail
//! and in the log, until an admin runs `mailkeep queue release --account`.
//!
//! The signs, each judged when it happens:
//! - a burst of new recipients (never written to before) within an hour, after a message;
//! - a high share of bounces, or of spam complaints (feedback reports, RFC 5965), among the
//!   account's recipients of the last 24 hours, once it wrote to enough of them for a share
//!   to mean something;
//! - logins from many networks (IPv4 /24, IPv6 /64) the account never used before, within 24
//!   hours.
//!
//! Counts start over when an admin releases the account: what led to the last hold does not
//! lead to the next.

use std::net::IpAddr;
use std::sync::RwLock;

use mailkeep_config::LimitsConfig;
use mailkeep_store::directory::Resolution;
use mailkeep_store::{LogEvent, Signal, StoreError};
use mailkeep_types::{AccountId, Address, MailboxRole, QueueId};

use crate::{now_micros, Delivery, Incoming};

const DAY: i64 = 86_400;

/// The watcher, shared by the SMTP sessions, the queue and the login guard.
pub struct Watch {
    delivery: Delivery,
    limits: RwLock<LimitsConfig>,
    hostname: String,
    /// The domain whose postmaster is alerted.
    postmaster_domain: Option<String>,
}

impl Watch {
    /// A watcher with these limits; alerts go to postmaster@`postmaster_domain`.
    pub fn new(
        delivery: Delivery,
        limits: LimitsConfig,
        hostname: String,
        postmaster_domain: Option<String>,
    ) -> Watch {
        Watch {
            delivery,
            limits: RwLock::new(limits),
            hostname,
            postmaster_domain,
        }
    }

    /// Takes new limits (configuration reload).
    pub fn reconfigure(&self, limits: LimitsConfig) {
        if let Ok(mut l) = self.limits.write() {
            *l = limits;
        }
    }

    fn limits(&self) -> Option<LimitsConfig> {
        self.limits.read().ok().map(|l| l.clone())
    }

    /// Where counting starts for the account: `window` back, or its last release if later.
    /// None while it is on hold (nothing to decide).
    async fn since(&self, account: AccountId, now: i64, window: i64) -> Option<i64> {
        match self.delivery.store().account_hold_state(account).await {
            Ok(Some(h)) if h.released.is_none() => None,
            Ok(state) => Some((now - window).max(state.and_then(|h| h.released).unwrap_or(0))),
            Err(e) => {
                tracing::warn!(error = %e, "reading the account's hold failed");
                None
            }
        }
    }

    /// After the account queued mail to other domains: too many new recipients within an
    /// hour put it on hold.
    pub async fn sent(&self, account: AccountId, session: &str, ip: Option<IpAddr>, now: i64) {
        let Some(limits) = self.limits() else { return };
        let threshold = limits.hold_new_recipients_per_hour;
        if threshold == 0 {
            return;
        }
        let Some(since) = self.since(account, now, 3600).await else {
            return;
        };
        let usage = match self.delivery.store().usage_since(account, since).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "reading the outbound usage failed");
                return;
            }
        };
        if usage.new_recipients < threshold {
            return;
        }
        let reason = format!(
            "{} new recipients within an hour ({} messages): the account may be compromised",
            usage.new_recipients, usage.messages
        );
        let detail = serde_json::json!({
            "new_recipients": usage.new_recipients, "messages": usage.messages,
        });
        self.hold(account, session, ip, &reason, detail, now).await;
    }

    /// `count` recipients of mail the account sent at `sent` (Unix seconds) bounced, or
    /// complained: records it under that time (so that it is compared with what the
    /// account sent in the same period), and a share past the limit puts the account on
    /// hold.
    pub async fn signal(
        &self,
        account: AccountId,
        signal: Signal,
        count: u32,
        session: &str,
        sent: i64,
        now: i64,
    ) {
        let store = self.delivery.store();
        for _ in 0..count {
            if let Err(e) = store.signal_record(account, sent, signal).await {
                tracing::warn!(error = %e, "recording a bounce or complaint failed");
                return;
            }
        }
        let Some(limits) = self.limits() else { return };
        let rate = match signal {
            Signal::Bounce => limits.hold_bounce_rate,
            Signal::Complaint => limits.hold_complaint_rate,
        };
        if rate <= 0.0 {
            return;
        }
        let Some(since) = self.since(account, now, DAY).await else {
            return;
        };
        let counts = async {
            Ok::<_, StoreError>((
                store.usage_since(account, since).await?,
                store.signals_since(account, since).await?,
            ))
        };
        let (usage, (bounces, complaints)) = match counts.await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading the account's signals failed");
                return;
            }
        };
        let seen = match signal {
            Signal::Bounce => bounces,
            Signal::Complaint => complaints,
        };
        // A share of a handful of recipients says nothing (one typo of three is a third).
        // Signals are dated by when the mail was sent, like the usage they are compared with.
        let recipients = usage.recipients;
        if recipients < limits.hold_min_recipients.max(1) {
            return;
        }
        let share = f64::from(seen) / f64::from(recipients);
        if share < rate {
            return;
        }
        let what = match signal {
            Signal::Bounce => "bounced",
            Signal::Complaint => "complained of spam",
        };
        let reason = format!(
            "{seen} of its {recipients} recipients in the last 24 hours {what} ({:.0}%, the limit is {:.0}%): \
             the account may be compromised",
            share * 100.0,
            rate * 100.0
        );
        let detail = serde_json::json!({
            "signal": signal.as_str(), "count": seen, "recipients": recipients,
            "share": (share * 1000.0).round() / 1000.0, "limit": rate,
        });
        self.hold(account, session, None, &reason, detail, now)
            .await;
    }

    /// The account logged in from `ip`: logins from too many new networks within 24 hours
    /// put it on hold.
    pub async fn logged_in(&self, account: AccountId, ip: IpAddr, session: &str, now: i64) {
        let store = self.delivery.store();
        let network = login_network(ip);
        let new = match store.login_record(account, &network, now).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "recording a login failed");
                return;
            }
        };
        let Some(limits) = self.limits() else { return };
        let threshold = limits.hold_new_login_networks;
        if !new || threshold == 0 {
            return;
        }
        let Some(since) = self.since(account, now, DAY).await else {
            return;
        };
        let n = match store.new_login_networks_since(account, since).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the account's logins failed");
                return;
            }
        };
        if n < threshold {
            return;
        }
        let reason = format!(
            "logins from {n} networks it never used before within 24 hours (the last {network}): \
             the password may be known to others"
        );
        let detail = serde_json::json!({ "new_networks": n, "network": network });
        self.hold(account, session, Some(ip), &reason, detail, now)
            .await;
    }

    /// Puts the account on hold, logs `account.hold` and alerts the postmaster.
    async fn hold(
        &self,
        account: AccountId,
        session: &str,
        ip: Option<IpAddr>,
        reason: &str,
        mut detail: serde_json::Value,
        now: i64,
    ) {
        let store = self.delivery.store();
        let held = match store.account_hold(account, reason, now).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "putting the account on hold failed");
                return;
            }
        };
        let who = match store.user_by_id(account).await {
            Ok(Some(u)) => u.address.to_string(),
            _ => format!("account {}", account.0),
        };
        tracing::warn!(account = %who, %reason, held, "outbound mail of an account put on hold");
        if let Some(d) = detail.as_object_mut() {
            d.insert("reason".into(), reason.into());
            d.insert("held_messages".into(), held.into());
        }
        let mut events = vec![LogEvent {
            ts: now_micros(),
            session: session.to_string(),
            kind: "account.hold".into(),
            ip: ip.map(|i| i.to_string()),
            sender: Some(who.clone()),
            outcome: Some("held".into()),
            detail,
            ..Default::default()
        }];
        events.extend(self.alert(&who, reason, held, session).await);
        store.log_submit(events);
    }

    /// Tells the postmaster by mail that an account is on hold; the delivery's log events.
    async fn alert(&self, who: &str, reason: &str, held: u64, session: &str) -> Vec<LogEvent> {
        let Some(domain) = &self.postmaster_domain else {
            return Vec::new();
        };
        let Ok(postmaster) = Address::parse(&format!("postmaster@{domain}")) else {
            return Vec::new();
        };
        let targets = match self.delivery.resolve(&postmaster).await {
            Ok(Resolution::Targets { local, .. }) if !local.is_empty() => local,
            _ => {
                tracing::warn!(%postmaster, "no local postmaster to alert");
                return Vec::new();
            }
        };
        let host = &self.hostname;
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        let nonce: u64 = rand::random();
        let data = format!(
            "From: mailkeep <MAILER-DAEMON@{host}>\r\nTo: {postmaster}\r\n\
             Subject: Outbound mail of {who} is on hold\r\nDate: {date}\r\n\
             Message-ID: <hold.{nonce:016x}@{host}>\r\nAuto-Submitted: auto-generated\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n\
             mailkeep on {host} put the outbound mail of {who} on hold:\r\n\r\n  {reason}.\r\n\r\n\
             {held} queued message(s) are held, and what the account sends from now on is\r\n\
             queued but not sent. Check the account (its logins: mailkeep log search\r\n\
             --kind smtp.auth --recipient {who}), change its password if needed, then\r\n\
             release its mail:\r\n\r\n  mailkeep queue release --account {who}\r\n\r\n\
             or delete what it queued (mailkeep queue list, mailkeep queue delete ID).\r\n"
        )
        .into_bytes();
        let incoming = Incoming {
            data,
            return_path: String::new(),
            recipients: targets,
            queue_id: QueueId::new(now_micros() as u64, rand::random()).0,
            session: session.to_string(),
            client_ip: None,
            mailbox: MailboxRole::Inbox,
            placements: Default::default(),
            virus_clean: false,
            refusable: false,
            onward: Default::default(),
            dsn: Default::default(),
        };
        match self.delivery.deliver(incoming).await {
            Ok(d) => d.events,
            Err(e) => {
                tracing::error!(error = %e, "alerting the postmaster failed");
                Vec::new()
            }
        }
    }
}

/// The network a login comes from: IPv4 /24; IPv6 /48, since phones on mobile data move
/// between /64s of their carrier many times a day.
fn login_network(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_networks() {
        assert_eq!(login_network("192.0.2.9".parse().unwrap()), "192.0.2.0/24");
        assert_eq!(
            login_network("::ffff:192.0.2.9".parse().unwrap()),
            "192.0.2.0/24"
        );
        assert_eq!(
            login_network("2001:db8:1:2:3::9".parse().unwrap()),
            "2001:db8:1::/48"
        );
    }
}
