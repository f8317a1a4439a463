//! The machine-readable files: per-trial `trials.csv` / `trials.jsonl` and per task × arm
//! `summary.csv` / `summary.json`, for pandas or R. Empty cell / `null` for a missing value.

use super::analysis::{Analysis, Cell, r_impl, r_tests};
use serde::Serialize;

/// One trial row, as both the CSV and the JSON Lines file write it.
#[derive(Serialize)]
struct TrialOut<'a> {
    task: &'a str,
    arm: &'a str,
    index: u32,
    stage: &'a str,
    success: bool,
    failed_step: Option<&'a str>,
    tests_attempts: u32,
    impl_attempts: u32,
    retries_tests: Option<u32>,
    retries_impl: Option<u32>,
    test_strength: Option<f64>,
    duration_s: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
    transcript: &'a str,
    id: &'a str,
}

/// Trials in report order: task order, arm order, index, id.
fn trials<'a>(a: &'a Analysis) -> impl Iterator<Item = TrialOut<'a>> {
    a.cells
        .iter()
        .flatten()
        .flat_map(|c| c.trials.iter())
        .map(|t| TrialOut {
            task: &t.task,
            arm: &t.arm,
            index: t.index,
            stage: &t.stage,
            success: t.passed,
            failed_step: t.failed_step.as_deref(),
            tests_attempts: t.tests_attempts,
            impl_attempts: t.impl_attempts,
            // As recorded; a passed trial without it gets attempts − 1 (what every aggregate uses).
            retries_tests: t.retries_tests.or(t.passed.then(|| r_tests(t))),
            retries_impl: t.retries_impl.or(t.passed.then(|| r_impl(t))),
            test_strength: t.test_strength.filter(|s| s.is_finite()),
            duration_s: t.duration_ms as f64 / 1000.0,
            prompt_tokens: t.prompt_tokens,
            completion_tokens: t.completion_tokens,
            transcript: &t.transcript,
            id: &t.id,
        })
}

fn csv_bytes<T: Serialize>(rows: impl Iterator<Item = T>, header: &[&str]) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    // The header is written explicitly so an empty table still has one.
    let _ = w.write_record(header);
    for r in rows {
        // Serialising plain structs into a Vec cannot fail.
        let _ = w.serialize(r);
    }
    w.into_inner().unwrap_or_default()
}

const TRIAL_HEADER: [&str; 16] = [
    "task",
    "arm",
    "index",
    "stage",
    "success",
    "failed_step",
    "tests_attempts",
    "impl_attempts",
    "retries_tests",
    "retries_impl",
    "test_strength",
    "duration_s",
    "prompt_tokens",
    "completion_tokens",
    "transcript",
    "id",
];

pub fn trials_csv(a: &Analysis) -> Vec<u8> {
    csv_bytes(trials(a), &TRIAL_HEADER)
}

pub fn trials_jsonl(a: &Analysis) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.input.trials.len() * 320);
    for t in trials(a) {
        if serde_json::to_writer(&mut out, &t).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// One summary row: a task × arm cell, or an arm pooled over tasks (`task = "overall"`).
#[derive(Serialize)]
struct SummaryOut<'a> {
    task: &'a str,
    arm: &'a str,
    role: &'a str,
    n: u64,
    successes: u64,
    rate: Option<f64>,
    wilson_lo: Option<f64>,
    wilson_hi: Option<f64>,
    mean_retries: Option<f64>,
    mean_retries_tests: Option<f64>,
    mean_retries_impl: Option<f64>,
    median_duration_s: Option<f64>,
    q25_duration_s: Option<f64>,
    q75_duration_s: Option<f64>,
    mean_duration_s: Option<f64>,
    mean_prompt_tokens: Option<f64>,
    mean_completion_tokens: Option<f64>,
    mean_test_strength: Option<f64>,
    test_strength_n: u64,
}

