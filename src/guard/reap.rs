//! Reaping what bubblewrap leaves behind.
//!
//! bwrap forks: the process we start (the *outer* one) creates the sandbox's pid namespace
//! through a child (the *inner* one, pid 1 inside), reads the command's exit status and
//! exits — without waiting for the inner process, which is still being torn down. Orphaned,
//! the inner one is handed to init; measured here, one zombie per sandbox run (5 for a failed
//! trial, 14 for a passed one with its mutants), and under a container init that never reaps
//! (as on this machine) they pile up until the pid table is full.
//!
//! So pipe makes itself a *child subreaper* (`PR_SET_CHILD_SUBREAPER`): orphaned descendants
//! are handed to pipe instead of init, and after each run we reap those that are bwrap. We must
//! never reap an *outer* bwrap that another thread is still waiting for (that thread's wait
//! would fail and lose the exit status), so outer processes are registered while they live;
//! the registry's lock is held across spawn, so a scan never sees an outer process it does
//! not know. Other orphans (nothing pipe starts should leave any) are left alone.

use std::collections::HashSet;
use std::process::{Child, Command};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// Outer bwrap processes alive (spawned, not yet waited for).
static LIVE: Mutex<Option<HashSet<u32>>> = Mutex::new(None);
static SUBREAPER: Once = Once::new();

/// How long to wait for an adopted inner process that is still dying.
const DYING: Duration = Duration::from_millis(200);

/// Spawn `cmd` (bwrap) as a registered outer process, pipe being a subreaper.
pub(crate) fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    SUBREAPER.call_once(|| {
        // SAFETY: prctl with integer arguments; affects only this process's orphans.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if r != 0 {
            tracing::warn!(
                "cannot become a child subreaper ({}): the sandbox's exited processes are left \
                 to init to reap",
                std::io::Error::last_os_error()
            );
        }
    });
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    let child = cmd.spawn()?;
    live.get_or_insert_with(HashSet::new).insert(child.id());
    Ok(child)
}

/// The outer process `pid` has been waited for: forget it and reap the adopted bwrap
/// processes (its inner one among them, dying or dead by now).
pub(crate) fn finished(pid: u32) {
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    let live = live.get_or_insert_with(HashSet::new);
    live.remove(&pid);
    let deadline = Instant::now() + DYING;
    for child in children() {
        if live.contains(&child) || !is_bwrap(child) {
            continue;
        }
        // Adopted, so its outer process is gone and its namespace is being torn down: it
        // exits within moments. Wait for it briefly; a later run reaps it otherwise.
        loop {
            // SAFETY: waitpid on one specific pid, no status pointer.
            let r =
                unsafe { libc::waitpid(child as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
            if r != 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Our children, from every thread's `/proc/self/task/*/children` (a child's parent is the
/// thread that forked it; adopted orphans go to a live thread of the subreaper).
fn children() -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

fn is_bwrap(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "bwrap")
}
