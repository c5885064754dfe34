//! The `mailkeep` binary: command line and wiring. All mail logic lives in the library crates.

mod admin;
mod check;
mod dns;
mod init;
mod privileges;
mod serve;
mod sieve;
mod spam;

use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// A complete mail server you run yourself.
#[derive(Parser)]
#[command(name = "mailkeep", version, about)]
struct Cli {
    /// The config file [default: /etc/mailkeep/mailkeep.toml; for `init`, DATA/mailkeep.toml].
    /// Accepted before or after the subcommand.
    #[arg(long, short = 'c', global = true, env = "MAILKEEP_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Where the config is read when neither `--config` nor `MAILKEEP_CONFIG` names one.
const DEFAULT_CONFIG: &str = "/etc/mailkeep/mailkeep.toml";

#[derive(Subcommand)]
enum Command {
    /// Create a config file, data directory, DKIM keys and a TLS certificate; print DNS records.
    Init {
        /// This server's host name (the MX target).
        #[arg(long)]
        hostname: String,
        /// The first mail domain.
        #[arg(long)]
        domain: String,
        /// The data directory.
        #[arg(long, default_value = "/var/lib/mailkeep")]
        data: PathBuf,
        /// The SMTP listener address written to the config ("none" for no listener).
        #[arg(long, default_value = "0.0.0.0:25")]
        smtp_listen: String,
        /// The submission (STARTTLS, RFC 6409) listener address ("none" for no listener).
        #[arg(long, default_value = "0.0.0.0:587")]
        submission_listen: String,
        /// The submission implicit-TLS listener address (RFC 8314; "none" for no listener).
        #[arg(long, default_value = "0.0.0.0:465")]
        submissions_listen: String,
        /// The IMAP (STARTTLS) listener address ("none" for no listener).
        #[arg(long, default_value = "0.0.0.0:143")]
        imap_listen: String,
        /// The IMAP implicit-TLS listener address ("none" for no listener).
        #[arg(long, default_value = "0.0.0.0:993")]
        imaps_listen: String,
        /// The POP3 (STLS) listener address ("none" for no listener).
        #[arg(long, default_value = "0.0.0.0:110")]
        pop3_listen: String,
        /// The POP3 implicit-TLS listener address ("none" for no listener).
        #[arg(long, default_value = "0.0.0.0:995")]
        pop3s_listen: String,
        /// The HTTPS listener address (the MTA-STS policy; "none" for no listener).
        #[arg(long, default_value = "0.0.0.0:443")]
        https_listen: String,
        /// The ManageSieve listener address (RFC 5804; "none" for no listener).
        #[arg(long, default_value = "0.0.0.0:4190")]
        managesieve_listen: String,
        /// The system user `serve` switches to after binding its ports; the data directory is
        /// given to that user (needs root).
        #[arg(long)]
        user: Option<String>,
    },
    /// Run every configured listener.
    ///
    /// One process serves SMTP (MX, port 25), submission (587 with STARTTLS, 465 with implicit
    /// TLS), IMAP (143, 993), POP3 (110, 995), ManageSieve (4190) and HTTPS (443: the MTA-STS
    /// policy), each where the config's `[[listener]]` entries (or `--listen`) put it; the outbound
    /// queue, DMARC/TLS-RPT reports and the hourly maintenance run inside it too.
    Serve {
        #[command(flatten)]
        run: serve::RunArgs,
    },
    /// Start a throw-away server on loopback with a demo domain and user.
    Demo {
        /// Keep data here instead of a temporary directory.
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        run: serve::RunArgs,
    },
    /// Hosted domains.
    Domain {
        #[command(subcommand)]
        action: admin::DomainCmd,
    },
    /// User accounts.
    User {
        #[command(subcommand)]
        action: admin::UserCmd,
    },
    /// Checks of the server from outside: whether its addresses are on DNS blocklists.
    Check {
        #[command(subcommand)]
        action: check::CheckCmd,
    },
    /// The spam classifier: learn from folders of ham and spam, and measure its accuracy.
    Spam {
        #[command(subcommand)]
        action: spam::SpamCmd,
    },
    /// Users' Sieve scripts: store, check, activate.
    Sieve {
        #[command(subcommand)]
        action: sieve::SieveCmd,
    },
    /// Forward a user's mail to another address (a Sieve script the command writes).
    Forward {
        #[command(subcommand)]
        action: sieve::ForwardCmd,
    },
    /// A user's vacation reply (a Sieve script the command writes).
    Vacation {
        #[command(subcommand)]
        action: sieve::VacationCmd,
    },
    /// DNS: the records a domain needs, and a check of what is published.
    Dns {
        #[command(subcommand)]
        action: dns::DnsCmd,
    },
    /// DMARC aggregate reports: send ours now, sum up those received.
    Dmarc {
        #[command(subcommand)]
        action: admin::DmarcCmd,
    },
    /// SMTP TLS reports (RFC 8460): send ours now, sum up those received.
    Tlsrpt {
        #[command(subcommand)]
        action: admin::TlsRptCmd,
    },
    /// DKIM signing keys: list, rotate.
    Dkim {
        #[command(subcommand)]
        action: admin::DkimCmd,
    },
    /// The outbound queue: mail waiting to go to other domains.
    Queue {
        #[command(subcommand)]
        action: admin::QueueCmd,
    },
    /// Aliases.
    Alias {
        #[command(subcommand)]
        action: admin::AliasCmd,
    },
    /// Banned addresses and networks (brute-force defence): list, add, remove.
    Ban {
        #[command(subcommand)]
        action: admin::BanCmd,
    },
    /// Shared mailboxes: who may use a user's mailboxes (IMAP ACL, RFC 4314).
    Acl {
        #[command(subcommand)]
        action: admin::AclCmd,
    },
    /// Deliver a message read from standard input to local recipients.
    Deliver {
        /// A recipient (repeatable).
        #[arg(long, required = true)]
        to: Vec<String>,
        /// The envelope sender (Return-Path); empty for the null sender.
        #[arg(long, default_value = "")]
        from: String,
    },
    /// The delivery log.
    Log {
        #[command(subcommand)]
        action: admin::LogCmd,
    },
}

/// jemalloc (with its background purging thread) instead of glibc's malloc: argon2 takes
/// 19 MiB per password check, and in a login burst glibc kept those blocks in its per-thread
/// arenas for good (its mmap threshold rises to the largest block freed), so 500
/// simultaneous logins left the process 185 MiB bigger; jemalloc returns them to the system
/// within seconds (bench/login_burst.sh). It is the process's `malloc` too (SQLite's page
/// caches went to glibc arenas per blocking thread otherwise), without per-thread caches
/// (`.cargo/config.toml`); `MALLOC_CONF=...` tunes it at run time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    if let Err(e) = run() {
        eprintln!("mailkeep: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let matches = Cli::command().get_matches();
    // `demo` refuses a --config typed on its command line but ignores MAILKEEP_CONFIG.
    let typed_config =
        matches.value_source("config") == Some(clap::parser::ValueSource::CommandLine);
    let cli = Cli::from_arg_matches(&matches)?;
    let config = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let config = config.as_path();
    match cli.command {
        Command::Init {
            hostname,
            domain,
            data,
            smtp_listen,
            submission_listen,
            submissions_listen,
            imap_listen,
            imaps_listen,
            pop3_listen,
            pop3s_listen,
            https_listen,
            managesieve_listen,
            user,
        } => init::run(init::InitOptions {
            hostname,
            domain,
            data,
            config: cli.config,
            listeners: [
                ("smtp", smtp_listen),
                ("submission", submission_listen),
                ("submissions", submissions_listen),
                ("imap", imap_listen),
                ("imaps", imaps_listen),
                ("pop3", pop3_listen),
                ("pop3s", pop3s_listen),
                ("https", https_listen),
                ("managesieve", managesieve_listen),
            ]
            .into_iter()
            .filter(|(_, a)| a != "none")
            .map(|(p, a)| (p.to_string(), a))
            .collect(),
            user,
        }),
        Command::Serve { run } => serve::serve(config, run),
        Command::Demo { data, run } => {
            if typed_config {
                anyhow::bail!(
                    "--config: demo writes its own config (in --data or a temporary \
                     directory); --config is for `serve` and the admin commands"
                );
            }
            serve::demo(data, run)
        }
        Command::Domain { action } => admin::domain(config, action),
        Command::User { action } => admin::user(config, action),
        Command::Alias { action } => admin::alias(config, action),
        Command::Queue { action } => admin::queue(config, action),
        Command::Dkim { action } => admin::dkim(config, action),
        Command::Dns { action } => dns::dns(config, action),
        Command::Check { action } => check::check(config, action),
        Command::Spam { action } => spam::spam(config, action),
        Command::Sieve { action } => sieve::sieve(config, action),
        Command::Forward { action } => sieve::forward(config, action),
        Command::Vacation { action } => sieve::vacation(config, action),
        Command::Dmarc { action } => admin::dmarc(config, action),
        Command::Tlsrpt { action } => admin::tlsrpt(config, action),
        Command::Acl { action } => admin::acl(config, action),
        Command::Ban { action } => admin::ban(config, action),
        Command::Deliver { to, from } => admin::deliver(config, to, from),
        Command::Log { action } => admin::log(config, action),
    }
}
