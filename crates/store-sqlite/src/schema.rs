//! Versioned schema migrations, applied in order at open (`PRAGMA user_version`).

use rusqlite::Connection;

/// Each entry moves the schema from version `index` to `index + 1`. Never edit an entry that
/// has shipped: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: directory, mailboxes, messages, blobs, delivery log.
    r#"
    CREATE TABLE domains (
        name TEXT PRIMARY KEY,
        catch_all TEXT,
        created INTEGER NOT NULL
    );
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        address_key TEXT NOT NULL UNIQUE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL REFERENCES domains(name),
        password TEXT NOT NULL,
        quota INTEGER NOT NULL DEFAULT 0,
        used INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL
    );
    CREATE INDEX accounts_domain ON accounts(domain);
    CREATE TABLE aliases (
        address_key TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        domain TEXT NOT NULL REFERENCES domains(name),
        targets TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE INDEX aliases_domain ON aliases(domain);
    CREATE TABLE mailboxes (
        id INTEGER PRIMARY KEY,
        account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        role TEXT,
        uid_validity INTEGER NOT NULL,
        uid_next INTEGER NOT NULL DEFAULT 1,
        highest_modseq INTEGER NOT NULL DEFAULT 1,
        subscribed INTEGER NOT NULL DEFAULT 1,
        UNIQUE (account, name)
    );
    CREATE TABLE messages (
        mailbox INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        flags TEXT NOT NULL DEFAULT '',
        internal_date INTEGER NOT NULL,
        size INTEGER NOT NULL,
        blob TEXT NOT NULL,
        prefix BLOB NOT NULL,
        message_id TEXT,
        queue_id TEXT,
        cache TEXT NOT NULL,
        PRIMARY KEY (mailbox, uid)
    ) WITHOUT ROWID;
    CREATE INDEX messages_modseq ON messages(mailbox, modseq);
    CREATE INDEX messages_message_id ON messages(message_id);
    CREATE TABLE blobs (
        id TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        refs INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE log_events (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        session TEXT NOT NULL,
        queue_id TEXT,
        kind TEXT NOT NULL,
        ip TEXT,
        sender TEXT,
        recipient TEXT,
        message_id TEXT,
        outcome TEXT,
        reply TEXT,
        detail TEXT
    );
    CREATE INDEX log_ts ON log_events(ts);
    CREATE INDEX log_session ON log_events(session);
    CREATE INDEX log_queue_id ON log_events(queue_id);
    CREATE INDEX log_message_id ON log_events(message_id);
    CREATE INDEX log_ip ON log_events(ip);
    "#,
    // 2: subscriptions apart from mailboxes (a name may be subscribed without existing,
    // RFC 9051 6.3.7), and expunged UIDs with their MODSEQ for QRESYNC VANISHED (RFC 7162).
    r#"
    CREATE TABLE subscriptions (
        account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        PRIMARY KEY (account, name)
    ) WITHOUT ROWID;
    INSERT INTO subscriptions (account, name) SELECT account, name FROM mailboxes WHERE subscribed = 1;
    ALTER TABLE mailboxes DROP COLUMN subscribed;
    CREATE TABLE expunged (
        mailbox INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        PRIMARY KEY (mailbox, uid)
    ) WITHOUT ROWID;
    CREATE INDEX expunged_modseq ON expunged(mailbox, modseq);
    "#,
    // 3: each message's header section beside it, so header searches need not read blobs.
    // NULL for messages stored before; those are read from their blob.
    r#"
    ALTER TABLE messages ADD COLUMN headers BLOB;
    "#,
    // 4: header sections in a table of their own, so a header search reads them densely
    // instead of every message row with its cached structure; and a covering index for the
    // columns a session's view is built from, so SELECT reads only the index.
    r#"
    CREATE TABLE message_headers (
        mailbox INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (mailbox, uid)
    ) WITHOUT ROWID;
    INSERT INTO message_headers (mailbox, uid, data)
        SELECT mailbox, uid, headers FROM messages WHERE headers IS NOT NULL;
    ALTER TABLE messages DROP COLUMN headers;
    CREATE INDEX messages_view ON messages(mailbox, uid, modseq, flags, internal_date, size);
    "#,
    // 5: access control lists of mailboxes (RFC 4314), for mailboxes shared between users.
    // `identifier` is an address key or `anyone`, with a leading `-` for negative rights.
    r#"
    CREATE TABLE acl (
        mailbox INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        identifier TEXT NOT NULL,
        rights TEXT NOT NULL,
        PRIMARY KEY (mailbox, identifier)
    ) WITHOUT ROWID;
    CREATE INDEX acl_identifier ON acl(identifier);
    "#,
    // 6: the last UIDVALIDITY given, kept apart from the mailboxes so that deleting the newest
    // mailbox cannot hand its UIDVALIDITY (with its reused id) to the next one (RFC 9051
    // 2.3.1.1: a UIDVALIDITY is never reused for a mailbox of the same name; here, never).
    r#"
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO counters (name, value)
        SELECT 'uid_validity', coalesce(max(uid_validity), 0) FROM mailboxes;
    "#,
    // 7: blobs of up to 64 KiB (most messages) kept in the database instead of a file each:
    // reading one is then a lookup in the mapped database, not an open, a read and a close.
    // `stored` is when it was last stored (milliseconds), so the collector leaves a young one
    // to the delivery about to refer to it. Blobs stored before stay files.
    r#"
    CREATE TABLE blob_data (
        id TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        stored INTEGER NOT NULL
    );
    "#,
    // 8: aliases the users they deliver to may also send as (submission's sender check).
    r#"
    ALTER TABLE aliases ADD COLUMN sendable INTEGER NOT NULL DEFAULT 0;
    "#,
    // 9: the outbound queue. A message holds a reference on its blob (`blobs.refs`) while it
    // is queued; each recipient has its own state and next attempt.
    r#"
    CREATE TABLE queue (
        id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,
        blob TEXT NOT NULL,
        size INTEGER NOT NULL,
        created INTEGER NOT NULL,
        held INTEGER NOT NULL DEFAULT 0,
        warned INTEGER NOT NULL DEFAULT 0,
        envid TEXT,
        ret TEXT,
        smtputf8 INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE queue_rcpt (
        queue_id TEXT NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
        recipient TEXT NOT NULL,
        domain TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL,
        last_reply TEXT,
        notify TEXT,
        orcpt TEXT,
        PRIMARY KEY (queue_id, recipient)
    ) WITHOUT ROWID;
    CREATE INDEX queue_rcpt_due ON queue_rcpt(status, next_attempt);
    "#,
    // 10: REQUIRETLS on queued messages (RFC 8689), and the MTA-STS policy cache (RFC 8461
    // 5.1: a policy is remembered for its max_age, which is what protects against an attacker
    // who strips the DNS record later).
    r#"
    ALTER TABLE queue ADD COLUMN requiretls INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE mta_sts (
        domain TEXT PRIMARY KEY,
        id TEXT NOT NULL,
        policy TEXT NOT NULL,
        fetched INTEGER NOT NULL,
        expires INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 11: app passwords, stored as SHA-256 digests (they are random, 120 bits: a slow hash
    // adds nothing, and a digest is looked up instead of trying each one).
    r#"
    CREATE TABLE app_passwords (
        account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        digest TEXT NOT NULL,
        created INTEGER NOT NULL,
        last_used INTEGER,
        PRIMARY KEY (account, name)
    ) WITHOUT ROWID;
    CREATE INDEX app_passwords_digest ON app_passwords(account, digest);
    "#,
    // 12: reports: what we will send (one row per message until its report goes out) and
    // what others sent us.
    r#"
    CREATE TABLE report_events (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        domain TEXT NOT NULL,
        ts INTEGER NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX report_events_kind_ts ON report_events(kind, ts);
    CREATE TABLE received_reports (
        kind TEXT NOT NULL,
        org TEXT NOT NULL,
        report_id TEXT NOT NULL,
        domain TEXT NOT NULL,
        begin_ts INTEGER NOT NULL,
        end_ts INTEGER NOT NULL,
        received INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (kind, org, report_id)
    ) WITHOUT ROWID;
    CREATE INDEX received_reports_domain ON received_reports(kind, domain, end_ts);
    "#,
    // 13: bans (brute-force defence and the admin's): a network, why, since and until when
    // (NULL: until removed).
    r#"
    CREATE TABLE bans (
        network TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        created INTEGER NOT NULL,
        expires INTEGER
    ) WITHOUT ROWID;
    "#,
    // 14: what each account sent to other domains (outbound limits): one row per message
    // (kept two days), and every recipient it ever wrote to (to count new ones).
    r#"
    CREATE TABLE outbound_usage (
        account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        ts INTEGER NOT NULL,
        recipients INTEGER NOT NULL,
        new_recipients INTEGER NOT NULL
    );
    CREATE INDEX outbound_usage_account ON outbound_usage(account, ts);
    CREATE TABLE known_recipients (
        account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        first INTEGER NOT NULL,
        PRIMARY KEY (account, address)
    ) WITHOUT ROWID;
    "#,
    // 15: queued messages know the account that submitted them, and an account whose
    // outbound mail looks compromised is on hold (its queued mail held) until released.
    r#"
    ALTER TABLE queue ADD COLUMN account INTEGER;
    CREATE INDEX queue_account ON queue(account);
    CREATE TABLE account_holds (
        account INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
        reason TEXT NOT NULL,
        since INTEGER NOT NULL,
        released INTEGER
    );
    "#,
    // 16: the spam classifier's token counts (model 0: the server's, learnt with `mailkeep
    // spam train`), and how many messages each model learnt.
    r#"
    CREATE TABLE spam_tokens (
        model INTEGER NOT NULL,
        token TEXT NOT NULL,
        ham INTEGER NOT NULL,
        spam INTEGER NOT NULL,
        PRIMARY KEY (model, token)
    ) WITHOUT ROWID;
    CREATE TABLE spam_totals (
        model INTEGER PRIMARY KEY,
        ham INTEGER NOT NULL,
        spam INTEGER NOT NULL
    );
    "#,
    // 17: what each user's model learnt from their moves into and out of Junk (model =
    // account id), and each user's sender allowlist and blocklist.
    r#"
    CREATE TABLE spam_learnt (
        model INTEGER NOT NULL,
        key TEXT NOT NULL,
        spam INTEGER NOT NULL,
        PRIMARY KEY (model, key)
    ) WITHOUT ROWID;
    CREATE TABLE sender_lists (
        account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        entry TEXT NOT NULL,
        list TEXT NOT NULL,
        PRIMARY KEY (account, entry)
    ) WITHOUT ROWID;
    "#,
    // 18: greylisting records (triplets, client networks, sender domains).
    r#"
    CREATE TABLE greylist (
        key TEXT PRIMARY KEY,
        first INTEGER NOT NULL,
        last INTEGER NOT NULL,
        passed INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX greylist_last ON greylist(last);
    "#,
    // 19: what is said of accounts' outbound mail (bounces, complaints) and the networks
    // they log in from, for compromise detection.
    r#"
    CREATE TABLE account_signals (
        account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        ts INTEGER NOT NULL,
        kind TEXT NOT NULL
    );
    CREATE INDEX account_signals_account ON account_signals(account, ts);
    CREATE TABLE account_logins (
        account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        network TEXT NOT NULL,
        first INTEGER NOT NULL,
        last INTEGER NOT NULL,
        PRIMARY KEY (account, network)
    ) WITHOUT ROWID;
    "#,
    // 20: users' Sieve scripts, and what their vacation replies and duplicate tests
    // remember.
    r#"
    CREATE TABLE sieve_scripts (
        account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        script TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (account, name)
    ) WITHOUT ROWID;
    CREATE TABLE sieve_seen (
        account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        id TEXT NOT NULL,
        expires INTEGER NOT NULL,
        PRIMARY KEY (account, id)
    ) WITHOUT ROWID;
    "#,
];

/// The schema version this build writes.
pub const CURRENT: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`CURRENT`]; refuses a database newer than this build.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version > CURRENT {
        return Err(format!(
            "the store has schema version {version}, newer than this mailkeep ({CURRENT}): \
             upgrade mailkeep instead of downgrading"
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(sql)
            .map_err(|e| format!("migration {}: {e}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
    }
    // One line per start, not one per migration: a new store is not news, an upgrade is.
    if version == 0 {
        tracing::debug!(version = CURRENT, "store created");
    } else if version < CURRENT {
        tracing::info!(from = version, to = CURRENT, "store schema upgraded");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_store_migrates_its_subscriptions() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("v1.db")).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute_batch(
            "INSERT INTO domains VALUES ('a.test', NULL, 0);
             INSERT INTO accounts (id, address_key, address, domain, password, created)
                 VALUES (1, 'u@a.test', 'u@a.test', 'a.test', 'h', 0);
             INSERT INTO mailboxes (account, name, role, uid_validity, subscribed)
                 VALUES (1, 'INBOX', 'inbox', 1, 1), (1, 'Old', NULL, 2, 0);",
        )
        .unwrap();
        migrate(&mut c).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, CURRENT);
        let subs: Vec<String> = c
            .prepare("SELECT name FROM subscriptions ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(subs, vec!["INBOX".to_string()]);
        // Running the migrations again is a no-op.
        migrate(&mut c).unwrap();
    }
}
