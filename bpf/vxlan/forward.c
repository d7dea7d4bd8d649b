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
 * A batch, so that a process killed at any instruction loses and repeats nothing: (1) its records
 * are copied into TX slots and marked, but not sent; (2) one commit (forward.h) says they are read,
 * counted and in flight; (3) the ring's consumer position moves; (4) send() until the kernel has
 * taken them; (5) a second commit counts what a down link refused and says the batch is done. The
 * kernel takes marked slots only within our send(), so a process killed before (2) sent nothing:
 * vxlan_forward_recover() unmarks its slots and their records are read again; one killed after (2)
 * left committed frames, which recovery sends from where the kernel stopped.
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

#include "../include/ringbuf_mmap.h"
#include "forward.h"

#define FRAME_OFFSET	4		/* offsetof(struct vxlan_frame, data) */
#define VLAN_HLEN	4		/* AF_PACKET takes MTU + an Ethernet header + one VLAN tag */
#define TX_SLOT		4096		/* a page: frames up to 4054 bytes, past any MTU native XDP allows */
#define TX_SLOTS	(2 * VXLAN_FORWARD_BATCH)
#define TX_VNET		TPACKET_ALIGN(sizeof(struct tpacket2_hdr))
#define TX_DATA		(TX_VNET + sizeof(struct virtio_net_hdr))
#define DRAIN_TIMEOUT_NS 5000000000LL	/* the kernel takes no frame for this long: give up */
#define STUCK_NS	1000000000LL	/* the egress refuses the same frame for this long: drop it */

struct vxlan_forward {
	int ring_fd;
	int sock;
	char ifname[IF_NAMESIZE];
	struct ringbuf_mmap ring;
	uint8_t *tx;
	uint32_t largest;		/* the longest record that may be sent */
	struct vxlan_forward_counts *counts;
};

static uint32_t *slot_status(struct vxlan_forward *f, uint32_t slot)
{
	return (uint32_t *)(f->tx + (size_t)slot * TX_SLOT);
}

static uint32_t status_of(struct vxlan_forward *f, uint32_t slot)
{
	return __atomic_load_n(slot_status(f, slot), __ATOMIC_ACQUIRE);
}

static void set_status(struct vxlan_forward *f, uint32_t slot, uint32_t status)
{
	__atomic_store_n(slot_status(f, slot), status, __ATOMIC_RELEASE);
}

static uint32_t next_slot(uint32_t slot)
{
	return slot + 1 == TX_SLOTS ? 0 : slot + 1;
}

static uint32_t previous_slot(uint32_t slot)
{
	return slot ? slot - 1 : TX_SLOTS - 1;
}

static int in_flight(const struct vxlan_forward_commit *c, uint32_t slot)
{
	uint32_t from_first = (slot + TX_SLOTS - c->first) % TX_SLOTS;

	return c->sending && from_first < (c->next + TX_SLOTS - c->first) % TX_SLOTS;
}

static const struct vxlan_forward_commit *latest(struct vxlan_forward *f)
{
	return &f->counts->commit[f->counts->seq & 1];
}

/* Write the other commit, then count it: the latest stays whole whenever the writer dies. */
static void publish(struct vxlan_forward *f, const struct vxlan_forward_commit *c)
{
	uint64_t seq = f->counts->seq;

	f->counts->commit[(seq + 1) & 1] = *c;
	__atomic_store_n(&f->counts->seq, seq + 1, __ATOMIC_RELEASE);
}

void vxlan_forward_read(const struct vxlan_forward_counts *counts, struct vxlan_forward_commit *out)
{
	uint64_t seq;

	do {
		seq = __atomic_load_n(&counts->seq, __ATOMIC_ACQUIRE);
		*out = counts->commit[seq & 1];
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
	} while (__atomic_load_n(&counts->seq, __ATOMIC_RELAXED) != seq);
}

static int64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void wait_writable(struct vxlan_forward *f, int timeout_ms)
{
	struct pollfd p = { .fd = f->sock, .events = POLLOUT };

	poll(&p, 1, timeout_ms);
}

/* The egress's MTU now, which may have changed since the last batch. */
static int refresh_largest(struct vxlan_forward *f)
{
	struct ifreq ifr = { 0 };

	strncpy(ifr.ifr_name, f->ifname, IFNAMSIZ - 1);
	if (ioctl(f->sock, SIOCGIFMTU, &ifr))
		return -errno;
	f->largest = FRAME_OFFSET + ifr.ifr_mtu + ETH_HLEN + VLAN_HLEN;
	if (f->largest > FRAME_OFFSET + TX_SLOT - TX_DATA)
		f->largest = FRAME_OFFSET + TX_SLOT - TX_DATA;
	return 0;
}

static int fits(struct vxlan_forward *f, uint32_t slot)
{
	const struct tpacket2_hdr *hdr = (const struct tpacket2_hdr *)slot_status(f, slot);

	return FRAME_OFFSET + hdr->tp_len - sizeof(struct virtio_net_hdr) <= f->largest;
}

/* Copy a frame into a TX slot and mark it for sending; a slot the kernel still holds (a frame
 * sent, its skb not yet freed) comes back soon.
 */
