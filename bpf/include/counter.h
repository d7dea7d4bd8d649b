/* SPDX-License-Identifier: GPL-2.0 */
/* What every counting data plane shares: how many packets and bytes a packet is on the wire (a
 * GSO/GRO packet at TC is several), and how a counter entry is created when several CPUs may create
 * it at once. Neither defines a map: flowtable.h (flows) and trafcount.bpf.c (addresses) bring
 * their own keys and values.
 *
 * Exact counts with several CPUs: a missing entry is created with BPF_NOEXIST holding the packet's
 * counts, never with BPF_ANY. With BPF_ANY two CPUs that both missed both write, and the second
 * write replaces the entry the first created, with whatever the first (and any CPU since) added to
 * it: counts lost. With BPF_NOEXIST the second gets -EEXIST, looks the entry up again and adds to
 * it (counter_insert() returns it for that).
 */
#ifndef BPFLAB_COUNTER_H
#define BPFLAB_COUNTER_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include "ctx.h"
#include "parse.h"

#define COUNTER_VLAN_TAG_LEN	4

/* Segments on the wire and their bytes: the Ethernet header to the end of the frame's padding,
 * the XDP frame (every fragment of a multi-buffer one), the skb's len at TC, never the linear part
 * alone. A GSO packet at TC egress (or a GRO one at TC ingress) of gso_segs segments is that many
 * packets on the wire, each with its own copy of the headers that end at @hdr_len: it counts as
 * gso_segs packets and len + (gso_segs - 1) * hdr_len bytes (TCP and UDP only: the stack segments
 * nothing else). At TC ingress the stack may have moved the VLAN tag into skb->vlan_tci: it was on
 * the wire, so it counts, once per segment.
 */
static __always_inline void counter_wire_size(const struct pkt_ctx *c, const struct flow *f,
					      __u32 hdr_len, __u32 *packets, __u32 *bytes)
{
	struct __sk_buff *skb = c->raw;
	__u32 segs;

	*packets = 1;
	if (c->xdp) {
		*bytes = bpf_xdp_get_buff_len(c->raw);
		return;
	}
	*bytes = skb->len;
	segs = skb->gso_segs;
	if (segs > 1 && (f->flags & FLOW_F_PORTS)) {
		*packets = segs;
		*bytes += (segs - 1) * hdr_len;
	}
	if (skb->vlan_present)
		*bytes += *packets * COUNTER_VLAN_TAG_LEN;
}

/* The same segments' IP bytes (the IPv4 total length, the IPv6 header and payload length): the
 * wire bytes less the link-layer header and padding. A GSO packet's IP header holds the whole
 * super-packet's length; each segment after the first repeats the IP and upper-layer headers.
 */
static __always_inline void counter_l3_size(const struct pkt_ctx *c, const struct flow *f,
					    __u32 hdr_len, __u32 *packets, __u32 *bytes)
{
	struct __sk_buff *skb = c->raw;
	__u32 segs;

	*packets = 1;
	*bytes = f->ip_end - f->l3_off;
	if (c->xdp)
		return;
	segs = skb->gso_segs;
	if (segs > 1 && (f->flags & FLOW_F_PORTS)) {
		*packets = segs;
		*bytes += (segs - 1) * (hdr_len - f->l3_off);
	}
}

enum counter_insert {
	COUNTER_CREATED,	/* the entry now holds the packet's counts: nothing more to add */
	COUNTER_RACED,		/* another CPU created it first: add to *entry */
	COUNTER_FULL,		/* no room: a hash's -E2BIG, an LRU's -ENOMEM */
	COUNTER_GONE,		/* created by another CPU, then gone (deleted, evicted) before the lookup */
};

/* After a lookup of @key in @table missed: create the entry as @init, which holds this packet's
 * counts, with BPF_NOEXIST (see the top of this file). On COUNTER_RACED, *entry is the entry another
 * CPU created, for the caller to add to as it adds to one it found.
 */
static __always_inline enum counter_insert counter_insert(void *table, const void *key,
							  const void *init, void **entry)
{
	long err;

	err = bpf_map_update_elem(table, key, init, BPF_NOEXIST);
	if (!err)
		return COUNTER_CREATED;
	if (err != -EEXIST)
		return COUNTER_FULL;
	*entry = bpf_map_lookup_elem(table, key);
	return *entry ? COUNTER_RACED : COUNTER_GONE;
}

#endif /* BPFLAB_COUNTER_H */
