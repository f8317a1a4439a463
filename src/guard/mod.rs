//! The guards: CPython's own parser for the tests step, and pytest in a bubblewrap sandbox for
//! the implementation step, plus a mutation score that measures how much the tests check.
//!
//! Everything that touches model-written text runs in the same sandbox (`sandbox.rs`): the
//! syntax check and the mutant generator only parse, but a pathological input may still exhaust
//! the parser, and one code path with one set of limits is easier to trust than two.
//!
//! Outcomes split sharply in two, because the pipeline counts them differently:
//!
//! * **verdicts** (`Ok`): whatever the generated code does — fail, hang, fork-bomb, allocate
//!   10 GiB, print 100 MB, `os._exit(0)`, forge a report — is a judged attempt with feedback
//!   for the next prompt;
//! * **infrastructure errors** (`Err(GuardError)`): bubblewrap or the venv missing, the sandbox
//!   not starting pytest, host I/O. These must never be recorded as a failed attempt (that
//!   would blame the model for a broken machine), so a run only counts once our pytest plugin
//!   has reported from inside the sandbox that python, pytest and the plugin all started —
//!   which happens before any generated code is imported.
//!
//! Depends on nothing else of pipe: it judges code, knowing neither models nor the store.

mod mutants;
mod reap;
mod sandbox;
mod verdict;

pub use mutants::{MAX_MUTANTS, MutantResult, MutationReport, mutation_score};
pub use verdict::{Outcome, TestVerdict};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bump when the guard's behaviour changes in a way the Python helper hashes do not show (the
/// sandbox command line, verdict rules, feedback format), so keys that depend on verdicts
/// change with it.
pub const GUARD_VERSION: &str = "guard-2";

/// The pytest plugin that carries the report out through a pipe (see its docstring).
const PLUGIN_PY: &str = include_str!("py/pipe_guard_plugin.py");
/// The syntax guard's script.
const SYNTAX_PY: &str = include_str!("py/syntax_check.py");
/// The mutant generator.
const MUTANTS_PY: &str = include_str!("py/mutants.py");

/// What the sandbox runs, by file name under `/guard` in the sandbox.
const HELPERS: &[(&str, &str)] = &[
    ("pipe_guard_plugin.py", PLUGIN_PY),
    ("syntax_check.py", SYNTAX_PY),
    ("mutants.py", MUTANTS_PY),
];

