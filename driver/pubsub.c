/*
 * pubsub.c - a ring session subscribes, the server pushes (docs/ring-protocol.md 15).
 *
 * The module API cannot subscribe, and a command filter sees PUBLISH before Redis has
 * authenticated it, checked its ACL or queued it in MULTI. So the driver subscribes as any
 * client does: at the first subscription it makes an ACL user of its own (USER, a random
 * password, only the (un)subscribe commands and every channel), connects to its own server
 * (the unix socket, else 127.0.0.1 and the port) and subscribes there to the union of its
 * sessions' names. Redis delivers to that connection after all of its checks, whoever
 * published; the driver hands each message to the sessions subscribed to its name.
 *
 * Threads:
 *   - the poll thread, holding the GIL, serves the (un)subscribe requests: it checks the
 *     session user's permission (Redis's own check), keeps each session's names (struct
 *     drv_subs, channel.c's) and the union with a count of sessions per name (`names`,
 *     the poll thread's alone), and queues SUBSCRIBE/UNSUBSCRIBE for the connection;
 *   - the connection thread writes what is queued and reads what Redis sends: a
 *     confirmation counts one (`confirmed`), a message is queued for the poll thread
 *     (`inbox`), which writes it into the sessions' response rings (channel.c) and wakes
 *     nobody else; `mu` guards the queues.
 * A subscription is in place before its reply: the request blocks (block.c's drv_block)
 * until `confirmed` reaches the count of names sent when it came.
 */
#define _GNU_SOURCE
#include "driver.h"
#include "compat.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define USER             "cxl-ring-pubsub"
#define CONFIRM_RETRY_NS 1000000ull     /* a blocked subscribe looks every 1 ms */
#define IN_CAP           (64u << 20)    /* the connection's read buffer may grow to this */
/* The most one confirmation of a name of n bytes takes (*3, the word, the name, :count). */
#define CONFIRM_MAX(word, n) (39u + (uint32_t)strlen(word) + (n))

static const char *const SUB[] = { "subscribe", "psubscribe", "ssubscribe" };
static const char *const UNSUB[] = { "unsubscribe", "punsubscribe", "sunsubscribe" };

/* A name of the union and how many sessions hold it (poll thread only). */
struct ps_name {
    struct ps_name *next;
    uint8_t  kind;
    uint32_t refs;
    uint32_t len;
    char     name[];
};

static struct {
    pthread_mutex_t mu;
    pthread_t thread;
    int      started;                   /* the thread runs (poll thread, main at stop) */
    int      fd, evfd;
    int      stop;                      /* under mu */
    int      lost;                      /* the connection ended: under mu */
    char     why[160];                  /* why it ended, under mu */
    uint8_t *out;                       /* queued commands, under mu */
    size_t   out_len, out_cap;
    struct drv_push *in_head, *in_tail; /* messages for the poll thread, under mu */
    int      loss_seen;                 /* the poll thread told the sessions (poll thread) */
    uint64_t sent;                      /* names sent (poll thread) */
    uint64_t confirmed;                 /* confirmations read (atomic) */
    uint64_t messages;                  /* messages read (atomic) */
    struct ps_name *names;              /* poll thread */
    uint32_t name_count;
    char     pass[40];
} P = { .mu = PTHREAD_MUTEX_INITIALIZER, .fd = -1, .evfd = -1 };

/* ---- Small helpers ------------------------------------------------------------------- */

static int family(const uint8_t *name, uint32_t n, int *kind, int *sub)
{
    int k;

    for (k = 0; k < 3; k++) {
        if (n == strlen(SUB[k]) && !strncasecmp((const char *)name, SUB[k], n)) {
            *kind = k;
            *sub = 1;
            return 1;
        }
        if (n == strlen(UNSUB[k]) && !strncasecmp((const char *)name, UNSUB[k], n)) {
            *kind = k;
            *sub = 0;
            return 1;
        }
    }
    return 0;
}

static void line(drv_reply_fn *reply, void *sink, const char *text)
{
    reply(sink, CXL_ST_OK, text, (uint32_t)strlen(text), NULL, 0);
}

