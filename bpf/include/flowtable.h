/* SPDX-License-Identifier: GPL-2.0 */
/* Flow counters in the storage chosen at load: the flow keys and counters that cross to userspace,
 * their maps, and flow_count(), which adds one packet (or one GSO/GRO super-packet) to its flow.
 *
 * Include once per BPF object. Storage (const volatile flow_storage, set before load):
 *  - HASH, LRU_HASH: one entry per flow shared by all CPUs. A new entry is created with BPF_NOEXIST
 *    holding the packet's counts; on -EEXIST another CPU created it first, so look it up again and add
 *    (counter_insert(), counter.h).
 *    Counters grow with atomic adds: two CPUs counting one flow never lose each other's packets.
 *  - PERCPU_HASH, LRU_PERCPU_HASH: one entry per flow, a value per CPU, plain adds; userspace sums.
 *  - ARRAY, PERCPU_ARRAY: the flow is hashed (jhash) to a slot that holds its key. A packet whose
 *    slot holds another flow is a collision: counted as a miss, or spilled, never merged.
 *  - RINGBUF: no table in the kernel, a record per packet; userspace adds them up into the same table.
 * The hash kinds use flows4/flows6, whose type the control plane sets at load; the array kinds
 * slots4/slots6. The maps a storage does not use are created with one entry.
 *
 * A full table (a hash's -E2BIG, an array's collision) follows flow_full: DROP counts the packet as
 * a miss, SPILL sends its record to the ring buffer (as the RINGBUF storage does). The LRU kinds
 * EVICT the least recently used flow instead. Every packet not counted is counted in `misses` by
 * reason; flows created and packets spilled in `activity`.
 *
 * Times are CLOCK_MONOTONIC_COARSE (bpf_ktime_get_coarse_ns(): a jiffy's resolution, and no clock
 * source read: cheaper than bpf_ktime_get_ns() on every packet).
 */
#ifndef BPFLAB_FLOWTABLE_H
#define BPFLAB_FLOWTABLE_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <linux/errno.h>
#include "counter.h"
#include "jhash.h"
#include "parse.h"

/* Loads and stores the compiler may neither merge, split nor move (libbpf 1.1 defines neither). */
#define FLOW_READ_ONCE(x)	(*(volatile typeof(x) *)&(x))
#define FLOW_WRITE_ONCE(x, v)	(*(volatile typeof(x) *)&(x) = (v))

#define FLOW_SLOT_HASH_INITVAL	0x666c6f77	/* "flow": the array kinds' slot hash */
#define FLOW_RING_BYTES		1048576	/* default; the control plane sets it at load */

#define TCP_FLAG_FIN	0x01
#define TCP_FLAG_SYN	0x02

enum flow_storage {
	FLOW_STORAGE_HASH = 0,
	FLOW_STORAGE_PERCPU_HASH = 1,
	FLOW_STORAGE_LRU_HASH = 2,
	FLOW_STORAGE_LRU_PERCPU_HASH = 3,
	FLOW_STORAGE_ARRAY = 4,
	FLOW_STORAGE_PERCPU_ARRAY = 5,
	FLOW_STORAGE_RINGBUF = 6,
};

enum flow_full {
	FLOW_FULL_DROP = 0,	/* count the packet as a miss */
	FLOW_FULL_EVICT = 1,	/* LRU kinds: the kernel evicts the least recently used flow */
	FLOW_FULL_SPILL = 2,	/* send the packet's record to the ring buffer */
};

enum flow_direction {
	FLOW_DIR_INGRESS = 0,
	FLOW_DIR_EGRESS = 1,
};

const volatile enum flow_storage flow_storage = FLOW_STORAGE_HASH;
const volatile enum flow_full flow_full = FLOW_FULL_DROP;
const volatile __u32 flow_slots = 1;	/* the array kinds' slots (slots4/slots6 max_entries) */

