//! `windlass-shim`: the per-container supervisor under runc (like conmon), and this library, which
//! holds what the agent needs to talk to it without pulling in anything heavy: the state files
//! ([`state`]), the CRI log format ([`cri_log`]) and rotated-log naming ([`rotation`]).
//!
//! # Contract
//!
//! The agent starts one shim per container:
//!
//! ```text
//! windlass-shim --id ID --bundle DIR --state-dir DIR --log PATH
//!               [--runc PATH]          runc binary (default: `runc` on PATH)
//!               [--runc-root DIR]      runc's --root (default: runc's own)
//!               [--log-max-bytes N]    rotate the log past N bytes (default 10 MiB; 0: never)
//!               [--log-max-files N]    files kept, the current one included (default 5; >= 1)
//!               [--stdin]              give the container a stdin pipe (default: /dev/null)
//! ```
//!
//! Options also take the `--name=value` form. `--version` prints the version.
//!
//! 1. The shim blocks SIGCHLD, SIGUSR1, SIGTERM, SIGINT, SIGHUP and SIGQUIT and reads them from a
//!    signalfd, resets every signal's disposition, becomes a child subreaper, and starts a new
//!    session, so it outlives the agent (also a SIGKILLed one) and a Ctrl-C on the agent's
//!    terminal. SIGTERM, SIGINT, SIGHUP and SIGQUIT are ignored: the agent stops containers with
//!    `runc kill`, never through the shim. runc, and so the container, starts with no signal
//!    blocked or ignored, whatever the agent's own signal state.
//! 2. It creates the state directory, refuses to start if a live shim is recorded there, removes
//!    files of an earlier run, writes `shim.pid`, and opens `--log` (creating its directory).
//! 3. It runs `runc [--root R] --log <state>/runc.log --log-format json create --bundle B
//!    --pid-file <state>/container.pid ID` with a pipe for the container's stdout and one for its
//!    stderr (runc's pass-through mode, `terminal: false`, hands its stdio to the container), then
//!    `runc start ID`.
//! 4. It prints ONE JSON line on its stdout and closes it: `{"pid": <container pid>, "shimPid":
//!    <own pid>}`; or `{"error": "<runc's error>"}` and exits 1 when create or start failed, after
//!    `runc delete --force ID` so nothing is left ([`state::StartReport`]). Invalid arguments
//!    also give an `{"error": ...}` line, with exit code 2. From then on its stdin and stdout are
//!    `/dev/null` and its stderr is `<state>/shim.log`.
//! 5. It copies both pipes into `--log` in CRI format ([`cri_log`]), rotating it past
//!    `--log-max-bytes` ([`rotation`]; at most one rotation per second, since rotated names have
//!    second resolution) and reopening it on SIGUSR1 (for rotation by someone else).
//! 6. It reaps every child (it is a subreaper, so orphans of a host-PID container come to it).
//!    When the container's init exits, it reads the pipes until both reach EOF (at most 2 s more:
//!    in the container's own PID namespace the kernel kills the rest with the init, but with a
//!    host PID namespace other processes may hold them), flushes the log, writes
//!    `<state>/exit.json` ([`state::ExitStatus`]), and exits 0. So once `exit.json` exists, the
//!    log is complete. It does not `runc delete`: the agent reads `exit.json`, then deletes.
//!
//! The shim never signals a process; it only reaps the ones that end up as its children.
#![deny(missing_docs)]

pub mod cri_log;
pub mod rotation;
pub mod state;
pub mod timestamp;
