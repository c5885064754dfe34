//! Delivery status notifications (RFC 3464): the bounce for recipients that failed, and the
//! warning for recipients still being retried.

use std::fmt::Write as _;

/// One recipient's line in a report.
#[derive(Debug, Clone)]
pub struct RcptReport {
    /// The address mail was sent to.
    pub recipient: String,
    /// DSN ORCPT, as given at submission (`rfc822;addr`).
    pub orcpt: Option<String>,
    /// The remote server's name, when one answered.
    pub remote_mta: Option<String>,
    /// The remote reply or our reason, whole.
    pub diagnostic: String,
}

/// Failed for good, or still trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// RFC 3464 Action: failed.
    Failed,
    /// RFC 3464 Action: delayed.
    Delayed,
}

/// What the report is about.
pub struct Report<'a> {
    /// Our host name (Reporting-MTA, From:).
    pub hostname: &'a str,
    /// Who gets it: the original envelope sender.
    pub to: &'a str,
    /// The queue id of the original message.
    pub queue_id: &'a str,
    /// DSN ENVID of the original.
    pub envid: Option<&'a str>,
    /// When the original arrived (unix seconds).
    pub arrival: i64,
    /// Failed or delayed.
    pub kind: Kind,
    /// The recipients it is about.
    pub recipients: &'a [RcptReport],
    /// The original message.
    pub original: &'a [u8],
    /// Return only its header section (RET=HDRS, RFC 3461 4.3).
    pub headers_only: bool,
}

