//! `pipe build`: walk the closure of the targets in order, reuse what the store has, lease and
//! compute the rest on `jobs` threads, commit records through leases, and write each stage's
//! ref once all its items are in.

use super::plan::{Done, Evaluated, Found, Next, walk};
use super::{Context, Job, Pipeline, Stage, StageError, Upstream};
use crate::key::Hash;
use crate::progress::Reporter;
use crate::store::lease::now_ms;
use crate::store::{
    Acquire, ActionRecord, Committed, Manifest, ManifestEntry, Ref, Store, StoreError,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Worker threads for a stage's items.
    pub jobs: usize,
    /// Only say what would run.
    pub dry_run: bool,
    /// Go on with other items after one fails (their dependants are skipped).
    pub keep_going: bool,
}

/// What happened to one stage.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StageRun {
    /// Target.
    pub target: String,
    /// Items in all.
    pub total: usize,
    /// Already in the store when the stage started.
    pub cached: usize,
    /// Computed by this process.
    pub computed: usize,
    /// Committed by another process while we waited.
    pub by_others: usize,
    /// Failed.
    pub failed: usize,
    /// Nothing to do (the ref matched).
    pub up_to_date: bool,
    /// Not run: an input is not complete (dry run, or an upstream failure).
    pub blocked_on: Option<String>,
}

/// An item that failed.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Target.
    pub target: String,
    /// Item.
    pub item: String,
    /// Why.
    pub error: String,
}

/// The outcome of a build that did not stop on a fatal error.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BuildReport {
    /// Per stage, in order.
    pub stages: Vec<StageRun>,
    /// Failed items.
    pub failures: Vec<Failure>,
    /// Objects quarantined because a read found them corrupt (then recomputed).
    pub healed: Vec<String>,
}

/// A build that had to stop.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Unknown target.
    #[error(transparent)]
    Pipeline(#[from] super::PipelineError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stage hit an infrastructure error or is unavailable; nothing was recorded for it.
    #[error("{target} {item}: {source}")]
    Stage {
        /// Target.
        target: String,
        /// Item.
        item: String,
        /// The error (boxed: it is large and rare).
        #[source]
        source: Box<StageError>,
    },
}

