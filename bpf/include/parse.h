/* SPDX-License-Identifier: GPL-2.0 */
/* Bounds-checked packet parsers and the flow they extract.
 *
 * A struct cursor walks the frame; each parser pulls its header through cursor_pull(), which checks
 * the bound right where the header is taken, and returns a parse_status. parse_flow() chains them:
 * Ethernet, up to two 802.1Q/802.1ad tags, PPPoE, IPv4 (options, fragments) or IPv6 (a bounded walk
 * over extension headers), then TCP/UDP/ICMP, and fills a struct flow. parse_vxlan() then moves the
 * cursor to the inner Ethernet frame of a VXLAN packet so that parse_flow() can run again.
 *
 * A non-OK status names the first thing wrong with the frame; data planes count frames by it, so the
 * values are stable: add new ones just before PARSE_STATUS_MAX.
 *
 * Byte order in struct flow: addresses, ports and l3_proto as on the wire (network order); VLAN TCIs,
 * the PPPoE session id and the offsets in host order.
 */
#ifndef BPFLAB_PARSE_H
#define BPFLAB_PARSE_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define VLAN_MAX_DEPTH		2	/* QinQ: an 802.1ad tag then an 802.1Q tag */
#define IPV6_MAX_EXT_HDRS	6	/* more than real traffic carries, few enough to unroll */
#define VXLAN_PORT		4789	/* IANA; Linux's own default is 8472 */

#define IPV4_MF			0x2000	/* frag_off: more fragments */
#define IPV4_OFFSET		0x1fff	/* frag_off: fragment offset, 8-byte units */
#define IPV6_FRAG_OFFSET	0xfff8
#define IPV6_FRAG_MF		0x0001

#define PPPOE_VER_TYPE		0x11	/* RFC 2516: version 1, type 1 */
#define PPP_PROTO_IPV4		0x0021
#define PPP_PROTO_IPV6		0x0057

#define VXLAN_FLAGS_VNI		0x08	/* RFC 7348: the I flag, the only one VXLAN (not GPE/GBP) sets */

/* The UAPI headers do not define these four. */
struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

struct pppoe_hdr {
	__u8 ver_type;
	__u8 code;
	__be16 sid;
	__be16 length;
};

struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

struct vxlan_hdr {
	__be32 flags;	/* flags in the top byte, 24 reserved bits */
	__be32 vni;	/* VNI in the top 24 bits, 8 reserved bits */
};

enum parse_status {
	PARSE_OK = 0,
	PARSE_NOT_IP,			/* well formed, not IP: ARP, PPPoE discovery, PPP LCP... */
	PARSE_TRUNC_ETH,
	PARSE_TRUNC_VLAN,
	PARSE_TOO_MANY_VLANS,		/* a third tag */
	PARSE_TRUNC_PPPOE,		/* PPPoE header or PPP protocol field */
	PARSE_BAD_PPPOE,		/* version/type not 1/1, or session data with a code */
	PARSE_TRUNC_IPV4,		/* the frame ends inside the header or its options */
	PARSE_BAD_IPV4_VERSION,
	PARSE_BAD_IPV4_IHL,		/* ihl < 5 */
	PARSE_BAD_IPV4_TOTLEN,		/* tot_len shorter than the header */
	PARSE_TRUNC_IPV4_PAYLOAD,	/* the frame is shorter than tot_len */
	PARSE_TRUNC_IPV6,
	PARSE_BAD_IPV6_VERSION,
	PARSE_TRUNC_IPV6_PAYLOAD,	/* the frame is shorter than payload_len */
	PARSE_TRUNC_IPV6_EXT,		/* an extension header runs past the payload */
	PARSE_TOO_MANY_IPV6_EXT,	/* more than IPV6_MAX_EXT_HDRS */
	PARSE_TRUNC_TCP,		/* header or options past the IP payload */
	PARSE_BAD_TCP_DOFF,		/* doff < 5 */
	PARSE_TRUNC_UDP,
	PARSE_TRUNC_ICMP,
	PARSE_TRUNC_VXLAN,
	PARSE_BAD_VXLAN_FLAGS,		/* not exactly the I flag: VXLAN-GPE, GBP or garbage */
	PARSE_STATUS_MAX,
};

enum flow_flags {
	FLOW_F_PPPOE		= 1 << 0,	/* PPPoE session or discovery; pppoe_sid is set */
	FLOW_F_FRAGMENT		= 1 << 1,	/* IPv4 MF/offset or IPv6 fragment header MF/offset */
	FLOW_F_LATER_FRAGMENT	= 1 << 2,	/* offset != 0: no L4 header in this packet */
	FLOW_F_PORTS		= 1 << 3,	/* sport/dport hold TCP or UDP ports */
};

