//! Chat models: the [`ChatModel`] trait the workflow talks to, and its backends — `openai`
//! (any OpenAI-compatible server) and `local` (our own model stack, [`crate::model`], run in
//! process). This is the only model interface the workflow imports.
//!
//! Depends on [`crate::model`] (and [`crate::key`] for a server's identity digest); never on
//! the store or the stages.
//!
//! The trait is synchronous on purpose: trials already run on the engine's worker threads, one
//! request each, so an async trait would only add a runtime to every caller. A backend that
//! wants to share work between concurrent trials (the local one batches sequences) does it
//! behind this interface.
//!
//! Errors split in two, and the split is the point: a reply the guards can judge (even an empty
//! one, even one cut off by the token limit) is an *attempt*; anything that says the world is
//! broken — refused connection, timeout, 429/5xx, malformed JSON, no choices — is an
//! [`LlmError`] and must never be recorded as a failed trial.

pub mod local;
pub mod openai;

use serde::{Deserialize, Serialize};

pub use crate::model::template::{Message, Role};

/// One request: the messages and how to sample.
#[derive(Debug, Clone, Serialize)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus sampling.
    pub top_p: f64,
    /// Generation limit.
    pub max_tokens: u32,
    /// A seed, where the backend honours one (llama.cpp does; the paper's Ollama runs did not).
    pub seed: Option<u64>,
}

/// A reply the guards can judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    /// The text (empty when the server sent none).
    pub content: String,
    /// `stop`, `length` (cut off by `max_tokens`), … as the server said.
    pub finish_reason: Option<String>,
    /// Prompt tokens, as the server counted them.
    pub prompt_tokens: Option<u64>,
    /// Generated tokens, as the server counted them.
    pub completion_tokens: Option<u64>,
    /// Wall time of the successful request, milliseconds.
    pub duration_ms: u64,
    /// Infrastructure failures retried before this reply came.
    pub retried: u32,
}

/// The model could not be asked: infrastructure, never a trial's failure.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// Retryable failures kept happening.
    #[error("model server {server} failed {attempts} times; last error: {last}")]
    Unavailable {
        /// Which server (base URL) last failed.
        server: String,
        /// Requests made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The server refused the request in a way retrying cannot fix (401, 404 model, 400).
    #[error("model server {server} refused the request: {message}")]
    Refused {
        /// Which server.
        server: String,
        /// Status and body.
        message: String,
    },
    /// The backend cannot be set up (missing API key variable, missing file, …).
    #[error("{0}")]
    Setup(String),
    /// The servers behind one model name serve different models.
    #[error("{0}")]
    Mismatch(String),
}

/// A chat model. Implementations are shared between worker threads.
pub trait ChatModel: Send + Sync {
    /// Ask for one reply.
    fn chat(&self, req: &ChatRequest) -> Result<ChatReply, LlmError>;
}
