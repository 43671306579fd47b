//! The shim's state directory, as the agent reads it (also after the agent restarted):
//!
//! | file            | written by | when                                   | content                  |
//! |-----------------|------------|----------------------------------------|--------------------------|
//! | `shim.pid`      | the shim   | first thing, before `runc create`      | the shim's pid           |
//! | `container.pid` | runc       | by `runc create --pid-file`            | the container init's pid |
//! | `exit.json`     | the shim   | after the init exited and logs drained | [`ExitStatus`]           |
//! | `runc.log`      | runc       | runc's own log (`--log-format json`)   | JSON lines               |
//! | `shim.log`      | the shim   | the shim's own warnings once running   | text                     |
//!
//! Every file appears atomically (written to a temporary name in the same directory, then
//! renamed; runc writes its pid file the same way), so a reader never sees half a file. A shim
//! starting in a directory removes `container.pid`, `exit.json` and `runc.log` left by an
//! earlier run, and refuses to start while another shim recorded there is alive.
//!
//! The start report the shim prints on its stdout is [`StartReport`].

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The shim's pid.
pub const SHIM_PID: &str = "shim.pid";
/// The container init's pid (host pid namespace), written by runc.
pub const CONTAINER_PID: &str = "container.pid";
/// The container's exit status, [`ExitStatus`] as JSON.
pub const EXIT: &str = "exit.json";
/// runc's JSON log; its last `error` entry explains a failed `create` or `start`.
pub const RUNC_LOG: &str = "runc.log";
/// The shim's own diagnostics after it reported success (its stderr from then on).
pub const SHIM_LOG: &str = "shim.log";

/// Errors from reading or writing state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read or written.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `exit.json` is not what the shim writes.
    #[error("failed to parse {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A pid file does not hold a pid.
    #[error("{path} does not hold a pid: {content:?}")]
    BadPid {
        /// The file.
        path: PathBuf,
        /// What it holds.
        content: String,
    },
}

/// How the container's init process ended, as the shim records it in `exit.json`:
/// `{"exitCode": 137, "signal": 9, "startedAt": "...", "finishedAt": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitStatus {
    /// The exit code as Kubernetes reports it: the process's exit status, or 128 + the signal
    /// number when a signal killed it (SIGKILL → 137).
    pub exit_code: i32,
    /// The signal that killed the process, or `None` when it exited.
    pub signal: Option<i32>,
    /// When `runc start` returned (RFC 3339, UTC, nanoseconds).
    pub started_at: String,
    /// When the shim reaped the init process (RFC 3339, UTC, nanoseconds).
    pub finished_at: String,
}

impl ExitStatus {
    /// The status of a process that exited with `code`.
    pub fn exited(code: i32, started_at: String, finished_at: String) -> ExitStatus {
        ExitStatus {
            exit_code: code,
            signal: None,
            started_at,
            finished_at,
        }
    }

    /// The status of a process killed by signal number `signal`.
    pub fn signaled(signal: i32, started_at: String, finished_at: String) -> ExitStatus {
        ExitStatus {
            exit_code: 128 + signal,
            signal: Some(signal),
            started_at,
            finished_at,
        }
    }
}

/// The one line the shim prints on its stdout once the container runs (`{"pid": 4242,
/// "shimPid": 4241}`) or could not be started (`{"error": "runc create failed: ..."}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StartReport {
    /// The container is running.
    Started {
        /// The container init's pid.
        pid: u32,
        /// The shim's pid.
        #[serde(rename = "shimPid")]
        shim_pid: u32,
    },
    /// Nothing was started; nothing is left behind.
    Failed {
        /// What went wrong, with runc's own message when runc failed.
        error: String,
    },
}

/// The pids recorded in a state directory; `None` where a file does not exist (yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pids {
    /// From `shim.pid`.
    pub shim: Option<u32>,
    /// From `container.pid`.
    pub container: Option<u32>,
}

/// Reads `exit.json`; `None` while the container has not exited (or its shim died first).
pub fn read_exit(state_dir: &Path) -> Result<Option<ExitStatus>, StateError> {
    let path = state_dir.join(EXIT);
    let Some(bytes) = read_if_exists(&path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Parse { path, source })
}

