//! What the benches that run a `windlass agent` in a node namespace share: the forwarder that
//! lets the agent reach the API server on the host's loopback, and the clean-up of the cgroups
//! and processes an agent leaves (kill, thaw, reap, remove deepest first).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use windlass_cni::netns::NetNs;

/// Relays connections made to `127.0.0.1:port` inside the node namespace to the same port on
/// the host's loopback, so the admin kubeconfig works unchanged from inside the node.
pub(super) struct Forwarder {
    stop: Arc<AtomicBool>,
    ns: PathBuf,
    port: u16,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    pub(super) fn start(node: &NetNs, port: u16) -> Result<Self> {
        let listener = node
            .run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, port)))?
            .with_context(|| format!("listen on 127.0.0.1:{port} in the node namespace"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        // A blocking accept: the forwarder uses no CPU while the agent is idle.
        let thread = std::thread::spawn(move || {
            for inside in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(inside) = inside else { continue };
                if let Ok(outside) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                    let _ = inside.set_nodelay(true);
                    let _ = outside.set_nodelay(true);
                    relay(inside, outside);
                }
            }
        });
        Ok(Forwarder {
            stop,
            ns: node.path().to_path_buf(),
            port,
            thread: Some(thread),
        })
    }
}

fn relay(a: TcpStream, b: TcpStream) {
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        pipe(a, b2);
        pipe(b, a2);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept with one last connection from inside the namespace.
        let port = self.port;
        if let Ok(ns) = NetNs::open(&self.ns) {
            let _ = ns.run(|| TcpStream::connect((Ipv4Addr::LOCALHOST, port)));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Kills every process in the cgroup `relative` of every hierarchy, then removes its
/// directories deepest first (what `tests/harness/cgroup.rs` does for the tests).
pub(super) fn remove_cgroups(relative: &str) -> Result<()> {
    const HIERARCHIES: &str = "/sys/fs/cgroup";
    let relative = relative.trim_start_matches('/');
    if relative.is_empty() {
        bail!("refusing to remove the root cgroup");
    }
    let roots: Vec<PathBuf> = std::fs::read_dir(HIERARCHIES)
        .with_context(|| format!("list {HIERARCHIES}"))?
        .filter_map(Result::ok)
        .map(|h| h.path().join(relative))
        .chain(std::iter::once(Path::new(HIERARCHIES).join(relative)))
        .filter(|p| p.is_dir())
        .collect();
    for root in &roots {
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
                for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                {
                    let _ = kill9(pid);
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
            bail!("could not remove cgroups {}", left.join(", "));
        }
        reap_orphans();
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(super) fn deepest_first(root: &Path) -> Vec<PathBuf> {
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

pub(super) fn processes() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

pub(super) fn kill9(pid: u32) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::ESRCH)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
}

/// Reaps zombie children that are not the server or agent (shims and runc processes whose
/// parent died hand them to this process, a child subreaper).
pub(super) fn reap_orphans() {
    let me = std::process::id().to_string();
    for pid in processes() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((comm, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if state == Some("Z")
            && ppid == Some(me.as_str())
            && !comm.ends_with("(windlass")
            && let Ok(pid) = i32::try_from(pid)
        {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}
