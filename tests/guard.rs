//! The guards against real generated-code behaviour: every hostile or broken attempt must end
//! as a clear verdict (never an error, never a pass it did not earn), within its time limit,
//! with the host untouched. Needs the venv from scripts/setup.sh and bubblewrap: a missing
//! one fails here with the fix, it is not skipped.

use pipe::guard::{self, Limits, Outcome, PyEnv, TestVerdict};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

fn env() -> PyEnv {
    PyEnv::discover(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{e}"))
}

/// Small limits keep the file fast: a hostile attempt costs at most ~5 s.
fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(5),
        memory_mb: 512,
        max_processes: 16,
        feedback_bytes: 2000,
    }
}

const STACK: &str = include_str!("fixtures/stack_impl.py");

const STACK_TESTS: &str = include_str!("fixtures/stack_tests.py");

/// Run the guard, check it came back within its limit, and return the verdict.
fn judge(tests: &str, implementation: &str) -> TestVerdict {
    let l = limits();
    let start = Instant::now();
    let v = guard::run_tests(&env(), &l, tests, implementation)
        .unwrap_or_else(|e| panic!("the guard failed instead of judging: {e}"));
    let took = start.elapsed();
    assert!(
        took < l.timeout + Duration::from_secs(3),
        "the guard took {took:?} (limit {:?}): {v:?}",
        l.timeout
    );
    assert!(
        v.feedback.len() <= l.feedback_bytes,
        "feedback of {} bytes",
        v.feedback.len()
    );
    assert_eq!(v.passed, v.outcome == Outcome::Passed, "{v:?}");
    v
}

/// Every live process whose command line contains `marker` (any user).
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == std::process::id().to_string() {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(marker) || comm.trim() == marker {
            found.push(format!("{name}: {cmd} ({})", comm.trim()));
        }
    }
    found
}

/// Wait up to 2 s for every process with `marker` to be gone.
fn assert_no_process(marker: &str) {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn discover_is_fast_and_names_versions() {
    let start = Instant::now();
    let e = env();
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(e.pytest, "9.2.0");
    assert!(e.python.starts_with("3."), "{}", e.python);
    let id = e.identity();
    assert_eq!(id["pytest"], "9.2.0");
    assert!(id["helpers"].as_str().unwrap().len() == 64, "{id}");
    assert!(
        !id.to_string().contains(&*e.venv.to_string_lossy()),
        "no paths in {id}"
    );
}

#[test]
fn correct_stack_with_good_tests_passes() {
    let v = judge(STACK_TESTS, STACK);
    assert_eq!(v.outcome, Outcome::Passed, "{v:?}");
    assert!(v.passed);
    assert_eq!((v.tests, v.failures, v.errors), (8, 0, 0), "{v:?}");
    assert_eq!(v.exit, Some(0));
    assert_eq!(v.feedback, "8 passed");
}

#[test]
fn failing_test_names_the_test_and_the_assertion_deterministically() {
    let buggy = STACK.replace("return self._items.pop()", "return self._items.pop(0)");
    let v = judge(STACK_TESTS, &buggy);
    assert_eq!(v.outcome, Outcome::Failed, "{v:?}");
    assert!(!v.passed);
    assert_eq!(v.failures, 1, "{v:?}");
    assert!(
        v.feedback
            .contains("FAILED test_implementation.py::test_pop_is_lifo"),
        "{}",
        v.feedback
    );
    assert!(
        v.feedback.contains("assert [0, 1, 2] == [2, 1, 0]"),
        "{}",
        v.feedback
    );
    assert!(v.feedback.ends_with("1 failed, 7 passed"), "{}", v.feedback);
    // An object repr carries an address; the feedback must not (it goes into prompts).
    let reprs = STACK_TESTS.to_string() + "\ndef test_repr():\n    assert Stack() == Stack()\n";
    let a = judge(&reprs, STACK);
    let b = judge(&reprs, STACK);
    assert_eq!(a.outcome, Outcome::Failed, "{a:?}");
    assert!(a.feedback.contains("0x..."), "{}", a.feedback);
    assert_eq!(a.feedback, b.feedback);
}

#[test]
fn fork_bomb_is_held_and_cleaned_up() {
    let tests = r#"
import ctypes, os
from implementation import Stack

def test_bomb():
    ctypes.CDLL(None).prctl(15, b"pipebomb4711", 0, 0, 0)
    while True:
        try:
            os.fork()
        except OSError:
            pass
"#;
    let v = judge(tests, STACK);
    assert!(!v.passed, "{v:?}");
    assert_eq!(v.outcome, Outcome::Timeout, "{v:?}");
    assert_no_process("pipebomb4711");
}

#[test]
fn busy_loop_times_out() {
    let tests =
        "from implementation import Stack\n\ndef test_spin():\n    while True:\n        pass\n";
    let v = judge(tests, STACK);
    assert_eq!(v.outcome, Outcome::Timeout, "{v:?}");
    assert!(
        v.feedback.starts_with("timed out after 5 s"),
        "{}",
        v.feedback
    );
}

#[test]
fn sleep_times_out() {
    let imp = format!("import time\n{STACK}\n    def wait(self):\n        time.sleep(10**6)\n");
    let tests = "from implementation import Stack\n\ndef test_wait():\n    Stack().wait()\n";
    let v = judge(tests, &imp);
    assert_eq!(v.outcome, Outcome::Timeout, "{v:?}");
}

#[test]
fn huge_allocation_is_a_memory_error() {
    let tests = "from implementation import Stack\n\ndef test_big():\n    s = Stack()\n    s.push(b'x' * (10 << 30))\n";
    let v = judge(tests, STACK);
    assert_eq!(v.outcome, Outcome::Failed, "{v:?}");
    assert!(v.feedback.contains("MemoryError"), "{}", v.feedback);
}

#[test]
fn no_network_to_the_host() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let tests = format!(
        "import socket\nfrom implementation import Stack\n\ndef test_call_home():\n    \
         s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    s.sendall(b'hi')\n"
    );
    let v = judge(&tests, STACK);
    assert_eq!(v.outcome, Outcome::Failed, "{v:?}");
    assert!(
        v.feedback.contains("ConnectionRefusedError"),
        "{}",
        v.feedback
    );
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the listener outside the sandbox saw {other:?}"),
    }
}

