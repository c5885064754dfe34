//! The config file as written: every key optional, unknown keys rejected.

use std::fmt;

use serde::Deserialize;

/// A size or duration: an integer, or a string with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// A plain number.
    Int(i64),
    /// A number with a unit, e.g. `"25M"` or `"5m"`.
    Str(String),
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Int(n) => write!(f, "{n}"),
            Size::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `hostname`
    pub hostname: Option<String>,
    /// `data_dir`
    pub data_dir: Option<String>,
    /// `user`
    pub user: Option<String>,
    /// `domains`
    #[serde(default)]
    pub domains: Vec<String>,
    /// `[[listener]]`
    #[serde(default)]
    pub listener: Vec<RawListener>,
    /// `[tls]`
    pub tls: Option<RawTls>,
    /// `[smtp]`
    pub smtp: Option<RawSmtp>,
    /// `[submission]`
    pub submission: Option<RawSubmission>,
    /// `[imap]`
    pub imap: Option<RawImap>,
    /// `[pop3]`
    pub pop3: Option<RawPop3>,
    /// `[auth]`
    pub auth: Option<RawAuth>,
    /// `[store]`
    pub store: Option<RawStore>,
    /// `[directory]`
    pub directory: Option<RawDirectory>,
    /// `[log]`
    pub log: Option<RawLog>,
    /// `[dns]`
    pub dns: Option<RawDns>,
    /// `[queue]`
    pub queue: Option<RawQueue>,
    /// `[verify]`
    pub verify: Option<RawVerify>,
    /// `[reports]`
    pub reports: Option<RawReports>,
    /// `[forwarding]`
    pub forwarding: Option<RawForwarding>,
    /// `[mta_sts]`
    pub mta_sts: Option<RawMtaSts>,
    /// `[bans]`
    pub bans: Option<RawBans>,
    /// `[greylist]`
    pub greylist: Option<RawGreylist>,
    /// `[sieve]`
    pub sieve: Option<RawSieve>,
    /// `[limits]`
    pub limits: Option<RawLimits>,
    /// `[dnsbl]`
    pub dnsbl: Option<RawDnsbl>,
    /// `[antivirus]`
    pub antivirus: Option<RawAntivirus>,
    /// `[spam]`
    pub spam: Option<RawSpam>,
}

/// `[spam]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpam {
    /// `enabled`
    pub enabled: Option<bool>,
    /// `junk`
    pub junk: Option<f64>,
    /// `reject`
    pub reject: Option<f64>,
    /// `min_learnt`
    pub min_learnt: Option<i64>,
    /// `outbound_hold`
    pub outbound_hold: Option<f64>,
}

/// `[antivirus]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAntivirus {
    /// `clamd`
    pub clamd: Option<String>,
    /// `on_error`
    pub on_error: Option<String>,
    /// `timeout`
    pub timeout: Option<Size>,
}

/// `[dnsbl]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDnsbl {
    /// `lists`
    pub lists: Option<Vec<String>>,
    /// `inbound`
    pub inbound: Option<Vec<String>>,
    /// `inbound_action`
    pub inbound_action: Option<String>,
    /// `rhsbl`
    pub rhsbl: Option<Vec<String>>,
    /// `uribl`
    pub uribl: Option<Vec<String>>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// `messages_per_hour`
    pub messages_per_hour: Option<i64>,
    /// `messages_per_day`
    pub messages_per_day: Option<i64>,
    /// `recipients_per_message`
    pub recipients_per_message: Option<i64>,
    /// `new_recipients_per_day`
    pub new_recipients_per_day: Option<i64>,
    /// `hold_new_recipients_per_hour`
    pub hold_new_recipients_per_hour: Option<i64>,
    /// `hold_bounce_rate`
    pub hold_bounce_rate: Option<f64>,
    /// `hold_complaint_rate`
    pub hold_complaint_rate: Option<f64>,
    /// `hold_min_recipients`
    pub hold_min_recipients: Option<i64>,
    /// `hold_new_login_networks`
    pub hold_new_login_networks: Option<i64>,
}

/// `[bans]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBans {
    /// `after`
    pub after: Option<i64>,
    /// `window`
    pub window: Option<Size>,
    /// `duration`
    pub duration: Option<Size>,
    /// `allow`
    pub allow: Option<Vec<String>>,
    /// `account_ips`
    pub account_ips: Option<i64>,
    /// `account_lock`
    pub account_lock: Option<Size>,
}

/// `[sieve]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSieve {
    /// `global_dir`
    pub global_dir: Option<String>,
    /// `before`
    pub before: Option<Vec<String>>,
    /// `after`
    pub after: Option<Vec<String>>,
    /// `max_script_size`
    pub max_script_size: Option<Size>,
    /// `max_instructions`
    pub max_instructions: Option<i64>,
    /// `max_redirects`
    pub max_redirects: Option<i64>,
    /// `max_scripts`
    pub max_scripts: Option<i64>,
}

/// `[greylist]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGreylist {
    /// `enabled`
    pub enabled: Option<bool>,
    /// `delay`
    pub delay: Option<Size>,
    /// `retry_window`
    pub retry_window: Option<Size>,
    /// `pass_lifetime`
    pub pass_lifetime: Option<Size>,
    /// `auto_allow_clients`
    pub auto_allow_clients: Option<i64>,
    /// `allow`
    pub allow: Option<Vec<String>>,
}

/// `[mta_sts]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMtaSts {
    /// `mode`
    pub mode: Option<String>,
    /// `max_age`
    pub max_age: Option<Size>,
}

/// `[forwarding]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwarding {
    /// `enabled`
    pub enabled: Option<bool>,
    /// `srs`
    pub srs: Option<bool>,
    /// `srs_max_age`
    pub srs_max_age: Option<Size>,
    /// `arc_seal`
    pub arc_seal: Option<bool>,
}

