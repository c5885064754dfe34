//! mailkeep configuration.
//!
//! Implementation notes:
//! - The file is read in two steps: TOML into [`raw`] structs that mirror the file and reject
//!   unknown keys, then [`Config::from_raw`] validates each value into typed settings. Every
//!   error names the file, the key and what was expected.
//! - Relative paths are relative to the directory holding the config file, so a data directory
//!   made by `mailkeep init` can be moved as a whole.
//! - Renamed keys keep working: [`raw`] accepts the old name and [`Config::warnings`] says what
//!   to write instead.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mailkeep_types::Domain;

pub mod raw;

/// A configuration error: which file, which key, what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// There is no file at that path: the newcomer's first error, so it says what to do.
    #[error(
        "{file}: no such config file; name another with --config FILE (before or after the \
         subcommand) or MAILKEEP_CONFIG=FILE, or create one with `mailkeep init --hostname \
         HOST --domain DOMAIN`"
    )]
    Missing {
        /// The file.
        file: PathBuf,
    },
    /// The file could not be read. (The I/O error is in the message, not a `source`, so
    /// that a printed error chain names it once.)
    #[error("{file}: cannot read: {error}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// TOML syntax, a wrong type, or an unknown key (the message names the key and line).
    #[error("{file}: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// What the TOML parser said.
        message: String,
    },
    /// A value with the right type but a wrong meaning.
    #[error("{file}: key `{key}`: expected {expected}, found {found}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The dotted key.
        key: String,
        /// What would have been accepted.
        expected: String,
        /// What the file has.
        found: String,
    },
}

/// A listener protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// SMTP relay/MX, port 25.
    Smtp,
    /// Message submission with STARTTLS, port 587 (RFC 6409).
    Submission,
    /// Message submission over implicit TLS, port 465 (RFC 8314).
    Submissions,
    /// IMAP with STARTTLS, port 143.
    Imap,
    /// IMAP over implicit TLS, port 993.
    Imaps,
    /// POP3 with STLS, port 110.
    Pop3,
    /// POP3 over implicit TLS, port 995.
    Pop3s,
    /// ManageSieve, port 4190.
    ManageSieve,
    /// HTTP (admin, webmail, MTA-STS, autoconfig).
    Http,
    /// HTTPS, port 443: the MTA-STS policy of our domains.
    Https,
}

impl Protocol {
    /// Every protocol, with its config name.
    pub const ALL: [(Protocol, &'static str); 10] = [
        (Protocol::Smtp, "smtp"),
        (Protocol::Submission, "submission"),
        (Protocol::Submissions, "submissions"),
        (Protocol::Imap, "imap"),
        (Protocol::Imaps, "imaps"),
        (Protocol::Pop3, "pop3"),
        (Protocol::Pop3s, "pop3s"),
        (Protocol::ManageSieve, "managesieve"),
        (Protocol::Http, "http"),
        (Protocol::Https, "https"),
    ];

    /// Parses a protocol name (`smtp`, `imaps`...).
    pub fn parse(name: &str) -> Option<Protocol> {
        let lower = name.to_ascii_lowercase();
        Protocol::ALL
            .iter()
            .find(|(_, n)| *n == lower)
            .map(|(p, _)| *p)
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        Protocol::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map(|(_, n)| *n)
            .unwrap_or("unknown")
    }

    /// Whether this protocol is served by the current build. Others are accepted in the config
    /// (so configs written for later versions keep working) but `serve` refuses to start them.
    pub fn implemented(self) -> bool {
        matches!(
            self,
            Protocol::Smtp
                | Protocol::Submission
                | Protocol::Submissions
                | Protocol::Imap
                | Protocol::Imaps
                | Protocol::Pop3
                | Protocol::Pop3s
                | Protocol::ManageSieve
                | Protocol::Https
        )
    }
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// What it speaks.
    pub protocol: Protocol,
    /// Where it listens.
    pub address: SocketAddr,
}

/// Parses `PROTO=ADDR` as given to `--listen`.
pub fn parse_listen_arg(arg: &str) -> Result<Listener, String> {
    let (proto, addr) = arg
        .split_once('=')
        .ok_or_else(|| format!("--listen {arg}: expected PROTO=ADDR, e.g. smtp=127.0.0.1:2525"))?;
    let protocol = Protocol::parse(proto).ok_or_else(|| {
        let names: Vec<&str> = Protocol::ALL.iter().map(|(_, n)| *n).collect();
        format!(
            "--listen {arg}: unknown protocol {proto:?}, expected one of {}",
            names.join(", ")
        )
    })?;
    let address = addr
        .parse()
        .map_err(|_| format!("--listen {arg}: {addr:?} is not an IP:PORT address"))?;
    Ok(Listener { protocol, address })
}

/// What to answer a recipient whose mailbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaReply {
    /// 452 4.2.2, the sender retries (default).
    Temporary,
    /// 552 5.2.2, the sender bounces.
    Permanent,
}

/// SMTP server limits and behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// Largest message accepted, in bytes (advertised with SIZE, RFC 1870).
    pub max_message_size: u64,
    /// Most recipients in one transaction (RFC 5321 4.5.3.1.8 asks for at least 100).
    pub max_recipients: usize,
    /// Longest command line in bytes (RFC 5321 4.5.3.1.4: 512, more with extensions).
    pub max_command_line: usize,
    /// Longest line in message data, in bytes.
    pub max_data_line: usize,
    /// Largest header section, in bytes.
    pub max_header_size: usize,
    /// Wait for the next command (RFC 5321 4.5.3.2.7: at least 5 minutes).
    pub command_timeout: Duration,
    /// Wait for each block of message data (RFC 5321 4.5.3.2.5/6).
    pub data_timeout: Duration,
    /// Errors in one session before it is closed with 421.
    pub max_errors: u32,
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Reply for recipients over quota.
    pub quota_reply: QuotaReply,
    /// Whether to look up the client's reverse DNS name for Received and the log.
    pub reverse_dns: bool,
    /// Commands a session may send per second (a burst of as many goes at once; beyond it
    /// commands wait); 0: no limit.
    pub commands_per_second: u32,
    /// Messages in one connection before it is closed with 421; 0: no limit.
    pub max_messages_per_connection: u32,
    /// Recipients in one connection before more get 452; 0: no limit.
    pub max_recipients_per_connection: u32,
    /// Messages the MX takes from one sender domain (MAIL FROM) per hour, from all clients
    /// together; 0: no limit.
    pub max_messages_per_sender_domain: u32,
}

/// IMAP server limits.
#[derive(Debug, Clone)]
pub struct ImapConfig {
    /// Largest literal (and so message in APPEND), in bytes; advertised as APPENDLIMIT.
    pub max_literal: u64,
    /// Longest command line without its literals, in bytes.
    pub max_line: usize,
    /// How long a session may stay silent, IDLE included (RFC 9051 5.4: at least 30 minutes).
    pub idle_timeout: Duration,
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Commands a session may send per second, after a first burst of twice as many (0: no
    /// limit); beyond it each command waits its turn.
    pub commands_per_second: u32,
}

/// POP3 server behaviour.
#[derive(Debug, Clone)]
pub struct Pop3Config {
    /// How long a session may stay silent (RFC 1939 3: at least 10 minutes).
    pub idle_timeout: Duration,
    /// Connections at once (default: `[imap]`'s).
    pub max_connections: usize,
    /// Connections at once from one address (default: `[imap]`'s).
    pub max_connections_per_ip: usize,
    /// Commands a session may send per second, as `[imap]`'s (0: no limit).
    pub commands_per_second: u32,
}

/// When a password may be sent without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    /// Never: LOGIN, AUTHENTICATE, USER/PASS need TLS first.
    Never,
    /// From loopback addresses only (as Dovecot treats localhost as secure).
    Loopback,
}

