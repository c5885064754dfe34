//! IP networks (`203.0.113.0/24`, `2001:db8::/64`, or one address) for bans and allowlists.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address and a prefix length; the address is kept with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// A network that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address or network (like 203.0.113.7, 203.0.113.0/24 or 2001:db8::/64)")]
pub struct IpNetError(pub String);

impl IpNet {
    /// The network of `addr` with `prefix` bits (at most 32 for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| IpNet {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// One address (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn host(ip: IpAddr) -> IpNet {
        let ip = canonical(ip);
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        IpNet { addr: ip, prefix }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) as the IPv4 address they stand for.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<IpNet, IpNetError> {
        let err = || IpNetError(s.to_string());
        match s.trim().split_once('/') {
            None => s
                .trim()
                .parse::<IpAddr>()
                .map(IpNet::host)
                .map_err(|_| err()),
            Some((a, p)) => {
                let addr = canonical(a.parse::<IpAddr>().map_err(|_| err())?);
                let prefix: u8 = p.parse().map_err(|_| err())?;
                IpNet::new(addr, prefix).ok_or_else(err)
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_match_and_print() {
        let n: IpNet = "203.0.113.77/24".parse().unwrap();
        assert_eq!(n.to_string(), "203.0.113.0/24");
        assert!(n.contains("203.0.113.1".parse().unwrap()));
        assert!(n.contains("::ffff:203.0.113.9".parse().unwrap()));
        assert!(!n.contains("203.0.114.1".parse().unwrap()));
        assert!(!n.contains("2001:db8::1".parse().unwrap()));
        let h: IpNet = "192.0.2.5".parse().unwrap();
        assert_eq!(h.to_string(), "192.0.2.5");
        assert!(h.contains("192.0.2.5".parse().unwrap()));
        assert!(!h.contains("192.0.2.6".parse().unwrap()));
        let v6: IpNet = "2001:db8:1:2:3::9/64".parse().unwrap();
        assert_eq!(v6.to_string(), "2001:db8:1:2::/64");
        assert!(v6.contains("2001:db8:1:2:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db8:1:3::1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("198.51.100.1".parse().unwrap()));
        for bad in ["", "1.2.3.4/33", "::/129", "example.com", "1.2.3.4/x"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }
}
