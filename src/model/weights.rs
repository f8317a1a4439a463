//! A model's weights **by name**, as its files hold them — the form training and conversion
//! need (one tensor at a time, its quantisation kept) and the one inference is built from
//! ([`crate::model::infer::Transformer::from_weights`]).
//!
//! Names are GGUF's (`token_embd.weight`, `blk.N.attn_q.weight`, …) whatever the source: a
//! Hugging Face directory's tensors are renamed on the way in (not reordered: its q/k rows stay
//! in rotate-half order, which the config's `rope_neox` says; see [`super::rope`]).

use super::config::{self, Config, Proj};
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::Content;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Result, Tensor};
use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One stored tensor: GGUF blocks as they are, or a dense float tensor.
#[derive(Debug, Clone)]
pub enum Stored {
    /// A GGUF tensor in its own type (Q4_K, Q8_0, f16, …).
    Quantized(Arc<QTensor>),
    /// A dense tensor (a Hugging Face checkpoint's, widened to f32).
    Dense(Tensor),
}

impl Stored {
    /// As dense f32 on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        match self {
            Stored::Quantized(q) => q.dequantize(device),
            Stored::Dense(t) => t.to_device(device)?.to_dtype(DType::F32),
        }
    }
}

/// A model's architecture, shape and named tensors.
#[derive(Debug, Clone)]
pub struct Weights {
    /// `llama` or `qwen2`.
    pub arch: String,
    /// The shape.
    pub config: Config,
    tensors: BTreeMap<String, Stored>,
}

/// What a tensor name means for loading.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    Required,
    Optional,
}

/// Every tensor a llama/qwen2 model of `n_layer` blocks may have, by GGUF name, with the
/// Hugging Face name it has in a checkpoint.
fn layout(n_layer: usize) -> Vec<(String, String, Need)> {
    use Need::*;
    let mut v = vec![
        (
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
            Required,
        ),
        (
            "output_norm.weight".into(),
            "model.norm.weight".into(),
            Required,
        ),
        // Absent when the head is tied to the embeddings.
        ("output.weight".into(), "lm_head.weight".into(), Optional),
    ];
    for i in 0..n_layer {
        let hf = format!("model.layers.{i}");
        v.push((
            format!("blk.{i}.attn_norm.weight"),
            format!("{hf}.input_layernorm.weight"),
            Required,
        ));
        v.push((
            format!("blk.{i}.ffn_norm.weight"),
            format!("{hf}.post_attention_layernorm.weight"),
            Required,
        ));
        for p in Proj::ALL {
            v.push((
                Weights::proj_name(i, p),
                format!("{hf}.{}.weight", p.hf()),
                Required,
            ));
            v.push((
                Weights::bias_name(i, p),
                format!("{hf}.{}.bias", p.hf()),
                Optional,
            ));
        }
    }
    v
}

impl Weights {
    /// The GGUF name of block `block`'s projection `p`.
    pub fn proj_name(block: usize, p: Proj) -> String {
        format!("blk.{block}.{}.weight", p.gguf())
    }

    /// The GGUF name of its bias.
    pub fn bias_name(block: usize, p: Proj) -> String {
        format!("blk.{block}.{}.bias", p.gguf())
    }

    /// Read a llama or qwen2 GGUF's tensors onto `device`, in their own types.
    pub fn from_gguf<R: Read + Seek>(
        ct: &Content,
        reader: &mut R,
        max_positions: usize,
        device: &Device,
    ) -> Result<Weights> {
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if !config::ARCHITECTURES.contains(&arch.as_str()) {
            candle_core::bail!("architecture `{arch}` is not supported (llama and qwen2 are)");
        }
        let config = config::from_gguf(ct, &arch, max_positions)?;
        let mut tensors = BTreeMap::new();
        for (name, _, need) in layout(config.n_layer) {
            if !ct.tensor_infos.contains_key(&name) {
                if need == Need::Required {
                    candle_core::bail!("the GGUF has no tensor `{name}`");
                }
                continue;
            }
            let q = ct.tensor(reader, &name, device)?;
            tensors.insert(name, Stored::Quantized(Arc::new(q)));
        }
        Ok(Weights {
            arch,
            config,
            tensors,
        })
    }

    /// Read a Hugging Face checkpoint directory's tensors onto `device` as f32, renamed to
    /// GGUF's names (q/k rows left in rotate-half order).
    pub fn from_hf_dir(dir: &Path, max_positions: usize, device: &Device) -> Result<Weights> {
        let (config, tied) = config::from_hf_dir(dir, max_positions)?;
        let arch = super::hf::model_type(dir)?;
        let files: Vec<PathBuf> = super::hf::files(dir)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        // SAFETY: the files are mapped read-only; we read them before anything could rewrite them.
        let st = unsafe { MmapedSafetensors::multi(&files)? };
        let mut tensors = BTreeMap::new();
        for (name, hf, need) in layout(config.n_layer) {
            if st.get(&hf).is_err() || (tied && name == "output.weight") {
                if need == Need::Required {
                    candle_core::bail!("{} has no tensor `{hf}`", dir.display());
                }
                continue;
            }
            let t = st.load(&hf, device)?.to_dtype(DType::F32)?;
            tensors.insert(name, Stored::Dense(t));
        }
        Ok(Weights {
            arch,
            config,
            tensors,
        })
    }

    /// The tensor called `name`, if the model has it.
    pub fn get(&self, name: &str) -> Option<&Stored> {
        self.tensors.get(name)
    }

    /// The tensor called `name`, or an error naming it.
    pub fn need(&self, name: &str) -> Result<&Stored> {
        self.get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("the model has no tensor `{name}`")))
    }

    /// Every tensor, by name, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Stored)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }
}