/// The guard could not judge: infrastructure, never a failed attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// Something the guard needs is not installed (bubblewrap, the venv, pytest), or is
    /// installed where the sandbox cannot use it.
    #[error("guard setup: {0}")]
    Setup(String),
    /// A filesystem or process call on the host failed.
    #[error("guard: {context}: {source}")]
    Io {
        /// What the guard was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox ran but never got as far as our helper inside it (python, pytest or the
    /// plugin did not start), so nothing the generated code did can be judged.
    #[error("the sandbox did not start {what}: {detail}\nhint: {hint}")]
    Sandbox {
        /// What should have started (pytest, the syntax check, ...).
        what: String,
        /// Exit status and the tail of the sandbox's output.
        detail: String,
        /// What to check.
        hint: String,
    },
    /// One of our Python helpers answered something we cannot read (a bug in pipe).
    #[error("guard helper {helper} answered unreadably: {detail}")]
    Helper {
        /// Which helper.
        helper: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl GuardError {
    fn io(context: impl Into<String>, source: std::io::Error) -> GuardError {
        GuardError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The Python the guard runs: a venv made from the system's `/usr/bin/python3` with pytest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyEnv {
    /// The venv's directory (canonical).
    pub venv: PathBuf,
    /// Python's version, e.g. `3.11.2` (from `pyvenv.cfg`).
    pub python: String,
    /// pytest's version, e.g. `9.2.0` (from its `dist-info` directory name).
    pub pytest: String,
    /// The bubblewrap binary.
    pub bwrap: PathBuf,
}

const SETUP_HINT: &str = "run scripts/setup.sh";

impl PyEnv {
    /// Find the venv: `$PIPE_VENV`, else `<dir>/.venv` (`dir` is the pipeline.toml's
    /// directory), else the source tree's `.venv`.
    ///
    /// Reads files only — `pyvenv.cfg` for Python's version, the `pytest-*.dist-info`
    /// directory name for pytest's — and spawns nothing, because every `pipe status` calls
    /// this and must stay in the millisecond range. It also checks, with `stat`s, what would
    /// otherwise surface as a confusing sandbox failure on the first run: bubblewrap and
    /// `prlimit` exist, the venv's base interpreter lives under `/usr` (the only host tree the
    /// sandbox sees), and, when pipe runs as root, the venv is world-readable (the sandbox
    /// runs as `nobody`).
    pub fn discover(dir: &Path) -> Result<PyEnv, GuardError> {
        let venv = find_venv(dir)?;
        let venv = std::fs::canonicalize(&venv).map_err(|e| {
            GuardError::Setup(format!("cannot resolve the venv {}: {e}", venv.display()))
        })?;
        let cfg_path = venv.join("pyvenv.cfg");
        let cfg = std::fs::read_to_string(&cfg_path).map_err(|e| {
            GuardError::Setup(format!(
                "{} is not a venv ({}: {e}); {SETUP_HINT}",
                venv.display(),
                cfg_path.display()
            ))
        })?;
        let (python, home) = parse_pyvenv_cfg(&cfg).ok_or_else(|| {
            GuardError::Setup(format!(
                "{} names no Python version or home; recreate the venv ({SETUP_HINT})",
                cfg_path.display()
            ))
        })?;
        if !(home.starts_with("/usr/") || home == "/usr" || home.starts_with("/bin")) {
            return Err(GuardError::Setup(format!(
                "the venv {} was made from the Python in {home}, but the sandbox only sees /usr; \
                 recreate it from /usr/bin/python3 ({SETUP_HINT})",
                venv.display()
            )));
        }
        if !venv.join("bin/python").exists() {
            return Err(GuardError::Setup(format!(
                "{} has no bin/python; recreate the venv ({SETUP_HINT})",
                venv.display()
            )));
        }
        let pytest = find_pytest(&venv)?;
        if sandbox::running_as_root() {
            check_world_readable(&venv)?;
        }
        let bwrap = find_in_path("bwrap").ok_or_else(|| {
            GuardError::Setup(format!(
                "bubblewrap (bwrap) is not installed: apt-get install bubblewrap, or {SETUP_HINT}"
            ))
        })?;
        if !Path::new(sandbox::PRLIMIT).exists() {
            return Err(GuardError::Setup(format!(
                "{} is missing (util-linux): the sandbox sets its limits with it",
                sandbox::PRLIMIT
            )));
        }
        Ok(PyEnv {
            venv,
            python,
            pytest,
            bwrap,
        })
    }

    /// What verdicts depend on, for keys: the Python and pytest versions, a hash of the
    /// guard's own Python helpers and [`GUARD_VERSION`]. Not paths: moving the venv or the
    /// repository must not invalidate anything.
    pub fn identity(&self) -> Value {
        let mut h = blake3::Hasher::new();
        for (name, text) in HELPERS {
            h.update(name.as_bytes());
            h.update(&[0]);
            h.update(&(text.len() as u64).to_le_bytes());
            h.update(text.as_bytes());
        }
        json!({
            "guard": GUARD_VERSION,
            "python": self.python,
            "pytest": self.pytest,
            "helpers": h.finalize().to_hex().to_string(),
        })
    }
}

fn find_venv(dir: &Path) -> Result<PathBuf, GuardError> {
    if let Some(v) = std::env::var_os("PIPE_VENV") {
        let p = PathBuf::from(v);
        return if p.join("pyvenv.cfg").is_file() {
            Ok(p)
        } else {
            Err(GuardError::Setup(format!(
                "PIPE_VENV={} is not a venv (no pyvenv.cfg); unset it or {SETUP_HINT}",
                p.display()
            )))
        };
    }
    let candidates = [
        dir.join(".venv"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"),
    ];
    for c in &candidates {
        if c.join("pyvenv.cfg").is_file() {
            return Ok(c.clone());
        }
    }
    Err(GuardError::Setup(format!(
        "no Python venv for the guard: looked at $PIPE_VENV, {} and {}; {SETUP_HINT}",
        candidates[0].display(),
        candidates[1].display()
    )))
}

/// `(version, home)` from `pyvenv.cfg`. Python 3.11 writes `version = 3.11.2`; later ones
/// may write `version_info = 3.12.1.final.0`.
fn parse_pyvenv_cfg(cfg: &str) -> Option<(String, String)> {
    let mut version = None;
    let mut home = None;
    for line in cfg.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "version" | "version_info" if version.is_none() || k == "version" => {
                let three: Vec<&str> = v.split('.').take(3).collect();
                version = Some(three.join("."));
            }
            "home" => home = Some(v.to_string()),
            _ => {}
        }
    }
    Some((version?, home?))
}

fn find_pytest(venv: &Path) -> Result<String, GuardError> {
    let missing = || {
        GuardError::Setup(format!(
            "pytest is not installed in the venv {}; {SETUP_HINT}",
            venv.display()
        ))
    };
    let lib = venv.join("lib");
    let entries = std::fs::read_dir(&lib).map_err(|_| missing())?;
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with("python") {
            continue;
        }
        let Ok(site) = std::fs::read_dir(e.path().join("site-packages")) else {
            continue;
        };
        for s in site.flatten() {
            let n = s.file_name().to_string_lossy().into_owned();
            if let Some(v) = n
                .strip_prefix("pytest-")
                .and_then(|r| r.strip_suffix(".dist-info"))
            {
                return Ok(v.to_string());
            }
        }
    }
    Err(missing())
}

/// When pipe runs as root the sandbox runs as `nobody`, which must be able to read the venv.
/// Checks the few paths every run reads; a partly unreadable venv still fails later, as a
/// [`GuardError::Sandbox`].
fn check_world_readable(venv: &Path) -> Result<(), GuardError> {
    use std::os::unix::fs::PermissionsExt;
    for p in [
        venv.to_path_buf(),
        venv.join("pyvenv.cfg"),
        venv.join("lib"),
    ] {
        let mode = std::fs::metadata(&p)
            .map_err(|e| GuardError::io(format!("stat {}", p.display()), e))?
            .permissions()
            .mode();
        let need = if p.is_dir() { 0o005 } else { 0o004 };
        if mode & need != need {
            return Err(GuardError::Setup(format!(
                "{} is not readable by the sandbox user nobody (mode {:o}); run \
                 `chmod -R a+rX {}` or {SETUP_HINT}",
                p.display(),
                mode & 0o7777,
                venv.display()
            )));
        }
    }
    Ok(())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Limits of one sandboxed run (per pytest run; a mutation score makes several runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock limit: at this deadline the whole sandbox is killed and the verdict is
    /// [`Outcome::Timeout`]. The CPU-time limit is one second more, so a busy loop is caught
    /// by whichever comes first.
    pub timeout: Duration,
    /// Address-space limit per process, MiB (`RLIMIT_AS`: a 10 GiB allocation gets a
    /// `MemoryError` instead of the host's OOM killer).
    pub memory_mb: u64,
    /// Process limit inside the sandbox (`RLIMIT_NPROC`: holds a fork bomb).
    pub max_processes: u32,
    /// Bound on the feedback text, bytes (it goes into the next prompt).
    pub feedback_bytes: usize,
}

impl Default for Limits {
    /// 30 s, 1 GiB, 32 processes, 4 KiB of feedback: room for any of the benchmark's suites,
    /// tight enough that a runaway attempt costs little.
    fn default() -> Limits {
        Limits {
            timeout: Duration::from_secs(30),
            memory_mb: 1024,
            max_processes: 32,
            feedback_bytes: 4096,
        }
    }
}

/// The syntax guard's verdict on a test file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntaxVerdict {
    /// Did CPython's parser accept it?
    pub ok: bool,
    /// `SyntaxError: <msg> (line N)` and the offending line with a caret; empty when ok.
    pub feedback: String,
}

/// Larger files are judged without running them: they could not fit the sandbox's `/job`
/// tmpfs (bwrap would fail before our helper starts, which would read as a broken sandbox),
/// and no reply within a model's token limit comes near this.
const MAX_SOURCE_BYTES: usize = 8 << 20;

fn too_large(what: &str, len: usize) -> String {
    format!(
        "{what} is {len} bytes; the guard accepts at most {} MiB",
        MAX_SOURCE_BYTES >> 20
    )
}

/// The limits of a syntax check: a parse, however absurd the input, needs no more.
fn syntax_limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(10),
        memory_mb: 512,
        max_processes: 4,
        feedback_bytes: 2048,
    }
}

