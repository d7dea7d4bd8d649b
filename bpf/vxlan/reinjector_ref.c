// SPDX-License-Identifier: GPL-2.0
/* The C reference of the VXLAN re-injector: what reinjector.py's worker does, with no Python, so
 * that the Python figure is a ratio to this one measured in the same run (tests/perf/
 * test_vxlan_perf.py). One process per ring, as there is one Python worker per ring:
 *
 *	vxlan_reinjector_ref RINGS_PIN RING IFNAME [CPU...]
 *
 * RINGS_PIN is a running pipeline's pinned `rings` (bpf.pin_dir("vxlan-NAME")/rings), RING the
 * index of the ring to empty, IFNAME the egress, looked up in this process's network namespace;
 * the CPUs (default: any) are those it runs on. It says "ready" on stderr once set up; on SIGTERM
 * or SIGINT it forwards what the ring still holds and prints its counters as one JSON line
 * (forwarded, failed, and the counts of struct vxlan_forward_commit) on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>

#include "forward.h"

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

static int ring_of(const char *pin, __u32 index, __u32 *size)
{
	struct bpf_map_info info = { 0 };
	__u32 id, len = sizeof(info);
	int rings, ring;

	rings = bpf_obj_get(pin);
	if (rings < 0)
		return -1;
	if (bpf_map_lookup_elem(rings, &index, &id)) {
		close(rings);
		return -1;
	}
	close(rings);
	ring = bpf_map_get_fd_by_id(id);
	if (ring < 0 || bpf_obj_get_info_by_fd(ring, &info, &len))
		return -1;
	*size = info.max_entries;
	return ring;
}

int main(int argc, char **argv)
{
	struct vxlan_forward_counts counts = { 0 };
	struct vxlan_forward_commit c;
	struct sigaction action = { .sa_handler = on_signal };
	struct vxlan_forward *f;
	cpu_set_t cpus;
	__u32 size;
	long done;
	int ring;

	if (argc < 4) {
		fprintf(stderr, "usage: %s RINGS_PIN RING IFNAME [CPU...]\n", argv[0]);
		return 2;
	}
	if (argc > 4) {
		CPU_ZERO(&cpus);
		for (int i = 4; i < argc; i++)
			CPU_SET(atoi(argv[i]), &cpus);
		if (sched_setaffinity(0, sizeof(cpus), &cpus)) {
			perror("sched_setaffinity");
			return 1;
		}
	}
	ring = ring_of(argv[1], strtoul(argv[2], NULL, 10), &size);
	if (ring < 0) {
		fprintf(stderr, "%s: ring %s of %s: %s\n", argv[0], argv[2], argv[1], strerror(errno));
		return 1;
	}
	f = vxlan_forward_open(ring, size, argv[3], &counts);
	if (!f) {
		fprintf(stderr, "%s: TX ring on %s: %s\n", argv[0], argv[3], strerror(errno));
		return 1;
	}
	sigaction(SIGTERM, &action, NULL);
	sigaction(SIGINT, &action, NULL);
	fprintf(stderr, "ready\n");
	while (!stopping) {
		done = vxlan_forward_poll(f, 100);
		if (done < 0)
			goto failed;
	}
	/* The producer is detached by now: what the ring holds is all that is left. */
	while ((done = vxlan_forward_batch(f, VXLAN_FORWARD_BATCH)) == VXLAN_FORWARD_BATCH)
		;
	if (done < 0)
		goto failed;
	vxlan_forward_close(f);
	vxlan_forward_read(&counts, &c);
	printf("{\"forwarded\": %llu, \"failed\": %llu, \"queued\": %llu, \"too_big\": %llu, "
	       "\"rejected\": %llu, \"refused\": %llu}\n",
	       (unsigned long long)(c.queued - c.rejected - c.refused),
	       (unsigned long long)(c.too_big + c.rejected + c.refused),
	       (unsigned long long)c.queued, (unsigned long long)c.too_big,
	       (unsigned long long)c.rejected, (unsigned long long)c.refused);
	return 0;
failed:
	fprintf(stderr, "%s: send on %s: %s\n", argv[0], argv[3], strerror((int)-done));
	vxlan_forward_close(f);
	return 1;
}
