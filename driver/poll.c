/*
 * poll.c - the driver's two threads.
 *
 * The poll thread serves the rings. Each round it follows sessions, flushes
 * pending responses and looks for requests without the GIL; when it finds
 * some it takes the GIL once (RedisModule_ThreadSafeContextTryLock) and
 * serves one hold: at most cfg.batch requests and DRV_BATCH_NS (1 ms), the
 * clock read between requests and between channels (struct drv_hold), so that
 * no request or channel, however large, makes a hold run on. Without requests
 * it spins for spin_us and yields; then, where clients can wake it (notify
 * futex: the region is memory of this host; notify doorbell: a VM's
 * uio_cxl_doorbell device), it sleeps in the kernel until a client notifies
 * or sleep_max_ms passes, and otherwise it sleeps with a
 * doubling interval up to idle_sleep_us (protocol doc section 8; CXLRING.INFO
 * says which, and why).
 *
 * The GIL is only ever *tried*: the main thread holds it while it runs the
 * shutdown event or MODULE UNLOAD and joins this thread, so a blocking lock
 * could deadlock. Short holds alone do not let TCP clients in, though: the
 * GIL is a plain mutex, not a fair one. A main thread woken by epoll_wait
 * blocks on it while we hold it, is woken by our unlock, and is still on its
 * way (tens of microseconds on another core of a VM; not at all on a core it
 * shares with this thread, until this thread stops running) when this
 * thread, which never sleeps while the rings are busy, has taken the GIL
 * again. So the poll thread counts how long it has held the GIL since the
 * main thread last had it (main_turns), and after DRV_HANDOFF_NS of that it
 * leaves the GIL alone until the main thread has taken it or HANDOFF_WAIT_NS
 * has passed (let_main_in() below).
 *
 * The heartbeat thread bumps server_heartbeat every heartbeat_ms / 2 and does
 * nothing else, so the heartbeat moves even while the main thread (and with
 * it the poll thread, waiting for the GIL) is busy.
 */
#define _GNU_SOURCE
#include "driver.h"
#include "compat.h"
#include "cxl_ring/notify.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define HOUSEKEEPING_NS   (10ull * 1000000ull)
#define WAKE_MIN_NS       (1000000ull)  /* wake the event loop at most every 1 ms */
#define YIELD_NS          (50000ull)    /* after spinning, yield this long before sleeping */
#define SHORT_NAPS_NS     (20000000ull) /* for the first 20 ms of a gap ... */
#define SHORT_NAP_US      50ull         /* ... sleep at most 50 us */
#define HANDOFF_NS        1000000ull    /* GIL held this long since the main thread's turn, */
#define HANDOFF_IDLE_NS   4000000ull    /* ... or this long when it has been idle */
#define MAIN_IDLE_NS      20000000ull   /* idle: no turn for 20 ms (serverCron: 100 ms) */
#define HANDOFF_SPIN_NS   5000ull       /* wait for its turn spinning this long, */
#define HANDOFF_NAP_NS    10000ull      /* ... then in naps of this (its core may be ours) */
#define HANDOFF_WAIT_NS   50000ull      /* ... and at most this long in all */

uint64_t drv_hold_seq;                  /* driver.h: bumped by gil_lock(), under the GIL */

/* T2 pairs with T1 in drv_threads_stop(): a thread that sees stop also sees what the
 * main thread stored before it (server_state STOPPING) and leaves its loop without
 * taking the GIL again; pthread_join orders everything after that. */
static int stopping(struct drv_server *s)
{
    return __atomic_load_n(&s->stop, __ATOMIC_ACQUIRE);
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000ull),
                           .tv_nsec = (long)(ns % 1000000000ull) };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- GIL ----------------------------------------------------------------- */

