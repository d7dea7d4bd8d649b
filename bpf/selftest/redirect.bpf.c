// SPDX-License-Identifier: GPL-2.0
/* The bare XDP_REDIRECT baselines: what a forwarding data plane is measured against on the same
 * link. xdp_redirect_devmap: every frame, untouched, out of the interface in the one slot of
 * `redirect_dev`. */
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

/* The bare fan-out baseline: each frame out of one of `fanout_ports` interfaces of `fanout_devs`,
 * picked by the last byte of an untagged IPv4 source address (frame byte 29), with no parsing: what
 * a data plane that spreads frames over interfaces (soft RSS `ifaces`) is measured against.
 */
const volatile __u32 fanout_ports = 1;	/* a power of 2 */

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 128);
	__type(key, __u32);
	__type(value, __u32);		/* ifindex */
} fanout_devs SEC(".maps");

SEC("xdp")
int xdp_fanout_devmap(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *data_end = (void *)(long)ctx->data_end;

	if (data + 30 > data_end)
		return XDP_DROP;
	return bpf_redirect_map(&fanout_devs, data[29] & (fanout_ports - 1), XDP_DROP);
}

char LICENSE[] SEC("license") = "GPL";
