/*
 * driver.h - internals of the cxl_ring Redis module (the ring *server*).
 *
 * The module is split by concern:
 *   module.c     Redis entry points: arguments, CXLRING.* commands, events
 *   region.c     map the region (one file, or a directory of segment files);
 *                format, validate or refuse its header (layout 5 and v2)
 *   poll.c       the poll thread (GIL holds bounded in time, letting the main thread
 *                in between them, back-off) and the heartbeat thread
 *   channel.c    layout 5: sessions, framing, responses, quarantine
 *   compat_v2.c  layout v2: the PoC's slot rings
 *   exec.c       GET/SET/DEL fast paths; CMD through RedisModule_Call, after a
 *                check of the command's flags (what cannot run from the ring)
 *   acl.c        the ACL user a session runs as
 *   txn.c        a session's SELECT, MULTI/EXEC, WATCH; the keyspace events
 *   block.c      BLPOP and kin: the session blocks, not the server
 *
 * region.c, channel.c and compat_v2.c are also linked, unchanged, into the null
 * server (bench/c/null/null_server.c: the rings with no Redis behind them, for
 * `make bench`), which binds only RedisModule_Alloc/TryAlloc/Calloc/Free/Log:
 * any other module API call there breaks its build (`make build` says so).
 *
 * Threads. The Redis main thread runs OnLoad, the commands and the shutdown
 * event. The poll thread owns every private channel field below and is the
 * only writer of the server's shared fields except the header's heartbeat
 * (heartbeat thread) and the header's state during start and stop (main
 * thread, while the poll thread is not running). The poll thread touches the
 * keyspace only between RedisModule_ThreadSafeContextLock/Unlock.
 *
 * Naming: pointers into shared memory start with k (kclient, kserver, khdr),
 * after liburing's khead/ktail, so they cannot be mistaken for private copies.
 */
#ifndef CXL_DRIVER_H
#define CXL_DRIVER_H

#include <pthread.h>
#include <stdint.h>

#include "redismodule.h"
#include "cxl_ring/ring.h"

#define DRV_NAME              "cxl_ring"
#define DRV_PATH_MAX          512
#define DRV_DEFAULT_SPIN_US   50u
#define DRV_DEFAULT_SLEEP_US  1000u
#define DRV_DEFAULT_BATCH     512u      /* requests per GIL hold */
#define DRV_BATCH_NS          1000000u  /* and at most 1 ms per GIL hold */
#define DRV_CHECK_WORK        16u       /* read the clock once this much work is done */
#define DRV_WORK_BYTES_SHIFT  12u       /* a unit of work: a request, or 4 KiB copied */
#define DRV_V2_DEFAULT_RINGS  4u
#define DRV_V2_DEFAULT_SLOTS  26624u
#define DRV_ERRLEN            256
#define DRV_OUT_CAP           (64u << 10) /* staged responses per channel */
#define DRV_IN_CHUNK          (64u << 10) /* request bytes copied per refill */

enum drv_format { DRV_FORMAT_AUTO, DRV_FORMAT_ALWAYS, DRV_FORMAT_NEVER };

/* Module arguments (driver/README.md has the table). */
/* notify: how the idle poll thread waits (docs/ring-protocol.md section 8). */
enum drv_notify {
    DRV_NOTIFY_AUTO  = 0,                /* futex when the region is memory of this host, else
                                          * the doorbell when one is given and opens */
    DRV_NOTIFY_FUTEX = 1,                /* futex, refused where it cannot work */
    DRV_NOTIFY_OFF   = 2,                /* back-off polling only */
    DRV_NOTIFY_DOORBELL = 3,             /* the doorbell, refused without one */
};

#define DRV_DEFAULT_SLEEP_MAX_MS 100u

#define DRV_USER_MAX          128u      /* an ACL user's name, with its NUL */
#define DRV_ACL_CACHE         8u        /* users looked up per GIL hold before a refill */
#define DRV_ACL_TEXT          (DRV_USER_MAX + 160u)

