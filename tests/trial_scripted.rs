//! The trial stage against a scripted OpenAI-compatible server: the workflow's retries and
//! feedback, code extraction, and infrastructure faults that must never become failed trials.
//! The guards are real (pytest in bubblewrap, from the venv scripts/setup.sh makes).

mod common;

use common::scripted::{IMPL, Reply, Request, Server, TESTS, completion, not_found, py};
use common::{Project, assert_ok};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BAD_IMPL: &str = r#"class Stack:
    def __init__(self):
        self._items = []

    def push(self, item):
        self._items.append(item)

    def pop(self):
        if not self._items:
            raise IndexError("empty")
        return self._items.pop(0)

    def peek(self):
        if not self._items:
            raise IndexError("empty")
        return self._items[-1]

    def is_empty(self):
        return not self._items

    def size(self):
        return len(self._items)
"#;

fn run(p: &Project, args: &[&str]) -> std::process::Output {
    p.real(args).output().unwrap()
}

#[test]
fn passes_at_the_first_attempt_and_records_everything() {
    let srv = Server::start(|r: &Request| {
        if !r.is_chat() {
            return not_found();
        }
        Reply::Content(py(if r.is_tests_step() { TESTS } else { IMPL }))
    });
    let p = Project::openai(&srv.url, &["stack"], 2, 2, "");
    assert_ok(&run(&p, &["build", "trial"]));
    let trials = p.trials("trial");
    assert_eq!(trials.len(), 2, "{trials:?}");
    for t in trials.values() {
        assert_eq!(t["passed"], true, "{t}");
        assert_eq!(t["retries"], json!({"tests": 0, "impl": 0}));
        let a = t["attempts"].as_array().unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0]["step"], "tests");
        assert_eq!(a[0]["shape"], "python_block");
        assert_eq!(a[0]["code"], TESTS);
        assert!(
            a[0]["prompt"]
                .as_str()
                .unwrap()
                .contains("from implementation import Stack")
        );
        assert_eq!(a[1]["verdict"]["tests"], 3);
        assert_eq!(a[1]["prompt_tokens"], 100);
        assert_eq!(t["implementation"], IMPL);
        assert!(t["test_strength"]["mutants"].as_u64().unwrap() > 0);
    }
    // Each request carried the model name, the sampling and a seed; no two alike.
    let chats = srv.chats();
    assert_eq!(chats.len(), 4);
    let mut seeds: Vec<_> = chats
        .iter()
        .map(|r| r.body["seed"].as_u64().unwrap())
        .collect();
    seeds.sort();
    seeds.dedup();
    assert_eq!(seeds.len(), 4);
    assert_eq!(chats[0].body["model"], "test-model");
    assert_eq!(chats[0].body["temperature"], 0.7);
    // Nothing changed: nothing reruns, no request is made.
    assert_ok(&run(&p, &["build", "trial"]));
    assert_eq!(srv.chats().len(), 4);
}

#[test]
fn retries_carry_every_earlier_feedback() {
    // Tests: a syntax error, then good. Impl: a LIFO bug, then good.
    let srv = Server::start(|r: &Request| {
        if !r.is_chat() {
            return not_found();
        }
        let u = r.user();
        if r.is_tests_step() {
            if u.contains("Previous attempts") {
                Reply::Content(py(TESTS))
            } else {
                Reply::Content(py("def test_broken(:\n    pass\n"))
            }
        } else if u.contains("Previous attempts") {
            Reply::Content(py(IMPL))
        } else {
            Reply::Content(py(BAD_IMPL))
        }
    });
    let p = Project::openai(&srv.url, &["stack"], 1, 3, "");
    assert_ok(&run(&p, &["build", "trial"]));
    let t = &p.trials("trial")["stack/base/0"];
    assert_eq!(t["passed"], true, "{t}");
    assert_eq!(t["retries"], json!({"tests": 1, "impl": 1}));
    let a = t["attempts"].as_array().unwrap();
    assert_eq!(a.len(), 4);
    assert_eq!(a[0]["passed"], false);
    let fb0 = a[0]["feedback"].as_str().unwrap();
    assert!(
        fb0.contains("SyntaxError") && fb0.contains("line 1"),
        "{fb0}"
    );
    // The retry's prompt is the first prompt plus the feedback under its heading.
    let p1 = a[1]["prompt"].as_str().unwrap();
    assert!(p1.starts_with(a[0]["prompt"].as_str().unwrap()));
    assert!(p1.contains("## Previous attempts") && p1.contains(fb0));
    // The implementation's feedback names the failing test.
    let fb2 = a[2]["feedback"].as_str().unwrap();
    assert!(fb2.contains("test_push_pop"), "{fb2}");
    let chats = srv.chats();
    assert!(chats[3].user().contains(fb2));
    // The accepted tests appear in the implementation prompt once.
    assert_eq!(chats[2].user().matches("def test_push_pop").count(), 1);
}

