//! The two scale searches behind llama.cpp's reference k-quants (`make_qkx2_quants` and
//! `make_qx_quants` in ggml-quants.c), re-derived here.
//!
//! Why search at all: the obvious scale (the largest value maps to the largest level) wastes
//! levels on one outlier and rounds everything else coarsely. Trying a handful of slightly
//! different scales and keeping the one whose weighted least-squares error is smallest cuts
//! the error of a 4-bit block by a third to a half, for about twenty extra passes over 16 or
//! 32 values.
//!
//! The arithmetic follows llama.cpp's operation by operation, in f32 and without fused
//! multiply-adds, so that the same input gives llama.cpp's bytes (pinned by the unit test
//! `bytes_are_llama_cpps`, checked against llama.cpp's own library by
//! `scripts/kquant_vs_llamacpp.py`).

/// Round to the nearest integer, ties to even, as ggml's `nearest_int` does, so ties go the
/// way llama.cpp's do. The same 1.5·2²³ trick: adding it leaves the rounded integer in the
/// low mantissa bits. It is several times faster than `round_ties_even`, which without
/// SSE4.1 is a libm call — and this runs ~25 times per value quantised.
pub(super) fn nearest_int(v: f32) -> i32 {
    if v.abs() <= 4_194_303.0 {
        ((v + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
    } else {
        // Beyond the trick's range (and NaN, which becomes 0): the callers clamp anyway.
        v.round_ties_even() as i32
    }
}

/// Below this a group counts as all zero (ggml's `GROUP_MAX_EPS`).
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// How [`fit_scale_min`] searches: iscale = (rmin + rdelta·i + nmax) / (max − min) for
/// i in 0..=nstep.
pub(super) struct Sweep {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
}

/// An asymmetric fit `x ≈ scale·l − min`, l in 0..=nmax, minimising Σ w·(scale·l − min − x)²
/// (`make_qkx2_quants` with squared error). Returns `(scale, min)`, min ≥ 0; the levels are
/// left in `l`. `aux` is scratch of the same length.
///
/// For each candidate iscale the levels are rounded, then scale and min are solved in closed
/// form (2×2 weighted least squares); the min is kept ≤ 0 in value (a block that does not
/// reach below zero keeps min 0, so a positive offset is never stored).
pub(super) fn fit_scale_min(
    x: &[f32],
    w: &[f32],
    nmax: i32,
    sweep: &Sweep,
    l: &mut [u8],
    aux: &mut [u8],
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        l[i] = q;
        let diff = scale * f32::from(q) + min - x[i];
        best += w[i] * (diff * diff);
    }
    for step in 0..=sweep.nstep {
        iscale = (sweep.rmin + sweep.rdelta * step as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = q as u8;
            let q = q as f32;
            sum_l += w[i] * q;
            sum_l2 += w[i] * q * q;
            sum_xl += w[i] * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut err = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(aux[i]) + this_min - x[i];
                err += w[i] * (diff * diff);
            }
            if err < best {
                l[..n].copy_from_slice(&aux[..n]);
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// A symmetric fit `x ≈ scale·l`, l in −nmax..nmax−1, weighted by x² so the large values
/// (which dominate a matrix product) are fitted best (`make_qx_quants`, rmse_type 1, no
/// importance matrix). Tries the plain scale and 18 nearby ones (nmax ± 0.1·k, k = 1..9) and
/// keeps the one with the largest Σ(w·x·l)²/Σ(w·l²), i.e. the smallest weighted error at its
/// optimal scale. Returns the scale (negative when the largest magnitude is positive — the
/// sign carries which end gets the extra level); the levels + nmax are left in `l`.
pub(super) fn fit_signed_scale(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let q = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (li, &v) in l.iter_mut().zip(x) {
        *li = (level(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for k in (-9..=9).filter(|&k| k != 0) {
        let iscale = -(nmax as f32 + 0.1 * k as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (li, &v) in l.iter_mut().zip(x) {
                *li = (level(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}
