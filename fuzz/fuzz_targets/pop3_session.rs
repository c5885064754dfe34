//! A whole POP3 session fed arbitrary client bytes, against a real store in a temp dir. When
//! the first byte is odd the input is prefixed with a valid USER/PASS.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mailkeep_pop3::Pop3Server;
use mailkeep_store::SharedStore;
use mailkeep_types::{Address, Domain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    server: Arc<Pop3Server>,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore =
            Arc::new(mailkeep_store_sqlite::SqliteStore::open(dir.path()).unwrap());
        let server = rt.block_on(async {
            store.domain_add(&Domain::parse("example.test").unwrap()).await.unwrap();
            let hash = mailkeep_store::password::hash_password("pw").unwrap();
            store
                .user_add(&Address::parse("alice@example.test").unwrap(), &hash, 0)
                .await
                .unwrap();
            let config = mailkeep_config::Config::parse(
                "hostname = \"mail.example.test\"\n[pop3]\nidle_timeout = 2\n[auth]\nfailure_delay = 0\nmax_failures = 100\n",
                std::path::Path::new("/fuzz/mailkeep.toml"),
            )
            .unwrap();
            let guard = Arc::new(mailkeep_auth::Guard::new(
                config.bans.clone(),
                &config.auth,
                mailkeep_net::bans::BanList::default(),
                store.clone(),
            ));
            Arc::new(Pop3Server {
                hostname: config.hostname.clone(),
                store: store.clone(),
                tls: None,
                guard,
                pop3: config.pop3.clone(),
                auth: config.auth.clone(),
                logins: Arc::new(mailkeep_store::directory::Authenticator::new(
                    1,
                    Duration::from_secs(60),
                )),
            })
        });
        World { rt, server, _dir: dir }
    })
}

fuzz_target!(|input: &[u8]| {
    let w = world();
    let mut data = Vec::new();
    if input.first().is_some_and(|b| b & 1 == 1) {
        data.extend_from_slice(b"USER alice@example.test\r\nPASS pw\r\n");
    }
    data.extend_from_slice(input.get(1..).unwrap_or_default());
    w.rt.block_on(async {
        let (mut client, server_side) = tokio::io::duplex(1 << 16);
        let (_trigger, shutdown) = mailkeep_net::shutdown_pair();
        let session = tokio::spawn(mailkeep_pop3::run_session(
            server_side,
            "127.0.0.1:4000".parse().unwrap(),
            w.server.clone(),
            shutdown,
            false,
        ));
        let _ = tokio::time::timeout(Duration::from_secs(5), client.write_all(&data)).await;
        let (mut r, mut wr) = tokio::io::split(client);
        let _ = wr.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut sink)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), session).await;
        assert!(sink.starts_with(b"+OK"), "greeting first");
    });
});
