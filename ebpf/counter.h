/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map keys and values of the tc packet counter (tc_counter.bpf.c). The Rust twins live in
 * agent/src/ebpf/counter.rs and are checked against this layout (through the object's BTF) in a
 * test: change both together.
 */
#ifndef WINDLASS_COUNTER_H
#define WINDLASS_COUNTER_H

#include <linux/types.h>

/* Keys of wl_counters: one slot per direction. */
enum wl_direction {
	WL_DIR_INGRESS = 0,
	WL_DIR_EGRESS = 1,
	WL_DIR_MAX = 2,
};

/* Value of wl_counters (per CPU): packets and bytes seen in one direction. */
struct wl_counter {
	__u64 packets;
	__u64 bytes;
};

#endif /* WINDLASS_COUNTER_H */
