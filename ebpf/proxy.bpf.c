// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The service proxy's datapath (kube-proxy's job), in two families of programs sharing the maps
 * of proxy.h:
 *
 * - Socket load balancing (cgroup/connect4, sendmsg4, recvmsg4, getpeername4) on the node's
 *   cgroup v2 directory: a connect or sendto to a service address is rewritten to a backend
 *   before any packet exists, and recvmsg/getpeername show the service address again. No
 *   per-packet work, no conntrack.
 * - Per-packet NAT (tc, "classifier") for what no socket hook saw: NodePort traffic from other
 *   nodes on the uplink (Maglev choice, SNAT when the backend is remote and
 *   externalTrafficPolicy is Cluster) and traffic of pods outside the cgroup on their veths.
 *   Each flow gets two wl_lb_ct entries, one per direction, saying what to rewrite a packet to.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "proxy.h"

#define ECONNREFUSED 111
#define NSEC_PER_SEC 1000000000ULL

/* ---- maps (pinned by name under the node's pin dir, so they outlive the agent) ---- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WL_MAX_FRONTEND_SLOTS);
	__type(key, struct wl_svc_key);
	__type(value, struct wl_svc_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wl_lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WL_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct wl_backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wl_lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WL_SOCK_ENTRIES);
	__type(key, struct wl_sock_key);
	__type(value, struct wl_sock_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wl_lb_sock_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WL_AFFINITY_ENTRIES);
	__type(key, struct wl_affinity_key);
	__type(value, struct wl_affinity_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wl_lb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WL_CT_ENTRIES);
	__type(key, struct wl_ct_key);
	__type(value, struct wl_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wl_lb_ct SEC(".maps");

/* Addresses of this node that NodePorts answer on (value unused). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __be32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wl_lb_node_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wl_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wl_lb_config SEC(".maps");

/* New connections (and first datagrams) per service id. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WL_MAX_SERVICE_IDS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wl_lb_metrics SEC(".maps");

/* One Maglev lookup table per service id: an inner array with a single M-entry value. */
struct wl_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32[WL_MAGLEV_M]);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, WL_MAX_SERVICE_IDS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct wl_maglev_inner);
} wl_lb_maglev SEC(".maps");

/* ---- shared pieces ---- */

/* Keeps the enums in the object's BTF, where the Rust twins are checked against them. */
static __noinline int wl_proxy_types(enum wl_scope scope, enum wl_svc_flags f,
				     enum wl_backend_flags b)
{
	return scope + f + b;
}

static __always_inline struct wl_config *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&wl_lb_config, &zero);
}

static __always_inline void count_connection(__u16 service_id)
{
	__u32 key = service_id;
	__u64 *n = bpf_map_lookup_elem(&wl_lb_metrics, &key);

	if (n)
		*n += 1;
}

/*
 * Finds the frontend for (address, port, proto) in scope: the address itself, or a NodePort
 * when the address is one of the node's (loopback only when allow_loopback).
 */
static __always_inline struct wl_svc_value *lookup_frontend(struct wl_svc_key *key, __be32 address,
							     __be16 port, __u8 proto, __u8 scope,
							     int allow_loopback)
{
	struct wl_svc_value *svc;

	__builtin_memset(key, 0, sizeof(*key));
	key->address = address;
	key->port = port;
	key->proto = proto;
	key->scope = scope;
	svc = bpf_map_lookup_elem(&wl_lb_services, key);
	if (svc)
		return svc;
	if (bpf_map_lookup_elem(&wl_lb_node_addrs, &address) ||
	    (allow_loopback && address == bpf_htonl(0x7f000001))) {
		key->address = 0;
		return bpf_map_lookup_elem(&wl_lb_services, key);
	}
	return NULL;
}

static __always_inline struct wl_backend *backend_in_slot(struct wl_svc_key *key, __u16 slot,
							  __u32 *id)
{
	struct wl_svc_value *v;

	key->slot = slot;
	v = bpf_map_lookup_elem(&wl_lb_services, key);
	key->slot = 0;
	if (!v)
		return NULL;
	*id = v->backend_id;
	return bpf_map_lookup_elem(&wl_lb_backends, id);
}

