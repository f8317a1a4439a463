//! pipe: the TDD fine-tuning experiment as a make-style, incremental, resumable pipeline over a
//! content-addressed store that several processes and machines can share.
//!
//! ```text
//! pipeline.toml + tasks/*.json ──① config──► Config + Tasks
//!        │
//!        ▼
//! ② engine: stages (③ stages/) in a DAG; key = blake3(stage, version, params, input outputs)
//!        │   status / explain / build (leases, jobs, early cutoff)
//!        ▼
//! ④ store: objects (blake3-named) · action records · leases · refs · probes (see store::dirs)
//! ```
//!
//! The library never prints; the `pipe` binary is a thin CLI over it.
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod chat;
pub mod config;
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
