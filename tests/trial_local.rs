//! The trial stage end to end on the local backend: SmolLM2-135M run in process by candle, no
//! server anywhere. The model is weak; what this shows is that trials are recorded with real
//! replies, real token counts and real guard verdicts, and that the model's identity is its
//! file's digest.

mod common;

use common::Project;
use std::path::Path;

#[test]
fn a_trial_on_the_local_backend() {
    let gguf = common::model(common::SMOLLM2);
    let p = Project::local(&gguf, &["stack"], 1, 0);
    p.set("sampling.max_tokens", "128");
    p.set("sampling.request_timeout_s", "120");
    p.baseline_only();
    let o = p.real(&["build", "trial"]).output().unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let trials = p.trials("trial");
    if let Ok(dir) = std::env::var("PIPE_KEEP_TRIALS") {
        std::fs::write(
            Path::new(&dir).join("trials.json"),
            serde_json::to_string_pretty(&trials).unwrap(),
        )
        .unwrap();
    }
    assert_eq!(trials.len(), 1);
    for (id, t) in &trials {
        let attempts = t["attempts"].as_array().unwrap();
        // rmax 0: one try at the tests, and one at the implementation if they were accepted.
        assert!(!attempts.is_empty() && attempts.len() <= 2, "{id}");
        for a in attempts {
            let reply = a["reply"].as_str().unwrap();
            assert!(!reply.is_empty(), "{id}: a real reply");
            let n = a["completion_tokens"].as_u64().unwrap();
            assert!(n > 0 && n <= 128, "{id}: {n} tokens");
            assert!(a["prompt_tokens"].as_u64().unwrap() > 0, "{id}");
            assert!(a["verdict"].is_object(), "{id}: a real verdict");
            assert_eq!(a["passed"] == true, a["feedback"] == "", "{id}");
        }
        let last = attempts.last().unwrap();
        assert_eq!(t["passed"] == true, last["passed"] == true, "{id}");
    }
    // Nothing changed: a second build does nothing, and status says so without a model.
    let st = p.real(&["status"]).output().unwrap();
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(st.contains("trial    up to date (1 item)"), "{st}");

    // The same bytes named through Ollama's store: same identity, so nothing is stale.
    let ollama = tempfile::tempdir().unwrap();
    let models = ollama.path().join("models");
    let manifest = models.join("manifests/registry.ollama.ai/library/smollm2/135m");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::create_dir_all(models.join("blobs")).unwrap();
    let blob = models.join("blobs/sha256-0123abcd");
    if std::fs::hard_link(&gguf, &blob).is_err() {
        std::fs::copy(&gguf, &blob).unwrap();
    }
    std::fs::write(
        &manifest,
        r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:0123abcd","size":1}]}"#,
    )
    .unwrap();
    p.unset("models.m.gguf");
    p.add("models.m.ollama", "\"smollm2:135m\"");
    let cfg = std::fs::read_to_string(p.path("pipeline.toml")).unwrap();
    let with_ollama = |config: &str, args: &[&str]| {
        std::fs::write(p.path("pipeline.toml"), config).unwrap();
        p.real(args).env("OLLAMA_MODELS", &models).output().unwrap()
    };
    let b = with_ollama(&cfg, &["build", "trial"]);
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let st = with_ollama(&cfg, &["status"]);
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(st.contains("trial    up to date (1 item)"), "{st}");
    // A name Ollama does not have is a clear error that says how to get it.
    let b = with_ollama(
        &common::edit_toml(&cfg, "models.m.ollama", Some("\"smollm2:360m\""), true),
        &["build", "trial"],
    );
    let err = String::from_utf8_lossy(&b.stderr);
    assert!(!b.status.success(), "{err}");
    assert!(
        err.contains("smollm2:360m") && err.contains("ollama pull"),
        "{err}"
    );
}
