//! Multi-node topologies in network namespaces.
//!
//! ```text
//!   fabric ns:  bridge <p>br ── <p>f0 ─┐        ┌─ <p>f1 ...
//!                                      │ veth   │
//!   node ns <p>-n0:  uplink <p>n0 192.0.2.1/24   (ip_forward=1, no default route)
//!                     └─ <p>n0p0 (10.244.0.1/32) ── veth ── pod ns <p>-n0-p0: eth0 10.244.0.2/32
//! ```
//! Node `i` has pod CIDR `10.244.i.0/24`, gateway `10.244.i.1` on every host-side veth, pods at
//! `.2`, `.3`, ... with a default route to the gateway. Nodes get no routes to each other's pod
//! CIDRs: tests install those ([`Topology::route_pod_cidrs`] or [`Node::add_route`]). Dropping the
//! topology (also while unwinding from a panic) removes every namespace, and with them every link.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Output};

use windlass_cni::netlink::{self, Route};
use windlass_cni::netns::{NetNs, NetNsError};

use crate::{HarnessError, io_err, prefix, prereq};

/// Underlay network of the fabric (TEST-NET-1).
pub const UNDERLAY: (Ipv4Addr, u8) = (Ipv4Addr::new(192, 0, 2, 0), 24);
/// The fabric bridge's own address ([`Topology::fabric_address`]), for a test API server.
pub const FABRIC_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// Name of the pod-side interface in every pod namespace.
pub const POD_IFACE: &str = "eth0";

/// Builds a [`Topology`].
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    nodes: usize,
    pods_per_node: usize,
}

/// A node: a network namespace with an uplink on the fabric and host-side pod veths.
#[derive(Debug)]
pub struct Node {
    /// The node's namespace (`<prefix>-n<i>`).
    pub ns: NetNs,
    /// Index in the topology.
    pub index: usize,
    /// Name of the uplink inside the node namespace (`<prefix>n<i>`).
    pub uplink: String,
    /// Address on the underlay, `192.0.2.<i+1>`.
    pub underlay_ip: Ipv4Addr,
    /// The node's pod CIDR, `10.244.<i>.0/24`.
    pub pod_cidr: (Ipv4Addr, u8),
    /// The pods' gateway, `10.244.<i>.1`, on every host-side veth.
    pub gateway: Ipv4Addr,
}

/// A pod: a network namespace behind a veth on its node.
#[derive(Debug)]
pub struct Pod {
    /// The pod's namespace (`<prefix>-n<i>-p<j>`).
    pub ns: NetNs,
    /// Index of the node it lives on.
    pub node: usize,
    /// The pod's address on `eth0`.
    pub ip: Ipv4Addr,
    /// Host-side veth name inside the node namespace (`<prefix>n<i>p<j>`).
    pub host_veth: String,
}

/// Nodes and pods in namespaces joined by a fabric bridge; everything is removed on drop.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: pods, then nodes, then the fabric.
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    fabric: NetNs,
    prefix: String,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        TopologyBuilder {
            nodes: 1,
            pods_per_node: 0,
        }
    }
}

impl TopologyBuilder {
    /// How many nodes (1..=250).
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// How many pods on each node (0..=250).
    pub fn pods_per_node(mut self, pods: usize) -> Self {
        self.pods_per_node = pods;
        self
    }

    /// Creates everything; on any failure what was created so far is removed again.
    pub fn build(self) -> Result<Topology, HarnessError> {
        prereq::require_root();
        if !(1..=250).contains(&self.nodes) || self.pods_per_node > 250 {
            return Err(HarnessError::Setup(format!(
                "unsupported topology size: {} nodes, {} pods per node",
                self.nodes, self.pods_per_node
            )));
        }
        // The fabric is created first; a name clash with another test means a new prefix.
        let (prefix, fabric) = create_fabric()?;
        let mut topology = Topology {
            pods: Vec::new(),
            nodes: Vec::new(),
            fabric,
            prefix,
        };
        for i in 0..self.nodes {
            let node = topology.add_node(i)?;
            topology.nodes.push(node);
        }
        for i in 0..self.nodes {
            for j in 0..self.pods_per_node {
                let pod = topology.add_pod(i, j)?;
                topology.pods.push(pod);
            }
        }
        Ok(topology)
    }
}

