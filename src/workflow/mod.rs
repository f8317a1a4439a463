//! The TDD workflow of one trial: g_test (the model writes tests; CPython's parser judges them)
//! then g_impl (the model writes the implementation; pytest in the sandbox judges it), each
//! with up to `rmax` retries whose prompts carry the feedback of every earlier failed attempt.
//!
//! Everything the model saw and said is kept, attempt by attempt, because the later stages
//! need it: `extract` keeps the accepted replies, `format` replays the exact prompts, `report`
//! counts retries and links each number back to its transcript.
//!
//! Depends on [`crate::chat`] (the model behind a trait) and [`crate::guard`]; never on the
//! store or the stages.

pub mod cause;
pub mod extract;
pub mod prompts;

use crate::chat::{ChatModel, ChatRequest, LlmError, Message, Role};
use crate::guard::{self, GuardError, Limits, MutationReport, PyEnv};
use extract::Shape;
use prompts::{PromptError, Prompts};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Instant;

/// The two steps of the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// The model writes tests; the syntax guard judges.
    Tests,
    /// The model writes the implementation; the test guard judges.
    Impl,
    /// The optional mutation guard (tests must kill mutants).
    Mutation,
}

impl Step {
    /// The step's name, as records and reports write it.
    pub fn name(self) -> &'static str {
        match self {
            Step::Tests => "tests",
            Step::Impl => "impl",
            Step::Mutation => "mutation",
        }
    }
}

/// One request, its reply and the guard's verdict on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    /// Which step.
    pub step: Step,
    /// R: 0 for the first attempt of the step, 1 for the first retry, …
    pub retry: u32,
    /// The user turn, exactly as sent (the system turn is the trial's).
    pub prompt: String,
    /// The seed sent with the request.
    pub seed: u64,
    /// The raw reply.
    pub reply: String,
    /// Why generation stopped (`length`: cut off by `max_tokens`).
    pub finish_reason: Option<String>,
    /// The code taken from the reply.
    pub code: String,
    /// How it was found.
    pub shape: Shape,
    /// The guard's verdict.
    pub passed: bool,
    /// What the next prompt says about this attempt (empty when it passed).
    pub feedback: String,
    /// The guard's full verdict (syntax or test).
    pub verdict: Value,
    /// Prompt tokens (server's count).
    pub prompt_tokens: Option<u64>,
    /// Generated tokens (server's count).
    pub completion_tokens: Option<u64>,
    /// Time waiting for the model, ms.
    pub model_ms: u64,
    /// Time in the guard, ms.
    pub guard_ms: u64,
    /// Infrastructure failures retried before the reply came.
    pub retried_requests: u32,
}

/// Retries used by each step (R), where the step was reached and passed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// The tests step's R, if it passed.
    pub tests: Option<u32>,
    /// The implementation step's R, if it passed.
    #[serde(rename = "impl")]
    pub impl_: Option<u32>,
}

/// Everything about one trial.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialRecord {
    /// Task id (`stack`).
    pub task: String,
    /// Arm name.
    pub arm: String,
    /// Trial index.
    pub index: u32,
    /// The trial's seed.
    pub seed: u64,
    /// The system turn of every request.
    pub system: String,
    /// Did the implementation pass (and, when asked, the mutation guard)?
    pub passed: bool,
    /// The step that exhausted its attempts.
    pub failed_step: Option<Step>,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// The accepted tests.
    pub tests: Option<String>,
    /// The accepted implementation.
    pub implementation: Option<String>,
    /// R per step.
    pub retries: Retries,
    /// Share of mutants of the passed implementation that the tests kill.
    pub test_strength: Option<MutationReport>,
    /// Wall time of the trial, ms.
    pub duration_ms: u64,
    /// Prompt tokens over all attempts.
    pub prompt_tokens: u64,
    /// Generated tokens over all attempts.
    pub completion_tokens: u64,
}

impl TrialRecord {
    /// The small summary kept in the action record and the stage manifest (what `report`
    /// and `status` read without opening the transcript).
    pub fn summary(&self) -> TrialSummary {
        let count = |step| self.attempts.iter().filter(|a| a.step == step).count() as u32;
        TrialSummary {
            passed: self.passed,
            failed_step: self.failed_step,
            retries: self.retries.clone(),
            attempts: AttemptCounts {
                tests: count(Step::Tests),
                impl_: count(Step::Impl),
            },
            test_strength: self.test_strength.as_ref().map(|m| m.score),
            duration_ms: self.duration_ms,
            tokens: Tokens {
                prompt: self.prompt_tokens,
                completion: self.completion_tokens,
            },
        }
    }
}

/// A trial's outcome in brief: what the manifest keeps per trial so that `report` and
/// `status` never open a transcript. Read back strictly: an unknown or missing field is an
/// error, never a zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialSummary {
    /// Did the trial pass (implementation, and the mutation guard when on)?
    pub passed: bool,
    /// The step that exhausted its attempts, when it did not pass.
    pub failed_step: Option<Step>,
    /// R per step, where the step passed.
    pub retries: Retries,
    /// Attempts made per step.
    pub attempts: AttemptCounts,
    /// Share of mutants the tests kill (passed implementations only).
    pub test_strength: Option<f64>,
    /// Wall time of the trial, ms.
    pub duration_ms: u64,
    /// Tokens over all attempts.
    pub tokens: Tokens,
}

