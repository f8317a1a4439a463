//! Building a [`Transformer`] from a Hugging Face checkpoint directory (llama and qwen2
//! families): `config.json`, one or more `*.safetensors`, the tokenizer files.

use super::transformer::{Block, Config, Linear, Proj, Transformer};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Result, Tensor};
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

fn get<'a>(cfg: &'a serde_json::Value, key: &str, dir: &Path) -> Result<&'a serde_json::Value> {
    let v = &cfg[key];
    if v.is_null() {
        candle_core::bail!("{}/config.json has no `{key}`", dir.display());
    }
    Ok(v)
}

fn get_usize(cfg: &serde_json::Value, key: &str, dir: &Path) -> Result<usize> {
    get(cfg, key, dir)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| candle_core::Error::Msg(format!("config.json: `{key}` is not a number")))
}

/// The shape from `config.json`.
pub fn config(dir: &Path, max_positions: usize) -> Result<(Config, bool)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    let cfg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    let kind = cfg["model_type"].as_str().unwrap_or_default();
    if !["llama", "qwen2"].contains(&kind) {
        candle_core::bail!(
            "{}: model_type `{kind}` is not supported (llama and qwen2 are)",
            path.display()
        );
    }
    if !cfg["rope_scaling"].is_null() {
        candle_core::bail!("{}: rope_scaling is not supported", path.display());
    }
    let hidden = get_usize(&cfg, "hidden_size", dir)?;
    let n_head = get_usize(&cfg, "num_attention_heads", dir)?;
    let head_dim = cfg["head_dim"]
        .as_u64()
        .map_or(hidden / n_head, |v| v as usize);
    let ctx = cfg["max_position_embeddings"]
        .as_u64()
        .map_or(max_positions, |v| v as usize);
    let config = Config {
        n_layer: get_usize(&cfg, "num_hidden_layers", dir)?,
        n_head,
        n_kv_head: cfg["num_key_value_heads"]
            .as_u64()
            .map_or(n_head, |v| v as usize),
        head_dim,
        hidden,
        eps: get(&cfg, "rms_norm_eps", dir)?.as_f64().unwrap_or(1e-6),
        rope_theta: cfg["rope_theta"].as_f64().unwrap_or(10_000.0) as f32,
        // Hugging Face keeps q/k unpermuted and rotates halves, for llama too.
        rope_neox: true,
        max_seq: ctx.min(max_positions),
    };
    let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);
    Ok((config, tied))
}

/// Load the checkpoint in `dir` onto `device`.
pub fn load(dir: &Path, max_positions: usize, device: &Device) -> Result<Transformer> {
    let (config, tied) = config(dir, max_positions)?;
    let weights: Vec<PathBuf> = files(dir)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    // SAFETY: the files are mapped read-only; we read them before anything could rewrite them.
    let st = unsafe { MmapedSafetensors::multi(&weights)? };
    let dense = |name: &str| -> Result<Tensor> { st.load(name, device)?.to_dtype(DType::F32) };
    let has = |name: &str| st.get(name).is_ok();
    let embed = dense("model.embed_tokens.weight")?;
    let head = if tied || !has("lm_head.weight") {
        Linear::dense(embed.clone(), None)?
    } else {
        Linear::dense(dense("lm_head.weight")?, None)?
    };
    let mut blocks = Vec::with_capacity(config.n_layer);
    for i in 0..config.n_layer {
        let pre = format!("model.layers.{i}");
        let mut proj = Vec::with_capacity(7);
        for p in Proj::ALL {
            let bias = format!("{pre}.{}.bias", p.hf());
            let bias = if has(&bias) {
                Some(dense(&bias)?)
            } else {
                None
            };
            proj.push(Linear::dense(
                dense(&format!("{pre}.{}.weight", p.hf()))?,
                bias,
            )?);
        }
        let proj: [Linear; 7] = proj
            .try_into()
            .map_err(|_| candle_core::Error::Msg("seven projections".into()))?;
        blocks.push(Block {
            attn_norm: dense(&format!("{pre}.input_layernorm.weight"))?,
            proj,
            ffn_norm: dense(&format!("{pre}.post_attention_layernorm.weight"))?,
        });
    }
    Transformer::new(config, embed, blocks, dense("model.norm.weight")?, head)
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
