//! The `cri` runtime: the [`Runtime`] trait over containerd's CRI socket (runtime.v1), mapped
//! the way kubelet's kuberuntime maps its own calls.
//!
//! containerd does the pod's networking itself: its CRI plugin runs the CNI plugins of its
//! `conf_dir`, where the agent writes `10-windlass.conflist` (`--cni-conf-dir`). The `network`
//! given to [`Runtime::run_pod_sandbox`] therefore only says the network is ready; the pod IP
//! comes back in `PodSandboxStatus`.
//!
//! Everything the agent needs to re-adopt a sandbox or a container after a restart is kept in
//! containerd, on the objects themselves: labels (`io.kubernetes.pod.*`,
//! `io.kubernetes.container.name`, and [`MANAGED_LABEL`], which also filters every list to what
//! the agent made) and annotations (the sandbox config, the container's attempt, image and
//! sandbox).
//!
//! Exit events: the CRI API of containerd 1.6 has no `GetContainerEvents` stream, so this backend
//! does what kubelet's generic PLEG does: one background task relists the agent's containers
//! every second, diffs their states and sends [`RuntimeEvent::ContainerExited`] when a container
//! is seen exited that was not before. Exits are therefore noticed up to a second late (the `oci`
//! runtime is event-driven: its shim's exit wakes the agent at once).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::sync::broadcast;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{
    ContainerConfig, ContainerState, ContainerStatus, ExecResult, Runtime, RuntimeError,
    RuntimeEvent, Sandbox, SandboxConfig, cni,
};

/// The label on every sandbox and container the agent creates; lists are filtered by it.
pub const MANAGED_LABEL: &str = "windlass.io/managed";
/// kubelet's labels.
const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";
/// kubelet's annotation for a container's attempt.
const RESTART_COUNT_ANNOTATION: &str = "io.kubernetes.container.restartCount";
/// The [`SandboxConfig`] as JSON, for re-adoption.
const SANDBOX_CONFIG_ANNOTATION: &str = "windlass.io/sandbox-config";
/// The image reference from the pod spec.
const IMAGE_ANNOTATION: &str = "windlass.io/image";
/// The image id resolved at creation.
const IMAGE_ID_ANNOTATION: &str = "windlass.io/image-id";
/// The sandbox a container runs in (CRI's ContainerStatus does not say).
const SANDBOX_ID_ANNOTATION: &str = "windlass.io/sandbox-id";
/// How long an ordinary CRI call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the agent's containers are relisted for exits (kubelet's generic PLEG: 1 s).
const RELIST_PERIOD: Duration = Duration::from_secs(1);
/// How long `run_pod_sandbox` waits for containerd to load the CNI configuration.
const NETWORK_READY_PATIENCE: Duration = Duration::from_secs(15);
/// The node's resolver configuration, handed to pods as their DNS config.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// How the CRI runtime is reached.
#[derive(Debug, Clone)]
pub struct CriOptions {
    /// containerd's gRPC socket (`/run/containerd/containerd.sock`).
    pub endpoint: PathBuf,
}

/// The [`Runtime`] over a CRI socket; see the module docs.
#[derive(Debug)]
pub struct CriRuntime {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    endpoint: PathBuf,
    events: broadcast::Sender<RuntimeEvent>,
}

/// Maps a failed CRI call to a [`RuntimeError`]: `NotFound` for an unknown `kind` (`sandbox`
/// or `container`) `id`, else the call and the runtime's message.
fn call_error(
    call: &'static str,
    kind: &'static str,
    id: &str,
) -> impl FnOnce(tonic::Status) -> RuntimeError {
    let id = id.to_string();
    move |status| match status.code() {
        tonic::Code::NotFound => RuntimeError::NotFound { kind, id },
        code => RuntimeError::Cri {
            call,
            id,
            message: format!("{code:?}: {}", status.message()),
        },
    }
}

/// Runs a CRI call with a deadline; a missed deadline is a `DeadlineExceeded` status.
async fn with_timeout<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

