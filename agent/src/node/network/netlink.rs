//! The network's netlink side (rtnetlink) in the agent's network namespace: the uplink, the
//! VXLAN device `wl.vxlan`, and the routes, neighbours and FDB entries windlass owns.
//!
//! Ownership: routes carry the route protocol [`ROUTE_PROTOCOL`] (`ip route show proto 87`);
//! neighbours and FDB entries are only ever read and written on the VXLAN device, which windlass
//! creates. Nothing else in the namespace is touched.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, LinkVxlan, RouteMessageBuilder};

use super::desired::{Cidr, Mac, RouteEntry};

/// The route protocol number marking windlass's routes (`ip route show proto 87`; 87 is `W`,
/// unassigned in `/etc/iproute2/rt_protos`).
pub const ROUTE_PROTOCOL: u8 = 87;
/// The VXLAN device's name.
pub const VXLAN_DEVICE: &str = "wl.vxlan";
/// The VXLAN network identifier (flannel's default).
pub const VXLAN_VNI: u32 = 1;
/// The VXLAN UDP port (flannel's, the Linux default rather than IANA's 4789).
pub const VXLAN_PORT: u16 = 8472;
/// VXLAN's encapsulation overhead (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

const MAIN_TABLE: u32 = 254;

/// Errors of the netlink calls.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    /// A request failed.
    #[error("failed to {what}")]
    Request {
        /// What was being done.
        what: String,
        /// rtnetlink's error.
        #[source]
        source: rtnetlink::Error,
    },
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// The kernel's errno in a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// Ok for a delete whose object is already gone.
fn gone_is_ok(result: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT | libc::ENODEV)) => Ok(()),
        other => other,
    }
}

/// A netlink handle whose connection runs on the current tokio runtime.
pub fn connect() -> Result<Handle, NetlinkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// An IPv4 address of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkAddress {
    /// The link's index.
    pub index: u32,
    /// The address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub len: u8,
}

/// Every IPv4 address of the namespace.
pub async fn addresses(handle: &Handle) -> Result<Vec<LinkAddress>, NetlinkError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(request("list addresses"))?;
    let mut out = Vec::new();
    for m in messages {
        let ip = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
                Some(*ip)
            }
            _ => None,
        });
        if let Some(ip) = ip {
            out.push(LinkAddress {
                index: m.header.index,
                ip,
                len: m.header.prefix_len,
            });
        }
    }
    Ok(out)
}

/// A link as the network cares about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Hardware address.
    pub mac: Option<Mac>,
    /// For a VXLAN device: (VNI, local address, UDP port, underlay link).
    pub vxlan: Option<(u32, Option<Ipv4Addr>, u16, Option<u32>)>,
}

fn link_of(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        vxlan: None,
    };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(bytes) => link.mac = <Mac>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                let is_vxlan = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
                if !is_vxlan {
                    continue;
                }
                let (mut vni, mut local, mut port, mut dev) = (0, None, 0, None);
                for info in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(data)) = info {
                        for d in data {
                            match d {
                                InfoVxlan::Id(id) => vni = *id,
                                InfoVxlan::Local(ip) => local = Some(*ip),
                                InfoVxlan::Port(p) => port = *p,
                                InfoVxlan::Link(i) => dev = Some(*i),
                                _ => {}
                            }
                        }
                    }
                }
                link.vxlan = Some((vni, local, port, dev));
            }
            _ => {}
        }
    }
    link
}

/// Every link of the namespace.
pub async fn links(handle: &Handle) -> Result<Vec<Link>, NetlinkError> {
    let messages: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(request("list links"))?;
    Ok(messages.iter().map(link_of).collect())
}

