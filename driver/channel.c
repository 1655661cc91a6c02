/*
 * channel.c - layout 5 channels, server side (docs/ring-protocol.md 3-6).
 *
 * Everything here runs on the poll thread. A channel's client control page
 * and request ring are hostile input: every index and every message header is
 * loaded once (barrier.h) into a private variable, validated, and only the
 * private copy is used afterwards. Requests are copied whole into private
 * memory before they are decoded, so a client rewriting a message while we
 * read it can only change what it asked for, never how we parse it.
 *
 * Barrier pairs (names from the protocol doc):
 *   C1  load_acquire(req_head)        pairs with the client's P1 (store_release req_head)
 *   C2  store_release(req_tail)       pairs with the client's P0 (load_acquire req_tail)
 *   P0  load_acquire(resp_tail)       pairs with the client's C2 (store_release resp_tail)
 *   P1  store_release(resp_head)      pairs with the client's C1 (load_acquire resp_head)
 *   S1' load_acquire(claim_token)     pairs with the client's S1 (seq-cst CAS)
 *   S2  store_release(ack_token)      pairs with the client's S3 (load_acquire ack_token)
 *
 * Sessions cannot leak into each other (protocol doc 3.1 and 4.3): a request
 * executes only when its id carries this session's generation, and the
 * response ring is zeroed before a new session is acknowledged. req_tail is
 * stored (C2) before any response to the requests below it is published (P1),
 * so a client that has its responses may zero its request bytes (Z1).
 */
#include "driver.h"
#include "cxl_ring/notify.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOG_VIOLATIONS_PER_CHAN 8u

const char *drv_chan_state_name(uint32_t state)
{
    switch (state) {
    case CXL_CHAN_FREE:        return "free";
    case CXL_CHAN_ACTIVE:      return "active";
    case CXL_CHAN_QUARANTINED: return "quarantined";
    default:                   return "?";
    }
}

int drv_chans_init(struct drv_server *s)
{
    uint32_t c;

    /*
     * Redis's allocator, not malloc: INFO memory's used_memory and maxmemory
     * see what the channels hold (RedisModule_Alloc is thread-safe).
     */
    s->chans = RedisModule_Calloc(s->geo.channel_count, sizeof(*s->chans));
    s->msg_cap = (uint32_t)cxl_align8(s->geo.max_msg_size);
    if (s->msg_cap < DRV_IN_CHUNK)
        s->msg_cap = DRV_IN_CHUNK;
    s->msg = RedisModule_Alloc(s->msg_cap);
    s->nchan = s->geo.channel_count;
    for (c = 0; c < s->nchan; c++) {
        struct drv_chan *ch = &s->chans[c];

        ch->index = c;
        ch->auth.group = s->geo.chan_group[c];
        /* Through the segments of the channel's group (docs/ring-protocol.md 2). */
        ch->kclient = cxl_client_ctl(s->region.base, &s->geo, c);
        ch->kserver = cxl_server_ctl(s->region.base, &s->geo, c);
        ch->notify = s->notify_kind == CXL_NOTIFY_FUTEX ||
                     (s->notify_kind == CXL_NOTIFY_DOORBELL && s->notify_fds);
        ch->bell_fd = s->notify_kind == CXL_NOTIFY_DOORBELL ? s->doorbell_fd : -1;
        cxl_ring_request(s->region.base, &s->geo, c, &ch->req);
        cxl_ring_response(s->region.base, &s->geo, c, &ch->resp);
        /* Our own fields: region.c has just formatted or retired them. */
        ch->state = CXL_CHAN_FREE;
        ch->token = 0;
        ch->dead_token = cxl_load_relaxed64(&ch->kserver->dead_token);
        /* Our own field, kept across restarts: a writer of a session retired by the last
         * run cannot carry a generation this run hands out (until 2^32 sessions). */
        ch->gen = cxl_load_relaxed32(&ch->kserver->session_gen);
        /* Whatever a previous run left in our response rings goes now. */
        cxl_ring_scrub(&ch->resp, 0, ch->resp.size);
        ch->out = RedisModule_Alloc(DRV_OUT_CAP);
    }
    return 0;
}

void drv_chans_free(struct drv_server *s)
{
    uint32_t c;

    for (c = 0; s->chans && c < s->nchan; c++) {
        drv_pubsub_session_end(&s->chans[c].subs);
        RedisModule_Free(s->chans[c].out);
        RedisModule_Free(s->chans[c].big);
    }
    RedisModule_Free(s->chans);
    RedisModule_Free(s->msg);
    s->chans = NULL;
    s->msg = NULL;
}

