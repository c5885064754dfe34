//! Small pure helpers of the session: LIST pattern matching and APPEND dates.

/// The number of CPUs this process may use, asked once: `available_parallelism` reads
/// cgroup files on every call, which cost a single-message FETCH more than its own work.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    })
}

/// Whether `name` matches a LIST pattern (RFC 9051 6.3.9): `*` matches anything, `%` anything
/// but the hierarchy delimiter `/`. INBOX matches case-insensitively. Dynamic programming, so
/// a pattern of many wildcards costs O(pattern x name), never exponential time.
pub fn list_matches(pattern: &str, name: &str) -> bool {
    let fold = |s: &str| -> Vec<char> {
        // Only the INBOX prefix is case-insensitive (RFC 9051 5.1).
        match (s.get(..5), s.get(5..)) {
            (Some(head), Some(rest))
                if head.eq_ignore_ascii_case("INBOX")
                    && (rest.is_empty() || rest.starts_with('/')) =>
            {
                "INBOX".chars().chain(rest.chars()).collect()
            }
            _ => s.chars().collect(),
        }
    };
    let p = fold(pattern);
    let n = fold(name);
    // m[j]: the pattern prefix so far matches n[..j].
    let mut m = vec![false; n.len() + 1];
    m[0] = true;
    for pc in &p {
        let mut next = vec![false; n.len() + 1];
        match pc {
            '*' => {
                let mut any = false;
                for j in 0..=n.len() {
                    any |= m[j];
                    next[j] = any;
                }
            }
            '%' => {
                let mut any = false;
                for j in 0..=n.len() {
                    if j > 0 && n[j - 1] == '/' {
                        any = false;
                    }
                    any |= m[j];
                    next[j] = any;
                }
            }
            c => {
                for j in 1..=n.len() {
                    next[j] = m[j - 1] && n[j - 1] == *c;
                }
            }
        }
        m = next;
    }
    m[n.len()]
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an APPEND date-time (RFC 9051 9: `"dd-Mon-yyyy hh:mm:ss +zzzz"`, day may be
/// space-padded) into seconds since the epoch.
pub fn parse_date_time(s: &str) -> Option<i64> {
    let s = s.trim_start();
    let (date, rest) = s.split_once(' ')?;
    let (time, zone) = rest.split_once(' ')?;
    let mut d = date.split('-');
    let day: i64 = d.next()?.parse().ok()?;
    let mon = d.next()?.to_ascii_lowercase();
    let month = MONTHS.iter().position(|m| *m == mon)? as i64 + 1;
    let year: i64 = d.next()?.parse().ok()?;
    if d.next().is_some() || !(1..=31).contains(&day) || !(1..=9999).contains(&year) {
        return None;
    }
    let t: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if t.len() != 3 || t[0] > 23 || t[1] > 59 || t[2] > 60 {
        return None;
    }
    let zb = zone.as_bytes();
    if zb.len() != 5 || !(zb[0] == b'+' || zb[0] == b'-') || !zb[1..].iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let zh: i64 = zone[1..3].parse().ok()?;
    let zm: i64 = zone[3..5].parse().ok()?;
    let offset = (zh * 3600 + zm * 60) * if zb[0] == b'-' { -1 } else { 1 };
    Some(days_from_civil(year, month, day) * 86_400 + t[0] * 3600 + t[1] * 60 + t[2] - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_patterns() {
        assert!(list_matches("*", "INBOX"));
        assert!(list_matches("*", "a/b/c"));
        assert!(list_matches("%", "Sent"));
        assert!(!list_matches("%", "a/b"));
        assert!(list_matches("a/%", "a/b"));
        assert!(!list_matches("a/%", "a/b/c"));
        assert!(list_matches("a/*", "a/b/c"));
        assert!(list_matches("inbox", "INBOX"));
        assert!(list_matches("Inbox/%", "INBOX/x"));
        assert!(
            !list_matches("sent", "Sent"),
            "only INBOX is case-insensitive"
        );
        assert!(list_matches("S%t", "Sent"));
        assert!(list_matches("日%", "日本語"));
        assert!(
            list_matches("*", "日本語"),
            "multi-byte names near the INBOX prefix length"
        );
        assert!(!list_matches("INBOX", "日本語"));
        assert!(!list_matches("日本語", "INBOX"));
        // Many wildcards against a long name stay fast.
        let name = "a".repeat(1000);
        assert!(!list_matches(
            &"*%".repeat(200).to_string().replace("%", "%b"),
            &name
        ));
    }

    #[test]
    fn append_dates() {
        // RFC 9051 6.3.12 example.
        assert_eq!(
            parse_date_time("7-Feb-1994 21:52:25 -0800"),
            Some(760_686_745)
        );
        assert_eq!(
            parse_date_time(" 7-Feb-1994 21:52:25 -0800"),
            Some(760_686_745)
        );
        assert_eq!(parse_date_time("01-Jan-1970 00:00:00 +0000"), Some(0));
        assert_eq!(parse_date_time("01-Jan-1970 01:00:00 +0100"), Some(0));
        for bad in [
            "",
            "7-Foo-1994 21:52:25 -0800",
            "7-Feb-1994 25:00:00 +0000",
            "7-Feb-1994 21:52:25 0800",
            "32-Jan-2000 00:00:00 +0000",
        ] {
            assert_eq!(parse_date_time(bad), None, "{bad}");
        }
    }
}
