//! `windlass reset`: removes everything an agent (or `windlass up`) set up on this node, as
//! `kubeadm reset` does: pods and their shims (through the runtime, so CNI DEL releases every
//! IP), the kubelet's cgroup tiers, mounts left under the data dir, the pod bridge and the
//! routes the agent installed, CNI state and conflist, the BPF program links and map pins, and
//! the cluster state in the data dir. Images are kept. Every step tolerates what is already
//! gone, so a second run does nothing and succeeds.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::kubelet::cgroups;
use super::kubelet::runtime::Runtime as _;
use super::kubelet::runtime::oci::{OciOptions, OciRuntime};

/// What to reset: the flags of the agent that made it.
#[derive(Debug, Clone)]
pub struct ResetOptions {
    /// The agent's data dir.
    pub data_dir: PathBuf,
    /// The Node's name (names the BPF pin dir).
    pub node_name: String,
    /// The agent's `--cgroup-root`.
    pub cgroup_root: String,
    /// The agent's `--bpf-root`.
    pub bpf_root: PathBuf,
    /// The pod bridge.
    pub bridge: String,
    /// The service CIDR whose unreachable route the proxy installed.
    pub service_cidr: (Ipv4Addr, u8),
    /// Where the agent wrote `10-windlass.conflist`, if anywhere.
    pub cni_conf_dir: Option<PathBuf>,
    /// The runc binary.
    pub runc: PathBuf,
    /// The windlass-shim binary (only to open the runtime).
    pub shim: PathBuf,
    /// How long each container gets between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// A step that could not be completed (the others still ran).
#[derive(Debug, thiserror::Error)]
#[error("failed to {step}: {message}")]
pub struct ResetError {
    /// What was being done.
    pub step: String,
    /// Why it failed.
    pub message: String,
}

fn failed(step: impl Into<String>, message: impl std::fmt::Display) -> ResetError {
    ResetError {
        step: step.into(),
        message: message.to_string(),
    }
}

/// Stops and removes every pod the `oci` runtime holds in the data dir: containers get SIGTERM
/// and, after the grace period, SIGKILL; sandboxes get CNI DEL (releasing their IPs) and lose
/// their namespaces. Returns how many containers and sandboxes were removed.
pub async fn stop_pods(options: &ResetOptions) -> Result<(usize, usize), ResetError> {
    if !options.data_dir.join("sandboxes").is_dir() && !options.data_dir.join("containers").is_dir()
    {
        return Ok((0, 0));
    }
    let cgroups: Arc<dyn cgroups::Cgroups> = Arc::from(
        cgroups::detect(&options.cgroup_root, Path::new("/sys/fs/cgroup"))
            .map_err(|e| failed("open the cgroups", e))?,
    );
    let runtime = OciRuntime::new(OciOptions {
        data_dir: options.data_dir.clone(),
        runc: options.runc.clone(),
        runc_root: options.data_dir.join("runc"),
        shim: options.shim.clone(),
        log_max_bytes: 10 * 1024 * 1024,
        log_max_files: 5,
        cgroups,
    })
    .map_err(|e| failed("open the runtime", e))?;
    runtime
        .adopt()
        .await
        .map_err(|e| failed("adopt the running containers", e))?;
    let containers = runtime
        .list_containers()
        .await
        .map_err(|e| failed("list containers", e))?;
    let mut errors = Vec::new();
    // Every container gets its SIGTERM at once; the grace periods run side by side.
    let stops = containers.iter().map(|c| {
        let runtime = Arc::clone(&runtime);
        let id = c.id.clone();
        let grace = options.grace;
        async move {
            let result = runtime.stop_container(&id, grace).await;
            let result = match result {
                Ok(()) => runtime.remove_container(&id).await,
                Err(e) => Err(e),
            };
            (id, result)
        }
    });
    for (id, result) in futures::future::join_all(stops).await {
        match result {
            Ok(()) => tracing::info!(container = %id, "container removed"),
            Err(e) => errors.push(failed(format!("remove container {id}"), e)),
        }
    }
    let sandboxes = runtime
        .list_pod_sandboxes()
        .await
        .map_err(|e| failed("list sandboxes", e))?;
    for sandbox in &sandboxes {
        match runtime.remove_pod_sandbox(&sandbox.id).await {
            Ok(()) => {
                tracing::info!(pod = %sandbox.config.name, namespace = %sandbox.config.namespace, "pod sandbox removed")
            }
            // Removed meanwhile (by a pod worker finishing a deletion): gone is what we want.
            Err(_)
                if !options
                    .data_dir
                    .join("sandboxes")
                    .join(&sandbox.id)
                    .exists() => {}
            Err(e) => errors.push(failed(format!("remove sandbox {}", sandbox.id), e)),
        }
    }
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok((containers.len(), sandboxes.len())),
    }
}