/* ---- Channel state ---------------------------------------------------------- */

uint64_t drv_keyspace_events;           /* driver.h: counted by txn.c, read by the scan */
uint32_t drv_blocked_sessions;

/* Responses wait for room: do not read more requests from this channel. */
static int stalled(const struct drv_chan *ch)
{
    return ch->big_len || ch->out_len > DRV_OUT_CAP / 2;
}

/* The parked large response is given back at once: it is up to max_msg_size per channel. */
static void free_big(struct drv_chan *ch)
{
    RedisModule_Free(ch->big);
    ch->big = NULL;
    ch->big_len = 0;
}

/* What the session left: staged responses, and a blocked request (block.c). */
static void drop_staged(struct drv_chan *ch)
{
    ch->out_len = 0;
    free_big(ch);
    drv_block_clear(&ch->block);
    drv_pubsub_session_end(&ch->subs);
}

static void set_state(struct drv_chan *ch, uint32_t state)
{
    ch->state = state;
    cxl_store_release32(&ch->kserver->chan_state, state);
}

/*
 * Zero the response bytes written since the last scrub (section 3.1): called
 * when a session ends and before one starts, so a new owner never reads an
 * earlier session's responses. Our own section; S2 of the next accept
 * publishes the zeros.
 */
static void scrub_responses(struct drv_chan *ch)
{
    cxl_ring_scrub(&ch->resp, ch->resp_scrubbed, ch->resp_head - ch->resp_scrubbed);
    ch->resp_scrubbed = ch->resp_head;
}

/* Retire the current session (lease expired, CXLRING.RESET): its owner must claim again. */
static void retire(struct drv_chan *ch)
{
    if (ch->token) {
        ch->dead_token = ch->token;
        /* dead_token before ack_token: a claimer that sees ack 0 also sees the new dead. */
        cxl_store_release64(&ch->kserver->dead_token, ch->dead_token);
    }
    ch->token = 0;
    cxl_store_release64(&ch->kserver->ack_token, 0);
    drop_staged(ch);
    scrub_responses(ch);
    ch->broken = 0;
    set_state(ch, CXL_CHAN_FREE);
}

/* Accept a new session (protocol doc section 5): both rings start empty. */
static void accept_session(struct drv_chan *ch, uint64_t token, uint64_t now_ns)
{
    /* The indexes the previous session left; the client continues from them. */
    uint64_t req_head = cxl_load_acquire64(&ch->kclient->req_head);
    uint64_t resp_tail = cxl_load_acquire64(&ch->kclient->resp_tail);

    scrub_responses(ch);                /* a quarantined session claimed again ends here */
    ch->req_tail = req_head;
    ch->req_tail_published = req_head;
    ch->req_head_seen = req_head;
    ch->resp_head = resp_tail;
    ch->resp_tail_seen = resp_tail;
    ch->resp_scrubbed = resp_tail;
    /* A new generation for the new session; 0 means "none" and is skipped. Stored
     * before S2, which publishes it with the indexes. */
    if (++ch->gen == 0)
        ch->gen = 1;
    cxl_store_relaxed32(&ch->kserver->session_gen, ch->gen);
    cxl_store_release64(&ch->kserver->req_tail, req_head);
    cxl_store_release64(&ch->kserver->resp_head, resp_tail);
    drop_staged(ch);
    ch->broken = 0;
    ch->hb_seen = cxl_load_relaxed64(&ch->kclient->client_heartbeat);
    ch->hb_changed_ns = now_ns;
    cxl_store_relaxed32(&ch->kserver->last_error, 0);
    set_state(ch, CXL_CHAN_ACTIVE);
    ch->token = token;
    /* S2: publish last, after the indexes and the state; pairs with the client's S3. */
    cxl_store_release64(&ch->kserver->ack_token, token);
    STAT_INC(&ch->stats, sessions);
}

