//! The eBPF service proxy (kube-proxy's job): watches Services and EndpointSlices, works out
//! each service's frontends and backends (`desired`), and writes only the differences into the
//! pinned maps (`sync`) of the programs `datapath` loads: socket load balancing on the node's
//! cgroup v2 directory, tc on the uplink and on every pod veth. A restarted agent adopts the
//! pinned maps and links and reconciles once its first lists are in, so established flows and
//! the services themselves keep working throughout.

pub mod datapath;
pub mod desired;
pub mod dump;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod net;
pub mod sync;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};

use crate::ebpf::proxy::{Config, addr_to_map};

use datapath::{Datapath, DatapathError, POD_LINK_PREFIX, TC_FROM_POD, TC_FROM_UPLINK};
use maps::ProxyMaps;
use sync::{ServiceKey, Syncer};

/// The EndpointSlice label naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How the proxy runs on this node.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The Node's name (endpoints on it are local).
    pub node_name: String,
    /// The node's address: NodePort address, SNAT address, and how the uplink is found.
    pub node_ip: Option<Ipv4Addr>,
    /// Pins go to `<bpf_root>/<node_name>/`.
    pub bpf_root: PathBuf,
    /// The cgroup v2 directory the socket programs attach to.
    pub cgroup_dir: PathBuf,
    /// The service CIDR, which gets an unreachable route.
    pub service_cidr: (Ipv4Addr, u8),
    /// The pod bridge, whose ports get the tc program.
    pub bridge: String,
    /// Where `/metrics` is served (none: off).
    pub metrics_addr: Option<SocketAddr>,
}

impl ProxyOptions {
    /// `<bpf_root>/<node_name>`.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpf_root.join(&self.node_name)
    }
}

