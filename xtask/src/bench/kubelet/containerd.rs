//! The private containerd of the `cri` phase: the minimum of `tests/harness/containerd.rs`
//! (which xtask cannot depend on), driven with `ctr` instead of a CRI client.
//!
//! Debian's containerd 1.6 runs with a config of its own in `/tmp/<prefix>-containerd*`: root,
//! state, gRPC and ttrpc sockets, CNI `bin_dir` (Debian's `loopback` and the release
//! `windlass-cni`) and `conf_dir` (the agent writes its conflist there), runc's state root and
//! the pod netns mounts all live there; no TCP or debug listener is opened. It is started in
//! the node namespace from a thread that entered it with setns (`NetNs::run`), not through
//! `ip netns exec`, whose mount namespace hides the host's cgroupfs from runc. The pause image
//! (busybox-static sleeping forever) and `target/images/busybox.tar` are imported with
//! `ctr images import --base-name` (`--index-name` races containerd's GC).
//!
//! The agent removes its pods' sandboxes through CRI when the bench deletes the pods. Drop
//! then stops containerd (SIGTERM, then SIGKILL), kills the shims started for its socket,
//! removes their sockets, unmounts everything under its directory, removes the sandboxes'
//! cgroups and libcni's cached results of any sandbox left (after an error), and the directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use windlass_cni::netns::NetNs;

use crate::images::oci_image;

