//! The `report` stage: gathers every trial's summary (from the stage manifests — no transcript
//! is opened, so 10,000 trials cost milliseconds), the extracted sample counts and, once it
//! exists, the training curve, and renders them ([`crate::report`]) into files stored as
//! objects. [`export`] then copies them into `reports/`, so the directory always shows the
//! current build, even when nothing had to be recomputed.

use crate::config::{Loaded, Role};
use crate::engine::{Job, Outputs, StageError};
use crate::report::{ArmInfo, ExtractCounts, ReportInput, TaskInfo, TrialRow};
use crate::store::{Store, StoreError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A trial row from a manifest entry of `stage`.
fn row(stage: &str, id: &str, transcript: &str, s: &Value) -> TrialRow {
    let mut parts = id.splitn(3, '/');
    let task = parts.next().unwrap_or_default().to_string();
    let arm = parts.next().unwrap_or_default().to_string();
    let index = parts.next().and_then(|i| i.parse().ok()).unwrap_or(0);
    let u32_of = |v: &Value| v.as_u64().map(|n| n as u32);
    TrialRow {
        id: id.to_string(),
        stage: stage.to_string(),
        task,
        arm,
        index,
        passed: s["passed"] == true,
        failed_step: s["failed_step"].as_str().map(str::to_string),
        tests_attempts: u32_of(&s["attempts"]["tests"]).unwrap_or(0),
        impl_attempts: u32_of(&s["attempts"]["impl"]).unwrap_or(0),
        retries_tests: u32_of(&s["retries"]["tests"]),
        retries_impl: u32_of(&s["retries"]["impl"]),
        test_strength: s["test_strength"].as_f64(),
        duration_ms: s["duration_ms"].as_u64().unwrap_or(0),
        prompt_tokens: s["tokens"]["prompt"].as_u64().unwrap_or(0),
        completion_tokens: s["tokens"]["completion"].as_u64().unwrap_or(0),
        transcript: transcript.to_string(),
    }
}

/// The trial rows of a `trial` or `eval` manifest: summaries only, no transcript is read.
pub fn rows(stage: &str, m: &crate::store::Manifest) -> Vec<TrialRow> {
    m.entries
        .iter()
        .map(|e| {
            let transcript = e
                .outputs
                .get("trial")
                .map(|h| h.to_hex())
                .unwrap_or_default();
            row(stage, &e.id, &transcript, &e.summary)
        })
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
        for e in &job.manifest(stage)?.entries {
            let transcript = e
                .outputs
                .get("trial")
                .map(|h| h.to_hex())
                .unwrap_or_default();
            trials.push(row(stage, &e.id, &transcript, &e.summary));
        }
    }
    let extract = if job.upstream.contains_key("extract") {
        let mut counts: BTreeMap<String, ExtractCounts> = BTreeMap::new();
        for e in &job.manifest("extract")?.entries {
            let Some(id) = e.outputs.get("samples") else {
                continue;
            };
            let v = job.store.get_json(id)?;
            if let Some(per_task) = v["counts"].as_object() {
                for (task, c) in per_task {
                    let x = counts
                        .entry(task.clone())
                        .or_insert(ExtractCounts { trials: 0, kept: 0 });
                    x.trials += c["trials"].as_u64().unwrap_or(0) as u32;
                    x.kept += c["kept"].as_u64().unwrap_or(0) as u32;
                }
            }
        }
        Some(counts)
    } else {
        None
    };
    Ok(ReportInput {
        experiment: l.config.experiment.name.clone(),
        tasks,
        arms,
        trials,
        extract,
        training: None,
    })
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
    Ok(Outputs {
        objects,
        summary: json!({ "trials": input.trials.len(), "passed": passed }),
    })
}

/// Copy the current report's files from the store into the reports directory (each written
/// to a temporary name and renamed, so a reader never sees half a file). Returns the paths;
/// none when the report was never built.
pub fn export(store: &Store, loaded: &Loaded) -> Result<Vec<PathBuf>, StoreError> {
    let Some(r) = store.get_ref("report")? else {
        return Ok(Vec::new());
    };
    let m = store.manifest(&r.manifest)?;
    let dir = loaded.report_dir();
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| StoreError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut out = Vec::new();
    for e in &m.entries {
        for (name, id) in &e.outputs {
            let bytes = store.get(id)?;
            let dest = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
            std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
            out.push(dest);
        }
    }
    Ok(out)
}
