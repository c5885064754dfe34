//! Crash safety: kill -9 the server during a concurrent ingest of 5,000 messages, restart it,
//! and check that every message answered 250 is stored exactly once, and that nothing else is
//! stored but messages whose end of data was sent and whose reply was lost in the crash.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Raw, Server};

const TOTAL: usize = 5000;
const SESSIONS: usize = 20;
const KILL_AFTER: usize = 1500;

#[derive(Default)]
struct Ledger {
    acked: BTreeSet<usize>,
    in_flight: BTreeSet<usize>,
}

async fn sender(addr: std::net::SocketAddr, ids: Vec<usize>, ledger: Arc<Mutex<Ledger>>) {
    let Ok(s) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let (r, w) = s.into_split();
    let mut c = Raw {
        r: tokio::io::BufReader::new(r),
        w,
    };
    if !c.reply().await.starts_with("220") || !c.cmd("EHLO crash.client").await.starts_with("250") {
        return;
    }
    for id in ids {
        if !c
            .cmd("MAIL FROM:<crash@remote.test>")
            .await
            .starts_with("250")
        {
            return;
        }
        if !c
            .cmd("RCPT TO:<alice@example.test>")
            .await
            .starts_with("250")
        {
            return;
        }
        if !c.cmd("DATA").await.starts_with("354") {
            return;
        }
        let body = format!(
            "Subject: crash {id}\r\nX-Crash-Id: {id}\r\n\r\n{}\r\n.\r\n",
            "x".repeat(3000)
        );
        ledger.lock().unwrap().in_flight.insert(id);
        use tokio::io::AsyncWriteExt;
        if c.w.write_all(body.as_bytes()).await.is_err() {
            return;
        }
        let reply = c.reply().await;
        let mut l = ledger.lock().unwrap();
        if reply.starts_with("250") {
            l.in_flight.remove(&id);
            l.acked.insert(id);
        } else {
            // No reply (the crash) leaves it in flight: it may or may not be stored.
            return;
        }
    }
}

async fn stored_ids(server: &Server) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for t in server.inbox_texts("alice@example.test").await {
        let id: usize = t
            .lines()
            .find_map(|l| l.strip_prefix("X-Crash-Id: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("every stored message is one of ours, complete");
        assert!(
            t.ends_with(&format!("{}\r\n", "x".repeat(3000))),
            "message {id} is complete"
        );
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_concurrent_ingest_loses_nothing_acknowledged() {
    let mut server = Server::start("");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let ids: Vec<usize> = (0..TOTAL).filter(|i| i % SESSIONS == s).collect();
        tasks.push(tokio::spawn(sender(server.smtp, ids, ledger.clone())));
    }
    // Wait until enough are acknowledged, then crash the server mid-stream.
    let start = std::time::Instant::now();
    loop {
        let n = ledger.lock().unwrap().acked.len();
        if n >= KILL_AFTER {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "ingest too slow: {n} acked"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }
    let (acked, in_flight) = {
        let l = ledger.lock().unwrap();
        (l.acked.clone(), l.in_flight.clone())
    };
    assert!(acked.len() >= KILL_AFTER);
    server.restart();
    let counts = stored_ids(&server).await;
    for id in &acked {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "acknowledged message {id} stored exactly once"
        );
    }
    for (id, n) in &counts {
        assert_eq!(*n, 1, "message {id} stored {n} times");
        assert!(
            acked.contains(id) || in_flight.contains(id),
            "message {id} was never sent, yet stored"
        );
    }
    // The restarted server takes the rest, and the store is consistent.
    let sent: BTreeSet<usize> = acked.union(&in_flight).copied().collect();
    let rest: Vec<usize> = (0..TOTAL).filter(|i| !sent.contains(i)).collect();
    let ledger2 = Arc::new(Mutex::new(Ledger::default()));
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let ids: Vec<usize> = rest.iter().copied().filter(|i| i % SESSIONS == s).collect();
        tasks.push(tokio::spawn(sender(server.smtp, ids, ledger2.clone())));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ledger2.lock().unwrap().acked.len(), rest.len());
    let counts = stored_ids(&server).await;
    let total: usize = counts.values().sum();
    assert!(counts.values().all(|n| *n == 1));
    assert_eq!(
        total,
        acked.len() + rest.len() + in_flight.iter().filter(|i| counts.contains_key(i)).count()
    );
    let meta = server.inbox("alice@example.test").await;
    let uids: Vec<u32> = meta.iter().map(|m| m.uid.0).collect();
    let mut sorted = uids.clone();
    sorted.dedup();
    assert_eq!(uids.len(), sorted.len(), "UIDs unique");
    eprintln!(
        "crash test: {} acknowledged before kill, {} in flight ({} of them stored), {} sent after restart",
        acked.len(),
        in_flight.len(),
        in_flight.iter().filter(|i| counts.contains_key(i)).count(),
        rest.len()
    );
}
