//! One sandboxed Python run: bubblewrap + prlimit, files in through descriptors, output and a
//! private report channel out through pipes, SIGKILL at the wall deadline.
//!
//! The command line follows /work/shared/SANDBOX.md (measured there): every namespace
//! unshared (no network: the sandbox's 127.0.0.1 is its own), only `/usr` (+ the `/bin`,
//! `/lib*`, `/sbin` symlinks) and the venv visible, read-only; `/`, `/dev` remounted
//! read-only; `/tmp`, `/job`, `/dev/shm` small tmpfs; `prlimit` inside sets per-process
//! limits; `--die-with-parent --new-session`; killing the bwrap pid ends the pid namespace and
//! with it every process inside, daemons and fork bombs included.
//!
//! Choices beyond that document, and why:
//!
//! * **Nothing is written to the host.** The two files go into a tmpfs at `/job` through
//!   bwrap's `--file FD` from memfds, our helpers through `--ro-bind-data FD` (read-only). So
//!   there is no scratch directory to chown, fill, leak into feedback or clean up after a
//!   fork bomb; `/job`'s size is capped like `/tmp`'s.
//! * **Who runs the sandbox.** `RLIMIT_NPROC` does not bind root, so when pipe runs as root
//!   the child drops to `nobody` (65534, no groups) before exec'ing bwrap; otherwise it runs as
//!   the current user. bwrap then makes its own user namespace (uid mapped to itself).
//! * **A venv nobody cannot reach.** A venv under `/root` (mode 0700) cannot be bound by bwrap
//!   running as nobody: bwrap resolves the source path with the caller's rights, even for
//!   `--ro-bind-fd` (measured: "Can't find source path /proc/self/fd/3: Permission
//!   denied"). So, as root, the child first enters a private mount namespace and bind-mounts
//!   the venv onto an empty, world-traversable directory under the temp dir, then drops to
//!   nobody; bwrap binds that. The mount exists only in the child's namespace and vanishes with
//!   it. Inside the sandbox the venv is always at `/venv`; `/venv/bin/python` finds its
//!   `pyvenv.cfg` relative to the executable, so the venv works from there.
//! * **Descriptors.** Everything we open is close-on-exec; in the child, every descriptor
//!   above 2 is made close-on-exec (`close_range`) and only ours are made inheritable, so no
//!   stray host descriptor (a directory fd would be an escape) reaches the sandbox.

use super::{GuardError, HELPERS, Limits, PyEnv};
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The interpreter inside the sandbox.
pub(crate) const PYTHON: &str = "/venv/bin/python";
/// `prlimit` (util-linux), run inside the sandbox from the host's `/usr`.
pub(crate) const PRLIMIT: &str = "/usr/bin/prlimit";
/// The first line our helpers write on the channel, before any generated code runs.
pub(crate) const READY: &[u8] = b"PIPE-GUARD-READY\n";

/// The uid/gid the sandbox runs as when pipe is root.
const NOBODY: libc::uid_t = 65534;
/// Size of `/tmp` and of `/job` in the sandbox, and the largest file a process may write.
const SCRATCH_BYTES: u64 = 64 << 20;
/// Size of `/dev/shm` in the sandbox.
const SHM_BYTES: u64 = 16 << 20;
/// Open files per process.
const NOFILE: u32 = 256;
/// How much of stdout+stderr is kept (the tail). The rest is read and dropped, so a test
/// printing 100 MB costs time, not memory.
const OUTPUT_CAP: usize = 1 << 20;
/// After SIGKILL, how long to keep draining pipes held by dying processes.
const KILL_GRACE: Duration = Duration::from_secs(2);

pub(crate) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A number unique within this process, for directory names.
pub(crate) fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// What to run.
pub(crate) struct Job<'a> {
    /// Files created in `/job` (the working directory), e.g. `implementation.py`.
    pub files: &'a [(&'a str, &'a [u8])],
    /// The command, after `prlimit ... --`.
    pub argv: &'a [&'a str],
    /// Time, memory and process limits.
    pub limits: &'a Limits,
    /// The most bytes read from the channel; more marks it overflowed.
    pub channel_cap: usize,
}

