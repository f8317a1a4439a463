//! From a base model and a trained adapter to files llama.cpp and Ollama load on their own:
//! the merged model as GGUF (f16, or llama.cpp's q4_k_m mix), written as a stream.
//!
//! Store-free, like [`crate::model`]: `stages/convert.rs` is the glue.

pub mod gguf_out;
pub mod kquant;
pub mod merge;
pub mod ollama;
pub mod quant;

pub use merge::{MergeError, MergeStats, merge_gguf};
pub use quant::Quantization;
