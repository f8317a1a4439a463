//! `pipe bench`: no-op `status` and `build report` as whole processes (as a user runs them),
//! on synthetic stores shaped like a finished 6 × 50 experiment and like one with ~100,000 item
//! records. Prints medians; the DVC anchor is measured beside it by `benches/dvc_anchor.sh`.
//! With `--store s3://bucket/prefix` each store is also copied into the bucket (`pipe copy`)
//! and timed there, beside the directory, with the requests each command made.

use super::Exit;
use super::args::{Args, Bench};
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

struct Shape {
    name: &'static str,
    trials: u32,
}

fn write_config(dir: &Path, tasks_dir: &Path, trials: u32, store: &str) -> Result<PathBuf> {
    let default = include_str!("../../pipeline.toml");
    let mut text = String::new();
    for line in default.lines() {
        let t = line.trim_start();
        if t.starts_with("trials ") || t.starts_with("trials=") {
            text.push_str(&format!("trials = {trials}\n"));
        } else if t.starts_with("tasks_dir") {
            text.push_str(&format!(
                "tasks_dir = {:?}\n",
                tasks_dir.display().to_string()
            ));
        } else if t.starts_with("path ") || t.starts_with("path=") {
            text.push_str(&format!("path = {store:?}\n"));
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    let p = dir.join(if store == "store" {
        "pipeline.toml"
    } else {
        "pipeline-bucket.toml"
    });
    std::fs::write(&p, text)?;
    Ok(p)
}

fn pipe_cmd(cfg: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("own path"));
    c.arg("--synthetic").arg("-f").arg(cfg).args(args);
    c.stdout(std::process::Stdio::null())
        .env_remove("PIPE_STORE");
    c
}

/// The bucket requests one run of `pipe <args>` makes.
fn requests_of(cfg: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let log = cfg.with_extension("requests.jsonl");
    let _ = std::fs::remove_file(&log);
    if !pipe_cmd(cfg, args)
        .env("PIPE_REQUEST_LOG", &log)
        .status()?
        .success()
    {
        bail!("pipe {} failed", args.join(" "));
    }
    let line = std::fs::read_to_string(&log)?;
    let v: serde_json::Value = serde_json::from_str(line.trim())?;
    Ok(v["requests"].clone())
}

fn median_ms(cfg: &Path, args: &[&str], runs: usize) -> Result<f64> {
    let mut t = Vec::new();
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let st = pipe_cmd(cfg, args).status()?;
        t.push(start.elapsed().as_secs_f64() * 1000.0);
        if !st.success() {
            bail!("pipe {} failed", args.join(" "));
        }
    }
    t.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    Ok(t[t.len() / 2])
}

pub fn run(args: &Args, b: &Bench) -> Result<Exit> {
    if let Some(gguf) = &b.local {
        return super::bench_local::run(gguf, &b.device, b.tokens, b.runs.min(3), b.json);
    }
    let loaded = super::load(args)?;
    let tasks_dir = std::fs::canonicalize(loaded.dir.join(&loaded.config.experiment.tasks_dir))?;
    let tmp;
    let root = match &b.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    let mut shapes = vec![Shape {
        name: "6x50",
        trials: 50,
    }];
    if b.large {
        // 6 tasks × 2 arms (trial + eval) × 8334 = 100,008 item records.
        shapes.push(Shape {
            name: "100k",
            trials: 8334,
        });
    }
    let mut rows = Vec::new();
    for s in shapes {
        let dir = root.join(s.name);
        std::fs::create_dir_all(&dir)?;
        let cfg = write_config(&dir, &tasks_dir, s.trials, "store")?;
        let start = Instant::now();
        let st = pipe_cmd(&cfg, &["build", "report"])
            .env("PIPE_UNSAFE_NO_FSYNC", "1")
            .status()
            .context("building the benchmark store")?;
        if !st.success() {
            bail!("building the {} store failed", s.name);
        }
        let first_build_s = start.elapsed().as_secs_f64();
        let status_ms = median_ms(&cfg, &["status"], b.runs)?;
        let build_ms = median_ms(&cfg, &["build", "report"], b.runs)?;
        rows.push(serde_json::json!({
            "shape": s.name, "store": "directory", "items": 6 * 2 * s.trials,
            "noop_status_median_ms": status_ms, "noop_build_report_median_ms": build_ms,
            "first_build_s": first_build_s, "runs": b.runs,
        }));
        if let Some(url) = args.store.as_deref().filter(|u| u.contains("://")) {
            let url = format!("{}/{}", url.trim_end_matches('/'), s.name);
            let start = Instant::now();
            let st = pipe_cmd(&cfg, &["copy", "--to", &url, "-j", "16"])
                .status()
                .context("copying the benchmark store into the bucket")?;
            if !st.success() {
                bail!("copying the {} store into {url} failed", s.name);
            }
            let copy_s = start.elapsed().as_secs_f64();
            let bcfg = write_config(&dir, &tasks_dir, s.trials, &url)?;
            let status_ms = median_ms(&bcfg, &["status"], b.runs)?;
            let build_ms = median_ms(&bcfg, &["build", "report"], b.runs)?;
            rows.push(serde_json::json!({
                "shape": s.name, "store": url, "items": 6 * 2 * s.trials,
                "noop_status_median_ms": status_ms, "noop_build_report_median_ms": build_ms,
                "copy_s": copy_s, "runs": b.runs,
                "noop_status_requests": requests_of(&bcfg, &["status"])?,
                "noop_build_report_requests": requests_of(&bcfg, &["build", "report"])?,
            }));
        }
    }
    if b.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<6} {:<10} {:>8} {:>18} {:>24}",
            "shape", "store", "items", "no-op status ms", "no-op build report ms"
        );
        for r in &rows {
            let store = r["store"].as_str().unwrap_or("");
            let kind = if store.contains("://") {
                "bucket"
            } else {
                "directory"
            };
            println!(
                "{:<6} {:<10} {:>8} {:>18.1} {:>24.1}",
                r["shape"].as_str().unwrap_or(""),
                kind,
                r["items"],
                r["noop_status_median_ms"].as_f64().unwrap_or(f64::NAN),
                r["noop_build_report_median_ms"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            );
        }
        for r in rows.iter().filter(|r| r.get("copy_s").is_some()) {
            println!(
                "{} on the bucket: copied in {:.1} s; requests of a no-op status {}, of a no-op build report {}",
                r["shape"].as_str().unwrap_or(""),
                r["copy_s"].as_f64().unwrap_or(f64::NAN),
                r["noop_status_requests"],
                r["noop_build_report_requests"]
            );
        }
        println!(
            "(medians of {} whole-process runs; compare with benches/dvc_anchor.sh run beside it)",
            b.runs
        );
    }
    if b.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(Exit::Ok)
}

fn tempfile_dir() -> Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("pipe-bench-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
