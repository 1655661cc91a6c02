/*
 * cxl-ring-bench - load generator for the cxl_ring Redis driver.
 *
 * Each thread claims its own channel of a shared-memory region (layout v5,
 * docs/ring-protocol.md: one file, or a directory of segment files) or takes its own ring of the proof of concept's
 * layout v2, sends GET/SET requests (one at a time, or pipelined up to a
 * window), and measures throughput and latency. Flags that the PoC's client
 * had (--path --map-size --bench --threads --pipeline --max-inflight
 * --latency --cost --csv --label) mean the same here, and the CSV rows have
 * the PoC's columns, so existing scripts and plots keep working.
 *
 * Every wait is bounded (--timeout, the stall time, the claim timeout); a
 * dead or restarted server ends the run with a message that says how many
 * requests had an unknown outcome, and a non-zero exit code.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- Options ------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
"usage: cxl-ring-bench --path REGION [options]\n"
"\n"
"Benchmark the cxl_ring Redis driver through its shared-memory rings.\n"
"\n"
"Region and layout:\n"
"  --path PATH            the shared region (required): one file (security off: a\n"
"                         /dev/shm file, /dev/uioN, or a sysfs PCI resource2 file) or\n"
"                         a directory of segment files (security secdsm: header,\n"
"                         client-<g>, server-<g>; only the segments granted to this\n"
"                         peer need be there, and only channels of a client segment\n"
"                         it can write are claimed)\n"
"  --map-size BYTES       bytes to map of a one-file region (default: all of it)\n"
"  --doorbell PATH        the doorbell to ring a server that sleeps behind one (default:\n"
"                         $CXL_RING_DOORBELL, else /dev/cxl/doorbell when it exists)\n"
"  --layout v5|v2         protocol layout (default v5; v2 = the PoC's slot rings, for\n"
"                         the driver's `layout v2` mode)\n"
"\n"
"Load:\n"
"  --bench N              requests per phase, all threads together (default 100000)\n"
"  --duration SEC         run each phase for SEC seconds instead of N requests\n"
"  --op LIST              phases, comma-separated: set, get, mix (default set,get as\n"
"                         the PoC: a SET phase, then a GET phase)\n"
"  --get-ratio R          share of GETs in a mix phase, 0..1 (default 0.9)\n"
"  --threads T            threads; each claims its own channel (default 1)\n"
"  --pipeline[=M]         keep up to --max-inflight requests in flight per thread\n"
"                         (without it: one request at a time, a round trip each)\n"
"  --max-inflight M       pipeline window per thread (default 1024)\n"
"  --batch B              requests written before publishing them (default 64)\n"
"  --value-size BYTES     SET value size (default 64); also -d\n"
"  --keyspace K           keys key:000000000000 .. K-1, random (default 100000); also -r\n"
"  --no-prefill           do not SET every key before a GET or mix phase\n"
"  --no-read              an attacker's load (needs --duration): push requests as fast\n"
"                         as the ring takes them and never read a response, so the\n"
"                         server's answers wait; a channel that takes nothing for\n"
"                         20 ms is released and claimed again at the next 100 ms\n"
"                         boundary, every thread at once, which starts it over\n"
"\n"
"Waiting and limits:\n"
"  --timeout SEC          give up after SEC seconds in all (default 60), or after\n"
"                         min(SEC, 5) seconds without a response\n"
"  --claim-timeout-ms MS  wait at most MS for the server to accept a claim (default 3000)\n"
"  --spin-us US           spin this long before yielding/sleeping (default 50)\n"
"  --max-sleep-us US      longest back-off sleep while waiting (default 200)\n"
"\n"
"Output:\n"
"  --latency              accepted for the PoC's scripts: latency is always measured\n"
"                         (one clock read per batch), and is written to the CSV\n"
"  --cost                 also print push retries (ring full) and time slept\n"
"  --csv FILE             append one row per phase with the PoC's header; with\n"
"                         --latency or --cost the default is results/ring_metrics.csv\n"
"  --label NAME           the CSV/JSON label (default ring_v5 or ring_v2)\n"
"  --json FILE            write a JSON summary (- for stdout)\n"
"  --quiet                only errors on stderr\n"
"  --cacheline-rtt A,B    no benchmark: measure the round trip of a cache line between\n"
"                         CPUs A and B (the floor of any ring round trip), print ns\n"
"  --help, --version\n"
"\n"
"Exit codes: 0 ok; 1 usage; 2 cannot open the region, it is not formatted, or no\n"
"channel of it is writable here;\n"
"3 layout mismatch; 4 server not running, gone or restarted (in-flight requests have\n"
"an unknown outcome); 5 timeout; 6 protocol error or error replies.\n");
}

enum {
    OPT_PATH = 256, OPT_MAP_SIZE, OPT_LAYOUT, OPT_BENCH, OPT_DURATION, OPT_OP, OPT_GET_RATIO,
    OPT_THREADS, OPT_PIPELINE, OPT_MAX_INFLIGHT, OPT_BATCH, OPT_NO_PREFILL, OPT_TIMEOUT,
    OPT_CLAIM_TIMEOUT, OPT_SPIN_US, OPT_MAX_SLEEP_US, OPT_LATENCY, OPT_COST, OPT_CSV,
    OPT_LABEL, OPT_JSON, OPT_QUIET, OPT_CACHELINE, OPT_HELP, OPT_VERSION, OPT_KEYSPACE, OPT_VALUE_SIZE,
    OPT_NO_READ, OPT_DOORBELL,
};

static const struct option long_opts[] = {
    { "path", required_argument, NULL, OPT_PATH },
    { "map-size", required_argument, NULL, OPT_MAP_SIZE },
    { "doorbell", required_argument, NULL, OPT_DOORBELL },
    { "layout", required_argument, NULL, OPT_LAYOUT },
    { "bench", required_argument, NULL, OPT_BENCH },
    { "duration", required_argument, NULL, OPT_DURATION },
    { "op", required_argument, NULL, OPT_OP },
    { "get-ratio", required_argument, NULL, OPT_GET_RATIO },
    { "threads", required_argument, NULL, OPT_THREADS },
    { "pipeline", optional_argument, NULL, OPT_PIPELINE },
    { "max-inflight", required_argument, NULL, OPT_MAX_INFLIGHT },
    { "batch", required_argument, NULL, OPT_BATCH },
    { "value-size", required_argument, NULL, OPT_VALUE_SIZE },
    { "keyspace", required_argument, NULL, OPT_KEYSPACE },
    { "no-prefill", no_argument, NULL, OPT_NO_PREFILL },
    { "no-read", no_argument, NULL, OPT_NO_READ },
    { "timeout", required_argument, NULL, OPT_TIMEOUT },
    { "claim-timeout-ms", required_argument, NULL, OPT_CLAIM_TIMEOUT },
    { "spin-us", required_argument, NULL, OPT_SPIN_US },
    { "max-sleep-us", required_argument, NULL, OPT_MAX_SLEEP_US },
    { "latency", no_argument, NULL, OPT_LATENCY },
    { "cost", no_argument, NULL, OPT_COST },
    { "csv", required_argument, NULL, OPT_CSV },
    { "label", required_argument, NULL, OPT_LABEL },
    { "json", required_argument, NULL, OPT_JSON },
    { "quiet", no_argument, NULL, OPT_QUIET },
    { "cacheline-rtt", required_argument, NULL, OPT_CACHELINE },
    { "help", no_argument, NULL, OPT_HELP },
    { "version", no_argument, NULL, OPT_VERSION },
    { NULL, 0, NULL, 0 },
};

static void fail_usage(const char *fmt, ...)
    __attribute__((noreturn, format(printf, 1, 2)));

static void fail_usage(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "cxl-ring-bench: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(see cxl-ring-bench --help)\n");
    exit(EXIT_USAGE);
}

static uint64_t parse_u64(const char *name, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
        fail_usage("%s wants an integer from %" PRIu64 " to %" PRIu64 ", not '%s'", name, min,
                   max, s);
    return v;
}

static double parse_double(const char *name, const char *s, double min, double max)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= min && v <= max))
        fail_usage("%s wants a number from %g to %g, not '%s'", name, min, max, s);
    return v;
}

static void parse_ops(struct bench_opts *o, const char *list)
{
    char buf[64], *tok, *save = NULL;

    if (strlen(list) >= sizeof(buf))
        fail_usage("--op '%s' is too long", list);
    strcpy(buf, list);
    o->nphases = 0;
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int op;

        if (!strcasecmp(tok, "get"))
            op = OP_GET;
        else if (!strcasecmp(tok, "set"))
            op = OP_SET;
        else if (!strcasecmp(tok, "mix"))
            op = OP_MIX;
        else
            fail_usage("--op: unknown operation '%s' (want get, set or mix)", tok);
        if (o->nphases == 3)
            fail_usage("--op: at most 3 phases");
        o->phases[o->nphases++] = op;
    }
    if (!o->nphases)
        fail_usage("--op wants at least one of get, set, mix");
}

static void parse_args(struct bench_opts *o, int argc, char **argv)
{
    int ch, inflight_set = 0;

    memset(o, 0, sizeof(*o));
    o->requests = 100000;
    o->threads = 1;
    o->max_inflight = 1024;
    o->batch = 64;
    o->value_size = 64;
    o->keyspace = 100000;
    o->prefill = 1;
    o->layout = CXL_LAYOUT_VERSION;
    o->timeout_s = 60;
    o->claim_timeout_ms = 3000;
    o->spin_ns = 50000;
    o->max_sleep_ns = 200000;
    o->get_ratio = 0.9;
    o->phases[0] = OP_SET;
    o->phases[1] = OP_GET;
    o->nphases = 2;

    while ((ch = getopt_long(argc, argv, "d:r:h", long_opts, NULL)) != -1) {
        switch (ch) {
        case OPT_PATH: o->path = optarg; break;
        case OPT_DOORBELL: o->doorbell = optarg; break;
        case OPT_MAP_SIZE:
            o->map_size = parse_u64("--map-size", optarg, CXL_PAGE_SIZE, UINT64_MAX / 2);
            break;
        case OPT_LAYOUT:
            if (!strcmp(optarg, "v5") || !strcmp(optarg, "5"))
                o->layout = CXL_LAYOUT_VERSION;
            else if (!strcmp(optarg, "v2") || !strcmp(optarg, "2"))
                o->layout = 2;
            else if (!strcmp(optarg, "v4") || !strcmp(optarg, "4") ||
                     !strcmp(optarg, "v3") || !strcmp(optarg, "3"))
                fail_usage("--layout %s is no longer spoken: layout v5 replaced it (the "
                           "driver's default); use --layout v5", optarg);
            else
                fail_usage("--layout wants v5 or v2, not '%s'", optarg);
            break;
        case OPT_BENCH: o->requests = parse_u64("--bench", optarg, 1, 1ull << 40); break;
        case OPT_DURATION:
            o->duration_s = parse_double("--duration", optarg, 0.01, 3600);
            break;
        case OPT_OP: parse_ops(o, optarg); break;
        case OPT_GET_RATIO: o->get_ratio = parse_double("--get-ratio", optarg, 0, 1); break;
        case OPT_THREADS:
            o->threads = (uint32_t)parse_u64("--threads", optarg, 1, BENCH_MAX_THREADS);
            break;
        case OPT_PIPELINE:
            o->pipeline = 1;
            if (optarg) {
                o->max_inflight = (uint32_t)parse_u64("--pipeline", optarg, 1, 1u << 20);
                inflight_set = 1;
            }
            break;
        case OPT_MAX_INFLIGHT:
            o->max_inflight = (uint32_t)parse_u64("--max-inflight", optarg, 1, 1u << 20);
            inflight_set = 1;
            break;
        case OPT_BATCH: o->batch = (uint32_t)parse_u64("--batch", optarg, 1, 1u << 20); break;
        case 'd':
        case OPT_VALUE_SIZE:
            o->value_size = (uint32_t)parse_u64("--value-size", optarg, 0, 1u << 30);
            break;
        case 'r':
        case OPT_KEYSPACE:
            o->keyspace = parse_u64("--keyspace", optarg, 1, 1000000000000ull);
            break;
        case OPT_NO_PREFILL: o->prefill = 0; break;
        case OPT_NO_READ: o->no_read = 1; break;
        case OPT_TIMEOUT: o->timeout_s = parse_double("--timeout", optarg, 0.1, 86400); break;
        case OPT_CLAIM_TIMEOUT:
            o->claim_timeout_ms = (uint32_t)parse_u64("--claim-timeout-ms", optarg, 1, 600000);
            break;
        case OPT_SPIN_US:
            o->spin_ns = parse_u64("--spin-us", optarg, 0, 10000000) * 1000;
            break;
        case OPT_MAX_SLEEP_US:
            o->max_sleep_ns = parse_u64("--max-sleep-us", optarg, 1, 1000000) * 1000;
            break;
        case OPT_LATENCY: o->latency_flag = 1; break;
        case OPT_COST: o->cost = 1; break;
        case OPT_CSV: o->csv = optarg; break;
        case OPT_LABEL: o->label = optarg; break;
        case OPT_JSON: o->json = optarg; break;
        case OPT_QUIET: o->quiet = 1; break;
        case OPT_CACHELINE: {
            int a, b;
            char extra, why[128];
            double ns;

            if (sscanf(optarg, "%d,%d%c", &a, &b, &extra) != 2 || a < 0 || b < 0 || a == b)
                fail_usage("--cacheline-rtt wants two different CPUs, e.g. 0,1");
            ns = cacheline_rtt_ns(a, b, why, sizeof(why));
            if (ns < 0) {
                fprintf(stderr, "cxl-ring-bench: error: %s\n", why);
                exit(EXIT_USAGE);
            }
            printf("cacheline round trip between CPU %d and CPU %d: %.1f ns\n", a, b, ns);
            exit(0);
        }
        case 'h':
        case OPT_HELP: usage(stdout); exit(0);
        case OPT_VERSION: printf("cxl-ring-bench %s (layout v%u, v2)\n", BENCH_VERSION,
                                 CXL_LAYOUT_VERSION); exit(0);
        default: fail_usage("unknown option");
        }
    }
    if (optind < argc)
        fail_usage("unexpected argument '%s'", argv[optind]);
    if (!o->path)
        fail_usage("--path REGION is required (e.g. --path /dev/shm/cxl_ring)");
    if (o->no_read && o->duration_s <= 0)
        fail_usage("--no-read runs by time: give --duration SEC");
    if (inflight_set && !o->pipeline)
        o->pipeline = 1;            /* a window only means something when pipelining */
    if (o->batch > o->max_inflight)
        o->batch = o->max_inflight;
    if (!o->label)
        o->label = o->layout == 2 ? "ring_v2" : "ring_v5";
    if (!o->csv && (o->latency_flag || o->cost))
        o->csv = "results/ring_metrics.csv";    /* the PoC's default */
    o->stall_s = o->timeout_s < 5 ? o->timeout_s : 5;
}

