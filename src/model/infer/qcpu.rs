//! `y = x Wᵀ` on the CPU: 4- or 8-bit weights against 8-bit activations, in integer arithmetic.
//!
//! Why this exists: a decoding step reads every weight once, so its speed is the bytes a weight
//! takes and the instructions spent on each. Widening weights to f32 (what our first kernel
//! did) costs several instructions a weight and left the 1.5B model at 0.4× llama.cpp. Here,
//! as in llama.cpp, the activations are quantised too — here in two i8 parts per 32 (about 16
//! bits; see [`QActs::quantize`] for why two) — and a weight block meets an activation block in
//! one integer instruction for every 32 or 64 byte pairs and part (`vpdpbusd` with AVX-512
//! VNNI; `vpmaddubsw` + `vpmaddwd` with AVX2). The float work is left to once per 32 weights:
//! `y += (s_w · d₂) · Σ q_w (256 q_x + q₂_x) + o_w · Σ x`.
//!
//! The weights keep the form the GGUF gives them where that form is affine with one scale per
//! 32 — Q4_0, Q4_1 and Q4_K as exact 4-bit codes (0.625 bytes a weight), Q8_0 as exact 8-bit
//! codes — and anything else (Q6_K, f16, a Hugging Face checkpoint's floats) is put on an 8-bit
//! grid between each block's min and max (1.125 bytes a weight). Scales and offsets are f16.
//!
//! Layout: 8 blocks form a *group* of 256 weights. Within a group the bytes are interleaved so
//! that a 32-byte chunk holds four adjacent codes of each of the 8 blocks; an instruction that
//! sums four adjacent byte products into an i32 lane therefore leaves lane `b` with block `b`'s
//! sum, and a group's 8 block sums come out as one vector with no shuffling. Activations are
//! laid out the same way when they are quantised.
//!
//! Every output is computed the same way on every path — exact integer sums, then the same f32
//! operations (fused multiply-adds) in the same order — so the result does not depend on which
//! instructions this CPU has, nor on which other rows share the call: a sequence's logits are
//! the same alone and in a batch, and prompts and generated tokens go through the same code.

use half::f16;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Weights per (scale, offset) block: the block of GGUF's Q4 and Q8 formats.
pub const BLOCK: usize = 32;

/// Blocks per group: a group's block sums are one 256-bit vector of 8 i32 lanes.
const BLOCKS: usize = 8;

/// Weights per group.
const GROUP: usize = BLOCK * BLOCKS;

/// Output features per parallel task.
const TILE: usize = 16;

/// Multiply-adds below which a product runs on the calling thread.
const SERIAL_BELOW: usize = 1 << 21;

/// Activation rows dotted at once with one weight row held in registers (then half as many,
/// then one at a time, for the rest).
const ROWS: usize = 8;

/// Where element `i` (0..256) of a group sits in the interleaved layout: chunk `c` (32 bytes)
/// holds elements `4c..4c+4` of each block, block after block.
#[inline]
fn slot(i: usize) -> usize {
    let (b, e) = (i / BLOCK, i % BLOCK);
    (e / 4) * 32 + b * 4 + e % 4
}

/// How many bits a weight's code takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bits {
    /// Codes 0..=15, two to a byte.
    Four,
    /// Codes 0..=255.
    Eight,
}

impl Bits {
    fn group_bytes(self) -> usize {
        match self {
            Bits::Four => GROUP / 2,
            Bits::Eight => GROUP,
        }
    }
}

/// One block as a decoder or quantiser produces it: `offset + scale · code`.
#[derive(Debug, Clone, Copy)]
struct Block {
    scale: f32,
    offset: f32,
    codes: [u8; BLOCK],
}

const EMPTY: Block = Block {
    scale: 0.0,
    offset: 0.0,
    codes: [0; BLOCK],
};

/// A weight matrix (out, in) as `offset + scale · code` per block of [`BLOCK`], in the
/// interleaved group layout (rows padded with empty blocks to whole groups).
#[derive(Debug, Clone)]
pub struct QWeights {
    bits: Bits,
    codes: Vec<u8>,
    scale: Vec<f16>,
    offset: Vec<f16>,
    rows: usize,
    cols: usize,
    groups: usize,
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q4_K's 6-bit scale and min of sub-block `j` (the packing of ggml's `get_scale_min_k4`).
fn q4k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The block's min and max.
fn min_max(wb: &[f32]) -> (f32, f32) {
    let lo = wb.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = wb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (lo, hi)
}

/// The block on a grid of `levels` steps from its min to its max, with f16 `lo` and `step`
/// (so codes are chosen against the grid as it will be stored); and whether every weight is
/// exactly on it.
fn grid(wb: &[f32], levels: u8) -> (Block, bool) {
    let (lo, hi) = min_max(wb);
    let lo = f16::from_f32(lo).to_f32();
    let step = f16::from_f32((hi - lo) / levels as f32).to_f32();
    let mut blk = Block {
        scale: step,
        offset: lo,
        codes: [0; BLOCK],
    };
    let mut exact = true;
    for (c, &x) in blk.codes.iter_mut().zip(wb) {
        let q = if step > 0.0 {
            ((x - lo) / step).round().clamp(0.0, levels as f32)
        } else {
            0.0
        };
        *c = q as u8;
        exact &= lo + step * q == x;
    }
    (blk, exact)
}

