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
#include <strings.h>

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
    drv_acl_begin_batch(x);
}

/* Like processCommand()'s maxmemory check: used memory above maxmemory refuses writes. */
static int over_maxmemory(void)
{
    return RedisModule_GetUsedMemoryRatio() > 1.0f;
}

/* The key string acl.c made to check this request, or a new one. */
static RedisModuleString *take_key(struct drv_exec *x, const uint8_t *k, uint32_t kl)
{
    RedisModuleString *key = x->acl_key;

    x->acl_key = NULL;
    return key ? key : RedisModule_CreateString(x->ctx, (const char *)k, kl);
}

/* ---- GET key -> OK value | NOT_FOUND -------------------------------------- */

void drv_exec_get(struct drv_exec *x, const uint8_t *k, uint32_t kl,
                  drv_reply_fn *reply, void *sink)
{
    RedisModuleString *key = take_key(x, k, kl);
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
    key = take_key(x, k, kl);
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

/* ---- Which commands a CMD may run ------------------------------------------ */

/*
 * A CMD runs on the poll thread through RedisModule_Call, on a temporary
 * client that has no connection and must not block (Redis asserts, and
 * aborts, when a command leaves that client blocked). Redis says itself which
 * commands cannot run like that, in the flags COMMAND INFO reports; these are
 * refused with an error reply before RedisModule_Call is reached:
 *
 *   module + blocking  a module command that blocks its caller, e.g. our own
 *                      CXLRING.RESET: RedisModule_BlockClient on a
 *                      RedisModule_Call client ends in that assertion
 *   noscript           needs a connection, the main thread or the event loop:
 *                      MULTI/EXEC/WATCH, (P|S)SUBSCRIBE, MONITOR, WAIT, CLIENT,
 *                      CONFIG, DEBUG, SHUTDOWN, SAVE, REPLICAOF, FAILOVER, ACL,
 *                      MODULE, EVAL/FCALL, BLPOP and kin... (what Redis refuses
 *                      in scripts, for the same reason; the server's own flags
 *                      decide: Valkey lets scripts run WAIT, which then answers
 *                      at once)
 *   DENIED             what the flags cannot say (below)
 *
 * Blocking commands without noscript (BLMPOP, XREAD BLOCK, ...) run: on a
 * client that may not block they answer at once, as in a script. A container
 * (CLIENT, CONFIG, OBJECT, XINFO, ...) is judged by its subcommand's flags.
 */
enum {
    VERDICT_NONE = 0,                   /* empty slot; unknown to Redis: Call answers */
    VERDICT_RUN,
    VERDICT_CONTAINER,                  /* look at argv[1] */
    VERDICT_NOSCRIPT,
    VERDICT_MODULE_BLOCKING,
    VERDICT_UNCHECKED,                  /* COMMAND INFO failed, or a name too long */
    VERDICT_DENIED                      /* + index into DENIED */
};

#define NO_PUSH "pub/sub runs outside MULTI, on a layout 5 session (ring-protocol.md 15)"

static const struct {
    const char *key;                    /* lowercase, "name" or "name|sub" */
    const char *why;
} DENIED[] = {
    /* Synchronous socket I/O for up to its timeout while we hold the GIL: a
     * MIGRATE to this very server waits for an answer the main thread cannot
     * give before the GIL is released. */
    { "migrate", "it waits on the network while holding the server lock" },
    /* Pushed messages: not served on a ring session (docs/ring-protocol.md section 15). */
    { "subscribe", NO_PUSH }, { "psubscribe", NO_PUSH }, { "ssubscribe", NO_PUSH },
    { "unsubscribe", NO_PUSH }, { "punsubscribe", NO_PUSH }, { "sunsubscribe", NO_PUSH },
};

#define NAME_MAX_LEN 63u                /* a command or subcommand name, without NUL */

static int denied_index(const char *key, uint32_t len)
{
    size_t i;

    for (i = 0; i < sizeof(DENIED) / sizeof(DENIED[0]); i++)
        if (strlen(DENIED[i].key) == len && !memcmp(DENIED[i].key, key, len))
            return (int)i;
    return -1;
}

static int reply_is(RedisModuleCallReply *r, const char *word)
{
    size_t n = 0;
    const char *p = RedisModule_CallReplyStringPtr(r, &n);

    return p && n == strlen(word) && !strncasecmp(p, word, n);
}

/* COMMAND INFO key -> a verdict; VERDICT_NONE when Redis has no such command. */
static uint8_t verdict_from_redis(struct drv_exec *x, const char *key, uint32_t len)
{
    RedisModuleCallReply *r, *info, *flags, *subs = NULL;
    int noscript = 0, blocking = 0, module = 0, denied;
    uint8_t v = VERDICT_UNCHECKED;
    size_t i, n;

    r = RedisModule_Call(x->ctx, "COMMAND", "cb", "INFO", key, (size_t)len);
    if (!r)
        return VERDICT_UNCHECKED;
    if (RedisModule_CallReplyType(r) != REDISMODULE_REPLY_ARRAY ||
        RedisModule_CallReplyLength(r) != 1)
        goto out;
    info = RedisModule_CallReplyArrayElement(r, 0);
    if (RedisModule_CallReplyType(info) == REDISMODULE_REPLY_NULL) {
        v = VERDICT_NONE;
        goto out;
    }
    /* name, arity, flags, first key, last key, step, ACL categories, tips,
     * key specs, subcommands (Redis 7 and later, Valkey) */
    if (RedisModule_CallReplyType(info) != REDISMODULE_REPLY_ARRAY ||
        RedisModule_CallReplyLength(info) < 3)
        goto out;
    flags = RedisModule_CallReplyArrayElement(info, 2);
    n = RedisModule_CallReplyLength(flags);
    for (i = 0; i < n; i++) {
        RedisModuleCallReply *f = RedisModule_CallReplyArrayElement(flags, i);

        noscript |= reply_is(f, "noscript");
        blocking |= reply_is(f, "blocking");
        module |= reply_is(f, "module");
    }
    if (RedisModule_CallReplyLength(info) >= 10)
        subs = RedisModule_CallReplyArrayElement(info, 9);
    denied = denied_index(key, len);
    if (denied >= 0)                    /* our own reason first: it says more */
        v = (uint8_t)(VERDICT_DENIED + denied);
    else if (module && blocking)
        v = VERDICT_MODULE_BLOCKING;
    else if (noscript)
        v = VERDICT_NOSCRIPT;
    else if (subs && RedisModule_CallReplyType(subs) == REDISMODULE_REPLY_ARRAY &&
             RedisModule_CallReplyLength(subs) > 0)
        v = VERDICT_CONTAINER;
    else
        v = VERDICT_RUN;
out:
    RedisModule_FreeCallReply(r);
    return v;
}

static uint32_t key_hash(const char *key, uint32_t len)
{
    uint32_t h = 2166136261u;           /* FNV-1a */
    uint32_t i;

    for (i = 0; i < len; i++)
        h = (h ^ (uint8_t)key[i]) * 16777619u;
    return h;
}

/* The cached verdict for key, asking Redis on a miss. Open addressing, never over 3/4 full. */
static uint8_t verdict_for(struct drv_exec *x, const char *key, uint32_t len)
{
    uint32_t mask = DRV_VERDICT_SLOTS - 1, i = key_hash(key, len) & mask;
    struct drv_verdict *slot;
    uint8_t v;

    for (;; i = (i + 1) & mask) {
        slot = &x->verdicts[i];
        if (slot->verdict == VERDICT_NONE)
            break;
        if (slot->len == len && !memcmp(slot->key, key, len))
            return slot->verdict;
    }
    v = verdict_from_redis(x, key, len);
    /* Only what Redis knows is kept: unknown names cannot fill the table. */
    if (v == VERDICT_NONE || v == VERDICT_UNCHECKED)
        return v;
    if (x->verdicts_used >= DRV_VERDICT_SLOTS / 4 * 3) {
        memset(x->verdicts, 0, sizeof(x->verdicts));
        x->verdicts_used = 0;
        return v;                       /* the free slot found above is gone: store next time */
    }
    slot->verdict = v;
    slot->len = (uint8_t)len;
    memcpy(slot->key, key, len);
    x->verdicts_used++;
    return v;
}

/* Lowercase name bytes appended to key at *len (the caller checked the room). */
static void key_append(char *key, uint32_t *len, const uint8_t *name, uint32_t n)
{
    uint32_t i;

    for (i = 0; i < n; i++)
        key[(*len)++] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
}

/*
 * The verdict for a CMD's argv, and in key the name it was given for
 * ("client|pause"). VERDICT_NONE: Redis has no such command (RedisModule_Call
 * answers with its own error).
 */
static uint8_t cmd_verdict(struct drv_exec *x, uint32_t argc, const uint8_t *const *argv,
                           const uint32_t *argl, char *key, uint32_t *keylen)
{
    uint32_t gen = __atomic_load_n(&x->cmd_table_gen, __ATOMIC_RELAXED);   /* GIL-ordered */
    uint8_t v;

    if (gen != x->verdicts_gen) {       /* a module was loaded or unloaded */
        memset(x->verdicts, 0, sizeof(x->verdicts));
        x->verdicts_used = 0;
        x->verdicts_gen = gen;
    }
    *keylen = 0;
    key_append(key, keylen, argv[0], argl[0]);          /* argl[0] <= NAME_MAX_LEN */
    if (memchr(argv[0], '|', argl[0]))
        return VERDICT_NONE;            /* COMMAND INFO would read it as name|sub */
    v = verdict_for(x, key, *keylen);
    if (v != VERDICT_CONTAINER)
        return v;
    if (argc < 2)
        return VERDICT_NONE;            /* RedisModule_Call answers the arity error */
    if (argl[1] > NAME_MAX_LEN || memchr(argv[1], '|', argl[1])) {
        key[(*keylen)++] = '|';
        return VERDICT_UNCHECKED;
    }
    key[(*keylen)++] = '|';
    key_append(key, keylen, argv[1], argl[1]);
    v = verdict_for(x, key, *keylen);
    return v == VERDICT_CONTAINER ? VERDICT_RUN : v;    /* no deeper nesting exists */
}

/* The refusal as a RESP2 error reply, one line; 0 when the command may run. */
static int refusal(uint8_t v, const char *key, uint32_t keylen, char *out, size_t outlen)
{
    char name[DRV_VERDICT_KEY + 1];
    const char *why;
    uint32_t i;
    int n;

    switch (v) {
    case VERDICT_NONE:
    case VERDICT_RUN:
        return 0;
    case VERDICT_NOSCRIPT:
        why = "it needs a client connection (flag noscript: scripts may not run it either)";
        break;
    case VERDICT_MODULE_BLOCKING:
        why = "it is a module command that blocks its caller (flag blocking)";
        break;
    case VERDICT_UNCHECKED:
        why = "its flags could not be checked (COMMAND INFO failed or the name is too long)";
        break;
    default:
        why = (size_t)(v - VERDICT_DENIED) < sizeof(DENIED) / sizeof(DENIED[0])
            ? DENIED[v - VERDICT_DENIED].why : "refused";
        break;
    }
    /* The name came from the client: no CR, LF or other control bytes in a reply line. */
    for (i = 0; i < keylen && i < DRV_VERDICT_KEY; i++)
        name[i] = key[i] > 0x20 && key[i] < 0x7f ? key[i] : '?';
    name[i] = '\0';
    n = snprintf(out, outlen, "-ERR '%s' cannot run from the ring: %s\r\n", name, why);
    return n < (int)outlen ? n : 0;     /* sized so that it always fits */
}

/*
 * Would drv_exec_cmd() refuse this CMD before running it, or does Redis have no such
 * command? The RESP error line in out and its length; 0 when it may run (MULTI
 * checks each command as it queues it, as Redis does: txn.c).
 */
int drv_exec_vet(struct drv_exec *x, uint32_t argc, const uint8_t *const *argv,
                 const uint32_t *argl, char *out, size_t cap)
{
    char key[DRV_VERDICT_KEY], name[DRV_VERDICT_KEY + 1];
    uint32_t keylen = 0, i;
    uint8_t v;
    int n;

    if (argl[0] == 0 || argl[0] >= sizeof(x->cmdname) || memchr(argv[0], 0, argl[0]))
        v = VERDICT_NONE;
    else
        v = cmd_verdict(x, argc, argv, argl, key, &keylen);
    if (v != VERDICT_NONE)
        return refusal(v, key, keylen, out, cap);
    /* NONE for a known name is an arity or subcommand error: Redis answers it when it
     * runs. Only a name Redis does not know is refused now. */
    keylen = 0;
    if (argl[0] > 0 && argl[0] < sizeof(x->cmdname) && !memchr(argv[0], 0, argl[0]) &&
        !memchr(argv[0], '|', argl[0])) {
        key_append(key, &keylen, argv[0], argl[0]);
        if (verdict_for(x, key, keylen) != VERDICT_NONE)
            return 0;
    }
    for (i = 0; i < argl[0] && i < DRV_VERDICT_KEY; i++)
        name[i] = argv[0][i] > 0x20 && argv[0][i] < 0x7f ? (char)argv[0][i] : '?';
    name[i] = '\0';
    n = snprintf(out, cap, "-ERR unknown command '%s'\r\n", name);
    return n > 0 && (size_t)n < cap ? n : 0;
}

/* ---- CMD argv... -> OK RESP2 reply ----------------------------------------- */

/*
 * RedisModule_Call flags: ! replicate, E errors as replies, M refuse deny-oom
 * commands over maxmemory, S script mode (no MULTI, SUBSCRIBE, WAIT...: what a
 * stateless request cannot carry; also refuses writes on a read-only replica).
 */
#define DRV_CALL_FLAGS "!EMSv"
/* ... and C: Redis checks the ACL of the user set on the context (acl.c). */
#define DRV_CALL_FLAGS_ACL "!EMSvC"

void drv_exec_cmd(struct drv_exec *x, uint32_t argc, const uint8_t *const *argv,
                  const uint32_t *argl, drv_reply_fn *reply, void *sink)
{
    RedisModuleCallReply *r;
    const char *proto;
    size_t plen = 0;
    uint32_t i, keylen;
    char key[DRV_VERDICT_KEY], text[DRV_VERDICT_KEY + DRV_USER_MAX + 160];
    uint8_t v;
    int n;

    /* RedisModule_Call takes the name as a C string: refuse what it would misread. */
    if (argl[0] == 0 || argl[0] >= sizeof(x->cmdname) || memchr(argv[0], 0, argl[0])) {
        static const char unknown[] = "-ERR unknown command\r\n";
        reply(sink, CXL_ST_OK, unknown, sizeof(unknown) - 1, NULL, 0);
        return;
    }
    v = cmd_verdict(x, argc, argv, argl, key, &keylen);
    if ((n = refusal(v, key, keylen, text, sizeof(text))) > 0) {
        reply(sink, CXL_ST_OK, text, (uint32_t)n, NULL, 0);
        return;
    }
    memcpy(x->cmdname, argv[0], argl[0]);
    x->cmdname[argl[0]] = '\0';
    for (i = 1; i < argc; i++)
        x->argv[i - 1] = RedisModule_CreateString(x->ctx, (const char *)argv[i], argl[i]);

    errno = 0;
    if (x->call_user) {
        RedisModule_SetContextUser(x->ctx, x->call_user);
        r = RedisModule_Call(x->ctx, x->cmdname, DRV_CALL_FLAGS_ACL, x->argv,
                             (size_t)(argc - 1));
        RedisModule_SetContextUser(x->ctx, NULL);
    } else {
        r = RedisModule_Call(x->ctx, x->cmdname, DRV_CALL_FLAGS, x->argv, (size_t)(argc - 1));
    }
    if (!r && errno == EACCES &&
        (n = drv_acl_call_refusal(x, NULL, 0, x->cmdname, text, sizeof(text))) > 0) {
        /* Redis refused it for the session's user and logged it in ACL LOG. */
        reply(sink, CXL_ST_OK, text, (uint32_t)n, NULL, 0);
    } else if (!r) {
        n = snprintf(text, sizeof(text), "-ERR command refused (%s)\r\n",
                     errno ? strerror(errno) : "no reply");
        reply(sink, CXL_ST_OK, text, (uint32_t)n, NULL, 0);
    } else {
        proto = RedisModule_CallReplyProto(r, &plen);
        if (!proto) {
            static const char noproto[] = "-ERR reply has no RESP form\r\n";
            reply(sink, CXL_ST_OK, noproto, sizeof(noproto) - 1, NULL, 0);
        } else if (x->call_user && RedisModule_CallReplyType(r) == REDISMODULE_REPLY_ERROR &&
                   (n = drv_acl_call_refusal(x, proto, plen, x->cmdname, text,
                                             sizeof(text))) > 0) {
            reply(sink, CXL_ST_OK, text, (uint32_t)n, NULL, 0);     /* as NOPERM, above */
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
    if (drv_acl_admit(x, req->op, req->argc, req->argv, req->argl, reply, sink) ||
        drv_txn_request(x, req, reply, sink) || drv_block_request(x, req, reply, sink) ||
        drv_pubsub_request(x, req, reply, sink))
        return;
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