/* Addresses and ports in network order, as on the wire. Ports are 0 for protocols without ports
 * and for every fragment of a fragmented datagram (only the first carries ports): a datagram stays
 * one flow. Separate IPv4 and IPv6 keys: the kernel hashes and compares whole keys, 20 bytes
 * against 44.
 */
struct flow_key4 {
	__u32 ifindex;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 direction;		/* enum flow_direction */
	__u16 pad;
};

struct flow_key6 {
	__u32 ifindex;
	union flow_addr saddr;
	union flow_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 direction;
	__u16 pad;
};

struct flow_stats {
	__u64 packets;
	__u64 bytes;		/* on the wire: Ethernet header to the end of the IP packet's padding */
	__u64 first_seen_ns;
	__u64 last_seen_ns;
	__u64 syn_ns;		/* the first TCP SYN (0: none) */
	__u64 fin_ns;		/* the first TCP FIN (0: none) */
	__u32 tcp_flags;	/* OR of every packet's (the header's byte 13: CWR...FIN) */
	__u32 pad;
};

/* An array slot; `claimed` is set once, when the slot's first flow has written its key. */
struct flow_slot4 {
	struct flow_key4 key;
	__u32 claimed;
	struct flow_stats stats;
};

struct flow_slot6 {
	struct flow_key6 key;
	__u32 claimed;
	struct flow_stats stats;
};

#define FLOW_KEY4_WORDS	(sizeof(struct flow_key4) / 4)
#define FLOW_KEY6_WORDS	(sizeof(struct flow_key6) / 4)
/* A slot is its key, then `claimed`, then the stats at the next 8-byte boundary. */
#define FLOW_SLOT_STATS_OFF(n_words)	(((n_words) * 4 + 4 + 7) & ~7)
_Static_assert(__builtin_offsetof(struct flow_slot4, stats) == FLOW_SLOT_STATS_OFF(FLOW_KEY4_WORDS),
	       "flow_slot_count() finds a slot4's stats");
_Static_assert(__builtin_offsetof(struct flow_slot6, stats) == FLOW_SLOT_STATS_OFF(FLOW_KEY6_WORDS),
	       "flow_slot_count() finds a slot6's stats");

/* The shared array's claim lock, one per slot index (for both slot arrays): a lock inside the slot
 * would need two value layouts, since per-CPU maps take no bpf_spin_lock.
 */
struct flow_slot_lock {
	struct bpf_spin_lock lock;
};

union flow_record_key {
	struct flow_key4 v4;
	struct flow_key6 v6;
};

/* A packet as the RINGBUF storage and the SPILL policy send it. */
struct flow_record {
	__u64 ts_ns;
	__u32 packets;		/* segments of a GSO/GRO packet; else 1 */
	__u32 bytes;
	__u8 ip_version;	/* which key: 4 or 6 */
	__u8 tcp_flags;
	__u16 pad;
	union flow_record_key key;
};

/* Packets not counted, per CPU, by reason. */
struct flow_misses {
	__u64 table_full;	/* DROP: a new flow found the hash table full (-E2BIG) */
	__u64 collision;	/* DROP: the flow's array slot holds another flow */
	__u64 ring_full;	/* RINGBUF or SPILL: no room in the ring for the record */
	__u64 entry_gone;	/* the entry went between -EEXIST and the next lookup (deleted, evicted) */
};

struct flow_activity {
	__u64 created;		/* flows that entered the table (an LRU may have evicted some since;
				 * a per-CPU array counts a flow once per CPU that claimed it a slot)
				 */
	__u64 spilled;		/* packets the SPILL policy sent to the ring */
};

