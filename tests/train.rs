//! LoRA training: gradients reach every LoRA parameter and nothing else, autograd agrees with
//! finite differences, with B = 0 the trainable model is the local backend's model, and what it
//! learns is what the local backend then serves.

#![allow(clippy::print_stderr)] // the measured numbers, for the record when run with --nocapture

mod common;

use candle_core::{DType, Device, Tensor};
use common::{SMOLLM2, matrix};
use pipe::chat::local::LocalModel;
use pipe::chat::{Message, Role};
use pipe::model::config::Config;
use pipe::model::infer::{Block, Linear, SeqCache, Transformer};
use pipe::model::train::adamw::AdamWConfig;
use pipe::model::train::data::{self, Conversation, Example};
use pipe::model::train::frozen::BaseMath;
use pipe::model::train::net::{LoraSpec, TrainModel};
use pipe::model::train::trainer::{self, Hyper, State};

const SPEC: LoraSpec = LoraSpec {
    rank: 4,
    alpha: 8.0,
    seed: 11,
    base: BaseMath::Quantized,
};

/// A random two-block model with grouped heads, biases on q/k/v (qwen2-like) or not.
fn tiny(neox: bool, bias: bool) -> Transformer {
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
        max_seq: 128,
    };
    let mut seed = 1;
    let mut m = |r: usize, c: usize| {
        seed += 1;
        matrix(r, c, seed, 0.3)
    };
    let b = |n: usize, s: u64| bias.then(|| matrix(1, n, s, 0.1).reshape(n).unwrap());
    // Norm weights around 1, not 1: how α enters RMSNorm's backward is checked too.
    let norm = |s: u64| (matrix(1, 64, s, 0.3).reshape(64).unwrap() + 1.0).unwrap();
    let blocks = (0..2)
        .map(|i| Block {
            attn_norm: norm(10 + i),
            proj: [
                Linear::dense(m(64, 64), b(64, 100 + i)).unwrap(),
                Linear::dense(m(32, 64), b(32, 200 + i)).unwrap(),
                Linear::dense(m(32, 64), b(32, 300 + i)).unwrap(),
                Linear::dense(m(64, 64), None).unwrap(),
                Linear::dense(m(96, 64), None).unwrap(),
                Linear::dense(m(96, 64), None).unwrap(),
                Linear::dense(m(64, 96), None).unwrap(),
            ],
            ffn_norm: norm(20 + i),
        })
        .collect();
    let embed = m(50, 64);
    let head = Linear::dense(m(50, 64), None).unwrap();
    Transformer::new(
        config,
        embed,
        blocks,
        Tensor::ones(64, DType::F32, &dev).unwrap(),
        head,
    )
    .unwrap()
}

fn example(seed: u64, len: usize, prompt_len: usize) -> Example {
    let mut s = seed;
    let ids = (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % 50) as u32
        })
        .collect();
    Example { ids, prompt_len }
}

fn hyper(lr: f64, epochs: u32) -> Hyper {
    Hyper {
        learning_rate: lr,
        epochs,
        batch_size: 2,
        micro_batch: 1,
        warmup_ratio: 0.0,
        max_grad_norm: 1.0,
        seed: 3,
        adamw: AdamWConfig::default(),
    }
}

fn nonzero(v: &[f32]) -> bool {
    v.iter().any(|x| *x != 0.0)
}

/// After one step every A and every B has a gradient (with B = 0 at the start A's is zero, as
/// in PEFT; one step makes B non-zero); the base model's outputs never change.
#[test]
fn every_lora_parameter_gets_a_gradient_and_the_base_stays() {
    for (neox, bias) in [(true, true), (false, false)] {
        let base = tiny(neox, bias);
        let probe = [3u32, 7, 9, 1, 4];
        let before = base.forward_one(&probe, &mut SeqCache::default()).unwrap();
        let model = TrainModel::new(&base, SPEC).unwrap();
        let exs = [example(1, 24, 10), example(2, 17, 5)];
        let refs: Vec<&Example> = exs.iter().collect();
        let h = hyper(1e-2, 1);
        let state = State::fresh(&model).unwrap();
        let state = trainer::run(
            &model,
            &exs,
            &[],
            &h,
            0,
            state,
            &mut |_| {},
            &mut |_| Ok(()),
        )
        .unwrap();
        assert_eq!(state.step, 1);
        let (grads, loss) = trainer::gradients(&model, &refs, 1, 0).unwrap();
        assert!(loss.is_finite() && loss > 0.0);
        let mut off = 0;
        for (block, proj, l) in model.lora() {
            for (name, v) in [("A", &l.a), ("B", &l.b)] {
                let n = v.elem_count();
                assert!(
                    nonzero(&grads[off..off + n]),
                    "block {block} {proj:?} {name}: no gradient (neox {neox})"
                );
                off += n;
            }
        }
        assert_eq!(off, grads.len());
        let after = base.forward_one(&probe, &mut SeqCache::default()).unwrap();
        assert_eq!(before, after, "the base model changed");
    }
}