/* Take the GIL, or give up (-1) when the server stops. */
static int gil_lock(struct drv_server *s)
{
    RedisModuleCtx *ctx = s->exec.ctx;
    uint64_t t0 = 0;
    unsigned tries = 0;

    while (RedisModule_ThreadSafeContextTryLock(ctx) != REDISMODULE_OK) {
        if (stopping(s))
            return -1;
        if (++tries < 2000) {
            cxl_cpu_relax();
            continue;
        }
        /* The main thread is busy for longer: stop burning the core. */
        if (!t0)
            t0 = cxl_now_ns();
        sleep_ns(cxl_now_ns() - t0 < 1000000ull ? 2000 : 20000);
    }
    __atomic_add_fetch(&s->gil_holds, 1, __ATOMIC_RELAXED);
    drv_hold_seq++;                     /* under the GIL: block.c's WAIT reads it there */
    return 0;
}

/* ---- Letting the main thread in -------------------------------------------- */

/* Poll thread: how much of the GIL it has had since the main thread's last turn. */
struct gil_share {
    uint64_t turns;                     /* main_turns when last looked at */
    uint64_t turn_ns;                   /* when main_turns was last seen to move */
    uint64_t held_ns;                   /* GIL held since then */
};

/*
 * After a hold of held_ns, at now_ns. A main thread that had a turn meanwhile (TCP
 * clients, the wake-up below, serverCron) resets the count. Once the poll thread has
 * held the GIL for HANDOFF_NS since, it waits until the main thread takes the GIL
 * (main_turns moves) or HANDOFF_WAIT_NS passes: first spinning (a main thread on
 * another core takes it within microseconds of our unlock), then in short naps (one on
 * this core can only run while this thread sleeps). A main thread with no turn for
 * MAIN_IDLE_NS is asleep in epoll_wait with nothing to do: it is offered the GIL only
 * every HANDOFF_IDLE_NS, so a saturated ring with no TCP client gives up at most
 * HANDOFF_WAIT_NS in every HANDOFF_IDLE_NS (about 1 %), and a TCP client that arrives
 * then waits at most that long for its first turn; after it, every HANDOFF_NS.
 */
static void let_main_in(struct drv_server *s, struct gil_share *g, uint64_t held_ns,
                        uint64_t now_ns)
{
    uint64_t turns = __atomic_load_n(&s->main_turns, __ATOMIC_RELAXED), t0, now;

    if (turns != g->turns) {
        g->turns = turns;
        g->turn_ns = now_ns;
        g->held_ns = 0;
    }
    g->held_ns += held_ns;
    if (g->held_ns < (now_ns - g->turn_ns < MAIN_IDLE_NS ? HANDOFF_NS : HANDOFF_IDLE_NS))
        return;
    g->held_ns = 0;
    __atomic_add_fetch(&s->handoffs, 1, __ATOMIC_RELAXED);
    t0 = now = now_ns;
    while (__atomic_load_n(&s->main_turns, __ATOMIC_RELAXED) == turns) {
        if (now - t0 >= HANDOFF_WAIT_NS || stopping(s))
            return;
        if (now - t0 < HANDOFF_SPIN_NS) {
            for (int i = 0; i < 16; i++)
                cxl_cpu_relax();
        } else {
            sleep_ns(HANDOFF_NAP_NS);
        }
        now = cxl_now_ns();
    }
    __atomic_add_fetch(&s->handoffs_taken, 1, __ATOMIC_RELAXED);
    g->turns = __atomic_load_n(&s->main_turns, __ATOMIC_RELAXED);
    g->turn_ns = now;
}

/* Main thread, holding the GIL, each time it wakes from epoll_wait (module.c). */
void drv_main_turn(struct drv_server *s)
{
    /* Relaxed: a hint for let_main_in(); the GIL's mutex orders everything else. */
    __atomic_add_fetch(&s->main_turns, 1, __ATOMIC_RELAXED);
}

/* ---- Waking the event loop ------------------------------------------------ */

