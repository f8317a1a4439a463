//! Everything the CLI prints: results, and errors as `error:` / `caused by:` / `hint:`.
//! All of it through [`out`] / [`err`], which escape what a model, server or sandbox wrote
//! (see [`super::term`]).

use super::{BadInput, term};
use pipe::engine::StageState;
use pipe::engine::build::{BuildError, BuildReport};
use pipe::engine::explain::Explanation;
use pipe::engine::{StageError, StageStatus};
use pipe::store::maintain::{GcReport, VerifyReport};
use serde_json::Value;
use std::io::Write;
use std::process::ExitCode;

fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    // A closed pipe (`pipe status | head`) is not an error.
    let _ = writeln!(o, "{}", term::printable(s));
}

/// One line on stderr; `label` (`error`, `hint`) in bold red / bold only on a terminal.
fn err(label: &str, s: &str) {
    let mut e = std::io::stderr().lock();
    let text = term::printable(s);
    if label.is_empty() {
        let _ = writeln!(e, "{text}");
    } else if colour() {
        let code = if label == "error" { "1;31" } else { "1" };
        let _ = writeln!(e, "\x1b[{code}m{label}:\x1b[0m {text}");
    } else {
        let _ = writeln!(e, "{label}: {text}");
    }
}

/// Colour on stderr: only on a terminal, and never with `NO_COLOR` set.
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn items(n: usize) -> String {
    if n == 1 {
        "1 item".into()
    } else {
        format!("{n} items")
    }
}

fn json(v: &impl serde::Serialize) {
    out(&term::json_safe(
        &serde_json::to_string_pretty(v).expect("serialisable"),
    ));
}

/// Print an error and choose the exit code: 2 for bad input, 1 otherwise.
pub fn error(e: &anyhow::Error) -> ExitCode {
    if let Some(b) = e.downcast_ref::<BadInput>() {
        err("error", &b.to_string());
        return ExitCode::from(2);
    }
    let top = e.to_string();
    err("error", &top);
    for cause in e.chain().skip(1) {
        // Errors that already quote their source would say it twice.
        let c = cause.to_string();
        if !top.contains(&c) {
            err("", &format!("  caused by: {c}"));
        }
    }
    if let Some(BuildError::Stage { source, .. }) = e.downcast_ref::<BuildError>()
        && let StageError::Infra(_) = source.as_ref()
    {
        err(
            "hint",
            "nothing was recorded for this item; fix the model server (or the local model file) and rerun to resume",
        );
    }
    ExitCode::from(1)
}

/// `pipe build` summary.
pub fn build(rep: &BuildReport, as_json: bool, dry_run: bool) {
    if as_json {
        return json(rep);
    }
    for s in &rep.stages {
        let line = if s.up_to_date {
            format!("{:<8} up to date ({})", s.target, items(s.total))
        } else if let Some(dep) = &s.blocked_on {
            format!(
                "{:<8} not run: waits on `{dep}` ({} items)",
                s.target, s.total
            )
        } else if dry_run {
            format!(
                "{:<8} would run {} of {} items ({} already in the store)",
                s.target,
                s.total - s.cached,
                s.total,
                s.cached
            )
        } else {
            format!(
                "{:<8} built: {} computed, {} by other workers, {} reused, {} failed (of {})",
                s.target, s.computed, s.by_others, s.cached, s.failed, s.total
            )
        };
        out(&line);
    }
    for f in &rep.failures {
        out(&format!("failed: {} {}: {}", f.target, f.item, f.error));
    }
    for h in &rep.healed {
        out(&format!(
            "healed: object {h} was corrupt; quarantined and recomputed"
        ));
    }
}

/// Where the report's files were written.
pub fn exported(files: &[std::path::PathBuf], as_json: bool) {
    if as_json || files.is_empty() {
        return;
    }
    let html = files
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "html"));
    let dir = files[0]
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    match html {
        Some(h) => out(&format!(
            "report: {} ({} files in {dir})",
            h.display(),
            files.len()
        )),
        None => out(&format!("report: {} files in {dir}", files.len())),
    }
}

/// `pipe export dir`.
pub fn copied(files: &[std::path::PathBuf], as_json: bool) {
    if as_json {
        return json(&files);
    }
    for f in files {
        out(&f.display().to_string());
    }
}

