//! The `train` stage: one item, the adapter. Reads format's JSONL and extract's counts, opens
//! the base model in process, trains LoRA with [`crate::model::train`] (checkpointing into the
//! store so a killed build resumes), and writes PEFT's two files and a [`TrainRecord`].

use super::format::{TRAIN, VAL};
use super::runtime::Runtime;
use crate::config::Loaded;
use crate::engine::{Context, Item, Job, Outputs, Stage, StageError};
use crate::model::lora::{PEFT_CONFIG, PEFT_WEIGHTS};
use crate::model::template::Role;
use crate::model::train::adamw::AdamWConfig;
use crate::model::train::data::{self, Conversation};
use crate::model::train::frozen::BaseMath;
use crate::model::train::net::{LoraSpec, TrainModel};
use crate::model::train::trainer::{self, Curve, Hyper, State};
use crate::samples::Counts;
use crate::samples::jsonl::{self, ChatLine};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The training record's output name.
pub const RECORD: &str = "train.json";

/// What keys training: the loop's settings (defaults resolved) and the base model's identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The `[models]` entry fine-tuned.
    pub model: String,
    /// Its identity (the blake3 of its files).
    pub base: Value,
    /// LoRA rank.
    pub rank: u32,
    /// LoRA alpha.
    pub alpha: f64,
    /// Sequences longer than this (prompt, reply, end token) are dropped.
    pub max_seq_len: u32,
    /// How the frozen base's products are computed (`train.base`, `auto` resolved on this
    /// machine: the numbers differ slightly, so the key holds it).
    pub base_math: BaseMath,
    /// The loop.
    pub hyper: Hyper,
}

/// Why nothing was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skipped {
    /// extract kept no sample.
    NoSamples,
    /// Every sample was longer than `max_seq_len`.
    AllTooLong,
}

/// What training did, for the report and for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRecord {
    /// Why there is no adapter, when there is none.
    pub skipped: Option<Skipped>,
    /// Per task: trials of the source arm, samples kept and dropped (from extract).
    pub per_task: BTreeMap<String, Counts>,
    /// Training examples used.
    pub train_samples: usize,
    /// Validation examples used.
    pub val_samples: usize,
    /// Examples dropped as longer than `max_seq_len` (training and validation).
    pub too_long: usize,
    /// Optimiser steps.
    pub steps: u64,
    /// Tokens read over all steps (prompt and reply).
    pub tokens: u64,
    /// The loss curves.
    pub curve: Curve,
    /// The step this process resumed from (0: a fresh run).
    pub resumed_from: u64,
    /// Seconds this process trained.
    pub seconds: f64,
    /// Tokens per second in this process.
    pub tokens_per_s: f64,
    /// Where it ran.
    pub device: String,
    /// How the frozen base's products were computed (absent in records from before the
    /// choice existed: quantized).
    #[serde(default)]
    pub base_math: Option<BaseMath>,
}

/// What the manifest keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Was an adapter trained?
    pub trained: bool,
    /// Training examples.
    pub samples: usize,
    /// Steps.
    pub steps: u64,
}

/// The stage.
pub struct TrainStage {
    /// Models.
    pub rt: Arc<Runtime>,
    /// The synthetic stand-in, when not real.
    pub synthetic: Option<super::RunFn>,
}

/// The parameters of `loaded`'s training, as keyed.
pub fn params(rt: &Runtime, loaded: &Loaded) -> Params {
    let c = &loaded.config;
    let t = &c.train;
    let model = t.model_name(c).to_string();
    Params {
        base: rt.model_identity(&model),
        model,
        rank: t.rank,
        alpha: t.alpha,
        max_seq_len: t.max_seq_len,
        // Checked when the config was read.
        base_math: BaseMath::parse(t.base.as_deref()).unwrap_or_else(|_| BaseMath::fastest()),
        hyper: Hyper {
            learning_rate: t.learning_rate,
            epochs: t.epochs,
            batch_size: t.batch_size as usize,
            micro_batch: t.micro_batch.unwrap_or(t.batch_size) as usize,
            warmup_ratio: t.warmup_ratio.unwrap_or(0.03),
            max_grad_norm: t.max_grad_norm.unwrap_or(1.0),
            seed: t.seed,
            adamw: AdamWConfig::default(),
        },
    }
}

