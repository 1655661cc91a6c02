/*
 * client.h - the client side of a cxl_ring session (docs/ring-protocol.md,
 * sections 3, 5 and 7): open a region, claim a channel and wait for the
 * server's ack, keep the claim alive from a heartbeat thread, push requests,
 * pop and validate responses, notice a dead or restarted server, release.
 *
 * Threading: one struct cxl_client per process and region; one struct
 * cxl_session per thread (a session is single-producer / single-consumer and
 * must only be used by the thread that claimed it). The client's heartbeat
 * thread is the only other thread that touches a session, and only its
 * client_heartbeat field.
 *
 * Every shared field is read once into a private copy and validated: a bad
 * value from the server makes a call return an error, never hang or crash.
 * Every wait has a deadline.
 */
#ifndef CXL_RING_CLIENT_H
#define CXL_RING_CLIENT_H

#include <pthread.h>
#include <stdint.h>

#include "notify.h"
#include "ring.h"

/* Results of the calls below (0 is success; negative values are errors). */
enum cxl_client_rc {
    CXL_OK              = 0,
    CXL_E_AGAIN         = 1,    /* not an error: ring full (push) or empty (pop) */
    CXL_E_OPEN          = -1,   /* cannot open or map the region */
    CXL_E_NOT_FORMATTED = -2,   /* the region is all zeros: no server formatted it */
    CXL_E_LAYOUT        = -3,   /* wrong magic or version, or inconsistent geometry */
    CXL_E_NOT_RUNNING   = -4,   /* server_state is not RUNNING */
    CXL_E_SERVER_GONE   = -5,   /* the server heartbeat stood still too long */
    CXL_E_RESTARTED     = -6,   /* server_epoch changed: in-flight outcome unknown */
    CXL_E_NO_CHANNEL    = -7,   /* every channel is held by another session */
    CXL_E_TIMEOUT       = -8,   /* a bounded wait expired (e.g. the claim ack) */
    CXL_E_LOST          = -9,   /* the server retired our session (ack_token changed) */
    CXL_E_QUARANTINED   = -10,  /* the server quarantined our channel */
    CXL_E_CORRUPT       = -11,  /* the server published an impossible index or message */
    CXL_E_TOO_LARGE     = -12,  /* a request larger than max_msg_size */
    CXL_E_NO_ACCESS     = -13,  /* no channel's client segment is mapped writable here */
};

/* A short name for a result code ("server gone", ...). */
const char *cxl_client_strerror(int rc);

/* ---- Spin-then-backoff waiting (protocol section 8) ---------------------- */

/*
 * Spin with `pause` for spin_ns, then sched_yield() for as long again, then
 * sleep with a doubling interval from 1 us up to max_sleep_ns. Work resets it.
 */
struct cxl_backoff {
    uint64_t spin_ns;
    uint64_t max_sleep_ns;
    uint64_t start_ns;          /* 0: not waiting */
    uint64_t sleep_ns;
    uint64_t slept_ns;          /* total time spent sleeping, for --cost */
    uint64_t waits;             /* number of wait episodes that went past spinning */
};

void cxl_backoff_init(struct cxl_backoff *b, uint64_t spin_ns, uint64_t max_sleep_ns);
void cxl_backoff_reset(struct cxl_backoff *b);
/* One step of waiting; `now` is cxl_now_ns() (0 = read the clock here). */
void cxl_backoff_wait(struct cxl_backoff *b, uint64_t now);

/* ---- The region, shared by every session of a process --------------------- */

struct cxl_session;

struct cxl_client {
    struct cxl_region region;
    struct cxl_geometry geo;
    const struct cxl_shm_header *khdr;  /* shared: the server's header section */
    uint64_t epoch;                     /* server_epoch seen at open */
    uint64_t server_dead_ns;            /* heartbeat standing still this long = gone */

    /* heartbeat thread */
    pthread_t hb_thread;
    int hb_running;
    int hb_stop;                        /* atomic: ask the thread to exit */
    int server_gone;                    /* atomic: set by the heartbeat thread */
    pthread_mutex_t lock;               /* protects sessions[] */
    struct cxl_session *sessions[CXL_MAX_CHANNELS];
    uint32_t nsessions;

    /* How this client rings a server that sleeps behind a doorbell (notify_kind 2, section
     * 8): opened on the first such notification; doorbell.rings / .missed count them. */
    struct cxl_doorbell doorbell;
};

/*
 * Map the region at path, read and validate its header and segment table, and
 * check that the server is RUNNING. path is one file (security off: a /dev/shm
 * file, /dev/uioN or a sysfs resource file; map_size 0 = the whole file or BAR)
 * or a directory of segment files (security secdsm: header and server-* are
 * mapped read-only, client-* read-write where the file allows it, absent ones
 * stay unmapped; map_size is ignored). On error returns a negative code with
 * err filled.
 */
int cxl_client_open(struct cxl_client *c, const char *path, uint64_t map_size,
                    char *err, size_t errlen);

/*
 * The doorbell this client rings when the server sleeps behind one (notify_kind 2):
 * path, or NULL for the default (the environment variable CXL_RING_DOORBELL when set,
 * else /dev/cxl/doorbell when it exists). cxl_client_open sets the default; call this
 * after it and before the first claim. Nothing is opened until a notification needs it.
 */
