/*
 * null_server.c - cxl-null-server: a layout 5 ring server without a keyspace.
 *
 * It serves a region's channels with the driver's own ring code (driver/region.c:
 * format, reuse or refuse the header, liveness fields; driver/channel.c: sessions,
 * framing, session binding, staged responses, quarantine, lease reclaim) and answers
 * every request at once: GET with a fixed value of --value-size bytes, SET with OK,
 * DEL with 0 keys removed, PING with OK, CMD with a RESP error line. There is no
 * Redis behind it: no GIL, no keyspace, no allocation per request. So
 * `cxl-ring-bench` against it measures what the transport alone costs on this
 * machine (the client library, the rings, the driver's side of them), the ceiling
 * the real server's numbers are read against (docs/benchmarks.md, "The null server").
 *
 *   cxl-null-server --path /dev/shm/null0 --channels 8 --value-size 64 &
 *   build/cxl-ring-bench --path /dev/shm/null0 --op set,get --bench 2000000 --pipeline
 *
 * What differs from the driver, and only that: the serving loop below replaces
 * driver/poll.c (no GIL to take, no event loop to wake, no CXLRING.RESET), and the
 * execution functions below replace driver/exec.c. The driver's files are compiled
 * unchanged; the few Redis module API calls they make (allocation, logging) are
 * bound to libc here.
 *
 * Threads, as in the driver: the main thread is the poll thread (it owns every
 * private channel field and writes every server field but the heartbeat); the
 * heartbeat thread bumps server_heartbeat every heartbeat_ms / 2 and nothing else.
 *
 * Exit codes: 0 stopped by SIGTERM or SIGINT (server_state STOPPING, then STOPPED),
 * 1 usage, 2 the region cannot be mapped or is refused (the reason on stderr).
 */
#define _GNU_SOURCE
#include "driver.h"                     /* driver/: -Idriver */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cxl_ring/client.h"            /* struct cxl_backoff: the protocol's waiting policy */

#define NULL_NAME             "cxl-null-server"
#define NULL_DEFAULT_VALUE    64u

/* ---- The Redis module API the driver's files call, bound to libc --------------- */

