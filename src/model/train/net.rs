//! The trainable model: the transformer inference runs, rewritten with differentiable candle
//! ops only, with LoRA on the seven projections of every block exactly as PEFT defines it.
//!
//! A trap avoided on purpose (candle 0.11): `ops::rms_norm`, `ops::softmax_last_dim` and
//! `rotary_emb::rope` have no backward and stop gradients *silently*. Here RMSNorm, rotation,
//! causal attention and the cross-entropy are our own fused ops with their backward
//! ([`super::ops`]); the frozen base runs through [`Frozen`] (input gradient only); the only
//! variables are LoRA's `A` and `B`.
//!
//! The base is shared with an inference [`Transformer`] (same weights, same kernel), so with
//! `B = 0` this model computes the local backend's logits, and what it learns is what the local
//! backend will serve with the adapter on.

use super::frozen::{BaseMath, Frozen};
use super::ops;
use crate::model::config::{Config, Proj};
use crate::model::infer::Transformer;
use crate::model::lora::{Adapter, Target};
use crate::model::rope::QkOrder;
use candle_core::{DType, Device, Result, Tensor, Var};
use std::sync::Arc;

/// LoRA's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraSpec {
    /// Rank.
    pub rank: usize,
    /// Alpha (the scale is `alpha / rank`).
    pub alpha: f64,
    /// Seed of `A`'s initialisation.
    pub seed: u64,
    /// How the frozen base's products are computed.
    pub base: BaseMath,
}

/// A trainable pair on one projection.
#[derive(Debug)]
pub struct LoraVars {
    /// (rank, in).
    pub a: Var,
    /// (out, rank).
    pub b: Var,
}

struct Projection {
    w: Arc<Frozen>,
    /// The frozen bias, read to the host once.
    bias: Option<Arc<[f32]>>,
    lora: LoraVars,
}

struct Layer {
    attn_norm: ops::RmsNorm,
    ffn_norm: ops::RmsNorm,
    proj: Vec<Projection>,
}

/// A llama/qwen2 model whose only trainable parameters are LoRA's.
pub struct TrainModel {
    config: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: ops::RmsNorm,
    head: Arc<Frozen>,
    rope: ops::Rope,
    spec: LoraSpec,
}