struct drv_config {
    char     path[DRV_PATH_MAX];
    uint64_t map_size;                  /* 0 = discover */
    struct cxl_params params;           /* layout 5 geometry and liveness */
    int      layout;                    /* CXL_LAYOUT_VERSION (5) or 2 */
    int      format;                    /* enum drv_format */
    uint32_t spin_us;
    uint32_t idle_sleep_us;
    uint32_t batch;                     /* max requests per GIL hold */
    int      cpu;                       /* pin the poll thread; -1 = no */
    int      notify;                    /* enum drv_notify: how an idle poll thread waits */
    uint32_t sleep_max_ms;              /* longest sleep between housekeeping rounds */
    uint32_t access_delay_ns;           /* injected far-memory delay per ring batch read */
    char     doorbell[DRV_PATH_MAX];    /* the uio_cxl_doorbell device; "" = none */
    uint32_t doorbell_peer;             /* our peer id when the doorbell has no directory */
    int      test_remote_region;        /* test only: the region counts as not host memory */
    uint32_t test_start_delay_ms;       /* test only: threads run this long before RUNNING */
    uint32_t v2_rings;
    uint32_t v2_slots;
    /* acl_users: the ACL user each channel group's sessions run as; "" = none given
     * (acl.c: "default" when Redis lets a connection use it without AUTH). */
    char     acl_users[CXL_MAX_GROUPS][DRV_USER_MAX];
    uint32_t acl_user_count;            /* entries given, group 0 first */
};

/*
 * Per-channel counters. Written by the poll thread only, read by CXLRING.INFO
 * on the main thread: single writer, so relaxed atomic stores suffice (a
 * reader may see a slightly old value, never a torn one).
 */
struct drv_stats {
    uint64_t requests;
    uint64_t ok;
    uint64_t not_found;
    uint64_t err;
    uint64_t oom;
    uint64_t too_large;
    uint64_t bad_request;
    uint64_t unknown_op;
    uint64_t protocol_errors;           /* quarantines (layout 5), corrupt indexes (v2) */
    uint64_t stale_requests;            /* requests of an earlier session, never executed */
    uint64_t sessions;
    uint64_t releases;
    uint64_t reclaims;
    uint64_t resets;
    uint64_t resp_full;                 /* times a response had to wait for room */
    uint64_t client_rings;              /* doorbell rings that woke the blocked client (N4) */
    uint64_t client_ring_errors;        /* ... that the doorbell refused */
    uint64_t pushes;                    /* pub/sub messages written to the session */
    uint64_t pushes_dropped;            /* ... dropped: its responses were stalled */
    uint64_t bytes_in;
    uint64_t bytes_out;
};

#define STAT_ADD(st, field, n) \
    __atomic_store_n(&(st)->field, (st)->field + (n), __ATOMIC_RELAXED)
#define STAT_INC(st, field) STAT_ADD(st, field, 1)
#define STAT_GET(st, field) __atomic_load_n(&(st)->field, __ATOMIC_RELAXED)

/* ---- One hold of the GIL (poll.c opens it; channel.c, compat_v2.c spend it) -- */

/*
 * A hold serves at most `budget` requests and ends at deadline_ns. Reading the clock
 * costs about as much as a small GET, so it is read between requests once their work
 * adds up to DRV_CHECK_WORK units (a unit: one request, or 4 KiB copied in or out; a
 * CMD counts as the whole amount): a hold runs past its deadline by at most one request
 * or DRV_CHECK_WORK small ones, whether the work is in one channel or spread over many.
 */
struct drv_hold {
    uint64_t deadline_ns;
    uint32_t budget;                    /* requests left */
    uint32_t work;                      /* units since the clock was last read */
    int      over;                      /* the deadline passed: serve nothing more */
};

/* Count units of work; 1 when the hold must end (its budget or its time is used up). */
static inline int drv_hold_spend(struct drv_hold *h, uint32_t units)
{
    h->work += units;
    if (h->work >= DRV_CHECK_WORK) {
        h->work = 0;
        if (cxl_now_ns() >= h->deadline_ns)
            h->over = 1;
    }
    return h->over || h->budget == 0;
}

