//! The node network: routes from this node to every other node's podCIDR, and masquerade for
//! pod traffic that leaves the cluster (the CNI plugin wires pods to the local bridge; this
//! module connects the bridges of different nodes).
//!
//! [`run`] watches Nodes (a kube-runtime watcher: list, then watch, relisting on 410 Gone) and,
//! after every change, reconciles the kernel towards the desired state [`desired::desired`]
//! computes from them:
//! - [`Overlay::None`] (default): direct routing, `<peer podCIDR> via <peer InternalIP>` on the
//!   uplink, for peers on the uplink's subnet (flannel host-gw);
//! - [`Overlay::Vxlan`]: flannel's VXLAN scheme on the device `wl.vxlan` (VNI 1, port 8472); the
//!   device's MAC and the node's address are published as annotations on this node's Node
//!   ([`desired::VXLAN_MAC_ANNOTATION`], [`desired::PUBLIC_IP_ANNOTATION`]) so peers can fill
//!   their neighbour and FDB entries.
//!
//! Reconciling diffs, never rewrites: it reads the routes with windlass's route protocol and
//! the neighbour and FDB entries of `wl.vxlan` ([`netlink`]), and applies only the differences,
//! removing what belongs to nodes that are gone. Stopping the agent leaves everything in place,
//! so traffic keeps flowing while it restarts, and a restarted agent adopts what it finds.
//! [`teardown`] removes it all (`windlass reset`).

pub mod desired;
pub mod masquerade;
pub mod netlink;
pub mod nodes;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use rtnetlink::Handle;
use serde_json::json;

use self::desired::{
    Cidr, Desired, Mode, NodeInfo, PUBLIC_IP_ANNOTATION, VXLAN_MAC_ANNOTATION, format_mac,
};
use self::netlink::{Link, NetlinkError};

/// How often the kernel state is checked against the desired state even when no Node changed
/// (someone deleted a route by hand). The API is watched, not polled.
const RESYNC: Duration = Duration::from_secs(30);
/// The wait before retrying a failed reconcile.
const RETRY: Duration = Duration::from_secs(2);

/// How packets reach other nodes' pods (`windlass agent --overlay`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overlay {
    /// Direct routes via the peers' addresses: all nodes on one L2 network.
    #[default]
    None,
    /// VXLAN (flannel's scheme): nodes anywhere the underlay routes UDP 8472.
    Vxlan,
}

/// How the node network is set up (the `windlass agent` flags).
#[derive(Clone, Debug)]
pub struct NetworkOptions {
    /// This node's Node name.
    pub node_name: String,
    /// This node's address (`--node-ip`); the first global IPv4 address outside the cluster CIDR
    /// when unset.
    pub node_ip: Option<Ipv4Addr>,
    /// `--overlay`.
    pub overlay: Overlay,
    /// `--cluster-cidr`: traffic from pods to addresses outside it is masqueraded.
    pub cluster_cidr: Cidr,
}