/* ---- Workers -------------------------------------------------------------- */

struct pending {
    uint64_t sent_ns;
    uint8_t  op;
};

struct worker {
    uint32_t index;
    pthread_t thread;
    const struct bench_opts *o;
    const struct transport *t;
    struct bench_conn *conn;
    uint64_t rng;
    uint64_t next_id;
    struct pending *pend;           /* window entries, indexed by id % window */
    uint8_t key[BENCH_KEY_LEN];
    uint8_t *value;
    struct phase_result res[3];
    uint64_t t_start[3], t_end[3];
    int rc;                         /* cxl_client_rc of the failure, 0 if none */
    uint64_t unknown;               /* requests in flight when the server was lost */
    char err[384];
};

static pthread_barrier_t phase_barrier;
static int stop_all;                /* atomic: a worker failed, everyone stops */
static int attach_failures;         /* atomic */
static uint64_t run_deadline_ns;
static uint64_t phase_origin_ns;    /* atomic: --no-read's rounds count from here */

static inline uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static inline void key_fill(uint8_t *key, uint64_t k)
{
    int i;

    memcpy(key, BENCH_KEY_PREFIX, sizeof(BENCH_KEY_PREFIX) - 1);
    for (i = (int)BENCH_KEY_LEN - 1; i >= (int)(sizeof(BENCH_KEY_PREFIX) - 1); i--) {
        key[i] = (uint8_t)('0' + k % 10);
        k /= 10;
    }
}

