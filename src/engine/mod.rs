//! ② The make-style engine: stages in a DAG, keys, scheduling, status and explain.
//!
//! The engine knows nothing about LLMs. A [`Stage`] declares its dependencies, the parameters
//! that key it and the items it maps over (one action per item); the engine hashes those with
//! the *output hashes* of the stage's inputs, finds what is already in the store, leases what
//! is not, runs it, and commits the records. A stage's output hash covers its items' outputs and
//! not their keys, so a change that leaves a stage's outputs equal stops there (early cutoff).
//!
//! Depends on [`crate::store`], [`crate::key`], [`crate::config`] (the context stages declare
//! from) and [`crate::progress`]; never on a stage, a model or the workflow.

pub mod build;
pub mod diff;
pub mod explain;
pub mod plan;
pub mod status;

use crate::config::Loaded;
use crate::key::{Hash, canonical};
use crate::store::{Manifest, ManifestEntry, Store, StoreError};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use build::{BuildOptions, BuildReport, build};
pub use explain::explain;
pub use status::{StageState, StageStatus, status};

/// What stages see of the world while declaring items: the config and tasks, and a place to
/// put large ingredients as objects (`{"$obj": hash}`) so keys stay small and `explain` can
/// still show what changed inside them.
pub struct Context<'a> {
    /// The loaded config and tasks.
    pub loaded: &'a Loaded,
    blobs: Mutex<BTreeMap<Hash, Vec<u8>>>,
}

impl<'a> Context<'a> {
    /// A context over a loaded config.
    pub fn new(loaded: &'a Loaded) -> Self {
        Context {
            loaded,
            blobs: Mutex::new(BTreeMap::new()),
        }
    }

    /// Stand-in for a large ingredient: `{"$obj": hash}`; the bytes are written to the store
    /// before any record that mentions them.
    pub fn blob(&self, v: &Value) -> Value {
        let bytes = canonical(v).into_bytes();
        let h = Hash::of(&bytes);
        self.blobs.lock().unwrap().entry(h).or_insert(bytes);
        serde_json::json!({ "$obj": h.to_hex() })
    }

    /// A blob declared in this context and not yet written, parsed.
    pub fn pending(&self, h: &Hash) -> Option<Value> {
        let blobs = self.blobs.lock().unwrap();
        serde_json::from_slice(blobs.get(h)?).ok()
    }

    pub(crate) fn flush_blobs(&self, store: &Store) -> Result<(), StoreError> {
        let blobs = std::mem::take(&mut *self.blobs.lock().unwrap());
        for (_, bytes) in blobs {
            store.put(&bytes)?;
        }
        Ok(())
    }
}

/// Ingredients shared by a group of items (one task × arm), serialised once: a stage with
/// 100,000 items must not build and serialise 100,000 copies of the same JSON.
#[derive(Debug)]
pub struct Shared {
    value: Value,
    canonical: String,
}

impl Shared {
    /// Wrap a JSON object.
    pub fn new(value: Value) -> Arc<Shared> {
        let canonical = canonical(&value);
        Arc::new(Shared { value, canonical })
    }
    /// The value.
    pub fn value(&self) -> &Value {
        &self.value
    }
}

/// One action of a stage.
#[derive(Debug, Clone)]
pub struct Item {
    /// Unique within the stage, stable across runs (`stack/base/7`).
    pub id: String,
    /// Ingredients shared with other items of the stage (an object).
    pub shared: Arc<Shared>,
    /// This item's own ingredients (an object).
    pub own: Value,
}

impl Item {
    /// An item with no shared part.
    pub fn new(id: impl Into<String>, own: Value) -> Item {
        Item {
            id: id.into(),
            shared: Shared::new(Value::Object(Default::default())),
            own,
        }
    }

    /// Everything this item depends on beyond the stage's parameters, as one object
    /// (what records keep and `explain` compares).
    pub fn ingredients(&self) -> Value {
        let mut m = self.shared.value.as_object().cloned().unwrap_or_default();
        match &self.own {
            Value::Object(o) => m.extend(o.clone()),
            other => {
                m.insert("own".into(), other.clone());
            }
        }
        Value::Object(m)
    }

