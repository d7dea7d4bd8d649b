// SPDX-License-Identifier: GPL-2.0
/* Soft RSS: spread flows over buckets the way a NIC's receive-side scaling would, where the NIC has
 * none. Each frame is parsed (parse.h), hashed (Toeplitz bit-exact with NIC RSS, or jhash), and its
 * bucket read from a 128-entry indirection table (RETA) at hash & 127, as NICs do. The bucket is
 * counted per CPU, the flow in a shared LRU table (one for IPv4, one for IPv6), and a flow crossing
 * the elephant threshold is announced once on a ring buffer. Then the frame is passed (`count`),
 * redirected to the bucket's CPU through a CPUMAP (`cpu`: software RSS) or to the bucket's interface
 * through a DEVMAP (`ifaces`).
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
#include "unparsed.h"
#include "toeplitz.h"

#define RETA_SIZE		128	/* what `ethtool -x` shows on most NICs */
#define SOFTRSS_MAX_BUCKETS	RETA_SIZE
#define FLOW_CACHE_BITS		12
#define FLOW_CACHE_SLOTS	(1 << FLOW_CACHE_BITS)	/* per CPU, in sets of two */
#define FLOW_CACHE_FLUSH	4	/* jiffies between a cached flow's flushes */
/* cache_index()'s odd multipliers, one a key word */
#define FLOW_CACHE_MUL0		0x9e3779b97f4a7c15ULL
#define FLOW_CACHE_MUL1		0xc2b2ae3d27d4eb4fULL
#define FLOW_CACHE_MUL2		0x165667b19e3779f9ULL
#define FLOW_CACHE_MUL3		0xd6e8feb86659fd93ULL
#define FLOW_CACHE_MUL4		0xff51afd7ed558ccdULL

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
const volatile __u32 n_cpus = 1;		/* possible CPUs: each may hold counts in its cache */

/* Flow keys: addresses and ports in network order, as on the wire; ports are 0 for fragments and
 * protocols without ports, which hash on addresses only. IPv4 and IPv6 flows live in two tables:
 * the kernel hashes and compares the whole key on every lookup, and a 16-byte IPv4 key makes that
 * cheaper than the 40 bytes an IPv6 one needs.
 */
struct softrss_flow_key4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 l4_proto;
	__u8 pad[3];
};

struct softrss_flow_key6 {
	union flow_addr saddr;
	union flow_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 l4_proto;
	__u8 pad[3];
};

union softrss_flow_key {
	struct softrss_flow_key4 v4;
	struct softrss_flow_key6 v6;
	__u64 words[5];	/* how the flow cache builds, hashes and compares keys */
};

/* flow_key() lays the words out as the structs above on a little-endian machine. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "flow_key() assumes little endian");

struct softrss_flow {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen_ns;	/* CLOCK_MONOTONIC_COARSE: a jiffy's resolution */
	__u64 last_seen_ns;	/* as of the flow's last flush from a cache slot: up to 4 jiffies old */
	/* The jiffy of last_seen_ns. Reading jiffies is one load (the verifier inlines it), a clock
	 * read is a helper call (~11 ns): the clock is read only when a flush is the first in a new
	 * jiffy, and the coarse clock does not move between jiffies anyway.
	 */
	__u64 last_seen_jiffies;
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
	union softrss_flow_key key;
	__u8 ip_version;	/* which key: 4 or 6 */
	__u64 packets;		/* when the threshold was crossed */
	__u64 bytes;
	__u64 first_seen_ns;
	__u64 last_seen_ns;
	__u32 hash;
	__u32 bucket;
};

