/*
 * ycsb.c - a YCSB-like application workload over RESP (docs/benchmarks.md, "An application's
 * workload"): what an unmodified application does to a Redis address, measured the same way
 * whether that address is the native gateway (the ring behind it) or a Redis server over TCP.
 *
 * YCSB (Cooper et al., SoCC 2010) and memtier are not packaged for our guests, so this is our
 * own, small and closed-loop like YCSB's client threads:
 *
 *   load  --records keys "user<N>" (--key-prefix), each a --value-size value (SET, 32 pipelined per
 *         connection); skipped with --no-load when the keys are already there.
 *   run   --ops operations over --connections connections, each with one request in flight
 *         (issue, wait for the reply, issue the next): a read (GET) with probability
 *         --read-proportion, else an update (SET of a fresh value). Keys are drawn from a
 *         zipfian distribution (YCSB's generator, Gray et al., "Quickly generating
 *         billion-record synthetic databases", constant --zipf-theta, default 0.99), then
 *         scrambled by FNV-1a so that the hot keys are spread over the key space, as YCSB's
 *         ScrambledZipfian does; or --distribution uniform.
 *         --workload a (50 % reads, YCSB's "update heavy"), b (95 %, "read mostly"), c (100 %).
 *
 * Every load test here is bounded: --ops at most 10,000,000, --max-seconds stops issuing new
 * operations (the run is then reported as truncated), --timeout-s catches a server that stopped
 * answering. Latency is taken per operation (CLOCK_MONOTONIC from the request's write to its
 * reply's end), kept for every operation and sorted: p50, p90, p99, p99.9, max, mean, per kind.
 *
 * One JSON object on stdout (--text: a summary for a human instead); errors on stderr.
 * --sample-keys N prints N drawn key numbers, one per line, and connects to nothing (the tests
 * check the distribution with it).
 *
 * Exit 0 ok (error replies and misses are counted in the JSON, not fatal); 1 the server could
 * not be reached, broke the protocol, closed the connection or stopped answering; 2 usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_OPS          10000000ull
#define MAX_CONNECTIONS  1024
#define MAX_VALUE        (1u << 20)
#define LOAD_DEPTH       32
#define PREFIX_MAX       32
#define KEY_MAX          (PREFIX_MAX + 24)

enum kind { READ, UPDATE, NKINDS };
static const char *const kind_name[NKINDS] = { "read", "update" };

struct opts {
    const char *host, *port, *unix_path, *user, *password, *label, *json_path, *prefix;
    uint64_t records, ops, seed, sample_keys;
    unsigned connections, value_size;
    double read_proportion, theta, max_seconds, timeout_s;
    bool uniform, load, text;
    char workload;
};

/* ---- errors ------------------------------------------------------------------------------- */

static void die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cxl-ycsb: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

/* ---- random numbers and the key distributions --------------------------------------------- */

static uint64_t rng_state;

static uint64_t rng_next(void)           /* xorshift64* */
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static double rng_unit(void)             /* [0, 1) */
{
    return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0);
}

struct zipf {
    uint64_t n;
    double theta, alpha, zetan, eta, half_pow_theta;
};

static void zipf_init(struct zipf *z, uint64_t n, double theta)
{
    double zeta2 = 1.0 + pow(0.5, theta);
    z->n = n;
    z->theta = theta;
    z->alpha = 1.0 / (1.0 - theta);
    z->zetan = 0;
    for (uint64_t i = 1; i <= n; i++)
        z->zetan += 1.0 / pow((double)i, theta);
    z->eta = (1.0 - pow(2.0 / (double)n, 1.0 - theta)) / (1.0 - zeta2 / z->zetan);
    z->half_pow_theta = pow(0.5, theta);
}

static uint64_t zipf_next(const struct zipf *z)    /* rank 0 (the most popular) .. n-1 */
{
    double u = rng_unit(), uz = u * z->zetan;
    if (uz < 1.0)
        return 0;
    if (uz < 1.0 + z->half_pow_theta)
        return z->n > 1 ? 1 : 0;
    uint64_t r = (uint64_t)((double)z->n * pow(z->eta * u - z->eta + 1.0, z->alpha));
    return r < z->n ? r : z->n - 1;
}

