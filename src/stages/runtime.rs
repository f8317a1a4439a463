//! What stages need from outside the store while they declare and run items: each model's
//! identity (what keys depend on), a client per model, and the guard's Python.
//!
//! Identities of served models come from the server (its digest), which `status` must not
//! have to ask: a build probes the servers it is about to use and caches what they said in the
//! store; `status`, `explain` and `show` read that cache. So moving a server, or taking it down,
//! never makes `status` slow or wrong, and a changed model behind the same name shows up as
//! stale after the next build's probe.

use crate::chat::local::LocalModel;
use crate::chat::openai::{OpenAi, OpenAiConfig};
use crate::chat::{ChatModel, LlmError};
use crate::config::{Backend, Loaded, ModelSpec, Role};
use crate::guard::PyEnv;
use crate::model::hf;
use crate::model::lora::{PEFT_CONFIG, PEFT_WEIGHTS};
use crate::model::source::{Source, ollama_dirs, resolve_ollama};
use crate::store::Store;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Models, identities and the guard environment for one run of pipe.
pub struct Runtime {
    finetune: bool,
    identities: BTreeMap<String, Value>,
    probe_errors: BTreeMap<String, String>,
    /// Models whose servers disagree about what they serve: asking them would mix models in
    /// one arm, so every request to them is refused with this.
    conflicts: BTreeMap<String, String>,
    /// Per model, the servers that answered the identity probe (and agreed): only these are
    /// asked. A model absent here was not probed, or no server answered: all are asked.
    verified: BTreeMap<String, Vec<String>>,
    pyenv: Result<PyEnv, String>,
    clients: Mutex<BTreeMap<String, Arc<dyn ChatModel>>>,
}

/// How a runtime learns model identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Ask the servers of these roles' arms (a build); fall back to the cache if they fail.
    Servers(&'static [Role]),
    /// Only the cache (status, explain, show).
    CacheOnly,
    /// Only the config (synthetic stages, which never talk to a model).
    ConfigOnly,
}

fn probe_name(name: &str, spec: &ModelSpec) -> String {
    format!(
        "model-identity|{name}|{}|{}",
        spec.name.as_deref().unwrap_or_default(),
        spec.base_urls.as_deref().unwrap_or_default().join(",")
    )
}

/// A client for `spec`. `max_retries` caps its retries: the identity probe needs few, since a
/// server that does not answer it will fail the trials anyway, with the full retries.
fn openai_client(
    loaded: &Loaded,
    spec: &ModelSpec,
    max_retries: Option<u32>,
) -> Result<OpenAi, String> {
    let api_key = match &spec.api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            format!("the API key variable `{var}` (models.*.api_key_env) is not set")
        })?),
        None => None,
    };
    OpenAi::new(OpenAiConfig {
        base_urls: spec.base_urls.clone().unwrap_or_default(),
        model: spec.name.clone().unwrap_or_default(),
        api_key,
        timeout: Duration::from_secs(loaded.config.sampling.request_timeout_s.max(1)),
        retries: spec
            .retries
            .unwrap_or(5)
            .min(max_retries.unwrap_or(u32::MAX)),
        backoff: Duration::from_millis(spec.backoff_ms.unwrap_or(1000)),
    })
    .map_err(|e| e.to_string())
}

