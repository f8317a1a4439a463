//! Merging an adapter into a model and writing it as q4_k_m and f16: wall time and peak RSS
//! beside the output's size (the merge streams: memory should stay a small fraction of it).
//! The adapter is random, rank 16 on all seven projections of every block, as train makes.
//!
//!     cargo bench --bench merge          # Qwen2.5-Coder-1.5B (scripts/setup.sh --models all)
//!     PIPE_BENCH_MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf cargo bench --bench merge

#![allow(clippy::print_stdout)]

#[path = "util/mod.rs"]
mod util;
use util::*;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use pipe::convert::{Quantization, merge_gguf};
use pipe::model::config::Proj;
use pipe::model::lora::{Adapter, Target};
use pipe::model::rope::QkOrder;
use std::path::PathBuf;
use std::time::Instant;

fn random(rows: usize, cols: usize, seed: u64, amp: f32) -> Tensor {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amp
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("shape")
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = root.join(
        std::env::var("PIPE_BENCH_MODEL")
            .unwrap_or_else(|_| "models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf".into()),
    );
    let ct = Content::read(&mut std::fs::File::open(&model).expect("the model (setup.sh)"))
        .expect("a GGUF");
    let arch = match &ct.metadata["general.architecture"] {
        Value::String(a) => a.clone(),
        _ => panic!("no architecture"),
    };
    let rank = 16;
    let mut targets = Vec::new();
    for (name, info) in &ct.tensor_infos {
        let Some(rest) = name.strip_prefix("blk.") else {
            continue;
        };
        let mut parts = rest.split('.');
        let (Some(block), Some(proj), Some("weight")) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(block), Some(proj)) = (block.parse::<usize>(), Proj::from_gguf(proj)) else {
            continue;
        };
        let d = info.shape.dims();
        let seed = (block * 8 + proj as usize) as u64;
        targets.push(Target {
            block,
            proj,
            a: random(rank, d[1], seed, 0.05),
            b: random(d[0], rank, seed + 1000, 0.01),
        });
    }
    let adapter = Adapter {
        targets,
        alpha: 16.0,
        rank,
        rslora: false,
        order: QkOrder::of_gguf(&arch),
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    println!(
        "{}: {} adapted projections; RSS {:.0} MB after making the adapter",
        model.file_name().unwrap().to_string_lossy(),
        adapter.targets.len(),
        rss_mb("VmRSS")
    );
    for q in [Quantization::Q4KM, Quantization::F16] {
        let out = dir.path().join(format!("merged-{}.gguf", q.name()));
        let t = Instant::now();
        let stats = merge_gguf(
            &model,
            Some(&adapter),
            q,
            std::fs::File::create(&out).expect("create"),
            |_, _| {},
        )
        .expect("merge");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{:<7} {:6.1} s  {:6.0} MB written  peak RSS so far {:5.0} MB ({:.2}× the output)  types {:?}",
            q.name(),
            secs,
            stats.bytes as f64 / 1e6,
            rss_mb("VmHWM"),
            rss_mb("VmHWM") * 1048576.0 / stats.bytes as f64,
            stats.types
        );
    }
}