/* The remembered backend of an affinity client, if it is recent and still exists. */
static __always_inline struct wl_backend *affinity_backend(struct wl_svc_value *svc,
							   struct wl_affinity_key *akey, __u32 *id)
{
	struct wl_affinity_value *a = bpf_map_lookup_elem(&wl_lb_affinity, akey);

	if (!a)
		return NULL;
	if (bpf_ktime_get_ns() - a->last_used_ns > (__u64)svc->affinity_timeout * NSEC_PER_SEC)
		return NULL;
	*id = a->backend_id;
	return bpf_map_lookup_elem(&wl_lb_backends, id);
}

static __always_inline void affinity_remember(struct wl_affinity_key *akey, __u32 id)
{
	struct wl_affinity_value a = {
		.backend_id = id,
		.last_used_ns = bpf_ktime_get_ns(),
	};

	bpf_map_update_elem(&wl_lb_affinity, akey, &a, BPF_ANY);
}

/*
 * Picks a backend of the frontend in key/svc: the affinity client's remembered one, else a
 * Maglev slot when hash is given and the service has a table, else a random slot.
 */
static __always_inline struct wl_backend *pick_backend(struct wl_svc_key *key,
						       struct wl_svc_value *svc, __u64 client,
						       __u8 from_socket, int use_maglev, __u32 hash,
						       __u32 *id)
{
	struct wl_affinity_key akey = {
		.client = client,
		.service_id = svc->service_id,
		.from_socket = from_socket,
	};
	struct wl_backend *b = NULL;
	__u16 count = svc->count;

	if (count == 0)
		return NULL;
	if (svc->flags & WL_SVC_AFFINITY) {
		b = affinity_backend(svc, &akey, id);
		if (b) {
			affinity_remember(&akey, *id);
			return b;
		}
	}
	if (use_maglev && (svc->flags & WL_SVC_MAGLEV)) {
		__u32 sid = svc->service_id;
		__u32 zero = 0;
		void *inner = bpf_map_lookup_elem(&wl_lb_maglev, &sid);

		if (inner) {
			__u32 *table = bpf_map_lookup_elem(inner, &zero);

			if (table) {
				__u32 index = hash % WL_MAGLEV_M;

				/* keep the bound check the compiler would drop */
				asm volatile("" : "+r"(index));
				if (index < WL_MAGLEV_M) {
					*id = table[index];
					b = bpf_map_lookup_elem(&wl_lb_backends, id);
				}
			}
		}
	}
	if (!b)
		b = backend_in_slot(key, (__u16)(bpf_get_prandom_u32() % count) + 1, id);
	if (b && (svc->flags & WL_SVC_AFFINITY))
		affinity_remember(&akey, *id);
	return b;
}

/* ---- socket load balancing ---- */

static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol == IPPROTO_TCP || ctx->protocol == IPPROTO_UDP)
		return ctx->protocol;
	return 0;
}

/* 1: translated or not a service; 0: a service with no backend (refused). */
static __always_inline int sock4_translate(struct bpf_sock_addr *ctx)
{
	struct wl_svc_key key;
	struct wl_svc_value *svc;
	struct wl_backend *b;
	struct wl_config *cfg;
	__u8 proto = sock_proto(ctx);
	__be32 address = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	__u64 netns = bpf_get_netns_cookie(ctx);
	int loopback_ok;
	__u32 id = 0;

	if (!proto)
		return 1;
	cfg = config();
	loopback_ok = cfg && cfg->host_netns_cookie == netns;
	svc = lookup_frontend(&key, address, port, proto, WL_SCOPE_INTERNAL, loopback_ok);
	if (!svc)
		return 1;
	b = pick_backend(&key, svc, netns, 1, 0, 0, &id);
	if (!b)
		return 0;

	struct wl_sock_key skey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = b->address,
		.port = b->port,
		.proto = proto,
	};
	struct wl_sock_value sval = {
		.address = address,
		.port = port,
		.service_id = svc->service_id,
	};
	struct wl_sock_value *old = bpf_map_lookup_elem(&wl_lb_sock_revnat, &skey);

	if (!old || old->address != address || old->port != port) {
		bpf_map_update_elem(&wl_lb_sock_revnat, &skey, &sval, BPF_ANY);
		count_connection(svc->service_id);
	}
	ctx->user_ip4 = b->address;
	ctx->user_port = (__u32)b->port;
	return 1;
}

