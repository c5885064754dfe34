//! ManageSieve (RFC 5804) on its own port with Python's `managesieve` client (PyPI):
//! STARTTLS, SASL PLAIN, HAVESPACE, PUTSCRIPT (a script with an error is refused with its
//! line), LISTSCRIPTS, SETACTIVE, GETSCRIPT, DELETESCRIPT; RENAMESCRIPT and CHECKSCRIPT,
//! which that client lacks, over its raw command channel. The script it activates then
//! files mail that arrives over SMTP. The same with `sieve-connect` (Debian's package), a
//! command-line client many admins use.

mod common;

use common::{code, Raw, Server, PASSWORD};
use mailkeep_types::MailboxRole;

const SESSION: &str = r#"
import managesieve, sys
from managesieve import sieve_name, sieve_string
port, password = int(sys.argv[1]), sys.argv[2]
# RFC 5804 commands this client does not know; its command channel sends them all the same.
managesieve.commands[b"CHECKSCRIPT"] = ("AUTH",)
managesieve.commands[b"RENAMESCRIPT"] = ("AUTH",)
m = managesieve.MANAGESIEVE("127.0.0.1", port)
print("tls offered", bool(m.supports_tls))
typ, caps = m.starttls(verify=False)
print("starttls", typ)
print("extensions", dict((c[0], c[1:]) for c in caps).get("SIEVE"))
print("login", m.login("", "alice@example.test", password))
print("havespace", m.havespace("rules", 100))
print("havespace big", m.havespace("rules", 10**9), m.response_code)
print("put bad", m.putscript("bad", "keep;\nfrobnicate;\n"), m.response_text)
rules = 'require ["fileinto", "mailbox"];\nif header :contains "Subject" "invoice" { fileinto :create "Invoices"; }\n'
print("put", m.putscript("rules", rules))
print("check", m._simple_command(b"CHECKSCRIPT", sieve_string("if true { keep; }")), m.response_text)
print("check bad", m._simple_command(b"CHECKSCRIPT", sieve_string("stop stop;")), m.response_text)
print("rename", m._simple_command(b"RENAMESCRIPT", sieve_name("rules"), sieve_name("main")))
print("setactive", m.setactive("main"))
print("list", m.listscripts())
typ, text = m.getscript("main")
print("get", typ, text == rules)
print("delete active", m.deletescript("main"), m.response_code)
print("delete missing", m.deletescript("nope"), m.response_code)
print("logout", m.logout())
"#;

