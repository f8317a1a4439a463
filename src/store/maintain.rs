//! `verify` and `gc`: the store's housekeeping. Both are safe while other processes build:
//! verify only moves what is provably corrupt; gc keeps anything a ref reaches, anything
//! younger than its grace period and anything under a live lease.

use super::backend::Meta;
use super::{LeaseInfo, Store, StoreError, dirs, hash_in_key, io_pool};
use crate::key::Hash;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// What `verify` found and did.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Objects re-hashed.
    pub objects: usize,
    /// Records read.
    pub records: usize,
    /// Refs checked.
    pub refs: usize,
    /// Corrupt objects (moved to quarantine-v1/objects).
    pub corrupt_objects: Vec<String>,
    /// Records that were unreadable or named missing/corrupt objects (quarantined).
    pub bad_records: Vec<String>,
    /// Refs dropped because their build lost a record or object (the stage becomes stale).
    pub dropped_refs: Vec<String>,
}

impl VerifyReport {
    /// Whether anything was wrong.
    pub fn is_clean(&self) -> bool {
        self.corrupt_objects.is_empty()
            && self.bad_records.is_empty()
            && self.dropped_refs.is_empty()
    }
}

/// What `gc` removed.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Objects kept.
    pub kept_objects: usize,
    /// Objects removed.
    pub removed_objects: usize,
    /// Records removed.
    pub removed_records: usize,
    /// Dead or finished leases removed.
    pub removed_leases: usize,
    /// Orphaned temp files removed.
    pub removed_tmp: usize,
    /// Checkpoints of finished or abandoned actions removed.
    pub removed_checkpoints: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// Every `{"$obj": "<hash>"}` reference inside a JSON value: how objects point at objects.
