//! Q5_0 and Q8_0, the 32-value types q4_k_m falls back to where a row does not divide into
//! 256. Without an importance matrix llama.cpp quantises these by plain rounding against the
//! block's largest magnitude (`quantize_row_q5_0_ref`, `quantize_row_q8_0_ref`), so this is
//! that: a searched scale here would make our files differ from llama.cpp's for no reason the
//! k-quants' gain does not already cover.
//!
//! Layouts: `block_q5_0` (22 bytes) d f16, qh[4] (the fifth bit of each value, value j at bit
//! j), qs[16] (values j and j+16 in the low and high nibble of byte j); `block_q8_0` (34
//! bytes) d f16, qs[32] i8.

use super::{BlockError, f16_of};

pub(super) const VALUES: usize = 32;
pub(super) const Q5_0_BYTES: usize = 22;
pub(super) const Q8_0_BYTES: usize = 34;

/// One Q5_0 block: `x ≈ d·(q − 16)`, q in 0..32, the largest magnitude mapping to −16.
pub(super) fn q5_0(x: &[f32], out: &mut [u8]) -> Result<(), BlockError> {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[0..2].copy_from_slice(&f16_of(d, "d")?.to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        // +16.5 then truncation: round half up, as ggml does it.
        let a = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let b = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        out[6 + j] = (a & 0xF) | ((b & 0xF) << 4);
        qh |= u32::from(a >> 4) << j;
        qh |= u32::from(b >> 4) << (j + 16);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
    Ok(())
}

/// One Q8_0 block: `x ≈ d·q`, q in −127..=127.
pub(super) fn q8_0(x: &[f32], out: &mut [u8]) -> Result<(), BlockError> {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[0..2].copy_from_slice(&f16_of(d, "d")?.to_le_bytes());
    for (q, &v) in out[2..].iter_mut().zip(x) {
        // Half away from zero (C's roundf).
        *q = (v * id).round() as i8 as u8;
    }
    Ok(())
}
