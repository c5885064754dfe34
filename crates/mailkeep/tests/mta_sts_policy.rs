//! The MTA-STS policy (RFC 8461 3.3) served by the `https` listener, fetched with curl over
//! TLS with the server's own certificate as the trusted root and the policy host's name
//! (SNI and Host): our domain's host gets the policy as text/plain; another host, another
//! path or another method do not.

mod common;

use common::Server;

/// curl against the server's https listener as `host`: (HTTP status, content type, body).
fn curl(server: &Server, host: &str, extra: &[&str], path: &str) -> (String, String, String) {
    let port = server.listeners["https"].port();
    let cert = server.dir.path().join("tls/cert.pem");
    let out = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(&cert)
        .args(["--write-out", "\n%{http_code} %{content_type}"])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, status) = text.rsplit_once('\n').expect("status line");
    let (code, ctype) = status.split_once(' ').unwrap_or((status, ""));
    (code.to_string(), ctype.to_string(), body.to_string())
}

#[test]
fn the_policy_is_served_over_https_for_our_domains_only() {
    let server = Server::start("mode = \"enforce\"\nmax_age = \"14d\"");
    let (code, ctype, body) = curl(
        &server,
        "mta-sts.example.test",
        &[],
        "/.well-known/mta-sts.txt",
    );
    assert_eq!(code, "200");
    assert_eq!(ctype, "text/plain");
    assert_eq!(
        body,
        "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmax_age: 1209600\r\n"
    );
    // What `dns records` prints is what is served.
    let (ok, zone, err) = server.cli(&["dns", "records", "example.test"], "");
    assert!(ok, "{err}");
    for line in body.lines() {
        assert!(
            zone.contains(&format!(";   {}", line.trim_end())),
            "{line} in {zone}"
        );
    }
    // HEAD: the headers without the body.
    let (code, _, body) = curl(
        &server,
        "mta-sts.example.test",
        &["--head"],
        "/.well-known/mta-sts.txt",
    );
    assert_eq!(code, "200");
    assert!(!body.contains("STSv1"), "{body}");

    // A domain added later is served at once.
    let (ok, _, err) = server.cli(&["domain", "add", "later.test"], "");
    assert!(ok, "{err}");
    let (code, _, _) = curl(
        &server,
        "mta-sts.later.test",
        &["--insecure"],
        "/.well-known/mta-sts.txt",
    );
    assert_eq!(code, "200");
    // Not ours, another path, another method.
    let (code, _, _) = curl(
        &server,
        "mta-sts.other.test",
        &["--insecure"],
        "/.well-known/mta-sts.txt",
    );
    assert_eq!(code, "404");
    let (code, _, _) = curl(&server, "mta-sts.example.test", &[], "/");
    assert_eq!(code, "404");
    let (code, _, _) = curl(
        &server,
        "mta-sts.example.test",
        &["--request", "POST", "--data", "x"],
        "/.well-known/mta-sts.txt",
    );
    assert_eq!(code, "405");
}
