//! The train stage end to end: trials from a scripted server pass, extract and format make
//! samples of them, and `pipe build train` fine-tunes SmolLM2 in process — resumable after a
//! SIGKILL-like abort with the very same adapter, and with nothing to train on an answer, not
//! a crash.

mod common;

use common::scripted::{Reply, Request, Server, not_found, py};
use common::{Project, assert_ok};
use serde_json::Value;

fn passing_server() -> Server {
    common::passing_stack_server()
}

fn project(url: &str, trials: u32) -> Project {
    common::smollm2_training_project(url, trials)
}

fn build(p: &Project, target: &str, failpoint: Option<&str>) -> std::process::Output {
    let mut c = p.real(&["build", target, "--jobs", "2"]);
    if let Some(f) = failpoint {
        c.env("PIPE_FAILPOINT", f);
    }
    c.output().unwrap()
}

/// An output of `train/adapter`, read from the store.
fn output(p: &Project, name: &str) -> Vec<u8> {
    let o = p
        .real(&["show", "train/adapter", "--json"])
        .output()
        .unwrap();
    assert_ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let obj = v["outputs"][name]["object"]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {v}"));
    std::fs::read(p.path(&format!("store/objects-v1/{}/{obj}", &obj[..2]))).unwrap()
}

#[test]
fn trains_and_resumes_after_a_kill_to_the_same_adapter() {
    let srv = passing_server();
    let whole = project(&srv.url, 4);
    assert_ok(&build(&whole, "train", None));
    let rec: Value = serde_json::from_slice(&output(&whole, "train.json")).unwrap();
    assert_eq!(rec["skipped"], Value::Null, "{rec}");
    assert_eq!(rec["train_samples"], 3, "{rec}");
    assert_eq!(rec["val_samples"], 1, "{rec}");
    assert_eq!(rec["steps"], 3, "1 epoch of 3 batches of 1: {rec}");
    assert_eq!(rec["curve"]["val_loss"].as_array().unwrap().len(), 1);
    let adapter = output(&whole, "adapter_model.safetensors");
    let config: Value = serde_json::from_slice(&output(&whole, "adapter_config.json")).unwrap();
    assert_eq!(
        (config["r"].as_u64(), config["lora_alpha"].as_f64()),
        (Some(16), Some(16.0))
    );

    // Another store, the same experiment: killed right after its second checkpoint.
    let killed = project(&srv.url, 4);
    assert_ok(&build(&killed, "format", None));
    let o = build(&killed, "train", Some("train:after-checkpoint:2"));
    assert!(!o.status.success(), "the failpoint must stop it");
    let st = killed.real(&["status"]).output().unwrap();
    let st = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(
        st.contains("train") && !st.contains("train    up to date"),
        "{st}"
    );
    assert_ok(&build(&killed, "train", None));
    let rec: Value = serde_json::from_slice(&output(&killed, "train.json")).unwrap();
    assert_eq!(
        rec["resumed_from"], 2,
        "resumed from the last checkpoint: {rec}"
    );
    assert_eq!(rec["steps"], 3);
    assert!(
        output(&killed, "adapter_model.safetensors") == adapter,
        "the resumed run's adapter differs from the uninterrupted one"
    );
    // The finished item's checkpoint is gone.
    let left = std::fs::read_dir(killed.path("store/checkpoints-v1"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "checkpoints left after the record was committed");
    // Built: a second build reuses it.
    let again = build(&killed, "train", None);
    assert_ok(&again);
    let st = killed.real(&["status"]).output().unwrap();
    assert!(String::from_utf8_lossy(&st.stdout).contains("train    up to date"));
}

#[test]
fn with_no_samples_training_says_so() {
    // Tests that never parse: no trial passes, extract keeps nothing.
    let srv = Server::start(|r: &Request| {
        if !r.is_chat() {
            return not_found();
        }
        Reply::Content(py("def test_broken(:\n    pass\n"))
    });
    let p = project(&srv.url, 2);
    assert_ok(&build(&p, "train", None));
    let rec: Value = serde_json::from_slice(&output(&p, "train.json")).unwrap();
    assert_eq!(rec["skipped"], "no_samples", "{rec}");
    assert_eq!(rec["per_task"]["stack"]["trials"], 2, "{rec}");
    assert_eq!(rec["per_task"]["stack"]["tests_failed"], 2, "{rec}");
    assert_eq!(rec["steps"], 0);
}
