//! Progress callbacks. The library never prints: the CLI implements [`Reporter`] with
//! progress bars, tests with counters.
//!
//! Depends on nothing else of pipe.

use serde_json::Value;

/// Told about a build as it goes. Called from worker threads; every method has a no-op default.
pub trait Reporter: Send + Sync {
    /// A stage starts: `total` items, of which `todo` must be computed (here or elsewhere).
    fn stage_start(&self, _stage: &str, _total: usize, _todo: usize) {}
    /// An item finished: computed by this process (`ours`) or found committed by another.
    fn item_done(&self, _stage: &str, _item: &str, _summary: &Value, _ours: bool) {}
    /// A long item's progress: `done` of `total` units (training steps), and a line about it.
    fn item_progress(&self, _stage: &str, _item: &str, _done: u64, _total: u64, _message: &str) {}
    /// An item failed (not recorded).
    fn item_failed(&self, _stage: &str, _item: &str, _error: &str) {}
    /// A stage finished (or stopped).
    fn stage_done(&self, _stage: &str) {}
}

/// A reporter that reports nothing.
pub struct Silent;
impl Reporter for Silent {}
