//! The training loop: seeded batches of examples, gradient accumulation over micro-batches,
//! global-norm clipping, AdamW with linear warm-up then linear decay, validation loss each
//! epoch. Its whole state is a [`State`], which encodes to bytes: a run stopped at any step and
//! resumed from its last saved state ends with the same adapter, bit for bit.

use super::adamw::{self, AdamW, AdamWConfig};
use super::data::{Example, batch};
use super::net::TrainModel;
use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The loop's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Passes over the training examples.
    pub epochs: u32,
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// Examples per forward pass (gradients of a step's micro-batches are summed).
    pub micro_batch: usize,
    /// Share of the steps spent warming the learning rate up from 0.
    pub warmup_ratio: f64,
    /// Gradients are scaled down to this global L2 norm.
    pub max_grad_norm: f64,
    /// Seed of the data order (and, through the model, of LoRA's `A`).
    pub seed: u64,
    /// AdamW's moments and decay.
    pub adamw: AdamWConfig,
}

/// Losses as (step, mean loss per target token).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Training loss of each step's batch.
    pub loss: Vec<(u64, f64)>,
    /// Validation loss, after each epoch (and every ⌈steps / 4⌉ steps within a long one).
    pub val_loss: Vec<(u64, f64)>,
}

/// Where a run stands: enough to continue it exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// Optimiser steps done.
    pub step: u64,
    /// Every LoRA parameter, flat, in [`TrainModel::vars`] order.
    pub params: Vec<f32>,
    /// AdamW's moments.
    pub opt: AdamW,
    /// Losses so far.
    pub curve: Curve,
    /// Tokens read (prompt and reply, no padding).
    pub tokens: u64,
}

/// What a step reports while the loop runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Steps done.
    pub step: u64,
    /// Steps in all.
    pub steps: u64,
    /// The step's training loss.
    pub loss: f64,
    /// Tokens per second since this process started training.
    pub tokens_per_s: f64,
    /// Seconds left at that pace.
    pub eta_s: f64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    step: u64,
    tokens: u64,
    t: u64,
    n: usize,
    curve: Curve,
}

