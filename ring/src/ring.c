/*
 * ring.c - region geometry, header validation, request codec and region
 * mapping for the cxl_ring protocol (docs/ring-protocol.md).
 */
#define _GNU_SOURCE
#include "cxl_ring/ring.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define ERR(...) do { if (err && errlen) snprintf(err, errlen, __VA_ARGS__); } while (0)

static int is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

/* ---- Geometry ----------------------------------------------------------- */

/* The segment table and the channel -> group map, by cxl_layout_plan(). */
static int place_segments(struct cxl_geometry *g, const uint32_t *groups, char *err,
                          size_t errlen)
{
    uint32_t k, c;

    g->client_section_size = CXL_CONTROL_SIZE + (uint64_t)g->req_ring_size;
    g->server_section_size = CXL_CONTROL_SIZE + (uint64_t)g->resp_ring_size;
    g->segment_count = 1 + 2 * g->group_count;
    g->region_size = cxl_layout_plan(groups, g->group_count, g->req_ring_size,
                                     g->resp_ring_size, g->segment_align, g->seg);
    if (!g->region_size) {
        ERR("cannot place %u channel groups (%u channels, segment_align %u)",
            g->group_count, g->channel_count, g->segment_align);
        return -1;
    }
    for (k = 0; k < g->group_count; k++) {
        const struct cxl_segment_plan *sp = &g->seg[cxl_client_segment(k)];

        for (c = sp->first_channel; c < (uint32_t)sp->first_channel + sp->channel_count; c++)
            g->chan_group[c] = (uint8_t)k;
    }
    return 0;
}

int cxl_geometry_from_params(const struct cxl_params *p, struct cxl_geometry *g,
                             char *err, size_t errlen)
{
    memset(g, 0, sizeof(*g));
    g->channel_count = p->channels ? p->channels : CXL_DEFAULT_CHANNELS;
    g->req_ring_size = p->req_ring_size ? p->req_ring_size : CXL_DEFAULT_RING_SIZE;
    g->resp_ring_size = p->resp_ring_size ? p->resp_ring_size : CXL_DEFAULT_RING_SIZE;
    g->max_value_size = p->max_value_size ? p->max_value_size : CXL_DEFAULT_MAX_VALUE;
    g->heartbeat_interval_ms = p->heartbeat_interval_ms ? p->heartbeat_interval_ms
                                                        : CXL_DEFAULT_HEARTBEAT_MS;
    g->client_lease_ms = p->client_lease_ms ? p->client_lease_ms : CXL_DEFAULT_CLIENT_LEASE_MS;

    g->segment_align = p->segment_align ? p->segment_align : CXL_PAGE_SIZE;
    g->group_count = p->group_count ? p->group_count : 1;

    if (g->group_count > CXL_MAX_GROUPS) {
        ERR("groups must be 1..%u channel groups, not %u", CXL_MAX_GROUPS, g->group_count);
        return -1;
    }
    if (p->group_count) {
        uint64_t sum = 0;
        uint32_t i;

        for (i = 0; i < p->group_count; i++) {
            if (!p->groups[i]) {
                ERR("channel group %u has no channel; every group needs at least one", i);
                return -1;
            }
            sum += p->groups[i];
        }
        if (p->channels && p->channels != sum) {
            ERR("channels %u differs from the sum of the groups' channels (%" PRIu64 "); "
                "give one of them, or make them agree", p->channels, sum);
            return -1;
        }
        g->channel_count = sum > UINT32_MAX ? UINT32_MAX : (uint32_t)sum;
    }
    if (!g->channel_count || g->channel_count > CXL_MAX_CHANNELS) {
        ERR("channels must be 1..%u, not %u", CXL_MAX_CHANNELS, g->channel_count);
        return -1;
    }
    if (!is_pow2(g->segment_align) || g->segment_align < CXL_PAGE_SIZE) {
        ERR("segment_align must be a power of two of at least %u bytes, not %u",
            CXL_PAGE_SIZE, g->segment_align);
        return -1;
    }
    if (!is_pow2(g->req_ring_size) || !is_pow2(g->resp_ring_size) ||
        g->req_ring_size < CXL_MIN_RING_SIZE || g->resp_ring_size < CXL_MIN_RING_SIZE ||
        g->req_ring_size > CXL_MAX_RING_SIZE || g->resp_ring_size > CXL_MAX_RING_SIZE) {
        ERR("ring sizes must be powers of two from %u to %u bytes (req %u, resp %u)",
            CXL_MIN_RING_SIZE, CXL_MAX_RING_SIZE, g->req_ring_size, g->resp_ring_size);
        return -1;
    }
    if (!p->max_msg_size && (uint64_t)g->max_value_size + CXL_MSG_SLACK > UINT32_MAX) {
        ERR("max_value %u is too large", g->max_value_size);
        return -1;
    }
    g->max_msg_size = p->max_msg_size ? p->max_msg_size : g->max_value_size + CXL_MSG_SLACK;
    if (g->max_msg_size < CXL_MSG_HDR_SIZE) {
        ERR("max_msg_size %u is smaller than a message header", g->max_msg_size);
        return -1;
    }
    if (g->max_msg_size > g->req_ring_size || g->max_msg_size > g->resp_ring_size) {
        ERR("rings (req %u, resp %u bytes) must hold the largest message (%u bytes = "
            "max_value %u + %u); raise req_ring/resp_ring or lower max_value",
            g->req_ring_size, g->resp_ring_size, g->max_msg_size, g->max_value_size,
            CXL_MSG_SLACK);
        return -1;
    }
    if (g->heartbeat_interval_ms > 60000 || g->client_lease_ms < 100 ||
        g->client_lease_ms > 3600000) {
        ERR("heartbeat_ms must be 1..60000 and client_lease_ms 100..3600000 (got %u, %u)",
            g->heartbeat_interval_ms, g->client_lease_ms);
        return -1;
    }
    return place_segments(g, p->group_count ? p->groups : &g->channel_count, err, errlen);
}

