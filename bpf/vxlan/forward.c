// SPDX-License-Identifier: GPL-2.0
/* The VXLAN re-injector's core: the records of one BPF ring buffer (struct vxlan_frame cut to its
 * frame: a u32 length, then the frame) copied once, from the ring's memory into the slots of an
 * AF_PACKET TX ring, and sent with one send() per batch. The ring is mapped as libbpf maps it: the
 * consumer page read-write, the producer page and the data area (mapped twice in a row, so that a
 * record that wraps is contiguous) read-only. The TX ring is bpf/txring.py's: TPACKET_V2,
 * PACKET_QDISC_BYPASS, and a virtio-net header whose hdr_len is the whole frame, so that the kernel
 * copies the frame into the skb's linear part instead of attaching the ring's pages (which a veth
 * peer must copy again: txring.py says why that is slower).
 *
 * Why C: a Python loop over the records costs ~1 us a frame (README), as much as the kernel's
 * whole send of it; here the copy and the status words cost tens of nanoseconds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <net/if.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>

#include "forward.h"

#define RINGBUF_BUSY	(1U << 31)	/* reserved, not yet submitted */
#define RINGBUF_DISCARD	(1U << 30)
#define RINGBUF_HDR	8		/* BPF_RINGBUF_HDR_SZ */
#define FRAME_OFFSET	4		/* offsetof(struct vxlan_frame, data) */
#define VLAN_HLEN	4		/* AF_PACKET takes MTU + an Ethernet header + one VLAN tag */
#define TX_SLOT		4096		/* a page: frames up to 4054 bytes, past any MTU native XDP allows */
#define TX_SLOTS	(2 * VXLAN_FORWARD_BATCH)
#define TX_VNET		TPACKET_ALIGN(sizeof(struct tpacket2_hdr))
#define TX_DATA		(TX_VNET + sizeof(struct virtio_net_hdr))
#define DRAIN_TIMEOUT_NS 5000000000LL	/* the kernel takes no frame for this long: give up */

struct vxlan_forward {
	int ring_fd;
	int sock;
	uint64_t *consumer;		/* the consumer page: its first word is our position */
	const uint64_t *producer;	/* the producer page: its first word is the kernel's */
	const uint8_t *data;
	uint64_t mask;
	size_t ring_size;
	uint8_t *tx;
	uint32_t next;			/* the TX slot for the next frame */
	uint32_t largest;		/* the longest record that may be sent */
	struct vxlan_forward_counts *counts;
};

static uint32_t *slot_status(struct vxlan_forward *f, uint32_t slot)
{
	return (uint32_t *)(f->tx + (size_t)slot * TX_SLOT);
}

static uint32_t previous_slot(uint32_t slot)
{
	return slot ? slot - 1 : TX_SLOTS - 1;
}

/* A down link takes no frame: unmark the run of slots the kernel did not take, which ends just
 * before `next` (the kernel's own position stays at the oldest of them, where we continue).
 */
static void take_back(struct vxlan_forward *f)
{
	for (uint32_t n = 0; n < TX_SLOTS; n++) {
		uint32_t slot = previous_slot(f->next);
		uint32_t *status = slot_status(f, slot);

		if (__atomic_load_n(status, __ATOMIC_ACQUIRE) != TP_STATUS_SEND_REQUEST)
			break;
		__atomic_store_n(status, TP_STATUS_AVAILABLE, __ATOMIC_RELEASE);
		f->counts->refused++;
		f->next = slot;
	}
}

/* Have the kernel send the marked slots. A loaded link (ENOBUFS, EAGAIN) leaves the slot it could
 * not send marked for the next flush; a down link (ENETDOWN) sends nothing.
 */
static int flush(struct vxlan_forward *f)
{
	if (send(f->sock, NULL, 0, 0) >= 0 || errno == ENOBUFS || errno == EAGAIN)
		return 0;
	if (errno == ENETDOWN) {
		take_back(f);
		return 0;
	}
	return -errno;
}

static void wait_writable(struct vxlan_forward *f, int timeout_ms)
{
	struct pollfd p = { .fd = f->sock, .events = POLLOUT };

	poll(&p, 1, timeout_ms);
}

