//! A private containerd for one test, running inside a node's network namespace, driven over its
//! CRI socket with the `k8s-cri` client.
//!
//! Debian's containerd 1.6 is started with a config of its own in a temp directory
//! (`/tmp/<prefix>-containerd*`): root, state, gRPC and ttrpc sockets, CNI `bin_dir` and
//! `conf_dir`, runc's state root and the pod netns mounts (`netns_mounts_under_state_dir`) all
//! live there, no TCP or debug listener is opened, and the CRI stream server binds 127.0.0.1:0 of
//! the node namespace. Because containerd inherits the node namespace, the CNI plugins it runs
//! configure the node, never the host. Pod sandboxes go into the cgroup `/<prefix>-containerd` of
//! every hierarchy (cgroupfs driver), so the leak check sees anything left.
//!
//! Dropping the fixture (also while unwinding from a panic) stops and removes every sandbox,
//! stops containerd, kills shims started for its socket and processes left in its cgroups,
//! unmounts what is mounted under its directory, removes the netns it reported and the
//! directory itself. containerd writes a few things outside its root that it cannot be told
//! otherwise: libcni's result cache (`/var/lib/cni/results`, emptied by CNI DEL) and the shim
//! sockets (`/run/containerd/s/<hash>`, removed when a shim exits); drop removes those of its own
//! sandboxes if they are left behind.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, PodSandboxStatusResponse, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest, VersionRequest, VersionResponse,
};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::oci_image::{self, WrittenImage};
use crate::{HarnessError, NetNs, io_err, prereq};

/// The containerd namespace its CRI plugin keeps images and sandboxes in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// How long one CRI call may take before the fixture gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long containerd may take to serve CRI after it is started.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Where containerd 1.6's shims put their sockets, whatever the config says.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// libcni's cache of ADD results (`<network>-<container id>-<ifname>`).
const LIBCNI_RESULTS: &str = "/var/lib/cni/results";

/// Configures and starts a [`Containerd`].
#[derive(Debug)]
pub struct ContainerdBuilder<'a> {
    ns: &'a NetNs,
    prefix: String,
    cni_plugins: Vec<PathBuf>,
    conflists: Vec<(String, String)>,
    sandbox_image: String,
}

