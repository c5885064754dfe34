//! The conformance suite every backend must pass. A backend's tests call [`run_all`] with a
//! fresh, empty store; each check panics with a message naming the rule it broke.

use mailkeep_types::{AccountId, Address, Domain, MailboxId, MailboxRole, ModSeq, Uid};

use crate::directory::{resolve, Resolution};
use crate::{
    AclChange, ChangeEvent, FlagMode, LogEvent, LogFilter, MessageCache, NewMessage, Rights,
    SharedStore, StoreError, Target,
};

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap_or_else(|e| panic!("test address {s}: {e}"))
}

fn domain(s: &str) -> Domain {
    Domain::parse(s).unwrap_or_else(|e| panic!("test domain {s}: {e}"))
}

/// Runs every check against an empty store.
pub async fn run_all(store: SharedStore) {
    directory(&store).await;
    resolution(&store).await;
    blobs(&store).await;
    delivery(&store).await;
    blob_gc(&store).await;
    mailboxes(&store).await;
    messages(&store).await;
    log(&store).await;
    login(&store).await;
    acl(&store).await;
    queue(&store).await;
    sts(&store).await;
    reports(&store).await;
    bans(&store).await;
    usage(&store).await;
    spam(&store).await;
    greylist(&store).await;
    sieve(&store).await;
}

/// Sieve scripts: stored, replaced, one active, the active one not deleted.
async fn sieve(store: &SharedStore) {
    let d = domain("sieve.test");
    store.domain_add(&d).await.expect("domain");
    let u = store
        .user_add(&addr("s@sieve.test"), "x", 0)
        .await
        .expect("user");
    assert_eq!(store.sieve_active(u).await.expect("active"), None);
    store.sieve_put(u, "a", "keep;").await.expect("put");
    store.sieve_put(u, "b", "discard;").await.expect("put");
    store.sieve_put(u, "a", "stop;").await.expect("replace");
    assert_eq!(
        store.sieve_get(u, "a").await.expect("get").as_deref(),
        Some("stop;")
    );
    assert!(matches!(
        store.sieve_activate(u, Some("nope")).await,
        Err(StoreError::NotFound(_))
    ));
    store.sieve_activate(u, Some("b")).await.expect("activate");
    assert_eq!(
        store.sieve_list(u).await.expect("list"),
        vec![("a".to_string(), false), ("b".to_string(), true)]
    );
    assert_eq!(
        store.sieve_active(u).await.expect("active"),
        Some(("b".to_string(), "discard;".to_string()))
    );
    assert!(matches!(
        store.sieve_delete(u, "b").await,
        Err(StoreError::Conflict(_))
    ));
    store.sieve_activate(u, None).await.expect("deactivate");
    store.sieve_delete(u, "b").await.expect("delete");
    assert_eq!(store.sieve_list(u).await.expect("list").len(), 1);
    assert_eq!(store.sieve_active(u).await.expect("active"), None);
    // Remembered ids: seen until they expire.
    assert!(!store.sieve_seen(u, "_vx", 100, 50).await.expect("seen"));
    assert!(store.sieve_seen(u, "_vx", 149, 50).await.expect("seen"));
    assert!(!store.sieve_seen(u, "_vy", 149, 50).await.expect("seen"));
    assert!(!store.sieve_seen(u, "_vx", 150, 50).await.expect("expired"));
    assert!(store
        .sieve_seen(u, "_vx", 151, 50)
        .await
        .expect("seen again"));
    // Forgotten: not seen any more; others stay.
    store
        .sieve_unsee(u, &["_vx".to_string(), "_unknown".to_string()])
        .await
        .expect("unsee");
    assert!(!store
        .sieve_seen(u, "_vx", 152, 50)
        .await
        .expect("forgotten"));
    assert!(store.sieve_seen(u, "_vy", 152, 50).await.expect("kept"));
}

/// Greylisting records: written, read back, expired by their own clocks.
async fn greylist(store: &SharedStore) {
    use crate::GreyEntry;
    assert_eq!(store.grey_get("t:x").await.expect("get"), None);
    let waiting = GreyEntry {
        first: 100,
        last: 100,
        passed: 0,
    };
    let passed = GreyEntry {
        first: 100,
        last: 500,
        passed: 2,
    };
    store.grey_put("t:waiting", waiting).await.expect("put");
    store.grey_put("t:passed", passed).await.expect("put");
    assert_eq!(store.grey_get("t:passed").await.expect("get"), Some(passed));
    // Passed ones by when last seen, waiting ones by when first seen.
    assert_eq!(store.grey_expire(400, 100).await.expect("expire"), 0);
    assert_eq!(store.grey_expire(400, 101).await.expect("expire"), 1);
    assert_eq!(store.grey_get("t:waiting").await.expect("get"), None);
    assert_eq!(store.grey_expire(501, 101).await.expect("expire"), 1);
    assert_eq!(store.grey_get("t:passed").await.expect("get"), None);
}

/// Spam models: counts add up per model; unknown tokens are left out.
async fn spam(store: &SharedStore) {
    let t = |s: &str| s.to_string();
    store
        .spam_learn(0, vec![(t("cheap"), 0, 2), (t("meeting"), 3, 0)], 3, 2)
        .await
        .expect("learn");
    store
        .spam_learn(0, vec![(t("cheap"), 1, 1)], 1, 1)
        .await
        .expect("learn");
    store
        .spam_learn(7, vec![(t("cheap"), 5, 0)], 5, 0)
        .await
        .expect("learn");
    let (totals, mut counts) = store
        .spam_counts(0, &[t("cheap"), t("meeting"), t("unknown")])
        .await
        .expect("counts");
    counts.sort();
    assert_eq!(totals, (4, 3));
    assert_eq!(counts, vec![(t("cheap"), 1, 3), (t("meeting"), 3, 0)]);
    let (totals, counts) = store.spam_counts(9, &[t("cheap")]).await.expect("counts");
    assert_eq!((totals, counts.len()), ((0, 0), 0), "an empty model");

    // A user's model learns each message once, and moves it across when told the other way.
    let d = domain("spam.test");
    store.domain_add(&d).await.expect("domain");
    let u = store
        .user_add(&addr("u@spam.test"), "x", 0)
        .await
        .expect("user");
    let m = u.0;
    let toks = [t("viagra"), t("hello")];
    assert!(store
        .spam_train(m, "blob1", &toks, true)
        .await
        .expect("train"));
    assert!(!store
        .spam_train(m, "blob1", &toks, true)
        .await
        .expect("again"));
    let (totals, mut counts) = store.spam_counts(m, &toks).await.expect("counts");
    counts.sort();
    assert_eq!(totals, (0, 1));
    assert_eq!(counts, vec![(t("hello"), 0, 1), (t("viagra"), 0, 1)]);
    assert!(store
        .spam_train(m, "blob1", &toks, false)
        .await
        .expect("to ham"));
    assert!(store
        .spam_train(m, "blob2", &toks[..1], false)
        .await
        .expect("ham"));
    let (totals, mut counts) = store.spam_counts(m, &toks).await.expect("counts");
    counts.sort();
    assert_eq!(totals, (2, 0));
    assert_eq!(counts, vec![(t("hello"), 1, 0), (t("viagra"), 2, 0)]);

    // Sender lists: set, move between lists, remove; gone with the account.
    use crate::SenderList::{Allow, Block};
    store
        .sender_list_set(u, "boss@corp.test", Some(Allow))
        .await
        .expect("allow");
    store
        .sender_list_set(u, "@spammy.test", Some(Allow))
        .await
        .expect("allow");
    store
        .sender_list_set(u, "@spammy.test", Some(Block))
        .await
        .expect("move");
    assert_eq!(
        store.sender_lists(u).await.expect("lists"),
        vec![(t("@spammy.test"), Block), (t("boss@corp.test"), Allow)]
    );
    store
        .sender_list_set(u, "boss@corp.test", None)
        .await
        .expect("remove");
    assert_eq!(store.sender_lists(u).await.expect("lists").len(), 1);
    store
        .user_remove(&addr("u@spam.test"))
        .await
        .expect("remove");
    assert!(store.sender_lists(u).await.expect("lists").is_empty());
    let (totals, _) = store.spam_counts(m, &toks).await.expect("counts");
    assert_eq!(totals, (0, 0), "a removed account's model goes with it");
}

