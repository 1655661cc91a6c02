/*
 * bench.h - cxl-ring-bench internals: options, the transport interface that
 * hides layout v4 (sessions on channels) and layout v2 (the PoC's slot rings),
 * the latency histogram and the per-phase results.
 */
#ifndef CXL_BENCH_H
#define CXL_BENCH_H

#include <stdint.h>
#include <stdio.h>

#include "cxl_ring/client.h"

#define BENCH_VERSION        "1.0"
#define BENCH_KEY_PREFIX     "key:"
#define BENCH_KEY_DIGITS     12             /* "key:000000012345", as redis-benchmark -r */
#define BENCH_KEY_LEN        (sizeof(BENCH_KEY_PREFIX) - 1 + BENCH_KEY_DIGITS)
#define BENCH_MAX_THREADS    256

/* Exit codes (documented in --help). */
enum bench_exit {
    EXIT_OK_BENCH     = 0,
    EXIT_USAGE        = 1,
    EXIT_NO_REGION    = 2,   /* cannot open/map the region, or no server formatted it */
    EXIT_LAYOUT       = 3,   /* layout mismatch */
    EXIT_SERVER       = 4,   /* server not running, gone or restarted; lost session */
    EXIT_TIMEOUT      = 5,   /* --timeout reached, or no response for the stall time */
    EXIT_PROTOCOL     = 6,   /* corrupt ring, mismatched response, error replies */
};

enum bench_op { OP_GET = 0, OP_SET = 1, OP_MIX = 2 };

struct bench_opts {
    const char *path;
    uint64_t map_size;
    const char *doorbell;           /* --doorbell: NULL = the library's default */
    uint64_t requests;              /* --bench N: per phase, all threads together */
    double   duration_s;            /* --duration: per phase; 0 = use requests */
    uint32_t threads;
    int      pipeline;
    uint32_t max_inflight;          /* window per thread */
    uint32_t batch;                 /* requests published per flush */
    int      latency_flag;          /* accepted for PoC compatibility */
    int      cost;
    const char *csv;
    const char *label;
    const char *json;
    int      phases[3];             /* bench_op per phase */
    int      nphases;
    double   get_ratio;             /* --op mix */
    uint32_t value_size;
    uint64_t keyspace;
    int      prefill;
    int      no_read;               /* --no-read: never read a response (an attacker) */
    int      layout;                /* 3 or 2 */
    double   timeout_s;
    double   stall_s;
    uint32_t claim_timeout_ms;
    uint64_t spin_ns;
    uint64_t max_sleep_ns;
    int      quiet;
};

/* ---- Latency histogram: log-linear, 64 sub-buckets per power of two (< 1.6 %) */

#define HIST_SUB_BITS   6
#define HIST_SUB        (1u << HIST_SUB_BITS)
#define HIST_BUCKETS    ((64 - HIST_SUB_BITS) * HIST_SUB + HIST_SUB)

struct hist {
    uint64_t count;
    uint64_t sum_ns;
    uint64_t max_ns;
    uint64_t bucket[HIST_BUCKETS];
};

void hist_add(struct hist *h, uint64_t ns);
void hist_merge(struct hist *into, const struct hist *from);
double hist_quantile_us(const struct hist *h, double q);

/* ---- Transports ------------------------------------------------------------ */

/* A decoded reply, as the benchmark loop needs it. */
struct bench_reply {
    uint64_t id;                    /* v3: echoed id; v2: none (order only) */
    int      has_id;
    uint8_t  status;                /* cxl_status (v2 statuses mapped onto it) */
    uint32_t value_len;
    const uint8_t *text;            /* error text, for ERR-like statuses */
    uint32_t text_len;
};

struct bench_conn;                  /* one thread's channel or ring */

struct transport {
    const char *name;
    /* process-wide: map and validate the region; returns an exit code */
    int  (*open)(const struct bench_opts *o, char *err, size_t errlen);
    void (*close)(void);
    uint32_t (*lanes)(void);        /* channels or rings available */
    /* per thread */
    int  (*attach)(uint32_t index, struct bench_conn **conn, char *err, size_t errlen);
    void (*detach)(struct bench_conn *conn);
    /* CXL_OK, CXL_E_AGAIN (full) or a negative cxl_client_rc */
    int  (*push)(struct bench_conn *conn, int op, uint64_t id, const uint8_t *key,
                 uint32_t key_len, const uint8_t *val, uint32_t val_len);
    void (*flush)(struct bench_conn *conn);
    int  (*pop)(struct bench_conn *conn, struct bench_reply *r);
    void (*pop_done)(struct bench_conn *conn);
    int  (*check)(struct bench_conn *conn);   /* liveness: 0 or a negative code */
    const char *(*error)(struct bench_conn *conn);
};

extern const struct transport transport_v5;
extern const struct transport transport_v2;

/* Map a cxl_client_rc to an exit code. */
int bench_exit_for(int rc);

/* ---- Results --------------------------------------------------------------- */

struct phase_result {
    int      op;
    uint64_t requests;              /* completed */
    double   seconds;
    double   rps;
    struct hist lat;
    uint64_t push_retries;
    uint64_t sleep_ns;
    uint64_t get_misses;
    uint64_t errors;
    uint64_t reclaims;              /* --no-read: channels released and claimed again */
};

void report_text(FILE *f, const struct bench_opts *o, const struct phase_result *r,
                 uint32_t lanes);
int  report_csv(const struct bench_opts *o, const struct phase_result *r, int nres,
                uint32_t lanes, char *err, size_t errlen);
int  report_json(const struct bench_opts *o, const struct phase_result *r, int nres,
                 uint32_t lanes, const char *outcome, const char *message, char *err,
                 size_t errlen);
const char *op_name(int op);

/* cacheline.c: the cross-CPU cache-line round trip (the floor of any ring RTT). */
double cacheline_rtt_ns(int cpu_a, int cpu_b, char *err, size_t errlen);

#define CSV_HEADER "label,op,threads,rings,requests,pipeline,max_inflight,throughput_rps," \
                   "avg_us,p50_us,p75_us,p90_us,p99_us,p99.9_us,p99.99_us,push_retries," \
                   "sleep_ms"

#endif /* CXL_BENCH_H */