/* The per-CPU flow cache: a flow's hash, and its packets counted on this CPU and not yet added to
 * its shared entry. A lookup in the shared table costs ~25 ns whatever the key, and Toeplitz 12
 * table lookups (IPv4) to 36 (IPv6): most of soft RSS's budget. A set of two slots is found by a
 * few multiplies of the key (an array index, inlined), and a packet of a slot's flow takes its hash
 * from the slot and only counts into it. The slot is flushed into the shared entry (atomic adds,
 * last seen, the elephant check) at its first packet FLOW_CACHE_FLUSH jiffies after the last flush,
 * when it holds this CPU's share of what is left to the elephant threshold (cpu_share()), and when
 * another flow takes the slot: an empty one, else the one flushed longest ago. A flow taking a slot is counted in the
 * shared table directly, so flows fighting over a set cost what they would without the cache.
 * Readers add the slots' counts to the shared entries.
 */
struct softrss_cached_flow {
	union softrss_flow_key key;
	__u32 packets;		/* since the last flush: at most a jiffy's worth */
	__u32 bytes;
	__u32 packets_left;	/* to count here before a flush: cpu_share() (~0: never) */
	__u32 bytes_left;
	__u32 hash;
	__u16 jiffies;		/* of the last flush, low bits: a wrap delays a flush a jiffy */
	__u8 bucket;		/* as of the last flush */
	__u8 ip_version;	/* 4 or 6; 0: the slot is empty */
};

/* One cache line a slot: in line-aligned memory (flow_cache is mmapable, hence page-aligned), a
 * slot costs one miss.
 */
_Static_assert(sizeof(struct softrss_cached_flow) == 64, "a flow cache slot is one cache line");
_Static_assert(SOFTRSS_MAX_BUCKETS <= 256, "softrss_cached_flow.bucket is a __u8");

/* Things that were not done, per CPU: each says what the control plane should look at. */
struct softrss_misses {
	__u64 ring_full;	/* an elephant event found the ring full: the next packet retries */
	__u64 untracked;	/* frames counted in their bucket whose flow entry was evicted at once */
	__u64 no_bucket;	/* the RETA named a bucket >= n_buckets: frame passed uncounted */
};

/* Types only Python reads (ring records), carried into BTF. */
struct softrss_elephant *unused_elephant __attribute__((unused));
struct softrss_cached_flow *unused_cached_flow __attribute__((unused));

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
	__type(key, struct softrss_flow_key4);
	__type(value, struct softrss_flow);
} flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct softrss_flow_key6);
	__type(value, struct softrss_flow);
} flows6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);	/* for the alignment, not for mmap() */
	__uint(max_entries, FLOW_CACHE_SLOTS);	/* per CPU: the control plane multiplies it */
	__type(key, __u32);	/* cache_index() */
	__type(value, struct softrss_cached_flow);
} flow_cache SEC(".maps");

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

/* The NIC's hash of the fields of @in the input takes. */
static __always_inline __u32 hash_input(const struct flow *in, bool ports)
{
	const struct toeplitz_table *tbl;
	__u32 words[9], zero = 0;

	if (hash_kind == SOFTRSS_HASH_TOEPLITZ) {
		tbl = bpf_map_lookup_elem(&toeplitz, &zero);
		return tbl ? toeplitz_flow(tbl, in, ports) : 0;
	}

	/* jhash over the Toeplitz input read as CPU-order words, the port word always taken, 0 when
	 * the ports are not hashed. A flow's key zeroes those ports too, so equal keys give equal
	 * hashes, which the flow cache relies on when it hands out a cached flow's hash. Hashing the
	 * addresses alone made a UDP datagram with ports 0 and 0 hash apart from a fragment of the
	 * same addresses, one key: the cache gave the second the first's hash. (Toeplitz is linear:
	 * zero bytes add nothing, so it needs no such word.)
	 */
	if (in->l3_proto == bpf_htons(ETH_P_IPV6)) {
		__builtin_memcpy(words, &in->saddr, 16);
		__builtin_memcpy(&words[4], &in->daddr, 16);
		__builtin_memcpy(&words[8], &in->sport, 4);	/* sport, dport */
		if (!ports)
			words[8] = 0;
		return jhash2(words, 9, jhash_initval);
	}
	words[0] = in->saddr.v4;
	words[1] = in->daddr.v4;
	__builtin_memcpy(&words[2], &in->sport, 4);
	if (!ports)
		words[2] = 0;
	return jhash2(words, 3, jhash_initval);
}

