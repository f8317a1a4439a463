//! The whole experiment for real, small: trials of the base arm from a scripted server (where a
//! real small model would pass none, leaving nothing to train on), extract and format, LoRA
//! training of SmolLM2 in process, convert (adapter GGUF, merged q4_k_m and f16, Modelfile), eval
//! of the fine-tuned arm (SmolLM2 with the adapter), and the report with both arms and the
//! loss chart. Killed at random moments and rerun, it completes without redoing finished work;
//! a rerun of a finished build computes nothing.

mod common;

use common::scripted::{Reply, Request, Server, not_found, py};
use common::{Project, Rng, assert_ok};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Base arm on the scripted server; SmolLM2 in process is trained and is the fine-tuned arm.
fn project(url: &str) -> Project {
    let p = common::smollm2_training_project(url, 4);
    p.set("arms.finetuned.model", "\"s\"");
    p.set("sampling.max_tokens", "64");
    p
}

fn build(p: &Project) -> std::process::Output {
    p.real(&["build", "report", "--jobs", "2"])
        .output()
        .unwrap()
}

fn show(p: &Project, what: &str) -> Value {
    let o = p.real(&["show", what, "--json"]).output().unwrap();
    assert_ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn check_finished(p: &Project) {
    let convert = show(p, "convert/gguf");
    let outputs = convert["outputs"].as_object().unwrap();
    for name in [
        "adapter.gguf",
        "model-q4_k_m.gguf",
        "model-f16.gguf",
        "Modelfile",
        "convert.json",
    ] {
        assert!(outputs.contains_key(name), "{name}: {convert}");
    }
    let rec = &outputs["convert.json"]["content"];
    assert_eq!(rec["skipped"], Value::Null, "{rec}");
    assert_eq!(
        rec["files"]["model-q4_k_m.gguf"]["merge"]["merged"],
        30 * 7,
        "{rec}"
    );
    // Both arms in the report, with the training curve.
    let html = std::fs::read_to_string(p.path("reports/report.html")).unwrap();
    assert!(html.contains("chart-loss"), "the loss chart");
    assert!(
        html.contains("the LoRA adapter of train output"),
        "the setup says the fine-tuned arm is the base plus train's adapter"
    );
    let trials: Vec<Value> = std::fs::read_to_string(p.path("reports/trials.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for arm in ["base", "finetuned"] {
        let n = trials.iter().filter(|t| t["arm"] == arm).count();
        assert_eq!(n, 4, "{arm} trials in the report");
    }
    let v = p.real(&["verify"]).output().unwrap();
    assert_ok(&v);
}

/// `pipe export dir` copies the model's files out, byte for byte; `pipe export ollama`
/// uploads the merged q4_k_m to a (scripted) Ollama API under the digest it claims and creates
/// the model from it.
fn check_exports(p: &Project) {
    let dir = p.path("out");
    let o = p
        .real(&["export", "dir", dir.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert_ok(&o);
    let listed: Vec<String> = serde_json::from_slice(&o.stdout).unwrap();
    let convert = show(p, "convert/gguf");
    for name in [
        "adapter.gguf",
        "model-q4_k_m.gguf",
        "model-f16.gguf",
        "Modelfile",
    ] {
        assert!(
            listed.iter().any(|f| f.ends_with(name)),
            "{name}: {listed:?}"
        );
        let id = convert["outputs"][name]["object"].as_str().unwrap();
        let stored = std::fs::read(p.path(&format!("store/objects-v1/{}/{id}", &id[..2]))).unwrap();
        assert!(
            std::fs::read(dir.join(name)).unwrap() == stored,
            "{name} copied exactly"
        );
    }
    for name in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(dir.join(name).exists(), "{name}");
    }

    let ollama = Server::start(|r: &Request| {
        if r.method == "HEAD" {
            Reply::Json(404, serde_json::json!({}), vec![])
        } else if r.path.starts_with("/api/blobs/") {
            Reply::Json(201, serde_json::json!({}), vec![])
        } else if r.path == "/api/create" {
            Reply::Json(200, serde_json::json!({"status": "success"}), vec![])
        } else {
            not_found()
        }
    });
    let o = p
        .real(&[
            "export",
            "ollama",
            "tdd-tuned",
            "--url",
            &ollama.url,
            "--json",
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    let reqs = ollama.requests();
    let upload = reqs
        .iter()
        .find(|r| r.method == "POST" && r.path.starts_with("/api/blobs/"))
        .expect("an upload");
    let claimed = upload.path.trim_start_matches("/api/blobs/");
    assert_eq!(
        claimed, upload.sha256,
        "the upload has the digest it claims"
    );
    assert_eq!(
        upload.len as u64,
        std::fs::metadata(dir.join("model-q4_k_m.gguf"))
            .unwrap()
            .len()
    );
    let create = reqs
        .iter()
        .find(|r| r.path == "/api/create")
        .expect("a create");
    assert_eq!(create.body["model"], "tdd-tuned");
    assert_eq!(
        create.body["files"]["model-q4_k_m.gguf"], claimed,
        "{}",
        create.body
    );
}

#[test]
fn the_whole_experiment_builds_resumes_after_kills_and_reruns_as_a_no_op() {
    let srv = common::passing_stack_server();
    let p = project(&srv.url);
    let t = Instant::now();
    assert_ok(&build(&p));
    let whole = t.elapsed();
    check_finished(&p);
    check_exports(&p);
    let again = build(&p);
    assert_ok(&again);
    let out = String::from_utf8_lossy(&again.stdout);
    for stage in [
        "trial", "extract", "format", "train", "convert", "eval", "report",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(stage) && l.contains("up to date")),
            "a rerun computes nothing: {out}"
        );
    }

    // Another store: killed at seeded random moments of the build, then rerun to the end.
    let k = project(&srv.url);
    let mut rng = Rng(7);
    for _ in 0..3 {
        let mut child = k
            .real(&["build", "report", "--jobs", "2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let at = Duration::from_millis(rng.below(whole.as_millis() as u64));
        std::thread::sleep(at);
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_ok(&build(&k));
    check_finished(&k);
    // What the uninterrupted build computed, the resumed one computed the same (trials,
    // samples and training are deterministic; so is the merge of the same adapter).
    for what in ["train/adapter", "convert/gguf"] {
        let (a, b) = (show(&p, what), show(&k, what));
        for name in [
            "adapter_model.safetensors",
            "model-q4_k_m.gguf",
            "adapter.gguf",
        ] {
            if let Some(x) = a["outputs"].get(name) {
                assert_eq!(x["object"], b["outputs"][name]["object"], "{what} {name}");
            }
        }
    }
}

#[test]
fn with_nothing_to_train_on_the_report_says_why_the_fine_tuned_arm_is_missing() {
    // Tests that never parse: no trial passes, extract keeps nothing, train skips.
    let srv = Server::start(|r: &Request| {
        if !r.is_chat() {
            return not_found();
        }
        Reply::Content(py("def test_broken(:\n    pass\n"))
    });
    let p = project(&srv.url);
    assert_ok(&build(&p));
    let convert = show(&p, "convert/gguf");
    assert!(
        convert["outputs"]["convert.json"]["content"]["skipped"]
            .as_str()
            .unwrap()
            .contains("no adapter"),
        "{convert}"
    );
    let md = std::fs::read_to_string(p.path("reports/report.md")).unwrap();
    assert!(md.contains("the fine-tuned arm was not run"), "{md}");
    let trials = std::fs::read_to_string(p.path("reports/trials.jsonl")).unwrap();
    assert!(!trials.contains("\"finetuned\""), "no fine-tuned trials");
}

/// The fine-tuned arm served by llama.cpp itself: a llama.cpp server (xllamacpp) on the base
/// GGUF with convert's adapter GGUF (`--lora`) is the fine-tuned arm's model; eval asks it,
/// train and convert are not redone for the change, and the report has both arms with the
/// server's model identity in its setup.
#[test]
fn the_fine_tuned_arm_served_by_llama_cpp_with_our_adapter() {
    let srv = common::passing_stack_server();
    let p = project(&srv.url);
    // llama.cpp on 2 cores needs more than the scripted server's 2 s per request.
    p.set("sampling.request_timeout_s", "300");
    assert_ok(
        &p.real(&["build", "convert", "--jobs", "2"])
            .output()
            .unwrap(),
    );
    let dir = p.path("out");
    assert_ok(
        &p.real(&["export", "dir", dir.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    let adapter = dir.join("adapter.gguf");
    // Two slots (eval runs two trials at once), a thread each.
    let llama = common::LlamaServer::start(
        common::SMOLLM2,
        1,
        2048,
        2,
        &["--lora", adapter.to_str().unwrap()],
    );

    p.add(
        "models.ft",
        &format!(
            "{{ backend = \"openai\", base_urls = [{:?}], name = \"smollm2-tuned\" }}",
            llama.url
        ),
    );
    p.set("arms.finetuned.model", "\"ft\"");
    let o = p
        .real(&["build", "report", "--jobs", "2", "--json"])
        .output()
        .unwrap();
    assert_ok(&o);
    let rep: Value = serde_json::from_slice(&o.stdout).unwrap();
    let computed = |stage: &str| {
        rep["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["target"] == stage)
            .map(|s| s["computed"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("{stage} in {rep}"))
    };
    assert_eq!(computed("train"), 0, "{rep}");
    assert_eq!(computed("convert"), 0, "{rep}");
    assert_eq!(computed("eval"), 4, "{rep}");
    // Every eval request went to llama.cpp and came back with its token counts.
    let trials: Vec<Value> = std::fs::read_to_string(p.path("reports/trials.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ft: Vec<&Value> = trials.iter().filter(|t| t["arm"] == "finetuned").collect();
    assert_eq!(ft.len(), 4);
    for t in &ft {
        assert_eq!(t["stage"], "eval");
        assert!(t["completion_tokens"].as_u64().unwrap() > 0, "{t}");
    }
    let html = std::fs::read_to_string(p.path("reports/report.html")).unwrap();
    assert!(
        html.contains("smollm2-tuned") && html.contains("llama.cpp-meta:"),
        "the served model and its digest in the setup"
    );
}
