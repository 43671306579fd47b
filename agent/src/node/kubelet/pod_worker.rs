//! One worker per pod: a level-triggered loop that drives the pod towards its spec (cgroup,
//! volumes, sandbox, init containers in order, app containers, probes, restarts with
//! CrashLoopBackOff), writes its status when it changes, and on deletion runs preStop hooks,
//! stops everything, removes containers, sandbox, volumes and cgroup, and only then confirms the
//! deletion to the API server. It wakes on pod updates, container exits, probe results and its
//! own backoff deadlines; it never polls.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::backoff::Backoff;
use super::cgroups::{self, Cgroups, QosClass};
use super::env::{NodeResources, ObjectSource};
use super::events::{EventRecorder, EventType, container_field};
use super::probes::{self, ProbeEvent, ProbeKind, Target};
use super::runtime::cni::NetworkConfig;
use super::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, MountSpec, Runtime, RuntimeError, Sandbox,
    SandboxConfig,
};
use super::status::{self, ContainerView, PodView, ViewState};
use super::volumes::VolumeManager;

/// The prefix of container ids in the API (`containerID: windlass://<id>`).
pub const CONTAINER_ID_PREFIX: &str = "windlass://";

/// What every worker shares.
pub struct WorkerContext {
    /// The API client.
    pub client: Client,
    /// The container runtime.
    pub runtime: Arc<dyn Runtime>,
    /// The cgroup writer.
    pub cgroups: Arc<dyn Cgroups>,
    /// Pod volumes.
    pub volumes: Arc<VolumeManager>,
    /// ConfigMaps and Secrets.
    pub source: Arc<dyn ObjectSource>,
    /// The node's pod network, once its podCIDR is known.
    pub network: watch::Receiver<Option<NetworkConfig>>,
    /// The node's IP.
    pub node_ip: Option<String>,
    /// The node's allocatable resources.
    pub node_resources: NodeResources,
    /// Restart backoff.
    pub backoff: Backoff,
    /// `/var/log/pods` or the test's.
    pub pod_log_dir: PathBuf,
    /// kubelet's `--pod-max-pids`.
    pub pids_limit: Option<i64>,
    /// Pod events.
    pub events: EventRecorder,
    /// The cluster DNS pods with dnsPolicy ClusterFirst get.
    pub cluster_dns: crate::node::dns::resolv_conf::ClusterDns,
    /// The node's resolv.conf (`--resolv-conf`).
    pub resolv_conf: PathBuf,
}

impl std::fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerContext")
            .field("runtime", &self.runtime)
            .field("node_ip", &self.node_ip)
            .finish_non_exhaustive()
    }
}

/// What a worker is told.
#[derive(Debug)]
pub enum WorkerMessage {
    /// The pod changed (or was seen again after a relist).
    Update(Arc<Pod>),
    /// The pod is gone from the API server.
    Deleted,
    /// A container of this pod exited (an empty id: re-read every container).
    ContainerExited(String),
    /// The uid of this static pod's mirror pod in the API, or `None` when it is gone.
    Mirror(Option<String>),
}

/// A running pod worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Where to send messages.
    pub tx: mpsc::UnboundedSender<WorkerMessage>,
    /// The task; ends once the pod is fully torn down.
    pub task: tokio::task::JoinHandle<()>,
}

/// What the runtime already holds for a pod, found at agent start.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Its sandbox.
    pub sandbox: Option<Sandbox>,
    /// Its containers.
    pub containers: Vec<ContainerStatus>,
}

/// Starts the worker for `pod`.
pub fn spawn(ctx: Arc<WorkerContext>, pod: Arc<Pod>, adopted: Adopted) -> WorkerHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = Worker::new(ctx, pod, adopted);
    let task = tokio::spawn(worker.run(rx));
    WorkerHandle { tx, task }
}

#[derive(Debug, Default)]
struct Track {
    name: String,
    init: bool,
    current: Option<ContainerStatus>,
    /// Older containers of this name, to remove once a newer one runs.
    dead: Vec<String>,
    restart_count: i32,
    last: Option<ViewState>,
    waiting: Option<(String, String)>,
    backoff_step: u32,
    next_start: Option<Instant>,
    ready: bool,
    started: bool,
    probes: Vec<tokio::task::JoinHandle<()>>,
    /// The container id whose exit was already turned into a restart decision.
    decided: Option<String>,
    /// Why the current attempt could not start (its terminated message).
    start_error: Option<String>,
}

impl Track {
    fn stop_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
    }

    fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(|c| c.id.as_str())
    }

    fn is_running(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| matches!(c.state, ContainerState::Running { .. }))
    }
}

struct Worker {
    ctx: Arc<WorkerContext>,
    pod: Arc<Pod>,
    uid: String,
    name: String,
    namespace: String,
    qos: QosClass,
    sandbox: Option<Sandbox>,
    tracks: Vec<Track>,
    cgroup_ready: bool,
    volumes: Option<super::volumes::PodVolumes>,
    deleted: bool,
    failed: bool,
    start_time: String,
    last_status: Option<serde_json::Value>,
    retry_at: Option<Instant>,
    probe_tx: mpsc::Sender<ProbeEvent>,
    probe_rx: Option<mpsc::Receiver<ProbeEvent>>,
    volumes_synced: Instant,
    /// A static pod (from the manifest dir) shows its status on a mirror pod instead.
    is_static: bool,
    /// The mirror pod's uid, once it exists.
    mirror_uid: Option<String>,
}

fn meta(pod: &Pod) -> (String, String, String) {
    (
        pod.metadata.uid.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
    )
}