impl Runtime {
    /// A runtime for `loaded`, learning identities as `probe` says.
    pub fn new(loaded: &Loaded, store: Option<&Store>, probe: Probe) -> Runtime {
        let mut identities = BTreeMap::new();
        let mut probe_errors = BTreeMap::new();
        let mut conflicts = BTreeMap::new();
        let mut verified = BTreeMap::new();
        let wanted: Vec<&str> = match probe {
            Probe::Servers(roles) => loaded
                .config
                .arms
                .values()
                .filter(|a| roles.contains(&a.role))
                .map(|a| a.model.get_ref().as_str())
                .collect(),
            _ => Vec::new(),
        };
        for (name, spec) in &loaded.config.models {
            let base = spec.identity();
            let id = match (*spec.backend.get_ref(), probe) {
                (Backend::Openai, Probe::ConfigOnly) | (Backend::Local, Probe::ConfigOnly) => base,
                (Backend::Local, _) => match local_identity(loaded, spec, store) {
                    Ok(v) => v,
                    Err(e) => {
                        probe_errors.insert(name.clone(), e.clone());
                        // No digest, so nothing can have been computed from it yet.
                        json!({"backend": "local", "model": spec.identity(), "blake3": null})
                    }
                },
                (Backend::Openai, _) => {
                    let key = probe_name(name, spec);
                    let cached = store.and_then(|s| s.get_probe(&key));
                    let fresh = if wanted.contains(&name.as_str()) {
                        match openai_client(loaded, spec, Some(1)).and_then(|c| {
                            c.identity().map_err(|e| {
                                if let LlmError::Mismatch(m) = &e {
                                    conflicts.insert(name.clone(), m.clone());
                                }
                                e.to_string()
                            })
                        }) {
                            Ok((v, answered)) => {
                                verified.insert(name.clone(), answered);
                                if let Some(s) = store
                                    && cached.as_ref() != Some(&v)
                                    && let Err(e) = s.put_probe(&key, &v)
                                {
                                    tracing::warn!("caching the identity of {name}: {e}");
                                }
                                Some(v)
                            }
                            Err(e) => {
                                tracing::warn!("could not ask model `{name}` who it is: {e}");
                                probe_errors.insert(name.clone(), e);
                                None
                            }
                        }
                    } else {
                        None
                    };
                    let served = fresh.or(cached).unwrap_or(json!({"digest": null}));
                    json!({"backend": "openai", "name": spec.name, "served": served})
                }
            };
            identities.insert(name.clone(), id);
        }
        let pyenv = match probe {
            Probe::ConfigOnly => Err("synthetic stages need no guard".into()),
            _ => PyEnv::discover(&loaded.dir).map_err(|e| e.to_string()),
        };
        Runtime {
            finetune: !loaded.arms(Role::Finetuned).is_empty(),
            identities,
            probe_errors,
            conflicts,
            verified,
            pyenv,
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    /// Does the experiment have a fine-tuned arm (and so train, convert and eval to run)?
    pub fn finetune(&self) -> bool {
        self.finetune
    }

    /// What identifies model `name` (a `[models]` key) in keys.
    pub fn model_identity(&self, name: &str) -> Value {
        self.identities.get(name).cloned().unwrap_or(Value::Null)
    }

    /// What identifies the guard's Python in keys (or why it is unavailable).
    pub fn guard_identity(&self) -> Value {
        match &self.pyenv {
            Ok(env) => env.identity(),
            Err(e) => json!({ "unavailable": e }),
        }
    }

    /// The guard's Python, or what is missing and how to get it.
    pub fn pyenv(&self) -> Result<&PyEnv, String> {
        self.pyenv.as_ref().map_err(Clone::clone)
    }

    /// The client for model `name`, created once.
    pub fn model(&self, loaded: &Loaded, name: &str) -> Result<Arc<dyn ChatModel>, String> {
        let mut clients = self.clients.lock().unwrap();
        if let Some(c) = clients.get(name) {
            return Ok(Arc::clone(c));
        }
        if let Some(why) = self.conflicts.get(name) {
            return Err(format!(
                "{why}; every server in models.{name}.base_urls must serve the same weights"
            ));
        }
        let spec = spec_of(loaded, name)?;
        let client: Arc<dyn ChatModel> = match spec.backend.get_ref() {
            Backend::Openai => {
                if let Some(e) = self.probe_errors.get(name) {
                    tracing::warn!("model `{name}` did not answer the identity probe: {e}");
                }
                let mut spec = spec.clone();
                if let Some(urls) = self.verified.get(name) {
                    spec.base_urls = Some(urls.clone());
                }
                Arc::new(openai_client(loaded, &spec, None)?)
            }
            Backend::Local => {
                let files = local_files(loaded, spec)?;
                let adapter = files
                    .adapter
                    .as_deref()
                    .map(|a| (a, spec.adapter_scale.unwrap_or(1.0)));
                Arc::new(LocalModel::open(&files.source, adapter).map_err(|e| e.to_string())?)
            }
        };
        clients.insert(name.to_string(), Arc::clone(&client));
        Ok(client)
    }
}

impl Runtime {
    /// Model `name` in process, without any adapter: the base that training fine-tunes.
    pub fn local_base(&self, loaded: &Loaded, name: &str) -> Result<LocalModel, String> {
        let spec = spec_of(loaded, name)?;
        if *spec.backend.get_ref() != Backend::Local {
            return Err(format!(
                "training needs the weights of the model it fine-tunes, and `{name}` is served over \
                 HTTP; add a local model with its GGUF (`gguf`, `ollama` or `hf_dir`) under [models] \
                 and name it in `train.model`"
            ));
        }
        let files = local_files(loaded, spec)?;
        if files.adapter.is_some() {
            return Err(format!(
                "model `{name}` carries an adapter; training fine-tunes a base model: name one \
                 without an adapter in `train.model`"
            ));
        }
        LocalModel::open(&files.source, None).map_err(|e| e.to_string())
    }
}

impl Runtime {
    /// Model `name` as the fine-tuned arm asks it: a local model gets the adapter `train`
    /// made (`adapter` names it; `files` writes its PEFT files into a directory, called only
    /// the first time), applied unmerged to the very base file the base arm ran — so the two
    /// arms differ by the adapter alone, not by a merge's re-quantisation. A model served over
    /// HTTP is asked as configured: serving the fine-tuned model there (llama.cpp's `--lora`
    /// with convert's adapter GGUF, or the Ollama model `pipe` registers) is the server's part.
    pub fn finetuned(
        &self,
        loaded: &Loaded,
        name: &str,
        adapter: &str,
        files: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<Arc<dyn ChatModel>, String> {
        let spec = spec_of(loaded, name)?;
        if *spec.backend.get_ref() != Backend::Local {
            return self.model(loaded, name);
        }
        let cache_key = format!("{name}+adapter:{adapter}");
        let mut clients = self.clients.lock().unwrap();
        if let Some(c) = clients.get(&cache_key) {
            return Ok(Arc::clone(c));
        }
        let local = local_files(loaded, spec)?;
        if local.adapter.is_some() {
            return Err(format!(
                "model `{name}` carries an adapter of its own; the fine-tuned arm adds the one \
                 train made: name its base model in the arm"
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        files(dir.path())?;
        // The adapter is read and applied while opening; the directory can go after.
        let m =
            LocalModel::open(&local.source, Some((dir.path(), 1.0))).map_err(|e| e.to_string())?;
        let client: Arc<dyn ChatModel> = Arc::new(m);
        clients.insert(cache_key, Arc::clone(&client));
        Ok(client)
    }

    /// The GGUF file of local model `name`, the base a merge starts from.
    pub fn local_gguf(&self, loaded: &Loaded, name: &str) -> Result<PathBuf, String> {
        let spec = spec_of(loaded, name)?;
        match local_files(loaded, spec)?.source {
            Source::Gguf(p) => Ok(p),
            Source::HfDir(d) => Err(format!(
                "merging into a Hugging Face checkpoint ({}) is not built: the merged GGUF needs \
                 the tokenizer and template metadata a GGUF base carries; fine-tune the model's \
                 GGUF (`gguf` or `ollama` under [models.{name}]) to get merged models",
                d.display()
            )),
        }
    }
}

/// The `[models]` entry `name`.
fn spec_of<'a>(loaded: &'a Loaded, name: &str) -> Result<&'a ModelSpec, String> {
    loaded
        .config
        .models
        .get(name)
        .ok_or_else(|| format!("no model `{name}`"))
}

/// Why a local model given by Ollama name or Hugging Face directory cannot run yet.
/// A local model's files: what to load, and what to hash for its identity.
struct LocalFiles {
    source: Source,
    /// The files whose bytes are the model (GGUF; or config, tokenizer and weights).
    weights: Vec<PathBuf>,
    /// The adapter (a PEFT directory or an adapter GGUF), if any.
    adapter: Option<PathBuf>,
}

fn local_files(loaded: &Loaded, spec: &ModelSpec) -> Result<LocalFiles, String> {
    let mut adapter = spec.adapter.as_ref().map(|a| loaded.dir.join(a));
    let (source, weights) = if let Some(g) = &spec.gguf {
        let p = loaded.dir.join(g);
        (Source::Gguf(p.clone()), vec![p])
    } else if let Some(name) = &spec.ollama {
        let m = resolve_ollama(name, &ollama_dirs()).map_err(|e| e.to_string())?;
        if let Some(a) = m.adapter {
            if adapter.is_some() {
                return Err(format!(
                    "Ollama model `{name}` has an adapter of its own; drop `adapter` or use its base model"
                ));
            }
            adapter = Some(a);
        }
        (Source::Gguf(m.gguf.clone()), vec![m.gguf])
    } else if let Some(d) = &spec.hf_dir {
        let d = loaded.dir.join(d);
        let files = hf::files(&d).map_err(|e| e.to_string())?;
        (Source::HfDir(d), files)
    } else {
        return Err("a local model needs one of `gguf`, `ollama`, `hf_dir`".into());
    };
    Ok(LocalFiles {
        source,
        weights,
        adapter,
    })
}

/// The files of an adapter: a PEFT directory's two, or the GGUF.
fn adapter_files(a: &Path) -> Vec<PathBuf> {
    if a.is_dir() {
        vec![a.join(PEFT_CONFIG), a.join(PEFT_WEIGHTS)]
    } else {
        vec![a.to_path_buf()]
    }
}

/// A local model's identity: the blake3 of its files, never their paths (moving them
/// invalidates nothing; changing their bytes invalidates everything the model answered).
///
/// Hashing a 1 GB file takes seconds and `status` builds a runtime too, so each digest is
/// remembered per path, size and modification time: in memory for this process, and in the
/// store's probe cache for the next one.
fn local_identity(
    loaded: &Loaded,
    spec: &ModelSpec,
    store: Option<&Store>,
) -> Result<Value, String> {
    let files = local_files(loaded, spec)?;
    let digests = |ps: &[PathBuf]| -> Result<Vec<String>, String> {
        ps.iter().map(|p| file_digest(p, store)).collect()
    };
    let mut id = match &files.source {
        // The key a GGUF always had, so that naming the same file through Ollama changes
        // nothing.
        Source::Gguf(_) => json!({"backend": "local", "gguf_blake3": digests(&files.weights)?[0]}),
        Source::HfDir(_) => json!({"backend": "local", "hf_blake3": digests(&files.weights)?}),
    };
    if let Some(a) = &files.adapter {
        id["adapter_blake3"] = json!(digests(&adapter_files(a))?);
        id["adapter_scale"] = json!(spec.adapter_scale.unwrap_or(1.0));
    }
    Ok(id)
}

/// The probe-cache key of a file's digest: its path, size and modification time.
fn digest_key(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    Ok(format!(
        "gguf-blake3|{}|{}|{mtime}",
        canonical.display(),
        meta.len()
    ))
}

fn file_digest(path: &Path, store: Option<&Store>) -> Result<String, String> {
    static MEMO: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let key = digest_key(path)?;
    let memo = MEMO.get_or_init(Default::default);
    if let Some(d) = memo.lock().unwrap().get(&key) {
        return Ok(d.clone());
    }
    if let Some(d) = store
        .and_then(|s| s.get_probe(&key))
        .and_then(|v| v.as_str().map(str::to_string))
    {
        memo.lock().unwrap().insert(key, d.clone());
        return Ok(d);
    }
    let mut hasher = blake3::Hasher::new();
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    hasher
        .update_reader(file)
        .map_err(|e| format!("hashing {}: {e}", path.display()))?;
    let d = hasher.finalize().to_hex().to_string();
    if let Some(s) = store
        && let Err(e) = s.put_probe(&key, &json!(d))
    {
        tracing::warn!("caching the digest of {}: {e}", path.display());
    }
    memo.lock().unwrap().insert(key, d.clone());
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    #[test]
    fn a_file_digest_is_its_blake3_cached_by_path_size_and_mtime() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("m.gguf");
        std::fs::write(&f, b"not really a gguf").unwrap();
        let store = Store::open(&d.path().join("s"), StoreOptions::default()).unwrap();
        let first = blake3::hash(b"not really a gguf").to_hex().to_string();
        assert_eq!(file_digest(&f, Some(&store)).unwrap(), first);
        // The next process finds it in the store's probe cache.
        let key = digest_key(&f).unwrap();
        assert_eq!(store.get_probe(&key), Some(json!(first)));
        // Same size, new bytes, new mtime: hashed again.
        std::fs::write(&f, b"NOT really a gguf").unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let second = blake3::hash(b"NOT really a gguf").to_hex().to_string();
        assert_eq!(file_digest(&f, Some(&store)).unwrap(), second);
        assert!(file_digest(&d.path().join("missing.gguf"), Some(&store)).is_err());
    }
}
