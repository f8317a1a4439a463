//! What a model *is*, before any weight is loaded: its architecture, its shape, and the names
//! of its parts in the two layouts we read (GGUF's `blk.N.attn_q` and Hugging Face's
//! `model.layers.N.self_attn.q_proj`).
//!
//! Inference, training and conversion all start here, so the shape is read in one place for
//! each source format and every later stage agrees on it.

use candle_core::Result;
use candle_core::quantized::gguf_file::{Content, Value};
use std::path::Path;

/// The shape of a model, read from its GGUF metadata or `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (fewer than `n_head` with grouped-query attention).
    pub n_kv_head: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The residual stream's width.
    pub hidden: usize,
    /// RMSNorm's epsilon.
    pub eps: f64,
    /// Rotary base frequency.
    pub rope_theta: f32,
    /// Rotary embedding in halves (GPT-NeoX, Qwen, and every Hugging Face checkpoint) rather
    /// than in adjacent pairs (llama.cpp's permuted llama weights).
    pub rope_neox: bool,
    /// The longest sequence: the rotary tables cover this many positions.
    pub max_seq: usize,
}

/// The seven projections of a block, by their role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    /// Query.
    Q,
    /// Key.
    K,
    /// Value.
    V,
    /// Attention output.
    O,
    /// MLP gate.
    Gate,
    /// MLP up.
    Up,
    /// MLP down.
    Down,
}

impl Proj {
    /// All seven, in block order.
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The tensor's name in a GGUF block (`blk.N.<this>.weight`).
    pub fn gguf(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    /// The module's name in a Hugging Face / PEFT checkpoint (`model.layers.N.<this>`).
    pub fn hf(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// The projection whose PEFT module name ends in `name` (`q_proj`, `down_proj`, …).
    pub fn from_hf_suffix(name: &str) -> Option<Proj> {
        Proj::ALL
            .into_iter()
            .find(|p| p.hf().rsplit('.').next() == Some(name))
    }

    /// The projection whose GGUF name is `name` (`attn_q`, `ffn_down`, …).
    pub fn from_gguf(name: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.gguf() == name)
    }
}

/// The architectures we run, and their GGUF name.
pub const ARCHITECTURES: [&str; 2] = ["llama", "qwen2"];

fn meta<'a>(ct: &'a Content, key: &str) -> Result<&'a Value> {
    ct.metadata
        .get(key)
        .ok_or_else(|| candle_core::Error::Msg(format!("the GGUF has no `{key}`")))
}

fn meta_usize(ct: &Content, key: &str) -> Result<usize> {
    Ok(meta(ct, key)?.to_u32()? as usize)
}

/// The model's shape from `<arch>.*` metadata; `max_seq` is capped at `max_positions` (the
/// rotary tables are that long).
pub fn from_gguf(ct: &Content, arch: &str, max_positions: usize) -> Result<Config> {
    let n_head = meta_usize(ct, &format!("{arch}.attention.head_count"))?;
    let hidden = meta_usize(ct, &format!("{arch}.embedding_length"))?;
    if n_head == 0 || hidden % n_head != 0 {
        candle_core::bail!("the GGUF's {n_head} heads do not divide its width {hidden}");
    }
    let head_dim = hidden / n_head;
    if let Ok(rope_dim) = meta_usize(ct, &format!("{arch}.rope.dimension_count"))
        && rope_dim != head_dim
    {
        candle_core::bail!(
            "partial rotary embeddings ({rope_dim} of {head_dim}) are not supported"
        );
    }
    let ctx = meta_usize(ct, &format!("{arch}.context_length")).unwrap_or(max_positions);
    Ok(Config {
        n_layer: meta_usize(ct, &format!("{arch}.block_count"))?,
        n_head,
        n_kv_head: meta_usize(ct, &format!("{arch}.attention.head_count_kv")).unwrap_or(n_head),
        head_dim,
        hidden,
        eps: meta(ct, &format!("{arch}.attention.layer_norm_rms_epsilon"))?.to_f32()? as f64,
        rope_theta: meta(ct, &format!("{arch}.rope.freq_base"))
            .and_then(|v| v.to_f32())
            .unwrap_or(10_000.0),
        // llama.cpp permutes llama's q/k weights for rotation in adjacent pairs; qwen2 keeps
        // the halves (see llama.cpp's `llama_model_rope_type`).
        rope_neox: arch != "llama",
        max_seq: ctx.min(max_positions),
    })
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

/// The shape from a Hugging Face directory's `config.json`, and whether the output head is
/// tied to the embeddings.
pub fn from_hf_dir(dir: &Path, max_positions: usize) -> Result<(Config, bool)> {
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
    if n_head == 0 {
        candle_core::bail!("{}: num_attention_heads is 0", path.display());
    }
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
