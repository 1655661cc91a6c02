/*
 * txn.c - per-session state a Redis connection has: SELECT, MULTI/EXEC/DISCARD,
 * WATCH/UNWATCH and CLIENT SETNAME/GETNAME/ID (docs/ring-protocol.md section 13).
 *
 * A CMD runs through RedisModule_Call on a client with no connection, so these
 * commands, which live in the connection, cannot simply run (Redis refuses them
 * there: flag noscript). The driver keeps them per session instead:
 *
 *   SELECT n      the session's database: every later request runs in it;
 *   MULTI         later CMDs are checked and queued (+QUEUED); a refused or unknown
 *                 one is answered at once and makes EXEC answer EXECABORT;
 *   EXEC          the queued commands run one after the other in one GIL hold, so no
 *                 other client (TCP or ring) runs between them, and the reply is the
 *                 array of their replies; a watched key that changed since WATCH
 *                 makes EXEC answer a nil array and run nothing;
 *   DISCARD       drops the queue; WATCH key... / UNWATCH as in Redis.
 *
 * "Changed" is what Redis tells modules: a keyspace event on the key (any write,
 * expiry or eviction, by any client; subscribed at the first WATCH) or a
 * FLUSHDB/FLUSHALL of its database. The
 * watch table and the keyspace callback are touched only under the GIL (the poll
 * thread's requests, the main thread's notifications), which orders them.
 *
 * A new session of the channel starts again in database 0 with nothing queued or
 * watched, as a new connection does.
 */
#include "driver.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define WATCH_BUCKETS 1024u             /* power of two */

struct drv_watch {
    struct drv_watch *next;             /* in its bucket */
    struct drv_watch *next_of_txn;      /* in its session's list */
    struct drv_txn *txn;
    int db;
    uint32_t len;
    uint32_t hash;
    uint8_t key[];
};

static struct drv_watch *buckets[WATCH_BUCKETS];
static uint32_t watches;                /* entries in the table */

static uint32_t key_hash(int db, const uint8_t *k, uint32_t n)
{
    uint32_t h = 2166136261u ^ (uint32_t)db;
    uint32_t i;

    for (i = 0; i < n; i++)
        h = (h ^ k[i]) * 16777619u;
    return h;
}

static void unwatch_all(struct drv_txn *t)
{
    struct drv_watch *w = t->watched, *next;

    for (; w; w = next) {
        struct drv_watch **p = &buckets[w->hash & (WATCH_BUCKETS - 1)];

        next = w->next_of_txn;
        while (*p && *p != w)
            p = &(*p)->next;
        if (*p)
            *p = w->next;
        RedisModule_Free(w);
        watches--;
    }
    t->watched = NULL;
    t->nwatch = 0;
    t->dirty = 0;
}

static void drop_queue(struct drv_txn *t)
{
    uint32_t i;

    for (i = 0; i < t->nq; i++)
        RedisModule_Free(t->queue[i]);
    RedisModule_Free(t->queue);
    t->queue = NULL;
    t->nq = 0;
    t->qbytes = 0;
    t->multi = 0;
    t->abort = 0;
}

/* Everything a session held: its queue and its watches (a new session, or the end). */
void drv_txn_reset(struct drv_txn *t)
{
    drop_queue(t);
    unwatch_all(t);
    t->db = 0;
    t->name[0] = '\0';
}

/* ---- What Redis tells us: a key changed, a database was flushed ------------------- */

static int on_keyspace(RedisModuleCtx *ctx, int type, const char *event,
                       RedisModuleString *key)
{
    size_t n = 0;
    const uint8_t *k;
    int db;
    uint32_t h;
    struct drv_watch *w;

    (void)type;
    (void)event;
    /* Blocked sessions (block.c) try again after any event: counted, and a sleeping poll
     * thread woken (this is the main thread when a TCP client wrote). */
    __atomic_store_n(&drv_keyspace_events, drv_keyspace_events + 1, __ATOMIC_RELAXED);
    if (__atomic_load_n(&drv_blocked_sessions, __ATOMIC_RELAXED))
        drv_kick_server();
    if (!watches)
        return REDISMODULE_OK;
    k = (const uint8_t *)RedisModule_StringPtrLen(key, &n);
    db = RedisModule_GetSelectedDb(ctx);
    h = key_hash(db, k, (uint32_t)n);
    for (w = buckets[h & (WATCH_BUCKETS - 1)]; w; w = w->next)
        if (w->hash == h && w->db == db && w->len == n && !memcmp(w->key, k, n))
            w->txn->dirty = 1;
    return REDISMODULE_OK;
}

