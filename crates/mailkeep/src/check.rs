//! `mailkeep check blocklists`: whether this server's sending addresses are on the
//! configured DNS blocklists (`[dnsbl] lists`).
//!
//! The lookups are `mailkeep_policy::dnsbl`'s (RFC 5782), the same the MX makes of
//! connecting clients.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CheckCmd {
    /// Whether the server's addresses (--ip, default: the host name's A/AAAA) are on the
    /// blocklists of `[dnsbl] lists`; exits 1 when one is listed.
    Blocklists {
        #[arg(long)]
        ip: Vec<IpAddr>,
    },
}

pub use mailkeep_policy::dnsbl::reversed;
use mailkeep_policy::dnsbl::{lookup, Listing};

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
                if cfg.dnsbl.lists.is_empty() {
                    anyhow::bail!("no blocklists configured ([dnsbl] lists)");
                }
                let mut listed = 0;
                for ip in &ips {
                    for zone in &cfg.dnsbl.lists {
                        let zone = zone.to_string();
                        match lookup(&resolver, *ip, &zone).await {
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
