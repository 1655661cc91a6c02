/*
 * compat_v2.c - the proof of concept's layout v2, server side
 * (docs/ring-protocol.md section 10, the whole compatibility contract).
 *
 * Region: a header (CXLSHM1, version 2, ring table) in the first page, then
 * per ring a request ring and a response ring, each "u64 head, u64 tail,
 * slots of 4096 bytes" and page-aligned. Ring i's request k is answered by
 * one slot on response ring i, in order. Only GET and SET exist.
 *
 * The PoC's client uses no barriers (x86 ordering); we still pair ours:
 *   V1 load_acquire(req head)     pairs with the client's store of head (after its slot)
 *   V2 store_release(req tail)    we are done with the slot
 *   V3 load_acquire(resp tail)    the client is done with those slots
 *   V4 store_release(resp head)   our slot is written before the new head
 * Slots are hostile input: each is copied once into private memory, then parsed.
 */
#include "driver.h"

#include <stdlib.h>
#include <string.h>

#define V2_HEADER_BYTES   CXL_PAGE_SIZE
#define LOG_V2_VIOLATIONS 8u

static uint64_t ring_bytes(uint32_t slots)
{
    return CXL_V2_RING_HDR + (uint64_t)slots * CXL_V2_SLOT_SIZE;
}

/* Each ring page-aligned: request ring i, then response ring i. */
static uint64_t ring_stride(uint32_t slots)
{
    return (ring_bytes(slots) + CXL_PAGE_SIZE - 1) & ~(uint64_t)(CXL_PAGE_SIZE - 1);
}

uint64_t drv_v2_layout_size(uint32_t rings, uint32_t slots)
{
    return V2_HEADER_BYTES + (uint64_t)rings * 2 * ring_stride(slots);
}

static void expected_desc(uint32_t slots, uint32_t i, struct cxl_v2_ring_desc *d)
{
    d->req_off = V2_HEADER_BYTES + (uint64_t)i * 2 * ring_stride(slots);
    d->req_sz = ring_bytes(slots);
    d->resp_off = d->req_off + ring_stride(slots);
    d->resp_sz = ring_bytes(slots);
}

/* Write the header and empty rings (the region is ours: we are formatting it). */
void drv_v2_format(struct drv_server *s)
{
    struct cxl_v2_header *h = s->region.base;
    uint32_t i;
    uint64_t magic;

    cxl_store_release64((volatile uint64_t *)(void *)h->magic, 0);
    memset((uint8_t *)h + 8, 0, V2_HEADER_BYTES - 8);
    h->version = CXL_V2_VERSION;
    h->ring_count = s->cfg.v2_rings;
    for (i = 0; i < s->cfg.v2_rings; i++) {
        expected_desc(s->cfg.v2_slots, i, &h->ring[i]);
        memset((uint8_t *)s->region.base + h->ring[i].req_off, 0, CXL_V2_RING_HDR);
        memset((uint8_t *)s->region.base + h->ring[i].resp_off, 0, CXL_V2_RING_HDR);
    }
    memcpy(&magic, CXL_V2_MAGIC, 8);
    /* F1 pairs with the reader's load of the magic (F2): the version, the ring table and
     * the empty rings written above are visible before the magic that vouches for them. */
    cxl_store_release64((volatile uint64_t *)(void *)h->magic, magic);
}