/* A growing byte buffer (the reply being built, the outbox). */
static int put(uint8_t **buf, size_t *len, size_t *cap, const void *p, size_t n)
{
    if (*len + n > *cap) {
        size_t c = *cap ? *cap : 256;
        uint8_t *b;

        while (c < *len + n)
            c *= 2;
        if (!(b = realloc(*buf, c)))
            return -1;
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    return 0;
}

static int put_bulk(uint8_t **buf, size_t *len, size_t *cap, const void *p, uint32_t n)
{
    char head[24];
    int h = snprintf(head, sizeof(head), "$%u\r\n", n);

    return put(buf, len, cap, head, (size_t)h) || put(buf, len, cap, p, n) ||
           put(buf, len, cap, "\r\n", 2);
}

/* One confirmation as Redis writes it: *3 <word> <name or nil> :<count>. */
static int put_confirm(uint8_t **buf, size_t *len, size_t *cap, const char *word,
                       const void *name, int32_t nlen, uint32_t count)
{
    char tail[24];
    int t = snprintf(tail, sizeof(tail), ":%u\r\n", count);

    if (put(buf, len, cap, "*3\r\n", 4) || put_bulk(buf, len, cap, word, (uint32_t)strlen(word)))
        return -1;
    if (nlen < 0 ? put(buf, len, cap, "$-1\r\n", 5) : put_bulk(buf, len, cap, name, (uint32_t)nlen))
        return -1;
    return put(buf, len, cap, tail, (size_t)t);
}

/* Queue one command of argc words for the connection (the caller holds mu). */
static int queue_command(int argc, const char *const *argv, const uint32_t *argl)
{
    char head[24];
    int i, h = snprintf(head, sizeof(head), "*%d\r\n", argc);

    if (put(&P.out, &P.out_len, &P.out_cap, head, (size_t)h))
        return -1;
    for (i = 0; i < argc; i++)
        if (put_bulk(&P.out, &P.out_len, &P.out_cap, argv[i], argl[i]))
            return -1;
    return 0;
}

static void poke(void)
{
    uint64_t one = 1;

    if (P.evfd >= 0 && write(P.evfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        drv_log("warning", DRV_NAME ": pub/sub: cannot wake the connection thread: %s",
                strerror(errno));
}

/* ---- The union of the sessions' names (poll thread) --------------------------------- */

static struct ps_name **find_name(int kind, const uint8_t *name, uint32_t n)
{
    struct ps_name **p;

    for (p = &P.names; *p; p = &(*p)->next)
        if ((*p)->kind == kind && (*p)->len == n && !memcmp((*p)->name, name, n))
            return p;
    return p;
}

/* One session more (or less) on a name; SUBSCRIBE or UNSUBSCRIBE when the union changes. */
static int union_change(int kind, const uint8_t *name, uint32_t n, int add)
{
    struct ps_name **p = find_name(kind, name, n), *e = *p;
    const char *argv[2];
    uint32_t argl[2];
    int rc = 0;

    if (add && e) {
        e->refs++;
        return 0;
    }
    if (!add && (!e || --e->refs))
        return 0;
    if (add) {
        if (!(e = malloc(sizeof(*e) + n)))
            return -1;
        e->kind = (uint8_t)kind;
        e->refs = 1;
        e->len = n;
        memcpy(e->name, name, n);
        e->next = P.names;
        P.names = e;
        P.name_count++;
    } else {
        *p = e->next;
        free(e);
        P.name_count--;
    }
    argv[0] = add ? SUB[kind] : UNSUB[kind];
    argl[0] = (uint32_t)strlen(argv[0]);
    argv[1] = (const char *)name;
    argl[1] = n;
    pthread_mutex_lock(&P.mu);
    if (!P.lost) {
        rc = queue_command(2, argv, argl);
        if (!rc)
            P.sent++;                   /* one confirmation comes back per name */
    }
    pthread_mutex_unlock(&P.mu);
    poke();
    return rc;
}

/* ---- A session's names (struct drv_subs, poll thread) --------------------------------- */

static int subs_find(const struct drv_subs *ss, int kind, const uint8_t *name, uint32_t n)
{
    uint32_t i;

    for (i = 0; i < ss->count; i++)
        if (ss->v[i].kind == kind && ss->v[i].len == n && !memcmp(ss->v[i].name, name, n))
            return (int)i;
    return -1;
}

static uint32_t subs_counted(const struct drv_subs *ss, int kind)
{
    uint32_t i, n = 0;

    /* Redis counts channels and patterns together, shard channels apart. */
    for (i = 0; i < ss->count; i++)
        if ((ss->v[i].kind == 2) == (kind == 2))
            n++;
    return n;
}

static int subs_add(struct drv_subs *ss, int kind, const uint8_t *name, uint32_t n)
{
    uint8_t *copy;

    if (ss->count == ss->cap) {
        uint32_t cap = ss->cap ? ss->cap * 2 : 8;
        void *v = realloc(ss->v, cap * sizeof(ss->v[0]));

        if (!v)
            return -1;
        ss->v = v;
        ss->cap = cap;
    }
    if (!(copy = malloc(n ? n : 1)))
        return -1;
    memcpy(copy, name, n);
    if (union_change(kind, name, n, 1) < 0) {
        free(copy);
        return -1;
    }
    ss->v[ss->count].kind = (uint8_t)kind;
    ss->v[ss->count].len = n;
    ss->v[ss->count].name = copy;
    ss->count++;
    ss->bytes += CONFIRM_MAX(UNSUB[kind], n);
    return 0;
}

static void subs_remove(struct drv_subs *ss, uint32_t i)
{
    union_change(ss->v[i].kind, ss->v[i].name, ss->v[i].len, 0);
    ss->bytes -= CONFIRM_MAX(UNSUB[ss->v[i].kind], ss->v[i].len);
    free(ss->v[i].name);
    ss->v[i] = ss->v[--ss->count];
}

/* The session ended (release, lease, reset, quarantine, a new claim): its names go. */
void drv_pubsub_session_end(struct drv_subs *ss)
{
    while (ss->count)
        subs_remove(ss, ss->count - 1);
    free(ss->v);
    ss->v = NULL;
    ss->cap = 0;
    ss->bytes = 0;
    free(ss->pending);
    ss->pending = NULL;
    ss->pending_len = 0;
}

/* ---- The connection ------------------------------------------------------------------ */

/*
 * The length of the one RESP2 value at p (at most n bytes), 0 when it is not all there,
 * -1 when it is no RESP. For arrays of bulk strings, words[] gets the first four.
 */
static long resp_span(const uint8_t *p, size_t n, int depth, const uint8_t **words,
                      uint32_t *wlen, int *nwords)
{
    const uint8_t *e = memchr(p, '\n', n);
    long long v;
    size_t head;
    char num[24];
    long i, at;

    if (!e)
        return n > 1024 ? -1 : 0;
    head = (size_t)(e - p) + 1;
    if (head < 3 || p[head - 2] != '\r' || depth > 4)
        return -1;
    switch (p[0]) {
    case '+':
    case '-':
    case ':':
        return (long)head;
    case '$':
    case '*':
        if (head - 3 >= sizeof(num))
            return -1;
        memcpy(num, p + 1, head - 3);
        num[head - 3] = '\0';
        v = strtoll(num, NULL, 10);
        if (v < 0)
            return (long)head;          /* a nil */
        if (p[0] == '$') {
            if ((size_t)v > IN_CAP)
                return -1;
            if (head + (size_t)v + 2 > n)
                return 0;
            return (long)(head + (size_t)v + 2);
        }
        at = (long)head;
        for (i = 0; i < v; i++) {
            long m = resp_span(p + at, n - (size_t)at, depth + 1, NULL, NULL, NULL);

            if (m <= 0)
                return m;
            if (words && i < 4 && p[at] == '$') {
                const uint8_t *b = memchr(p + at, '\n', (size_t)m);

                words[i] = b + 1;
                wlen[i] = (uint32_t)(m - (b + 1 - (p + at)) - 2);
                *nwords = (int)i + 1;
            }
            at += m;
        }
        return at;
    default:
        return -1;
    }
}

static int word_is(const uint8_t *w, uint32_t n, const char *s)
{
    return n == strlen(s) && !memcmp(w, s, n);
}

/* Queue a message (or, name NULL and error set, the end of the connection): under mu. */
static void inbox_add(int kind, int error, const uint8_t *name, uint32_t nlen,
                      const uint8_t *raw, uint32_t rawlen)
{
    struct drv_push *m = malloc(sizeof(*m) + nlen + rawlen);

    if (!m)
        return;                         /* dropped: counted nowhere, as Redis's own OOM */
    m->next = NULL;
    m->kind = (uint8_t)kind;
    m->error = (uint8_t)error;
    m->name_len = nlen;
    m->len = rawlen;
    if (nlen)
        memcpy(m->data, name, nlen);
    if (rawlen)
        memcpy(m->data + nlen, raw, rawlen);
    if (P.in_tail)
        P.in_tail->next = m;
    else
        P.in_head = m;
    P.in_tail = m;
}

/* One value Redis sent: a confirmation counts, a message is queued. */
static void on_value(const uint8_t *p, long n, const uint8_t **w, const uint32_t *wl, int nw)
{
    int k;

    if (p[0] == '-') {
        drv_log("warning", DRV_NAME ": pub/sub: the server refused: %.*s", (int)(n - 2),
                (const char *)p);
        __atomic_add_fetch(&P.confirmed, 1, __ATOMIC_RELEASE);
        return;
    }
    if (p[0] != '*' || nw < 2)
        return;                         /* AUTH's +OK, CLIENT SETNAME's */
    for (k = 0; k < 3; k++) {
        if (word_is(w[0], wl[0], SUB[k]) || word_is(w[0], wl[0], UNSUB[k])) {
            __atomic_add_fetch(&P.confirmed, 1, __ATOMIC_RELEASE);
            return;
        }
    }
    if (word_is(w[0], wl[0], "message") && nw == 3)
        k = 0;
    else if (word_is(w[0], wl[0], "pmessage") && nw == 4)
        k = 1;
    else if (word_is(w[0], wl[0], "smessage") && nw == 3)
        k = 2;
    else
        return;
    __atomic_add_fetch(&P.messages, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&P.mu);
    inbox_add(k, 0, w[1], wl[1], p, (uint32_t)n);
    pthread_mutex_unlock(&P.mu);
}

static void *conn_main(void *arg)
{
    uint8_t *in = NULL, *o = NULL;
    size_t in_len = 0, in_cap = 0, olen = 0;
    char why[160] = "";

    pthread_setname_np(pthread_self(), "cxl-ring-pubsub");
    for (;;) {
        struct pollfd pf[2] = { { .fd = P.fd, .events = POLLIN }, { .fd = P.evfd, .events = POLLIN } };
        uint64_t k;
        int stop;

        pthread_mutex_lock(&P.mu);
        stop = P.stop;
        if (P.out_len && !olen) {       /* take the queue: written below */
            o = P.out;
            olen = P.out_len;
            P.out = NULL;
            P.out_len = P.out_cap = 0;
        }
        pthread_mutex_unlock(&P.mu);
        if (stop)
            break;
        if (olen)
            pf[0].events |= POLLOUT;
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            snprintf(why, sizeof(why), "poll: %s", strerror(errno));
            break;
        }
        if (pf[1].revents & POLLIN && read(P.evfd, &k, sizeof(k)) < 0 && errno != EAGAIN)
            continue;
        if (olen && pf[0].revents & POLLOUT) {
            ssize_t w = write(P.fd, o, olen);

            if (w < 0 && errno != EAGAIN && errno != EINTR) {
                snprintf(why, sizeof(why), "write: %s", strerror(errno));
                break;
            }
            if (w > 0) {
                memmove(o, o + w, olen - (size_t)w);
                olen -= (size_t)w;
            }
            if (!olen) {
                free(o);
                o = NULL;
            }
        }
        if (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r;
            size_t at = 0;
            int got = 0;

            if (in_cap - in_len < 65536) {
                size_t cap = in_cap ? in_cap * 2 : 131072;
                uint8_t *b = cap <= IN_CAP ? realloc(in, cap) : NULL;

                if (!b) {
                    snprintf(why, sizeof(why), "a message larger than %u bytes", IN_CAP / 2);
                    break;
                }
                in = b;
                in_cap = cap;
            }
            r = read(P.fd, in + in_len, in_cap - in_len);
            if (r == 0) {
                snprintf(why, sizeof(why), "the server closed the connection");
                break;
            }
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    continue;
                snprintf(why, sizeof(why), "read: %s", strerror(errno));
                break;
            }
            in_len += (size_t)r;
            for (;;) {
                const uint8_t *w[4];
                uint32_t wl[4];
                int nw = 0;
                long n = resp_span(in + at, in_len - at, 0, w, wl, &nw);

                if (n < 0) {
                    snprintf(why, sizeof(why), "the server sent no RESP");
                    goto out;
                }
                if (n == 0)
                    break;
                on_value(in + at, n, w, wl, nw);
                if (in[at] == '*')
                    got = 1;
                at += (size_t)n;
            }
            memmove(in, in + at, in_len - at);
            in_len -= at;
            if (got)
                drv_kick_server();      /* a sleeping poll thread delivers, or unblocks */
        }
    }
out:
    free(in);
    free(o);
    pthread_mutex_lock(&P.mu);
    if (!P.stop) {
        P.lost = 1;
        snprintf(P.why, sizeof(P.why), "%s", why);
        inbox_add(0, 1, NULL, 0, NULL, 0);
    }
    pthread_mutex_unlock(&P.mu);
    if (why[0])
        drv_log("warning", DRV_NAME ": pub/sub connection lost: %s", why);
    drv_kick_server();
    (void)arg;
    return NULL;
}

/* The server's own address: the unix socket, else 127.0.0.1 and the port. */
static int config_get(RedisModuleCtx *ctx, const char *name, char *out, size_t cap)
{
    RedisModuleCallReply *r = RedisModule_Call(ctx, "CONFIG", "cc", "GET", name);
    RedisModuleCallReply *v;
    const char *p;
    size_t n = 0;

    out[0] = '\0';
    if (!r)
        return -1;
    if (RedisModule_CallReplyType(r) == REDISMODULE_REPLY_ARRAY &&
        RedisModule_CallReplyLength(r) == 2 &&
        (v = RedisModule_CallReplyArrayElement(r, 1)) &&
        (p = RedisModule_CallReplyStringPtr(v, &n)) && n < cap) {
        memcpy(out, p, n);
        out[n] = '\0';
    } else if (RedisModule_CallReplyType(r) == REDISMODULE_REPLY_MAP &&
               RedisModule_CallReplyLength(r) == 1) {
        RedisModuleCallReply *key;

        if (RedisModule_CallReplyMapElement(r, 0, &key, &v) == REDISMODULE_OK && v &&
            (p = RedisModule_CallReplyStringPtr(v, &n)) && n < cap) {
            memcpy(out, p, n);
            out[n] = '\0';
        }
    }
    RedisModule_FreeCallReply(r);
    return 0;
}

static int dial(RedisModuleCtx *ctx, char *err, size_t errlen)
{
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)], port[16];
    int fd;

    config_get(ctx, "unixsocket", path, sizeof(path));
    config_get(ctx, "port", port, sizeof(port));
    if (path[0]) {
        struct sockaddr_un a = { .sun_family = AF_UNIX };

        memcpy(a.sun_path, path, strlen(path) + 1);
        if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
            connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
            snprintf(err, errlen, "cannot connect to %s: %s", path, strerror(errno));
            if (fd >= 0)
                close(fd);
            return -1;
        }
    } else if (atoi(port) > 0) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port)),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

        if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
            connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
            snprintf(err, errlen, "cannot connect to 127.0.0.1:%s: %s", port, strerror(errno));
            if (fd >= 0)
                close(fd);
            return -1;
        }
    } else {
        snprintf(err, errlen, "the server listens on no unix socket and no TCP port");
        return -1;
    }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        snprintf(err, errlen, "fcntl: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* The driver's own user: only the (un)subscribe commands, every channel. */
static int make_user(RedisModuleCtx *ctx, char *err, size_t errlen)
{
    RedisModuleCallReply *r;
    char pw[48];
    int ok;

    snprintf(P.pass, sizeof(P.pass), "%016llx%016llx", (unsigned long long)cxl_random_u64(),
             (unsigned long long)cxl_random_u64());
    snprintf(pw, sizeof(pw), ">%s", P.pass);
    r = RedisModule_Call(ctx, "ACL", "cccccccccccccc", "SETUSER", USER, "reset", "on", pw,
                         "resetchannels", "&*", "+subscribe", "+psubscribe", "+ssubscribe",
                         "+unsubscribe", "+punsubscribe", "+sunsubscribe", "+client|setname");
    ok = r && RedisModule_CallReplyType(r) != REDISMODULE_REPLY_ERROR;
    if (!ok) {
        const char *e = r ? RedisModule_CallReplyStringPtr(r, NULL) : NULL;

        snprintf(err, errlen, "ACL SETUSER %s failed%s%s", USER, e ? ": " : "", e ? e : "");
    }
    if (r)
        RedisModule_FreeCallReply(r);
    return ok ? 0 : -1;
}

/* Poll thread, holding the GIL: connect (again) when there is no live connection. */
static int ensure_connected(RedisModuleCtx *ctx, char *err, size_t errlen)
{
    const char *argv[3];
    uint32_t argl[3];
    int fd, lost;

    pthread_mutex_lock(&P.mu);
    lost = P.lost;
    pthread_mutex_unlock(&P.mu);
    if (P.started && !lost)
        return 0;
    if (P.started && !P.loss_seen) {
        /* Its sessions have not been told yet (drv_v5_deliver does, before the next look). */
        snprintf(err, errlen, "the pub/sub connection was lost just now; subscribe again");
        return -1;
    }
    if (P.started) {                    /* lost: the old thread has ended, its sessions told */
        pthread_join(P.thread, NULL);
        P.started = 0;
        close(P.fd);
        P.fd = -1;
    }
    if (P.evfd < 0 && (P.evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        return -1;
    }
    if (make_user(ctx, err, errlen) < 0 || (fd = dial(ctx, err, errlen)) < 0)
        return -1;
    pthread_mutex_lock(&P.mu);
    P.fd = fd;
    P.lost = 0;
    P.stop = 0;
    P.why[0] = '\0';
    P.out_len = 0;
    argv[0] = "AUTH", argv[1] = USER, argv[2] = P.pass;
    argl[0] = 4, argl[1] = (uint32_t)strlen(USER), argl[2] = (uint32_t)strlen(P.pass);
    queue_command(3, argv, argl);
    argv[0] = "CLIENT", argv[1] = "SETNAME", argv[2] = USER;
    argl[0] = 6, argl[1] = 7, argl[2] = (uint32_t)strlen(USER);
    queue_command(3, argv, argl);
    /* Nothing sent on the old connection is waited for any more (drv_v5_deliver answered
     * the subscribes that were): the counts go on, so no wait compares across connections. */
    __atomic_store_n(&P.confirmed, P.sent, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&P.mu);
    P.loss_seen = 0;
    if (pthread_create(&P.thread, NULL, conn_main, NULL) != 0) {
        snprintf(err, errlen, "cannot start the pub/sub thread");
        close(fd);
        P.fd = -1;
        return -1;
    }
    P.started = 1;
    drv_log("notice", DRV_NAME ": pub/sub: subscribing for the ring's sessions as ACL user %s",
            USER);
    return 0;
}

/* Module unload or shutdown (main thread, the poll thread stopped): close, forget the user. */
void drv_pubsub_stop(RedisModuleCtx *ctx)
{
    struct ps_name *e;

    if (P.started) {
        pthread_mutex_lock(&P.mu);
        P.stop = 1;
        pthread_mutex_unlock(&P.mu);
        poke();
        pthread_join(P.thread, NULL);
        P.started = 0;
        close(P.fd);
        P.fd = -1;
        if (ctx) {
            RedisModuleCallReply *r = RedisModule_Call(ctx, "ACL", "cc", "DELUSER", USER);

            if (r)
                RedisModule_FreeCallReply(r);
        }
    }
    while ((e = P.names)) {
        P.names = e->next;
        free(e);
    }
    P.name_count = 0;
    while (P.in_head) {
        struct drv_push *m = P.in_head;

        P.in_head = m->next;
        free(m);
    }
    P.in_tail = NULL;
    free(P.out);
    P.out = NULL;
    P.out_len = P.out_cap = 0;
    if (P.evfd >= 0)
        close(P.evfd);
    P.evfd = -1;
}

/* Poll thread: the messages read since the last call, oldest first (the caller frees). */
struct drv_push *drv_pubsub_take(void)
{
    struct drv_push *m;

    if (!__atomic_load_n(&P.in_head, __ATOMIC_RELAXED))
        return NULL;                    /* a hint: looked at again next time */
    pthread_mutex_lock(&P.mu);
    m = P.in_head;
    P.in_head = P.in_tail = NULL;
    pthread_mutex_unlock(&P.mu);
    return m;
}

/* The poll thread told every subscribed session that the connection was lost. */
void drv_pubsub_loss_seen(void)
{
    struct ps_name *e;

    P.loss_seen = 1;
    while ((e = P.names)) {             /* every session's names are gone with it */
        P.names = e->next;
        free(e);
    }
    P.name_count = 0;
}

/* Does the session hold the name a message came for? */
int drv_pubsub_wants(const struct drv_subs *ss, const struct drv_push *m)
{
    return subs_find(ss, m->kind, m->data, m->name_len) >= 0;
}

void drv_pubsub_info(uint64_t *names, uint64_t *messages, int *connected)
{
    int lost;

    pthread_mutex_lock(&P.mu);
    lost = P.lost;
    pthread_mutex_unlock(&P.mu);
    *names = P.name_count;              /* a poll-thread count read racily: a statistic */
    *messages = __atomic_load_n(&P.messages, __ATOMIC_RELAXED);
    *connected = P.started && !lost;
}

/* ---- The requests ---------------------------------------------------------------------- */

/*
 * May the session's user subscribe to every name (a pattern as itself)? Redis's check and
 * its error (in 7.0's wording or in 7.2's and Valkey's), and an ACL LOG entry as for a TCP
 * client. 1 when one is refused.
 */
static int channel_refused(struct drv_exec *x, int kind, const struct cxl_req *req,
                           drv_reply_fn *reply, void *sink)
{
    int version = RedisModule_GetServerVersion ? RedisModule_GetServerVersion() : 0;
    uint32_t i;

    if (!x->call_user)
        return 0;
    for (i = 1; i < req->argc; i++) {
        RedisModuleString *name = RedisModule_CreateString(x->ctx, (const char *)req->argv[i],
                                                           req->argl[i]);
        int ok = RedisModule_ACLCheckChannelPermissions(x->call_user, name, kind == 1) ==
                 REDISMODULE_OK;

        if (!ok)
            RedisModule_ACLAddLogEntry(x->ctx, x->call_user, name, REDISMODULE_ACL_LOG_CHANNEL);
        RedisModule_FreeString(x->ctx, name);
        if (ok)
            continue;
        __atomic_store_n(&x->acl_denied, x->acl_denied + 1, __ATOMIC_RELAXED);
        line(reply, sink, version < 0x070200
             ? "-NOPERM this user has no permissions to access one of the channels used as "
               "arguments\r\n"
             : "-NOPERM No permissions to access a channel\r\n");
        return 1;
    }
    return 0;
}

/*
 * SUBSCRIBE and kin on a layout 5 session (x->subs). 0 when req is none of them, or the
 * session has no place for them (layout v2: exec.c refuses them as before).
 */
int drv_pubsub_request(struct drv_exec *x, const struct cxl_req *req, drv_reply_fn *reply,
                       void *sink)
{
    struct drv_block *bl = x->block;
    struct drv_subs *ss = x->subs;
    uint8_t *out = NULL;
    size_t len = 0, cap = 0;
    uint32_t i;
    int kind, sub, rc = 0, j;
    char text[256], err[160];

    if (!ss || !bl || req->op != CXL_OP_CMD || req->argc < 1 ||
        !family(req->argv[0], req->argl[0], &kind, &sub))
        return 0;
    if (bl->active) {                   /* tried again: are Redis's confirmations in? */
        int lost;

        pthread_mutex_lock(&P.mu);
        lost = P.lost;
        pthread_mutex_unlock(&P.mu);
        if (lost) {
            line(reply, sink, "-ERR cxl_ring: pub/sub connection lost (ring-protocol.md 15)\r\n");
            drv_block_clear(bl);
        } else if (__atomic_load_n(&P.confirmed, __ATOMIC_ACQUIRE) >= bl->confirm_until) {
            reply(sink, CXL_ST_OK, ss->pending, ss->pending_len, NULL, 0);
            drv_block_clear(bl);
        } else {
            bl->retry_ns = cxl_now_ns() + CONFIRM_RETRY_NS;
            return 1;
        }
        free(ss->pending);
        ss->pending = NULL;
        ss->pending_len = 0;
        return 1;
    }
    if (!drv_compat_pubsub_served()) {
        snprintf(text, sizeof(text), "-ERR '%s' cannot run from the ring: pub/sub over the ring "
                 "needs Redis 7 or Valkey (ring-protocol.md 15)\r\n",
                 sub ? SUB[kind] : UNSUB[kind]);
        line(reply, sink, text);
        return 1;
    }
    if (sub && req->argc < 2) {
        snprintf(text, sizeof(text), "-ERR wrong number of arguments for '%s' command\r\n",
                 SUB[kind]);
        line(reply, sink, text);
        return 1;
    }
    if (!drv_acl_allowed(x, 1, req->argv, req->argl, reply, sink) ||
        (sub && channel_refused(x, kind, req, reply, sink)))
        return 1;                       /* Redis's own NOPERM, for the command or a name */
    if (sub) {
        if (ensure_connected(x->ctx, err, sizeof(err)) < 0) {
            snprintf(text, sizeof(text), "-ERR cxl_ring: cannot subscribe: %s\r\n", err);
            line(reply, sink, text);
            return 1;
        }
        uint64_t need = ss->bytes;

        for (i = 1; i < req->argc; i++)
            need += CONFIRM_MAX(UNSUB[kind], req->argl[i]);
        if (need > x->max_value) {
            /* Every confirmation of the session must fit one reply (an UNSUBSCRIBE of all),
             * and the driver keeps the names in its own memory. */
            snprintf(text, sizeof(text), "-ERR cxl_ring: a ring session's subscriptions must "
                     "fit one reply of max_value_size (%u bytes); this one would not "
                     "(ring-protocol.md 15)\r\n", x->max_value);
            line(reply, sink, text);
            return 1;
        }
        for (i = 1; i < req->argc && !rc; i++) {
            if (subs_find(ss, kind, req->argv[i], req->argl[i]) < 0)
                rc = subs_add(ss, kind, req->argv[i], req->argl[i]);
            if (!rc)
                rc = put_confirm(&out, &len, &cap, SUB[kind], req->argv[i],
                                 (int32_t)req->argl[i], subs_counted(ss, kind));
        }
    } else if (req->argc > 1) {
        uint64_t need = 0;

        for (i = 1; i < req->argc; i++)
            need += CONFIRM_MAX(UNSUB[kind], req->argl[i]);
        if (need > x->max_value) {
            snprintf(text, sizeof(text), "-ERR cxl_ring: the confirmations of this request "
                     "would not fit one reply of max_value_size (%u bytes)\r\n", x->max_value);
            line(reply, sink, text);
            return 1;
        }
        for (i = 1; i < req->argc && !rc; i++) {
            if ((j = subs_find(ss, kind, req->argv[i], req->argl[i])) >= 0)
                subs_remove(ss, (uint32_t)j);
            rc = put_confirm(&out, &len, &cap, UNSUB[kind], req->argv[i],
                             (int32_t)req->argl[i], subs_counted(ss, kind));
        }
    } else {
        int any = 0;

        for (i = 0; i < ss->count && !rc;) {
            if (ss->v[i].kind != kind) {
                i++;
                continue;
            }
            any = 1;
            /* the confirmation names it before it goes (subs_remove frees the name) */
            rc = put_confirm(&out, &len, &cap, UNSUB[kind], ss->v[i].name,
                             (int32_t)ss->v[i].len, subs_counted(ss, kind) - 1);
            subs_remove(ss, i);          /* the last one moves to i: look at i again */
        }
        if (!any && !rc)
            rc = put_confirm(&out, &len, &cap, UNSUB[kind], NULL, -1, subs_counted(ss, kind));
    }
    if (rc) {
        free(out);
        line(reply, sink, "-ERR cxl_ring: out of memory for the subscriptions\r\n");
        return 1;
    }
    if (!sub || __atomic_load_n(&P.confirmed, __ATOMIC_ACQUIRE) >= P.sent) {
        reply(sink, CXL_ST_OK, out, (uint32_t)len, NULL, 0);
        free(out);
        return 1;
    }
    /* Blocked until Redis confirmed every name sent so far: then the reply. */
    free(ss->pending);
    ss->pending = out;
    ss->pending_len = (uint32_t)len;
    drv_block_hold(bl, req, P.sent, cxl_now_ns() + CONFIRM_RETRY_NS);
    return 1;
}