void cxl_header_write_geometry(struct cxl_shm_header *h, const struct cxl_geometry *g)
{
    uint32_t k;

    h->version = CXL_LAYOUT_VERSION;
    h->header_size = CXL_HEADER_SIZE;
    h->feature_flags = 0;
    h->channel_count = g->channel_count;
    h->region_size = g->region_size;
    h->group_count = g->group_count;
    h->segment_count = g->segment_count;
    h->segment_align = g->segment_align;
    h->reserved_g = 0;
    h->client_section_size = g->client_section_size;
    h->server_section_size = g->server_section_size;
    h->req_ring_size = g->req_ring_size;
    h->resp_ring_size = g->resp_ring_size;
    h->max_msg_size = g->max_msg_size;
    h->max_value_size = g->max_value_size;
    h->heartbeat_interval_ms = g->heartbeat_interval_ms;
    h->client_lease_ms = g->client_lease_ms;
    for (k = 0; k < g->segment_count; k++) {
        struct cxl_shm_segment *e = &h->segments[k];
        const struct cxl_segment_plan *sp = &g->seg[k];

        e->offset = sp->offset;
        e->size = sp->size;
        e->span = sp->span;
        e->kind = sp->kind;
        e->reserved = 0;
        e->group = sp->group;
        e->first_channel = sp->first_channel;
        e->channel_count = sp->channel_count;
    }
}

void cxl_header_publish_magic(struct cxl_shm_header *h)
{
    uint64_t magic;

    memcpy(&magic, CXL_MAGIC, CXL_MAGIC_LEN);
    /* F1: the geometry above becomes visible no later than the magic; pairs with F2. */
    cxl_store_release64((volatile uint64_t *)(void *)h->magic, magic);
}

static const char *kind_name(uint8_t kind)
{
    return kind == CXL_SEG_HEADER ? "header" : kind == CXL_SEG_CLIENT ? "client"
         : kind == CXL_SEG_SERVER ? "server" : "unknown";
}

/*
 * Every check names the field it fails on (the shared vectors,
 * tests/vectors/layout5.json, name the same fields). Header fields that stand
 * alone first, then the segment table entry by entry, then the totals.
 */
int cxl_header_read(const struct cxl_shm_header *h, uint64_t map_size,
                    struct cxl_geometry *g, char *err, size_t errlen)
{
    struct cxl_shm_header copy;         /* the header, read once */
    uint64_t magic, want, end = 0;
    struct cxl_params p;
    struct cxl_geometry expect;
    uint32_t k, first = 0, align;
    char why[200] = "";

    /* F2: read the magic first; pairs with F1. */
    magic = cxl_load_acquire64((const volatile uint64_t *)(const void *)h->magic);
    memcpy(&want, CXL_MAGIC, CXL_MAGIC_LEN);
    /* One copy of everything after the magic; every check below reads the copy. */
    memcpy((uint8_t *)&copy + CXL_MAGIC_LEN, (const uint8_t *)h + CXL_MAGIC_LEN,
           CXL_HEADER_SIZE - CXL_MAGIC_LEN);
    memcpy(copy.magic, &magic, CXL_MAGIC_LEN);
    if (magic == 0)
        return 1;                       /* never formatted, or being formatted (F1 last) */
    if (magic != want) {
        if (!memcmp(copy.magic, CXL_V2_MAGIC, sizeof(CXL_V2_MAGIC)))
            ERR("region holds the PoC layout v2 (magic CXLSHM1), not layout %u; "
                "use layout v2 or reformat", CXL_LAYOUT_VERSION);
        else
            ERR("region header has an unknown magic; not a cxl_ring region");
        return -1;
    }
#define BAD(...) do { ERR(__VA_ARGS__); return -1; } while (0)
    if (copy.version != CXL_LAYOUT_VERSION)
        BAD("region has layout version %u; this build speaks version %u", copy.version,
            CXL_LAYOUT_VERSION);
    if (copy.header_size != CXL_HEADER_SIZE)
        BAD("region header_size is %u, not %u", copy.header_size, CXL_HEADER_SIZE);
    if (copy.channel_count < 1 || copy.channel_count > CXL_MAX_CHANNELS)
        BAD("region channel_count is %u, not 1..%u", copy.channel_count, CXL_MAX_CHANNELS);
    if (copy.group_count < 1 || copy.group_count > CXL_MAX_GROUPS)
        BAD("region group_count is %u, not 1..%u", copy.group_count, CXL_MAX_GROUPS);
    if (copy.segment_count != 1 + 2 * copy.group_count)
        BAD("region segment_count is %u, not 1 + 2 x %u groups", copy.segment_count,
            copy.group_count);
    align = copy.segment_align;
    if (!is_pow2(align) || align < CXL_PAGE_SIZE)
        BAD("region segment_align %u is not a power of two >= %u", align, CXL_PAGE_SIZE);
    if (!is_pow2(copy.req_ring_size) || copy.req_ring_size < CXL_MIN_RING_SIZE ||
        copy.req_ring_size > CXL_MAX_RING_SIZE)
        BAD("region req_ring_size %u is not a power of two in %u..2^30", copy.req_ring_size,
            CXL_MIN_RING_SIZE);
    if (!is_pow2(copy.resp_ring_size) || copy.resp_ring_size < CXL_MIN_RING_SIZE ||
        copy.resp_ring_size > CXL_MAX_RING_SIZE)
        BAD("region resp_ring_size %u is not a power of two in %u..2^30", copy.resp_ring_size,
            CXL_MIN_RING_SIZE);
    if (copy.client_section_size != CXL_CONTROL_SIZE + (uint64_t)copy.req_ring_size)
        BAD("region client_section_size %" PRIu64 " is not %u + req_ring_size",
            copy.client_section_size, CXL_CONTROL_SIZE);
    if (copy.server_section_size != CXL_CONTROL_SIZE + (uint64_t)copy.resp_ring_size)
        BAD("region server_section_size %" PRIu64 " is not %u + resp_ring_size",
            copy.server_section_size, CXL_CONTROL_SIZE);
    if (!copy.max_value_size)
        BAD("region max_value_size is 0");
    if (copy.max_msg_size < CXL_MSG_HDR_SIZE || copy.max_msg_size > copy.req_ring_size ||
        copy.max_msg_size > copy.resp_ring_size)
        BAD("region max_msg_size %u is not %u..the smaller ring (%u, %u)", copy.max_msg_size,
            CXL_MSG_HDR_SIZE, copy.req_ring_size, copy.resp_ring_size);
    if (!copy.heartbeat_interval_ms || copy.heartbeat_interval_ms > 60000)
        BAD("region heartbeat_interval_ms %u is not 1..60000", copy.heartbeat_interval_ms);
    if (copy.client_lease_ms < 100 || copy.client_lease_ms > 3600000)
        BAD("region client_lease_ms %u is not 100..3600000", copy.client_lease_ms);

