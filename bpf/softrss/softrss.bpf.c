// SPDX-License-Identifier: GPL-2.0
/* Soft RSS: spread flows over buckets the way a NIC's receive-side scaling would, where the NIC has
 * none. Each frame is parsed (parse.h), hashed (Toeplitz bit-exact with NIC RSS, or jhash), and its
 * bucket read from a 128-entry indirection table (RETA) at hash & 127, as NICs do. The bucket is
 * counted per CPU, the flow in a shared LRU table, and a flow crossing the elephant threshold is
 * announced once on a ring buffer. Then the frame is passed (`count`), redirected to the bucket's CPU
 * through a CPUMAP (`cpu`: software RSS) or to the bucket's interface through a DEVMAP (`ifaces`).
 *
 * Hash input, as NICs lay it out: source address, destination address, then source and destination
 * port for TCP and UDP. Fragments (first ones included) and other protocols (ICMP...) hash the two
 * addresses only, so that every fragment of a datagram lands with its first. Symmetric mode XORs the
 * source and destination fields first (ethtool's `symmetric-xor`), so both directions of a connection
 * hash alike under any key. Frames that do not parse to IP are passed, counted by parse status.
 *
 * The control plane (bpf/softrss/softrss.py) fills the Toeplitz table from the key, the RETA, and
 * the CPUMAP/DEVMAP; it reads every struct below from this object's BTF.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "jhash.h"
#include "parse.h"
#include "toeplitz.h"

#define RETA_SIZE		128	/* what `ethtool -x` shows on most NICs */
#define SOFTRSS_MAX_BUCKETS	RETA_SIZE

enum softrss_hash {
	SOFTRSS_HASH_TOEPLITZ = 0,
	SOFTRSS_HASH_JHASH = 1,
};

enum softrss_action {
	SOFTRSS_ACTION_COUNT = 0,	/* count, then XDP_PASS: a passive monitor */
	SOFTRSS_ACTION_CPU = 1,		/* XDP_REDIRECT to bucket_cpu[bucket] through `cpus` */
	SOFTRSS_ACTION_IFACES = 2,	/* XDP_REDIRECT to `ifaces`[bucket] */
};

const volatile __u32 n_buckets = 8;
const volatile enum softrss_hash hash_kind = SOFTRSS_HASH_TOEPLITZ;
const volatile bool symmetric = false;
const volatile enum softrss_action action = SOFTRSS_ACTION_COUNT;
const volatile __u32 jhash_initval = 0;
const volatile __u64 threshold_packets = 100;	/* 0: packets never make an elephant */
const volatile __u64 threshold_bytes = 0;	/* 0: bytes never make an elephant */

/* Addresses and ports in network order, as on the wire; ports are 0 for fragments and protocols
 * without ports, which hash on addresses only.
 */
struct softrss_flow_key {
	union flow_addr saddr;
	union flow_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 l4_proto;
	__u8 ip_version;	/* 4 or 6 */
};

struct softrss_flow {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen_ns;	/* CLOCK_MONOTONIC_COARSE: a jiffy's resolution, ~15 ns cheaper a packet */
	__u64 last_seen_ns;
	__u32 hash;
	__u32 bucket;
	__u32 announced;	/* 1 once the elephant event is on the ring */
};

struct softrss_bucket {
	__u64 packets;
	__u64 bytes;
	__u64 flows;		/* flows that entered the flow table in this bucket */
};

struct softrss_elephant {
	struct softrss_flow_key key;
	__u64 packets;		/* when the threshold was crossed */
	__u64 bytes;
	__u64 first_seen_ns;
	__u64 last_seen_ns;
	__u32 hash;
	__u32 bucket;
};

/* Things that were not done, per CPU: each says what the control plane should look at. */
struct softrss_misses {
	__u64 ring_full;	/* an elephant event found the ring full: the next packet retries */
	__u64 untracked;	/* a frame counted in its bucket whose flow entry was evicted at once */
	__u64 no_bucket;	/* the RETA named a bucket >= n_buckets: frame passed uncounted */
};

