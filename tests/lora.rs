//! LoRA adapters on the local backend: applied unmerged, with their scale, from PEFT files or
//! a llama.cpp adapter GGUF — and llama.cpp itself reads our GGUF the same way we do.

mod common;

use candle_core::{Device, Tensor};
use common::{SMOLLM2, adapter, logits, max_diff, softmax, values};
use pipe::chat::local::LocalModel;
use pipe::chat::{Message, Role};
use pipe::model::config::Proj;
use pipe::model::lora::Adapter;
use serde_json::json;
use std::path::PathBuf;

fn smollm2() -> LocalModel {
    LocalModel::load(&common::model(SMOLLM2)).unwrap()
}

fn prompt(m: &LocalModel) -> Vec<u32> {
    let text = m
        .render(&[Message::new(
            Role::User,
            "Write a Python function that adds two numbers.",
        )])
        .unwrap();
    m.tokenizer().encode(&text).unwrap()
}

#[test]
fn an_adapter_with_b_zero_changes_nothing() {
    let m = smollm2();
    let base = m.transformer();
    let a = adapter(base, &Proj::ALL, 8, 16.0, 0.0);
    let tuned = a.apply(base, 1.0).unwrap();
    assert!(
        tuned.blocks[0].proj(Proj::Q).lora().is_some(),
        "the adapter is on"
    );
    let ids = prompt(&m);
    assert_eq!(logits(base, &ids), logits(&tuned, &ids));
}

#[test]
fn one_projection_computes_w_x_plus_scale_b_a_x() {
    let m = smollm2();
    let base = m.transformer();
    let (rank, alpha) = (4, 8.0);
    let a = adapter(base, &[Proj::Q, Proj::Down], rank, alpha, 0.05);
    let tuned = a.apply(base, 1.0).unwrap();
    let lin = tuned.blocks[0].proj(Proj::Q);
    let (out, inp) = lin.shape();
    let rows = 3;
    let xv = values(rows * inp, 77, 1.0);
    let x = Tensor::from_vec(xv.clone(), (rows, inp), &Device::Cpu).unwrap();
    let wx: Vec<Vec<f32>> = lin.base(&x).unwrap().to_vec2().unwrap();
    let got: Vec<Vec<f32>> = lin.forward(&x).unwrap().to_vec2().unwrap();
    let av: Vec<Vec<f32>> = a.targets[0].a.to_vec2().unwrap();
    let bv: Vec<Vec<f32>> = a.targets[0].b.to_vec2().unwrap();
    assert_eq!((a.targets[0].block, a.targets[0].proj), (0, Proj::Q));
    let scale = alpha / rank as f64;
    let mut worst = 0f64;
    let mut change = 0f64;
    for r in 0..rows {
        // A x, by hand.
        let ax: Vec<f64> = (0..rank)
            .map(|i| {
                (0..inp)
                    .map(|c| av[i][c] as f64 * xv[r * inp + c] as f64)
                    .sum()
            })
            .collect();
        for o in 0..out {
            let bax: f64 = (0..rank).map(|i| bv[o][i] as f64 * ax[i]).sum();
            let want = wx[r][o] as f64 + scale * bax;
            worst = worst.max((got[r][o] as f64 - want).abs());
            change = change.max((scale * bax).abs());
        }
    }
    assert!(worst < 1e-4, "off by {worst}");
    assert!(change > 0.05, "the adapter's term is visible: {change}");
    // Through the whole model, the logits move.
    let ids = prompt(&m);
    let d = max_diff(&logits(base, &ids), &logits(&tuned, &ids));
    assert!(d > 1e-2, "the adapter changes the logits (by {d})");
    // Scaling the adapter by 0 is the base model again.
    let off = a.apply(base, 0.0).unwrap();
    assert_eq!(logits(base, &ids), logits(&off, &ids));
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn peft_files_and_adapter_gguf_load_to_the_same_model() {
    let m = smollm2();
    let base = m.transformer();
    let a = adapter(base, &[Proj::Q, Proj::V, Proj::Up], 4, 8.0, 0.05);
    let dir = tmp();
    let peft = dir.path().join("peft");
    a.write_peft(&peft, "HuggingFaceTB/SmolLM2-135M-Instruct", &base.config)
        .unwrap();
    let gguf = dir.path().join("adapter.gguf");
    a.write_gguf(&gguf, "llama", &base.config).unwrap();

    let from_peft = Adapter::read(&peft).unwrap();
    let from_gguf = Adapter::read(&gguf).unwrap();
    assert_eq!(from_peft.targets.len(), a.targets.len());
    assert_eq!(from_gguf.targets.len(), a.targets.len());
    assert_eq!(from_peft.scale(), a.scale());
    assert!((from_gguf.scale() - a.scale()).abs() < 1e-6);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["r"], 4);
    assert_eq!(
        config["target_modules"],
        json!(["q_proj", "up_proj", "v_proj"])
    );

    let ids = prompt(&m);
    let lp = logits(&from_peft.apply(base, 1.0).unwrap(), &ids);
    let lg = logits(&from_gguf.apply(base, 1.0).unwrap(), &ids);
    let la = logits(&a.apply(base, 1.0).unwrap(), &ids);
    assert_eq!(lp, la);
    assert!(max_diff(&lg, &la) < 1e-4);
    assert!(max_diff(&la, &logits(base, &ids)) > 1e-2);

    // A broken adapter is a clear error, not a silently different model.
    std::fs::write(peft.join("adapter_config.json"), "{\"r\": 4}").unwrap();
    let e = Adapter::read(&peft).unwrap_err().to_string();
    assert!(
        e.contains("adapter_config.json") && e.contains("lora_alpha"),
        "{e}"
    );
}

/// llama.cpp (`--lora`) reads the adapter GGUF we write and gets the distribution we get.
#[test]
fn llama_cpp_applies_our_adapter_gguf_as_we_do() {
    let m = smollm2();
    let base = m.transformer();
    let a = adapter(base, &[Proj::Q, Proj::V, Proj::Down], 4, 8.0, 0.08);
    let dir = tmp();
    let gguf: PathBuf = dir.path().join("adapter.gguf");
    a.write_gguf(&gguf, "llama", &base.config).unwrap();
    let tuned = Adapter::read(&gguf).unwrap().apply(base, 1.0).unwrap();
    let ids = prompt(&m);
    let ours = softmax(&logits(&tuned, &ids));
    let plain = softmax(&logits(base, &ids));

    let srv = common::LlamaServer::start(
        SMOLLM2,
        1,
        2048,
        1,
        &["--kv-f32", "--lora", gguf.to_str().unwrap()],
    );
    let reply: serde_json::Value = reqwest::blocking::Client::new()
        .post(format!("{}/completion", srv.url))
        .json(&json!({
            "prompt": ids,
            "n_predict": 1,
            "temperature": 0.0,
            "n_probs": 10,
            "cache_prompt": false,
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let top = reply["completion_probabilities"][0]["top_logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .clone();
    let (mut worst, mut moved) = (0f64, 0f64);
    for e in &top {
        let id = e["id"].as_u64().unwrap() as usize;
        let p = e["logprob"].as_f64().unwrap().exp();
        worst = worst.max((ours[id] - p).abs());
        moved = moved.max((plain[id] - p).abs());
    }
    assert!(
        worst <= 0.05,
        "llama.cpp's top-10 differs from ours by {worst}"
    );
    assert!(
        moved > 0.05,
        "the adapter must move llama.cpp's distribution visibly for this to mean anything ({moved})"
    );
}
