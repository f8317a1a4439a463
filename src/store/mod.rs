//! The content-addressed store: objects, action records, leases and refs on a directory that
//! one or many `pipe` processes (on one or several machines) share.
//!
//! ```text
//! store/
//!   LAYOUT                 "pipe-store 1"
//!   objects-v1/ab/<hash>   immutable blobs named by their blake3; re-hashed on every read
//!   actions-v1/ab/<key>.json  action records: ingredients, output hashes, producer, times
//!   leases-v1/<key>.<generation>  who computes a key now; expires by itself (see lease.rs)
//!   refs-v1/<stage>.json   the last complete build of each stage: stage key + manifest object
//!   probes-v1/<name>.json  what a model server said it serves, for commands that ask none
//!   checkpoints-v1/<key>.json  a long action's last saved progress (an object), until its
//!                          record is committed
//!   tmp-v1/                staging for atomic writes (same filesystem)
//!   quarantine-v1/         what `pipe verify` found corrupt
//! ```
//!
//! The names are [`dirs`]' constants; nothing else spells them.
//!
//! A format change bumps a directory's suffix; nothing is rewritten in place.
//!
//! Depends on [`crate::key`] only.

pub mod atomic;
pub mod backend;
pub mod copy;
pub mod lease;
pub mod maintain;

use crate::key::Hash;
use atomic::{Mode, Writer};
use backend::{Backend, Cond, Location, Put, Version};
pub use lease::{Acquire, Committed, Identity, Lease, LeaseInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The store's layout version, written to `LAYOUT`.
pub const LAYOUT: &str = "pipe-store 1";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A filesystem call failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path acted on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An object's bytes do not hash to its name.
    #[error(
        "object {id} is corrupt (its content hashes to {actual}); run `pipe verify` to quarantine it"
    )]
    CorruptObject {
        /// The object's name.
        id: Hash,
        /// What the bytes hash to.
        actual: Hash,
    },
    /// An object is absent.
    #[error("object {0} is missing from the store")]
    MissingObject(Hash),
    /// Something else on disk is not what pipe wrote.
    #[error("store is corrupt: {what}")]
    Corrupt {
        /// What is wrong.
        what: String,
    },
    /// A commit named an output that was never written.
    #[error("record {key} names output {output} = {object}, which is not in the store")]
    MissingOutput {
        /// The record's key.
        key: Hash,
        /// Output name.
        output: String,
        /// Missing object.
        object: Hash,
    },
    /// The store holds another layout version.
    #[error("{location} holds store layout {found:?}, this pipe reads {LAYOUT:?}")]
    Layout {
        /// The store's location.
        location: String,
        /// What LAYOUT says.
        found: String,
    },
    /// A request to a bucket failed (after the object store's own retries).
    #[error(
        "{location}: {op} failed: {message} (the bucket's endpoint, region and credentials come \
         from the AWS_* environment variables: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, …)"
    )]
    Remote {
        /// Bucket URL and key.
        location: String,
        /// What was being done.
        op: &'static str,
        /// The error, with any credential blanked out.
        message: String,
    },
}

/// Who produced a record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Producer {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// pipe's version.
    pub version: String,
}

/// An action record: the commit point of one action.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActionRecord {
    /// The action's key.
    pub key: Hash,
    /// Stage name.
    pub stage: String,
    /// Item id within the stage.
    pub item: String,
    /// Object holding the ingredients shared by the stage's items.
    pub common: Hash,
    /// This item's own ingredients.
    pub ingredients: Value,
    /// Output objects by name.
    pub outputs: BTreeMap<String, Hash>,
    /// A small summary for status and reports (e.g. passed / failed).
    pub summary: Value,
    /// Who computed it.
    pub producer: Producer,
    /// Unix ms at start.
    pub started_ms: u64,
    /// Unix ms at end.
    pub finished_ms: u64,
}

/// A stage's last complete build.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ref {
    /// Stage name.
    pub stage: String,
    /// Hash of every item key in order; equal to the current one means nothing to do.
    pub stage_key: Hash,
    /// Object with the common ingredients.
    pub common: Hash,
    /// Object with the manifest (see [`Manifest`]).
    pub manifest: Hash,
    /// The stage's output hash: what downstream keys use.
    pub output: Hash,
    /// Number of items.
    pub items: usize,
    /// Unix ms when written.
    pub built_ms: u64,
    /// Who wrote it.
    pub producer: Producer,
}