/// How a run ended.
pub(crate) struct Finished {
    /// bwrap's exit status (it forwards the command's).
    pub status: ExitStatus,
    /// Killed at the wall deadline.
    pub timed_out: bool,
    /// The tail of stdout and stderr, interleaved.
    pub output: Vec<u8>,
    /// The channel's bytes (READY line first when our helper started).
    pub channel: Vec<u8>,
    /// The channel carried more than the cap.
    pub channel_overflow: bool,
    /// Spawn to reap.
    pub elapsed: Duration,
}

impl Finished {
    /// "exit status N" or "killed by signal N".
    pub fn status_text(&self) -> String {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "unknown status".into(),
        }
    }

    /// What our helper sent after its READY line; an error when it never got that far, which
    /// happens before any generated code runs, so it is the sandbox's fault, not the code's.
    pub fn ready_body(&self, what: &str) -> Result<&[u8], GuardError> {
        if let Some(body) = self.channel.strip_prefix(READY) {
            return Ok(body);
        }
        let tail = String::from_utf8_lossy(&self.output);
        let tail: String = {
            let t = tail.trim_end();
            let start = t.len().saturating_sub(2000);
            let start = (start..=t.len())
                .find(|i| t.is_char_boundary(*i))
                .unwrap_or(t.len());
            t[start..].to_string()
        };
        let hint = if self.timed_out {
            format!(
                "{what} did not even start within {:?}: the machine is overloaded or the \
                 guard timeout is too short",
                self.elapsed
            )
        } else {
            "check that bubblewrap works here (`bwrap --unshare-all --ro-bind /usr /usr true`; \
             unprivileged user namespaces must be allowed), that the venv is readable by the \
             sandbox user, and the guard's memory limit; run scripts/setup.sh"
                .to_string()
        };
        Err(GuardError::Sandbox {
            what: what.to_string(),
            detail: format!("{}; output: {tail}", self.status_text()),
            hint,
        })
    }
}

fn cstring(p: &Path) -> Result<CString, GuardError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| GuardError::Setup(format!("path {} contains a NUL byte", p.display())))
}

fn os_err(context: &str) -> GuardError {
    GuardError::io(context, std::io::Error::last_os_error())
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> Result<(OwnedFd, OwnedFd), GuardError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("create a pipe"));
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec memfd holding `data`, positioned at its start (bwrap reads it to EOF).
fn memfd(data: &[u8]) -> Result<OwnedFd, GuardError> {
    // SAFETY: a valid NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(c"pipe-guard".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(os_err("memfd_create"));
    }
    // SAFETY: memfd_create returned a fresh descriptor we own.
    let mut f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.write_all(data)
        .and_then(|_| f.seek(SeekFrom::Start(0)).map(|_| ()))
        .map_err(|e| GuardError::io("fill a memfd", e))?;
    Ok(f.into())
}

/// An empty directory that nobody can traverse to, for the venv's bind mount when pipe is
/// root; removed on drop (it is never a mount point on the host).
struct MountPoint {
    dir: PathBuf,
}

impl MountPoint {
    fn new() -> Result<MountPoint, GuardError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir =
            std::env::temp_dir().join(format!("pipe-guard-{}-{}", std::process::id(), unique()));
        // create (not create_all): fails if it exists, so it is ours and not a planted symlink.
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .map_err(|e| GuardError::io(format!("mkdir {}", dir.display()), e))?;
        let me = MountPoint { dir };
        std::fs::set_permissions(&me.dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| GuardError::io(format!("chmod {}", me.dir.display()), e))?;
        Ok(me)
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!("removing {}: {e}", self.dir.display());
        }
    }
}

