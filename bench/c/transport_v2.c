/*
 * transport_v2.c - cxl-ring-bench over the proof of concept's layout 2
 * (docs/ring-protocol.md section 10), which the cxl_ring driver speaks
 * with `layout v2`: magic CXLSHM1, up to 8 rings of fixed 4096-byte slots,
 * GET and SET only, responses matched by order.
 *
 * Layout v2 has no sessions and no liveness fields: a thread takes ring
 * `index` for itself (process-local), and a dead server shows up only as
 * missing responses (the benchmark loop's stall timeout). Each field the
 * server writes is still read once and validated.
 *
 * Ring header: +0 u64 head (producer count), +8 u64 tail (consumer count),
 * slots from +16; slot k at +16 + (k mod slots) * 4096.
 */
#include "bench.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Request payload: u8 op, u8 key_len, u16 val_len, key, value. */
#define V2_REQ_FIXED    4u
/* Response payload: u8 status, u16 val_len, value. */
#define V2_RESP_FIXED   3u

struct v2_ring {
    volatile uint64_t *khead;       /* shared: producer count */
    volatile uint64_t *ktail;       /* shared: consumer count */
    uint8_t *slots;
    uint64_t nslots;
};

struct bench_conn {
    uint32_t ring;
    uint32_t client_id;
    struct v2_ring req;             /* we produce */
    struct v2_ring resp;            /* we consume */
    uint64_t req_head, req_tail_seen;
    uint64_t resp_tail, resp_head_seen, resp_tail_published;
    uint8_t payload[CXL_V2_MAX_PAYLOAD];
    char err[256];
};

static struct cxl_region region;
static uint32_t ring_count;
static struct cxl_v2_ring_desc rings[CXL_V2_MAX_RINGS];
static int ring_taken[CXL_V2_MAX_RINGS];
static uint32_t claim_timeout_ms;

#define ERR(...) do { if (err && errlen) snprintf(err, errlen, __VA_ARGS__); } while (0)

static int v2_open(const struct bench_opts *o, char *err, size_t errlen)
{
    const struct cxl_v2_header *h;
    uint64_t magic, want_v2, want_v5;
    uint32_t version, i;
    char why[256];

    if (o->value_size > CXL_V2_MAX_PAYLOAD - V2_REQ_FIXED - BENCH_KEY_LEN) {
        ERR("--value-size %u does not fit a layout v2 slot (at most %u bytes)", o->value_size,
            (unsigned)(CXL_V2_MAX_PAYLOAD - V2_REQ_FIXED - BENCH_KEY_LEN));
        return EXIT_USAGE;
    }
    if (cxl_region_map(o->path, o->map_size, 0, &region, why, sizeof(why)) < 0) {
        ERR("%s", why);
        return EXIT_NO_REGION;
    }
    h = (const struct cxl_v2_header *)region.base;
    magic = cxl_load_acquire64((const volatile uint64_t *)(const void *)h->magic);
    memcpy(&want_v2, CXL_V2_MAGIC, 8);
    memcpy(&want_v5, CXL_MAGIC, 8);
    if (magic != want_v2) {
        if (magic == want_v5)
            ERR("%s holds layout v5 (magic CXLDSMR), not the PoC layout v2; run without "
                "--layout v2", o->path);
        else if (magic == 0)
            ERR("region %s is not formatted: is a cxl_ring server with `layout v2` running "
                "on it?", o->path);
        else
            ERR("%s: unknown magic; not a cxl_ring region", o->path);
        cxl_region_unmap(&region);
        return magic == 0 ? EXIT_NO_REGION : EXIT_LAYOUT;
    }
    version = cxl_load_relaxed32(&h->version);
    ring_count = cxl_load_relaxed32(&h->ring_count);
    if (version != CXL_V2_VERSION || ring_count < 1 || ring_count > CXL_V2_MAX_RINGS) {
        ERR("%s: PoC header with version %u and %u rings; this client speaks version 2 "
            "with 1..%u rings", o->path, version, ring_count, CXL_V2_MAX_RINGS);
        cxl_region_unmap(&region);
        return EXIT_LAYOUT;
    }
    for (i = 0; i < ring_count; i++) {
        struct cxl_v2_ring_desc *d = &rings[i];

        d->req_off = cxl_load_relaxed64(&h->ring[i].req_off);
        d->req_sz = cxl_load_relaxed64(&h->ring[i].req_sz);
        d->resp_off = cxl_load_relaxed64(&h->ring[i].resp_off);
        d->resp_sz = cxl_load_relaxed64(&h->ring[i].resp_sz);
        if (d->req_sz != d->resp_sz || d->req_sz < CXL_V2_RING_HDR + CXL_V2_SLOT_SIZE ||
            d->req_off % 8 || d->resp_off % 8 ||
            d->req_off > region.size || d->req_sz > region.size - d->req_off ||
            d->resp_off > region.size || d->resp_sz > region.size - d->resp_off ||
            d->req_off < sizeof(struct cxl_v2_header) ||
            d->resp_off < sizeof(struct cxl_v2_header)) {
            ERR("%s: ring %u has an invalid geometry (req %" PRIu64 "+%" PRIu64 ", resp %"
                PRIu64 "+%" PRIu64 ", mapped %" PRIu64 ")", o->path, i, d->req_off,
                d->req_sz, d->resp_off, d->resp_sz, region.size);
            cxl_region_unmap(&region);
            return EXIT_LAYOUT;
        }
    }
    claim_timeout_ms = o->claim_timeout_ms;
    return EXIT_OK_BENCH;
}

