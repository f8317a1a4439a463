//! ① `pipeline.toml` → a typed [`Config`], and `tasks/*.json` → [`Task`]s.
//!
//! Every error names the file, the line and column, and the key path (toml's spans plus
//! `serde_path_to_error`), because a user fixing a config wants to jump straight to the spot.
//! Unknown keys, wrong types and missing keys are all errors: a typo must never silently fall
//! back to a default that changes what the experiment measures.
//!
//! Depends on nothing else of pipe: every other module may read a [`Loaded`].

pub mod tasks;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
pub use tasks::{Difficulty, Task, TaskSpec};
use toml::Spanned;

/// A configuration or task-file error, pointing at the spot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file at fault.
    pub file: PathBuf,
    /// 1-based line and column, where known.
    pub line_col: Option<(usize, usize)>,
    /// Dotted key path, where known (`sampling.temperature`).
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((l, c)) = self.line_col {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": ")?;
        if let Some(k) = &self.key {
            write!(f, "`{k}`: ")?;
        }
        // One line: a user greps for it, a script parses it.
        write!(f, "{}", self.message.replace('\n', " "))
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |i| offset - i - 1) + 1;
    (line, col)
}

/// The experiment itself.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// A name for reports.
    pub name: String,
    /// Task files to run, by stem (`stack` → `<tasks_dir>/stack.json`).
    pub tasks: Vec<Spanned<String>>,
    /// Directory of task files, relative to the config file.
    pub tasks_dir: String,
    /// Trials per task and arm (the paper: 50).
    pub trials: u32,
    /// Experiment seed; each trial's seed derives from it, the task and the index.
    pub seed: u64,
}

/// What an arm is for.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Run by the `trial` stage; its samples train the adapter.
    Baseline,
    /// Run by the `eval` stage with the adapter the `train` stage produced.
    Finetuned,
}

/// One arm of the experiment: a model and how many retries it gets.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    /// Name of an entry under `[models]`.
    pub model: Spanned<String>,
    /// Retries per step (rmax = 3 → up to 4 attempts).
    pub rmax: u32,
    /// `baseline` (trial stage) or `finetuned` (eval stage).
    pub role: Role,
}

/// Which implementation of the `ChatModel` trait serves a model.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// candle in process, on a GGUF.
    Local,
    /// Any OpenAI-compatible HTTP server.
    Openai,
}

/// Where a model's weights are, or which server serves it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `local` or `openai`.
    pub backend: Spanned<Backend>,
    /// A GGUF file (local), relative to the config file.
    pub gguf: Option<String>,
    /// An Ollama model name, resolved through Ollama's manifests (local).
    pub ollama: Option<String>,
    /// A Hugging Face directory (local).
    pub hf_dir: Option<String>,
    /// Base URLs of OpenAI-compatible servers (openai); never part of a key.
    pub base_urls: Option<Vec<String>>,
    /// The model name the server knows (openai).
    pub name: Option<String>,
    /// Name of the environment variable holding the API key (openai); never the key itself.
    pub api_key_env: Option<String>,
    /// A LoRA adapter for the local backend: a PEFT directory or a llama.cpp adapter GGUF,
    /// relative to the config file; applied unmerged.
    pub adapter: Option<String>,
    /// The adapter's scale (default 1: as trained).
    pub adapter_scale: Option<f64>,
    /// CPU threads for the local backend.
    pub threads: Option<u32>,
    /// How many times an infrastructure failure (refused, timeout, 429, 5xx, malformed
    /// reply) is retried before the build stops (openai; default 5). Not part of any key.
    pub retries: Option<u32>,
    /// The first retry's delay in milliseconds; doubled each time, with jitter, capped at
    /// 30 s (openai; default 1000). Not part of any key.
    pub backoff_ms: Option<u64>,
}

impl ModelSpec {
    /// What identifies the model in keys: never URLs, keys or thread counts, which change
    /// where and how fast it runs, not what it answers.
    pub fn identity(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": *self.backend.get_ref(),
            "gguf": self.gguf,
            "ollama": self.ollama,
            "hf_dir": self.hf_dir,
            "name": self.name,
            "adapter": self.adapter,
            "adapter_scale": self.adapter_scale,
        })
    }
}

