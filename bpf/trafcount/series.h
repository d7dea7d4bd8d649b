/* SPDX-License-Identifier: GPL-2.0 */
/* The traffic counter's time-series reader (series.c): both LRU tables of trafcount.bpf.c read with
 * BPF_MAP_LOOKUP_BATCH, each read made a bin of per-key deltas against the read before, written in
 * the binary format or as JSON lines (series.py's docstring) to an fd, on a fixed grid of 1/hz.
 * Used by bpf/trafcount/series.py through ctypes (libtrafcount_series.so), which declares the same
 * structs and prototypes; bpf/trafcount/model.py's SeriesModel is the specification it is held to.
 */
#ifndef TRAFCOUNT_SERIES_H
#define TRAFCOUNT_SERIES_H

#include <stddef.h>
#include <stdint.h>

#define TRAFCOUNT_SERIES_VERSION	1	/* of the binary format */
#define TRAFCOUNT_SERIES_PIECE		128	/* the longest piece of output written at once (a JSON
						 * delta); an output buffer holds at least this */

/* Output formats */
#define TRAFCOUNT_SERIES_NONE	0	/* no output: deltas for the caller only */
#define TRAFCOUNT_SERIES_JSON	1
#define TRAFCOUNT_SERIES_BINARY	2

/* One key's packets and bytes: a bin's delta, or what the bins added up to. */
struct trafcount_series_delta {
	uint8_t version;	/* 4 or 6 */
	uint8_t proto;
	uint8_t addr[16];	/* network order; IPv4: 4 bytes, then 12 zero bytes */
	uint8_t pad[6];
	uint64_t packets;
	uint64_t bytes;
};

/* What failed, when a call returns -errno */
#define TRAFCOUNT_SERIES_READING	1	/* the tables' walk (or memory for a new key) */
#define TRAFCOUNT_SERIES_WRITING	2	/* the bin's write to the output */

/* Written by the reader as it goes; the caller owns the memory. */
struct trafcount_series_stats {
	uint64_t bins;		/* bins read */
	uint64_t late;		/* of those, read after the next grid point had passed */
	uint64_t failed;	/* TRAFCOUNT_SERIES_READING or _WRITING; 0: nothing */
};

struct trafcount_series;

/* The tables' fds (struct traf_key4 and traf_key6 to struct traf_counts) and sizes; the output: an
 * fd (-1: none), its format, the hz for the binary file header, and the output buffer's size (at
 * least TRAFCOUNT_SERIES_PIECE). The binary file header is written first. NULL with errno on failure.
 */
struct trafcount_series *trafcount_series_open(int fd4, uint32_t entries4, int fd6, uint32_t entries6,
					       int out_fd, int format, uint32_t hz, size_t out_size,
					       struct trafcount_series_stats *stats);
/* Read one bin and write it out (flushed): its number of deltas, or -errno. */
long trafcount_series_sample(struct trafcount_series *s);
/* The last bin's monotonic time and its deltas: up to `n` copied to `out`; the number it holds. */
uint64_t trafcount_series_t_ns(const struct trafcount_series *s);
size_t trafcount_series_deltas(const struct trafcount_series *s, struct trafcount_series_delta *out,
			       size_t n);
/* What the bins so far add up to, per key, in the order keys were first seen: up to `n` copied to
 * `out`; the number of keys.
 */
size_t trafcount_series_summed(const struct trafcount_series *s, struct trafcount_series_delta *out,
			       size_t n);
/* Bins on a fixed grid of 1/hz seconds until trafcount_series_stop(), then one more: 0, or -errno
 * (a failed read or write). A read that ends past the next grid point is late; one more than a whole
 * period behind moves the grid.
 */
int trafcount_series_run(struct trafcount_series *s, uint32_t hz);
/* Ends trafcount_series_run() (at once, even mid-sleep); from any thread, or a signal handler. */
void trafcount_series_stop(struct trafcount_series *s);
/* Writes what is left of the output (a binary file's header, if no bin was read), frees it all. */
void trafcount_series_close(struct trafcount_series *s);

#endif
