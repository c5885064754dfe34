//! Administrative commands: domains, users, aliases, shared mailboxes, local delivery, the
//! delivery log.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use mailkeep_config::{parse_size, raw::Size, Config};
use mailkeep_delivery::{now_micros, Delivery, Incoming};
use mailkeep_store::directory::Resolution;
use mailkeep_store::{AclChange, LogEvent, LogFilter, SharedStore};
use mailkeep_types::{Address, Domain};

#[derive(Subcommand)]
pub enum DomainCmd {
    /// Host a domain.
    Add { domain: String },
    /// List hosted domains.
    List,
    /// Stop hosting a domain (it must have no users or aliases left).
    Remove { domain: String },
    /// Send mail for unknown addresses of DOMAIN to ADDRESS (or --clear).
    CatchAll {
        domain: String,
        address: Option<String>,
        #[arg(long, conflicts_with = "address")]
        clear: bool,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user; the password is asked for, or read from standard input when it is not a
    /// terminal (never from an argument, which would show in the process list).
    Add {
        address: String,
        /// Quota, e.g. 2G (default: directory.default_quota).
        #[arg(long)]
        quota: Option<String>,
    },
    /// List users.
    List {
        #[arg(long)]
        domain: Option<String>,
    },
    /// Remove a user and their mail.
    Remove { address: String },
    /// Change a password (asked for, or read from standard input).
    Passwd { address: String },
    /// Set a quota (e.g. 500M, 2G; 0 = unlimited).
    Quota { address: String, size: String },
    /// App passwords: a generated password per mail client, accepted by SMTP submission,
    /// IMAP and POP3 like the account's password and revocable on its own.
    #[command(subcommand)]
    AppPassword(AppPasswordCmd),
}

#[derive(Subcommand)]
pub enum AppPasswordCmd {
    /// Make one for a client ("phone", "thunderbird") and print it; it is shown only once.
    Add { address: String, name: String },
    /// A user's app passwords: name, made, last used.
    List { address: String },
    /// Revoke one: clients using it can no longer log in.
    Remove { address: String, name: String },
}

#[derive(Subcommand)]
pub enum AliasCmd {
    /// Add an alias delivering to one or more addresses.
    Add {
        address: String,
        #[arg(required = true)]
        targets: Vec<String>,
        /// The local users it delivers to may also send as it (submission).
        #[arg(long)]
        sendable: bool,
    },
    /// Let the local users an alias delivers to send as it (`yes`), or stop them (`no`).
    Sendable { address: String, allow: String },
    /// List aliases.
    List {
        #[arg(long)]
        domain: Option<String>,
    },
    /// Remove an alias.
    Remove { address: String },
}

#[derive(Subcommand)]
pub enum BanCmd {
    /// The bans in force: address or network, until when, why.
    List,
    /// Ban an address or network (`203.0.113.7`, `203.0.113.0/24`, `2001:db8::/64`): its
    /// connections are refused on every listener.
    Add {
        network: String,
        /// For how long (`1h`, `7d`); without it, until removed.
        #[arg(long = "for")]
        duration: Option<String>,
        /// Why, for the list and the log.
        #[arg(long, default_value = "banned by an admin")]
        reason: String,
    },
    /// Lift a ban (exactly as listed).
    Remove { network: String },
}

#[derive(Subcommand)]
pub enum DmarcCmd {
    /// Queue the DMARC aggregate reports recorded so far now, instead of at the end of
    /// reports.interval; a running server sends them.
    Send,
    /// Who sends mail as our domains, from the aggregate reports others sent us: per domain
    /// and source address, messages, how many passed DMARC, and who reported them.
    Summary {
        /// Only this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Reports covering time since: RFC 3339 time or an age (7d, 24h).
        #[arg(long, default_value = "30d")]
        since: String,
    },
}

#[derive(Subcommand)]
pub enum TlsRptCmd {
    /// Queue the SMTP TLS reports (RFC 8460) recorded so far now, instead of at the end of
    /// reports.interval; a running server sends them.
    Send,
    /// How other servers fare delivering to our domains over TLS, from the TLS reports they
    /// sent: per domain and policy, successful and failed sessions, failure types, reporters.
    Summary {
        /// Only this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Reports covering time since: RFC 3339 time or an age (7d, 24h).
        #[arg(long, default_value = "30d")]
        since: String,
    },
}

#[derive(Subcommand)]
pub enum DkimCmd {
    /// The signing keys of every domain (or one), with the DNS record each needs.
    List { domain: Option<String> },
    /// Make new keys for DOMAIN under new selectors and print their DNS records. Once they
    /// are published, `--confirm` checks DNS and switches signing to them (the old keys move
    /// to dkim/retired/); `--force` switches without finding the records.
    Rotate {
        domain: String,
        #[arg(long)]
        confirm: bool,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum QueueCmd {
    /// Every queued message, one line each: id, age, size, sender, recipients pending.
    List,
    /// One message: its recipients with their state, attempts, next attempt and last reply.
    Show { id: String },
    /// Try the message's pending recipients again at once (ID `all`: every message).
    Retry { id: String },
    /// Keep the message queued without trying it until it is released (ID `all`: every one).
    Hold { id: String },
    /// Release a held message (ID `all`: every one), due at once; or, with `--account ADDR`,
    /// end the account's hold (compromise detection) and release everything it queued.
    Release {
        #[arg(required_unless_present = "account")]
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        account: Option<String>,
    },
    /// Remove the message from the queue without sending it or telling the sender.
    Delete { id: String },
    /// Give up on the message's pending recipients and send the sender a bounce.
    Bounce { id: String },
}

#[derive(Subcommand)]
pub enum AclCmd {
    /// Show who may use OWNER's mailboxes (all of them, or one).
    List {
        owner: String,
        mailbox: Option<String>,
    },
    /// Give WHO rights on OWNER's MAILBOX. WHO is an address or `anyone`, or either with a
    /// leading `-` for rights taken away; RIGHTS are RFC 4314 letters (l lookup, r read, s seen,
    /// w write flags, i insert, p post, k create, x delete mailbox, t delete messages,
    /// e expunge, a admin), with a leading `+` or `-` to add or remove.
    Set {
        owner: String,
        mailbox: String,
        #[arg(allow_hyphen_values = true)]
        who: String,
        #[arg(allow_hyphen_values = true)]
        rights: String,
    },
    /// Remove WHO's entry from OWNER's MAILBOX.
    Remove {
        owner: String,
        mailbox: String,
        #[arg(allow_hyphen_values = true)]
        who: String,
    },
}

#[derive(Subcommand)]
pub enum LogCmd {
    /// Find SMTP sessions and deliveries; prints a timeline per session.
    Search {
        /// Envelope sender contains this.
        #[arg(long)]
        sender: Option<String>,
        /// A recipient contains this.
        #[arg(long)]
        recipient: Option<String>,
        /// Message-ID.
        #[arg(long)]
        message_id: Option<String>,
        /// Client IP address.
        #[arg(long)]
        ip: Option<String>,
        /// Queue id.
        #[arg(long)]
        queue_id: Option<String>,
        /// accepted, rejected, tempfail, delivered, failed, abandoned.
        #[arg(long)]
        outcome: Option<String>,
        /// The event kind starts with this: smtp.auth, queue.attempt, queue.mta_sts, queue.
        #[arg(long)]
        kind: Option<String>,
        /// Start: RFC 3339 time (2026-11-28T10:00:00Z) or an age (30m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// End: RFC 3339 time or an age.
        #[arg(long)]
        until: Option<String>,
        /// Most sessions shown.
        #[arg(long, default_value = "50")]
        limit: usize,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
    },
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub fn open(config: &Path) -> Result<(Config, SharedStore)> {
    let config = Config::load(config)?;
    // Run as the server's user, so that files the store creates stay usable by `serve`.
    crate::privileges::drop_to(config.user.as_deref())?;
    let store = crate::serve::open_store(&config)?;
    Ok((config, store))
}

fn domain_arg(s: &str, what: &str) -> Result<Domain> {
    Domain::parse(s).map_err(|e| anyhow!("{what} {s:?}: {e}"))
}

fn address_arg(s: &str, what: &str) -> Result<Address> {
    Address::parse(s).map_err(|e| anyhow!("{what} {s:?}: {e}"))
}

/// An address to create (a user, an alias or its target): exactly what SMTP's RCPT accepts,
/// so that nothing is added that mail cannot reach.
fn new_address_arg(s: &str, what: &str) -> Result<Address> {
    mailkeep_smtp::recipient_address(s.trim()).map_err(|e| anyhow!("{what} {s:?}: {e}"))
}

fn size_arg(s: &str, what: &str) -> Result<u64> {
    parse_size(&Size::Str(s.to_string()))
        .ok_or_else(|| anyhow!("{what} {s:?}: expected a size like 500M or 2G"))
}

fn read_password(address: &Address) -> Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let p1 = rpassword::prompt_password(format!("Password for {address}: "))?;
        let p2 = rpassword::prompt_password("Again: ")?;
        if p1 != p2 {
            bail!("the passwords differ");
        }
        p1
    } else {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s.lines().next().unwrap_or("").to_string()
    };
    if password.chars().count() < 8 {
        bail!("password: at least 8 characters are needed");
    }
    Ok(password)
}

pub fn domain(config: &Path, cmd: DomainCmd) -> Result<()> {
    let (_, store) = open(config)?;
    runtime()?.block_on(async {
        match cmd {
            DomainCmd::Add { domain } => {
                let d = domain_arg(&domain, "domain")?;
                store.domain_add(&d).await?;
                println!("added domain {d}");
            }
            DomainCmd::List => {
                for d in store.domains().await? {
                    match d.catch_all {
                        Some(c) => println!("{}\tcatch-all -> {c}", d.name.to_unicode()),
                        None => println!("{}", d.name.to_unicode()),
                    }
                }
            }
            DomainCmd::Remove { domain } => {
                let d = domain_arg(&domain, "domain")?;
                store.domain_remove(&d).await?;
                println!("removed domain {d}");
            }
            DomainCmd::CatchAll {
                domain,
                address,
                clear,
            } => {
                let d = domain_arg(&domain, "domain")?;
                let target = match (address, clear) {
                    (Some(a), false) => Some(address_arg(&a, "address")?),
                    (None, true) => None,
                    _ => bail!("give an ADDRESS or --clear"),
                };
                store.domain_set_catch_all(&d, target.as_ref()).await?;
                match target {
                    Some(t) => println!("catch-all of {d} -> {t}"),
                    None => println!("catch-all of {d} cleared"),
                }
            }
        }
        Ok(())
    })
}

fn human(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n >= 1 << 30 => format!("{:.1}G", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1}M", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1}K", n as f64 / 1024.0),
        n => n.to_string(),
    }
}

