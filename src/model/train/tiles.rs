//! The frozen base's products in bf16 on AMX tiles: `x Wᵀ` and `dY W` with the weights kept in
//! their GGUF codes and widened to bf16 a panel at a time.
//!
//! Why: a training step is large matrix products (a thousand token rows against every weight),
//! not decoding's one row. The integer kernel ([`crate::model::infer::qcpu`]) is built for the
//! latter: one weight row meets a few activation rows, and every 32 products end in float work
//! for the block's scale. Intel's AMX multiplies a 16 × 32 bf16 tile by a 32 × 16 one into
//! f32 in one instruction (8,192 multiply-adds), an order of magnitude beyond the f32 vector
//! units PyTorch uses on these CPUs. Widening codes to bf16 costs once per weight per product,
//! shared by every token row; the model stays in its codes in memory (QLoRA's scheme: a 4-bit
//! store, bf16 arithmetic, f32 accumulation), and the input gradient needs no transposed copy:
//! the backward widens column panels of the same codes.
//!
//! What it computes: `Σ bf16(x) · bf16(w)` accumulated in f32 — what PyTorch computes for a
//! bf16 model. Products are exact in f32; only the order of the sums is the hardware's, so a
//! CPU without AMX (where [`available`] is false) gets the same numbers up to rounding through
//! [`reference`] (slow: for tests and as a fallback).
//!
//! Layout (Intel's, for `tdpbf16ps`): the left tile is 16 rows × 32 bf16 of a row-major matrix;
//! the right tile is "pairs": row `r` holds, for each of 16 output columns, the two elements
//! `2r` and `2r + 1` of the reduction. A panel is such a right operand for all of the reduction,
//! 16 columns wide; each parallel task widens two panels and runs them against every row.

use crate::model::infer::qcpu::QWeights;
use half::bf16;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Rows (and columns) of a tile.
const T: usize = 16;

/// Reduction elements per tile step: 64 bytes of bf16.
const K: usize = 32;

/// Whether this CPU and kernel run AMX bf16 tiles (checked once; asks Linux for the tile state
/// on the first call). The widening runs on AVX-512 (BF16), which every AMX CPU has.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(amx::enable)
}

/// Where a task's `mp × 32` block of results goes: straight into the result (`ldc` its row
/// length in bytes) when the shape is whole tiles, else into a scratch block.
#[derive(Clone, Copy)]
struct Dst {
    ptr: *mut f32,
    direct: bool,
    cols: usize,
    mp: usize,
}

// SAFETY: tasks write disjoint column blocks, and the caller waits for all of them.
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    /// Block `b`'s first element and row stride in bytes.
    fn block(self, b: usize) -> (*mut f32, usize) {
        if self.direct {
            // SAFETY (of the pointer's use, in `amx::run`): columns 32 b.. of every row.
            (self.ptr.wrapping_add(b * 2 * T), self.cols * 4)
        } else {
            (self.ptr.wrapping_add(b * self.mp * 2 * T), 2 * T * 4)
        }
    }
}

/// A product's result: `rows × cols`, computed in blocks of 32 columns by `task(b, c, ldc)`.
fn blocked(rows: usize, cols: usize, task: impl Fn(usize, *mut f32, usize) + Sync) -> Vec<f32> {
    let mp = rows.next_multiple_of(2 * T);
    let nb = cols.div_ceil(2 * T);
    let mut y = vec![0f32; rows * cols];
    let direct = rows == mp && cols.is_multiple_of(2 * T);
    let mut scratch = if direct {
        Vec::new()
    } else {
        vec![0f32; nb * 2 * T * mp]
    };
    let dst = Dst {
        ptr: if direct {
            y.as_mut_ptr()
        } else {
            scratch.as_mut_ptr()
        },
        direct,
        cols,
        mp,
    };
    (0..nb).into_par_iter().for_each(|b| {
        let (c, ldc) = dst.block(b);
        task(b, c, ldc);
    });
    if !direct {
        y.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
            for (b, chunk) in row.chunks_mut(2 * T).enumerate() {
                chunk.copy_from_slice(&scratch[(b * mp + r) * 2 * T..][..chunk.len()]);
            }
        });
    }
    y
}