/* Shows the service address to the application again. */
static __always_inline void sock4_reverse(struct bpf_sock_addr *ctx)
{
	__u8 proto = sock_proto(ctx);
	struct wl_sock_key skey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
		.proto = proto,
	};
	struct wl_sock_value *v;

	if (!proto)
		return;
	v = bpf_map_lookup_elem(&wl_lb_sock_revnat, &skey);
	if (!v)
		return;
	ctx->user_ip4 = v->address;
	ctx->user_port = (__u32)v->port;
}

SEC("cgroup/connect4")
int wl_sock4_connect(struct bpf_sock_addr *ctx)
{
	if (sock4_translate(ctx))
		return 1;
	/* A service without endpoints: refuse at once, as a closed port would. */
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

SEC("cgroup/sendmsg4")
int wl_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	if (sock4_translate(ctx))
		return 1;
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

SEC("cgroup/recvmsg4")
int wl_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_reverse(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int wl_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_reverse(ctx);
	return 1;
}

/* ---- per-packet NAT ---- */

/* jhash's final mix over three words (Bob Jenkins), with a fixed seed so every node agrees. */
#define WL_ROL32(v, s) (((v) << (s)) | ((v) >> (32 - (s))))
static __always_inline __u32 flow_hash(__u32 a, __u32 b, __u32 c)
{
	a += 0xdeadbeef + 12;
	b += 0xdeadbeef + 12;
	c += 0xdeadbeef + 12;
	c ^= b;
	c -= WL_ROL32(b, 14);
	a ^= c;
	a -= WL_ROL32(c, 11);
	b ^= a;
	b -= WL_ROL32(a, 25);
	c ^= b;
	c -= WL_ROL32(b, 16);
	a ^= c;
	a -= WL_ROL32(c, 4);
	b ^= a;
	b -= WL_ROL32(a, 14);
	c ^= b;
	c -= WL_ROL32(b, 24);
	return c;
}

struct flow {
	__u32 l3;
	__u32 l4;
	__u32 csum_off;
	__u64 csum_flags;
	struct wl_ct_key tuple;
};

/* Parses an unfragmented IPv4 TCP/UDP packet behind an Ethernet header. */
static __always_inline int parse(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__be16 *ports;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl < 5)
		return 0;
	if (ip->frag_off & bpf_htons(0x3fff))
		return 0;
	if (ip->protocol == IPPROTO_TCP) {
		f->csum_off = offsetof(struct tcphdr, check);
		f->csum_flags = 0;
	} else if (ip->protocol == IPPROTO_UDP) {
		f->csum_off = offsetof(struct udphdr, check);
		f->csum_flags = BPF_F_MARK_MANGLED_0;
	} else {
		return 0;
	}
	f->l3 = sizeof(*eth);
	f->l4 = f->l3 + ip->ihl * 4;
	ports = data + f->l4;
	if ((void *)(ports + 2) > data_end)
		return 0;
	__builtin_memset(&f->tuple, 0, sizeof(f->tuple));
	f->tuple.saddr = ip->saddr;
	f->tuple.daddr = ip->daddr;
	f->tuple.sport = ports[0];
	f->tuple.dport = ports[1];
	f->tuple.proto = ip->protocol;
	return 1;
}

static __always_inline int rewrite_addr(struct __sk_buff *skb, struct flow *f, __u32 field,
					__be32 from, __be32 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, f->l4 + f->csum_off, from, to,
				f->csum_flags | BPF_F_PSEUDO_HDR | sizeof(to)))
		return -1;
	if (bpf_l3_csum_replace(skb, f->l3 + offsetof(struct iphdr, check), from, to, sizeof(to)))
		return -1;
	return bpf_skb_store_bytes(skb, f->l3 + field, &to, sizeof(to), 0);
}

static __always_inline int rewrite_port(struct __sk_buff *skb, struct flow *f, __u32 field,
					__be16 from, __be16 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, f->l4 + f->csum_off, from, to, f->csum_flags | sizeof(to)))
		return -1;
	return bpf_skb_store_bytes(skb, f->l4 + field, &to, sizeof(to), 0);
}