pub fn obj_refs(v: &Value, out: &mut Vec<Hash>) {
    match v {
        Value::Object(m) => {
            if let (1, Some(Value::String(h))) = (m.len(), m.get("$obj"))
                && let Ok(h) = h.parse()
            {
                out.push(h);
                return;
            }
            m.values().for_each(|x| obj_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| obj_refs(x, out)),
        _ => {}
    }
}

fn under(store: &Store, dir: &str) -> Result<Vec<Meta>, StoreError> {
    store.backend().list(&format!("{dir}/"))
}

fn quarantine(store: &Store, key: &str, kind: &str) -> Result<(), StoreError> {
    let name = key.rsplit('/').next().unwrap_or(key);
    store
        .backend()
        .rename(key, &format!("{}/{kind}/{name}", dirs::QUARANTINE))
}

impl Store {
    /// The first of `ids` that is absent, asking one at a time. An error is not "absent":
    /// verify and gc never act on a guess.
    fn first_missing<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a Hash>,
    ) -> Result<Option<Hash>, StoreError> {
        for id in ids {
            if !self.object_present(id)? {
                return Ok(Some(*id));
            }
        }
        Ok(None)
    }

    /// Re-hash every object, read every record and ref. Corrupt objects and the records that
    /// name them are quarantined, and refs whose build lost an item are dropped, so that the
    /// next build recomputes exactly what was lost and never uses a corrupt byte.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut rep = VerifyReport::default();
        let objects = under(self, dirs::OBJECTS)?;
        rep.objects = objects.len();
        // Only what is provably corrupt is quarantined: a value that cannot be read right now
        // (a timeout, an I/O error) stops verify with that error instead.
        let pool = io_pool(self.backend().io_parallelism())?;
        let checked: Result<Vec<Option<(String, String)>>, StoreError> = pool.install(|| {
            objects
                .par_iter()
                .map(|m| {
                    let name = m.key.rsplit('/').next().unwrap_or_default().to_string();
                    let Some(h) = hash_in_key(&m.key) else {
                        return Ok(Some((m.key.clone(), name)));
                    };
                    // Streamed: a multi-GB model is hashed without being held.
                    let Some(mut f) = self.backend().open(&m.key)? else {
                        return Ok(None); // removed meanwhile by gc
                    };
                    let mut hasher = blake3::Hasher::new();
                    hasher
                        .update_reader(&mut f)
                        .map_err(|source| StoreError::Io {
                            path: m.key.clone().into(),
                            source,
                        })?;
                    let ok = Hash(*hasher.finalize().as_bytes()) == h;
                    Ok((!ok).then(|| (m.key.clone(), name)))
                })
                .collect()
        });
        let corrupt: Vec<(String, String)> = checked?.into_iter().flatten().collect();
        for (p, name) in corrupt {
            quarantine(self, &p, "objects")?;
            rep.corrupt_objects.push(name);
        }
        let mut good_records = HashSet::new();
        for m in under(self, dirs::ACTIONS)? {
            let p = m.key;
            rep.records += 1;
            let key = hash_in_key(&p);
            let problem = match key {
                None => Some("file name is not a key".to_string()),
                Some(key) => match self.record(&key) {
                    Err(e @ StoreError::Corrupt { .. }) => Some(e.to_string()),
                    Err(e) => return Err(e),
                    Ok(None) => None, // removed meanwhile by gc
                    Ok(Some(rec)) => {
                        let named = rec.outputs.values().chain(std::iter::once(&rec.common));
                        match self.first_missing(named)? {
                            Some(id) => {
                                Some(format!("names object {id}, which is missing or corrupt"))
                            }
                            None => {
                                good_records.insert(key);
                                None
                            }
                        }
                    }
                },
            };
            if let Some(why) = problem {
                quarantine(self, &p, "actions")?;
                rep.bad_records.push(format!("{p}: {why}"));
            }
        }
        for r in self.refs()? {
            rep.refs += 1;
            let problem = match self.manifest(&r.manifest) {
                Err(e @ (StoreError::MissingObject(_) | StoreError::CorruptObject { .. })) => {
                    Some(e.to_string())
                }
                Err(e @ StoreError::Corrupt { .. }) => Some(e.to_string()),
                Err(e) => return Err(e),
                Ok(m) => {
                    let mut lost = None;
                    for e in &m.entries {
                        if !good_records.contains(&e.key)
                            && self.backend().head(&Store::record_key(&e.key))?.is_none()
                        {
                            lost = Some(format!("item {} lost its record", e.id));
                            break;
                        }
                    }
                    match lost {
                        Some(l) => Some(l),
                        None => (!self.object_present(&r.common)?)
                            .then(|| "common object missing".to_string()),
                    }
                }
            };
            if let Some(why) = problem {
                self.drop_ref(&r.stage)?;
                rep.dropped_refs.push(format!("{}: {why}", r.stage));
            }
        }
        Ok(rep)
    }

    /// Remove what no ref reaches. Kept regardless: files modified within `grace` (a running
    /// build's fresh objects and records) and records whose key has a live lease.
    pub fn gc(&self, grace: Duration, dry_run: bool) -> Result<GcReport, StoreError> {
        let mut rep = GcReport {
            removed_tmp: if dry_run { 0 } else { self.reap_tmp() },
            ..Default::default()
        };
        // Fresh: written or refreshed within the grace. The time is the one the backend stamped
        // (a file's mtime, a bucket's LastModified) against this machine's clock: keep clocks
        // within a small part of the grace (an hour by default). A value gone since the
        // listing counts as fresh: gc never acts on what it cannot see.
        let now_ms = super::lease::now_ms();
        let grace_ms = grace.as_millis() as u64;
        let fresh_at = |m: &Meta| now_ms.saturating_sub(m.modified_ms) < grace_ms;
        let fresh = |key: &str| match self.backend().head(key) {
            Ok(Some(m)) => fresh_at(&m),
            _ => true,
        };
        // Mark. A read error here stops gc: an unreadable manifest or record must not turn
        // into "unreachable", which would delete what it names.
        let mut keep_records: HashSet<Hash> = HashSet::new();
        let mut keep_objects: HashSet<Hash> = HashSet::new();
        let mut queue: VecDeque<Hash> = VecDeque::new();
        for r in self.refs()? {
            queue.push_back(r.manifest);
            queue.push_back(r.common);
            for e in self.manifest(&r.manifest)?.entries {
                keep_records.insert(e.key);
            }
        }
        let names = |rec: &super::ActionRecord, queue: &mut VecDeque<Hash>| {
            queue.extend(rec.outputs.values().copied());
            queue.push_back(rec.common);
            let mut v = Vec::new();
            obj_refs(&rec.ingredients, &mut v);
            queue.extend(v);
        };
        for key in &keep_records {
            if let Some(rec) = self.record(key)? {
                names(&rec, &mut queue);
            }
        }
        // A checkpoint is kept (with its object) while its action may still resume: no record
        // yet, and saved within the grace or under a live lease.
        for m in under(self, dirs::CHECKPOINTS)? {
            let Some(key) = hash_in_key(&m.key) else {
                continue;
            };
            if !self.has_record(&key) && (fresh_at(&m) || self.live_lease(&key).is_some()) {
                queue.extend(self.checkpoint_object(&key));
                continue;
            }
            rep.removed_checkpoints += 1;
            if !dry_run {
                let _ = self.backend().delete(&m.key);
            }
        }
        // Records not reached but fresh or leased are kept, and so is what they name.
        let mut drop_records = Vec::new();
        for m in under(self, dirs::ACTIONS)? {
            let Some(key) = hash_in_key(&m.key) else {
                continue;
            };
            if keep_records.contains(&key) {
                continue;
            }
            if fresh_at(&m) || self.live_lease(&key).is_some() {
                if let Some(rec) = self.record(&key)? {
                    names(&rec, &mut queue);
                }
                continue;
            }
            drop_records.push((m.key, key));
        }
        // Sweep records first (so no record ever names a removed object). One that a build
        // refreshed since the mark is kept, and so is everything it names.
        for (p, key) in drop_records {
            if fresh(&p) {
                if let Some(rec) = self.record(&key)? {
                    names(&rec, &mut queue);
                }
                continue;
            }
            rep.removed_records += 1;
            if !dry_run {
                let _ = self.backend().delete(&p);
            }
        }
        // Objects name objects only as JSON (`{"$obj": …}`); a large object is a model or a
        // transcript page, never JSON that names others, so only small ones are read.
        let objects = under(self, dirs::OBJECTS)?;
        let sizes: std::collections::HashMap<Hash, u64> = objects
            .iter()
            .filter_map(|m| Some((hash_in_key(&m.key)?, m.size)))
            .collect();
        while let Some(id) = queue.pop_front() {
            if !keep_objects.insert(id) {
                continue;
            }
            if sizes.get(&id).is_some_and(|s| *s <= 64 << 20)
                && let Some(bytes) = match self.get(&id) {
                    Ok(b) => Some(b),
                    // Gone or corrupt: it names nothing we could follow.
                    Err(StoreError::MissingObject(_) | StoreError::CorruptObject { .. }) => None,
                    // Unreadable now (a timeout): what it names cannot be told unreachable.
                    Err(e) => return Err(e),
                }
                && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            {
                let mut refs = Vec::new();
                obj_refs(&v, &mut refs);
                queue.extend(refs);
            }
        }
        for m in objects {
            let id = hash_in_key(&m.key);
            if id.is_some_and(|id| keep_objects.contains(&id)) || fresh(&m.key) {
                rep.kept_objects += 1;
                continue;
            }
            rep.removed_objects += 1;
            rep.bytes_freed += m.size;
            if !dry_run {
                let _ = self.backend().delete(&m.key);
            }
        }
        // A record committed while the objects were swept may name one just removed (its
        // writer checked before the removal). Such a record is not reachable from any ref —
        // refs are only written after their records are re-checked — so it goes too, and the
        // build that made it recomputes the item. (The writer re-checks after writing, which
        // covers the removals that come after this pass.)
        if !dry_run && rep.removed_objects > 0 {
            for m in under(self, dirs::ACTIONS)? {
                let p = m.key;
                let Some(key) = hash_in_key(&p) else {
                    continue;
                };
                if keep_records.contains(&key) {
                    continue;
                }
                if let Ok(Some(rec)) = self.record(&key) {
                    let mut ids: Vec<Hash> = rec.outputs.values().copied().collect();
                    ids.push(rec.common);
                    obj_refs(&rec.ingredients, &mut ids);
                    if self.first_missing(&ids)?.is_some() {
                        rep.removed_records += 1;
                        let _ = self.backend().delete(&p);
                    }
                }
            }
        }
        // Leases: a key's whole chain goes once every generation in it is dead; removing part
        // of a chain would open a gap where a second holder could start over at generation 0.
        let mut chains: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for m in under(self, dirs::LEASES)? {
            let name = m.key.rsplit('/').next().unwrap_or_default();
            let key = name.split('.').next().unwrap_or_default().to_string();
            chains.entry(key).or_default().push(m.key);
        }
        let generation = |p: &String| -> u32 {
            p.rsplit('.')
                .next()
                .and_then(|e| e.parse().ok())
                .unwrap_or(0)
        };
        for (_, files) in chains {
            let all_dead = files
                .iter()
                .all(|p| match LeaseInfo::read(self.backend(), p) {
                    Some((i, _)) => !i.is_live(&self.me),
                    None => !fresh(p),
                });
            if all_dead {
                rep.removed_leases += files.len();
                if !dry_run {
                    let mut files = files;
                    // Lowest generation first, each re-read just before removal: a taker that
                    // finds generation 0 gone starts a fresh chain there, and a generation
                    // re-created meanwhile is live and stays.
                    files.sort_by_key(generation);
                    for p in &files {
                        let still_dead = LeaseInfo::read(self.backend(), p)
                            .is_none_or(|(i, _)| !i.is_live(&self.me));
                        if still_dead {
                            let _ = self.backend().delete(p);
                        }
                    }
                }
            }
        }
        Ok(rep)
    }
}