/// Runs every reset step; returns the failures (empty when the node is clean).
pub async fn reset(options: &ResetOptions) -> Vec<ResetError> {
    let mut errors = Vec::new();
    match stop_pods(options).await {
        Ok((containers, sandboxes)) => {
            tracing::info!(containers, sandboxes, "pods stopped and removed")
        }
        Err(e) => errors.push(e),
    }
    // Whatever a crash left mounted under the data dir (rootfs overlays, volumes, netns files).
    if let Err(e) = unmount_below(&options.data_dir) {
        errors.push(e);
    }
    match cgroups::detect(&options.cgroup_root, Path::new("/sys/fs/cgroup")) {
        Ok(cgroups) => {
            if let Err(e) = cgroups.remove_qos_tiers() {
                errors.push(failed("remove the kubepods cgroups", e));
            }
        }
        Err(e) => errors.push(failed("open the cgroups", e)),
    }
    if let Err(e) = remove_network(options).await {
        errors.push(e);
    }
    let pins = options.bpf_root.join(&options.node_name);
    // Unpinning the links detaches the programs (nothing else holds them once the agent is
    // gone); unpinning the maps frees them.
    if let Err(e) = remove_tree(&pins) {
        errors.push(e);
    }
    let _ = std::fs::remove_dir(&options.bpf_root); // only if no other node's pins are there
    if let Some(dir) = &options.cni_conf_dir {
        let conflist = dir.join("10-windlass.conflist");
        if let Err(e) = std::fs::remove_file(&conflist)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(failed(format!("remove {}", conflist.display()), e));
        }
    }
    // The node's and the cluster's state; images stay, as `kubeadm reset` keeps them. A shim
    // that outlived its container may still be writing its last state (runc's), so what
    // reappears is removed again, for a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let mut failures = Vec::new();
        let mut removed_any = false;
        for entry in std::fs::read_dir(&options.data_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_name() == "images" {
                continue;
            }
            removed_any = true;
            let path = entry.path();
            let result = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&path)
            } else {
                std::fs::remove_file(&path)
                    .map_err(|e| failed(format!("remove {}", path.display()), e))
            };
            if let Err(e) = result {
                failures.push(e);
            }
        }
        if !removed_any || std::time::Instant::now() > deadline {
            errors.extend(failures);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    errors
}

/// `rm -rf`, where a missing path is success.
fn remove_tree(path: &Path) -> Result<(), ResetError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(failed(format!("remove {}", path.display()), e)),
    }
}

/// Detaches every mount at or below `dir`, deepest first.
fn unmount_below(dir: &Path) -> Result<(), ResetError> {
    let Ok(dir) = dir.canonicalize() else {
        return Ok(());
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| failed("read /proc/self/mountinfo", e))?;
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(&dir) && *p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        match nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => tracing::info!(path = %point.display(), "unmounted"),
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(failed(format!("unmount {}", point.display()), e)),
        }
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(raw: &str) -> PathBuf {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&raw[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&out),
    ))
}

/// Removes the pod bridge (its routes go with it), the service CIDR's unreachable route and
/// what the node network set up (peer routes, the VXLAN device, the masquerade rules).
async fn remove_network(options: &ResetOptions) -> Result<(), ResetError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| failed("open netlink", e))?;
    tokio::spawn(connection);
    super::proxy::net::remove_unreachable_route(&handle, options.service_cidr)
        .await
        .map_err(|e| failed("remove the service CIDR route", e))?;
    super::proxy::net::delete_link(&handle, &options.bridge)
        .await
        .map_err(|e| failed(format!("delete the bridge {}", options.bridge), e))?;
    let removed = super::network::teardown()
        .await
        .map_err(|e| failed("remove the node network (routes, VXLAN, masquerade)", e))?;
    tracing::info!(
        vxlan_device = removed.vxlan_device,
        routes = removed.routes,
        "node network removed"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/var/lib/windlass/a\040b"),
            PathBuf::from("/var/lib/windlass/a b")
        );
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }
}