/* Follow claims and releases (cheap: one load when nothing changed). */
static void session_check(struct drv_chan *ch, uint64_t now_ns)
{
    /* S1' pairs with the client's claim CAS (S1): we see its heartbeat and indexes as
     * they were when it claimed. */
    uint64_t claim = cxl_load_acquire64(&ch->kclient->claim_token);

    if (claim == ch->token)
        return;
    if (claim == 0) {                   /* released */
        ch->token = 0;
        drop_staged(ch);
        scrub_responses(ch);
        cxl_store_release64(&ch->kserver->ack_token, 0);
        set_state(ch, CXL_CHAN_FREE);
        STAT_INC(&ch->stats, releases);
        return;
    }
    if (claim == ch->dead_token)        /* the retired owner has not claimed again yet */
        return;
    accept_session(ch, claim, now_ns);
}

/* ---- Responses -------------------------------------------------------------- */

/*
 * Room for need bytes in the response ring? Reloads the client's resp_tail only
 * when the cached one says no. A resp_tail that is not within [resp_head -
 * size, resp_head] is a violation: the channel breaks (quarantine follows).
 */
static int resp_room(struct drv_chan *ch, uint64_t need)
{
    uint64_t tail;

    if (ch->resp.size - (ch->resp_head - ch->resp_tail_seen) >= need)
        return 1;
    /* P0 pairs with the client's C2: it has finished copying the bytes it gave back
     * before we overwrite them. */
    tail = cxl_load_acquire64(ch->resp.shm_tail);
    if (ch->resp_head - tail > ch->resp.size) {
        ch->broken = 1;
        ch->broken_why = "resp_tail is not within the response ring";
        return 0;
    }
    ch->resp_tail_seen = tail;
    return ch->resp.size - (ch->resp_head - tail) >= need;
}

/*
 * C2 before any P1: the requests answered so far are released before their
 * responses are published, so a client holding a response may zero the
 * request's bytes (its Z1 load of req_tail sees at least this store).
 */
static void req_tail_publish(struct drv_chan *ch)
{
    if (ch->req_tail != ch->req_tail_published) {
        /* C2: we are done with these bytes; pairs with the client's P0 and Z1. */
        cxl_store_release64(ch->req.shm_tail, ch->req_tail);
        ch->req_tail_published = ch->req_tail;
    }
}

/*
 * Ring a blocked client's doorbell (notify_kind doorbell): the value it published in
 * resp_doorbell, read once. A value without CXL_RESP_DOORBELL_SET, or a peer id above
 * 0xffff, is no doorbell: that client backs off instead. The device delivers a ring only to
 * the peers the hypervisor's doorbell server let this VM ring, our own clients: a client
 * that names another one makes us ring it once per response of its own, a hint the other
 * treats as such (docs/doorbell.md section 1).
 */
static void ring_client(struct drv_chan *ch)
{
    uint64_t v = cxl_load_relaxed64(&ch->kclient->resp_doorbell);
    uint32_t value = (uint32_t)v;
    uint32_t le;

    if (!(v & CXL_RESP_DOORBELL_SET) || (v >> 33) != 0)
        return;
    le = htole32(value);
    /* EAGAIN (a FIFO standing in, full of rings not yet drained): it is being woken. */
    if (write(ch->bell_fd, &le, sizeof(le)) == (ssize_t)sizeof(le) || errno == EAGAIN)
        STAT_INC(&ch->stats, client_rings);
    else
        STAT_INC(&ch->stats, client_ring_errors);
}

/*
 * After P1 of responses: N4 pairs with the client's N3 (docs/ring-protocol.md section 8).
 * A client that blocks for its responses stores resp_sleeping, fences and looks at resp_head
 * once more; we fence after our resp_head and look at its flag: one of us sees the other.
 */
static void notify_client(struct drv_chan *ch)
{
    if (!ch->notify)
        return;
    cxl_fence_seq_cst();
    /* Acquire: the client stored resp_doorbell before its flag. */
    if (!cxl_load_acquire32(&ch->kclient->resp_sleeping))
        return;
    if (ch->bell_fd >= 0) {
        ring_client(ch);
        return;
    }
    /* Changed before the wake: a client not yet in the kernel returns at once. */
    __atomic_fetch_add(&ch->kserver->resp_wake, 1, __ATOMIC_SEQ_CST);
    cxl_futex_wake(&ch->kserver->resp_wake, 1, 0);
}

/* Copy whole messages to the ring at resp_head and publish them (P1). */
static void resp_publish(struct drv_chan *ch, const void *bytes, uint32_t n)
{
    req_tail_publish(ch);
    cxl_ring_copy_in(&ch->resp, ch->resp_head, bytes, n);
    ch->resp_head += n;
    /* P1: the message bytes above are visible before the new head; pairs with C1. */
    cxl_store_release64(ch->resp.shm_head, ch->resp_head);
    notify_client(ch);
    STAT_ADD(&ch->stats, bytes_out, n);
}

