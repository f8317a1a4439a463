//! A decoder-only transformer of the llama family (llama, qwen2), written for serving several
//! sequences at once.
//!
//! Why our own and not candle-transformers' `quantized_llama` / `quantized_qwen2`: those keep
//! one KV cache inside the weights and take one batch of equal-length rows, so concurrent
//! trials could only take turns. Here the weights are shared and immutable, each sequence owns
//! a [`SeqCache`], and one [`Transformer::forward`] takes any mix of sequences — a prompt being
//! read next to others generating their next token — as one matrix of rows. Every projection
//! (q, k, v, o, gate, up, down, the output head) is then one matmul over all the rows, so the
//! weights are read from memory once per step whatever the number of sequences; only attention,
//! which depends on each sequence's own cache, runs sequence by sequence.
//!
//! The other reason is LoRA: each projection is a [`Linear`] that can carry an adapter,
//! applied unmerged (`W x + scale · B A x`) so the base weights stay quantised and shared.

use super::attention::{self, Heads, HostKv};
use super::qcpu::{self, QActs, QWeights};
pub use crate::model::config::{Config, Proj};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// A LoRA pair on one projection: `y += scale · B (A x)`.
#[derive(Debug, Clone)]
pub struct Lora {
    /// `A`, (rank, in), f32.
    pub a: Tensor,
    /// `B`, (out, rank), f32.
    pub b: Tensor,
    /// `alpha / rank` (PEFT) or the adapter GGUF's equivalent, times the user's scale.
    pub scale: f64,
}

/// A projection's weights, in the form that runs fastest where they live.
#[derive(Debug, Clone)]
enum Weight {
    /// On the CPU: 4- or 8-bit codes with a scale and offset per 32, multiplied in integers —
    /// see [`qcpu`] for why.
    Cpu(Arc<QWeights>),
    /// Elsewhere (CUDA): candle's quantised (or dense) matmul.
    Candle(QMatMul),
}

/// One projection: its weights, an optional bias (qwen2's q/k/v), an optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    w: Weight,
    bias: Option<Tensor>,
    lora: Option<Lora>,
    out: usize,
    inp: usize,
}

impl Linear {
    /// A projection from a quantised tensor of shape (out, in).
    pub fn new(w: Arc<QTensor>, bias: Option<Tensor>) -> Result<Linear> {
        let (out, inp) = w.shape().dims2()?;
        let w = match w.device() {
            Device::Cpu => {
                let q = match QWeights::from_gguf(w.dtype(), &w.data()?, out, inp) {
                    Some(q) => q,
                    None => {
                        let t = w.dequantize(&Device::Cpu)?.flatten_all()?;
                        QWeights::from_f32(&t.to_vec1::<f32>()?, out, inp)
                    }
                };
                Weight::Cpu(Arc::new(q))
            }
            _ => Weight::Candle(QMatMul::from_arc(w)?),
        };
        Ok(Linear {
            w,
            bias,
            lora: None,
            out,
            inp,
        })
    }

    /// A projection from a dense tensor of shape (out, in) (a Hugging Face checkpoint).
    pub fn dense(w: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        let (out, inp) = w.dims2()?;
        let w = match w.device() {
            Device::Cpu => {
                let t = w.to_dtype(DType::F32)?.flatten_all()?;
                Weight::Cpu(Arc::new(QWeights::from_f32(&t.to_vec1::<f32>()?, out, inp)))
            }
            _ => Weight::Candle(QMatMul::Tensor(w.to_dtype(DType::F32)?)),
        };
        Ok(Linear {
            w,
            bias,
            lora: None,
            out,
            inp,
        })
    }

