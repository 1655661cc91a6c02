/*
 * cxl_gateway.c - cxl-gateway, a native RESP gateway to the cxl_ring driver: unmodified
 * Redis clients (redis-cli, redis-benchmark, redis-py, applications) connect over TCP, and
 * their commands travel over the ring (docs/ring-protocol.md) to the Redis server.
 *
 *     cxl-gateway --path REGION --listen HOST:PORT [--channels N] [--timeout-ms N]
 *                 [--max-clients N] [--quiet]
 *
 * One thread, epoll, non-blocking sockets. Connections are spread over up to N shared ring
 * sessions (one claimed channel each); a connection is pinned to one session, whose
 * responses come back in request order, so each connection's pipeline is answered in
 * order. Each loop turn parses every command read, frames it into its session's outbox,
 * pushes each outbox into its request ring and flushes each session once, then pops every
 * response there is. While requests are in flight the loop polls the response rings
 * (spins briefly, then short sleeps in epoll_pwait2); with nothing in flight it blocks in
 * epoll.
 *
 * GET, SET (EX/PX as the ring's TTL), DEL and PING are native ring ops; every other command
 * is a CMD, whose reply is RESP2 already. QUIT, SELECT 0, HELLO 2/3 and CLIENT
 * SETNAME/GETNAME/SETINFO are answered here (the name is the connection's). AUTH (and HELLO ...
 * AUTH) gives the connection a session of its own (docs/ring-protocol.md section 12): a
 * free channel is claimed for it and CMD AUTH sent there; on +OK the connection keeps that
 * session (and its user) until it closes. MULTI and kin, the blocking commands and SUBSCRIBE
 * and kin do the same; a subscribed session's pushes (docs/ring-protocol.md section 15) go to
 * its connection as they come. See gateway/README.md.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cxl_ring/client.h"
#include "resp.h"

#define GW_VERSION          "1.0"
#define OUT_HIGH            (64u << 20)     /* output queued before a connection is not read */
#define OUTBOX_HIGH         (16u << 20)     /* a session's unsent requests, likewise */
#define READ_CHUNK          (64u * 1024u)
#define READ_PER_TURN       (1u << 20)      /* bytes read from one connection per loop turn */
#define MAX_SHARED_DEFAULT  8u
#define SEQ_RENEW           0xF0000000u     /* claim again before the id's low half wraps */
#define CHECK_PERIOD_NS     20000000ull     /* liveness checks while waiting for responses */
#define SPIN_NS             20000ull        /* poll without sleeping this long after work */
#define SLEEP_MIN_NS        5000ull
#define SLEEP_MAX_NS        200000ull
#define REOPEN_PERIOD_NS    50000000ull     /* at most one region reopen per 50 ms */

/* What a reply needs beyond the ring's status (struct pend.kind). */
#define KIND_ADOPT          1u      /* the AUTH of a connection's new own session */
#define KIND_HELLO2         2u      /* HELLO 2 AUTH: +OK becomes the HELLO reply */
#define KIND_HELLO3         4u
#define KIND_BLOCKING       8u      /* BLPOP and kin: answered when a value comes or at the
                                     * command's own timeout, so --timeout-ms does not apply */
#define KIND_PUBSUB         16u     /* SUBSCRIBE and kin: the reply is several confirmations */
#define SUB_POLL_NS         1000000ull  /* a subscribed session with nothing in flight: looked
                                         * at for pushes every 1 ms */

static const char HELLO2[] =
    "*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n"
    "$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:1\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n"
    "$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";
/* RESP3 map for HELLO 3; later replies keep their RESP2 shape, as the proxy's do. */
static const char HELLO3[] =
    "%7\r\n+server\r\n+redis\r\n+version\r\n+7.0.0\r\n+proto\r\n:3\r\n+id\r\n:1\r\n"
    "+mode\r\n+standalone\r\n+role\r\n+master\r\n+modules\r\n*0\r\n";

/* ---- Small containers -------------------------------------------------------------- */

/* Bytes p[off, len) of a growable buffer. */
struct buf {
    uint8_t *p;
    size_t off, len, cap;
};

static void die_oom(void)
{
    fprintf(stderr, "cxl-gateway: out of memory\n");
    exit(3);
}

static size_t buf_used(const struct buf *b) { return b->len - b->off; }

static uint8_t *buf_reserve(struct buf *b, size_t n)
{
    if (b->off && b->off == b->len)
        b->off = b->len = 0;
    if (b->cap - b->len < n && b->off) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 4096;

        while (cap - b->len < n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p)
            die_oom();
        b->cap = cap;
    }
    return b->p + b->len;
}

static void buf_append(struct buf *b, const void *data, size_t n)
{
    if (!n)
        return;
    memcpy(buf_reserve(b, n), data, n);
    b->len += n;
}

static void buf_consume(struct buf *b, size_t n)
{
    b->off += n;
    if (b->off == b->len)
        b->off = b->len = 0;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* A buffer that held a large burst gives its memory back once empty. */
static void buf_trim(struct buf *b)
{
    if (b->cap > (1u << 20) && buf_used(b) == 0)
        buf_free(b);
}

struct conn;
struct gsess;

/* A request framed for a session: who is owed its reply (ring order). */
struct pend {
    struct conn *c;
    uint32_t seq;
    uint8_t op;
    uint8_t kind;
};

struct fifo {
    struct pend *e;
    size_t head, n, cap;
};

static void fifo_push(struct fifo *f, struct pend p)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 256, i;
        struct pend *e = malloc(cap * sizeof(*e));

        if (!e)
            die_oom();
        for (i = 0; i < f->n; i++)
            e[i] = f->e[(f->head + i) % f->cap];
        free(f->e);
        f->e = e;
        f->cap = cap;
        f->head = 0;
    }
    f->e[(f->head + f->n) % f->cap] = p;
    f->n++;
}

static struct pend *fifo_front(struct fifo *f) { return &f->e[f->head]; }

static void fifo_pop(struct fifo *f)
{
    f->head = (f->head + 1) % f->cap;
    f->n--;
}

/* A vector of connection pointers (work lists). */
struct cvec {
    struct conn **v;
    size_t n, cap;
};

static void cvec_push(struct cvec *cv, struct conn *c)
{
    if (cv->n == cv->cap) {
        cv->cap = cv->cap ? cv->cap * 2 : 64;
        cv->v = realloc(cv->v, cv->cap * sizeof(*cv->v));
        if (!cv->v)
            die_oom();
    }
    cv->v[cv->n++] = c;
}

/* ---- State ----------------------------------------------------------------------- */

/* A connection's replies, in command order: runs of replies owed by the ring, and replies
 * made here that wait behind them. A ring reply always answers the first run: the
 * connection's ring requests are all on one session, whose responses come in order. */
struct qnode {
    struct qnode *next;
    uint64_t npending;          /* > 0: this many ring replies; 0: the local bytes below */
    struct buf data;
};

enum { BLOCK_NONE = 0, BLOCK_DRAIN, BLOCK_AUTH };

#define CONN_NAME_MAX 128       /* bytes of a connection's name, as the driver's sessions */

struct conn {
    int fd;
    uint64_t id;
    struct buf in, out;
    struct qnode *qhead, *qtail;
    uint32_t slot;              /* its shared session */
    struct gsess *own;          /* its own session, after AUTH; NULL: the shared one */
    uint64_t inflight;          /* ring replies owed to it, in any session */
    uint32_t events;            /* registered with epoll */
    int closing;                /* QUIT or a protocol error: no more commands; close once answered */
    int dead;                   /* socket closed; freed when nothing refers to it */
    int blocked;                /* BLOCK_*: input waits for an AUTH to settle */
    int paused;                 /* too much output or outbox: not read for now */
    int lost_auth;              /* its own session was lost: the next command closes it */
    int in_multi;               /* MULTI sent, EXEC/DISCARD not yet: every command as CMD */
    int resp3;                  /* HELLO 3: pub/sub messages and confirmations go as pushes */
    int in_resume, in_dirty, in_dead;
    uint32_t name_len;          /* CLIENT SETNAME: the connection's name, kept here */
    char name[CONN_NAME_MAX];
};

