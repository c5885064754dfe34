//! `mailkeep spam`: teaching the server's model (`train`), the classifier's accuracy on
//! folders of messages (`test`: one file each, a leading mbox `From ` line dropped, k-fold
//! cross-validation), users' sender lists (`allow`, `block`, `unlist`, `lists`) and what
//! the models learnt (`status`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use mailkeep_policy::spam::{cross_validate, Model};
use mailkeep_store::SenderList;

#[derive(Subcommand)]
pub enum SpamCmd {
    /// Teach the server's model (used by the MX once it knows `spam.min_learnt` of each)
    /// the messages in two folders; learning the same folders again counts them again.
    Train {
        #[arg(long)]
        ham: PathBuf,
        #[arg(long)]
        spam: PathBuf,
    },
    /// Accuracy on folders of ham and spam by k-fold cross-validation: each fold is scored
    /// by a model trained on the other folds; prints false positives (ham taken for spam)
    /// and false negatives (spam taken for ham) at the threshold.
    Test {
        #[arg(long)]
        ham: PathBuf,
        #[arg(long)]
        spam: PathBuf,
        /// Folds.
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Score (0 to 1) from which a message counts as spam.
        #[arg(long, default_value_t = 0.8)]
        threshold: f64,
    },
    /// Never file mail from ENTRY (an address, or @domain for a domain and its subdomains)
    /// to USER's Junk, when the sender is authenticated (DMARC for From:, SPF for the
    /// envelope sender).
    Allow { user: String, entry: String },
    /// Always file mail from ENTRY (From: or envelope sender) to USER's Junk.
    Block { user: String, entry: String },
    /// Take ENTRY off USER's allowlist or blocklist.
    Unlist { user: String, entry: String },
    /// USER's allowlist and blocklist.
    Lists { user: String },
    /// What the server's model has learnt, and USER's own model (learnt from what they
    /// move into and out of Junk).
    Status { user: Option<String> },
}

/// A sender list entry as stored: an address key, or `@` and an ASCII domain.
fn list_entry(entry: &str) -> Result<String> {
    let e = entry.trim();
    if let Some(d) = e.strip_prefix('@').or((!e.contains('@')).then_some(e)) {
        let d = mailkeep_types::Domain::parse(d)
            .map_err(|err| anyhow::anyhow!("ENTRY {entry:?}: not an address or @domain: {err}"))?;
        return Ok(format!("@{d}"));
    }
    let a = mailkeep_types::Address::parse(e)
        .map_err(|err| anyhow::anyhow!("ENTRY {entry:?}: not an address or @domain: {err}"))?;
    Ok(a.key().to_ascii_lowercase())
}

/// The account of USER, or an error naming it.
async fn account(
    store: &mailkeep_store::SharedStore,
    user: &str,
) -> Result<mailkeep_types::AccountId> {
    let a =
        mailkeep_types::Address::parse(user).map_err(|e| anyhow::anyhow!("USER {user:?}: {e}"))?;
    match store.user_get(&a.key()).await? {
        Some(u) => Ok(u.id),
        None => anyhow::bail!("USER {user:?}: no such user"),
    }
}

/// Every file in `dir`, in name order, without a leading mbox `From ` line.
pub fn read_messages(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let data = std::fs::read(&f).with_context(|| format!("{}", f.display()))?;
        let data = if data.starts_with(b"From ") {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) => data[i + 1..].to_vec(),
                None => Vec::new(),
            }
        } else {
            data
        };
        out.push(data);
    }
    Ok(out)
}

