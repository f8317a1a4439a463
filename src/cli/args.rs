//! clap definitions. No I/O happens here.

use clap::{Args as ClapArgs, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// pipe — the TDD fine-tuning experiment as an incremental, resumable pipeline.
///
/// Every stage (trial, extract, format, train, convert, eval, report) is a cached target keyed
/// by a blake3 hash of exactly what it depends on; only invalidated work reruns. Kill a build at
/// any moment and rerun it to resume; point several processes or machines at one store.
#[derive(Debug, Parser)]
#[command(name = "pipe", version, about, long_about = None)]
pub struct Args {
    /// The pipeline file.
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        default_value = "pipeline.toml"
    )]
    pub file: PathBuf,
    /// Use the synthetic stand-in stages (same keys, items and DAG; deterministic, fast):
    /// exercises the engine and store without models or a sandbox.
    #[arg(long, global = true, env = "PIPE_SYNTHETIC", hide_env = true)]
    pub synthetic: bool,
    /// The store: a directory, or a bucket that several machines share (`s3://bucket/prefix`;
    /// endpoint, region and credentials from the usual AWS_* variables). Overrides
    /// `store.path`.
    #[arg(long, global = true, env = "PIPE_STORE")]
    pub store: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Build targets and everything they need (resumable, incremental).
    Build(Build),
    /// Where every target stands: up to date, stale (why), missing, partial k/N, running.
    Status(Json),
    /// Why a target would rebuild: which inputs changed since its last build, old → new.
    Explain(Explain),
    /// An artifact with its inputs and provenance: a target, `target/item`, a record key or an
    /// object hash (a unique prefix of 6+ hex digits is enough).
    Show(Show),
    /// Re-hash every object and check every record and ref; quarantine what is corrupt.
    /// Exits 1 when anything was wrong.
    Verify(Json),
    /// Remove what no target reaches. Safe while other processes build.
    Gc(Gc),
    /// Copy this store's objects, records and refs into another store: a directory into a
    /// team's bucket (`--to s3://bucket/prefix`), or a bucket into a directory. What the
    /// destination already has stays; objects are verified on the way.
    Copy(Copy),
    /// The fine-tuned model's files: copy them out of the store, or register the merged model
    /// with a running Ollama.
    #[command(subcommand)]
    Export(Export),
    /// Measure no-op status/build on synthetic stores of the experiment's shape, or (--local) the local backend's tokens/s.
    Bench(Bench),
}

/// `pipe export`.
#[derive(Debug, Subcommand)]
pub enum Export {
    /// Copy the adapter (PEFT files and llama.cpp's GGUF), the merged models and the Ollama
    /// Modelfile into DIR, each checked against its hash and written atomically.
    Dir {
        /// Where to put them (created if missing).
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Register the merged model (q4_k_m, else the first merged GGUF) as NAME with the Ollama
    /// server at --url, through its HTTP API: no `ollama` binary needed.
    Ollama {
        /// The model name in Ollama (`tdd-finetuned`, `me/tdd:1`).
        name: String,
        /// The Ollama server.
        #[arg(long, env = "OLLAMA_HOST", default_value = "http://127.0.0.1:11434")]
        url: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `pipe build`.
#[derive(Debug, ClapArgs)]
pub struct Build {
    /// Targets: trial, extract, format, train, convert, eval, report.
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// Items computed at once (default: the number of CPUs).
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Only say what would run.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Go on with the other items when one fails.
    #[arg(short, long)]
    pub keep_going: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Commands whose only option is `--json`.
#[derive(Debug, ClapArgs)]
pub struct Json {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `pipe explain`.
#[derive(Debug, ClapArgs)]
pub struct Explain {
    /// The target.
    pub target: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `pipe show`.
#[derive(Debug, ClapArgs)]
pub struct Show {
    /// Target, `target/item`, record key or object hash.
    pub what: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `pipe gc`.
#[derive(Debug, ClapArgs)]
pub struct Gc {
    /// Keep anything modified more recently than this (a running build's fresh work).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub grace: Duration,
    /// Only say what would be removed.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `pipe copy`.
#[derive(Debug, ClapArgs)]
pub struct Copy {
    /// The destination: a directory or a bucket URL.
    #[arg(long)]
    pub to: String,
    /// Transfers at a time.
    #[arg(short = 'j', long, default_value_t = 16)]
    pub jobs: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `pipe bench`.
#[derive(Debug, ClapArgs)]
pub struct Bench {
    /// Where to keep the benchmark stores (reused when present). Default: a temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Timed runs per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub runs: usize,
    /// Also measure a store with ~100,000 item records (takes a few minutes to create).
    #[arg(long)]
    pub large: bool,
    /// Instead, measure the local backend on this GGUF (or Hugging Face directory): prompt
    /// and generation tokens/s, one sequence and batches of 4 and 8.
    #[arg(long, value_name = "GGUF")]
    pub local: Option<PathBuf>,
    /// Where the local backend runs (with --local): `cpu`, or `cuda` in a build with the
    /// `cuda` feature.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
    /// Tokens generated per sequence (with --local).
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (e.g. 30s, 10m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("unknown unit in {s:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs_f64(secs))
}
