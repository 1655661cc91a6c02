/*
 * compat.c - what differs between the servers the driver is loaded into
 * (docs/servers.md).
 *
 * Redis 8.0 asserts that only its main thread hands a message to a connected
 * client (server.c updateClientMemUsageAndBucket: 'pthread_equal(pthread_self(),
 * server.main_thread_id) && c->conn', redis/redis#14823), even while a module
 * thread holds the GIL; Redis 7.x and Valkey 8 accept it. The poll thread serves
 * under the GIL, and a request can make Redis publish: a ring SET or DEL with
 * keyspace notifications on, a GET that finds an expired key, PUBLISH through
 * CMD. With a client subscribed the server would abort. So on Redis >= 8 the
 * poll thread serves nothing while INFO's pubsub_clients is not 0: requests
 * wait in the rings (as during CLIENT PAUSE) and the log says why, once per
 * such period. The check reads the counter under the same GIL hold as the batch,
 * so no client can subscribe in between.
 *
 * Redis 8.0.2 also aborts when a CMD runs while a client is in MONITOR (call() ->
 * replicationFeedMonitors; fixed upstream by redis/redis#14152, after 8.0.2). INFO
 * has no count of MONITOR clients, so on Redis 8 a command filter notes the ids of
 * clients that send MONITOR (and forgets them on RESET or disconnect), and the poll
 * thread waits while there is one, as for subscribers. That needs a 7.2+ module
 * header (RedisModule_CommandFilterGetClientId); Redis 8's own has it.
 */
#include "compat.h"

#include <string.h>
#include <strings.h>

#include "driver.h"

/* Set once at load on the main thread, before the poll thread starts (pthread_create
 * orders it); only read afterwards. Only the poll thread touches `waiting`. */
static int publish_needs_main_thread;
static int waiting;

#ifdef REDISMODULE_EVENT_KEY    /* a 7.2+ header: RedisModule_CommandFilterGetClientId */
#define HAVE_MONITOR_TRACKING 1
#define MAX_MONITORS 64

/* Clients that sent MONITOR. Written by the filter and the client event on the main
 * thread, read by the poll thread; both hold the GIL. `monitors_untracked` counts the
 * ones past MAX_MONITORS, which are never forgotten (the ring then waits for good). */
static uint64_t monitor_ids[MAX_MONITORS];
static unsigned monitors, monitors_untracked;

static void monitor_forget(uint64_t id)
{
    for (unsigned i = 0; i < monitors; i++) {
        if (monitor_ids[i] == id) {
            monitor_ids[i] = monitor_ids[--monitors];
            return;
        }
    }
}

static void monitor_filter(RedisModuleCommandFilterCtx *f)
{
    const RedisModuleString *arg = RedisModule_CommandFilterArgGet(f, 0);
    const char *name;
    size_t len;
    uint64_t id;

    if (!arg)
        return;
    name = RedisModule_StringPtrLen(arg, &len);
    if (len == 7 && !strncasecmp(name, "monitor", 7)) {
        id = RedisModule_CommandFilterGetClientId(f);
        monitor_forget(id);
        if (monitors < MAX_MONITORS)
            monitor_ids[monitors++] = id;
        else
            monitors_untracked++;
    } else if (len == 5 && !strncasecmp(name, "reset", 5)) {
        monitor_forget(RedisModule_CommandFilterGetClientId(f));
    }
}

static void on_client_change(RedisModuleCtx *ctx, RedisModuleEvent e, uint64_t sub, void *data)
{
    const RedisModuleClientInfo *ci = data;

    (void)ctx;
    (void)e;
    if (sub == REDISMODULE_SUBEVENT_CLIENT_CHANGE_DISCONNECTED && ci)
        monitor_forget(ci->id);
}
#endif

void drv_compat_init(RedisModuleCtx *ctx)
{
    RedisModuleServerInfoData *info;
    const char *name = NULL;
    int version = RedisModule_GetServerVersion ? RedisModule_GetServerVersion() : 0;

    /* Valkey answers its own version (8.x) here; INFO's server_name tells them apart. */
    info = RedisModule_GetServerInfo(ctx, "server");
    if (info)
        name = RedisModule_ServerInfoGetFieldC(info, "server_name");
    publish_needs_main_thread = version >= 0x080000 && !(name && !strcmp(name, "valkey"));
    waiting = 0;
    if (publish_needs_main_thread) {
        drv_log("notice", DRV_NAME ": Redis %d.%d.%d delivers pub/sub messages only from its "
                "main thread: ring requests wait while a client is subscribed or in MONITOR",
                version >> 16, (version >> 8) & 0xff, version & 0xff);
#ifdef HAVE_MONITOR_TRACKING
        monitors = monitors_untracked = 0;
        if (!RedisModule_RegisterCommandFilter(ctx, monitor_filter, REDISMODULE_CMDFILTER_NOSELF) ||
            RedisModule_SubscribeToServerEvent(ctx, RedisModuleEvent_ClientChange,
                                               on_client_change) != REDISMODULE_OK)
            drv_log("warning", DRV_NAME ": cannot follow MONITOR clients: a ring CMD while a "
                    "client is in MONITOR aborts Redis 8.0.2");
#else
        drv_log("warning", DRV_NAME ": built against a module header older than 7.2: a ring "
                "CMD while a client is in MONITOR aborts Redis 8.0.2");
#endif
    }
    if (info)
        RedisModule_FreeServerInfo(ctx, info);
}

/* Can ring sessions subscribe here (docs/ring-protocol.md 15)? Not on Redis 8: the driver's
 * own subscription would make every ring request wait (above). */
int drv_compat_pubsub_served(void)
{
    return !publish_needs_main_thread;
}

int drv_compat_must_wait(RedisModuleCtx *ctx)
{
    RedisModuleServerInfoData *info;
    unsigned long long subscribed;
    int err = 0;

    if (!publish_needs_main_thread)
        return 0;
#ifdef HAVE_MONITOR_TRACKING
    if (monitors || monitors_untracked) {
        if (!waiting)
            drv_log("notice", DRV_NAME ": a client is in MONITOR: ring requests wait until "
                    "none is (Redis 8 cannot feed it from the ring's thread)");
        waiting = 1;
        return 1;
    }
#endif
    info = RedisModule_GetServerInfo(ctx, "clients");
    if (!info)
        return 1;           /* cannot tell: waiting is safe, serving may abort the server */
    subscribed = RedisModule_ServerInfoGetFieldUnsigned(info, "pubsub_clients", &err);
    RedisModule_FreeServerInfo(ctx, info);
    if (err)
        subscribed = 1;
    if (subscribed && !waiting)
        drv_log("notice", DRV_NAME ": %llu client(s) subscribed: ring requests wait until none "
                "is (Redis 8 cannot deliver their messages from the ring's thread)", subscribed);
    else if (!subscribed && waiting)
        drv_log("notice", DRV_NAME ": no client subscribed or in MONITOR any more: serving "
                "the rings again");
    waiting = subscribed != 0;
    return waiting;
}
