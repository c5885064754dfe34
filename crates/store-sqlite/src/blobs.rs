//! Content-addressed blob files: `blobs/ab/<sha256 hex>`, written durably.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mailkeep_store::BlobId;
use sha2::{Digest, Sha256};

#[derive(Clone)]
pub(crate) struct BlobDir {
    root: Arc<PathBuf>,
    counter: Arc<AtomicU64>,
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
        })
    }

    fn path_of(&self, id: &str) -> Option<PathBuf> {
        // Only our own ids: 64 lower-case hex digits, so no path can be smuggled in.
        if id.len() != 64 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        Some(self.root.join(&id[..2]).join(id))
    }

    pub(crate) fn put(&self, data: &[u8]) -> Result<BlobId, String> {
        let id = hex::encode(Sha256::digest(data));
        let path = self.path_of(&id).ok_or("bad blob id")?;
        if path.exists() {
            return Ok(BlobId(id));
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

    pub(crate) fn get(&self, id: &BlobId) -> Result<Option<Vec<u8>>, String> {
        let Some(path) = self.path_of(&id.0) else {
            return Ok(None);
        };
        match fs::read(&path) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("read {}: {e}", path.display())),
        }
    }
}
