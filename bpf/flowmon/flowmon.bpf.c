// SPDX-License-Identifier: GPL-2.0
/* Flow metrics: per 5-tuple (with interface and direction) packets, bytes, first and last seen, the
 * TCP flags seen and the first SYN and FIN times, at XDP ingress, TC ingress and TC egress, in the
 * storage chosen at load (flowtable.h). One datapath for the three hooks (ctx.h); every frame is
 * passed. Frames that do not parse to IP are counted in `unparsed` by parse status.
 *
 * Bytes are the packet's length on the wire: the XDP frame (every fragment of a multi-buffer one),
 * the skb's len at TC, never the linear part alone (data_end - data). A GSO packet at TC egress (or a
 * GRO one at TC ingress) is gso_segs packets on the wire, each with its own copy of the headers: it
 * counts as gso_segs packets and len + (gso_segs - 1) * headers bytes. At TC ingress the stack may
 * have taken the VLAN tag out of the frame into skb->vlan_tci: it was on the wire, so it counts
 * (counter_wire_size(), counter.h, shared with the traffic counter).
 *
 * The control plane (bpf/flowmon/flowmon.py) sets the storage and sizes and reads every struct from
 * this object's BTF.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "counter.h"
#include "ctx.h"
#include "flowtable.h"
#include "parse.h"
#include "unparsed.h"

/* What the loader chose, pinned with the maps so that a later reader knows what it reads. */
struct flowmon_config {
	__u32 storage;		/* enum flow_storage */
	__u32 full;		/* enum flow_full */
	__u32 entries;		/* of the flow table (or each slot array) */
	__u32 ring_bytes;
	__u32 owner_pid;	/* the process attached and counting; 0: none */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flowmon_config);
} config SEC(".maps");

enum flow_direction unused_flow_direction __attribute__((unused));

static __always_inline __u8 tcp_flags_of(const struct cursor *cur, const struct flow *f)
{
	__u8 *flags;

	if (f->l4_proto != IPPROTO_TCP || !(f->flags & FLOW_F_PORTS))
		return 0;
	flags = cursor_ptr(cur, f->l4_off + 13, 1);	/* CWR ECE URG ACK PSH RST SYN FIN */
	return flags ? *flags : 0;
}

static __always_inline int flowmon(const struct pkt_ctx *c, __u8 direction)
{
	struct flow_packet p = {};
	enum parse_status status;
	struct cursor cur;
	struct flow f;
	__u32 ifindex;

	ctx_cursor(c, &cur);
	status = parse_flow(&cur, &f);
	if (status != PARSE_OK) {
		count_unparsed(status);
		return ctx_pass(c);
	}
	counter_wire_size(c, &f, cursor_off(&cur), &p.packets, &p.bytes);
	p.tcp_flags = tcp_flags_of(&cur, &f);
	if (c->xdp)
		ifindex = ((struct xdp_md *)c->raw)->ingress_ifindex;
	else
		ifindex = ((struct __sk_buff *)c->raw)->ifindex;
	flow_count(&f, ifindex, direction, &p);
	return ctx_pass(c);
}

SEC("xdp")
int flowmon_xdp(struct xdp_md *ctx)
{
	struct pkt_ctx c = ctx_xdp(ctx);

	return flowmon(&c, FLOW_DIR_INGRESS);
}

SEC("tc")
int flowmon_tc_ingress(struct __sk_buff *skb)
{
	struct pkt_ctx c = ctx_tc(skb);

	return flowmon(&c, FLOW_DIR_INGRESS);
}

SEC("tc")
int flowmon_tc_egress(struct __sk_buff *skb)
{
	struct pkt_ctx c = ctx_tc(skb);

	return flowmon(&c, FLOW_DIR_EGRESS);
}

char LICENSE[] SEC("license") = "GPL";
