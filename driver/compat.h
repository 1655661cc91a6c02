/*
 * compat.h - what differs between the servers the driver is loaded into
 * (docs/servers.md): Redis 7.x, Redis 8.x, Valkey 8.
 */
#ifndef CXL_DRIVER_COMPAT_H
#define CXL_DRIVER_COMPAT_H

#include "redismodule.h"

/* Main thread, at load: find out which server this is and log what differs. */
void drv_compat_init(RedisModuleCtx *ctx);

/*
 * Poll thread, holding the GIL, before it serves a batch: 1 when it must not serve now
 * because the server cannot take what a request might do from this thread (Redis 8 and
 * a pub/sub subscriber, below); the requests wait in the rings and are served later.
 */
int drv_compat_must_wait(RedisModuleCtx *ctx);

/* 1 when ring sessions may subscribe on this server (pubsub.c). */
int drv_compat_pubsub_served(void);

#endif
