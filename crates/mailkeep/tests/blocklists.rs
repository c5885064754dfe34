//! `mailkeep check blocklists` against blocklist zones served by a DNS server the test starts:
//! a listed address is named with the list's code and reason (exit 1), a clean one passes,
//! and a list refusing to answer (127.255.255.x) is an error, not a listing.

mod common;

use common::outbound::point_dns;
use common::{cli, init_dir};
use mailkeep_testkit::{Rr, TestDns};

#[test]
fn our_addresses_are_looked_up_on_each_list() {
    let (_dir, config) = init_dir("lists = [\"bl.test\", \"clean.test\", \"picky.test\"]");
    let dns = TestDns::start(vec![
        // 192.0.2.44 is listed on bl.test (RFC 5782 2.1: reversed octets).
        ("44.2.0.192.bl.test.", Rr::A("127.0.0.2".parse().unwrap())),
        (
            "44.2.0.192.bl.test.",
            Rr::Txt("Listed for sending spam, see https://bl.test/192.0.2.44".into()),
        ),
        // picky.test refuses to answer this resolver.
        (
            "44.2.0.192.picky.test.",
            Rr::A("127.255.255.254".parse().unwrap()),
        ),
        (
            "45.2.0.192.picky.test.",
            Rr::A("127.255.255.254".parse().unwrap()),
        ),
    ])
    .unwrap();
    point_dns(&config, &dns);

    let (ok, out, err) = cli(&config, &["check", "blocklists", "--ip", "192.0.2.44"], "");
    assert!(!ok, "listed: exit 1\n{out}{err}");
    assert!(
        out.contains("LISTED  192.0.2.44")
            && out.contains("bl.test (127.0.0.2) Listed for sending spam"),
        "{out}"
    );
    assert!(
        out.contains("ok      192.0.2.44") && out.contains("clean.test"),
        "{out}"
    );
    assert!(
        out.contains("error   192.0.2.44") && out.contains("refused to answer"),
        "{out}"
    );

    // Another address: on no list (the refusal is not a listing).
    let (ok, out, err) = cli(&config, &["check", "blocklists", "--ip", "192.0.2.45"], "");
    assert!(ok, "{out}{err}");
    assert!(out.contains("not listed anywhere asked"), "{out}");
    assert!(!out.contains("LISTED"), "{out}");
}