static void worker_fail(struct worker *w, int rc, uint64_t inflight, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void worker_fail(struct worker *w, int rc, uint64_t inflight, const char *fmt, ...)
{
    va_list ap;

    if (w->rc)
        return;
    w->rc = rc;
    if (rc == CXL_E_SERVER_GONE || rc == CXL_E_RESTARTED || rc == CXL_E_NOT_RUNNING ||
        rc == CXL_E_LOST || rc == CXL_E_TIMEOUT)
        w->unknown = inflight;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof(w->err), fmt, ap);
    va_end(ap);
    __atomic_store_n(&stop_all, 1, __ATOMIC_RELAXED);
}

/*
 * One phase on this thread's channel. measured = 0 for the prefill (keys
 * are then set in order, thread i taking every threads-th key).
 */
static void run_phase(struct worker *w, int phase, int op, uint64_t target, int measured)
{
    const struct bench_opts *o = w->o;
    const struct transport *t = w->t;
    struct phase_result *res = &w->res[phase];
    uint32_t window = o->pipeline ? o->max_inflight : 1;
    uint32_t batch = o->pipeline ? o->batch : 1;
    uint64_t get_threshold = o->get_ratio >= 1 ? UINT64_MAX
                             : (uint64_t)(o->get_ratio * 18446744073709551616.0);
    uint64_t sent = 0, done = 0, inflight = 0, seq_key = w->index;
    uint64_t stall_ns = (uint64_t)(o->stall_s * 1e9), phase_end = UINT64_MAX;
    uint64_t drain_deadline = 0, last_progress, slept0, now;
    struct cxl_backoff b;
    struct bench_reply r;
    int sending = 1, rc;

    memset(res, 0, sizeof(*res));
    res->op = op;
    cxl_backoff_init(&b, o->spin_ns, o->max_sleep_ns);
    slept0 = b.slept_ns;
    now = cxl_now_ns();
    w->t_start[phase] = now;
    if (measured && o->duration_s > 0) {
        phase_end = now + (uint64_t)(o->duration_s * 1e9);
        target = UINT64_MAX;
    }
    last_progress = now;

    while (sending || inflight) {
        uint32_t pushed = 0, popped = 0;

        now = cxl_now_ns();
        if (sending && (sent >= target || now >= phase_end))
            sending = 0;
        if (__atomic_load_n(&stop_all, __ATOMIC_RELAXED) && !drain_deadline) {
            sending = 0;            /* another thread failed: finish what is in flight */
            drain_deadline = now + 1000000000ull;
        }
        if (now > run_deadline_ns) {
            worker_fail(w, CXL_E_TIMEOUT, inflight, "the run took longer than --timeout "
                        "%.1f s (%" PRIu64 " of this thread's requests were done)",
                        o->timeout_s, done);
            break;
        }
        if (drain_deadline && now > drain_deadline)
            break;

        if (sending && inflight < window) {
            rc = t->check(w->conn);
            if (rc) {
                worker_fail(w, rc, inflight, "%s", t->error(w->conn));
                break;
            }
            while (pushed < batch && inflight < window && sent < target) {
                uint64_t id = w->next_id;
                int this_op = op;
                uint64_t k;

                if (op == OP_MIX)
                    this_op = xorshift64(&w->rng) < get_threshold ? OP_GET : OP_SET;
                if (measured) {
                    k = xorshift64(&w->rng) % o->keyspace;
                } else {
                    k = seq_key;
                    seq_key += o->threads;
                }
                key_fill(w->key, k);
                rc = t->push(w->conn, this_op, id, w->key, BENCH_KEY_LEN, w->value,
                             o->value_size);
                if (rc == CXL_E_AGAIN) {
                    res->push_retries++;
                    break;
                }
                if (rc) {
                    worker_fail(w, rc, inflight, "%s", t->error(w->conn));
                    goto out;
                }
                w->pend[id % window].sent_ns = now;
                w->pend[id % window].op = (uint8_t)this_op;
                w->next_id++;
                sent++;
                inflight++;
                pushed++;
            }
            if (pushed)
                t->flush(w->conn);
        }

        while (inflight) {
            uint64_t expect = w->next_id - inflight;
            struct pending *p = &w->pend[expect % window];

            rc = t->pop(w->conn, &r);
            if (rc == CXL_E_AGAIN)
                break;
            if (rc) {
                worker_fail(w, rc, inflight, "%s", t->error(w->conn));
                goto out;
            }
            if (!popped)
                now = cxl_now_ns();
            if (r.status == CXL_ST_PROTOCOL_ERROR) {
                worker_fail(w, CXL_E_QUARANTINED, inflight, "the server quarantined the "
                            "channel: %.*s", (int)(r.text_len > 200 ? 200 : r.text_len),
                            (const char *)r.text);
                goto out;
            }
            if (r.has_id && r.id != (expect & CXL_ID_SEQ_MASK)) {
                worker_fail(w, CXL_E_CORRUPT, inflight, "response id %" PRIu64 " where %"
                            PRIu64 " was expected (responses out of order)", r.id, expect);
                goto out;
            }
            if (r.status == CXL_ST_NOT_FOUND && p->op == OP_GET) {
                res->get_misses++;
            } else if (r.status != CXL_ST_OK) {
                if (!res->errors && !w->err[0])
                    snprintf(w->err, sizeof(w->err), "%s reply with status %u: %.*s",
                             op_name(p->op), r.status,
                             (int)(r.text_len > 200 ? 200 : r.text_len),
                             (const char *)r.text);
                res->errors++;
            }
            if (measured)
                hist_add(&res->lat, now - p->sent_ns);
            inflight--;
            done++;
            popped++;
        }
        if (popped)
            t->pop_done(w->conn);

        if (pushed || popped) {
            cxl_backoff_reset(&b);
            last_progress = now;
            continue;
        }
        if (inflight && now - last_progress > stall_ns) {
            rc = t->check(w->conn);
            worker_fail(w, rc ? rc : CXL_E_TIMEOUT, inflight,
                        "%s%sno response for %.1f s", rc ? t->error(w->conn) : "",
                        rc ? "; " : "", o->stall_s);
            break;
        }
        if (inflight) {
            rc = t->check(w->conn);
            if (rc) {
                worker_fail(w, rc, inflight, "%s", t->error(w->conn));
                break;
            }
        }
        cxl_backoff_wait(&b, now);
    }
out:
    w->t_end[phase] = cxl_now_ns();
    res->requests = done;
    res->sleep_ns = b.slept_ns - slept0;
}

