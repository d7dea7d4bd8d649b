// SPDX-License-Identifier: GPL-2.0
/* The traffic counter's time-series reader: both tables of trafcount.bpf.c (addrs4, addrs6: LRU
 * hashes whose entries every CPU shares, so one value per key, not one per CPU) read with
 * BPF_MAP_LOOKUP_BATCH, each key's last read and what its bins added up to kept in a hash table of
 * our own, and each read written out as one bin of deltas, in the binary format or as JSON lines
 * (series.py's docstring holds both). The fixed grid of 1/hz runs here too, so that the interpreter
 * takes no part in a bin.
 *
 * The rules are SeriesModel's (model.py), which the unit tests hold this file to: the first read of
 * a key (or its first since a read that did not see it) is all new; a key whose packets or bytes went
 * down was evicted and created again, so all of it is new; an unchanged key makes no delta. A delta
 * too large for the binary format's u32 fields is written as several deltas of the same key.
 *
 * Why C: in Python the dictionary pass over the addresses cost most of a CPU at 1 kHz with 1,000
 * addresses changing in every bin, and tens of bins a second with 10,000 (README, Figures).
 */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>

#include "series.h"

#define KEY4_SIZE	8	/* struct traf_key4: __be32 addr, __u8 proto, __u8 pad[3] */
#define KEY6_SIZE	20	/* struct traf_key6: 16 bytes of address, __u8 proto, __u8 pad[3] */
#define VALUE_SIZE	16	/* struct traf_counts: __u64 packets, __u64 bytes */
#define BATCH_MAX	16384	/* entries a BPF_MAP_LOOKUP_BATCH call returns at most */
#define PREFETCH	8	/* entries of a batch ahead whose slot is fetched early */
#define U32_MAX		0xffffffffULL
#define NAME_MAX_LEN	59	/* a JSON delta's start: ["ffff:...:ffff", 255,  */
#define BIN_HEADER	20	/* u64 bin, u64 t_ns, u32 count */
#define DELTA		26	/* u8 version, u8 proto, 16 bytes of address, u32 packets, u32 bytes */

_Static_assert(NAME_MAX_LEN + 2 * 20 + 8 <= TRAFCOUNT_SERIES_PIECE, "a JSON delta fits a piece");

/* A key: the address (IPv4: 4 bytes, then zeros), the protocol and the IP version (0: a free slot).
 * The map key's pad bytes are no part of it.
 */
struct key {
	uint8_t addr[16];
	uint8_t proto;
	uint8_t version;
	uint8_t pad[2];
};

/* One key's slot in the hash table: what a read touches, in one cache line. */
struct slot {
	struct key key;
	uint32_t id;		/* the key's place in the order first seen */
	uint64_t seen;		/* the read that last saw it; 0: none yet */
	uint64_t packets, bytes;	/* at that read */
	uint64_t sum_packets, sum_bytes;	/* what its bins added up to */
} __attribute__((aligned(64)));

_Static_assert(sizeof(struct slot) == 64, "a slot is a cache line");

/* What only output and summed() need, by id. */
struct key_text {
	uint32_t slot;
	uint8_t name_len;
	char name[NAME_MAX_LEN];	/* made when the key is first seen */
};

struct delta {
	struct key key;
	uint32_t id;
	uint64_t packets, bytes;
};

struct table {
	int fd;
	uint8_t version;
	uint32_t key_size;
	uint32_t batch;		/* entries the buffers hold */
	uint8_t *keys, *values;	/* as the kernel gives them */
	struct key *parsed;		/* the batch's keys, and their hashes */
	uint64_t *hashes;
};