/// Build `targets`. A corrupt input object found while building is quarantined, the records
/// that produced it are dropped, and the build starts over (at most twice), so a corrupt byte
/// is never used and what it held is recomputed.
pub fn build(
    store: &Store,
    pipeline: &Pipeline,
    cx: &Context<'_>,
    targets: &[String],
    opts: &BuildOptions,
    reporter: &dyn Reporter,
) -> Result<BuildReport, BuildError> {
    let closure = pipeline.closure(targets)?;
    if !opts.dry_run {
        store.reap_tmp();
    }
    let mut healed = Vec::new();
    loop {
        match build_once(store, pipeline, cx, &closure, opts, reporter) {
            Err(e) if healed.len() < 3 && corrupt_object(&e).is_some() => {
                let id = corrupt_object(&e).expect("checked by the guard");
                tracing::warn!(
                    "object {id} is corrupt: quarantining it and rebuilding what made it"
                );
                store.heal(&id)?;
                healed.push(id.to_hex());
            }
            Ok(mut rep) => {
                rep.healed = healed;
                return Ok(rep);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The object a build stopped on because its bytes did not match its name.
fn corrupt_object(e: &BuildError) -> Option<Hash> {
    match e {
        BuildError::Store(StoreError::CorruptObject { id, .. }) => Some(*id),
        BuildError::Stage { source, .. } => match source.as_ref() {
            StageError::Store(StoreError::CorruptObject { id, .. }) => Some(*id),
            _ => None,
        },
        _ => None,
    }
}

fn build_once(
    store: &Store,
    pipeline: &Pipeline,
    cx: &Context<'_>,
    closure: &[usize],
    opts: &BuildOptions,
    reporter: &dyn Reporter,
) -> Result<BuildReport, BuildError> {
    let mut rep = BuildReport::default();
    walk(
        store,
        pipeline,
        cx,
        closure,
        |stage, found, known| -> Result<Next, BuildError> {
            let name = stage.name();
            let (ev, old) = match found {
                Found::Waiting { on, .. } => {
                    rep.stages.push(StageRun {
                        target: name.into(),
                        total: stage.items(cx).len(),
                        blocked_on: Some(on.to_string()),
                        ..Default::default()
                    });
                    return Ok(Next::Go(None));
                }
                Found::UpToDate { current, ev } => {
                    rep.stages.push(StageRun {
                        target: name.into(),
                        total: ev.items.len(),
                        cached: ev.items.len(),
                        up_to_date: true,
                        ..Default::default()
                    });
                    return Ok(Next::Go(Some(Done::of(&current))));
                }
                Found::NeedsWork { ev, old } => (ev, old),
            };
            if opts.dry_run {
                let cached = store
                    .records_present(&ev.keys)?
                    .into_iter()
                    .filter(|p| *p)
                    .count();
                rep.stages.push(StageRun {
                    target: name.into(),
                    total: ev.items.len(),
                    cached,
                    ..Default::default()
                });
                // Downstream keys need this stage's outputs: only a real build can tell.
                return Ok(Next::Go(None));
            }
            // A stage reads only the inputs that key it.
            let upstream: BTreeMap<String, Upstream> = stage
                .deps()
                .iter()
                .map(|d| {
                    (
                        d.to_string(),
                        Upstream::new(known[d].output, known[d].manifest),
                    )
                })
                .collect();
            match build_stage(
                store, stage, cx, &ev, old, &upstream, opts, reporter, &mut rep,
            )? {
                Some(done) => Ok(Next::Go(Some(done))),
                // Items failed: with --keep-going the stages that do not need this one still
                // run; without, later stages are neither run nor listed.
                None if opts.keep_going => Ok(Next::Go(None)),
                None => Ok(Next::Stop),
            }
        },
    )?;
    Ok(rep)
}

/// Compute what a stage lacks and write its ref; `None` when items failed.
#[allow(clippy::too_many_arguments)]
fn build_stage(
    store: &Store,
    stage: &dyn Stage,
    cx: &Context<'_>,
    ev: &Evaluated,
    old: Option<Ref>,
    upstream: &BTreeMap<String, Upstream>,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
    rep: &mut BuildReport,
) -> Result<Option<Done>, BuildError> {
    let name = stage.name();
    let old_entries: HashMap<Hash, ManifestEntry> = match &old {
        Some(r) => match store.manifest(&r.manifest) {
            Ok(m) => m.entries.into_iter().map(|e| (e.key, e)).collect(),
            Err(_) => HashMap::new(),
        },
        None => HashMap::new(),
    };
    cx.flush_blobs(store)?;
    let common_id = store.put_json(&ev.common)?;
    // A ref must never name a record that is gone. A concurrent `gc` may remove records
    // of a long stage that are older than its grace and not yet under any ref: check
    // before writing the ref, and compute again whatever vanished.
    let mut reuse = &old_entries;
    let empty = HashMap::new();
    let mut passes = 0;
    let entries = loop {
        passes += 1;
        let (run, entries, failures) = run_stage(
            store, stage, cx, ev, common_id, upstream, reuse, opts, reporter,
        )?;
        if !failures.is_empty() {
            rep.stages.push(run);
            rep.failures.extend(failures);
            return Ok(None);
        }
        let keys: Vec<Hash> = entries.iter().map(|e| e.key).collect();
        let lost = store
            .records_present(&keys)?
            .into_iter()
            .filter(|p| !*p)
            .count();
        if lost == 0 || passes == 3 {
            rep.stages.push(run);
            if lost > 0 {
                return Err(StoreError::Corrupt {
                    what: format!("{lost} records of `{name}` keep vanishing while it builds"),
                }
                .into());
            }
            break entries;
        }
        tracing::warn!("{lost} records of `{name}` vanished during the build; recomputing");
        reuse = &empty;
    };
    let manifest = Manifest { entries };
    let manifest_id = store.put(&manifest.encode())?;
    let output = manifest.output_hash();
    crate::failpoint("build:before-ref");
    store.set_ref(&Ref {
        stage: name.into(),
        stage_key: ev.stage_key,
        common: common_id,
        manifest: manifest_id,
        output,
        items: manifest.entries.len(),
        built_ms: now_ms(),
        producer: store.producer(),
    })?;
    Ok(Some(Done {
        output,
        manifest: manifest_id,
    }))
}

type StageResult = (StageRun, Vec<ManifestEntry>, Vec<Failure>);

#[allow(clippy::too_many_arguments)]
fn run_stage(
    store: &Store,
    stage: &dyn Stage,
    cx: &Context<'_>,
    ev: &Evaluated,
    common_id: Hash,
    upstream: &BTreeMap<String, Upstream>,
    old_entries: &HashMap<Hash, ManifestEntry>,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
) -> Result<StageResult, BuildError> {
    let name = stage.name();
    let n = ev.items.len();
    let slots: Vec<Mutex<Option<ManifestEntry>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let mut todo = VecDeque::new();
    let mut run = StageRun {
        target: name.into(),
        total: n,
        ..Default::default()
    };
    // Which items have a record already: one listing on a bucket, not a request per item.
    let present = store.records_present(&ev.keys)?;
    for (i, (key, item)) in ev.keys.iter().zip(&ev.items).enumerate() {
        if let Some(e) = old_entries.get(key) {
            // Refresh: another process may point this stage's ref elsewhere meanwhile, and a
            // concurrent gc must not take the record before our ref names it again.
            store.touch_record(key);
            *slots[i].lock().unwrap() = Some(ManifestEntry {
                id: item.id.clone(),
                ..e.clone()
            });
            run.cached += 1;
        } else if let Some(rec) = present[i].then(|| store.record(key)).transpose()?.flatten() {
            // Found outside the last build: refresh it so a concurrent gc keeps it.
            store.touch_record(key);
            *slots[i].lock().unwrap() = Some(entry(item, rec));
            run.cached += 1;
        } else {
            todo.push_back((i, Instant::now(), 0u32));
        }
    }
    reporter.stage_start(name, n, todo.len());
    let queue = Mutex::new(todo);
    let stop = AtomicBool::new(false);
    let fatal: Mutex<Option<BuildError>> = Mutex::new(None);
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let counts = Mutex::new((0usize, 0usize)); // (computed, by others)
    let staggered = AtomicBool::new(false);
    let workers = opts.jobs.max(1).min(queue.lock().unwrap().len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Some((i, attempts)) = next_ready(&queue) else {
                        break;
                    };
                    let item = &ev.items[i];
                    let key = ev.keys[i];
                    let res = (|| -> Result<Option<(ManifestEntry, bool)>, BuildError> {
                        if let Some(rec) = store.record(&key)? {
                            return Ok(Some((entry(item, rec), false)));
                        }
                        let lease = match store.try_lease(&key)? {
                            Acquire::Busy(_) => return Ok(None),
                            Acquire::Held(l) => l,
                        };
                        // Double check: the holder before us may have committed and released.
                        if let Some(rec) = store.record(&key)? {
                            return Ok(Some((entry(item, rec), false)));
                        }
                        let started = now_ms();
                        let job = Job {
                            stage: name,
                            store,
                            cx,
                            item,
                            params: &ev.params,
                            upstream,
                            key,
                            reporter,
                            checkpoints: AtomicBool::new(false),
                        };
                        let out = stage.run(&job).map_err(|source| BuildError::Stage {
                            target: name.into(),
                            item: item.id.clone(),
                            source: Box::new(source),
                        })?;
                        let rec = ActionRecord {
                            key,
                            stage: name.into(),
                            item: item.id.clone(),
                            common: common_id,
                            ingredients: item.ingredients(),
                            outputs: out.objects,
                            summary: out.summary,
                            producer: store.producer(),
                            started_ms: started,
                            finished_ms: now_ms(),
                        };
                        let committed = match lease.commit(&rec) {
                            // An output vanished before the record could name it (a gc that
                            // judged it unreachable: a large object reused from a bucket is
                            // not refreshed). Compute the item again, a few times at most.
                            Err(StoreError::MissingOutput { output, object, .. })
                                if attempts < 3 =>
                            {
                                tracing::warn!(
                                    "{name} {}: output {output} ({object}) vanished before the commit; computing it again",
                                    item.id
                                );
                                return Ok(None);
                            }
                            other => other?,
                        };
                        if job.checkpoints.load(Ordering::Relaxed) {
                            store.drop_checkpoint(&key);
                        }
                        match committed {
                            Committed::Written => Ok(Some((entry(item, rec), true))),
                            Committed::AlreadyPresent => {
                                let theirs =
                                    store.record(&key)?.ok_or_else(|| StoreError::Corrupt {
                                        what: format!("record {key} vanished after commit"),
                                    })?;
                                Ok(Some((entry(item, theirs), false)))
                            }
                        }
                    })();
                    match res {
                        Ok(Some((e, ours))) => {
                            reporter.item_done(name, &item.id, &e.summary, ours);
                            *slots[i].lock().unwrap() = Some(e);
                            let mut c = counts.lock().unwrap();
                            if ours { c.0 += 1 } else { c.1 += 1 }
                        }
                        Ok(None) => {
                            // Leased by a live worker: look again later.
                            let wait = Duration::from_millis((25u64 << attempts.min(4)).min(400));
                            let mut q = queue.lock().unwrap();
                            q.push_back((i, Instant::now() + wait, attempts + 1));
                            // The first busy item says other workers walk these items too, in
                            // the same order: start elsewhere (an offset of this process's
                            // own), so that N workers spread over the items instead of each
                            // trying, one after another, what the others already hold.
                            if !staggered.swap(true, Ordering::Relaxed) && q.len() > 1 {
                                let at = stagger_offset(name, store.identity()) % q.len();
                                q.rotate_left(at);
                            }
                        }
                        Err(BuildError::Stage { source, .. })
                            if matches!(*source, StageError::Failed(_)) =>
                        {
                            let msg = source.to_string();
                            reporter.item_failed(name, &item.id, &msg);
                            failures.lock().unwrap().push(Failure {
                                target: name.into(),
                                item: item.id.clone(),
                                error: msg,
                            });
                            if !opts.keep_going {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            fatal.lock().unwrap().get_or_insert(e);
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    reporter.stage_done(name);
    if let Some(e) = fatal.into_inner().unwrap() {
        return Err(e);
    }
    let (computed, by_others) = counts.into_inner().unwrap();
    run.computed = computed;
    run.by_others = by_others;
    let failures = failures.into_inner().unwrap();
    run.failed = failures.len();
    let entries: Vec<ManifestEntry> = slots
        .into_iter()
        .filter_map(|s| s.into_inner().unwrap())
        .collect();
    Ok((run, entries, failures))
}

/// Where this process starts in a stage's items once it finds others working on them.
fn stagger_offset(stage: &str, id: &crate::store::Identity) -> usize {
    let h = Hash::of(format!("{stage}\0{}\0{}\0{}", id.host, id.pid, id.start_time).as_bytes());
    u64::from_le_bytes(h.0[..8].try_into().expect("8 bytes")) as usize
}

/// Pop the first item whose wait is over; sleep briefly when all are waiting on others.
fn next_ready(queue: &Mutex<VecDeque<(usize, Instant, u32)>>) -> Option<(usize, u32)> {
    loop {
        let wait = {
            let mut q = queue.lock().unwrap();
            if q.is_empty() {
                return None;
            }
            let now = Instant::now();
            if let Some(pos) = q.iter().position(|(_, t, _)| *t <= now) {
                let (i, _, a) = q.remove(pos).expect("position is in range");
                return Some((i, a));
            }
            q.iter().map(|(_, t, _)| *t).min().expect("non-empty") - now
        };
        std::thread::sleep(wait.min(Duration::from_millis(50)));
    }
}

fn entry(item: &super::Item, rec: ActionRecord) -> ManifestEntry {
    ManifestEntry {
        id: item.id.clone(),
        key: rec.key,
        outputs: rec.outputs,
        summary: rec.summary,
    }
}