    /// (out, in).
    pub fn shape(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    /// The weights the CPU kernel runs (what training shares), when the projection lives on
    /// the CPU.
    pub fn cpu_weights(&self) -> Option<&Arc<QWeights>> {
        match &self.w {
            Weight::Cpu(w) => Some(w),
            Weight::Candle(_) => None,
        }
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The adapter on this projection, if any.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// Put `lora` on this projection, checking its shapes.
    pub fn set_lora(&mut self, lora: Lora) -> Result<()> {
        let (r, inp) = lora.a.dims2()?;
        let (out, r2) = lora.b.dims2()?;
        if inp != self.inp || out != self.out || r != r2 {
            candle_core::bail!(
                "LoRA shapes A {:?} and B {:?} do not fit a projection of (out {}, in {})",
                lora.a.dims(),
                lora.b.dims(),
                self.out,
                self.inp
            );
        }
        self.lora = Some(Lora {
            a: lora.a.to_dtype(DType::F32)?,
            b: lora.b.to_dtype(DType::F32)?,
            scale: lora.scale,
        });
        Ok(())
    }

    /// The base projection alone (no bias, no adapter), for rows `x` of shape (n, in).
    pub fn base(&self, x: &Tensor) -> Result<Tensor> {
        self.base_q(x, &mut None)
    }

    /// [`Linear::base`], with the rows' quantised form computed at most once into `xq` and
    /// shared by the projections that read the same rows.
    fn base_q(&self, x: &Tensor, xq: &mut Option<QActs>) -> Result<Tensor> {
        match &self.w {
            Weight::Candle(w) => w.forward(x),
            Weight::Cpu(w) => {
                let (m, _) = x.dims2()?;
                if xq.is_none() {
                    let xs = x.flatten_all()?.to_vec1::<f32>()?;
                    *xq = Some(QActs::quantize(&xs, m, self.inp));
                }
                let xq = xq.as_ref().expect("quantised just above");
                Tensor::from_vec(qcpu::matmul(xq, w), (m, self.out), x.device())
            }
        }
    }

    /// `W x (+ bias) (+ scale · B A x)` for rows `x` of shape (n, in).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [y] = Linear::forward_all([self], x)?;
        Ok(y)
    }

    /// Several projections of the same rows `x` (q, k and v; gate and up), which on the CPU
    /// quantise the rows once.
    pub fn forward_all<const N: usize>(lins: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        let mut xq = None;
        let mut out = Vec::with_capacity(N);
        for lin in lins {
            let mut y = lin.base_q(x, &mut xq)?;
            if let Some(b) = &lin.bias {
                y = y.broadcast_add(b)?;
            }
            if let Some(l) = &lin.lora {
                let d = x.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?;
                y = (y + (d * l.scale)?)?;
            }
            out.push(y);
        }
        Ok(out.try_into().expect("one output a projection"))
    }
}

/// One block's weights.
#[derive(Debug, Clone)]
pub struct Block {
    /// RMSNorm weight before attention.
    pub attn_norm: Tensor,
    /// The seven projections, in [`Proj::ALL`] order.
    pub proj: [Linear; 7],
    /// RMSNorm weight before the MLP.
    pub ffn_norm: Tensor,
}

impl Block {
    /// The projection `p`.
    pub fn proj(&self, p: Proj) -> &Linear {
        &self.proj[p as usize]
    }

    /// The projection `p`, to put an adapter on.
    pub fn proj_mut(&mut self, p: Proj) -> &mut Linear {
        &mut self.proj[p as usize]
    }
}

/// One sequence's keys and values, layer by layer.
///
/// Not `Clone`: a copy would share the buffers that the next step writes.
#[derive(Debug, Default)]
pub struct SeqCache {
    kv: Vec<LayerKv>,
    len: usize,
}

/// One layer's cache: on the CPU a growing host buffer (see [`attention`]); elsewhere
/// device buffers of shape (1, kv heads, capacity, head dim), written in place and grown by
/// doubling, so that appending a token copies one token's worth, not the whole cache.
#[derive(Debug)]
enum LayerKv {
    Host(HostKv),
    Device(Tensor, Tensor),
}

/// Positions a device cache has room for at first.
const CACHE_START: usize = 256;

/// Append `new` (1, heads, n, hd) after the first `used` positions of `buf` (growing it by
/// doubling when full) and return the buffer and a view of its `used + n` positions.
fn append_kv(buf: Option<&Tensor>, new: &Tensor, used: usize) -> Result<(Tensor, Tensor)> {
    let (b, heads, n, hd) = new.dims4()?;
    let need = used + n;
    let buf = match buf {
        Some(buf) if buf.dims()[2] >= need => buf.clone(),
        old => {
            let cap = need.max(CACHE_START).next_power_of_two();
            let grown = Tensor::zeros((b, heads, cap, hd), new.dtype(), new.device())?;
            if let Some(old) = old
                && used > 0
            {
                grown.slice_set(&old.narrow(2, 0, used)?.contiguous()?, 2, 0)?;
            }
            grown
        }
    };
    buf.slice_set(&new.contiguous()?, 2, used)?;
    let view = buf.narrow(2, 0, need)?;
    Ok((buf, view))
}

impl SeqCache {
    /// Positions already read.
    pub fn len(&self) -> usize {
        self.len
    }

