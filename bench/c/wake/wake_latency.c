/*
 * wake_latency.c - how long the first request after an idle gap takes (docs/benchmarks.md).
 *
 * One channel, one request at a time: SET a key once, then per sample sleep --gap-ms with
 * nothing in flight, GET it and time the round trip (the clock read before the push, the
 * clock read when the response is popped; the client spins while it waits, so the figure is
 * the server's: how soon it sees the request and answers). With a server that polls, the
 * request waits for its back-off nap to end; with one that sleeps until notified (notify
 * futex, docs/ring-protocol.md section 8), for the futex wake-up.
 *
 * usage: cxl-wake-latency --path REGION [--samples N] [--gap-ms MS] [--timeout SEC]
 *        cxl-wake-latency --floor [--samples N] [--gap-ms MS] [--cpus A,B]
 * prints one JSON object: samples, gap_ms, p50_us, p90_us, p99_us, max_us, min_us.
 *
 * --floor: no ring and no server, the machine's own floor for any waiter that blocks: a
 * process on CPU B blocked in FUTEX_WAIT for the gap, woken by one on CPU A (bump, FUTEX_WAKE),
 * timed until the woken process has stored the time it runs again. Waking an idle CPU costs
 * what it costs (on a VM, an interrupt through the hypervisor to a halted vCPU).
 * Exit 0; 2 cannot open or claim; 5 a request was not answered within --timeout.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cxl_ring/client.h"
#include "cxl_ring/ring.h"

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static int round_trip(struct cxl_session *s, int op, uint32_t seq, uint64_t timeout_ns,
                      uint64_t *took)
{
    static const uint8_t key[] = "wake:latency", val[] = "v";
    const uint8_t *argv[2] = { key, val };
    uint32_t argl[2] = { sizeof(key) - 1, sizeof(val) - 1 };
    uint8_t msg[256];
    struct cxl_resp r;
    uint32_t len = cxl_req_encode(msg, op, 0, cxl_session_id(s, seq), 0,
                                  op == CXL_OP_GET ? 1 : 2, argv, argl);
    uint64_t t0 = now_ns();
    int rc;

    if ((rc = cxl_session_push(s, msg, len)) != CXL_OK)
        return rc;
    cxl_session_flush(s);
    while ((rc = cxl_session_pop(s, &r)) == CXL_E_AGAIN) {
        if (now_ns() - t0 > timeout_ns)
            return -1;
        cxl_cpu_relax();
    }
    *took = now_ns() - t0;
    if (rc == CXL_OK)
        cxl_session_pop_done(s);
    return rc;
}

static void pin(int cpu)
{
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

/* --floor: FUTEX_WAKE of a process blocked for gap_ms on another CPU, until it runs. */
static int floor_run(uint32_t samples, uint32_t gap_ms, int cpu_a, int cpu_b, uint64_t *lat)
{
    volatile uint32_t *word = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                                   -1, 0);
    volatile uint64_t *ran;
    pid_t pid;
    uint32_t i;

    if (word == MAP_FAILED)
        return -1;
    ran = (volatile uint64_t *)(word + 16);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        pin(cpu_b);
        for (i = 0; i < samples; i++) {
            while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == i)
                syscall(SYS_futex, word, FUTEX_WAIT, i, NULL, NULL, 0);
            __atomic_store_n(ran, now_ns(), __ATOMIC_RELEASE);
        }
        _exit(0);
    }
    pin(cpu_a);
    for (i = 0; i < samples; i++) {
        struct timespec gap = { (time_t)(gap_ms / 1000), (long)(gap_ms % 1000) * 1000000L };
        uint64_t t0, deadline;

        nanosleep(&gap, NULL);
        __atomic_store_n(ran, 0, __ATOMIC_RELEASE);
        t0 = now_ns();
        deadline = t0 + 10000000000ull;
        __atomic_fetch_add(word, 1, __ATOMIC_SEQ_CST);
        syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
        while (!__atomic_load_n(ran, __ATOMIC_ACQUIRE))
            if (now_ns() > deadline) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                return -1;
            }
        lat[i] = __atomic_load_n(ran, __ATOMIC_ACQUIRE) - t0;
    }
    waitpid(pid, NULL, 0);
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    uint32_t samples = 20, gap_ms = 1000, timeout_s = 10, i;
    struct cxl_client c;
    struct cxl_session s;
    uint64_t *lat, took;
    char err[512];
    int rc;

    int floor_mode = 0, cpu_a = 0, cpu_b = 1;

    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--floor"))
            floor_mode = 1;
        else if (!strcmp(argv[a], "--cpus") && a + 1 < argc && sscanf(argv[a + 1], "%d,%d",
                                                                      &cpu_a, &cpu_b) == 2)
            a++;
        else if (!strcmp(argv[a], "--path") && a + 1 < argc)
            path = argv[++a];
        else if (!strcmp(argv[a], "--samples") && a + 1 < argc)
            samples = (uint32_t)strtoul(argv[++a], NULL, 10);
        else if (!strcmp(argv[a], "--gap-ms") && a + 1 < argc)
            gap_ms = (uint32_t)strtoul(argv[++a], NULL, 10);
        else if (!strcmp(argv[a], "--timeout") && a + 1 < argc)
            timeout_s = (uint32_t)strtoul(argv[++a], NULL, 10);
        else {
            fprintf(stderr, "usage: %s --path REGION [--samples N] [--gap-ms MS] "
                    "[--timeout SEC]\n       %s --floor [--samples N] [--gap-ms MS] "
                    "[--cpus A,B]\n", argv[0], argv[0]);
            return 1;
        }
    }
    if (floor_mode && samples) {
        lat = calloc(samples, sizeof(*lat));
        if (!lat || floor_run(samples, gap_ms, cpu_a, cpu_b, lat) < 0) {
            fprintf(stderr, "--floor: the woken process did not run within 10 s\n");
            free(lat);
            return 5;
        }
        goto report;
    }
    if (!path || !samples) {
        fprintf(stderr, "--path is required and --samples must be at least 1\n");
        return 1;
    }
    if ((rc = cxl_client_open(&c, path, 0, err, sizeof(err))) != CXL_OK ||
        (rc = cxl_client_start_heartbeat(&c, err, sizeof(err))) != CXL_OK) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    {
        uint32_t chans[CXL_MAX_CHANNELS];

        if (!cxl_client_channels(&c, chans, CXL_MAX_CHANNELS) ||
            cxl_session_claim(&c, &s, chans[0], 5000) != CXL_OK) {
            fprintf(stderr, "%s: cannot claim a channel\n", path);
            cxl_client_close(&c);
            return 2;
        }
    }
    lat = calloc(samples, sizeof(*lat));
    rc = lat ? round_trip(&s, CXL_OP_SET, 1, (uint64_t)timeout_s * 1000000000ull, &took) : -1;
    for (i = 0; rc == CXL_OK && i < samples; i++) {
        struct timespec gap = { (time_t)(gap_ms / 1000), (long)(gap_ms % 1000) * 1000000L };

        nanosleep(&gap, NULL);
        rc = round_trip(&s, CXL_OP_GET, i + 2, (uint64_t)timeout_s * 1000000000ull, &lat[i]);
    }
    cxl_session_release(&s);
    cxl_client_close(&c);
    if (rc != CXL_OK) {
        fprintf(stderr, "request %u: %s\n", i + 1, rc < 0 ? "not answered in time" :
                cxl_client_strerror(rc));
        free(lat);
        return 5;
    }
report:
    qsort(lat, samples, sizeof(*lat), cmp);
#define PCT(p) (lat[(size_t)((samples - 1) * (p) / 100.0 + 0.5)] / 1000.0)
    printf("{\"samples\": %u, \"gap_ms\": %u, \"min_us\": %.1f, \"p50_us\": %.1f, "
           "\"p90_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f}\n", samples, gap_ms,
           lat[0] / 1000.0, PCT(50), PCT(90), PCT(99), lat[samples - 1] / 1000.0);
    free(lat);
    return 0;
}
