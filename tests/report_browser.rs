//! The report in a real browser: headless Chromium (Debian's, driven by Playwright from
//! `.venv-browser`, both installed by `scripts/setup.sh`) at 1400 px and 400 px. No console
//! error; chart text at least 11 px at desktop width; nothing wider than a phone's viewport
//! except inside a scroll container; every link to a trial list lands on a visible list; a
//! trial's transcript opens; the failures-only filter works; with the transcripts in pages of
//! their own, a trial's link opens its transcript there. Screenshots go to
//! `target/report-browser/`.

mod common;

use pipe::report::{
    ArmInfo, AttemptRow, Cause, ExtractCounts, ReportInput, TaskInfo, Training, TrialRow, render,
};
use serde_json::Value;
use std::path::Path;

fn attempt(step: &str, passed: bool) -> AttemptRow {
    AttemptRow {
        step: step.into(),
        retry: 0,
        prompt: format!("Write the {step} for the task.\n{}", "A line of the prompt.\n".repeat(20)),
        reply: format!(
            "```python\n{}```",
            "def test_something_with_a_rather_long_name_that_does_not_wrap():\n    assert compute(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20) == 210\n"
                .repeat(5)
        ),
        code: "def f():\n    return 1\n".into(),
        passed,
        feedback: if passed {
            String::new()
        } else {
            "FAILED test_x.py::test_pop\nE   NameError: name 'pytest' is not defined".into()
        },
        cause: (!passed).then_some(Cause::NameError),
        finish_reason: Some("stop".into()),
        prompt_tokens: Some(400),
        completion_tokens: Some(200),
        model_ms: 4200,
        guard_ms: 310,
    }
}

/// Six tasks, a base arm, a fine-tuned arm with a long name, and a second baseline: wide
/// tables, three comparisons, every chart drawn.
fn input() -> ReportInput {
    let tasks = common::TASKS;
    let arms = [
        ("base", "baseline"),
        (
            "finetuned-qwen2.5-coder-1.5b-on-its-own-guarded-output",
            "finetuned",
        ),
        ("smaller", "baseline"),
    ];
    let mut trials = Vec::new();
    for (ti, task) in tasks.iter().enumerate() {
        for (ai, (arm, role)) in arms.iter().enumerate() {
            for i in 0..6u32 {
                let passed = !(i as usize + ti + ai).is_multiple_of(3);
                trials.push(TrialRow {
                    id: format!("{task}/{arm}/{i}"),
                    stage: if *role == "baseline" { "trial" } else { "eval" }.into(),
                    task: task.to_string(),
                    arm: arm.to_string(),
                    index: i,
                    passed,
                    failed_step: (!passed).then(|| "impl".into()),
                    tests_attempts: 1,
                    impl_attempts: if passed { 1 + i % 2 } else { 2 },
                    retries_tests: passed.then_some(0),
                    retries_impl: passed.then_some(i % 2),
                    test_strength: passed.then_some(0.6),
                    duration_ms: 5_000 + 700 * i as u64,
                    prompt_tokens: 900,
                    completion_tokens: 400,
                    transcript: blake3::hash(format!("{task}{arm}{i}").as_bytes())
                        .to_hex()
                        .to_string(),
                    cause: (!passed).then_some(Cause::NameError),
                    truncated: 0,
                    attempts: vec![attempt("tests", true), attempt("impl", passed)],
                });
            }
        }
    }
    ReportInput {
        experiment: "browser check".into(),
        tasks: tasks
            .iter()
            .map(|t| TaskInfo {
                id: t.to_string(),
                name: t.to_string(),
                difficulty: "easy".into(),
            })
            .collect(),
        arms: arms
            .iter()
            .map(|(n, r)| ArmInfo {
                name: n.to_string(),
                role: r.to_string(),
                model: format!("model of {n}"),
                rmax: 1,
            })
            .collect(),
        trials,
        extract: Some(
            tasks
                .iter()
                .map(|t| (t.to_string(), ExtractCounts { trials: 6, kept: 3 }))
                .collect(),
        ),
        training: Some(Training {
            loss: (0..30).map(|s| (s, 2.0 / (1.0 + s as f64 * 0.1))).collect(),
            val_loss: (0..3).map(|s| (s * 10, 1.8 / (1.0 + s as f64))).collect(),
            samples: 18,
            val_samples: 2,
            skipped: None,
        }),
        provenance: None,
    }
}

