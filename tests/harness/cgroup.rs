//! A cgroup v2 subtree per test (`<v2 mount>/<prefix>`), for the socket hooks and pods a test
//! runs. Dropping it kills what the test put inside and removes the directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{HarnessError, io_err};

/// A test-owned cgroup v2 directory.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

/// The cgroup v2 mount point (`/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on
/// unified ones), read from `/proc/self/mountinfo`.
pub fn v2_mount() -> Result<PathBuf, HarnessError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("read", "/proc/self/mountinfo"))?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .ok_or_else(|| HarnessError::Setup("no cgroup2 mount on this host".into()))
}

impl TestCgroup {
    /// Creates `<v2 mount>/<name>`; `name` must start with the test prefix.
    pub fn create(name: &str) -> Result<Self, HarnessError> {
        crate::prereq::require_root();
        let path = v2_mount()?.join(name);
        std::fs::create_dir(&path).map_err(io_err("create cgroup", path.display()))?;
        Ok(TestCgroup { path })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves process `pid` into this cgroup.
    pub fn add_process(&self, pid: u32) -> Result<(), HarnessError> {
        let procs = self.path.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(io_err("write", procs.display()))
    }

    /// The processes in this cgroup.
    pub fn processes(&self) -> Result<Vec<u32>, HarnessError> {
        let procs = self.path.join("cgroup.procs");
        let text = std::fs::read_to_string(&procs).map_err(io_err("read", procs.display()))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // cgroup.kill (5.14+) kills everything inside, including processes forked meanwhile.
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                // EBUSY until the killed processes have exited.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => {
                    eprintln!("could not remove cgroup {}: {e}", self.path.display());
                    return;
                }
            }
        }
    }
}