/*
 * --no-read: an attacker's load on this thread's channel for --duration. Requests go in
 * as fast as the ring takes them and no response is ever read, so the server's response
 * ring fills and its answers wait in the server. A channel that has taken nothing for
 * NO_READ_JAM_NS is released and claimed again at the next NO_READ_ROUND_NS boundary of
 * the run, the same instant for every thread: the server drops what waits, and finds
 * every channel full of requests at once (with 1 MiB GETs, the most copying it can be
 * handed in one go). Counts requests pushed, and reclaims.
 */
#define NO_READ_JAM_NS   (20ull * 1000000ull)
#define NO_READ_ROUND_NS (100ull * 1000000ull)

static void run_no_read(struct worker *w, int phase, int op)
{
    const struct bench_opts *o = w->o;
    const struct transport *t = w->t;
    struct phase_result *res = &w->res[phase];
    uint64_t get_threshold = o->get_ratio >= 1 ? UINT64_MAX
                             : (uint64_t)(o->get_ratio * 18446744073709551616.0);
    uint64_t now = cxl_now_ns(), phase_end, last_progress = now, slept0, round = 0;
    struct cxl_backoff b;
    int rc;

    memset(res, 0, sizeof(*res));
    res->op = op;
    cxl_backoff_init(&b, o->spin_ns, o->max_sleep_ns);
    slept0 = b.slept_ns;
    /* The phase starts at the same instant for every thread (the barrier before it):
     * round boundaries are counted from the earliest start, shared by all. */
    w->t_start[phase] = now;
    if (phase_origin_ns == 0)
        __atomic_compare_exchange_n(&phase_origin_ns, &(uint64_t){ 0 }, now, 0,
                                    __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    phase_end = now + (uint64_t)(o->duration_s * 1e9);
    while (now < phase_end && !__atomic_load_n(&stop_all, __ATOMIC_RELAXED)) {
        uint32_t pushed = 0;

        if (now > run_deadline_ns) {
            worker_fail(w, CXL_E_TIMEOUT, 0, "the run took longer than --timeout %.1f s",
                        o->timeout_s);
            break;
        }
        while (pushed < o->batch) {
            int this_op = op;

            if (op == OP_MIX)
                this_op = xorshift64(&w->rng) < get_threshold ? OP_GET : OP_SET;
            key_fill(w->key, xorshift64(&w->rng) % o->keyspace);
            rc = t->push(w->conn, this_op, w->next_id, w->key, BENCH_KEY_LEN, w->value,
                         o->value_size);
            if (rc == CXL_E_AGAIN) {
                res->push_retries++;
                break;
            }
            if (rc) {
                worker_fail(w, rc, 0, "%s", t->error(w->conn));
                goto out;
            }
            w->next_id++;
            res->requests++;
            pushed++;
        }
        now = cxl_now_ns();
        if (pushed) {
            t->flush(w->conn);
            last_progress = now;
            cxl_backoff_reset(&b);
            continue;
        }
        rc = t->check(w->conn);
        if (rc) {
            worker_fail(w, rc, 0, "%s", t->error(w->conn));
            break;
        }
        if (now - last_progress > NO_READ_JAM_NS &&
            (now - phase_origin_ns) / NO_READ_ROUND_NS != round) {
            round = (now - phase_origin_ns) / NO_READ_ROUND_NS;
            t->detach(w->conn);
            w->conn = NULL;
            rc = t->attach(w->index, &w->conn, w->err, sizeof(w->err));
            if (rc) {
                w->conn = NULL;
                worker_fail(w, rc, 0, "claiming the channel again: %s", w->err);
                break;
            }
            res->reclaims++;
            now = last_progress = cxl_now_ns();
            continue;
        }
        cxl_backoff_wait(&b, now);
        now = cxl_now_ns();
    }
out:
    w->t_end[phase] = cxl_now_ns();
    res->sleep_ns = b.slept_ns - slept0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    const struct bench_opts *o = w->o;
    uint64_t per_thread, extra;
    int i, rc;

    rc = w->t->attach(w->index, &w->conn, w->err, sizeof(w->err));
    if (rc) {
        w->rc = rc;
        __atomic_add_fetch(&attach_failures, 1, __ATOMIC_RELAXED);
    }
    pthread_barrier_wait(&phase_barrier);
    if (__atomic_load_n(&attach_failures, __ATOMIC_RELAXED))
        goto out;

    /* Prefill: SET every key once (not measured) so that GETs hit. */
    if (o->prefill) {
        int need = 0;
        for (i = 0; i < o->nphases; i++)
            need |= o->phases[i] != OP_SET;
        if (need) {
            uint64_t mine = o->keyspace / o->threads +
                            (w->index < o->keyspace % o->threads ? 1 : 0);
            run_phase(w, 0, OP_SET, mine, 0);
            w->t_end[0] = 0;        /* the prefill is not a phase result */
        }
        pthread_barrier_wait(&phase_barrier);
        if (__atomic_load_n(&stop_all, __ATOMIC_RELAXED))
            goto out;
    }
    per_thread = o->requests / o->threads;
    extra = o->requests % o->threads;
    for (i = 0; i < o->nphases; i++) {
        pthread_barrier_wait(&phase_barrier);
        if (o->no_read)
            run_no_read(w, i, o->phases[i]);
        else
            run_phase(w, i, o->phases[i], per_thread + (w->index < extra ? 1 : 0), 1);
        pthread_barrier_wait(&phase_barrier);
        if (__atomic_load_n(&stop_all, __ATOMIC_RELAXED))
            break;
    }
out:
    if (w->conn)
        w->t->detach(w->conn);
    w->conn = NULL;
    return NULL;
}

/* ---- Main ------------------------------------------------------------------ */

int bench_exit_for(int rc)
{
    switch (rc) {
    case CXL_OK:              return EXIT_OK_BENCH;
    case CXL_E_OPEN:
    case CXL_E_NO_ACCESS:
    case CXL_E_NOT_FORMATTED: return EXIT_NO_REGION;
    case CXL_E_LAYOUT:        return EXIT_LAYOUT;
    case CXL_E_NOT_RUNNING:
    case CXL_E_SERVER_GONE:
    case CXL_E_RESTARTED:
    case CXL_E_LOST:
    case CXL_E_NO_CHANNEL:    return EXIT_SERVER;
    case CXL_E_TIMEOUT:       return EXIT_TIMEOUT;
    default:                  return EXIT_PROTOCOL;
    }
}

static void write_json_error(const struct bench_opts *o, int code, const char *msg)
{
    char err[256];

    if (o->json && report_json(o, NULL, 0, 0, code ? "error" : "ok", msg, err, sizeof(err)))
        fprintf(stderr, "cxl-ring-bench: %s\n", err);
}

int main(int argc, char **argv)
{
    struct bench_opts o;
    const struct transport *t;
    struct worker *workers;
    struct phase_result results[3];
    char err[512], msg[1024] = "";
    uint32_t i, lanes;
    uint64_t unknown = 0;
    int code = EXIT_OK_BENCH, failed_rc = 0, p, nres = 0;
    const char *fail_msg = NULL;

    setvbuf(stdout, NULL, _IOLBF, 0);
    parse_args(&o, argc, argv);
    t = o.layout == 2 ? &transport_v2 : &transport_v5;

    code = t->open(&o, err, sizeof(err));
    if (code) {
        fprintf(stderr, "cxl-ring-bench: error: %s\n", err);
        write_json_error(&o, code, err);
        return code;
    }
    lanes = t->lanes();
    if (o.threads > lanes) {
        snprintf(msg, sizeof(msg), "--threads %u, but the region has only %u %s "
                 "this process may claim; each thread needs its own", o.threads, lanes,
                 o.layout == 2 ? "rings" : "channels");
        fprintf(stderr, "cxl-ring-bench: error: %s\n", msg);
        write_json_error(&o, EXIT_USAGE, msg);
        t->close();
        return EXIT_USAGE;
    }
    if (!o.quiet)
        printf("cxl-ring-bench %s: layout v%d, region %s (%u %s), %u thread(s), %s, "
               "%u-byte values, %" PRIu64 " keys\n", BENCH_VERSION, o.layout, o.path, lanes,
               o.layout == 2 ? "rings" : "channels", o.threads,
               o.pipeline ? "pipelined" : "one request at a time", o.value_size, o.keyspace);
    if (!o.quiet && o.pipeline)
        printf("  pipeline: max-inflight %u per thread, batch %u\n", o.max_inflight, o.batch);

    workers = calloc(o.threads, sizeof(*workers));
    if (!workers) {
        fprintf(stderr, "cxl-ring-bench: error: out of memory\n");
        t->close();
        return EXIT_USAGE;
    }
    run_deadline_ns = cxl_now_ns() + (uint64_t)(o.timeout_s * 1e9);
    pthread_barrier_init(&phase_barrier, NULL, o.threads);
    for (i = 0; i < o.threads; i++) {
        struct worker *w = &workers[i];
        uint32_t window = o.pipeline ? o.max_inflight : 1;

        w->index = i;
        w->o = &o;
        w->t = t;
        w->rng = cxl_random_u64();
        w->next_id = 1;
        w->pend = calloc(window, sizeof(*w->pend));
        w->value = malloc(o.value_size ? o.value_size : 1);
        if (!w->pend || !w->value) {
            fprintf(stderr, "cxl-ring-bench: error: out of memory\n");
            return EXIT_USAGE;
        }
        memset(w->value, 'x', o.value_size);
    }
    for (i = 0; i < o.threads; i++) {
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i])) {
            fprintf(stderr, "cxl-ring-bench: error: cannot start thread %u\n", i);
            return EXIT_USAGE;
        }
    }
    for (i = 0; i < o.threads; i++)
        pthread_join(workers[i].thread, NULL);

    /* First failure decides the exit code; unknown outcomes add up. */
    for (i = 0; i < o.threads; i++) {
        unknown += workers[i].unknown;
        if (workers[i].rc && !failed_rc) {
            failed_rc = workers[i].rc;
            fail_msg = workers[i].err;
        }
    }

    if (!__atomic_load_n(&attach_failures, __ATOMIC_RELAXED)) {
        for (p = 0; p < o.nphases; p++) {
            struct phase_result *r = &results[nres];
            uint64_t t0 = UINT64_MAX, t1 = 0;

            memset(r, 0, sizeof(*r));
            r->op = o.phases[p];
            for (i = 0; i < o.threads; i++) {
                const struct phase_result *wr = &workers[i].res[p];
                if (!workers[i].t_end[p])
                    continue;
                if (workers[i].t_start[p] < t0)
                    t0 = workers[i].t_start[p];
                if (workers[i].t_end[p] > t1)
                    t1 = workers[i].t_end[p];
                r->requests += wr->requests;
                r->push_retries += wr->push_retries;
                r->sleep_ns += wr->sleep_ns;
                r->get_misses += wr->get_misses;
                r->errors += wr->errors;
                r->reclaims += wr->reclaims;
                hist_merge(&r->lat, &wr->lat);
            }
            if (!r->requests)
                break;
            r->seconds = (double)(t1 - t0) / 1e9;
            r->rps = r->seconds > 0 ? (double)r->requests / r->seconds : 0;
            if (!o.quiet)
                report_text(stdout, &o, r, lanes);
            nres++;
        }
    }

    code = bench_exit_for(failed_rc);
    if (failed_rc) {
        snprintf(msg, sizeof(msg), "%s: %s", cxl_client_strerror(failed_rc), fail_msg);
        if (unknown)
            snprintf(msg + strlen(msg), sizeof(msg) - strlen(msg),
                     "; %" PRIu64 " request(s) in flight have an unknown outcome (they may or "
                     "may not have been executed)", unknown);
    } else {
        uint64_t errors = 0;
        for (p = 0; p < nres; p++)
            errors += results[p].errors;
        if (errors) {
            code = EXIT_PROTOCOL;
            for (i = 0; i < o.threads; i++)
                if (workers[i].err[0]) {
                    fail_msg = workers[i].err;
                    break;
                }
            snprintf(msg, sizeof(msg), "%" PRIu64 " error replies (first: %s)", errors,
                     fail_msg ? fail_msg : "?");
        }
    }
    if (code)
        fprintf(stderr, "cxl-ring-bench: error: %s\n", msg);

    if (nres && o.csv && report_csv(&o, results, nres, o.layout == 2 ? lanes : o.threads, err,
                                    sizeof(err))) {
        fprintf(stderr, "cxl-ring-bench: error: %s\n", err);
        if (!code)
            code = EXIT_USAGE;
    }
    if (o.json && report_json(&o, results, nres, o.layout == 2 ? lanes : o.threads,
                              code ? "error" : "ok", msg, err, sizeof(err))) {
        fprintf(stderr, "cxl-ring-bench: error: %s\n", err);
        if (!code)
            code = EXIT_USAGE;
    }

    pthread_barrier_destroy(&phase_barrier);
    t->close();
    for (i = 0; i < o.threads; i++) {
        free(workers[i].pend);
        free(workers[i].value);
    }
    free(workers);
    return code;
}
