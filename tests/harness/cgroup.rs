//! A cgroup v2 subtree per test (`<v2 mount>/<prefix>`), for the socket hooks and pods a test
//! runs. Dropping it kills what the test put inside and removes the directory.
//! [`remove_everywhere`] removes a cgroup from every hierarchy (v1 controllers and v2), for
//! fixtures whose runtimes create one per controller (runc with cgroupfs).

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

/// Where every cgroup hierarchy is mounted (each v1 controller, `systemd`, and `unified` on
/// hybrid hosts).
const HIERARCHIES: &str = "/sys/fs/cgroup";

/// Kills every process in the cgroup `relative` (such as `/wlt3fa9c`) of every hierarchy under
/// `/sys/fs/cgroup`, then removes those directories, deepest first. runc with the cgroupfs
/// driver creates a container's cgroup in each v1 hierarchy and in the v2 one, and `runc delete`
/// leaves their parents behind. Waits up to 10 s for killed processes to leave.
pub fn remove_everywhere(relative: &str) -> Result<(), HarnessError> {
    let relative = relative.trim_start_matches('/');
    if relative.is_empty() {
        return Err(HarnessError::Setup(
            "refusing to remove the root cgroup".into(),
        ));
    }
    // Each v1 hierarchy and the hybrid v2 one are directories of /sys/fs/cgroup; on a unified
    // host /sys/fs/cgroup itself is the v2 hierarchy.
    let roots: Vec<PathBuf> = std::fs::read_dir(HIERARCHIES)
        .map_err(io_err("list", HIERARCHIES))?
        .filter_map(Result::ok)
        .map(|h| h.path().join(relative))
        .chain(std::iter::once(Path::new(HIERARCHIES).join(relative)))
        .filter(|p| p.is_dir())
        .collect();
    for root in &roots {
        // cgroup v2 kills a whole subtree at once (5.14+); v1 needs the pids, and a frozen v1
        // cgroup must thaw before its processes can die.
        let _ = std::fs::write(root.join("cgroup.kill"), "1");
        for dir in deepest_first(root) {
            let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for root in &roots {
            for dir in deepest_first(root) {
                for pid in procs(&dir) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => left.push(dir),
                }
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let left: Vec<String> = left.iter().map(|d| d.display().to_string()).collect();
            return Err(HarnessError::Setup(format!(
                "could not remove cgroups {}",
                left.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `root` and every directory below it, children before their parents.
fn deepest_first(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        let children: Vec<PathBuf> = std::fs::read_dir(&dirs[i])
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        dirs.extend(children);
        i += 1;
    }
    dirs.reverse();
    dirs
}

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