    /* The segment table: kind and group by index, the groups cover the channels in order,
     * every size, span and offset by the rule (section 2). */
    for (k = 0; k < copy.segment_count; k++) {
        const struct cxl_shm_segment *e = &copy.segments[k];
        uint8_t kind = k == 0 ? CXL_SEG_HEADER : (k % 2) ? CXL_SEG_CLIENT : CXL_SEG_SERVER;
        uint16_t group = k == 0 ? CXL_GROUP_NONE : (uint16_t)((k - 1) / 2);
        uint64_t size, span;

        if (e->kind != kind)
            BAD("region segment table entry %u: kind %u (%s), not %u (%s)", k, e->kind,
                kind_name(e->kind), kind, kind_name(kind));
        if (e->group != group)
            BAD("region segment table entry %u: group %u, not %u", k, e->group, group);
        if (e->reserved)
            BAD("region segment table entry %u: reserved byte %u, not 0", k, e->reserved);
        if (kind == CXL_SEG_HEADER) {
            if (e->first_channel || e->channel_count)
                BAD("region segment table entry 0 (header): first_channel %u channel_count "
                    "%u, not 0 0", e->first_channel, e->channel_count);
            size = CXL_HEADER_SIZE;
        } else {
            if (e->first_channel != first)
                BAD("region segment table entry %u: first_channel %u, not %u (the groups "
                    "cover the channels in order)", k, e->first_channel, first);
            if (kind == CXL_SEG_CLIENT && (e->channel_count < 1 ||
                                           first + e->channel_count > CXL_MAX_CHANNELS))
                BAD("region segment table entry %u: channel_count %u, not 1..%u", k,
                    e->channel_count, CXL_MAX_CHANNELS - first);
            if (kind == CXL_SEG_SERVER &&
                e->channel_count != copy.segments[k - 1].channel_count)
                BAD("region segment table entry %u: channel_count %u differs from its "
                    "client segment's %u", k, e->channel_count,
                    copy.segments[k - 1].channel_count);
            size = (uint64_t)e->channel_count * (kind == CXL_SEG_CLIENT ?
                    copy.client_section_size : copy.server_section_size);
            if (kind == CXL_SEG_SERVER)
                first += e->channel_count;
        }
        span = cxl_pow2_ceil(size);
        if (span < align)
            span = align;
        if (e->size != size)
            BAD("region segment table entry %u: size %" PRIu64 ", not %" PRIu64, k, e->size,
                size);
        if (e->span != span)
            BAD("region segment table entry %u: span %" PRIu64 ", not %" PRIu64, k, e->span,
                span);
        if (e->offset != end)
            BAD("region segment table entry %u: offset %" PRIu64 ", not %" PRIu64, k,
                e->offset, end);
        end += span;
    }
    if (copy.channel_count != first)
        BAD("region channel_count %u is not the sum of the groups' channels (%u)",
            copy.channel_count, first);
    if (copy.region_size != end)
        BAD("region region_size %" PRIu64 " is not the end of the last span (%" PRIu64 ")",
            copy.region_size, end);
#undef BAD

