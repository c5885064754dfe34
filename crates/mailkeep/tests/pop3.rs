//! POP3 against the real server: Python's poplib, and the attacks that apply to it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Server, DOMAIN, PASSWORD};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_poplib() {
    let ok = Command::new("python3").arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 must be installed in CI"
        );
        eprintln!("SKIPPED: python3 is not installed");
        return;
    }
    let server = Server::start("failure_delay = \"50ms\"");
    let port = |p: &str| server.listeners[p].port().to_string();
    let out = Command::new("python3")
        .arg(format!(
            "{}/../../tests/python/pop3_poplib.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(["127.0.0.1", &port("pop3"), &port("pop3s"), &port("smtp")])
        .arg(format!("alice@{DOMAIN}"))
        .arg(PASSWORD)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "poplib checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_stls_command_injection_is_discarded() {
    let server = Server::start("");
    let s = tokio::net::TcpStream::connect(server.listeners["pop3"])
        .await
        .expect("connect");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("+OK"), "{line}");
    // USER pipelined behind STLS must not be remembered inside TLS.
    r.get_mut()
        .write_all(format!("STLS\r\nUSER alice@{DOMAIN}\r\n").as_bytes())
        .await
        .unwrap();
    line.clear();
    r.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("+OK"), "{line}");
    let tls = common::tls_connect(r.into_inner()).await;
    let mut t = BufReader::new(tls);
    t.get_mut()
        .write_all(format!("PASS {PASSWORD}\r\n").as_bytes())
        .await
        .unwrap();
    line.clear();
    tokio::time::timeout(Duration::from_secs(10), t.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(
        line.starts_with("-ERR"),
        "the injected USER survived the handshake: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_long_line_flood_gets_one_error_not_one_per_piece() {
    let server = Server::start("");
    let s = tokio::net::TcpStream::connect(server.listeners["pop3"])
        .await
        .expect("connect");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("+OK"), "{line}");
    // A 200 KiB line (25 times the 8 KiB limit), then a command.
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 200 * 1024));
    long.extend_from_slice(b"\r\nCAPA\r\n");
    r.get_mut().write_all(&long).await.unwrap();
    let mut replies = Vec::new();
    loop {
        line.clear();
        tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(!line.is_empty(), "connection closed after {replies:?}");
        replies.push(line.clone());
        if line.starts_with("+OK") {
            break;
        }
    }
    assert_eq!(
        replies,
        vec![
            "-ERR line too long\r\n".to_string(),
            "+OK capability list follows\r\n".to_string()
        ]
    );
}
