//! Rust twins of `ebpf/proxy.h`: the service proxy's map keys and values, in the byte order the
//! datapath uses (addresses and ports in network order), with tests checking each one against
//! the C layout in the object's BTF.

#![allow(unsafe_code)] // `aya::Pod` is an unsafe marker trait; see the SAFETY notes below

use std::net::Ipv4Addr;

/// Maglev table size per service (`WL_MAGLEV_M`).
pub const MAGLEV_M: usize = 16381;

/// Map names in `proxy.bpf.c`, pinned by name under the node's pin dir.
pub mod map_names {
    /// Frontend slots ([`super::SvcKey`] → [`super::SvcValue`]).
    pub const SERVICES: &str = "wl_lb_services";
    /// Backends by id (`u32` → [`super::Backend`]).
    pub const BACKENDS: &str = "wl_lb_backends";
    /// Socket reverse translation ([`super::SockKey`] → [`super::SockValue`]).
    pub const SOCK_REVNAT: &str = "wl_lb_sock_revnat";
    /// Session affinity ([`super::AffinityKey`] → [`super::AffinityValue`]).
    pub const AFFINITY: &str = "wl_lb_affinity";
    /// The tc path's conntrack ([`super::CtKey`] → [`super::CtValue`]).
    pub const CT: &str = "wl_lb_ct";
    /// NodePort addresses (`u32` in network order → `u32`).
    pub const NODE_ADDRS: &str = "wl_lb_node_addrs";
    /// Node settings (index 0 → [`super::Config`]).
    pub const CONFIG: &str = "wl_lb_config";
    /// New connections per service id (per CPU `u64`).
    pub const METRICS: &str = "wl_lb_metrics";
    /// Maglev tables by service id (hash of maps).
    pub const MAGLEV: &str = "wl_lb_maglev";
    /// Every map, for pin-dir cleanup and dumps.
    pub const ALL: &[&str] = &[
        SERVICES,
        BACKENDS,
        SOCK_REVNAT,
        AFFINITY,
        CT,
        NODE_ADDRS,
        CONFIG,
        METRICS,
        MAGLEV,
    ];
}

/// `enum wl_scope`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Scope {
    /// Traffic from outside the node (tc on the uplink).
    External = 0,
    /// Traffic from the node and its pods (socket hooks, pod veths).
    Internal = 1,
}

impl Scope {
    /// From the map's byte.
    pub fn from_u8(v: u8) -> Option<Scope> {
        match v {
            0 => Some(Scope::External),
            1 => Some(Scope::Internal),
            _ => None,
        }
    }

    /// `internal` / `external`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::External => "external",
            Scope::Internal => "internal",
        }
    }
}

/// `enum wl_svc_flags`.
pub mod svc_flags {
    /// Address 0 matches the node's addresses.
    pub const NODEPORT: u8 = 1;
    /// ClientIP session affinity.
    pub const AFFINITY: u8 = 2;
    /// externalTrafficPolicy Local.
    pub const EXT_LOCAL: u8 = 4;
    /// A Maglev table exists.
    pub const MAGLEV: u8 = 8;
}

/// `enum wl_backend_flags`.
pub mod backend_flags {
    /// The backend runs on this node.
    pub const LOCAL: u8 = 1;
    /// Serving but terminating (the fallback set).
    pub const TERMINATING: u8 = 2;
}

/// `struct wl_svc_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    /// Frontend address, network order (0 for a NodePort).
    pub address: u32,
    /// Port, network order.
    pub port: u16,
    /// 0 for the frontend, 1.. for its backends.
    pub slot: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`Scope`] as a byte.
    pub scope: u8,
    /// Padding (zero).
    pub pad: [u8; 2],
}

/// `struct wl_svc_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcValue {
    /// Slot > 0: the backend id.
    pub backend_id: u32,
    /// Slot 0: the number of backend slots.
    pub count: u16,
    /// Slot 0: the service port's id.
    pub service_id: u16,
    /// Slot 0: affinity timeout in seconds.
    pub affinity_timeout: u32,
    /// Slot 0: [`svc_flags`].
    pub flags: u8,
    /// Padding (zero).
    pub pad: [u8; 3],
}

/// `struct wl_backend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Address, network order.
    pub address: u32,
    /// Port, network order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`backend_flags`].
    pub flags: u8,
}

/// `struct wl_sock_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockKey {
    /// Socket cookie.
    pub cookie: u64,
    /// Backend address, network order.
    pub address: u32,
    /// Backend port, network order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Padding.
    pub pad: u8,
}

/// `struct wl_sock_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockValue {
    /// Frontend address, network order.
    pub address: u32,
    /// Frontend port, network order.
    pub port: u16,
    /// Service id.
    pub service_id: u16,
}

/// `struct wl_affinity_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityKey {
    /// netns cookie (socket hooks) or client address (tc).
    pub client: u64,
    /// Service id.
    pub service_id: u16,
    /// 1 when `client` is a netns cookie.
    pub from_socket: u8,
    /// Padding.
    pub pad: [u8; 5],
}

