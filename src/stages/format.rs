//! The `format` stage: every extract item's samples as chat JSONL ([`crate::samples::jsonl`]),
//! split into `train.jsonl` and `val.jsonl`.

use crate::engine::{Job, Outputs, StageError};
use crate::samples::Sample;
use crate::samples::jsonl::{self, Split};
use serde::{Deserialize, Serialize};

/// The stage's parameters (what keys it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Share of each task's samples held out for validation.
    pub val_fraction: f64,
    /// The split's seed.
    pub seed: u64,
}

/// The training file.
pub const TRAIN: &str = "train.jsonl";
/// The validation file.
pub const VAL: &str = "val.jsonl";

/// The stage's run function.
pub fn run(job: &Job<'_>) -> Result<Outputs, StageError> {
    let p: Params = job.params()?;
    let samples: Vec<Sample> = super::extract::read_all(job)?
        .into_iter()
        .flat_map(|ex| ex.samples)
        .collect();
    let (train, val) = jsonl::split(&samples, p.val_fraction, p.seed);
    let text = |v: &[&Sample]| v.iter().map(|s| jsonl::line(s)).collect::<String>();
    let train_id = job.store.put(text(&train).as_bytes())?;
    let val_id = job.store.put(text(&val).as_bytes())?;
    Ok(Outputs::new(
        [(TRAIN.to_string(), train_id), (VAL.to_string(), val_id)].into(),
        &Split {
            train: train.len(),
            val: val.len(),
        },
    ))
}
