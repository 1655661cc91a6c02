/*
 * acl.c - a ring session runs as a Redis ACL user (docs/ring-protocol.md section 12).
 *
 * Redis checks every command of a TCP client against its user's ACL; every request
 * of a ring session is checked the same way, by Redis's own code: GET, SET and DEL
 * through RedisModule_ACLCheckCommandPermissions, a CMD through RedisModule_Call's
 * "C" flag with the session's user set on the context. Which user:
 *
 *   - the one the lab gave the session's channel group (module argument acl_users):
 *     the hypervisor maps a group's segment into one VM only, so holding the channel
 *     is the credential, as a TCP client's AUTH is;
 *   - else "default", when Redis would let an unauthenticated TCP client run as
 *     "default": the user is on and needs no password;
 *   - else none: every request but PING and CMD AUTH is answered NOAUTH, as a TCP
 *     client of a requirepass server is answered.
 *
 * CMD AUTH [user] password switches the session's user when Redis accepts the
 * password (Redis checks it, counts a failure and logs it in ACL LOG).
 *
 * The user is decided by the session's first request, under the GIL, and looked up
 * by name again in each GIL hold (a user pointer is not valid once the GIL is
 * released: ACL DELUSER frees it): ACL SETUSER applies from the next request on,
 * ACL DELUSER leaves the session without a user.
 */
#define _GNU_SOURCE                     /* memmem */
#include "driver.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char NOAUTH_TEXT[] = "NOAUTH Authentication required.";

/* The op's name as Redis knows it: the fast ops are checked as these commands. */
static const char *op_command(uint8_t op)
{
    switch (op) {
    case CXL_OP_GET: return "get";      /* lowercase, as Redis names them in errors */
    case CXL_OP_SET: return "set";
    case CXL_OP_DEL: return "del";
    default:         return NULL;
    }
}

/* The server stops (under the GIL): what the poll thread kept. */
void drv_acl_free(struct drv_exec *x)
{
    uint32_t i;

    drv_acl_begin_batch(x);
    if (x->acl_key)
        RedisModule_FreeString(x->ctx, x->acl_key);
    x->acl_key = NULL;
    for (i = 0; i < 4; i++) {
        if (x->acl_names[i])
            RedisModule_FreeString(NULL, x->acl_names[i]);
        x->acl_names[i] = NULL;
    }
}

/* Forget the users looked up in the last GIL hold (called with each new hold). */
void drv_acl_begin_batch(struct drv_exec *x)
{
    uint32_t i;

    for (i = 0; i < x->users_used; i++)
        RedisModule_FreeModuleUser(x->users[i].user);
    x->users_used = 0;
}

/* The ACL user named name, valid for this GIL hold; NULL when Redis has none. */
static RedisModuleUser *user_named(struct drv_exec *x, const char *name)
{
    RedisModuleString *s;
    RedisModuleUser *u;
    uint32_t i;

    for (i = 0; i < x->users_used; i++)
        if (!strcmp(x->users[i].name, name))
            return x->users[i].user;
    s = RedisModule_CreateString(x->ctx, name, strlen(name));
    u = RedisModule_GetModuleUserFromUserName(s);
    RedisModule_FreeString(x->ctx, s);
    if (!u)
        return NULL;
    if (x->users_used == DRV_ACL_CACHE)     /* more users in one hold than groups: rare */
        drv_acl_begin_batch(x);
    snprintf(x->users[x->users_used].name, sizeof(x->users[0].name), "%s", name);
    x->users[x->users_used++].user = u;
    return u;
}

/*
 * Does Redis let a connection run as this user without AUTH? Its ACL string begins
 * with the user's flags ("on nopass sanitize-payload ~* ..."): on, and nopass.
 */
