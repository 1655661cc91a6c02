/*
 * hist.c - latency histogram for cxl-ring-bench.
 *
 * Log-linear buckets: exact below 64 ns, then 64 sub-buckets per power of
 * two, so a quantile is within 1.6 % of the true value (reported at the
 * bucket middle) while memory stays fixed (30 KiB) whatever the run length.
 */
#include "bench.h"

#include <string.h>

static unsigned bucket_of(uint64_t ns)
{
    unsigned e;

    if (ns < HIST_SUB)
        return (unsigned)ns;
    e = 63u - (unsigned)__builtin_clzll(ns);              /* e >= HIST_SUB_BITS */
    return HIST_SUB + (e - HIST_SUB_BITS) * HIST_SUB +
           (unsigned)((ns >> (e - HIST_SUB_BITS)) - HIST_SUB);
}

static double bucket_mid_ns(unsigned idx)
{
    unsigned k, e, sub;
    double low, width;

    if (idx < HIST_SUB)
        return idx;
    k = idx - HIST_SUB;
    e = k / HIST_SUB + HIST_SUB_BITS;
    sub = k % HIST_SUB;
    width = (double)(1ull << (e - HIST_SUB_BITS));
    low = (double)(HIST_SUB + sub) * width;
    return low + width / 2;
}

void hist_add(struct hist *h, uint64_t ns)
{
    h->count++;
    h->sum_ns += ns;
    if (ns > h->max_ns)
        h->max_ns = ns;
    h->bucket[bucket_of(ns)]++;
}

void hist_merge(struct hist *into, const struct hist *from)
{
    unsigned i;

    into->count += from->count;
    into->sum_ns += from->sum_ns;
    if (from->max_ns > into->max_ns)
        into->max_ns = from->max_ns;
    for (i = 0; i < HIST_BUCKETS; i++)
        into->bucket[i] += from->bucket[i];
}

/* The q-quantile (0 < q <= 1) in microseconds; 0 for an empty histogram. */
double hist_quantile_us(const struct hist *h, double q)
{
    uint64_t rank, seen = 0;
    unsigned i;

    if (!h->count)
        return 0;
    rank = (uint64_t)(q * (double)h->count + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > h->count)
        rank = h->count;
    for (i = 0; i < HIST_BUCKETS; i++) {
        seen += h->bucket[i];
        if (seen >= rank) {
            double ns = bucket_mid_ns(i);
            if (ns > (double)h->max_ns)
                ns = (double)h->max_ns;
            return ns / 1000.0;
        }
    }
    return (double)h->max_ns / 1000.0;
}
