//! Least privilege: `serve` binds its ports as root, reads the TLS key, then runs as the
//! configured system user for the rest of its life.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nix::unistd::{geteuid, setgid, setgroups, setuid, Uid, User};

fn lookup(name: &str) -> Result<User> {
    User::from_name(name)
        .with_context(|| format!("user = {name:?}: looking up the system user"))?
        .ok_or_else(|| {
            anyhow!(
                "user = {name:?}: no such system user (create it, e.g. `useradd --system {name}`)"
            )
        })
}

/// Switches to `user` when running as root; refuses to go on as root silently.
pub fn drop_to(user: Option<&str>) -> Result<()> {
    let euid = geteuid();
    let Some(name) = user else {
        if euid.is_root() {
            tracing::warn!(
                "running as root: set `user = \"mailkeep\"` in the config so that mailkeep drops root after binding its ports"
            );
        }
        return Ok(());
    };
    let u = lookup(name)?;
    if euid == u.uid {
        return Ok(());
    }
    if !euid.is_root() {
        bail!("user = {name:?}: switching to it needs root, but mailkeep runs as uid {euid}");
    }
    // Order matters: supplementary groups and group first, while we still may change them.
    setgroups(&[u.gid]).context("setgroups")?;
    setgid(u.gid).context("setgid")?;
    setuid(u.uid).context("setuid")?;
    // A process that could take root back has not dropped anything.
    if setuid(Uid::from_raw(0)).is_ok() {
        bail!("still able to regain root after switching to {name:?}");
    }
    tracing::info!(
        user = name,
        uid = u.uid.as_raw(),
        gid = u.gid.as_raw(),
        "dropped root privileges"
    );
    Ok(())
}

/// Gives `dir` and everything in it to `user` (for `init --user`).
pub fn give_tree(dir: &Path, name: &str) -> Result<()> {
    let u = lookup(name)?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        match std::os::unix::fs::lchown(&p, Some(u.uid.as_raw()), Some(u.gid.as_raw())) {
            Ok(()) => {}
            // A file removed meanwhile (SQLite's -shm or -journal as the store closes) needs
            // no owner.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("chown {}", p.display())),
        }
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("stat {}", p.display())),
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}