#[test]
fn fails_after_rmax_and_no_code_is_a_failed_attempt() {
    let srv = Server::start(|r: &Request| {
        if !r.is_chat() {
            return not_found();
        }
        Reply::Content("I'm sorry, I can't write tests for that.".into())
    });
    let p = Project::openai(&srv.url, &["stack"], 1, 2, "");
    // A failed trial is a result, not an error: the build succeeds.
    assert_ok(&run(&p, &["build", "trial"]));
    let t = &p.trials("trial")["stack/base/0"];
    assert_eq!(t["passed"], false);
    assert_eq!(t["failed_step"], "tests");
    let a = t["attempts"].as_array().unwrap();
    assert_eq!(a.len(), 3, "rmax = 2 → three attempts");
    assert!(
        a.iter()
            .all(|a| a["shape"] == "whole" && a["passed"] == false)
    );
    assert_eq!(srv.chats().len(), 3);
    // The third prompt carries both earlier failures.
    assert!(srv.chats()[2].user().contains("### Attempt 2"));
}

#[test]
fn every_extraction_shape_end_to_end() {
    // The tests come back as an untagged block, the implementation as bare code after prose.
    let srv = Server::start(|r: &Request| {
        if !r.is_chat() {
            return not_found();
        }
        if r.is_tests_step() {
            Reply::Content(format!("```\n{TESTS}```"))
        } else {
            Reply::Content(format!("Sure, here is the class.\n{IMPL}"))
        }
    });
    let p = Project::openai(&srv.url, &["stack"], 1, 0, "");
    assert_ok(&run(&p, &["build", "trial"]));
    let t = &p.trials("trial")["stack/base/0"];
    assert_eq!(t["passed"], true, "{t}");
    assert_eq!(t["attempts"][0]["shape"], "any_block");
    assert_eq!(t["attempts"][1]["shape"], "code_start");
}

/// A server that answers the first `bad` chat requests with `fault`, then well.
fn flaky(bad: usize, fault: fn() -> Reply) -> Server {
    let n = Arc::new(AtomicUsize::new(0));
    Server::start(move |r: &Request| {
        if !r.is_chat() {
            return not_found();
        }
        if n.fetch_add(1, Ordering::SeqCst) < bad {
            return fault();
        }
        Reply::Content(py(if r.is_tests_step() { TESTS } else { IMPL }))
    })
}

type Fault = (&'static str, fn() -> Reply);

fn faults() -> Vec<Fault> {
    vec![
        ("500", || Reply::Json(500, json!({"error": "boom"}), vec![])),
        ("429", || {
            Reply::Json(
                429,
                json!({"error": "slow down"}),
                vec![("Retry-After".into(), "1".into())],
            )
        }),
        ("hang", || Reply::Hang(Duration::from_secs(4))),
        ("truncated JSON", || {
            let full = serde_json::to_vec(&completion("x")).unwrap();
            Reply::Raw(full[..full.len() / 2].to_vec())
        }),
        ("empty choices", || {
            Reply::Json(200, json!({"choices": [], "usage": {}}), vec![])
        }),
    ]
}

#[test]
fn transient_faults_are_retried_and_never_recorded() {
    std::thread::scope(|s| {
        for (name, fault) in faults() {
            s.spawn(move || {
                let srv = flaky(1, fault);
                let p = Project::openai(&srv.url, &["stack"], 1, 0, "retries = 3\nbackoff_ms = 50");
                let t0 = Instant::now();
                assert_ok(&run(&p, &["build", "trial"]));
                let t = &p.trials("trial")["stack/base/0"];
                assert_eq!(t["passed"], true, "{name}: {t}");
                assert_eq!(
                    t["attempts"].as_array().unwrap().len(),
                    2,
                    "{name}: no extra attempt"
                );
                assert_eq!(t["attempts"][0]["retried_requests"], 1, "{name}");
                if name == "429" {
                    assert!(
                        t0.elapsed() >= Duration::from_secs(1),
                        "Retry-After honoured"
                    );
                }
                assert_eq!(srv.chats().len(), 3, "{name}");
            });
        }
    });
}

#[test]
fn persistent_faults_stop_the_build_and_record_nothing() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut cases: Vec<(String, Option<Server>)> = vec![("refused".into(), None)];
    for (name, fault) in faults() {
        cases.push((name.into(), Some(flaky(usize::MAX, fault))));
    }
    std::thread::scope(|s| {
        for (name, srv) in &cases {
            let url = srv.as_ref().map_or(dead.clone(), |s| s.url.clone());
            s.spawn(move || {
                let p = Project::openai(&url, &["stack"], 2, 1, "retries = 2\nbackoff_ms = 50");
                let o = run(&p, &["build", "trial"]);
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(!o.status.success(), "{name}: the build must fail");
                assert!(err.contains(&url), "{name}: names the server: {err}");
                assert!(err.contains("infrastructure"), "{name}: {err}");
                assert!(p.trials("trial").is_empty(), "{name}: nothing recorded");
                let st = p.real(&["status", "--json"]).output().unwrap();
                let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
                let trial = st
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["target"] == "trial")
                    .unwrap();
                assert_eq!(trial["state"], "missing", "{name}: {trial}");
                if let Some(srv) = srv {
                    // 1 + retries requests for the one trial that ran, at most one per job.
                    assert!(srv.chats().len() >= 3, "{name}: retried");
                }
            });
        }
    });
}