impl Store {
    /// Quarantine a corrupt object found by a reader, drop every record whose outputs name it
    /// and the refs whose builds include those records, so the next build recomputes them.
    /// Returns what was dropped.
    pub fn heal(&self, id: &Hash) -> Result<Vec<String>, StoreError> {
        let mut dropped = Vec::new();
        let p = Store::object_key(id);
        if let Some(b) = self.backend().get(&p)?
            && Hash::of(&b.bytes) != *id
        {
            quarantine(self, &p, "objects")?;
            dropped.push(format!("object {id}"));
        }
        for r in self.refs()? {
            let Ok(m) = self.manifest(&r.manifest) else {
                self.drop_ref(&r.stage)?;
                dropped.push(format!("ref {}", r.stage));
                continue;
            };
            let hit: Vec<_> = m
                .entries
                .iter()
                .filter(|e| e.outputs.values().any(|o| o == id))
                .collect();
            if hit.is_empty() {
                continue;
            }
            for e in hit {
                let rp = Store::record_key(&e.key);
                if self.backend().head(&rp)?.is_some() {
                    quarantine(self, &rp, "actions")?;
                    dropped.push(format!("record {} ({})", e.key, e.id));
                }
            }
            self.drop_ref(&r.stage)?;
            dropped.push(format!("ref {}", r.stage));
        }
        Ok(dropped)
    }
}