impl State {
    /// The state of a fresh run of `model`.
    pub fn fresh(model: &TrainModel) -> Result<State> {
        let mut params = Vec::new();
        for v in model.vars() {
            params.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        let n = params.len();
        Ok(State {
            step: 0,
            params,
            opt: AdamW::new(n),
            curve: Curve::default(),
            tokens: 0,
        })
    }

    /// Bytes: a JSON header line (floats round-trip exactly: serde_json's `float_roundtrip`),
    /// then parameters, first and second moments as f32 LE.
    pub fn encode(&self) -> Vec<u8> {
        let h = Header {
            step: self.step,
            tokens: self.tokens,
            t: self.opt.t,
            n: self.params.len(),
            curve: self.curve.clone(),
        };
        let mut out = serde_json::to_vec(&h).expect("a header serialises");
        out.push(b'\n');
        for buf in [&self.params, &self.opt.m, &self.opt.v] {
            for x in buf.iter() {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    /// The inverse of [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> std::result::Result<State, String> {
        let nl = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("a training state starts with a header line")?;
        let h: Header = serde_json::from_slice(&bytes[..nl]).map_err(|e| e.to_string())?;
        let body = &bytes[nl + 1..];
        if body.len() != 3 * 4 * h.n {
            return Err(format!(
                "a training state of {} parameters has {} bytes of data",
                h.n,
                body.len()
            ));
        }
        let floats: Vec<f32> = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let (params, rest) = floats.split_at(h.n);
        let (m, v) = rest.split_at(h.n);
        Ok(State {
            step: h.step,
            params: params.to_vec(),
            opt: AdamW {
                m: m.to_vec(),
                v: v.to_vec(),
                t: h.t,
            },
            curve: h.curve,
            tokens: h.tokens,
        })
    }
}

/// Epochs of at least this many steps are also validated within, every ⌈steps / 4⌉ steps.
pub const LONG_EPOCH: u64 = 8;

/// Is the validation loss taken after step `step` (1-based count of steps done)? After every
/// epoch, and every ⌈steps / 4⌉ steps within a long one, so a curve shows overfitting before
/// an epoch ends.
pub fn validates_after(step: u64, per_epoch: u64) -> bool {
    let every = if per_epoch >= LONG_EPOCH {
        per_epoch.div_ceil(4)
    } else {
        per_epoch
    };
    let in_epoch = (step - 1) % per_epoch + 1;
    in_epoch == per_epoch || in_epoch.is_multiple_of(every.max(1))
}

/// Steps in one epoch of `n` examples.
pub fn steps_per_epoch(n: usize, batch_size: usize) -> u64 {
    n.div_ceil(batch_size.max(1)) as u64
}

/// The learning rate of step `step` (0-based) of `total`: linear warm-up to the peak over
/// `warmup_ratio` of the steps (at least one), then linear decay towards 0.
pub fn learning_rate(h: &Hyper, step: u64, total: u64) -> f64 {
    let warm = ((total as f64 * h.warmup_ratio).round() as u64).max(1);
    if step < warm {
        h.learning_rate * (step + 1) as f64 / warm as f64
    } else {
        h.learning_rate * (total - step) as f64 / (total - warm + 1).max(1) as f64
    }
}

/// The example order of `epoch`: a seeded shuffle (Fisher–Yates on splitmix64).
pub fn order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut s = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for i in (1..n).rev() {
        let j = (super::splitmix64(&mut s) % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx
}

/// Put `params` (flat) into the model's variables.
pub fn load(model: &TrainModel, params: &[f32]) -> Result<()> {
    let mut off = 0;
    for v in model.vars() {
        let n = v.elem_count();
        let t = Tensor::from_slice(&params[off..off + n], v.shape(), &Device::Cpu)?;
        v.set(&t)?;
        off += n;
    }
    Ok(())
}

fn ids_tensor(ids: &[u32], rows: usize, len: usize) -> Result<Tensor> {
    Tensor::from_slice(ids, (rows, len), &Device::Cpu)
}

/// The mean loss per target token of `examples` (no gradients), `micro` at a time.
pub fn mean_loss(model: &TrainModel, examples: &[Example], micro: usize, pad: u32) -> Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in examples.chunks(micro.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let b = batch(&refs, pad);
        let ids = ids_tensor(&b.ids, b.rows, b.len)?;
        let l = model.loss_sum(&ids, &b.positions, &b.targets)?.detach();
        sum += l.to_scalar::<f32>()? as f64;
        n += b.targets.len();
    }
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

/// The gradients (flat, [`TrainModel::vars`] order) of the mean loss over `examples`, and that
/// loss: micro-batch by micro-batch, each contributing its share of the batch's targets.
pub fn gradients(
    model: &TrainModel,
    examples: &[&Example],
    micro: usize,
    pad: u32,
) -> Result<(Vec<f32>, f64)> {
    let vars = model.vars();
    let n: usize = vars.iter().map(|v| v.elem_count()).sum();
    let total: usize = examples.iter().map(|e| e.targets()).sum();
    let mut grads = vec![0f32; n];
    let mut loss = 0f64;
    for chunk in examples.chunks(micro.max(1)) {
        let b = batch(chunk, pad);
        let ids = ids_tensor(&b.ids, b.rows, b.len)?;
        let l = (model.loss_sum(&ids, &b.positions, &b.targets)? / total as f64)?;
        loss += l.to_scalar::<f32>()? as f64;
        let store = l.backward()?;
        let mut off = 0;
        for v in &vars {
            let k = v.elem_count();
            if let Some(g) = store.get(v.as_tensor()) {
                for (acc, x) in grads[off..off + k]
                    .iter_mut()
                    .zip(g.flatten_all()?.to_vec1::<f32>()?)
                {
                    *acc += x;
                }
            }
            off += k;
        }
    }
    Ok((grads, loss))
}

/// Train `model` on `train` from `state` to the end, validating on `val` after each epoch.
/// `progress` hears of every step; `checkpoint` is offered the state after every step but the
/// last (it decides whether to keep it).
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &TrainModel,
    train: &[Example],
    val: &[Example],
    h: &Hyper,
    pad: u32,
    mut state: State,
    progress: &mut dyn FnMut(&Progress),
    checkpoint: &mut dyn FnMut(&State) -> std::result::Result<(), String>,
) -> std::result::Result<State, String> {
    let err = |e: candle_core::Error| e.to_string();
    let per_epoch = steps_per_epoch(train.len(), h.batch_size);
    let total = per_epoch * h.epochs as u64;
    load(model, &state.params).map_err(err)?;
    let started = Instant::now();
    let tokens_at_start = state.tokens;
    while state.step < total {
        let epoch = state.step / per_epoch;
        let in_epoch = (state.step % per_epoch) as usize;
        let order = order(train.len(), h.seed, epoch);
        let picked: Vec<&Example> = order
            .iter()
            .skip(in_epoch * h.batch_size)
            .take(h.batch_size)
            .map(|&i| &train[i])
            .collect();
        let (mut grads, loss) = gradients(model, &picked, h.micro_batch, pad).map_err(err)?;
        adamw::clip(&mut grads, h.max_grad_norm);
        let lr = learning_rate(h, state.step, total);
        state.opt.step(&h.adamw, lr, &mut state.params, &grads);
        load(model, &state.params).map_err(err)?;
        state.step += 1;
        state.tokens += picked.iter().map(|e| e.ids.len() as u64).sum::<u64>();
        state.curve.loss.push((state.step, loss));
        if validates_after(state.step, per_epoch) && !val.is_empty() {
            let v = mean_loss(model, val, h.micro_batch, pad).map_err(err)?;
            state.curve.val_loss.push((state.step, v));
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let rate = (state.tokens - tokens_at_start) as f64 / secs;
        progress(&Progress {
            step: state.step,
            steps: total,
            loss,
            tokens_per_s: rate,
            eta_s: if rate > 0.0 {
                remaining_tokens(train, per_epoch, total, state.step, h) / rate
            } else {
                f64::NAN
            },
        });
        // The last state is the result itself: nothing to resume from.
        if state.step < total {
            checkpoint(&state)?;
        }
    }
    Ok(state)
}

/// Tokens in the steps after `step`, estimated from the mean example length.
fn remaining_tokens(train: &[Example], per_epoch: u64, total: u64, step: u64, h: &Hyper) -> f64 {
    let mean = train.iter().map(|e| e.ids.len()).sum::<usize>() as f64 / train.len().max(1) as f64;
    let per_step = (train.len() as f64 / per_epoch.max(1) as f64).min(h.batch_size as f64);
    (total - step) as f64 * per_step * mean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_near_zero() {
        let h = Hyper {
            learning_rate: 1.0,
            epochs: 1,
            batch_size: 1,
            micro_batch: 1,
            warmup_ratio: 0.1,
            max_grad_norm: 1.0,
            seed: 0,
            adamw: AdamWConfig::default(),
        };
        let lrs: Vec<f64> = (0..20).map(|s| learning_rate(&h, s, 20)).collect();
        assert_eq!(lrs[0], 0.5);
        assert_eq!(lrs[1], 1.0);
        assert!(lrs.windows(2).skip(1).all(|w| w[1] < w[0]), "{lrs:?}");
        assert!(lrs[19] > 0.0 && lrs[19] < 0.1, "{lrs:?}");
    }

    #[test]
    fn validation_after_each_epoch_and_each_quarter_of_a_long_one() {
        let short: Vec<u64> = (1..=12).filter(|&s| validates_after(s, 3)).collect();
        assert_eq!(short, [3, 6, 9, 12]);
        let long: Vec<u64> = (1..=20).filter(|&s| validates_after(s, 10)).collect();
        assert_eq!(long, [3, 6, 9, 10, 13, 16, 19, 20]);
    }

    #[test]
    fn orders_are_seeded_permutations() {
        let a = order(10, 7, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(a, order(10, 7, 0));
        assert_ne!(a, order(10, 7, 1));
        assert_ne!(a, order(10, 8, 0));
    }

    #[test]
    fn a_state_round_trips_through_bytes() {
        let s = State {
            step: 3,
            params: vec![1.0, -2.5, 3.25],
            opt: AdamW {
                m: vec![0.1, 0.2, 0.3],
                v: vec![0.01, 0.02, 0.03],
                t: 3,
            },
            curve: Curve {
                loss: vec![(1, 2.0), (2, 1.5)],
                val_loss: vec![(2, 1.7)],
            },
            tokens: 99,
        };
        assert_eq!(State::decode(&s.encode()).unwrap(), s);
        assert!(State::decode(&s.encode()[..20]).is_err());
    }
}
