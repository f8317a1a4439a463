//! The machine-readable files: per-trial `trials.csv` / `trials.jsonl` and per task × arm
//! `summary.csv` / `summary.json`, for pandas or R. Empty cell / `null` for a missing value.

use super::Cause;
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
    cause: Option<&'static str>,
    tests_attempts: u32,
    impl_attempts: u32,
    truncated_attempts: u32,
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
            cause: t.cause.map(Cause::key),
            tests_attempts: t.tests_attempts,
            impl_attempts: t.impl_attempts,
            truncated_attempts: t.truncated,
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

const TRIAL_HEADER: [&str; 18] = [
    "task",
    "arm",
    "index",
    "stage",
    "success",
    "failed_step",
    "cause",
    "tests_attempts",
    "impl_attempts",
    "truncated_attempts",
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
    attempts: u64,
    truncated_attempts: u64,
    failed_at_tests: u64,
    failed_at_impl: u64,
    failed_at_mutation: u64,
    cause_assertion: u64,
    cause_collection: u64,
    cause_crashed: u64,
    cause_exception: u64,
    cause_fixture: u64,
    cause_name_error: u64,
    cause_no_tests: u64,
    cause_syntax: u64,
    cause_tampered: u64,
    cause_timeout: u64,
    cause_truncated: u64,
    cause_unknown: u64,
    cause_weak_tests: u64,
}

/// `x` rounded to `digits` decimals: the CSV and JSON then print `137.2795`, not the binary
/// noise of a mean (`137.27949999999998`); every figure keeps more digits than it means.
fn round(x: Option<f64>, digits: i32) -> Option<f64> {
    let f = 10f64.powi(digits);
    x.map(|x| {
        if x.is_finite() {
            (x * f).round() / f
        } else {
            x
        }
    })
}

const SUMMARY_HEADER: [&str; 37] = [
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
    "attempts",
    "truncated_attempts",
    "failed_at_tests",
    "failed_at_impl",
    "failed_at_mutation",
    "cause_assertion",
    "cause_collection",
    "cause_crashed",
    "cause_exception",
    "cause_fixture",
    "cause_name_error",
    "cause_no_tests",
    "cause_syntax",
    "cause_tampered",
    "cause_timeout",
    "cause_truncated",
    "cause_unknown",
    "cause_weak_tests",
];

fn summary_row<'a>(task: &'a str, arm: &'a str, role: &'a str, c: &Cell) -> SummaryOut<'a> {
    let d = c.durations;
    SummaryOut {
        task,
        arm,
        role,
        n: c.n,
        successes: c.successes,
        rate: round(c.rate, 6),
        wilson_lo: round(c.rate.map(|_| c.ci.0), 6),
        wilson_hi: round(c.rate.map(|_| c.ci.1), 6),
        mean_retries: round(c.mean_retries, 4),
        mean_retries_tests: round(c.mean_r_tests, 4),
        mean_retries_impl: round(c.mean_r_impl, 4),
        median_duration_s: round(d.map(|d| d.median), 3),
        q25_duration_s: round(d.map(|d| d.q25), 3),
        q75_duration_s: round(d.map(|d| d.q75), 3),
        mean_duration_s: round(d.map(|d| d.mean), 3),
        mean_prompt_tokens: round(c.mean_prompt, 2),
        mean_completion_tokens: round(c.mean_completion, 2),
        mean_test_strength: round(c.strength, 4),
        test_strength_n: c.strength_n,
        attempts: c.attempts,
        truncated_attempts: c.truncated,
        failed_at_tests: c.failed_at("tests"),
        failed_at_impl: c.failed_at("impl"),
        failed_at_mutation: c.failed_at("mutation"),
        cause_assertion: c.failed_with(Some(Cause::Assertion)),
        cause_collection: c.failed_with(Some(Cause::Collection)),
        cause_crashed: c.failed_with(Some(Cause::Crashed)),
        cause_exception: c.failed_with(Some(Cause::Exception)),
        cause_fixture: c.failed_with(Some(Cause::Fixture)),
        cause_name_error: c.failed_with(Some(Cause::NameError)),
        cause_no_tests: c.failed_with(Some(Cause::NoTests)),
        cause_syntax: c.failed_with(Some(Cause::Syntax)),
        cause_tampered: c.failed_with(Some(Cause::Tampered)),
        cause_timeout: c.failed_with(Some(Cause::Timeout)),
        cause_truncated: c.failed_with(Some(Cause::Truncated)),
        cause_unknown: c.failed_with(None),
        cause_weak_tests: c.failed_with(Some(Cause::WeakTests)),
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
    /// The experiment's primary test (base → fine-tuned, overall).
    primary: bool,
    /// Holm-adjusted p over the exploratory tests.
    holm_p: Option<f64>,
}

pub fn summary_json(a: &Analysis) -> Vec<u8> {
    let mut tests = Vec::new();
    let mut cmh = Vec::new();
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
                primary: c.primary && task == "overall",
                holm_p: t.p_holm,
            });
        }
        if let Some(m) = &c.cmh {
            cmh.push(serde_json::json!({
                "earlier": e, "later": l, "chi2": m.chi2, "p": m.p,
                "odds_ratio": m.odds_ratio.is_finite().then_some(m.odds_ratio),
            }));
        }
    }
    let doc = serde_json::json!({
        "experiment": a.input.experiment,
        "confidence": super::analysis::CONFIDENCE,
        "rows": summary_rows(a),
        "comparisons": tests,
        "stratified_by_task": cmh,
        "cannot_conclude": a.statements,
    });
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}