static void on_flush(RedisModuleCtx *ctx, RedisModuleEvent eid, uint64_t subevent, void *data)
{
    const RedisModuleFlushInfo *fi = data;
    uint32_t b;
    struct drv_watch *w;

    (void)ctx;
    (void)eid;
    if (subevent != REDISMODULE_SUBEVENT_FLUSHDB_START || !watches)
        return;
    for (b = 0; b < WATCH_BUCKETS; b++)
        for (w = buckets[b]; w; w = w->next)
            if (fi->dbnum == -1 || fi->dbnum == w->db)
                w->txn->dirty = 1;
}

int drv_txn_subscribe(RedisModuleCtx *ctx)
{
    return RedisModule_SubscribeToServerEvent(ctx, RedisModuleEvent_FlushDB, on_flush) ==
           REDISMODULE_ERR ? -1 : 0;
}

/*
 * Keyspace events from the first WATCH or blocked command on: a module's subscription
 * makes Redis build a module context for every write of every client, so a server whose
 * sessions never WATCH nor block does not pay it. Redis 7.0 has no way to unsubscribe: once subscribed, for the
 * server's life.
 */
static int keyspace_subscribed;

int drv_txn_subscribe_keyspace(RedisModuleCtx *ctx)
{
    if (keyspace_subscribed)
        return 0;
    if (RedisModule_SubscribeToKeyspaceEvents(ctx, REDISMODULE_NOTIFY_GENERIC |
            REDISMODULE_NOTIFY_STRING | REDISMODULE_NOTIFY_LIST | REDISMODULE_NOTIFY_SET |
            REDISMODULE_NOTIFY_HASH | REDISMODULE_NOTIFY_ZSET | REDISMODULE_NOTIFY_EXPIRED |
            REDISMODULE_NOTIFY_EVICTED | REDISMODULE_NOTIFY_STREAM, on_keyspace) ==
            REDISMODULE_ERR)
        return -1;
    keyspace_subscribed = 1;
    return 0;
}

/* ---- Replies ---------------------------------------------------------------------- */

static void resp_line(drv_reply_fn *reply, void *sink, const char *line)
{
    reply(sink, CXL_ST_OK, line, (uint32_t)strlen(line), NULL, 0);
}

static int is_word(const uint8_t *p, uint32_t n, const char *word)
{
    return n == strlen(word) && !strncasecmp((const char *)p, word, n);
}

/* The session's user may run this (MULTI, WATCH, BLPOP...)? Answers NOPERM when not. */
int drv_acl_allowed(struct drv_exec *x, uint32_t argc, const uint8_t *const *argv,
                    const uint32_t *argl, drv_reply_fn *reply, void *sink)
{
    RedisModuleString *args[CXL_MAX_ARGS];
    char line[DRV_ACL_TEXT + 64], name[32];
    uint32_t i;
    int rc;

    if (!x->call_user)
        return 1;
    for (i = 0; i < argc; i++)
        args[i] = RedisModule_CreateString(x->ctx, (const char *)argv[i], argl[i]);
    rc = RedisModule_ACLCheckCommandPermissions(x->call_user, args, (int)argc);
    if (rc != REDISMODULE_OK)
        RedisModule_ACLAddLogEntry(x->ctx, x->call_user, args[0], REDISMODULE_ACL_LOG_CMD);
    for (i = 0; i < argc; i++)
        RedisModule_FreeString(x->ctx, args[i]);
    if (rc == REDISMODULE_OK)
        return 1;
    for (i = 0; i < argl[0] && i + 1 < sizeof(name); i++)
        name[i] = (char)(argv[0][i] >= 'A' && argv[0][i] <= 'Z' ? argv[0][i] + 32 : argv[0][i]);
    name[i] = '\0';
    snprintf(line, sizeof(line), "-NOPERM User %s has no permissions to run the '%s' "
             "command\r\n", x->auth ? x->auth->user : "?", name);
    __atomic_store_n(&x->acl_denied, x->acl_denied + 1, __ATOMIC_RELAXED);
    resp_line(reply, sink, line);
    return 0;
}

/* ---- WATCH ------------------------------------------------------------------------ */

