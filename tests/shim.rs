//! `windlass-shim` supervising real runc containers (busybox bundles under a private runc root):
//! CRI log lines as the kubelet reads them, exit codes and signals in `exit.json`, survival of
//! its parent's SIGKILL and of stop signals, a bad bundle reported and cleaned up, log rotation
//! and reopening on SIGUSR1, and a host-PID container whose leftover process holds the pipes.
//!
//! The shim binary comes from `target/debug/windlass-shim` (`cargo build -p windlass-shim`;
//! `cargo xtask test` builds it) or `WINDLASS_SHIM_BIN`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde_json::Value;
use windlass_tests::runc::{Bundle, Runc, reap_if_child};
use windlass_tests::wait::eventually;

const PATIENCE: Duration = Duration::from_secs(20);

fn shim_bin() -> PathBuf {
    windlass_tests::prereq::workspace_binary("windlass-shim", "WINDLASS_SHIM_BIN")
}

/// The arguments the agent passes for container `name` of bundle `bundle`.
fn shim_args(runc: &Runc, bundle: &Bundle, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--id".into(),
        bundle.id().into(),
        "--bundle".into(),
        bundle.path().display().to_string(),
        "--state-dir".into(),
        runc.state_dir(name).display().to_string(),
        "--log".into(),
        log_path(runc, name).display().to_string(),
        "--runc".into(),
        runc.bin().display().to_string(),
        "--runc-root".into(),
        runc.root().display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn log_path(runc: &Runc, name: &str) -> PathBuf {
    runc.log_dir(name).join("0.log")
}

/// Reads the shim's one report line from `out`, failing the test if none comes in time.
fn read_report(out: impl std::io::Read + Send + 'static) -> Value {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(read.map(|_| line));
    });
    let line = rx
        .recv_timeout(PATIENCE)
        .expect("the shim printed no report line in time")
        .expect("read the shim's report");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("report {line:?} is not JSON: {e}"))
}

/// A shim the test spawned; killed (it is ours) if the test ends while it still runs.
struct Shim {
    child: Child,
    report: Value,
    state_dir: PathBuf,
    log: PathBuf,
}

impl Shim {
    fn start(runc: &Runc, bundle: &Bundle, name: &str, extra: &[&str]) -> Shim {
        let mut child = Command::new(shim_bin())
            .args(shim_args(runc, bundle, name, extra))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn windlass-shim");
        let stdout = child.stdout.take().expect("shim stdout");
        let report = read_report(stdout);
        Shim {
            child,
            report,
            state_dir: runc.state_dir(name),
            log: log_path(runc, name),
        }
    }

    /// The container pid from the report, failing the test if the start failed.
    fn container_pid(&self) -> u32 {
        self.report["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("the shim did not start the container: {}", self.report))
            as u32
    }

    /// Waits for the shim to exit on its own; returns its exit code.
    fn wait(&mut self) -> i32 {
        let status = eventually("the shim to exit", PATIENCE, || {
            self.child.try_wait().expect("try_wait on the shim")
        });
        status.code().expect("the shim exited, not killed")
    }

    /// Waits for the shim to record the exit and exit 0; returns `exit.json`.
    fn exit_status(&mut self) -> Value {
        assert_eq!(self.wait(), 0, "the shim's exit code");
        read_exit_json(&self.state_dir)
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_exit_json(state_dir: &Path) -> Value {
    let path = state_dir.join("exit.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).expect("exit.json is JSON")
}

fn read_pid_file(path: &Path) -> u32 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim().parse().expect("a pid")
}

/// One CRI log line, parsed without the shim's own code.
#[derive(Debug, Clone)]
struct LogLine {
    time: jiff::Timestamp,
    stream: String,
    tag: String,
    message: String,
}

fn log_lines(path: &Path) -> Vec<LogLine> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.split_inclusive('\n')
        .map(|line| {
            let line = line
                .strip_suffix('\n')
                .unwrap_or_else(|| panic!("log line {line:?} does not end with a newline"));
            let mut fields = line.splitn(4, ' ');
            let mut next = || {
                fields
                    .next()
                    .unwrap_or_else(|| panic!("short line {line:?}"))
            };
            let time = next()
                .parse()
                .unwrap_or_else(|e| panic!("bad timestamp in {line:?}: {e}"));
            let (stream, tag, message) = (next().into(), next().into(), next().into());
            LogLine {
                time,
                stream,
                tag,
                message,
            }
        })
        .collect()
}

/// (tag, message) of one stream's lines, in order.
fn stream(lines: &[LogLine], name: &str) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| l.stream == name)
        .map(|l| (l.tag.clone(), l.message.clone()))
        .collect()
}

