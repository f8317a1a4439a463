//! A LoRA training step, ours against PyTorch + PEFT, side by side in one run: tokens per
//! second and peak memory on the same shape, batch and length, the same thread count.
//!
//!     cargo bench --bench train_vs_peft                         # SmolLM2-135M, 4 × 256
//!     PIPE_BENCH_GGUF=models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cargo bench --bench train_vs_peft
//!
//! Ours trains the GGUF itself (its base kept in its codes); PEFT trains a model of the same
//! shape in f32, randomly initialised from the same dimensions (`benches/peft_step.py`, in the
//! venv `PIPE_PEFT_VENV`, default `../peft-venv`: `pip install torch transformers peft`).
//! Each side runs in a process of its own (so peak RSS is its own), 2 warm-up steps then
//! `PIPE_BENCH_STEPS` (default 5) timed ones; LoRA r16 α16 on all seven projections, AdamW
//! 2e-4. Env: `PIPE_BENCH_BATCH` (4), `PIPE_BENCH_LEN` (256), `PIPE_BENCH_THREADS` (2),
//! `PIPE_BENCH_ROUNDS` (2: ours, PEFT, ours, PEFT — the machine is noisy), `PIPE_BENCH_BASE`
//! (the base maths to run, e.g. `bf16,quantized`; default: both where the CPU has AMX tiles).

#![allow(clippy::print_stdout)]

use pipe::chat::local::LocalModel;
use pipe::model::train::adamw::{self, AdamW, AdamWConfig};
use pipe::model::train::data::Example;
use pipe::model::train::frozen::BaseMath;
use pipe::model::train::net::{LoraSpec, TrainModel};
use pipe::model::train::trainer;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn peak_rss_mb() -> f64 {
    rss_mb("VmHWM:")
}

fn rss_mb(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One measurement of ours, in this process.
fn ours(gguf: &Path, batch: usize, len: usize, steps: usize, base: BaseMath) -> Value {
    let m = LocalModel::load(gguf).unwrap();
    let _keep = pipe::model::train::alloc::KeepFreed::new();
    let model = TrainModel::new(
        m.transformer(),
        LoraSpec {
            rank: 16,
            alpha: 16.0,
            seed: 1,
            base,
        },
    )
    .unwrap();
    let (loaded_rss, loaded_peak) = (rss_mb("VmRSS:"), peak_rss_mb());
    let vocab = m.transformer().embed.dims()[0] as u64;
    let mut s = 7u64;
    let examples: Vec<Example> = (0..batch)
        .map(|_| Example {
            ids: (0..len)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 33) % vocab) as u32
                })
                .collect(),
            prompt_len: 1,
        })
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    let mut state = trainer::State::fresh(&model).unwrap();
    let mut opt = AdamW::new(state.params.len());
    let cfg = AdamWConfig::default();
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let t = Instant::now();
        let (mut g, _) = trainer::gradients(&model, &refs, batch, 0).unwrap();
        adamw::clip(&mut g, 1.0);
        opt.step(&cfg, 2e-4, &mut state.params, &g);
        trainer::load(&model, &state.params).unwrap();
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    json!({"tokens_per_s": (batch * len) as f64 / median, "step_s": median, "peak_rss_mb": peak_rss_mb(),
           "loaded_rss_mb": loaded_rss, "loading_peak_mb": loaded_peak, "rss_after_mb": rss_mb("VmRSS:")})
}

/// The model's shape, for PEFT: from the GGUF's metadata.
fn shape(gguf: &Path) -> Value {
    let mut f = std::fs::File::open(gguf).unwrap();
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let arch = ct.metadata["general.architecture"]
        .to_string()
        .unwrap()
        .clone();
    let u = |k: &str| ct.metadata[&format!("{arch}.{k}")].to_u32().unwrap();
    let vocab = match &ct.metadata["tokenizer.ggml.tokens"] {
        candle_core::quantized::gguf_file::Value::Array(a) => a.len(),
        _ => panic!("no vocabulary"),
    };
    json!({
        "arch": arch,
        "hidden": u("embedding_length"),
        "layers": u("block_count"),
        "heads": u("attention.head_count"),
        "kv_heads": u("attention.head_count_kv"),
        "intermediate": u("feed_forward_length"),
        "vocab": vocab,
        "tied": !ct.tensor_infos.contains_key("output.weight"),
    })
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gguf = root.join(
        std::env::var("PIPE_BENCH_GGUF")
            .unwrap_or_else(|_| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into()),
    );
    let batch: usize = env("PIPE_BENCH_BATCH", 4);
    let len: usize = env("PIPE_BENCH_LEN", 256);
    let steps: usize = env("PIPE_BENCH_STEPS", 5);
    let threads: usize = env("PIPE_BENCH_THREADS", 2);
    if let Ok(math) = std::env::var("PIPE_BENCH_CHILD") {
        let math = BaseMath::parse(Some(&math)).unwrap();
        println!("{}", ours(&gguf, batch, len, steps, math));
        return;
    }
    // Both ways of computing the base's products where the CPU has AMX tiles (else bf16 is
    // the slow reference, and only the integer kernel runs).
    let maths: Vec<String> = match std::env::var("PIPE_BENCH_BASE") {
        Ok(v) => v.split(',').map(str::to_string).collect(),
        Err(_) if BaseMath::fastest() == BaseMath::Bf16 => vec!["bf16".into(), "quantized".into()],
        Err(_) => vec!["quantized".into()],
    };
    let rounds: usize = env("PIPE_BENCH_ROUNDS", 2);
    let venv = std::env::var("PIPE_PEFT_VENV")
        .unwrap_or_else(|_| root.join("../peft-venv").display().to_string());
    let sh = shape(&gguf);
    println!("shape {sh}, batch {batch} × {len}, {threads} threads, {steps} timed steps");
    let parse = |out: std::process::Output, who: &str| -> Value {
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|_| {
            panic!(
                "{who} failed: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    println!("| round | side | tokens/s | step s | peak RSS MB |\n|---|---|---|---|---|");
    for r in 0..rounds {
        for math in &maths {
            let me = std::env::current_exe().unwrap();
            let o = Command::new(me)
                .env("PIPE_BENCH_CHILD", math)
                .env("CANDLE_NUM_THREADS", threads.to_string())
                .env("RAYON_NUM_THREADS", threads.to_string())
                .output()
                .unwrap();
            let v = parse(o, "ours");
            println!(
                "| {r} | pipe (GGUF base, {math}) | {:.1} | {:.2} | {:.0} |",
                v["tokens_per_s"].as_f64().unwrap(),
                v["step_s"].as_f64().unwrap(),
                v["peak_rss_mb"].as_f64().unwrap()
            );
        }
        let o = Command::new(format!("{venv}/bin/python"))
            .arg(root.join("benches/peft_step.py"))
            .args([
                "--shape",
                &sh.to_string(),
                "--batch",
                &batch.to_string(),
                "--len",
                &len.to_string(),
                "--steps",
                &steps.to_string(),
                "--threads",
                &threads.to_string(),
            ])
            .env("MALLOC_MMAP_MAX_", "0")
            .env("MALLOC_TRIM_THRESHOLD_", "68719476736")
            .output()
            .unwrap();
        let v = parse(o, "PEFT");
        println!(
            "| {r} | PyTorch + PEFT (f32) | {:.1} | {:.2} | {:.0} |",
            v["tokens_per_s"].as_f64().unwrap(),
            v["step_s"].as_f64().unwrap(),
            v["peak_rss_mb"].as_f64().unwrap()
        );
    }
}
