//! Starting the container and supervising it until its init exits: one thread and one poll loop
//! over a signalfd (SIGCHLD, SIGUSR1 and the ignored stop signals) and the two output pipes, so
//! entries of both streams go into the log in the order they were read, without locks.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};
use windlass_shim::cri_log::{LineSplitter, Stream};
use windlass_shim::state::{self, ExitStatus};
use windlass_shim::timestamp::rfc3339_nano;

use crate::cli::Options;
use crate::log_file::{Limits, LogFile, warn};
use crate::runc::{ContainerStdio, Runc};

/// How long the shim keeps reading the pipes after the init exited, when other processes
/// (of a container in the host PID namespace) still hold them open.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The exit code recorded when the status cannot be known (containerd uses the same).
const UNKNOWN_EXIT_CODE: i32 = 255;

/// A started container, ready to be supervised.
#[derive(Debug)]
pub struct Running {
    /// The container init's pid.
    pub container_pid: u32,
    started_at: String,
    signals: SignalFd,
    stdout: File,
    stderr: File,
    /// The write end of the stdin pipe, held open for the container (`--stdin`).
    _stdin: Option<OwnedFd>,
    log: LogFile,
    state_dir: PathBuf,
}

impl Running {
    /// The state directory, as an absolute path.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

/// Everything up to a running container: signals, subreaper, session, state files, log, pipes,
/// `runc create` and `runc start`. On error nothing is left running.
pub fn start(opts: &Options) -> Result<Running> {
    let signals = crate::signals::take()?;
    nix::sys::prctl::set_child_subreaper(true).context("failed to become a child subreaper")?;
    // Fails only if the shim already leads a process group (spawned with process_group(0)); it
    // then stays in the agent's session, with the stop signals still ignored.
    let _ = nix::unistd::setsid();
    let opts = absolute(opts)?;
    // Hold no directory busy for the container's lifetime.
    std::env::set_current_dir("/").context("failed to change directory to /")?;

    let state_dir = &opts.state_dir;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("failed to create state directory {}", state_dir.display()))?;
    // An unreadable shim.pid is no shim: it is about to be replaced.
    if state::shim_alive(state_dir).unwrap_or(false) {
        let pid = state::read_pids(state_dir)
            .ok()
            .and_then(|p| p.shim)
            .unwrap_or_default();
        bail!(
            "another shim (pid {pid}) is running for state directory {}",
            state_dir.display()
        );
    }
    for stale in [state::CONTAINER_PID, state::EXIT, state::RUNC_LOG] {
        remove_if_exists(&state_dir.join(stale))?;
    }
    state::write_atomic(
        &state_dir.join(state::SHIM_PID),
        format!("{}\n", std::process::id()).as_bytes(),
    )?;

    let log = LogFile::open(
        &opts.log,
        Limits {
            max_bytes: opts.log_max_bytes,
            max_files: opts.log_max_files,
        },
    )?;
    let (stdout_r, stdout_w) = pipe2(OFlag::O_CLOEXEC).context("failed to create a pipe")?;
    let (stderr_r, stderr_w) = pipe2(OFlag::O_CLOEXEC).context("failed to create a pipe")?;
    let (stdin, stdin_keep) = if opts.stdin {
        let (r, w) = pipe2(OFlag::O_CLOEXEC).context("failed to create a pipe")?;
        (Stdio::from(r), Some(w))
    } else {
        (Stdio::null(), None)
    };

