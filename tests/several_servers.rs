//! One arm, several model servers (`base_urls = [...]`): requests spread across them, a server
//! that dies midway is passed over without any trial failing because of it, and servers that
//! serve different models under the same name stop the build before a trial runs.

mod common;

use common::scripted::{IMPL, Reply, Request, Server, not_found, py};
use common::{Project, passing_stack_server, stack_tests_reply};
use serde_json::json;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A baseline-only project of `trials` `stack` trials whose one model is served by `servers`.
fn stack_project(trials: u32, servers: &[&Server]) -> Project {
    let p = Project::openai(&servers[0].url, &["stack"], trials, 0, "");
    p.baseline_only();
    serve_from(&p, servers);
    p
}

/// The model's `base_urls`: these servers.
fn serve_from(p: &Project, servers: &[&Server]) {
    let urls: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
    p.set("models.m.base_urls", &format!("{urls:?}"));
}

/// `pipe build trial` on `p`, running, once `server` has been asked for 4 replies (the
/// requests spread).
fn build_until_asked(p: &Project, server: &Server) -> std::process::Child {
    let child = p
        .real(&["build", "trial"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while server.chats().len() < 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "{} was never asked: requests do not spread",
            server.url
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn a_server_killed_midway_costs_no_trial() {
    let a = passing_stack_server();
    let b = passing_stack_server();
    let p = stack_project(12, &[&a, &b]);
    let child = build_until_asked(&p, &b);
    let by_b = b.chats().len();
    drop(b); // refuses connections from now on
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let trials = p.trials("trial");
    assert_eq!(
        trials.len(),
        12,
        "every trial recorded: {:?}",
        trials.keys()
    );
    for (id, t) in &trials {
        assert_eq!(t["passed"], true, "{id} failed: {t}");
        for a in t["attempts"].as_array().unwrap() {
            assert_eq!(
                a["retry"], 0,
                "{id}: a dead server must not cost an attempt"
            );
        }
    }
    // Every one of the 24 requests was answered once, by a or (before it died) by b.
    let by_a = a.chats().len();
    assert!(by_a >= 4, "server a served {by_a}");
    assert!(by_a + by_b >= 24, "{by_a} + {by_b}");
}

/// A server listing the model with this llama.cpp metadata, and passing `stack` trials.
fn server_with_meta(meta: serde_json::Value) -> Server {
    Server::start(move |r: &Request| {
        if r.path.ends_with("/models") {
            Reply::Json(
                200,
                json!({"object": "list", "data": [{"id": "test-model", "meta": meta}]}),
                vec![],
            )
        } else if !r.is_chat() {
            not_found()
        } else if r.is_tests_step() {
            Reply::Content(stack_tests_reply(1))
        } else {
            Reply::Content(py(IMPL))
        }
    })
}

#[test]
fn servers_that_serve_different_models_stop_the_build() {
    let a = server_with_meta(json!({"n_params": 1_543_714_304u64, "n_vocab": 151_936}));
    let b = server_with_meta(json!({"n_params": 494_032_768u64, "n_vocab": 151_936}));
    let p = stack_project(4, &[&a, &b]);
    let out = p.real(&["build", "trial"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "built with two different models: {stderr}"
    );
    assert!(
        stderr.contains("do not serve the same model") && stderr.contains(&b.url),
        "{stderr}"
    );
    assert!(p.trials("trial").is_empty(), "nothing may be recorded");
    assert!(
        a.chats().is_empty() && b.chats().is_empty(),
        "no model was asked"
    );

    // The same weights on both (n_ctx is a setting, not the model): the build goes ahead.
    let c =
        server_with_meta(json!({"n_params": 1_543_714_304u64, "n_vocab": 151_936, "n_ctx": 8192}));
    serve_from(&p, &[&a, &c]);
    let out = p.real(&["build", "trial"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.trials("trial").len(), 4);
}

/// A server that starts failing (503) midway rests: the requests go to the other server, and
/// the failing one is asked again only now and then, not for every other request.
#[test]
fn a_failing_server_rests_while_the_other_serves() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let a = passing_stack_server();
    let broken = Arc::new(AtomicBool::new(false));
    let after = Arc::new(AtomicUsize::new(0));
    let (br, af) = (Arc::clone(&broken), Arc::clone(&after));
    let b = Server::start(move |r: &Request| {
        if !r.is_chat() {
            return not_found();
        }
        if br.load(Ordering::SeqCst) {
            af.fetch_add(1, Ordering::SeqCst);
            return Reply::Json(503, json!({"error": "overloaded"}), vec![]);
        }
        Reply::Content(if r.is_tests_step() {
            stack_tests_reply(r.body["seed"].as_u64().unwrap() % 100_000)
        } else {
            py(IMPL)
        })
    });
    let p = stack_project(12, &[&a, &b]);
    let child = build_until_asked(&p, &b);
    broken.store(true, Ordering::SeqCst);
    let a_before = a.chats().len();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trials = p.trials("trial");
    assert_eq!(trials.len(), 12);
    assert!(trials.values().all(|t| t["passed"] == true));
    let a_after = a.chats().len() - a_before;
    let b_after = after.load(Ordering::SeqCst);
    assert!(a_after >= 10, "a served {a_after} after b broke");
    // Round robin would have sent b about as many as a; resting, b gets one try per rest
    // (5 s, then 10 s, …) — a handful over this build.
    assert!(
        b_after * 3 <= a_after,
        "the failing server was asked {b_after} times while a served {a_after}"
    );
}

/// The API key (`api_key_env`) goes to the server and nowhere else: not into the store, the
/// reports, the build's output, `status` or `show` — even when the server echoes it back in
/// its errors.
#[test]
fn the_api_key_reaches_the_server_and_nowhere_else() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const SECRET: &str = "sk-planted-5e3c9a1f0b7d42";
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = Arc::clone(&calls);
    let srv = Server::start(move |r: &Request| {
        if !r.is_chat() {
            return not_found();
        }
        // The first request fails with the request's own header quoted back.
        if c2.fetch_add(1, Ordering::SeqCst) == 0 {
            return Reply::Json(
                503,
                json!({"error": format!("overloaded; you sent {:?}", r.auth)}),
                vec![],
            );
        }
        Reply::Content(if r.is_tests_step() {
            stack_tests_reply(r.body["seed"].as_u64().unwrap() % 100_000)
        } else {
            py(IMPL)
        })
    });
    let p = Project::openai(
        &srv.url,
        &["stack"],
        2,
        0,
        "api_key_env = \"PIPE_TEST_API_KEY\"\nbackoff_ms = 10",
    );
    p.baseline_only();
    let mut outputs = Vec::new();
    for args in [
        &["build", "report", "--json"][..],
        &["status", "--json"],
        &["show", "trial/stack/base/0", "--json"],
    ] {
        let o = p
            .real(args)
            .env("PIPE_TEST_API_KEY", SECRET)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        outputs.push(o.stdout);
        outputs.push(o.stderr);
    }
    let chats = srv.chats();
    assert!(chats.len() > 4);
    for r in &chats {
        assert_eq!(r.auth.as_deref(), Some(format!("Bearer {SECRET}").as_str()));
    }
    for (i, out) in outputs.iter().enumerate() {
        assert!(
            !String::from_utf8_lossy(out).contains(SECRET),
            "output {i} holds the key: {}",
            String::from_utf8_lossy(out)
        );
    }
    let stderr = String::from_utf8_lossy(&outputs[1]);
    assert!(
        stderr.contains("[api key]"),
        "the echoed key is blanked: {stderr}"
    );
    for e in walkdir::WalkDir::new(p.path("."))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
    {
        let bytes = std::fs::read(e.path()).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the key",
            e.path().display()
        );
    }
}
