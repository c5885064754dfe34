//! A whole IMAP session fed arbitrary client bytes, against a real store in a temp dir. When
//! the first byte is odd the input is prefixed with a valid login and SELECT, so the fuzzer
//! spends its time in the authenticated and selected states.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mailkeep_delivery::{Delivery, Incoming};
use mailkeep_imap::ImapServer;
use mailkeep_store::SharedStore;
use mailkeep_types::{Address, Domain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    server: Arc<ImapServer>,
    _dir: tempfile::TempDir,
}

const SEED_MESSAGES: &[&str] = &[
    "From: a@example.org\r\nTo: alice@example.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <1@x>\r\n\r\nplain body\r\n",
    "From: b@example.org\r\nSubject: Re: mixed\r\nIn-Reply-To: <1@x>\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\npart one\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwQ=\r\n--b--\r\n",
];

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore =
            Arc::new(mailkeep_store_sqlite::SqliteStore::open(dir.path()).unwrap());
        let server = rt.block_on(async {
            let d = Domain::parse("example.test").unwrap();
            store.domain_add(&d).await.unwrap();
            let hash = mailkeep_store::password::hash_password("pw").unwrap();
            let alice = Address::parse("alice@example.test").unwrap();
            store.user_add(&alice, &hash, 1 << 20).await.unwrap();
            // bob shares a mailbox with alice, so the shared namespace and ACL checks run.
            let bob = Address::parse("bob@example.test").unwrap();
            let bob_id = store.user_add(&bob, &hash, 1 << 20).await.unwrap();
            let team = store.mailbox_create(bob_id, "Team", None).await.unwrap();
            let rights = mailkeep_store::Rights::parse("lrswitk").unwrap();
            store
                .acl_set(team.id, "alice@example.test", mailkeep_store::AclChange::Replace(rights))
                .await
                .unwrap();
            let delivery = Delivery::new(store.clone(), Some('+'));
            let target = match delivery.resolve(&alice).await.unwrap() {
                mailkeep_store::directory::Resolution::Targets { local, .. } => local,
                other => panic!("{other:?}"),
            };
            for m in SEED_MESSAGES {
                delivery
                    .deliver(Incoming {
                        data: m.as_bytes().to_vec(),
                        return_path: "a@example.org".into(),
                        recipients: target.clone(),
                        queue_id: "fuzz".into(),
                        session: "fuzz".into(),
                        client_ip: None,
                        mailbox: mailkeep_types::MailboxRole::Inbox,
                        placements: Default::default(),
                        virus_clean: false,
                        refusable: true,
                        onward: Default::default(),
                        dsn: Default::default(),
                    })
                    .await
                    .unwrap();
            }
            let config = mailkeep_config::Config::parse(
                "hostname = \"mail.example.test\"\n[imap]\nmax_literal = \"64K\"\nmax_line = \"4K\"\n\
                 idle_timeout = 2\n[auth]\nfailure_delay = 0\nmax_failures = 100\n",
                std::path::Path::new("/fuzz/mailkeep.toml"),
            )
            .unwrap();
            let guard = Arc::new(mailkeep_auth::Guard::new(
                config.bans.clone(),
                &config.auth,
                mailkeep_net::bans::BanList::default(),
                store.clone(),
            ));
            Arc::new(ImapServer {
                hostname: config.hostname.clone(),
                store: store.clone(),
                tls: None,
                guard,
                imap: config.imap.clone(),
                auth: config.auth.clone(),
                logins: Arc::new(mailkeep_store::directory::Authenticator::new(
                    1,
                    Duration::from_secs(60),
                )),
                snapshots: Arc::new(mailkeep_imap::Snapshots::default()),
            })
        });
        World { rt, server, _dir: dir }
    })
}

fuzz_target!(|input: &[u8]| {
    let w = world();
    let mut data = Vec::new();
    if input.first().is_some_and(|b| b & 1 == 1) {
        data.extend_from_slice(b"a LOGIN alice@example.test pw\r\nb SELECT INBOX\r\n");
    }
    data.extend_from_slice(input.get(1..).unwrap_or_default());
    w.rt.block_on(async {
        let (mut client, server_side) = tokio::io::duplex(1 << 16);
        let (_trigger, shutdown) = mailkeep_net::shutdown_pair();
        let session = tokio::spawn(mailkeep_imap::run_session(
            server_side,
            "127.0.0.1:4000".parse().unwrap(),
            w.server.clone(),
            shutdown,
            false,
        ));
        let writer = async {
            let _ = client.write_all(&data).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        let (mut r, mut wr) = tokio::io::split(client);
        let _ = wr.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut sink)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), session).await;
        assert!(sink.starts_with(b"* OK"), "greeting first");
    });
});
