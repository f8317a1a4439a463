//! The command line: clap arguments, rendering and exit codes. Holds no pipeline logic.

mod args;
mod bench;
mod bench_local;
mod progress;
mod render;
mod term;

use anyhow::{Context as _, Result};
use args::{Args, Cmd};
use clap::Parser;
use pipe::config::{self, Loaded};
use pipe::engine::{self, BuildOptions, Context};
use pipe::stages::runtime::{Probe, Runtime};
use pipe::stages::{self, Mode};
use pipe::store::{Store, StoreOptions};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Exit codes: 0 success, 1 the work failed (a build, a verify), 2 bad input.
pub(crate) enum Exit {
    Ok,
    Failed,
}

/// Bad input (config, tasks, arguments): exit 2, nothing written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadInput(pub String);

pub fn main() -> ExitCode {
    let args = Args::parse();
    local_threads(&args);
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(render::colour())
        .fmt_fields(term::log_fields())
        .init();
    let code = match run(args) {
        Ok(Exit::Ok) => ExitCode::SUCCESS,
        Ok(Exit::Failed) => ExitCode::from(1),
        Err(e) => render::error(&e),
    };
    log_requests();
    code
}

/// With `PIPE_REQUEST_LOG=<file>`, append this process's bucket requests to it as one JSON
/// line (`pipe bench` and a team pricing its bucket read them).
fn log_requests() {
    let Some(path) = std::env::var_os("PIPE_REQUEST_LOG") else {
        return;
    };
    let line = serde_json::json!({
        "pid": std::process::id(),
        "requests": pipe::store::backend::bucket::process_requests(),
    });
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
    if let Err(e) = res {
        tracing::warn!(
            "PIPE_REQUEST_LOG {}: {e}",
            std::path::Path::new(&path).display()
        );
    }
}

/// candle sizes its CPU thread pools once per process, from the environment: hand it the
/// pipeline's `threads` for local models before any thread exists. An explicit
/// `CANDLE_NUM_THREADS` wins; a config that does not load is reported later by the command.
fn local_threads(args: &Args) {
    if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        return;
    }
    let Ok(l) = config::load(&args.file) else {
        return;
    };
    let threads = l.config.models.values().filter_map(|m| m.threads).max();
    if let Some(t) = threads.filter(|t| *t > 0) {
        // SAFETY: called first thing in `main`, before any other thread is started.
        unsafe {
            std::env::set_var("CANDLE_NUM_THREADS", t.to_string());
            std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        }
    }
}

/// A model step allocates and frees buffers of megabytes; glibc returns blocks that large to
/// the kernel on free, and the next step pays page faults to get them back (measured: 18% of
/// reading a 1,500-token prompt). Keep them in the process instead.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only tunes the allocator; called first thing in `main`.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Items at once when `--jobs` is not given: one per CPU; but a local model decodes
/// concurrent trials as one batch (up to `MAX_BATCH` sequences, several times the throughput of
/// one), so with one there are at least that many.
fn default_jobs(l: &Loaded) -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let local = l
        .config
        .models
        .values()
        .any(|m| *m.backend.get_ref() == pipe::config::Backend::Local);
    if local {
        cpus.max(pipe::chat::local::MAX_BATCH)
    } else {
        cpus
    }
}

fn load(args: &Args) -> Result<Loaded> {
    config::load(&args.file).map_err(|e| BadInput(e.to_string()).into())
}

fn open_store(args: &Args, l: &Loaded) -> Result<Store> {
    let at = l.store_location(args.store.as_deref());
    Store::open_at(&at, store_options(l)).with_context(|| format!("opening the store at {at}"))
}

fn store_options(l: &Loaded) -> StoreOptions {
    StoreOptions {
        lease_ttl: Duration::from_secs_f64(l.config.store.lease_ttl_s.max(0.1)),
        fsync: std::env::var("PIPE_UNSAFE_NO_FSYNC").is_err(),
        aws: Vec::new(),
    }
}

fn mode(args: &Args) -> Mode {
    if args.synthetic {
        Mode::Synthetic
    } else {
        Mode::Real
    }
}

