//! Virus scanning with a real clamd (Debian's clamav-daemon), started by the test with a
//! signature database the test writes: the EICAR test file's MD5 signature (the public
//! databases cannot be downloaded here). An infected attachment is refused with 554 5.7.1 and
//! the virus name in the log; a clean message is delivered; with clamd gone, the
//! fail-closed policy answers 451 and the fail-open one delivers.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use base64::Engine;
use common::Server;

const CLAMD: &str = "/usr/sbin/clamd";
/// The EICAR anti-virus test file (harmless; every scanner reports it).
const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

struct Clamd {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// clamd on 127.0.0.1 with only the EICAR signature, once it answers.
fn start_clamd() -> Clamd {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    std::fs::create_dir(&db).expect("db dir");
    let md5 = {
        let out = Command::new("md5sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(EICAR.as_bytes())?;
                c.wait_with_output()
            })
            .expect("md5sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("digest")
            .to_string()
    };
    // A hash signature: MD5:size:name (ClamAV's .hdb format).
    std::fs::write(
        db.join("test.hdb"),
        format!("{md5}:{}:Eicar-Test-Signature\n", EICAR.len()),
    )
    .expect("signature");
    let port = common::outbound::free_port("127.0.0.1");
    let root = nix_is_root();
    let conf = format!(
        "Foreground yes\nDatabaseDirectory {}\nTCPSocket {port}\nTCPAddr 127.0.0.1\nLogFile {}\nPidFile {}\n{}",
        db.display(),
        dir.path().join("clamd.log").display(),
        dir.path().join("clamd.pid").display(),
        if root { "User root\n" } else { "" }
    );
    let conf_path = dir.path().join("clamd.conf");
    std::fs::write(&conf_path, conf).expect("clamd.conf");
    let child = Command::new(CLAMD)
        .arg("-c")
        .arg(&conf_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("clamd");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "clamd did not start: {}",
            std::fs::read_to_string(dir.path().join("clamd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Clamd {
        child,
        _dir: dir,
        port,
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A message with an attachment holding `payload`.
fn with_attachment(payload: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
    format!(
        "From: someone@remote.test\r\nTo: alice@example.test\r\nSubject: see attached\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain\r\n\r\nhere it is\r\n\
--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"tool.com\"\r\n\r\n{b64}\r\n--b1--\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infected_mail_is_refused_and_clean_mail_delivered() {
    if !Path::new(CLAMD).exists() {
        eprintln!("SKIPPED: {CLAMD} missing (apt-get install clamav-daemon; .ci/run does)");
        return;
    }
    let clamd = start_clamd();
    let mut server = Server::start(&format!("clamd = \"127.0.0.1:{}\"", clamd.port));

    let r = server
        .send_to_alice(&with_attachment(EICAR.as_bytes()))
        .await;
    assert!(r.starts_with("554 5.7.1"), "{r}");
    assert!(r.contains("Eicar-Test-Signature"), "{r}");
    let log = server.log_search_until(&["--kind", "smtp.antivirus", "--json"], "infected");
    assert!(log.contains("\"virus\":\"Eicar-Test-Signature"), "{log}");
    assert!(server.inbox("alice@example.test").await.is_empty());

    let r = server
        .send_to_alice(&with_attachment(b"just a harmless program"))
        .await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(server.inbox("alice@example.test").await.len(), 1);

    // clamd gone: fail closed (the default) defers...
    drop(clamd);
    let r = server.send_to_alice(&with_attachment(b"another one")).await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
    // ...fail open delivers, and says so in the log.
    let text = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(
        &server.config,
        text.replace("on_error = \"tempfail\"", "on_error = \"accept\""),
    )
    .unwrap();
    server.restart();
    let r = server.send_to_alice(&with_attachment(b"and another")).await;
    assert!(r.starts_with("250"), "{r}");
    let log = server.log_search_until(&["--kind", "smtp.antivirus", "--json"], "fail_open\":true");
    assert!(log.contains("\"result\":\"error\""), "{log}");
}
