//! The conformance suite every backend must pass. A backend's tests call [`run_all`] with a
//! fresh, empty store; each check panics with a message naming the rule it broke.

use mailkeep_types::{Address, Domain, MailboxRole, Uid};

use crate::directory::{resolve, Resolution};
use crate::{ChangeEvent, LogEvent, LogFilter, MessageCache, NewMessage, SharedStore, StoreError};

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
    log(&store).await;
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
}

async fn delivery(store: &SharedStore) {
    let alice = store.user_get("alice@example.com").await.unwrap().unwrap();
    let mut events = store.subscribe();
    let body = b"Subject: hi\r\n\r\nbody\r\n";
    let blob = store.put_blob(body).await.unwrap();
    let msg = |prefix: &str| NewMessage {
        account: alice.id,
        role: MailboxRole::Inbox,
        blob: blob.clone(),
        blob_size: body.len() as u64,
        prefix: prefix.as_bytes().to_vec(),
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