    /// A copy of the first `n` positions (`n` ≤ [`len`](Self::len)), to start another
    /// sequence that shares them; `None` for a device cache (not kept for reuse).
    pub fn prefix(&self, n: usize) -> Option<SeqCache> {
        if n > self.len {
            return None;
        }
        let mut kv = Vec::with_capacity(self.kv.len());
        for layer in &self.kv {
            let LayerKv::Host(h) = layer else {
                return None;
            };
            let keep = h.k.len() / self.len * n; // keys and values are the same size
            kv.push(LayerKv::Host(HostKv {
                k: h.k[..keep].to_vec(),
                v: h.v[..keep].to_vec(),
            }));
        }
        Some(SeqCache { kv, len: n })
    }

    /// Keep only the first `n` positions; false (and nothing changed) for a device cache.
    pub fn truncate(&mut self, n: usize) -> bool {
        if n > self.len || self.kv.iter().any(|l| matches!(l, LayerKv::Device(..))) {
            return false;
        }
        for layer in &mut self.kv {
            if let LayerKv::Host(h) = layer {
                let keep = h.k.len() / self.len * n;
                for buf in [&mut h.k, &mut h.v] {
                    buf.truncate(keep);
                    buf.shrink_to_fit();
                }
            }
        }
        self.len = n;
        true
    }

    /// Nothing read yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a layer's attention reads: the layer, the step's projected rows, each sequence's
/// (row offset, new tokens, cached positions) and causal mask.
#[derive(Clone, Copy)]
struct LayerIn<'a> {
    li: usize,
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    spans: &'a [(usize, usize, usize)],
    masks: &'a [Option<Tensor>],
}

/// One sequence's part of a [`Transformer::forward`]: the tokens to read next, and its cache.
pub struct Step<'a> {
    /// Tokens to read (the whole prompt at first, then one generated token at a time).
    pub tokens: &'a [u32],
    /// The sequence's cache, extended by the step.
    pub cache: &'a mut SeqCache,
}

/// The model: shared, immutable weights.
#[derive(Debug, Clone)]
pub struct Transformer {
    /// Its shape.
    pub config: Config,
    /// Token embeddings, (vocab, hidden), f32.
    pub embed: Tensor,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// The final RMSNorm's weight.
    pub norm: Tensor,
    /// The output head, (vocab, hidden).
    pub head: Linear,
    cos: Tensor,
    sin: Tensor,
    /// The rotary tables on the host, (max_seq, head_dim / 2), for [`attention`].
    cos_host: Vec<f32>,
    sin_host: Vec<f32>,
    /// Attention through [`attention`] (the CPU); else through candle ops on device
    /// buffers (a GPU — and the tests, which check one against the other on the CPU).
    host_attention: bool,
    device: Device,
}

