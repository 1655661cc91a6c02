/*
 * exec.c - execute ring requests against the real keyspace.
 *
 * Runs on the poll thread, always between RedisModule_ThreadSafeContextLock
 * and Unlock. GET, SET and DEL take the low-level key API (OpenKey, StringDMA,
 * StringSet) and replicate what they changed with RedisModule_Replicate, which
 * Redis propagates to the AOF and to replicas when the GIL is released (several
 * writes of one GIL hold become one MULTI/EXEC). CMD goes through
 * RedisModule_Call and answers the reply's RESP2 bytes.
 *
 * Every function calls its reply callback exactly once.
 */
#include "driver.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char OOM_TEXT[] = "OOM command not allowed when used memory > 'maxmemory'.";
static const char READONLY_TEXT[] = "READONLY You can't write against a read only replica.";
static const char WRONGTYPE_TEXT[] =
    "WRONGTYPE Operation against a key holding the wrong kind of value";

static void reply_text(drv_reply_fn *reply, void *sink, uint8_t status, const char *text)
{
    reply(sink, status, text, (uint32_t)strlen(text), NULL, 0);
}

/* Called once per GIL hold: facts that do not change while we hold the lock. */
void drv_exec_begin_batch(struct drv_exec *x)
{
    int flags = RedisModule_GetContextFlags(x->ctx);

    x->readonly = (flags & REDISMODULE_CTX_FLAGS_SLAVE) &&
                  (flags & REDISMODULE_CTX_FLAGS_READONLY);
    /*
     * True while clients are paused (CLIENT PAUSE, FAILOVER, a shutdown waiting
     * for replicas). Redis asserts that nothing is propagated then, so writes
     * wait, as Redis makes its own clients wait.
     */
    x->paused = RedisModule_AvoidReplicaTraffic();
    x->writes = 0;
    x->deferred = 0;
}

/* Like processCommand()'s maxmemory check: used memory above maxmemory refuses writes. */
static int over_maxmemory(void)
{
    return RedisModule_GetUsedMemoryRatio() > 1.0f;
}

/* ---- GET key -> OK value | NOT_FOUND -------------------------------------- */

void drv_exec_get(struct drv_exec *x, const uint8_t *k, uint32_t kl,
                  drv_reply_fn *reply, void *sink)
{
    RedisModuleString *key = RedisModule_CreateString(x->ctx, (const char *)k, kl);
    RedisModuleKey *h = RedisModule_OpenKey(x->ctx, key, REDISMODULE_READ);
    int type = h ? RedisModule_KeyType(h) : REDISMODULE_KEYTYPE_EMPTY;

    if (type == REDISMODULE_KEYTYPE_EMPTY) {
        reply(sink, CXL_ST_NOT_FOUND, NULL, 0, NULL, 0);
    } else if (type != REDISMODULE_KEYTYPE_STRING) {
        reply_text(reply, sink, CXL_ST_ERR, WRONGTYPE_TEXT);
    } else {
        size_t n = 0;
        const char *p = RedisModule_StringDMA(h, &n, REDISMODULE_READ);

        if (!p)
            reply_text(reply, sink, CXL_ST_ERR, WRONGTYPE_TEXT);
        else if (n > x->max_value)
            reply_text(reply, sink, CXL_ST_TOO_LARGE, "value is larger than max_value_size");
        else
            reply(sink, CXL_ST_OK, p, (uint32_t)n, NULL, 0);
    }
    if (h)
        RedisModule_CloseKey(h);
    RedisModule_FreeString(x->ctx, key);
}

/* ---- SET key value [ttl_ms] -> OK ------------------------------------------- */

