/* SPDX-License-Identifier: GPL-2.0 */
/* One datapath source for XDP and TC: a thin context over struct xdp_md and struct __sk_buff.
 *
 * Write the datapath as a static __always_inline function of a struct pkt_ctx *, and give it one
 * entry point per hook:
 *
 *	SEC("xdp") int f_xdp(struct xdp_md *ctx) { struct pkt_ctx c = ctx_xdp(ctx); return f(&c); }
 *	SEC("tc") int f_tc(struct __sk_buff *skb) { struct pkt_ctx c = ctx_tc(skb); return f(&c); }
 *
 * pkt_ctx.xdp is a constant in each entry point, so once inlined the compiler drops the other hook's
 * branch: the verifier never sees an __sk_buff access in an XDP program or the reverse.
 *
 * TC differences to keep in mind: at ingress the stack has already moved the outer VLAN tag into
 * skb->vlan_tci (it is not in the data), and headers may sit beyond the linear data until
 * ctx_pull() brings them in.
 */
#ifndef BPFLAB_CTX_H
#define BPFLAB_CTX_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"

/* enum bpf_adj_room_flags members since kernel 6.3, newer than the uapi headers we build with. */
#define CTX_ADJ_ROOM_DECAP_L3_IPV4	(1ULL << 7)
#define CTX_ADJ_ROOM_DECAP_L3_IPV6	(1ULL << 8)

struct pkt_ctx {
	void *raw;	/* struct xdp_md * or struct __sk_buff * */
	bool xdp;
};

static __always_inline struct pkt_ctx ctx_xdp(struct xdp_md *xdp)
{
	return (struct pkt_ctx){ .raw = xdp, .xdp = true };
}

static __always_inline struct pkt_ctx ctx_tc(struct __sk_buff *skb)
{
	return (struct pkt_ctx){ .raw = skb, .xdp = false };
}

static __always_inline void *ctx_data(const struct pkt_ctx *c)
{
	if (c->xdp)
		return (void *)(long)((struct xdp_md *)c->raw)->data;
	return (void *)(long)((struct __sk_buff *)c->raw)->data;
}

static __always_inline void *ctx_data_end(const struct pkt_ctx *c)
{
	if (c->xdp)
		return (void *)(long)((struct xdp_md *)c->raw)->data_end;
	return (void *)(long)((struct __sk_buff *)c->raw)->data_end;
}

/* A cursor over the frame; for TC its length is the whole skb, not only the linear data. */
static __always_inline void ctx_cursor(const struct pkt_ctx *c, struct cursor *cur)
{
	cursor_init(cur, ctx_data(c), ctx_data_end(c));
	if (!c->xdp)
		cur->len = ((struct __sk_buff *)c->raw)->len;
}

/* Make the first @len bytes (or the whole frame if shorter) linear and writable: TC only, an XDP
 * buffer is linear already. May copy a cloned skb's head. Invalidates every packet pointer.
 */
static __always_inline int ctx_pull(const struct pkt_ctx *c, __u32 len)
{
	struct __sk_buff *skb = c->raw;

	if (c->xdp)
		return 0;
	return bpf_skb_pull_data(skb, len < skb->len ? len : skb->len);
}

/* Remove @delta bytes from the front of the frame (decapsulation), or add -@delta (encapsulation;
 * the new bytes are zero in TC, undefined in XDP). Invalidates every packet pointer.
 */
static __always_inline int ctx_adjust_head(const struct pkt_ctx *c, int delta)
{
	struct __sk_buff *skb = c->raw;
	struct ethhdr eth;
	__u64 flags = 0;
	int err;

	if (c->xdp)
		return bpf_xdp_adjust_head(c->raw, delta);
	if (delta < 0)
		return bpf_skb_change_head(skb, -delta, 0);
	/* bpf_skb_adjust_room() removes bytes after the MAC header, so keep the Ethernet header found
	 * at @delta and remove the @delta bytes behind the current one, then put it back in front.
	 * This takes a plain 14-byte MAC header and an IPv4/IPv6 skb->protocol. skb->protocol is
	 * the outer one until told otherwise: an IPv4 frame decapsulated from IPv6 would leave as
	 * IPv6 (taps, tc filters and drivers' offloads read it), so the flag matches it to the inner.
	 */
	err = bpf_skb_load_bytes(skb, delta, &eth, sizeof(eth));
	if (err)
		return err;
	if (eth.h_proto == bpf_htons(ETH_P_IP))
		flags = CTX_ADJ_ROOM_DECAP_L3_IPV4;
	else if (eth.h_proto == bpf_htons(ETH_P_IPV6))
		flags = CTX_ADJ_ROOM_DECAP_L3_IPV6;
	err = bpf_skb_adjust_room(skb, -delta, BPF_ADJ_ROOM_MAC, flags);
	if (err)
		return err;
	return bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0);
}

static __always_inline int ctx_pass(const struct pkt_ctx *c)
{
	return c->xdp ? XDP_PASS : TC_ACT_OK;
}

static __always_inline int ctx_drop(const struct pkt_ctx *c)
{
	return c->xdp ? XDP_DROP : TC_ACT_SHOT;
}

/* bpf_redirect() returns XDP_REDIRECT or TC_ACT_REDIRECT as the hook wants; @flags is 0 for XDP,
 * 0 or BPF_F_INGRESS for TC.
 */
static __always_inline int ctx_redirect(const struct pkt_ctx *c, __u32 ifindex, __u64 flags)
{
	return bpf_redirect(ifindex, flags);
}

#endif /* BPFLAB_CTX_H */