/// Sampling parameters shared by every request.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Temperature (the paper: 0.7).
    pub temperature: f64,
    /// Nucleus sampling.
    pub top_p: f64,
    /// Generation limit per reply.
    pub max_tokens: u32,
    /// Per-request timeout, seconds (the paper: 120).
    pub request_timeout_s: u64,
}

/// Limits of the sandboxed test guard.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Wall-clock limit of one pytest run, seconds.
    pub timeout_s: u64,
    /// Address-space limit per process, MiB.
    pub memory_mb: u64,
    /// Process limit inside the sandbox.
    pub max_processes: u32,
    /// Bound on the feedback sent back to the model, bytes.
    pub feedback_bytes: usize,
    /// Also require the tests to kill mutants (off: comparable with the paper).
    pub mutation_guard: bool,
}

/// LoRA training.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Train {
    /// The arm whose guard-validated samples (and base model) are used.
    pub from_arm: String,
    /// LoRA rank.
    pub rank: u32,
    /// LoRA alpha.
    pub alpha: f64,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// Epochs.
    pub epochs: u32,
    /// Sequences per step.
    pub batch_size: u32,
    /// Longest sequence, tokens.
    pub max_seq_len: u32,
    /// Share of samples held out for validation.
    pub val_fraction: f64,
    /// Training seed.
    pub seed: u64,
    /// `cpu` or `cuda`; not part of the key (same maths, other silicon).
    pub device: String,
    /// The `[models]` entry to fine-tune (optional; default: `from_arm`'s model). It must be
    /// local (its weights on disk): point it at the GGUF an OpenAI-compatible server serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sequences per forward pass (optional; default `batch_size`); a step's micro-batches
    /// add their gradients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch: Option<u32>,
    /// Share of the steps warming the learning rate up (optional; default 0.03).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_ratio: Option<f64>,
    /// Gradients are clipped to this global norm (optional; default 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    /// Seconds between checkpoints (optional; default 60); not part of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_s: Option<f64>,
    /// How the frozen base's products are computed (optional): `"quantized"` (the integer
    /// kernel inference uses), `"bf16"` (the codes widened to bf16, on AMX tiles where the CPU
    /// has them) or `"auto"` (the default: bf16 with AMX tiles, else quantized). The base stays
    /// in its GGUF codes in memory either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

impl Train {
    /// The `[models]` entry training fine-tunes.
    pub fn model_name<'a>(&'a self, cfg: &'a Config) -> &'a str {
        match &self.model {
            Some(m) => m,
            None => cfg.arms[&self.from_arm].model.get_ref(),
        }
    }
}

/// GGUF conversion.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Convert {
    /// Quantisation of the merged model (`q4_k_m`).
    pub quantization: String,
    /// Also write an f16 merged model.
    pub f16: bool,
}

/// Where reports go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReportCfg {
    /// Output directory, relative to the config file.
    pub dir: String,
}

/// Where the store is and how its leases behave. Not part of any key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreCfg {
    /// Store directory, relative to the config file, or a bucket URL (`s3://bucket/prefix`)
    /// that several machines share. `--store` or `PIPE_STORE` override it.
    pub path: String,
    /// Seconds a lease lives without a heartbeat.
    pub lease_ttl_s: f64,
}

/// The whole `pipeline.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The experiment.
    pub experiment: Experiment,
    /// Arms by name.
    pub arms: BTreeMap<String, Arm>,
    /// Models by name.
    pub models: BTreeMap<String, ModelSpec>,
    /// Sampling.
    pub sampling: Sampling,
    /// Guard limits.
    pub guard: Guard,
    /// Training.
    pub train: Train,
    /// Conversion.
    pub convert: Convert,
    /// Report.
    pub report: ReportCfg,
    /// Store.
    pub store: StoreCfg,
}

/// A config with its tasks, as loaded from disk.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The config file.
    pub path: PathBuf,
    /// The directory relative paths resolve against.
    pub dir: PathBuf,
    /// The parsed config.
    pub config: Config,
    /// The tasks, in the order `experiment.tasks` lists them.
    pub tasks: Vec<Task>,
}

