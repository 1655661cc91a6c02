/*
 * cacheline.c - the hardware floor of a ring round trip: two threads pinned
 * to two CPUs bounce one flag each (two cache lines) N times.
 *
 * A ring request/response moves at least as many lines between the client's
 * and the server's CPU, so no ring round trip between those CPUs can be
 * faster than this; bench/run.py records it next to the ring's latency.
 *
 * The loops spin without `pause`: in a VM, a long run of PAUSE instructions
 * makes the hypervisor deschedule the vCPU (pause-loop exiting), which is
 * what we do not want to measure here. Both threads are pinned to different
 * CPUs before either spins, so the spin always has a partner running.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>

#define ROUNDS 200000u

/* The two flags on their own cache lines (never shared with anything else). */
static struct {
    uint64_t ping __attribute__((aligned(CXL_CACHELINE)));
    uint64_t pong __attribute__((aligned(CXL_CACHELINE)));
    int      cpu_b;
    int      ready_b;               /* 1 pinned, -1 could not pin */
} flags;

static int pin_self(int cpu)
{
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set);
}

static void *responder(void *arg)
{
    uint64_t i;

    (void)arg;
    if (pin_self(flags.cpu_b) < 0) {
        __atomic_store_n(&flags.ready_b, -1, __ATOMIC_RELEASE);
        return NULL;
    }
    __atomic_store_n(&flags.ready_b, 1, __ATOMIC_RELEASE);
    for (i = 1; i <= ROUNDS; i++) {
        /* pairs with the store_release of ping below */
        while (cxl_load_acquire64(&flags.ping) != i)
            ;
        cxl_store_release64(&flags.pong, i);
    }
    return NULL;
}

/* Round trip in ns, or a negative value when the CPUs cannot be used. */
double cacheline_rtt_ns(int cpu_a, int cpu_b, char *err, size_t errlen)
{
    pthread_t t;
    uint64_t i, t0, t1;

    memset(&flags, 0, sizeof(flags));
    flags.cpu_b = cpu_b;
    if (pin_self(cpu_a) < 0) {
        snprintf(err, errlen, "cannot run on CPU %d", cpu_a);
        return -1;
    }
    if (pthread_create(&t, NULL, responder, NULL)) {
        snprintf(err, errlen, "cannot start a thread");
        return -1;
    }
    while (!__atomic_load_n(&flags.ready_b, __ATOMIC_ACQUIRE))
        sched_yield();
    if (flags.ready_b < 0) {
        pthread_join(t, NULL);
        snprintf(err, errlen, "cannot run on CPU %d", cpu_b);
        return -1;
    }
    t0 = cxl_now_ns();
    for (i = 1; i <= ROUNDS; i++) {
        cxl_store_release64(&flags.ping, i);
        while (cxl_load_acquire64(&flags.pong) != i)   /* pairs with the pong store */
            ;
    }
    t1 = cxl_now_ns();
    pthread_join(t, NULL);
    return (double)(t1 - t0) / ROUNDS;
}
