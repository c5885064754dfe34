//! The command line: init, config errors, directory administration, deliver, log search.

mod common;

use std::process::Command;

use common::{cli, init_dir, BIN, PASSWORD};

#[test]
fn init_writes_config_keys_certificate_and_prints_dns_records() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "init",
            "--hostname",
            "mail.example.com",
            "--domain",
            "example.com",
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "example.com.\t3600\tIN\tMX\t10 mail.example.com.",
        "mail.example.com.\t3600\tIN\tA\t",
        "\"v=spf1 mx -all\"",
        "mk1e._domainkey.example.com.\t3600\tIN\tTXT\t\"v=DKIM1; k=ed25519; p=",
        "mk1r._domainkey.example.com.\t3600\tIN\tTXT\t\"v=DKIM1; k=rsa; p=",
        "_dmarc.example.com.\t3600\tIN\tTXT\t\"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.com\"",
        "PTR",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    let p = dir.path();
    for f in [
        "mailkeep.toml",
        "tls/cert.pem",
        "tls/key.pem",
        "dkim/example.com.mk1e.ed25519.pem",
        "dkim/example.com.mk1r.rsa.pem",
    ] {
        assert!(p.join(f).exists(), "{f} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.join("dkim/example.com.mk1r.rsa.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private keys are not readable by others");
    // The RSA record holds a 2048-bit key: its SubjectPublicKeyInfo is 294 bytes (392 base64).
    let rsa_line = stdout.lines().find(|l| l.contains("k=rsa")).unwrap();
    let b64: String = rsa_line
        .split("p=")
        .nth(1)
        .unwrap()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '/' || *c == '=')
        .collect();
    assert_eq!(b64.len(), 392, "{rsa_line}");
    // TXT strings over 255 octets are split (RFC 1035 3.3.14).
    assert!(rsa_line.matches('"').count() >= 4);
    // Running init again does not overwrite.
    let again = Command::new(BIN)
        .args([
            "init",
            "--hostname",
            "mail.example.com",
            "--domain",
            "example.com",
            "--data",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn config_errors_name_file_and_key_and_never_start() {
    let (dir, config) = init_dir("max_message_size = \"huge\"");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&config.display().to_string()), "{err}");
    assert!(err.contains("smtp.max_message_size"), "{err}");
    assert!(err.contains("25M"), "what was expected: {err}");
    drop(dir);
    let (_dir, config) = init_dir("max_mesage_size = 5");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_mesage_size"), "unknown key named: {err}");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "gopher=127.0.0.1:70", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown protocol"));
}