impl Transformer {
    /// Assemble a model; the rotary tables are computed here.
    pub fn new(
        config: Config,
        embed: Tensor,
        blocks: Vec<Block>,
        norm: Tensor,
        head: Linear,
    ) -> Result<Transformer> {
        let device = embed.device().clone();
        let half = config.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| {
                1.0 / config
                    .rope_theta
                    .powf(2.0 * i as f32 / config.head_dim as f32)
            })
            .collect();
        let inv = Tensor::from_vec(inv, (1, half), &device)?;
        let pos = Tensor::arange(0u32, config.max_seq as u32, &device)?
            .to_dtype(DType::F32)?
            .reshape((config.max_seq, 1))?;
        let angles = pos.matmul(&inv)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let (cos_host, sin_host) = match device.is_cpu() {
            true => (cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?),
            false => (Vec::new(), Vec::new()),
        };
        Ok(Transformer {
            cos,
            sin,
            host_attention: device.is_cpu(),
            cos_host,
            sin_host,
            config,
            embed: embed.to_dtype(DType::F32)?,
            blocks,
            norm,
            head,
            device,
        })
    }

    /// Where the model runs.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The rotary tables (cos, sin), each (max_seq, head_dim / 2): what training rotates with.
    pub fn rotary(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    fn rope(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (_, _, len, _) = x.dims4()?;
        let cos = self.cos.narrow(0, pos, len)?;
        let sin = self.sin.narrow(0, pos, len)?;
        if self.config.rope_neox {
            candle_nn::rotary_emb::rope(x, &cos, &sin)
        } else {
            candle_nn::rotary_emb::rope_i(x, &cos, &sin)
        }
    }

    /// Attention of one sequence's `len` new queries over its whole cache, `mask` (from
    /// [`forward`](Self::forward)) keeping it causal.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let c = &self.config;
        let (_, _, len, hd) = q.dims4()?;
        let kv_len = k.dims()[2];
        let group = c.n_head / c.n_kv_head;
        // Grouped-query attention without copying keys: the `group` query heads that share a
        // key head become rows of one matrix against it.
        let q = q.reshape((c.n_kv_head, group * len, hd))?;
        let k = k.squeeze(0)?;
        let v = v.squeeze(0)?;
        let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let att = match mask {
            Some(mask) => att
                .reshape((c.n_kv_head, group, len, kv_len))?
                .broadcast_add(mask)?
                .reshape((c.n_kv_head, group * len, kv_len))?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        att.matmul(&v)?
            .reshape((c.n_head, len, hd))?
            .transpose(0, 1)?
            .reshape((len, c.n_head * hd))
    }

    /// One sequence's queries and keys or values as (1, heads, len, hd).
    fn heads(&self, t: &Tensor, off: usize, len: usize, nh: usize) -> Result<Tensor> {
        t.narrow(0, off, len)?
            .reshape((len, nh, self.config.head_dim))?
            .transpose(0, 1)?
            .contiguous()?
            .unsqueeze(0)
    }

    /// Attention on a GPU: every sequence through candle, its cache in device buffers.
    fn attention_device(&self, x: &LayerIn<'_>, steps: &mut [Step<'_>]) -> Result<Tensor> {
        let (li, q, k, v, spans, masks) = (x.li, x.q, x.k, x.v, x.spans, x.masks);
        let c = &self.config;
        let mut outs = Vec::with_capacity(steps.len());
        for ((&(off, len, pos), step), mask) in spans.iter().zip(steps.iter_mut()).zip(masks) {
            let qs = self.rope(&self.heads(q, off, len, c.n_head)?, pos)?;
            let ks = self.rope(&self.heads(k, off, len, c.n_kv_head)?, pos)?;
            let vs = self.heads(v, off, len, c.n_kv_head)?;
            let cache = &mut step.cache.kv;
            let old = match cache.get(li) {
                Some(LayerKv::Device(k, v)) => Some((k, v)),
                Some(LayerKv::Host(_)) => candle_core::bail!("a host cache on a device"),
                None => None,
            };
            let (kb, kc) = append_kv(old.map(|(k, _)| k), &ks, pos)?;
            let (vb, vc) = append_kv(old.map(|(_, v)| v), &vs, pos)?;
            outs.push(self.attend(&qs, &kc, &vc, mask.as_ref())?);
            let layer = LayerKv::Device(kb, vb);
            if li < cache.len() {
                cache[li] = layer;
            } else {
                cache.push(layer);
            }
        }
        if outs.len() == 1 {
            Ok(outs.pop().expect("one output"))
        } else {
            Tensor::cat(&outs, 0)
        }
    }

    /// Attention on the CPU: caches are host buffers; a single new token attends in plain
    /// Rust ([`attention`]), a prompt's tokens through candle's gemm.
    fn attention_host(&self, x: &LayerIn<'_>, steps: &mut [Step<'_>]) -> Result<Tensor> {
        let (li, q, k, v, spans, masks) = (x.li, x.q, x.k, x.v, x.spans, x.masks);
        let c = &self.config;
        let h = Heads {
            n_head: c.n_head,
            n_kv: c.n_kv_head,
            hd: c.head_dim,
        };
        let (qw, kw) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        let rows = q.dims2()?.0;
        let mut qh: Vec<f32> = q.flatten_all()?.to_vec1()?;
        let mut kh: Vec<f32> = k.flatten_all()?.to_vec1()?;
        let vh: Vec<f32> = v.flatten_all()?.to_vec1()?;
        let mut out = vec![0f32; rows * qw];
        let half = c.head_dim / 2;
        for ((&(off, len, pos), step), mask) in spans.iter().zip(steps.iter_mut()).zip(masks) {
            let cache = &mut step.cache.kv;
            if li == cache.len() {
                cache.push(LayerKv::Host(HostKv::default()));
            }
            let LayerKv::Host(kv) = &mut cache[li] else {
                candle_core::bail!("a device cache on the CPU");
            };
            if len == 1 {
                let (cos, sin) = (
                    &self.cos_host[pos * half..][..half],
                    &self.sin_host[pos * half..][..half],
                );
                let qr = &mut qh[off * qw..][..qw];
                attention::rope(qr, c.head_dim, cos, sin, c.rope_neox);
                let kr = &mut kh[off * kw..][..kw];
                attention::rope(kr, c.head_dim, cos, sin, c.rope_neox);
                kv.k.extend_from_slice(kr);
                kv.v.extend_from_slice(&vh[off * kw..][..kw]);
                continue; // attends below, with the other new tokens
            }
            let qs = self.rope(&self.heads(q, off, len, c.n_head)?, pos)?;
            let ks = self.rope(&self.heads(k, off, len, c.n_kv_head)?, pos)?;
            // Position-major onto the host buffer, then the whole cache back as (1, h, t, hd).
            let ks: Vec<f32> = ks.squeeze(0)?.transpose(0, 1)?.flatten_all()?.to_vec1()?;
            kv.k.extend_from_slice(&ks);
            kv.v.extend_from_slice(&vh[off * kw..][..len * kw]);
            let all = |b: &[f32]| -> Result<Tensor> {
                Tensor::from_slice(
                    &b[..(pos + len) * kw],
                    (pos + len, c.n_kv_head, c.head_dim),
                    &self.device,
                )?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)
            };
            let a = self.attend(&qs, &all(&kv.k)?, &all(&kv.v)?, mask.as_ref())?;
            let a: Vec<f32> = a.flatten_all()?.to_vec1()?;
            out[off * qw..][..len * qw].copy_from_slice(&a);
        }
        // The new tokens' attention, sequences side by side on the thread pool.
        let new: Vec<(usize, usize, &HostKv)> = spans
            .iter()
            .zip(steps.iter())
            .filter(|((_, len, _), _)| *len == 1)
            .filter_map(|(&(off, _, pos), step)| match step.cache.kv.get(li) {
                Some(LayerKv::Host(kv)) => Some((off, pos, kv)),
                _ => None,
            })
            .collect();
        let one = |&(off, pos, kv): &(usize, usize, &HostKv)| {
            let mut o = vec![0f32; qw];
            attention::attend(&qh[off * qw..][..qw], kv, pos + 1, h, &mut o);
            (off, o)
        };
        let done: Vec<(usize, Vec<f32>)> = match new.len() {
            0 | 1 => new.iter().map(one).collect(),
            _ => new.par_iter().map(one).collect(),
        };
        for (off, o) in done {
            out[off * qw..][..qw].copy_from_slice(&o);
        }
        Tensor::from_vec(out, (rows, qw), &self.device)
    }

    /// Read each step's tokens into its sequence and return, for each step, the logits (f32)
    /// for the token after its last one: shape (steps, vocab).
    ///
    /// A row's result does not depend on which other rows share the step, up to the
    /// rounding of the matmul kernel chosen for the step's total number of rows.
    pub fn forward(&self, steps: &mut [Step<'_>]) -> Result<Tensor> {
        let c = &self.config;
        let mut ids = Vec::new();
        let mut spans = Vec::with_capacity(steps.len());
        for s in steps.iter() {
            if s.tokens.is_empty() {
                candle_core::bail!("a step with no tokens");
            }
            if s.cache.len + s.tokens.len() > c.max_seq {
                candle_core::bail!(
                    "{} positions exceed the model's {}",
                    s.cache.len + s.tokens.len(),
                    c.max_seq
                );
            }
            spans.push((ids.len(), s.tokens.len(), s.cache.len));
            ids.extend_from_slice(s.tokens);
        }
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        // Each sequence's causal mask over its whole cache, the same in every layer (none for a
        // single new token, which sees everything).
        let masks: Vec<Option<Tensor>> = spans
            .iter()
            .map(|&(_, len, pos)| {
                if len == 1 {
                    return Ok(None);
                }
                let mask: Vec<f32> = (0..len)
                    .flat_map(|i| {
                        (0..pos + len)
                            .map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                    })
                    .collect();
                Tensor::from_vec(mask, (len, pos + len), &self.device).map(Some)
            })
            .collect::<Result<_>>()?;
        for (li, block) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, c.eps as f32)?;
            let [q, k, v] = Linear::forward_all(
                [
                    block.proj(Proj::Q),
                    block.proj(Proj::K),
                    block.proj(Proj::V),
                ],
                &h,
            )?;
            let x_in = LayerIn {
                li,
                q: &q,
                k: &k,
                v: &v,
                spans: &spans,
                masks: &masks,
            };
            let a = if self.host_attention {
                self.attention_host(&x_in, steps)?
            } else {
                self.attention_device(&x_in, steps)?
            };
            x = (x + block.proj(Proj::O).forward(&a)?)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, c.eps as f32)?;
            let [g, u] = Linear::forward_all([block.proj(Proj::Gate), block.proj(Proj::Up)], &h)?;
            let m = (candle_nn::ops::silu(&g)? * u)?;
            x = (x + block.proj(Proj::Down).forward(&m)?)?;
        }
        for (&(_, len, _), step) in spans.iter().zip(steps.iter_mut()) {
            step.cache.len += len;
        }
        let last: Vec<u32> = spans
            .iter()
            .map(|&(off, len, _)| (off + len - 1) as u32)
            .collect();
        let last = Tensor::from_vec(last, spans.len(), &self.device)?;
        let x = x.index_select(&last, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.norm, c.eps as f32)?;
        self.head.forward(&x)?.to_dtype(DType::F32)
    }

    /// The logits of a single step (vocab,), on the CPU.
    pub fn forward_one(&self, tokens: &[u32], cache: &mut SeqCache) -> Result<Vec<f32>> {
        let logits = self.forward(&mut [Step { tokens, cache }])?;
        logits.squeeze(0)?.to_device(&Device::Cpu)?.to_vec1()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random two-block model with grouped heads.
    fn tiny(neox: bool) -> Transformer {
        let dev = Device::Cpu;
        let config = Config {
            n_layer: 2,
            n_head: 4,
            n_kv_head: 2,
            head_dim: 16,
            hidden: 64,
            eps: 1e-5,
            rope_theta: 10_000.0,
            rope_neox: neox,
            max_seq: 512,
        };
        let r = |shape: (usize, usize)| Tensor::randn(0f32, 0.2, shape, &dev).unwrap();
        let dense = |out: usize, inp: usize| Linear::dense(r((out, inp)), None).unwrap();
        let ones = Tensor::ones(64, DType::F32, &dev).unwrap();
        let blocks = (0..2)
            .map(|_| Block {
                attn_norm: ones.clone(),
                proj: [
                    dense(64, 64),
                    dense(32, 64),
                    dense(32, 64),
                    dense(64, 64),
                    dense(96, 64),
                    dense(96, 64),
                    dense(64, 96),
                ],
                ffn_norm: ones.clone(),
            })
            .collect();
        Transformer::new(config, r((50, 64)), blocks, ones, dense(50, 64)).unwrap()
    }

    /// The CPU's attention (host cache, plain-Rust decoding) and the GPU's (device buffers
    /// grown in place, candle ops) give the same logits, for a prompt and the tokens after
    /// it, past the buffers' first capacity — on both rotary layouts.
    #[test]
    fn host_and_device_attention_agree() {
        for neox in [true, false] {
            let mut m = tiny(neox);
            let prompt: Vec<u32> = (0..40).map(|i| (i * 7 % 50) as u32).collect();
            let mut run = |host: bool| {
                m.host_attention = host;
                let mut cache = SeqCache::default();
                let mut all = m.forward_one(&prompt, &mut cache).unwrap();
                for t in 0..CACHE_START {
                    all.extend(m.forward_one(&[(t % 50) as u32], &mut cache).unwrap());
                }
                all
            };
            let (host, device) = (run(true), run(false));
            let worst = host
                .iter()
                .zip(&device)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // The prompt's logits agree exactly; after it, the two orders of f32 operations
            // differ by rounding, which the activations' quantisation can carry a step further
            // (seen: 2e-3 on logits of magnitude 3 to 5, not growing with the position). A
            // wrong position or a lost token moves logits by whole units.
            assert!(
                host[..50] == device[..50],
                "rope_neox {neox}: the prompt's logits"
            );
            assert!(worst < 5e-3, "rope_neox {neox}: logits differ by {worst}");
        }
    }
}
