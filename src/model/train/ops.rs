//! Fused training ops with their own backward, in plain Rust on the CPU: causal attention,
//! RMSNorm and rotary embedding (the head's cross-entropy, which needs the frozen head, is
//! [`super::frozen::head_cross_entropy_sum`]).
//!
//! Why: composed of candle's elementwise ops, each of these keeps every intermediate alive
//! until the backward pass (attention alone: scores, mask, max, exp, sum, probabilities — six
//! tensors of batch × heads × len² per layer) and allocates each afresh. Fused, a layer keeps
//! its inputs and output only and the backward recomputes what it needs (attention recomputes
//! its probabilities row by row, as flash attention does). Every op here is checked against
//! finite differences through the whole model (tests/train.rs).

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(d) = s else {
        candle_core::bail!("{what} takes f32");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what} takes contiguous input");
    };
    Ok(&d[a..b])
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Causal attention of q (batch, heads, len, dim) over k and v (batch, kv_heads, len, dim):
/// query head `h` reads key/value head `h / (heads / kv_heads)`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, Attention)
}

struct Attention;

struct Dims {
    h: usize,
    hkv: usize,
    t: usize,
    d: usize,
}

impl Dims {
    fn of(q: &[usize], k: &[usize]) -> Result<Dims> {
        match (q, k) {
            ([b, h, t, d], [b2, hkv, t2, d2])
                if b == b2 && t == t2 && d == d2 && *hkv > 0 && h % hkv == 0 =>
            {
                Ok(Dims {
                    h: *h,
                    hkv: *hkv,
                    t: *t,
                    d: *d,
                })
            }
            _ => candle_core::bail!("attention: q {q:?} and k/v {k:?} do not fit"),
        }
    }
    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

/// A matrix view: `at(r, c) = data[r · rs + c · cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// Row-major `rows × cols`.
    pub(crate) fn rows(data: &'a [f32], cols: usize) -> View<'a> {
        View {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub(crate) fn t(data: &'a [f32], cols: usize) -> View<'a> {
        View {
            data,
            rs: 1,
            cs: cols,
        }
    }
    /// Whether an `r × c` matrix fits.
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.rs + (c - 1) * self.cs < self.data.len()
    }
}

/// `c (m × n, row-major) = a (m × k) · b (k × n)`, or `c += …` with `add`; on this thread
/// (attention runs one task per head), so the sums' order is fixed.
fn matmul(m: usize, n: usize, k: usize, c: &mut [f32], add: bool, a: View, b: View) {
    product(m, n, k, c, add, 1.0, a, b, false);
}

/// `c = [c +] scale · a b` (`c` row-major `m × n`); `parallel` splits the output over the
/// thread pool (each element's sum keeps its order, so the result is the same either way).
#[allow(clippy::too_many_arguments)]
pub(crate) fn product(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    add: bool,
    scale: f32,
    a: View,
    b: View,
    parallel: bool,
) {
    assert!(
        c.len() >= m * n && a.fits(m, k) && b.fits(k, n),
        "matmul operands"
    );
    let par = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the product reads or writes is inside the slices (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            add,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// Causal softmax probabilities `P (t × t)` of one head: `softmax(scale · Q Kᵀ)` with keys
/// after the query masked (zero).
fn probs(q: &[f32], k: &[f32], t: usize, d: usize, scale: f32, p: &mut [f32]) {
    matmul(t, t, d, p, false, View::rows(q, d), View::t(k, d));
    for (i, row) in p.chunks_mut(t).enumerate() {
        let (live, masked) = row.split_at_mut(i + 1);
        let m = live.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x * scale));
        let mut sum = 0f32;
        for x in live.iter_mut() {
            *x = (*x * scale - m).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        live.iter_mut().for_each(|x| *x *= inv);
        masked.fill(0.0);
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dm = Dims::of(l1.dims(), l2.dims())?;
        let (q, k, v) = (
            slice(s1, l1, "attention")?,
            slice(s2, l2, "attention")?,
            slice(s3, l3, "attention")?,
        );
        let (t, d, rep) = (dm.t, dm.d, dm.h / dm.hkv);
        let scale = dm.scale();
        let mut o = vec![0f32; q.len()];
        o.par_chunks_mut(t * d).enumerate().for_each(|(bh, ob)| {
            let (b, h) = (bh / dm.h, bh % dm.h);
            let kv = (b * dm.hkv + h / rep) * t * d;
            let (kb, vb) = (&k[kv..kv + t * d], &v[kv..kv + t * d]);
            let qb = &q[bh * t * d..][..t * d];
            let mut p = vec![0f32; t * t];
            probs(qb, kb, t, d, scale, &mut p);
            matmul(t, d, t, ob, false, View::rows(&p, t), View::rows(vb, d));
        });
        Ok((CpuStorage::F32(o), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = Dims::of(q.dims(), k.dims())?;
        let (qh, kh, vh, oh, gh) = (host(q)?, host(k)?, host(v)?, host(o)?, host(grad)?);
        let (t, d, rep) = (dm.t, dm.d, dm.h / dm.hkv);
        let scale = dm.scale();
        let mut dq = vec![0f32; qh.len()];
        let mut dk = vec![0f32; kh.len()];
        let mut dv = vec![0f32; vh.len()];
        // One task per key/value head: it owns that head's dk and dv, and the dq of the query
        // heads that read it.
        let dq_groups: Vec<&mut [f32]> = dq.chunks_mut(rep * t * d).collect();
        dq_groups
            .into_par_iter()
            .zip(dk.par_chunks_mut(t * d))
            .zip(dv.par_chunks_mut(t * d))
            .enumerate()
            .for_each(|(g, ((dqg, dkb), dvb))| {
                let b = g / dm.hkv;
                let kvh = g % dm.hkv;
                let kb = &kh[g * t * d..][..t * d];
                let vb = &vh[g * t * d..][..t * d];
                let mut p = vec![0f32; t * t];
                let mut ds = vec![0f32; t * t];
                for r in 0..rep {
                    let bh = b * dm.h + kvh * rep + r;
                    let qb = &qh[bh * t * d..][..t * d];
                    let ob = &oh[bh * t * d..][..t * d];
                    let gb = &gh[bh * t * d..][..t * d];
                    let dqb = &mut dqg[r * t * d..][..t * d];
                    probs(qb, kb, t, d, scale, &mut p);
                    // dP = dO Vᵀ, then dS = P ∘ (dP − rowsum(dO ∘ O)) · scale.
                    matmul(t, t, d, &mut ds, false, View::rows(gb, d), View::t(vb, d));
                    for (i, (dsi, pi)) in ds.chunks_mut(t).zip(p.chunks(t)).enumerate() {
                        let di = dot(&gb[i * d..][..d], &ob[i * d..][..d]);
                        for (x, pj) in dsi.iter_mut().zip(pi) {
                            *x = pj * (*x - di) * scale;
                        }
                    }
                    // dV += Pᵀ dO, dQ = dS K, dK += dSᵀ Q.
                    matmul(t, d, t, dvb, true, View::t(&p, t), View::rows(gb, d));
                    matmul(t, d, t, dqb, false, View::rows(&ds, t), View::rows(kb, d));
                    matmul(t, d, t, dkb, true, View::t(&ds, t), View::rows(qb, d));
                }
            });
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// RMSNorm over the last dimension with a frozen weight, read to the host once (not at every
/// call: the op runs twice a layer a step).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    alpha: Arc<[f32]>,
    eps: f32,
}

impl RmsNorm {
    /// The norm with weight `alpha`.
    pub fn new(alpha: &Tensor, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            alpha: host(alpha)?.into(),
            eps: eps as f32,
        })
    }

    /// `x` normalised.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }

    fn inv_rms(&self, row: &[f32]) -> f32 {
        let ms = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "rms-norm")?;
        let d = self.alpha.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(yr, xr)| {
                let r = self.inv_rms(xr);
                for ((yi, xi), a) in yr.iter_mut().zip(xr).zip(self.alpha.iter()) {
                    *yi = xi * r * a;
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (xh, gh) = (host(x)?, host(grad)?);
        let d = self.alpha.len();
        let mut dx = vec![0f32; xh.len()];
        dx.par_chunks_mut(d)
            .zip(xh.par_chunks(d).zip(gh.par_chunks(d)))
            .for_each(|(dr, (xr, gr))| {
                let r = self.inv_rms(xr);
                // y = x r α with r = (mean x² + ε)^-½:  dx = r (g α) − x r³ (Σ g α x) / d.
                let s: f32 = gr
                    .iter()
                    .zip(xr)
                    .zip(self.alpha.iter())
                    .map(|((g, x), a)| g * a * x)
                    .sum();
                let c = r * r * r * s / d as f32;
                for (((di, g), xi), a) in dr.iter_mut().zip(gr).zip(xr).zip(self.alpha.iter()) {
                    *di = r * g * a - xi * c;
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Rotary embedding at positions 0..len, in halves (`neox`) or adjacent pairs, its tables read
/// to the host once (they are megabytes, and the op runs twice a layer a step).
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Arc<[f32]>,
    sin: Arc<[f32]>,
    neox: bool,
}

impl Rope {
    /// The rotation with tables `cos`/`sin` of (positions, dim / 2).
    pub fn new(cos: &Tensor, sin: &Tensor, neox: bool) -> Result<Rope> {
        Ok(Rope {
            cos: host(cos)?.into(),
            sin: host(sin)?.into(),
            neox,
        })
    }

    /// `x` (batch, heads, len, dim) rotated.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }

    /// Rotate every head row of `src` into `dst` by +θ (`sign` 1) or −θ (`sign` −1).
    fn rotate(&self, src: &[f32], dst: &mut [f32], dims: &[usize], sign: f32) {
        let (t, d) = (dims[2], dims[3]);
        let half = d / 2;
        dst.par_chunks_mut(t * d)
            .zip(src.par_chunks(t * d))
            .for_each(|(db, sb)| {
                for pos in 0..t {
                    let (c, s) = (
                        &self.cos[pos * half..][..half],
                        &self.sin[pos * half..][..half],
                    );
                    let (xr, yr) = (&sb[pos * d..][..d], &mut db[pos * d..][..d]);
                    for i in 0..half {
                        let (a, b) = if self.neox {
                            (i, i + half)
                        } else {
                            (2 * i, 2 * i + 1)
                        };
                        let (ci, si) = (c[i], sign * s[i]);
                        yr[a] = xr[a] * ci - xr[b] * si;
                        yr[b] = xr[a] * si + xr[b] * ci;
                    }
                }
            });
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "rope")?;
        let dims = l.dims();
        if dims.len() != 4 || dims[2] * dims[3] / 2 > self.cos.len() {
            candle_core::bail!("rope: {dims:?} does not fit the tables");
        }
        let mut y = vec![0f32; x.len()];
        self.rotate(x, &mut y, dims, 1.0);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // A rotation's transpose is the rotation back.
        let g = host(grad)?;
        let mut dx = vec![0f32; g.len()];
        self.rotate(&g, &mut dx, x.dims(), -1.0);
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
