//! Merge a LoRA adapter into a GGUF model, `W + scale·B·A`, and write it as f16 or q4_k_m,
//! streaming: a tensor is read, merged, quantised and written in chunks of rows, so memory
//! holds a few chunks, never the model (a 7B merge must not need the model three times over).
//!
//! Rows are independent in every ggml type (blocks run along a row), so a chunk of rows of
//! the base dequantises on its own, gets its rows of `B·A` added, and quantises on its own;
//! the chunks' bytes, concatenated, are the tensor's. Chunks run in parallel (rayon), and are
//! written in order. The quantised types are encoded by [`super::kquant`] (llama.cpp's searched
//! scales); f16 and f32 by candle's conversion.

use super::gguf_out::{DEFAULT_ALIGNMENT, GgufWriter, Planned};
use super::kquant;
use super::quant::{Quantization, tensor_type};
use crate::model::config;
use crate::model::lora::Adapter;
use crate::model::rope::QkOrder;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor, ggml_file};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Elements of one chunk (f32: 16 MiB).
const CHUNK_ELEMS: usize = 4 << 20;

/// Why a merge failed.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// Reading the base or writing the output.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The base GGUF does not parse, or a tensor does not convert.
    #[error("{path}: {source}")]
    Candle {
        /// The file.
        path: PathBuf,
        /// The error.
        source: candle_core::Error,
    },
    /// The adapter does not fit the base (trained on another model?).
    #[error("the adapter does not fit {path}: {why}")]
    Mismatch {
        /// The base.
        path: PathBuf,
        /// What does not fit.
        why: String,
    },
}

/// What a merge did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MergeStats {
    /// Tensors written.
    pub tensors: usize,
    /// Tensors that got `scale·B·A` added.
    pub merged: usize,
    /// Tensors written per type (`Q4K`: 140, …).
    pub types: BTreeMap<String, usize>,
    /// Bytes of the file.
    pub bytes: u64,
}

