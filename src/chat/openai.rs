//! The `openai` backend: any server that speaks OpenAI's `/v1/chat/completions` (llama.cpp's
//! server, Ollama, vLLM, hosted APIs).
//!
//! Infrastructure failures are retried here, with exponential backoff and jitter, honouring
//! `Retry-After`, rotating through the configured base URLs; only when they persist does the
//! caller see an [`LlmError`], which stops the build. The URL and the API key never leave this
//! module: keys and records name the model, not where it was served.
//!
//! What a server can send is bounded and classified before anything is believed:
//!
//! * **Size.** A body is read up to [`reply_bound`] of the request's `max_tokens` (64 KiB +
//!   256 bytes a token: far more than any tokenizer's longest token, JSON-escaped), error
//!   bodies up to 4 KiB, listings up to 4 MiB. More is a server fault — an infrastructure
//!   error, never stored — and an endless body ends at the bound, not at the timeout.
//! * **Shape.** The reply's text is the message's `content`: a string (even empty: the model
//!   said nothing) or a list of text parts. A `refusal` with no content is the model's answer
//!   (the guards fail it: there is no code). `null` content with neither, a tool call (pipe
//!   offers no tools), an `{"error": …}` body sent with status 200 (its own message kept), no
//!   `choices` or no `message`: the server did not answer, so they are infrastructure errors,
//!   retried and then stopping the build — never a failed attempt.
//! * **Stalls.** A request that times out is followed by a quick liveness probe (`/v1/models`,
//!   at most [`PROBE_TIMEOUT`]): a server that answers it is merely slow and the request is
//!   retried; one that does not is dead, and the build stops at once. A server that accepts
//!   connections and never answers therefore costs one `request_timeout_s` plus the probe,
//!   not every retry's timeout and backoff.

use super::{ChatModel, ChatReply, ChatRequest, LlmError};
use backon::BackoffBuilder;
use serde_json::{Value, json};
use std::sync::Mutex;
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

/// How long a liveness or identity probe (`/v1/models`) may take: any healthy server answers
/// it at once, busy generating or not.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest chat completion body accepted for a request of `max_tokens`.
pub fn reply_bound(max_tokens: u32) -> usize {
    (64 << 10) + 256 * max_tokens as usize
}

/// The largest error body read (its start is quoted in the error).
const ERROR_BODY_BOUND: usize = 4 << 10;
/// The largest model listing read (`/v1/models`, `/api/tags`).
const LISTING_BOUND: usize = 4 << 20;

/// How long a server that just failed is passed over (while another is up) before it is
/// tried again; each further failure in a row doubles it, up to [`REST_MAX`].
pub const REST_MIN: Duration = Duration::from_secs(5);
/// The longest rest of a failing server.
pub const REST_MAX: Duration = Duration::from_secs(300);

/// A client for one model on one or more servers.
///
/// With several servers, requests rotate among them; one that fails (refuses connections,
/// answers 5xx, stops answering) *rests* — is passed over while another is up — and is tried
/// again once its rest is over, so a server that comes back is used again and one that is gone
/// costs a request now and then, not one per request.
pub struct OpenAi {
    cfg: OpenAiConfig,
    http: reqwest::blocking::Client,
    /// The same, with [`PROBE_TIMEOUT`], for `/v1/models` and `/api/tags`.
    probe: reqwest::blocking::Client,
    next: AtomicUsize,
    /// Per server: whether and since when it rests.
    health: Mutex<Vec<Health>>,
}

/// A server's standing: resting until `until` (since `since`) after `fails` failures in a row.
#[derive(Debug, Clone, Copy, Default)]
struct Health {
    until: Option<Instant>,
    since: Option<Instant>,
    fails: u32,
}

/// One failed try: retry it (after at least `after`), or give up at once.
enum Failure {
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// The server will not accept this request (4xx): retrying cannot help.
    Fatal(String),
    /// The server stopped answering altogether: retrying would only wait out more timeouts.
    Dead(String),
}

