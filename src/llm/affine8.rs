//! `y = x Wᵀ` for a few rows of f32 activations against 8-bit weights, on the CPU.
//!
//! Why this exists: generating is memory-bound — each step reads every weight once. candle's
//! quantised kernels are compute-bound on x86 (they cost the same per row, so a batch of four
//! takes four times as long) and its f16 matmul is fast for one row but several times slower
//! for two or more. Here each weight row is widened to f32 once, into a buffer that stays in
//! L1, and dotted with every activation row: a batch of four reads the weights once, which is
//! the whole point of batching concurrent trials. The loops are plain Rust compiled twice more,
//! for AVX2 and AVX-512, and picked at run time. Prompts (many rows) go through candle's f32
//! gemm instead (see [`ROWS_FOR_GEMM`]), which blocks for registers far better than this.
//!
//! The weights are stored as [`Affine8`]: one byte per weight plus a scale and an offset per
//! group of 32 (1.25 bytes a weight, against f16's 2 — and bytes are what decoding waits on).
//! A 4-bit block's 16 levels land exactly on this grid (255 = 15 × 17); 5- and 6-bit values
//! come within half of 1/255 of their group's range.
//!
//! Each output element is one dot product computed the same way whatever the number of rows,
//! so a sequence's logits do not depend on which others share its step.

use rayon::prelude::*;

/// From this many rows on, widening the whole weight matrix and calling gemm wins.
pub const ROWS_FOR_GEMM: usize = 16;

/// Weights per (scale, offset) group.
pub const GROUP: usize = 32;

/// Output features per parallel task.
const TILE: usize = 32;

/// Lanes of the dot product's accumulators (a multiple of every x86 vector width).
const LANES: usize = 16;

/// A weight matrix (out, in), row-major, as `offset + scale · code` per group of [`GROUP`].
#[derive(Debug, Clone)]
pub struct Affine8 {
    codes: Vec<u8>,
    scale: Vec<f32>,
    offset: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Affine8 {
    /// Quantise `w` (rows × cols, row-major): each group of 32 gets its own min and step.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Affine8 {
        assert_eq!(w.len(), rows * cols, "weights are not {rows} × {cols}");
        let groups = cols.div_ceil(GROUP);
        let mut codes = vec![0u8; rows * cols];
        let mut scale = vec![0f32; rows * groups];
        let mut offset = vec![0f32; rows * groups];
        codes
            .par_chunks_mut(cols)
            .zip(scale.par_chunks_mut(groups))
            .zip(offset.par_chunks_mut(groups))
            .zip(w.par_chunks(cols))
            .for_each(|(((c, s), o), w)| {
                for (g, (cg, wg)) in c.chunks_mut(GROUP).zip(w.chunks(GROUP)).enumerate() {
                    let lo = wg.iter().copied().fold(f32::INFINITY, f32::min);
                    let hi = wg.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let step = (hi - lo) / 255.0;
                    s[g] = step;
                    o[g] = lo;
                    if step > 0.0 {
                        for (ci, &wi) in cg.iter_mut().zip(wg) {
                            *ci = ((wi - lo) / step).round().clamp(0.0, 255.0) as u8;
                        }
                    }
                }
            });
        Affine8 {
            codes,
            scale,
            offset,
            rows,
            cols,
        }
    }

    /// (rows, cols).
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    #[inline(always)]
    fn row_into(&self, j: usize, buf: &mut [f32]) {
        let groups = self.cols.div_ceil(GROUP);
        let codes = &self.codes[j * self.cols..(j + 1) * self.cols];
        for (g, (b, c)) in buf.chunks_mut(GROUP).zip(codes.chunks(GROUP)).enumerate() {
            let (s, o) = (self.scale[j * groups + g], self.offset[j * groups + g]);
            for (bi, &ci) in b.iter_mut().zip(c) {
                *bi = o + s * ci as f32;
            }
        }
    }

    /// The whole matrix as f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(j, row)| self.row_into(j, row));
        out
    }
}

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

/// Output rows `j0..` of `yt` (transposed: `yt[jj * m + r]`).
#[inline(always)]
fn tile_body(x: &[f32], m: usize, w: &Affine8, j0: usize, yt: &mut [f32]) {
    let k = w.cols;
    let mut buf = vec![0f32; k];
    for (jj, yj) in yt.chunks_mut(m).enumerate() {
        w.row_into(j0 + jj, &mut buf);
        for (r, y) in yj.iter_mut().enumerate() {
            *y = dot(&x[r * k..(r + 1) * k], &buf);
        }
    }
}

/// [`tile_body`] compiled for AVX2 + FMA, the vector width the loops are written for.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tile_avx2(x: &[f32], m: usize, w: &Affine8, j0: usize, yt: &mut [f32]) {
    tile_body(x, m, w, j0, yt)
}

/// [`tile_body`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
fn tile_avx512(x: &[f32], m: usize, w: &Affine8, j0: usize, yt: &mut [f32]) {
    tile_body(x, m, w, j0, yt)
}

/// One tile, with the best instructions this CPU has (checked once, at run time: the binary
/// itself targets baseline x86-64).
fn tile(x: &[f32], m: usize, w: &Affine8, j0: usize, yt: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: the features `tile_avx512` is compiled for were just detected.
        return unsafe { tile_avx512(x, m, w, j0, yt) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features `tile_avx2` is compiled for were just detected.
        return unsafe { tile_avx2(x, m, w, j0, yt) };
    }
    tile_body(x, m, w, j0, yt)
}

/// `y[r * n + j] = Σ_c x[r * k + c] · w[j, c]` for `m` rows of `x` (m × k) and `w` (n × k).
///
/// # Panics
/// When the sizes do not agree.
pub fn matmul(x: &[f32], m: usize, w: &Affine8) -> Vec<f32> {
    let (n, k) = w.shape();
    assert_eq!(x.len(), m * k, "activations are not {m} × {k}");
    // Transposed output (n, m): each task owns a contiguous block of it.
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(TILE * m)
        .enumerate()
        .for_each(|(t, yt)| tile(x, m, w, t * TILE, yt));
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
        let wf: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
            .collect();
        let w = Affine8::quantize(&wf, n, k);
        // The grid holds every weight to within half a step of its group.
        let back = w.to_f32();
        for (a, b) in wf.iter().zip(&back) {
            assert!((a - b).abs() <= 2.4 / 255.0 / 2.0 + 1e-6, "{a} vs {b}");
        }
        let y = matmul(&x, m, &w);
        for r in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|c| x[r * k + c] as f64 * back[j * k + c] as f64)
                    .sum();
                let got = y[r * n + j] as f64;
                assert!((got - want).abs() < 1e-3, "({r},{j}): {got} vs {want}");
            }
            // The row alone gives bit-identical results.
            let alone = matmul(&x[r * k..(r + 1) * k], 1, &w);
            assert_eq!(alone, y[r * n..(r + 1) * n]);
        }
    }

    #[test]
    fn a_four_bit_grid_is_kept_almost_exactly() {
        // 16 levels a*q + b, as a Q4 block dequantises to.
        let (a, b) = (0.0123f32, -0.0917f32);
        let wf: Vec<f32> = (0..64).map(|i| b + a * ((i * 7) % 16) as f32).collect();
        let w = Affine8::quantize(&wf, 1, 64);
        let worst = wf
            .iter()
            .zip(w.to_f32())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= a / 17.0 / 2.0 + 1e-7, "{worst}");
    }
}