static uint64_t fnv1a64(uint64_t v)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 8; i++) {
        h ^= v & 0xff;
        h *= 0x100000001b3ull;
        v >>= 8;
    }
    return h;
}

static struct zipf zipf;

static uint64_t next_key(const struct opts *o)
{
    if (o->uniform)
        return rng_next() % o->records;
    return fnv1a64(zipf_next(&zipf)) % o->records;
}

/* ---- time --------------------------------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- RESP: requests out, replies in ------------------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
};

static void buf_reserve(struct buf *b, size_t more)
{
    if (b->len + more <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        die(1, "out of memory");
    b->p = p;
    b->cap = cap;
}

static void buf_add(struct buf *b, const void *data, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_addf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    char tmp[128];
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    buf_add(b, tmp, (size_t)n);
}

static void resp_bulk(struct buf *b, const char *s, size_t n)
{
    buf_addf(b, "$%zu\r\n", n);
    buf_add(b, s, n);
    buf_add(b, "\r\n", 2);
}

static struct opts o;
static char *value;     /* --value-size bytes; its first 16 change with every update */

static void request(struct buf *b, enum kind k, uint64_t key, uint64_t stamp)
{
    char name[KEY_MAX];
    int n = snprintf(name, sizeof name, "%s%" PRIu64, o.prefix, key);
    if (k == READ) {
        buf_add(b, "*2\r\n$3\r\nGET\r\n", 13);
        resp_bulk(b, name, (size_t)n);
        return;
    }
    char head[17];
    snprintf(head, sizeof head, "%016" PRIx64, stamp);
    size_t vs = strlen(value);
    memcpy(value, head, vs < 16 ? vs : 16);
    buf_add(b, "*3\r\n$3\r\nSET\r\n", 13);
    resp_bulk(b, name, (size_t)n);
    resp_bulk(b, value, vs);
}

enum reply { RP_INCOMPLETE, RP_OK, RP_NIL, RP_ERROR, RP_PROTOCOL };

/* One reply at the front of in[0..len): its bytes in *used. Only what GET, SET and AUTH answer:
 * a status, an error, an integer, a bulk string or a nil. */
static enum reply parse_reply(const char *in, size_t len, size_t *used, const char **err)
{
    const char *eol = len ? memchr(in, '\n', len) : NULL;
    if (!eol) {
        if (len > 64 * 1024)
            return *err = "a reply line longer than 64 KiB", RP_PROTOCOL;
        return RP_INCOMPLETE;
    }
    size_t line = (size_t)(eol - in) + 1;
    if (line < 3 || in[line - 2] != '\r')
        return *err = "a reply line not ended by CRLF", RP_PROTOCOL;
    switch (in[0]) {
    case '+': case ':':
        *used = line;
        return RP_OK;
    case '-':
        *used = line;
        return RP_ERROR;
    case '_':
        *used = line;
        return RP_NIL;
    case '$': {
        char *end;
        errno = 0;
        long long n = strtoll(in + 1, &end, 10);
        if (errno || end != in + line - 2 || n < -1 || n > 512ll * 1024 * 1024)
            return *err = "a bulk length that is not a number", RP_PROTOCOL;
        if (n == -1) {
            *used = line;
            return RP_NIL;
        }
        if (len < line + (size_t)n + 2)
            return RP_INCOMPLETE;
        if (in[line + n] != '\r' || in[line + n + 1] != '\n')
            return *err = "a bulk string not ended by CRLF", RP_PROTOCOL;
        *used = line + (size_t)n + 2;
        return RP_OK;
    }
    default:
        return *err = "a reply of a type GET and SET do not answer with", RP_PROTOCOL;
    }
}

/* ---- connections -------------------------------------------------------------------------- */

struct conn {
    int fd;
    struct buf out, in;
    size_t out_off;
    unsigned waiting;           /* replies still due */
    enum kind kind;             /* of the run's request in flight */
    uint64_t t0;
};