/// Login policy of IMAP, POP3 and submission.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// When passwords may travel without TLS.
    pub plaintext: Plaintext,
    /// Wait before answering a failed login; doubled with each failure in a session.
    pub failure_delay: Duration,
    /// Failed logins in one session before it is closed.
    pub max_failures: u32,
    /// Connections from one address (IPv6: /64) that have not logged in yet, per login
    /// listener (IMAP, POP3, submission, ManageSieve): far below `max_connections_per_ip`, so
    /// that an address cannot open hundreds of sessions to guess on in parallel.
    pub max_unauthenticated_per_ip: usize,
}

/// Sender authentication of inbound mail (`[verify]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyConfig {
    /// SPF (RFC 7208) of HELO and MAIL FROM.
    pub spf: bool,
    /// DKIM (RFC 6376) signatures.
    pub dkim: bool,
    /// ARC (RFC 8617) chains.
    pub arc: bool,
    /// DMARC (RFC 7489).
    pub dmarc: bool,
    /// Reverse DNS (iprev, RFC 8601 3).
    pub iprev: bool,
    /// Apply the sender's DMARC policy: p=reject refused with 550 5.7.1, p=quarantine filed
    /// to Junk (else results are only recorded).
    pub dmarc_enforce: bool,
    /// Signatures checked per message (more are ignored).
    pub max_dkim_signatures: usize,
}

/// Mail the MX passes on to addresses elsewhere: aliases with external targets
/// (`[forwarding]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardingConfig {
    /// Forward at all (off: such recipients get 550 5.7.1 at RCPT).
    pub enabled: bool,
    /// Rewrite the envelope sender with SRS so SPF passes at the next hop and bounces come
    /// back through us.
    pub srs: bool,
    /// How long an SRS address is accepted back (bounces arrive within the sender's queue
    /// lifetime).
    pub srs_max_age: Duration,
    /// Add an ARC set (RFC 8617) to forwarded mail, signed with the alias domain's RSA key.
    pub arc_seal: bool,
}

/// Brute-force defence (`[bans]`): failed logins counted per client address (per /64 for
/// IPv6) and per account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BansConfig {
    /// Failed logins from one address within `window` that ban it (0: never ban).
    pub after: u32,
    /// How far back failures count.
    pub window: Duration,
    /// How long a ban lasts.
    pub duration: Duration,
    /// Networks never banned or locked out (trusted networks, the admins' addresses).
    pub allow: Vec<mailkeep_types::ipnet::IpNet>,
    /// Distinct addresses failing for one account within `window` that lock it (0: never).
    pub account_ips: u32,
    /// How long such a lock keeps new addresses out (allowed networks and addresses that
    /// logged in to the account before still get in).
    pub account_lock: Duration,
}

/// Sieve at delivery (`[sieve]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SieveConfig {
    /// Where global scripts live, as `NAME.sieve` (`include :global "NAME"`, RFC 6609).
    pub global_dir: PathBuf,
    /// Global scripts run before each user's script (names in `global_dir`).
    pub before: Vec<String>,
    /// Global scripts run after it.
    pub after: Vec<String>,
    /// Bytes of script text.
    pub max_script_size: usize,
    /// Instructions executed per message.
    pub max_instructions: usize,
    /// Redirects per message.
    pub max_redirects: usize,
    /// Scripts a user may keep through ManageSieve.
    pub max_scripts: usize,
}

/// Greylisting on the MX (`[greylist]`, RFC 6647): a first attempt from a client network,
/// sender and recipient is deferred; a retry after `delay` passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreylistConfig {
    /// Greylist at all (off by default).
    pub enabled: bool,
    /// How long a new triplet is deferred.
    pub delay: Duration,
    /// How long after `delay` a retry still counts; later, the triplet starts over.
    pub retry_window: Duration,
    /// How long a triplet (or an allowlisted client or domain) stays passed after its
    /// last message.
    pub lifetime: Duration,
    /// Triplets a client network must pass before all its mail passes (0: never).
    pub auto_allow_clients: u32,
    /// Networks never greylisted.
    pub allow: Vec<mailkeep_types::ipnet::IpNet>,
}

/// What each account may send to other domains (`[limits]`), so that one compromised or
/// careless account cannot get the domain's mail blocklisted. 0: no limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Messages to other domains in the last hour.
    pub messages_per_hour: u32,
    /// Messages to other domains in the last 24 hours.
    pub messages_per_day: u32,
    /// Recipients in other domains in one message.
    pub recipients_per_message: u32,
    /// Recipients the account never wrote to before, in the last 24 hours.
    pub new_recipients_per_day: u32,
    /// New recipients within an hour that put the account's outbound mail on hold (it looks
    /// compromised) until an admin releases it.
    pub hold_new_recipients_per_hour: u32,
    /// Share (0 to 1) of its recipients of the last 24 hours whose mail bounced that puts
    /// the account on hold; 0: never.
    pub hold_bounce_rate: f64,
    /// Share of its recipients of the last 24 hours who complained (feedback reports,
    /// RFC 5965) that puts the account on hold; 0: never.
    pub hold_complaint_rate: f64,
    /// Recipients in the last 24 hours below which the two rates are not judged.
    pub hold_min_recipients: u32,
    /// Networks (IPv4 /24, IPv6 /64) the account never logged in from before, logging in
    /// within 24 hours, that put it on hold; 0: never.
    pub hold_new_login_networks: u32,
}

/// DNS blocklists (`[dnsbl]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblConfig {
    /// Lists `mailkeep check blocklists` asks about our own addresses.
    pub lists: Vec<Domain>,
    /// Lists the MX asks about connecting clients (none by default).
    pub inbound: Vec<Domain>,
    /// A listed client's mail goes to Junk instead of being refused.
    pub inbound_junk: bool,
    /// Domain lists (RHSBL) the MX asks about the MAIL FROM and From: domains; a listing
    /// adds to the spam score (none by default).
    pub rhsbl: Vec<Domain>,
    /// Domain lists (URI blocklists) the MX asks about the domains the message links to;
    /// a listing adds to the spam score (none by default).
    pub uribl: Vec<Domain>,
}

/// Virus scanning of every message (`[antivirus]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AntivirusConfig {
    /// clamd's address: `IP:PORT` or a Unix socket path; None: no scanning.
    pub clamd: Option<String>,
    /// When clamd cannot give a verdict: refuse for now (451, the sender retries) or accept.
    pub fail_open: bool,
    /// How long one scan may take.
    pub timeout: Duration,
}

/// Spam scoring of mail arriving on the MX (`[spam]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SpamConfig {
    /// Score incoming mail (once the model has learnt enough).
    pub enabled: bool,
    /// Score (0 to 1) from which a message goes to Junk.
    pub junk: f64,
    /// Score from which it is refused at the end of DATA; None: never.
    pub reject: Option<f64>,
    /// Ham and spam messages each that the model must have learnt before it is used.
    pub min_learnt: u32,
    /// Score from which mail our users submit to other domains is queued held (not sent
    /// until an admin releases it); None: never.
    pub outbound_hold: Option<f64>,
}

/// What the policy we publish asks of senders (RFC 8461 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtaStsMode {
    /// Only our MX, only over TLS with a valid certificate.
    Enforce,
    /// Senders report failures (TLS-RPT) but deliver anyway.
    Testing,
    /// No policy in force (for withdrawing one).
    None,
}

/// The MTA-STS policy the `https` listener serves for our domains (`[mta_sts]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtaStsConfig {
    /// `enforce`, `testing` or `none`.
    pub mode: MtaStsMode,
    /// How long senders keep the policy (RFC 8461 3.2: at most a year).
    pub max_age: Duration,
}

