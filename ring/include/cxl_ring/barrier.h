/*
 * barrier.h - acquire/release helpers for fields shared between peers.
 *
 * Every access to a field of the shared region that another peer writes or
 * reads concurrently goes through one of these helpers, never through a plain
 * dereference, so that (a) the compiler reads it exactly once (READ_ONCE) and
 * (b) the ordering each call site needs is spelled out by name. The pairs are
 * listed in docs/ring-protocol.md (P0/P1, C1/C2, S1-S3, F1/F2).
 *
 * On x86-64 (TSO) acquire loads and release stores compile to plain MOVs plus
 * a compiler barrier; the builtins keep the code correct on weaker CPUs.
 */
#ifndef CXL_RING_BARRIER_H
#define CXL_RING_BARRIER_H

#include <stdint.h>

/* Load a field another peer publishes; later reads may not move before it. */
static inline uint64_t cxl_load_acquire64(const volatile uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline uint32_t cxl_load_acquire32(const volatile uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

/* Publish a field; earlier writes (ring data) may not move after it. */
static inline void cxl_store_release64(volatile uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline void cxl_store_release32(volatile uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/*
 * Relaxed accesses: only for fields whose value orders nothing else
 * (heartbeats, counters, informational pids). Still a single untorn access.
 */
static inline uint64_t cxl_load_relaxed64(const volatile uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline uint32_t cxl_load_relaxed32(const volatile uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void cxl_store_relaxed64(volatile uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static inline void cxl_store_relaxed32(volatile uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

/* S1: take a channel; sequentially consistent, may race with other clients. */
static inline int cxl_cas64(volatile uint64_t *p, uint64_t expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

/* Busy-wait hint for spin loops. */
static inline void cxl_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

#endif /* CXL_RING_BARRIER_H */
