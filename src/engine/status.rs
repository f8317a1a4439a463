//! `pipe status`: where each target stands, read-only (refs, records and leases; nothing is
//! written).

use super::diff::brief_reason;
use super::plan::{Done, Found, Next, manifest_from_records, walk};
use super::{Context, Pipeline};
use crate::key::Hash;
use crate::store::{Store, StoreError};
use serde::Serialize;

/// An item a live worker is computing.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Running {
    /// The item.
    pub item: String,
    /// The worker's host.
    pub host: String,
    /// The worker's process id.
    pub pid: u32,
    /// Unix ms when it took the item.
    pub since_ms: u64,
    /// `host:pid for 2m 5s`, for people.
    pub holder: String,
}

/// Where a target stands.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StageState {
    /// Every item of the current key is built.
    UpToDate {
        /// Items.
        items: usize,
    },
    /// Some items of the current key are built (or being built).
    Partial {
        /// Built.
        done: usize,
        /// All.
        total: usize,
        /// Items being computed now, and by whom.
        running: Vec<Running>,
    },
    /// Built before, but its inputs changed and nothing of the new build exists yet.
    Stale {
        /// Why, briefly (`pipe explain` tells in full).
        reason: String,
    },
    /// Never built.
    Missing,
}

/// One line of `pipe status`.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    /// Target name.
    pub target: &'static str,
    /// Its state.
    #[serde(flatten)]
    pub state: StageState,
}

/// The status of every target. Reads refs, stats records and leases; writes nothing.
pub fn status(
    store: &Store,
    pipeline: &Pipeline,
    cx: &Context<'_>,
) -> Result<Vec<StageStatus>, StoreError> {
    let mut out = Vec::new();
    let all: Vec<usize> = (0..pipeline.stages().len()).collect();
    walk(store, pipeline, cx, &all, |stage, found, _| {
        let target = stage.name();
        let (state, done) = match found {
            Found::Waiting { on, old } => {
                let state = match old {
                    Some(_) => StageState::Stale {
                        reason: format!("waiting on `{on}`"),
                    },
                    None => StageState::Missing,
                };
                (state, None)
            }
            Found::UpToDate { current, .. } => (
                StageState::UpToDate {
                    items: current.items,
                },
                Some(Done::of(&current)),
            ),
            Found::NeedsWork { ev, old } => {
                // Items the last complete build already covers are not progress of the new one.
                let covered: std::collections::HashSet<Hash> = match &old {
                    Some(r) => store
                        .manifest(&r.manifest)
                        .map(|m| m.entries.into_iter().map(|e| e.key).collect())
                        .unwrap_or_default(),
                    None => Default::default(),
                };
                let present = store.records_present(&ev.keys)?;
                let done = present.iter().filter(|p| **p).count();
                let new_done = ev
                    .keys
                    .iter()
                    .zip(&present)
                    .filter(|(k, p)| **p && !covered.contains(*k))
                    .count();
                let total = ev.items.len();
                let leases = store.live_leases()?;
                let running: Vec<Running> = ev
                    .keys
                    .iter()
                    .zip(&ev.items)
                    .zip(&present)
                    .filter(|(_, p)| !**p)
                    .filter_map(|((k, it), _)| {
                        leases.get(k).map(|l| Running {
                            item: it.id.clone(),
                            host: l.host.clone(),
                            pid: l.pid,
                            since_ms: l.acquired_ms,
                            holder: l.holder(),
                        })
                    })
                    .collect();
                if done == total {
                    // Complete but its ref was not yet written (a build stopped just before
                    // it): its dependants are keyed by what a build would write.
                    let m = manifest_from_records(store, &ev)?;
                    let done = Done {
                        output: m.output_hash(),
                        manifest: Hash::of(&m.encode()),
                    };
                    (StageState::UpToDate { items: total }, Some(done))
                } else if new_done > 0 || !running.is_empty() || (old.is_none() && done > 0) {
                    let state = StageState::Partial {
                        done,
                        total,
                        running,
                    };
                    (state, None)
                } else if let Some(r) = old {
                    let state = StageState::Stale {
                        reason: brief_reason(store, cx, &r, &ev),
                    };
                    (state, None)
                } else {
                    (StageState::Missing, None)
                }
            }
        };
        out.push(StageStatus { target, state });
        Ok::<_, StoreError>(Next::Go(done))
    })?;
    Ok(out)
}