/// The block as `lo + step · code` with codes `0..=levels`, if every weight is exactly that.
fn fit_grid(wb: &[f32], levels: u8) -> Option<Block> {
    let (blk, exact) = grid(wb, levels);
    exact.then_some(blk)
}

/// The block as Q8_0 dequantises: `d · q`, `d = max|w| / 127` in f16, if every weight is
/// exactly that (stored as codes `q + 128` with offset `-128 d`).
fn fit_symmetric(wb: &[f32]) -> Option<Block> {
    let amax = wb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = f16::from_f32(amax / 127.0).to_f32();
    (d > 0.0).then_some(())?;
    let mut blk = Block {
        scale: d,
        offset: -128.0 * d,
        codes: [0; BLOCK],
    };
    for (c, &x) in blk.codes.iter_mut().zip(wb) {
        let q = (x / d).round().clamp(-128.0, 127.0);
        (d * q == x).then_some(())?;
        *c = (q + 128.0) as u8;
    }
    Some(blk)
}

impl QWeights {
    /// Lay out `rows` rows; `row(j, blocks)` fills row `j`'s `cols.div_ceil(32)` blocks.
    fn assemble(
        rows: usize,
        cols: usize,
        bits: Bits,
        row: impl Fn(usize, &mut [Block]) + Sync,
    ) -> QWeights {
        let groups = cols.div_ceil(GROUP);
        let gb = bits.group_bytes();
        let mut codes = vec![0u8; rows * groups * gb];
        let mut scale = vec![f16::ZERO; rows * groups * BLOCKS];
        let mut offset = vec![f16::ZERO; rows * groups * BLOCKS];
        codes
            .par_chunks_mut(groups * gb)
            .zip(scale.par_chunks_mut(groups * BLOCKS))
            .zip(offset.par_chunks_mut(groups * BLOCKS))
            .enumerate()
            .for_each(|(j, ((c, s), o))| {
                let mut blocks = vec![EMPTY; groups * BLOCKS];
                row(j, &mut blocks[..cols.div_ceil(BLOCK)]);
                let parts = c
                    .chunks_mut(gb)
                    .zip(s.chunks_mut(BLOCKS).zip(o.chunks_mut(BLOCKS)));
                for ((cg, (sg, og)), bg) in parts.zip(blocks.chunks(BLOCKS)) {
                    let mut flat = [0u8; GROUP];
                    for (b, blk) in bg.iter().enumerate() {
                        sg[b] = f16::from_f32(blk.scale);
                        og[b] = f16::from_f32(blk.offset);
                        for (e, &code) in blk.codes.iter().enumerate() {
                            flat[slot(b * BLOCK + e)] = code;
                        }
                    }
                    match bits {
                        Bits::Eight => cg.copy_from_slice(&flat),
                        // Chunk c's codes in the low nibbles, chunk c + 4's in the high ones.
                        Bits::Four => {
                            for (p, byte) in cg.iter_mut().enumerate() {
                                *byte = flat[p] | (flat[p + GROUP / 2] << 4);
                            }
                        }
                    }
                }
            });
        QWeights {
            bits,
            codes,
            scale,
            offset,
            rows,
            cols,
            groups,
        }
    }

    /// Any weights (rows × cols, row-major), block by block: kept exactly where they already
    /// lie on a 4-bit grid from the block's min (as Q4_1 and most Q4_K blocks dequantise) or on
    /// Q8_0's symmetric grid, else put on an 8-bit grid from the block's min to its max. The
    /// matrix takes 4-bit codes when every block fits the first. (So a checkpoint written
    /// from a GGUF is the same model again, and costs the same bytes.)
    pub fn from_f32(w: &[f32], rows: usize, cols: usize) -> QWeights {
        assert_eq!(w.len(), rows * cols, "weights are not {rows} × {cols}");
        let four = w
            .par_chunks(cols.max(1))
            .all(|row| row.chunks(BLOCK).all(|b| fit_grid(b, 15).is_some()));
        let bits = if four { Bits::Four } else { Bits::Eight };
        QWeights::assemble(rows, cols, bits, |j, blocks| {
            for (blk, wb) in blocks
                .iter_mut()
                .zip(w[j * cols..(j + 1) * cols].chunks(BLOCK))
            {
                *blk = fit_grid(wb, 15)
                    .or_else(|| fit_symmetric(wb))
                    .unwrap_or_else(|| grid(wb, 255).0);
            }
        })
    }