/// Errors that stop the node network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A netlink call failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// An iptables call failed.
    #[error(transparent)]
    Masquerade(#[from] masquerade::MasqueradeError),
    /// No address to use as the node's.
    #[error("no interface holds the node IP {0}; pass --node-ip")]
    NoNodeIp(String),
    /// A blocking task panicked or was cancelled.
    #[error("the iptables task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The API server refused a request.
    #[error("failed to {what}")]
    Api {
        /// What was being done.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// The node's address and the link that holds it.
#[derive(Clone, Debug)]
struct Uplink {
    ip: Ipv4Addr,
    subnet: Cidr,
    link: Link,
}

async fn find_uplink(handle: &Handle, options: &NetworkOptions) -> Result<Uplink, NetworkError> {
    let addresses = netlink::addresses(handle).await?;
    let links = netlink::links(handle).await?;
    let chosen = match options.node_ip {
        Some(ip) => addresses.iter().find(|a| a.ip == ip),
        None => addresses.iter().find(|a| {
            !a.ip.is_loopback()
                && !a.ip.is_link_local()
                // The pod bridge's gateway address is inside the cluster CIDR. (Not a name
                // test: Wi-Fi uplinks are called wlan0 or wlp2s0.)
                && !options.cluster_cidr.contains(a.ip)
        }),
    };
    let Some(address) = chosen else {
        return Err(NetworkError::NoNodeIp(
            options
                .node_ip
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "(none found)".into()),
        ));
    };
    let link = links
        .iter()
        .find(|l| l.index == address.index)
        .cloned()
        .ok_or_else(|| NetworkError::NoNodeIp(address.ip.to_string()))?;
    Ok(Uplink {
        ip: address.ip,
        subnet: Cidr::new(address.ip, address.len).unwrap_or(Cidr {
            network: address.ip,
            len: 32,
        }),
        link,
    })
}

/// What the last reconcile did, to act only on changes.
#[derive(Default)]
struct State {
    masquerade: Option<(Cidr, Cidr)>,
    skipped: Vec<desired::Skipped>,
}

/// Runs the node network until `shutdown` resolves; the kernel state stays in place after.
pub async fn run(
    client: Client,
    options: NetworkOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetworkError> {
    let node = options.node_name.clone();
    let handle = netlink::connect()?;
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
        tracing::warn!(node = %node, error = %e, "cannot enable IPv4 forwarding; pods on other nodes are unreachable");
    }
    tokio::pin!(shutdown);
    // No address yet (DHCP, a late interface) is not fatal to the rest of the agent: wait.
    let uplink = loop {
        match find_uplink(&handle, &options).await {
            Ok(uplink) => break uplink,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "no node address yet; retrying");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(RETRY * 5) => {}
                }
            }
        }
    };
    tracing::info!(
        node = %node,
        node_ip = %uplink.ip,
        uplink = %uplink.link.name,
        overlay = ?options.overlay,
        cluster_cidr = %options.cluster_cidr,
        "node network starting"
    );
    let api: Api<Node> = Api::all(client);
    let mut events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut cache = nodes::NodeCache::default();
    let mut dirty = false;
    let mut state = State::default();
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!(node = %node, "node network stopping; routes stay in place");
                return Ok(());
            }
            event = events.next() => {
                let Some(event) = event else {
                    tracing::warn!(node = %node, "the node watch ended");
                    return Ok(());
                };
                match event {
                    Ok(event) => dirty |= cache.apply(event),
                    Err(e) => tracing::warn!(node = %node, error = %e, "node watch failed; retrying"),
                }
            }
            _ = resync.tick() => dirty = cache.listed(),
            _ = &mut retry, if dirty && cache.listed() => {}
        }
        if !(dirty && cache.listed() && retry.is_elapsed()) {
            continue;
        }
        let nodes = cache.nodes();
        match reconcile(&handle, &api, &options, &uplink, nodes, &mut state).await {
            Ok(()) => {
                dirty = false;
                tracing::debug!(node = %node, peers = nodes.len().saturating_sub(1), "node network in sync");
            }
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "node network reconcile failed; retrying");
                retry.as_mut().reset(tokio::time::Instant::now() + RETRY);
            }
        }
    }
}

/// One pass: device, annotations, routes, neighbours, FDB, masquerade.
async fn reconcile(
    handle: &Handle,
    api: &Api<Node>,
    options: &NetworkOptions,
    uplink: &Uplink,
    nodes: &BTreeMap<String, NodeInfo>,
    state: &mut State,
) -> Result<(), NetworkError> {
    let node = options.node_name.as_str();
    let me = nodes.get(node);
    let own_cidr = me.and_then(|m| m.pod_cidr);
    let mut annotations = BTreeMap::new();
    annotations.insert(PUBLIC_IP_ANNOTATION, uplink.ip.to_string());
    let mode = match options.overlay {
        Overlay::None => {
            if netlink::delete_vxlan(handle).await? {
                tracing::info!(
                    node,
                    device = netlink::VXLAN_DEVICE,
                    "removed the VXLAN device (--overlay none)"
                );
            }
            Some(Mode::Direct {
                uplink: uplink.link.index,
                subnet: uplink.subnet,
            })
        }
        Overlay::Vxlan => match own_cidr {
            // The device's address comes from the podCIDR: wait for the node IPAM controller.
            None => None,
            Some(cidr) => {
                let device =
                    netlink::ensure_vxlan(handle, &uplink.link, uplink.ip, cidr.network).await?;
                if let Some(mac) = device.mac {
                    annotations.insert(VXLAN_MAC_ANNOTATION, format_mac(&mac));
                }
                Some(Mode::Vxlan {
                    device: device.index,
                })
            }
        },
    };
    // Publish what peers need, when the Node shows something else; only once the node IPAM
    // controller has given the Node its podCIDR, so this write never races that allocation.
    if let Some(me) = me.filter(|_| own_cidr.is_some()) {
        let published = |key: &str| match key {
            VXLAN_MAC_ANNOTATION => me.vxlan_mac.map(|m| format_mac(&m)),
            _ => me.public_ip.map(|ip| ip.to_string()),
        };
        if annotations
            .iter()
            .any(|(k, v)| published(k).as_deref() != Some(v.as_str()))
        {
            api.patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
            )
            .await
            .map_err(|source| NetworkError::Api {
                what: format!("annotate node {node}"),
                source,
            })?;
            tracing::info!(node, annotations = ?annotations, "published the node's network annotations");
        }
    }
    let (want, skipped) = match mode {
        Some(mode) => desired::desired(node, nodes.values(), mode),
        None => (Desired::default(), Vec::new()),
    };
    if skipped != state.skipped {
        for s in &skipped {
            tracing::info!(node, peer = %s.node, reason = s.reason, "no route to a peer's pods");
        }
        state.skipped = skipped;
    }
    apply(handle, node, mode, &want).await?;
    if let Some(pods) = own_cidr {
        let wanted = (pods, options.cluster_cidr);
        if state.masquerade != Some(wanted) {
            let cluster = options.cluster_cidr;
            tokio::task::spawn_blocking(move || masquerade::apply(pods, cluster))
                .await
                .map_err(NetworkError::Task)??;
            tracing::info!(node, pod_cidr = %pods, cluster_cidr = %cluster, chain = masquerade::CHAIN, "masquerading pod traffic that leaves the cluster");
            state.masquerade = Some(wanted);
        }
    }
    Ok(())
}

