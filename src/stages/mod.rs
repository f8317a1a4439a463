//! ③ The experiment's targets, declared in one place as a DAG:
//!
//! ```text
//! trial ──► extract ──► format ──► train ──┬──► convert ──┬──► report
//!   │          │                      │    └──► eval    ──┤
//!   └──────────┴──────────────────────┴───────────────────▲
//! ```
//!
//! (An experiment without a fine-tuned arm — a baseline study — reports from `trial` and
//! `extract` alone.)
//!
//! Each declaration fixes what keys the stage (its parameters and items). What a stage *does*
//! is its run function: the real one; the synthetic ones
//! ([`synthetic`]) are small deterministic stand-ins that exercise the engine with the real
//! keys, items and DAG (tests, benchmarks, and `pipe --synthetic`).
//!
//! Glue: may use every module. The work of a stage lives in a library that knows nothing of
//! the store ([`crate::workflow`], [`crate::samples`], [`crate::report`], …); a stage file
//! declares keys and items, reads its inputs as typed data, calls the library, writes outputs.

pub mod convert;
pub mod extract;
pub mod format;
pub mod report;
pub mod runtime;
pub mod synthetic;
pub mod train;
pub mod trial;

use crate::config::{Loaded, Role};
use crate::engine::{Context, Item, Job, Outputs, Pipeline, PipelineError, Stage, StageError};
use crate::store::{Store, StoreError};
use runtime::{Probe, Runtime};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use trial::TrialStage;

/// Which run functions the pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The experiment itself.
    Real,
    /// Deterministic stand-ins with the same keys and items.
    Synthetic,
}

/// What a stage does with one item.
pub type RunFn = fn(&Job<'_>) -> Result<Outputs, StageError>;

/// A stage declared by functions.
pub struct Declared {
    name: &'static str,
    version: u32,
    deps: &'static [&'static str],
    params: fn(&Context<'_>) -> Value,
    items: fn(&Context<'_>) -> Vec<Item>,
    run: RunFn,
    synthetic: bool,
}

impl Stage for Declared {
    fn name(&self) -> &'static str {
        self.name
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn deps(&self) -> &'static [&'static str] {
        self.deps
    }
    fn params(&self, cx: &Context<'_>) -> Value {
        let p = (self.params)(cx);
        if self.synthetic {
            // Synthetic outputs must never satisfy a real stage's key, nor the reverse.
            json!({ "synthetic": p })
        } else {
            p
        }
    }
    fn items(&self, cx: &Context<'_>) -> Vec<Item> {
        (self.items)(cx)
    }
    fn run(&self, job: &Job<'_>) -> Result<Outputs, StageError> {
        (self.run)(job)
    }
}

/// The seed of trial `index` of `task`: the same for every arm, so that the eval arm replays
/// exactly the baseline's draws.
pub fn trial_seed(experiment_seed: u64, task: &str, index: u32) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&experiment_seed.to_le_bytes());
    h.update(task.as_bytes());
    h.update(&index.to_le_bytes());
    let b = h.finalize();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// What the report shows beyond the upstream outputs: names, roles, models and rmax of the
