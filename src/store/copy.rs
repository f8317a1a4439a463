//! `pipe copy`: a store's contents into another store — a directory into a team's bucket, or
//! a bucket into a directory to work offline. The source is listed in the reverse of the order
//! its writers commit in — refs, then records, then objects — so that a build committing during
//! the copy can add nothing to a later listing that an earlier one names without it; then
//! objects are copied first (each verified against its name), then records (create-if-absent:
//! a record already there stays), then refs, so the destination never names something it
//! lacks, at any moment of the copy. A ref the destination already has for a *different* build
//! is kept (a team's bucket that moved on is not rolled back by copying an older store into it).
//! Leases, checkpoints and quarantine stay behind: they describe work, not results.

use super::backend::Cond;
use super::{Store, StoreError, dirs};
use rayon::prelude::*;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What a copy did.
#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    /// Objects written to the destination.
    pub objects: usize,
    /// Objects it already had.
    pub objects_present: usize,
    /// Bytes of the objects written.
    pub bytes: u64,
    /// Records written.
    pub records: usize,
    /// Records it already had (theirs stand).
    pub records_present: usize,
    /// Refs set.
    pub refs: usize,
    /// Refs kept because the destination has its own for another build.
    pub refs_kept: usize,
    /// Model-server probes copied.
    pub probes: usize,
}

/// Values at most this large are copied in memory; larger ones stream through a file.
const IN_MEMORY: u64 = 16 << 20;

impl Store {
    /// Copy every object, record, ref and probe of this store into `dest`, with `jobs`
    /// transfers at a time (requests to a bucket wait on the network, not the CPU). `tick` is
    /// called after each value, for a progress bar.
    pub fn copy_to(
        &self,
        dest: &Store,
        jobs: usize,
        tick: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<CopyReport, StoreError> {
        let pool = super::io_pool(jobs)?;
        let refs = self.refs()?;
        let records = self.backend().list(&format!("{}/", dirs::ACTIONS))?;
        let objects = self.backend().list(&format!("{}/", dirs::OBJECTS))?;
        let total = objects.len() + records.len();
        let done = AtomicUsize::new(0);
        let step = || tick(done.fetch_add(1, Ordering::Relaxed) + 1, total);
        let (written, present, bytes) =
            (AtomicUsize::new(0), AtomicUsize::new(0), AtomicU64::new(0));
        pool.install(|| {
            objects.par_iter().try_for_each(|m| {
                let Some(id) = super::hash_in_key(&m.key) else {
                    return Ok(()); // not an object of ours
                };
                if dest.has_object(&id) {
                    present.fetch_add(1, Ordering::Relaxed);
                } else if m.size <= IN_MEMORY {
                    dest.put(&self.get(&id)?)?;
                    written.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(m.size, Ordering::Relaxed);
                } else {
                    let mut src = self
                        .backend()
                        .open(&m.key)?
                        .ok_or(StoreError::MissingObject(id))?;
                    let (got, n) = dest.put_stream(|w| {
                        std::io::copy(&mut src, w).map_err(|source| StoreError::Io {
                            path: m.key.clone().into(),
                            source,
                        })
                    })?;
                    if got != id {
                        return Err(StoreError::CorruptObject { id, actual: got });
                    }
                    written.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(n, Ordering::Relaxed);
                }
                step();
                Ok::<_, StoreError>(())
            })
        })?;
        let mut rep = CopyReport {
            objects: written.into_inner(),
            objects_present: present.into_inner(),
            bytes: bytes.into_inner(),
            ..Default::default()
        };
        let (written, present) = (AtomicUsize::new(0), AtomicUsize::new(0));
        pool.install(|| {
            records.par_iter().try_for_each(|m| {
                if dest.backend().head(&m.key)?.is_some() {
                    present.fetch_add(1, Ordering::Relaxed);
                    step();
                    return Ok(());
                }
                let Some(b) = self.backend().get(&m.key)? else {
                    return Ok(()); // removed by a gc meanwhile
                };
                match dest.backend().put(&m.key, &b.bytes, Cond::IfAbsent)? {
                    super::backend::Put::Written(_) => written.fetch_add(1, Ordering::Relaxed),
                    _ => present.fetch_add(1, Ordering::Relaxed),
                };
                step();
                Ok::<_, StoreError>(())
            })
        })?;
        rep.records = written.into_inner();
        rep.records_present = present.into_inner();
        for r in refs {
            match dest.get_ref(&r.stage)? {
                Some(theirs) if theirs.stage_key != r.stage_key => rep.refs_kept += 1,
                _ => {
                    dest.set_ref(&r)?;
                    rep.refs += 1;
                }
            }
        }
        for m in self.backend().list(&format!("{}/", dirs::PROBES))? {
            if let Some(b) = self.backend().get(&m.key)? {
                dest.backend().put(&m.key, &b.bytes, Cond::Overwrite)?;
                rep.probes += 1;
            }
        }
        Ok(rep)
    }
}
