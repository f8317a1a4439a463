//! Our q4_k_m beside llama.cpp's own quantiser, on the same f16 input: wall time and peak RSS of
//! each, and how far each q4_k_m's next-token distributions are from the f16 model's (mean KL
//! over fixed prompts, computed by our local backend on all three files).
//!
//!     PIPE_BENCH_F16=/path/model-f16.gguf PIPE_BENCH_LLAMA_PY=/path/venv/bin/python \
//!         cargo bench --bench quantize_vs_llamacpp
//!
//! `PIPE_BENCH_LLAMA_PY` is a Python with `llama-cpp-python` (it builds llama.cpp from source:
//! `pip install llama-cpp-python`, ≈ 7 minutes on 2 cores); `PIPE_BENCH_F16` an f16 GGUF, e.g.
//! convert's `model-f16.gguf` (`pipe export dir`). `PIPE_BENCH_KEEP=dir` keeps both q4_k_m
//! files there (for `scripts/kquant_vs_llamacpp.py models`).

#![allow(clippy::print_stdout)]

#[path = "util/mod.rs"]
mod util;
use util::*;

use pipe::chat::local::LocalModel;
use pipe::chat::{Message, Role};
use pipe::convert::{Quantization, merge_gguf};
use std::path::PathBuf;
use std::time::Instant;

const QUANTIZE_PY: &str = r#"
import resource, sys, time
import llama_cpp
src, dst = sys.argv[1].encode(), sys.argv[2].encode()
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
p.nthread = 2
t = time.perf_counter()
rc = llama_cpp.llama_model_quantize(src, dst, p)
dt = time.perf_counter() - t
print(rc, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"#;

fn main() {
    let f16 = PathBuf::from(std::env::var("PIPE_BENCH_F16").expect("PIPE_BENCH_F16: an f16 GGUF"));
    let py =
        std::env::var("PIPE_BENCH_LLAMA_PY").expect("PIPE_BENCH_LLAMA_PY: python with llama_cpp");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::env::var_os("PIPE_BENCH_KEEP").map_or(dir.path().to_path_buf(), PathBuf::from);
    let ours = out.join("ours-q4_k_m.gguf");
    let theirs = out.join("llamacpp-q4_k_m.gguf");

    let t = Instant::now();
    let stats = merge_gguf(
        &f16,
        None,
        Quantization::Q4KM,
        std::fs::File::create(&ours).expect("create"),
        |_, _| {},
    )
    .expect("convert");
    let our_s = t.elapsed().as_secs_f64();
    let our_rss = rss_mb("VmHWM");

    let out = std::process::Command::new(&py)
        .args(["-c", QUANTIZE_PY])
        .arg(&f16)
        .arg(&theirs)
        .output()
        .expect("run llama.cpp's quantiser");
    let line = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert!(
        f.len() == 3 && f[0] == 0.0,
        "llama.cpp: {line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let their_bytes = std::fs::metadata(&theirs).expect("their output").len();
    println!(
        "ours      {our_s:6.1} s  peak RSS {our_rss:6.0} MB  {:6.0} MB written",
        stats.bytes as f64 / 1e6
    );
    println!(
        "llama.cpp {:6.1} s  peak RSS {:6.0} MB  {:6.0} MB written   (time ratio ours/theirs {:.2})",
        f[1],
        f[2],
        their_bytes as f64 / 1e6,
        our_s / f[1]
    );

    let models = [&f16, &ours, &theirs].map(|p| LocalModel::load(p).expect("load"));
    let prompts = [
        "Write pytest tests for a Stack class with push, pop and peek.",
        "Implement an LRU cache with get and put in Python.",
        "Write a Calculator class with add, subtract, multiply and divide.",
        "def fibonacci(n):",
        "Explain what a queue is.",
        "Write a function that checks whether a password is strong.",
    ];
    let (mut k_ours, mut k_theirs) = (0.0, 0.0);
    for text in prompts {
        let t = models[0]
            .render(&[Message::new(Role::User, text)])
            .expect("template");
        let ids = models[0].tokenizer().encode(&t).expect("tokens");
        let p = softmax(&models[0].next_logits(&ids).expect("f16"));
        k_ours +=
            kl(&p, &softmax(&models[1].next_logits(&ids).expect("ours"))) / prompts.len() as f64;
        k_theirs +=
            kl(&p, &softmax(&models[2].next_logits(&ids).expect("theirs"))) / prompts.len() as f64;
    }
    println!(
        "mean KL against the f16 over {} prompts: ours {k_ours:.5}, llama.cpp {k_theirs:.5} (ratio {:.2})",
        prompts.len(),
        k_ours / k_theirs
    );
}
