//! LoRA fine-tuning on the CPU, on the very weights inference runs.
//!
//! ```text
//! chat JSONL ──data──► token ids + loss mask (template as inference renders it)
//!                         │
//! Transformer ──net──► TrainModel (frozen base through the integer kernel; LoRA vars)
//!                         │
//!                      loop: batches, AdamW, warm-up + linear decay, clipping, validation
//!                         ▼
//!                      Adapter (PEFT files; B's q/k rows in Hugging Face order)
//! ```
//!
//! Depends on the rest of [`crate::model`] only: no store, no stage.

pub mod adamw;
pub mod data;
pub mod frozen;
pub mod net;
pub mod ops;
pub mod trainer;