/// `[reports]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReports {
    /// `dmarc`
    pub dmarc: Option<bool>,
    /// `tlsrpt`
    pub tlsrpt: Option<bool>,
    /// `interval`
    pub interval: Option<Size>,
    /// `from`
    pub from: Option<String>,
}

/// `[verify]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    /// `spf`
    pub spf: Option<bool>,
    /// `dkim`
    pub dkim: Option<bool>,
    /// `arc`
    pub arc: Option<bool>,
    /// `dmarc`
    pub dmarc: Option<bool>,
    /// `iprev`
    pub iprev: Option<bool>,
    /// `dmarc_enforce`
    pub dmarc_enforce: Option<bool>,
    /// `max_dkim_signatures`
    pub max_dkim_signatures: Option<i64>,
}

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `protocol`
    pub protocol: String,
    /// `address`
    pub address: String,
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// `cert`
    pub cert: String,
    /// `key`
    pub key: String,
}

/// `[smtp]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    /// `max_message_size`
    pub max_message_size: Option<Size>,
    /// `max_recipients`
    pub max_recipients: Option<i64>,
    /// `max_command_line`
    pub max_command_line: Option<i64>,
    /// `max_data_line`
    pub max_data_line: Option<Size>,
    /// `max_header_size`
    pub max_header_size: Option<Size>,
    /// `command_timeout`
    pub command_timeout: Option<Size>,
    /// `data_timeout`
    pub data_timeout: Option<Size>,
    /// `max_errors`
    pub max_errors: Option<u32>,
    /// `hard_error_limit`: the old name of `max_errors`.
    pub hard_error_limit: Option<u32>,
    /// `max_connections`
    pub max_connections: Option<i64>,
    /// `max_connections_per_ip`
    pub max_connections_per_ip: Option<i64>,
    /// `quota_reply`
    pub quota_reply: Option<String>,
    /// `reverse_dns`
    pub reverse_dns: Option<bool>,
    /// `commands_per_second`
    pub commands_per_second: Option<i64>,
    /// `max_messages_per_connection`
    pub max_messages_per_connection: Option<i64>,
    /// `max_recipients_per_connection`
    pub max_recipients_per_connection: Option<i64>,
    /// `max_messages_per_sender_domain`
    pub max_messages_per_sender_domain: Option<i64>,
}

/// `[imap]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImap {
    /// `max_literal`
    pub max_literal: Option<Size>,
    /// `max_line`
    pub max_line: Option<Size>,
    /// `idle_timeout`
    pub idle_timeout: Option<Size>,
    /// `max_connections`
    pub max_connections: Option<i64>,
    /// `max_connections_per_ip`
    pub max_connections_per_ip: Option<i64>,
    /// `commands_per_second`
    pub commands_per_second: Option<i64>,
}

/// `[pop3]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPop3 {
    /// `idle_timeout`
    pub idle_timeout: Option<Size>,
    /// `max_connections`
    pub max_connections: Option<i64>,
    /// `max_connections_per_ip`
    pub max_connections_per_ip: Option<i64>,
    /// `commands_per_second`
    pub commands_per_second: Option<i64>,
}

/// `[submission]`: the submission listeners' own limits (absent keys: `[smtp]`'s).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubmission {
    /// `max_connections`
    pub max_connections: Option<i64>,
    /// `max_connections_per_ip`
    pub max_connections_per_ip: Option<i64>,
    /// `commands_per_second`
    pub commands_per_second: Option<i64>,
    /// `max_messages_per_connection`
    pub max_messages_per_connection: Option<i64>,
    /// `max_recipients_per_connection`
    pub max_recipients_per_connection: Option<i64>,
}

/// `[auth]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `plaintext`
    pub plaintext: Option<String>,
    /// `failure_delay`
    pub failure_delay: Option<Size>,
    /// `max_failures`
    pub max_failures: Option<i64>,
    /// `max_unauthenticated_per_ip`
    pub max_unauthenticated_per_ip: Option<i64>,
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `backend`
    pub backend: Option<String>,
    /// `path`
    pub path: Option<String>,
}

/// `[directory]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectory {
    /// `plus_separator`
    pub plus_separator: Option<String>,
    /// `default_quota`
    pub default_quota: Option<Size>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `retention`
    pub retention: Option<Size>,
}

/// `[queue]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    /// `lifetime`
    pub lifetime: Option<Size>,
    /// `retry_first`
    pub retry_first: Option<Size>,
    /// `retry_max`
    pub retry_max: Option<Size>,
    /// `delay_warning`
    pub delay_warning: Option<Size>,
    /// `connect_timeout`
    pub connect_timeout: Option<Size>,
    /// `command_timeout`
    pub command_timeout: Option<Size>,
    /// `concurrency`
    pub concurrency: Option<i64>,
    /// `destination_concurrency`
    pub destination_concurrency: Option<i64>,
    /// `port`
    pub port: Option<i64>,
    /// `relay`
    pub relay: Option<String>,
    /// `relay_tls`
    pub relay_tls: Option<String>,
    /// `relay_verify_certificate`
    pub relay_verify_certificate: Option<bool>,
    /// `relay_username`
    pub relay_username: Option<String>,
    /// `relay_password`
    pub relay_password: Option<String>,
    /// `dane`
    pub dane: Option<bool>,
    /// `mta_sts`
    pub mta_sts: Option<bool>,
    /// `mta_sts_port`
    pub mta_sts_port: Option<i64>,
    /// `ca_file`
    pub ca_file: Option<String>,
}

/// `[dns]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// `servers`
    #[serde(default)]
    pub servers: Vec<String>,
    /// `timeout`
    pub timeout: Option<Size>,
}