/// Autograd's LoRA gradients against central differences of the loss, through the frozen
/// integer-kernel base, rotation in both layouts, grouped heads and biases.
#[test]
fn lora_gradients_agree_with_finite_differences() {
    for (neox, bias, math) in [
        (true, true, BaseMath::Quantized),
        (false, false, BaseMath::Quantized),
    ] {
        let base = tiny(neox, bias);
        let model = TrainModel::new(&base, LoraSpec { base: math, ..SPEC }).unwrap();
        // Make B non-zero so that A's gradient is too.
        let mut state = State::fresh(&model).unwrap();
        let n = state.params.len();
        let noise = common::values(n, 5, 0.05);
        for (p, e) in state.params.iter_mut().zip(noise) {
            *p += e;
        }
        trainer::load(&model, &state.params).unwrap();
        let exs = [example(3, 20, 8), example(4, 14, 6)];
        let refs: Vec<&Example> = exs.iter().collect();
        let (grads, _) = trainer::gradients(&model, &refs, 2, 0).unwrap();
        let loss_at = |params: &[f32]| {
            trainer::load(&model, params).unwrap();
            trainer::gradients(&model, &refs, 2, 0).unwrap().1
        };
        // Along each tensor's own gradient (a coordinate alone changes the loss too little to
        // rise above the kernel's 16-bit activation rounding), and at the largest coordinates.
        let mut worst = 0f64;
        let mut check = |what: String, dir: Vec<f32>, ad: f64| {
            let eps = 2e-2f32;
            let shifted = |sign: f32| -> Vec<f32> {
                state
                    .params
                    .iter()
                    .zip(&dir)
                    .map(|(p, d)| p + sign * eps * d)
                    .collect()
            };
            let fd = (loss_at(&shifted(1.0)) - loss_at(&shifted(-1.0))) / (2.0 * eps as f64);
            let err = (fd - ad).abs() / fd.abs().max(ad.abs()).max(1e-3);
            worst = worst.max(err);
            assert!(
                err < 0.03,
                "{what}: autograd {ad}, finite differences {fd} (neox {neox}, {math:?})"
            );
        };
        let mut off = 0;
        let layout: Vec<(usize, String)> = model
            .lora()
            .flat_map(|(b, p, l)| {
                [
                    (l.a.elem_count(), format!("{b} {p:?} A")),
                    (l.b.elem_count(), format!("{b} {p:?} B")),
                ]
            })
            .collect();
        for (k, name) in layout {
            let g = &grads[off..off + k];
            let norm = g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let mut dir = vec![0f32; n];
            for (d, x) in dir[off..off + k].iter_mut().zip(g) {
                *d = (*x as f64 / norm) as f32;
            }
            check(name, dir, norm);
            off += k;
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|a, b| grads[*b].abs().total_cmp(&grads[*a].abs()));
        for &i in order.iter().take(6) {
            let mut dir = vec![0f32; n];
            dir[i] = 1.0;
            check(format!("parameter {i}"), dir, grads[i] as f64);
        }
        eprintln!("finite differences: worst relative error {worst:.4} (neox {neox}, {math:?})");
    }
}

