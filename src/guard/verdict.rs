//! From a finished sandbox run to a test verdict and its feedback.
//!
//! Feedback goes into the model's next prompt, so it must be small (bounded, the tail kept:
//! the summary line is last) and deterministic: the same attempt must give the same prompt,
//! or retries and caches would depend on timing. So it is built from the JUnit report, not
//! the terminal output (which has timings), and scrubbed of what varies between runs
//! (`0x…` addresses in reprs, `in 0.12s`, the sandbox's `/job/` prefix).

use super::Limits;
use super::sandbox::Finished;
use serde::{Deserialize, Serialize};
use std::os::unix::process::ExitStatusExt;

/// How a test run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// At least one test ran, none failed or errored, pytest exited 0 with a report.
    Passed,
    /// Some test failed or errored.
    Failed,
    /// No test ran (none collected, or all skipped).
    NoTests,
    /// The test file (or the implementation it imports) could not be imported.
    CollectionError,
    /// Killed at the wall-clock limit.
    Timeout,
    /// pytest ended without a usable report: `os._exit`, a signal, a limit, a garbled report.
    Crashed,
    /// The run changed pytest itself (a function, class, plugin or hook replaced), or its
    /// report disagrees with what our plugin saw the tests do: nothing it says can be believed.
    Tampered,
}

/// The test guard's verdict on one implementation attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestVerdict {
    /// The attempt passed: `outcome == Passed`.
    pub passed: bool,
    /// How the run ended.
    pub outcome: Outcome,
    /// Tests in the report (pytest counts a collection error as one).
    pub tests: u32,
    /// Failed tests.
    pub failures: u32,
    /// Errored tests (setup/teardown errors, collection errors).
    pub errors: u32,
    /// Skipped tests (xfail included).
    pub skipped: u32,
    /// What the model sees on a retry: failing tests with short tracebacks (the tail, bounded
    /// to `Limits::feedback_bytes`), "no tests collected", "timed out after N s", the
    /// collection error, or why pytest stopped early.
    pub feedback: String,
    /// pytest's exit code; `None` when killed by a signal.
    pub exit: Option<i32>,
    /// Wall time of the sandboxed run, ms.
    pub duration_ms: u64,
}

/// Counts and failing cases read from a JUnit report.
#[derive(Debug, Default)]
struct Report {
    tests: u32,
    failures: u32,
    errors: u32,
    skipped: u32,
    collection_error: bool,
    cases: Vec<Case>,
}

#[derive(Debug)]
struct Case {
    label: String,
    text: String,
}

fn parse_report(xml: &[u8]) -> Result<Report, String> {
    let text = std::str::from_utf8(xml).map_err(|e| format!("not UTF-8: {e}"))?;
    let doc = roxmltree::Document::parse(text).map_err(|e| e.to_string())?;
    let mut r = Report::default();
    let mut suites = 0;
    for suite in doc.descendants().filter(|n| n.has_tag_name("testsuite")) {
        suites += 1;
        let num = |a: &str| -> Result<u32, String> {
            suite
                .attribute(a)
                .unwrap_or("0")
                .parse()
                .map_err(|_| format!("testsuite attribute {a} is not a count"))
        };
        r.tests += num("tests")?;
        r.failures += num("failures")?;
        r.errors += num("errors")?;
        r.skipped += num("skipped")?;
    }
    if suites == 0 {
        return Err("no <testsuite> element".into());
    }
    for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
        let id = node_id(
            case.attribute("classname").unwrap_or(""),
            case.attribute("name").unwrap_or(""),
        );
        for bad in case
            .children()
            .filter(|n| n.has_tag_name("failure") || n.has_tag_name("error"))
        {
            let message = bad.attribute("message").unwrap_or("");
            let body = bad.text().unwrap_or("").trim_end();
            let label = if bad.has_tag_name("failure") {
                format!("FAILED {id}")
            } else if case.attribute("classname") == Some("pytest")
                && case.attribute("name") == Some("internal")
            {
                "INTERNALERROR (pytest stopped; the traceback's end says why)".to_string()
            } else if message == "collection failure" {
                r.collection_error = true;
                format!("ERROR collecting {id}")
            } else {
                format!("ERROR {id} ({message})")
            };
            let text = if body.is_empty() {
                message.to_string()
            } else {
                body.to_string()
            };
            r.cases.push(Case { label, text });
        }
    }
    Ok(r)
}