impl CriRuntime {
    /// Connects to the CRI socket at `options.endpoint` (a path, or `unix://<path>`), checks that
    /// it answers `Version`, and starts the relist task that turns exits into events. Must be
    /// called inside a tokio runtime.
    pub async fn connect(options: CriOptions) -> Result<Arc<Self>, RuntimeError> {
        let endpoint = endpoint_path(&options.endpoint);
        let socket = endpoint.clone();
        // The URI is never dialled: every connection is made by the connector below.
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
        let (events, _) = broadcast::channel(256);
        let runtime = Arc::new(CriRuntime {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            endpoint,
            events,
        });
        runtime.version().await?;
        tokio::spawn(relist(
            runtime.runtime.clone(),
            runtime.events.clone(),
            runtime.endpoint.clone(),
        ));
        Ok(runtime)
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    /// Waits until containerd reports `NetworkReady` (it loads the CNI configuration a moment
    /// after the agent wrote it).
    async fn wait_network_ready(&self) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + NETWORK_READY_PATIENCE;
        loop {
            let mut client = self.client();
            let status = with_timeout(
                CALL_TIMEOUT,
                client.status(cri::StatusRequest { verbose: false }),
            )
            .await
            .map_err(call_error("Status", "runtime", "the runtime"))?;
            let network = status
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .find(|c| c.r#type == "NetworkReady");
            let message = match network {
                Some(c) if c.status => return Ok(()),
                Some(c) => format!("{}: {}", c.reason, c.message),
                None => "no NetworkReady condition".to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Cri {
                    call: "Status",
                    id: self.endpoint.display().to_string(),
                    message: format!("the runtime's network is not ready ({message})"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A sandbox as [`Runtime`] shows it, from containerd's verbose status.
    async fn sandbox_of(&self, id: &str, config: SandboxConfig) -> Result<Sandbox, RuntimeError> {
        let mut client = self.client();
        let response = with_timeout(
            CALL_TIMEOUT,
            client.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: true,
            }),
        )
        .await
        .map_err(call_error("PodSandboxStatus", "sandbox", id))?;
        let status = response.status.clone().unwrap_or_default();
        let ip = status
            .network
            .as_ref()
            .and_then(|n| n.ip.parse::<Ipv4Addr>().ok());
        Ok(Sandbox {
            id: id.to_string(),
            ip,
            netns: sandbox_netns(&response),
            ipcns: None,
            utsns: None,
            dir: config.log_directory.clone(),
            created_at: nanos_rfc3339(status.created_at),
            stopped: status.state != cri::PodSandboxState::SandboxReady as i32,
            config,
        })
    }

    async fn status_of(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let mut client = self.client();
        let response = with_timeout(
            CALL_TIMEOUT,
            client.container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: true,
            }),
        )
        .await
        .map_err(call_error("ContainerStatus", "container", id))?;
        let pid = response
            .info
            .get("info")
            .and_then(|info| serde_json::from_str::<serde_json::Value>(info).ok())
            .and_then(|info| info["pid"].as_u64())
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|pid| *pid > 0);
        let status = response.status.ok_or_else(|| RuntimeError::NotFound {
            kind: "container",
            id: id.to_string(),
        })?;
        let mut status = container_status(status);
        if matches!(status.state, ContainerState::Running { .. }) {
            status.pid = pid;
        }
        Ok(status)
    }
}

/// `unix:///run/x.sock` or `/run/x.sock` → `/run/x.sock`.
pub fn endpoint_path(endpoint: &Path) -> PathBuf {
    let text = endpoint.to_string_lossy();
    match text.strip_prefix("unix://") {
        Some(path) => PathBuf::from(path),
        None => endpoint.to_path_buf(),
    }
}

/// Relists the agent's containers every [`RELIST_PERIOD`] and reports those seen exited that
/// were not exited at the previous relist (or did not exist then), as kubelet's generic PLEG.
async fn relist(
    client: RuntimeServiceClient<Channel>,
    events: broadcast::Sender<RuntimeEvent>,
    endpoint: PathBuf,
) {
    let mut previous: Option<HashMap<String, i32>> = None;
    let mut ticker = tokio::time::interval(RELIST_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let listed = match list_managed_containers(client.clone()).await {
            Ok(listed) => {
                if failing {
                    tracing::info!(endpoint = %endpoint.display(), "CRI relist works again");
                    failing = false;
                }
                listed
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(endpoint = %endpoint.display(), error = %e, "cannot relist CRI containers");
                    failing = true;
                }
                continue;
            }
        };
        let exited = cri::ContainerState::ContainerExited as i32;
        let now: HashMap<String, i32> = listed.iter().map(|c| (c.id.clone(), c.state)).collect();
        if let Some(before) = &previous {
            for c in &listed {
                if c.state == exited && before.get(&c.id) != Some(&exited) {
                    let pod_uid = c.labels.get(POD_UID_LABEL).cloned().unwrap_or_default();
                    // No receiver (no worker yet) is fine: workers read states when they start.
                    let _ = events.send(RuntimeEvent::ContainerExited {
                        pod_uid,
                        container_id: c.id.clone(),
                    });
                }
            }
        }
        previous = Some(now);
    }
}

