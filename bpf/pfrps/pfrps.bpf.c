// SPDX-License-Identifier: GPL-2.0
/* PF_PACKET receive packet steering: spread the PPPoE frames of one interface over N AF_PACKET
 * sockets by a hash of a MAC address, so that every subscriber (MAC) always lands on one worker.
 *
 * Two ways, one hash:
 * - pfrps_filter: the seed's design. Each worker's socket carries its own copy of this program
 *   (SO_ATTACH_BPF), loaded with its worker_id; every frame runs all N filters, and the one whose
 *   worker_id equals hash % n_workers accepts it. A socket filter's return value is the snap length:
 *   an accepted frame returns skb->len (whole), a refused one 0.
 * - pfrps_fanout: one program for a PACKET_FANOUT_EBPF group; it returns the member index,
 *   hash % n_workers, and the kernel runs it once per frame whatever N is.
 * pfrps_accept keeps a fanout member bound to ETH_P_ALL (discovery and session both) to PPPoE.
 *
 * The configuration is .rodata, frozen at load: a filter never runs with a zeroed worker id or
 * worker count, unlike the seed's ARRAY written after the attach. The modulo takes any count; the
 * seed's `hash & (max_id - 1)` is right for powers of two only (bpf/pfrps/model.py keeps it).
 *
 * The MAC is read relative to the MAC header (bpf_skb_load_bytes_relative): a socket filter on a
 * raw AF_PACKET socket sees skb->data at the Ethernet header, a fanout program and BPF_PROG_TEST_RUN
 * at the network header; the MAC header offset is right in all three.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "jhash.h"

enum pfrps_hash {
	PFRPS_MAC_HASH = 0,	/* the MAC's last four bytes as a big-endian word */
	PFRPS_MAC_JHASH = 1,	/* jhash_2words(first 4 bytes, last 2 bytes, 0), CPU byte order */
	PFRPS_JHASH_OAAT = 2,	/* Jenkins one-at-a-time over the 6 bytes, initval 0xdeadbeef */
};

enum pfrps_mac {
	PFRPS_MAC_SRC = 0,	/* the subscriber, on frames from the access side (the seed) */
	PFRPS_MAC_DST = 1,	/* the subscriber, on frames towards it (what GTP-Guard hashed) */
};

enum pfrps_proto {
	PFRPS_PROTO_DISCOVERY = 1 << 0,	/* ETH_P_PPP_DISC, 0x8863 */
	PFRPS_PROTO_SESSION = 1 << 1,	/* ETH_P_PPP_SES, 0x8864 */
};

const volatile __u32 n_workers = 1;
const volatile __u32 worker_id = 0;
const volatile enum pfrps_hash hash_alg = PFRPS_MAC_HASH;
const volatile enum pfrps_mac mac_side = PFRPS_MAC_SRC;
const volatile enum pfrps_proto protocols = PFRPS_PROTO_DISCOVERY | PFRPS_PROTO_SESSION;

static __always_inline __u32 mac_hash(const __u8 *hw)
{
	__u32 hash = 0;
	int i;

	for (i = 0; i < ETH_ALEN; i++)
		hash = (hash << 8) | hw[i];	/* the first two bytes shift out */
	return hash;
}

static __always_inline __u32 mac_jhash(const __u8 *hw)
{
	__u32 high;
	__u16 low;

	__builtin_memcpy(&high, hw, sizeof(high));
	__builtin_memcpy(&low, hw + 4, sizeof(low));
	return jhash_2words(high, low, 0);
}

static __always_inline __u32 jhash_oaat(const __u8 *hw)
{
	__u32 hash = JHASH_INITVAL;
	int i;

	for (i = 0; i < ETH_ALEN; i++) {
		hash += hw[i];
		hash += hash << 10;
		hash ^= hash >> 6;
	}
	hash += hash << 3;
	hash ^= hash >> 11;
	hash += hash << 15;
	return hash;
}

/* The worker of this frame's MAC, or -1 if the frame is too short to hold one. */
static __always_inline int worker_of(struct __sk_buff *skb)
{
	__u8 hw[ETH_ALEN];
	__u32 hash;

	if (bpf_skb_load_bytes_relative(skb, mac_side == PFRPS_MAC_DST ? 0 : ETH_ALEN, hw,
					ETH_ALEN, BPF_HDR_START_MAC))
		return -1;
	if (hash_alg == PFRPS_JHASH_OAAT)
		hash = jhash_oaat(hw);
	else if (hash_alg == PFRPS_MAC_JHASH)
		hash = mac_jhash(hw);
	else
		hash = mac_hash(hw);
	return hash % n_workers;
}

/* A received PPPoE frame of the configured kinds. A socket bound to ETH_P_ALL (both kinds) also
 * sees the frames the host sends, and every other protocol.
 */
static __always_inline bool wanted(struct __sk_buff *skb)
{
	if (skb->pkt_type == PACKET_OUTGOING)
		return false;
	if (skb->protocol == bpf_htons(ETH_P_PPP_DISC))
		return protocols & PFRPS_PROTO_DISCOVERY;
	if (skb->protocol == bpf_htons(ETH_P_PPP_SES))
		return protocols & PFRPS_PROTO_SESSION;
	return false;
}

SEC("socket")
int pfrps_filter(struct __sk_buff *skb)
{
	if (!wanted(skb) || worker_of(skb) != (int)worker_id)
		return 0;
	return skb->len;
}

SEC("socket")
int pfrps_fanout(struct __sk_buff *skb)
{
	int worker = worker_of(skb);

	return worker < 0 ? 0 : worker;	/* a runt goes to member 0, whose filter (if any) decides */
}

SEC("socket")
int pfrps_accept(struct __sk_buff *skb)
{
	return wanted(skb) ? skb->len : 0;
}

char LICENSE[] SEC("license") = "GPL";