/* The hash of @f; symmetric mode XORs the source and destination fields pairwise first. */
static __always_inline __u32 flow_hash(const struct flow *f, bool ports)
{
	struct flow folded;
	int i;

	if (!symmetric)
		return hash_input(f, ports);	/* no copy of the flow: ~5 ns a packet */
	folded = *f;
#pragma unroll
	for (i = 0; i < 4; i++) {
		folded.saddr.v6[i] ^= f->daddr.v6[i];
		folded.daddr.v6[i] = folded.saddr.v6[i];
	}
	folded.sport ^= f->dport;
	folded.dport = folded.sport;
	return hash_input(&folded, ports);
}

static __always_inline void announce(const union softrss_flow_key *key, __u8 ip_version,
				     struct softrss_flow *fl, __u64 packets, __u64 bytes)
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
	ev->ip_version = ip_version;
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

/* How much a CPU may count in a cache slot before it flushes, when the shared entry holds @count
 * towards @threshold (0: off): its share of what is left, at least 1, capped to a __u32. Near the
 * threshold every packet flushes, so a flow seen by one CPU is announced exactly at it; a flow seen
 * by several may be announced late by what the other CPUs still hold, less than their shares.
 */
static __always_inline __u32 cpu_share(__u64 threshold, __u64 count)
{
	__u64 share;

	if (!threshold)
		return ~0U;
	if (count >= threshold)
		return 0;
	share = (threshold - count + n_cpus - 1) / n_cpus;
	return share > ~0U ? ~0U : share;
}

/* Add @packets and @bytes to the shared entry of the flow @key in @table (flows4 or flows6),
 * creating it if missing; its counts and flag after the add go to @slot. True if this CPU created
 * the entry: the flow is new.
 */
static __always_inline bool add_to_table(void *table, const union softrss_flow_key *key,
					 __u8 ip_version, __u32 hash, __u32 bucket, __u64 packets,
					 __u64 bytes, __u64 jiffies, struct softrss_cached_flow *slot)
{
	struct softrss_flow *fl, init = {};
	struct softrss_misses *m;
	__u64 total_packets, total_bytes;
	bool created = false;

	fl = bpf_map_lookup_elem(table, key);
	if (!fl) {
		init.first_seen_ns = bpf_ktime_get_coarse_ns();
		init.last_seen_ns = init.first_seen_ns;
		init.last_seen_jiffies = jiffies;
		init.hash = hash;
		init.bucket = bucket;
		/* -EEXIST: another CPU inserted it first and counts it as new. */
		created = bpf_map_update_elem(table, key, &init, BPF_NOEXIST) == 0;
		fl = bpf_map_lookup_elem(table, key);
		if (!fl) {
			m = misses_here();
			if (m)
				m->untracked += packets;
			slot->packets_left = cpu_share(threshold_packets, 0);
			slot->bytes_left = cpu_share(threshold_bytes, 0);
			return created;
		}
	}
	total_packets = __sync_fetch_and_add(&fl->packets, packets) + packets;
	total_bytes = __sync_fetch_and_add(&fl->bytes, bytes) + bytes;
	if (fl->last_seen_jiffies != jiffies) {
		/* The clock is a helper call (~11 ns), jiffies one inlined load; racing CPUs all
		 * store "about now".
		 */
		fl->last_seen_jiffies = jiffies;
		fl->last_seen_ns = bpf_ktime_get_coarse_ns();
	}
	if (!fl->announced && elephant(total_packets, total_bytes) &&
	    __sync_val_compare_and_swap(&fl->announced, 0, 1) == 0)
		announce(key, ip_version, fl, total_packets, total_bytes);
	/* An announced flow never flushes early again; a failed announcement (ring full) leaves
	 * nothing left, so the next packet retries.
	 */
	slot->packets_left = fl->announced ? ~0U : cpu_share(threshold_packets, total_packets);
	slot->bytes_left = fl->announced ? ~0U : cpu_share(threshold_bytes, total_bytes);
	return created;
}