fn specs(pod: &Pod) -> (Vec<Container>, Vec<Container>) {
    let spec = pod.spec.clone().unwrap_or_default();
    (spec.init_containers.unwrap_or_default(), spec.containers)
}

impl Worker {
    fn new(ctx: Arc<WorkerContext>, pod: Arc<Pod>, adopted: Adopted) -> Self {
        let (uid, name, namespace) = meta(&pod);
        let qos = QosClass::from_pod(&pod).unwrap_or(QosClass::BestEffort);
        let (init, app) = specs(&pod);
        let mut tracks: Vec<Track> = init
            .iter()
            .map(|c| Track {
                name: c.name.clone(),
                init: true,
                ..Default::default()
            })
            .chain(app.iter().map(|c| Track {
                name: c.name.clone(),
                ..Default::default()
            }))
            .collect();
        // Re-adoption: the newest container of each name is the current one.
        let mut by_name: HashMap<String, Vec<ContainerStatus>> = HashMap::new();
        for c in adopted.containers {
            by_name.entry(c.name.clone()).or_default().push(c);
        }
        for track in &mut tracks {
            if let Some(mut list) = by_name.remove(&track.name) {
                list.sort_by_key(|c| c.attempt);
                // A container created but never started (the agent died in between) is
                // removed and made again.
                let (never_started, mut list): (Vec<_>, Vec<_>) = list
                    .into_iter()
                    .partition(|c| matches!(c.state, ContainerState::Created));
                track.dead.extend(never_started.into_iter().map(|c| c.id));
                if let Some(newest) = list.pop() {
                    track.restart_count = newest.attempt as i32;
                    if let Some(prev) = list.last() {
                        track.last = Some(view_state(prev));
                    }
                    track.dead.extend(list.into_iter().map(|c| c.id));
                    track.started = matches!(newest.state, ContainerState::Running { .. });
                    track.current = Some(newest);
                }
            }
        }
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_else(super::runtime::now_rfc3339);
        let (probe_tx, probe_rx) = mpsc::channel(64);
        let is_static = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(super::static_pods::CONFIG_SOURCE));
        Worker {
            cgroup_ready: false,
            volumes: None,
            sandbox: adopted.sandbox,
            ctx,
            pod,
            uid,
            name,
            namespace,
            qos,
            tracks,
            deleted: false,
            failed: false,
            start_time,
            last_status: None,
            retry_at: None,
            probe_tx,
            probe_rx: Some(probe_rx),
            volumes_synced: Instant::now(),
            is_static,
            mirror_uid: None,
        }
    }

    fn container_spec(&self, name: &str, init: bool) -> Option<Container> {
        let (i, a) = specs(&self.pod);
        if init { i } else { a }
            .into_iter()
            .find(|c| c.name == name)
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<WorkerMessage>) {
        let mut probe_rx = self.probe_rx.take();
        // Adopted containers may have exited while no agent watched them.
        self.refresh("").await;
        // Adopted running containers get their probes again.
        for i in 0..self.tracks.len() {
            if self.tracks[i].is_running() {
                self.start_probes(i, true);
            }
        }
        loop {
            if self.deleted || self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate().await;
                return;
            }
            self.retry_at = None;
            let synced = match self.sync().await {
                Ok(()) => self.release_network_if_finished().await,
                Err(e) => Err(e),
            };
            if let Err(message) = synced {
                tracing::warn!(pod = %self.name, namespace = %self.namespace, error = %message, "pod sync failed; retrying");
                self.retry_at = Some(Instant::now() + Duration::from_secs(2));
            }
            self.write_status().await;
            let deadline = self
                .tracks
                .iter()
                .filter_map(|t| t.next_start)
                .chain(self.retry_at)
                .chain(std::iter::once(
                    self.volumes_synced + Duration::from_secs(60),
                ))
                .min();
            let mut network = self.ctx.network.clone();
            tokio::select! {
                message = rx.recv() => match message {
                    Some(WorkerMessage::Update(pod)) => self.pod = pod,
                    Some(WorkerMessage::Mirror(uid)) => {
                        if uid != self.mirror_uid {
                            self.mirror_uid = uid;
                            self.last_status = None;
                        }
                    }
                    Some(WorkerMessage::Deleted) | None => self.deleted = true,
                    Some(WorkerMessage::ContainerExited(id)) => self.refresh(&id).await,
                },
                event = async { match probe_rx.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                    if let Some(event) = event { self.on_probe(event).await; }
                }
                _ = sleep_until(deadline) => {}
                _ = network.changed(), if self.sandbox.is_none() => {}
            }
        }
    }

    async fn refresh(&mut self, id: &str) {
        if id.is_empty() {
            let ids: Vec<String> = self
                .tracks
                .iter()
                .filter_map(|t| t.current_id().map(str::to_string))
                .collect();
            for id in ids {
                Box::pin(self.refresh(&id)).await;
            }
            return;
        }
        let status = self.ctx.runtime.container_status(id).await;
        for track in &mut self.tracks {
            if track.current_id() == Some(id) {
                match &status {
                    Ok(s) => track.current = Some(s.clone()),
                    Err(e) => {
                        tracing::warn!(pod = %self.name, container = %track.name, error = %e, "cannot read container status")
                    }
                }
                if !track.is_running() {
                    track.stop_probes();
                    track.ready = false;
                }
            }
        }
    }

    async fn sync(&mut self) -> Result<(), String> {
        if !self.cgroup_ready {
            let resources = cgroups::PodResources::for_pod(&self.pod, self.ctx.pids_limit)
                .map_err(|e| e.to_string())?;
            self.ctx
                .cgroups
                .create_pod(self.qos, &self.uid, &resources)
                .map_err(|e| format!("cannot create the pod cgroup: {e}"))?;
            self.cgroup_ready = true;
        }
        if self.volumes.is_none() {
            self.volumes = Some(
                self.ctx
                    .volumes
                    .setup(&self.pod, self.ctx.source.as_ref())
                    .await
                    .map_err(|e| format!("cannot set up volumes: {e}"))?,
            );
            self.volumes_synced = Instant::now();
        } else if self.volumes_synced.elapsed() >= Duration::from_secs(60) {
            self.volumes_synced = Instant::now();
            if let Err(e) = self
                .ctx
                .volumes
                .update(&self.pod, self.ctx.source.as_ref())
                .await
            {
                tracing::warn!(pod = %self.name, error = %e, "cannot update volumes");
            }
        }
        if self.sandbox.is_none() {
            self.sandbox = Some(self.make_sandbox().await?);
        }
        // Init containers in order; app containers once they all completed.
        let policy = self.restart_policy();
        let now = Instant::now();
        for i in 0..self.tracks.len() {
            if !self.tracks[i].init {
                continue;
            }
            match self.tracks[i].current.as_ref().map(|c| c.state.clone()) {
                Some(ContainerState::Exited { exit_code: 0, .. }) => continue,
                Some(ContainerState::Running { .. }) | Some(ContainerState::Created) => {
                    return Ok(());
                }
                Some(ContainerState::Exited { .. }) => {
                    if policy == "Never" {
                        self.failed = true;
                        return Ok(());
                    }
                    self.restart_after_exit(i, now).await;
                    return Ok(());
                }
                None => {
                    if self.tracks[i].next_start.is_none_or(|t| t <= now) {
                        self.start(i).await;
                    }
                    return Ok(());
                }
            }
        }
        if self.failed {
            return Ok(());
        }
        for i in 0..self.tracks.len() {
            if self.tracks[i].init {
                continue;
            }
            match self.tracks[i].current.as_ref().map(|c| c.state.clone()) {
                None => {
                    if self.tracks[i].next_start.is_none_or(|t| t <= now) {
                        self.start(i).await;
                    }
                }
                Some(ContainerState::Exited { exit_code, .. }) => {
                    let restart = match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => exit_code != 0,
                        _ => true,
                    };
                    if restart {
                        self.restart_after_exit(i, now).await;
                    }
                }
                Some(_) => {}
            }
        }
        // Older containers go once a newer one of the same name runs (their logs stay).
        let log_dir = self.log_dir();
        for track in &mut self.tracks {
            if track.is_running() && !track.dead.is_empty() {
                for id in std::mem::take(&mut track.dead) {
                    if let Err(e) = self.ctx.runtime.remove_container(&id).await {
                        tracing::warn!(pod = %self.name, container = %track.name, error = %e, "cannot remove an old container");
                    }
                }
                // Like kubelet, keep the logs of the current and the previous attempt only, so
                // a container crash-looping for days does not fill the disk.
                prune_logs(&log_dir.join(&track.name), track.restart_count);
            }
        }
        Ok(())
    }

    /// A pod that finished (Succeeded or Failed) keeps its containers for their status and
    /// logs, but gives its network back, as kubelet stops the sandbox of terminal pods.
    async fn release_network_if_finished(&mut self) -> Result<(), String> {
        let phase = status::phase(&self.pod, &self.view());
        if (phase == "Succeeded" || phase == "Failed")
            && let Some(sandbox) = self.sandbox.as_mut()
            && !sandbox.stopped
        {
            self.ctx
                .runtime
                .stop_pod_sandbox(&sandbox.id)
                .await
                .map_err(|e| format!("cannot stop the sandbox of a finished pod: {e}"))?;
            sandbox.stopped = true;
        }
        Ok(())
    }

    fn event(
        &self,
        container: Option<(&str, bool)>,
        kind: EventType,
        reason: &'static str,
        message: String,
    ) {
        self.ctx.events.pod(
            &self.pod,
            container.and_then(|(name, init)| container_field(name, init)),
            kind,
            reason,
            message,
        );
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    /// Decides once per exited container when it restarts, then restarts it when due.
    async fn restart_after_exit(&mut self, i: usize, now: Instant) {
        let pod_desc = format!("{}_{}({})", self.name, self.namespace, self.uid);
        let track = &mut self.tracks[i];
        let Some(current) = track.current.clone() else {
            return;
        };
        if track.decided.as_deref() != Some(current.id.as_str()) {
            track.decided = Some(current.id.clone());
            let ran = match &current.state {
                ContainerState::Exited {
                    started_at,
                    finished_at,
                    ..
                } => duration_between(started_at, finished_at),
                _ => Duration::ZERO,
            };
            let (delay, step) = self.ctx.backoff.next(track.backoff_step, ran);
            track.backoff_step = step;
            track.next_start = Some(now + delay);
            if !delay.is_zero() {
                let (name, init) = (track.name.clone(), track.init);
                self.ctx.events.pod(
                    &self.pod,
                    container_field(&name, init),
                    EventType::Warning,
                    "BackOff",
                    format!("Back-off restarting failed container {name} in pod {pod_desc}"),
                );
                track.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off {}s restarting failed container={} pod={pod_desc}",
                        delay.as_secs(),
                        track.name
                    ),
                ));
            }
        }
        if track.next_start.is_some_and(|t| t <= now) {
            self.start(i).await;
        }
    }

    async fn make_sandbox(&mut self) -> Result<Sandbox, String> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        let network = self.ctx.network.borrow().clone();
        if !host_network && network.is_none() {
            return Err("network is not ready: the node has no podCIDR yet".into());
        }
        let config = SandboxConfig {
            uid: self.uid.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            hostname: spec.hostname.clone().unwrap_or_else(|| self.name.clone()),
            host_network,
            host_ipc: spec.host_ipc.unwrap_or(false),
            host_pid: spec.host_pid.unwrap_or(false),
            cgroup_parent: self.ctx.cgroups.pod_path(self.qos, &self.uid),
            log_directory: self.log_dir(),
            dns: Some(crate::node::dns::resolv_conf::pod_dns(
                &spec,
                &self.namespace,
                &self.ctx.cluster_dns,
                &crate::node::kubelet::runtime::oci::node_resolv_conf_at(&self.ctx.resolv_conf),
            )),
            privileged: spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .any(|c| {
                    c.security_context
                        .as_ref()
                        .and_then(|s| s.privileged)
                        .unwrap_or(false)
                }),
        };
        self.ctx
            .runtime
            .run_pod_sandbox(&config, network.as_ref())
            .await
            .map_err(|e| format!("failed to create the pod sandbox: {e}"))
    }

    fn log_dir(&self) -> PathBuf {
        self.ctx
            .pod_log_dir
            .join(format!("{}_{}_{}", self.namespace, self.name, self.uid))
    }

    async fn container_config(
        &self,
        spec: &Container,
        attempt: u32,
    ) -> Result<ContainerConfig, (String, String)> {
        let pod_ip = self
            .sandbox
            .as_ref()
            .and_then(|s| s.ip)
            .map(|ip| ip.to_string());
        let env = super::env::container_env(
            &self.pod,
            spec,
            self.ctx.source.as_ref(),
            pod_ip.as_deref().or(self.ctx.node_ip.as_deref()),
            self.ctx.node_ip.as_deref(),
            &self.ctx.node_resources,
        )
        .await
        .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
        let mounts = self
            .volumes
            .as_ref()
            .ok_or_else(|| {
                (
                    "CreateContainerConfigError".to_string(),
                    "volumes are not set up".to_string(),
                )
            })?
            .mounts_for_env(spec, &env)
            .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?
            .into_iter()
            .map(|m| MountSpec {
                host_path: m.host_path,
                container_path: m.container_path,
                read_only: m.read_only,
            })
            .collect();
        let resources = cgroups::ContainerResources::for_pod_container(
            &self.pod,
            spec,
            self.ctx.node_resources.memory_bytes as i64,
        )
        .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
        let security = spec.security_context.clone().unwrap_or_default();
        let pod_security = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        Ok(ContainerConfig {
            name: spec.name.clone(),
            attempt,
            image: spec.image.clone().unwrap_or_default(),
            command: spec.command.clone().unwrap_or_default(),
            args: spec.args.clone().unwrap_or_default(),
            env,
            working_dir: spec.working_dir.clone(),
            mounts,
            resources: Some(cgroups::oci_linux_resources(
                &resources,
                self.ctx.pids_limit,
            )),
            oom_score_adj: Some(resources.oom_score_adj),
            run_as_user: security
                .run_as_user
                .or(pod_security.run_as_user)
                .and_then(|u| u32::try_from(u).ok()),
            run_as_group: security
                .run_as_group
                .or(pod_security.run_as_group)
                .and_then(|g| u32::try_from(g).ok()),
            privileged: security.privileged.unwrap_or(false),
            log_path: self
                .log_dir()
                .join(&spec.name)
                .join(format!("{attempt}.log")),
        })
    }

    async fn start(&mut self, i: usize) {
        let (name, init) = (self.tracks[i].name.clone(), self.tracks[i].init);
        let Some(spec) = self.container_spec(&name, init) else {
            return;
        };
        let Some(sandbox) = self.sandbox.clone() else {
            return;
        };
        let had_previous = self.tracks[i].current.is_some();
        let attempt = if had_previous {
            self.tracks[i].restart_count as u32 + 1
        } else {
            self.tracks[i].restart_count as u32
        };
        self.tracks[i].next_start = None;
        let config = match self.container_config(&spec, attempt).await {
            Ok(config) => config,
            Err((reason, message)) => {
                self.event(
                    Some((&name, init)),
                    EventType::Warning,
                    "Failed",
                    format!("Error: {message}"),
                );
                self.tracks[i].waiting = Some((reason, message));
                self.retry_at = Some(Instant::now() + Duration::from_secs(5));
                return;
            }
        };
        if let Err((reason, message)) = self.ensure_image(&spec, init).await {
            let track = &mut self.tracks[i];
            // The first failure shows ErrImagePull, later ones ImagePullBackOff, as kubelet does.
            let reason = match &track.waiting {
                Some((previous, _)) if previous == &reason && reason == "ErrImagePull" => {
                    "ImagePullBackOff".to_string()
                }
                _ => reason,
            };
            track.waiting = Some((reason, message));
            self.retry_at = Some(Instant::now() + Duration::from_secs(5));
            return;
        }
        let id = match self.ctx.runtime.create_container(&sandbox, &config).await {
            Ok(id) => id,
            Err(RuntimeError::ImageNotFound(image)) => {
                self.tracks[i].waiting = Some((
                    "ErrImagePull".into(),
                    format!("image {image:?} is not present on the node"),
                ));
                self.retry_at = Some(Instant::now() + Duration::from_secs(5));
                return;
            }
            Err(e) => {
                self.event(
                    Some((&name, init)),
                    EventType::Warning,
                    "Failed",
                    format!("Error: {e}"),
                );
                self.tracks[i].waiting = Some(("CreateContainerError".into(), e.to_string()));
                self.retry_at = Some(Instant::now() + Duration::from_secs(5));
                return;
            }
        };
        self.event(
            Some((&name, init)),
            EventType::Normal,
            "Created",
            format!("Created container: {name}"),
        );
        let started = self.ctx.runtime.start_container(&id).await;
        match &started {
            Ok(()) => self.event(
                Some((&name, init)),
                EventType::Normal,
                "Started",
                format!("Started container {name}"),
            ),
            Err(e) => self.event(
                Some((&name, init)),
                EventType::Warning,
                "Failed",
                format!("Error: {e}"),
            ),
        }
        let status = self.ctx.runtime.container_status(&id).await.ok();
        let track = &mut self.tracks[i];
        if let Some(previous) = track.current.take() {
            track.last = Some(view_state(&previous));
            track.dead.push(previous.id);
            track.restart_count = attempt as i32;
        }
        track.waiting = None;
        track.start_error = None;
        track.ready = false;
        track.started = false;
        match started {
            Ok(()) => {
                tracing::info!(pod = %self.name, namespace = %self.namespace, container = %name, attempt, "container started");
                track.current = status;
                self.after_start(i, &spec).await;
            }
            Err(e) => {
                // As kubelet reports it: the attempt terminated with exit code 128 and reason
                // StartError, and the restart policy decides what comes next.
                tracing::warn!(pod = %self.name, container = %name, error = %e, "container failed to start");
                let _ = self.ctx.runtime.remove_container(&id).await;
                let now = super::runtime::now_rfc3339();
                let track = &mut self.tracks[i];
                track.current = Some(ContainerStatus {
                    id,
                    sandbox_id: sandbox.id.clone(),
                    pod_uid: self.uid.clone(),
                    name: name.clone(),
                    attempt,
                    image: config.image.clone(),
                    image_id: String::new(),
                    created_at: now.clone(),
                    state: ContainerState::Exited {
                        exit_code: 128,
                        reason: "StartError".into(),
                        started_at: now.clone(),
                        finished_at: now,
                    },
                    pid: None,
                    log_path: config.log_path.clone(),
                });
                track.start_error = Some(e.to_string());
            }
        }
    }

    /// Applies the container's imagePullPolicy; `Err((reason, message))` for the waiting state.
    async fn ensure_image(&self, spec: &Container, init: bool) -> Result<(), (String, String)> {
        let result = self.ensure_image_quietly(spec).await;
        let who = Some((spec.name.as_str(), init));
        let image = spec.image.clone().unwrap_or_default();
        match &result {
            Ok(None) => self.event(
                who,
                EventType::Normal,
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            ),
            Ok(Some(took)) => self.event(
                who,
                EventType::Normal,
                "Pulled",
                format!("Successfully pulled image \"{image}\" in {took:?}"),
            ),
            Err((_, message)) => self.event(
                who,
                EventType::Warning,
                "Failed",
                format!("Failed to pull image \"{image}\": {message}"),
            ),
        }
        result.map(|_| ())
    }

    /// `Ok(None)` when no pull was needed, `Ok(Some(time taken))` after a pull.
    async fn ensure_image_quietly(
        &self,
        spec: &Container,
    ) -> Result<Option<Duration>, (String, String)> {
        let image = spec.image.clone().unwrap_or_default();
        let policy = pull_policy(&image, spec.image_pull_policy.as_deref());
        let present = self
            .ctx
            .runtime
            .image_status(&image)
            .await
            .map_err(|e| ("ErrImagePull".to_string(), e.to_string()))?
            .is_some();
        let must_pull = match policy {
            PullPolicy::Never if !present => {
                return Err((
                    "ErrImageNeverPull".into(),
                    format!("Container image \"{image}\" is not present with pull policy of Never"),
                ));
            }
            PullPolicy::Never => false,
            PullPolicy::IfNotPresent => !present,
            PullPolicy::Always => true,
        };
        if !must_pull {
            return Ok(None);
        }
        if is_node_local(&image) {
            return if present {
                Ok(None)
            } else {
                Err((
                    "ErrImagePull".into(),
                    format!(
                        "image {image:?} is not present on the node; {LOCAL_REGISTRY} images are never pulled: import it with `windlass image import`"
                    ),
                ))
            };
        }
        tracing::info!(pod = %self.name, container = %spec.name, image = %image, "pulling image");
        self.event(
            Some((spec.name.as_str(), false)),
            EventType::Normal,
            "Pulling",
            format!("Pulling image \"{image}\""),
        );
        let started = Instant::now();
        self.ctx
            .runtime
            .pull_image(&image)
            .await
            .map(|_| Some(started.elapsed()))
            .map_err(|e| ("ErrImagePull".to_string(), e.to_string()))
    }

    fn target(&self, i: usize) -> Option<Target> {
        let track = &self.tracks[i];
        Some(Target {
            runtime: Arc::clone(&self.ctx.runtime),
            container_id: track.current_id()?.to_string(),
            pod_ip: self
                .sandbox
                .as_ref()
                .and_then(|s| s.ip)
                .map(|ip| ip.to_string())
                .or_else(|| self.ctx.node_ip.clone()),
            container: self.container_spec(&track.name, track.init)?,
        })
    }

    async fn after_start(&mut self, i: usize, spec: &Container) {
        if let Some(hook) = spec.lifecycle.as_ref().and_then(|l| l.post_start.as_ref())
            && let Some(target) = self.target(i)
            && let Err(message) = probes::run_hook(&target, hook, self.grace()).await
        {
            {
                tracing::warn!(pod = %self.name, container = %spec.name, error = %message, "postStart hook failed; killing the container");
                let _ = self
                    .ctx
                    .runtime
                    .stop_container(&target.container_id, self.grace())
                    .await;
                self.refresh(&target.container_id).await;
                return;
            }
        }
        self.start_probes(i, false);
    }

    fn start_probes(&mut self, i: usize, adopted: bool) {
        let track_init = self.tracks[i].init;
        let Some(spec) = self.container_spec(&self.tracks[i].name, track_init) else {
            return;
        };
        let Some(target) = self.target(i) else {
            return;
        };
        let track = &mut self.tracks[i];
        track.stop_probes();
        if track_init {
            track.started = true;
            return;
        }
        match (&spec.startup_probe, adopted) {
            (Some(probe), false) => {
                track.started = false;
                track.probes.push(probes::spawn(
                    ProbeKind::Startup,
                    probe.clone(),
                    target,
                    self.probe_tx.clone(),
                ));
            }
            _ => {
                track.started = true;
                Self::spawn_steady_probes(track, &spec, target, &self.probe_tx);
            }
        }
    }

    fn spawn_steady_probes(
        track: &mut Track,
        spec: &Container,
        target: Target,
        tx: &mpsc::Sender<ProbeEvent>,
    ) {
        if let Some(probe) = &spec.liveness_probe {
            track.probes.push(probes::spawn(
                ProbeKind::Liveness,
                probe.clone(),
                target.clone(),
                tx.clone(),
            ));
        }
        match &spec.readiness_probe {
            Some(probe) => track.probes.push(probes::spawn(
                ProbeKind::Readiness,
                probe.clone(),
                target,
                tx.clone(),
            )),
            None => track.ready = true,
        }
    }

    async fn on_probe(&mut self, event: ProbeEvent) {
        let Some(i) = self
            .tracks
            .iter()
            .position(|t| t.current_id() == Some(event.container_id.as_str()))
        else {
            return;
        };
        let kind_name = match event.kind {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        };
        let who = Some((event.container.as_str(), self.tracks[i].init));
        if !event.success {
            self.event(
                who,
                EventType::Warning,
                "Unhealthy",
                format!("{kind_name} probe failed: {}", event.message),
            );
        }
        match (event.kind, event.success) {
            (ProbeKind::Readiness, ready) => self.tracks[i].ready = ready,
            (ProbeKind::Startup, true) => {
                self.tracks[i].started = true;
                if let (Some(spec), Some(target)) = (
                    self.container_spec(&self.tracks[i].name, false),
                    self.target(i),
                ) {
                    let tx = self.probe_tx.clone();
                    Self::spawn_steady_probes(&mut self.tracks[i], &spec, target, &tx);
                }
            }
            (ProbeKind::Liveness | ProbeKind::Startup, false) => {
                tracing::info!(pod = %self.name, container = %event.container, kind = ?event.kind, message = %event.message, "probe failed; restarting the container");
                self.event(
                    who,
                    EventType::Normal,
                    "Killing",
                    format!(
                        "Container {} failed {} probe, will be restarted",
                        event.container,
                        kind_name.to_lowercase()
                    ),
                );
                self.tracks[i].stop_probes();
                self.tracks[i].ready = false;
                let grace = self.grace();
                if let Err(e) = self
                    .ctx
                    .runtime
                    .stop_container(&event.container_id, grace)
                    .await
                {
                    tracing::warn!(pod = %self.name, container = %event.container, error = %e, "cannot stop the container");
                }
                self.refresh(&event.container_id).await;
            }
            (ProbeKind::Liveness, true) => {}
        }
    }

    fn grace(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(seconds.max(0) as u64)
    }

    fn view(&self) -> PodView {
        let mut view = PodView {
            sandbox_ready: self.sandbox.is_some(),
            pod_ip: self
                .sandbox
                .as_ref()
                .and_then(|s| if s.config.host_network { None } else { s.ip })
                .map(|ip| ip.to_string())
                .or_else(|| {
                    self.sandbox
                        .as_ref()
                        .filter(|s| s.config.host_network)
                        .and(self.ctx.node_ip.clone())
                }),
            host_ip: self.ctx.node_ip.clone(),
            start_time: Some(self.start_time.clone()),
            qos_class: self.qos.as_str().to_string(),
            failed: self.failed,
            ..Default::default()
        };
        let mut initialized = true;
        for track in &self.tracks {
            let spec = self.container_spec(&track.name, track.init);
            let state = match (&track.waiting, &track.current) {
                (Some((reason, message)), _) if !track.is_running() => ViewState::WaitingFor {
                    reason: reason.clone(),
                    message: message.clone(),
                },
                (_, Some(c)) => match &c.state {
                    ContainerState::Created => ViewState::Waiting,
                    _ => view_state(c),
                },
                (_, None) => ViewState::Waiting,
            };
            let running = matches!(state, ViewState::Running { .. });
            let container_view = ContainerView {
                name: track.name.clone(),
                image: spec.and_then(|s| s.image).unwrap_or_default(),
                image_id: track
                    .current
                    .as_ref()
                    .map(|c| c.image_id.clone())
                    .unwrap_or_default(),
                container_id: track
                    .current
                    .as_ref()
                    .map(|c| format!("{CONTAINER_ID_PREFIX}{}", c.id)),
                ready: running && track.ready && track.started,
                started: running && track.started,
                state: state.clone(),
                last_state: match (&track.waiting, &track.current) {
                    (Some(_), Some(c)) if matches!(c.state, ContainerState::Exited { .. }) => {
                        Some(view_state(c))
                    }
                    _ => track.last.clone(),
                },
                restart_count: track.restart_count,
            };
            if track.init {
                if !state.succeeded() {
                    initialized = false;
                }
                view.init.push(ContainerView {
                    ready: state.succeeded(),
                    ..container_view
                });
            } else {
                view.containers.push(container_view);
            }
        }
        view.initialized = initialized;
        view
    }

    async fn write_status(&mut self) {
        let status = status::build(&self.pod, &self.view());
        let Ok(mut value) = serde_json::to_value(&status) else {
            return;
        };
        // lastTransitionTime moves only on change; compare without it.
        let comparable = strip_times(&value);
        if self.last_status.as_ref() == Some(&comparable) {
            return;
        }
        if let Some(obj) = value.as_object_mut() {
            for key in [
                "initContainerStatuses",
                "podIP",
                "podIPs",
                "hostIP",
                "hostIPs",
            ] {
                obj.entry(key).or_insert(serde_json::Value::Null);
            }
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let target_uid = if self.is_static {
            // No API server yet, or no mirror pod: nothing to write to.
            match &self.mirror_uid {
                Some(uid) => uid.clone(),
                None => return,
            }
        } else {
            self.uid.clone()
        };
        let patch = json!({"metadata": {"uid": target_uid}, "status": value});
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(pod) => {
                self.last_status = Some(comparable);
                if !self.is_static && pod.metadata.uid.as_deref() == Some(self.uid.as_str()) {
                    // Keep the newer object unless a watch event already brought a newer one.
                    let keep_deletion = self.pod.metadata.deletion_timestamp.is_some();
                    if !keep_deletion {
                        self.pod = Arc::new(pod);
                    }
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 && self.is_static => self.mirror_uid = None,
            Err(kube::Error::Api(e)) if e.code == 404 => self.deleted = true,
            Err(e) => {
                tracing::warn!(pod = %self.name, namespace = %self.namespace, error = %e, "cannot write pod status");
                self.retry_at = Some(Instant::now() + Duration::from_secs(2));
            }
        }
    }

    /// Stops and removes everything of the pod, then confirms the deletion.
    async fn terminate(&mut self) {
        let grace = self.grace();
        tracing::info!(pod = %self.name, namespace = %self.namespace, grace_seconds = grace.as_secs(), "terminating pod");
        let deadline = Instant::now() + grace;
        for track in &mut self.tracks {
            track.stop_probes();
        }
        let mut stops = Vec::new();
        for i in 0..self.tracks.len() {
            if !self.tracks[i].is_running() {
                continue;
            }
            let target = self.target(i);
            let spec = self.container_spec(&self.tracks[i].name, self.tracks[i].init);
            self.event(
                Some((&self.tracks[i].name, self.tracks[i].init)),
                EventType::Normal,
                "Killing",
                format!("Stopping container {}", self.tracks[i].name),
            );
            let runtime = Arc::clone(&self.ctx.runtime);
            let name = self.name.clone();
            stops.push(async move {
                let Some(target) = target else { return };
                if let Some(hook) = spec
                    .as_ref()
                    .and_then(|s| s.lifecycle.as_ref())
                    .and_then(|l| l.pre_stop.as_ref())
                {
                    let budget = deadline.saturating_duration_since(Instant::now());
                    if let Err(message) = probes::run_hook(&target, hook, budget).await {
                        tracing::warn!(pod = %name, container = %target.container.name, error = %message, "preStop hook failed");
                    }
                }
                // kubelet's minimum: a preStop that used the whole grace period still leaves the
                // container 2 s between SIGTERM and SIGKILL.
                let remaining = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(2).min(grace));
                if let Err(e) = runtime.stop_container(&target.container_id, remaining).await {
                    tracing::warn!(pod = %name, container = %target.container.name, error = %e, "cannot stop the container");
                }
            });
        }
        futures::future::join_all(stops).await;
        // Cleanup is retried until everything is gone (a cgroup still busy with an exiting
        // process, a CNI DEL that failed): only then is the deletion confirmed.
        let mut ids: Vec<String> = Vec::new();
        for track in &mut self.tracks {
            ids.extend(track.current.take().map(|c| c.id));
            ids.append(&mut track.dead);
        }
        let mut delay = Duration::from_millis(500);
        loop {
            if self.clean_up(&ids).await {
                break;
            }
            tracing::warn!(pod = %self.name, retry_in = ?delay, "pod not fully cleaned up; deletion not confirmed yet");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
        // The API object to remove: the pod itself, or a static pod's mirror.
        let api_uid = if self.is_static {
            self.mirror_uid.clone()
        } else if self.deleted {
            None
        } else {
            Some(self.uid.clone())
        };
        if let Some(api_uid) = api_uid {
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(api_uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&self.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(pod = %self.name, error = %e, "cannot confirm the pod's deletion")
                }
            }
        }
        tracing::info!(pod = %self.name, namespace = %self.namespace, "pod removed");
    }

    /// One pass of removing everything of the pod; true when nothing is left.
    async fn clean_up(&mut self, known: &[String]) -> bool {
        let mut clean = true;
        let mut ids: Vec<String> = known.to_vec();
        // Containers of this pod the worker lost track of (a crash between create and record).
        if let Ok(all) = self.ctx.runtime.list_containers().await {
            for c in all {
                if c.pod_uid == self.uid && !ids.contains(&c.id) {
                    ids.push(c.id);
                }
            }
        }
        for id in ids {
            if let Err(e) = self.ctx.runtime.remove_container(&id).await {
                tracing::warn!(pod = %self.name, error = %e, "cannot remove a container");
                clean = false;
            }
        }
        let mut sandboxes: Vec<String> = self.sandbox.take().map(|s| s.id).into_iter().collect();
        if let Ok(all) = self.ctx.runtime.list_pod_sandboxes().await {
            for s in all {
                if s.config.uid == self.uid && !sandboxes.contains(&s.id) {
                    sandboxes.push(s.id);
                }
            }
        }
        for id in sandboxes {
            if let Err(e) = self.ctx.runtime.remove_pod_sandbox(&id).await {
                tracing::warn!(pod = %self.name, error = %e, "cannot remove the sandbox");
                clean = false;
            }
        }
        // Volume teardown and log removal walk directories: not on a tokio worker's time.
        if let Err(e) = tokio::task::block_in_place(|| self.ctx.volumes.teardown(&self.uid)) {
            tracing::warn!(pod = %self.name, error = %e, "cannot tear down volumes");
            clean = false;
        }
        if let Err(e) = self.ctx.cgroups.remove_pod(self.qos, &self.uid) {
            tracing::warn!(pod = %self.name, error = %e, "cannot remove the pod cgroup");
            clean = false;
        }
        if let Err(e) = tokio::task::block_in_place(|| std::fs::remove_dir_all(self.log_dir()))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(pod = %self.name, error = %e, "cannot remove the pod's logs");
        }
        clean
    }
}

