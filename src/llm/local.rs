//! The `local` backend: a GGUF model run in process with candle on the CPU.
//!
//! Everything comes from the one file: the quantised weights (run by candle-transformers'
//! `quantized_llama` / `quantized_qwen2`, which keep a KV cache per sequence), the tokenizer
//! (rebuilt by [`super::gguf_tokenizer`] to match llama.cpp's ids) and the chat template
//! (`tokenizer.chat_template`, rendered with minijinja the way Hugging Face renders it). A file
//! is loaded once per process and shared: the weights are reference-counted tensors, so each
//! request works on its own cheap clone with its own cache, and concurrent trials need no lock.

use super::gguf_tokenizer::{GgufTokenizer, TokenizerError};
use super::{ChatModel, ChatReply, ChatRequest, LlmError, Message};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::{quantized_llama, quantized_qwen2};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// The seed used when a request names none, so that unseeded runs are still repeatable.
pub const DEFAULT_SEED: u64 = 0x5eed;

/// Why a local model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Io {
        /// The GGUF.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// candle failed to parse the file or to run the model.
    #[error("{what} ({path}): {source}")]
    Candle {
        /// What was being done.
        what: &'static str,
        /// The GGUF.
        path: PathBuf,
        /// The cause.
        source: candle_core::Error,
    },
    /// The tokenizer could not be rebuilt or failed.
    #[error("{path}: {source}")]
    Tokenizer {
        /// The GGUF.
        path: PathBuf,
        /// The cause.
        source: TokenizerError,
    },
    /// The GGUF is of an architecture we do not run.
    #[error("{path}: architecture `{arch}` is not supported (llama and qwen2 are)")]
    Architecture {
        /// The GGUF.
        path: PathBuf,
        /// `general.architecture`.
        arch: String,
    },
    /// The chat template is missing or failed to render.
    #[error("{path}: chat template: {why}")]
    Template {
        /// The GGUF.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A thread pool could not be made.
    #[error("a thread pool of {threads} threads: {why}")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// The cause.
        why: String,
    },
}

impl LocalError {
    /// `map_err` for a candle call on the model at `path`, doing `what`.
    fn candle(what: &'static str, path: &Path) -> impl FnOnce(candle_core::Error) -> LocalError {
        let path = path.to_path_buf();
        move |source| LocalError::Candle { what, path, source }
    }
}

impl From<LocalError> for LlmError {
    fn from(e: LocalError) -> LlmError {
        LlmError::Setup(e.to_string())
    }
}

/// The two architectures' weights. candle's llama weights can be cloned (the tensors are
/// shared), so each sequence gets its own copy and KV cache; its qwen2 weights cannot, so
/// qwen2 sequences take turns on the one copy.
enum Weights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(Mutex<quantized_qwen2::ModelWeights>),
}

/// One sequence's hold on the weights and its KV cache (which the first forward, at position
/// 0, resets).
enum Session<'a> {
    Llama(Box<quantized_llama::ModelWeights>),
    Qwen2(std::sync::MutexGuard<'a, quantized_qwen2::ModelWeights>),
}

impl Weights {
    fn session(&self) -> Session<'_> {
        match self {
            Weights::Llama(m) => Session::Llama(Box::new(m.clone())),
            Weights::Qwen2(m) => Session::Qwen2(m.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }
}

impl Session<'_> {
    fn forward(&mut self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            Session::Llama(m) => m.forward(x, pos),
            Session::Qwen2(m) => m.forward(x, pos),
        }
    }
}

/// What one GGUF file holds, loaded once and shared by every [`LocalModel`] on it.
struct Loaded {
    path: PathBuf,
    tokenizer: GgufTokenizer,
    template: String,
    weights: Weights,
    /// The longest sequence the model's rotary tables cover.
    max_seq: usize,
}

/// Models already loaded in this process, by canonical path.
fn loaded_models() -> &'static Mutex<HashMap<PathBuf, Arc<Loaded>>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<Loaded>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// A GGUF model served in process.
pub struct LocalModel {
    inner: Arc<Loaded>,
    pool: rayon::ThreadPool,
}