    /* The same geometry as the rule computes it (and the channel -> group map). */
    memset(&p, 0, sizeof(p));
    p.channels = copy.channel_count;
    p.req_ring_size = copy.req_ring_size;
    p.resp_ring_size = copy.resp_ring_size;
    p.max_value_size = copy.max_value_size;
    p.heartbeat_interval_ms = copy.heartbeat_interval_ms;
    p.client_lease_ms = copy.client_lease_ms;
    p.segment_align = align;
    p.max_msg_size = copy.max_msg_size;
    p.group_count = copy.group_count;
    for (k = 0; k < copy.group_count; k++)
        p.groups[k] = copy.segments[cxl_client_segment(k)].channel_count;
    if (cxl_geometry_from_params(&p, &expect, why, sizeof(why)) < 0 ||
        expect.region_size != copy.region_size) {
        ERR("region header geometry is invalid: %s", why);
        return -1;
    }
    if (map_size && expect.region_size > map_size) {
        ERR("region needs %" PRIu64 " bytes but only %" PRIu64 " are mapped",
            expect.region_size, map_size);
        return -1;
    }
    *g = expect;
    return 0;
}

int cxl_geometry_equal(const struct cxl_geometry *a, const struct cxl_geometry *b)
{
    uint32_t k;

    if (a->channel_count != b->channel_count || a->req_ring_size != b->req_ring_size ||
        a->resp_ring_size != b->resp_ring_size || a->max_value_size != b->max_value_size ||
        a->max_msg_size != b->max_msg_size ||
        a->heartbeat_interval_ms != b->heartbeat_interval_ms ||
        a->client_lease_ms != b->client_lease_ms || a->region_size != b->region_size ||
        a->group_count != b->group_count || a->segment_align != b->segment_align)
        return 0;
    for (k = 0; k < a->group_count; k++)
        if (a->seg[cxl_client_segment(k)].channel_count !=
            b->seg[cxl_client_segment(k)].channel_count)
            return 0;
    return 1;
}

/* ---- Rings ---------------------------------------------------------------- */

void cxl_ring_request(void *base, const struct cxl_geometry *g, uint32_t chan,
                      struct cxl_ring *r)
{
    struct cxl_shm_client_ctl *cc = cxl_client_ctl(base, g, chan);
    struct cxl_shm_server_ctl *sc = cxl_server_ctl(base, g, chan);

    r->data = (uint8_t *)cc + CXL_CONTROL_SIZE;
    r->size = g->req_ring_size;
    r->mask = r->size - 1;
    r->shm_head = &cc->req_head;
    r->shm_tail = &sc->req_tail;
}

void cxl_ring_response(void *base, const struct cxl_geometry *g, uint32_t chan,
                       struct cxl_ring *r)
{
    struct cxl_shm_client_ctl *cc = cxl_client_ctl(base, g, chan);
    struct cxl_shm_server_ctl *sc = cxl_server_ctl(base, g, chan);

    r->data = (uint8_t *)sc + CXL_CONTROL_SIZE;
    r->size = g->resp_ring_size;
    r->mask = r->size - 1;
    r->shm_head = &sc->resp_head;
    r->shm_tail = &cc->resp_tail;
}

/* ---- Codec ---------------------------------------------------------------- */

static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

int cxl_req_decode(const uint8_t *msg, uint32_t len, uint32_t max_value_size,
                   struct cxl_req *req, char *err, size_t errlen)
{
    struct cxl_msg_hdr hdr;
    uint32_t off, i;

    if (len < CXL_MSG_HDR_SIZE) {
        ERR("message of %u bytes is shorter than its header", len);
        return CXL_ST_BAD_REQUEST;
    }
    memcpy(&hdr, msg, sizeof(hdr));
    req->id = hdr.id;
    req->op = hdr.op;
    req->flags = hdr.flags;
    req->argc = hdr.argc;
    req->ttl_ms = 0;
    if (hdr.len != len) {
        ERR("header length %u does not match the message (%u bytes)", hdr.len, len);
        return CXL_ST_BAD_REQUEST;
    }
    if (hdr.op < CXL_OP_GET || hdr.op > CXL_OP_PING) {
        ERR("unknown op %u", hdr.op);
        return CXL_ST_UNKNOWN_OP;
    }
    if (hdr.flags & ~CXL_REQ_FLAGS_KNOWN) {
        ERR("unknown flags 0x%02x", hdr.flags);
        return CXL_ST_BAD_REQUEST;
    }
    if ((hdr.flags & CXL_FLAG_TTL) && hdr.op != CXL_OP_SET) {
        ERR("TTL flag on an op other than SET");
        return CXL_ST_BAD_REQUEST;
    }
    switch (hdr.op) {
    case CXL_OP_GET:  if (hdr.argc != 1) goto bad_argc; break;
    case CXL_OP_SET:  if (hdr.argc != 2) goto bad_argc; break;
    case CXL_OP_DEL:
    case CXL_OP_CMD:  if (hdr.argc < 1) goto bad_argc; break;
    case CXL_OP_PING: if (hdr.argc != 0) goto bad_argc; break;
    }
    if (hdr.argc > CXL_MAX_ARGS) {
        ERR("%u arguments; at most %u", hdr.argc, CXL_MAX_ARGS);
        return CXL_ST_TOO_LARGE;
    }
    off = CXL_MSG_HDR_SIZE;
    if (hdr.flags & CXL_FLAG_TTL) {
        if (len - off < CXL_TTL_SIZE) {
            ERR("message ends inside the TTL field");
            return CXL_ST_BAD_REQUEST;
        }
        req->ttl_ms = rd64(msg + off);
        off += CXL_TTL_SIZE;
        if (req->ttl_ms == 0 || req->ttl_ms > (uint64_t)INT64_MAX / 2) {
            ERR("TTL must be 1..2^62 milliseconds");
            return CXL_ST_BAD_REQUEST;
        }
    }
    for (i = 0; i < hdr.argc; i++) {
        uint32_t al;

        if (len - off < CXL_ARG_LEN_SIZE) {
            ERR("message ends inside the length of argument %u", i);
            return CXL_ST_BAD_REQUEST;
        }
        al = rd32(msg + off);
        off += CXL_ARG_LEN_SIZE;
        if (al > max_value_size) {
            ERR("argument %u is %u bytes; the limit is %u", i, al, max_value_size);
            return CXL_ST_TOO_LARGE;
        }
        if (al > len - off) {
            ERR("argument %u (%u bytes) runs past the end of the message", i, al);
            return CXL_ST_BAD_REQUEST;
        }
        req->argv[i] = msg + off;
        req->argl[i] = al;
        off += al;
    }
    if (off != len) {
        ERR("%u bytes after the last argument", len - off);
        return CXL_ST_BAD_REQUEST;
    }
    return CXL_ST_OK;

bad_argc:
    ERR("op %u does not take %u arguments", hdr.op, hdr.argc);
    return CXL_ST_BAD_REQUEST;
}

