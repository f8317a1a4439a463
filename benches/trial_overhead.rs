//! What pipe adds on top of the model server: `pipe build trial` through a real llama.cpp
//! server (xllamacpp, SmolLM2-135M), then the very same requests (same prompts, seeds and
//! sampling, so the same tokens) replayed straight at a fresh server with the same concurrency.
//!
//!     cargo bench --bench trial_overhead            # needs scripts/setup.sh
//!     PIPE_BENCH_TRIALS=4 cargo bench --bench trial_overhead
//!
//! Prints one table: wall times, the ratio, and where pipe's time went (model, guards, rest).

#![allow(clippy::print_stdout)]

#[path = "util/mod.rs"]
mod util;
use util::env_or;

#[path = "../tests/common/mod.rs"]
mod common;

use serde_json::{Value, json};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let trials: u32 = env_or("PIPE_BENCH_TRIALS", 1);
    // One job on one slot: the replay then sees the same prompts in the same order on the same
    // single slot (prompt cache included), so it generates exactly the same tokens.
    let jobs = 1u32;
    let tasks = common::TASKS;

    // 1. pipe, end to end.
    let srv = common::LlamaServer::smollm2(jobs, 4096);
    let p = common::Project::openai(&srv.url, &tasks, trials, 1, "");
    let cfg = std::fs::read_to_string(p.path("pipeline.toml"))
        .unwrap()
        .replace("max_tokens = 512", "max_tokens = 256")
        .replace("request_timeout_s = 2", "request_timeout_s = 120");
    std::fs::write(p.path("pipeline.toml"), cfg).unwrap();
    let t = Instant::now();
    let o = p
        .real(&["build", "trial", "--jobs", &jobs.to_string()])
        .output()
        .unwrap();
    let pipe_wall = t.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(srv);

    // 2. The same requests, straight at a fresh server (an empty prompt cache, like pipe's).
    let recs = p.trials("trial");
    // The order pipe ran them in, from the action records.
    let mut order: Vec<(u64, String)> = walkdir::WalkDir::new(p.path("store/actions-v1"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| serde_json::from_slice::<Value>(&std::fs::read(e.path()).unwrap()).unwrap())
        .filter(|r| r["stage"] == "trial")
        .map(|r| {
            (
                r["started_ms"].as_u64().unwrap(),
                r["item"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    order.sort();
    let mut pipe_tokens = 0u64;
    let (mut model_ms, mut guard_ms, mut requests, mut passed) = (0u64, 0u64, 0usize, 0usize);
    let mut per_trial: Vec<Vec<Value>> = Vec::new();
    for (_, id) in &order {
        let t = &recs[id];
        passed += usize::from(t["passed"] == true);
        let mut reqs = Vec::new();
        for a in t["attempts"].as_array().unwrap() {
            model_ms += a["model_ms"].as_u64().unwrap();
            guard_ms += a["guard_ms"].as_u64().unwrap();
            pipe_tokens += a["completion_tokens"].as_u64().unwrap();
            requests += 1;
            reqs.push(json!({
                "model": "test-model",
                "messages": [
                    {"role": "system", "content": t["system"]},
                    {"role": "user", "content": a["prompt"]},
                ],
                "temperature": 0.7, "top_p": 0.95, "max_tokens": 256,
                "seed": a["seed"], "stream": false,
            }));
        }
        per_trial.push(reqs);
    }
    let srv = common::LlamaServer::smollm2(jobs, 4096);
    let url = format!("{}/v1/chat/completions", srv.url);
    per_trial.reverse(); // popped from the back: first trial first
    let queue = Mutex::new(per_trial);
    let replay_tokens = std::sync::atomic::AtomicU64::new(0);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while let Some(reqs) = queue.lock().unwrap().pop() {
                    for r in reqs {
                        let v: Value = http.post(&url).json(&r).send().unwrap().json().unwrap();
                        assert!(v["choices"][0]["message"].is_object());
                        replay_tokens.fetch_add(
                            v["usage"]["completion_tokens"].as_u64().unwrap(),
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                }
            });
        }
    });
    let alone = t.elapsed();
    let n = recs.len();
    let replay_tokens = replay_tokens.into_inner();
    println!(
        "trial overhead: {n} trials ({passed} passed), {requests} requests, {jobs} jobs, SmolLM2-135M via xllamacpp, 1 thread per slot"
    );
    println!("| | wall | trials/s | tokens generated | tokens/s |");
    println!("|---|---|---|---|---|");
    println!(
        "| pipe build trial | {:.2} s | {:.3} | {pipe_tokens} | {:.1} |",
        pipe_wall.as_secs_f64(),
        n as f64 / pipe_wall.as_secs_f64(),
        pipe_tokens as f64 / pipe_wall.as_secs_f64()
    );
    println!(
        "| same requests, server alone | {:.2} s | {:.3} | {replay_tokens} | {:.1} |",
        alone.as_secs_f64(),
        n as f64 / alone.as_secs_f64(),
        replay_tokens as f64 / alone.as_secs_f64()
    );
    println!(
        "ratio pipe / server alone: {:.3}; summed over trials: model {:.1} s, guards (syntax, pytest, mutants excluded) {:.1} s",
        pipe_wall.as_secs_f64() / alone.as_secs_f64(),
        model_ms as f64 / 1e3,
        guard_ms as f64 / 1e3
    );
}
