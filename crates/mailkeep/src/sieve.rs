//! `mailkeep sieve`: users' Sieve scripts (RFC 5228), stored, checked and activated; the
//! active one runs at each delivery to the user.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use mailkeep_delivery::sieve::check;
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

#[derive(Subcommand)]
pub enum ForwardCmd {
    /// Forward USER's mail to ADDR (with --keep, keep a copy too).
    Set {
        user: String,
        addr: String,
        #[arg(long)]
        keep: bool,
        /// Replace another active Sieve script of the user.
        #[arg(long)]
        replace: bool,
    },
    /// Stop forwarding USER's mail.
    Clear { user: String },
}

#[derive(Subcommand)]
pub enum VacationCmd {
    /// Answer USER's mail with a vacation reply (RFC 5230): at most once per sender every
    /// --days days, until --until (YYYY-MM-DD, inclusive).
    Set {
        user: String,
        #[arg(long)]
        subject: String,
        #[arg(long)]
        body: String,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Replace another active Sieve script of the user.
        #[arg(long)]
        replace: bool,
    },
    /// Stop the vacation reply.
    Clear { user: String },
}

pub fn forward(config: &Path, cmd: ForwardCmd) -> Result<()> {
    match cmd {
        ForwardCmd::Set {
            user,
            addr,
            keep,
            replace,
        } => {
            let to = Address::parse(&addr).map_err(|e| anyhow::anyhow!("ADDR {addr:?}: {e}"))?;
            helpers(config, &user, replace, |h| {
                h.forward = Some(Forward {
                    to: to.to_string(),
                    keep,
                })
            })
        }
        ForwardCmd::Clear { user } => helpers(config, &user, false, |h| h.forward = None),
    }
}

