// SPDX-License-Identifier: GPL-2.0
/* The bare-C baseline of tests/perf/test_injector_perf.py: what the xdp injector's send loop
 * (injector/xdp.py, XdpSender._loop) achieves without Python. The benchmark compiles this file with
 * `cc ... -lbpf` (Debian's libbpf) at test time and runs it inside the injector's namespace.
 *
 * It drives the very program the Python sender drives: the xdp_gen field engine, loaded, configured
 * and attached (generic mode, to a spare veth: PLATFORM.md trap 1) by XdpSender, whose descriptor
 * this process inherits. Loading the object here instead would need a second copy of the engine's
 * configuration code. It calls bpf_prog_test_run_opts with BPF_F_TEST_XDP_LIVE_FRAMES in the same
 * chunks and batches, from WORKERS forked processes pinned one per CPU (the engine's packet index is
 * per-CPU), each sending a share of COUNT frames out of IFNAME. So the ratio of the Python sender's
 * rate to this one is what Python costs, nothing else.
 *
 * usage: live_frames_bare PROG_FD IFNAME FRAME_HEX COUNT WORKERS CHUNK BATCH
 * prints: PACKETS SECONDS (seconds: the slowest worker's, as XdpSender reports them)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>

#define MAX_FRAME 3408
#define MAX_WORKERS 64

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Send `count` copies of `frame` as live frames, `chunk` per system call, `batch` per kernel batch. */
static int send_share(int prog_fd, int ifindex, const unsigned char *frame, __u32 len,
		      long long count, __u32 chunk, __u32 batch)
{
	struct xdp_md ctx = { .data_end = len, .ingress_ifindex = ifindex };
	LIBBPF_OPTS(bpf_test_run_opts, opts,
		.data_in = frame,
		.data_size_in = len,
		.ctx_in = &ctx,
		.ctx_size_in = sizeof(ctx),
		.flags = BPF_F_TEST_XDP_LIVE_FRAMES,
	);

	while (count > 0) {
		__u32 n = count < chunk ? count : chunk;

		opts.repeat = n;
		opts.batch_size = batch < n ? batch : n;
		if (bpf_prog_test_run_opts(prog_fd, &opts))
			return -errno;
		count -= n;
	}
	return 0;
}

static int parse_hex(const char *hex, unsigned char *out, size_t max)
{
	size_t len = strlen(hex), i;

	if (len % 2 || len / 2 > max)
		return -1;
	for (i = 0; i < len / 2; i++)
		if (sscanf(hex + 2 * i, "%2hhx", &out[i]) != 1)
			return -1;
	return len / 2;
}

int main(int argc, char **argv)
{
	static unsigned char frame[MAX_FRAME];
	int prog_fd, ifindex, len, workers, cpus[MAX_WORKERS], ncpus = 0, failed = 0, w, cpu, status;
	long long count, sent = 0;
	__u32 chunk, batch;
	double *seconds, slowest = 0;
	cpu_set_t allowed;

	if (argc != 8) {
		fprintf(stderr, "usage: %s PROG_FD IFNAME FRAME_HEX COUNT WORKERS CHUNK BATCH\n", argv[0]);
		return 2;
	}
	prog_fd = atoi(argv[1]);
	ifindex = if_nametoindex(argv[2]);
	len = parse_hex(argv[3], frame, sizeof(frame));
	count = atoll(argv[4]);
	workers = atoi(argv[5]);
	chunk = strtoul(argv[6], NULL, 0);
	batch = strtoul(argv[7], NULL, 0);
	if (!ifindex) {
		fprintf(stderr, "live_frames_bare: no interface %s in this namespace\n", argv[2]);
		return 1;
	}
	if (len < 14) {
		fprintf(stderr, "live_frames_bare: FRAME_HEX must be 14..%d bytes of hex\n", MAX_FRAME);
		return 1;
	}
	sched_getaffinity(0, sizeof(allowed), &allowed);
	for (cpu = 0; cpu < CPU_SETSIZE && ncpus < MAX_WORKERS; cpu++)
		if (CPU_ISSET(cpu, &allowed))
			cpus[ncpus++] = cpu;
	if (workers < 1 || workers > ncpus || !chunk || batch < 1 || batch > 256) {
		fprintf(stderr, "live_frames_bare: WORKERS must be 1..%d, CHUNK > 0, BATCH 1..256\n",
			ncpus);
		return 1;
	}

	/* Each worker writes its elapsed time here; a negative value is its error. */
	seconds = mmap(NULL, workers * sizeof(*seconds), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (seconds == MAP_FAILED) {
		perror("live_frames_bare: mmap");
		return 1;
	}
	for (w = 0; w < workers; w++) {
		long long share = count / workers + (w < count % workers);
		pid_t pid = fork();

		if (pid < 0) {
			perror("live_frames_bare: fork");
			failed = 1;
			break;
		}
		if (pid == 0) {
			cpu_set_t one;
			double start;
			int err;

			CPU_ZERO(&one);
			CPU_SET(cpus[w], &one);
			sched_setaffinity(0, sizeof(one), &one);
			start = now();
			err = send_share(prog_fd, ifindex, frame, len, share, chunk, batch);
			seconds[w] = err ? err : now() - start;
			_exit(0);
		}
		sent += share;
	}
	while (wait(&status) > 0)
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			failed = 1;
	for (w = 0; w < workers; w++) {
		if (seconds[w] < 0) {
			fprintf(stderr, "live_frames_bare: worker %d: test_run: %s\n", w,
				strerror((int)-seconds[w]));
			failed = 1;
		} else if (seconds[w] > slowest) {
			slowest = seconds[w];
		}
	}
	munmap(seconds, workers * sizeof(*seconds));
	if (failed)
		return 1;
	printf("%lld %.9f\n", sent, slowest);
	return 0;
}
