//! The `openai` backend: any server that speaks OpenAI's `/v1/chat/completions` (llama.cpp's
//! server, Ollama, vLLM, hosted APIs).
//!
//! Infrastructure failures are retried here, with exponential backoff and jitter, honouring
//! `Retry-After`, rotating through the configured base URLs; only when they persist does the
//! caller see an [`LlmError`], which stops the build. The URL and the API key never leave this
//! module: keys and records name the model, not where it was served.

use super::{ChatModel, ChatReply, ChatRequest, LlmError};
use backon::BackoffBuilder;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How to reach one model.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Server roots (`http://host:port`) or API bases ending in `/v1`; requests rotate.
    pub base_urls: Vec<String>,
    /// The model name sent with each request.
    pub model: String,
    /// The bearer token, read from the environment variable the config names.
    pub api_key: Option<String>,
    /// Per-request timeout (the paper: 120 s).
    pub timeout: Duration,
    /// Retries after the first failure.
    pub retries: u32,
    /// First retry delay; doubles, with jitter, up to [`MAX_BACKOFF`].
    pub backoff: Duration,
}

/// The longest wait between two tries, whatever `Retry-After` asks for.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A client for one model on one or more servers.
pub struct OpenAi {
    cfg: OpenAiConfig,
    http: reqwest::blocking::Client,
    next: AtomicUsize,
}

/// One failed try: retry it (after at least `after`), or give up at once.
enum Failure {
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Fatal(String),
}

impl OpenAi {
    /// A client; no request is made yet.
    pub fn new(cfg: OpenAiConfig) -> Result<OpenAi, LlmError> {
        if cfg.base_urls.is_empty() {
            return Err(LlmError::Setup("an openai model needs `base_urls`".into()));
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| LlmError::Setup(format!("HTTP client: {e}")))?;
        Ok(OpenAi {
            cfg,
            http,
            next: AtomicUsize::new(0),
        })
    }

    /// `base` + `/v1/<path>`, whether `base` already ends in `/v1` or not.
    fn url(base: &str, path: &str) -> String {
        let b = base.trim_end_matches('/');
        if b.ends_with("/v1") {
            format!("{b}/{path}")
        } else {
            format!("{b}/v1/{path}")
        }
    }

    /// The server root, for non-OpenAI endpoints (Ollama's `/api/tags`).
    fn root(base: &str) -> &str {
        let b = base.trim_end_matches('/');
        b.strip_suffix("/v1").unwrap_or(b)
    }