/// arms, and the tasks' names and difficulty.
fn report_params(cx: &Context<'_>) -> Value {
    let l = cx.loaded;
    let arms: Value = l
        .config
        .arms
        .iter()
        .map(|(n, a)| {
            (
                n.clone(),
                json!({"role": a.role, "model": a.model.get_ref(), "rmax": a.rmax}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    let tasks: Vec<Value> = l
        .tasks
        .iter()
        .map(|t| json!({"id": t.id, "name": t.spec.name, "difficulty": t.value["difficulty"]}))
        .collect();
    json!({"experiment": l.config.experiment.name, "arms": arms, "tasks": tasks})
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("stage data serialises")
}

/// The trial an item id names (`task/arm/index`), or the stage's error saying it is none.
fn trial_id(id: &str) -> Result<crate::workflow::TrialId, StageError> {
    id.parse()
        .map_err(|e: crate::workflow::BadTrialId| StageError::Failed(e.to_string()))
}

/// A stage's parameters as keyed: the synthetic stand-in's are marked, so its results never
/// share a key with the real stage's.
fn keyed(params: Value, synthetic: bool) -> Value {
    if synthetic {
        json!({ "synthetic": params })
    } else {
        params
    }
}

/// Run the synthetic stand-in when there is one, else the real work.
fn run_or_synthetic(
    synthetic: Option<RunFn>,
    job: &Job<'_>,
    real: impl FnOnce(&Job<'_>) -> Result<Outputs, StageError>,
) -> Result<Outputs, StageError> {
    match synthetic {
        Some(f) => f(job),
        None => real(job),
    }
}

fn one(id: &str, ingredients: Value) -> Vec<Item> {
    vec![Item::new(id, ingredients)]
}

/// The stages that ask a model, and whose arms: a build of them asks those arms' servers who
/// they serve before anything is keyed.
const ASKS_MODELS: [(&str, &[Role]); 2] =
    [("trial", &[Role::Baseline]), ("eval", &[Role::Finetuned])];

/// What a build of some targets involves, decided from the DAG so that no caller has to know
/// it: the stages it walks, which model servers it asks, and what it publishes afterwards.
pub struct BuildScope {
    mode: Mode,
    names: Vec<&'static str>,
}

impl BuildScope {
    /// The scope of building `targets` (an unknown target is an error, before any I/O).
    pub fn new(
        mode: Mode,
        loaded: &Loaded,
        targets: &[String],
    ) -> Result<BuildScope, PipelineError> {
        let p = pipeline(
            mode,
            Arc::new(Runtime::new(loaded, None, Probe::ConfigOnly)),
        );
        let names = p.closure(targets)?.iter().map(|&i| p.names()[i]).collect();
        Ok(BuildScope { mode, names })
    }

    /// How the runtime learns model identities for this build.
    pub fn probe(&self) -> Probe {
        if self.mode == Mode::Synthetic {
            return Probe::ConfigOnly;
        }
        let asks = |stage: &str| self.names.contains(&stage);
        Probe::Servers(match (asks(ASKS_MODELS[0].0), asks(ASKS_MODELS[1].0)) {
            (true, true) => &[Role::Baseline, Role::Finetuned],
            (true, false) => ASKS_MODELS[0].1,
            (false, true) => ASKS_MODELS[1].1,
            (false, false) => &[],
        })
    }

    /// After a build that succeeded: copy what it produced for people to read out of the
    /// store (the report's files into the reports directory). Returns the paths written.
    pub fn publish(&self, store: &Store, loaded: &Loaded) -> Result<Vec<PathBuf>, StoreError> {
        if self.mode == Mode::Real && self.names.contains(&"report") {
            report::export(store, loaded)
        } else {
            Ok(Vec::new())
        }
    }
}

/// The pipeline, with real or synthetic run functions, over a runtime (models, guard).
pub fn pipeline(mode: Mode, rt: Arc<Runtime>) -> Pipeline {
    let real = mode == Mode::Real;
    let pick = |r: RunFn, s: RunFn| if real { r } else { s };
    let stages: Vec<Box<dyn Stage>> = vec![
        Box::new(TrialStage {
            name: "trial",
            version: 1,
            deps: &[],
            role: Role::Baseline,
            rt: Arc::clone(&rt),
            synthetic: (!real).then_some(synthetic::trial as RunFn),
        }),
        Box::new(Declared {
            name: "extract",
            // 2: samples follow the trial's verdict (the mutation guard's too), not the
            // presence of an implementation.
            version: 2,
            deps: &["trial"],
            params: |_| json!({}),
            items: |cx| {
                let arm = &cx.loaded.config.train.from_arm;
                one(arm, to_json(&extract::Item { arm: arm.clone() }))
            },
            synthetic: !real,
            run: pick(extract::run, synthetic::extract),
        }),
        Box::new(Declared {
            name: "format",
            version: 1,
            deps: &["extract"],
            params: |cx| {
                let t = &cx.loaded.config.train;
                to_json(&format::Params {
                    val_fraction: t.val_fraction,
                    seed: t.seed,
                })
            },
            items: |_| one("jsonl", json!({})),
            synthetic: !real,
            run: pick(format::run, synthetic::derive),
        }),
        Box::new(train::TrainStage {
            rt: Arc::clone(&rt),
            synthetic: (!real).then_some(synthetic::derive as RunFn),
        }),
        Box::new(convert::ConvertStage {
            rt: Arc::clone(&rt),
            synthetic: (!real).then_some(synthetic::derive as RunFn),
        }),
        Box::new(TrialStage {
            name: "eval",
            // 2: the fine-tuned model is the base with train's adapter.
            version: 2,
            // The adapter, unmerged (see Runtime::finetuned): convert's files are for people.
            deps: &["train"],
            role: Role::Finetuned,
            rt: Arc::clone(&rt),
            synthetic: (!real).then_some(synthetic::trial as RunFn),
        }),
        Box::new(Declared {
            name: "report",
            // 2: failure causes, transcripts and provenance read from the trial records.
            version: 2,
            // Without a fine-tuned arm the experiment is a baseline study: the report needs
            // only the trials (and what extract would keep for training).
            deps: if rt.finetune() {
                &["trial", "extract", "train", "convert", "eval"]
            } else {
                &["trial", "extract"]
            },
            params: report_params,
            items: |_| one("report", json!({})),
            synthetic: !real,
            run: pick(report::run, synthetic::report),
        }),
    ];
    Pipeline::new(stages).expect("the declared DAG is in dependency order")
}
