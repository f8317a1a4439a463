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
pub mod lease;
pub mod maintain;

use crate::key::Hash;
use atomic::{Mode, Writer};
pub use lease::{Acquire, Committed, Identity, Lease, LeaseInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
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
    /// The directory holds another layout version.
    #[error("{} holds store layout {found:?}, this pipe reads {LAYOUT:?}", path.display())]
    Layout {
        /// The store root.
        path: PathBuf,
        /// What LAYOUT says.
        found: String,
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            lease_ttl: Duration::from_secs(30),
            fsync: true,
        }
    }
}

/// A handle on a store directory.
pub struct Store {
    root: PathBuf,
    writer: Writer,
    lease_ttl: Duration,
    me: Identity,
}

/// The store's directories. A format change bumps one's suffix.
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
    /// Staging for atomic writes.
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

impl Store {
    /// Open the store at `root`, creating its layout if the directory is new or empty.
    pub fn open(root: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        let me = Identity::current();
        let layout = root.join("LAYOUT");
        match fs::read_to_string(&layout) {
            Ok(s) if s.trim() == LAYOUT => {}
            Ok(s) => {
                return Err(StoreError::Layout {
                    path: root.to_path_buf(),
                    found: s.trim().to_string(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::init(root, &me, opts.fsync)?;
            }
            Err(e) => return Err(io(&layout)(e)),
        }
        Ok(Store {
            root: root.to_path_buf(),
            writer: Writer {
                tmp_dir: root.join(dirs::TMP),
                fsync: opts.fsync,
                tag: me.tag(),
            },
            lease_ttl: opts.lease_ttl,
            me,
        })
    }

    /// Create the directories (all 256 shards up front, so no write ever needs a mkdir), then
    /// LAYOUT last: a store without LAYOUT is simply initialised again.
    fn init(root: &Path, me: &Identity, fsync: bool) -> Result<(), StoreError> {
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
        let w = Writer {
            tmp_dir: root.join(dirs::TMP),
            fsync,
            tag: me.tag(),
        };
        if fsync {
            for d in [dirs::OBJECTS, dirs::ACTIONS] {
                let _ = atomic::sync_dir(&root.join(d));
            }
            let _ = atomic::sync_dir(root);
        }
        w.write(
            &root.join("LAYOUT"),
            format!("{LAYOUT}\n").as_bytes(),
            Mode::Replace,
        )?;
        Ok(())
    }

    /// Write `bytes` to `dest` outside the store (the reports directory) through the same
    /// atomic path as the store's own files: a hidden temp file beside `dest` (so the rename
    /// never crosses filesystems), synced when the store syncs, renamed over it. (A crash can
    /// leave that temp file; nothing reaps the reports directory, which is the user's.)
    pub fn export(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        self.export_with(dest, |f| f.write_all(bytes))
    }

    /// Copy object `id` to `dest` the same way, streamed and checked against its hash as it
    /// goes (a multi-GB model is never held in memory, and a corrupt object is never exported).
    pub fn export_object(&self, dest: &Path, id: &Hash) -> Result<u64, StoreError> {
        let (_, mut src) = self.open_object(id)?;
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
            fsync: self.writer.fsync,
            tag: format!(".{}", self.writer.tag),
        };
        w.write_with(dest, Mode::Replace, fill)?;
        Ok(())
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
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
        atomic::reap_tmp(&self.root.join(dirs::TMP), &self.me.host)
    }

    // ---- objects ----

    /// Where an object lives.
    pub fn object_path(&self, id: &Hash) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(dirs::OBJECTS).join(&hex[..2]).join(hex)
    }

    /// Whether an object is present (not verified).
    pub fn has_object(&self, id: &Hash) -> bool {
        self.object_path(id).exists()
    }

    /// Put bytes; returns their hash. Present objects are not rewritten.
    pub fn put(&self, bytes: &[u8]) -> Result<Hash, StoreError> {
        let id = Hash::of(bytes);
        let path = self.object_path(&id);
        if path.exists() {
            self.reuse(&path);
        } else {
            self.writer.write(&path, bytes, Mode::Replace)?;
        }
        Ok(id)
    }

    /// An object that is already present is reused: refresh it so a concurrent gc (which keeps
    /// fresh files) keeps it, and make sure its directory entry is durable before any record
    /// names it.
    fn reuse(&self, path: &Path) {
        self.touch(path);
        if self.writer.fsync {
            let _ = atomic::sync_dir(path.parent().unwrap_or(&self.root));
        }
    }

    /// Open object `id` for reading (a missing one is [`StoreError::MissingObject`]).
    fn open_object(&self, id: &Hash) -> Result<(PathBuf, fs::File), StoreError> {
        let path = self.object_path(id);
        match fs::File::open(&path) {
            Ok(f) => Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::MissingObject(*id))
            }
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Put an object written by `fill` as a stream: hashed while it is written to a temp file,
    /// never held in memory, then moved into place under its hash (a multi-GB model goes
    /// through here). An error from `fill` leaves nothing behind.
    pub fn put_stream<T, E: From<StoreError>>(
        &self,
        fill: impl FnOnce(&mut dyn Write) -> Result<T, E>,
    ) -> Result<(Hash, T), E> {
        let tmp = self.writer.tmp_path();
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
        if self.writer.fsync {
            file.sync_all().map_err(io)?;
        }
        drop(file);
        let id = Hash(*w.hasher.finalize().as_bytes());
        let path = self.object_path(&id);
        if path.exists() {
            let _ = fs::remove_file(tmp);
            self.reuse(&path);
        } else {
            self.writer.place(tmp, &path, Mode::Replace)?;
        }
        Ok((id, value))
    }

    /// The path of an object after checking, as a stream, that its bytes hash to its name: a
    /// large artifact is handed out as a file, never read into memory.
    pub fn object_file(&self, id: &Hash) -> Result<PathBuf, StoreError> {
        let (path, mut f) = self.open_object(id)?;
        let mut h = blake3::Hasher::new();
        h.update_reader(&mut f).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        let actual = Hash(*h.finalize().as_bytes());
        if actual != *id {
            return Err(StoreError::CorruptObject { id: *id, actual });
        }
        Ok(path)
    }

    /// Put a JSON value in its canonical form.
    pub fn put_json(&self, v: &Value) -> Result<Hash, StoreError> {
        self.put(crate::key::canonical(v).as_bytes())
    }

    /// Read an object and check that its bytes hash to its name.
    pub fn get(&self, id: &Hash) -> Result<Vec<u8>, StoreError> {
        let path = self.object_path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::MissingObject(*id));
            }
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let actual = Hash::of(&bytes);
        if actual != *id {
            return Err(StoreError::CorruptObject { id: *id, actual });
        }
        Ok(bytes)
    }

    /// Read a JSON object.
    pub fn get_json(&self, id: &Hash) -> Result<Value, StoreError> {
        let bytes = self.get(id)?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            what: format!("object {id} is not JSON: {e}"),
        })
    }

    /// Refresh an entry's mtime so that a concurrent `gc` (which keeps fresh files) keeps it.
    pub fn touch(&self, path: &Path) {
        if let Ok(f) = fs::File::options().append(true).open(path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    // ---- records ----

    /// Where a record lives.
    pub fn record_path(&self, key: &Hash) -> PathBuf {
        let hex = key.to_hex();
        self.root
            .join(dirs::ACTIONS)
            .join(&hex[..2])
            .join(format!("{hex}.json"))
    }

    /// Whether a record exists (not read).
    pub fn has_record(&self, key: &Hash) -> bool {
        self.record_path(key).exists()
    }

    /// Read a record; `None` when absent.
    pub fn record(&self, key: &Hash) -> Result<Option<ActionRecord>, StoreError> {
        let path = self.record_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let rec: ActionRecord =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                what: format!("record {}: {e}", path.display()),
            })?;
        if rec.key != *key {
            return Err(StoreError::Corrupt {
                what: format!("record {} names key {}", path.display(), rec.key),
            });
        }
        Ok(Some(rec))
    }

    /// Only [`Lease::commit`] calls this.
    fn write_record(&self, rec: &ActionRecord) -> Result<Committed, StoreError> {
        let bytes = serde_json::to_vec_pretty(rec).expect("record serialises");
        if self
            .writer
            .write(&self.record_path(&rec.key), &bytes, Mode::CreateNew)?
        {
            Ok(Committed::Written)
        } else {
            Ok(Committed::AlreadyPresent)
        }
    }

    // ---- refs ----

    fn ref_path(&self, stage: &str) -> PathBuf {
        self.root.join(dirs::REFS).join(format!("{stage}.json"))
    }

    /// A stage's ref, if it was ever completely built.
    pub fn get_ref(&self, stage: &str) -> Result<Option<Ref>, StoreError> {
        let path = self.ref_path(stage);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    what: format!("ref {}: {e}", path.display()),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Point a stage's ref at a complete build; its manifest and common objects must exist.
    pub fn set_ref(&self, r: &Ref) -> Result<(), StoreError> {
        for id in [r.manifest, r.common] {
            if !self.has_object(&id) {
                return Err(StoreError::MissingObject(id));
            }
        }
        let bytes = serde_json::to_vec_pretty(r).expect("ref serialises");
        self.writer
            .write(&self.ref_path(&r.stage), &bytes, Mode::Replace)?;
        Ok(())
    }

    /// What a build last learned about something outside the store that keys depend on (a
    /// model server's digest), so that `status` can compute the same keys without asking the
    /// server. A cache: losing it costs one probe; `name` is any stable string.
    pub fn put_probe(&self, name: &str, v: &Value) -> Result<(), StoreError> {
        let dir = self.root.join(dirs::PROBES);
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("{}.json", Hash::of(name.as_bytes()).to_hex()));
        let bytes = serde_json::to_vec(v).expect("JSON serialises");
        self.writer.write(&path, &bytes, Mode::Replace)?;
        Ok(())
    }

    /// The last value [`Store::put_probe`] wrote under `name`, if any (a damaged one is none).
    pub fn get_probe(&self, name: &str) -> Option<Value> {
        let path = self
            .root
            .join(dirs::PROBES)
            .join(format!("{}.json", Hash::of(name.as_bytes()).to_hex()));
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }

    fn checkpoint_path(&self, key: &Hash) -> PathBuf {
        self.root
            .join(dirs::CHECKPOINTS)
            .join(format!("{}.json", key.to_hex()))
    }

    /// Save the progress of the action `key` (its lease held): the bytes become an object and
    /// the key's checkpoint names it, replacing the last. Crash-safe like every write here.
    pub fn put_checkpoint(&self, key: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        let id = self.put(bytes)?;
        let path = self.checkpoint_path(key);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let pointer = serde_json::json!({ "object": id.to_hex() });
        self.writer.write(
            &path,
            &serde_json::to_vec(&pointer).expect("JSON"),
            Mode::Replace,
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
        let v: Value = serde_json::from_slice(&fs::read(self.checkpoint_path(key)).ok()?).ok()?;
        v["object"].as_str()?.parse().ok()
    }

    /// Forget `key`'s checkpoint (once its record is committed).
    pub fn drop_checkpoint(&self, key: &Hash) {
        let _ = fs::remove_file(self.checkpoint_path(key));
    }

    /// Drop a stage's ref (verify does this when the build it names lost a record).
    pub fn drop_ref(&self, stage: &str) -> Result<bool, StoreError> {
        match fs::remove_file(self.ref_path(stage)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io {
                path: self.ref_path(stage),
                source,
            }),
        }
    }

    /// All refs present.
    pub fn refs(&self) -> Result<Vec<Ref>, StoreError> {
        let dir = self.root.join(dirs::REFS);
        let mut out = Vec::new();
        let rd = fs::read_dir(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
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

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s"), StoreOptions::default()).unwrap();
        (d, s)
    }

    #[test]
    fn objects_roundtrip_and_detect_corruption() {
        let (_d, s) = store();
        let id = s.put(b"hello").unwrap();
        assert_eq!(s.get(&id).unwrap(), b"hello");
        let p = s.object_path(&id);
        let mut bytes = fs::read(&p).unwrap();
        bytes[0] ^= 1;
        fs::write(&p, bytes).unwrap();
        assert!(matches!(s.get(&id), Err(StoreError::CorruptObject { .. })));
    }

    #[test]
    fn first_record_writer_wins_and_lease_is_exclusive() {
        let (_d, s) = store();
        let key = Hash::of(b"k");
        let Acquire::Held(lease) = s.try_lease(&key).unwrap() else {
            panic!("fresh key must be free")
        };
        let Acquire::Busy(info) = s.try_lease(&key).unwrap() else {
            panic!("held key must be busy")
        };
        assert_eq!(info.pid, std::process::id());
        let out = s.put(b"out").unwrap();
        let rec = ActionRecord {
            key,
            stage: "t".into(),
            item: "i".into(),
            common: out,
            ingredients: Value::Null,
            outputs: [("o".to_string(), out)].into(),
            summary: Value::Null,
            producer: s.producer(),
            started_ms: 1,
            finished_ms: 2,
        };
        assert_eq!(lease.commit(&rec).unwrap(), Committed::Written);
        // The lease is released by the commit.
        let Acquire::Held(again) = s.try_lease(&key).unwrap() else {
            panic!("released key must be free")
        };
        let mut other = rec.clone();
        other.finished_ms = 99;
        assert_eq!(again.commit(&other).unwrap(), Committed::AlreadyPresent);
        assert_eq!(s.record(&key).unwrap().unwrap().finished_ms, 2);
    }

    #[test]
    fn commit_refuses_missing_outputs() {
        let (_d, s) = store();
        let key = Hash::of(b"k2");
        let Acquire::Held(lease) = s.try_lease(&key).unwrap() else {
            panic!()
        };
        let rec = ActionRecord {
            key,
            stage: "t".into(),
            item: "i".into(),
            common: Hash::of(b"x"),
            ingredients: Value::Null,
            outputs: [("o".to_string(), Hash::of(b"never written"))].into(),
            summary: Value::Null,
            producer: s.producer(),
            started_ms: 1,
            finished_ms: 2,
        };
        assert!(matches!(
            lease.commit(&rec),
            Err(StoreError::MissingOutput { .. })
        ));
        assert!(!s.has_record(&key));
    }

    #[test]
    fn dead_holder_on_this_host_is_taken_over() {
        let (_d, s) = store();
        let key = Hash::of(b"k3");
        // A lease of a process that does not exist (pid 1 with a different start time).
        let info = LeaseInfo {
            key,
            generation: 0,
            host: s.identity().host.clone(),
            pid: 1,
            boot_id: s.identity().boot_id.clone(),
            start_time: u64::MAX,
            acquired_ms: lease::now_ms(),
            expires_ms: lease::now_ms() + 3_600_000,
        };
        fs::write(s.lease_path(&key, 0), serde_json::to_vec(&info).unwrap()).unwrap();
        assert!(s.live_lease(&key).is_none());
        let Acquire::Held(l) = s.try_lease(&key).unwrap() else {
            panic!("dead lease must be taken over")
        };
        assert!(s.lease_path(&key, 1).exists());
        drop(l);
        assert!(!s.lease_path(&key, 1).exists());
    }

    #[test]
    fn foreign_live_lease_blocks_until_expiry() {
        let (_d, s) = store();
        let key = Hash::of(b"k4");
        let mut info = LeaseInfo {
            key,
            generation: 0,
            host: "another-machine".into(),
            pid: 1234,
            boot_id: "x".into(),
            start_time: 1,
            acquired_ms: lease::now_ms(),
            expires_ms: lease::now_ms() + 3_600_000,
        };
        fs::write(s.lease_path(&key, 0), serde_json::to_vec(&info).unwrap()).unwrap();
        assert!(matches!(s.try_lease(&key).unwrap(), Acquire::Busy(_)));
        info.expires_ms = lease::now_ms() - 1;
        fs::write(s.lease_path(&key, 0), serde_json::to_vec(&info).unwrap()).unwrap();
        assert!(matches!(s.try_lease(&key).unwrap(), Acquire::Held(_)));
    }

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
}
