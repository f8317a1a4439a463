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
//! Depends on [`crate::stats`] only: the `report` stage reads the store and hands this a
//! [`ReportInput`].

mod analysis;
mod charts;
mod fmt;
mod html;
mod markdown;
mod published;
mod sections;
mod tables;

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
    /// `trials.jsonl`, `summary.csv`, `summary.json`.
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
    let files = vec![
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
    Rendered { files }
}