/* Move staged responses to the ring: as many whole ones as fit. 1 when none is left. */
static int out_flush(struct drv_chan *ch)
{
    uint32_t n = 0;

    if (!ch->out_len)
        return 1;
    if (resp_room(ch, ch->out_len)) {
        n = ch->out_len;
    } else if (!ch->broken) {
        uint64_t room = ch->resp.size - (ch->resp_head - ch->resp_tail_seen);

        /* Our own private bytes: the lengths are the ones we wrote. */
        while (n < ch->out_len) {
            struct cxl_msg_hdr hdr;

            memcpy(&hdr, ch->out + n, sizeof(hdr));
            if (n + cxl_align8(hdr.len) > room)
                break;
            n += (uint32_t)cxl_align8(hdr.len);
        }
    }
    if (n) {
        resp_publish(ch, ch->out, n);
        memmove(ch->out, ch->out + n, ch->out_len - n);
        ch->out_len -= n;
    }
    return ch->out_len == 0;
}

/* Staged responses first, then the large one. 1 when everything is in the ring. */
static int drain(struct drv_chan *ch)
{
    if (!out_flush(ch))
        return 0;
    if (ch->big_len) {
        if (!resp_room(ch, ch->big_len))
            return 0;
        resp_publish(ch, ch->big, ch->big_len);
        free_big(ch);
    }
    return 1;
}

/* Frame a response (header, pieces, zero padding) into private memory at dst. */
static void frame(uint8_t *dst, const struct cxl_msg_hdr *hdr, const void *p1, uint32_t n1,
                  const void *p2, uint32_t n2)
{
    memcpy(dst, hdr, sizeof(*hdr));
    if (n1)
        memcpy(dst + sizeof(*hdr), p1, n1);
    if (n2)
        memcpy(dst + sizeof(*hdr) + n1, p2, n2);
    memset(dst + hdr->len, 0, cxl_align8(hdr->len) - hdr->len);
}

/* Answer one request: staged (small), straight to the ring or parked (large). */
static void resp_send(struct drv_chan *ch, uint32_t max_msg, uint8_t status, uint64_t id,
                      const void *p1, uint32_t n1, const void *p2, uint32_t n2)
{
    struct cxl_msg_hdr hdr;
    uint64_t len = CXL_MSG_HDR_SIZE + (uint64_t)n1 + n2;
    uint32_t padded;

    if (len > max_msg) {                /* the callers keep payloads under max_value */
        static const char big[] = "response is larger than max_msg_size";
        status = CXL_ST_TOO_LARGE;
        p1 = big;
        n1 = sizeof(big) - 1;
        n2 = 0;
        len = CXL_MSG_HDR_SIZE + n1;
    }
    memset(&hdr, 0, sizeof(hdr));
    hdr.len = (uint32_t)len;
    hdr.op = status;
    hdr.id = id;
    padded = (uint32_t)cxl_align8(len);
    switch (status) {
    case CXL_ST_OK:          STAT_INC(&ch->stats, ok); break;
    case CXL_ST_NOT_FOUND:   STAT_INC(&ch->stats, not_found); break;
    case CXL_ST_ERR:         STAT_INC(&ch->stats, err); break;
    case CXL_ST_OOM:         STAT_INC(&ch->stats, oom); break;
    case CXL_ST_TOO_LARGE:   STAT_INC(&ch->stats, too_large); break;
    case CXL_ST_BAD_REQUEST: STAT_INC(&ch->stats, bad_request); break;
    case CXL_ST_UNKNOWN_OP:  STAT_INC(&ch->stats, unknown_op); break;
    default: break;
    }
    if (padded <= DRV_OUT_CAP / 2) {
        /* Not stalled before this request: out_len <= DRV_OUT_CAP / 2, so it fits. */
        frame(ch->out + ch->out_len, &hdr, p1, n1, p2, n2);
        ch->out_len += padded;
        return;
    }
    /* Large (a big GET value, a CMD reply): keep the order, skip the staging copy. */
    if (drain(ch) && resp_room(ch, padded)) {
        uint64_t pos = ch->resp_head;

        req_tail_publish(ch);

        cxl_ring_copy_in(&ch->resp, pos, &hdr, sizeof(hdr));
        if (n1)
            cxl_ring_copy_in(&ch->resp, pos + sizeof(hdr), p1, n1);
        if (n2)
            cxl_ring_copy_in(&ch->resp, pos + sizeof(hdr) + n1, p2, n2);
        cxl_ring_zero(&ch->resp, pos + len, padded - len);
        ch->resp_head += padded;
        /* P1 pairs with C1: the response is in the ring before the head that publishes it. */
        cxl_store_release64(ch->resp.shm_head, ch->resp_head);
        notify_client(ch);
        STAT_ADD(&ch->stats, bytes_out, padded);
        return;
    }
    if (ch->broken)
        return;
    /*
     * Parked until the client reads: at most one per channel (the channel is
     * not read meanwhile), so a client that never reads holds at most
     * DRV_OUT_CAP + max_msg_size of the server's memory, counted in
     * used_memory. Not stalled before this request, so no big one is parked.
     */
    if (!(ch->big = RedisModule_TryAlloc(padded))) {
        ch->broken = 1;
        ch->broken_why = "out of memory for a pending response";
        return;
    }
    frame(ch->big, &hdr, p1, n1, p2, n2);
    ch->big_len = padded;
    STAT_INC(&ch->stats, resp_full);
}

