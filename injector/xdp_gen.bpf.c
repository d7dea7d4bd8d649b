// SPDX-License-Identifier: GPL-2.0
/* The xdp injector's field engine. Run with BPF_F_TEST_XDP_LIVE_FRAMES on copies of a template frame,
 * it turns copy number i into packet i of a resolved field program (injector/program.py: trim to the
 * frame size, write the length fields, write each varied field for the flow, fix the checksums) and
 * returns XDP_TX, which transmits it from the ingress interface.
 *
 * Live frames sit in recycled pages that keep whatever the previous run wrote, so nothing here is
 * incremental from the frame's current content: every varied byte, length and checksum is written
 * absolutely, from values user space derived from the template. Checksums are the template's sum for
 * the frame size plus, per varied field, (new field sum - template field sum) in ones' complement
 * (RFC 1624); a field at an odd offset from the start of a sum contributes byte-swapped (RFC 1071).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define GEN_MAX_OPS 8
#define GEN_MAX_CSUMS 4
#define GEN_MAX_LENGTHS 4
#define GEN_MAX_SIZES 16
#define GEN_FIELD_MAX 16
#define GEN_OFFSET_MASK 0x3ff /* fields, lengths and checksums sit in the first 1 KiB */

enum gen_op_kind {
	GEN_RANGE = 0,
	GEN_RANDOM = 1,
	GEN_LIST = 2,
};

struct gen_op {
	__u16 offset;
	__u8 size;
	__u8 kind;
	__u8 csum_mask; /* checksums whose sum covers this field */
	__u8 odd_mask;	/* ... at an odd offset from the start of that sum */
	__u16 list_len;
	__u32 list_start;
	__u32 old_sum; /* folded sum of the template's bytes of the field, from its first byte */
	__u64 count;   /* RANGE: how many values it cycles through (0 stands for 2^64) */
	__u64 span;    /* RANDOM: max - min + 1 (0 stands for 2^64) */
	__u64 step;
	__u64 seed;
	__u8 min[GEN_FIELD_MAX]; /* big-endian, right-aligned */
};

struct gen_csum {
	__u16 offset;			/* of the checksum field */
	__u16 udp;			/* a computed 0 is sent as 0xffff */
	__u16 base_sum[GEN_MAX_SIZES];	/* folded sum per frame size, checksum field zero */
};

struct gen_length {
	__u16 offset;
	__u16 value[GEN_MAX_SIZES];
};

struct gen_config {
	__u32 template_len;
	__u32 nsizes;
	__u32 nschedule;
	__u32 nops;
	__u32 ncsums;
	__u32 nlengths;
	__u16 sizes[GEN_MAX_SIZES];
	struct gen_op ops[GEN_MAX_OPS];
	struct gen_csum csums[GEN_MAX_CSUMS];
	struct gen_length lengths[GEN_MAX_LENGTHS];
};

struct gen_value {
	__u8 bytes[GEN_FIELD_MAX]; /* big-endian, right-aligned */
};

struct gen_state {
	__u64 next_index; /* the packet index of the next frame on this CPU */
	__u64 errors;	  /* frames aborted: the configuration did not fit the frame */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_config);
} config SEC(".maps");

/* Flow index of each packet index modulo its length; sized by user space before load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} schedule SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_value);
} list_values SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_state);
} state SEC(".maps");

/* splitmix64's finalizer over seed ^ (flow * golden ratio): injector/program.py's mix64(). */
static __always_inline __u64 mix64(__u64 seed, __u64 flow)
{
	__u64 x = seed ^ (flow * 0x9E3779B97F4A7C15ULL);

	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
	return x ^ (x >> 31);
}

static __always_inline __u32 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	return (sum & 0xffff) + (sum >> 16);
}