static int user_open(struct drv_exec *x, RedisModuleUser *u)
{
    RedisModuleString *acl = RedisModule_GetModuleUserACLString(u);
    const char *p, *end;
    size_t n = 0;
    int on = 0, nopass = 0;

    if (!acl)
        return 0;
    p = RedisModule_StringPtrLen(acl, &n);
    end = p + n;
    while (p < end) {
        const char *w = p;
        size_t len;

        while (p < end && *p != ' ')
            p++;
        len = (size_t)(p - w);
        if (len == 2 && !memcmp(w, "on", 2))
            on = 1;
        else if (len == 6 && !memcmp(w, "nopass", 6))
            nopass = 1;
        while (p < end && *p == ' ')
            p++;
    }
    RedisModule_FreeString(x->ctx, acl);
    return on && nopass;
}

/* A new session: the group's user, else "default" when it is open, else none. */
static void decide(struct drv_exec *x, struct drv_auth *a)
{
    const char *granted = a->group < CXL_MAX_GROUPS ? x->acl_users[a->group] : "";
    RedisModuleUser *u;

    a->gen = x->session_gen;
    a->user[0] = '\0';
    if (granted[0]) {
        snprintf(a->user, sizeof(a->user), "%s", granted);
        return;
    }
    u = user_named(x, "default");
    if (u && user_open(x, u))
        snprintf(a->user, sizeof(a->user), "default");
}

static void refuse(struct drv_exec *x, uint8_t op, const char *text,
                   drv_reply_fn *reply, void *sink)
{
    char line[DRV_ACL_TEXT];
    int n;

    __atomic_store_n(&x->acl_denied, x->acl_denied + 1, __ATOMIC_RELAXED);
    if (op != CXL_OP_CMD) {
        reply(sink, CXL_ST_ERR, text, (uint32_t)strlen(text), NULL, 0);
        return;
    }
    n = snprintf(line, sizeof(line), "-%s\r\n", text);   /* a CMD answers RESP */
    reply(sink, CXL_ST_OK, line, (uint32_t)(n < (int)sizeof(line) ? n : 0), NULL, 0);
}

static int is_word(const uint8_t *p, uint32_t n, const char *word)
{
    return n == strlen(word) && !strncasecmp((const char *)p, word, n);
}

/* A printable copy of a name the client sent, for a reply line. */
static void printable(char *out, size_t cap, const uint8_t *p, uint32_t n)
{
    size_t i;

    for (i = 0; i < n && i + 1 < cap; i++)
        out[i] = p[i] > 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
    out[i] = '\0';
}

/* CMD AUTH [user] password: Redis checks it on the call's own client; on +OK the
 * session runs as that user. */
static void authenticate(struct drv_exec *x, struct drv_auth *a, uint32_t argc,
                         const uint8_t *const *argv, const uint32_t *argl,
                         drv_reply_fn *reply, void *sink)
{
    static const char ok[] = "+OK\r\n";
    RedisModuleString *args[2];
    RedisModuleCallReply *r;
    const char *user = "default", *proto;
    char name[DRV_USER_MAX];
    size_t plen = 0;
    uint32_t i;

    if (argc != 2 && argc != 3) {
        static const char arity[] = "-ERR wrong number of arguments for 'auth' command\r\n";
        reply(sink, CXL_ST_OK, arity, sizeof(arity) - 1, NULL, 0);
        return;
    }
    if (argc == 3) {
        if (argl[1] == 0 || argl[1] >= sizeof(name) || memchr(argv[1], 0, argl[1])) {
            refuse(x, CXL_OP_CMD, "WRONGPASS invalid username-password pair or user is "
                   "disabled.", reply, sink);
            return;
        }
        memcpy(name, argv[1], argl[1]);
        name[argl[1]] = '\0';
        user = name;
    }
    for (i = 1; i < argc; i++)
        args[i - 1] = RedisModule_CreateString(x->ctx, (const char *)argv[i], argl[i]);
    /* No "S": AUTH is a noscript command; "E": WRONGPASS comes back as a reply. */
    r = RedisModule_Call(x->ctx, "AUTH", "Ev", args, (size_t)(argc - 1));
    for (i = 1; i < argc; i++)
        RedisModule_FreeString(x->ctx, args[i - 1]);
    if (r && RedisModule_CallReplyType(r) != REDISMODULE_REPLY_ERROR) {
        snprintf(a->user, sizeof(a->user), "%s", user);
        reply(sink, CXL_ST_OK, ok, sizeof(ok) - 1, NULL, 0);
    } else if (r && (proto = RedisModule_CallReplyProto(r, &plen)) != NULL) {
        __atomic_store_n(&x->acl_denied, x->acl_denied + 1, __ATOMIC_RELAXED);
        reply(sink, CXL_ST_OK, proto, (uint32_t)plen, NULL, 0);
    } else {
        refuse(x, CXL_OP_CMD, "WRONGPASS invalid username-password pair or user is "
               "disabled.", reply, sink);
    }
    if (r)
        RedisModule_FreeCallReply(r);
}

