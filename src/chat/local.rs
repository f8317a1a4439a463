//! The `local` backend: a GGUF model run in process with candle.
//!
//! Everything comes from the one file: the quantised weights (run by our
//! [`Transformer`], which keeps a KV cache per sequence), the
//! tokenizer (rebuilt by [`crate::model::tokenizer`] to match llama.cpp's ids) and the chat
//! template (`tokenizer.chat_template`, rendered with minijinja the way Hugging Face renders
//! it). A file is loaded once per process and shared.
//!
//! Concurrent trials are decoded as one batch: each [`LocalModel::chat`] hands its prompt to
//! the model's decoding thread, which steps every live sequence together (a new prompt is read
//! in the same step as the others' next tokens) so the weights are read once per step, not
//! once per sequence. A sequence's tokens do not depend on its neighbours: each has its own
//! cache and its own seeded sampler.

use super::{ChatModel, ChatReply, ChatRequest, LlmError, Message};
use crate::model::hf;
use crate::model::infer::{SeqCache, Step, Transformer};
use crate::model::lora::Adapter;
use crate::model::source::Source;
use crate::model::template::ChatTemplate;
use crate::model::tokenizer::{GgufTokenizer, TokenizerError};
use crate::model::weights::Weights;
use candle_core::Device;
use candle_core::quantized::gguf_file;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
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
    /// The chat template is missing or failed to render.
    #[error("{path}: chat template: {why}")]
    Template {
        /// The GGUF.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The LoRA adapter could not be read or does not fit the model.
    #[error("adapter {path}: {why}")]
    Adapter {
        /// The adapter.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The decoding thread failed or is gone.
    #[error("{path}: decoding: {why}")]
    Decode {
        /// The model.
        path: PathBuf,
        /// What went wrong.
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

/// The longest context we allocate rotary tables for, whatever the model claims (Qwen2.5
/// claims 32768; a trial's prompt and reply stay far below this).
pub const MAX_POSITIONS: usize = 16_384;

/// Sequences decoded together at most; more requests wait for a free place.
pub const MAX_BATCH: usize = 8;

/// Prompts are read in chunks of this many positions, aligned to multiples of it. Why: a
/// position's keys and values then come out of the same computation (the same rows, against
/// the same number of keys) whatever the rest of the prompt — so the chunks a finished prompt
/// shares with a new one can be reused ([`PREFIXES`]) with bit-identical results, and a long
/// prompt holds up the sequences that are generating for one chunk at a time, not its whole
/// length.
pub const CHUNK: usize = 64;

/// Finished prompts whose caches are kept for reuse. A trial's retry repeats its first prompt
/// and adds the feedback: with the cached chunks only the new part is read (the default
/// pipeline's failing trials read about 4,400 prompt tokens over five attempts, 3,000 of them
/// repeated).
pub const PREFIXES: usize = MAX_BATCH;

/// What one GGUF file holds, loaded once and shared by every [`LocalModel`] on it.
struct Loaded {
    path: PathBuf,
    tokenizer: GgufTokenizer,
    template: String,
    model: Arc<Transformer>,
    /// The decoding thread's inbox, started on first use.
    batcher: OnceLock<mpsc::Sender<Job>>,
    /// Prompt positions taken from kept prefixes instead of read.
    reused: Arc<AtomicUsize>,
}

/// Models already loaded in this process, by canonical source and adapter.
fn loaded_models() -> &'static Mutex<HashMap<String, Arc<Loaded>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Loaded>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// A GGUF model served in process.
pub struct LocalModel {
    inner: Arc<Loaded>,
}

/// One generation: ids out, and why it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated ids, the stopping token excluded.
    pub ids: Vec<u32>,
    /// `stop` (an end-of-generation token) or `length` (the limit, or the context, was hit).
    pub finish_reason: &'static str,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// At most this many new tokens.
    pub max_tokens: usize,
    /// How to pick each token.
    pub sampling: Sampling,
    /// The sampler's seed.
    pub seed: u64,
}

fn read_metadata_string(ct: &gguf_file::Content, key: &str) -> Option<String> {
    ct.metadata.get(key)?.to_string().ok().cloned()
}

impl Loaded {
    fn read(source: &Source, device: &Device) -> Result<Loaded, LocalError> {
        match source {
            Source::Gguf(p) => Loaded::read_gguf(p, device),
            Source::HfDir(d) => Loaded::read_hf(d, device),
        }
    }

    fn read_gguf(path: &Path, device: &Device) -> Result<Loaded, LocalError> {
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
        let weights = Weights::from_gguf(&ct, &mut file, MAX_POSITIONS, device)
            .map_err(candle("reading the weights"))?;
        let model =
            Transformer::from_weights(&weights, device).map_err(candle("loading the weights"))?;
        Ok(Loaded::new(path, tokenizer, template, model))
    }

    fn read_hf(dir: &Path, device: &Device) -> Result<Loaded, LocalError> {
        let tokenizer =
            GgufTokenizer::from_hf_dir(dir).map_err(|source| LocalError::Tokenizer {
                path: dir.to_path_buf(),
                source,
            })?;
        let template = hf::chat_template(dir).ok_or_else(|| LocalError::Template {
            path: dir.to_path_buf(),
            why: "no `chat_template` in tokenizer_config.json (nor chat_template.jinja)".into(),
        })?;
        let weights = Weights::from_hf_dir(dir, MAX_POSITIONS, device)
            .map_err(LocalError::candle("reading the checkpoint", dir))?;
        let model = Transformer::from_weights(&weights, device)
            .map_err(LocalError::candle("loading the checkpoint", dir))?;
        Ok(Loaded::new(dir, tokenizer, template, model))
    }

    fn new(path: &Path, tokenizer: GgufTokenizer, template: String, model: Transformer) -> Self {
        Loaded {
            path: path.to_path_buf(),
            tokenizer,
            template,
            model: Arc::new(model),
            batcher: OnceLock::new(),
            reused: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// This model with `adapter` on, scaled by `scale`; the weights are shared.
    fn with_adapter(&self, adapter: &Path, scale: f64) -> Result<Loaded, LocalError> {
        let a = Adapter::read(adapter).map_err(|e| LocalError::Adapter {
            path: adapter.to_path_buf(),
            why: e.to_string(),
        })?;
        let model = a
            .apply(&self.model, scale)
            .map_err(LocalError::candle("applying the adapter", adapter))?;
        Ok(Loaded::new(
            &self.path,
            self.tokenizer.clone(),
            self.template.clone(),
            model,
        ))
    }

    /// The decoding thread's inbox (the thread starts on first use and lives as long as the
    /// process: the model is cached for that long anyway).
    fn batcher(self: &Arc<Self>) -> mpsc::Sender<Job> {
        let tx = self.batcher.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let model = Arc::clone(&self.model);
            let stops = self.tokenizer.end_of_generation().to_vec();
            let reused = Arc::clone(&self.reused);
            std::thread::Builder::new()
                .name("pipe-decode".into())
                .spawn(move || batch_loop(&model, &stops, rx, &reused))
                .expect("spawning the decoding thread");
            tx
        });
        tx.clone()
    }
}

/// A request waiting for the decoding thread, with where to send its answer.
struct Job {
    req: GenRequest,
    reply: mpsc::Sender<Result<Generation, String>>,
}

/// One live sequence.
struct Live {
    cache: SeqCache,
    /// The request's prompt, kept to offer its chunks for reuse when the sequence ends.
    prompt: Vec<u32>,
    /// Tokens still to read: what is left of the prompt, then the last sampled token.
    pending: Vec<u32>,
    ids: Vec<u32>,
    budget: usize,
    sampler: LogitsProcessor,
}

/// A finished prompt's whole chunks and their cache.
struct Prefix {
    tokens: Vec<u32>,
    cache: SeqCache,
}

/// The sequences decoded together, stepped one token at a time.
struct Decoder<'m> {
    model: &'m Transformer,
    /// End-of-generation ids.
    stops: &'m [u32],
    live: Vec<(Live, mpsc::Sender<Result<Generation, String>>)>,
    /// Up to [`PREFIXES`], least recently used first.
    prefixes: Vec<Prefix>,
    /// Counts prompt positions taken from `prefixes` instead of read (the model's counter).
    reused: &'m AtomicUsize,
}

impl<'m> Decoder<'m> {
    fn new(model: &'m Transformer, stops: &'m [u32], reused: &'m AtomicUsize) -> Self {
        Decoder {
            model,
            stops,
            live: Vec::new(),
            prefixes: Vec::new(),
            reused,
        }
    }

    /// The longest run of whole chunks that `prompt` shares with a kept prefix (always
    /// leaving at least one token to read), as a cache to start from.
    fn reuse(&mut self, prompt: &[u32]) -> (SeqCache, usize) {
        let limit = prompt.len().saturating_sub(1) / CHUNK * CHUNK;
        let best = self
            .prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let common = p
                    .tokens
                    .iter()
                    .zip(prompt)
                    .take_while(|(a, b)| a == b)
                    .count();
                (i, common.min(limit) / CHUNK * CHUNK)
            })
            .max_by_key(|&(_, n)| n);
        if let Some((i, n)) = best.filter(|&(_, n)| n > 0) {
            let p = self.prefixes.remove(i);
            let cache = p.cache.prefix(n);
            self.prefixes.push(p);
            if let Some(cache) = cache {
                self.reused.fetch_add(n, Ordering::Relaxed);
                return (cache, n);
            }
        }
        (SeqCache::default(), 0)
    }

    /// Keep a finished sequence's whole prompt chunks for [`reuse`](Self::reuse).
    fn keep(&mut self, prompt: Vec<u32>, mut cache: SeqCache) {
        let n = prompt.len() / CHUNK * CHUNK;
        if n == 0 || !cache.truncate(n) {
            return;
        }
        let mut tokens = prompt;
        tokens.truncate(n);
        self.prefixes.retain(|p| p.tokens != tokens);
        if self.prefixes.len() == PREFIXES {
            self.prefixes.remove(0);
        }
        self.prefixes.push(Prefix { tokens, cache });
    }

    /// Take `req` in; a request with nothing to generate is answered at once — a prompt that
    /// fills the model's context too: an empty reply is still one the guards can judge.
    fn admit(&mut self, req: GenRequest, reply: mpsc::Sender<Result<Generation, String>>) {
        let budget = req
            .max_tokens
            .min(self.model.config.max_seq.saturating_sub(req.prompt.len()));
        if budget == 0 || req.prompt.is_empty() {
            let _ = reply.send(Ok(Generation {
                ids: Vec::new(),
                finish_reason: "length",
            }));
            return;
        }
        let (cache, start) = self.reuse(&req.prompt);
        self.live.push((
            Live {
                cache,
                pending: req.prompt[start..].to_vec(),
                prompt: req.prompt,
                ids: Vec::new(),
                budget,
                sampler: LogitsProcessor::from_sampling(req.seed, req.sampling),
            },
            reply,
        ));
    }

    /// One step of every live sequence; finished ones are answered and dropped.
    ///
    /// Sequences reading a prompt and sequences generating go through separate forwards. Our
    /// CPU matmul computes each row the same way whatever its neighbours, but candle's CUDA
    /// kernels and the gemm behind a LoRA adapter choose their method by the number of rows:
    /// a generating sequence's row carried along with a prompt's many rows could get other
    /// numbers (and so, at a near-tie, other tokens) just because a neighbour had arrived.
    fn step(&mut self) {
        // Each sequence reads up to the next chunk boundary.
        let take: Vec<usize> = self
            .live
            .iter()
            .map(|(l, _)| {
                let boundary = (l.cache.len() / CHUNK + 1) * CHUNK;
                l.pending.len().min(boundary - l.cache.len())
            })
            .collect();
        let reading: Vec<bool> = take.iter().map(|&t| t > 1).collect();
        let mut rows: Vec<Option<candle_core::Tensor>> = vec![None; self.live.len()];
        for phase in [true, false] {
            let idx: Vec<usize> = (0..reading.len())
                .filter(|&i| reading[i] == phase)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let mut steps: Vec<Step<'_>> = self
                .live
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| reading[*i] == phase)
                .map(|(i, (l, _))| Step {
                    tokens: &l.pending[..take[i]],
                    cache: &mut l.cache,
                })
                .collect();
            let logits = self
                .model
                .forward(&mut steps)
                .and_then(|t| t.to_device(&Device::Cpu))
                .and_then(|t| {
                    (0..idx.len())
                        .map(|r| t.get(r))
                        .collect::<Result<Vec<_>, _>>()
                });
            match logits {
                Ok(ls) => {
                    for (i, l) in idx.into_iter().zip(ls) {
                        rows[i] = Some(l);
                    }
                }
                Err(e) => {
                    for (_, reply) in self.live.drain(..) {
                        let _ = reply.send(Err(e.to_string()));
                    }
                    return;
                }
            }
        }
        let mut rows = rows.into_iter();
        let mut take = take.into_iter();
        let mut finished = Vec::new();
        self.live.retain_mut(|(l, reply)| {
            let row = rows
                .next()
                .flatten()
                .expect("every live sequence has its logits");
            let took = take.next().expect("every live sequence took tokens");
            if took < l.pending.len() {
                // More of the prompt to read: no token yet.
                l.pending.drain(..took);
                return true;
            }
            let next = match l.sampler.sample(&row) {
                Ok(n) => n,
                Err(e) => {
                    let _ = reply.send(Err(format!("sampling: {e}")));
                    return false;
                }
            };
            let finish = if self.stops.contains(&next) {
                Some("stop")
            } else {
                l.ids.push(next);
                (l.ids.len() >= l.budget).then_some("length")
            };
            match finish {
                Some(finish_reason) => {
                    let _ = reply.send(Ok(Generation {
                        ids: std::mem::take(&mut l.ids),
                        finish_reason,
                    }));
                    finished.push((std::mem::take(&mut l.prompt), std::mem::take(&mut l.cache)));
                    false
                }
                None => {
                    l.pending = vec![next];
                    true
                }
            }
        });
        for (prompt, cache) in finished {
            self.keep(prompt, cache);
        }
    }
}

