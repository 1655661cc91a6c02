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
 * A client's doorbell (notify_kind 2, between VMs): the uio_cxl_doorbell device of its VM,
 * /dev/cxl/doorbell, to which a write of the 32-bit (peer_id << 16) | vector rings that
 * vector of that peer. Opened lazily, on the first notification that needs it: a client
 * whose server never sleeps behind a doorbell makes no system call for it.
 *
 * Which path: the one given to cxl_doorbell_init (NULL: the default, the environment
 * variable CXL_RING_DOORBELL when set, else /dev/cxl/doorbell when it exists). A doorbell
 * that cannot be opened is not retried: the client then does not notify (a sleeping server
 * still sees its requests when its sleep_max_ms ends), `missed` counts those notifications
 * and `why` says why. Any thread may ring; the counters are relaxed atomics.
 */
#define CXL_DOORBELL_ENV     "CXL_RING_DOORBELL"
#define CXL_DOORBELL_DEFAULT "/dev/cxl/doorbell"

struct cxl_doorbell {
    char     path[256];                 /* "" until opened with the default */
    int      explicit_path;             /* path was given: no default lookup */
    int      fd;
    int      state;                     /* atomic: 0 not tried, 1 open, 2 opening, -1 none */
    uint64_t rings;                     /* notifications written to the doorbell */
    uint64_t missed;                    /* notifications the doorbell could not carry */
    char     why[192];                  /* with state -1: why there is no doorbell */
};

/* path NULL or "": the default (above). Opens nothing. */
void cxl_doorbell_init(struct cxl_doorbell *db, const char *path);
/* Ring `value` ((peer << 16) | vector), opening the doorbell on first use: 1 rung,
 * 0 no doorbell (counted in missed). */
int  cxl_doorbell_ring(struct cxl_doorbell *db, uint32_t value);
void cxl_doorbell_close(struct cxl_doorbell *db);

/*
 * Client, after P1 (the request head is published): N2 pairs with the server's N1.
 * When the server may be sleeping, wake it the way the header says: notify_kind futex,
 * bump the group's wake word and FUTEX_WAKE it (the group's word is req_wake in the client
 * section of the group's first channel; every channel of the group may bump it);
 * notify_kind doorbell, write (doorbell_peer << 16) | doorbell_vector to the client's
 * doorbell `db` (NULL: none). Returns 1 when it notified. While the server is awake: one
 * fence and one load, no system call.
 */
int cxl_notify_server(const struct cxl_shm_header *h, struct cxl_shm_client_ctl *group_first,
                      struct cxl_doorbell *db);

#endif /* CXL_RING_NOTIFY_H */