/// Merge `adapter` (none: a plain conversion) into the GGUF at `base` and write the model as
/// `q` to `out`. `progress(done, total)` counts tensors.
pub fn merge_gguf(
    base: &Path,
    adapter: Option<&Adapter>,
    q: Quantization,
    out: impl Write,
    mut progress: impl FnMut(usize, usize),
) -> Result<MergeStats, MergeError> {
    let io = |source| MergeError::Io {
        path: base.to_path_buf(),
        source,
    };
    let candle = |source| MergeError::Candle {
        path: base.to_path_buf(),
        source,
    };
    let mut file = File::open(base).map_err(io)?;
    let ct = Content::read(&mut file).map_err(candle)?;
    let arch = match ct.metadata.get("general.architecture") {
        Some(Value::String(a)) => a.clone(),
        _ => {
            return Err(MergeError::Mismatch {
                path: base.to_path_buf(),
                why: "the GGUF names no `general.architecture`".into(),
            });
        }
    };
    let n_layer = ct
        .metadata
        .get(&format!("{arch}.block_count"))
        .and_then(|v| v.to_u32().ok())
        .unwrap_or(0) as usize;

    // The adapter's B rows in the order this GGUF holds q/k rows, by tensor name.
    let deltas: HashMap<String, (Tensor, Tensor)> = match adapter {
        None => HashMap::new(),
        Some(a) => {
            let cfg = config::from_gguf(&ct, &arch, 1).map_err(candle)?;
            let a = a.in_order(QkOrder::of_gguf(&arch), &cfg).map_err(candle)?;
            let scale = a.scale();
            let mut m = HashMap::new();
            for t in &a.targets {
                let name = format!("blk.{}.{}.weight", t.block, t.proj.gguf());
                let b = (t.b.to_dtype(DType::F32).map_err(candle)? * scale).map_err(candle)?;
                let av = t.a.to_dtype(DType::F32).map_err(candle)?;
                m.insert(name, (b, av));
            }
            m
        }
    };

    let mut infos: Vec<(&String, &candle_core::quantized::gguf_file::TensorInfo)> =
        ct.tensor_infos.iter().collect();
    infos.sort_by_key(|(name, info)| (info.offset, name.as_str()));
    let has_output = ct.tensor_infos.contains_key("output.weight");
    for (name, (b, a)) in &deltas {
        let Some(info) = ct.tensor_infos.get(name) else {
            return Err(MergeError::Mismatch {
                path: base.to_path_buf(),
                why: format!("it adapts {name}, which the model does not have"),
            });
        };
        let dims = info.shape.dims();
        let (bo, ai) = (b.dims()[0], a.dims()[1]);
        if dims != [bo, ai] {
            return Err(MergeError::Mismatch {
                path: base.to_path_buf(),
                why: format!("{name} is {dims:?}, the adapter's B·A is [{bo}, {ai}]"),
            });
        }
    }
    let plan: Vec<Planned> = infos
        .iter()
        .map(|(name, info)| Planned {
            name: (*name).clone(),
            dims: info.shape.dims().to_vec(),
            dtype: tensor_type(q, name, info.shape.dims(), n_layer, has_output),
        })
        .collect();

    let mut metadata: Vec<(String, Value)> = ct
        .metadata
        .iter()
        .filter(|(k, _)| *k != "general.file_type" && *k != "general.quantization_version")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.push(("general.file_type".into(), Value::U32(q.file_type())));
    metadata.push(("general.quantization_version".into(), Value::U32(2)));
    // The same input gives the same bytes: the reader's map has no order.
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let alignment = ct
        .metadata
        .get("general.alignment")
        .and_then(|v| v.to_u32().ok())
        .map_or(DEFAULT_ALIGNMENT, |a| a as usize);

    let out_err = |source| MergeError::Io {
        path: PathBuf::from("<merged model>"),
        source,
    };
    let counting = Counting {
        w: BufWriter::with_capacity(1 << 20, out),
        n: 0,
    };
    let mut g = GgufWriter::start(counting, &metadata, plan.clone(), alignment).map_err(out_err)?;
    let threads = rayon::current_num_threads().max(1);
    let mut stats = MergeStats {
        tensors: plan.len(),
        merged: 0,
        types: BTreeMap::new(),
        bytes: 0,
    };
    for (i, ((name, info), planned)) in infos.iter().zip(&plan).enumerate() {
        *stats
            .types
            .entry(format!("{:?}", planned.dtype))
            .or_default() += 1;
        let dims = info.shape.dims();
        let cols = *dims.last().unwrap_or(&1);
        let rows = dims.iter().product::<usize>() / cols.max(1);
        let in_type = info.ggml_dtype;
        let row_bytes = cols / in_type.block_size() * in_type.type_size();
        let chunk_rows = (CHUNK_ELEMS / cols.max(1)).max(1);
        let delta = deltas.get(*name);
        if delta.is_some() {
            stats.merged += 1;
        }
        let start = ct.tensor_data_offset + info.offset;
        let mut r0 = 0;
        while r0 < rows {
            // Read up to `threads` chunks, convert them in parallel, write them in order.
            let mut batch = Vec::new();
            while batch.len() < threads && r0 < rows {
                let n = chunk_rows.min(rows - r0);
                let mut raw = vec![0u8; n * row_bytes];
                file.seek(SeekFrom::Start(start + (r0 * row_bytes) as u64))
                    .map_err(io)?;
                file.read_exact(&mut raw).map_err(io)?;
                batch.push((r0, n, raw));
                r0 += n;
            }
            let done: Vec<Vec<u8>> = batch
                .into_par_iter()
                .map(|(first, n, raw)| {
                    convert_rows(&raw, in_type, n, cols, delta, first, planned.dtype)
                })
                .collect::<candle_core::Result<_>>()
                .map_err(|e| MergeError::Candle {
                    path: base.to_path_buf(),
                    source: candle_core::Error::Msg(format!("tensor {name}: {e}")),
                })?;
            for bytes in done {
                g.write(&bytes).map_err(out_err)?;
            }
        }
        g.end_tensor().map_err(out_err)?;
        progress(i + 1, plan.len());
    }
    let counting = g.finish().map_err(out_err)?;
    stats.bytes = counting.n;
    Ok(stats)
}

/// Rows `first..first + n` of a tensor: dequantised, `B[rows]·A` added, encoded as `to`.
fn convert_rows(
    raw: &[u8],
    from: GgmlDType,
    n: usize,
    cols: usize,
    delta: Option<&(Tensor, Tensor)>,
    first: usize,
    to: GgmlDType,
) -> candle_core::Result<Vec<u8>> {
    let cpu = Device::Cpu;
    let mut w = ggml_file::qtensor_from_ggml(from, raw, vec![n, cols], &cpu)?.dequantize(&cpu)?;
    if let Some((b, a)) = delta {
        w = (w + b.narrow(0, first, n)?.matmul(a)?)?;
    }
    if kquant::encodes(to) {
        let xs = w.flatten_all()?.to_vec1::<f32>()?;
        return kquant::quantize(&xs, to).map_err(|e| {
            let at = |i: usize| format!("row {}, column {}", first + i / cols, i % cols);
            candle_core::Error::Msg(match e {
                kquant::QuantError::NonFinite { at: i, value } => {
                    format!("{} is {value}", at(i))
                }
                kquant::QuantError::ScaleOverflow { at: i, what, value } => format!(
                    "the block at {} needs a {what} of {value}, beyond f16",
                    at(i)
                ),
                e => e.to_string(),
            })
        });
    }
    let q = QTensor::quantize(&w, to)?;
    Ok(q.data()?.into_owned())
}

/// A writer that counts what passes through.
struct Counting<W: Write> {
    w: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.w.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}