    /// The exact codes of a GGUF tensor's raw blocks, for the formats that are affine per 32
    /// (Q4_0, Q4_1, Q4_K, Q8_0); `None` for any other format (dequantise and use
    /// [`QWeights::from_f32`]).
    pub fn from_gguf(
        dtype: candle_core::quantized::GgmlDType,
        data: &[u8],
        rows: usize,
        cols: usize,
    ) -> Option<QWeights> {
        use candle_core::quantized::GgmlDType as T;
        // (weights per raw block, bytes per raw block, code bits)
        let (per, bytes, bits) = match dtype {
            T::Q4_0 => (32, 18, Bits::Four),
            T::Q4_1 => (32, 20, Bits::Four),
            T::Q4K => (256, 144, Bits::Four),
            T::Q8_0 => (32, 34, Bits::Eight),
            _ => return None,
        };
        if !cols.is_multiple_of(per) || data.len() != rows * cols / per * bytes {
            return None;
        }
        let row_bytes = cols / per * bytes;
        Some(QWeights::assemble(rows, cols, bits, |j, blocks| {
            let raw = data[j * row_bytes..(j + 1) * row_bytes].chunks(bytes);
            match dtype {
                T::Q4K => {
                    for (out, b) in blocks.chunks_mut(8).zip(raw) {
                        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                        let (sc, qs) = (&b[4..16], &b[16..144]);
                        for (s, blk) in out.iter_mut().enumerate() {
                            let (scale, min) = q4k_scale_min(s, sc);
                            blk.scale = d * scale as f32;
                            blk.offset = -(dmin * min as f32);
                            let q = &qs[32 * (s / 2)..32 * (s / 2) + 32];
                            for (c, &byte) in blk.codes.iter_mut().zip(q) {
                                *c = if s % 2 == 0 { byte & 0xF } else { byte >> 4 };
                            }
                        }
                    }
                }
                _ => {
                    for (blk, b) in blocks.iter_mut().zip(raw) {
                        let d = f16_at(b, 0);
                        match dtype {
                            T::Q8_0 => {
                                blk.scale = d;
                                blk.offset = -128.0 * d;
                                for (c, &q) in blk.codes.iter_mut().zip(&b[2..34]) {
                                    *c = (q as i8 as i16 + 128) as u8;
                                }
                            }
                            _ => {
                                let (offset, qs) = match dtype {
                                    T::Q4_0 => (-8.0 * d, &b[2..18]),
                                    _ => (f16_at(b, 2), &b[4..20]),
                                };
                                blk.scale = d;
                                blk.offset = offset;
                                for (e, c) in blk.codes.iter_mut().enumerate() {
                                    *c = match e < 16 {
                                        true => qs[e] & 0xF,
                                        false => qs[e - 16] >> 4,
                                    };
                                }
                            }
                        }
                    }
                }
            }
        }))
    }

    /// (rows, cols).
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bits a code takes.
    pub fn bits(&self) -> Bits {
        self.bits
    }

    /// The code of element `t` (interleaved position) of group `g` of row `j`.
    #[inline]
    fn code(&self, j: usize, g: usize, t: usize) -> u8 {
        let at = (j * self.groups + g) * self.bits.group_bytes();
        match self.bits {
            Bits::Eight => self.codes[at + t],
            Bits::Four if t < GROUP / 2 => self.codes[at + t] & 0xF,
            Bits::Four => self.codes[at + t - GROUP / 2] >> 4,
        }
    }

    /// Block `blk` (elements `32 blk..32 blk + 32`) of row `j`: its codes in element order
    /// (zeros past the last column) and its (scale, offset). For kernels that widen the
    /// weights tile by tile.
    #[inline]
    pub fn block_codes(&self, j: usize, blk: usize, out: &mut [u8; BLOCK]) -> (f32, f32) {
        let (g, b) = (blk / BLOCKS, blk % BLOCKS);
        let k = (j * self.groups + g) * BLOCKS + b;
        // Element e of block b sits at slot (e / 4) · 32 + 4 b + e % 4 (see `slot`); 4-bit
        // slots 128.. are the high nibbles of bytes 0..128.
        let at = (j * self.groups + g) * self.bits.group_bytes() + b * 4;
        match self.bits {
            Bits::Eight => {
                for c in 0..BLOCK / 4 {
                    out[c * 4..][..4].copy_from_slice(&self.codes[at + c * 32..][..4]);
                }
            }
            Bits::Four => {
                for c in 0..BLOCK / 8 {
                    for i in 0..4 {
                        let byte = self.codes[at + c * 32 + i];
                        out[c * 4 + i] = byte & 0xF;
                        out[BLOCK / 2 + c * 4 + i] = byte >> 4;
                    }
                }
            }
        }
        (self.scale[k].to_f32(), self.offset[k].to_f32())
    }

    /// Block `blk` of row `j` as f32: what its codes stand for.
    pub fn block_f32(&self, j: usize, blk: usize, out: &mut [f32; BLOCK]) {
        let mut codes = [0u8; BLOCK];
        let (scale, offset) = self.block_codes(j, blk, &mut codes);
        for (o, c) in out.iter_mut().zip(codes) {
            *o = offset + scale * c as f32;
        }
    }

    /// The matrix as f32, row-major: what the codes stand for.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(j, row)| {
                for (i, y) in row.iter_mut().enumerate() {
                    let (g, b) = (i / GROUP, (i % GROUP) / BLOCK);
                    let k = (j * self.groups + g) * BLOCKS + b;
                    let code = self.code(j, g, slot(i % GROUP));
                    *y = self.offset[k].to_f32() + self.scale[k].to_f32() * code as f32;
                }
            });
        out
    }
}