struct trafcount_series {
	struct table tables[2];
	struct slot *slots;		/* open addressing, linear probing, at most half full */
	uint64_t mask;
	struct key_text *texts;
	uint32_t n_keys, cap_keys;
	struct delta *deltas;		/* the last read's */
	uint32_t n_deltas, cap_deltas;
	uint64_t pieces;		/* the binary deltas the last read makes (oversized ones split) */
	uint64_t read;			/* reads made */
	uint64_t t_ns;
	int out_fd, format;
	uint8_t *out;
	size_t out_len, out_size;
	int stop_fd;
	int stopped;
	struct trafcount_series_stats *stats;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t mix(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	return h ^ (h >> 33);
}

static uint64_t hash_words(uint64_t a, uint64_t b, uint32_t c)
{
	return mix(a ^ mix(b ^ mix(c)));
}

/* The hash of a key in the table (key_from() computes the same from the map's key). */
static uint64_t hash_key(const struct key *k)
{
	uint64_t a = 0, b = 0;
	uint32_t v4;

	if (k->version == 4) {
		memcpy(&v4, k->addr, 4);
		a = v4;
	} else {
		memcpy(&a, k->addr, 8);
		memcpy(&b, k->addr + 8, 8);
	}
	return hash_words(a, b, k->proto | (uint32_t)k->version << 8);
}

/* The key of a map key, and its hash, with sizes the compiler knows (no call to memcpy). */
static uint64_t key_from(uint8_t version, const uint8_t *raw, struct key *key)
{
	uint64_t a = 0, b = 0;
	uint32_t v4;

	memset(key, 0, sizeof(*key));
	key->version = version;
	if (version == 4) {
		memcpy(key->addr, raw, 4);
		memcpy(&v4, raw, 4);
		a = v4;
		key->proto = raw[4];
	} else {
		memcpy(key->addr, raw, 16);
		memcpy(&a, raw, 8);
		memcpy(&b, raw + 8, 8);
		key->proto = raw[16];
	}
	return hash_words(a, b, key->proto | (uint32_t)version << 8);
}

static bool same_key(const struct key *a, const struct key *b)
{
	return !memcmp(a, b, sizeof(*a));
}

/* --- text, as Python's json.dumps and ipaddress write it --- */

static char *put_u64(char *p, uint64_t v)
{
	char digits[20];
	int n = 0;

	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = digits[--n];
	return p;
}

static char *put_hex16(char *p, unsigned v)
{
	static const char hex[] = "0123456789abcdef";
	int shift = 12;

	while (shift > 0 && !(v >> shift))
		shift -= 4;
	for (; shift >= 0; shift -= 4)
		*p++ = hex[(v >> shift) & 0xf];
	return p;
}

/* RFC 5952 as Python's ipaddress (3.11) writes it: the longest run of two or more zero groups (the first
 * of equals) becomes "::"; no dotted IPv4 tail, even for ::ffff:a.b.c.d.
 */
static char *put_ipv6(char *p, const uint8_t *addr)
{
	unsigned groups[8];
	int best = 8, best_len = 1, run = 0;

	for (int i = 0; i < 8; i++) {
		groups[i] = (unsigned)addr[2 * i] << 8 | addr[2 * i + 1];
		run = groups[i] ? 0 : run + 1;
		if (run > best_len) {
			best_len = run;
			best = i - run + 1;
		}
	}
	for (int i = 0; i < 8;) {
		if (i == best) {
			*p++ = ':';
			*p++ = ':';
			i += best_len;
			continue;
		}
		if (i && i != best + best_len)
			*p++ = ':';
		p = put_hex16(p, groups[i]);
		i++;
	}
	return p;
}

static void make_name(const struct key *key, struct key_text *t)
{
	char *p = t->name;

	*p++ = '[';
	*p++ = '"';
	if (key->version == 4) {
		for (int i = 0; i < 4; i++) {
			if (i)
				*p++ = '.';
			p = put_u64(p, key->addr[i]);
		}
	} else {
		p = put_ipv6(p, key->addr);
	}
	memcpy(p, "\", ", 3);
	p = put_u64(p + 3, key->proto);
	memcpy(p, ", ", 2);
	t->name_len = (uint8_t)(p + 2 - t->name);
}

/* --- the keys --- */

static int grow_slots(struct trafcount_series *s)
{
	uint64_t size = s->mask ? 2 * (s->mask + 1) : 1024;
	struct slot *slots = aligned_alloc(64, size * sizeof(*slots));

	if (!slots)
		return -ENOMEM;
	memset(slots, 0, size * sizeof(*slots));
	for (uint64_t i = 0; s->mask && i <= s->mask; i++) {
		uint64_t j;

		if (!s->slots[i].key.version)
			continue;
		for (j = hash_key(&s->slots[i].key) & (size - 1); slots[j].key.version;
		     j = (j + 1) & (size - 1))
			;
		slots[j] = s->slots[i];
		s->texts[slots[j].id].slot = (uint32_t)j;
	}
	free(s->slots);
	s->slots = slots;
	s->mask = size - 1;
	return 0;
}

/* The key's slot, made (seen 0) if new; NULL if out of memory. */
static struct slot *slot_of(struct trafcount_series *s, const struct key *key, uint64_t h)
{
	struct key_text *t;
	uint64_t i;

