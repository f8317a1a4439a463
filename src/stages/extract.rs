//! The `extract` stage: one item per source arm; reads that arm's trial transcripts and keeps
//! the samples [`crate::samples::select`] chooses.

use crate::engine::{Job, Outputs, StageError};
use crate::samples::{self, Extracted};
use crate::workflow::{TrialId, TrialRecord};
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
        let id: TrialId =
            e.id.parse()
                .map_err(|err| StageError::Failed(format!("trial manifest: {err}")))?;
        if id.arm != item.arm {
            continue;
        }
        let rec: TrialRecord = job.object(e, super::trial::TRANSCRIPT)?;
        trials.push((id, rec));
    }
    let ex = samples::select(&item.arm, &trials);
    let id = job
        .store
        .put_json(&serde_json::to_value(&ex).expect("serialises"))?;
    Ok(Outputs {
        objects: [(SAMPLES.to_string(), id)].into(),
        summary: serde_json::to_value(Summary {
            samples: ex.samples.len(),
        })
        .expect("serialises"),
    })
}

/// Every extract item's output, read and checked.
pub fn read_all(job: &Job<'_>) -> Result<Vec<Extracted>, StageError> {
    job.manifest("extract")?
        .entries
        .iter()
        .map(|e| job.object(e, SAMPLES))
        .collect()
}