union flow_addr {
	__be32 v4;	/* IPv4: the first 4 bytes, the rest zero */
	__be32 v6[4];
	__u8 bytes[16];
};

struct flow {
	union flow_addr saddr;
	union flow_addr daddr;
	__be16 sport;
	__be16 dport;
	__be16 l3_proto;	/* ETH_P_IP or ETH_P_IPV6 (also under PPPoE), else the ethertype */
	__u8 l4_proto;		/* IPPROTO_*, after IPv6 extension headers */
	__u8 vlan_depth;
	__u16 vlan_tci[VLAN_MAX_DEPTH];	/* outer first */
	__u16 pppoe_sid;
	__u16 l3_off;		/* offsets from the start of the frame */
	__u16 l4_off;		/* upper-layer header; 0 if none (not IP, later fragment) */
	__u16 flags;		/* enum flow_flags */
	__u32 ip_end;		/* end of the IP packet: the frame may carry padding after it */
};

struct cursor {
	void *data;	/* start of the frame; offsets count from here */
	void *pos;	/* the next header */
	void *data_end;	/* end of the linear data: the bound the verifier knows */
	__u32 len;	/* frame length; a TC skb may hold more than its linear data */
};

static __always_inline void cursor_init(struct cursor *c, void *data, void *data_end)
{
	c->data = data;
	c->pos = data;
	c->data_end = data_end;
	c->len = data_end - data;
}

static __always_inline __u32 cursor_off(const struct cursor *c)
{
	__u32 off = c->pos - c->data;

	/* Else clang may fold the subtraction into 32-bit pointer arithmetic, which the verifier
	 * refuses.
	 */
	barrier_var(off);
	return off;
}

/* The next @len bytes, or NULL if the frame or the linear data ends first; the cursor moves past
 * them. The frame can end before the data: an inner frame ends with its outer IP packet.
 */
static __always_inline void *cursor_pull(struct cursor *c, __u32 len)
{
	void *p = c->pos;

	if (cursor_off(c) + len > c->len || p + len > c->data_end)
		return NULL;
	c->pos = p + len;
	return p;
}

/* Headers end within the first CURSOR_MAX_OFF bytes of a frame: 30 bytes of L2, 60 of IPv4, 40 of
 * IPv6 and six extension headers of at most 2 KiB each.
 */
#define CURSOR_MAX_OFF		0x3fff

/* Rebuild the position from its offset. Subtracting packet pointers gives the verifier an unknown
 * scalar, so from here on it knows the position only as "somewhere in the first CURSOR_MAX_OFF
 * bytes", and the paths that led here (no, one or two VLAN tags, PPPoE, IPv4 options, each kind of
 * extension header...) end in one state instead of each verifying the rest of the parser again.
 */
static __always_inline void cursor_merge(struct cursor *c)
{
	void *pos = c->data + (cursor_off(c) & CURSOR_MAX_OFF);

	/* Opaque to clang too: else it may rebuild a checked header pointer from data + offset, a
	 * pointer the verifier has not seen checked.
	 */
	barrier_var(pos);
	c->pos = pos;
}

/* @len bytes at offset @off of the frame (e.g. flow->l3_off), or NULL if out of bounds. */
static __always_inline void *cursor_ptr(const struct cursor *c, __u32 off, __u32 len)
{
	void *p = c->data + (off & CURSOR_MAX_OFF);	/* the verifier wants a bounded offset */

	if (p + len > c->data_end)
		return NULL;
	return p;
}

