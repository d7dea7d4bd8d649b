// SPDX-License-Identifier: GPL-2.0
/* The VXLAN pipeline for AWS VPC Traffic Mirroring: decapsulate mirrored frames arriving on the
 * mirror target interface (ens5), keep those whose inner IPv4 or IPv6 addresses are allowlisted,
 * apply NAT and clear DF (IPv4), rewrite the MACs for the egress interface (ens6) and send the inner
 * frame on:
 *
 *	redirect  the XDP program on ens5 redirects through the one-slot DEVMAP `egress_dev`;
 *	tc        the TC program at ens5 ingress calls bpf_redirect() to `egress`.ifindex (any driver);
 *	ringbuf   the XDP program copies the frame to its CPU's ring in `rings` and drops it at ens5;
 *		  userspace re-injectors, one per ring, send it out (NICs that cannot redirect).
 *
 * One datapath source serves both hooks through ctx.h: the TC program always redirects, `mode` only
 * chooses between the DEVMAP and the ring for the XDP program.
 *
 * What is ours: an outer IPv4/IPv6 packet, not a fragment, carrying UDP to `vxlan_port`. Anything else
 * (ARP, SSH, DHCP, outer fragments, frames the outer parser refuses) passes to the stack untouched.
 * Everything wrong after that is dropped and counted: a truncated VXLAN header, flags other than
 * exactly the I bit, an inner frame the parser refuses (malformed); a VNI other than the filter's;
 * an inner frame that is not IP or whose addresses miss the allowlist (not allowed).
 *
 * NAT rewrites to IPv4 targets, so it applies to inner IPv4 only; inner IPv6 leaves as it came,
 * MACs aside. NAT: TCP and UDP (not fragments) look their destination port up in `nat`; without a rule, and
 * for every other inner packet, the default target applies if configured. Fragments of a datagram
 * must reach the same place and only the first carries the ports, so fragments, the first included,
 * take the default target alone. A target sets the destination address, and the destination port if
 * its port is not 0 (ports only with a TCP/UDP header and not a fragment). The IPv4 header checksum
 * and the TCP/UDP checksum (pseudo-header included; a first fragment carries the checksum of the
 * whole datagram) are updated incrementally, RFC 1624; a UDP checksum of 0 stays 0.
 *
 * The inner frame ends where the outer IP packet ends, for parsing; bytes after the outer IP packet
 * (Ethernet padding) stay at the end of the forwarded frame. The head adjustment (ctx.h) refuses,
 * and so the frame is malformed: in XDP an inner frame shorter than an Ethernet header; at TC, as
 * bpf_skb_adjust_room() does, one without an L3 header's worth of bytes after it (20 for IPv4, 40
 * for IPv6: the inner ethertype's, or the outer skb's for an inner frame neither IPv4 nor IPv6),
 * or an skb whose protocol is not IPv4/IPv6 (a VLAN tag left in the data: at real TC ingress the
 * stack has moved the outer tag to skb->vlan_tci). At TC, decapsulation also sets skb->protocol to
 * the inner frame's (ctx.h): an IPv4 frame mirrored over IPv6 leaves ens6 as IPv4.
 *
 * Every frame is counted once in `stats`: passed, forwarded (redirected or queued to the ring), or
 * dropped by reason (enum vxlan_drop). The control plane (bpf/vxlan/pipeline.py) reads the structs
 * and enums below from this object's BTF.
 */
#include <stdbool.h>
#include <stddef.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "csum.h"
#include "ctx.h"
#include "parse.h"

#define VXLAN_FRAME_MAX		9216	/* a ring record's frame bytes: a jumbo frame */
#define VXLAN_RING_SIZE		8388608	/* 8 MiB: the default size of each ring */
#define VXLAN_PULL_LEN		320	/* TC: outer IPv4 headers, VXLAN, inner headers */
#define IPV4_DF			0x4000