static void watch(struct drv_exec *x, struct drv_txn *t, uint32_t argc,
                  const uint8_t *const *argv, const uint32_t *argl, drv_reply_fn *reply,
                  void *sink)
{
    uint32_t i;

    if (argc < 2) {
        resp_line(reply, sink, "-ERR wrong number of arguments for 'watch' command\r\n");
        return;
    }
    if (drv_txn_subscribe_keyspace(x->ctx) < 0) {
        resp_line(reply, sink, "-ERR cxl_ring: WATCH needs keyspace events, and Redis "
                  "refused the subscription\r\n");
        return;
    }
    if (t->nwatch + argc - 1 > DRV_TXN_MAX_WATCH) {
        resp_line(reply, sink, "-ERR cxl_ring: a session watches at most 64 keys\r\n");
        return;
    }
    for (i = 1; i < argc; i++) {
        uint32_t h = key_hash(t->db, argv[i], argl[i]);
        struct drv_watch *w, **b = &buckets[h & (WATCH_BUCKETS - 1)];

        for (w = t->watched; w; w = w->next_of_txn)  /* already watched: once is enough */
            if (w->hash == h && w->db == t->db && w->len == argl[i] &&
                !memcmp(w->key, argv[i], argl[i]))
                break;
        if (w)
            continue;
        w = RedisModule_Alloc(sizeof(*w) + argl[i]);
        w->txn = t;
        w->db = t->db;
        w->len = argl[i];
        w->hash = h;
        memcpy(w->key, argv[i], argl[i]);
        w->next = *b;
        *b = w;
        w->next_of_txn = t->watched;
        t->watched = w;
        t->nwatch++;
        watches++;
    }
    resp_line(reply, sink, "+OK\r\n");
}

/* ---- MULTI: queue, EXEC: run ------------------------------------------------------- */

/* One queued command, packed: argc, then each argument as length and bytes. */
static uint8_t *pack(uint32_t argc, const uint8_t *const *argv, const uint32_t *argl,
                     uint64_t *size)
{
    uint64_t n = 4;
    uint32_t i;
    uint8_t *p, *at;

    for (i = 0; i < argc; i++)
        n += 4 + (uint64_t)argl[i];
    p = at = RedisModule_Alloc(n);
    memcpy(at, &argc, 4);
    at += 4;
    for (i = 0; i < argc; i++) {
        memcpy(at, &argl[i], 4);
        memcpy(at + 4, argv[i], argl[i]);
        at += 4 + argl[i];
    }
    *size = n;
    return p;
}

static uint32_t unpack(const uint8_t *p, const uint8_t **argv, uint32_t *argl)
{
    uint32_t argc, i;

    memcpy(&argc, p, 4);
    p += 4;
    for (i = 0; i < argc; i++) {
        memcpy(&argl[i], p, 4);
        argv[i] = p + 4;
        p += 4 + argl[i];
    }
    return argc;
}

static void queue(struct drv_exec *x, struct drv_txn *t, uint32_t argc,
                  const uint8_t *const *argv, const uint32_t *argl,
                  drv_reply_fn *reply, void *sink)
{
    char line[DRV_VERDICT_KEY + 160];
    uint64_t size = 0;
    int n;

    if ((n = drv_exec_vet(x, argc, argv, argl, line, sizeof(line))) > 0) {
        t->abort = 1;                   /* refused or unknown: EXEC answers EXECABORT */
        reply(sink, CXL_ST_OK, line, (uint32_t)n, NULL, 0);
        return;
    }
    if (t->nq == DRV_TXN_MAX_CMDS || t->qbytes > DRV_TXN_MAX_BYTES) {
        t->abort = 1;
        resp_line(reply, sink, "-ERR cxl_ring: a MULTI queues at most 1024 commands and "
                  "16 MiB\r\n");
        return;
    }
    if (!t->queue)
        t->queue = RedisModule_Alloc(DRV_TXN_MAX_CMDS * sizeof(*t->queue));
    t->queue[t->nq++] = pack(argc, argv, argl, &size);
    t->qbytes += size;
    resp_line(reply, sink, "+QUEUED\r\n");
}

/* EXEC's reply is built here: each queued command's reply, in order. */
struct gather {
    uint8_t *buf;
    uint64_t len, cap;
    int too_large;
};

static void gather_put(struct gather *g, const void *p, uint64_t n)
{
    if (g->len + n > g->cap) {
        uint64_t cap = g->cap ? g->cap : 4096;

        while (cap < g->len + n)
            cap *= 2;
        g->buf = RedisModule_Realloc(g->buf, cap);
        g->cap = cap;
    }
    memcpy(g->buf + g->len, p, n);
    g->len += n;
}

