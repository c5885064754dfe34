//! `mailkeep spam test --ham DIR --spam DIR`: the classifier's accuracy on folders of
//! messages (one file each; a leading mbox `From ` line is dropped), by k-fold
//! cross-validation.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use mailkeep_policy::spam::{cross_validate, Model};

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