enum vxlan_mode {
	VXLAN_MODE_REDIRECT = 0,	/* XDP, XDP_REDIRECT through `egress_dev` */
	VXLAN_MODE_TC = 1,		/* TC ingress, bpf_redirect() to `egress`.ifindex */
	VXLAN_MODE_RINGBUF = 2,		/* XDP, the frame to its CPU's ring, XDP_DROP */
};

enum vxlan_match {
	VXLAN_MATCH_SRC = 0,
	VXLAN_MATCH_DST = 1,
	VXLAN_MATCH_EITHER = 2,
};

/* Why a frame was dropped; the index of vxlan_stats.drops. Add new reasons before VXLAN_DROP_MAX. */
enum vxlan_drop {
	VXLAN_DROP_MALFORMED = 0,	/* UDP to the VXLAN port, but the VXLAN header or inner frame is bad */
	VXLAN_DROP_VNI,			/* the VNI filter is on and this is another VNI */
	VXLAN_DROP_NOT_ALLOWED,		/* inner frame not IP, or its addresses miss the allowlist */
	VXLAN_DROP_RING_FULL,		/* ringbuf mode: no room in the CPU's ring */
	VXLAN_DROP_TOO_BIG,		/* ringbuf mode: longer than VXLAN_FRAME_MAX */
	VXLAN_DROP_REDIRECT_FAILED,	/* no egress configured (DEVMAP slot empty, ifindex 0) */
	VXLAN_DROP_MAX,
};

const volatile enum vxlan_mode mode = VXLAN_MODE_REDIRECT;
const volatile __u16 vxlan_port = VXLAN_PORT;	/* host order; Linux's own VXLAN devices use 8472 */
const volatile bool vni_filter = false;
const volatile __u32 vni_id = 0;
const volatile enum vxlan_match match_on = VXLAN_MATCH_EITHER;
const volatile __be32 default_nat_addr = 0;	/* network order; 0: no default target */
const volatile __u16 default_nat_port = 0;	/* host order; 0 keeps the port */

/* Per CPU. total == passed + forwarded + sum(drops); the rest say how far frames got. */
struct vxlan_stats {
	__u64 total;
	__u64 bytes;		/* of every frame, as received */
	__u64 passed;		/* not VXLAN to us: left to the stack untouched */
	__u64 vxlan;		/* UDP to the VXLAN port */
	__u64 inner;		/* decapsulated, inner frame parsed */
	__u64 nat;		/* a NAT target applied */
	__u64 df_cleared;
	__u64 forwarded;	/* redirected + queued */
	__u64 forwarded_bytes;	/* of the forwarded frames, after decapsulation */
	__u64 redirected;	/* XDP_REDIRECT or TC redirect returned */
	__u64 queued;		/* copied to a ring of `rings` */
	__u64 drops[VXLAN_DROP_MAX];
};

/* A NAT target: address in network order, port in host order (0 keeps the port). */
struct vxlan_nat_target {
	__be32 addr;
	__u16 port;
	__u16 active;	/* 1: this port has a rule */
};

struct vxlan_prefix {
	__u32 prefixlen;
	__be32 addr;
};

struct vxlan_prefix6 {
	__u32 prefixlen;
	union flow_addr addr;
};

struct vxlan_egress {
	__u8 src_mac[ETH_ALEN];		/* the egress interface's own MAC */
	__u8 dst_mac[ETH_ALEN];		/* the next hop's */
	__u32 ifindex;			/* TC mode's bpf_redirect() target; 0: not configured */
};

/* A ring record: @len frame bytes follow; the record is exactly offsetof(data) + len long. */
struct vxlan_frame {
	__u32 len;
	__u8 data[VXLAN_FRAME_MAX];
};

/* Types only Python reads, carried into BTF. */
struct vxlan_frame *unused_frame __attribute__((unused));
enum vxlan_drop unused_drop __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __be32);		/* IPv4 address, network order */
	__type(value, __u8);
} allow_hosts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);	/* the kernel requires it of LPM tries */
	__type(key, struct vxlan_prefix);
	__type(value, __u8);
} allow_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, union flow_addr);	/* IPv6 address, network order */
	__type(value, __u8);
} allow_hosts6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vxlan_prefix6);
	__type(value, __u8);
} allow_prefixes6 SEC(".maps");

