//! `y = x Wᵀ` for a few rows of f32 activations against f16 weights, on the CPU.
//!
//! Why this exists: generating is memory-bound — each step reads every weight once. candle's
//! quantised kernels are compute-bound on x86 (they cost the same per row, so a batch of four
//! takes four times as long) and its f16 matmul is fast for one row but several times slower
//! for two or more. Here each weight row is widened to f32 once, into a buffer that stays in
//! L1, and dotted with every activation row: a batch of four reads the weights once, which is
//! the whole point of batching concurrent trials. Prompts (many rows) go through candle's f32
//! gemm instead (see [`ROWS_FOR_GEMM`]), which blocks for registers far better than this.
//!
//! Each output element is one dot product computed the same way whatever the number of rows,
//! so a sequence's logits do not depend on which others share its step.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// From this many rows on, widening the whole weight matrix and calling gemm wins.
pub const ROWS_FOR_GEMM: usize = 16;

/// Output features per parallel task.
const TILE: usize = 32;

/// Lanes of the dot product's accumulators (a multiple of every x86 vector width).
const LANES: usize = 16;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    for (x, y) in ac.iter().zip(bc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in at.iter().zip(bt) {
        tail += x * y;
    }
    // A fixed pairwise reduction: the same order on every call.
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// `y[r * n + j] = Σ_k x[r * k + k'] · w[j * k + k']` for `m` rows, `n` outputs.
///
/// # Panics
/// When the slices do not have the sizes `m`, `k` and `n` say.
pub fn matmul(x: &[f32], m: usize, k: usize, w: &[f16], n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "activations are not {m} × {k}");
    assert_eq!(w.len(), n * k, "weights are not {n} × {k}");
    let arch = pulp::Arch::new();
    // Transposed output (n, m): each task owns a contiguous block of it.
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(TILE * m)
        .zip(w.par_chunks(TILE * k))
        .for_each(|(yt, w)| {
            arch.dispatch(
                #[inline(always)]
                || {
                    let mut buf = vec![0f32; k];
                    for (j, wj) in w.chunks_exact(k).enumerate() {
                        wj.convert_to_f32_slice(&mut buf);
                        for r in 0..m {
                            yt[j * m + r] = dot(&x[r * k..(r + 1) * k], &buf);
                        }
                    }
                },
            )
        });
    if m == 1 {
        return yt;
    }
    let mut y = vec![0f32; m * n];
    for j in 0..n {
        for r in 0..m {
            y[r * n + j] = yt[j * m + r];
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_triple_loop_and_is_row_independent() {
        let (m, k, n) = (5, 70, 67);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let w: Vec<f16> = (0..n * k)
            .map(|i| f16::from_f32(((i * 53 % 97) as f32 - 48.0) / 40.0))
            .collect();
        let y = matmul(&x, m, k, &w, n);
        for r in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|c| x[r * k + c] as f64 * w[j * k + c].to_f64())
                    .sum();
                let got = y[r * n + j] as f64;
                assert!((got - want).abs() < 1e-3, "({r},{j}): {got} vs {want}");
            }
            // The row alone gives bit-identical results.
            let alone = matmul(&x[r * k..(r + 1) * k], 1, k, &w, n);
            assert_eq!(alone, y[r * n..(r + 1) * n]);
        }
    }
}
