// SPDX-License-Identifier: GPL-2.0
/* Sweeps one helper of csum.h over up to 2^23 inputs in one test_run and counts the results that
 * differ from a full recomputation, done here without csum.h: one's complement sums taken modulo
 * 0xffff. Not a data plane: only tests load it (tests/unit/test_checksum.py).
 *
 * A case (`sweep_case`[0]) names a helper and the field it changes, from[] -> to[] (a 16-bit word,
 * a 32-bit word, four 32-bit words). The old checksum is the one the covered data held: ~(rest +
 * from), where `rest` is the sum of everything else the checksum covers, 1..0xffff (never all zero:
 * no IP header or pseudo-header is); a UDP sender sends a computed 0 as 0xffff. The new checksum
 * must be ~(rest + to), 0xffff for UDP if that is 0; with `none` the old UDP checksum is 0 (none)
 * and must stay 0. The sweep steps `rest`, or the low 16 bits of to[0], or (csum_fold) the 32-bit
 * sum itself. Values are raw network-order words, as the data planes load them: the sum does not
 * care about byte order as long as every word is taken the same way.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "csum.h"

enum csum_helper {
	HELPER_CSUM_FOLD,
	HELPER_CSUM_REPLACE2,
	HELPER_CSUM_REPLACE4,
	HELPER_CSUM_REPLACE16,
	HELPER_UDP_CSUM_REPLACE2,
	HELPER_UDP_CSUM_REPLACE4,
	HELPER_UDP_CSUM_REPLACE16,
};

enum csum_sweep {
	SWEEP_REST,	/* rest = first + i */
	SWEEP_TO,	/* the low 16 bits of to[0] = first + i */
	SWEEP_SUM,	/* csum_fold(first + i) */
};

/* The enums' names for Python, carried into BTF. */
enum csum_helper unused_csum_helper __attribute__((unused));
enum csum_sweep unused_csum_sweep __attribute__((unused));

struct csum_case {
	__u32 helper;	/* enum csum_helper */
	__u32 sweep;	/* enum csum_sweep */
	__u32 first;
	__u32 count;	/* values swept: at most 2^23 (bpf_loop's limit) */
	__u32 rest;	/* SWEEP_TO: the rest's sum */
	__u32 none;	/* UDP: the old checksum is 0 (none) */
	__u32 from[4];
	__u32 to[4];
};

struct csum_result {
	__u64 checked;
	__u64 wrong;
	/* the first wrong one */
	__u32 value;	/* the swept value */
	__u32 old_csum;
	__u32 got;
	__u32 want;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct csum_case);
} sweep_case SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct csum_result);
} sweep_result SEC(".maps");

struct sweep_ctx {
	struct csum_case *c;
	struct csum_result *r;
};

/* The one's complement sum of @x, a sum of 16-bit words: the residue modulo 0xffff in 1..0xffff;
 * 0 only if every word was 0.
 */
static __always_inline __u32 ones_sum(__u64 x)
{
	return x ? (x - 1) % 0xffff + 1 : 0;
}

static __always_inline __u64 halves(const __u32 *w, int n)
{
	__u64 s = 0;
	int i;

	for (i = 0; i < n; i++)
		s += (w[i] >> 16) + (w[i] & 0xffff);
	return s;
}

static __always_inline bool helper_udp(__u32 helper)
{
	return helper >= HELPER_UDP_CSUM_REPLACE2;
}

static long sweep_one(__u32 i, void *arg)
{
	struct sweep_ctx *x = arg;
	struct csum_case *c = x->c;
	struct csum_result *r = x->r;
	__u32 value = c->first + i, rest = c->rest, words, from[4], to[4], want;
	__sum16 sum;
	int k;

	for (k = 0; k < 4; k++) {
		from[k] = c->from[k];
		to[k] = c->to[k];
	}
	if (c->sweep == SWEEP_REST)
		rest = value;
	else if (c->sweep == SWEEP_TO)
		to[0] = (to[0] & 0xffff0000) | (value & 0xffff);

	switch (c->helper) {
	case HELPER_CSUM_REPLACE2:
	case HELPER_UDP_CSUM_REPLACE2:
		words = 0;	/* one 16-bit word: the low half of from[0] and to[0] */
		from[0] &= 0xffff;
		to[0] &= 0xffff;
		break;
	case HELPER_CSUM_REPLACE4:
	case HELPER_UDP_CSUM_REPLACE4:
		words = 1;
		break;
	default:
		words = 4;
	}

	if (c->helper == HELPER_CSUM_FOLD) {
		sum = csum_fold(value);
		want = (__u16)~ones_sum(value);
		r->checked++;
		if ((__u16)sum == want)
			return 0;
		r->old_csum = 0;
		goto wrong;
	}

	sum = (__u16)~ones_sum(rest + (words ? halves(from, words) : from[0]));
	want = (__u16)~ones_sum(rest + (words ? halves(to, words) : to[0]));
	if (helper_udp(c->helper)) {
		if (!sum)
			sum = 0xffff;
		if (!want)
			want = 0xffff;
		if (c->none)
			sum = want = 0;
	}
	r->old_csum = sum;

	switch (c->helper) {
	case HELPER_CSUM_REPLACE2:
		csum_replace2(&sum, from[0], to[0]);
		break;
	case HELPER_UDP_CSUM_REPLACE2:
		udp_csum_replace2(&sum, from[0], to[0]);
		break;
	case HELPER_CSUM_REPLACE4:
		csum_replace4(&sum, from[0], to[0]);
		break;
	case HELPER_UDP_CSUM_REPLACE4:
		udp_csum_replace4(&sum, from[0], to[0]);
		break;
	case HELPER_CSUM_REPLACE16:
		csum_replace16(&sum, from, to);
		break;
	default:
		udp_csum_replace16(&sum, from, to);
	}
	r->checked++;
	if ((__u16)sum == want)
		return 0;
wrong:
	if (!r->wrong++) {
		r->value = value;
		r->got = (__u16)sum;
		r->want = want;
	}
	return 0;
}

SEC("xdp")
int csum_sweep(struct xdp_md *ctx)
{
	struct sweep_ctx x;
	__u32 zero = 0;

	x.c = bpf_map_lookup_elem(&sweep_case, &zero);
	x.r = bpf_map_lookup_elem(&sweep_result, &zero);
	if (!x.c || !x.r)
		return XDP_ABORTED;
	__builtin_memset(x.r, 0, sizeof(*x.r));
	bpf_loop(x.c->count, sweep_one, &x, 0);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
