//! The desired state of the node network, computed from Node objects, and the diff against
//! what the kernel holds. Pure functions: no netlink here, so the logic is unit-tested without
//! root.
//!
//! Each peer Node (any node but this one) with a podCIDR and an InternalIP becomes:
//! - direct routing: a route `<podCIDR> via <InternalIP>` on the uplink, when the peer is on the
//!   uplink's subnet (flannel host-gw, Calico without IPIP);
//! - VXLAN (flannel's scheme): a route `<podCIDR> via <podCIDR network> dev wl.vxlan onlink`, a
//!   permanent neighbour `<podCIDR network>` → the peer's VXLAN MAC and an FDB entry that MAC →
//!   the peer's public IP.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;

/// The annotation holding a node's VXLAN device MAC (`aa:bb:cc:dd:ee:ff`).
pub const VXLAN_MAC_ANNOTATION: &str = "windlass.dev/vxlan-mac";
/// The annotation holding the address peers send VXLAN packets to.
pub const PUBLIC_IP_ANNOTATION: &str = "windlass.dev/public-ip";

/// An IPv4 network (`10.244.1.0/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The network address (host bits cleared).
    pub network: Ipv4Addr,
    /// The prefix length (0..=32).
    pub len: u8,
}

impl Cidr {
    /// `ip`/`len` with the host bits cleared; `None` past /32.
    pub fn new(ip: Ipv4Addr, len: u8) -> Option<Cidr> {
        (len <= 32).then(|| Cidr {
            network: Ipv4Addr::from(u32::from(ip) & mask(len)),
            len,
        })
    }

    /// Parses `a.b.c.d/n`.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (ip, len) = text.split_once('/')?;
        Cidr::new(ip.trim().parse().ok()?, len.trim().parse().ok()?)
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.network)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

fn mask(len: u8) -> u32 {
    match len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n.min(32))),
    }
}

/// A MAC address.
pub type Mac = [u8; 6];

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// What the network needs to know of a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The Node's name.
    pub name: String,
    /// `spec.podCIDR`, if assigned and IPv4.
    pub pod_cidr: Option<Cidr>,
    /// The first IPv4 `InternalIP` of `status.addresses`.
    pub internal_ip: Option<Ipv4Addr>,
    /// The [`VXLAN_MAC_ANNOTATION`].
    pub vxlan_mac: Option<Mac>,
    /// The [`PUBLIC_IP_ANNOTATION`].
    pub public_ip: Option<Ipv4Addr>,
}

impl NodeInfo {
    /// Reads the fields of `node`; malformed values count as absent.
    pub fn from_node(node: &Node) -> NodeInfo {
        let annotations = node.metadata.annotations.as_ref();
        let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            pod_cidr: node
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_deref())
                .and_then(Cidr::parse),
            internal_ip: node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse().ok()),
            vxlan_mac: annotation(VXLAN_MAC_ANNOTATION).and_then(parse_mac),
            public_ip: annotation(PUBLIC_IP_ANNOTATION).and_then(|a| a.parse().ok()),
        }
    }
}

/// A route windlass owns: destination → next hop on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// The next hop.
    pub gateway: Ipv4Addr,
    /// The outgoing link's index.
    pub oif: u32,
    /// `onlink` (the gateway is not on the link's subnet: the VXLAN scheme).
    pub onlink: bool,
}

/// Everything this node should hold for its peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Routes by destination.
    pub routes: BTreeMap<Cidr, RouteEntry>,
    /// Permanent neighbours on the VXLAN device: peer VTEP address → peer MAC.
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
    /// FDB entries on the VXLAN device: peer MAC → peer public IP.
    pub fdb: BTreeMap<Mac, Ipv4Addr>,
}

/// Where the routes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Direct routes on the uplink, for peers on its subnet.
    Direct {
        /// The uplink's index.
        uplink: u32,
        /// The uplink's subnet.
        subnet: Cidr,
    },
    /// Routes through the VXLAN device.
    Vxlan {
        /// The VXLAN device's index.
        device: u32,
    },
}

/// A peer that gets nothing, and why (logged once per change by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The peer's name.
    pub node: String,
    /// Why.
    pub reason: &'static str,
}

/// The desired state for this node (`me`) given every Node.
pub fn desired<'a>(
    me: &str,
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
    mode: Mode,
) -> (Desired, Vec<Skipped>) {
    let mut out = Desired::default();
    let mut skipped = Vec::new();
    let mut skip = |node: &NodeInfo, reason| {
        skipped.push(Skipped {
            node: node.name.clone(),
            reason,
        })
    };
    for node in nodes {
        if node.name == me {
            continue;
        }
        let (Some(cidr), Some(ip)) = (node.pod_cidr, node.internal_ip) else {
            skip(node, "no podCIDR or InternalIP yet");
            continue;
        };
        match mode {
            Mode::Direct { uplink, subnet } => {
                if !subnet.contains(ip) {
                    skip(node, "not on the uplink's subnet (use --overlay vxlan)");
                    continue;
                }
                out.routes.insert(
                    cidr,
                    RouteEntry {
                        gateway: ip,
                        oif: uplink,
                        onlink: false,
                    },
                );
            }
            Mode::Vxlan { device } => {
                let Some(mac) = node.vxlan_mac else {
                    skip(node, "no VXLAN MAC published yet");
                    continue;
                };
                let vtep = cidr.network;
                out.routes.insert(
                    cidr,
                    RouteEntry {
                        gateway: vtep,
                        oif: device,
                        onlink: true,
                    },
                );
                out.neighbours.insert(vtep, mac);
                out.fdb.insert(mac, node.public_ip.unwrap_or(ip));
            }
        }
    }
    (out, skipped)
}

