//! `mailkeep dns records` and `mailkeep dns check` against a DNS server the test starts:
//! published as printed, every record checks out (the MTA-STS policy fetched over HTTPS from
//! the running server); with DMARC missing and a DKIM key that is not ours, the check names
//! both with the fix and exits 1.

mod common;

use common::outbound::point_dns;
use common::{cli, init_dir, Server};
use mailkeep_testkit::{reverse_name, Rr, TestDns};

/// The server's public address in this test: only DNS data, never connected to (the
/// resolver answers every 127/8 reverse name with "localhost", RFC 6761).
const SERVER: &str = "192.0.2.44";

/// Zone-file lines (name, type, value) from `dns records`, with the server at SERVER.
fn parse_zone(text: &str) -> Vec<(String, Rr)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
    {
        let cols: Vec<&str> = line.splitn(5, '\t').collect();
        assert_eq!(cols.len(), 5, "{line}");
        let (name, kind, value) = (cols[0].to_string(), cols[3], cols[4]);
        let rr = match kind {
            "MX" => {
                let (pref, host) = value.split_once(' ').unwrap();
                Rr::Mx(pref.parse().unwrap(), host.to_string())
            }
            "A" => Rr::A(SERVER.parse().unwrap()),
            "CNAME" => Rr::Cname(value.to_string()),
            "TXT" => Rr::TxtParts(
                value
                    .split("\" \"")
                    .map(|p| p.trim_matches('"').to_string())
                    .collect(),
            ),
            other => panic!("record type {other}"),
        };
        out.push((name, rr));
    }
    out
}

#[test]
fn records_as_printed_check_out_and_missing_or_wrong_ones_are_named() {
    let (dir, config) = init_dir("");
    let (ok, zone, err) = cli(&config, &["dns", "records", "example.test"], "");
    assert!(ok, "{err}");
    for want in [
        "example.test.\t3600\tIN\tMX\t10 mail.example.test.",
        "\"v=spf1 mx -all\"",
        "mk1e._domainkey.example.test.",
        "mk1r._domainkey.example.test.",
        "_dmarc.example.test.",
        "_mta-sts.example.test.",
        "_smtp._tls.example.test.",
        "mode: testing",
    ] {
        assert!(zone.contains(want), "{want:?} in:\n{zone}");
    }
    // The server serves the policy; `dns check` fetches it from there (on loopback, trusting
    // the server's own certificate).
    let cert = dir.path().join("tls/cert.pem");
    let server = Server::boot(dir, config.clone());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "# ca_file = ",
        &format!("ca_file = {:?} #", cert.display().to_string()),
    ) + &format!("\nmta_sts_port = {}\n", server.listeners["https"].port());
    std::fs::write(&config, text).unwrap();
    let mut records: Vec<(String, Rr)> = parse_zone(&zone)
        .into_iter()
        .map(|(n, r)| {
            if n.starts_with("mta-sts.") {
                (n, Rr::A("127.0.0.1".parse().unwrap()))
            } else {
                (n, r)
            }
        })
        .collect();
    records.push((
        reverse_name(SERVER.parse().unwrap()),
        Rr::Ptr("mail.example.test.".into()),
    ));
    let dns = TestDns::start(
        records
            .iter()
            .map(|(n, r)| (n.as_str(), r.clone()))
            .collect(),
    )
    .unwrap();
    point_dns(&config, &dns);
    let (ok, out, err) = cli(
        &config,
        &["dns", "check", "example.test", "--ip", SERVER],
        "",
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("every required record is in place"), "{out}");
    assert!(out.contains("serves our policy (testing)"), "{out}");
    assert!(!out.contains("missing") && !out.contains("wrong"), "{out}");
    assert_eq!(
        out.matches("\nok ").count() + usize::from(out.starts_with("ok ")),
        10,
        "{out}"
    );

    // DMARC gone, the RSA key replaced by another, no MTA-STS: two required records fail.
    let other_key = "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB";
    let broken: Vec<(String, Rr)> = records
        .into_iter()
        .filter(|(n, _)| !n.starts_with("_dmarc.") && !n.contains("mta-sts"))
        .map(|(n, r)| {
            if n.starts_with("mk1r._domainkey.") {
                (n, Rr::Txt(other_key.into()))
            } else {
                (n, r)
            }
        })
        .collect();
    drop(dns);
    let dns = TestDns::start(
        broken
            .iter()
            .map(|(n, r)| (n.as_str(), r.clone()))
            .collect(),
    )
    .unwrap();
    point_dns(&config, &dns);
    let (ok, out, _) = cli(
        &config,
        &["dns", "check", "example.test", "--ip", SERVER],
        "",
    );
    assert!(!ok, "exits non-zero: {out}");
    assert!(
        out.contains("2 required record(s) missing or wrong"),
        "{out}"
    );
    assert!(
        out.contains("missing                TXT _dmarc.example.test"),
        "{out}"
    );
    assert!(
        out.contains("fix: _dmarc.example.test.\t3600\tIN\tTXT\t\"v=DMARC1; p=quarantine"),
        "{out}"
    );
    assert!(
        out.contains("wrong                  TXT mk1r._domainkey.example.test — the published key is not this server's"),
        "{out}"
    );
    assert!(
        out.contains("missing (recommended)  TXT _mta-sts.example.test"),
        "{out}"
    );
}
