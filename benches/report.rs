//! How long the report takes at scale: 10,000 synthetic trials over 6 tasks × 3 arms (two
//! baselines and a fine-tuned arm, so three comparisons), each with a transcript of realistic
//! size (prompts, replies, code, feedback), rendered 5 times; prints the median and every file's
//! size (at this scale the transcripts leave `report.html` for `transcripts.html`).
//!
//!     cargo bench --bench report
//!     PIPE_BENCH_TRIALS=50000 cargo bench --bench report

#![allow(clippy::print_stdout)]

#[path = "util/mod.rs"]
mod util;
use util::env_or;

use pipe::report::{
    ArmInfo, AttemptRow, Cause, ExtractCounts, ReportInput, TaskInfo, Training, TrialRow, render,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Text of about `bytes` bytes, in lines like code.
fn filler(rng: &mut Rng, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 64);
    while s.len() < bytes {
        s.push_str(&format!(
            "    value_{} = compute({}, {})\n",
            rng.next() % 97,
            rng.next() % 1000,
            rng.next() % 7
        ));
    }
    s
}

/// A trial's attempts with sizes as measured on real transcripts of Qwen2.5-Coder-1.5B:
/// prompts ≈ 1.5 KB (tests) and 3 KB (implementation, with the tests), replies ≈ 1.2 KB, code
/// ≈ 1 KB, feedback ≈ 0.6 KB on a failure.
fn attempts(rng: &mut Rng, tests: u32, impls: u32, passed: bool) -> Vec<AttemptRow> {
    let mut out = Vec::new();
    for (step, n, prompt) in [("tests", tests, 1500), ("impl", impls, 3000)] {
        for r in 0..n {
            let ok = r + 1 == n && (passed || step == "tests");
            out.push(AttemptRow {
                step: step.into(),
                retry: r,
                prompt: filler(rng, prompt),
                reply: filler(rng, 1200),
                code: filler(rng, 1000),
                passed: ok,
                feedback: if ok { String::new() } else { filler(rng, 600) },
                cause: (!ok).then_some(Cause::Assertion),
                finish_reason: Some("stop".into()),
                prompt_tokens: Some(700),
                completion_tokens: Some(300),
                model_ms: 4000,
                guard_ms: 300,
            });
        }
    }
    out
}

