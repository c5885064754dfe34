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
use clap::{Args, Parser, Subcommand};

/// A complete mail server you run yourself.
#[derive(Parser)]
#[command(name = "mailkeep", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// The config file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "MAILKEEP_CONFIG",
        default_value = "/etc/mailkeep/mailkeep.toml"
    )]
    config: PathBuf,
}

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
        /// Where to write the config (default: DATA/mailkeep.toml).
        #[arg(long)]
        config: Option<PathBuf>,
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
    Serve {
        #[command(flatten)]
        config: ConfigArg,
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
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: admin::DomainCmd,
    },
    /// User accounts.
    User {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: admin::UserCmd,
    },
    /// Checks of the server from outside: whether its addresses are on DNS blocklists.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: check::CheckCmd,
    },
    /// The spam classifier: learn from folders of ham and spam, and measure its accuracy.
    Spam {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: spam::SpamCmd,
    },
    /// Users' Sieve scripts: store, check, activate.
    Sieve {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: sieve::SieveCmd,
    },
    /// Forward a user's mail to another address (a Sieve script the command writes).
    Forward {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: sieve::ForwardCmd,
    },
    /// A user's vacation reply (a Sieve script the command writes).
    Vacation {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: sieve::VacationCmd,
    },
    /// DNS: the records a domain needs, and a check of what is published.
    Dns {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: dns::DnsCmd,
    },
    /// DMARC aggregate reports: send ours now, sum up those received.
    Dmarc {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: admin::DmarcCmd,
    },
    /// SMTP TLS reports (RFC 8460): send ours now, sum up those received.
    Tlsrpt {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: admin::TlsRptCmd,
    },
    /// DKIM signing keys: list, rotate.
    Dkim {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: admin::DkimCmd,
    },
    /// The outbound queue: mail waiting to go to other domains.
    Queue {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: admin::QueueCmd,
    },
    /// Aliases.
    Alias {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: admin::AliasCmd,
    },
    /// Banned addresses and networks (brute-force defence): list, add, remove.
    Ban {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: admin::BanCmd,
    },
    /// Shared mailboxes: who may use a user's mailboxes (IMAP ACL, RFC 4314).
    Acl {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: admin::AclCmd,
    },
    /// Deliver a message read from standard input to local recipients.
    Deliver {
        #[command(flatten)]
        config: ConfigArg,
        /// A recipient (repeatable).
        #[arg(long, required = true)]
        to: Vec<String>,
        /// The envelope sender (Return-Path); empty for the null sender.
        #[arg(long, default_value = "")]
        from: String,
    },
    /// The delivery log.
    Log {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: admin::LogCmd,
    },
}

/// jemalloc (with its background purging thread) instead of glibc's malloc: argon2 takes
/// 19 MiB per password check, and in a login burst glibc kept those blocks in its per-thread
/// arenas for good (its mmap threshold rises to the largest block freed), so 500
/// simultaneous logins left the process 185 MiB bigger; jemalloc returns them to the system
/// within seconds (bench/login_burst.sh).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    if let Err(e) = run() {
        eprintln!("mailkeep: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init {
            hostname,
            domain,
            data,
            config,
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
            config,
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
        Command::Serve { config, run } => serve::serve(&config.config, run),
        Command::Demo { data, run } => serve::demo(data, run),
        Command::Domain { config, action } => admin::domain(&config.config, action),
        Command::User { config, action } => admin::user(&config.config, action),
        Command::Alias { config, action } => admin::alias(&config.config, action),
        Command::Queue { config, action } => admin::queue(&config.config, action),
        Command::Dkim { config, action } => admin::dkim(&config.config, action),
        Command::Dns { config, action } => dns::dns(&config.config, action),
        Command::Check { config, action } => check::check(&config.config, action),
        Command::Spam { config, action } => spam::spam(&config.config, action),
        Command::Sieve { config, action } => sieve::sieve(&config.config, action),
        Command::Forward { config, action } => sieve::forward(&config.config, action),
        Command::Vacation { config, action } => sieve::vacation(&config.config, action),
        Command::Dmarc { config, action } => admin::dmarc(&config.config, action),
        Command::Tlsrpt { config, action } => admin::tlsrpt(&config.config, action),
        Command::Acl { config, action } => admin::acl(&config.config, action),
        Command::Ban { config, action } => admin::ban(&config.config, action),
        Command::Deliver { config, to, from } => admin::deliver(&config.config, to, from),
        Command::Log { config, action } => admin::log(&config.config, action),
    }
}
