//! Attention of one new token over its sequence's cache, in plain Rust, on the CPU.
//!
//! Why: decoding a token costs each sequence, in each layer, a rotary embedding, a cache
//! append and an attention — as candle ops, some thirty small tensor operations, each with its
//! own allocation and thread hand-off. For a small model those outweighed the matmuls: with
//! four sequences, more than half of a step went to them (SmolLM2-135M), and batching gained
//! less than 2×. Here the cache is a plain growing buffer, position-major, that a token is
//! appended to, and the attention is two loops over it. Prompts (many tokens at once) still
//! take candle's gemm, reading the same buffer.

/// One layer's keys and values: position after position, each `kv_heads × head_dim` floats.
#[derive(Debug, Default)]
pub struct HostKv {
    /// Keys, `[position][kv head][dim]`.
    pub k: Vec<f32>,
    /// Values, the same layout.
    pub v: Vec<f32>,
}

/// Rotate each head of `x` (`heads × hd`) for position `pos`; `cos`/`sin` hold `hd / 2` angles
/// a position. `neox`: rotate halves (as `candle_nn::rotary_emb::rope`), else adjacent pairs
/// (`rope_i`).
pub fn rope(x: &mut [f32], hd: usize, cos: &[f32], sin: &[f32], neox: bool) {
    let half = hd / 2;
    for head in x.chunks_mut(hd) {
        for i in 0..half {
            let (c, s) = (cos[i], sin[i]);
            let (a, b) = if neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}

/// The shape of an attention: query heads, key/value heads, head dimension.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (a divisor of `n_head`: grouped-query attention).
    pub n_kv: usize,
    /// Dimension of a head.
    pub hd: usize,
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ac, at) = a.as_chunks::<L>();
    let (bc, bt) = b.as_chunks::<L>();
    for (x, y) in ac.iter().zip(bc) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in at.iter().zip(bt) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn body(q: &[f32], kv: &HostKv, len: usize, h: Heads, out: &mut [f32]) {
    let group = h.n_head / h.n_kv;
    let stride = h.n_kv * h.hd;
    let scale = 1.0 / (h.hd as f32).sqrt();
    let mut p = vec![0f32; len];
    for (head, (qh, o)) in q.chunks(h.hd).zip(out.chunks_mut(h.hd)).enumerate() {
        let g = head / group;
        let mut max = f32::NEG_INFINITY;
        for (t, pt) in p.iter_mut().enumerate() {
            *pt = dot(qh, &kv.k[t * stride + g * h.hd..][..h.hd]) * scale;
            max = max.max(*pt);
        }
        let mut sum = 0f32;
        for pt in p.iter_mut() {
            *pt = (*pt - max).exp();
            sum += *pt;
        }
        o.fill(0.0);
        for (t, &pt) in p.iter().enumerate() {
            let vt = &kv.v[t * stride + g * h.hd..][..h.hd];
            for (oi, vi) in o.iter_mut().zip(vt) {
                *oi += pt * vi;
            }
        }
        let inv = 1.0 / sum;
        for oi in o.iter_mut() {
            *oi *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn body_avx2(q: &[f32], kv: &HostKv, len: usize, h: Heads, out: &mut [f32]) {
    body(q, kv, len, h, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
fn body_avx512(q: &[f32], kv: &HostKv, len: usize, h: Heads, out: &mut [f32]) {
    body(q, kv, len, h, out)
}

/// `out` (`n_head × hd`) = softmax(q Kᵀ / √hd) V of the query row `q` (roped) over the first
/// `len` positions of `kv`.
///
/// # Panics
/// When `kv` holds fewer than `len` positions or the rows are not `n_head × hd`.
pub fn attend(q: &[f32], kv: &HostKv, len: usize, h: Heads, out: &mut [f32]) {
    assert!(kv.k.len() >= len * h.n_kv * h.hd && kv.v.len() >= len * h.n_kv * h.hd);
    assert!(q.len() == h.n_head * h.hd && out.len() == q.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx2") && has!("fma") {
            // SAFETY: the features `body_avx512` is compiled for were just detected.
            return unsafe { body_avx512(q, kv, len, h, out) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: as above.
            return unsafe { body_avx2(q, kv, len, h, out) };
        }
    }
    body(q, kv, len, h, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a direct f64 computation, with grouped heads.
    #[test]
    fn attention_matches_the_definition() {
        let h = Heads {
            n_head: 6,
            n_kv: 2,
            hd: 20,
        };
        let len = 37;
        let f = |i: usize, s: usize| ((i * 7919 + s * 31) % 1000) as f32 / 500.0 - 1.0;
        let kv = HostKv {
            k: (0..len * h.n_kv * h.hd).map(|i| f(i, 1)).collect(),
            v: (0..len * h.n_kv * h.hd).map(|i| f(i, 2)).collect(),
        };
        let q: Vec<f32> = (0..h.n_head * h.hd).map(|i| f(i, 3) * 3.0).collect();
        let mut out = vec![0f32; q.len()];
        attend(&q, &kv, len, h, &mut out);
        for head in 0..h.n_head {
            let g = head / (h.n_head / h.n_kv);
            let at = |t: usize, d: usize| (t * h.n_kv + g) * h.hd + d;
            let s: Vec<f64> = (0..len)
                .map(|t| {
                    (0..h.hd)
                        .map(|d| q[head * h.hd + d] as f64 * kv.k[at(t, d)] as f64)
                        .sum::<f64>()
                        / (h.hd as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..h.hd {
                let want: f64 = (0..len).map(|t| e[t] / z * kv.v[at(t, d)] as f64).sum();
                let got = out[head * h.hd + d] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "head {head} dim {d}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn rope_rotates_halves_or_pairs() {
        let (cos, sin) = ([0.6f32, 1.0], [0.8f32, 0.0]);
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut x, 4, &cos, &sin, true);
        // Pairs (0, 2) by (0.6, 0.8) and (1, 3) unrotated.
        assert_eq!(x, [0.6 - 3.0 * 0.8, 2.0, 0.8 + 3.0 * 0.6, 4.0]);
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut x, 4, &cos, &sin, false);
        assert_eq!(x, [0.6 - 2.0 * 0.8, 0.8 + 2.0 * 0.6, 3.0, 4.0]);
    }
}
