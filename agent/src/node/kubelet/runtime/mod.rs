//! The container runtime seam, shaped like CRI's RuntimeService: pod sandboxes, containers, exec
//! and exit events. [`oci`] implements it with runc under one `windlass-shim` per container;
//! [`cri`] implements the same trait over containerd's CRI socket.

pub mod cni;
pub mod cri;
pub mod namespaces;
pub mod oci;
pub mod spec;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Errors from a runtime call.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not in the image store (kubelet reports ErrImagePull / ErrImageNeverPull).
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    /// The image could not be pulled (ErrImagePull).
    #[error("failed to pull image {reference:?}: {message}")]
    Pull {
        /// The reference.
        reference: String,
        /// Why.
        message: String,
    },
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] crate::node::kubelet::images::ImageError),
    /// No sandbox or container with that id.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `sandbox` or `container`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// Pod namespaces could not be made or removed.
    #[error(transparent)]
    Namespaces(#[from] namespaces::NamespaceError),
    /// The CNI plugin failed.
    #[error(transparent)]
    Cni(#[from] cni::CniError),
    /// The container could not be created or started (runc's or the shim's message).
    #[error("failed to {action} container {id}: {message}")]
    Container {
        /// What was being done.
        action: &'static str,
        /// The container id.
        id: String,
        /// Why.
        message: String,
    },
    /// A CRI call failed (the `cri` runtime; the runtime's gRPC status message).
    #[error("CRI {call} of {id} failed: {message}")]
    Cri {
        /// The CRI call (`RunPodSandbox`, ...).
        call: &'static str,
        /// The sandbox, container or image it was about.
        id: String,
        /// The gRPC status code and message.
        message: String,
    },
    /// A file could not be read or written.
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
    /// A state file was not valid JSON.
    #[error("invalid state file {path}: {message}")]
    State {
        /// The file.
        path: String,
        /// The parse error.
        message: String,
    },
}

/// What a pod sandbox is made from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxConfig {
    /// The pod's uid.
    pub uid: String,
    /// The pod's name.
    pub name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's hostname (spec.hostname or its name).
    pub hostname: String,
    /// spec.hostNetwork: no network or UTS namespace of its own, no CNI.
    pub host_network: bool,
    /// spec.hostIPC.
    pub host_ipc: bool,
    /// spec.hostPID.
    pub host_pid: bool,
    /// The pod's cgroup (runc `cgroupsPath` of its parent), e.g. `/kubepods/burstable/pod<uid>`.
    pub cgroup_parent: String,
    /// Where the pod's log directory is (`/var/log/pods/<ns>_<name>_<uid>`).
    pub log_directory: PathBuf,
    /// Whether any container of the pod is privileged (CRI runtimes refuse a privileged
    /// container in an unprivileged sandbox).
    #[serde(default)]
    pub privileged: bool,
    /// The pod's resolver configuration from its dnsPolicy (none: the node's resolv.conf, as
    /// sandboxes made before it existed have).
    #[serde(default)]
    pub dns: Option<crate::node::dns::resolv_conf::PodDns>,
}

/// A pod sandbox as the runtime holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// The sandbox id.
    pub id: String,
    /// What it was made from.
    pub config: SandboxConfig,
    /// The pod's IPv4 address from CNI (none with hostNetwork).
    pub ip: Option<Ipv4Addr>,
    /// The network namespace file (none with hostNetwork).
    pub netns: Option<PathBuf>,
    /// The IPC namespace file (none with hostIPC).
    pub ipcns: Option<PathBuf>,
    /// The UTS namespace file (none with hostNetwork).
    pub utsns: Option<PathBuf>,
    /// The directory holding `hosts`, `hostname` and `resolv.conf` for the containers.
    pub dir: PathBuf,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Whether the sandbox was stopped (network torn down).
    #[serde(default)]
    pub stopped: bool,
}