/// A running private containerd; see the module docs.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    cri: Option<Cri>,
    socket: PathBuf,
    cgroup_parent: String,
    snapshotter: &'static str,
    known: Mutex<Known>,
    // Dropped last, after `Drop::drop` has unmounted everything under it.
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Cri {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

/// Sandboxes this instance ran and the network namespaces its sandbox statuses named.
#[derive(Debug, Default)]
struct Known {
    /// Run and not yet removed.
    sandboxes: BTreeSet<String>,
    /// Every sandbox id ever run (for libcni's cache).
    ever: BTreeSet<String>,
    netns: BTreeSet<PathBuf>,
}

impl<'a> ContainerdBuilder<'a> {
    /// Links a CNI plugin binary into the `bin_dir` under its file name (`loopback`, which
    /// containerd's CRI plugin always runs, is linked from Debian's plugins by default).
    pub fn cni_plugin(mut self, path: impl Into<PathBuf>) -> Self {
        self.cni_plugins.push(path.into());
        self
    }

    /// Writes a network configuration file into the `conf_dir` before containerd starts.
    pub fn cni_conflist(mut self, file_name: &str, contents: &str) -> Self {
        self.conflists
            .push((file_name.to_string(), contents.to_string()));
        self
    }

    /// Sets the CRI `sandbox_image` (default [`oci_image::PAUSE_IMAGE`]).
    pub fn sandbox_image(mut self, reference: &str) -> Self {
        self.sandbox_image = reference.to_string();
        self
    }

    /// Starts containerd in the namespace and waits until it answers CRI `Version`.
    pub fn start(self) -> Result<Containerd, HarnessError> {
        prereq::require_root();
        let containerd_bin = prereq::require_tool("containerd");
        prereq::require_tool("containerd-shim-runc-v2");
        prereq::require_tool("ctr");
        let runc = prereq::require_tool("runc");
        let loopback = crate::cni::reference_plugin("loopback");

        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-containerd", self.prefix))
            .tempdir()
            .map_err(io_err("create", "containerd directory"))?;
        let path = |sub: &str| dir.path().join(sub);
        for sub in [
            "root", "state", "tmp", "opt", "runc", "cni/bin", "cni/conf", "pods",
        ] {
            std::fs::create_dir_all(path(sub)).map_err(io_err("create", path(sub).display()))?;
        }
        for plugin in std::iter::once(&loopback).chain(&self.cni_plugins) {
            let name = plugin
                .file_name()
                .ok_or_else(|| HarnessError::Setup(format!("no file name in {plugin:?}")))?;
            let link = path("cni/bin").join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(plugin, &link).map_err(io_err("link", link.display()))?;
        }
        for (name, contents) in &self.conflists {
            let file = path("cni/conf").join(name);
            std::fs::write(&file, contents).map_err(io_err("write", file.display()))?;
        }

        let snapshotter = if overlay_works(dir.path()) {
            "overlayfs"
        } else {
            "native"
        };
        let socket = path("containerd.sock");
        let cgroup_parent = format!("/{}-containerd", self.prefix);
        let config = ConfigPaths {
            dir: dir.path(),
            socket: &socket,
            runc: &runc,
            snapshotter,
            sandbox_image: &self.sandbox_image,
        }
        .render();
        let config_path = path("config.toml");
        std::fs::write(&config_path, config).map_err(io_err("write", config_path.display()))?;

        let log_path = path("containerd.log");
        let log = std::fs::File::create(&log_path).map_err(io_err("create", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(io_err("duplicate", log_path.display()))?;
        let mut command = Command::new(&containerd_bin);
        command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // The child inherits the namespace of the thread that forks it: the node's.
        let child = self
            .ns
            .run(|| command.spawn())?
            .map_err(io_err("start", containerd_bin.display()))?;

        let mut containerd = Containerd {
            child: Some(child),
            cri: None,
            socket,
            cgroup_parent,
            snapshotter,
            known: Mutex::new(Known::default()),
            dir,
        };
        containerd.cri = Some(Cri::connect(&containerd.socket)?);
        containerd.wait_until_serving()?;
        Ok(containerd)
    }
}

struct ConfigPaths<'a> {
    dir: &'a Path,
    socket: &'a Path,
    runc: &'a Path,
    snapshotter: &'a str,
    sandbox_image: &'a str,
}

impl ConfigPaths<'_> {
    /// containerd's config (version 2): everything under `dir`, nothing listening on TCP.
    fn render(&self) -> String {
        let d = |sub: &str| toml_string(&self.dir.join(sub).display().to_string());
        let socket = self.socket.display().to_string();
        let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
        format!(
            r#"version = 2
root = {root}
state = {state}
temp = {temp}
oom_score = 0
# Snapshotters that cannot work here only log errors at start.
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
  # The sandbox's oom_score_adj (-998) may not go below containerd's own: lowering it needs
  # CAP_SYS_RESOURCE, which root lacks on some hosts (runc then fails with "can't get final
  # child's PID from pipe").
  restrict_oom_score_adj = true
  disable_cgroup = false
  netns_mounts_under_state_dir = true
  [{cri}.cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
    max_conf_num = 1
  [{cri}.containerd]
    snapshotter = {snapshotter}
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
            grpc = toml_string(&socket),
            ttrpc = toml_string(&format!("{socket}.ttrpc")),
            opt = d("opt"),
            runc_v1 = d("runc-v1"),
            sandbox_image = toml_string(self.sandbox_image),
            cni_bin = d("cni/bin"),
            cni_conf = d("cni/conf"),
            snapshotter = toml_string(self.snapshotter),
            runc = toml_string(&self.runc.display().to_string()),
            runc_root = d("runc"),
        )
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether an overlay mount works in `dir` (it does not on some nested filesystems, e.g. on
/// overlayfs itself); containerd's overlayfs snapshotter needs it.
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
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .is_ok();
    if mounted {
        let _ = nix::mount::umount2(&sub("merged"), MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(&probe);
    mounted
}

impl Cri {
    fn connect(socket: &Path) -> Result<Cri, HarnessError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("build", "CRI client runtime"))?;
        let socket = socket.to_path_buf();
        let endpoint = Endpoint::from_static("http://containerd.invalid")
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT);
        // The channel's worker task lives on this runtime and runs whenever a call blocks on it.
        let channel = {
            let _guard = runtime.enter();
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
        };
        Ok(Cri { runtime, channel })
    }
}

impl Containerd {
    /// Starts a builder for a containerd inside `ns`; `prefix` (a test prefix such as
    /// [`crate::topology::Topology::prefix`]) names its directory and cgroup.
    pub fn builder<'a>(ns: &'a NetNs, prefix: &str) -> ContainerdBuilder<'a> {
        ContainerdBuilder {
            ns,
            prefix: prefix.to_string(),
            cni_plugins: Vec::new(),
            conflists: Vec::new(),
            sandbox_image: oci_image::PAUSE_IMAGE.to_string(),
        }
    }

    fn cri(&self) -> &Cri {
        match &self.cri {
            Some(cri) => cri,
            None => unreachable!("the CRI client is only taken while dropping"),
        }
    }

    /// Drives `future` (a call on [`Self::runtime_client`] or [`Self::image_client`]) to
    /// completion on the fixture's runtime. Not for use inside another tokio runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.cri().runtime.block_on(future)
    }

    /// A CRI `RuntimeService` client (runtime.v1) on containerd's socket.
    pub fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.cri().channel.clone())
    }

    /// A CRI `ImageService` client (runtime.v1) on containerd's socket.
    pub fn image_client(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.cri().channel.clone())
    }

    /// The gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The fixture's directory (root, state, config, CNI dirs, containerd.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CNI `bin_dir` containerd runs plugins from.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.path().join("cni/bin")
    }

    /// The CNI `conf_dir` containerd reads the network configuration from.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("cni/conf")
    }

    /// The snapshotter in use: `overlayfs`, or `native` where overlay mounts fail.
    pub fn snapshotter(&self) -> &'static str {
        self.snapshotter
    }

    /// The cgroup (relative to each hierarchy's root) sandboxes are put under.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// Kills containerd with SIGKILL, as a crash would, leaving its shims and sandboxes running;
    /// drop then cleans up without its help.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.path().join("containerd.log"), lines)
    }

    fn call<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, HarnessError> {
        // The timer is created inside the runtime, which it needs.
        match self.block_on(async { tokio::time::timeout(CALL_TIMEOUT, call).await }) {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(HarnessError::Cri {
                call: what,
                source: Box::new(status),
            }),
            Err(_) => Err(HarnessError::Setup(format!(
                "CRI {what} did not answer within {CALL_TIMEOUT:?}"
            ))),
        }
    }

    fn wait_until_serving(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last = match self.socket.exists() {
                true => match self.version() {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                false => "no socket yet".to_string(),
            };
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(HarnessError::Setup(format!(
                    "containerd exited at start ({status}); its log ends:\n{}",
                    self.log_tail(40)
                )));
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Setup(format!(
                    "containerd did not serve CRI within {START_TIMEOUT:?} ({last}); its log \
                     ends:\n{}",
                    self.log_tail(40)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// CRI `Version` (runtime.v1).
    pub fn version(&self) -> Result<VersionResponse, HarnessError> {
        let mut client = self.runtime_client();
        self.call("Version", async move {
            client
                .version(VersionRequest {
                    version: "v1".into(),
                })
                .await
        })
    }

    /// Imports an OCI archive into the CRI namespace with `ctr images import` and unpacks it for
    /// the CRI snapshotter. The archive's `index.json` names the manifest `reference` (or just
    /// its tag); `--base-name` keeps only that image.
    ///
    /// Not `--index-name reference`: when the manifest's annotation carries the same name, ctr
    /// 1.6 first points the name at the index, then at the manifest, and unpacks both after its
    /// lease is gone; containerd's GC can collect the now unreferenced index blob in between
    /// ("content digest ...: not found", about one import in five here).
    pub fn import_archive(&self, archive: &Path, reference: &str) -> Result<(), HarnessError> {
        let ctr = prereq::require_tool("ctr");
        let base_name = oci_image::Image::from_reference(reference)?.name;
        let out = Command::new(&ctr)
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", CRI_NAMESPACE, "images", "import"])
            .args(["--base-name", &base_name, "--snapshotter", self.snapshotter])
            .arg(archive)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("run", ctr.display()))?;
        if !out.status.success() {
            return Err(HarnessError::Setup(format!(
                "ctr images import {} failed ({}): {}",
                archive.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Writes `image` as an OCI archive in the fixture's directory, imports it and checks that
    /// CRI `ImageStatus` knows it by its reference.
    pub fn import(&self, image: &oci_image::Image) -> Result<WrittenImage, HarnessError> {
        let archive = self
            .dir
            .path()
            .join(format!("{}.tar", image.name.replace(['/', ':'], "_")));
        let written = image.write_archive(&archive)?;
        self.import_archive(&archive, &written.reference)?;
        let _ = std::fs::remove_file(&archive);
        // The CRI plugin learns of the image from containerd's events, a moment after ctr
        // returns.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.image_status(&written.reference)?.map(|image| image.id);
            if seen.as_deref() == Some(written.config_digest.as_str()) {
                return Ok(written);
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Setup(format!(
                    "CRI reports image {} as {seen:?} 10 s after import, expected id {}",
                    written.reference, written.config_digest
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CRI `ImageStatus` of `reference` (`None` when containerd does not have it).
    pub fn image_status(
        &self,
        reference: &str,
    ) -> Result<Option<k8s_cri::v1::Image>, HarnessError> {
        let mut client = self.image_client();
        let request = ImageStatusRequest {
            image: Some(ImageSpec {
                image: reference.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        Ok(self
            .call(
                "ImageStatus",
                async move { client.image_status(request).await },
            )?
            .image)
    }

    /// A minimal sandbox config for pod `namespace/name` with uid `uid`: hostname `name`, logs
    /// in the fixture's directory, the fixture's cgroup parent, pod network namespace.
    pub fn sandbox_config(&self, namespace: &str, name: &str, uid: &str) -> PodSandboxConfig {
        let log_directory = self.dir.path().join("pods").join(uid);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: uid.to_string(),
                namespace: namespace.to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: log_directory.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// CRI `RunPodSandbox`; returns the sandbox id. The config's cgroup parent must be empty
    /// (the fixture's is used) or inside the fixture's.
    pub fn run_pod_sandbox(&self, mut config: PodSandboxConfig) -> Result<String, HarnessError> {
        let linux = config.linux.get_or_insert_with(Default::default);
        if linux.cgroup_parent.is_empty() {
            linux.cgroup_parent = self.cgroup_parent.clone();
        } else if !Path::new(&linux.cgroup_parent).starts_with(&self.cgroup_parent) {
            return Err(HarnessError::Setup(format!(
                "cgroup parent {} is outside the fixture's {}",
                linux.cgroup_parent, self.cgroup_parent
            )));
        }
        let mut client = self.runtime_client();
        let request = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let id = self
            .call("RunPodSandbox", async move {
                client.run_pod_sandbox(request).await
            })?
            .pod_sandbox_id;
        let mut known = self.known();
        known.sandboxes.insert(id.clone());
        known.ever.insert(id.clone());
        drop(known);
        // Records the netns for cleanup.
        self.pod_sandbox_status(&id)?;
        Ok(id)
    }

    /// CRI `PodSandboxStatus` with `verbose` set, so `info["info"]` holds containerd's sandbox
    /// info (runtime spec, CNI result).
    pub fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatusResponse, HarnessError> {
        let mut client = self.runtime_client();
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        };
        let response = self.call("PodSandboxStatus", async move {
            client.pod_sandbox_status(request).await
        })?;
        if let Some(netns) = netns_of(&response) {
            self.known().netns.insert(netns);
        }
        Ok(response)
    }

    /// The path of the sandbox's network namespace, from its verbose status.
    pub fn sandbox_netns(&self, id: &str) -> Result<PathBuf, HarnessError> {
        let status = self.pod_sandbox_status(id)?;
        netns_of(&status).ok_or_else(|| {
            HarnessError::Setup(format!("sandbox {id} reports no network namespace"))
        })
    }

    /// CRI `StopPodSandbox` (tears the network down through CNI DEL).
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), HarnessError> {
        let mut client = self.runtime_client();
        let request = StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call("StopPodSandbox", async move {
            client.stop_pod_sandbox(request).await
        })?;
        Ok(())
    }

    /// CRI `RemovePodSandbox`.
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), HarnessError> {
        let mut client = self.runtime_client();
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call("RemovePodSandbox", async move {
            client.remove_pod_sandbox(request).await
        })?;
        self.known().sandboxes.remove(id);
        Ok(())
    }

    /// Ids of every sandbox containerd knows (CRI `ListPodSandbox`).
    pub fn list_pod_sandboxes(&self) -> Result<Vec<String>, HarnessError> {
        let mut client = self.runtime_client();
        let response = self.call("ListPodSandbox", async move {
            client
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        })?;
        Ok(response.items.into_iter().map(|s| s.id).collect())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops and removes every sandbox containerd lists or this fixture ran, recording their
    /// network namespaces first.
    fn remove_all_sandboxes(&self) {
        let mut ids: BTreeSet<String> = self.known().sandboxes.clone();
        match self.list_pod_sandboxes() {
            Ok(listed) => ids.extend(listed),
            // containerd does not serve CRI: the forced steps that follow clean up instead.
            Err(e) => {
                eprintln!("cleanup: list sandboxes: {}", chain(&e));
                self.known().ever.extend(ids);
                return;
            }
        }
        self.known().ever.extend(ids.iter().cloned());
        for id in &ids {
            let _ = self.pod_sandbox_status(id);
            if let Err(e) = self.stop_pod_sandbox(id) {
                eprintln!("cleanup: stop sandbox {id}: {}", chain(&e));
            }
            if let Err(e) = self.remove_pod_sandbox(id) {
                eprintln!("cleanup: remove sandbox {id}: {}", chain(&e));
            }
        }
    }

    /// Everything `Drop` does, in order; each step is best effort.
    fn cleanup(&mut self, test_failed: bool) {
        if test_failed {
            eprintln!(
                "containerd log ({}) ends:\n{}",
                self.dir.path().join("containerd.log").display(),
                self.log_tail(60)
            );
        }
        // 1. Sandboxes, through CRI, while containerd still runs. A panic here must not keep
        //    the steps below from running.
        if self.child.is_some() && self.cri.is_some() {
            let this = std::panic::AssertUnwindSafe(&*self);
            let removed = std::panic::catch_unwind(move || this.remove_all_sandboxes());
            if removed.is_err() {
                eprintln!("cleanup: removing sandboxes through CRI panicked");
            }
        }
        // The client's runtime is dropped on this plain thread, outside any other runtime.
        let cri = self.cri.take();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(cri)));
        // 2. containerd itself: SIGTERM, then SIGKILL.
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // 3. Shims started for this containerd's socket, and their sockets.
        let shims = shims_of(&self.socket);
        for &pid in &shims {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        wait_gone(&shims, Duration::from_secs(5));
        for socket in shim_sockets(self.dir.path()) {
            let _ = std::fs::remove_file(socket);
        }
        // 4. Whatever is left in the sandboxes' cgroups, then the cgroups.
        remove_cgroup_tree(&self.cgroup_parent);
        // 5. Mounts under the directory (rootfs, shm, netns), deepest first.
        unmount_under(self.dir.path());
        // 6. Network namespaces its statuses named (also any outside the directory).
        let netns: Vec<PathBuf> = self.known().netns.iter().cloned().collect();
        for path in netns {
            let _ = nix::mount::umount2(&path, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&path);
        }
        // 7. libcni's cached results for this instance's sandboxes.
        let ids: Vec<String> = self.known().ever.iter().cloned().collect();
        remove_libcni_cache(&ids);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A thread of its own: the CRI calls block on the fixture's runtime, which must not
        // happen (nor the runtime be dropped) inside a test's async runtime.
        let test_failed = std::thread::panicking();
        std::thread::scope(|scope| {
            let cleanup = std::thread::Builder::new()
                .name("containerd-cleanup".into())
                .spawn_scoped(scope, || self.cleanup(test_failed));
            if let Ok(handle) = cleanup {
                let _ = handle.join();
            }
        });
    }
}

/// The network namespace path in a verbose `PodSandboxStatus`: containerd's runtime spec of the
/// sandbox container names it.
pub fn netns_of(status: &PodSandboxStatusResponse) -> Option<PathBuf> {
    let info: serde_json::Value = serde_json::from_str(status.info.get("info")?).ok()?;
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// An error with its sources, `a: b: c`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    // The last 64 KiB hold far more than the lines wanted.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Pids of containerd shims whose `-address` is `socket` (and no other process).
fn shims_of(socket: &Path) -> Vec<i32> {
    let socket = socket.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
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

/// Waits until none of `pids` is alive (gone, or a zombie waiting for its parent).
fn wait_gone(pids: &[i32], patience: Duration) {
    let deadline = Instant::now() + patience;
    let alive = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .next()?
                    .to_string();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
    };
    while pids.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sockets named by the `address` files of this instance's shim bundles (under the
/// fixture's state dir), restricted to containerd's shim socket directory.
fn shim_sockets(dir: &Path) -> Vec<PathBuf> {
    let tasks = dir.join("state/io.containerd.runtime.v2.task");
    let bundles = std::fs::read_dir(&tasks)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten())
        .filter_map(Result::ok);
    bundles
        .filter_map(|bundle| std::fs::read_to_string(bundle.path().join("address")).ok())
        .filter_map(|address| {
            let path = PathBuf::from(address.trim().trim_start_matches("unix://"));
            (path.parent() == Some(Path::new(SHIM_SOCKET_DIR))).then_some(path)
        })
        .collect()
}

/// Kills every process in `/<hierarchy>/<cgroup>` of every hierarchy, then removes those
/// directories bottom-up; best effort, as drop needs it.
fn remove_cgroup_tree(cgroup: &str) {
    if cgroup.trim_start_matches('/').is_empty() {
        return;
    }
    if let Err(e) = crate::cgroup::remove_everywhere(cgroup) {
        eprintln!("{e}");
    }
}

/// Lazily unmounts every mount point under `dir`, deepest first, until none is left.
fn unmount_under(dir: &Path) {
    for _ in 0..8 {
        let mut points = mount_points_under(dir);
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in points {
            let _ = nix::mount::umount2(&point, MntFlags::MNT_DETACH);
        }
    }
}

fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(file) = std::fs::File::open("/proc/self/mountinfo") else {
        return Vec::new();
    };
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| line.split_whitespace().nth(4).map(unescape_mountinfo))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes `/var/lib/cni/results/<network>-<id>-<ifname>` for these sandbox ids.
fn remove_libcni_cache(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(LIBCNI_RESULTS) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ids.iter().any(|id| name.contains(&format!("-{id}-"))) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
    }

    #[test]
    fn config_quotes_paths() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
        let config = ConfigPaths {
            dir: Path::new("/tmp/wltx"),
            socket: Path::new("/tmp/wltx/containerd.sock"),
            runc: Path::new("/usr/sbin/runc"),
            snapshotter: "overlayfs",
            sandbox_image: "windlass.local/pause:latest",
        }
        .render();
        assert!(config.contains(r#"address = "/tmp/wltx/containerd.sock""#));
        assert!(config.contains(r#"bin_dir = "/tmp/wltx/cni/bin""#));
        assert!(config.contains(r#"Root = "/tmp/wltx/runc""#));
    }

    #[test]
    fn netns_comes_from_the_runtime_spec() {
        let info = serde_json::json!({"runtimeSpec": {"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/tmp/x/netns/cni-1"},
        ]}}});
        let status = PodSandboxStatusResponse {
            info: [("info".to_string(), info.to_string())].into(),
            ..Default::default()
        };
        assert_eq!(netns_of(&status), Some(PathBuf::from("/tmp/x/netns/cni-1")));
        assert_eq!(netns_of(&PodSandboxStatusResponse::default()), None);
    }
}