/// pytest's node id from JUnit's `classname` (dotted module path, then classes) and `name`.
fn node_id(classname: &str, name: &str) -> String {
    if classname.is_empty() {
        // A collection error: `name` is the module's dotted path.
        return format!("{}.py", name.replace('.', "/"));
    }
    let mut parts = classname.splitn(2, '.');
    let module = parts.next().unwrap_or("");
    match parts.next() {
        Some(classes) => format!("{module}.py::{}::{name}", classes.replace('.', "::")),
        None => format!("{module}.py::{name}"),
    }
}

fn plural(n: u32, one: &str) -> String {
    format!("{n} {one}")
}

fn summary(r: &Report) -> String {
    let passed = r.tests.saturating_sub(r.failures + r.errors + r.skipped);
    let mut parts = Vec::new();
    for (n, what) in [
        (r.failures, "failed"),
        (passed, "passed"),
        (r.errors, if r.errors == 1 { "error" } else { "errors" }),
        (r.skipped, "skipped"),
    ] {
        if n > 0 {
            parts.push(plural(n, what));
        }
    }
    if parts.is_empty() {
        "no tests ran".into()
    } else {
        parts.join(", ")
    }
}

/// Seconds as a person writes them: `5`, `2.5`.
fn secs(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s:.1}")
    }
}

/// A verdict without a run (the input was refused before the sandbox).
pub(crate) fn refused(feedback: String) -> TestVerdict {
    TestVerdict {
        passed: false,
        outcome: Outcome::Crashed,
        tests: 0,
        failures: 0,
        errors: 0,
        skipped: 0,
        feedback,
        exit: None,
        duration_ms: 0,
    }
}

/// What our plugin saw, independently of pytest's report objects (see
/// `py/pipe_guard_plugin.py`): sent on the channel before the JUnit report.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    /// Tests collection produced; `None` when collection never finished.
    collected: Option<u32>,
    /// Tests whose call phase ran.
    ran: u32,
    /// Tests that ran with no phase raising.
    clean: u32,
    /// What in pytest was replaced, added or removed (at most 10 names).
    changed: Vec<String>,
    /// How many things changed in all.
    changed_count: u32,
}

const RECORD: &[u8] = b"PIPE-GUARD-RECORD ";

/// Split the channel's body (after READY) into our plugin's record and the JUnit report.
/// The record is one line, written first; a body without one (or with a garbled one) gives
/// `None` and the JUnit bytes as they are.
fn split_record(body: &[u8]) -> (Option<Record>, &[u8]) {
    let Some(rest) = body.strip_prefix(RECORD) else {
        return (None, body);
    };
    let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
        return (None, body);
    };
    match serde_json::from_slice(&rest[..nl]) {
        Ok(r) => (Some(r), &rest[nl + 1..]),
        Err(_) => (None, body),
    }
}

/// Why a run that pytest reports as passed cannot be believed, if it cannot.
fn distrust(record: Option<&Record>, r: &Report) -> Option<String> {
    let Some(rec) = record else {
        return Some(
            "pytest wrote a report but pipe's plugin never finished its own record: something \
             in the tests or the implementation interfered with pytest"
                .into(),
        );
    };
    if rec.changed_count > 0 {
        let mut names = rec.changed.join(", ");
        if rec.changed_count as usize > rec.changed.len() {
            names.push_str(&format!(
                " and {} more",
                rec.changed_count as usize - rec.changed.len()
            ));
        }
        return Some(format!(
            "the code under test modified pytest itself ({names}); pipe does not accept a \
             result from a run that changes the test framework"
        ));
    }
    let passed = r.tests.saturating_sub(r.failures + r.errors + r.skipped);
    if rec.collected != Some(r.tests) || passed > rec.clean || rec.ran > r.tests {
        return Some(format!(
            "pytest's report ({}) disagrees with what pipe saw: {} collected, {} ran, {} \
             without an error; something in the tests or the implementation interfered with \
             pytest",
            summary(r),
            rec.collected.map_or("none".into(), |n| n.to_string()),
            rec.ran,
            rec.clean
        ));
    }
    None
}

