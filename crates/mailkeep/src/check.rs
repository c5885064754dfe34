//! `mailkeep check blocklists`: whether this server's sending addresses are on the
//! configured DNS blocklists (`[dnsbl] lists`).
//!
//! A list is asked for `<reversed address>.<zone>` (RFC 5782 2.1: IPv4 octets, IPv6
//! nibbles, in reverse); an A record in 127.0.0.0/8 means listed (its TXT record says why),
//! no such name means not listed. Answers in 127.255.255.0/24 are the list refusing to
//! answer (Spamhaus does so for queries through large public resolvers), not a listing.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use clap::Subcommand;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

#[derive(Subcommand)]
pub enum CheckCmd {
    /// Whether the server's addresses (--ip, default: the host name's A/AAAA) are on the
    /// blocklists of `[dnsbl] lists`; exits 1 when one is listed.
    Blocklists {
        #[arg(long)]
        ip: Vec<IpAddr>,
    },
}

/// The labels of `ip` in reverse, as reverse DNS (RFC 1035 3.5, RFC 3596 2.5) and DNS
/// blocklists (RFC 5782 2.1, 2.4) use them: IPv4 octets, IPv6 nibbles.
pub fn reversed(ip: IpAddr) -> String {
    match ip {
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
pub fn dnsbl_name(ip: IpAddr, zone: &str) -> String {
    format!("{}.{}.", reversed(ip), zone.trim_end_matches('.'))
}

/// What one list says of one address.
enum Listing {
    Clean,
    Listed { code: String, why: String },
    Error(String),
}

async fn ask(resolver: &TokioResolver, ip: IpAddr, zone: &str) -> Listing {
    let name = dnsbl_name(ip, zone);
    let codes: Vec<std::net::Ipv4Addr> = match resolver.lookup(name.as_str(), RecordType::A).await {
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
    if codes.iter().all(|c| c.octets()[..3] == [127, 255, 255]) {
        return Listing::Error(format!(
            "the list refused to answer ({}): ask through your own resolver",
            codes[0]
        ));
    }
    if !codes.iter().any(|c| c.octets()[0] == 127) {
        return Listing::Error(format!("unexpected answer {}", codes[0]));
    }
    let why = match resolver.txt_lookup(name.as_str()).await {
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

pub fn check(config: &Path, cmd: CheckCmd) -> Result<()> {
    let cfg = mailkeep_config::Config::load(config)?;
    match cmd {
        CheckCmd::Blocklists { ip } => {
            let resolver = mailkeep_net::resolver(&cfg.dns.servers, cfg.dns.timeout)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?;
            let listed = rt.block_on(async {
                let mut ips = ip;
                if ips.is_empty() {
                    let name = format!("{}.", cfg.hostname.trim_end_matches('.'));
                    if let Ok(l) = resolver.lookup_ip(name.as_str()).await {
                        ips.extend(l.iter());
                    }
                }
                if ips.is_empty() {
                    anyhow::bail!(
                        "no address to check: {} has no A/AAAA record; pass --ip",
                        cfg.hostname
                    );
                }
                if cfg.dnsbl.is_empty() {
                    anyhow::bail!("no blocklists configured ([dnsbl] lists)");
                }
                let mut listed = 0;
                for ip in &ips {
                    for zone in &cfg.dnsbl {
                        let zone = zone.to_string();
                        match ask(&resolver, *ip, &zone).await {
                            Listing::Clean => println!("ok      {ip:<40} {zone}"),
                            Listing::Listed { code, why } => {
                                listed += 1;
                                println!("LISTED  {ip:<40} {zone} ({code}) {why}");
                            }
                            Listing::Error(e) => println!("error   {ip:<40} {zone}: {e}"),
                        }
                    }
                }
                Ok(listed)
            })?;
            if listed > 0 {
                println!("{listed} listing(s): see each list's site for why and how to be removed");
                std::process::exit(1);
            }
            println!("not listed anywhere asked");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc_5782() {
        // RFC 5782 2.1 and 2.4 examples.
        assert_eq!(
            dnsbl_name("192.168.42.23".parse().unwrap(), "dnsbl.example.net"),
            "23.42.168.192.dnsbl.example.net."
        );
        assert_eq!(
            dnsbl_name(
                "2001:db8:1:2:3:4:567:89ab".parse().unwrap(),
                "ugly.example.com"
            ),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com."
        );
    }
}