/// Creates `wl.vxlan` (VNI 1, port 8472, `local`, over `uplink`, learning off, MTU uplink - 50)
/// or adopts the one there when it matches, recreating it when it does not; gives it `address`/32
/// (and no other address) and sets it up. Returns the device.
pub async fn ensure_vxlan(
    handle: &Handle,
    uplink: &Link,
    local: Ipv4Addr,
    address: Ipv4Addr,
) -> Result<Link, NetlinkError> {
    let mtu = uplink.mtu.saturating_sub(VXLAN_OVERHEAD).max(576);
    let existing = links(handle)
        .await?
        .into_iter()
        .find(|l| l.name == VXLAN_DEVICE);
    let want = (VXLAN_VNI, Some(local), VXLAN_PORT, Some(uplink.index));
    let device = match existing {
        Some(link) if link.vxlan == Some(want) => link,
        other => {
            if let Some(link) = other {
                tracing::info!(device = VXLAN_DEVICE, found = ?link.vxlan, "recreating the VXLAN device");
                handle
                    .link()
                    .del(link.index)
                    .execute()
                    .await
                    .map_err(request(format!("delete link {VXLAN_DEVICE}")))?;
            }
            let message = LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
                .dev(uplink.index)
                .local(local)
                .port(VXLAN_PORT)
                .learning(false)
                .mtu(mtu)
                .build();
            handle
                .link()
                .add(message)
                .execute()
                .await
                .map_err(request(format!("create VXLAN device {VXLAN_DEVICE}")))?;
            links(handle)
                .await?
                .into_iter()
                .find(|l| l.name == VXLAN_DEVICE)
                .ok_or_else(|| NetlinkError::Request {
                    what: format!("find {VXLAN_DEVICE} after creating it"),
                    source: rtnetlink::Error::RequestFailed,
                })?
        }
    };
    if device.mtu != mtu {
        let message = rtnetlink::LinkUnspec::new_with_index(device.index)
            .mtu(mtu)
            .build();
        handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(request(format!("set the MTU of {VXLAN_DEVICE}")))?;
    }
    // Exactly one address: the VTEP address of this node's podCIDR.
    let mut has = false;
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(device.index)
        .execute()
        .try_collect()
        .await
        .map_err(request(format!("list addresses of {VXLAN_DEVICE}")))?;
    for m in messages {
        let ip = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
                Some(*ip)
            }
            _ => None,
        });
        if ip == Some(address) && m.header.prefix_len == 32 {
            has = true;
        } else if m.header.family == AddressFamily::Inet {
            gone_is_ok(handle.address().del(m).execute().await)
                .map_err(request(format!("remove a stale address of {VXLAN_DEVICE}")))?;
        }
    }
    if !has {
        handle
            .address()
            .add(device.index, IpAddr::V4(address), 32)
            .execute()
            .await
            .map_err(request(format!("add {address}/32 to {VXLAN_DEVICE}")))?;
    }
    let up = rtnetlink::LinkUnspec::new_with_index(device.index)
        .up()
        .build();
    handle
        .link()
        .set(up)
        .execute()
        .await
        .map_err(request(format!("set {VXLAN_DEVICE} up")))?;
    Ok(device)
}

/// Deletes `wl.vxlan` if it is there (with its neighbours, FDB entries and routes).
pub async fn delete_vxlan(handle: &Handle) -> Result<bool, NetlinkError> {
    let Some(link) = links(handle)
        .await?
        .into_iter()
        .find(|l| l.name == VXLAN_DEVICE)
    else {
        return Ok(false);
    };
    gone_is_ok(handle.link().del(link.index).execute().await)
        .map_err(request(format!("delete link {VXLAN_DEVICE}")))?;
    Ok(true)
}

/// The IPv4 routes of the main table carrying [`ROUTE_PROTOCOL`].
pub async fn owned_routes(handle: &Handle) -> Result<BTreeMap<Cidr, RouteEntry>, NetlinkError> {
    let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let messages: Vec<RouteMessage> = handle
        .route()
        .get(filter)
        .execute()
        .try_collect()
        .await
        .map_err(request("list routes"))?;
    let mut out = BTreeMap::new();
    for m in messages {
        if m.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
            continue;
        }
        let table = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(m.header.table));
        if table != MAIN_TABLE {
            continue;
        }
        let (mut dst, mut gateway, mut oif) = (Ipv4Addr::UNSPECIFIED, None, 0);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                RouteAttribute::Oif(i) => oif = *i,
                _ => {}
            }
        }
        let Some(cidr) = Cidr::new(dst, m.header.destination_prefix_length) else {
            continue;
        };
        out.insert(
            cidr,
            RouteEntry {
                gateway: gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
                oif,
                onlink: m.header.flags.contains(RouteFlags::Onlink),
            },
        );
    }
    Ok(out)
}

fn route_message(cidr: Cidr, entry: &RouteEntry) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(cidr.network, cidr.len)
        .gateway(entry.gateway)
        .output_interface(entry.oif)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
    if entry.onlink {
        builder = builder.onlink();
    }
    builder.build()
}

/// Installs (or replaces) a route with [`ROUTE_PROTOCOL`].
pub async fn put_route(
    handle: &Handle,
    cidr: Cidr,
    entry: &RouteEntry,
) -> Result<(), NetlinkError> {
    handle
        .route()
        .add(route_message(cidr, entry))
        .replace()
        .execute()
        .await
        .map_err(request(format!(
            "install route {cidr} via {}",
            entry.gateway
        )))
}

