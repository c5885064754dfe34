//! Shared by the suite runners: compare what differs from a suite's answers with the list of
//! explained cases.

use std::collections::BTreeMap;

/// Prints the figure and every difference, then fails on a difference that is not explained
/// in `known` (a regression) or an explained one that no longer differs (update the list).
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
