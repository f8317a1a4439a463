//! LoRA adapters: read (and written) in the two formats the experiment meets — PEFT's
//! (`adapter_config.json` + `adapter_model.safetensors`, what training produces and what
//! Hugging Face tools read) and llama.cpp's adapter GGUF (what `llama-server --lora` loads).
//!
//! An adapter is applied unmerged: each targeted projection computes `W x + scale · B A x`,
//! so the quantised base weights stay shared between the base and the fine-tuned model.
//!
//! The two formats disagree on a llama model's q/k rows (PEFT: rotate-half order; llama.cpp:
//! permuted, like its base GGUF), so an adapter remembers its [`QkOrder`] and `B` is reordered
//! ([`super::rope`]) whenever it meets a base or a file of the other order.

use super::config::{Config, Proj};
use super::infer::{Lora, Transformer};
use super::rope::{self, QkOrder};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why an adapter could not be read, written or applied.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The adapter's contents are not what the format says.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// candle failed on a tensor.
    #[error("{path}: {source}")]
    Candle {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: candle_core::Error,
    },
}

/// The adapter on one projection of one block.
#[derive(Debug, Clone)]
pub struct Target {
    /// The block.
    pub block: usize,
    /// The projection.
    pub proj: Proj,
    /// `A`, (rank, in).
    pub a: Tensor,
    /// `B`, (out, rank).
    pub b: Tensor,
}

/// A LoRA adapter: its targets and `alpha` (the scale is `alpha / rank`).
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Every adapted projection.
    pub targets: Vec<Target>,
    /// LoRA's alpha.
    pub alpha: f64,
    /// The rank (every target's).
    pub rank: usize,
    /// rsLoRA: the scale is `alpha / sqrt(rank)`.
    pub rslora: bool,
    /// The order of `B`'s q/k rows: [`QkOrder::Halves`] as PEFT writes them,
    /// [`QkOrder::Pairs`] as llama.cpp writes a llama adapter.
    pub order: QkOrder,
}

/// A and B as read, by block and projection (either may be missing until both are read).
type Pairs = HashMap<(usize, Proj), (Option<Tensor>, Option<Tensor>)>;

/// Every (A, B) pair as a [`Target`]; a half pair is `lonely(block, proj)`'s error.
fn pair_up(
    pairs: Pairs,
    lonely: impl Fn(usize, Proj) -> AdapterError,
) -> Result<Vec<Target>, AdapterError> {
    pairs
        .into_iter()
        .map(|((block, proj), ab)| match ab {
            (Some(a), Some(b)) => Ok(Target { block, proj, a, b }),
            _ => Err(lonely(block, proj)),
        })
        .collect()
}

/// PEFT's `adapter_config.json`, the keys we read and write.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PeftConfig {
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    target_modules: serde_json::Value,
    #[serde(default)]
    peft_type: Option<String>,
    #[serde(default)]
    task_type: Option<String>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    lora_dropout: Option<f64>,
    #[serde(default)]
    fan_in_fan_out: bool,
}

/// The PEFT files of an adapter directory.
pub const PEFT_CONFIG: &str = "adapter_config.json";
/// The PEFT weights file.
pub const PEFT_WEIGHTS: &str = "adapter_model.safetensors";

impl Adapter {
    /// The scale `B A x` is multiplied by.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Read a PEFT directory or an adapter GGUF (by its extension).
    pub fn read(path: &Path) -> Result<Adapter, AdapterError> {
        if path.is_dir() {
            Adapter::read_peft(path)
        } else if path.extension().is_some_and(|e| e == "gguf") {
            Adapter::read_gguf(path)
        } else {
            Err(AdapterError::Format {
                path: path.to_path_buf(),
                why: format!("an adapter is a PEFT directory (with {PEFT_CONFIG}) or a .gguf file"),
            })
        }
    }

    /// Read PEFT's `adapter_config.json` and `adapter_model.safetensors` from `dir`.
    pub fn read_peft(dir: &Path) -> Result<Adapter, AdapterError> {
        let cfg_path = dir.join(PEFT_CONFIG);
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| AdapterError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let cfg: PeftConfig = serde_json::from_str(&text).map_err(|e| AdapterError::Format {
            path: cfg_path.clone(),
            why: e.to_string(),
        })?;
        if cfg.fan_in_fan_out {
            return Err(AdapterError::Format {
                path: cfg_path,
                why: "fan_in_fan_out adapters (GPT-2 style Conv1D) are not supported".into(),
            });
        }
        let w_path = dir.join(PEFT_WEIGHTS);
        let tensors = candle_core::safetensors::load(&w_path, &Device::Cpu).map_err(|source| {
            AdapterError::Candle {
                path: w_path.clone(),
                source,
            }
        })?;
        let bad = |why: String| AdapterError::Format {
            path: w_path.clone(),
            why,
        };
        let mut pairs = Pairs::new();
        for (name, t) in tensors {
            // base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
            let parse = || -> Option<(usize, Proj, bool)> {
                let rest = &name[name.find("layers.")? + "layers.".len()..];
                let mut parts = rest.split('.');
                let block: usize = parts.next()?.parse().ok()?;
                let _attn_or_mlp = parts.next()?;
                let proj = Proj::from_hf_suffix(parts.next()?)?;
                let which = parts.next()?;
                let is_a = match which {
                    "lora_A" => true,
                    "lora_B" => false,
                    _ => return None,
                };
                Some((block, proj, is_a))
            };
            let (block, proj, is_a) =
                parse().ok_or_else(|| bad(format!("unexpected tensor `{name}`")))?;
            let e = pairs.entry((block, proj)).or_default();
            if is_a { e.0 = Some(t) } else { e.1 = Some(t) }
        }
        let targets = pair_up(pairs, |block, proj| {
            bad(format!(
                "layer {block} {} has only one of lora_A / lora_B",
                proj.hf()
            ))
        })?;
        Adapter::checked(
            targets,
            cfg.lora_alpha,
            cfg.use_rslora,
            Some(cfg.r),
            QkOrder::Halves,
            &w_path,
        )
    }

