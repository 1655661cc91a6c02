/*
 * cxl_ring - serve Redis over shared-memory rings (CXL-style memory, ivshmem,
 * or a /dev/shm file), as a module loaded into a stock redis-server.
 *
 * A client maps the same region and talks to this module through per-channel
 * request and response rings (docs/ring-protocol.md, layout version 5; or the
 * proof of concept's layout v2 with `layout v2`). Requests run against the
 * real keyspace: what a ring client sets, redis-cli sees; writes reach the
 * AOF and replicas; maxmemory is respected.
 *
 *   loadmodule /path/cxl_ring.so path /dev/shm/cxl0 channels 8
 *   loadmodule /path/cxl_ring.so path /dev/shm/lab-cxl0 groups 4,2   (a directory)
 *
 * This file holds the Redis entry points: argument parsing, OnLoad/OnUnload,
 * the CXLRING.INFO and CXLRING.RESET commands and the shutdown event. The ring
 * work happens on the module's poll thread (poll.c), which takes the GIL once
 * per batch of requests (the RedisModule_ThreadSafeContextLock pattern of
 * helloblock.c).
 */
#include "driver.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define RESET_TIMEOUT_MS 2000

static struct drv_server g_srv;

void drv_kick_server(void)
{
    drv_kick(&g_srv);
}

/* ---- Module arguments ------------------------------------------------------- */

/* An unsigned number with an optional k/m/g (binary) suffix. */
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
        if (end[1] && strcasecmp(end + 1, "b") && strcasecmp(end + 1, "ib"))
            return -1;
    }
    if (v > max / mult)
        return -1;
    *out = v * mult;
    return 0;
}

/* 1 when val is not a number within [lo, hi]. */
static int parse_u32(const char *val, uint64_t lo, uint64_t hi, uint32_t *out)
{
    uint64_t v;

    if (parse_size(val, hi, &v) < 0 || v < lo)
        return 1;
    *out = (uint32_t)v;
    return 0;
}

/* `groups 4,2`: channels per group. 0, 1 for a malformed value, -1 with err set. */
static int parse_groups(const char *val, struct cxl_params *p, char *err, size_t errlen)
{
    const char *at = val;

    p->group_count = 0;
    for (;;) {
        char *end;
        unsigned long v;

        if (*at < '0' || *at > '9')
            return 1;
        errno = 0;
        v = strtoul(at, &end, 10);
        if (errno || v < 1 || v > CXL_MAX_CHANNELS)
            return 1;
        if (p->group_count == CXL_MAX_GROUPS) {
            snprintf(err, errlen, "groups '%s': at most %u channel groups", val,
                     CXL_MAX_GROUPS);
            return -1;
        }
        p->groups[p->group_count++] = (uint32_t)v;
        if (!*end)
            return 0;
        if (*end != ',')
            return 1;
        at = end + 1;
    }
}

/* `acl_users app,-,guest`: the ACL user of each channel group, "-" for none (acl.c).
 * 0, 1 for a malformed value, -1 with err set. */
static int parse_acl_users(const char *val, struct drv_config *cfg, char *err, size_t errlen)
{
    const char *at = val;

    cfg->acl_user_count = 0;
    for (;;) {
        size_t n = strcspn(at, ",");

        if (n == 0)
            return 1;
        if (cfg->acl_user_count == CXL_MAX_GROUPS) {
            snprintf(err, errlen, "acl_users '%s': at most %u channel groups", val,
                     CXL_MAX_GROUPS);
            return -1;
        }
        if (n >= DRV_USER_MAX) {
            snprintf(err, errlen, "acl_users: a user name longer than %u bytes",
                     DRV_USER_MAX - 1);
            return -1;
        }
        if (!(n == 1 && at[0] == '-'))
            memcpy(cfg->acl_users[cfg->acl_user_count], at, n);
        cfg->acl_user_count++;
        if (!at[n])
            return 0;
        at += n + 1;
    }
}

