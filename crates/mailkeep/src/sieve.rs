//! `mailkeep sieve`: users' Sieve scripts (RFC 5228), stored, checked and activated; the
//! active one runs at each delivery to the user.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use mailkeep_delivery::sieve::{check, Limits};
use mailkeep_store::SharedStore;
use mailkeep_types::{AccountId, Address};

#[derive(Subcommand)]
pub enum SieveCmd {
    /// Store a script (from FILE, or standard input) under NAME, checked first; with
    /// --activate it becomes the active one.
    Put {
        user: String,
        name: String,
        file: Option<PathBuf>,
        #[arg(long)]
        activate: bool,
    },
    /// Print a script.
    Get { user: String, name: String },
    /// A user's scripts; the active one is marked.
    List { user: String },
    /// Make NAME the script that runs at delivery.
    Activate { user: String, name: String },
    /// Run no script at delivery.
    Deactivate { user: String },
    /// Delete a script (not the active one).
    Delete { user: String, name: String },
    /// Check a script (FILE, or standard input) without storing it.
    Check { file: Option<PathBuf> },
}

/// A script's text from FILE or standard input.
fn read_script(file: Option<&Path>) -> Result<String> {
    let mut text = String::new();
    match file {
        Some(f) => {
            text = std::fs::read_to_string(f).with_context(|| format!("FILE {}", f.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the script from standard input")?;
        }
    }
    Ok(text)
}

/// Script names as ManageSieve allows them (RFC 5804 1.6): not empty, at most 512
/// characters, no control characters.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > 512 || name.chars().any(|c| c.is_control()) {
        anyhow::bail!("NAME {name:?}: 1 to 512 characters, none of them control characters");
    }
    Ok(())
}

async fn account(store: &SharedStore, user: &str) -> Result<AccountId> {
    let a = Address::parse(user).map_err(|e| anyhow::anyhow!("USER {user:?}: {e}"))?;
    match store.user_get(&a.key()).await? {
        Some(u) => Ok(u.id),
        None => anyhow::bail!("USER {user:?}: no such user"),
    }
}

pub fn sieve(config: &Path, cmd: SieveCmd) -> Result<()> {
    let limits = Limits::default();
    if let SieveCmd::Check { file } = &cmd {
        let text = read_script(file.as_deref())?;
        check(&text, &limits).map_err(|e| anyhow::anyhow!("the script has an error: {e}"))?;
        println!("the script is valid");
        return Ok(());
    }
    let (_, store) = crate::admin::open(config)?;
    crate::admin::runtime()?.block_on(async {
        match cmd {
            SieveCmd::Put {
                user,
                name,
                file,
                activate,
            } => {
                check_name(&name)?;
                let text = read_script(file.as_deref())?;
                check(&text, &limits)
                    .map_err(|e| anyhow::anyhow!("the script has an error: {e}"))?;
                let id = account(&store, &user).await?;
                store.sieve_put(id, &name, &text).await?;
                if activate {
                    store.sieve_activate(id, Some(&name)).await?;
                }
                println!(
                    "script {name:?} stored for {user}{}",
                    if activate { " and active" } else { "" }
                );
            }
            SieveCmd::Get { user, name } => {
                let id = account(&store, &user).await?;
                match store.sieve_get(id, &name).await? {
                    Some(t) => print!("{t}"),
                    None => anyhow::bail!("NAME {name:?}: no such script for {user}"),
                }
            }
            SieveCmd::List { user } => {
                let id = account(&store, &user).await?;
                for (name, active) in store.sieve_list(id).await? {
                    println!("{name}{}", if active { "\t(active)" } else { "" });
                }
            }
            SieveCmd::Activate { user, name } => {
                let id = account(&store, &user).await?;
                store
                    .sieve_activate(id, Some(&name))
                    .await
                    .map_err(|e| anyhow::anyhow!("NAME {name:?}: {e}"))?;
                println!("script {name:?} is active for {user}");
            }
            SieveCmd::Deactivate { user } => {
                let id = account(&store, &user).await?;
                store.sieve_activate(id, None).await?;
                println!("no script is active for {user}");
            }
            SieveCmd::Delete { user, name } => {
                let id = account(&store, &user).await?;
                store
                    .sieve_delete(id, &name)
                    .await
                    .map_err(|e| anyhow::anyhow!("NAME {name:?}: {e}"))?;
                println!("script {name:?} deleted");
            }
            SieveCmd::Check { .. } => {}
        }
        Ok(())
    })
}