impl OpenAi {
    /// A client; no request is made yet.
    pub fn new(cfg: OpenAiConfig) -> Result<OpenAi, LlmError> {
        if cfg.base_urls.is_empty() {
            return Err(LlmError::Setup("an openai model needs `base_urls`".into()));
        }
        let client = |timeout: Duration| {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .build()
                .map_err(|e| LlmError::Setup(format!("HTTP client: {e}")))
        };
        Ok(OpenAi {
            http: client(cfg.timeout)?,
            probe: client(cfg.timeout.min(PROBE_TIMEOUT))?,
            health: Mutex::new(vec![Health::default(); cfg.base_urls.len()]),
            cfg,
            next: AtomicUsize::new(0),
        })
    }

    /// The first server of `among`, starting at position `from`, that is not resting; when all
    /// rest, the one whose rest ends first.
    fn pick(&self, among: &[usize], from: usize) -> usize {
        let now = Instant::now();
        let h = self.health.lock().unwrap();
        let n = among.len();
        (0..n)
            .map(|k| among[(from + k) % n])
            .find(|&i| h[i].until.is_none_or(|t| t <= now))
            .unwrap_or_else(|| {
                *among
                    .iter()
                    .min_by_key(|&&i| h[i].until)
                    .expect("at least one server")
            })
    }

    /// Server `i` failed: it rests, twice as long as after its last failure in a row. A
    /// failure while it already rests (another thread's request, sent before the rest began)
    /// is the same outage, not one more in a row.
    fn rest(&self, i: usize) {
        let now = Instant::now();
        let mut h = self.health.lock().unwrap();
        if h[i].until.is_some_and(|t| t > now) {
            return;
        }
        let fails = h[i].fails.saturating_add(1);
        let rest = REST_MIN
            .saturating_mul(1u32 << (fails - 1).min(16))
            .min(REST_MAX);
        h[i] = Health {
            until: Some(now + rest),
            since: Some(now),
            fails,
        };
    }

    /// Server `i` answered a request sent at `sent`. An answer to a request sent before its
    /// latest rest began says nothing about it now.
    fn recovered(&self, i: usize, sent: Instant) {
        let mut h = self.health.lock().unwrap();
        if h[i].since.is_none_or(|s| s <= sent) {
            h[i] = Health::default();
        }
    }