static int parse_args(struct drv_config *cfg, RedisModuleString **argv, int argc,
                      char *err, size_t errlen)
{
    int i;

    memset(cfg, 0, sizeof(*cfg));
    cfg->layout = CXL_LAYOUT_VERSION;
    cfg->format = DRV_FORMAT_AUTO;
    cfg->spin_us = DRV_DEFAULT_SPIN_US;
    cfg->idle_sleep_us = DRV_DEFAULT_SLEEP_US;
    cfg->batch = DRV_DEFAULT_BATCH;
    cfg->cpu = -1;
    cfg->notify = DRV_NOTIFY_AUTO;
    cfg->sleep_max_ms = DRV_DEFAULT_SLEEP_MAX_MS;
    cfg->v2_rings = DRV_V2_DEFAULT_RINGS;
    cfg->v2_slots = DRV_V2_DEFAULT_SLOTS;

    if (argc % 2) {
        snprintf(err, errlen, "arguments are name value pairs (got %d words)", argc);
        return -1;
    }
    for (i = 0; i < argc; i += 2) {
        const char *name = RedisModule_StringPtrLen(argv[i], NULL);
        const char *val = RedisModule_StringPtrLen(argv[i + 1], NULL);
        int bad = 0;

#define U32(field, lo, hi) \
        do { bad = parse_u32(val, lo, hi, &(field)); } while (0)
        if (!strcasecmp(name, "path")) {
            if (strlen(val) >= sizeof(cfg->path))
                bad = 1;
            else
                snprintf(cfg->path, sizeof(cfg->path), "%s", val);
        } else if (!strcasecmp(name, "map_size")) {
            bad = parse_size(val, UINT64_MAX, &cfg->map_size) < 0;
        } else if (!strcasecmp(name, "channels")) {
            U32(cfg->params.channels, 1, CXL_MAX_CHANNELS);
        } else if (!strcasecmp(name, "groups")) {
            bad = parse_groups(val, &cfg->params, err, errlen);
            if (bad < 0)
                return -1;
        } else if (!strcasecmp(name, "segment_align")) {
            U32(cfg->params.segment_align, CXL_PAGE_SIZE, 1u << 30);
        } else if (!strcasecmp(name, "req_ring")) {
            U32(cfg->params.req_ring_size, CXL_MIN_RING_SIZE, CXL_MAX_RING_SIZE);
        } else if (!strcasecmp(name, "resp_ring")) {
            U32(cfg->params.resp_ring_size, CXL_MIN_RING_SIZE, CXL_MAX_RING_SIZE);
        } else if (!strcasecmp(name, "max_value")) {
            U32(cfg->params.max_value_size, 1, UINT32_MAX - CXL_MSG_SLACK);
        } else if (!strcasecmp(name, "heartbeat_ms")) {
            U32(cfg->params.heartbeat_interval_ms, 1, 60000);
        } else if (!strcasecmp(name, "client_lease_ms")) {
            U32(cfg->params.client_lease_ms, 100, 3600000);
        } else if (!strcasecmp(name, "access_delay_ns")) {
            U32(cfg->access_delay_ns, 0, CXL_MAX_ACCESS_DELAY_NS);
        } else if (!strcasecmp(name, "spin_us")) {
            U32(cfg->spin_us, 0, 1000000);
        } else if (!strcasecmp(name, "idle_sleep_us")) {
            U32(cfg->idle_sleep_us, 1, 1000000);
        } else if (!strcasecmp(name, "batch")) {
            U32(cfg->batch, 1, 1000000);
        } else if (!strcasecmp(name, "cpu")) {
            uint32_t cpu = 0;
            U32(cpu, 0, 1023);
            cfg->cpu = (int)cpu;
        } else if (!strcasecmp(name, "v2_rings")) {
            U32(cfg->v2_rings, 1, CXL_V2_MAX_RINGS);
        } else if (!strcasecmp(name, "v2_slots")) {
            U32(cfg->v2_slots, 1, 1u << 20);
        } else if (!strcasecmp(name, "layout")) {
            if (!strcasecmp(val, "v5") || !strcmp(val, "5")) {
                cfg->layout = CXL_LAYOUT_VERSION;
            } else if (!strcasecmp(val, "v2") || !strcmp(val, "2")) {
                cfg->layout = 2;
            } else if (!strcasecmp(val, "v4") || !strcmp(val, "4") ||
                       !strcasecmp(val, "v3") || !strcmp(val, "3")) {
                /* Layout 5 replaced layout 4 (v3 was its earlier name): its bytes moved
                 * into segments, so a layout 4 client cannot read a layout 5 region. */
                snprintf(err, errlen, "layout %s is no longer served: this build speaks "
                         "layout v5 (segments, docs/ring-protocol.md section 2) and v2; "
                         "use layout v5 and update the region's clients", val);
                return -1;
            } else {
                bad = 1;
            }
        } else if (!strcasecmp(name, "notify")) {
            if (!strcasecmp(val, "auto"))
                cfg->notify = DRV_NOTIFY_AUTO;
            else if (!strcasecmp(val, "futex"))
                cfg->notify = DRV_NOTIFY_FUTEX;
            else if (!strcasecmp(val, "off"))
                cfg->notify = DRV_NOTIFY_OFF;
            else if (!strcasecmp(val, "doorbell"))
                cfg->notify = DRV_NOTIFY_DOORBELL;
            else
                bad = 1;
        } else if (!strcasecmp(name, "doorbell")) {
            if (!*val || strlen(val) >= sizeof(cfg->doorbell))
                bad = 1;
            else
                snprintf(cfg->doorbell, sizeof(cfg->doorbell), "%s", val);
        } else if (!strcasecmp(name, "doorbell_peer")) {
            U32(cfg->doorbell_peer, 0, 0xffff);
        } else if (!strcasecmp(name, "test_remote_region")) {
            /* Test only: notify auto takes the region for another machine's memory, as a
             * uio region in a VM (tests/ring/test_doorbell_notify.py). */
            if (!strcasecmp(val, "yes") || !strcmp(val, "1"))
                cfg->test_remote_region = 1;
            else if (!strcasecmp(val, "no") || !strcmp(val, "0"))
                cfg->test_remote_region = 0;
            else
                bad = 1;
        } else if (!strcasecmp(name, "test_start_delay_ms")) {
            /* Test only: the poll thread runs this long before the region says RUNNING, so
             * it is asleep by then (tests/ring/test_notify_start.py). */
            U32(cfg->test_start_delay_ms, 0, 10000);
        } else if (!strcasecmp(name, "acl_users")) {
            bad = parse_acl_users(val, cfg, err, errlen);
            if (bad < 0)
                return -1;
        } else if (!strcasecmp(name, "sleep_max_ms")) {
            U32(cfg->sleep_max_ms, 1, 60000);
        } else if (!strcasecmp(name, "format")) {
            if (!strcasecmp(val, "auto"))
                cfg->format = DRV_FORMAT_AUTO;
            else if (!strcasecmp(val, "always"))
                cfg->format = DRV_FORMAT_ALWAYS;
            else if (!strcasecmp(val, "never"))
                cfg->format = DRV_FORMAT_NEVER;
            else
                bad = 1;
        } else {
            snprintf(err, errlen, "unknown argument '%s' (see driver/README.md)", name);
            return -1;
        }
#undef U32
        if (bad) {
            snprintf(err, errlen, "bad value '%s' for argument '%s'", val, name);
            return -1;
        }
    }
    if (cfg->acl_user_count > (cfg->params.group_count ? cfg->params.group_count : 1)) {
        snprintf(err, errlen, "acl_users names %u users but the region has %u channel "
                 "group%s", cfg->acl_user_count,
                 cfg->params.group_count ? cfg->params.group_count : 1,
                 cfg->params.group_count > 1 ? "s" : "");
        return -1;
    }
    if (!cfg->path[0]) {
        snprintf(err, errlen, "the 'path' argument is required (a file, /dev/uioN, a "
                 "sysfs resource2, or a directory of segment files)");
        return -1;
    }
    return 0;
}