/// One line of a manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestEntry {
    /// Item id.
    pub id: String,
    /// Its action key.
    pub key: Hash,
    /// Its outputs.
    pub outputs: BTreeMap<String, Hash>,
    /// Its summary.
    pub summary: Value,
}

/// The items of a complete stage, in order. Stored as a text object:
/// a header line, then `id \t key \t outputs-json \t summary-json` per item.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifest {
    /// The items.
    pub entries: Vec<ManifestEntry>,
}

const MANIFEST_HEADER: &str = "pipe-manifest 1";

impl Manifest {
    /// Serialise.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(64 + self.entries.len() * 160);
        s.push_str(MANIFEST_HEADER);
        s.push('\n');
        for e in &self.entries {
            s.push_str(&e.id);
            s.push('\t');
            s.push_str(&e.key.to_hex());
            s.push('\t');
            s.push_str(&serde_json::to_string(&e.outputs).expect("outputs serialise"));
            s.push('\t');
            s.push_str(&crate::key::canonical(&e.summary));
            s.push('\n');
        }
        s.into_bytes()
    }

    /// Parse.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, StoreError> {
        let bad = |what: &str| StoreError::Corrupt {
            what: format!("manifest: {what}"),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some(MANIFEST_HEADER) {
            return Err(bad("bad header"));
        }
        let mut entries = Vec::new();
        for line in lines {
            let mut f = line.split('\t');
            let (Some(id), Some(key), Some(out), Some(sum)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                return Err(bad("short line"));
            };
            entries.push(ManifestEntry {
                id: id.to_string(),
                key: key.parse().map_err(|_| bad("bad key"))?,
                outputs: serde_json::from_str(out).map_err(|_| bad("bad outputs"))?,
                summary: serde_json::from_str(sum).map_err(|_| bad("bad summary"))?,
            });
        }
        Ok(Manifest { entries })
    }

    /// The stage's output hash: ids, outputs and summaries — not keys, so that an action whose
    /// ingredients changed but whose outputs did not stops invalidation here (early cutoff).
    pub fn output_hash(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(b"pipe-stage-output-v1\0");
        for e in &self.entries {
            h.update(e.id.as_bytes());
            h.update(b"\t");
            h.update(
                serde_json::to_string(&e.outputs)
                    .expect("serialise")
                    .as_bytes(),
            );
            h.update(b"\t");
            h.update(crate::key::canonical(&e.summary).as_bytes());
            h.update(b"\n");
        }
        Hash(*h.finalize().as_bytes())
    }
}

/// Options for opening a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How long a lease lives without a heartbeat.
    pub lease_ttl: Duration,
    /// fsync files and directories (turn off only for throwaway benchmark stores).
    pub fsync: bool,
    /// Bucket settings by their `AWS_*` variable name, used over the process environment's
    /// (a program embedding pipe, tests running several stores in one process).
    pub aws: Vec<(String, String)>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            lease_ttl: Duration::from_secs(30),
            fsync: true,
            aws: Vec::new(),
        }
    }
}

/// A handle on a store: the same code over a directory or a bucket (see [`backend`]).
pub struct Store {
    backend: Arc<dyn Backend>,
    /// The directory, when the store is one.
    root: Option<PathBuf>,
    fsync: bool,
    lease_ttl: Duration,
    me: Identity,
}

/// The store's directories (key prefixes on a bucket). A format change bumps one's suffix.
pub mod dirs {
    /// Immutable blobs named by their blake3.
    pub const OBJECTS: &str = "objects-v1";
    /// Action records.
    pub const ACTIONS: &str = "actions-v1";
    /// Leases.
    pub const LEASES: &str = "leases-v1";
    /// Each stage's last complete build.
    pub const REFS: &str = "refs-v1";
    /// Model server identities, as last probed.
    pub const PROBES: &str = "probes-v1";
    /// Progress of long actions not yet committed.
    pub const CHECKPOINTS: &str = "checkpoints-v1";
    /// Staging for atomic writes (a directory store's only).
    pub const TMP: &str = "tmp-v1";
    /// What `pipe verify` found corrupt.
    pub const QUARANTINE: &str = "quarantine-v1";
    /// All of them, created when a store is initialised.
    pub const ALL: [&str; 8] = [
        OBJECTS,
        ACTIONS,
        LEASES,
        REFS,
        PROBES,
        CHECKPOINTS,
        TMP,
        QUARANTINE,
    ];
}