/// The changes that turn `have` into `want` for one keyed table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes<K, V> {
    /// Entries to add or replace.
    pub put: Vec<(K, V)>,
    /// Entries to remove (with the value the kernel holds).
    pub remove: Vec<(K, V)>,
}

/// Diffs one table: keys only in `have` are removed, keys missing or different are put.
pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    have: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
) -> Changes<K, V> {
    Changes {
        put: want
            .iter()
            .filter(|(k, v)| have.get(k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        remove: have
            .iter()
            .filter(|(k, _)| !want.contains_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str, ip: &str, mac: Option<&str>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            pod_cidr: Cidr::parse(cidr),
            internal_ip: ip.parse().ok(),
            vxlan_mac: mac.and_then(parse_mac),
            public_ip: None,
        }
    }

    #[test]
    fn cidrs_and_macs_parse_and_print() {
        let c = Cidr::parse("10.244.1.7/24").expect("cidr");
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert!(c.contains("10.244.1.200".parse().expect("ip")));
        assert!(!c.contains("10.244.2.1".parse().expect("ip")));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("0.0.0.0/0").map(|c| c.len), Some(0));
        let mac = parse_mac("0A:58:0a:f4:01:00").expect("mac");
        assert_eq!(format_mac(&mac), "0a:58:0a:f4:01:00");
        assert_eq!(parse_mac("0a:58:0a:f4:01"), None);
        assert_eq!(parse_mac("0a:58:0a:f4:01:00:00"), None);
    }

    #[test]
    fn direct_routes_peers_on_the_subnet_and_skips_the_rest() {
        let nodes = [
            node("me", "10.244.0.0/24", "192.0.2.1", None),
            node("a", "10.244.1.0/24", "192.0.2.2", None),
            node("far", "10.244.2.0/24", "198.51.100.2", None),
            node("new", "", "192.0.2.4", None),
        ];
        let mode = Mode::Direct {
            uplink: 7,
            subnet: Cidr::parse("192.0.2.0/24").expect("cidr"),
        };
        let (d, skipped) = desired("me", &nodes, mode);
        assert_eq!(d.routes.len(), 1);
        assert_eq!(
            d.routes[&Cidr::parse("10.244.1.0/24").expect("cidr")],
            RouteEntry {
                gateway: "192.0.2.2".parse().expect("ip"),
                oif: 7,
                onlink: false
            }
        );
        assert!(d.neighbours.is_empty() && d.fdb.is_empty());
        let names: Vec<&str> = skipped.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(names, ["far", "new"]);
    }

    #[test]
    fn vxlan_uses_flannels_scheme_and_the_public_ip() {
        let mut b = node("b", "10.244.2.0/24", "192.0.2.3", Some("0a:00:00:00:00:02"));
        b.public_ip = Some("198.51.100.3".parse().expect("ip"));
        let nodes = [
            node(
                "me",
                "10.244.0.0/24",
                "192.0.2.1",
                Some("0a:00:00:00:00:00"),
            ),
            node("a", "10.244.1.0/24", "192.0.2.2", Some("0a:00:00:00:00:01")),
            b,
            node("nomac", "10.244.3.0/24", "192.0.2.4", None),
        ];
        let (d, skipped) = desired("me", &nodes, Mode::Vxlan { device: 9 });
        let a = Cidr::parse("10.244.1.0/24").expect("cidr");
        assert_eq!(
            d.routes[&a],
            RouteEntry {
                gateway: "10.244.1.0".parse().expect("ip"),
                oif: 9,
                onlink: true
            }
        );
        let mac_a = parse_mac("0a:00:00:00:00:01").expect("mac");
        let mac_b = parse_mac("0a:00:00:00:00:02").expect("mac");
        assert_eq!(d.neighbours[&"10.244.1.0".parse().expect("ip")], mac_a);
        assert_eq!(d.fdb[&mac_a], "192.0.2.2".parse::<Ipv4Addr>().expect("ip"));
        assert_eq!(
            d.fdb[&mac_b],
            "198.51.100.3".parse::<Ipv4Addr>().expect("ip")
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].node, "nomac");
    }

    #[test]
    fn diff_puts_changed_and_new_entries_and_removes_gone_ones() {
        let have: BTreeMap<u8, u8> = [(1, 1), (2, 2), (3, 3)].into();
        let want: BTreeMap<u8, u8> = [(1, 1), (2, 20), (4, 4)].into();
        let c = diff(&have, &want);
        assert_eq!(c.put, vec![(2, 20), (4, 4)]);
        assert_eq!(c.remove, vec![(3, 3)]);
        assert_eq!(diff(&want, &want).put, vec![]);
    }

    #[test]
    fn node_info_reads_the_spec_status_and_annotations() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "annotations": {
                VXLAN_MAC_ANNOTATION: "0a:00:00:00:00:01",
                PUBLIC_IP_ANNOTATION: "bogus"}},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "192.0.2.2"}]}
        }))
        .expect("node");
        let info = NodeInfo::from_node(&node);
        assert_eq!(info.pod_cidr, Cidr::parse("10.244.1.0/24"));
        assert_eq!(info.internal_ip, "192.0.2.2".parse().ok());
        assert_eq!(info.vxlan_mac, parse_mac("0a:00:00:00:00:01"));
        assert_eq!(info.public_ip, None);
    }
}
