//! What invalidates what, what a corrupt byte does, and how bad input is refused.

mod common;
use common::{Project, trial_items_computed};

#[test]
fn changing_one_task_invalidates_only_its_items() {
    let p = Project::new(3, 5.0);
    p.ok(&["build", "report"]);
    p.clear_log();
    let path = p.path("tasks/stack.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let old = v["requirements"][1].as_str().unwrap().to_string();
    v["requirements"][1] = "push(item): put item on top; any value, None included".into();
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();

    let st = p.ok(&["status"]);
    let trial = st.lines().next().unwrap();
    assert!(trial.starts_with("trial    stale:"), "{st}");
    assert!(
        trial.contains("3 items") && trial.contains("stack/base/0"),
        "{trial}"
    );
    let ex = p.ok(&["explain", "trial"]);
    assert!(ex.contains("item.task.requirements[1]"), "{ex}");
    assert!(
        ex.contains(&old) || ex.contains(&old[..40]),
        "explain must show the old value: {ex}"
    );
    assert!(ex.contains("any value, None included"), "{ex}");
    let json: serde_json::Value = serde_json::from_str(&p.ok(&["status", "--json"])).unwrap();
    assert_eq!(json[0]["state"], "stale");

    p.ok(&["build", "report"]);
    let mut redone = trial_items_computed(&p);
    redone.sort();
    assert_eq!(redone, ["stack/base/0", "stack/base/1", "stack/base/2"]);
}

#[test]
fn reformatting_the_config_invalidates_nothing() {
    let p = Project::new(2, 5.0);
    p.ok(&["build", "report"]);
    p.clear_log();
    let cfg = p.path("pipeline.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    // Reverse the order of the sections, add comments and blank lines, re-space `=`.
    let mut sections: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with('[') || sections.is_empty() {
            sections.push(String::new());
        }
        let l = line.replacen(" = ", "   =   ", 1);
        sections
            .last_mut()
            .unwrap()
            .push_str(&format!("{l}\n\n# a comment\n"));
    }
    sections.reverse();
    std::fs::write(&cfg, sections.concat()).unwrap();
    assert_ne!(std::fs::read_to_string(&cfg).unwrap(), text);
    let st = p.ok(&["status"]);
    assert!(st.lines().all(|l| l.contains("up to date")), "{st}");
    p.ok(&["build", "report"]);
    assert!(
        p.log_lines().is_empty(),
        "reformatting recomputed {:?}",
        p.log_lines()
    );
}

#[test]
fn a_parameter_change_is_explained_old_to_new() {
    let p = Project::new(1, 5.0);
    p.ok(&["build", "report"]);
    p.set("sampling.temperature", "0.2");
    let ex = p.ok(&["explain", "report"]);
    assert!(
        ex.contains("params.synthetic.sampling.temperature: 0.7 → 0.2"),
        "{ex}"
    );
    assert!(ex.contains("report: waiting"), "{ex}");
    let st = p.ok(&["status"]);
    assert!(st.contains("temperature"), "{st}");
}

fn refused(p: &Project, args: &[&str], want: &[&str]) {
    let o = p.run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for w in want {
        assert!(err.contains(w), "{err:?} should mention {w:?}");
    }
    assert!(!p.path("store").exists(), "bad input wrote to the store");
}

#[test]
fn bad_input_is_one_line_exit_2_and_writes_nothing() {
    let edit = |from: &str, to: &str| {
        let p = Project::new(1, 5.0);
        let cfg = p.path("pipeline.toml");
        let t = std::fs::read_to_string(&cfg).unwrap();
        assert!(t.contains(from), "{from}");
        std::fs::write(&cfg, t.replacen(from, to, 1)).unwrap();
        p
    };
    // Malformed TOML.
    let p = edit("[sampling]", "[sampling");
    refused(&p, &["build", "report"], &["pipeline.toml:", "expected"]);
    // Unknown key.
    let p = edit("top_p = 0.95", "top_p = 0.95\ntop_k = 40");
    refused(
        &p,
        &["status"],
        &["pipeline.toml:", "`sampling.top_k`", "unknown field"],
    );
    // Wrong type.
    let p = edit("temperature = 0.7", "temperature = \"warm\"");
    refused(
        &p,
        &["build", "trial"],
        &["pipeline.toml:", "`sampling.temperature`", "invalid type"],
    );
    // Missing key.
    let p = edit("max_tokens = 1024\n", "");
    refused(
        &p,
        &["build", "trial"],
        &["pipeline.toml:", "missing field `max_tokens`"],
    );
    // A model that is not declared.
    let p = edit("model = \"qwen2.5-coder-1.5b\"", "model = \"gpt-9\"");
    refused(
        &p,
        &["status"],
        &["pipeline.toml:", "arms.base.model", "gpt-9"],
    );
    // Missing task file.
    let p = Project::new(1, 5.0);
    std::fs::remove_file(p.path("tasks/queue.json")).unwrap();
    let cfg = std::fs::read_to_string(p.path("pipeline.toml")).unwrap();
    let line = 1 + cfg
        .lines()
        .position(|l| l.starts_with("tasks = ["))
        .unwrap();
    let at = format!("pipeline.toml:{line}:");
    refused(
        &p,
        &["build", "report"],
        &[at.as_str(), "experiment.tasks[1]", "queue.json"],
    );
    // A task JSON missing a field.
    let p = Project::new(1, 5.0);
    let tp = p.path("tasks/lru_cache.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tp).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("signature");
    std::fs::write(&tp, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    refused(
        &p,
        &["build", "report"],
        &["lru_cache.json:", "missing field `signature`"],
    );
    // Malformed task JSON.
    let p = Project::new(1, 5.0);
    std::fs::write(
        p.path("tasks/stack.json"),
        "{\n  \"name\": \"Stack\",\n  oops\n}",
    )
    .unwrap();
    refused(&p, &["status"], &["stack.json:3:"]);
    // An unknown target.
    let p = Project::new(1, 5.0);
    refused(&p, &["build", "tests"], &["no target named `tests`"]);
    // A config file that does not exist.
    let o = std::process::Command::new(common::BIN)
        .args(["-f", "/nonexistent/pipeline.toml", "status"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/pipeline.toml"));
}

#[test]
fn a_missing_local_model_says_so_and_records_nothing() {
    let p = Project::new(1, 5.0);
    // `Project::cmd` passes --synthetic; run the binary directly for the real pipeline.
    let o = std::process::Command::new(common::BIN)
        .arg("-f")
        .arg(p.path("pipeline.toml"))
        .args(["build", "trial", "-j", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    // The default pipeline's local GGUF is not in the throwaway project.
    assert!(
        err.contains("models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
        "{err}"
    );
    assert!(err.contains("nothing was recorded"), "{err}");
    assert!(p.records().is_empty());
}

#[test]
fn dry_run_says_what_would_run_and_keep_going_finishes_the_rest() {
    let p = Project::new(2, 5.0);
    let out = p.ok(&["build", "report", "--dry-run"]);
    assert!(out.contains("trial    would run 12 of 12 items"), "{out}");
    assert!(!p.path("store/refs-v1/trial.json").exists());
    let o = p
        .cmd(&["build", "report", "--keep-going", "-j", "1"])
        .env("PIPE_SYNTH_FAIL", "calculator/base/1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("failed: trial calculator/base/1"), "{out}");
    // Every other trial was still built, and nothing downstream ran.
    assert!(p.ok(&["status"]).starts_with("trial    partial 11 of 12"));
    assert!(out.contains("extract  not run: waits on `trial`"), "{out}");
    p.ok(&["build", "report"]);
    assert!(p.ok(&["status"]).lines().all(|l| l.contains("up to date")));
}