struct gsess {
    struct cxl_session s;       /* registered with the client: never moves */
    int claimed;
    int own;                    /* a connection's own session (AUTH) */
    int defunct;                /* own session released: freed at the end of the turn */
    int release_when_idle;      /* a failed AUTH adoption: release once answered */
    int subscribed;             /* its connection sent SUBSCRIBE or kin: pushes may come */
    struct conn *owner;
    uint32_t index;             /* shared slot */
    uint32_t next_seq;
    struct fifo pend;           /* [0, npushed) in the ring, the rest in outbox */
    size_t npushed;
    struct buf outbox;          /* encoded requests (each padded to 8 bytes), not pushed */
    int dirty;                  /* pushed since the last flush */
    uint64_t last_progress_ns, last_check_ns, checked_turn;
};

static struct {
    const char *path;
    const char *listen;
    uint32_t channels;          /* 0: every claimable channel, capped at 8 */
    uint32_t timeout_ms;
    uint32_t max_clients;
    int quiet;

    struct cxl_client client;
    int client_open;
    int client_stale;           /* a server-level failure: reopen before the next claim */
    uint64_t reopen_at_ns;
    char client_err[512];
    uint32_t claimable[CXL_MAX_CHANNELS];
    uint32_t nclaimable;

    struct gsess shared[CXL_MAX_CHANNELS];
    uint32_t nshared;
    struct gsess *owns[CXL_MAX_CHANNELS];
    uint32_t nowns;

    int ep, lfd, sfd;
    uint64_t nconns;            /* live (not dead) connections */
    uint64_t next_conn_id;
    uint64_t turn;
    struct cvec dirty, resume, paused, dead;
    int stop;
    int serving;                /* past start-up */

    struct resp_limits lim;
    const uint8_t **argv;
    uint32_t *argl;
    uint64_t stats_commands, stats_failures;
} G;

static uint64_t now_ns(void) { return cxl_now_ns(); }

