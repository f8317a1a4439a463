//! The `extract` stage: from an arm's trials, the training samples — the test-writing replies
//! that the syntax guard accepted at the *first* attempt and that an implementation then
//! passed (the seed plan's filter: the tests were good enough to be built against).
//! Deduplicated by a normalised hash of the test code, with counts per task of what was kept
//! and what was dropped, and why.

use crate::engine::{Job, Outputs, StageError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// One training sample: exactly what the model saw and said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The trial it came from (`stack/base/3`).
    pub trial: String,
    /// Its task.
    pub task: String,
    /// The system turn, as sent.
    pub system: String,
    /// The user turn, as sent.
    pub prompt: String,
    /// The raw reply, as received (the assistant turn).
    pub reply: String,
    /// The normalised hash of its test code (the deduplication key).
    pub tests_hash: String,
}

/// Per task: trials seen, samples kept, and trials dropped by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Trials of the arm for this task.
    pub trials: u32,
    /// Samples kept.
    pub kept: u32,
    /// Dropped: the tests needed a retry.
    pub tests_retried: u32,
    /// Dropped: no tests were ever accepted.
    pub tests_failed: u32,
    /// Dropped: no implementation passed the tests.
    pub impl_failed: u32,
    /// Dropped: the same tests (after normalisation) as a sample already kept.
    pub duplicate: u32,
}

/// What `extract` produces.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extracted {
    /// The arm the samples come from.
    pub arm: String,
    /// The samples, in trial order.
    pub samples: Vec<Sample>,
    /// Counts per task.
    pub counts: BTreeMap<String, Counts>,
}

/// Test code with comments, blank lines and trailing spaces removed: two replies that differ
/// only there teach the model the same thing.
pub fn normalise(code: &str) -> String {
    let mut out = String::new();
    for line in code.lines() {
        let line = strip_comment(line).trim_end();
        if line.trim().is_empty() {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A line without its `#` comment; a `#` inside a string literal is not a comment. (Triple-
/// quoted strings spanning lines are rare in tests and only make dedup more conservative.)
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => quote = Some(c),
                '#' => return &line[..i],
                _ => {}
            },
        }
    }
    line
}

/// Select the samples from `(trial id, transcript)` pairs of one arm, in the order given.
pub fn select(arm: &str, trials: &[(String, Value)]) -> Extracted {
    let mut ex = Extracted {
        arm: arm.to_string(),
        ..Default::default()
    };
    let mut seen = BTreeSet::new();
    for (id, t) in trials {
        let task = t["task"].as_str().unwrap_or_default().to_string();
        let c = ex.counts.entry(task.clone()).or_default();
        c.trials += 1;
        let attempts = t["attempts"].as_array().cloned().unwrap_or_default();
        let Some(accepted) = attempts
            .iter()
            .find(|a| a["step"] == "tests" && a["passed"] == true)
        else {
            c.tests_failed += 1;
            continue;
        };
        if accepted["retry"] != 0 {
            c.tests_retried += 1;
            continue;
        }
        if t["implementation"].is_null() {
            c.impl_failed += 1;
            continue;
        }
        let code = accepted["code"].as_str().unwrap_or_default();
        let h = blake3::hash(normalise(code).as_bytes())
            .to_hex()
            .to_string();
        if !seen.insert(h.clone()) {
            c.duplicate += 1;
            continue;
        }
        c.kept += 1;
        ex.samples.push(Sample {
            trial: id.clone(),
            task,
            system: t["system"].as_str().unwrap_or_default().to_string(),
            prompt: accepted["prompt"].as_str().unwrap_or_default().to_string(),
            reply: accepted["reply"].as_str().unwrap_or_default().to_string(),
            tests_hash: h,
        });
    }
    ex
}