#[test]
fn writes_outside_the_sandbox_do_not_reach_the_host() {
    use std::os::unix::fs::PermissionsExt;
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let tag = format!("pipe-guard-pwned-{}", std::process::id());
    let e = env();
    let targets = [
        open.path().join("pwned"),
        Path::new("/tmp").join(&tag),
        Path::new("/root").join(&tag),
        e.venv.join(&tag),
    ];
    let inside: Vec<String> = targets
        .iter()
        .take(3)
        .map(|p| p.display().to_string())
        .chain([format!("/venv/{tag}")])
        .collect();
    let imp = format!(
        "for _p in {inside:?}:\n    try:\n        open(_p, 'w').write('pwned')\n    \
         except OSError:\n        pass\n{STACK}"
    );
    let v = judge(STACK_TESTS, &imp);
    assert_eq!(v.outcome, Outcome::Passed, "{v:?}");
    for t in &targets {
        assert!(!t.exists(), "{} appeared on the host", t.display());
    }
}

#[test]
fn os_exit_zero_at_import_is_not_a_pass() {
    let imp = format!("import os\nos._exit(0)\n{STACK}");
    let v = judge(STACK_TESTS, &imp);
    assert_eq!(v.outcome, Outcome::Crashed, "{v:?}");
    assert_eq!(v.exit, Some(0));
    assert!(
        v.feedback.contains("before writing its report"),
        "{}",
        v.feedback
    );
}

#[test]
fn forged_junit_report_is_not_a_pass() {
    let fake = r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="0" skipped="0" tests="8" time="0.1"><testcase classname="test_implementation" name="test_ok" time="0.1" /></testsuite></testsuites>"#;
    let imp = format!(
        "import os\nFAKE = {fake:?}\n\
         for _p in ['report.xml', '/tmp/report.xml', os.path.expanduser('~/report.xml'), '/job/report.xml']:\n    \
         try:\n        open(_p, 'w').write(FAKE)\n    except OSError:\n        pass\n\
         for _fd in (3, 4, 5):\n    try:\n        os.write(_fd, b'PIPE-GUARD-READY\\n' + FAKE.encode())\n    \
         except OSError:\n        pass\n\
         os._exit(0)\n{STACK}"
    );
    let v = judge(STACK_TESTS, &imp);
    assert!(!v.passed, "{v:?}");
    assert_eq!(v.outcome, Outcome::Crashed, "{v:?}");
}

