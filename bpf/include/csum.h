/* SPDX-License-Identifier: GPL-2.0 */
/* Internet checksums: RFC 1624 incremental updates and the full IPv4 header checksum.
 *
 * The one's complement sum does not care about byte order as long as every word is taken the same
 * way, so these work on the raw network-order values loaded from the packet: no byte swaps.
 *
 * The csum_replace*() helpers fit the IPv4 header checksum and TCP/ICMPv6 checksums; the udp_*()
 * variants keep UDP's rules: a zero checksum means "none" (IPv4, and IPv6 tunnels per RFC 6935) and
 * must stay zero, and a computed zero is sent as 0xffff (RFC 768). When an address changes, update
 * the L4 checksum too: its pseudo-header covers the addresses.
 */
#ifndef BPFLAB_CSUM_H
#define BPFLAB_CSUM_H

#include <linux/types.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>

#define IPV4_MAX_HDR_WORDS	15	/* ihl is 4 bits: 60 bytes */

/* Fold a 32-bit one's complement sum to 16 bits and complement it. */
static __always_inline __sum16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__sum16)~sum;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'). */
static __always_inline void csum_replace2(__sum16 *sum, __be16 from, __be16 to)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~from;
	s += to;
	*sum = csum_fold(s);
}

static __always_inline void csum_replace4(__sum16 *sum, __be32 from, __be32 to)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~(from >> 16) + (__u16)~(from & 0xffff);
	s += (to >> 16) + (to & 0xffff);
	*sum = csum_fold(s);
}

/* An IPv6 address: four 32-bit words, one fold. */
static __always_inline void csum_replace16(__sum16 *sum, const __be32 from[4], const __be32 to[4])
{
	__u32 s = (__u16)~*sum;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		s += (__u16)~(from[i] >> 16) + (__u16)~(from[i] & 0xffff);
		s += (to[i] >> 16) + (to[i] & 0xffff);
	}
	*sum = csum_fold(s);
}

#define CSUM_MANGLED_0	((__sum16)0xffff)

static __always_inline void udp_csum_replace2(__sum16 *sum, __be16 from, __be16 to)
{
	if (!*sum)
		return;
	csum_replace2(sum, from, to);
	if (!*sum)
		*sum = CSUM_MANGLED_0;
}

static __always_inline void udp_csum_replace4(__sum16 *sum, __be32 from, __be32 to)
{
	if (!*sum)
		return;
	csum_replace4(sum, from, to);
	if (!*sum)
		*sum = CSUM_MANGLED_0;
}

static __always_inline void udp_csum_replace16(__sum16 *sum, const __be32 from[4],
					       const __be32 to[4])
{
	if (!*sum)
		return;
	csum_replace16(sum, from, to);
	if (!*sum)
		*sum = CSUM_MANGLED_0;
}

/* The checksum of the IPv4 header at @iph, options included, checksum field as it is: 0 when the
 * header is valid; to fill the field, zero it first and store the result (it is in network order). -1 if the header runs past
 * @data_end (the parser has checked it already; the verifier wants to see it here).
 */
static __always_inline int ipv4_csum(const struct iphdr *iph, const void *data_end)
{
	const __u32 *word;
	__u32 words, sum = 0;
	int i;

	if ((const void *)(iph + 1) > data_end)
		return -1;
	words = iph->ihl;

	/* A bounded loop over 32-bit words: the verifier walks it once per word. */
	for (i = 0; i < IPV4_MAX_HDR_WORDS; i++) {
		if (i == words)
			break;
		word = (const __u32 *)iph + i;
		/* Else clang checks word against data_end - 3: no arithmetic on data_end is allowed. */
		barrier_var(word);
		if ((const void *)(word + 1) > data_end)
			return -1;
		sum += (*word & 0xffff) + (*word >> 16);
	}
	return csum_fold(sum);
}

#endif /* BPFLAB_CSUM_H */