async fn list_managed_containers(
    mut client: RuntimeServiceClient<Channel>,
) -> Result<Vec<cri::Container>, tonic::Status> {
    let request = cri::ListContainersRequest {
        filter: Some(cri::ContainerFilter {
            label_selector: managed_selector(),
            ..Default::default()
        }),
    };
    Ok(with_timeout(CALL_TIMEOUT, client.list_containers(request))
        .await?
        .containers)
}

fn managed_selector() -> HashMap<String, String> {
    HashMap::from([(MANAGED_LABEL.to_string(), "true".to_string())])
}

/// The network namespace path from a verbose `PodSandboxStatus` (containerd's runtime spec of
/// the sandbox names it).
fn sandbox_netns(status: &cri::PodSandboxStatusResponse) -> Option<PathBuf> {
    let info: serde_json::Value = serde_json::from_str(status.info.get("info")?).ok()?;
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Nanoseconds since the epoch → RFC 3339 with seconds; empty for 0 (not yet).
fn nanos_rfc3339(nanos: i64) -> String {
    if nanos <= 0 {
        return String::new();
    }
    jiff::Timestamp::from_nanosecond(i128::from(nanos))
        .ok()
        .and_then(|t| t.round(jiff::Unit::Second).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The DNS config kubelet gives a pod without cluster DNS: the node's resolver.
fn dns_config(resolv_conf: &str) -> cri::DnsConfig {
    let mut dns = cri::DnsConfig::default();
    for line in resolv_conf.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.next().map(str::to_string)),
            Some("search") => dns.searches = words.map(str::to_string).collect(),
            Some("options") => dns.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    dns
}

fn namespace_mode(on_host: bool, otherwise: cri::NamespaceMode) -> i32 {
    if on_host {
        cri::NamespaceMode::Node as i32
    } else {
        otherwise as i32
    }
}

/// kubelet's namespace options: the pod's network and IPC, a PID namespace per container.
fn namespace_options(config: &SandboxConfig) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: namespace_mode(config.host_network, cri::NamespaceMode::Pod),
        pid: namespace_mode(config.host_pid, cri::NamespaceMode::Container),
        ipc: namespace_mode(config.host_ipc, cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

/// The CRI `PodSandboxConfig` for a sandbox.
fn pod_sandbox_config(config: &SandboxConfig, resolv_conf: &str) -> cri::PodSandboxConfig {
    let labels = HashMap::from([
        (POD_NAME_LABEL.to_string(), config.name.clone()),
        (POD_NAMESPACE_LABEL.to_string(), config.namespace.clone()),
        (POD_UID_LABEL.to_string(), config.uid.clone()),
        (MANAGED_LABEL.to_string(), "true".to_string()),
    ]);
    let annotations = HashMap::from([(
        SANDBOX_CONFIG_ANNOTATION.to_string(),
        serde_json::to_string(config).unwrap_or_default(),
    )]);
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: config.name.clone(),
            uid: config.uid.clone(),
            namespace: config.namespace.clone(),
            attempt: 0,
        }),
        hostname: config.hostname.clone(),
        log_directory: config.log_directory.display().to_string(),
        dns_config: Some(match &config.dns {
            Some(dns) => cri::DnsConfig {
                servers: dns.servers.clone(),
                searches: dns.searches.clone(),
                options: dns.options.clone(),
            },
            None => dns_config(resolv_conf),
        }),
        port_mappings: Vec::new(),
        labels,
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: config.cgroup_parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(config)),
                privileged: config.privileged,
                ..Default::default()
            }),
            ..Default::default()
        }),
        windows: None,
    }
}