/*
 * Writes made from this thread reach the AOF buffer and the replicas' output
 * buffers at once, but the main thread flushes those in beforeSleep(); while
 * it sleeps in epoll_wait nothing would be written. A one-shot event wakes it.
 */
static void on_wake(void *user_data)
{
    struct drv_server *s = user_data;

    /* W1 pairs with W2 in maybe_wake(): a poll thread that sees 0 knows this callback has
     * run, so a new one may be queued (and OnUnload, on this thread, may unload). */
    __atomic_store_n(&s->wake_pending, 0, __ATOMIC_RELEASE);
}

static void maybe_wake(struct drv_server *s, int *unflushed, uint64_t now_ns)
{
    /* W2 pairs with W1 in on_wake(): at most one one-shot callback is queued at a time. */
    if (!*unflushed || __atomic_load_n(&s->wake_pending, __ATOMIC_ACQUIRE) ||
        now_ns - s->last_wake_ns < WAKE_MIN_NS)
        return;
    pthread_mutex_lock(&s->wake_mutex);
    if (s->wakes_closed) {
        pthread_mutex_unlock(&s->wake_mutex);
        return;
    }
    __atomic_store_n(&s->wake_pending, 1, __ATOMIC_RELEASE);
    if (RedisModule_EventLoopAddOneShot(on_wake, s) != REDISMODULE_OK) {
        __atomic_store_n(&s->wake_pending, 0, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&s->wake_mutex);
        return;
    }
    pthread_mutex_unlock(&s->wake_mutex);
    s->last_wake_ns = now_ns;
    __atomic_add_fetch(&s->wakeups, 1, __ATOMIC_RELAXED);
    *unflushed = 0;
}

/* ---- CXLRING.RESET hand-off ------------------------------------------------- */