/* add_to_table() on the table of @ip_version: one call site per map, so that the verifier can
 * inline each lookup.
 */
static __always_inline bool add_to_flow(const union softrss_flow_key *key, __u8 ip_version,
					__u32 hash, __u32 bucket, __u64 packets, __u64 bytes,
					__u64 jiffies, struct softrss_cached_flow *slot)
{
	if (ip_version == 6)
		return add_to_table(&flows6, key, 6, hash, bucket, packets, bytes, jiffies, slot);
	return add_to_table(&flows4, key, 4, hash, bucket, packets, bytes, jiffies, slot);
}

/* Move the slot's counts into its flow's shared entry. A flow whose entry the LRU evicted comes
 * back as new, in @bucket.
 */
static __always_inline void flush(struct softrss_cached_flow *slot, __u32 bucket, __u64 jiffies)
{
	struct softrss_bucket *b;

	if (add_to_flow(&slot->key, slot->ip_version, slot->hash, bucket, slot->packets,
			slot->bytes, jiffies, slot)) {
		b = bpf_map_lookup_elem(&buckets, &bucket);
		if (b)
			b->flows++;
	}
	slot->packets = slot->bytes = 0;
	slot->jiffies = jiffies;
	slot->bucket = bucket;
}

static __always_inline __u64 pair(__u32 low, __u32 high)
{
	return (__u64)high << 32 | low;
}

/* Build the key a word at a time from the parser's fields: stores as wide as the loads that
 * follow (cache_index(), same_flow()), which the CPU can forward; byte and half-word stores
 * read back as words stall for a dozen cycles.
 */
static __always_inline void flow_key(union softrss_flow_key *key, const struct flow *f,
				     bool ports, __u8 ip_version)
{
	__u64 tail = (__u64)f->l4_proto << 32;	/* sport, dport, l4_proto, pad */

	if (ports)
		tail |= (__u32)f->sport | (__u32)f->dport << 16;
	if (ip_version == 6) {
		key->words[0] = pair(f->saddr.v6[0], f->saddr.v6[1]);
		key->words[1] = pair(f->saddr.v6[2], f->saddr.v6[3]);
		key->words[2] = pair(f->daddr.v6[0], f->daddr.v6[1]);
		key->words[3] = pair(f->daddr.v6[2], f->daddr.v6[3]);
		key->words[4] = tail;
		return;
	}
	key->words[0] = pair(f->saddr.v4, f->daddr.v4);
	key->words[1] = tail;
	key->words[2] = key->words[3] = key->words[4] = 0;
}

static __always_inline bool same_flow(const struct softrss_cached_flow *slot,
				      const union softrss_flow_key *key, __u8 ip_version)
{
	const __u64 *a = slot->key.words, *b = key->words;

	if (slot->ip_version != ip_version)
		return false;
	if (ip_version == 4)
		return a[0] == b[0] && a[1] == b[1];
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4];
}

/* The cache slot of the flow @key on this CPU: the top bits of a sum of the key's words times odd
 * constants. Every word counts (unlike an XOR, a swap of source and destination moves the slot)
 * and the multiplies run in parallel.
 */
