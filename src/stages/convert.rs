//! The `convert` stage: one item. From train's PEFT adapter and the base model's GGUF, the
//! files llama.cpp and Ollama load on their own — the adapter as llama.cpp's LoRA GGUF, the
//! merged model (q4_k_m and/or f16, [`crate::convert`]) streamed into the store, and an Ollama
//! `Modelfile`. With no adapter (train had nothing to train on) it records why and makes none.

use super::runtime::Runtime;
use super::train::{RECORD as TRAIN_RECORD, TrainRecord};
use crate::convert::{MergeStats, Quantization, merge_gguf};
use crate::engine::{Context, Item, Job, Outputs, Stage, StageError};
use crate::model::config;
use crate::model::lora::{Adapter, PEFT_CONFIG, PEFT_WEIGHTS};
use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The conversion record's output name.
pub const RECORD: &str = "convert.json";
/// llama.cpp's LoRA adapter GGUF.
pub const ADAPTER_GGUF: &str = "adapter.gguf";
/// The Ollama Modelfile.
pub const MODELFILE: &str = "Modelfile";

/// The merged model's output name for `q`.
pub fn merged_name(q: Quantization) -> String {
    format!("model-{}.gguf", q.name())
}

/// What keys conversion: the base (its identity) and what is written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The `[models]` entry the adapter was trained on.
    pub model: String,
    /// Its identity (the blake3 of its files).
    pub base: Value,
    /// The merged models to write, in order.
    pub merged: Vec<Quantization>,
}

/// One file written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Written {
    /// Bytes.
    pub bytes: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// For a merged model: tensors, merged tensors, types.
    pub merge: Option<MergeStats>,
}

/// What conversion did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertRecord {
    /// Why nothing was converted, when nothing was.
    pub skipped: Option<String>,
    /// The base GGUF's file name (not its path: paths are not part of a result).
    pub base_file: Option<String>,
    /// Every file written, by output name.
    pub files: BTreeMap<String, Written>,
}

/// What the manifest keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Were models written?
    pub converted: bool,
}

/// The stage.
pub struct ConvertStage {
    /// Models.
    pub rt: Arc<Runtime>,
    /// The synthetic stand-in, when not real.
    pub synthetic: Option<super::RunFn>,
}

/// The parameters of `loaded`'s conversion, as keyed.
pub fn params(rt: &Runtime, loaded: &crate::config::Loaded) -> Params {
    let c = &loaded.config;
    let model = c.train.model_name(c).to_string();
    // Validated when the config loaded.
    let q = Quantization::parse(&c.convert.quantization).unwrap_or(Quantization::Q4KM);
    let mut merged = vec![q];
    if c.convert.f16 && q != Quantization::F16 {
        merged.push(Quantization::F16);
    }
    Params {
        base: rt.model_identity(&model),
        model,
        merged,
    }
}

impl Stage for ConvertStage {
    fn name(&self) -> &'static str {
        "convert"
    }
    fn version(&self) -> u32 {
        // 3: k-quants by llama.cpp's scale searches (the q4_k_m bytes changed).
        3
    }
    fn deps(&self) -> &'static [&'static str] {
        &["train"]
    }
    fn params(&self, cx: &Context<'_>) -> Value {
        super::keyed(
            super::to_json(&params(&self.rt, cx.loaded)),
            self.synthetic.is_some(),
        )
    }
    fn items(&self, _cx: &Context<'_>) -> Vec<Item> {
        vec![Item::new("gguf", json!({}))]
    }
    fn run(&self, job: &Job<'_>) -> Result<Outputs, StageError> {
        super::run_or_synthetic(self.synthetic, job, |job| run(&self.rt, job))
    }
}

/// The fine-tuned model's files as people use them, by file name: train's PEFT adapter and
/// everything convert wrote but its record. An error says why there are none.
pub fn deliverables(
    store: &crate::store::Store,
) -> Result<Vec<(String, crate::key::Hash)>, String> {
    let entry = |stage: &str| -> Result<crate::store::ManifestEntry, String> {
        let r = store
            .get_ref(stage)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("`{stage}` is not built yet: run `pipe build convert`"))?;
        let m = store.manifest(&r.manifest).map_err(|e| e.to_string())?;
        m.entries
            .into_iter()
            .next()
            .ok_or_else(|| format!("`{stage}` has no item"))
    };
    let convert = entry("convert")?;
    let mut out: Vec<(String, crate::key::Hash)> = convert
        .outputs
        .iter()
        .filter(|(name, _)| name.as_str() != RECORD)
        .map(|(n, h)| (n.clone(), *h))
        .collect();
    if out.is_empty() {
        let why = convert
            .outputs
            .get(RECORD)
            .and_then(|id| store.get(id).ok())
            .and_then(|b| serde_json::from_slice::<ConvertRecord>(&b).ok())
            .and_then(|r| r.skipped)
            .unwrap_or_else(|| "convert made no files".into());
        return Err(format!("there is no fine-tuned model: {why}"));
    }
    let train = entry("train")?;
    for name in [PEFT_CONFIG, PEFT_WEIGHTS] {
        if let Some(id) = train.outputs.get(name) {
            out.push((name.to_string(), *id));
        }
    }
    out.sort();
    Ok(out)
}