static void handle_resets(struct drv_server *s)
{
    uint32_t c;

    /* R2 pairs with R1 in cmd_reset(): a cheap peek without the mutex; when it sees a
     * reset queued, the mutex below orders reset_bc, and a miss is seen next round. */
    if (!__atomic_load_n(&s->reset_pending, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&s->reset_mutex);
    __atomic_store_n(&s->reset_pending, 0, __ATOMIC_RELEASE);
    for (c = 0; c < s->nchan; c++) {
        RedisModuleBlockedClient *bc = s->reset_bc[c];

        if (!bc)
            continue;
        if (s->cfg.layout == CXL_LAYOUT_VERSION)
            drv_v5_reset(s, c);
        else
            drv_v2_reset(s, c);
        s->reset_bc[c] = NULL;
        /* The reply callback on the main thread answers +OK. */
        if (RedisModule_UnblockClient(bc, (void *)"OK") != REDISMODULE_OK)
            drv_log("warning", DRV_NAME ": could not unblock a CXLRING.RESET client");
    }
    pthread_mutex_unlock(&s->reset_mutex);
}

/* ---- Sleeping until a client notifies (section 8) ------------------------------- */

const char *drv_notify_name(uint32_t kind)
{
    switch (kind) {
    case CXL_NOTIFY_FUTEX:    return "futex";
    case CXL_NOTIFY_DOORBELL: return "doorbell";
    default:                  return "poll";
    }
}

/* Any thread: a sleeping poll thread looks at once (stop, CXLRING.RESET). */
void drv_kick(struct drv_server *s)
{
    uint64_t one = 1;

    __atomic_fetch_add(&s->kick, 1, __ATOMIC_RELEASE);
    cxl_futex_wake(&s->kick, 1, 1);
    /* notify doorbell: the poll thread sleeps in poll() on this eventfd too. The eventfd
     * latches: a kick before the poll thread is in poll() makes its poll return at once. */
    if (s->notify_fds && write(s->kick_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        drv_log("warning", DRV_NAME ": cannot kick the poll thread: %s", strerror(errno));
}

/*
 * The poll thread may block only where every client can wake it, and where nothing
 * it owes needs a look without a notification: staged responses wait for the client
 * to make room (which it does without notifying), and unflushed writes wait for the
 * event loop's wake-up (maybe_wake, at most every WAKE_MIN_NS), and a blocked WAIT
 * looks for its replicas' acknowledgements (block.c), which no event announces.
 */
static int may_sleep(struct drv_server *s, int unflushed)
{
    uint32_t c;

    if ((s->notify_kind != CXL_NOTIFY_FUTEX && s->notify_kind != CXL_NOTIFY_DOORBELL) ||
        unflushed)
        return 0;
    for (c = 0; c < s->nchan; c++)
        if (s->chans[c].out_len || s->chans[c].big_len ||
            (s->cfg.layout == CXL_LAYOUT_VERSION && s->chans[c].block.retry_ns))
            return 0;                   /* ... and a WAIT looks for its replicas' acks */
    return 1;
}

/*
 * Read every ring latched on the doorbell (a uio read returns the interrupt count, 4
 * bytes; a FIFO standing in for it holds one 4-byte value per ring): a ring is a hint,
 * never a count, and a flood of them costs at most this loop. Then the eventfd.
 */
static void drain_doorbell(struct drv_server *s, short bell, short kick)
{
    uint32_t v;
    uint64_t k;
    int n;

    if (bell & POLLIN)
        for (n = 0; n < 1024 && read(s->doorbell_fd, &v, sizeof(v)) == (ssize_t)sizeof(v); n++)
            __atomic_add_fetch(&s->doorbell_rings, 1, __ATOMIC_RELAXED);
    if (kick & POLLIN && read(s->kick_fd, &k, sizeof(k)) < 0 && errno != EAGAIN)
        __atomic_add_fetch(&s->doorbell_errors, 1, __ATOMIC_RELAXED);
}

/*
 * notify doorbell: the N1 order of sleep_until_notified() below, then poll() on the
 * doorbell and the kick eventfd. A client that saw server_sleeping rang the doorbell after
 * its request; the ring is latched until read, so one that comes before we are in poll()
 * makes it return at once. Rings are drained only after waking and before the rings are
 * looked at again: a drained ring's request is seen by that look.
 */
static void sleep_on_doorbell(struct drv_server *s, uint64_t now)
{
    struct pollfd p[2] = { { .fd = s->doorbell_fd, .events = POLLIN },
                           { .fd = s->kick_fd, .events = POLLIN } };
    int rc = 0, failed = 0;

    cxl_store_relaxed32(&s->khdr->server_sleeping, 1);
    /* N1 pairs with N2 in the client: server_sleeping is visible before we look at the
     * rings once more, so either this look sees a request or its client rings. */
    cxl_fence_seq_cst();
    if (!stopping(s) && !__atomic_load_n(&s->reset_pending, __ATOMIC_ACQUIRE) &&
        !drv_v5_scan(s, now)) {
        __atomic_add_fetch(&s->sleeps, 1, __ATOMIC_RELAXED);
        rc = poll(p, 2, (int)s->cfg.sleep_max_ms);
        if (rc > 0) {
            __atomic_add_fetch(&s->sleep_wakes, 1, __ATOMIC_RELAXED);
            if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL))
                failed = 1;             /* the device went away: never a busy loop */
            drain_doorbell(s, p[0].revents, p[1].revents);
        } else if (rc < 0 && errno != EINTR) {
            failed = 1;
        }
    }
    cxl_store_relaxed32(&s->khdr->server_sleeping, 0);
    if (failed) {
        if (__atomic_add_fetch(&s->doorbell_errors, 1, __ATOMIC_RELAXED) == 1)
            drv_log("warning", DRV_NAME ": the doorbell %s fails (poll: %s); sleeping "
                    "idle_sleep_us between looks", s->cfg.doorbell,
                    rc < 0 ? strerror(errno) : "error or hang-up");
        sleep_ns((uint64_t)s->cfg.idle_sleep_us * 1000ull);
    }
}

static void sleep_until_notified(struct drv_server *s, uint64_t now)
{
    struct cxl_wait_word w[CXL_MAX_GROUPS + 1];
    unsigned n = 0;
    uint32_t g;
    int rc = 1;

    if (s->notify_kind == CXL_NOTIFY_DOORBELL) {
        sleep_on_doorbell(s, now);
        return;
    }
    /* The wake words first: a client bumps its group's word only after it has seen
     * server_sleeping (below) set, so a bump after this load makes the wait return. */
    for (g = 0; g < s->geo.group_count; g++) {
        const struct cxl_shm_client_ctl *k =
            s->chans[s->geo.seg[cxl_client_segment(g)].first_channel].kclient;

        w[n].word = &k->req_wake;
        w[n].expected = cxl_load_relaxed32(&k->req_wake);
        w[n].private_ = 0;
        n++;
    }
    if (cxl_futex_waitv_probe_cached()) {
        w[n].word = &s->kick;
        w[n].expected = __atomic_load_n(&s->kick, __ATOMIC_ACQUIRE);
        w[n].private_ = 1;
        n++;
    }
    cxl_store_relaxed32(&s->khdr->server_sleeping, 1);
    /* N1 pairs with N2 in the client: server_sleeping is visible before we look at the
     * rings once more, so either this look sees a request or its client sees us asleep. */
    cxl_fence_seq_cst();
    if (!stopping(s) && !__atomic_load_n(&s->reset_pending, __ATOMIC_ACQUIRE) &&
        !drv_v5_scan(s, now)) {
        __atomic_add_fetch(&s->sleeps, 1, __ATOMIC_RELAXED);
        rc = cxl_futex_waitv(w, n, (uint64_t)s->cfg.sleep_max_ms * 1000000ull);
        if (rc == 0)
            __atomic_add_fetch(&s->sleep_wakes, 1, __ATOMIC_RELAXED);
    }
    cxl_store_relaxed32(&s->khdr->server_sleeping, 0);
    if (rc < 0)
        sleep_ns((uint64_t)s->cfg.idle_sleep_us * 1000ull);  /* never a busy loop */
}

/* ---- The poll thread ------------------------------------------------------ */

static void *poll_main(void *arg)
{
    struct drv_server *s = arg;
    uint64_t now, idle_since, next_housekeeping = 0, sleep_us = 0;
    uint64_t spin_ns = (uint64_t)s->cfg.spin_us * 1000ull, held_from;
    struct gil_share share = { .turn_ns = cxl_now_ns() };
    struct drv_hold hold;
    int ready, unflushed = 0;
    uint32_t done;

    pthread_setname_np(pthread_self(), "cxl-ring-poll");
    /* Sleeps as asked, not up to 50 us later (the default slack): the naps while the main
     * thread takes its turn are 10 us, and a saturated ring waits through them. */
    if (prctl(PR_SET_TIMERSLACK, 1000ul, 0ul, 0ul, 0ul) != 0)
        drv_log("warning", DRV_NAME ": cannot set the poll thread's timer slack");
    if (s->cfg.cpu >= 0) {
        cpu_set_t set;

        CPU_ZERO(&set);
        CPU_SET(s->cfg.cpu, &set);
        if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
            drv_log("warning", DRV_NAME ": cannot pin the poll thread to cpu %d", s->cfg.cpu);
    }
    idle_since = cxl_now_ns();
    while (!stopping(s)) {
        now = cxl_now_ns();
        if (now >= next_housekeeping) {
            if (s->cfg.layout == CXL_LAYOUT_VERSION)
                drv_v5_housekeeping(s, now);
            next_housekeeping = now + HOUSEKEEPING_NS;
        }
        handle_resets(s);
        if (s->cfg.layout == CXL_LAYOUT_VERSION)
            drv_v5_deliver(s);          /* pub/sub messages Redis delivered (pubsub.c) */
        maybe_wake(s, &unflushed, now);

        ready = s->cfg.layout == CXL_LAYOUT_VERSION ? drv_v5_scan(s, now) : drv_v2_scan(s);
        if (ready) {
            if (gil_lock(s) < 0)
                break;
            if (drv_compat_must_wait(s->exec.ctx)) {
                /* The server cannot take this batch from this thread now (compat.c). */
                RedisModule_ThreadSafeContextUnlock(s->exec.ctx);
                sleep_ns(500000ull);
                continue;
            }
            drv_exec_begin_batch(&s->exec);
            held_from = cxl_now_ns();
            hold = (struct drv_hold){ .deadline_ns = held_from + DRV_BATCH_NS,
                                      .budget = s->cfg.batch };
            done = s->cfg.layout == CXL_LAYOUT_VERSION ? drv_v5_process(s, &hold)
                                                       : drv_v2_process(s, &hold);
            if (s->exec.writes)
                unflushed = 1;
            /* Propagates this hold's writes (one MULTI/EXEC when several). */
            RedisModule_ThreadSafeContextUnlock(s->exec.ctx);
            now = cxl_now_ns();
            if (now - held_from > s->hold_max_ns)   /* relaxed: single writer, stats */
                __atomic_store_n(&s->hold_max_ns, now - held_from, __ATOMIC_RELAXED);
            if (s->exec.deferred) {
                /* Writes wait for a client pause to end: look again in a while. */
                sleep_ns(500000ull);
                continue;
            }
            let_main_in(s, &share, now - held_from, now);
            if (done) {
                idle_since = now;
                sleep_us = 0;
                continue;
            }
            /* ready but nothing served (a channel just quarantined): back off */
        }
        /* Back-off: spin, yield, then sleep up to idle_sleep_us. */
        if (now - idle_since < spin_ns) {
            for (int i = 0; i < 16; i++)
                cxl_cpu_relax();
        } else if (now - idle_since < spin_ns + YIELD_NS) {
            sched_yield();
        } else if (may_sleep(s, unflushed)) {
            sleep_until_notified(s, now);
        } else {
            /*
             * Short naps while the gap is young (a client that was descheduled
             * for a few ms comes back to a server that answers at once), then
             * doubling up to idle_sleep_us: an idle server wakes ~1000 times/s.
             */
            uint64_t cap = now - idle_since < SHORT_NAPS_NS ? SHORT_NAP_US : s->cfg.idle_sleep_us;

            sleep_us = sleep_us ? sleep_us * 2 : 4;
            if (sleep_us > cap)
                sleep_us = cap;
            if (sleep_us > s->cfg.idle_sleep_us)
                sleep_us = s->cfg.idle_sleep_us;
            sleep_ns(sleep_us * 1000ull);
        }
    }
    return NULL;
}

/* ---- The heartbeat thread ---------------------------------------------------- */

static void *heartbeat_main(void *arg)
{
    struct drv_server *s = arg;
    uint32_t interval_ms = s->cfg.layout == CXL_LAYOUT_VERSION ? s->geo.heartbeat_interval_ms : 1000;
    uint64_t period_ns = (uint64_t)interval_ms * 1000000ull / 2;
    struct timespec deadline;

    pthread_setname_np(pthread_self(), "cxl-ring-hb");
    if (period_ns == 0)
        period_ns = 500000ull;
    pthread_mutex_lock(&s->hb_mutex);
    while (!stopping(s)) {
        if (s->cfg.layout == CXL_LAYOUT_VERSION) {
            /* Relaxed: clients only watch it change; it orders nothing. */
            uint64_t hb = cxl_load_relaxed64(&s->khdr->server_heartbeat);
            cxl_store_relaxed64(&s->khdr->server_heartbeat, hb + 1);
        }
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_nsec += (long)(period_ns % 1000000000ull);
        deadline.tv_sec += (time_t)(period_ns / 1000000000ull) + deadline.tv_nsec / 1000000000L;
        deadline.tv_nsec %= 1000000000L;
        while (!stopping(s) &&
               pthread_cond_timedwait(&s->hb_cond, &s->hb_mutex, &deadline) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&s->hb_mutex);
    return NULL;
}

/* ---- Start and stop ----------------------------------------------------------- */

int drv_threads_start(struct drv_server *s, RedisModuleCtx *ctx, char *err, size_t errlen)
{
    pthread_condattr_t ca;
    int rc;

    s->exec.ctx = RedisModule_GetDetachedThreadSafeContext(ctx);
    if (!s->exec.ctx) {
        snprintf(err, errlen, "cannot create a thread-safe context");
        return -1;
    }
    if (RedisModule_SelectDb(s->exec.ctx, 0) != REDISMODULE_OK) {
        snprintf(err, errlen, "cannot select db 0");
        goto fail_ctx;
    }
    s->exec.acl_users = (const char (*)[DRV_USER_MAX])s->cfg.acl_users;
    s->exec.max_value = s->cfg.layout == CXL_LAYOUT_VERSION ? s->geo.max_value_size : CXL_V2_MAX_PAYLOAD;
    drv_compat_init(ctx);
    pthread_mutex_init(&s->reset_mutex, NULL);
    pthread_mutex_init(&s->hb_mutex, NULL);
    pthread_mutex_init(&s->wake_mutex, NULL);
    s->wakes_closed = 0;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->hb_cond, &ca);
    pthread_condattr_destroy(&ca);
    __atomic_store_n(&s->stop, 0, __ATOMIC_RELEASE);

    if ((rc = pthread_create(&s->hb_thread, NULL, heartbeat_main, s)) != 0) {
        snprintf(err, errlen, "cannot start the heartbeat thread: %s", strerror(rc));
        goto fail_ctx;
    }
    if ((rc = pthread_create(&s->poll_thread, NULL, poll_main, s)) != 0) {
        snprintf(err, errlen, "cannot start the poll thread: %s", strerror(rc));
        __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
        pthread_cond_signal(&s->hb_cond);
        pthread_join(s->hb_thread, NULL);
        goto fail_ctx;
    }
    s->threads_running = 1;
    return 0;

fail_ctx:
    RedisModule_FreeThreadSafeContext(s->exec.ctx);
    s->exec.ctx = NULL;
    return -1;
}

/* Main thread (holding the GIL). The poll thread never blocks on the GIL, so it exits. */
void drv_threads_stop(struct drv_server *s)
{
    uint32_t c;

    if (!s->threads_running)
        return;
    /* T1 pairs with T2 in stopping(): the threads see stop after the STOPPING state
     * stored before it, and leave their loops; the joins below order the rest. */
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    drv_kick(s);
    pthread_mutex_lock(&s->hb_mutex);
    pthread_cond_signal(&s->hb_cond);
    pthread_mutex_unlock(&s->hb_mutex);
    pthread_join(s->poll_thread, NULL);
    pthread_join(s->hb_thread, NULL);
    s->threads_running = 0;

    /* Answer CXLRING.RESET calls the poll thread did not get to. */
    pthread_mutex_lock(&s->reset_mutex);
    for (c = 0; c < s->nchan; c++) {
        if (s->reset_bc && s->reset_bc[c]) {
            RedisModule_UnblockClient(s->reset_bc[c], NULL);
            s->reset_bc[c] = NULL;
        }
    }
    pthread_mutex_unlock(&s->reset_mutex);
    drv_acl_free(&s->exec);             /* what the poll thread kept (acl.c) */
    for (c = 0; s->cfg.layout == CXL_LAYOUT_VERSION && c < s->nchan; c++)
        drv_txn_reset(&s->chans[c].txn);    /* queued commands, watched keys */
    RedisModule_FreeThreadSafeContext(s->exec.ctx);
    s->exec.ctx = NULL;
}