/// Reports mailkeep sends (`[reports]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportsConfig {
    /// Send DMARC aggregate reports (RFC 7489 7.2) to domains that ask for them.
    pub dmarc: bool,
    /// Send SMTP TLS reports (RFC 8460) to domains that ask for them.
    pub tlsrpt: bool,
    /// How long a report covers.
    pub interval: Duration,
    /// The address reports come from (and the envelope sender); its domain should sign.
    pub from: String,
    /// The reporting organisation's name (our host name).
    pub org: String,
}

/// The delivery log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// How long events are kept.
    pub retention: Duration,
}

/// DNS resolution.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Name servers to ask; empty means the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// How long to wait for an answer.
    pub timeout: Duration,
}

/// The outbound queue.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// How long a message is retried before it is bounced (default 5 days).
    pub lifetime: Duration,
    /// The wait after the first failed attempt; doubled after each one.
    pub retry_first: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
    /// When the sender is told that a message is still not delivered (RFC 3464 delay DSN).
    pub delay_warning: Duration,
    /// Wait for a TCP connection to a remote server.
    pub connect_timeout: Duration,
    /// Wait for each reply of a remote server (RFC 5321 4.5.3.2 asks for minutes).
    pub command_timeout: Duration,
    /// Messages being delivered at once.
    pub concurrency: usize,
    /// Messages being delivered at once to one domain (or to the relay host).
    pub destination_concurrency: usize,
    /// The port of remote servers: 25 (RFC 5321), another only for tests and odd networks.
    pub port: u16,
    /// Send everything through this server instead of the recipients' MX hosts.
    pub relay: Option<Relay>,
    /// Authenticate MX hosts with DANE (RFC 7672) where their TLSA records are
    /// DNSSEC-validated by the resolver (default on).
    pub dane: bool,
    /// Fetch and apply MTA-STS policies (RFC 8461; default on).
    pub mta_sts: bool,
    /// The HTTPS port of MTA-STS policy hosts: 443, another only for tests.
    pub mta_sts_port: u16,
    /// More trusted root certificates (PEM), beside the web's, for MTA-STS and the relay.
    pub ca_file: Option<PathBuf>,
}

/// A relay host (smarthost), for networks where port 25 is blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// Host name or IP address.
    pub host: String,
    /// Port (587 for submission with STARTTLS, 465 for implicit TLS, 25).
    pub port: u16,
    /// How TLS is used.
    pub tls: RelayTls,
    /// Check the relay's certificate against the web's root certificates (on by default).
    pub verify_certificate: bool,
    /// SMTP AUTH user name and password (RFC 4954), if the relay wants them.
    pub credentials: Option<(String, String)>,
}

/// TLS towards the relay host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTls {
    /// STARTTLS, required (the default).
    StartTls,
    /// TLS from the first byte (port 465, RFC 8314).
    Implicit,
    /// STARTTLS when offered, else plaintext (no password is sent in the clear).
    Opportunistic,
    /// Never (a relay on the same machine or a trusted network).
    None,
}

/// Where and how mail is stored.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The backend: only `sqlite` (embedded) exists today.
    pub backend: String,
    /// Directory of the embedded store's database and blobs.
    pub path: PathBuf,
}

/// Directory behaviour.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// Separator of sub-addresses (`user+tag@`); `None` turns plus-addressing off.
    pub plus_separator: Option<char>,
    /// Quota given to new users, in bytes (0 = unlimited).
    pub default_quota: u64,
}

/// TLS certificate and key.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (None when built in memory).
    pub file: Option<PathBuf>,
    /// This server's host name: in greetings, Received headers, the MX record.
    pub hostname: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The system user to switch to after binding the listeners, when started as root.
    pub user: Option<String>,
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// TLS, if configured.
    pub tls: Option<TlsConfig>,
    /// SMTP limits.
    pub smtp: SmtpConfig,
    /// The submission listeners' SMTP settings: `[smtp]` with `[submission]`'s connection
    /// limits and rates.
    pub submission: SmtpConfig,
    /// IMAP limits.
    pub imap: ImapConfig,
    /// POP3 behaviour.
    pub pop3: Pop3Config,
    /// Login policy.
    pub auth: AuthConfig,
    /// Store.
    pub store: StoreConfig,
    /// Directory.
    pub directory: DirectoryConfig,
    /// Delivery log.
    pub log: LogConfig,
    /// DNS.
    pub dns: DnsConfig,
    /// The outbound queue.
    pub queue: QueueConfig,
    /// Sender authentication of inbound mail.
    pub verify: VerifyConfig,
    /// Reports mailkeep sends.
    pub reports: ReportsConfig,
    /// Forwarding to external addresses.
    pub forwarding: ForwardingConfig,
    /// The MTA-STS policy we serve.
    pub mta_sts: MtaStsConfig,
    /// Brute-force defence.
    pub bans: BansConfig,
    /// Greylisting.
    pub greylist: GreylistConfig,
    /// Sieve.
    pub sieve: SieveConfig,
    /// Outbound limits per account.
    pub limits: LimitsConfig,
    /// DNS blocklists of IP addresses.
    pub dnsbl: DnsblConfig,
    /// Virus scanning.
    pub antivirus: AntivirusConfig,
    /// Spam scoring.
    pub spam: SpamConfig,
    /// Domains listed in the config file (added to the directory at start).
    pub domains: Vec<Domain>,
    /// Warnings for deprecated keys.
    pub warnings: Vec<String>,
}

struct Ctx<'a> {
    file: &'a Path,
    base: &'a Path,
}

impl Ctx<'_> {
    fn invalid(&self, key: &str, expected: &str, found: impl std::fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn size(&self, key: &str, v: &raw::Size) -> Result<u64, ConfigError> {
        parse_size(v).ok_or_else(|| {
            self.invalid(
                key,
                "a size in bytes, or a number with K, M or G (e.g. 25M)",
                v,
            )
        })
    }

    fn duration(&self, key: &str, v: &raw::Size) -> Result<Duration, ConfigError> {
        parse_duration(v).ok_or_else(|| {
            self.invalid(
                key,
                "a duration in seconds, or a number with ms, s, m, h or d (e.g. 5m)",
                v,
            )
        })
    }
}