/// `struct wl_affinity_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    /// The remembered backend.
    pub backend_id: u32,
    /// Padding.
    pub pad: u32,
    /// Last use, `bpf_ktime_get_ns()`.
    pub last_used_ns: u64,
}

/// `struct wl_ct_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtKey {
    /// Source address, network order.
    pub saddr: u32,
    /// Destination address, network order.
    pub daddr: u32,
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Padding.
    pub pad: [u8; 3],
}

/// `struct wl_ct_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// New source address.
    pub saddr: u32,
    /// New destination address.
    pub daddr: u32,
    /// New source port.
    pub sport: u16,
    /// New destination port.
    pub dport: u16,
    /// Service id.
    pub service_id: u16,
    /// 1 for the reply direction.
    pub reply: u8,
    /// Padding.
    pub pad: u8,
}

/// `struct wl_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The node netns's cookie (where 127.0.0.1 is a NodePort address).
    pub host_netns_cookie: u64,
    /// SNAT address for remote backends, network order.
    pub snat_address: u32,
    /// Padding.
    pub pad: u32,
}

// SAFETY: every type below is `repr(C)`, made only of integers and byte arrays, with explicit
// padding fields, so any bit pattern the kernel returns is a valid value and no byte is
// uninitialised when one is written.
unsafe impl aya::Pod for SvcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcValue {}
// SAFETY: as above.
unsafe impl aya::Pod for Backend {}
// SAFETY: as above.
unsafe impl aya::Pod for SockKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SockValue {}
// SAFETY: as above.
unsafe impl aya::Pod for AffinityKey {}
// SAFETY: as above.
unsafe impl aya::Pod for AffinityValue {}
// SAFETY: as above.
unsafe impl aya::Pod for CtKey {}
// SAFETY: as above.
unsafe impl aya::Pod for CtValue {}
// SAFETY: as above.
unsafe impl aya::Pod for Config {}

/// An address as the map holds it (network order in a native `u32`).
pub fn addr_to_map(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The address a map's `u32` holds.
pub fn addr_from_map(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// A port as the map holds it.
pub fn port_to_map(port: u16) -> u16 {
    port.to_be()
}

/// The port a map's `u16` holds.
pub fn port_from_map(v: u16) -> u16 {
    u16::from_be(v)
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::ebpf::btf_layout::{assert_enum, assert_struct};
    use crate::ebpf::objects::PROXY;

    macro_rules! twin {
        ($c:literal, $t:ty, [$($f:ident),*]) => {
            assert_struct(PROXY, $c, size_of::<$t>(), &[$((stringify!($f), offset_of!($t, $f))),*]);
        };
    }

    #[test]
    fn structs_match_c_layout() {
        twin!(
            "wl_svc_key",
            SvcKey,
            [address, port, slot, proto, scope, pad]
        );
        twin!(
            "wl_svc_value",
            SvcValue,
            [backend_id, count, service_id, affinity_timeout, flags, pad]
        );
        twin!("wl_backend", Backend, [address, port, proto, flags]);
        twin!("wl_sock_key", SockKey, [cookie, address, port, proto, pad]);
        twin!("wl_sock_value", SockValue, [address, port, service_id]);
        twin!(
            "wl_affinity_key",
            AffinityKey,
            [client, service_id, from_socket, pad]
        );
        twin!(
            "wl_affinity_value",
            AffinityValue,
            [backend_id, pad, last_used_ns]
        );
        twin!("wl_ct_key", CtKey, [saddr, daddr, sport, dport, proto, pad]);
        twin!(
            "wl_ct_value",
            CtValue,
            [saddr, daddr, sport, dport, service_id, reply, pad]
        );
        twin!("wl_config", Config, [host_netns_cookie, snat_address, pad]);
    }

    #[test]
    fn enums_match_c() {
        assert_enum(
            PROXY,
            "wl_scope",
            &[
                ("WL_SCOPE_EXTERNAL", Scope::External as u32),
                ("WL_SCOPE_INTERNAL", Scope::Internal as u32),
            ],
        );
        assert_enum(
            PROXY,
            "wl_svc_flags",
            &[
                ("WL_SVC_NODEPORT", svc_flags::NODEPORT.into()),
                ("WL_SVC_AFFINITY", svc_flags::AFFINITY.into()),
                ("WL_SVC_EXT_LOCAL", svc_flags::EXT_LOCAL.into()),
                ("WL_SVC_MAGLEV", svc_flags::MAGLEV.into()),
            ],
        );
        assert_enum(
            PROXY,
            "wl_backend_flags",
            &[
                ("WL_BACKEND_LOCAL", backend_flags::LOCAL.into()),
                ("WL_BACKEND_TERMINATING", backend_flags::TERMINATING.into()),
            ],
        );
    }

    #[test]
    fn byte_order_round_trips() {
        let ip = Ipv4Addr::new(10, 96, 0, 10);
        assert_eq!(addr_to_map(ip).to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(addr_from_map(addr_to_map(ip)), ip);
        assert_eq!(port_to_map(80).to_ne_bytes(), [0, 80]);
        assert_eq!(port_from_map(port_to_map(8080)), 8080);
    }
}