/// The containerd namespace its CRI plugin keeps images and sandboxes in.
const CRI_NAMESPACE: &str = "k8s.io";
/// Where Debian's reference CNI plugins are (`loopback` is always run by the CRI plugin).
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// Where containerd 1.6's shims put their sockets, whatever the config says.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// libcni's cache of ADD results (`<network>-<container id>-<ifname>`).
const LIBCNI_RESULTS: &str = "/var/lib/cni/results";
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Containerd {
    child: Option<Child>,
    socket: PathBuf,
    snapshotter: &'static str,
    /// The agent's cgroup root, under which the sandboxes' cgroups are.
    cgroup_root: String,
    log_copy: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd in `node` and waits until `ctr` reaches it.
    pub fn start(
        node: &NetNs,
        prefix: &str,
        cni_plugin: &Path,
        cgroup_root: &str,
        log_copy: PathBuf,
    ) -> Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-containerd"))
            .tempdir()
            .context("create containerd's directory")?;
        let path = |sub: &str| dir.path().join(sub);
        for sub in ["root", "state", "tmp", "opt", "runc", "cni/bin", "cni/conf"] {
            std::fs::create_dir_all(path(sub))
                .with_context(|| format!("create {}", path(sub).display()))?;
        }
        for plugin in [
            Path::new(REFERENCE_PLUGINS).join("loopback"),
            cni_plugin.into(),
        ] {
            if !plugin.is_file() {
                bail!("{} is missing (run `cargo xtask deps`)", plugin.display());
            }
            let link = path("cni/bin").join(plugin.file_name().context("plugin file name")?);
            std::os::unix::fs::symlink(&plugin, &link)
                .with_context(|| format!("link {}", link.display()))?;
        }
        let snapshotter = if overlay_works(dir.path()) {
            "overlayfs"
        } else {
            "native"
        };
        let socket = path("containerd.sock");
        let runc = which("runc")?;
        let config = path("config.toml");
        std::fs::write(&config, render(dir.path(), &socket, &runc, snapshotter))
            .context("write containerd's config")?;
        let log = std::fs::File::create(path("containerd.log"))?;
        let mut command = Command::new(which("containerd")?);
        command
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group, like the agent: Ctrl-C reaches only the bench.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        // The child inherits the namespace of the thread that forks it: the node's.
        let child = node.run(|| command.spawn())?.context("start containerd")?;
        let mut containerd = Containerd {
            child: Some(child),
            socket,
            snapshotter,
            cgroup_root: cgroup_root.to_string(),
            log_copy,
            dir,
        };
        containerd.wait_until_serving()?;
        Ok(containerd)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("cni/conf")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", CRI_NAMESPACE])
            .stdin(Stdio::null());
        command
    }

    fn wait_until_serving(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The CRI plugin is loaded once `plugins ls` reports it ok.
            let out = self.ctr().args(["plugins", "ls"]).output()?;
            let listing = String::from_utf8_lossy(&out.stdout);
            if out.status.success()
                && listing.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.get(1) == Some(&"cri") && f.last() == Some(&"ok")
                })
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!(
                    "containerd exited at start ({status}):\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!("containerd did not serve within 30 s:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ctr images import --base-name <reference without tag>` into the CRI namespace.
    pub fn import(&self, archive: &Path, reference: &str) -> Result<()> {
        let base_name = reference
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .map_or(reference, |(name, _)| name);
        let out = self
            .ctr()
            .args(["images", "import", "--base-name", base_name])
            .args(["--snapshotter", self.snapshotter])
            .arg(archive)
            .output()
            .context("run ctr images import")?;
        if !out.status.success() {
            bail!(
                "ctr images import {} failed: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let listed = self.ctr().args(["images", "ls", "-q"]).output()?;
        if !String::from_utf8_lossy(&listed.stdout)
            .lines()
            .any(|l| l == reference)
        {
            bail!(
                "{reference} is not listed after importing {}",
                archive.display()
            );
        }
        Ok(())
    }

    /// Writes the pause image (busybox-static, `sleep infinity`) and imports it.
    pub fn import_pause(&self) -> Result<()> {
        let busybox = Path::new(oci_image::HOST_BUSYBOX);
        if !oci_image::is_static_elf(busybox)? {
            bail!(
                "{} is not static: run `cargo xtask deps`",
                busybox.display()
            );
        }
        let archive = self.dir.path().join("pause.tar");
        oci_image::pause_image(busybox)?.write_archive(&archive)?;
        self.import(&archive, oci_image::PAUSE_IMAGE)?;
        let _ = std::fs::remove_file(&archive);
        Ok(())
    }

    /// Containers (sandboxes and their containers) containerd holds; `None` if `ctr` fails.
    pub fn containers(&self) -> Option<Vec<String>> {
        let out = self.ctr().args(["containers", "ls", "-q"]).output().ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
    }

    /// Whether containerd holds no container and no shim of it runs.
    pub fn idle(&self) -> bool {
        self.containers().is_some_and(|c| c.is_empty()) && self.shims().is_empty()
    }

    /// Pids of containerd shims whose `-address` is this containerd's socket.
    pub fn shims(&self) -> Vec<u32> {
        let socket = self.socket.as_os_str().as_encoded_bytes();
        super::super::node::processes()
            .into_iter()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                let is_shim = args.first().is_some_and(|argv0| {
                    let name = argv0.rsplit(|&b| b == b'/').next().unwrap_or(argv0);
                    name.starts_with(b"containerd-shim")
                });
                is_shim
                    && args
                        .windows(2)
                        .any(|pair| pair[0] == b"-address" && pair[1] == socket)
            })
            .collect()
    }

    fn cleanup(&mut self) {
        // Sandboxes still held (after an error), for libcni's cache below.
        let left = if self.child.is_some() {
            self.containers().unwrap_or_default()
        } else {
            Vec::new()
        };
        if !left.is_empty() {
            eprintln!(
                "bench kubelet: containerd still holds {} containers; removing them by force",
                left.len()
            );
        }
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::copy(self.dir.path().join("containerd.log"), &self.log_copy);
        let shim_sockets = self.shim_sockets();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            super::super::node::reap_orphans();
            let shims = self.shims();
            if shims.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in shims {
                let _ = super::super::node::kill9(pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for socket in shim_sockets {
            let _ = std::fs::remove_file(socket);
        }
        if let Err(e) = super::super::node::remove_cgroups(&self.cgroup_root) {
            eprintln!("bench kubelet: {e:#}");
        }
        unmount_under(self.dir.path());
        for id in &left {
            remove_libcni_cache(id);
        }
        super::super::node::reap_orphans();
    }

    /// The sockets named by the `address` files of this instance's shim bundles.
    fn shim_sockets(&self) -> Vec<PathBuf> {
        let tasks = self.dir.path().join("state/io.containerd.runtime.v2.task");
        std::fs::read_dir(&tasks)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten())
            .filter_map(Result::ok)
            .filter_map(|bundle| std::fs::read_to_string(bundle.path().join("address")).ok())
            .map(|address| PathBuf::from(address.trim().trim_start_matches("unix://")))
            .filter(|path| path.parent() == Some(Path::new(SHIM_SOCKET_DIR)))
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.cleanup();
    }
}

pub fn which(tool: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("{tool} is not installed: run `cargo xtask deps`"))
}

/// containerd's config (version 2), as `tests/harness/containerd.rs` writes it.
fn render(dir: &Path, socket: &Path, runc: &Path, snapshotter: &str) -> String {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let d = |sub: &str| q(&dir.join(sub));
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    let sandbox_image = format!("{:?}", oci_image::PAUSE_IMAGE);
    format!(
        r#"version = 2
root = {root}
state = {state}
temp = {temp}
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {grpc}
[ttrpc]
  address = {ttrpc}
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = {runc_v1}

[{cri}]
  sandbox_image = {sandbox_image}
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # Lowering oom_score_adj below containerd's own needs CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  disable_cgroup = false
  netns_mounts_under_state_dir = true
  [{cri}.cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
    max_conf_num = 1
  [{cri}.containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = {runc}
        Root = {runc_root}
        SystemdCgroup = false
"#,
        root = d("root"),
        state = d("state"),
        temp = d("tmp"),
        grpc = q(socket),
        ttrpc = q(&socket.with_extension("sock.ttrpc")),
        opt = d("opt"),
        runc_v1 = d("runc-v1"),
        cni_bin = d("cni/bin"),
        cni_conf = d("cni/conf"),
        runc = q(runc),
        runc_root = d("runc"),
    )
}

/// Whether an overlay mount works in `dir`; containerd's overlayfs snapshotter needs it.
fn overlay_works(dir: &Path) -> bool {
    let probe = dir.join("overlay-probe");
    let sub = |s: &str| probe.join(s);
    let made = ["lower", "upper", "work", "merged"]
        .iter()
        .all(|s| std::fs::create_dir_all(sub(s)).is_ok());
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        sub("lower").display(),
        sub("upper").display(),
        sub("work").display()
    );
    let mounted = made
        && nix::mount::mount(
            Some("overlay"),
            &sub("merged"),
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .is_ok();
    if mounted {
        let _ = nix::mount::umount2(&sub("merged"), nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(&probe);
    mounted
}

/// Lazily unmounts every mount point under `dir` (rootfs, shm, netns), deepest first.
fn unmount_under(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    for _ in 0..8 {
        let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for point in points {
            let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Removes `/var/lib/cni/results/<network>-<id>-<ifname>` for sandbox `id`.
fn remove_libcni_cache(id: &str) {
    let needle = format!("-{id}-");
    for entry in std::fs::read_dir(LIBCNI_RESULTS)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        if entry.file_name().to_string_lossy().contains(&needle) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