/// Parses `1234`, `"10K"`, `"25M"`, `"1G"` (binary multiples).
pub fn parse_size(v: &raw::Size) -> Option<u64> {
    match v {
        raw::Size::Int(n) => u64::try_from(*n).ok(),
        raw::Size::Str(s) => {
            let s = s.trim();
            let (num, mult) = match s.char_indices().last()? {
                (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
                (i, 'm' | 'M') => (&s[..i], 1 << 20),
                (i, 'g' | 'G') => (&s[..i], 1 << 30),
                _ => (s, 1),
            };
            num.trim().parse::<u64>().ok()?.checked_mul(mult)
        }
    }
}

/// Parses `300`, `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"30d"`.
pub fn parse_duration(v: &raw::Size) -> Option<Duration> {
    let millis = match v {
        raw::Size::Int(n) => u64::try_from(*n).ok()?.checked_mul(1000)?,
        raw::Size::Str(s) => {
            let s = s.trim();
            let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
                (n, 1u64)
            } else {
                match s.char_indices().last()? {
                    (i, 's') => (&s[..i], 1000u64),
                    (i, 'm') => (&s[..i], 60_000),
                    (i, 'h') => (&s[..i], 3_600_000),
                    (i, 'd') => (&s[..i], 86_400_000),
                    _ => (s, 1000),
                }
            };
            num.trim().parse::<u64>().ok()?.checked_mul(mult)?
        }
    };
    Some(Duration::from_millis(millis))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                ConfigError::Missing {
                    file: file.to_path_buf(),
                }
            } else {
                ConfigError::Read {
                    file: file.to_path_buf(),
                    error,
                }
            }
        })?;
        Config::parse(&text, file)
    }

    /// Validates config text as if read from `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut config = Config::from_raw(raw, file, base)?;
        config.file = Some(file.to_path_buf());
        Ok(config)
    }

    /// Validates raw settings; relative paths are taken from `base`.
    pub fn from_raw(raw: raw::RawConfig, file: &Path, base: &Path) -> Result<Config, ConfigError> {
        let cx = Ctx { file, base };
        let mut warnings = Vec::new();
        let hostname = raw
            .hostname
            .ok_or_else(|| cx.invalid("hostname", "this server's host name", "nothing"))?;
        let hostname = Domain::parse(&hostname)
            .map_err(|e| cx.invalid("hostname", "a host name like mail.example.com", e))?
            .to_string();
        let data_dir = cx.path(raw.data_dir.as_deref().unwrap_or("."));
        let user = match raw.user {
            Some(u) if u.is_empty() || u.contains(['/', ':', '\0']) => {
                return Err(cx.invalid(
                    "user",
                    "a system user name, e.g. \"mailkeep\"",
                    format!("{u:?}"),
                ))
            }
            other => other,
        };

        let mut listeners = Vec::new();
        for (i, l) in raw.listener.iter().enumerate() {
            let key = format!("listener[{i}]");
            let protocol = Protocol::parse(&l.protocol).ok_or_else(|| {
                cx.invalid(
                    &format!("{key}.protocol"),
                    "smtp, submission, submissions, imap, imaps, pop3, pop3s, managesieve or http",
                    &l.protocol,
                )
            })?;
            let address = l.address.parse().map_err(|_| {
                cx.invalid(
                    &format!("{key}.address"),
                    "IP:PORT, e.g. 0.0.0.0:25 or [::]:25",
                    &l.address,
                )
            })?;
            listeners.push(Listener { protocol, address });
        }

        let tls = match raw.tls {
            Some(t) => Some(TlsConfig {
                cert: cx.path(&t.cert),
                key: cx.path(&t.key),
            }),
            None => None,
        };

        let s = raw.smtp.unwrap_or_default();
        let mut max_errors = s.max_errors;
        if let Some(old) = s.hard_error_limit {
            warnings.push(format!(
                "{}: key `smtp.hard_error_limit` is renamed `smtp.max_errors`",
                file.display()
            ));
            max_errors = max_errors.or(Some(old));
        }
        let default = raw::Size::Str;
        let smtp = SmtpConfig {
            max_message_size: cx.size(
                "smtp.max_message_size",
                s.max_message_size
                    .as_ref()
                    .unwrap_or(&default("50M".into())),
            )?,
            max_recipients: positive(&cx, "smtp.max_recipients", s.max_recipients, 100)?,
            max_command_line: positive(&cx, "smtp.max_command_line", s.max_command_line, 4096)?,
            max_data_line: cx.size(
                "smtp.max_data_line",
                s.max_data_line.as_ref().unwrap_or(&raw::Size::Int(65536)),
            )? as usize,
            max_header_size: cx.size(
                "smtp.max_header_size",
                s.max_header_size.as_ref().unwrap_or(&default("1M".into())),
            )? as usize,
            command_timeout: cx.duration(
                "smtp.command_timeout",
                s.command_timeout.as_ref().unwrap_or(&default("5m".into())),
            )?,
            data_timeout: cx.duration(
                "smtp.data_timeout",
                s.data_timeout.as_ref().unwrap_or(&default("3m".into())),
            )?,
            max_errors: positive(&cx, "smtp.max_errors", max_errors.map(|v| v as i64), 20)? as u32,
            max_connections: positive(&cx, "smtp.max_connections", s.max_connections, 1000)?,
            max_connections_per_ip: positive(
                &cx,
                "smtp.max_connections_per_ip",
                s.max_connections_per_ip,
                20,
            )?,
            quota_reply: match s.quota_reply.as_deref().unwrap_or("temporary") {
                "temporary" => QuotaReply::Temporary,
                "permanent" => QuotaReply::Permanent,
                other => {
                    return Err(cx.invalid(
                        "smtp.quota_reply",
                        "\"temporary\" (452 4.2.2) or \"permanent\" (552 5.2.2)",
                        format!("{other:?}"),
                    ))
                }
            },
            reverse_dns: s.reverse_dns.unwrap_or(true),
            commands_per_second: count_key(
                &cx,
                "smtp.commands_per_second",
                s.commands_per_second,
                100,
            )?,
            max_messages_per_connection: count_key(
                &cx,
                "smtp.max_messages_per_connection",
                s.max_messages_per_connection,
                1000,
            )?,
            max_recipients_per_connection: count_key(
                &cx,
                "smtp.max_recipients_per_connection",
                s.max_recipients_per_connection,
                10_000,
            )?,
            max_messages_per_sender_domain: count_key(
                &cx,
                "smtp.max_messages_per_sender_domain",
                s.max_messages_per_sender_domain,
                5000,
            )?,
        };
        if smtp.max_message_size < 1024 {
            return Err(cx.invalid(
                "smtp.max_message_size",
                "at least 1K",
                smtp.max_message_size,
            ));
        }
        if smtp.max_command_line < 512 {
            return Err(cx.invalid(
                "smtp.max_command_line",
                "at least 512 (RFC 5321 4.5.3.1.4)",
                smtp.max_command_line,
            ));
        }
        if smtp.max_data_line < 1000 {
            return Err(cx.invalid(
                "smtp.max_data_line",
                "at least 1000 (RFC 5321 4.5.3.1.6)",
                smtp.max_data_line,
            ));
        }

        let im = raw.imap.unwrap_or_default();
        let imap = ImapConfig {
            max_literal: cx.size(
                "imap.max_literal",
                im.max_literal.as_ref().unwrap_or(&raw::Size::Int(50 << 20)),
            )?,
            max_line: cx.size(
                "imap.max_line",
                im.max_line.as_ref().unwrap_or(&raw::Size::Int(64 << 10)),
            )? as usize,
            idle_timeout: cx.duration(
                "imap.idle_timeout",
                im.idle_timeout.as_ref().unwrap_or(&default("30m".into())),
            )?,
            max_connections: positive(&cx, "imap.max_connections", im.max_connections, 20_000)?,
            max_connections_per_ip: positive(
                &cx,
                "imap.max_connections_per_ip",
                im.max_connections_per_ip,
                1000,
            )?,
            commands_per_second: count_key(
                &cx,
                "imap.commands_per_second",
                im.commands_per_second,
                5000,
            )?,
        };
        if imap.max_line < 1024 {
            return Err(cx.invalid("imap.max_line", "at least 1024 bytes", imap.max_line));
        }
        if imap.max_literal < 1024 {
            return Err(cx.invalid("imap.max_literal", "at least 1024 bytes", imap.max_literal));
        }
        let po = raw.pop3.unwrap_or_default();
        let pop3 = Pop3Config {
            idle_timeout: cx.duration(
                "pop3.idle_timeout",
                po.idle_timeout.as_ref().unwrap_or(&default("10m".into())),
            )?,
            max_connections: positive(
                &cx,
                "pop3.max_connections",
                po.max_connections,
                imap.max_connections,
            )?,
            max_connections_per_ip: positive(
                &cx,
                "pop3.max_connections_per_ip",
                po.max_connections_per_ip,
                imap.max_connections_per_ip,
            )?,
            commands_per_second: count_key(
                &cx,
                "pop3.commands_per_second",
                po.commands_per_second,
                1000,
            )?,
        };
        // The submission listeners: [smtp], with their own connection limits and rates.
        let su = raw.submission.unwrap_or_default();
        let submission = SmtpConfig {
            max_connections: positive(
                &cx,
                "submission.max_connections",
                su.max_connections,
                smtp.max_connections,
            )?,
            max_connections_per_ip: positive(
                &cx,
                "submission.max_connections_per_ip",
                su.max_connections_per_ip,
                smtp.max_connections_per_ip,
            )?,
            commands_per_second: count_key(
                &cx,
                "submission.commands_per_second",
                su.commands_per_second,
                smtp.commands_per_second,
            )?,
            max_messages_per_connection: count_key(
                &cx,
                "submission.max_messages_per_connection",
                su.max_messages_per_connection,
                smtp.max_messages_per_connection,
            )?,
            max_recipients_per_connection: count_key(
                &cx,
                "submission.max_recipients_per_connection",
                su.max_recipients_per_connection,
                smtp.max_recipients_per_connection,
            )?,
            ..smtp.clone()
        };
        let au = raw.auth.unwrap_or_default();
        let auth = AuthConfig {
            plaintext: match au.plaintext.as_deref() {
                None | Some("loopback") => Plaintext::Loopback,
                Some("never") => Plaintext::Never,
                Some(other) => {
                    return Err(cx.invalid(
                        "auth.plaintext",
                        "\"loopback\" or \"never\"",
                        format!("{other:?}"),
                    ))
                }
            },
            failure_delay: cx.duration(
                "auth.failure_delay",
                au.failure_delay.as_ref().unwrap_or(&default("2s".into())),
            )?,
            max_failures: positive(&cx, "auth.max_failures", au.max_failures, 3)? as u32,
            max_unauthenticated_per_ip: positive(
                &cx,
                "auth.max_unauthenticated_per_ip",
                au.max_unauthenticated_per_ip,
                20,
            )?,
        };

        let st = raw.store.unwrap_or_default();
        let backend = st.backend.unwrap_or_else(|| "sqlite".into());
        if backend != "sqlite" {
            return Err(cx.invalid("store.backend", "\"sqlite\"", format!("{backend:?}")));
        }
        let store = StoreConfig {
            backend,
            path: st
                .path
                .map(|p| cx.path(&p))
                .unwrap_or_else(|| data_dir.join("store")),
        };

        let d = raw.directory.unwrap_or_default();
        let plus_separator = match d.plus_separator.as_deref() {
            None => Some('+'),
            Some("") => None,
            Some(s) if s.chars().count() == 1 && !s.contains('@') => s.chars().next(),
            Some(s) => {
                return Err(cx.invalid(
                    "directory.plus_separator",
                    "one character, or \"\" to turn sub-addressing off",
                    format!("{s:?}"),
                ))
            }
        };
        let directory = DirectoryConfig {
            plus_separator,
            default_quota: cx.size(
                "directory.default_quota",
                d.default_quota.as_ref().unwrap_or(&raw::Size::Int(0)),
            )?,
        };

        let lg = raw.log.unwrap_or_default();
        let log = LogConfig {
            retention: cx.duration(
                "log.retention",
                lg.retention.as_ref().unwrap_or(&default("30d".into())),
            )?,
        };

        let dn = raw.dns.unwrap_or_default();
        let mut servers = Vec::new();
        for (i, s) in dn.servers.iter().enumerate() {
            let addr = s
                .parse::<SocketAddr>()
                .or_else(|_| {
                    s.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    cx.invalid(
                        &format!("dns.servers[{i}]"),
                        "an IP address, optionally with :PORT",
                        format!("{s:?}"),
                    )
                })?;
            servers.push(addr);
        }
        let dns = DnsConfig {
            servers,
            timeout: cx.duration(
                "dns.timeout",
                dn.timeout.as_ref().unwrap_or(&default("5s".into())),
            )?,
        };

        let qu = raw.queue.unwrap_or_default();
        let qd = |key: &str, v: &Option<raw::Size>, d: &str| {
            cx.duration(key, v.as_ref().unwrap_or(&default(d.into())))
        };
        let queue = QueueConfig {
            lifetime: qd("queue.lifetime", &qu.lifetime, "5d")?,
            retry_first: qd("queue.retry_first", &qu.retry_first, "5m")?,
            retry_max: qd("queue.retry_max", &qu.retry_max, "4h")?,
            delay_warning: qd("queue.delay_warning", &qu.delay_warning, "4h")?,
            connect_timeout: qd("queue.connect_timeout", &qu.connect_timeout, "30s")?,
            command_timeout: qd("queue.command_timeout", &qu.command_timeout, "5m")?,
            concurrency: positive(&cx, "queue.concurrency", qu.concurrency, 20)?,
            // Postfix's default_destination_concurrency_limit.
            destination_concurrency: positive(
                &cx,
                "queue.destination_concurrency",
                qu.destination_concurrency,
                20,
            )?,
            port: match qu.port {
                None => 25,
                Some(p) => u16::try_from(p)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| cx.invalid("queue.port", "a port number", p))?,
            },
            dane: qu.dane.unwrap_or(true),
            mta_sts: qu.mta_sts.unwrap_or(true),
            mta_sts_port: match qu.mta_sts_port {
                None => 443,
                Some(p) => u16::try_from(p)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| cx.invalid("queue.mta_sts_port", "a port number", p))?,
            },
            ca_file: qu.ca_file.as_deref().map(|p| cx.path(p)),
            relay: match &qu.relay {
                None => None,
                Some(r) if r.trim().is_empty() => None,
                Some(r) => {
                    let (host, port) = r
                        .rsplit_once(':')
                        .and_then(|(h, p)| {
                            Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?))
                        })
                        .filter(|(h, p)| !h.is_empty() && *p > 0)
                        .ok_or_else(|| cx.invalid("queue.relay", "HOST:PORT", format!("{r:?}")))?;
                    let tls = match qu.relay_tls.as_deref() {
                        None | Some("starttls") => RelayTls::StartTls,
                        Some("implicit") => RelayTls::Implicit,
                        Some("opportunistic") => RelayTls::Opportunistic,
                        Some("none") => RelayTls::None,
                        Some(other) => {
                            return Err(cx.invalid(
                                "queue.relay_tls",
                                "\"starttls\", \"implicit\", \"opportunistic\" or \"none\"",
                                format!("{other:?}"),
                            ))
                        }
                    };
                    let credentials = match (&qu.relay_username, &qu.relay_password) {
                        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                        (None, None) => None,
                        _ => {
                            return Err(cx.invalid(
                                "queue.relay_password",
                                "relay_username and relay_password together",
                                "only one of them",
                            ))
                        }
                    };
                    Some(Relay {
                        host: host.to_string(),
                        port,
                        tls,
                        verify_certificate: qu.relay_verify_certificate.unwrap_or(true),
                        credentials,
                    })
                }
            },
        };

        let ve = raw.verify.unwrap_or_default();
        let verify = VerifyConfig {
            spf: ve.spf.unwrap_or(true),
            dkim: ve.dkim.unwrap_or(true),
            arc: ve.arc.unwrap_or(true),
            dmarc: ve.dmarc.unwrap_or(true),
            iprev: ve.iprev.unwrap_or(true),
            dmarc_enforce: ve.dmarc_enforce.unwrap_or(true),
            max_dkim_signatures: positive(
                &cx,
                "verify.max_dkim_signatures",
                ve.max_dkim_signatures,
                10,
            )?,
        };

        let mut domains = Vec::new();
        for (i, d) in raw.domains.iter().enumerate() {
            domains.push(Domain::parse(d).map_err(|e| {
                cx.invalid(
                    &format!("domains[{i}]"),
                    "a domain name",
                    format!("{d:?}: {e}"),
                )
            })?);
        }
        let re = raw.reports.unwrap_or_default();
        let reports = ReportsConfig {
            dmarc: re.dmarc.unwrap_or(true),
            tlsrpt: re.tlsrpt.unwrap_or(true),
            interval: cx.duration(
                "reports.interval",
                re.interval.as_ref().unwrap_or(&default("24h".into())),
            )?,
            from: match re.from {
                Some(f) if f.contains('@') && !f.contains(char::is_whitespace) => f,
                Some(f) => return Err(cx.invalid("reports.from", "an address", format!("{f:?}"))),
                None => format!(
                    "postmaster@{}",
                    domains
                        .first()
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| hostname.clone())
                ),
            },
            org: hostname.clone(),
        };
        let fw = raw.forwarding.unwrap_or_default();
        let srs_max_age = cx.duration(
            "forwarding.srs_max_age",
            fw.srs_max_age.as_ref().unwrap_or(&default("21d".into())),
        )?;
        // SRS timestamps count days modulo 1024.
        if srs_max_age < Duration::from_secs(86_400)
            || srs_max_age > Duration::from_secs(1000 * 86_400)
        {
            return Err(cx.invalid(
                "forwarding.srs_max_age",
                "between 1 day and 1000 days",
                format!("{srs_max_age:?}"),
            ));
        }
        let ms = raw.mta_sts.unwrap_or_default();
        let mta_sts = MtaStsConfig {
            mode: match ms.mode.as_deref().unwrap_or("testing") {
                "enforce" => MtaStsMode::Enforce,
                "testing" => MtaStsMode::Testing,
                "none" => MtaStsMode::None,
                other => {
                    return Err(cx.invalid(
                        "mta_sts.mode",
                        "enforce, testing or none",
                        format!("{other:?}"),
                    ))
                }
            },
            max_age: cx.duration(
                "mta_sts.max_age",
                ms.max_age.as_ref().unwrap_or(&default("7d".into())),
            )?,
        };
        // RFC 8461 3.2: max_age is at most 31557600 seconds.
        if mta_sts.max_age > Duration::from_secs(31_557_600) || mta_sts.max_age.is_zero() {
            return Err(cx.invalid(
                "mta_sts.max_age",
                "more than 0 and at most a year (31557600 s)",
                format!("{:?}", mta_sts.max_age),
            ));
        }
        let ba = raw.bans.unwrap_or_default();
        let mut allow = Vec::new();
        for (i, n) in ba.allow.unwrap_or_default().iter().enumerate() {
            allow.push(n.parse().map_err(|e: mailkeep_types::ipnet::IpNetError| {
                cx.invalid(&format!("bans.allow[{i}]"), "an address or network", e.0)
            })?);
        }
        let bans = BansConfig {
            after: count_key(&cx, "bans.after", ba.after, 20)?,
            window: cx.duration(
                "bans.window",
                ba.window.as_ref().unwrap_or(&default("1h".into())),
            )?,
            duration: cx.duration(
                "bans.duration",
                ba.duration.as_ref().unwrap_or(&default("1h".into())),
            )?,
            allow,
            account_ips: count_key(&cx, "bans.account_ips", ba.account_ips, 10)?,
            account_lock: cx.duration(
                "bans.account_lock",
                ba.account_lock.as_ref().unwrap_or(&default("15m".into())),
            )?,
        };
        let gr = raw.greylist.unwrap_or_default();
        let mut allow = Vec::new();
        for (i, n) in gr.allow.unwrap_or_default().iter().enumerate() {
            allow.push(n.parse().map_err(|e: mailkeep_types::ipnet::IpNetError| {
                cx.invalid(
                    &format!("greylist.allow[{i}]"),
                    "an address or network",
                    e.0,
                )
            })?);
        }
        let sv = raw.sieve.unwrap_or_default();
        let script_names = |key: &str, list: Vec<String>| -> Result<Vec<String>, ConfigError> {
            for (i, n) in list.iter().enumerate() {
                if n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.') {
                    return Err(cx.invalid(
                        &format!("{key}[{i}]"),
                        "a script name in sieve.global_dir (no path)",
                        format!("{n:?}"),
                    ));
                }
            }
            Ok(list)
        };
        let sieve = SieveConfig {
            global_dir: sv
                .global_dir
                .as_deref()
                .map(|d| cx.path(d))
                .unwrap_or_else(|| data_dir.join("sieve")),
            before: script_names("sieve.before", sv.before.unwrap_or_default())?,
            after: script_names("sieve.after", sv.after.unwrap_or_default())?,
            max_script_size: cx.size(
                "sieve.max_script_size",
                sv.max_script_size
                    .as_ref()
                    .unwrap_or(&raw::Size::Int(64 << 10)),
            )? as usize,
            max_instructions: positive(&cx, "sieve.max_instructions", sv.max_instructions, 20_000)?,
            max_redirects: count_key(&cx, "sieve.max_redirects", sv.max_redirects, 4)? as usize,
            max_scripts: positive(&cx, "sieve.max_scripts", sv.max_scripts, 100)?,
        };
        let greylist = GreylistConfig {
            enabled: gr.enabled.unwrap_or(false),
            delay: cx.duration(
                "greylist.delay",
                gr.delay.as_ref().unwrap_or(&default("5m".into())),
            )?,
            retry_window: cx.duration(
                "greylist.retry_window",
                gr.retry_window.as_ref().unwrap_or(&default("2d".into())),
            )?,
            lifetime: cx.duration(
                "greylist.pass_lifetime",
                gr.pass_lifetime.as_ref().unwrap_or(&default("35d".into())),
            )?,
            auto_allow_clients: count_key(
                &cx,
                "greylist.auto_allow_clients",
                gr.auto_allow_clients,
                5,
            )?,
            allow,
        };
        let li = raw.limits.unwrap_or_default();
        let limits = LimitsConfig {
            messages_per_hour: count_key(
                &cx,
                "limits.messages_per_hour",
                li.messages_per_hour,
                100,
            )?,
            messages_per_day: count_key(&cx, "limits.messages_per_day", li.messages_per_day, 1000)?,
            recipients_per_message: count_key(
                &cx,
                "limits.recipients_per_message",
                li.recipients_per_message,
                100,
            )?,
            new_recipients_per_day: count_key(
                &cx,
                "limits.new_recipients_per_day",
                li.new_recipients_per_day,
                200,
            )?,
            hold_new_recipients_per_hour: count_key(
                &cx,
                "limits.hold_new_recipients_per_hour",
                li.hold_new_recipients_per_hour,
                100,
            )?,
            hold_bounce_rate: share(&cx, "limits.hold_bounce_rate", li.hold_bounce_rate, 0.3)?,
            hold_complaint_rate: share(
                &cx,
                "limits.hold_complaint_rate",
                li.hold_complaint_rate,
                0.01,
            )?,
            hold_min_recipients: count_key(
                &cx,
                "limits.hold_min_recipients",
                li.hold_min_recipients,
                20,
            )?,
            hold_new_login_networks: count_key(
                &cx,
                "limits.hold_new_login_networks",
                li.hold_new_login_networks,
                10,
            )?,
        };
        let rd = raw.dnsbl.unwrap_or_default();
        let zones = |key: &str, list: Vec<String>| -> Result<Vec<Domain>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, z)| {
                    Domain::parse(z).map_err(|e| {
                        cx.invalid(&format!("{key}[{i}]"), "a DNS zone", format!("{z:?}: {e}"))
                    })
                })
                .collect()
        };
        let dnsbl = DnsblConfig {
            lists: zones(
                "dnsbl.lists",
                rd.lists
                    .unwrap_or_else(|| DEFAULT_DNSBLS.iter().map(|z| z.to_string()).collect()),
            )?,
            inbound: zones("dnsbl.inbound", rd.inbound.unwrap_or_default())?,
            rhsbl: zones("dnsbl.rhsbl", rd.rhsbl.unwrap_or_default())?,
            uribl: zones("dnsbl.uribl", rd.uribl.unwrap_or_default())?,
            inbound_junk: match rd.inbound_action.as_deref().unwrap_or("reject") {
                "reject" => false,
                "junk" => true,
                other => {
                    return Err(cx.invalid(
                        "dnsbl.inbound_action",
                        "\"reject\" or \"junk\"",
                        format!("{other:?}"),
                    ))
                }
            },
        };
        let av = raw.antivirus.unwrap_or_default();
        if let Some(c) = &av.clamd {
            if !c.starts_with('/') && c.parse::<SocketAddr>().is_err() {
                return Err(cx.invalid(
                    "antivirus.clamd",
                    "IP:PORT or the absolute path of clamd's Unix socket",
                    format!("{c:?}"),
                ));
            }
        }
        let antivirus = AntivirusConfig {
            clamd: av.clamd,
            fail_open: match av.on_error.as_deref().unwrap_or("tempfail") {
                "tempfail" => false,
                "accept" => true,
                other => {
                    return Err(cx.invalid(
                        "antivirus.on_error",
                        "\"tempfail\" or \"accept\"",
                        format!("{other:?}"),
                    ))
                }
            },
            timeout: cx.duration(
                "antivirus.timeout",
                av.timeout.as_ref().unwrap_or(&default("30s".into())),
            )?,
        };
        let sp = raw.spam.unwrap_or_default();
        let score = |key: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(cx.invalid(key, "a score from 0 to 1", v))
            }
        };
        let spam = SpamConfig {
            enabled: sp.enabled.unwrap_or(true),
            junk: score("spam.junk", sp.junk.unwrap_or(0.8))?,
            reject: match sp.reject {
                Some(v) if v > 0.0 => Some(score("spam.reject", v)?),
                Some(v) if v < 0.0 => {
                    return Err(cx.invalid("spam.reject", "a score from 0 to 1", v))
                }
                _ => None,
            },
            min_learnt: count_key(&cx, "spam.min_learnt", sp.min_learnt, 200)?,
            outbound_hold: match sp.outbound_hold {
                None => Some(0.99),
                Some(v) if v > 0.0 => Some(score("spam.outbound_hold", v)?),
                Some(v) if v < 0.0 => {
                    return Err(cx.invalid("spam.outbound_hold", "a score from 0 to 1", v))
                }
                Some(_) => None,
            },
        };
        let forwarding = ForwardingConfig {
            enabled: fw.enabled.unwrap_or(true),
            srs: fw.srs.unwrap_or(true),
            srs_max_age,
            arc_seal: fw.arc_seal.unwrap_or(true),
        };

        Ok(Config {
            file: None,
            hostname,
            data_dir,
            user,
            listeners,
            tls,
            smtp,
            submission,
            imap,
            pop3,
            auth,
            store,
            directory,
            log,
            dns,
            queue,
            verify,
            reports,
            forwarding,
            mta_sts,
            bans,
            greylist,
            sieve,
            limits,
            dnsbl,
            antivirus,
            spam,
            domains,
            warnings,
        })
    }

    /// Replaces the listeners with `--listen` arguments.
    pub fn override_listeners(&mut self, listeners: Vec<Listener>) {
        if !listeners.is_empty() {
            self.listeners = listeners;
        }
    }

    /// The listeners grouped by protocol.
    pub fn listeners_by_protocol(&self) -> BTreeMap<Protocol, Vec<SocketAddr>> {
        let mut map: BTreeMap<Protocol, Vec<SocketAddr>> = BTreeMap::new();
        for l in &self.listeners {
            map.entry(l.protocol).or_default().push(l.address);
        }
        map
    }
}

