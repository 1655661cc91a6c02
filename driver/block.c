/*
 * block.c - blocking commands on a ring session: BLPOP, BRPOP, BRPOPLPUSH, BLMOVE,
 * BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP, XREAD/XREADGROUP with BLOCK, and WAIT
 * (docs/ring-protocol.md section 14; WAIT: wait_request() below).
 *
 * A CMD runs through RedisModule_Call, where Redis never blocks: it refuses these
 * commands (Redis 7: flag noscript) or answers them at once. The driver blocks the
 * session instead, never the server:
 *
 *   1. the command's arity and timeout are checked as Redis checks them, and the
 *      session's user must be allowed the command itself and its keys;
 *   2. its non-blocking form runs (LPOP per key for BLPOP, LMOVE for BLMOVE, XREAD
 *      without BLOCK, its "$" ids made the streams' last entries...);
 *      a value, or an error such as WRONGTYPE, is the answer, in the blocking
 *      command's own reply shape;
 *   3. nothing to pop: the session is blocked. The request is kept (struct
 *      drv_block), nothing after it in the session's request ring is read, the
 *      other sessions and TCP clients go on. Each keyspace event (any write, by any
 *      client) makes the poll thread try step 2 again for every blocked session, in
 *      the order they blocked; the timeout answers the blocking command's nil.
 *
 * Keyspace events come from Redis's module subscription (txn.c's, shared with
 * WATCH): a write on the main thread wakes a sleeping poll thread. A timeout is seen
 * at the poll thread's next look, at most sleep_max_ms late. A session that ends
 * (release, lease, reset, quarantine) forgets its blocked request (channel.c).
 * Inside MULTI these commands are queued as any other and refused at EXEC as before.
 */
#include "driver.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum shape {
    POP_PER_KEY,                        /* BLPOP k... t: LPOP k until one answers */
    ZPOP_PER_KEY,                       /* BZPOPMIN k... t: ZPOPMIN k until one answers */
    SAME_REPLY,                         /* BLMOVE...: the non-blocking form's reply as is */
    STREAM_READ,                        /* XREAD ... BLOCK ms: the same without BLOCK */
    REPLICA_ACKS,                       /* WAIT n ms: n replicas acknowledged our offset */
};

enum { TIMEOUT_LAST, TIMEOUT_FIRST, TIMEOUT_BLOCK };   /* where the timeout argument is */

struct blocking {
    const char *name, *form;            /* the command and its non-blocking form */
    enum shape shape;
    int timeout_at;
    uint32_t min_argc, max_argc;        /* max 0: no bound */
    const char *nil;                    /* the reply when it times out */
};

static const struct blocking table[] = {
    { "blpop",      "lpop",      POP_PER_KEY,  TIMEOUT_LAST,  3, 0, "*-1\r\n" },
    { "brpop",      "rpop",      POP_PER_KEY,  TIMEOUT_LAST,  3, 0, "*-1\r\n" },
    { "bzpopmin",   "zpopmin",   ZPOP_PER_KEY, TIMEOUT_LAST,  3, 0, "*-1\r\n" },
    { "bzpopmax",   "zpopmax",   ZPOP_PER_KEY, TIMEOUT_LAST,  3, 0, "*-1\r\n" },
    { "brpoplpush", "rpoplpush", SAME_REPLY,   TIMEOUT_LAST,  4, 4, "$-1\r\n" },
    { "blmove",     "lmove",     SAME_REPLY,   TIMEOUT_LAST,  6, 6, "$-1\r\n" },
    { "blmpop",     "lmpop",     SAME_REPLY,   TIMEOUT_FIRST, 5, 0, "*-1\r\n" },
    { "bzmpop",     "zmpop",     SAME_REPLY,   TIMEOUT_FIRST, 5, 0, "*-1\r\n" },
    /* only with BLOCK (stream_block() finds it); the timeout is in milliseconds */
    { "xread",      "xread",     STREAM_READ,  TIMEOUT_BLOCK, 4, 0, "*-1\r\n" },
    { "xreadgroup", "xreadgroup", STREAM_READ, TIMEOUT_BLOCK, 7, 0, "*-1\r\n" },
    /* answers the replicas counted, also at its timeout (milliseconds) */
    { "wait",       NULL,        REPLICA_ACKS, TIMEOUT_LAST,  3, 3, NULL },
};