#[test]
fn sigkill_mid_stage_then_rerun_redoes_no_finished_trial() {
    let srv = Server::start(|r: &Request| {
        if !r.is_chat() {
            return not_found();
        }
        let c = py(if r.is_tests_step() { TESTS } else { IMPL });
        Reply::Slow(Duration::from_millis(250), c)
    });
    let p = Project::openai(&srv.url, &["stack"], 6, 0, "");
    let mut child = p
        .real(&["build", "trial", "--jobs", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while p.trials("trial").len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let finished = p.trials("trial");
    assert!(finished.len() < 6, "killed mid-stage");
    let done_seeds: Vec<u64> = finished
        .values()
        .flat_map(|t| {
            t["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["seed"].as_u64().unwrap())
        })
        .collect();
    let before = srv.chats().len();
    assert_ok(&run(&p, &["build", "trial", "--jobs", "2"]));
    let after = srv.chats();
    for r in &after[before..] {
        let seed = r.body["seed"].as_u64().unwrap();
        assert!(
            !done_seeds.contains(&seed),
            "a finished trial was asked again"
        );
    }
    let all = p.trials("trial");
    assert_eq!(all.len(), 6);
    for (id, t) in &finished {
        assert_eq!(&all[id], t, "finished trials are untouched");
    }
    let v = p.real(&["verify"]).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn a_missing_sandbox_venv_stops_the_build_with_the_fix() {
    let srv = Server::start(|r: &Request| {
        if !r.is_chat() {
            return not_found();
        }
        Reply::Content(py(if r.is_tests_step() { TESTS } else { IMPL }))
    });
    let p = Project::openai(&srv.url, &["stack"], 1, 0, "");
    let o = p
        .real(&["build", "trial"])
        .env("PIPE_VENV", p.path("no-such-venv"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("scripts/setup.sh"), "{err}");
    assert!(p.trials("trial").is_empty());
    assert!(
        srv.chats().is_empty(),
        "no model time spent on a trial that cannot be judged"
    );
}

#[test]
fn the_served_models_digest_keys_trials_and_status_never_asks_the_server() {
    use std::sync::Mutex;
    let n_params = Arc::new(Mutex::new(134_515_008u64));
    let np = Arc::clone(&n_params);
    let srv = Server::start(move |r: &Request| {
        if r.path.ends_with("/v1/models") {
            // llama.cpp's shape; `n_ctx` is a server setting and must not matter.
            return Reply::Json(
                200,
                json!({"object": "list", "data": [{"id": "/models/x.gguf", "object": "model",
                    "meta": {"n_params": *np.lock().unwrap(), "n_vocab": 49152, "n_ctx": r.n}}]}),
                vec![],
            );
        }
        if !r.is_chat() {
            return not_found();
        }
        Reply::Content(py(if r.is_tests_step() { TESTS } else { IMPL }))
    });
    let p = Project::openai(&srv.url, &["stack"], 1, 0, "");
    assert_ok(&run(&p, &["build", "trial"]));
    assert_eq!(srv.chats().len(), 2);
    // Same model, another n_ctx: nothing reruns.
    assert_ok(&run(&p, &["build", "trial"]));
    assert_eq!(srv.chats().len(), 2);
    // status reads the cached identity: no request reaches the server.
    let before = srv.requests().len();
    let st = p.real(&["status"]).output().unwrap();
    assert!(String::from_utf8_lossy(&st.stdout).contains("trial    up to date"));
    assert_eq!(srv.requests().len(), before);
    // Another model behind the same name: the trial reruns.
    *n_params.lock().unwrap() = 1_777_088_000;
    assert_ok(&run(&p, &["build", "trial"]));
    assert_eq!(srv.chats().len(), 4);
}