    /// Read a llama.cpp adapter GGUF (`general.type = adapter`, `adapter.type = lora`).
    pub fn read_gguf(path: &Path) -> Result<Adapter, AdapterError> {
        let mut file = std::fs::File::open(path).map_err(|source| AdapterError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let candle = |source| AdapterError::Candle {
            path: path.to_path_buf(),
            source,
        };
        let bad = |why: String| AdapterError::Format {
            path: path.to_path_buf(),
            why,
        };
        let ct = gguf_file::Content::read(&mut file).map_err(candle)?;
        let text = |k: &str| ct.metadata.get(k).and_then(|v| v.to_string().ok()).cloned();
        if text("general.type").as_deref() != Some("adapter")
            || text("adapter.type").as_deref() != Some("lora")
        {
            return Err(bad(
                "not a LoRA adapter GGUF (general.type = adapter, adapter.type = lora)".into(),
            ));
        }
        let alpha = ct
            .metadata
            .get("adapter.lora.alpha")
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(0.0) as f64;
        let mut pairs = Pairs::new();
        let names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
        for name in names {
            // blk.3.attn_q.weight.lora_a
            let parse = || -> Option<(usize, Proj, bool)> {
                let mut parts = name.split('.');
                (parts.next()? == "blk").then_some(())?;
                let block: usize = parts.next()?.parse().ok()?;
                let proj = Proj::from_gguf(parts.next()?)?;
                (parts.next()? == "weight").then_some(())?;
                let is_a = match parts.next()? {
                    "lora_a" => true,
                    "lora_b" => false,
                    _ => return None,
                };
                Some((block, proj, is_a))
            };
            let (block, proj, is_a) =
                parse().ok_or_else(|| bad(format!("unexpected tensor `{name}`")))?;
            let t = ct
                .tensor(&mut file, &name, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .map_err(candle)?;
            let e = pairs.entry((block, proj)).or_default();
            if is_a { e.0 = Some(t) } else { e.1 = Some(t) }
        }
        let targets = pair_up(pairs, |block, proj| {
            bad(format!(
                "blk.{block}.{} has only one of lora_a / lora_b",
                proj.gguf()
            ))
        })?;
        let rank = targets
            .first()
            .and_then(|t| t.a.dims().first().copied())
            .unwrap_or(1);
        // llama.cpp: scale = alpha / rank, or 1 when the file gives no alpha.
        let alpha = if alpha == 0.0 { rank as f64 } else { alpha };
        let order = QkOrder::of_gguf(text("general.architecture").as_deref().unwrap_or(""));
        Adapter::checked(targets, alpha, false, None, order, path)
    }

    /// Check every target's shapes and the common rank; sort targets for a stable order.
    fn checked(
        mut targets: Vec<Target>,
        alpha: f64,
        rslora: bool,
        rank: Option<usize>,
        order: QkOrder,
        path: &Path,
    ) -> Result<Adapter, AdapterError> {
        let bad = |why: String| AdapterError::Format {
            path: path.to_path_buf(),
            why,
        };
        if targets.is_empty() {
            return Err(bad("no LoRA tensors".into()));
        }
        targets.sort_by_key(|t| (t.block, t.proj as usize));
        let rank = match rank {
            Some(r) => r,
            None => targets[0].a.dims()[0],
        };
        for t in &targets {
            let (ra, _) = t.a.dims2().map_err(|e| bad(e.to_string()))?;
            let (_, rb) = t.b.dims2().map_err(|e| bad(e.to_string()))?;
            if ra != rank || rb != rank {
                return Err(bad(format!(
                    "layer {} {}: A is {:?} and B is {:?}, the rank is {rank}",
                    t.block,
                    t.proj.hf(),
                    t.a.dims(),
                    t.b.dims()
                )));
            }
        }
        Ok(Adapter {
            targets,
            alpha,
            rank,
            rslora,
            order,
        })
    }

    /// This adapter with `B`'s q/k rows in `order`, for a model of shape `config`.
    pub fn in_order(&self, order: QkOrder, config: &Config) -> candle_core::Result<Adapter> {
        let mut out = self.clone();
        for t in &mut out.targets {
            t.b = rope::reorder(&t.b, t.proj, self.order, order, config)?;
        }
        out.order = order;
        Ok(out)
    }

    /// `base` with this adapter on, times `user_scale` (1 for the adapter as trained).
    /// The base weights are shared, not copied.
    pub fn apply(&self, base: &Transformer, user_scale: f64) -> candle_core::Result<Transformer> {
        let mut m = base.clone();
        let scale = self.scale() * user_scale;
        let device = base.device().clone();
        let this = self.in_order(QkOrder::of(&base.config), &base.config)?;
        for t in &this.targets {
            let Some(block) = m.blocks.get_mut(t.block) else {
                candle_core::bail!(
                    "the adapter names layer {} but the model has {}",
                    t.block,
                    base.blocks.len()
                );
            };
            block.proj_mut(t.proj).set_lora(Lora {
                a: t.a.to_device(&device)?,
                b: t.b.to_device(&device)?,
                scale,
            })?;
        }
        Ok(m)
    }

    /// Write PEFT's two files into `dir` (created), with module names and q/k row order as a
    /// Hugging Face llama/qwen2 checkpoint of shape `config` has them.
    pub fn write_peft(
        &self,
        dir: &Path,
        base_model: &str,
        config: &Config,
    ) -> Result<(), AdapterError> {
        let this =
            self.in_order(QkOrder::Halves, config)
                .map_err(|source| AdapterError::Candle {
                    path: dir.to_path_buf(),
                    source,
                })?;
        std::fs::create_dir_all(dir).map_err(|source| AdapterError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut modules: Vec<&str> = self
            .targets
            .iter()
            .map(|t| t.proj.hf().rsplit('.').next().unwrap_or_default())
            .collect();
        modules.sort_unstable();
        modules.dedup();
        let cfg = PeftConfig {
            r: self.rank,
            lora_alpha: self.alpha,
            use_rslora: self.rslora,
            target_modules: serde_json::json!(modules),
            peft_type: Some("LORA".into()),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: Some(base_model.into()),
            bias: Some("none".into()),
            lora_dropout: Some(0.0),
            fan_in_fan_out: false,
        };
        let cfg_path = dir.join(PEFT_CONFIG);
        let text = serde_json::to_string_pretty(&cfg).expect("a config serialises");
        std::fs::write(&cfg_path, text).map_err(|source| AdapterError::Io {
            path: cfg_path,
            source,
        })?;
        let mut tensors = HashMap::new();
        for t in &this.targets {
            let stem = format!("base_model.model.model.layers.{}.{}", t.block, t.proj.hf());
            tensors.insert(format!("{stem}.lora_A.weight"), t.a.clone());
            tensors.insert(format!("{stem}.lora_B.weight"), t.b.clone());
        }
        let w_path = dir.join(PEFT_WEIGHTS);
        candle_core::safetensors::save(&tensors, &w_path).map_err(|source| AdapterError::Candle {
            path: w_path,
            source,
        })
    }

    /// Write a llama.cpp adapter GGUF (f32 tensors, q/k rows as llama.cpp orders them) for a
    /// base model of `arch` and shape `config`.
    pub fn write_gguf(&self, path: &Path, arch: &str, config: &Config) -> Result<(), AdapterError> {
        let candle = |source| AdapterError::Candle {
            path: path.to_path_buf(),
            source,
        };
        let this = self
            .in_order(QkOrder::of_gguf(arch), config)
            .map_err(candle)?;
        let mut named = Vec::with_capacity(this.targets.len() * 2);
        for t in &this.targets {
            let stem = format!("blk.{}.{}.weight", t.block, t.proj.gguf());
            let a = QTensor::quantize(
                &t.a.to_dtype(candle_core::DType::F32).map_err(candle)?,
                GgmlDType::F32,
            )
            .map_err(candle)?;
            let b = QTensor::quantize(
                &t.b.to_dtype(candle_core::DType::F32).map_err(candle)?,
                GgmlDType::F32,
            )
            .map_err(candle)?;
            named.push((format!("{stem}.lora_a"), a));
            named.push((format!("{stem}.lora_b"), b));
        }
        // llama.cpp applies alpha / rank; rsLoRA's alpha / sqrt(rank) is folded into alpha.
        let alpha = self.scale() * self.rank as f64;
        let metadata = [
            ("general.architecture", Value::String(arch.into())),
            ("general.type", Value::String("adapter".into())),
            ("adapter.type", Value::String("lora".into())),
            ("adapter.lora.alpha", Value::F32(alpha as f32)),
        ];
        let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let ts: Vec<(&str, &QTensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut file = std::fs::File::create(path).map_err(|source| AdapterError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        gguf_file::write(&mut file, &md, &ts).map_err(candle)
    }
}