/* Types only userspace reads, carried into BTF. */
struct flow_record *unused_flow_record __attribute__((unused));
struct flow_slot_lock *unused_flow_slot_lock __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);	/* or PERCPU_HASH, LRU_HASH, LRU_PERCPU_HASH */
	__uint(max_entries, 1);
	__type(key, struct flow_key4);
	__type(value, struct flow_stats);
} flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct flow_key6);
	__type(value, struct flow_stats);
} flows6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);	/* or PERCPU_ARRAY */
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_slot4);
} slots4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_slot6);
} slots6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_slot_lock);
} slot_locks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FLOW_RING_BYTES);
} records SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_misses);
} misses SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_activity);
} activity SEC(".maps");

/* One packet (or the segments of one GSO/GRO packet) of a flow. */
struct flow_packet {
	__u32 packets;
	__u32 bytes;
	__u8 tcp_flags;
};

enum flow_outcome {
	FLOW_COUNTED,
	FLOW_FULL,		/* no entry or slot for the flow: flow_full decides */
	FLOW_MISSED,		/* counted in misses already */
};

static __always_inline bool flow_storage_percpu(void)
{
	return flow_storage == FLOW_STORAGE_PERCPU_HASH ||
	       flow_storage == FLOW_STORAGE_LRU_PERCPU_HASH ||
	       flow_storage == FLOW_STORAGE_PERCPU_ARRAY;
}

static __always_inline struct flow_misses *flow_misses_here(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&misses, &zero);
}

static __always_inline struct flow_activity *flow_activity_here(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&activity, &zero);
}

static __always_inline void flow_stats_init(struct flow_stats *st, const struct flow_packet *p,
					    __u64 now)
{
	st->packets = p->packets;
	st->bytes = p->bytes;
	st->first_seen_ns = now;
	st->last_seen_ns = now;
	st->syn_ns = p->tcp_flags & TCP_FLAG_SYN ? now : 0;
	st->fin_ns = p->tcp_flags & TCP_FLAG_FIN ? now : 0;
	st->tcp_flags = p->tcp_flags;
}

/* Add @p to an entry. A per-CPU entry is this CPU's alone (plain adds; it is zero where another
 * CPU created the flow, hence the first_seen check). A shared one takes atomic adds, and a
 * compare-and-swap for the first SYN and FIN; last_seen is a plain store of "about now" by
 * whichever CPU is last.
 */
static __always_inline void flow_stats_add(struct flow_stats *st, const struct flow_packet *p,
					   __u64 now)
{
	if (flow_storage_percpu()) {
		if (!st->first_seen_ns)
			st->first_seen_ns = now;
		st->packets += p->packets;
		st->bytes += p->bytes;
		st->last_seen_ns = now;
		st->tcp_flags |= p->tcp_flags;
		if (p->tcp_flags & TCP_FLAG_SYN && !st->syn_ns)
			st->syn_ns = now;
		if (p->tcp_flags & TCP_FLAG_FIN && !st->fin_ns)
			st->fin_ns = now;
		return;
	}
	__sync_fetch_and_add(&st->packets, p->packets);
	__sync_fetch_and_add(&st->bytes, p->bytes);
	st->last_seen_ns = now;
	/* Read first: most packets add no new flag, and a locked OR dirties the line for nothing. */
	if (p->tcp_flags & ~st->tcp_flags)
		__sync_fetch_and_or(&st->tcp_flags, p->tcp_flags);
	if (p->tcp_flags & TCP_FLAG_SYN && !st->syn_ns)
		__sync_val_compare_and_swap(&st->syn_ns, 0, now);
	if (p->tcp_flags & TCP_FLAG_FIN && !st->fin_ns)
		__sync_val_compare_and_swap(&st->fin_ns, 0, now);
}

