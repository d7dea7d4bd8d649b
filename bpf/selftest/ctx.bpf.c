// SPDX-License-Identifier: GPL-2.0
/* The same two datapaths built for XDP and for TC through ctx.h, for the unit tests to run side by
 * side: VXLAN decapsulation (drops the outer headers, shrinking the head) and a VLAN tag push
 * (grows the head). Malformed frames are dropped; anything else passes untouched.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "ctx.h"
#include "parse.h"

#define PUSHED_VLAN_TCI	0x0064	/* VLAN 100, priority 0 */

static __always_inline int vxlan_decap(struct pkt_ctx *ctx)
{
	enum parse_status status;
	struct flow outer, inner;
	struct cursor c;
	void *frame;
	__u32 vni;

	/* Outer IPv6 with extension headers, UDP, VXLAN, inner Ethernet and IPv6: pull at most this. */
	if (ctx_pull(ctx, 256))
		return ctx_drop(ctx);
	ctx_cursor(ctx, &c);
	if (parse_flow(&c, &outer) != PARSE_OK)
		return ctx_drop(ctx);
	if (outer.l4_proto != IPPROTO_UDP || outer.dport != bpf_htons(VXLAN_PORT))
		return ctx_pass(ctx);
	frame = c.data;
	if (parse_vxlan(&c, &outer, &vni) != PARSE_OK)
		return ctx_drop(ctx);
	/* parse_vxlan() rebased the cursor on the inner frame: its start is what to cut up to. */
	if (ctx_adjust_head(ctx, c.data - frame))
		return ctx_drop(ctx);
	ctx_cursor(ctx, &c);
	status = parse_flow(&c, &inner);
	if (status != PARSE_OK && status != PARSE_NOT_IP)
		return ctx_drop(ctx);
	return ctx_pass(ctx);
}

SEC("xdp")
int decap_xdp(struct xdp_md *xdp)
{
	struct pkt_ctx ctx = ctx_xdp(xdp);

	return vxlan_decap(&ctx);
}

SEC("tc")
int decap_tc(struct __sk_buff *skb)
{
	struct pkt_ctx ctx = ctx_tc(skb);

	return vxlan_decap(&ctx);
}

static __always_inline int vlan_push(struct pkt_ctx *ctx)
{
	struct vlan_hdr *vlan;
	struct ethhdr *eth;
	void *data, *data_end;

	if (ctx_adjust_head(ctx, -(int)sizeof(*vlan)))
		return ctx_drop(ctx);
	data = ctx_data(ctx);
	data_end = ctx_data_end(ctx);
	/* The MAC addresses move to the new front; the old ethertype stays where it was and becomes
	 * the tag's encapsulated protocol.
	 */
	eth = data;
	vlan = data + 2 * ETH_ALEN + sizeof(__be16);
	if ((void *)(vlan + 1) > data_end)
		return ctx_drop(ctx);
	__builtin_memmove(eth->h_dest, data + sizeof(*vlan), 2 * ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_8021Q);
	vlan->tci = bpf_htons(PUSHED_VLAN_TCI);
	return ctx_pass(ctx);
}

SEC("xdp")
int vlan_push_xdp(struct xdp_md *xdp)
{
	struct pkt_ctx ctx = ctx_xdp(xdp);

	return vlan_push(&ctx);
}

SEC("tc")
int vlan_push_tc(struct __sk_buff *skb)
{
	struct pkt_ctx ctx = ctx_tc(skb);

	return vlan_push(&ctx);
}

char LICENSE[] SEC("license") = "GPL";
