//! Evaluating a stage (its items and keys) and the one walk over the DAG ([`walk`]) that
//! `status`, `explain` and `build` share.

use super::{Context, Item, Pipeline, Stage};
use crate::key::{Hash, common_ingredients, stage_key};
use crate::store::{Manifest, ManifestEntry, Ref, Store, StoreError};
use rayon::prelude::*;
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

/// A complete stage, as the walk knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Its output hash (what keys its dependants).
    pub output: Hash,
    /// Its manifest object.
    pub manifest: Hash,
}

/// What the walk found for one stage, before anyone acts on it.
pub enum Found {
    /// An input is not complete: this stage's key cannot be computed yet.
    Waiting {
        /// The first incomplete input.
        on: &'static str,
        /// The stage's last complete build, if any.
        old: Option<Ref>,
    },
    /// The stage's ref matches its current key.
    UpToDate {
        /// Its ref.
        current: Ref,
        /// Its items, evaluated.
        ev: Evaluated,
    },
    /// The ref is absent or was built from other inputs.
    NeedsWork {
        /// The current keys.
        ev: Evaluated,
        /// The last complete build, if any.
        old: Option<Ref>,
    },
}

/// The one walk over stages that `status`, `explain` and `build` share: in dependency order,
/// each stage's key from its inputs' outputs, compared with its ref. `visit` decides what to
/// do with each [`Found`] and returns the stage's outputs when it is (or becomes) complete, so
/// its dependants can be keyed, or [`Next::Stop`]; a stage whose inputs are not all complete
/// is `Waiting`.
pub fn walk<E: From<StoreError>>(
    store: &Store,
    pipeline: &Pipeline,
    cx: &Context<'_>,
    indices: &[usize],
    mut visit: impl FnMut(&dyn Stage, Found, &BTreeMap<&'static str, Done>) -> Result<Next, E>,
) -> Result<(), E> {
    let mut known: BTreeMap<&'static str, Done> = BTreeMap::new();
    for &i in indices {
        let stage = pipeline.stages()[i].as_ref();
        let old = store.get_ref(stage.name())?;
        let found = if let Some(on) = stage.deps().iter().find(|d| !known.contains_key(**d)) {
            Found::Waiting { on, old }
        } else {
            let inputs: BTreeMap<String, Hash> = known
                .iter()
                .map(|(k, d)| (k.to_string(), d.output))
                .collect();
            let ev = evaluate(stage, cx, &inputs);
            match old {
                Some(r) if r.stage_key == ev.stage_key => Found::UpToDate { current: r, ev },
                old => Found::NeedsWork { ev, old },
            }
        };
        match visit(stage, found, &known)? {
            Next::Go(Some(done)) => {
                known.insert(stage.name(), done);
            }
            Next::Go(None) => {}
            Next::Stop => break,
        }
    }
    Ok(())
}

/// What the walk does after visiting a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Go on; with the stage's outputs when it is (or became) complete.
    Go(Option<Done>),
    /// Stop: no later stage is evaluated (a build that failed without `--keep-going`).
    Stop,
}

impl Done {
    /// A ref's outputs.
    pub fn of(r: &Ref) -> Done {
        Done {
            output: r.output,
            manifest: r.manifest,
        }
    }
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