pub fn vacation(config: &Path, cmd: VacationCmd) -> Result<()> {
    match cmd {
        VacationCmd::Set {
            user,
            subject,
            body,
            until,
            days,
            replace,
        } => {
            if let Some(d) = &until {
                let ok = d.len() == 10
                    && d.chars().enumerate().all(|(i, c)| {
                        if i == 4 || i == 7 {
                            c == '-'
                        } else {
                            c.is_ascii_digit()
                        }
                    });
                if !ok {
                    anyhow::bail!("--until {d:?}: expected a day as YYYY-MM-DD");
                }
            }
            if days == 0 {
                anyhow::bail!("--days 0: at least 1");
            }
            if subject.chars().any(|c| c.is_control()) {
                anyhow::bail!("--subject: one line, without control characters");
            }
            // Sieve expands ${...} in strings (RFC 5229): the text would not come out as
            // written.
            for (flag, text) in [("--subject", &subject), ("--body", &body)] {
                if text.contains("${") {
                    anyhow::bail!("{flag}: \"${{\" is not allowed (Sieve would expand it)");
                }
            }
            helpers(config, &user, replace, |h| {
                h.vacation = Some(Vacation {
                    subject,
                    body,
                    until,
                    days,
                })
            })
        }
        VacationCmd::Clear { user } => helpers(config, &user, false, |h| h.vacation = None),
    }
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

/// A script name as ManageSieve stores it (NFC; RFC 5804 1.6: 1 to 512 characters, no
/// control characters or line separators), or why it is not one.
fn check_name(name: &str) -> Result<String> {
    mailkeep_managesieve::script_name(name).ok_or_else(|| {
        anyhow::anyhow!(
            "NAME {name:?}: 1 to 512 characters, none of them control characters or line separators"
        )
    })
}

async fn account(store: &SharedStore, user: &str) -> Result<AccountId> {
    let a = Address::parse(user).map_err(|e| anyhow::anyhow!("USER {user:?}: {e}"))?;
    match store.user_get(&a.key()).await? {
        Some(u) => Ok(u.id),
        None => anyhow::bail!("USER {user:?}: no such user"),
    }
}

pub fn sieve(config: &Path, cmd: SieveCmd) -> Result<()> {
    // The limits delivery applies (`[sieve]`).
    let (cfg, store) = crate::admin::open(config)?;
    let limits = crate::serve::sieve_settings(&cfg).limits;
    if let SieveCmd::Check { file } = &cmd {
        let text = read_script(file.as_deref())?;
        check(&text, &limits).map_err(|e| anyhow::anyhow!("the script has an error: {e}"))?;
        println!("the script is valid");
        return Ok(());
    }
    crate::admin::runtime()?.block_on(async {
        match cmd {
            SieveCmd::Put {
                user,
                name,
                file,
                activate,
            } => {
                let name = check_name(&name)?;
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
                let name = check_name(&name)?;
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
                let name = check_name(&name)?;
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
                let name = check_name(&name)?;
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

/// The script the `forward` and `vacation` helpers write and activate.
pub const HELPERS: &str = "mailkeep-helpers";

/// What the helpers' script does, kept in its first line so that each helper changes only
/// its own part.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Helpers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vacation: Option<Vacation>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Forward {
    pub to: String,
    pub keep: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Vacation {
    pub subject: String,
    pub body: String,
    /// Last day (YYYY-MM-DD) the reply is sent, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    pub days: u32,
}

const MARK: &str = "# mailkeep-helpers ";

/// A Sieve string (RFC 5228 2.4.2: `"` and `\` escaped).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Helpers {
    /// Reads the settings back from a script the helpers wrote.
    pub fn parse(script: &str) -> Option<Helpers> {
        let first = script.lines().next()?;
        serde_json::from_str(first.strip_prefix(MARK)?).ok()
    }

    /// The script: vacation first (so a forwarded message is still answered), then the
    /// redirect.
    pub fn script(&self) -> String {
        let mut out = format!(
            "{MARK}{}\n# Written by `mailkeep forward` and `mailkeep vacation`; change it with them.\n",
            serde_json::to_string(self).unwrap_or_default()
        );
        let mut require = vec!["vacation", "date", "relational", "copy"];
        require.retain(|r| match *r {
            "vacation" => self.vacation.is_some(),
            "date" | "relational" => self.vacation.as_ref().is_some_and(|v| v.until.is_some()),
            "copy" => self.forward.as_ref().is_some_and(|f| f.keep),
            _ => false,
        });
        if !require.is_empty() {
            let list: Vec<String> = require.iter().map(|r| quoted(r)).collect();
            out.push_str(&format!("require [{}];\n", list.join(", ")));
        }
        if let Some(v) = &self.vacation {
            let reply = format!(
                "vacation :days {} :subject {} {};",
                v.days.max(1),
                quoted(&v.subject),
                quoted(&v.body)
            );
            match &v.until {
                // RFC 5260 5: the date part of the current date.
                Some(day) => out.push_str(&format!(
                    "if currentdate :value \"le\" \"date\" {} {{\n    {reply}\n}}\n",
                    quoted(day)
                )),
                None => out.push_str(&format!("{reply}\n")),
            }
        }
        if let Some(f) = &self.forward {
            out.push_str(&format!(
                "redirect {}{};\n",
                if f.keep { ":copy " } else { "" },
                quoted(&f.to)
            ));
        }
        out
    }
}

/// Changes the helpers' script of `user` with `change`, stores and activates it (or, when
/// nothing is left, deactivates it). Another active script is not replaced silently.
pub fn helpers(
    config: &Path,
    user: &str,
    replace: bool,
    change: impl FnOnce(&mut Helpers),
) -> Result<()> {
    let (cfg, store) = crate::admin::open(config)?;
    let limits = crate::serve::sieve_settings(&cfg).limits;
    crate::admin::runtime()?.block_on(async {
        let id = account(&store, user).await?;
        if let Some((name, _)) = store.sieve_active(id).await? {
            if name != HELPERS && !replace {
                anyhow::bail!(
                    "{user} has the script {name:?} active; the helpers would replace it \
                     (--replace to do so, or add the rule to that script)"
                );
            }
        }
        let mut h = match store.sieve_get(id, HELPERS).await? {
            Some(text) => Helpers::parse(&text).unwrap_or_default(),
            None => Helpers::default(),
        };
        change(&mut h);
        if h.forward.is_none() && h.vacation.is_none() {
            if matches!(store.sieve_active(id).await?, Some((n, _)) if n == HELPERS) {
                store.sieve_activate(id, None).await?;
            }
            if store.sieve_get(id, HELPERS).await?.is_some() {
                store.sieve_delete(id, HELPERS).await?;
            }
            println!("no forwarding or vacation reply for {user}");
            return Ok(());
        }
        let text = h.script();
        check(&text, &limits).map_err(|e| anyhow::anyhow!("the script would be refused: {e}"))?;
        store.sieve_put(id, HELPERS, &text).await?;
        store.sieve_activate(id, Some(HELPERS)).await?;
        if let Some(f) = &h.forward {
            println!(
                "{user}: mail is forwarded to {}{}",
                f.to,
                if f.keep { " (and kept)" } else { "" }
            );
        }
        if let Some(v) = &h.vacation {
            println!(
                "{user}: vacation reply {:?}{}",
                v.subject,
                v.until
                    .as_deref()
                    .map(|d| format!(" until {d}"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailkeep_delivery::sieve::Limits;

    #[test]
    fn helper_scripts_compile_and_round_trip() {
        let h = Helpers {
            forward: Some(Forward {
                to: "me@elsewhere.test".into(),
                keep: true,
            }),
            vacation: Some(Vacation {
                subject: "Away \"for now\"".into(),
                body: "Back on Monday.\nUrgent: call \\ the office.".into(),
                until: Some("2026-12-31".into()),
                days: 3,
            }),
        };
        let text = h.script();
        check(&text, &Limits::default()).unwrap();
        assert_eq!(Helpers::parse(&text), Some(h));
        let only = Helpers {
            forward: Some(Forward {
                to: "x@y.test".into(),
                keep: false,
            }),
            vacation: None,
        };
        let text = only.script();
        check(&text, &Limits::default()).unwrap();
        assert!(
            text.contains("redirect \"x@y.test\";") && !text.contains("require"),
            "{text}"
        );
    }
}