/* An array over every port, not a hash: one inlined load instead of a ~25 ns hash lookup on every
 * forwarded packet, for 512 KiB.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);		/* inner destination port, host order */
	__type(value, struct vxlan_nat_target);
} nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vxlan_egress);
} egress SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);		/* ifindex */
} egress_dev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vxlan_stats);
} stats SEC(".maps");

/* Ringbuf mode: one ring per re-injector worker, the frame of CPU c going to ring c % ring_count
 * (one ring per CPU with the default of a worker per CPU). A flow arrives on one CPU, so it stays in
 * one ring, in order; no two CPUs contend for a ring's lock while there is a ring each. The rings are
 * created by the control plane (vxlan_ring.bpf.c) and put in `rings` before the program is
 * attached; their size is not part of the template (the kernel compares an inner ring's type, not
 * its size).
 */
struct vxlan_ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, VXLAN_RING_SIZE);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);		/* the control plane sets it to ring_count */
	__type(key, __u32);
	__array(values, struct vxlan_ring);
} rings SEC(".maps");

const volatile __u32 ring_count = 1;

/* bpf_ringbuf_reserve() takes constant sizes only: records are built here, then copied with their
 * exact length by bpf_ringbuf_output(), so a 64-byte frame takes 68 bytes of ring, not 9 KiB.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vxlan_frame);
} scratch SEC(".maps");

static __always_inline int drop(const struct pkt_ctx *ctx, struct vxlan_stats *st,
				enum vxlan_drop reason)
{
	st->drops[reason]++;
	return ctx_drop(ctx);
}

static __always_inline bool addr_allowed(__be32 addr)
{
	struct vxlan_prefix key = { .prefixlen = 32, .addr = addr };

	return bpf_map_lookup_elem(&allow_hosts, &addr) ||
	       bpf_map_lookup_elem(&allow_prefixes, &key);
}

static __always_inline bool addr6_allowed(const union flow_addr *addr)
{
	struct vxlan_prefix6 key = { .prefixlen = 128, .addr = *addr };

	return bpf_map_lookup_elem(&allow_hosts6, addr) ||
	       bpf_map_lookup_elem(&allow_prefixes6, &key);
}

static __always_inline bool flow6_allowed(const struct flow *f)
{
	switch (match_on) {
	case VXLAN_MATCH_SRC:
		return addr6_allowed(&f->saddr);
	case VXLAN_MATCH_DST:
		return addr6_allowed(&f->daddr);
	default:
		return addr6_allowed(&f->saddr) || addr6_allowed(&f->daddr);
	}
}

static __always_inline bool flow_allowed(const struct flow *f)
{
	if (f->l3_proto == bpf_htons(ETH_P_IPV6))
		return flow6_allowed(f);
	if (f->l3_proto != bpf_htons(ETH_P_IP))
		return false;
	switch (match_on) {
	case VXLAN_MATCH_SRC:
		return addr_allowed(f->saddr.v4);
	case VXLAN_MATCH_DST:
		return addr_allowed(f->daddr.v4);
	default:
		return addr_allowed(f->saddr.v4) || addr_allowed(f->daddr.v4);
	}
}

/* NAT and DF on the inner IPv4 packet at @f->l3_off of the cursor's frame. */
static __always_inline void rewrite_ipv4(const struct cursor *c, const struct flow *f,
					 struct vxlan_stats *st)
{
	const struct vxlan_nat_target *rule = NULL;
	struct vxlan_nat_target def = { .addr = default_nat_addr, .port = default_nat_port };
	bool ports = (f->flags & FLOW_F_PORTS) && !(f->flags & FLOW_F_FRAGMENT);
	bool l4 = !(f->flags & FLOW_F_LATER_FRAGMENT);
	struct iphdr *iph;
	struct tcphdr *tcph;
	struct udphdr *udph;
	__be32 old_addr;
	__be16 new_port, old_frag;
	__u32 port;

