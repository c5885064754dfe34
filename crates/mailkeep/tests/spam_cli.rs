//! `mailkeep spam test` on two folders the test writes (mbox `From ` lines included, as in
//! the shared corpus): the figures come out, and bad arguments are named.

mod common;

use std::process::Command;

#[test]
fn spam_test_cross_validates_two_folders() {
    let dir = tempfile::tempdir().unwrap();
    let (ham, spam) = (dir.path().join("ham"), dir.path().join("spam"));
    std::fs::create_dir(&ham).unwrap();
    std::fs::create_dir(&spam).unwrap();
    for i in 0..20 {
        std::fs::write(
            ham.join(format!("h{i:02}")),
            format!(
                "From colleague@example.org Mon Jan  1 00:00:00 2001\nFrom: Colleague <colleague@example.org>\nSubject: minutes of meeting {i}\n\nThe quarterly report is attached; see you at the meeting on Monday.\n"
            ),
        )
        .unwrap();
        std::fs::write(
            spam.join(format!("s{i:02}")),
            format!(
                "From: Deals <deals@cheap.test>\nSubject: cheap pills {i}\nContent-Type: text/html\n\n<p>Buy cheap pills now! <a href=\"http://cheap.test/buy\">Click here</a></p>\n"
            ),
        )
        .unwrap();
    }
    let out = Command::new(common::BIN)
        .args(["spam", "test", "--ham"])
        .arg(&ham)
        .arg("--spam")
        .arg(&spam)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("5-fold cross-validation, spam from a score of 0.8: 20 ham, 20 spam"),
        "{text}"
    );
    assert!(
        text.contains("false positives: 0 of 20 ham (0.00%)"),
        "{text}"
    );
    assert!(
        text.contains("false negatives: 0 of 20 spam (0.00%)"),
        "{text}"
    );

    let out = Command::new(common::BIN)
        .args(["spam", "test", "--ham"])
        .arg(&ham)
        .args(["--spam", "/nonexistent", "--threshold", "0.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spam"));
}
