/*
 * client.c - the client side of a cxl_ring session (docs/ring-protocol.md
 * sections 3, 5, 7 and 8); see cxl_ring/client.h for the contract.
 *
 * Ordering pairs used here (names from the protocol page):
 *   P0 load_acquire(req_tail)     pairs with the server's C2 store of req_tail
 *   P1 store_release(req_head)    pairs with the server's C1 load of req_head
 *   C1 load_acquire(resp_head)    pairs with the server's P1 store of resp_head
 *   C2 store_release(resp_tail)   pairs with the server's P0 load of resp_tail
 *   S1 CAS(claim_token)           sequentially consistent, races other clients
 *   S3 load_acquire(ack_token)    pairs with the server's S2 store of ack_token
 *   Z1 load_acquire(req_tail)     pairs with the server's C2: the request bytes below it
 *                                 are copied by the server, so we zero them (scrub)
 *   F2 (in cxl_header_read)       pairs with the server's F1 store of magic
 *   L2 load_acquire(server_epoch) pairs with the server's L1 stores of epoch and state
 */
#define _GNU_SOURCE
#include "cxl_ring/client.h"
#include "cxl_ring/notify.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ERR(...) do { if (err && errlen) snprintf(err, errlen, __VA_ARGS__); } while (0)
#define SERR(s, ...) snprintf((s)->err, sizeof((s)->err), __VA_ARGS__)

static const char *const state_names[] = { "STOPPED", "STARTING", "RUNNING", "STOPPING" };

static const char *server_state_name(uint32_t st)
{
    return st < 4 ? state_names[st] : "invalid";
}

const char *cxl_client_strerror(int rc)
{
    switch (rc) {
    case CXL_OK:              return "ok";
    case CXL_E_AGAIN:         return "try again";
    case CXL_E_OPEN:          return "cannot open region";
    case CXL_E_NOT_FORMATTED: return "region not formatted";
    case CXL_E_LAYOUT:        return "layout mismatch";
    case CXL_E_NOT_RUNNING:   return "server not running";
    case CXL_E_SERVER_GONE:   return "server gone";
    case CXL_E_RESTARTED:     return "server restarted";
    case CXL_E_NO_CHANNEL:    return "no free channel";
    case CXL_E_TIMEOUT:       return "timeout";
    case CXL_E_LOST:          return "session lost";
    case CXL_E_QUARANTINED:   return "channel quarantined";
    case CXL_E_CORRUPT:       return "corrupt ring";
    case CXL_E_TOO_LARGE:     return "request too large";
    case CXL_E_NO_ACCESS:     return "no writable channel";
    default:                  return "unknown error";
    }
}

/* ---- Waiting ---------------------------------------------------------------- */

void cxl_backoff_init(struct cxl_backoff *b, uint64_t spin_ns, uint64_t max_sleep_ns)
{
    memset(b, 0, sizeof(*b));
    b->spin_ns = spin_ns;
    b->max_sleep_ns = max_sleep_ns ? max_sleep_ns : 1000;
}

void cxl_backoff_reset(struct cxl_backoff *b)
{
    b->start_ns = 0;
    b->sleep_ns = 0;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000ull),
                           .tv_nsec = (long)(ns % 1000000000ull) };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

void cxl_backoff_wait(struct cxl_backoff *b, uint64_t now)
{
    uint64_t elapsed;
    int i;

    if (!now)
        now = cxl_now_ns();
    if (!b->start_ns) {
        b->start_ns = now;
        b->sleep_ns = 0;
    }
    elapsed = now - b->start_ns;
    if (elapsed < b->spin_ns) {
        for (i = 0; i < 32; i++)
            cxl_cpu_relax();
        return;
    }
    if (elapsed < 2 * b->spin_ns) {
        sched_yield();
        return;
    }
    if (!b->sleep_ns) {
        b->waits++;
        b->sleep_ns = 1000;
    } else if (b->sleep_ns < b->max_sleep_ns) {
        b->sleep_ns *= 2;
        if (b->sleep_ns > b->max_sleep_ns)
            b->sleep_ns = b->max_sleep_ns;
    }
    sleep_ns(b->sleep_ns);
    b->slept_ns += cxl_now_ns() - now;
}

/* ---- Region ----------------------------------------------------------------- */

