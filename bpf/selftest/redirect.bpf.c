// SPDX-License-Identifier: GPL-2.0
/* The bare XDP_REDIRECT baseline: every frame, untouched, out of the interface in the one slot of
 * `redirect_dev`. What a forwarding data plane is measured against on the same link. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);		/* ifindex */
} redirect_dev SEC(".maps");

SEC("xdp")
int xdp_redirect_devmap(struct xdp_md *ctx)
{
	/* The low bits of the flags are the verdict when the slot is empty. */
	return bpf_redirect_map(&redirect_dev, 0, XDP_DROP);
}

char LICENSE[] SEC("license") = "GPL";