/// An object handed out as a file: the stored file itself in a directory store, a verified
/// download (removed when this is dropped) from a bucket.
pub struct ObjectFile {
    path: PathBuf,
    _download: Option<tempfile::TempPath>,
}

impl ObjectFile {
    /// Where to read it.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn object_key(id: &Hash) -> String {
    let hex = id.to_hex();
    format!("{}/{}/{hex}", dirs::OBJECTS, &hex[..2])
}

fn record_key(key: &Hash) -> String {
    let hex = key.to_hex();
    format!("{}/{}/{hex}.json", dirs::ACTIONS, &hex[..2])
}

fn ref_key(stage: &str) -> String {
    format!("{}/{stage}.json", dirs::REFS)
}

fn checkpoint_key(key: &Hash) -> String {
    format!("{}/{}.json", dirs::CHECKPOINTS, key.to_hex())
}

fn probe_key(name: &str) -> String {
    format!(
        "{}/{}.json",
        dirs::PROBES,
        Hash::of(name.as_bytes()).to_hex()
    )
}

/// The hash a stored value is named by: `objects-v1/ab/<hash>`, `actions-v1/ab/<key>.json`,
/// `checkpoints-v1/<key>.json`.
pub(crate) fn hash_in_key(key: &str) -> Option<Hash> {
    let name = key.rsplit('/').next()?;
    name.strip_suffix(".json").unwrap_or(name).parse().ok()
}

impl Store {
    /// Open the store at `location` (a directory, created with its layout if new or empty;
    /// or a bucket URL, initialised on first use the same way).
    pub fn open_at(location: &Location, opts: StoreOptions) -> Result<Store, StoreError> {
        let me = Identity::current();
        let (backend, root): (Arc<dyn Backend>, Option<PathBuf>) = match location {
            Location::Dir(root) => {
                Self::init_dir(root)?;
                let dir =
                    backend::dir::Dir::new(root, dirs::TMP, opts.fsync, me.tag(), me.host.clone());
                (Arc::new(dir), Some(root.clone()))
            }
            Location::Bucket(url) => (
                Arc::new(backend::bucket::Bucket::open(
                    url,
                    me.host.clone(),
                    &opts.aws,
                )?),
                None,
            ),
        };
        let store = Store {
            backend,
            root,
            fsync: opts.fsync,
            lease_ttl: opts.lease_ttl,
            me,
        };
        store.check_layout()?;
        Ok(store)
    }

    /// Open the directory store at `root`.
    pub fn open(root: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        Self::open_at(&Location::Dir(root.to_path_buf()), opts)
    }

    /// LAYOUT is written last: a store without it is simply initialised (again).
    fn check_layout(&self) -> Result<(), StoreError> {
        match self.backend.get("LAYOUT")? {
            Some(b) if String::from_utf8_lossy(&b.bytes).trim() == LAYOUT => Ok(()),
            Some(b) => Err(StoreError::Layout {
                location: self.backend.location(),
                found: String::from_utf8_lossy(&b.bytes).trim().to_string(),
            }),
            None => {
                if let Some(root) = &self.root
                    && self.fsync
                {
                    for d in [dirs::OBJECTS, dirs::ACTIONS] {
                        let _ = atomic::sync_dir(&root.join(d));
                    }
                    let _ = atomic::sync_dir(root);
                }
                self.backend
                    .put("LAYOUT", format!("{LAYOUT}\n").as_bytes(), Cond::Overwrite)?;
                Ok(())
            }
        }
    }

