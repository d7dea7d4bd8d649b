// SPDX-License-Identifier: GPL-2.0
/* The per-packet benchmark's flow rotator: BPF_PROG_TEST_RUN repeats one frame, and a non-live
 * repeat keeps the program's edits, so this program turns the frame into the next of n_flows flows
 * (the UDP source port at sport_off steps through base..base+n_flows-1) and tail-calls the program
 * measured (flowmon_xdp, or xdp_pass for the baseline) through `measured`; flow_rotator_tc does
 * the same for TC programs (flowmon_tc_ingress, or tc_pass) through `measured_tc`. The subject and its
 * baseline both pay the rotation and the tail call: their ratio is the measured program's cost.
 * With sport_off at the IPv4 source address's low half (28) it steps addresses instead: the traffic
 * counter's tests use it so. Past 32,768 flows (a 16-bit field holds no more from base 1024), a
 * second field at high_off (the source address's low half, say) counts the laps of the first:
 * flow i is low field base + i % 32768, high field high_base + i / 32768. Not a data plane: only
 * tests load it.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

const volatile __u32 n_flows = 1;
const volatile __u32 sport_off = 34;	/* Ethernet + IPv4: the UDP header */
const volatile __u32 high_off;		/* 0: one field; else the field that counts its laps */
const volatile __u16 high_base;		/* that field's value in flow 0 */

#define LAP 32768

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} measured SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} measured_tc SEC(".maps");

/* The frame at [data, data_end) made the next flow's; false if it is too short. */
static __always_inline bool rotate(void *data, void *data_end)
{
	__be16 *sport = data + (sport_off & 0xff), *high = data + (high_off & 0xff);
	__u32 step, lap, base = 1024;

	if ((void *)(sport + 1) > data_end || (void *)(high + 1) > data_end)
		return false;
	step = bpf_ntohs(*sport) - base + 1;
	if (!high_off) {
		*sport = bpf_htons(base + (step < n_flows ? step : 0));
		return true;
	}
	lap = (__u16)(bpf_ntohs(*high) - high_base);
	if (step == LAP) {
		step = 0;
		lap++;
	}
	if (lap * LAP + step >= n_flows)
		step = lap = 0;
	*sport = bpf_htons(base + step);
	*high = bpf_htons(high_base + lap);
	return true;
}

SEC("xdp")
int flow_rotator(struct xdp_md *ctx)
{
	if (!rotate((void *)(long)ctx->data, (void *)(long)ctx->data_end))
		return XDP_ABORTED;
	bpf_tail_call(ctx, &measured, 0);
	return XDP_ABORTED;	/* the tail call failed: the benchmark checks the verdict */
}

SEC("tc")
int flow_rotator_tc(struct __sk_buff *skb)
{
	if (!rotate((void *)(long)skb->data, (void *)(long)skb->data_end))
		return TC_ACT_SHOT;
	bpf_tail_call(skb, &measured_tc, 0);
	return TC_ACT_SHOT;	/* the tail call failed */
}

char LICENSE[] SEC("license") = "GPL";
