//! Our own model stack: everything about a llama/qwen2 model that is not a chat protocol.
//!
//! ```text
//! source ──► config + weights (named tensors: GGUF | HF dir) ──► infer (Transformer, kernels)
//!              │            tokenizer · template · lora · rope (q/k row order)
//!              └──────────► train / gguf writing (build on the named tensors)
//! ```
//!
//! Loading stops at **named tensors** ([`weights::Weights`]) before anything is shaped for
//! inference, so training and conversion read the same tensors inference runs on. Depends on
//! candle and the files only: never on the store, the stages or a chat backend.

pub mod config;
pub mod hf;
pub mod infer;
pub mod lora;
pub mod rope;
pub mod source;
pub mod template;
pub mod tokenizer;
pub mod train;
pub mod weights;
