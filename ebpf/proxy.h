/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The service proxy's maps: every key and value struct the datapath (proxy.bpf.c) and the agent
 * (agent/src/node/proxy/maps.rs, whose #[repr(C)] twins are checked against this file's BTF)
 * share. Addresses and ports are in network byte order, as the packet and the socket carry them.
 *
 * A service port is a set of frontends (ClusterIP, each node address for a NodePort, external
 * IPs), each in one or two scopes. A frontend's slot 0 in wl_lb_services holds its backend
 * count and flags; slots 1..count hold backend ids, looked up in wl_lb_backends. The agent
 * writes backends first, then slots, then slot 0, and shrinks in the reverse order, so a reader
 * never follows a slot to nothing.
 */
#ifndef WL_PROXY_H
#define WL_PROXY_H

#include <linux/types.h>

/* Maglev table size per service (a prime; Cilium's default). */
#define WL_MAGLEV_M 16381
#define WL_MAX_FRONTEND_SLOTS 524288
#define WL_MAX_BACKENDS 262144
#define WL_MAX_SERVICE_IDS 65536
#define WL_CT_ENTRIES 262144
#define WL_SOCK_ENTRIES 262144
#define WL_AFFINITY_ENTRIES 65536
/* Source of a pod's own hairpinned requests: 169.254.42.1 (Cilium uses the same). */
#define WL_HAIRPIN_ADDRESS 0xa9fe2a01

/* Which traffic a frontend entry serves. */
enum wl_scope {
	/* From outside the node (tc on the uplink): externalTrafficPolicy applies. */
	WL_SCOPE_EXTERNAL = 0,
	/* From the node and its pods (socket hooks, tc on pod veths): internalTrafficPolicy. */
	WL_SCOPE_INTERNAL = 1,
};

/* Slot 0 flags. */
enum wl_svc_flags {
	/* Address 0: matches any address in wl_lb_node_addrs (and 127.0.0.1 in the host netns). */
	WL_SVC_NODEPORT = 1,
	/* ClientIP session affinity; affinity_timeout holds its timeout in seconds. */
	WL_SVC_AFFINITY = 2,
	/* externalTrafficPolicy Local: only local backends, the client address is kept. */
	WL_SVC_EXT_LOCAL = 4,
	/* A Maglev table for this service id is in wl_lb_maglev. */
	WL_SVC_MAGLEV = 8,
};

/* Backend flags. */
enum wl_backend_flags {
	/* The backend runs on this node (no SNAT needed from the uplink). */
	WL_BACKEND_LOCAL = 1,
	/* Serving but terminating: used only because no ready backend is left. */
	WL_BACKEND_TERMINATING = 2,
};

/* wl_lb_services key: one frontend slot. */
struct wl_svc_key {
	__be32 address; /* the frontend address; 0 for a NodePort */
	__be16 port;
	__u16 slot; /* 0: the frontend itself; 1..count: its backends */
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 scope; /* enum wl_scope */
	__u8 pad[2];
};

/* wl_lb_services value. */
struct wl_svc_value {
	__u32 backend_id; /* slot > 0: the backend's id in wl_lb_backends */
	__u16 count; /* slot 0: how many backend slots follow (0: refuse) */
	__u16 service_id; /* slot 0: the service port's id (metrics, affinity, Maglev) */
	__u32 affinity_timeout; /* slot 0: seconds, with WL_SVC_AFFINITY */
	__u8 flags; /* slot 0: enum wl_svc_flags */
	__u8 pad[3];
};

/* wl_lb_backends value, keyed by a __u32 backend id (never 0). */
struct wl_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags; /* enum wl_backend_flags */
};

/*
 * wl_lb_sock_revnat: what a connected or sending socket was translated to, so recvmsg and
 * getpeername show the service address. Keyed by the socket cookie and the backend.
 */
struct wl_sock_key {
	__u64 cookie;
	__be32 address; /* backend */
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct wl_sock_value {
	__be32 address; /* frontend */
	__be16 port;
	__u16 service_id;
};

/*
 * wl_lb_affinity: ClientIP session affinity. The client is the network namespace cookie for
 * the socket hooks (the client address is not known at connect) and the IPv4 source address
 * on the tc path.
 */
struct wl_affinity_key {
	__u64 client;
	__u16 service_id;
	__u8 from_socket; /* 1: client is a netns cookie */
	__u8 pad[5];
};

struct wl_affinity_value {
	__u32 backend_id;
	__u32 pad;
	__u64 last_used_ns; /* bpf_ktime_get_ns() */
};

/* wl_lb_ct: the tc path's conntrack, one entry per direction of a flow. */
struct wl_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* What to rewrite a packet with this tuple to (an unchanged field keeps its value). */
struct wl_ct_value {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u16 service_id;
	__u8 reply; /* 1: the reply direction (reverse NAT) */
	__u8 pad;
};

/* wl_lb_config (array, index 0): node-wide settings the agent writes. */
struct wl_config {
	__u64 host_netns_cookie; /* 127.0.0.1 is a NodePort address only in this netns */
	__be32 snat_address; /* the node address remote-backend SNAT uses */
	__u32 pad;
};

#endif /* WL_PROXY_H */
