//! The trial stage end to end through a real llama.cpp server (the xllamacpp wheel) serving the
//! real SmolLM2-135M GGUF, both installed by scripts/setup.sh. The model is weak: what this
//! shows is that every trial is recorded with real replies and real guard verdicts.

mod common;

use common::Project;
use std::path::Path;

#[test]
fn a_small_experiment_through_a_real_llama_cpp_server() {
    let srv = common::LlamaServer::smollm2(2, 4096);
    let p = Project::openai(
        &srv.url,
        &["stack", "calculator"],
        2,
        1,
        "retries = 2\nbackoff_ms = 200",
    );
    p.set("sampling.max_tokens", "384");
    p.set("sampling.request_timeout_s", "120");
    p.baseline_only();
    let o = p
        .real(&["build", "trial", "report", "--jobs", "2"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let trials = p.trials("trial");
    assert_eq!(trials.len(), 4);
    for (id, t) in &trials {
        let attempts = t["attempts"].as_array().unwrap();
        assert!(!attempts.is_empty() && attempts.len() <= 4, "{id}");
        for a in attempts {
            assert!(
                !a["reply"].as_str().unwrap().is_empty(),
                "{id}: a real reply"
            );
            assert!(a["completion_tokens"].as_u64().unwrap() > 0, "{id}");
            assert!(a["verdict"].is_object(), "{id}: a real verdict");
            assert_eq!(a["passed"] == true, a["feedback"] == "", "{id}");
        }
        // The trial's outcome follows from its last attempt.
        let last = attempts.last().unwrap();
        if t["passed"] == true {
            assert_eq!(last["step"], "impl");
            assert_eq!(last["passed"], true);
        } else {
            assert_eq!(last["passed"], false);
        }
    }
    let st = p.real(&["status"]).output().unwrap();
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(st.contains("trial    up to date (4 items)"), "{st}");
    assert!(st.contains("report   up to date"), "{st}");

    // The report of this real run renders: well-formed HTML with its charts, every trial named.
    let html = std::fs::read_to_string(p.path("reports/report.html")).unwrap();
    let ids = common::html_ids(&html);
    for chart in common::BASELINE_CHARTS {
        assert!(ids.iter().any(|i| i == chart), "{chart}");
    }
    for id in trials.keys() {
        assert!(html.contains(&format!("trial/{id} ")), "{id} is named");
    }
    if let Ok(keep) = std::env::var("PIPE_KEEP_REPORT") {
        for f in ["report.md", "report.html", "trials.csv", "summary.csv"] {
            std::fs::copy(p.path(&format!("reports/{f}")), Path::new(&keep).join(f)).unwrap();
        }
    }
    // Rebuilding with nothing changed runs nothing.
    let o = p.real(&["build", "report", "--json"]).output().unwrap();
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        rep["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["computed"] == 0),
        "{rep}"
    );
}