	for (i = h & s->mask; s->slots[i].key.version; i = (i + 1) & s->mask) {
		if (same_key(&s->slots[i].key, key))
			return &s->slots[i];
	}
	if (s->n_keys == s->cap_keys) {
		uint32_t cap = s->cap_keys ? 2 * s->cap_keys : 1024;
		struct key_text *texts = realloc(s->texts, (size_t)cap * sizeof(*texts));

		if (!texts)
			return NULL;
		s->texts = texts;
		s->cap_keys = cap;
	}
	if (2 * ((uint64_t)s->n_keys + 1) > s->mask + 1) {
		if (grow_slots(s))
			return NULL;
		for (i = h & s->mask; s->slots[i].key.version; i = (i + 1) & s->mask)
			;
	}
	s->slots[i] = (struct slot){ .key = *key, .id = s->n_keys };
	t = &s->texts[s->n_keys++];
	t->slot = (uint32_t)i;
	make_name(key, t);
	return &s->slots[i];
}

static uint64_t pieces_of(uint64_t packets, uint64_t bytes)
{
	uint64_t p, b;

	if (packets <= U32_MAX && bytes <= U32_MAX)
		return 1;
	p = packets / U32_MAX + !!(packets % U32_MAX);
	b = bytes / U32_MAX + !!(bytes % U32_MAX);
	return p > b ? p : b;
}

/* One entry of a read: its delta against the read before, if any. */
static int take(struct trafcount_series *s, const struct key *key, uint64_t h, const uint8_t *value)
{
	uint64_t packets, bytes, dp, db;
	struct slot *k;

	memcpy(&packets, value, 8);
	memcpy(&bytes, value + 8, 8);
	k = slot_of(s, key, h);
	if (!k)
		return -ENOMEM;
	dp = packets;
	db = bytes;
	/* Seen by the read before (or, should a walk ever return a key twice, by this one). */
	if (k->seen && k->seen + 1 >= s->read) {
		if (packets == k->packets && bytes == k->bytes) {
			k->seen = s->read;
			return 0;
		}
		if (packets >= k->packets && bytes >= k->bytes) {
			dp = packets - k->packets;
			db = bytes - k->bytes;
		}
		/* else: evicted and created again since: all of it is new */
	}
	k->seen = s->read;
	k->packets = packets;
	k->bytes = bytes;
	k->sum_packets += dp;
	k->sum_bytes += db;
	if (s->n_deltas == s->cap_deltas) {
		uint32_t cap = s->cap_deltas ? 2 * s->cap_deltas : 1024;
		struct delta *deltas = realloc(s->deltas, (size_t)cap * sizeof(*deltas));

		if (!deltas)
			return -ENOMEM;
		s->deltas = deltas;
		s->cap_deltas = cap;
	}
	s->deltas[s->n_deltas++] = (struct delta){ *key, k->id, dp, db };
	s->pieces += pieces_of(dp, db);
	return 0;
}

/* A batch's entries: each key's slot is fetched PREFETCH entries ahead (the table outgrows the
 * caches: a slot is a cache miss).
 */
static int take_batch(struct trafcount_series *s, struct table *t, uint32_t count)
{
	for (uint32_t i = 0; i < count; i++) {
		t->hashes[i] = key_from(t->version, t->keys + (size_t)i * t->key_size, &t->parsed[i]);
		if (i < PREFETCH)
			__builtin_prefetch(&s->slots[t->hashes[i] & s->mask]);
	}
	for (uint32_t i = 0; i < count; i++) {
		int err;

		if (i + PREFETCH < count)
			__builtin_prefetch(&s->slots[t->hashes[i + PREFETCH] & s->mask], 1);
		err = take(s, &t->parsed[i], t->hashes[i], t->values + (size_t)i * VALUE_SIZE);
		if (err)
			return err;
	}
	return 0;
}

static int grow_batch(struct table *t, uint32_t batch)
{
	void *p = realloc(t->keys, (size_t)batch * t->key_size);

	if (!p)
		return -ENOMEM;
	t->keys = p;
	p = realloc(t->values, (size_t)batch * VALUE_SIZE);
	if (!p)
		return -ENOMEM;
	t->values = p;
	p = realloc(t->hashes, (size_t)batch * sizeof(*t->hashes));
	if (!p)
		return -ENOMEM;
	t->hashes = p;
	p = realloc(t->parsed, (size_t)batch * sizeof(*t->parsed));
	if (!p)
		return -ENOMEM;
	t->parsed = p;
	t->batch = batch;
	return 0;
}

/* The whole table, a batch at a time: the kernel walks its buckets in order, each under its lock,
 * and resumes at the bucket `out` names. ENOENT ends the walk (with the last entries in `count`).
 */
static int read_table(struct trafcount_series *s, struct table *t)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	uint64_t in = 0, out = 0;
	bool first = true;