/// `x Wᵀ` for `x` of `rows × in` (row-major f32): `rows × out`.
pub fn forward(x: &[f32], rows: usize, w: &QWeights) -> Vec<f32> {
    let (out, inp) = w.shape();
    assert_eq!(x.len(), rows * inp, "x is rows × in");
    if !available() {
        return reference(x, rows, w, Dir::Forward);
    }
    let (mp, kp) = (rows.next_multiple_of(2 * T), inp.next_multiple_of(K));
    let a = amx::widen_rows(x, rows, inp, mp, kp);
    // Each task: 32 output columns (weight rows), every activation row.
    blocked(rows, out, |b, c, ldc| {
        let mut panel = vec![0u32; 2 * T * kp / 2];
        // SAFETY: AMX (and so AVX-512 BF16) is enabled; `c` has `mp` rows of 32 results
        // `ldc` bytes apart, which `blocked` gave this task alone.
        unsafe {
            amx::rows_panel(w, b * 2 * T, kp, &mut panel);
            amx::run(&a, kp, mp, &panel, c, ldc);
        }
    })
}

/// `dY W` for `dy` of `rows × out` (row-major f32): `rows × in`, the input gradient of
/// [`forward`].
pub fn backward(dy: &[f32], rows: usize, w: &QWeights) -> Vec<f32> {
    let (out, inp) = w.shape();
    assert_eq!(dy.len(), rows * out, "dy is rows × out");
    if !available() {
        return reference(dy, rows, w, Dir::Backward);
    }
    let (mp, np) = (rows.next_multiple_of(2 * T), out.next_multiple_of(K));
    let a = amx::widen_rows(dy, rows, out, mp, np);
    // Each task: one block of 32 input columns (exactly one scale block of every weight row).
    blocked(rows, inp, |blk, c, ldc| {
        let mut panel = vec![0u32; 2 * T * np / 2];
        // SAFETY: as in `forward`.
        unsafe {
            amx::columns_panel(w, blk, np, &mut panel);
            amx::run(&a, np, mp, &panel, c, ldc);
        }
    })
}

/// Which product [`reference`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// `x Wᵀ`.
    Forward,
    /// `dY W`.
    Backward,
}

