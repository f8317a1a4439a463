//! Our own encoders for the quantised types of the q4_k_m mix (Q4_K, Q6_K and the fallbacks
//! Q5_0, Q8_0), choosing scales the way llama.cpp's reference quantiser does without an
//! importance matrix, and writing ggml's block bytes.
//!
//! Why not candle's `QTensor::quantize`: its Q4_K takes each sub-block's scale and min from a
//! few rounds of plain rounding (`make_qkx1_quants`), and its Q6_K a shorter search than
//! llama.cpp's; a model quantised that way was measured at 5× llama.cpp's KL from the f16
//! model. llama.cpp's reference path searches each sub-block's scale (and, for Q4_K, min) by
//! weighted least squares over a sweep of candidate scales ([`search`]), then rounds the
//! values again against the scales as actually stored. Doing the same gives llama.cpp's
//! quality, and llama.cpp's bytes (byte for byte: `scripts/kquant_vs_llamacpp.py`).
//!
//! Store-free and single-threaded: the merge runs chunks of rows in parallel around it.

mod legacy;
mod q4k;
mod q6k;
mod search;

#[cfg(test)]
mod tests;

use candle_core::quantized::GgmlDType;
use half::f16;

/// Why values could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    /// Not one of the types encoded here.
    #[error("no encoder for {0:?}")]
    Unsupported(GgmlDType),
    /// The values do not fill whole blocks.
    #[error("{len} values do not divide into {dtype:?} blocks of {block}")]
    Length {
        /// The type.
        dtype: GgmlDType,
        /// Values given.
        len: usize,
        /// Values per block.
        block: usize,
    },
    /// A NaN or infinity in the input: no scale represents it, and it would spread through
    /// its block's scale search.
    #[error("value {at} is {value}")]
    NonFinite {
        /// Its index.
        at: usize,
        /// The value.
        value: f32,
    },
    /// A block's scale is beyond f16 (values of magnitude ≳ 10⁶): stored, it would be
    /// infinite and dequantise to NaN.
    #[error("the block at value {at} needs a {what} of {value}, beyond f16")]
    ScaleOverflow {
        /// The block's first value's index.
        at: usize,
        /// Which scale.
        what: &'static str,
        /// Its value.
        value: f32,
    },
}

/// A block-level failure, before it knows where the block is.
#[derive(Debug)]
pub(crate) struct BlockError {
    what: &'static str,
    value: f32,
}

/// `v` as the f16 a block stores, or an error where f16 cannot hold it.
fn f16_of(v: f32, what: &'static str) -> Result<f16, BlockError> {
    let h = f16::from_f32(v);
    if h.is_finite() {
        Ok(h)
    } else {
        Err(BlockError { what, value: v })
    }
}

type Encoder = fn(&[f32], &mut [u8]) -> Result<(), BlockError>;

/// Values and bytes per block, and the block encoder, of `dtype`.
fn encoder(dtype: GgmlDType) -> Option<(usize, usize, Encoder)> {
    Some(match dtype {
        GgmlDType::Q4K => (q4k::VALUES, q4k::BYTES, q4k::block),
        GgmlDType::Q6K => (q6k::VALUES, q6k::BYTES, q6k::block),
        GgmlDType::Q5_0 => (legacy::VALUES, legacy::Q5_0_BYTES, legacy::q5_0),
        GgmlDType::Q8_0 => (legacy::VALUES, legacy::Q8_0_BYTES, legacy::q8_0),
        _ => return None,
    })
}

/// Whether [`quantize`] encodes `dtype`.
pub fn encodes(dtype: GgmlDType) -> bool {
    encoder(dtype).is_some()
}

/// Encode `xs` (whole blocks; for a matrix, whole rows) as `dtype`, in ggml's block layout:
/// the bytes a GGUF holds for them.
pub fn quantize(xs: &[f32], dtype: GgmlDType) -> Result<Vec<u8>, QuantError> {
    let (values, bytes, encode) = encoder(dtype).ok_or(QuantError::Unsupported(dtype))?;
    if !xs.len().is_multiple_of(values) {
        return Err(QuantError::Length {
            dtype,
            len: xs.len(),
            block: values,
        });
    }
    if let Some(at) = xs.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { at, value: xs[at] });
    }
    let mut out = vec![0u8; xs.len() / values * bytes];
    for (i, (x, o)) in xs
        .chunks_exact(values)
        .zip(out.chunks_exact_mut(bytes))
        .enumerate()
    {
        encode(x, o).map_err(|e| QuantError::ScaleOverflow {
            at: i * values,
            what: e.what,
            value: e.value,
        })?;
    }
    Ok(out)
}