/* Units of work for a request that moved `bytes` in and out. */
static inline uint32_t drv_work_units(uint64_t bytes)
{
    return 1u + (uint32_t)(bytes >> DRV_WORK_BYTES_SHIFT);
}

/* ---- Execution against the keyspace (exec.c) ------------------------------ */

/*
 * Where an executed request's answer goes: a layout 5 response or a v2 slot. Called
 * exactly once per request, with up to two payload pieces (p2 may be NULL).
 * For a GET, p1 points into the value (StringDMA) and is valid only during the call.
 */
typedef void drv_reply_fn(void *sink, uint8_t status,
                          const void *p1, uint32_t n1, const void *p2, uint32_t n2);

/*
 * Which commands a CMD may run (exec.c): a verdict per command or container
 * subcommand, from the flags Redis reports in COMMAND INFO, cached by
 * lowercase name ("get", "client|list"). Poll thread only, under the GIL.
 */
#define DRV_VERDICT_SLOTS     1024u     /* power of two; > 4/3 of every command and subcommand */
#define DRV_VERDICT_KEY       128u      /* "name|sub", each part under 64 bytes */

struct drv_verdict {
    uint8_t  verdict;                   /* enum in exec.c; 0 = empty slot */
    uint8_t  len;
    char     key[DRV_VERDICT_KEY];
};

/* What a session holds as a Redis connection would (txn.c): database, MULTI, WATCH. */
#define DRV_TXN_MAX_CMDS      1024u     /* commands one MULTI queues */
#define DRV_TXN_MAX_BYTES     (16u << 20)
#define DRV_TXN_MAX_WATCH     64u       /* keys one session watches */
#define DRV_CLIENT_NAME       128u      /* CLIENT SETNAME, with its NUL */

struct drv_watch;
struct drv_txn {
    uint32_t gen;                       /* the session generation this state is of */
    int      db;                        /* SELECT */
    int      multi;                     /* between MULTI and EXEC/DISCARD */
    int      abort;                     /* a command refused while queuing: EXECABORT */
    int      dirty;                     /* a watched key changed */
    uint32_t nq;
    uint64_t qbytes;
    uint8_t **queue;                    /* packed commands (txn.c) */
    uint32_t nwatch;
    struct drv_watch *watched;
    uint64_t client_id;                 /* CLIENT ID: one per session, never reused */
    char     name[DRV_CLIENT_NAME];     /* CLIENT SETNAME; "" = none */
};

/*
 * A session blocked in BLPOP and kin (block.c, docs/ring-protocol.md section 14): its
 * request, kept, tried again after keyspace events until it answers or times out. The
 * poll thread's, under the GIL (channel.c reads it in its scan too: same thread).
 */
struct drv_block {
    int      active;
    int      started;                   /* this request just blocked: channel.c keeps its id */
    uint64_t id;                        /* the blocked request's id, for its response */
    uint64_t deadline_ns;               /* 0: no timeout */
    uint64_t events_seen;               /* drv_keyspace_events at the last try */
    uint64_t seq;                       /* the order sessions blocked in: tried in it */
    uint64_t retry_ns;                  /* WAIT: the next look (no event brings an ack); 0 */
    uint64_t wait_offset;               /* WAIT: the replication offset replicas must ack */
    uint64_t wait_hold;                 /* WAIT: drv_hold_seq when it came */
    long long wait_replicas;            /* WAIT: how many */
    uint64_t confirm_until;             /* SUBSCRIBE: Redis's confirmations to wait for */
    struct cxl_req req;                 /* argv into buf */
    uint8_t *buf;
};

/* Keyspace events seen (txn.c's subscription) and sessions blocked: both counted under the
 * GIL, read by the poll thread's scan without it (relaxed: a count that only has to move). */
extern uint64_t drv_keyspace_events;
extern uint64_t drv_hold_seq;           /* holds of the GIL by the poll thread (poll.c) */
extern uint32_t drv_blocked_sessions;

