//! DNS queries whose answers say whether they were DNSSEC-validated, for DANE (RFC 7672) and
//! REQUIRETLS (RFC 8689).
//!
//! As Postfix does (`smtp_dns_support_level = dnssec`), mailkeep does not validate signatures
//! itself: it trusts the AD (authentic data) bit of the resolver it is configured to use, which
//! must therefore be a validating resolver the machine trusts, on loopback or over a trusted
//! network (unbound, systemd-resolved with DNSSEC=yes, ...). A resolver that does not validate
//! never sets AD, and DANE is then never used: delivery falls back to MTA-STS or opportunistic
//! TLS, never to something weaker than without DANE.
//!
//! Answers are cached for their TTL (at most `MAX_TTL`), failures for `NEGATIVE_TTL`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest time an answer is cached.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// How long an empty answer or a failure is cached.
const NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// Most cached answers (oldest dropped first when full).
const MAX_CACHED: usize = 10_000;

/// One answer: its records' data, whether the resolver validated it, and its response code.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The records of the asked type (CNAMEs followed by the resolver are left out).
    pub records: Vec<RData>,
    /// The resolver set AD: the answer (or the denial of existence) is DNSSEC-validated.
    pub authentic: bool,
    /// NOERROR, NXDOMAIN, SERVFAIL...
    pub rcode: ResponseCode,
}

/// A cached answer or failure, and until when it holds.
type Cached = (Result<Answer, String>, Instant);

/// A stub resolver that reports the AD bit.
pub struct SecureDns {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    /// Answers and failures (a resolver that does not answer is not asked again for each
    /// message; a failure stays a failure, never "no records").
    cache: Mutex<HashMap<(String, RecordType), Cached>>,
}

impl SecureDns {
    /// Asks `servers` in turn, or the system's (`/etc/resolv.conf`) when empty.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> SecureDns {
        let servers = if servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map(|(c, _)| {
                    let mut s: Vec<SocketAddr> =
                        c.name_servers().iter().map(|n| n.socket_addr).collect();
                    s.dedup();
                    s
                })
                .unwrap_or_default()
        } else {
            servers.to_vec()
        };
        SecureDns {
            servers,
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Records of `rtype` at `name` (absolute or not), with the AD bit. Err: no server answered.
    pub async fn query(&self, name: &str, rtype: RecordType) -> Result<Answer, String> {
        let key = (name.trim_end_matches('.').to_ascii_lowercase(), rtype);
        if let Ok(cache) = self.cache.lock() {
            if let Some((a, until)) = cache.get(&key) {
                if *until > Instant::now() {
                    return a.clone();
                }
            }
        }
        let fqdn = Name::from_ascii(format!("{}.", key.0)).map_err(|e| e.to_string())?;
        let mut result = Err("no DNS server is configured".to_string());
        let mut ttl = NEGATIVE_TTL;
        for server in &self.servers {
            match self.ask(*server, &fqdn, rtype).await {
                Ok((answer, t)) => {
                    result = Ok(answer);
                    ttl = t;
                    break;
                }
                Err(e) => result = Err(format!("{server}: {e}")),
            }
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED {
                let now = Instant::now();
                cache.retain(|_, (_, until)| *until > now);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(key, (result.clone(), Instant::now() + ttl));
        }
        result
    }

    async fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        rtype: RecordType,
    ) -> Result<(Answer, Duration), String> {
        let mut q = Message::new();
        q.set_id(rand::random())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            // RFC 6840 5.7: AD in a query asks for AD in the answer.
            .set_authentic_data(true)
            .add_query(Query::query(name.clone(), rtype));
        let mut edns = Edns::new();
        // RFC 3225: DO says we understand DNSSEC; some resolvers set AD only then.
        edns.set_dnssec_ok(true).set_max_payload(1232);
        q.set_edns(edns);
        let wire = q.to_vec().map_err(|e| e.to_string())?;
        let reply = tokio::time::timeout(self.timeout, async {
            let r = udp(server, &wire, q.id()).await?;
            if r.truncated() {
                // RFC 7766: a truncated answer is asked again over TCP.
                tcp(server, &wire, q.id()).await
            } else {
                Ok(r)
            }
        })
        .await
        .map_err(|_| "timed out".to_string())??;
        let rcode = reply.response_code();
        if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
            return Err(format!("the DNS server answered {rcode}"));
        }
        let mut ttl = MAX_TTL;
        let records: Vec<RData> = reply
            .answers()
            .iter()
            .filter(|r| r.record_type() == rtype)
            .map(|r| {
                ttl = ttl.min(Duration::from_secs(u64::from(r.ttl())));
                r.data().clone()
            })
            .collect();
        if records.is_empty() {
            ttl = NEGATIVE_TTL;
        }
        Ok((
            Answer {
                records,
                authentic: reply.authentic_data(),
                rcode,
            },
            ttl,
        ))
    }
}

async fn udp(server: SocketAddr, wire: &[u8], id: u16) -> Result<Message, String> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| e.to_string())?;
    socket.connect(server).await.map_err(|e| e.to_string())?;
    socket.send(wire).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
        // A reply with another id is not ours (RFC 5452 9.1): keep waiting.
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if m.id() == id && m.message_type() == MessageType::Response {
                return Ok(m);
            }
        }
    }
}

async fn tcp(server: SocketAddr, wire: &[u8], id: u16) -> Result<Message, String> {
    let mut s = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(wire.len()).map_err(|_| "query too long".to_string())?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(wire);
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    let m = Message::from_vec(&buf).map_err(|e| e.to_string())?;
    if m.id() != id {
        return Err("the DNS server answered another query".into());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailkeep_testkit::{Rr, TestDns};

    #[tokio::test]
    async fn the_ad_bit_is_reported_per_zone() {
        let dns = TestDns::start_signed(
            vec![
                ("s.test.", Rr::Mx(10, "mx.s.test.".into())),
                ("u.test.", Rr::Mx(10, "mx.u.test.".into())),
            ],
            &["s.test"],
        )
        .unwrap();
        let d = SecureDns::new(&[dns.addr()], Duration::from_secs(2));
        let s = d.query("s.test", RecordType::MX).await.unwrap();
        assert!(s.authentic);
        assert_eq!(s.records.len(), 1);
        let u = d.query("u.test.", RecordType::MX).await.unwrap();
        assert!(!u.authentic);
        assert_eq!(u.records.len(), 1);
        let nx = d.query("nx.test", RecordType::MX).await.unwrap();
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert!(nx.records.is_empty());
        // Cached: answered the same with the server gone.
        drop(dns);
        assert!(d.query("S.TEST", RecordType::MX).await.unwrap().authentic);
    }

    #[tokio::test]
    async fn a_silent_server_is_an_error_and_is_not_asked_again_at_once() {
        // A socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let d = SecureDns::new(&[silent.local_addr().unwrap()], Duration::from_millis(300));
        let t = Instant::now();
        assert!(d.query("x.test", RecordType::TLSA).await.is_err());
        assert!(t.elapsed() >= Duration::from_millis(300));
        let t = Instant::now();
        assert!(d.query("x.test", RecordType::TLSA).await.is_err());
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "the failure is cached"
        );
    }
}
