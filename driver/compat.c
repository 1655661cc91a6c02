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
 * Not covered here: Redis 8.0.2 also aborts when a CMD runs while a client is in
 * MONITOR (call() -> replicationFeedMonitors, fixed upstream in redis/redis#14152);
 * INFO has no count of MONITOR clients.
 */
#include "compat.h"

#include <string.h>

#include "driver.h"

/* Set once at load on the main thread, before the poll thread starts (pthread_create
 * orders it); only read afterwards. Only the poll thread touches `waiting`. */
static int publish_needs_main_thread;
static int waiting;

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
    if (publish_needs_main_thread)
        drv_log("notice", DRV_NAME ": Redis %d.%d.%d delivers pub/sub messages only from its "
                "main thread: ring requests wait while a client is subscribed",
                version >> 16, (version >> 8) & 0xff, version & 0xff);
    if (info)
        RedisModule_FreeServerInfo(ctx, info);
}

int drv_compat_must_wait(RedisModuleCtx *ctx)
{
    RedisModuleServerInfoData *info;
    unsigned long long subscribed;
    int err = 0;

    if (!publish_needs_main_thread)
        return 0;
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
        drv_log("notice", DRV_NAME ": no client subscribed any more: serving the rings again");
    waiting = subscribed != 0;
    return waiting;
}