/* The sink handed to exec.c: a layout 5 response with the request's id. */
struct v5_sink {
    struct drv_chan *ch;
    uint32_t max_msg;
    uint64_t id;
    uint32_t reply_bytes;               /* the last reply's payload: work done (drv_hold) */
};

static void v5_reply(void *sinkp, uint8_t status, const void *p1, uint32_t n1,
                     const void *p2, uint32_t n2)
{
    struct v5_sink *sink = sinkp;

    sink->reply_bytes = n1 + n2;
    resp_send(sink->ch, sink->max_msg, status, sink->id, p1, n1, p2, n2);
}

/* ---- Pub/sub pushes (docs/ring-protocol.md 15) -------------------------------- */

/*
 * Poll thread, before its look at the rings: every message Redis delivered to the driver's
 * subscription goes to each session that holds its name, as a PUSH (id 0), in the order
 * Redis sent them. A session whose responses are stalled drops it (counted). The connection
 * lost: every subscribed session gets an error push and loses its names.
 */
void drv_v5_deliver(struct drv_server *s)
{
    static const char lost[] = "-ERR cxl_ring: pub/sub connection lost (ring-protocol.md 15)\r\n";
    struct drv_push *m = drv_pubsub_take(), *next;
    uint32_t c;
    int loss = 0;

    for (; m; m = next) {
        next = m->next;
        for (c = 0; c < s->nchan; c++) {
            struct drv_chan *ch = &s->chans[c];
            const void *p = m->error ? (const void *)lost : m->data + m->name_len;
            uint32_t n = m->error ? sizeof(lost) - 1 : m->len;

            if (!ch->subs.count || ch->state != CXL_CHAN_ACTIVE ||
                (!m->error && !drv_pubsub_wants(&ch->subs, m)))
                continue;
            if (m->error && ch->block.active && ch->subs.pending) {
                /* A subscribe waiting for Redis's confirmation: it is answered with the
                 * loss (its reply goes with the session's names, below). */
                resp_send(ch, s->geo.max_msg_size, CXL_ST_OK, ch->block.id, p, n, NULL, 0);
                drv_block_clear(&ch->block);
            }
            if (stalled(ch) || ch->broken || CXL_MSG_HDR_SIZE + n > s->geo.max_msg_size) {
                STAT_INC(&ch->stats, pushes_dropped);
            } else {
                resp_send(ch, s->geo.max_msg_size, CXL_ST_PUSH, 0, p, n, NULL, 0);
                STAT_INC(&ch->stats, pushes);
            }
            if (m->error)
                drv_pubsub_session_end(&ch->subs);
        }
        loss |= m->error;
        free(m);
    }
    if (loss)
        drv_pubsub_loss_seen();
}

/* ---- Quarantine (protocol doc section 6) ----------------------------------- */

