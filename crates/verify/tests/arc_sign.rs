//! Our ARC sealer ([`Verifier::verify`] with `seal_as`, the path forwarding takes) over the
//! ARC test suite's signing cases (`arc-draft-sign-tests.yml`, 17 cases). The suite's key has
//! 1024 bits, which ring does not sign with, and its expected signatures carry fixed times,
//! so the comparison is by meaning, with our own 2048-bit key under another selector:
//! - a set is added exactly when the suite adds one (none on a chain whose last set says
//!   cv=fail), with the suite's instance and cv;
//! - the body hash is the suite's;
//! - the sealed message passes ARC validation (mail-auth's verifier, DNS on loopback), or
//!   fails it exactly when the suite's new set says cv=fail.

mod common;

use common::{arc_txt_records, dns_and_verifier, yaml_text as text};
use mailkeep_testkit::Rr;
use mailkeep_verify::seal::ArcSealKeys;
use mailkeep_verify::Envelope;
use yaml_rust2::{Yaml, YamlLoader};

/// The tags of a header value (unfolded, whitespace removed).
fn tag(value: &str, name: &str) -> Option<String> {
    let flat: String = value.split_whitespace().collect();
    flat.split(';').find_map(|t| {
        let (k, v) = t.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// The value of the first `name:` field in a header block.
fn field(block: &str, name: &str) -> Option<String> {
    let mut out: Option<String> = None;
    for line in block.split("\r\n") {
        match &mut out {
            Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
            Some(_) => break,
            None => {
                if let Some((n, v)) = line.split_once(':') {
                    if n.eq_ignore_ascii_case(name) {
                        out = Some(v.to_string());
                    }
                }
            }
        }
    }
    out
}

/// A 2048-bit RSA key as `example.org.mk.rsa.pem` in `dir`, and its DKIM TXT value.
fn make_key(dir: &std::path::Path) -> String {
    use base64::Engine;
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand_core(), 2048).expect("RSA key");
    let pem = key.to_pkcs8_pem(LineEnding::LF).expect("PEM");
    std::fs::write(dir.join("example.org.mk.rsa.pem"), pem.as_bytes()).expect("write key");
    let public = key.to_public_key().to_public_key_der().expect("DER");
    format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(public.as_bytes())
    )
}

fn rand_core() -> rsa::rand_core::OsRng {
    rsa::rand_core::OsRng
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arc_sign_suite_through_our_sealer() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/suites/arc/arc-draft-sign-tests.yml"
    );
    let docs =
        YamlLoader::load_from_str(&std::fs::read_to_string(path).expect("suite")).expect("YAML");
    let keys = tempfile::tempdir().expect("tempdir");
    let our_key = make_key(keys.path());
    let mut total = 0;
    let mut failures = Vec::new();
    for doc in &docs {
        let mut records = vec![(
            "mk._domainkey.example.org.".to_string(),
            Rr::TxtBytes(our_key.as_bytes().chunks(255).map(|c| c.to_vec()).collect()),
        )];
        records.extend(arc_txt_records(doc));
        let (_dns, verifier) = dns_and_verifier(&records, &["arc"], "lists.example.org");
        let verifier = verifier.with_sealers(ArcSealKeys::load(keys.path()).expect("keys"));
        let Yaml::Hash(tests) = &doc["tests"] else {
            continue;
        };
        for (name, t) in tests {
            total += 1;
            let name = text(name);
            let message = text(&t["message"])
                .replace("\r\n", "\n")
                .replace('\n', "\r\n");
            let env = Envelope {
                ip: "192.0.2.1".parse().expect("ip"),
                helo: "segv.d1.example",
                mail_from: "jqd@d1.example",
            };
            let verdict = verifier
                .verify(message.as_bytes(), env, Some("example.org"))
                .await;
            let want_as = text(&t["AS"]);
            let Some(set) = verdict.arc_set else {
                if !want_as.trim().is_empty() {
                    failures.push(format!("{name}: no set made ({})", verdict.detail));
                }
                continue;
            };
            if want_as.trim().is_empty() {
                failures.push(format!("{name}: a set was made where the suite adds none"));
                continue;
            }
            let seal = field(&set, "ARC-Seal").unwrap_or_default();
            let ams = field(&set, "ARC-Message-Signature").unwrap_or_default();
            let want_cv = tag(&want_as, "cv").unwrap_or_default();
            for (what, got, want) in [
                ("cv", tag(&seal, "cv"), Some(want_cv.clone())),
                ("i", tag(&seal, "i"), tag(&want_as, "i")),
                ("AMS i", tag(&ams, "i"), tag(&want_as, "i")),
                ("AMS d", tag(&ams, "d"), Some("example.org".into())),
                ("bh", tag(&ams, "bh"), tag(&text(&t["AMS"]), "bh")),
            ] {
                if got.is_none() || got != want {
                    failures.push(format!("{name}: {what} is {got:?}, want {want:?}"));
                }
            }
            let sealed = format!("{set}{message}");
            let (result, why) = verifier.check_arc(sealed.as_bytes()).await;
            let want = if want_cv == "fail" { "fail" } else { "pass" };
            if result != want {
                failures.push(format!(
                    "{name}: the sealed message validates as {result} ({why:?}), want {want}"
                ));
            }
        }
    }
    eprintln!(
        "ARC signing suite through our sealer: {} of {total} cases agree",
        total - failures.len()
    );
    assert_eq!(total, 17);
    assert!(failures.is_empty(), "{failures:#?}");
}
