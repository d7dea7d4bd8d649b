// SPDX-License-Identifier: GPL-2.0
/* The harness's receiving end at rates Python cannot capture: counts every frame by its L3 class
 * (so that the kernel's own IPv6 neighbour discovery is told apart from injected IPv4 traffic), then
 * drops it or passes it to the stack. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

enum sink_class {
	SINK_IPV4,
	SINK_IPV6,
	SINK_ARP,
	SINK_VLAN,
	SINK_PPPOE,
	SINK_OTHER,
	SINK_CLASSES,
};

struct sink_count {
	__u64 frames;
	__u64 bytes;
};

const volatile __u32 sink_verdict = XDP_DROP;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SINK_CLASSES);
	__type(key, __u32);
	__type(value, struct sink_count);
} counts SEC(".maps");

static __always_inline __u32 classify(__be16 proto)
{
	switch (proto) {
	case bpf_htons(ETH_P_IP):
		return SINK_IPV4;
	case bpf_htons(ETH_P_IPV6):
		return SINK_IPV6;
	case bpf_htons(ETH_P_ARP):
		return SINK_ARP;
	case bpf_htons(ETH_P_8021Q):
	case bpf_htons(ETH_P_8021AD):
		return SINK_VLAN;
	case bpf_htons(ETH_P_PPP_DISC):
	case bpf_htons(ETH_P_PPP_SES):
		return SINK_PPPOE;
	}
	return SINK_OTHER;
}

SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 class = SINK_OTHER;
	struct sink_count *count;

	if ((void *)(eth + 1) <= data_end)
		class = classify(eth->h_proto);
	count = bpf_map_lookup_elem(&counts, &class);
	if (count) {
		count->frames++;
		count->bytes += data_end - data;
	}
	return sink_verdict;
}

char LICENSE[] SEC("license") = "GPL";
