//! Fused training ops with their own backward, in plain Rust on the CPU: causal attention,
//! RMSNorm, rotary embedding and cross-entropy.
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

#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
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

/// Softmax probabilities of query row `i` over keys `0..=i`, into `p`.
fn probs(qi: &[f32], k: &[f32], i: usize, d: usize, scale: f32, p: &mut [f32]) {
    let mut m = f32::NEG_INFINITY;
    for (j, pj) in p.iter_mut().enumerate().take(i + 1) {
        *pj = dot(qi, &k[j * d..][..d]) * scale;
        m = m.max(*pj);
    }
    let mut sum = 0f32;
    for pj in p.iter_mut().take(i + 1) {
        *pj = (*pj - m).exp();
        sum += *pj;
    }
    let inv = 1.0 / sum;
    p.iter_mut().take(i + 1).for_each(|x| *x *= inv);
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
            let mut p = vec![0f32; t];
            for i in 0..t {
                probs(&qb[i * d..][..d], kb, i, d, scale, &mut p);
                let oi = &mut ob[i * d..][..d];
                for (j, pj) in p.iter().enumerate().take(i + 1) {
                    axpy(oi, *pj, &vb[j * d..][..d]);
                }
            }
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
                let mut p = vec![0f32; t];
                let mut ds = vec![0f32; t];
                for r in 0..rep {
                    let bh = b * dm.h + kvh * rep + r;
                    let qb = &qh[bh * t * d..][..t * d];
                    let ob = &oh[bh * t * d..][..t * d];
                    let gb = &gh[bh * t * d..][..t * d];
                    let dqb = &mut dqg[r * t * d..][..t * d];
                    for i in 0..t {
                        let qi = &qb[i * d..][..d];
                        let gi = &gb[i * d..][..d];
                        probs(qi, kb, i, d, scale, &mut p);
                        let di = dot(gi, &ob[i * d..][..d]);
                        for j in 0..=i {
                            let vj = &vb[j * d..][..d];
                            ds[j] = p[j] * (dot(gi, vj) - di) * scale;
                            axpy(&mut dvb[j * d..][..d], p[j], gi);
                        }
                        let dqi = &mut dqb[i * d..][..d];
                        for j in 0..=i {
                            axpy(dqi, ds[j], &kb[j * d..][..d]);
                            axpy(&mut dkb[j * d..][..d], ds[j], qi);
                        }
                    }
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

/// The summed cross-entropy of `logits` (rows, vocab) against `targets` (one per row), as a
/// scalar; the backward recomputes the softmax instead of keeping it.
pub fn cross_entropy_sum(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    logits.contiguous()?.apply_op1(CrossEntropy {
        targets: targets.to_vec(),
    })
}

struct CrossEntropy {
    targets: Vec<u32>,
}

/// (max, log Σ exp(x − max)) of a row.
fn lse(row: &[f32]) -> (f32, f32) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = row.iter().map(|x| ((x - m) as f64).exp()).sum();
    (m, s.ln() as f32)
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "cross-entropy")?;
        let dims = l.dims();
        let (rows, vocab) = match dims {
            [r, v] if *r == self.targets.len() => (*r, *v),
            _ => candle_core::bail!(
                "cross-entropy: logits {dims:?} for {} targets",
                self.targets.len()
            ),
        };
        let _ = rows;
        if let Some(t) = self.targets.iter().find(|&&t| t as usize >= vocab) {
            candle_core::bail!("cross-entropy: target {t} is outside the vocabulary of {vocab}");
        }
        // Rows in parallel, summed in order: a parallel sum's order (and so its last bit)
        // would depend on the thread pool, and a resumed run must log the same losses.
        let per_row: Vec<f64> = x
            .par_chunks(vocab)
            .zip(self.targets.par_iter())
            .map(|(row, &tg)| {
                let (m, l) = lse(row);
                (m + l - row[tg as usize]) as f64
            })
            .collect();
        let total: f64 = per_row.iter().sum();
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_scalar::<f32>()?;
        let xh = host(x)?;
        let vocab = x.dims()[1];
        let mut dx = vec![0f32; xh.len()];
        dx.par_chunks_mut(vocab)
            .zip(xh.par_chunks(vocab).zip(self.targets.par_iter()))
            .for_each(|(dr, (row, &tg))| {
                let (m, l) = lse(row);
                for (d, x) in dr.iter_mut().zip(row) {
                    *d = g * (x - m - l).exp();
                }
                dr[tg as usize] -= g;
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
