/*
 * notify_stress.c - no wake-up is lost (docs/ring-protocol.md section 8, N1/N2).
 *
 * Two processes share one page pair of a memfd, as a server and a client share a region: a
 * header (server_sleeping, notify_kind futex) and a client control page (req_wake, req_head),
 * plus a word the "server" answers in. The client publishes request i (P1), then runs
 * cxl_notify_server(), the library's own N2; then it waits for the answer. The server
 * answers what it sees, and when it sees nothing it goes to sleep exactly as the driver
 * does: snapshot the wake word, store server_sleeping, full fence (N1), look once more,
 * then cxl_futex_waitv() on the wake word and a private kick word. Both sides pause a
 * random while between steps, so that every interleaving of the two fences comes up.
 *
 * A lost wake-up leaves the server asleep with a request published: its wait then ends by
 * the timeout (--wait-ms, default 5000) instead of a notification, and is counted. The run
 * stops after --cycles sleeps that a notification ended (default 100000) or --seconds.
 *
 * usage: notify_stress [--cycles N] [--seconds S] [--wait-ms MS] [--single | --doorbell]
 *   --single: wait on the wake word alone (FUTEX_WAIT, the path without futex_waitv)
 *   --doorbell: notify_kind doorbell over a FIFO standing in for the uio doorbell device
 *     (a temporary one, removed at exit): the client rings through cxl_doorbell_ring() (the
 *     library's N2 with notify_kind 2), the server sleeps in poll() on the FIFO after N1 and
 *     drains it after waking, as the driver does (driver/poll.c); every ring read must be
 *     the value (doorbell_peer << 16) | doorbell_vector of the header.
 * prints one line: cycles=.. requests=.. notified=.. sleeps=.. timeouts_with_work=.. seconds=..
 * exit 0 when every request was answered and no wait ended by its timeout with work waiting.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cxl_ring/barrier.h"
#include "cxl_ring/notify.h"

struct shared {
    struct cxl_shm_header hdr;          /* server_sleeping, notify_kind */
    struct cxl_shm_client_ctl cli;      /* req_wake, req_head */
    uint64_t answered;                  /* the server's "response": the last request seen */
    uint64_t stop;                      /* the client is done */
    uint64_t sleeps, woken, timeouts_with_work, notified, requests, bad_rings;
};

#define STRESS_PEER   7u
#define STRESS_VECTOR 0u

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

/* A random pause: nothing, a few pauses, a yield, or a short sleep. */
static void pause_some(void)
{
    uint32_t k = rnd(8);

    if (k < 3)
        return;
    if (k < 6) {
        for (uint32_t i = rnd(2000); i; i--)
            cxl_cpu_relax();
    } else if (k == 6) {
        sched_yield();
    } else {
        struct timespec ts = { 0, (long)rnd(30000) };
        nanosleep(&ts, NULL);
    }
}

static void server(struct shared *sh, uint64_t wait_ns, int single)
{
    uint32_t kick = 0;
    uint64_t seen = 0;

    rng ^= (uint64_t)getpid() << 17;
    while (!cxl_load_acquire64(&sh->stop)) {
        uint64_t head = cxl_load_acquire64(&sh->cli.req_head);    /* C1 */
        struct cxl_wait_word w[2];
        int rc;

        if (head != seen) {
            seen = head;
            cxl_store_release64(&sh->answered, seen);
            continue;
        }
        pause_some();
        w[0].word = &sh->cli.req_wake;
        w[0].expected = cxl_load_relaxed32(&sh->cli.req_wake);
        w[0].private_ = 0;
        w[1].word = &kick;
        w[1].expected = 0;
        w[1].private_ = 1;
        cxl_store_relaxed32(&sh->hdr.server_sleeping, 1);
        cxl_fence_seq_cst();                                       /* N1 */
        if (cxl_load_acquire64(&sh->cli.req_head) != seen || cxl_load_acquire64(&sh->stop)) {
            cxl_store_relaxed32(&sh->hdr.server_sleeping, 0);
            continue;
        }
        sh->sleeps++;
        rc = cxl_futex_waitv(w, single ? 1 : 2, wait_ns);
        cxl_store_relaxed32(&sh->hdr.server_sleeping, 0);
        if (rc == 0) {
            sh->woken++;
        } else if (rc == 1) {
            if (cxl_load_acquire64(&sh->cli.req_head) != seen && !cxl_load_acquire64(&sh->stop))
                sh->timeouts_with_work++;                          /* a lost wake-up */
        } else {
            perror("futex_waitv");
            exit(2);
        }
    }
}