    /// This item's key under a stage's common ingredients.
    pub fn key(&self, common: &Hash) -> Hash {
        crate::key::item_key(common, &self.id, &self.shared.canonical, &self.own)
    }
}

/// What an action produced.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// Output objects by name (already in the store).
    pub objects: BTreeMap<String, Hash>,
    /// A small JSON summary kept in the record and manifest (e.g. `{"passed": true}`).
    pub summary: Value,
}

impl Outputs {
    /// Outputs with a typed summary (what the reading stage deserialises).
    pub fn new<T: serde::Serialize>(objects: BTreeMap<String, Hash>, summary: &T) -> Outputs {
        Outputs {
            objects,
            summary: serde_json::to_value(summary).expect("a summary serialises"),
        }
    }
}

/// Why an action did not produce outputs.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The action failed; nothing is recorded, a rerun tries again.
    #[error("{0}")]
    Failed(String),
    /// The world is broken (a server unreachable): the build stops, nothing is recorded.
    #[error("infrastructure error: {0}")]
    Infra(String),
    /// The store failed, or an input object is corrupt.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A complete upstream stage, as a job sees it.
pub struct Upstream {
    /// Its output hash.
    pub output: Hash,
    /// Its manifest object.
    pub manifest_id: Hash,
    manifest: OnceLock<Manifest>,
}

impl Upstream {
    pub(crate) fn new(output: Hash, manifest_id: Hash) -> Self {
        Upstream {
            output,
            manifest_id,
            manifest: OnceLock::new(),
        }
    }
}

/// What one action gets to work with.
pub struct Job<'a> {
    /// The stage's name.
    pub stage: &'static str,
    /// The store (objects are written with [`Store::put`]; reads are verified).
    pub store: &'a Store,
    /// The declaring context.
    pub cx: &'a Context<'a>,
    /// The item.
    pub item: &'a Item,
    /// The stage's shared parameters.
    pub params: &'a Value,
    /// Complete upstream stages by name.
    pub upstream: &'a BTreeMap<String, Upstream>,
    /// The item's key: what its checkpoints are saved under.
    pub key: Hash,
    /// Where progress goes.
    pub reporter: &'a dyn crate::progress::Reporter,
    /// Whether the stage saved or looked for a checkpoint (only then is there one to drop:
    /// on a bucket, a delete per item would be a request per item for nothing).
    pub checkpoints: std::sync::atomic::AtomicBool,
}

impl Job<'_> {
    /// The stage's parameters, as the type the stage declared them with.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, StageError> {
        serde_json::from_value(self.params.clone())
            .map_err(|e| StageError::Failed(format!("stage parameters: {e}")))
    }

    /// This item's own ingredients, as the type the stage declared them with.
    pub fn own<T: DeserializeOwned>(&self) -> Result<T, StageError> {
        serde_json::from_value(self.item.own.clone())
            .map_err(|e| StageError::Failed(format!("item {}: {e}", self.item.id)))
    }

    /// Output `name` of an upstream item, read (verified) and parsed as `T`. A missing output
    /// or a shape that does not parse is an error naming the item, never a default.
    pub fn object<T: DeserializeOwned>(
        &self,
        entry: &ManifestEntry,
        name: &str,
    ) -> Result<T, StageError> {
        let id = entry
            .outputs
            .get(name)
            .ok_or_else(|| StageError::Failed(format!("{} has no `{name}` output", entry.id)))?;
        let bytes = self.store.get(id)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StageError::Failed(format!("{} `{name}` ({}): {e}", entry.id, id.short())))
    }

    /// Save this item's progress (a long action resumes from it after a crash). The engine
    /// drops it once the item's record is committed.
    pub fn save_checkpoint(&self, bytes: &[u8]) -> Result<(), StageError> {
        self.checkpoints
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(self.store.put_checkpoint(&self.key, bytes)?)
    }

    /// This item's last saved progress, if any (verified).
    pub fn checkpoint(&self) -> Option<Vec<u8>> {
        self.checkpoints
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.store.get_checkpoint(&self.key)
    }

    /// Tell the user how far this item is.
    pub fn progress(&self, done: u64, total: u64, message: &str) {
        self.reporter
            .item_progress(self.stage, &self.item.id, done, total, message);
    }

    /// An upstream stage's manifest, read and verified once.
    pub fn manifest(&self, stage: &str) -> Result<&Manifest, StageError> {
        let up = self.upstream.get(stage).ok_or_else(|| {
            StageError::Failed(format!("`{stage}` is not an input of this stage"))
        })?;
        if let Some(m) = up.manifest.get() {
            return Ok(m);
        }
        let m = self.store.manifest(&up.manifest_id)?;
        Ok(up.manifest.get_or_init(|| m))
    }
}