impl Loaded {
    /// Where the store is: `override_` (from `--store`) or `store.path`.
    pub fn store_location(&self, override_: Option<&str>) -> crate::store::backend::Location {
        crate::store::backend::Location::parse(
            override_.unwrap_or(&self.config.store.path),
            &self.dir,
        )
    }
    /// The reports directory.
    pub fn report_dir(&self) -> PathBuf {
        self.dir.join(&self.config.report.dir)
    }
    /// Arms with a role, by name.
    pub fn arms(&self, role: Role) -> Vec<(&str, &Arm)> {
        self.config
            .arms
            .iter()
            .filter(|(_, a)| a.role == role)
            .map(|(n, a)| (n.as_str(), a))
            .collect()
    }
}

/// Parse config text (no task files read).
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let err =
        |span: Option<std::ops::Range<usize>>, key: Option<String>, message: String| ConfigError {
            file: file.to_path_buf(),
            line_col: span.map(|s| line_col(text, s.start)),
            key,
            message,
        };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| err(e.span(), None, e.message().to_string()))?;
    let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        err(
            inner.span(),
            (path != ".").then_some(path),
            inner.message().to_string(),
        )
    })?;
    validate(&cfg, &|span, key, msg| err(span, Some(key), msg))?;
    Ok(cfg)
}

type ErrAt<'a> = dyn Fn(Option<std::ops::Range<usize>>, String, String) -> ConfigError + 'a;

