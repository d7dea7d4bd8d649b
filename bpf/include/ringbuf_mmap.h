/* SPDX-License-Identifier: GPL-2.0 */
/* A BPF_MAP_TYPE_RINGBUF read from user space straight from its memory, mapped as libbpf's
 * ringbuf.c maps it: the consumer page read-write (its first word is the reader's position), the
 * producer page and the data area read-only, the data mapped twice in a row so that a record that
 * wraps is contiguous. Each record has an 8-byte header, its length with the BUSY bit (reserved,
 * not yet submitted) and the DISCARD bit, and takes its length rounded up to 8 bytes. User-space
 * C only (the VXLAN re-injector, the flow metrics' reader); the walk over records is each reader's.
 */
#ifndef BPFLAB_RINGBUF_MMAP_H
#define BPFLAB_RINGBUF_MMAP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#define RINGBUF_BUSY	(1U << 31)	/* BPF_RINGBUF_BUSY_BIT */
#define RINGBUF_DISCARD	(1U << 30)	/* BPF_RINGBUF_DISCARD_BIT */
#define RINGBUF_HDR	8		/* BPF_RINGBUF_HDR_SZ */

struct ringbuf_mmap {
	uint64_t *consumer;		/* the consumer page: its first word is our position */
	const uint64_t *producer;	/* the producer page: its first word is the kernel's */
	const uint8_t *data;
	uint64_t mask;
	size_t size;
};

/* The space a record of header length word @len takes in the ring. */
static inline uint64_t ringbuf_record_span(uint32_t len)
{
	return ((len & ~(RINGBUF_BUSY | RINGBUF_DISCARD)) + RINGBUF_HDR + 7) & ~7ULL;
}

static inline void ringbuf_munmap(struct ringbuf_mmap *r)
{
	long page = sysconf(_SC_PAGESIZE);

	if (r->producer)
		munmap((void *)r->producer, page + 2 * r->size);
	if (r->consumer)
		munmap(r->consumer, page);
	r->producer = NULL;
	r->consumer = NULL;
}

/* Map the ring of map @fd, @size bytes of data (a power of 2); 0, or -1 with errno set. */
static inline int ringbuf_mmap(struct ringbuf_mmap *r, int fd, uint32_t size)
{
	long page = sysconf(_SC_PAGESIZE);
	void *consumer, *producer;

	r->size = size;
	r->mask = size - 1;
	consumer = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (consumer == MAP_FAILED)
		return -1;
	r->consumer = consumer;
	producer = mmap(NULL, page + 2 * (size_t)size, PROT_READ, MAP_SHARED, fd, page);
	if (producer == MAP_FAILED) {
		ringbuf_munmap(r);
		return -1;
	}
	r->producer = producer;
	r->data = (const uint8_t *)producer + page;
	return 0;
}

#endif