    let runc = Runc::new(
        opts.runc.clone(),
        opts.runc_root.clone(),
        state_dir.join(state::RUNC_LOG),
    );
    let stdio = ContainerStdio {
        stdin,
        stdout: Stdio::from(stdout_w),
        stderr: Stdio::from(stderr_w),
    };
    let pid_file = state_dir.join(state::CONTAINER_PID);
    let created = runc.create(&opts.id, &opts.bundle, &pid_file, stdio, || {
        read_available(&stderr_r)
    });
    let started = created.and_then(|()| {
        let pid = state::read_pids(state_dir)
            .map_err(|e| format!("{:#}", anyhow!(e)))?
            .container
            .ok_or_else(|| format!("runc create wrote no {}", pid_file.display()))?;
        runc.start(&opts.id)?;
        Ok(pid)
    });
    let container_pid = match started {
        Ok(pid) => pid,
        Err(error) => return Err(undo(&runc, &opts.id, &pid_file, error)),
    };
    Ok(Running {
        container_pid,
        started_at: rfc3339_nano(SystemTime::now()),
        signals,
        stdout: File::from(stdout_r),
        stderr: File::from(stderr_r),
        _stdin: stdin_keep,
        log,
        state_dir: state_dir.clone(),
    })
}

/// The options with absolute paths, so the shim can leave its working directory.
fn absolute(opts: &Options) -> Result<Options> {
    let abs = |p: &Path| {
        std::path::absolute(p).with_context(|| format!("failed to resolve {}", p.display()))
    };
    let mut out = opts.clone();
    out.bundle = abs(&opts.bundle)?;
    out.state_dir = abs(&opts.state_dir)?;
    out.log = abs(&opts.log)?;
    if opts.runc.components().count() > 1 {
        out.runc = abs(&opts.runc)?;
    }
    out.runc_root = opts.runc_root.as_deref().map(abs).transpose()?;
    Ok(out)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("failed to remove {}", path.display())),
    }
}

/// Reads what is in the pipe now, without waiting for more (at most 64 KiB).
fn read_available(pipe: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    if fcntl(pipe, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).is_err() {
        return out;
    }
    let Ok(dup) = pipe.try_clone() else {
        return out;
    };
    let _ = File::from(dup).take(64 * 1024).read_to_end(&mut out);
    out
}

/// After a failed create or start: removes the container, reaps what it left, and returns the
/// error for the report.
fn undo(runc: &Runc, id: &str, pid_file: &Path, error: String) -> anyhow::Error {
    let mut error = error;
    if let Err(delete) = runc.delete_force(id) {
        // A failed create usually left nothing to delete.
        if !delete.contains("does not exist") {
            error = format!("{error}; then runc delete --force failed: {delete}");
        }
    }
    let _ = std::fs::remove_file(pid_file);
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
    anyhow!(error)
}

/// One output pipe being copied into the log.
struct Pipe {
    stream: Stream,
    file: Option<File>,
    splitter: LineSplitter,
}

impl Pipe {
    fn new(stream: Stream, file: File) -> Pipe {
        Pipe {
            stream,
            file: Some(file),
            splitter: LineSplitter::default(),
        }
    }

    /// Reads once and logs what came; at EOF (or on an error) logs the rest and closes.
    fn read_into(&mut self, buf: &mut [u8], log: &mut LogFile) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let stream = self.stream;
        let mut emit = |tag, message: &[u8]| log.write_entry(stream, tag, message);
        match file.read(buf) {
            Ok(0) => self.close(&mut emit),
            Ok(n) => self.splitter.push(&buf[..n], &mut emit),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn(format_args!(
                    "failed to read the container's {}: {e}",
                    stream.as_str()
                ));
                self.close(&mut emit);
            }
        }
    }

    fn close(&mut self, emit: &mut impl FnMut(windlass_shim::cri_log::Tag, &[u8])) {
        self.splitter.finish(emit);
        self.file = None;
    }
}

/// How the init process ended, before `exit.json` is written.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Exited(i32),
    Signaled(i32),
    Unknown,
}