fn entry(tag: &str, message: &str) -> (String, String) {
    (tag.to_string(), message.to_string())
}

fn timestamp(value: &Value, field: &str) -> jiff::Timestamp {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing in {value}"))
        .parse()
        .unwrap_or_else(|e| panic!("{field} in {value} is not RFC 3339: {e}"))
}

#[test]
fn output_becomes_cri_log_lines_and_a_clean_exit_is_recorded() {
    let runc = Runc::new().expect("runc fixture");
    let bundle = runc
        .bundle("talker")
        .script(
            "echo hello; echo oops >&2; head -c 40960 /dev/zero | tr '\\0' a; echo; \
             printf 'crlf\\r\\n'; echo; printf tail",
        )
        .build()
        .expect("bundle");
    let before = jiff::Timestamp::now();
    let mut shim = Shim::start(&runc, &bundle, "talker", &[]);

    let pid = shim.container_pid();
    assert_eq!(
        shim.report["shimPid"].as_u64(),
        Some(u64::from(shim.child.id()))
    );
    assert_eq!(read_pid_file(&shim.state_dir.join("container.pid")), pid);
    assert_eq!(
        read_pid_file(&shim.state_dir.join("shim.pid")),
        shim.child.id()
    );

    let exit = shim.exit_status();
    assert_eq!(exit["exitCode"], 0, "{exit}");
    assert!(exit["signal"].is_null(), "{exit}");
    let (started, finished) = (
        timestamp(&exit, "startedAt"),
        timestamp(&exit, "finishedAt"),
    );
    let after = jiff::Timestamp::now();
    assert!(
        before <= started && started <= finished && finished <= after,
        "{exit}"
    );

    let lines = log_lines(&shim.log);
    let a = |n: usize| "a".repeat(n);
    assert_eq!(
        stream(&lines, "stdout"),
        vec![
            entry("F", "hello"),
            entry("P", &a(16384)),
            entry("P", &a(16384)),
            entry("F", &a(8192)),
            entry("F", "crlf"),
            entry("F", ""),
            // No newline before EOF: a partial line, as containerd writes it.
            entry("P", "tail"),
        ]
    );
    assert_eq!(stream(&lines, "stderr"), vec![entry("F", "oops")]);
    assert!(
        lines.windows(2).all(|w| w[0].time <= w[1].time),
        "timestamps go forward"
    );
    assert!(lines.iter().all(|l| before <= l.time && l.time <= after));
    // The agent deletes the container after reading exit.json; the shim leaves it stopped.
    let state = runc.state(bundle.id()).expect("runc state");
    assert_eq!(state.map(|s| s.status).as_deref(), Some("stopped"));
}

#[test]
fn exit_codes_and_kill_signals_are_recorded() {
    let runc = Runc::new().expect("runc fixture");
    let three = runc
        .bundle("three")
        .script("exit 3")
        .build()
        .expect("bundle");
    let sleeper = runc
        .bundle("sleeper")
        .args(&["sleep", "1000"])
        .build()
        .expect("bundle");

    let mut shim = Shim::start(&runc, &three, "three", &[]);
    let exit = shim.exit_status();
    assert_eq!(exit["exitCode"], 3, "{exit}");
    assert!(exit["signal"].is_null(), "{exit}");

    let mut shim = Shim::start(&runc, &sleeper, "sleeper", &[]);
    let pid = shim.container_pid();
    let state = runc
        .state(sleeper.id())
        .expect("runc state")
        .expect("exists");
    assert_eq!((state.status.as_str(), state.pid), ("running", pid));
    runc.kill(sleeper.id(), "KILL").expect("runc kill");
    let exit = shim.exit_status();
    assert_eq!(exit["exitCode"], 137, "{exit}");
    assert_eq!(exit["signal"], 9, "{exit}");
}