	for (;;) {
		uint32_t count = t->batch;
		int ret = bpf_map_lookup_batch(t->fd, first ? NULL : &in, &out, t->keys, t->values,
					       &count, &opts);
		int err;

		if (ret == -ENOSPC && !count) {	/* one bucket holds more than a batch */
			ret = grow_batch(t, 2 * t->batch);
			if (ret)
				return ret;
			continue;
		}
		if (ret < 0 && ret != -ENOENT)
			return ret;
		err = take_batch(s, t, count);
		if (err)
			return err;
		if (ret == -ENOENT)
			return 0;
		in = out;
		first = false;
	}
}

/* --- output --- */

static int out_flush(struct trafcount_series *s)
{
	size_t done = 0;

	while (done < s->out_len) {
		ssize_t n = write(s->out_fd, s->out + done, s->out_len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		done += (size_t)n;
	}
	s->out_len = 0;
	return 0;
}

/* Room for one piece: a bin's header or one of its deltas. */
static uint8_t *out_piece(struct trafcount_series *s, int *err)
{
	if (s->out_len + TRAFCOUNT_SERIES_PIECE > s->out_size) {
		*err = out_flush(s);
		if (*err)
			return NULL;
	}
	return s->out + s->out_len;
}

static int write_binary(struct trafcount_series *s, uint64_t index)
{
	uint64_t u64;
	uint32_t u32;
	uint8_t *p;
	int err = 0;

	p = out_piece(s, &err);
	if (!p)
		return err;
	u64 = htole64(index);
	memcpy(p, &u64, 8);
	u64 = htole64(s->t_ns);
	memcpy(p + 8, &u64, 8);
	u32 = htole32((uint32_t)s->pieces);
	memcpy(p + 16, &u32, 4);
	s->out_len += BIN_HEADER;
	for (uint32_t i = 0; i < s->n_deltas; i++) {
		const struct delta *d = &s->deltas[i];
		uint64_t packets = d->packets, bytes = d->bytes;

		do {	/* more than a u32 holds: several deltas, which add up to it */
			uint64_t tp = packets < U32_MAX ? packets : U32_MAX;
			uint64_t tb = bytes < U32_MAX ? bytes : U32_MAX;

			p = out_piece(s, &err);
			if (!p)
				return err;
			p[0] = d->key.version;
			p[1] = d->key.proto;
			memcpy(p + 2, d->key.addr, 16);
			u32 = htole32((uint32_t)tp);
			memcpy(p + 18, &u32, 4);
			u32 = htole32((uint32_t)tb);
			memcpy(p + 22, &u32, 4);
			s->out_len += DELTA;
			packets -= tp;
			bytes -= tb;
		} while (packets || bytes);
	}
	return 0;
}

static int write_json(struct trafcount_series *s, uint64_t index)
{
	char *p, *start;
	int err = 0;

	start = p = (char *)out_piece(s, &err);
	if (!p)
		return err;
	memcpy(p, "{\"bin\": ", 8);
	p = put_u64(p + 8, index);
	memcpy(p, ", \"t_ns\": ", 10);
	p = put_u64(p + 10, s->t_ns);
	memcpy(p, ", \"deltas\": [", 13);
	s->out_len += (size_t)(p + 13 - start);
	for (uint32_t i = 0; i < s->n_deltas; i++) {
		const struct delta *d = &s->deltas[i];
		const struct key_text *k = &s->texts[d->id];

		start = p = (char *)out_piece(s, &err);
		if (!p)
			return err;
		if (i) {
			memcpy(p, ", ", 2);
			p += 2;
		}
		memcpy(p, k->name, k->name_len);
		p = put_u64(p + k->name_len, d->packets);
		memcpy(p, ", ", 2);
		p = put_u64(p + 2, d->bytes);
		*p++ = ']';
		s->out_len += (size_t)(p - start);
	}
	p = (char *)out_piece(s, &err);
	if (!p)
		return err;
	memcpy(p, "]}\n", 3);
	s->out_len += 3;
	return 0;
}

/* --- the API --- */

struct trafcount_series *trafcount_series_open(int fd4, uint32_t entries4, int fd6, uint32_t entries6,
					       int out_fd, int format, uint32_t hz, size_t out_size,
					       struct trafcount_series_stats *stats)
{
	struct trafcount_series *s;
	int err = -EINVAL;

	if (format < TRAFCOUNT_SERIES_NONE || format > TRAFCOUNT_SERIES_BINARY ||
	    (format != TRAFCOUNT_SERIES_NONE && (out_fd < 0 || out_size < TRAFCOUNT_SERIES_PIECE)) ||
	    hz > 0xffff || !entries4 || !entries6) {
		errno = EINVAL;
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		errno = ENOMEM;
		return NULL;
	}
	s->tables[0] = (struct table){ .fd = fd4, .version = 4, .key_size = KEY4_SIZE };
	s->tables[1] = (struct table){ .fd = fd6, .version = 6, .key_size = KEY6_SIZE };
	s->out_fd = out_fd;
	s->format = format;
	s->stats = stats;
	s->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->stop_fd < 0) {
		err = -errno;
		goto fail;
	}
	err = grow_batch(&s->tables[0], entries4 < BATCH_MAX ? entries4 : BATCH_MAX);
	if (!err)
		err = grow_batch(&s->tables[1], entries6 < BATCH_MAX ? entries6 : BATCH_MAX);
	if (!err)
		err = grow_slots(s);
	if (err)
		goto fail;
	if (format != TRAFCOUNT_SERIES_NONE) {
		uint16_t u16;

		s->out = malloc(out_size);
		if (!s->out) {
			err = -ENOMEM;
			goto fail;
		}
		s->out_size = out_size;
		if (format == TRAFCOUNT_SERIES_BINARY) {	/* b"TCTS", u16 version, u16 hz */
			memcpy(s->out, "TCTS", 4);
			u16 = htole16(TRAFCOUNT_SERIES_VERSION);
			memcpy(s->out + 4, &u16, 2);
			u16 = htole16((uint16_t)hz);
			memcpy(s->out + 6, &u16, 2);
			s->out_len = 8;
		}
	}
	return s;
fail:
	trafcount_series_close(s);
	errno = -err;
	return NULL;
}

