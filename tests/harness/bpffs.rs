//! A BPF pin directory per test (`/sys/fs/bpf/<prefix>`), removed with everything pinned in it on
//! drop. Mounts bpffs on `/sys/fs/bpf` first when the host has not (as systemd would at boot).

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use crate::{HarnessError, io_err};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// A test-owned directory on bpffs.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

/// Makes sure `/sys/fs/bpf` is a bpffs mount. Parallel test processes serialize on an flock of
/// the directory so that only one of them mounts it.
pub fn ensure_bpffs() -> Result<(), HarnessError> {
    let is_bpffs = || statfs(BPFFS).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    if is_bpffs() {
        return Ok(());
    }
    let dir = File::open(BPFFS).map_err(io_err("open", BPFFS))?;
    let _lock = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io_err("lock", BPFFS)(e.into()))?;
    if is_bpffs() {
        return Ok(());
    }
    mount(
        Some("bpffs"),
        BPFFS,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|e| io_err("mount bpffs on", BPFFS)(e.into()))
}

impl PinDir {
    /// Creates `/sys/fs/bpf/<name>`; `name` must start with the test prefix.
    pub fn create(name: &str) -> Result<Self, HarnessError> {
        crate::prereq::require_root();
        ensure_bpffs()?;
        let path = Path::new(BPFFS).join(name);
        std::fs::create_dir(&path).map_err(io_err("create pin directory", path.display()))?;
        Ok(PinDir { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // Gone already is fine: `windlass reset` removes an empty pin root itself.
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!(
                "could not remove pin directory {}: {e}",
                self.path.display()
            );
        }
    }
}
