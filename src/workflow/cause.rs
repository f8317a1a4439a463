//! Why an attempt (and so a trial) failed, in the few classes a user can act on: a reply cut off
//! by `max_tokens` wants a larger limit, tests that use a name they never import want a prompt
//! that says so, a test that never ran is not the implementation's fault.
//!
//! Read from what the transcript already holds (the finish reason, the guard's verdict and its
//! feedback), so old transcripts get causes too and the trial stage's keys do not change.

use super::{Attempt, Step, TrialRecord};
use crate::guard::{Outcome, TestVerdict};
use serde::{Deserialize, Serialize};

/// The cause of a failed attempt. The order is the report's column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Generation stopped at `max_tokens` (whatever the guard then said: the reply was never
    /// whole).
    Truncated,
    /// CPython's parser rejected the tests.
    Syntax,
    /// No test was collected or run (an empty or all-skipped test file).
    NoTests,
    /// The tests or the implementation could not be imported.
    Collection,
    /// A test raised `NameError`: most often tests that use `pytest.raises` without
    /// `import pytest`.
    NameError,
    /// A test asks for a fixture nothing defines: the tests' own bug.
    Fixture,
    /// A test's assertion failed.
    Assertion,
    /// A test raised another exception.
    Exception,
    /// The run hit the guard's wall-clock limit.
    Timeout,
    /// pytest ended without a usable report (a signal, `os._exit`, a limit).
    Crashed,
    /// The code under test modified pytest itself.
    Tampered,
    /// The tests killed too few mutants of a passing implementation (the mutation guard).
    WeakTests,
}

impl Cause {
    /// Every cause, in column order.
    pub const ALL: [Cause; 12] = [
        Cause::Truncated,
        Cause::Syntax,
        Cause::NoTests,
        Cause::Collection,
        Cause::NameError,
        Cause::Fixture,
        Cause::Assertion,
        Cause::Exception,
        Cause::Timeout,
        Cause::Crashed,
        Cause::Tampered,
        Cause::WeakTests,
    ];

    /// The name records and CSVs use.
    pub fn key(self) -> &'static str {
        match self {
            Cause::Truncated => "truncated",
            Cause::Syntax => "syntax",
            Cause::NoTests => "no_tests",
            Cause::Collection => "collection",
            Cause::NameError => "name_error",
            Cause::Fixture => "fixture",
            Cause::Assertion => "assertion",
            Cause::Exception => "exception",
            Cause::Timeout => "timeout",
            Cause::Crashed => "crashed",
            Cause::Tampered => "tampered",
            Cause::WeakTests => "weak_tests",
        }
    }

    /// The cause from its [`key`](Cause::key).
    pub fn from_key(s: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.key() == s)
    }

    /// A short human label (a table header).
    pub fn label(self) -> &'static str {
        match self {
            Cause::Truncated => "truncated reply",
            Cause::Syntax => "syntax error",
            Cause::NoTests => "no tests ran",
            Cause::Collection => "import / collection error",
            Cause::NameError => "NameError",
            Cause::Fixture => "missing fixture",
            Cause::Assertion => "assertion failed",
            Cause::Exception => "other exception",
            Cause::Timeout => "timeout",
            Cause::Crashed => "pytest crashed",
            Cause::Tampered => "pytest tampered with",
            Cause::WeakTests => "weak tests (mutants survived)",
        }
    }
}

impl Attempt {
    /// Was the reply cut off by `max_tokens`?
    pub fn truncated(&self) -> bool {
        self.finish_reason.as_deref() == Some("length")
    }

    /// Why this attempt failed; `None` when it passed.
    pub fn cause(&self) -> Option<Cause> {
        if self.passed {
            return None;
        }
        if self.truncated() {
            return Some(Cause::Truncated);
        }
        Some(match self.step {
            Step::Tests => Cause::Syntax,
            Step::Mutation => Cause::WeakTests,
            Step::Impl => match serde_json::from_value::<TestVerdict>(self.verdict.clone()) {
                Ok(v) => match v.outcome {
                    // A verdict that says passed on a failed attempt cannot happen; call it
                    // what the feedback shows.
                    Outcome::Failed | Outcome::Passed => failed_tests(&v.feedback),
                    Outcome::NoTests => Cause::NoTests,
                    Outcome::CollectionError => Cause::Collection,
                    Outcome::Timeout => Cause::Timeout,
                    Outcome::Crashed => Cause::Crashed,
                    Outcome::Tampered => Cause::Tampered,
                },
                // A verdict of another shape (an older guard): judge by the feedback alone.
                Err(_) => failed_tests(&self.feedback),
            },
        })
    }
}