static int64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int queue(struct vxlan_forward *f, const uint8_t *frame, uint32_t len)
{
	struct tpacket2_hdr *hdr;
	struct virtio_net_hdr *vnet;
	uint32_t status, slot;
	int err;

	for (;;) {
		slot = f->next;
		hdr = (struct tpacket2_hdr *)(f->tx + (size_t)slot * TX_SLOT);
		status = __atomic_load_n(&hdr->tp_status, __ATOMIC_ACQUIRE);
		if (status == TP_STATUS_AVAILABLE)
			break;
		if (status == TP_STATUS_WRONG_FORMAT) {
			f->counts->rejected++;
			break;
		}
		err = flush(f);		/* the ring is full: have the kernel hand slots back */
		if (err)
			return err;
		if (f->next == slot)	/* else slots were taken back: look at the new `next` */
			wait_writable(f, 10);
	}
	vnet = (struct virtio_net_hdr *)((uint8_t *)hdr + TX_VNET);
	memset(vnet, 0, sizeof(*vnet));
	vnet->hdr_len = len;
	memcpy((uint8_t *)hdr + TX_DATA, frame, len);
	hdr->tp_len = hdr->tp_snaplen = len + sizeof(*vnet);
	__atomic_store_n(&hdr->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
	f->next = (slot + 1) % TX_SLOTS;
	f->counts->queued++;
	return 0;
}

/* Flush until the kernel has taken the last frame queued (it takes slots in order), then count the
 * `queued` slots before it that it marked malformed, and free them.
 */
static int drain(struct vxlan_forward *f, uint32_t queued)
{
	int64_t deadline = now_ns() + DRAIN_TIMEOUT_NS;
	uint32_t *last, status, slot;
	int err;

	for (;;) {
		err = flush(f);
		if (err)
			return err;
		last = slot_status(f, previous_slot(f->next));
		status = __atomic_load_n(last, __ATOMIC_ACQUIRE);
		if (status != TP_STATUS_SEND_REQUEST && status != TP_STATUS_SENDING)
			break;
		if (now_ns() > deadline)
			return -ETIMEDOUT;
		wait_writable(f, 1);
	}
	slot = f->next;
	for (uint32_t n = 0; n < queued && n < TX_SLOTS; n++) {
		uint32_t *status_word;

		slot = previous_slot(slot);
		status_word = slot_status(f, slot);
		if (__atomic_load_n(status_word, __ATOMIC_ACQUIRE) == TP_STATUS_WRONG_FORMAT) {
			f->counts->rejected++;
			__atomic_store_n(status_word, TP_STATUS_AVAILABLE, __ATOMIC_RELEASE);
		}
	}
	return 0;
}

long vxlan_forward_batch(struct vxlan_forward *f, uint32_t budget)
{
	uint64_t consumer = *f->consumer;
	uint64_t producer = __atomic_load_n(f->producer, __ATOMIC_ACQUIRE);
	uint32_t queued = 0;
	long records = 0;
	int err = 0;

	while (consumer < producer && records < budget) {
		const uint8_t *record = f->data + (consumer & f->mask);
		uint32_t len = __atomic_load_n((const uint32_t *)record, __ATOMIC_ACQUIRE);

		if (len & RINGBUF_BUSY)
			break;		/* reserved, not yet submitted: everything after it waits too */
		consumer += ((len & ~RINGBUF_DISCARD) + RINGBUF_HDR + 7) & ~7ULL;
		if (len & RINGBUF_DISCARD)
			continue;
		records++;
		if (len > f->largest) {
			f->counts->too_big++;
			continue;
		}
		err = queue(f, record + RINGBUF_HDR + FRAME_OFFSET, len - FRAME_OFFSET);
		if (err)
			break;
		if (++queued % (TX_SLOTS / 2) == 0 && (err = flush(f)))
			break;
	}
	/* Every record read is copied out (or counted): its space goes back to the producer. */
	__atomic_store_n(f->consumer, consumer, __ATOMIC_RELEASE);
	if (!err && queued)
		err = drain(f, queued);
	return err ? err : records;
}

long vxlan_forward_poll(struct vxlan_forward *f, int timeout_ms)
{
	/* The kernel makes the ring's fd readable when it commits a record to a ring we emptied. */
	struct pollfd ring = { .fd = f->ring_fd, .events = POLLIN };
	int ready = poll(&ring, 1, timeout_ms);

	if (ready < 0)
		return errno == EINTR ? 0 : -errno;
	return ready ? vxlan_forward_batch(f, VXLAN_FORWARD_BATCH) : 0;
}

static int tx_ring(struct vxlan_forward *f, const char *ifname)
{
	int version = TPACKET_V2, on = 1;
	struct tpacket_req req = {
		.tp_block_size = TX_SLOT,
		.tp_block_nr = TX_SLOTS,
		.tp_frame_size = TX_SLOT,
		.tp_frame_nr = TX_SLOTS,
	};
	struct sockaddr_ll addr = { .sll_family = AF_PACKET };
	struct ifreq ifr = { 0 };

	f->sock = socket(AF_PACKET, SOCK_RAW, 0);
	if (f->sock < 0)
		return -1;
	if (setsockopt(f->sock, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) ||
	    setsockopt(f->sock, SOL_PACKET, PACKET_QDISC_BYPASS, &on, sizeof(on)) ||
	    setsockopt(f->sock, SOL_PACKET, PACKET_VNET_HDR, &on, sizeof(on)) ||
	    setsockopt(f->sock, SOL_PACKET, PACKET_TX_RING, &req, sizeof(req)))
		return -1;
	addr.sll_ifindex = if_nametoindex(ifname);
	if (!addr.sll_ifindex || bind(f->sock, (struct sockaddr *)&addr, sizeof(addr)))
		return -1;
	/* A longer frame would make the kernel fail the whole send() (EMSGSIZE): count it instead. */
	strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
	if (ioctl(f->sock, SIOCGIFMTU, &ifr))
		return -1;
	f->largest = FRAME_OFFSET + ifr.ifr_mtu + ETH_HLEN + VLAN_HLEN;
	if (f->largest > FRAME_OFFSET + TX_SLOT - TX_DATA)
		f->largest = FRAME_OFFSET + TX_SLOT - TX_DATA;
	f->tx = mmap(NULL, (size_t)TX_SLOTS * TX_SLOT, PROT_READ | PROT_WRITE, MAP_SHARED, f->sock, 0);
	return f->tx == MAP_FAILED ? (f->tx = NULL, -1) : 0;
}

struct vxlan_forward *vxlan_forward_open(int ring_fd, uint32_t ring_size, const char *ifname,
					 struct vxlan_forward_counts *counts)
{
	long page = sysconf(_SC_PAGESIZE);
	struct vxlan_forward *f = calloc(1, sizeof(*f));
	void *consumer, *producer;
	int err;

	if (!f)
		return NULL;
	f->sock = -1;
	f->ring_fd = ring_fd;
	f->counts = counts;
	f->ring_size = ring_size;
	f->mask = ring_size - 1;
	consumer = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, ring_fd, 0);
	if (consumer == MAP_FAILED)
		goto fail;
	f->consumer = consumer;
	producer = mmap(NULL, page + 2 * (size_t)ring_size, PROT_READ, MAP_SHARED, ring_fd, page);
	if (producer == MAP_FAILED)
		goto fail;
	f->producer = producer;
	f->data = (const uint8_t *)producer + page;
	if (tx_ring(f, ifname))
		goto fail;
	return f;
fail:
	err = errno;
	vxlan_forward_close(f);
	errno = err;
	return NULL;
}

void vxlan_forward_close(struct vxlan_forward *f)
{
	long page = sysconf(_SC_PAGESIZE);

	if (!f)
		return;
	if (f->tx)
		munmap(f->tx, (size_t)TX_SLOTS * TX_SLOT);
	if (f->sock >= 0)
		close(f->sock);
	if (f->producer)
		munmap((void *)f->producer, page + 2 * f->ring_size);
	if (f->consumer)
		munmap(f->consumer, page);
	free(f);
}