/// The bf16 base's gradients against the integer kernel's (checked against finite differences
/// above): per LoRA tensor, the same direction and size up to bf16's rounding. (Finite
/// differences of a loss computed with 8-bit mantissas are mostly rounding noise.) A wrong
/// orientation or scale in the tiles' backward would turn a tensor's gradient elsewhere.
#[test]
fn bf16_base_gradients_agree_with_the_integer_kernels() {
    for (neox, bias) in [(true, true), (false, false)] {
        let base = tiny(neox, bias);
        let grads = |math: BaseMath| {
            let model = TrainModel::new(&base, LoraSpec { base: math, ..SPEC }).unwrap();
            let mut state = State::fresh(&model).unwrap();
            let noise = common::values(state.params.len(), 5, 0.05);
            for (p, e) in state.params.iter_mut().zip(noise) {
                *p += e;
            }
            trainer::load(&model, &state.params).unwrap();
            let exs = [example(3, 20, 8), example(4, 14, 6)];
            let refs: Vec<&Example> = exs.iter().collect();
            let sizes: Vec<(usize, String)> = model
                .lora()
                .flat_map(|(b, p, l)| {
                    [
                        (l.a.elem_count(), format!("{b} {p:?} A")),
                        (l.b.elem_count(), format!("{b} {p:?} B")),
                    ]
                })
                .collect();
            (trainer::gradients(&model, &refs, 2, 0).unwrap().0, sizes)
        };
        let ((q, sizes), (b, _)) = (grads(BaseMath::Quantized), grads(BaseMath::Bf16));
        let (mut off, mut worst_cos, mut worst_ratio) = (0, 1f64, 0f64);
        for (n, name) in sizes {
            let (x, y) = (&q[off..off + n], &b[off..off + n]);
            let dot: f64 = x.iter().zip(y).map(|(a, b)| *a as f64 * *b as f64).sum();
            let norm = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let (nx, ny) = (norm(x), norm(y));
            let (cos, ratio) = (dot / (nx * ny), (ny / nx - 1.0).abs());
            assert!(
                cos > 0.99 && ratio < 0.05,
                "{name}: cosine {cos}, norms {nx} vs {ny} (neox {neox})"
            );
            (worst_cos, worst_ratio) = (worst_cos.min(cos), worst_ratio.max(ratio));
            off += n;
        }
        eprintln!(
            "bf16 vs integer kernel: worst cosine {worst_cos:.5}, worst norm difference {worst_ratio:.4} (neox {neox})"
        );
    }
}