/// The stage's run function: one item per source arm.
pub fn run(job: &Job<'_>) -> Result<Outputs, StageError> {
    let arm = job.item.ingredients()["arm"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut trials = Vec::new();
    for e in &job.manifest("trial")?.entries {
        if e.id.split('/').nth(1) != Some(arm.as_str()) {
            continue;
        }
        let id = e.outputs.get("trial").ok_or_else(|| {
            StageError::Failed(format!("trial {} has no transcript object", e.id))
        })?;
        trials.push((e.id.clone(), job.store.get_json(id)?));
    }
    let ex = select(&arm, &trials);
    let v = serde_json::to_value(&ex).expect("serialises");
    let id = job.store.put_json(&v)?;
    Ok(Outputs {
        objects: [("samples".to_string(), id)].into(),
        summary: json!({ "samples": ex.samples.len() }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(step: &str, retry: u32, passed: bool, code: &str) -> Value {
        json!({"step": step, "retry": retry, "passed": passed, "code": code,
               "prompt": format!("prompt {step} {retry}"), "reply": format!("```python\n{code}```")})
    }

    fn trial(task: &str, attempts: Vec<Value>, implementation: Option<&str>) -> Value {
        json!({"task": task, "system": "sys", "attempts": attempts, "implementation": implementation})
    }

    #[test]
    fn keeps_exactly_first_attempt_tests_with_a_passing_implementation() {
        let good = "def test_a():\n    assert f() == 1\n";
        let same_modulo_comments = "# tests\ndef test_a():  # the one\n\n    assert f() == 1   \n";
        let other = "def test_b():\n    assert f('#') == 2\n";
        let trials = vec![
            // kept
            (
                "stack/base/0".to_string(),
                trial(
                    "stack",
                    vec![
                        attempt("tests", 0, true, good),
                        attempt("impl", 0, true, "x"),
                    ],
                    Some("x"),
                ),
            ),
            // tests needed a retry
            (
                "stack/base/1".to_string(),
                trial(
                    "stack",
                    vec![
                        attempt("tests", 0, false, "def ("),
                        attempt("tests", 1, true, other),
                        attempt("impl", 0, true, "x"),
                    ],
                    Some("x"),
                ),
            ),
            // no implementation passed
            (
                "stack/base/2".to_string(),
                trial(
                    "stack",
                    vec![
                        attempt("tests", 0, true, other),
                        attempt("impl", 0, false, "y"),
                    ],
                    None,
                ),
            ),
            // no tests accepted
            (
                "queue/base/0".to_string(),
                trial("queue", vec![attempt("tests", 0, false, "?")], None),
            ),
            // duplicate of stack/base/0 once comments and blank lines go
            (
                "stack/base/3".to_string(),
                trial(
                    "stack",
                    vec![
                        attempt("tests", 0, true, same_modulo_comments),
                        attempt("impl", 1, true, "x"),
                    ],
                    Some("x"),
                ),
            ),
            // kept: a '#' inside a string is not a comment
            (
                "stack/base/4".to_string(),
                trial(
                    "stack",
                    vec![
                        attempt("tests", 0, true, other),
                        attempt("impl", 0, true, "x"),
                    ],
                    Some("x"),
                ),
            ),
        ];
        let ex = select("base", &trials);
        let kept: Vec<&str> = ex.samples.iter().map(|s| s.trial.as_str()).collect();
        assert_eq!(kept, ["stack/base/0", "stack/base/4"]);
        let s = &ex.counts["stack"];
        assert_eq!(
            (
                s.trials,
                s.kept,
                s.tests_retried,
                s.impl_failed,
                s.duplicate
            ),
            (5, 2, 1, 1, 1)
        );
        assert_eq!(ex.counts["queue"].tests_failed, 1);
        assert_eq!(ex.samples[0].prompt, "prompt tests 0");
        assert_eq!(ex.samples[0].reply, format!("```python\n{good}```"));
        assert_eq!(ex.samples[0].system, "sys");
    }

    #[test]
    fn normalisation_keeps_code_and_strings() {
        assert_eq!(
            normalise("x = '#a'  # c\n\n# only\ny = 1\n"),
            "x = '#a'\ny = 1\n"
        );
    }
}
