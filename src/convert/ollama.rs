//! Registering a model with a running Ollama through its HTTP API — no `ollama` binary needed.
//!
//! Ollama names blobs by sha256: each file is hashed (streamed), offered with `HEAD
//! /api/blobs/sha256:<hex>` (200: the server has it already), uploaded with `POST` of the same
//! path when it does not (the body streamed from the file, never held in memory), and the model
//! is then made with `POST /api/create {"model", "files": {name: digest}}`. The server checks
//! every upload against the digest in its path, so a corrupt upload cannot become a model.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why registering failed.
#[derive(Debug, thiserror::Error)]
pub enum OllamaError {
    /// A local file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The server could not be reached or answered with an error.
    #[error("Ollama at {url}: {what}")]
    Server {
        /// The endpoint.
        url: String,
        /// What happened (status and the start of the body).
        what: String,
    },
}

/// One file uploaded (or found present).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Blob {
    /// The file's name in the model (`model-q4_k_m.gguf`).
    pub name: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub bytes: u64,
    /// Whether it was uploaded (else the server had it).
    pub uploaded: bool,
}

/// `sha256:<hex>` of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, OllamaError> {
    let io = |source| OllamaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", h.finalize()))
}

/// Register model `name` on the Ollama at `base_url` from `files` (name in the model → local
/// path): upload what the server lacks, then create the model. Returns the blobs.
pub fn register(
    base_url: &str,
    name: &str,
    files: &[(String, PathBuf)],
) -> Result<Vec<Blob>, OllamaError> {
    let base = base_url.trim_end_matches('/');
    let http = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // Uploads of gigabytes and a create that checks them take a while.
        .timeout(Duration::from_secs(3600))
        .build()
        .map_err(|e| OllamaError::Server {
            url: base.into(),
            what: e.to_string(),
        })?;
    let fail = |url: &str, what: String| OllamaError::Server {
        url: url.to_string(),
        what,
    };
    let mut blobs = Vec::new();
    for (file_name, path) in files {
        let digest = sha256_file(path)?;
        let bytes = std::fs::metadata(path)
            .map_err(|source| OllamaError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        let url = format!("{base}/api/blobs/{digest}");
        let present = http
            .head(&url)
            .send()
            .map_err(|e| fail(&url, e.to_string()))?
            .status()
            .is_success();
        if !present {
            let file = std::fs::File::open(path).map_err(|source| OllamaError::Io {
                path: path.clone(),
                source,
            })?;
            let resp = http
                .post(&url)
                .body(reqwest::blocking::Body::sized(file, bytes))
                .send()
                .map_err(|e| fail(&url, e.to_string()))?;
            if !resp.status().is_success() {
                return Err(fail(&url, describe(resp)));
            }
        }
        blobs.push(Blob {
            name: file_name.clone(),
            digest,
            bytes,
            uploaded: !present,
        });
    }
    let url = format!("{base}/api/create");
    let files: serde_json::Map<String, Value> = blobs
        .iter()
        .map(|b| (b.name.clone(), json!(b.digest)))
        .collect();
    let resp = http
        .post(&url)
        .json(&json!({"model": name, "files": files, "stream": false}))
        .send()
        .map_err(|e| fail(&url, e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(&url, describe(resp)));
    }
    let v: Value = resp.json().map_err(|e| fail(&url, e.to_string()))?;
    if let Some(e) = v.get("error") {
        return Err(fail(&url, e.to_string()));
    }
    Ok(blobs)
}

/// A failed response: its status and the start of its body.
fn describe(resp: reqwest::blocking::Response) -> String {
    let status = resp.status();
    let mut body = Vec::new();
    let _ = resp.take(2048).read_to_end(&mut body);
    let body: String = String::from_utf8_lossy(&body).chars().take(300).collect();
    format!("HTTP {status}: {}", body.trim())
}