const SUMMARY_HEADER: [&str; 19] = [
    "task",
    "arm",
    "role",
    "n",
    "successes",
    "rate",
    "wilson_lo",
    "wilson_hi",
    "mean_retries",
    "mean_retries_tests",
    "mean_retries_impl",
    "median_duration_s",
    "q25_duration_s",
    "q75_duration_s",
    "mean_duration_s",
    "mean_prompt_tokens",
    "mean_completion_tokens",
    "mean_test_strength",
    "test_strength_n",
];

fn summary_row<'a>(task: &'a str, arm: &'a str, role: &'a str, c: &Cell) -> SummaryOut<'a> {
    let d = c.durations;
    SummaryOut {
        task,
        arm,
        role,
        n: c.n,
        successes: c.successes,
        rate: c.rate,
        wilson_lo: c.rate.map(|_| c.ci.0),
        wilson_hi: c.rate.map(|_| c.ci.1),
        mean_retries: c.mean_retries,
        mean_retries_tests: c.mean_r_tests,
        mean_retries_impl: c.mean_r_impl,
        median_duration_s: d.map(|d| d.median),
        q25_duration_s: d.map(|d| d.q25),
        q75_duration_s: d.map(|d| d.q75),
        mean_duration_s: d.map(|d| d.mean),
        mean_prompt_tokens: c.mean_prompt,
        mean_completion_tokens: c.mean_completion,
        mean_test_strength: c.strength,
        test_strength_n: c.strength_n,
    }
}

fn summary_rows<'a>(a: &'a Analysis) -> Vec<SummaryOut<'a>> {
    let mut rows = Vec::new();
    for (ti, task) in a.tasks.iter().enumerate() {
        for (ai, arm) in a.arms.iter().enumerate() {
            rows.push(summary_row(
                &task.id,
                &arm.name,
                &arm.role,
                &a.cells[ti][ai],
            ));
        }
    }
    for (ai, arm) in a.arms.iter().enumerate() {
        rows.push(summary_row("overall", &arm.name, &arm.role, &a.overall[ai]));
    }
    rows
}

pub fn summary_csv(a: &Analysis) -> Vec<u8> {
    csv_bytes(summary_rows(a).into_iter(), &SUMMARY_HEADER)
}

/// One comparison row of `summary.json`.
#[derive(Serialize)]
struct TestOut<'a> {
    task: &'a str,
    earlier: &'a str,
    later: &'a str,
    successes_earlier: u64,
    n_earlier: u64,
    successes_later: u64,
    n_later: u64,
    delta_points: Option<f64>,
    fisher_p: Option<f64>,
    stars: Option<&'static str>,
    cohens_h: Option<f64>,
    h_label: Option<&'static str>,
    n_per_arm_for_power: Option<u64>,
}

pub fn summary_json(a: &Analysis) -> Vec<u8> {
    let mut tests = Vec::new();
    for c in &a.comparisons {
        let (e, l) = (&a.arms[c.earlier].name, &a.arms[c.later].name);
        let ids = a.tasks.iter().map(|t| t.id.as_str()).chain(["overall"]);
        for (task, t) in ids.zip(c.tasks.iter().chain([&c.overall])) {
            tests.push(TestOut {
                task,
                earlier: e,
                later: l,
                successes_earlier: t.a.0,
                n_earlier: t.a.1,
                successes_later: t.b.0,
                n_later: t.b.1,
                delta_points: t.delta,
                fisher_p: t.p,
                stars: t.p.map(crate::stats::stars),
                cohens_h: t.h,
                h_label: t.h.map(crate::stats::h_label),
                n_per_arm_for_power: t.n_needed,
            });
        }
    }
    let doc = serde_json::json!({
        "experiment": a.input.experiment,
        "confidence": super::analysis::CONFIDENCE,
        "rows": summary_rows(a),
        "comparisons": tests,
        "cannot_conclude": a.statements,
    });
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}
