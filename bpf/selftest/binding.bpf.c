// SPDX-License-Identifier: GPL-2.0
/* Subjects of the binding's tests: one map of each type the data planes use, configuration through
 * `const volatile` globals, ring-buffer events, and programs for each attach point (XDP, TC, socket
 * filter, PACKET_FANOUT_EBPF). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct sample_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct sample_counters {
	__u64 packets;
	__u64 bytes;
	__u32 last_len;
	__u16 hist[4];
};

struct sample_event {
	__u64 seq;
	__u32 len;
	__u8 head[4];
};

struct lpm_v4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

/* Ring-buffer records have no map value type to carry them into BTF: an unused global does. */
struct sample_event *unused_sample_event __attribute__((unused));

const volatile __u32 event_every = 1;
const volatile __u32 verdict = XDP_PASS;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct sample_key);
	__type(value, struct sample_counters);
} by_key SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 64);
	__type(key, struct sample_key);
	__type(value, struct sample_counters);
} by_key_percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} lru SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} lru_percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, struct sample_counters);
} by_len SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, struct sample_counters);
} by_len_percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, __u32);
} prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} events SEC(".maps");

static __always_inline void count(struct sample_counters *c, __u32 len)
{
	__sync_fetch_and_add(&c->packets, 1);
	__sync_fetch_and_add(&c->bytes, len);
	c->last_len = len;
	c->hist[len & 3]++;
}

/* Counts by length (len % 8) and by the key in bytes 0..7, looks the IPv4 destination
 * (bytes 30..33) up in `prefixes`, emits an event every `event_every` packets. */
SEC("xdp")
int xdp_sample(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 len = data_end - data;
	__u32 slot = len & 7;
	struct sample_counters *c;
	static __u64 seq;

	c = bpf_map_lookup_elem(&by_len, &slot);
	if (c)
		count(c, len);
	c = bpf_map_lookup_elem(&by_len_percpu, &slot);
	if (c)
		count(c, len);

	if (data + 34 <= data_end) {
		struct sample_key key = {};
		struct lpm_v4_key lpm = { .prefixlen = 32 };
		struct sample_counters zero = {};
		__u32 *hit;

		__builtin_memcpy(&key, data, 8);
		key.pad = 0;
		bpf_map_update_elem(&by_key, &key, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&by_key, &key);
		if (c)
			count(c, len);
		bpf_map_update_elem(&by_key_percpu, &key, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&by_key_percpu, &key);
		if (c)
			count(c, len);
		__builtin_memcpy(lpm.addr, data + 30, 4);
		hit = bpf_map_lookup_elem(&prefixes, &lpm);
		if (hit)
			return *hit;
	}

	if (++seq % event_every == 0) {
		struct sample_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

		if (e) {
			e->seq = seq;
			e->len = len;
			if (data + 4 <= data_end)
				__builtin_memcpy(e->head, data, 4);
			bpf_ringbuf_submit(e, 0);
		}
	}
	return verdict;
}

SEC("tc")
int tc_sample(struct __sk_buff *skb)
{
	__u32 slot = skb->len & 7;
	struct sample_counters *c = bpf_map_lookup_elem(&by_len_percpu, &slot);

	if (c)
		count(c, skb->len);
	return TC_ACT_OK;
}

/* Counts in `by_key`, keyed by bytes 0..7 like xdp_sample: a test tells its own frames (by their
 * destination MAC) from the kernel's, in whichever direction the filter is attached. */
SEC("tc")
int tc_count_by_key(struct __sk_buff *skb)
{
	struct sample_key key = {};
	struct sample_counters zero = {};
	struct sample_counters *c;

	if (bpf_skb_load_bytes(skb, 0, &key, sizeof(key)) < 0)
		return TC_ACT_OK;
	key.pad = 0;
	bpf_map_update_elem(&by_key, &key, &zero, BPF_NOEXIST);
	c = bpf_map_lookup_elem(&by_key, &key);
	if (c)
		count(c, skb->len);
	return TC_ACT_OK;
}

/* A socket filter's return value is the snap length: the whole frame, nothing, or (below) either. */
SEC("socket")
int socket_accept_all(struct __sk_buff *skb)
{
	return skb->len;
}

SEC("socket")
int socket_drop_all(struct __sk_buff *skb)
{
	return 0;
}

/* On an AF_PACKET socket the filter sees the Ethernet header: the ethertype is at 12 and the IPv4
 * protocol at 14 + 9 (unlike a fanout program, below). */
SEC("socket")
int socket_ipv4_udp(struct __sk_buff *skb)
{
	__be16 ethertype;
	__u8 proto;

	if (bpf_skb_load_bytes(skb, 12, &ethertype, sizeof(ethertype)) < 0 ||
	    ethertype != bpf_htons(ETH_P_IP))
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 9, &proto, sizeof(proto)) < 0 || proto != IPPROTO_UDP)
		return 0;
	return skb->len;
}

/* PACKET_FANOUT_EBPF: the member socket is the last byte of the IPv4 destination (the kernel takes
 * it modulo the group's size). A fanout program sees skb->data at the network header, so that byte
 * is at 19, not 14 + 19. Anything else goes to member 0. */
SEC("socket")
int fanout_by_ipv4_daddr(struct __sk_buff *skb)
{
	__u8 last;

	if (skb->protocol != bpf_htons(ETH_P_IP) || bpf_skb_load_bytes(skb, 19, &last, 1) < 0)
		return 0;
	return last;
}

char LICENSE[] SEC("license") = "GPL";