/// The enhanced status code (RFC 3463) in a reply, or one made from its basic code.
pub fn status_of(diagnostic: &str, kind: Kind) -> String {
    let word = diagnostic.split_whitespace().nth(1).unwrap_or("");
    let parts: Vec<&str> = word.split('.').collect();
    let valid = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if valid {
        return word.to_string();
    }
    match (kind, diagnostic.as_bytes().first()) {
        (Kind::Delayed, _) => "4.0.0".into(),
        (_, Some(b'4')) => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

/// RFC 3464 2.3.1: the ORCPT parameter (`type;xtext`) as the field shows it, its xtext
/// decoded (RFC 3461 4): `rfc822;a+2Bb@x` is `rfc822;a+b@x`. Control characters go.
fn orcpt_text(orcpt: &str) -> String {
    let (kind, value) = orcpt.split_once(';').unwrap_or(("rfc822", orcpt));
    let raw = value.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'+', Some(b)) => {
                bytes.push(b);
                i += 3;
            }
            (b, _) => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    format!("{};{}", one_line(kind), one_line(&text))
}

/// Peer text as one line of a header field or of the report's text: every control character
/// (CR and LF above all, which would start a field or a MIME boundary of the peer's choosing)
/// becomes a space. Whatever the SMTP parsers let through, a report never carries it.
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

fn rfc2822(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_default()
}

/// Builds the report as a whole message, ready to deliver or queue with a null sender.
pub fn build(r: &Report<'_>, now: i64) -> Vec<u8> {
    let boundary = format!("{:016x}/{}", rand::random::<u64>(), r.hostname);
    let (subject, intro) = match r.kind {
        Kind::Failed => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to the recipients below. The reason each\r\n\
             server gave is shown with it. This is a permanent error: it will not be retried.",
        ),
        Kind::Delayed => (
            "Delayed Mail (still being retried)",
            "Your message has not been delivered to the recipients below yet. Delivery will be\r\n\
             tried again; you will hear from us again only if it fails for good.",
        ),
    };
    let mut m = String::new();
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{nonce:016x}.dsn@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at {host}.\r\n\
         \r\n\
         {intro}\r\n\
         \r\n",
        host = r.hostname,
        to = one_line(r.to),
        date = rfc2822(now),
        id = r.queue_id,
        nonce = rand::random::<u64>(),
    );
    for rc in r.recipients {
        let _ = write!(
            m,
            "<{}>: {}\r\n",
            one_line(&rc.recipient),
            one_line(&rc.diagnostic)
        );
    }
    // RFC 3464 2.2: per-message fields.
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n",
        host = r.hostname
    );
    if let Some(envid) = r.envid {
        // RFC 3464 2.2.1: the ENVID decoded; RFC 3461 4 lets it decode to printable
        // ASCII only, which MAIL checks (501 5.5.4).
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", one_line(envid));
    }
    let _ = write!(m, "Arrival-Date: {}\r\n", rfc2822(r.arrival));
    // RFC 3464 2.3: per-recipient fields.
    for rc in r.recipients {
        m.push_str("\r\n");
        if let Some(o) = &rc.orcpt {
            let _ = write!(m, "Original-Recipient: {}\r\n", orcpt_text(o));
        }
        let (action, status) = match r.kind {
            Kind::Failed => ("failed", status_of(&rc.diagnostic, Kind::Failed)),
            Kind::Delayed => ("delayed", status_of(&rc.diagnostic, Kind::Delayed)),
        };
        let _ = write!(
            m,
            "Final-Recipient: rfc822; {}\r\nAction: {action}\r\nStatus: {status}\r\n",
            one_line(&rc.recipient)
        );
        if let Some(mta) = &rc.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", one_line(mta));
        }
        // A server's reply goes in as it was; our own reasons are X-Mailkeep diagnostics.
        let diag_type = if rc.remote_mta.is_some() {
            "smtp"
        } else {
            "x-mailkeep"
        };
        let _ = write!(
            m,
            "Diagnostic-Code: {diag_type}; {}\r\n",
            one_line(&rc.diagnostic)
        );
        let _ = write!(m, "Last-Attempt-Date: {}\r\n", rfc2822(now));
    }
    let mut out = m.into_bytes();
    let returned = if r.headers_only {
        &r.original[..mailkeep_delivery::ingest::header_len(r.original)]
    } else {
        r.original
    };
    let ct = if r.headers_only {
        "text/rfc822-headers"
    } else {
        "message/rfc822"
    };
    out.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Type: {ct}\r\n\r\n").as_bytes());
    out.extend_from_slice(returned);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_recipients_are_shown_decoded() {
        assert_eq!(orcpt_text("rfc822;a+2Bb@x.test"), "rfc822;a+b@x.test");
        assert_eq!(
            orcpt_text("rfc822;caf+C3+A9@x.test"),
            "rfc822;caf\u{e9}@x.test"
        );
        assert_eq!(orcpt_text("rfc822;x+0D+0Ay@z"), "rfc822;x  y@z");
        assert_eq!(orcpt_text("rfc822;odd+@z"), "rfc822;odd+@z");
    }

    #[test]
    fn peer_text_cannot_add_a_field_or_a_boundary() {
        let evil = "x\r\nX-Injected: yes\r\n\r\n--b--\n\u{0}\u{85}";
        let rcpts = [RcptReport {
            recipient: evil.into(),
            orcpt: Some(format!("rfc822;{evil}")),
            remote_mta: Some(evil.into()),
            diagnostic: format!("550 5.1.1 {evil}"),
        }];
        let report = Report {
            hostname: "mail.example.test",
            to: "a@example.test",
            queue_id: "Q1",
            envid: Some(evil),
            arrival: 1_700_000_000,
            kind: Kind::Failed,
            recipients: &rcpts,
            original: b"Subject: s\r\n\r\nb\r\n",
            headers_only: false,
        };
        let text = String::from_utf8(build(&report, 1_700_000_100)).unwrap();
        for line in text.split("\r\n") {
            assert!(!line.starts_with("X-Injected"), "{text}");
            assert!(!line.starts_with("--b--"), "{text}");
            assert!(
                !line.chars().any(|c| c.is_control() && c != '\t'),
                "{line:?}"
            );
        }
    }

    #[test]
    fn status_codes_come_from_the_reply() {
        assert_eq!(status_of("550 5.1.1 no such user", Kind::Failed), "5.1.1");
        assert_eq!(status_of("550 no such user", Kind::Failed), "5.0.0");
        assert_eq!(status_of("451 4.7.1 greylisted", Kind::Delayed), "4.7.1");
        assert_eq!(status_of("connection refused", Kind::Delayed), "4.0.0");
        assert_eq!(status_of("550 5.x.1 odd", Kind::Failed), "5.0.0");
    }

    #[test]
    fn a_bounce_is_a_multipart_report_that_mail_parser_reads() {
        let original = b"From: a@example.test\r\nSubject: hello\r\n\r\nbody line\r\n";
        let rcpts = [RcptReport {
            recipient: "x@remote.test".into(),
            orcpt: Some("rfc822;x@remote.test".into()),
            remote_mta: Some("mx.remote.test".into()),
            diagnostic: "550 5.1.1 <x@remote.test>: user unknown".into(),
        }];
        let report = Report {
            hostname: "mail.example.test",
            to: "a@example.test",
            queue_id: "Q1",
            envid: Some("env-9"),
            arrival: 1_700_000_000,
            kind: Kind::Failed,
            recipients: &rcpts,
            original,
            headers_only: true,
        };
        let raw = build(&report, 1_700_000_100);
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains("Status: 5.1.1\r\n"));
        assert!(text.contains("Action: failed\r\n"));
        assert!(text.contains("Original-Envelope-Id: env-9\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 <x@remote.test>: user unknown"));
        assert!(text.contains("Auto-Submitted: auto-replied"));
        assert!(text.contains("text/rfc822-headers"));
        assert!(
            !text.contains("body line"),
            "RET=HDRS returns the header only"
        );
        let parsed = mail_parser::MessageParser::default()
            .parse(&raw[..])
            .unwrap();
        assert_eq!(
            parsed.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
        assert_eq!(parsed.parts.len(), 4, "the multipart and its three parts");
    }
}