fn run(args: Args) -> Result<Exit> {
    if let Cmd::Bench(b) = &args.cmd {
        return bench::run(&args, b);
    }
    let loaded = load(&args)?;
    let cx = Context::new(&loaded);
    // A pipeline whose runtime asks no server: enough to check targets and for the commands
    // that only read (they take model identities from what the last build cached).
    let offline = |store: Option<&Store>| {
        let probe = match mode(&args) {
            Mode::Synthetic => Probe::ConfigOnly,
            Mode::Real => Probe::CacheOnly,
        };
        stages::pipeline(mode(&args), Arc::new(Runtime::new(&loaded, store, probe)))
    };
    match &args.cmd {
        Cmd::Build(b) => {
            // Reject unknown targets before touching the store.
            let scope = stages::BuildScope::new(mode(&args), &loaded, &b.targets)
                .map_err(|e| BadInput(e.to_string()))?;
            let store = open_store(&args, &loaded)?;
            let pipeline = stages::pipeline(
                mode(&args),
                Arc::new(Runtime::new(&loaded, Some(&store), scope.probe())),
            );
            let opts = BuildOptions {
                jobs: b.jobs.unwrap_or_else(|| default_jobs(&loaded)),
                dry_run: b.dry_run,
                keep_going: b.keep_going,
            };
            let reporter = progress::Bars::new(b.json);
            let rep = engine::build(&store, &pipeline, &cx, &b.targets, &opts, &reporter)?;
            drop(reporter);
            render::build(&rep, b.json, b.dry_run);
            if !b.dry_run && rep.failures.is_empty() {
                let files = scope
                    .publish(&store, &loaded)
                    .context("writing the report files")?;
                render::exported(&files, b.json);
            }
            Ok(if rep.failures.is_empty() {
                Exit::Ok
            } else {
                Exit::Failed
            })
        }
        Cmd::Status(s) => {
            let store = open_store(&args, &loaded)?;
            let pipeline = offline(Some(&store));
            let st = engine::status(&store, &pipeline, &cx)?;
            render::status(&st, s.json);
            Ok(Exit::Ok)
        }
        Cmd::Explain(e) => {
            offline(None)
                .closure(std::slice::from_ref(&e.target))
                .map_err(|err| BadInput(err.to_string()))?;
            let store = open_store(&args, &loaded)?;
            let pipeline = offline(Some(&store));
            let ex = engine::explain(&store, &pipeline, &cx, &e.target)?;
            render::explain(&ex, e.json);
            Ok(Exit::Ok)
        }
        Cmd::Show(s) => {
            let store = open_store(&args, &loaded)?;
            let pipeline = offline(Some(&store));
            let v = pipe::inspect::show(&store, &pipeline, &cx, &s.what)?;
            render::show(&v, s.json);
            Ok(Exit::Ok)
        }
        Cmd::Verify(v) => {
            let store = open_store(&args, &loaded)?;
            let rep = store.verify()?;
            render::verify(&rep, v.json);
            Ok(if rep.is_clean() {
                Exit::Ok
            } else {
                Exit::Failed
            })
        }
        Cmd::Gc(g) => {
            let store = open_store(&args, &loaded)?;
            let rep = store.gc(g.grace, g.dry_run)?;
            render::gc(&rep, g.json, g.dry_run);
            Ok(Exit::Ok)
        }
        Cmd::Copy(c) => {
            let store = open_store(&args, &loaded)?;
            let to = pipe::store::backend::Location::parse(&c.to, &std::env::current_dir()?);
            let dest = Store::open_at(&to, store_options(&loaded))
                .with_context(|| format!("opening {to}"))?;
            let bar = render::counter_bar("copy", c.json);
            let rep = store
                .copy_to(&dest, c.jobs, &|done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                })
                .with_context(|| format!("copying {} to {to}", store.location()))?;
            bar.finish_and_clear();
            render::store_copy(&rep, &to.to_string(), c.json);
            Ok(Exit::Ok)
        }
        Cmd::Export(x) => {
            let store = open_store(&args, &loaded)?;
            let files =
                pipe::stages::convert::deliverables(&store).map_err(|e| anyhow::anyhow!(e))?;
            match x {
                args::Export::Dir { dir, json } => {
                    let mut written = Vec::new();
                    for (name, id) in &files {
                        let dest = dir.join(name);
                        store
                            .export_object(&dest, id)
                            .with_context(|| format!("exporting {name}"))?;
                        written.push(dest);
                    }
                    render::copied(&written, *json);
                }
                args::Export::Ollama { name, url, json } => {
                    let merged = files
                        .iter()
                        .filter(|(n, _)| n.starts_with("model-") && n.ends_with(".gguf"))
                        .min_by_key(|(n, _)| !n.contains("q4_k_m"))
                        .ok_or_else(|| anyhow::anyhow!("convert made no merged model"))?;
                    let file = store.object_file(&merged.1)?;
                    let path = file.path().to_path_buf();
                    let url = if url.contains("://") {
                        url.clone()
                    } else {
                        format!("http://{url}")
                    };
                    let blobs =
                        pipe::convert::ollama::register(&url, name, &[(merged.0.clone(), path)])?;
                    render::registered(name, &url, &blobs, *json);
                }
            }
            Ok(Exit::Ok)
        }
        Cmd::Bench(_) => unreachable!("handled above"),
    }
}