/// Applies the differences between `want` and the kernel.
async fn apply(
    handle: &Handle,
    node: &str,
    mode: Option<Mode>,
    want: &Desired,
) -> Result<(), NetworkError> {
    // FDB and neighbours first, so a new route never points at an unresolved next hop.
    if let Some(Mode::Vxlan { device }) = mode {
        let have = netlink::fdb(handle, device).await?;
        let plain = have.iter().map(|(k, (v, _))| (*k, *v)).collect();
        let changes = desired::diff(&plain, &want.fdb);
        for (mac, dst) in &changes.put {
            netlink::put_fdb(handle, device, mac, *dst).await?;
            tracing::info!(node, mac = %format_mac(mac), dst = %dst, had = ?plain.get(mac), "installed FDB entry");
        }
        for (mac, _) in changes.remove {
            if let Some((dst, message)) = have.get(&mac) {
                netlink::del_neighbour(handle, message.clone()).await?;
                tracing::info!(node, mac = %format_mac(&mac), dst = %dst, "removed FDB entry");
            }
        }
        let have = netlink::neighbours(handle, device).await?;
        let plain = have.iter().map(|(k, (v, _))| (*k, *v)).collect();
        let changes = desired::diff(&plain, &want.neighbours);
        for (ip, mac) in &changes.put {
            netlink::put_neighbour(handle, device, *ip, mac).await?;
            tracing::info!(node, ip = %ip, mac = %format_mac(mac), "installed neighbour");
        }
        for (ip, _) in changes.remove {
            if let Some((_, message)) = have.get(&ip) {
                netlink::del_neighbour(handle, message.clone()).await?;
                tracing::info!(node, ip = %ip, "removed neighbour");
            }
        }
    }
    let have = netlink::owned_routes(handle).await?;
    let changes = desired::diff(&have, &want.routes);
    for (cidr, entry) in &changes.put {
        netlink::put_route(handle, *cidr, entry).await?;
        tracing::info!(node, destination = %cidr, gateway = %entry.gateway, oif = entry.oif, "installed route");
    }
    for (cidr, entry) in &changes.remove {
        netlink::del_route(handle, *cidr, entry).await?;
        tracing::info!(node, destination = %cidr, "removed route");
    }
    Ok(())
}

/// What [`teardown`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Whether `wl.vxlan` was there.
    pub vxlan_device: bool,
    /// How many windlass routes were left besides the device's.
    pub routes: usize,
}

/// Removes everything the node network set up in this network namespace: the VXLAN device
/// (with its neighbours and FDB entries), every route with windlass's route protocol, and the
/// masquerade chain with its jump. Idempotent; for `windlass reset`.
pub async fn teardown() -> Result<Removed, NetworkError> {
    let handle = netlink::connect()?;
    let vxlan_device = netlink::delete_vxlan(&handle).await?;
    let routes = netlink::owned_routes(&handle).await?;
    for (cidr, entry) in &routes {
        netlink::del_route(&handle, *cidr, entry).await?;
    }
    tokio::task::spawn_blocking(masquerade::remove)
        .await
        .map_err(NetworkError::Task)??;
    Ok(Removed {
        vxlan_device,
        routes: routes.len(),
    })
}
