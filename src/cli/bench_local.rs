//! `pipe bench --local <GGUF>`: the local backend's speed on this machine — prompt tokens/s,
//! generation tokens/s of one sequence, and total tokens/s of batches of 4 and 8 different
//! prompts (what concurrent trials get). `benches/local_vs_llamacpp.rs` sets it beside
//! llama.cpp; this one runs anywhere the binary does, a GPU machine included.

use super::Exit;
use anyhow::{Context as _, Result};
use candle_core::Device;
use candle_transformers::generation::Sampling;
use pipe::chat::local::{GenRequest, LocalModel};
use pipe::chat::{Message, Role};
use pipe::model::source::Source;
use std::path::Path;
use std::time::Instant;

const ASKS: [&str; 8] = [
    "Write pytest tests for a Stack class with push, pop, peek and size.",
    "Implement an LRU cache class in Python with get and put.",
    "Write a Python function that checks whether a password is strong.",
    "Write a Python class for a FIFO queue with enqueue and dequeue.",
    "Write pytest tests for a calculator that evaluates '2 + 3 * 4'.",
    "Implement a tiny template engine that replaces {{name}} placeholders.",
    "Write a Python function that merges two sorted lists.",
    "Write pytest tests for a function that parses ISO dates.",
];

fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0)
            .context("opening CUDA device 0 (this binary needs the `cuda` feature)"),
        other => anyhow::bail!("unknown device {other:?}: use cpu or cuda"),
    }
}

/// Best (largest) of `runs` measurements: on a shared machine noise only ever slows.
fn best(runs: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut b: f64 = 0.0;
    for _ in 0..runs.max(1) {
        b = b.max(f()?);
    }
    Ok(b)
}

pub fn run(gguf: &Path, dev: &str, tokens: usize, runs: usize, json: bool) -> Result<Exit> {
    let device = device(dev)?;
    let source = if gguf.is_dir() {
        Source::HfDir(gguf.to_path_buf())
    } else {
        Source::Gguf(gguf.to_path_buf())
    };
    let t = Instant::now();
    let m = LocalModel::open_on(&source, None, &device)
        .with_context(|| format!("loading {}", gguf.display()))?;
    let load_s = t.elapsed().as_secs_f64();
    let reqs: Vec<GenRequest> = ASKS
        .iter()
        .map(|a| -> Result<GenRequest> {
            let text = m.render(&[
                Message::new(Role::System, "You are a careful Python programmer."),
                Message::new(Role::User, *a),
            ])?;
            Ok(GenRequest {
                prompt: m.tokenizer().encode(&text)?,
                max_tokens: tokens,
                sampling: Sampling::ArgMax,
                seed: 0,
            })
        })
        .collect::<Result<_>>()?;
    // Warm-up (CUDA compiles its kernels on first use).
    m.generate_batch(&[GenRequest {
        max_tokens: 4,
        ..reqs[0].clone()
    }])?;
    let prompt = &reqs[0].prompt;
    let mut prefill_s = f64::MAX;
    let prompt_tps = best(runs, || {
        let t = Instant::now();
        m.next_logits(prompt)?;
        let s = t.elapsed().as_secs_f64();
        prefill_s = prefill_s.min(s);
        Ok(prompt.len() as f64 / s)
    })?;
    let gen_tps = best(runs, || {
        let t = Instant::now();
        let g = m.generate_batch(std::slice::from_ref(&reqs[0]))?;
        let s = t.elapsed().as_secs_f64() - prefill_s;
        Ok(g[0].ids.len() as f64 / s.max(1e-9))
    })?;
    let batch = |n: usize| {
        best(runs, || {
            let t = Instant::now();
            let g = m.generate_batch(&reqs[..n])?;
            let total: usize = g.iter().map(|g| g.ids.len()).sum();
            Ok(total as f64 / t.elapsed().as_secs_f64())
        })
    };
    // Off the CPU, the same model on the CPU must agree: next-token logits and greedy tokens.
    let agreement = if device.is_cpu() {
        serde_json::Value::Null
    } else {
        let cpu = LocalModel::open_on(&source, None, &Device::Cpu)?;
        let (a, b) = (m.next_logits(prompt)?, cpu.next_logits(prompt)?);
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let spread =
            b.iter().copied().fold(f32::MIN, f32::max) - b.iter().copied().fold(f32::MAX, f32::min);
        let req = GenRequest {
            max_tokens: 32,
            ..reqs[0].clone()
        };
        let (ga, gb) = (
            m.generate_batch(std::slice::from_ref(&req))?.remove(0).ids,
            cpu.generate_batch(std::slice::from_ref(&req))?
                .remove(0)
                .ids,
        );
        let agree = ga.iter().zip(&gb).take_while(|(x, y)| x == y).count();
        serde_json::json!({
            "max_abs_logit_diff": worst,
            "logit_range": spread,
            "greedy_agree": agree,
            "greedy_len": ga.len().min(gb.len()),
        })
    };
    let one_tps = batch(1)?;
    let b4 = batch(4)?;
    let b8 = batch(8)?;
    let row = serde_json::json!({
        "model": gguf.display().to_string(),
        "device": dev,
        "load_s": load_s,
        "prompt_tokens": prompt.len(),
        "prompt_tok_s": prompt_tps,
        "gen_tok_s": gen_tps,
        "total_tok_s_1": one_tps,
        "total_tok_s_4": b4,
        "total_tok_s_8": b8,
        "batch4_vs_1": b4 / one_tps,
        "batch8_vs_1": b8 / one_tps,
        "vs_cpu": agreement,
    });
    #[allow(clippy::print_stdout)]
    if json {
        println!("{}", serde_json::to_string_pretty(&row)?);
    } else {
        println!(
            "{} on {dev} (loaded in {load_s:.1} s), prompt {} tokens, ≤ {tokens} generated per sequence, best of {runs}",
            gguf.display(),
            prompt.len()
        );
        println!("prompt          {prompt_tps:>8.1} tok/s");
        println!("generation      {gen_tps:>8.1} tok/s (one sequence)");
        println!("batch of 1      {one_tps:>8.1} tok/s total (prompt included)");
        println!(
            "batch of 4      {b4:>8.1} tok/s total  ({:.2}× one)",
            b4 / one_tps
        );
        println!(
            "batch of 8      {b8:>8.1} tok/s total  ({:.2}× one)",
            b8 / one_tps
        );
    }
    Ok(Exit::Ok)
}