/// The decoding thread: admit whoever is waiting (up to [`MAX_BATCH`]), step everyone, repeat;
/// sleep when nobody is live.
fn batch_loop(model: &Transformer, stops: &[u32], rx: mpsc::Receiver<Job>, reused: &AtomicUsize) {
    let mut d = Decoder::new(model, stops, reused);
    loop {
        if d.live.is_empty() {
            match rx.recv() {
                Ok(job) => d.admit(job.req, job.reply),
                Err(_) => return,
            }
        }
        while d.live.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => d.admit(job.req, job.reply),
                Err(_) => break,
            }
        }
        if !d.live.is_empty() {
            d.step();
        }
    }
}

impl LocalModel {
    /// Load the GGUF at `path` (or reuse this process's copy).
    pub fn load(path: &Path) -> Result<LocalModel, LocalError> {
        LocalModel::open(&Source::Gguf(path.to_path_buf()), None)
    }

    /// Load `source` (or reuse this process's copy), with a LoRA `adapter` (a PEFT directory
    /// or an adapter GGUF, and its scale) applied unmerged.
    ///
    /// candle sizes its CPU thread pools once per process from `CANDLE_NUM_THREADS` /
    /// `RAYON_NUM_THREADS` (the CLI sets them from the pipeline's `threads`).
    pub fn open(source: &Source, adapter: Option<(&Path, f64)>) -> Result<LocalModel, LocalError> {
        LocalModel::open_on(source, adapter, &Device::Cpu)
    }

