//! The `extract` stage: one item per source arm; reads that arm's trial transcripts and keeps
//! the samples [`crate::samples::select`] chooses.

use crate::engine::{Job, Outputs, StageError};
use crate::samples::{self, Extracted};
use crate::workflow::TrialRecord;
use serde::{Deserialize, Serialize};

/// An item's own ingredients: which arm's trials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The source arm (`train.from_arm`).
    pub arm: String,
}

/// What the manifest keeps of an extract item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Samples kept.
    pub samples: usize,
}

/// The name of the output object (an [`Extracted`]).
pub const SAMPLES: &str = "samples";

/// The stage's run function.
pub fn run(job: &Job<'_>) -> Result<Outputs, StageError> {
    let item: Item = job.own()?;
    let mut trials = Vec::new();
    for e in &job.manifest("trial")?.entries {
        let id = super::trial_id(&e.id)?;
        if id.arm != item.arm {
            continue;
        }
        let rec: TrialRecord = job.object(e, super::trial::TRANSCRIPT)?;
        trials.push((id, rec));
    }
    let ex = samples::select(&item.arm, &trials);
    let id = job.store.put_json(&super::to_json(&ex))?;
    Ok(Outputs::new(
        [(SAMPLES.to_string(), id)].into(),
        &Summary {
            samples: ex.samples.len(),
        },
    ))
}

/// Every extract item's output, read and checked.
pub fn read_all(job: &Job<'_>) -> Result<Vec<Extracted>, StageError> {
    job.manifest("extract")?
        .entries
        .iter()
        .map(|e| job.object(e, SAMPLES))
        .collect()
}
