//! The store under SIGKILL, under concurrent builders, with a worker that stops heart-beating,
//! with a corrupt byte, and under gc while it builds: each test runs twice, on a directory store (`dir::`) and on a bucket of a
//! real S3-compatible server (`bucket::`).

#![allow(clippy::print_stdout)]

mod common;
use common::{Project, Rng, s3::Moto, trial_items_computed};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which store a test's projects use.
#[derive(Clone)]
enum Backend {
    Dir,
    Bucket(Arc<Moto>),
}

impl Backend {
    fn project(&self, trials: u32, lease_ttl_s: f64) -> Project {
        let p = Project::new(trials, lease_ttl_s);
        match self {
            Backend::Dir => p,
            Backend::Bucket(m) => p.on_bucket(m),
        }
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod dir {
            $(#[test] fn $name() { super::$name(super::Backend::Dir) })*
        }
        mod bucket {
            $(#[test] fn $name() {
                super::$name(super::Backend::Bucket(std::sync::Arc::new(super::Moto::start())))
            })*
        }
    };
}

both!(
    sigkill_at_random_moments_then_resume,
    four_builders_compute_every_item_exactly_once,
    a_stopped_workers_lease_expires_and_is_taken_over,
    a_sigkilled_workers_lease_on_this_host_is_taken_over_at_once,
    failpoints_in_the_write_path_leave_a_consistent_store,
    a_flipped_byte_is_reported_and_never_used,
    gc_keeps_what_refs_reach_and_drops_the_rest,
    gc_with_zero_grace_during_a_build_never_leaves_a_dangling_ref,
);

fn report_output(p: &Project) -> String {
    p.stage_ref("report").expect("report built")["output"]
        .as_str()
        .unwrap()
        .to_string()
}