#[test]
fn the_shim_outlives_its_parent_and_ignores_stop_signals() {
    let runc = Runc::new().expect("runc fixture");
    let bundle = runc
        .bundle("survivor")
        .script(
            "grep -E '^Sig(Blk|Ign)' /proc/self/status; \
             while [ ! -e /tmp/go ]; do usleep 20000; done; echo after-signals; exec sleep 1000",
        )
        .build()
        .expect("bundle");

    // The agent's stand-in: a shell that starts the shim in the background and waits.
    let mut parent = Command::new("/bin/sh")
        .args(["-c", "\"$@\" & wait", "sh"])
        .arg(shim_bin())
        .args(shim_args(&runc, &bundle, "survivor", &[]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the parent shell");
    let report = read_report(parent.stdout.take().expect("parent stdout"));
    let shim_pid = report["shimPid"].as_u64().expect("shimPid") as u32;
    let _guard = KillOnDrop(shim_pid);
    let pid = report["pid"].as_u64().expect("pid") as u32;

    parent.kill().expect("SIGKILL the parent");
    parent.wait().expect("reap the parent");
    // Runc::new made the test a subreaper: the orphaned shim is now our child.
    let ppid = eventually("the shim to be re-parented", PATIENCE, || {
        let ppid = parent_of(shim_pid);
        (ppid != parent.id()).then_some(ppid)
    });
    assert_eq!(ppid, std::process::id());
    assert!(
        windlass_shim_alive(shim_pid),
        "the shim died with its parent"
    );

    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        kill(Pid::from_raw(shim_pid as i32), signal).expect("signal the shim");
    }
    // Let the container print again: the line reaching the log shows the shim handled the
    // signals (read from its signalfd before the pipe, in the same loop) and is still working.
    let go = bundle.path().join("rootfs/tmp/go");
    std::fs::write(&go, b"").expect("create /tmp/go in the container");
    let log = log_path(&runc, "survivor");
    eventually("the container's next line in the log", PATIENCE, || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("stdout F after-signals").then_some(())
    });
    assert!(
        windlass_shim_alive(shim_pid),
        "a stop signal killed the shim"
    );
    // The shell ignored SIGINT and SIGQUIT for its background job (the shim); the container
    // must still start with no signal ignored or blocked.
    let lines = log_lines(&log);
    assert_eq!(
        stream(&lines, "stdout")[..2],
        [
            entry("F", "SigBlk:\t0000000000000000"),
            entry("F", "SigIgn:\t0000000000000000")
        ]
    );
    let state = runc
        .state(bundle.id())
        .expect("runc state")
        .expect("exists");
    assert_eq!((state.status.as_str(), state.pid), ("running", pid));

    runc.kill(bundle.id(), "KILL").expect("runc kill");
    let exit = eventually("exit.json", PATIENCE, || {
        let status = waitpid(Pid::from_raw(shim_pid as i32), Some(WaitPidFlag::WNOHANG));
        match status.expect("waitpid on the shim") {
            WaitStatus::Exited(_, code) => Some(code),
            WaitStatus::StillAlive => None,
            other => panic!("the shim ended with {other:?}"),
        }
    });
    assert_eq!(exit, 0, "the shim's exit code");
    let exit = read_exit_json(&runc.state_dir("survivor"));
    assert_eq!(
        (exit["exitCode"].as_i64(), exit["signal"].as_i64()),
        (Some(137), Some(9))
    );
}

/// SIGKILLs a shim the test started indirectly if it is still running when the test ends.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.0 as i32);
        if windlass_shim_alive(self.0) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = waitpid(pid, None);
    }
}

