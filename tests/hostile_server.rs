//! A model server that misbehaves on purpose: bodies too large or endless, replies that are not
//! answers, a server that stops answering. Each must stop the build as an infrastructure error
//! with nothing recorded (or, where the model itself spoke, be an attempt), within bounded
//! memory and time. The guards are real (pytest in bubblewrap).

mod common;

use common::scripted::{IMPL, Reply, Request, Server, TESTS, completion, not_found, py};
use common::{Project, assert_ok};
use serde_json::json;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Run `pipe build trial` and return its output and its peak RSS in MiB (VmHWM, polled: it
/// only grows, so the last reading before exit holds the peak up to then).
fn build_with_peak(p: &Project) -> (Output, f64) {
    let child = p
        .real(&["build", "trial"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let done = Arc::new(AtomicBool::new(false));
    let poll = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut peak_kb = 0u64;
            while !done.load(Ordering::SeqCst) {
                if let Ok(s) = std::fs::read_to_string(&status)
                    && let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:"))
                {
                    let kb = l.split_whitespace().nth(1).unwrap().parse().unwrap_or(0);
                    peak_kb = peak_kb.max(kb);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak_kb
        })
    };
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::SeqCst);
    (out, poll.join().unwrap() as f64 / 1024.0)
}

/// A server that answers the tests step well and the implementation step with `bad`.
fn bad_at_impl(bad: fn() -> Reply) -> Server {
    Server::start(move |r: &Request| {
        if !r.is_chat() {
            not_found()
        } else if r.is_tests_step() {
            Reply::Content(py(TESTS))
        } else {
            bad()
        }
    })
}

fn assert_stopped_with_nothing_recorded(name: &str, p: &Project, o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{name}: the build must fail: {err}");
    assert!(err.contains("infrastructure"), "{name}: {err}");
    assert!(p.trials("trial").is_empty(), "{name}: nothing recorded");
    err
}

#[test]
fn oversized_and_endless_bodies_stop_the_build_in_bounded_memory_and_time() {
    type Case = (&'static str, fn() -> Reply);
    let cases: [Case; 3] = [
        ("100 MB, announced", || Reply::Huge {
            bytes: 100 << 20,
            announce: true,
        }),
        ("100 MB, unannounced", || Reply::Huge {
            bytes: 100 << 20,
            announce: false,
        }),
        ("endless", || Reply::Endless),
    ];
    for (name, bad) in cases {
        let srv = bad_at_impl(bad);
        let p = Project::openai(&srv.url, &["stack"], 1, 1, "retries = 1\nbackoff_ms = 50");
        // A generous timeout: the bound, not the clock, must end the body.
        p.set("sampling.request_timeout_s", "120");
        let t = Instant::now();
        let (o, peak) = build_with_peak(&p);
        let err = assert_stopped_with_nothing_recorded(name, &p, &o);
        assert!(err.contains("bytes"), "{name}: says why: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{name}: {:?}",
            t.elapsed()
        );
        assert!(peak < 100.0, "{name}: peak RSS {peak:.0} MiB");
    }
}

#[test]
fn the_largest_body_the_bound_allows_is_an_answer_in_bounded_memory() {
    // max_tokens 16384 allows 64 KiB + 4 MiB; send just under that, every attempt.
    let bytes = (64 << 10) + 256 * 16384 - 4096;
    let srv = Server::start(move |r: &Request| {
        if !r.is_chat() {
            not_found()
        } else if r.is_tests_step() {
            Reply::Content(py(TESTS))
        } else {
            Reply::Huge {
                bytes,
                announce: true,
            }
        }
    });
    let p = Project::openai(&srv.url, &["stack"], 2, 1, "retries = 0");
    p.set("sampling.max_tokens", "16384");
    let (o, peak) = build_with_peak(&p);
    assert_ok(&o);
    let trials = p.trials("trial");
    assert_eq!(trials.len(), 2);
    for t in trials.values() {
        assert_eq!(t["passed"], false);
        assert_eq!(t["attempts"].as_array().unwrap().len(), 3, "tests + 2 impl");
    }
    // Two trials at once. A trial holds a reply several times over at its peak (the body, the
    // text, its code, the retry prompt that quotes it, the record of every attempt and its
    // JSON): measured 151 MiB against 24 MiB with small replies, so ≈ 15 copies of a 4 MiB
    // reply per trial. At the default max_tokens (512: 192 KiB) that is a few MiB.
    assert!(peak < 200.0, "peak RSS {peak:.0} MiB");
}

#[test]
fn replies_that_are_not_answers_stop_the_build_and_the_models_own_words_are_attempts() {
    type Case = (&'static str, fn() -> Reply, &'static str);
    let not_answers: [Case; 4] = [
        (
            "null content",
            || {
                let mut v = completion("");
                v["choices"][0]["message"]["content"] = json!(null);
                Reply::Json(200, v, vec![])
            },
            "no content",
        ),
        (
            "error with status 200",
            || {
                Reply::Json(
                    200,
                    json!({"error": {"message": "model is still loading", "code": 503}}),
                    vec![],
                )
            },
            "model is still loading",
        ),
        (
            "a tool call",
            || {
                let mut v = completion("");
                v["choices"][0]["message"] = json!({"role": "assistant", "content": null,
                    "tool_calls": [{"id": "c", "type": "function",
                                    "function": {"name": "run", "arguments": "{}"}}]});
                Reply::Json(200, v, vec![])
            },
            "tool call",
        ),
        (
            "content a number",
            || {
                let mut v = completion("");
                v["choices"][0]["message"]["content"] = json!(7);
                Reply::Json(200, v, vec![])
            },
            "not text",
        ),
    ];
    std::thread::scope(|s| {
        for (name, bad, says) in not_answers {
            s.spawn(move || {
                let srv = bad_at_impl(bad);
                let p = Project::openai(&srv.url, &["stack"], 1, 1, "retries = 1\nbackoff_ms = 50");
                let o = p.real(&["build", "trial"]).output().unwrap();
                let err = assert_stopped_with_nothing_recorded(name, &p, &o);
                assert!(err.contains(says), "{name}: {err}");
            });
        }
        // A refusal is the model speaking: an attempt, failed for want of code.
        s.spawn(|| {
            let srv = bad_at_impl(|| {
                let mut v = completion("");
                v["choices"][0]["message"] = json!({"role": "assistant", "content": null,
                                                     "refusal": "I will not write that."});
                Reply::Json(200, v, vec![])
            });
            let p = Project::openai(&srv.url, &["stack"], 1, 1, "retries = 0");
            assert_ok(&p.real(&["build", "trial"]).output().unwrap());
            let t = &p.trials("trial")["stack/base/0"];
            assert_eq!(t["passed"], false, "{t}");
            assert_eq!(t["attempts"][1]["reply"], "I will not write that.", "{t}");
        });
        // Content as a list of text parts is an answer like any other.
        s.spawn(|| {
            let srv = bad_at_impl(|| {
                let mut v = completion("");
                let text = py(IMPL);
                let (a, b) = text.split_at(20);
                v["choices"][0]["message"]["content"] =
                    json!([{"type": "text", "text": a}, {"type": "text", "text": b}]);
                Reply::Json(200, v, vec![])
            });
            let p = Project::openai(&srv.url, &["stack"], 1, 0, "retries = 0");
            assert_ok(&p.real(&["build", "trial"]).output().unwrap());
            assert_eq!(p.trials("trial")["stack/base/0"]["passed"], true);
        });
    });
}

#[test]
fn a_server_that_stops_answering_costs_one_timeout_not_every_retry() {
    // Answers the identity probe, then accepts every connection and never answers again.
    let dead = Arc::new(AtomicBool::new(false));
    let d = Arc::clone(&dead);
    let srv = Server::start(move |r: &Request| {
        if r.is_chat() {
            d.store(true, Ordering::SeqCst);
        }
        if d.load(Ordering::SeqCst) {
            Reply::Hang(Duration::from_secs(120))
        } else {
            Reply::Json(200, json!({"data": [{"id": "test-model"}]}), vec![])
        }
    });
    // Before: 6 tries of 3 s plus backoff (1+2+4+8+16 s) ≈ 50 s.
    let p = Project::openai(&srv.url, &["stack"], 1, 1, "retries = 5\nbackoff_ms = 1000");
    p.set("sampling.request_timeout_s", "3");
    let t = Instant::now();
    let o = p.real(&["build", "trial"]).output().unwrap();
    let took = t.elapsed();
    let err = assert_stopped_with_nothing_recorded("dead", &p, &o);
    assert!(err.contains("does not answer"), "{err}");
    // One request timeout (3 s) and one probe (3 s), with room for start-up.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(srv.chats().len(), 1, "no retry against a dead server");
}

/// Characters that must never reach a terminal raw, found in `bytes`.
fn raw_controls(bytes: &[u8]) -> Vec<char> {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|&c| {
            matches!(c, '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
                        | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

/// Title change, screen clear, a C1 CSI, a carriage return and a bidi override.
const NASTY: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}2J\rspoof\u{202e}txt.py";
/// The same as a Python string literal's body.
const NASTY_PY: &str = r"\x1b]0;pwned\x07\x1b[2J\x9b2J\rspoof\u202etxt.py";

#[test]
fn nothing_a_server_model_or_sandbox_wrote_reaches_the_terminal_raw() {
    // A server whose errors carry escape sequences: the build's log lines and final error.
    let srv = Server::start(|r: &Request| {
        if r.is_chat() {
            Reply::Json(500, json!({"error": NASTY}), vec![])
        } else {
            not_found()
        }
    });
    let p = Project::openai(&srv.url, &["stack"], 1, 1, "retries = 1\nbackoff_ms = 50");
    let o = p.real(&["build", "trial"]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pwned"), "the message is still there: {err}");
    assert_eq!(
        raw_controls(&o.stderr),
        Vec::<char>::new(),
        "build stderr: {err}"
    );
    assert_eq!(raw_controls(&o.stdout), Vec::<char>::new());

    // A model whose replies and whose code's test output carry them: show and status.
    let srv = Server::start(|r: &Request| {
        if !r.is_chat() {
            not_found()
        } else if r.is_tests_step() {
            Reply::Content(format!("{NASTY}\n{}", py(TESTS)))
        } else {
            // The same characters, as Python escapes: the exception's message is printed raw
            // in pytest's report, so the feedback holds the characters themselves.
            let evil = format!(
                "{IMPL}\n\nclass Stack(Stack):\n    def pop(self):\n        raise RuntimeError(\"{NASTY_PY}\")\n"
            );
            Reply::Content(py(&evil))
        }
    });
    let p = Project::openai(&srv.url, &["stack"], 1, 0, "retries = 0");
    assert_ok(&p.real(&["build", "trial"]).output().unwrap());
    let t = &p.trials("trial")["stack/base/0"];
    assert_eq!(t["passed"], false, "{t}");
    let feedback = t["attempts"][1]["verdict"].to_string();
    assert!(
        feedback.contains('\u{9b}'),
        "the sandbox's output holds a C1: {feedback}"
    );
    let object = p.stage_ref("trial").unwrap()["manifest"]
        .as_str()
        .unwrap()
        .to_string();
    for args in [
        vec!["show", "trial/stack/base/0"],
        vec!["show", "trial/stack/base/0", "--json"],
        vec!["show", "trial"],
        vec!["show", &object[..12]],
        vec!["status"],
        vec!["status", "--json"],
        vec!["build", "trial"],
    ] {
        let o = p.real(&args).output().unwrap();
        assert_ok(&o);
        assert_eq!(
            raw_controls(&o.stdout),
            Vec::<char>::new(),
            "{args:?} stdout"
        );
        assert_eq!(
            raw_controls(&o.stderr),
            Vec::<char>::new(),
            "{args:?} stderr"
        );
        if args[0] == "show" && args.len() > 2 {
            // Still JSON, and the same: the escapes are JSON's own.
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert!(v.to_string().contains("pwned"));
        }
    }
}