fn sigkill_at_random_moments_then_resume(b: Backend) {
    let seed = std::env::var("PIPE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("crash test seed: {seed} (rerun with PIPE_CRASH_SEED={seed})");
    let mut rng = Rng(seed);

    // The uninterrupted build, for comparison, and its duration to aim the kills.
    let reference = b.project(8, 5.0);
    let start = Instant::now();
    let mut c = reference.spawn(&["build", "report", "-j", "3"], 4);
    assert!(c.wait().unwrap().success());
    let full_ms = start.elapsed().as_millis() as u64;

    let p = b.project(8, 5.0);
    let mut run_of_pid: HashMap<u32, usize> = HashMap::new();
    // Fewer on a bucket, whose every build is slower; the same moments are covered.
    let kills = match b {
        Backend::Dir => 20,
        Backend::Bucket(_) => 10,
    };
    for run in 0..=kills {
        let mut child = p.spawn(&["build", "report", "-j", "3"], 4);
        run_of_pid.insert(child.id(), run);
        if run < kills {
            // Early kills land in `trial`, late ones in the aggregate stages; both matter.
            std::thread::sleep(Duration::from_millis(rng.below(full_ms + 50)));
            let _ = child.kill();
            let _ = child.wait();
            let v = p.run(&["verify"]);
            assert!(
                v.status.success(),
                "seed {seed}, kill {run}: verify found corruption:\n{}",
                String::from_utf8_lossy(&v.stdout)
            );
        } else {
            assert!(
                child.wait().unwrap().success(),
                "seed {seed}: final build failed"
            );
        }
    }
    // No finished item was recomputed: once a record exists, no later run computes its item.
    let committed_in: HashMap<(String, String), usize> = p
        .records()
        .into_iter()
        .map(|(stage, item, pid)| ((stage, item), run_of_pid[&pid]))
        .collect();
    for (f, item, pid) in p.log_lines() {
        let stage_of = |f: &str| -> Vec<String> {
            match f {
                "trial" => vec!["trial".into(), "eval".into()],
                "derive" => vec!["format".into(), "train".into(), "convert".into()],
                other => vec![other.to_string()],
            }
        };
        let run = run_of_pid[&pid];
        let done_in = stage_of(&f)
            .iter()
            .filter_map(|s| committed_in.get(&(s.clone(), item.clone())))
            .min()
            .copied();
        if let Some(done_in) = done_in {
            assert!(
                run <= done_in,
                "seed {seed}: {f} {item} recomputed in run {run} after its record was committed in run {done_in}"
            );
        }
    }
    assert!(p.run(&["verify"]).status.success());
    assert!(p.ok(&["status"]).lines().all(|l| l.contains("up to date")));
    assert_eq!(report_output(&p), report_output(&reference), "seed {seed}");
    assert_eq!(
        p.stage_ref("trial").unwrap()["output"],
        reference.stage_ref("trial").unwrap()["output"]
    );
}

fn four_builders_compute_every_item_exactly_once(b: Backend) {
    let p = b.project(10, 5.0);
    let children: Vec<_> = (0..4)
        .map(|_| p.spawn(&["build", "report", "-j", "2"], 5))
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for (f, item, _) in p.log_lines() {
        *seen.entry((f, item)).or_default() += 1;
    }
    for (k, n) in &seen {
        assert_eq!(*n, 1, "{k:?} computed {n} times");
    }
    let records = p.records();
    // 6 tasks × 10 × (base + finetuned) + extract, format, train, convert, report.
    assert_eq!(records.len(), 6 * 10 * 2 + 5);
    assert_eq!(seen.len(), records.len());
    let producers: HashSet<u32> = records.iter().map(|r| r.2).collect();
    assert!(
        producers.len() >= 2,
        "the work was not shared: {producers:?}"
    );
    assert!(p.ok(&["status"]).lines().all(|l| l.contains("up to date")));
}

fn a_stopped_workers_lease_expires_and_is_taken_over(b: Backend) {
    let p = b.project(1, 2.0);
    // A holds the first trial item and then stops heart-beating (SIGSTOP: alive, silent).
    let mut a = p.spawn(&["build", "trial", "-j", "1"], 600_000);
    p.wait_for_a_lease();
    unsafe { libc::kill(a.id() as i32, libc::SIGSTOP) };
    let st = p.ok(&["status"]);
    assert!(
        st.contains(&format!(":{}", a.id())) && st.contains("running 1"),
        "status must name the holder: {st}"
    );
    let json: serde_json::Value = serde_json::from_str(&p.ok(&["status", "--json"])).unwrap();
    let running = json
        .as_array()
        .unwrap()
        .iter()
        .find_map(|t| t["running"].as_array())
        .expect("a stage with running items");
    assert_eq!(running[0]["pid"], a.id(), "{json}");
    assert!(running[0]["since_ms"].as_u64().unwrap() > 0);
    // B finishes everything, including A's item once its lease expires.
    let t1 = Instant::now();
    let b = p.cmd(&["build", "trial", "-j", "2"]).output().unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert!(
        t1.elapsed() >= Duration::from_millis(1000),
        "took over a live lease too early"
    );
    let _ = a.kill();
    let _ = a.wait();
    let records = p.records();
    assert_eq!(records.len(), 6);
    assert!(records.iter().all(|r| r.2 != a.id()));
    assert!(p.ok(&["status"]).starts_with("trial    up to date"));
}

fn a_sigkilled_workers_lease_on_this_host_is_taken_over_at_once(b: Backend) {
    let p = b.project(1, 60.0);
    let mut a = p.spawn(&["build", "trial", "-j", "1"], 600_000);
    p.wait_for_a_lease();
    let _ = a.kill();
    let _ = a.wait();
    let t1 = Instant::now();
    p.ok(&["build", "trial"]);
    // Far below the 60 s TTL: the holder is known dead (same host, same boot, pid gone).
    assert!(t1.elapsed() < Duration::from_secs(30));
}

fn failpoints_in_the_write_path_leave_a_consistent_store(b: Backend) {
    let points: &[&str] = match b {
        // Temp file written, synced, moved into place.
        Backend::Dir => &["atomic:written", "atomic:synced", "atomic:renamed"],
        // Right before a PUT is sent and right after it landed.
        Backend::Bucket(_) => &["bucket:sending", "bucket:written"],
    };
    for point in points
        .iter()
        .chain(&["lease:committed", "build:before-ref"])
    {
        for nth in [1, 7] {
            let p = b.project(2, 5.0);
            let o = p
                .cmd(&["build", "report", "-j", "1"])
                .env("PIPE_FAILPOINT", format!("{point}:{nth}"))
                .output()
                .unwrap();
            assert!(!o.status.success(), "{point}:{nth} did not fire");
            let v = p.run(&["verify"]);
            assert!(
                v.status.success(),
                "{point}:{nth}: {}",
                String::from_utf8_lossy(&v.stdout)
            );
            p.ok(&["build", "report"]);
            if let Backend::Dir = b {
                let tmp = std::fs::read_dir(p.path("store/tmp-v1")).unwrap().count();
                assert_eq!(tmp, 0, "{point}:{nth}: orphaned temp files were not reaped");
            }
            assert!(p.ok(&["status"]).lines().all(|l| l.contains("up to date")));
        }
    }
}

fn a_flipped_byte_is_reported_and_never_used(b: Backend) {
    let reference = b.project(2, 5.0);
    reference.ok(&["build", "report"]);
    for run_verify in [true, false] {
        let p = b.project(2, 5.0);
        p.ok(&["build", "report"]);
        // Flip a byte of one trial's output object.
        let show: serde_json::Value =
            serde_json::from_str(&p.ok(&["show", "trial/queue/base/1", "--json"])).unwrap();
        let obj = show["outputs"]["trial"]["object"]
            .as_str()
            .unwrap()
            .to_string();
        p.flip_a_byte(&obj);
        p.clear_log();
        if run_verify {
            let v = p.run(&["verify"]);
            assert_eq!(v.status.code(), Some(1));
            let out = String::from_utf8_lossy(&v.stdout);
            assert!(out.contains(&obj), "{out}");
            assert!(p.ok(&["status"]).starts_with("trial    partial 11 of 12"));
        } else {
            // Force `report` to re-read every trial: change a training parameter.
            p.set("train.epochs", "4");
        }
        let out = p.ok(&["build", "report"]);
        assert!(
            trial_items_computed(&p) == ["queue/base/1"],
            "only the corrupt item is recomputed: {:?}\n{out}",
            p.log_lines()
        );
        assert!(p.run(&["verify"]).status.success());
        if run_verify {
            assert_eq!(
                p.stage_ref("report").unwrap()["output"],
                reference.stage_ref("report").unwrap()["output"]
            );
        } else {
            assert!(out.contains("healed"), "{out}");
        }
    }
}

fn gc_keeps_what_refs_reach_and_drops_the_rest(b: Backend) {
    let p = b.project(2, 5.0);
    p.ok(&["build", "report"]);
    p.set("experiment.seed", "1");
    p.ok(&["build", "report"]);
    // With the default grace everything is fresh: nothing goes.
    let kept = p.ok(&["gc"]);
    assert!(kept.starts_with("removed 0 objects"), "{kept}");
    let out = p.ok(&["gc", "--grace", "0s"]);
    assert!(!out.starts_with("removed 0 objects"), "{out}");
    assert!(p.run(&["verify"]).status.success());
    assert!(p.ok(&["status"]).lines().all(|l| l.contains("up to date")));
    p.clear_log();
    p.ok(&["build", "report"]);
    assert!(p.log_lines().is_empty());
}

fn gc_with_zero_grace_during_a_build_never_leaves_a_dangling_ref(b: Backend) {
    let p = b.project(6, 5.0);
    let mut b = p.spawn(&["build", "report", "-j", "2"], 8);
    // Collect aggressively while the build runs: the worst case for a shared store.
    while b.try_wait().unwrap().is_none() {
        let _ = p.run(&["gc", "--grace", "0s"]);
    }
    // The build may have lost work to gc (a fresh object removed before its record), but it
    // never commits a record without its objects, nor a ref without its records.
    let v = p.run(&["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    p.ok(&["build", "report"]);
    assert!(p.run(&["verify"]).status.success());
    assert!(p.ok(&["status"]).lines().all(|l| l.contains("up to date")));
}