/* ---- CXLRING.INFO [channel] ------------------------------------------------ */

static const char *server_state_name(uint32_t st)
{
    switch (st) {
    case CXL_SERVER_STOPPED:  return "stopped";
    case CXL_SERVER_STARTING: return "starting";
    case CXL_SERVER_RUNNING:  return "running";
    case CXL_SERVER_STOPPING: return "stopping";
    default:                  return "?";
    }
}

static void reply_u64(RedisModuleCtx *ctx, const char *name, uint64_t v)
{
    RedisModule_ReplyWithSimpleString(ctx, name);
    RedisModule_ReplyWithLongLong(ctx, (long long)v);
}

static void reply_str(RedisModuleCtx *ctx, const char *name, const char *v)
{
    RedisModule_ReplyWithSimpleString(ctx, name);
    RedisModule_ReplyWithSimpleString(ctx, v);
}

static void reply_channel(RedisModuleCtx *ctx, struct drv_server *s, uint32_t c)
{
    const struct drv_stats *st;
    char tok[24];
    const char *state;
    uint32_t last_error = 0;
    uint64_t errors, pending = 0;

    if (s->cfg.layout == CXL_LAYOUT_VERSION) {
        struct drv_chan *ch = &s->chans[c];
        st = &ch->stats;
        /* Read back what we published: the poll thread's private copy may be mid-change. */
        state = drv_chan_state_name(cxl_load_acquire32(&ch->kserver->chan_state));
        last_error = cxl_load_relaxed32(&ch->kserver->last_error);
        snprintf(tok, sizeof(tok), "%016" PRIx64, cxl_load_acquire64(&ch->kserver->ack_token));
    } else {
        st = &s->v2[c].stats;
        state = "v2";
        snprintf(tok, sizeof(tok), "-");
    }
    errors = STAT_GET(st, err) + STAT_GET(st, oom) + STAT_GET(st, too_large) +
             STAT_GET(st, bad_request) + STAT_GET(st, unknown_op) +
             STAT_GET(st, protocol_errors);
    RedisModule_ReplyWithMap(ctx, 30);
    reply_u64(ctx, "channel", c);
    reply_u64(ctx, "group", s->cfg.layout == CXL_LAYOUT_VERSION ? s->geo.chan_group[c] : 0);
    reply_str(ctx, "state", state);
    reply_str(ctx, "token", tok);
    reply_u64(ctx, "requests", STAT_GET(st, requests));
    reply_u64(ctx, "ok", STAT_GET(st, ok));
    reply_u64(ctx, "not_found", STAT_GET(st, not_found));
    reply_u64(ctx, "errors", errors);
    reply_u64(ctx, "err", STAT_GET(st, err));
    reply_u64(ctx, "oom", STAT_GET(st, oom));
    reply_u64(ctx, "too_large", STAT_GET(st, too_large));
    reply_u64(ctx, "bad_request", STAT_GET(st, bad_request));
    reply_u64(ctx, "unknown_op", STAT_GET(st, unknown_op));
    reply_u64(ctx, "protocol_errors", STAT_GET(st, protocol_errors));
    reply_u64(ctx, "stale_requests", STAT_GET(st, stale_requests));
    reply_u64(ctx, "last_error", last_error);
    reply_u64(ctx, "sessions", STAT_GET(st, sessions));
    reply_u64(ctx, "releases", STAT_GET(st, releases));
    reply_u64(ctx, "reclaims", STAT_GET(st, reclaims));
    reply_u64(ctx, "resets", STAT_GET(st, resets));
    reply_u64(ctx, "resp_full", STAT_GET(st, resp_full));
    reply_u64(ctx, "client_rings", STAT_GET(st, client_rings));
    reply_u64(ctx, "client_ring_errors", STAT_GET(st, client_ring_errors));
    /* pub/sub (pubsub.c): the session's names, messages pushed and dropped */
    reply_u64(ctx, "subscriptions", s->cfg.layout == CXL_LAYOUT_VERSION
              ? (uint64_t)__atomic_load_n(&s->chans[c].subs.count, __ATOMIC_RELAXED) : 0);
    reply_u64(ctx, "pushes", STAT_GET(st, pushes));
    reply_u64(ctx, "pushes_dropped", STAT_GET(st, pushes_dropped));
    /* 1 while the session waits in BLPOP and kin (block.c); the poll thread's flag */
    reply_u64(ctx, "blocked", s->cfg.layout == CXL_LAYOUT_VERSION
              ? (uint64_t)__atomic_load_n(&s->chans[c].block.active, __ATOMIC_RELAXED) : 0);
    reply_u64(ctx, "bytes_in", STAT_GET(st, bytes_in));
    reply_u64(ctx, "bytes_out", STAT_GET(st, bytes_out));
    if (s->cfg.layout == CXL_LAYOUT_VERSION)             /* bytes of responses waiting for room */
        pending = (uint64_t)__atomic_load_n(&s->chans[c].out_len, __ATOMIC_RELAXED) +
                  __atomic_load_n(&s->chans[c].big_len, __ATOMIC_RELAXED);
    reply_u64(ctx, "pending", pending);
}

