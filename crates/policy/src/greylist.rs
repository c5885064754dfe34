//! Greylisting (RFC 6647): the MX defers the first attempt of each (client network, envelope
//! sender, recipient) triplet with a 4xx reply; real mail servers retry, much spamware does
//! not.
//!
//! Implementation notes:
//! - The client is taken by network (IPv4 /24, IPv6 /64), as postgrey and RFC 6647 4.2
//!   advise: large senders retry from other addresses of the same pool.
//! - A triplet passes once it is retried after `delay` and before `delay + retry_window`;
//!   a later retry starts it over. A passed triplet stays passed for `lifetime` after its
//!   last message.
//! - Automatic allowlisting (RFC 6647 4.3): a client network that passed
//!   `auto_allow_clients` triplets passes everything (postgrey's `--auto-whitelist-clients`);
//!   a sender domain that passed SPF and DMARC from a network passes from that network.
//! - Records are plain (first seen, last seen, times passed) under string keys; the store
//!   keeps them, this module decides.

use std::net::IpAddr;

/// Greylisting times, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    /// How long a new triplet is deferred.
    pub delay: i64,
    /// How long after `delay` a retry still counts.
    pub retry_window: i64,
    /// How long a passed record stays passed after its last use.
    pub lifetime: i64,
}

/// A record as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Record {
    /// First seen (Unix seconds).
    pub first: i64,
    /// Last seen.
    pub last: i64,
    /// Times passed (0: waiting).
    pub passed: u32,
}

/// What greylisting says of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accept it.
    Pass,
    /// Defer it; the retry may come in this many seconds.
    Defer {
        /// Seconds until a retry passes.
        wait: i64,
    },
}

/// The network of a client address: IPv4 /24, IPv6 /64 (an IPv4-mapped IPv6 address, as a
/// dual-stack listener sees IPv4 clients, counts as IPv4).
pub fn network(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The key of a triplet (sender and recipient lower-cased; the null sender is empty).
pub fn triplet_key(network: &str, sender: &str, recipient: &str) -> String {
    format!(
        "t:{network}|{}|{}",
        sender.to_ascii_lowercase(),
        recipient.to_ascii_lowercase()
    )
}

/// The key of a client network's record.
pub fn client_key(network: &str) -> String {
    format!("c:{network}")
}

/// The key of a sender domain's record for one network.
pub fn domain_key(domain: &str, network: &str) -> String {
    format!("d:{}|{network}", domain.to_ascii_lowercase())
}

/// What a triplet's record says at `now`, and the record to write back.
pub fn check_triplet(record: Option<Record>, now: i64, t: Times) -> (Verdict, Record) {
    let fresh = Record {
        first: now,
        last: now,
        passed: 0,
    };
    let Some(r) = record else {
        return (Verdict::Defer { wait: t.delay }, fresh);
    };
    if r.passed > 0 {
        if now - r.last <= t.lifetime {
            return (
                Verdict::Pass,
                Record {
                    last: now,
                    passed: r.passed.saturating_add(1),
                    ..r
                },
            );
        }
        return (Verdict::Defer { wait: t.delay }, fresh);
    }
    let age = now - r.first;
    if age < t.delay {
        // RFC 6647 4.1: too early a retry is deferred again, the clock kept.
        (
            Verdict::Defer {
                wait: t.delay - age,
            },
            Record { last: now, ..r },
        )
    } else if age <= t.delay + t.retry_window {
        (
            Verdict::Pass,
            Record {
                last: now,
                passed: 1,
                ..r
            },
        )
    } else {
        (Verdict::Defer { wait: t.delay }, fresh)
    }
}

/// Whether a client network's record allows all its mail: it passed `auto_allow`
/// triplets (0: never), the last within the lifetime.
pub fn client_allowed(record: Option<Record>, now: i64, t: Times, auto_allow: u32) -> bool {
    auto_allow > 0 && record.is_some_and(|r| r.passed >= auto_allow && now - r.last <= t.lifetime)
}

/// Whether a sender domain's record allows its mail from that network.
pub fn domain_allowed(record: Option<Record>, now: i64, t: Times) -> bool {
    record.is_some_and(|r| r.passed > 0 && now - r.last <= t.lifetime)
}

/// A record counting one more pass at `now`.
pub fn passed_once_more(record: Option<Record>, now: i64) -> Record {
    match record {
        Some(r) => Record {
            last: now,
            passed: r.passed.saturating_add(1),
            ..r
        },
        None => Record {
            first: now,
            last: now,
            passed: 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Times = Times {
        delay: 300,
        retry_window: 3600,
        lifetime: 86400,
    };

    #[test]
    fn networks_and_keys() {
        assert_eq!(network("192.0.2.77".parse().unwrap()), "192.0.2.0/24");
        assert_eq!(
            network("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            network("::ffff:192.0.2.77".parse().unwrap()),
            "192.0.2.0/24"
        );
        assert_eq!(
            triplet_key("192.0.2.0/24", "A@B.test", "C@D.test"),
            "t:192.0.2.0/24|a@b.test|c@d.test"
        );
    }

    #[test]
    fn a_triplet_passes_when_retried_in_its_window() {
        let (v, r) = check_triplet(None, 1000, T);
        assert_eq!(v, Verdict::Defer { wait: 300 });
        // Too early: deferred again, the clock not reset.
        let (v, r) = check_triplet(Some(r), 1100, T);
        assert_eq!(v, Verdict::Defer { wait: 200 });
        assert_eq!((r.first, r.last), (1000, 1100));
        let (v, r) = check_triplet(Some(r), 1300, T);
        assert_eq!(v, Verdict::Pass);
        assert_eq!(r.passed, 1);
        // Passed: stays so within the lifetime of its last use.
        let (v, r) = check_triplet(Some(r), 1300 + 86400, T);
        assert_eq!((v, r.passed), (Verdict::Pass, 2));
        let (v, r) = check_triplet(Some(r), 1300 + 3 * 86400, T);
        assert_eq!(v, Verdict::Defer { wait: 300 });
        assert_eq!(r.passed, 0);
    }

    #[test]
    fn a_late_retry_starts_over() {
        let (_, r) = check_triplet(None, 1000, T);
        let (v, r) = check_triplet(Some(r), 1000 + 300 + 3601, T);
        assert_eq!(v, Verdict::Defer { wait: 300 });
        assert_eq!(r.first, 1000 + 300 + 3601);
    }

    #[test]
    fn clients_and_domains_get_allowed() {
        let mut c = None;
        for i in 0..3 {
            assert!(!client_allowed(c, 10, T, 3), "after {i}");
            c = Some(passed_once_more(c, 10));
        }
        assert!(client_allowed(c, 10, T, 3));
        assert!(!client_allowed(c, 10, T, 0), "0: never");
        assert!(!client_allowed(c, 10 + 86401, T, 3), "expired");
        let d = Some(passed_once_more(None, 10));
        assert!(domain_allowed(d, 20, T));
        assert!(!domain_allowed(None, 20, T));
    }
}
