//! The `report` stage: gathers every trial's summary (from the stage manifests — no transcript
//! is opened, so 10,000 trials cost milliseconds), the extracted sample counts and, once it
//! exists, the training curve, and renders them ([`crate::report`]) into files stored as
//! objects. [`export`] then copies them into `reports/`, so the directory always shows the
//! current build, even when nothing had to be recomputed.

use super::train::{Skipped, TrainRecord};
use super::trial::TRANSCRIPT;
use crate::config::{Loaded, Role};
use crate::engine::{Job, Outputs, StageError};
use crate::report::{ArmInfo, ExtractCounts, ReportInput, TaskInfo, Training, TrialRow};
use crate::store::{Manifest, ManifestEntry, Store, StoreError};
use crate::workflow::TrialSummary;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A trial row from a manifest entry of `stage`: its id and summary, parsed strictly (a
/// summary of another shape is an error, never a row of zeros).
fn row(stage: &str, e: &ManifestEntry) -> Result<TrialRow, StageError> {
    let id = super::trial_id(&e.id)?;
    let s: TrialSummary = crate::engine::summary(e)?;
    let transcript = e
        .outputs
        .get(TRANSCRIPT)
        .map(|h| h.to_hex())
        .ok_or_else(|| StageError::Failed(format!("{stage} {} has no transcript", e.id)))?;
    Ok(TrialRow {
        id: e.id.clone(),
        stage: stage.to_string(),
        task: id.task,
        arm: id.arm,
        index: id.index,
        passed: s.passed,
        failed_step: s.failed_step.map(|f| f.name().to_string()),
        tests_attempts: s.attempts.tests,
        impl_attempts: s.attempts.impl_,
        retries_tests: s.retries.tests,
        retries_impl: s.retries.impl_,
        test_strength: s.test_strength,
        duration_ms: s.duration_ms,
        prompt_tokens: s.tokens.prompt,
        completion_tokens: s.tokens.completion,
        transcript,
    })
}

/// The trial rows of a `trial` or `eval` manifest: summaries only, no transcript is read.
/// An `eval` item that was not run (no adapter) is no row: the arm has no trials, and the
/// training section says why.
pub fn rows(stage: &str, m: &Manifest) -> Result<Vec<TrialRow>, StageError> {
    m.entries
        .iter()
        .filter(|e| stage != "eval" || crate::engine::summary::<super::trial::NotRun>(e).is_err())
        .map(|e| row(stage, e))
        .collect()
}

/// What the report is built from, read from the upstream manifests.
pub fn input(job: &Job<'_>) -> Result<ReportInput, StageError> {
    let l: &Loaded = job.cx.loaded;
    let tasks = l
        .tasks
        .iter()
        .map(|t| TaskInfo {
            id: t.id.clone(),
            name: t.spec.name.clone(),
            difficulty: t.value["difficulty"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        })
        .collect();
    let mut arms = Vec::new();
    for role in [Role::Baseline, Role::Finetuned] {
        for (name, arm) in l.arms(role) {
            arms.push(ArmInfo {
                name: name.to_string(),
                role: match role {
                    Role::Baseline => "baseline",
                    Role::Finetuned => "finetuned",
                }
                .to_string(),
                model: arm.model.get_ref().clone(),
                rmax: arm.rmax,
            });
        }
    }
    let mut trials = Vec::new();
    for stage in ["trial", "eval"] {
        if !job.upstream.contains_key(stage) {
            continue;
        }
        trials.extend(rows(stage, job.manifest(stage)?)?);
    }
    let extract = if job.upstream.contains_key("extract") {
        let mut counts: BTreeMap<String, ExtractCounts> = BTreeMap::new();
        for ex in super::extract::read_all(job)? {
            for (task, c) in ex.counts {
                let x = counts
                    .entry(task)
                    .or_insert(ExtractCounts { trials: 0, kept: 0 });
                x.trials += c.trials;
                x.kept += c.kept;
            }
        }
        Some(counts)
    } else {
        None
    };
    let training = if job.upstream.contains_key("train") {
        let m = job.manifest("train")?;
        let e = m
            .entries
            .first()
            .ok_or_else(|| StageError::Failed("train has no item".into()))?;
        let rec: TrainRecord = job.object(e, super::train::RECORD)?;
        Some(Training {
            loss: rec.curve.loss,
            val_loss: rec.curve.val_loss,
            samples: rec.train_samples,
            val_samples: rec.val_samples,
            skipped: rec.skipped.map(|s| {
                match s {
                    Skipped::NoSamples => "extract kept no sample (see the training samples above)",
                    Skipped::AllTooLong => "every sample is longer than train.max_seq_len",
                }
                .to_string()
            }),
        })
    } else {
        None
    };
    Ok(ReportInput {
        experiment: l.config.experiment.name.clone(),
        tasks,
        arms,
        trials,
        extract,
        training,
    })
}

/// What the manifest keeps of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Trials reported, over every arm.
    pub trials: usize,
    /// Of which passed.
    pub passed: usize,
}

/// The stage's run function.
pub fn run(job: &Job<'_>) -> Result<Outputs, StageError> {
    let input = input(job)?;
    let rendered = crate::report::render(&input);
    let mut objects = BTreeMap::new();
    for (name, bytes) in &rendered.files {
        objects.insert(name.clone(), job.store.put(bytes)?);
    }
    let passed = input.trials.iter().filter(|t| t.passed).count();
    Ok(Outputs::new(
        objects,
        &Summary {
            trials: input.trials.len(),
            passed,
        },
    ))
}

/// Copy the current report's files from the store into the reports directory, through the
/// store's atomic write path (a reader never sees half a file). Returns the paths; none when
/// the report was never built.
pub fn export(store: &Store, loaded: &Loaded) -> Result<Vec<PathBuf>, StoreError> {
    let Some(r) = store.get_ref("report")? else {
        return Ok(Vec::new());
    };
    let m = store.manifest(&r.manifest)?;
    let dir = loaded.report_dir();
    let mut out = Vec::new();
    for e in &m.entries {
        for (name, id) in &e.outputs {
            let dest = dir.join(name);
            store.export(&dest, &store.get(id)?)?;
            out.push(dest);
        }
    }
    Ok(out)
}
