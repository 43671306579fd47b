//! The `oci` runtime: pods as pinned namespaces plus CNI, containers as runc containers on an
//! overlayfs rootfs, each supervised by its own `windlass-shim`, which outlives the agent.
//!
//! On disk, under the data dir:
//! - `sandboxes/<id>/sandbox.json`, `ns/{net,ipc,uts}`, `hosts`, `hostname`, `resolv.conf`;
//! - `containers/<id>/container.json`, `bundle/config.json`, `state/` (the shim's: `shim.pid`,
//!   `container.pid`, `exit.json`), `upper/`, `work/`, `rootfs/` (the overlay mount).
//!
//! Everything the agent needs after a restart is in those files: [`OciRuntime::adopt`] re-reads
//! them and watches the live shims again, without touching the containers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{broadcast, watch};

use super::cni::{self, NetworkConfig};
use super::namespaces::{self, Wanted};
use super::{
    ContainerConfig, ContainerState, ContainerStatus, ExecResult, Runtime, RuntimeError,
    RuntimeEvent, Sandbox, SandboxConfig, io_err, new_id, now_rfc3339,
};
use crate::node::kubelet::cgroups::Cgroups;
use crate::node::kubelet::images::{ImageError, ImageStore};

/// Where the oci runtime keeps things and which binaries it runs.
#[derive(Debug, Clone)]
pub struct OciOptions {
    /// The agent's data dir.
    pub data_dir: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's state root (`--root`).
    pub runc_root: PathBuf,
    /// The `windlass-shim` binary.
    pub shim: PathBuf,
    /// Rotate container logs past this size.
    pub log_max_bytes: u64,
    /// Rotated log files kept, the current one included.
    pub log_max_files: u32,
    /// The node's cgroups, for a container's OOM-kill counter.
    pub cgroups: Arc<dyn Cgroups>,
}

/// What `container.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerRecord {
    id: String,
    sandbox_id: String,
    pod_uid: String,
    name: String,
    attempt: u32,
    image: String,
    image_id: String,
    created_at: String,
    log_path: PathBuf,
    cgroups_path: String,
    #[serde(default)]
    started_at: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
    /// Set once the exit was seen, so the reason survives the container's cgroup.
    #[serde(default)]
    exit_reason: Option<String>,
    /// The boot it was created in: after a reboot the container is gone whatever the files say.
    #[serde(default)]
    boot_id: String,
}

/// What `sandbox.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SandboxRecord {
    sandbox: Sandbox,
    network: Option<NetworkConfig>,
    /// The boot it was created in: its pinned namespaces do not survive a reboot.
    #[serde(default)]
    boot_id: String,
}

