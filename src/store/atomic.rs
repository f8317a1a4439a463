//! The store's one write path. Every file under the store is written here:
//! a fresh file in `tmp-v1/` → `sync_all` → `rename` (replace) or `link` (create only if absent)
//! into place → fsync of the destination directory. A crash at any point leaves either the old
//! state or the new one, plus at worst an orphan in `tmp-v1/` that [`reap_tmp`] removes.

use super::StoreError;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How a finished temp file goes into place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Replace whatever is there (refs, lease heartbeats, content-addressed objects).
    Replace,
    /// Create only if absent: the first writer wins (action records, new leases).
    CreateNew,
}

/// Where the temp files of this process go, and whether to fsync.
#[derive(Clone, Debug)]
pub struct Writer {
    pub(crate) tmp_dir: PathBuf,
    pub(crate) fsync: bool,
    pub(crate) tag: String,
}

impl Writer {
    /// A unique temp path: `<tag>-<counter>.tmp`, where the tag names host, pid and start time
    /// so that [`reap_tmp`] can tell an orphan from a live writer's file.
    pub(crate) fn tmp_path(&self) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir.join(format!("{}-{n}.tmp", self.tag))
    }

    /// Write `bytes` to `dest` atomically. Returns `false` when `mode` is `CreateNew` and `dest`
    /// already existed (nothing was changed).
    pub fn write(&self, dest: &Path, bytes: &[u8], mode: Mode) -> Result<bool, StoreError> {
        self.write_with(dest, mode, |f| f.write_all(bytes))
    }

    /// Write what `fill` writes to `dest` atomically (a large file streamed in, never held).
    pub fn write_with(
        &self,
        dest: &Path,
        mode: Mode,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> Result<bool, StoreError> {
        let tmp = self.tmp_path();
        let res = self.write_inner(&tmp, dest, mode, fill);
        if res.is_err() || mode == Mode::CreateNew {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    fn write_inner(
        &self,
        tmp: &Path,
        dest: &Path,
        mode: Mode,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> Result<bool, StoreError> {
        let io = |source| StoreError::Io {
            path: dest.to_path_buf(),
            source,
        };
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(tmp)
                .map_err(|source| StoreError::Io {
                    path: tmp.to_path_buf(),
                    source,
                })?;
            fill(&mut f).map_err(io)?;
            crate::failpoint("atomic:written");
            if self.fsync {
                f.sync_all().map_err(io)?;
            }
        }
        crate::failpoint("atomic:synced");
        self.place(tmp, dest, mode)
    }

    /// Move a finished, synced temp file into place (see [`Mode`]), then make the directory
    /// entry durable. The second half of every write, also of a streamed object's.
    pub(crate) fn place(&self, tmp: &Path, dest: &Path, mode: Mode) -> Result<bool, StoreError> {
        let io = |source| StoreError::Io {
            path: dest.to_path_buf(),
            source,
        };
        let created = match mode {
            Mode::Replace => {
                fs::rename(tmp, dest).map_err(io)?;
                true
            }
            // link(2) fails with EEXIST if dest exists, on local filesystems and on NFS alike,
            // which is why it (and not a check-then-rename) decides who wrote first.
            Mode::CreateNew => match fs::hard_link(tmp, dest) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(io(e)),
            },
        };
        crate::failpoint("atomic:renamed");
        if created && self.fsync {
            sync_dir(dest.parent().unwrap_or(Path::new("."))).map_err(io)?;
        }
        Ok(created)
    }
}

/// fsync a directory so that a rename or link in it survives a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Remove temp files whose writer is gone: same host and that process no longer runs, or older
/// than a day (a writer on another machine that died). Returns how many were removed.
pub fn reap_tmp(tmp_dir: &Path, host: &str) -> usize {
    let Ok(rd) = fs::read_dir(tmp_dir) else {
        return 0;
    };
    let day = std::time::Duration::from_secs(24 * 3600);
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let orphan = match super::lease::parse_tag(&name) {
            Some((h, pid, start)) if h == host => !super::lease::process_alive(pid, start),
            _ => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > day),
        };
        if orphan && fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}
