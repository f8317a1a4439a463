//! The `trial` stage (and `eval`'s declaration): one action per task × arm × trial index, each
//! running the TDD workflow against the arm's model and recording every attempt.

use super::runtime::Runtime;
use super::trial_seed;
use crate::config::{Loaded, Role};
use crate::engine::{Context, Item, Job, Outputs, Shared, Stage, StageError};
use crate::guard::Limits;
use crate::model::lora::{PEFT_CONFIG, PEFT_WEIGHTS};
use crate::workflow::prompts::Prompts;
use crate::workflow::{TrialError, TrialId, TrialSetup};
use rayon::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The name of a trial's output: its transcript (a [`crate::workflow::TrialRecord`]).
pub const TRANSCRIPT: &str = "trial";

/// An `eval` item's summary when there is no fine-tuned model to ask (train had nothing to
/// train on): why, and no transcript. The report says the fine-tuned arm is missing and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotRun {
    /// Why the trial was not run.
    pub not_run: String,
}

/// A stage that maps the workflow over task × arm (of one role) × index.
pub struct TrialStage {
    /// `trial` or `eval`.
    pub name: &'static str,
    /// Bumped when the workflow's logic changes.
    pub version: u32,
    /// Upstream stages.
    pub deps: &'static [&'static str],
    /// Which arms.
    pub role: Role,
    /// Models and guard.
    pub rt: Arc<Runtime>,
    /// The synthetic stand-in, when not real.
    pub synthetic: Option<super::RunFn>,
}

/// The guard limits of a config.
pub fn limits(loaded: &Loaded) -> Limits {
    let g = &loaded.config.guard;
    Limits {
        timeout: Duration::from_secs(g.timeout_s.max(1)),
        memory_mb: g.memory_mb,
        max_processes: g.max_processes,
        feedback_bytes: g.feedback_bytes,
    }
}

impl Stage for TrialStage {
    fn name(&self) -> &'static str {
        self.name
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn deps(&self) -> &'static [&'static str] {
        self.deps
    }
    fn params(&self, cx: &Context<'_>) -> Value {
        let c = &cx.loaded.config;
        if self.synthetic.is_some() {
            return json!({ "synthetic": { "sampling": c.sampling, "guard": c.guard } });
        }
        json!({
            "sampling": c.sampling,
            "guard": c.guard,
            "guard_env": self.rt.guard_identity(),
            "prompts": cx.blob(&Prompts::identity()),
        })
    }
    fn items(&self, cx: &Context<'_>) -> Vec<Item> {
        let l = cx.loaded;
        let trials = l.config.experiment.trials;
        let mut groups = Vec::new();
        for task in &l.tasks {
            let spec = cx.blob(&task.value);
            for (arm_name, arm) in l.arms(self.role) {
                let shared = Shared::new(json!({
                    "task": spec,
                    "arm": arm_name,
                    "model": self.rt.model_identity(arm.model.get_ref()),
                    "rmax": arm.rmax,
                }));
                groups.push((task.id.as_str(), arm_name, shared));
            }
        }
        let seed = l.config.experiment.seed;
        groups
            .par_iter()
            .flat_map_iter(|(task, arm, shared)| {
                (0..trials).map(move |index| Item {
                    id: TrialId::new(task, arm, index).to_string(),
                    shared: Arc::clone(shared),
                    own: json!({ "index": index, "seed": trial_seed(seed, task, index) }),
                })
            })
            .collect()
    }
    fn run(&self, job: &Job<'_>) -> Result<Outputs, StageError> {
        if let Some(f) = self.synthetic {
            return f(job);
        }
        run_trial(&self.rt, job)
    }
}

fn run_trial(rt: &Runtime, job: &Job<'_>) -> Result<Outputs, StageError> {
    let l = job.cx.loaded;
    let id = super::trial_id(&job.item.id)?;
    let task = l
        .tasks
        .iter()
        .find(|t| t.id == id.task)
        .ok_or_else(|| StageError::Failed(format!("no task {:?}", id.task)))?;
    let arm = l
        .config
        .arms
        .get(&id.arm)
        .ok_or_else(|| StageError::Failed(format!("no arm {:?}", id.arm)))?;
    let name = arm.model.get_ref();
    let model = if job.stage == "eval" {
        let train = job
            .manifest("train")?
            .entries
            .first()
            .ok_or_else(|| StageError::Failed("train has no output".into()))?;
        let peft = [PEFT_CONFIG, PEFT_WEIGHTS].map(|n| train.outputs.get(n).map(|id| (n, *id)));
        let [Some(config), Some(weights)] = peft else {
            let not_run = NotRun {
                not_run: "train made no adapter: there is no fine-tuned model to ask".into(),
            };
            return Ok(Outputs::new(BTreeMap::new(), &not_run));
        };
        let adapter = format!("{}{}", config.1.short(), weights.1.short());
        rt.finetuned(l, name, &adapter, |dir| {
            for (file, id) in [config, weights] {
                let bytes = job.store.get(&id).map_err(|e| e.to_string())?;
                std::fs::write(dir.join(file), bytes).map_err(|e| format!("{file}: {e}"))?;
            }
            Ok(())
        })
        .map_err(StageError::Infra)?
    } else {
        rt.model(l, name).map_err(StageError::Infra)?
    };
    let env = rt.pyenv().map_err(StageError::Infra)?;
    let limits = limits(l);
    let prompts = Prompts::builtin();
    let s = &l.config.sampling;
    let setup = TrialSetup {
        model: model.as_ref(),
        env,
        limits: &limits,
        prompts: &prompts,
        task: &task.value,
        id: &id,
        temperature: s.temperature,
        top_p: s.top_p,
        max_tokens: s.max_tokens,
        rmax: arm.rmax,
        seed: trial_seed(l.config.experiment.seed, &id.task, id.index),
        mutation_guard: l.config.guard.mutation_guard,
    };
    let rec = setup.run().map_err(|e| match e {
        TrialError::Prompt(p) => StageError::Failed(p.to_string()),
        other => StageError::Infra(other.to_string()),
    })?;
    let transcript = job.store.put_json(&super::to_json(&rec))?;
    Ok(Outputs::new(
        [(TRANSCRIPT.to_string(), transcript)].into(),
        &rec.summary(),
    ))
}