static __always_inline enum flow_outcome flow_table_count(void *table, const void *key,
							  const struct flow_packet *p, __u64 now)
{
	struct flow_stats *st, init = {};
	struct flow_activity *act;
	struct flow_misses *m;

	st = bpf_map_lookup_elem(table, key);
	if (st) {
		flow_stats_add(st, p, now);
		return FLOW_COUNTED;
	}
	flow_stats_init(&init, p, now);
	switch (counter_insert(table, key, &init, (void **)&st)) {
	case COUNTER_CREATED:
		act = flow_activity_here();
		if (act)
			act->created++;
		return FLOW_COUNTED;
	case COUNTER_RACED:
		flow_stats_add(st, p, now);
		return FLOW_COUNTED;
	case COUNTER_FULL:
		return FLOW_FULL;
	default:
		m = flow_misses_here();
		if (m)
			m->entry_gone += p->packets;
		return FLOW_MISSED;
	}
}

/* The slot index of a key: the multiply-shift reduction of its jhash to 0..flow_slots-1 (no
 * division, any number of slots).
 */
static __always_inline __u32 flow_slot_index(const __u32 *key_words, __u32 n_words)
{
	return ((__u64)jhash2(key_words, n_words, FLOW_SLOT_HASH_INITVAL) * flow_slots) >> 32;
}

static __always_inline bool flow_key_equal(const __u32 *a, const __u32 *b, __u32 n_words)
{
	__u32 diff = 0;
	int i;

#pragma unroll
	for (i = 0; i < n_words; i++)
		diff |= a[i] ^ b[i];
	return !diff;
}

/* Count @p in array slot @index of @slots, whose value is a key of @n_words words, a __u32 claimed
 * and a struct flow_stats. A free slot is claimed for the key: per CPU, by this CPU alone; shared,
 * under the index's lock, so two CPUs never both write a key into one slot. Once claimed, the key
 * never changes, and a packet whose flow is in the slot takes the lock-free path.
 */
static __always_inline enum flow_outcome flow_slot_count(void *slots, __u32 index, const void *key,
							 __u32 n_words, const struct flow_packet *p,
							 __u64 now)
{
	struct flow_slot_lock *lock;
	struct flow_activity *act;
	struct flow_stats *st;
	bool created = false;
	__u32 *claimed, was_claimed;
	void *slot;

	slot = bpf_map_lookup_elem(slots, &index);
	if (!slot)
		return FLOW_FULL;	/* not reached: index < flow_slots */
	claimed = slot + n_words * 4;
	st = slot + FLOW_SLOT_STATS_OFF(n_words);

	was_claimed = FLOW_READ_ONCE(*claimed);
	barrier();	/* the pair of the writer's: the key and stats are read after claimed */
	if (!was_claimed) {
		if (flow_storage_percpu()) {
			__builtin_memcpy(slot, key, n_words * 4);
			flow_stats_init(st, p, now);
			*claimed = 1;
			created = true;
		} else {
			lock = bpf_map_lookup_elem(&slot_locks, &index);
			if (!lock)
				return FLOW_FULL;
			bpf_spin_lock(&lock->lock);
			if (!*claimed) {
				__builtin_memcpy(slot, key, n_words * 4);
				flow_stats_init(st, p, now);
				/* x86 keeps stores in order, so a CPU that reads claimed == 1 reads
				 * the key and stats written before it, but the compiler does not:
				 * a volatile store orders nothing else, and clang sank the stats'
				 * stores below it, so a CPU counting on the lock-free path had its
				 * add overwritten by flow_stats_init(). The barrier keeps them above.
				 */
				barrier();
				FLOW_WRITE_ONCE(*claimed, 1);
				created = true;
			}
			bpf_spin_unlock(&lock->lock);
		}
		if (created) {
			act = flow_activity_here();
			if (act)
				act->created++;
			return FLOW_COUNTED;
		}
	}
	if (!flow_key_equal(slot, key, n_words))
		return FLOW_FULL;
	flow_stats_add(st, p, now);
	return FLOW_COUNTED;
}