static int fill(struct vxlan_forward *f, uint32_t slot, const uint8_t *frame, uint32_t len)
{
	struct tpacket2_hdr *hdr = (struct tpacket2_hdr *)slot_status(f, slot);
	struct virtio_net_hdr *vnet = (struct virtio_net_hdr *)((uint8_t *)hdr + TX_VNET);
	int64_t deadline = 0;

	while (status_of(f, slot) != TP_STATUS_AVAILABLE) {
		if (!deadline)
			deadline = now_ns() + DRAIN_TIMEOUT_NS;
		else if (now_ns() > deadline)
			return -ETIMEDOUT;
		wait_writable(f, 1);
	}
	memset(vnet, 0, sizeof(*vnet));
	vnet->hdr_len = len;
	memcpy((uint8_t *)hdr + TX_DATA, frame, len);
	hdr->tp_len = hdr->tp_snaplen = len + sizeof(*vnet);
	set_status(f, slot, TP_STATUS_SEND_REQUEST);
	return 0;
}

/* After a commit: finish moving a frame, if one was moving, then free every slot marked but not in
 * flight (frames queued and never committed, whose records are read again; frames the commit
 * counted as refused or rejected). The kernel takes marked slots only in our send(), so none is
 * taken meanwhile.
 */
static void tidy(struct vxlan_forward *f, struct vxlan_forward_commit *c)
{
	if (c->move_from != VXLAN_FORWARD_NO_SLOT) {
		memcpy((uint8_t *)slot_status(f, c->move_to) + sizeof(uint32_t),
		       (uint8_t *)slot_status(f, c->move_from) + sizeof(uint32_t),
		       TX_SLOT - sizeof(uint32_t));
		set_status(f, c->move_to, TP_STATUS_SEND_REQUEST);
	}
	for (uint32_t slot = 0; slot < TX_SLOTS; slot++) {
		uint32_t status = status_of(f, slot);

		if ((status == TP_STATUS_SEND_REQUEST || status == TP_STATUS_WRONG_FORMAT) &&
		    !in_flight(c, slot))
			set_status(f, slot, TP_STATUS_AVAILABLE);
	}
	if (c->move_from != VXLAN_FORWARD_NO_SLOT) {
		c->move_from = c->move_to = VXLAN_FORWARD_NO_SLOT;
		publish(f, c);
	}
}

/* The first slot of the batch the kernel has not taken (its position), or VXLAN_FORWARD_NO_SLOT;
 * `*refused` tells whether the kernel marked that frame malformed.
 */
static uint32_t kernel_position(struct vxlan_forward *f, const struct vxlan_forward_commit *c,
				int *refused)
{
	for (uint32_t slot = c->first; slot != c->next; slot = next_slot(slot)) {
		uint32_t status = status_of(f, slot);

		*refused = status == TP_STATUS_WRONG_FORMAT;
		if (*refused || status == TP_STATUS_SEND_REQUEST)
			return slot;
	}
	return VXLAN_FORWARD_NO_SLOT;
}

/* Count the stuck frame, and any at the batch's end too long for the MTU now, as rejected, and
 * move the batch's last frame into the stuck one's slot, where the kernel's position waits (the
 * move is in the commit: whoever goes on from it finishes it). Only a stuck frame reorders.
 */
static void unstick(struct vxlan_forward *f, struct vxlan_forward_commit *c, uint32_t stuck)
{
	uint32_t end = c->next;

	c->rejected++;
	for (;;) {
		uint32_t last = previous_slot(end);

		if (last == stuck) {
			c->next = stuck;
			break;
		}
		if (fits(f, last)) {
			c->next = c->move_from = last;
			c->move_to = stuck;
			break;
		}
		c->rejected++;
		end = last;
	}
	publish(f, c);
	tidy(f, c);
}

/* Have the kernel send the batch in flight, then count what it did not take (a down link's
 * refusals) and commit the batch as done. A loaded link (ENOBUFS, EAGAIN) leaves the slot it could
 * not send marked, for the next send.
 */