/* 1 = all zeros, 0 = matches our configuration, -1 = differs (err says how). */
int drv_v2_check(struct drv_server *s, char *err, size_t errlen)
{
    const struct cxl_v2_header *h = s->region.base;
    const uint8_t *b = s->region.base;
    struct cxl_v2_header copy;
    uint32_t i;

    memcpy(&copy, h, sizeof(copy));     /* once, then only the copy */
    if (memcmp(copy.magic, CXL_V2_MAGIC, 8)) {
        for (i = 0; i < V2_HEADER_BYTES; i++)
            if (b[i])
                break;
        if (i == V2_HEADER_BYTES)
            return 1;
        snprintf(err, errlen, "region header is not layout v2 (magic %.7s)",
                 memcmp(copy.magic, CXL_MAGIC, 8) ? "unknown" : "CXLDSMR, layout v5");
        return -1;
    }
    if (copy.version != CXL_V2_VERSION) {
        snprintf(err, errlen, "layout v2 region has version %u, not 2", copy.version);
        return -1;
    }
    if (copy.ring_count != s->cfg.v2_rings) {
        snprintf(err, errlen, "layout v2 region has %u rings, configured v2_rings %u",
                 copy.ring_count, s->cfg.v2_rings);
        return -1;
    }
    for (i = 0; i < copy.ring_count; i++) {
        struct cxl_v2_ring_desc want;

        expected_desc(s->cfg.v2_slots, i, &want);
        if (memcmp(&want, &copy.ring[i], sizeof(want))) {
            snprintf(err, errlen, "layout v2 ring %u table differs from v2_slots %u "
                     "(req_sz %llu, expected %llu)", i, s->cfg.v2_slots,
                     (unsigned long long)copy.ring[i].req_sz, (unsigned long long)want.req_sz);
            return -1;
        }
    }
    return 0;
}

int drv_v2_init(struct drv_server *s)
{
    uint8_t *base = s->region.base;
    uint32_t i;

    s->nchan = s->cfg.v2_rings;
    s->v2 = RedisModule_Calloc(s->nchan, sizeof(*s->v2));       /* counted in used_memory */
    s->v2_auth.group = UINT32_MAX;      /* no channel group: no acl_users entry */
    s->msg = RedisModule_Alloc(CXL_V2_SLOT_SIZE);
    for (i = 0; i < s->nchan; i++) {
        struct drv_v2_ring *r = &s->v2[i];
        struct cxl_v2_ring_desc d;
        uint8_t *req, *resp;

        expected_desc(s->cfg.v2_slots, i, &d);
        req = base + d.req_off;
        resp = base + d.resp_off;
        r->kreq_head = (volatile uint64_t *)(void *)req;
        r->kreq_tail = (volatile uint64_t *)(void *)(req + 8);
        r->kresp_head = (volatile uint64_t *)(void *)resp;
        r->kresp_tail = (volatile uint64_t *)(void *)(resp + 8);
        r->req_slots = req + CXL_V2_RING_HDR;
        r->resp_slots = resp + CXL_V2_RING_HDR;
        /* No sessions in v2: start with both rings empty. */
        r->req_tail = cxl_load_acquire64(r->kreq_head);
        r->resp_head = cxl_load_acquire64(r->kresp_tail);
        r->resp_tail_seen = r->resp_head;
        cxl_store_release64(r->kreq_tail, r->req_tail);
        cxl_store_release64(r->kresp_head, r->resp_head);
    }
    return 0;
}

/* ---- Serving ---------------------------------------------------------------- */

struct v2_sink {
    struct drv_v2_ring *r;
    uint32_t slots;
    uint32_t client_id;
    uint8_t  op;
};

/* Write one response slot: u8 status, u16 val_len, value (GET hits only). */
static void v2_reply(void *sinkp, uint8_t status, const void *p1, uint32_t n1,
                     const void *p2, uint32_t n2)
{
    struct v2_sink *sink = sinkp;
    struct drv_v2_ring *r = sink->r;
    uint8_t *slot = r->resp_slots + (r->resp_head % sink->slots) * CXL_V2_SLOT_SIZE;
    struct cxl_v2_slot_hdr sh = { .client_id = sink->client_id, .type = CXL_V2_TYPE_DATA };
    uint8_t v2st;
    uint16_t vlen = 0;

    (void)p2;
    (void)n2;
    switch (status) {
    case CXL_ST_OK:        v2st = CXL_V2_ST_OK; break;
    case CXL_ST_NOT_FOUND: v2st = CXL_V2_ST_MISS; STAT_INC(&r->stats, not_found); break;
    case CXL_ST_OOM:       v2st = CXL_V2_ST_ERR; STAT_INC(&r->stats, oom); break;
    case CXL_ST_BAD_REQUEST: v2st = CXL_V2_ST_ERR; break;   /* counted by the caller */
    default:               v2st = CXL_V2_ST_ERR; STAT_INC(&r->stats, err); break;
    }
    if (v2st == CXL_V2_ST_OK && sink->op == CXL_V2_OP_GET) {
        if (n1 > CXL_V2_MAX_PAYLOAD - 3) {
            v2st = CXL_V2_ST_ERR;       /* does not fit a slot */
            STAT_INC(&r->stats, too_large);
        } else {
            vlen = (uint16_t)n1;
        }
    }
    if (v2st == CXL_V2_ST_OK)
        STAT_INC(&r->stats, ok);
    sh.len = 3u + vlen;
    memcpy(slot, &sh, sizeof(sh));
    slot[CXL_V2_SLOT_HDR] = v2st;
    memcpy(slot + CXL_V2_SLOT_HDR + 1, &vlen, 2);
    if (vlen)
        memcpy(slot + CXL_V2_SLOT_HDR + 3, p1, vlen);
    r->resp_head++;                     /* published by ring_process (V4), once per batch */
    STAT_ADD(&r->stats, bytes_out, CXL_V2_SLOT_HDR + sh.len);
}