/// Outbound usage: messages and new recipients counted per account and period.
async fn usage(store: &SharedStore) {
    let d = domain("usage.test");
    store.domain_add(&d).await.expect("domain");
    let a = store
        .user_add(&addr("u@usage.test"), "x", 0)
        .await
        .expect("user");
    let b = store
        .user_add(&addr("v@usage.test"), "x", 0)
        .await
        .expect("user");
    let r = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        store
            .usage_record(a, 100, &r(&["x@o.test", "y@o.test"]))
            .await
            .expect("record"),
        2
    );
    assert_eq!(
        store
            .usage_record(a, 200, &r(&["y@o.test", "z@o.test"]))
            .await
            .expect("record"),
        1
    );
    assert_eq!(
        store
            .usage_record(b, 200, &r(&["x@o.test"]))
            .await
            .expect("record"),
        1,
        "per account"
    );
    let u = store.usage_since(a, 50).await.expect("usage");
    assert_eq!((u.messages, u.recipients, u.new_recipients), (2, 4, 3));
    let u = store.usage_since(a, 100).await.expect("usage");
    assert_eq!((u.messages, u.new_recipients), (1, 1), "after 100 only");
    assert_eq!(
        store
            .recipients_known(a, &r(&["z@o.test", "w@o.test"]))
            .await
            .expect("known"),
        vec![true, false]
    );
    assert_eq!(store.usage_expire(150).await.expect("expire"), 1);
    assert_eq!(store.usage_since(a, 0).await.expect("usage").messages, 1);
    assert_eq!(
        store
            .recipients_known(a, &r(&["x@o.test"]))
            .await
            .expect("known"),
        vec![true],
        "recipients stay known"
    );

    // Holds: what the account queued is held, and what it queues while held; a release
    // frees both, once.
    let body = b"From: u@usage.test\r\n\r\nx\r\n";
    let blob = store.put_blob(body).await.expect("blob");
    let queued = |id: &str| crate::NewQueued {
        id: id.into(),
        sender: "u@usage.test".into(),
        blob: blob.clone(),
        size: body.len() as u64,
        recipients: vec![crate::QueueRecipient {
            address: "x@o.test".into(),
            notify: None,
            orcpt: None,
        }],
        envid: None,
        ret: None,
        smtputf8: false,
        requiretls: false,
        account: Some(a),
        held: false,
    };
    let held = |id: &'static str| async move {
        store
            .queue_get(id)
            .await
            .expect("get")
            .expect("queued")
            .held
    };
    store.queue_insert(queued("U1"), 10).await.expect("queue");
    assert!(!held("U1").await);
    assert_eq!(store.account_hold(a, "burst", 20).await.expect("hold"), 1);
    assert!(held("U1").await, "queued before the hold: held");
    store.queue_insert(queued("U2"), 30).await.expect("queue");
    assert!(held("U2").await, "queued during the hold: held");
    let state = store
        .account_hold_state(a)
        .await
        .expect("state")
        .expect("held");
    assert_eq!(
        (state.reason.as_str(), state.since, state.released),
        ("burst", 20, None)
    );
    assert!(store.account_hold_state(b).await.expect("state").is_none());
    assert_eq!(
        store.account_release(a, 40).await.expect("release"),
        Some(2)
    );
    assert!(!held("U1").await && !held("U2").await);
    assert_eq!(store.account_release(a, 50).await.expect("release"), None);
    assert_eq!(
        store
            .account_hold_state(a)
            .await
            .expect("state")
            .and_then(|h| h.released),
        Some(40)
    );
    assert_eq!(
        store
            .queue_get("U1")
            .await
            .expect("get")
            .expect("queued")
            .account,
        Some(a),
        "the queue knows who submitted it"
    );
    for id in ["U1", "U2"] {
        store.queue_delete(id).await.expect("delete");
    }

    // Signals about an account's mail, counted since a time; expired by age.
    use crate::Signal::{Bounce, Complaint};
    for (ts, s) in [(100, Bounce), (200, Bounce), (300, Complaint)] {
        store.signal_record(a, ts, s).await.expect("signal");
    }
    store.signal_record(b, 300, Bounce).await.expect("signal");
    assert_eq!(store.signals_since(a, 0).await.expect("since"), (2, 1));
    assert_eq!(store.signals_since(a, 150).await.expect("since"), (1, 1));
    assert_eq!(store.signals_since(a, 301).await.expect("since"), (0, 0));
    // Login networks: new once; counted by when first seen.
    assert!(store
        .login_record(a, "192.0.2.0/24", 100)
        .await
        .expect("login"));
    assert!(!store
        .login_record(a, "192.0.2.0/24", 500)
        .await
        .expect("login"));
    assert!(store
        .login_record(a, "198.51.100.0/24", 400)
        .await
        .expect("login"));
    assert!(store
        .login_record(b, "192.0.2.0/24", 400)
        .await
        .expect("login"));
    assert_eq!(store.new_login_networks_since(a, 0).await.expect("new"), 2);
    assert_eq!(
        store.new_login_networks_since(a, 200).await.expect("new"),
        1
    );
    // Signals before 250 go (a's two bounces); logins last used before 450 go (a's second
    // network and b's).
    assert_eq!(store.signals_expire(250, 450).await.expect("expire"), 4);
    assert_eq!(store.signals_since(a, 0).await.expect("since"), (0, 1));
    assert!(!store
        .login_record(a, "192.0.2.0/24", 600)
        .await
        .expect("login"));
    assert!(store
        .login_record(a, "198.51.100.0/24", 600)
        .await
        .expect("login"));

    // A removed account's queued mail is no longer anyone's (an account that later gets
    // the same id must not inherit its bounces); what was held stays held for an admin.
    assert_eq!(store.account_hold(a, "burst", 700).await.expect("hold"), 0);
    store.queue_insert(queued("U3"), 710).await.expect("queue");
    store
        .user_remove(&addr("u@usage.test"))
        .await
        .expect("remove");
    let left = store.queue_get("U3").await.expect("get").expect("queued");
    assert_eq!((left.account, left.held), (None, true));
    assert!(store.account_hold_state(a).await.expect("state").is_none());
    store.queue_delete("U3").await.expect("delete");
}

/// Bans: replaced by network, listed while in force, removable, expired ones forgotten.
async fn bans(store: &SharedStore) {
    let ban = |network: &str, created: i64, expires: Option<i64>| crate::BanRow {
        network: network.into(),
        reason: format!("test {network}"),
        created,
        expires,
    };
    store
        .ban_put(ban("192.0.2.7", 10, Some(100)))
        .await
        .expect("ban");
    store
        .ban_put(ban("2001:db8::/64", 20, None))
        .await
        .expect("ban");
    store
        .ban_put(ban("198.51.100.0/24", 5, Some(50)))
        .await
        .expect("ban");
    // A second ban of a network replaces the first.
    store
        .ban_put(ban("192.0.2.7", 30, Some(200)))
        .await
        .expect("ban");
    let now = store.bans(60).await.expect("bans");
    let names: Vec<&str> = now.iter().map(|b| b.network.as_str()).collect();
    assert_eq!(
        names,
        vec!["2001:db8::/64", "192.0.2.7"],
        "in force at 60, oldest first"
    );
    assert_eq!(now[1].expires, Some(200));
    assert_eq!(store.bans_expire(60).await.expect("expire"), 1);
    assert!(store.ban_remove("192.0.2.7").await.expect("remove"));
    assert!(!store.ban_remove("192.0.2.7").await.expect("remove"));
    assert_eq!(
        store.bans(i64::MAX - 1).await.expect("bans").len(),
        1,
        "no end"
    );
}

