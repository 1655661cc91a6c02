/*
 * report.c - cxl-ring-bench output: the human summary, the PoC's CSV rows
 * (same header, appended, so existing plotting scripts keep working) and a
 * JSON document for bench/run.py.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#define ERR(...) do { if (err && errlen) snprintf(err, errlen, __VA_ARGS__); } while (0)

static const double quantiles[] = { 0.50, 0.75, 0.90, 0.99, 0.999, 0.9999 };
static const char *const quantile_names[] = { "p50", "p75", "p90", "p99", "p99.9", "p99.99" };
#define NQ (sizeof(quantiles) / sizeof(quantiles[0]))

const char *op_name(int op)
{
    return op == OP_GET ? "GET" : op == OP_SET ? "SET" : "MIX";
}

static double avg_us(const struct hist *h)
{
    return h->count ? (double)h->sum_ns / (double)h->count / 1000.0 : 0;
}

void report_text(FILE *f, const struct bench_opts *o, const struct phase_result *r,
                 uint32_t lanes)
{
    unsigned i;

    (void)lanes;
    fprintf(f, "%s: %llu requests in %.3f s = %.0f req/s\n", op_name(r->op),
            (unsigned long long)r->requests, r->seconds, r->rps);
    fprintf(f, "  latency us: avg %.2f", avg_us(&r->lat));
    for (i = 0; i < NQ; i++)
        fprintf(f, " %s %.2f", quantile_names[i], hist_quantile_us(&r->lat, quantiles[i]));
    fprintf(f, " max %.2f\n", (double)r->lat.max_ns / 1000.0);
    if (r->get_misses || r->errors)
        fprintf(f, "  GET misses %llu, error replies %llu\n",
                (unsigned long long)r->get_misses, (unsigned long long)r->errors);
    if (o->no_read)
        fprintf(f, "  never read: %llu channel(s) released and claimed again\n",
                (unsigned long long)r->reclaims);
    if (o->cost)
        fprintf(f, "  cost: push retries (ring full) %llu, sleep %.3f ms\n",
                (unsigned long long)r->push_retries, (double)r->sleep_ns / 1e6);
}

/* mkdir -p of the directory part of path (the PoC wrote results/ by default). */
static int make_parent_dirs(const char *path)
{
    char buf[4096];
    char *p;

    if (strlen(path) >= sizeof(buf))
        return -1;
    strcpy(buf, path);
    for (p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return 0;
}

int report_csv(const struct bench_opts *o, const struct phase_result *res, int nres,
               uint32_t lanes, char *err, size_t errlen)
{
    struct stat st;
    FILE *f;
    int i, need_header;
    unsigned q;

    make_parent_dirs(o->csv);
    need_header = stat(o->csv, &st) < 0 || st.st_size == 0;
    f = fopen(o->csv, "a");
    if (!f) {
        ERR("cannot append to CSV file %s: %s", o->csv, strerror(errno));
        return -1;
    }
    if (need_header)
        fprintf(f, "%s\n", CSV_HEADER);
    for (i = 0; i < nres; i++) {
        const struct phase_result *r = &res[i];

        fprintf(f, "%s,%s,%u,%u,%llu,%d,%u,%.2f,%.3f", o->label, op_name(r->op), o->threads,
                lanes, (unsigned long long)r->requests, o->pipeline ? 1 : 0,
                o->pipeline ? o->max_inflight : 1, r->rps, avg_us(&r->lat));
        for (q = 0; q < NQ; q++)
            fprintf(f, ",%.3f", hist_quantile_us(&r->lat, quantiles[q]));
        fprintf(f, ",%llu,%.3f\n", (unsigned long long)r->push_retries,
                (double)r->sleep_ns / 1e6);
    }
    if (fclose(f) != 0) {
        ERR("cannot write CSV file %s: %s", o->csv, strerror(errno));
        return -1;
    }
    return 0;
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

int report_json(const struct bench_opts *o, const struct phase_result *res, int nres,
                uint32_t lanes, const char *outcome, const char *message, char *err,
                size_t errlen)
{
    FILE *f = strcmp(o->json, "-") ? fopen(o->json, "w") : stdout;
    int i;
    unsigned q;

    if (!f) {
        ERR("cannot write JSON file %s: %s", o->json, strerror(errno));
        return -1;
    }
    fprintf(f, "{\n  \"tool\": \"cxl-ring-bench\",\n  \"version\": \"%s\",\n", BENCH_VERSION);
    fprintf(f, "  \"outcome\": ");
    json_str(f, outcome);
    fprintf(f, ",\n  \"message\": ");
    json_str(f, message);
    fprintf(f, ",\n  \"label\": ");
    json_str(f, o->label);
    fprintf(f, ",\n  \"path\": ");
    json_str(f, o->path);
    fprintf(f, ",\n  \"layout\": \"v%d\",\n  \"threads\": %u,\n  \"rings\": %u,\n"
               "  \"pipeline\": %s,\n  \"max_inflight\": %u,\n  \"batch\": %u,\n"
               "  \"value_size\": %u,\n  \"keyspace\": %llu,\n  \"results\": [",
            o->layout, o->threads, lanes, o->pipeline ? "true" : "false",
            o->pipeline ? o->max_inflight : 1, o->batch, o->value_size,
            (unsigned long long)o->keyspace);
    for (i = 0; i < nres; i++) {
        const struct phase_result *r = &res[i];

        fprintf(f, "%s\n    {\"op\": \"%s\", \"requests\": %llu, \"seconds\": %.6f, "
                   "\"rps\": %.2f, \"avg_us\": %.3f",
                i ? "," : "", op_name(r->op), (unsigned long long)r->requests, r->seconds,
                r->rps, avg_us(&r->lat));
        for (q = 0; q < NQ; q++)
            fprintf(f, ", \"%s_us\": %.3f", quantile_names[q],
                    hist_quantile_us(&r->lat, quantiles[q]));
        fprintf(f, ", \"max_us\": %.3f, \"get_misses\": %llu, \"errors\": %llu, "
                   "\"push_retries\": %llu, \"sleep_ms\": %.3f, \"reclaims\": %llu}",
                (double)r->lat.max_ns / 1000.0, (unsigned long long)r->get_misses,
                (unsigned long long)r->errors, (unsigned long long)r->push_retries,
                (double)r->sleep_ns / 1e6, (unsigned long long)r->reclaims);
    }
    fprintf(f, "%s]\n}\n", nres ? "\n  " : "");
    if (f != stdout && fclose(f) != 0) {
        ERR("cannot write JSON file %s: %s", o->json, strerror(errno));
        return -1;
    }
    if (f == stdout)
        fflush(stdout);
    return 0;
}