long trafcount_series_sample(struct trafcount_series *s)
{
	uint64_t index = s->stats->bins;
	int err = 0;

	s->read++;
	s->n_deltas = 0;
	s->pieces = 0;
	for (int i = 0; i < 2 && !err; i++)
		err = read_table(s, &s->tables[i]);
	if (err) {
		s->stats->failed = TRAFCOUNT_SERIES_READING;
		return err;
	}
	s->t_ns = now_ns();
	if (s->pieces > U32_MAX)
		err = -EOVERFLOW;
	else if (s->format == TRAFCOUNT_SERIES_BINARY)
		err = write_binary(s, index);
	else if (s->format == TRAFCOUNT_SERIES_JSON)
		err = write_json(s, index);
	if (!err && s->format != TRAFCOUNT_SERIES_NONE)
		err = out_flush(s);
	if (err) {
		s->stats->failed = TRAFCOUNT_SERIES_WRITING;
		return err;
	}
	s->stats->bins++;
	return s->n_deltas;
}

uint64_t trafcount_series_t_ns(const struct trafcount_series *s)
{
	return s->t_ns;
}

static void export(const struct key *key, uint64_t packets, uint64_t bytes,
		   struct trafcount_series_delta *out)
{
	memset(out, 0, sizeof(*out));
	out->version = key->version;
	out->proto = key->proto;
	memcpy(out->addr, key->addr, 16);
	out->packets = packets;
	out->bytes = bytes;
}

