//! Inference: the batched [`Transformer`] with a KV cache per sequence, its integer CPU matmul
//! ([`qcpu`]) and plain-Rust decoding attention ([`attention`]), built from named weights
//! ([`load`]).

pub mod attention;
pub mod load;
pub mod qcpu;
pub mod transformer;

pub use transformer::{Block, Linear, Lora, SeqCache, Step, Transformer};