static inline void drv_block_clear(struct drv_block *bl)
{
    if (!bl->active)
        return;
    RedisModule_Free(bl->buf);
    bl->buf = NULL;
    bl->active = 0;
    bl->started = 0;
    bl->retry_ns = 0;
    __atomic_store_n(&drv_blocked_sessions, drv_blocked_sessions - 1, __ATOMIC_RELAXED);
}

/* Block a session on req until retry_ns, when its command looks again (pubsub.c). */
void drv_block_hold(struct drv_block *bl, const struct cxl_req *req, uint64_t confirm_until,
                    uint64_t retry_ns);

/* Should the poll thread try this blocked session again? */
static inline int drv_block_due(const struct drv_block *bl, uint64_t now_ns)
{
    return bl->active &&
           (__atomic_load_n(&drv_keyspace_events, __ATOMIC_RELAXED) != bl->events_seen ||
            (bl->deadline_ns && now_ns >= bl->deadline_ns) ||
            (bl->retry_ns && now_ns >= bl->retry_ns));
}

/* A session's pub/sub names (pubsub.c; docs/ring-protocol.md 15). Poll thread only. */
struct drv_subs {
    uint32_t count, cap;
    struct { uint8_t kind; uint32_t len; uint8_t *name; } *v;   /* 0 channel, 1 pattern, 2 shard */
    uint64_t bytes;                     /* the most their confirmations take: <= max_value */
    uint8_t *pending;                   /* the reply of a subscribe waiting for Redis */
    uint32_t pending_len;
};

/* A message Redis delivered to the driver's subscription, for the sessions that want it. */
struct drv_push {
    struct drv_push *next;
    uint8_t  kind;                      /* the name's kind, as in drv_subs */
    uint8_t  error;                     /* the connection was lost (no name, no payload) */
    uint32_t name_len;                  /* data: the name it matched, then the RESP2 array */
    uint32_t len;
    uint8_t  data[];
};

struct drv_exec;
int  drv_pubsub_request(struct drv_exec *x, const struct cxl_req *req, drv_reply_fn *reply,
                        void *sink);
void drv_pubsub_session_end(struct drv_subs *ss);
struct drv_push *drv_pubsub_take(void);
int  drv_pubsub_wants(const struct drv_subs *ss, const struct drv_push *m);
void drv_pubsub_loss_seen(void);
void drv_pubsub_info(uint64_t *names, uint64_t *messages, int *connected);
void drv_pubsub_stop(RedisModuleCtx *ctx);

/* The ACL user a session runs as (acl.c); decided by its first request. */
struct drv_auth {
    char     user[DRV_USER_MAX];        /* "" = none: requests answer NOAUTH */
    uint32_t gen;                       /* the session generation user was decided for */
    uint32_t group;                     /* the channel's group */
};

struct drv_exec {
    RedisModuleCtx *ctx;                /* detached thread-safe context, db 0 */
    /* Access control (acl.c): set by the caller before each request. */
    struct drv_auth *auth;              /* the request's session; NULL = no check */
    struct drv_txn *txn;                /* its connection state; NULL = none (v2) */
    struct drv_block *block;            /* where it blocks (block.c); NULL = none (v2) */
    struct drv_subs *subs;              /* its pub/sub names (pubsub.c); NULL = none (v2) */
    int      db;                        /* the database ctx has selected */
    uint32_t session_gen;               /* its session generation */
    const char (*acl_users)[DRV_USER_MAX];  /* cfg.acl_users */
    RedisModuleUser *call_user;         /* a CMD's user for RedisModule_Call "C" */
    RedisModuleString *acl_key;         /* an admitted GET's or SET's key, for exec.c */
    RedisModuleString *acl_names[4];    /* "get", "set", "del", "": kept while serving */
    uint64_t acl_denied;                /* requests refused NOAUTH/NOPERM/WRONGPASS */
    uint32_t users_used;
    struct { char name[DRV_USER_MAX]; RedisModuleUser *user; } users[DRV_ACL_CACHE];
    uint32_t max_value;
    int      readonly;                  /* a read-only replica: refuse fast-path writes */
    int      paused;                    /* CLIENT PAUSE, FAILOVER, shutdown: writes wait */
    int      deferred;                  /* a request waited for the pause to end */
    uint32_t writes;                    /* writes in this GIL hold */
    RedisModuleString *argv[CXL_MAX_ARGS];
    char     cmdname[64];
    /*
     * The command table changes only with MODULE LOAD/UNLOAD: the main thread
     * bumps cmd_table_gen then (under the GIL), the poll thread compares it
     * with verdicts_gen (under the GIL) and forgets its verdicts. The GIL's
     * mutex orders the two; the atomics are relaxed.
     */
    uint32_t cmd_table_gen;
    uint32_t verdicts_gen;
    uint32_t verdicts_used;
    struct drv_verdict verdicts[DRV_VERDICT_SLOTS];
};