void drv_exec_set(struct drv_exec *x, const uint8_t *k, uint32_t kl,
                  const uint8_t *v, uint32_t vl, uint64_t ttl_ms,
                  drv_reply_fn *reply, void *sink)
{
    RedisModuleString *key, *val;
    RedisModuleKey *h;
    long long expire_at = 0;

    if (x->readonly) {
        reply_text(reply, sink, CXL_ST_ERR, READONLY_TEXT);
        return;
    }
    if (over_maxmemory()) {
        reply_text(reply, sink, CXL_ST_OOM, OOM_TEXT);
        return;
    }
    key = RedisModule_CreateString(x->ctx, (const char *)k, kl);
    val = RedisModule_CreateString(x->ctx, (const char *)v, vl);
    h = RedisModule_OpenKey(x->ctx, key, REDISMODULE_WRITE);
    if (!h || RedisModule_StringSet(h, val) != REDISMODULE_OK) {
        reply_text(reply, sink, CXL_ST_ERR, "ERR the key could not be written");
        goto out;
    }
    if (ttl_ms) {
        /* Absolute time, as Redis itself propagates SET PX (PXAT): replicas and
         * the AOF expire the key at the same instant. */
        expire_at = RedisModule_Milliseconds() + (long long)ttl_ms;
        if (RedisModule_SetAbsExpire(h, expire_at) != REDISMODULE_OK) {
            reply_text(reply, sink, CXL_ST_ERR, "ERR the TTL could not be set");
            goto out;
        }
        /* "s": the value object is shared with the keyspace, not copied again. */
        if (RedisModule_Replicate(x->ctx, "SET", "sscl", key, val, "PXAT", expire_at) !=
            REDISMODULE_OK)
            drv_log("warning", DRV_NAME ": SET could not be replicated");
    } else if (RedisModule_Replicate(x->ctx, "SET", "ss", key, val) != REDISMODULE_OK) {
        drv_log("warning", DRV_NAME ": SET could not be replicated");
    }
    RedisModule_NotifyKeyspaceEvent(x->ctx, REDISMODULE_NOTIFY_STRING, "set", key);
    if (ttl_ms)
        RedisModule_NotifyKeyspaceEvent(x->ctx, REDISMODULE_NOTIFY_GENERIC, "expire", key);
    x->writes++;
    reply(sink, CXL_ST_OK, NULL, 0, NULL, 0);
out:
    if (h)
        RedisModule_CloseKey(h);
    RedisModule_FreeString(x->ctx, val);
    RedisModule_FreeString(x->ctx, key);
}

/* ---- DEL key... -> OK u64 removed ------------------------------------------ */

void drv_exec_del(struct drv_exec *x, uint32_t argc, const uint8_t *const *argv,
                  const uint32_t *argl, drv_reply_fn *reply, void *sink)
{
    uint64_t removed = 0;
    uint32_t i;

    if (x->readonly) {
        reply_text(reply, sink, CXL_ST_ERR, READONLY_TEXT);
        return;
    }
    for (i = 0; i < argc; i++) {
        RedisModuleString *key = RedisModule_CreateString(x->ctx, (const char *)argv[i],
                                                          argl[i]);
        RedisModuleKey *h = RedisModule_OpenKey(x->ctx, key, REDISMODULE_WRITE);

        if (h && RedisModule_KeyType(h) != REDISMODULE_KEYTYPE_EMPTY &&
            RedisModule_DeleteKey(h) == REDISMODULE_OK) {
            removed++;
            if (RedisModule_Replicate(x->ctx, "DEL", "s", key) != REDISMODULE_OK)
                drv_log("warning", DRV_NAME ": DEL could not be replicated");
            RedisModule_NotifyKeyspaceEvent(x->ctx, REDISMODULE_NOTIFY_GENERIC, "del", key);
            x->writes++;
        }
        if (h)
            RedisModule_CloseKey(h);
        RedisModule_FreeString(x->ctx, key);
    }
    reply(sink, CXL_ST_OK, &removed, sizeof(removed), NULL, 0);
}

/* ---- CMD argv... -> OK RESP2 reply ----------------------------------------- */

/*
 * RedisModule_Call flags: ! replicate, E errors as replies, M refuse deny-oom
 * commands over maxmemory, S script mode (no MULTI, SUBSCRIBE, WAIT...: what a
 * stateless request cannot carry; also refuses writes on a read-only replica).
 */
#define DRV_CALL_FLAGS "!EMSv"