/// Activation rows quantised in two i8 parts with one scale per block, in the weights' group
/// layout, with each block's exact f32 sum (for the weights' offsets).
#[derive(Debug, Clone)]
pub struct QActs {
    q: Vec<i8>,
    q2: Vec<i8>,
    /// The remainder's step `d₂`; the first part's is `256 d₂`.
    d2: Vec<f32>,
    sum: Vec<f32>,
    rows: usize,
    cols: usize,
    groups: usize,
}

impl QActs {
    /// Quantise `x` (rows × cols, row-major) in two i8 parts per block: with
    /// `d₂ = max|x| / (127 · 256)` and `d = 256 d₂`, `q = round(x / d)` and
    /// `q₂ = round((x − d q) / d₂)`, so `x ≈ d₂ (256 q + q₂)`.
    ///
    /// One part alone is what llama.cpp does; it leaves errors of up to `d / 2`, which a
    /// 30-layer model amplifies enough to move the top token's probability by 0.3 between two
    /// orderings of the same sums (and greedy decoding of Qwen 0.5B then parts from llama.cpp's
    /// after 10 tokens instead of 32). Two parts leave `d₂ / 2`, f32's own noise for what
    /// follows, for a second integer pass over weights already in registers; the parts' sums
    /// combine in integers (`256 Σ₁ + Σ₂`) before the one conversion to f32.
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> QActs {
        assert_eq!(x.len(), rows * cols, "activations are not {rows} × {cols}");
        let groups = cols.div_ceil(GROUP);
        let (per_q, per_d) = (groups * GROUP, groups * BLOCKS);
        let mut q = vec![0i8; rows * per_q];
        let mut q2 = vec![0i8; rows * per_q];
        let mut d2 = vec![0f32; rows * per_d];
        let mut sum = vec![0f32; rows * per_d];
        let one_row = |(r, (((q, q2), d2), sum)): (usize, RowParts<'_>)| {
            for (i, xb) in x[r * cols..(r + 1) * cols].chunks(BLOCK).enumerate() {
                let (g, b) = (i / BLOCKS, i % BLOCKS);
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step2 = amax / (127.0 * 256.0);
                let step = step2 * 256.0;
                let (inv, inv2) = match step2 > 0.0 {
                    true => (1.0 / step, 1.0 / step2),
                    false => (0.0, 0.0),
                };
                d2[i] = step2;
                sum[i] = xb.iter().sum();
                let (qg, q2g) = (&mut q[g * GROUP..][..GROUP], &mut q2[g * GROUP..][..GROUP]);
                for (e, &v) in xb.iter().enumerate() {
                    let hi = round(v * inv);
                    qg[slot(b * BLOCK + e)] = hi as i8;
                    // |x − d q| ≤ d / 2 = 128 d₂: ±128 only at an exact tie, clamped.
                    q2g[slot(b * BLOCK + e)] =
                        round((v - step * hi) * inv2).clamp(-127.0, 127.0) as i8;
                }
            }
        };
        let parts = q
            .chunks_mut(per_q)
            .zip(q2.chunks_mut(per_q))
            .zip(d2.chunks_mut(per_d))
            .zip(sum.chunks_mut(per_d))
            .enumerate();
        if rows >= 16 {
            parts.par_bridge().for_each(one_row);
        } else {
            parts.for_each(one_row);
        }
        QActs {
            q,
            q2,
            d2,
            sum,
            rows,
            cols,
            groups,
        }
    }

    /// What the codes stand for, rows × cols (for tests and checks).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_mut(self.cols).enumerate() {
            for (i, y) in row.iter_mut().enumerate() {
                let (g, b) = (i / GROUP, (i % GROUP) / BLOCK);
                let at = (r * self.groups + g) * GROUP + slot(i % GROUP);
                let k = (r * self.groups + g) * BLOCKS + b;
                *y = self.d2[k] * (256.0 * self.q[at] as f32 + self.q2[at] as f32);
            }
        }
        out
    }
}

/// One activation row's share of each [`QActs`] buffer: ((q, q₂), d₂), sum.
type RowParts<'a> = (((&'a mut [i8], &'a mut [i8]), &'a mut [f32]), &'a mut [f32]);

/// Round half to even, for |v| < 2²², in plain f32 arithmetic: the same on every CPU, and no
/// call into libm (baseline x86-64 has no rounding instruction).
#[inline(always)]
fn round(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³
    (v + MAGIC) - MAGIC
}

/// The instruction set a tile runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust: any CPU.
    Generic,
    /// AVX2 + FMA + F16C: `vpmaddubsw` and `vpmaddwd`.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 with VNNI: `vpdpbusd` on 64 byte pairs at a time.
    #[cfg(target_arch = "x86_64")]
    Vnni512,
}