/*
 * RedisModule_Call's "C" check refused a CMD (reply err, n bytes; NULL when the server
 * said so by errno alone): the NOPERM line a TCP client of the same user gets, in out.
 * Returns its length, or 0 when err is not an ACL refusal.
 */
int drv_acl_call_refusal(struct drv_exec *x, const char *err, size_t n, const char *cmd,
                         char *out, size_t cap)
{
    static const char why[] = "acl verification failed";
    char user[DRV_USER_MAX], name[64];
    const char *what;
    int len;

    if (err && !(n >= 7 && !memcmp(err, "-NOPERM", 7)) &&
        !memmem(err, n, why, sizeof(why) - 1))
        return 0;
    printable(user, sizeof(user), x->auth ? (const uint8_t *)x->auth->user : NULL,
              x->auth ? (uint32_t)strlen(x->auth->user) : 0);
    printable(name, sizeof(name), (const uint8_t *)cmd, (uint32_t)strlen(cmd));
    for (char *c = name; *c; c++)     /* as Redis names it: lowercase */
        *c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
    if (err && memmem(err, n, "keys", 4))
        what = "access one of the keys used as arguments";
    else if (err && memmem(err, n, "channel", 7))
        what = "access one of the channels used as arguments";
    else
        what = NULL;
    __atomic_store_n(&x->acl_denied, x->acl_denied + 1, __ATOMIC_RELAXED);
    if (what)
        len = snprintf(out, cap, "-NOPERM User %s has no permissions to %s\r\n", user, what);
    else if (err)
        len = snprintf(out, cap, "-NOPERM User %s has no permissions to run the '%s' "
                       "command\r\n", user, name);
    else
        len = snprintf(out, cap, "-NOPERM User %s has no permissions to run the '%s' "
                       "command or to access one of its keys or channels\r\n", user, name);
    return len > 0 && (size_t)len < cap ? len : 0;
}

/*
 * Before a request runs: 1 when this answered it (refused, or AUTH), 0 when it may
 * run. For a CMD that may run, x->call_user is the user drv_exec_cmd() sets on the
 * context for RedisModule_Call's "C" check.
 */
