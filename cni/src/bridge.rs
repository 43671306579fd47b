//! Bridge mode: the bridge with the gateway address, one veth pair per attachment (host end on
//! the bridge, container end named `CNI_IFNAME` inside the container's namespace), and the
//! container's addresses and routes, all over netlink.
//!
//! The host end's name is derived from the container id and interface name, so DEL and GC find
//! it again without any state, and a retried ADD replaces what an interrupted one left.

use std::fs::File;
use std::net::Ipv4Addr;

use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};

use crate::config::NetConf;
use crate::error::{CniError, chain};
use crate::netlink::{self, Netlink, NetlinkError, Route};
use crate::netns::NetNs;

/// Prefix of every host-side veth this plugin creates.
pub const HOST_VETH_PREFIX: &str = "wl";

/// The host-side veth name for (`container_id`, `ifname`): `wl` and 12 hex digits of a
/// 64-bit FNV-1a hash, 14 characters, within the kernel's 15.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!(
        "{HOST_VETH_PREFIX}{:012x}",
        fnv1a(container_id.bytes().chain([0]).chain(ifname.bytes())) >> 16
    )
}

fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A stable, locally administered unicast MAC address for the bridge of network `network`.
pub fn bridge_mac(network: &str, bridge: &str) -> [u8; 6] {
    let hash = fnv1a(network.bytes().chain([0]).chain(bridge.bytes())).to_be_bytes();
    [
        (hash[0] & 0xfc) | 0x02,
        hash[1],
        hash[2],
        hash[3],
        hash[4],
        hash[5],
    ]
}

/// Whether `name` has the shape of a host-side veth this plugin made.
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == HOST_VETH_PREFIX.len() + 12
        && name.starts_with(HOST_VETH_PREFIX)
        && name[HOST_VETH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A kernel failure as a CNI error (plugin-specific code 101).
pub fn kernel(what: &str, error: &dyn std::error::Error) -> CniError {
    CniError::new(CniError::KERNEL, what, chain(error))
}

/// The MAC address of a link, formatted `aa:bb:..`.
pub fn mac_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) if bytes.len() == 6 => Some(
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
        ),
        _ => None,
    })
}

/// The bridge a link is enslaved to, by index.
pub fn controller_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