/// Cross-references and ranges that types alone do not express.
fn validate(cfg: &Config, err: &ErrAt<'_>) -> Result<(), ConfigError> {
    if cfg.experiment.trials == 0 {
        return Err(err(
            None,
            "experiment.trials".into(),
            "must be at least 1".into(),
        ));
    }
    // Item ids are `task/arm/index`: a `/` inside a name would make them ambiguous.
    let why = "a name may not contain `/` (item ids are task/arm/index)";
    for (i, t) in cfg.experiment.tasks.iter().enumerate() {
        if t.get_ref().contains('/') || t.get_ref().is_empty() {
            return Err(err(
                Some(t.span()),
                format!("experiment.tasks[{i}]"),
                format!("{:?}: {why}, nor be empty", t.get_ref()),
            ));
        }
    }
    for name in cfg.arms.keys() {
        if name.contains('/') {
            return Err(err(None, format!("arms.{name}"), why.to_string()));
        }
    }
    for (name, arm) in &cfg.arms {
        if !cfg.models.contains_key(arm.model.get_ref()) {
            return Err(err(
                Some(arm.model.span()),
                format!("arms.{name}.model"),
                format!(
                    "no model named {:?} under [models] (have: {})",
                    arm.model.get_ref(),
                    cfg.models.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    for (name, m) in &cfg.models {
        let sources = [&m.gguf, &m.ollama, &m.hf_dir]
            .iter()
            .filter(|s| s.is_some())
            .count();
        let problem = match m.backend.get_ref() {
            Backend::Local if sources != 1 => {
                Some("a local model needs exactly one of `gguf`, `ollama`, `hf_dir`")
            }
            Backend::Openai if m.base_urls.as_ref().is_none_or(|u| u.is_empty()) => {
                Some("an openai model needs `base_urls`")
            }
            Backend::Openai if m.name.is_none() => Some("an openai model needs `name`"),
            Backend::Openai if m.adapter.is_some() => {
                Some("`adapter` is for the local backend (a server loads its own adapters)")
            }
            _ => None,
        };
        if let Some(p) = problem {
            return Err(err(
                Some(m.backend.span()),
                format!("models.{name}.backend"),
                p.to_string(),
            ));
        }
    }
    let s = &cfg.sampling;
    if !(0.0..=2.0).contains(&s.temperature) || !(0.0..=1.0).contains(&s.top_p) {
        return Err(err(
            None,
            "sampling".into(),
            "temperature must be in [0, 2] and top_p in [0, 1]".into(),
        ));
    }
    if !cfg.arms.contains_key(&cfg.train.from_arm) {
        return Err(err(
            None,
            "train.from_arm".into(),
            format!("no arm named {:?}", cfg.train.from_arm),
        ));
    }
    if let Some(m) = &cfg.train.model
        && !cfg.models.contains_key(m)
    {
        return Err(err(
            None,
            "train.model".into(),
            format!("no model named {m:?} under [models]"),
        ));
    }
    let t = &cfg.train;
    let bad_train = if t.rank == 0 || t.epochs == 0 || t.batch_size == 0 || t.micro_batch == Some(0)
    {
        Some((
            "train",
            "rank, epochs, batch_size and micro_batch must be at least 1",
        ))
    } else if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
        Some(("train.learning_rate", "must be a number above 0"))
    } else if !(t.alpha.is_finite() && t.alpha > 0.0) {
        Some(("train.alpha", "must be a number above 0"))
    } else if t.max_seq_len == 0 {
        Some(("train.max_seq_len", "must be at least 1"))
    } else if t.warmup_ratio.is_some_and(|w| !(0.0..=1.0).contains(&w)) {
        Some(("train.warmup_ratio", "must be in [0, 1]"))
    } else if t.max_grad_norm.is_some_and(|n| !(n.is_finite() && n > 0.0)) {
        Some(("train.max_grad_norm", "must be a number above 0"))
    } else if t
        .checkpoint_s
        .is_some_and(|c| !(c.is_finite() && (0.0..=1e9).contains(&c)))
    {
        Some((
            "train.checkpoint_s",
            "must be a number of seconds from 0 to 1e9",
        ))
    } else if t
        .base
        .as_deref()
        .is_some_and(|b| !["auto", "quantized", "bf16"].contains(&b))
    {
        Some(("train.base", "must be \"auto\", \"quantized\" or \"bf16\""))
    } else {
        None
    };
    if let Some((key, why)) = bad_train {
        return Err(err(None, key.into(), why.into()));
    }
    if crate::convert::Quantization::parse(&cfg.convert.quantization).is_none() {
        return Err(err(
            None,
            "convert.quantization".into(),
            format!(
                "{:?} is not one pipe writes: \"q4_k_m\" (llama.cpp's Q4_K_M mix) or \"f16\"",
                cfg.convert.quantization
            ),
        ));
    }
    Ok(())
}

/// Load a config file and its tasks.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line_col: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    let config = parse(path, &text)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let tasks_dir = dir.join(&config.experiment.tasks_dir);
    let mut tasks = Vec::new();
    for (i, t) in config.experiment.tasks.iter().enumerate() {
        let file = tasks_dir.join(format!("{}.json", t.get_ref()));
        if !file.is_file() {
            return Err(ConfigError {
                file: path.to_path_buf(),
                line_col: Some(line_col(&text, t.span().start)),
                key: Some(format!("experiment.tasks[{i}]")),
                message: format!("task file {} not found", file.display()),
            });
        }
        tasks.push(tasks::load(t.get_ref(), &file)?);
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        dir,
        config,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = include_str!("../../pipeline.toml");

    #[test]
    fn names_with_a_slash_are_rejected_with_their_key() {
        assert!(parse(Path::new("p.toml"), DEFAULT).is_ok());
        let with_arm = format!(
            "{DEFAULT}\n[arms.\"base/2\"]\nmodel = \"{}\"\nrmax = 1\nrole = \"baseline\"\n",
            parse(Path::new("p.toml"), DEFAULT)
                .unwrap()
                .arms
                .values()
                .next()
                .unwrap()
                .model
                .get_ref()
        );
        let e = parse(Path::new("p.toml"), &with_arm).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("arms.base/2"), "{e}");
        assert!(e.message.contains('/'), "{e}");

        let tasks_line = DEFAULT.lines().find(|l| l.starts_with("tasks =")).unwrap();
        let bad = DEFAULT.replace(tasks_line, "tasks = [\"stack\", \"data/queue\"]");
        let e = parse(Path::new("p.toml"), &bad).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("experiment.tasks[1]"), "{e}");
        let line = DEFAULT[..DEFAULT.find(tasks_line).unwrap()].lines().count() + 1;
        assert_eq!(e.line_col.map(|(l, _)| l), Some(line), "{e}");
    }

    #[test]
    fn an_unknown_base_math_is_named_with_its_key() {
        let with =
            |v: &str| DEFAULT.replacen("[train]\n", &format!("[train]\nbase = \"{v}\"\n"), 1);
        for ok in ["auto", "quantized", "bf16"] {
            let c = parse(Path::new("p.toml"), &with(ok)).unwrap();
            assert_eq!(c.train.base.as_deref(), Some(ok));
        }
        let e = parse(Path::new("p.toml"), &with("int4")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("train.base"), "{e}");
        assert!(e.message.contains("quantized"), "{e}");
    }
}
