//! The `report` stage's renderer: typed trial results in, report files (bytes) out.
//!
//! ```text
//! ReportInput ──analysis──► cells (task × arm), comparisons, power, "cannot conclude"
//!                 │
//!                 ├──sections──► report.md · report.html (inline CSS + inline SVG charts)
//!                 └──tables────► trials.csv · trials.jsonl · summary.csv · summary.json
//! ```
//!
//! Pure and deterministic: no clock, no randomness, no I/O, and the trials are sorted before
//! use, so the same input gives the same bytes whatever order the trials arrive in — the
//! report is a cached pipeline artifact. All statistics come from [`crate::stats`].
//!
//! Depends on [`crate::stats`] and the failure [`Cause`] type only: the `report` stage reads
//! the store and hands this a [`ReportInput`].

mod analysis;
mod charts;
mod fmt;
mod html;
mod markdown;
mod published;
mod sections;
mod tables;

pub use crate::workflow::cause::Cause;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything the report shows; the pipeline's `report` stage fills it from the stores'
/// trial, eval, extract and train outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportInput {
    /// The experiment's name (`pipeline.toml` `experiment.name`): the report's title.
    pub experiment: String,
    /// The tasks in config order: rows appear in this order. A trial naming a task not listed
    /// here is still reported, as an extra row after these (and said so).
    pub tasks: Vec<TaskInfo>,
    /// The arms, baseline arms first, then fine-tuned ones: columns appear in this order and
    /// comparisons read "later − earlier". A trial naming an arm not listed is reported as an
    /// extra arm with role "unknown" (never compared).
    pub arms: Vec<ArmInfo>,
    /// Every trial, in any order (the report sorts them).
    pub trials: Vec<TrialRow>,
    /// Training samples per task id from the `extract` stage, when it has been built; a task
    /// missing from the map counts as zero samples.
    pub extract: Option<BTreeMap<String, ExtractCounts>>,
    /// The training-loss curve; `None` until a train stage exists (then no loss chart).
    pub training: Option<Training>,
    /// How the trials were run (models, sampling, guard, who and when), when known.
    pub provenance: Option<Provenance>,
}

/// How the trials were run, as the store recorded it: what a reader needs to judge or repeat
/// the study.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Per arm: the arm, its config model name and what the server (or the local files) said
    /// it is — the identity every trial key holds.
    pub models: Vec<ServedModel>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus sampling.
    pub top_p: f64,
    /// Generation limit per request.
    pub max_tokens: u32,
    /// The experiment's seed (each trial's seed derives from it, the task and the index).
    pub seed: u64,
    /// The test guard's wall-clock limit per pytest run.
    pub guard_timeout_s: u64,
    /// Its memory limit.
    pub guard_memory_mb: u64,
    /// Its process limit.
    pub guard_max_processes: u32,
    /// Whether the mutation guard was on (off: the published syntax-only test guard).
    pub mutation_guard: bool,
    /// The guard's Python (interpreter and pytest versions), as keys hold it.
    pub guard_env: String,
    /// pipe versions that computed the trials.
    pub pipe_versions: Vec<String>,
    /// Hosts that computed the trials.
    pub hosts: Vec<String>,
    /// Unix ms of the first trial's start.
    pub first_ms: Option<u64>,
    /// Unix ms of the last trial's end.
    pub last_ms: Option<u64>,
    /// The system turn the model saw (the same in every trial).
    pub system_prompt: Option<String>,
}

/// One arm's model, as identified when its trials ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedModel {
    /// The arm.
    pub arm: String,
    /// The `[models]` name in the config.
    pub model: String,
    /// Its identity (served name and digest, or file hashes), compact JSON.
    pub identity: String,
    /// For a fine-tuned arm on a local model: the train output (hex) whose LoRA adapter eval
    /// applied, unmerged.
    pub adapter: Option<String>,
}

/// One benchmark task, so rows can show a human name and difficulty and map to the published
/// numbers by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The task id (`stack`); also how published reference numbers are matched.
    pub id: String,
    /// Its display name (`Stack`).
    pub name: String,
    /// Its difficulty label (`easy`, `medium`, `hard`).
    pub difficulty: String,
}

/// One arm of the experiment, so columns can be labelled and comparisons paired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmInfo {
    /// The arm's name in the config (`base`).
    pub name: String,
    /// `"baseline"` (run by `trial`) or `"finetuned"` (run by `eval`); decides the comparisons.
    pub role: String,
    /// A human label of the model it runs.
    pub model: String,
    /// Retries per step (up to `rmax + 1` attempts): the retry table's last column.
    pub rmax: u32,
}