/// Implementations of an empty `Stack` that make pytest report a pass by monkeypatching it,
/// each a different way in: report objects, the test runner, a plugin registered mid-run, the
/// call results, a code object swapped in place, an inherited property shadowed.
const TAMPERS: &[(&str, &str)] = &[
    (
        "report_init",
        include_str!("fixtures/tamper/report_init.py"),
    ),
    (
        "runtest_noop",
        include_str!("fixtures/tamper/runtest_noop.py"),
    ),
    (
        "registered_plugin",
        include_str!("fixtures/tamper/registered_plugin.py"),
    ),
    (
        "swallow_exceptions",
        include_str!("fixtures/tamper/swallow_exceptions.py"),
    ),
    ("code_swap", include_str!("fixtures/tamper/code_swap.py")),
    (
        "subclass_attr",
        include_str!("fixtures/tamper/subclass_attr.py"),
    ),
];

#[test]
fn monkeypatching_pytest_is_tampering_not_a_pass() {
    for (name, imp) in TAMPERS {
        let v = judge(STACK_TESTS, imp);
        assert!(!v.passed, "{name}: {v:?}");
        assert_eq!(v.outcome, Outcome::Tampered, "{name}: {v:?}");
        assert!(
            v.feedback.contains("pytest"),
            "{name}: says what happened: {}",
            v.feedback
        );
    }
}

#[test]
fn the_tamper_check_leaves_ordinary_pytest_features_alone() {
    // Fixtures, parametrize, classes, monkeypatch, capsys, tmp_path, caplog, xfail, skip,
    // warns, approx: all pass, nothing is called tampering.
    let v = judge(include_str!("fixtures/legit_tests.py"), STACK);
    assert_eq!(v.outcome, Outcome::Passed, "{v:?}");
    assert_eq!((v.tests, v.skipped), (9, 2), "{v:?}");
}

#[test]
fn a_correct_implementation_that_also_tampers_is_not_a_pass() {
    // The tests would pass on their own; the tamper alone fails the attempt, so the tampering
    // code never becomes a training sample.
    let imp = format!(
        "{}\n{STACK}",
        include_str!("fixtures/tamper/report_init.py")
    );
    let v = judge(STACK_TESTS, &imp);
    assert_eq!(v.outcome, Outcome::Tampered, "{v:?}");
}

#[test]
fn no_tests_is_not_a_pass() {
    let v = judge(
        "from implementation import Stack\n\ndef helper():\n    return 1\n",
        STACK,
    );
    assert_eq!(v.outcome, Outcome::NoTests, "{v:?}");
    assert_eq!(v.feedback, "no tests collected");
    let skipped = "import pytest\nfrom implementation import Stack\n\n@pytest.mark.skip\ndef test_x():\n    pass\n";
    let v = judge(skipped, STACK);
    assert_eq!(v.outcome, Outcome::NoTests, "{v:?}");
}

#[test]
fn collection_error_is_reported() {
    let v = judge(
        "from implementation import Queue\n\ndef test_q():\n    Queue()\n",
        STACK,
    );
    assert_eq!(v.outcome, Outcome::CollectionError, "{v:?}");
    assert!(v.feedback.contains("ImportError"), "{}", v.feedback);
    assert!(
        v.feedback.contains("cannot import name 'Queue'"),
        "{}",
        v.feedback
    );
    assert!(!v.feedback.contains("/job/"), "{}", v.feedback);
}

#[test]
fn a_hundred_megabytes_of_output_is_drained_not_kept() {
    let tests = format!(
        "{STACK_TESTS}\ndef test_flood():\n    print('x' * 100_000_000)\n    assert False, 'flooded'\n"
    );
    let v = judge(&tests, STACK);
    assert_eq!(v.outcome, Outcome::Failed, "{v:?}");
    // A passing test's captured output (-rA prints it) reaches our pipe: tens of MB.
    let tests = format!(
        "{STACK_TESTS}\ndef test_chatty():\n    for _ in range(50):\n        print('y' * 1_000_000)\n"
    );
    let v = judge(&tests, STACK);
    assert_eq!(v.outcome, Outcome::Passed, "{v:?}");
}

