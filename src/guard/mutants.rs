//! Test strength: how many small, deliberate bugs ("mutants") in the implementation the tests
//! notice. A suite that asserts nothing passes against every mutant and scores 0; the
//! benchmark's own guard (the tests pass) cannot tell it from a good suite.
//!
//! Mutants come from `py/mutants.py` (read its docstring for the operators and the
//! deterministic selection), run in the sandbox although it only parses and unparses: the
//! input is model-written. Each mutant is then one ordinary sandboxed pytest run.

use super::verdict::Outcome;
use super::{GuardError, Limits, PyEnv, run_tests, sandbox};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// At most this many mutants per implementation: each is a full pytest run (~0.3 s of CPU),
/// and a dozen spread over the file already separates suites that check from suites that
/// don't.
pub const MAX_MUTANTS: u32 = 12;

/// The result of a mutation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MutationReport {
    /// Mutants run.
    pub mutants: u32,
    /// Mutants the tests did not pass against.
    pub killed: u32,
    /// `killed / mutants`; 0 when there are no mutants (nothing to measure is not strength).
    pub score: f64,
    /// One entry per mutant, in the generator's order.
    pub detail: Vec<MutantResult>,
}

/// One mutant's fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MutantResult {
    /// What was changed, e.g. `Stack.pop: line 12: returns None instead`.
    pub description: String,
    /// The tests did not pass against it.
    pub killed: bool,
    /// How the test run against it ended.
    pub outcome: Outcome,
}

#[derive(Deserialize)]
struct Generated {
    mutants: Vec<Mutant>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Mutant {
    description: String,
    source: String,
}

/// Run `tests` against up to [`MAX_MUTANTS`] mutants of `implementation`, one sandboxed pytest
/// run each (sequentially: callers already run trials in parallel). Killed means the run
/// did not pass — failed, errored, timed out or crashed.
///
/// Meant for tests that pass against `implementation`; for a suite that already fails, every
/// mutant counts as killed and the score means nothing. An implementation the generator
/// cannot handle (it only happens for absurd input, e.g. nesting deeper than Python's
/// recursion limit) yields no mutants and a score of 0.
pub fn mutation_score(
    env: &PyEnv,
    limits: &Limits,
    tests: &str,
    implementation: &str,
) -> Result<MutationReport, GuardError> {
    let mutants = generate(env, implementation)?;
    let mut detail = Vec::with_capacity(mutants.len());
    for m in mutants {
        let v = run_tests(env, limits, tests, &m.source)?;
        detail.push(MutantResult {
            description: m.description,
            killed: !v.passed,
            outcome: v.outcome,
        });
    }
    let mutants = detail.len() as u32;
    let killed = detail.iter().filter(|d| d.killed).count() as u32;
    Ok(MutationReport {
        mutants,
        killed,
        score: if mutants == 0 {
            0.0
        } else {
            f64::from(killed) / f64::from(mutants)
        },
        detail,
    })
}

fn generate(env: &PyEnv, implementation: &str) -> Result<Vec<Mutant>, GuardError> {
    let limits = Limits {
        timeout: Duration::from_secs(20),
        memory_mb: 512,
        max_processes: 4,
        feedback_bytes: 0,
    };
    let cap = MAX_MUTANTS.to_string();
    let argv = [
        sandbox::PYTHON,
        "-I",
        "-S",
        "/guard/mutants.py",
        "/job/implementation.py",
        &cap,
    ];
    let run = sandbox::run(
        env,
        &sandbox::Job {
            files: &[("implementation.py", implementation.as_bytes())],
            argv: &argv,
            limits: &limits,
            channel_cap: 64 << 20,
        },
    )?;
    let body = run.ready_body("the mutant generator")?;
    if run.timed_out || body.is_empty() || run.channel_overflow {
        tracing::warn!(
            "the mutant generator gave up on an implementation ({}, timed out: {})",
            run.status_text(),
            run.timed_out
        );
        return Ok(Vec::new());
    }
    let g: Generated = serde_json::from_slice(body).map_err(|e| GuardError::Helper {
        helper: "mutants.py",
        detail: e.to_string(),
    })?;
    if let Some(e) = g.error {
        tracing::warn!("the mutant generator could not read an implementation: {e}");
    }
    Ok(g.mutants)
}
