//! Banned networks (brute-force defence): checked when a connection is accepted, before any
//! protocol starts, and watched by every open session ([`crate::Shutdown::wait`]), which ends
//! when its address is banned. The list lives in memory, shared by every listener; the auth
//! guard keeps it in step with the store, where bans outlive restarts.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use mailkeep_types::ipnet::IpNet;

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The address or network banned.
    pub network: IpNet,
    /// Why, as logged and listed.
    pub reason: String,
    /// Unix seconds it ends; None: until removed.
    pub expires: Option<i64>,
}

/// The bans in force, shared.
#[derive(Clone)]
pub struct BanList {
    inner: Arc<RwLock<Vec<Ban>>>,
    /// Counts changes of the list; sessions wait on it to see whether their address was
    /// banned.
    changes: Arc<watch::Sender<u64>>,
}

impl Default for BanList {
    fn default() -> BanList {
        BanList {
            inner: Arc::default(),
            changes: Arc::new(watch::channel(0).0),
        }
    }
}

impl BanList {
    /// Replaces the whole list (sessions are told only when it changed).
    pub fn set(&self, mut bans: Vec<Ban>) {
        bans.sort_by_key(|b| b.network.to_string());
        let changed = match self.inner.write() {
            Ok(mut b) => {
                let changed = *b != bans;
                *b = bans;
                changed
            }
            Err(_) => false,
        };
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Adds (or replaces) the ban of one network.
    pub fn add(&self, ban: Ban) {
        if let Ok(mut b) = self.inner.write() {
            b.retain(|x| x.network != ban.network);
            b.push(ban);
            b.sort_by_key(|b| b.network.to_string());
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// A receiver that sees every change of the list from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The ban covering `ip` at unix time `now`, if any.
    pub fn find(&self, ip: IpAddr, now: i64) -> Option<Ban> {
        let b = self.inner.read().ok()?;
        b.iter()
            .find(|x| x.network.contains(ip) && x.expires.is_none_or(|e| e > now))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_cover_their_network_until_they_expire() {
        let list = BanList::default();
        list.add(Ban {
            network: "192.0.2.0/24".parse().unwrap(),
            reason: "test".into(),
            expires: Some(100),
        });
        list.add(Ban {
            network: "2001:db8::/64".parse().unwrap(),
            reason: "forever".into(),
            expires: None,
        });
        assert!(list.find("192.0.2.9".parse().unwrap(), 99).is_some());
        assert!(
            list.find("192.0.2.9".parse().unwrap(), 100).is_none(),
            "expired"
        );
        assert!(list.find("198.51.100.1".parse().unwrap(), 0).is_none());
        assert!(list
            .find("2001:db8::77".parse().unwrap(), i64::MAX)
            .is_some());
        list.set(Vec::new());
        assert!(list.find("2001:db8::77".parse().unwrap(), 0).is_none());
    }

    #[test]
    fn watchers_are_told_of_changes_only() {
        let list = BanList::default();
        let mut rx = list.subscribe();
        let ban = Ban {
            network: "192.0.2.0/24".parse().unwrap(),
            reason: "test".into(),
            expires: None,
        };
        list.add(ban.clone());
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        // The same list again (the guard's refresh every second): no wake-up.
        list.set(vec![ban]);
        assert!(!rx.has_changed().unwrap());
        list.set(Vec::new());
        assert!(rx.has_changed().unwrap());
    }
}
