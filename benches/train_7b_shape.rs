//! Does a LoRA training step of a 7B model fit this machine? A model of Qwen2.5-7B's shape with
//! random 4-bit weights (Q4_0 codes, what a q4 GGUF holds) is trained for a step the way the
//! train stage trains (frozen base in its codes, LoRA r16 on all seven projections): peak RSS,
//! build time and tokens/s. PyTorch + PEFT cannot hold this model in f32 here (28 GB of weights).
//!
//!     cargo bench --bench train_7b_shape        # batch 1 × 256; PIPE_BENCH_LEN, PIPE_BENCH_STEPS

#![allow(clippy::print_stdout)]

#[path = "util/mod.rs"]
mod util;
use util::*;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::{DType, Device, Tensor};
use pipe::model::config::Config;
use pipe::model::infer::{Block, Linear, Transformer};
use pipe::model::train::adamw::{self, AdamW, AdamWConfig};
use pipe::model::train::data::Example;
use pipe::model::train::frozen::BaseMath;
use pipe::model::train::net::{LoraSpec, TrainModel};
use pipe::model::train::trainer;
use std::sync::Arc;
use std::time::Instant;

/// A random Q4_0 projection (out, in): a fixed scale, random codes.
fn q4(out: usize, inp: usize, seed: &mut u64) -> Linear {
    let blocks = out * inp / 32;
    let mut raw = Vec::with_capacity(blocks * 18);
    let scale = half::f16::from_f32(0.02).to_le_bytes();
    for _ in 0..blocks {
        raw.extend_from_slice(&scale);
        for _ in 0..2 {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            raw.extend_from_slice(&seed.to_le_bytes());
        }
    }
    let q = qtensor_from_ggml(GgmlDType::Q4_0, &raw, vec![out, inp], &Device::Cpu).unwrap();
    Linear::new(Arc::new(q), None).unwrap()
}

fn main() {
    let len: usize = env_or("PIPE_BENCH_LEN", 256);
    let steps: usize = env_or("PIPE_BENCH_STEPS", 1);
    let (hidden, layers, heads, kv, ffn, vocab) = (3584, 28, 28, 4, 18944, 152064);
    let hd = hidden / heads;
    let config = Config {
        n_layer: layers,
        n_head: heads,
        n_kv_head: kv,
        head_dim: hd,
        hidden,
        eps: 1e-6,
        rope_theta: 1e6,
        rope_neox: true,
        max_seq: 4096,
    };
    let t0 = Instant::now();
    let mut seed = 1u64;
    let ones = Tensor::ones(hidden, DType::F32, &Device::Cpu).unwrap();
    let blocks: Vec<Block> = (0..layers)
        .map(|_| Block {
            attn_norm: ones.clone(),
            proj: [
                q4(hidden, hidden, &mut seed),
                q4(kv * hd, hidden, &mut seed),
                q4(kv * hd, hidden, &mut seed),
                q4(hidden, hidden, &mut seed),
                q4(ffn, hidden, &mut seed),
                q4(ffn, hidden, &mut seed),
                q4(hidden, ffn, &mut seed),
            ],
            ffn_norm: ones.clone(),
        })
        .collect();
    let embed = Tensor::randn(0f32, 0.02, (vocab, hidden), &Device::Cpu).unwrap();
    let head = q4(vocab, hidden, &mut seed);
    let base = Transformer::new(config, embed, blocks, ones.clone(), head).unwrap();
    let _keep = pipe::model::train::alloc::KeepFreed::new();
    let model = TrainModel::new(
        &base,
        LoraSpec {
            rank: 16,
            alpha: 16.0,
            seed: 1,
            base: BaseMath::parse(std::env::var("PIPE_BENCH_BASE").ok().as_deref()).unwrap(),
        },
    )
    .unwrap();
    let built_s = t0.elapsed().as_secs_f64();
    let rss_built = rss_mb("VmRSS:");
    let ex = Example {
        ids: (0..len as u32).map(|i| (i * 7919) % vocab as u32).collect(),
        prompt_len: 1,
    };
    let mut state = trainer::State::fresh(&model).unwrap();
    let mut opt = AdamW::new(state.params.len());
    let mut times = Vec::new();
    for i in 0..steps + 1 {
        let t = Instant::now();
        let (mut g, loss) = trainer::gradients(&model, &[&ex], 1, 0).unwrap();
        adamw::clip(&mut g, 1.0);
        opt.step(&AdamWConfig::default(), 2e-4, &mut state.params, &g);
        trainer::load(&model, &state.params).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "step {i}: {s:.1} s, loss {loss:.3}, RSS {:.0} MB",
            rss_mb("VmRSS:")
        );
        if i >= 1 {
            times.push(s);
        }
    }
    let step = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "Qwen2.5-7B shape, random Q4_0 base, LoRA r16 on 7 projections ({} M trainable), batch 1 × {len}: built in {built_s:.0} s ({rss_built:.0} MB), step {step:.1} s = {:.2} tokens/s, peak RSS {:.0} MB",
        state.params.len() / 1_000_000,
        len as f64 / step,
        rss_mb("VmHWM:")
    );
}