/// Errors that stop the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Loading or attaching the datapath failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// A map write failed.
    #[error("proxy map write failed")]
    Map(#[from] aya::maps::MapError),
    /// Netlink failed.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// The cgroup directory could not be made.
    #[error("cannot create the cgroup {path}")]
    Cgroup {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metrics listener could not bind.
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The API objects the proxy reflects, reduced to what decides the datapath.
#[derive(Debug, Default)]
struct Cache {
    node: String,
    services: HashMap<ServiceKey, desired::ServiceInfo>,
    slices: HashMap<(String, String), desired::SliceInfo>,
    slices_of: HashMap<ServiceKey, BTreeSet<String>>,
}

fn service_key(svc: &Service) -> ServiceKey {
    (svc.namespace().unwrap_or_default(), svc.name_any())
}

fn slice_id(slice: &EndpointSlice) -> (String, String) {
    (slice.namespace().unwrap_or_default(), slice.name_any())
}

impl Cache {
    fn new(node: &str) -> Self {
        Cache {
            node: node.to_string(),
            ..Default::default()
        }
    }

    fn service_info(svc: &Service) -> (ServiceKey, desired::ServiceInfo) {
        (service_key(svc), desired::ServiceInfo::new(svc))
    }

    fn slice_info(&self, slice: &EndpointSlice) -> ((String, String), desired::SliceInfo) {
        (
            slice_id(slice),
            desired::SliceInfo::new(slice, SERVICE_NAME_LABEL, &self.node),
        )
    }

    fn put_service(&mut self, svc: &Service) -> ServiceKey {
        let (key, info) = Self::service_info(svc);
        self.services.insert(key.clone(), info);
        key
    }

    fn remove_service(&mut self, svc: &Service) -> ServiceKey {
        let key = service_key(svc);
        self.services.remove(&key);
        key
    }

    /// Stores a slice; returns the services it belonged to before and after.
    fn put_slice(&mut self, id: (String, String), info: desired::SliceInfo) -> Vec<ServiceKey> {
        let mut touched = self.remove_slice_id(&id);
        if let Some(service) = &info.service {
            let owner = (id.0.clone(), service.clone());
            self.slices_of
                .entry(owner.clone())
                .or_default()
                .insert(id.1.clone());
            touched.push(owner);
        }
        self.slices.insert(id, info);
        touched
    }

    fn remove_slice_id(&mut self, id: &(String, String)) -> Vec<ServiceKey> {
        let Some(old) = self.slices.remove(id) else {
            return Vec::new();
        };
        let Some(service) = old.service else {
            return Vec::new();
        };
        let owner = (id.0.clone(), service);
        if let Some(set) = self.slices_of.get_mut(&owner) {
            set.remove(&id.1);
            if set.is_empty() {
                self.slices_of.remove(&owner);
            }
        }
        vec![owner]
    }

    fn desired(&self, key: &ServiceKey) -> Vec<desired::DesiredFrontend> {
        let Some(svc) = self.services.get(key) else {
            return Vec::new();
        };
        let slices: Vec<&desired::SliceInfo> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.get(&(key.0.clone(), name.clone())))
            .collect();
        desired::frontends(svc, &slices)
    }
}

enum Input {
    Service(Box<Result<Event<Service>, watcher::Error>>),
    Slice(Box<Result<Event<EndpointSlice>, watcher::Error>>),
    Link(net::LinkEvent),
}

/// Runs the proxy until `shutdown` resolves. The datapath stays attached afterwards (its links
/// are pinned): stopping the agent does not stop the services.
pub async fn run(
    client: Client,
    options: ProxyOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let started = Instant::now();
    let node = options.node_name.clone();
    let handle = net::connect()?;
    // Service addresses nothing translated fail here instead of leaving the node.
    let (net_addr, len) = options.service_cidr;
    net::unreachable_route(&handle, net_addr, len).await?;
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
        tracing::warn!(error = %e, "cannot enable IPv4 forwarding; NodePorts to pods may fail");
    }

    let mut datapath = Datapath::load(&options.pin_dir())?;
    let mut maps = ProxyMaps::from_datapath(&mut datapath)?;

    // Node settings: where 127.0.0.1 is a NodePort address, and the SNAT address.
    let addresses = net::addresses(&handle).await?;
    let node_ip = options.node_ip.or_else(|| {
        addresses
            .iter()
            .map(|(_, ip)| *ip)
            .find(|ip| !ip.is_loopback() && !ip.is_link_local())
    });
    maps.set_config(Config {
        host_netns_cookie: netns_cookie().unwrap_or(0),
        snat_address: node_ip.map(addr_to_map).unwrap_or(0),
        pad: 0,
    })?;
    let node_addrs: Vec<u32> = addresses
        .iter()
        .map(|(_, ip)| *ip)
        .filter(|ip| !ip.is_loopback())
        .map(addr_to_map)
        .collect();
    maps.set_node_addrs(&node_addrs)?;

    // Adopt what an earlier agent left, before anything is attached anew.
    let (frontends, leftovers) = sync::group_slots(maps.service_entries());
    let backends = maps.backend_entries();
    let adopted = frontends.len();
    let mut syncer = Syncer::adopt(maps, frontends, backends);
    for key in leftovers {
        let _ = sync::Store::delete_slot(syncer.store_mut(), key);
    }

    // Attach: socket programs, the uplink, and every pod veth there is.
    std::fs::create_dir_all(&options.cgroup_dir).map_err(|source| ProxyError::Cgroup {
        path: options.cgroup_dir.clone(),
        source,
    })?;
    datapath.attach_cgroup(&options.cgroup_dir)?;
    let links = net::links(&handle).await?;
    let uplink = node_ip.and_then(|ip| {
        let index = addresses.iter().find(|(_, a)| *a == ip).map(|(i, _)| *i)?;
        links.iter().find(|l| l.index == index).cloned()
    });
    match &uplink {
        Some(link) => {
            datapath.attach_tc(TC_FROM_UPLINK, &link.name, "tc-uplink")?;
            accept_local(&link.name);
        }
        None => tracing::warn!(
            node_ip = ?node_ip,
            "no interface holds the node IP; NodePorts from other nodes are not served"
        ),
    }
    let mut pod_links = PodLinks::new(&options.bridge);
    pod_links.reconcile(&mut datapath, &links);
    let link_events = net::link_events()?;

    let labels: metrics::Labels = Arc::new(Mutex::new(HashMap::new()));
    if let Some(addr) = options.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Metrics { addr, source })?;
        let counters = metrics::open_counters(&options.pin_dir());
        tokio::spawn(metrics::serve(listener, counters, Arc::clone(&labels)));
    }
    tracing::info!(
        node = %node,
        pin_dir = %options.pin_dir().display(),
        cgroup = %options.cgroup_dir.display(),
        uplink = ?uplink.as_ref().map(|l| l.name.clone()),
        adopted_frontends = adopted,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "service proxy attached"
    );

    let services = watcher::watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| Input::Service(Box::new(e)))
    .boxed();
    let slices = watcher::watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default().labels(SERVICE_NAME_LABEL),
    )
    .default_backoff()
    .map(|e| Input::Slice(Box::new(e)))
    .boxed();
    let mut inputs = futures::stream::select(
        futures::stream::select(services, slices),
        link_events.map(Input::Link).boxed(),
    );

    let mut cache = Cache::new(&node);
    let mut pending_services: Option<HashMap<ServiceKey, desired::ServiceInfo>> = None;
    let mut pending_slices: Option<HashMap<(String, String), desired::SliceInfo>> = None;
    let (mut services_listed, mut slices_listed, mut first_sync_done) = (false, false, false);
    let mut dirty: BTreeSet<ServiceKey> = BTreeSet::new();
    let mut retry_at: Option<tokio::time::Instant> = None;
    // Metric labels follow the maps at most once a second (rebuilding them costs as much as
    // the number of services).
    let mut labels_due: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    let mut shutdown = std::pin::pin!(shutdown.fuse());

    loop {
        let wake = match (retry_at, labels_due.filter(|_| first_sync_done)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let retry = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => futures::future::pending().await,
            }
        };
        let first = tokio::select! {
            _ = &mut shutdown => break,
            _ = retry => None,
            input = inputs.next() => match input {
                Some(input) => Some(input),
                None => break,
            },
        };
        let now = tokio::time::Instant::now();
        if retry_at.is_some_and(|at| at <= now) {
            retry_at = None;
        }
        if first_sync_done && labels_due.is_some_and(|at| at <= now) {
            labels_due = None;
            update_labels(&syncer, &labels);
        }
        // Take everything already waiting, then sync once.
        let mut batch: Vec<Input> = first.into_iter().collect();
        while let Some(Some(input)) = inputs.next().now_or_never() {
            batch.push(input);
            if batch.len() >= 4096 {
                break;
            }
        }
        for input in batch {
            match input {
                Input::Service(event) => match *event {
                    Err(e) => tracing::warn!(error = %e, "service proxy watch failed; retrying"),
                    Ok(Event::Init) => pending_services = Some(HashMap::new()),
                    Ok(Event::InitApply(svc)) => {
                        let (key, info) = Cache::service_info(&svc);
                        pending_services
                            .get_or_insert_with(HashMap::new)
                            .insert(key, info);
                    }
                    Ok(Event::InitDone) => {
                        let fresh = pending_services.take().unwrap_or_default();
                        dirty.extend(cache.services.keys().cloned());
                        dirty.extend(fresh.keys().cloned());
                        cache.services = fresh;
                        services_listed = true;
                    }
                    Ok(Event::Apply(svc)) => {
                        dirty.insert(cache.put_service(&svc));
                    }
                    Ok(Event::Delete(svc)) => {
                        dirty.insert(cache.remove_service(&svc));
                    }
                },
                Input::Slice(event) => match *event {
                    Err(e) => tracing::warn!(error = %e, "service proxy watch failed; retrying"),
                    Ok(Event::Init) => pending_slices = Some(HashMap::new()),
                    Ok(Event::InitApply(slice)) => {
                        let (id, info) = cache.slice_info(&slice);
                        pending_slices
                            .get_or_insert_with(HashMap::new)
                            .insert(id, info);
                    }
                    Ok(Event::InitDone) => {
                        let fresh = pending_slices.take().unwrap_or_default();
                        dirty.extend(cache.slices_of.keys().cloned());
                        cache.slices.clear();
                        cache.slices_of.clear();
                        for (id, info) in fresh {
                            dirty.extend(cache.put_slice(id, info));
                        }
                        slices_listed = true;
                    }
                    Ok(Event::Apply(slice)) => {
                        let (id, info) = cache.slice_info(&slice);
                        dirty.extend(cache.put_slice(id, info));
                    }
                    Ok(Event::Delete(slice)) => {
                        dirty.extend(cache.remove_slice_id(&slice_id(&slice)))
                    }
                },
                Input::Link(event) => pod_links.on_event(&mut datapath, event),
            }
        }
        // Nothing is written until both lists are complete: a half-known world would delete
        // services that are fine.
        if !(services_listed && slices_listed) || dirty.is_empty() {
            continue;
        }
        let sync_started = Instant::now();
        let result = if first_sync_done {
            sync_dirty(&mut syncer, &cache, &mut dirty)
        } else {
            let all: Vec<(ServiceKey, Vec<desired::DesiredFrontend>)> = cache
                .services
                .keys()
                .map(|k| (k.clone(), cache.desired(k)))
                .collect();
            let count = all.len();
            let r = syncer.sync_all(all).map(|c| c.writes);
            if r.is_ok() {
                dirty.clear();
                first_sync_done = true;
                tracing::info!(
                    services = count,
                    frontends = syncer.frontend_count(),
                    elapsed_ms = sync_started.elapsed().as_millis() as u64,
                    "service proxy in sync"
                );
            }
            r
        };
        match result {
            Ok(writes) => {
                if writes > 0 {
                    tracing::debug!(
                        writes,
                        elapsed_us = sync_started.elapsed().as_micros() as u64,
                        "service proxy maps updated"
                    );
                    labels_due.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(1));
                    purge_affinity(&mut syncer);
                    let gone = syncer.take_released();
                    let flows = syncer.store_mut().purge_udp_flows(&gone);
                    if flows > 0 {
                        tracing::debug!(flows, "UDP flows to removed backends forgotten");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "service proxy map write failed; retrying in 1 s");
                retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            }
        }
    }
    tracing::info!(node = %node, "service proxy stopped; the datapath stays attached");
    Ok(())
}

