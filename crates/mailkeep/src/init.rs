//! `mailkeep init`: config file, data directory, DKIM keys, self-signed certificate, DNS records.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine;
use mailkeep_types::Domain;

/// The DKIM selectors `init` creates.
pub const SELECTOR_ED25519: &str = "mk1e";
/// RSA selector.
pub const SELECTOR_RSA: &str = "mk1r";

/// Options of `init`.
pub struct InitOptions {
    pub hostname: String,
    pub domain: String,
    pub data: PathBuf,
    pub config: Option<PathBuf>,
    /// (protocol, address) of each listener to write.
    pub listeners: Vec<(String, String)>,
    pub user: Option<String>,
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// Generates DKIM keys for `domain` in `dir`; returns the DNS TXT records (name, value).
pub fn dkim_keys(dir: &Path, domain: &Domain) -> Result<Vec<(String, String)>> {
    dkim_keys_as(dir, domain, SELECTOR_ED25519, SELECTOR_RSA, "")
}

/// The DNS TXT record (name, value) of a DKIM private key file.
pub fn dkim_record(path: &Path, domain: &str, selector: &str) -> Result<(String, String)> {
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
    let b64 = base64::engine::general_purpose::STANDARD;
    let pem = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let name = format!("{selector}._domainkey.{domain}");
    if path.to_string_lossy().contains(".ed25519.pem") {
        let der = b64
            .decode(
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .with_context(|| format!("{}: not PEM", path.display()))?;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| anyhow::anyhow!("{}: not an Ed25519 key", path.display()))?;
        use ring::signature::KeyPair;
        let p = b64.encode(pair.public_key().as_ref());
        return Ok((name, format!("v=DKIM1; k=ed25519; p={p}")));
    }
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
        .with_context(|| format!("{}: not an RSA key", path.display()))?;
    let public = key
        .to_public_key()
        .to_public_key_der()
        .context("RSA public key encoding")?;
    Ok((
        name,
        format!("v=DKIM1; k=rsa; p={}", b64.encode(public.as_bytes())),
    ))
}

/// Generates DKIM keys with these selectors; `suffix` is appended to the file names
/// (`.pending` for keys made by `dkim rotate`, which the server does not load).
pub fn dkim_keys_as(
    dir: &Path,
    domain: &Domain,
    sel_ed25519: &str,
    sel_rsa: &str,
    suffix: &str,
) -> Result<Vec<(String, String)>> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut records = Vec::new();

    // Ed25519 (RFC 8463): p= is the raw 32-byte public key.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("Ed25519 key generation failed"))?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("Ed25519 key check failed"))?;
    use ring::signature::KeyPair;
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        b64.encode(pkcs8.as_ref())
    );
    write_private(
        &dir.join(format!("{domain}.{sel_ed25519}.ed25519.pem{suffix}")),
        pem.as_bytes(),
    )?;
    records.push((
        format!("{sel_ed25519}._domainkey.{domain}"),
        format!(
            "v=DKIM1; k=ed25519; p={}",
            b64.encode(pair.public_key().as_ref())
        ),
    ));

    // RSA-2048 (RFC 6376 3.3.3; RFC 8301 requires at least 1024, 2048 is the norm).
    let mut rng = rand::rngs::OsRng;
    let key = rsa::RsaPrivateKey::new(&mut rng, 2048).context("RSA key generation")?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .context("RSA key encoding")?;
    write_private(
        &dir.join(format!("{domain}.{sel_rsa}.rsa.pem{suffix}")),
        pem.as_bytes(),
    )?;
    let public = key
        .to_public_key()
        .to_public_key_der()
        .context("RSA public key encoding")?;
    records.push((
        format!("{sel_rsa}._domainkey.{domain}"),
        format!("v=DKIM1; k=rsa; p={}", b64.encode(public.as_bytes())),
    ));
    Ok(records)
}