size_t trafcount_series_deltas(const struct trafcount_series *s, struct trafcount_series_delta *out,
			       size_t n)
{
	for (size_t i = 0; i < n && i < s->n_deltas; i++)
		export(&s->deltas[i].key, s->deltas[i].packets, s->deltas[i].bytes, &out[i]);
	return s->n_deltas;
}

size_t trafcount_series_summed(const struct trafcount_series *s, struct trafcount_series_delta *out,
			       size_t n)
{
	for (size_t i = 0; i < n && i < s->n_keys; i++) {
		const struct slot *k = &s->slots[s->texts[i].slot];

		export(&k->key, k->sum_packets, k->sum_bytes, &out[i]);
	}
	return s->n_keys;
}

static bool stopped(struct trafcount_series *s)
{
	return __atomic_load_n(&s->stopped, __ATOMIC_ACQUIRE);
}

/* Sleep until `deadline` (CLOCK_MONOTONIC) or a stop, whichever comes first. */
static void sleep_until(struct trafcount_series *s, uint64_t deadline)
{
	struct pollfd pfd = { .fd = s->stop_fd, .events = POLLIN };
	uint64_t now;

	while (!stopped(s) && (now = now_ns()) < deadline) {
		struct timespec ts = { (time_t)((deadline - now) / 1000000000ULL),
				       (long)((deadline - now) % 1000000000ULL) };

		if (ppoll(&pfd, 1, &ts, NULL) > 0)
			return;
	}
}

int trafcount_series_run(struct trafcount_series *s, uint32_t hz)
{
	uint64_t period, next;
	static const int faults[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT };
	sigset_t all, before;
	long ret = 0;

	if (!hz)
		return -EINVAL;
	/* The process's signals go to its other threads (Python handles them in its main thread);
	 * the faults a thread causes itself stay deliverable.
	 */
	sigfillset(&all);
	for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++)
		sigdelset(&all, faults[i]);
	pthread_sigmask(SIG_BLOCK, &all, &before);
	period = 1000000000ULL / hz;
	next = now_ns();
	while (!stopped(s)) {
		int64_t wait;

		ret = trafcount_series_sample(s);
		if (ret < 0)
			goto out;
		next += period;
		wait = (int64_t)(next - now_ns());
		if (wait > 0) {
			sleep_until(s, next);
		} else {
			s->stats->late++;
			if ((uint64_t)-wait > period)	/* more than a period behind: no burst to catch up */
				next = now_ns();
		}
	}
	ret = trafcount_series_sample(s);	/* what came after the last grid point */
out:
	pthread_sigmask(SIG_SETMASK, &before, NULL);
	return ret < 0 ? (int)ret : 0;
}

void trafcount_series_stop(struct trafcount_series *s)
{
	uint64_t one = 1;

	__atomic_store_n(&s->stopped, 1, __ATOMIC_RELEASE);
	ssize_t n = write(s->stop_fd, &one, sizeof(one));	/* fails only if a stop is pending */

	(void)n;
}

void trafcount_series_close(struct trafcount_series *s)
{
	if (!s)
		return;
	if (s->out_len)		/* a binary file's header, if no bin was read */
		out_flush(s);
	for (int i = 0; i < 2; i++) {
		free(s->tables[i].keys);
		free(s->tables[i].values);
		free(s->tables[i].hashes);
		free(s->tables[i].parsed);
	}
	if (s->stop_fd >= 0)
		close(s->stop_fd);
	free(s->texts);
	free(s->slots);
	free(s->deltas);
	free(s->out);
	free(s);
}