/// Reports: events kept until sent, received reports de-duplicated.
async fn reports(store: &SharedStore) {
    store
        .report_event_add("dmarc", "Example.COM", 100, "{\"a\":1}")
        .await
        .unwrap();
    store
        .report_event_add("dmarc", "example.com", 200, "{\"a\":2}")
        .await
        .unwrap();
    store
        .report_event_add("tlsrpt", "example.com", 150, "{}")
        .await
        .unwrap();
    let due = store.report_events("dmarc", 150).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].domain, "example.com");
    assert_eq!(due[0].data, "{\"a\":1}");
    let all = store.report_events("dmarc", 1000).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        store
            .report_events_delete("dmarc", &[all[0].id])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.report_events("dmarc", 1000).await.unwrap().len(), 1);
    assert_eq!(store.report_events("tlsrpt", 1000).await.unwrap().len(), 1);
    let r = crate::ReceivedReport {
        kind: "dmarc".into(),
        domain: "Example.com".into(),
        org: "google.com".into(),
        report_id: "123".into(),
        begin: 1000,
        end: 2000,
        received: 2100,
        data: "{}".into(),
    };
    assert!(store.received_report_add(r.clone()).await.unwrap());
    assert!(
        !store.received_report_add(r.clone()).await.unwrap(),
        "the same report twice is kept once"
    );
    let got = store
        .received_reports("dmarc", Some("EXAMPLE.com"), 1500)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].domain, "example.com");
    assert!(store
        .received_reports("dmarc", None, 2001)
        .await
        .unwrap()
        .is_empty());
}

/// The MTA-STS policy cache: one per domain, case-insensitive, replaced whole.
async fn sts(store: &SharedStore) {
    assert_eq!(store.sts_get("example.org").await.unwrap(), None);
    let p = crate::StsCached {
        domain: "Example.ORG".into(),
        id: "20260101".into(),
        policy: "version: STSv1\r\nmode: enforce\r\nmx: mx.example.org\r\nmax_age: 86400\r\n"
            .into(),
        fetched: 1000,
        expires: 87400,
    };
    store.sts_put(p.clone()).await.unwrap();
    let got = store.sts_get("example.org").await.unwrap().unwrap();
    assert_eq!(got.id, "20260101");
    assert_eq!(got.policy, p.policy);
    assert_eq!((got.fetched, got.expires), (1000, 87400));
    store
        .sts_put(crate::StsCached {
            id: "2".into(),
            ..p
        })
        .await
        .unwrap();
    assert_eq!(store.sts_get("EXAMPLE.org").await.unwrap().unwrap().id, "2");
}

/// The outbound queue: durable, per-recipient state, blob references, hold and release.
async fn queue(store: &SharedStore) {
    use crate::{Attempt, NewQueued, QueueRecipient, RcptStatus};
    let body = b"From: a@example.com\r\nSubject: out\r\n\r\nbye\r\n";
    let blob = store.put_blob(body).await.unwrap();
    let rcpt = |a: &str| QueueRecipient {
        address: a.into(),
        notify: None,
        orcpt: None,
    };
    let msg = NewQueued {
        id: "Q1".into(),
        sender: "a@example.com".into(),
        blob: blob.clone(),
        size: body.len() as u64,
        recipients: vec![
            rcpt("x@Remote.TEST"),
            rcpt("y@remote.test"),
            rcpt("z@other.test"),
        ],
        envid: Some("env-1".into()),
        ret: Some("HDRS".into()),
        smtputf8: false,
        requiretls: true,
        account: None,
        held: false,
    };
    store
        .queue_insert(msg.clone(), 1000)
        .await
        .expect("queue_insert");
    assert!(
        matches!(
            store.queue_insert(msg, 1000).await,
            Err(StoreError::Exists(_))
        ),
        "a queue id is used once"
    );
    // Queued content is referenced: collection keeps it.
    store.gc_blobs(std::time::Duration::ZERO).await.unwrap();
    assert!(store.get_blob(&blob).await.unwrap().is_some());
    let due = store.queue_due(1000, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].recipients.len(), 3);
    assert_eq!(
        due[0].recipients[0].domain, "remote.test",
        "domains are grouped lower-case"
    );
    assert_eq!(due[0].envid.as_deref(), Some("env-1"));
    assert!(due[0].requiretls, "REQUIRETLS is kept");
    assert!(
        store.queue_due(999, 10).await.unwrap().is_empty(),
        "not due before"
    );
    assert_eq!(
        store.queue_due_ids(1000, 10).await.unwrap(),
        vec!["Q1".to_string()]
    );
    assert!(store.queue_due_ids(999, 10).await.unwrap().is_empty());
    let left = store
        .queue_record(
            "Q1",
            &[
                ("x@Remote.TEST".into(), Attempt::Sent("250 ok".into())),
                (
                    "y@remote.test".into(),
                    Attempt::Retry("451 later".into(), 2000),
                ),
                ("z@other.test".into(), Attempt::Failed("550 no".into())),
            ],
        )
        .await
        .unwrap();
    assert!(!left, "one recipient is still pending");
    assert!(store.queue_due(1500, 10).await.unwrap().is_empty());
    let m = store.queue_get("Q1").await.unwrap().unwrap();
    let st: Vec<(RcptStatus, u32)> = m
        .recipients
        .iter()
        .map(|r| (r.status, r.attempts))
        .collect();
    assert_eq!(
        st,
        vec![
            (RcptStatus::Sent, 1),
            (RcptStatus::Pending, 1),
            (RcptStatus::Failed, 1)
        ]
    );
    assert_eq!(m.recipients[1].last_reply.as_deref(), Some("451 later"));
    // Held messages are never due; released ones are, and retry-now makes them due at once.
    store.queue_set_held("Q1", true).await.unwrap();
    assert!(store.queue_due(5000, 10).await.unwrap().is_empty());
    store.queue_set_held("Q1", false).await.unwrap();
    assert_eq!(store.queue_set_held_all(true).await.unwrap(), 1);
    assert!(store.queue_due(5000, 10).await.unwrap().is_empty());
    assert_eq!(store.queue_set_held_all(false).await.unwrap(), 1);
    assert_eq!(store.queue_retry_all(1500).await.unwrap(), 1);
    assert_eq!(store.queue_due(1500, 10).await.unwrap().len(), 1, "due now");
    store.queue_retry_now("Q1", 1600).await.unwrap();
    let due = store.queue_due(1600, 10).await.unwrap();
    assert_eq!(
        due[0].recipients.len(),
        1,
        "only the pending recipient is due"
    );
    assert_eq!(store.queue_list().await.unwrap().len(), 1);
    let left = store
        .queue_record(
            "Q1",
            &[("y@remote.test".into(), Attempt::Sent("250 ok".into()))],
        )
        .await
        .unwrap();
    assert!(left, "done: the message leaves the queue");
    assert!(store.queue_get("Q1").await.unwrap().is_none());
    assert!(matches!(
        store.queue_set_held("Q1", true).await,
        Err(StoreError::NotFound(_))
    ));
    // Its blob is no longer referenced by the queue.
    store.gc_blobs(std::time::Duration::ZERO).await.unwrap();
    assert!(store.get_blob(&blob).await.unwrap().is_none());
    // Deleting a queued message.
    let blob = store.put_blob(body).await.unwrap();
    store
        .queue_insert(
            NewQueued {
                id: "Q2".into(),
                sender: String::new(),
                blob,
                size: body.len() as u64,
                recipients: vec![rcpt("b@remote.test")],
                envid: None,
                ret: None,
                smtputf8: false,
                requiretls: false,
                account: None,
                held: false,
            },
            1000,
        )
        .await
        .unwrap();
    store.queue_delete("Q2").await.unwrap();
    assert!(store.queue_list().await.unwrap().is_empty());
    assert!(matches!(
        store.queue_delete("Q2").await,
        Err(StoreError::NotFound(_))
    ));
}

