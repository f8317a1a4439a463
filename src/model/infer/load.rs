//! Inference weights from named ones: each projection in the form that runs fastest where it
//! lives (see [`Linear`]), norms and embeddings dense.

use super::transformer::{Block, Linear, Transformer};
use crate::model::config::Proj;
use crate::model::weights::{Stored, Weights};
use candle_core::{Device, Result, Tensor};

fn linear(w: &Stored, bias: Option<Tensor>) -> Result<Linear> {
    match w {
        Stored::Quantized(q) => Linear::new(q.clone(), bias),
        Stored::Dense(t) => Linear::dense(t.clone(), bias),
    }
}

impl Transformer {
    /// Build the model from its named weights on `device`.
    pub fn from_weights(w: &Weights, device: &Device) -> Result<Transformer> {
        let dense = |name: &str| w.need(name)?.dequantize(device);
        let embed_w = w.need("token_embd.weight")?;
        let embed = embed_w.dequantize(device)?;
        // Small models tie the output head to the embeddings.
        let head = match w.get("output.weight") {
            Some(h) => linear(h, None)?,
            None => match embed_w {
                Stored::Quantized(q) => Linear::new(q.clone(), None)?,
                Stored::Dense(_) => Linear::dense(embed.clone(), None)?,
            },
        };
        let n_layer = w.config.n_layer;
        let mut blocks = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let mut proj = Vec::with_capacity(7);
            for p in Proj::ALL {
                let bias = match w.get(&Weights::bias_name(i, p)) {
                    Some(b) => Some(b.dequantize(device)?),
                    None => None,
                };
                proj.push(linear(w.need(&Weights::proj_name(i, p))?, bias)?);
            }
            let proj: [Linear; 7] = proj
                .try_into()
                .map_err(|_| candle_core::Error::Msg("seven projections".into()))?;
            blocks.push(Block {
                attn_norm: dense(&format!("blk.{i}.attn_norm.weight"))?,
                proj,
                ffn_norm: dense(&format!("blk.{i}.ffn_norm.weight"))?,
            });
        }
        Transformer::new(
            w.config.clone(),
            embed,
            blocks,
            dense("output_norm.weight")?,
            head,
        )
    }
}