/* drv_exec_cmd's reply callback: a RESP reply, or an OOM/TOO_LARGE text made one. */
static void gather_reply(void *sinkp, uint8_t status, const void *p1, uint32_t n1,
                         const void *p2, uint32_t n2)
{
    struct gather *g = sinkp;

    (void)p2;
    (void)n2;
    if (status == CXL_ST_OK) {
        gather_put(g, p1, n1);
        return;
    }
    gather_put(g, "-", 1);
    gather_put(g, p1, n1);
    gather_put(g, "\r\n", 2);
}

static void exec(struct drv_exec *x, struct drv_txn *t, drv_reply_fn *reply, void *sink)
{
    const uint8_t *argv[CXL_MAX_ARGS];
    uint32_t argl[CXL_MAX_ARGS], i, argc;
    struct gather g = { 0 };
    char head[32];
    int n;

    if (t->abort) {
        resp_line(reply, sink, "-EXECABORT Transaction discarded because of previous "
                  "errors.\r\n");
    } else if (t->dirty) {
        resp_line(reply, sink, "*-1\r\n");      /* a watched key changed: nothing ran */
    } else {
        n = snprintf(head, sizeof(head), "*%u\r\n", t->nq);
        gather_put(&g, head, (uint64_t)n);
        /* All in this GIL hold: no other client runs in between. */
        for (i = 0; i < t->nq; i++) {
            argc = unpack(t->queue[i], argv, argl);
            drv_exec_cmd(x, argc, argv, argl, gather_reply, &g);
        }
        if (g.len > x->max_value)
            reply(sink, CXL_ST_TOO_LARGE, "reply is larger than max_value_size", 35, NULL, 0);
        else
            reply(sink, CXL_ST_OK, g.buf, (uint32_t)g.len, NULL, 0);
        RedisModule_Free(g.buf);
    }
    drop_queue(t);
    unwatch_all(t);
}

/* ---- Dispatch ------------------------------------------------------------------- */

/*
 * The CLIENT subcommands a session answers as a connection would: SETNAME, GETNAME and ID.
 * 0 for the others: refused as any CMD that needs a connection (section 4.2).
 */
static int client(struct drv_exec *x, struct drv_txn *t, uint32_t argc,
                  const uint8_t *const *argv, const uint32_t *argl, drv_reply_fn *reply,
                  void *sink)
{
    char line[DRV_CLIENT_NAME + 32];
    uint32_t i;
    int n;

    if (is_word(argv[1], argl[1], "setname") || is_word(argv[1], argl[1], "getname") ||
        is_word(argv[1], argl[1], "id")) {
        if (!drv_acl_allowed(x, argc, argv, argl, reply, sink))
            return 1;
    } else {
        return 0;
    }
    if (is_word(argv[1], argl[1], "setname")) {
        if (argc != 3) {
            resp_line(reply, sink, "-ERR wrong number of arguments for 'client|setname' "
                      "command\r\n");
            return 1;
        }
        for (i = 0; i < argl[2]; i++)
            if (argv[2][i] < '!' || argv[2][i] > '~')
                break;
        if (i < argl[2] || argl[2] >= sizeof(t->name)) {
            resp_line(reply, sink, i < argl[2]
                      ? "-ERR Client names cannot contain spaces, newlines or special "
                        "characters.\r\n"
                      : "-ERR cxl_ring: a client name is at most 127 bytes\r\n");
            return 1;
        }
        memcpy(t->name, argv[2], argl[2]);
        t->name[argl[2]] = '\0';
        resp_line(reply, sink, "+OK\r\n");
    } else if (is_word(argv[1], argl[1], "getname")) {
        if (!t->name[0]) {
            resp_line(reply, sink, "$-1\r\n");
        } else {
            n = snprintf(line, sizeof(line), "$%zu\r\n%s\r\n", strlen(t->name), t->name);
            reply(sink, CXL_ST_OK, line, (uint32_t)n, NULL, 0);
        }
    } else {
        n = snprintf(line, sizeof(line), ":%llu\r\n", (unsigned long long)t->client_id);
        reply(sink, CXL_ST_OK, line, (uint32_t)n, NULL, 0);
    }
    return 1;
}

/*
 * Before a request runs (after acl.c admitted it): 1 when this answered it (a
 * connection command, or a command queued in MULTI), 0 when it runs as usual, in
 * the session's database.
 */
