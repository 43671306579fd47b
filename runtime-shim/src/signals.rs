//! The shim's signals, and the clean signal state the container must start with.
//!
//! The shim blocks the signals it handles (SIGCHLD, SIGUSR1) and the stop signals it ignores
//! (SIGTERM, SIGINT, SIGHUP, SIGQUIT) and reads them from a signalfd. Neither the mask nor any
//! ignored disposition may reach the container: both survive fork and exec, runc and its `init`
//! reset neither, and std's `Command` inherits the parent's mask (since Rust 1.66).
//!
//! - Dispositions: a shell ignores SIGINT and SIGQUIT for its background jobs, and glibc's
//!   `posix_spawn` (which `Command` uses when it can) leaves glibc's internal signals 32 and 33
//!   ignored in the child. So at start the shim resets every signal but SIGKILL, SIGSTOP and
//!   SIGPIPE to the default action with the raw `rt_sigaction` system call (glibc's wrapper
//!   refuses 32 and 33). SIGPIPE stays ignored in the shim (it wants EPIPE); std resets it to the
//!   default in the processes it spawns.
//! - Spawning ([`clean_spawn`]): runc is started with fork and exec rather than `posix_spawn`,
//!   and the child empties its signal mask before exec.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result};
use nix::libc;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals the shim blocks and reads from its signalfd.
pub const HANDLED: [Signal; 6] = [
    Signal::SIGCHLD,
    Signal::SIGUSR1,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Blocks [`HANDLED`], resets every disposition to the default, and returns a non-blocking
/// signalfd for the blocked signals.
pub fn take() -> Result<SignalFd> {
    let mut mask = SigSet::empty();
    for signal in HANDLED {
        mask.add(signal);
    }
    mask.thread_block().context("failed to block signals")?;
    reset_dispositions();
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("failed to create a signalfd")
}

/// Sets every signal but SIGKILL, SIGSTOP and SIGPIPE to its default action. The shim's own
/// signals are blocked by then, so none of them can take the default action on the shim.
#[allow(unsafe_code)]
fn reset_dispositions() {
    // The kernel's `struct sigaction` (handler, flags, [restorer,] mask) all zero: SIG_DFL, no
    // flags, an empty mask. 32 bytes is the largest layout on the architectures Rust supports.
    let default = [0u64; 4];
    let sigset_size = std::mem::size_of::<u64>();
    for signal in 1..=libc::SIGRTMAX() {
        if [libc::SIGKILL, libc::SIGSTOP, libc::SIGPIPE].contains(&signal) {
            continue;
        }
        // SAFETY: `default` is a valid, zeroed kernel sigaction that outlives the call, the old
        // action is not asked for (null), and the sigset size is the kernel's (64 signals). It
        // installs no handler, and the shim has no handlers of its own that could be replaced.
        let _ = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                default.as_ptr(),
                std::ptr::null_mut::<libc::c_void>(),
                sigset_size,
            )
        };
    }
}

/// Makes `command` start with no signal blocked and no signal ignored: it spawns with fork and
/// exec instead of glibc's `posix_spawn` (which would leave glibc's internal signals ignored in
/// the child), and the child empties its signal mask before exec; see the module docs.
#[allow(unsafe_code)]
pub fn clean_spawn(command: &mut Command) -> &mut Command {
    // SAFETY: the closure only calls pthread_sigmask (sigprocmask), which is async-signal-safe,
    // on a value it owns; it allocates nothing and takes no lock, so it is sound between fork
    // and exec.
    unsafe {
        command.pre_exec(|| {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SigIgn` of a process's /proc status.
    fn ignored(status: &str) -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .expect("SigIgn in /proc status")
    }

    #[test]
    fn spawned_children_neither_block_nor_ignore_signals() {
        // Run in a child process of its own, so the test binary's signals stay as they were.
        if std::env::var_os("WINDLASS_SHIM_SIGNALS_CHILD").is_none() {
            let exe = std::env::current_exe().expect("test binary");
            let output = Command::new(exe)
                .args([
                    "--exact",
                    "signals::tests::spawned_children_neither_block_nor_ignore_signals",
                    "--nocapture",
                ])
                .env("WINDLASS_SHIM_SIGNALS_CHILD", "1")
                .output()
                .expect("rerun the test in a child");
            assert!(
                output.status.success(),
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            return;
        }
        // This process was started by posix_spawn: glibc's 32 and 33 are ignored here.
        let _signals = take().expect("take signals");
        let own = ignored(&std::fs::read_to_string("/proc/self/status").expect("status"));
        assert_eq!(own, 1 << (libc::SIGPIPE - 1), "only SIGPIPE stays ignored");
        let child = clean_spawn(&mut Command::new("cat"))
            .arg("/proc/self/status")
            .output()
            .expect("spawn cat");
        let status = String::from_utf8_lossy(&child.stdout);
        assert_eq!(ignored(&status), 0, "the child ignores no signal");
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .map(str::trim);
        assert_eq!(
            blocked,
            Some("0000000000000000"),
            "the child blocks no signal"
        );
    }
}
