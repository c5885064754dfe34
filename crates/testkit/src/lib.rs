//! Test kit shared by the crates' tests.
//!
//! [`TestDns`] is a small authoritative DNS server on a loopback UDP port, answering from a
//! fixed table, so tests never ask the internet (and later SPF/DKIM/DMARC/MTA-STS tests can
//! publish exactly the records they need).
#![warn(missing_docs)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, TLSA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// One record to serve.
#[derive(Debug, Clone)]
pub enum Rr {
    /// IPv4 address.
    A(std::net::Ipv4Addr),
    /// IPv6 address.
    Aaaa(std::net::Ipv6Addr),
    /// Mail exchanger: preference and host.
    Mx(u16, String),
    /// Text (one string).
    Txt(String),
    /// Text in several strings (each at most 255 octets, RFC 1035 3.3.14), read as one.
    TxtParts(Vec<String>),
    /// Pointer (reverse DNS).
    Ptr(String),
    /// TLSA (RFC 6698): usage, selector, matching type, data.
    Tlsa(u8, u8, u8, Vec<u8>),
    /// Text as raw bytes (strings that are not UTF-8, as test suites publish).
    TxtBytes(Vec<Vec<u8>>),
    /// Canonical name: queries for other types follow it (as a recursive resolver answers).
    Cname(String),
    /// No answer at all for types this name has no record of (a DNS timeout).
    Timeout,
    /// SERVFAIL for types this name has no record of.
    ServFail,
}

impl Rr {
    fn kind(&self) -> RecordType {
        match self {
            Rr::A(_) => RecordType::A,
            Rr::Aaaa(_) => RecordType::AAAA,
            Rr::Mx(..) => RecordType::MX,
            Rr::Txt(_) | Rr::TxtParts(_) | Rr::TxtBytes(_) => RecordType::TXT,
            Rr::Cname(_) => RecordType::CNAME,
            Rr::Timeout | Rr::ServFail => RecordType::Unknown(0),
            Rr::Ptr(_) => RecordType::PTR,
            Rr::Tlsa(..) => RecordType::TLSA,
        }
    }

    fn rdata(&self) -> Option<RData> {
        Some(match self {
            Rr::A(ip) => RData::A(A(*ip)),
            Rr::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            Rr::Mx(p, host) => RData::MX(MX::new(*p, raw_name(host)?)),
            Rr::Txt(t) => RData::TXT(TXT::new(vec![t.clone()])),
            Rr::TxtParts(parts) => RData::TXT(TXT::new(parts.clone())),
            Rr::Ptr(host) => RData::PTR(PTR(raw_name(host)?)),
            Rr::TxtBytes(parts) => RData::TXT(TXT::from_bytes(
                parts.iter().map(|p| p.as_slice()).collect(),
            )),
            Rr::Cname(host) => RData::CNAME(CNAME(raw_name(host)?)),
            Rr::Timeout | Rr::ServFail => return None,
            Rr::Tlsa(u, s, m, data) => RData::TLSA(TLSA::new(
                (*u).into(),
                (*s).into(),
                (*m).into(),
                data.clone(),
            )),
        })
    }
}

/// A name from its text, each label as it is (test suites use names with ':' and '/').
fn raw_name(text: &str) -> Option<Name> {
    let t = text.trim_end_matches('.');
    if t.is_empty() {
        return Some(Name::root());
    }
    let mut n = Name::from_labels(t.split('.').map(|l| l.as_bytes())).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// The reverse-DNS name of an IPv4 address (`1.0.0.127.in-addr.arpa.`).
pub fn reverse_name(ip: std::net::Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
}

/// A DNS server on 127.0.0.1 answering from a table; stops when dropped.
pub struct TestDns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestDns {
    /// Serves `records` (name, record); names are absolute, case-insensitive. Unknown names get
    /// NXDOMAIN, known names without the asked type an empty NOERROR answer.
    pub fn start(records: Vec<(&str, Rr)>) -> std::io::Result<TestDns> {
        TestDns::start_signed(records, &[])
    }

    /// As [`TestDns::start`], acting as a validating resolver for the zones in `signed`: its
    /// answers (and denials) for names in them carry the AD bit (RFC 4035 3.2.3) when the
    /// query set AD or DO, as unbound's do for a DNSSEC-signed zone.
    pub fn start_signed(records: Vec<(&str, Rr)>, signed: &[&str]) -> std::io::Result<TestDns> {
        TestDns::start_on("127.0.0.1:0".parse().expect("address"), records, signed)
    }

    /// As [`TestDns::start_signed`], on a given address (port 53, for programs that read
    /// /etc/resolv.conf and cannot be given a port).
    pub fn start_on(
        at: SocketAddr,
        records: Vec<(&str, Rr)>,
        signed: &[&str],
    ) -> std::io::Result<TestDns> {
        let signed: Vec<String> = signed
            .iter()
            .map(|z| z.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        let mut table: HashMap<String, Vec<Rr>> = HashMap::new();
        for (name, rr) in records {
            let mut n = name.to_ascii_lowercase();
            if !n.ends_with('.') {
                n.push('.');
            }
            table.entry(n).or_default().push(rr);
        }
        let socket = UdpSocket::bind(at)?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&table, &signed, &buf[..n]) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        Ok(TestDns {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(table: &HashMap<String, Vec<Rr>>, signed: &[String], query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_authoritative(true)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true);
    let mut found_name = false;
    let mut servfail = false;
    let wants_ad =
        q.authentic_data() || q.extensions().as_ref().is_some_and(|e| e.flags().dnssec_ok);
    let mut authentic = wants_ad && !q.queries().is_empty();
    for question in q.queries() {
        let qname = question.name().to_ascii().to_ascii_lowercase();
        let qname = qname.trim_end_matches('.');
        authentic &= signed
            .iter()
            .any(|z| qname == z || qname.ends_with(&format!(".{z}")));
        m.add_query(question.clone());
        let qtype = question.query_type();
        let mut name = question.name().clone();
        // Follow CNAMEs as a recursive resolver would (at most 8, loops stop).
        for hop in 0..8 {
            // The raw labels (names from test suites may hold spaces and other octets).
            let key = format!(
                "{}.",
                name.iter()
                    .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(".")
            );
            let Some(rrs) = table.get(&key) else {
                break;
            };
            if hop == 0 {
                found_name = true;
            }
            let of_type: Vec<&Rr> = rrs.iter().filter(|r| r.kind() == qtype).collect();
            if of_type.is_empty() && rrs.iter().any(|r| matches!(r, Rr::Timeout)) {
                return None;
            }
            if of_type.is_empty() && rrs.iter().any(|r| matches!(r, Rr::ServFail)) {
                servfail = true;
            }
            for rr in &of_type {
                if let Some(rdata) = rr.rdata() {
                    m.add_answer(Record::from_rdata(name.clone(), 60, rdata));
                }
            }
            let cname = rrs.iter().find_map(|r| match r {
                Rr::Cname(target) if qtype != RecordType::CNAME => raw_name(target),
                _ => None,
            });
            match cname {
                Some(target) if of_type.is_empty() => {
                    m.add_answer(Record::from_rdata(
                        name.clone(),
                        60,
                        RData::CNAME(CNAME(target.clone())),
                    ));
                    name = target;
                }
                _ => break,
            }
        }
    }
    m.set_authentic_data(authentic);
    m.set_response_code(if servfail {
        ResponseCode::ServFail
    } else if found_name {
        ResponseCode::NoError
    } else {
        ResponseCode::NXDomain
    });
    m.to_vec().ok()
}