static __always_inline bool eth_type_vlan(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

static __always_inline enum parse_status parse_pppoe(struct cursor *c, struct flow *f)
{
	struct pppoe_hdr *ph = cursor_pull(c, sizeof(*ph));
	__be16 *ppp;

	if (!ph)
		return PARSE_TRUNC_PPPOE;
	if (ph->ver_type != PPPOE_VER_TYPE)
		return PARSE_BAD_PPPOE;
	f->flags |= FLOW_F_PPPOE;
	f->pppoe_sid = bpf_ntohs(ph->sid);
	if (f->l3_proto == bpf_htons(ETH_P_PPP_DISC))
		return PARSE_NOT_IP;
	if (ph->code != 0)
		return PARSE_BAD_PPPOE;

	ppp = cursor_pull(c, sizeof(*ppp));
	if (!ppp)
		return PARSE_TRUNC_PPPOE;
	if (*ppp == bpf_htons(PPP_PROTO_IPV4))
		f->l3_proto = bpf_htons(ETH_P_IP);
	else if (*ppp == bpf_htons(PPP_PROTO_IPV6))
		f->l3_proto = bpf_htons(ETH_P_IPV6);
	else
		return PARSE_NOT_IP;
	return PARSE_OK;
}

/* Ethernet, VLAN tags and PPPoE: leaves the cursor at L3 and f->l3_proto saying what is there. */
static __always_inline enum parse_status parse_l2(struct cursor *c, struct flow *f)
{
	struct ethhdr *eth = cursor_pull(c, sizeof(*eth));
	struct vlan_hdr *vlan;
	__be16 proto;
	int i;

	if (!eth)
		return PARSE_TRUNC_ETH;
	proto = eth->h_proto;

#pragma unroll
	for (i = 0; i < VLAN_MAX_DEPTH; i++) {
		if (!eth_type_vlan(proto))
			break;
		vlan = cursor_pull(c, sizeof(*vlan));
		if (!vlan)
			return PARSE_TRUNC_VLAN;
		f->vlan_tci[i] = bpf_ntohs(vlan->tci);
		f->vlan_depth = i + 1;
		proto = vlan->encap_proto;
	}
	if (eth_type_vlan(proto))
		return PARSE_TOO_MANY_VLANS;

	f->l3_proto = proto;
	if (proto == bpf_htons(ETH_P_PPP_SES) || proto == bpf_htons(ETH_P_PPP_DISC))
		return parse_pppoe(c, f);
	return PARSE_OK;
}

/* The upper-layer header, checked against the IP packet's end as well as the frame's. */
static __always_inline enum parse_status parse_l4(struct cursor *c, struct flow *f)
{
	struct tcphdr *tcph;
	struct udphdr *udph;
	__u32 off, hlen;

	cursor_merge(c);
	off = cursor_off(c);
	f->l4_off = off;

	switch (f->l4_proto) {
	case IPPROTO_TCP:
		if (off + sizeof(*tcph) > f->ip_end)
			return PARSE_TRUNC_TCP;
		tcph = cursor_pull(c, sizeof(*tcph));
		if (!tcph)
			return PARSE_TRUNC_TCP;
		hlen = tcph->doff * 4;
		if (hlen < sizeof(*tcph))
			return PARSE_BAD_TCP_DOFF;
		if (off + hlen > f->ip_end || !cursor_pull(c, hlen - sizeof(*tcph)))	/* options */
			return PARSE_TRUNC_TCP;
		f->sport = tcph->source;
		f->dport = tcph->dest;
		f->flags |= FLOW_F_PORTS;
		return PARSE_OK;
	case IPPROTO_UDP:
		if (off + sizeof(*udph) > f->ip_end)
			return PARSE_TRUNC_UDP;
		udph = cursor_pull(c, sizeof(*udph));
		if (!udph)
			return PARSE_TRUNC_UDP;
		f->sport = udph->source;
		f->dport = udph->dest;
		f->flags |= FLOW_F_PORTS;
		return PARSE_OK;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		/* type, code, checksum and the 4 bytes every message type has */
		if (off + 8 > f->ip_end || !cursor_pull(c, 8))
			return PARSE_TRUNC_ICMP;
		return PARSE_OK;
	default:
		return PARSE_OK;
	}
}

static __always_inline enum parse_status parse_ipv4(struct cursor *c, struct flow *f)
{
	struct iphdr *iph;
	__u32 hlen, tot_len, frag;

	cursor_merge(c);
	iph = cursor_pull(c, sizeof(*iph));
	if (!iph)
		return PARSE_TRUNC_IPV4;
	if (iph->version != 4)
		return PARSE_BAD_IPV4_VERSION;
	hlen = iph->ihl * 4;
	if (hlen < sizeof(*iph))
		return PARSE_BAD_IPV4_IHL;
	if (!cursor_pull(c, hlen - sizeof(*iph)))	/* options */
		return PARSE_TRUNC_IPV4;
	tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len < hlen)
		return PARSE_BAD_IPV4_TOTLEN;
	f->l3_off = (void *)iph - c->data;
	f->ip_end = f->l3_off + tot_len;
	if (f->ip_end > c->len)
		return PARSE_TRUNC_IPV4_PAYLOAD;

	f->saddr.v4 = iph->saddr;
	f->daddr.v4 = iph->daddr;
	f->l4_proto = iph->protocol;
	frag = bpf_ntohs(iph->frag_off);
	if (frag & IPV4_OFFSET) {
		f->flags |= FLOW_F_FRAGMENT | FLOW_F_LATER_FRAGMENT;
		return PARSE_OK;	/* no L4 header */
	}
	if (frag & IPV4_MF)
		f->flags |= FLOW_F_FRAGMENT;
	return parse_l4(c, f);
}

static __always_inline bool ipv6_ext_hdr(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_FRAGMENT || nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_AH;
}

