//! A Hugging Face checkpoint directory (llama and qwen2 families): which files make the model
//! (`config.json`, one or more `*.safetensors`, the tokenizer files) and its chat template.
//! Its shape is read by [`super::config::from_hf_dir`], its tensors by
//! [`super::weights::Weights::from_hf_dir`].

use candle_core::Result;
use std::path::{Path, PathBuf};

/// The files of `dir` that decide what the model answers, in a stable order: its config,
/// tokenizer files and weights. Their bytes are the model's identity.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut weights: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    weights.sort();
    if weights.is_empty() {
        candle_core::bail!("{} has no *.safetensors", dir.display());
    }
    let mut all = Vec::new();
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let p = dir.join(name);
        if p.is_file() {
            all.push(p);
        } else if name == "config.json" || name == "tokenizer.json" {
            candle_core::bail!("{} has no {name}", dir.display());
        }
    }
    all.extend(weights);
    Ok(all)
}

/// `config.json`'s `model_type` (`llama`, `qwen2`).
pub fn model_type(dir: &Path) -> Result<String> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    let cfg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    Ok(cfg["model_type"].as_str().unwrap_or_default().to_string())
}

/// The chat template of `dir` (`tokenizer_config.json`'s `chat_template`, or the separate
/// `chat_template.jinja` newer checkpoints ship).
pub fn chat_template(dir: &Path) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(t);
    }
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["chat_template"].as_str().map(str::to_string)
}