fn create_fabric() -> Result<(String, NetNs), HarnessError> {
    for _ in 0..8 {
        let prefix = prefix::unique();
        let fabric = match NetNs::create(&format!("{prefix}-fabric")) {
            Ok(ns) => ns,
            Err(NetNsError::Exists(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let bridge = format!("{prefix}br");
        fabric.run(|| {
            netlink::block_on(|nl| async move {
                nl.set_up("lo").await?;
                nl.add_bridge(&bridge).await?;
                nl.set_up(&bridge).await
            })
        })??;
        return Ok((prefix, fabric));
    }
    Err(HarnessError::Setup(
        "could not find an unused test prefix".into(),
    ))
}

impl Topology {
    /// Starts a builder (one node, no pods).
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// This topology's name prefix (`wlt` + 5 hex digits).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The fabric namespace holding the underlay bridge.
    pub fn fabric(&self) -> &NetNs {
        &self.fabric
    }

    /// Gives the fabric bridge [`FABRIC_IP`]`/24`, so a process in the fabric namespace (a test
    /// API server) and every node reach each other on the underlay; returns the address.
    pub fn fabric_address(&self) -> Result<Ipv4Addr, HarnessError> {
        let bridge = format!("{}br", self.prefix);
        let has = self.fabric.run(|| {
            netlink::block_on(|nl| async move {
                let index = nl.link_index(&bridge).await?;
                nl.ipv4_addresses(index).await
            })
        })??;
        if !has.iter().any(|(ip, _)| *ip == FABRIC_IP) {
            let bridge = format!("{}br", self.prefix);
            self.fabric.run(|| {
                netlink::block_on(|nl| async move {
                    nl.add_address(&bridge, IpAddr::V4(FABRIC_IP), UNDERLAY.1)
                        .await
                })
            })??;
        }
        Ok(FABRIC_IP)
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Pod `j` on node `i`.
    pub fn pod(&self, node: usize, j: usize) -> &Pod {
        self.pods
            .iter()
            .filter(|p| p.node == node)
            .nth(j)
            .unwrap_or_else(|| panic!("no pod {j} on node {node}"))
    }

    /// Names of every namespace of this topology.
    pub fn namespace_names(&self) -> Vec<String> {
        let pods = self.pods.iter().map(|p| p.ns.name().to_string());
        let nodes = self.nodes.iter().map(|n| n.ns.name().to_string());
        pods.chain(nodes)
            .chain(std::iter::once(self.fabric.name().to_string()))
            .collect()
    }

    /// Installs on every node a route to every other node's pod CIDR via that node's underlay
    /// address (direct routing, all nodes on one L2).
    pub fn route_pod_cidrs(&self) -> Result<(), HarnessError> {
        for node in &self.nodes {
            for peer in self.nodes.iter().filter(|p| p.index != node.index) {
                node.add_route(Route {
                    destination: peer.pod_cidr.0,
                    prefix_len: peer.pod_cidr.1,
                    gateway: Some(peer.underlay_ip),
                    device: None,
                })?;
            }
        }
        Ok(())
    }

    fn add_node(&self, i: usize) -> Result<Node, HarnessError> {
        let p = &self.prefix;
        let ns = NetNs::create(&format!("{p}-n{i}"))?;
        let index = u8::try_from(i).map_err(|_| HarnessError::Setup("too many nodes".into()))?;
        let node = Node {
            index: i,
            uplink: format!("{p}n{i}"),
            underlay_ip: Ipv4Addr::new(192, 0, 2, index + 1),
            pod_cidr: (Ipv4Addr::new(10, 244, index, 0), 24),
            gateway: Ipv4Addr::new(10, 244, index, 1),
            ns,
        };
        let fabric_port = format!("{p}f{i}");
        let bridge = format!("{p}br");
        let node_file: File = node.ns.file()?;
        let (uplink, underlay_ip) = (node.uplink.as_str(), node.underlay_ip);
        self.fabric.run(|| {
            netlink::block_on(|nl| async move {
                nl.add_veth(&fabric_port, uplink, Some(&node_file)).await?;
                nl.set_controller(&fabric_port, &bridge).await?;
                nl.set_up(&fabric_port).await
            })
        })??;
        node.ns.run(|| {
            netlink::block_on(|nl| async move {
                nl.set_up("lo").await?;
                nl.set_up(uplink).await?;
                nl.add_address(uplink, IpAddr::V4(underlay_ip), UNDERLAY.1)
                    .await
            })
        })??;
        node.ns.sysctl("net/ipv4/ip_forward", "1")?;
        Ok(node)
    }

    fn add_pod(&self, i: usize, j: usize) -> Result<Pod, HarnessError> {
        let p = &self.prefix;
        let node = &self.nodes[i];
        let host = u8::try_from(j + 2).map_err(|_| HarnessError::Setup("too many pods".into()))?;
        let [a, b, c, _] = node.pod_cidr.0.octets();
        let pod = Pod {
            ns: NetNs::create(&format!("{p}-n{i}-p{j}"))?,
            node: i,
            ip: Ipv4Addr::new(a, b, c, host),
            host_veth: format!("{p}n{i}p{j}"),
        };
        let pod_file = pod.ns.file()?;
        let (host_veth, pod_ip, gateway) = (pod.host_veth.as_str(), pod.ip, node.gateway);
        node.ns.run(|| {
            netlink::block_on(|nl| async move {
                nl.add_veth(host_veth, POD_IFACE, Some(&pod_file)).await?;
                nl.set_up(host_veth).await?;
                nl.add_address(host_veth, IpAddr::V4(gateway), 32).await?;
                nl.add_route(&Route {
                    destination: pod_ip,
                    prefix_len: 32,
                    gateway: None,
                    device: Some(host_veth.to_string()),
                })
                .await
            })
        })??;
        pod.ns.run(|| {
            netlink::block_on(|nl| async move {
                nl.set_up("lo").await?;
                nl.set_up(POD_IFACE).await?;
                nl.add_address(POD_IFACE, IpAddr::V4(pod_ip), 32).await?;
                nl.add_route(&Route {
                    destination: gateway,
                    prefix_len: 32,
                    gateway: None,
                    device: Some(POD_IFACE.to_string()),
                })
                .await?;
                nl.add_route(&Route {
                    destination: Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0,
                    gateway: Some(gateway),
                    device: Some(POD_IFACE.to_string()),
                })
                .await
            })
        })??;
        Ok(pod)
    }
}

impl Node {
    /// Runs `program args...` in this node's network namespace, in the test's own cgroup (outside
    /// any agent's subtree, so no socket hook applies: a client "from another machine"), and
    /// waits for it.
    pub fn output(&self, program: &Path, args: &[&str]) -> Result<Output, HarnessError> {
        let mut command = Command::new(program);
        command.args(args);
        self.ns
            .run(|| command.output())?
            .map_err(io_err("run in the node namespace", program.display()))
    }

    /// Installs a route in this node's main table.
    pub fn add_route(&self, route: Route) -> Result<(), HarnessError> {
        self.ns
            .run(|| netlink::block_on(|nl| async move { nl.add_route(&route).await }))??;
        Ok(())
    }
}