/// CPython's own parser, the venv's python: `compile(src, "test_implementation.py", "exec")`,
/// never executed.
///
/// It runs in the sandbox although `compile` executes nothing: the input is the model's, and
/// 100k nested brackets or a 50 MB file must end as a verdict within a time and memory limit,
/// not as a hung or crashed pipe. The sandbox costs ~10 ms on top of Python's start, and it is
/// the code path every other guard already trusts. A parser that runs out of time or memory is
/// a `not ok` verdict, like a syntax error.
pub fn syntax_check(env: &PyEnv, code: &str) -> Result<SyntaxVerdict, GuardError> {
    let limits = syntax_limits();
    if code.len() > MAX_SOURCE_BYTES {
        return Ok(SyntaxVerdict {
            ok: false,
            feedback: too_large("the test file", code.len()),
        });
    }
    let argv = [
        sandbox::PYTHON,
        "-I",
        "-S",
        "/guard/syntax_check.py",
        "/job/test_implementation.py",
    ];
    let run = sandbox::run(
        env,
        &sandbox::Job {
            files: &[("test_implementation.py", code.as_bytes())],
            argv: &argv,
            limits: &limits,
            channel_cap: 64 * 1024,
        },
    )?;
    let body = run.ready_body("the syntax check")?;
    if body.is_empty() || run.timed_out {
        let why = if run.timed_out {
            format!("ran out of time ({} s)", limits.timeout.as_secs())
        } else {
            format!("stopped ({})", run.status_text())
        };
        return Ok(SyntaxVerdict {
            ok: false,
            feedback: format!(
                "SyntaxError: Python's parser {why} on this file (too large or too deeply nested?)"
            ),
        });
    }
    #[derive(Deserialize)]
    struct Answer {
        ok: bool,
        feedback: String,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| GuardError::Helper {
        helper: "syntax_check.py",
        detail: e.to_string(),
    })?;
    Ok(SyntaxVerdict {
        ok: a.ok,
        feedback: verdict::bound_tail(&a.feedback, limits.feedback_bytes),
    })
}

