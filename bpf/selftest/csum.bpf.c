// SPDX-License-Identifier: GPL-2.0
/* Rewrites addresses and ports of a test packet like a NAT would, keeping every checksum right with
 * the incremental helpers of csum.h; the unit tests check the result against a full recomputation.
 * The new addresses and ports come from `nat`; a zero field is left as it is.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "csum.h"
#include "parse.h"

struct nat_rule {
	union flow_addr saddr;
	union flow_addr daddr;
	__be16 sport;
	__be16 dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_rule);
} nat SEC(".maps");

/* Where the L4 checksum is, if this flow has one that covers the pseudo-header. */
static __always_inline __sum16 *l4_csum(const struct cursor *c, const struct flow *f)
{
	struct tcphdr *tcph;
	struct udphdr *udph;

	if (!f->l4_off)
		return NULL;
	switch (f->l4_proto) {
	case IPPROTO_TCP:
		tcph = cursor_ptr(c, f->l4_off, sizeof(*tcph));
		return tcph ? &tcph->check : NULL;
	case IPPROTO_UDP:
		udph = cursor_ptr(c, f->l4_off, sizeof(*udph));
		return udph ? &udph->check : NULL;
	case IPPROTO_ICMPV6:
		/* type, code, checksum */
		return cursor_ptr(c, f->l4_off + 2, sizeof(__sum16));
	default:
		return NULL;
	}
}

static __always_inline void rewrite_ipv4(struct cursor *c, struct flow *f, struct nat_rule *r,
					 __sum16 *l4sum, bool udp)
{
	struct iphdr *iph = cursor_ptr(c, f->l3_off, sizeof(*iph));

	if (!iph)
		return;
	if (r->saddr.v4) {
		csum_replace4(&iph->check, iph->saddr, r->saddr.v4);
		if (l4sum && udp)
			udp_csum_replace4(l4sum, iph->saddr, r->saddr.v4);
		else if (l4sum)
			csum_replace4(l4sum, iph->saddr, r->saddr.v4);
		iph->saddr = r->saddr.v4;
	}
	if (r->daddr.v4) {
		csum_replace4(&iph->check, iph->daddr, r->daddr.v4);
		if (l4sum && udp)
			udp_csum_replace4(l4sum, iph->daddr, r->daddr.v4);
		else if (l4sum)
			csum_replace4(l4sum, iph->daddr, r->daddr.v4);
		iph->daddr = r->daddr.v4;
	}
}

static __always_inline bool addr6_set(const union flow_addr *a)
{
	return a->v6[0] | a->v6[1] | a->v6[2] | a->v6[3];
}

static __always_inline void rewrite_ipv6(struct cursor *c, struct flow *f, struct nat_rule *r,
					 __sum16 *l4sum, bool udp)
{
	struct ipv6hdr *ip6h = cursor_ptr(c, f->l3_off, sizeof(*ip6h));

	if (!ip6h)
		return;
	if (addr6_set(&r->saddr)) {
		if (l4sum && udp)
			udp_csum_replace16(l4sum, ip6h->saddr.in6_u.u6_addr32, r->saddr.v6);
		else if (l4sum)
			csum_replace16(l4sum, ip6h->saddr.in6_u.u6_addr32, r->saddr.v6);
		__builtin_memcpy(&ip6h->saddr, r->saddr.v6, sizeof(ip6h->saddr));
	}
	if (addr6_set(&r->daddr)) {
		if (l4sum && udp)
			udp_csum_replace16(l4sum, ip6h->daddr.in6_u.u6_addr32, r->daddr.v6);
		else if (l4sum)
			csum_replace16(l4sum, ip6h->daddr.in6_u.u6_addr32, r->daddr.v6);
		__builtin_memcpy(&ip6h->daddr, r->daddr.v6, sizeof(ip6h->daddr));
	}
}

static __always_inline void rewrite_ports(struct cursor *c, struct flow *f, struct nat_rule *r,
					  __sum16 *l4sum, bool udp)
{
	/* TCP and UDP both start with source and destination port. */
	struct udphdr *ports = cursor_ptr(c, f->l4_off, sizeof(*ports));

	if (!ports || !l4sum || !(f->flags & FLOW_F_PORTS))
		return;
	if (r->sport) {
		if (udp)
			udp_csum_replace2(l4sum, ports->source, r->sport);
		else
			csum_replace2(l4sum, ports->source, r->sport);
		ports->source = r->sport;
	}
	if (r->dport) {
		if (udp)
			udp_csum_replace2(l4sum, ports->dest, r->dport);
		else
			csum_replace2(l4sum, ports->dest, r->dport);
		ports->dest = r->dport;
	}
}

SEC("xdp")
int nat_xdp(struct xdp_md *ctx)
{
	struct nat_rule *r;
	struct cursor c;
	struct flow f;
	__sum16 *l4sum;
	__u32 zero = 0;
	bool udp;

	r = bpf_map_lookup_elem(&nat, &zero);
	if (!r)
		return XDP_ABORTED;
	cursor_init(&c, (void *)(long)ctx->data, (void *)(long)ctx->data_end);
	if (parse_flow(&c, &f) != PARSE_OK)
		return XDP_DROP;

	l4sum = l4_csum(&c, &f);
	udp = f.l4_proto == IPPROTO_UDP;
	rewrite_ports(&c, &f, r, l4sum, udp);
	if (f.l3_proto == bpf_htons(ETH_P_IP))
		rewrite_ipv4(&c, &f, r, l4sum, udp);
	else
		rewrite_ipv6(&c, &f, r, l4sum, udp);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
