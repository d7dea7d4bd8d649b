// SPDX-License-Identifier: GPL-2.0
/* The flow-metrics ring reader: the records of flowtable.h's `records` ring (struct flow_record,
 * one a packet, from the RINGBUF storage or the SPILL policy) read straight from the ring's memory
 * and added up per flow, keyed by (ip_version, key bytes), in an open-addressing hash table of our
 * own.
 *
 * The ring is read as libbpf's ringbuf.c reads it: the consumer page mapped read-write, the
 * producer page and the data area (mapped twice in a row, so that a record that wraps is
 * contiguous) read-only; the producer position and each record's header loaded with acquire
 * semantics; a record whose header has the BUSY bit is reserved but not yet submitted, and ends the
 * batch (everything after it waits too); a DISCARD record is skipped; records are 8-byte aligned
 * after their 8-byte header. Unlike libbpf, a call reads the producer position once and stores the
 * consumer position once, with release semantics, after its batch: a producer faster than this
 * reader cannot keep a call from returning (PLATFORM.md trap 3), and the producer's CPU sees the
 * consumer page's cache line move once a batch, not once a record.
 *
 * The record's layout comes from the BPF object's BTF (ringdrain.py fills it in), never from a
 * copy here. The arithmetic is flowmon.py's _Stats.add: sums, the earliest first seen, the latest
 * last seen, the OR of the flags, the earliest SYN and FIN (a record's time, if its flags have it).
 *
 * Why C: a Python loop over the records added about 0.3 M records a second to the table, a third
 * of what arrives at the zero-loss rates of the benchmark; this adds 15-21 M a second with up to
 * 10,000 flows (README, The ring's reader).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../include/ringbuf_mmap.h"
#include "ringdrain.h"

#define KEY_WORDS	(FLOWMON_RINGDRAIN_KEY_MAX / 8)
#define FIRST_SLOTS	2048		/* the table's first size: it doubles at half full */
#define MAX_SLOTS	(1ULL << 31)	/* a 32-bit hash can place a flow in any of them */

_Static_assert(FLOWMON_RINGDRAIN_KEY_MAX % 8 == 0, "keys hash and compare as 64-bit words");

/* An index slot: the flow's place in `flows` plus one (0: free), and its hash, which places it
 * (its home is hash & slot_mask) and turns most other flows away unread.
 */
struct slot {
	uint32_t flow;
	uint32_t hash;
};

struct flowmon_ringdrain {
	pthread_mutex_t lock;
	struct ringbuf_mmap ring;
	struct flowmon_ringdrain_layout layout;
	struct slot *slots;		/* linear probing, at most half full */
	uint64_t slot_mask;
	struct flowmon_ringdrain_flow *flows;	/* dense, room for half the slots */
	uint32_t n_flows;
	uint64_t refused;
};

static uint32_t hash_key(uint8_t version, const uint8_t *key)
{
	uint64_t h = version, w;

	for (int i = 0; i < KEY_WORDS; i++) {
		memcpy(&w, key + 8 * i, 8);
		h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
		h ^= h >> 29;
	}
	h *= 0xbf58476d1ce4e5b9ULL;
	return (uint32_t)(h ^ (h >> 32));
}

static bool same_key(const uint8_t *a, const uint8_t *b)
{
	uint64_t x, y, diff = 0;

	for (int i = 0; i < KEY_WORDS; i++) {
		memcpy(&x, a + 8 * i, 8);
		memcpy(&y, b + 8 * i, 8);
		diff |= x ^ y;
	}
	return !diff;
}

/* A field of the record (little-endian, as the kernel wrote it on this machine). */
static uint64_t field_of(const uint8_t *rec, const struct flowmon_ringdrain_field *f)
{
	uint64_t v8;
	uint32_t v4;
	uint16_t v2;

	switch (f->size) {
	case 1:
		return rec[f->offset];
	case 2:
		memcpy(&v2, rec + f->offset, 2);
		return v2;
	case 4:
		memcpy(&v4, rec + f->offset, 4);
		return v4;
	default:	/* 8: open() takes no other size */
		memcpy(&v8, rec + f->offset, 8);
		return v8;
	}
}