int drv_txn_request(struct drv_exec *x, const struct cxl_req *req, drv_reply_fn *reply,
                    void *sink)
{
    struct drv_txn *t = x->txn;
    const uint8_t *const *argv = req->argv;
    const uint32_t *argl = req->argl;
    uint32_t argc = req->argc;

    if (!t)
        return 0;
    if (t->gen != x->session_gen) {     /* a new session: a new connection's state */
        static uint64_t next_client_id;

        drv_txn_reset(t);
        t->gen = x->session_gen;
        t->client_id = ++next_client_id;
    }
    if (x->db != t->db) {
        if (RedisModule_SelectDb(x->ctx, t->db) == REDISMODULE_OK)
            x->db = t->db;
    }
    if (req->op == CXL_OP_PING)
        return 0;
    if (req->op != CXL_OP_CMD) {
        if (!t->multi)
            return 0;
        static const char fast[] = "ERR cxl_ring: inside MULTI send GET, SET and DEL as "
                                   "CMD (a fast op has no QUEUED reply)";

        t->abort = 1;
        reply(sink, CXL_ST_ERR, fast, sizeof(fast) - 1, NULL, 0);
        return 1;
    }
    if (is_word(argv[0], argl[0], "multi")) {
        if (!drv_acl_allowed(x, argc, argv, argl, reply, sink))
            return 1;
        if (t->multi)
            resp_line(reply, sink, "-ERR MULTI calls can not be nested\r\n");
        else if (argc != 1)
            resp_line(reply, sink, "-ERR wrong number of arguments for 'multi' command\r\n");
        else {
            t->multi = 1;
            resp_line(reply, sink, "+OK\r\n");
        }
        return 1;
    }
    if (is_word(argv[0], argl[0], "exec")) {
        if (!drv_acl_allowed(x, argc, argv, argl, reply, sink))
            return 1;
        if (!t->multi)
            resp_line(reply, sink, "-ERR EXEC without MULTI\r\n");
        else
            exec(x, t, reply, sink);
        return 1;
    }
    if (is_word(argv[0], argl[0], "discard")) {
        if (!t->multi) {
            resp_line(reply, sink, "-ERR DISCARD without MULTI\r\n");
        } else {
            drop_queue(t);
            unwatch_all(t);
            resp_line(reply, sink, "+OK\r\n");
        }
        return 1;
    }
    if (t->multi) {
        if (is_word(argv[0], argl[0], "watch")) {
            resp_line(reply, sink, "-ERR WATCH inside MULTI is not allowed\r\n");
            return 1;
        }
        if (is_word(argv[0], argl[0], "select")) {
            t->abort = 1;
            resp_line(reply, sink, "-ERR cxl_ring: SELECT inside MULTI is not supported: "
                      "SELECT before MULTI\r\n");
            return 1;
        }
        queue(x, t, argc, argv, argl, reply, sink);
        return 1;
    }
    if (is_word(argv[0], argl[0], "watch")) {
        if (drv_acl_allowed(x, argc, argv, argl, reply, sink))
            watch(x, t, argc, argv, argl, reply, sink);
        return 1;
    }
    if (is_word(argv[0], argl[0], "unwatch")) {
        unwatch_all(t);
        resp_line(reply, sink, "+OK\r\n");
        return 1;
    }
    if (is_word(argv[0], argl[0], "select")) {
        char num[16];
        char *end;
        long db;

        if (!drv_acl_allowed(x, argc, argv, argl, reply, sink))
            return 1;
        if (argc != 2 || argl[1] == 0 || argl[1] >= sizeof(num)) {
            resp_line(reply, sink, argc != 2 ? "-ERR wrong number of arguments for 'select' "
                      "command\r\n" : "-ERR value is not an integer or out of range\r\n");
            return 1;
        }
        memcpy(num, argv[1], argl[1]);
        num[argl[1]] = '\0';
        db = strtol(num, &end, 10);
        if (*end || db < 0 || db > 0x7fffffff) {
            resp_line(reply, sink, "-ERR value is not an integer or out of range\r\n");
        } else if (RedisModule_SelectDb(x->ctx, (int)db) != REDISMODULE_OK) {
            RedisModule_SelectDb(x->ctx, x->db);
            resp_line(reply, sink, "-ERR DB index is out of range\r\n");
        } else {
            x->db = t->db = (int)db;
            resp_line(reply, sink, "+OK\r\n");
        }
        return 1;
    }
    if (is_word(argv[0], argl[0], "client") && argc >= 2)
        return client(x, t, argc, argv, argl, reply, sink);
    return 0;
}