/// Images under this registry name live only in the node's store (built and imported by
/// `cargo xtask images`): there is no registry to pull them from, whatever the pull policy.
pub const LOCAL_REGISTRY: &str = "windlass.local";

fn is_node_local(image: &str) -> bool {
    image.starts_with(&format!("{LOCAL_REGISTRY}/"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// The effective imagePullPolicy: the spec's, else Always for `:latest` or no tag (and no
/// digest), IfNotPresent otherwise, as the API server defaults it.
fn pull_policy(image: &str, policy: Option<&str>) -> PullPolicy {
    match policy {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        _ => {
            let name = image.rsplit('/').next().unwrap_or(image);
            if image.contains('@') {
                PullPolicy::IfNotPresent
            } else {
                match name.rsplit_once(':') {
                    Some((_, "latest")) | None => PullPolicy::Always,
                    Some(_) => PullPolicy::IfNotPresent,
                }
            }
        }
    }
}

fn view_state(c: &ContainerStatus) -> ViewState {
    match &c.state {
        ContainerState::Created => ViewState::Waiting,
        ContainerState::Running { started_at } => ViewState::Running {
            started_at: started_at.clone(),
        },
        ContainerState::Exited {
            exit_code,
            reason,
            started_at,
            finished_at,
        } => ViewState::Terminated {
            exit_code: *exit_code,
            reason: reason.clone(),
            started_at: started_at.clone(),
            finished_at: finished_at.clone(),
            container_id: Some(format!("{CONTAINER_ID_PREFIX}{}", c.id)),
        },
    }
}

/// Removes `<n>.log` (and its rotated siblings) for attempts before `current - 1`.
fn prune_logs(dir: &std::path::Path, current: i32) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let attempt = name
            .split_once(".log")
            .and_then(|(n, _)| n.parse::<i32>().ok());
        if attempt.is_some_and(|n| n < current - 1) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn duration_between(start: &str, end: &str) -> Duration {
    match (
        start.parse::<jiff::Timestamp>(),
        end.parse::<jiff::Timestamp>(),
    ) {
        (Ok(s), Ok(e)) => e.duration_since(s).unsigned_abs(),
        _ => Duration::ZERO,
    }
}

fn strip_times(value: &serde_json::Value) -> serde_json::Value {
    let mut v = value.clone();
    if let Some(conds) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for c in conds {
            if let Some(obj) = c.as_object_mut() {
                obj.remove("lastTransitionTime");
            }
        }
    }
    v
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_like_the_api_server() {
        assert_eq!(pull_policy("busybox", None), PullPolicy::Always);
        assert_eq!(pull_policy("busybox:latest", None), PullPolicy::Always);
        assert_eq!(pull_policy("busybox:1.36", None), PullPolicy::IfNotPresent);
        assert_eq!(
            pull_policy("registry:5000/busybox", None),
            PullPolicy::Always
        );
        assert_eq!(
            pull_policy("busybox@sha256:abcd", None),
            PullPolicy::IfNotPresent
        );
        assert_eq!(pull_policy("busybox", Some("Never")), PullPolicy::Never);
        assert!(is_node_local("windlass.local/busybox:latest"));
        assert!(!is_node_local("docker.io/library/busybox"));
    }

    #[test]
    fn old_attempt_logs_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "0.log",
            "1.log",
            "1.log.20261201-000000",
            "2.log",
            "3.log",
            "notes",
        ] {
            std::fs::write(dir.path().join(name), "x").expect("write");
        }
        prune_logs(dir.path(), 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["2.log", "3.log", "notes"]);
    }

    #[test]
    fn run_time_between_timestamps() {
        assert_eq!(
            duration_between("2026-12-01T00:00:00Z", "2026-12-01T00:10:00Z"),
            Duration::from_secs(600)
        );
        assert_eq!(
            duration_between("bad", "2026-12-01T00:10:00Z"),
            Duration::ZERO
        );
    }
}
