// SPDX-License-Identifier: GPL-2.0
/* The traffic counter: packets and bytes per IP address and protocol, at XDP ingress, TC ingress or
 * TC egress, IPv4 and IPv6, every protocol (TCP, UDP and the rest, each under its own number).
 *
 * The address is the source or the destination (key_dst, set at load; the seed's defaults are the
 * source at ingress, the destination at egress). Bytes are the packet's IP bytes as the seed counts
 * them (the IPv4 total length; for IPv6 the header and payload length), or its wire bytes
 * (count_wire); a GSO/GRO packet at TC counts as its segments (counter.h). Frames that do not parse
 * to IP are counted in `unparsed` by parse status, and every frame is passed.
 *
 * Storage: one LRU hash per IP version (addrs4, addrs6; max_entries set at load), whose entries
 * all CPUs share. The seed inserts a missing entry with BPF_ANY and then adds atomically: two CPUs
 * that miss the same new address at once both insert, and the second insert replaces the entry the
 * first had already counted in, so a count is lost. Here the entry is created with BPF_NOEXIST
 * holding the packet (counter_insert()), and the CPU that lost the race adds to the winner's with
 * atomic adds, as every CPU does to an entry it finds. A per-CPU LRU hash would be exact too, with
 * plain adds, but every read of it copies one value per possible CPU: the time-series sampler,
 * which reads the whole table a thousand times a second, would pay that on every read, and on a
 * many-core DPU it is most of the cost. Entries that the LRU evicts to make room are counted: every
 * entry created is counted in `totals.created`, so the evicted are the created less those present.
 *
 * The control plane (bpf/trafcount/trafcount.py) reads every struct from this object's BTF.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "counter.h"
#include "ctx.h"
#include "parse.h"
#include "unparsed.h"

#define TRAF_ENTRIES	2048	/* the seed's LRU size; the control plane sets each table's */

const volatile bool key_dst = false;	/* key on the destination address, else the source */
const volatile bool count_wire = false;	/* wire bytes, else IP bytes */

/* The seed's key, and its IPv6 twin: the address in network order, the IP protocol number. */
struct traf_key4 {
	__be32 addr;
	__u8 proto;
	__u8 pad[3];
};

struct traf_key6 {
	union flow_addr addr;
	__u8 proto;
	__u8 pad[3];
};

struct traf_counts {
	__u64 packets;
	__u64 bytes;
};

/* Per CPU: what happened to the tables, beyond their counts. */
struct traf_totals {
	__u64 created;		/* entries created (the LRU may have evicted some since) */
	__u64 entry_gone;	/* packets lost: their entry went between -EEXIST and the lookup */
	__u64 no_room;		/* packets lost: the LRU found no entry to take (-ENOMEM) */
};

/* What the loader chose, pinned with the maps for a later reader (and bpftool). */
struct traf_config {
	__u32 entries;		/* of each table */
	__u32 key_dst;
	__u32 count_wire;
	__u32 owner_pid;	/* the process attached and counting; 0: none */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TRAF_ENTRIES);
	__type(key, struct traf_key4);
	__type(value, struct traf_counts);
} addrs4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TRAF_ENTRIES);
	__type(key, struct traf_key6);
	__type(value, struct traf_counts);
} addrs6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct traf_totals);
} totals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct traf_config);
} config SEC(".maps");


static __always_inline struct traf_totals *totals_here(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&totals, &zero);
}

static __always_inline void traf_add(void *table, const void *key, __u32 packets, __u32 bytes)
{
	struct traf_counts *v, init = { .packets = packets, .bytes = bytes };
	struct traf_totals *t;

	v = bpf_map_lookup_elem(table, key);
	if (!v) {
		switch (counter_insert(table, key, &init, (void **)&v)) {
		case COUNTER_CREATED:
			t = totals_here();
			if (t)
				t->created++;
			return;
		case COUNTER_RACED:
			break;
		case COUNTER_FULL:
			t = totals_here();
			if (t)
				t->no_room += packets;
			return;
		default:
			t = totals_here();
			if (t)
				t->entry_gone += packets;
			return;
		}
	}
	__sync_fetch_and_add(&v->packets, packets);
	__sync_fetch_and_add(&v->bytes, bytes);
}

static __always_inline int trafcount(const struct pkt_ctx *c)
{
	enum parse_status status;
	struct traf_key4 k4 = {};
	struct traf_key6 k6 = {};
	__u32 packets, bytes;
	struct cursor cur;
	struct flow f;

	ctx_cursor(c, &cur);
	status = parse_flow(&cur, &f);
	if (status != PARSE_OK) {
		count_unparsed(status);
		return ctx_pass(c);
	}
	if (count_wire)
		counter_wire_size(c, &f, cursor_off(&cur), &packets, &bytes);
	else
		counter_l3_size(c, &f, cursor_off(&cur), &packets, &bytes);
	if (f.l3_proto == bpf_htons(ETH_P_IPV6)) {
		k6.addr = key_dst ? f.daddr : f.saddr;
		k6.proto = f.l4_proto;
		traf_add(&addrs6, &k6, packets, bytes);
	} else {
		k4.addr = key_dst ? f.daddr.v4 : f.saddr.v4;
		k4.proto = f.l4_proto;
		traf_add(&addrs4, &k4, packets, bytes);
	}
	return ctx_pass(c);
}

SEC("xdp")
int trafcount_xdp(struct xdp_md *ctx)
{
	struct pkt_ctx c = ctx_xdp(ctx);

	return trafcount(&c);
}

SEC("tc")
int trafcount_tc(struct __sk_buff *skb)
{
	struct pkt_ctx c = ctx_tc(skb);

	return trafcount(&c);
}

char LICENSE[] SEC("license") = "GPL";
