//! A frozen base projection for training: `y = x Wᵀ` whose backward gives the input gradient
//! only, with the weights in their GGUF codes (4 or 8 bits a weight instead of 32, QLoRA-style).
//!
//! Why not candle's matmul: its backward always computes the weight's gradient too, even for a
//! weight nothing will update — as much work again as the input gradient, and a gradient tensor
//! the size of the model.
//!
//! Two ways to compute the products ([`BaseMath`], `train.base`):
//! - **quantized**: the integer kernel inference uses ([`qcpu`]), so a model trained through it
//!   computes exactly what the local backend will serve. The input gradient `dX = dY W` is
//!   `dY (Wᵀ)ᵀ`: the same kernel over `Wᵀ`, built once, on first use, on an 8-bit grid per 32
//!   (exact where `W`'s codes allow, and an error far below what a gradient's direction cares
//!   about elsewhere) — a second copy of the model in memory.
//! - **bf16**: the codes widened to bf16 a panel at a time, products on AMX tiles with f32 sums
//!   ([`tiles`]): what PyTorch computes for a bf16 model, several times faster than the integer
//!   kernel on a training step's large products, and no transposed copy.

use super::ops::{self, View};
use super::tiles;
use crate::model::infer::qcpu::{self, QActs, QWeights};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};

/// How the frozen base's products are computed (`train.base`; part of the train key: the
/// two give slightly different numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseMath {
    /// The integer kernel: weights' codes against activations on a ≈ 16-bit grid.
    Quantized,
    /// Codes widened to bf16, bf16 products summed in f32 (AMX tiles where the CPU has them).
    Bf16,
}

impl BaseMath {
    /// The fastest on this CPU: bf16 where it has AMX tiles, else the integer kernel (bf16
    /// without tiles is the slow reference).
    pub fn fastest() -> BaseMath {
        if tiles::available() {
            BaseMath::Bf16
        } else {
            BaseMath::Quantized
        }
    }

    /// `train.base`'s value: `auto` (or nothing) is [`BaseMath::fastest`].
    pub fn parse(s: Option<&str>) -> std::result::Result<BaseMath, String> {
        match s {
            None | Some("auto") => Ok(BaseMath::fastest()),
            Some("quantized") => Ok(BaseMath::Quantized),
            Some("bf16") => Ok(BaseMath::Bf16),
            Some(other) => Err(format!(
                "unknown base math {other:?}: use \"auto\", \"quantized\" or \"bf16\""
            )),
        }
    }
}

/// A frozen `(out, in)` weight.
#[derive(Debug)]
pub struct Frozen {
    w: Arc<QWeights>,
    wt: OnceLock<QWeights>,
    math: BaseMath,
    out: usize,
    inp: usize,
}

impl Frozen {
    /// Share inference's weights.
    pub fn new(w: Arc<QWeights>, math: BaseMath) -> Arc<Frozen> {
        let (out, inp) = w.shape();
        Arc::new(Frozen {
            w,
            wt: OnceLock::new(),
            math,
            out,
            inp,
        })
    }

    /// (out, in).
    pub fn shape(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    /// `x Wᵀ` for `x` of shape (…, in); differentiable in `x` only.
    pub fn forward(self: &Arc<Self>, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let rows = x.elem_count() / self.inp;
        let y = x
            .reshape((rows, self.inp))?
            .apply_op1(Forward(Arc::clone(self)))?;
        let mut out_dims = dims;
        *out_dims.last_mut().expect("a shape has a last dimension") = self.out;
        y.reshape(out_dims)
    }

    /// `Wᵀ`, quantised on first use.
    fn transposed(&self) -> &QWeights {
        self.wt.get_or_init(|| {
            let w = self.w.dequantize();
            let mut t = vec![0f32; w.len()];
            for (r, row) in w.chunks(self.inp).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    t[c * self.out + r] = *v;
                }
            }
            QWeights::from_f32(&t, self.inp, self.out)
        })
    }
}

impl Frozen {
    /// `x Wᵀ` on plain rows, by this weight's math.
    fn product(&self, x: &[f32], rows: usize) -> Vec<f32> {
        match self.math {
            BaseMath::Quantized => qcpu::matmul(&QActs::quantize(x, rows, self.inp), &self.w),
            BaseMath::Bf16 => tiles::forward(x, rows, &self.w),
        }
    }

    /// `dY W` on plain rows, by this weight's math.
    fn input_grad(&self, dy: &[f32], rows: usize) -> Vec<f32> {
        match self.math {
            BaseMath::Quantized => {
                qcpu::matmul(&QActs::quantize(dy, rows, self.out), self.transposed())
            }
            BaseMath::Bf16 => tiles::backward(dy, rows, &self.w),
        }
    }
}