static __always_inline int apply(struct __sk_buff *skb, struct flow *f, struct wl_ct_value *nat)
{
	if (rewrite_addr(skb, f, offsetof(struct iphdr, saddr), f->tuple.saddr, nat->saddr) ||
	    rewrite_addr(skb, f, offsetof(struct iphdr, daddr), f->tuple.daddr, nat->daddr) ||
	    rewrite_port(skb, f, 0, f->tuple.sport, nat->sport) ||
	    rewrite_port(skb, f, 2, f->tuple.dport, nat->dport))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/*
 * A packet entering the node's stack from a pod (from_uplink 0) or another node (1): continues
 * a known flow, or starts one when it is addressed to a service.
 */
static __always_inline int tc_lb(struct __sk_buff *skb, int from_uplink)
{
	struct flow f;
	struct wl_ct_value *known;
	struct wl_svc_key key;
	struct wl_svc_value *svc;
	struct wl_backend *b;
	struct wl_config *cfg;
	__u32 id = 0;
	__u8 scope = from_uplink ? WL_SCOPE_EXTERNAL : WL_SCOPE_INTERNAL;

	if (!parse(skb, &f))
		return TC_ACT_OK;
	known = bpf_map_lookup_elem(&wl_lb_ct, &f.tuple);
	if (known) {
		struct wl_ct_value nat = *known;

		return apply(skb, &f, &nat);
	}
	svc = lookup_frontend(&key, f.tuple.daddr, f.tuple.dport, f.tuple.proto, scope, 0);
	if (!svc)
		return TC_ACT_OK;
	b = pick_backend(&key, svc, f.tuple.saddr, 0, from_uplink,
			 flow_hash(f.tuple.saddr, f.tuple.daddr,
				   ((__u32)f.tuple.sport << 16 | f.tuple.dport) ^ f.tuple.proto),
			 &id);
	if (!b)
		return TC_ACT_SHOT;

	struct wl_ct_value forward = {
		.saddr = f.tuple.saddr,
		.daddr = b->address,
		.sport = f.tuple.sport,
		.dport = b->port,
		.service_id = svc->service_id,
	};
	cfg = config();
	if (from_uplink && !(b->flags & WL_BACKEND_LOCAL) && !(svc->flags & WL_SVC_EXT_LOCAL) &&
	    cfg && cfg->snat_address)
		forward.saddr = cfg->snat_address;
	/*
	 * A pod reaching itself through the service: its reply would stay inside the pod and
	 * never be translated back, so the request comes from a link-local address (as Cilium's
	 * hairpin does), whose reply leaves the pod through its veth.
	 */
	if (!from_uplink && b->address == f.tuple.saddr)
		forward.saddr = bpf_htonl(WL_HAIRPIN_ADDRESS);

	struct wl_ct_key reply_key = {
		.saddr = forward.daddr,
		.daddr = forward.saddr,
		.sport = forward.dport,
		.dport = forward.sport,
		.proto = f.tuple.proto,
	};
	/* Another flow SNATed to the same source port: move this one to a free port. */
	if (forward.saddr != f.tuple.saddr) {
		for (int i = 0; i < 4; i++) {
			if (!bpf_map_lookup_elem(&wl_lb_ct, &reply_key))
				break;
			forward.sport = bpf_htons(32768 + bpf_get_prandom_u32() % 28232);
			reply_key.dport = forward.sport;
		}
	}
	struct wl_ct_value reply = {
		.saddr = f.tuple.daddr,
		.daddr = f.tuple.saddr,
		.sport = f.tuple.dport,
		.dport = f.tuple.sport,
		.service_id = svc->service_id,
		.reply = 1,
	};
	if (bpf_map_update_elem(&wl_lb_ct, &reply_key, &reply, BPF_ANY) ||
	    bpf_map_update_elem(&wl_lb_ct, &f.tuple, &forward, BPF_ANY))
		return TC_ACT_SHOT;
	count_connection(svc->service_id);
	return apply(skb, &f, &forward);
}

SEC("classifier")
int wl_tc_from_pod(struct __sk_buff *skb)
{
	return tc_lb(skb, 0);
}

SEC("classifier")
int wl_tc_from_uplink(struct __sk_buff *skb)
{
	return tc_lb(skb, 1);
}

/* Never attached: records the enums' BTF (see wl_proxy_types). */
SEC("classifier")
int wl_proxy_btf_anchor(struct __sk_buff *skb)
{
	return wl_proxy_types((enum wl_scope)skb->mark, (enum wl_svc_flags)skb->priority,
			      (enum wl_backend_flags)skb->len);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