int cxl_frame_check(uint64_t used, uint64_t ring_size, uint32_t len, uint32_t max_msg_size,
                    const char **why)
{
    const char *w = NULL;

    if (used > ring_size)
        w = "req_head - req_tail exceeds the request ring size";
    else if (used < CXL_MSG_HDR_SIZE)
        w = "fewer published bytes than a message header";
    else if (len < CXL_MSG_HDR_SIZE)
        w = "message length is shorter than a message header";
    else if (cxl_align8(len) > used)
        w = "message length runs past the published bytes";
    if (w) {
        if (why)
            *why = w;
        return CXL_FRAME_QUARANTINE;
    }
    return len > max_msg_size ? CXL_FRAME_SKIP : CXL_FRAME_OK;
}

uint64_t cxl_req_size(uint32_t argc, const uint32_t *argl, int with_ttl)
{
    uint64_t n = CXL_MSG_HDR_SIZE + (with_ttl ? CXL_TTL_SIZE : 0);
    uint32_t i;

    for (i = 0; i < argc; i++)
        n += CXL_ARG_LEN_SIZE + (uint64_t)argl[i];
    return n;
}

uint32_t cxl_req_encode(uint8_t *buf, uint8_t op, uint8_t flags, uint64_t id, uint64_t ttl_ms,
                        uint32_t argc, const uint8_t *const *argv, const uint32_t *argl)
{
    struct cxl_msg_hdr hdr;
    uint32_t off = CXL_MSG_HDR_SIZE, i;

    if (flags & CXL_FLAG_TTL) {
        memcpy(buf + off, &ttl_ms, CXL_TTL_SIZE);
        off += CXL_TTL_SIZE;
    }
    for (i = 0; i < argc; i++) {
        memcpy(buf + off, &argl[i], CXL_ARG_LEN_SIZE);
        off += CXL_ARG_LEN_SIZE;
        if (argl[i])
            memcpy(buf + off, argv[i], argl[i]);
        off += argl[i];
    }
    hdr.len = off;
    hdr.op = op;
    hdr.flags = flags;
    hdr.argc = (uint16_t)argc;
    hdr.id = id;
    memcpy(buf, &hdr, sizeof(hdr));
    return off;
}

/* ---- Regions -------------------------------------------------------------- */

static int read_sysfs_u64(const char *path, uint64_t *out)
{
    FILE *f = fopen(path, "r");
    unsigned long long v;
    int ok;

    if (!f)
        return -1;
    ok = fscanf(f, "%llx", &v) == 1;
    fclose(f);
    if (!ok)
        return -1;
    *out = v;
    return 0;
}

/* uio: pick the largest map (BAR2 on ivshmem-plain is map1; BAR0 is 256 bytes). */
static int uio_pick_map(const char *dev, int *index, uint64_t *size)
{
    char path[PATH_MAX + 64], real[PATH_MAX];
    const char *name;
    int i, best = -1;
    uint64_t best_size = 0, s;

    if (realpath(dev, real))
        dev = real;                     /* a segment directory's symlink to /dev/uioN */
    name = strrchr(dev, '/');
    name = name ? name + 1 : dev;
    for (i = 0; i < 6; i++) {
        snprintf(path, sizeof(path), "/sys/class/uio/%s/maps/map%d/size", name, i);
        if (read_sysfs_u64(path, &s) == 0 && s > best_size) {
            best = i;
            best_size = s;
        }
    }
    if (best < 0)
        return -1;
    *index = best;
    *size = best_size;
    return 0;
}

/* /dev/uioN, or a symlink to it (a segment directory in a guest). */
static int is_uio(const char *path)
{
    char real[PATH_MAX];
    const char *name;

    if (!strncmp(path, "/dev/uio", 8))
        return 1;
    if (!realpath(path, real))
        return 0;
    name = strrchr(real, '/');
    return !strncmp(name ? name + 1 : real, "uio", 3);
}