/* The earlier of two times, 0 being none. */
static uint64_t earliest(uint64_t a, uint64_t b)
{
	if (!a || !b)
		return a | b;
	return a < b ? a : b;
}

static uint64_t home_of(const struct flowmon_ringdrain *d, uint32_t hash)
{
	return hash & d->slot_mask;
}

/* The table's memory is anonymous mappings of its own: zeroed by the kernel, the flows grown by
 * mremap (no copy), all of it given back when the reader closes, and a process's address-space
 * limit (RLIMIT_AS) refuses a growth at once instead of being met from memory malloc kept.
 */
static void *map_zeroed(size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static size_t slot_bytes(uint64_t slots)
{
	return slots * sizeof(struct slot);
}

static size_t flow_bytes(uint64_t slots)
{
	return slots / 2 * sizeof(struct flowmon_ringdrain_flow);
}

/* Double the index and the flows' room; the table as it was if memory runs out. */
static int grow(struct flowmon_ringdrain *d)
{
	uint64_t size = 2 * (d->slot_mask + 1);
	struct flowmon_ringdrain_flow *flows;
	struct slot *slots;

	if (size > MAX_SLOTS)
		return -E2BIG;
	slots = map_zeroed(slot_bytes(size));
	if (!slots)
		return -ENOMEM;
	flows = mremap(d->flows, flow_bytes(size / 2), flow_bytes(size), MREMAP_MAYMOVE);
	if (flows == MAP_FAILED) {
		munmap(slots, slot_bytes(size));
		return -ENOMEM;
	}
	d->flows = flows;
	for (uint64_t i = 0; i <= d->slot_mask; i++) {
		uint64_t j;

		if (!d->slots[i].flow)
			continue;
		for (j = d->slots[i].hash & (size - 1); slots[j].flow; j = (j + 1) & (size - 1))
			;
		slots[j] = d->slots[i];
	}
	munmap(d->slots, slot_bytes(size / 2));
	d->slots = slots;
	d->slot_mask = size - 1;
	return 0;
}

/* The index slot of the flow, or of the free slot where its probe ends. */
static uint64_t probe(const struct flowmon_ringdrain *d, uint8_t version, const uint8_t *key,
		      uint32_t hash)
{
	uint64_t i;

	for (i = home_of(d, hash); d->slots[i].flow; i = (i + 1) & d->slot_mask) {
		const struct flowmon_ringdrain_flow *f = &d->flows[d->slots[i].flow - 1];

		if (d->slots[i].hash == hash && f->ip_version == version && same_key(f->key, key))
			break;
	}
	return i;
}

/* The flow of the key, made empty if new; NULL if the table cannot grow for it. */
static struct flowmon_ringdrain_flow *flow_of(struct flowmon_ringdrain *d, uint8_t version,
					      const uint8_t *key)
{
	uint32_t hash = hash_key(version, key);
	struct flowmon_ringdrain_flow *f;
	uint64_t i = probe(d, version, key, hash);

	if (d->slots[i].flow)
		return &d->flows[d->slots[i].flow - 1];
	if (2 * ((uint64_t)d->n_flows + 1) > d->slot_mask + 1) {
		if (grow(d))
			return NULL;
		i = probe(d, version, key, hash);
	}
	f = &d->flows[d->n_flows++];
	memset(f, 0, sizeof(*f));
	f->ip_version = version;
	memcpy(f->key, key, FLOWMON_RINGDRAIN_KEY_MAX);
	d->slots[i] = (struct slot){ .flow = d->n_flows, .hash = hash };
	return f;
}

/* The key's size for an IP version; 0 for another version. */
static uint32_t key_size_of(const struct flowmon_ringdrain_layout *l, uint64_t version)
{
	return version == 4 ? l->key4_size : version == 6 ? l->key6_size : 0;
}

static int add_record(struct flowmon_ringdrain *d, const uint8_t *rec, uint32_t len)
{
	const struct flowmon_ringdrain_layout *l = &d->layout;
	uint8_t key[FLOWMON_RINGDRAIN_KEY_MAX] = { 0 };
	struct flowmon_ringdrain_flow *f;
	uint64_t version, size, ts, packets, flags;

	if (len < l->record_size)
		return -EBADMSG;
	version = field_of(rec, &l->ip_version);
	size = key_size_of(l, version);
	if (!size)
		return -EBADMSG;
	memcpy(key, rec + l->key_offset, size);
	packets = field_of(rec, &l->packets);
	f = flow_of(d, (uint8_t)version, key);
	if (!f) {
		d->refused += packets;
		return 0;
	}
	ts = field_of(rec, &l->ts_ns);
	flags = field_of(rec, &l->tcp_flags);
	f->packets += packets;
	f->bytes += field_of(rec, &l->bytes);
	f->tcp_flags |= (uint32_t)flags;
	f->first_seen_ns = earliest(f->first_seen_ns, ts);
	if (ts > f->last_seen_ns)
		f->last_seen_ns = ts;
	f->syn_ns = earliest(f->syn_ns, flags & l->syn ? ts : 0);
	f->fin_ns = earliest(f->fin_ns, flags & l->fin ? ts : 0);
	return 0;
}

long flowmon_ringdrain_drain(struct flowmon_ringdrain *d, uint64_t budget)
{
	uint64_t start, consumer, producer;
	long records = 0;
	int err = 0;

	pthread_mutex_lock(&d->lock);
	start = consumer = *d->ring.consumer;	/* ours alone to write */
	producer = __atomic_load_n(d->ring.producer, __ATOMIC_ACQUIRE);
	while (consumer < producer && (uint64_t)records < budget) {
		const uint8_t *record = d->ring.data + (consumer & d->ring.mask);
		uint32_t len = __atomic_load_n((const uint32_t *)record, __ATOMIC_ACQUIRE);

		if (len & RINGBUF_BUSY)
			break;
		consumer += ringbuf_record_span(len);
		if (len & RINGBUF_DISCARD)
			continue;
		records++;
		err = add_record(d, record + RINGBUF_HDR, len & ~RINGBUF_DISCARD);
		if (err)
			break;		/* read past: the next call goes on after it */
	}
	if (consumer != start)
		__atomic_store_n(d->ring.consumer, consumer, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&d->lock);
	return err ? err : records;
}

size_t flowmon_ringdrain_flows(struct flowmon_ringdrain *d, struct flowmon_ringdrain_flow *out,
			       size_t n)
{
	size_t held;

	pthread_mutex_lock(&d->lock);
	held = d->n_flows;
	memcpy(out, d->flows, (n < held ? n : held) * sizeof(*out));
	pthread_mutex_unlock(&d->lock);
	return held;
}

/* Free index slot i, moving back the flows after it whose probe passes through it (linear
 * probing's deletion: no tombstones).
 */
static void free_slot(struct flowmon_ringdrain *d, uint64_t i)
{
	uint64_t j = i, mask = d->slot_mask;

	for (;;) {
		j = (j + 1) & mask;
		if (!d->slots[j].flow)
			break;
		if (((j - home_of(d, d->slots[j].hash)) & mask) >= ((j - i) & mask)) {
			d->slots[i] = d->slots[j];
			i = j;
		}
	}
	d->slots[i].flow = 0;
}

int flowmon_ringdrain_take(struct flowmon_ringdrain *d, uint8_t ip_version, const uint8_t *key,
			   uint32_t key_size, struct flowmon_ringdrain_flow *out)
{
	uint8_t padded[FLOWMON_RINGDRAIN_KEY_MAX] = { 0 };
	uint32_t hash, last, at;
	uint64_t i;

	if (!key_size || key_size != key_size_of(&d->layout, ip_version))
		return -EINVAL;
	memcpy(padded, key, key_size);
	hash = hash_key(ip_version, padded);
	pthread_mutex_lock(&d->lock);
	i = probe(d, ip_version, padded, hash);
	if (!d->slots[i].flow) {
		pthread_mutex_unlock(&d->lock);
		return 0;
	}
	at = d->slots[i].flow - 1;
	*out = d->flows[at];
	free_slot(d, i);
	/* The last flow fills the hole, so that `flows` stays dense. */
	last = --d->n_flows;
	if (at != last) {
		const struct flowmon_ringdrain_flow *moved = &d->flows[last];

		i = probe(d, moved->ip_version, moved->key, hash_key(moved->ip_version, moved->key));
		d->slots[i].flow = at + 1;
		d->flows[at] = *moved;
	}
	pthread_mutex_unlock(&d->lock);
	return 1;
}

uint64_t flowmon_ringdrain_refused(struct flowmon_ringdrain *d)
{
	uint64_t refused;

	pthread_mutex_lock(&d->lock);
	refused = d->refused;
	pthread_mutex_unlock(&d->lock);
	return refused;
}

void flowmon_ringdrain_clear(struct flowmon_ringdrain *d, bool counts)
{
	pthread_mutex_lock(&d->lock);
	memset(d->slots, 0, slot_bytes(d->slot_mask + 1));
	d->n_flows = 0;
	if (counts)
		d->refused = 0;
	pthread_mutex_unlock(&d->lock);
}

static bool field_fits(const struct flowmon_ringdrain_field *f, uint32_t record_size)
{
	bool sized = f->size == 1 || f->size == 2 || f->size == 4 || f->size == 8;

	return sized && f->offset <= record_size && f->size <= record_size - f->offset;
}

static bool layout_fits(const struct flowmon_ringdrain_layout *l)
{
	const struct flowmon_ringdrain_field *fields[] = {
		&l->ts_ns, &l->packets, &l->bytes, &l->ip_version, &l->tcp_flags,
	};
	uint32_t key_max = l->key4_size > l->key6_size ? l->key4_size : l->key6_size;

	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		if (!field_fits(fields[i], l->record_size))
			return false;
	return l->key4_size && l->key6_size && key_max <= FLOWMON_RINGDRAIN_KEY_MAX &&
	       l->key_offset <= l->record_size && key_max <= l->record_size - l->key_offset;
}

struct flowmon_ringdrain *flowmon_ringdrain_open(int ring_fd, uint32_t ring_size,
						 const struct flowmon_ringdrain_layout *layout)
{
	struct flowmon_ringdrain *d;
	int err;

	if (!layout_fits(layout) || !ring_size || ring_size & (ring_size - 1)) {
		errno = EINVAL;
		return NULL;
	}
	d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	pthread_mutex_init(&d->lock, NULL);
	d->layout = *layout;
	d->slot_mask = FIRST_SLOTS - 1;
	d->slots = map_zeroed(slot_bytes(FIRST_SLOTS));
	d->flows = map_zeroed(flow_bytes(FIRST_SLOTS));
	if (!d->slots || !d->flows || ringbuf_mmap(&d->ring, ring_fd, ring_size))
		goto fail;
	return d;
fail:
	err = errno;
	flowmon_ringdrain_close(d);
	errno = err;
	return NULL;
}

void flowmon_ringdrain_close(struct flowmon_ringdrain *d)
{
	if (!d)
		return;
	ringbuf_munmap(&d->ring);
	if (d->flows)
		munmap(d->flows, flow_bytes(d->slot_mask + 1));
	if (d->slots)
		munmap(d->slots, slot_bytes(d->slot_mask + 1));
	pthread_mutex_destroy(&d->lock);
	free(d);
}