fn windlass_shim_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    stat.contains("(windlass-shim)") && !matches!(state, None | Some("Z") | Some("X"))
}

fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    rest.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("ppid")
}

#[test]
fn a_bad_bundle_is_reported_and_leaves_nothing() {
    let runc = Runc::new().expect("runc fixture");
    let bundle = runc
        .bundle("broken")
        .args(&["/no/such/binary", "arg"])
        .build()
        .expect("bundle");
    let mut shim = Shim::start(&runc, &bundle, "broken", &[]);
    let error = shim.report["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in the report {}", shim.report));
    assert!(error.contains("/no/such/binary"), "{error}");
    assert_ne!(shim.wait(), 0, "the shim's exit code");

    assert_eq!(runc.list().expect("runc list"), Vec::<String>::new());
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").expect("list hierarchies") {
        let cgroup = hierarchy
            .expect("hierarchy")
            .path()
            .join(runc.prefix())
            .join("broken");
        assert!(!cgroup.exists(), "{} was left behind", cgroup.display());
    }
    let state_dir = runc.state_dir("broken");
    assert!(!state_dir.join("container.pid").exists());
    assert!(!state_dir.join("exit.json").exists());
}

#[test]
fn the_log_rotates_and_keeps_at_most_max_files() {
    let runc = Runc::new().expect("runc fixture");
    // 400 lines over about 4 s: rotated names have second resolution, so the shim rotates at
    // most once a second; 2 KiB fills in well under a second.
    let bundle = runc
        .bundle("chatty")
        .script("i=0; while [ $i -lt 400 ]; do echo line $i; i=$((i+1)); usleep 10000; done; echo last $i")
        .build()
        .expect("bundle");
    let mut shim = Shim::start(
        &runc,
        &bundle,
        "chatty",
        &["--log-max-bytes", "2048", "--log-max-files", "3"],
    );
    let exit = shim.exit_status();
    assert_eq!(exit["exitCode"], 0, "{exit}");

    let dir = runc.log_dir("chatty");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list the log directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    // Oldest first: rotated names sort by time, and the current file is the newest.
    names.sort_by_key(|n| (n == "0.log", n.clone()));
    assert_eq!(names.len(), 3, "at most --log-max-files files: {names:?}");
    assert_eq!(names[2], "0.log");
    for rotated in &names[..2] {
        let suffix = rotated.strip_prefix("0.log.").expect("rotated name");
        assert!(
            jiff::civil::DateTime::strptime("%Y%m%d-%H%M%S", suffix).is_ok(),
            "{rotated} is not 0.log.YYYYMMDD-HHMMSS"
        );
    }
    // Oldest to newest, the kept files hold one unbroken run of lines ending with the last.
    let messages: Vec<String> = names
        .iter()
        .flat_map(|n| log_lines(&dir.join(n)))
        .map(|l| l.message)
        .collect();
    assert_eq!(messages.last().map(String::as_str), Some("last 400"));
    let first: usize = messages[0]
        .strip_prefix("line ")
        .and_then(|n| n.parse().ok())
        .expect("first kept line");
    assert!(first > 0, "the oldest files were removed");
    let expected: Vec<String> = (first..400)
        .map(|i| format!("line {i}"))
        .chain(["last 400".to_string()])
        .collect();
    assert_eq!(messages, expected);
    let current = log_lines(&dir.join("0.log"));
    assert_eq!(current.last().map(|l| l.message.as_str()), Some("last 400"));
}

