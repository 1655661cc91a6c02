/*
 * notify.c - futex waits and wakes on shared ring memory, and a client's doorbell between
 * VMs (docs/ring-protocol.md section 8).
 */
#define _GNU_SOURCE
#include "cxl_ring/notify.h"
#include "cxl_ring/barrier.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449                 /* the same number on every architecture */
#endif
#ifndef FUTEX2_SIZE_U32
#define FUTEX2_SIZE_U32 0x02
#endif
#ifndef FUTEX2_PRIVATE
#define FUTEX2_PRIVATE  128                 /* FUTEX_PRIVATE_FLAG */
#endif

/* struct futex_waitv of the kernel's uapi (not in every libc's headers). */
struct cxl_kernel_waitv {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};

int cxl_futex_wake(const uint32_t *word, int n, int private_)
{
    long rc = syscall(SYS_futex, word, FUTEX_WAKE | (private_ ? FUTEX_PRIVATE_FLAG : 0), n,
                      NULL, NULL, 0);

    return rc < 0 ? -1 : (int)rc;
}

static int waitv_state;                     /* 0 unknown, 1 available, -1 ENOSYS */

int cxl_futex_waitv_probe_cached(void)
{
    int st = __atomic_load_n(&waitv_state, __ATOMIC_RELAXED);

    return st ? st > 0 : cxl_futex_waitv_probe();
}

int cxl_futex_waitv_probe(void)
{
    /* A word that differs from the value expected: the kernel returns EAGAIN at once
     * when it has futex_waitv, ENOSYS when not. */
    uint32_t word = 1;
    struct cxl_kernel_waitv v = { .val = 0, .uaddr = (uint64_t)(uintptr_t)&word,
                                  .flags = FUTEX2_SIZE_U32 | FUTEX2_PRIVATE };
    long rc = syscall(SYS_futex_waitv, &v, 1, 0, NULL, CLOCK_MONOTONIC);
    int ok = !(rc < 0 && errno == ENOSYS);

    __atomic_store_n(&waitv_state, ok ? 1 : -1, __ATOMIC_RELAXED);
    return ok;
}

int cxl_futex_waitv(const struct cxl_wait_word *w, unsigned n, uint64_t timeout_ns)
{
    struct cxl_kernel_waitv v[CXL_MAX_GROUPS + 2];
    struct timespec abs, *tp = NULL;
    long rc;
    unsigned i;

    if (n == 0 || n > sizeof(v) / sizeof(v[0])) {
        errno = EINVAL;
        return -1;
    }
    if (timeout_ns) {
        /* futex_waitv's timeout is absolute, on CLOCK_MONOTONIC (flags 0). */
        clock_gettime(CLOCK_MONOTONIC, &abs);
        abs.tv_sec += (time_t)(timeout_ns / 1000000000ull);
        abs.tv_nsec += (long)(timeout_ns % 1000000000ull);
        if (abs.tv_nsec >= 1000000000L) {
            abs.tv_sec++;
            abs.tv_nsec -= 1000000000L;
        }
        tp = &abs;
    }
    if (n == 1 && __atomic_load_n(&waitv_state, __ATOMIC_RELAXED) < 0) {
        /* One word and no futex_waitv: FUTEX_WAIT (relative timeout). */
        struct timespec rel = { .tv_sec = (time_t)(timeout_ns / 1000000000ull),
                                .tv_nsec = (long)(timeout_ns % 1000000000ull) };

        rc = syscall(SYS_futex, w[0].word, FUTEX_WAIT | (w[0].private_ ? FUTEX_PRIVATE_FLAG : 0),
                     w[0].expected, timeout_ns ? &rel : NULL, NULL, 0);
    } else {
        for (i = 0; i < n; i++) {
            v[i].val = w[i].expected;
            v[i].uaddr = (uint64_t)(uintptr_t)w[i].word;
            v[i].flags = FUTEX2_SIZE_U32 | (w[i].private_ ? FUTEX2_PRIVATE : 0);
            v[i].reserved = 0;
        }
        rc = syscall(SYS_futex_waitv, v, n, 0, tp, CLOCK_MONOTONIC);
        if (rc < 0 && errno == ENOSYS) {
            __atomic_store_n(&waitv_state, -1, __ATOMIC_RELAXED);
            if (n == 1)
                return cxl_futex_waitv(w, n, timeout_ns);
            return -1;
        }
        if (rc >= 0)
            __atomic_store_n(&waitv_state, 1, __ATOMIC_RELAXED);
    }
    if (rc >= 0)
        return 0;
    if (errno == EAGAIN || errno == EINTR)
        return 0;                           /* a word changed (or a signal): look again */
    if (errno == ETIMEDOUT)
        return 1;
    return -1;
}