/*
 * A directory region (security secdsm): read the geometry from the header
 * segment alone, map the segments it places, then read the header again where
 * it now sits and check it is the same layout (a server may have reformatted
 * in between). Returns 0, CXL_E_NOT_FORMATTED (all zeros), CXL_E_LAYOUT or
 * CXL_E_OPEN, with why filled.
 */
static int open_dir(struct cxl_client *c, const char *dir, char *why, size_t whylen)
{
    struct cxl_geometry first;
    char path[256];
    struct stat st;
    void *hdr;
    int fd, rc;

    if ((size_t)snprintf(path, sizeof(path), "%s/header", dir) >= sizeof(path)) {
        snprintf(why, whylen, "region directory path is longer than %zu bytes",
                 sizeof(path) - 8);
        return CXL_E_OPEN;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "cannot open %s: %s; every peer needs the region's header "
                 "segment readable", path, strerror(errno));
        return CXL_E_OPEN;
    }
    if (fstat(fd, &st) < 0 || (S_ISREG(st.st_mode) && st.st_size < CXL_HEADER_SIZE)) {
        snprintf(why, whylen, "%s is smaller than the %u-byte header", path, CXL_HEADER_SIZE);
        close(fd);
        return CXL_E_OPEN;
    }
    hdr = mmap(NULL, CXL_HEADER_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (hdr == MAP_FAILED) {
        snprintf(why, whylen, "cannot map %s: %s", path, strerror(errno));
        return CXL_E_OPEN;
    }
    rc = cxl_header_read(hdr, 0, &first, why, whylen);
    munmap(hdr, CXL_HEADER_SIZE);
    if (rc)
        return rc == 1 ? CXL_E_NOT_FORMATTED : CXL_E_LAYOUT;
    if (cxl_region_map_dir(dir, &first, CXL_ROLE_CLIENT, 0, &c->region, why, whylen) < 0)
        return CXL_E_OPEN;
    rc = cxl_header_read(c->region.base, c->region.size, &c->geo, why, whylen);
    if (rc == 0 && !cxl_geometry_equal(&first, &c->geo)) {
        snprintf(why, whylen, "the header changed while the segments were mapped "
                 "(reformatted); open the region again");
        rc = -1;
    }
    if (rc)
        cxl_region_unmap(&c->region);
    return rc == 0 ? CXL_OK : rc == 1 ? CXL_E_NOT_FORMATTED : CXL_E_LAYOUT;
}

int cxl_client_open(struct cxl_client *c, const char *path, uint64_t map_size,
                    char *err, size_t errlen)
{
    char why[1024];
    uint32_t state;
    int rc;

    memset(c, 0, sizeof(*c));
    c->region.fd = -1;
    cxl_doorbell_init(&c->doorbell, NULL);
    if (cxl_region_is_dir(path)) {
        rc = open_dir(c, path, why, sizeof(why));
    } else if (cxl_region_map(path, map_size, 0, &c->region, why, sizeof(why)) < 0) {
        rc = CXL_E_OPEN;
    } else {
        rc = cxl_header_read(c->region.base, c->region.size, &c->geo, why, sizeof(why));
        rc = rc == 0 ? CXL_OK : rc == 1 ? CXL_E_NOT_FORMATTED : CXL_E_LAYOUT;
        if (rc)
            cxl_region_unmap(&c->region);
    }
    if (rc == CXL_E_OPEN)
        ERR("%s", why);
    else if (rc == CXL_E_NOT_FORMATTED)
        ERR("region %s is not formatted (all zeros): is a cxl_ring server running on it?",
            path);
    else if (rc == CXL_E_LAYOUT)
        ERR("%s: layout mismatch: %s", path, why);
    if (rc)
        return rc;
    c->khdr = (const struct cxl_shm_header *)c->region.base;
    /* The liveness line is read relaxed: it orders nothing, the values are checked. */
    state = cxl_load_relaxed32(&c->khdr->server_state);
    /* L2: pairs with L1; a client that sees the new epoch sees the old sessions retired. */
    c->epoch = cxl_load_acquire64(&c->khdr->server_epoch);
    if (state != CXL_SERVER_RUNNING || c->epoch == 0) {
        ERR("%s: the cxl_ring server is not running (server_state %s, pid %u)", path,
            server_state_name(state), cxl_load_relaxed32(&c->khdr->server_pid));
        cxl_region_unmap(&c->region);
        return CXL_E_NOT_RUNNING;
    }
    c->server_dead_ns = (uint64_t)c->geo.heartbeat_interval_ms * CXL_SERVER_DEAD_BEATS *
                        1000000ull;
    if (c->server_dead_ns < (uint64_t)CXL_SERVER_DEAD_MIN_MS * 1000000ull)
        c->server_dead_ns = (uint64_t)CXL_SERVER_DEAD_MIN_MS * 1000000ull;
    pthread_mutex_init(&c->lock, NULL);
    return CXL_OK;
}