/* A decimal or 0x number from a sysfs attribute. */
static int read_sysfs_num(const char *path, uint64_t *out)
{
    char buf[64], *end;
    FILE *f = fopen(path, "r");
    size_t n;

    if (!f)
        return -1;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    errno = 0;
    *out = strtoull(buf, &end, 0);
    return errno || end == buf ? -1 : 0;
}

/*
 * A device-DAX character device (/dev/daxN.M, e.g. a devdax namespace of an NVDIMM, or CXL
 * memory): its sysfs node's subsystem is "dax". Its size and mapping alignment come from
 * sysfs (fstat gives 0); every mapping must be a whole number of alignment units.
 */
static int dax_geometry(const struct stat *st, uint64_t *size, uint64_t *align)
{
    char path[96], link[PATH_MAX];
    const char *name;
    ssize_t n;

    snprintf(path, sizeof(path), "/sys/dev/char/%u:%u/subsystem", major(st->st_rdev),
             minor(st->st_rdev));
    n = readlink(path, link, sizeof(link) - 1);
    if (n <= 0)
        return 0;
    link[n] = 0;
    name = strrchr(link, '/');
    if (strcmp(name ? name + 1 : link, "dax"))
        return 0;
    snprintf(path, sizeof(path), "/sys/dev/char/%u:%u/size", major(st->st_rdev),
             minor(st->st_rdev));
    if (read_sysfs_num(path, size) < 0)
        *size = 0;
    snprintf(path, sizeof(path), "/sys/dev/char/%u:%u/align", major(st->st_rdev),
             minor(st->st_rdev));
    if (read_sysfs_num(path, align) < 0 || !*align)
        *align = CXL_DAX_ALIGN;     /* kernels before 5.10 have no align attribute */
    return 1;
}

/*
 * Open one region or segment file and find what to map: fd, the size to map
 * (map_size 0 = all of it) and the file offset (uio maps). open_flags is
 * O_RDWR or O_RDONLY (O_CREAT with create_size). errno-style failure: -1 with
 * a message and *err_no set, so that a caller can fall back to read-only.
 */
