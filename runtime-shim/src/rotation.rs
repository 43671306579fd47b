//! Rotated log files, named as the kubelet's container log manager names them: the log
//! `<dir>/0.log` is renamed to `<dir>/0.log.20231120-150405` (UTC, second resolution) and a new
//! `0.log` is opened. Names sort oldest first, so the newest rotated file is the last one, and
//! `--log-max-files` counts the current file too: at most `max_files - 1` rotated files are kept.
//!
//! The kubelet also gzips older rotated files (`0.log.<time>.gz`); the shim does not, but the
//! listing here accepts such names, so a log reader sees them in order.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::timestamp::{is_rotation_suffix, rotation_suffix};

/// Errors from listing or removing rotated logs.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The log's directory could not be read.
    #[error("failed to list rotated logs in {dir}")]
    List {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An old rotated log could not be removed.
    #[error("failed to remove old log {path}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The name `log` gets when it is rotated at `time`: `<log>.<YYYYMMDD-HHMMSS>`.
pub fn rotated_path(log: &Path, time: SystemTime) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".");
    name.push(rotation_suffix(time));
    PathBuf::from(name)
}

/// The rotated files of `log`, oldest first (not `log` itself). Temporary files (`.tmp`, which
/// the kubelet's compression leaves behind on failure) and names without a rotation timestamp
/// are not counted.
pub fn rotated_logs(log: &Path) -> Result<Vec<PathBuf>, RotationError> {
    let dir = match log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(base) = log.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{base}.");
    let entries = std::fs::read_dir(dir).map_err(|source| RotationError::List {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| {
            name.strip_prefix(&prefix).is_some_and(|rest| {
                rest.get(..15).is_some_and(is_rotation_suffix)
                    && (rest.len() == 15 || rest[15..].starts_with('.'))
                    && !rest.ends_with(".tmp")
            })
        })
        .collect();
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// Every file of `log`, oldest first, ending with `log` itself (the kubelet's `GetAllLogs`).
pub fn all_logs(log: &Path) -> Result<Vec<PathBuf>, RotationError> {
    let mut logs = rotated_logs(log)?;
    logs.push(log.to_path_buf());
    Ok(logs)
}

/// Removes the oldest rotated files of `log` until at most `max_files - 1` remain (the current
/// file is the last of `max_files`); returns the removed paths.
pub fn remove_excess(log: &Path, max_files: usize) -> Result<Vec<PathBuf>, RotationError> {
    let rotated = rotated_logs(log)?;
    let keep = max_files.saturating_sub(1);
    let excess = rotated.len().saturating_sub(keep);
    let mut removed = Vec::with_capacity(excess);
    for path in rotated.into_iter().take(excess) {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RotationError::Remove { path, source }),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn touch(path: &Path) {
        std::fs::write(path, b"x").expect("write test file");
    }

    #[test]
    fn rotated_names_follow_the_kubelet() {
        let time = UNIX_EPOCH + Duration::from_secs(1_700_492_645);
        assert_eq!(
            rotated_path(Path::new("/var/log/pods/ns_p_uid/c/0.log"), time),
            PathBuf::from("/var/log/pods/ns_p_uid/c/0.log.20231120-150405")
        );
    }

    #[test]
    fn lists_rotated_logs_oldest_first_and_ignores_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        for name in [
            "0.log",
            "0.log.20231120-150407",
            "0.log.20231120-150405.gz",
            "0.log.20231120-150406",
            "0.log.20231120-150408.tmp",
            "0.log.notatime",
            "1.log.20231120-150401",
            "0.logx.20231120-150401",
        ] {
            touch(&dir.path().join(name));
        }
        let names: Vec<String> = all_logs(&log)
            .expect("list")
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "0.log.20231120-150405.gz",
                "0.log.20231120-150406",
                "0.log.20231120-150407",
                "0.log"
            ]
        );
    }

    #[test]
    fn removes_the_oldest_beyond_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        touch(&log);
        for s in ["01", "02", "03", "04"] {
            touch(&dir.path().join(format!("0.log.20231120-1504{s}")));
        }
        let removed = remove_excess(&log, 3).expect("remove");
        assert_eq!(
            removed,
            vec![
                dir.path().join("0.log.20231120-150401"),
                dir.path().join("0.log.20231120-150402")
            ]
        );
        assert_eq!(rotated_logs(&log).expect("list").len(), 2);
        // max_files 1 keeps only the current file.
        remove_excess(&log, 1).expect("remove");
        assert_eq!(all_logs(&log).expect("list"), vec![log.clone()]);
        assert!(log.exists());
    }
}
