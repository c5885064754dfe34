//! Content-addressed blob files: `blobs/ab/<sha256 hex>`, written durably.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use mailkeep_store::BlobId;
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};

#[derive(Clone)]
pub(crate) struct BlobDir {
    root: Arc<PathBuf>,
    counter: Arc<AtomicU64>,
    /// An open handle on each shard directory, so a read opens its file relative to it
    /// (openat): the kernel then resolves one name instead of walking the whole path.
    shards: Arc<[OnceLock<File>]>,
}

/// Only our own ids: 64 lower-case hex digits, so no path can be smuggled in.
fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn fsync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

impl BlobDir {
    pub(crate) fn open(root: &Path) -> Result<BlobDir, String> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
        // Leftovers of writes interrupted by a crash: never referenced, safe to drop.
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(BlobDir {
            root: Arc::new(root.to_path_buf()),
            counter: Arc::new(AtomicU64::new(0)),
            shards: (0..256).map(|_| OnceLock::new()).collect(),
        })
    }

    fn path_of(&self, id: &str) -> Option<PathBuf> {
        valid_id(id).then(|| self.root.join(&id[..2]).join(id))
    }

    /// Opens a blob for reading: relative to its shard's directory handle when it could be
    /// opened, else by its full path (the shard did not exist yet, or was replaced).
    fn open_read(&self, id: &str) -> std::io::Result<File> {
        if !valid_id(id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "bad blob id",
            ));
        }
        let shard = u8::from_str_radix(&id[..2], 16).map_err(std::io::Error::other)?;
        let slot = &self.shards[usize::from(shard)];
        let dir = match slot.get() {
            Some(d) => Some(d),
            None => File::open(self.root.join(&id[..2]))
                .ok()
                .map(|d| slot.get_or_init(|| d)),
        };
        if let Some(dir) = dir {
            use nix::fcntl::{openat, OFlag};
            match openat(dir, id, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) {
                Ok(fd) => return Ok(File::from(fd)),
                // A shard directory removed and made again: the full path finds it.
                Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(std::io::Error::from(e)),
            }
        }
        File::open(self.root.join(&id[..2]).join(id))
    }

    pub(crate) fn put(&self, data: &[u8]) -> Result<BlobId, String> {
        let id = hex::encode(Sha256::digest(data));
        let path = self.path_of(&id).ok_or("bad blob id")?;
        if path.exists() {
            // Refresh its age so the garbage collector leaves it to the delivery in progress.
            let touched = File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            if touched.is_ok() {
                return Ok(BlobId(id));
            }
            // Unreadable or vanished (collected meanwhile): write it again below.
        }
        let shard = path.parent().ok_or("blob path has no parent")?;
        if !shard.exists() {
            fs::create_dir_all(shard).map_err(|e| format!("create {}: {e}", shard.display()))?;
            fsync_dir(&self.root).map_err(|e| format!("fsync {}: {e}", self.root.display()))?;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{id}.{}.{n}", std::process::id()));
        let mut f = File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
        f.write_all(data)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("write {}: {e}", tmp.display()))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| format!("rename to {}: {e}", path.display()))?;
        fsync_dir(shard).map_err(|e| format!("fsync {}: {e}", shard.display()))?;
        Ok(BlobId(id))
    }

    /// Every blob file with its last-stored time.
    pub(crate) fn list(&self) -> Result<Vec<(String, std::time::SystemTime)>, String> {
        let mut out = Vec::new();
        let shards =
            fs::read_dir(&*self.root).map_err(|e| format!("read {}: {e}", self.root.display()))?;
        for shard in shards.flatten() {
            let name = shard.file_name();
            let name = name.to_string_lossy();
            if name.len() != 2 || !shard.path().is_dir() {
                continue; // tmp/ and anything that is not a shard
            }
            let files = fs::read_dir(shard.path())
                .map_err(|e| format!("read {}: {e}", shard.path().display()))?;
            for f in files.flatten() {
                let id = f.file_name().to_string_lossy().into_owned();
                if self.path_of(&id).is_none() {
                    continue;
                }
                if let Ok(m) = f.metadata().and_then(|m| m.modified()) {
                    out.push((id, m));
                }
            }
        }
        Ok(out)
    }

    /// Removes one blob file unless it was stored again within `min_age` (a new delivery of
    /// the same content is about to refer to it). Returns whether it was removed.
    pub(crate) fn remove_if_older(
        &self,
        id: &str,
        min_age: std::time::Duration,
    ) -> Result<bool, String> {
        let Some(path) = self.path_of(id) else {
            return Ok(false);
        };
        let young = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age < min_age);
        if young {
            return Ok(false);
        }
        match fs::remove_file(&path).map(|()| true) {
            Ok(removed) => Ok(removed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("remove {}: {e}", path.display())),
        }
    }

    /// Appends a blob of known length to `out` (a message read after its prefix, without a
    /// second copy, in one read call); false when it does not exist.
    pub(crate) fn append_to(
        &self,
        id: &str,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, String> {
        use std::io::Read;
        let shown = || self.path_of(id).unwrap_or_default().display().to_string();
        let mut f = match self.open_read(id) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(format!("open {}: {e}", shown())),
        };
        let start = out.len();
        out.reserve(len);
        // Straight into the spare capacity (no zeroing first), and no more than `len`.
        let got = (&mut f).take(len as u64).read_to_end(out);
        if got.as_ref().ok() != Some(&len) {
            out.truncate(start);
            let why = match got {
                Ok(n) => format!("{n} octets"),
                Err(e) => e.to_string(),
            };
            return Err(format!("read {} ({len} octets expected): {why}", shown()));
        }
        Ok(true)
    }

    pub(crate) fn get(&self, id: &BlobId) -> Result<Option<Vec<u8>>, String> {
        let Some(path) = self.path_of(&id.0) else {
            return Ok(None);
        };
        let read = self.open_read(&id.0).and_then(|mut f| {
            use std::io::Read;
            let mut d = Vec::new();
            f.read_to_end(&mut d).map(|_| d)
        });
        match read {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("read {}: {e}", path.display())),
        }
    }
}