static void quarantine(struct drv_chan *ch, const char *why)
{
    /* One PROTOCOL_ERROR (id 0), after what is staged, if the ring is sane and has room. */
    if (!ch->broken && drain(ch)) {
        uint32_t n = (uint32_t)strlen(why);
        struct cxl_msg_hdr hdr = { .len = CXL_MSG_HDR_SIZE + n, .op = CXL_ST_PROTOCOL_ERROR };
        uint8_t msg[CXL_MSG_HDR_SIZE + 256];

        if (n <= 256 - CXL_MSG_ALIGN && resp_room(ch, cxl_align8(hdr.len))) {
            frame(msg, &hdr, why, n, NULL, 0);
            resp_publish(ch, msg, (uint32_t)cxl_align8(hdr.len));
        }
    }
    drop_staged(ch);
    ch->broken = 0;
    cxl_store_relaxed32(&ch->kserver->last_error, CXL_ST_PROTOCOL_ERROR);
    set_state(ch, CXL_CHAN_QUARANTINED);
    STAT_INC(&ch->stats, protocol_errors);
    if (ch->logged < LOG_VIOLATIONS_PER_CHAN) {
        ch->logged++;
        drv_log("notice", DRV_NAME ": channel %u quarantined: %s", ch->index, why);
    }
}

static void note_violation(struct drv_chan *ch, int status)
{
    cxl_store_relaxed32(&ch->kserver->last_error, (uint32_t)status);
}

/* ---- Scan and process ------------------------------------------------------- */

/*
 * Outside the GIL: follow sessions, drain waiting responses and find channels
 * with requests. Returns the number of ready channels.
 */
int drv_v5_scan(struct drv_server *s, uint64_t now_ns)
{
    int ready = 0;
    uint32_t c;

    for (c = 0; c < s->nchan; c++) {
        struct drv_chan *ch = &s->chans[c];

        ch->ready = 0;
        session_check(ch, now_ns);
        if (ch->state != CXL_CHAN_ACTIVE)
            continue;
        if ((ch->out_len || ch->big_len) && !drain(ch)) {
            if (ch->broken)
                quarantine(ch, ch->broken_why);
            if (stalled(ch) || ch->state != CXL_CHAN_ACTIVE)
                continue;
        }
        if (ch->block.active) {
            /* Blocked (block.c): the responses before it drain (above), the requests behind
             * it wait; it is tried again after a keyspace event or at its timeout. */
            if (drv_block_due(&ch->block, now_ns)) {
                ch->ready = 1;
                ready++;
            }
            continue;
        }
        /* C1 (a peek; re-read under the GIL) pairs with the client's P1. */
        if (cxl_load_acquire64(ch->req.shm_head) != ch->req_tail) {
            ch->ready = 1;
            ready++;
        }
    }
    return ready;
}

/*
 * Copy request bytes from req_tail into private memory: at least want bytes
 * (a whole message), DRV_IN_CHUNK when there are that many, never more than
 * published. One burst of loads from the client's lines per chunk.
 */
static void refill(struct drv_server *s, struct drv_chan *ch, uint64_t used, uint64_t want,
                   uint32_t *off, uint32_t *avail)
{
    uint64_t n = want > DRV_IN_CHUNK ? want : DRV_IN_CHUNK;

    if (n > used)
        n = used;
    if (n > s->msg_cap)
        n = s->msg_cap;
    cxl_ring_copy_out(&ch->req, ch->req_tail, s->msg, n);
    *off = 0;
    *avail = (uint32_t)n;
}

/* Step past one message of padded bytes: in the private copy and in the stream. */
static void consume(struct drv_chan *ch, uint64_t padded, uint32_t *off, uint32_t *avail)
{
    STAT_INC(&ch->stats, requests);
    STAT_ADD(&ch->stats, bytes_in, padded);
    if (padded <= *avail) {
        *off += (uint32_t)padded;
        *avail -= (uint32_t)padded;
    } else {
        *off = *avail = 0;              /* skipped a message we did not copy */
    }
    ch->req_tail += padded;
}

/*
 * Consume up to quantum requests of one channel, within the hold h (its budget and its
 * deadline, checked between requests). Returns how many.
 */
static uint32_t chan_process(struct drv_server *s, struct drv_chan *ch, uint32_t quantum,
                             struct drv_hold *h)
{
    const struct cxl_geometry *g = &s->geo;
    struct v5_sink sink = { .ch = ch, .max_msg = g->max_msg_size };
    struct cxl_msg_hdr hdr;
    uint64_t head, used, padded, refilled_at = UINT64_MAX;
    uint32_t done = 0, off = 0, avail = 0, units;
    uint64_t out_before;
    const char *bad = NULL;
    static const char big[] = "request is larger than max_msg_size";
    char why[160], stale[128];
    int st, frame;

