/*
 * ring.c - region geometry, header validation, request codec and region
 * mapping for the cxl_ring protocol (docs/ring-protocol.md).
 */
#define _GNU_SOURCE
#include "cxl_ring/ring.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ERR(...) do { if (err && errlen) snprintf(err, errlen, __VA_ARGS__); } while (0)

static int is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

/* ---- Geometry ----------------------------------------------------------- */

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

    if (g->channel_count > CXL_MAX_CHANNELS) {
        ERR("channels must be 1..%u, not %u", CXL_MAX_CHANNELS, g->channel_count);
        return -1;
    }
    if (!is_pow2(g->req_ring_size) || !is_pow2(g->resp_ring_size) ||
        g->req_ring_size < CXL_MIN_RING_SIZE || g->resp_ring_size < CXL_MIN_RING_SIZE ||
        g->req_ring_size > CXL_MAX_RING_SIZE || g->resp_ring_size > CXL_MAX_RING_SIZE) {
        ERR("ring sizes must be powers of two from %u to %u bytes (req %u, resp %u)",
            CXL_MIN_RING_SIZE, CXL_MAX_RING_SIZE, g->req_ring_size, g->resp_ring_size);
        return -1;
    }
    if ((uint64_t)g->max_value_size + CXL_MSG_SLACK > UINT32_MAX) {
        ERR("max_value %u is too large", g->max_value_size);
        return -1;
    }
    g->max_msg_size = g->max_value_size + CXL_MSG_SLACK;
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
    g->channel_table_off = CXL_HEADER_SIZE;
    g->client_section_size = CXL_CONTROL_SIZE + (uint64_t)g->req_ring_size;
    g->server_section_size = CXL_CONTROL_SIZE + (uint64_t)g->resp_ring_size;
    g->channel_stride = g->client_section_size + g->server_section_size;
    g->region_size = g->channel_table_off + (uint64_t)g->channel_count * g->channel_stride;
    return 0;
}

void cxl_header_write_geometry(struct cxl_shm_header *h, const struct cxl_geometry *g)
{
    h->version = CXL_LAYOUT_VERSION;
    h->header_size = CXL_HEADER_SIZE;
    h->feature_flags = 0;
    h->channel_count = g->channel_count;
    h->region_size = g->region_size;
    h->channel_table_off = g->channel_table_off;
    h->channel_stride = g->channel_stride;
    h->client_section_size = g->client_section_size;
    h->server_section_size = g->server_section_size;
    h->req_ring_size = g->req_ring_size;
    h->resp_ring_size = g->resp_ring_size;
    h->max_msg_size = g->max_msg_size;
    h->max_value_size = g->max_value_size;
    h->heartbeat_interval_ms = g->heartbeat_interval_ms;
    h->client_lease_ms = g->client_lease_ms;
}

void cxl_header_publish_magic(struct cxl_shm_header *h)
{
    uint64_t magic;

    memcpy(&magic, CXL_MAGIC, CXL_MAGIC_LEN);
    /* F1: the geometry above becomes visible no later than the magic; pairs with F2. */
    cxl_store_release64((volatile uint64_t *)(void *)h->magic, magic);
}

int cxl_header_read(const struct cxl_shm_header *h, uint64_t map_size,
                    struct cxl_geometry *g, char *err, size_t errlen)
{
    uint64_t magic, want;
    uint32_t version, header_size;
    struct cxl_params p;
    struct cxl_geometry expect;
    char why[200];

