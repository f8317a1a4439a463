//! Q6_K: 256 values as sixteen sub-blocks of 16, each `x ≈ d·sc·(q − 32)` with 6-bit q and
//! a signed 8-bit sc against the block's f16 super-scale d.
//!
//! Layout (ggml's `block_q6_K`, 210 bytes): ql[128] (low 4 bits), qh[64] (high 2 bits),
//! scales[16] i8, d f16. Each half of 128 values takes 64 bytes of ql and 32 of qh: value
//! l, l+32, l+64, l+96 (l < 32) share ql[l] / ql[l+32] low and high nibbles and the four
//! bit pairs of qh[l].

use super::search::{GROUP_MAX_EPS, LANES, fit_signed_scale, nearest_int};
use super::{BlockError, f16_of};

pub(super) const VALUES: usize = 256;
pub(super) const BYTES: usize = 210;

/// Encode one block of 256 values into `out` (210 bytes).
pub(super) fn block(x: &[f32], out: &mut [u8]) -> Result<(), BlockError> {
    // Sixteen sub-blocks of 16, fitted eight side by side (sub-block 8h + j at [i][j]).
    let mut levels = [0i8; VALUES];
    let mut scales = [0f32; 16];
    for h in 0..2 {
        let mut xt = [[0f32; LANES]; 16];
        for (i, row) in xt.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = x[16 * (LANES * h + j) + i];
            }
        }
        let mut lt = [[0i8; LANES]; 16];
        let fit = fit_signed_scale(&xt, 32, &mut lt);
        for (j, &f) in fit.iter().enumerate() {
            let ib = LANES * h + j;
            scales[ib] = f;
            for (i, row) in lt.iter().enumerate() {
                levels[16 * ib + i] = row[j];
            }
        }
    }
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    for &s in &scales {
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = s;
        }
    }
    out.fill(0);
    if max_abs < GROUP_MAX_EPS {
        // All zero (or as good as): d = 0 and every level 0 dequantise to zeros.
        return Ok(());
    }
    let (ql, rest) = out.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (sc, d_bytes) = rest.split_at_mut(16);

    // The sub-scale with the largest magnitude maps to −128, so the sign of the f16 d
    // carries the direction and the 8 bits are used in full.
    let iscale = -128.0 / max_scale;
    let d = f16_of(1.0 / iscale, "d")?;
    d_bytes.copy_from_slice(&d.to_le_bytes());
    for (b, s) in sc.iter_mut().zip(&scales) {
        *b = nearest_int(iscale * s).min(127) as i8 as u8;
    }
    let d = d.to_f32();
    for (j, &s) in sc.iter().enumerate() {
        let dj = d * f32::from(s as i8);
        if dj == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            levels[i] = (nearest_int(x[i] / dj).clamp(-32, 31) + 32) as i8;
        }
    }
    for (half, (ql, qh)) in levels
        .chunks_exact(128)
        .zip(ql.chunks_exact_mut(64).zip(qh.chunks_exact_mut(32)))
    {
        let q = |i: usize| half[i] as u8;
        for l in 0..32 {
            ql[l] = (q(l) & 0xF) | ((q(l + 64) & 0xF) << 4);
            ql[l + 32] = (q(l + 32) & 0xF) | ((q(l + 96) & 0xF) << 4);
            qh[l] = (q(l) >> 4)
                | ((q(l + 32) >> 4) << 2)
                | ((q(l + 64) >> 4) << 4)
                | ((q(l + 96) >> 4) << 6);
        }
    }
    Ok(())
}
