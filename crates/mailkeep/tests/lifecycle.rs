//! Signals: SIGTERM finishes what is in flight, SIGHUP reloads or keeps the old config.

mod common;

use std::time::Duration;

use common::{code, Raw, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_transaction_in_flight() {
    let mut server = Server::start("");
    let mut c = Raw::connect(server.smtp).await;
    c.envelope("s@remote.test", &["alice@example.test"]).await;
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(b"Subject: in flight\r\n\r\nfirst half\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.signal("TERM");
    // New connections are no longer accepted...
    let mut closed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if tokio::net::TcpStream::connect(server.smtp).await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed, "listener closed at SIGTERM");
    // ...but the message being sent is finished and stored.
    c.send(b"second half\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    // The next command gets 421: the server is going away.
    let r = c.cmd("MAIL FROM:<s@remote.test>").await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    assert!(server.wait_exit(Duration::from_secs(20)), "clean exit");
    let texts = server.inbox_texts("alice@example.test").await;
    assert_eq!(texts.len(), 1);
    assert!(texts[0].ends_with("first half\r\nsecond half\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_valid_config_and_keeps_old_on_error() {
    let server = Server::start("");
    let mut c = Raw::connect(server.smtp).await;
    let r = c.cmd("EHLO client.example").await;
    assert!(r.contains("SIZE 52428800"), "{r}");
    let text = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(
        &server.config,
        text.replace("max_message_size = \"50M\"", "max_message_size = \"1M\"")
            .replace(
                "domains = [\"example.test\"]",
                "domains = [\"example.test\", \"second.test\"]",
            ),
    )
    .unwrap();
    server.signal("HUP");
    let mut seen = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if server.log().contains("configuration reloaded") {
            seen = true;
            break;
        }
    }
    assert!(seen, "reload logged: {}", server.log());
    let mut c2 = Raw::connect(server.smtp).await;
    let r = c2.cmd("EHLO client.example").await;
    assert!(
        r.contains("SIZE 1048576"),
        "new sessions use the new config: {r}"
    );
    let (ok, domains, _) = server.cli(&["domain", "list"], "");
    assert!(
        ok && domains.contains("second.test"),
        "domains added on reload: {domains}"
    );
    // A broken config is refused and the old one stays.
    let text = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(
        &server.config,
        text.replace("max_recipients = 100", "max_recipients = -3"),
    )
    .unwrap();
    server.signal("HUP");
    let mut seen = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if server.log().contains("keeping the old configuration") {
            seen = true;
            break;
        }
    }
    assert!(seen, "{}", server.log());
    assert!(
        server.log().contains("smtp.max_recipients"),
        "the log names the key"
    );
    let mut c3 = Raw::connect(server.smtp).await;
    let r = c3.cmd("EHLO client.example").await;
    assert!(r.contains("SIZE 1048576"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_refuse_with_421() {
    let server = Server::start("max_connections_per_ip = 2");
    let _a = Raw::connect(server.smtp).await;
    let _b = Raw::connect(server.smtp).await;
    let s = tokio::net::TcpStream::connect(server.smtp).await.unwrap();
    let mut r = tokio::io::BufReader::new(s);
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(line.starts_with("421 4.7.0"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_time_out() {
    let server = Server::start("command_timeout = 1");
    let mut c = Raw::connect(server.smtp).await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(c.closed().await);
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok() // effective uid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_started_as_root_drops_to_the_configured_user() {
    if uid_of(std::process::id()) != Some(0) {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIPPED: not running as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args([
            "init",
            "--hostname",
            "mail.example.test",
            "--domain",
            "example.test",
        ])
        .args([
            "--smtp-listen",
            "127.0.0.1:0",
            "--submission-listen",
            "127.0.0.1:0",
            "--submissions-listen",
            "127.0.0.1:0",
            "--imap-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--imaps-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
            "--managesieve-listen",
            "127.0.0.1:0",
            "--user",
            "nobody",
            "--data",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.path().join("mailkeep.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\nuser = \"nobody\""), "{text}");
    std::fs::write(
        &config,
        text.replace("reverse_dns = true", "reverse_dns = false"),
    )
    .unwrap();
    let (ok, _, err) = common::cli(
        &config,
        &["user", "add", "alice@example.test"],
        common::PASSWORD,
    );
    assert!(ok, "{err}");
    // The CLI ran as root but switched to nobody before touching the store.
    for entry in std::fs::read_dir(dir.path().join("store")).unwrap() {
        use std::os::unix::fs::MetadataExt;
        let e = entry.unwrap();
        assert_ne!(
            e.metadata().unwrap().uid(),
            0,
            "{} belongs to root",
            e.path().display()
        );
    }
    let server = Server::boot(dir, config);
    let pid = server.child.as_ref().unwrap().id();
    let nobody = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .unwrap();
    let nobody: u32 = String::from_utf8_lossy(&nobody.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        uid_of(pid),
        Some(nobody),
        "serve runs as nobody: {}",
        server.log()
    );
    assert!(server.log().contains("dropped root privileges"));
    let mut c = Raw::connect(server.smtp).await;
    c.envelope("s@remote.test", &["alice@example.test"]).await;
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(b"Subject: as nobody\r\n\r\nx\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("250"), "{r}\n{}", server.log());
    assert_eq!(server.inbox("alice@example.test").await.len(), 1);
}

#[test]
fn unknown_run_as_user_is_refused_by_name() {
    let (_dir, config) = common::init_dir("user = \"no-such-user-here\"");
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-user-here") && err.contains("no such system user"),
        "{err}"
    );
}