/// `linux.resources` (OCI JSON, as [`crate::node::kubelet::cgroups::oci_linux_resources`]
/// writes it) → CRI resources.
fn linux_resources(
    resources: Option<&serde_json::Value>,
    oom_score_adj: Option<i32>,
) -> cri::LinuxContainerResources {
    let get = |pointer: &str| {
        resources
            .and_then(|r| r.pointer(pointer))
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0)
    };
    cri::LinuxContainerResources {
        cpu_period: get("/cpu/period"),
        cpu_quota: get("/cpu/quota"),
        cpu_shares: get("/cpu/shares"),
        memory_limit_in_bytes: get("/memory/limit"),
        oom_score_adj: i64::from(oom_score_adj.unwrap_or(0)),
        ..Default::default()
    }
}

/// The container's log path relative to its sandbox's log directory, as CRI wants it.
fn relative_log_path(sandbox: &SandboxConfig, config: &ContainerConfig) -> String {
    match config.log_path.strip_prefix(&sandbox.log_directory) {
        Ok(relative) => relative.display().to_string(),
        Err(_) => format!("{}/{}.log", config.name, config.attempt),
    }
}

/// The CRI `ContainerConfig` for a container; `image_id` is what `ImageStatus` resolved.
fn cri_container_config(
    sandbox: &Sandbox,
    config: &ContainerConfig,
    image_id: &str,
) -> cri::ContainerConfig {
    let labels = HashMap::from([
        (CONTAINER_NAME_LABEL.to_string(), config.name.clone()),
        (POD_NAME_LABEL.to_string(), sandbox.config.name.clone()),
        (
            POD_NAMESPACE_LABEL.to_string(),
            sandbox.config.namespace.clone(),
        ),
        (POD_UID_LABEL.to_string(), sandbox.config.uid.clone()),
        (MANAGED_LABEL.to_string(), "true".to_string()),
    ]);
    let annotations = HashMap::from([
        (
            RESTART_COUNT_ANNOTATION.to_string(),
            config.attempt.to_string(),
        ),
        (IMAGE_ANNOTATION.to_string(), config.image.clone()),
        (IMAGE_ID_ANNOTATION.to_string(), image_id.to_string()),
        (SANDBOX_ID_ANNOTATION.to_string(), sandbox.id.clone()),
    ]);
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: config.name.clone(),
            attempt: config.attempt,
        }),
        // kubelet hands the runtime the resolved image id, and the name the user wrote.
        image: Some(cri::ImageSpec {
            image: image_id.to_string(),
            user_specified_image: config.image.clone(),
            ..Default::default()
        }),
        command: config.command.clone(),
        args: config.args.clone(),
        working_dir: config.working_dir.clone().unwrap_or_default(),
        envs: config
            .env
            .iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts: config
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.display().to_string(),
                readonly: m.read_only,
                ..Default::default()
            })
            .collect(),
        labels,
        annotations,
        log_path: relative_log_path(&sandbox.config, config),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(linux_resources(
                config.resources.as_ref(),
                config.oom_score_adj,
            )),
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: config.privileged,
                namespace_options: Some(namespace_options(&sandbox.config)),
                run_as_user: config.run_as_user.map(|u| cri::Int64Value {
                    value: i64::from(u),
                }),
                run_as_group: config.run_as_group.map(|g| cri::Int64Value {
                    value: i64::from(g),
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// A CRI container status as [`Runtime`] shows it (without the pid).
fn container_status(status: cri::ContainerStatus) -> ContainerStatus {
    let annotation = |key: &str| status.annotations.get(key).cloned().unwrap_or_default();
    let started_at = nanos_rfc3339(status.started_at);
    let state = match cri::ContainerState::try_from(status.state) {
        Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running { started_at },
        Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited {
            exit_code: status.exit_code,
            // containerd says OOMKilled, Completed or Error (or why it could not start).
            reason: if status.reason.is_empty() {
                if status.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .to_string()
            } else {
                status.reason.clone()
            },
            started_at,
            finished_at: nanos_rfc3339(status.finished_at),
        },
        // containerd cannot tell (its task is gone): kubelet kills and restarts such a container.
        Ok(cri::ContainerState::ContainerUnknown) | Err(_) => ContainerState::Exited {
            exit_code: 255,
            reason: "Unknown".into(),
            started_at,
            finished_at: nanos_rfc3339(status.finished_at),
        },
    };
    let metadata = status.metadata.clone().unwrap_or_default();
    let image_id = Some(annotation(IMAGE_ID_ANNOTATION))
        .filter(|id| !id.is_empty())
        .or_else(|| Some(status.image_id.clone()).filter(|id| !id.is_empty()))
        .unwrap_or_else(|| status.image_ref.clone());
    let image = Some(annotation(IMAGE_ANNOTATION))
        .filter(|i| !i.is_empty())
        .or_else(|| status.image.as_ref().map(|i| i.image.clone()))
        .unwrap_or_default();
    ContainerStatus {
        id: status.id.clone(),
        sandbox_id: annotation(SANDBOX_ID_ANNOTATION),
        pod_uid: status
            .labels
            .get(POD_UID_LABEL)
            .cloned()
            .unwrap_or_default(),
        name: metadata.name,
        attempt: metadata.attempt,
        image,
        image_id,
        created_at: nanos_rfc3339(status.created_at),
        state,
        pid: None,
        log_path: PathBuf::from(&status.log_path),
    }
}

/// A CRI timeout in whole seconds, rounded up (0 stays 0).
fn whole_seconds(d: Duration) -> i64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

#[async_trait]
impl Runtime for CriRuntime {
    async fn version(&self) -> Result<String, RuntimeError> {
        let mut client = self.client();
        let version = with_timeout(
            CALL_TIMEOUT,
            client.version(cri::VersionRequest {
                version: "v1".into(),
            }),
        )
        .await
        .map_err(|status| RuntimeError::Cri {
            call: "Version",
            id: self.endpoint.display().to_string(),
            message: format!("{:?}: {}", status.code(), status.message()),
        })?;
        Ok(format!(
            "{}://{}",
            version.runtime_name,
            version.runtime_version.trim_start_matches('v')
        ))
    }

    async fn run_pod_sandbox(
        &self,
        config: &SandboxConfig,
        network: Option<&cni::NetworkConfig>,
    ) -> Result<Sandbox, RuntimeError> {
        // containerd runs CNI itself from its conf dir; the network only says it is there.
        if !config.host_network {
            if network.is_none() {
                return Err(RuntimeError::Cri {
                    call: "RunPodSandbox",
                    id: config.uid.clone(),
                    message: "the pod network is not configured yet".into(),
                });
            }
            self.wait_network_ready().await?;
        }
        let resolv_conf = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        let request = cri::RunPodSandboxRequest {
            config: Some(pod_sandbox_config(config, &resolv_conf)),
            runtime_handler: String::new(),
        };
        let mut client = self.client();
        let id = with_timeout(CALL_TIMEOUT, client.run_pod_sandbox(request))
            .await
            .map_err(call_error("RunPodSandbox", "pod", &config.uid))?
            .pod_sandbox_id;
        self.sandbox_of(&id, config.clone()).await
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut client = self.client();
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        match with_timeout(CALL_TIMEOUT, client.stop_pod_sandbox(request)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(call_error("StopPodSandbox", "sandbox", id)(status)),
        }
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        // containerd refuses to remove a ready sandbox: stop it first, as kubelet does.
        self.stop_pod_sandbox(id).await?;
        let mut client = self.client();
        let request = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        match with_timeout(CALL_TIMEOUT, client.remove_pod_sandbox(request)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(call_error("RemovePodSandbox", "sandbox", id)(status)),
        }
    }

    async fn list_pod_sandboxes(&self) -> Result<Vec<Sandbox>, RuntimeError> {
        let mut client = self.client();
        let request = cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: managed_selector(),
                ..Default::default()
            }),
        };
        let items = with_timeout(CALL_TIMEOUT, client.list_pod_sandbox(request))
            .await
            .map_err(call_error("ListPodSandbox", "runtime", "the runtime"))?
            .items;
        let mut sandboxes = Vec::with_capacity(items.len());
        for item in items {
            let config = item
                .annotations
                .get(SANDBOX_CONFIG_ANNOTATION)
                .and_then(|c| serde_json::from_str::<SandboxConfig>(c).ok());
            let Some(config) = config else {
                tracing::warn!(sandbox = %item.id, "sandbox without a readable config annotation; ignored");
                continue;
            };
            match self.sandbox_of(&item.id, config).await {
                Ok(sandbox) => sandboxes.push(sandbox),
                // Removed between the list and the status.
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sandboxes)
    }

    async fn create_container(
        &self,
        sandbox: &Sandbox,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let image_id = self
            .image_status(&config.image)
            .await?
            .ok_or_else(|| RuntimeError::ImageNotFound(config.image.clone()))?;
        let resolv_conf = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.id.clone(),
            config: Some(cri_container_config(sandbox, config, &image_id)),
            sandbox_config: Some(pod_sandbox_config(&sandbox.config, &resolv_conf)),
        };
        let mut client = self.client();
        with_timeout(CALL_TIMEOUT, client.create_container(request))
            .await
            .map(|r| r.container_id)
            .map_err(|status| RuntimeError::Container {
                action: "create",
                id: config.name.clone(),
                message: status.message().to_string(),
            })
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut client = self.client();
        let request = cri::StartContainerRequest {
            container_id: id.to_string(),
        };
        with_timeout(CALL_TIMEOUT, client.start_container(request))
            .await
            .map(|_| ())
            .map_err(call_error("StartContainer", "container", id))
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        // containerd sends the stop signal, SIGKILL after `timeout` s, and answers once the
        // container exited.
        let mut client = self.client();
        let request = cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: whole_seconds(grace),
        };
        with_timeout(grace + CALL_TIMEOUT, client.stop_container(request))
            .await
            .map(|_| ())
            .map_err(call_error("StopContainer", "container", id))
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut client = self.client();
        let request = cri::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        match with_timeout(CALL_TIMEOUT, client.remove_container(request)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(call_error("RemoveContainer", "container", id)(status)),
        }
    }

    async fn list_containers(&self) -> Result<Vec<ContainerStatus>, RuntimeError> {
        let listed = list_managed_containers(self.client())
            .await
            .map_err(call_error("ListContainers", "runtime", "the runtime"))?;
        let mut out = Vec::with_capacity(listed.len());
        for container in listed {
            match self.status_of(&container.id).await {
                Ok(status) => out.push(status),
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        self.status_of(id).await
    }

    async fn exec_sync(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let mut client = self.client();
        let request = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: command.to_vec(),
            timeout: whole_seconds(timeout).max(1),
        };
        // containerd enforces the timeout itself; ours only guards against a hung socket.
        let response = with_timeout(timeout + Duration::from_secs(10), client.exec_sync(request))
            .await
            .map_err(|status| RuntimeError::Container {
                action: "exec in",
                id: id.to_string(),
                message: status.message().to_string(),
            })?;
        let mut output = response.stdout;
        output.extend_from_slice(&response.stderr);
        Ok(ExecResult {
            exit_code: response.exit_code,
            output,
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    async fn image_status(&self, reference: &str) -> Result<Option<String>, RuntimeError> {
        let mut images = self.images.clone();
        let request = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: reference.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        let response = with_timeout(CALL_TIMEOUT, images.image_status(request))
            .await
            .map_err(|status| RuntimeError::Pull {
                reference: reference.to_string(),
                message: format!("image status: {}", status.message()),
            })?;
        Ok(response.image.map(|i| i.id).filter(|id| !id.is_empty()))
    }

    async fn pull_image(&self, reference: &str) -> Result<String, RuntimeError> {
        let mut images = self.images.clone();
        let request = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        with_timeout(Duration::from_secs(600), images.pull_image(request))
            .await
            .map_err(|status| RuntimeError::Pull {
                reference: reference.to_string(),
                message: status.message().to_string(),
            })?;
        // PullImage answers with a repo digest; the trait wants the image id.
        self.image_status(reference)
            .await?
            .ok_or_else(|| RuntimeError::ImageNotFound(reference.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox_config() -> SandboxConfig {
        SandboxConfig {
            uid: "u1".into(),
            name: "web".into(),
            namespace: "default".into(),
            hostname: "web".into(),
            host_network: false,
            host_ipc: true,
            host_pid: false,
            cgroup_parent: "/r/kubepods/burstable/podu1".into(),
            log_directory: "/var/log/pods/default_web_u1".into(),
            privileged: false,
            dns: None,
        }
    }

    #[test]
    fn endpoints_accept_unix_urls() {
        assert_eq!(
            endpoint_path(Path::new("unix:///run/containerd/containerd.sock")),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            endpoint_path(Path::new("/x.sock")),
            PathBuf::from("/x.sock")
        );
    }

    #[test]
    fn resolv_conf_becomes_the_dns_config() {
        let dns = dns_config(
            "# comment\nnameserver 10.0.0.2\nnameserver 1.1.1.1 # x\nsearch a.example b.example\noptions ndots:2 edns0\n",
        );
        assert_eq!(dns.servers, ["10.0.0.2", "1.1.1.1"]);
        assert_eq!(dns.searches, ["a.example", "b.example"]);
        assert_eq!(dns.options, ["ndots:2", "edns0"]);
    }

    #[test]
    fn sandbox_config_carries_labels_cgroup_and_namespaces() {
        let config = sandbox_config();
        let cri = pod_sandbox_config(&config, "nameserver 10.0.0.2\n");
        assert_eq!(cri.labels[POD_UID_LABEL], "u1");
        assert_eq!(cri.labels[MANAGED_LABEL], "true");
        let linux = cri.linux.expect("linux");
        assert_eq!(linux.cgroup_parent, "/r/kubepods/burstable/podu1");
        let ns = linux
            .security_context
            .and_then(|s| s.namespace_options)
            .expect("namespace options");
        assert_eq!(ns.network, cri::NamespaceMode::Pod as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
        assert_eq!(ns.ipc, cri::NamespaceMode::Node as i32);
        let back: SandboxConfig =
            serde_json::from_str(&cri.annotations[SANDBOX_CONFIG_ANNOTATION]).expect("json");
        assert_eq!(back.cgroup_parent, config.cgroup_parent);
    }

    #[test]
    fn container_config_maps_resources_and_the_relative_log_path() {
        let sandbox = Sandbox {
            id: "s1".into(),
            config: sandbox_config(),
            ip: None,
            netns: None,
            ipcns: None,
            utsns: None,
            dir: PathBuf::new(),
            created_at: String::new(),
            stopped: false,
        };
        let config = ContainerConfig {
            name: "main".into(),
            attempt: 2,
            image: "windlass.local/busybox:latest".into(),
            resources: Some(serde_json::json!({
                "cpu": {"shares": 102, "period": 100000, "quota": 50000},
                "memory": {"limit": 67108864},
                "pids": {"limit": 100},
            })),
            oom_score_adj: Some(-997),
            run_as_user: Some(1000),
            log_path: "/var/log/pods/default_web_u1/main/2.log".into(),
            ..Default::default()
        };
        let cri = cri_container_config(&sandbox, &config, "sha256:abc");
        assert_eq!(cri.log_path, "main/2.log");
        assert_eq!(cri.annotations[RESTART_COUNT_ANNOTATION], "2");
        assert_eq!(cri.labels[CONTAINER_NAME_LABEL], "main");
        let linux = cri.linux.expect("linux");
        let r = linux.resources.expect("resources");
        assert_eq!(
            (
                r.cpu_shares,
                r.cpu_period,
                r.cpu_quota,
                r.memory_limit_in_bytes,
                r.oom_score_adj
            ),
            (102, 100000, 50000, 67108864, -997)
        );
        let security = linux.security_context.expect("security context");
        assert_eq!(security.run_as_user.map(|u| u.value), Some(1000));
        assert_eq!(security.run_as_group, None);
    }

    #[test]
    fn statuses_map_states_and_reasons() {
        let status = cri::ContainerStatus {
            id: "c1".into(),
            metadata: Some(cri::ContainerMetadata {
                name: "main".into(),
                attempt: 1,
            }),
            state: cri::ContainerState::ContainerExited as i32,
            exit_code: 137,
            reason: "OOMKilled".into(),
            started_at: 1_700_000_000_400_000_000,
            finished_at: 1_700_000_005_000_000_000,
            labels: HashMap::from([(POD_UID_LABEL.to_string(), "u1".to_string())]),
            annotations: HashMap::from([
                (IMAGE_ID_ANNOTATION.to_string(), "sha256:abc".to_string()),
                (SANDBOX_ID_ANNOTATION.to_string(), "s1".to_string()),
            ]),
            image_ref: "windlass.local/busybox@sha256:def".into(),
            log_path: "/var/log/pods/x/main/1.log".into(),
            ..Default::default()
        };
        let ours = container_status(status);
        assert_eq!(ours.pod_uid, "u1");
        assert_eq!(ours.sandbox_id, "s1");
        assert_eq!(ours.image_id, "sha256:abc");
        assert_eq!(ours.attempt, 1);
        assert_eq!(
            ours.state,
            ContainerState::Exited {
                exit_code: 137,
                reason: "OOMKilled".into(),
                started_at: "2023-11-14T22:13:20Z".into(),
                finished_at: "2023-11-14T22:13:25Z".into(),
            }
        );
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
    }
}
