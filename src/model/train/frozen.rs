//! A frozen base projection for training: `y = x Wᵀ` through the same integer kernel inference
//! uses ([`qcpu`]), whose backward gives the input gradient only.
//!
//! Why not candle's matmul: its backward always computes the weight's gradient too, even for a
//! weight nothing will update — as much work again as the input gradient, and a gradient tensor
//! the size of the model. Why the integer kernel: the base stays in its GGUF codes (4 or 8
//! bits a weight instead of 32, QLoRA-style), it is the fastest matmul we have on these CPUs,
//! and a model trained through it computes exactly what the local backend will serve.
//!
//! The input gradient `dX = dY W` is `dY (Wᵀ)ᵀ`: the same kernel over `Wᵀ`, which is built once,
//! on first use, on an 8-bit grid per 32 (exact where `W`'s codes allow, and an error far below
//! what a gradient's direction cares about elsewhere).

use crate::model::infer::qcpu::{self, QActs, QWeights};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::{Arc, OnceLock};

/// A frozen `(out, in)` weight.
#[derive(Debug)]
pub struct Frozen {
    w: Arc<QWeights>,
    wt: OnceLock<QWeights>,
    out: usize,
    inp: usize,
}

impl Frozen {
    /// Share inference's weights.
    pub fn new(w: Arc<QWeights>) -> Arc<Frozen> {
        let (out, inp) = w.shape();
        Arc::new(Frozen {
            w,
            wt: OnceLock::new(),
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
        let y = qcpu::matmul(&QActs::quantize(x, rows, f.inp), &f.w);
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
        let dx = qcpu::matmul(&QActs::quantize(dy, rows, f.out), f.transposed());
        Ok((CpuStorage::F32(dx), Shape::from((rows, f.inp))))
    }
}
