//! The proxy's netlink side, in the agent's network namespace: the unreachable route for the
//! service CIDR, the node's addresses (NodePort addresses and the uplink), the pod veths on the
//! bridge, and a subscription to link changes so new pod veths get the tc program.

use std::net::{IpAddr, Ipv4Addr};

use futures::{Stream, StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::sys::AsyncSocket as _;
use rtnetlink::{Handle, RouteMessageBuilder};

/// Errors of the netlink calls.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The netlink socket could not be opened or bound.
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    /// A request failed.
    #[error("netlink: {what}")]
    Request {
        /// What was asked.
        what: String,
        /// rtnetlink's error.
        #[source]
        source: rtnetlink::Error,
    },
}

/// A netlink handle (its connection runs on the current tokio runtime).
pub fn connect() -> Result<Handle, NetError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Installs (or keeps) `unreachable <cidr>`: a service address nothing translated fails at once
/// instead of following the default route out of the node.
pub async fn unreachable_route(handle: &Handle, net: Ipv4Addr, len: u8) -> Result<(), NetError> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(net, len)
        .kind(RouteType::Unreachable)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|source| NetError::Request {
            what: format!("add unreachable route {net}/{len}"),
            source,
        })
}

/// Removes `unreachable <cidr>` (`windlass reset`); a missing route is not an error.
pub async fn remove_unreachable_route(
    handle: &Handle,
    (net, len): (Ipv4Addr, u8),
) -> Result<(), NetError> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(net, len)
        .kind(RouteType::Unreachable)
        .build();
    match handle.route().del(route).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
        Err(source) => Err(NetError::Request {
            what: format!("delete unreachable route {net}/{len}"),
            source,
        }),
    }
}

/// Deletes the link named `name` (`windlass reset` removes the pod bridge); a missing link is
/// not an error.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<(), NetError> {
    let mut found = handle.link().get().match_name(name.to_string()).execute();
    let index = match found.try_next().await {
        Ok(Some(link)) => link.header.index,
        Ok(None) => return Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => return Ok(()),
        Err(source) => {
            return Err(NetError::Request {
                what: format!("find link {name}"),
                source,
            });
        }
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
        Err(source) => Err(NetError::Request {
            what: format!("delete link {name}"),
            source,
        }),
    }
}

/// Every IPv4 address of the namespace with the index of its link.
pub async fn addresses(handle: &Handle) -> Result<Vec<(u32, Ipv4Addr)>, NetError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| NetError::Request {
            what: "list addresses".into(),
            source,
        })?;
    let mut out = Vec::new();
    for m in messages {
        for attr in &m.attributes {
            if let AddressAttribute::Local(IpAddr::V4(ip))
            | AddressAttribute::Address(IpAddr::V4(ip)) = attr
                && !out.contains(&(m.header.index, *ip))
            {
                out.push((m.header.index, *ip));
            }
        }
    }
    Ok(out)
}

/// A link as the proxy cares about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// The bridge it is enslaved to.
    pub master: Option<u32>,
}

fn link_of(m: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut master = None;
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Controller(i) => master = Some(*i),
            _ => {}
        }
    }
    Link {
        index: m.header.index,
        name,
        master,
    }
}

/// Every link of the namespace.
pub async fn links(handle: &Handle) -> Result<Vec<Link>, NetError> {
    let messages: Vec<LinkMessage> =
        handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetError::Request {
                what: "list links".into(),
                source,
            })?;
    Ok(messages.iter().map(link_of).collect())
}

/// A change to a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Created or changed (a veth joining the bridge shows up as a change).
    Up(Link),
    /// Deleted.
    Gone(Link),
}

/// Link changes from now on (RTMGRP_LINK).
pub fn link_events() -> Result<impl Stream<Item = LinkEvent>, NetError> {
    let (mut connection, _handle, messages) =
        rtnetlink::new_connection().map_err(NetError::Socket)?;
    let group = rtnetlink::sys::SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK);
    connection
        .socket_mut()
        .socket_mut()
        .bind(&group)
        .map_err(NetError::Socket)?;
    tokio::spawn(connection);
    Ok(messages.filter_map(|(message, _)| async move {
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                Some(LinkEvent::Up(link_of(&m)))
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                Some(LinkEvent::Gone(link_of(&m)))
            }
            _ => None,
        }
    }))
}