/* Types only Python reads (ring records, the index of `unparsed`), carried into BTF. */
struct softrss_elephant *unused_elephant __attribute__((unused));
enum parse_status unused_parse_status __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct toeplitz_table);
} toeplitz SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RETA_SIZE);
	__type(key, __u32);
	__type(value, __u32);	/* bucket */
} reta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SOFTRSS_MAX_BUCKETS);
	__type(key, __u32);
	__type(value, struct softrss_bucket);
} buckets SEC(".maps");

/* One entry per flow shared by all CPUs, not an LRU_PERCPU_HASH: a flow may arrive on several CPUs
 * (a NIC without RSS, generic XDP, a veth), and must still be counted as one flow and announced
 * once. Per-CPU entries would split its counters, so no CPU could see the sum cross the threshold,
 * and each CPU would count the flow as new. So: the entry is created with BPF_NOEXIST (only the CPU
 * whose insert wins counts a new flow), its counters grow with atomic adds, and the elephant event
 * goes out from the one CPU whose compare-and-swap turns `announced` from 0 to 1.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct softrss_flow_key);
	__type(value, struct softrss_flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PARSE_STATUS_MAX);
	__type(key, __u32);	/* enum parse_status; PARSE_OK stays 0 */
	__type(value, __u64);
} unparsed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct softrss_misses);
} misses SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} elephants SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SOFTRSS_MAX_BUCKETS);
	__type(key, __u32);
	__type(value, __u32);	/* CPU */
} bucket_cpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CPUMAP);
	__uint(max_entries, SOFTRSS_MAX_BUCKETS);
	__type(key, __u32);	/* CPU */
	__type(value, __u32);	/* queue size */
} cpus SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, SOFTRSS_MAX_BUCKETS);
	__type(key, __u32);	/* bucket */
	__type(value, __u32);	/* ifindex */
} ifaces SEC(".maps");

static __always_inline struct softrss_misses *misses_here(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&misses, &zero);
}

/* The NIC's hash of @f: the fields the input takes, XORed pairwise first in symmetric mode. */
static __always_inline __u32 flow_hash(const struct flow *f, bool ports)
{
	const struct toeplitz_table *tbl;
	struct flow in = *f;
	__u32 words[9], zero = 0;
	int i;

	if (symmetric) {
#pragma unroll
		for (i = 0; i < 4; i++) {
			in.saddr.v6[i] ^= f->daddr.v6[i];
			in.daddr.v6[i] = in.saddr.v6[i];
		}
		in.sport ^= f->dport;
		in.dport = in.sport;
	}

	if (hash_kind == SOFTRSS_HASH_TOEPLITZ) {
		tbl = bpf_map_lookup_elem(&toeplitz, &zero);
		return tbl ? toeplitz_flow(tbl, &in, ports) : 0;
	}

	/* jhash over the same bytes as the Toeplitz input, read as CPU-order words. */
	if (in.l3_proto == bpf_htons(ETH_P_IPV6)) {
		__builtin_memcpy(words, &in.saddr, 16);
		__builtin_memcpy(&words[4], &in.daddr, 16);
		__builtin_memcpy(&words[8], &in.sport, 4);	/* sport, dport */
		return ports ? jhash2(words, 9, jhash_initval) : jhash2(words, 8, jhash_initval);
	}
	words[0] = in.saddr.v4;
	words[1] = in.daddr.v4;
	__builtin_memcpy(&words[2], &in.sport, 4);
	return ports ? jhash2(words, 3, jhash_initval) : jhash2(words, 2, jhash_initval);
}