/// The pytest command line, after the interpreter. `-p pipe_guard_plugin` carries the report
/// out (see the plugin); autoloading of installed plugins is off (environment) and the cache
/// is off so nothing but the report is written; `-rA --tb=short` is what the feedback quotes.
const PYTEST_ARGS: &[&str] = &[
    "-m",
    "pytest",
    "-q",
    "-p",
    "no:cacheprovider",
    "-p",
    "pipe_guard_plugin",
    "-rA",
    "--tb=short",
    "--color=no",
    "test_implementation.py",
];

/// The cap on the report read from the pipe. JUnit XML without captured output (pytest's
/// default `junit_logging = no`) stays far below this for any suite a model writes.
const REPORT_CAP: usize = 8 << 20;

/// Run the tests against the implementation in the sandbox and judge the result.
///
/// Both files go into a fresh tmpfs at `/job` in the sandbox (`implementation.py`,
/// `test_implementation.py`); nothing is written to the host, so there is nothing to clean
/// up, no disk to fill and no random path to leak into feedback. Passed requires all of: the
/// JUnit report arrived through the pipe (never a file: see `py/pipe_guard_plugin.py`) and
/// parses, at least one test ran and none failed or errored, and the sandbox exited normally
/// with status 0 before the deadline. Everything the generated code can do is a verdict;
/// `Err` only when the sandbox itself does not work.
///
/// Why the report cannot be forged by accident or by a careless model: pytest writes it to a
/// pipe it inherited, which our plugin moves out of the way before any generated code is
/// imported; files the code writes (`report.xml` in the working directory, `/tmp`, `$HOME`)
/// are never read, and `os._exit(0)` leaves the pipe empty, so both end as
/// [`Outcome::Crashed`]. Why monkeypatching pytest does not pass either: the plugin also sends
/// its own record — outcomes taken from the call results before any report object exists,
/// tests collected and run, and a fingerprint of pytest's functions, classes, plugins and
/// hooks taken before collection and compared at the end — and a pass needs the report and the
/// record to agree with nothing changed ([`Outcome::Tampered`] otherwise). What it does not
/// stop: code in the same interpreter that deliberately hunts for the pipe (`/proc/self/fd`,
/// the plugin's closures) and writes a forged record and report there, or that changes what
/// the tests compute without touching pytest. That takes an adversary who knows this design,
/// and the sandbox still bounds what such code can reach.
/// A process that forks and lets the child run pytest to the end writes a second report into
/// the same pipe; the concatenation does not parse, which is `Crashed` too.
pub fn run_tests(
    env: &PyEnv,
    limits: &Limits,
    tests: &str,
    implementation: &str,
) -> Result<TestVerdict, GuardError> {
    for (what, text) in [
        ("the test file", tests),
        ("the implementation", implementation),
    ] {
        if text.len() > MAX_SOURCE_BYTES {
            return Ok(verdict::refused(too_large(what, text.len())));
        }
    }
    let mut argv = vec![sandbox::PYTHON];
    argv.extend_from_slice(PYTEST_ARGS);
    let run = sandbox::run(
        env,
        &sandbox::Job {
            files: &[
                ("implementation.py", implementation.as_bytes()),
                ("test_implementation.py", tests.as_bytes()),
            ],
            argv: &argv,
            limits,
            channel_cap: REPORT_CAP,
        },
    )?;
    let report = run.ready_body("pytest")?;
    Ok(verdict::judge(&run, report, limits))
}

