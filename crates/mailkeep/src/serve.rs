//! `serve` and `demo`: wiring the store, delivery and listeners together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use mailkeep_auth::Guard;
use mailkeep_config::{parse_listen_arg, Config, Listener, Protocol};
use mailkeep_delivery::{now_micros, Delivery};
use mailkeep_imap::{ImapServer, Snapshots};
use mailkeep_net::{load_tls, shutdown_pair, ConnLimiter, ReverseDns};
use mailkeep_pop3::Pop3Server;
use mailkeep_queue::Outbound;
use mailkeep_smtp::{SmtpServer, Submission};
use mailkeep_store::directory::Authenticator;
use mailkeep_store::{SharedStore, StoreError};
use mailkeep_store_sqlite::SqliteStore;
use mailkeep_types::{Address, Domain};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// Options shared by `serve` and `demo`.
#[derive(Args, Clone, Default)]
pub struct RunArgs {
    /// Listen on PROTO=ADDR instead of the configured listeners (repeatable), e.g.
    /// smtp=127.0.0.1:2525. Protocols: smtp, submission, submissions, imap, imaps, pop3,
    /// pop3s, managesieve, https.
    #[arg(long, value_parser = parse_listen_arg)]
    pub listen: Vec<Listener>,
    /// Ask this DNS server (IP or IP:PORT) instead of the configured ones (repeatable).
    #[arg(long)]
    pub dns: Vec<String>,
    /// How long to wait for open sessions at shutdown.
    #[arg(long, default_value = "30")]
    pub grace_seconds: u64,
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILKEEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, never into a file, pipe or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn load_config(path: &Path, run: &RunArgs) -> Result<Config> {
    let mut config = Config::load(path)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    config.override_listeners(run.listen.clone());
    if !run.dns.is_empty() {
        config.dns.servers = run
            .dns
            .iter()
            .map(|s| {
                s.parse::<SocketAddr>()
                    .or_else(|_| {
                        s.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| anyhow::anyhow!("--dns {s}: expected IP or IP:PORT"))
            })
            .collect::<Result<_>>()?;
    }
    for l in &config.listeners {
        if !l.protocol.implemented() {
            bail!(
                "listener {}={}: this version of mailkeep does not serve {} yet",
                l.protocol.name(),
                l.address,
                l.protocol.name()
            );
        }
    }
    if config.listeners.is_empty() {
        bail!("no listeners: add a [[listener]] to the config or pass --listen smtp=ADDR");
    }
    Ok(config)
}

fn load_tls_config(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>> {
    Ok(match &config.tls {
        Some(t) => Some(load_tls(&t.cert, &t.key)?),
        None => None,
    })
}

/// How often the bans are read from the store again.
const BANS_REFRESH: Duration = Duration::from_secs(1);

fn smtp_server(
    config: &Config,
    delivery: Delivery,
    tls: Option<Arc<rustls::ServerConfig>>,
    outbound: &Arc<Outbound>,
    rates: &Arc<mailkeep_smtp::SenderRates>,
) -> Result<SmtpServer> {
    let rdns = ReverseDns::new(
        &config.dns.servers,
        config.dns.timeout,
        config.smtp.reverse_dns,
    )?;
    let v = &config.verify;
    let fw = &config.forwarding;
    // With every check off, nothing is verified (and no Authentication-Results added).
    let verifier = if [v.spf, v.dkim, v.arc, v.dmarc, v.iprev].contains(&true) {
        let verifier = mailkeep_verify::Verifier::new(
            &config.dns.servers,
            config.dns.timeout,
            &config.hostname,
            v.clone(),
        )?;
        // Read after giving up root, like the DKIM keys: the files belong to the server's user.
        Some(Arc::new(if fw.enabled && fw.arc_seal {
            verifier.with_sealers(mailkeep_verify::seal::ArcSealKeys::load(
                &config.data_dir.join("dkim"),
            )?)
        } else {
            verifier
        }))
    } else {
        None
    };
    Ok(SmtpServer {
        hostname: config.hostname.clone(),
        config: config.smtp.clone(),
        delivery,
        tls,
        rdns,
        primary_domain: config.domains.first().cloned(),
        submission: None,
        // The MX queues only what it forwards (and bounces to SRS addresses); it never relays
        // (RCPT needs a local domain).
        outbound: Some(outbound.clone()),
        verifier,
        forwarding: fw.clone(),
        limits: config.limits.clone(),
        watch: outbound.watch(),
        rates: rates.clone(),
        antivirus: match &config.antivirus.clamd {
            Some(addr) => Some(mailkeep_smtp::Antivirus {
                clamd: mailkeep_policy::antivirus::Clamd::new(
                    addr.parse()
                        .map_err(|e: String| anyhow::anyhow!("antivirus.clamd: {e}"))?,
                    config.antivirus.timeout,
                ),
                fail_open: config.antivirus.fail_open,
            }),
            None => None,
        },
        spam: config.spam.clone(),
        greylist: config.greylist.clone(),
        dnsbl: if config.dnsbl.inbound.is_empty()
            && config.dnsbl.rhsbl.is_empty()
            && config.dnsbl.uribl.is_empty()
        {
            None
        } else {
            let names = |l: &[mailkeep_types::Domain]| l.iter().map(|z| z.to_string()).collect();
            Some(mailkeep_smtp::Dnsbl {
                resolver: mailkeep_net::resolver(&config.dns.servers, config.dns.timeout)?,
                zones: names(&config.dnsbl.inbound),
                junk: config.dnsbl.inbound_junk,
                rhsbl: names(&config.dnsbl.rhsbl),
                uribl: names(&config.dnsbl.uribl),
            })
        },
    })
}

/// What delivery needs of `[sieve]`.
pub(crate) fn sieve_settings(config: &Config) -> mailkeep_delivery::sieve::Settings {
    let s = &config.sieve;
    mailkeep_delivery::sieve::Settings {
        limits: mailkeep_delivery::sieve::Limits {
            max_script_size: s.max_script_size,
            max_instructions: s.max_instructions,
            max_redirects: s.max_redirects,
            max_scripts: s.max_scripts,
            ..Default::default()
        },
        global_dir: s.global_dir.clone(),
        before: s.before.clone(),
        after: s.after.clone(),
    }
}

/// Hands successful logins to compromised-account detection, off the login's task.
struct LoginAlarm(Arc<mailkeep_delivery::watch::Watch>);

impl mailkeep_auth::LoginWatcher for LoginAlarm {
    fn logged_in(&self, user: &mailkeep_store::User, ip: std::net::IpAddr, protocol: &str) {
        let watch = self.0.clone();
        let account = user.id;
        let session = format!("{protocol}-login");
        tokio::spawn(async move {
            watch
                .logged_in(account, ip, &session, now_micros() / 1_000_000)
                .await;
        });
    }
}

/// The SMTP server of the submission ports (587 STARTTLS, 465 implicit TLS): the MX's
/// settings plus AUTH with the shared password checker and login policy.
fn submission_server(
    config: &Config,
    delivery: Delivery,
    tls: Option<Arc<rustls::ServerConfig>>,
    logins: Arc<Authenticator>,
    guard: Arc<Guard>,
    outbound: Arc<Outbound>,
) -> Result<SmtpServer> {
    let mut s = smtp_server(config, delivery, tls, &outbound, &Arc::default())?;
    // [smtp] with the submission listeners' own connection limits and rates.
    s.config = config.submission.clone();
    s.submission = Some(Submission {
        logins,
        guard,
        auth: config.auth.clone(),
    });
    s.outbound = Some(outbound);
    // Submitted mail is authenticated by its login, not by SPF/DKIM/DMARC.
    s.verifier = None;
    Ok(s)
}

/// The HTTPS server (MTA-STS policies); None without a certificate (then no `https`
/// listener can start).
fn web_server(
    config: &Config,
    store: SharedStore,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Option<Arc<mailkeep_web::WebServer>> {
    Some(Arc::new(mailkeep_web::WebServer {
        hostname: config.hostname.clone(),
        tls: tls?,
        store,
        mta_sts: config.mta_sts.clone(),
    }))
}

/// The sender rewriting of forwarded mail, with its secret (`DATA/srs.secret`, made at the
/// first start), and whether new forwards are rewritten. With forwarding or SRS off, an
/// existing secret is still used to pass on bounces to addresses made before.
fn srs_of(config: &Config) -> Result<(Option<mailkeep_queue::srs::Srs>, bool)> {
    let fw = &config.forwarding;
    let path = config.data_dir.join("srs.secret");
    let days = (fw.srs_max_age.as_secs() / 86_400) as u32;
    if fw.enabled && fw.srs {
        return Ok((
            Some(mailkeep_queue::srs::Srs::load_or_create(&path, days)?),
            true,
        ));
    }
    if path.exists() {
        return Ok((
            Some(mailkeep_queue::srs::Srs::load_or_create(&path, days)?),
            false,
        ));
    }
    Ok((None, false))
}

fn imap_server(
    config: &Config,
    store: SharedStore,
    tls: Option<Arc<rustls::ServerConfig>>,
    logins: Arc<Authenticator>,
    guard: Arc<Guard>,
    snapshots: Arc<Snapshots>,
) -> ImapServer {
    ImapServer {
        hostname: config.hostname.clone(),
        store,
        tls,
        imap: config.imap.clone(),
        auth: config.auth.clone(),
        logins,
        guard,
        snapshots,
    }
}

fn pop3_server(
    config: &Config,
    store: SharedStore,
    tls: Option<Arc<rustls::ServerConfig>>,
    logins: Arc<Authenticator>,
    guard: Arc<Guard>,
) -> Pop3Server {
    Pop3Server {
        hostname: config.hostname.clone(),
        store,
        tls,
        pop3: config.pop3.clone(),
        auth: config.auth.clone(),
        logins,
        guard,
    }
}

/// The ManageSieve server (RFC 5804, port 4190).
fn sieve_server(
    config: &Config,
    store: SharedStore,
    tls: Option<Arc<rustls::ServerConfig>>,
    logins: Arc<Authenticator>,
    guard: Arc<Guard>,
) -> mailkeep_managesieve::SieveServer {
    mailkeep_managesieve::SieveServer {
        hostname: config.hostname.to_string(),
        store,
        tls,
        auth: config.auth.clone(),
        logins,
        guard,
        limits: sieve_settings(config).limits,
    }
}

pub fn open_store(config: &Config) -> Result<SharedStore> {
    let store = SqliteStore::open(&config.store.path)
        .with_context(|| format!("open store {}", config.store.path.display()))?;
    Ok(Arc::new(store))
}

pub fn serve(path: &Path, run: RunArgs) -> Result<()> {
    init_tracing();
    let config = load_config(path, &run)?;
    let rt = server_runtime()?;
    rt.block_on(serve_config(config, run, Some(path.to_path_buf()), None))
}

/// The server's runtime. Blocking-pool threads (store reads, blob files) retire after 2 s
/// idle instead of tokio's 10 s: the pool wakes its idle threads in turn, so with the
/// once-a-second ban and queue polls a 10 s keep-alive kept every thread a login burst had
/// started alive for good, each with its stack and its allocator cache (4 MB after 500
/// logins; bench/login_burst.sh).
fn server_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(Duration::from_secs(2))
        .build()?)
}

/// Called once every listener is bound, with the addresses.
type OnReady = Box<dyn FnOnce(&[(Protocol, SocketAddr)]) + Send>;

async fn serve_config(
    config: Config,
    run: RunArgs,
    path: Option<PathBuf>,
    on_ready: Option<OnReady>,
) -> Result<()> {
    // Bind everything first: a port that cannot be bound stops the start, nothing half-runs.
    let mut bound = Vec::new();
    for l in &config.listeners {
        let listener = TcpListener::bind(l.address).await.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    ": port {} is taken by another program; choose another with --listen \
                     {}=ADDR:PORT (--listen replaces the configured listeners: give one for \
                     each protocol to serve)",
                    l.address.port(),
                    l.protocol.name()
                )
            } else {
                String::new()
            };
            anyhow::anyhow!("listen {}={}: {e}{hint}", l.protocol.name(), l.address)
        })?;
        let local = listener.local_addr()?;
        bound.push((l.protocol, local, listener));
    }
    // The private key is read while we may still be root; then root is given up for good.
    let tls = load_tls_config(&config)?;
    crate::privileges::drop_to(config.user.as_deref())?;

    let store = open_store(&config)?;
    for d in &config.domains {
        match store.domain_add(d).await {
            Ok(()) | Err(StoreError::Exists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let delivery = Delivery::new(store.clone(), config.directory.plus_separator);
    delivery.set_hostname(config.hostname.to_string());
    delivery.set_sieve(sieve_settings(&config));
    for l in &config.listeners {
        if matches!(
            l.protocol,
            Protocol::Imaps | Protocol::Pop3s | Protocol::Submissions | Protocol::Https
        ) && tls.is_none()
        {
            bail!(
                "listener {}={}: implicit TLS needs [tls] cert and key",
                l.protocol.name(),
                l.address
            );
        }
    }
    // One password checker for every listener: argon2 runs bounded by the cores, and
    // successful logins are remembered for 10 minutes.
    let parallel = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let logins = Arc::new(Authenticator::new(parallel, Duration::from_secs(600)));
    // Bans: loaded from the store before the first connection, checked by every listener.
    let bans = mailkeep_net::bans::BanList::default();
    let guard = Arc::new(Guard::new(
        config.bans.clone(),
        &config.auth,
        bans.clone(),
        store.clone(),
    ));
    guard.expire().await.context("deleting ended bans")?;
    guard.refresh().await.context("reading the bans")?;
    let snapshots = Arc::new(Snapshots::default());
    let imap = Arc::new(imap_server(
        &config,
        store.clone(),
        tls.clone(),
        logins.clone(),
        guard.clone(),
        snapshots.clone(),
    ));
    let pop3 = Arc::new(pop3_server(
        &config,
        store.clone(),
        tls.clone(),
        logins.clone(),
        guard.clone(),
    ));
    let managesieve = Arc::new(sieve_server(
        &config,
        store.clone(),
        tls.clone(),
        logins.clone(),
        guard.clone(),
    ));
    let outbound = Arc::new(Outbound::new(
        store.clone(),
        delivery.clone(),
        mailkeep_net::resolver(&config.dns.servers, config.dns.timeout)?,
        mailkeep_queue::dnssec::SecureDns::new(&config.dns.servers, config.dns.timeout),
        config.hostname.clone(),
        config.queue.clone(),
        // Read after giving up root: the keys belong to the server's user.
        {
            let keys = mailkeep_queue::dkim::DkimKeys::load(&config.data_dir.join("dkim"))?;
            let domains: Vec<&str> = keys.domains().collect();
            tracing::info!(?domains, "DKIM keys loaded for outgoing mail");
            keys
        },
    )?);
    outbound.set_reports(config.reports.clone());
    // Sieve redirects to other domains leave through the queue.
    delivery.set_outbox(outbound.clone());
    // Compromised-account detection: told of sends (SMTP), bounces (the queue) and logins
    // (the guard).
    let watch = Arc::new(mailkeep_delivery::watch::Watch::new(
        delivery.clone(),
        config.limits.clone(),
        config.hostname.clone(),
        config.domains.first().map(|d| d.to_string()),
    ));
    outbound.set_watch(watch.clone());
    guard.set_watcher(Arc::new(LoginAlarm(watch.clone())));
    let (srs, rewrite) = srs_of(&config)?;
    outbound.set_srs(srs, rewrite);
    let submission = Arc::new(submission_server(
        &config,
        delivery.clone(),
        tls.clone(),
        logins.clone(),
        guard.clone(),
        outbound.clone(),
    )?);
    let tls_for_web = tls.clone();
    let rates = Arc::new(mailkeep_smtp::SenderRates::default());
    let server = Arc::new(smtp_server(
        &config,
        delivery.clone(),
        tls,
        &outbound,
        &rates,
    )?);
    let (trigger, shutdown) = shutdown_pair();
    let limiter = ConnLimiter::new(
        config.smtp.max_connections,
        config.smtp.max_connections_per_ip,
    )
    .with_bans(bans.clone());

    let addrs: Vec<(Protocol, SocketAddr)> = bound.iter().map(|(p, a, _)| (*p, *a)).collect();
    for (p, a) in &addrs {
        // Tests and scripts read this line to find ports chosen with :0.
        println!("mailkeep: {} listening on {a}", p.name());
    }
    println!("mailkeep: ready");
    if let Some(f) = on_ready {
        f(&addrs);
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let (server_tx, _) = tokio::sync::watch::channel(server.clone());
    let (submission_tx, _) = tokio::sync::watch::channel(submission);
    let (imap_tx, _) = tokio::sync::watch::channel(imap);
    let (pop3_tx, _) = tokio::sync::watch::channel(pop3);
    let (sieve_tx, _) = tokio::sync::watch::channel(managesieve);
    // ManageSieve sessions are few and short: small limits of their own.
    let unauthenticated = config.auth.max_unauthenticated_per_ip;
    let sieve_limiter = ConnLimiter::new(1000, 20)
        .with_bans(bans.clone())
        .with_unauthenticated_limit(unauthenticated);
    let web_tx =
        web_server(&config, store.clone(), tls_for_web).map(|w| tokio::sync::watch::channel(w).0);
    // The web answers few, short requests: its own small limits.
    let web_limiter = ConnLimiter::new(256, 16).with_bans(bans.clone());
    let imap_limiter = ConnLimiter::new(
        config.imap.max_connections,
        config.imap.max_connections_per_ip,
    )
    .with_bans(bans.clone())
    .with_unauthenticated_limit(unauthenticated);
    // Each kind of listener counts its own connections (`[submission]`, `[pop3]`).
    let submission_limiter = ConnLimiter::new(
        config.submission.max_connections,
        config.submission.max_connections_per_ip,
    )
    .with_bans(bans.clone())
    .with_unauthenticated_limit(unauthenticated);
    let pop3_limiter = ConnLimiter::new(
        config.pop3.max_connections,
        config.pop3.max_connections_per_ip,
    )
    .with_bans(bans.clone())
    .with_unauthenticated_limit(unauthenticated);
    let grace = Duration::from_secs(run.grace_seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for (protocol, _, listener) in bound {
        match protocol {
            Protocol::Smtp => {
                let rx = server_tx.subscribe();
                tasks.spawn(mailkeep_smtp::serve_reloadable(
                    listener,
                    rx,
                    limiter.clone(),
                    shutdown.clone(),
                    grace,
                    false,
                ));
            }
            Protocol::Submission | Protocol::Submissions => {
                tasks.spawn(mailkeep_smtp::serve_reloadable(
                    listener,
                    submission_tx.subscribe(),
                    submission_limiter.clone(),
                    shutdown.clone(),
                    grace,
                    protocol == Protocol::Submissions,
                ));
            }
            Protocol::Imap | Protocol::Imaps => {
                tasks.spawn(mailkeep_imap::serve(
                    listener,
                    imap_tx.subscribe(),
                    protocol == Protocol::Imaps,
                    imap_limiter.clone(),
                    shutdown.clone(),
                    grace,
                ));
            }
            Protocol::Pop3 | Protocol::Pop3s => {
                tasks.spawn(mailkeep_pop3::serve(
                    listener,
                    pop3_tx.subscribe(),
                    protocol == Protocol::Pop3s,
                    pop3_limiter.clone(),
                    shutdown.clone(),
                    grace,
                ));
            }
            Protocol::ManageSieve => {
                tasks.spawn(mailkeep_managesieve::serve(
                    listener,
                    sieve_tx.subscribe(),
                    sieve_limiter.clone(),
                    shutdown.clone(),
                    grace,
                ));
            }
            Protocol::Https => {
                let Some(web_tx) = &web_tx else {
                    bail!("listener https: needs [tls] cert and key");
                };
                tasks.spawn(mailkeep_web::serve(
                    listener,
                    web_tx.subscribe(),
                    web_limiter.clone(),
                    shutdown.clone(),
                    grace,
                ));
            }
            other => bail!("{} is not served by this version", other.name()),
        }
    }

    // The outbound queue sends until shutdown, then finishes the deliveries under way.
    tasks.spawn(outbound.clone().run(shutdown.clone()));

    // Bans added or lifted by `mailkeep ban` (and ended ones) reach the listeners within a
    // second, and end the open sessions of a newly banned address; ended bans are deleted
    // from the store hourly.
    let refresher = guard.clone();
    let mut bans_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let mut ticks: u32 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(BANS_REFRESH) => {}
                _ = bans_shutdown.wait() => return,
            }
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(3600) {
                if let Err(e) = refresher.expire().await {
                    tracing::warn!(error = %e, "deleting ended bans failed");
                }
            }
            if let Err(e) = refresher.refresh().await {
                tracing::warn!(error = %e, "reading the bans failed");
            }
        }
    });

    // Maintenance, hourly: delivery log retention, and blob files no message refers to any
    // more (removed users, deliveries interrupted by a crash) once they are a day old.
    // Their settings follow reloads.
    let (maintenance_tx, maintenance_rx) =
        tokio::sync::watch::channel((config.log.retention, config.greylist.clone()));
    let log_store = store.clone();
    let mut log_shutdown = shutdown.clone();
    tasks.spawn(async move {
        loop {
            let (retention, grey) = maintenance_rx.borrow().clone();
            let cutoff = now_micros() - retention.as_micros() as i64;
            match log_store.log_expire(cutoff).await {
                Ok(n) if n > 0 => tracing::info!(events = n, "delivery log expired old events"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "delivery log expiry failed"),
            }
            match log_store.gc_blobs(Duration::from_secs(86400)).await {
                Ok(n) if n > 0 => tracing::info!(blobs = n, "removed unreferenced blobs"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "blob garbage collection failed"),
            }
            // The outbound limits look back a day at most.
            let two_days_ago = now_micros() / 1_000_000 - 2 * 86_400;
            if let Err(e) = log_store.usage_expire(two_days_ago).await {
                tracing::warn!(error = %e, "outbound usage expiry failed");
            }
            // Compromise detection looks back a day; login networks are remembered for a
            // year of disuse.
            if let Err(e) = log_store
                .signals_expire(two_days_ago, now_micros() / 1_000_000 - 365 * 86_400)
                .await
            {
                tracing::warn!(error = %e, "account signal expiry failed");
            }
            // Greylisting: passed records outlive their lifetime, waiting ones their window.
            let now = now_micros() / 1_000_000;
            let passed_before = now - grey.lifetime.as_secs() as i64;
            let waiting_before = now - (grey.delay + grey.retry_window).as_secs() as i64;
            match log_store.grey_expire(passed_before, waiting_before).await {
                Ok(n) if n > 0 => tracing::info!(records = n, "expired greylisting records"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "greylisting expiry failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                _ = log_shutdown.wait() => break,
            }
        }
    });

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tracing::info!(hostname = %config.hostname, "mailkeep started");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let Some(path) = &path else {
                    tracing::info!("SIGHUP: nothing to reload (no config file)");
                    continue;
                };
                // After the switch to `user`, the key must be readable by that user.
                match load_config(path, &run).and_then(|c| {
                    let tls = load_tls_config(&c)?;
                    let i = imap_server(
                        &c,
                        store.clone(),
                        tls.clone(),
                        logins.clone(),
                        guard.clone(),
                        snapshots.clone(),
                    );
                    let p = pop3_server(
                        &c,
                        store.clone(),
                        tls.clone(),
                        logins.clone(),
                        guard.clone(),
                    );
                    let _ = sieve_tx.send(Arc::new(sieve_server(
                        &c,
                        store.clone(),
                        tls.clone(),
                        logins.clone(),
                        guard.clone(),
                    )));
                    let sub = submission_server(
                        &c,
                        delivery.clone(),
                        tls.clone(),
                        logins.clone(),
                        guard.clone(),
                        outbound.clone(),
                    )?;
                    guard.reconfigure(c.bans.clone(), &c.auth);
                    delivery.set_sieve(sieve_settings(&c));
                    watch.reconfigure(c.limits.clone());
                    let web = web_server(&c, store.clone(), tls.clone());
                    let s = smtp_server(&c, delivery.clone(), tls, &outbound, &rates)?;
                    let (srs, rewrite) = srs_of(&c)?;
                    outbound.set_srs(srs, rewrite);
                    Ok((c, s, sub, i, p, web))
                }) {
                    Ok((c, s, sub, i, p, web)) => {
                        let _ = submission_tx.send(Arc::new(sub));
                        match mailkeep_queue::dkim::DkimKeys::load(&c.data_dir.join("dkim")) {
                            Ok(keys) => {
                                let domains: Vec<&str> = keys.domains().collect();
                                tracing::info!(?domains, "SIGHUP: DKIM keys reloaded");
                                outbound.set_dkim(keys);
                            }
                            Err(e) => tracing::error!("SIGHUP: keeping the old DKIM keys: {e}"),
                        }
                        let _ = imap_tx.send(Arc::new(i));
                        let _ = pop3_tx.send(Arc::new(p));
                        if let (Some(tx), Some(w)) = (&web_tx, web) {
                            let _ = tx.send(w);
                        }
                        if c.listeners != config.listeners {
                            tracing::warn!("SIGHUP: listener changes take effect after a restart");
                        }
                        if c.store.path != config.store.path || c.user != config.user {
                            tracing::warn!("SIGHUP: store and user changes take effect after a restart");
                        }
                        for d in &c.domains {
                            match store.domain_add(d).await {
                                Ok(()) => tracing::info!(domain = %d, "SIGHUP: domain added"),
                                Err(StoreError::Exists(_)) => {}
                                Err(e) => tracing::error!(domain = %d, error = %e, "SIGHUP: adding domain failed"),
                            }
                        }
                        let _ = server_tx.send(Arc::new(s));
                        let _ = maintenance_tx.send((c.log.retention, c.greylist.clone()));
                        tracing::info!(file = %path.display(), "SIGHUP: configuration reloaded");
                    }
                    Err(e) => tracing::error!("SIGHUP: keeping the old configuration: {e:#}"),
                }
            }
        }
    }
    tracing::info!("shutting down: finishing open transactions");
    trigger.trigger();
    while tasks.join_next().await.is_some() {}
    // Sessions queue their log events without waiting; make sure they are all on disk.
    if let Err(e) = store.log_flush().await {
        tracing::error!(error = %e, "delivery log flush at shutdown failed");
    }
    tracing::info!("stopped");
    Ok(())
}

