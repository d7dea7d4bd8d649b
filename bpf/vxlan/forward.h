/* SPDX-License-Identifier: GPL-2.0 */
/* The VXLAN re-injector's core (forward.c): one ring of vxlan.bpf.c's `rings` into an AF_PACKET TX
 * ring on the egress. Used by the Python re-injector through ctypes (libvxlan_forward.so) and by the
 * C reference (reinjector_ref.c); reinjector.py declares the same struct and prototypes.
 */
#ifndef VXLAN_FORWARD_H
#define VXLAN_FORWARD_H

#include <stdint.h>

#define VXLAN_FORWARD_BATCH	1024	/* records per call: the TX ring holds two batches */

/* Records read = forwarded + failed, where forwarded = queued - rejected - refused and
 * failed = too_big + rejected + refused. The caller owns the memory (shared with its parent, say).
 */
struct vxlan_forward_counts {
	uint64_t queued;	/* frames put in the TX ring */
	uint64_t too_big;	/* records longer than a TX slot or the egress's MTU allows: not sent */
	uint64_t rejected;	/* frames the kernel refused as malformed (TP_STATUS_WRONG_FORMAT) */
	uint64_t refused;	/* frames taken back from a link that was down (ENETDOWN) */
};

struct vxlan_forward;

/* The ring's fd and size; the egress's name, looked up in the calling thread's network namespace.
 * NULL with errno on failure.
 */
struct vxlan_forward *vxlan_forward_open(int ring_fd, uint32_t ring_size, const char *ifname,
					 struct vxlan_forward_counts *counts);
/* Forward up to `budget` of the records waiting now, without sleeping; the records read, or
 * -errno (a send error other than the refusals of a loaded or down link).
 */
long vxlan_forward_batch(struct vxlan_forward *f, uint32_t budget);
/* Sleep up to `timeout_ms` until records wait, then forward a batch of them: the records read (0
 * after the timeout), or -errno. One call per wake-up, so that a frame waits for no interpreter.
 */
long vxlan_forward_poll(struct vxlan_forward *f, int timeout_ms);
void vxlan_forward_close(struct vxlan_forward *f);

#endif