/// `x Wᵀ + bias + scale · (x Aᵀ) Bᵀ` for `x` (…, in): a frozen projection with its LoRA
/// pair, one op (differentiable in `x`, `A` (rank, in) and `B` (out, rank)).
///
/// Why one op: composed, the projection is five tensors between six ops (base, `x Aᵀ`, `· Bᵀ`,
/// the scale, the sum, the bias), each kept for the backward, and candle's backward gives every
/// tensor that receives a gradient a zeroed buffer to add into: for a step of a thousand rows,
/// that zeroing and adding was a sixth of the time. Here `x` receives one gradient per
/// projection, and `x Aᵀ` (rows × rank, cheap) is recomputed.
pub fn lora_projection(
    x: &Tensor,
    w: &Arc<Frozen>,
    bias: Option<&Arc<[f32]>>,
    a: &Tensor,
    b: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let rows = x.elem_count() / w.inp;
    let y = x.reshape((rows, w.inp))?.contiguous()?.apply_op3(
        &a.contiguous()?,
        &b.contiguous()?,
        Lora {
            w: Arc::clone(w),
            bias: bias.cloned(),
            scale,
        },
    )?;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("a shape has a last dimension") = w.out;
    y.reshape(out_dims)
}

struct Lora {
    w: Arc<Frozen>,
    bias: Option<Arc<[f32]>>,
    scale: f32,
}

impl Lora {
    /// (rank, rows) of the operands, checked.
    fn dims(&self, x: &[usize], a: &[usize], b: &[usize]) -> Result<(usize, usize)> {
        match (x, a, b) {
            ([rows, i], [r, i2], [o, r2])
                if *i == self.w.inp && i2 == i && r2 == r && *o == self.w.out =>
            {
                Ok((*r, *rows))
            }
            _ => candle_core::bail!(
                "LoRA projection: x {x:?}, A {a:?}, B {b:?} for W {:?}",
                self.w.shape()
            ),
        }
    }
}

impl candle_core::CustomOp3 for Lora {
    fn name(&self) -> &'static str {
        "lora-projection"
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
        let (rank, rows) = self.dims(l1.dims(), l2.dims(), l3.dims())?;
        let (x, _) = rows_of(s1, l1, self.w.inp)?;
        let (a, _) = rows_of(s2, l2, self.w.inp)?;
        let (b, _) = rows_of(s3, l3, rank)?;
        let (inp, out) = (self.w.inp, self.w.out);
        let mut y = self.w.product(x, rows);
        if let Some(bias) = &self.bias {
            y.par_chunks_mut(out).for_each(|row| {
                row.iter_mut().zip(bias.iter()).for_each(|(v, b)| *v += b);
            });
        }
        let mut t = vec![0f32; rows * rank];
        ops::product(
            rows,
            rank,
            inp,
            &mut t,
            false,
            1.0,
            View::rows(x, inp),
            View::t(a, inp),
            true,
        );
        ops::product(
            rows,
            out,
            rank,
            &mut y,
            true,
            self.scale,
            View::rows(&t, rank),
            View::t(b, rank),
            true,
        );
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rank, rows) = self.dims(x.dims(), a.dims(), b.dims())?;
        let host = |t: &Tensor| t.contiguous()?.flatten_all()?.to_vec1::<f32>();
        let (xh, ah, bh, dy) = (host(x)?, host(a)?, host(b)?, host(grad)?);
        let (inp, out, s) = (self.w.inp, self.w.out, self.scale);
        // u = dY B (rows × rank), t = x Aᵀ (rows × rank).
        let mut u = vec![0f32; rows * rank];
        ops::product(
            rows,
            rank,
            out,
            &mut u,
            false,
            1.0,
            View::rows(&dy, out),
            View::rows(&bh, rank),
            true,
        );
        let mut t = vec![0f32; rows * rank];
        ops::product(
            rows,
            rank,
            inp,
            &mut t,
            false,
            1.0,
            View::rows(&xh, inp),
            View::t(&ah, inp),
            true,
        );
        // dx = dY W + s · u A; dA = s · uᵀ x; dB = s · dYᵀ t.
        let mut dx = self.w.input_grad(&dy, rows);
        ops::product(
            rows,
            inp,
            rank,
            &mut dx,
            true,
            s,
            View::rows(&u, rank),
            View::rows(&ah, inp),
            true,
        );
        let mut da = vec![0f32; rank * inp];
        ops::product(
            rank,
            inp,
            rows,
            &mut da,
            false,
            s,
            View::t(&u, rank),
            View::rows(&xh, inp),
            true,
        );
        let mut db = vec![0f32; out * rank];
        ops::product(
            out,
            rank,
            rows,
            &mut db,
            false,
            s,
            View::t(&dy, out),
            View::rows(&t, rank),
            true,
        );
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(da, a.shape(), dev)?),
            Some(Tensor::from_vec(db, b.shape(), dev)?),
        ))
    }
}

/// Rows of logits at a time in [`head_cross_entropy_sum`].
const HEAD_ROWS: usize = 256;

