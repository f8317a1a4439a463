//! Building a [`Transformer`] from a GGUF file (llama.cpp's tensor names and metadata).

use super::transformer::{Block, Config, Linear, Proj, Transformer};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Result};
use std::io::{Read, Seek};
use std::sync::Arc;

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
pub fn config(ct: &Content, arch: &str, max_positions: usize) -> Result<Config> {
    let n_head = meta_usize(ct, &format!("{arch}.attention.head_count"))?;
    let hidden = meta_usize(ct, &format!("{arch}.embedding_length"))?;
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

/// Load the weights of a llama or qwen2 GGUF onto `device`.
pub fn load<R: Read + Seek>(
    ct: &Content,
    reader: &mut R,
    arch: &str,
    max_positions: usize,
    device: &Device,
) -> Result<Transformer> {
    let config = config(ct, arch, max_positions)?;
    let mut qtensor =
        |name: &str| -> Result<Arc<_>> { Ok(Arc::new(ct.tensor(reader, name, device)?)) };
    let embed_q = qtensor("token_embd.weight")?;
    let embed = embed_q.dequantize(device)?;
    let norm = qtensor("output_norm.weight")?.dequantize(device)?;
    // Small models tie the output head to the embeddings.
    let head = match ct.tensor_infos.contains_key("output.weight") {
        true => Linear::new(qtensor("output.weight")?, None)?,
        false => Linear::new(embed_q, None)?,
    };
    let mut blocks = Vec::with_capacity(config.n_layer);
    for i in 0..config.n_layer {
        let mut proj = Vec::with_capacity(7);
        for p in Proj::ALL {
            let w = qtensor(&format!("blk.{i}.{}.weight", p.gguf()))?;
            let bias_name = format!("blk.{i}.{}.bias", p.gguf());
            let bias = match ct.tensor_infos.contains_key(&bias_name) {
                true => Some(qtensor(&bias_name)?.dequantize(device)?),
                false => None,
            };
            proj.push(Linear::new(w, bias)?);
        }
        let proj: [Linear; 7] = proj
            .try_into()
            .map_err(|_| candle_core::Error::Msg("seven projections".into()))?;
        blocks.push(Block {
            attn_norm: qtensor(&format!("blk.{i}.attn_norm.weight"))?.dequantize(device)?,
            proj,
            ffn_norm: qtensor(&format!("blk.{i}.ffn_norm.weight"))?.dequantize(device)?,
        });
    }
    Transformer::new(config, embed, blocks, norm, head)
}
