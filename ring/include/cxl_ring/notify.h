/*
 * notify.h - waking a sleeping peer instead of polling (docs/ring-protocol.md section 8).
 *
 * A waiter stores its sleeping flag in its own section, makes a full fence, looks at
 * every ring once more and only then blocks; a producer publishes (P1), makes a full
 * fence and notifies when it sees the flag. The two fences are a Dekker pair (N1 in the
 * server, N2 in a client): acquire/release cannot order a store before a later load, a
 * seq-cst fence can. The word the server blocks on is one the *notifier* changes before
 * it wakes (the group's req_wake), so a wake that comes before the server is in the
 * kernel makes its wait return at once instead of being lost.
 */
#ifndef CXL_RING_NOTIFY_H
#define CXL_RING_NOTIFY_H

#include <stdint.h>

#include "layout.h"

/* The futex word of one wait: shared (a file mapping several processes see) or private. */
struct cxl_wait_word {
    const uint32_t *word;
    uint32_t expected;
    int private_;
};

/* FUTEX_WAKE on a word of a shared mapping (a read-only mapping is enough). */
int cxl_futex_wake(const uint32_t *word, int n, int private_);

/*
 * Block until one of the words differs from its expected value, a wake, or timeout_ns
 * (0: no timeout). Returns 0 (woken, or a word had already changed), 1 on timeout,
 * -1 with errno on error. Several words need futex_waitv (Linux 5.16+): without it
 * -1/ENOSYS (one word then falls back to FUTEX_WAIT).
 */
int cxl_futex_waitv(const struct cxl_wait_word *w, unsigned n, uint64_t timeout_ns);

/* 1 when this kernel has futex_waitv (it asks the kernel once per call; _cached asks
 * only the first time). */
int cxl_futex_waitv_probe(void);
int cxl_futex_waitv_probe_cached(void);

/* Full fence: the store before it is visible before any load after it (N1, N2). */
static inline void cxl_fence_seq_cst(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/*
 * Client, after P1 (the request head is published): N2 pairs with the server's N1.
 * When the server may be sleeping and wakes by futex, bump the group's wake word and
 * wake it. Returns 1 when it notified. The group's word is req_wake in the client
 * section of the group's first channel; every channel of the group may bump it.
 */
int cxl_notify_server(const struct cxl_shm_header *h, struct cxl_shm_client_ctl *group_first);

#endif /* CXL_RING_NOTIFY_H */
