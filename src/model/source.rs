//! Where a local model's files are: a GGUF path, an Ollama model name, or a Hugging Face
//! directory — resolved to files on disk before anything is loaded or hashed.

use std::path::{Path, PathBuf};

/// A model's files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// One GGUF file (also what an Ollama name resolves to).
    Gguf(PathBuf),
    /// A Hugging Face checkpoint directory: `config.json`, `*.safetensors`, `tokenizer.json`,
    /// `tokenizer_config.json` (its `chat_template`).
    HfDir(PathBuf),
}

/// What an Ollama name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaModel {
    /// The model blob (a GGUF).
    pub gguf: PathBuf,
    /// An adapter blob (a llama.cpp LoRA GGUF), when the Modelfile had `ADAPTER`.
    pub adapter: Option<PathBuf>,
}

/// Why a source could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The Ollama model is not in any models directory we know.
    #[error(
        "Ollama model `{name}` not found (looked for {manifest} under {searched}); \
         pull it with `ollama pull {name}` or set OLLAMA_MODELS to Ollama's models directory"
    )]
    OllamaNotFound {
        /// The name as given.
        name: String,
        /// The manifest's path below a models directory.
        manifest: String,
        /// The models directories tried.
        searched: String,
    },
    /// The manifest could not be read or is not what Ollama writes.
    #[error("Ollama manifest {path}: {why}")]
    OllamaManifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The layer media types we use.
const MODEL_LAYER: &str = "application/vnd.ollama.image.model";
const ADAPTER_LAYER: &str = "application/vnd.ollama.image.adapter";

/// Ollama's models directories, in the order Ollama itself would use them: `$OLLAMA_MODELS`,
/// the user's `~/.ollama/models`, then the Linux service's `/usr/share/ollama/.ollama/models`.
pub fn ollama_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("OLLAMA_MODELS").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        dirs.push(Path::new(&h).join(".ollama/models"));
    }
    dirs.push(PathBuf::from("/usr/share/ollama/.ollama/models"));
    dirs
}

/// The manifest path of `name` below a models directory:
/// `[host/][namespace/]model[:tag]` → `manifests/<host>/<namespace>/<model>/<tag>`, with
/// Ollama's defaults `registry.ollama.ai`, `library` and `latest`.
pub fn ollama_manifest_path(name: &str) -> PathBuf {
    let (path, tag) = match name.rsplit_once(':') {
        // A colon inside the host part (`host:port/…`) is not a tag.
        Some((p, t)) if !t.contains('/') => (p, t),
        _ => (name, "latest"),
    };
    let parts: Vec<&str> = path.split('/').collect();
    let (host, ns, model) = match parts.as_slice() {
        [m] => ("registry.ollama.ai", "library", *m),
        [ns, m] => ("registry.ollama.ai", *ns, *m),
        [host, rest @ ..] => {
            let (m, ns) = rest.split_last().expect("two or more parts");
            return Path::new("manifests")
                .join(host)
                .join(ns.join("/"))
                .join(m)
                .join(tag);
        }
        [] => ("registry.ollama.ai", "library", ""),
    };
    Path::new("manifests")
        .join(host)
        .join(ns)
        .join(model)
        .join(tag)
}

/// Resolve an Ollama model name through its manifest to the blobs in `dirs` (see
/// [`ollama_dirs`]).
pub fn resolve_ollama(name: &str, dirs: &[PathBuf]) -> Result<OllamaModel, SourceError> {
    let rel = ollama_manifest_path(name);
    let Some((root, manifest)) = dirs
        .iter()
        .map(|d| (d, d.join(&rel)))
        .find(|(_, m)| m.is_file())
    else {
        return Err(SourceError::OllamaNotFound {
            name: name.into(),
            manifest: rel.display().to_string(),
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let bad = |why: String| SourceError::OllamaManifest {
        path: manifest.clone(),
        why,
    };
    let text = std::fs::read_to_string(&manifest).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let layers = v["layers"]
        .as_array()
        .ok_or_else(|| bad("no `layers`".into()))?;
    let blob = |media: &str| -> Result<Option<PathBuf>, SourceError> {
        let Some(l) = layers.iter().find(|l| l["mediaType"] == media) else {
            return Ok(None);
        };
        let digest = l["digest"]
            .as_str()
            .ok_or_else(|| bad(format!("a {media} layer without a digest")))?;
        // Blobs are named `sha256-<hex>` on disk for the digest `sha256:<hex>`.
        let file = root.join("blobs").join(digest.replacen(':', "-", 1));
        if !file.is_file() {
            return Err(bad(format!("its blob {} is missing", file.display())));
        }
        Ok(Some(file))
    };
    let gguf = blob(MODEL_LAYER)?.ok_or_else(|| bad(format!("no {MODEL_LAYER} layer")))?;
    Ok(OllamaModel {
        gguf,
        adapter: blob(ADAPTER_LAYER)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_manifest_paths_with_ollamas_defaults() {
        let p = |n: &str| ollama_manifest_path(n).display().to_string();
        assert_eq!(
            p("qwen2.5-coder:7b"),
            "manifests/registry.ollama.ai/library/qwen2.5-coder/7b"
        );
        assert_eq!(
            p("smollm2"),
            "manifests/registry.ollama.ai/library/smollm2/latest"
        );
        assert_eq!(p("me/tuned:v1"), "manifests/registry.ollama.ai/me/tuned/v1");
        assert_eq!(
            p("hf.co/bartowski/SmolLM2-GGUF:Q4_K_M"),
            "manifests/hf.co/bartowski/SmolLM2-GGUF/Q4_K_M"
        );
        assert_eq!(
            p("localhost:5000/me/m"),
            "manifests/localhost:5000/me/m/latest"
        );
    }

    #[test]
    fn a_manifest_resolves_to_its_blobs_and_a_missing_one_says_where_it_looked() {
        let d = tempfile::tempdir().unwrap();
        let models = d.path().join("models");
        let m = models.join("manifests/registry.ollama.ai/library/tiny/q4");
        std::fs::create_dir_all(m.parent().unwrap()).unwrap();
        std::fs::create_dir_all(models.join("blobs")).unwrap();
        std::fs::write(models.join("blobs/sha256-aaa"), b"GGUF").unwrap();
        std::fs::write(
            &m,
            r#"{"schemaVersion":2,"layers":[
                {"mediaType":"application/vnd.ollama.image.template","digest":"sha256:bbb","size":1},
                {"mediaType":"application/vnd.ollama.image.model","digest":"sha256:aaa","size":4}]}"#,
        )
        .unwrap();
        let other = d.path().join("empty");
        let r = resolve_ollama("tiny:q4", &[other.clone(), models.clone()]).unwrap();
        assert_eq!(r.gguf, models.join("blobs/sha256-aaa"));
        assert_eq!(r.adapter, None);
        let e = resolve_ollama("tiny:q8", &[other, models])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tiny:q8") && e.contains("ollama pull"), "{e}");
        std::fs::remove_file(d.path().join("models/blobs/sha256-aaa")).unwrap();
        let e = resolve_ollama("tiny:q4", &[d.path().join("models")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha256-aaa") && e.contains("missing"), "{e}");
    }
}
