//! pipe: the TDD fine-tuning experiment as a make-style, incremental, resumable pipeline over a
//! content-addressed store that several processes and machines can share.
//!
//! ```text
//! pipeline.toml + tasks/*.json ──config──► Config + Tasks
//!        │
//!        ▼
//! stages: the DAG (trial → extract → format → train → convert → eval → report), thin glue
//!        │   declares keys and items; each run function calls a library below
//!        ▼
//! engine: keys, status / explain / build over one plan walk; leases, jobs, early cutoff
//!        │
//!        ▼
//! store: objects (blake3-named) · action records · leases · refs · probes (see store::dirs)
//! ```
//!
//! The modules in layers; a module uses only those in its own layer or below, never above:
//!
//! | layer | modules | job |
//! |---|---|---|
//! | glue | [`stages`], [`inspect`] | what each target keys on and does, in store terms |
//! | engine | [`engine`], [`store`], [`key`], [`progress`] | make-style builds over the content-addressed store; knows nothing of models or tasks |
//! | work | [`workflow`], [`guard`], [`samples`], [`report`], [`stats`] | one trial, its guards, training data, the report — no store |
//! | models | [`chat`] over [`model`] | chat backends; our own model stack (weights, inference, LoRA) — no store |
//! | input | [`config`] | `pipeline.toml` and task files, validated |
//!
//! The library never prints; the `pipe` binary is a thin CLI over it.
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod chat;
pub mod config;
pub mod convert;
pub mod engine;
pub mod guard;
pub mod inspect;
pub mod key;
pub mod model;
pub mod progress;
pub mod report;
pub mod samples;
pub mod stages;
pub mod stats;
pub mod store;
pub mod workflow;

/// Crash-test hook: when `PIPE_FAILPOINT` names this point, the process aborts right here, as a
/// power cut would stop it (no destructors, no flush). `name:N` aborts at the N-th hit.
pub fn failpoint(name: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("PIPE_FAILPOINT").ok()?;
        match v.rsplit_once(':') {
            Some((n, k)) if k.parse::<u64>().is_ok() => Some((n.to_string(), k.parse().ok()?)),
            _ => Some((v, 1)),
        }
    });
    if let Some((point, nth)) = spec
        && point == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth
    {
        std::process::abort();
    }
}