/// The browser check's findings on `input`, rendered; `None` (said on stderr) where this
/// machine has no Chromium or no Playwright venv.
fn check(input: &ReportInput, shots: &str) -> Option<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = root.join(".venv-browser/bin/python");
    let chromium = std::process::Command::new("sh")
        .args(["-c", "command -v chromium"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !py.exists() || !chromium {
        // Only where scripts/setup.sh could not install them: said, not hidden.
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "SKIPPED: the report's browser check needs chromium on PATH and {} (scripts/setup.sh installs both)",
                py.display()
            );
        }
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in render(input).files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let shots = root.join("target/report-browser").join(shots);
    std::fs::create_dir_all(&shots).unwrap();
    let o = std::process::Command::new(&py)
        .arg(root.join("tests/fixtures/check_report_browser.py"))
        .arg(dir.path())
        .arg(&shots)
        .output()
        .unwrap();
    common::assert_ok(&o);
    Some(serde_json::from_slice(&o.stdout).unwrap())
}

#[test]
fn the_report_reads_well_in_a_real_browser() {
    let Some(v) = check(&input(), "inline") else {
        return;
    };
    let desk = &v["widths"]["1400"];
    let phone = &v["widths"]["400"];
    for w in [desk, phone] {
        assert_eq!(w["console_errors"], serde_json::json!([]), "{w}");
    }
    assert!(desk["chart_texts"].as_u64().unwrap() > 50, "{desk}");
    let smallest = desk["smallest_chart_text"][0]["px"].as_f64().unwrap();
    assert!(
        smallest >= 11.0,
        "chart text as small as {smallest:.1} px at 1400 px: {}",
        desk["smallest_chart_text"]
    );
    assert_eq!(
        phone["overflow"]["count"], 0,
        "wider than a 400 px viewport outside a scroll container: {}",
        phone["overflow"]
    );
    let links = desk["links"].as_array().unwrap();
    assert!(
        links.len() >= 6 * 3 + 3,
        "links to every cell and arm: {}",
        links.len()
    );
    for l in links {
        assert!(
            l["found"] == true && l["visible"] == true && l["inView"] == true,
            "a trial-list link that does not land on a visible list: {l}"
        );
    }
    assert_eq!(desk["transcript_opens"], true, "{desk}");
    let f = &desk["filter"];
    assert_eq!(f["passed_visible"], 0, "{f}");
    assert!(f["failed_visible"].as_u64().unwrap() > 0, "{f}");
}

/// Transcripts too large for the page: a trial's link opens its task × arm page at that
/// trial, visible, and its transcript opens there.
#[test]
fn transcripts_in_pages_of_their_own_are_one_click_away() {
    let mut inp = input();
    for t in &mut inp.trials {
        for a in &mut t.attempts {
            a.reply
                .push_str(&"# padding the transcript\n".repeat(2_000));
        }
    }
    let Some(v) = check(&inp, "sibling") else {
        return;
    };
    let desk = &v["widths"]["1400"];
    assert_eq!(desk["console_errors"], serde_json::json!([]), "{desk}");
    let s = &desk["sibling"];
    assert!(
        s["url"].as_str().unwrap().contains("transcripts-"),
        "the link leads to a transcript page: {s}"
    );
    assert!(
        s["found"] == true && s["visible"] == true && s["inView"] == true,
        "{s}"
    );
    assert_eq!(s["opens"], true, "{s}");
}
