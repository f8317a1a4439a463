//! A team on one bucket: trials per second with 1, 2 and 4 `pipe build trial` workers sharing a
//! bucket on a real S3-compatible server (moto, on loopback), against a scripted model server
//! that answers after a fixed latency — and the bucket requests each trial costs.
//!
//!     cargo bench --bench team_store                      # needs scripts/setup.sh
//!     PIPE_BENCH_TRIALS=8 PIPE_BENCH_LATENCY_MS=1000 cargo bench --bench team_store
//!
//! Each worker runs `-j 1`, so with N workers N trials are in flight: the ideal is N× one
//! worker's rate. Every trial is a real one: tests and implementation asked of the server, the
//! implementation's pytest run in the sandbox. The implementation fails its tests, so that no
//! trial measures test strength (a passed trial runs its tests against a dozen mutants: CPU
//! work that four workers cannot scale on this 2-core machine, and that says nothing about the
//! store, which is what this measures).

#![allow(clippy::print_stdout)]

#[path = "util/mod.rs"]
mod util;
use util::env_or;

#[path = "../tests/common/mod.rs"]
mod common;

use common::s3::Moto;
use common::{Project, TASKS, slow_stack_server};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let trials: u32 = env_or("PIPE_BENCH_TRIALS", 6);
    let latency = Duration::from_millis(env_or("PIPE_BENCH_LATENCY_MS", 1000));
    let moto = Arc::new(Moto::start());
    let server = slow_stack_server(latency, "class Stack:\n    pass\n");
    let n_trials = 6 * trials as usize;
    println!(
        "{n_trials} trials (6 tasks × {trials}), model latency {} ms a request, each worker -j 1",
        latency.as_millis()
    );
    println!(
        "{:>7} {:>9} {:>9} {:>8} {:>8} {:>8}  requests per trial (put/get/head/list/delete)",
        "workers", "wall s", "trials/s", "speed-up", "model s", "guard s"
    );
    let counts: String = env_or("PIPE_BENCH_WORKERS", "1,2,4".to_string());
    let mut base = None;
    for workers in counts
        .split(',')
        .map(|w| w.trim().parse::<usize>().unwrap())
    {
        let p = Project::openai(&server.url, &TASKS, trials, 0, "").on_bucket(&moto);
        p.baseline_only();
        p.set("sampling.request_timeout_s", "60");
        let log = p.path("requests.jsonl");
        let t0 = Instant::now();
        let children: Vec<_> = (0..workers)
            .map(|_| {
                p.real(&["build", "trial", "-j", "1"])
                    .env("PIPE_REQUEST_LOG", &log)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "a worker failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let wall = t0.elapsed().as_secs_f64();
        assert_eq!(p.records().len(), n_trials);
        let rate = n_trials as f64 / wall;
        let speedup = rate / *base.get_or_insert(rate);
        let mut sum = [0u64; 5];
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            for (i, k) in ["put", "get", "head", "list", "delete"].iter().enumerate() {
                sum[i] += v["requests"][k].as_u64().unwrap();
            }
        }
        // Where a trial's time went, summed over its attempts (means per trial).
        let (mut model, mut guard) = (0u64, 0u64);
        for t in p.trials("trial").values() {
            for a in t["attempts"].as_array().unwrap() {
                model += a["model_ms"].as_u64().unwrap_or(0);
                guard += a["guard_ms"].as_u64().unwrap_or(0);
            }
        }
        let (model, guard) = (
            model as f64 / 1000.0 / n_trials as f64,
            guard as f64 / 1000.0 / n_trials as f64,
        );
        // The records' own times: how long an item took from lease to commit, and the gaps a
        // worker spent between one item's commit and the next one's start.
        let store = p.store();
        let mut recs = p.all_records(&store);
        recs.sort_by_key(|r| (r.producer.pid, r.started_ms));
        let item_s: f64 = recs
            .iter()
            .map(|r| (r.finished_ms - r.started_ms) as f64 / 1000.0)
            .sum::<f64>()
            / recs.len() as f64;
        let gaps: Vec<f64> = recs
            .windows(2)
            .filter(|w| w[0].producer.pid == w[1].producer.pid)
            .map(|w| w[1].started_ms.saturating_sub(w[0].finished_ms) as f64 / 1000.0)
            .collect();
        let gap_s = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
        println!(
            "    item {item_s:.2} s from start to commit; {gap_s:.2} s between items of a worker"
        );
        let per: Vec<String> = sum
            .iter()
            .map(|n| format!("{:.1}", *n as f64 / n_trials as f64))
            .collect();
        println!(
            "{workers:>7} {wall:>9.1} {rate:>9.3} {speedup:>7.2}× {model:>8.2} {guard:>8.2}  {} (total {:.1})",
            per.join("/"),
            sum.iter().sum::<u64>() as f64 / n_trials as f64
        );
    }
}