int drv_acl_admit(struct drv_exec *x, uint8_t op, uint32_t argc, const uint8_t *const *argv,
                  const uint32_t *argl, drv_reply_fn *reply, void *sink)
{
    struct drv_auth *a = x->auth;
    RedisModuleString *args[CXL_MAX_ARGS + 1];
    RedisModuleUser *u;
    const char *cmd;
    char text[DRV_ACL_TEXT], name[DRV_USER_MAX];
    uint32_t i, keys;
    int rc;

    x->call_user = NULL;
    if (x->acl_key) {                   /* admitted, then left to wait (a client pause) */
        RedisModule_FreeString(x->ctx, x->acl_key);
        x->acl_key = NULL;
    }
    if (!a || op == CXL_OP_PING)        /* PING is the transport's, no Redis command */
        return 0;
    if (a->gen != x->session_gen)
        decide(x, a);
    if (op == CXL_OP_CMD && argc >= 1 && is_word(argv[0], argl[0], "auth")) {
        authenticate(x, a, argc, argv, argl, reply, sink);
        return 1;
    }
    if (!a->user[0]) {
        refuse(x, op, NOAUTH_TEXT, reply, sink);
        return 1;
    }
    if (!(u = user_named(x, a->user))) {
        /* ACL DELUSER: Redis closes that user's connections; the session is left
         * without a user and must AUTH again. */
        snprintf(text, sizeof(text), "NOAUTH the session's user '%s' no longer exists",
                 a->user);
        a->user[0] = '\0';
        refuse(x, op, text, reply, sink);
        return 1;
    }
    if (op == CXL_OP_CMD) {
        x->call_user = u;
        return 0;
    }
    if (!(cmd = op_command(op)) || argc > CXL_MAX_ARGS || (op == CXL_OP_SET && argc != 2))
        return 0;                       /* drv_exec_request answers what cannot run */
    if (!x->acl_names[0]) {             /* kept until the server stops: no allocation per op */
        for (i = 0; i < 3; i++) {
            const char *word = op_command(i == 0 ? CXL_OP_GET : i == 1 ? CXL_OP_SET
                                                                    : CXL_OP_DEL);

            x->acl_names[i] = RedisModule_CreateString(NULL, word, strlen(word));
        }
        x->acl_names[3] = RedisModule_CreateString(NULL, "", 0);
    }
    args[0] = x->acl_names[op == CXL_OP_GET ? 0 : op == CXL_OP_SET ? 1 : 2];
    keys = op == CXL_OP_SET ? 1 : argc;  /* SET's value is no matter to an ACL: not copied */
    for (i = 0; i < keys; i++)
        args[i + 1] = RedisModule_CreateString(x->ctx, (const char *)argv[i], argl[i]);
    if (op == CXL_OP_SET)
        args[2] = x->acl_names[3];
    rc = RedisModule_ACLCheckCommandPermissions(u, args, op == CXL_OP_SET ? 3 : (int)argc + 1);
    if (rc != REDISMODULE_OK) {
        /* Which key, for ACL LOG and the reply, as Redis says it for a TCP client. */
        int key = -1;

        for (i = 0; i < keys; i++)
            if (RedisModule_ACLCheckKeyPermissions(
                    u, args[i + 1], op == CXL_OP_GET ? REDISMODULE_CMD_KEY_ACCESS
                                  : op == CXL_OP_SET ? REDISMODULE_CMD_KEY_UPDATE
                                                     : REDISMODULE_CMD_KEY_DELETE) !=
                REDISMODULE_OK) {
                key = (int)i;
                break;
            }
        printable(name, sizeof(name), (const uint8_t *)a->user, (uint32_t)strlen(a->user));
        if (key >= 0) {
            RedisModule_ACLAddLogEntry(x->ctx, u, args[key + 1], REDISMODULE_ACL_LOG_KEY);
            snprintf(text, sizeof(text), "NOPERM User %s has no permissions to access one "
                     "of the keys used as arguments", name);
        } else {
            RedisModule_ACLAddLogEntry(x->ctx, u, args[0], REDISMODULE_ACL_LOG_CMD);
            snprintf(text, sizeof(text), "NOPERM User %s has no permissions to run the "
                     "'%s' command", name, cmd);
        }
    } else if (op != CXL_OP_DEL) {
        x->acl_key = args[1];           /* GET and SET run with this key string (exec.c) */
        args[1] = NULL;
    }
    for (i = 0; i < keys; i++)
        if (args[i + 1])
            RedisModule_FreeString(x->ctx, args[i + 1]);
    if (rc != REDISMODULE_OK) {
        refuse(x, op, text, reply, sink);
        return 1;
    }
    return 0;
}
