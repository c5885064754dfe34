//! Real mail programs against the real server's IMAP: mbsync (isync) for a two-way sync of a
//! few hundred messages, and mutt driven through a pseudo-terminal.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Raw, Server, DOMAIN, PASSWORD};

fn require(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} must be installed in CI (see .ci/run)"
        );
        eprintln!("SKIPPED: {program} is not installed");
    }
    found
}

async fn deliver(server: &Server, n: usize, first: usize) {
    let mut c = Raw::connect(server.smtp).await;
    c.cmd("EHLO client.example").await;
    for i in first..first + n {
        c.envelope("sender@example.org", &["alice@example.test"])
            .await;
        c.send(b"DATA\r\n").await;
        c.reply().await;
        let msg = format!(
            "From: sender@example.org\r\nSubject: message {i}\r\nMessage-ID: <m{i}@example.org>\r\n\r\nbody {i}\r\n.\r\n"
        );
        c.send(msg.as_bytes()).await;
        let r = c.reply().await;
        assert!(r.starts_with("250"), "{r}");
    }
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            out.extend(rd.flatten().map(|e| e.path()));
        }
    }
    out
}

async fn imap_status(server: &Server, mailbox: &str) -> (u64, u64) {
    let store = server.store();
    let user = store
        .user_get(&format!("alice@{DOMAIN}"))
        .await
        .unwrap()
        .unwrap();
    let mb = store
        .mailboxes(user.id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == mailbox)
        .unwrap_or_else(|| panic!("mailbox {mailbox}"));
    let msgs = store.messages(mb.id).await.unwrap();
    let seen = msgs
        .iter()
        .filter(|m| m.flags.iter().any(|f| f == "\\Seen"))
        .count();
    (msgs.len() as u64, seen as u64)
}

fn mbsync(rc: &Path) {
    let out = Command::new("mbsync")
        .arg("-c")
        .arg(rc)
        .arg("-a")
        .output()
        .expect("run mbsync");
    assert!(
        out.status.success(),
        "mbsync failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbsync_two_way_sync() {
    if !require("mbsync") {
        return;
    }
    let server = Server::start("");
    deliver(&server, 300, 0).await;
    let local = server.dir.path().join("maildir");
    std::fs::create_dir_all(&local).unwrap();
    let rc = server.dir.path().join("mbsyncrc");
    std::fs::write(
        &rc,
        format!(
            "IMAPAccount mk\nHost 127.0.0.1\nPort {port}\nUser alice@{DOMAIN}\nPass \"{PASSWORD}\"\n\
             SSLType STARTTLS\nCertificateFile {cert}\n\n\
             IMAPStore remote\nAccount mk\n\n\
             MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n\
             Channel mk\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\n\
             SyncState *\nSync All\n",
            port = server.listeners["imap"].port(),
            cert = server.dir.path().join("tls/cert.pem").display(),
            local = local.display(),
        ),
    )
    .unwrap();

    // Far to near: every message arrives.
    mbsync(&rc);
    let inbox = local.join("INBOX");
    let mut got = files(&inbox);
    assert_eq!(got.len(), 300, "all messages synced down");
    for m in ["Sent", "Drafts", "Junk", "Trash", "Archive"] {
        assert!(local.join(m).exists(), "folder {m} created locally");
    }

    // Near to far: mark 10 read, delete 5, file a new message into a new folder.
    got.sort();
    for p in &got[..10] {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let base = name.split(":2,").next().unwrap().to_string();
        std::fs::rename(p, inbox.join("cur").join(format!("{base}:2,S"))).unwrap();
    }
    for p in &got[10..15] {
        std::fs::remove_file(p).unwrap();
    }
    let projects = local.join("Projects");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(projects.join(sub)).unwrap();
    }
    std::fs::write(
        projects.join("new/1700000000.1.host"),
        "From: alice@example.test\r\nSubject: local draft\r\n\r\nwritten offline\r\n",
    )
    .unwrap();
    // Meanwhile, more mail arrives on the server.
    deliver(&server, 5, 300).await;
    mbsync(&rc);
    assert_eq!(imap_status(&server, "INBOX").await, (300, 10));
    assert_eq!(imap_status(&server, "Projects").await.0, 1);
    assert_eq!(files(&inbox).len(), 300, "the 5 new ones came down");

    // A third run has nothing to do and changes nothing.
    mbsync(&rc);
    assert_eq!(imap_status(&server, "INBOX").await, (300, 10));
    assert_eq!(files(&inbox).len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutt_reads_flags_and_files_messages() {
    if !require("mutt") || !require("script") {
        return;
    }
    let server = Server::start("");
    deliver(&server, 5, 0).await;
    let dir = server.dir.path();
    let rc = dir.join("muttrc");
    std::fs::write(
        &rc,
        format!(
            "set imap_user=\"alice@{DOMAIN}\"\nset imap_pass=\"{PASSWORD}\"\n\
             set folder=\"imap://127.0.0.1:{port}/\"\nset spoolfile=\"+INBOX\"\n\
             set ssl_starttls=yes\nset ssl_force_tls=yes\nset certificate_file=\"{cert}\"\n\
             set ssl_verify_host=no\nset header_cache=\"\"\nset message_cachedir=\"\"\n\
             set confirmappend=no\nset confirmcreate=no\nset delete=yes\nset quit=yes\n\
             set move=no\nset mail_check=0\nset imap_deflate=yes\n",
            port = server.listeners["imap"].port(),
            cert = dir.join("tls/cert.pem").display(),
        ),
    )
    .unwrap();
    // (imap_deflate: mutt speaks COMPRESS=DEFLATE when it is offered.)
    // Tag the messages whose body says "body 2" or "body 3", copy them to Archive, flag
    // them, delete message 1 and sync; then quit.
    let keys = "<tag-pattern>~b body.[23]<enter><tag-prefix><copy-message>=Archive<enter>\
                <tag-prefix><set-flag>!<first-entry><delete-message><sync-mailbox><quit>";
    // `timeout`: a mutt waiting for a key it will never get must not hang the suite.
    let out = Command::new("timeout")
        .args(["60", "script", "-qec"])
        .arg(format!("mutt -n -F {} -e 'push \"{keys}\"'", rc.display()))
        .arg("/dev/null")
        .env("TERM", "xterm")
        .current_dir(dir)
        .output()
        .expect("run mutt under script");
    assert!(
        out.status.success(),
        "mutt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        server.log().contains("COMPRESS=DEFLATE active"),
        "mutt did not use COMPRESS=DEFLATE"
    );
    assert_eq!(imap_status(&server, "Archive").await.0, 2);
    assert_eq!(
        imap_status(&server, "INBOX").await.0,
        4,
        "message 1 deleted"
    );
    let store = server.store();
    let flagged: Vec<String> = server
        .inbox(&format!("alice@{DOMAIN}"))
        .await
        .into_iter()
        .filter(|m| m.flags.iter().any(|f| f == "\\Flagged"))
        .map(|m| m.cache.envelope.subject.clone().unwrap_or_default())
        .collect();
    drop(store);
    assert_eq!(flagged, vec!["message 2", "message 3"]);
}