impl Stage for TrainStage {
    fn name(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        2
    }
    fn deps(&self) -> &'static [&'static str] {
        &["extract", "format"]
    }
    fn params(&self, cx: &Context<'_>) -> Value {
        super::keyed(
            super::to_json(&params(&self.rt, cx.loaded)),
            self.synthetic.is_some(),
        )
    }
    fn items(&self, _cx: &Context<'_>) -> Vec<Item> {
        vec![Item::new("adapter", json!({}))]
    }
    fn run(&self, job: &Job<'_>) -> Result<Outputs, StageError> {
        super::run_or_synthetic(self.synthetic, job, |job| run(&self.rt, job))
    }
}

fn conversations(text: &[u8], what: &str) -> Result<Vec<Conversation>, StageError> {
    let text = std::str::from_utf8(text)
        .map_err(|e| StageError::Failed(format!("{what}: not UTF-8: {e}")))?;
    let lines: Vec<ChatLine> =
        jsonl::parse(text).map_err(|e| StageError::Failed(format!("{what}: {e}")))?;
    lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let mut turns = l.messages;
            match turns.pop() {
                Some(last) if last.role == Role::Assistant => Ok(Conversation {
                    prompt: turns,
                    reply: last.content,
                }),
                _ => Err(StageError::Failed(format!(
                    "{what} line {}: the last turn is not the assistant's",
                    i + 1
                ))),
            }
        })
        .collect()
}

fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("serialises")
}