/* The 16-byte big-endian value of `op` for `flow`, into `v`. */
static __always_inline int op_value(const struct gen_op *op, __u32 flow, __u8 v[GEN_FIELD_MAX])
{
	__u64 delta, hi = 0, lo = 0;
	int j;

	if (op->kind == GEN_LIST) {
		__u32 key;
		struct gen_value *value;

		if (!op->list_len)
			return -1;
		key = op->list_start + flow % op->list_len;
		value = bpf_map_lookup_elem(&list_values, &key);
		if (!value)
			return -1;
		__builtin_memcpy(v, value->bytes, GEN_FIELD_MAX);
		return 0;
	}
	/* BPF defines x % 0 as x, which is x mod 2^64: what a count or span of 0 stands for. */
	if (op->kind == GEN_RANGE)
		delta = op->step * ((__u64)flow % op->count);
	else
		delta = mix64(op->seed, flow) % op->span;

	for (j = 0; j < 8; j++) {
		hi = (hi << 8) | op->min[j];
		lo = (lo << 8) | op->min[8 + j];
	}
	lo += delta;
	hi += lo < delta; /* carry into the high half (16-byte fields: IPv6 addresses) */
	for (j = 7; j >= 0; j--) {
		v[j] = hi;
		v[8 + j] = lo;
		hi >>= 8;
		lo >>= 8;
	}
	return 0;
}

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	__u32 zero = 0, acc[GEN_MAX_CSUMS] = {};
	struct gen_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct gen_state *st = bpf_map_lookup_elem(&state, &zero);
	__u32 flow, *scheduled, i, c;
	void *data, *data_end;
	__u64 index, slot; /* 64-bit, so that the bounds check below holds for the verifier */
	int delta;

	if (!cfg || !st || !cfg->nsizes || !cfg->nschedule)
		return XDP_ABORTED;
	index = st->next_index++;

	slot = index % cfg->nsizes;
	if (slot >= GEN_MAX_SIZES)
		goto abort;
	delta = (int)cfg->sizes[slot] - (int)cfg->template_len;
	if (delta && bpf_xdp_adjust_tail(ctx, delta))
		goto abort;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;

	scheduled = bpf_map_lookup_elem(&schedule, &(__u32){ index % cfg->nschedule });
	if (!scheduled)
		goto abort;
	flow = *scheduled;

	for (i = 0; i < GEN_MAX_LENGTHS && i < cfg->nlengths; i++) {
		__u8 *p = data + (cfg->lengths[i].offset & GEN_OFFSET_MASK);

		if ((void *)(p + 2) > data_end)
			goto abort;
		p[0] = cfg->lengths[i].value[slot] >> 8;
		p[1] = cfg->lengths[i].value[slot];
	}

	for (c = 0; c < GEN_MAX_CSUMS && c < cfg->ncsums; c++)
		acc[c] = cfg->csums[c].base_sum[slot];

	for (i = 0; i < GEN_MAX_OPS && i < cfg->nops; i++) {
		const struct gen_op *op = &cfg->ops[i];
		__u8 v[GEN_FIELD_MAX], *p;
		__u32 size = op->size, sum = 0, diff, k;

		if (size == 0 || size > GEN_FIELD_MAX || op_value(op, flow, v))
			goto abort;
		p = data + (op->offset & GEN_OFFSET_MASK);
		for (k = 0; k < GEN_FIELD_MAX; k++) {
			__u8 byte;

			if (k >= size)
				break;
			if ((void *)(p + k + 1) > data_end)
				goto abort;
			byte = v[(GEN_FIELD_MAX - size + k) & (GEN_FIELD_MAX - 1)];
			p[k] = byte;
			sum += k & 1 ? byte : (__u32)byte << 8;
		}
		diff = fold(fold(sum) + (~op->old_sum & 0xffff));
		for (c = 0; c < GEN_MAX_CSUMS && c < cfg->ncsums; c++) {
			if (!(op->csum_mask & (1 << c)))
				continue;
			acc[c] += op->odd_mask & (1 << c) ? ((diff & 0xff) << 8) | (diff >> 8) : diff;
		}
	}

	for (c = 0; c < GEN_MAX_CSUMS && c < cfg->ncsums; c++) {
		__u8 *p = data + (cfg->csums[c].offset & GEN_OFFSET_MASK);
		__u16 csum = ~fold(acc[c]);

		if ((void *)(p + 2) > data_end)
			goto abort;
		if (csum == 0 && cfg->csums[c].udp)
			csum = 0xffff;
		p[0] = csum >> 8;
		p[1] = csum;
	}
	return XDP_TX;

abort:
	st->errors++;
	return XDP_ABORTED;
}

char LICENSE[] SEC("license") = "GPL";