/// Judge a pytest run whose channel carried `body` (our record, then the JUnit report) after
/// the READY line.
pub(crate) fn judge(run: &Finished, body: &[u8], limits: &Limits) -> TestVerdict {
    let (record, report) = split_record(body);
    let mut v = TestVerdict {
        passed: false,
        outcome: Outcome::Crashed,
        tests: 0,
        failures: 0,
        errors: 0,
        skipped: 0,
        feedback: String::new(),
        exit: run.status.code(),
        duration_ms: run.elapsed.as_millis() as u64,
    };
    // The output of a run that ended without a usable report: its start (a fatal error's
    // message, the innermost frames of a faulthandler dump) matters as much as its end.
    let output_tail = || {
        let text = scrub(&String::from_utf8_lossy(&run.output));
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            let budget = limits.feedback_bytes.saturating_sub(300);
            format!("\noutput:\n{}", bound_middle(text, budget))
        }
    };
    let feedback = |s: String| bound_tail(&scrub(&s), limits.feedback_bytes);
    if run.timed_out {
        v.outcome = Outcome::Timeout;
        v.exit = None;
        v.feedback = feedback(format!(
            "timed out after {} s: the tests did not finish (an endless loop, a blocking call \
             such as input() or sleep, or a very slow test?)",
            secs(limits.timeout)
        ));
        return v;
    }
    let how = match (run.status.code(), run.status.signal()) {
        // bwrap reports a command killed by signal N as exit status 128 + N.
        (Some(c), _) if (129..=128 + 64).contains(&c) => {
            format!("exit status {c}: killed by signal {}", c - 128)
        }
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    };
    if run.channel_overflow {
        v.feedback = feedback(format!(
            "pytest's report was too large to read ({how}){}",
            output_tail()
        ));
        return v;
    }
    if report.is_empty() {
        v.feedback = feedback(format!(
            "pytest stopped before writing its report ({how}): something in the tests or the \
             implementation ended the process (os._exit, a crash, a resource limit){}",
            output_tail()
        ));
        return v;
    }
    let r = match parse_report(report) {
        Ok(r) => r,
        Err(e) => {
            v.feedback = feedback(format!(
                "pytest's report is unreadable ({e}; {how}): did a forked process keep running \
                 pytest?{}",
                output_tail()
            ));
            return v;
        }
    };
    v.tests = r.tests;
    v.failures = r.failures;
    v.errors = r.errors;
    v.skipped = r.skipped;
    let details = || {
        let mut s = String::new();
        for c in &r.cases {
            s.push_str(&c.label);
            s.push('\n');
            s.push_str(&c.text);
            s.push_str("\n\n");
        }
        s
    };
    if r.collection_error {
        v.outcome = Outcome::CollectionError;
        v.feedback = feedback(format!("{}{}", details(), summary(&r)));
    } else if r.failures + r.errors > 0 {
        v.outcome = Outcome::Failed;
        v.feedback = feedback(format!("{}{}", details(), summary(&r)));
    } else if r.tests == 0 && run.status.code() == Some(5) {
        // pytest's own "no tests collected" exit code.
        v.outcome = Outcome::NoTests;
        v.feedback = "no tests collected".into();
    } else if r.tests == 0 {
        // Interrupted (KeyboardInterrupt, pytest.exit) or worse before any test ran.
        v.feedback = feedback(format!(
            "pytest ran no tests and ended with {how}{}",
            output_tail()
        ));
    } else if r.tests <= r.skipped && run.status.code() == Some(0) {
        v.outcome = Outcome::NoTests;
        v.feedback = feedback(format!(
            "no tests ran: all {} collected tests were skipped",
            r.tests
        ));
    } else if let Some(why) = distrust(record.as_ref(), &r) {
        v.outcome = Outcome::Tampered;
        v.feedback = feedback(why);
    } else if run.status.code() != Some(0) {
        v.outcome = Outcome::Crashed;
        v.feedback = feedback(format!(
            "pytest reported {} but ended with {how}{}",
            summary(&r),
            output_tail()
        ));
    } else {
        v.outcome = Outcome::Passed;
        v.passed = true;
        v.feedback = summary(&r);
    }
    v
}