    fn authed(&self, rb: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.cfg.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    /// Run `f` against the servers in turn until it succeeds, a failure is fatal, or the
    /// retries are spent. Returns the value and how many retries it took.
    fn with_retries<T>(
        &self,
        mut f: impl FnMut(&str) -> Result<T, Failure>,
    ) -> Result<(T, u32), LlmError> {
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(self.cfg.backoff)
            .with_max_delay(MAX_BACKOFF)
            .with_max_times(self.cfg.retries as usize)
            .with_jitter()
            .build();
        let n = self.cfg.base_urls.len();
        let mut i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut tries = 0u32;
        loop {
            let base = &self.cfg.base_urls[i];
            tries += 1;
            match f(base) {
                Ok(v) => return Ok((v, tries - 1)),
                Err(Failure::Fatal(message)) => {
                    return Err(LlmError::Refused {
                        server: base.clone(),
                        message,
                    });
                }
                Err(Failure::Retry { why, after }) => {
                    let Some(delay) = delays.next() else {
                        return Err(LlmError::Unavailable {
                            server: base.clone(),
                            attempts: tries,
                            last: why,
                        });
                    };
                    let delay = after.map_or(delay, |a| a.max(delay)).min(MAX_BACKOFF);
                    tracing::warn!(
                        "model server {base}: {why}; retry {tries} of {} in {delay:?}",
                        self.cfg.retries
                    );
                    std::thread::sleep(delay);
                    i = (i + 1) % n;
                }
            }
        }
    }

    /// What identifies the served model in keys: its name, plus the digest the server reports
    /// where it has one — Ollama's blob digest, llama.cpp's model metadata (parameter count,
    /// size, vocabulary) hashed. Never the URL: moving a server invalidates nothing.
    pub fn identity(&self) -> Result<Value, LlmError> {
        let name = self.cfg.model.clone();
        let (models, _) = self.with_retries(|base| {
            let resp = self.authed(self.http.get(Self::url(base, "models"))).send();
            read_json(resp)
        })?;
        let data = models["data"].as_array().cloned().unwrap_or_default();
        let entry = data
            .iter()
            .find(|m| m["id"] == json!(name))
            .or_else(|| (data.len() == 1).then(|| &data[0]));
        if let Some(meta) = entry.and_then(|e| e.get("meta")).filter(|m| m.is_object()) {
            // `n_ctx` is the server's per-slot context, a setting of how it runs.
            let mut meta = meta.clone();
            meta.as_object_mut().expect("checked").remove("n_ctx");
            let digest = blake3::hash(crate::key::canonical(&meta).as_bytes());
            return Ok(json!({"name": name, "digest": format!("llama.cpp-meta:{digest}")}));
        }
        // Ollama answers /api/tags with each model's blob digest; other servers 404, which is
        // simply "no digest".
        let base = &self.cfg.base_urls[0];
        let tags = self
            .authed(self.http.get(format!("{}/api/tags", Self::root(base))))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .and_then(|r| r.json::<Value>().ok());
        let digest = tags.and_then(|t| {
            t["models"].as_array()?.iter().find_map(|m| {
                let n = m["name"].as_str()?;
                (n == name || n == format!("{name}:latest"))
                    .then(|| m["digest"].as_str().map(str::to_string))?
            })
        });
        Ok(json!({"name": name, "digest": digest}))
    }
}

/// Classify a response: JSON on 2xx; retry on transport errors, 408, 429 and 5xx (with
/// `Retry-After`); give up on other statuses.
fn read_json(resp: reqwest::Result<reqwest::blocking::Response>) -> Result<Value, Failure> {
    let resp = resp.map_err(|e| Failure::Retry {
        why: describe(&e),
        after: None,
    })?;
    let status = resp.status();
    if !status.is_success() {
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let body: String = resp.text().unwrap_or_default().chars().take(300).collect();
        let msg = format!("HTTP {status}: {}", body.trim());
        return if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
            Err(Failure::Retry { why: msg, after })
        } else {
            Err(Failure::Fatal(msg))
        };
    }
    let bytes = resp.bytes().map_err(|e| Failure::Retry {
        why: format!("reading the body: {}", describe(&e)),
        after: None,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Failure::Retry {
        why: format!("malformed JSON ({e}) in {} bytes", bytes.len()),
        after: None,
    })
}

/// A reqwest error with its causes, which is where "connection refused" lives.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl ChatModel for OpenAi {
    fn chat(&self, req: &ChatRequest) -> Result<ChatReply, LlmError> {
        let mut body = json!({
            "model": self.cfg.model,
            "messages": req.messages,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.max_tokens,
            "stream": false,
        });
        if let Some(seed) = req.seed {
            body["seed"] = json!(seed);
        }
        let ((v, ms), retried) = self.with_retries(|base| {
            let t = Instant::now();
            let resp = self
                .authed(self.http.post(Self::url(base, "chat/completions")))
                .json(&body)
                .send();
            let v = read_json(resp)?;
            let Some(choice) = v["choices"].as_array().and_then(|c| c.first()) else {
                return Err(Failure::Retry {
                    why: "the reply has no `choices`".into(),
                    after: None,
                });
            };
            if !choice["message"].is_object() {
                return Err(Failure::Retry {
                    why: "the reply's first choice has no `message`".into(),
                    after: None,
                });
            }
            Ok((v, t.elapsed().as_millis() as u64))
        })?;
        let choice = &v["choices"][0];
        Ok(ChatReply {
            // A null content is an empty answer — an attempt the guard rejects, not an outage.
            content: choice["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            finish_reason: choice["finish_reason"].as_str().map(str::to_string),
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64(),
            completion_tokens: v["usage"]["completion_tokens"].as_u64(),
            duration_ms: ms,
            retried,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_or_without_v1() {
        assert_eq!(
            OpenAi::url("http://h:1/", "chat/completions"),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            OpenAi::url("http://h:1/v1", "models"),
            "http://h:1/v1/models"
        );
        assert_eq!(OpenAi::root("http://h:1/v1/"), "http://h:1");
    }
}
