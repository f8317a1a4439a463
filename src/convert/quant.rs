//! Which type each tensor of a merged model gets: f16, or llama.cpp's q4_k_m mix.
//!
//! q4_k_m follows llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) for
//! `LLAMA_FTYPE_MOSTLY_Q4_K_M`, so a model we write is the model `llama-quantize` would write:
//!
//! * 1-D tensors (norms, biases) stay f32;
//! * `output.weight` — or `token_embd.weight` when the embeddings are tied (no `output`) — is
//!   Q6_K;
//! * `attn_v` and `ffn_down` are Q6_K in the layers [`use_more_bits`] picks (the first and last
//!   eighth, and every third in between), Q4_K elsewhere;
//! * everything else 2-D is Q4_K;
//! * k-quants need rows that divide by 256: where they do not, Q4_K falls back to Q5_0 and
//!   Q6_K to Q8_0 (Qwen2.5-0.5B, 896 wide, and SmolLM2, 576 wide, are mostly these); a width
//!   that does not divide by 32 either stays f16.

use candle_core::quantized::GgmlDType;
use serde::{Deserialize, Serialize};

/// What a merged model is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// Every matrix f16 (`general.file_type` 1).
    F16,
    /// llama.cpp's Q4_K_M mix (`general.file_type` 15).
    Q4KM,
}

impl Quantization {
    /// From `pipeline.toml`'s spelling.
    pub fn parse(s: &str) -> Option<Quantization> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Some(Quantization::F16),
            "q4_k_m" => Some(Quantization::Q4KM),
            _ => None,
        }
    }

    /// The spelling files and messages use.
    pub fn name(self) -> &'static str {
        match self {
            Quantization::F16 => "f16",
            Quantization::Q4KM => "q4_k_m",
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Quantization::F16 => 1,
            Quantization::Q4KM => 15,
        }
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of `n` layers, and every third one
/// between.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The block index in a name like `blk.12.attn_v.weight`.
fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The type of tensor `name` with dimensions `dims` (outermost first) in a model of
/// `n_layer` blocks, `has_output` telling whether it has its own `output.weight`.
pub fn tensor_type(
    q: Quantization,
    name: &str,
    dims: &[usize],
    n_layer: usize,
    has_output: bool,
) -> GgmlDType {
    if dims.len() < 2 || name.ends_with("_norm.weight") || name.ends_with(".bias") {
        return GgmlDType::F32;
    }
    let cols = *dims.last().expect("two or more dimensions");
    let want = match q {
        Quantization::F16 => return GgmlDType::F16,
        Quantization::Q4KM => {
            if name == "output.weight" || (!has_output && name == "token_embd.weight") {
                GgmlDType::Q6K
            } else if name.contains("attn_v.weight") || name.contains("ffn_down") {
                match block_of(name) {
                    Some(i) if use_more_bits(i, n_layer) => GgmlDType::Q6K,
                    _ => GgmlDType::Q4K,
                }
            } else {
                GgmlDType::Q4K
            }
        }
    };
    let fallback = if cols.is_multiple_of(want.block_size()) {
        want
    } else {
        match want {
            GgmlDType::Q6K => GgmlDType::Q8_0,
            _ => GgmlDType::Q5_0,
        }
    };
    if cols.is_multiple_of(fallback.block_size()) {
        fallback
    } else {
        GgmlDType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_as_llama_cpp_picks_them() {
        // 28 layers (Qwen2.5-1.5B): n/8 = 3, 7n/8 = 24.
        let picked: Vec<usize> = (0..28).filter(|&i| use_more_bits(i, 28)).collect();
        assert_eq!(
            picked,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]
        );
        // 30 layers (SmolLM2-135M): n/8 = 3, 7n/8 = 26.
        let picked: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(
            picked,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
        );
    }

    #[test]
    fn q4_k_m_types_and_fallbacks() {
        use GgmlDType::*;
        let q = Quantization::Q4KM;
        let t = |name: &str, dims: &[usize], has_output| tensor_type(q, name, dims, 28, has_output);
        // 1536 wide: k-quants fit.
        assert_eq!(t("blk.0.attn_q.weight", &[1536, 1536], true), Q4K);
        assert_eq!(t("blk.0.attn_v.weight", &[256, 1536], true), Q6K);
        assert_eq!(t("blk.3.attn_v.weight", &[256, 1536], true), Q4K);
        assert_eq!(t("blk.5.ffn_down.weight", &[1536, 8960], true), Q6K);
        assert_eq!(t("blk.6.ffn_down.weight", &[1536, 8960], true), Q4K);
        assert_eq!(t("output.weight", &[151936, 1536], true), Q6K);
        assert_eq!(t("token_embd.weight", &[151936, 1536], true), Q4K);
        assert_eq!(t("token_embd.weight", &[151936, 1536], false), Q6K);
        assert_eq!(t("blk.0.attn_norm.weight", &[1536], true), F32);
        assert_eq!(t("blk.0.attn_q.bias", &[1536], true), F32);
        // 896 wide (Qwen2.5-0.5B): 896 % 256 ≠ 0.
        assert_eq!(t("blk.9.attn_q.weight", &[896, 896], true), Q5_0);
        assert_eq!(t("token_embd.weight", &[151936, 896], false), Q8_0);
        assert_eq!(t("blk.0.attn_v.weight", &[128, 896], true), Q8_0);
        // ffn_down of 0.5B is 4864 wide, 4864 = 19·256: k-quants fit.
        assert_eq!(t("blk.0.ffn_down.weight", &[896, 4864], true), Q6K);
        // Not even a multiple of 32.
        assert_eq!(t("blk.0.attn_q.weight", &[40, 40], true), F16);
        assert_eq!(
            tensor_type(
                Quantization::F16,
                "blk.0.attn_q.weight",
                &[40, 40],
                28,
                true
            ),
            F16
        );
    }
}