    /// A directory store's directories: all 256 shards up front, so no write needs a mkdir.
    fn init_dir(root: &Path) -> Result<(), StoreError> {
        if root.join("LAYOUT").exists() {
            return Ok(());
        }
        let mk = |p: &Path| {
            fs::create_dir_all(p).map_err(|source| StoreError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        for d in dirs::ALL {
            mk(&root.join(d))?;
        }
        for shard in 0..256 {
            mk(&root.join(dirs::OBJECTS).join(format!("{shard:02x}")))?;
            mk(&root.join(dirs::ACTIONS).join(format!("{shard:02x}")))?;
        }
        Ok(())
    }

    /// Write `bytes` to `dest` outside the store (the reports directory) through the same
    /// atomic path as a directory store's own files: a hidden temp file beside `dest` (so the
    /// rename never crosses filesystems), synced when the store syncs, renamed over it. (A
    /// crash can leave that temp file; nothing reaps the reports directory, which is the
    /// user's.)
    pub fn export(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        self.export_with(dest, |f| f.write_all(bytes))
    }

    /// Copy object `id` to `dest` the same way, streamed and checked against its hash as it
    /// goes (a multi-GB model is never held in memory, and a corrupt object is never exported).
    pub fn export_object(&self, dest: &Path, id: &Hash) -> Result<u64, StoreError> {
        let mut src = self.open_object(id)?;
        let mut copied = 0;
        let mut actual = None;
        self.export_with(dest, |f| {
            let mut w = Hashing {
                inner: f,
                hasher: blake3::Hasher::new(),
            };
            copied = std::io::copy(&mut src, &mut w)?;
            let h = Hash(*w.hasher.finalize().as_bytes());
            if h != *id {
                actual = Some(h);
                return Err(std::io::Error::other("the object does not match its hash"));
            }
            Ok(())
        })
        .map_err(|e| match actual {
            Some(actual) => StoreError::CorruptObject { id: *id, actual },
            None => e,
        })?;
        Ok(copied)
    }

    fn export_with(
        &self,
        dest: &Path,
        fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let w = Writer {
            tmp_dir: dir.to_path_buf(),
            fsync: self.fsync,
            tag: format!(".{}", self.me.tag()),
        };
        w.write_with(dest, Mode::Replace, fill)?;
        Ok(())
    }

    /// Where the store is, for messages: a directory or a bucket URL (never credentials).
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// The directory, when the store is one (`None` on a bucket).
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The backend (for housekeeping and for tests that damage a store on purpose).
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The requests this handle has made of its backend (none for a directory).
    pub fn requests(&self) -> backend::Requests {
        self.backend.requests()
    }

    /// This process's identity.
    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// The producer stamp for records written by this process.
    pub fn producer(&self) -> Producer {
        Producer {
            host: self.me.host.clone(),
            pid: self.me.pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Remove orphaned temp files of dead writers.
    pub fn reap_tmp(&self) -> usize {
        self.backend.reap()
    }

    // ---- objects ----

    /// The key an object is stored under (`objects-v1/ab/<hash>`).
    pub fn object_key(id: &Hash) -> String {
        object_key(id)
    }

    /// Whether an object is present (not verified); an error reads as absent — for callers
    /// for which absent is the safe side.
    pub fn has_object(&self, id: &Hash) -> bool {
        matches!(self.backend.head(&object_key(id)), Ok(Some(_)))
    }

    /// Whether an object is present, or the error that kept us from knowing (gc and verify
    /// must not act on a guess).
    pub fn object_present(&self, id: &Hash) -> Result<bool, StoreError> {
        Ok(self.backend.head(&object_key(id))?.is_some())
    }

    /// Put bytes; returns their hash. A present object is not rewritten in a directory (only
    /// refreshed); on a bucket the one PUT both writes and refreshes, and costs no more than
    /// asking first.
    pub fn put(&self, bytes: &[u8]) -> Result<Hash, StoreError> {
        let id = Hash::of(bytes);
        let key = object_key(&id);
        if self.root.is_some() && self.backend.head(&key)?.is_some() {
            self.reuse(&key);
        } else {
            self.backend.put(&key, bytes, Cond::Overwrite)?;
        }
        Ok(id)
    }

    /// An object that is already present is reused: refresh it so a concurrent gc (which keeps
    /// fresh values) keeps it, and make sure its directory entry is durable before any record
    /// names it.
    fn reuse(&self, key: &str) {
        self.backend.touch(key);
        if self.fsync
            && let Some(p) = self.backend.local_path(key)
        {
            let _ = atomic::sync_dir(p.parent().unwrap_or(Path::new(".")));
        }
    }

    /// Open object `id` for reading (a missing one is [`StoreError::MissingObject`]).
    fn open_object(&self, id: &Hash) -> Result<fs::File, StoreError> {
        self.backend
            .open(&object_key(id))?
            .ok_or(StoreError::MissingObject(*id))
    }

    /// A unique staging file name of this process (reaped if the process dies).
    fn staging_file(&self) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.backend
            .staging()
            .join(format!("{}-s{n}.tmp", self.me.tag()))
    }

    /// Put an object written by `fill` as a stream: hashed while it is written to a temp file,
    /// never held in memory, then moved (or uploaded) into place under its hash (a multi-GB
    /// model goes through here). An error from `fill` leaves nothing behind.
    pub fn put_stream<T, E: From<StoreError>>(
        &self,
        fill: impl FnOnce(&mut dyn Write) -> Result<T, E>,
    ) -> Result<(Hash, T), E> {
        let tmp = self.staging_file();
        let result = self.put_stream_inner(&tmp, fill);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn put_stream_inner<T, E: From<StoreError>>(
        &self,
        tmp: &Path,
        fill: impl FnOnce(&mut dyn Write) -> Result<T, E>,
    ) -> Result<(Hash, T), E> {
        let io = |source| StoreError::Io {
            path: tmp.to_path_buf(),
            source,
        };
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(io)?;
        let mut w = Hashing {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
        };
        let value = fill(&mut w)?;
        let file = w.inner.into_inner().map_err(|e| io(e.into_error()))?;
        if self.fsync && self.root.is_some() {
            file.sync_all().map_err(io)?;
        }
        drop(file);
        let id = Hash(*w.hasher.finalize().as_bytes());
        let key = object_key(&id);
        if self.backend.head(&key)?.is_some() {
            let _ = fs::remove_file(tmp);
            self.reuse(&key);
        } else {
            self.backend.put_file(&key, tmp)?;
        }
        Ok((id, value))
    }

    /// Object `id` as a file, after checking as a stream that its bytes hash to its name: a
    /// large artifact is handed out as a file, never read into memory.
    pub fn object_file(&self, id: &Hash) -> Result<ObjectFile, StoreError> {
        let corrupt = |h: blake3::Hasher| {
            let actual = Hash(*h.finalize().as_bytes());
            (actual != *id).then_some(StoreError::CorruptObject { id: *id, actual })
        };
        let mut src = self.open_object(id)?;
        if let Some(path) = self.backend.local_path(&object_key(id)) {
            let mut h = blake3::Hasher::new();
            h.update_reader(&mut src).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
            return match corrupt(h) {
                Some(e) => Err(e),
                None => Ok(ObjectFile {
                    path,
                    _download: None,
                }),
            };
        }
        let staging = self.backend.staging();
        let (f, path) = tempfile::NamedTempFile::new_in(staging)
            .map_err(|source| StoreError::Io {
                path: staging.to_path_buf(),
                source,
            })?
            .into_parts();
        // Hashed as it is written: the download is read once.
        let mut w = Hashing {
            inner: f,
            hasher: blake3::Hasher::new(),
        };
        std::io::copy(&mut src, &mut w).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(e) = corrupt(w.hasher) {
            return Err(e);
        }
        Ok(ObjectFile {
            path: path.to_path_buf(),
            _download: Some(path),
        })
    }

    /// Put a JSON value in its canonical form.
    pub fn put_json(&self, v: &Value) -> Result<Hash, StoreError> {
        self.put(crate::key::canonical(v).as_bytes())
    }

    /// Read an object and check that its bytes hash to its name.
    pub fn get(&self, id: &Hash) -> Result<Vec<u8>, StoreError> {
        let Some(b) = self.backend.get(&object_key(id))? else {
            return Err(StoreError::MissingObject(*id));
        };
        let actual = Hash::of(&b.bytes);
        if actual != *id {
            return Err(StoreError::CorruptObject { id: *id, actual });
        }
        Ok(b.bytes)
    }

    /// Read a JSON object.
    pub fn get_json(&self, id: &Hash) -> Result<Value, StoreError> {
        let bytes = self.get(id)?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            what: format!("object {id} is not JSON: {e}"),
        })
    }

    // ---- records ----

    /// The key a record is stored under (`actions-v1/ab/<key>.json`).
    pub fn record_key(key: &Hash) -> String {
        record_key(key)
    }

    /// Whether a record exists (not read).
    pub fn has_record(&self, key: &Hash) -> bool {
        matches!(self.backend.head(&record_key(key)), Ok(Some(_)))
    }

    /// Which of `keys` have a record. In a directory one `stat` each (in parallel); on a
    /// bucket one listing of the records (a page per 1,000) rather than a request per key —
    /// unless the bucket holds so many records that the listing would cost more (estimated
    /// from one shard's listing: keys are spread evenly over 256 shards).
    pub fn records_present(&self, keys: &[Hash]) -> Result<Vec<bool>, StoreError> {
        use rayon::prelude::*;
        let per_key = |keys: &[Hash]| keys.par_iter().map(|k| self.has_record(k)).collect();
        if self.root.is_some() || keys.len() <= 8 {
            return Ok(per_key(keys));
        }
        let shard = self.backend.list(&format!("{}/00/", dirs::ACTIONS))?.len();
        let pages = (shard * 256).div_ceil(1000).max(1);
        if pages * 4 > keys.len() {
            return Ok(per_key(keys));
        }
        let listed: std::collections::HashSet<Hash> = self
            .backend
            .list(&format!("{}/", dirs::ACTIONS))?
            .iter()
            .filter_map(|m| hash_in_key(&m.key))
            .collect();
        Ok(keys.iter().map(|k| listed.contains(k)).collect())
    }

    /// Refresh a record so that a concurrent gc keeps it (a build found it and will name it).
    pub fn touch_record(&self, key: &Hash) {
        self.backend.touch(&record_key(key));
    }

    /// Read a record; `None` when absent.
    pub fn record(&self, key: &Hash) -> Result<Option<ActionRecord>, StoreError> {
        let k = record_key(key);
        let Some(b) = self.backend.get(&k)? else {
            return Ok(None);
        };
        let rec: ActionRecord =
            serde_json::from_slice(&b.bytes).map_err(|e| StoreError::Corrupt {
                what: format!("record {k}: {e}"),
            })?;
        if rec.key != *key {
            return Err(StoreError::Corrupt {
                what: format!("record {k} names key {}", rec.key),
            });
        }
        Ok(Some(rec))
    }

    /// Only [`Lease::commit`] calls this.
    fn write_record(&self, rec: &ActionRecord) -> Result<Committed, StoreError> {
        let bytes = serde_json::to_vec_pretty(rec).expect("record serialises");
        match self
            .backend
            .put(&record_key(&rec.key), &bytes, Cond::IfAbsent)?
        {
            Put::Written(_) => Ok(Committed::Written),
            _ => Ok(Committed::AlreadyPresent),
        }
    }

    /// Remove a record (a commit that found an output gone after writing it).
    fn remove_record(&self, key: &Hash) {
        let _ = self.backend.delete(&record_key(key));
    }

    // ---- refs ----

    /// A stage's ref, if it was ever completely built.
    pub fn get_ref(&self, stage: &str) -> Result<Option<Ref>, StoreError> {
        Ok(self.get_ref_versioned(stage)?.map(|(r, _)| r))
    }

    fn get_ref_versioned(&self, stage: &str) -> Result<Option<(Ref, Version)>, StoreError> {
        let key = ref_key(stage);
        match self.backend.get(&key)? {
            Some(b) => serde_json::from_slice(&b.bytes)
                .map(|r| Some((r, b.version)))
                .map_err(|e| StoreError::Corrupt {
                    what: format!("ref {key}: {e}"),
                }),
            None => Ok(None),
        }
    }

    /// Point a stage's ref at a complete build; its manifest and common objects must exist.
    /// Compare and swap: when several workers finish the same build, the first one writes
    /// the ref and the others find it already there; a ref moved meanwhile to another build
    /// is replaced only over the version read (the last writer of a *different* build wins,
    /// as with any build: it is the newer one).
    pub fn set_ref(&self, r: &Ref) -> Result<SetRef, StoreError> {
        for id in [r.manifest, r.common] {
            if !self.has_object(&id) {
                return Err(StoreError::MissingObject(id));
            }
        }
        let bytes = serde_json::to_vec_pretty(r).expect("ref serialises");
        let key = ref_key(&r.stage);
        for _ in 0..100 {
            let cond = match self.get_ref_versioned(&r.stage) {
                Ok(Some((old, _)))
                    if old.stage_key == r.stage_key && old.manifest == r.manifest =>
                {
                    return Ok(SetRef::AlreadySet);
                }
                Ok(Some((_, v))) => Cond::IfMatch(v),
                Ok(None) => Cond::IfAbsent,
                // A ref that is not a ref is replaced (verify would drop it anyway); a ref we
                // could not read (a timeout) is not: it may be another worker's newer build.
                Err(StoreError::Corrupt { .. }) => Cond::Overwrite,
                Err(e) => return Err(e),
            };
            if let Put::Written(_) = self.backend.put(&key, &bytes, cond)? {
                return Ok(SetRef::Written);
            }
        }
        Err(StoreError::Corrupt {
            what: format!("ref {key} kept changing under 100 attempts to set it"),
        })
    }

    /// What a build last learned about something outside the store that keys depend on (a
    /// model server's digest), so that `status` can compute the same keys without asking the
    /// server. A cache: losing it costs one probe; `name` is any stable string.
    pub fn put_probe(&self, name: &str, v: &Value) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(v).expect("JSON serialises");
        self.backend
            .put(&probe_key(name), &bytes, Cond::Overwrite)?;
        Ok(())
    }

    /// The last value [`Store::put_probe`] wrote under `name`, if any (a damaged one is none).
    pub fn get_probe(&self, name: &str) -> Option<Value> {
        let b = self.backend.get(&probe_key(name)).ok()??;
        serde_json::from_slice(&b.bytes).ok()
    }

    /// Save the progress of the action `key` (its lease held): the bytes become an object and
    /// the key's checkpoint names it, replacing the last. Crash-safe like every write here.
    pub fn put_checkpoint(&self, key: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        let id = self.put(bytes)?;
        let pointer = serde_json::json!({ "object": id.to_hex() });
        self.backend.put(
            &checkpoint_key(key),
            &serde_json::to_vec(&pointer).expect("JSON"),
            Cond::Overwrite,
        )?;
        Ok(())
    }

    /// The last progress saved for `key`, verified; none when there is none, or when it
    /// cannot be read back intact (the action then starts over: never from corrupt bytes).
    pub fn get_checkpoint(&self, key: &Hash) -> Option<Vec<u8>> {
        let id = self.checkpoint_object(key)?;
        match self.get(&id) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!("checkpoint of {key} unusable, starting over: {e}");
                None
            }
        }
    }

    /// The object a key's checkpoint names.
    pub fn checkpoint_object(&self, key: &Hash) -> Option<Hash> {
        let b = self.backend.get(&checkpoint_key(key)).ok()??;
        let v: Value = serde_json::from_slice(&b.bytes).ok()?;
        v["object"].as_str()?.parse().ok()
    }

    /// Forget `key`'s checkpoint (once its record is committed).
    pub fn drop_checkpoint(&self, key: &Hash) {
        let _ = self.backend.delete(&checkpoint_key(key));
    }

    /// Drop a stage's ref (verify does this when the build it names lost a record).
    pub fn drop_ref(&self, stage: &str) -> Result<bool, StoreError> {
        self.backend.delete(&ref_key(stage))
    }

    /// All refs present.
    pub fn refs(&self) -> Result<Vec<Ref>, StoreError> {
        let mut out = Vec::new();
        for m in self.backend.list(&format!("{}/", dirs::REFS))? {
            let name = m.key.rsplit('/').next().unwrap_or_default();
            if let Some(stage) = name.strip_suffix(".json")
                && let Some(r) = self.get_ref(stage)?
            {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.stage.cmp(&b.stage));
        Ok(out)
    }

    /// Read and verify a manifest object.
    pub fn manifest(&self, id: &Hash) -> Result<Manifest, StoreError> {
        Manifest::decode(&self.get(id)?)
    }
}

/// A pool of `threads` for I/O-bound work over a store's values.
pub(crate) fn io_pool(threads: usize) -> Result<rayon::ThreadPool, StoreError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| StoreError::Corrupt {
            what: format!("thread pool: {e}"),
        })
}

/// What [`Store::set_ref`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum SetRef {
    /// The ref now names our build.
    Written,
    /// It already named this very build (another worker finished it first).
    AlreadySet,
}

/// A writer that hashes what it writes.
struct Hashing<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_roundtrip() {
        let m = Manifest {
            entries: vec![ManifestEntry {
                id: "stack/base/0".into(),
                key: Hash::of(b"a"),
                outputs: [("trial".to_string(), Hash::of(b"b"))].into(),
                summary: serde_json::json!({"passed": true}),
            }],
        };
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn a_url_is_a_bucket_and_anything_else_a_path() {
        let base = Path::new("/p");
        assert_eq!(
            Location::parse("s3://b/team/", base),
            Location::Bucket("s3://b/team".into())
        );
        assert_eq!(
            Location::parse("store", base),
            Location::Dir(PathBuf::from("/p/store"))
        );
    }
}