fn last_logits(model: &TrainModel, ids: &[u32]) -> Vec<f32> {
    let t = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    let h = model.hidden(&t).unwrap();
    let last = h
        .narrow(1, ids.len() - 1, 1)
        .unwrap()
        .reshape((1, model.config().hidden))
        .unwrap();
    model
        .logits(&last)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// With B = 0 the trainable model computes the local backend's logits.
#[test]
fn with_b_zero_the_trainable_model_is_the_served_model() {
    let m = LocalModel::load(&common::model(SMOLLM2)).unwrap();
    let base = m.transformer();
    let model = TrainModel::new(
        base,
        LoraSpec {
            rank: 8,
            alpha: 16.0,
            seed: 1,
            base: BaseMath::Quantized,
        },
    )
    .unwrap();
    let text = m
        .render(&[Message::new(
            Role::User,
            "Write a Python function that adds two numbers.",
        )])
        .unwrap();
    let ids = m.tokenizer().encode(&text).unwrap();
    let served = base.forward_one(&ids, &mut SeqCache::default()).unwrap();
    let trained = last_logits(&model, &ids);
    let worst = common::max_diff(&served, &trained);
    eprintln!("B = 0: logits differ by up to {worst}");
    assert!(worst < 2e-2, "logits differ by up to {worst}");
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    assert_eq!(argmax(&served), argmax(&trained));
}

/// Train on one conversation; the local backend with the resulting adapter (written as PEFT
/// files, read back) then greedily says that reply, and the base model does not. This ties the
/// template, the loss mask, LoRA's orientation and scale, and the adapter file together.
#[test]
fn it_learns_what_inference_will_see() {
    let gguf = common::model(SMOLLM2);
    let m = LocalModel::load(&gguf).unwrap();
    let reply = "```python\nimport pytest\nfrom implementation import Stack\n\ndef test_push_then_pop_returns_the_item():\n    s = Stack()\n    s.push(41)\n    assert s.pop() == 41\n```";
    let conv = Conversation {
        prompt: vec![
            Message::new(Role::System, "You write Python tests."),
            Message::new(Role::User, "Write pytest tests for a Stack class."),
        ],
        reply: reply.into(),
    };
    let prepared = data::prepare(
        std::slice::from_ref(&conv),
        m.tokenizer(),
        &m.template(),
        1024,
    )
    .unwrap();
    assert_eq!(prepared.too_long, 0);
    let ex = prepared.examples;
    let reply_ids = &ex[0].ids[ex[0].prompt_len..];
    assert!(reply_ids.len() > 32);

    let model = TrainModel::new(
        m.transformer(),
        LoraSpec {
            rank: 16,
            alpha: 16.0,
            seed: 7,
            base: BaseMath::fastest(),
        },
    )
    .unwrap();
    let h = Hyper {
        learning_rate: 2e-3,
        epochs: 16,
        batch_size: 1,
        micro_batch: 1,
        warmup_ratio: 0.05,
        max_grad_norm: 1.0,
        seed: 1,
        adamw: AdamWConfig::default(),
    };
    let state = State::fresh(&model).unwrap();
    let state = trainer::run(&model, &ex, &[], &h, 0, state, &mut |_| {}, &mut |_| Ok(())).unwrap();
    let (first, last) = (state.curve.loss[0].1, state.curve.loss.last().unwrap().1);
    eprintln!("loss {first:.3} → {last:.3} over {} steps", state.step);
    assert!(last < first / 4.0, "the loss must fall: {first} → {last}");

    let dir = tempfile::tempdir().unwrap();
    let peft = dir.path().join("peft");
    model
        .adapter()
        .unwrap()
        .write_peft(&peft, "SmolLM2", &model.config().clone())
        .unwrap();
    let tuned = LocalModel::open(
        &pipe::model::source::Source::Gguf(gguf.clone()),
        Some((&peft, 1.0)),
    )
    .unwrap();
    let prompt = tuned
        .tokenizer()
        .encode(&tuned.render(&conv.prompt).unwrap())
        .unwrap();
    assert_eq!(
        prompt,
        ex[0].ids[..ex[0].prompt_len],
        "inference renders the prompt trained on"
    );
    let greedy = |lm: &LocalModel| {
        lm.generate(
            &prompt,
            32,
            candle_transformers::generation::Sampling::ArgMax,
            0,
        )
        .unwrap()
        .ids
    };
    assert_eq!(
        greedy(&tuned),
        reply_ids[..32],
        "the tuned model says the reply"
    );
    assert_ne!(greedy(&m), reply_ids[..32], "the base model alone does not");
}

/// Stopped right after a checkpoint at seeded random steps and resumed from the saved bytes in
/// a fresh model, training ends with the bit-identical parameters of an uninterrupted run.
#[test]
fn resuming_from_a_checkpoint_at_random_steps_is_bit_identical() {
    let base = tiny(false, true);
    let exs: Vec<Example> = (0..5)
        .map(|i| example(10 + i, 12 + i as usize, 4))
        .collect();
    let mut h = hyper(5e-3, 3);
    h.warmup_ratio = 0.2;
    let whole = {
        let model = TrainModel::new(&base, SPEC).unwrap();
        let s = State::fresh(&model).unwrap();
        trainer::run(&model, &exs, &exs[..2], &h, 0, s, &mut |_| {}, &mut |_| {
            Ok(())
        })
        .unwrap()
    };
    assert_eq!(whole.step, 9, "3 epochs of ceil(5 / 2) steps");
    let mut rng = common::Rng(2024);
    for _ in 0..4 {
        let stop_at = 1 + rng.below(whole.step - 1);
        let mut saved = None;
        let model = TrainModel::new(&base, SPEC).unwrap();
        let s = State::fresh(&model).unwrap();
        let r = trainer::run(&model, &exs, &exs[..2], &h, 0, s, &mut |_| {}, &mut |s| {
            saved = Some(s.encode());
            if s.step == stop_at {
                Err("killed".into())
            } else {
                Ok(())
            }
        });
        assert!(r.is_err(), "stopped at step {stop_at}");
        let resumed = State::decode(&saved.unwrap()).unwrap();
        assert_eq!(resumed.step, stop_at);
        let fresh_model = TrainModel::new(&base, SPEC).unwrap();
        let done = trainer::run(
            &fresh_model,
            &exs,
            &exs[..2],
            &h,
            0,
            resumed,
            &mut |_| {},
            &mut |_| Ok(()),
        )
        .unwrap();
        assert!(
            done.params
                .iter()
                .zip(&whole.params)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "resumed at step {stop_at}: parameters differ from the uninterrupted run"
        );
        assert_eq!(
            done.curve, whole.curve,
            "resumed at step {stop_at}: the loss curve differs"
        );
    }
}
