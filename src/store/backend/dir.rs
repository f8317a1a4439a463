//! A store in a directory: a local disk, or a filesystem several machines mount.
//!
//! Every write goes through [`atomic::Writer`]: a temp file in `tmp-v1/`, synced, then renamed
//! (overwrite) or hard-linked (create only if absent: `link(2)` fails with EEXIST on local
//! filesystems and on NFS alike) into place. Compare and swap takes an exclusive `flock` on the
//! current file, checks that the path still names the locked file and that its version is the
//! expected one, then renames the new file over it; a second swapper waiting on the same lock
//! then finds the path naming another file and fails.

use super::super::StoreError;
use super::super::atomic::{self, Mode, Writer};
use super::{Backend, Blob, Cond, Meta, Put, Requests, Version};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A directory backend.
pub struct Dir {
    root: PathBuf,
    writer: Writer,
    host: String,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn version_of(m: &fs::Metadata) -> Version {
    Version(format!(
        "{}-{}-{}",
        m.ino(),
        m.size(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000
    ))
}

fn meta_of(key: String, m: &fs::Metadata) -> Meta {
    let modified_ms = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    Meta {
        key,
        size: m.len(),
        modified_ms,
        version: version_of(m),
    }
}

impl Dir {
    /// The directory backend at `root` (which exists), staging in `root/<tmp>`.
    pub fn new(root: &Path, tmp: &str, fsync: bool, tag: String, host: String) -> Dir {
        Dir {
            root: root.to_path_buf(),
            writer: Writer {
                tmp_dir: root.join(tmp),
                fsync,
                tag,
            },
            host,
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Create the directories a write may need (shards are made up front; a new kind of key
    /// may still need its directory).
    fn ensure_parent(&self, path: &Path) -> Result<(), StoreError> {
        match path.parent() {
            Some(d) if !d.exists() => fs::create_dir_all(d).map_err(io_err(d)),
            _ => Ok(()),
        }
    }

    fn swap(&self, path: &Path, bytes: &[u8], expected: &Version) -> Result<Put, StoreError> {
        // Opened for writing too: on NFS, Linux turns `flock` into a POSIX lock, whose
        // exclusive form needs a writable descriptor.
        let f = match File::options().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Put::Mismatch),
            Err(e) => return Err(io_err(path)(e)),
        };
        // SAFETY: a valid open file descriptor; the lock goes with the file when it closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = io::Error::last_os_error();
            // A filesystem without locks (Lustre without `-o flock`, some FUSE mounts): check
            // the version and replace. Not atomic against a second swapper, which the store
            // tolerates — a lease is only ever renewed by its holder, and two workers setting
            // a ref at once set the same build or a newer one.
            if !matches!(
                e.raw_os_error(),
                Some(libc::ENOLCK | libc::ENOSYS | libc::EINVAL | libc::EBADF | libc::EOPNOTSUPP)
            ) {
                return Err(io_err(path)(e));
            }
            let now = match fs::metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Put::Mismatch),
                Err(e) => return Err(io_err(path)(e)),
            };
            if version_of(&now) != *expected {
                return Ok(Put::Mismatch);
            }
            self.writer.write(path, bytes, Mode::Replace)?;
            let m = fs::metadata(path).map_err(io_err(path))?;
            return Ok(Put::Written(version_of(&m)));
        }
        let locked = f.metadata().map_err(io_err(path))?;
        let now = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Put::Mismatch),
            Err(e) => return Err(io_err(path)(e)),
        };
        if now.ino() != locked.ino() || version_of(&locked) != *expected {
            return Ok(Put::Mismatch);
        }
        self.writer.write(path, bytes, Mode::Replace)?;
        let m = fs::metadata(path).map_err(io_err(path))?;
        drop(f);
        Ok(Put::Written(version_of(&m)))
    }
}

impl Backend for Dir {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, key: &str) -> Result<Option<Blob>, StoreError> {
        let path = self.path(key);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        // The version of the file we read, not of whatever the path names a moment later.
        let m = f.metadata().map_err(io_err(&path))?;
        let mut bytes = Vec::with_capacity(m.len() as usize);
        io::Read::read_to_end(&mut f, &mut bytes).map_err(io_err(&path))?;
        Ok(Some(Blob {
            bytes,
            version: version_of(&m),
        }))
    }

    fn open(&self, key: &str) -> Result<Option<File>, StoreError> {
        let path = self.path(key);
        match File::open(&path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn head(&self, key: &str) -> Result<Option<Meta>, StoreError> {
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(meta_of(key.to_string(), &m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8], cond: Cond) -> Result<Put, StoreError> {
        let path = self.path(key);
        self.ensure_parent(&path)?;
        let mode = match cond {
            Cond::Overwrite => Mode::Replace,
            Cond::IfAbsent => Mode::CreateNew,
            Cond::IfMatch(v) => return self.swap(&path, bytes, &v),
        };
        if !self.writer.write(&path, bytes, mode)? {
            return Ok(Put::Exists);
        }
        let m = fs::metadata(&path).map_err(io_err(&path))?;
        Ok(Put::Written(version_of(&m)))
    }

    fn put_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        let path = self.path(key);
        self.ensure_parent(&path)?;
        self.writer.place(file, &path, Mode::Replace)?;
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Meta>, StoreError> {
        let dir = self.path(prefix);
        let mut out = Vec::new();
        if !dir.exists() {
            return Ok(out);
        }
        for e in walkdir::WalkDir::new(&dir).min_depth(1) {
            // An unreadable directory must not read as an empty one: gc would take what it
            // holds for unreachable. A file removed while we walk is simply gone.
            let e = match e {
                Ok(e) => e,
                Err(err) if err.io_error().map(|e| e.kind()) == Some(io::ErrorKind::NotFound) => {
                    continue;
                }
                Err(err) => {
                    let path = err.path().unwrap_or(&dir).to_path_buf();
                    return Err(StoreError::Io {
                        path,
                        source: err.into(),
                    });
                }
            };
            if !e.file_type().is_file() {
                continue;
            }
            let Ok(m) = e.metadata() else {
                continue; // removed while we walked
            };
            let Ok(rel) = e.path().strip_prefix(&self.root) else {
                continue;
            };
            out.push(meta_of(rel.to_string_lossy().into_owned(), &m));
        }
        Ok(out)
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let (src, dst) = (self.path(from), self.path(to));
        self.ensure_parent(&dst)?;
        fs::rename(&src, &dst).map_err(io_err(&src))
    }

    fn touch(&self, key: &str) {
        // Opening for append never creates: a file gc removed stays removed.
        if let Ok(f) = File::options().append(true).open(self.path(key)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    fn staging(&self) -> &Path {
        &self.writer.tmp_dir
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.path(key))
    }

    fn reap(&self) -> usize {
        atomic::reap_tmp(&self.writer.tmp_dir, &self.host)
    }

    fn requests(&self) -> Requests {
        Requests::default()
    }

    fn io_parallelism(&self) -> usize {
        rayon::current_num_threads()
    }
}

impl Dir {
    /// The writer (for [`Store::export`](super::super::Store::export), which writes outside).
    pub fn writer(&self) -> &Writer {
        &self.writer
    }
}