static __always_inline void announce(const struct softrss_flow_key *key, struct softrss_flow *fl,
				     __u64 packets, __u64 bytes)
{
	struct softrss_elephant *ev;
	struct softrss_misses *m;

	ev = bpf_ringbuf_reserve(&elephants, sizeof(*ev), 0);
	if (!ev) {
		/* Nothing was announced: let a later packet of the flow try again. */
		fl->announced = 0;
		m = misses_here();
		if (m)
			m->ring_full++;
		return;
	}
	ev->key = *key;
	ev->packets = packets;
	ev->bytes = bytes;
	ev->first_seen_ns = fl->first_seen_ns;
	ev->last_seen_ns = fl->last_seen_ns;
	ev->hash = fl->hash;
	ev->bucket = fl->bucket;
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline bool elephant(__u64 packets, __u64 bytes)
{
	return (threshold_packets && packets >= threshold_packets) ||
	       (threshold_bytes && bytes >= threshold_bytes);
}

/* Count the frame in its flow; true if the flow is new (this CPU created its entry). */
static __always_inline bool track_flow(const struct softrss_flow_key *key, __u32 hash,
				       __u32 bucket, __u64 len)
{
	struct softrss_flow *fl, init = {};
	struct softrss_misses *m;
	__u64 now = bpf_ktime_get_coarse_ns(), packets, bytes;
	bool created = false;

	fl = bpf_map_lookup_elem(&flows, key);
	if (!fl) {
		init.first_seen_ns = now;
		init.hash = hash;
		init.bucket = bucket;
		/* -EEXIST: another CPU inserted it first and counts it as new. */
		created = bpf_map_update_elem(&flows, key, &init, BPF_NOEXIST) == 0;
		fl = bpf_map_lookup_elem(&flows, key);
		if (!fl) {
			m = misses_here();
			if (m)
				m->untracked++;
			return created;
		}
	}
	packets = __sync_fetch_and_add(&fl->packets, 1) + 1;
	bytes = __sync_fetch_and_add(&fl->bytes, len) + len;
	fl->last_seen_ns = now;	/* racing stores all write "about now" */

	if (!fl->announced && elephant(packets, bytes) &&
	    __sync_val_compare_and_swap(&fl->announced, 0, 1) == 0)
		announce(key, fl, packets, bytes);
	return created;
}

SEC("xdp")
int softrss_xdp(struct xdp_md *ctx)
{
	struct softrss_flow_key key;
	struct softrss_bucket *b;
	struct softrss_misses *m;
	enum parse_status status;
	struct cursor c;
	struct flow f;
	__u32 hash, slot, bucket, *bucket_p, *cpu;
	__u64 len, *n;
	bool ports;

	cursor_init(&c, (void *)(long)ctx->data, (void *)(long)ctx->data_end);
	len = c.len;
	status = parse_flow(&c, &f);
	if (status != PARSE_OK) {
		slot = status;
		n = bpf_map_lookup_elem(&unparsed, &slot);
		if (n)
			(*n)++;
		return XDP_PASS;
	}

	ports = (f.flags & FLOW_F_PORTS) && !(f.flags & FLOW_F_FRAGMENT);
	hash = flow_hash(&f, ports);
	slot = hash & (RETA_SIZE - 1);
	bucket_p = bpf_map_lookup_elem(&reta, &slot);
	bucket = bucket_p ? *bucket_p : 0;
	b = bucket < n_buckets ? bpf_map_lookup_elem(&buckets, &bucket) : NULL;
	if (!b) {
		m = misses_here();
		if (m)
			m->no_bucket++;
		return XDP_PASS;
	}

	__builtin_memset(&key, 0, sizeof(key));
	__builtin_memcpy(&key.saddr, &f.saddr, sizeof(key.saddr));
	__builtin_memcpy(&key.daddr, &f.daddr, sizeof(key.daddr));
	if (ports) {
		key.sport = f.sport;
		key.dport = f.dport;
	}
	key.l4_proto = f.l4_proto;
	key.ip_version = f.l3_proto == bpf_htons(ETH_P_IPV6) ? 6 : 4;

	b->packets++;
	b->bytes += len;
	if (track_flow(&key, hash, bucket, len))
		b->flows++;

	switch (action) {
	case SOFTRSS_ACTION_CPU:
		cpu = bpf_map_lookup_elem(&bucket_cpu, &bucket);
		if (!cpu)
			return XDP_PASS;
		/* The low bits of the flags are the action when the CPU has no entry: pass. */
		return bpf_redirect_map(&cpus, *cpu, XDP_PASS);
	case SOFTRSS_ACTION_IFACES:
		return bpf_redirect_map(&ifaces, bucket, XDP_PASS);
	default:
		return XDP_PASS;
	}
}

/* Attached to the listening end of each `ifaces` bucket interface: a veth delivers frames redirected
 * into its peer only when this end runs an XDP program or has GRO (PLATFORM trap 4), and GRO would
 * merge a TCP burst into one packet before a flow monitor counts it. */
SEC("xdp")
int softrss_bucket_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