#[test]
fn sigusr1_reopens_the_log_after_an_external_rename() {
    let runc = Runc::new().expect("runc fixture");
    let bundle = runc
        .bundle("ticker")
        .script("i=0; while [ ! -e /tmp/stop ]; do echo tick $i; i=$((i+1)); usleep 20000; done; echo bye")
        .build()
        .expect("bundle");
    let mut shim = Shim::start(&runc, &bundle, "ticker", &[]);
    let log = shim.log.clone();
    let count = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    eventually("a few ticks", PATIENCE, || (count(&log) >= 3).then_some(()));
    let moved = log.with_file_name("0.log.external");
    std::fs::rename(&log, &moved).expect("rotate the log externally");
    kill(Pid::from_raw(shim.child.id() as i32), Signal::SIGUSR1).expect("SIGUSR1");
    eventually("ticks in the reopened log", PATIENCE, || {
        (count(&log) >= 2).then_some(())
    });
    std::fs::write(bundle.path().join("rootfs/tmp/stop"), b"").expect("create /tmp/stop");
    let exit = shim.exit_status();
    assert_eq!(exit["exitCode"], 0, "{exit}");

    let old: Vec<String> = log_lines(&moved).into_iter().map(|l| l.message).collect();
    let new: Vec<String> = log_lines(&log).into_iter().map(|l| l.message).collect();
    assert_eq!(new.last().map(String::as_str), Some("bye"));
    let all: Vec<String> = old.iter().chain(&new).cloned().collect();
    let ticks = all.len() - 1;
    let expected: Vec<String> = (0..ticks)
        .map(|i| format!("tick {i}"))
        .chain(["bye".to_string()])
        .collect();
    assert_eq!(
        all, expected,
        "nothing lost or duplicated across the reopen"
    );
}

#[test]
fn stdin_is_dev_null_unless_asked_for() {
    let runc = Runc::new().expect("runc fixture");
    let script = "readlink /proc/self/fd/0";
    let closed = runc
        .bundle("closed")
        .script(script)
        .build()
        .expect("bundle");
    let open = runc.bundle("open").script(script).build().expect("bundle");

    let mut shim = Shim::start(&runc, &closed, "closed", &[]);
    assert_eq!(shim.exit_status()["exitCode"], 0);
    let lines = log_lines(&shim.log);
    assert_eq!(stream(&lines, "stdout"), vec![entry("F", "/dev/null")]);

    let mut shim = Shim::start(&runc, &open, "open", &["--stdin"]);
    assert_eq!(shim.exit_status()["exitCode"], 0);
    let lines = log_lines(&shim.log);
    let out = stream(&lines, "stdout");
    assert!(
        out.len() == 1 && out[0].1.starts_with("pipe:["),
        "stdin should be a pipe: {out:?}"
    );
}

#[test]
fn a_host_pid_container_leaving_a_process_behind_still_finishes() {
    let runc = Runc::new().expect("runc fixture");
    // Without a PID namespace of its own, the kernel does not kill the container's other
    // processes when its init exits: the background sleep keeps stdout and stderr open.
    let bundle = runc
        .bundle("hostpid")
        .script("sleep 1000 & echo leftover $!; echo bye")
        .patch(|config| {
            let namespaces = config["linux"]["namespaces"]
                .as_array_mut()
                .expect("spec namespaces");
            namespaces.retain(|ns| ns["type"] != "pid");
        })
        .build()
        .expect("bundle");
    let mut shim = Shim::start(&runc, &bundle, "hostpid", &[]);
    let exit = shim.exit_status();
    assert_eq!(exit["exitCode"], 0, "{exit}");

    let lines = log_lines(&shim.log);
    let out = stream(&lines, "stdout");
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[1], entry("F", "bye"));
    let leftover: u32 = out[0]
        .1
        .strip_prefix("leftover ")
        .and_then(|p| p.parse().ok())
        .expect("the background pid");
    assert!(
        std::fs::metadata(format!("/proc/{leftover}")).is_ok(),
        "the leftover process still runs after the shim finished"
    );
    // runc delete kills what is left in the cgroup of a container without a PID namespace; the
    // shim is gone, so the leftover is now the test's (a subreaper's) child to reap.
    runc.remove(bundle.id()).expect("remove the container");
    reap_if_child(leftover);
    let stat = std::fs::read_to_string(format!("/proc/{leftover}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty(),
        "the leftover process was not cleaned up: {stat}"
    );
}