static int parse_channel(RedisModuleCtx *ctx, struct drv_server *s, RedisModuleString *arg,
                         uint32_t *chan)
{
    long long c;

    if (RedisModule_StringToLongLong(arg, &c) != REDISMODULE_OK || c < 0 ||
        c >= (long long)s->nchan) {
        RedisModule_ReplyWithError(ctx, "ERR channel must be 0..channel_count-1");
        return -1;
    }
    *chan = (uint32_t)c;
    return 0;
}

/* CXLRING.INFO [channel] -> a map: server facts and one map per channel. */
static int cmd_info(RedisModuleCtx *ctx, RedisModuleString **argv, int argc)
{
    struct drv_server *s = &g_srv;
    char epoch[24];
    uint32_t c, state = CXL_SERVER_RUNNING;
    uint64_t hb = 0, rings = 0, ring_errors = 0, pushes = 0, dropped = 0, ps_names = 0;
    uint64_t ps_messages = 0;
    int ps_connected = 0;

    if (argc > 2)
        return RedisModule_WrongArity(ctx);
    if (argc == 2) {
        if (parse_channel(ctx, s, argv[1], &c) < 0)
            return REDISMODULE_OK;
        reply_channel(ctx, s, c);
        return REDISMODULE_OK;
    }
    if (s->cfg.layout == CXL_LAYOUT_VERSION) {
        state = cxl_load_acquire32(&s->khdr->server_state);
        hb = cxl_load_relaxed64(&s->khdr->server_heartbeat);
    }
    snprintf(epoch, sizeof(epoch), "%" PRIu64, s->epoch);
    if (s->cfg.layout == CXL_LAYOUT_VERSION)
        for (c = 0; c < s->nchan; c++) {
            rings += STAT_GET(&s->chans[c].stats, client_rings);
            ring_errors += STAT_GET(&s->chans[c].stats, client_ring_errors);
            pushes += STAT_GET(&s->chans[c].stats, pushes);
            dropped += STAT_GET(&s->chans[c].stats, pushes_dropped);
        }
    drv_pubsub_info(&ps_names, &ps_messages, &ps_connected);
    RedisModule_ReplyWithMap(ctx, 39);
    reply_str(ctx, "layout", s->cfg.layout == CXL_LAYOUT_VERSION ? "v5" : "v2");
    reply_str(ctx, "path", s->cfg.path);
    reply_str(ctx, "region", s->region.kind);
    reply_u64(ctx, "map_size", s->region.size);
    reply_u64(ctx, "group_count", s->cfg.layout == CXL_LAYOUT_VERSION ? s->geo.group_count : 0);
    reply_u64(ctx, "segment_align", s->cfg.layout == CXL_LAYOUT_VERSION ? s->geo.segment_align : 0);
    reply_str(ctx, "epoch", epoch);
    reply_str(ctx, "server_state", server_state_name(state));
    reply_u64(ctx, "heartbeat", hb);
    reply_u64(ctx, "formatted", (uint64_t)s->formatted);
    reply_u64(ctx, "channel_count", s->nchan);
    reply_u64(ctx, "max_value", s->exec.max_value);
    reply_u64(ctx, "client_lease_ms", s->cfg.layout == CXL_LAYOUT_VERSION ? s->geo.client_lease_ms : 0);
    reply_u64(ctx, "heartbeat_ms", s->cfg.layout == CXL_LAYOUT_VERSION ? s->geo.heartbeat_interval_ms : 0);
    reply_u64(ctx, "access_delay_ns", s->cfg.access_delay_ns);
    reply_u64(ctx, "gil_holds", __atomic_load_n(&s->gil_holds, __ATOMIC_RELAXED));
    reply_u64(ctx, "event_loop_wakeups", __atomic_load_n(&s->wakeups, __ATOMIC_RELAXED));
    reply_u64(ctx, "gil_hold_max_us",
              __atomic_load_n(&s->hold_max_ns, __ATOMIC_RELAXED) / 1000);
    reply_u64(ctx, "gil_handoffs", __atomic_load_n(&s->handoffs, __ATOMIC_RELAXED));
    reply_u64(ctx, "gil_handoffs_taken",
              __atomic_load_n(&s->handoffs_taken, __ATOMIC_RELAXED));
    /* How the idle poll thread waits: futex (sleeps until a client notifies), or poll
     * with the reason in notify_fallback (section 8). */
    reply_str(ctx, "notify", drv_notify_name(s->notify_kind));
    reply_str(ctx, "notify_fallback", s->notify_why);
    reply_u64(ctx, "sleeps", __atomic_load_n(&s->sleeps, __ATOMIC_RELAXED));
    reply_u64(ctx, "sleep_wakes", __atomic_load_n(&s->sleep_wakes, __ATOMIC_RELAXED));
    /* notify doorbell: the device (or FIFO) slept on, the peer id clients ring (and where
     * it came from: its directory, or the doorbell_peer argument), rings drained. */
    reply_str(ctx, "doorbell", s->notify_fds ? s->cfg.doorbell : "");
    RedisModule_ReplyWithSimpleString(ctx, "doorbell_peer");       /* -1: no doorbell */
    RedisModule_ReplyWithLongLong(ctx, s->notify_fds ? (long long)s->doorbell_peer : -1);
    reply_str(ctx, "doorbell_peer_from", s->notify_fds ? s->doorbell_src : "");
    reply_u64(ctx, "doorbell_rings", __atomic_load_n(&s->doorbell_rings, __ATOMIC_RELAXED));
    reply_u64(ctx, "doorbell_errors", __atomic_load_n(&s->doorbell_errors, __ATOMIC_RELAXED));
    /* ... and the rings that woke clients blocked for their responses (N4), every channel's */
    reply_u64(ctx, "client_rings", rings);
    reply_u64(ctx, "client_ring_errors", ring_errors);
    reply_u64(ctx, "acl_denied", __atomic_load_n(&s->exec.acl_denied, __ATOMIC_RELAXED));
    /* Sessions waiting in BLPOP and kin (block.c). */
    reply_u64(ctx, "blocked_sessions", __atomic_load_n(&drv_blocked_sessions, __ATOMIC_RELAXED));
    /* pub/sub (pubsub.c, ring-protocol.md 15): the driver's own subscription for the sessions
     * (connected, its names, messages Redis delivered to it), and what reached the sessions */
    reply_u64(ctx, "pubsub_connected", (uint64_t)ps_connected);
    reply_u64(ctx, "pubsub_names", ps_names);
    reply_u64(ctx, "pubsub_messages", ps_messages);
    reply_u64(ctx, "pushes", pushes);
    reply_u64(ctx, "pushes_dropped", dropped);
    RedisModule_ReplyWithSimpleString(ctx, "channels");
    RedisModule_ReplyWithArray(ctx, s->nchan);
    for (c = 0; c < s->nchan; c++)
        reply_channel(ctx, s, c);
    return REDISMODULE_OK;
}