void drv_exec_cmd(struct drv_exec *x, uint32_t argc, const uint8_t *const *argv,
                  const uint32_t *argl, drv_reply_fn *reply, void *sink)
{
    RedisModuleCallReply *r;
    const char *proto;
    size_t plen = 0;
    uint32_t i;

    /* RedisModule_Call takes the name as a C string: refuse what it would misread. */
    if (argl[0] == 0 || argl[0] >= sizeof(x->cmdname) || memchr(argv[0], 0, argl[0])) {
        static const char unknown[] = "-ERR unknown command\r\n";
        reply(sink, CXL_ST_OK, unknown, sizeof(unknown) - 1, NULL, 0);
        return;
    }
    memcpy(x->cmdname, argv[0], argl[0]);
    x->cmdname[argl[0]] = '\0';
    for (i = 1; i < argc; i++)
        x->argv[i - 1] = RedisModule_CreateString(x->ctx, (const char *)argv[i], argl[i]);

    errno = 0;
    r = RedisModule_Call(x->ctx, x->cmdname, DRV_CALL_FLAGS, x->argv, (size_t)(argc - 1));
    if (!r) {
        char text[128];
        int n = snprintf(text, sizeof(text), "-ERR command refused (%s)\r\n",
                         errno ? strerror(errno) : "no reply");
        reply(sink, CXL_ST_OK, text, (uint32_t)n, NULL, 0);
    } else {
        proto = RedisModule_CallReplyProto(r, &plen);
        if (!proto) {
            static const char noproto[] = "-ERR reply has no RESP form\r\n";
            reply(sink, CXL_ST_OK, noproto, sizeof(noproto) - 1, NULL, 0);
        } else if (RedisModule_CallReplyType(r) == REDISMODULE_REPLY_ERROR && plen >= 6 &&
                   !memcmp(proto, "-OOM ", 5)) {
            /* maxmemory: its own status, the text without '-' and CRLF */
            reply(sink, CXL_ST_OOM, proto + 1, (uint32_t)(plen - 3), NULL, 0);
        } else if (plen > x->max_value) {
            reply_text(reply, sink, CXL_ST_TOO_LARGE, "reply is larger than max_value_size");
        } else {
            reply(sink, CXL_ST_OK, proto, (uint32_t)plen, NULL, 0);
        }
        RedisModule_FreeCallReply(r);
        x->writes++;                    /* may have written: wake the event loop */
    }
    for (i = 1; i < argc; i++)
        RedisModule_FreeString(x->ctx, x->argv[i - 1]);
}

/* ---- Dispatch ------------------------------------------------------------- */

/*
 * Must this request wait for a client pause to end? Every op but GET and PING
 * may write (a CMD's flags are not known before it runs), so they all wait.
 */
int drv_exec_must_wait(struct drv_exec *x, uint8_t op)
{
    if (!x->paused || op == CXL_OP_GET || op == CXL_OP_PING)
        return 0;
    x->deferred = 1;
    return 1;
}

void drv_exec_request(struct drv_exec *x, const struct cxl_req *req,
                      drv_reply_fn *reply, void *sink)
{
    switch (req->op) {
    case CXL_OP_GET:
        drv_exec_get(x, req->argv[0], req->argl[0], reply, sink);
        break;
    case CXL_OP_SET:
        drv_exec_set(x, req->argv[0], req->argl[0], req->argv[1], req->argl[1],
                     (req->flags & CXL_FLAG_TTL) ? req->ttl_ms : 0, reply, sink);
        break;
    case CXL_OP_DEL:
        drv_exec_del(x, req->argc, req->argv, req->argl, reply, sink);
        break;
    case CXL_OP_CMD:
        drv_exec_cmd(x, req->argc, req->argv, req->argl, reply, sink);
        break;
    case CXL_OP_PING:
        reply(sink, CXL_ST_OK, NULL, 0, NULL, 0);
        break;
    default:                            /* cxl_req_decode() let no other op through */
        reply_text(reply, sink, CXL_ST_UNKNOWN_OP, "unknown op");
        break;
    }
}