/// Run `job` in the sandbox; returns once every process of it is gone.
pub(crate) fn run(env: &PyEnv, job: &Job<'_>) -> Result<Finished, GuardError> {
    let as_root = running_as_root();
    let mount_point = if as_root {
        Some(MountPoint::new()?)
    } else {
        None
    };
    let venv_source: &Path = match &mount_point {
        Some(m) => &m.dir,
        None => &env.venv,
    };

    let (out_r, out_w) = pipe()?;
    let (chan_r, chan_w) = pipe()?;
    if as_root {
        // junitxml reopens the pipe through /proc/self/fd, which checks the pipe's owner.
        // SAFETY: a valid descriptor; fchown has no other preconditions.
        if unsafe { libc::fchown(chan_w.as_raw_fd(), NOBODY, NOBODY) } != 0 {
            return Err(os_err("chown the report pipe"));
        }
    }
    let mut inherit: Vec<OwnedFd> = Vec::new();
    let mut args: Vec<OsString> = Vec::new();
    for a in [
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--size",
        &SCRATCH_BYTES.to_string(),
        "--tmpfs",
        "/tmp",
        "--size",
        &SCRATCH_BYTES.to_string(),
        "--tmpfs",
        "/job",
    ] {
        args.push(a.into());
    }
    args.push("--ro-bind".into());
    args.push(venv_source.as_os_str().to_owned());
    args.push("/venv".into());
    for (name, data) in job.files {
        let fd = memfd(data)?;
        for a in [
            "--perms",
            "0644",
            "--file",
            &fd.as_raw_fd().to_string(),
            &format!("/job/{name}"),
        ] {
            args.push(a.into());
        }
        inherit.push(fd);
    }
    for (name, text) in HELPERS {
        let fd = memfd(text.as_bytes())?;
        for a in [
            "--ro-bind-data",
            &fd.as_raw_fd().to_string(),
            &format!("/guard/{name}"),
        ] {
            args.push(a.into());
        }
        inherit.push(fd);
    }
    let chan_fd = chan_w.as_raw_fd().to_string();
    let limits = job.limits;
    let cpu = limits.timeout.as_secs() + u64::from(limits.timeout.subsec_nanos() > 0) + 1;
    for a in [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        &SHM_BYTES.to_string(),
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        "/job",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/job",
        "--setenv",
        "TMPDIR",
        "/tmp",
        "--setenv",
        "PYTHONPATH",
        "/guard",
        "--setenv",
        "PYTHONDONTWRITEBYTECODE",
        "1",
        "--setenv",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
        "1",
        // No locale files in the sandbox: UTF-8 I/O regardless.
        "--setenv",
        "PYTHONUTF8",
        "1",
        // Same set/dict-of-str order every run, so feedback is reproducible.
        "--setenv",
        "PYTHONHASHSEED",
        "0",
        "--setenv",
        "PIPE_GUARD_FD",
        &chan_fd,
        "--",
        PRLIMIT,
        &format!("--nproc={}", limits.max_processes),
        &format!("--as={}", limits.memory_mb.saturating_mul(1 << 20)),
        &format!("--cpu={cpu}"),
        &format!("--fsize={SCRATCH_BYTES}"),
        &format!("--nofile={NOFILE}"),
        "--core=0",
        "--",
    ] {
        args.push(a.into());
    }
    args.extend(job.argv.iter().map(OsString::from));

    let mut keep: Vec<RawFd> = inherit.iter().map(AsRawFd::as_raw_fd).collect();
    keep.push(chan_w.as_raw_fd());
    let mount = match &mount_point {
        Some(m) => Some((cstring(&env.venv)?, cstring(&m.dir)?)),
        None => None,
    };

    let mut cmd = Command::new(&env.bwrap);
    cmd.args(&args)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            out_w
                .try_clone()
                .map_err(|e| GuardError::io("dup a pipe", e))?,
        ))
        .stderr(Stdio::from(out_w));
    // SAFETY: the closure runs in the forked child before exec and only makes raw system
    // calls on data prepared before the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || child_setup(mount.as_ref(), &keep, as_root));
    }
    let start = Instant::now();
    let mut child = super::reap::spawn(&mut cmd).map_err(|e| GuardError::Sandbox {
        what: "bubblewrap".into(),
        detail: format!("{}: {e}", env.bwrap.display()),
        hint: "as root the guard needs a private mount namespace (CAP_SYS_ADMIN) and \
               setuid to nobody; run scripts/setup.sh"
            .into(),
    })?;
    // Our copies of the write ends and of the inherited descriptors must go, or the pipes
    // never reach EOF.
    drop(cmd);
    drop(chan_w);
    drop(inherit);

    let deadline = start + limits.timeout;
    let mut out = Sink::new(out_r, OUTPUT_CAP, true);
    let mut chan = Sink::new(chan_r, job.channel_cap, false);
    let mut timed_out = false;
    let mut grace_until = None;
    let mut buf = vec![0u8; 64 * 1024];
    while out.open || chan.open {
        let now = Instant::now();
        if grace_until.is_none() && now >= deadline {
            kill(&mut child);
            timed_out = true;
            grace_until = Some(now + KILL_GRACE);
        }
        let until = grace_until.unwrap_or(deadline);
        if grace_until.is_some() && now >= until {
            break;
        }
        let wait_ms = until
            .saturating_duration_since(now)
            .as_millis()
            .clamp(1, 1000) as i32;
        let mut pfds: Vec<libc::pollfd> = [&out, &chan]
            .iter()
            .filter(|s| s.open)
            .map(|s| libc::pollfd {
                fd: s.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: pfds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            abandon(&mut child);
            return Err(GuardError::io("poll the sandbox's pipes", e));
        }
        for p in pfds.iter().filter(|p| p.revents != 0) {
            let sink = if p.fd == out.fd.as_raw_fd() {
                &mut out
            } else {
                &mut chan
            };
            if let Err(e) = sink.read_some(&mut buf) {
                abandon(&mut child);
                return Err(GuardError::io("read the sandbox's output", e));
            }
        }
    }
    // Pipes closed (or given up on): reap, still within the deadline.
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => {
                abandon(&mut child);
                return Err(GuardError::io("wait for bubblewrap", e));
            }
        }
        if !timed_out && Instant::now() >= deadline {
            kill(&mut child);
            timed_out = true;
        }
        if timed_out {
            match child.wait() {
                Ok(s) => break s,
                Err(e) => {
                    super::reap::finished(child.id());
                    return Err(GuardError::io("wait for bubblewrap", e));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = start.elapsed();
    super::reap::finished(child.id());
    drop(mount_point);
    Ok(Finished {
        status,
        timed_out,
        output: out.finish(),
        channel_overflow: chan.total > job.channel_cap as u64,
        channel: chan.finish(),
        elapsed,
    })
}

/// On an error: kill and reap bwrap, so no process or zombie outlives the run.
fn abandon(child: &mut std::process::Child) {
    kill(child);
    let _ = child.wait();
    super::reap::finished(child.id());
}

/// SIGKILL bwrap; `--die-with-parent` and the pid namespace take everything inside with it.
fn kill(child: &mut std::process::Child) {
    if let Err(e) = child.kill() {
        tracing::warn!("killing the sandbox: {e}");
    }
}

/// In the forked child, before exec'ing bwrap. Only async-signal-safe system calls.
fn child_setup(
    mount: Option<&(CString, CString)>,
    keep: &[RawFd],
    drop_to_nobody: bool,
) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: raw system calls on valid, pre-built C strings and descriptor numbers.
    unsafe {
        if let Some((source, target)) = mount {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
        }
        // Best effort (Linux >= 5.11): nothing of the host's above stderr is inherited.
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        for fd in keep {
            check(libc::fcntl(*fd, libc::F_SETFD, 0))?;
        }
        if drop_to_nobody {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(NOBODY))?;
            check(libc::setuid(NOBODY))?;
        }
    }
    Ok(())
}

/// One pipe being drained: keeps the first `cap` bytes, or the last `cap` with `tail`.
struct Sink {
    fd: File,
    cap: usize,
    tail: bool,
    data: Vec<u8>,
    total: u64,
    open: bool,
}

impl Sink {
    fn new(fd: OwnedFd, cap: usize, tail: bool) -> Sink {
        Sink {
            fd: File::from(fd),
            cap,
            tail,
            data: Vec::new(),
            total: 0,
            open: true,
        }
    }

    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let n = match (&self.fd).read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        };
        if n == 0 {
            self.open = false;
            return Ok(());
        }
        self.total += n as u64;
        if self.tail {
            self.data.extend_from_slice(&buf[..n]);
            if self.data.len() > 2 * self.cap {
                let cut = self.data.len() - self.cap;
                self.data.drain(..cut);
            }
        } else if self.data.len() < self.cap {
            let room = self.cap - self.data.len();
            self.data.extend_from_slice(&buf[..n.min(room)]);
        }
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        if self.tail && self.data.len() > self.cap {
            let cut = self.data.len() - self.cap;
            self.data.drain(..cut);
        }
        self.data
    }
}