/* ---- CXLRING.RESET channel ------------------------------------------------- */

/* Runs on the main thread once the poll thread has reset the channel. */
static int reset_reply(RedisModuleCtx *ctx, RedisModuleString **argv, int argc)
{
    const char *result = RedisModule_GetBlockedClientPrivateData(ctx);

    (void)argv;
    (void)argc;
    if (!result)
        return RedisModule_ReplyWithError(ctx, "ERR the ring server stopped before the reset");
    return RedisModule_ReplyWithSimpleString(ctx, result);
}

static int reset_timeout(RedisModuleCtx *ctx, RedisModuleString **argv, int argc)
{
    (void)argv;
    (void)argc;
    return RedisModule_ReplyWithError(ctx, "ERR the ring server did not answer the reset");
}

/*
 * CXLRING.RESET channel -> +OK once the channel is free again: the session is
 * retired (the owner must claim again), the error cleared. The poll thread
 * owns the channel, so the client blocks until that thread has done it.
 */
static int cmd_reset(RedisModuleCtx *ctx, RedisModuleString **argv, int argc)
{
    struct drv_server *s = &g_srv;
    RedisModuleBlockedClient *bc;
    uint32_t c;

    if (argc != 2)
        return RedisModule_WrongArity(ctx);
    /* A caller that must not block (RedisModule_Call, MULTI, a script): Redis
     * asserts if one is left blocked. The flags below keep the ring away; this
     * keeps any other module's RedisModule_Call safe too. */
    if (RedisModule_GetContextFlags(ctx) & REDISMODULE_CTX_FLAGS_DENY_BLOCKING)
        return RedisModule_ReplyWithError(ctx, "ERR CXLRING.RESET blocks its caller; "
                                          "send it over a client connection");
    if (parse_channel(ctx, s, argv[1], &c) < 0)
        return REDISMODULE_OK;
    if (!s->threads_running)
        return RedisModule_ReplyWithError(ctx, "ERR the ring server is not running");
    pthread_mutex_lock(&s->reset_mutex);
    if (s->reset_bc[c]) {
        pthread_mutex_unlock(&s->reset_mutex);
        return RedisModule_ReplyWithError(ctx, "ERR a reset of this channel is in progress");
    }
    bc = RedisModule_BlockClient(ctx, reset_reply, reset_timeout, NULL, RESET_TIMEOUT_MS);
    if (!bc) {
        pthread_mutex_unlock(&s->reset_mutex);
        return RedisModule_ReplyWithError(ctx, "ERR cannot block this client (MULTI/Lua?)");
    }
    s->reset_bc[c] = bc;
    /* R1 pairs with R2 in handle_resets(): a poll thread whose lock-free peek sees the
     * flag takes the mutex and finds reset_bc[c] (the mutex orders that field itself). */
    __atomic_store_n(&s->reset_pending, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&s->reset_mutex);
    drv_kick(s);                        /* a sleeping poll thread looks now */
    return REDISMODULE_OK;
}