/// Writes a self-signed certificate for `hostname` and the MTA-STS policy host of `domain`
/// (until ACME is configured).
pub fn self_signed(dir: &Path, hostname: &str, domain: &Domain) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let names = vec![hostname.to_string(), format!("mta-sts.{domain}")];
    let mut params = rcgen::CertificateParams::new(names).context("self-signed certificate")?;
    // The subject names the host (rcgen's default is "rcgen self signed cert"), which is what
    // a client shows when it asks the user to trust the certificate.
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let key = rcgen::KeyPair::generate().context("self-signed certificate key")?;
    let cert = params
        .self_signed(&key)
        .context("self-signed certificate")?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("write {}", cert_path.display()))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    Ok((cert_path, key_path))
}

/// The config file `init` writes.
pub fn config_text(hostname: &str, domain: &Domain, listeners: &[(String, String)]) -> String {
    let listeners: String = listeners
        .iter()
        .map(|(p, a)| format!("[[listener]]\nprotocol = \"{p}\"\naddress = \"{a}\"\n\n"))
        .collect();
    format!(
        r#"# mailkeep configuration, written by `mailkeep init`.
# Relative paths are relative to this file's directory.

# This server's name: used in the SMTP greeting, Received headers and the MX record.
hostname = "{hostname}"

# Where the store, keys and certificates live.
data_dir = "."

# When started as root, serve binds its ports, reads the TLS key, then runs as this system
# user (`init --user NAME` sets it and gives the data directory to that user).
# user = "mailkeep"

# Domains hosted here. More can be added with `mailkeep domain add`.
domains = ["{domain}"]

# One [[listener]] per socket. Protocols: smtp, submission, submissions, imap, imaps,
# pop3, pop3s, managesieve, http (this version serves smtp, submission, submissions, imap,
# imaps, pop3 and pop3s).
# `serve --listen PROTO=ADDR` replaces them all for one run.
{listeners}[tls]
# Self-signed until you install a real certificate (ACME support is planned).
cert = "tls/cert.pem"
key = "tls/key.pem"

[smtp]
max_message_size = "50M"     # advertised with SIZE (RFC 1870)
max_recipients = 100         # per message (RFC 5321 4.5.3.1.8)
max_command_line = 4096      # bytes (RFC 5321 4.5.3.1.4 asks for at least 512)
max_data_line = 65536        # bytes per line of message data
max_header_size = "1M"
command_timeout = "5m"       # RFC 5321 4.5.3.2.7
data_timeout = "3m"          # per block of message data
max_errors = 20              # errors before the session is closed with 421 (as Postfix)
max_connections = 1000
max_connections_per_ip = 20
quota_reply = "temporary"    # "temporary" = 452 4.2.2, "permanent" = 552 5.2.2
reverse_dns = true
# Rates (0: no limit). A session past commands_per_second waits (a burst of as many goes at
# once); one connection takes max_messages_per_connection messages (then 421) and
# max_recipients_per_connection recipients (then 452); the MX takes at most
# max_messages_per_sender_domain messages an hour from one MAIL FROM domain (then 451 4.7.1).
commands_per_second = 100
max_messages_per_connection = 1000
max_recipients_per_connection = 10000
max_messages_per_sender_domain = 5000

[submission]
# The submission listeners (587, 465) take [smtp]'s settings; these may differ for them.
# max_connections = 1000
# max_connections_per_ip = 20
# commands_per_second = 100
# max_messages_per_connection = 1000
# max_recipients_per_connection = 10000

[imap]
max_literal = "50M"          # largest APPEND, advertised as APPENDLIMIT (RFC 7889)
max_line = "64K"             # longest command line without its literals
idle_timeout = "30m"         # RFC 9051 5.4: at least 30 minutes
max_connections = 20000
max_connections_per_ip = 1000
commands_per_second = 5000   # per session, after a burst of twice as many; then commands wait (0: off)

[pop3]
idle_timeout = "10m"         # RFC 1939 3: at least 10 minutes
# max_connections = 20000    # default: [imap]'s
# max_connections_per_ip = 1000
commands_per_second = 1000   # per session, as [imap]'s (pipelined RETRs of a whole mailbox pass)

[auth]
plaintext = "loopback"       # passwords without TLS: "loopback" only (as Dovecot) or "never"
failure_delay = "2s"         # wait after a failed login, doubled with each further failure
max_failures = 3             # failed logins before the connection is closed
max_unauthenticated_per_ip = 20  # connections not logged in yet, per address and listener

[store]
backend = "sqlite"           # the embedded store
# path = "store"

[directory]
plus_separator = "+"         # user+tag@domain reaches user@domain; "" turns it off
default_quota = 0            # bytes for new users, 0 = unlimited; e.g. "2G"

[log]
retention = "30d"            # how long the delivery log keeps events

[verify]
# Sender authentication of mail arriving on the MX (not on the submission ports): the results
# go into an Authentication-Results header and the delivery log (kind smtp.verify).
spf = true                   # RFC 7208, HELO and MAIL FROM
dkim = true                  # RFC 6376 (Ed25519 and RSA of 1024 bits or more)
arc = true                   # RFC 8617
dmarc = true                 # RFC 7489
iprev = true                 # reverse DNS
dmarc_enforce = true         # p=reject: refused with 550 5.7.1; p=quarantine: filed to Junk
max_dkim_signatures = 10     # more are not checked

[reports]
dmarc = true                 # send DMARC aggregate reports to domains whose record asks (rua=)
tlsrpt = true                # send SMTP TLS reports (RFC 8460) to domains that publish _smtp._tls
interval = "24h"             # each report covers a day
# from = "postmaster@example.com"  # default: postmaster@ the first domain

[bans]
# Brute-force defence for SMTP AUTH, IMAP and POP3 logins. A banned address's connections are
# refused on every listener; `mailkeep ban list|add|remove` manage bans by hand.
after = 20                   # failed logins from one address (IPv6: its /64) within window ban it; 0: never
window = "1h"
duration = "1h"              # how long such a ban lasts
allow = []                   # addresses and networks never banned or locked out, e.g. ["192.0.2.0/24"]
account_ips = 10             # failures for one account from this many addresses lock it (0: never)...
account_lock = "15m"         # ...for this long, against addresses that never logged in to it

[limits]
# What each account may send to other domains (0: no limit), so that one compromised or
# careless account cannot get the domain blocklisted. Over a limit: 451 4.7.1 naming it.
messages_per_hour = 100
messages_per_day = 1000
recipients_per_message = 100
new_recipients_per_day = 200 # recipients the account never wrote to before
hold_new_recipients_per_hour = 100  # this many new recipients within an hour put the account's
                             # outbound mail on hold (it looks compromised) and alert the postmaster
# Other signs of a compromised account, judged over the last 24 hours (0: never):
hold_bounce_rate = 0.3       # this share of its recipients bounced...
hold_complaint_rate = 0.01   # ...or complained of spam (authenticated feedback reports, RFC 5965)...
hold_min_recipients = 20     # ...once it wrote to at least this many
hold_new_login_networks = 10 # logins from this many networks (/24, /64) it never used before

[antivirus]
# Every message is scanned by ClamAV's clamd when this is set (Debian: apt install
# clamav-daemon); infected ones are refused with 554 5.7.1.
# clamd = "/run/clamav/clamd.ctl"    # or "127.0.0.1:3310"
on_error = "tempfail"        # clamd unreachable: "tempfail" (451, the sender retries) or "accept"
timeout = "30s"

[spam]
# Mail arriving on the MX is scored from 0 to 1: rules on its headers, body, sender
# authentication and blocklists, plus the classifier once it has learnt enough (`mailkeep spam
# train --ham DIR --spam DIR`, and each user's moves into and out of Junk over IMAP).
# X-Spam-Status says how it scored; `mailkeep spam allow|block USER ADDR` set users' lists.
enabled = true
junk = 0.8                   # from this score (0 to 1) a message goes to Junk
reject = 0                   # from this score it is refused (550 5.7.1); 0: never
min_learnt = 200             # ham and spam messages each learnt before the classifier counts
outbound_hold = 0.99         # submitted mail to other domains scoring this much is held; 0: never

[dnsbl]
# DNS blocklists of addresses; `mailkeep check blocklists` says whether ours are on them.
lists = ["zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org", "psbl.surriel.com"]
# Lists the MX asks about every connecting client (none until you choose; Spamhaus answers
# no queries through large public resolvers: point [dns] servers at your own resolver).
inbound = []                 # e.g. ["zen.spamhaus.org"]
inbound_action = "reject"    # a listed client: "reject" (554 5.7.1 at MAIL) or "junk"
# Domain lists: a listing adds to the spam score (none until you choose).
rhsbl = []                   # asked about MAIL FROM and From: domains, e.g. ["dbl.spamhaus.org"]
uribl = []                   # asked about the domains of links, e.g. ["multi.surbl.org"]

[sieve]
# Users' Sieve scripts run at delivery (`mailkeep sieve`, `forward`, `vacation`). The admin's
# global scripts, NAME.sieve files in global_dir, run before and after each user's (RFC 6609
# include: a `stop` in a `before` script ends it all), and users may include them.
# global_dir = "/var/lib/mailkeep/sieve"   # default: DATA/sieve
before = []                  # e.g. ["spam"] for DATA/sieve/spam.sieve
after = []
max_script_size = "64K"
max_instructions = 20000     # per message
max_redirects = 4            # per message
max_scripts = 100            # scripts a user may keep through ManageSieve

[greylist]
# Greylisting (RFC 6647) on the MX: the first attempt of each (client network, sender,
# recipient) is deferred with 451 4.7.1; servers that retry after the delay get through.
# Off by default: it delays first mail from every new sender by the delay or more.
enabled = false
delay = "5m"                 # how long a first attempt is deferred
retry_window = "2d"          # a retry later than delay + this starts over
pass_lifetime = "35d"        # a passed triplet, client or domain stays passed this long after its last mail
auto_allow_clients = 5       # a client network that passed this many triplets passes everything (0: never)
allow = []                   # networks never greylisted, e.g. ["192.0.2.0/24"]

[mta_sts]
# The MTA-STS policy (RFC 8461) the https listener serves at
# https://mta-sts.DOMAIN/.well-known/mta-sts.txt; the [tls] certificate must name mta-sts.DOMAIN.
mode = "testing"             # "enforce" once the certificate is one senders trust
max_age = "7d"               # how long senders keep the policy

[forwarding]
enabled = true               # aliases may forward to addresses in other domains
srs = true                   # rewrite the envelope sender (SRS) so SPF passes at the next hop
srs_max_age = "21d"          # bounces to an SRS address are accepted this long
arc_seal = true              # add an ARC seal (RFC 8617) with the alias domain's RSA key

[dns]
# servers = ["127.0.0.1:53"] # default: the system's resolvers
timeout = "5s"

[queue]
lifetime = "5d"              # how long mail to other domains is retried before it bounces
retry_first = "5m"           # wait after the first failed attempt, doubled each time
retry_max = "4h"             # longest wait between attempts
delay_warning = "4h"         # tell the sender once when a message is still not delivered
connect_timeout = "30s"
command_timeout = "5m"       # RFC 5321 4.5.3.2: per reply of the remote server
concurrency = 20             # messages being sent at once
destination_concurrency = 20 # of them to one domain (or to the relay host)
# port = 25                  # remote servers' port: 25, another only for tests
# TLS towards MX hosts: DANE where the resolver validates DNSSEC (point [dns] servers at a
# validating resolver such as unbound), else MTA-STS policies, else opportunistic STARTTLS.
# dane = true
# mta_sts = true
# ca_file = "/etc/ssl/private-ca.pem"  # more trusted roots beside the web's (MTA-STS, relay)
# A relay host (smarthost) for networks that block port 25: it takes all outgoing mail.
# relay = "smtp.provider.example:587"
# relay_tls = "starttls"     # "starttls" (required), "implicit" (465), "opportunistic", "none"
# relay_verify_certificate = true
# relay_username = "user@provider.example"
# relay_password = "secret"
"#
    )
}

