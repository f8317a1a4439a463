//! Synthetic run functions: deterministic, cheap stand-ins that read their inputs through the
//! store (verified) and write real objects, so the engine's caching, leasing, crash safety and
//! invalidation are exercised end to end before the real stages exist.
//!
//! Knobs, read from the environment (tests and benchmarks set them):
//! `PIPE_SYNTH_DELAY_MS` (sleep per item), `PIPE_SYNTH_LOG` (append `stage item pid` per
//! computation), `PIPE_SYNTH_FAIL` (fail the item with this id).

use super::trial::TRANSCRIPT;
use super::{to_json, trial_id};
use crate::engine::{Job, Outputs, StageError};
use crate::key::Hash;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write;

fn prologue(job: &Job<'_>, stage: &str) -> Result<(), StageError> {
    if let Ok(path) = std::env::var("PIPE_SYNTH_LOG") {
        let line = format!("{stage} {} {}\n", job.item.id, std::process::id());
        // One write(2) on an O_APPEND file: lines from concurrent processes never interleave.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| StageError::Failed(format!("synthetic log {path}: {e}")))?;
    }
    if let Some(ms) = std::env::var("PIPE_SYNTH_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    if std::env::var("PIPE_SYNTH_FAIL").is_ok_and(|f| f == job.item.id) {
        return Err(StageError::Failed(format!(
            "synthetic failure of {}",
            job.item.id
        )));
    }
    Ok(())
}

fn put(job: &Job<'_>, name: &str, v: &Value, summary: Value) -> Result<Outputs, StageError> {
    let id = job.store.put_json(v)?;
    Ok(Outputs {
        objects: [(name.to_string(), id)].into(),
        summary,
    })
}

/// A synthetic trial's summary.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrialSummary {
    passed: bool,
}

/// A synthetic trial's object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trial {
    item: String,
    ingredients: Value,
    passed: bool,
    retries: u8,
    digest: String,
}

/// A trial (or eval trial): passes or fails as a pure function of its ingredients and inputs.
pub fn trial(job: &Job<'_>) -> Result<Outputs, StageError> {
    prologue(job, "trial")?;
    let inputs: Vec<String> = job.upstream.values().map(|u| u.output.to_hex()).collect();
    let digest = Hash::of(
        format!(
            "{}|{}|{}",
            crate::key::canonical(&job.item.ingredients()),
            crate::key::canonical(job.params),
            inputs.join(",")
        )
        .as_bytes(),
    );
    let passed = !digest.0[0].is_multiple_of(3);
    let out = Trial {
        item: job.item.id.clone(),
        ingredients: job.item.ingredients(),
        passed,
        retries: digest.0[1] % 4,
        digest: digest.to_hex(),
    };
    put(
        job,
        TRANSCRIPT,
        &to_json(&out),
        to_json(&TrialSummary { passed }),
    )
}

/// extract: the passed trials of the arm, read back (and so verified) from the store.
pub fn extract(job: &Job<'_>) -> Result<Outputs, StageError> {
    prologue(job, "extract")?;
    let item: super::extract::Item = job.own()?;
    let mut kept = Vec::new();
    for e in &job.manifest("trial")?.entries {
        let id = trial_id(&e.id)?;
        let s: TrialSummary = crate::engine::summary(e)?;
        if id.arm != item.arm || !s.passed {
            continue;
        }
        let t: Trial = job.object(e, TRANSCRIPT)?;
        kept.push(serde_json::json!({"item": e.id, "digest": t.digest}));
    }
    let n = kept.len();
    put(
        job,
        super::extract::SAMPLES,
        &Value::Array(kept),
        to_json(&super::extract::Summary { samples: n }),
    )
}

/// format / train / convert: one object derived from the outputs of the first input (by name).
pub fn derive(job: &Job<'_>) -> Result<Outputs, StageError> {
    prologue(job, "derive")?;
    let (up_name, _) =
        job.upstream.iter().next().ok_or_else(|| {
            StageError::Failed("a derived synthetic stage needs one input".into())
        })?;
    let m = job.manifest(up_name)?;
    let mut h = blake3::Hasher::new();
    for e in &m.entries {
        for id in e.outputs.values() {
            h.update(&job.store.get(id)?);
        }
    }
    h.update(crate::key::canonical(job.params).as_bytes());
    let out = serde_json::json!({ "from": up_name, "digest": h.finalize().to_hex().to_string() });
    put(job, "artifact", &out, serde_json::json!({}))
}

/// report: pass counts per task and arm over trial and eval, every trial object read back.
pub fn report(job: &Job<'_>) -> Result<Outputs, StageError> {
    prologue(job, "report")?;
    let mut counts: std::collections::BTreeMap<String, (u32, u32)> = Default::default();
    for stage in ["trial", "eval"] {
        if !job.upstream.contains_key(stage) {
            continue;
        }
        for e in &job.manifest(stage)?.entries {
            let t: Trial = job.object(e, TRANSCRIPT)?;
            let id = trial_id(&e.id)?;
            let c = counts.entry(format!("{}/{}", id.task, id.arm)).or_default();
            c.1 += 1;
            if t.passed {
                c.0 += 1;
            }
        }
    }
    let rows: Value = counts
        .iter()
        .map(|(k, (s, n))| (k.clone(), serde_json::json!({"successes": s, "n": n})))
        .collect::<serde_json::Map<_, _>>()
        .into();
    put(job, "report", &rows, serde_json::json!({}))
}