/// The oci runtime.
#[derive(Debug)]
pub struct OciRuntime {
    options: OciOptions,
    images: ImageStore,
    events: broadcast::Sender<RuntimeEvent>,
    /// Per running container, a receiver that turns true once its shim exited.
    exits: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

impl OciRuntime {
    /// Opens the runtime's directories and image store.
    pub fn new(options: OciOptions) -> Result<Arc<Self>, RuntimeError> {
        for dir in [
            options.data_dir.join("sandboxes"),
            options.data_dir.join("containers"),
            options.runc_root.clone(),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_err("create", dir.display()))?;
        }
        let images = ImageStore::open(&options.data_dir)?;
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(OciRuntime {
            options,
            images,
            events,
            exits: Mutex::new(HashMap::new()),
        }))
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// At start, before any pod worker runs: removes what a crash left half-made (a sandbox or
    /// container dir without its record), forgets sandboxes from before a reboot (their pinned
    /// namespaces are gone; their containers with them), and watches every live shim again.
    /// Running containers are not touched.
    pub async fn adopt(self: &Arc<Self>) -> Result<usize, RuntimeError> {
        let boot_id = current_boot_id();
        for (kind, dir) in [("sandbox", "sandboxes"), ("container", "containers")] {
            let dir = self.options.data_dir.join(dir);
            for entry in std::fs::read_dir(&dir).map_err(io_err("read", dir.display()))? {
                let entry = entry.map_err(io_err("read", dir.display()))?;
                let id = entry.file_name().to_string_lossy().into_owned();
                let record = entry.path().join(format!("{kind}.json"));
                if record.exists() {
                    continue;
                }
                tracing::warn!(id = %id, kind, "removing what a crashed create left");
                if kind == "sandbox" {
                    let _ = namespaces::remove(&entry.path().join("ns"));
                    let _ = std::fs::remove_dir_all(entry.path());
                } else {
                    let _ = self.runc(&["delete", "--force", &id]).await;
                    let _ = self.remove_container_files(&id);
                }
            }
        }
        let mut stale = Vec::new();
        for sandbox in self.list_pod_sandboxes().await? {
            let record = self.load_sandbox(&sandbox.id)?;
            if record.boot_id != boot_id {
                stale.push(sandbox.id);
            }
        }
        for record in self.container_records()? {
            if stale.contains(&record.sandbox_id) || record.boot_id != boot_id {
                tracing::info!(container = %record.id, "forgetting a container from before a reboot");
                let _ = self.runc(&["delete", "--force", &record.id]).await;
                self.remove_container_files(&record.id)?;
            }
        }
        for id in stale {
            tracing::info!(sandbox = %id, "forgetting a sandbox from before a reboot");
            // CNI DEL releases its address; its network namespace died with the boot.
            self.remove_pod_sandbox(&id).await?;
        }
        let mut adopted = 0;
        for record in self.container_records()? {
            let state = self.state_dir(&record.id);
            if windlass_shim::state::read_exit(&state)
                .ok()
                .flatten()
                .is_some()
            {
                continue;
            }
            let Ok(pids) = windlass_shim::state::read_pids(&state) else {
                continue;
            };
            if windlass_shim::state::shim_alive(&state).unwrap_or(false)
                && let Some(shim) = pids.shim
            {
                self.watch_pid(&record, shim);
                adopted += 1;
            }
        }
        Ok(adopted)
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.options.data_dir.join("sandboxes").join(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.options.data_dir.join("containers").join(id)
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("state")
    }

    fn load_sandbox(&self, id: &str) -> Result<SandboxRecord, RuntimeError> {
        read_json(&self.sandbox_dir(id).join("sandbox.json"))?.ok_or_else(|| {
            RuntimeError::NotFound {
                kind: "sandbox",
                id: id.to_string(),
            }
        })
    }

    fn save_sandbox(&self, record: &SandboxRecord) -> Result<(), RuntimeError> {
        write_json(
            &self.sandbox_dir(&record.sandbox.id).join("sandbox.json"),
            record,
        )
    }

    fn load_container(&self, id: &str) -> Result<ContainerRecord, RuntimeError> {
        read_json(&self.container_dir(id).join("container.json"))?.ok_or_else(|| {
            RuntimeError::NotFound {
                kind: "container",
                id: id.to_string(),
            }
        })
    }

    fn save_container(&self, record: &ContainerRecord) -> Result<(), RuntimeError> {
        write_json(
            &self.container_dir(&record.id).join("container.json"),
            record,
        )
    }

    fn container_records(&self) -> Result<Vec<ContainerRecord>, RuntimeError> {
        let dir = self.options.data_dir.join("containers");
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("read", dir.display()))? {
            let entry = entry.map_err(io_err("read", dir.display()))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            match self.load_container(&id) {
                Ok(record) => records.push(record),
                // Being created right now by another worker (adopt() removes crashed ones).
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(records)
    }

    async fn runc(&self, args: &[&str]) -> Result<std::process::Output, RuntimeError> {
        tokio::process::Command::new(&self.options.runc)
            .arg("--root")
            .arg(&self.options.runc_root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io_err("run", self.options.runc.display()))
    }

    /// Watches a shim that is not our child (adopted) through a pidfd.
    fn watch_pid(self: &Arc<Self>, record: &ContainerRecord, pid: u32) {
        let (tx, rx) = watch::channel(false);
        self.lock_exits().insert(record.id.clone(), rx);
        let this = Arc::clone(self);
        let (pod_uid, container_id) = (record.pod_uid.clone(), record.id.clone());
        tokio::spawn(async move {
            if let Err(e) = pidfd::wait_exit(pid).await {
                tracing::warn!(container = %container_id, error = %e, "cannot watch the shim; polling");
                while windlass_shim::state::is_alive(pid) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            this.exited(pod_uid, container_id, &tx);
        });
    }

    fn exited(&self, pod_uid: String, container_id: String, tx: &watch::Sender<bool>) {
        let _ = tx.send(true);
        self.lock_exits().remove(&container_id);
        tracing::debug!(container = %container_id, "container exited");
        let _ = self.events.send(RuntimeEvent::ContainerExited {
            pod_uid,
            container_id,
        });
    }

    fn lock_exits(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<bool>>> {
        self.exits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn status_of(&self, record: &mut ContainerRecord) -> ContainerStatus {
        let state_dir = self.state_dir(&record.id);
        let exit = windlass_shim::state::read_exit(&state_dir).ok().flatten();
        let pids = windlass_shim::state::read_pids(&state_dir).unwrap_or_default();
        let (state, pid) = match exit {
            Some(exit) => {
                let reason = match &record.exit_reason {
                    Some(reason) => reason.clone(),
                    None => {
                        let reason = if self
                            .options
                            .cgroups
                            .oom_killed(&record.cgroups_path)
                            .unwrap_or(false)
                        {
                            "OOMKilled"
                        } else if exit.exit_code == 0 {
                            "Completed"
                        } else {
                            "Error"
                        };
                        record.exit_reason = Some(reason.to_string());
                        let _ = self.save_container(record);
                        reason.to_string()
                    }
                };
                (
                    ContainerState::Exited {
                        exit_code: exit.exit_code,
                        reason,
                        started_at: trim_time(&exit.started_at),
                        finished_at: trim_time(&exit.finished_at),
                    },
                    None,
                )
            }
            None => match (pids.shim, pids.container) {
                (Some(_), container)
                    if windlass_shim::state::shim_alive(&state_dir).unwrap_or(false) =>
                {
                    (
                        ContainerState::Running {
                            started_at: record
                                .started_at
                                .clone()
                                .unwrap_or_else(|| record.created_at.clone()),
                        },
                        container,
                    )
                }
                (Some(_), _) => (
                    // The shim died without recording an exit (killed with -9, say).
                    ContainerState::Exited {
                        exit_code: 255,
                        reason: "Error".into(),
                        started_at: record.started_at.clone().unwrap_or_default(),
                        finished_at: now_rfc3339(),
                    },
                    None,
                ),
                (None, _) => (ContainerState::Created, None),
            },
        };
        ContainerStatus {
            id: record.id.clone(),
            sandbox_id: record.sandbox_id.clone(),
            pod_uid: record.pod_uid.clone(),
            name: record.name.clone(),
            attempt: record.attempt,
            image: record.image.clone(),
            image_id: record.image_id.clone(),
            created_at: record.created_at.clone(),
            state,
            pid,
            log_path: record.log_path.clone(),
        }
    }

    async fn wait_exit(&self, id: &str, timeout: Duration) -> bool {
        let rx = self.lock_exits().get(id).cloned();
        match rx {
            None => true,
            Some(mut rx) => tokio::time::timeout(timeout, rx.wait_for(|done| *done))
                .await
                .is_ok(),
        }
    }

    fn remove_container_files(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.container_dir(id);
        let rootfs = dir.join("rootfs");
        match nix::mount::umount2(&rootfs, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => {
                return Err(RuntimeError::Io {
                    action: "unmount",
                    path: rootfs.display().to_string(),
                    source: e.into(),
                });
            }
        }
        // A container's upper dir can be large: not on a tokio worker's time.
        match tokio::task::block_in_place(|| std::fs::remove_dir_all(&dir)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", dir.display())(e)),
        }
    }
}

#[async_trait]
impl Runtime for OciRuntime {
    async fn version(&self) -> Result<String, RuntimeError> {
        let out = self.runc(&["--version"]).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("unknown");
        Ok(format!("runc://{version}"))
    }

    async fn run_pod_sandbox(
        &self,
        config: &SandboxConfig,
        network: Option<&NetworkConfig>,
    ) -> Result<Sandbox, RuntimeError> {
        let id = new_id();
        let dir = self.sandbox_dir(&id);
        std::fs::create_dir_all(&dir).map_err(io_err("create", dir.display()))?;
        let wanted = Wanted {
            net: !config.host_network,
            ipc: !config.host_ipc,
            uts: !config.host_network,
        };
        let ns_dir = dir.join("ns");
        let hostname = config.hostname.clone();
        let made = {
            let ns_dir = ns_dir.clone();
            tokio::task::spawn_blocking(move || namespaces::create(&ns_dir, &hostname, wanted))
                .await
                .map_err(|_| RuntimeError::Namespaces(namespaces::NamespaceError::Thread))?
        };
        let made = match made {
            Ok(made) => made,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        let mut sandbox = Sandbox {
            id: id.clone(),
            config: config.clone(),
            ip: None,
            netns: made.net.clone(),
            ipcns: made.ipc.clone(),
            utsns: made.uts.clone(),
            dir: dir.clone(),
            created_at: now_rfc3339(),
            stopped: false,
        };
        // Recorded before CNI ADD so that a crash during ADD still leads to a DEL.
        let record = SandboxRecord {
            sandbox: sandbox.clone(),
            network: network.filter(|_| made.net.is_some()).cloned(),
            boot_id: current_boot_id(),
        };
        let undo = |e: RuntimeError| {
            let _ = namespaces::remove(&ns_dir);
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        self.save_sandbox(&record).map_err(undo)?;
        if let (Some(netns), Some(network)) = (&made.net, &record.network) {
            let who = cni::Attachment {
                container_id: &id,
                netns,
                pod_namespace: &config.namespace,
                pod_name: &config.name,
                pod_uid: &config.uid,
            };
            match cni::add(network, &who).await {
                Ok(ip) => sandbox.ip = Some(ip),
                Err(e) => {
                    let _ = cni::del(network, &who).await;
                    return Err(undo(e.into()));
                }
            }
        }
        let finish = write_pod_files(&sandbox).and_then(|()| {
            self.save_sandbox(&SandboxRecord {
                sandbox: sandbox.clone(),
                network: record.network.clone(),
                boot_id: record.boot_id.clone(),
            })
        });
        if let Err(e) = finish {
            // The address was handed out: give it back before undoing the rest.
            if let (Some(netns), Some(network)) = (&made.net, &record.network) {
                let who = cni::Attachment {
                    container_id: &id,
                    netns,
                    pod_namespace: &config.namespace,
                    pod_name: &config.name,
                    pod_uid: &config.uid,
                };
                let _ = cni::del(network, &who).await;
            }
            return Err(undo(e));
        }
        Ok(sandbox)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut record = match self.load_sandbox(id) {
            Ok(record) => record,
            Err(RuntimeError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if record.sandbox.stopped {
            return Ok(());
        }
        if let (Some(netns), Some(network)) = (&record.sandbox.netns, &record.network) {
            let config = &record.sandbox.config;
            cni::del(
                network,
                &cni::Attachment {
                    container_id: id,
                    netns,
                    pod_namespace: &config.namespace,
                    pod_name: &config.name,
                    pod_uid: &config.uid,
                },
            )
            .await?;
        }
        record.sandbox.stopped = true;
        self.save_sandbox(&record)
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop_pod_sandbox(id).await?;
        let dir = self.sandbox_dir(id);
        namespaces::remove(&dir.join("ns"))?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", dir.display())(e)),
        }
    }

    async fn list_pod_sandboxes(&self) -> Result<Vec<Sandbox>, RuntimeError> {
        let dir = self.options.data_dir.join("sandboxes");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("read", dir.display()))? {
            let entry = entry.map_err(io_err("read", dir.display()))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            match self.load_sandbox(&id) {
                Ok(record) => out.push(record.sandbox),
                // Being created right now by another worker (adopt() removes crashed ones).
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn create_container(
        &self,
        sandbox: &Sandbox,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let image = match self.images.resolve(&config.image) {
            Ok(image) => image,
            Err(ImageError::NotFound(_)) => {
                return Err(RuntimeError::ImageNotFound(config.image.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        let id = new_id();
        let dir = self.container_dir(&id);
        let (upper, work, rootfs, bundle) = (
            dir.join("upper"),
            dir.join("work"),
            dir.join("rootfs"),
            dir.join("bundle"),
        );
        let result = (|| {
            for d in [&upper, &work, &rootfs, &bundle] {
                std::fs::create_dir_all(d).map_err(io_err("create", d.display()))?;
            }
            let lower = image
                .layers
                .iter()
                .rev()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":");
            let data = format!(
                "lowerdir={lower},upperdir={},workdir={}",
                upper.display(),
                work.display()
            );
            nix::mount::mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                MsFlags::empty(),
                Some(data.as_str()),
            )
            .map_err(|e| RuntimeError::Io {
                action: "mount the overlay rootfs at",
                path: rootfs.display().to_string(),
                source: e.into(),
            })?;
            let cgroups_path = format!("{}/{}", sandbox.config.cgroup_parent, id);
            let spec = super::spec::build(config, &image.config, sandbox, &rootfs, &cgroups_path)
                .map_err(|message| RuntimeError::Container {
                action: "create",
                id: id.clone(),
                message,
            })?;
            let spec_json = serde_json::to_vec_pretty(&spec).map_err(|e| RuntimeError::State {
                path: bundle.display().to_string(),
                message: e.to_string(),
            })?;
            let config_path = bundle.join("config.json");
            std::fs::write(&config_path, spec_json)
                .map_err(io_err("write", config_path.display()))?;
            if let Some(parent) = config.log_path.parent() {
                std::fs::create_dir_all(parent).map_err(io_err("create", parent.display()))?;
            }
            self.save_container(&ContainerRecord {
                id: id.clone(),
                sandbox_id: sandbox.id.clone(),
                pod_uid: sandbox.config.uid.clone(),
                name: config.name.clone(),
                attempt: config.attempt,
                image: config.image.clone(),
                image_id: image.id.clone(),
                created_at: now_rfc3339(),
                log_path: config.log_path.clone(),
                cgroups_path,
                started_at: None,
                stop_signal: image.config.stop_signal.clone(),
                exit_reason: None,
                boot_id: current_boot_id(),
            })
        })();
        match result {
            Ok(()) => Ok(id),
            Err(e) => {
                let _ = self.remove_container_files(&id);
                Err(e)
            }
        }
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut record = self.load_container(id)?;
        let state = self.state_dir(id);
        let mut child = tokio::process::Command::new(&self.options.shim)
            .arg("--id")
            .arg(id)
            .arg("--bundle")
            .arg(self.container_dir(id).join("bundle"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--log")
            .arg(&record.log_path)
            .arg("--runc")
            .arg(&self.options.runc)
            .arg("--runc-root")
            .arg(&self.options.runc_root)
            .arg(format!("--log-max-bytes={}", self.options.log_max_bytes))
            .arg(format!("--log-max-files={}", self.options.log_max_files))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io_err("start", self.options.shim.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| RuntimeError::Container {
            action: "start",
            id: id.to_string(),
            message: "the shim has no stdout".into(),
        })?;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        let read = reader.read_line(&mut line);
        match tokio::time::timeout(START_TIMEOUT, read).await {
            Ok(result) => {
                result.map_err(io_err("read the report of", self.options.shim.display()))?;
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = self.runc(&["delete", "--force", id]).await;
                return Err(RuntimeError::Container {
                    action: "start",
                    id: id.to_string(),
                    message: format!("runc did not start it within {START_TIMEOUT:?}"),
                });
            }
        }
        let report: windlass_shim::state::StartReport =
            serde_json::from_str(line.trim()).map_err(|e| RuntimeError::Container {
                action: "start",
                id: id.to_string(),
                message: format!("unreadable shim report {line:?}: {e}"),
            })?;
        match report {
            windlass_shim::state::StartReport::Failed { error } => {
                let _ = child.wait().await;
                Err(RuntimeError::Container {
                    action: "start",
                    id: id.to_string(),
                    message: error,
                })
            }
            windlass_shim::state::StartReport::Started { pid, .. } => {
                record.started_at = Some(now_rfc3339());
                self.save_container(&record)?;
                tracing::debug!(container = %id, pid, "container started");
                let (tx, rx) = watch::channel(false);
                self.lock_exits().insert(id.to_string(), rx);
                let events = self.events.clone();
                let (pod_uid, container_id) = (record.pod_uid.clone(), id.to_string());
                let exits_owner = ExitNotifier {
                    tx,
                    events,
                    pod_uid,
                    container_id,
                };
                tokio::spawn(async move {
                    // The shim is our child: waiting reaps it.
                    let _ = child.wait().await;
                    exits_owner.fire();
                });
                Ok(())
            }
        }
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let record = self.load_container(id)?;
        let running = !self.wait_exit(id, Duration::ZERO).await;
        if !running {
            return Ok(());
        }
        let signal = record.stop_signal.as_deref().unwrap_or("TERM").to_string();
        let signal = signal.trim_start_matches("SIG");
        if !grace.is_zero() {
            let _ = self.runc(&["kill", id, signal]).await;
            if self.wait_exit(id, grace).await {
                return Ok(());
            }
        }
        let _ = self.runc(&["kill", id, "KILL"]).await;
        if self.wait_exit(id, Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(RuntimeError::Container {
                action: "stop",
                id: id.to_string(),
                message: "still running 10 s after SIGKILL".into(),
            })
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        if self.load_container(id).is_err() && !self.container_dir(id).exists() {
            return Ok(());
        }
        self.stop_container(id, Duration::ZERO).await.or_else(|e| {
            if matches!(e, RuntimeError::NotFound { .. }) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        self.lock_exits().remove(id);
        let out = self.runc(&["delete", "--force", id]).await?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("does not exist") && !err.contains("not exist") {
                return Err(RuntimeError::Container {
                    action: "delete",
                    id: id.to_string(),
                    message: err.trim().to_string(),
                });
            }
        }
        self.remove_container_files(id)
    }

    async fn list_containers(&self) -> Result<Vec<ContainerStatus>, RuntimeError> {
        Ok(self
            .container_records()?
            .iter_mut()
            .map(|r| self.status_of(r))
            .collect())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let mut record = self.load_container(id)?;
        Ok(self.status_of(&mut record))
    }

    async fn exec_sync(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let mut cmd = tokio::process::Command::new(&self.options.runc);
        cmd.arg("--root")
            .arg(&self.options.runc_root)
            .args(["exec", id])
            .args(command)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| RuntimeError::Container {
                action: "exec in",
                id: id.to_string(),
                message: format!("command timed out after {timeout:?}"),
            })?
            .map_err(io_err("run", self.options.runc.display()))?;
        let mut output = out.stdout;
        output.extend_from_slice(&out.stderr);
        Ok(ExecResult {
            exit_code: out.status.code().unwrap_or(-1),
            output,
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    async fn image_status(&self, reference: &str) -> Result<Option<String>, RuntimeError> {
        match self.images.resolve(reference) {
            Ok(image) => Ok(Some(image.id)),
            Err(ImageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn pull_image(&self, reference: &str) -> Result<String, RuntimeError> {
        match self.images.pull(reference, None).await {
            Ok(image) => Ok(image.id),
            Err(e) => {
                // The whole chain: an I/O error's cause is in its source.
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    message.push_str(": ");
                    message.push_str(&cause.to_string());
                    source = cause.source();
                }
                Err(RuntimeError::Pull {
                    reference: reference.to_string(),
                    message,
                })
            }
        }
    }
}

struct ExitNotifier {
    tx: watch::Sender<bool>,
    events: broadcast::Sender<RuntimeEvent>,
    pod_uid: String,
    container_id: String,
}

impl ExitNotifier {
    fn fire(self) {
        let _ = self.tx.send(true);
        let _ = self.events.send(RuntimeEvent::ContainerExited {
            pod_uid: self.pod_uid,
            container_id: self.container_id,
        });
    }
}

/// How long `runc create` + `start` may take before the start is abandoned.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
fn current_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` for the pod's containers.
fn write_pod_files(sandbox: &Sandbox) -> Result<(), RuntimeError> {
    let hostname = &sandbox.config.hostname;
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = sandbox.ip {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    let files = [
        ("hosts", hosts),
        ("hostname", format!("{hostname}\n")),
        (
            "resolv.conf",
            match &sandbox.config.dns {
                Some(dns) => dns.render(),
                None => node_resolv_conf(),
            },
        ),
    ];
    for (name, contents) in files {
        let path = sandbox.dir.join(name);
        std::fs::write(&path, contents).map_err(io_err("write", path.display()))?;
    }
    Ok(())
}

/// The node's resolver configuration for pods. A stub resolver on the node's loopback
/// (systemd-resolved's 127.0.0.53) is unreachable from a pod's network namespace, so then the
/// upstream list systemd-resolved keeps is used, as kubelet and k3s do.
pub fn node_resolv_conf() -> String {
    node_resolv_conf_at(Path::new("/etc/resolv.conf"))
}

/// [`node_resolv_conf`] from the resolver file at `path` (kubelet's `--resolv-conf`).
pub fn node_resolv_conf_at(path: &Path) -> String {
    let main = std::fs::read_to_string(path).unwrap_or_default();
    let nameservers: Vec<&str> = main
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .collect();
    let only_loopback =
        !nameservers.is_empty() && nameservers.iter().all(|n| n.starts_with("127."));
    if only_loopback
        && let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf")
    {
        return upstream;
    }
    main
}

/// RFC 3339 with nanoseconds → seconds, as the API shows container times.
fn trim_time(time: &str) -> String {
    time.parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| t.round(jiff::Unit::Second).ok())
        .map(|t| t.to_string())
        .unwrap_or_else(|| time.to_string())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, RuntimeError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RuntimeError::State {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path.display())(e)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| RuntimeError::State {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    windlass_shim::state::write_atomic(path, &bytes).map_err(|e| RuntimeError::State {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[allow(unsafe_code)]
mod pidfd {
    //! Waiting for a process that is not our child: `pidfd_open` turns readable when it exits.
    use std::os::fd::{FromRawFd, OwnedFd};

    use tokio::io::unix::AsyncFd;

    pub(super) async fn wait_exit(pid: u32) -> std::io::Result<()> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(e);
        }
        // SAFETY: the syscall returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: we own the fd and keep it open (inside the AsyncFd) while it is registered.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        let _ = fd.readable().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_seconds() {
        assert_eq!(
            trim_time("2026-12-01T21:00:00.123456789Z"),
            "2026-12-01T21:00:00Z"
        );
        assert_eq!(trim_time("garbage"), "garbage");
    }
}