#[test]
fn directory_administration() {
    let (_dir, config) = init_dir("");
    let run = |args: &[&str], stdin: &str| cli(&config, args, stdin);
    // Passwords come from standard input, never from an argument.
    let (ok, _, err) = run(
        &["user", "add", "Carol@Example.Test", "--quota", "10M"],
        PASSWORD,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = run(&["user", "add", "carol@example.test"], PASSWORD);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = run(&["user", "add", "short@example.test"], "abc");
    assert!(!ok && err.contains("8 characters"), "{err}");
    let (ok, _, err) = run(&["user", "add", "x@not-hosted.test"], PASSWORD);
    assert!(!ok && err.contains("not hosted"), "{err}");
    let (ok, _, err) = run(&["user", "add", "bad address"], PASSWORD);
    assert!(!ok && err.contains("address"), "{err}");
    let (ok, out, _) = run(&["user", "list"], "");
    assert!(
        ok && out.contains("Carol@example.test") && out.contains("10.0M"),
        "{out}"
    );
    let (ok, _, err) = run(&["user", "quota", "carol@example.test", "lots"], "");
    assert!(!ok && err.contains("500M"), "{err}");
    let (ok, out, _) = run(&["user", "quota", "carol@example.test", "1G"], "");
    assert!(ok && out.contains("1.0G"), "{out}");
    let (ok, _, err) = run(
        &["user", "passwd", "carol@example.test"],
        "another good password",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = run(
        &["user", "passwd", "nobody@example.test"],
        "another good password",
    );
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = run(
        &[
            "alias",
            "add",
            "sales@example.test",
            "carol@example.test",
            "boss@partner.test",
        ],
        "",
    );
    assert!(ok, "{err}");
    let (ok, out, _) = run(&["alias", "list"], "");
    assert!(
        ok && out.contains("sales@example.test -> carol@example.test, boss@partner.test"),
        "{out}"
    );
    let (ok, _, err) = run(&["domain", "remove", "example.test"], "");
    assert!(!ok && err.contains("still has"), "{err}");
    let (ok, _, _) = run(&["alias", "remove", "sales@example.test"], "");
    assert!(ok);
    let (ok, _, err) = run(&["alias", "remove", "sales@example.test"], "");
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, _) = run(&["domain", "add", "Bücher.Test"], "");
    assert!(ok);
    let (ok, out, _) = run(&["domain", "list"], "");
    assert!(
        ok && out.contains("bücher.test") && out.contains("example.test"),
        "{out}"
    );
    let (ok, _, _) = run(&["user", "remove", "carol@example.test"], "");
    assert!(ok);
    let (ok, _, _) = run(&["domain", "remove", "bücher.test"], "");
    assert!(ok);
}

/// `mailkeep acl`: an admin shares a user's mailbox without the user's password; bad
/// arguments are refused naming the argument.
#[test]
fn acl_administration() {
    let (_dir, config) = init_dir("");
    let run = |args: &[&str]| cli(&config, args, "");
    assert!(cli(&config, &["user", "add", "owner@example.test"], PASSWORD).0);
    let (ok, out, err) = run(&[
        "acl",
        "set",
        "owner@example.test",
        "inbox",
        "Team@Example.Test",
        "lrs",
    ]);
    assert!(
        ok && out.contains("team@example.test now has \"lrs\""),
        "{out}{err}"
    );
    let (ok, out, _) = run(&[
        "acl",
        "set",
        "owner@example.test",
        "INBOX",
        "team@example.test",
        "+w",
    ]);
    assert!(ok && out.contains("\"lrsw\""), "{out}");
    // A leading '-' is a value here (negative rights), not an option.
    let (ok, out, err) = run(&["acl", "set", "owner@example.test", "INBOX", "-anyone", "-w"]);
    assert!(ok && out.contains("-anyone now has \"\""), "{out}{err}");
    let (ok, out, _) = run(&["acl", "set", "owner@example.test", "INBOX", "anyone", "l"]);
    assert!(ok, "{out}");
    let (ok, out, _) = run(&["acl", "list", "owner@example.test"]);
    assert!(
        ok && out.contains("INBOX\tanyone\tl") && out.contains("INBOX\tteam@example.test\tlrsw"),
        "{out}"
    );
    let (ok, _, err) = run(&["acl", "set", "owner@example.test", "INBOX", "anyone", "lrQ"]);
    assert!(
        !ok && err.contains("RIGHTS") && err.contains("upper-case"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "acl",
        "set",
        "owner@example.test",
        "INBOX",
        "not an address",
        "l",
    ]);
    assert!(!ok && err.contains("WHO"), "{err}");
    let (ok, _, err) = run(&["acl", "set", "owner@example.test", "Nope", "anyone", "l"]);
    assert!(!ok && err.contains("MAILBOX"), "{err}");
    let (ok, _, err) = run(&["acl", "set", "ghost@example.test", "INBOX", "anyone", "l"]);
    assert!(!ok && err.contains("OWNER"), "{err}");
    let (ok, _, err) = run(&[
        "acl",
        "set",
        "owner@example.test",
        "INBOX",
        "owner@example.test",
        "l",
    ]);
    assert!(!ok && err.contains("owner always"), "{err}");
    let (ok, _, _) = run(&["acl", "remove", "owner@example.test", "INBOX", "anyone"]);
    assert!(ok);
    let (ok, out, _) = run(&["acl", "list", "owner@example.test", "INBOX"]);
    assert!(
        ok && !out.contains("\tanyone\t") && out.contains("team@example.test"),
        "{out}"
    );
}

#[test]
fn deliver_command_and_log_search() {
    let (dir, config) = init_dir("");
    let run = |args: &[&str], stdin: &str| cli(&config, args, stdin);
    assert!(run(&["user", "add", "dave@example.test"], PASSWORD).0);
    let msg = "From: someone@remote.test\nSubject: via deliver\nMessage-ID: <deliver-1@remote.test>\n\nbody line\n";
    let (ok, out, err) = run(
        &[
            "deliver",
            "--to",
            "dave+inbox@example.test",
            "--from",
            "someone@remote.test",
        ],
        msg,
    );
    assert!(ok, "{err}");
    assert!(out.contains("dave@example.test: delivered, uid 1"), "{out}");
    let (ok, _, err) = run(&["deliver", "--to", "nobody@example.test"], msg);
    assert!(!ok && err.contains("no such user"), "{err}");
    let (ok, out, _) = run(
        &["log", "search", "--message-id", "<deliver-1@remote.test>"],
        "",
    );
    assert!(
        ok && out.contains("delivery.stored") && out.contains("delivered"),
        "{out}"
    );
    let (ok, out, _) = run(
        &["log", "search", "--recipient", "dave", "--since", "1h"],
        "",
    );
    assert!(ok && out.contains("deliver-1@remote.test"), "{out}");
    let (ok, out, _) = run(
        &[
            "log",
            "search",
            "--recipient",
            "dave",
            "--until",
            "2000-01-01T00:00:00Z",
        ],
        "",
    );
    assert!(ok && out.contains("no matching events"), "{out}");
    let (ok, _, err) = run(&["log", "search", "--since", "last tuesday"], "");
    assert!(!ok && err.contains("--since"), "{err}");
    // Stored with CRLF line endings like SMTP mail.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = mailkeep_store_sqlite::SqliteStore::open(&dir.path().join("store")).unwrap();
        use mailkeep_store::{DirectoryStore, MailStore};
        let u = store.user_get("dave@example.test").await.unwrap().unwrap();
        let inbox = store.mailboxes(u.id).await.unwrap()[0].id;
        let c = store.message_content(inbox, mailkeep_types::Uid(1)).await.unwrap().unwrap();
        let text = String::from_utf8(c).unwrap();
        assert!(text.starts_with("Return-Path: <someone@remote.test>\r\nDelivered-To: dave@example.test\r\nFrom: someone@remote.test\r\n"), "{text}");
    });
}