void drv_exec_begin_batch(struct drv_exec *x);
void drv_exec_get(struct drv_exec *x, const uint8_t *key, uint32_t klen,
                  drv_reply_fn *reply, void *sink);
void drv_exec_set(struct drv_exec *x, const uint8_t *key, uint32_t klen,
                  const uint8_t *val, uint32_t vlen, uint64_t ttl_ms,
                  drv_reply_fn *reply, void *sink);
void drv_exec_del(struct drv_exec *x, uint32_t argc, const uint8_t *const *argv,
                  const uint32_t *argl, drv_reply_fn *reply, void *sink);
void drv_exec_cmd(struct drv_exec *x, uint32_t argc, const uint8_t *const *argv,
                  const uint32_t *argl, drv_reply_fn *reply, void *sink);
/* While clients are paused, writes wait: 1 = leave this request in the ring for now. */
int  drv_exec_must_wait(struct drv_exec *x, uint8_t op);
int  drv_exec_vet(struct drv_exec *x, uint32_t argc, const uint8_t *const *argv,
                  const uint32_t *argl, char *out, size_t cap);
int  drv_txn_request(struct drv_exec *x, const struct cxl_req *req, drv_reply_fn *reply,
                     void *sink);
void drv_txn_reset(struct drv_txn *t);
int  drv_txn_subscribe(RedisModuleCtx *ctx);
int  drv_txn_subscribe_keyspace(RedisModuleCtx *ctx);
int  drv_acl_allowed(struct drv_exec *x, uint32_t argc, const uint8_t *const *argv,
                     const uint32_t *argl, drv_reply_fn *reply, void *sink);
int  drv_block_request(struct drv_exec *x, const struct cxl_req *req, drv_reply_fn *reply,
                       void *sink);
/* module.c: wake the poll thread (a keyspace event while sessions are blocked). */
void drv_kick_server(void);
void drv_acl_begin_batch(struct drv_exec *x);
void drv_acl_free(struct drv_exec *x);
int  drv_acl_admit(struct drv_exec *x, uint8_t op, uint32_t argc, const uint8_t *const *argv,
                   const uint32_t *argl, drv_reply_fn *reply, void *sink);
int  drv_acl_call_refusal(struct drv_exec *x, const char *err, size_t n, const char *cmd,
                          char *out, size_t cap);
/* Dispatch a decoded layout 5 request. */
void drv_exec_request(struct drv_exec *x, const struct cxl_req *req,
                      drv_reply_fn *reply, void *sink);

/* ---- Layout 5 channels (channel.c) ---------------------------------------- */

struct drv_chan {
    uint32_t index;
    struct cxl_shm_client_ctl *kclient; /* written by the client: read once, validate */
    struct cxl_shm_server_ctl *kserver; /* written by us */
    struct cxl_ring req;                /* consumer side */
    struct cxl_ring resp;               /* producer side */

