//! The sandboxed test guard against bare `python -m pytest` on the same files, measured side by
//! side (runs interleaved, so machine noise hits both alike), and the guard's throughput with
//! 1, 2 and 3 runs in parallel.
//!
//!     cargo bench --bench guard          # needs scripts/setup.sh; PIPE_BENCH_RUNS=20 for more
#![allow(clippy::print_stdout)]

#[path = "util/mod.rs"]
mod util;
use util::env_or;

use pipe::guard::{self, Limits, PyEnv};
use std::path::Path;
use std::time::{Duration, Instant};

const STACK: &str = include_str!("../tests/fixtures/stack_impl.py");
const STACK_TESTS: &str = include_str!("../tests/fixtures/stack_tests.py");

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs: usize = env_or("PIPE_BENCH_RUNS", 10);
    let env = PyEnv::discover(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("run scripts/setup.sh");
    let limits = Limits {
        timeout: Duration::from_secs(30),
        memory_mb: 1024,
        max_processes: 64,
        feedback_bytes: 2000,
    };
    // Warm the page cache for both paths.
    guard::bench_bare_pytest(&env, STACK_TESTS, STACK).unwrap();
    assert!(
        guard::run_tests(&env, &limits, STACK_TESTS, STACK)
            .unwrap()
            .passed
    );

    let (mut bare, mut boxed) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        bare.push(guard::bench_bare_pytest(&env, STACK_TESTS, STACK).unwrap());
        let t = Instant::now();
        assert!(
            guard::run_tests(&env, &limits, STACK_TESTS, STACK)
                .unwrap()
                .passed
        );
        boxed.push(t.elapsed());
    }
    let (b, s) = (median(bare), median(boxed));
    println!(
        "guard: python {} pytest {}, {runs} runs each, interleaved, medians",
        env.python, env.pytest
    );
    println!("| | per run | ratio |");
    println!("|---|---|---|");
    println!(
        "| bare `python -m pytest` | {:.0} ms | 1.00 |",
        b.as_secs_f64() * 1e3
    );
    println!(
        "| sandboxed guard (bwrap + prlimit + verdict channel) | {:.0} ms | {:.2} |",
        s.as_secs_f64() * 1e3,
        s.as_secs_f64() / b.as_secs_f64()
    );
    for par in [1usize, 2, 3] {
        let t = Instant::now();
        std::thread::scope(|sc| {
            for _ in 0..par {
                sc.spawn(|| {
                    for _ in 0..runs {
                        assert!(
                            guard::run_tests(&env, &limits, STACK_TESTS, STACK)
                                .unwrap()
                                .passed
                        );
                    }
                });
            }
        });
        println!(
            "guard runs/s with {par} in parallel: {:.1}",
            (par * runs) as f64 / t.elapsed().as_secs_f64()
        );
    }
}
