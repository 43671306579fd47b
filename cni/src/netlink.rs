//! Link, address and route operations over rtnetlink, in the caller's network namespace.
//!
//! A netlink socket belongs to the namespace it was opened in, so callers open a [`Netlink`] on a
//! thread that has entered the right namespace (see [`crate::netns::NetNs::run`]) and use it
//! there. Each call names the object it acted on in its error; nothing here runs `ip`.

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

/// Errors from netlink operations.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket or its runtime could not be set up.
    #[error("failed to open a netlink socket")]
    Open(#[source] std::io::Error),
    /// No link has this name in the current namespace.
    #[error("link {0} not found")]
    LinkNotFound(String),
    /// The kernel refused a request.
    #[error("failed to {action} {object}")]
    Request {
        /// What was being done, e.g. "add veth".
        action: &'static str,
        /// What it was done to, e.g. the link name or the route.
        object: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
}

impl NetlinkError {
    /// The kernel's errno for a refused request, if that is what this error is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| -c.get()),
            _ => None,
        }
    }
}

fn request(
    action: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let object = object.into();
    move |source| NetlinkError::Request {
        action,
        object,
        source,
    }
}

/// A route to install: destination prefix, optional gateway, optional output device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network address.
    pub destination: Ipv4Addr,
    /// Destination prefix length (0 for a default route).
    pub prefix_len: u8,
    /// Next hop, if the destination is not directly connected.
    pub gateway: Option<Ipv4Addr>,
    /// Output link, if the route is bound to one.
    pub device: Option<String>,
}

/// A link's IPv4 state as a namespace sees it: what CNI CHECK and the tests verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4View {
    /// The link's interface index.
    pub index: u32,
    /// Its IPv4 addresses with prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// Every IPv4 route of the main table, as [`Netlink::ipv4_routes`] lists them.
    pub routes: Vec<(Ipv4Addr, u8, Option<Ipv4Addr>, Option<u32>)>,
}

impl Ipv4View {
    /// The default route's gateway and whether it leaves through this link.
    pub fn default_route(&self) -> Option<(Option<Ipv4Addr>, bool)> {
        self.routes
            .iter()
            .find(|(dst, len, _, _)| dst.is_unspecified() && *len == 0)
            .map(|(_, _, gateway, oif)| (*gateway, *oif == Some(self.index)))
    }
}

/// An rtnetlink connection in the namespace of the thread that opened it.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

/// Opens a netlink connection on a current-thread runtime in the calling thread's namespace and
/// drives `f` to completion with it. Meant to be called inside [`crate::netns::NetNs::run`].
pub fn block_on<T, E, F, Fut>(f: F) -> Result<T, E>
where
    E: From<NetlinkError>,
    F: FnOnce(Netlink) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NetlinkError::Open)?;
    runtime.block_on(async move {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Open)?;
        let task = tokio::spawn(connection);
        let result = f(Netlink { handle }).await;
        task.abort();
        result
    })
}

impl Netlink {
    /// The interface index of the link called `name`.
    pub async fn link_index(&self, name: &str) -> Result<u32, NetlinkError> {
        match self.link(name).await? {
            Some(msg) => Ok(msg.header.index),
            None => Err(NetlinkError::LinkNotFound(name.to_string())),
        }
    }