/// Remove what differs between runs of the same code: memory addresses (`0x7f3a...`),
/// durations (`in 0.12s`), and the sandbox's working directory (`/job/` becomes `./`).
pub(crate) fn scrub(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        // 0x followed by at least 6 hex digits.
        if b[i] == b'0' && b.get(i + 1) == Some(&b'x') {
            let n = b[i + 2..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            if n >= 6 {
                out.push_str(&s[copied..i]);
                out.push_str("0x...");
                i += 2 + n;
                copied = i;
                continue;
            }
        }
        // " in 1.23s"
        if b[i..].starts_with(b" in ") {
            let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
            let a = digits(i + 4);
            if a > 0 && b.get(i + 4 + a) == Some(&b'.') {
                let f = digits(i + 5 + a);
                let end = i + 5 + a + f;
                if f > 0 && b.get(end) == Some(&b's') {
                    out.push_str(&s[copied..i]);
                    i = end + 1;
                    copied = i;
                    continue;
                }
            }
        }
        if b[i..].starts_with(b"/job/") {
            out.push_str(&s[copied..i]);
            out.push_str("./");
            i += 5;
            copied = i;
            continue;
        }
        i += 1;
    }
    out.push_str(&s[copied..]);
    out
}

/// `s` if it fits in `max` bytes, else its head and tail around a note of what was cut, in
/// at most `max` bytes.
pub(crate) fn bound_middle(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let note_len = format!("\n[... {} bytes cut ...]\n", s.len()).len();
    let half = max.saturating_sub(note_len) / 2;
    let mut head = half;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - half;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}\n[... {} bytes cut ...]\n{}",
        &s[..head],
        tail - head,
        &s[tail..]
    )
}

/// `s` if it fits in `max` bytes, else a note of what was cut and the tail of `s` (from a
/// line start where one is near), in at most `max` bytes.
pub(crate) fn bound_tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let longest_note = format!("[... {} earlier bytes cut ...]\n", s.len()).len();
    let keep = max.saturating_sub(longest_note);
    let mut start = s.len() - keep;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    if let Some(nl) = s[start..].find('\n')
        && nl < 200
        && start + nl + 1 < s.len()
    {
        start += nl + 1;
    }
    format!("[... {start} earlier bytes cut ...]\n{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_what_varies() {
        assert_eq!(
            scrub("<Stack object at 0x7f3a12bc90d0> 1 failed in 0.12s /job/implementation.py"),
            "<Stack object at 0x...> 1 failed ./implementation.py"
        );
        assert_eq!(scrub("x = 0x10 in 3 s"), "x = 0x10 in 3 s");
    }

    #[test]
    fn bound_tail_keeps_the_end_within_the_bound() {
        let s: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let b = bound_tail(&s, 300);
        assert!(b.len() <= 300, "{}", b.len());
        assert!(b.starts_with("[... "));
        assert!(b.ends_with("line 999\n"));
        assert_eq!(bound_tail("short", 300), "short");
        let wide = "é".repeat(500);
        assert!(bound_tail(&wide, 101).len() <= 101);
        let m = bound_middle(&s, 300);
        assert!(m.len() <= 300, "{}", m.len());
        assert!(
            m.starts_with("line 0\n") && m.ends_with("line 999\n"),
            "{m}"
        );
        assert!(bound_middle(&wide, 101).len() <= 101);
    }

    #[test]
    fn node_ids_look_like_pytest() {
        assert_eq!(
            node_id("test_implementation", "test_x"),
            "test_implementation.py::test_x"
        );
        assert_eq!(
            node_id("test_implementation.TestStack", "test_x"),
            "test_implementation.py::TestStack::test_x"
        );
        assert_eq!(node_id("", "test_implementation"), "test_implementation.py");
    }
}
