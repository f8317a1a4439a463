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

/// [`nearest_int`] for values the caller knows are small (|v| < 2²²): no range check, so the
/// searches' inner loops stay branch-free and vectorise. Every caller's value is a level of a
/// few bits scaled by an `iscale` fitted to the same data, so it cannot be large; NaN never
/// reaches here (the encoders refuse non-finite input first).
#[inline(always)]
fn nearest_small(v: f32) -> i32 {
    debug_assert!(v.abs() <= 4_194_303.0, "{v}");
    ((v + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
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

/// Sub-blocks fitted side by side by [`fit_scale_min`].
pub(super) const LANES: usize = 8;

/// Asymmetric fits `x ≈ scale·l − min`, l in 0..=nmax, each minimising Σ w·(scale·l − min − x)²
/// (`make_qkx2_quants` with squared error), for [`LANES`] sub-blocks at once: `x[i][j]` and
/// `w[i][j]` are value `i` of sub-block `j`. Returns per sub-block `(scale, min)`, min ≥ 0; the
/// levels are left in `l[i][j]`.
///
/// For each candidate iscale the levels are rounded, then scale and min are solved in closed
/// form (2×2 weighted least squares); the min is kept ≤ 0 in value (a block that does not
/// reach below zero keeps min 0, so a positive offset is never stored).
///
/// Why eight at once: each sub-block's sums must be added in llama.cpp's order (to give its
/// bytes), a chain of dependent f32 additions that leaves the core idle between them; eight
/// independent chains side by side (a vector lane each) keep it busy. Every lane performs
/// exactly the operations, in exactly the order, of one sub-block fitted alone.
pub(super) fn fit_scale_min(
    x: &[[f32; LANES]],
    w: &[[f32; LANES]],
    nmax: i32,
    sweep: &Sweep,
    l: &mut [[u8; LANES]],
) -> [(f32, f32); LANES] {
    let n = x.len();
    let mut aux = vec![[0u8; LANES]; n];
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = [0f32; LANES];
    for j in 0..LANES {
        sum_x[j] = sum_w[j] * x[0][j];
    }
    for i in 1..n {
        for j in 0..LANES {
            min[j] = min[j].min(x[i][j]);
            max[j] = max[j].max(x[i][j]);
            sum_w[j] += w[i][j];
            sum_x[j] += w[i][j] * x[i][j];
        }
    }
    let mut flat = [false; LANES];
    let mut range = [0f32; LANES];
    for j in 0..LANES {
        if min[j] > 0.0 {
            min[j] = 0.0;
        }
        flat[j] = max[j] == min[j];
        // A flat sub-block gets no levels (below); a stand-in range keeps its lane finite.
        range[j] = if flat[j] { 1.0 } else { max[j] - min[j] };
    }
    let nmax_f = nmax as f32;
    let mut iscale = [0f32; LANES];
    let mut scale = [0f32; LANES];
    for j in 0..LANES {
        iscale[j] = nmax_f / range[j];
        scale[j] = 1.0 / iscale[j];
    }
    let mut best = [0f32; LANES];
    for i in 0..n {
        for j in 0..LANES {
            let q = nearest_small(iscale[j] * (x[i][j] - min[j])).clamp(0, nmax) as u8;
            l[i][j] = q;
            let diff = scale[j] * f32::from(q) + min[j] - x[i][j];
            best[j] += w[i][j] * (diff * diff);
        }
    }
    for step in 0..=sweep.nstep {
        // As llama.cpp does, against the *current* min: a better fit found at an earlier step
        // moves the range every later step divides.
        for j in 0..LANES {
            let r = if flat[j] { 1.0 } else { max[j] - min[j] };
            iscale[j] = (sweep.rmin + sweep.rdelta * step as f32 + nmax_f) / r;
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        for i in 0..n {
            for j in 0..LANES {
                let q = nearest_small(iscale[j] * (x[i][j] - min[j])).clamp(0, nmax);
                aux[i][j] = q as u8;
                let q = q as f32;
                sum_l[j] += w[i][j] * q;
                sum_l2[j] += w[i][j] * q * q;
                sum_xl[j] += w[i][j] * q * x[i][j];
            }
        }
        let (mut this_scale, mut this_min) = ([0f32; LANES], [0f32; LANES]);
        let mut ok = [false; LANES];
        for j in 0..LANES {
            let det = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            ok[j] = det > 0.0;
            let d = if ok[j] { det } else { 1.0 };
            this_scale[j] = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / d;
            this_min[j] = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / d;
            if this_min[j] > 0.0 {
                this_min[j] = 0.0;
                this_scale[j] = sum_xl[j] / sum_l2[j];
            }
        }
        let mut err = [0f32; LANES];
        for i in 0..n {
            for j in 0..LANES {
                let diff = this_scale[j] * f32::from(aux[i][j]) + this_min[j] - x[i][j];
                err[j] += w[i][j] * (diff * diff);
            }
        }
        for j in 0..LANES {
            if ok[j] && err[j] < best[j] {
                for i in 0..n {
                    l[i][j] = aux[i][j];
                }
                best[j] = err[j];
                scale[j] = this_scale[j];
                min[j] = this_min[j];
            }
        }
    }
    let mut out = [(0f32, 0f32); LANES];
    for j in 0..LANES {
        out[j] = if flat[j] {
            for row in l.iter_mut() {
                row[j] = 0;
            }
            (0.0, -min[j])
        } else {
            (scale[j], -min[j])
        };
    }
    out
}

/// Symmetric fits `x ≈ scale·l`, l in −nmax..nmax−1, weighted by x² so the large values
/// (which dominate a matrix product) are fitted best (`make_qx_quants`, rmse_type 1, no
/// importance matrix), for [`LANES`] sub-blocks at once (`x[i][j]`: value `i` of sub-block
/// `j`, as in [`fit_scale_min`], and for the same reason). Tries the plain scale and 18 nearby
/// ones (nmax ± 0.1·k, k = 1..9) and keeps the one with the largest Σ(w·x·l)²/Σ(w·l²), i.e.
/// the smallest weighted error at its optimal scale. Returns each scale (negative when the
/// largest magnitude is positive — the sign carries which end gets the extra level); the
/// levels + nmax are left in `l[i][j]`.
pub(super) fn fit_signed_scale(
    x: &[[f32; LANES]],
    nmax: i32,
    l: &mut [[i8; LANES]],
) -> [f32; LANES] {
    let n = x.len();
    let (mut max, mut amax) = ([0f32; LANES], [0f32; LANES]);
    for row in x {
        for j in 0..LANES {
            if row[j].abs() > amax[j] {
                amax[j] = row[j].abs();
                max[j] = row[j];
            }
        }
    }
    let zero: [bool; LANES] = amax.map(|a| a < GROUP_MAX_EPS);
    // A zero sub-block gets no levels (below); a stand-in keeps its lane finite.
    for j in 0..LANES {
        if zero[j] {
            max[j] = 1.0;
        }
    }
    let nmax_f = nmax as f32;
    let mut aux = vec![[0i8; LANES]; n];
    // Levels and the two sums for one iscale per lane, each lane in llama.cpp's order.
    let sums = |iscale: &[f32; LANES], aux: &mut [[i8; LANES]]| {
        let (mut sumlx, mut suml2) = ([0f32; LANES], [0f32; LANES]);
        for (row, a) in x.iter().zip(aux.iter_mut()) {
            for j in 0..LANES {
                let v = row[j];
                let q = nearest_small(iscale[j] * v).clamp(-nmax, nmax - 1);
                a[j] = q as i8;
                let q = q as f32;
                let w = v * v;
                sumlx[j] += w * v * q;
                suml2[j] += w * q * q;
            }
        }
        (sumlx, suml2)
    };
    let iscale: [f32; LANES] = max.map(|m| -nmax_f / m);
    let (sumlx, suml2) = sums(&iscale, &mut aux);
    let mut scale = [0f32; LANES];
    let mut best = [0f32; LANES];
    for j in 0..LANES {
        scale[j] = if suml2[j] != 0.0 {
            sumlx[j] / suml2[j]
        } else {
            0.0
        };
        best[j] = scale[j] * sumlx[j];
    }
    for (a, out) in aux.iter().zip(l.iter_mut()) {
        for j in 0..LANES {
            out[j] = (i32::from(a[j]) + nmax) as i8;
        }
    }
    for k in (-9..=9).filter(|&k| k != 0) {
        let iscale: [f32; LANES] = max.map(|m| -(nmax_f + 0.1 * k as f32) / m);
        let (sumlx, suml2) = sums(&iscale, &mut aux);
        for j in 0..LANES {
            if suml2[j] > 0.0 && sumlx[j] * sumlx[j] > best[j] * suml2[j] {
                for (a, out) in aux.iter().zip(l.iter_mut()) {
                    out[j] = (i32::from(a[j]) + nmax) as i8;
                }
                scale[j] = sumlx[j] / suml2[j];
                best[j] = scale[j] * sumlx[j];
            }
        }
    }
    for j in 0..LANES {
        if zero[j] {
            for out in l.iter_mut() {
                out[j] = 0;
            }
            scale[j] = 0.0;
        }
    }
    scale
}
