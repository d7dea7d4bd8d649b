/* SPDX-License-Identifier: GPL-2.0 */
/* Frames that did not parse to a flow, counted by parse status: the map and its one update that
 * every data plane counting with parse.h shares. Python reads it with bpf.parse.unparsed(), which
 * takes the status names from BTF: the enum is carried into it here.
 */
#ifndef BPFLAB_UNPARSED_H
#define BPFLAB_UNPARSED_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PARSE_STATUS_MAX);
	__type(key, __u32);	/* enum parse_status; PARSE_OK stays 0 */
	__type(value, __u64);
} unparsed SEC(".maps");

enum parse_status unused_parse_status __attribute__((unused));

static __always_inline void count_unparsed(enum parse_status status)
{
	__u32 slot = status;
	__u64 *n = bpf_map_lookup_elem(&unparsed, &slot);

	if (n)
		(*n)++;
}

#endif