/// A small deterministic generator (xorshift), so every run renders the same input.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn input(total: usize) -> ReportInput {
    let tasks = [
        ("stack", "Stack", "easy", 0.94),
        ("queue", "Queue", "easy", 0.98),
        ("calculator", "Calculator", "easy", 0.78),
        ("lru_cache", "LRU cache", "medium", 0.50),
        ("template", "Template", "hard", 0.20),
        ("password", "Password", "hard", 0.02),
    ];
    let arms = [
        ("q14", "baseline", 0.08),
        ("base", "baseline", 0.0),
        ("finetuned", "finetuned", 0.06),
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let per_cell = total.div_ceil(tasks.len() * arms.len());
    let mut trials = Vec::with_capacity(total);
    'all: for (a, role, gain) in arms {
        for (t, _, _, p) in tasks {
            for i in 0..per_cell as u32 {
                if trials.len() == total {
                    break 'all;
                }
                let passed = rng.unit() < f64::min(p + gain, 1.0);
                let rt = (rng.next() % 4) as u32;
                let ri = (rng.next() % 4) as u32;
                trials.push(TrialRow {
                    id: format!("{t}/{a}/{i}"),
                    stage: if role == "baseline" { "trial" } else { "eval" }.into(),
                    task: t.into(),
                    arm: a.into(),
                    index: i,
                    passed,
                    failed_step: (!passed).then(|| ["tests", "impl"][i as usize % 2].to_string()),
                    tests_attempts: rt + 1,
                    impl_attempts: if passed { ri + 1 } else { 4 },
                    retries_tests: passed.then_some(rt),
                    retries_impl: passed.then_some(ri),
                    test_strength: passed.then(|| rng.unit()),
                    duration_ms: 3_000 + rng.next() % 30_000,
                    prompt_tokens: 800 + rng.next() % 2_000,
                    completion_tokens: 200 + rng.next() % 800,
                    transcript: blake3::hash(&i.to_le_bytes()).to_hex().to_string(),
                    cause: (!passed).then_some(Cause::Assertion),
                    truncated: 0,
                    attempts: attempts(&mut rng, rt + 1, if passed { ri + 1 } else { 4 }, passed),
                });
            }
        }
    }
    ReportInput {
        experiment: "bench".into(),
        tasks: tasks
            .iter()
            .map(|(id, name, d, _)| TaskInfo {
                id: id.to_string(),
                name: name.to_string(),
                difficulty: d.to_string(),
            })
            .collect(),
        arms: arms
            .iter()
            .map(|(n, r, _)| ArmInfo {
                name: n.to_string(),
                role: r.to_string(),
                model: format!("model {n}"),
                rmax: 3,
            })
            .collect(),
        trials,
        extract: Some(
            tasks
                .iter()
                .enumerate()
                .map(|(k, (id, ..))| {
                    (
                        id.to_string(),
                        ExtractCounts {
                            trials: per_cell as u32,
                            kept: (per_cell as u32 / 3) * (k as u32 % 5),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        ),
        training: Some(Training {
            loss: (0..500)
                .map(|s| (s, 2.0 / (1.0 + s as f64 * 0.05)))
                .collect(),
            val_loss: (0..10).map(|s| (s * 50, 1.8 / (1.0 + s as f64))).collect(),
            samples: 40,
            val_samples: 4,
            skipped: None,
        }),
        provenance: None,
    }
}

fn main() {
    let total: usize = env_or("PIPE_BENCH_TRIALS", 10_000);
    let inp = input(total);
    let mut times: Vec<Duration> = Vec::new();
    let mut out = None;
    for _ in 0..5 {
        let t0 = Instant::now();
        let r = render(&inp);
        times.push(t0.elapsed());
        if let Some(prev) = &out {
            assert_eq!(prev, &r, "render is not deterministic");
        }
        out = Some(r);
    }
    times.sort();
    let out = out.unwrap_or_else(|| render(&inp));
    println!(
        "report render: {} trials, 6 tasks × 3 arms: median {:.1} ms (min {:.1}, max {:.1}) over 5 runs",
        inp.trials.len(),
        times[2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[4].as_secs_f64() * 1e3
    );
    let mut total_bytes = 0;
    for (name, bytes) in &out.files {
        total_bytes += bytes.len();
        println!("  {name:<14} {:>10} bytes", bytes.len());
    }
    println!("  {:<14} {total_bytes:>10} bytes", "total");
    stage_path(&inp);
}

/// The report stage's whole path on a store: the trial and eval manifests (real summary
/// shape) read back verified, turned into rows, rendered, and the files written as objects.
fn stage_path(inp: &ReportInput) {
    use pipe::store::{Manifest, ManifestEntry, Store, StoreOptions};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            lease_ttl: Duration::from_secs(30),
            fsync: false,
            ..Default::default()
        },
    )
    .unwrap();
    let mut ids = Vec::new();
    for stage in ["trial", "eval"] {
        let entries = inp
            .trials
            .iter()
            .filter(|t| t.stage == stage)
            .map(|t| {
                let transcript = store.put(&serde_json::to_vec(&record(t)).unwrap()).unwrap();
                ManifestEntry {
                    id: t.id.clone(),
                    key: pipe::key::Hash::of(t.id.as_bytes()),
                    outputs: [("trial".to_string(), transcript)].into(),
                    summary: json!({
                        "passed": t.passed, "failed_step": t.failed_step,
                        "retries": {"tests": t.retries_tests, "impl": t.retries_impl},
                        "attempts": {"tests": t.tests_attempts, "impl": t.impl_attempts},
                        "test_strength": t.test_strength, "duration_ms": t.duration_ms,
                        "tokens": {"prompt": t.prompt_tokens, "completion": t.completion_tokens},
                    }),
                }
            })
            .collect();
        ids.push((stage, store.put(&Manifest { entries }.encode()).unwrap()));
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let mut rows = Vec::new();
        for (stage, id) in &ids {
            let m = store.manifest(id).unwrap();
            rows.extend(
                pipe::stages::report::rows_with_transcripts(&store, stage, &m)
                    .unwrap()
                    .into_iter()
                    .map(|(r, _)| r),
            );
        }
        let mut input = inp.clone();
        input.trials = rows;
        for (_, bytes) in render(&input).files {
            store.put(&bytes).unwrap();
        }
        times.push(t0.elapsed());
    }
    times.sort();
    println!(
        "report stage path (manifests and every transcript read and verified → rows → render → objects written): median {:.1} ms over 5 runs",
        times[2].as_secs_f64() * 1e3
    );
}

/// The transcript a trial row stands for, in the trial stage's own record type.
fn record(t: &TrialRow) -> pipe::workflow::TrialRecord {
    use pipe::workflow::{Attempt, Retries, Step, TrialRecord, extract::Shape};
    TrialRecord {
        task: t.task.clone(),
        arm: t.arm.clone(),
        index: t.index,
        seed: 0,
        system: "You are a careful Python developer.".into(),
        passed: t.passed,
        failed_step: t.failed_step.as_deref().map(|s| {
            if s == "tests" {
                Step::Tests
            } else {
                Step::Impl
            }
        }),
        attempts: t
            .attempts
            .iter()
            .map(|a| Attempt {
                step: if a.step == "tests" {
                    Step::Tests
                } else {
                    Step::Impl
                },
                retry: a.retry,
                prompt: a.prompt.clone(),
                seed: 0,
                reply: a.reply.clone(),
                finish_reason: a.finish_reason.clone(),
                code: a.code.clone(),
                shape: Shape::PythonBlock,
                passed: a.passed,
                feedback: a.feedback.clone(),
                verdict: serde_json::Value::Null,
                prompt_tokens: a.prompt_tokens,
                completion_tokens: a.completion_tokens,
                model_ms: a.model_ms,
                guard_ms: a.guard_ms,
                retried_requests: 0,
            })
            .collect(),
        tests: None,
        implementation: None,
        retries: Retries {
            tests: t.retries_tests,
            impl_: t.retries_impl,
        },
        test_strength: None,
        duration_ms: t.duration_ms,
        prompt_tokens: t.prompt_tokens,
        completion_tokens: t.completion_tokens,
    }
}
