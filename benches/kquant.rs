//! Quantising throughput on one core: our encoders (llama.cpp's scale search) beside candle's
//! `QTensor::quantize` (rounding), per type, in MB/s of f32 input.
//!
//!     RAYON_NUM_THREADS=1 cargo bench --bench kquant
//!
//! `PIPE_BENCH_ROWS` (default 512) rows of 4096 weight-like values (normal, one in 100 an
//! outlier).

#![allow(clippy::print_stdout)]

#[path = "util/mod.rs"]
mod util;
use util::*;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use pipe::convert::kquant;
use std::time::Instant;

const COLS: usize = 4096;

fn rows(n: usize) -> Vec<f32> {
    // xorshift64*: a fixed, dependency-free stream of weight-like values.
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut u = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f32 / (1u64 << 53) as f32
    };
    (0..n * COLS)
        .map(|_| {
            let v = ((0..12).map(|_| u()).sum::<f32>() - 6.0) * 0.02;
            if u() < 0.01 { v * 8.0 } else { v }
        })
        .collect()
}

/// Best of three, seconds.
fn time(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let n = env_or("PIPE_BENCH_ROWS", 512usize);
    let xs = rows(n);
    let t = Tensor::from_slice(&xs, (n, COLS), &Device::Cpu).expect("tensor");
    let mb = (xs.len() * 4) as f64 / 1e6;
    for dtype in [
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
    ] {
        let ours = time(|| {
            std::hint::black_box(kquant::quantize(&xs, dtype).expect("ours"));
        });
        let candle = time(|| {
            std::hint::black_box(QTensor::quantize(&t, dtype).expect("candle"));
        });
        println!(
            "{:5} ours {:7.1} MB/s   candle {:7.1} MB/s   (ours takes {:.2}× candle's time)",
            format!("{dtype:?}"),
            mb / ours,
            mb / candle,
            ours / candle
        );
    }
}