impl Kernel {
    /// The best this CPU has (checked once; the binary itself targets baseline x86-64).
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            let all = Kernel::available();
            *all.last().expect("the generic kernel is always there")
        })
    }

    /// Every kernel this CPU can run, the generic one first.
    pub fn available() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut all = vec![Kernel::Generic];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                all.push(Kernel::Avx2);
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                    all.push(Kernel::Vnni512);
                }
            }
        }
        all
    }
}

/// Where a tile writes: `y[r * n + j]`. Tiles own disjoint ranges of `j`.
#[derive(Clone, Copy)]
struct Out {
    y: *mut f32,
    n: usize,
}

// SAFETY: tiles write disjoint elements (their own columns `j`), and `matmul` waits for all.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// # Safety
    /// `r * n + j` is in bounds and no other thread writes it.
    #[inline]
    unsafe fn put(self, r: usize, j: usize, v: f32) {
        unsafe { *self.y.add(r * self.n + j) = v }
    }
}

/// The fixed reduction of a row's 8 lane sums: (l0+l4, l1+l5, l2+l6, l3+l7), then halves again.
#[inline]
fn reduce8(l: [f32; 8]) -> f32 {
    let t = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let u = [t[0] + t[2], t[1] + t[3]];
    u[0] + u[1]
}