static __always_inline enum parse_status parse_ipv6(struct cursor *c, struct flow *f)
{
	struct ipv6hdr *ip6h;
	struct ipv6_opt_hdr *opt;
	struct ipv6_frag_hdr *fh;
	__u8 nexthdr;
	__u32 len;
	int i;

	cursor_merge(c);
	ip6h = cursor_pull(c, sizeof(*ip6h));
	if (!ip6h)
		return PARSE_TRUNC_IPV6;
	if (ip6h->version != 6)
		return PARSE_BAD_IPV6_VERSION;
	f->l3_off = (void *)ip6h - c->data;
	f->ip_end = f->l3_off + sizeof(*ip6h) + bpf_ntohs(ip6h->payload_len);
	if (f->ip_end > c->len)
		return PARSE_TRUNC_IPV6_PAYLOAD;

	__builtin_memcpy(f->saddr.v6, &ip6h->saddr, sizeof(f->saddr.v6));
	__builtin_memcpy(f->daddr.v6, &ip6h->daddr, sizeof(f->daddr.v6));
	nexthdr = ip6h->nexthdr;

#pragma unroll
	for (i = 0; i < IPV6_MAX_EXT_HDRS; i++) {
		if (!ipv6_ext_hdr(nexthdr))
			break;
		cursor_merge(c);
		/* Every extension header is at least 8 bytes; its length field says how many more. */
		opt = c->pos;
		if (cursor_off(c) + 8 > f->ip_end || (void *)opt + 8 > c->data_end)
			return PARSE_TRUNC_IPV6_EXT;
		if (nexthdr == IPPROTO_FRAGMENT)
			len = 8;
		else if (nexthdr == IPPROTO_AH)
			len = (opt->hdrlen + 2) * 4;	/* RFC 4302: in 4-byte units */
		else
			len = (opt->hdrlen + 1) * 8;
		if (cursor_off(c) + len > f->ip_end || !cursor_pull(c, len))
			return PARSE_TRUNC_IPV6_EXT;

		if (nexthdr == IPPROTO_FRAGMENT) {
			fh = (struct ipv6_frag_hdr *)opt;
			if (fh->frag_off & bpf_htons(IPV6_FRAG_OFFSET | IPV6_FRAG_MF))
				f->flags |= FLOW_F_FRAGMENT;
			if (fh->frag_off & bpf_htons(IPV6_FRAG_OFFSET)) {
				/* The rest of the chain, L4 included, is in the first fragment. */
				f->flags |= FLOW_F_LATER_FRAGMENT;
				f->l4_proto = fh->nexthdr;
				return PARSE_OK;
			}
		}
		nexthdr = opt->nexthdr;
	}
	if (ipv6_ext_hdr(nexthdr))
		return PARSE_TOO_MANY_IPV6_EXT;
	f->l4_proto = nexthdr;
	return parse_l4(c, f);
}

/* Parse a frame from the cursor on. On PARSE_OK the cursor is at the L4 payload (or the upper-layer
 * header for protocols not parsed). On any other status @f holds what was parsed before it.
 */
static __always_inline enum parse_status parse_flow(struct cursor *c, struct flow *f)
{
	enum parse_status status;

	__builtin_memset(f, 0, sizeof(*f));
	status = parse_l2(c, f);
	if (status != PARSE_OK)
		return status;

	if (f->l3_proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(c, f);
	if (f->l3_proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(c, f);
	return PARSE_NOT_IP;
}

/* The VXLAN header at the cursor (the payload of @outer, a UDP flow to the VXLAN port: the caller
 * checks, since the port is configurable). On PARSE_OK the cursor is rebased on the inner Ethernet
 * frame, ready for parse_flow(), and @vni holds the 24-bit VNI.
 */
static __always_inline enum parse_status parse_vxlan(struct cursor *c, const struct flow *outer,
						     __u32 *vni)
{
	struct vxlan_hdr *vh;

	if (cursor_off(c) + sizeof(*vh) > outer->ip_end)
		return PARSE_TRUNC_VXLAN;
	vh = cursor_pull(c, sizeof(*vh));
	if (!vh)
		return PARSE_TRUNC_VXLAN;
	/* RFC 7348 says to ignore the reserved bits; like Linux, refuse other flags, since a GPE or
	 * GBP header would be misread as an inner Ethernet frame.
	 */
	if ((vh->flags & bpf_htonl(0xff000000)) != bpf_htonl(VXLAN_FLAGS_VNI << 24))
		return PARSE_BAD_VXLAN_FLAGS;
	*vni = bpf_ntohl(vh->vni) >> 8;

	c->len = outer->ip_end - cursor_off(c);
	c->data = c->pos;
	return PARSE_OK;
}

#endif /* BPFLAB_PARSE_H */