/* ---- A client's doorbell ------------------------------------------------------ */

void cxl_doorbell_init(struct cxl_doorbell *db, const char *path)
{
    memset(db, 0, sizeof(*db));
    db->fd = -1;
    if (path && *path) {
        snprintf(db->path, sizeof(db->path), "%s", path);
        db->explicit_path = 1;
    }
}

/* Opening thread only (state 2). 1 open, -1 none (why says why). */
static int doorbell_open(struct cxl_doorbell *db)
{
    const char *env = getenv(CXL_DOORBELL_ENV);

    if (!db->explicit_path) {
        if (env && *env) {
            snprintf(db->path, sizeof(db->path), "%s", env);
        } else if (access(CXL_DOORBELL_DEFAULT, F_OK) == 0) {
            snprintf(db->path, sizeof(db->path), "%s", CXL_DOORBELL_DEFAULT);
        } else {
            snprintf(db->why, sizeof(db->why), "no doorbell: %s is unset and %s does not "
                     "exist", CXL_DOORBELL_ENV, CXL_DOORBELL_DEFAULT);
            return -1;
        }
    }
    /* Non-blocking: a ring never waits (a FIFO standing in for the device, full of
     * rings the server has not drained, says EAGAIN: the server is being woken anyway). */
    db->fd = open(db->path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (db->fd < 0) {
        snprintf(db->why, sizeof(db->why), "cannot open the doorbell %.120s: %s", db->path,
                 strerror(errno));
        return -1;
    }
    return 1;
}

int cxl_doorbell_ring(struct cxl_doorbell *db, uint32_t value)
{
    int st = __atomic_load_n(&db->state, __ATOMIC_ACQUIRE), zero = 0;
    ssize_t n;

    while (st != 1) {
        if (st < 0)
            goto missed;
        if (st == 0 && __atomic_compare_exchange_n(&db->state, &zero, 2, 0, __ATOMIC_ACQ_REL,
                                                   __ATOMIC_ACQUIRE)) {
            st = doorbell_open(db);
            /* Release: a thread that sees 1 sees fd (and one that sees -1, why). */
            __atomic_store_n(&db->state, st, __ATOMIC_RELEASE);
            continue;
        }
        sched_yield();                      /* another thread is opening it */
        zero = 0;
        st = __atomic_load_n(&db->state, __ATOMIC_ACQUIRE);
    }
    do {
        n = write(db->fd, &value, sizeof(value));
    } while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof(value) || (n < 0 && errno == EAGAIN)) {
        __atomic_add_fetch(&db->rings, 1, __ATOMIC_RELAXED);
        return 1;
    }
missed:
    __atomic_add_fetch(&db->missed, 1, __ATOMIC_RELAXED);
    return 0;
}

void cxl_doorbell_close(struct cxl_doorbell *db)
{
    if (db->fd >= 0)
        close(db->fd);
    db->fd = -1;
    db->state = 0;
}

int cxl_notify_server(const struct cxl_shm_header *h, struct cxl_shm_client_ctl *group_first,
                      struct cxl_doorbell *db)
{
    uint32_t kind;

    /* N2 pairs with N1 in the server: our req_head store (P1) is visible before we load
     * server_sleeping, so either the server's last look sees our request or we see it
     * sleeping. */
    cxl_fence_seq_cst();
    if (!cxl_load_relaxed32(&h->server_sleeping))
        return 0;
    kind = cxl_load_relaxed32(&h->notify_kind);
    if (kind == CXL_NOTIFY_DOORBELL) {
        /* A ring is latched by the device (or the FIFO) until the server drains it, so a
         * ring before the server is in poll() makes its poll return at once. */
        uint32_t peer = cxl_load_relaxed32(&h->doorbell_peer);
        uint32_t vector = cxl_load_relaxed32(&h->doorbell_vector);

        if (!db || peer > 0xffff || vector > 0xffff)
            return 0;
        return cxl_doorbell_ring(db, peer << 16 | vector);
    }
    if (kind != CXL_NOTIFY_FUTEX || !group_first)
        return 0;
    /* Changed before the wake: a server that was not yet in the kernel returns at once. */
    __atomic_fetch_add(&group_first->req_wake, 1, __ATOMIC_SEQ_CST);
    cxl_futex_wake(&group_first->req_wake, 1, 0);
    return 1;
}
