//! Named network namespaces: create, open, enter and remove them the way iproute2 does.
//!
//! A named namespace is a bind mount of `/proc/thread-self/ns/net` onto `/run/netns/<name>`, so
//! `ip netns list` and `ip netns exec` see ours and we see theirs. Entering a namespace changes the
//! calling *thread*, so every entry happens on a dedicated, short-lived OS thread ([`NetNs::run`]):
//! never on a tokio worker, and never on the caller's thread.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Where named network namespaces are mounted (iproute2's `NETNS_RUN_DIR`).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors from namespace operations; each names the namespace and keeps the OS error.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The name is empty, too long, or contains a `/`.
    #[error("invalid network namespace name {0:?}")]
    InvalidName(String),
    /// A namespace with this name already exists.
    #[error("network namespace {0} already exists")]
    Exists(String),
    /// A filesystem or mount operation failed.
    #[error("failed to {action} network namespace {name}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The namespace's name or path.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The dedicated namespace thread could not be spawned or panicked.
    #[error("namespace thread for {0} failed")]
    Thread(String),
}

fn io_err(action: &'static str, name: &str, source: impl Into<io::Error>) -> NetNsError {
    NetNsError::Io {
        action,
        name: name.to_string(),
        source: source.into(),
    }
}

/// An owned named network namespace; dropping it removes it (and with it every link inside).
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    owned: bool,
}

impl NetNs {
    /// Creates the named namespace `/run/netns/<name>`; fails if it exists.
    pub fn create(name: &str) -> Result<Self, NetNsError> {
        if name.is_empty() || name.len() > 200 || name.contains('/') || name.starts_with('.') {
            return Err(NetNsError::InvalidName(name.to_string()));
        }
        ensure_run_dir()?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetNsError::Exists(name.to_string()));
            }
            Err(e) => return Err(io_err("create mount point for", name, e)),
        }
        // From here on the guard removes the mount point again if anything fails.
        let ns = NetNs {
            name: name.to_string(),
            path,
            owned: true,
        };
        let target = ns.path.clone();
        let owner = name.to_string();
        std::thread::Builder::new()
            .name(format!("netns-create-{name}"))
            .spawn(move || -> Result<(), NetNsError> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| io_err("unshare", &owner, e))?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| io_err("bind-mount", &owner, e))
            })
            .map_err(|_| NetNsError::Thread(name.to_string()))?
            .join()
            .map_err(|_| NetNsError::Thread(name.to_string()))??;
        Ok(ns)
    }

    /// Refers to an existing namespace by path (for example a runtime's `CNI_NETNS`) without owning
    /// it: dropping the handle leaves the namespace in place.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, NetNsError> {
        let path = path.into();
        let name = path.display().to_string();
        File::open(&path).map_err(|e| io_err("open", &name, e))?;
        Ok(NetNs {
            name,
            path,
            owned: false,
        })
    }

    /// The namespace's name (or the path it was opened by).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mount path, suitable for `CNI_NETNS` or `ip netns exec`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the namespace file, for `setns` or for netlink's `IFLA_NET_NS_FD`.
    pub fn file(&self) -> Result<File, NetNsError> {
        File::open(&self.path).map_err(|e| io_err("open", &self.name, e))
    }

    /// Runs `f` on a fresh OS thread that has entered this namespace, and returns its result.
    ///
    /// Sockets created inside keep the namespace after the thread ends, so a listener can be made
    /// here and used from anywhere. A panic in `f` is resumed on the caller's thread.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetNsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = self.file()?;
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(scope, move || -> Result<T, NetNsError> {
                    setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                        .map_err(|e| io_err("enter", &self.name, e))?;
                    Ok(f())
                })
                .map_err(|_| NetNsError::Thread(self.name.clone()))?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs a command inside this namespace (like `ip netns exec`) and waits for its output.
    pub fn exec(&self, command: &mut Command) -> Result<Output, NetNsError> {
        self.run(|| command.output())?
            .map_err(|e| io_err("run a command in", &self.name, e))
    }

    /// Writes a sysctl under `/proc/sys/net/...` inside this namespace, e.g.
    /// `("net/ipv4/ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetNsError> {
        let path = Path::new("/proc/sys").join(key);
        self.run(|| std::fs::write(&path, value))?
            .map_err(|e| io_err("write sysctl in", &self.name, e))
    }

    /// Removes the namespace now, reporting failure (drop does the same but ignores errors).
    pub fn remove(mut self) -> Result<(), NetNsError> {
        self.owned = false;
        remove_named(&self.path, &self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned {
            let _ = remove_named(&self.path, &self.name);
        }
    }
}

/// Unmounts and unlinks `/run/netns/<name>`; a namespace that is already gone is not an error.
pub fn remove(name: &str) -> Result<(), NetNsError> {
    remove_named(&Path::new(NETNS_RUN_DIR).join(name), name)
}

fn remove_named(path: &Path, name: &str) -> Result<(), NetNsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(io_err("unmount", name, e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", name, e)),
    }
}

/// Names of the namespaces under `/run/netns` (empty when the directory does not exist).
pub fn list() -> Result<Vec<String>, NetNsError> {
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", NETNS_RUN_DIR, e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Makes `/run/netns` exist and be a shared mount point, as iproute2 does, so namespace mounts
/// propagate to other mount namespaces (containerd's, for instance).
///
/// Several processes (parallel tests, the CNI plugin) may get here at once; an exclusive `flock`
/// on the directory keeps two of them from stacking bind mounts, which would hide namespaces
/// mounted on the lower one.
fn ensure_run_dir() -> Result<(), NetNsError> {
    std::fs::create_dir_all(NETNS_RUN_DIR).map_err(|e| io_err("create", NETNS_RUN_DIR, e))?;
    let dir = File::open(NETNS_RUN_DIR).map_err(|e| io_err("open", NETNS_RUN_DIR, e))?;
    let _lock = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io_err("lock", NETNS_RUN_DIR, e))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(
        None::<&str>,
        NETNS_RUN_DIR,
        None::<&str>,
        shared,
        None::<&str>,
    )
    .is_ok()
    {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself first (iproute2 does the same).
    mount(
        Some(NETNS_RUN_DIR),
        NETNS_RUN_DIR,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| io_err("bind-mount", NETNS_RUN_DIR, e))?;
    mount(
        None::<&str>,
        NETNS_RUN_DIR,
        None::<&str>,
        shared,
        None::<&str>,
    )
    .map_err(|e| io_err("make shared", NETNS_RUN_DIR, e))
}
