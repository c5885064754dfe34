//! DNS blocklists (RFC 5782): of IP addresses, which the MX asks about connecting clients
//! and `mailkeep check blocklists` about our own addresses; of domains (RHSBL, URI
//! blocklists), which the MX asks about senders' domains and the domains of links.
//!
//! A list is asked for `<reversed address>.<zone>`: an A record in 127.0.0.0/8 means listed
//! (its TXT record says why), no such name means not listed. Answers in 127.255.255.0/24
//! are the list refusing to answer (Spamhaus does so for queries through large public
//! resolvers), not a listing. The resolver caches answers for their TTL.

use std::net::IpAddr;

use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

/// What one list says of one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// Not listed.
    Clean,
    /// Listed: the answer's codes and the list's reason.
    Listed {
        /// The A records, comma-separated.
        code: String,
        /// The TXT record, if any.
        why: String,
    },
    /// No usable answer.
    Error(String),
}

/// The labels of `ip` in reverse, as reverse DNS (RFC 1035 3.5, RFC 3596 2.5) and DNS
/// blocklists (RFC 5782 2.1, 2.4) use them: IPv4 octets, IPv6 nibbles.
pub fn reversed(ip: IpAddr) -> String {
    // An IPv4 client seen through a dual-stack listener is asked about as IPv4.
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut n: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .map(|x| format!("{x:x}"))
                .collect();
            n.reverse();
            n.join(".")
        }
    }
}

/// The name a DNS blocklist is asked about `ip` (RFC 5782 2.1, 2.4).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    format!("{}.{}.", reversed(ip), zone.trim_end_matches('.'))
}

/// Asks the list `zone` about `ip`.
pub async fn lookup(resolver: &TokioResolver, ip: IpAddr, zone: &str) -> Listing {
    ask(resolver, &query_name(ip, zone), |_| false).await
}

/// Asks the domain list (RHSBL or URI blocklist, RFC 5782 2.3) `zone` about `domain`:
/// `<domain>.<zone>`. Besides 127.255.255.x, these lists answer 127.0.0.1 (SURBL,
/// URIBL) or x.x.x.255 (Spamhaus DBL) when they refuse a query.
pub async fn lookup_domain(resolver: &TokioResolver, domain: &str, zone: &str) -> Listing {
    let name = format!(
        "{}.{}.",
        domain.trim_end_matches('.'),
        zone.trim_end_matches('.')
    );
    ask(resolver, &name, |c| {
        c == std::net::Ipv4Addr::new(127, 0, 0, 1) || c.octets()[3] == 255
    })
    .await
}

/// Asks a list about `name`; `refused` tells answers that are the list refusing the
/// query (beyond RFC 5782's 127.255.255.x).
async fn ask(
    resolver: &TokioResolver,
    name: &str,
    refused: impl Fn(std::net::Ipv4Addr) -> bool,
) -> Listing {
    let codes: Vec<std::net::Ipv4Addr> = match resolver.lookup(name, RecordType::A).await {
        Ok(l) => l
            .iter()
            .filter_map(|r| match r {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => return Listing::Clean,
        Err(e) => return Listing::Error(e.to_string()),
    };
    if codes.is_empty() {
        return Listing::Clean;
    }
    // RFC 5782 2.1: listings are in 127.0.0.0/8; 127.255.255.x are refusals to answer.
    if codes
        .iter()
        .all(|c| c.octets()[..3] == [127, 255, 255] || refused(*c))
    {
        return Listing::Error(format!(
            "the list refused to answer ({}): ask through your own resolver",
            codes[0]
        ));
    }
    if !codes.iter().any(|c| c.octets()[0] == 127) {
        return Listing::Error(format!("unexpected answer {}", codes[0]));
    }
    let why = match resolver.txt_lookup(name).await {
        Ok(t) => t
            .iter()
            .map(|r| {
                r.txt_data()
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => String::new(),
    };
    Listing::Listed {
        code: codes
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc_5782() {
        // RFC 5782 2.1 and 2.4 examples.
        assert_eq!(
            query_name("192.168.42.23".parse().unwrap(), "dnsbl.example.net"),
            "23.42.168.192.dnsbl.example.net."
        );
        assert_eq!(
            query_name(
                "2001:db8:1:2:3:4:567:89ab".parse().unwrap(),
                "ugly.example.com"
            ),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com."
        );
        assert_eq!(
            query_name("::ffff:192.168.42.23".parse().unwrap(), "bl.test"),
            "23.42.168.192.bl.test."
        );
    }
}
