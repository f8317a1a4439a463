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
pub mod alloc;
pub mod data;
pub mod frozen;
pub mod net;
pub mod ops;
pub mod tiles;
pub mod trainer;

/// splitmix64: the one generator training draws from (`A`'s initialisation, the data order),
/// seeded and the same on every machine and device, so a resumed run matches an uninterrupted
/// one.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