#[test]
fn demo_runs_a_working_server_and_prints_what_a_newcomer_needs() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "smtp=127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut port, mut password, mut config) = (None, None, None);
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(a) = line.trim().strip_prefix("mailkeep: smtp listening on ") {
            port = a.rsplit(':').next().map(|p| p.parse::<u16>().unwrap());
        }
        if let Some(p) = line.trim().strip_prefix("password: ") {
            password = Some(p.to_string());
        }
        if let Some(c) = line.trim().strip_prefix("config:") {
            config = Some(c.trim().to_string());
        }
        if line.contains("log search") {
            break;
        }
        line.clear();
    }
    let (port, password, config) = (port.unwrap(), password.unwrap(), config.unwrap());
    assert!(password.len() >= 12, "a real random password: {password}");
    // Send it a message the way the README says (a raw client here; swaks in smtp_clients).
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    s.write_all(b"EHLO newcomer.example\r\nMAIL FROM:<you@example.org>\r\nRCPT TO:<demo@example.test>\r\nDATA\r\n").unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains("354") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "{got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    s.write_all(
        b"Subject: first mail\r\nMessage-ID: <demo-1@example.org>\r\n\r\nhello\r\n.\r\nQUIT\r\n",
    )
    .unwrap();
    while !got.contains("221") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "{got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("250 2.0.0 OK: queued as"), "{got}");
    let mut found = String::new();
    for _ in 0..100 {
        let o = Command::new(BIN)
            .args([
                "log",
                "search",
                "--config",
                &config,
                "--recipient",
                "demo@example.test",
            ])
            .output()
            .unwrap();
        found = String::from_utf8_lossy(&o.stdout).into_owned();
        if found.contains("delivery.stored") && found.contains("smtp.close") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        found.contains("demo-1@example.org") && found.contains("delivered"),
        "{found}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exits cleanly on SIGTERM");
    // The temporary data directory goes away with it.
    assert!(
        !std::path::Path::new(&config).exists(),
        "{config} left behind"
    );
}