    /* private copies (poll thread) */
    uint32_t state;                     /* enum cxl_chan_state, mirrors kserver->chan_state */
    uint64_t token;                     /* mirrors kserver->ack_token */
    uint64_t dead_token;                /* mirrors kserver->dead_token */
    uint32_t gen;                       /* mirrors kserver->session_gen: the ids' high half */
    uint64_t req_tail;                  /* our consumer index */
    uint64_t req_tail_published;        /* req_tail as last stored (C2) */
    uint64_t req_head_seen;             /* last producer index seen: must not go back */
    uint64_t resp_head;                 /* our producer index */
    uint64_t resp_tail_seen;            /* last consumer index seen */
    uint64_t resp_scrubbed;             /* response bytes below this are zero (section 3.1) */
    uint64_t hb_seen;
    uint64_t hb_changed_ns;
    int      ready;                     /* scan found requests */
    int      broken;                    /* a violation found while answering */
    int      notify;                    /* wake a client blocked for responses (section 8, N4) */
    int      bell_fd;                   /* notify_kind doorbell: ours, to ring the client's */
    const char *broken_why;

    /*
     * Responses are staged in private memory and copied to the ring once per
     * batch: one burst of stores to shared lines instead of one per response
     * (Redis's allocator does a locked add per malloc, which would wait for
     * each of those cross-core stores). What does not fit the ring waits here,
     * and the channel is not read until it has drained.
     */
    uint8_t *out;                       /* DRV_OUT_CAP bytes of whole, padded responses */
    uint32_t out_len;
    uint8_t *big;                       /* one large response (> DRV_OUT_CAP / 2), parked */
    uint32_t big_len;                   /* padded, its allocation size; 0 = none */

    uint32_t logged;                    /* violations logged (rate limit) */
    struct drv_auth auth;               /* the session's ACL user (acl.c) */
    struct drv_txn txn;                 /* its database, MULTI and WATCH (txn.c) */
    struct drv_block block;             /* a blocked BLPOP and kin (block.c) */
    struct drv_subs subs;               /* its SUBSCRIBEs (pubsub.c) */
    struct drv_stats stats;
};

/* ---- Layout v2 rings (compat_v2.c) ----------------------------------------- */

struct drv_v2_ring {
    volatile uint64_t *kreq_head;       /* client */
    volatile uint64_t *kreq_tail;       /* us */
    volatile uint64_t *kresp_head;      /* us */
    volatile uint64_t *kresp_tail;      /* client */
    uint8_t *req_slots;
    uint8_t *resp_slots;
    uint64_t req_tail;
    uint64_t resp_head;
    uint64_t resp_tail_seen;
    int      ready;
    struct drv_stats stats;
};

/* ---- The server ------------------------------------------------------------ */

struct drv_server {
    struct drv_config cfg;
    struct cxl_region region;           /* one file, or a directory of segment files */
    struct cxl_geometry geo;            /* layout 5 */
    struct cxl_shm_header *khdr;        /* layout 5 */
    struct drv_chan *chans;             /* layout 5: geo.channel_count */
    struct drv_v2_ring *v2;             /* v2: cfg.v2_rings */
    struct drv_auth v2_auth;            /* v2: every client is one session, no group */
    uint32_t nchan;                     /* channels or v2 rings */
    uint64_t epoch;
    int      formatted;                 /* this start formatted the region */

    /* threads */
    pthread_t poll_thread;
    pthread_t hb_thread;
    int      threads_running;
    int      stop;                      /* atomic: set by the main thread */
    pthread_mutex_t hb_mutex;
    pthread_cond_t  hb_cond;
    uint64_t gil_holds;                 /* stats (relaxed) */
    uint64_t wakeups;
    uint64_t hold_max_ns;               /* the longest GIL hold so far */
    uint64_t handoffs;                  /* holds after which the main thread was let in */
    uint64_t handoffs_taken;            /* ... and took the GIL before the wait ended */
    /*
     * The main thread's turns: bumped by an event-loop callback each time the main
     * thread has taken the GIL after sleeping (module.c). The poll thread only compares
     * it with an earlier value; it orders nothing (the GIL's mutex orders the keyspace),
     * so relaxed atomics on both sides.
     */
    uint64_t main_turns;
    int      wake_pending;              /* a one-shot to the event loop is queued */
    uint64_t last_wake_ns;
    /* Queueing a one-shot and OnUnload's "none is queued, no more will be" are one step
     * each under this mutex: no callback can be queued behind an unload's back. */
    pthread_mutex_t wake_mutex;
    int      wakes_closed;              /* under wake_mutex: OnUnload is unloading */

