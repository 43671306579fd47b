//! The kubelet: registers the Node, renews its Lease, and runs the pods bound to it through a
//! [`runtime`] (runc under `windlass-shim`), with kubelet's cgroup layout, volumes, env, probes,
//! restarts and status.
//!
//! [`run`] wires it together: one pod worker per pod ([`pod_worker`]), fed by a watch on the
//! pods with `spec.nodeName=<node>` and by the runtime's container-exit events; a watch on its own
//! Node turns the podCIDR into the CNI network; after a restart it re-adopts the containers and
//! sandboxes it finds on disk and removes those of pods that are gone.

pub mod backoff;
pub mod cgroups;
pub mod env;
pub mod images;
pub mod node_status;
pub mod pod_worker;
pub mod probes;
pub mod runtime;
pub mod status;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};

use self::pod_worker::{Adopted, WorkerContext, WorkerHandle, WorkerMessage};
use self::runtime::cni::NetworkConfig;
use self::runtime::oci::{OciOptions, OciRuntime};
use self::runtime::{Runtime, RuntimeEvent};

/// How the kubelet is set up (the `windlass agent` flags).
#[derive(Debug, Clone)]
pub struct KubeletOptions {
    /// The Node's name.
    pub node_name: String,
    /// The node's InternalIP; the first global IPv4 address when unset.
    pub node_ip: Option<String>,
    /// State: images, sandboxes, containers, pod volumes, CNI allocations.
    pub data_dir: PathBuf,
    /// The cgroup root (`--cgroup-root`; `/` for the top).
    pub cgroup_root: String,
    /// The cgroup mount (`/sys/fs/cgroup`).
    pub cgroup_mount: PathBuf,
    /// Container logs (`/var/log/pods`).
    pub pod_log_dir: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's state root.
    pub runc_root: PathBuf,
    /// The `windlass-shim` binary.
    pub shim: PathBuf,
    /// The `windlass-cni` binary.
    pub cni_plugin: PathBuf,
    /// Where to write `10-windlass.conflist` for other runtimes, if anywhere.
    pub cni_conf_dir: Option<PathBuf>,
    /// The pod bridge.
    pub bridge: String,
    /// CrashLoopBackOff's first delay (kubelet: 10 s).
    pub backoff_base: Duration,
    /// `--pod-max-pids`.
    pub pids_limit: Option<i64>,
}

/// Errors that stop the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The runtime could not be opened.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// The cgroup tree could not be set up.
    #[error(transparent)]
    Cgroups(#[from] cgroups::CgroupError),
    /// The API server refused registration.
    #[error("failed to register node {node}")]
    Register {
        /// The node.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
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
}

/// The first global IPv4 address of this network namespace, for the Node's InternalIP.
pub fn first_ipv4() -> Option<String> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            let ip = sin.ip();
            if !ip.is_loopback() && !ip.is_link_local() && !a.interface_name.starts_with("wl0") {
                return Some(ip.to_string());
            }
        }
    }
    None
}