/* The driver's doorbell sleep (driver/poll.c, sleep_on_doorbell) against a FIFO. */
static void doorbell_server(struct shared *sh, uint64_t wait_ns, int fd)
{
    uint64_t seen = 0;

    rng ^= (uint64_t)getpid() << 17;
    while (!cxl_load_acquire64(&sh->stop)) {
        uint64_t head = cxl_load_acquire64(&sh->cli.req_head);    /* C1 */
        struct pollfd p = { .fd = fd, .events = POLLIN };
        uint32_t v;
        int rc;

        if (head != seen) {
            seen = head;
            cxl_store_release64(&sh->answered, seen);
            continue;
        }
        pause_some();
        cxl_store_relaxed32(&sh->hdr.server_sleeping, 1);
        cxl_fence_seq_cst();                                       /* N1 */
        if (cxl_load_acquire64(&sh->cli.req_head) != seen || cxl_load_acquire64(&sh->stop)) {
            cxl_store_relaxed32(&sh->hdr.server_sleeping, 0);
            continue;
        }
        sh->sleeps++;
        rc = poll(&p, 1, (int)(wait_ns / 1000000ull));
        if (rc < 0 && errno != EINTR) {
            perror("poll");
            exit(2);
        }
        /* A ring is a hint, never a count: drain every one before the next look. */
        while (read(fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
            if (v != (STRESS_PEER << 16 | STRESS_VECTOR))
                sh->bad_rings++;
        cxl_store_relaxed32(&sh->hdr.server_sleeping, 0);
        if (rc > 0) {
            sh->woken++;
        } else if (rc == 0) {
            if (cxl_load_acquire64(&sh->cli.req_head) != seen && !cxl_load_acquire64(&sh->stop))
                sh->timeouts_with_work++;                          /* a lost wake-up */
        }
    }
}

int main(int argc, char **argv)
{
    uint64_t cycles = 100000, wait_ms = 5000, seconds = 120, i, t0;
    int single = 0, doorbell = 0, status, fd, failed = 0, bell_fd = -1;
    char bell_dir[] = "/tmp/notify-stress-XXXXXX", bell_path[64];
    struct cxl_doorbell db;
    struct shared *sh;
    pid_t pid;

    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--cycles") && a + 1 < argc)
            cycles = strtoull(argv[++a], NULL, 10);
        else if (!strcmp(argv[a], "--seconds") && a + 1 < argc)
            seconds = strtoull(argv[++a], NULL, 10);
        else if (!strcmp(argv[a], "--wait-ms") && a + 1 < argc)
            wait_ms = strtoull(argv[++a], NULL, 10);
        else if (!strcmp(argv[a], "--single"))
            single = 1;
        else if (!strcmp(argv[a], "--doorbell"))
            doorbell = 1;
        else {
            fprintf(stderr, "usage: %s [--cycles N] [--seconds S] [--wait-ms MS] "
                    "[--single | --doorbell]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!single && !doorbell && !cxl_futex_waitv_probe()) {
        printf("futex_waitv unavailable: running --single\n");
        single = 1;
    }
    fd = memfd_create("notify-stress", 0);
    if (fd < 0 || ftruncate(fd, sizeof(*sh)) < 0) {
        perror("memfd");
        return 2;
    }
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (sh == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    cxl_store_relaxed32(&sh->hdr.notify_kind, doorbell ? CXL_NOTIFY_DOORBELL : CXL_NOTIFY_FUTEX);
    if (doorbell) {
        if (!mkdtemp(bell_dir)) {
            perror("mkdtemp");
            return 2;
        }
        snprintf(bell_path, sizeof(bell_path), "%s/doorbell", bell_dir);
        /* The server's end, as the driver opens its doorbell: read-write (a FIFO then
         * always has a writer, and never says POLLHUP), non-blocking (drained to EAGAIN). */
        if (mkfifo(bell_path, 0600) < 0 ||
            (bell_fd = open(bell_path, O_RDWR | O_NONBLOCK | O_CLOEXEC)) < 0) {
            perror("doorbell FIFO");
            rmdir(bell_dir);
            return 2;
        }
        cxl_store_relaxed32(&sh->hdr.doorbell_peer, STRESS_PEER);
        cxl_store_relaxed32(&sh->hdr.doorbell_vector, STRESS_VECTOR);
    }
    cxl_doorbell_init(&db, doorbell ? bell_path : NULL);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        if (doorbell)
            doorbell_server(sh, wait_ms * 1000000ull, bell_fd);
        else
            server(sh, wait_ms * 1000000ull, single);
        _exit(0);
    }
    t0 = now_ns();
    for (i = 1; __atomic_load_n(&sh->woken, __ATOMIC_RELAXED) < cycles; i++) {
        uint64_t deadline;

        if (now_ns() - t0 > seconds * 1000000000ull)
            break;
        pause_some();
        cxl_store_release64(&sh->cli.req_head, i);                 /* P1 */
        sh->notified += (uint64_t)cxl_notify_server(&sh->hdr, &sh->cli, &db);   /* N2 */
        sh->requests++;
        deadline = now_ns() + (wait_ms + 5000) * 1000000ull;
        while (cxl_load_acquire64(&sh->answered) != i) {
            if (now_ns() > deadline) {
                fprintf(stderr, "request %" PRIu64 " never answered\n", i);
                failed = 1;
                goto out;
            }
            sched_yield();
        }
    }
out:
    cxl_store_release64(&sh->stop, 1);
    cxl_futex_wake(&sh->cli.req_wake, 1, 0);
    __atomic_fetch_add(&sh->cli.req_wake, 1, __ATOMIC_SEQ_CST);
    cxl_futex_wake(&sh->cli.req_wake, 1, 0);
    if (doorbell)
        cxl_doorbell_ring(&db, STRESS_PEER << 16 | STRESS_VECTOR);
    if (failed)
        kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    if (doorbell) {
        cxl_doorbell_close(&db);
        close(bell_fd);
        unlink(bell_path);
        rmdir(bell_dir);
    }
    printf("cycles=%" PRIu64 " requests=%" PRIu64 " notified=%" PRIu64 " sleeps=%" PRIu64
           " timeouts_with_work=%" PRIu64 " single=%d doorbell=%d missed=%" PRIu64
           " bad_rings=%" PRIu64 " seconds=%.1f\n", sh->woken, sh->requests, sh->notified,
           sh->sleeps, sh->timeouts_with_work, single, doorbell, db.missed, sh->bad_rings,
           (now_ns() - t0) / 1e9);
    return failed || sh->timeouts_with_work || sh->woken < cycles || db.missed ||
           sh->bad_rings ? 1 : 0;
}
