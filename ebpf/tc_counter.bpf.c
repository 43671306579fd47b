// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc packet counter: counts packets and bytes per direction on the interface it is attached to
 * and passes every packet on unchanged. The smallest real datapath program: it proves the build,
 * load, attach and map-read pipeline end to end.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "counter.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WL_DIR_MAX);
	__type(key, __u32);
	__type(value, struct wl_counter);
} wl_counters SEC(".maps");

/*
 * Kept out of line (a static BPF-to-BPF call) so that its enum parameter records
 * enum wl_direction in the object's BTF, where the Rust twin is checked against it.
 */
static __noinline int count(struct __sk_buff *skb, enum wl_direction dir)
{
	__u32 key = dir;
	struct wl_counter *c = bpf_map_lookup_elem(&wl_counters, &key);

	if (c) {
		/* per-CPU slot: no other CPU writes it, plain adds are enough */
		c->packets += 1;
		c->bytes += skb->len;
	}
	return TC_ACT_OK;
}

/* aya loads tc programs from SEC("classifier"), not SEC("tc") */
SEC("classifier")
int wl_count_ingress(struct __sk_buff *skb)
{
	return count(skb, WL_DIR_INGRESS);
}

SEC("classifier")
int wl_count_egress(struct __sk_buff *skb)
{
	return count(skb, WL_DIR_EGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