int cxl_client_claimable(const struct cxl_client *c, uint32_t chan)
{
    if (!c->region.base || chan >= c->geo.channel_count)
        return 0;
    return (cxl_region_access(&c->region, cxl_client_section_off(&c->geo, chan),
                              c->geo.client_section_size) & CXL_ACCESS_WRITE) &&
           (cxl_region_access(&c->region, cxl_server_section_off(&c->geo, chan),
                              c->geo.server_section_size) & CXL_ACCESS_READ);
}

uint32_t cxl_client_channels(const struct cxl_client *c, uint32_t *chans, uint32_t cap)
{
    uint32_t chan, n = 0;

    for (chan = 0; chan < c->geo.channel_count; chan++) {
        if (!cxl_client_claimable(c, chan))
            continue;
        if (chans && n < cap)
            chans[n] = chan;
        n++;
    }
    return n;
}

int cxl_client_liveness(const struct cxl_client *c, uint64_t epoch)
{
    uint32_t state = cxl_load_relaxed32(&c->khdr->server_state);
    uint64_t now_epoch = cxl_load_relaxed64(&c->khdr->server_epoch);

    if (now_epoch != epoch && now_epoch != 0)
        return CXL_E_RESTARTED;
    if (state != CXL_SERVER_RUNNING || now_epoch == 0)
        return CXL_E_NOT_RUNNING;
    if (__atomic_load_n(&c->server_gone, __ATOMIC_RELAXED))
        return CXL_E_SERVER_GONE;
    return CXL_OK;
}

/*
 * Heartbeat thread: bump every claimed session's client_heartbeat often
 * enough for the lease, and decide "server gone" when server_heartbeat has
 * not moved for server_dead_ns. Heartbeat stores are relaxed: the counter's
 * value orders nothing, only its change is observed.
 */
static void *heartbeat_main(void *arg)
{
    struct cxl_client *c = arg;
    uint64_t period_ns = (uint64_t)c->geo.client_lease_ms * 1000000ull / 8;
    uint64_t last_beat = cxl_load_relaxed64(&c->khdr->server_heartbeat);
    uint64_t last_change = cxl_now_ns();
    uint32_t i;

    if (period_ns > 100000000ull)
        period_ns = 100000000ull;       /* also the resolution of the server check */
    while (!__atomic_load_n(&c->hb_stop, __ATOMIC_ACQUIRE)) {
        uint64_t now = cxl_now_ns(), beat;

        pthread_mutex_lock(&c->lock);
        for (i = 0; i < c->nsessions; i++) {
            struct cxl_session *s = c->sessions[i];
            cxl_store_relaxed64(&s->kcli->client_heartbeat, ++s->heartbeat);
        }
        pthread_mutex_unlock(&c->lock);

        beat = cxl_load_relaxed64(&c->khdr->server_heartbeat);
        if (beat != last_beat) {
            last_beat = beat;
            last_change = now;
        } else if (now - last_change > c->server_dead_ns) {
            __atomic_store_n(&c->server_gone, 1, __ATOMIC_RELAXED);
        }
        sleep_ns(period_ns);
    }
    return NULL;
}

int cxl_client_start_heartbeat(struct cxl_client *c, char *err, size_t errlen)
{
    int rc;

    if (c->hb_running)
        return CXL_OK;
    c->hb_stop = 0;
    rc = pthread_create(&c->hb_thread, NULL, heartbeat_main, c);
    if (rc) {
        ERR("cannot start the heartbeat thread: %s", strerror(rc));
        return CXL_E_OPEN;
    }
    c->hb_running = 1;
    return CXL_OK;
}

