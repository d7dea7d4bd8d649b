// SPDX-License-Identifier: GPL-2.0
/* The smallest programs of each kind the binding drives: the baseline of every benchmark, and the
 * subjects of the binding's own tests. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