/// Syncs the dirty services one by one; those that fail stay dirty.
fn sync_dirty(
    syncer: &mut Syncer<ProxyMaps>,
    cache: &Cache,
    dirty: &mut BTreeSet<ServiceKey>,
) -> Result<usize, aya::maps::MapError> {
    let mut writes = 0;
    while let Some(key) = dirty.pop_first() {
        let desired = cache.desired(&key);
        match syncer.sync_service(key.clone(), desired) {
            Ok(c) => writes += c.writes,
            Err(e) => {
                tracing::warn!(svc = %format!("{}/{}", key.0, key.1), error = %e, "service sync failed");
                dirty.insert(key);
                return Err(e);
            }
        }
    }
    Ok(writes)
}

fn update_labels(syncer: &Syncer<ProxyMaps>, labels: &metrics::Labels) {
    let mains = syncer.main_frontends();
    let fresh: HashMap<u16, metrics::Label> = syncer
        .service_ports()
        .iter()
        .map(|(id, port)| {
            (
                *id,
                metrics::Label {
                    namespace: port.namespace.clone(),
                    service: port.name.clone(),
                    port: port.port.clone(),
                    protocol: port.proto.as_str().to_string(),
                    frontend: mains.get(id).cloned().unwrap_or_default(),
                },
            )
        })
        .collect();
    if let Ok(mut l) = labels.lock() {
        *l = fresh;
    }
}

