// SPDX-License-Identifier: GPL-2.0
/* The per-packet benchmark's flow rotator: BPF_PROG_TEST_RUN repeats one frame, and a non-live
 * repeat keeps the program's edits, so this program turns the frame into the next of n_flows flows
 * (the UDP source port at sport_off steps through base..base+n_flows-1) and tail-calls the program
 * measured (flowmon_xdp, or xdp_pass for the baseline) through `measured`. The subject and its
 * baseline both pay the rotation and the tail call: their ratio is the measured program's cost.
 * With sport_off at the IPv4 source address's low half (28) it steps addresses instead: the traffic
 * counter's tests use it so. Not a data plane: only tests load it.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

const volatile __u32 n_flows = 1;
const volatile __u32 sport_off = 34;	/* Ethernet + IPv4: the UDP header */

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} measured SEC(".maps");

SEC("xdp")
int flow_rotator(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	__be16 *sport = data + (sport_off & 0xff);	/* bounded for the verifier */
	__u32 step, base = 1024;

	if ((void *)(sport + 1) > data_end)
		return XDP_ABORTED;
	step = bpf_ntohs(*sport) - base + 1;
	*sport = bpf_htons(base + (step < n_flows ? step : 0));
	bpf_tail_call(ctx, &measured, 0);
	return XDP_ABORTED;	/* the tail call failed: the benchmark checks the verdict */
}

char LICENSE[] SEC("license") = "GPL";