/// A bind mount into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountSpec {
    /// Path on the host.
    pub host_path: PathBuf,
    /// Path in the container.
    pub container_path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What a container is made from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfig {
    /// The container's name in the pod.
    pub name: String,
    /// How many times this container was started before (kubelet's restartCount).
    pub attempt: u32,
    /// The image reference from the pod spec.
    pub image: String,
    /// `command` (replaces the image's entrypoint when set).
    pub command: Vec<String>,
    /// `args` (replaces the image's cmd when set).
    pub args: Vec<String>,
    /// Environment, resolved.
    pub env: Vec<(String, String)>,
    /// `workingDir`.
    pub working_dir: Option<String>,
    /// Volume mounts, resolved to host paths.
    pub mounts: Vec<MountSpec>,
    /// `linux.resources` for config.json.
    pub resources: Option<serde_json::Value>,
    /// `oom_score_adj` for the container's processes.
    pub oom_score_adj: Option<i32>,
    /// runAsUser, if set.
    pub run_as_user: Option<u32>,
    /// runAsGroup, if set.
    pub run_as_group: Option<u32>,
    /// securityContext.privileged.
    pub privileged: bool,
    /// Where the CRI log goes (`<pod log dir>/<name>/<attempt>.log`).
    pub log_path: PathBuf,
}

/// A container's state, as CRI reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum ContainerState {
    /// Created, not started (or its start failed).
    Created,
    /// Running.
    Running {
        /// When it started, RFC 3339.
        started_at: String,
    },
    /// Exited.
    Exited {
        /// The exit code (128 + signal when a signal killed it).
        exit_code: i32,
        /// `OOMKilled`, `Completed` or `Error`.
        reason: String,
        /// When it started, RFC 3339.
        started_at: String,
        /// When it exited, RFC 3339.
        finished_at: String,
    },
}

/// A container and what the runtime knows of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container id.
    pub id: String,
    /// The sandbox it runs in.
    pub sandbox_id: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The container's name in the pod.
    pub name: String,
    /// Its attempt (restart count at creation).
    pub attempt: u32,
    /// The image reference from the spec.
    pub image: String,
    /// The image id (`sha256:<config digest>`).
    pub image_id: String,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// Its state.
    pub state: ContainerState,
    /// The container init's host pid while it runs.
    pub pid: Option<u32>,
    /// The CRI log file.
    pub log_path: PathBuf,
}

/// The result of a command run in a container.
#[derive(Debug, Clone)]
pub struct ExecResult {
    /// The exit code.
    pub exit_code: i32,
    /// stdout and stderr, interleaved.
    pub output: Vec<u8>,
}

/// Something the runtime noticed without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// A container's init exited.
    ContainerExited {
        /// The pod's uid.
        pod_uid: String,
        /// The container id.
        container_id: String,
    },
}

/// A CRI-shaped container runtime.
#[async_trait]
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// `<name>://<version>`, for the Node's nodeInfo.containerRuntimeVersion.
    async fn version(&self) -> Result<String, RuntimeError>;
    /// Makes the pod's namespaces and network. Idempotent per pod uid only through the caller.
    async fn run_pod_sandbox(
        &self,
        config: &SandboxConfig,
        network: Option<&cni::NetworkConfig>,
    ) -> Result<Sandbox, RuntimeError>;
    /// Tears the pod's network down (CNI DEL); idempotent.
    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    /// Removes the sandbox's namespaces and state; idempotent.
    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    /// Every sandbox this runtime holds (for re-adoption after a restart).
    async fn list_pod_sandboxes(&self) -> Result<Vec<Sandbox>, RuntimeError>;
    /// Creates a container in a sandbox; returns its id.
    async fn create_container(
        &self,
        sandbox: &Sandbox,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError>;
    /// Starts a created container.
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops a container: SIGTERM, then SIGKILL after `grace`; returns once it exited.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Removes a stopped container and its state; idempotent.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Every container this runtime holds.
    async fn list_containers(&self) -> Result<Vec<ContainerStatus>, RuntimeError>;
    /// One container's status.
    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;
    /// Runs a command in a running container and waits for it, at most `timeout`.
    async fn exec_sync(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError>;
    /// Exit events for containers.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent>;
    /// The image's id (`sha256:<config digest>`) when the node has it.
    async fn image_status(&self, reference: &str) -> Result<Option<String>, RuntimeError>;
    /// Pulls the image from its registry; returns its id.
    async fn pull_image(&self, reference: &str) -> Result<String, RuntimeError>;
}

pub(crate) fn io_err(
    action: &'static str,
    path: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_string();
    move |source| RuntimeError::Io {
        action,
        path,
        source,
    }
}

/// The time now as RFC 3339 with seconds, as Kubernetes writes it.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}

/// A new random 64-hex-digit id, like containerd's.
pub fn new_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}
