// SPDX-License-Identifier: GPL-2.0
/* Runs the shared parsers on a test packet and leaves everything they found in `results`, for the
 * unit tests to compare with a Python reference: the flow, the inner flow of a VXLAN packet, the
 * Toeplitz hashes of the flow (through the table in `rss_table`) and the IPv4 header checksum.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "csum.h"
#include "parse.h"
#include "toeplitz.h"

struct parse_result {
	__u32 status;		/* enum parse_status */
	__u32 is_vxlan;		/* UDP to VXLAN_PORT: vxlan_status and inner are set */
	__u32 vxlan_status;	/* parse_vxlan(), then parse_flow() on the inner frame */
	__u32 vni;
	__u32 rss;		/* with ports when the flow has them */
	__u32 rss_l3;		/* addresses only */
	__s32 ipv4_csum;	/* ipv4_csum() of the IPv4 header: 0 when valid */
	__u32 payload_off;	/* where the cursor stopped */
	struct flow flow;
	struct flow inner;
};

/* The result holds statuses and flags as plain integers, so nothing emitted uses the enums: these
 * unused globals carry them into BTF, where the tests read their members. */
enum parse_status unused_parse_status __attribute__((unused));
enum flow_flags unused_flow_flags __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct parse_result);
} results SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct toeplitz_table);
} rss_table SEC(".maps");

SEC("xdp")
int parse_xdp(struct xdp_md *ctx)
{
	const struct toeplitz_table *tbl;
	struct parse_result *res;
	struct cursor c;
	struct iphdr *iph;
	__u32 zero = 0;

	res = bpf_map_lookup_elem(&results, &zero);
	tbl = bpf_map_lookup_elem(&rss_table, &zero);
	if (!res || !tbl)
		return XDP_ABORTED;
	__builtin_memset(res, 0, sizeof(*res));

	cursor_init(&c, (void *)(long)ctx->data, (void *)(long)ctx->data_end);
	res->status = parse_flow(&c, &res->flow);
	res->payload_off = cursor_off(&c);
	if (res->status != PARSE_OK)
		return XDP_PASS;

	res->rss = toeplitz_flow(tbl, &res->flow, res->flow.flags & FLOW_F_PORTS);
	res->rss_l3 = toeplitz_flow(tbl, &res->flow, false);
	if (res->flow.l3_proto == bpf_htons(ETH_P_IP)) {
		iph = cursor_ptr(&c, res->flow.l3_off, sizeof(*iph));
		res->ipv4_csum = iph ? ipv4_csum(iph, c.data_end) : -1;
	}

	if (res->flow.l4_proto == IPPROTO_UDP && res->flow.dport == bpf_htons(VXLAN_PORT)) {
		res->is_vxlan = 1;
		res->vxlan_status = parse_vxlan(&c, &res->flow, &res->vni);
		if (res->vxlan_status == PARSE_OK)
			res->vxlan_status = parse_flow(&c, &res->inner);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