#[test]
fn a_setsid_daemon_does_not_survive() {
    let imp = format!(
        "import subprocess\nsubprocess.Popen(['sleep', '1234.5'], start_new_session=True)\n{STACK}"
    );
    let v = judge(STACK_TESTS, &imp);
    assert_eq!(v.outcome, Outcome::Passed, "{v:?}");
    assert_no_process("1234.5");
}

#[test]
fn syntax_check_uses_pythons_parser() {
    let e = env();
    let ok = guard::syntax_check(&e, STACK_TESTS).unwrap();
    assert!(ok.ok, "{ok:?}");
    assert_eq!(ok.feedback, "");
    let bad = guard::syntax_check(&e, "import pytest\n\ndef f(:\n    pass\n").unwrap();
    assert!(!bad.ok);
    assert!(
        bad.feedback
            .starts_with("SyntaxError: invalid syntax (line 3)"),
        "{}",
        bad.feedback
    );
    assert!(bad.feedback.contains("def f(:"), "{}", bad.feedback);
    let start = Instant::now();
    let deep = format!("x = {}1{}\n", "(".repeat(100_000), ")".repeat(100_000));
    let v = guard::syntax_check(&e, &deep).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(13),
        "{:?}",
        start.elapsed()
    );
    assert!(!v.ok, "{v:?}");
    assert!(v.feedback.len() < 1000, "{}", v.feedback);
    let huge = "x = 1\n".repeat(2_000_000);
    let v = guard::syntax_check(&e, &huge).unwrap();
    assert!(!v.ok && v.feedback.contains("at most"), "{v:?}");
}

#[test]
fn mutation_score_separates_asserting_from_idle_tests() {
    let e = env();
    let l = limits();
    let idle =
        guard::mutation_score(&e, &l, "def test_nothing():\n    assert True\n", STACK).unwrap();
    assert!(idle.mutants > 0, "{idle:?}");
    assert_eq!(idle.killed, 0, "{idle:?}");
    assert_eq!(idle.score, 0.0);
    let good = guard::mutation_score(&e, &l, STACK_TESTS, STACK).unwrap();
    assert!(good.score >= 0.6, "{good:#?}");
    assert_eq!(good.mutants, idle.mutants);
    assert!(good.mutants <= guard::MAX_MUTANTS);
}

#[test]
fn a_sandbox_that_cannot_start_pytest_is_an_error_not_a_verdict() {
    // 16 MiB of address space is too little for Python itself: nothing generated ever ran,
    // so this must not be recorded as a failed attempt.
    let l = Limits {
        memory_mb: 16,
        ..limits()
    };
    match guard::run_tests(&env(), &l, STACK_TESTS, STACK) {
        Err(e @ guard::GuardError::Sandbox { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("did not start pytest"), "{msg}");
            assert!(msg.contains("hint:"), "{msg}");
        }
        other => panic!("expected a sandbox error, got {other:?}"),
    }
}

/// bwrap zombies whose parent is `ppid`.
fn bwrap_zombies_of(ppid: u32) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (state, parent) = (f.next(), f.next().and_then(|p| p.parse::<u32>().ok()));
        if head.ends_with("(bwrap") && state == Some("Z") && parent == Some(ppid) {
            n += 1;
        }
    }
    n
}

#[test]
fn sandbox_runs_leave_no_zombies() {
    // bwrap's inner process outlives the one we wait for; orphaned, it used to be handed to
    // init, which in many containers (this one) never reaps. Now pipe adopts and reaps it.
    let me = std::process::id();
    let at_init = bwrap_zombies_of(1);
    for _ in 0..4 {
        judge(STACK_TESTS, STACK);
    }
    judge(STACK_TESTS, "import os\nos._exit(3)\n");
    assert!(
        bwrap_zombies_of(1) <= at_init,
        "sandbox processes were left to init"
    );
    // Other tests in this binary run sandboxes concurrently: theirs may be in flight for a
    // moment, so ours are reaped when a look finds none at all.
    let deadline = Instant::now() + Duration::from_secs(10);
    while bwrap_zombies_of(me) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} bwrap zombies are still ours",
            bwrap_zombies_of(me)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
