//! Where the store's bytes live: a directory ([`dir::Dir`]: a local disk or a filesystem shared
//! between machines) or an object store ([`bucket::Bucket`]: S3 and S3-compatible services,
//! through the `object_store` crate).
//!
//! A backend knows nothing of objects, records or leases. It stores byte strings under keys
//! (`objects-v1/ab/<hash>`, `actions-v1/ab/<key>.json`, …) with the three write conditions the
//! store's promises rest on, and the [`Store`](super::Store) above it is the same code for
//! both. So are the tests: the store's suite runs against each backend.

pub mod bucket;
pub mod dir;

use super::StoreError;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The version a backend gives a stored value: an ETag on a bucket, inode-size-mtime on a
/// directory. Opaque; only ever handed back in [`Cond::IfMatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(pub String);

/// When a put may write.
#[derive(Clone, Debug)]
pub enum Cond {
    /// Always (content-addressed objects, whose bytes are fixed by their name).
    Overwrite,
    /// Only if nothing is stored under the key: the first writer wins (records, new leases).
    IfAbsent,
    /// Only if the stored value is still this version (lease renewals, refs): compare and swap.
    IfMatch(Version),
}

/// What a conditional put did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Put {
    /// Our bytes are stored, at this version.
    Written(Version),
    /// [`Cond::IfAbsent`]: another value was already there; nothing changed.
    Exists,
    /// [`Cond::IfMatch`]: the value changed (or went) since that version; nothing changed.
    Mismatch,
}

/// A stored value's metadata, as a listing or a head request gives it.
#[derive(Clone, Debug)]
pub struct Meta {
    /// The key, relative to the store's root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last write (or refresh), Unix ms: what gc's grace period is measured against.
    pub modified_ms: u64,
    /// The version to compare and swap against.
    pub version: Version,
}

/// A value read with its version.
pub struct Blob {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Their version.
    pub version: Version,
}

/// Requests a backend made, by kind, so that a team can price a bucket (see `pipe bench`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Requests {
    /// Writes (PUT, and the parts of multipart uploads).
    pub put: u64,
    /// Reads of a value.
    pub get: u64,
    /// Metadata reads.
    pub head: u64,
    /// Listing pages.
    pub list: u64,
    /// Deletes.
    pub delete: u64,
    /// Server-side copies.
    pub copy: u64,
}

impl Requests {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.put + self.get + self.head + self.list + self.delete + self.copy
    }
}

/// The storage under a [`Store`](super::Store).
pub trait Backend: Send + Sync {
    /// Where this is, for messages (`/path/to/store`, `s3://bucket/prefix`). Never credentials.
    fn location(&self) -> String;

    /// The value under `key` with its version; `None` when absent.
    fn get(&self, key: &str) -> Result<Option<Blob>, StoreError>;

    /// A value as a readable file (a multi-GB object is never held in memory): the stored file
    /// itself on a directory, a download into a private temporary file on a bucket.
    fn open(&self, key: &str) -> Result<Option<File>, StoreError>;

    /// The value's metadata; `None` when absent.
    fn head(&self, key: &str) -> Result<Option<Meta>, StoreError>;

    /// Store `bytes` under `key` if `cond` allows. Atomic: a reader sees the old value or the
    /// new one, never part of either, whatever crashes.
    fn put(&self, key: &str, bytes: &[u8], cond: Cond) -> Result<Put, StoreError>;

    /// Store the finished file at `file` under `key`, overwriting (content-addressed objects
    /// only). The file is consumed (moved or uploaded, then removed).
    fn put_file(&self, key: &str, file: &Path) -> Result<(), StoreError>;

    /// Remove `key`; `false` when it was already gone.
    fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Every value whose key starts with `prefix` (a directory path ending in `/`).
    fn list(&self, prefix: &str) -> Result<Vec<Meta>, StoreError>;

    /// Move a value to another key (quarantine).
    fn rename(&self, from: &str, to: &str) -> Result<(), StoreError>;

    /// Mark a value as just used, so that a concurrent gc (which spares fresh values) keeps it.
    /// A value that is gone stays gone: a refresh never re-creates.
    fn touch(&self, key: &str);

    /// A local directory for temporary files that [`Backend::put_file`] will consume: on the
    /// same filesystem as a directory store (the move is a rename).
    fn staging(&self) -> &Path;

    /// The stored file's path when the backend is a directory (`pipe export` and llama.cpp
    /// read models in place); `None` on a bucket.
    fn local_path(&self, key: &str) -> Option<PathBuf>;

    /// Remove staging files that dead writers left. Returns how many.
    fn reap(&self) -> usize;

    /// The requests made so far (zero for a directory, which makes none).
    fn requests(&self) -> Requests;

    /// How many values to read at a time when reading many (verify): a disk is as fast as
    /// its cores hash, a bucket's requests wait on the network.
    fn io_parallelism(&self) -> usize;
}

/// Where a store is: a directory or a bucket URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory.
    Dir(PathBuf),
    /// An object store, as `s3://bucket/prefix`.
    Bucket(String),
}

impl Location {
    /// Parse what `store.path` or `--store` says: a URL with a scheme is a bucket, anything
    /// else a path (relative ones against `base`).
    pub fn parse(s: &str, base: &Path) -> Location {
        if s.contains("://") {
            Location::Bucket(s.trim_end_matches('/').to_string())
        } else {
            Location::Dir(base.join(s))
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(p) => write!(f, "{}", p.display()),
            Location::Bucket(u) => f.write_str(u),
        }
    }
}