/// Access control lists and sharing between accounts (RFC 4314).
async fn acl(store: &SharedStore) {
    use crate::effective_rights;
    store
        .user_add(&addr("owner@example.com"), "h", 0)
        .await
        .unwrap();
    store
        .user_add(&addr("erin@example.com"), "h", 40)
        .await
        .unwrap();
    let carol = store.user_get("owner@example.com").await.unwrap().unwrap();
    let erin = store.user_get("erin@example.com").await.unwrap().unwrap();
    // By id too; an id nobody has is None.
    assert_eq!(store.user_by_id(erin.id).await.unwrap(), Some(erin.clone()));
    assert_eq!(store.user_by_id(AccountId(i64::MAX)).await.unwrap(), None);
    let team = store.mailbox_create(carol.id, "Team", None).await.unwrap();
    let private = store
        .mailbox_create(carol.id, "Private", None)
        .await
        .unwrap();
    assert!(store.acl_get(team.id).await.unwrap().is_empty());
    assert!(store
        .shared_mailboxes("erin@example.com")
        .await
        .unwrap()
        .is_empty());
    let lr = Rights::parse("lr").unwrap();
    store
        .acl_set(team.id, "erin@example.com", AclChange::Replace(lr))
        .await
        .expect("acl_set");
    store
        .acl_set(
            private.id,
            "-erin@example.com",
            AclChange::Replace(Rights::parse("r").unwrap()),
        )
        .await
        .unwrap();
    let acl = store.acl_get(team.id).await.unwrap();
    assert_eq!(acl.len(), 1);
    // A child starts with its parent's list.
    let child = store
        .mailbox_create(carol.id, "Team/2026", None)
        .await
        .unwrap();
    assert_eq!(store.acl_get(child.id).await.unwrap(), acl);
    store.mailbox_delete(carol.id, "Team/2026").await.unwrap();
    assert_eq!(effective_rights(&acl, "erin@example.com"), lr);
    // Only positive entries share; the owner's own mailboxes are not "shared with" her.
    let shared = store.shared_mailboxes("erin@example.com").await.unwrap();
    assert_eq!(
        shared
            .iter()
            .map(|s| s.mailbox.name.as_str())
            .collect::<Vec<_>>(),
        vec!["Team"]
    );
    assert_eq!(shared[0].owner, addr("owner@example.com"));
    assert!(store
        .shared_mailboxes("owner@example.com")
        .await
        .unwrap()
        .is_empty());
    // `anyone` reaches every user; replacing an entry keeps one entry.
    store
        .acl_set(
            private.id,
            "anyone",
            AclChange::Replace(Rights::parse("lrs").unwrap()),
        )
        .await
        .unwrap();
    store
        .acl_set(
            team.id,
            "erin@example.com",
            AclChange::Replace(Rights::parse("lrsi").unwrap()),
        )
        .await
        .unwrap();
    // +rights and -rights change the entry in one step (RFC 4314 3.1).
    let w = Rights::parse("w").unwrap();
    let added = store
        .acl_set(team.id, "erin@example.com", AclChange::Add(w))
        .await
        .unwrap();
    assert_eq!(added.to_letters(), "lrswi");
    let removed = store
        .acl_set(team.id, "erin@example.com", AclChange::Remove(w))
        .await
        .unwrap();
    assert_eq!(removed.to_letters(), "lrsi");
    let shared = store.shared_mailboxes("erin@example.com").await.unwrap();
    assert_eq!(shared.len(), 2);
    let private_acl = &shared
        .iter()
        .find(|s| s.mailbox.id == private.id)
        .unwrap()
        .acl;
    assert_eq!(
        effective_rights(private_acl, "erin@example.com").to_string(),
        "ls",
        "the negative entry takes r away from anyone's lrs"
    );
    // A cache with both parts: the envelope alone reads back as stored.
    let cache = MessageCache {
        envelope: crate::Envelope {
            subject: Some("shared".into()),
            message_id: Some("<s@x>".into()),
            ..Default::default()
        },
        body: crate::BodyStructure::default(),
        message_id: Some("s@x".into()),
        header_size: 19,
    };
    // Copy across accounts: usage moves to the destination's owner, quota applies to it.
    let body = b"Subject: shared\r\n\r\nabc\r\n";
    let blob = store.put_blob(body).await.unwrap();
    let stored = store
        .deliver(vec![NewMessage {
            account: carol.id,
            target: Target::Mailbox(team.id),
            blob: blob.clone(),
            blob_size: body.len() as u64,
            prefix: Vec::new(),
            headers: b"Subject: shared\r\n\r\n".to_vec(),
            flags: vec![],
            internal_date: 1_700_000_000,
            cache: cache.clone(),
            queue_id: None,
        }])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let erin_inbox = store
        .mailboxes(erin.id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.role == Some(MailboxRole::Inbox))
        .unwrap();
    let pairs = store
        .copy(team.id, &[stored.uid], erin_inbox.id, false, Rights::ALL)
        .await
        .expect("copy between accounts");
    assert_eq!(pairs, vec![(stored.uid, Uid(1))]);
    assert_eq!(
        store
            .message_envelopes(team.id, &[stored.uid])
            .await
            .unwrap(),
        vec![(stored.uid, cache.envelope.clone())]
    );
    let used = |who: &'static str| async move { store.user_get(who).await.unwrap().unwrap().used };
    assert_eq!(used("erin@example.com").await, body.len() as u64);
    assert_eq!(used("owner@example.com").await, body.len() as u64);
    assert_eq!(
        store
            .message_content(erin_inbox.id, Uid(1))
            .await
            .unwrap()
            .unwrap(),
        body.to_vec()
    );
    // Erin's quota (40 octets) has no room for a second copy.
    assert!(matches!(
        store
            .copy(team.id, &[stored.uid], erin_inbox.id, false, Rights::ALL)
            .await,
        Err(StoreError::Conflict(_))
    ));
    // A move between accounts takes the usage along.
    store
        .copy(erin_inbox.id, &[Uid(1)], team.id, true, Rights::ALL)
        .await
        .expect("move between accounts");
    assert_eq!(used("erin@example.com").await, 0);
    assert_eq!(used("owner@example.com").await, 2 * body.len() as u64);
    // A copy keeps only the flags the copier may set (RFC 4314 4), from the stored flags.
    store
        .flags_update(
            team.id,
            &[stored.uid],
            FlagMode::Add,
            &["\\Seen".into(), "\\Deleted".into(), "$Phish".into()],
            None,
        )
        .await
        .unwrap();
    let pairs = store
        .copy(
            team.id,
            &[stored.uid],
            private.id,
            false,
            Rights::parse("lris").unwrap(),
        )
        .await
        .unwrap();
    let copied = store
        .messages_by_uid(private.id, &[pairs[0].1])
        .await
        .unwrap();
    assert_eq!(copied[0].flags, vec!["\\Seen".to_string()]);
    // Replacing within rights: only \Seen may change here, the rest stays.
    store
        .flags_update(
            team.id,
            &[stored.uid],
            FlagMode::ReplaceAllowed(Rights::parse("s").unwrap()),
            &["$Other".into()],
            None,
        )
        .await
        .unwrap();
    let now = store.messages_by_uid(team.id, &[stored.uid]).await.unwrap();
    assert_eq!(
        now[0].flags,
        vec!["\\Deleted".to_string(), "$Phish".to_string()]
    );
    // Removing an entry, deleting a mailbox and removing a user leave no entries behind.
    store
        .acl_set(private.id, "anyone", AclChange::Replace(Rights::NONE))
        .await
        .unwrap();
    assert_eq!(store.acl_get(private.id).await.unwrap().len(), 1);
    store.mailbox_delete(carol.id, "Private").await.unwrap();
    assert!(matches!(
        store.acl_get(private.id).await.map(|a| a.len()),
        Ok(0) | Err(StoreError::NotFound(_))
    ));
    // A deleted mailbox's UIDVALIDITY is never given again, not even to the next mailbox.
    let newest = store
        .mailbox_create(carol.id, "Newest", None)
        .await
        .unwrap();
    store.mailbox_delete(carol.id, "Newest").await.unwrap();
    let next = store.mailbox_create(carol.id, "Next", None).await.unwrap();
    assert_ne!(
        (next.id, next.uid_validity),
        (newest.id, newest.uid_validity),
        "(id, UIDVALIDITY) names one mailbox forever"
    );
    assert!(next.uid_validity > newest.uid_validity);
    store.user_remove(&addr("erin@example.com")).await.unwrap();
    assert!(store.acl_get(team.id).await.unwrap().is_empty());
    assert!(matches!(
        store
            .acl_set(MailboxId(i64::MAX), "anyone", AclChange::Replace(lr))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn login(store: &SharedStore) {
    let hash = crate::password::hash_password("right pw").unwrap();
    store
        .user_add(&addr("dave@example.com"), &hash, 0)
        .await
        .unwrap();
    let ok = crate::directory::authenticate(store.as_ref(), "Dave@EXAMPLE.com", "right pw")
        .await
        .unwrap();
    assert_eq!(
        ok.map(|u| u.address),
        Some(addr("dave@example.com")),
        "login is case-insensitive"
    );
    for (login, pw) in [
        ("dave@example.com", "wrong"),
        ("nobody@example.com", "right pw"),
        ("not an address", "x"),
    ] {
        assert!(
            crate::directory::authenticate(store.as_ref(), login, pw)
                .await
                .unwrap()
                .is_none(),
            "{login}/{pw} must fail"
        );
    }
    // A remembered login ends when the password changes, and never admits a wrong one.
    let auth = crate::directory::Authenticator::new(2, std::time::Duration::from_secs(60));
    let check = |pw: &'static str| {
        let (auth, store) = (&auth, store.clone());
        async move {
            auth.authenticate(store.as_ref(), "dave@example.com", pw)
                .await
                .unwrap()
                .is_some()
        }
    };
    assert!(check("right pw").await);
    assert!(check("right pw").await, "remembered");
    assert!(!check("wrong").await);
    let new_hash = crate::password::hash_password("new pw").unwrap();
    store
        .user_set_password(&addr("dave@example.com"), &new_hash)
        .await
        .unwrap();
    assert!(!check("right pw").await, "the old password after a change");
    assert!(check("new pw").await);

    // App passwords: each works beside the account's password, by name, until revoked.
    let dave = addr("dave@example.com");
    let phone = crate::password::app_password_generate();
    let laptop = crate::password::app_password_generate();
    let digest = |p: &str| crate::password::app_password_digest(p).unwrap();
    store
        .app_password_add(&dave, "phone", &digest(&phone), 100)
        .await
        .unwrap();
    store
        .app_password_add(&dave, "laptop", &digest(&laptop), 200)
        .await
        .unwrap();
    assert!(matches!(
        store
            .app_password_add(&dave, "phone", &digest(&laptop), 300)
            .await,
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        store
            .app_password_add(&addr("nobody@example.com"), "x", &digest(&phone), 1)
            .await,
        Err(StoreError::NotFound(_))
    ));
    let login = auth
        .login(store.as_ref(), "dave@example.com", &phone.to_uppercase())
        .await
        .unwrap()
        .expect("the app password logs in");
    assert_eq!(login.app_password.as_deref(), Some("phone"));
    assert!(check("new pw").await, "the account's password still works");
    let by_password = auth
        .login(store.as_ref(), "dave@example.com", "new pw")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_password.app_password, None);
    // Another user's app password is not this user's.
    let hash = crate::password::hash_password("other pw").unwrap();
    store
        .user_add(&addr("appuser2@example.com"), &hash, 0)
        .await
        .unwrap();
    assert!(auth
        .login(store.as_ref(), "appuser2@example.com", &phone)
        .await
        .unwrap()
        .is_none());
    // The use is recorded (in the background).
    let mut used = None;
    for _ in 0..100 {
        let list = store.app_passwords(&dave).await.unwrap();
        assert_eq!(
            list.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            vec!["laptop", "phone"]
        );
        used = list[1].last_used;
        if used.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(used.is_some(), "last use recorded");
    store.app_password_remove(&dave, "phone").await.unwrap();
    assert!(matches!(
        store.app_password_remove(&dave, "phone").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(auth
        .login(store.as_ref(), "dave@example.com", &phone)
        .await
        .unwrap()
        .is_none());
    assert!(auth
        .login(store.as_ref(), "dave@example.com", &laptop)
        .await
        .unwrap()
        .is_some());
}

async fn directory(store: &SharedStore) {
    let d = domain("Example.COM");
    store.domain_add(&d).await.expect("domain_add");
    assert!(
        matches!(store.domain_add(&d).await, Err(StoreError::Exists(_))),
        "adding a domain twice must fail with Exists"
    );
    assert_eq!(store.domains().await.expect("domains").len(), 1);
    assert!(
        matches!(
            store.user_add(&addr("a@elsewhere.test"), "h", 0).await,
            Err(StoreError::Conflict(_))
        ),
        "a user outside hosted domains must be refused"
    );
    let id = store
        .user_add(&addr("Alice@example.com"), "hash1", 1000)
        .await
        .expect("user_add");
    assert!(
        matches!(
            store.user_add(&addr("ALICE@EXAMPLE.COM"), "h", 0).await,
            Err(StoreError::Exists(_))
        ),
        "user addresses are case-insensitive"
    );
    let u = store
        .user_get("alice@example.com")
        .await
        .expect("user_get")
        .expect("user found by key");
    assert_eq!(u.id, id);
    assert_eq!(u.address.local(), "Alice");
    assert_eq!(u.quota, 1000);
    assert_eq!(u.used, 0);
    store
        .user_set_password(&addr("alice@example.com"), "hash2")
        .await
        .expect("set password");
    store
        .user_set_quota(&addr("alice@example.com"), 5000)
        .await
        .expect("set quota");
    let u = store.user_get("alice@example.com").await.unwrap().unwrap();
    assert_eq!((u.password_hash.as_str(), u.quota), ("hash2", 5000));
    assert!(matches!(
        store.user_set_quota(&addr("nobody@example.com"), 1).await,
        Err(StoreError::NotFound(_))
    ));

    let boxes = store.mailboxes(id).await.expect("mailboxes");
    for role in MailboxRole::ALL {
        let mb = boxes
            .iter()
            .find(|m| m.role == Some(role))
            .unwrap_or_else(|| panic!("new user lacks the {role:?} mailbox"));
        assert_eq!(mb.name, role.default_name());
        assert_eq!(mb.uid_next, Uid(1));
    }
    let validities: std::collections::BTreeSet<_> = boxes.iter().map(|m| m.uid_validity).collect();
    assert_eq!(
        validities.len(),
        boxes.len(),
        "UIDVALIDITY differs per mailbox"
    );

    assert!(
        matches!(
            store
                .alias_add(&addr("alice@example.com"), &[addr("x@example.com")])
                .await,
            Err(StoreError::Exists(_))
        ),
        "an alias must not shadow a user"
    );
    store
        .alias_add(
            &addr("team@example.com"),
            &[addr("alice@example.com"), addr("ext@remote.test")],
        )
        .await
        .expect("alias_add");
    let a = store.alias_get("team@example.com").await.unwrap().unwrap();
    assert_eq!(a.targets.len(), 2);
    assert!(
        !a.sendable,
        "an alias is not sendable until the admin says so"
    );
    let alice = store.user_get("alice@example.com").await.unwrap().unwrap();
    let may = |a: &'static str| {
        let (store, alice) = (store.clone(), alice.clone());
        async move {
            crate::directory::may_send_as(store.as_ref(), &alice, &addr(a), Some('+'))
                .await
                .unwrap()
        }
    };
    assert!(may("alice@example.com").await && may("Alice@EXAMPLE.com").await);
    assert!(
        may("alice+lists@example.com").await,
        "a sub-address of her own"
    );
    assert!(!may("team@example.com").await, "not sendable yet");
    store
        .alias_set_sendable(&addr("team@example.com"), true)
        .await
        .expect("alias_set_sendable");
    assert!(
        may("team@example.com").await,
        "a sendable alias that delivers to her"
    );
    assert!(!may("ext@remote.test").await && !may("bob@example.com").await);
    assert!(
        store
            .alias_get("team@example.com")
            .await
            .unwrap()
            .unwrap()
            .sendable
    );
    assert!(matches!(
        store
            .alias_set_sendable(&addr("nobody@example.com"), true)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.aliases(Some(&d)).await.unwrap().len(), 1);
    assert!(
        matches!(store.domain_remove(&d).await, Err(StoreError::Conflict(_))),
        "a domain with users cannot be removed"
    );
    store
        .user_add(&addr("bob@example.com"), "h", 0)
        .await
        .unwrap();
    assert_eq!(store.users(Some(&d)).await.unwrap().len(), 2);
    store
        .user_remove(&addr("bob@example.com"))
        .await
        .expect("user_remove");
    assert!(store.user_get("bob@example.com").await.unwrap().is_none());
    assert!(matches!(
        store.user_remove(&addr("bob@example.com")).await,
        Err(StoreError::NotFound(_))
    ));
    let d2 = domain("empty.test");
    store.domain_add(&d2).await.unwrap();
    store
        .domain_remove(&d2)
        .await
        .expect("empty domain removable");
    assert!(store.domain_get(&d2).await.unwrap().is_none());
}

async fn resolution(store: &SharedStore) {
    let d = domain("example.com");
    let r = resolve(store.as_ref(), &addr("ALICE+news@example.com"), Some('+'))
        .await
        .unwrap();
    match r {
        Resolution::Targets { local, external } => {
            assert_eq!(local.len(), 1);
            assert_eq!(local[0].tag.as_deref(), Some("news"));
            assert!(external.is_empty());
        }
        other => panic!("plus-addressing failed: {other:?}"),
    }
    assert_eq!(
        resolve(store.as_ref(), &addr("alice+x@example.com"), None)
            .await
            .unwrap(),
        Resolution::Unknown,
        "plus-addressing can be turned off"
    );
    assert_eq!(
        resolve(store.as_ref(), &addr("x@remote.test"), Some('+'))
            .await
            .unwrap(),
        Resolution::NotLocal
    );
    match resolve(store.as_ref(), &addr("team@example.com"), Some('+'))
        .await
        .unwrap()
    {
        Resolution::Targets { local, external } => {
            assert_eq!(local.len(), 1);
            assert_eq!(external, vec![addr("ext@remote.test")]);
        }
        other => panic!("alias failed: {other:?}"),
    }
    assert_eq!(
        resolve(store.as_ref(), &addr("nobody@example.com"), Some('+'))
            .await
            .unwrap(),
        Resolution::Unknown
    );
    store
        .domain_set_catch_all(&d, Some(&addr("alice@example.com")))
        .await
        .unwrap();
    assert!(matches!(
        resolve(store.as_ref(), &addr("nobody@example.com"), Some('+'))
            .await
            .unwrap(),
        Resolution::Targets { .. }
    ));
    store.domain_set_catch_all(&d, None).await.unwrap();
    // Loops are bounded.
    store
        .alias_add(&addr("l1@example.com"), &[addr("l2@example.com")])
        .await
        .unwrap();
    store
        .alias_add(&addr("l2@example.com"), &[addr("l1@example.com")])
        .await
        .unwrap();
    assert_eq!(
        resolve(store.as_ref(), &addr("l1@example.com"), Some('+'))
            .await
            .unwrap(),
        Resolution::Unknown
    );
    // IDNA: the Unicode and ASCII forms are one domain.
    let idn = domain("bücher.example");
    store.domain_add(&idn).await.unwrap();
    store
        .user_add(&addr("ñoño@bücher.example"), "h", 0)
        .await
        .unwrap();
    assert!(matches!(
        resolve(
            store.as_ref(),
            &addr("ÑOÑO@xn--bcher-kva.example"),
            Some('+')
        )
        .await
        .unwrap(),
        Resolution::Targets { .. }
    ));
}

async fn blobs(store: &SharedStore) {
    let id = store.put_blob(b"hello blob").await.expect("put_blob");
    let again = store.put_blob(b"hello blob").await.expect("put_blob twice");
    assert_eq!(id, again, "blobs are content-addressed");
    assert_eq!(
        store.get_blob(&id).await.unwrap().as_deref(),
        Some(&b"hello blob"[..])
    );
    let missing = crate::BlobId("0".repeat(64));
    assert_eq!(store.get_blob(&missing).await.unwrap(), None);
    // Young blobs are never collected: they may belong to a delivery in progress.
    assert_eq!(
        store
            .gc_blobs(std::time::Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert!(store.get_blob(&id).await.unwrap().is_some());
}

async fn blob_gc(store: &SharedStore) {
    // Runs after `delivery`: its blob is referenced, the orphan written here is not.
    let orphan = store
        .put_blob(b"orphan: its delivery never committed")
        .await
        .unwrap();
    let n = store
        .gc_blobs(std::time::Duration::ZERO)
        .await
        .expect("gc_blobs");
    assert!(n >= 1, "the orphan was collected");
    assert_eq!(store.get_blob(&orphan).await.unwrap(), None);
    let alice = store.user_get("alice@example.com").await.unwrap().unwrap();
    let inbox = store.mailboxes(alice.id).await.unwrap()[0].id;
    for m in store.messages(inbox).await.unwrap() {
        assert!(
            store.message_content(inbox, m.uid).await.unwrap().is_some(),
            "a referenced blob survives collection"
        );
    }
    // Storing collected content again works.
    let again = store
        .put_blob(b"orphan: its delivery never committed")
        .await
        .unwrap();
    assert_eq!(again, orphan);
    assert!(store.get_blob(&again).await.unwrap().is_some());
    // A big orphan (a backend may keep big blobs elsewhere than small ones) goes the same way.
    let big = vec![b'x'; 300 * 1024];
    let big_id = store.put_blob(&big).await.unwrap();
    assert_eq!(
        store.get_blob(&big_id).await.unwrap().as_deref(),
        Some(&big[..])
    );
    assert!(store.gc_blobs(std::time::Duration::ZERO).await.unwrap() >= 1);
    assert_eq!(store.get_blob(&big_id).await.unwrap(), None);
}

async fn delivery(store: &SharedStore) {
    let alice = store.user_get("alice@example.com").await.unwrap().unwrap();
    let mut events = store.subscribe();
    let body = b"Subject: hi\r\n\r\nbody\r\n";
    let blob = store.put_blob(body).await.unwrap();
    let msg = |prefix: &str| NewMessage {
        account: alice.id,
        target: Target::Role(MailboxRole::Inbox),
        blob: blob.clone(),
        blob_size: body.len() as u64,
        prefix: prefix.as_bytes().to_vec(),
        headers: b"Subject: hi\r\n\r\n".to_vec(),
        flags: vec![],
        internal_date: 1_700_000_000,
        cache: MessageCache {
            message_id: Some("m1@example.com".into()),
            ..Default::default()
        },
        queue_id: Some("q1".into()),
    };
    let results = store
        .deliver(vec![msg("Delivered-To: a\r\n"), msg("Delivered-To: b\r\n")])
        .await
        .expect("deliver");
    let stored: Vec<_> = results.into_iter().map(|r| r.expect("stored")).collect();
    assert_eq!(stored[0].uid, Uid(1));
    assert_eq!(stored[1].uid, Uid(2), "UIDs are assigned in order");
    assert!(
        stored[1].modseq > stored[0].modseq,
        "MODSEQ strictly increases"
    );
    for s in &stored {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
            .await
            .expect("change event in time")
            .expect("change event");
        assert_eq!(ev, ChangeEvent::MessageAdded(*s));
    }
    let inbox = stored[0].mailbox;
    let msgs = store.messages(inbox).await.unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        msgs[0].size,
        (body.len() + "Delivered-To: a\r\n".len()) as u64
    );
    assert_eq!(msgs[0].cache.message_id.as_deref(), Some("m1@example.com"));
    let content = store.message_content(inbox, Uid(2)).await.unwrap().unwrap();
    assert_eq!(content, [&b"Delivered-To: b\r\n"[..], body].concat());
    assert!(store
        .message_content(inbox, Uid(99))
        .await
        .unwrap()
        .is_none());
    let boxes = store.mailboxes(alice.id).await.unwrap();
    let mb = boxes.iter().find(|m| m.id == inbox).unwrap();
    assert_eq!(mb.uid_next, Uid(3));
    assert_eq!(mb.highest_modseq, stored[1].modseq);
    let used = store
        .user_get("alice@example.com")
        .await
        .unwrap()
        .unwrap()
        .used;
    assert_eq!(
        used,
        msgs.iter().map(|m| m.size).sum::<u64>(),
        "quota usage tracks sizes"
    );
}

async fn log(store: &SharedStore) {
    let ev = |session: &str, kind: &str, ts: i64, rcpt: Option<&str>| LogEvent {
        ts,
        session: session.into(),
        queue_id: Some(format!("q-{session}")),
        kind: kind.into(),
        ip: Some("192.0.2.1".into()),
        sender: Some("sender@remote.test".into()),
        recipient: rcpt.map(Into::into),
        message_id: Some("abc@remote.test".into()),
        outcome: Some("accepted".into()),
        reply: Some("250 2.1.5 OK".into()),
        detail: serde_json::json!({"n": 1}),
    };
    store
        .log_append(vec![
            ev("s1", "smtp.connect", 1_000, None),
            ev("s1", "smtp.rcpt", 2_000, Some("alice@example.com")),
            ev("s2", "smtp.rcpt", 3_000, Some("bob@example.com")),
        ])
        .await
        .expect("log_append");
    let all = store
        .log_search(&LogFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let by_rcpt = store
        .log_search(&LogFilter {
            recipient: Some("ALICE".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_rcpt.len(),
        2,
        "whole session s1 is returned: {by_rcpt:?}"
    );
    assert!(by_rcpt.iter().all(|e| e.session == "s1"));
    assert_eq!(by_rcpt[0].kind, "smtp.connect", "events in time order");
    assert_eq!(by_rcpt[1].detail, serde_json::json!({"n": 1}));
    let by_time = store
        .log_search(&LogFilter {
            since: Some(2_500),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_time.len(), 1);
    let by_kind = store
        .log_search(&LogFilter {
            kind: Some("smtp.rc".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_kind.len(),
        3,
        "sessions s1 and s2 have an smtp.rc* event"
    );
    let none = store
        .log_search(&LogFilter {
            kind: Some("rcpt".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty(), "a prefix, not a substring");
    let by_msgid = store
        .log_search(&LogFilter {
            message_id: Some("<abc@remote.test>".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_msgid.len(), 3, "angle brackets are optional");
    assert_eq!(store.log_expire(2_500).await.unwrap(), 2);
    assert_eq!(
        store
            .log_search(&LogFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn mailboxes(store: &SharedStore) {
    let alice = store
        .user_get("alice@example.com")
        .await
        .unwrap()
        .unwrap()
        .id;
    let names = |v: Vec<crate::Mailbox>| v.into_iter().map(|m| m.name).collect::<Vec<_>>();
    let mb = store
        .mailbox_create(alice, "Lists/rust/announce", None)
        .await
        .expect("mailbox_create");
    assert_eq!(mb.name, "Lists/rust/announce");
    let all = names(store.mailboxes(alice).await.unwrap());
    for n in ["Lists", "Lists/rust", "Lists/rust/announce"] {
        assert!(all.contains(&n.to_string()), "parents are created: {all:?}");
    }
    assert!(matches!(
        store.mailbox_create(alice, "Lists/rust", None).await,
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        store.mailbox_create(alice, "inbox", None).await,
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        store.mailbox_create(alice, "a//b", None).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.mailbox_create(alice, "/a", None).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        matches!(
            store
                .mailbox_create(alice, "Bin", Some(MailboxRole::Trash))
                .await,
            Err(StoreError::Conflict(_))
        ),
        "one Trash per account"
    );
    // Delete: not INBOX, not with children.
    assert!(matches!(
        store.mailbox_delete(alice, "INBOX").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.mailbox_delete(alice, "Lists").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.mailbox_delete(alice, "Nope").await,
        Err(StoreError::NotFound(_))
    ));
    store
        .mailbox_delete(alice, "Lists/rust/announce")
        .await
        .expect("delete leaf");
    // Rename moves children and keeps UIDVALIDITY.
    let before = store.mailboxes(alice).await.unwrap();
    let v = before
        .iter()
        .find(|m| m.name == "Lists/rust")
        .unwrap()
        .uid_validity;
    store
        .mailbox_rename(alice, "Lists", "Archive/Lists")
        .await
        .expect("rename");
    let after = store.mailboxes(alice).await.unwrap();
    let moved = after
        .iter()
        .find(|m| m.name == "Archive/Lists/rust")
        .expect("child renamed");
    assert_eq!(moved.uid_validity, v);
    assert!(!after.iter().any(|m| m.name.starts_with("Lists")));
    assert!(matches!(
        store
            .mailbox_rename(alice, "Archive", "Archive/Inner")
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.mailbox_rename(alice, "Sent", "Drafts").await,
        Err(StoreError::Exists(_))
    ));
    // Subscriptions are names, existing or not.
    let subs = store.subscriptions(alice).await.unwrap();
    assert!(
        subs.contains(&"INBOX".to_string()) && subs.len() >= 6,
        "{subs:?}"
    );
    store
        .subscription_set(alice, "Not/There", true)
        .await
        .unwrap();
    assert!(store
        .subscriptions(alice)
        .await
        .unwrap()
        .contains(&"Not/There".to_string()));
    store
        .subscription_set(alice, "Not/There", false)
        .await
        .unwrap();
    assert!(!store
        .subscriptions(alice)
        .await
        .unwrap()
        .contains(&"Not/There".to_string()));
    assert!(after.iter().find(|m| m.name == "INBOX").unwrap().subscribed);
}

async fn messages(store: &SharedStore) {
    let alice = store.user_get("alice@example.com").await.unwrap().unwrap();
    let boxes = store.mailboxes(alice.id).await.unwrap();
    let inbox = boxes
        .iter()
        .find(|m| m.role == Some(MailboxRole::Inbox))
        .unwrap()
        .clone();
    let archive = boxes
        .iter()
        .find(|m| m.role == Some(MailboxRole::Archive))
        .unwrap()
        .clone();
    let mut events = store.subscribe();
    // Flags: one new MODSEQ for the change, canonical system flags, unknown UIDs ignored.
    let up = store
        .flags_update(
            inbox.id,
            &[Uid(1), Uid(2), Uid(99)],
            FlagMode::Add,
            &["\\seen".into(), "$Label".into()],
            None,
        )
        .await
        .expect("flags_update");
    assert_eq!(up.changed.len(), 2);
    let m1 = up.changed[0].1;
    assert!(m1 > inbox.highest_modseq, "MODSEQ increases");
    assert_eq!(
        up.changed[0].2,
        vec!["\\Seen".to_string(), "$Label".to_string()]
    );
    match tokio::time::timeout(std::time::Duration::from_secs(5), events.recv()).await {
        Ok(Ok(ChangeEvent::FlagsChanged { uid, modseq, .. })) => {
            assert_eq!((uid, modseq), (Uid(1), m1))
        }
        other => panic!("flags event: {other:?}"),
    }
    let none = store
        .flags_update(inbox.id, &[Uid(1)], FlagMode::Add, &["\\Seen".into()], None)
        .await
        .unwrap();
    assert!(none.changed.is_empty(), "a no-op changes nothing");
    let up = store
        .flags_update(
            inbox.id,
            &[Uid(1)],
            FlagMode::Remove,
            &["$label".into()],
            None,
        )
        .await
        .unwrap();
    assert_eq!(up.changed[0].2, vec!["\\Seen".to_string()]);
    let m2 = up.changed[0].1;
    // RFC 7162 3.1.3: UNCHANGEDSINCE older than the message's MODSEQ leaves it alone.
    let up = store
        .flags_update(
            inbox.id,
            &[Uid(1), Uid(2)],
            FlagMode::Replace,
            &["\\Flagged".into()],
            Some(m1),
        )
        .await
        .unwrap();
    assert_eq!(up.modified, vec![Uid(1)]);
    assert_eq!(up.changed.len(), 1);
    assert!(up.changed[0].1 > m2);
    let now = store.mailboxes(alice.id).await.unwrap();
    assert_eq!(
        now.iter()
            .find(|m| m.id == inbox.id)
            .unwrap()
            .highest_modseq,
        up.changed[0].1
    );

    // Copy keeps flags and content, takes new UIDs, adds usage.
    let used = store
        .user_get("alice@example.com")
        .await
        .unwrap()
        .unwrap()
        .used;
    let pairs = store
        .copy(inbox.id, &[Uid(1), Uid(5)], archive.id, false, Rights::ALL)
        .await
        .expect("copy");
    assert_eq!(pairs, vec![(Uid(1), Uid(1))]);
    let copied = store.messages(archive.id).await.unwrap();
    assert_eq!(copied[0].flags, vec!["\\Seen".to_string()]);
    assert_eq!(
        store.message_content(archive.id, Uid(1)).await.unwrap(),
        store.message_content(inbox.id, Uid(1)).await.unwrap()
    );
    let used2 = store
        .user_get("alice@example.com")
        .await
        .unwrap()
        .unwrap()
        .used;
    assert_eq!(used2, used + copied[0].size);
    // Over quota: refused whole.
    store.user_set_quota(&alice.address, used2).await.unwrap();
    assert!(matches!(
        store
            .copy(inbox.id, &[Uid(1)], archive.id, false, Rights::ALL)
            .await,
        Err(StoreError::Conflict(_))
    ));
    store.user_set_quota(&alice.address, 0).await.unwrap();
    // Move: the source is expunged, usage unchanged.
    let before_move = store
        .mailboxes(alice.id)
        .await
        .unwrap()
        .iter()
        .find(|m| m.id == inbox.id)
        .unwrap()
        .highest_modseq;
    let pairs = store
        .copy(inbox.id, &[Uid(2)], archive.id, true, Rights::ALL)
        .await
        .expect("move");
    assert_eq!(pairs, vec![(Uid(2), Uid(2))]);
    assert!(store
        .message_content(inbox.id, Uid(2))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store
            .user_get("alice@example.com")
            .await
            .unwrap()
            .unwrap()
            .used,
        used2
    );
    assert_eq!(
        store.expunged_since(inbox.id, before_move).await.unwrap(),
        vec![Uid(2)]
    );
    // Expunge.
    let gone = store
        .expunge(inbox.id, &[Uid(1), Uid(1), Uid(7)])
        .await
        .expect("expunge");
    assert_eq!(gone, vec![Uid(1)]);
    assert_eq!(
        store.expunged_since(inbox.id, before_move).await.unwrap(),
        vec![Uid(1), Uid(2)]
    );
    assert!(store.messages(inbox.id).await.unwrap().is_empty());
    assert_eq!(
        store
            .user_get("alice@example.com")
            .await
            .unwrap()
            .unwrap()
            .used,
        store
            .messages(archive.id)
            .await
            .unwrap()
            .iter()
            .map(|m| m.size)
            .sum::<u64>()
    );
    // UIDs are never reused after an expunge.
    let body = b"Subject: again\r\n\r\nx\r\n";
    let blob = store.put_blob(body).await.unwrap();
    let stored = store
        .deliver(vec![NewMessage {
            account: alice.id,
            target: Target::Role(MailboxRole::Inbox),
            blob,
            blob_size: body.len() as u64,
            prefix: vec![],
            headers: vec![],
            flags: vec![],
            internal_date: 0,
            cache: MessageCache::default(),
            queue_id: None,
        }])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(stored.uid, Uid(3));
    // APPEND: straight into a named mailbox; another account's mailbox is not found.
    let body = b"Subject: appended\r\n\r\ny\r\n";
    let blob = store.put_blob(body).await.unwrap();
    let append = |account, mailbox| NewMessage {
        account,
        target: Target::Mailbox(mailbox),
        blob: blob.clone(),
        blob_size: body.len() as u64,
        prefix: vec![],
        headers: b"Subject: appended\r\n\r\n".to_vec(),
        flags: vec!["\\Seen".into()],
        internal_date: 86_400,
        cache: MessageCache::default(),
        queue_id: None,
    };
    let appended = store
        .deliver(vec![append(alice.id, archive.id)])
        .await
        .unwrap()
        .remove(0)
        .expect("append into a mailbox");
    assert_eq!(appended.mailbox, archive.id);
    let carol = store
        .user_add(&addr("carol@example.com"), "h", 0)
        .await
        .unwrap();
    assert!(matches!(
        store
            .deliver(vec![append(carol, archive.id)])
            .await
            .unwrap()
            .remove(0),
        Err(StoreError::NotFound(_))
    ));
    // What a session's view is built from.
    let got = store
        .mailbox_get(archive.id)
        .await
        .unwrap()
        .expect("mailbox_get");
    assert_eq!(got.uid_next, Uid(appended.uid.0 + 1));
    assert_eq!(got.highest_modseq, appended.modseq);
    let all = store.changed_since(archive.id, ModSeq(0)).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.uid).collect::<Vec<_>>(),
        store
            .messages(archive.id)
            .await
            .unwrap()
            .iter()
            .map(|m| m.uid)
            .collect::<Vec<_>>()
    );
    let recent = store
        .changed_since(archive.id, ModSeq(appended.modseq.0 - 1))
        .await
        .unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(
        (recent[0].uid, recent[0].flags.clone()),
        (appended.uid, vec!["\\Seen".to_string()])
    );
    let some = store
        .messages_by_uid(archive.id, &[Uid(1), appended.uid, Uid(999)])
        .await
        .unwrap();
    assert_eq!(
        some.iter().map(|m| m.uid).collect::<Vec<_>>(),
        vec![Uid(1), appended.uid]
    );
    assert!(store
        .messages_by_uid(archive.id, &[])
        .await
        .unwrap()
        .is_empty());
    store.expunge(archive.id, &[appended.uid]).await.unwrap();
    // Renaming INBOX moves its messages and leaves it empty (RFC 9051 6.3.6).
    store
        .mailbox_rename(alice.id, "INBOX", "Old Inbox")
        .await
        .expect("rename INBOX");
    let boxes = store.mailboxes(alice.id).await.unwrap();
    let old = boxes.iter().find(|m| m.name == "Old Inbox").unwrap();
    let inbox_now = boxes.iter().find(|m| m.name == "INBOX").unwrap();
    assert_eq!(store.messages(old.id).await.unwrap().len(), 1);
    assert!(store.messages(inbox_now.id).await.unwrap().is_empty());
    // Sessions with INBOX selected learn that its messages left.
    let moved: Vec<Uid> = store
        .messages(old.id)
        .await
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    let before_rename = inbox_now.highest_modseq.0 - 1;
    let gone = store
        .expunged_since(inbox_now.id, ModSeq(before_rename))
        .await
        .unwrap();
    assert!(
        moved.iter().all(|u| gone.contains(u)),
        "moved {moved:?}, expunged {gone:?}"
    );
    assert_eq!(
        old.uid_next, inbox_now.uid_next,
        "moved UIDs stay below UIDNEXT"
    );
    // Deleting a mailbox gives its space back.
    store.mailbox_delete(alice.id, "Old Inbox").await.unwrap();
    store
        .mailbox_delete(alice.id, "Archive/Lists/rust")
        .await
        .unwrap();
    store
        .mailbox_delete(alice.id, "Archive/Lists")
        .await
        .unwrap();
    let archive_sizes: u64 = store
        .messages(archive.id)
        .await
        .unwrap()
        .iter()
        .map(|m| m.size)
        .sum();
    assert_eq!(
        store
            .user_get("alice@example.com")
            .await
            .unwrap()
            .unwrap()
            .used,
        archive_sizes
    );
}