    /// [`open`](Self::open) on `device` (a CUDA GPU with the `cuda` feature).
    pub fn open_on(
        source: &Source,
        adapter: Option<(&Path, f64)>,
        device: &Device,
    ) -> Result<LocalModel, LocalError> {
        let canonical = |p: &Path| {
            p.canonicalize().map_err(|source| LocalError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let source = match source {
            Source::Gguf(p) => Source::Gguf(canonical(p)?),
            Source::HfDir(p) => Source::HfDir(canonical(p)?),
        };
        let adapter = match adapter {
            Some((p, s)) => Some((canonical(p)?, s)),
            None => None,
        };
        let dev = format!("{:?}", device.location());
        let key = format!(
            "{source:?}|{dev}|{:?}",
            adapter.as_ref().map(|(p, s)| (p, s.to_bits()))
        );
        let base_key = format!("{source:?}|{dev}|None");
        // Held while loading, so two trials asking at once load the files once.
        let mut cache = loaded_models().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = cache.get(&key) {
            return Ok(LocalModel {
                inner: Arc::clone(l),
            });
        }
        let base = match cache.get(&base_key) {
            Some(l) => Arc::clone(l),
            None => {
                let l = Arc::new(Loaded::read(&source, device)?);
                cache.insert(base_key, Arc::clone(&l));
                l
            }
        };
        let inner = match adapter {
            None => base,
            Some((p, scale)) => {
                let l = Arc::new(base.with_adapter(&p, scale)?);
                cache.insert(key, Arc::clone(&l));
                l
            }
        };
        Ok(LocalModel { inner })
    }

    /// The tokenizer rebuilt from the GGUF.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.inner.tokenizer
    }

    /// The model itself.
    pub fn transformer(&self) -> &Transformer {
        &self.inner.model
    }

    /// The prompt text for `messages`: the GGUF's chat template, generation prompt added.
    pub fn render(&self, messages: &[Message]) -> Result<String, LocalError> {
        self.template()
            .render(messages, true)
            .map_err(|why| LocalError::Template {
                path: self.inner.path.clone(),
                why,
            })
    }

    /// The model's chat template, with its special tokens (what training renders with too).
    pub fn template(&self) -> ChatTemplate {
        let l = &self.inner;
        let tok = &l.tokenizer;
        let bos = tok.bos().and_then(|b| tok.token(b)).unwrap_or("");
        let eos = tok.token(tok.eos()).unwrap_or("");
        ChatTemplate::new(l.template.clone(), bos, eos)
    }

    /// The logits for the token after `ids` (a fresh sequence), as f32.
    pub fn next_logits(&self, ids: &[u32]) -> Result<Vec<f32>, LocalError> {
        let l = &self.inner;
        l.model
            .forward_one(ids, &mut SeqCache::default())
            .map_err(LocalError::candle("running the model", &l.path))
    }

    /// Generate after `prompt` until an end-of-generation token, `max_tokens`, or the end of
    /// the model's context — through the decoding thread, batched with whatever else is
    /// being generated.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        sampling: Sampling,
        seed: u64,
    ) -> Result<Generation, LocalError> {
        let (reply, answer) = mpsc::channel();
        let req = GenRequest {
            prompt: prompt.to_vec(),
            max_tokens,
            sampling,
            seed,
        };
        let gone = || LocalError::Decode {
            path: self.inner.path.clone(),
            why: "the decoding thread is gone".into(),
        };
        self.inner
            .batcher()
            .send(Job { req, reply })
            .map_err(|_| gone())?;
        answer
            .recv()
            .map_err(|_| gone())?
            .map_err(|why| LocalError::Decode {
                path: self.inner.path.clone(),
                why,
            })
    }

    /// Prompt positions taken from kept prefixes (see [`CHUNK`]) instead of read.
    pub fn reused_positions(&self) -> usize {
        self.inner.reused.load(Ordering::Relaxed)
    }

    /// Generate for all of `reqs` as one batch on the calling thread (benchmarks and tests
    /// use it to control exactly what is batched with what), with no kept prefixes.
    pub fn generate_batch(&self, reqs: &[GenRequest]) -> Result<Vec<Generation>, LocalError> {
        let l = &self.inner;
        let mut d = Decoder::new(&l.model, l.tokenizer.end_of_generation(), &l.reused);
        let answers: Vec<_> = reqs
            .iter()
            .map(|r| {
                let (tx, rx) = mpsc::channel();
                d.admit(r.clone(), tx);
                rx
            })
            .collect();
        while !d.live.is_empty() {
            d.step();
        }
        answers
            .into_iter()
            .map(|rx| {
                rx.recv()
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
                    .map_err(|why| LocalError::Decode {
                        path: l.path.clone(),
                        why,
                    })
            })
            .collect()
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
