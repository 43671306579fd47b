//! Running runc: `create`, `start` and, to undo a failed start, `delete --force`.
//!
//! Every call logs to `<state>/runc.log` in JSON (`--log --log-format json`), as containerd's
//! runc shim does: in pass-through mode runc's stderr is the container's stderr pipe, so its
//! error message is read back from the log (the last `"level":"error"` entry the call wrote).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// How to run runc.
#[derive(Debug)]
pub struct Runc {
    bin: PathBuf,
    root: Option<PathBuf>,
    log: PathBuf,
}

/// The stdio runc create hands to the container.
#[derive(Debug)]
pub struct ContainerStdio {
    /// The container's stdin.
    pub stdin: Stdio,
    /// The write end of the stdout pipe.
    pub stdout: Stdio,
    /// The write end of the stderr pipe.
    pub stderr: Stdio,
}

impl Runc {
    /// runc at `bin` (looked up on PATH if it has no `/`), with `--root root` if given, logging
    /// to `log`.
    pub fn new(bin: PathBuf, root: Option<PathBuf>, log: PathBuf) -> Runc {
        Runc { bin, root, log }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        crate::signals::clean_spawn(&mut command);
        if let Some(root) = &self.root {
            command.arg("--root").arg(root);
        }
        command
            .arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"]);
        command
    }

    /// `runc create --bundle B --pid-file P ID`, the container's stdio being runc's. When it
    /// fails without logging an error, `stderr` reads what it wrote to the container's stderr.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        stdio: ContainerStdio,
        stderr: impl FnOnce() -> Vec<u8>,
    ) -> Result<(), String> {
        let mut command = self.command();
        command
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        let log_start = self.log_len();
        let status = command.status();
        // Dropping the command closes the shim's copies of the pipes' write ends, so the pipes
        // reach EOF when the container's processes close theirs.
        drop(command);
        self.check("create", log_start, status, stderr)
    }

    /// `runc start ID`.
    pub fn start(&self, id: &str) -> Result<(), String> {
        self.run_quietly("start", &["start", id])
    }

    /// `runc delete --force ID`: kills the container if it runs and removes it.
    pub fn delete_force(&self, id: &str) -> Result<(), String> {
        self.run_quietly("delete", &["delete", "--force", id])
    }

    /// Runs a subcommand with no stdin or stdout, capturing its stderr for error messages.
    fn run_quietly(&self, what: &str, args: &[&str]) -> Result<(), String> {
        let log_start = self.log_len();
        let output = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let (status, stderr) = match output {
            Ok(o) => (Ok(o.status), o.stderr),
            Err(e) => (Err(e), Vec::new()),
        };
        self.check(what, log_start, status, || stderr)
    }

    fn check(
        &self,
        what: &str,
        log_start: u64,
        status: std::io::Result<ExitStatus>,
        stderr: impl FnOnce() -> Vec<u8>,
    ) -> Result<(), String> {
        let status =
            status.map_err(|e| format!("failed to run {} {what}: {e}", self.bin.display()))?;
        if status.success() {
            return Ok(());
        }
        if let Some(message) = self.last_error(log_start) {
            return Err(message);
        }
        let stderr = String::from_utf8_lossy(&stderr()).trim().to_string();
        Err(if stderr.is_empty() {
            format!("runc {what} failed ({status})")
        } else {
            format!("runc {what} failed ({status}): {stderr}")
        })
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The message of the last error entry runc logged after byte `from` of its log.
    fn last_error(&self, from: u64) -> Option<String> {
        let mut file = File::open(&self.log).ok()?;
        file.seek(SeekFrom::Start(from)).ok()?;
        let mut text = String::new();
        file.take(1024 * 1024).read_to_string(&mut text).ok()?;
        last_error_in(&text)
    }
}

/// The `msg` of the last `"level":"error"` (or fatal) JSON line in `log`.
fn last_error_in(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| matches!(entry["level"].as_str(), Some("error" | "fatal" | "panic")))
        .filter_map(|entry| entry["msg"].as_str().map(str::to_string))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_last_error_from_runc_json_logs() {
        let log = r#"{"level":"warning","msg":"something odd","time":"2026-11-22T02:29:46Z"}
{"level":"error","msg":"first","time":"2026-11-22T02:29:46Z"}
not json at all
{"level":"error","msg":"runc create failed: unable to start container process: exec: \"/nonexistent\": stat /nonexistent: no such file or directory","time":"2026-11-22T02:29:46Z"}
{"level":"info","msg":"later info","time":"2026-11-22T02:29:46Z"}
"#;
        assert_eq!(
            last_error_in(log).as_deref(),
            Some(
                "runc create failed: unable to start container process: exec: \"/nonexistent\": \
                 stat /nonexistent: no such file or directory"
            )
        );
        assert_eq!(last_error_in(""), None);
    }

    #[test]
    fn a_missing_runc_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runc = Runc::new(
            dir.path().join("no-such-runc"),
            None,
            dir.path().join("runc.log"),
        );
        let err = runc.start("c1").expect_err("should fail");
        assert!(err.contains("no-such-runc start"), "{err}");
    }

    #[test]
    fn a_failing_runc_reports_its_stderr_when_it_logged_nothing() {
        // `false` ignores its arguments and fails without a word.
        let dir = tempfile::tempdir().expect("tempdir");
        let runc = Runc::new("false".into(), None, dir.path().join("runc.log"));
        let err = runc.delete_force("c1").expect_err("should fail");
        assert_eq!(err, "runc delete failed (exit status: 1)");
    }
}