static int connect_to(const struct opts *o)
{
    if (o->unix_path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        if (strlen(o->unix_path) >= sizeof sa.sun_path)
            die(2, "--unix %s: the path is too long", o->unix_path);
        strcpy(sa.sun_path, o->unix_path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            die(1, "cannot connect to %s: %s", o->unix_path, strerror(errno));
        return fd;
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res, *ai;
    int rc = getaddrinfo(o->host, o->port, &hints, &res);
    if (rc)
        die(1, "cannot resolve %s:%s: %s", o->host, o->port, gai_strerror(rc));
    int fd = -1, saved = 0;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        saved = errno;
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        die(1, "cannot connect to %s:%s: %s", o->host, o->port, strerror(saved));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void target_name(const struct opts *o, char *out, size_t n)
{
    if (o->unix_path)
        snprintf(out, n, "unix:%s", o->unix_path);
    else
        snprintf(out, n, "%s:%s", o->host, o->port);
}

/* Blocking exchange on a fresh connection before the run: AUTH. */
static void authenticate(const struct opts *o, int fd)
{
    struct buf b = { 0 };
    if (o->user) {
        buf_add(&b, "*3\r\n$4\r\nAUTH\r\n", 14);
        resp_bulk(&b, o->user, strlen(o->user));
    } else {
        buf_add(&b, "*2\r\n$4\r\nAUTH\r\n", 14);
    }
    resp_bulk(&b, o->password, strlen(o->password));
    if (write(fd, b.p, b.len) != (ssize_t)b.len)
        die(1, "AUTH: cannot write: %s", strerror(errno));
    char in[512];
    size_t len = 0, used;
    const char *err = NULL;
    for (;;) {
        ssize_t n = read(fd, in + len, sizeof in - 1 - len);
        if (n <= 0)
            die(1, "AUTH: the server closed the connection");
        len += (size_t)n;
        enum reply r = parse_reply(in, len, &used, &err);
        if (r == RP_OK)
            break;
        if (r == RP_ERROR) {
            in[strcspn(in, "\r\n")] = 0;
            die(1, "AUTH refused: %s", in + 1);
        }
        if (r == RP_PROTOCOL || len >= sizeof in - 1)
            die(1, "AUTH: protocol error: %s", err ? err : "reply too long");
    }
    free(b.p);
}

static int epfd;

static void conn_arm(struct conn *c, bool want_out)
{
    struct epoll_event ev = { .events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c };
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die(1, "epoll_ctl: %s", strerror(errno));
}

/* Write what is pending; true when it is all out. */
static bool conn_flush(struct conn *c)
{
    while (c->out_off < c->out.len) {
        ssize_t n = write(c->fd, c->out.p + c->out_off, c->out.len - c->out_off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_arm(c, true);
            return false;
        }
        if (n < 0)
            die(1, "write: %s (the server closed the connection?)", strerror(errno));
        c->out_off += (size_t)n;
    }
    c->out.len = c->out_off = 0;
    return true;
}

/* ---- the phases --------------------------------------------------------------------------- */

struct stats {
    uint64_t *lat[NKINDS];
    uint64_t count[NKINDS], errors[NKINDS], misses;
    char first_error[200];
};

static struct conn *conns;

static void note_error(struct stats *st, enum kind k, const char *line, size_t len)
{
    st->errors[k]++;
    if (!st->first_error[0]) {
        size_t n = strcspn(line, "\r\n");
        if (n > len)
            n = len;
        if (n > sizeof st->first_error - 1)
            n = sizeof st->first_error - 1;
        memcpy(st->first_error, line, n);
        st->first_error[n] = 0;
    }
}

/* Read what the server sent to c and consume the complete replies; returns how many. */
static unsigned conn_read(struct conn *c, struct stats *st, enum kind k, uint64_t t_end)
{
    unsigned got = 0;
    for (;;) {
        buf_reserve(&c->in, 64 * 1024);
        ssize_t n = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            char t[300];
            target_name(&o, t, sizeof t);
            die(1, "%s closed the connection%s%s", t, n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
        }
        c->in.len += (size_t)n;
    }
    size_t off = 0;
    while (off < c->in.len) {
        size_t used = 0;
        const char *err = NULL;
        enum reply r = parse_reply(c->in.p + off, c->in.len - off, &used, &err);
        if (r == RP_INCOMPLETE)
            break;
        if (r == RP_PROTOCOL)
            die(1, "protocol error from the server: %s", err);
        if (c->waiting == 0)
            die(1, "protocol error from the server: a reply to no request");
        if (r == RP_ERROR)
            note_error(st, k, c->in.p + off + 1, used - 1);
        else if (r == RP_NIL && k == READ)
            st->misses++;
        if (st->lat[k] && t_end) {
            st->lat[k][st->count[k]] = t_end - c->t0;
            st->count[k]++;
        }
        c->waiting--;
        got++;
        off += used;
    }
    memmove(c->in.p, c->in.p + off, c->in.len - off);
    c->in.len -= off;
    return got;
}

static void wait_events(struct epoll_event *evs, int *n)
{
    int ms = (int)(o.timeout_s * 1000.0);
    for (;;) {
        *n = epoll_wait(epfd, evs, MAX_CONNECTIONS, ms);
        if (*n < 0 && errno == EINTR)
            continue;
        if (*n < 0)
            die(1, "epoll_wait: %s", strerror(errno));
        if (*n == 0)
            die(1, "no reply within --timeout-s %.0f s: the server stopped answering", o.timeout_s);
        return;
    }
}

/* One event: what waits to be written goes; the connection if it has replies to read. */
static struct conn *readable(const struct epoll_event *ev)
{
    struct conn *c = ev->data.ptr;
    if ((ev->events & EPOLLOUT) && conn_flush(c))
        conn_arm(c, false);
    return ev->events & (EPOLLIN | EPOLLHUP | EPOLLERR) ? c : NULL;
}

/* Load: keys [0, records) shared out in rounds of LOAD_DEPTH pipelined SETs per connection. */
static double load_phase(struct stats *st)
{
    uint64_t next = 0, t0 = now_ns();
    unsigned busy = 0;
    struct epoll_event evs[MAX_CONNECTIONS];
    for (unsigned i = 0; i < o.connections; i++) {
        struct conn *c = &conns[i];
        for (unsigned d = 0; d < LOAD_DEPTH && next < o.records; d++, next++) {
            request(&c->out, UPDATE, next, next);
            c->waiting++;
        }
        if (c->waiting) {
            busy++;
            conn_flush(c);
        }
    }
    while (busy) {
        int n;
        wait_events(evs, &n);
        for (int e = 0; e < n; e++) {
            struct conn *c = readable(&evs[e]);
            if (!c)
                continue;
            conn_read(c, st, UPDATE, 0);
            if (c->waiting)
                continue;
            for (unsigned d = 0; d < LOAD_DEPTH && next < o.records; d++, next++) {
                request(&c->out, UPDATE, next, next);
                c->waiting++;
            }
            if (c->waiting)
                conn_flush(c);
            else
                busy--;
        }
    }
    return (double)(now_ns() - t0) / 1e9;
}

static void issue(struct conn *c, uint64_t stamp)
{
    enum kind k = rng_unit() < o.read_proportion ? READ : UPDATE;
    c->kind = k;
    request(&c->out, k, next_key(&o), stamp);
    c->waiting = 1;
    c->t0 = now_ns();
    conn_flush(c);
}

static double run_phase(struct stats *st, bool *truncated)
{
    uint64_t issued = 0, t0 = now_ns();
    uint64_t deadline = t0 + (uint64_t)(o.max_seconds * 1e9);
    unsigned busy = 0;
    struct epoll_event evs[MAX_CONNECTIONS];
    *truncated = false;
    for (unsigned i = 0; i < o.connections && issued < o.ops; i++, issued++, busy++)
        issue(&conns[i], issued);
    while (busy) {
        int n;
        wait_events(evs, &n);
        uint64_t t = now_ns();
        for (int e = 0; e < n; e++) {
            struct conn *c = readable(&evs[e]);
            if (!c || !conn_read(c, st, c->kind, t) || c->waiting)
                continue;
            if (issued < o.ops && t < deadline) {
                issue(c, issued++);
            } else {
                busy--;
                if (issued < o.ops)
                    *truncated = true;
            }
        }
    }
    return (double)(now_ns() - t0) / 1e9;
}

/* ---- the report --------------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_us(const uint64_t *v, uint64_t n, double p)
{
    if (!n)
        return 0;
    uint64_t i = (uint64_t)ceil(p / 100.0 * (double)n);
    i = i ? i - 1 : 0;
    return (double)v[i < n ? i : n - 1] / 1000.0;
}

static void json_latency(FILE *f, const char *name, uint64_t *v, uint64_t n, uint64_t errors,
                         bool last)
{
    qsort(v, n, sizeof *v, cmp_u64);
    double sum = 0;
    for (uint64_t i = 0; i < n; i++)
        sum += (double)v[i];
    fprintf(f, "    \"%s\": {\"count\": %" PRIu64 ", \"errors\": %" PRIu64 ", \"p50_us\": %.1f, "
            "\"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f, "
            "\"mean_us\": %.1f}%s\n", name, n, errors, pct_us(v, n, 50), pct_us(v, n, 90),
            pct_us(v, n, 99), pct_us(v, n, 99.9), n ? (double)v[n - 1] / 1000.0 : 0,
            n ? sum / (double)n / 1000.0 : 0, last ? "" : ",");
}

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void report(FILE *f, struct stats *st, double load_s, double run_s, bool truncated)
{
    char target[300];
    target_name(&o, target, sizeof target);
    uint64_t ops = st->count[READ] + st->count[UPDATE];
    uint64_t *all = malloc((ops ? ops : 1) * sizeof *all);
    if (!all)
        die(1, "out of memory");
    memcpy(all, st->lat[READ], st->count[READ] * sizeof *all);
    memcpy(all + st->count[READ], st->lat[UPDATE], st->count[UPDATE] * sizeof *all);
    fprintf(f, "{\n  \"tool\": \"cxl-ycsb\",\n  \"label\": ");
    json_string(f, o.label ? o.label : "");
    fprintf(f, ",\n  \"target\": ");
    json_string(f, target);
    fprintf(f, ",\n  \"workload\": {\"name\": \"%c\", \"read_proportion\": %.4f, "
            "\"update_proportion\": %.4f, \"distribution\": \"%s\", \"zipf_theta\": %.4f, "
            "\"records\": %" PRIu64 ", \"value_size\": %u, \"connections\": %u, \"ops\": %" PRIu64
            ", \"seed\": %" PRIu64 ", \"max_seconds\": %.1f},\n",
            o.workload ? o.workload : '-', o.read_proportion, 1.0 - o.read_proportion,
            o.uniform ? "uniform" : "zipfian", o.uniform ? 0.0 : o.theta, o.records, o.value_size,
            o.connections, o.ops, o.seed, o.max_seconds);
    fprintf(f, "  \"key_prefix\": ");
    json_string(f, o.prefix);
    fprintf(f, ",\n");
    if (o.load)
        fprintf(f, "  \"load\": {\"records\": %" PRIu64 ", \"seconds\": %.3f, \"ops_per_s\": %.1f},\n",
                o.records, load_s, load_s > 0 ? (double)o.records / load_s : 0);
    else
        fprintf(f, "  \"load\": null,\n");
    fprintf(f, "  \"run\": {\"ops\": %" PRIu64 ", \"seconds\": %.3f, \"ops_per_s\": %.1f, "
            "\"truncated\": %s, \"errors\": %" PRIu64 ", \"misses\": %" PRIu64 ", \"first_error\": ",
            ops, run_s, run_s > 0 ? (double)ops / run_s : 0, truncated ? "true" : "false",
            st->errors[READ] + st->errors[UPDATE], st->misses);
    json_string(f, st->first_error);
    fprintf(f, "},\n  \"latency\": {\n");
    json_latency(f, "read", st->lat[READ], st->count[READ], st->errors[READ], false);
    json_latency(f, "update", st->lat[UPDATE], st->count[UPDATE], st->errors[UPDATE], false);
    json_latency(f, "all", all, ops, st->errors[READ] + st->errors[UPDATE], true);
    fprintf(f, "  }\n}\n");
    free(all);
}

static void report_text(FILE *f, struct stats *st, double load_s, double run_s, bool truncated)
{
    char target[300];
    target_name(&o, target, sizeof target);
    uint64_t ops = st->count[READ] + st->count[UPDATE];
    fprintf(f, "cxl-ycsb %s: %s, %.0f %% reads, %" PRIu64 " records of %u B, %u connections\n",
            target, o.uniform ? "uniform" : "zipfian", o.read_proportion * 100, o.records,
            o.value_size, o.connections);
    if (o.load)
        fprintf(f, "load: %" PRIu64 " records in %.2f s\n", o.records, load_s);
    fprintf(f, "run: %" PRIu64 " ops in %.2f s = %.0f ops/s%s; %" PRIu64 " errors, %" PRIu64
            " misses\n", ops, run_s, run_s > 0 ? (double)ops / run_s : 0,
            truncated ? " (truncated by --max-seconds)" : "",
            st->errors[READ] + st->errors[UPDATE], st->misses);
    for (int k = 0; k < NKINDS; k++) {
        uint64_t n = st->count[k];
        qsort(st->lat[k], n, sizeof(uint64_t), cmp_u64);
        fprintf(f, "%-6s %9" PRIu64 " ops  p50 %8.1f us  p99 %8.1f us  max %8.1f us\n",
                kind_name[k], n, pct_us(st->lat[k], n, 50), pct_us(st->lat[k], n, 99),
                n ? (double)st->lat[k][n - 1] / 1000.0 : 0);
    }
    if (st->first_error[0])
        fprintf(f, "first error: %s\n", st->first_error);
}

/* ---- arguments ---------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("usage: cxl-ycsb [--host H] [--port P | --unix PATH] [--user U] [--password P]\n"
          "                [--workload a|b|c] [--read-proportion F] [--records N] [--ops N]\n"
          "                [--connections N] [--value-size BYTES] [--distribution zipfian|uniform]\n"
          "                [--zipf-theta F] [--no-load] [--max-seconds S] [--timeout-s S]\n"
          "                [--key-prefix P] [--seed N] [--label L] [--json FILE] [--text]\n"
          "                [--sample-keys N]\n"
          "A YCSB-like read/update workload over RESP (GET/SET, 1 KiB values, zipfian keys);\n"
          "one JSON object on stdout (or --json FILE). Exit 0 ok, 1 server, 2 usage.\n", f);
}

static uint64_t arg_u64(const char *name, const char *s, uint64_t lo, uint64_t hi)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
        die(2, "%s %s: expected a whole number from %" PRIu64 " to %" PRIu64, name, s, lo, hi);
    return v;
}

static double arg_double(const char *name, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        die(2, "%s %s: expected a number from %g to %g", name, s, lo, hi);
    return v;
}

static void parse_args(int argc, char **argv)
{
    bool proportion_set = false, workload_set = false;
    o = (struct opts){ .host = "127.0.0.1", .port = "6379", .records = 10000, .ops = 100000,
                       .connections = 16, .value_size = 1024, .read_proportion = 0.5,
                       .theta = 0.99, .max_seconds = 60, .timeout_s = 30, .load = true,
                       .seed = 1, .workload = 'a', .prefix = "user" };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(a, "--no-load")) { o.load = false; continue; }
        if (!strcmp(a, "--text")) { o.text = true; continue; }
        if (i + 1 >= argc)
            die(2, "%s: unknown option or missing value (--help)", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--host")) o.host = v;
        else if (!strcmp(a, "--port")) o.port = v;
        else if (!strcmp(a, "--unix")) o.unix_path = v;
        else if (!strcmp(a, "--user")) o.user = v;
        else if (!strcmp(a, "--password")) o.password = v;
        else if (!strcmp(a, "--label")) o.label = v;
        else if (!strcmp(a, "--key-prefix")) {
            if (!*v || strlen(v) > PREFIX_MAX)
                die(2, "--key-prefix %s: expected 1 to %d bytes", v, PREFIX_MAX);
            o.prefix = v;
        }
        else if (!strcmp(a, "--json")) o.json_path = v;
        else if (!strcmp(a, "--records")) o.records = arg_u64(a, v, 1, 100000000);
        else if (!strcmp(a, "--ops")) o.ops = arg_u64(a, v, 1, MAX_OPS);
        else if (!strcmp(a, "--connections")) o.connections = (unsigned)arg_u64(a, v, 1, MAX_CONNECTIONS);
        else if (!strcmp(a, "--value-size")) o.value_size = (unsigned)arg_u64(a, v, 16, MAX_VALUE);
        else if (!strcmp(a, "--seed")) o.seed = arg_u64(a, v, 0, UINT64_MAX);
        else if (!strcmp(a, "--sample-keys")) o.sample_keys = arg_u64(a, v, 1, MAX_OPS);
        else if (!strcmp(a, "--zipf-theta")) o.theta = arg_double(a, v, 0.01, 0.999);
        else if (!strcmp(a, "--max-seconds")) o.max_seconds = arg_double(a, v, 0.1, 86400);
        else if (!strcmp(a, "--timeout-s")) o.timeout_s = arg_double(a, v, 0.1, 3600);
        else if (!strcmp(a, "--read-proportion")) {
            o.read_proportion = arg_double(a, v, 0, 1);
            proportion_set = true;
        } else if (!strcmp(a, "--workload")) {
            if (strlen(v) != 1 || !strchr("abcABC", v[0]))
                die(2, "--workload %s: expected a (50 %% reads), b (95 %%) or c (100 %%)", v);
            o.workload = (char)(v[0] | 0x20);
            workload_set = true;
        } else if (!strcmp(a, "--distribution")) {
            if (!strcmp(v, "uniform")) o.uniform = true;
            else if (!strcmp(v, "zipfian")) o.uniform = false;
            else die(2, "--distribution %s: expected zipfian or uniform", v);
        } else {
            die(2, "%s: unknown option (--help)", a);
        }
    }
    if (proportion_set && workload_set)
        die(2, "--workload and --read-proportion: give one of them");
    if (proportion_set)
        o.workload = 0;
    else
        o.read_proportion = o.workload == 'a' ? 0.5 : o.workload == 'b' ? 0.95 : 1.0;
    if (o.user && !o.password)
        die(2, "--user %s needs --password", o.user);
    if (o.unix_path && o.port && strcmp(o.port, "6379"))
        die(2, "--unix and --port: give one of them");
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    rng_state = o.seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    if (!rng_state)
        rng_state = 1;
    if (!o.uniform)
        zipf_init(&zipf, o.records, o.theta);
    if (o.sample_keys) {
        for (uint64_t i = 0; i < o.sample_keys; i++)
            printf("%" PRIu64 "\n", next_key(&o));
        return 0;
    }
    FILE *out = stdout;
    if (o.json_path && !(out = fopen(o.json_path, "w")))
        die(2, "--json %s: %s", o.json_path, strerror(errno));
    signal(SIGPIPE, SIG_IGN);

    value = malloc(o.value_size + 1);
    if (!value)
        die(1, "out of memory");
    for (unsigned i = 0; i < o.value_size; i++)
        value[i] = (char)('a' + i % 26);
    value[o.value_size] = 0;

    struct stats st = { 0 };
    for (int k = 0; k < NKINDS; k++)
        if (!(st.lat[k] = calloc(o.ops, sizeof(uint64_t))))
            die(1, "out of memory for %" PRIu64 " latencies", o.ops);

    if ((epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die(1, "epoll_create1: %s", strerror(errno));
    conns = calloc(o.connections, sizeof *conns);
    if (!conns)
        die(1, "out of memory");
    for (unsigned i = 0; i < o.connections; i++) {
        struct conn *c = &conns[i];
        c->fd = connect_to(&o);
        if (o.password)
            authenticate(&o, c->fd);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die(1, "epoll_ctl: %s", strerror(errno));
    }

    struct stats load_st = { 0 };
    double load_s = o.load ? load_phase(&load_st) : 0;
    if (load_st.errors[UPDATE])
        die(1, "the load phase got %" PRIu64 " error replies, the first: %s",
            load_st.errors[UPDATE], load_st.first_error);
    bool truncated;
    double run_s = run_phase(&st, &truncated);

    if (o.text)
        report_text(out, &st, load_s, run_s, truncated);
    else
        report(out, &st, load_s, run_s, truncated);
    if (out != stdout && fclose(out))
        die(1, "--json %s: %s", o.json_path, strerror(errno));
    for (unsigned i = 0; i < o.connections; i++) {
        close(conns[i].fd);
        free(conns[i].in.p);
        free(conns[i].out.p);
    }
    for (int k = 0; k < NKINDS; k++)
        free(st.lat[k]);
    free(conns);
    free(value);
    return 0;
}