/// Attempts made per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptCounts {
    /// At the tests step.
    pub tests: u32,
    /// At the implementation step.
    #[serde(rename = "impl")]
    pub impl_: u32,
}

/// Token counts, as the server reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    /// Prompt tokens.
    pub prompt: u64,
    /// Generated tokens.
    pub completion: u64,
}

/// Which trial: a task, an arm, an index. Item ids, transcripts and reports name a trial as
/// `task/arm/index`; this is the one place that text is written and parsed (so task and arm
/// names may not contain `/`, which the config rejects).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrialId {
    /// The task id (`stack`).
    pub task: String,
    /// The arm.
    pub arm: String,
    /// The trial's index within task and arm.
    pub index: u32,
}

impl TrialId {
    /// A trial id.
    pub fn new(task: &str, arm: &str, index: u32) -> TrialId {
        TrialId {
            task: task.into(),
            arm: arm.into(),
            index,
        }
    }
}

impl std::fmt::Display for TrialId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.task, self.arm, self.index)
    }
}

/// Text that is not `task/arm/index`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a trial id (task/arm/index)")]
pub struct BadTrialId(pub String);

impl std::str::FromStr for TrialId {
    type Err = BadTrialId;
    fn from_str(s: &str) -> Result<TrialId, BadTrialId> {
        let bad = || BadTrialId(s.to_string());
        let mut parts = s.split('/');
        let (Some(task), Some(arm), Some(index), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if task.is_empty() || arm.is_empty() {
            return Err(bad());
        }
        Ok(TrialId::new(task, arm, index.parse().map_err(|_| bad())?))
    }
}

impl Serialize for TrialId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TrialId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TrialId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a trial could not be run: never a failed trial, always something to fix and rerun.
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    /// The model could not be asked.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// The guard could not run (sandbox or venv missing, host I/O).
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// A prompt did not render.
    #[error(transparent)]
    Prompt(#[from] PromptError),
}

/// What one trial needs.
pub struct TrialSetup<'a> {
    /// The model.
    pub model: &'a dyn ChatModel,
    /// The guard's Python.
    pub env: &'a PyEnv,
    /// The guard's limits.
    pub limits: &'a Limits,
    /// The templates.
    pub prompts: &'a Prompts,
    /// The task spec (its JSON).
    pub task: &'a Value,
    /// Which trial: for the record.
    pub id: &'a TrialId,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus sampling.
    pub top_p: f64,
    /// Generation limit.
    pub max_tokens: u32,
    /// Retries per step.
    pub rmax: u32,
    /// The trial's seed.
    pub seed: u64,
    /// Fail trials whose tests kill fewer than [`MUTATION_GUARD_MIN`] of the mutants.
    pub mutation_guard: bool,
}

/// The share of mutants the tests must kill when the mutation guard is on. Below 1 because
/// some mutants are equivalent (replacing `push`'s implicit `None` return changes nothing).
pub const MUTATION_GUARD_MIN: f64 = 0.5;

/// Each request's seed: distinct per step and attempt, the same in every arm.
fn request_seed(trial_seed: u64, step: Step, retry: u32) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&trial_seed.to_le_bytes());
    h.update(&[step as u8]);
    h.update(&retry.to_le_bytes());
    // llama.cpp takes a 32-bit seed; stay within what every server accepts.
    u64::from(
        u32::from_le_bytes(h.finalize().as_bytes()[..4].try_into().expect("4 bytes")) & 0x7fff_ffff,
    )
}