/// Runs `init`.
pub fn run(opts: InitOptions) -> Result<()> {
    let domain = Domain::parse(&opts.domain).map_err(|e| anyhow::anyhow!("--domain: {e}"))?;
    let hostname = Domain::parse(&opts.hostname)
        .map_err(|e| anyhow::anyhow!("--hostname: {e}"))?
        .to_string();
    let config_path = opts
        .config
        .clone()
        .unwrap_or_else(|| opts.data.join("mailkeep.toml"));
    if config_path.exists() {
        bail!(
            "{} already exists: refusing to overwrite it (remove it or pass --config elsewhere)",
            config_path.display()
        );
    }
    std::fs::create_dir_all(&opts.data)
        .with_context(|| format!("create {}", opts.data.display()))?;
    let data = opts.data.canonicalize()?;
    let records = dkim_keys(&data.join("dkim"), &domain)?;
    self_signed(&data.join("tls"), &hostname, &domain)?;
    let mut text = config_text(&hostname, &domain, &opts.listeners);
    if let Some(u) = &opts.user {
        text = text.replace("# user = \"mailkeep\"", &format!("user = {u:?}"));
    }
    if opts.config.is_some() {
        text = text.replace(
            "data_dir = \".\"",
            &format!("data_dir = {:?}", data.display().to_string()),
        );
        text = text.replace(
            "cert = \"tls/cert.pem\"",
            &format!(
                "cert = {:?}",
                data.join("tls/cert.pem").display().to_string()
            ),
        );
        text = text.replace(
            "key = \"tls/key.pem\"",
            &format!("key = {:?}", data.join("tls/key.pem").display().to_string()),
        );
    }
    if let Some(parent) = config_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&config_path, text)
        .with_context(|| format!("write {}", config_path.display()))?;
    // Validate what we wrote, so a broken template can never ship silently.
    mailkeep_config::Config::load(&config_path)?;
    let store = mailkeep_store_sqlite::SqliteStore::open(&data.join("store"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use mailkeep_store::DirectoryStore;
        match store.domain_add(&domain).await {
            Ok(()) | Err(mailkeep_store::StoreError::Exists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    })?;
    drop(store);
    if let Some(u) = &opts.user {
        crate::privileges::give_tree(&data, u)?;
        if let Some(parent) = config_path.parent().filter(|p| !p.starts_with(&data)) {
            println!(
                "note: {} is not in the data directory; make it readable by {u}",
                parent.display()
            );
        }
    }
    println!("Wrote {}", config_path.display());
    println!("Data directory: {}", data.display());
    println!();
    println!("Publish these DNS records (zone-file syntax, ready to paste):");
    println!();
    print!("{}", dns_records(&hostname, &domain, &records));
    println!();
    println!(
        "Next: mailkeep user add postmaster@{domain} --config {}",
        config_path.display()
    );
    println!("      mailkeep serve --config {}", config_path.display());
    println!(
        "      mailkeep dns records {domain} --config {}   (also MTA-STS and TLS-RPT)",
        config_path.display()
    );
    println!(
        "      mailkeep dns check {domain} --config {}     (once the records are published)",
        config_path.display()
    );
    Ok(())
}

/// DKIM TXT records as zone-file lines (strings split at 250 octets, RFC 1035 3.3.14).
pub fn dkim_zone_lines(dkim: &[(String, String)]) -> String {
    let mut out = String::new();
    for (name, value) in dkim {
        let parts: Vec<String> = value
            .as_bytes()
            .chunks(250)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        out.push_str(&format!("{name}.\t3600\tIN\tTXT\t{}\n", parts.join(" ")));
    }
    out
}

/// The records a domain needs, as zone-file lines.
pub fn dns_records(hostname: &str, domain: &Domain, dkim: &[(String, String)]) -> String {
    let mut out = String::new();
    out.push_str(&format!("{domain}.\t3600\tIN\tMX\t10 {hostname}.\n"));
    out.push_str(&format!(
        "{hostname}.\t3600\tIN\tA\t<this server's IPv4 address>\n{hostname}.\t3600\tIN\tAAAA\t<this server's IPv6 address, if any>\n"
    ));
    out.push_str(&format!("{domain}.\t3600\tIN\tTXT\t\"v=spf1 mx -all\"\n"));
    out.push_str(&dkim_zone_lines(dkim));
    out.push_str(&format!(
        "_dmarc.{domain}.\t3600\tIN\tTXT\t\"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}\"\n"
    ));
    out.push_str(&format!(
        "; reverse DNS: ask your hosting provider to point the PTR of this server's addresses to {hostname}\n"
    ));
    out
}
