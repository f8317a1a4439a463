//! The local backend against llama.cpp itself (the xllamacpp wheel) on the same GGUF files:
//! token ids, greedy generation and next-token probabilities must agree. llama.cpp is the
//! reference because it is what the GGUF format and these files were made for.

mod common;

use pipe::chat::local::LocalModel;
use pipe::chat::{Message, Role};
use pipe::model::tokenizer::GgufTokenizer;
use serde_json::{Value, json};

use common::{LlamaServer, SMOLLM2, model, softmax};
use std::sync::OnceLock;

const QWEN_05B: &str = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// One llama.cpp server per model for the whole test process (f32 KV cache: see
/// [`PROB_TOLERANCE`]).
fn server(rel: &'static str) -> &'static LlamaServer {
    static SMOL: OnceLock<LlamaServer> = OnceLock::new();
    static QWEN: OnceLock<LlamaServer> = OnceLock::new();
    let cell = if rel == SMOLLM2 { &SMOL } else { &QWEN };
    cell.get_or_init(|| LlamaServer::start(rel, 1, 2048, 1, &["--kv-f32"]))
}

fn post(srv: &LlamaServer, path: &str, body: Value) -> Value {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .unwrap()
        .post(format!("{}{path}", srv.url))
        .json(&body)
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap()
}

fn llama_tokenize(srv: &LlamaServer, text: &str) -> Vec<u32> {
    let v = post(
        srv,
        "/tokenize",
        json!({"content": text, "add_special": true, "parse_special": true}),
    );
    serde_json::from_value(v["tokens"].clone()).unwrap()
}

fn tokenizer(rel: &str) -> GgufTokenizer {
    let mut f = std::fs::File::open(model(rel)).unwrap();
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    GgufTokenizer::from_metadata(&ct.metadata).unwrap()
}

/// Texts that exercise each branch of the split regexes, byte-level BPE and special tokens.
fn samples() -> Vec<String> {
    [
        "Hello world",
        "def add(a, b):\n    return a + b\n",
        "class Stack:\n\tdef push(self, x):\n\t\tself.items.append(x)  # comment\n",
        "    indented\n\n\n  trailing   ",
        "12345678 and 3.14159, 007",
        "café naïve résumé é É",
        "中文测试，你好世界。",
        "emoji 😀🎉👍🏽 done",
        "it's I'll we've they're DON'T 'quoted'",
        "x==y!=z>=w && a||b ... ---- ====",
        "https://example.com/path?q=1&r=2#frag",
        "\r\n windows\r\nline\r\n",
        "   ",
        "a\u{a0}b\u{2003}c\u{200b}d",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>text<|im_end|><|im_start|>",
        "import pytest\n\n@pytest.fixture\ndef s():\n    return Stack()\n\n\ndef test_pop(s):\n    with pytest.raises(IndexError):\n        s.pop()\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn check_tokenizer(rel: &'static str, extra: &[&str]) {
    let srv = server(rel);
    let tok = tokenizer(rel);
    let mut texts = samples();
    texts.extend(extra.iter().map(|s| s.to_string()));
    // The chat template's own output, system prompt and generation prompt included.
    let m = LocalModel::load(&model(rel)).unwrap();
    texts.push(
        m.render(&[
            Message::new(Role::System, "You write pytest tests."),
            Message::new(Role::User, "Write tests for a Stack with push/pop/peek."),
        ])
        .unwrap(),
    );
    let mut total = 0;
    for t in &texts {
        let ours = tok.encode(t).unwrap();
        let theirs = llama_tokenize(srv, t);
        assert_eq!(ours, theirs, "{rel}: token ids differ for {t:?}");
        // Byte-level BPE round-trips text without special tokens exactly.
        if !t.contains('<') {
            assert_eq!(&tok.decode(&ours).unwrap(), t, "{rel}: decode of {t:?}");
        }
        total += ours.len();
    }
    assert!(total > 200, "only {total} tokens compared");
}

#[test]
fn smollm2_token_ids_equal_llama_cpp() {
    check_tokenizer(SMOLLM2, &["<repo_name>x<file_sep>y<jupyter_code>"]);
}

#[test]
fn qwen_token_ids_equal_llama_cpp() {
    check_tokenizer(
        QWEN_05B,
        &[
            "<tool_call>{\"a\": 1}</tool_call>",
            "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
            "[PAD151665] is not special",
        ],
    );
}

/// Top-10 next-token probabilities may differ by this much (absolute). llama.cpp quantises
/// activations to 8 bits for its q4 dot products (per 32 for Q4_1, per 256 for Q4_K, in AMX
/// kernels on this CI's CPUs); ours keep about 16 bits (two 8-bit parts) and accumulate in
/// another order: even after one token the log-probabilities differ by up to 0.05 nats; after
/// a 50-token prompt the largest top-10 difference seen was 0.021 for SmolLM2 and 0.008 for
/// Qwen 0.5B; the bound leaves room for other CPUs.
const PROB_TOLERANCE: f64 = 0.05;
/// Greedy tokens that must agree.
const GREEDY_TOKENS: usize = 32;
/// The prompt for the greedy comparison: the project's own kind of request. Greedy decoding
/// amplifies the small numeric differences above wherever llama.cpp's top two tokens are
/// nearly tied: on other prompts the sequences part after 21 to 31 tokens, each time where
/// llama.cpp's own margin between its top two was 0.05 to 0.26 nats. On this one they agree
/// for 56 tokens.
const GREEDY_PROMPT: &str = "Write pytest tests for a Stack class with push, pop and peek.";

#[test]
fn smollm2_greedy_generation_and_probabilities_equal_llama_cpp() {
    check_greedy(SMOLLM2);
}

/// The qwen2 path the same way; slow in a debug build on 2 cores, so not in the default suite.
#[test]
#[ignore = "slow: Qwen2.5-Coder-0.5B generation; run with --ignored"]
fn qwen_greedy_generation_and_probabilities_equal_llama_cpp() {
    check_greedy(QWEN_05B);
}

fn check_greedy(rel: &'static str) {
    let srv = server(rel);
    let m = LocalModel::load(&model(rel)).unwrap();
    let text = m
        .render(&[Message::new(Role::User, GREEDY_PROMPT)])
        .unwrap();
    let prompt = m.tokenizer().encode(&text).unwrap();
    let reply = post(
        srv,
        "/completion",
        json!({
            "prompt": prompt,
            "n_predict": GREEDY_TOKENS,
            "temperature": 0.0,
            "top_k": 1,
            "samplers": ["top_k"],
            "n_probs": 10,
            "return_tokens": true,
            "cache_prompt": false,
            "ignore_eos": true,
        }),
    );
    let theirs: Vec<u32> = serde_json::from_value(reply["tokens"].clone()).unwrap();
    assert_eq!(theirs.len(), GREEDY_TOKENS, "{reply}");
    let per_token = reply["completion_probabilities"].as_array().map(Vec::len);
    assert_eq!(
        per_token,
        Some(GREEDY_TOKENS),
        "top-10 at every generated position"
    );

    // Next-token probabilities after the prompt: the same top-10, within the tolerance.
    let probs = softmax(&m.next_logits(&prompt).unwrap());
    let top = &reply["completion_probabilities"][0]["top_logprobs"];
    let mut worst: f64 = 0.0;
    for e in top.as_array().unwrap() {
        let id = e["id"].as_u64().unwrap() as usize;
        let p = e["logprob"].as_f64().unwrap().exp();
        worst = worst.max((probs[id] - p).abs());
    }
    assert!(
        worst <= PROB_TOLERANCE,
        "top-10 probabilities differ by up to {worst}"
    );
    let mut ours_top: Vec<usize> = (0..probs.len()).collect();
    ours_top.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]));
    assert_eq!(
        ours_top[0] as u64,
        top[0]["id"].as_u64().unwrap(),
        "the most likely next token"
    );

    let ours = m
        .generate(
            &prompt,
            GREEDY_TOKENS,
            candle_transformers::generation::Sampling::ArgMax,
            0,
        )
        .unwrap();
    let agree = ours
        .ids
        .iter()
        .zip(&theirs)
        .take_while(|(a, b)| a == b)
        .count();
    let why = format!(
        "agree for {agree} tokens\nours {:?}\nllama.cpp {:?}\nours: {:?}\nllama.cpp: {:?}",
        ours.ids,
        theirs,
        m.tokenizer().decode(&ours.ids).unwrap(),
        reply["content"]
    );
    if agree < GREEDY_TOKENS {
        // On this machine all 32 agree. Another CPU changes llama.cpp's kernels (and so its
        // rounding): a parting is accepted only late, and only at a near-tie of llama.cpp's own
        // top two where we took its second choice. A wrong model parts early, at a clear winner.
        assert!(agree >= MIN_GREEDY_AGREE, "{why}");
        let at = &reply["completion_probabilities"][agree]["top_logprobs"];
        let (first, second) = (
            at[0]["logprob"].as_f64().unwrap(),
            at[1]["logprob"].as_f64().unwrap(),
        );
        assert!(
            first - second < NEAR_TIE_NATS,
            "parted at a clear winner ({first} vs {second}): {why}"
        );
        assert_eq!(
            Some(u64::from(ours.ids[agree])),
            at[1]["id"].as_u64(),
            "{why}"
        );
    }
}

/// The earliest a parting at a near-tie is accepted (see [`check_greedy`]).
const MIN_GREEDY_AGREE: usize = 16;
/// llama.cpp's top-two log-probability margin below which its choice is a near-tie.
const NEAR_TIE_NATS: f64 = 0.3;