/// A manifest entry's summary, parsed as `T` (what the producing stage wrote).
pub fn summary<T: DeserializeOwned>(entry: &ManifestEntry) -> Result<T, StageError> {
    serde_json::from_value(entry.summary.clone())
        .map_err(|e| StageError::Failed(format!("{} summary: {e}", entry.id)))
}

/// A pipeline stage. Implementations are declared in `stages/`.
pub trait Stage: Send + Sync {
    /// The target name.
    fn name(&self) -> &'static str;
    /// Bumped when the stage's logic changes: every key of the stage moves.
    fn version(&self) -> u32;
    /// Upstream stages whose output hashes key this one.
    fn deps(&self) -> &'static [&'static str];
    /// Parsed parameters shared by every item (never raw text, never secrets).
    fn params(&self, cx: &Context<'_>) -> Value;
    /// The items; a stage that does not map returns one item.
    fn items(&self, cx: &Context<'_>) -> Vec<Item>;
    /// Compute one item. Called with the item's lease held; may run concurrently with other
    /// items of the same stage. Must write its outputs to the store before returning them.
    fn run(&self, job: &Job<'_>) -> Result<Outputs, StageError>;
}

/// The stages in dependency order.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
}

/// A pipeline that names an unknown stage or is out of order.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A target that no stage has.
    #[error("no target named `{name}` (targets: {known})")]
    UnknownTarget {
        /// What was asked.
        name: String,
        /// What exists.
        known: String,
    },
    /// A dependency that is not declared before its dependant.
    #[error("stage `{stage}` depends on `{dep}`, which is not declared before it")]
    BadOrder {
        /// Dependant.
        stage: String,
        /// Dependency.
        dep: String,
    },
}

impl Pipeline {
    /// Check that every dependency is declared before its dependant (so the list is a
    /// topological order and cycles are impossible).
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Result<Pipeline, PipelineError> {
        for (i, s) in stages.iter().enumerate() {
            for d in s.deps() {
                if !stages[..i].iter().any(|p| p.name() == *d) {
                    return Err(PipelineError::BadOrder {
                        stage: s.name().into(),
                        dep: d.to_string(),
                    });
                }
            }
        }
        Ok(Pipeline { stages })
    }

    /// Stages in order.
    pub fn stages(&self) -> &[Box<dyn Stage>] {
        &self.stages
    }

    /// Target names in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// Indices of `targets` and everything they need, in order.
    pub fn closure(&self, targets: &[String]) -> Result<Vec<usize>, PipelineError> {
        let mut need = vec![false; self.stages.len()];
        for t in targets {
            let i = self
                .stages
                .iter()
                .position(|s| s.name() == t)
                .ok_or_else(|| PipelineError::UnknownTarget {
                    name: t.clone(),
                    known: self.names().join(", "),
                })?;
            need[i] = true;
        }
        for i in (0..self.stages.len()).rev() {
            if need[i] {
                for d in self.stages[i].deps() {
                    if let Some(j) = self.stages.iter().position(|s| s.name() == *d) {
                        need[j] = true;
                    }
                }
            }
        }
        Ok((0..self.stages.len()).filter(|&i| need[i]).collect())
    }
}