/// Deterministic uniform numbers in [-1, 1): `A`'s initialisation must not depend on a
/// device's generator, or a resumed run could not match an uninterrupted one.
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| ((super::splitmix64(&mut s) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        .collect()
}

impl TrainModel {
    /// A trainable model over `base`'s weights (which must live on the CPU), with fresh LoRA
    /// pairs: `A ~ U(±1/√in)`, `B = 0` (PEFT's initialisation).
    pub fn new(base: &Transformer, spec: LoraSpec) -> Result<TrainModel> {
        let dev = Device::Cpu;
        let frozen = |l: &crate::model::infer::Linear| -> Result<Arc<Frozen>> {
            match l.cpu_weights() {
                Some(w) => Ok(Frozen::new(Arc::clone(w), spec.base)),
                None => candle_core::bail!("training runs on the CPU: load the base model there"),
            }
        };
        let mut layers = Vec::with_capacity(base.blocks.len());
        for (i, blk) in base.blocks.iter().enumerate() {
            let mut proj = Vec::with_capacity(7);
            for (j, p) in Proj::ALL.into_iter().enumerate() {
                let lin = blk.proj(p);
                let (out, inp) = lin.shape();
                let bound = 1.0 / (inp as f32).sqrt();
                let seed =
                    spec.seed ^ ((i as u64) << 8 | j as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
                let a: Vec<f32> = uniform(spec.rank * inp, seed)
                    .into_iter()
                    .map(|u| u * bound)
                    .collect();
                proj.push(Projection {
                    w: frozen(lin)?,
                    bias: match lin.bias() {
                        Some(b) => Some(b.flatten_all()?.to_vec1::<f32>()?.into()),
                        None => None,
                    },
                    lora: LoraVars {
                        a: Var::from_tensor(&Tensor::from_vec(a, (spec.rank, inp), &dev)?)?,
                        b: Var::zeros((out, spec.rank), DType::F32, &dev)?,
                    },
                });
            }
            let eps = base.config.eps;
            layers.push(Layer {
                attn_norm: ops::RmsNorm::new(&blk.attn_norm, eps)?,
                ffn_norm: ops::RmsNorm::new(&blk.ffn_norm, eps)?,
                proj,
            });
        }
        let (cos, sin) = base.rotary();
        Ok(TrainModel {
            config: base.config.clone(),
            embed: base.embed.clone(),
            layers,
            norm: ops::RmsNorm::new(&base.norm, base.config.eps)?,
            head: frozen(&base.head)?,
            rope: ops::Rope::new(cos, sin, base.config.rope_neox)?,
            spec,
        })
    }

    /// The shape.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// LoRA's scale, `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.spec.alpha / self.spec.rank as f64
    }

    /// Every trainable pair, by (block, projection), in a fixed order.
    pub fn lora(&self) -> impl Iterator<Item = (usize, Proj, &LoraVars)> {
        self.layers.iter().enumerate().flat_map(|(i, l)| {
            Proj::ALL
                .into_iter()
                .zip(&l.proj)
                .map(move |(p, pr)| (i, p, &pr.lora))
        })
    }

    /// Every trainable tensor, in the order of [`lora`](Self::lora) (A then B).
    pub fn vars(&self) -> Vec<&Var> {
        self.lora().flat_map(|(_, _, l)| [&l.a, &l.b]).collect()
    }

    /// The adapter as it stands, `B`'s q/k rows in this model's order.
    pub fn adapter(&self) -> Result<Adapter> {
        let targets = self
            .lora()
            .map(|(block, proj, l)| {
                Ok(Target {
                    block,
                    proj,
                    a: l.a.as_tensor().copy()?,
                    b: l.b.as_tensor().copy()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Adapter {
            targets,
            alpha: self.spec.alpha,
            rank: self.spec.rank,
            rslora: false,
            order: QkOrder::of(&self.config),
        })
    }

    fn project(&self, p: &Projection, x: &Tensor) -> Result<Tensor> {
        super::frozen::lora_projection(
            x,
            &p.w,
            p.bias.as_ref(),
            p.lora.a.as_tensor(),
            p.lora.b.as_tensor(),
            self.scale() as f32,
        )
    }

    /// Final hidden states (batch, len, hidden) of right-padded `ids` (batch, len). With right
    /// padding a causal mask is all a real position needs: it never sees a pad.
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (batch, len) = ids.dims2()?;
        if len > c.max_seq {
            candle_core::bail!(
                "a sequence of {len} exceeds the model's {} positions",
                c.max_seq
            );
        }
        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, len, c.hidden))?;
        let rope = |t: &Tensor| self.rope.forward(t);
        for l in &self.layers {
            let h = l.attn_norm.forward(&x)?;
            let heads = |t: Tensor, n: usize| -> Result<Tensor> {
                t.reshape((batch, len, n, c.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = rope(&heads(self.project(&l.proj[0], &h)?, c.n_head)?)?;
            let k = rope(&heads(self.project(&l.proj[1], &h)?, c.n_kv_head)?)?;
            let v = heads(self.project(&l.proj[2], &h)?, c.n_kv_head)?;
            let o = ops::attention(&q, &k, &v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((batch, len, c.n_head * c.head_dim))?;
            x = (x + self.project(&l.proj[3], &o)?)?;
            let h = l.ffn_norm.forward(&x)?;
            let g = self.project(&l.proj[4], &h)?;
            let u = self.project(&l.proj[5], &h)?;
            x = (x + self.project(&l.proj[6], &(g.silu()? * u)?)?)?;
        }
        self.norm.forward(&x)
    }

    /// Logits (rows, vocab) of the given rows of hidden states (rows, hidden).
    pub fn logits(&self, hidden_rows: &Tensor) -> Result<Tensor> {
        self.head.forward(hidden_rows)
    }

    /// The summed cross-entropy of predicting `targets` from the hidden states at `positions`
    /// (flat indices into batch × len), as a scalar.
    pub fn loss_sum(&self, ids: &Tensor, positions: &[u32], targets: &[u32]) -> Result<Tensor> {
        let (batch, len) = ids.dims2()?;
        let h = self
            .hidden(ids)?
            .reshape((batch * len, self.config.hidden))?;
        let dev = ids.device();
        let pos = Tensor::new(positions, dev)?;
        let rows = h.index_select(&pos, 0)?;
        super::frozen::head_cross_entropy_sum(&rows, &self.head, targets)
    }
}