    /// Is a server of `among` other than `i` up (not resting)?
    fn another_up(&self, among: &[usize], i: usize) -> bool {
        let now = Instant::now();
        let h = self.health.lock().unwrap();
        among
            .iter()
            .any(|&j| j != i && h[j].until.is_none_or(|t| t <= now))
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

    /// `text` from a server (an error body, a failure) with the API key blanked out: a server
    /// that echoes the request's headers back must not put the key into a log, an error
    /// message or the store.
    fn redact(&self, text: String) -> String {
        match &self.cfg.api_key {
            Some(k) if !k.is_empty() && text.contains(k.as_str()) => {
                text.replace(k.as_str(), "[api key]")
            }
            _ => text,
        }
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
        f: impl FnMut(&str) -> Result<T, Failure>,
    ) -> Result<(T, u32), LlmError> {
        let all: Vec<usize> = (0..self.cfg.base_urls.len()).collect();
        self.with_retries_on(&all, f)
    }

    /// [`with_retries`](Self::with_retries) on the servers `among` (indices into `base_urls`).
    /// A server that fails rests ([`REST_MIN`]…) and the next try goes to another that is up,
    /// at once; only when none is up does a try wait out the backoff. A server that stopped
    /// answering altogether ends the request only when no other is up.
    fn with_retries_on<T>(
        &self,
        among: &[usize],
        mut f: impl FnMut(&str) -> Result<T, Failure>,
    ) -> Result<(T, u32), LlmError> {
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(self.cfg.backoff)
            .with_max_delay(MAX_BACKOFF)
            .with_max_times(self.cfg.retries as usize)
            .with_jitter()
            .build();
        let n = among.len();
        let several = n > 1;
        let mut at = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut i = self.pick(among, at);
        let mut tries = 0u32;
        let mut failovers = 0usize;
        loop {
            let base = &self.cfg.base_urls[i];
            tries += 1;
            let sent = Instant::now();
            let outcome = f(base).map_err(|e| match e {
                Failure::Retry { why, after } => Failure::Retry {
                    why: self.redact(why),
                    after,
                },
                Failure::Fatal(m) => Failure::Fatal(self.redact(m)),
                Failure::Dead(m) => Failure::Dead(self.redact(m)),
            });
            match outcome {
                Ok(v) => {
                    self.recovered(i, sent);
                    return Ok((v, tries - 1));
                }
                Err(Failure::Fatal(message)) => {
                    return Err(LlmError::Refused {
                        server: base.clone(),
                        message,
                    });
                }
                Err(Failure::Dead(last)) => {
                    self.rest(i);
                    // Every other server gets its chance, resting or not: a rest is a guess,
                    // and giving up here stops the build.
                    if several && failovers + 1 < n {
                        failovers += 1;
                        tracing::warn!("model server {base}: {last}; trying another server");
                        at += 1;
                        i = self.pick(among, at);
                        continue;
                    }
                    return Err(LlmError::Unavailable {
                        server: base.clone(),
                        attempts: tries,
                        last,
                    });
                }
                Err(Failure::Retry { why, after }) => {
                    at += 1;
                    if several {
                        self.rest(i);
                        // Another server up: go there at once, without spending a retry.
                        if failovers + 1 < n && self.another_up(among, i) {
                            failovers += 1;
                            tracing::warn!("model server {base}: {why}; trying another server");
                            i = self.pick(among, at);
                            continue;
                        }
                    }
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
                    failovers = 0;
                    i = self.pick(among, at);
                }
            }
        }
    }

    /// What identifies the served model in keys: its name, plus the digest the server reports
    /// where it has one — Ollama's blob digest, llama.cpp's model metadata (parameter count,
    /// size, vocabulary) hashed. Never the URL: moving a server invalidates nothing.
    ///
    /// Every server in `base_urls` is asked, and all that answer must agree: requests rotate
    /// among them, so one serving other weights under the same name would silently mix two
    /// models in one arm — that is [`LlmError::Mismatch`], which stops the build. Also returns
    /// the servers that answered: one that did not cannot be vouched for, and the caller keeps
    /// it out of rotation.
    pub fn identity(&self) -> Result<(Value, Vec<String>), LlmError> {
        let mut seen: Vec<(usize, Value)> = Vec::new();
        let mut first_err = None;
        for i in 0..self.cfg.base_urls.len() {
            match self.identity_at(i) {
                Ok(v) => seen.push((i, v)),
                Err(e) => {
                    tracing::warn!(
                        "model server {} did not say which model it serves, so it is not used: {e}",
                        self.cfg.base_urls[i]
                    );
                    first_err.get_or_insert(e);
                }
            }
        }
        let Some((i0, v0)) = seen.first() else {
            return Err(first_err.expect("a server failed"));
        };
        if let Some((i, v)) = seen.iter().find(|(_, v)| v != v0) {
            return Err(LlmError::Mismatch(format!(
                "the servers of model `{}` do not serve the same model: {} serves {}, {} serves {}",
                self.cfg.model,
                self.cfg.base_urls[*i0],
                crate::key::canonical(v0),
                self.cfg.base_urls[*i],
                crate::key::canonical(v),
            )));
        }
        let answered = seen
            .iter()
            .map(|(i, _)| self.cfg.base_urls[*i].clone())
            .collect();
        Ok((v0.clone(), answered))
    }

    /// [`identity`](Self::identity) as server `i` reports it.
    fn identity_at(&self, i: usize) -> Result<Value, LlmError> {
        let name = self.cfg.model.clone();
        let (models, _) = self.with_retries_on(&[i], |base| {
            let resp = self
                .authed(self.probe.get(Self::url(base, "models")))
                .send();
            read_json(resp, LISTING_BOUND)
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
        // A tags request that fails otherwise (no answer, 5xx) is no answer at all: a null
        // digest from it would not match the digest its sibling servers report.
        let base = &self.cfg.base_urls[i];
        let tags = match self
            .authed(self.probe.get(format!("{}/api/tags", Self::root(base))))
            .send()
        {
            Ok(r) if r.status().is_success() => read_bounded(r, LISTING_BOUND)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok()),
            Ok(r) if r.status().is_client_error() => None,
            Ok(r) => {
                return Err(LlmError::Unavailable {
                    server: base.clone(),
                    attempts: 1,
                    last: format!("/api/tags: HTTP {}", r.status()),
                });
            }
            Err(e) => {
                return Err(LlmError::Unavailable {
                    server: base.clone(),
                    attempts: 1,
                    last: format!("/api/tags: {}", describe(&e)),
                });
            }
        };
        let digest = tags.and_then(|t| {
            t["models"].as_array()?.iter().find_map(|m| {
                let n = m["name"].as_str()?;
                (n == name || n == format!("{name}:latest"))
                    .then(|| m["digest"].as_str().map(str::to_string))?
            })
        });
        Ok(json!({"name": name, "digest": digest}))
    }

    /// After a request to `base` timed out: is the server there at all? Any HTTP answer to
    /// `/v1/models` within [`PROBE_TIMEOUT`] (even a 404) says it is.
    fn alive(&self, base: &str) -> Result<(), String> {
        match self
            .authed(self.probe.get(Self::url(base, "models")))
            .send()
        {
            Ok(_) => Ok(()),
            Err(e) => Err(describe(&e)),
        }
    }
}

/// Up to `bound` bytes of a body; more is an error naming the bound. A `Content-Length` over
/// the bound fails before reading anything; an endless body stops at the bound.
fn read_bounded(resp: reqwest::blocking::Response, bound: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    if let Some(len) = resp.content_length()
        && len > bound as u64
    {
        return Err(format!(
            "the server announced a body of {len} bytes, more than the {bound} this request \
             can need"
        ));
    }
    let mut buf = Vec::new();
    resp.take(bound as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading the body: {e}"))?;
    if buf.len() > bound {
        return Err(format!(
            "the server sent more than {bound} bytes, more than this request can need; \
             nothing of it was kept"
        ));
    }
    Ok(buf)
}

/// Classify a response: JSON of at most `bound` bytes on 2xx; retry on transport errors, 408,
/// 429 and 5xx (with `Retry-After`), an oversized body or malformed JSON; give up on other
/// statuses.
fn read_json(
    resp: reqwest::Result<reqwest::blocking::Response>,
    bound: usize,
) -> Result<Value, Failure> {
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
        let body = read_start(resp, ERROR_BODY_BOUND);
        let body: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        let msg = format!("HTTP {status}: {}", body.trim());
        return if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
            Err(Failure::Retry { why: msg, after })
        } else {
            Err(Failure::Fatal(msg))
        };
    }
    let bytes = read_bounded(resp, bound).map_err(|why| Failure::Retry { why, after: None })?;
    serde_json::from_slice(&bytes).map_err(|e| Failure::Retry {
        why: format!("malformed JSON ({e}) in {} bytes", bytes.len()),
        after: None,
    })
}

/// At most the first `bound` bytes of a body (an error's, quoted, never judged).
fn read_start(resp: reqwest::blocking::Response, bound: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = Vec::new();
    let _ = resp.take(bound as u64).read_to_end(&mut buf);
    buf
}

/// The reply's text from a completion, or why the completion is not an answer.
///
/// `Ok` is something the model said: `content` as a string (possibly empty), the text parts
/// of a `content` list, or a `refusal`. Everything else is the server not answering.
fn answer(v: &mut Value) -> Result<String, String> {
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| match err {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        let msg: String = msg.chars().take(300).collect();
        return Err(format!("the server answered with an error: {msg}"));
    }
    let Some(choice) = v["choices"].as_array_mut().and_then(|c| c.first_mut()) else {
        return Err("the reply has no `choices`".into());
    };
    let message = &mut choice["message"];
    if !message.is_object() {
        return Err("the reply's first choice has no `message`".into());
    }
    // Taken, not copied: a reply may be megabytes.
    match message["content"].take() {
        Value::String(s) => return Ok(s),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter(|p| p["type"] == "text")
                .filter_map(|p| p["text"].as_str())
                .collect();
            if !texts.is_empty() {
                return Ok(texts.concat());
            }
        }
        Value::Null => {}
        other => {
            return Err(format!(
                "the message's `content` is {}, not text",
                kind_of(&other)
            ));
        }
    }
    if let Some(refusal) = message["refusal"].as_str() {
        return Ok(refusal.to_string());
    }
    if message["tool_calls"]
        .as_array()
        .is_some_and(|c| !c.is_empty())
    {
        return Err(
            "the model answered with a tool call, but pipe offers no tools (check \
                    the server's chat template)"
                .into(),
        );
    }
    Err("the message has no content (null) and no refusal: not an answer to judge".into())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
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
        let bound = reply_bound(req.max_tokens);
        let ((v, content, ms), retried) = self.with_retries(|base| {
            let t = Instant::now();
            let resp = self
                .authed(self.http.post(Self::url(base, "chat/completions")))
                .json(&body)
                .send();
            if let Err(e) = &resp
                && e.is_timeout()
                && let Err(probe) = self.alive(base)
            {
                return Err(Failure::Dead(format!(
                    "{} after {:?}, and a probe of /v1/models failed too ({probe}): the server \
                     accepts connections but does not answer",
                    describe(e),
                    self.cfg.timeout
                )));
            }
            let mut v = read_json(resp, bound)?;
            let content = answer(&mut v).map_err(|why| Failure::Retry { why, after: None })?;
            Ok((v, content, t.elapsed().as_millis() as u64))
        })?;
        let choice = &v["choices"][0];
        Ok(ChatReply {
            content,
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

    fn reply(message: Value) -> Value {
        json!({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
    }

    #[test]
    fn what_counts_as_an_answer() {
        let ok = |m: Value| answer(&mut reply(m)).unwrap();
        assert_eq!(ok(json!({"role": "assistant", "content": "hi"})), "hi");
        assert_eq!(ok(json!({"role": "assistant", "content": ""})), "");
        assert_eq!(
            ok(
                json!({"content": [{"type": "text", "text": "a"}, {"type": "image_url"},
                                  {"type": "text", "text": "b"}]})
            ),
            "ab"
        );
        assert_eq!(
            ok(json!({"content": null, "refusal": "I can't help with that."})),
            "I can't help with that."
        );
        let not = |mut v: Value| answer(&mut v).unwrap_err();
        assert!(not(reply(json!({"content": null}))).contains("no content"));
        assert!(not(reply(json!({"role": "assistant"}))).contains("no content"));
        assert!(not(reply(json!({"content": 42}))).contains("a number"));
        assert!(not(reply(json!({"content": [{"type": "image_url"}]}))).contains("no content"));
        assert!(
            not(reply(json!({"content": null, "tool_calls": [{"id": "1"}]}))).contains("tool call")
        );
        assert!(
            not(json!({"error": {"message": "model is loading", "code": 503}}))
                .contains("model is loading")
        );
        assert!(not(json!({"error": "quota exceeded"})).contains("quota exceeded"));
        assert!(not(json!({"choices": []})).contains("choices"));
        assert!(not(json!({"choices": [{"text": "legacy"}]})).contains("message"));
    }
}