void cxl_client_set_doorbell(struct cxl_client *c, const char *path);

/*
 * Whether this client may claim channel chan: its client section is mapped
 * writable and its server section readable (docs/ring-protocol.md section 2).
 */
int cxl_client_claimable(const struct cxl_client *c, uint32_t chan);

/*
 * The claimable channels, in channel order: fills up to cap entries of
 * chans (may be NULL) and returns how many there are.
 */
uint32_t cxl_client_channels(const struct cxl_client *c, uint32_t *chans, uint32_t cap);

/*
 * Start the heartbeat thread: bumps client_heartbeat of every claimed session
 * every client_lease_ms / 8 and watches server_heartbeat and server_epoch.
 */
int cxl_client_start_heartbeat(struct cxl_client *c, char *err, size_t errlen);

/* Stop the heartbeat thread (release sessions first) and unmap the region. */
void cxl_client_close(struct cxl_client *c);

/*
 * Server liveness as of now: 0, CXL_E_NOT_RUNNING, CXL_E_SERVER_GONE (the
 * heartbeat thread's verdict) or CXL_E_RESTARTED (epoch differs from
 * `epoch`). Cheap: two loads and a flag.
 */
int cxl_client_liveness(const struct cxl_client *c, uint64_t epoch);

/* ---- A session: one claimed channel ------------------------------------- */

/* A response popped from the ring: a private, validated copy. */
struct cxl_resp {
    uint64_t id;
    uint8_t  status;                    /* enum cxl_status */
    uint32_t payload_len;
    const uint8_t *payload;             /* points into the session's private buffer */
};

struct cxl_session {
    struct cxl_client *client;
    uint32_t chan;
    uint64_t token;
    uint64_t epoch;                     /* server_epoch at claim time */
    uint32_t gen;                       /* session_gen at the ack: the high half of every id */
    uint32_t delay_ns;                  /* access_delay_ns at the ack (section 2.4) */

    struct cxl_shm_client_ctl *kcli;    /* shared: our client section (we write) */
    struct cxl_shm_client_ctl *kwake;   /* shared: our group's first channel (req_wake) */
    const struct cxl_shm_server_ctl *ksrv; /* shared: the server's section (read only) */
    struct cxl_ring req;                /* we produce */
    struct cxl_ring resp;               /* we consume */

    uint64_t req_head;                  /* private copy of the index we own */
    uint64_t req_tail_seen;             /* last server req_tail we loaded (P0) */
    uint64_t resp_tail;                 /* private copy of the index we own */
    uint64_t resp_head_seen;            /* last server resp_head we loaded (C1) */
    uint64_t resp_tail_published;
    uint64_t req_scrubbed;              /* request bytes below this are zero (section 3.1) */
    uint64_t inflight;                  /* requests pushed and not yet answered */
    int subscribed;                     /* the caller sent SUBSCRIBE or kin: pushes (status
                                         * CXL_ST_PUSH, id 0) may come, and count toward
                                         * nothing (docs/ring-protocol.md 15) */

    uint8_t *buf;                       /* private copy of the current response */
    uint32_t buf_size;
    uint64_t heartbeat;                 /* our heartbeat counter; the hb thread bumps it */
    char err[256];                      /* reason for the last error */
};

/*
 * Claim a free channel (S1), start its heartbeat and wait up to timeout_ms
 * for the server's ack (S3). Channels from `first` up are tried first, then
 * the rest, so that threads spread over channels; only claimable channels
 * (cxl_client_claimable) are tried: CXL_E_NO_ACCESS when there is none.
 */
int cxl_session_claim(struct cxl_client *c, struct cxl_session *s, uint32_t first,
                      uint32_t timeout_ms);

/*
 * The id of this session's request number seq (section 4.3): session_gen in
 * the high half. A session sends at most 2^32 requests; claim again before.
 */
static inline uint64_t cxl_session_id(const struct cxl_session *s, uint32_t seq)
{
    return cxl_id_make(s->gen, seq);
}

/* Release the channel (claim_token := 0) and free the session's memory. */
void cxl_session_release(struct cxl_session *s);

/*
 * Copy one encoded request (len bytes, header included) into the request ring
 * without publishing it. CXL_OK, CXL_E_AGAIN when the ring has no room now,
 * CXL_E_TOO_LARGE, CXL_E_CORRUPT.
 */
int cxl_session_push(struct cxl_session *s, const void *msg, uint32_t len);

/* Publish every pushed request to the server (P1). */
void cxl_session_flush(struct cxl_session *s);

/*
 * Pop the next response into r (valid until the next pop). CXL_OK, CXL_E_AGAIN
 * when none is there, CXL_E_CORRUPT. The ring space is handed back to the
 * server by cxl_session_pop_done() (C2), once per batch of pops, which also
 * zeroes the request bytes the server has released (Z1, section 3.1).
 */
int cxl_session_pop(struct cxl_session *s, struct cxl_resp *r);
void cxl_session_pop_done(struct cxl_session *s);

/*
 * Channel and server checks for the start of a batch: liveness, ack_token
 * still ours, channel not quarantined. 0 or a negative code (s->err says why).
 */
int cxl_session_check(struct cxl_session *s);

#endif /* CXL_RING_CLIENT_H */
