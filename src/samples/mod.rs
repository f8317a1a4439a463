//! Training data from trials: which test-writing replies become samples ([`select`]), and the
//! chat JSONL they are written as ([`jsonl`]).
//!
//! The filter is the seed plan's: a trial whose tests the syntax guard accepted at the *first*
//! attempt and whose workflow then **passed** — the verdict, not the shape: with the mutation
//! guard on, a trial whose tests it rejected is no sample even though an implementation passed
//! them. Deduplicated by a normalised hash of the test code, with counts per task of what was
//! kept and what was dropped, and why.
//!
//! Depends on [`crate::workflow`]'s record types only: no store, no stage.

pub mod jsonl;

use crate::workflow::{Step, TrialId, TrialRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One training sample: exactly what the model saw and said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// The trial it came from (`stack/base/3`).
    pub trial: TrialId,
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
#[serde(deny_unknown_fields)]
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
    /// Dropped: an implementation passed, but the mutation guard found the tests too weak.
    pub mutation_failed: u32,
    /// Dropped: the same tests (after normalisation) as a sample already kept.
    pub duplicate: u32,
}

/// What `extract` produces for one arm.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// Select the samples of one arm's trials, in the order given.
pub fn select(arm: &str, trials: &[(TrialId, TrialRecord)]) -> Extracted {
    let mut ex = Extracted {
        arm: arm.to_string(),
        ..Default::default()
    };
    let mut seen = BTreeSet::new();
    for (id, t) in trials {
        let c = ex.counts.entry(t.task.clone()).or_default();
        c.trials += 1;
        let Some(accepted) = t
            .attempts
            .iter()
            .find(|a| a.step == Step::Tests && a.passed)
        else {
            c.tests_failed += 1;
            continue;
        };
        if accepted.retry != 0 {
            c.tests_retried += 1;
            continue;
        }
        if !t.passed {
            match t.failed_step {
                Some(Step::Mutation) => c.mutation_failed += 1,
                _ => c.impl_failed += 1,
            }
            continue;
        }
        let h = blake3::hash(normalise(&accepted.code).as_bytes())
            .to_hex()
            .to_string();
        if !seen.insert(h.clone()) {
            c.duplicate += 1;
            continue;
        }
        c.kept += 1;
        ex.samples.push(Sample {
            trial: id.clone(),
            task: t.task.clone(),
            system: t.system.clone(),
            prompt: accepted.prompt.clone(),
            reply: accepted.reply.clone(),
            tests_hash: h,
        });
    }
    ex
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::extract::Shape;
    use crate::workflow::{Attempt, Retries};

    fn attempt(step: Step, retry: u32, passed: bool, code: &str) -> Attempt {
        Attempt {
            step,
            retry,
            prompt: format!(
                "prompt {} {retry}",
                if step == Step::Tests { "tests" } else { "impl" }
            ),
            seed: 0,
            reply: format!("```python\n{code}```"),
            finish_reason: Some("stop".into()),
            code: code.into(),
            shape: Shape::PythonBlock,
            passed,
            feedback: String::new(),
            verdict: serde_json::Value::Null,
            prompt_tokens: None,
            completion_tokens: None,
            model_ms: 0,
            guard_ms: 0,
            retried_requests: 0,
        }
    }

    /// A trial as the workflow records it: passed when an implementation passed and the
    /// mutation guard (when `weak`) did not reject the tests.
    fn trial(task: &str, attempts: Vec<Attempt>, implementation: Option<&str>) -> TrialRecord {
        let passed = implementation.is_some();
        TrialRecord {
            task: task.into(),
            arm: "base".into(),
            index: 0,
            seed: 0,
            system: "sys".into(),
            passed,
            failed_step: match (attempts.iter().any(|a| a.step == Step::Impl), passed) {
                (_, true) => None,
                (true, false) => Some(Step::Impl),
                (false, false) => Some(Step::Tests),
            },
            tests: None,
            implementation: implementation.map(str::to_string),
            retries: Retries::default(),
            test_strength: None,
            duration_ms: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            attempts,
        }
    }

    fn id(s: &str) -> TrialId {
        s.parse().unwrap()
    }

    #[test]
    fn keeps_exactly_first_attempt_tests_with_a_passing_implementation() {
        use Step::{Impl, Tests};
        let good = "def test_a():\n    assert f() == 1\n";
        let same_modulo_comments = "# tests\ndef test_a():  # the one\n\n    assert f() == 1   \n";
        let other = "def test_b():\n    assert f('#') == 2\n";
        let trials = vec![
            // kept
            (
                id("stack/base/0"),
                trial(
                    "stack",
                    vec![attempt(Tests, 0, true, good), attempt(Impl, 0, true, "x")],
                    Some("x"),
                ),
            ),
            // tests needed a retry
            (
                id("stack/base/1"),
                trial(
                    "stack",
                    vec![
                        attempt(Tests, 0, false, "def ("),
                        attempt(Tests, 1, true, other),
                        attempt(Impl, 0, true, "x"),
                    ],
                    Some("x"),
                ),
            ),
            // no implementation passed
            (
                id("stack/base/2"),
                trial(
                    "stack",
                    vec![attempt(Tests, 0, true, other), attempt(Impl, 0, false, "y")],
                    None,
                ),
            ),
            // no tests accepted
            (
                id("queue/base/0"),
                trial("queue", vec![attempt(Tests, 0, false, "?")], None),
            ),
            // duplicate of stack/base/0 once comments and blank lines go
            (
                id("stack/base/3"),
                trial(
                    "stack",
                    vec![
                        attempt(Tests, 0, true, same_modulo_comments),
                        attempt(Impl, 1, true, "x"),
                    ],
                    Some("x"),
                ),
            ),
            // kept: a '#' inside a string is not a comment
            (
                id("stack/base/4"),
                trial(
                    "stack",
                    vec![attempt(Tests, 0, true, other), attempt(Impl, 0, true, "x")],
                    Some("x"),
                ),
            ),
        ];
        let ex = select("base", &trials);
        let kept: Vec<String> = ex.samples.iter().map(|s| s.trial.to_string()).collect();
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

    /// With the mutation guard on, a trial whose implementation passed but whose tests the
    /// guard found too weak did not pass: it is no training sample.
    #[test]
    fn a_trial_the_mutation_guard_rejected_is_not_a_sample() {
        let tests = "def test_a():\n    assert True\n";
        let mut weak = trial(
            "stack",
            vec![
                attempt(Step::Tests, 0, true, tests),
                attempt(Step::Impl, 0, true, "class Stack: pass"),
            ],
            Some("class Stack: pass"),
        );
        weak.passed = false;
        weak.failed_step = Some(Step::Mutation);
        let ex = select("base", &[(id("stack/base/0"), weak.clone())]);
        assert!(ex.samples.is_empty(), "kept {:?}", ex.samples);
        assert_eq!(ex.counts["stack"].mutation_failed, 1);
        assert_eq!(ex.counts["stack"].kept, 0);
        // The same trial, passed (guard off), is one.
        weak.passed = true;
        weak.failed_step = None;
        assert_eq!(
            select("base", &[(id("stack/base/0"), weak)]).samples.len(),
            1
        );
    }

    #[test]
    fn normalisation_keeps_code_and_strings() {
        assert_eq!(
            normalise("x = '#a'  # c\n\n# only\ny = 1\n"),
            "x = '#a'\ny = 1\n"
        );
    }
}