static void v2_close(void)
{
    cxl_region_unmap(&region);
}

static uint32_t v2_lanes(void)
{
    return ring_count;
}

static void ring_view(struct v2_ring *r, uint64_t off, uint64_t sz)
{
    uint8_t *base = (uint8_t *)region.base + off;

    r->khead = (volatile uint64_t *)(void *)base;
    r->ktail = (volatile uint64_t *)(void *)(base + 8);
    r->slots = base + CXL_V2_RING_HDR;
    r->nslots = (sz - CXL_V2_RING_HDR) / CXL_V2_SLOT_SIZE;
}

static int v2_attach(uint32_t index, struct bench_conn **out, char *err, size_t errlen)
{
    struct bench_conn *c;
    uint64_t deadline;

    if (index >= ring_count) {
        ERR("thread %u has no ring: the region has %u rings and this client gives each "
            "thread its own (lower --threads or raise the driver's v2_rings)", index,
            ring_count);
        return CXL_E_NO_CHANNEL;
    }
    if (__atomic_exchange_n(&ring_taken[index], 1, __ATOMIC_ACQ_REL)) {
        ERR("ring %u is already in use by this process", index);
        return CXL_E_NO_CHANNEL;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        ERR("out of memory");
        return CXL_E_OPEN;
    }
    c->ring = index;
    c->client_id = index + 1;
    ring_view(&c->req, rings[index].req_off, rings[index].req_sz);
    ring_view(&c->resp, rings[index].resp_off, rings[index].resp_sz);

    /* Requests a previous client left must be consumed before we start. */
    c->req_head = cxl_load_relaxed64(c->req.khead);
    deadline = cxl_now_ns() + (uint64_t)claim_timeout_ms * 1000000ull;
    for (;;) {
        c->req_tail_seen = cxl_load_acquire64(c->req.ktail);
        if (c->req_tail_seen == c->req_head)
            break;
        if (c->req_head - c->req_tail_seen > c->req.nslots || cxl_now_ns() > deadline) {
            ERR("ring %u still holds %" PRIu64 " unconsumed requests from a previous client "
                "(is the server running?)", index, c->req_head - c->req_tail_seen);
            ring_taken[index] = 0;
            free(c);
            return CXL_E_TIMEOUT;
        }
        cxl_cpu_relax();
    }
    /* Skip responses nobody collected. */
    c->resp_head_seen = cxl_load_acquire64(c->resp.khead);
    c->resp_tail = c->resp_head_seen;
    c->resp_tail_published = c->resp_tail;
    cxl_store_release64(c->resp.ktail, c->resp_tail);
    *out = c;
    return CXL_OK;
}

static void v2_detach(struct bench_conn *c)
{
    ring_taken[c->ring] = 0;
    free(c);
}

