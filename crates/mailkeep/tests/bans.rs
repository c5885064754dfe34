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

/// tests/python/ban_open_sessions.py against one listener: 50 connections opened first from
/// ATTACKER, then wrong passwords until the ban, then the right one on all still open.
fn attack_open_sessions(server: &Server, proto: &str, port: u16) -> serde_json::Value {
    let script = format!(
        "{}/../../tests/python/ban_open_sessions.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = std::process::Command::new("python3")
        .args([
            &script,
            proto,
            &port.to_string(),
            ATTACKER,
            "alice@example.test",
            "wrong",
            PASSWORD,
            "50",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{proto}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = server;
    serde_json::from_slice(&out.stdout).expect("the script's JSON")
}

fn assert_all_sessions_ended(proto: &str, r: &serde_json::Value, banned_greeting: &str) {
    // The failures counted over all 50 sessions: banned at the 20th (bans.after).
    assert_eq!(r["guesses"], 20, "{proto}: {r}");
    assert_eq!(r["banned_at"], 20, "{proto}: {r}");
    // The right password, tried at once on every session still open, never got in.
    let right = r["right"].as_array().unwrap();
    assert!(
        right.iter().all(|a| a != "ok"),
        "{proto}: a right guess after the ban got in: {r}"
    );
    // Every session was told and closed, within a second of the ban (3 s for a busy CI).
    assert_eq!(r["closed"], 50, "{proto}: {r}");
    assert!(r["close_s"].as_f64().unwrap() < 3.0, "{proto}: {r}");
    for line in r["last_lines"].as_array().unwrap() {
        let line = line.as_str().unwrap();
        assert!(line.contains("banned"), "{proto}: last line {line:?}: {r}");
    }
    let refused = r["refused"].as_str().unwrap();
    assert!(
        refused.starts_with(banned_greeting) && refused.contains("banned"),
        "{proto}: {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_ends_the_sessions_an_attacker_opened_before_it() {
    let config = |extra: &str| {
        format!(
            "auth.failure_delay = \"1ms\"\nbans.after = 20\nauth.max_unauthenticated_per_ip = 60\nbans.account_ips = 0\nsmtp.max_connections_per_ip = 100\n{extra}"
        )
    };
    for (proto, listener, greeting) in [
        ("imap", "imap", "* BYE"),
        ("pop3", "pop3", "-ERR"),
        ("smtp", "submission", "554"),
    ] {
        let server = Server::start(&config(""));
        let port = server.listeners[listener].port();
        let r = attack_open_sessions(&server, proto, port);
        assert_all_sessions_ended(proto, &r, greeting);
        // Another address is not touched.
        let tries = imap_tries(&server, USER, "alice@example.test", PASSWORD, 1);
        assert_eq!(tries, vec!["ok"], "{proto}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_added_by_the_admin_ends_open_sessions_on_every_listener() {
    let server = Server::start("auth.failure_delay = \"1ms\"");
    // An IMAP session logged in, a POP3 and a ManageSieve session waiting, an SMTP session
    // on the MX: all from one address.
    let src: IpAddr = "127.0.0.5".parse().unwrap();
    let script = r#"
import socket, sys, time, json
src, password = sys.argv[1], sys.argv[2]
ports = dict(p.split("=") for p in sys.argv[3:])
socks = {}
for name, port in ports.items():
    s = socket.create_connection(("127.0.0.1", int(port)), 10, source_address=(src, 0))
    socks[name] = [s, b""]
def line(name):
    s = socks[name]
    while b"\r\n" not in s[1]:
        c = s[0].recv(4096)
        if not c:
            return None
        s[1] += c
    l, s[1] = s[1].split(b"\r\n", 1)
    return l.decode()
for name in socks:
    while True:
        l = line(name)
        # ManageSieve's greeting ends with its OK line.
        if l is None or not (name == "managesieve" and not l.startswith("OK")):
            break
socks["imap"][0].sendall(b'a LOGIN "alice@example.test" "%s"\r\n' % password.encode())
while not line("imap").startswith("a OK"):
    pass
print("ready", flush=True)
sys.stdin.readline()
t0 = time.time()
last = {}
for name in socks:
    socks[name][0].settimeout(5)
    got = []
    while True:
        try:
            l = line(name)
        except OSError:
            l = None
        if l is None:
            break
        got.append(l)
    last[name] = got[-1] if got else ""
print(json.dumps({"last": last, "s": round(time.time() - t0, 3)}), flush=True)
"#;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &src.to_string(),
            PASSWORD,
            &format!("imap={}", server.listeners["imap"].port()),
            &format!("pop3={}", server.listeners["pop3"].port()),
            &format!("managesieve={}", server.listeners["managesieve"].port()),
            &format!("smtp={}", server.smtp.port()),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::{BufRead, Write};
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    out.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let (ok, _, err) = server.cli(
        &["ban", "add", "127.0.0.5", "--reason", "seen in our logs"],
        "",
    );
    assert!(ok, "{err}");
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut result = String::new();
    out.read_line(&mut result).unwrap();
    let _ = child.wait();
    let r: serde_json::Value = serde_json::from_str(&result).expect(&result);
    let last = &r["last"];
    assert!(last["imap"].as_str().unwrap().starts_with("* BYE"), "{r}");
    assert!(last["pop3"].as_str().unwrap().starts_with("-ERR"), "{r}");
    assert!(
        last["managesieve"].as_str().unwrap().starts_with("BYE"),
        "{r}"
    );
    assert!(
        last["smtp"].as_str().unwrap().starts_with("421 4.7.0"),
        "{r}"
    );
    for name in ["imap", "pop3", "managesieve", "smtp"] {
        assert!(
            last[name].as_str().unwrap().contains("banned"),
            "{name}: {r}"
        );
    }
    // The CLI's ban reaches the server within a second (the guard reads bans every second).
    assert!(r["s"].as_f64().unwrap() < 3.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_log_in_are_limited_per_address() {
    let server = Server::start("auth.max_unauthenticated_per_ip = 5");
    let script = r#"
import imaplib, socket, sys
port, src, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def conn():
    s = socket.create_connection(("127.0.0.1", port), 10, source_address=(src, 0))
    return s, s.recv(4096).decode()
held = [conn() for _ in range(5)]
print("sixth:", conn()[1].strip())
s, _ = held[0]
s.sendall(b'a LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode()))
print("login:", s.recv(4096).decode().strip())
print("after login:", conn()[1].strip())
print("other address:", socket.create_connection(("127.0.0.1", port), 10, source_address=("127.0.0.9", 0)).recv(4096).decode().strip())
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &server.listeners["imap"].port().to_string(),
            ATTACKER,
            "alice@example.test",
            PASSWORD,
        ])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("sixth: * BYE") && lines[0].contains("not logged in"),
        "{text}"
    );
    assert!(lines[1].contains("a OK"), "{text}");
    assert!(lines[2].starts_with("after login: * OK"), "{text}");
    assert!(lines[3].starts_with("other address: * OK"), "{text}");
}