	iph = cursor_ptr(c, f->l3_off, sizeof(*iph));
	if (!iph)
		return;
	if (ports) {
		port = bpf_ntohs(f->dport);
		rule = bpf_map_lookup_elem(&nat, &port);
		if (rule && !rule->active)
			rule = NULL;
	}
	if (!rule && default_nat_addr)
		rule = &def;
	if (rule) {
		st->nat++;
		old_addr = iph->daddr;
		new_port = ports && rule->port ? bpf_htons(rule->port) : f->dport;
		csum_replace4(&iph->check, old_addr, rule->addr);
		iph->daddr = rule->addr;
		if (l4 && f->l4_proto == IPPROTO_TCP) {
			tcph = cursor_ptr(c, f->l4_off, sizeof(*tcph));
			if (tcph) {
				csum_replace4(&tcph->check, old_addr, rule->addr);
				csum_replace2(&tcph->check, f->dport, new_port);
				tcph->dest = new_port;
			}
		} else if (l4 && f->l4_proto == IPPROTO_UDP) {
			udph = cursor_ptr(c, f->l4_off, sizeof(*udph));
			if (udph) {
				udp_csum_replace4(&udph->check, old_addr, rule->addr);
				udp_csum_replace2(&udph->check, f->dport, new_port);
				udph->dest = new_port;
			}
		}
	}
	old_frag = iph->frag_off;
	if (old_frag & bpf_htons(IPV4_DF)) {
		iph->frag_off = old_frag & ~bpf_htons(IPV4_DF);
		csum_replace2(&iph->check, old_frag, iph->frag_off);
		st->df_cleared++;
	}
}

static __always_inline void forwarded(struct vxlan_stats *st, __u32 len)
{
	st->forwarded++;
	st->forwarded_bytes += len;
}

/* Ringbuf mode: the frame to this CPU's ring, then dropped here; its re-injector sends it out. */
static __always_inline int ring_out(const struct pkt_ctx *ctx, struct vxlan_stats *st, __u32 len)
{
	struct vxlan_frame *rec;
	__u32 zero = 0, ring_index = bpf_get_smp_processor_id() % ring_count;
	void *ring;

	if (len > VXLAN_FRAME_MAX)
		return drop(ctx, st, VXLAN_DROP_TOO_BIG);
	/* Else clang folds the two bounds into one check on len - ETH_HLEN, which tells the verifier
	 * nothing about len itself.
	 */
	barrier_var(len);
	if (len < ETH_HLEN)
		return drop(ctx, st, VXLAN_DROP_MALFORMED);	/* cannot happen: decapsulated */
	rec = bpf_map_lookup_elem(&scratch, &zero);
	/* Neither the one-slot per-CPU array nor a copy within the frame can fail: the frame did not
	 * reach the ring, so it counts there.
	 */
	if (!rec || bpf_xdp_load_bytes(ctx->raw, 0, rec->data, len))
		return drop(ctx, st, VXLAN_DROP_RING_FULL);
	rec->len = len;
	ring = bpf_map_lookup_elem(&rings, &ring_index);
	if (!ring)	/* cannot happen: the control plane fills every slot before attaching */
		return drop(ctx, st, VXLAN_DROP_RING_FULL);
	if (bpf_ringbuf_output(ring, rec, offsetof(struct vxlan_frame, data) + len, 0))
		return drop(ctx, st, VXLAN_DROP_RING_FULL);
	forwarded(st, len);
	st->queued++;
	return XDP_DROP;
}

static __always_inline int devmap_out(const struct pkt_ctx *ctx, struct vxlan_stats *st, __u32 len)
{
	/* The low bits of the flags are the verdict when the slot is empty. */
	int verdict = bpf_redirect_map(&egress_dev, 0, XDP_DROP);

	if (verdict != XDP_REDIRECT)
		return drop(ctx, st, VXLAN_DROP_REDIRECT_FAILED);
	forwarded(st, len);
	st->redirected++;
	return verdict;
}

