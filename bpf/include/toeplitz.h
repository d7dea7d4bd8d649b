/* SPDX-License-Identifier: GPL-2.0 */
/* Toeplitz hash, bit-exact with NIC RSS (Microsoft RSS specification), one table lookup per byte.
 *
 * The hash XORs, for every set bit k of the input (bit 0 is the top bit of the first byte), the
 * 32-bit window of the 40-byte key starting at bit k. The control plane (bpf/toeplitz.py) folds that
 * into struct toeplitz_table: t[i][b] is the XOR of the windows for the set bits of byte value b at
 * input position i. The table lives in a map (36 KiB, one ARRAY element) and the hash is the XOR of
 * t[i][input[i]].
 */
#ifndef BPFLAB_TOEPLITZ_H
#define BPFLAB_TOEPLITZ_H

#include <stdbool.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"

#define TOEPLITZ_KEY_LEN	40
#define TOEPLITZ_MAX_INPUT	36	/* IPv6 addresses and ports */

struct toeplitz_table {
	__u32 t[TOEPLITZ_MAX_INPUT][256];
};

/* The hash contribution of @len bytes at @in placed at input position @pos (constants). */
static __always_inline __u32 toeplitz_bytes(const struct toeplitz_table *tbl, __u32 pos,
					    const __u8 *in, __u32 len)
{
	__u32 h = 0;
	__u32 i;

#pragma unroll
	for (i = 0; i < len; i++)
		h ^= tbl->t[pos + i][in[i]];
	return h;
}

/* RSS input order: source address, destination address, then (with @ports) source and destination
 * port, all in network order. NICs use the ports for TCP/UDP and not for fragments: pass
 * (f->flags & FLOW_F_PORTS) to do the same.
 */
static __always_inline __u32 toeplitz_flow(const struct toeplitz_table *tbl, const struct flow *f,
					   bool ports)
{
	__u32 h;

	if (f->l3_proto == bpf_htons(ETH_P_IPV6)) {
		h = toeplitz_bytes(tbl, 0, f->saddr.bytes, 16) ^
		    toeplitz_bytes(tbl, 16, f->daddr.bytes, 16);
		if (ports)
			h ^= toeplitz_bytes(tbl, 32, (const __u8 *)&f->sport, 2) ^
			     toeplitz_bytes(tbl, 34, (const __u8 *)&f->dport, 2);
	} else {
		h = toeplitz_bytes(tbl, 0, f->saddr.bytes, 4) ^
		    toeplitz_bytes(tbl, 4, f->daddr.bytes, 4);
		if (ports)
			h ^= toeplitz_bytes(tbl, 8, (const __u8 *)&f->sport, 2) ^
			     toeplitz_bytes(tbl, 10, (const __u8 *)&f->dport, 2);
	}
	return h;
}

#endif /* BPFLAB_TOEPLITZ_H */
