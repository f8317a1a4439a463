//! The one place that knows how rotary embeddings order the rows of q and k.
//!
//! Hugging Face checkpoints (and PEFT adapters, and every Qwen GGUF) rotate each head's
//! *halves*: dimension `i` pairs with `i + d/2`. llama.cpp's converter permutes a **llama**
//! model's q/k rows so that rotation pairs *adjacent* rows (`2i`, `2i+1`), and llama.cpp's LoRA
//! converter permutes the adapter's `B` rows the same way. A tensor whose output rows are q or k
//! rows (a weight, a bias, a LoRA `B`) must therefore be reordered whenever it crosses between
//! the two conventions; getting it wrong goes unnoticed on Qwen and silently breaks llama.

use super::config::{Config, Proj};
use candle_core::{Result, Tensor};

/// How a model's q/k rows are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkOrder {
    /// Rotate-half order: Hugging Face, PEFT, Qwen GGUFs.
    Halves,
    /// Adjacent pairs: llama.cpp's permuted llama GGUFs and their adapters.
    Pairs,
}

impl QkOrder {
    /// The order of a model of this shape.
    pub fn of(config: &Config) -> QkOrder {
        if config.rope_neox {
            QkOrder::Halves
        } else {
            QkOrder::Pairs
        }
    }

    /// The order llama.cpp writes for architecture `arch` in a GGUF (a model or an adapter).
    pub fn of_gguf(arch: &str) -> QkOrder {
        if arch == "llama" {
            QkOrder::Pairs
        } else {
            QkOrder::Halves
        }
    }
}

/// Reorder the rows of `t` (rows first: a weight, a bias, a LoRA `B`) of projection `proj`
/// from `from` to `to`. Only q and k move; `heads` are the config's query and key/value heads.
pub fn reorder(
    t: &Tensor,
    proj: Proj,
    from: QkOrder,
    to: QkOrder,
    config: &Config,
) -> Result<Tensor> {
    let heads = match proj {
        Proj::Q => config.n_head,
        Proj::K => config.n_kv_head,
        _ => return Ok(t.clone()),
    };
    match (from, to) {
        (QkOrder::Halves, QkOrder::Pairs) => to_pairs(t, heads),
        (QkOrder::Pairs, QkOrder::Halves) => to_halves(t, heads),
        _ => Ok(t.clone()),
    }
}

/// Rows of each head `[x₀ … x_{d/2-1}, y₀ … y_{d/2-1}]` → `[x₀, y₀, x₁, y₁, …]` (what
/// llama.cpp's converter does to a llama checkpoint's q and k).
pub fn to_pairs(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, rest) = split(t)?;
    t.reshape((heads, 2, rows / heads / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(t.shape())
}

/// The inverse of [`to_pairs`].
pub fn to_halves(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, rest) = split(t)?;
    t.reshape((heads, rows / heads / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(t.shape())
}

/// (rows, everything else) of a 1- or 2-dimensional tensor.
fn split(t: &Tensor) -> Result<(usize, usize)> {
    let dims = t.dims();
    match dims {
        [r] => Ok((*r, 1)),
        [r, c] => Ok((*r, *c)),
        _ => candle_core::bail!("q/k reordering takes a vector or a matrix, not {dims:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pairs_and_halves_are_inverse_and_move_rows_as_llama_cpp_does() {
        // One head of 4 rows: halves [x0 x1 | y0 y1] → pairs [x0 y0 x1 y1].
        let t = Tensor::new(
            &[[0f32, 0.5], [1., 1.5], [2., 2.5], [3., 3.5]],
            &Device::Cpu,
        )
        .unwrap();
        let p = to_pairs(&t, 1).unwrap();
        let rows: Vec<Vec<f32>> = p.to_vec2().unwrap();
        assert_eq!(rows, [[0., 0.5], [2., 2.5], [1., 1.5], [3., 3.5]]);
        let back: Vec<Vec<f32>> = to_halves(&p, 1).unwrap().to_vec2().unwrap();
        assert_eq!(back, t.to_vec2::<f32>().unwrap());
        // Two heads of a bias vector.
        let b = Tensor::arange(0f32, 8., &Device::Cpu).unwrap();
        let p: Vec<f32> = to_pairs(&b, 2).unwrap().to_vec1().unwrap();
        assert_eq!(p, [0., 2., 1., 3., 4., 6., 5., 7.]);
    }
}
