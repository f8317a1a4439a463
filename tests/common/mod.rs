//! A throwaway project (pipeline.toml + tasks + store) and a way to run `pipe` on it.
#![allow(dead_code)]

pub mod s3;
pub mod scripted;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub struct Project {
    pub dir: tempfile::TempDir,
    /// The bucket the store is in, when it is in one (see [`Project::on_bucket`]).
    pub bucket: Option<(std::sync::Arc<s3::Moto>, String)>,
}

pub const BIN: &str = env!("CARGO_BIN_EXE_pipe");

impl Project {
    /// The default pipeline over all six tasks with `trials` per task and arm and a lease TTL
    /// in seconds.
    pub fn new(trials: u32, lease_ttl_s: f64) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("pipeline.toml")).unwrap();
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("trials =") {
                    format!("trials = {trials}")
                } else if l.starts_with("tasks =") {
                    // All six, whatever the default runs.
                    format!("tasks = {TASKS:?}")
                } else if l.starts_with("lease_ttl_s =") {
                    format!("lease_ttl_s = {lease_ttl_s}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
        std::fs::create_dir(dir.path().join("tasks")).unwrap();
        for e in std::fs::read_dir(root.join("tasks")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join("tasks").join(e.file_name())).unwrap();
        }
        Project { dir, bucket: None }
    }

    /// A real (not synthetic) pipeline against an OpenAI-compatible server at `url`.
    /// `extra` is appended to the `[models.m]` table (e.g. `retries = 1`).
    pub fn openai(url: &str, tasks: &[&str], trials: u32, rmax: u32, extra: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let tasks_list = tasks
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            r#"[experiment]
name = "scripted"
tasks = [{tasks_list}]
tasks_dir = "tasks"
trials = {trials}
seed = 1

[arms.base]
model = "m"
rmax = {rmax}
role = "baseline"

[arms.finetuned]
model = "m"
rmax = {rmax}
role = "finetuned"

[models.m]
backend = "openai"
base_urls = ["{url}"]
name = "test-model"
{extra}

[sampling]
temperature = 0.7
top_p = 0.95
max_tokens = 512
request_timeout_s = 2

[guard]
timeout_s = 10
memory_mb = 1024
max_processes = 64
feedback_bytes = 2000
mutation_guard = false

[train]
from_arm = "base"
rank = 16
alpha = 16.0
learning_rate = 2e-4
epochs = 3
batch_size = 4
max_seq_len = 1024
val_fraction = 0.1
seed = 7
device = "cpu"

[convert]
quantization = "q4_k_m"
f16 = true

[report]
dir = "reports"

[store]
path = "store"
lease_ttl_s = 30
"#
        );
        std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
        std::fs::create_dir(dir.path().join("tasks")).unwrap();
        for e in std::fs::read_dir(root.join("tasks")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join("tasks").join(e.file_name())).unwrap();
        }
        Project { dir, bucket: None }
    }

    /// A real pipeline whose model `m` is the local backend on `gguf` (2 threads).
    pub fn local(gguf: &Path, tasks: &[&str], trials: u32, rmax: u32) -> Project {
        let p = Project::openai("http://unused", tasks, trials, rmax, "");
        p.unset("models.m.base_urls");
        p.unset("models.m.name");
        p.set("models.m.backend", "\"local\"");
        p.add("models.m.gguf", &format!("{:?}", gguf.to_str().unwrap()));
        p.add("models.m.threads", "2");
        p
    }

    /// Put this project's store in a fresh bucket of `moto` (`store.path = "s3://…"`); every
    /// `pipe` the project runs gets the server's endpoint and credentials.
    pub fn on_bucket(mut self, moto: &std::sync::Arc<s3::Moto>) -> Project {
        let name = format!(
            "p{}",
            self.dir.path().file_name().unwrap().to_string_lossy()
        )
        .to_ascii_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
        let url = moto.bucket(&name);
        self.set("store.path", &format!("{url:?}"));
        self.bucket = Some((std::sync::Arc::clone(moto), url));
        self
    }

    /// The AWS_* settings of the project's bucket (none for a directory store).
    pub fn aws(&self) -> Vec<(String, String)> {
        self.bucket
            .as_ref()
            .map(|(m, _)| m.env())
            .unwrap_or_default()
    }

    /// The project's store, opened in this process (directory or bucket alike).
    pub fn store(&self) -> pipe::store::Store {
        let at = match &self.bucket {
            Some((_, url)) => pipe::store::backend::Location::Bucket(url.clone()),
            None => pipe::store::backend::Location::Dir(self.path("store")),
        };
        let opts = pipe::store::StoreOptions {
            aws: self.aws(),
            ..Default::default()
        };
        pipe::store::Store::open_at(&at, opts).unwrap()
    }

    /// Flip a bit of object `hex` behind the store's back (in a directory or a bucket alike).
    pub fn flip_a_byte(&self, hex: &str) {
        let store = self.store();
        let key = pipe::store::Store::object_key(&hex.parse().unwrap());
        let mut bytes = store.backend().get(&key).unwrap().unwrap().bytes;
        bytes[10] ^= 0x20;
        store
            .backend()
            .put(&key, &bytes, pipe::store::backend::Cond::Overwrite)
            .unwrap();
    }

    /// Wait (at most 20 s, then fail) until some worker holds a lease in the store.
    pub fn wait_for_a_lease(&self) {
        let store = self.store();
        let t0 = std::time::Instant::now();
        while store.live_leases().unwrap().is_empty() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(20),
                "no lease appeared in 20 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Set `key` (dotted: `sampling.temperature`) of pipeline.toml to the TOML `value`. The
    /// key must be there: a test whose config no longer has it fails here rather than
    /// silently testing the config it did not mean to.
    pub fn set(&self, key: &str, value: &str) {
        self.edit(key, Some(value), true);
    }

    /// Add `key` (its table must exist) with the TOML `value`, or replace it.
    pub fn add(&self, key: &str, value: &str) {
        self.edit(key, Some(value), false);
    }

    /// Remove `key`, which must be there.
    pub fn unset(&self, key: &str) {
        self.edit(key, None, true);
    }

    fn edit(&self, key: &str, value: Option<&str>, must_exist: bool) {
        let path = self.path("pipeline.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit_toml(&text, key, value, must_exist)).unwrap();
    }

    /// Make the experiment a baseline study: drop the fine-tuned arm (and with it train,
    /// convert and eval from what `report` needs).
    pub fn baseline_only(&self) {
        self.unset("arms.finetuned");
    }

    /// A real `pipe -f <project>/pipeline.toml <args>` with the repo's venv.
    pub fn real(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("-f")
            .arg(self.path("pipeline.toml"))
            .args(args)
            .env("PIPE_VENV", venv())
            .envs(self.aws())
            .env_remove("PIPE_FAILPOINT")
            .env_remove("PIPE_SYNTHETIC");
        c
    }

    /// The trial transcripts in the store, by item id.
    pub fn trials(&self, stage: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
        let store = self.store();
        let mut out = std::collections::BTreeMap::new();
        for rec in self.all_records(&store) {
            if rec.stage != stage {
                continue;
            }
            let t = store.get_json(&rec.outputs["trial"]).unwrap();
            out.insert(rec.item.clone(), t);
        }
        out
    }

    /// Every action record in the store.
    pub fn all_records(&self, store: &pipe::store::Store) -> Vec<pipe::store::ActionRecord> {
        store
            .backend()
            .list("actions-v1/")
            .unwrap()
            .into_iter()
            .map(|m| {
                let b = store.backend().get(&m.key).unwrap().unwrap();
                serde_json::from_slice(&b.bytes).unwrap()
            })
            .collect()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn log(&self) -> PathBuf {
        self.path("synth.log")
    }

    /// A `pipe --synthetic -f <project>/pipeline.toml <args>` command with the synthetic log on.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--synthetic")
            .arg("-f")
            .arg(self.path("pipeline.toml"))
            .args(args)
            .env("PIPE_SYNTH_LOG", self.log())
            .envs(self.aws())
            .env_remove("PIPE_SYNTH_DELAY_MS")
            .env_remove("PIPE_SYNTH_FAIL")
            .env_remove("PIPE_FAILPOINT");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "pipe {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn spawn(&self, args: &[&str], delay_ms: u64) -> Child {
        self.cmd(args)
            .env("PIPE_SYNTH_DELAY_MS", delay_ms.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Lines of the synthetic log: (stage fn, item, pid).
    pub fn log_lines(&self) -> Vec<(String, String, u32)> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut p = l.split(' ');
                (
                    p.next().unwrap().to_string(),
                    p.next().unwrap().to_string(),
                    p.next().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }

    pub fn clear_log(&self) {
        let _ = std::fs::remove_file(self.log());
    }

    /// A stage's ref as JSON, if built.
    pub fn stage_ref(&self, stage: &str) -> Option<serde_json::Value> {
        let r = self.store().get_ref(stage).unwrap()?;
        Some(serde_json::to_value(r).unwrap())
    }

    /// Every record in the store as (stage, item, producer pid).
    pub fn records(&self) -> Vec<(String, String, u32)> {
        self.all_records(&self.store())
            .into_iter()
            .map(|r| (r.stage, r.item, r.producer.pid))
            .collect()
    }
}

/// A llama.cpp server (the xllamacpp wheel) on loopback, serving the SmolLM2 GGUF that
/// scripts/setup.sh assembles; killed on drop.
pub struct LlamaServer {
    child: Child,
    pub url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LlamaServer {
    /// Start it on `model` (relative to the repo) with `parallel` slots of `ctx` tokens each
    /// and `threads` threads, plus `extra` arguments of scripts/llama_server.py. The server
    /// also exits when this process does (`--watch-stdin`), even if it is never dropped.
    pub fn start(
        model: &str,
        threads: u32,
        ctx: u32,
        parallel: u32,
        extra: &[&str],
    ) -> LlamaServer {
        use std::io::BufRead;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let model = self::model(model);
        let mut child = Command::new(venv().join("bin/python"))
            .arg(root.join("scripts/llama_server.py"))
            .args(["--model", model.to_str().unwrap(), "--port", "0"])
            .args(["--threads", &threads.to_string(), "--ctx", &ctx.to_string()])
            .args(["--parallel", &parallel.to_string(), "--watch-stdin"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run scripts/setup.sh to make .venv");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("llama_server.py said {line:?}"))
            .to_string();
        LlamaServer { child, url }
    }

    /// SmolLM2 with `parallel` slots of `ctx` tokens each, one thread per slot.
    pub fn smollm2(parallel: u32, ctx: u32) -> LlamaServer {
        Self::start(SMOLLM2, 1, ctx, parallel, &[])
    }
}

/// `text` (a TOML document) with `key` (dotted) set to the TOML `value`, or removed when
/// `value` is `None`; panics when the key's table is missing, or the key when `must_exist`.
pub fn edit_toml(text: &str, key: &str, value: Option<&str>, must_exist: bool) -> String {
    let mut doc: toml::Table = toml::from_str(text).unwrap();
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap();
    let mut table = &mut doc;
    for p in parts {
        table = table
            .get_mut(p)
            .and_then(|t| t.as_table_mut())
            .unwrap_or_else(|| panic!("the config has no table `{p}` (editing `{key}`)"));
    }
    assert!(
        !must_exist || table.contains_key(last),
        "the config has no `{key}` to change"
    );
    match value {
        Some(v) => {
            let parsed: toml::Table = toml::from_str(&format!("v = {v}")).unwrap();
            table.insert(last.to_string(), parsed["v"].clone());
        }
        None => {
            table.remove(last);
        }
    }
    toml::to_string(&doc).unwrap()
}

/// The small model every model test runs (fetched by scripts/setup.sh).
pub const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The six benchmark tasks (tasks/*.json), in the paper's order.
pub const TASKS: [&str; 6] = [
    "stack",
    "queue",
    "calculator",
    "lru_cache",
    "template",
    "password",
];

/// A model file of the repo (`rel` to its root), which scripts/setup.sh must have fetched.
pub fn model(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

/// Probabilities from logits, in f64.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Deterministic pseudo-random values in [-amp, amp).
pub fn values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

pub fn matrix(rows: usize, cols: usize, seed: u64, amp: f32) -> candle_core::Tensor {
    candle_core::Tensor::from_vec(
        values(rows * cols, seed, amp),
        (rows, cols),
        &candle_core::Device::Cpu,
    )
    .unwrap()
}

/// An adapter of `rank` on `projs` of every block; B is zero when `amp_b` is 0.
pub fn adapter(
    m: &pipe::model::infer::Transformer,
    projs: &[pipe::model::config::Proj],
    rank: usize,
    alpha: f64,
    amp_b: f32,
) -> pipe::model::lora::Adapter {
    let mut targets = Vec::new();
    for (i, blk) in m.blocks.iter().enumerate() {
        for (j, &p) in projs.iter().enumerate() {
            let (out, inp) = blk.proj(p).shape();
            let seed = (i * 16 + j) as u64;
            targets.push(pipe::model::lora::Target {
                block: i,
                proj: p,
                a: matrix(rank, inp, seed, 0.1),
                b: matrix(out, rank, seed + 1000, amp_b),
            });
        }
    }
    pipe::model::lora::Adapter {
        targets,
        alpha,
        rank,
        rslora: false,
        // B as the model holds its rows (SmolLM2's GGUF: llama.cpp's permuted q/k).
        order: pipe::model::rope::QkOrder::of(&m.config),
    }
}

pub fn logits(t: &pipe::model::infer::Transformer, ids: &[u32]) -> Vec<f32> {
    t.forward_one(ids, &mut pipe::model::infer::SeqCache::default())
        .unwrap()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Write the model of `gguf` (llama or qwen2) out as a Hugging Face checkpoint directory:
/// tensors renamed and dequantised to f32, a llama's q/k rows un-permuted back to rotate-half
/// order, config.json, tokenizer.json and tokenizer_config.json with the chat template.
pub fn write_hf_dir(gguf: &Path, m: &pipe::chat::local::LocalModel, dir: &Path) {
    use candle_core::Device;
    use candle_core::quantized::gguf_file;
    use pipe::model::rope::to_halves;
    use serde_json::json;
    let mut f = std::fs::File::open(gguf).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let arch = ct.metadata["general.architecture"]
        .to_string()
        .unwrap()
        .clone();
    let md = |k: &str| ct.metadata[&format!("{arch}.{k}")].to_u32().unwrap() as usize;
    let (heads, kv_heads) = (md("attention.head_count"), md("attention.head_count_kv"));
    let permuted = arch == "llama";
    let names = [
        ("attn_norm", "input_layernorm"),
        ("ffn_norm", "post_attention_layernorm"),
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ];
    let mut out = std::collections::HashMap::new();
    let infos: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    for name in infos {
        let t = ct
            .tensor(&mut f, &name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let hf = match name.as_str() {
            "token_embd.weight" => "model.embed_tokens.weight".to_string(),
            "output_norm.weight" => "model.norm.weight".to_string(),
            "output.weight" => "lm_head.weight".to_string(),
            _ => {
                let parts: Vec<&str> = name.split('.').collect();
                let (_, hf) = names.iter().find(|(g, _)| *g == parts[2]).unwrap();
                format!("model.layers.{}.{hf}.{}", parts[1], parts[3])
            }
        };
        let t = if permuted && name.ends_with("attn_q.weight") {
            to_halves(&t, heads).unwrap()
        } else if permuted && name.ends_with("attn_k.weight") {
            to_halves(&t, kv_heads).unwrap()
        } else {
            t
        };
        out.insert(hf, t);
    }
    std::fs::create_dir_all(dir).unwrap();
    candle_core::safetensors::save(&out, dir.join("model.safetensors")).unwrap();
    let f32_of = |k: &str| ct.metadata[&format!("{arch}.{k}")].to_f32().unwrap();
    let class = if permuted {
        "LlamaForCausalLM"
    } else {
        "Qwen2ForCausalLM"
    };
    let config = json!({
        "architectures": [class],
        "model_type": arch,
        "vocab_size": m.transformer().embed.dims()[0],
        "hidden_size": md("embedding_length"),
        "intermediate_size": md("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": md("block_count"),
        "rms_norm_eps": f32_of("attention.layer_norm_rms_epsilon"),
        "rope_theta": f32_of("rope.freq_base"),
        "max_position_embeddings": md("context_length"),
        "tie_word_embeddings": !ct.tensor_infos.contains_key("output.weight"),
        "rope_scaling": null,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tok = m.tokenizer();
    tok.tokenizers()
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    let template = ct.metadata["tokenizer.chat_template"]
        .to_string()
        .unwrap()
        .clone();
    let tc = json!({
        "chat_template": template,
        "eos_token": tok.token(tok.eos()).unwrap(),
        "bos_token": tok.bos().and_then(|b| tok.token(b)),
        "add_bos_token": tok.adds_bos(),
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
}

/// Fail with pipe's output unless it succeeded.
pub fn assert_ok(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "pipe failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The repo's Python venv (made by scripts/setup.sh).
pub fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv")
}

/// A small deterministic PRNG (splitmix64), so a failing crash test can be replayed by seed.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The charts every report has, baseline arms alone included.
pub const BASELINE_CHARTS: [&str; 4] = [
    "chart-rates",
    "chart-heatmap",
    "chart-retries",
    "chart-durations",
];

/// The `id`s of a report page's elements; panics unless the page is well-formed XHTML.
pub fn html_ids(html: &str) -> Vec<String> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(html, opts)
        .unwrap_or_else(|e| panic!("the report page is not well-formed: {e}"))
        .descendants()
        .filter_map(|n| n.attribute("id").map(str::to_string))
        .collect()
}

/// Tests for `stack` that differ per trial (so extract keeps one sample per trial), by `n`.
pub fn stack_tests_reply(n: u64) -> String {
    scripted::py(&format!(
        "import pytest\nfrom implementation import Stack\n\n\ndef test_push_pop_{n}():\n    s = Stack()\n    s.push({n})\n    assert s.pop() == {n}\n\n\ndef test_empty_{n}():\n    s = Stack()\n    assert s.is_empty()\n    with pytest.raises(IndexError):\n        s.pop()\n"
    ))
}

/// A server whose `stack` trials all pass, each with its own tests (by the request's seed: the
/// same trials get the same tests in every store).
pub fn passing_stack_server() -> scripted::Server {
    use scripted::{IMPL, Reply, Request, Server, not_found, py};
    Server::start(|r: &Request| {
        if !r.is_chat() {
            not_found()
        } else if r.is_tests_step() {
            Reply::Content(stack_tests_reply(
                r.body["seed"].as_u64().unwrap() % 100_000,
            ))
        } else {
            Reply::Content(py(IMPL))
        }
    })
}

/// A server that answers every task with `stack` tests (each trial its own, by seed) and
/// `implementation`, each reply after `latency`, as a busy server would.
pub fn slow_stack_server(
    latency: std::time::Duration,
    implementation: &'static str,
) -> scripted::Server {
    use scripted::{Reply, Request, Server, not_found, py};
    Server::start(move |r: &Request| {
        if !r.is_chat() {
            not_found()
        } else if r.is_tests_step() {
            let n = r.body["seed"].as_u64().unwrap() % 100_000;
            Reply::Slow(latency, stack_tests_reply(n))
        } else {
            Reply::Slow(latency, py(implementation))
        }
    })
}

/// The items of `trial`'s base arm that the synthetic stages computed, in order.
pub fn trial_items_computed(p: &Project) -> Vec<String> {
    p.log_lines()
        .into_iter()
        .filter(|(f, item, _)| f == "trial" && item.contains("/base/"))
        .map(|(_, item, _)| item)
        .collect()
}

/// A project whose `stack` trials come from `url` and whose training fine-tunes SmolLM2 (the
/// local model `s`) in process: one short epoch, a checkpoint at every step.
pub fn smollm2_training_project(url: &str, trials: u32) -> Project {
    let p = Project::openai(url, &["stack"], trials, 0, "");
    let gguf = model(SMOLLM2);
    p.add(
        "models.s",
        &format!(
            "{{ backend = \"local\", gguf = {:?}, threads = 2 }}",
            gguf.to_str().unwrap()
        ),
    );
    p.add("train.model", "\"s\"");
    p.set("train.epochs", "1");
    p.set("train.batch_size", "1");
    p.set("train.max_seq_len", "768");
    p.set("train.val_fraction", "0.25");
    p.add("train.checkpoint_s", "0");
    p
}