pub fn spam(config: &Path, cmd: SpamCmd) -> Result<()> {
    match cmd {
        SpamCmd::Train { ham, spam } => {
            let ham = read_messages(&ham).context("--ham")?;
            let spam = read_messages(&spam).context("--spam")?;
            let mut model = Model::default();
            for m in &ham {
                model.train(m, false);
            }
            for m in &spam {
                model.train(m, true);
            }
            let (cfg, store) = crate::admin::open(config)?;
            let tokens: Vec<(String, u32, u32)> = model
                .token_counts()
                .map(|(t, h, s)| (t.to_string(), h, s))
                .collect();
            let n = tokens.len();
            let (learnt_ham, learnt_spam) = model.counts();
            let ((ham_total, spam_total), _) = crate::admin::runtime()?.block_on(async {
                store.spam_learn(0, tokens, learnt_ham, learnt_spam).await?;
                store.spam_counts(0, &[]).await
            })?;
            println!(
                "learnt {learnt_ham} ham and {learnt_spam} spam ({n} tokens); the server's model now \
                 knows {ham_total} ham and {spam_total} spam"
            );
            if ham_total < cfg.spam.min_learnt || spam_total < cfg.spam.min_learnt {
                println!(
                    "it scores mail once it knows {} of each (spam.min_learnt)",
                    cfg.spam.min_learnt
                );
            }
            Ok(())
        }
        SpamCmd::Allow { user, entry } => set_list(config, &user, &entry, Some(SenderList::Allow)),
        SpamCmd::Block { user, entry } => set_list(config, &user, &entry, Some(SenderList::Block)),
        SpamCmd::Unlist { user, entry } => set_list(config, &user, &entry, None),
        SpamCmd::Lists { user } => {
            let (_, store) = crate::admin::open(config)?;
            let lists = crate::admin::runtime()?.block_on(async {
                let id = account(&store, &user).await?;
                anyhow::Ok(store.sender_lists(id).await?)
            })?;
            for (entry, list) in lists {
                println!("{}\t{entry}", list.as_str());
            }
            Ok(())
        }
        SpamCmd::Status { user } => {
            let (cfg, store) = crate::admin::open(config)?;
            crate::admin::runtime()?.block_on(async {
                let ((h, s), _) = store.spam_counts(0, &[]).await?;
                println!("server model: {h} ham, {s} spam");
                let min = cfg.spam.min_learnt;
                if let Some(user) = user {
                    let id = account(&store, &user).await?;
                    let ((uh, us), _) = store.spam_counts(id.0, &[]).await?;
                    println!("{user}: {uh} ham, {us} spam learnt from Junk moves");
                    if h + uh < min || s + us < min {
                        println!("{user}'s mail is scored by rules alone until the two models know {min} of each (spam.min_learnt)");
                    }
                } else if h < min || s < min {
                    println!("mail is scored by rules alone until it knows {min} of each (spam.min_learnt)");
                }
                anyhow::Ok(())
            })
        }
        SpamCmd::Test {
            ham,
            spam,
            folds,
            threshold,
        } => {
            if !(0.0..=1.0).contains(&threshold) {
                anyhow::bail!("--threshold {threshold}: expected a score from 0 to 1");
            }
            let ham = read_messages(&ham).context("--ham")?;
            let spam = read_messages(&spam).context("--spam")?;
            if ham.is_empty() || spam.is_empty() {
                anyhow::bail!("--ham and --spam need a message each at least");
            }
            let e = cross_validate(&ham, &spam, folds, threshold);
            let pct = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
            println!(
                "{folds}-fold cross-validation, spam from a score of {threshold}: {} ham, {} spam",
                e.ham, e.spam
            );
            println!(
                "false positives: {} of {} ham ({:.2}%)",
                e.false_positives,
                e.ham,
                pct(e.false_positives, e.ham)
            );
            println!(
                "false negatives: {} of {} spam ({:.2}%)",
                e.false_negatives,
                e.spam,
                pct(e.false_negatives, e.spam)
            );
            Ok(())
        }
    }
}

/// Adds ENTRY to one of USER's sender lists, or (None) takes it off.
fn set_list(config: &Path, user: &str, entry: &str, list: Option<SenderList>) -> Result<()> {
    let entry = list_entry(entry)?;
    let (_, store) = crate::admin::open(config)?;
    crate::admin::runtime()?.block_on(async {
        let id = account(&store, user).await?;
        store.sender_list_set(id, &entry, list).await?;
        anyhow::Ok(())
    })?;
    match list {
        Some(l) => println!("{entry} is on {user}'s {}list", l.as_str()),
        None => println!("{entry} is on none of {user}'s lists"),
    }
    Ok(())
}
