//! A pod's shared namespaces (network, IPC, UTS) kept as bind-mounted files, the way `ip netns`
//! keeps a named network namespace, so containers join them by path and they outlive any one
//! container (no pause process). They are made on a dedicated OS thread: `unshare` changes the
//! calling thread, never a tokio worker.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// Errors making or removing pod namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// A system call failed.
    #[error("failed to {action} {path}")]
    Sys {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: String,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// A file operation failed.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The helper thread could not be started or panicked.
    #[error("the namespace thread failed")]
    Thread,
}

/// Which namespaces a pod gets of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// A network namespace (not with hostNetwork).
    pub net: bool,
    /// An IPC namespace (not with hostIPC).
    pub ipc: bool,
    /// A UTS namespace with the pod's hostname (not with hostNetwork).
    pub uts: bool,
}

/// The namespace files made for a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNamespaces {
    /// `<dir>/net`, if made.
    pub net: Option<PathBuf>,
    /// `<dir>/ipc`, if made.
    pub ipc: Option<PathBuf>,
    /// `<dir>/uts`, if made.
    pub uts: Option<PathBuf>,
}

/// Makes the wanted namespaces and pins each as `<dir>/<kind>`. On failure nothing stays pinned.
pub fn create(dir: &Path, hostname: &str, wanted: Wanted) -> Result<PodNamespaces, NamespaceError> {
    std::fs::create_dir_all(dir).map_err(|source| NamespaceError::Io {
        action: "create",
        path: dir.display().to_string(),
        source,
    })?;
    let dir = dir.to_path_buf();
    let hostname = hostname.to_string();
    std::thread::Builder::new()
        .name("pod-namespaces".into())
        .spawn(move || pin_on_this_thread(&dir, &hostname, wanted))
        .map_err(|_| NamespaceError::Thread)?
        .join()
        .map_err(|_| NamespaceError::Thread)?
}

fn pin_on_this_thread(
    dir: &Path,
    hostname: &str,
    wanted: Wanted,
) -> Result<PodNamespaces, NamespaceError> {
    let mut flags = CloneFlags::empty();
    if wanted.net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if wanted.ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if wanted.uts {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if flags.is_empty() {
        return Ok(PodNamespaces::default());
    }
    nix::sched::unshare(flags).map_err(|source| NamespaceError::Sys {
        action: "unshare namespaces for",
        path: dir.display().to_string(),
        source,
    })?;
    if wanted.uts {
        nix::unistd::sethostname(hostname).map_err(|source| NamespaceError::Sys {
            action: "set the hostname for",
            path: dir.display().to_string(),
            source,
        })?;
    }
    if wanted.net {
        // The loopback interface comes down in a new namespace; pods expect it up.
        loopback_up().map_err(|source| NamespaceError::Io {
            action: "bring lo up for",
            path: dir.display().to_string(),
            source,
        })?;
    }
    let mut made = PodNamespaces::default();
    let pin = |kind: &str| -> Result<PathBuf, NamespaceError> {
        let target = dir.join(kind);
        std::fs::File::create(&target).map_err(|source| NamespaceError::Io {
            action: "create",
            path: target.display().to_string(),
            source,
        })?;
        let source_path = format!("/proc/thread-self/ns/{kind}");
        nix::mount::mount(
            Some(source_path.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| NamespaceError::Sys {
            action: "pin namespace",
            path: target.display().to_string(),
            source,
        })?;
        Ok(target)
    };
    let result = (|| {
        if wanted.net {
            made.net = Some(pin("net")?);
        }
        if wanted.ipc {
            made.ipc = Some(pin("ipc")?);
        }
        if wanted.uts {
            made.uts = Some(pin("uts")?);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(made),
        Err(e) => {
            let _ = remove(dir);
            Err(e)
        }
    }
}

/// Sets `lo` up in the calling thread's network namespace (SIOCSIFFLAGS on a socket made there).
fn loopback_up() -> std::io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    ifflags::set_up(&sock, "lo")
}

/// Unpins every namespace file in `dir` and removes the directory; idempotent.
pub fn remove(dir: &Path) -> Result<(), NamespaceError> {
    for kind in ["net", "ipc", "uts"] {
        let path = dir.join(kind);
        if !path.exists() {
            continue;
        }
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(source) => {
                return Err(NamespaceError::Sys {
                    action: "unpin namespace",
                    path: path.display().to_string(),
                    source,
                });
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NamespaceError::Io {
                    action: "remove",
                    path: path.display().to_string(),
                    source,
                });
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        // Other files (hosts, resolv.conf) may live there; the sandbox removes the rest.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        Err(source) => Err(NamespaceError::Io {
            action: "remove",
            path: dir.display().to_string(),
            source,
        }),
    }
}

#[allow(unsafe_code)]
mod ifflags {
    //! SIOCGIFFLAGS / SIOCSIFFLAGS on a socket: bring an interface up without netlink.
    use std::os::fd::{AsRawFd, OwnedFd};

    pub(super) fn set_up(sock: &OwnedFd, name: &str) -> std::io::Result<()> {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: the fd is a valid socket and req a valid ifreq for this request.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        }
        // SAFETY: as above.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