/// The summed cross-entropy of predicting `targets` (one per row) from the logits `h Headᵀ`,
/// as a scalar; differentiable in `h` (rows, hidden).
///
/// Why fused: the logits are rows × vocabulary (a thousand rows of SmolLM2's 49,152 are
/// 200 MB). As a tensor between two ops they stay alive until the backward, and the backward
/// allocates a zeroed gradient the same size and adds into it. Here they exist a chunk of
/// [`HEAD_ROWS`] rows at a time, in the forward and again (recomputed) in the backward, which
/// goes straight from the softmax's gradient to `h`'s.
pub fn head_cross_entropy_sum(h: &Tensor, head: &Arc<Frozen>, targets: &[u32]) -> Result<Tensor> {
    let (rows, hidden) = h.dims2()?;
    if rows != targets.len() || hidden != head.inp {
        candle_core::bail!(
            "cross-entropy: hidden rows {:?} for {} targets and a head of {:?}",
            h.dims(),
            targets.len(),
            head.shape()
        );
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= head.out) {
        candle_core::bail!(
            "cross-entropy: target {t} is outside the vocabulary of {}",
            head.out
        );
    }
    h.contiguous()?.apply_op1(HeadLoss {
        head: Arc::clone(head),
        targets: targets.to_vec(),
        lse: std::sync::Mutex::new(Vec::new()),
    })
}

struct HeadLoss {
    head: Arc<Frozen>,
    targets: Vec<u32>,
    /// Each row's (max, log Σ exp(x − max)), from the forward, for the backward.
    lse: std::sync::Mutex<Vec<(f32, f32)>>,
}

/// (max, log Σ exp(x − max)) of a row (the sum in f64).
fn lse(row: &[f32]) -> (f32, f32) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = row.iter().map(|x| (x - m).exp() as f64).sum();
    (m, s.ln() as f32)
}

impl CustomOp1 for HeadLoss {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let head = &self.head;
        let (h, rows) = rows_of(storage, layout, head.inp)?;
        let mut stats = Vec::with_capacity(rows);
        let mut per_row = Vec::with_capacity(rows);
        for (c, hc) in h.chunks(HEAD_ROWS * head.inp).enumerate() {
            let n = hc.len() / head.inp;
            let logits = head.product(hc, n);
            let targets = &self.targets[c * HEAD_ROWS..][..n];
            let chunk: Vec<((f32, f32), f64)> = logits
                .par_chunks(head.out)
                .zip(targets.par_iter())
                .map(|(row, &t)| {
                    let (m, l) = lse(row);
                    ((m, l), (m + l - row[t as usize]) as f64)
                })
                .collect();
            for (st, loss) in chunk {
                stats.push(st);
                per_row.push(loss);
            }
        }
        // Summed in row order: a parallel sum's order (and so its last bit) would depend on
        // the thread pool, and a resumed run must log the same losses.
        let total: f64 = per_row.iter().sum();
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(&self, h: &Tensor, _loss: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_scalar::<f32>()?;
        let head = &self.head;
        let hh = h.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let stats = std::mem::take(&mut *self.lse.lock().unwrap_or_else(|e| e.into_inner()));
        let rows = hh.len() / head.inp;
        let stats = if stats.len() == rows {
            stats
        } else {
            // Not from this op's forward (a second backward): recompute.
            hh.chunks(HEAD_ROWS * head.inp)
                .flat_map(|hc| {
                    let logits = head.product(hc, hc.len() / head.inp);
                    logits.par_chunks(head.out).map(lse).collect::<Vec<_>>()
                })
                .collect()
        };
        let mut dh = Vec::with_capacity(hh.len());
        for (c, hc) in hh.chunks(HEAD_ROWS * head.inp).enumerate() {
            let n = hc.len() / head.inp;
            let mut d = head.product(hc, n);
            let (targets, st) = (
                &self.targets[c * HEAD_ROWS..][..n],
                &stats[c * HEAD_ROWS..][..n],
            );
            d.par_chunks_mut(head.out)
                .zip(targets.par_iter().zip(st.par_iter()))
                .for_each(|(row, (&t, &(m, l)))| {
                    for x in row.iter_mut() {
                        *x = g * (*x - m - l).exp();
                    }
                    row[t as usize] -= g;
                });
            dh.extend(head.input_grad(&d, n));
        }
        Ok(Some(Tensor::from_vec(dh, h.shape(), h.device())?))
    }
}

/// The rows of a contiguous f32 CPU tensor.
fn rows_of<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    cols: usize,
) -> Result<(&'a [f32], usize)> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("a frozen projection takes f32 input");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("a frozen projection takes contiguous input");
    };
    let x = &data[start..end];
    Ok((x, x.len() / cols))
}

/// `x Wᵀ`.
struct Forward(Arc<Frozen>);

impl CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let f = &self.0;
        let (x, rows) = rows_of(storage, layout, f.inp)?;
        let y = f.product(x, rows);
        Ok((CpuStorage::F32(y), Shape::from((rows, f.out))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(grad.apply_op1_no_bwd(&Backward(Arc::clone(&self.0)))?))
    }
}

/// `dY W`, the input gradient.
struct Backward(Arc<Frozen>);

impl CustomOp1 for Backward {
    fn name(&self) -> &'static str {
        "frozen-linear-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let f = &self.0;
        let (dy, rows) = rows_of(storage, layout, f.out)?;
        let dx = f.input_grad(dy, rows);
        Ok((CpuStorage::F32(dx), Shape::from((rows, f.inp))))
    }
}