    /* C1 pairs with the client's P1: every request below head is completely written
     * before we copy it. */
    head = cxl_load_acquire64(ch->req.shm_head);
    if (head - ch->req_head_seen > (uint64_t)1 << 62) {  /* head moved backwards */
        quarantine(ch, "req_head moved backwards");
        return 0;
    }
    ch->req_head_seen = head;
    /* A new batch of requests: reading it from far memory costs the delay (section 2.4). */
    if (head != ch->req_tail)
        cxl_access_delay(s->cfg.access_delay_ns);
    if (ch->block.active) {
        /* The blocked request first (block.c): answered, or the session stays blocked. */
        sink.id = ch->block.id;
        s->exec.auth = &ch->auth;
        s->exec.txn = &ch->txn;
        s->exec.block = &ch->block;
        s->exec.subs = &ch->subs;
        s->exec.session_gen = ch->gen;
        drv_exec_request(&s->exec, &ch->block.req, v5_reply, &sink);
        drv_hold_spend(h, DRV_CHECK_WORK);
    }
    while (done < quantum && !h->over && h->budget && !stalled(ch) && !ch->broken && !bad &&
           !ch->block.active) {
        used = head - ch->req_tail;
        if (used == 0)
            break;
        if (used > ch->req.size || used < CXL_MSG_HDR_SIZE) {
            cxl_frame_check(used, ch->req.size, 0, g->max_msg_size, &bad);
            break;
        }
        if (avail < CXL_MSG_HDR_SIZE)
            refill(s, ch, used, CXL_MSG_HDR_SIZE, &off, &avail);
        /* Only the private copy is parsed from here on. */
        memcpy(&hdr, s->msg + off, sizeof(hdr));
        padded = cxl_align8(hdr.len);
        frame = cxl_frame_check(used, ch->req.size, hdr.len, g->max_msg_size, &bad);
        if (frame == CXL_FRAME_QUARANTINE)
            break;
        if (frame == CXL_FRAME_OK && padded > avail) {
            if (refilled_at == ch->req_tail) {
                /* the whole message was copied and still says it is longer */
                bad = "message rewritten while being read";
                break;
            }
            refill(s, ch, used, padded, &off, &avail);
            refilled_at = ch->req_tail;
            continue;                   /* parse the fresh copy from the start */
        }
        if (cxl_id_gen(hdr.id) != ch->gen) {
            /*
             * Not this session's request (protocol doc 4.3): a writer whose session was
             * retired. Never executed, never answered; the stream was shared with another
             * writer, so nothing after it is trusted either: quarantine.
             */
            snprintf(stale, sizeof(stale), "request of an earlier session (generation %u, "
                     "this session is %u); nothing after it was executed",
                     cxl_id_gen(hdr.id), ch->gen);
            STAT_INC(&ch->stats, stale_requests);
            bad = stale;
            break;
        }
        sink.id = hdr.id;
        sink.reply_bytes = 0;
        if (frame == CXL_FRAME_SKIP) {
            consume(ch, padded, &off, &avail);
            done++;
            h->budget--;
            note_violation(ch, CXL_ST_TOO_LARGE);
            v5_reply(&sink, CXL_ST_TOO_LARGE, big, sizeof(big) - 1, NULL, 0);
            drv_hold_spend(h, 1);
            continue;
        }
        st = cxl_req_decode(s->msg + off, hdr.len, g->max_value_size, &s->req,
                            why, sizeof(why));
        if (st == CXL_ST_OK && drv_exec_must_wait(&s->exec, s->req.op))
            break;                      /* not consumed: served after the pause */
        /* Consumed before it runs: the decoded request points into our private copy, and
         * a response published while it runs must find req_tail past it (C2 before P1). */
        consume(ch, padded, &off, &avail);
        done++;
        h->budget--;
        if (st == CXL_ST_OK) {
            s->exec.auth = &ch->auth;   /* the session's ACL user (acl.c) */
            s->exec.txn = &ch->txn;     /* its database, MULTI, WATCH (txn.c) */
            s->exec.block = &ch->block; /* where a BLPOP blocks it (block.c) */
            s->exec.subs = &ch->subs;   /* its SUBSCRIBEs (pubsub.c) */
            s->exec.session_gen = ch->gen;
            drv_exec_request(&s->exec, &s->req, v5_reply, &sink);
            if (ch->block.started) {    /* it blocked: its answer comes later */
                ch->block.started = 0;
                ch->block.id = hdr.id;
            }
        } else {
            note_violation(ch, st);
            v5_reply(&sink, (uint8_t)st, why, (uint32_t)strlen(why), NULL, 0);
        }
        /* A CMD can be any command: the clock is read after each one. */
        units = st == CXL_ST_OK && s->req.op == CXL_OP_CMD
                ? DRV_CHECK_WORK : drv_work_units(padded + sink.reply_bytes);
        drv_hold_spend(h, units);
    }
    req_tail_publish(ch);
    if (bad) {
        quarantine(ch, bad);            /* after the answers to what came before */
        return done;
    }
    /* Publishing what is staged, or a parked large response, is work of this hold too. */
    out_before = ch->stats.bytes_out;
    drain(ch);
    drv_hold_spend(h, (uint32_t)((ch->stats.bytes_out - out_before) >> DRV_WORK_BYTES_SHIFT));
    if (ch->broken)
        quarantine(ch, ch->broken_why);
    return done;
}