static void null_log(RedisModuleCtx *ctx, const char *level, const char *fmt, ...)
{
    va_list ap;

    (void)ctx;
    fprintf(stderr, NULL_NAME ": %s: ", level);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/*
 * The driver's files allocate and log through these pointers, and through nothing
 * else of the module API: the Makefile builds this program with REDISMODULE_API=extern,
 * so the header only declares the API's pointers and these are the only definitions.
 * A driver file that starts calling another one fails to link here.
 */
void *(*RedisModule_Alloc)(size_t bytes) = malloc;
void *(*RedisModule_TryAlloc)(size_t bytes) = malloc;
void *(*RedisModule_Calloc)(size_t nmemb, size_t size) = calloc;
void (*RedisModule_Free)(void *ptr) = free;
void (*RedisModule_Log)(RedisModuleCtx *ctx, const char *level, const char *fmt, ...) = null_log;

/* ---- Execution: no keyspace (replaces driver/exec.c and acl.c) -------------- */

static uint8_t *g_value;                /* the GET answer: value_size bytes of 'x' */
static uint32_t g_value_size;

/* ERR status would mean "Redis refused"; a CMD's errors are OK + a RESP2 error line (4.2). */
static const char NO_COMMANDS[] = "-ERR the null server has no keyspace and runs no commands\r\n";

void drv_exec_begin_batch(struct drv_exec *x)
{
    (void)x;
}

/* Nothing is ever paused here: no request waits. */
int drv_exec_must_wait(struct drv_exec *x, uint8_t op)
{
    (void)x;
    (void)op;
    return 0;
}

/* No pub/sub here: no session subscribes, no message comes (replaces driver/pubsub.c). */
void drv_pubsub_session_end(struct drv_subs *ss)
{
    (void)ss;
}

struct drv_push *drv_pubsub_take(void)
{
    return NULL;
}

int drv_pubsub_wants(const struct drv_subs *ss, const struct drv_push *m)
{
    (void)ss;
    (void)m;
    return 0;
}

void drv_pubsub_loss_seen(void)
{
}

/* No Redis users here: every request may run (replaces driver/acl.c). */
int drv_acl_admit(struct drv_exec *x, uint8_t op, uint32_t argc, const uint8_t *const *argv,
                  const uint32_t *argl, drv_reply_fn *reply, void *sink)
{
    (void)x;
    (void)op;
    (void)argc;
    (void)argv;
    (void)argl;
    (void)reply;
    (void)sink;
    return 0;
}

/* GET key -> OK value: the same value whatever the key. */
void drv_exec_get(struct drv_exec *x, const uint8_t *key, uint32_t klen,
                  drv_reply_fn *reply, void *sink)
{
    (void)x;
    (void)key;
    (void)klen;
    reply(sink, CXL_ST_OK, g_value, g_value_size, NULL, 0);
}

/* SET key value -> OK: nothing is stored. */
void drv_exec_set(struct drv_exec *x, const uint8_t *key, uint32_t klen, const uint8_t *val,
                  uint32_t vlen, uint64_t ttl_ms, drv_reply_fn *reply, void *sink)
{
    (void)x;
    (void)key;
    (void)klen;
    (void)val;
    (void)vlen;
    (void)ttl_ms;
    reply(sink, CXL_ST_OK, NULL, 0, NULL, 0);
}

/* Called by channel.c for a request that cxl_req_decode() accepted. */
void drv_exec_request(struct drv_exec *x, const struct cxl_req *req,
                      drv_reply_fn *reply, void *sink)
{
    static const uint8_t none_removed[8];   /* DEL -> OK u64 0 */

    switch (req->op) {
    case CXL_OP_GET:
        drv_exec_get(x, req->argv[0], req->argl[0], reply, sink);
        break;
    case CXL_OP_SET:
        drv_exec_set(x, req->argv[0], req->argl[0], req->argv[1], req->argl[1],
                     req->ttl_ms, reply, sink);
        break;
    case CXL_OP_DEL:
        reply(sink, CXL_ST_OK, none_removed, sizeof(none_removed), NULL, 0);
        break;
    case CXL_OP_CMD:
        reply(sink, CXL_ST_OK, NO_COMMANDS, sizeof(NO_COMMANDS) - 1, NULL, 0);
        break;
    case CXL_OP_PING:
        reply(sink, CXL_ST_OK, NULL, 0, NULL, 0);
        break;
    default:                            /* cxl_req_decode() let no other op through */
        reply(sink, CXL_ST_UNKNOWN_OP, "unknown op", 10, NULL, 0);
        break;
    }
}

/* ---- Stopping ------------------------------------------------------------------ */

static volatile sig_atomic_t g_signalled;

static void on_signal(int sig)
{
    g_signalled = sig;
}

/* T2 pairs with T1 in main(): the heartbeat thread leaves its loop. */
static int stopping(struct drv_server *s)
{
    return __atomic_load_n(&s->stop, __ATOMIC_ACQUIRE);
}

/* ---- The heartbeat thread (as driver/poll.c's) ------------------------------------ */

static void *heartbeat_main(void *arg)
{
    struct drv_server *s = arg;
    uint64_t period_ns = (uint64_t)s->geo.heartbeat_interval_ms * 1000000ull / 2;
    struct timespec deadline;

    if (period_ns == 0)
        period_ns = 500000ull;
    pthread_mutex_lock(&s->hb_mutex);
    while (!stopping(s)) {
        /* Relaxed: clients only watch it change; it orders nothing. */
        uint64_t hb = cxl_load_relaxed64(&s->khdr->server_heartbeat);

        cxl_store_relaxed64(&s->khdr->server_heartbeat, hb + 1);
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_nsec += (long)(period_ns % 1000000000ull);
        deadline.tv_sec += (time_t)(period_ns / 1000000000ull) + deadline.tv_nsec / 1000000000L;
        deadline.tv_nsec %= 1000000000L;
        while (!stopping(s) &&
               pthread_cond_timedwait(&s->hb_cond, &s->hb_mutex, &deadline) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&s->hb_mutex);
    return NULL;
}

/* ---- The serving loop (replaces driver/poll.c's poll thread) ----------------------- */

#define HOUSEKEEPING_NS   (10ull * 1000000ull)   /* lease checks, as the driver's */

static void serve(struct drv_server *s)
{
    struct cxl_backoff b;
    uint64_t now, next_housekeeping = 0;

    cxl_backoff_init(&b, (uint64_t)s->cfg.spin_us * 1000ull,
                     (uint64_t)s->cfg.idle_sleep_us * 1000ull);
    while (!g_signalled) {
        now = cxl_now_ns();
        if (now >= next_housekeeping) {
            drv_v5_housekeeping(s, now);
            next_housekeeping = now + HOUSEKEEPING_NS;
        }
        if (drv_v5_scan(s, now) &&
            drv_v5_process(s, &(struct drv_hold){ .deadline_ns = now + DRV_BATCH_NS,
                                                  .budget = s->cfg.batch })) {
            cxl_backoff_reset(&b);
            continue;
        }
        /* Nothing served (or a channel just quarantined): spin, yield, then sleep. */
        cxl_backoff_wait(&b, now);
    }
}

/* ---- Arguments --------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
"Usage: " NULL_NAME " --path REGION [options]\n"
"\n"
"Serve a layout 5 region's rings without a keyspace (docs/benchmarks.md): GET answers\n"
"a fixed value, SET answers OK. For measuring the transport's own limit with\n"
"cxl-ring-bench. The region options are the cxl_ring module's arguments.\n"
"\n"
"  --path REGION          a file (created at the layout's size when absent or empty) or\n"
"                         a directory of segment files (security secdsm)\n"
"  --channels N           channels in one group (default 8)\n"
"  --groups A,B,...       channels per channel group instead (1..32 groups)\n"
"  --req-ring BYTES       request ring bytes per channel (default 2m; k/m/g suffixes)\n"
"  --resp-ring BYTES      response ring bytes per channel (default 2m)\n"
"  --max-value BYTES      largest argument or reply payload (default 1m)\n"
"  --heartbeat-ms MS      server heartbeat period written in the header (default 100)\n"
"  --client-lease-ms MS   reclaim a channel whose client heartbeat stands still this\n"
"                         long (default 2000)\n"
"  --format auto|always|never  as the module's `format` (default auto)\n"
"  --value-size BYTES     the value every GET answers (default 64; at most --max-value)\n"
"  --spin-us US           spin this long after the last request (default 50)\n"
"  --idle-sleep-us US     longest back-off sleep when idle (default 1000)\n"
"  --batch N              requests served per round (default 512)\n"
"  --help\n"
"\n"
"Stops on SIGTERM or SIGINT (exit 0) and prints what it served on stderr. Exit 1:\n"
"usage; 2: the region cannot be mapped or is refused.\n");
}

/* An unsigned number with an optional k/m/g (binary) suffix, at most max. */
static int parse_size(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;
    uint64_t mult = 1;

    if (!*s || *s == '-')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || end == s)
        return -1;
    if (*end) {
        switch (*end) {
        case 'k': case 'K': mult = 1ull << 10; break;
        case 'm': case 'M': mult = 1ull << 20; break;
        case 'g': case 'G': mult = 1ull << 30; break;
        default: return -1;
        }
        if (end[1])
            return -1;
    }
    if (v > max / mult)
        return -1;
    *out = v * mult;
    return 0;
}

static uint32_t arg_u32(const char *name, const char *value, uint64_t max)
{
    uint64_t v;

    if (parse_size(value, max, &v) < 0) {
        fprintf(stderr, NULL_NAME ": %s %s: expected a number up to %" PRIu64 "\n", name,
                value, max);
        exit(1);
    }
    return (uint32_t)v;
}

static void parse_groups(const char *text, struct cxl_params *p)
{
    const char *at = text;

    p->group_count = 0;
    while (*at) {
        char *end;
        unsigned long n;

        errno = 0;
        n = strtoul(at, &end, 10);
        if (errno || end == at || n < 1 || n > CXL_MAX_CHANNELS ||
            p->group_count == CXL_MAX_GROUPS || (*end && *end != ',')) {
            fprintf(stderr, NULL_NAME ": --groups %s: expected 1..%u channel counts, "
                    "comma-separated, each 1..%u\n", text, CXL_MAX_GROUPS, CXL_MAX_CHANNELS);
            exit(1);
        }
        p->groups[p->group_count++] = (uint32_t)n;
        at = *end ? end + 1 : end;
    }
    if (!p->group_count) {
        fprintf(stderr, NULL_NAME ": --groups needs at least one channel count\n");
        exit(1);
    }
}

enum {
    OPT_PATH = 256, OPT_CHANNELS, OPT_GROUPS, OPT_REQ_RING, OPT_RESP_RING, OPT_MAX_VALUE,
    OPT_HEARTBEAT, OPT_LEASE, OPT_FORMAT, OPT_VALUE_SIZE, OPT_SPIN, OPT_IDLE_SLEEP, OPT_BATCH,
    OPT_HELP,
};

static void parse_args(int argc, char **argv, struct drv_config *cfg)
{
    static const struct option longopts[] = {
        { "path", required_argument, NULL, OPT_PATH },
        { "channels", required_argument, NULL, OPT_CHANNELS },
        { "groups", required_argument, NULL, OPT_GROUPS },
        { "req-ring", required_argument, NULL, OPT_REQ_RING },
        { "resp-ring", required_argument, NULL, OPT_RESP_RING },
        { "max-value", required_argument, NULL, OPT_MAX_VALUE },
        { "heartbeat-ms", required_argument, NULL, OPT_HEARTBEAT },
        { "client-lease-ms", required_argument, NULL, OPT_LEASE },
        { "format", required_argument, NULL, OPT_FORMAT },
        { "value-size", required_argument, NULL, OPT_VALUE_SIZE },
        { "spin-us", required_argument, NULL, OPT_SPIN },
        { "idle-sleep-us", required_argument, NULL, OPT_IDLE_SLEEP },
        { "batch", required_argument, NULL, OPT_BATCH },
        { "help", no_argument, NULL, OPT_HELP },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    memset(cfg, 0, sizeof(*cfg));
    cfg->layout = CXL_LAYOUT_VERSION;
    cfg->format = DRV_FORMAT_AUTO;
    cfg->spin_us = DRV_DEFAULT_SPIN_US;
    cfg->idle_sleep_us = DRV_DEFAULT_SLEEP_US;
    cfg->batch = DRV_DEFAULT_BATCH;
    cfg->cpu = -1;
    g_value_size = NULL_DEFAULT_VALUE;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case OPT_PATH:
            if (strlen(optarg) >= sizeof(cfg->path)) {
                fprintf(stderr, NULL_NAME ": --path is longer than %zu bytes\n",
                        sizeof(cfg->path) - 1);
                exit(1);
            }
            snprintf(cfg->path, sizeof(cfg->path), "%s", optarg);
            break;
        case OPT_CHANNELS:
            cfg->params.channels = arg_u32("--channels", optarg, CXL_MAX_CHANNELS);
            break;
        case OPT_GROUPS:
            parse_groups(optarg, &cfg->params);
            break;
        case OPT_REQ_RING:
            cfg->params.req_ring_size = arg_u32("--req-ring", optarg, CXL_MAX_RING_SIZE);
            break;
        case OPT_RESP_RING:
            cfg->params.resp_ring_size = arg_u32("--resp-ring", optarg, CXL_MAX_RING_SIZE);
            break;
        case OPT_MAX_VALUE:
            cfg->params.max_value_size = arg_u32("--max-value", optarg, CXL_MAX_RING_SIZE);
            break;
        case OPT_HEARTBEAT:
            cfg->params.heartbeat_interval_ms = arg_u32("--heartbeat-ms", optarg, 60000);
            break;
        case OPT_LEASE:
            cfg->params.client_lease_ms = arg_u32("--client-lease-ms", optarg, 3600000);
            break;
        case OPT_FORMAT:
            if (!strcmp(optarg, "auto"))
                cfg->format = DRV_FORMAT_AUTO;
            else if (!strcmp(optarg, "always"))
                cfg->format = DRV_FORMAT_ALWAYS;
            else if (!strcmp(optarg, "never"))
                cfg->format = DRV_FORMAT_NEVER;
            else {
                fprintf(stderr, NULL_NAME ": --format %s: auto, always or never\n", optarg);
                exit(1);
            }
            break;
        case OPT_VALUE_SIZE:
            g_value_size = arg_u32("--value-size", optarg, CXL_MAX_RING_SIZE);
            break;
        case OPT_SPIN:
            cfg->spin_us = arg_u32("--spin-us", optarg, 1000000);
            break;
        case OPT_IDLE_SLEEP:
            cfg->idle_sleep_us = arg_u32("--idle-sleep-us", optarg, 1000000);
            break;
        case OPT_BATCH:
            cfg->batch = arg_u32("--batch", optarg, 1u << 20);
            if (!cfg->batch) {
                fprintf(stderr, NULL_NAME ": --batch must be at least 1\n");
                exit(1);
            }
            break;
        case OPT_HELP:
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(1);
        }
    }
    if (optind < argc) {
        fprintf(stderr, NULL_NAME ": unexpected argument %s (see --help)\n", argv[optind]);
        exit(1);
    }
    if (!cfg->path[0]) {
        fprintf(stderr, NULL_NAME ": --path is required (see --help)\n");
        exit(1);
    }
}