/// One generation: ids out, and why it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated ids, the stopping token excluded.
    pub ids: Vec<u32>,
    /// `stop` (an end-of-generation token) or `length` (the limit, or the context, was hit).
    pub finish_reason: &'static str,
}

fn read_metadata_string(ct: &gguf_file::Content, key: &str) -> Option<String> {
    ct.metadata.get(key)?.to_string().ok().cloned()
}

impl Loaded {
    fn read(path: &Path) -> Result<Loaded, LocalError> {
        let io = |source| LocalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let candle = |what| LocalError::candle(what, path);
        let mut file = std::fs::File::open(path).map_err(io)?;
        let ct = gguf_file::Content::read(&mut file).map_err(candle("reading the GGUF header"))?;
        let tokenizer =
            GgufTokenizer::from_metadata(&ct.metadata).map_err(|source| LocalError::Tokenizer {
                path: path.to_path_buf(),
                source,
            })?;
        let template = read_metadata_string(&ct, "tokenizer.chat_template").ok_or_else(|| {
            LocalError::Template {
                path: path.to_path_buf(),
                why: "the GGUF has no `tokenizer.chat_template`".into(),
            }
        })?;
        let arch = read_metadata_string(&ct, "general.architecture").unwrap_or_default();
        let ctx = ct
            .metadata
            .get(&format!("{arch}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize);
        let device = Device::Cpu;
        let (weights, max_seq) = match arch.as_str() {
            "llama" => (
                Weights::Llama(
                    quantized_llama::ModelWeights::from_gguf(ct, &mut file, &device)
                        .map_err(candle("loading llama weights"))?,
                ),
                // candle's llama precomputes rotary tables for this many positions only.
                ctx.unwrap_or(quantized_llama::MAX_SEQ_LEN)
                    .min(quantized_llama::MAX_SEQ_LEN),
            ),
            "qwen2" => (
                Weights::Qwen2(Mutex::new(
                    quantized_qwen2::ModelWeights::from_gguf(ct, &mut file, &device)
                        .map_err(candle("loading qwen2 weights"))?,
                )),
                ctx.unwrap_or(32768),
            ),
            _ => {
                return Err(LocalError::Architecture {
                    path: path.to_path_buf(),
                    arch,
                });
            }
        };
        Ok(Loaded {
            path: path.to_path_buf(),
            tokenizer,
            template,
            weights,
            max_seq,
        })
    }
}

impl LocalModel {
    /// Load `path` (or reuse this process's copy) and run it on `threads` CPU threads.
    pub fn load(path: &Path, threads: usize) -> Result<LocalModel, LocalError> {
        let canonical = path.canonicalize().map_err(|source| LocalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // Held while loading, so two trials asking at once load the file once.
        let mut cache = loaded_models().lock().unwrap_or_else(|e| e.into_inner());
        let inner = match cache.get(&canonical) {
            Some(l) => Arc::clone(l),
            None => {
                let l = Arc::new(Loaded::read(&canonical)?);
                cache.insert(canonical, Arc::clone(&l));
                l
            }
        };
        drop(cache);
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("pipe-local-{i}"))
            .build()
            .map_err(|e| LocalError::Threads {
                threads,
                why: e.to_string(),
            })?;
        Ok(LocalModel { inner, pool })
    }

    /// The tokenizer rebuilt from the GGUF.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.inner.tokenizer
    }

    /// The prompt text for `messages`: the GGUF's chat template, generation prompt added.
    pub fn render(&self, messages: &[Message]) -> Result<String, LocalError> {
        let l = &self.inner;
        let err = |e: minijinja::Error| LocalError::Template {
            path: l.path.clone(),
            why: format!("{e:#}"),
        };
        // Hugging Face renders chat templates with these settings; templates are written
        // for them.
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(err)?;
        env.set_syntax(syntax);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", &l.template).map_err(err)?;
        let tok = &l.tokenizer;
        let bos = tok.bos().and_then(|b| tok.token(b)).unwrap_or("");
        let eos = tok.token(tok.eos()).unwrap_or("");
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => minijinja::value::Serde(messages),
                    add_generation_prompt => true,
                    bos_token => bos,
                    eos_token => eos,
                })
            })
            .map_err(err)
    }

    /// The logits for the token after `ids` (a fresh sequence), as f32.
    pub fn next_logits(&self, ids: &[u32]) -> Result<Vec<f32>, LocalError> {
        let l = &self.inner;
        let candle = |what| LocalError::candle(what, &l.path);
        self.pool.install(|| {
            let mut w = l.weights.session();
            let x = Tensor::new(ids, &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .map_err(candle("making the input"))?;
            w.forward(&x, 0)
                .and_then(|t| t.squeeze(0))
                .and_then(|t| t.to_dtype(candle_core::DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(candle("running the model"))
        })
    }

    /// Generate after `prompt` until an end-of-generation token, `max_tokens`, or the end of
    /// the model's context.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        sampling: Sampling,
        seed: u64,
    ) -> Result<Generation, LocalError> {
        let l = &self.inner;
        let candle = |what| LocalError::candle(what, &l.path);
        self.pool.install(|| {
            let mut w = l.weights.session();
            let mut sampler = LogitsProcessor::from_sampling(seed, sampling);
            let mut ids = Vec::new();
            let mut input: Vec<u32> = prompt.to_vec();
            let mut pos = 0;
            let budget = max_tokens.min(l.max_seq.saturating_sub(prompt.len()));
            while ids.len() < budget {
                let x = Tensor::new(input.as_slice(), &Device::Cpu)
                    .and_then(|t| t.unsqueeze(0))
                    .map_err(candle("making the input"))?;
                let logits = w
                    .forward(&x, pos)
                    .and_then(|t| t.squeeze(0))
                    .and_then(|t| t.to_dtype(candle_core::DType::F32))
                    .map_err(candle("running the model"))?;
                pos += input.len();
                let next = sampler.sample(&logits).map_err(candle("sampling"))?;
                if l.tokenizer.ends_generation(next) {
                    return Ok(Generation {
                        ids,
                        finish_reason: "stop",
                    });
                }
                ids.push(next);
                input = vec![next];
            }
            Ok(Generation {
                ids,
                finish_reason: "length",
            })
        })
    }
}

/// candle's sampler for a request: greedy at temperature 0, nucleus below top-p 1.
pub fn sampling_for(temperature: f64, top_p: f64) -> Sampling {
    if temperature <= 0.0 {
        Sampling::ArgMax
    } else if top_p > 0.0 && top_p < 1.0 {
        Sampling::TopP {
            p: top_p,
            temperature,
        }
    } else {
        Sampling::All { temperature }
    }
}

impl ChatModel for LocalModel {
    fn chat(&self, req: &ChatRequest) -> Result<ChatReply, LlmError> {
        let t = Instant::now();
        let text = self.render(&req.messages)?;
        let prompt = self
            .tokenizer()
            .encode(&text)
            .map_err(|source| LocalError::Tokenizer {
                path: self.inner.path.clone(),
                source,
            })?;
        if prompt.len() >= self.inner.max_seq {
            // A prompt the model cannot read is still a reply the guards can judge: empty.
            return Ok(ChatReply {
                content: String::new(),
                finish_reason: Some("length".into()),
                prompt_tokens: Some(prompt.len() as u64),
                completion_tokens: Some(0),
                duration_ms: t.elapsed().as_millis() as u64,
                retried: 0,
            });
        }
        let g = self.generate(
            &prompt,
            req.max_tokens as usize,
            sampling_for(req.temperature, req.top_p),
            req.seed.unwrap_or(DEFAULT_SEED),
        )?;
        let content = self
            .tokenizer()
            .decode(&g.ids)
            .map_err(|source| LocalError::Tokenizer {
                path: self.inner.path.clone(),
                source,
            })?;
        Ok(ChatReply {
            content,
            finish_reason: Some(g.finish_reason.into()),
            prompt_tokens: Some(prompt.len() as u64),
            completion_tokens: Some(g.ids.len() as u64),
            duration_ms: t.elapsed().as_millis() as u64,
            retried: 0,
        })
    }
}