fn random_password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

pub fn demo(data: Option<PathBuf>, run: RunArgs) -> Result<()> {
    init_tracing();
    let (dir, _keep) = match data {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("mailkeep-demo-")
                .tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let domain = Domain::parse("example.test")?;
    let hostname = "mail.example.test";
    let config_path = dir.join("mailkeep.toml");
    if !config_path.exists() {
        std::fs::create_dir_all(&dir)?;
        crate::init::self_signed(&dir.join("tls"), hostname, &domain)?;
        let listeners = [
            ("smtp", "127.0.0.1:2525"),
            ("submission", "127.0.0.1:1587"),
            ("imap", "127.0.0.1:1143"),
            ("pop3", "127.0.0.1:1110"),
            ("https", "127.0.0.1:1443"),
            ("managesieve", "127.0.0.1:14190"),
        ]
        .map(|(p, a)| (p.to_string(), a.to_string()));
        let text = crate::init::config_text(hostname, &domain, &listeners)
            .replace("reverse_dns = true", "reverse_dns = false")
            // The demo's mail comes from loopback, where SPF and DMARC say nothing.
            .replace("\nspf = true ", "\nspf = false")
            .replace(
                "\ndmarc = true                 # RFC 7489",
                "\ndmarc = false                # RFC 7489",
            )
            .replace("\niprev = true ", "\niprev = false");
        std::fs::write(&config_path, text)?;
    }
    let config = load_config(&config_path, &run)?;
    let rt = server_runtime()?;
    rt.block_on(async {
        let store = open_store(&config)?;
        match store.domain_add(&domain).await {
            Ok(()) | Err(StoreError::Exists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let user = Address::parse("demo@example.test")?;
        let password = random_password();
        let hash = mailkeep_store::password::hash_password(&password).map_err(anyhow::Error::msg)?;
        match store.user_add(&user, &hash, 0).await {
            Ok(_) => {}
            Err(StoreError::Exists(_)) => store.user_set_password(&user, &hash).await?,
            Err(e) => return Err(e.into()),
        }
        let postmaster = Address::parse("postmaster@example.test")?;
        match store.alias_add(&postmaster, std::slice::from_ref(&user)).await {
            Ok(()) | Err(StoreError::Exists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        drop(store);
        let cfg_display = config_path.display().to_string();
        // The commands printed below name this very binary, wherever it was built.
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "mailkeep".into());
        let ready = Box::new(move |addrs: &[(Protocol, SocketAddr)]| {
            let smtp = addrs
                .iter()
                .find(|(p, _)| *p == Protocol::Smtp)
                .map(|(_, a)| a.to_string())
                .unwrap_or_default();
            let (host, port) = smtp.rsplit_once(':').unwrap_or((&smtp, "25"));
            let imap = addrs
                .iter()
                .find(|(p, _)| *p == Protocol::Imap)
                .map(|(_, a)| a.to_string());
            println!();
            println!("mailkeep demo is running (Ctrl-C stops it).");
            println!("  domain:   example.test");
            println!("  user:     demo@example.test");
            println!("  password: {password}");
            println!("  config:   {cfg_display}");
            println!();
            println!("Send it a message:");
            println!("  swaks --server {host} --port {port} --to demo@example.test --from you@example.org");
            if let Some(imap) = &imap {
                let (ihost, iport) = imap.rsplit_once(':').unwrap_or((imap, "143"));
                println!("Read it over IMAP ({imap}, plain login allowed on loopback):");
                println!("  python3 -c \"import imaplib; m=imaplib.IMAP4('{ihost}', {iport}); m.login('demo@example.test', '{password}'); m.select(); print(m.fetch('1:*', '(ENVELOPE)'))\"");
            }
            println!("Then see what happened:");
            println!("  {exe} log search --config {cfg_display} --recipient demo@example.test");
            println!();
        });
        serve_config(config, run, Some(config_path.clone()), Some(ready)).await
    })
}