    /* Notification (section 8): what clients were told, and why when it is none. */
    uint32_t notify_kind;               /* enum cxl_notify_kind, as in the header */
    char     notify_why[320];           /* why the poll thread polls; "" when it sleeps */
    uint32_t kick;                      /* private futex: the main thread wakes the poll thread */
    uint64_t sleeps;                    /* stats (relaxed): blocks in the kernel */
    uint64_t sleep_wakes;               /* ... ended by a notification (not the timeout) */
    /* notify_kind doorbell: the doorbell device (or a FIFO standing in for it) and an
     * eventfd drv_kick() writes; the poll thread sleeps in poll() on both. */
    int      notify_fds;                /* the two fds below are open */
    int      doorbell_fd;
    int      kick_fd;
    uint32_t doorbell_peer;             /* published in the header */
    char     doorbell_src[96];          /* where doorbell_peer came from */
    uint64_t doorbell_rings;            /* stats (relaxed): rings drained */
    uint64_t doorbell_errors;           /* ... poll() errors, POLLERR/POLLHUP on the doorbell */

    /* CXLRING.RESET requests, handed to the poll thread */
    pthread_mutex_t reset_mutex;
    RedisModuleBlockedClient **reset_bc;   /* per channel, NULL = none */
    int      reset_pending;             /* atomic */

    uint32_t next_chan;                 /* poll thread: where the next hold's round starts */
    struct drv_exec exec;               /* poll thread only */
    struct cxl_req req;                 /* poll thread only: decoded request */
    uint8_t *msg;                       /* poll thread only: private copy of requests */
    uint32_t msg_cap;
};

/* region.c */
int  drv_region_open(struct drv_server *s, char *err, size_t errlen);
void drv_region_running(struct drv_server *s);
void drv_region_stopping(struct drv_server *s, uint32_t state);
void drv_region_close(struct drv_server *s);

/* channel.c (layout 5) */
int  drv_chans_init(struct drv_server *s);
void drv_chans_free(struct drv_server *s);
int  drv_v5_scan(struct drv_server *s, uint64_t now_ns);
void drv_v5_deliver(struct drv_server *s);     /* pub/sub pushes (pubsub.c's messages) */
uint32_t drv_v5_process(struct drv_server *s, struct drv_hold *h);
void drv_v5_housekeeping(struct drv_server *s, uint64_t now_ns);
void drv_v5_reset(struct drv_server *s, uint32_t chan);
const char *drv_chan_state_name(uint32_t state);

/* compat_v2.c */
uint64_t drv_v2_layout_size(uint32_t rings, uint32_t slots);
void drv_v2_format(struct drv_server *s);
int  drv_v2_check(struct drv_server *s, char *err, size_t errlen);
int  drv_v2_init(struct drv_server *s);
int  drv_v2_scan(struct drv_server *s);
uint32_t drv_v2_process(struct drv_server *s, struct drv_hold *h);
void drv_v2_reset(struct drv_server *s, uint32_t ring);

/* poll.c */
int  drv_threads_start(struct drv_server *s, RedisModuleCtx *ctx, char *err, size_t errlen);
void drv_threads_stop(struct drv_server *s);
void drv_kick(struct drv_server *s);
const char *drv_notify_name(uint32_t kind);
void drv_main_turn(struct drv_server *s);

/* logging from any thread (RedisModule_Log with a NULL context is thread-safe) */
#define drv_log(level, ...) RedisModule_Log(NULL, level, __VA_ARGS__)

#endif /* CXL_DRIVER_H */