/* A free response slot? The cached tail first, then the client's (V3). */
static int v2_resp_room(struct drv_v2_ring *r, uint32_t slots)
{
    uint64_t tail;

    if (r->resp_head - r->resp_tail_seen < slots)
        return 1;
    /* V3 pairs with the client's store of resp tail (a plain store is a release on x86):
     * the client has finished reading the slots it gave back before we overwrite them. */
    tail = cxl_load_acquire64(r->kresp_tail);
    if (r->resp_head - tail > slots)            /* nonsense: wait, never overwrite */
        return 0;
    r->resp_tail_seen = tail;
    return r->resp_head - tail < slots;
}

int drv_v2_scan(struct drv_server *s)
{
    int ready = 0;
    uint32_t i;

    for (i = 0; i < s->nchan; i++) {
        struct drv_v2_ring *r = &s->v2[i];

        r->ready = cxl_load_acquire64(r->kreq_head) != r->req_tail &&
                   v2_resp_room(r, s->cfg.v2_slots);
        ready += r->ready;
    }
    return ready;
}

/* Serve up to quantum slots of one ring, within the hold h (checked between slots). */
static uint32_t ring_process(struct drv_server *s, struct drv_v2_ring *r, uint32_t quantum,
                             struct drv_hold *h)
{
    uint32_t slots = s->cfg.v2_slots, done = 0;
    /* V1 pairs with the client's store of req head (after its slot): every slot below
     * head is completely written before we copy it. */
    uint64_t head = cxl_load_acquire64(r->kreq_head);
    struct v2_sink sink = { .r = r, .slots = slots };
    struct cxl_v2_slot_hdr sh;
    uint8_t *msg = s->msg;

