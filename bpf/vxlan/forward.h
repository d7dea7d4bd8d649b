/* SPDX-License-Identifier: GPL-2.0 */
/* The VXLAN re-injector's core (forward.c): one ring of vxlan.bpf.c's `rings` into an AF_PACKET TX
 * ring on the egress. Used by the Python re-injector through ctypes (libvxlan_forward.so) and by the
 * C reference (reinjector_ref.c); reinjector.py declares the same structs and prototypes.
 */
#ifndef VXLAN_FORWARD_H
#define VXLAN_FORWARD_H

#include <stdint.h>

#define VXLAN_FORWARD_BATCH	1024	/* records per call: the TX ring holds two batches */
#define VXLAN_FORWARD_NO_SLOT	UINT32_MAX

/* What a re-injector has done, as one record: records read = forwarded + failed, where
 * forwarded = queued - rejected - refused and failed = too_big + rejected + refused; and where it
 * stands in the ring and in the TX ring, so that another process can go on from it.
 */
struct vxlan_forward_commit {
	uint64_t queued;	/* frames put in the TX ring */
	uint64_t too_big;	/* records longer than a TX slot or the egress's MTU allows: not sent */
	uint64_t rejected;	/* frames the kernel refused (TP_STATUS_WRONG_FORMAT: past a new MTU) */
	uint64_t refused;	/* frames a down link did not take (ENETDOWN) */
	uint64_t position;	/* the ring's consumer position: every record before it is counted */
	uint32_t first;		/* TX slots [first, next) hold the frames in flight, if `sending` */
	uint32_t next;		/* the TX slot for the next frame */
	uint32_t sending;
	uint32_t move_from;	/* a frame moving into a refused frame's slot, or VXLAN_FORWARD_NO_SLOT */
	uint32_t move_to;
	uint32_t pad;
};

/* The caller owns this memory (shared with its parent, say) and reads it with
 * vxlan_forward_read(). A writer killed at any instruction leaves the latest commit whole: it
 * writes the other one, then counts it in `seq` with one store. vxlan_forward_recover() in a new
 * process goes on from the latest commit, so that a re-injector may be killed and restarted with
 * every record counted once and every frame sent at most once.
 */
struct vxlan_forward_counts {
	uint64_t seq;				/* commits made: commit[seq & 1] is the latest */
	struct vxlan_forward_commit commit[2];
};

struct vxlan_forward;

/* The ring's fd and size; the egress's name, looked up in the calling thread's network namespace;
 * fresh `counts` (zeroed) start at the ring's present consumer position, counts already written
 * by another re-injector of this ring go on from theirs. NULL with errno on failure.
 */
struct vxlan_forward *vxlan_forward_open(int ring_fd, uint32_t ring_size, const char *ifname,
					 struct vxlan_forward_counts *counts);
/* Go on from the latest commit, after the process that wrote it died (a forked child of the
 * process that opened `f`, which shares its TX ring): frames it queued but did not commit are taken
 * back (their records are read again), those it committed are sent. 0 or -errno.
 */
long vxlan_forward_recover(struct vxlan_forward *f);
/* Forward up to `budget` of the records waiting now, without sleeping; the records read, or
 * -errno (a send error other than the refusals of a loaded or down link).
 */
long vxlan_forward_batch(struct vxlan_forward *f, uint32_t budget);
/* Sleep up to `timeout_ms` until records wait, then forward a batch of them: the records read (0
 * after the timeout), or -errno. One call per wake-up, so that a frame waits for no interpreter.
 */
long vxlan_forward_poll(struct vxlan_forward *f, int timeout_ms);
/* The latest commit, read while a writer may be committing. */
void vxlan_forward_read(const struct vxlan_forward_counts *counts, struct vxlan_forward_commit *out);
void vxlan_forward_close(struct vxlan_forward *f);

#endif