static __always_inline bool flow_ring_send(const union flow_record_key *key, __u8 ip_version,
					   const struct flow_packet *p, __u64 now)
{
	struct flow_record *rec;
	struct flow_misses *m;

	rec = bpf_ringbuf_reserve(&records, sizeof(*rec), 0);
	if (!rec) {
		m = flow_misses_here();
		if (m)
			m->ring_full += p->packets;
		return false;
	}
	rec->ts_ns = now;
	rec->packets = p->packets;
	rec->bytes = p->bytes;
	rec->ip_version = ip_version;
	rec->tcp_flags = p->tcp_flags;
	rec->pad = 0;
	rec->key = *key;
	bpf_ringbuf_submit(rec, 0);
	return true;
}

/* What a full table does with @p: spill it, or count it as a miss of @reason. */
static __always_inline void flow_full_policy(const union flow_record_key *key, __u8 ip_version,
					     const struct flow_packet *p, __u64 now, bool collision)
{
	struct flow_activity *act;
	struct flow_misses *m;

	if (flow_full == FLOW_FULL_SPILL) {
		if (flow_ring_send(key, ip_version, p, now)) {
			act = flow_activity_here();
			if (act)
				act->spilled += p->packets;
		}
		return;
	}
	m = flow_misses_here();
	if (!m)
		return;
	if (collision)
		m->collision += p->packets;
	else
		m->table_full += p->packets;
}

/* The key of @f, seen on @ifindex in @direction. */
static __always_inline __u8 flow_key_of(const struct flow *f, __u32 ifindex, __u8 direction,
					union flow_record_key *key)
{
	bool ports = (f->flags & (FLOW_F_PORTS | FLOW_F_FRAGMENT)) == FLOW_F_PORTS;

	__builtin_memset(key, 0, sizeof(*key));
	if (f->l3_proto == bpf_htons(ETH_P_IPV6)) {
		key->v6.ifindex = ifindex;
		key->v6.saddr = f->saddr;
		key->v6.daddr = f->daddr;
		key->v6.sport = ports ? f->sport : 0;
		key->v6.dport = ports ? f->dport : 0;
		key->v6.proto = f->l4_proto;
		key->v6.direction = direction;
		return 6;
	}
	key->v4.ifindex = ifindex;
	key->v4.saddr = f->saddr.v4;
	key->v4.daddr = f->daddr.v4;
	key->v4.sport = ports ? f->sport : 0;
	key->v4.dport = ports ? f->dport : 0;
	key->v4.proto = f->l4_proto;
	key->v4.direction = direction;
	return 4;
}


/* Count @p in the flow of @f seen on @ifindex in @direction, in the storage chosen at load. */
static __always_inline void flow_count(const struct flow *f, __u32 ifindex, __u8 direction,
				       const struct flow_packet *p)
{
	union flow_record_key key;
	enum flow_outcome outcome;
	__u64 now = bpf_ktime_get_coarse_ns();
	__u8 version;
	bool array = flow_storage == FLOW_STORAGE_ARRAY || flow_storage == FLOW_STORAGE_PERCPU_ARRAY;

	version = flow_key_of(f, ifindex, direction, &key);
	if (flow_storage == FLOW_STORAGE_RINGBUF) {
		flow_ring_send(&key, version, p, now);
		return;
	}
	if (version == 6) {
		if (array)
			outcome = flow_slot_count(&slots6, flow_slot_index((__u32 *)&key.v6,
									   FLOW_KEY6_WORDS),
						  &key.v6, FLOW_KEY6_WORDS, p, now);
		else
			outcome = flow_table_count(&flows6, &key.v6, p, now);
	} else {
		if (array)
			outcome = flow_slot_count(&slots4, flow_slot_index((__u32 *)&key.v4,
									   FLOW_KEY4_WORDS),
						  &key.v4, FLOW_KEY4_WORDS, p, now);
		else
			outcome = flow_table_count(&flows4, &key.v4, p, now);
	}
	if (outcome == FLOW_FULL)
		flow_full_policy(&key, version, p, now, array);
}

#endif /* BPFLAB_FLOWTABLE_H */