static int v2_push(struct bench_conn *c, int op, uint64_t id, const uint8_t *key,
                   uint32_t key_len, const uint8_t *val, uint32_t val_len)
{
    struct cxl_v2_slot_hdr hdr;
    uint8_t *slot;
    uint16_t vl = op == OP_GET ? 0 : (uint16_t)val_len;
    uint32_t len = V2_REQ_FIXED + key_len + vl;

    (void)id;                       /* layout v2 matches responses by order only */
    if (c->req_head - c->req_tail_seen >= c->req.nslots) {
        uint64_t tail = cxl_load_acquire64(c->req.ktail);   /* P0 */

        if (tail - c->req_tail_seen > c->req_head - c->req_tail_seen) {
            snprintf(c->err, sizeof(c->err), "ring %u: server tail %" PRIu64 " outside [%"
                     PRIu64 ", %" PRIu64 "]", c->ring, tail, c->req_tail_seen, c->req_head);
            return CXL_E_CORRUPT;
        }
        c->req_tail_seen = tail;
        if (c->req_head - tail >= c->req.nslots)
            return CXL_E_AGAIN;
    }
    slot = c->req.slots + (c->req_head % c->req.nslots) * CXL_V2_SLOT_SIZE;
    hdr.client_id = c->client_id;
    hdr.type = CXL_V2_TYPE_DATA;
    hdr.flags = 0;
    hdr.len = len;
    hdr.reserved = 0;
    memcpy(slot, &hdr, sizeof(hdr));
    slot[CXL_V2_SLOT_HDR + 0] = op == OP_GET ? CXL_V2_OP_GET : CXL_V2_OP_SET;
    slot[CXL_V2_SLOT_HDR + 1] = (uint8_t)key_len;
    memcpy(slot + CXL_V2_SLOT_HDR + 2, &vl, 2);
    memcpy(slot + CXL_V2_SLOT_HDR + V2_REQ_FIXED, key, key_len);
    if (vl)
        memcpy(slot + CXL_V2_SLOT_HDR + V2_REQ_FIXED + key_len, val, vl);
    c->req_head++;
    return CXL_OK;
}

static void v2_flush(struct bench_conn *c)
{
    cxl_store_release64(c->req.khead, c->req_head);  /* P1 */
}

static int v2_pop(struct bench_conn *c, struct bench_reply *r)
{
    struct cxl_v2_slot_hdr hdr;
    const uint8_t *slot;
    uint16_t vl;

    if (c->resp_tail == c->resp_head_seen) {
        uint64_t head = cxl_load_acquire64(c->resp.khead);  /* C1 */

        if (head == c->resp_head_seen)
            return CXL_E_AGAIN;
        if (head - c->resp_tail > c->resp.nslots) {
            snprintf(c->err, sizeof(c->err), "ring %u: response head %" PRIu64 " is more "
                     "than %" PRIu64 " slots past our tail %" PRIu64, c->ring, head,
                     c->resp.nslots, c->resp_tail);
            return CXL_E_CORRUPT;
        }
        c->resp_head_seen = head;
    }
    slot = c->resp.slots + (c->resp_tail % c->resp.nslots) * CXL_V2_SLOT_SIZE;
    memcpy(&hdr, slot, sizeof(hdr));                           /* header once */
    if (hdr.type != CXL_V2_TYPE_DATA || hdr.len < V2_RESP_FIXED ||
        hdr.len > CXL_V2_MAX_PAYLOAD) {
        snprintf(c->err, sizeof(c->err), "ring %u: response slot with type %u, length %u",
                 c->ring, hdr.type, hdr.len);
        return CXL_E_CORRUPT;
    }
    memcpy(c->payload, slot + CXL_V2_SLOT_HDR, hdr.len);       /* payload once */
    memcpy(&vl, c->payload + 1, 2);
    if (vl > hdr.len - V2_RESP_FIXED || c->payload[0] > CXL_V2_ST_ERR) {
        snprintf(c->err, sizeof(c->err), "ring %u: response status %u with %u value bytes "
                 "in a %u-byte payload", c->ring, c->payload[0], vl, hdr.len);
        return CXL_E_CORRUPT;
    }
    c->resp_tail++;
    r->has_id = 0;
    r->id = 0;
    r->status = c->payload[0] == CXL_V2_ST_OK ? CXL_ST_OK
              : c->payload[0] == CXL_V2_ST_MISS ? CXL_ST_NOT_FOUND : CXL_ST_ERR;
    r->value_len = vl;
    r->text = c->payload + V2_RESP_FIXED;
    r->text_len = vl;
    return CXL_OK;
}

static void v2_pop_done(struct bench_conn *c)
{
    if (c->resp_tail != c->resp_tail_published) {
        cxl_store_release64(c->resp.ktail, c->resp_tail);   /* C2 */
        c->resp_tail_published = c->resp_tail;
    }
}

static int v2_check(struct bench_conn *c)
{
    (void)c;
    return CXL_OK;                  /* layout v2 has no liveness fields */
}

static const char *v2_error(struct bench_conn *c)
{
    return c->err;
}

const struct transport transport_v2 = {
    .name = "v2",
    .open = v2_open,
    .close = v2_close,
    .lanes = v2_lanes,
    .attach = v2_attach,
    .detach = v2_detach,
    .push = v2_push,
    .flush = v2_flush,
    .pop = v2_pop,
    .pop_done = v2_pop_done,
    .check = v2_check,
    .error = v2_error,
};