/// `pipe export ollama`.
pub fn registered(name: &str, url: &str, blobs: &[pipe::convert::ollama::Blob], as_json: bool) {
    if as_json {
        return json(&serde_json::json!({"model": name, "server": url, "blobs": blobs}));
    }
    for b in blobs {
        let how = if b.uploaded {
            "uploaded"
        } else {
            "already there"
        };
        out(&format!(
            "{} ({} bytes, {}): {how}",
            b.name, b.bytes, b.digest
        ));
    }
    out(&format!(
        "registered `{name}` with Ollama at {url}: `ollama run {name}`"
    ));
}

/// `pipe status`.
pub fn status(st: &[StageStatus], as_json: bool) {
    if as_json {
        return json(&st);
    }
    for s in st {
        let what = match &s.state {
            StageState::UpToDate { items: n } => format!("up to date ({})", items(*n)),
            StageState::Partial {
                done,
                total,
                running,
            } => {
                let mut l = format!("partial {done} of {total}");
                if !running.is_empty() {
                    let who: Vec<String> = running
                        .iter()
                        .take(3)
                        .map(|r| format!("{} by {}", r.item, r.holder))
                        .collect();
                    l.push_str(&format!(", running {}: {}", running.len(), who.join(", ")));
                    if running.len() > 3 {
                        l.push_str(", …");
                    }
                }
                l
            }
            StageState::Stale { reason } => format!("stale: {reason}"),
            StageState::Missing => "missing".into(),
        };
        out(&format!("{:<8} {what}", s.target));
    }
}

/// `pipe explain`.
pub fn explain(ex: &[Explanation], as_json: bool) {
    if as_json {
        return json(&ex);
    }
    for e in ex {
        out(&format!("{}: {}", e.target, e.verdict));
        for c in &e.changes {
            out(&format!("  {c}"));
        }
    }
}

/// `pipe show`.
pub fn show(v: &Value, as_json: bool) {
    // Artifacts are JSON through and through; the human form is the same, pretty-printed.
    let _ = as_json;
    json(v);
}

/// `pipe verify`.
pub fn verify(rep: &VerifyReport, as_json: bool) {
    if as_json {
        return json(rep);
    }
    out(&format!(
        "checked {} objects, {} records, {} refs",
        rep.objects, rep.records, rep.refs
    ));
    for o in &rep.corrupt_objects {
        out(&format!("corrupt object (quarantined): {o}"));
    }
    for r in &rep.bad_records {
        out(&format!("bad record (quarantined): {r}"));
    }
    for r in &rep.dropped_refs {
        out(&format!(
            "ref dropped (target will rebuild what was lost): {r}"
        ));
    }
    if rep.is_clean() {
        out("store is consistent");
    }
}

/// `pipe gc`.
/// A bar that counts values (hidden with --json or off a terminal).
pub fn counter_bar(prefix: &str, quiet: bool) -> indicatif::ProgressBar {
    let target = if quiet {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr()
    };
    let pb = indicatif::ProgressBar::with_draw_target(None, target);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {pos}/{len} ({elapsed}, ETA {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

pub fn store_copy(rep: &pipe::store::copy::CopyReport, to: &str, as_json: bool) {
    if as_json {
        return json(rep);
    }
    out(&format!(
        "copied to {to}: {} objects ({} bytes; {} already there), {} records ({} already there), {} refs, {} probes",
        rep.objects,
        rep.bytes,
        rep.objects_present,
        rep.records,
        rep.records_present,
        rep.refs,
        rep.probes
    ));
    if rep.refs_kept > 0 {
        out(&format!(
            "kept {} of {to}'s own refs: it holds other builds of those targets",
            rep.refs_kept
        ));
    }
}

pub fn gc(rep: &GcReport, as_json: bool, dry_run: bool) {
    if as_json {
        return json(rep);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    out(&format!(
        "{verb} {} objects ({} bytes), {} records, {} leases, {} temp files, {} checkpoints; kept {} objects",
        rep.removed_objects,
        rep.bytes_freed,
        rep.removed_records,
        rep.removed_leases,
        rep.removed_tmp,
        rep.removed_checkpoints,
        rep.kept_objects
    ));
}