#define WAIT_RETRY_NS 10000000ull       /* WAIT looks for acks every 10 ms while blocked */

static uint64_t block_seq;              /* poll thread, under the GIL */

static const struct blocking *lookup(const uint8_t *name, uint32_t n)
{
    size_t i;

    for (i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (n == strlen(table[i].name) && !strncasecmp((const char *)name, table[i].name, n))
            return &table[i];
    return NULL;
}

static void line(drv_reply_fn *reply, void *sink, const char *text)
{
    reply(sink, CXL_ST_OK, text, (uint32_t)strlen(text), NULL, 0);
}

/* Redis's own rules (getTimeoutFromObjectOrReply): seconds as a float, or BLOCK's whole
 * milliseconds (millis); not negative. Into *seconds; an error reply and -1 when bad. */
static int parse_timeout(const uint8_t *p, uint32_t n, int millis, double *seconds,
                         drv_reply_fn *reply, void *sink)
{
    char buf[64], *end;
    double v;

    if (n == 0 || n >= sizeof(buf))
        goto bad;
    memcpy(buf, p, n);
    buf[n] = '\0';
    errno = 0;
    v = millis ? (double)strtoll(buf, &end, 10) / 1000.0 : strtod(buf, &end);
    if (errno || *end || end == buf || isnan(v) || isinf(v))
        goto bad;
    if (v < 0) {
        line(reply, sink, "-ERR timeout is negative\r\n");
        return -1;
    }
    *seconds = v;
    return 0;
bad:
    line(reply, sink, millis ? "-ERR timeout is not an integer or out of range\r\n"
                             : "-ERR timeout is not a float or out of range\r\n");
    return -1;
}

/* XREAD/XREADGROUP: the index of BLOCK's value before STREAMS, or 0 when there is none. */
static uint32_t stream_block(const struct cxl_req *req)
{
    uint32_t i;

    for (i = 1; i + 1 < req->argc; i++) {
        if (req->argl[i] == 7 && !strncasecmp((const char *)req->argv[i], "streams", 7))
            return 0;
        if (req->argl[i] == 5 && !strncasecmp((const char *)req->argv[i], "block", 5))
            return i + 1;
    }
    return 0;
}

/*
 * XREAD's "$" (entries added after the call) names a position that moves: the kept request
 * names the stream's last entry instead, found now (XREVRANGE key + - COUNT 1; no entry or
 * no stream: 0-0). Entries deleted after it were never read anyway. ids: room for each one.
 */
#define STREAM_ID_MAX 48

static void stream_fix_dollar(struct drv_exec *x, struct cxl_req *req,
                              char ids[][STREAM_ID_MAX], uint32_t nids)
{
    uint32_t i, s = 0, nkeys, k;

    for (i = 1; i < req->argc; i++)
        if (req->argl[i] == 7 && !strncasecmp((const char *)req->argv[i], "streams", 7))
            s = i;
    if (!s || (req->argc - s - 1) % 2)
        return;                         /* malformed: XREAD itself says how */
    nkeys = (req->argc - s - 1) / 2;
    for (k = 0; k < nkeys && k < nids; k++) {
        uint32_t key = s + 1 + k, id = s + 1 + nkeys + k;
        RedisModuleCallReply *r, *e, *idr;
        const char *p;
        size_t n = 0;

        if (req->argl[id] != 1 || req->argv[id][0] != '$')
            continue;
        snprintf(ids[k], STREAM_ID_MAX, "0-0");
        r = RedisModule_Call(x->ctx, "XREVRANGE", "bcccc", (const char *)req->argv[key],
                             (size_t)req->argl[key], "+", "-", "COUNT", "1");
        if (r && RedisModule_CallReplyType(r) == REDISMODULE_REPLY_ARRAY &&
            RedisModule_CallReplyLength(r) >= 1 &&
            (e = RedisModule_CallReplyArrayElement(r, 0)) &&
            RedisModule_CallReplyType(e) == REDISMODULE_REPLY_ARRAY &&
            (idr = RedisModule_CallReplyArrayElement(e, 0)) &&
            (p = RedisModule_CallReplyStringPtr(idr, &n)) && n < STREAM_ID_MAX) {
            memcpy(ids[k], p, n);
            ids[k][n] = '\0';
        }
        if (r)
            RedisModule_FreeCallReply(r);
        req->argv[id] = (const uint8_t *)ids[k];
        req->argl[id] = (uint32_t)strlen(ids[k]);
    }
}

/* ---- One try: the non-blocking form ------------------------------------------------ */

/* A reply captured instead of sent, to be reshaped or found to be nil. */
struct capture {
    uint8_t status;
    uint8_t *bytes;
    uint32_t len;
};

static void capture_reply(void *sinkp, uint8_t status, const void *p1, uint32_t n1,
                          const void *p2, uint32_t n2)
{
    struct capture *c = sinkp;

    c->status = status;
    c->len = n1 + n2;
    c->bytes = RedisModule_Alloc(c->len ? c->len : 1);
    if (n1)
        memcpy(c->bytes, p1, n1);
    if (n2)
        memcpy(c->bytes + n1, p2, n2);
}

static int is_nil(const struct capture *c)
{
    return c->status == CXL_ST_OK &&
           ((c->len == 5 && (!memcmp(c->bytes, "*-1\r\n", 5) || !memcmp(c->bytes, "$-1\r\n", 5)))
            || (c->len == 4 && !memcmp(c->bytes, "*0\r\n", 4)));
}

/* Run argv[0..argc) (a non-blocking command) as the driver: the session's user was
 * checked against the blocking command already. */
static void run(struct drv_exec *x, uint32_t argc, const uint8_t *const *argv,
                const uint32_t *argl, struct capture *c)
{
    RedisModuleUser *user = x->call_user;

    memset(c, 0, sizeof(*c));
    x->call_user = NULL;
    drv_exec_cmd(x, argc, argv, argl, capture_reply, c);
    x->call_user = user;
}

/* 1: answered (a value or an error), 0: nothing to pop. */
static int attempt(struct drv_exec *x, const struct blocking *b, uint32_t argc,
                   const uint8_t *const *argv, const uint32_t *argl, drv_reply_fn *reply,
                   void *sink)
{
    const uint8_t *av[CXL_MAX_ARGS];
    uint32_t al[CXL_MAX_ARGS], i, n = 0;
    struct capture c;
    char head[48];
    int hn;

    if (b->shape == SAME_REPLY || b->shape == STREAM_READ) {
        uint32_t block_at = 0;

        if (b->shape == STREAM_READ) {
            struct cxl_req probe = { .argc = (uint16_t)argc };

            memcpy(probe.argv, argv, argc * sizeof(argv[0]));
            memcpy(probe.argl, argl, argc * sizeof(argl[0]));
            block_at = stream_block(&probe);
        }
        av[n] = (const uint8_t *)b->form;
        al[n++] = (uint32_t)strlen(b->form);
        for (i = 1; i < argc; i++) {
            if ((b->timeout_at == TIMEOUT_LAST && i == argc - 1) ||
                (b->timeout_at == TIMEOUT_FIRST && i == 1) ||
                (block_at && (i == block_at - 1 || i == block_at)))
                continue;
            av[n] = argv[i];
            al[n++] = argl[i];
        }
        run(x, n, av, al, &c);
        if (is_nil(&c)) {
            RedisModule_Free(c.bytes);
            return 0;
        }
        reply(sink, c.status, c.bytes, c.len, NULL, 0);
        RedisModule_Free(c.bytes);
        return 1;
    }
    /* One key after the other, as Redis serves BLPOP's keys: the first that has a value. */
    av[0] = (const uint8_t *)b->form;
    al[0] = (uint32_t)strlen(b->form);
    for (i = 1; i + 1 < argc; i++) {
        av[1] = argv[i];
        al[1] = argl[i];
        run(x, 2, av, al, &c);
        if (is_nil(&c)) {
            RedisModule_Free(c.bytes);
            continue;
        }
        if (c.status != CXL_ST_OK || c.bytes[0] == '-') {
            reply(sink, c.status, c.bytes, c.len, NULL, 0);      /* WRONGTYPE and kin */
        } else if (b->shape == POP_PER_KEY) {
            /* [key, value] */
            hn = snprintf(head, sizeof(head), "*2\r\n$%u\r\n", argl[i]);
            struct capture whole = { .status = CXL_ST_OK };
            whole.len = (uint32_t)hn + argl[i] + 2;
            whole.bytes = RedisModule_Alloc(whole.len + c.len);
            memcpy(whole.bytes, head, (size_t)hn);
            memcpy(whole.bytes + hn, argv[i], argl[i]);
            memcpy(whole.bytes + hn + argl[i], "\r\n", 2);
            memcpy(whole.bytes + whole.len, c.bytes, c.len);
            reply(sink, CXL_ST_OK, whole.bytes, whole.len + c.len, NULL, 0);
            RedisModule_Free(whole.bytes);
        } else {
            /* ZPOPMIN's [member, score] becomes [key, member, score] */
            uint32_t skip = c.len >= 4 && !memcmp(c.bytes, "*2\r\n", 4) ? 4 : 0;

            hn = snprintf(head, sizeof(head), "*3\r\n$%u\r\n", argl[i]);
            struct capture whole = { .status = CXL_ST_OK };
            whole.len = (uint32_t)hn + argl[i] + 2;
            whole.bytes = RedisModule_Alloc(whole.len + c.len - skip);
            memcpy(whole.bytes, head, (size_t)hn);
            memcpy(whole.bytes + hn, argv[i], argl[i]);
            memcpy(whole.bytes + hn + argl[i], "\r\n", 2);
            memcpy(whole.bytes + whole.len, c.bytes + skip, c.len - skip);
            reply(sink, CXL_ST_OK, whole.bytes, whole.len + c.len - skip, NULL, 0);
            RedisModule_Free(whole.bytes);
        }
        RedisModule_Free(c.bytes);
        return 1;
    }
    return 0;
}

/* ---- Blocking and unblocking ---------------------------------------------------------- */

static void keep(struct drv_block *bl, const struct cxl_req *req)
{
    uint32_t i, total = 0;
    uint8_t *p;

    for (i = 0; i < req->argc; i++)
        total += req->argl[i];
    bl->buf = RedisModule_Alloc(total ? total : 1);
    bl->req = *req;
    for (i = 0, p = bl->buf; i < req->argc; i++) {
        memcpy(p, req->argv[i], req->argl[i]);
        bl->req.argv[i] = p;
        p += req->argl[i];
    }
}

/* Blocked until the caller's own condition (pubsub.c: Redis's confirmations), looked at
 * again from retry_ns on; the poll thread does not sleep meanwhile (poll.c may_sleep). */
void drv_block_hold(struct drv_block *bl, const struct cxl_req *req, uint64_t confirm_until,
                    uint64_t retry_ns)
{
    keep(bl, req);
    bl->active = 1;
    bl->started = 1;                    /* channel.c records the request's id */
    bl->events_seen = __atomic_load_n(&drv_keyspace_events, __ATOMIC_RELAXED);
    bl->seq = ++block_seq;
    bl->deadline_ns = 0;
    bl->retry_ns = retry_ns;
    bl->confirm_until = confirm_until;
    __atomic_store_n(&drv_blocked_sessions, drv_blocked_sessions + 1, __ATOMIC_RELAXED);
}

/* ---- WAIT ----------------------------------------------------------------------------- */

/*
 * The replicas that acknowledged *offset of the replication stream, as Redis counts them for
 * WAIT (online, ack offset at least *offset), from INFO replication: slave<i> (or replica<i>)
 * is "ip=...,port=...,state=online,offset=<ack>,lag=...". With `now`, *offset is first set
 * to master_repl_offset, the offset of every write so far.
 */
static long long replica_acks(RedisModuleCtx *ctx, uint64_t *offset, int now)
{
    RedisModuleServerInfoData *info = RedisModule_GetServerInfo(ctx, "replication");
    long long n = 0;
    char field[24];
    int i, err = 0;

    if (!info)
        return 0;
    if (now) {
        *offset = RedisModule_ServerInfoGetFieldUnsigned(info, "master_repl_offset", &err);
        if (err)
            *offset = 0;
    }
    for (i = 0; i < 4096; i++) {
        const char *v, *o;

        snprintf(field, sizeof(field), "slave%d", i);
        if (!(v = RedisModule_ServerInfoGetFieldC(info, field))) {
            snprintf(field, sizeof(field), "replica%d", i);
            if (!(v = RedisModule_ServerInfoGetFieldC(info, field)))
                break;
        }
        o = strstr(v, "offset=");
        if (strstr(v, "state=online") && o && strtoull(o + 7, NULL, 10) >= *offset)
            n++;
    }
    RedisModule_FreeServerInfo(ctx, info);
    return n;
}

static void reply_count(drv_reply_fn *reply, void *sink, long long n)
{
    char text[32];

    snprintf(text, sizeof(text), ":%lld\r\n", n);
    line(reply, sink, text);
}

/*
 * WAIT numreplicas timeout, as Redis's waitCommand: refused on a replica; numreplicas an
 * integer, the timeout whole milliseconds (0: for ever); answered with the count of replicas
 * that acknowledged the replication offset, when enough did or at the timeout.
 *
 * The offset: the writes of a hold are propagated when the poll thread unlocks the GIL
 * (poll.c), so WAIT always blocks first and takes master_repl_offset in a later hold, which
 * covers every write of the session before it (Redis takes the offset after the client's last
 * write: ours may be later, never earlier, so it never counts a replica that lacks one of the
 * session's writes; tests/ring/test_ring_wait.py). Blocked, it looks every WAIT_RETRY_NS (an
 * ack is no keyspace event), and the poll thread does not sleep meanwhile (poll.c may_sleep).
 * Redis asks its replicas for an ack at once (REPLCONF GETACK); a module cannot, so ours
 * count the acks replicas send every second.
 */
static int wait_request(struct drv_exec *x, const struct cxl_req *req, drv_reply_fn *reply,
                        void *sink)
{
    struct drv_block *bl = x->block;
    uint64_t now = cxl_now_ns();
    long long want, acks;
    double timeout = 0;
    char buf[32], *end;

    if (bl->active) {                   /* tried again */
        if (bl->wait_hold == drv_hold_seq) {
            bl->retry_ns = now;         /* the hold it came in: its writes not propagated */
            return 1;
        }
        if (bl->wait_offset == UINT64_MAX)  /* the first look after that hold */
            replica_acks(x->ctx, &bl->wait_offset, 1);
        acks = replica_acks(x->ctx, &bl->wait_offset, 0);
        if (acks >= bl->wait_replicas || (bl->deadline_ns && now >= bl->deadline_ns)) {
            reply_count(reply, sink, acks);
            drv_block_clear(bl);
        } else {
            bl->retry_ns = now + WAIT_RETRY_NS;
        }
        return 1;
    }
    if (req->argc != 3) {
        line(reply, sink, "-ERR wrong number of arguments for 'wait' command\r\n");
        return 1;
    }
    if (RedisModule_GetContextFlags(x->ctx) & REDISMODULE_CTX_FLAGS_SLAVE) {
        line(reply, sink, "-ERR WAIT cannot be used with replica instances\r\n");
        return 1;
    }
    errno = 0;
    if (req->argl[1] == 0 || req->argl[1] >= sizeof(buf))
        goto not_integer;
    memcpy(buf, req->argv[1], req->argl[1]);
    buf[req->argl[1]] = '\0';
    want = strtoll(buf, &end, 10);
    if (errno || *end)
        goto not_integer;
    if (parse_timeout(req->argv[2], req->argl[2], 1, &timeout, reply, sink) < 0 ||
        !drv_acl_allowed(x, req->argc, req->argv, req->argl, reply, sink))
        return 1;
    keep(bl, req);
    bl->active = 1;
    bl->started = 1;                    /* channel.c records the request's id */
    bl->events_seen = __atomic_load_n(&drv_keyspace_events, __ATOMIC_RELAXED);
    bl->seq = ++block_seq;
    bl->deadline_ns = timeout > 0 ? now + (uint64_t)(timeout * 1e9) : 0;
    bl->retry_ns = now;                 /* looked at again in the next hold */
    bl->wait_hold = drv_hold_seq;
    bl->wait_offset = UINT64_MAX;       /* taken then */
    bl->wait_replicas = want;
    __atomic_store_n(&drv_blocked_sessions, drv_blocked_sessions + 1, __ATOMIC_RELAXED);
    return 1;
not_integer:
    line(reply, sink, "-ERR value is not an integer or out of range\r\n");
    return 1;
}

int drv_block_request(struct drv_exec *x, const struct cxl_req *req, drv_reply_fn *reply,
                      void *sink)
{
    const struct blocking *b;
    struct drv_block *bl = x->block;
    double timeout = 0;
    uint64_t events, now;
    char text[128];
    static struct cxl_req stream_req;   /* poll thread only: XREAD with "$" resolved */
    static char ids[64][STREAM_ID_MAX];

    if (!bl || req->op != CXL_OP_CMD || req->argc < 1 ||
        !(b = lookup(req->argv[0], req->argl[0])))
        return 0;
    if (b->shape == REPLICA_ACKS)
        return wait_request(x, req, reply, sink);
    if (!bl->active) {                  /* a new request, not the kept one tried again */
        uint32_t at = b->timeout_at == TIMEOUT_LAST ? req->argc - 1u : 1u;

        if (b->shape == STREAM_READ) {  /* its arity is XREAD's own to check */
            if (!(at = stream_block(req)))
                return 0;               /* XREAD without BLOCK: a plain CMD */
        } else if (req->argc < b->min_argc || (b->max_argc && req->argc > b->max_argc)) {
            snprintf(text, sizeof(text), "-ERR wrong number of arguments for '%s' command\r\n",
                     b->name);
            line(reply, sink, text);
            return 1;
        }
        if (parse_timeout(req->argv[at], req->argl[at], b->shape == STREAM_READ, &timeout,
                          reply, sink) < 0 ||
            !drv_acl_allowed(x, req->argc, req->argv, req->argl, reply, sink))
            return 1;
        if (drv_txn_subscribe_keyspace(x->ctx) < 0) {
            line(reply, sink, "-ERR cxl_ring: blocking commands need keyspace events, and "
                 "Redis refused the subscription\r\n");
            return 1;
        }
        if (b->shape == STREAM_READ && req->argl[0] == 5) {
            stream_req = *req;          /* XREAD: "$" becomes the stream's last entry */
            stream_fix_dollar(x, &stream_req, ids, 64);
            req = &stream_req;
        }
    }
    events = __atomic_load_n(&drv_keyspace_events, __ATOMIC_RELAXED);
    if (attempt(x, b, req->argc, req->argv, req->argl, reply, sink)) {
        drv_block_clear(bl);
        return 1;
    }
    now = cxl_now_ns();
    if (bl->active) {                   /* tried again: still nothing */
        if (bl->deadline_ns && now >= bl->deadline_ns) {
            line(reply, sink, b->nil);
            drv_block_clear(bl);
        } else {
            bl->events_seen = events;
        }
        return 1;
    }
    keep(bl, req);
    bl->active = 1;
    bl->started = 1;                    /* channel.c records the request's id */
    bl->events_seen = events;
    bl->seq = ++block_seq;
    bl->deadline_ns = timeout > 0 ? now + (uint64_t)(timeout * 1e9) : 0;
    __atomic_store_n(&drv_blocked_sessions, drv_blocked_sessions + 1, __ATOMIC_RELAXED);
    return 1;
}
