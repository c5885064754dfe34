//! ManageSieve (RFC 5804) on its own port with Python's `managesieve` client (PyPI):
//! STARTTLS, SASL PLAIN, HAVESPACE, PUTSCRIPT (a script with an error is refused with its
//! line), LISTSCRIPTS, SETACTIVE, GETSCRIPT, DELETESCRIPT; RENAMESCRIPT and CHECKSCRIPT,
//! which that client lacks, over its raw command channel. The script it activates then
//! files mail that arrives over SMTP.

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