static void logmsg(const char *fmt, ...)
{
    va_list ap;

    if (G.quiet)
        return;
    va_start(ap, fmt);
    fputs("cxl-gateway: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- Replies ---------------------------------------------------------------------- */

static void mark_dirty(struct conn *c)
{
    if (!c->in_dirty && !c->dead) {
        c->in_dirty = 1;
        cvec_push(&G.dirty, c);
    }
}

static void mark_resume(struct conn *c)
{
    if (!c->in_resume && !c->dead) {
        c->in_resume = 1;
        cvec_push(&G.resume, c);
    }
}

static struct qnode *qnode_new(struct conn *c)
{
    struct qnode *q = calloc(1, sizeof(*q));

    if (!q)
        die_oom();
    if (c->qtail)
        c->qtail->next = q;
    else
        c->qhead = q;
    c->qtail = q;
    return q;
}

/* A reply made here: sent now, or queued behind the ring replies owed before it. */
static void reply_local(struct conn *c, const void *data, size_t n);
static void reply_error(struct conn *c, const char *fmt, ...);

/*
 * CLIENT SETNAME and HELLO SETNAME: the name is the connection's, kept here whichever session
 * carries it (a shared session is many connections), and CLIENT GETNAME answers it. Redis's
 * rule: no spaces, newlines or special characters; at most CONN_NAME_MAX - 1 bytes, as the
 * driver's sessions. 1, or 0 with the error replied.
 */
static int set_name(struct conn *c, const uint8_t *name, uint32_t n)
{
    uint32_t i;

    for (i = 0; i < n; i++)
        if (name[i] < '!' || name[i] > '~') {
            reply_error(c, "ERR Client names cannot contain spaces, newlines or special "
                        "characters.");
            return 0;
        }
    if (n >= CONN_NAME_MAX) {
        reply_error(c, "ERR cxl_ring: client names are at most %d bytes", CONN_NAME_MAX - 1);
        return 0;
    }
    memcpy(c->name, name, n);
    c->name_len = n;
    return 1;
}

/* A reply made here: sent now, or queued behind the ring replies owed before it. */
static void reply_local(struct conn *c, const void *data, size_t n)
{
    struct qnode *q = c->qtail;

    if (c->dead)
        return;
    if (!q) {
        buf_append(&c->out, data, n);
        mark_dirty(c);
        return;
    }
    if (q->npending)
        q = qnode_new(c);
    buf_append(&q->data, data, n);
}

static void reply_error(struct conn *c, const char *fmt, ...)
{
    char text[600];
    size_t n, i;
    va_list ap;

    text[0] = '-';
    va_start(ap, fmt);
    n = (size_t)vsnprintf(text + 1, sizeof(text) - 3, fmt, ap);
    va_end(ap);
    if (n > sizeof(text) - 4)
        n = sizeof(text) - 4;
    for (i = 1; i <= n; i++)
        if (text[i] == '\r' || text[i] == '\n')
            text[i] = ' ';
    memcpy(text + 1 + n, "\r\n", 2);
    reply_local(c, text, n + 3);
}

/* A ring request's reply slot, at the end of the connection's order. */
static void expect_ring_reply(struct conn *c)
{
    struct qnode *q = c->qtail;

    if (!q || !q->npending)
        q = qnode_new(c);
    q->npending++;
    c->inflight++;
}

/* Conn-side end of a ring reply: data answers the first owed ring reply. */
static void conn_free_later(struct conn *c);

static void reply_ring(struct conn *c, const void *data, size_t n)
{
    struct qnode *q = c->qhead;

    c->inflight--;
    if (c->dead) {
        if (!c->inflight)
            conn_free_later(c);
        return;
    }
    if (!q || !q->npending) {           /* cannot happen: a ring reply is always owed first */
        fprintf(stderr, "cxl-gateway: internal error: ring reply with none owed\n");
        abort();
    }
    buf_append(&c->out, data, n);
    if (--q->npending == 0) {
        c->qhead = q->next;
        free(q);
        while (c->qhead && !c->qhead->npending) {
            q = c->qhead;
            buf_append(&c->out, q->data.p + q->data.off, buf_used(&q->data));
            c->qhead = q->next;
            buf_free(&q->data);
            free(q);
        }
        if (!c->qhead)
            c->qtail = NULL;
    }
    mark_dirty(c);
    if (!c->inflight && c->blocked == BLOCK_DRAIN) {
        c->blocked = BLOCK_NONE;
        mark_resume(c);
    }
}

static void reply_ring_error(struct conn *c, const char *fmt, ...)
{
    char text[600];
    size_t n, i;
    va_list ap;

    text[0] = '-';
    va_start(ap, fmt);
    n = (size_t)vsnprintf(text + 1, sizeof(text) - 3, fmt, ap);
    va_end(ap);
    if (n > sizeof(text) - 4)
        n = sizeof(text) - 4;
    for (i = 1; i <= n; i++)
        if (text[i] == '\r' || text[i] == '\n')
            text[i] = ' ';
    memcpy(text + 1 + n, "\r\n", 2);
    reply_ring(c, text, n + 3);
}

/* ---- Connections ------------------------------------------------------------------ */

static void session_release_own(struct gsess *gs);

static void conn_update_events(struct conn *c)
{
    uint32_t want = 0;
    struct epoll_event ev;

    if (c->dead)
        return;
    if (!c->closing && !c->blocked && !c->paused)
        want |= EPOLLIN;
    if (buf_used(&c->out))
        want |= EPOLLOUT;
    if (want == c->events)
        return;
    ev.events = want;
    ev.data.ptr = c;
    if (epoll_ctl(G.ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->events = want;
}

static void conn_free_later(struct conn *c)
{
    if (!c->in_dead) {
        c->in_dead = 1;
        cvec_push(&G.dead, c);
    }
}

static void conn_close(struct conn *c)
{
    size_t i;

    if (c->dead)
        return;
    epoll_ctl(G.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->dead = 1;
    G.nconns--;
    if (c->paused) {
        for (i = 0; i < G.paused.n; i++)
            if (G.paused.v[i] == c) {
                G.paused.v[i] = G.paused.v[--G.paused.n];
                break;
            }
        c->paused = 0;
    }
    if (c->own)                         /* its requests there are owed to nobody now */
        session_release_own(c->own);
    if (!c->inflight)
        conn_free_later(c);
}

static void conn_free(struct conn *c)
{
    struct qnode *q = c->qhead;

    while (q) {
        struct qnode *next = q->next;

        buf_free(&q->data);
        free(q);
        q = next;
    }
    buf_free(&c->in);
    buf_free(&c->out);
    free(c);
}

/* Write what is queued; close a connection that is done (QUIT, protocol error). */
static void conn_write(struct conn *c)
{
    while (buf_used(&c->out)) {
        ssize_t n = send(c->fd, c->out.p + c->out.off, buf_used(&c->out), MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_close(c);
            return;
        }
        buf_consume(&c->out, (size_t)n);
    }
    buf_trim(&c->out);
    if (c->closing && !buf_used(&c->out) && !c->qhead) {
        conn_close(c);
        return;
    }
    conn_update_events(c);
}

/* ---- The region and sessions ------------------------------------------------------ */

static void limits_from_geometry(void)
{
    G.lim.max_args = CXL_MAX_ARGS;
    G.lim.max_bulk = G.client.geo.max_value_size;
    G.lim.max_msg = G.client.geo.max_msg_size;
}

static int client_open(void)
{
    char err[512];
    int rc;

    rc = cxl_client_open(&G.client, G.path, 0, err, sizeof(err));
    if (rc) {
        snprintf(G.client_err, sizeof(G.client_err), "%s", err);
        return rc;
    }
    G.nclaimable = cxl_client_channels(&G.client, G.claimable, CXL_MAX_CHANNELS);
    if (!G.nclaimable) {
        snprintf(G.client_err, sizeof(G.client_err), "%s: no channel can be claimed from "
                 "here (no client segment mapped writable)", G.path);
        cxl_client_close(&G.client);
        return CXL_E_NO_ACCESS;
    }
    rc = cxl_client_start_heartbeat(&G.client, err, sizeof(err));
    if (rc) {
        snprintf(G.client_err, sizeof(G.client_err), "%s", err);
        cxl_client_close(&G.client);
        return rc;
    }
    limits_from_geometry();
    G.client_open = 1;
    G.client_stale = 0;
    return CXL_OK;
}

static void session_fail(struct gsess *gs, int rc, const char *why);
static void fail_all(int rc, const char *why);

static int any_claimed(void)
{
    uint32_t i;

    for (i = 0; i < G.nshared; i++)
        if (G.shared[i].claimed)
            return 1;
    for (i = 0; i < G.nowns; i++)
        if (G.owns[i]->claimed)
            return 1;
    return 0;
}

/* The region, mapped and with a live server as far as we know; 0 or an error code. */
static int client_ready(void)
{
    uint64_t now;
    int rc;

    if (G.client_open && !G.client_stale)
        return CXL_OK;
    now = now_ns();
    if (now < G.reopen_at_ns)
        return CXL_E_NOT_RUNNING;
    G.reopen_at_ns = now + REOPEN_PERIOD_NS;
    if (G.client_open) {
        if (any_claimed())              /* sessions of the old server: over, idle ones too */
            fail_all(CXL_E_NOT_RUNNING, "the server stopped, died or restarted");
        cxl_client_close(&G.client);
        G.client_open = 0;
    }
    rc = client_open();
    if (rc == CXL_OK)
        logmsg("region %s opened (server epoch %#" PRIx64 ")", G.path, G.client.epoch);
    return rc;
}

static int server_level(int rc)
{
    return rc == CXL_E_RESTARTED || rc == CXL_E_SERVER_GONE || rc == CXL_E_NOT_RUNNING;
}

/* Every session: fail what is owed, release; the region is reopened before the next claim. */
static int in_fail_all;

static void fail_all(int rc, const char *why)
{
    uint32_t i;

    G.client_stale = 1;
    in_fail_all = 1;
    for (i = 0; i < G.nshared; i++)
        if (G.shared[i].claimed)
            session_fail(&G.shared[i], rc, why);
    for (i = 0; i < G.nowns; i++)
        if (G.owns[i]->claimed)
            session_fail(G.owns[i], rc, why);
    in_fail_all = 0;
}

/*
 * A session failed (server gone or restarted, session retired or quarantined, corrupt
 * ring, no response in time): every reply owed becomes an error (outcome unknown), and the
 * channel is released. A shared session is claimed again for the next command; an own
 * session's connection is closed at its next command (its user is gone with the session).
 */
static void session_fail(struct gsess *gs, int rc, const char *why)
{
    struct conn *owner = gs->owner;

    if (!gs->claimed)
        return;
    if (server_level(rc) && !in_fail_all) {
        fail_all(rc, why);
        return;
    }
    G.stats_failures++;
    logmsg("ring session on channel %u failed (%s): %s; %zu repl%s owed", gs->s.chan,
           cxl_client_strerror(rc), why, gs->pend.n, gs->pend.n == 1 ? "y" : "ies");
    gs->claimed = 0;                    /* before the replies: nothing re-enters it */
    while (gs->pend.n) {
        struct pend p = *fifo_front(&gs->pend);

        fifo_pop(&gs->pend);
        if (p.kind & KIND_ADOPT && p.c->own == gs) {
            p.c->own = NULL;            /* the AUTH never settled: back to the shared one */
            p.c->blocked = BLOCK_NONE;
            mark_resume(p.c);
            owner = NULL;
        }
        reply_ring_error(p.c, "ERR cxl_ring: %s: %s (outcome unknown)",
                         cxl_client_strerror(rc), why);
    }
    gs->npushed = 0;
    gs->dirty = 0;
    buf_free(&gs->outbox);
    cxl_session_release(&gs->s);
    if (gs->own) {
        if (owner && owner->own == gs && !owner->dead) {
            owner->own = NULL;
            owner->lost_auth = 1;
        }
        gs->owner = NULL;
        gs->defunct = 1;
    }
}

/*
 * How long a claim waits for the server's ack. A claim blocks the loop (the ack normally
 * takes microseconds); once serving, it waits at most 1 s, so that a server that died
 * without saying so (its header still RUNNING) stalls every connection only that long.
 */
static uint32_t claim_timeout_ms(void)
{
    return G.serving && G.timeout_ms > 1000 ? 1000 : G.timeout_ms;
}

/* Claim (again) shared session slot i. 0 or an error code, G.client_err saying why. */
static int shared_claim(struct gsess *gs)
{
    int rc = client_ready();

    if (rc)
        return rc;
    rc = cxl_session_claim(&G.client, &gs->s, G.claimable[gs->index % G.nclaimable],
                           claim_timeout_ms());
    if (rc) {
        snprintf(G.client_err, sizeof(G.client_err), "%s", gs->s.err);
        if (server_level(rc))
            G.client_stale = 1;
        return rc;
    }
    gs->claimed = 1;
    gs->next_seq = 1;
    gs->npushed = 0;
    gs->checked_turn = G.turn;
    gs->last_check_ns = now_ns();
    return CXL_OK;
}

static void session_release_own(struct gsess *gs)
{
    if (gs->claimed) {
        while (gs->pend.n) {            /* owed to its closed owner only */
            struct pend p = *fifo_front(&gs->pend);

            fifo_pop(&gs->pend);
            p.c->inflight--;
            if (p.c->dead && !p.c->inflight)
                conn_free_later(p.c);
        }
        cxl_session_release(&gs->s);
        gs->claimed = 0;
    }
    if (gs->owner && gs->owner->own == gs)
        gs->owner->own = NULL;
    gs->owner = NULL;
    gs->defunct = 1;
}

/*
 * The session a connection's next request goes to, claimed and checked; NULL with an error
 * reply sent when there is none.
 */
static struct gsess *conn_session(struct conn *c)
{
    struct gsess *gs = c->own ? c->own : &G.shared[c->slot];
    int rc;

    for (int attempt = 0; attempt < 2; attempt++) {
        if (!gs->claimed) {
            if (gs->own)
                return NULL;            /* cannot happen: a lost own session is NULL */
            rc = shared_claim(gs);
            if (rc) {
                reply_error(c, "ERR cxl_ring: no ring session: %s", G.client_err[0] ?
                            G.client_err : cxl_client_strerror(rc));
                return NULL;
            }
        }
        if (gs->next_seq >= SEQ_RENEW && !gs->pend.n && !gs->own) {
            cxl_session_release(&gs->s);        /* a fresh generation before the ids wrap */
            gs->claimed = 0;
            continue;
        }
        if (gs->checked_turn != G.turn && !gs->pend.n) {
            /* Before a batch on an idle session (section 5): still ours, server alive. */
            gs->checked_turn = G.turn;
            rc = cxl_session_check(&gs->s);
            if (rc) {
                char why[256];

                snprintf(why, sizeof(why), "%s", gs->s.err);
                session_fail(gs, rc, why);
                if (c->own || c->lost_auth || gs->own) {
                    reply_error(c, "ERR cxl_ring: this connection's authenticated session "
                                "was lost (%s); connect again", why);
                    c->closing = 1;
                    return NULL;
                }
                continue;
            }
        }
        if (gs->next_seq == UINT32_MAX) {
            reply_error(c, "ERR cxl_ring: session out of request ids; connect again");
            c->closing = 1;
            return NULL;
        }
        return gs;
    }
    reply_error(c, "ERR cxl_ring: no ring session: %s", G.client_err);
    return NULL;
}

/* Frame one request into the session's outbox; its reply is owed to c. */
static void submit(struct conn *c, struct gsess *gs, uint8_t op, uint8_t flags, uint64_t ttl,
                   uint32_t argc, const uint8_t *const *argv, const uint32_t *argl,
                   uint8_t kind)
{
    uint64_t size = cxl_req_size(argc, argl, flags & CXL_FLAG_TTL);
    uint32_t seq = gs->next_seq++;
    uint8_t *p;
    uint32_t len;

    p = buf_reserve(&gs->outbox, cxl_align8(size));
    len = cxl_req_encode(p, op, flags, cxl_session_id(&gs->s, seq), ttl, argc, argv, argl);
    memset(p + len, 0, cxl_align8(len) - len);
    gs->outbox.len += cxl_align8(len);
    fifo_push(&gs->pend, (struct pend){ .c = c, .seq = seq, .op = op, .kind = kind });
    expect_ring_reply(c);
}

/* A command for the ring: checked against the region's limits, then framed. */
static void ring_request_kind(struct conn *c, uint8_t op, uint8_t flags, uint64_t ttl,
                              uint32_t argc, const uint8_t *const *argv, const uint32_t *argl,
                              uint8_t kind)
{
    struct gsess *gs;

    /* G.lim: the limits of the region as last opened (G.client is zeroed by a failed open) */
    if (cxl_req_size(argc, argl, flags & CXL_FLAG_TTL) > G.lim.max_msg) {
        reply_error(c, "ERR cxl_ring: request too large (max value %u bytes)",
                    G.lim.max_bulk);
        return;
    }
    gs = conn_session(c);
    if (gs)
        submit(c, gs, op, flags, ttl, argc, argv, argl, kind);
}

static void ring_request(struct conn *c, uint8_t op, uint8_t flags, uint64_t ttl,
                         uint32_t argc, const uint8_t *const *argv, const uint32_t *argl)
{
    ring_request_kind(c, op, flags, ttl, argc, argv, argl, 0);
}

/* ---- Responses -------------------------------------------------------------------- */

static int upper_word(const uint8_t *p, uint32_t n)
{
    uint32_t i;
    int upper = 0;

    for (i = 0; i < n && p[i] != ' '; i++) {
        if (p[i] >= 'a' && p[i] <= 'z')
            return 0;
        if (p[i] >= 'A' && p[i] <= 'Z')
            upper = 1;
    }
    return upper;
}

/* "-<prefix><text>\r\n", CR and LF in text flattened to spaces. */
static void error_text(struct buf *b, const char *prefix, const uint8_t *text, uint32_t n)
{
    uint8_t *p;
    size_t plen = strlen(prefix), i;

    p = buf_reserve(b, 3 + plen + n);
    p[0] = '-';
    memcpy(p + 1, prefix, plen);
    for (i = 0; i < n; i++)
        p[1 + plen + i] = (text[i] == '\r' || text[i] == '\n') ? ' ' : text[i];
    memcpy(p + 1 + plen + n, "\r\n", 2);
    b->len += 3 + plen + n;
}

/* The RESP2 reply for a response, as client/cxl_ring/proxy.py maps it. */
/*
 * Pub/sub replies and pushes (docs/ring-protocol.md 15): one or more RESP2 replies as Redis
 * writes them. On a HELLO 3 connection each array goes as a RESP3 push ('>'), as Redis sends
 * messages and confirmations there; an error stays an error.
 */
static void pubsub_resp(struct buf *b, const struct conn *c, const uint8_t *p, uint32_t n)
{
    size_t at = 0;

    while (at < n) {
        long span = resp_reply_span(p + at, n - at);

        if (span <= 0) {
            const char *t = "ERR cxl_ring: bad pub/sub reply from the server";
            error_text(b, "", (const uint8_t *)t, (uint32_t)strlen(t));
            return;
        }
        if (c->resp3 && p[at] == '*') {
            buf_append(b, ">", 1);
            buf_append(b, p + at + 1, (size_t)span - 1);
        } else {
            buf_append(b, p + at, (size_t)span);
        }
        at += (size_t)span;
    }
}

static void to_resp(struct buf *b, const struct pend *p, const struct cxl_resp *r)
{
    char head[32];
    int n;

    if (r->status == CXL_ST_OK) {
        switch (p->op) {
        case CXL_OP_GET:
            n = snprintf(head, sizeof(head), "$%u\r\n", r->payload_len);
            buf_append(b, head, (size_t)n);
            buf_append(b, r->payload, r->payload_len);
            buf_append(b, "\r\n", 2);
            return;
        case CXL_OP_SET:
            buf_append(b, "+OK\r\n", 5);
            return;
        case CXL_OP_CMD:
            if (p->kind & KIND_PUBSUB) {
                pubsub_resp(b, p->c, r->payload, r->payload_len);
                return;
            }
            if (resp_check_reply(r->payload, r->payload_len)) {
                const char *t = "ERR cxl_ring: bad reply from the server";
                error_text(b, "", (const uint8_t *)t, (uint32_t)strlen(t));
                return;
            }
            buf_append(b, r->payload, r->payload_len);
            return;
        case CXL_OP_DEL:
            if (r->payload_len == 8) {
                uint64_t count;

                memcpy(&count, r->payload, 8);
                n = snprintf(head, sizeof(head), ":%" PRIu64 "\r\n", count);
                buf_append(b, head, (size_t)n);
                return;
            }
            break;
        case CXL_OP_PING:
            buf_append(b, "+PONG\r\n", 7);
            return;
        default:
            break;
        }
        error_text(b, "ERR cxl_ring: malformed reply", NULL, 0);
        return;
    }
    if (r->status == CXL_ST_NOT_FOUND && p->op == CXL_OP_GET) {
        buf_append(b, "$-1\r\n", 5);
        return;
    }
    switch (r->status) {
    case CXL_ST_ERR:
    case CXL_ST_OOM:
        error_text(b, upper_word(r->payload, r->payload_len) ? "" : "ERR ", r->payload,
                   r->payload_len);
        return;
    case CXL_ST_TOO_LARGE:
        error_text(b, "ERR cxl_ring: too large: ", r->payload, r->payload_len);
        return;
    default:
        error_text(b, "ERR cxl_ring: ", r->payload, r->payload_len);
        return;
    }
}

static int is_ok(const struct cxl_resp *r)
{
    return r->status == CXL_ST_OK && r->payload_len == 5 && !memcmp(r->payload, "+OK\r\n", 5);
}

static struct buf scratch;

static void deliver(struct gsess *gs, const struct pend *p, const struct cxl_resp *r)
{
    struct conn *c = p->c;

    scratch.off = scratch.len = 0;
    if ((p->kind & (KIND_HELLO2 | KIND_HELLO3)) && is_ok(r)) {
        if (p->kind & KIND_HELLO3)
            buf_append(&scratch, HELLO3, sizeof(HELLO3) - 1);
        else
            buf_append(&scratch, HELLO2, sizeof(HELLO2) - 1);
    } else {
        to_resp(&scratch, p, r);
    }
    if (p->kind & KIND_ADOPT) {
        /* The AUTH of a connection's new session: on +OK it keeps it (and its user). */
        if (!is_ok(r) && c->own == gs) {
            c->own = NULL;
            gs->release_when_idle = 1;
        }
        if (c->blocked == BLOCK_AUTH) {
            c->blocked = BLOCK_NONE;
            mark_resume(c);
        }
    }
    reply_ring(c, scratch.p + scratch.off, buf_used(&scratch));
}

/* Push, flush, pop one session; 1 when anything moved. */
static int session_pump(struct gsess *gs)
{
    struct cxl_resp r;
    int moved = 0, rc;
    uint64_t now;

    if (!gs->claimed)
        return 0;
    while (buf_used(&gs->outbox)) {
        const uint8_t *m = gs->outbox.p + gs->outbox.off;
        uint32_t len;

        memcpy(&len, m, 4);
        rc = cxl_session_push(&gs->s, m, len);
        if (rc == CXL_E_AGAIN)
            break;
        if (rc) {
            char why[256];

            snprintf(why, sizeof(why), "%s", gs->s.err);
            session_fail(gs, rc, why);
            return 1;
        }
        buf_consume(&gs->outbox, cxl_align8(len));
        if (!gs->npushed)
            gs->last_progress_ns = now_ns();
        gs->npushed++;
        gs->dirty = 1;
        moved = 1;
    }
    buf_trim(&gs->outbox);
    if (gs->dirty) {
        cxl_session_flush(&gs->s);
        gs->dirty = 0;
    }
    if (!gs->npushed && !gs->subscribed)
        return moved;
    for (;;) {
        struct pend p;

        rc = cxl_session_pop(&gs->s, &r);
        if (rc == CXL_E_AGAIN)
            break;
        if (rc == CXL_OK && r.status == CXL_ST_PUSH) {
            /* A message (or a confirmation that did not fit the reply) for the connection
             * that subscribed: every ring reply before it has been delivered, so it goes
             * out now, ahead of replies still owed (ring order, as Redis writes). */
            struct conn *c = gs->owner;

            if (c && !c->dead) {
                scratch.off = scratch.len = 0;
                pubsub_resp(&scratch, c, r.payload, r.payload_len);
                buf_append(&c->out, scratch.p + scratch.off, buf_used(&scratch));
                mark_dirty(c);
            }
            moved = 1;
            continue;
        }
        if (rc == CXL_OK && r.status == CXL_ST_PROTOCOL_ERROR && r.id == 0) {
            char why[256];

            snprintf(why, sizeof(why), "the server quarantined the channel: %.*s",
                     (int)(r.payload_len < 200 ? r.payload_len : 200),
                     (const char *)r.payload);
            session_fail(gs, CXL_E_QUARANTINED, why);
            return 1;
        }
        if (rc == CXL_OK && r.id != cxl_session_id(&gs->s, fifo_front(&gs->pend)->seq)) {
            snprintf(gs->s.err, sizeof(gs->s.err), "response id %#" PRIx64 ", expected %#"
                     PRIx64, r.id, cxl_session_id(&gs->s, fifo_front(&gs->pend)->seq));
            rc = CXL_E_CORRUPT;
        }
        if (rc) {
            char why[256];

            snprintf(why, sizeof(why), "%s", gs->s.err);
            session_fail(gs, rc, why);
            return 1;
        }
        p = *fifo_front(&gs->pend);
        fifo_pop(&gs->pend);
        gs->npushed--;
        deliver(gs, &p, &r);
        moved = 1;
        if (!gs->npushed && !gs->subscribed)
            break;
    }
    now = now_ns();
    if (moved) {
        cxl_session_pop_done(&gs->s);
        gs->last_progress_ns = now;
    } else if (now - gs->last_check_ns > CHECK_PERIOD_NS) {
        gs->last_check_ns = now;
        rc = cxl_session_check(&gs->s);
        if (!rc && gs->npushed &&
            now - gs->last_progress_ns > (uint64_t)G.timeout_ms * 1000000ull &&
            !(gs->pend.n && fifo_front(&gs->pend)->kind & KIND_BLOCKING)) {
            snprintf(gs->s.err, sizeof(gs->s.err), "no response for %u ms", G.timeout_ms);
            rc = CXL_E_TIMEOUT;
        }
        if (rc) {
            char why[256];

            snprintf(why, sizeof(why), "%s", gs->s.err);
            session_fail(gs, rc, why);
            return 1;
        }
    }
    if (gs->release_when_idle && !gs->pend.n) {
        gs->release_when_idle = 0;
        session_release_own(gs);
    }
    return moved;
}

/* ---- Commands --------------------------------------------------------------------- */

static int eq(const uint8_t *p, uint32_t n, const char *s)
{
    return n == strlen(s) && !strncasecmp((const char *)p, s, n);
}

static int parse_u64(const uint8_t *p, uint32_t n, long long *out)
{
    long long v = 0;
    uint32_t i = 0;
    int neg = 0;

    if (n && p[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i == n || n - i > 18)
        return -1;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    *out = neg ? -v : v;
    return 0;
}

enum { DISPATCH_DONE = 0, DISPATCH_BLOCK = 1 };

/*
 * Give the connection a session of its own (claimed here; its earlier requests on the shared
 * session answered first): DISPATCH_DONE with c->own set, DISPATCH_DONE after an error reply
 * (c->own unset), or DISPATCH_BLOCK until the earlier replies are in. `what` names the
 * command that needs it, for the error replies.
 */
static int own_session(struct conn *c, const char *what)
{
    struct gsess *gs;
    int rc;

    if (c->inflight) {
        c->blocked = BLOCK_DRAIN;       /* its shared-session replies come first */
        return DISPATCH_BLOCK;
    }
    rc = client_ready();
    if (rc) {
        reply_error(c, "ERR cxl_ring: no ring session: %s", G.client_err);
        return DISPATCH_DONE;
    }
    if (G.nowns == CXL_MAX_CHANNELS) {
        reply_error(c, "ERR cxl-gateway: no free ring channel for this connection's own "
                    "session (%s needs one)", what);
        return DISPATCH_DONE;
    }
    gs = calloc(1, sizeof(*gs));
    if (!gs)
        die_oom();
    rc = cxl_session_claim(&G.client, &gs->s, 0, claim_timeout_ms());
    if (rc) {
        if (rc == CXL_E_NO_CHANNEL)
            reply_error(c, "ERR cxl-gateway: no free ring channel for this connection's own "
                        "session (%s needs one; run the gateway with fewer --channels)", what);
        else
            reply_error(c, "ERR cxl_ring: cannot claim a session for %s: %s", what,
                        gs->s.err);
        if (server_level(rc))
            G.client_stale = 1;
        free(gs);
        return DISPATCH_DONE;
    }
    gs->claimed = 1;
    gs->own = 1;
    gs->owner = c;
    gs->next_seq = 1;
    gs->checked_turn = G.turn;
    gs->last_check_ns = now_ns();
    G.owns[G.nowns++] = gs;
    c->own = gs;
    return DISPATCH_DONE;
}

/*
 * AUTH [user] password, or HELLO proto AUTH user password: on the connection's own session,
 * claimed here the first time (the connection's earlier requests answered first).
 */
static int auth(struct conn *c, uint32_t argc, const uint8_t **argv, const uint32_t *argl,
                uint8_t hello_kind)
{
    static const uint8_t auth_name[] = "AUTH";
    const uint8_t *av[3] = { auth_name };
    uint32_t al[3] = { 4 };
    struct gsess *gs;
    uint32_t i;
    int rc;

    for (i = 0; i < argc; i++) {
        av[1 + i] = argv[i];
        al[1 + i] = argl[i];
    }
    if (c->lost_auth || (c->own && !c->own->claimed)) {
        reply_error(c, "ERR cxl_ring: this connection's authenticated session was lost; "
                    "connect again");
        c->closing = 1;
        return DISPATCH_DONE;
    }
    if (c->own) {
        gs = conn_session(c);
        if (gs)
            submit(c, gs, CXL_OP_CMD, 0, 0, argc + 1, av, al, hello_kind);
        return DISPATCH_DONE;
    }
    rc = own_session(c, "AUTH");
    if (rc != DISPATCH_DONE || !c->own)
        return rc;
    c->blocked = BLOCK_AUTH;
    submit(c, c->own, CXL_OP_CMD, 0, 0, argc + 1, av, al, KIND_ADOPT | hello_kind);
    return DISPATCH_DONE;
}

/* The blocking commands the driver serves by blocking the session (ring-protocol.md 14):
 * the list and sorted-set ones, WAIT, and XREAD/XREADGROUP with BLOCK (before STREAMS). */
static int is_blocking(uint32_t argc, const uint8_t *const *argv, const uint32_t *argl)
{
    static const char *const names[] = { "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP",
                                         "BZPOPMIN", "BZPOPMAX", "BZMPOP", "WAIT" };
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (eq(argv[0], argl[0], names[i]))
            return 1;
    if (!eq(argv[0], argl[0], "XREAD") && !eq(argv[0], argl[0], "XREADGROUP"))
        return 0;
    for (i = 1; i + 1 < argc; i++) {
        if (eq(argv[i], argl[i], "STREAMS"))
            return 0;
        if (eq(argv[i], argl[i], "BLOCK"))
            return 1;
    }
    return 0;
}

/* SUBSCRIBE and kin: the driver pushes to the session (ring-protocol.md 15). */
static int is_pubsub(const uint8_t *name, uint32_t nl)
{
    static const char *const family[] = { "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE",
                                          "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE" };
    size_t i;

    for (i = 0; i < sizeof(family) / sizeof(family[0]); i++)
        if (eq(name, nl, family[i]))
            return 1;
    return 0;
}

/*
 * MULTI, EXEC, DISCARD, WATCH, UNWATCH, SELECT, and the blocking commands (BLPOP...): what
 * the driver keeps or does per ring session, so a connection gets a session of its own
 * first: on a shared one, a BLPOP would hold the other connections' commands behind it.
 *
 * MULTI, EXEC, DISCARD, WATCH, UNWATCH, SELECT: state the driver keeps per ring session
 * (docs/ring-protocol.md section 13). On a session other connections share, one client's
 * MULTI would queue the others' commands: the connection gets a session of its own first
 * (SELECT 0 on a shared session is already true and answered here).
 */
static int session_state(struct conn *c, uint32_t n, const uint8_t **argv,
                         const uint32_t *argl, const char *what)
{
    int rc;

    if (!c->own) {
        if (eq(argv[0], argl[0], "SELECT") && n == 2 && eq(argv[1], argl[1], "0")) {
            reply_local(c, "+OK\r\n", 5);
            return DISPATCH_DONE;
        }
        rc = own_session(c, what);
        if (rc != DISPATCH_DONE || !c->own)
            return rc;
    } else if (c->lost_auth || !c->own->claimed) {
        reply_error(c, "ERR cxl_ring: this connection's own session was lost; connect again");
        c->closing = 1;
        return DISPATCH_DONE;
    }
    if (eq(argv[0], argl[0], "MULTI"))
        c->in_multi = 1;                /* the driver queues CMDs only (no QUEUED for GET) */
    else if (eq(argv[0], argl[0], "EXEC") || eq(argv[0], argl[0], "DISCARD"))
        c->in_multi = 0;
    if (is_pubsub(argv[0], argl[0]) && !c->in_multi) {
        /* Before it is sent: the pushes may follow its reply at once. */
        c->own->subscribed = 1;
        c->own->s.subscribed = 1;
        ring_request_kind(c, CXL_OP_CMD, 0, 0, n, argv, argl, KIND_PUBSUB);
        return DISPATCH_DONE;
    }
    ring_request_kind(c, CXL_OP_CMD, 0, 0, n, argv, argl,
                      is_blocking(n, argv, argl) ? KIND_BLOCKING : 0);
    return DISPATCH_DONE;
}

static int hello(struct conn *c, uint32_t argc, const uint8_t **argv, const uint32_t *argl)
{
    long long proto = 2;
    const uint8_t *auth_argv[2];
    uint32_t auth_argl[2], i;
    int has_auth = 0;

    if (argc >= 2) {
        if (parse_u64(argv[1], argl[1], &proto) || (proto != 2 && proto != 3)) {
            reply_error(c, "NOPROTO unsupported protocol version");
            return DISPATCH_DONE;
        }
    }
    for (i = 2; i < argc; i++) {
        if (eq(argv[i], argl[i], "AUTH") && i + 2 < argc) {
            auth_argv[0] = argv[i + 1];
            auth_argl[0] = argl[i + 1];
            auth_argv[1] = argv[i + 2];
            auth_argl[1] = argl[i + 2];
            has_auth = 1;
            i += 2;
        } else if (eq(argv[i], argl[i], "SETNAME") && i + 1 < argc) {
            if (!set_name(c, argv[i + 1], argl[i + 1]))
                return DISPATCH_DONE;
            i += 1;
        } else {
            reply_error(c, "ERR Syntax error in HELLO option '%.*s'",
                        (int)(argl[i] < 64 ? argl[i] : 64), (const char *)argv[i]);
            return DISPATCH_DONE;
        }
    }
    if (argc >= 2)
        c->resp3 = proto == 3;          /* how pub/sub messages are written to it */
    if (has_auth)
        return auth(c, 2, auth_argv, auth_argl, proto == 3 ? KIND_HELLO3 : KIND_HELLO2);
    if (proto == 3)
        reply_local(c, HELLO3, sizeof(HELLO3) - 1);
    else
        reply_local(c, HELLO2, sizeof(HELLO2) - 1);
    return DISPATCH_DONE;
}


static int dispatch(struct conn *c, uint32_t n, const uint8_t **argv, const uint32_t *argl)
{
    const uint8_t *name = argv[0];
    uint32_t nl = argl[0];

    G.stats_commands++;
    if (c->lost_auth) {
        reply_error(c, "ERR cxl_ring: this connection's authenticated session was lost; "
                    "connect again");
        c->closing = 1;
        return DISPATCH_DONE;
    }
    if (c->in_multi && (eq(name, nl, "GET") || eq(name, nl, "SET") || eq(name, nl, "DEL") ||
                        eq(name, nl, "PING"))) {
        ring_request(c, CXL_OP_CMD, 0, 0, n, argv, argl);     /* queued by the driver */
    } else if (eq(name, nl, "GET") && n == 2) {
        ring_request(c, CXL_OP_GET, 0, 0, 1, argv + 1, argl + 1);
    } else if (eq(name, nl, "SET") && (n == 3 || (n == 5 && (eq(argv[3], argl[3], "EX") ||
                                                          eq(argv[3], argl[3], "PX"))))) {
        long long ttl = 0;

        if (n == 5) {
            int ex = eq(argv[3], argl[3], "EX");

            if (parse_u64(argv[4], argl[4], &ttl) || ttl <= 0 ||
                (ex && ttl > LLONG_MAX / 1000 / 2)) {
                reply_error(c, "ERR invalid expire time in 'set' command");
                return DISPATCH_DONE;
            }
            if (ex)
                ttl *= 1000;
        }
        ring_request(c, CXL_OP_SET, ttl ? CXL_FLAG_TTL : 0, (uint64_t)ttl, 2, argv + 1,
                     argl + 1);
    } else if (eq(name, nl, "DEL") && n >= 2) {
        ring_request(c, CXL_OP_DEL, 0, 0, n - 1, argv + 1, argl + 1);
    } else if (eq(name, nl, "PING") && n == 1) {
        ring_request(c, CXL_OP_PING, 0, 0, 0, argv, argl);
    } else if (eq(name, nl, "QUIT")) {
        reply_local(c, "+OK\r\n", 5);
        c->closing = 1;
    } else if (eq(name, nl, "SELECT")) {
        return session_state(c, n, argv, argl, "SELECT");
    } else if (eq(name, nl, "MULTI") || eq(name, nl, "EXEC") || eq(name, nl, "DISCARD") ||
               eq(name, nl, "WATCH") || eq(name, nl, "UNWATCH")) {
        return session_state(c, n, argv, argl, "a transaction");
    } else if (!c->in_multi && is_blocking(n, argv, argl)) {
        return session_state(c, n, argv, argl, "a blocking command");
    } else if (is_pubsub(name, nl)) {
        /* The driver pushes the messages to the connection's own session (section 15). */
        return session_state(c, n, argv, argl, "pub/sub");
    } else if (eq(name, nl, "AUTH")) {
        if (n != 2 && n != 3) {
            reply_error(c, "ERR wrong number of arguments for 'auth' command");
            return DISPATCH_DONE;
        }
        return auth(c, n - 1, argv + 1, argl + 1, 0);
    } else if (eq(name, nl, "HELLO")) {
        return hello(c, n, argv, argl);
    } else if (eq(name, nl, "CLIENT") && n == 3 && eq(argv[1], argl[1], "SETNAME")) {
        if (set_name(c, argv[2], argl[2]))
            reply_local(c, "+OK\r\n", 5);
    } else if (eq(name, nl, "CLIENT") && n == 2 && eq(argv[1], argl[1], "GETNAME")) {
        char head[24];
        int hn;

        if (!c->name_len) {
            reply_local(c, "$-1\r\n", 5);
        } else {
            hn = snprintf(head, sizeof(head), "$%u\r\n", c->name_len);
            reply_local(c, head, (size_t)hn);
            reply_local(c, c->name, c->name_len);
            reply_local(c, "\r\n", 2);
        }
    } else if (eq(name, nl, "CLIENT") && n >= 2 && eq(argv[1], argl[1], "SETINFO")) {
        reply_local(c, "+OK\r\n", 5);
    } else {
        ring_request(c, CXL_OP_CMD, 0, 0, n, argv, argl);
    }
    return DISPATCH_DONE;
}

/* Parse and dispatch every complete command buffered, as far as the connection may go. */
static void conn_parse(struct conn *c)
{
    struct resp_cmd cmd = { .argv = G.argv, .argl = G.argl };
    char err[200];

    while (!c->dead && !c->closing && !c->blocked && buf_used(&c->in)) {
        struct gsess *gs = c->own ? c->own : &G.shared[c->slot];
        size_t used = 0;
        int rc;

        if (buf_used(&c->out) > OUT_HIGH || buf_used(&gs->outbox) > OUTBOX_HIGH) {
            if (!c->paused) {
                c->paused = 1;
                cvec_push(&G.paused, c);
            }
            break;
        }
        rc = resp_parse_command(c->in.p + c->in.off, buf_used(&c->in), &G.lim, &cmd, &used,
                                err, sizeof(err));
        if (rc == RESP_INCOMPLETE)
            break;
        if (rc == RESP_ERROR) {
            reply_error(c, "ERR Protocol error: %s", err);
            c->closing = 1;
            c->in.off = c->in.len = 0;
            break;
        }
        if (cmd.argc == 0) {
            buf_consume(&c->in, used);
            continue;
        }
        if (dispatch(c, cmd.argc, cmd.argv, cmd.argl) == DISPATCH_BLOCK)
            break;                      /* not consumed: parsed again once unblocked */
        buf_consume(&c->in, used);
    }
    buf_trim(&c->in);
    mark_dirty(c);
}

static void conn_read(struct conn *c)
{
    size_t total = 0;

    while (total < READ_PER_TURN) {
        uint8_t *p = buf_reserve(&c->in, READ_CHUNK);
        ssize_t n = recv(c->fd, p, READ_CHUNK, 0);

        if (n > 0) {
            c->in.len += (size_t)n;
            total += (size_t)n;
            if ((size_t)n < READ_CHUNK)
                break;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        conn_close(c);                  /* EOF or an error: as Redis, drop what is owed */
        return;
    }
    conn_parse(c);
}

static void accept_all(void)
{
    for (;;) {
        struct epoll_event ev;
        struct conn *c;
        int one = 1;
        int fd = accept4(G.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                logmsg("accept: %s", strerror(errno));
            return;
        }
        if (G.nconns >= G.max_clients) {
            static const char full[] = "-ERR max number of clients reached\r\n";

            if (send(fd, full, sizeof(full) - 1, MSG_NOSIGNAL) < 0) {
                /* nothing more to tell it */
            }
            close(fd);
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c = calloc(1, sizeof(*c));
        if (!c)
            die_oom();
        c->fd = fd;
        c->id = ++G.next_conn_id;
        c->slot = (uint32_t)(c->id % G.nshared);
        c->events = EPOLLIN;
        ev.events = EPOLLIN;
        ev.data.ptr = c;
        if (epoll_ctl(G.ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
            continue;
        }
        G.nconns++;
    }
}

/* ---- Setup and the loop ----------------------------------------------------------- */

static int listen_on(const char *spec)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *res, *ai;
    size_t hl;
    int fd = -1, rc, one = 1;

    if (!colon || colon == spec || !colon[1] || (size_t)(colon - spec) >= sizeof(host)) {
        fprintf(stderr, "cxl-gateway: --listen wants HOST:PORT, not '%s'\n", spec);
        return -1;
    }
    hl = (size_t)(colon - spec);
    memcpy(host, spec, hl);
    host[hl] = 0;
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = 0;
    }
    rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc) {
        fprintf(stderr, "cxl-gateway: %s: %s\n", spec, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0)
            continue;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        fprintf(stderr, "cxl-gateway: cannot listen on %s: %s\n", spec, strerror(errno));
    return fd;
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: cxl-gateway --path REGION --listen HOST:PORT [--channels N]\n"
        "                   [--timeout-ms N] [--max-clients N] [--quiet]\n"
        "\n"
        "A RESP server that carries its clients' commands over the cxl_ring to Redis.\n"
        "  --path REGION     the region: a file (/dev/shm/..., /dev/uioN) or a directory\n"
        "                    of segment files (a Sec-DSM view)\n"
        "  --listen H:P      where to accept Redis clients (e.g. 127.0.0.1:6380)\n"
        "  --channels N      shared ring sessions (default: every channel this peer may\n"
        "                    claim, at most 8); leave channels free for AUTH connections\n"
        "  --timeout-ms N    claim acknowledgement and no-response limit (default 5000)\n"
        "  --max-clients N   connections at most (default 10000)\n"
        "  --quiet           no log lines on stderr\n"
        "Exit codes: 0 stopped by SIGTERM/SIGINT, 1 usage, 2 no region or server, 3 other.\n");
}

static int parse_uint(const char *s, uint32_t *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || *end || end == s || v > UINT32_MAX)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_args(int argc, char **argv)
{
    int i;

    G.timeout_ms = 5000;
    G.max_clients = 10000;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--version")) {
            printf("cxl-gateway %s\n", GW_VERSION);
            exit(0);
        } else if (!strcmp(a, "--quiet")) {
            G.quiet = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "cxl-gateway: %s needs a value\n", a);
            return -1;
        }
        i++;
        if (!strcmp(a, "--path")) {
            G.path = v;
        } else if (!strcmp(a, "--listen")) {
            G.listen = v;
        } else if (!strcmp(a, "--channels")) {
            if (parse_uint(v, &G.channels) || !G.channels || G.channels > CXL_MAX_CHANNELS)
                goto bad;
        } else if (!strcmp(a, "--timeout-ms")) {
            if (parse_uint(v, &G.timeout_ms) || !G.timeout_ms)
                goto bad;
        } else if (!strcmp(a, "--max-clients")) {
            if (parse_uint(v, &G.max_clients) || !G.max_clients)
                goto bad;
        } else {
            fprintf(stderr, "cxl-gateway: unknown option %s\n", a);
            return -1;
        }
        continue;
bad:
        fprintf(stderr, "cxl-gateway: bad value '%s' for %s\n", v, a);
        return -1;
    }
    if (!G.path || !G.listen) {
        fprintf(stderr, "cxl-gateway: --path and --listen are required\n");
        return -1;
    }
    return 0;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Whether the loop owes the rings a look without waiting for a socket. */
static int rings_busy(void)
{
    uint32_t i;

    for (i = 0; i < G.nshared; i++)
        if (G.shared[i].claimed && (G.shared[i].pend.n || G.shared[i].dirty))
            return 1;
    for (i = 0; i < G.nowns; i++)
        if (G.owns[i]->claimed && (G.owns[i]->pend.n || G.owns[i]->dirty))
            return 1;
    return 0;
}

static int any_subscribed(void)
{
    uint32_t i;

    for (i = 0; i < G.nowns; i++)
        if (G.owns[i]->claimed && G.owns[i]->subscribed)
            return 1;
    return 0;
}

static void end_of_turn(void)
{
    size_t i, keep = 0;
    uint32_t j, k = 0;

    for (i = 0; i < G.dirty.n; i++) {
        struct conn *c = G.dirty.v[i];

        c->in_dirty = 0;
        if (!c->dead)
            conn_write(c);
    }
    G.dirty.n = 0;
    /* Paused connections read again once their output and their session have drained. */
    for (i = 0; i < G.paused.n; ) {
        struct conn *c = G.paused.v[i];
        struct gsess *gs = c->own ? c->own : &G.shared[c->slot];

        if (buf_used(&c->out) < OUT_HIGH / 2 && buf_used(&gs->outbox) < OUTBOX_HIGH / 2) {
            c->paused = 0;
            G.paused.v[i] = G.paused.v[--G.paused.n];
            mark_resume(c);
            continue;
        }
        i++;
    }
    for (j = 0; j < G.nowns; j++) {
        struct gsess *gs = G.owns[j];

        if (gs->defunct && !gs->claimed) {
            free(gs->pend.e);
            buf_free(&gs->outbox);
            free(gs);
        } else {
            G.owns[k++] = gs;
        }
    }
    G.nowns = k;
    for (i = 0; i < G.dead.n; i++) {
        struct conn *c = G.dead.v[i];

        if (c->inflight || c->in_resume || c->in_dirty)
            G.dead.v[keep++] = c;       /* still referred to: later */
        else
            conn_free(c);
    }
    G.dead.n = keep;
}

static void shutdown_all(void)
{
    uint32_t i;

    for (i = 0; i < G.nshared; i++)
        if (G.shared[i].claimed) {
            cxl_session_release(&G.shared[i].s);
            G.shared[i].claimed = 0;
        }
    for (i = 0; i < G.nowns; i++)
        if (G.owns[i]->claimed) {
            cxl_session_release(&G.owns[i]->s);
            G.owns[i]->claimed = 0;
        }
    if (G.client_open)
        cxl_client_close(&G.client);
    G.client_open = 0;
}

int main(int argc, char **argv)
{
    struct epoll_event ev, evs[256];
    sigset_t mask;
    uint64_t idle_since = 0, sleep_ns = 0;
    uint32_t want, i;
    int rc, n;

    if (parse_args(argc, argv)) {
        usage(stderr);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Blocked before any thread starts (the heartbeat's): only the signalfd sees them. */
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    raise_fd_limit();
    G.argv = calloc(CXL_MAX_ARGS, sizeof(*G.argv));
    G.argl = calloc(CXL_MAX_ARGS, sizeof(*G.argl));
    if (!G.argv || !G.argl)
        die_oom();

    rc = client_open();
    if (rc) {
        fprintf(stderr, "cxl-gateway: %s\n", G.client_err);
        return 2;
    }
    want = G.channels ? G.channels : (G.nclaimable < MAX_SHARED_DEFAULT ? G.nclaimable
                                                                         : MAX_SHARED_DEFAULT);
    if (want > G.nclaimable)
        want = G.nclaimable;
    for (i = 0; i < want; i++) {
        G.shared[G.nshared].index = G.nshared;
        rc = shared_claim(&G.shared[G.nshared]);
        if (rc) {
            if (rc == CXL_E_NO_CHANNEL)
                break;
            fprintf(stderr, "cxl-gateway: cannot claim a ring session: %s\n", G.client_err);
            shutdown_all();
            return 2;
        }
        G.nshared++;
    }
    if (!G.nshared) {
        fprintf(stderr, "cxl-gateway: cannot claim a ring session: %s\n", G.client_err);
        shutdown_all();
        return 2;
    }

    G.lfd = listen_on(G.listen);
    if (G.lfd < 0) {
        shutdown_all();
        return 1;
    }
    G.sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    G.ep = epoll_create1(EPOLL_CLOEXEC);
    if (G.sfd < 0 || G.ep < 0) {
        perror("cxl-gateway: signalfd/epoll");
        shutdown_all();
        return 3;
    }
    ev.events = EPOLLIN;
    ev.data.ptr = &G.lfd;
    epoll_ctl(G.ep, EPOLL_CTL_ADD, G.lfd, &ev);
    ev.data.ptr = &G.sfd;
    epoll_ctl(G.ep, EPOLL_CTL_ADD, G.sfd, &ev);
    {
        char chans[CXL_MAX_CHANNELS * 4 + 1] = "";
        size_t off = 0;

        for (i = 0; i < G.nshared; i++)
            off += (size_t)snprintf(chans + off, sizeof(chans) - off, "%s%u", i ? "," : "",
                                    G.shared[i].s.chan);
        logmsg("listening on %s, %u shared ring session%s on %s (channels %s)", G.listen,
               G.nshared, G.nshared == 1 ? "" : "s", G.path, chans);
    }

    G.serving = 1;
    while (!G.stop) {
        struct timespec ts, *tsp = NULL;
        int busy = rings_busy() || G.resume.n;
        uint64_t now;

        if (busy) {
            now = now_ns();
            if (!idle_since)
                idle_since = now;
            if (now - idle_since < SPIN_NS) {
                sleep_ns = 0;
            } else {
                sleep_ns = sleep_ns ? sleep_ns * 2 : SLEEP_MIN_NS;
                if (sleep_ns > SLEEP_MAX_NS)
                    sleep_ns = SLEEP_MAX_NS;
            }
            ts.tv_sec = 0;
            ts.tv_nsec = (long)sleep_ns;
            tsp = &ts;
        }
        if (!busy && any_subscribed()) {     /* pushes may come: look every 1 ms */
            ts.tv_sec = 0;
            ts.tv_nsec = (long)SUB_POLL_NS;
            tsp = &ts;
        }
        if (G.resume.n) {
            ts.tv_nsec = 0;
        }
        n = epoll_pwait2(G.ep, evs, 256, tsp, NULL);
        if (n < 0 && errno == ENOSYS) {
            n = epoll_wait(G.ep, evs, 256, tsp ? (tsp->tv_nsec ? 1 : 0) : -1);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("cxl-gateway: epoll");
            break;
        }
        G.turn++;
        for (int k = 0; k < n; k++) {
            void *ptr = evs[k].data.ptr;

            if (ptr == &G.lfd) {
                accept_all();
            } else if (ptr == &G.sfd) {
                struct signalfd_siginfo si;

                while (read(G.sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
                    G.stop = 1;
            } else {
                struct conn *c = ptr;

                if (c->dead)
                    continue;
                if (evs[k].events & EPOLLOUT)
                    conn_write(c);
                if (c->dead)
                    continue;
                if (evs[k].events & EPOLLIN)
                    conn_read(c);
                else if (evs[k].events & (EPOLLERR | EPOLLHUP))
                    conn_close(c);
            }
        }
        for (size_t r = 0; r < G.resume.n; r++) {
            struct conn *c = G.resume.v[r];

            c->in_resume = 0;
            if (!c->dead) {
                conn_parse(c);
                conn_update_events(c);
            }
        }
        G.resume.n = 0;
        {
            int moved = 0;

            for (i = 0; i < G.nshared; i++)
                moved |= session_pump(&G.shared[i]);
            for (i = 0; i < G.nowns; i++)
                moved |= session_pump(G.owns[i]);
            if (moved || n > 0) {
                idle_since = 0;
                sleep_ns = 0;
            }
        }
        end_of_turn();
    }
    logmsg("stopping: %" PRIu64 " commands, %" PRIu64 " session failures", G.stats_commands,
           G.stats_failures);
    close(G.lfd);
    shutdown_all();
    return 0;
}