fn failed(what: &str) -> impl Fn(String) -> StageError + '_ {
    move |e| StageError::Failed(format!("{what}: {e}"))
}

fn run(rt: &Runtime, job: &Job<'_>) -> Result<Outputs, StageError> {
    let p: Params = job.params()?;
    let entry = job
        .manifest("train")?
        .entries
        .first()
        .ok_or_else(|| StageError::Failed("train has no output".into()))?;
    let trained: TrainRecord = job.object(entry, TRAIN_RECORD)?;
    let mut rec = ConvertRecord {
        skipped: None,
        base_file: None,
        files: BTreeMap::new(),
    };
    let (Some(cfg_id), Some(weights_id)) = (
        entry.outputs.get(PEFT_CONFIG),
        entry.outputs.get(PEFT_WEIGHTS),
    ) else {
        rec.skipped = Some(match trained.skipped {
            Some(why) => format!("train made no adapter ({why:?})"),
            None => "train made no adapter".into(),
        });
        return finish(job, &rec, BTreeMap::new());
    };

    // The adapter, from train's PEFT files.
    let dir = tempfile::tempdir().map_err(|e| failed("a temporary directory")(e.to_string()))?;
    for (name, id) in [(PEFT_CONFIG, cfg_id), (PEFT_WEIGHTS, weights_id)] {
        std::fs::write(dir.path().join(name), job.store.get(id)?)
            .map_err(|e| failed(name)(e.to_string()))?;
    }
    let adapter =
        Adapter::read_peft(dir.path()).map_err(|e| failed("the adapter")(e.to_string()))?;

    let base = rt
        .local_gguf(job.cx.loaded, &p.model)
        .map_err(StageError::Failed)?;
    rec.base_file = base.file_name().map(|n| n.to_string_lossy().into_owned());
    let (arch, cfg) = header(&base).map_err(failed("the base model"))?;

    let mut objects = BTreeMap::new();
    let t = Instant::now();
    let path = dir.path().join(ADAPTER_GGUF);
    adapter
        .write_gguf(&path, &arch, &cfg)
        .map_err(|e| failed("the adapter GGUF")(e.to_string()))?;
    let bytes = std::fs::read(&path).map_err(|e| failed(ADAPTER_GGUF)(e.to_string()))?;
    objects.insert(ADAPTER_GGUF.to_string(), job.store.put(&bytes)?);
    rec.files.insert(
        ADAPTER_GGUF.into(),
        Written {
            bytes: bytes.len() as u64,
            seconds: t.elapsed().as_secs_f64(),
            merge: None,
        },
    );

    for &q in &p.merged {
        let name = merged_name(q);
        let t = Instant::now();
        let (id, stats) = job.store.put_stream(|w| {
            merge_gguf(&base, Some(&adapter), q, w, |done, total| {
                job.progress(done as u64, total as u64, &format!("{name}: tensors"));
            })
            .map_err(|e| StageError::Failed(format!("{name}: {e}")))
        })?;
        crate::failpoint("convert:merged");
        objects.insert(name.clone(), id);
        rec.files.insert(
            name,
            Written {
                bytes: stats.bytes,
                seconds: t.elapsed().as_secs_f64(),
                merge: Some(stats),
            },
        );
    }
    let modelfile = modelfile(&p.merged, rec.base_file.as_deref().unwrap_or("base.gguf"));
    objects.insert(MODELFILE.to_string(), job.store.put(modelfile.as_bytes())?);
    finish(job, &rec, objects)
}

/// The architecture and shape of the GGUF at `path`, from its header alone.
fn header(path: &Path) -> Result<(String, config::Config), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let ct = Content::read(&mut f).map_err(|e| format!("{}: {e}", path.display()))?;
    let arch = match ct.metadata.get("general.architecture") {
        Some(GgufValue::String(a)) => a.clone(),
        _ => return Err(format!("{}: no general.architecture", path.display())),
    };
    let cfg = config::from_gguf(&ct, &arch, 1).map_err(|e| e.to_string())?;
    Ok((arch, cfg))
}

/// An Ollama Modelfile for the merged model beside it; the adapter route in a comment.
fn modelfile(merged: &[Quantization], base_file: &str) -> String {
    let first = merged_name(merged[0]);
    format!(
        "# The fine-tuned model, merged ({first}); its chat template and stop tokens are in the\n\
         # GGUF's metadata. Register it with `ollama create NAME -f Modelfile` in this directory.\n\
         FROM ./{first}\n\
         \n\
         # Or the base model with the adapter unmerged (the base must be the very file the\n\
         # adapter was trained on, {base_file}):\n\
         # FROM /path/to/{base_file}\n\
         # ADAPTER ./{ADAPTER_GGUF}\n"
    )
}

fn finish(
    job: &Job<'_>,
    rec: &ConvertRecord,
    mut objects: BTreeMap<String, crate::key::Hash>,
) -> Result<Outputs, StageError> {
    let converted = !objects.is_empty();
    let bytes = serde_json::to_vec_pretty(rec).expect("serialises");
    objects.insert(RECORD.to_string(), job.store.put(&bytes)?);
    Ok(Outputs::new(objects, &Summary { converted }))
}