    /* F2: read the magic first; pairs with F1. */
    magic = cxl_load_acquire64((const volatile uint64_t *)(const void *)h->magic);
    memcpy(&want, CXL_MAGIC, CXL_MAGIC_LEN);
    if (magic != want) {
        const uint8_t *b = (const uint8_t *)h;
        uint64_t i;
        for (i = 0; i < CXL_HEADER_SIZE && i < map_size; i++)
            if (b[i])
                break;
        if (i == CXL_HEADER_SIZE || i == map_size)
            return 1;               /* all zeros: never formatted */
        if (!memcmp(h->magic, CXL_V2_MAGIC, sizeof(CXL_V2_MAGIC)))
            ERR("region holds the PoC layout v2 (magic CXLSHM1), not layout %u; "
                "use layout v2 or reformat", CXL_LAYOUT_VERSION);
        else
            ERR("region header has an unknown magic; not a cxl_ring region");
        return -1;
    }
    version = cxl_load_relaxed32(&h->version);
    header_size = cxl_load_relaxed32(&h->header_size);
    if (version != CXL_LAYOUT_VERSION || header_size != CXL_HEADER_SIZE) {
        ERR("region has layout version %u (header %u bytes); this build speaks version %u",
            version, header_size, CXL_LAYOUT_VERSION);
        return -1;
    }
    /* Each geometry field once, into private params; then recompute and compare. */
    memset(&p, 0, sizeof(p));
    p.channels = cxl_load_relaxed32(&h->channel_count);
    p.req_ring_size = cxl_load_relaxed32(&h->req_ring_size);
    p.resp_ring_size = cxl_load_relaxed32(&h->resp_ring_size);
    p.max_value_size = cxl_load_relaxed32(&h->max_value_size);
    p.heartbeat_interval_ms = cxl_load_relaxed32(&h->heartbeat_interval_ms);
    p.client_lease_ms = cxl_load_relaxed32(&h->client_lease_ms);
    if (!p.channels || !p.req_ring_size || !p.resp_ring_size || !p.max_value_size ||
        !p.heartbeat_interval_ms || !p.client_lease_ms) {
        ERR("region header has a zero geometry field");
        return -1;
    }
    if (cxl_geometry_from_params(&p, &expect, why, sizeof(why)) < 0) {
        ERR("region header geometry is invalid: %s", why);
        return -1;
    }
    if (cxl_load_relaxed64(&h->region_size) != expect.region_size ||
        cxl_load_relaxed64(&h->channel_table_off) != expect.channel_table_off ||
        cxl_load_relaxed64(&h->channel_stride) != expect.channel_stride ||
        cxl_load_relaxed64(&h->client_section_size) != expect.client_section_size ||
        cxl_load_relaxed64(&h->server_section_size) != expect.server_section_size ||
        cxl_load_relaxed32(&h->max_msg_size) != expect.max_msg_size) {
        ERR("region header geometry is inconsistent (derived sizes do not match)");
        return -1;
    }
    if (expect.region_size > map_size) {
        ERR("region needs %" PRIu64 " bytes but only %" PRIu64 " are mapped",
            expect.region_size, map_size);
        return -1;
    }
    *g = expect;
    return 0;
}

int cxl_geometry_equal(const struct cxl_geometry *a, const struct cxl_geometry *b)
{
    return a->channel_count == b->channel_count && a->req_ring_size == b->req_ring_size &&
           a->resp_ring_size == b->resp_ring_size && a->max_value_size == b->max_value_size &&
           a->heartbeat_interval_ms == b->heartbeat_interval_ms &&
           a->client_lease_ms == b->client_lease_ms && a->region_size == b->region_size;
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
    const char *name = strrchr(dev, '/');
    char path[256];
    int i, best = -1;
    uint64_t best_size = 0, s;

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

int cxl_region_map(const char *path, uint64_t map_size, uint64_t create_size,
                   struct cxl_region *rg, char *err, size_t errlen)
{
    struct stat st;
    off_t offset = 0;
    int fd, flags = O_RDWR;

    memset(rg, 0, sizeof(*rg));
    rg->fd = -1;
    if (create_size)
        flags |= O_CREAT;
    fd = open(path, flags | O_CLOEXEC, 0600);
    if (fd < 0) {
        ERR("cannot open region %s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0) {
        ERR("cannot stat region %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (S_ISCHR(st.st_mode) && !strncmp(path, "/dev/uio", 8)) {
        int idx;
        uint64_t sz;

        if (uio_pick_map(path, &idx, &sz) < 0) {
            ERR("%s exposes no uio maps (is the ivshmem device bound to uio_pci_generic?)",
                path);
            close(fd);
            return -1;
        }
        if (sz < CXL_PAGE_SIZE * 2) {
            ERR("%s only exposes BAR0 (%" PRIu64 " bytes); map the sysfs resource2 file instead",
                path, sz);
            close(fd);
            return -1;
        }
        offset = (off_t)idx * getpagesize();    /* uio: map N is at offset N * page */
        if (!map_size)
            map_size = sz;
        snprintf(rg->kind, sizeof(rg->kind), "uio");
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
            map_size = (uint64_t)st.st_size;
        /* sysfs resourceN files report the BAR size as their size */
        snprintf(rg->kind, sizeof(rg->kind), strstr(path, "/resource") ? "resource" : "file");
        if (map_size > (uint64_t)st.st_size) {
            ERR("region %s is %" PRIu64 " bytes, smaller than map size %" PRIu64,
                path, (uint64_t)st.st_size, map_size);
            close(fd);
            return -1;
        }
    } else {
        ERR("%s is neither a file nor a uio device", path);
        close(fd);
        return -1;
    }
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

void cxl_region_unmap(struct cxl_region *rg)
{
    if (rg->base)
        munmap(rg->base, rg->size);
    if (rg->fd >= 0)
        close(rg->fd);
    rg->base = NULL;
    rg->fd = -1;
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

uint64_t cxl_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
