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
pub mod dir_watch;
pub mod env;
pub mod events;
pub mod images;
pub mod node_status;
pub mod pod_worker;
pub mod probes;
pub mod quantity;
pub mod runtime;
pub mod server;
pub mod static_pods;
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
use self::runtime::cri::{CriOptions, CriRuntime};
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
    /// `--manifest-dir`: static pod manifests, run with or without an API server.
    pub manifest_dir: Option<PathBuf>,
    /// `--runtime`: which container runtime runs the pods.
    pub runtime: RuntimeChoice,
    /// `--kubelet-port`: the kubelet HTTPS server's port (10250); 0 serves nothing.
    pub kubelet_port: u16,
    /// The CA certificates (DER) whose client certificates the kubelet server accepts: the
    /// cluster CA from the kubeconfig's certificate-authority-data.
    pub client_ca: Vec<Vec<u8>>,
    /// `--cluster-dns`, `--cluster-domain`: what pods with dnsPolicy ClusterFirst resolve with.
    pub cluster_dns: crate::node::dns::resolv_conf::ClusterDns,
    /// `--resolv-conf`: the node's resolver file, the pods' host DNS (`/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
}

/// Which container runtime the kubelet drives (`windlass agent --runtime`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// runc under `windlass-shim` ([`runtime::oci`]).
    #[default]
    Oci,
    /// containerd's CRI plugin over its socket ([`runtime::cri`]); containerd does CNI itself
    /// from the conf dir the kubelet writes the conflist into (`cni_conf_dir`).
    Cri {
        /// The CRI socket (`/run/containerd/containerd.sock`).
        endpoint: PathBuf,
    },
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
    // --- runtime choice: oci (runc under windlass-shim) or cri (containerd) ---
    let cgroups: Arc<dyn cgroups::Cgroups> = Arc::from(cgroups::detect(
        &options.cgroup_root,
        &options.cgroup_mount,
    )?);
    cgroups.ensure_qos_tiers()?;
    // Exit events are subscribed to before adoption starts watching shims, so none is lost.
    let (runtime, adopted_shims, mut events): (Arc<dyn Runtime>, usize, _) = match &options.runtime
    {
        RuntimeChoice::Oci => {
            let runtime = OciRuntime::new(OciOptions {
                data_dir: options.data_dir.clone(),
                runc: options.runc.clone(),
                runc_root: options.runc_root.clone(),
                shim: options.shim.clone(),
                log_max_bytes: 10 * 1024 * 1024,
                log_max_files: 5,
                cgroups: Arc::clone(&cgroups),
            })?;
            let events = runtime.subscribe();
            let adopted_shims = runtime.adopt().await?;
            (runtime, adopted_shims, events)
        }
        RuntimeChoice::Cri { endpoint } => {
            let runtime = CriRuntime::connect(CriOptions {
                endpoint: endpoint.clone(),
            })
            .await?;
            let events = runtime.subscribe();
            (runtime, 0, events)
        }
    };
    let runtime_version = runtime
        .version()
        .await
        .unwrap_or_else(|_| "runc://unknown".into());
    // --- end runtime choice ---
    let node_ip = options.node_ip.clone().or_else(first_ipv4);
    let facts = node_status::NodeFacts::read(
        &options.node_name,
        node_ip.clone(),
        &options.data_dir,
        &runtime_version,
    )
    .with_kubelet_port(options.kubelet_port);
    // The API side (registration, lease, node status, the pod watch) starts once the API server
    // answers; static pods from the manifest dir run before that, and without it.
    let (network_tx, network_rx) = watch::channel(None);
    let mut network_tx = Some(network_tx);
    // The pods bound here as the API shows them, for the kubelet server (fed by the one pod
    // watch below).
    let (api_pods_tx, api_pods_rx) = watch::channel(Vec::new());
    let mut api_pods: std::collections::BTreeMap<String, Pod> = Default::default();
    let mut fresh_pods: std::collections::BTreeMap<String, Pod> = Default::default();
    // --- kubelet HTTPS server (server.rs): /healthz, /pods, /containerLogs ---
    if options.kubelet_port != 0 {
        tokio::spawn(server::run(
            server::ServerOptions {
                node_name: options.node_name.clone(),
                node_ip: node_ip.clone(),
                port: options.kubelet_port,
                pod_log_dir: options.pod_log_dir.clone(),
                client_ca: options.client_ca.clone(),
            },
            api_pods_rx,
        ));
    }
    // --- end kubelet HTTPS server ---
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
        cluster_dns: options.cluster_dns.clone(),
        resolv_conf: options.resolv_conf.clone(),
        events: events::EventRecorder::start(client.clone(), options.node_name.clone()),
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

    let mut pods = Pods {
        ctx: Arc::clone(&ctx),
        workers: HashMap::new(),
        finished: HashSet::new(),
        on_disk,
        done: mpsc::unbounded_channel(),
        statics: HashMap::new(),
        mirrors: HashMap::new(),
        node: options.node_name.clone(),
        node_uid: None,
    };
    if let Some(dir) = &options.manifest_dir
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the manifest dir");
    }
    let manifest_watch = options
        .manifest_dir
        .as_deref()
        .and_then(dir_watch::DirWatch::new);
    if let Some(dir) = &options.manifest_dir {
        pods.sync_static(dir).await;
    }

    let mut registration = std::pin::pin!(register_until_done(client.clone(), facts.clone()));
    let mut registered = false;
    let mut stream: futures::stream::BoxStream<
        'static,
        Result<watcher::Event<Pod>, watcher::Error>,
    > = futures::stream::pending().boxed();
    let mut listed: HashSet<String> = HashSet::new();
    let mut first_list = true;
    let mut mirror_retry = tokio::time::interval(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("kubelet stopping; pods keep running");
                return Ok(());
            }
            node = &mut registration, if !registered => {
                registered = true;
                pods.node_uid = node.metadata.uid.clone();
                let network = network_for(&options, &node);
                // node_loop writes the conflist only when the podCIDR changes, and a node that
                // already has one (a restart, a new containerd) must still find it.
                if let (Some(dir), Some(network)) = (&options.cni_conf_dir, network.as_ref()) {
                    write_conflist(dir, network);
                }
                if let Some(tx) = network_tx.take() {
                    tx.send_replace(network);
                    tokio::spawn(node_loop(client.clone(), facts.clone(), options.clone(), tx));
                }
                tokio::spawn(node_status::renew_lease(client.clone(), options.node_name.clone()));
                let api: Api<Pod> = Api::all(client.clone());
                let config = watcher::Config::default()
                    .fields(&format!("spec.nodeName={}", options.node_name));
                stream = watcher(api, config).boxed();
            }
            Some(uid) = pods.done.1.recv() => {
                pods.workers.remove(&uid);
                if let Some(static_pod) = pods.statics.get(&uid) {
                    // Its manifest came back while the old pod was stopping: run it again.
                    let pod = Arc::new(static_pod.pod.clone());
                    pods.apply(uid, pod);
                } else {
                    pods.finished.insert(uid);
                }
            }
            _ = dir_watch::changed(manifest_watch.as_ref()), if manifest_watch.is_some() => {
                if let Some(dir) = &options.manifest_dir {
                    pods.sync_static(dir).await;
                }
            }
            _ = mirror_retry.tick(), if registered => pods.ensure_mirrors().await,
            event = events.recv() => match event {
                Ok(RuntimeEvent::ContainerExited { pod_uid, container_id }) => {
                    if let Some(w) = pods.workers.get(&pod_uid) {
                        let _ = w.tx.send(WorkerMessage::ContainerExited(container_id));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "missed container events; resyncing every pod");
                    for w in pods.workers.values() {
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
                match &event {
                    watcher::Event::Init => fresh_pods.clear(),
                    watcher::Event::InitApply(pod) => {
                        fresh_pods.insert(pod.metadata.uid.clone().unwrap_or_default(), pod.clone());
                    }
                    watcher::Event::InitDone => api_pods = std::mem::take(&mut fresh_pods),
                    watcher::Event::Apply(pod) => {
                        api_pods.insert(pod.metadata.uid.clone().unwrap_or_default(), pod.clone());
                    }
                    watcher::Event::Delete(pod) => {
                        api_pods.remove(pod.metadata.uid.as_deref().unwrap_or_default());
                    }
                }
                if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                    api_pods_tx.send_replace(api_pods.values().cloned().collect());
                }
                match event {
                    watcher::Event::Init => listed.clear(),
                    watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                        if static_pods::is_mirror(&pod) {
                            pods.mirror_seen(pod).await;
                            continue;
                        }
                        let Some(uid) = pod.metadata.uid.clone() else { continue };
                        listed.insert(uid.clone());
                        pods.apply(uid, Arc::new(pod));
                    }
                    watcher::Event::Delete(pod) => {
                        if static_pods::is_mirror(&pod) {
                            pods.mirror_gone(&pod);
                            continue;
                        }
                        if let Some(uid) = pod.metadata.uid.as_deref()
                            && let Some(w) = pods.workers.get(uid)
                        {
                            let _ = w.tx.send(WorkerMessage::Deleted);
                        }
                    }
                    watcher::Event::InitDone => {
                        for (uid, w) in &pods.workers {
                            if !listed.contains(uid) && !pods.statics.contains_key(uid) {
                                let _ = w.tx.send(WorkerMessage::Deleted);
                            }
                        }
                        pods.ensure_mirrors().await;
                        if first_list {
                            first_list = false;
                            let orphans: Vec<(String, Adopted)> = pods.on_disk.drain().collect();
                            for (uid, adopted) in orphans {
                                remove_orphan(&ctx, &uid, adopted).await;
                            }
                            if let Ok(list) = cgroups.list_pods() {
                                for (qos, uid) in list {
                                    if !listed.contains(&uid) && !pods.workers.contains_key(&uid) {
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

/// Registers the Node, retrying until the API server answers.
async fn register_until_done(client: Client, facts: node_status::NodeFacts) -> Node {
    let mut delay = Duration::from_millis(200);
    loop {
        match node_status::register(&client, &facts).await {
            Ok(node) => return node,
            Err(e) => {
                tracing::warn!(node = %facts.name, error = %e, "cannot register the node yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The pod workers, by pod uid (a static pod's uid is its hash), and the static pods' mirrors.
struct Pods {
    ctx: Arc<WorkerContext>,
    workers: HashMap<String, WorkerHandle>,
    /// Pods whose worker ended (removed); a late event must not start them again.
    finished: HashSet<String>,
    on_disk: HashMap<String, Adopted>,
    done: (
        mpsc::UnboundedSender<String>,
        mpsc::UnboundedReceiver<String>,
    ),
    /// Static pods by hash.
    statics: HashMap<String, static_pods::StaticPod>,
    /// Mirror pod uid by static pod hash.
    mirrors: HashMap<String, String>,
    node: String,
    node_uid: Option<String>,
}

impl Pods {
    /// Starts a worker for a pod, or hands it the newer object.
    fn apply(&mut self, uid: String, pod: Arc<Pod>) {
        if self.finished.contains(&uid) {
            return;
        }
        match self.workers.get(&uid) {
            Some(w) => {
                let _ = w.tx.send(WorkerMessage::Update(pod));
            }
            None => {
                let adopted = self.on_disk.remove(&uid).unwrap_or_default();
                let handle = pod_worker::spawn(Arc::clone(&self.ctx), pod, adopted);
                let done = self.done.0.clone();
                let key = uid.clone();
                let tx = handle.tx.clone();
                let task = tokio::spawn(async move {
                    let _ = handle.task.await;
                    let _ = done.send(key);
                });
                self.workers.insert(uid, WorkerHandle { tx, task });
            }
        }
    }

    /// Re-reads the manifest dir: new manifests start, removed or edited ones stop.
    async fn sync_static(&mut self, dir: &std::path::Path) {
        let (found, errors) = static_pods::read_dir(dir, &self.node);
        let mut wanted: HashMap<String, static_pods::StaticPod> = found
            .into_iter()
            .map(|p| (p.hash().to_string(), p))
            .collect();
        for e in errors {
            tracing::warn!(error = %e, "skipping a static pod manifest");
            // A file caught half-written (or broken by an edit) keeps the pod it had.
            for (hash, pod) in &self.statics {
                if e.path() == pod.path.as_path() {
                    wanted.insert(hash.clone(), pod.clone());
                }
            }
        }
        let gone: Vec<String> = self
            .statics
            .keys()
            .filter(|h| !wanted.contains_key(*h))
            .cloned()
            .collect();
        for hash in gone {
            self.statics.remove(&hash);
            tracing::info!(pod_uid = %hash, "static pod manifest removed; stopping the pod");
            if let Some(w) = self.workers.get(&hash) {
                let _ = w.tx.send(WorkerMessage::Deleted);
            }
        }
        for (hash, pod) in wanted {
            if self.statics.contains_key(&hash) {
                continue;
            }
            tracing::info!(pod = ?pod.pod.metadata.name, path = %pod.path.display(), "static pod");
            self.finished.remove(&hash);
            self.apply(hash.clone(), Arc::new(pod.pod.clone()));
            if let Some(uid) = self.mirrors.get(&hash)
                && let Some(w) = self.workers.get(&hash)
            {
                let _ = w.tx.send(WorkerMessage::Mirror(Some(uid.clone())));
            }
            self.statics.insert(hash, pod);
        }
        self.ensure_mirrors().await;
    }

    /// Creates the mirror pods that are missing (the API server may not have answered before).
    async fn ensure_mirrors(&mut self) {
        if self.node_uid.is_none() {
            return;
        }
        let missing: Vec<String> = self
            .statics
            .keys()
            .filter(|h| !self.mirrors.contains_key(*h))
            .cloned()
            .collect();
        for hash in missing {
            let Some(static_pod) = self.statics.get(&hash) else {
                continue;
            };
            let mirror = static_pods::mirror(static_pod, &self.node, self.node_uid.as_deref());
            let namespace = mirror.metadata.namespace.clone().unwrap_or_default();
            let name = mirror.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &namespace);
            match api.create(&Default::default(), &mirror).await {
                Ok(created) => {
                    if let Some(uid) = created.metadata.uid {
                        self.mirror_known(&hash, uid);
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // A mirror of an older version of this manifest (or of nothing) holds the
                    // name: it goes, and the next round creates ours.
                    if let Ok(existing) = api.get(&name).await {
                        if static_pods::mirror_hash(&existing) == Some(hash.as_str()) {
                            if let Some(uid) = existing.metadata.uid {
                                self.mirror_known(&hash, uid);
                            }
                        } else {
                            delete_now(&api, &existing).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "cannot create the mirror pod; retrying")
                }
            }
        }
    }

    fn mirror_known(&mut self, hash: &str, uid: String) {
        if self.mirrors.get(hash) != Some(&uid) {
            if let Some(w) = self.workers.get(hash) {
                let _ = w.tx.send(WorkerMessage::Mirror(Some(uid.clone())));
            }
            self.mirrors.insert(hash.to_string(), uid);
        }
    }

    /// A mirror pod event: ours is recorded; one for no current manifest is deleted; a mirror
    /// someone deleted is created again (kubelet's behaviour).
    async fn mirror_seen(&mut self, pod: Pod) {
        let Some(hash) = static_pods::mirror_hash(&pod).map(str::to_string) else {
            return;
        };
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        if !self.statics.contains_key(&hash) || pod.metadata.deletion_timestamp.is_some() {
            if !self.statics.contains_key(&hash) && self.workers.contains_key(&hash) {
                // Its static pod is still stopping; the worker removes the mirror at the end.
                return;
            }
            delete_now(&api, &pod).await;
            self.mirrors.remove(&hash);
            return;
        }
        if let Some(uid) = pod.metadata.uid {
            self.mirror_known(&hash, uid);
        }
    }

    fn mirror_gone(&mut self, pod: &Pod) {
        if let Some(hash) = static_pods::mirror_hash(pod)
            && self.mirrors.get(hash) == pod.metadata.uid.as_ref()
        {
            self.mirrors.remove(hash);
            if let Some(w) = self.workers.get(hash) {
                let _ = w.tx.send(WorkerMessage::Mirror(None));
            }
        }
    }
}

/// Deletes a pod object at once (grace 0, this uid only).
async fn delete_now(api: &Api<Pod>, pod: &Pod) {
    let params = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    if let Err(e) = api.delete(&name, &params).await {
        tracing::debug!(pod = %name, error = %e, "cannot delete a mirror pod");
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
