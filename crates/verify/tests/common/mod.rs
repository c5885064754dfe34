//! Shared by the suite runners: compare what differs from a suite's answers with the list of
//! explained cases.

use std::collections::BTreeMap;

/// Prints the figure and every difference, then fails on a difference that is not explained
/// in `known` (a regression) or an explained one that no longer differs (update the list).
#[allow(dead_code)]
pub fn check_known(figure: &str, differ: &BTreeMap<String, String>, known: &[(&str, &str)]) {
    eprintln!("{figure}");
    for (name, why) in differ {
        eprintln!("  {name}: {why}");
    }
    let known: BTreeMap<&str, &str> = known.iter().copied().collect();
    let unexpected: Vec<&String> = differ
        .keys()
        .filter(|n| !known.contains_key(n.as_str()))
        .collect();
    let fixed: Vec<&&str> = known.keys().filter(|n| !differ.contains_key(**n)).collect();
    assert!(unexpected.is_empty(), "new differences: {unexpected:?}");
    assert!(
        fixed.is_empty(),
        "no longer differing, update KNOWN: {fixed:?}"
    );
}

/// A DNS server answering `records`, and a verifier asking it (700 ms per query, as
/// `authserv`) with only the checks named on: `spf`, `dkim`, `arc`.
pub fn dns_and_verifier(
    records: &[(String, mailkeep_testkit::Rr)],
    checks: &[&str],
    authserv: &str,
) -> (mailkeep_testkit::TestDns, mailkeep_verify::Verifier) {
    let dns = mailkeep_testkit::TestDns::start(
        records
            .iter()
            .map(|(n, r)| (n.as_str(), r.clone()))
            .collect(),
    )
    .expect("DNS server");
    let config = mailkeep_config::VerifyConfig {
        spf: checks.contains(&"spf"),
        dkim: checks.contains(&"dkim"),
        arc: checks.contains(&"arc"),
        dmarc: false,
        iprev: false,
        dmarc_enforce: false,
        max_dkim_signatures: 10,
    };
    let verifier = mailkeep_verify::Verifier::new(
        &[dns.addr()],
        std::time::Duration::from_millis(700),
        authserv,
        config,
    )
    .expect("verifier");
    (dns, verifier)
}

/// A YAML scalar as text.
#[allow(dead_code)]
pub fn yaml_text(v: &yaml_rust2::Yaml) -> String {
    use yaml_rust2::Yaml;
    match v {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        _ => String::new(),
    }
}

/// The `txt-records` of an ARC suite scenario, as records to serve (TXT strings are at most
/// 255 octets, RFC 1035 3.3.14: longer keys are split).
#[allow(dead_code)]
pub fn arc_txt_records(doc: &yaml_rust2::Yaml) -> Vec<(String, mailkeep_testkit::Rr)> {
    let mut records = Vec::new();
    if let yaml_rust2::Yaml::Hash(h) = &doc["txt-records"] {
        for (name, value) in h {
            let name = format!(
                "{}.",
                yaml_text(name).trim_end_matches('.').to_ascii_lowercase()
            );
            let value = yaml_text(value);
            let parts = value.as_bytes().chunks(255).map(|c| c.to_vec()).collect();
            records.push((name, mailkeep_testkit::Rr::TxtBytes(parts)));
        }
    }
    records
}
