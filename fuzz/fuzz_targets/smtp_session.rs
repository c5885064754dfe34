//! A whole SMTP session fed arbitrary client bytes, against a real store in a temp dir.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mailkeep_delivery::Delivery;
use mailkeep_smtp::SmtpServer;
use mailkeep_store::SharedStore;
use mailkeep_types::{Address, Domain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    server: Arc<SmtpServer>,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(mailkeep_store_sqlite::SqliteStore::open(dir.path()).unwrap());
        let server = rt.block_on(async {
            let d = Domain::parse("example.test").unwrap();
            store.domain_add(&d).await.unwrap();
            store.user_add(&Address::parse("alice@example.test").unwrap(), "x", 1 << 20).await.unwrap();
            let mut config = mailkeep_config::Config::parse(
                "hostname = \"mail.example.test\"\n[smtp]\nmax_message_size = \"64K\"\ncommand_timeout = 1\ndata_timeout = 1\n",
                std::path::Path::new("/fuzz/mailkeep.toml"),
            )
            .unwrap();
            config.smtp.reverse_dns = false;
            Arc::new(SmtpServer {
                hostname: config.hostname.clone(),
                config: config.smtp.clone(),
                delivery: Delivery::new(store.clone(), Some('+')),
                tls: None,
                rdns: mailkeep_net::ReverseDns::new(&[], Duration::from_secs(1), false).unwrap(),
                primary_domain: Some(d),
                submission: None,
                outbound: None,
                verifier: None,
                forwarding: config.forwarding.clone(),
                limits: config.limits.clone(),
                watch: None,
                rates: Default::default(),
                antivirus: None,
                spam: config.spam.clone(),
                greylist: config.greylist.clone(),
                dnsbl: None,
            })
        });
        World { rt, server, _dir: dir }
    })
}

fuzz_target!(|input: &[u8]| {
    let w = world();
    w.rt.block_on(async {
        let (mut client, server_side) = tokio::io::duplex(1 << 16);
        let (_trigger, shutdown) = mailkeep_net::shutdown_pair();
        let session = tokio::spawn(mailkeep_smtp::run_session(
            server_side,
            "192.0.2.1:4000".parse().unwrap(),
            w.server.clone(),
            shutdown,
            None,
        ));
        let _ = client.write_all(input).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut sink)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), session).await;
        // Every reply line is a well-formed SMTP reply.
        for line in sink.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            assert!(
                line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit),
                "bad reply line"
            );
        }
    });
});