/// Output features `j0..j1` for every activation row, in plain Rust.
fn tile_generic(w: &QWeights, a: &QActs, j0: usize, j1: usize, out: Out) {
    let groups = w.groups;
    for j in j0..j1 {
        for r in 0..a.rows {
            let mut acc = [0f32; 8];
            for g in 0..groups {
                let mut isum = [0i32; 8];
                let at = (r * groups + g) * GROUP;
                let (q, q2) = (&a.q[at..][..GROUP], &a.q2[at..][..GROUP]);
                for (t, (&qt, &q2t)) in q.iter().zip(q2).enumerate() {
                    let c = w.code(j, g, t) as i32;
                    isum[(t % 32) / 4] += c * (256 * qt as i32 + q2t as i32);
                }
                let k = (j * groups + g) * BLOCKS;
                let ka = (r * groups + g) * BLOCKS;
                for b in 0..BLOCKS {
                    let ws = w.scale[k + b].to_f32();
                    acc[b] = (ws * a.d2[ka + b]).mul_add(isum[b] as f32, acc[b]);
                    acc[b] = w.offset[k + b].to_f32().mul_add(a.sum[ka + b], acc[b]);
                }
            }
            // SAFETY: this tile owns columns j0..j1; r < rows.
            unsafe { out.put(r, j, reduce8(acc)) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCKS, Bits, GROUP, Out, QActs, QWeights, ROWS};
    use std::arch::x86_64::*;

    /// The f32 part, shared: `acc += (s_w · d₂) Σ + o_w Σx`, in that order, one fused
    /// multiply-add each.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn epilogue(
        acc: __m256,
        isum: __m256i,
        ws: __m256,
        wo: __m256,
        a: &QActs,
        ka: usize,
    ) -> __m256 {
        // SAFETY: ka + 8 <= the length of a.d2 and a.sum (ka indexes a whole group).
        unsafe {
            let d2 = _mm256_loadu_ps(a.d2.as_ptr().add(ka));
            let sx = _mm256_loadu_ps(a.sum.as_ptr().add(ka));
            let acc = _mm256_fmadd_ps(_mm256_mul_ps(ws, d2), _mm256_cvtepi32_ps(isum), acc);
            _mm256_fmadd_ps(wo, sx, acc)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn reduce(v: __m256) -> f32 {
        let t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
        _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)))
    }

    /// The scales and offsets of group `g` of row `j`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scales(w: &QWeights, k: usize) -> (__m256, __m256) {
        // SAFETY: k + 8 <= w.scale.len() == w.offset.len().
        unsafe {
            let s = _mm_loadu_si128(w.scale.as_ptr().add(k) as *const __m128i);
            let o = _mm_loadu_si128(w.offset.as_ptr().add(k) as *const __m128i);
            (_mm256_cvtph_ps(s), _mm256_cvtph_ps(o))
        }
    }

    /// Groups ahead to ask the memory for. Decoding streams the weights from DRAM; with several
    /// rows' arithmetic between two loads, too few loads are in flight for the hardware's own
    /// prefetcher to keep the bandwidth up (a batch of 4 took 1.7× one row's time instead of
    /// 1.25×).
    const AHEAD: usize = 8;

    /// Prefetch the codes (at `p`) and scales (group index `k`) [`AHEAD`] groups on; past the
    /// end of a row that is the next row, which the tile reads next.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn prefetch(w: &QWeights, p: *const u8, k: usize) {
        let gb = w.bits.group_bytes();
        // A prefetch never faults: addresses past the end are fine, hence wrapping_add.
        let ahead = p.wrapping_add(AHEAD * gb);
        for line in (0..gb).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line) as *const i8);
        }
        let k = k + AHEAD * BLOCKS;
        _mm_prefetch::<_MM_HINT_T0>(w.scale.as_ptr().wrapping_add(k) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(w.offset.as_ptr().wrapping_add(k) as *const i8);
    }

    /// Rows `r0..r0 + R` against weight row `j`, AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn rows_avx2<const R: usize>(w: &QWeights, a: &QActs, j: usize, r0: usize, out: Out) {
        let groups = w.groups;
        let gb = w.bits.group_bytes();
        let nib = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for g in 0..groups {
            // SAFETY: every offset below stays inside row j's group g (gb bytes) and the
            // activation rows' group g (256 bytes), which the shapes guarantee.
            unsafe {
                let p = w.codes.as_ptr().add((j * groups + g) * gb);
                prefetch(w, p, (j * groups + g) * BLOCKS);
                // The weights' 8 chunks, lined up with the activations' chunks 0..8, as codes
                // ≤ 15 (pair sums fit `vpmaddubsw`'s i16): 4-bit codes as they are, 8-bit ones
                // split into low nibbles and high nibbles (which count 16 times).
                let mut lo = [_mm256_setzero_si256(); 8];
                let mut hi = None;
                match w.bits {
                    Bits::Four => {
                        for c in 0..4 {
                            let v = _mm256_loadu_si256(p.add(32 * c) as *const __m256i);
                            lo[c] = _mm256_and_si256(v, nib);
                            lo[c + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                        }
                    }
                    Bits::Eight => {
                        let mut h = [_mm256_setzero_si256(); 8];
                        for c in 0..8 {
                            let v = _mm256_loadu_si256(p.add(32 * c) as *const __m256i);
                            lo[c] = _mm256_and_si256(v, nib);
                            h[c] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                        }
                        hi = Some(h);
                    }
                }
                let dot =
                    |w: __m256i, x: __m256i| _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
                let k = (j * groups + g) * BLOCKS;
                let (ws, wo) = scales(w, k);
                for (i, acc) in acc.iter_mut().enumerate() {
                    let r = r0 + i;
                    let at = (r * groups + g) * GROUP;
                    let parts = [a.q.as_ptr().add(at), a.q2.as_ptr().add(at)];
                    let isum = parts.map(|q| {
                        let q = q as *const __m256i;
                        let mut isum = _mm256_setzero_si256();
                        for c in 0..8 {
                            let x = _mm256_loadu_si256(q.add(c));
                            isum = _mm256_add_epi32(isum, dot(lo[c], x));
                            if let Some(h) = &hi {
                                isum = _mm256_add_epi32(isum, _mm256_slli_epi32(dot(h[c], x), 4));
                            }
                        }
                        isum
                    });
                    let isum = _mm256_add_epi32(_mm256_slli_epi32(isum[0], 8), isum[1]);
                    *acc = epilogue(*acc, isum, ws, wo, a, (r * groups + g) * BLOCKS);
                }
            }
        }
        for (i, &v) in acc.iter().enumerate() {
            // SAFETY: the caller's tile owns column j; r0 + i < rows.
            unsafe { out.put(r0 + i, j, reduce(v)) };
        }
    }

    /// Rows `r0..r0 + R` against weight row `j`, AVX-512 VNNI.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn rows_vnni<const R: usize>(w: &QWeights, a: &QActs, j: usize, r0: usize, out: Out) {
        let groups = w.groups;
        let gb = w.bits.group_bytes();
        let nib = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); R];
        for g in 0..groups {
            // SAFETY: as in `rows_avx2`.
            unsafe {
                let p = w.codes.as_ptr().add((j * groups + g) * gb);
                prefetch(w, p, (j * groups + g) * BLOCKS);
                // Lined up with the activations' bytes 0..64, 64..128, 128..192, 192..256.
                let wv: [__m512i; 4] = match w.bits {
                    Bits::Four => {
                        let p0 = _mm512_loadu_si512(p as *const __m512i);
                        let p1 = _mm512_loadu_si512(p.add(64) as *const __m512i);
                        [
                            _mm512_and_si512(p0, nib),
                            _mm512_and_si512(p1, nib),
                            _mm512_and_si512(_mm512_srli_epi16(p0, 4), nib),
                            _mm512_and_si512(_mm512_srli_epi16(p1, 4), nib),
                        ]
                    }
                    Bits::Eight => {
                        [0, 1, 2, 3].map(|i| _mm512_loadu_si512(p.add(64 * i) as *const __m512i))
                    }
                };
                let k = (j * groups + g) * BLOCKS;
                let (ws, wo) = scales(w, k);
                for (i, acc) in acc.iter_mut().enumerate() {
                    let r = r0 + i;
                    let at = (r * groups + g) * GROUP;
                    let parts = [a.q.as_ptr().add(at), a.q2.as_ptr().add(at)];
                    let [s1, s2] = parts.map(|q| {
                        let q = q as *const __m512i;
                        let mut s = _mm512_setzero_si512();
                        for (c, &wc) in wv.iter().enumerate() {
                            s = _mm512_dpbusd_epi32(s, wc, _mm512_loadu_si512(q.add(c)));
                        }
                        s
                    });
                    let s = _mm512_add_epi32(_mm512_slli_epi32(s1, 8), s2);
                    // Lanes 8..16 hold the same blocks as lanes 0..8 (the next chunk).
                    let isum = _mm256_add_epi32(
                        _mm512_castsi512_si256(s),
                        _mm512_extracti64x4_epi64(s, 1),
                    );
                    *acc = epilogue(*acc, isum, ws, wo, a, (r * groups + g) * BLOCKS);
                }
            }
        }
        for (i, &v) in acc.iter().enumerate() {
            // SAFETY: the caller's tile owns column j; r0 + i < rows.
            unsafe { out.put(r0 + i, j, reduce(v)) };
        }
    }

    /// A tile with a given row kernel: activation rows outside, weight rows inside, so a
    /// chunk of rows and the tile's weights both stay in L1 while a prompt's rows go by; rows
    /// [`ROWS`] at a time, then half as many, then one by one.
    macro_rules! tile_with {
        ($rows:ident, $w:expr, $a:expr, $j0:expr, $j1:expr, $out:expr) => {{
            let (w, a, out) = ($w, $a, $out);
            let mut r0 = 0;
            while r0 + ROWS <= a.rows {
                for j in $j0..$j1 {
                    $rows::<ROWS>(w, a, j, r0, out);
                }
                r0 += ROWS;
            }
            if r0 + ROWS / 2 <= a.rows {
                for j in $j0..$j1 {
                    $rows::<{ ROWS / 2 }>(w, a, j, r0, out);
                }
                r0 += ROWS / 2;
            }
            while r0 < a.rows {
                for j in $j0..$j1 {
                    $rows::<1>(w, a, j, r0, out);
                }
                r0 += 1;
            }
        }};
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn tile_avx2(w: &QWeights, a: &QActs, j0: usize, j1: usize, out: Out) {
        tile_with!(rows_avx2, w, a, j0, j1, out)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) fn tile_vnni(w: &QWeights, a: &QActs, j0: usize, j1: usize, out: Out) {
        tile_with!(rows_vnni, w, a, j0, j1, out)
    }
}

