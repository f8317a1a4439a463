//! A team on one bucket: four `pipe build trial` processes share a 6 × 20 experiment on a real
//! S3-compatible server (moto), one is SIGKILLed midway, and the others finish its work; no
//! credential ever reaches the store or an output.

mod common;
use common::s3::{Moto, SECRET};
use common::scripted::{IMPL, Server};
use common::{Project, TASKS, slow_stack_server};
use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every task gets the stack's tests and implementation (other tasks' trials then fail their
/// implementation step: a failed trial is computed and recorded like a passed one), each reply
/// after 150 ms, as from a busy server.
fn server() -> Server {
    slow_stack_server(Duration::from_millis(150), IMPL)
}

fn worker(p: &Project) -> Child {
    p.real(&["build", "trial", "-j", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn four_workers_on_a_bucket_share_the_trials_and_survive_a_sigkill() {
    let moto = Arc::new(Moto::start());
    let s = server();
    let p = Project::openai(&s.url, &TASKS, 20, 0, "").on_bucket(&moto);
    p.baseline_only();
    p.set("store.lease_ttl_s", "3");
    let mut workers: Vec<Child> = (0..4).map(|_| worker(&p)).collect();
    // Kill one once the work is well under way.
    let t0 = Instant::now();
    while p.records().len() < 30 {
        assert!(t0.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut victim = workers.remove(1);
    let _ = victim.kill();
    let _ = victim.wait();
    let mut outputs = Vec::new();
    for w in workers {
        let o = w.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outputs.push(o);
    }
    // Every trial has exactly one record; the work was shared.
    let records = p.records();
    assert_eq!(records.len(), 6 * 20, "every trial recorded once");
    let mut by_pid: HashMap<u32, usize> = HashMap::new();
    for r in &records {
        *by_pid.entry(r.2).or_default() += 1;
    }
    assert!(by_pid.len() >= 3, "the work was not shared: {by_pid:?}");
    // Computed once: each trial's tests step was asked once, except the trials the victim had
    // in flight (at most its -j), which another worker took over after its lease expired.
    let mut asked: HashMap<u64, usize> = HashMap::new();
    for r in s.chats().iter().filter(|r| r.is_tests_step()) {
        *asked.entry(r.body["seed"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(asked.len(), 120);
    let twice: usize = asked.values().map(|n| n - 1).sum();
    assert!(
        twice <= 2,
        "{twice} trials computed again (the victim ran -j 2)"
    );
    // verify is clean and status says it is done, without a request per record.
    let v = p.real(&["verify"]).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let st = p.real(&["status"]).output().unwrap();
    let status = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(status.starts_with("trial    up to date"), "{status}");

    // The planted secret is nowhere: not in any output, not in any stored value.
    for o in outputs.iter().chain([&v, &st]) {
        assert!(!String::from_utf8_lossy(&o.stdout).contains(SECRET));
        assert!(!String::from_utf8_lossy(&o.stderr).contains(SECRET));
    }
    let store = p.store();
    let all = store.backend().list("").unwrap();
    assert!(all.len() > 120);
    for m in &all {
        let b = store.backend().get(&m.key).unwrap().unwrap();
        assert!(
            !String::from_utf8_lossy(&b.bytes).contains(SECRET),
            "{} holds the secret",
            m.key
        );
    }
    for e in walkdir::WalkDir::new(p.dir.path()).into_iter().flatten() {
        if e.file_type().is_file() {
            let text = String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).to_string();
            assert!(
                !text.contains(SECRET),
                "{} holds the secret",
                e.path().display()
            );
        }
    }
}

#[test]
fn an_unreachable_bucket_is_a_clear_error_that_names_no_secret() {
    let s = server();
    let p = Project::openai(&s.url, &["stack"], 1, 0, "");
    p.baseline_only();
    p.set("store.path", "\"s3://nowhere/team\"");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t0 = Instant::now();
    let o = p
        .real(&["status"])
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "pipe-test-key")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("s3://nowhere/team"), "{err}");
    assert!(!err.contains(SECRET) && !String::from_utf8_lossy(&o.stdout).contains(SECRET));
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "gave up too slowly"
    );
    assert!(s.chats().is_empty());
}