/// Failing tests, told apart by the tracebacks in the feedback: a raised `NameError` first, then
/// a fixture nothing defines (both the tests' own bugs)
/// (the tests' own bug, whatever else failed), then an assertion, else another exception.
fn failed_tests(feedback: &str) -> Cause {
    // Only a raised NameError counts — a traceback's `E   NameError: …` line — not the word in
    // a test's name or in "DID NOT RAISE <class 'NameError'>".
    let raised = |l: &str| {
        l.strip_prefix('E')
            .is_some_and(|r| r.trim_start().starts_with("NameError:"))
    };
    if feedback.lines().any(raised) {
        Cause::NameError
    } else if feedback
        .lines()
        .any(|l| l.starts_with('E') && l.contains("fixture '") && l.ends_with("' not found"))
    {
        Cause::Fixture
    } else if feedback.contains("AssertionError")
        || feedback.lines().any(|l| {
            l.strip_prefix('E')
                .is_some_and(|r| r.trim_start().starts_with("assert "))
        })
    {
        Cause::Assertion
    } else {
        Cause::Exception
    }
}

impl TrialRecord {
    /// Why the trial failed: the mutation guard, or the cause of the last attempt of the step
    /// that exhausted its attempts. `None` for a passed trial.
    pub fn cause(&self) -> Option<Cause> {
        match self.failed_step? {
            Step::Mutation => Some(Cause::WeakTests),
            step => self
                .attempts
                .iter()
                .rev()
                .find(|a| a.step == step)
                .and_then(Attempt::cause),
        }
    }

    /// Attempts whose reply was cut off by `max_tokens`.
    pub fn truncated_attempts(&self) -> u32 {
        self.attempts.iter().filter(|a| a.truncated()).count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::extract::Shape;
    use serde_json::{Value, json};

    fn attempt(step: Step, passed: bool, finish: Option<&str>, verdict: Value) -> Attempt {
        Attempt {
            step,
            retry: 0,
            prompt: String::new(),
            seed: 0,
            reply: String::new(),
            finish_reason: finish.map(str::to_string),
            code: String::new(),
            shape: Shape::Whole,
            passed,
            feedback: String::new(),
            verdict,
            prompt_tokens: None,
            completion_tokens: None,
            model_ms: 0,
            guard_ms: 0,
            retried_requests: 0,
        }
    }

    fn verdict(outcome: &str, feedback: &str) -> Value {
        json!({"passed": false, "outcome": outcome, "tests": 1, "failures": 1, "errors": 0,
               "skipped": 0, "feedback": feedback, "exit": 1, "duration_ms": 5})
    }

    #[test]
    fn each_verdict_maps_to_its_cause() {
        let imp =
            |o: &str, f: &str| attempt(Step::Impl, false, Some("stop"), verdict(o, f)).cause();
        assert_eq!(imp("NoTests", ""), Some(Cause::NoTests));
        assert_eq!(imp("CollectionError", ""), Some(Cause::Collection));
        assert_eq!(imp("Timeout", ""), Some(Cause::Timeout));
        assert_eq!(imp("Crashed", ""), Some(Cause::Crashed));
        assert_eq!(imp("Tampered", ""), Some(Cause::Tampered));
        let name = "FAILED t.py::test_pop\n    with pytest.raises(IndexError):\nE   NameError: name 'pytest' is not defined";
        assert_eq!(imp("Failed", name), Some(Cause::NameError));
        let assertion = "FAILED t.py::test_mul\nE       assert 12.100000000000001 == 12.1";
        assert_eq!(imp("Failed", assertion), Some(Cause::Assertion));
        assert_eq!(
            imp("Failed", "FAILED t.py::test_x\nE   AssertionError: boom"),
            Some(Cause::Assertion)
        );
        assert_eq!(
            imp("Failed", "FAILED t.py::test_x\nE   KeyError: 'a'"),
            Some(Cause::Exception)
        );
        assert_eq!(
            imp(
                "Failed",
                "ERROR t.py::test_push\nE       fixture 'stack' not found\n>       available fixtures: cache, capsys"
            ),
            Some(Cause::Fixture)
        );
        // The word alone is no NameError.
        assert_eq!(
            imp(
                "Failed",
                "FAILED t.py::test_raises_NameError\nE   Failed: DID NOT RAISE <class 'NameError'>"
            ),
            Some(Cause::Exception)
        );
        // Truncation wins: the reply was never whole.
        let cut = attempt(Step::Impl, false, Some("length"), verdict("Failed", name));
        assert_eq!(cut.cause(), Some(Cause::Truncated));
        assert!(cut.truncated());
        assert_eq!(
            attempt(Step::Tests, false, None, Value::Null).cause(),
            Some(Cause::Syntax)
        );
        assert_eq!(attempt(Step::Tests, true, None, Value::Null).cause(), None);
    }

    #[test]
    fn keys_round_trip_and_match_serde() {
        for c in Cause::ALL {
            assert_eq!(Cause::from_key(c.key()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.key());
        }
        assert_eq!(Cause::from_key("nope"), None);
    }
}
