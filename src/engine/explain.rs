//! `pipe explain`: exactly which ingredients changed since a stage's last complete build,
//! old → new, looking inside `{"$obj": …}` ingredients (task specs) when both sides are stored.

use super::diff::changes;
use super::plan::{Done, Found, Next, walk};
use super::{Context, Pipeline};
use crate::store::{Store, StoreError};
use serde::Serialize;

/// Why one stage would rebuild.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// Target.
    pub target: String,
    /// `up to date`, `never built`, `changed` or `waiting`.
    pub verdict: String,
    /// The changes, one per line: `path: old → new`, with the items they touch.
    pub changes: Vec<String>,
}

/// Explain `target` and everything it needs.
pub fn explain(
    store: &Store,
    pipeline: &Pipeline,
    cx: &Context<'_>,
    target: &str,
) -> Result<Vec<Explanation>, ExplainError> {
    let closure = pipeline.closure(&[target.to_string()])?;
    let mut out = Vec::new();
    walk(store, pipeline, cx, &closure, |stage, found, _| {
        let target = stage.name().to_string();
        let (verdict, changes, done) = match found {
            Found::Waiting { on, .. } => (
                "waiting",
                vec![format!(
                    "input `{on}` must be rebuilt first; this stage reruns only if its output changes"
                )],
                None,
            ),
            Found::UpToDate { current, .. } => ("up to date", vec![], Some(Done::of(&current))),
            Found::NeedsWork { ev, old: Some(r) } => {
                ("changed", changes(store, cx, &r, &ev)?, None)
            }
            Found::NeedsWork { old: None, .. } => ("never built", vec![], None),
        };
        out.push(Explanation {
            target,
            verdict: verdict.into(),
            changes,
        });
        Ok::<_, ExplainError>(Next::Go(done))
    })?;
    Ok(out)
}

/// Errors of `explain`.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// Unknown target.
    #[error(transparent)]
    Pipeline(#[from] super::PipelineError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}