/* ---- Start and stop ----------------------------------------------------------- */

/* MODULE LOAD or UNLOAD changed the command table: the poll thread forgets its verdicts. */
static void on_module_change(RedisModuleCtx *ctx, RedisModuleEvent eid, uint64_t subevent,
                             void *data)
{
    (void)ctx;
    (void)eid;
    (void)subevent;
    (void)data;
    /* Relaxed: we hold the GIL, and the poll thread reads it under the GIL. */
    __atomic_add_fetch(&g_srv.exec.cmd_table_gen, 1, __ATOMIC_RELAXED);
}

/* Each time the main thread has taken the GIL after epoll_wait: its turn (poll.c). */
static void on_event_loop(RedisModuleCtx *ctx, RedisModuleEvent eid, uint64_t subevent,
                          void *data)
{
    (void)ctx;
    (void)eid;
    (void)data;
    if (subevent == REDISMODULE_SUBEVENT_EVENTLOOP_AFTER_SLEEP)
        drv_main_turn(&g_srv);
}

static void server_stop(struct drv_server *s)
{
    if (!s->threads_running)
        return;
    drv_region_stopping(s, CXL_SERVER_STOPPING);
    drv_threads_stop(s);
    drv_region_stopping(s, CXL_SERVER_STOPPED);
    drv_log("notice", DRV_NAME ": stopped serving %s", s->cfg.path);
}