/// Reads `shim.pid` and `container.pid`.
pub fn read_pids(state_dir: &Path) -> Result<Pids, StateError> {
    Ok(Pids {
        shim: read_pid(&state_dir.join(SHIM_PID))?,
        container: read_pid(&state_dir.join(CONTAINER_PID))?,
    })
}

fn read_pid(path: &Path) -> Result<Option<u32>, StateError> {
    let Some(bytes) = read_if_exists(path)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| StateError::BadPid {
            path: path.to_path_buf(),
            content: text.into_owned(),
        })
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether process `pid` exists and has not exited (a zombie, exited but not yet reaped, counts
/// as exited). A pid can be reused once its process is reaped: pair this with the state files
/// (for the shim, [`shim_alive`] also checks the process's name).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name, which is in parentheses and
        // may itself contain spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether the shim recorded in `state_dir` is running: its pid is alive and is a
/// `windlass-shim` process.
pub fn shim_alive(state_dir: &Path) -> Result<bool, StateError> {
    let Some(pid) = read_pid(&state_dir.join(SHIM_PID))? else {
        return Ok(false);
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Ok(comm.trim_end() == "windlass-shim" && is_alive(pid))
}

/// Writes `contents` to `path` atomically: to `.<name>.tmp` in the same directory, then renamed
/// over `path`. Not fsynced: the files describe processes, which do not survive a reboot either.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let io = |action: &'static str, p: &Path| {
        let path = p.to_path_buf();
        move |source| StateError::Io {
            action,
            path,
            source,
        }
    };
    let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(contents).map_err(io("write", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("rename into place", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_uses_the_contract_field_names() {
        let status = ExitStatus::signaled(9, "a".into(), "b".into());
        let json: serde_json::Value = serde_json::to_value(&status).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"exitCode": 137, "signal": 9, "startedAt": "a", "finishedAt": "b"})
        );
        let exited = ExitStatus::exited(3, "a".into(), "b".into());
        let json = serde_json::to_value(&exited).expect("serialize");
        assert_eq!(json["exitCode"], 3);
        assert!(json["signal"].is_null());
    }

    #[test]
    fn writes_and_reads_state_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_exit(dir.path()).expect("read"), None);
        assert_eq!(read_pids(dir.path()).expect("read"), Pids::default());

        let status = ExitStatus::exited(0, "s".into(), "f".into());
        let json = serde_json::to_vec(&status).expect("serialize");
        write_atomic(&dir.path().join(EXIT), &json).expect("write");
        write_atomic(&dir.path().join(SHIM_PID), b"41\n").expect("write");
        // runc writes its pid file without a newline.
        std::fs::write(dir.path().join(CONTAINER_PID), b"42").expect("write");

        assert_eq!(read_exit(dir.path()).expect("read"), Some(status));
        assert_eq!(
            read_pids(dir.path()).expect("read"),
            Pids {
                shim: Some(41),
                container: Some(42)
            }
        );
        // No temporary file is left behind.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [CONTAINER_PID, EXIT, SHIM_PID]);
    }

    #[test]
    fn bad_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(SHIM_PID), b"not a pid").expect("write");
        std::fs::write(dir.path().join(EXIT), b"{").expect("write");
        assert!(matches!(
            read_pids(dir.path()),
            Err(StateError::BadPid { .. })
        ));
        assert!(matches!(
            read_exit(dir.path()),
            Err(StateError::Parse { .. })
        ));
    }

    #[test]
    fn start_reports_round_trip() {
        let started: StartReport =
            serde_json::from_str(r#"{"pid": 7, "shimPid": 6}"#).expect("parse");
        assert_eq!(
            started,
            StartReport::Started {
                pid: 7,
                shim_pid: 6
            }
        );
        let failed = StartReport::Failed {
            error: "runc create failed: \"x\"".into(),
        };
        let line = serde_json::to_string(&failed).expect("serialize");
        assert_eq!(line, r#"{"error":"runc create failed: \"x\""}"#);
        assert_eq!(
            serde_json::from_str::<StartReport>(&line).expect("parse"),
            failed
        );
    }

    #[test]
    fn liveness_of_processes() {
        assert!(is_alive(std::process::id()));
        // Pid numbers above the kernel's maximum (4194304) never exist.
        assert!(!is_alive(999_999_999));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        // Wait until it is a zombie, then reap it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while is_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!is_alive(pid), "an exited, unreaped child counts as dead");
        child.wait().expect("reap");
    }
}
