//! Leases: who is computing a key right now. A lease is advisory — it splits work between
//! processes so that none computes a key another live worker holds — while correctness rests on
//! records being created only if absent (the first writer wins).
//!
//! A lease lives in `leases-v1/<key>.<generation>`, created only if absent. The holder rewrites it every
//! `ttl / 3` with a new expiry and a renewal count (the heartbeat), by compare and swap over the
//! version it last wrote: a heartbeat never re-creates a lease gc removed or overwrites another
//! writer's, and since every renewal changes the bytes, an old version (an S3 ETag is the MD5
//! of the bytes) never matches again. A lease is dead when its expiry has passed, or at
//! once when its holder is on this host (same boot) and its process is gone. A dead generation
//! `g` is taken over by creating `g + 1`, which only one process can do. Taking and releasing
//! never lock anything (a directory store's renewal swaps under a short `flock` where the
//! filesystem has one), so it works the same on a directory shared between machines and on a
//! bucket, given clocks that agree to well within the TTL.

use super::backend::{Backend, Cond, Put, Version};
use super::{ActionRecord, Store, StoreError};
use crate::key::Hash;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a lease file says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The key being computed.
    pub key: Hash,
    /// Takeover generation.
    pub generation: u32,
    /// Holder's host name.
    pub host: String,
    /// Holder's process id.
    pub pid: u32,
    /// Holder's boot id (Linux), so a pid from before a reboot is not mistaken for a live one.
    pub boot_id: String,
    /// Holder's process start time (clock ticks since boot), against pid reuse.
    pub start_time: u64,
    /// Unix ms when taken.
    pub acquired_ms: u64,
    /// Unix ms after which the lease is dead unless renewed.
    pub expires_ms: u64,
    /// Heartbeats so far: every renewal writes different bytes, even within one millisecond.
    #[serde(default)]
    pub renewals: u64,
}

impl LeaseInfo {
    /// Parse a lease's bytes; `None` when unreadable.
    pub fn parse(bytes: &[u8]) -> Option<LeaseInfo> {
        serde_json::from_slice(bytes).ok()
    }

    /// Read the lease stored under `key` with its version; `None` when absent or unreadable.
    pub fn read(backend: &dyn Backend, key: &str) -> Option<(LeaseInfo, Version)> {
        let b = backend.get(key).ok()??;
        Some((Self::parse(&b.bytes)?, b.version))
    }

    /// Whether the holder still counts as working on the key.
    pub fn is_live(&self, me: &Identity) -> bool {
        if self.expires_ms <= now_ms() {
            return false;
        }
        if self.host == me.host && self.boot_id == me.boot_id {
            return process_alive(self.pid, self.start_time);
        }
        true
    }
    /// `host:pid for 42s`: who holds it and since when, for status lines.
    pub fn holder(&self) -> String {
        let secs = now_ms().saturating_sub(self.acquired_ms) / 1000;
        format!(
            "{}:{} for {}",
            self.host,
            self.pid,
            humantime::format_duration(Duration::from_secs(secs))
        )
    }
}

/// This process, as it appears in leases, records and temp-file names.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Linux boot id, or empty.
    pub boot_id: String,
    /// Process start time in clock ticks since boot.
    pub start_time: u64,
}

impl Identity {
    /// The identity of the running process.
    pub fn current() -> Identity {
        let pid = std::process::id();
        Identity {
            host: hostname(),
            pid,
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            start_time: process_start_time(pid).unwrap_or(0),
        }
    }
    /// The prefix of this process's temp files.
    pub fn tag(&self) -> String {
        format!("{}~{}~{}", self.host, self.pid, self.start_time)
    }
}

/// Parse a temp-file tag back into (host, pid, start time).
pub fn parse_tag(name: &str) -> Option<(String, u32, u64)> {
    let mut it = name.splitn(3, '~');
    let host = it.next()?.to_string();
    let pid = it.next()?.parse().ok()?;
    let rest = it.next()?;
    let start = rest.split('-').next()?.parse().ok()?;
    Some((host, pid, start))
}

fn hostname() -> String {
    if let Ok(h) = std::env::var("PIPE_HOSTNAME") {
        return h;
    }
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for 256 bytes; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).replace(['~', '/'], "_")
}

fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after the last ')' are plain.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid`, started at `start_time`, still runs (on this host). A zombie counts as
/// gone: it computes nothing.
pub fn process_alive(pid: u32, start_time: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 1..].split_whitespace();
    if fields.next() == Some("Z") {
        return false;
    }
    match process_start_time(pid) {
        Some(t) => start_time == 0 || t == start_time,
        None => false,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The outcome of trying to take a lease.
pub enum Acquire<'s> {
    /// This process now holds the key.
    Held(Lease<'s>),
    /// A live worker holds it.
    Busy(LeaseInfo),
}

/// A held lease: the only way to commit an action record.
pub struct Lease<'s> {
    store: &'s Store,
    info: LeaseInfo,
    path: String,
    released: bool,
}

/// What a commit did.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// Our record is now the key's record.
    Written,
    /// Another writer committed first; theirs stands and ours was dropped.
    AlreadyPresent,
}

impl<'s> Lease<'s> {
    /// The key this lease is for.
    pub fn key(&self) -> Hash {
        self.info.key
    }

    /// Commit the record (create-if-absent) and release the lease. Every output object must
    /// already be in the store: a record never points at a missing object.
    pub fn commit(mut self, record: &ActionRecord) -> Result<Committed, StoreError> {
        assert_eq!(
            record.key, self.info.key,
            "a lease commits only its own key"
        );
        for (name, id) in &record.outputs {
            if !self.store.has_object(id) {
                return Err(StoreError::MissingOutput {
                    key: record.key,
                    output: name.clone(),
                    object: *id,
                });
            }
        }
        let res = self.store.write_record(record);
        crate::failpoint("lease:committed");
        // A gc that marked before this record existed may have removed an output between the
        // check above and the write. Look again now that the record is visible: what gc
        // removes from here on, it removes after seeing the record (and gc's own re-check
        // drops such a record). So no record outlives an object it names.
        let mut named: Vec<(String, Hash)> = record
            .outputs
            .iter()
            .map(|(n, id)| (n.clone(), *id))
            .collect();
        named.push(("common".into(), record.common));
        let mut blobs = Vec::new();
        super::maintain::obj_refs(&record.ingredients, &mut blobs);
        named.extend(blobs.into_iter().map(|id| ("ingredient".to_string(), id)));
        if let Ok(Committed::Written) = res
            && let Some((name, id)) = named.iter().find(|(_, id)| !self.store.has_object(id))
        {
            self.store.remove_record(&record.key);
            self.release_inner();
            return Err(StoreError::MissingOutput {
                key: record.key,
                output: name.clone(),
                object: *id,
            });
        }
        self.release_inner();
        res
    }

    fn release_inner(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        keeper().forget(&self.path);
        // Remove the file only if it is still ours: after a takeover it may be another
        // holder's. Older generations stay (gc removes whole dead chains), so a chain never
        // has a gap that would let a second holder start again at generation 0.
        let ours = LeaseInfo::read(self.store.backend(), &self.path).is_some_and(|(i, _)| {
            i.pid == self.info.pid
                && i.host == self.info.host
                && i.start_time == self.info.start_time
                && i.acquired_ms == self.info.acquired_ms
        });
        if ours {
            let _ = self.store.backend().delete(&self.path);
        }
    }
}

impl Drop for Lease<'_> {
    /// Dropping without commit (the action failed) releases the key for others.
    fn drop(&mut self) {
        self.release_inner();
    }
}

impl Store {
    /// The key generation `generation` of `key`'s lease is stored under.
    pub fn lease_key(key: &Hash, generation: u32) -> String {
        format!("{}/{}.{generation}", super::dirs::LEASES, key.to_hex())
    }

    /// Read generation `generation` of a key's lease, if present and readable.
    fn read_lease(&self, key: &Hash, generation: u32) -> Option<LeaseInfo> {
        LeaseInfo::read(self.backend(), &Self::lease_key(key, generation)).map(|(i, _)| i)
    }

    /// Every live lease, by key: one listing (then a read of each lease present), not a
    /// request per key — what `status` shows as running.
    pub fn live_leases(&self) -> Result<HashMap<Hash, LeaseInfo>, StoreError> {
        let mut out: HashMap<Hash, LeaseInfo> = HashMap::new();
        for m in self.backend().list(&format!("{}/", super::dirs::LEASES))? {
            let Some((info, _)) = LeaseInfo::read(self.backend(), &m.key) else {
                continue;
            };
            if info.is_live(&self.me)
                && out
                    .get(&info.key)
                    .is_none_or(|o| o.generation < info.generation)
            {
                out.insert(info.key, info);
            }
        }
        Ok(out)
    }

    /// The live lease on a key, if any (for status).
    pub fn live_lease(&self, key: &Hash) -> Option<LeaseInfo> {
        let mut generation = 0;
        let mut last_live = None;
        while let Some(info) = self.read_lease(key, generation) {
            if info.is_live(&self.me) {
                last_live = Some(info);
            }
            generation += 1;
        }
        last_live
    }

    /// Try to take the lease on `key`. Never blocks.
    pub fn try_lease(&self, key: &Hash) -> Result<Acquire<'_>, StoreError> {
        let mut generation = 0u32;
        loop {
            let path = Self::lease_key(key, generation);
            let now = now_ms();
            let info = LeaseInfo {
                key: *key,
                generation,
                host: self.me.host.clone(),
                pid: self.me.pid,
                boot_id: self.me.boot_id.clone(),
                start_time: self.me.start_time,
                acquired_ms: now,
                expires_ms: now + self.lease_ttl.as_millis() as u64,
                renewals: 0,
            };
            let bytes = serde_json::to_vec(&info).expect("lease serialises");
            if let Put::Written(version) = self.backend().put(&path, &bytes, Cond::IfAbsent)? {
                keeper().hold(path.clone(), info.clone(), version, self.clone_for_keeper());
                return Ok(Acquire::Held(Lease {
                    store: self,
                    info,
                    path,
                    released: false,
                }));
            }
            match self.read_lease(key, generation) {
                Some(other) if other.is_live(&self.me) => return Ok(Acquire::Busy(other)),
                Some(_) => generation += 1, // dead: take over with the next generation
                None => {
                    // Removed between our create and read (its holder released it), or torn by
                    // a foreign writer: retry this generation, then move past it.
                    if self.backend().head(&path)?.is_some() {
                        generation += 1;
                    }
                }
            }
            if generation > 10_000 {
                return Err(StoreError::Corrupt {
                    what: format!("lease chain of {key} is longer than 10000 generations"),
                });
            }
        }
    }

    fn clone_for_keeper(&self) -> KeeperStore {
        KeeperStore {
            backend: Arc::clone(&self.backend),
            ttl: self.lease_ttl,
        }
    }
}

/// What the heartbeat thread needs of a store.
#[derive(Clone)]
struct KeeperStore {
    backend: Arc<dyn Backend>,
    ttl: Duration,
}

/// A lease the heartbeat renews: what it says, the version last written, where.
type Held = (LeaseInfo, Version, KeeperStore);

/// The heartbeat: one thread per process renews every held lease every `ttl / 3`.
struct Keeper {
    held: Mutex<HashMap<String, Held>>,
}

fn keeper() -> &'static Arc<Keeper> {
    static K: OnceLock<Arc<Keeper>> = OnceLock::new();
    K.get_or_init(|| {
        let k = Arc::new(Keeper {
            held: Mutex::new(HashMap::new()),
        });
        let k2 = Arc::clone(&k);
        std::thread::Builder::new()
            .name("pipe-lease-heartbeat".into())
            .spawn(move || k2.run())
            .expect("spawn heartbeat thread");
        k
    })
}

impl Keeper {
    fn hold(&self, path: String, info: LeaseInfo, version: Version, store: KeeperStore) {
        self.held
            .lock()
            .unwrap()
            .insert(path, (info, version, store));
    }
    fn forget(&self, path: &String) {
        // Holding the lock while the caller deletes the file is not needed: a renewal runs under
        // this lock and checks membership first, so once removed here it is never rewritten.
        self.held.lock().unwrap().remove(path);
    }
    fn run(&self) {
        loop {
            let mut sleep = Duration::from_millis(100);
            // Pick the renewals that are due under the lock; write them outside it, each in its
            // own thread, so that one slow request (a bucket retrying) neither delays the other
            // leases' renewals nor blocks taking and releasing leases meanwhile. A release that
            // lands first makes the renewal's compare-and-swap fail: nothing is resurrected.
            let due: Vec<(String, Held)> = {
                let mut held = self.held.lock().unwrap();
                let now = now_ms();
                // A lease that expired before we could renew it may have been taken over:
                // rewriting it would overwrite the new holder. It is lost; stop renewing it.
                held.retain(|path, (info, _, _)| {
                    let alive = info.expires_ms > now;
                    if !alive {
                        tracing::warn!("lease {path} expired before renewal; given up");
                    }
                    alive
                });
                let mut due = Vec::new();
                for (path, (info, version, store)) in held.iter() {
                    let third = store.ttl / 3;
                    sleep = sleep.min((third / 2).max(Duration::from_millis(20)));
                    if info.expires_ms.saturating_sub(now) <= (store.ttl - third).as_millis() as u64
                    {
                        let mut next = info.clone();
                        next.expires_ms = now + store.ttl.as_millis() as u64;
                        next.renewals += 1;
                        due.push((path.clone(), (next, version.clone(), store.clone())));
                    }
                }
                due
            };
            let results: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = due
                    .iter()
                    .map(|(path, (next, version, store))| {
                        s.spawn(move || {
                            let bytes = serde_json::to_vec(next).expect("lease serialises");
                            store
                                .backend
                                .put(path, &bytes, Cond::IfMatch(version.clone()))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join()).collect()
            });
            let mut held = self.held.lock().unwrap();
            for ((path, (next, used, _)), res) in due.into_iter().zip(results) {
                // Released meanwhile (or taken again, with another version): not ours to touch.
                let Some(entry) = held.get_mut(&path).filter(|e| e.1 == used) else {
                    continue;
                };
                match res {
                    Ok(Ok(Put::Written(v))) => {
                        entry.0 = next;
                        entry.1 = v;
                    }
                    Ok(Ok(_)) => {
                        // Removed or rewritten by someone else: no longer ours.
                        tracing::warn!("lease {path} changed under its holder; given up");
                        held.remove(&path);
                    }
                    Ok(Err(e)) => tracing::warn!("lease heartbeat {path}: {e}"),
                    Err(_) => tracing::warn!("lease heartbeat {path}: the renewal panicked"),
                }
            }
            drop(held);
            std::thread::sleep(sleep);
        }
    }
}