    /// The link called `name`, or `None` when there is none.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(found) => Ok(found),
            // The kernel answers a lookup of a missing name with ENODEV.
            Err(rtnetlink::Error::NetlinkError(msg))
                if msg.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(request("look up link", name)(e)),
        }
    }

    /// Names of every link in this namespace.
    pub async fn link_names(&self) -> Result<Vec<String>, NetlinkError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(request("list", "links"))?;
        Ok(links
            .iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })
            })
            .collect())
    }

    /// Creates a veth pair `name` <-> `peer`; the peer is created directly inside `peer_netns`
    /// when given, so no half of the pair ever appears in a namespace it does not belong to.
    pub async fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_netns: Option<&File>,
    ) -> Result<(), NetlinkError> {
        self.add_veth_with(name, peer, peer_netns, None, None).await
    }

    /// Creates a veth pair in one request: `host` here, already up, with `mtu` and enslaved to
    /// the bridge with index `controller`; its peer named `peer` directly inside `peer_netns`.
    /// Nothing is left half-made: the kernel creates both ends or neither.
    pub async fn add_veth_on_bridge(
        &self,
        host: &str,
        peer: &str,
        peer_netns: &File,
        mtu: Option<u32>,
        controller: u32,
    ) -> Result<(), NetlinkError> {
        self.add_veth_with(host, peer, Some(peer_netns), mtu, Some(controller))
            .await
    }

    async fn add_veth_with(
        &self,
        host: &str,
        peer: &str,
        peer_netns: Option<&File>,
        mtu: Option<u32>,
        controller: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string());
        let mut host_msg = LinkVeth::new(host, peer);
        if let Some(ns) = peer_netns {
            peer_msg = peer_msg.setns_by_fd(ns.as_raw_fd());
        }
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
            host_msg = host_msg.mtu(mtu);
        }
        if let Some(controller) = controller {
            host_msg = host_msg.controller(controller).up();
        }
        let msg = host_msg
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(request("add veth", format!("{host} (peer {peer})")))
    }

    /// Creates bridge `name`, up, with hardware address `mac`, `mtu` if given and promiscuous
    /// mode if asked. A bridge given its address keeps it, instead of taking the lowest of its
    /// ports' addresses as they come and go.
    pub async fn add_bridge_with(
        &self,
        name: &str,
        mac: [u8; 6],
        mtu: Option<u32>,
        promiscuous: bool,
    ) -> Result<(), NetlinkError> {
        let mut msg = LinkBridge::new(name).up().address(mac.to_vec());
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        if promiscuous {
            msg = msg.promiscuous(true);
        }
        self.handle
            .link()
            .add(msg.build())
            .execute()
            .await
            .map_err(request("add bridge", name))
    }

    /// Turns hairpin mode on for the bridge port with index `port` (`name` is for errors), so a
    /// pod can reach itself through a service address that leads back to it.
    pub async fn set_hairpin(&self, port: u32, name: &str) -> Result<(), NetlinkError> {
        let msg = LinkBridgePort::new(port).hairpin(true).build();
        // Port options travel as RTM_NEWLINK on the existing link, not RTM_SETLINK.
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(request("set hairpin mode on", name))
    }

    async fn set_link(
        &self,
        msg: LinkMessage,
        action: &'static str,
        name: &str,
    ) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(request(action, name))
    }

    /// Sets the link with index `index` up (`name` is for errors).
    pub async fn set_up_index(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set_link(msg, "set up", name).await
    }

    /// Turns promiscuous mode on for the link with index `index` (`name` is for errors).
    pub async fn set_promiscuous(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).promiscuous(true).build();
        self.set_link(msg, "set promiscuous mode on", name).await
    }

    /// Every link in this namespace.
    pub async fn links(&self) -> Result<Vec<LinkMessage>, NetlinkError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(request("list", "links"))
    }

    /// Link `name`'s addresses and the namespace's routes.
    pub async fn ipv4_view(&self, name: &str) -> Result<Ipv4View, NetlinkError> {
        let index = self.link_index(name).await?;
        Ok(Ipv4View {
            index,
            addresses: self.ipv4_addresses(index).await?,
            routes: self.ipv4_routes().await?,
        })
    }

    /// IPv4 addresses on the link with index `index`, as (address, prefix length).
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(request("list", format!("addresses of link {index}")))?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    /// IPv4 routes of the main table as (destination, prefix length, gateway, output index).
    pub async fn ipv4_routes(
        &self,
    ) -> Result<Vec<(Ipv4Addr, u8, Option<Ipv4Addr>, Option<u32>)>, NetlinkError> {
        let messages: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(request("list", "routes"))?;
        Ok(messages
            .iter()
            .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
            .map(|m| {
                let mut destination = Ipv4Addr::UNSPECIFIED;
                let mut gateway = None;
                let mut oif = None;
                for attribute in &m.attributes {
                    match attribute {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = *ip,
                        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                        RouteAttribute::Oif(index) => oif = Some(*index),
                        _ => {}
                    }
                }
                (
                    destination,
                    m.header.destination_prefix_length,
                    gateway,
                    oif,
                )
            })
            .collect())
    }

    /// Creates a bridge called `name`.
    pub async fn add_bridge(&self, name: &str) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(request("add bridge", name))
    }

    /// Enslaves link `name` to the bridge `bridge`.
    pub async fn set_controller(&self, name: &str, bridge: &str) -> Result<(), NetlinkError> {
        let port = self.link_index(name).await?;
        let controller = self.link_index(bridge).await?;
        let msg = LinkUnspec::new_with_index(port)
            .controller(controller)
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(request("attach to bridge", format!("{name} -> {bridge}")))
    }

    /// Sets link `name` administratively up.
    pub async fn set_up(&self, name: &str) -> Result<(), NetlinkError> {
        let index = self.link_index(name).await?;
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set_link(msg, "set up", name).await
    }

    /// Adds `address/prefix_len` to link `name`.
    pub async fn add_address(
        &self,
        name: &str,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let index = self.link_index(name).await?;
        self.handle
            .address()
            .add(index, address, prefix_len)
            .execute()
            .await
            .map_err(request(
                "add address",
                format!("{address}/{prefix_len} on {name}"),
            ))
    }

    /// Installs an IPv4 route in the main table.
    pub async fn add_route(&self, route: &Route) -> Result<(), NetlinkError> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.destination, route.prefix_len);
        if let Some(gateway) = route.gateway {
            builder = builder.gateway(gateway);
        }
        if let Some(device) = &route.device {
            builder = builder.output_interface(self.link_index(device).await?);
            if route.gateway.is_none() {
                // A directly connected destination, like `ip route add X dev Y`.
                builder = builder.scope(RouteScope::Link);
            }
        }
        self.handle
            .route()
            .add(builder.build())
            .execute()
            .await
            .map_err(request(
                "add route",
                format!("{}/{}", route.destination, route.prefix_len),
            ))
    }

    /// Deletes link `name`; a link that is already gone is not an error.
    pub async fn del_link(&self, name: &str) -> Result<(), NetlinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(msg))
                if msg.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
            {
                Ok(())
            }
            Err(e) => Err(request("delete link", name)(e)),
        }
    }
}