/// One trial's outcome, as the per-trial tables and every aggregate need it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRow {
    /// The item id (`stack/base/0`); `pipe show <stage>/<id>` prints its transcript.
    pub id: String,
    /// The stage that ran it: `trial` (baseline arms) or `eval` (fine-tuned arms).
    pub stage: String,
    /// Its task id.
    pub task: String,
    /// Its arm name.
    pub arm: String,
    /// Its index within the task and arm.
    pub index: u32,
    /// Whether the whole workflow passed.
    pub passed: bool,
    /// The step that failed (`tests`, `impl`, `mutation`) when it did not pass.
    pub failed_step: Option<String>,
    /// Attempts made at the tests step.
    pub tests_attempts: u32,
    /// Attempts made at the implementation step.
    pub impl_attempts: u32,
    /// R (retries = attempts − 1) of the tests step, when it passed. For a passed trial where
    /// this is `None`, the report uses `tests_attempts − 1`.
    pub retries_tests: Option<u32>,
    /// R of the implementation step, when it passed (same fallback as `retries_tests`).
    pub retries_impl: Option<u32>,
    /// Share of mutants the tests killed (passed trials only).
    pub test_strength: Option<f64>,
    /// Wall time of the trial in milliseconds.
    pub duration_ms: u64,
    /// Prompt tokens over all requests of the trial.
    pub prompt_tokens: u64,
    /// Completion tokens over all requests of the trial.
    pub completion_tokens: u64,
    /// Hex blake3 of the transcript object in the store.
    pub transcript: String,
    /// Why it failed (`None` when it passed or the cause is unknown).
    pub cause: Option<Cause>,
    /// Attempts whose reply was cut off by `max_tokens`.
    pub truncated: u32,
    /// The transcript, attempt by attempt (empty when not loaded).
    pub attempts: Vec<AttemptRow>,
}

/// One request of a trial, as the transcript keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRow {
    /// `tests` or `impl`.
    pub step: String,
    /// R: 0 for the first attempt of the step.
    pub retry: u32,
    /// The user turn as sent.
    pub prompt: String,
    /// The raw reply.
    pub reply: String,
    /// The code taken from it.
    pub code: String,
    /// Did the guard accept it?
    pub passed: bool,
    /// What the next prompt said about it.
    pub feedback: String,
    /// Why it failed.
    pub cause: Option<Cause>,
    /// Why generation stopped.
    pub finish_reason: Option<String>,
    /// Prompt tokens (server's count).
    pub prompt_tokens: Option<u64>,
    /// Generated tokens (server's count).
    pub completion_tokens: Option<u64>,
    /// Time waiting for the model, ms.
    pub model_ms: u64,
    /// Time in the guard, ms.
    pub guard_ms: u64,
}

/// What `extract` kept for one task, so the report can say which tasks the fine-tuned model
/// saw no examples of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractCounts {
    /// Trials of the source arm for this task.
    pub trials: u32,
    /// Training samples kept.
    pub kept: u32,
}

/// The training-loss curve, to show whether training converged or overfitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Training {
    /// Training loss as (step, loss).
    pub loss: Vec<(u64, f64)>,
    /// Validation loss as (step, loss).
    pub val_loss: Vec<(u64, f64)>,
    /// Training examples.
    pub samples: usize,
    /// Validation examples.
    pub val_samples: usize,
    /// Why no adapter was trained, when none was (then the curves are empty).
    pub skipped: Option<String>,
}

/// The rendered report: the stage writes each file under the report directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// File name → bytes, in a fixed order: `report.md`, `report.html`, `trials.csv`,
    /// `trials.jsonl`, `summary.csv`, `summary.json`, and one `transcripts-<task>-<arm>.html`
    /// per task × arm when the transcripts are too large to sit inside `report.html`.
    pub files: Vec<(String, Vec<u8>)>,
}

impl Rendered {
    /// The bytes of one file by name, for callers and tests that want a single file.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

/// Renders every report file from `input`. Never fails and never panics on sparse input
/// (no trials, one arm, empty cells); the same input gives identical bytes.
pub fn render(input: &ReportInput) -> Rendered {
    let a = analysis::Analysis::new(input);
    let doc = sections::build(&a);
    let mut files = vec![
        (
            "report.md".to_string(),
            markdown::render(&a, &doc).into_bytes(),
        ),
        (
            "report.html".to_string(),
            html::render(&a, &doc).into_bytes(),
        ),
        ("trials.csv".to_string(), tables::trials_csv(&a)),
        ("trials.jsonl".to_string(), tables::trials_jsonl(&a)),
        ("summary.csv".to_string(), tables::summary_csv(&a)),
        ("summary.json".to_string(), tables::summary_json(&a)),
    ];
    if html::placement(&a) == html::Transcripts::Sibling {
        files.extend(
            html::transcript_pages(&a)
                .into_iter()
                .map(|(name, page)| (name, page.into_bytes())),
        );
    }
    Rendered { files }
}