pub fn user(config_path: &Path, cmd: UserCmd) -> Result<()> {
    let (config, store) = open(config_path)?;
    let rt = runtime()?;
    match cmd {
        UserCmd::Add { address, quota } => {
            let a = new_address_arg(&address, "address")?;
            let quota = match quota {
                Some(q) => size_arg(&q, "--quota")?,
                None => config.directory.default_quota,
            };
            let password = read_password(&a)?;
            let hash =
                mailkeep_store::password::hash_password(&password).map_err(|e| anyhow!(e))?;
            rt.block_on(store.user_add(&a, &hash, quota))?;
            println!("added user {a}");
        }
        UserCmd::List { domain } => {
            let d = domain.map(|d| domain_arg(&d, "--domain")).transpose()?;
            println!("{:<40} {:>8} {:>8}", "ADDRESS", "USED", "QUOTA");
            for u in rt.block_on(store.users(d.as_ref()))? {
                let quota = if u.quota == 0 {
                    "-".into()
                } else {
                    human(u.quota)
                };
                println!(
                    "{:<40} {:>8} {:>8}",
                    u.address.to_string(),
                    human(u.used),
                    quota
                );
            }
        }
        UserCmd::Remove { address } => {
            let a = address_arg(&address, "address")?;
            rt.block_on(store.user_remove(&a))?;
            println!("removed user {a}");
        }
        UserCmd::Passwd { address } => {
            let a = address_arg(&address, "address")?;
            if rt.block_on(store.user_get(&a.key()))?.is_none() {
                bail!("user {a} not found");
            }
            let password = read_password(&a)?;
            let hash =
                mailkeep_store::password::hash_password(&password).map_err(|e| anyhow!(e))?;
            rt.block_on(store.user_set_password(&a, &hash))?;
            println!("password of {a} changed");
        }
        UserCmd::AppPassword(AppPasswordCmd::Add { address, name }) => {
            let a = address_arg(&address, "address")?;
            let name = name.trim();
            if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
                bail!("name: 1 to 64 printable characters, not {name:?}");
            }
            let password = mailkeep_store::password::app_password_generate();
            let digest = mailkeep_store::password::app_password_digest(&password)
                .ok_or_else(|| anyhow!("a generated app password did not check"))?;
            let now = mailkeep_queue::now_secs();
            rt.block_on(store.app_password_add(&a, name, &digest, now))?;
            println!("app password {name:?} of {a} (shown only this once; log in with it as {a}):");
            println!("{password}");
        }
        UserCmd::AppPassword(AppPasswordCmd::List { address }) => {
            let a = address_arg(&address, "address")?;
            if rt.block_on(store.user_get(&a.key()))?.is_none() {
                bail!("address: no user {a}");
            }
            let now = mailkeep_queue::now_secs();
            println!("{:<30} {:>8} {:>10}", "NAME", "MADE", "LAST USED");
            for p in rt.block_on(store.app_passwords(&a))? {
                let used = p
                    .last_used
                    .map(|t| format!("{} ago", ago(now, t)))
                    .unwrap_or_else(|| "never".into());
                println!(
                    "{:<30} {:>8} {:>10}",
                    p.name,
                    format!("{} ago", ago(now, p.created)),
                    used
                );
            }
        }
        UserCmd::AppPassword(AppPasswordCmd::Remove { address, name }) => {
            let a = address_arg(&address, "address")?;
            rt.block_on(store.app_password_remove(&a, &name))
                .map_err(|_| anyhow!("name: {a} has no app password {name:?}"))?;
            println!("app password {name:?} of {a} revoked");
        }
        UserCmd::Quota { address, size } => {
            let a = address_arg(&address, "address")?;
            let q = size_arg(&size, "size")?;
            rt.block_on(store.user_set_quota(&a, q))?;
            println!(
                "quota of {a}: {}",
                if q == 0 { "unlimited".into() } else { human(q) }
            );
        }
    }
    Ok(())
}