static int open_mappable(const char *what, const char *path, int open_flags,
                         uint64_t map_size, uint64_t create_size, int *fd_out, uint64_t *size_out,
                         off_t *offset_out, char *kind, size_t kindlen, int *err_no,
                         char *err, size_t errlen)
{
    struct stat st;
    off_t offset = 0;
    uint64_t dax_size = 0, dax_align = 0;
    int fd;

    *err_no = 0;
    fd = open(path, open_flags | O_CLOEXEC, 0600);
    if (fd < 0) {
        *err_no = errno;
        ERR("cannot open %s %s%s: %s", what, path, (open_flags & O_ACCMODE) == O_RDWR &&
            strcmp(what, "region") ? " read-write" : "", strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0) {
        ERR("cannot stat region %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (S_ISCHR(st.st_mode) && is_uio(path)) {
        int idx;
        uint64_t sz;

        if (uio_pick_map(path, &idx, &sz) < 0) {
            ERR("%s exposes no uio maps (is the ivshmem device bound to uio_pci_generic?)",
                path);
            close(fd);
            return -1;
        }
        if (sz < CXL_PAGE_SIZE * 2 && !create_size) {
            ERR("%s only exposes BAR0 (%" PRIu64 " bytes); map the sysfs resource2 file instead",
                path, sz);
            close(fd);
            return -1;
        }
        offset = (off_t)idx * getpagesize();    /* uio: map N is at offset N * page */
        if (!map_size)
            map_size = sz;
        snprintf(kind, kindlen, "uio");
    } else if (S_ISCHR(st.st_mode) && dax_geometry(&st, &dax_size, &dax_align)) {
        if (!dax_size) {
            ERR("%s is a device-DAX device of unknown size (no sysfs size)", path);
            close(fd);
            return -1;
        }
        if (!map_size)
            map_size = dax_size;
        if (map_size > dax_size || map_size % dax_align) {
            ERR("%s is a device-DAX device of %" PRIu64 " bytes mapped in units of %" PRIu64
                ": map size %" PRIu64 " must be a multiple of it, at most the device",
                path, dax_size, dax_align, map_size);
            close(fd);
            return -1;
        }
        /* A device aligned to more than a page faults in huge pages only; in a process
         * without transparent huge pages (Redis: disable-thp yes, its default) the first
         * access would be a SIGBUS, not an error. */
        if (dax_align > (uint64_t)getpagesize() && prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1) {
            ERR("%s is a device-DAX device mapped in %" PRIu64 "-byte pages, and this process "
                "has transparent huge pages disabled (prctl PR_SET_THP_DISABLE: Redis does it "
                "unless its config says disable-thp no): set disable-thp no", path, dax_align);
            close(fd);
            return -1;
        }
        snprintf(kind, kindlen, "devdax");
    } else if (S_ISREG(st.st_mode)) {
        if (create_size && (uint64_t)st.st_size < create_size) {
            if (ftruncate(fd, (off_t)create_size) < 0) {
                ERR("cannot size region %s to %" PRIu64 " bytes: %s", path, create_size,
                    strerror(errno));
                close(fd);
                return -1;
            }
            st.st_size = (off_t)create_size;
        }
        if (!map_size)
            map_size = (uint64_t)st.st_size & ~(uint64_t)(CXL_PAGE_SIZE - 1);
        /* sysfs resourceN files report the BAR size as their size */
        snprintf(kind, kindlen, strstr(path, "/resource") ? "resource" : "file");
        if (map_size > (uint64_t)st.st_size) {
            ERR("region %s is %" PRIu64 " bytes, smaller than map size %" PRIu64,
                path, (uint64_t)st.st_size, map_size);
            close(fd);
            return -1;
        }
    } else {
        ERR("%s is neither a file, a uio device nor a device-DAX device", path);
        close(fd);
        return -1;
    }
    *fd_out = fd;
    *size_out = map_size;
    *offset_out = offset;
    return 0;
}

static void region_init(struct cxl_region *rg)
{
    uint32_t k;

    memset(rg, 0, sizeof(*rg));
    rg->fd = -1;
    for (k = 0; k < CXL_MAX_SEGMENTS; k++)
        rg->seg[k].fd = -1;
}

int cxl_region_map(const char *path, uint64_t map_size, uint64_t create_size,
                   struct cxl_region *rg, char *err, size_t errlen)
{
    off_t offset;
    int fd, err_no;

    region_init(rg);
    if (open_mappable("region", path, O_RDWR | (create_size ? O_CREAT : 0), map_size,
                      create_size, &fd, &map_size, &offset, rg->kind, sizeof(rg->kind),
                      &err_no, err, errlen) < 0)
        return -1;
    if (map_size < CXL_HEADER_SIZE) {
        ERR("map size %" PRIu64 " is smaller than the region header", map_size);
        close(fd);
        return -1;
    }
    rg->base = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
    if (rg->base == MAP_FAILED) {
        ERR("cannot map %" PRIu64 " bytes of %s: %s", map_size, path, strerror(errno));
        rg->base = NULL;
        close(fd);
        return -1;
    }
    rg->size = map_size;
    rg->fd = fd;
    return 0;
}

int cxl_region_is_dir(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The file name of segment k in a directory region: header, client-<g>, server-<g>. */
static void segment_name(const struct cxl_segment_plan *sp, char *out, size_t outlen)
{
    if (sp->kind == CXL_SEG_HEADER)
        snprintf(out, outlen, "header");
    else
        snprintf(out, outlen, "%s-%u", sp->kind == CXL_SEG_CLIENT ? "client" : "server",
                 sp->group);
}

int cxl_region_map_dir(const char *dir, const struct cxl_geometry *geo, int role, int create,
                       struct cxl_region *rg, char *err, size_t errlen)
{
    uint64_t reserve, align = geo->segment_align;
    uint8_t *raw, *base;
    uint32_t k;

    region_init(rg);
    snprintf(rg->kind, sizeof(rg->kind), "dir");
    rg->is_dir = 1;
    /* The whole range with no access, aligned to segment_align (huge pages need it):
     * an absent segment stays PROT_NONE, never someone else's mapping. */
    reserve = geo->region_size + align;
    raw = mmap(NULL, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) {
        ERR("cannot reserve %" PRIu64 " bytes of address space for region %s: %s",
            geo->region_size, dir, strerror(errno));
        return -1;
    }
    base = (uint8_t *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
    if (base > raw)
        munmap(raw, (size_t)(base - raw));
    if (raw + reserve > base + geo->region_size)
        munmap(base + geo->region_size, (size_t)(raw + reserve - (base + geo->region_size)));
    rg->base = base;
    rg->size = geo->region_size;
    rg->nseg = geo->segment_count;

    for (k = 0; k < geo->segment_count; k++) {
        const struct cxl_segment_plan *sp = &geo->seg[k];
        struct cxl_region_segment *rs = &rg->seg[k];
        int server_writes = sp->kind != CXL_SEG_CLIENT;
        char name[32], path[512], kind[16], why[1024];
        uint64_t size = 0, create_size = 0;
        off_t offset;
        int fd, err_no, flags;
        struct stat st;
        void *at;

        segment_name(sp, name, sizeof(name));
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path)) {
            ERR("region directory path %s is longer than %zu bytes", dir, sizeof(path) - 32);
            goto fail;
        }
        rs->offset = sp->offset;
        if (role == CXL_ROLE_SERVER) {
            /* Missing or empty: created at span bytes in the existing directory. */
            if (create && (stat(path, &st) < 0 ? errno == ENOENT
                                                : (S_ISREG(st.st_mode) && st.st_size == 0)))
                create_size = sp->span;
            flags = server_writes ? O_RDWR : O_RDONLY;
            if (create_size) {
                int cfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

                if (cfd < 0 || ftruncate(cfd, (off_t)create_size) < 0) {
                    ERR("cannot create segment file %s (%" PRIu64 " bytes): %s", path,
                        create_size, strerror(errno));
                    if (cfd >= 0)
                        close(cfd);
                    goto fail;
                }
                close(cfd);
            }
            if (open_mappable("segment file", path, flags, 0, 0, &fd, &size, &offset, kind,
                              sizeof(kind), &err_no, why, sizeof(why)) < 0) {
                ERR("%s; the server needs %s %s (grant it to the server, or let the driver "
                    "create the segment files on one host)", why, name,
                    server_writes ? "read-write" : "readable");
                goto fail;
            }
            rs->access = server_writes ? CXL_ACCESS_RW : CXL_ACCESS_READ;
        } else {
            /* header and server-* read-only even where writable; client-* rw if we can */
            int opened;

            rs->access = server_writes ? CXL_ACCESS_READ : CXL_ACCESS_RW;
            opened = open_mappable("segment file", path, server_writes ? O_RDONLY : O_RDWR,
                                   0, 0, &fd, &size, &offset, kind, sizeof(kind), &err_no,
                                   why, sizeof(why)) == 0;
            if (!opened && !server_writes &&
                (err_no == EACCES || err_no == EROFS || err_no == EPERM)) {
                rs->access = CXL_ACCESS_READ;
                opened = open_mappable("segment file", path, O_RDONLY, 0, 0, &fd, &size,
                                       &offset, kind, sizeof(kind), &err_no, why,
                                       sizeof(why)) == 0;
            }
            if (!opened) {
                rs->access = CXL_ACCESS_NONE;
                if (err_no == ENOENT && sp->kind != CXL_SEG_HEADER)
                    continue;           /* not granted to this peer: stays unmapped */
                ERR("%s%s", why, sp->kind == CXL_SEG_HEADER ? "; every peer needs the "
                    "region's header segment readable" : "");
                goto fail;
            }
        }
        if (size < sp->size) {
            ERR("segment file %s is %" PRIu64 " bytes; layout %u needs at least %" PRIu64
                " (its span is %" PRIu64 ")", path, size, CXL_LAYOUT_VERSION, sp->size,
                sp->span);
            close(fd);
            rs->access = CXL_ACCESS_NONE;
            goto fail;
        }
        if (size > sp->span)
            size = sp->span;
        at = mmap(base + sp->offset, size, PROT_READ |
                  (rs->access & CXL_ACCESS_WRITE ? PROT_WRITE : 0), MAP_SHARED | MAP_FIXED,
                  fd, offset);
        if (at == MAP_FAILED) {
            ERR("cannot map segment file %s (%" PRIu64 " bytes at offset %" PRIu64 "): %s",
                path, size, sp->offset, strerror(errno));
            close(fd);
            rs->access = CXL_ACCESS_NONE;
            goto fail;
        }
        rs->fd = fd;
        rs->mapped = size;
    }
    return 0;

fail:
    cxl_region_unmap(rg);
    return -1;
}

void cxl_region_unmap(struct cxl_region *rg)
{
    uint32_t k;

    if (rg->base)
        munmap(rg->base, rg->size);     /* a directory's whole reservation, segments too */
    if (rg->fd >= 0)
        close(rg->fd);
    for (k = 0; k < rg->nseg; k++) {
        if (rg->seg[k].fd >= 0)
            close(rg->seg[k].fd);
        rg->seg[k].fd = -1;
        rg->seg[k].mapped = 0;
        rg->seg[k].access = CXL_ACCESS_NONE;
    }
    rg->base = NULL;
    rg->fd = -1;
}

unsigned cxl_region_access(const struct cxl_region *rg, uint64_t off, uint64_t len)
{
    uint32_t k;

    if (!rg->base || off > rg->size || len > rg->size - off)
        return CXL_ACCESS_NONE;
    if (!rg->is_dir)
        return CXL_ACCESS_RW;
    for (k = 0; k < rg->nseg; k++) {
        const struct cxl_region_segment *rs = &rg->seg[k];

        if (off >= rs->offset && off - rs->offset < rs->mapped)
            return len <= rs->mapped - (off - rs->offset) ? rs->access : CXL_ACCESS_NONE;
    }
    return CXL_ACCESS_NONE;
}

uint64_t cxl_random_u64(void)
{
    uint64_t v = 0;

    while (v == 0) {
        if (getrandom(&v, sizeof(v), 0) != sizeof(v))
            v = cxl_now_ns() ^ ((uint64_t)getpid() << 32);
    }
    return v;
}

void cxl_access_delay_spin(uint32_t ns)
{
    uint64_t until = cxl_now_ns() + ns;

    while (cxl_now_ns() < until)
        cxl_cpu_relax();
}

uint32_t cxl_header_access_delay(const struct cxl_shm_header *h)
{
    uint32_t ns = cxl_load_relaxed32(&h->access_delay_ns);

    /* The header is the server's; in a region of security off anyone may write it. */
    return ns > CXL_MAX_ACCESS_DELAY_NS ? CXL_MAX_ACCESS_DELAY_NS : ns;
}

uint64_t cxl_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define CXL_SYSFS_MAGIC 0x62656572

/* One mapped file: a regular file outside sysfs is memory of this kernel. */
static int fd_is_host_memory(int fd, const char *what, char *why, size_t whylen)
{
    struct stat st;
    struct statfs fs;

    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "%s is a device (uio or device DAX), not a file of this host",
                 what);
        return 0;
    }
    if (fstatfs(fd, &fs) == 0 && fs.f_type == CXL_SYSFS_MAGIC) {
        snprintf(why, whylen, "%s is a PCI resource file (a BAR: other peers are other "
                 "machines)", what);
        return 0;
    }
    return 1;
}

int cxl_region_host_memory(const struct cxl_region *rg, char *why, size_t whylen)
{
    uint32_t k;

    if (!rg->is_dir)
        return fd_is_host_memory(rg->fd, "the region", why, whylen);
    for (k = 0; k < rg->nseg; k++) {
        char what[48];

        if (!rg->seg[k].mapped)
            continue;
        snprintf(what, sizeof(what), "segment %u", k);
        if (!fd_is_host_memory(rg->seg[k].fd, what, why, whylen))
            return 0;
    }
    return 1;
}
