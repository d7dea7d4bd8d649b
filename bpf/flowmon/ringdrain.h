/* SPDX-License-Identifier: GPL-2.0 */
/* The flow-metrics ring reader (ringdrain.c): the records (struct flow_record) that the RINGBUF
 * storage and the SPILL policy send, read from the ring's memory and added up per flow in a table
 * of its own. Used by bpf/flowmon/ringdrain.py through ctypes (libflowmon_ringdrain.so), which
 * declares the same structs and prototypes and fills the layout from the BPF object's BTF.
 *
 * Threads: every call but close takes the reader's lock, so one thread may drain while another
 * reads or takes flows; close only once no other call can be running.
 */
#ifndef FLOWMON_RINGDRAIN_H
#define FLOWMON_RINGDRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FLOWMON_RINGDRAIN_KEY_MAX	48	/* bytes a key may have (struct flow_key6: 44) */

/* Where a field of struct flow_record is, and its size (1, 2, 4 or 8 bytes, little-endian). */
struct flowmon_ringdrain_field {
	uint32_t offset;
	uint32_t size;
};

/* struct flow_record as the object's BTF lays it out, and the bits of its tcp_flags that a flow's
 * syn_ns and fin_ns follow (flowtable.h's TCP_FLAG_SYN, TCP_FLAG_FIN): the reader hard-codes none.
 */
struct flowmon_ringdrain_layout {
	uint32_t record_size;		/* sizeof(struct flow_record): a shorter record is an error */
	uint32_t key_offset;		/* of its key (union flow_record_key) */
	uint32_t key4_size;		/* sizeof(struct flow_key4): the key's bytes of ip_version 4 */
	uint32_t key6_size;		/* sizeof(struct flow_key6) */
	struct flowmon_ringdrain_field ts_ns, packets, bytes, ip_version, tcp_flags;
	uint32_t syn, fin;
};

/* One flow as the records added up: the field names and arithmetic of struct flow_stats as
 * flowmon.py merges it (sums, the earliest first seen, the latest last seen, the OR of the flags,
 * the earliest SYN and FIN; 0: none).
 */
struct flowmon_ringdrain_flow {
	uint64_t packets;
	uint64_t bytes;
	uint64_t first_seen_ns;
	uint64_t last_seen_ns;
	uint64_t syn_ns;
	uint64_t fin_ns;
	uint32_t tcp_flags;
	uint8_t ip_version;
	uint8_t pad[3];
	uint8_t key[FLOWMON_RINGDRAIN_KEY_MAX];	/* the record's key bytes, zeros after them */
};

struct flowmon_ringdrain;

/* The RINGBUF map's fd and size, the record's layout. Reading starts at the ring's consumer
 * position: records a reader before this one left are this one's. NULL with errno on failure
 * (EINVAL: a layout whose fields do not fit the record, or a key longer than KEY_MAX).
 */
struct flowmon_ringdrain *flowmon_ringdrain_open(int ring_fd, uint32_t ring_size,
						 const struct flowmon_ringdrain_layout *layout);
/* Add up to `budget` records to the table, never more than the producer had committed when the
 * call began (a faster producer cannot keep it from returning), then hand their space back to the
 * producer: the records read, or -EBADMSG for a record that is not a flow_record (read past, not
 * added).
 */
long flowmon_ringdrain_drain(struct flowmon_ringdrain *d, uint64_t budget);
/* The flows: up to `n` copied to `out`, in no order; the number the table holds. */
size_t flowmon_ringdrain_flows(struct flowmon_ringdrain *d, struct flowmon_ringdrain_flow *out,
			       size_t n);
/* Remove the flow of (`ip_version`, `key`, `key_size` bytes) and copy it to `out`: 1, or 0 if the
 * table does not hold it, or -EINVAL for a key size that is not the version's.
 */
int flowmon_ringdrain_take(struct flowmon_ringdrain *d, uint8_t ip_version, const uint8_t *key,
			   uint32_t key_size, struct flowmon_ringdrain_flow *out);
/* Packets of records a new flow brought that the table could not grow for (no memory): read from
 * the ring, lost, counted here.
 */
uint64_t flowmon_ringdrain_refused(struct flowmon_ringdrain *d);
/* Empty the table; with `counts`, zero the refused count too. */
void flowmon_ringdrain_clear(struct flowmon_ringdrain *d, bool counts);
void flowmon_ringdrain_close(struct flowmon_ringdrain *d);

#endif