pub fn alias(config: &Path, cmd: AliasCmd) -> Result<()> {
    let (_, store) = open(config)?;
    runtime()?.block_on(async {
        match cmd {
            AliasCmd::Add {
                address,
                targets,
                sendable,
            } => {
                let a = new_address_arg(&address, "address")?;
                let t = targets
                    .iter()
                    .map(|t| new_address_arg(t, "target"))
                    .collect::<Result<Vec<_>>>()?;
                store.alias_add(&a, &t).await?;
                if sendable {
                    store.alias_set_sendable(&a, true).await?;
                }
                println!("added alias {a}");
            }
            AliasCmd::Sendable { address, allow } => {
                let a = address_arg(&address, "address")?;
                let allow = match allow.to_ascii_lowercase().as_str() {
                    "yes" | "on" | "true" => true,
                    "no" | "off" | "false" => false,
                    other => bail!("ALLOW: {other:?} is not yes or no"),
                };
                store.alias_set_sendable(&a, allow).await?;
                let how = if allow { "may now" } else { "may no longer" };
                println!("the users of alias {a} {how} send as it");
            }
            AliasCmd::List { domain } => {
                let d = domain.map(|d| domain_arg(&d, "--domain")).transpose()?;
                for a in store.aliases(d.as_ref()).await? {
                    let t: Vec<String> = a.targets.iter().map(|t| t.to_string()).collect();
                    let send = if a.sendable { " (sendable)" } else { "" };
                    println!("{} -> {}{send}", a.address, t.join(", "));
                }
            }
            AliasCmd::Remove { address } => {
                let a = address_arg(&address, "address")?;
                store.alias_remove(&a).await?;
                println!("removed alias {a}");
            }
        }
        Ok(())
    })
}

/// (file, selector, algorithm) of DOMAIN's key files in `dir` with this suffix
/// (`""` active, `".pending"` made by `dkim rotate`).
fn dkim_files(dir: &Path, domain: &str, suffix: &str) -> Vec<(PathBuf, String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(&format!(".pem{suffix}")) else {
            continue;
        };
        let Some((rest, alg)) = stem.rsplit_once('.') else {
            continue;
        };
        let Some((d, selector)) = rest.rsplit_once('.') else {
            continue;
        };
        if d.eq_ignore_ascii_case(domain) && matches!(alg, "ed25519" | "rsa") {
            out.push((e.path(), selector.to_string(), alg.to_string()));
        }
    }
    out.sort();
    out
}