/* ---- Main ---------------------------------------------------------------------------- */

/* What the channels served, summed (read after the threads are joined). */
static void print_summary(const struct drv_server *s)
{
    struct drv_stats t;
    uint32_t c;

    memset(&t, 0, sizeof(t));
    for (c = 0; c < s->nchan; c++) {
        const struct drv_stats *st = &s->chans[c].stats;

        t.requests += st->requests;
        t.ok += st->ok;
        t.bad_request += st->bad_request;
        t.unknown_op += st->unknown_op;
        t.too_large += st->too_large;
        t.protocol_errors += st->protocol_errors;
        t.stale_requests += st->stale_requests;
        t.sessions += st->sessions;
        t.releases += st->releases;
        t.reclaims += st->reclaims;
    }
    fprintf(stderr, NULL_NAME ": stopped: requests %" PRIu64 " ok %" PRIu64 " bad_request %"
            PRIu64 " unknown_op %" PRIu64 " too_large %" PRIu64 " quarantines %" PRIu64
            " stale_requests %" PRIu64 " sessions %" PRIu64 " releases %" PRIu64
            " reclaims %" PRIu64 "\n", t.requests, t.ok, t.bad_request, t.unknown_op,
            t.too_large, t.protocol_errors, t.stale_requests, t.sessions, t.releases,
            t.reclaims);
}

