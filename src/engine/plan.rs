//! Evaluating a stage (its items and keys) and the read-only `status` walk.

use super::{Context, Item, Pipeline, Stage};
use crate::key::{Hash, common_ingredients, stage_key};
use crate::store::{Manifest, ManifestEntry, Store, StoreError};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A stage with its keys computed against known upstream outputs.
pub struct Evaluated {
    /// Shared parameters.
    pub params: Value,
    /// Shared ingredients (stage, version, params, input hashes).
    pub common: Value,
    /// Hash of `common`.
    pub common_hash: Hash,
    /// Items in order.
    pub items: Vec<Item>,
    /// Their keys.
    pub keys: Vec<Hash>,
    /// Hash of all keys.
    pub stage_key: Hash,
}

/// Compute a stage's keys. `inputs` holds the output hash of each dependency.
pub fn evaluate(stage: &dyn Stage, cx: &Context<'_>, inputs: &BTreeMap<String, Hash>) -> Evaluated {
    let params = stage.params(cx);
    let deps: BTreeMap<String, Hash> = stage
        .deps()
        .iter()
        .map(|d| (d.to_string(), inputs[*d]))
        .collect();
    let common = common_ingredients(stage.name(), stage.version(), &params, &deps);
    let common_hash = Hash::of_value(&common);
    let items = stage.items(cx);
    let keys: Vec<Hash> = items
        .par_iter()
        .with_min_len(512)
        .map(|it| it.key(&common_hash))
        .collect();
    let stage_key = stage_key(&keys);
    Evaluated {
        params,
        common,
        common_hash,
        items,
        keys,
        stage_key,
    }
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
        /// Items being computed now, with their lease holder (`host:pid`).
        running: Vec<(String, String)>,
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
    let mut known: BTreeMap<String, Hash> = BTreeMap::new();
    let mut out = Vec::new();
    for stage in pipeline.stages() {
        let name = stage.name();
        let old = store.get_ref(name)?;
        if let Some(dep) = stage.deps().iter().find(|d| !known.contains_key(**d)) {
            let state = match old {
                Some(_) => StageState::Stale {
                    reason: format!("waiting on `{dep}`"),
                },
                None => StageState::Missing,
            };
            out.push(StageStatus {
                target: name,
                state,
            });
            continue;
        }
        let ev = evaluate(stage.as_ref(), cx, &known);
        if let Some(r) = old.as_ref().filter(|r| r.stage_key == ev.stage_key) {
            known.insert(name.to_string(), r.output);
            out.push(StageStatus {
                target: name,
                state: StageState::UpToDate { items: r.items },
            });
            continue;
        }
        // Items the last complete build already covers are not progress of the new one.
        let covered: std::collections::HashSet<Hash> = match &old {
            Some(r) => store
                .manifest(&r.manifest)
                .map(|m| m.entries.into_iter().map(|e| e.key).collect())
                .unwrap_or_default(),
            None => Default::default(),
        };
        let present: Vec<bool> = ev.keys.par_iter().map(|k| store.has_record(k)).collect();
        let done = present.iter().filter(|p| **p).count();
        let new_done = ev
            .keys
            .iter()
            .zip(&present)
            .filter(|(k, p)| **p && !covered.contains(*k))
            .count();
        let total = ev.items.len();
        let running: Vec<(String, String)> = ev
            .keys
            .iter()
            .zip(&ev.items)
            .zip(&present)
            .filter(|(_, p)| !**p)
            .filter_map(|((k, it), _)| store.live_lease(k).map(|l| (it.id.clone(), l.holder())))
            .collect();
        let state = if done == total {
            // Complete but its ref was not yet written (a build stopped just before it).
            let m = manifest_from_records(store, &ev)?;
            known.insert(name.to_string(), m.output_hash());
            StageState::UpToDate { items: total }
        } else if new_done > 0 || !running.is_empty() || (old.is_none() && done > 0) {
            StageState::Partial {
                done,
                total,
                running,
            }
        } else if let Some(r) = old {
            StageState::Stale {
                reason: super::explain::brief_reason(store, cx, &r, &ev),
            }
        } else {
            StageState::Missing
        };
        out.push(StageStatus {
            target: name,
            state,
        });
    }
    Ok(out)
}

/// Build a manifest by reading every item's record.
pub fn manifest_from_records(store: &Store, ev: &Evaluated) -> Result<Manifest, StoreError> {
    let entries = ev
        .keys
        .par_iter()
        .zip(&ev.items)
        .map(|(k, it)| {
            let rec = store.record(k)?.ok_or_else(|| StoreError::Corrupt {
                what: format!("record {k} vanished"),
            })?;
            Ok(ManifestEntry {
                id: it.id.clone(),
                key: *k,
                outputs: rec.outputs,
                summary: rec.summary,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Manifest { entries })
}