static void on_shutdown(RedisModuleCtx *ctx, RedisModuleEvent eid, uint64_t subevent,
                        void *data)
{
    (void)eid;
    (void)subevent;
    (void)data;
    server_stop(&g_srv);
    drv_pubsub_stop(ctx);               /* the driver's own subscription (pubsub.c) */
}

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc)
{
    struct drv_server *s = &g_srv;
    char err[DRV_ERRLEN * 2];

    if (RedisModule_Init(ctx, DRV_NAME, 1, REDISMODULE_APIVER_1) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    memset(s, 0, sizeof(*s));
    if (parse_args(&s->cfg, argv, argc, err, sizeof(err)) < 0)
        goto fail;
    if (drv_region_open(s, err, sizeof(err)) < 0)
        goto fail;
    if ((s->cfg.layout == CXL_LAYOUT_VERSION ? drv_chans_init(s) : drv_v2_init(s)) < 0) {
        snprintf(err, sizeof(err), "out of memory for %u channels", s->nchan);
        goto fail_region;
    }
    s->reset_bc = RedisModule_Calloc(s->nchan, sizeof(*s->reset_bc));
    if (RedisModule_CreateCommand(ctx, "cxlring.info", cmd_info, "readonly", 0, 0, 0) ==
            REDISMODULE_ERR ||
        /* deny-script and blocking: a ring CMD refuses it (exec.c), so does a script */
        RedisModule_CreateCommand(ctx, "cxlring.reset", cmd_reset, "admin deny-script blocking",
                                  0, 0, 0) == REDISMODULE_ERR) {
        snprintf(err, sizeof(err), "cannot register the CXLRING commands");
        goto fail_region;
    }
    if (RedisModule_SubscribeToServerEvent(ctx, RedisModuleEvent_Shutdown, on_shutdown) ==
            REDISMODULE_ERR ||
        RedisModule_SubscribeToServerEvent(ctx, RedisModuleEvent_ModuleChange,
                                           on_module_change) == REDISMODULE_ERR ||
        RedisModule_SubscribeToServerEvent(ctx, RedisModuleEvent_EventLoop,
                                           on_event_loop) == REDISMODULE_ERR ||
        drv_txn_subscribe(ctx) < 0) {
        snprintf(err, sizeof(err), "cannot subscribe to the shutdown, module, event "
                 "loop, flush and keyspace events");
        goto fail_region;
    }
    if (drv_threads_start(s, ctx, err, sizeof(err)) < 0)
        goto fail_region;
    if (s->cfg.test_start_delay_ms)
        usleep(s->cfg.test_start_delay_ms * 1000u);
    drv_region_running(s);
    RedisModule_Log(ctx, "notice", DRV_NAME ": serving %s (%s, layout v%d, %u %s in %u "
                    "group%s, %" PRIu64 " bytes of address range, %s), epoch %016" PRIx64,
                    s->cfg.path, s->region.kind, s->cfg.layout, s->nchan,
                    s->cfg.layout == CXL_LAYOUT_VERSION ? "channels" : "rings",
                    s->cfg.layout == CXL_LAYOUT_VERSION ? s->geo.group_count : 1,
                    s->cfg.layout == CXL_LAYOUT_VERSION && s->geo.group_count != 1 ? "s" : "",
                    s->region.size, s->formatted ? "formatted" : "reused", s->epoch);
    return REDISMODULE_OK;

fail_region:
    drv_chans_free(s);
    RedisModule_Free(s->v2);
    RedisModule_Free(s->reset_bc);
    drv_region_close(s);
fail:
    RedisModule_Log(ctx, "warning", DRV_NAME ": not loaded: %s", err);
    return REDISMODULE_ERR;
}

int RedisModule_OnUnload(RedisModuleCtx *ctx)
{
    struct drv_server *s = &g_srv;

    /* Under wake_mutex: the poll thread cannot queue a callback between this check and
     * the stop below (it runs outside the GIL). */
    pthread_mutex_lock(&s->wake_mutex);
    if (__atomic_load_n(&s->wake_pending, __ATOMIC_ACQUIRE)) {
        pthread_mutex_unlock(&s->wake_mutex);
        /* A one-shot callback into this module is queued: unloading now would leave
         * the event loop a dangling pointer. It runs within one loop iteration. */
        RedisModule_Log(ctx, "warning", DRV_NAME ": an event-loop callback is pending; "
                        "retry MODULE UNLOAD");
        return REDISMODULE_ERR;
    }
    s->wakes_closed = 1;
    pthread_mutex_unlock(&s->wake_mutex);
    server_stop(s);
    drv_pubsub_stop(ctx);               /* the driver's own subscription (pubsub.c) */
    drv_chans_free(s);
    RedisModule_Free(s->v2);
    RedisModule_Free(s->reset_bc);
    s->v2 = NULL;
    s->reset_bc = NULL;
    drv_region_close(s);
    return REDISMODULE_OK;
}