static __always_inline int tc_out(const struct pkt_ctx *ctx, struct vxlan_stats *st, __u32 len,
				  __u32 ifindex)
{
	if (!ifindex)
		return drop(ctx, st, VXLAN_DROP_REDIRECT_FAILED);
	forwarded(st, len);
	st->redirected++;
	return ctx_redirect(ctx, ifindex, 0);
}

static __always_inline int vxlan_pipeline(struct pkt_ctx *ctx)
{
	const struct vxlan_egress *out;
	struct vxlan_stats *st;
	enum parse_status status;
	struct flow outer, inner;
	struct cursor c;
	struct ethhdr *eth;
	void *frame;
	__u32 zero = 0, vni, inner_off, inner_len, len;

	st = bpf_map_lookup_elem(&stats, &zero);
	if (!st)
		return ctx_pass(ctx);	/* a one-slot per-CPU array: cannot happen */
	if (ctx_pull(ctx, VXLAN_PULL_LEN)) {
		st->total++;
		st->passed++;		/* out of memory: unread, so left to the stack */
		return ctx_pass(ctx);
	}
	ctx_cursor(ctx, &c);
	st->total++;
	st->bytes += c.len;

	if (parse_flow(&c, &outer) != PARSE_OK || outer.l4_proto != IPPROTO_UDP ||
	    !(outer.flags & FLOW_F_PORTS) || (outer.flags & FLOW_F_FRAGMENT) ||
	    outer.dport != bpf_htons(vxlan_port)) {
		st->passed++;
		return ctx_pass(ctx);
	}
	st->vxlan++;
	frame = c.data;
	if (parse_vxlan(&c, &outer, &vni) != PARSE_OK)
		return drop(ctx, st, VXLAN_DROP_MALFORMED);
	if (vni_filter && vni != vni_id)
		return drop(ctx, st, VXLAN_DROP_VNI);

	/* Decapsulate first, then parse the inner frame with a fresh cursor: far fewer states for the
	 * verifier than parsing it behind the outer headers.
	 */
	inner_off = c.data - frame;
	inner_len = c.len;
	if (ctx_adjust_head(ctx, inner_off))
		return drop(ctx, st, VXLAN_DROP_MALFORMED);	/* shorter than an Ethernet header */
	ctx_cursor(ctx, &c);
	len = c.len;
	if (c.len > inner_len)
		c.len = inner_len;
	status = parse_flow(&c, &inner);
	if (status != PARSE_OK && status != PARSE_NOT_IP)
		return drop(ctx, st, VXLAN_DROP_MALFORMED);
	st->inner++;
	if (status != PARSE_OK || !flow_allowed(&inner))
		return drop(ctx, st, VXLAN_DROP_NOT_ALLOWED);

	if (inner.l3_proto == bpf_htons(ETH_P_IP))
		rewrite_ipv4(&c, &inner, st);

	out = bpf_map_lookup_elem(&egress, &zero);
	eth = cursor_ptr(&c, 0, sizeof(*eth));
	if (!out || !eth)
		return drop(ctx, st, VXLAN_DROP_REDIRECT_FAILED);	/* cannot happen */
	__builtin_memcpy(eth->h_dest, out->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, out->src_mac, ETH_ALEN);

	if (!ctx->xdp)
		return tc_out(ctx, st, len, out->ifindex);
	if (mode == VXLAN_MODE_RINGBUF)
		return ring_out(ctx, st, len);
	return devmap_out(ctx, st, len);
}

SEC("xdp")
int vxlan_xdp(struct xdp_md *xdp)
{
	struct pkt_ctx ctx = ctx_xdp(xdp);

	return vxlan_pipeline(&ctx);
}

SEC("tc")
int vxlan_tc(struct __sk_buff *skb)
{
	struct pkt_ctx ctx = ctx_tc(skb);

	return vxlan_pipeline(&ctx);
}

char LICENSE[] SEC("license") = "GPL";
