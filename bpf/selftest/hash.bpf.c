// SPDX-License-Identifier: GPL-2.0
/* Runs jhash.h on bytes taken from a test packet: the first 4 bytes are the initval, the next
 * JHASH_TEST_BYTES the key. jhash() of every key length, jhash2() of every word count and the
 * jhash_Nwords() forms land in `results`, for the unit tests to compare with a Python port.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "jhash.h"

#define JHASH_TEST_BYTES	32
#define JHASH_TEST_WORDS	(JHASH_TEST_BYTES / 4)

struct jhash_result {
	__u32 bytes[JHASH_TEST_BYTES + 1];	/* jhash(key, n, initval) for n = 0..32 */
	__u32 words[JHASH_TEST_WORDS + 1];	/* jhash2(key, n, initval) for n = 0..8 */
	__u32 three_words;			/* jhash_3words(key[0], key[1], key[2], initval) */
	__u32 two_words;
	__u32 one_word;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct jhash_result);
} results SEC(".maps");

SEC("xdp")
int jhash_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 key[JHASH_TEST_WORDS], initval, zero = 0;
	struct jhash_result *res;
	int n;

	if (data + 4 + sizeof(key) > data_end)
		return XDP_DROP;
	res = bpf_map_lookup_elem(&results, &zero);
	if (!res)
		return XDP_ABORTED;
	__builtin_memcpy(&initval, data, sizeof(initval));
	__builtin_memcpy(key, data + 4, sizeof(key));

#pragma unroll
	for (n = 0; n <= JHASH_TEST_BYTES; n++)
		res->bytes[n] = jhash(key, n, initval);
#pragma unroll
	for (n = 0; n <= JHASH_TEST_WORDS; n++)
		res->words[n] = jhash2(key, n, initval);
	res->three_words = jhash_3words(key[0], key[1], key[2], initval);
	res->two_words = jhash_2words(key[0], key[1], initval);
	res->one_word = jhash_1word(key[0], initval);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