int main(int argc, char **argv)
{
    static struct drv_server srv;       /* large (the exec tables): not on the stack */
    struct drv_server *s = &srv;
    struct sigaction sa;
    pthread_condattr_t ca;
    char err[DRV_ERRLEN * 2];
    int rc;

    parse_args(argc, argv, &s->cfg);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    if (drv_region_open(s, err, sizeof(err)) < 0) {
        fprintf(stderr, NULL_NAME ": %s\n", err);
        return 2;
    }
    if (g_value_size > s->geo.max_value_size) {
        fprintf(stderr, NULL_NAME ": --value-size %u exceeds max_value %u\n", g_value_size,
                s->geo.max_value_size);
        drv_region_close(s);
        return 1;
    }
    g_value = malloc(g_value_size ? g_value_size : 1);
    if (!g_value || drv_chans_init(s) < 0) {
        fprintf(stderr, NULL_NAME ": out of memory\n");
        drv_region_close(s);
        return 2;
    }
    memset(g_value, 'x', g_value_size);
    s->exec.max_value = s->geo.max_value_size;

    pthread_mutex_init(&s->hb_mutex, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->hb_cond, &ca);
    pthread_condattr_destroy(&ca);
    if ((rc = pthread_create(&s->hb_thread, NULL, heartbeat_main, s)) != 0) {
        fprintf(stderr, NULL_NAME ": cannot start the heartbeat thread: %s\n", strerror(rc));
        drv_region_stopping(s, CXL_SERVER_STOPPED);
        drv_chans_free(s);
        drv_region_close(s);
        return 2;
    }
    s->threads_running = 1;
    drv_region_running(s);              /* the new epoch, then RUNNING (L1) */
    fprintf(stderr, NULL_NAME ": serving %s (%s, %u channels in %u group%s, %s), GET "
            "answers %u bytes, epoch %016" PRIx64 "\n", s->cfg.path, s->region.kind, s->nchan,
            s->geo.group_count, s->geo.group_count != 1 ? "s" : "",
            s->formatted ? "formatted" : "reused", g_value_size, s->epoch);

    serve(s);

    /* As the driver's shutdown: STOPPING, the threads end, STOPPED. */
    drv_region_stopping(s, CXL_SERVER_STOPPING);
    /* T1 pairs with T2 in stopping(). */
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&s->hb_mutex);
    pthread_cond_signal(&s->hb_cond);
    pthread_mutex_unlock(&s->hb_mutex);
    pthread_join(s->hb_thread, NULL);
    s->threads_running = 0;
    drv_region_stopping(s, CXL_SERVER_STOPPED);
    print_summary(s);
    drv_chans_free(s);
    drv_region_close(s);
    free(g_value);
    return 0;
}