void cxl_client_set_doorbell(struct cxl_client *c, const char *path)
{
    cxl_doorbell_close(&c->doorbell);
    cxl_doorbell_init(&c->doorbell, path);
}

void cxl_client_close(struct cxl_client *c)
{
    if (c->hb_running) {
        __atomic_store_n(&c->hb_stop, 1, __ATOMIC_RELEASE);
        pthread_join(c->hb_thread, NULL);
        c->hb_running = 0;
    }
    if (c->region.base) {
        pthread_mutex_destroy(&c->lock);
        cxl_region_unmap(&c->region);
    }
    cxl_doorbell_close(&c->doorbell);
}

static void register_session(struct cxl_client *c, struct cxl_session *s)
{
    pthread_mutex_lock(&c->lock);
    c->sessions[c->nsessions++] = s;
    pthread_mutex_unlock(&c->lock);
}

static void unregister_session(struct cxl_client *c, struct cxl_session *s)
{
    uint32_t i;

    pthread_mutex_lock(&c->lock);
    for (i = 0; i < c->nsessions; i++) {
        if (c->sessions[i] == s) {
            c->sessions[i] = c->sessions[--c->nsessions];
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
}

/* ---- Sessions --------------------------------------------------------------- */

static void session_bind(struct cxl_client *c, struct cxl_session *s, uint32_t chan)
{
    s->client = c;
    s->chan = chan;
    s->kcli = cxl_client_ctl(c->region.base, &c->geo, chan);
    /* Section 8: the group's wake word is in the client section of its first channel. */
    s->kwake = cxl_client_ctl(c->region.base, &c->geo,
                              c->geo.seg[cxl_client_segment(c->geo.chan_group[chan])].first_channel);
    s->ksrv = cxl_server_ctl(c->region.base, &c->geo, chan);
    cxl_ring_request(c->region.base, &c->geo, chan, &s->req);
    cxl_ring_response(c->region.base, &c->geo, chan, &s->resp);
}

/* Wait for ack_token == token (S3), bounded; also notices a dead server. */
static int wait_ack(struct cxl_session *s, uint32_t timeout_ms)
{
    struct cxl_client *c = s->client;
    uint64_t deadline = cxl_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    struct cxl_backoff b;
    int rc;

    cxl_backoff_init(&b, 20000, 1000000);
    for (;;) {
        uint64_t now;

        /* S3: pairs with the server's S2; its channel reset is visible after this. */
        if (cxl_load_acquire64(&s->ksrv->ack_token) == s->token)
            return CXL_OK;
        rc = cxl_client_liveness(c, s->epoch);
        if (rc) {
            SERR(s, "server %s while waiting for the ack of channel %u",
                 rc == CXL_E_RESTARTED ? "restarted" : "stopped or died", s->chan);
            return rc;
        }
        now = cxl_now_ns();
        if (now > deadline) {
            SERR(s, "the server did not acknowledge the claim of channel %u within %u ms "
                 "(server_state %s, pid %u); is the cxl_ring server alive?", s->chan,
                 timeout_ms,
                 server_state_name(cxl_load_relaxed32(&c->khdr->server_state)),
                 cxl_load_relaxed32(&c->khdr->server_pid));
            return CXL_E_TIMEOUT;
        }
        cxl_backoff_wait(&b, now);
    }
}

int cxl_session_claim(struct cxl_client *c, struct cxl_session *s, uint32_t first,
                      uint32_t timeout_ms)
{
    uint32_t n = c->geo.channel_count, i;
    int rc;

    memset(s, 0, sizeof(*s));
    s->client = c;
    s->epoch = c->epoch;
    rc = cxl_client_liveness(c, s->epoch);
    if (rc == CXL_E_RESTARTED) {
        /* A new server on the same region: claim under the new epoch. */
        s->epoch = cxl_load_acquire64(&c->khdr->server_epoch);
        c->epoch = s->epoch;
        rc = cxl_client_liveness(c, s->epoch);
    }
    if (rc) {
        SERR(s, "%s", cxl_client_strerror(rc));
        return rc;
    }
    s->buf_size = c->geo.max_msg_size;
    s->buf = malloc(s->buf_size);
    if (!s->buf) {
        SERR(s, "out of memory for a %u-byte response buffer", s->buf_size);
        return CXL_E_OPEN;
    }
    s->token = cxl_random_u64();

    if (!cxl_client_channels(c, NULL, 0)) {
        SERR(s, "no channel of this region can be claimed here: no client segment is "
             "mapped writable with its server segment readable (grant this peer its "
             "group's client-<g> read-write and server-<g> read-only)");
        free(s->buf);
        s->buf = NULL;
        return CXL_E_NO_ACCESS;
    }
    for (i = 0; i < n; i++) {
        uint32_t chan = (first + i) % n;
        struct cxl_shm_client_ctl *kcli;
        const struct cxl_shm_server_ctl *ksrv;
        uint64_t seen, dead;

        if (!cxl_client_claimable(c, chan))
            continue;                   /* a segment this peer may not write (or read) */
        kcli = cxl_client_ctl(c->region.base, &c->geo, chan);
        ksrv = cxl_server_ctl(c->region.base, &c->geo, chan);
        seen = cxl_load_acquire64(&kcli->claim_token);
        dead = cxl_load_acquire64(&ksrv->dead_token);
        if (seen != 0 && seen != dead)
            continue;                   /* held by a live session */
        if (!cxl_cas64(&kcli->claim_token, seen, s->token))  /* S1 */
            continue;                   /* another client won the race */
        session_bind(c, s, chan);
        cxl_store_relaxed32(&s->kcli->client_pid, (uint32_t)getpid());
        /* Not the last owner's doorbell: this library never blocks for responses (N3). */
        cxl_store_relaxed64(&s->kcli->resp_doorbell, 0);
        s->heartbeat = cxl_load_relaxed64(&s->kcli->client_heartbeat) + 1;
        cxl_store_relaxed64(&s->kcli->client_heartbeat, s->heartbeat);
        register_session(c, s);
        /* A sleeping server learns of the claim now, not at its next housekeeping. */
        cxl_notify_server(c->khdr, s->kwake, &c->doorbell);

        rc = wait_ack(s, timeout_ms);
        if (rc) {
            unregister_session(c, s);
            cxl_store_release64(&s->kcli->claim_token, 0);
            free(s->buf);
            s->buf = NULL;
            return rc;
        }
        /*
         * After S3 the server has reset both rings from our indexes. The
         * indexes we own were left by the previous session; read them once.
         */
        s->req_head = cxl_load_relaxed64(&s->kcli->req_head);
        s->req_scrubbed = s->req_head;
        s->resp_tail = cxl_load_relaxed64(&s->kcli->resp_tail);
        /* Written before S2 with the indexes: the generation our ids must carry. */
        s->gen = cxl_load_relaxed32(&s->ksrv->session_gen);
        /* Written by the server before the epoch we saw (L1): this run's delay (2.4). */
        s->delay_ns = cxl_header_access_delay(c->khdr);
        s->resp_tail_published = s->resp_tail;
        s->req_tail_seen = cxl_load_acquire64(s->req.shm_tail);
        s->resp_head_seen = cxl_load_acquire64(s->resp.shm_head);
        if (s->req_tail_seen != s->req_head || s->resp_head_seen != s->resp_tail) {
            SERR(s, "channel %u was not reset by the server's accept (req_head %" PRIu64
                 " req_tail %" PRIu64 ", resp_head %" PRIu64 " resp_tail %" PRIu64 ")",
                 chan, s->req_head, s->req_tail_seen, s->resp_head_seen, s->resp_tail);
            unregister_session(c, s);
            cxl_store_release64(&s->kcli->claim_token, 0);
            free(s->buf);
            s->buf = NULL;
            return CXL_E_CORRUPT;
        }
        return CXL_OK;
    }
    SERR(s, "all %u channels are held by other sessions", n);
    free(s->buf);
    s->buf = NULL;
    return CXL_E_NO_CHANNEL;
}

/*
 * Zero the request bytes the server has released (section 3.1): the next
 * owner of this channel finds no request of ours. Z1 pairs with the server's
 * C2, which it stores before the response to any request below it (so after
 * the last response, everything we sent is zeroed). A req_tail outside
 * [req_scrubbed, req_head] is left for cxl_session_push to report.
 */
static void scrub_requests(struct cxl_session *s)
{
    uint64_t tail;

    /* A retired session's old positions may be the next owner's: touch nothing. Relaxed:
     * only a guard, the edge that orders the zeroing is Z1. */
    if (cxl_load_relaxed64(&s->ksrv->ack_token) != s->token)
        return;
    /* Every request answered: req_tail == req_head, since the server stores req_tail
     * before any response (C2 before P1). Otherwise Z1 tells how far it has copied. */
    tail = s->inflight ? cxl_load_acquire64(s->req.shm_tail) : s->req_head;   /* Z1 */
    if (tail == s->req_scrubbed || tail - s->req_scrubbed > s->req_head - s->req_scrubbed)
        return;
    cxl_ring_scrub(&s->req, s->req_scrubbed, tail - s->req_scrubbed);
    s->req_scrubbed = tail;
}

void cxl_session_release(struct cxl_session *s)
{
    if (!s->kcli)
        return;
    scrub_requests(s);
    unregister_session(s->client, s);
    /* Release: the server sees claim_token == 0 != ack_token and frees the channel. Only
     * our own claim: a retired session's channel may be the next owner's by now. */
    if (cxl_load_relaxed64(&s->kcli->claim_token) == s->token)
        cxl_store_release64(&s->kcli->claim_token, 0);
    s->kcli = NULL;
    free(s->buf);
    s->buf = NULL;
}

int cxl_session_check(struct cxl_session *s)
{
    uint64_t ack;
    uint32_t state;
    int rc = cxl_client_liveness(s->client, s->epoch);

    if (rc) {
        if (rc == CXL_E_RESTARTED)
            SERR(s, "the server restarted (new server_epoch)");
        else if (rc == CXL_E_SERVER_GONE)
            SERR(s, "the server heartbeat stood still for %" PRIu64 " ms",
                 (uint64_t)(s->client->server_dead_ns / 1000000u));
        else
            SERR(s, "the server stopped (server_state %s)",
                 server_state_name(cxl_load_relaxed32(&s->client->khdr->server_state)));
        return rc;
    }
    ack = cxl_load_acquire64(&s->ksrv->ack_token);
    state = cxl_load_relaxed32(&s->ksrv->chan_state);
    if (state == CXL_CHAN_QUARANTINED && ack == s->token) {
        SERR(s, "the server quarantined channel %u (last_error %u)", s->chan,
             cxl_load_relaxed32(&s->ksrv->last_error));
        return CXL_E_QUARANTINED;
    }
    if (ack != s->token) {
        SERR(s, "the server retired our session on channel %u (lease expired or reset)",
             s->chan);
        return CXL_E_LOST;
    }
    return CXL_OK;
}

/* ---- Data path ------------------------------------------------------------ */

int cxl_session_push(struct cxl_session *s, const void *msg, uint32_t len)
{
    uint64_t need = cxl_align8(len);
    uint64_t size = s->req.size;

    if (len < CXL_MSG_HDR_SIZE || len > s->client->geo.max_msg_size) {
        SERR(s, "a request of %u bytes is outside 16..%u", len, s->client->geo.max_msg_size);
        return CXL_E_TOO_LARGE;
    }
    if (size - (s->req_head - s->req_tail_seen) < need) {
        uint64_t tail = cxl_load_acquire64(s->req.shm_tail);   /* P0 */

        /* The server's tail may only move forward, and never past our head. */
        if (tail - s->req_tail_seen > s->req_head - s->req_tail_seen) {
            SERR(s, "request ring of channel %u: server req_tail %" PRIu64
                 " is outside [%" PRIu64 ", %" PRIu64 "]", s->chan, tail,
                 s->req_tail_seen, s->req_head);
            return CXL_E_CORRUPT;
        }
        s->req_tail_seen = tail;
        if (size - (s->req_head - tail) < need)
            return CXL_E_AGAIN;
    }
    cxl_ring_copy_in(&s->req, s->req_head, msg, len);
    cxl_ring_zero(&s->req, s->req_head + len, need - len);
    s->req_head += need;
    s->inflight++;
    return CXL_OK;
}

void cxl_session_flush(struct cxl_session *s)
{
    /* P1: the request bytes above are visible before the new head. */
    cxl_store_release64(&s->kcli->req_head, s->req_head);
    /* N2 (inside) pairs with the server's N1: wake it if it sleeps. */
    cxl_notify_server(s->client->khdr, s->kwake, &s->client->doorbell);
}

/*
 * A response that makes no sense may be one the server scrubbed because it
 * retired the session meanwhile (lease expired, CXLRING.RESET: section 3.1).
 * Then the verdict is a lost session, not a corrupt ring. The server stores
 * ack_token before it scrubs; on x86-64 (TSO) a reader that saw the zeros
 * sees the new ack_token too.
 */
static int retired(struct cxl_session *s)
{
    if (cxl_load_acquire64(&s->ksrv->ack_token) == s->token)
        return 0;
    SERR(s, "the server retired our session on channel %u (lease expired or reset) "
         "with responses unread", s->chan);
    return 1;
}

int cxl_session_pop(struct cxl_session *s, struct cxl_resp *r)
{
    struct cxl_msg_hdr hdr;
    uint64_t used, size = s->resp.size;
    uint32_t plen;

    if (s->resp_tail == s->resp_head_seen) {
        uint64_t head = cxl_load_acquire64(s->resp.shm_head);  /* C1 */

        if (head == s->resp_head_seen)
            return CXL_E_AGAIN;
        /* A new batch of responses: reading it from far memory costs the delay (2.4). */
        cxl_access_delay(s->delay_ns);
        /* The head may only move forward, by at most the ring size past our tail. */
        if (head - s->resp_tail > size) {
            SERR(s, "response ring of channel %u: resp_head %" PRIu64 " - resp_tail %" PRIu64
                 " exceeds the ring size %" PRIu64, s->chan, head, s->resp_tail, size);
            return CXL_E_CORRUPT;
        }
        s->resp_head_seen = head;
    }
    used = s->resp_head_seen - s->resp_tail;
    if (used < CXL_MSG_HDR_SIZE) {
        SERR(s, "response ring of channel %u: only %" PRIu64 " bytes published", s->chan,
             used);
        return CXL_E_CORRUPT;
    }
    cxl_ring_copy_out(&s->resp, s->resp_tail, &hdr, sizeof(hdr));   /* header once */
    if (hdr.len < CXL_MSG_HDR_SIZE || hdr.len > s->client->geo.max_msg_size ||
        cxl_align8(hdr.len) > used) {
        if (retired(s))
            return CXL_E_LOST;
        SERR(s, "response ring of channel %u: message length %u (published %" PRIu64
             ", limit %u)", s->chan, hdr.len, used, s->client->geo.max_msg_size);
        return CXL_E_CORRUPT;
    }
    if (hdr.op > CXL_ST_PROTOCOL_ERROR &&
        !(hdr.op == CXL_ST_PUSH && hdr.id == 0 && s->subscribed)) {
        if (retired(s))
            return CXL_E_LOST;
        if (hdr.op == CXL_ST_PUSH)
            SERR(s, "response ring of channel %u: a push (id %#" PRIx64 ") on a session "
                 "that did not subscribe, or with an id", s->chan, (uint64_t)hdr.id);
        else
            SERR(s, "response ring of channel %u: unknown status %u", s->chan, hdr.op);
        return CXL_E_CORRUPT;
    }
    plen = hdr.len - CXL_MSG_HDR_SIZE;
    if (plen)
        cxl_ring_copy_out(&s->resp, s->resp_tail + CXL_MSG_HDR_SIZE, s->buf, plen);
    s->resp_tail += cxl_align8(hdr.len);
    if (s->inflight && hdr.op != CXL_ST_PROTOCOL_ERROR && hdr.op != CXL_ST_PUSH)
        /* a quarantine answers nothing, nor does a push */
        s->inflight--;
    r->id = hdr.id;
    r->status = hdr.op;
    r->payload_len = plen;
    r->payload = s->buf;
    return CXL_OK;
}

void cxl_session_pop_done(struct cxl_session *s)
{
    if (s->resp_tail != s->resp_tail_published) {
        /* C2: we finished copying the responses before handing their bytes back. */
        cxl_store_release64(&s->kcli->resp_tail, s->resp_tail);
        s->resp_tail_published = s->resp_tail;
        scrub_requests(s);
    }
}