static int settle(struct vxlan_forward *f, struct vxlan_forward_commit *c)
{
	int64_t deadline = now_ns() + DRAIN_TIMEOUT_NS, since = 0;
	uint32_t position, waiting = VXLAN_FORWARD_NO_SLOT, slot, last;
	int down, failed, refused;

	for (;;) {
		down = failed = 0;
		if (send(f->sock, NULL, 0, 0) < 0) {
			if (errno == ENETDOWN)
				down = 1;
			else if (errno == ENOBUFS || errno == EAGAIN || errno == EMSGSIZE ||
				 errno == EINVAL)
				failed = 1;
			else
				return -errno;
		}
		position = kernel_position(f, c, &refused);
		if (failed && position != waiting) {
			waiting = position;
			since = now_ns();
		}
		/* The kernel will never send its next frame if it marked it malformed, if it has grown
		 * past the egress's MTU since it was queued (with a virtio-net header the kernel does not
		 * check the MTU: a veth drops the frame and the kernel keeps it for sending again, for
		 * ever), or if the egress refused it for STUCK_NS (a veth peer's smaller MTU, say).
		 */
		if (position != VXLAN_FORWARD_NO_SLOT &&
		    (refused || (failed && ((!refresh_largest(f) && !fits(f, position)) ||
					    now_ns() - since > STUCK_NS)))) {
			unstick(f, c, position);
			waiting = VXLAN_FORWARD_NO_SLOT;
			deadline = now_ns() + DRAIN_TIMEOUT_NS;
			continue;
		}
		if (c->first == c->next)
			break;
		last = status_of(f, previous_slot(c->next));
		if (down || (last != TP_STATUS_SEND_REQUEST && last != TP_STATUS_SENDING))
			break;
		if (now_ns() > deadline)
			return -ETIMEDOUT;
		wait_writable(f, 1);
	}
	/* The kernel takes slots in order: what it did not take is a run that ends the batch. */
	for (slot = c->first; slot != c->next; slot = next_slot(slot))
		if (status_of(f, slot) == TP_STATUS_SEND_REQUEST)
			break;
	c->refused += (c->next + TX_SLOTS - slot) % TX_SLOTS;
	c->next = slot;			/* the kernel's own position, where the next batch starts */
	c->sending = 0;
	publish(f, c);
	tidy(f, c);
	return 0;
}

long vxlan_forward_batch(struct vxlan_forward *f, uint32_t budget)
{
	struct vxlan_forward_commit c = *latest(f);
	uint64_t consumer = c.position;
	uint64_t producer = __atomic_load_n(f->ring.producer, __ATOMIC_ACQUIRE);
	uint32_t slot = c.next, queued = 0;
	long records = 0;
	int err;

	if (consumer == producer)
		return 0;
	err = refresh_largest(f);
	if (err)
		return err;
	if (budget > VXLAN_FORWARD_BATCH)
		budget = VXLAN_FORWARD_BATCH;	/* the TX ring's other batch stays free */
	while (consumer < producer && records < budget) {
		const uint8_t *record = f->ring.data + (consumer & f->ring.mask);
		uint32_t len = __atomic_load_n((const uint32_t *)record, __ATOMIC_ACQUIRE);

		if (len & RINGBUF_BUSY)
			break;		/* reserved, not yet submitted: everything after it waits too */
		consumer += ringbuf_record_span(len);
		if (len & RINGBUF_DISCARD)
			continue;
		records++;
		if (len > f->largest) {
			c.too_big++;
			continue;
		}
		/* Not yet sent nor committed: a process killed here has its records read again. */
		err = fill(f, slot, record + RINGBUF_HDR + FRAME_OFFSET, len - FRAME_OFFSET);
		if (err)
			return err;
		slot = next_slot(slot);
		queued++;
	}
	if (consumer == c.position)
		return 0;
	c.queued += queued;
	c.position = consumer;
	c.first = c.next;
	c.next = slot;
	c.sending = queued > 0;
	publish(f, &c);
	/* Every record read is copied out or counted: its space goes back to the producer. */
	__atomic_store_n(f->ring.consumer, consumer, __ATOMIC_RELEASE);
	if (c.sending && (err = settle(f, &c)))
		return err;
	return records;
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

long vxlan_forward_recover(struct vxlan_forward *f)
{
	struct vxlan_forward_commit c = *latest(f);

	tidy(f, &c);
	__atomic_store_n(f->ring.consumer, c.position, __ATOMIC_RELEASE);
	return c.sending ? settle(f, &c) : 0;
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
	int err;

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
	strncpy(f->ifname, ifname, IF_NAMESIZE - 1);
	err = refresh_largest(f);
	if (err) {
		errno = -err;
		return -1;
	}
	f->tx = mmap(NULL, (size_t)TX_SLOTS * TX_SLOT, PROT_READ | PROT_WRITE, MAP_SHARED, f->sock, 0);
	return f->tx == MAP_FAILED ? (f->tx = NULL, -1) : 0;
}

struct vxlan_forward *vxlan_forward_open(int ring_fd, uint32_t ring_size, const char *ifname,
					 struct vxlan_forward_counts *counts)
{
	struct vxlan_forward *f = calloc(1, sizeof(*f));
	int err;

	if (!f)
		return NULL;
	f->sock = -1;
	f->ring_fd = ring_fd;
	f->counts = counts;
	if (ringbuf_mmap(&f->ring, ring_fd, ring_size) || tx_ring(f, ifname))
		goto fail;
	if (!counts->seq) {	/* fresh counts start where the ring's consumer is */
		struct vxlan_forward_commit start = {
			.position = *f->ring.consumer,
			.move_from = VXLAN_FORWARD_NO_SLOT,
			.move_to = VXLAN_FORWARD_NO_SLOT,
		};

		publish(f, &start);
	}
	return f;
fail:
	err = errno;
	vxlan_forward_close(f);
	errno = err;
	return NULL;
}

void vxlan_forward_close(struct vxlan_forward *f)
{
	if (!f)
		return;
	if (f->tx)
		munmap(f->tx, (size_t)TX_SLOTS * TX_SLOT);
	if (f->sock >= 0)
		close(f->sock);
	ringbuf_munmap(&f->ring);
	free(f);
}