fn client(server: &Server, password: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            SESSION,
            &server.listeners["managesieve"].port().to_string(),
            password,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "managesieve client: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_client_manages_its_scripts() {
    let server = Server::start("");
    let out = client(&server, PASSWORD);
    for want in [
        "tls offered True",
        "starttls OK",
        "login OK",
        "havespace OK",
        "havespace big NO QUOTA/MAXSIZE",
        "put OK",
        "check OK",
        "rename OK",
        "setactive OK",
        "list ('OK', [('main', True)])",
        "get OK True",
        "delete active NO ACTIVE",
        "delete missing NO NONEXISTENT",
        "logout OK",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
    // Errors name their line.
    let bad = out.lines().find(|l| l.starts_with("put bad")).unwrap_or("");
    assert!(bad.contains("NO") && bad.contains("at line 2"), "{bad}");
    let bad = out
        .lines()
        .find(|l| l.starts_with("check bad"))
        .unwrap_or("");
    assert!(bad.contains("NO") && bad.contains("line 1"), "{bad}");

    // The script it activated runs at delivery.
    let mut c = Raw::connect(server.smtp).await;
    c.envelope("billing@shop.test", &["alice@example.test"])
        .await;
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(b"From: billing@shop.test\r\nSubject: your invoice\r\n\r\nPay.\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts_with("250"));
    c.cmd("QUIT").await;
    assert!(server.inbox("alice@example.test").await.is_empty());
    let (ok, out, _) = server.cli(&["sieve", "list", "alice@example.test"], "");
    assert!(ok && out.contains("main\t(active)"), "{out}");
    let store = server.store();
    let u = store.user_get("alice@example.test").await.unwrap().unwrap();
    let boxes = store.mailboxes(u.id).await.unwrap();
    let invoices = boxes
        .iter()
        .find(|b| b.name == "Invoices")
        .expect("created");
    assert_eq!(store.messages(invoices.id).await.unwrap().len(), 1);
    let _ = MailboxRole::Inbox;

    // A wrong password is refused, and logged.
    let script = r#"
import managesieve, sys
m = managesieve.MANAGESIEVE("127.0.0.1", int(sys.argv[1]))
m.starttls(verify=False)
print("login", m.login("", "alice@example.test", "wrong"))
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &server.listeners["managesieve"].port().to_string(),
        ])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("login NO"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = server.log_search_until(&["--kind", "managesieve.login", "--json"], "rejected");
    assert!(log.contains("\"outcome\":\"accepted\""), "{log}");
}

/// Runs `sieve-connect` (Debian's package, installed by `.ci/run`) against the server as
/// alice: STARTTLS without certificate checks (the test certificate is self-signed), the
/// password on a pipe. Returns (success, stdout and stderr).
fn sieve_connect(server: &Server, args: &[&str]) -> (bool, String) {
    use std::io::Write;
    let port = server.listeners["managesieve"].port().to_string();
    let mut child = std::process::Command::new("sieve-connect")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--user",
            "alice@example.test",
            "--notlsverify",
            "--passwordfd",
            "0",
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sieve-connect (Debian package sieve-connect; .ci/run installs it)");
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .expect("password");
    }
    let out = child.wait_with_output().expect("sieve-connect");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sieve_connect_uploads_activates_and_checks_scripts() {
    let server = Server::start("sieve.max_scripts = 2");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("rules.sieve");
    let script = "require [\"fileinto\", \"mailbox\"];\n\
                  if header :contains \"Subject\" \"receipt\" { fileinto :create \"Receipts\"; }\n";
    std::fs::write(&good, script).unwrap();
    let bad = dir.path().join("bad.sieve");
    std::fs::write(&bad, "keep;\nfrobnicate;\n").unwrap();
    let good = good.to_str().unwrap();
    let bad = bad.to_str().unwrap();

    let (ok, out) = sieve_connect(
        &server,
        &["--upload", "--localsieve", good, "--remotesieve", "rules"],
    );
    assert!(ok, "upload: {out}");
    // A script with an error is refused, with its line.
    let (ok, out) = sieve_connect(
        &server,
        &["--upload", "--localsieve", bad, "--remotesieve", "bad"],
    );
    assert!(!ok && out.contains("at line 2"), "bad upload: {out}");
    let (ok, out) = sieve_connect(&server, &["--checkscript", "--localsieve", bad]);
    assert!(!ok && out.contains("at line 2"), "check: {out}");
    let (ok, out) = sieve_connect(&server, &["--checkscript", "--localsieve", good]);
    assert!(ok, "check: {out}");
    let (ok, out) = sieve_connect(&server, &["--activate", "--remotesieve", "rules"]);
    assert!(ok, "activate: {out}");
    let (ok, out) = sieve_connect(&server, &["--list"]);
    assert!(ok && out.contains("\"rules\" ACTIVE"), "list: {out}");
    assert!(!out.contains("bad"), "the bad script was not stored: {out}");
    let got = dir.path().join("got.sieve");
    let (ok, out) = sieve_connect(
        &server,
        &[
            "--download",
            "--remotesieve",
            "rules",
            "--localsieve",
            got.to_str().unwrap(),
        ],
    );
    assert!(ok, "download: {out}");
    assert_eq!(std::fs::read_to_string(&got).unwrap(), script);
    // Names are NFC (RFC 5804 1.6): a combining accent names the precomposed script.
    let (ok, out) = sieve_connect(
        &server,
        &[
            "--upload",
            "--localsieve",
            good,
            "--remotesieve",
            "Cafe\u{301}",
        ],
    );
    assert!(ok, "upload: {out}");
    let (ok, out) = sieve_connect(&server, &["--list"]);
    assert!(ok && out.contains("\"Caf\u{e9}\""), "list: {out}");
    // Two scripts are the allowance here: a third is refused, a replacement is not.
    let (ok, out) = sieve_connect(
        &server,
        &["--upload", "--localsieve", good, "--remotesieve", "third"],
    );
    assert!(!ok && out.contains("QUOTA/MAXSCRIPTS"), "third: {out}");
    let (ok, out) = sieve_connect(
        &server,
        &[
            "--upload",
            "--localsieve",
            good,
            "--remotesieve",
            "Caf\u{e9}",
        ],
    );
    assert!(ok, "replace: {out}");
    let (ok, out) = sieve_connect(&server, &["--delete", "--remotesieve", "Caf\u{e9}"]);
    assert!(ok, "delete: {out}");
    // The active script cannot be deleted; deactivated, it can.
    let (ok, out) = sieve_connect(&server, &["--delete", "--remotesieve", "rules"]);
    assert!(!ok && out.contains("ACTIVE"), "delete active: {out}");

    // The script it activated runs at delivery.
    let r = server
        .send_mail(
            "shop@store.test",
            &["alice@example.test"],
            "From: shop@store.test\r\nSubject: your receipt\r\n\r\nThanks.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let store = server.store();
    let u = store.user_get("alice@example.test").await.unwrap().unwrap();
    let boxes = store.mailboxes(u.id).await.unwrap();
    let receipts = boxes
        .iter()
        .find(|b| b.name == "Receipts")
        .expect("created by the script");
    assert_eq!(store.messages(receipts.id).await.unwrap().len(), 1);

    let (ok, out) = sieve_connect(&server, &["--deactivate"]);
    assert!(ok, "deactivate: {out}");
    let (ok, out) = sieve_connect(&server, &["--delete", "--remotesieve", "rules"]);
    assert!(ok, "delete: {out}");
    let (ok, out) = sieve_connect(&server, &["--list"]);
    assert!(ok && !out.contains("rules"), "list: {out}");
}
