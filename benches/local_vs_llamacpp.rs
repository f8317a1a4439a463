//! The local backend (candle, in process) against llama.cpp (xllamacpp) on the same GGUF, the
//! same prompt ids and the same thread count: prompt (prefill) and generation speed.
//!
//!     cargo bench --bench local_vs_llamacpp                 # SmolLM2-135M, 1 thread
//!     PIPE_BENCH_GGUF=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf PIPE_BENCH_THREADS=2 \
//!         cargo bench --bench local_vs_llamacpp
//!
//! Prints one table. Each side runs the prompt once to warm up, then `PIPE_BENCH_REPS` times
//! (default 3); the best run is reported, since on a shared machine noise only ever slows.
//! Then batching: four different prompts generated one after another, then as one batch, at
//! temperature 0 (the tokens must be the same both ways), in total tokens per second.

#![allow(clippy::print_stdout)]

#[path = "util/mod.rs"]
mod util;
use util::env_or;

#[path = "../tests/common/mod.rs"]
mod common;

use candle_transformers::generation::Sampling;
use pipe::chat::local::{GenRequest, LocalModel};
use pipe::chat::{Message, Role};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gguf = root.join(
        std::env::var("PIPE_BENCH_GGUF")
            .unwrap_or_else(|_| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into()),
    );
    let threads: usize = env_or("PIPE_BENCH_THREADS", 1);
    let reps: usize = env_or("PIPE_BENCH_REPS", 3);
    let n_gen = 128;
    // candle sizes its thread pools from the environment, once, on first use.
    // SAFETY: no other thread exists yet.
    unsafe {
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }

    let t = Instant::now();
    let m = LocalModel::load(&gguf).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let text = m
        .render(&[
            Message::new(Role::System, "You are a careful Python programmer."),
            Message::new(
                Role::User,
                "Write pytest tests for a Stack class with push, pop, peek and size. \
                 pop and peek on an empty stack raise IndexError. Cover every method.",
            ),
        ])
        .unwrap();
    let prompt = m.tokenizer().encode(&text).unwrap();

    // Ours: prefill alone, then prefill + generation; generation speed from the difference.
    let mut ours_pp: f64 = 0.0;
    let mut ours_tg: f64 = 0.0;
    let mut ours_n = 0;
    for rep in 0..=reps {
        let t = Instant::now();
        m.next_logits(&prompt).unwrap();
        let pp = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let g = m.generate(&prompt, n_gen, Sampling::ArgMax, 0).unwrap();
        let total = t.elapsed().as_secs_f64();
        if rep > 0 {
            ours_pp = ours_pp.max(prompt.len() as f64 / pp);
            ours_tg = ours_tg.max(g.ids.len() as f64 / (total - pp).max(1e-9));
            ours_n = g.ids.len();
        }
    }

    let srv = common::LlamaServer::start(gguf.to_str().unwrap(), threads as u32, 2048, 1, &[]);
    let http = reqwest::blocking::Client::new();
    let mut theirs_pp: f64 = 0.0;
    let mut theirs_tg: f64 = 0.0;
    let mut theirs_n = 0;
    for rep in 0..=reps {
        let v: Value = http
            .post(format!("{}/completion", srv.url))
            .json(&json!({
                "prompt": prompt,
                "n_predict": ours_n.max(1),
                "temperature": 0.0,
                "cache_prompt": false,
                "ignore_eos": true,
            }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if rep > 0 {
            let tm = &v["timings"];
            theirs_pp = theirs_pp.max(tm["prompt_per_second"].as_f64().unwrap());
            theirs_tg = theirs_tg.max(tm["predicted_per_second"].as_f64().unwrap());
            theirs_n = tm["predicted_n"].as_u64().unwrap();
        }
    }
    println!(
        "{} — {threads} thread(s), prompt {} tokens, best of {reps}",
        gguf.file_name().unwrap().to_string_lossy(),
        prompt.len()
    );
    println!("ours loaded in {load_s:.2} s");
    println!(
        "{:<22} {:>14} {:>14} {:>6}",
        "", "prompt tok/s", "gen tok/s", "gen n"
    );
    println!(
        "{:<22} {:>14.1} {:>14.1} {:>6}",
        "pipe local (candle)", ours_pp, ours_tg, ours_n
    );
    println!(
        "{:<22} {:>14.1} {:>14.1} {:>6}",
        "llama.cpp (xllamacpp)", theirs_pp, theirs_tg, theirs_n
    );
    println!(
        "{:<22} {:>14.2} {:>14.2}",
        "ours / llama.cpp",
        ours_pp / theirs_pp,
        ours_tg / theirs_tg
    );

    batching(&m, threads, reps);
}

/// Four prompts alone, one after another, then as one batch.
fn batching(m: &LocalModel, threads: usize, reps: usize) {
    let asks = [
        "Write pytest tests for a Stack class with push, pop, peek and size.",
        "Implement an LRU cache class in Python with get and put.",
        "Write a Python function that checks whether a password is strong.",
        "Explain in two sentences what a queue is, then write one in Python.",
    ];
    let reqs: Vec<GenRequest> = asks
        .iter()
        .map(|a| {
            let text = m.render(&[Message::new(Role::User, *a)]).unwrap();
            GenRequest {
                prompt: m.tokenizer().encode(&text).unwrap(),
                max_tokens: 64,
                sampling: Sampling::ArgMax,
                seed: 0,
            }
        })
        .collect();
    let mut alone_tps: f64 = 0.0;
    let mut batch_tps: f64 = 0.0;
    let mut same = true;
    for rep in 0..=reps {
        let t = Instant::now();
        let alone: Vec<_> = reqs
            .iter()
            .map(|r| m.generate_batch(std::slice::from_ref(r)).unwrap().remove(0))
            .collect();
        let alone_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let batch = m.generate_batch(&reqs).unwrap();
        let batch_s = t.elapsed().as_secs_f64();
        let n: usize = alone.iter().map(|g| g.ids.len()).sum();
        let nb: usize = batch.iter().map(|g| g.ids.len()).sum();
        same &= alone == batch;
        if rep > 0 {
            alone_tps = alone_tps.max(n as f64 / alone_s);
            batch_tps = batch_tps.max(nb as f64 / batch_s);
        }
    }
    println!();
    println!(
        "batching, {threads} thread(s): 4 prompts × ≤ 64 tokens, total generated tok/s (prompts included)"
    );
    println!("{:<22} {:>14.1}", "one at a time", alone_tps);
    println!("{:<22} {:>14.1}", "batch of 4", batch_tps);
    println!(
        "{:<22} {:>14.2}   same tokens both ways: {same}",
        "batch / alone",
        batch_tps / alone_tps
    );
}