/// DKIM keys: list them, and rotate them in two steps (new keys and their records; then the
/// switch once DNS has them).
pub fn dkim(config: &Path, cmd: DkimCmd) -> Result<()> {
    let cfg = Config::load(config)?;
    crate::privileges::drop_to(cfg.user.as_deref())?;
    let dir = cfg.data_dir.join("dkim");
    match cmd {
        DkimCmd::List { domain } => {
            let mut domains: Vec<String> = match domain {
                Some(d) => vec![domain_arg(&d, "DOMAIN")?.to_string()],
                None => std::fs::read_dir(&dir)
                    .map(|e| {
                        e.flatten()
                            .filter_map(|e| {
                                let n = e.file_name().to_string_lossy().into_owned();
                                let stem = n.split(".pem").next()?.to_string();
                                let (rest, _) = stem.rsplit_once('.')?;
                                let (d, _) = rest.rsplit_once('.')?;
                                Some(d.to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            domains.sort();
            domains.dedup();
            for d in &domains {
                for (suffix, state) in [("", "signing"), (".pending", "pending (not used yet)")] {
                    for (path, selector, alg) in dkim_files(&dir, d, suffix) {
                        let (name, value) = crate::init::dkim_record(&path, d, &selector)?;
                        println!("{d}  {selector}  {alg}  {state}");
                        print!("  {}", crate::init::dkim_zone_lines(&[(name, value)]));
                    }
                }
            }
            if domains.is_empty() {
                println!("no DKIM keys in {}", dir.display());
            }
            Ok(())
        }
        DkimCmd::Rotate {
            domain,
            confirm,
            force,
        } => {
            let domain = domain_arg(&domain, "DOMAIN")?;
            let d = domain.to_string();
            let pending = dkim_files(&dir, &d, ".pending");
            if !confirm {
                if !pending.is_empty() {
                    bail!(
                        "a rotation of {d} is already pending: publish its records (`mailkeep dkim list {d}`) and run `mailkeep dkim rotate {d} --confirm`"
                    );
                }
                // Selectors mk<N>e / mk<N>r: the next N after every one in use or retired.
                let mut used = dkim_files(&dir, &d, "");
                used.extend(dkim_files(&dir.join("retired"), &d, ""));
                let n = used
                    .iter()
                    .filter_map(|(_, s, _)| {
                        s.strip_prefix("mk")?
                            .trim_end_matches(['e', 'r'])
                            .parse::<u32>()
                            .ok()
                    })
                    .max()
                    .unwrap_or(0)
                    + 1;
                let records = crate::init::dkim_keys_as(
                    &dir,
                    &domain,
                    &format!("mk{n}e"),
                    &format!("mk{n}r"),
                    ".pending",
                )?;
                println!("New DKIM keys for {d}. Publish these records (the current ones stay):");
                println!();
                print!("{}", crate::init::dkim_zone_lines(&records));
                println!();
                println!("Then: mailkeep dkim rotate {d} --confirm");
                return Ok(());
            }
            if pending.is_empty() {
                bail!("no rotation of {d} is pending: run `mailkeep dkim rotate {d}` first");
            }
            let resolver = mailkeep_net::resolver(&cfg.dns.servers, cfg.dns.timeout)?;
            let rt = runtime()?;
            for (path, selector, _) in &pending {
                let (name, value) = crate::init::dkim_record(path, &d, selector)?;
                let found: Vec<String> = rt
                    .block_on(resolver.txt_lookup(format!("{name}.")))
                    .map(|txt| {
                        txt.iter()
                            .map(|r| {
                                r.txt_data()
                                    .iter()
                                    .map(|p| String::from_utf8_lossy(p).into_owned())
                                    .collect::<String>()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let squash = |s: &str| s.split_whitespace().collect::<String>();
                let published = found.iter().any(|f| squash(f) == squash(&value));
                if !published && !force {
                    bail!(
                        "{name} is not published as expected (found {found:?}); publish it, wait for DNS, and run this again (or pass --force)"
                    );
                }
                println!(
                    "{name}: {}",
                    if published {
                        "published"
                    } else {
                        "not checked (--force)"
                    }
                );
            }
            let retired = dir.join("retired");
            let old = dkim_files(&dir, &d, "");
            if !old.is_empty() {
                std::fs::create_dir_all(&retired)
                    .with_context(|| format!("create {}", retired.display()))?;
            }
            for (path, _, _) in &old {
                let to = retired.join(path.file_name().unwrap_or_default());
                std::fs::rename(path, &to)
                    .with_context(|| format!("move {} to {}", path.display(), to.display()))?;
            }
            for (path, _, _) in &pending {
                let to = path.with_extension("");
                std::fs::rename(path, &to).with_context(|| format!("rename {}", path.display()))?;
            }
            println!(
                "{d} now signs with {}.",
                pending
                    .iter()
                    .map(|p| p.1.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
            println!("A running server picks the new keys up on SIGHUP (or restart).");
            if !old.is_empty() {
                let names: Vec<String> = old
                    .iter()
                    .map(|(_, s, _)| format!("{s}._domainkey.{d}"))
                    .collect();
                println!(
                    "Keep the old records ({}) published for a week, so mail in transit still verifies; then remove them.",
                    names.join(", ")
                );
            }
            Ok(())
        }
    }
}

/// Bans: what the brute-force defence and admins banned. A running server sees changes
/// within seconds.
pub fn ban(config: &Path, cmd: BanCmd) -> Result<()> {
    let (cfg, store) = open(config)?;
    runtime()?.block_on(async {
        let now = now_micros() / 1_000_000;
        match cmd {
            BanCmd::List => {
                let bans = store.bans(now).await?;
                if bans.is_empty() {
                    println!("no bans");
                }
                for b in bans {
                    let until = match b.expires {
                        Some(e) => format!("for {} more", ago(e, now)),
                        None => "until removed".into(),
                    };
                    println!(
                        "{:<24} {:<18} {} (since {} ago)",
                        b.network,
                        until,
                        b.reason,
                        ago(now, b.created)
                    );
                }
            }
            BanCmd::Add {
                network,
                duration,
                reason,
            } => {
                let net: mailkeep_types::ipnet::IpNet = network
                    .parse()
                    .map_err(|e| anyhow::anyhow!("NETWORK: {e}"))?;
                if cfg.bans.allow.iter().any(|a| a.contains(net.addr())) {
                    println!("note: {net} is in bans.allow; it is banned anyway, as asked");
                }
                let expires = match duration {
                    Some(d) => {
                        let d = mailkeep_config::parse_duration(&Size::Str(d.clone()))
                            .filter(|d| !d.is_zero())
                            .ok_or_else(|| {
                                anyhow::anyhow!("--for {d:?}: expected a duration like 1h or 7d")
                            })?;
                        Some(now + d.as_secs() as i64)
                    }
                    None => None,
                };
                store
                    .ban_put(mailkeep_store::BanRow {
                        network: net.to_string(),
                        reason: reason.clone(),
                        created: now,
                        expires,
                    })
                    .await?;
                store
                    .log_append(vec![LogEvent {
                        ts: now_micros(),
                        session: "admin".into(),
                        kind: "auth.ban".into(),
                        ip: Some(net.to_string()),
                        outcome: Some("banned".into()),
                        detail: serde_json::json!({
                            "network": net.to_string(), "reason": reason, "expires": expires,
                            "by": "admin",
                        }),
                        ..Default::default()
                    }])
                    .await?;
                println!("banned {net}");
            }
            BanCmd::Remove { network } => {
                let net: mailkeep_types::ipnet::IpNet = network
                    .parse()
                    .map_err(|e| anyhow::anyhow!("NETWORK: {e}"))?;
                if !store.ban_remove(&net.to_string()).await? {
                    bail!("{net} is not banned (see `mailkeep ban list`)");
                }
                store
                    .log_append(vec![LogEvent {
                        ts: now_micros(),
                        session: "admin".into(),
                        kind: "auth.unban".into(),
                        ip: Some(net.to_string()),
                        outcome: Some("accepted".into()),
                        detail: serde_json::json!({ "network": net.to_string(), "by": "admin" }),
                        ..Default::default()
                    }])
                    .await?;
                println!("lifted the ban of {net}");
            }
        }
        Ok(())
    })
}

fn ago(now: i64, then: i64) -> String {
    let s = (now - then).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The outbound queue, as an admin. Changes reach a running server within a second (it looks
/// at the queue every second).
pub fn queue(config: &Path, cmd: QueueCmd) -> Result<()> {
    let (cfg, store) = open(config)?;
    runtime()?.block_on(async {
        let now = mailkeep_queue::now_secs();
        let found = |id: &str| anyhow!("no queued message {id:?} (see `mailkeep queue list`)");
        match cmd {
            QueueCmd::List => {
                let all = store.queue_list().await?;
                for m in &all {
                    let pending: Vec<&str> = m
                        .recipients
                        .iter()
                        .filter(|r| r.status == mailkeep_store::RcptStatus::Pending)
                        .map(|r| r.recipient.address.as_str())
                        .collect();
                    let held = if m.held { " (held)" } else { "" };
                    let sender = if m.sender.is_empty() { "<>" } else { &m.sender };
                    println!(
                        "{}{held}  {} ago  {} bytes  from {sender}  to {}",
                        m.id,
                        ago(now, m.created),
                        m.size,
                        pending.join(", ")
                    );
                }
                println!("{} message(s) queued", all.len());
            }
            QueueCmd::Show { id } => {
                let m = store.queue_get(&id).await?.ok_or_else(|| found(&id))?;
                let sender = if m.sender.is_empty() { "<>" } else { &m.sender };
                println!("queue id: {}{}", m.id, if m.held { " (held)" } else { "" });
                println!("sender:   {sender}");
                println!("queued:   {} ago, {} bytes", ago(now, m.created), m.size);
                for r in &m.recipients {
                    let state = match r.status {
                        mailkeep_store::RcptStatus::Pending if r.next_attempt > now => {
                            format!("pending, next attempt in {}", ago(r.next_attempt, now))
                        }
                        mailkeep_store::RcptStatus::Pending => "pending, due now".into(),
                        mailkeep_store::RcptStatus::Sent => "sent".into(),
                        mailkeep_store::RcptStatus::Failed => "failed".into(),
                    };
                    println!(
                        "  {}: {state}; {} attempt(s); last: {}",
                        r.recipient.address,
                        r.attempts,
                        r.last_reply.as_deref().unwrap_or("-")
                    );
                }
            }
            QueueCmd::Retry { id } if id == "all" => {
                let n = store.queue_retry_all(now).await?;
                println!("{n} message(s) due now");
            }
            QueueCmd::Hold { id } if id == "all" => {
                let n = store.queue_set_held_all(true).await?;
                println!("{n} message(s) held");
            }
            QueueCmd::Release {
                account: Some(account),
                ..
            } => {
                let a = address_arg(&account, "--account")?;
                let user = store
                    .user_get(&a.key())
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("--account {a}: no such user"))?;
                match store.account_release(user.id, now).await? {
                    Some(n) => {
                        store
                            .log_append(vec![LogEvent {
                                ts: now_micros(),
                                session: "admin".into(),
                                kind: "account.release".into(),
                                sender: Some(a.to_string()),
                                outcome: Some("accepted".into()),
                                detail: serde_json::json!({ "released_messages": n }),
                                ..Default::default()
                            }])
                            .await?;
                        println!("{a}: hold ended, {n} message(s) released, due now");
                    }
                    None => bail!("{a}: its outbound mail is not on hold"),
                }
            }
            QueueCmd::Release { id: Some(id), .. } if id == "all" => {
                let n = store.queue_set_held_all(false).await?;
                store.queue_retry_all(now).await?;
                println!("{n} message(s) released, due now");
            }
            QueueCmd::Retry { id } => {
                store
                    .queue_retry_now(&id, now)
                    .await
                    .map_err(|_| found(&id))?;
                println!("{id}: due now");
            }
            QueueCmd::Hold { id } => {
                store
                    .queue_set_held(&id, true)
                    .await
                    .map_err(|_| found(&id))?;
                println!("{id}: held");
            }
            QueueCmd::Release { id: None, .. } => bail!("ID or --account is needed"),
            QueueCmd::Release { id: Some(id), .. } => {
                store
                    .queue_set_held(&id, false)
                    .await
                    .map_err(|_| found(&id))?;
                store.queue_retry_now(&id, now).await?;
                println!("{id}: released, due now");
            }
            QueueCmd::Delete { id } => {
                store.queue_delete(&id).await.map_err(|_| found(&id))?;
                println!("{id}: deleted");
            }
            QueueCmd::Bounce { id } => {
                // A bounce to a remote sender is signed like any outgoing message.
                let outbound = cli_outbound(&cfg, &store)?;
                if store.queue_get(&id).await?.is_none() {
                    return Err(found(&id));
                }
                let n = outbound
                    .bounce_now(&id, "delivery cancelled by the administrator")
                    .await?;
                // The bounce's log events are written before the command exits.
                store.log_flush().await?;
                println!("{id}: {n} recipient(s) bounced");
            }
        }
        Ok(())
    })
}

/// Shared mailboxes (IMAP ACL, RFC 4314), as an admin: the owner's password is not needed.
pub fn acl(config: &Path, cmd: AclCmd) -> Result<()> {
    let (_, store) = open(config)?;
    runtime()?.block_on(async {
        let owner_of = |owner: &str| {
            let owner = owner.to_string();
            let store = store.clone();
            async move {
                let a = address_arg(&owner, "OWNER")?;
                let user = store
                    .user_get(&a.key())
                    .await?
                    .with_context(|| format!("OWNER: there is no user {a}"))?;
                let boxes = store.mailboxes(user.id).await?;
                anyhow::Ok((user, boxes))
            }
        };
        let find = |boxes: &[mailkeep_store::Mailbox], name: &str| {
            boxes
                .iter()
                .find(|m| {
                    m.name == name || (m.name == "INBOX" && name.eq_ignore_ascii_case("INBOX"))
                })
                .cloned()
                .with_context(|| format!("MAILBOX: there is no mailbox {name:?}"))
        };
        let who_arg = |who: &str| {
            mailkeep_types::acl::canonical_identifier(who).map_err(|e| anyhow::anyhow!("WHO: {e}"))
        };
        match cmd {
            AclCmd::List { owner, mailbox } => {
                let (user, boxes) = owner_of(&owner).await?;
                let shown: Vec<_> = match mailbox {
                    Some(name) => vec![find(&boxes, &name)?],
                    None => boxes,
                };
                println!("{}: every right on their own mailboxes", user.address);
                for mb in shown {
                    for e in store.acl_get(mb.id).await? {
                        println!("{}\t{}\t{}", mb.name, e.identifier, e.rights.to_letters());
                    }
                }
            }
            AclCmd::Set {
                owner,
                mailbox,
                who,
                rights,
            } => {
                let (user, boxes) = owner_of(&owner).await?;
                let mb = find(&boxes, &mailbox)?;
                let who = who_arg(&who)?;
                if who.trim_start_matches('-') == user.address.key() {
                    bail!("WHO: the owner always has every right on their mailboxes");
                }
                let change = match mailkeep_types::acl::parse_mod_rights(&rights)
                    .map_err(|e| anyhow::anyhow!("RIGHTS: {e}"))?
                {
                    (None, r) => AclChange::Replace(r),
                    (Some('+'), r) => AclChange::Add(r),
                    (_, r) => AclChange::Remove(r),
                };
                let now = store.acl_set(mb.id, &who, change).await?;
                println!(
                    "{} {}: {who} now has {:?}",
                    user.address,
                    mb.name,
                    now.to_letters()
                );
            }
            AclCmd::Remove {
                owner,
                mailbox,
                who,
            } => {
                let (user, boxes) = owner_of(&owner).await?;
                let mb = find(&boxes, &mailbox)?;
                let who = who_arg(&who)?;
                store
                    .acl_set(
                        mb.id,
                        &who,
                        AclChange::Replace(mailkeep_store::Rights::NONE),
                    )
                    .await?;
                println!("{} {}: removed {who}", user.address, mb.name);
            }
        }
        Ok(())
    })
}

pub fn deliver(config_path: &Path, to: Vec<String>, from: String) -> Result<()> {
    let (config, store) = open(config_path)?;
    if !from.is_empty() {
        address_arg(&from, "--from")?;
    }
    let mut data = Vec::new();
    std::io::stdin()
        .read_to_end(&mut data)
        .context("read the message from standard input")?;
    if data.len() as u64 > config.smtp.max_message_size {
        bail!(
            "message is {} bytes, over smtp.max_message_size ({})",
            data.len(),
            config.smtp.max_message_size
        );
    }
    // Stored messages always use CRLF line endings, as received over SMTP.
    let data = normalize_crlf(&data);
    let delivery = Delivery::new(store, config.directory.plus_separator);
    delivery.set_hostname(config.hostname.to_string());
    delivery.set_sieve(crate::serve::sieve_settings(&config));
    let queue_id = mailkeep_types::QueueId::new(now_micros() as u64, rand::random()).0;
    runtime()?.block_on(async {
        let mut targets = Vec::new();
        for t in &to {
            let a = address_arg(t, "--to")?;
            match delivery.resolve(&a).await? {
                Resolution::Targets { local, external } => {
                    if !external.is_empty() {
                        bail!("--to {a}: expands to external addresses, which need the outbound queue");
                    }
                    targets.extend(local);
                }
                Resolution::NotLocal => bail!("--to {a}: domain {} is not hosted here", a.domain()),
                Resolution::Unknown => bail!("--to {a}: no such user or alias"),
                Resolution::TooDeep => bail!("--to {a}: alias loop"),
            }
        }
        targets.sort_by_key(|t| t.account);
        targets.dedup_by_key(|t| t.account);
        let delivered = delivery
            .deliver(Incoming {
                data,
                return_path: from,
                recipients: targets,
                queue_id: queue_id.clone(),
                session: format!("cli-{queue_id}"),
                client_ip: None,
                mailbox: mailkeep_types::MailboxRole::Inbox,
                placements: Default::default(),
                virus_clean: false,
                // As an LDA does: a rejection is the exit status, for the caller to bounce.
                refusable: true,
                onward: Default::default(),
                dsn: Default::default(),
            })
            .await?;
        if let Some(reason) = &delivered.rejected {
            let _ = delivery.store().log_append(delivered.events).await;
            bail!("rejected by the recipients' Sieve scripts: {reason}");
        }
        if let Err(e) = delivery.store().log_append(delivered.events).await {
            eprintln!("warning: the message is stored but its delivery log entry was not: {e}");
        }
        let mut failed = 0;
        for o in delivered.outcomes {
            match o.result {
                Ok(Some(s)) => println!("{}: delivered, uid {} (queue id {queue_id})", o.target.address, s.uid),
                Ok(None) => println!("{}: discarded by the recipient's Sieve script (queue id {queue_id})", o.target.address),
                Err(e) => {
                    failed += 1;
                    eprintln!("{}: failed: {e}", o.target.address)
                }
            }
        }
        if failed > 0 {
            bail!("{failed} recipient(s) failed");
        }
        Ok(())
    })
}

fn normalize_crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 40);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Parses `--since`/`--until`: RFC 3339 or an age like `2h`.
fn time_arg(s: &str, what: &str) -> Result<i64> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1000) as i64);
    }
    if let Some(d) = mailkeep_config::parse_duration(&Size::Str(s.to_string())) {
        if s.chars().last().is_some_and(|c| c.is_ascii_alphabetic()) {
            return Ok(now_micros() - d.as_micros() as i64);
        }
    }
    bail!("{what} {s:?}: expected an RFC 3339 time like 2026-11-28T10:00:00Z or an age like 2h")
}

fn format_ts(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| micros.to_string())
}

pub fn log(config: &Path, cmd: LogCmd) -> Result<()> {
    let (_, store) = open(config)?;
    let LogCmd::Search {
        sender,
        recipient,
        message_id,
        ip,
        queue_id,
        outcome,
        kind,
        since,
        until,
        limit,
        json,
    } = cmd;
    let filter = LogFilter {
        sender,
        recipient,
        message_id,
        ip,
        queue_id,
        outcome,
        kind,
        since: since.map(|s| time_arg(&s, "--since")).transpose()?,
        until: until.map(|s| time_arg(&s, "--until")).transpose()?,
        limit,
    };
    let events = runtime()?.block_on(store.log_search(&filter))?;
    use mailkeep_store::logtext::{describe, escape};
    // Fields hold peers' text: escaped, so a peer cannot forge lines (logtext).
    if json {
        for e in &events {
            println!("{}", mailkeep_store::logtext::json(e)?);
        }
        return Ok(());
    }
    if events.is_empty() {
        println!("no matching events");
        return Ok(());
    }
    // One block per session; inside it, one timeline per message (queue id).
    let mut current = String::new();
    let mut message: Option<String> = None;
    for e in &events {
        if e.session != current {
            current = e.session.clone();
            message = None;
            println!();
            println!(
                "session {} from {}",
                escape(&e.session),
                escape(e.ip.as_deref().unwrap_or("local"))
            );
        }
        let indent = match (&e.queue_id, e.kind.as_str()) {
            (Some(q), kind) if kind != "smtp.close" => {
                if message.as_deref() != Some(q) {
                    message = Some(q.clone());
                    println!("  message {}", escape(q));
                }
                "    "
            }
            _ => {
                message = None;
                "  "
            }
        };
        println!(
            "{indent}{} {:<16} {}",
            format_ts(e.ts),
            escape(&e.kind),
            describe(e)
        );
    }
    Ok(())
}

/// The queue as the CLI uses it (bounces, reports): what it queues, a running server sends.
fn cli_outbound(cfg: &Config, store: &SharedStore) -> Result<mailkeep_queue::Outbound> {
    let delivery = mailkeep_delivery::Delivery::new(store.clone(), cfg.directory.plus_separator);
    let outbound = mailkeep_queue::Outbound::new(
        store.clone(),
        delivery,
        mailkeep_net::resolver(&cfg.dns.servers, cfg.dns.timeout)?,
        mailkeep_queue::dnssec::SecureDns::new(&cfg.dns.servers, cfg.dns.timeout),
        cfg.hostname.clone(),
        cfg.queue.clone(),
        mailkeep_queue::dkim::DkimKeys::load(&cfg.data_dir.join("dkim"))?,
    )?;
    outbound.set_reports(cfg.reports.clone());
    Ok(outbound)
}

/// The reports of `kind` received about `domain` (or all) since `--since`.
async fn received(
    store: &SharedStore,
    kind: &str,
    domain: Option<String>,
    since: &str,
) -> Result<(i64, Vec<mailkeep_store::ReceivedReport>)> {
    let since = time_arg(since, "--since")? / 1_000_000;
    let domain = domain.map(|d| domain_arg(&d, "--domain")).transpose()?;
    let domain = domain.map(|d| d.to_string());
    let reports = store
        .received_reports(kind, domain.as_deref(), since)
        .await?;
    Ok((since, reports))
}

/// SMTP TLS reports: send ours now; sum up what others reported about our domains.
pub fn tlsrpt(config: &Path, cmd: TlsRptCmd) -> Result<()> {
    let (cfg, store) = open(config)?;
    runtime()?.block_on(async {
        match cmd {
            TlsRptCmd::Send => {
                let outbound = cli_outbound(&cfg, &store)?;
                let n = outbound.send_tls_reports(true).await?;
                store.log_flush().await?;
                println!("{n} TLS report(s) queued");
            }
            TlsRptCmd::Summary { domain, since } => {
                let (since, reports) = received(&store, "tlsrpt", domain, &since).await?;
                // (domain, policy) -> (success, failure, failure types, reporters)
                type Row = (
                    u64,
                    u64,
                    std::collections::BTreeMap<String, u64>,
                    std::collections::BTreeSet<String>,
                );
                let mut rows: std::collections::BTreeMap<(String, String), Row> =
                    Default::default();
                for r in &reports {
                    let Ok(report) =
                        serde_json::from_str::<mail_auth::report::tlsrpt::TlsReport>(&r.data)
                    else {
                        continue;
                    };
                    for p in &report.policies {
                        let kind = match p.policy.policy_type {
                            mail_auth::report::tlsrpt::PolicyType::Sts => "sts",
                            mail_auth::report::tlsrpt::PolicyType::Tlsa => "tlsa",
                            mail_auth::report::tlsrpt::PolicyType::NoPolicyFound => {
                                "no-policy-found"
                            }
                            mail_auth::report::tlsrpt::PolicyType::Other => "other",
                        };
                        let e = rows
                            .entry((r.domain.clone(), kind.to_string()))
                            .or_default();
                        e.0 += u64::from(p.summary.total_success);
                        e.1 += u64::from(p.summary.total_failure);
                        for f in &p.failure_details {
                            let t = serde_json::to_value(f.result_type)
                                .ok()
                                .and_then(|v| v.as_str().map(String::from))
                                .unwrap_or_else(|| "other".into());
                            *e.2.entry(t).or_default() += u64::from(f.failed_session_count);
                        }
                        e.3.insert(r.org.clone());
                    }
                }
                println!(
                    "{} report(s) received since {}",
                    reports.len(),
                    format_ts(since * 1_000_000)
                );
                println!(
                    "{:<28} {:<16} {:>8} {:>8}  FAILURES / REPORTED BY",
                    "DOMAIN", "POLICY", "SUCCESS", "FAILURE"
                );
                for ((d, kind), (ok, failed, types, orgs)) in rows {
                    let types: Vec<String> =
                        types.into_iter().map(|(t, n)| format!("{t}={n}")).collect();
                    println!(
                        "{d:<28} {kind:<16} {ok:>8} {failed:>8}  {} / {}",
                        if types.is_empty() {
                            "-".into()
                        } else {
                            types.join(", ")
                        },
                        orgs.into_iter().collect::<Vec<_>>().join(", ")
                    );
                }
            }
        }
        Ok(())
    })
}

/// DMARC aggregate reports: send ours now; sum up what others reported about our domains.
pub fn dmarc(config: &Path, cmd: DmarcCmd) -> Result<()> {
    let (cfg, store) = open(config)?;
    runtime()?.block_on(async {
        match cmd {
            DmarcCmd::Send => {
                let outbound = cli_outbound(&cfg, &store)?;
                let n = outbound.send_dmarc_reports(true).await?;
                store.log_flush().await?;
                println!("{n} DMARC report(s) queued");
            }
            DmarcCmd::Summary { domain, since } => {
                let (since, reports) = received(&store, "dmarc", domain, &since).await?;
                // (domain, source) -> (messages, passed, reporters)
                let mut rows: std::collections::BTreeMap<
                    (String, String),
                    (u64, u64, std::collections::BTreeSet<String>),
                > = Default::default();
                for r in &reports {
                    let Ok(report) = serde_json::from_str::<mail_auth::report::Report>(&r.data)
                    else {
                        continue;
                    };
                    for rec in report.records() {
                        let source = rec
                            .source_ip()
                            .map(|i| i.to_string())
                            .unwrap_or_else(|| "?".into());
                        let e = rows.entry((r.domain.clone(), source)).or_default();
                        let n = u64::from(rec.count());
                        e.0 += n;
                        // RFC 7489 3.1: DMARC passes when DKIM or SPF passes aligned.
                        if rec.dmarc_dkim_result() == mail_auth::report::DmarcResult::Pass
                            || rec.dmarc_spf_result() == mail_auth::report::DmarcResult::Pass
                        {
                            e.1 += n;
                        }
                        e.2.insert(r.org.clone());
                    }
                }
                println!(
                    "{} report(s) received since {}",
                    reports.len(),
                    format_ts(since * 1_000_000)
                );
                println!(
                    "{:<28} {:<40} {:>8} {:>8} {:>8}  REPORTED BY",
                    "DOMAIN", "SOURCE", "MESSAGES", "PASS", "FAIL"
                );
                for ((d, source), (n, pass, orgs)) in rows {
                    println!(
                        "{d:<28} {source:<40} {n:>8} {pass:>8} {:>8}  {}",
                        n - pass,
                        orgs.into_iter().collect::<Vec<_>>().join(", ")
                    );
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_normalization() {
        assert_eq!(normalize_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
    }

    #[test]
    fn time_args() {
        assert!(time_arg("2026-11-28T10:00:00Z", "--since").is_ok());
        let t = time_arg("2h", "--since").unwrap();
        assert!(now_micros() - t >= 7_200_000_000);
        assert!(time_arg("yesterday", "--since")
            .unwrap_err()
            .to_string()
            .contains("--since"));
    }
}