impl TrialSetup<'_> {
    fn ask(&self, step: Step, retry: u32, prompt: String) -> Result<Attempt, TrialError> {
        let seed = request_seed(self.seed, step, retry);
        let req = ChatRequest {
            messages: vec![
                Message::new(Role::System, self.prompts.system()),
                Message::new(Role::User, prompt.clone()),
            ],
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            seed: Some(seed),
        };
        let reply = self.model.chat(&req)?;
        let (code, shape) = extract::extract_code(&reply.content);
        Ok(Attempt {
            step,
            retry,
            prompt,
            seed,
            reply: reply.content,
            finish_reason: reply.finish_reason,
            code,
            shape,
            passed: false,
            feedback: String::new(),
            verdict: Value::Null,
            prompt_tokens: reply.prompt_tokens,
            completion_tokens: reply.completion_tokens,
            model_ms: reply.duration_ms,
            guard_ms: 0,
            retried_requests: reply.retried,
        })
    }

    /// Run the trial.
    pub fn run(&self) -> Result<TrialRecord, TrialError> {
        let started = Instant::now();
        let mut rec = TrialRecord {
            task: self.id.task.clone(),
            arm: self.id.arm.clone(),
            index: self.id.index,
            seed: self.seed,
            system: self.prompts.system().into(),
            passed: false,
            failed_step: None,
            attempts: Vec::new(),
            tests: None,
            implementation: None,
            retries: Retries::default(),
            test_strength: None,
            duration_ms: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
        };

        // g_test: the syntax guard.
        let mut feedback = Vec::new();
        for retry in 0..=self.rmax {
            let prompt = self.prompts.tests(self.task, &feedback)?;
            let mut a = self.ask(Step::Tests, retry, prompt)?;
            let t = Instant::now();
            let v = guard::syntax_check(self.env, &a.code)?;
            a.guard_ms = t.elapsed().as_millis() as u64;
            a.passed = v.ok;
            a.feedback = v.feedback.clone();
            a.verdict = serde_json::to_value(&v).expect("verdict serialises");
            let ok = a.passed;
            if !ok {
                feedback.push(a.feedback.clone());
            } else {
                rec.tests = Some(a.code.clone());
                rec.retries.tests = Some(retry);
            }
            rec.attempts.push(a);
            if ok {
                break;
            }
        }

        // g_impl: the test guard, against the accepted tests.
        if let Some(tests) = rec.tests.clone() {
            let mut feedback = Vec::new();
            for retry in 0..=self.rmax {
                let prompt = self.prompts.implementation(self.task, &tests, &feedback)?;
                let mut a = self.ask(Step::Impl, retry, prompt)?;
                let t = Instant::now();
                let v = guard::run_tests(self.env, self.limits, &tests, &a.code)?;
                a.guard_ms = t.elapsed().as_millis() as u64;
                a.passed = v.passed;
                a.feedback = if v.passed {
                    String::new()
                } else {
                    v.feedback.clone()
                };
                a.verdict = serde_json::to_value(&v).expect("verdict serialises");
                let ok = a.passed;
                if !ok {
                    feedback.push(a.feedback.clone());
                } else {
                    rec.implementation = Some(a.code.clone());
                    rec.retries.impl_ = Some(retry);
                }
                rec.attempts.push(a);
                if ok {
                    break;
                }
            }
            if rec.implementation.is_none() {
                rec.failed_step = Some(Step::Impl);
            }
        } else {
            rec.failed_step = Some(Step::Tests);
        }

        // Test strength: always measured on a passed implementation; a guard only if asked.
        if let (Some(tests), Some(imp)) = (&rec.tests, &rec.implementation) {
            let m = guard::mutation_score(self.env, self.limits, tests, imp)?;
            rec.passed = !(self.mutation_guard && m.score < MUTATION_GUARD_MIN);
            if !rec.passed {
                rec.failed_step = Some(Step::Mutation);
            }
            rec.test_strength = Some(m);
        }

        rec.prompt_tokens = rec.attempts.iter().filter_map(|a| a.prompt_tokens).sum();
        rec.completion_tokens = rec
            .attempts
            .iter()
            .filter_map(|a| a.completion_tokens)
            .sum();
        rec.duration_ms = started.elapsed().as_millis() as u64;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_seeds_differ_by_step_and_retry() {
        let a = request_seed(1, Step::Tests, 0);
        assert_ne!(a, request_seed(1, Step::Tests, 1));
        assert_ne!(a, request_seed(1, Step::Impl, 0));
        assert_ne!(a, request_seed(2, Step::Tests, 0));
        assert_eq!(a, request_seed(1, Step::Tests, 0));
        assert!(a < 1 << 31);
    }

    #[test]
    fn trial_ids_round_trip_and_reject_what_is_not_one() {
        let id: TrialId = "stack/base/7".parse().unwrap();
        assert_eq!(id, TrialId::new("stack", "base", 7));
        assert_eq!(id.to_string(), "stack/base/7");
        assert_eq!(serde_json::to_value(&id).unwrap(), "stack/base/7");
        for bad in [
            "stack/base",
            "stack/base/x",
            "a/b/c/1",
            "/base/1",
            "stack/base/-1",
        ] {
            assert!(bad.parse::<TrialId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_summary_with_a_renamed_or_missing_field_fails_loudly() {
        let good = serde_json::json!({
            "passed": true, "failed_step": null, "retries": {"tests": 0, "impl": 1},
            "attempts": {"tests": 1, "impl": 2}, "test_strength": 0.75,
            "duration_ms": 10, "tokens": {"prompt": 5, "completion": 6},
        });
        let s: TrialSummary = serde_json::from_value(good.clone()).unwrap();
        assert_eq!((s.attempts.impl_, s.tokens.completion), (2, 6));
        // `attempts` renamed on the writing side: an error, not zero attempts.
        let mut renamed = good.clone();
        let v = renamed.as_object_mut().unwrap().remove("attempts").unwrap();
        renamed["attempt_counts"] = v;
        let e = serde_json::from_value::<TrialSummary>(renamed).unwrap_err();
        assert!(e.to_string().contains("attempt_counts"), "{e}");
        let mut missing = good;
        missing["tokens"].as_object_mut().unwrap().remove("prompt");
        assert!(serde_json::from_value::<TrialSummary>(missing).is_err());
    }
}
