//! Brute-force defence end to end, driven by Python's imaplib and poplib from several
//! loopback addresses:
//! - 50 wrong passwords from one address get it banned (after `bans.after`); its
//!   connections are then refused on every listener, the ban is listed and logged, and it
//!   survives a restart;
//! - an allowlisted address is never banned, and the right password from another address
//!   still works;
//! - `mailkeep ban remove|add` reach the running server;
//! - failures for one account from many addresses lock it against new addresses only.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{code, Raw, Server, PASSWORD};

const ATTACKER: &str = "127.0.0.3";
const ADMIN: &str = "127.0.0.2";
const USER: &str = "127.0.0.4";

/// Logs in to IMAP from `source` `tries` times with `password` (reconnecting when the server
/// closes); one line per try: `ok`, `no` (wrong, with the BYE when the server closed the
/// session), `unavailable` (account locked) or `refused` (no session: banned, with the
/// greeting or error that said so).
fn imap_tries(
    server: &Server,
    source: &str,
    user: &str,
    password: &str,
    tries: u32,
) -> Vec<String> {
    let script = r#"
import imaplib, socket, sys
port, src, user, password, tries = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
class Src(imaplib.IMAP4):
    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), 10, source_address=(src, 0))
m = None
for _ in range(tries):
    if m is None:
        try:
            m = Src("127.0.0.1", port)
        except (imaplib.IMAP4.error, OSError) as e:
            print("refused", str(e).replace("\n", " "))
            continue
    try:
        m.login(user, password)
        print("ok")
        m.logout()
        m = None
    except imaplib.IMAP4.abort as e:
        # NO, then BYE: the server closed the session after this failure.
        print("no", str(e).replace("\n", " "))
        m = None
    except imaplib.IMAP4.error as e:
        print("unavailable" if "UNAVAILABLE" in str(e) else "no")
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &server.listeners["imap"].port().to_string(),
            source,
            user,
            password,
            &tries.to_string(),
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "imaplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// The greeting an SMTP client on `source` gets.
async fn smtp_greeting(server: &Server, source: &str) -> String {
    Raw::greeted_from(source.parse::<IpAddr>().unwrap(), server.smtp)
        .await
        .1
}

/// Waits (up to 10 s) until an SMTP client on `source` is greeted with `code`.
async fn wait_greeting(server: &Server, source: &str, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        last = smtp_greeting(server, source).await;
        if code(&last) == want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("greeting for {source} is {last:?}, not {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_ban_the_address_but_never_the_allowlisted_one() {
    let mut server = Server::start(&format!(
        "failure_delay = \"1ms\"\nafter = 20\nallow = [\"{ADMIN}\"]\naccount_ips = 0"
    ));

    // 1. The attacker: 50 wrong passwords; banned at the 20th failure, refused after.
    let tries = imap_tries(&server, ATTACKER, "alice@example.test", "wrong", 50);
    let failures = tries.iter().filter(|t| t.starts_with("no")).count();
    assert_eq!(failures, 20, "{tries:?}");
    assert!(tries[19].contains("your address is banned"), "{tries:?}");
    assert!(
        tries[20..]
            .iter()
            .all(|t| t.starts_with("refused") && t.contains("banned")),
        "{tries:?}"
    );
    // Every listener refuses it: SMTP with 554 at the greeting, POP3 with -ERR.
    let greeting = smtp_greeting(&server, ATTACKER).await;
    assert!(greeting.starts_with("554 5.7.1"), "{greeting}");
    assert!(greeting.contains("banned"), "{greeting}");
    // Listed with its reason, and logged.
    let (ok, list, err) = server.cli(&["ban", "list"], "");
    assert!(ok, "{err}");
    assert!(list.contains(ATTACKER), "{list}");
    assert!(list.contains("20 failed logins in 1 hour"), "{list}");
    assert!(list.contains("imap as alice@example.test"), "{list}");
    let log = server.log_search_until(&["--kind", "auth.ban", "--json"], ATTACKER);
    assert!(log.contains("\"outcome\":\"banned\""), "{log}");

    // 2. The allowlisted admin address: 50 wrong passwords, never banned; then the right one.
    let tries = imap_tries(&server, ADMIN, "alice@example.test", "wrong", 50);
    assert!(tries.iter().all(|t| t.starts_with("no")), "{tries:?}");
    let tries = imap_tries(&server, ADMIN, "alice@example.test", PASSWORD, 1);
    assert_eq!(tries, vec!["ok"]);
    // Another address with the right password: the account is not locked.
    let tries = imap_tries(&server, USER, "alice@example.test", PASSWORD, 1);
    assert_eq!(tries, vec!["ok"]);

    // 3. The ban survives a restart.
    server.restart();
    let greeting = smtp_greeting(&server, ATTACKER).await;
    assert!(
        greeting.starts_with("554 5.7.1"),
        "after a restart: {greeting}"
    );

    // 4. The admin lifts it, and bans another address by hand: the running server follows.
    let (ok, out, err) = server.cli(&["ban", "remove", ATTACKER], "");
    assert!(ok, "{err}");
    assert!(out.contains("lifted"), "{out}");
    let greeting = wait_greeting(&server, ATTACKER, "220").await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    let (ok, _, err) = server.cli(
        &[
            "ban",
            "add",
            "127.0.0.5",
            "--for",
            "1h",
            "--reason",
            "seen in our logs",
        ],
        "",
    );
    assert!(ok, "{err}");
    wait_greeting(&server, "127.0.0.5", "554").await;
    let (ok, list, _) = server.cli(&["ban", "list"], "");
    assert!(ok);
    assert!(
        list.contains("127.0.0.5") && list.contains("seen in our logs"),
        "{list}"
    );
    let (ok, _, err) = server.cli(&["ban", "add", "not-an-address"], "");
    assert!(!ok);
    assert!(err.contains("NETWORK"), "{err}");
    let (ok, _, err) = server.cli(&["ban", "remove", "127.0.0.9"], "");
    assert!(!ok);
    assert!(err.contains("is not banned"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_many_addresses_lock_the_account_for_new_addresses() {
    let server = Server::start(&format!(
        "failure_delay = \"1ms\"\nafter = 0\nallow = [\"{ADMIN}\"]\naccount_ips = 3"
    ));
    // bob logs in from his usual address first.
    assert_eq!(
        imap_tries(&server, USER, "bob@example.test", PASSWORD, 1),
        vec!["ok"]
    );
    // Three addresses guess: the account locks.
    for ip in ["127.0.0.31", "127.0.0.32", "127.0.0.33"] {
        assert_eq!(
            imap_tries(&server, ip, "bob@example.test", "guess", 1),
            vec!["no"]
        );
    }
    // A new address, even with the right password: refused as temporarily unavailable.
    assert_eq!(
        imap_tries(&server, "127.0.0.34", "bob@example.test", PASSWORD, 1),
        vec!["unavailable"]
    );
    // bob's usual address and the allowlisted one still get in; other accounts are free.
    assert_eq!(
        imap_tries(&server, USER, "bob@example.test", PASSWORD, 1),
        vec!["ok"]
    );
    assert_eq!(
        imap_tries(&server, ADMIN, "bob@example.test", PASSWORD, 1),
        vec!["ok"]
    );
    assert_eq!(
        imap_tries(&server, "127.0.0.34", "alice@example.test", PASSWORD, 1),
        vec!["ok"]
    );
    let log = server.log_search_until(&["--kind", "auth.lock", "--json"], "bob@example.test");
    assert!(log.contains("\"outcome\":\"locked\""), "{log}");
}