/// Removes a route (gone already is fine).
pub async fn del_route(
    handle: &Handle,
    cidr: Cidr,
    entry: &RouteEntry,
) -> Result<(), NetlinkError> {
    gone_is_ok(
        handle
            .route()
            .del(route_message(cidr, entry))
            .execute()
            .await,
    )
    .map_err(request(format!("remove route {cidr}")))
}

async fn neighbour_messages(
    handle: &Handle,
    family: AddressFamily,
) -> Result<Vec<NeighbourMessage>, NetlinkError> {
    handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(request("list neighbours"))
}

fn lladdr(m: &NeighbourMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => <Mac>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

fn destination(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // FDB entries (family AF_BRIDGE) carry the remote's address as raw bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
            <[u8; 4]>::try_from(bytes.as_slice())
                .ok()
                .map(Ipv4Addr::from)
        }
        _ => None,
    })
}

/// The permanent IPv4 neighbours of link `index`: address → MAC, with the kernel's messages
/// (to delete by).
pub async fn neighbours(
    handle: &Handle,
    index: u32,
) -> Result<BTreeMap<Ipv4Addr, (Mac, NeighbourMessage)>, NetlinkError> {
    let mut out = BTreeMap::new();
    for m in neighbour_messages(handle, AddressFamily::Inet).await? {
        if m.header.ifindex != index || m.header.state != NeighbourState::Permanent {
            continue;
        }
        if let (Some(ip), Some(mac)) = (destination(&m), lladdr(&m)) {
            out.insert(ip, (mac, m));
        }
    }
    Ok(out)
}

/// Installs (or replaces) a permanent neighbour `ip` → `mac` on link `index`.
pub async fn put_neighbour(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    mac: &Mac,
) -> Result<(), NetlinkError> {
    handle
        .neighbours()
        .add(index, IpAddr::V4(ip))
        .link_layer_address(mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(request(format!("install neighbour {ip}")))
}

/// The FDB entries of link `index` that have a remote destination: MAC → destination, with the
/// kernel's messages.
pub async fn fdb(
    handle: &Handle,
    index: u32,
) -> Result<BTreeMap<Mac, (Ipv4Addr, NeighbourMessage)>, NetlinkError> {
    let mut out = BTreeMap::new();
    for m in neighbour_messages(handle, AddressFamily::Bridge).await? {
        if m.header.ifindex != index {
            continue;
        }
        if let (Some(ip), Some(mac)) = (destination(&m), lladdr(&m)) {
            out.insert(mac, (ip, m));
        }
    }
    Ok(out)
}

/// Installs (or replaces) the FDB entry `mac` → `dst` on the VXLAN device `index`
/// (`bridge fdb replace <mac> dev wl.vxlan dst <dst> self permanent`).
pub async fn put_fdb(
    handle: &Handle,
    index: u32,
    mac: &Mac,
    dst: Ipv4Addr,
) -> Result<(), NetlinkError> {
    handle
        .neighbours()
        .add_bridge(index, mac)
        .destination(IpAddr::V4(dst))
        .flags(NeighbourFlags::Own)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(request(format!("install FDB entry to {dst}")))
}

/// Removes a neighbour or FDB entry as the kernel listed it (gone already is fine).
pub async fn del_neighbour(handle: &Handle, message: NeighbourMessage) -> Result<(), NetlinkError> {
    // Only the keys: the kernel's cache info and the like are not for a delete request.
    let mut message = message;
    message.attributes.retain(|a| {
        matches!(
            a,
            NeighbourAttribute::Destination(_) | NeighbourAttribute::LinkLayerAddress(_)
        )
    });
    gone_is_ok(handle.neighbours().del(message).execute().await)
        .map_err(request("remove a neighbour entry"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_in_both_families() {
        let mut m = NeighbourMessage::default();
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Other(
                vec![192, 0, 2, 2],
            )));
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![
            10, 0, 0, 0, 0, 1,
        ]));
        assert_eq!(destination(&m), Some(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(lladdr(&m), Some([10, 0, 0, 0, 0, 1]));
        m.attributes[0] =
            NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(10, 244, 1, 0)));
        assert_eq!(destination(&m), Some(Ipv4Addr::new(10, 244, 1, 0)));
        m.attributes[0] = NeighbourAttribute::Destination(NeighbourAddress::Other(vec![1; 16]));
        assert_eq!(destination(&m), None);
    }
}