#[test]
fn user_and_alias_add_take_only_what_rcpt_accepts() {
    let (_dir, config) = init_dir("");
    // RFC 5321 4.1.2: a dot-string has no empty atom; RCPT refuses it with 501, so the CLI
    // must refuse to create it, naming the argument.
    let (ok, _, err) = cli(
        &config,
        &["user", "add", "a..b@example.test"],
        "pw-long-enough-1\n",
    );
    assert!(
        !ok && err.contains("address \"a..b@example.test\""),
        "{err}"
    );
    let (ok, _, err) = cli(
        &config,
        &["alias", "add", "x@example.test", "a..b@example.test"],
        "",
    );
    assert!(!ok && err.contains("target \"a..b@example.test\""), "{err}");
}

/// What a newcomer meets first: each error says what to do, once, and the output is clean.
#[test]
fn a_newcomers_first_errors_say_what_to_do() {
    // A missing config names the file and the three ways out, once.
    let out = Command::new(BIN)
        .args(["user", "list", "--config", "/nonexistent/mailkeep.toml"])
        .env_remove("MAILKEEP_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "/nonexistent/mailkeep.toml",
        "--config",
        "MAILKEEP_CONFIG",
        "mailkeep init",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    assert_eq!(
        err.matches("/nonexistent/mailkeep.toml").count(),
        1,
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    // --config before the subcommand works as well as after it.
    let (dir, config) = init_dir("");
    let c = config.to_str().unwrap();
    for args in [
        vec!["--config", c, "domain", "list"],
        vec!["domain", "--config", c, "list"],
        vec!["domain", "list", "--config", c],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("example.test"));
    }

    // The self-signed certificate names the host as its subject (what a client shows).
    let cert = dir.path().join("tls/cert.pem");
    let subject = Command::new("python3")
        .args([
            "-c",
            "import ssl,sys; print(ssl._ssl._test_decode_cert(sys.argv[1])['subject'])",
        ])
        .arg(&cert)
        .output()
        .unwrap();
    let subject = String::from_utf8_lossy(&subject.stdout);
    assert!(
        subject.contains("'commonName', 'mail.example.test'"),
        "{subject}"
    );

    // serve --help names every protocol it serves.
    let help = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for want in ["SMTP", "submission", "IMAP", "POP3", "ManageSieve", "HTTPS"] {
        assert!(help.contains(want), "serve --help lacks {want}: {help}");
    }

    // demo on a port another program holds names the port and the flag, and stops.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .args(["demo", "--listen", &format!("smtp=127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("port {port} is taken")), "{err}");
    assert!(err.contains("--listen smtp="), "{err}");
    // A fresh store is created without one log line per schema migration, and output that
    // is not a terminal carries no colour codes.
    assert!(!err.contains("migrat"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let server = common::Server::start("");
    // The start line may follow the listeners' "ready" by a moment.
    let mut log = server.log();
    for _ in 0..100 {
        if log.contains("mailkeep started") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        log = server.log();
    }
    assert!(log.contains("mailkeep started"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
}