    if (head - r->req_tail > slots) {
        /* No framing to recover in v2: drop what was published and count it. */
        STAT_INC(&r->stats, protocol_errors);
        if (r->stats.protocol_errors <= LOG_V2_VIOLATIONS)
            drv_log("notice", DRV_NAME ": v2 ring %u: request head is %llu slots ahead; "
                    "dropped", (unsigned)(r - s->v2),
                    (unsigned long long)(head - r->req_tail));
        r->req_tail = head;
        cxl_store_release64(r->kreq_tail, r->req_tail);
        return 0;
    }
    while (done < quantum && !h->over && h->budget && r->req_tail != head &&
           v2_resp_room(r, slots)) {
        const uint8_t *slot = r->req_slots + (r->req_tail % slots) * CXL_V2_SLOT_SIZE;
        uint32_t len;

        memcpy(&sh, slot, sizeof(sh));  /* the header once */
        len = sh.len;
        sink.client_id = sh.client_id;
        sink.op = 0;
        if (sh.type == CXL_V2_TYPE_CLOSE) {
            /* a client saying goodbye: no response */
        } else if (sh.type != CXL_V2_TYPE_DATA || len < 4 || len > CXL_V2_MAX_PAYLOAD) {
            STAT_INC(&r->stats, bad_request);
            v2_reply(&sink, CXL_ST_BAD_REQUEST, NULL, 0, NULL, 0);
        } else {
            uint8_t op, klen;
            uint16_t vlen;

            memcpy(msg, slot + CXL_V2_SLOT_HDR, len);   /* the payload once */
            op = msg[0];
            klen = msg[1];
            memcpy(&vlen, msg + 2, 2);
            sink.op = op;
            const uint8_t *args[2] = { msg + 4, msg + 4 + klen };
            const uint32_t argl[2] = { klen, vlen };

            /* Every v2 client is one session of no group (acl.c). */
            s->exec.auth = &s->v2_auth;
            s->exec.txn = NULL;
            s->exec.session_gen = 1;
            if ((op == CXL_V2_OP_GET && 4u + klen <= len &&
                 drv_acl_admit(&s->exec, CXL_OP_GET, 1, args, argl, v2_reply, &sink)) ||
                (op == CXL_V2_OP_SET && 4u + klen + vlen <= len &&
                 drv_acl_admit(&s->exec, CXL_OP_SET, 2, args, argl, v2_reply, &sink))) {
                /* refused: answered */
            } else if (op == CXL_V2_OP_GET && 4u + klen <= len) {
                drv_exec_get(&s->exec, msg + 4, klen, v2_reply, &sink);
            } else if (op == CXL_V2_OP_SET && 4u + klen + vlen <= len &&
                       drv_exec_must_wait(&s->exec, CXL_OP_SET)) {
                break;                  /* not consumed: served after the pause */
            } else if (op == CXL_V2_OP_SET && 4u + klen + vlen <= len) {
                drv_exec_set(&s->exec, msg + 4, klen, msg + 4 + klen, vlen, 0, v2_reply, &sink);
            } else {
                if (op == CXL_V2_OP_GET || op == CXL_V2_OP_SET)
                    STAT_INC(&r->stats, bad_request);
                else
                    STAT_INC(&r->stats, unknown_op);
                v2_reply(&sink, CXL_ST_BAD_REQUEST, NULL, 0, NULL, 0);
            }
        }
        STAT_INC(&r->stats, requests);
        STAT_ADD(&r->stats, bytes_in, CXL_V2_SLOT_SIZE);
        r->req_tail++;
        done++;
        h->budget--;
        /* A slot is at most 4 KiB each way: a unit of work. */
        drv_hold_spend(h, 1);
    }
    if (done) {
        /* One store each per batch, not per slot: the client polls these lines. */
        /* V4 pairs with the client's load of resp head: the response slots written
         * above are visible before the head that hands them over. */
        cxl_store_release64(r->kresp_head, r->resp_head);
        /* V2 pairs with the client's load of req tail: our copies of the request slots
         * are complete before the client may write new requests into them. */
        cxl_store_release64(r->kreq_tail, r->req_tail);
    }
    return done;
}

uint32_t drv_v2_process(struct drv_server *s, struct drv_hold *h)
{
    uint32_t total = 0, i, c, n, quantum = s->cfg.batch / 4 ? s->cfg.batch / 4 : 1;
    int more = 1;

    while (more && !h->over && h->budget) {
        more = 0;
        for (i = 0; i < s->nchan && !h->over && h->budget; i++) {
            struct drv_v2_ring *r;

            c = s->next_chan;           /* round robin across holds, as in channel.c */
            s->next_chan = c + 1 == s->nchan ? 0 : c + 1;
            r = &s->v2[c];
            if (!r->ready)
                continue;
            n = ring_process(s, r, quantum, h);
            total += n;
            if (n == 0)
                r->ready = 0;
            else
                more = 1;
        }
    }
    return total;
}

/* CXLRING.RESET in v2: drop what is queued, both rings empty. */
void drv_v2_reset(struct drv_server *s, uint32_t ring)
{
    struct drv_v2_ring *r = &s->v2[ring];

    r->req_tail = cxl_load_acquire64(r->kreq_head);
    cxl_store_release64(r->kreq_tail, r->req_tail);
    STAT_INC(&r->stats, resets);
}
