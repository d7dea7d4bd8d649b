// SPDX-License-Identifier: GPL-2.0
/* One ring of the VXLAN pipeline's ringbuf mode (vxlan.bpf.c's `rings`, one per re-injector
 * worker). The binding creates maps only as parts of a loaded object, so each ring is an object of
 * its own, loaded with the size the control plane chose and put into `rings` by fd.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);	/* the control plane sets it (Config.ring_size) */
} frames SEC(".maps");