fn positive(cx: &Ctx<'_>, key: &str, v: Option<i64>, default: usize) -> Result<usize, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if n > 0 => usize::try_from(n).map_err(|_| cx.invalid(key, "a positive number", n)),
        Some(n) => Err(cx.invalid(key, "a positive number", n)),
    }
}

/// The blocklists `mailkeep check blocklists` asks by default: widely used lists of
/// addresses that send spam. (Spamhaus answers no queries coming through large public
/// resolvers; use your own resolver.)
pub const DEFAULT_DNSBLS: &[&str] = &[
    "zen.spamhaus.org",
    "bl.spamcop.net",
    "b.barracudacentral.org",
    "psbl.surriel.com",
];

/// A share from 0 to 1 (0: off).
fn share(cx: &Ctx<'_>, key: &str, v: Option<f64>, default: f64) -> Result<f64, ConfigError> {
    match v {
        None => Ok(default),
        Some(x) if (0.0..=1.0).contains(&x) => Ok(x),
        Some(x) => Err(cx.invalid(key, "a share from 0 to 1 (0: off)", x)),
    }
}

/// A count that may be 0 (meaning no limit).
fn count_key(cx: &Ctx<'_>, key: &str, v: Option<i64>, default: u32) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) => u32::try_from(n).map_err(|_| cx.invalid(key, "a number, 0 or more", n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/mailkeep/mailkeep.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("hostname = \"mail.example.com\"\n").unwrap();
        assert_eq!(c.smtp.max_message_size, 50 << 20);
        assert_eq!(c.smtp.max_recipients, 100);
        assert_eq!(c.data_dir, Path::new("/etc/mailkeep/."));
        assert_eq!(c.directory.plus_separator, Some('+'));
        assert_eq!(c.smtp.command_timeout, Duration::from_secs(300));
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = parse("hostname = \"m.example\"\n[smtp]\nmax_message_size = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/mailkeep/mailkeep.toml"), "{e}");
        assert!(e.contains("smtp.max_message_size"), "{e}");
        assert!(e.contains("25M"), "{e}");

        let e = parse("hostname = \"m.example\"\n[smtp]\nmax_mesage_size = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_mesage_size"), "{e}");

        let e = parse(
            "hostname = \"m.example\"\n[[listener]]\nprotocol = \"smtp\"\naddress = \"nowhere\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listener[0].address"), "{e}");

        let e = parse("").unwrap_err().to_string();
        assert!(e.contains("`hostname`"), "{e}");
    }

    #[test]
    fn forwarding_defaults_and_limits() {
        let c = parse("hostname = \"m.example\"\n").unwrap();
        assert!(c.forwarding.enabled && c.forwarding.srs && c.forwarding.arc_seal);
        assert_eq!(c.forwarding.srs_max_age, Duration::from_secs(21 * 86_400));
        let c =
            parse("hostname = \"m.example\"\n[forwarding]\nsrs = false\nsrs_max_age = \"30d\"\n")
                .unwrap();
        assert!(!c.forwarding.srs);
        assert_eq!(c.forwarding.srs_max_age, Duration::from_secs(30 * 86_400));
        // SRS timestamps wrap after 1024 days; less than a day cannot be told apart.
        for bad in ["\"2000d\"", "\"1h\""] {
            let e = parse(&format!(
                "hostname = \"m.example\"\n[forwarding]\nsrs_max_age = {bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("forwarding.srs_max_age"), "{e}");
        }
    }

    #[test]
    fn limit_settings() {
        let c = parse("hostname = \"m.example\"\n").unwrap();
        assert_eq!(c.limits.messages_per_hour, 100);
        assert_eq!(c.limits.new_recipients_per_day, 200);
        let c = parse("hostname = \"m.example\"\n[limits]\nmessages_per_day = 0\n").unwrap();
        assert_eq!(c.limits.messages_per_day, 0);
        let e = parse("hostname = \"m.example\"\n[limits]\nrecipients_per_message = -5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.recipients_per_message"), "{e}");
        let c = parse("hostname = \"m.example\"\n").unwrap();
        assert_eq!(
            (
                c.limits.hold_bounce_rate,
                c.limits.hold_complaint_rate,
                c.limits.hold_min_recipients,
                c.limits.hold_new_login_networks
            ),
            (0.3, 0.01, 20, 10)
        );
        let e = parse("hostname = \"m.example\"\n[limits]\nhold_bounce_rate = 1.5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.hold_bounce_rate"), "{e}");
        assert_eq!(c.smtp.commands_per_second, 100);
        assert_eq!(c.submission, c.smtp, "submission inherits [smtp]");
        assert_eq!(c.pop3.max_connections_per_ip, c.imap.max_connections_per_ip);
        let c2 = parse("hostname = \"m.example\"\n[smtp]\nmax_connections_per_ip = 7\n[submission]\ncommands_per_second = 3\n[pop3]\nmax_connections = 9\n").unwrap();
        assert_eq!(
            (
                c2.submission.commands_per_second,
                c2.submission.max_connections_per_ip
            ),
            (3, 7)
        );
        assert_eq!(c2.smtp.commands_per_second, 100);
        assert_eq!(c2.pop3.max_connections, 9);
        let e = parse("hostname = \"m.example\"\n[submission]\nmax_connections = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("submission.max_connections"), "{e}");
        assert_eq!(c.smtp.max_messages_per_sender_domain, 5000);
        let e = parse("hostname = \"m.example\"\n[smtp]\nmax_messages_per_connection = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("smtp.max_messages_per_connection"), "{e}");
    }

    #[test]
    fn sieve_settings() {
        let c = parse("hostname = \"m.example\"\n").unwrap();
        assert_eq!(c.sieve.global_dir, Path::new("/etc/mailkeep/./sieve"));
        assert_eq!(
            (c.sieve.max_instructions, c.sieve.max_redirects),
            (20_000, 4)
        );
        let c = parse(
            "hostname = \"m.example\"\n[sieve]\nbefore = [\"spam\"]\nmax_script_size = \"8K\"\n",
        )
        .unwrap();
        assert_eq!((c.sieve.before.len(), c.sieve.max_script_size), (1, 8192));
        let e = parse("hostname = \"m.example\"\n[sieve]\nafter = [\"../x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sieve.after[0]"), "{e}");
    }

    #[test]
    fn greylist_settings() {
        let c = parse("hostname = \"m.example\"\n").unwrap();
        assert!(!c.greylist.enabled);
        assert_eq!(c.greylist.delay, Duration::from_secs(300));
        assert_eq!(c.greylist.retry_window, Duration::from_secs(2 * 86400));
        assert_eq!(c.greylist.lifetime, Duration::from_secs(35 * 86400));
        assert_eq!(c.greylist.auto_allow_clients, 5);
        let c = parse("hostname = \"m.example\"\n[greylist]\nenabled = true\ndelay = \"1m\"\nallow = [\"10.0.0.0/8\"]\n").unwrap();
        assert!(c.greylist.enabled && c.greylist.allow.len() == 1);
        for bad in [
            "delay = \"soon\"",
            "allow = [\"nope\"]",
            "auto_allow_clients = -1",
        ] {
            let e = parse(&format!("hostname = \"m.example\"\n[greylist]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("greylist."), "{bad}: {e}");
        }
    }

    #[test]
    fn dnsbl_settings() {
        let c = parse("hostname = \"m.example\"\n").unwrap();
        assert_eq!(c.dnsbl.lists.len(), 4);
        assert!(c.dnsbl.inbound.is_empty() && !c.dnsbl.inbound_junk);
        let c = parse("hostname = \"m.example\"\n[dnsbl]\ninbound = [\"bl.test\"]\ninbound_action = \"junk\"\nrhsbl = [\"dbl.test\"]\nuribl = [\"uri.test\"]\n").unwrap();
        assert!(c.dnsbl.inbound_junk);
        assert_eq!(
            (c.dnsbl.rhsbl[0].as_str(), c.dnsbl.uribl[0].as_str()),
            ("dbl.test", "uri.test")
        );
        let e = parse("hostname = \"m.example\"\n[dnsbl]\nuribl = [\"a b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dnsbl.uribl[0]"), "{e}");
        for bad in ["inbound = [\"not a zone\"]", "inbound_action = \"drop\""] {
            let e = parse(&format!("hostname = \"m.example\"\n[dnsbl]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("dnsbl.inbound"), "{bad}: {e}");
        }
    }

    #[test]
    fn spam_settings() {
        let c = parse("hostname = \"m.example\"\n").unwrap();
        assert!(c.spam.enabled);
        assert_eq!(
            (c.spam.junk, c.spam.reject, c.spam.min_learnt),
            (0.8, None, 200)
        );
        let c = parse("hostname = \"m.example\"\n[spam]\nreject = 0.99\n").unwrap();
        assert_eq!(c.spam.reject, Some(0.99));
        for bad in ["junk = 1.5", "reject = -0.1", "min_learnt = -1"] {
            let e = parse(&format!("hostname = \"m.example\"\n[spam]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("spam."), "{bad}: {e}");
        }
    }

    #[test]
    fn antivirus_settings() {
        let c = parse("hostname = \"m.example\"\n").unwrap();
        assert!(c.antivirus.clamd.is_none() && !c.antivirus.fail_open);
        let c = parse("hostname = \"m.example\"\n[antivirus]\nclamd = \"/run/clamav/clamd.ctl\"\non_error = \"accept\"\n").unwrap();
        assert!(c.antivirus.fail_open);
        for bad in ["clamd = \"localhost\"", "on_error = \"maybe\""] {
            let e = parse(&format!("hostname = \"m.example\"\n[antivirus]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("antivirus."), "{e}");
        }
    }

    #[test]
    fn ban_settings() {
        let c = parse("hostname = \"m.example\"\n").unwrap();
        assert_eq!(c.bans.after, 20);
        assert_eq!(c.bans.window, Duration::from_secs(3600));
        assert_eq!(c.bans.account_ips, 10);
        assert!(c.bans.allow.is_empty());
        let c = parse(
            "hostname = \"m.example\"\n[bans]\nafter = 0\nallow = [\"192.0.2.0/24\", \"2001:db8::1\"]\n",
        )
        .unwrap();
        assert_eq!(c.bans.after, 0);
        assert_eq!(c.bans.allow.len(), 2);
        let e = parse("hostname = \"m.example\"\n[bans]\nallow = [\"10.0.0.0/8\", \"office\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bans.allow[1]") && e.contains("office"), "{e}");
        let e = parse("hostname = \"m.example\"\n[bans]\nafter = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bans.after"), "{e}");
    }

    #[test]
    fn mta_sts_policy_settings() {
        let c = parse("hostname = \"m.example\"\n").unwrap();
        assert_eq!(c.mta_sts.mode, MtaStsMode::Testing);
        assert_eq!(c.mta_sts.max_age, Duration::from_secs(7 * 86_400));
        let c = parse("hostname = \"m.example\"\n[mta_sts]\nmode = \"enforce\"\n").unwrap();
        assert_eq!(c.mta_sts.mode, MtaStsMode::Enforce);
        for bad in ["mode = \"strict\"", "max_age = \"400d\"", "max_age = 0"] {
            let e = parse(&format!("hostname = \"m.example\"\n[mta_sts]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("mta_sts."), "{e}");
        }
    }

    #[test]
    fn renamed_key_warns_and_works() {
        let c = parse("hostname = \"m.example\"\n[smtp]\nhard_error_limit = 3\n").unwrap();
        assert_eq!(c.smtp.max_errors, 3);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("smtp.max_errors"));
    }

    #[test]
    fn listen_args_parse() {
        let l = parse_listen_arg("smtp=127.0.0.1:2525").unwrap();
        assert_eq!(l.protocol, Protocol::Smtp);
        assert!(parse_listen_arg("gopher=127.0.0.1:70")
            .unwrap_err()
            .contains("unknown protocol"));
        assert!(parse_listen_arg("smtp").is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size(&raw::Size::Str("10K".into())), Some(10240));
        assert_eq!(parse_size(&raw::Size::Int(-1)), None);
        assert_eq!(
            parse_duration(&raw::Size::Str("2h".into())),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(parse_duration(&raw::Size::Str("x".into())), None);
        assert_eq!(
            parse_duration(&raw::Size::Str("250ms".into())),
            Some(Duration::from_millis(250))
        );
    }
}