/// Copies the output into the log and reaps children until the init exited and the pipes are
/// drained; then writes `exit.json`. Returns the shim's exit code.
pub fn supervise(running: Running) -> i32 {
    let Running {
        container_pid,
        started_at,
        signals,
        stdout,
        stderr,
        _stdin,
        mut log,
        state_dir,
    } = running;
    let container = Pid::from_raw(container_pid as i32);
    let mut pipes = [
        Pipe::new(Stream::Stdout, stdout),
        Pipe::new(Stream::Stderr, stderr),
    ];
    let mut buf = vec![0u8; 64 * 1024];
    let mut ended: Option<(Ended, SystemTime)> = None;
    let mut drain_until: Option<Instant> = None;
    // The init may have exited before the loop started; its SIGCHLD is pending anyway, but
    // reaping once up front costs nothing.
    let mut watch_without_sigchld = reap(container, &mut ended);

    loop {
        if ended.is_some() {
            let deadline = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
            if pipes.iter().all(|p| p.file.is_none()) || Instant::now() >= deadline {
                break;
            }
        }
        let timeout = match (drain_until, watch_without_sigchld) {
            (Some(deadline), _) => {
                PollTimeout::try_from(deadline.saturating_duration_since(Instant::now()))
                    .unwrap_or(PollTimeout::MAX)
            }
            (None, true) => PollTimeout::from(1000u16),
            (None, false) => PollTimeout::NONE,
        };
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let mut polled = Vec::new();
        for (i, pipe) in pipes.iter().enumerate() {
            if let Some(file) = &pipe.file {
                fds.push(PollFd::new(file.as_fd(), PollFlags::POLLIN));
                polled.push(i);
            }
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                warn(format_args!("poll failed: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);

        if ready[0] {
            while let Ok(Some(info)) = signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => watch_without_sigchld = reap(container, &mut ended),
                    Ok(Signal::SIGUSR1) => log.reopen(),
                    // SIGTERM, SIGINT, SIGHUP, SIGQUIT: ignored; see the crate docs.
                    _ => {}
                }
            }
        }
        if watch_without_sigchld && ended.is_none() && !state::is_alive(container_pid) {
            ended = Some((Ended::Unknown, SystemTime::now()));
        }
        for (slot, &i) in polled.iter().enumerate() {
            if ready[slot + 1] {
                pipes[i].read_into(&mut buf, &mut log);
            }
        }
        log.flush();
    }

    // Pipes still held open past the deadline: log what was read of their last line.
    for pipe in &mut pipes {
        let stream = pipe.stream;
        pipe.close(&mut |tag, message: &[u8]| log.write_entry(stream, tag, message));
    }
    log.flush();

    let Some((how, finished)) = ended else {
        return 1;
    };
    let finished_at = rfc3339_nano(finished);
    let status = match how {
        Ended::Exited(code) => ExitStatus::exited(code, started_at, finished_at),
        Ended::Signaled(signal) => ExitStatus::signaled(signal, started_at, finished_at),
        Ended::Unknown => ExitStatus::exited(UNKNOWN_EXIT_CODE, started_at, finished_at),
    };
    let json = match serde_json::to_vec(&status) {
        Ok(json) => json,
        Err(e) => {
            warn(format_args!("failed to encode the exit status: {e}"));
            return 1;
        }
    };
    match state::write_atomic(&state_dir.join(state::EXIT), &json) {
        Ok(()) => 0,
        Err(e) => {
            warn(format_args!("{:#}", anyhow!(e)));
            1
        }
    }
}

/// Reaps every exited child; records the init's end in `ended`. Returns true when the shim has
/// no children left while the init has not been seen exiting (it is then not the shim's child,
/// which runc never does; the caller then watches it by pid).
fn reap(container: Pid, ended: &mut Option<(Ended, SystemTime)>) -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == container => {
                *ended = Some((Ended::Exited(code), SystemTime::now()));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == container => {
                *ended = Some((Ended::Signaled(signal as i32), SystemTime::now()));
            }
            Ok(WaitStatus::StillAlive) => return false,
            // An orphan of the container (host PID namespace) or a stop/continue report.
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => return ended.is_none(),
            Err(e) => {
                warn(format_args!("waitpid failed: {e}"));
                return false;
            }
        }
    }
}
