//! The container's CRI log file: entries from both streams are appended through one buffer
//! (flushed by the caller after each batch of reads), the file is rotated once it reaches the
//! size limit, and reopened on request (SIGUSR1) after someone else renamed it.
//!
//! A failing write (a full disk, say) is reported once in the shim's log and the output that does
//! not fit in the buffer is dropped, so the container never blocks on a full pipe; containerd
//! also keeps draining the container's output when its writes fail.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use windlass_shim::cri_log::{Stream, Tag, format_entry};
use windlass_shim::rotation;

/// Rotation limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rotate once the file reaches this size; 0 never rotates.
    pub max_bytes: u64,
    /// Files kept, the current one included.
    pub max_files: usize,
}

/// The open log file and its rotation state.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    out: BufWriter<File>,
    /// Bytes in the current file, counting buffered ones.
    size: u64,
    limits: Limits,
    /// The name the last rotation used: rotated names have second resolution, so a second
    /// rotation within the same second waits for the next one.
    last_rotated: Option<PathBuf>,
    line: Vec<u8>,
    write_failed: bool,
}

fn open(path: &Path) -> Result<(BufWriter<File>, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("failed to open log file {}", path.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("failed to stat log file {}", path.display()))?
        .len();
    Ok((BufWriter::with_capacity(64 * 1024, file), size))
}

impl LogFile {
    /// Opens (appends to) `path`, creating it and its directory.
    pub fn open(path: &Path, limits: Limits) -> Result<LogFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create log directory {}", dir.display()))?;
        }
        let (out, size) = open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            out,
            size,
            limits,
            last_rotated: None,
            line: Vec::with_capacity(256),
            write_failed: false,
        })
    }

    /// Appends one entry, then rotates if the file reached its limit.
    pub fn write_entry(&mut self, stream: Stream, tag: Tag, message: &[u8]) {
        self.line.clear();
        format_entry(&mut self.line, SystemTime::now(), stream, tag, message);
        match self.out.write_all(&self.line) {
            Ok(()) => self.size += self.line.len() as u64,
            Err(e) => self.write_failed(&e),
        }
        if self.limits.max_bytes > 0 && self.size >= self.limits.max_bytes {
            self.rotate();
        }
    }

    /// Writes buffered entries to the file.
    pub fn flush(&mut self) {
        match self.out.flush() {
            Ok(()) => self.write_failed = false,
            Err(e) => self.write_failed(&e),
        }
    }

    /// Reopens the log path (after someone else renamed the file).
    pub fn reopen(&mut self) {
        self.flush();
        match open(&self.path) {
            Ok((out, size)) => {
                self.out = out;
                self.size = size;
                self.write_failed = false;
            }
            Err(e) => warn(format_args!("{e:#}; still writing to the old file")),
        }
    }

    /// Renames the file to its rotated name, opens a new one, and removes the oldest rotated
    /// files beyond the limit.
    fn rotate(&mut self) {
        let rotated = rotation::rotated_path(&self.path, SystemTime::now());
        if self.last_rotated.as_ref() == Some(&rotated) || rotated.exists() {
            // Already rotated this second: keep writing and try again in the next one.
            return;
        }
        self.flush();
        if let Err(e) = std::fs::rename(&self.path, &rotated) {
            warn(format_args!(
                "failed to rotate {} to {}: {e}",
                self.path.display(),
                rotated.display()
            ));
            self.last_rotated = Some(rotated);
            return;
        }
        self.last_rotated = Some(rotated);
        self.reopen();
        if let Err(e) = rotation::remove_excess(&self.path, self.limits.max_files) {
            warn(format_args!("{:#}", anyhow::Error::from(e)));
        }
    }

    fn write_failed(&mut self, error: &std::io::Error) {
        // BufWriter keeps at most its capacity of unwritten bytes and retries them on the next
        // flush; entries that do not fit meanwhile are dropped.
        if !std::mem::replace(&mut self.write_failed, true) {
            warn(format_args!(
                "failed to write log file {}: {error}; dropping output until writes succeed",
                self.path.display()
            ));
        }
    }
}

/// Writes a warning to the shim's stderr (its `shim.log` once running), never failing.
pub fn warn(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "windlass-shim: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use windlass_shim::cri_log::parse_line;

    fn messages(path: &Path) -> Vec<String> {
        let text = std::fs::read(path).expect("read log");
        text.split_inclusive(|&b| b == b'\n')
            .map(|line| {
                let entry = parse_line(line).expect("CRI line");
                String::from_utf8_lossy(entry.message).into_owned()
            })
            .collect()
    }

    #[test]
    fn rotates_past_the_limit_and_keeps_every_line_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let limits = Limits {
            max_bytes: 200,
            max_files: 5,
        };
        let mut log = LogFile::open(&path, limits).expect("open");
        for i in 0..20 {
            log.write_entry(Stream::Stdout, Tag::Full, format!("line {i}").as_bytes());
        }
        log.flush();
        let files = rotation::all_logs(&path).expect("list");
        // One rotation per second: the first one happens at once; a second one only if the
        // clock ticked over meanwhile.
        assert!((2..=3).contains(&files.len()), "{files:?}");
        let first = std::fs::metadata(&files[0]).expect("stat").len();
        assert!(first >= 200, "rotated only past the limit ({first} bytes)");
        let all: Vec<String> = files.iter().flat_map(|f| messages(f)).collect();
        let expected: Vec<String> = (0..20).map(|i| format!("line {i}")).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn removes_the_oldest_files_beyond_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        for old in ["20200101-000001", "20200101-000002", "20200101-000003"] {
            std::fs::write(dir.path().join(format!("0.log.{old}")), b"").expect("write");
        }
        let limits = Limits {
            max_bytes: 10,
            max_files: 3,
        };
        let mut log = LogFile::open(&path, limits).expect("open");
        log.write_entry(Stream::Stderr, Tag::Full, b"past the limit");
        log.flush();
        let files = rotation::all_logs(&path).expect("list");
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[0], "0.log.20200101-000003");
        assert!(names[1].starts_with("0.log.2"), "{names:?}");
        assert_eq!(names[2], "0.log");
        assert_eq!(messages(&files[1]), ["past the limit"]);
    }

    #[test]
    fn reopen_follows_an_external_rename() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let limits = Limits {
            max_bytes: 0,
            max_files: 5,
        };
        let mut log = LogFile::open(&path, limits).expect("open");
        log.write_entry(Stream::Stdout, Tag::Full, b"before");
        log.flush();
        let moved = dir.path().join("0.log.moved");
        std::fs::rename(&path, &moved).expect("rename");
        log.write_entry(Stream::Stdout, Tag::Full, b"still old");
        log.reopen();
        log.write_entry(Stream::Stdout, Tag::Full, b"after");
        log.flush();
        assert_eq!(messages(&moved), ["before", "still old"]);
        assert_eq!(messages(&path), ["after"]);
    }
}
