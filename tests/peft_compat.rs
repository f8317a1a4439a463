//! PEFT itself reads the adapter we write and computes what we compute: the same random LoRA
//! pairs, written as PEFT files, applied by transformers + PEFT to the model's Hugging Face
//! checkpoint and by us to the GGUF (llama's q/k rows permuted) and to the checkpoint. Compared
//! is what the adapter changes (tuned − base logits, each side against its own base), so that
//! the base's own rounding (ours: integer kernels; theirs: f32) does not hide or fake a match.
//!
//! Needs torch, transformers and peft in a venv of their own (several GB, so not in CI):
//!
//!     python3 -m venv ../peft-venv && ../peft-venv/bin/pip install torch transformers peft
//!     PIPE_PEFT_VENV=../peft-venv cargo test --test peft_compat -- --ignored --nocapture

#![allow(clippy::print_stderr)] // the measured differences, for the record

mod common;

use common::{adapter, logits, max_diff, write_hf_dir};
use pipe::chat::local::LocalModel;
use pipe::chat::{Message, Role};
use pipe::model::config::Proj;
use pipe::model::source::Source;
use std::path::{Path, PathBuf};
use std::process::Command;

/// PEFT's (base, tuned) logits.
fn peft_logits(hf: &Path, peft: &Path, ids: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let venv = std::env::var("PIPE_PEFT_VENV").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../peft-venv")
            .display()
            .to_string()
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft_logits.py");
    let o = Command::new(format!("{venv}/bin/python"))
        .arg(script)
        .arg(hf)
        .arg(peft)
        .arg(serde_json::to_string(ids).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("{venv}/bin/python: {e} (see this file's header)"));
    assert!(
        o.status.success(),
        "PEFT failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let list = |k: &str| -> Vec<f32> { serde_json::from_value(v[k].clone()).unwrap() };
    (list("base"), list("tuned"))
}

fn minus(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn check(gguf_rel: &str) {
    let gguf = common::model(gguf_rel);
    let base = LocalModel::load(&gguf).unwrap();
    let d = tempfile::tempdir().unwrap();
    let hf = d.path().join("hf");
    write_hf_dir(&gguf, &base, &hf);
    let from_hf = LocalModel::open(&Source::HfDir(hf.clone()), None).unwrap();
    // Random pairs on all seven projections, B ≠ 0, in Hugging Face row order (the HF model's).
    let a = adapter(from_hf.transformer(), &Proj::ALL, 8, 16.0, 0.02);
    let peft: PathBuf = d.path().join("peft");
    a.write_peft(&peft, "test", &from_hf.transformer().config)
        .unwrap();
    let text = base
        .render(&[Message::new(
            Role::User,
            "Write a Python function that reverses a list.",
        )])
        .unwrap();
    let ids = base.tokenizer().encode(&text).unwrap();
    let (their_base, their_tuned) = peft_logits(&hf, &peft, &ids);
    let theirs = minus(&their_tuned, &their_base);
    let moved = theirs.iter().fold(0f32, |m, x| m.max(x.abs()));
    let on_gguf = LocalModel::open(&Source::Gguf(gguf.clone()), Some((&peft, 1.0))).unwrap();
    let on_hf = LocalModel::open(&Source::HfDir(hf.clone()), Some((&peft, 1.0))).unwrap();
    for (what, base, tuned) in [
        ("GGUF", &base, &on_gguf),
        ("HF checkpoint", &from_hf, &on_hf),
    ] {
        let (b, t) = (
            logits(base.transformer(), &ids),
            logits(tuned.transformer(), &ids),
        );
        let worst = max_diff(&theirs, &minus(&t, &b));
        eprintln!(
            "{gguf_rel} on the {what}: the adapter's change of the logits, PEFT vs ours: {worst:.4} \
             (it moves them up to {moved:.3}); tuned logits differ by {:.4}, base logits by {:.4}",
            max_diff(&their_tuned, &t),
            max_diff(&their_base, &b)
        );
        assert!(
            // Within 5% of the adapter's own effect: a q/k row-order or scale mistake is
            // tens of percent (our own test sees 40% for the row order).
            worst < 0.05 * moved,
            "{gguf_rel} on the {what}: PEFT and we differ by {worst} (the adapter moves {moved})"
        );
    }
}

#[test]
#[ignore = "needs torch, transformers and peft (see the file's header)"]
fn peft_applies_our_adapter_as_we_do_on_smollm2() {
    check(common::SMOLLM2);
}

#[test]
#[ignore = "needs torch, transformers and peft (see the file's header)"]
fn peft_applies_our_adapter_as_we_do_on_qwen() {
    check("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
}