fn run(rt: &Runtime, job: &Job<'_>) -> Result<Outputs, StageError> {
    let p: Params = job.params()?;
    let l = job.cx.loaded;
    let mut per_task: BTreeMap<String, Counts> = BTreeMap::new();
    for ex in super::extract::read_all(job)? {
        per_task.extend(ex.counts);
    }
    let entry = job
        .manifest("format")?
        .entries
        .first()
        .ok_or_else(|| StageError::Failed("format has no output".into()))?;
    let read = |name: &str| -> Result<Vec<u8>, StageError> {
        let id = entry
            .outputs
            .get(name)
            .ok_or_else(|| StageError::Failed(format!("format has no `{name}`")))?;
        Ok(job.store.get(id)?)
    };
    let train_conv = conversations(&read(TRAIN)?, TRAIN)?;
    let val_conv = conversations(&read(VAL)?, VAL)?;
    let device = l.config.train.device.clone();
    let mut rec = TrainRecord {
        skipped: None,
        per_task,
        train_samples: 0,
        val_samples: 0,
        too_long: 0,
        steps: 0,
        tokens: 0,
        curve: Curve::default(),
        resumed_from: 0,
        seconds: 0.0,
        tokens_per_s: 0.0,
        device: device.clone(),
        base_math: Some(p.base_math),
    };
    if train_conv.is_empty() {
        rec.skipped = Some(Skipped::NoSamples);
        return finish(job, &rec, None);
    }
    if device != "cpu" {
        return Err(StageError::Failed(format!(
            "training on `{device}` is not built yet: set train.device = \"cpu\""
        )));
    }
    let base = rt.local_base(l, &p.model).map_err(StageError::Infra)?;
    // Never longer than the model's own context (its rotary tables end there).
    let max = (p.max_seq_len as usize).min(base.transformer().config.max_seq);
    let prep = |c: &[Conversation]| {
        data::prepare(c, base.tokenizer(), &base.template(), max).map_err(StageError::Failed)
    };
    let (train, val) = (prep(&train_conv)?, prep(&val_conv)?);
    rec.too_long = train.too_long + val.too_long;
    rec.train_samples = train.examples.len();
    rec.val_samples = val.examples.len();
    if train.examples.is_empty() {
        rec.skipped = Some(Skipped::AllTooLong);
        return finish(job, &rec, None);
    }
    let candle = |e: candle_core::Error| StageError::Failed(format!("training: {e}"));
    // Training frees and reallocates the same large buffers every step.
    let _keep = crate::model::train::alloc::KeepFreed::new();
    let model = TrainModel::new(
        base.transformer(),
        LoraSpec {
            rank: p.rank as usize,
            alpha: p.alpha,
            seed: p.hyper.seed,
            base: p.base_math,
        },
    )
    .map_err(candle)?;
    let fresh = State::fresh(&model).map_err(candle)?;
    let state = match job.checkpoint().map(|b| State::decode(&b)) {
        Some(Ok(s)) if s.params.len() == fresh.params.len() => s,
        Some(Ok(s)) => {
            tracing::warn!(
                "the training checkpoint holds {} parameters, the model has {}; starting over",
                s.params.len(),
                fresh.params.len()
            );
            fresh
        }
        Some(Err(e)) => {
            tracing::warn!("the training checkpoint does not decode ({e}); starting over");
            fresh
        }
        None => fresh,
    };
    rec.resumed_from = state.step;
    let tokens_before = state.tokens;
    // Validated: finite, 0 to 1e9.
    let every =
        Duration::from_secs_f64(l.config.train.checkpoint_s.unwrap_or(60.0).clamp(0.0, 1e9));
    let started = Instant::now();
    let mut saved = Instant::now();
    let pad = base.tokenizer().eos();
    let state = trainer::run(
        &model,
        &train.examples,
        &val.examples,
        &p.hyper,
        pad,
        state,
        &mut |pr| {
            job.progress(
                pr.step,
                pr.steps,
                &format!(
                    "loss {:.3} · {:.0} tok/s · {} left",
                    pr.loss,
                    pr.tokens_per_s,
                    eta(pr.eta_s)
                ),
            )
        },
        &mut |s| {
            if saved.elapsed() >= every {
                saved = Instant::now();
                crate::failpoint("train:before-checkpoint");
                job.save_checkpoint(&s.encode())
                    .map_err(|e| e.to_string())?;
                crate::failpoint("train:after-checkpoint");
            }
            Ok(())
        },
    )
    .map_err(|e| StageError::Failed(format!("training: {e}")))?;
    rec.steps = state.step;
    rec.tokens = state.tokens;
    rec.seconds = started.elapsed().as_secs_f64();
    rec.tokens_per_s = (state.tokens - tokens_before) as f64 / rec.seconds.max(1e-9);
    rec.curve = state.curve;
    let adapter = model.adapter().map_err(candle)?;
    let dir = tempfile::tempdir()
        .map_err(|e| StageError::Failed(format!("a temporary directory: {e}")))?;
    adapter
        .write_peft(dir.path(), &p.model, model.config())
        .map_err(|e| StageError::Failed(e.to_string()))?;
    let file = |name: &str| {
        std::fs::read(dir.path().join(name)).map_err(|e| StageError::Failed(format!("{name}: {e}")))
    };
    let files = [
        (PEFT_CONFIG, file(PEFT_CONFIG)?),
        (PEFT_WEIGHTS, file(PEFT_WEIGHTS)?),
    ];
    finish(job, &rec, Some(&files))
}

fn eta(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

fn finish(
    job: &Job<'_>,
    rec: &TrainRecord,
    files: Option<&[(&str, Vec<u8>); 2]>,
) -> Result<Outputs, StageError> {
    let mut objects = BTreeMap::new();
    objects.insert(RECORD.to_string(), job.store.put(&json_bytes(rec))?);
    if let Some(files) = files {
        for (name, bytes) in files {
            objects.insert(name.to_string(), job.store.put(bytes)?);
        }
    }
    Ok(Outputs::new(
        objects,
        &Summary {
            trained: files.is_some(),
            samples: rec.train_samples,
            steps: rec.steps,
        },
    ))
}
