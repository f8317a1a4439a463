//! A Hugging Face checkpoint directory on the local backend: SmolLM2's GGUF written out the
//! way Hugging Face lays a llama checkpoint out (q/k un-permuted back to rotate-half order,
//! tokenizer.json, tokenizer_config.json with the chat template), loaded back, must be the
//! same model: same prompt ids, same logits up to rounding, same greedy tokens — and a PEFT
//! adapter means the same thing on either.

use pipe::chat::local::LocalModel;
use pipe::chat::{Message, Role};
use pipe::model::config::Proj;
use pipe::model::infer::SeqCache;
use pipe::model::rope::QkOrder;
use pipe::model::source::Source;
use std::path::PathBuf;

mod common;
use common::{SMOLLM2, adapter, logits, max_diff, write_hf_dir};

/// SmolLM2's GGUF, and the same model written out as an HF directory under a temp dir:
/// (gguf path, from the GGUF, from the directory, the directory, its temp dir).
fn smollm2_both_ways() -> (PathBuf, LocalModel, LocalModel, PathBuf, tempfile::TempDir) {
    let gguf = common::model(SMOLLM2);
    let from_gguf = LocalModel::load(&gguf).unwrap();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("smollm2-hf");
    write_hf_dir(&gguf, &from_gguf, &dir);
    let from_hf = LocalModel::open(&Source::HfDir(dir.clone()), None).unwrap();
    (gguf, from_gguf, from_hf, dir, d)
}

#[test]
fn an_hf_directory_is_the_same_model_as_its_gguf() {
    let (_, from_gguf, from_hf, dir, d) = smollm2_both_ways();

    let msgs = [Message::new(
        Role::User,
        "Write a Python function that reverses a list.",
    )];
    let text = from_gguf.render(&msgs).unwrap();
    assert_eq!(text, from_hf.render(&msgs).unwrap());
    let ids = from_gguf.tokenizer().encode(&text).unwrap();
    assert_eq!(ids, from_hf.tokenizer().encode(&text).unwrap());
    assert_eq!(
        from_gguf.tokenizer().end_of_generation(),
        from_hf.tokenizer().end_of_generation()
    );

    let a = from_gguf
        .transformer()
        .forward_one(&ids, &mut SeqCache::default())
        .unwrap();
    let b = from_hf
        .transformer()
        .forward_one(&ids, &mut SeqCache::default())
        .unwrap();
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-2, "logits differ by up to {worst}");

    let greedy = |m: &LocalModel| {
        m.generate(
            &ids,
            24,
            candle_transformers::generation::Sampling::ArgMax,
            0,
        )
        .unwrap()
        .ids
    };
    assert_eq!(greedy(&from_gguf), greedy(&from_hf));

    // A directory that is not a checkpoint says what is missing.
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = LocalModel::open(&Source::HfDir(d.path().join("nothing")), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nothing"), "{e}");
}

/// A PEFT adapter is in Hugging Face row order; SmolLM2's GGUF holds llama's q/k rows permuted
/// for llama.cpp's rotation. Applied to either, the adapter must give the same model.
#[test]
fn a_peft_adapter_means_the_same_on_the_gguf_and_on_hf_order_weights() {
    let (gguf, _, hf, dir, d) = smollm2_both_ways();
    let config = hf.transformer().config.clone();

    // q and k are the projections whose rows the two layouts order differently; v does not.
    // Built on the HF-order model: B in rotate-half order, as PEFT has it.
    let adapter = adapter(
        hf.transformer(),
        &[Proj::Q, Proj::K, Proj::V],
        8,
        16.0,
        0.05,
    );
    assert_eq!(adapter.order, QkOrder::Halves);
    let peft = d.path().join("peft");
    adapter
        .write_peft(&peft, "HuggingFaceTB/SmolLM2-135M-Instruct", &config)
        .unwrap();

    let on_gguf = LocalModel::open(&Source::Gguf(gguf), Some((&peft, 1.0))).unwrap();
    let on_hf = LocalModel::open(&Source::HfDir(dir), Some((&peft, 1.0))).unwrap();
    let msgs = [Message::new(
        Role::User,
        "Write a Python function that adds two numbers.",
    )];
    let ids = on_gguf
        .tokenizer()
        .encode(&on_gguf.render(&msgs).unwrap())
        .unwrap();
    let logits = |m: &LocalModel| logits(m.transformer(), &ids);
    let diff = max_diff;
    let (g, h) = (logits(&on_gguf), logits(&on_hf));
    let moved = diff(&h, &logits(&hf));
    assert!(
        moved > 0.5,
        "the adapter must move the logits well past rounding for this to mean anything ({moved})"
    );
    let worst = diff(&g, &h);
    assert!(
        worst < 1e-2,
        "the adapter on the GGUF and on the HF-order weights differ by up to {worst} (moved {moved})"
    );
}