/// Runs the kubelet until `shutdown` resolves. Pods keep running under their shims after it
/// returns; a later run re-adopts them.
pub async fn run(
    client: Client,
    options: KubeletOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), KubeletError> {
    // Shims whose agent died are re-parented to us, not to a PID 1 that may never reap them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper");
    }
    let runtime = OciRuntime::new(OciOptions {
        data_dir: options.data_dir.clone(),
        runc: options.runc.clone(),
        runc_root: options.runc_root.clone(),
        shim: options.shim.clone(),
        log_max_bytes: 10 * 1024 * 1024,
        log_max_files: 5,
    })?;
    let adopted_shims = runtime.adopt()?;
    let runtime_version = runtime
        .version()
        .await
        .unwrap_or_else(|_| "runc://unknown".into());
    let cgroups: Arc<dyn cgroups::Cgroups> = Arc::from(cgroups::detect(
        &options.cgroup_root,
        &options.cgroup_mount,
    )?);
    cgroups.ensure_qos_tiers()?;
    let node_ip = options.node_ip.clone().or_else(first_ipv4);
    let facts = node_status::NodeFacts::read(
        &options.node_name,
        node_ip.clone(),
        &options.data_dir,
        &runtime_version,
    );
    let node = node_status::register(&client, &facts)
        .await
        .map_err(|source| KubeletError::Register {
            node: options.node_name.clone(),
            source,
        })?;
    let (network_tx, network_rx) = watch::channel(network_for(&options, &node));
    tokio::spawn(node_status::renew_lease(
        client.clone(),
        options.node_name.clone(),
    ));
    tokio::spawn(node_loop(
        client.clone(),
        facts.clone(),
        options.clone(),
        network_tx,
    ));
    let runtime: Arc<dyn Runtime> = runtime;
    let ctx = Arc::new(WorkerContext {
        client: client.clone(),
        runtime: Arc::clone(&runtime),
        cgroups: Arc::clone(&cgroups),
        volumes: Arc::new(
            volumes::VolumeManager::new(options.data_dir.join("pods"))
                .with_node_allocatable(facts.capacity),
        ),
        source: Arc::new(env::ApiSource::new(client.clone())),
        network: network_rx,
        node_ip,
        node_resources: facts.capacity,
        backoff: backoff::Backoff {
            base: options.backoff_base,
            ..Default::default()
        },
        pod_log_dir: options.pod_log_dir.clone(),
        pids_limit: options.pids_limit,
    });
    tracing::info!(node = %options.node_name, adopted_shims, runtime = %runtime_version, "kubelet started");

    // What the runtime holds, by pod uid, for the workers to adopt.
    let mut on_disk: HashMap<String, Adopted> = HashMap::new();
    for sandbox in runtime.list_pod_sandboxes().await? {
        let uid = sandbox.config.uid.clone();
        on_disk.entry(uid).or_default().sandbox = Some(sandbox);
    }
    for container in runtime.list_containers().await? {
        on_disk
            .entry(container.pod_uid.clone())
            .or_default()
            .containers
            .push(container);
    }

    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", options.node_name));
    let mut stream = watcher(pods, config).boxed();
    let mut events = runtime.subscribe();
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut finished: HashSet<String> = HashSet::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut first_list = true;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("kubelet stopping; pods keep running");
                return Ok(());
            }
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
                finished.insert(uid);
            }
            event = events.recv() => match event {
                Ok(RuntimeEvent::ContainerExited { pod_uid, container_id }) => {
                    if let Some(w) = workers.get(&pod_uid) {
                        let _ = w.tx.send(WorkerMessage::ContainerExited(container_id));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "missed container events; resyncing every pod");
                    for w in workers.values() {
                        let _ = w.tx.send(WorkerMessage::ContainerExited(String::new()));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
            },
            event = stream.next() => {
                let Some(event) = event else { continue };
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(error = %e, "pod watch failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                match event {
                    watcher::Event::Init => listed.clear(),
                    watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                        let Some(uid) = pod.metadata.uid.clone() else { continue };
                        listed.insert(uid.clone());
                        if finished.contains(&uid) {
                            continue;
                        }
                        let pod = Arc::new(pod);
                        match workers.get(&uid) {
                            Some(w) => { let _ = w.tx.send(WorkerMessage::Update(pod)); }
                            None => {
                                let adopted = on_disk.remove(&uid).unwrap_or_default();
                                let handle = pod_worker::spawn(Arc::clone(&ctx), pod, adopted);
                                let done = done_tx.clone();
                                let uid2 = uid.clone();
                                let tx = handle.tx.clone();
                                let task = tokio::spawn(async move {
                                    let _ = handle.task.await;
                                    let _ = done.send(uid2);
                                });
                                workers.insert(uid, WorkerHandle { tx, task });
                            }
                        }
                    }
                    watcher::Event::Delete(pod) => {
                        if let Some(uid) = pod.metadata.uid.as_deref()
                            && let Some(w) = workers.get(uid)
                        {
                            let _ = w.tx.send(WorkerMessage::Deleted);
                        }
                    }
                    watcher::Event::InitDone => {
                        for (uid, w) in &workers {
                            if !listed.contains(uid) {
                                let _ = w.tx.send(WorkerMessage::Deleted);
                            }
                        }
                        if first_list {
                            first_list = false;
                            let orphans: Vec<(String, Adopted)> = on_disk.drain().collect();
                            for (uid, adopted) in orphans {
                                remove_orphan(&ctx, &uid, adopted).await;
                            }
                            if let Ok(pods) = cgroups.list_pods() {
                                for (qos, uid) in pods {
                                    if !listed.contains(&uid) && !workers.contains_key(&uid) {
                                        let _ = cgroups.remove_pod(qos, &uid);
                                        let _ = ctx.volumes.teardown(&uid);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Removes what the runtime holds for a pod the API server no longer has.
async fn remove_orphan(ctx: &WorkerContext, uid: &str, adopted: Adopted) {
    tracing::info!(pod_uid = %uid, "removing the containers of a pod that no longer exists");
    for c in adopted.containers {
        if let Err(e) = ctx.runtime.remove_container(&c.id).await {
            tracing::warn!(pod_uid = %uid, container = %c.name, error = %e, "cannot remove an orphaned container");
        }
    }
    if let Some(sandbox) = adopted.sandbox
        && let Err(e) = ctx.runtime.remove_pod_sandbox(&sandbox.id).await
    {
        tracing::warn!(pod_uid = %uid, error = %e, "cannot remove an orphaned sandbox");
    }
    let _ = ctx.volumes.teardown(uid);
}

fn network_for(options: &KubeletOptions, node: &Node) -> Option<NetworkConfig> {
    let cidr = node.spec.as_ref()?.pod_cidr.clone()?;
    Some(NetworkConfig {
        name: "windlass".into(),
        plugin: options.cni_plugin.clone(),
        pod_cidr: cidr,
        bridge: options.bridge.clone(),
        mtu: 1500,
        ipam_dir: options.data_dir.join("cni"),
    })
}

/// Watches the node's own object: its podCIDR becomes the CNI network (and the conflist); status
/// is written when readiness changes and at least every minute.
async fn node_loop(
    client: Client,
    facts: node_status::NodeFacts,
    options: KubeletOptions,
    network: watch::Sender<Option<NetworkConfig>>,
) {
    let api: Api<Node> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={}", facts.name));
    let mut stream = watcher(api, config).boxed();
    let mut ticker = tokio::time::interval(node_status::STATUS_REPORT);
    let mut last_ready: Option<bool> = None;
    let mut last_status = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            event = stream.next() => match event {
                Some(Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node))) => {
                    let wanted = network_for(&options, &node);
                    if *network.borrow() != wanted {
                        if let (Some(dir), Some(net)) = (&options.cni_conf_dir, &wanted) {
                            write_conflist(dir, net);
                        }
                        network.send_replace(wanted);
                    }
                    last_status = node.status.clone();
                    if last_ready == Some(network.borrow().is_some()) {
                        continue;
                    }
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "node watch failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                None => return,
            }
        }
        let ready = network.borrow().is_some();
        match node_status::patch_status(&client, &facts, last_status.as_ref(), ready).await {
            Ok(node) => {
                last_ready = Some(ready);
                last_status = node.status;
            }
            Err(e) => tracing::warn!(node = %facts.name, error = %e, "cannot write node status"),
        }
    }
}

fn write_conflist(dir: &std::path::Path, network: &NetworkConfig) {
    let path = dir.join("10-windlass.conflist");
    let body = serde_json::to_vec_pretty(&network.conflist()).unwrap_or_default();
    let result = std::fs::create_dir_all(dir).and_then(|()| {
        windlass_shim::state::write_atomic(&path, &body).map_err(std::io::Error::other)
    });
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the CNI conflist");
    }
}