/// The name of a link.
pub fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn is_bridge(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

/// The bridge as found or made: its index and MAC address.
#[derive(Debug, Clone)]
pub struct BridgeLink {
    /// Interface index.
    pub index: u32,
    /// MAC address.
    pub mac: Option<String>,
}

/// Finds the configured bridge or creates it (up, with the configured MTU and promiscuous
/// mode), and gives it the gateway address when `isGateway`. Safe against concurrent ADDs.
pub async fn ensure_bridge(nl: &Netlink, conf: &NetConf) -> Result<BridgeLink, CniError> {
    let link = match nl.link(&conf.bridge).await {
        Ok(Some(link)) => link,
        Ok(None) => {
            match nl
                .add_bridge_with(
                    &conf.bridge,
                    bridge_mac(&conf.name, &conf.bridge),
                    conf.mtu,
                    conf.promisc_mode,
                )
                .await
            {
                Ok(()) => {}
                // Another ADD created it first.
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => return Err(kernel("failed to create the bridge", &e)),
            }
            nl.link(&conf.bridge)
                .await
                .map_err(|e| kernel("failed to look up the bridge", &e))?
                .ok_or_else(|| {
                    CniError::new(
                        CniError::KERNEL,
                        "failed to create the bridge",
                        format!("bridge {} vanished after creation", conf.bridge),
                    )
                })?
        }
        Err(e) => return Err(kernel("failed to look up the bridge", &e)),
    };
    if !is_bridge(&link) {
        return Err(CniError::new(
            CniError::INVALID_CONFIG,
            "invalid network configuration",
            format!("{} already exists and is not a bridge", conf.bridge),
        ));
    }
    let index = link.header.index;
    if conf.promisc_mode {
        nl.set_promiscuous(index, &conf.bridge)
            .await
            .map_err(|e| kernel("failed to set the bridge promiscuous", &e))?;
    }
    if conf.is_gateway {
        let pool = &conf.ipam.pool;
        match nl
            .add_address(&conf.bridge, pool.gateway.into(), pool.subnet.prefix)
            .await
        {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(kernel("failed to add the gateway address", &e)),
        }
    }
    Ok(BridgeLink {
        index,
        mac: mac_of(&link),
    })
}

/// The host end as created: name and MAC address.
#[derive(Debug, Clone)]
pub struct HostVeth {
    /// Interface name.
    pub name: String,
    /// MAC address.
    pub mac: Option<String>,
}

/// Creates the veth pair for an attachment: the host end on the bridge (hairpin on when
/// configured), the container end named `ifname` inside `netns`. A host end left by an
/// interrupted ADD for the same attachment is replaced.
pub async fn add_veth(
    nl: &Netlink,
    conf: &NetConf,
    bridge: &BridgeLink,
    host: &str,
    ifname: &str,
    netns: &File,
) -> Result<HostVeth, CniError> {
    nl.del_link(host)
        .await
        .map_err(|e| kernel("failed to remove a stale veth", &e))?;
    nl.add_veth_on_bridge(host, ifname, netns, conf.mtu, bridge.index)
        .await
        .map_err(|e| match e.errno() {
            Some(libc::EEXIST) => CniError::new(
                CniError::KERNEL,
                "failed to create the veth pair",
                format!("an interface named {ifname} already exists in the container"),
            ),
            _ => kernel("failed to create the veth pair", &e),
        })?;
    let link = nl
        .link(host)
        .await
        .map_err(|e| kernel("failed to look up the host veth", &e))?
        .ok_or_else(|| {
            CniError::new(
                CniError::KERNEL,
                "failed to create the veth pair",
                format!("{host} vanished after creation"),
            )
        })?;
    if conf.hairpin_mode {
        nl.set_hairpin(link.header.index, host)
            .await
            .map_err(|e| kernel("failed to set hairpin mode", &e))?;
    }
    Ok(HostVeth {
        name: host.to_string(),
        mac: mac_of(&link),
    })
}

/// What the container end looks like after configuration.
#[derive(Debug, Clone)]
pub struct ContainerSide {
    /// MAC address of the container interface.
    pub mac: Option<String>,
}

/// Inside the container's namespace (on a dedicated thread): loopback up, the address on
/// `ifname` and the routes.
pub fn configure_container(
    ns: &NetNs,
    ifname: &str,
    address: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    routes: &[(Ipv4Addr, u8, Option<Ipv4Addr>)],
) -> Result<ContainerSide, CniError> {
    let result = ns.run(|| {
        netlink::block_on(|nl| async move {
            nl.set_up("lo").await?;
            // One lookup: the index to bring it up by, and the MAC for the result (neither
            // changes with addresses and routes).
            let link = nl
                .link(ifname)
                .await?
                .ok_or_else(|| NetlinkError::LinkNotFound(ifname.to_string()))?;
            nl.set_up_index(link.header.index, ifname).await?;
            nl.add_address(ifname, address.into(), prefix).await?;
            for (destination, prefix_len, gw) in routes {
                nl.add_route(&Route {
                    destination: *destination,
                    prefix_len: *prefix_len,
                    gateway: Some(gw.unwrap_or(gateway)),
                    device: Some(ifname.to_string()),
                })
                .await?;
            }
            Ok::<_, NetlinkError>(ContainerSide { mac: mac_of(&link) })
        })
    });
    match result {
        Ok(Ok(side)) => Ok(side),
        Ok(Err(e)) => Err(kernel("failed to configure the container interface", &e)),
        Err(e) => Err(kernel(
            "failed to enter the container's network namespace",
            &e,
        )),
    }
}

/// Turns on IPv4 forwarding in this namespace (the node), as the reference bridge plugin does
/// for a gateway bridge; pods could not leave the node otherwise.
pub fn enable_forwarding() -> Result<(), CniError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    match std::fs::read_to_string(PATH) {
        Ok(v) if v.trim() == "1" => Ok(()),
        _ => std::fs::write(PATH, "1").map_err(|e| {
            CniError::new(
                CniError::IO,
                "failed to enable IPv4 forwarding",
                e.to_string(),
            )
        }),
    }
}

/// Host veths on `bridge` that this plugin made, by name.
pub async fn host_veths_on(nl: &Netlink, bridge: &str) -> Result<Vec<String>, CniError> {
    let Some(bridge) = nl
        .link(bridge)
        .await
        .map_err(|e| kernel("failed to look up the bridge", &e))?
    else {
        return Ok(Vec::new());
    };
    let links = nl
        .links()
        .await
        .map_err(|e| kernel("failed to list links", &e))?;
    Ok(links
        .iter()
        .filter(|l| controller_of(l) == Some(bridge.header.index))
        .filter_map(name_of)
        .filter(|n| is_host_veth_name(n))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(is_host_veth_name(&a));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(host_veth_name("ab", "ceth0"), host_veth_name("abc", "eth0"));
        assert!(!is_host_veth_name("wl0"));
        assert!(!is_host_veth_name("eth0"));
    }
}
