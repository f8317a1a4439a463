//! The `report` stage: gathers every trial's summary and transcript (the transcripts give each
//! failure its cause and fill the page's transcripts: 10,000 trials are ≈ 10,000 object reads),
//! how they were run (the action records: hosts, dates, the model identities in their keys),
//! the extracted sample counts and, once it exists, the training curve, and renders them
//! ([`crate::report`]) into files stored as objects. [`export`] then copies them into `reports/`, so the directory always shows the
//! current build, even when nothing had to be recomputed.

use super::train::{Skipped, TrainRecord};
use super::trial::TRANSCRIPT;
use crate::config::{Loaded, Role};
use crate::engine::{Job, Outputs, StageError};
use crate::report::{
    ArmInfo, AttemptRow, ExtractCounts, Provenance, ReportInput, ServedModel, TaskInfo, Training,
    TrialRow,
};
use crate::store::{ActionRecord, Manifest, ManifestEntry, Store, StoreError};
use crate::workflow::{TrialRecord, TrialSummary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A trial row from a manifest entry of `stage`: its id and summary, parsed strictly (a
/// summary of another shape is an error, never a row of zeros) — and its transcript, for the
/// failure cause and the attempts.
fn row(stage: &str, e: &ManifestEntry, rec: &TrialRecord) -> Result<TrialRow, StageError> {
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
        cause: rec.cause(),
        truncated: rec.truncated_attempts(),
        attempts: rec.attempts.iter().map(attempt_row).collect(),
    })
}

fn attempt_row(a: &crate::workflow::Attempt) -> AttemptRow {
    AttemptRow {
        step: a.step.name().to_string(),
        retry: a.retry,
        prompt: a.prompt.clone(),
        reply: a.reply.clone(),
        code: a.code.clone(),
        passed: a.passed,
        feedback: a.feedback.clone(),
        cause: a.cause(),
        finish_reason: a.finish_reason.clone(),
        prompt_tokens: a.prompt_tokens,
        completion_tokens: a.completion_tokens,
        model_ms: a.model_ms,
        guard_ms: a.guard_ms,
    }
}

/// The entries of a `trial` or `eval` manifest that ran a trial.
fn ran<'m>(stage: &str, m: &'m Manifest) -> impl Iterator<Item = &'m ManifestEntry> {
    let eval = stage == "eval";
    m.entries
        .iter()
        .filter(move |e| !eval || crate::engine::summary::<super::trial::NotRun>(e).is_err())
}

/// The rows of a `trial` or `eval` manifest with their transcripts (read in parallel: each is
/// one verified object read), each with the system turn its model saw.
pub fn rows_with_transcripts(
    store: &Store,
    stage: &str,
    m: &Manifest,
) -> Result<Vec<(TrialRow, String)>, StageError> {
    use rayon::prelude::*;
    let entries: Vec<&ManifestEntry> = ran(stage, m).collect();
    entries
        .par_iter()
        .map(|e| {
            let id = e
                .outputs
                .get(TRANSCRIPT)
                .ok_or_else(|| StageError::Failed(format!("{stage} {} has no transcript", e.id)))?;
            let rec: TrialRecord = serde_json::from_slice(&store.get(id)?).map_err(|err| {
                StageError::Failed(format!(
                    "{stage} {} transcript ({}): {err}",
                    e.id,
                    id.short()
                ))
            })?;
            Ok((row(stage, e, &rec)?, rec.system))
        })
        .collect()
}

/// How the trials were run: the config's sampling and guard (both in every trial key), and from
/// the action records the model identities, hosts, pipe versions and dates. A record gone (a
/// store shared with an older gc) leaves its part out rather than failing the report.
fn provenance(job: &Job<'_>, system: Option<String>) -> Result<Provenance, StageError> {
    let c = &job.cx.loaded.config;
    let mut p = Provenance {
        temperature: c.sampling.temperature,
        top_p: c.sampling.top_p,
        max_tokens: c.sampling.max_tokens,
        seed: c.experiment.seed,
        guard_timeout_s: c.guard.timeout_s,
        guard_memory_mb: c.guard.memory_mb,
        guard_max_processes: c.guard.max_processes,
        mutation_guard: c.guard.mutation_guard,
        ..Provenance::default()
    };
    let mut versions = std::collections::BTreeSet::new();
    let mut hosts = std::collections::BTreeSet::new();
    let mut seen_arms = std::collections::BTreeSet::new();
    for stage in ["trial", "eval"] {
        if !job.upstream.contains_key(stage) {
            continue;
        }
        // One record per trial: read in parallel (like the transcripts), folded in order.
        let records: Vec<Option<ActionRecord>> = {
            use rayon::prelude::*;
            let keys: Vec<_> = ran(stage, job.manifest(stage)?).map(|e| e.key).collect();
            keys.par_iter()
                .map(|k| job.store.record(k))
                .collect::<Result<_, _>>()?
        };
        for rec in records.into_iter().flatten() {
            versions.insert(rec.producer.version.clone());
            hosts.insert(rec.producer.host.clone());
            p.first_ms = Some(p.first_ms.map_or(rec.started_ms, |f| f.min(rec.started_ms)));
            p.last_ms = Some(
                p.last_ms
                    .map_or(rec.finished_ms, |l| l.max(rec.finished_ms)),
            );
            let arm = rec.ingredients["arm"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if seen_arms.insert(arm.clone()) {
                let common: serde_json::Value =
                    serde_json::from_slice(&job.store.get(&rec.common)?).map_err(|e| {
                        StageError::Failed(format!("{stage} record's common ingredients: {e}"))
                    })?;
                if p.guard_env.is_empty() {
                    p.guard_env = crate::key::canonical(&common["params"]["guard_env"]);
                }
                let model = c
                    .arms
                    .get(&arm)
                    .map(|a| a.model.get_ref().clone())
                    .unwrap_or_default();
                let identity = &rec.ingredients["model"];
                // eval applies train's adapter to a local model itself; a served model is asked
                // as it is.
                let adapter = (stage == "eval" && identity["backend"] == "local")
                    .then(|| common["inputs"]["train"].as_str().map(str::to_string))
                    .flatten();
                p.models.push(ServedModel {
                    arm,
                    model,
                    identity: crate::key::canonical(identity),
                    adapter,
                });
            }
        }
    }
    p.pipe_versions = versions.into_iter().collect();
    p.hosts = hosts.into_iter().collect();
    p.system_prompt = system;
    Ok(p)
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
    let mut system = None;
    for stage in ["trial", "eval"] {
        if !job.upstream.contains_key(stage) {
            continue;
        }
        for (row, sys) in rows_with_transcripts(job.store, stage, job.manifest(stage)?)? {
            system.get_or_insert(sys);
            trials.push(row);
        }
    }
    let provenance = provenance(job, system)?;
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
        provenance: Some(provenance),
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
    // Transcript pages of an earlier report (more trials then, or another task or arm) would
    // sit beside this one and look current: they go.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for f in entries.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with("transcripts-")
                && name.ends_with(".html")
                && !out
                    .iter()
                    .any(|p| p.file_name() == Some(f.file_name().as_os_str()))
            {
                std::fs::remove_file(f.path()).map_err(|e| StoreError::Io {
                    path: f.path(),
                    source: e,
                })?;
            }
        }
    }
    Ok(out)
}