/// `y[r * n + j] = Σ_c x[r, c] · w[j, c]` for the quantised rows `x` and weights `w` (n × k),
/// with this CPU's best kernel.
///
/// # Panics
/// When the sizes do not agree.
pub fn matmul(x: &QActs, w: &QWeights) -> Vec<f32> {
    run(Kernel::best(), x, w)
}

/// [`matmul`] with a chosen kernel (tests compare them). `kernel` must be one of
/// [`Kernel::available`].
pub fn matmul_with(kernel: Kernel, x: &QActs, w: &QWeights) -> Vec<f32> {
    assert!(
        Kernel::available().contains(&kernel),
        "this CPU cannot run {kernel:?}"
    );
    run(kernel, x, w)
}

/// [`matmul`] with `kernel`, which the caller has checked this CPU runs.
fn run(kernel: Kernel, x: &QActs, w: &QWeights) -> Vec<f32> {
    assert_eq!(
        x.cols, w.cols,
        "activations have {} columns, weights {}",
        x.cols, w.cols
    );
    let n = w.rows;
    let mut y = vec![0f32; x.rows * n];
    let out = Out {
        y: y.as_mut_ptr(),
        n,
    };
    let tile = |t: usize| {
        let (j0, j1) = (t * TILE, ((t + 1) * TILE).min(n));
        match kernel {
            Kernel::Generic => tile_generic(w, x, j0, j1, out),
            // SAFETY: `kernel` is available, so the features it is compiled for are there.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::tile_avx2(w, x, j0, j1, out) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni512 => unsafe { x86::tile_vnni(w, x, j0, j1, out) },
        }
    };
    let tiles = n.div_ceil(TILE);
    // Waking the pool costs more than a small product (a 135M model's projections of one
    // row): those run on the calling thread.
    if n * w.cols * x.rows < SERIAL_BELOW {
        (0..tiles).for_each(tile);
    } else {
        (0..tiles).into_par_iter().for_each(tile);
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn pseudo(n: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i * 2654435761 + seed * 97) % 1000003;
                ((h % 2001) as f32 - 1000.0) / 1000.0 * scale
            })
            .collect()
    }

    #[test]
    fn the_layout_is_a_permutation() {
        let mut seen = [false; GROUP];
        for i in 0..GROUP {
            assert!(!seen[slot(i)]);
            seen[slot(i)] = true;
        }
    }

    #[test]
    fn gguf_blocks_decode_to_what_candle_dequantises() {
        let (n, k) = (7, 768);
        let wf = pseudo(n * k, 1, 0.3);
        let t = Tensor::from_vec(wf, (n, k), &Device::Cpu).unwrap();
        for (dtype, bits) in [
            (GgmlDType::Q4_0, Bits::Four),
            (GgmlDType::Q4_1, Bits::Four),
            (GgmlDType::Q4K, Bits::Four),
            (GgmlDType::Q8_0, Bits::Eight),
        ] {
            let q = QTensor::quantize(&t, dtype).unwrap();
            let want: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w = QWeights::from_gguf(dtype, &q.data().unwrap(), n, k).expect("supported");
            assert_eq!(w.bits(), bits);
            let got = w.dequantize();
            let worst = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // Q4_0, Q4_1 and Q8_0 scales are f16 already: exact. Q4_K's scale × sub-scale is
            // rounded to f16: 2⁻¹¹ of the scaled code (≤ 0.6) and of the offset (≤ 0.3).
            let tol = if dtype == GgmlDType::Q4K {
                0.9 / 2048.0
            } else {
                0.0
            };
            assert!(worst <= tol, "{dtype:?}: worst difference {worst}");
        }
        let q6 = QTensor::quantize(&t, GgmlDType::Q6K).unwrap();
        assert!(QWeights::from_gguf(GgmlDType::Q6K, &q6.data().unwrap(), n, k).is_none());
    }

    #[test]
    fn an_eight_bit_grid_holds_any_weights_within_half_a_step() {
        let (n, k) = (5, 70);
        let wf = pseudo(n * k, 2, 1.2);
        let back = QWeights::from_f32(&wf, n, k).dequantize();
        for (a, b) in wf.iter().zip(&back) {
            // Half a step of a block spanning 2.4, plus the f16 rounding of min and step.
            assert!((a - b).abs() <= 2.4 / 255.0 / 2.0 + 2e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn floats_already_on_a_gguf_grid_keep_it_exactly() {
        let (n, k) = (6, 512);
        let t = Tensor::from_vec(pseudo(n * k, 6, 0.4), (n, k), &Device::Cpu).unwrap();
        for (dtype, bits) in [
            (GgmlDType::Q4_1, Bits::Four),
            (GgmlDType::Q8_0, Bits::Eight),
        ] {
            let q = QTensor::quantize(&t, dtype).unwrap();
            let floats: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w = QWeights::from_f32(&floats, n, k);
            assert_eq!(w.bits(), bits, "{dtype:?}");
            assert_eq!(w.dequantize(), floats, "{dtype:?}");
        }
    }

    /// The matmul against f64 sums of what the codes stand for, on every kernel, and each
    /// row alone against the batch, bit for bit.
    fn check(w: &QWeights, m: usize, k: usize) {
        let n = w.shape().0;
        let x = pseudo(m * k, 3, 2.0);
        let qa = QActs::quantize(&x, m, k);
        let (wd, xd) = (w.dequantize(), qa.dequantize());
        let reference = matmul_with(Kernel::Generic, &qa, w);
        let offset = |j: usize, c: usize| {
            w.offset[(j * w.groups + c / GROUP) * BLOCKS + (c % GROUP) / BLOCK].to_f32() as f64
        };
        for (c, (&xq, &xt)) in xd.iter().zip(&x).enumerate() {
            let (r, cc) = (c / k, c % k);
            let step = qa.d2[(r * qa.groups + cc / GROUP) * BLOCKS + (cc % GROUP) / BLOCK];
            // Half a step, or a whole one where a tie was clamped to ±127.
            assert!((xq - xt).abs() <= step + 1e-6, "x[{c}]: {xq} vs {xt}");
        }
        for r in 0..m {
            for j in 0..n {
                // What the integer path computes: the codes' part against the quantised x,
                // the offsets against the exact block sums.
                let (mut exact, mut true_y, mut bound) = (0f64, 0f64, 0f64);
                for c in 0..k {
                    let (wv, o) = (wd[j * k + c] as f64, offset(j, c));
                    let (xq, xt) = (xd[r * k + c] as f64, x[r * k + c] as f64);
                    exact += (wv - o) * xq + o * xt;
                    true_y += wv * xt;
                    bound += (wv - o).abs() * (xq - xt).abs();
                }
                let got = reference[r * n + j] as f64;
                assert!((got - exact).abs() < 1e-3, "({r},{j}): {got} vs {exact}");
                assert!(
                    (got - true_y).abs() <= bound + 1e-3,
                    "({r},{j}): {got} vs {true_y}"
                );
            }
        }
        for kernel in Kernel::available() {
            let y = matmul_with(kernel, &qa, w);
            assert_eq!(y, reference, "{kernel:?} differs from the generic kernel");
            for r in 0..m {
                let alone = QActs::quantize(&x[r * k..(r + 1) * k], 1, k);
                let y1 = matmul_with(kernel, &alone, w);
                assert_eq!(
                    y1,
                    reference[r * n..(r + 1) * n],
                    "{kernel:?}, row {r} alone"
                );
            }
        }
    }

    #[test]
    fn eight_bit_weights_multiply_exactly_on_every_kernel() {
        // 70 columns: a partial block and a partial group.
        let (n, k) = (37, 70);
        check(&QWeights::from_f32(&pseudo(n * k, 4, 0.5), n, k), 6, k);
    }

    #[test]
    fn four_bit_weights_multiply_exactly_on_every_kernel() {
        let (n, k) = (21, 768);
        let t = Tensor::from_vec(pseudo(n * k, 5, 0.5), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q4K).unwrap();
        let w = QWeights::from_gguf(GgmlDType::Q4K, &q.data().unwrap(), n, k).unwrap();
        check(&w, 5, k);
        let q = QTensor::quantize(&t, GgmlDType::Q4_1).unwrap();
        let w = QWeights::from_gguf(GgmlDType::Q4_1, &q.data().unwrap(), n, k).unwrap();
        check(&w, 9, k);
    }
}