/*
 * Under the GIL: serve ready channels round robin, a quantum each, until the hold's
 * budget or time is used up or no channel has requests left. The round goes on from
 * where the last hold stopped (next_chan), so that a hold cut short by its deadline does
 * not serve the low-numbered channels first every time.
 */
uint32_t drv_v5_process(struct drv_server *s, struct drv_hold *h)
{
    uint32_t total = 0, quantum, c, i, n;
    int more = 1;

    quantum = s->cfg.batch / 4 ? s->cfg.batch / 4 : 1;
    /* Blocked sessions first, in the order they blocked, as Redis serves the clients blocked
     * on a key: the first one gets the value pushed (block.c). One that stays blocked is
     * not ready for the round below. */
    for (;;) {
        struct drv_chan *first = NULL;

        for (c = 0; c < s->nchan; c++) {
            struct drv_chan *ch = &s->chans[c];

            if (ch->ready && ch->block.active && ch->state == CXL_CHAN_ACTIVE &&
                (!first || ch->block.seq < first->block.seq))
                first = ch;
        }
        if (!first || h->over || !h->budget)
            break;
        n = chan_process(s, first, quantum, h);
        total += n;
        if (n == 0 || first->block.active || first->state != CXL_CHAN_ACTIVE || stalled(first))
            first->ready = 0;
    }
    while (more && !h->over && h->budget) {
        more = 0;
        for (i = 0; i < s->nchan && !h->over && h->budget; i++) {
            struct drv_chan *ch;

            c = s->next_chan;
            s->next_chan = c + 1 == s->nchan ? 0 : c + 1;
            ch = &s->chans[c];
            if (!ch->ready || ch->state != CXL_CHAN_ACTIVE)
                continue;
            n = chan_process(s, ch, quantum, h);
            total += n;
            if (n == 0 || ch->state != CXL_CHAN_ACTIVE || stalled(ch))
                ch->ready = 0;
            else
                more = 1;
        }
    }
    return total;
}

/* ---- Leases and resets ------------------------------------------------------ */

/* Reclaim channels whose client heartbeat has stood still for client_lease_ms. */
void drv_v5_housekeeping(struct drv_server *s, uint64_t now_ns)
{
    uint64_t lease_ns = (uint64_t)s->geo.client_lease_ms * 1000000ull;
    uint32_t c;

    for (c = 0; c < s->nchan; c++) {
        struct drv_chan *ch = &s->chans[c];
        uint64_t hb;

        if (ch->state == CXL_CHAN_FREE)
            continue;
        /* Relaxed: the value orders nothing, only its change matters. */
        hb = cxl_load_relaxed64(&ch->kclient->client_heartbeat);
        if (hb != ch->hb_seen) {
            ch->hb_seen = hb;
            ch->hb_changed_ns = now_ns;
        } else if (now_ns - ch->hb_changed_ns >= lease_ns) {
            drv_log("notice", DRV_NAME ": channel %u: client heartbeat stood still for %u ms; "
                    "session reclaimed", c, s->geo.client_lease_ms);
            retire(ch);
            STAT_INC(&ch->stats, reclaims);
        }
    }
}

/* CXLRING.RESET: retire the session and clear the error; the owner claims again. */
void drv_v5_reset(struct drv_server *s, uint32_t chan)
{
    struct drv_chan *ch = &s->chans[chan];

    retire(ch);
    cxl_store_relaxed32(&ch->kserver->last_error, 0);
    ch->logged = 0;
    STAT_INC(&ch->stats, resets);
}