static __always_inline __u32 cache_index(const union softrss_flow_key *key, __u8 ip_version)
{
	const __u64 *w = key->words;
	__u64 h = w[0] * FLOW_CACHE_MUL0 + w[1] * FLOW_CACHE_MUL1;

	if (ip_version == 6)
		h += w[2] * FLOW_CACHE_MUL2 + w[3] * FLOW_CACHE_MUL3 + w[4] * FLOW_CACHE_MUL4;
	/* Each CPU has its own FLOW_CACHE_SLOTS: a plain array indexed by CPU is one load away,
	 * where a PERCPU_ARRAY reads a pointer first. A flow may sit in either slot of its set.
	 */
	return bpf_get_smp_processor_id() * FLOW_CACHE_SLOTS + (h >> (64 - FLOW_CACHE_BITS) & ~1);
}

/* Which slot of a set a new flow takes: an empty one, else the one flushed longest ago. */
static __always_inline bool older(const struct softrss_cached_flow *a,
				  const struct softrss_cached_flow *b)
{
	__u16 now = bpf_jiffies64();

	if (!a->ip_version || !b->ip_version)
		return !a->ip_version;
	return (__u16)(now - a->jiffies) > (__u16)(now - b->jiffies);
}

/* Count the frame in its flow, through its cache @slot (@hit: the slot holds the flow); true if the
 * flow is new (this CPU created its shared entry).
 */
static __always_inline bool track_flow(struct softrss_cached_flow *slot, bool hit,
				       const union softrss_flow_key *key, __u8 ip_version,
				       __u32 hash, __u32 bucket, __u64 len)
{
	__u64 jiffies = bpf_jiffies64();
	bool created;

	if (hit) {
		slot->packets++;
		slot->bytes += len;
		if ((__u16)((__u16)jiffies - slot->jiffies) >= FLOW_CACHE_FLUSH ||
		    slot->packets >= slot->packets_left || slot->bytes >= slot->bytes_left)
			flush(slot, bucket, jiffies);
		return false;	/* a flush that re-creates the entry counts it itself */
	}

	if (slot->ip_version && slot->packets)
		flush(slot, slot->bucket, jiffies);
	created = add_to_flow(key, ip_version, hash, bucket, 1, len, jiffies, slot);
	slot->key = *key;
	slot->ip_version = ip_version;
	slot->packets = slot->bytes = 0;
	slot->jiffies = jiffies;
	slot->hash = hash;
	slot->bucket = bucket;
	return created;
}

SEC("xdp")
int softrss_xdp(struct xdp_md *ctx)
{
	struct softrss_cached_flow *cached, *other;
	union softrss_flow_key key;
	struct softrss_bucket *b;
	struct softrss_misses *m;
	enum parse_status status;
	struct cursor c;
	struct flow f;
	__u32 hash, slot, bucket, *bucket_p, *cpu;
	__u64 len;
	__u8 ip_version;
	bool ports, hit;

	cursor_init(&c, (void *)(long)ctx->data, (void *)(long)ctx->data_end);
	len = c.len;
	status = parse_flow(&c, &f);
	if (status != PARSE_OK) {
		count_unparsed(status);
		return XDP_PASS;
	}

	ports = (f.flags & FLOW_F_PORTS) && !(f.flags & FLOW_F_FRAGMENT);
	ip_version = f.l3_proto == bpf_htons(ETH_P_IPV6) ? 6 : 4;
	flow_key(&key, &f, ports, ip_version);
	slot = cache_index(&key, ip_version);
	cached = bpf_map_lookup_elem(&flow_cache, &slot);
	if (!cached)
		return XDP_PASS;	/* cannot happen: the index is in range */
	hit = same_flow(cached, &key, ip_version);
	if (!hit) {
		slot |= 1;
		other = bpf_map_lookup_elem(&flow_cache, &slot);
		if (other) {
			hit = same_flow(other, &key, ip_version);
			if (hit || older(other, cached))
				cached = other;
		}
	}
	hash = hit ? cached->hash : flow_hash(&f, ports);
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

	b->packets++;
	b->bytes += len;
	if (track_flow(cached, hit, &key, ip_version, hash, bucket, len))
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