/// Run `python -m pytest` on the same two files with the same flags, but without the
/// sandbox, the limits or the report pipe (pytest writes its report to a file), for a
/// benchmark of what the sandbox costs. Never use it to judge anything: the files run with
/// pipe's own rights. Returns the wall time of the pytest process.
pub fn bench_bare_pytest(
    env: &PyEnv,
    tests: &str,
    implementation: &str,
) -> Result<Duration, GuardError> {
    let dir = std::env::temp_dir().join(format!(
        "pipe-guard-bench-{}-{}",
        std::process::id(),
        sandbox::unique()
    ));
    std::fs::create_dir(&dir).map_err(|e| GuardError::io(format!("mkdir {}", dir.display()), e))?;
    let result = (|| {
        for (name, text) in [
            ("implementation.py", implementation),
            ("test_implementation.py", tests),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, text)
                .map_err(|e| GuardError::io(format!("write {}", p.display()), e))?;
        }
        // The same flags less our plugin (`-p pipe_guard_plugin`): no report pipe here.
        let mut clean: Vec<&str> = Vec::new();
        let mut i = 0;
        while i < PYTEST_ARGS.len() {
            if PYTEST_ARGS[i] == "-p" && PYTEST_ARGS.get(i + 1) == Some(&"pipe_guard_plugin") {
                i += 2;
                continue;
            }
            clean.push(PYTEST_ARGS[i]);
            i += 1;
        }
        let start = Instant::now();
        let out = std::process::Command::new(env.venv.join("bin/python"))
            .args(&clean)
            .arg("--junitxml=report.xml")
            .current_dir(&dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &dir)
            .env("TMPDIR", &dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| GuardError::io("run bare pytest", e))?;
        let took = start.elapsed();
        tracing::debug!("bare pytest: {out} in {took:?}");
        Ok(took)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyvenv_cfg_versions() {
        let cfg = "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n";
        assert_eq!(
            parse_pyvenv_cfg(cfg),
            Some(("3.11.2".into(), "/usr/bin".into()))
        );
        let cfg = "home = /usr/local/bin\nversion_info = 3.13.1.final.0\n";
        assert_eq!(
            parse_pyvenv_cfg(cfg),
            Some(("3.13.1".into(), "/usr/local/bin".into()))
        );
        assert_eq!(parse_pyvenv_cfg("home = /usr/bin\n"), None);
    }

    #[test]
    fn a_venv_without_pytest_is_a_setup_error_naming_the_fix() {
        let dir = std::env::temp_dir().join(format!("pipe-guard-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lib/python3.11/site-packages")).unwrap();
        let e = find_pytest(&dir).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(e, GuardError::Setup(_)), "{e:?}");
        assert!(e.to_string().contains("scripts/setup.sh"), "{e}");
    }
}
