//! Q4_K: 256 values as eight sub-blocks of 32, each `x ≈ d·sc·q − dmin·m` with 4-bit q and
//! 6-bit sc, m against the block's f16 super-scales d, dmin.
//!
//! Layout (ggml's `block_q4_K`, 144 bytes): d f16, dmin f16, scales[12] (eight 6-bit scales
//! and eight 6-bit mins: sub-blocks 0–3 in the low 6 bits of bytes 0–3 / 4–7, sub-blocks 4–7
//! split into a low nibble in bytes 8–11 and two high bits on top of bytes 0–7), qs[128]
//! (each 64 values as 32 bytes: the first 32 in the low nibbles, the next 32 in the high).

use super::search::{LANES, Sweep, fit_scale_min, nearest_int};
use super::{BlockError, f16_of};

pub(super) const VALUES: usize = 256;
pub(super) const BYTES: usize = 144;

/// llama.cpp's reference search for Q4_K: iscale from (15 − 1) to (15 + 1) in steps of 0.1.
const SWEEP: Sweep = Sweep {
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
};

/// Encode one block of 256 values into `out` (144 bytes).
pub(super) fn block(x: &[f32], out: &mut [u8]) -> Result<(), BlockError> {
    // Sub-block j's value i at [i][j]: the eight are fitted side by side.
    let mut xt = [[0f32; LANES]; 32];
    let mut wt = [[0f32; LANES]; 32];
    for j in 0..LANES {
        let sub = &x[32 * j..32 * j + 32];
        // Weight each value by the sub-block's RMS plus its own magnitude: large values
        // matter more to a matrix product, but the small ones are not ignored.
        let sum_x2: f32 = sub.iter().fold(0.0, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (i, &v) in sub.iter().enumerate() {
            xt[i][j] = v;
            wt[i][j] = av_x + v.abs();
        }
    }
    let mut lt = [[0u8; LANES]; 32];
    let fits = fit_scale_min(&xt, &wt, 15, &SWEEP, &mut lt);
    let mut levels = [0u8; VALUES];
    for (i, row) in lt.iter().enumerate() {
        for j in 0..LANES {
            levels[32 * j + i] = row[j];
        }
    }
    let scales: [f32; 8] = fits.map(|f| f.0);
    let mins: [f32; 8] = fits.map(|f| f.1);
    let max_scale = scales.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };

    let (ds, rest) = out.split_at_mut(4);
    let (packed, qs) = rest.split_at_mut(12);
    packed.fill(0);
    for j in 0..8 {
        let ls = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
        let lm = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16_of(max_scale / 63.0, "d")?;
    let dmin = f16_of(max_min / 63.0, "dmin")?;
    ds[0..2].copy_from_slice(&d.to_le_bytes());
    ds[2..4].copy_from_slice(&dmin.to_le_bytes());

    // Re-round every value against the scales as stored (6-bit, times the f16 super-scales),
    // not the ones searched: what the dequantiser will multiply by.
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    for j in 0..8 {
        let (sc, m) = scale_min(j, packed);
        let dj = d * f32::from(sc);
        if dj == 0.0 {
            continue;
        }
        let mj = dmin * f32::from(m);
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + mj) / dj).clamp(0, 15) as u8;
        }
    }
    for (chunk, q) in levels.chunks_exact(64).zip(qs.chunks_exact_mut(32)) {
        for i in 0..32 {
            q[i] = chunk[i] | (chunk[i + 32] << 4);
        }
    }
    Ok(())
}

/// Sub-block `j`'s 6-bit scale and min from the packed 12 bytes.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