/// The same numbers as the tiles (bf16 operands, f32 sums) in plain Rust, on any CPU.
pub fn reference(x: &[f32], rows: usize, w: &QWeights, dir: Dir) -> Vec<f32> {
    let (out, inp) = w.shape();
    let wb: Vec<f32> = w
        .dequantize()
        .into_iter()
        .map(|v| bf16::from_f32(v).to_f32())
        .collect();
    let xb: Vec<f32> = x.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
    let (k_len, cols) = match dir {
        Dir::Forward => (inp, out),
        Dir::Backward => (out, inp),
    };
    let mut y = vec![0f32; rows * cols];
    y.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let xr = &xb[r * k_len..][..k_len];
        match dir {
            Dir::Forward => {
                for (n, v) in row.iter_mut().enumerate() {
                    let wr = &wb[n * inp..][..inp];
                    *v = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
                }
            }
            Dir::Backward => {
                for (n, g) in xr.iter().enumerate() {
                    let wr = &wb[n * inp..][..inp];
                    for (v, b) in row.iter_mut().zip(wr) {
                        *v += g * b;
                    }
                }
            }
        }
    });
    y
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{K, T};
    use crate::model::infer::qcpu::{BLOCK, QWeights};
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// `ldtilecfg`'s 64 bytes: palette 1, then each tile's bytes per row and rows.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// AMX-TILE and AMX-BF16 in CPUID, AVX-512 BF16 for the widening, and Linux's permission
    /// to use the tile state (which a process must ask for once: without it the first tile
    /// instruction kills the process).
    pub fn enable() -> bool {
        // CPUID leaf 7 exists on every x86-64 CPU that could have AMX; older ones read zeros.
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (tile, bf16) = (leaf7.edx & (1 << 24) != 0, leaf7.edx & (1 << 22) != 0);
        use std::arch::is_x86_feature_detected as has;
        if !(tile && bf16 && has!("avx512f") && has!("avx512bw") && has!("avx512bf16")) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        r == 0
    }

    /// 32 f32 as 32 bf16 (round to nearest even), the first 16 in the low half.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn bf16x32(lo: __m512, hi: __m512) -> __m512i {
        // SAFETY: both types are 64 plain bytes.
        unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) }
    }

    /// Block `blk` of weight row `j` as 32 bf16: `offset + scale · code` (rounded as
    /// [`QWeights::dequantize`] rounds, then to bf16).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn widen_block(w: &QWeights, j: usize, blk: usize) -> __m512i {
        let mut codes = [0u8; BLOCK];
        let (scale, offset) = w.block_codes(j, blk, &mut codes);
        // SAFETY: 32 bytes are read from a 32-byte array.
        let c = unsafe { _mm256_loadu_si256(codes.as_ptr().cast()) };
        let (s, o) = (_mm512_set1_ps(scale), _mm512_set1_ps(offset));
        let f = |v: __m128i| {
            _mm512_add_ps(
                o,
                _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))),
            )
        };
        bf16x32(
            f(_mm256_castsi256_si128(c)),
            f(_mm256_extracti128_si256::<1>(c)),
        )
    }

    /// `rows × cols` f32 as bf16, padded with zeros to `mp × kp`.
    pub fn widen_rows(x: &[f32], rows: usize, cols: usize, mp: usize, kp: usize) -> Vec<u16> {
        use rayon::prelude::*;
        let mut a = vec![0u16; mp * kp];
        a.par_chunks_mut(kp)
            .zip(x.par_chunks(cols))
            .take(rows)
            // SAFETY: `super::available` checked AVX-512 BF16 before any caller got here.
            .for_each(|(dst, src)| unsafe { widen_row(src, dst) });
        a
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn widen_row(src: &[f32], dst: &mut [u16]) {
        let whole = src.len() / 32 * 32;
        for i in (0..whole).step_by(32) {
            // SAFETY: i + 32 <= src.len() <= dst.len().
            unsafe {
                let lo = _mm512_loadu_ps(src.as_ptr().add(i));
                let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
                _mm512_storeu_si512(dst.as_mut_ptr().add(i).cast(), bf16x32(lo, hi));
            }
        }
        for (d, v) in dst[whole..].iter_mut().zip(&src[whole..]) {
            *d = half::bf16::from_f32(*v).to_bits();
        }
    }

    /// The right operand for 32 weight rows `n0..n0 + 32` (zeros past the last): two panels
    /// of `kp / 2` pair rows × 16 columns, `(w[n][2r], w[n][2r + 1])` as one u32.
    ///
    /// # Safety
    /// AVX-512 BF16 is available; `panel` holds `2 × 16 × kp / 2` words.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn rows_panel(w: &QWeights, n0: usize, kp: usize, panel: &mut [u32]) {
        let (out, _) = w.shape();
        let half = T * kp / 2;
        let mut words = [0u32; BLOCK / 2];
        for n in n0..(n0 + 2 * T).min(out) {
            let (p, col) = (&mut panel[((n - n0) / T) * half..][..half], n % T);
            for blk in 0..kp / BLOCK {
                // SAFETY: 64 bytes into a 64-byte array.
                unsafe { _mm512_storeu_si512(words.as_mut_ptr().cast(), widen_block(w, n, blk)) };
                for (i, v) in words.iter().enumerate() {
                    p[(blk * BLOCK / 2 + i) * T + col] = *v;
                }
            }
        }
    }

    /// The right operand for weight columns `32 blk..32 blk + 32`, every row (zeros past the
    /// last, to `np`): two panels of `np / 2` pair rows × 16 columns,
    /// `(w[2r][k], w[2r + 1][k])` as one u32.
    ///
    /// # Safety
    /// AVX-512 BF16 is available; `panel` holds `2 × 16 × np / 2` words.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn columns_panel(w: &QWeights, blk: usize, np: usize, panel: &mut [u32]) {
        let (out, _) = w.shape();
        let half = T * np / 2;
        // Interleave two rows' 16-bit elements: k 0..16 of (row 2r, row 2r + 1), then 16..32.
        let lo_idx: [u16; 32] = std::array::from_fn(|i| (i / 2 + (i % 2) * 32) as u16);
        let hi_idx: [u16; 32] = std::array::from_fn(|i| (16 + i / 2 + (i % 2) * 32) as u16);
        // SAFETY: 64 bytes from 64-byte arrays.
        let (lo_idx, hi_idx) = unsafe {
            (
                _mm512_loadu_si512(lo_idx.as_ptr().cast()),
                _mm512_loadu_si512(hi_idx.as_ptr().cast()),
            )
        };
        for r in 0..out.div_ceil(2) {
            let even = widen_block(w, 2 * r, blk);
            let odd = if 2 * r + 1 < out {
                widen_block(w, 2 * r + 1, blk)
            } else {
                _mm512_setzero_si512()
            };
            // SAFETY: row r of each panel is 16 words inside `panel` (r < np / 2).
            unsafe {
                let p = panel.as_mut_ptr().add(r * T);
                _mm512_storeu_si512(p.cast(), _mm512_permutex2var_epi16(even, lo_idx, odd));
                _mm512_storeu_si512(
                    p.add(half).cast(),
                    _mm512_permutex2var_epi16(even, hi_idx, odd),
                );
            }
        }
    }

    /// One task's block: `c (mp × 32, rows ldc bytes apart) = a (mp × kp, row-major bf16) ·
    /// panels`, where `panel` holds two right operands of `kp / 2` pair rows × 16 columns.
    ///
    /// # Safety
    /// AMX is enabled; `a` is `mp × kp`, `panel` is `16 kp` words and `c` has `mp` rows of 32
    /// writable f32 `ldc` bytes apart, with `mp` a multiple of 32 and `kp` of 32.
    pub unsafe fn run(a: &[u16], kp: usize, mp: usize, panel: &[u32], c: *mut f32, ldc: usize) {
        debug_assert!(a.len() == mp * kp && panel.len() == T * kp);
        debug_assert!(mp.is_multiple_of(2 * T) && kp.is_multiple_of(K));
        let mut cfg = Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        // tmm0..3: f32 results (16 × 16); tmm4, 5: left tiles (16 × 32 bf16); tmm6, 7: right
        // tiles (16 pair rows × 16 columns). Every tile is 16 rows of 64 bytes.
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = T as u8;
        }
        let lda = kp * 2;
        let (p0, p1) = (panel.as_ptr(), panel[T * kp / 2..].as_ptr());
        // SAFETY (for every block below): pointers stay inside `a`, `panel` and `c` by the
        // sizes above; the tile registers are used by no compiled code.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &raw const cfg, options(nostack, readonly));
            for m0 in (0..mp).step_by(2 * T) {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
                let a0 = a.as_ptr().add(m0 * kp);
                let a1 = a.as_ptr().add((m0 + T) * kp);
                for kc in 0..kp / K {
                    asm!(
                        "tileloadd tmm4, [{a0} + {lda} * 1]",
                        "tileloadd tmm5, [{a1} + {lda} * 1]",
                        "tileloadd tmm6, [{b0} + {ldb} * 1]",
                        "tileloadd tmm7, [{b1} + {ldb} * 1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0.add(kc * K),
                        a1 = in(reg) a1.add(kc * K),
                        b0 = in(reg) p0.add(kc * K / 2 * T),
                        b1 = in(reg) p1.add(kc * K / 2 * T),
                        lda = in(reg) lda,
                        ldb = in(reg) 64usize,
                        options(nostack, readonly)
                    );
                }
                let c0 = c.cast::<u8>().add(m0 * ldc);
                let c1 = c.cast::<u8>().add((m0 + T) * ldc);
                asm!(
                    "tilestored [{c00} + {ldc} * 1], tmm0",
                    "tilestored [{c01} + {ldc} * 1], tmm1",
                    "tilestored [{c10} + {ldc} * 1], tmm2",
                    "tilestored [{c11} + {ldc} * 1], tmm3",
                    c00 = in(reg) c0,
                    c01 = in(reg) c0.add(T * 4),
                    c10 = in(reg) c1,
                    c11 = in(reg) c1.add(T * 4),
                    ldc = in(reg) ldc,
                    options(nostack)
                );
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    //! No tiles: [`enable`] is false, so nothing below is ever called.
    use crate::model::infer::qcpu::QWeights;

    pub fn enable() -> bool {
        false
    }
    pub fn widen_rows(_: &[f32], _: usize, _: usize, _: usize, _: usize) -> Vec<u16> {
        unreachable!("AMX is x86-64 only")
    }
    pub unsafe fn rows_panel(_: &QWeights, _: usize, _: usize, _: &mut [u32]) {}
    pub unsafe fn columns_panel(_: &QWeights, _: usize, _: usize, _: &mut [u32]) {}
    pub unsafe fn run(_: &[u16], _: usize, _: usize, _: &[u32], _: *mut f32, _: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                (crate::model::train::splitmix64(&mut s) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Worst difference relative to the largest reference value.
    fn rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Q4_1 weights as a GGUF holds them (4-bit codes), or any floats (8-bit codes).
    fn weights(out: usize, inp: usize, seed: u64, four: bool) -> QWeights {
        use candle_core::quantized::{GgmlDType, QTensor};
        let v = random(out * inp, seed);
        if !four {
            return QWeights::from_f32(&v, out, inp);
        }
        let t = candle_core::Tensor::from_vec(v, (out, inp), &candle_core::Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q4_1).unwrap();
        let w = QWeights::from_gguf(GgmlDType::Q4_1, &q.data().unwrap(), out, inp).unwrap();
        assert_eq!(w.bits(), crate::model::infer::qcpu::Bits::Four);
        w
    }

    #[test]
    fn blocks_widen_to_what_the_codes_stand_for() {
        for four in [true, false] {
            let (out, inp) = (3, 320);
            let w = weights(out, inp, 9, four);
            let all = w.dequantize();
            let mut block = [0f32; 32];
            for j in 0..out {
                for blk in 0..inp.div_ceil(32) {
                    w.block_f32(j, blk, &mut block);
                    for (e, v) in block.iter().enumerate() {
                        let want = all
                            .get(j * inp + blk * 32 + e)
                            .filter(|_| blk * 32 + e < inp);
                        assert_eq!(
                            *v,
                            want.copied().unwrap_or(0.0),
                            "row {j} block {blk} [{e}]"
                        );
                    }
                }
            }
        }
    }

    /// Shapes off every tile size (rows, out, in), 4- and 8-bit codes: the tiles compute the
    /// reference's numbers, and both are close to the f32 product.
    #[test]
    fn tiles_match_the_reference_both_ways() {
        // Where Linux says the CPU has them, the tiles run (else this would compare the
        // reference with itself).
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if cpuinfo.contains(" amx_bf16") && cpuinfo.contains(" amx_tile") {
            assert!(
                available(),
                "the CPU lists AMX but the tiles could not be enabled"
            );
        }
        let shapes = [
            (1, 7, 40, 1),
            (37, 70, 96, 2),
            (64, 33, 320, 3),
            (5, 256, 64, 4),
            (64, 64, 96, 5),
        ];
        let both = |s: (usize, usize, usize, u64)| [(s, false), (s, s.2.is_multiple_of(32))];
        for ((rows, out, inp, seed), four) in shapes.into_iter().flat_map(both) {
            let w = weights(out, inp, seed, four);
            let x = random(rows * inp, seed + 10);
            let dy = random(rows * out, seed + 20);
            let (y, dx) = (forward(&x, rows, &w), backward(&dy, rows, &w));
            let (y_ref, dx_ref) = (
                reference(&x, rows, &w, Dir::Forward),
                reference(&dy, rows, &w, Dir::Backward),
            );
            assert!(
                rel(&y, &y_ref) < 1e-5,
                "forward {rows}×{out}×{inp}: {}",
                rel(&y, &y_ref)
            );
            assert!(
                rel(&dx, &dx_ref) < 1e-5,
                "backward {rows}×{out}×{inp}: {}",
                rel(&dx, &dx_ref)
            );
            // Against f32 arithmetic on the dequantised weights: bf16 rounding only.
            let wf = w.dequantize();
            let exact: Vec<f32> = (0..rows * out)
                .map(|i| {
                    (0..inp)
                        .map(|k| x[(i / out) * inp + k] * wf[(i % out) * inp + k])
                        .sum()
                })
                .collect();
            assert!(
                rel(&y, &exact) < 2e-2,
                "forward vs f32: {}",
                rel(&y, &exact)
            );
            assert!(rel(&y, &exact) > 0.0, "bf16 rounding shows");
        }
    }
}