fn purge_affinity(syncer: &mut Syncer<ProxyMaps>) {
    if syncer.store().affinity_is_empty() {
        return;
    }
    let live: std::collections::HashSet<(u16, u32)> = syncer.service_backend_pairs();
    syncer
        .store_mut()
        .purge_affinity(|service_id, backend_id| live.contains(&(service_id, backend_id)));
}

/// The pod veths (ports of the bridge) with the tc program, by name.
#[derive(Debug)]
struct PodLinks {
    bridge: String,
    bridge_index: Option<u32>,
    attached: BTreeSet<String>,
}

impl PodLinks {
    fn new(bridge: &str) -> Self {
        PodLinks {
            bridge: bridge.to_string(),
            bridge_index: None,
            attached: BTreeSet::new(),
        }
    }

    /// Attaches to every port of the bridge and drops pins of veths that are gone.
    fn reconcile(&mut self, datapath: &mut Datapath, links: &[net::Link]) {
        self.bridge_index = links
            .iter()
            .find(|l| l.name == self.bridge)
            .map(|l| l.index);
        if self.bridge_index.is_some() {
            accept_local(&self.bridge);
        }
        let ports: BTreeSet<String> = links
            .iter()
            .filter(|l| l.master.is_some() && l.master == self.bridge_index)
            .map(|l| l.name.clone())
            .collect();
        for name in &ports {
            self.attach(datapath, name);
        }
        for pin in datapath.pinned_links() {
            if let Some(name) = pin.strip_prefix(POD_LINK_PREFIX)
                && !ports.contains(name)
            {
                datapath.unpin(&pin);
            }
        }
    }

    fn attach(&mut self, datapath: &mut Datapath, name: &str) {
        match datapath.attach_tc(TC_FROM_POD, name, &format!("{POD_LINK_PREFIX}{name}")) {
            Ok(()) => {
                tracing::debug!(link = %name, "tc attached to pod veth");
                self.attached.insert(name.to_string());
            }
            Err(e) => tracing::warn!(link = %name, error = %e, "cannot attach tc to pod veth"),
        }
    }

    fn on_event(&mut self, datapath: &mut Datapath, event: net::LinkEvent) {
        match event {
            net::LinkEvent::Up(link) => {
                if link.name == self.bridge && self.bridge_index != Some(link.index) {
                    self.bridge_index = Some(link.index);
                    accept_local(&self.bridge);
                }
                let on_bridge = link.master.is_some() && link.master == self.bridge_index;
                if on_bridge && !self.attached.contains(&link.name) {
                    self.attach(datapath, &link.name);
                }
            }
            net::LinkEvent::Gone(link) => {
                tracing::debug!(link = %link.name, index = link.index, "link gone");
                if self.attached.remove(&link.name) {
                    datapath.unpin(&format!("{POD_LINK_PREFIX}{}", link.name));
                }
            }
        }
    }
}

/// Lets `dev` take packets whose source is a node address: a NodePort reply translated back on
/// a pod veth (or on the uplink, for SNATed flows) carries the node's address as its source
/// when the stack routes it.
fn accept_local(dev: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{dev}/accept_local");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::warn!(link = %dev, error = %e, "cannot set accept_local; NodePort replies may be dropped");
    }
}

/// The cookie of this thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14+).
#[allow(unsafe_code)]
fn netns_cookie() -> Option<u64> {
    use std::os::fd::AsRawFd;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a valid u64 we own, and the
    // descriptor stays open for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}
